"""The streaming-video experiment: the toy world, the bidirectional teacher, and a fixed evaluation.

:class:`VideoWorld` implements :class:`~distill_lab.core.experiment.StreamExperiment`, what the video
recipes (:mod:`distill_lab.video.recipes`) use::

    exp = VideoWorld(scale="ci")                      # loads the committed teacher
    student = get_recipe("self_forcing").train(exp)   # a StreamingStudent
    exp.evaluate(student)                             # quality at 1x and 4x the horizon, drift, ...

**The evaluation** streams ``eval_n`` clips of ``horizon_factor x frames`` frames (4x the training
horizon) from fixed noise, and measures them with the world's physics (:mod:`distill_lab.video.metrics`):
the frame error over the first and over the last ``frames`` frames, the drift curve and its slope,
the physics residual, the dynamic degree beside the data's, the Fréchet distance of motion features
against fixed real clips beside its floor (two independent sets of real clips), and the exposure-bias
gap: the last ``frames`` frames' error when the student streams on its own outputs, minus the same
when every block is generated from the *real* frames before it (:meth:`StreamingStudent.sample_with_context`).
Frames per second are timed on this device; NFE per frame are the student's denoising steps.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from ..core.experiment import StreamExperiment
from ..core.flows import sample_ode
from ..core.scale import Scale, get_scale
from ..core.train import fit
from ..nets.utils import n_params
from .config import VideoScale, teacher_for, video_scale
from .metrics import clip_metrics, motion_fd
from .nets import VideoTransformer
from .rollout import StreamingStudent, teacher_rollout


class VideoWorld(StreamExperiment):
    """Data, teacher and evaluation for the toy video world at one scale.

    Parameters
    ----------
    scale : ``"ci"``, ``"default"``, ``"gpu"``, a :class:`~distill_lab.core.scale.Scale`, or ``None``.
        ``exp.scale`` carries the video track's ``batch``, ``student_steps`` and ``eval_n``.
    teacher : a trained bidirectional :class:`VideoTransformer` (default: the committed one of the
        scale, loaded with its hashes checked, or trained when missing). A scale with no committed
        teacher (``default`` and ``gpu`` today) loads the ``ci`` one and runs at ``ci``'s settings (world,
        frames, budgets; ``exp.scale.name == "ci"``, the device stays the scale's), after a printed
        notice; ``$DISTILL_LAB_TRAIN_TEACHERS=1`` trains the scale's own instead.
    video_scale : override the scale's :class:`~distill_lab.video.config.VideoScale` (tests).
    eval_n : override the number of evaluation clips.
    seed : fixes the evaluation noise and the real reference clips.
    """

    deadline: float | None = None  # a time.perf_counter() value after which training loops stop early

    def __init__(self, scale: str | Scale | None = None, teacher: VideoTransformer | None = None,
                 teacher_dir: str | Path | None = None, video_scale: VideoScale | None = None,
                 eval_n: int | None = None, seed: int = 0, progress: bool = True):
        base = get_scale(scale)
        if teacher is None and teacher_dir is None:
            used, teacher_dir = teacher_for(base)
            if used != base.name:  # no committed teacher at this scale: the track runs as at ci (see the notice)
                base = get_scale(used, device=base.device)
        self.vscale = v = video_scale or _video_scale(base)
        self.device, self.seed, self.progress = base.device, seed, progress
        self.scale = Scale(base.name, teacher_steps=v.teacher_steps, width=v.net.dim, depth=v.net.depth,
                           batch=v.batch, student_steps=v.student_steps, eval_n=eval_n or v.eval_n, n_proj=0,
                           device=base.device)
        self.world, self.frames, self.block = v.world, v.frames, v.block
        self.resolution = v.resolution
        self.name = f"toyworld-{v.resolution}px"
        self.shape = (v.frames, v.net.channels, v.resolution, v.resolution)
        t0 = time.perf_counter()
        self.teacher_manifest = None  # the committed teacher's manifest, when it was loaded from its folder
        self._eval_clips: dict = {}  # horizons -> (noise, context) of evaluations of another length
        if teacher is None:
            # imported here, so that `python -m distill_lab.video.teacher` runs a module the package
            # has not imported yet
            from .teacher import load_or_train_teacher

            loaded = load_or_train_teacher(Path(teacher_dir), scale=base, progress=progress)
            teacher, self.teacher_manifest = loaded["model"], loaded["manifest"]
        if teacher.mask != "full":
            raise ValueError("the video teacher must be bidirectional (mask='full')")
        self.teacher = teacher.to(self.device).eval()
        self.teacher_seconds = time.perf_counter() - t0
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    # ---------------------------------------------------------------- networks and draws
    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The bidirectional teacher's velocity on clips ``[B, F, C, H, W]``, ``t: [B]`` or ``[B, F]``."""
        return self.teacher(x, t)

    def causal_net(self, window: int | None = None) -> VideoTransformer:
        """A trainable block-causal copy of the teacher (blocks of ``block`` frames): a student's start."""
        net = self.teacher.as_causal(self.block, window)
        for p in net.parameters():
            p.requires_grad_(True)
        return net.train()

    def score_net(self) -> VideoTransformer:
        """A trainable bidirectional copy of the teacher: the fake score of distribution matching."""
        net = VideoTransformer(self.teacher.config, "full").to(self.device)
        net.load_state_dict(self.teacher.state_dict())
        return net.train()

    def data_batch(self, n: int | None = None, frames: int | None = None) -> torch.Tensor:
        """``n`` fresh real clips of ``frames`` frames (default: the training horizon), global RNG."""
        return self.world.clips(n or self.scale.batch, frames or self.frames, self.resolution, self.device)

    def noise_batch(self, n: int | None = None, frames: int | None = None) -> torch.Tensor:
        return torch.randn(n or self.scale.batch, frames or self.frames, *self.shape[1:], device=self.device)

    @torch.no_grad()
    def teacher_sample(self, z: torch.Tensor, nfe: int | None = None) -> torch.Tensor:
        """The teacher's clips from noise ``z`` (Euler, ``nfe`` steps, default the scale's)."""
        return sample_ode(self.velocity, z, nfe or self.vscale.teacher_nfe, "euler")

    def fit(self, step: Callable, n_steps: int, desc: str) -> dict:
        return fit(step, n_steps, desc=desc, progress=self.progress, check_every=self.scale.check_every,
                   deadline=self.deadline)

    # ---------------------------------------------------------------- evaluation
    def _noise(self, n: int, frames: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, frames, *self.shape[1:], generator=g).to(self.device)

    def _real(self, n: int, frames: int, seed: int) -> torch.Tensor:
        return self.world.clips(n, frames, self.resolution, generator=torch.Generator().manual_seed(seed))

    @cached_property
    def eval_noise(self) -> torch.Tensor:
        """``[eval_n, 4 frames, C, R, R]``: the noise every student streams from."""
        return self._noise(self.scale.eval_n, self.vscale.eval_frames, self.seed + 7)

    @cached_property
    def eval_context(self) -> torch.Tensor:
        """Real clips as long as the evaluation noise: the context of the teacher-forced generation."""
        return self._real(self.scale.eval_n, self.vscale.eval_frames, self.seed + 9).to(self.device)

    @cached_property
    def reference(self) -> dict:
        """Real clips' metrics (two independent sets: the reference and the floor's second draw)."""
        n, L = self.scale.eval_n, self.vscale.eval_frames
        ref = clip_metrics(self._real(n, L, self.seed + 11), self.world, self.frames)
        other = clip_metrics(self._real(n, L, self.seed + 13), self.world, self.frames)
        return {"positions": ref["positions"], "dynamic_degree": ref["dynamic_degree"],
                "physics": ref["physics"], "error_4x": ref["error_4x"],
                "fd_floor": motion_fd(other["positions"], ref["positions"])}

    def _measure(self, clips: torch.Tensor) -> dict:
        m = clip_metrics(clips.cpu(), self.world, self.frames)
        m["fd"] = motion_fd(m["positions"], self.reference["positions"])
        return m

    def eval_clips(self, horizons: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed noise and real context clips of ``horizons`` training horizons (the scale's
        ``horizon_factor``: :attr:`eval_noise` and :attr:`eval_context`; another length: its own fixed draw)."""
        if horizons < 1:
            raise ValueError(f"an evaluation rollout is at least one horizon long, got {horizons}")
        if horizons == self.vscale.horizon_factor:
            return self.eval_noise, self.eval_context
        if horizons not in self._eval_clips:
            L = horizons * self.frames
            self._eval_clips[horizons] = (self._noise(self.scale.eval_n, L, self.seed + 7 + 100 * horizons),
                                          self._real(self.scale.eval_n, L, self.seed + 9 + 100 * horizons).to(self.device))
        return self._eval_clips[horizons]

    @torch.no_grad()
    def evaluate(self, student: StreamingStudent, horizons: int | None = None, exposure: bool = True) -> dict:
        """The student's rollouts of ``horizons`` training horizons (default the scale's
        ``horizon_factor``, 4), measured (module docstring): ``frame_error_1x``, ``frame_error_4x`` (the
        last horizon's error, and its spread over clips), ``curve``, ``drift_slope``, ``exposure_gap``,
        ``physics``, ``dynamic_degree``, ``data_dynamic_degree``, ``fd``, ``fd_floor``,
        ``nfe_per_frame`` (denoising evaluations a frame averaged over the rollout), ``frames_per_second``,
        ``horizons``. ``exposure=False`` skips the teacher-forced rollout (half the cost; ``exposure_gap``
        is then ``None``)."""
        student.eval()
        z, context = self.eval_clips(horizons or self.vscale.horizon_factor)
        t0 = time.perf_counter()
        free = student.sample(z)
        if z.is_cuda:
            torch.cuda.synchronize()
        fps = z.shape[0] * z.shape[1] / (time.perf_counter() - t0)
        m = self._measure(free)
        forced = clip_metrics(student.sample_with_context(z, context).cpu(), self.world, self.frames) if exposure else None
        nfe = student.mean_nfe_per_frame(z.shape[1])  # a schedule's or a correction's extra steps counted
        return self._row(m, forced, int(nfe) if nfe == int(nfe) else round(nfe, 3), fps, free)

    @torch.no_grad()
    def evaluate_teacher(self, context: int | None = None, nfe: int | None = None) -> dict:
        """The bidirectional teacher on the same noise: the first window jointly, then windows that
        hold the last ``context`` frames (default half a clip) clean (:func:`teacher_rollout`)."""
        context = self.frames // 2 if context is None else context
        nfe = nfe or self.vscale.teacher_nfe
        z = self.eval_noise
        t0 = time.perf_counter()
        clips = teacher_rollout(self.teacher, z, self.frames, nfe, context)
        fps = z.shape[0] * z.shape[1] / (time.perf_counter() - t0)
        m = self._measure(clips)
        return self._row(m, None, nfe, fps, clips)

    def _row(self, m: dict, forced: dict | None, nfe: int, fps: float, clips: torch.Tensor) -> dict:
        return {"frame_error_1x": m["error_1x"], "frame_error_4x": m["error_4x"],
                "frame_error_4x_clips": float(m["error_4x_per_clip"].std()), "curve": m["curve"],
                "drift_slope": m["slope"],
                "exposure_gap": None if forced is None else m["error_4x"] - forced["error_4x"],
                "physics": m["physics"], "dynamic_degree": m["dynamic_degree"],
                "data_dynamic_degree": self.reference["dynamic_degree"], "fd": m["fd"],
                "fd_floor": self.reference["fd_floor"], "nfe_per_frame": nfe, "frames_per_second": fps,
                "horizons": clips.shape[1] // self.frames, "clips": clips}

    def __repr__(self):
        return (f"VideoWorld({self.name!r}, scale={self.scale.name!r}, teacher={n_params(self.teacher):,} params, "
                f"clips of {self.frames} frames in blocks of {self.block}, device={self.device!r})")


def _video_scale(scale: Scale) -> VideoScale:
    return video_scale(scale)
