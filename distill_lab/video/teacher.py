"""The bidirectional video teacher: a flow-matching transformer over whole clips, trained once, committed.

    python -m distill_lab.video.teacher --scale ci        # writes datasets/teachers/video_ci

A :class:`~distill_lab.video.nets.VideoTransformer` with full attention across the clip is trained by
conditional flow matching with the linear path (Lipman et al. 2023, eq. 23;
:func:`distill_lab.core.flows.flow_matching_loss`) on fresh clips of the toy world, ``frames`` frames
each. Half the clips are noised with one time for every frame (the usual video diffusion teacher),
half with an independent time per frame (as diffusion forcing trains, Chen et al. 2024), so the
teacher also denoises frames beside cleaner ones: what lets it extend a clip from clean context
frames (:func:`distill_lab.video.rollout.teacher_rollout`) and gives its causal copy a useful start.
Adam with a short warm-up and cosine decay, gradients clipped at norm 1, and an exponential moving
average of the weights, which is the teacher.

The folder holds ``teacher.pt`` (fp16 EMA weights) and ``manifest.json``: the command, machine,
seconds, the network's and the scale's settings, each file's sha256, and the teacher's quality on
clips of the training horizon sampled with ``teacher_nfe`` Euler steps: the frame error, the physics
residual and the dynamic degree of :mod:`distill_lab.video.metrics` beside the data's, and the
Fréchet distance of motion features beside its floor. Every number is measured on the fp16 weights
reloaded as float32, which is what :func:`load_teacher` returns.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..core.checkpoints import (check_folder, file_records, float32_state, fp16_state, training_record,
                                update_manifest)
from ..core.flows import flow_matching_loss, sample_ode
from ..core.scale import get_scale
from ..core.train import fit, seed_everything
from ..nets.utils import clone_frozen, ema_update, n_params
from .config import VideoScale, default_teacher_dir, own_teacher_dir, teacher_for, video_scale, video_scale_dict
from .metrics import clip_metrics, motion_fd
from .nets import VideoNetConfig, VideoTransformer

FILES = ("teacher.pt",)
REBUILD = "python -m distill_lab.video.teacher"


class VideoTeacherUnavailable(FileNotFoundError):
    """The video teacher's folder lacks a file, or a file's sha256 differs from the manifest's."""


def training_times(n: int, frames: int, device="cpu", per_frame: float = 0.5) -> torch.Tensor:
    """``[n, frames]`` noising times: for a share ``per_frame`` of the clips an independent time per
    frame, for the others one time for the whole clip; all uniform in [0, 1]."""
    clip_t = torch.rand(n, 1, device=device).expand(n, frames)
    frame_t = torch.rand(n, frames, device=device)
    return torch.where(torch.rand(n, 1, device=device) < per_frame, frame_t, clip_t)


def fit_teacher(net: VideoTransformer, batch_loss, steps: int, lr: float, ema_decay: float, desc: str,
                progress: bool = True, deadline: float | None = None) -> tuple[VideoTransformer, dict]:
    """The video track's teacher loop, shared by the bidirectional teacher and the world model: Adam at ``lr``
    with a warm-up of a fiftieth of the steps and cosine decay, ``batch_loss(i) -> loss`` on a fresh batch
    each step, gradients clipped at norm 1, and an exponential moving average of the weights (decay
    ``min(ema_decay, (1 + i) / (10 + i))``), which is returned as the teacher: ``(ema_net, info)`` with
    ``info = {"steps", "train_seconds", "final_loss", "history"}`` (``final_loss``: the mean of the last 10
    logged losses)."""
    ema = clone_frozen(net)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    warm = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))

    def step(i):
        loss = batch_loss(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, net, min(ema_decay, (1 + i) / (10 + i)))
        return {"loss": loss, "grad_norm": gn}

    hist = fit(step, steps, desc=desc, log_every=50, progress=progress, deadline=deadline)
    losses = hist.get("loss", [])[-10:]
    final = float(sum(losses) / len(losses)) if losses else None
    return ema.eval(), {"steps": hist["steps"], "train_seconds": hist["seconds"], "final_loss": final,
                        "history": hist}


