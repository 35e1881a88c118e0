"""What makes the toy teacher sharp: one change at a time, measured.

    python -m distill_lab.toy2d.teacher --scale ci                 # every variant, a table
    python -m distill_lab.toy2d.teacher --scale ci --variants before,now --json out/teacher.json

Each variant is a flow-matching teacher trained by :func:`~distill_lab.toy2d.experiment.train_flow_teacher`
on a :class:`~distill_lab.nets.mlp.TimeMLP` at the scale's budget, from the same seed, and sampled
with the track's reference solver (64 midpoint NFE) from the experiment's fixed evaluation noise. The
table gives, beside a second data draw's figures: the mass off the checkerboard's cells
(:func:`~distill_lab.toy2d.data.checkerboard_off_cells`, exact; checkerboard only), the k-NN precision
and recall and the exact W2 (:meth:`Toy2D.sharp`), the sliced W2 over its floor, and the training seconds.
``before`` is the teacher the track had first (raw coordinates, learning rate 2e-3, uniform times);
``now`` is :class:`Toy2D`'s (:data:`~distill_lab.toy2d.experiment.X_FREQ` Fourier features of x, the
learning rate :data:`~distill_lab.toy2d.experiment.TEACHER_LR`, late times).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..core.bench import text_table
from ..core.flows import sample_ode
from ..core.scale import SCALES
from ..core.train import seed_everything
from ..nets.mlp import TimeMLP
from .data import checkerboard_off_cells, dataset_name
from .experiment import (TEACHER_LR, TEACHER_METHOD, TEACHER_NFE, TEACHER_TIMES, X_FREQ, X_PERIOD, Toy2D,
                         train_flow_teacher)

BEFORE = dict(x_freq=0, lr=2e-3, times="uniform", width=1, steps=1, ema=0.0)  # width, steps: x the scale's
NOW = dict(x_freq=X_FREQ, lr=TEACHER_LR, times=TEACHER_TIMES, width=1, steps=1, ema=0.0)
# name -> (what changes, settings); each departs from `before` or from `now` by one or two settings
VARIANTS: dict[str, tuple[str, dict]] = {
    "before": ("raw x, lr 2e-3, uniform times", BEFORE),
    "ema": ("before + EMA of the weights (0.999)", dict(BEFORE, ema=0.999)),
    "late": ("before + times drawn towards the data end", dict(BEFORE, times="late")),
    "lr": (f"before + learning rate {TEACHER_LR:g}", dict(BEFORE, lr=TEACHER_LR)),
    "wide": ("before + twice the width", dict(BEFORE, width=2)),
    "long": ("before + twice the steps", dict(BEFORE, steps=2)),
    "xfeat": (f"before + Fourier features of x ({X_FREQ} octaves)", dict(BEFORE, x_freq=X_FREQ)),
    "xfeat_late": ("x features + late times", dict(BEFORE, x_freq=X_FREQ, times="late")),
    "now": ("x features + late times + lr (the track's teacher)", NOW),
    "now_long": ("the track's teacher, twice the steps", dict(NOW, steps=2)),
}


def train_variant(exp: Toy2D, settings: dict, seed: int = 0, progress: bool = False) -> tuple[TimeMLP, float]:
    """A teacher of ``settings`` (see :data:`VARIANTS`) on ``exp``'s data at ``exp``'s scale, and its
    training seconds."""
    sc = exp.scale
    seed_everything(seed)
    net = TimeMLP(2, sc.width * settings["width"], sc.depth, 1, x_freq=settings["x_freq"],
                  x_period=X_PERIOD).to(exp.device)
    t0 = time.perf_counter()
    train_flow_teacher(net, exp.data, sc.teacher_steps * settings["steps"], sc.batch, lr=settings["lr"], seed=seed,
                       device=exp.device, progress=progress, check_every=sc.check_every, times=settings["times"],
                       ema=settings["ema"])
    return net.eval(), time.perf_counter() - t0


@torch.no_grad()
def measure(exp: Toy2D, net: torch.nn.Module) -> dict:
    """The figures of one teacher's reference samples from ``exp``'s evaluation noise."""
    x = sample_ode(net, exp.eval_noise, TEACHER_NFE, TEACHER_METHOD)
    out = {"off_cells": checkerboard_off_cells(x) if exp.name == "checkerboard" else None,
           "sliced_ratio": exp.distance(x) / exp.floor}
    out.update(exp.sharp(x))
    return out


def ablation(scale=None, data="checkerboard", variants=None, seed: int = 0, progress: bool = True) -> dict:
    """Train and measure each of ``variants`` (default: all of :data:`VARIANTS`); returns
    ``{"rows": [...], "floor": {...}}``, the floor being a second data draw's figures."""
    names = list(VARIANTS) if variants is None else list(variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown teacher variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    exp = Toy2D(data, scale=scale, seed=seed, progress=progress)
    floor = {"off_cells": checkerboard_off_cells(exp.floor_data) if exp.name == "checkerboard" else None,
             "sliced_ratio": 1.0, **exp.sharp_floor}
    rows = []
    for name in names:
        what, settings = VARIANTS[name]
        net, secs = train_variant(exp, settings, seed=seed, progress=progress)
        rows.append({"variant": name, "what": what, "seconds": secs, **measure(exp, net)})
        if progress:
            print(f"{name}: {rows[-1]}", file=sys.stderr)
    return {"rows": rows, "floor": floor, "scale": exp.scale.name, "data": dataset_name(data), "seed": seed}


def format_ablation(result: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    head = ["variant", "what", "off cells", "precision", "recall", "exact W2", "sliced/floor", "train s"]
    body = [[r["variant"], r["what"], pct(r["off_cells"]), f"{r['precision']:.3f}", f"{r['recall']:.3f}",
             f"{r['w2']:.4f}", f"{r['sliced_ratio']:.2f}", f"{r['seconds']:.0f}"] for r in result["rows"]]
    f = result["floor"]
    body.append(["data", "a second draw of the data (the floor)", pct(f["off_cells"]), f"{f['precision']:.3f}",
                 f"{f['recall']:.3f}", f"{f['w2']:.4f}", "1.00", "-"])
    return text_table(head, body)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distill_lab.toy2d.teacher", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=SCALES, default=None, help="(default: $DISTILL_LAB_SCALE, else 'default')")
    ap.add_argument("--data", default="checkerboard")
    ap.add_argument("--variants", default=None, help=f"comma-separated, from: {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        result = ablation(args.scale, args.data, args.variants.split(",") if args.variants else None,
                          seed=args.seed, progress=not args.quiet)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_ablation(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
