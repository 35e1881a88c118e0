"""CIFAR-10 super-resolution: the conditional task of the step-distillation track (bench ``cifar-sr``).

    python -m distill_lab.cifar.sr --commit --scale ci   # train the SR teacher, write datasets/teachers/cifar10_sr_ci

The high-resolution (HR) image is the track's image at the scale's resolution (16 x 16 at ``ci``); its
low-resolution (LR) version is the ``FACTOR x FACTOR`` block average (8 x 8). The flow from the noisy
LR image to the HR image, its operators (``range_part``, ``null_part``, ``sr_start``, ``SRVelocity``,
``sr_flow_loss``, ``sr_sample``) and the students live in :mod:`distill_lab.methods.step.superres`;
this module re-exports the operators. Every sampler of that flow keeps the LR image exactly.

:class:`SRExperiment` holds the data, the committed teacher (``load_sr_teacher``; trained by
:func:`train_sr_teacher` when absent) and the measurements of :meth:`SRExperiment.evaluate`: PSNR to
the HR image, the high-frequency spectrum error (:func:`~distill_lab.metrics.images.hf_spectrum_error`,
rings above the LR image's Nyquist frequency) and the Fréchet distance in the image track's classifier
features, each beside its floor (two disjoint halves of real test images) and the baselines the
experiment computes (the upsampled LR image, the teacher at 1 step and at its reference solver).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from ..core.checkpoints import (check_folder, file_records, float32_state, fp16_state, teachers_root,
                                training_record, update_manifest)
from ..core.experiment import ConditionalExperiment
from ..core.scale import get_scale
from ..core.train import fit, seed_everything
from ..metrics.frechet import disjoint_halves, frechet_distance
from ..metrics.images import hf_spectrum_error, psnr
from ..methods.step.superres import (FACTOR, SIGMA, SRVelocity, downsample, null_part, range_part, sr_flow_loss,
                                     sr_sample, sr_start, upsample)
from ..nets.unet import TimeUNet
from ..nets.utils import clone_frozen, ema_update, n_params
from .data import batch_flip
from .flow_config import IMAGE_SCALES, load_flow_data

FILES = ("teacher.pt",)
COMMAND = "python -m distill_lab.cifar.sr --commit --scale"
# the SR teacher's training, per scale (numbers only); ``unet``: TimeUNet options beside cond_channels=3
SR_SETTINGS = {
    "ci": dict(steps=4000, batch=64, lr=2e-3, ema=0.999, unet=dict(base=16, mults=(1, 2, 4), blocks=1),
               eval_n=1000, ref_nfe=16),
}


__all__ = ["FACTOR", "SIGMA", "SRVelocity", "downsample", "upsample", "range_part", "null_part", "sr_start",
           "sr_flow_loss", "sr_sample", "sr_unet", "SR_SETTINGS", "train_sr_teacher", "load_sr_teacher",
           "commit_sr_teacher", "SRExperiment", "run_sr_bench", "format_sr_table", "SR_ROW_KEYS"]


class SRTeacherUnavailable(FileNotFoundError):
    """The SR teacher's folder lacks a file, or a file's sha256 differs from the manifest's."""


