"""The ``llm`` bench track: every LLM recipe on each task, several seeds, one table.

    python -m distill_lab bench llm --scale ci --seeds 0 1 2 --json out/bench_llm.json
    python -m distill_lab bench llm --tasks mult,star --methods sft,word_kd,gkd_fkl
    python -m distill_lab bench llm --tasks mult@256 --methods sft,word_kd,gkd_fkl   # a fixed set of 256 problems

    python -m distill_lab bench llm_self --scale ci   # self-distillation with privileged information (lab 43)
    python -m distill_lab bench llm_dlm --scale ci    # masked-diffusion LMs: TAD, GDSD, the ELBO policy gradient (lab 45)

Importing this module registers the tracks and the recipes (:mod:`.recipes`, :mod:`.self_recipes`, :mod:`.dlm`). A row is one method on
one task: ``value`` is the student's greedy exact-match accuracy in percent (mean over the seeds;
``spread`` their standard deviation), ``baseline`` the data-only student's (the ``sft`` recipe: same
size, warm start, steps and batch), ``values`` and ``baseline_values`` the seeds' own accuracies (a
seed's students share its warm start, so differences are best read seed by seed), ``teacher_value`` the teacher's on the same held-out problems,
``student_tokens`` the tokens the student generated in training (0 off-policy), ``train_tokens`` the
tokens it was trained on, ``distinct_sequences`` the distinct (prompt, completion) pairs among them,
``on_policy`` whether it learnt on its own samples, ``train_seconds`` the
mean training time; ``forced`` the exact match when the true chain is written for the student and
``exposure_gap`` = ``forced - value``. On the star graph ``first_node`` is the accuracy at the arm's
first node. ``pool``: ``None`` when every step draws fresh training problems, else the size of the
fixed training set every student of the row learnt from (a task written ``mult@256`` on the command
line: :class:`~distill_lab.llm.experiment.LLMTask`'s ``pool``).
"""

from __future__ import annotations

import time

from ..core.bench import BenchTrack, bench_methods, mean_spread, paired, register_track, text_table
from ..core.registry import get_recipe
from ..core.train import seed_everything
from .experiment import LLMTask
from .recipes import SEQUENCE_LEVEL  # (importing it registers the LLM recipes)
from . import dlm, self_recipes  # (importing them registers the diffusion-LM and self-distillation recipes)
from .dlm import DiffusionLMTask
from .selfdistill import SELF_TASKS, SelfDistillTask
from .tasks import TASKS

LLM_ROW_KEYS = ("method", "task", "pool", "metric", "value", "spread", "values", "baseline", "baseline_spread",
                "baseline_values", "teacher_value", "seeds",
                "student_tokens", "train_tokens", "distinct_sequences", "on_policy", "forced", "exposure_gap", "first_node", "train_seconds")
BENCH_TASKS = ("mult", "mult@256", "star", "sort")


def run_task(exp: LLMTask, methods=None, seeds=(0, 1, 2), track: str = "llm", baseline: str = "sft") -> list[dict]:
    """One row a method (default: every recipe of ``track``) on ``exp``'s task, each the mean over ``seeds``.
    On a task whose teacher writes another format (``mult_short``) only the sequence-level recipes run.
    The ``baseline`` student (data only, ``sft``) is trained first; its mean and spread are every row's
    ``baseline`` and ``baseline_spread`` (it has no row of its own). ``track="llm_self"``,
    ``baseline="reference_sft"``: the self-distillation bench (:mod:`distill_lab.llm.self_recipes`)."""
    names = bench_methods(track) if methods is None else list(methods)
    for m in names:
        get_recipe(m, track=track)
    names = [baseline] + [m for m in names if m != baseline]
    if exp.task.other_format:  # the teacher writes another format: sequence-level recipes only
        names = [m for m in names if m in SEQUENCE_LEVEL]
    rows = []
    for m in names:
        res = []
        for s in seeds:
            seed_everything(s)
            t0 = time.perf_counter()
            student = get_recipe(m).train(exp)
            secs = time.perf_counter() - t0
            res.append({**exp.evaluate(student), **{k: student.train_info[k] for k in
                                                     ("student_tokens", "train_tokens", "distinct_sequences", "on_policy")},
                        "seconds": secs})
        acc, spread = mean_spread([r["accuracy"] for r in res])
        row = {"method": m, "task": exp.task.name, "pool": exp.pool, "metric": "exact_match", "value": acc, "spread": spread,
               "values": [r["accuracy"] for r in res],
               "teacher_value": exp.teacher_eval["accuracy"], "seeds": list(seeds),
               "student_tokens": mean_spread([r["student_tokens"] for r in res])[0],
               "train_tokens": mean_spread([r["train_tokens"] for r in res])[0],
               "distinct_sequences": mean_spread([r["distinct_sequences"] for r in res])[0],
               "on_policy": bool(res[0]["on_policy"]),
               "forced": mean_spread([r["forced"] for r in res])[0],
               "exposure_gap": mean_spread([r["exposure_gap"] for r in res])[0],
               "first_node": mean_spread([r["first_node"] for r in res])[0] if "first_node" in res[0] else None,
               "train_seconds": mean_spread([r["seconds"] for r in res])[0]}
        rows.append(row)
    base = rows.pop(0)  # the data-only student is every row's baseline, not a row of its own
    for r in rows:
        r["baseline"], r["baseline_spread"], r["baseline_values"] = base["value"], base["spread"], base["values"]
    return rows


