"""Command line: ``python -m distill_lab {tour,bench,gpu-check,check-labs,build-site,course-pages} ...``;
``--help`` on each.

``bench TRACK`` works the same way for every track (``--list``, ``--methods``, ``--json``, ``--scale``):
each track package registers its bench track and recipes when imported (:mod:`distill_lab.core.bench`),
and this command imports them all (:data:`TRACK_PACKAGES`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .core.scale import ENV_VAR, SCALES

# the packages whose import registers a bench track (a new track adds its package here)
TRACK_PACKAGES = ("distill_lab.toy2d", "distill_lab.cifar", "distill_lab.video", "distill_lab.llm")


def _load_tracks() -> dict:
    from .core.bench import TRACKS

    for pkg in TRACK_PACKAGES:
        importlib.import_module(pkg)
    return TRACKS


def _common(p):
    p.add_argument("--scale", choices=SCALES, default=None,
                   help=f"experiment size (default: ${ENV_VAR}, else 'default')")
    p.add_argument("--data", default="checkerboard",
                   help="toy2d: dataset name, or module:function naming a callable n -> Tensor[n, 2]")
    p.add_argument("--seed", type=int, default=0,
                   help="toy2d, cifar-gen: the students' initialisation, the evaluation noise and references")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m distill_lab", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tour", help="teacher + four one-step students: a table and a figure")
    _common(t)
    t.add_argument("--out", default="out", help="folder for tour.png, tour_nfe.png, tour.json")
    t.add_argument("--full", action="store_true",
                   help="train the students with each recipe's own budget (the bench's) instead of the tour's shorter one")
    tracks = _load_tracks()
    b = sub.add_parser("bench", help="run every method of a track and print one table",
                       epilog="tracks: " + "; ".join(f"{n}: {tr.summary}" for n, tr in tracks.items()))
    b.add_argument("track", help=f"one of: {', '.join(tracks)}")
    _common(b)
    b.add_argument("--methods", default=None, help="comma-separated subset of methods (default: all of the track)")
    b.add_argument("--json", default=None, help="write the rows to this JSON file")
    b.add_argument("--list", action="store_true", help="list the track's methods and exit")
    b.add_argument("--metric", default="sliced_w2", choices=("sliced_w2", "energy"), help="toy2d: the distance")
    b.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="cifar: seeds to average over (default: the scale's, 0 1 2)")
    b.add_argument("--tasks", default=None, help="llm: comma-separated tasks; task@N trains every student on one fixed set of N "
                   "problems (default: mult,mult@256,star,sort)")
    b.add_argument("--epochs", type=float, default=None, help="cifar: override the scale's epochs (smoke tests)")
    g = sub.add_parser("gpu-check", help="every track's gpu-scale figures in one time-boxed run")
    g.add_argument("--budget-minutes", type=float, default=10.0, help="stop starting parts after this (default 10)")
    g.add_argument("--json", default=None, help="write the environment and the rows to this JSON file")
    g.add_argument("--device", default=None, help="cuda (default) or cpu (only with --tiny)")
    g.add_argument("--tiny", action="store_true", help="every part at toy size (runs on a CPU in a minute)")
    g.add_argument("--parts", default=None, help="comma-separated subset of the parts (default: all)")
    g.add_argument("--compile", action="store_true", help="torch.compile the image networks (slower to start)")
    # the course around the labs (distill_lab.course): slow, so not in CI
    c = sub.add_parser("check-labs", help="execute labs at a scale, time each one, record the times")
    s = sub.add_parser("build-site", help="the labs executed and rendered to HTML, with an index and the syllabus")
    for p in (c, s):
        p.add_argument("labs", nargs="*", help="lab numbers (01 20) or notebook paths (default: every lab)")
        p.add_argument("--scale", choices=SCALES, default=None, help=f"(default: ${ENV_VAR}, else 'default')")
        # a bound, not a budget: once in a long default run on a loaded 2-core machine the client waited forever
        # for a reply the kernel never sent (both idle); a timeout turns such a hang into a reported failure
        p.add_argument("--timeout", type=float, default=3600.0,
                       help="most seconds a cell may run; 0 for no limit (default: 3600)")
        p.add_argument("--record", default=None, help="the run-time file (default: labs/run_times.json)")
        p.add_argument("--no-record", action="store_true", help="record no time")
        p.add_argument("--quiet", action="store_true", help="hide progress bars")
    c.add_argument("--out", default=None, help="save the executed notebooks (outputs, widget state) here")
    s.add_argument("--out", default="site", help="the site's folder (default: site/)")
    s.add_argument("--executed", default=None,
                   help="render the notebooks saved here by check-labs --out instead of executing them")
    n = sub.add_parser("course-pages", help="previous/next links in every lab; the syllabus's run-time table")
    n.add_argument("--record", default=None, help="the run-time file (default: labs/run_times.json)")
    for p in (c, s, n):
        p.add_argument("--labs-dir", default=None, help="the labs' folder (default: the repository's labs/)")
    return ap


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("check-labs", "build-site", "course-pages"):
        from .course import command

        return command(args)
    from .core.scale import get_scale

    try:
        scale = get_scale(getattr(args, "scale", None), device=args.device)
    except ValueError as err:
        return _error(str(err))
    if args.command == "tour":
        return _tour(args, scale)
    if args.command == "gpu-check":
        return _gpu_check(args)
    return _bench(args, scale)


def _tour(args, scale) -> int:
    from .tour import run_tour
    from .toy2d import resolve_data

    try:
        data = resolve_data(args.data)
    except ValueError as err:
        return _error(str(err))
    res = run_tour(data, scale=scale, out=args.out, seed=args.seed, progress=not args.quiet, full=args.full)
    return 1 if any(r.get("error") for r in res["rows"]) else 0


def _gpu_check(args) -> int:
    import os

    from . import gpu_check

    if args.compile:
        os.environ["DISTILL_LAB_COMPILE"] = "1"
    parts = gpu_check.PARTS if not args.parts else tuple(p.strip() for p in args.parts.split(","))
    try:
        out = gpu_check.run(args.budget_minutes, device=args.device, tiny=args.tiny, parts=parts, json_path=args.json)
    except (RuntimeError, ValueError) as err:
        return _error(str(err))
    return 1 if any(r.get("error") for r in out["rows"]) else 0


def _bench(args, scale) -> int:
    """One track's bench: list its recipes, or check ``--methods``, build the experiment, run, print
    the table, write the JSON; 1 when a recipe failed, 2 on bad input."""
    from .core.bench import format_recipes, get_track, write_json
    from .core.registry import get_recipe, recipes

    try:
        track = get_track(args.track)
        if args.list:
            print(format_recipes(recipes(track.name)))
            return 0
        methods = None
        if args.methods:
            methods = [m.strip() for m in args.methods.split(",")]
            for m in methods:
                get_recipe(m, track=track.name)
        exp = track.prepare(args, scale)
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    rows = track.run(exp, methods, args)
    print(track.table(rows))
    if args.json:
        write_json(rows, track.row_keys, args.json)
        print(f"wrote {args.json}")
    failed = [r["method"] for r in rows if r.get("error")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
