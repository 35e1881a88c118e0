"""CIFAR-10 super-resolution: the conditional task of the step-distillation track.

    python -m distill_lab.cifar.sr --commit --scale ci   # train the SR teacher, write datasets/teachers/cifar10_sr_ci

The high-resolution (HR) image is the track's image at the scale's resolution (16 x 16 at ``ci``); its
low-resolution (LR) version is the ``FACTOR x FACTOR`` block average (8 x 8). Write ``P x`` for
:func:`range_part`, the block average spread back over its block (``up(down(x))``): an orthogonal
projection onto images constant on each block, and everything the LR image says about the HR one.
:func:`null_part` is ``x - P x``, what super-resolution must invent.

**The SR flow** (the path every method of the track shares): start at ``x_0 = c + sigma * (I - P) eps``
with ``c = up(LR)`` and ``eps ~ N(0, I)`` (:func:`sr_start`), end at ``x_1 = HR``, and move on the
line ``x_t = (1 - t) x_0 + t x_1``. The velocity ``x_1 - x_0 = (I - P)(HR - sigma eps)`` has no
range part, so :class:`SRVelocity` projects its network's output with ``I - P``: every sample of the
flow, at any step count and with any weights, keeps ``P x = c``; its block averages are the LR input
exactly. This is the flow of CTMSR (a PF-ODE from the noisy LR image to the HR image), with the noise
kept to the part the LR image leaves open (the range/null-space split of DDNM, Wang et al. 2023).

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
import torch.nn.functional as F
from torch import nn

from ..core.checkpoints import (check_folder, file_records, float32_state, fp16_state, teachers_root,
                                training_record, update_manifest)
from ..core.flows import expand_t, interpolate
from ..core.scale import get_scale
from ..core.train import fit, seed_everything
from ..metrics.frechet import disjoint_halves, frechet_distance
from ..metrics.images import hf_spectrum_error, psnr
from ..nets.unet import TimeUNet
from ..nets.utils import clone_frozen, ema_update, n_params
from .flow_config import IMAGE_SCALES, load_flow_data

FACTOR = 2  # the LR image is the HR image's FACTOR x FACTOR block average
SIGMA = 1.0  # the start's noise level on the null part
FILES = ("teacher.pt",)
COMMAND = "python -m distill_lab.cifar.sr --commit --scale"
# the SR teacher's training, per scale (numbers only); ``unet``: TimeUNet options beside cond_channels=3
SR_SETTINGS = {
    "ci": dict(steps=4000, batch=64, lr=2e-3, ema=0.999, unet=dict(base=16, mults=(1, 2, 4), blocks=1),
               eval_n=1000, ref_nfe=16),
}


class SRTeacherUnavailable(FileNotFoundError):
    """The SR teacher's folder lacks a file, or a file's sha256 differs from the manifest's."""


# ---------------------------------------------------------------------------------- the operators
def downsample(x: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """``[N, C, H, W] -> [N, C, H / f, W / f]``: the block average (area downsampling)."""
    if x.dim() != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"images [N, C, H, W] with H and W divisible by {factor} expected, got {tuple(x.shape)}")
    return F.avg_pool2d(x, factor)


