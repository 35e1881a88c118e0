"""What makes the toy teacher sharp: one change at a time, measured.

    python -m distill_lab.toy2d.teacher --scale ci                 # every variant, a table
    python -m distill_lab.toy2d.teacher --scale ci --variants before,now --json out/teacher.json
    python -m distill_lab.toy2d.teacher --commit --scale default   # train the track's teacher, commit it

Each variant is a flow-matching teacher trained by :func:`~distill_lab.toy2d.experiment.train_flow_teacher`
on a :class:`~distill_lab.nets.mlp.TimeMLP` at the scale's budget, from the same seed, and sampled
with the track's reference solver (64 midpoint NFE) from the experiment's fixed evaluation noise.
``--commit`` instead trains the track's own teacher (seed 0) and writes it, with a manifest of its
settings, command, machine and figures, to ``datasets/teachers/toy2d_<data>_<scale>/``, which
:class:`Toy2D` then loads instead of training (when its settings are still the same). The
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
from ..core.checkpoints import file_records, training_record
from ..core.flows import sample_ode
from ..core.scale import SCALES
from ..core.train import seed_everything
from ..nets.mlp import TimeMLP
from .data import checkerboard_off_cells, dataset_name
from .experiment import (COMMIT_COMMAND, TEACHER_FILES, TEACHER_LR, TEACHER_METHOD, TEACHER_NFE, TEACHER_TIMES,
                         X_FREQ, X_PERIOD, Toy2D, committed_teacher_dir, train_flow_teacher)

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


def data_floor(exp: Toy2D) -> dict:
    """:func:`measure`'s figures for a second draw of the data (what a perfect teacher shows), but the
    sliced ratio: off cells (checkerboard only, else ``None``), exact W2, precision and recall."""
    return {"off_cells": checkerboard_off_cells(exp.floor_data) if exp.name == "checkerboard" else None,
            **exp.sharp_floor}


def ablation(scale=None, data="checkerboard", variants=None, seed: int = 0, progress: bool = True) -> dict:
    """Train and measure each of ``variants`` (default: all of :data:`VARIANTS`); returns
    ``{"rows": [...], "floor": {...}}``, the floor being a second data draw's figures."""
    names = list(VARIANTS) if variants is None else list(variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown teacher variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    exp = Toy2D(data, scale=scale, seed=seed, progress=progress)
    floor = {**data_floor(exp), "sliced_ratio": 1.0}
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


def commit_teacher(scale=None, data: str = "checkerboard", out=None, progress: bool = True) -> Path:
    """Train the track's teacher for ``data`` at ``scale`` (seed 0, never from the cache) and write it to
    ``out`` (default :func:`committed_teacher_dir`): ``teacher.pt`` (the float32 state; about 1 MB at ci
    and default) and ``manifest.json`` with the settings it was made with (:meth:`Toy2D.teacher_config`,
    which must equal the loader's for it to be used), the command, the machine, the training seconds and
    its figures beside a second data draw's (:func:`measure`). Returns the folder."""
    if not isinstance(data, str):
        raise ValueError("only a built-in dataset's teacher can be committed (a callable has no stable name)")
    exp = Toy2D(data, scale=scale, seed=0, cache=False, progress=progress)
    folder = Path(out) if out is not None else committed_teacher_dir(exp.name, exp.scale.name)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().clone() for k, v in exp.teacher.state_dict().items()}, folder / "teacher.pt")
    hist = exp.teacher_history
    command = COMMIT_COMMAND.format(scale=exp.scale.name, data=exp.name)
    floor = data_floor(exp)
    manifest = {"what": f"the toy-2D track's flow-matching teacher for {exp.name!r} at the {exp.scale.name} scale",
                "config": exp.teacher_config(), "n_params": sum(p.numel() for p in exp.teacher.parameters()),
                **training_record({"steps": hist["steps"], "train_seconds": hist["seconds"],
                                   "final_loss": hist["loss"][-1]}, command),
                "quality": measure(exp, exp.teacher), "floor": floor,
                "files": file_records(folder, TEACHER_FILES)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distill_lab.toy2d.teacher", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=SCALES, default=None, help="(default: $DISTILL_LAB_SCALE, else 'default')")
    ap.add_argument("--data", default="checkerboard")
    ap.add_argument("--variants", default=None, help=f"comma-separated, from: {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--commit", action="store_true",
                    help="train the track's teacher (seed 0) and write it to datasets/teachers/toy2d_<data>_<scale>")
    ap.add_argument("--out", default=None, help="with --commit: write the teacher's folder here instead")
    args = ap.parse_args(argv)
    if args.commit:
        if args.seed != 0 or args.variants:
            print("error: --commit writes the track's teacher (seed 0); drop --seed and --variants", file=sys.stderr)
            return 2
        try:
            folder = commit_teacher(args.scale, args.data, args.out, progress=not args.quiet)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {folder}")
        print(json.dumps(json.loads((folder / "manifest.json").read_text())["quality"], indent=1))
        return 0
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
