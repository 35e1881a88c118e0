"""Exercises of lab 35 (interactive world models): the camera path an action stream drives, Matrix-Game 3.0's
camera-aware retrieval of memory frames, and predictions on memory and loop-closed augmentation
(:mod:`distill_lab.video.interactive`, :mod:`distill_lab.video.world_students`)."""

from __future__ import annotations

import torch

from . import compare, implement, prediction


# ---------------------------------------------------------------- lab 35: the camera an action stream drives
def _camera_variant(clip_pan=True, clip_scene=True, lag=1):
    """The camera path of exercise 35.camera and its wrong variants: a pan not bounded by ``max_pan``, a camera
    that may leave the scene, each frame's action moving that same frame (no lag: the first frame moved)."""
    def camera(start, actions, max_pan, scene_size):
        pan = actions[..., :2].double()
        if clip_pan:
            pan = pan.clamp(-max_pan, max_pan)
        hi = scene_size - 1
        first = start.double()
        if lag == 0:
            first = first + pan[:, 0]
        cams = [first.clamp(0, hi) if clip_scene else first]
        for t in range(actions.shape[1] - 1):
            nxt = cams[-1] + pan[:, t + 1 - lag]
            cams.append(nxt.clamp(0, hi) if clip_scene else nxt)
        return torch.stack(cams, 1)
    return camera


@implement("35.camera", "the camera path an action stream drives (pans bounded, the window kept in the scene)",
           solution=_camera_variant(),
           wrong={"pans not bounded by max_pan": _camera_variant(clip_pan=False),
                  "the window allowed to leave the scene": _camera_variant(clip_scene=False),
                  "each frame's action moving that same frame": _camera_variant(lag=0)})
def _check_camera(fn) -> str:
    """``fn(start [B, 2], actions [B, F, 4], max_pan, scene_size) -> camera [B, F, 2]`` must equal
    :meth:`~distill_lab.video.interactive.InteractiveWorld.camera_path` on actions within and beyond the bounds,
    from starts near the scene's edges; a zero action must leave the camera still."""
    from ..video.interactive import InteractiveWorld

    w = InteractiveWorld()
    g = torch.Generator().manual_seed(35)
    start = (w.scene_size - 1) * torch.rand(64, 2, generator=g, dtype=torch.float64)
    start[:8] = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64).repeat(4, 1)
    small = w.random_actions(64, 12, g)
    big = 4 * small
    for name, a in (("actions within the bounds", small), ("pans up to 4x max_pan", big)):
        compare(fn(start.clone(), a.clone(), w.max_pan, w.scene_size), w.camera_path(start, a),
                f"the camera path under {name}", atol=1e-9, rtol=0)
    still = fn(start.clone(), torch.zeros(64, 12, 4, dtype=torch.float64), w.max_pan, w.scene_size)
    compare(still, start[:, None].expand(-1, 12, -1), "the camera under zero actions (it must not move)", atol=0, rtol=0)
    return "equals the world's camera path on 128 clips (pans within and beyond max_pan, starts at the edges); zero actions keep it still"


# ---------------------------------------------------------------- lab 35: camera-aware retrieval
def _retrieval_variant(nearest=True, first_query_only=False, mean_pose=False):
    """Camera-aware retrieval (exercise 35.retrieval) and its wrong variants: the farthest frames, the distance
    to the first pose to be made only, the distance to the mean of the query poses."""
    def retrieve(history, query, k):
        q = query[:, :1] if first_query_only else query
        if mean_pose:
            q = q.mean(1, keepdim=True)
        d = (history.double()[:, :, None] - q.double()[:, None]).abs().amax(-1).amin(-1)
        return d.topk(k, dim=1, largest=not nearest).indices
    return retrieve


@implement("35.retrieval", "Matrix-Game 3.0's camera-aware retrieval: the k history frames seen from nearest the "
           "poses to be made",
           solution=_retrieval_variant(),
           wrong={"the k farthest frames": _retrieval_variant(nearest=False),
                  "the distance to the first pose to be made only": _retrieval_variant(first_query_only=True),
                  "the distance to the mean of the poses to be made": _retrieval_variant(mean_pose=True)})
def _check_retrieval(fn) -> str:
    """``fn(history [B, H, 2], query [B, Q, 2], k) -> [B, k]`` indices, nearest first, must pick the frames
    :func:`~distill_lab.video.interactive.nearest_frames` picks (as sets of places: ties may be ordered either
    way), on camera paths of the interactive world with blocks of two poses."""
    from ..video.interactive import InteractiveWorld, nearest_frames

    w = InteractiveWorld()
    g = torch.Generator().manual_seed(350)
    cams = w.camera_path((w.scene_size - 1) * torch.rand(128, 2, generator=g, dtype=torch.float64),
                         w.random_actions(128, 20, g, persistence=0.0))
    hist, query = cams[:, :16], cams[:, 18:20]
    for k in (1, 3):
        got = torch.as_tensor(fn(hist.clone(), query.clone(), k))
        if got.shape != (128, k):
            raise AssertionError(f"k={k}: expected indices [B, k] = [128, {k}], got {tuple(got.shape)}")
        want = nearest_frames(hist, query, k)
        dist = lambda idx: (torch.gather(hist, 1, idx[..., None].expand(-1, -1, 2))[:, :, None]  # noqa: E731
                            - query[:, None]).abs().amax(-1).amin(-1)
        compare(dist(got.long()), dist(want), f"the distances (max norm, to the nearest pose to be made) of the "
                f"{k} frames picked, nearest first", atol=1e-12, rtol=0)
    return "picks the frames seen nearest the block's poses on 128 camera paths (k = 1 and 3)"


prediction("35.memory", "world students with two memory frames each: the camera-retrieved memory (Matrix-Game 3.0) "
           "against the most recent frames, same seeds: the revisit error on loop-closed clips",
           ("lower", "about the same", "higher"), solution="lower")
prediction("35.loop", "the retrieval student trained with half its rollouts on loop-closed paths (RealCam) against "
           "the same student without them, same seeds: the loop-closure error",
           ("lower", "about the same", "higher"), solution="lower")
