"""The CIFAR-10 flow-matching teacher of the step-distillation track: train it once, commit it small.

    python -m distill_lab.teacher_flow_cifar --scale ci --out datasets/teachers/cifar10_flow_ci
    python -m distill_lab.teacher_flow_cifar --scale ci --variant attn   # lab 22's softmax-attention teacher

A :class:`~distill_lab.unet.TimeUNet` velocity field ``v(x, t)`` is trained by conditional flow
matching with the linear path (Lipman et al. 2023, "Flow matching for generative modeling", eq. 23;
Liu et al. 2023, rectified flow): :func:`distill_lab.flows.flow_matching_loss` on CIFAR-10 images in
``[-1, 1]`` at the scale's resolution (:mod:`distill_lab.image_flow`), randomly mirrored. Adam with a
short linear warm-up and cosine decay, gradient clipping at norm 1, and an exponential moving average
of the weights (the EMA copy is the teacher: averaged weights give visibly better samples, as in
Ho et al. 2020 and Karras et al. 2022).

The folder holds

* ``teacher.pt`` -- the EMA weights, an fp16 ``state_dict`` of ``TimeUNet(**manifest["unet"])``;
* ``manifest.json`` -- the file's sha256 and size, the command, machine, torch version, training
  seconds, the U-Net configuration, the scale's settings, and the teacher's quality: the Fréchet
  distance in classifier features (not FID, see :mod:`distill_lab.gen_metrics`) of its Euler samples
  at NFE 1, 2, 4, 8, 16, 32 and of its reference solver, beside the floor (two disjoint real halves).

Every number in the manifest is measured on the fp16 weights reloaded as float32, which is what
:func:`load_flow_teacher` returns.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from .flows import flow_matching_loss
from .image_flow import (CifarFlow, ImageScale, build_unet, default_teacher_dir, image_scale, image_scale_dict,
                         load_flow_data)
from .models import clone_frozen, ema_update, n_params
from .scale import get_scale
from .teacher_cifar import _machine, _sha256, check_folder
from .train import fit, seed_everything
from .unet import TimeUNet

FILES = ("teacher.pt",)
CURVE_NFES = (1, 2, 4, 8, 16, 32)


class FlowTeacherUnavailable(FileNotFoundError):
    """The flow-teacher folder lacks a file, or a file's sha256 differs from the manifest's."""


def train_flow_teacher(train_x: torch.Tensor, isc: ImageScale, seed: int = 0, steps: int | None = None,
                       device: str = "cpu", progress: bool = True) -> tuple[TimeUNet, dict]:
    """Flow-match a :class:`TimeUNet` on images ``train_x: [N, 3, R, R]`` in ``[-1, 1]``.

    Each step: a batch of ``isc.teacher_batch`` random images, each mirrored with probability 1/2,
    :func:`~distill_lab.flows.flow_matching_loss` (uniform ``t``), Adam (``isc.teacher_lr``, warm-up
    over the first 2% of steps, then cosine to zero), gradients clipped at norm 1, and the EMA update
    ``ema <- d ema + (1 - d) theta`` with ``d = min(isc.teacher_ema, (1 + i) / (10 + i))`` (a short
    average early on, so the EMA is not stuck near the random initialisation).

    Returns ``(ema_net, info)`` with ``info = {"steps", "train_seconds", "history"}``.
    """
    steps = steps or isc.teacher_steps
    seed_everything(seed)
    net = build_unet(isc).to(device).train()
    ema = clone_frozen(net)
    opt = torch.optim.Adam(net.parameters(), lr=isc.teacher_lr)
    warm = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    train_x = train_x.to(device)

    def step(i):
        idx = torch.randint(0, train_x.shape[0], (isc.teacher_batch,), device=device)
        x1 = train_x[idx]
        flip = torch.rand(x1.shape[0], device=device) < 0.5
        x1 = torch.where(flip.view(-1, 1, 1, 1), x1.flip(-1), x1)
        loss = flow_matching_loss(net, x1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, net, min(isc.teacher_ema, (1 + i) / (10 + i)))
        return {"loss": loss, "grad_norm": gn}

    hist = fit(step, steps, desc="flow teacher (CIFAR-10)", log_every=100, progress=progress)
    for b_ema, b in zip(ema.buffers(), net.buffers()):  # TimeUNet has no running statistics; copy anyway
        b_ema.copy_(b)
    return ema.eval(), {"steps": steps, "train_seconds": hist["seconds"], "history": hist}


def _fp16_state(net: torch.nn.Module) -> dict:
    return {k: (v.detach().cpu().contiguous().half() if v.is_floating_point() else v.detach().cpu())
            for k, v in net.state_dict().items()}


def _net_from_state(unet_cfg: dict, state: dict) -> TimeUNet:
    net = TimeUNet(**unet_cfg)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.eval()


def teacher_quality(net: TimeUNet, scale=None, exp_kwargs: dict | None = None) -> dict:
    """The teacher's FD (classifier features) at each Euler NFE of :data:`CURVE_NFES` and with its
    reference solver, the floor, and the seconds the evaluation took."""
    t0 = time.perf_counter()
    exp = CifarFlow(scale, teacher=net, progress=False, **(exp_kwargs or {}))
    curve = exp.teacher_curve(CURVE_NFES, "euler")
    ref = exp.evaluate(lambda z: exp.teacher_sample(z))["value"]
    isc = exp.image_scale
    return {"metric": "Frechet distance in the KD classifier's features (not FID)",
            "n": exp.scale.eval_n, "floor": exp.floor,
            "fd_euler": {str(k): v for k, v in curve.items()},
            "ratio_euler": {str(k): v / exp.floor for k, v in curve.items()},
            f"fd_reference_{isc.teacher_method}{isc.teacher_nfe}": ref,
            "eval_seconds": round(time.perf_counter() - t0, 1)}


def save_flow_teacher(net: TimeUNet, out: str | os.PathLike, isc: ImageScale, info: dict,
                      command: str | None = None, quality: bool = True, scale=None,
                      data_source: str = "unknown") -> dict:
    """Write the fp16 weights and ``manifest.json`` to ``out``; with ``quality``, measure the NFE
    curve of the weights as saved (fp16 reloaded as float32). Returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _fp16_state(net)
    torch.save(state, out / "teacher.pt")
    net32 = _net_from_state(net.config, state)
    manifest = {
        "what": "CIFAR-10 flow-matching teacher (velocity U-Net) of distill-lab's step-distillation track",
        "command": command or shlex.join(["python"] + sys.argv),
        "data_source": data_source,
        "scale": get_scale(scale).name,
        "image_scale": image_scale_dict(isc),
        "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in net.config.items()},
        "n_params": n_params(net32),
        "steps": info.get("steps"),
        "train_seconds": round(float(info.get("train_seconds", float("nan"))), 1),
        "final_loss": info.get("final_loss"),
        "machine": _machine(),
        "torch": torch.__version__,
        "files": {name: {"sha256": _sha256(out / name), "bytes": (out / name).stat().st_size} for name in FILES},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")  # valid even if quality fails
    if quality:
        manifest["quality"] = teacher_quality(net32, scale)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_flow_teacher(path: str | os.PathLike | None = None, verify: bool = True,
                      missing_ok: bool = False) -> dict | None:
    """The committed flow teacher: ``{"model": TimeUNet (float32, eval), "manifest": dict}``.

    With ``verify`` each file's sha256 is checked against ``manifest.json``. A missing folder or
    file, or a mismatch, raises :class:`FlowTeacherUnavailable` saying how to rebuild it, or returns
    ``None`` when ``missing_ok``.
    """
    path = Path(path) if path is not None else default_teacher_dir("ci")
    manifest = check_folder(path, FILES, verify, "flow teacher", FlowTeacherUnavailable,
                            "distill_lab.teacher_flow_cifar", missing_ok)
    if manifest is None:
        return None
    state = torch.load(path / "teacher.pt", map_location="cpu", weights_only=True)
    return {"model": _net_from_state(manifest["unet"], state), "manifest": manifest}


def load_or_train_flow_teacher(path: str | os.PathLike | None = None, scale=None, progress: bool = True,
                               data: dict | None = None, variant: str | None = None) -> dict:
    """:func:`load_flow_teacher` when the folder is complete and its hashes match; otherwise train the
    scale's teacher (:func:`train_flow_teacher`; ``variant="attn"``: the softmax-attention teacher),
    write the folder, and load it."""
    path = Path(path) if path is not None else default_teacher_dir(scale, variant)
    teacher = load_flow_teacher(path, missing_ok=True)
    if teacher is not None:
        return teacher
    sc = get_scale(scale)
    print(f"no valid flow teacher at {path}; training one (scale {sc.name}{', variant ' + variant if variant else ''})")
    isc = image_scale(sc, variant)
    flow_data = load_flow_data(isc, data)
    net, info = train_flow_teacher(flow_data["train"], isc, device=sc.device, progress=progress)
    save_flow_teacher(net, path, isc, info, quality=False, scale=sc)
    return load_flow_teacher(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m distill_lab.teacher_flow_cifar",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default=None, help="ci, default or gpu (default: $DISTILL_LAB_SCALE or default)")
    ap.add_argument("--out", default=None, help="folder to write (default: datasets/teachers/cifar10_flow_<scale>)")
    ap.add_argument("--steps", type=int, default=None, help="override the scale's Adam steps (pilots)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="", choices=["", "attn"],
                    help="'attn': the softmax-attention teacher of the architecture-distillation section "
                         "(default out: datasets/teachers/cifar10_flow_attn_<scale>)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="re-measure the quality of the weights already in --out and rewrite the manifest")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sc = get_scale(args.scale)
    isc = image_scale(sc, args.variant)
    out = Path(args.out) if args.out else default_teacher_dir(sc, args.variant)
    command = "python -m distill_lab.teacher_flow_cifar " + shlex.join(sys.argv[1:] if argv is None else argv)
    from .cifar import load_cifar10
    cifar = load_cifar10(verbose=False)
    if args.evaluate_only:
        old = json.loads((out / "manifest.json").read_text())
        net = load_flow_teacher(out, verify=False)["model"]
        info = {k: old.get(k) for k in ("steps", "train_seconds", "final_loss")}
        command = old.get("command", command)
    else:
        flow_data = load_flow_data(isc, cifar)
        print(f"flow teacher TimeUNet({isc.unet}) on {len(flow_data['train'])} images of "
              f"{isc.resolution}x{isc.resolution}, {args.steps or isc.teacher_steps} steps, scale {sc.name}, "
              f"{torch.get_num_threads()} thread(s)", flush=True)
        net, info = train_flow_teacher(flow_data["train"], isc, seed=args.seed, steps=args.steps, device=sc.device,
                                       progress=not args.no_progress)
        info["final_loss"] = float(sum(info["history"]["loss"][-10:]) / len(info["history"]["loss"][-10:]))
        print(f"trained in {info['train_seconds']:.0f} s; measuring the NFE curve", flush=True)
    manifest = save_flow_teacher(net, out, isc, info, command=command, scale=sc, data_source=cifar.get("source", ""))
    print(json.dumps({k: manifest[k] for k in ("train_seconds", "n_params", "quality", "files")}, indent=2))
    return manifest


if __name__ == "__main__":
    main()
