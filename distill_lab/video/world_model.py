"""An action- and camera-conditioned world model of the interactive toy world: the teacher, trained once, committed.

    python -m distill_lab.video.world_model --scale ci        # writes datasets/teachers/worldmodel_ci

The teacher is the first video track's bidirectional :class:`~distill_lab.video.nets.VideoTransformer` with
a condition stream (``VideoNetConfig(cond_dim=7)``): each frame reads the action that led into it and the
camera's pose (:meth:`~distill_lab.video.interactive.InteractiveWorld.conditions`). It is trained by
conditional flow matching (linear path, Lipman et al. 2023; :func:`distill_lab.core.flows.flow_matching_loss`)
on clips of :class:`~distill_lab.video.interactive.InteractiveWorld` in which every clip has a scene of its
own, so what the camera will see again can be known only from the frames that showed it. As the first
video teacher, half the clips are noised with one time for the clip and half with a time per frame
(:func:`~distill_lab.video.teacher.training_times`), so it also extends a clip from clean context frames;
Adam with warm-up and cosine decay, gradients clipped at norm 1, and the EMA of the weights is the teacher. Where
the scale says so (``init_video``: at ci), training starts from the committed video teacher of the same network
(:func:`init_from`), which knows the sprites and their motion; :func:`condition_use` measures whether the trained
model reads its actions and poses.

The folder holds ``teacher.pt`` (fp16 EMA weights) and ``manifest.json`` (the command, machine, seconds,
settings, each file's sha256, and the teacher's measured quality: :func:`teacher_quality`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..core.checkpoints import TEACHERS_DIR, check_folder, committed_teacher, update_manifest
from ..core.scale import Scale, get_scale
from ..core.train import seed_everything
from .interactive import (InteractiveWorld, action_following_error, loop_closure_error, nearest_frames, push_gain,
                          revisit_error, sprite_free, sprite_positions)
from .nets import VideoNetConfig, VideoTransformer
from .teacher import _net_from_state, fit_teacher, write_teacher

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
    ``eval_frames``: their length (a loop out and back); ``init_video``: the base model starts from the first
    video track's committed teacher of the same network (it knows the sprites and their motion already)."""

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
    memory: int = 2
    history: int = 8
    reinject: float = 0.25
    init_video: bool = False
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        if self.net.cond_dim != InteractiveWorld.COND_DIM:
            raise ValueError(f"the world model reads {InteractiveWorld.COND_DIM} numbers a frame: "
                             f"VideoNetConfig(cond_dim={InteractiveWorld.COND_DIM}), got {self.net.cond_dim}")
        if self.frames % self.block or self.eval_frames % self.block:
            raise ValueError(f"the block ({self.block} frames) must divide the clip ({self.frames}) and the "
                             f"evaluation ({self.eval_frames})")
        if not 1 <= self.memory <= self.history or (self.history + self.frames) % 2:
            raise ValueError(f"memory ({self.memory} frames) is drawn from the history ({self.history}), and history "
                             f"plus clip ({self.history + self.frames}) must be even (a loop out and back)")
        if not 0 <= self.reinject <= 1:
            raise ValueError(f"reinject is a share of the training samples, in [0, 1], got {self.reinject}")

    @property
    def resolution(self) -> int:
        return self.net.resolution