def upsample(y: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """``[N, C, h, w] -> [N, C, h f, w f]``: each pixel repeated over its block (nearest)."""
    return y.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def range_part(x: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """``P x = up(down(x))``: the orthogonal projection onto block-constant images."""
    return upsample(downsample(x, factor), factor)


def null_part(x: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """``(I - P) x``: the part of ``x`` its block averages do not determine."""
    return x - range_part(x, factor)


def sr_start(cond: torch.Tensor, noise: torch.Tensor, sigma: float = SIGMA, factor: int = FACTOR) -> torch.Tensor:
    """The SR flow's start ``x_0 = c + sigma (I - P) eps`` for ``c = up(LR)`` and noise ``eps``."""
    if cond.shape != noise.shape:
        raise ValueError(f"cond and noise must have the same shape, got {tuple(cond.shape)} and {tuple(noise.shape)}")
    return cond + sigma * null_part(noise, factor)


class SRVelocity(nn.Module):
    """``v(x, t, c) = (I - P) net(x, t, cond=c)``: a conditional velocity with no range part, around a
    :class:`~distill_lab.nets.unet.TimeUNet` built with ``cond_channels`` equal to its ``channels``.
    ``net`` may take several times (a flow map's ``V(x, s, t, c)``): ``forward(x, *times, cond=c)``."""

    def __init__(self, net: TimeUNet, factor: int = FACTOR):
        super().__init__()
        if getattr(net, "cond_channels", 0) != getattr(net, "channels", -1):
            raise ValueError("SRVelocity needs a TimeUNet with cond_channels equal to channels (the "
                             "condition is the upsampled LR image)")
        self.net, self.factor = net, factor

    def forward(self, x: torch.Tensor, *times: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return null_part(self.net(x, *times, cond=cond), self.factor)


def sr_unet(settings: dict, n_times: int = 1) -> TimeUNet:
    return TimeUNet(channels=3, cond_channels=3, n_times=n_times, **settings["unet"])


def sr_flow_loss(velocity: Callable, hr: torch.Tensor, noise: torch.Tensor | None = None,
                 t: torch.Tensor | None = None, sigma: float = SIGMA, factor: int = FACTOR) -> torch.Tensor:
    """Flow matching on the SR flow (Lipman et al. 2023, eq. 23, on this path): with ``c = P hr``,
    ``x_0 = sr_start(c, eps)``, ``x_t = (1 - t) x_0 + t hr``, the loss is
    ``mean || v(x_t, t, c) - (hr - x_0) ||^2`` over elements. No teacher; ``velocity(x, t, cond=c)``."""
    noise = torch.randn_like(hr) if noise is None else noise
    t = torch.rand(hr.shape[0], device=hr.device) if t is None else t
    c = range_part(hr, factor)
    x0 = sr_start(c, noise, sigma, factor)
    return (velocity(interpolate(x0, hr, t), t, cond=c) - (hr - x0)).pow(2).mean()


@torch.no_grad()
def sr_sample(velocity: Callable, cond: torch.Tensor, noise: torch.Tensor, nfe: int, method: str = "euler",
              sigma: float = SIGMA, factor: int = FACTOR) -> torch.Tensor:
    """Solve the SR flow from ``sr_start(cond, noise)`` to ``t = 1`` in ``nfe`` evaluations (Euler, or
    midpoint with ``nfe`` even)."""
    if method not in ("euler", "midpoint") or nfe < 1 or (method == "midpoint" and nfe % 2):
        raise ValueError(f"use method 'euler' (any nfe >= 1) or 'midpoint' (even nfe); got {method!r}, nfe={nfe}")
    steps = nfe if method == "euler" else nfe // 2
    x = sr_start(cond, noise, sigma, factor)
    ts = torch.linspace(0, 1, steps + 1, device=x.device)
    for i in range(steps):
        a, b = ts[i].expand(x.shape[0]), ts[i + 1].expand(x.shape[0])
        v = velocity(x, a, cond=cond)
        if method == "midpoint":
            m = (a + b) / 2
            v = velocity(x + expand_t(m - a, x) * v, m, cond=cond)
        x = x + expand_t(b - a, x) * v
    return x


# ---------------------------------------------------------------------------------- the teacher
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
        idx = torch.randint(0, train_x.shape[0], (settings["batch"],), device=device)
        hr = train_x[idx]
        flip = torch.rand(hr.shape[0], device=device) < 0.5
        hr = torch.where(flip.view(-1, 1, 1, 1), hr.flip(-1), hr)
        loss = sr_flow_loss(model, hr)
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
class SRExperiment:
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
        self.settings = SR_SETTINGS[self.scale_name]
        self.image_scale = IMAGE_SCALES[self.scale_name]
        self.device, self.seed, self.progress = sc.device, seed, progress
        self.resolution = self.image_scale.resolution
        self.shape = (3, self.resolution, self.resolution)
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
        n = n or self.batch
        train = self.data["train"]
        hr = train[torch.randint(0, train.shape[0], (n,), device=self.device)]
        flip = torch.rand(n, device=self.device) < 0.5
        hr = torch.where(flip.view(-1, 1, 1, 1), hr.flip(-1), hr)
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