def train_teacher(vsc: VideoScale, seed: int = 0, steps: int | None = None, device: str = "cpu",
                  progress: bool = True, deadline: float | None = None) -> tuple[VideoTransformer, dict]:
    """Flow-match a bidirectional :class:`VideoTransformer` on fresh clips (see the module docstring) with
    :func:`fit_teacher`; returns ``(ema_net, info)``."""
    steps = steps or vsc.teacher_steps
    seed_everything(seed)
    net = VideoTransformer(vsc.net, "full").to(device).train()

    def batch_loss(i):
        x1 = vsc.world.clips(vsc.teacher_batch, vsc.frames, vsc.resolution, device)
        return flow_matching_loss(net, x1, t=training_times(x1.shape[0], vsc.frames, device))

    return fit_teacher(net, batch_loss, steps, vsc.teacher_lr, vsc.teacher_ema, "video teacher", progress, deadline)


@torch.no_grad()
def teacher_quality(net: VideoTransformer, vsc: VideoScale, n: int | None = None, seed: int = 0) -> dict:
    """The teacher's clips (``teacher_nfe`` Euler steps over a whole clip of the training horizon) and
    real clips measured alike: frame error, physics residual, dynamic degree, and the motion Fréchet
    distance with its floor (two independent sets of real clips)."""
    n = n or vsc.eval_n
    g = torch.Generator().manual_seed(seed + 7)
    device = next(net.parameters()).device
    z = torch.randn(n, vsc.frames, 1, vsc.resolution, vsc.resolution, generator=g).to(device)
    t0 = time.perf_counter()
    fake = sample_ode(net, z, vsc.teacher_nfe, "euler")
    secs = time.perf_counter() - t0
    real = vsc.world.clips(n, vsc.frames, vsc.resolution, generator=torch.Generator().manual_seed(seed + 11))
    other = vsc.world.clips(n, vsc.frames, vsc.resolution, generator=torch.Generator().manual_seed(seed + 13))
    mf, mr, mo = (clip_metrics(x.cpu(), vsc.world, vsc.frames) for x in (fake, real, other))
    return {"n": n, "nfe_per_clip": vsc.teacher_nfe, "sample_seconds": round(secs, 2),
            "frame_error": mf["error_1x"], "frame_error_data": mr["error_1x"],
            "physics_residual": mf["physics"], "physics_residual_data": mr["physics"],
            "dynamic_degree": mf["dynamic_degree"], "dynamic_degree_data": mr["dynamic_degree"],
            "fd": motion_fd(mf["positions"], mr["positions"]), "fd_floor": motion_fd(mo["positions"], mr["positions"])}


def _net_from_state(cfg: dict, state: dict) -> VideoTransformer:
    net = VideoTransformer(VideoNetConfig(**cfg), "full")
    net.load_state_dict(float32_state(state))
    return net.eval()


