"""An action- and camera-conditioned world model of the interactive toy world: the teacher, trained once, committed.

    python -m distill_lab.video.world_model --scale ci        # writes datasets/teachers/worldmodel_ci

The teacher is the first video track's bidirectional :class:`~distill_lab.video.nets.VideoTransformer` with
a condition stream (``VideoNetConfig(cond_dim=6)``): each frame reads the action that led into it and the
camera's pose (:meth:`~distill_lab.video.interactive.InteractiveWorld.conditions`). It is trained by
conditional flow matching (linear path, Lipman et al. 2023; :func:`distill_lab.core.flows.flow_matching_loss`)
on clips of :class:`~distill_lab.video.interactive.InteractiveWorld` in which every clip has a scene of its
own, so what the camera will see again can be known only from the frames that showed it. As the first
video teacher, half the clips are noised with one time for the clip and half with a time per frame
(:func:`~distill_lab.video.teacher.training_times`), so it also extends a clip from clean context frames;
Adam with warm-up and cosine decay, gradients clipped at norm 1, and the EMA of the weights is the teacher.

The folder holds ``teacher.pt`` (fp16 EMA weights) and ``manifest.json`` (the command, machine, seconds,
settings, each file's sha256, and the teacher's measured quality: :func:`teacher_quality`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..core.checkpoints import (TEACHERS_DIR, check_folder, committed_teacher, file_records, float32_state,
                                fp16_state, training_record, update_manifest)
from ..core.flows import flow_matching_loss
from ..core.scale import Scale, get_scale
from ..core.train import fit, seed_everything
from ..nets.utils import clone_frozen, ema_update, n_params
from .interactive import InteractiveWorld
from .nets import VideoNetConfig, VideoTransformer
from .teacher import training_times

FILES = ("teacher.pt",)
REBUILD = "python -m distill_lab.video.world_model"


class WorldModelUnavailable(FileNotFoundError):
    """The world-model teacher's folder lacks a file, or a file's sha256 differs from the manifest's."""


@dataclass(frozen=True)
class WorldModelScale:
    """What the interactive track sizes by the scale (numbers only).

    ``frames``: the teacher's clip (its attention span); ``block``: frames a streaming student makes at once;
    ``teacher_*``: the flow-matching run; ``teacher_nfe``: Euler steps of the teacher's sampler;
    ``batch``, ``student_steps``, ``student_nfe``: the students' defaults; ``eval_n``: clips of an evaluation,
    ``eval_frames``: their length (a loop out and back)."""

    world: InteractiveWorld
    net: VideoNetConfig
    frames: int
    block: int
    teacher_steps: int
    teacher_batch: int
    teacher_lr: float
    teacher_ema: float
    teacher_nfe: int
    batch: int
    student_steps: int
    student_nfe: int
    eval_n: int
    eval_frames: int
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        if self.net.cond_dim != InteractiveWorld.COND_DIM:
            raise ValueError(f"the world model reads {InteractiveWorld.COND_DIM} numbers a frame: "
                             f"VideoNetConfig(cond_dim={InteractiveWorld.COND_DIM}), got {self.net.cond_dim}")
        if self.frames % self.block or self.eval_frames % self.block:
            raise ValueError(f"the block ({self.block} frames) must divide the clip ({self.frames}) and the "
                             f"evaluation ({self.eval_frames})")

    @property
    def resolution(self) -> int:
        return self.net.resolution


_NET = dict(resolution=16, patch=8, heads=4, cond_dim=InteractiveWorld.COND_DIM)
WORLD_MODEL_SCALES = {
    "ci": WorldModelScale(world=InteractiveWorld(), net=VideoNetConfig(dim=96, depth=4, **_NET), frames=8, block=2,
                          teacher_steps=8000, teacher_batch=32, teacher_lr=1e-3, teacher_ema=0.999, teacher_nfe=16,
                          batch=16, student_steps=200, student_nfe=2, eval_n=64, eval_frames=24,
                          notes="16x16, one sprite, a scene a clip, one CPU thread"),
    "default": WorldModelScale(world=InteractiveWorld(), net=VideoNetConfig(dim=128, depth=6, **_NET), frames=8,
                               block=2, teacher_steps=12000, teacher_batch=32, teacher_lr=1e-3, teacher_ema=0.999,
                               teacher_nfe=32, batch=32, student_steps=1000, student_nfe=4, eval_n=256,
                               eval_frames=32, notes="16x16, a laptop"),
    "gpu": WorldModelScale(world=InteractiveWorld(), net=VideoNetConfig(dim=192, depth=6, resolution=32, patch=4,
                                                                         heads=6, cond_dim=InteractiveWorld.COND_DIM),
                           frames=16, block=4, teacher_steps=30000, teacher_batch=64, teacher_lr=5e-4,
                           teacher_ema=0.9995, teacher_nfe=32, batch=64, student_steps=4000, student_nfe=4,
                           eval_n=512, eval_frames=64, notes="32x32, one GPU"),
}


def world_model_scale(scale: str | Scale | None = None) -> WorldModelScale:
    """The :class:`WorldModelScale` of a scale name (or ``$DISTILL_LAB_SCALE``)."""
    return WORLD_MODEL_SCALES[get_scale(scale).name]


