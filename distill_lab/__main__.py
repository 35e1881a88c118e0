"""Command line: ``python -m distill_lab {tour,bench} ...``; ``--help`` on each."""

from __future__ import annotations

import argparse
import sys
import warnings

from .scale import ENV_VAR, SCALES

BENCH_TRACKS = ("toy2d", "cifar", "cifar-gen")


def _common(p):
    p.add_argument("--scale", choices=SCALES, default=None,
                   help=f"experiment size (default: ${ENV_VAR}, else 'default')")
    p.add_argument("--data", default="checkerboard",
                   help="toy dataset name, or module:function naming a callable n -> Tensor[n, 2]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m distill_lab", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tour", help="teacher + four one-step students: a table and a figure")
    _common(t)
    t.add_argument("--out", default="out", help="folder for tour.png, tour_nfe.png, tour.json")
    b = sub.add_parser("bench", help="run every method of a track and print one table")
    b.add_argument("track", help=f"one of: {', '.join(BENCH_TRACKS)}")
    _common(b)
    b.add_argument("--methods", default=None, help="comma-separated subset of methods (default: all)")
    b.add_argument("--metric", default="sliced_w2", choices=("sliced_w2", "energy"))
    b.add_argument("--json", default=None, help="write the rows to this JSON file")
    b.add_argument("--list", action="store_true", help="list the track's methods and exit")
    b.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="cifar: seeds to average over (default: the scale's, 0 1 2)")
    b.add_argument("--epochs", type=float, default=None, help="cifar: override the scale's epochs (smoke tests)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # torch's forward-mode AD (used by torch.func.jvp) warns about its own internal use of jit.script
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
    from .scale import get_scale

    try:
        scale = get_scale(args.scale, device=args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "tour":
        from .bench import resolve_data
        from .tour import run_tour

        try:
            data = resolve_data(args.data)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        res = run_tour(data, scale=scale, out=args.out, seed=args.seed, progress=not args.quiet)
        return 1 if any(r.get("error") for r in res["rows"]) else 0
    if args.track not in BENCH_TRACKS:
        print(f"error: unknown bench track {args.track!r}; choose one of {', '.join(BENCH_TRACKS)}", file=sys.stderr)
        return 2
    if args.track == "cifar":
        return _bench_cifar(args, scale)
    if args.track == "cifar-gen":
        return _bench_cifar_gen(args, scale)
    from .bench import resolve_data, run_toy2d
    from .registry import all_recipes

    if args.list:
        return _list_recipes(all_recipes())
    try:
        data = resolve_data(args.data)
        from .registry import get_recipe
        methods = _methods(args, get_recipe)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"bench toy2d: data={args.data} scale={scale.name} device={scale.device} seed={args.seed}")
    rows = run_toy2d(data, scale=scale, methods=methods, seed=args.seed, metric=args.metric,
                     progress=not args.quiet)
    return _report(rows, args.json)


def _methods(args, get) -> list[str] | None:
    """``--methods`` split on commas, each checked by ``get`` (which raises ``ValueError`` naming the
    known methods); ``None`` when the option is absent."""
    if not args.methods:
        return None
    methods = [m.strip() for m in args.methods.split(",")]
    for m in methods:
        get(m)
    return methods


def _list_recipes(recipes) -> int:
    """Print one line per step-distillation recipe (name, family, NFEs, paper) for ``--list``."""
    for r in recipes:
        print(f"{r.name:22s} {r.family:24s} nfe {','.join(map(str, r.nfes)):8s} {r.paper}")
    return 0


def _report(rows, json_path) -> int:
    """Print a step-distillation bench's table, write its JSON, and return 1 when a method failed."""
    from .bench import format_table, write_json

    print(format_table(rows))
    if json_path:
        write_json(rows, json_path)
        print(f"wrote {json_path}")
    failed = [r["method"] for r in rows if r.get("error")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _bench_cifar_gen(args, scale) -> int:
    """Step distillation on CIFAR-10: the toy-2D bench (:func:`run_toy2d`) on a :class:`CifarFlow`."""
    from . import image_flow
    from .bench import CIFAR_GEN_METHODS, run_toy2d
    from .registry import get_recipe

    if args.list:
        return _list_recipes(get_recipe(name) for name in CIFAR_GEN_METHODS)
    try:
        methods = _methods(args, get_recipe) or list(CIFAR_GEN_METHODS)
        exp = image_flow.CifarFlow(scale, seed=args.seed, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"bench cifar-gen: {exp} device={scale.device} seed={args.seed} "
          f"(metric: Fréchet distance in the CIFAR-10 classifier's features, not FID)")
    rows = run_toy2d(exp=exp, methods=methods, seed=args.seed, progress=not args.quiet)
    return _report(rows, args.json)


def _bench_cifar(args, scale) -> int:
    from .kd_track import (KD_BENCH_METHODS, CifarKD, format_cifar_table, get_kd_recipe, run_cifar,
                           write_cifar_json)

    if args.list:
        for name in KD_BENCH_METHODS:
            r = get_kd_recipe(name)
            print(f"{r.name:22s} {r.family:30s} {r.metric:10s} {r.paper}")
        return 0
    try:
        methods = _methods(args, get_kd_recipe)
        overrides = {} if args.epochs is None else {"epochs": args.epochs}
        exp = CifarKD(scale, progress=not args.quiet, **overrides)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"bench cifar: {exp} device={scale.device}")
    rows = run_cifar(methods=methods, seeds=args.seeds, exp=exp)
    print(format_cifar_table(rows))
    if args.json:
        write_cifar_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