def write_teacher(net: VideoTransformer, out: str | os.PathLike, what: str, settings: dict, info: dict,
                  command: str | None = None, scale=None) -> dict:
    """Write a video-track teacher's fp16 weights (``teacher.pt``) and ``manifest.json`` to ``out``: ``what`` it is,
    the scale, ``settings`` (e.g. ``{"video_scale": ...}``), the network's config and size, the training record
    and each file's sha256; return the manifest. Shared by this teacher and the world model."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(fp16_state(net), out / "teacher.pt")
    manifest = {
        "what": what,
        "scale": get_scale(scale).name,
        **settings,
        "net": asdict(net.config),
        "n_params": n_params(net),
        **training_record(info, command or shlex.join(["python"] + sys.argv)),
        "files": file_records(out, FILES),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def save_teacher(net: VideoTransformer, out: str | os.PathLike, vsc: VideoScale, info: dict,
                 command: str | None = None, scale=None) -> dict:
    """Write the fp16 weights and ``manifest.json`` to ``out`` (:func:`write_teacher`); return the manifest."""
    return write_teacher(net, out, "the bidirectional flow-matching video teacher of distill-lab's streaming-video track",
                         {"video_scale": video_scale_dict(vsc)}, info, command, scale)


def load_teacher(path: str | os.PathLike | None = None, verify: bool = True, missing_ok: bool = False) -> dict | None:
    """The committed teacher: ``{"model": VideoTransformer (float32, eval), "manifest"}``. A missing or
    altered folder, or a manifest without the ``files`` hashes or the ``net`` settings, raises
    :class:`VideoTeacherUnavailable` naming the command that rebuilds it (or returns ``None`` with
    ``missing_ok``); the manifest's figures (``quality``, ``final_loss``...) may be absent."""
    path = Path(path) if path is not None else default_teacher_dir("ci")
    manifest = check_folder(path, FILES, verify, "video teacher", VideoTeacherUnavailable, REBUILD, missing_ok,
                            required=("net",))
    if manifest is None:
        return None
    state = torch.load(path / "teacher.pt", map_location="cpu", weights_only=True)
    return {"model": _net_from_state(manifest["net"], state), "manifest": manifest}


def load_or_train_teacher(path: str | os.PathLike | None = None, scale=None, progress: bool = True) -> dict:
    """:func:`load_teacher` when the folder is complete and its hashes match; otherwise train the
    scale's teacher, write the folder with its measured quality, and load it. Without ``path``, a scale
    with no committed teacher of its own loads the ``ci`` one (:func:`~distill_lab.video.config.teacher_for`:
    a printed notice; ``$DISTILL_LAB_TRAIN_TEACHERS=1`` trains the scale's own instead)."""
    sc = get_scale(scale)
    if path is None:
        used, path = teacher_for(sc)
        sc = sc if used == sc.name else get_scale(used, device=sc.device)
    path = Path(path)
    teacher = load_teacher(path, missing_ok=True)
    if teacher is not None:
        return teacher
    print(f"no valid video teacher at {path}; training one (scale {sc.name})")
    vsc = video_scale(sc)
    net, info = train_teacher(vsc, device=sc.device, progress=progress)
    save_teacher(net, path, vsc, info, scale=sc)
    update_manifest(path, quality=teacher_quality(load_teacher(path)["model"], vsc))
    return load_teacher(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m distill_lab.video.teacher", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default=None, help="ci, default or gpu (default: $DISTILL_LAB_SCALE or default)")
    ap.add_argument("--out", default=None, help="folder to write (default: datasets/teachers/video_<scale>)")
    ap.add_argument("--steps", type=int, default=None, help="override the scale's Adam steps (pilots)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sc = get_scale(args.scale)
    vsc = video_scale(sc)
    out = Path(args.out) if args.out else own_teacher_dir(sc)
    command = f"{REBUILD} " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"video teacher {vsc.net} on clips of {vsc.frames} frames, {args.steps or vsc.teacher_steps} steps, "
          f"scale {sc.name}, {torch.get_num_threads()} thread(s)", flush=True)
    net, info = train_teacher(vsc, seed=args.seed, steps=args.steps, device=sc.device, progress=not args.no_progress)
    info["final_loss"] = float(sum(info["history"]["loss"][-10:]) / len(info["history"]["loss"][-10:]))
    print(f"trained in {info['train_seconds']:.0f} s; measuring its clips", flush=True)
    save_teacher(net, out, vsc, info, command=command, scale=sc)
    manifest = update_manifest(out, quality=teacher_quality(load_teacher(out)["model"], vsc))
    print(json.dumps({k: manifest[k] for k in ("train_seconds", "n_params", "quality", "files")}, indent=2))
    return manifest


if __name__ == "__main__":
    main()