def run_llm(exps: list[LLMTask], methods=None, seeds=(0, 1, 2)) -> list[dict]:
    return [row for exp in exps for row in run_task(exp, methods, seeds)]


def _f(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def format_llm_table(rows: list[dict]) -> str:
    head = ["task", "method", "on-policy", "exact match %", "+-", "data only", "+-", "vs data, paired", "teacher", "true chain %",
            "exposure gap", "first node %",
            "student tokens", "train tokens", "distinct seqs", "seeds", "train s"]
    body = [[r["task"] + (f"@{r['pool']}" if r.get("pool") else ""), r["method"], "yes" if r["on_policy"] else "no", _f(r["value"]), _f(r["spread"]),
             _f(r["baseline"]), _f(r["baseline_spread"]),
             "{:+.1f} +- {:.1f}".format(*paired(r["values"], r["baseline_values"])), _f(r["teacher_value"]), _f(r["forced"]),
             _f(r["exposure_gap"]), _f(r["first_node"]),
             f"{r['student_tokens']:.0f}", f"{r['train_tokens']:.0f}", f"{r['distinct_sequences']:.0f}", str(len(r["seeds"])), _f(r["train_seconds"], 0)]
            for r in rows]
    return text_table(head, body, ["exact match: greedy decoding on held-out problems (test split); +-: standard "
                                   "deviation over seeds; data only: the sft student (same size, warm start and budget); vs data, "
                                   "paired: the row minus the data-only student of the same seed (same warm start), mean "
                                   "+- spread over seeds; true chain: "
                                   "exact match when the true chain is written for the student (star: the first arm "
                                   "node), exposure gap = true chain - exact match; task@N: every student of the row "
                                   "learnt from one fixed set of N training problems"])


def parse_task(spec: str) -> tuple[str, int | None]:
    """``"mult"`` -> ``("mult", None)``; ``"mult@256"`` -> ``("mult", 256)``: the task and its fixed
    training set's size (``None``: fresh problems every step)."""
    name, at, pool = spec.strip().partition("@")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)} (optionally with @N, a fixed "
                         "set of N training problems, e.g. mult@256)")
    if not at:
        return name, None
    if not pool.isdigit() or int(pool) < 1:
        raise ValueError(f"{spec!r}: after '@' comes the size of the fixed training set, a positive whole number "
                         "(e.g. mult@256)")
    return name, int(pool)


def _prepare(args, scale) -> list[LLMTask]:
    specs = [parse_task(t) for t in (args.tasks or ",".join(BENCH_TASKS)).split(",")]
    exps = [LLMTask(t, scale, pool=pool, progress=not args.quiet) for t, pool in specs]
    for e in exps:
        print(f"bench llm: {e}")
    return exps


register_track(BenchTrack(
    name="llm", summary="LLM distillation: tiny GPT students of a tiny GPT teacher on checkable tasks (exact match)",
    row_keys=LLM_ROW_KEYS, prepare=_prepare,
    run=lambda exps, methods, args: run_llm(exps, methods, tuple(args.seeds or (0, 1, 2))),
    table=format_llm_table))


def _prepare_self(args, scale) -> list[SelfDistillTask]:
    specs = [parse_task(t) for t in (args.tasks or "mult").split(",")]
    for name, _ in specs:
        if name not in SELF_TASKS:
            raise ValueError(f"self-distillation runs on {', '.join(SELF_TASKS)}, got {name!r}")
    exps = [SelfDistillTask(t, scale, pool=pool, progress=not args.quiet) for t, pool in specs]
    for e in exps:
        print(f"bench llm_self: {e}")
    return exps


