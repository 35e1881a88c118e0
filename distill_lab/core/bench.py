"""The bench harness: one ``python -m distill_lab bench TRACK`` for every track, rows with a common core.

A track registers a :class:`BenchTrack` when its package is imported (``distill_lab.toy2d`` registers
``toy2d``; ``distill_lab.cifar`` registers ``cifar`` and ``cifar-gen``): how to build its experiment
from the command line's options, how to run its recipes into rows, and how to print them. The command
line then works the same way for every track (``--list``, ``--methods``, ``--json``, ``--scale``), and
every row has the keys of :data:`ROW_CORE` plus a ``floor`` (generation) or a ``baseline``
(classification) beside the track's own keys.

Step distillation's rows (tracks ``toy2d`` and ``cifar-gen``, later ``video``) come from one function,
:func:`run_step_bench`: each row is one student at one NFE, its metric to held-out data beside the
noise floor (two independent data draws), the teacher's own Euler sampler at the same NFE and the
teacher's best value over its NFE curve. Nothing is cached but the teacher; every student is trained
afresh from a fixed seed.
"""

from __future__ import annotations

import statistics

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from .flows import sample_ode
from .registry import Recipe, get_recipe, recipes
from .train import seed_everything

# every track's rows carry these keys, and a "floor" or a "baseline" to read the value against
ROW_CORE = ("method", "metric", "value", "seeds", "train_seconds")
# the rows of the step-distillation tracks (their JSON files have exactly these keys)
STEP_ROW_KEYS = ("method", "dataset", "nfe", "metric", "value", "floor", "teacher_same_nfe", "teacher_best",
                 "seeds", "train_seconds")
# the toy track's rows also carry the exact W2 and the k-NN precision and recall, each beside its floor
# (distill_lab.toy2d.Toy2D.sharp): they rank students where the sliced W2 cannot
SHARP_KEYS = ("w2", "w2_floor", "precision", "precision_floor", "recall", "recall_floor")
TOY_ROW_KEYS = STEP_ROW_KEYS + SHARP_KEYS
TEACHER_NFES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class BenchTrack:
    """One track of ``python -m distill_lab bench``.

    ``prepare(args, scale) -> exp`` builds the experiment from the parsed command line (it raises
    ``ValueError`` or ``FileNotFoundError`` on bad input, which the command line reports with exit
    code 2); ``run(exp, methods, args) -> rows`` trains the recipes (``methods=None``: every recipe
    registered on the track) and returns rows with ``row_keys`` (plus extras such as ``error`` for a
    recipe that failed); ``table(rows)`` prints them.
    """

    name: str
    summary: str
    row_keys: tuple[str, ...]
    prepare: Callable
    run: Callable
    table: Callable[[list[dict]], str]


TRACKS: dict[str, BenchTrack] = {}


def register_track(track: BenchTrack) -> BenchTrack:
    """Add a track to the bench (each name once); its recipes must be registered by the same import."""
    if track.name in TRACKS:
        raise ValueError(f"bench track {track.name!r} is registered twice")
    missing = set(ROW_CORE) - set(track.row_keys)
    if missing or not {"floor", "baseline"} & set(track.row_keys):
        raise ValueError(f"bench track {track.name!r}: rows must have {ROW_CORE} and a floor or a baseline; "
                         f"missing {sorted(missing) or 'floor/baseline'}")
    TRACKS[track.name] = track
    return track


def get_track(name: str) -> BenchTrack:
    if name not in TRACKS:
        raise ValueError(f"unknown bench track {name!r}; choose one of {', '.join(TRACKS) or '(none imported)'}")
    return TRACKS[name]


def bench_methods(track: str) -> list[str]:
    """The recipes a track's bench runs by default: every one registered on it but its baseline."""
    return [r.name for r in recipes(track) if not r.baseline]


def format_recipes(rs: Iterable[Recipe]) -> str:
    """One line per recipe for ``--list``: name, family, NFEs (or the metric), paper."""
    lines = []
    for r in rs:
        detail = f"nfe {','.join(map(str, r.nfes))}" if r.nfes else (r.metric or "")
        lines.append(f"{r.name:22s} {r.family:30s} {detail:10s} {r.paper}" + ("  [baseline]" if r.baseline else ""))
    return "\n".join(lines)


def mean_spread(values) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (spread 0 for one value)."""
    values = [float(v) for v in values]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired(values, base_values) -> tuple[float, float]:
    """Mean and spread over seeds of ``values`` minus ``base_values``, seed by seed (a paired comparison:
    what the two share from one seed cancels)."""
    values, base_values = list(values), list(base_values)
    if len(values) != len(base_values):
        raise ValueError(f"a paired comparison needs one base value a seed: {len(values)} against {len(base_values)}")
    return mean_spread([v - b for v, b in zip(values, base_values)])


def gap_verdict(gap: float, spread: float, below: str = "lower", above: str = "higher",
                within: str = "within the spread") -> str:
    """``below`` when ``gap`` is under zero by more than ``spread``, ``above`` when over it by more, else
    ``within``: the reading of a :func:`paired` difference."""
    return below if gap + spread < 0 else above if gap - spread > 0 else within


def write_json(rows: list[dict], keys: tuple[str, ...], path: str | Path) -> None:
    """Write the rows with exactly ``keys`` (NaN and failures as ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: _json_value(r[k]) for k in keys} for r in rows]
    path.write_text(json.dumps(clean, indent=1) + "\n")


