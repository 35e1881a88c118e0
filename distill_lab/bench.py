"""The toy-2D step-distillation bench: every registered recipe, one table, measured each run.

Each row is one student at one NFE: its metric to held-out data, beside the noise floor (two
independent data draws), the teacher's own Euler sampler at the same NFE, and the teacher's best
value over its NFE curve. Nothing is cached but the teacher; every student is trained afresh from
a fixed seed.

    python -m distill_lab bench toy2d --scale ci --data checkerboard --json out/bench.json

The ``cifar-gen`` track runs the same function on :class:`~distill_lab.image_flow.CifarFlow`
(``run_toy2d(exp=CifarFlow(scale), methods=CIFAR_GEN_METHODS)``), with the same row keys; its metric
is the Fréchet distance in the project's CIFAR-10 classifier's features (not FID)::

    python -m distill_lab bench cifar-gen --scale ci --json out/bench_cifar_gen.json
"""

from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path
from typing import Iterable

import torch

from .experiment import Toy2D
from .flows import sample_ode
from .registry import all_recipes, get_recipe
from .toy2d import DATASETS
from .train import seed_everything

ROW_KEYS = ("method", "dataset", "nfe", "metric", "value", "floor", "teacher_same_nfe", "teacher_best",
            "train_seconds")
TEACHER_NFES = (1, 2, 4, 8, 16, 32, 64)
# the step-distillation methods the image track runs (issue 4, item 2), in the toy recipes' order
CIFAR_GEN_METHODS = ("trajectory", "progressive", "cd", "ct", "scm", "tbcm", "lagrangian",
                     "progressive_flow_map", "dmd", "dmd2", "rcm")


def resolve_data(spec: str):
    """A built-in dataset name, or ``"package.module:function"`` naming any callable ``n -> Tensor[n, 2]``."""
    if spec in DATASETS:
        return spec
    if ":" in spec:
        mod, _, fn = spec.partition(":")
        try:
            return getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"could not load the data sampler {spec!r}: {err}") from err
    raise ValueError(f"unknown toy dataset {spec!r}; choose one of {', '.join(DATASETS)} "
                     "or give 'module:function' naming a callable n -> Tensor[n, 2]")


def run_toy2d(data="checkerboard", scale=None, methods: Iterable[str] | None = None, seed: int = 0,
              metric: str = "sliced_w2", progress: bool = True, exp: Toy2D | None = None,
              return_students: bool = False):
    """Train every recipe in ``methods`` (default: all registered) and return the bench rows.

    Rows are dicts with :data:`ROW_KEYS` plus ``ratio`` (value / floor), ``coupled`` (mean distance
    to the teacher's ODE solution from the same noise) and ``error`` (a message when a recipe failed).
    With ``return_students`` also returns ``{name: student}``.
    """
    exp = exp or Toy2D(data, scale=scale, seed=seed, metric=metric, progress=progress)
    recipes = [get_recipe(m) for m in methods] if methods is not None else all_recipes()
    curve = exp.teacher_curve(TEACHER_NFES)
    best = min(curve.values())

    def teacher_at(n):
        if n not in curve:
            curve[n] = exp.distance(sample_ode(exp.velocity, exp.eval_noise, n, "euler"))
        return curve[n]

    def row(method, nfe, value, secs, coupled=None, error=None):
        return {"method": method, "dataset": exp.name, "nfe": nfe, "metric": exp.metric_name,
                "value": value, "floor": exp.floor, "teacher_same_nfe": teacher_at(nfe),
                "teacher_best": best, "train_seconds": secs,
                "ratio": None if value is None else value / exp.floor, "coupled": coupled, "error": error}

    rows = []
    for n in (1, 2, 4, 64):
        with torch.no_grad():
            coupled = exp.evaluate(lambda z, n=n: sample_ode(exp.velocity, z, n, "euler"))["coupled"]
        rows.append(row("teacher (euler)", n, teacher_at(n), exp.teacher_seconds, coupled))
    students = {}
    for rec in recipes:
        seed_everything(seed)
        t0 = time.perf_counter()
        try:
            student = rec.train(exp)
        except Exception as err:  # one failed method must not hide the others' results
            rows.append(row(rec.name, rec.nfes[0], None, time.perf_counter() - t0,
                            error=f"{type(err).__name__}: {err}"))
            continue
        secs = time.perf_counter() - t0
        students[rec.name] = student
        for n in rec.nfes:
            r = exp.evaluate(student.sample, n)
            rows.append(row(rec.name, n, r["value"], secs, r["coupled"]))
    return (rows, students) if return_students else rows


def _fmt(v, nd=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of bench rows."""
    head = ["method", "NFE", "metric", "value", "floor", "x floor", "teacher@NFE", "teacher best",
            "coupled", "train s"]
    body = []
    for r in rows:
        body.append([r["method"], str(r["nfe"]), r["metric"], _fmt(r["value"], 4), _fmt(r["floor"], 4),
                     _fmt(r.get("ratio"), 2), _fmt(r["teacher_same_nfe"], 4), _fmt(r["teacher_best"], 4),
                     _fmt(r.get("coupled"), 3), _fmt(r["train_seconds"], 1)])
        if r.get("error"):
            body.append(["  ! " + r["error"][:110]] + [""] * (len(head) - 1))
    widths = [max(len(x[i]) for x in [head] + body if not x[0].startswith("  !") or i > 0) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    for b in body:
        lines.append(b[0] if b[0].startswith("  !") else "  ".join(c.ljust(w) for c, w in zip(b, widths)))
    return "\n".join(lines)


def write_json(rows: list[dict], path: str | Path) -> None:
    """Write the rows with exactly :data:`ROW_KEYS` (NaN and failures as ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: r[k] for k in ROW_KEYS} for r in rows]
    path.write_text(json.dumps(clean, indent=1))
