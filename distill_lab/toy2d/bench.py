"""The ``toy2d`` bench track: every step-distillation recipe on a toy 2D distribution, one table.

    python -m distill_lab bench toy2d --scale ci --data checkerboard --json out/bench.json
    python -m distill_lab bench toy2d --methods dmd,lagrangian --data mymodule:my_sampler

Importing this module registers the step-distillation recipes (:mod:`distill_lab.methods.step`) and the
track. The rows are :func:`distill_lab.core.bench.run_step_bench`'s, on a :class:`Toy2D`.
"""

from __future__ import annotations

import importlib
from typing import Iterable

from ..core.bench import TOY_ROW_KEYS, BenchTrack, format_step_table, register_track, run_step_bench
from ..methods import step  # noqa: F401  (registers the step-distillation recipes)
from .data import DATASETS
from .experiment import Toy2D


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
    """The ``toy2d`` bench's rows: :func:`~distill_lab.core.bench.run_step_bench` on ``exp``, or on a
    :class:`Toy2D` of ``data`` at ``scale`` (its teacher trained or loaded from the cache; with the exact W2
    and k-NN precision and recall in every row) when ``exp`` is not given. ``methods=None`` runs every recipe registered on the track."""
    exp = exp or Toy2D(data, scale=scale, seed=seed, metric=metric, progress=progress, sharp_metrics=True)
    return run_step_bench(exp, methods, seed=seed, track="toy2d", return_students=return_students)


def _prepare(args, scale) -> Toy2D:
    data = resolve_data(args.data)
    print(f"bench toy2d: data={args.data} scale={scale.name} device={scale.device} seed={args.seed}")
    return Toy2D(data, scale=scale, seed=args.seed, metric=args.metric, progress=not args.quiet, sharp_metrics=True)


register_track(BenchTrack(
    name="toy2d", summary="step distillation on a toy 2D distribution (sliced W2 or energy distance, beside the "
                          "exact W2 and k-NN precision and recall)",
    row_keys=TOY_ROW_KEYS, prepare=_prepare,
    run=lambda exp, methods, args: run_toy2d(exp=exp, methods=methods, seed=args.seed),
    table=format_step_table))