# ---------------------------------------------------------------------------------- the teacher
def mirrored_draw(images: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` images drawn at random (global RNG), each mirrored left-right with probability 1/2."""
    idx = torch.randint(0, images.shape[0], (n,), device=images.device)
    return batch_flip(images[idx], torch.rand(n, device=images.device) < 0.5)


def train_sr_teacher(train_x: torch.Tensor, settings: dict, seed: int = 0, device: str = "cpu",
                     progress: bool = True, steps: int | None = None) -> tuple[SRVelocity, dict]:
    """Flow-match an :class:`SRVelocity` on HR images ``train_x: [N, 3, R, R]`` in ``[-1, 1]``
    (:func:`sr_flow_loss`; each image mirrored with probability 1/2): Adam with a short warm-up and
    cosine decay, gradients clipped at norm 1, and the EMA of the weights as the teacher (as the
    unconditional teacher of :mod:`distill_lab.cifar.flow_teacher`). Returns ``(ema, info)``."""
    steps = steps or settings["steps"]
    seed_everything(seed)
    model = SRVelocity(sr_unet(settings)).to(device).train()
    ema = clone_frozen(model)
    opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    warm = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    train_x = train_x.to(device)

    def step(i):
        loss = sr_flow_loss(model, mirrored_draw(train_x, settings["batch"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, model, min(settings["ema"], (1 + i) / (10 + i)))
        return {"loss": loss}

    hist = fit(step, steps, desc="SR teacher (CIFAR-10)", progress=progress)
    losses = hist.get("loss", [])[-10:]
    return ema.eval(), {"steps": hist["steps"], "train_seconds": hist["seconds"],
                        "final_loss": float(sum(losses) / len(losses)) if losses else None, "history": hist}


def sr_unet(settings: dict, n_times: int = 1) -> TimeUNet:
    """The SR teacher's U-Net: three channels, the upsampled LR image as three condition channels."""
    return TimeUNet(channels=3, cond_channels=3, n_times=n_times, **settings["unet"])


def sr_teacher_dir(scale: str = "ci") -> Path:
    return teachers_root() / f"cifar10_sr_{scale}"


def load_sr_teacher(path: str | Path | None = None, verify: bool = True, missing_ok: bool = False) -> dict | None:
    """The committed SR teacher: ``{"model": SRVelocity (float32, eval), "manifest": dict}``; a missing
    or altered folder raises :class:`SRTeacherUnavailable` saying how to rebuild it (or returns
    ``None`` with ``missing_ok``)."""
    path = Path(path) if path is not None else sr_teacher_dir("ci")
    manifest = check_folder(path, FILES, verify, "SR teacher", SRTeacherUnavailable, f"{COMMAND} ci", missing_ok,
                            required=("unet",))
    if manifest is None:
        return None
    net = TimeUNet(**manifest["unet"])
    net.load_state_dict(float32_state(torch.load(path / "teacher.pt", map_location="cpu", weights_only=True)))
    model = SRVelocity(net.eval()).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return {"model": model, "manifest": manifest}


def commit_sr_teacher(scale: str = "ci", out: str | Path | None = None, progress: bool = True) -> dict:
    """Train the scale's SR teacher, write its fp16 weights and manifest (settings, command, machine,
    seconds, and the quality :meth:`SRExperiment.teacher_quality` measures on the weights as saved)."""
    settings = SR_SETTINGS[scale]
    out = Path(out) if out is not None else sr_teacher_dir(scale)
    data = load_flow_data(IMAGE_SCALES[scale])
    model, info = train_sr_teacher(data["train"], settings, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(fp16_state(model.net), out / "teacher.pt")
    manifest = {
        "what": "CIFAR-10 super-resolution flow teacher (conditional velocity U-Net) of distill-lab's SR track",
        "scale": scale, "factor": FACTOR, "sigma": SIGMA,
        "settings": {k: (dict(v, mults=list(v["mults"])) if k == "unet" else v) for k, v in settings.items()},
        "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in model.net.config.items()},
        "n_params": n_params(model.net),
        **training_record(info, f"{COMMAND} {scale}"),
        "files": file_records(out, FILES),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    exp = SRExperiment(scale, teacher_dir=out, progress=False)
    return update_manifest(out, quality=exp.teacher_quality())


# ---------------------------------------------------------------------------------- the experiment
class SRExperiment(ConditionalExperiment):
    """The SR track at one scale: data, committed teacher, fixed evaluation set and its measurements.

    ``evaluate(sample)`` calls ``sample(cond, noise) -> HR estimate`` on the fixed evaluation set
    (``eval_n`` test images' upsampled LR versions and fixed noise) and returns ``psnr`` (dB, mean over
    images), ``hf`` (:func:`~distill_lab.metrics.images.hf_spectrum_error` to the evaluation HR images,
    rings ``>= hf_lo``), ``fd`` (Fréchet distance in classifier features to a disjoint half of real
    test images), and ``range_error`` (the largest ``|P x - c|``: 0 for every sampler of the SR flow).
    ``floors``: ``hf`` and ``fd`` of the evaluation HR images themselves (a perfect SR). ``baselines``
    (:attr:`baselines`): the upsampled LR image, the teacher at 1 Euler step and at its reference solver.
    """

    def __init__(self, scale: str = "ci", teacher: SRVelocity | None = None, teacher_dir: str | Path | None = None,
                 data: dict | None = None, feature_fn: Callable | None = None, seed: int = 0,
                 eval_n: int | None = None, progress: bool = True):
        sc = get_scale(scale)
        if sc.name not in SR_SETTINGS:
            print(f"the SR track has settings for {sorted(SR_SETTINGS)} only; running scale {sc.name!r} as ci")
        self.scale_name = sc.name if sc.name in SR_SETTINGS else "ci"
        self.scale = sc if sc.name == self.scale_name else get_scale(self.scale_name, device=sc.device)
        self.settings = SR_SETTINGS[self.scale_name]
        self.image_scale = IMAGE_SCALES[self.scale_name]
        self.device, self.seed, self.progress = sc.device, seed, progress
        self.resolution = self.image_scale.resolution
        self.shape = (3, self.resolution, self.resolution)
        self.name = f"cifar10-sr-{self.resolution // FACTOR}to{self.resolution}px"
        self.eval_n = eval_n or self.settings["eval_n"]
        self.batch = self.settings["batch"]
        self.hf_lo = self.resolution // (2 * FACTOR) + 1  # rings above the LR image's Nyquist frequency
        self._data, self._feature_fn = data, feature_fn
        t0 = time.perf_counter()
        if teacher is None:
            path = Path(teacher_dir) if teacher_dir is not None else sr_teacher_dir(self.scale_name)
            loaded = load_sr_teacher(path, missing_ok=True)
            if loaded is None:
                print(f"no valid SR teacher at {path}; training one ({self.settings['steps']} steps)")
                teacher, _ = train_sr_teacher(self.data["train"], self.settings, device=self.device,
                                              progress=progress)
            else:
                teacher = loaded["model"]
        self.teacher = teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------ data and networks
    @cached_property
    def data(self) -> dict:
        d = self._data if self._data is not None else load_flow_data(self.image_scale)
        for split in ("train", "test"):
            if tuple(d[split].shape[1:]) != self.shape:
                raise ValueError(f"{split} images must be [N, {', '.join(map(str, self.shape))}], "
                                 f"got {tuple(d[split].shape)}")
        return {k: d[k].to(self.device) for k in ("train", "test")}

    def hr_batch(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hr, c)``: ``n`` random training images (mirrored with probability 1/2) and ``c = P hr``."""
        hr = mirrored_draw(self.data["train"], n or self.batch)
        return hr, range_part(hr)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The teacher's ``v(x, t, c)``."""
        return self.teacher(x, t, cond=cond)

    def student_net(self, n_times: int = 1) -> SRVelocity:
        """A trainable copy of the teacher taking ``n_times`` times (extra ones start at zero weight)."""
        net = SRVelocity(TimeUNet.from_net(self.teacher.net, n_times)).to(self.device)
        for p in net.parameters():
            p.requires_grad_(True)
        return net.train()

    def new_net(self, n_times: int = 1) -> SRVelocity:
        """A freshly initialised network of the teacher's size (for methods that use no teacher)."""
        return SRVelocity(TimeUNet(**dict(self.teacher.net.config, n_times=n_times))).to(self.device).train()

    def teacher_sample(self, cond, noise, nfe: int | None = None, method: str | None = None) -> torch.Tensor:
        nfe = nfe or self.settings["ref_nfe"]
        return sr_sample(self.velocity, cond, noise, nfe, method or ("midpoint" if nfe % 2 == 0 else "euler"))

    def fit(self, step, n_steps: int, desc: str) -> dict:
        return fit(step, n_steps, desc=desc, progress=self.progress)

    # ------------------------------------------------------------ evaluation
    @cached_property
    def _halves(self):
        return disjoint_halves(self.data["test"].shape[0], self.eval_n, self.seed + 11)

    @cached_property
    def eval_hr(self) -> torch.Tensor:
        return self.data["test"][self._halves[0].to(self.device)]

    @cached_property
    def eval_cond(self) -> torch.Tensor:
        return range_part(self.eval_hr)

    @cached_property
    def eval_noise(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + 7)
        return torch.randn(self.eval_n, *self.shape, generator=g).to(self.device)

    @cached_property
    def feature_fn(self) -> Callable:
        if self._feature_fn is not None:
            return self._feature_fn
        from .features import ClassifierFeatures
        return ClassifierFeatures.from_teacher(size=32)

    @cached_property
    def _ref_features(self) -> torch.Tensor:
        return self.feature_fn(self.data["test"][self._halves[1].to(self.device)])

    @cached_property
    def floors(self) -> dict:
        """``hf`` and ``fd`` of the evaluation HR images themselves: what a perfect SR would show."""
        other = self.data["test"][self._halves[1].to(self.device)]
        return {"hf": hf_spectrum_error(other, self.eval_hr, self.hf_lo),
                "fd": frechet_distance(self.feature_fn(self.eval_hr), self._ref_features)}

    @torch.no_grad()
    def measure(self, x: torch.Tensor) -> dict:
        """The measurements of HR estimates ``x`` of the evaluation images (in their order)."""
        if x.shape != self.eval_hr.shape:
            raise ValueError(f"HR estimates must have shape {tuple(self.eval_hr.shape)}, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("the sampler produced NaN or inf; the student has diverged")
        return {"psnr": float(psnr(x, self.eval_hr).mean()), "hf": hf_spectrum_error(x, self.eval_hr, self.hf_lo),
                "fd": frechet_distance(self.feature_fn(x), self._ref_features),
                "range_error": float((range_part(x) - self.eval_cond).abs().max())}

    @torch.no_grad()
    def evaluate(self, sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunk: int = 500) -> dict:
        """``sample(cond, noise)`` on the evaluation set, measured (:meth:`measure`), with the floors."""
        t0 = time.perf_counter()
        c, z = self.eval_cond, self.eval_noise
        x = torch.cat([sample(c[i:i + chunk], z[i:i + chunk]) for i in range(0, len(c), chunk)])
        return {**self.measure(x), "floor_hf": self.floors["hf"], "floor_fd": self.floors["fd"],
                "seconds": time.perf_counter() - t0}

    @cached_property
    def baselines(self) -> dict:
        """The upsampled LR image, the teacher at 1 Euler step, and at its reference solver."""
        ref = self.settings["ref_nfe"]
        return {"upsampled LR": self.evaluate(lambda c, z: c),
                "teacher, 1 step": self.evaluate(lambda c, z: self.teacher_sample(c, z, 1, "euler")),
                f"teacher, {ref} NFE": self.evaluate(lambda c, z: self.teacher_sample(c, z, ref))}

    def teacher_quality(self, nfes=(1, 2, 4, 8)) -> dict:
        """The teacher's measurements at each Euler NFE and at its reference solver, and the floors."""
        out = {f"euler_{n}": self.evaluate(lambda c, z: self.teacher_sample(c, z, n, "euler")) for n in nfes}
        ref = self.settings["ref_nfe"]
        out[f"midpoint_{ref}"] = self.evaluate(lambda c, z: self.teacher_sample(c, z, ref))
        out["upsampled_lr"] = self.evaluate(lambda c, z: c)
        out["floors"] = self.floors
        return out


# ---------------------------------------------------------------------------------- the bench
SR_ROW_KEYS = ("method", "metric", "value", "floor", "psnr", "hf", "hf_floor", "range_error", "seeds",
               "train_seconds")


def run_sr_bench(exp: SRExperiment, methods=None, seed: int = 0) -> list[dict]:
    """The ``cifar-sr`` bench: one row for each baseline (:attr:`SRExperiment.baselines`), then one for
    each recipe of the track (``methods``: a subset), trained with ``seed``; ``value`` is the Fréchet
    distance, beside its floor, the PSNR, and the high-frequency error beside its floor."""
    from ..core.bench import bench_methods
    from ..core.registry import get_recipe

    def row(name, r, secs, error=None):
        r = r or {}
        return {"method": name, "metric": "fd_classifier", "value": r.get("fd"), "floor": exp.floors["fd"],
                "psnr": r.get("psnr"), "hf": r.get("hf"), "hf_floor": exp.floors["hf"],
                "range_error": r.get("range_error"), "seeds": [seed], "train_seconds": secs, "error": error}

    rows = [row(f"[{k}]", r, 0.0) for k, r in exp.baselines.items()]
    for m in methods or bench_methods("cifar-sr"):
        t0 = time.perf_counter()
        try:
            torch.manual_seed(seed)
            student = get_recipe(m, "cifar-sr").train(exp)
            rows.append(row(m, exp.evaluate(student.sample), time.perf_counter() - t0))
        except Exception as err:  # one failed method must not hide the others' results
            rows.append(row(m, None, time.perf_counter() - t0, f"{type(err).__name__}: {err}"))
    return rows


def format_sr_table(rows: list[dict]) -> str:
    from ..core.bench import text_table

    def f(v, d):
        return "-" if v is None else f"{v:.{d}f}"

    body = []
    for r in rows:
        body.append([r["method"], f(r["psnr"], 2), f(r["hf"], 3), f(r["value"], 2), f(r["train_seconds"], 0)])
        if r.get("error"):
            body.append([f"  failed: {r['error']}"])
    floor = rows[0] if rows else {}
    return text_table(["method", "PSNR (dB)", "HF spectrum error", "FD (classifier)", "train s"], body,
                      notes=[f"floors (two halves of real test images): HF {f(floor.get('hf_floor'), 3)}, "
                             f"FD {f(floor.get('floor'), 2)}; [..] rows are baselines, not trained"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m distill_lab.cifar.sr", description=__doc__.split("\n\n")[0])
    ap.add_argument("--commit", action="store_true", help="train the SR teacher and write its folder")
    ap.add_argument("--scale", default="ci", choices=sorted(SR_SETTINGS))
    ap.add_argument("--out", default=None, help="the folder (default: datasets/teachers/cifar10_sr_<scale>)")
    args = ap.parse_args(argv)
    if not args.commit:
        ap.error("nothing to do: pass --commit")
    manifest = commit_sr_teacher(args.scale, args.out)
    print(json.dumps(manifest["quality"], indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
