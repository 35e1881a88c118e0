"""The ``video`` bench track: every streaming recipe, several seeds, one table.

    python -m distill_lab bench video --scale ci --seeds 0 1 2 --json out/bench_video.json

Importing this module registers the track and the video recipes (:mod:`.recipes`). Each row is one
recipe, its numbers the mean over the seeds (``*_spread``: their standard deviation): NFE per frame,
frames per second, the frame error over the first horizon (``frame_error_1x``) and over the last
horizon of a rollout four horizons long (``frame_error_4x``, the row's ``value``), the drift slope,
the exposure-bias gap, the dynamic degree beside the data's, the motion Fréchet distance beside its
floor, and training seconds. The teacher's row (its sliding-window rollout) comes first.
"""

from __future__ import annotations

import time

from ..core.bench import BenchTrack, bench_methods, mean_spread, register_track, text_table
from ..core.registry import get_recipe
from ..core.train import seed_everything
from . import recipes  # noqa: F401  (registers the video recipes)
from .experiment import VideoWorld

VIDEO_ROW_KEYS = ("method", "metric", "value", "floor", "nfe_per_frame", "frames_per_second", "frame_error_1x",
                  "frame_error_4x", "frame_error_4x_spread", "drift_slope", "exposure_gap", "dynamic_degree",
                  "data_dynamic_degree", "fd", "fd_floor", "seeds", "train_seconds")
MEANS = ("frames_per_second", "frame_error_1x", "frame_error_4x", "drift_slope", "exposure_gap", "dynamic_degree", "fd")


def _row(method: str, results: list[dict], seeds, seconds: list[float], floor: float) -> dict:
    row = {"method": method, "metric": "frame_error_4x", "floor": floor, "seeds": list(seeds),
           "nfe_per_frame": results[0]["nfe_per_frame"], "data_dynamic_degree": results[0]["data_dynamic_degree"],
           "fd_floor": results[0]["fd_floor"], "train_seconds": sum(seconds) / len(seconds)}
    for k in MEANS:
        vals = [r[k] for r in results if r[k] is not None]
        row[k] = mean_spread(vals)[0] if vals else None
    row["frame_error_4x_spread"] = mean_spread([r["frame_error_4x"] for r in results])[1]
    row["value"] = row["frame_error_4x"]
    return row


def run_video(exp: VideoWorld, methods=None, seeds=(0, 1, 2)) -> list[dict]:
    """One row a recipe (default: all on the ``video`` track), each the mean over ``seeds``, after
    the teacher's row. Every seed trains a fresh student (``seed_everything(seed)``); the evaluation
    noise and reference clips are the experiment's (fixed)."""
    names = bench_methods("video") if methods is None else list(methods)
    for m in names:
        get_recipe(m, track="video")
    floor = exp.reference["error_4x"]
    rows = [_row("teacher (sliding window)", [exp.evaluate_teacher()], seeds, [exp.teacher_seconds], floor)]
    for m in names:
        results, seconds = [], []
        for s in seeds:
            seed_everything(s)
            t0 = time.perf_counter()
            student = get_recipe(m).train(exp)
            seconds.append(time.perf_counter() - t0)
            results.append(exp.evaluate(student))
        rows.append(_row(m, results, seeds, seconds, floor))
    return rows


def _f(v, nd=4):
    return "-" if v is None else f"{v:.{nd}f}"


def format_video_table(rows: list[dict]) -> str:
    head = ["method", "NFE/frame", "frames/s", "err 1x", "err 4x", "+-", "drift/frame", "exposure gap",
            "dyn deg", "data", "FD", "FD floor", "seeds", "train s"]
    body = [[r["method"], str(r["nfe_per_frame"]), _f(r["frames_per_second"], 0), _f(r["frame_error_1x"]),
             _f(r["frame_error_4x"]), _f(r["frame_error_4x_spread"]), _f(r["drift_slope"], 5), _f(r["exposure_gap"]),
             _f(r["dynamic_degree"], 3), _f(r["data_dynamic_degree"], 3), _f(r["fd"]), _f(r["fd_floor"]),
             str(len(r["seeds"])), _f(r["train_seconds"], 0)] for r in rows]
    return text_table(head, body, ["errors: mean squared pixel error to the clean rendering at the detected "
                                   "positions (real frames: 0); 4x: the last horizon of a rollout 4 horizons long"])


def _prepare(args, scale) -> VideoWorld:
    exp = VideoWorld(scale, progress=not args.quiet)
    print(f"bench video: {exp}")
    return exp


register_track(BenchTrack(
    name="video", summary="streaming video: causal few-step students of a bidirectional teacher (frame error at 4x)",
    row_keys=VIDEO_ROW_KEYS, prepare=_prepare,
    run=lambda exp, methods, args: run_video(exp, methods, tuple(args.seeds or (0, 1, 2))),
    table=format_video_table))