def _folder_name(scale_name: str) -> str:
    return f"worldmodel_{scale_name}"


def own_teacher_dir(scale: str | Scale | None = None) -> Path:
    """``datasets/teachers/worldmodel_<scale>``, where this module's command writes."""
    return TEACHERS_DIR / _folder_name(get_scale(scale).name)


def teacher_for(scale: str | Scale | None = None) -> tuple[str, Path]:
    """``(scale name, folder)`` of the world-model teacher a scale loads: its own when committed, else the
    ``ci`` one with a printed notice (:func:`distill_lab.core.checkpoints.committed_teacher`)."""
    name = get_scale(scale).name
    return committed_teacher(TEACHERS_DIR, _folder_name, name, "world-model teacher", f"{REBUILD} --scale {name}",
                             "the interactive track runs at its ci settings")


def train_world_teacher(wsc: WorldModelScale, seed: int = 0, steps: int | None = None, device: str = "cpu",
                        progress: bool = True, deadline: float | None = None) -> tuple[VideoTransformer, dict]:
    """Flow-match a bidirectional, conditioned :class:`VideoTransformer` on fresh interactive clips (a scene
    a clip; module docstring); returns ``(ema_net, info)``."""
    steps = steps or wsc.teacher_steps
    seed_everything(seed)
    net = VideoTransformer(wsc.net, "full").to(device).train()
    ema = clone_frozen(net)
    opt = torch.optim.Adam(net.parameters(), lr=wsc.teacher_lr)
    warm = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))

    def step(i):
        data = wsc.world.clips(wsc.teacher_batch, wsc.frames, wsc.resolution)
        x1, cond = data["frames"].to(device), data["cond"].to(device)
        t = training_times(x1.shape[0], wsc.frames, device)
        with net.conditioned(cond):
            loss = flow_matching_loss(net, x1, t=t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, net, min(wsc.teacher_ema, (1 + i) / (10 + i)))
        return {"loss": loss, "grad_norm": gn}

    hist = fit(step, steps, desc="world-model teacher", log_every=50, progress=progress, deadline=deadline)
    losses = hist.get("loss", [])[-10:]
    final = float(sum(losses) / len(losses)) if losses else None
    return ema.eval(), {"steps": hist["steps"], "train_seconds": hist["seconds"], "final_loss": final,
                        "history": hist}


def save_teacher(net: VideoTransformer, out: str | os.PathLike, wsc: WorldModelScale, info: dict,
                 command: str | None = None, scale=None) -> dict:
    """Write the fp16 weights and ``manifest.json`` to ``out``; return the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(fp16_state(net), out / "teacher.pt")
    manifest = {
        "what": "the action- and camera-conditioned bidirectional world model of distill-lab's interactive track",
        "scale": get_scale(scale).name,
        "world_model_scale": asdict(wsc),
        "net": asdict(net.config),
        "n_params": n_params(net),
        **training_record(info, command or shlex.join(["python"] + sys.argv)),
        "files": file_records(out, FILES),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_teacher(path: str | os.PathLike | None = None, verify: bool = True, missing_ok: bool = False) -> dict | None:
    """The committed world model: ``{"model": VideoTransformer (float32, eval), "manifest"}``; a missing or
    altered folder raises :class:`WorldModelUnavailable` naming the command that rebuilds it (or returns
    ``None`` with ``missing_ok``)."""
    path = Path(path) if path is not None else teacher_for("ci")[1]
    manifest = check_folder(path, FILES, verify, "world-model teacher", WorldModelUnavailable, REBUILD, missing_ok,
                            required=("net",))
    if manifest is None:
        return None
    net = VideoTransformer(VideoNetConfig(**manifest["net"]), "full")
    net.load_state_dict(float32_state(torch.load(path / "teacher.pt", map_location="cpu", weights_only=True)))
    return {"model": net.eval(), "manifest": manifest}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog=REBUILD, description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default=None, help="ci, default or gpu (default: $DISTILL_LAB_SCALE or default)")
    ap.add_argument("--out", default=None, help="folder to write (default: datasets/teachers/worldmodel_<scale>)")
    ap.add_argument("--steps", type=int, default=None, help="override the scale's Adam steps (pilots)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sc = get_scale(args.scale)
    wsc = world_model_scale(sc)
    out = Path(args.out) if args.out else own_teacher_dir(sc)
    command = f"{REBUILD} " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"world-model teacher {wsc.net} on clips of {wsc.frames} frames, {args.steps or wsc.teacher_steps} steps, "
          f"scale {sc.name}, {torch.get_num_threads()} thread(s)", flush=True)
    t0 = time.perf_counter()
    net, info = train_world_teacher(wsc, seed=args.seed, steps=args.steps, device=sc.device,
                                    progress=not args.no_progress)
    print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
    manifest = save_teacher(net, out, wsc, info, command=command, scale=sc)
    print(json.dumps({k: manifest[k] for k in ("train_seconds", "n_params", "final_loss", "files")}, indent=2))
    return manifest


if __name__ == "__main__":
    main()