def _run_self(exps, methods, args):
    return [row for exp in exps for row in run_task(exp, methods, tuple(args.seeds or (0, 1, 2)), track=self_recipes.SELF[0],
                                                   baseline="reference_sft")]


register_track(BenchTrack(
    name="llm_self", summary="LLM self-distillation with privileged information: one tiny GPT reads the reference "
                             "in its teacher view and teaches its own student view (exact match)",
    row_keys=LLM_ROW_KEYS, prepare=_prepare_self, run=_run_self, table=format_llm_table))


# ------------------------------------------------------------------ masked-diffusion LMs (track llm_dlm)
DLM_ROW_KEYS = ("method", "task", "metric", "value", "spread", "values", "baseline", "baseline_values", "tpf",
                "by_tpf", "baseline_by_tpf", "curves", "seeds", "train_seconds")


def run_dlm(exp: DiffusionLMTask, methods=None, seeds=(0, 1, 2), options: dict | None = None) -> list[dict]:
    """One row a method (default: every ``llm_dlm`` recipe) on ``exp``: each seed's student measured at
    every TPF of the scale (``by_tpf``: TPF -> mean exact match; ``curves``: each seed's); ``value`` is the exact match at the
    highest TPF (one forward pass for the whole completion), ``baseline`` the ``mdlm_sft`` student's.
    ``options``: recipe -> its options (e.g. ``{"tad": {"k": 3}}``)."""
    names = bench_methods(dlm.DLM[0]) if methods is None else list(methods)
    for m in names:
        get_recipe(m, track=dlm.DLM[0])
    names = ["mdlm_sft"] + [m for m in names if m != "mdlm_sft"]
    rows, top = [], max(exp.ds.tpfs)
    for m in names:
        curves, secs = [], []
        for s in seeds:
            seed_everything(s)
            t0 = time.perf_counter()
            student = get_recipe(m).train(exp, **(options or {}).get(m, {}))
            secs.append(time.perf_counter() - t0)
            curves.append(exp.curve(student))
        by_tpf = {t: mean_spread([c[t] for c in curves])[0] for t in exp.ds.tpfs}
        vals = [c[top] for c in curves]
        rows.append({"method": m, "task": "mult 2x2", "metric": f"exact_match_tpf{top}", "value": by_tpf[top],
                     "spread": mean_spread(vals)[1], "values": vals, "tpf": top, "by_tpf": by_tpf, "curves": curves,
                     "seeds": list(seeds),
                     "train_seconds": mean_spread(secs)[0]})
    base = rows.pop(0)
    for r in rows:
        r["baseline"], r["baseline_values"], r["baseline_by_tpf"] = base["value"], base["values"], base["by_tpf"]
    return rows


def format_dlm_table(rows: list[dict]) -> str:
    tpfs = sorted(rows[0]["by_tpf"], key=int) if rows else []
    head = ["method"] + [f"TPF {t} %" for t in tpfs] + ["vs mdlm_sft at top TPF, paired", "seeds", "train s"]
    body = [[r["method"]] + [_f(r["by_tpf"][t]) for t in tpfs]
            + ["{:+.1f} +- {:.1f}".format(*paired(r["values"], r["baseline_values"])), str(len(r["seeds"])),
               _f(r["train_seconds"], 0)] for r in rows]
    if rows:
        body.append(["(mdlm_sft, the baseline: " + ", ".join(f"TPF {t} {_f(rows[0]['baseline_by_tpf'][t])}" for t in tpfs) + ")"])
    return text_table(head, body, ["exact match: greedy confidence-ordered unmasking of the student view on held-out "
                                   "problems at TPF tokens per forward (the highest: the whole completion in one pass); "
                                   "paired: the row minus the mdlm_sft student of the same seed, mean +- spread"])


def _prepare_dlm(args, scale) -> list[DiffusionLMTask]:
    if args.tasks and args.tasks != "mult":
        raise ValueError(f"the llm_dlm track runs on two-digit products ('mult'), got {args.tasks!r}")
    exp = DiffusionLMTask(scale, progress=not args.quiet)
    print(f"bench llm_dlm: {exp}")
    return [exp]


register_track(BenchTrack(
    name="llm_dlm", summary="masked-diffusion LMs: TAD's trajectory distillation and GDSD against the ELBO policy "
                            "gradient, exact match against tokens per forward",
    row_keys=DLM_ROW_KEYS, prepare=_prepare_dlm,
    run=lambda exps, methods, args: [r for e in exps for r in run_dlm(e, methods, tuple(args.seeds or (0, 1, 2)))],
    table=format_dlm_table))