def _json_value(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def text_table(head: list[str], body: list[list[str]], notes: Iterable[str] = ()) -> str:
    """A fixed-width table; a body row of one cell is a note printed under the row above it."""
    cells = [b for b in body if len(b) == len(head)]
    widths = [max(len(x[i]) for x in [head] + cells) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    for b in body:
        lines.append(b[0] if len(b) == 1 else "  ".join(c.ljust(w) for c, w in zip(b, widths)))
    return "\n".join(lines + list(notes))


# ------------------------------------------------------------------ step distillation
def run_step_bench(exp, methods: Iterable[str] | None = None, seed: int = 0, track: str = "toy2d",
                   return_students: bool = False):
    """Train every recipe in ``methods`` (default: every recipe of ``track`` but its baseline) on the
    step experiment ``exp`` and return the rows.

    Rows are dicts with :data:`STEP_ROW_KEYS` plus ``ratio`` (value / floor), ``coupled`` (distance to
    the teacher's ODE solution from the same noise) and ``error`` (a message when a recipe failed; one
    failure never hides the other rows). Each recipe starts from ``seed_everything(seed)``. With
    ``return_students`` also returns ``{name: student}``.
    """
    chosen = [get_recipe(m) for m in (bench_methods(track) if methods is None else methods)]
    curve = exp.teacher_curve(TEACHER_NFES)
    best = min(curve.values())

    def teacher_at(n):
        if n not in curve:
            curve[n] = exp.distance(sample_ode(exp.velocity, exp.eval_noise, n, "euler"))
        return curve[n]

    sharp = getattr(exp, "sharp_metrics", False)
    floors = {f"{k}_floor": v for k, v in exp.sharp_floor.items()} if sharp else {}

    def row(method, nfe, value, secs, coupled=None, error=None, evaluated=None):
        r = {"method": method, "dataset": exp.name, "nfe": nfe, "metric": exp.metric_name,
             "value": value, "floor": exp.floor, "teacher_same_nfe": teacher_at(nfe),
             "teacher_best": best, "seeds": [seed], "train_seconds": secs,
             "ratio": None if value is None else value / exp.floor, "coupled": coupled, "error": error}
        # the toy track's sharper metrics (None when the experiment does not compute them)
        r.update({k: (evaluated or {}).get(k) for k in ("w2", "precision", "recall")})
        r.update({k: floors.get(k) for k in ("w2_floor", "precision_floor", "recall_floor")})
        return r

    rows = []
    for n in (1, 2, 4, 64):
        with torch.no_grad():
            ev = exp.evaluate(lambda z, n=n: sample_ode(exp.velocity, z, n, "euler"))
        rows.append(row("teacher (euler)", n, teacher_at(n), exp.teacher_seconds, ev["coupled"], evaluated=ev))
    students = {}
    for rec in chosen:
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
            rows.append(row(rec.name, n, r["value"], secs, r["coupled"], evaluated=r))
    return (rows, students) if return_students else rows


def _fmt(v, nd=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def format_step_table(rows: list[dict]) -> str:
    """The step-distillation rows as a fixed-width table (a failed recipe's error under its row); rows
    with the toy track's exact W2 and k-NN precision and recall get those columns, their floors in a
    note under the table."""
    sharp = any(r.get("w2_floor") is not None for r in rows)
    head = ["method", "NFE", "metric", "value", "floor", "x floor", "teacher@NFE", "teacher best",
            "coupled", "train s"] + (["W2", "prec", "recall"] if sharp else [])
    body = []
    for r in rows:
        cells = [r["method"], str(r["nfe"]), r["metric"], _fmt(r["value"], 4), _fmt(r["floor"], 4),
                 _fmt(r.get("ratio"), 2), _fmt(r["teacher_same_nfe"], 4), _fmt(r["teacher_best"], 4),
                 _fmt(r.get("coupled"), 3), _fmt(r["train_seconds"], 1)]
        if sharp:
            cells += [_fmt(r.get("w2"), 4), _fmt(r.get("precision"), 3), _fmt(r.get("recall"), 3)]
        body.append(cells)
        if r.get("error"):
            body.append(["  ! " + r["error"][:110]])
    notes = ()
    if sharp:
        f = next(r for r in rows if r.get("w2_floor") is not None)
        notes = (f"floors (a second data draw): W2 {f['w2_floor']:.4f}, precision {f['precision_floor']:.3f}, "
                 f"recall {f['recall_floor']:.3f}",)
    return text_table(head, body, notes)