_NET = dict(resolution=16, patch=8, heads=4, cond_dim=InteractiveWorld.COND_DIM)
#: the world of the interactive track: a dense scene (24 wide, dim landmarks: a smooth field that fills the frame,
#: so that every pan moves most pixels and a model that ignores the camera pays for it; a pilot with six small
#: landmarks left the conditions unused), pans up to 0.15 of the frame a frame
WORLD = InteractiveWorld(n_landmarks=24, landmark_sigma=0.2, landmark_level=0.22, max_pan=0.15)
WORLD_MODEL_SCALES = {
    "ci": WorldModelScale(world=WORLD, net=VideoNetConfig(dim=96, depth=4, **_NET), frames=8, block=2,
                          teacher_steps=10000, teacher_batch=32, teacher_lr=1e-3, teacher_ema=0.999, teacher_nfe=16,
                          batch=16, student_steps=200, student_nfe=2, eval_n=64, eval_frames=24, reinject=0.15,
                          init_video=True, notes="16x16, one sprite, a scene a clip, one CPU thread"),
    "default": WorldModelScale(world=WORLD, net=VideoNetConfig(dim=128, depth=6, **_NET), frames=8,
                               block=2, teacher_steps=12000, teacher_batch=32, teacher_lr=1e-3, teacher_ema=0.999,
                               teacher_nfe=32, batch=32, student_steps=1000, student_nfe=4, eval_n=256,
                               eval_frames=32, notes="16x16, a laptop"),
    "gpu": WorldModelScale(world=WORLD, net=VideoNetConfig(dim=192, depth=6, resolution=32, patch=4,
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


# ---------------------------------------------------------------- the base model's data: memory and a clip
POLICIES = ("recent", "retrieval")


def trajectories(wsc: WorldModelScale, n: int, frames: int, generator: torch.Generator | None = None,
                 loop_share: float = 0.5) -> dict:
    """``n`` interactive clips of ``frames`` frames (a scene a clip, :meth:`InteractiveWorld.clips`), a share
    ``loop_share`` of them on RealCam's loop-closed paths (out for half the clip, back the same way: the camera
    starts at the scene's centre and the pans are scaled down where they would reach its edge, so that it comes
    back exactly), the rest on random actions from a random start."""
    if frames % 2:
        raise ValueError(f"a loop out and back needs an even number of frames, got {frames}")
    g = generator or torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    w = wsc.world
    actions = w.random_actions(n, frames, g)
    start = (w.scene_size - 1) * torch.rand(n, 2, generator=g, dtype=torch.float64)
    loop = torch.rand(n, generator=g) < loop_share
    if loop.any():
        out = w.random_actions(int(loop.sum()), frames // 2, g)
        reach = out[:, :-1, :2].cumsum(1).abs().amax(1).amax(1).clamp(min=1e-12)      # farthest from the start
        room = 0.45 * (w.scene_size - 1)
        out[..., :2] *= (room / reach).clamp(max=1.0)[:, None, None]
        actions[loop] = w.loop_closed(out)
        start[loop] = (w.scene_size - 1) / 2
    sim = w.simulate(n, frames, actions=actions, start=start, random_scene=True, generator=g)
    sim["frames"] = w.render(sim["states"], sim["camera"], wsc.resolution, sim["landmarks"])
    sim["cond"] = w.conditions(sim["actions"], sim["camera"])
    return sim


def memory_cond(world: InteractiveWorld, data: dict, idx: torch.Tensor) -> torch.Tensor:
    """The conditions ``[B, M, 7]`` of the frames ``idx [B, M]`` of ``data`` recalled from memory: their poses and
    the memory flag, no action."""
    cam = torch.gather(data["camera"], 1, idx[..., None].expand(-1, -1, 2))
    return world.conditions(torch.zeros(*idx.shape, 4, dtype=torch.float64), cam, torch.ones(idx.shape, dtype=torch.bool))


def gather_frames(frames: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``frames [B, F, C, H, W]`` at ``idx [B, M]`` -> ``[B, M, C, H, W]``."""
    return torch.gather(frames, 1, idx.view(*idx.shape, 1, 1, 1).expand(-1, -1, *frames.shape[2:]))


def choose_memory(data: dict, upto: int, query: torch.Tensor, m: int, policy: str) -> torch.Tensor:
    """Which ``m`` of the frames ``0 .. upto - 1`` a model recalls ``[B, m]``: ``"recent"`` the last ``m`` of them
    (a longer window, the same memory), ``"retrieval"`` the ``m`` whose camera is nearest the poses ``query
    [B, Q, 2]`` of the frames to be made (Matrix-Game 3.0's camera-aware retrieval, :func:`nearest_frames`)."""
    if policy not in POLICIES:
        raise ValueError(f"the memory policy is one of {', '.join(POLICIES)}, got {policy!r}")
    if not 1 <= m <= upto:
        raise ValueError(f"{m} memory frames cannot be drawn from {upto} earlier frames")
    B = data["camera"].shape[0]
    if policy == "recent":
        return torch.arange(upto - m, upto).expand(B, m)
    return nearest_frames(data["camera"][:, :upto], query, m)


def memory_sample(wsc: WorldModelScale, n: int, generator: torch.Generator | None = None) -> dict:
    """A training batch of the memory-augmented base model: trajectories of ``history + frames`` frames
    (:func:`trajectories`); the clip is the last ``frames`` frames, and ``memory`` frames of the history go before
    it, chosen for half the clips by camera-aware retrieval against the clip's poses and for the others at
    random (so the model learns to use a relevant memory and to ignore an irrelevant one). Returns ``{"x":
    [n, M + F, 1, R, R], "cond": [n, M + F, 7], "memory": M}``."""
    g = generator or torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    H, F, M = wsc.history, wsc.frames, wsc.memory
    data = trajectories(wsc, n, H + F, g)
    near = choose_memory(data, H, data["camera"][:, H:], M, "retrieval")
    rand = torch.rand(n, H, generator=g).argsort(1)[:, :M]
    idx = torch.where((torch.rand(n, generator=g) < 0.5)[:, None], near, rand)
    x = torch.cat([gather_frames(data["frames"], idx), data["frames"][:, H:]], 1)
    cond = torch.cat([memory_cond(wsc.world, data, idx), data["cond"][:, H:]], 1)
    return {"x": x, "cond": cond, "memory": M}


def layout_times(n: int, frames: int, memory: int, block: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[n, memory + frames]`` noising times of a training batch: memory frames clean (``t = 1``); the clip's
    frames, for a quarter of the batch one time for the clip, for a quarter a time a frame (diffusion forcing),
    for half the streaming layout (every frame clean but the last ``block``, which share one time: how the
    model is asked to extend a stream, so it gets the largest share)."""
    u = torch.rand(n, 1, generator=generator).expand(n, frames)
    per = torch.rand(n, frames, generator=generator)
    stream = torch.ones(n, frames)
    stream[:, -block:] = torch.rand(n, 1, generator=generator)
    mode = torch.randint(0, 4, (n, 1), generator=generator).clamp(max=2)  # 0, 1: a quarter each; 2: half
    t = torch.where(mode == 0, u, torch.where(mode == 1, per, stream))
    return torch.cat([torch.ones(n, memory), t], 1)


class ResidualBank:
    """Matrix-Game 3.0's error-aware training, as this lab reads it: the residuals ``x_hat - x`` of the model's
    own clean-frame predictions (``x_hat = x_t + (1 - t) v``, detached) are kept, the most recent ``size`` frames
    of them, and added to the clean frames (memory and context) of a share of the batches, so that the
    model learns to extend a stream from imperfect, self-generated frames and to correct them."""

    def __init__(self, size: int = 512):
        self.size, self.bank = size, None

    def add(self, residuals: torch.Tensor) -> None:
        r = residuals.detach().reshape(-1, *residuals.shape[2:])
        self.bank = r if self.bank is None else torch.cat([self.bank, r])[-self.size:]

    def __len__(self) -> int:
        return 0 if self.bank is None else self.bank.shape[0]

    def inject(self, x: torch.Tensor, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x [B, F, ...]`` with a residual drawn from the bank added to every frame ``clean [B, F]`` marks."""
        if not len(self):
            return x
        pick = torch.randint(0, len(self), clean.shape, generator=generator)
        r = self.bank[pick.to(self.bank.device)].to(x.dtype)
        return x + clean.to(x.dtype).view(*clean.shape, *[1] * (x.dim() - 2)) * r


def base_model_loss(net: VideoTransformer, x1: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                    x0: torch.Tensor | None = None, bank: ResidualBank | None = None,
                    reinject: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Conditional flow matching of the memory-augmented base model (Lipman et al. 2023, eq. 23, linear path)
    on a batch laid out as ``[memory | clip]``: ``x_t = (1 - t) x0 + t x1`` frame by frame, the loss ``|v(x_t, t)
    - (x1 - x0)|^2`` averaged over the frames still to make (``t < 1``) only; clean frames (``t = 1``: memory
    and context) are inputs. ``reinject [B]`` marks the clips whose clean frames get a residual from ``bank``
    (Matrix-Game 3.0's re-injection); the bank then takes this batch's residuals of the frames to make.
    Stop-gradient: the residuals. Returns ``(loss, info)``."""
    if x1.shape[:2] != t.shape or cond.shape[:2] != t.shape:
        raise ValueError(f"x1 [B, F, ...], cond [B, F, 7] and t [B, F] must agree, got {tuple(x1.shape)}, "
                         f"{tuple(cond.shape)}, {tuple(t.shape)}")
    x0 = torch.randn_like(x1) if x0 is None else x0
    te = t.view(*t.shape, *[1] * (x1.dim() - 2)).to(x1.dtype)
    xt = (1 - te) * x0 + te * x1
    clean = t >= 1
    if bank is not None and reinject is not None:
        xt = bank.inject(xt, clean & reinject[:, None])
    with net.conditioned(cond):
        v = net(xt, t)
    make = (~clean).to(x1.dtype)
    per = (v - (x1 - x0)).pow(2).flatten(2).mean(-1)                              # [B, F]
    loss = (per * make).sum() / make.sum().clamp(min=1)
    if bank is not None:
        with torch.no_grad():
            late = (t >= 0.5) & ~clean
            if late.any():
                bank.add((xt + (1 - te) * v - x1)[late][:, None])
    per_clip = ((per * make).sum(1) / make.sum(1).clamp(min=1)).detach()
    return loss, {"fm": float(loss.detach()), "to_make": float(make.mean()), "per_clip": per_clip}


def init_from(net: VideoTransformer, state: dict) -> list[str]:
    """Load ``state`` (the weights of an unconditioned :class:`VideoTransformer` of the same shape, e.g. the
    first video track's teacher) into the conditioned ``net``; the condition stream's MLP keeps its fresh
    weights. Returns the names it kept; any other mismatch raises (the shapes differ: another network)."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("cond_mlp.") for k in missing):
        raise ValueError(f"the weights do not fit this world model's network (missing {missing}, unexpected "
                         f"{unexpected}): they must come from a VideoTransformer of the same VideoNetConfig")
    return missing


def train_world_teacher(wsc: WorldModelScale, seed: int = 0, steps: int | None = None, device: str = "cpu",
                        progress: bool = True, deadline: float | None = None,
                        init: dict | None = None) -> tuple[VideoTransformer, dict]:
    """Train the memory-augmented, conditioned base model (module docstring) on :func:`memory_sample` batches
    with :func:`layout_times` and :func:`base_model_loss` (a share ``reinject`` of the clips re-injected with
    the model's own residuals), in the video teacher's loop (:func:`~distill_lab.video.teacher.fit_teacher`);
    ``init``: start from these weights (:func:`init_from`: the first video track's teacher, which already
    knows the sprites and their motion). Returns ``(ema_net, info)``."""
    steps = steps or wsc.teacher_steps
    seed_everything(seed)
    net = VideoTransformer(wsc.net, "full").to(device).train()
    if init is not None:
        init_from(net, init)
    bank = ResidualBank()

    def batch_loss(i):
        b = memory_sample(wsc, wsc.teacher_batch)
        x1, cond = b["x"].to(device), b["cond"].to(device)
        t = layout_times(x1.shape[0], wsc.frames, b["memory"], wsc.block).to(device)
        reinject = torch.rand(x1.shape[0], device=device) < wsc.reinject
        return base_model_loss(net, x1, cond, t, bank=bank, reinject=reinject)[0]

    return fit_teacher(net, batch_loss, steps, wsc.teacher_lr, wsc.teacher_ema, "world-model teacher", progress,
                       deadline)


@torch.no_grad()
def condition_use(net: VideoTransformer, wsc: WorldModelScale, n: int = 256, seed: int = 0) -> dict:
    """Does the base model read its conditions? Its flow-matching loss (:func:`base_model_loss`) on ``n`` fresh
    ``[memory | clip]`` batches in the streaming layout (every frame clean but the last block, at a time uniform in
    [0.2, 1)), under the true conditions, under the last block's conditions (the actions into it and the camera's
    poses) taken from another clip, and under all conditions zero; the same noise and times for the three.
    Returns the mean losses and, for the two changes, the paired difference to the true conditions with its
    standard error over the clips (a model that ignores the actions and poses: zero within a few errors)."""
    g = torch.Generator().manual_seed(seed + 35)
    b = memory_sample(wsc, n, g)
    x1, cond = b["x"], b["cond"]
    device = next(net.parameters()).device
    t = torch.ones(n, x1.shape[1])
    t[:, -wsc.block:] = 0.2 + 0.8 * torch.rand(n, 1, generator=g)
    x0 = torch.randn(x1.shape, generator=g)
    other = torch.roll(torch.arange(n), 1)                       # each clip's block gets its neighbour's conditions
    shuffled = cond.clone()
    shuffled[:, -wsc.block:] = cond[other, -wsc.block:]
    per = {k: base_model_loss(net, x1.to(device), c.to(device), t.to(device), x0=x0.to(device))[1]["per_clip"].cpu()
           for k, c in (("true", cond), ("block_shuffled", shuffled), ("zero", torch.zeros_like(cond)))}
    out = {k: float(v.mean()) for k, v in per.items()}
    for k in ("block_shuffled", "zero"):
        d = (per[k] - per["true"]).double()
        out[f"{k}_minus_true"] = (float(d.mean()), float(d.std() / n ** 0.5))
    return out


# ---------------------------------------------------------------- streaming the base model, and its measures
@torch.no_grad()
def stream_base_model(net: VideoTransformer, wsc: WorldModelScale, data: dict, policy: str = "retrieval",
                      nfe: int | None = None, memory: int | None = None, generator: torch.Generator | None = None,
                      progress: bool = False) -> torch.Tensor:
    """The bidirectional base model run as a world model over ``data`` (:func:`trajectories`): its first
    ``memory + frames - block`` frames are given (real), then each block of ``block`` frames is made by ``nfe``
    Euler steps from noise with the window ``[memory | last frames - block frames | block]``: the memory
    chosen by ``policy`` (:func:`choose_memory`) among the frames older than the window, the window's frames
    clean and the block's at the step's time, every frame under its condition (the block's from the
    user's actions and poses). Returns the stream ``[B, L, 1, R, R]``."""
    nfe = nfe or wsc.teacher_nfe
    M = wsc.memory if memory is None else memory
    F, b = wsc.frames, wsc.block
    frames = data["frames"]
    B, L = frames.shape[:2]
    ctx = F - b
    first = M + ctx
    if L <= first or (L - first) % b:
        raise ValueError(f"a stream of {L} frames cannot continue {first} given frames in blocks of {b}")
    device = next(net.parameters()).device
    g = generator or torch.Generator().manual_seed(0)
    out = frames.clone().to(device)
    cond = data["cond"].to(device)
    starts = range(first, L, b)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=f"stream ({policy})", leave=False)
    for s in starts:
        old = s - ctx                                                                  # frames before the window
        idx = choose_memory(data, old, data["camera"][:, s:s + b], M, policy).to(device)
        mem_x, mem_c = gather_frames(out, idx), memory_cond(wsc.world, data, idx.cpu()).to(device)
        c = torch.cat([mem_c, cond[:, old:s + b]], 1)
        x = torch.randn(B, b, *frames.shape[2:], generator=g).to(device)
        with net.conditioned(c):
            for k in range(nfe):
                tk = k / nfe
                t = torch.ones(B, M + ctx + b, device=device)
                t[:, -b:] = tk
                v = net(torch.cat([mem_x, out[:, old:s], x], 1), t)[:, -b:]
                x = x + v / nfe
        out[:, s:s + b] = x
    return out.cpu()


def hold_last(data: dict, given: int) -> torch.Tensor:
    """The world model that does nothing: every frame after the ``given`` ones repeats the last given frame
    (the baseline every stream is read against: it ignores the actions and remembers nothing)."""
    out = data["frames"].clone()
    out[:, given:] = out[:, given - 1:given]
    return out


def stream_measures(wsc: WorldModelScale, data: dict, stream: torch.Tensor, given: int) -> dict:
    """A world model's stream measured against the world: ``revisit`` (:func:`revisit_error` over the scene's
    pixels), ``loop_closure`` (the last frame against the first, for loop-closed clips), ``action_following``
    (sprite 0's motion against the pushes, :func:`action_following_error`), ``frame_error`` (mean squared
    difference to the true frames over the frames made, which the world fixes: no kicks), and the first three
    for the true frames (``*_data``: the floor; revisit and loop closure 0 up to float rounding, action
    following the error of reading positions off frames where a landmark overlaps the sprite), and
    ``push_gain`` (:func:`~distill_lab.video.interactive.push_gain`: 1 follows every push, 0 none; the data's
    beside it)."""
    w, R = wsc.world, wsc.resolution
    free = sprite_free(w, data["states"], R)
    made = slice(given, None)
    pos = sprite_positions(w, stream, data["camera"], data["landmarks"])
    pos_data = sprite_positions(w, data["frames"], data["camera"], data["landmarks"])
    out = {"revisit": revisit_error(stream, data["camera"], free),
           "revisit_data": revisit_error(data["frames"], data["camera"], free),
           "loop_closure": loop_closure_error(stream, free),
           "loop_closure_data": loop_closure_error(data["frames"], free),
           "action_following": action_following_error(w, pos[:, made], data["actions"][:, made]),
           "action_following_data": action_following_error(w, pos_data[:, made], data["actions"][:, made]),
           "push_gain": push_gain(w, pos[:, made], data["actions"][:, made]),
           "push_gain_data": push_gain(w, pos_data[:, made], data["actions"][:, made]),
           "frame_error": float((stream[:, made] - data["frames"][:, made]).pow(2).mean())}
    return out


def eval_trajectories(wsc: WorldModelScale, n: int | None = None, seed: int = 0) -> dict:
    """The fixed evaluation: ``n`` (default ``eval_n``) loop-closed clips of ``eval_frames`` frames, out and back."""
    return trajectories(wsc, n or wsc.eval_n, wsc.eval_frames, torch.Generator().manual_seed(seed + 101), loop_share=1.0)


def teacher_quality(net: VideoTransformer, wsc: WorldModelScale, n: int | None = None, seed: int = 0) -> dict:
    """The base model streamed over the fixed loop-closed evaluation with each memory policy, measured
    (:func:`stream_measures`), with the seconds each took."""
    data = eval_trajectories(wsc, n, seed)
    given = wsc.memory + wsc.frames - wsc.block
    out = {"n": data["frames"].shape[0], "frames": wsc.eval_frames, "given": given, "nfe": wsc.teacher_nfe}
    for policy in POLICIES:
        t0 = time.perf_counter()
        stream = stream_base_model(net, wsc, data, policy)
        out[policy] = {**stream_measures(wsc, data, stream, given), "seconds": round(time.perf_counter() - t0, 2)}
    return out


def save_teacher(net: VideoTransformer, out: str | os.PathLike, wsc: WorldModelScale, info: dict,
                 command: str | None = None, scale=None) -> dict:
    """Write the fp16 weights and ``manifest.json`` to ``out`` (the video teacher's
    :func:`~distill_lab.video.teacher.write_teacher`); return the manifest."""
    return write_teacher(net, out, "the action- and camera-conditioned bidirectional world model of distill-lab's "
                         "interactive track", {"world_model_scale": asdict(wsc)}, info, command, scale)


def load_teacher(path: str | os.PathLike | None = None, verify: bool = True, missing_ok: bool = False) -> dict | None:
    """The committed world model: ``{"model": VideoTransformer (float32, eval), "manifest"}``; a missing or
    altered folder raises :class:`WorldModelUnavailable` naming the command that rebuilds it (or returns
    ``None`` with ``missing_ok``)."""
    path = Path(path) if path is not None else teacher_for("ci")[1]
    manifest = check_folder(path, FILES, verify, "world-model teacher", WorldModelUnavailable, REBUILD, missing_ok,
                            required=("net",))
    if manifest is None:
        return None
    state = torch.load(path / "teacher.pt", map_location="cpu", weights_only=True)
    return {"model": _net_from_state(manifest["net"], state), "manifest": manifest}


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
    init = None
    if wsc.init_video:
        from .config import teacher_for as video_teacher_for
        from .teacher import load_teacher as load_video_teacher

        vdir = video_teacher_for(sc)[1]
        init = load_video_teacher(vdir)["model"].state_dict()
        print(f"starting from the video teacher at {vdir}", flush=True)
    t0 = time.perf_counter()
    net, info = train_world_teacher(wsc, seed=args.seed, steps=args.steps, device=sc.device,
                                    progress=not args.no_progress, init=init)
    print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
    save_teacher(net, out, wsc, info, command=command, scale=sc)
    if init is not None:
        vman = json.loads((vdir / "manifest.json").read_text())
        update_manifest(out, init={"video_teacher": vdir.name, "sha256": vman["files"]["teacher.pt"]["sha256"]})
    manifest = update_manifest(out, quality=teacher_quality(load_teacher(out)["model"], wsc))
    print(json.dumps({k: manifest[k] for k in ("train_seconds", "n_params", "final_loss", "quality", "files")}, indent=2))
    return manifest


if __name__ == "__main__":
    main()
