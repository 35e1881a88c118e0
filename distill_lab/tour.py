"""The tour: a teacher, four one-step students, one table and one figure, from the command line.

    python -m distill_lab tour --scale ci --out out/

It trains (or loads) a flow-matching teacher on a toy 2D distribution, distils it into one-step
students with four families of method (trajectory, consistency, flow map, distribution matching),
prints the bench table and writes ``tour.png``: the same noise pushed through every sampler.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .core.bench import TOY_ROW_KEYS, format_step_table, write_json
from .core.flows import sample_ode
from .core.plots import nfe_curve, scatter_panels
from .toy2d import Toy2D, run_toy2d

TOUR_METHODS = ("trajectory", "cd", "lagrangian", "dmd")
# The tour's budgets, by scale: the options each student trains with in the tour (the bench, the labs
# and ``--full`` use each recipe's own defaults). They keep the default-scale tour within 5 minutes on
# 2 cores. DMD's time goes to its critic: at default a DMD step took 64 ms with 5 fake-score updates
# per generator update and 39 ms with 2 (2 threads), so each update costs ~8 ms and the 5 of them ~65%
# of the step. With 2, precision stays at 0.933 and the sliced W2 at 1.03x the floor (1.04x with 5;
# seed 0, 2,000 steps). The Lagrangian map trains 2,000 steps instead of 3,000. The README's "The
# tour's budget" holds the measurements.
TOUR_BUDGETS: dict[str, dict[str, dict]] = {
    "default": {"lagrangian": {"steps": 2000}, "dmd": {"critic_updates": 2}},
}


def run_tour(data="checkerboard", scale=None, out="out", seed: int = 0, methods=TOUR_METHODS,
             progress: bool = True, full: bool = False) -> dict:
    """Run the tour; returns ``{"rows", "figure", "json", "seconds", "budgets"}``. The students train with
    :data:`TOUR_BUDGETS` for the scale, or with each recipe's own defaults when ``full`` (slower)."""
    t0 = time.perf_counter()
    exp = Toy2D(data, scale=scale, seed=seed, progress=progress, sharp_metrics=True)
    budgets = {} if full else TOUR_BUDGETS.get(exp.scale.name, {})
    exp.recipe_defaults = {m: dict(budgets[m]) for m in methods if m in budgets}
    print(exp)
    if exp.recipe_defaults:
        print("tour budgets (--full for the bench's): " + "; ".join(
            f"{m} {', '.join(f'{k}={v}' for k, v in o.items())}" for m, o in exp.recipe_defaults.items()))
    rows, students = run_toy2d(exp=exp, methods=methods, seed=seed, progress=progress, return_students=True)
    print(format_step_table(rows))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    z = exp.eval_noise
    with torch.no_grad():
        panels = {"held-out data": exp.eval_data,
                  "teacher, 1 Euler step": sample_ode(exp.velocity, z, 1),
                  "teacher, 64 midpoint NFE": exp.eval_teacher}
        for name, st in students.items():
            r = next(r for r in rows if r["method"] == name and r["nfe"] == 1)
            panels[f"{name}, 1 step ({r['ratio']:.1f}x floor)"] = st.sample(z, 1)
    fig = scatter_panels(panels, cols=4)
    fig.savefig(out / "tour.png", dpi=110)
    curve = {int(r["nfe"]): r["value"] for r in rows if r["method"] == "teacher (euler)"}
    ax = nfe_curve({"teacher (euler)": curve}, floor=exp.floor)
    for name in students:
        r = next(r for r in rows if r["method"] == name and r["nfe"] == 1)
        ax.plot([1], [r["value"]], "*", ms=9, label=name)
    ax.legend(fontsize=7)
    ax.figure.tight_layout()
    ax.figure.savefig(out / "tour_nfe.png", dpi=110)
    write_json(rows, TOY_ROW_KEYS, out / "tour.json")
    secs = time.perf_counter() - t0
    print(f"wrote {out / 'tour.png'}, {out / 'tour_nfe.png'} and {out / 'tour.json'} in {secs:.0f} s")
    return {"rows": rows, "figure": out / "tour.png", "json": out / "tour.json", "seconds": secs,
            "budgets": exp.recipe_defaults}
