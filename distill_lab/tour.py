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


def run_tour(data="checkerboard", scale=None, out="out", seed: int = 0, methods=TOUR_METHODS,
             progress: bool = True) -> dict:
    """Run the tour; returns ``{"rows", "figure", "json", "seconds"}``."""
    t0 = time.perf_counter()
    exp = Toy2D(data, scale=scale, seed=seed, progress=progress, sharp_metrics=True)
    print(exp)
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
    return {"rows": rows, "figure": out / "tour.png", "json": out / "tour.json", "seconds": secs}
