"""Metrics of generated clips read off the world's known physics: every number is exact for real clips.

The frames of a clip are turned back into sprite positions by :meth:`World.detect`, which inverts the
renderer; everything else follows from positions and the world's own dynamics:

* :func:`frame_error` -- per frame, the mean squared difference between the frame and a clean
  rendering at the positions detected in it: 0 for a real frame (up to float rounding), large for a
  blurred, doubled, faded or empty one. The per-frame quality of the lab.
* :func:`drift_curve` -- :func:`frame_error` averaged over clips, by frame index: how quality decays
  along a rollout; :func:`drift_slope` is its least-squares slope per frame.
* :func:`physics_residual` -- per frame, the distance between the detected position and where the
  world's deterministic motion (:meth:`World.move`: constant velocity, elastic walls) would put it
  from the two frames before: small for real clips (only the random kicks leave a residual), large
  for jittering, teleporting or frozen-then-jumping sprites.
* :func:`dynamic_degree` -- the mean distance a sprite moves per frame: the data's is about the mean
  speed; a student that learned the frozen-motion shortcut scores near 0.
* :func:`motion_reward` -- a reward for motion, each clip's dynamic degree over the data's, minus 1
  (0 for a clip that moves like the data), the toy world's stand-in for a video reward model's
  motion-quality score (Reward Forcing's Re-DMD, Stream-R1).
* :func:`quality_reward` -- minus each clip's mean :func:`frame_error`, differentiable in the frames
  (the detected positions and their rendering held fixed): a visual-quality reward with a gradient.
* :func:`motion_features`, :func:`motion_fd` -- a Fréchet distance between (position, velocity)
  features of generated and real frames (:mod:`distill_lab.metrics.frechet`), beside its floor
  between two independent sets of real clips.
"""

from __future__ import annotations

import torch

from ..metrics.frechet import frechet_distance
from .world import World


def _check_clip(frames: torch.Tensor) -> None:
    if frames.dim() != 5:
        raise ValueError(f"clips must be frames [B, F, C, H, W], got {tuple(frames.shape)}")


def frame_error(frames: torch.Tensor, world: World) -> torch.Tensor:
    """``[B, F]``: mean squared pixel difference between each frame and the clean rendering at the
    sprite positions detected in it (values in ``[-1, 1]``, so 4 is the largest possible)."""
    _check_clip(frames)
    pos = world.detect(frames)
    clean = world.render(pos, frames.shape[-1]).to(frames.device)
    return (frames.float() - clean).pow(2).mean(dim=(2, 3, 4))


def drift_curve(frames: torch.Tensor, world: World) -> torch.Tensor:
    """``[F]``: :func:`frame_error` averaged over the clips, frame by frame."""
    return frame_error(frames, world).mean(0)


def drift_slope(curve: torch.Tensor) -> float:
    """Least-squares slope of an error curve ``[F]`` against the frame index (error per frame)."""
    f = torch.arange(len(curve), dtype=torch.float64)
    c = curve.double().cpu()
    fc = f - f.mean()
    return float((fc * (c - c.mean())).sum() / fc.pow(2).sum())


def physics_residual(positions: torch.Tensor, world: World) -> torch.Tensor:
    """``[B, F - 2]``: for frames 2.., the distance (summed over sprites) between the detected position
    and the world's deterministic motion from the two frames before (velocity = their difference)."""
    if positions.dim() != 4 or positions.shape[-1] != 2:
        raise ValueError(f"positions must be [B, F, S, 2], got {tuple(positions.shape)}")
    if positions.shape[1] < 3:
        raise ValueError("a physics residual needs clips of at least 3 frames")
    p = positions.double()
    prev, cur = p[:, :-2], p[:, 1:-1]
    predicted = world.move(torch.cat([cur, cur - prev], -1))[..., :2]
    return (predicted - p[:, 2:]).norm(dim=-1).sum(-1)


def dynamic_degree(positions: torch.Tensor) -> float:
    """Mean distance a sprite moves from one frame to the next (units of the square per frame)."""
    return float((positions[:, 1:] - positions[:, :-1]).double().norm(dim=-1).mean())


def clip_dynamic_degree(positions: torch.Tensor) -> torch.Tensor:
    """``[B]``: :func:`dynamic_degree` of each clip on its own."""
    return (positions[:, 1:] - positions[:, :-1]).double().norm(dim=-1).mean(dim=(1, 2))


def motion_reward(world: World, data_dynamic_degree: float):
    """``reward(frames [B, F, 1, R, R]) -> [B]``: each clip's dynamic degree (positions read off its
    frames, no gradient) divided by the data's, minus 1. Positive for a clip that moves more than the
    data, negative for one that moves less, -1 for a frozen clip."""
    if data_dynamic_degree <= 0:
        raise ValueError(f"the data's dynamic degree must be positive, got {data_dynamic_degree}")

    def reward(frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            dd = clip_dynamic_degree(world.detect(frames.detach().cpu()))
        return (dd / data_dynamic_degree - 1).to(frames.device, frames.dtype)
    return reward


def quality_reward(world: World):
    """``reward(frames [B, F, 1, R, R]) -> [B]``: minus the mean squared difference between each frame and
    the clean rendering at the positions detected in it (the rendering under stop-gradient), so its
    gradient points each pixel towards a clean sprite; 0 for real clips."""
    def reward(frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean = world.render(world.detect(frames.detach().cpu()), frames.shape[-1]).to(frames.device, frames.dtype)
        return -(frames - clean).pow(2).flatten(1).mean(1)
    return reward


def motion_features(positions: torch.Tensor) -> torch.Tensor:
    """``[B (F - 1), 4 S]``: each frame's sprite positions and velocities (difference to the frame
    before), the features of :func:`motion_fd`."""
    p = positions.double()
    feats = torch.cat([p[:, 1:], p[:, 1:] - p[:, :-1]], -1)            # [B, F - 1, S, 4]
    return feats.reshape(-1, feats.shape[-2] * feats.shape[-1])


def motion_fd(fake_positions: torch.Tensor, real_positions: torch.Tensor) -> float:
    """Fréchet distance between the motion features of generated and real clips."""
    return frechet_distance(motion_features(fake_positions), motion_features(real_positions))


def clip_metrics(frames: torch.Tensor, world: World, horizon: int) -> dict:
    """The quality numbers of a batch of clips ``[B, F, 1, R, R]`` (``F`` frames, ``horizon`` the
    training clip length): mean frame error over the first ``horizon`` frames (``error_1x``) and over
    the last ``horizon`` frames (``error_4x`` when ``F = 4 horizon``), the drift curve and its slope,
    the mean physics residual, and the dynamic degree; positions are returned for a Fréchet distance."""
    err = frame_error(frames, world)
    pos = world.detect(frames)
    curve = err.mean(0)
    return {"error_1x": float(err[:, :horizon].mean()), "error_4x": float(err[:, -horizon:].mean()),
            "error_4x_per_clip": err[:, -horizon:].mean(1), "curve": curve, "slope": drift_slope(curve),
            "physics": float(physics_residual(pos, world).mean()), "dynamic_degree": dynamic_degree(pos),
            "positions": pos}
