"""The LLM track's teachers: a tiny GPT per task, trained once on the task's data, committed.

    python -m distill_lab.llm.teacher --task mult --scale ci      # writes datasets/teachers/llm_mult_ci
    python -m distill_lab.llm.teacher --task all --scale ci       # mult, star and sort

Supervised training (cross-entropy on the target tokens only, :func:`distill_lab.methods.kd.token_ce_loss`)
on fresh training-split problems every step, AdamW with a warm-up and cosine decay, gradients clipped
at norm 1. The multiplication teacher learns both chains (half of each batch full, half short), so it
writes and scores the ``mult`` and the ``mult_short`` formats; the star-graph teacher reads the
privileged prompt (with the hint). A student of the student's size trained the same way for the
students' budget (:func:`train_sft`, the data-only baseline) is measured beside it and recorded.

The folder holds ``teacher.pt`` (fp16 weights) and ``manifest.json``: the command, the machine, the
seconds, both GPTs' settings, each file's sha256, and the greedy exact-match accuracy on held-out
problems of every task the teacher serves, measured on the fp16 weights reloaded as float32 (what
:func:`load_teacher` returns).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from ..core.checkpoints import (check_folder, file_records, float32_state, fp16_state, train_teachers_requested,
                                training_record, update_manifest)
from ..core.scale import get_scale
from ..core.train import seed_everything
from ..nets.utils import n_params
from .config import TaskScale, default_teacher_dir, llm_scale, own_teacher_dir, teacher_task
from .gpt import GPT, GPTConfig
from .rollout import accuracy
from .sft import build_gpt, heldout_problems, train_sft
from .tasks import TASKS, get_task

FILES = ("teacher.pt",)
REBUILD = "python -m distill_lab.llm.teacher"


class LLMTeacherUnavailable(FileNotFoundError):
    """An LLM teacher's folder lacks a file, or a file's sha256 differs from the manifest's."""


def served_tasks(task: str) -> tuple[str, ...]:
    """The tasks one teacher is measured on: the multiplication teacher writes the full chain and serves
    the short-chain variant too (its chains, shortened, are the sequence-level targets there)."""
    return ("mult", "mult_short") if teacher_task(task) == "mult" else (task,)


def trained_tasks(task: str) -> tuple[str, ...]:
    """The tasks a teacher is trained on: its own (the multiplication teacher only the full chain)."""
    return (teacher_task(task),)


def _state_net(manifest: dict, state: dict) -> GPT:
    net = GPT(GPTConfig(**manifest["net"]))
    net.load_state_dict(float32_state(state))
    return net.eval()


def load_teacher(task: str, path: str | os.PathLike | None = None, scale=None, verify: bool = True,
                 missing_ok: bool = False) -> dict | None:
    """A committed teacher: ``{"model": GPT (float32, eval), "manifest"}``. A missing or altered folder,
    or a manifest without the ``files`` hashes or the ``net`` settings, raises
    :class:`LLMTeacherUnavailable` naming the command that rebuilds it; the manifest's figures
    (``quality``, ``final_loss``...) may be absent. Without ``path``, the teacher the scale loads
    (:func:`~distill_lab.llm.config.teacher_for`: the ``ci`` one, with a notice, where the scale has none)."""
    path = Path(path) if path is not None else default_teacher_dir(task, scale)
    manifest = check_folder(path, FILES, verify, f"LLM teacher of {teacher_task(task)}", LLMTeacherUnavailable,
                            f"{REBUILD} --task {teacher_task(task)}", missing_ok, required=("net",))
    if manifest is None:
        return None
    state = torch.load(path / "teacher.pt", map_location="cpu", weights_only=True)
    return {"model": _state_net(manifest, state), "manifest": manifest}


def train_teacher(task: str, tsc: TaskScale, seed: int = 0, steps: int | None = None, device="cpu",
                  progress: bool = True) -> tuple[GPT, dict]:
    seed_everything(seed)
    tasks = [get_task(t, **tsc.task_kwargs) for t in trained_tasks(task)]
    net = build_gpt(tasks[0], tsc.teacher).to(device)
    hist = train_sft(net, tasks, steps or tsc.teacher_steps, tsc.teacher_batch, tsc.teacher_lr,
                     privileged=tasks[0].privileged, desc=f"{task} teacher", progress=progress, device=device)
    return net.eval(), {"steps": hist["steps"], "train_seconds": hist["seconds"], "history": hist,
                        "tokens": hist["tokens"]}


def quality(net: GPT, task: str, tsc: TaskScale, seed: int = 0, device="cpu") -> dict:
    """Held-out greedy exact match (percent) of a teacher on each task it serves."""
    out = {}
    for name in served_tasks(task):
        t = get_task(name, **tsc.task_kwargs)
        out[name] = accuracy(net, t, heldout_problems(t, tsc.eval_n, seed), privileged=t.privileged, device=device)
    return out


def data_only_student(task: str, tsc: TaskScale, seed: int = 0, device="cpu", progress: bool = True) -> dict:
    """A student-sized GPT trained on the data alone for the students' budget: its accuracy and seconds."""
    seed_everything(seed)
    out = {}
    for name in served_tasks(task):
        t = get_task(name, **tsc.task_kwargs)
        net = build_gpt(t, tsc.student).to(device)
        h = train_sft(net, [t], tsc.student_steps, tsc.batch, tsc.student_lr, desc=f"{name} data-only student",
                      progress=progress, device=device)
        out[name] = {"accuracy": accuracy(net, t, heldout_problems(t, tsc.eval_n, seed), device=device),
                     "n_params": n_params(net), "train_seconds": round(h["seconds"], 1), "tokens": h["tokens"]}
    return out


def save_teacher(net: GPT, out: Path, task: str, tsc: TaskScale, info: dict, command: str, scale) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(fp16_state(net), out / "teacher.pt")
    manifest = {
        "what": f"the tiny-GPT teacher of distill-lab's LLM track for {', '.join(served_tasks(task))}",
        "scale": get_scale(scale).name,
        "task": teacher_task(task),
        "serves": list(served_tasks(task)),
        "task_scale": {**asdict(tsc)},
        "net": asdict(net.config),
        "tokenizer": get_task(task).tokenizer.chars,
        "n_params": n_params(net),
        **training_record({k: v for k, v in info.items() if k != "tokens"}, command),
        "tokens": info["tokens"],
        "files": file_records(out, FILES),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def make_teacher(task: str, sc, folder: Path, steps: int | None = None, seed: int = 0, progress: bool = True,
                 command: str | None = None) -> dict:
    """Train ``task``'s teacher at scale ``sc``, write it to ``folder``, measure it and a data-only student,
    and return the manifest (what ``python -m distill_lab.llm.teacher`` does for each task)."""
    tsc = llm_scale(task, sc)
    command = command or f"{REBUILD} --task {task} --scale {sc.name}"
    print(f"{task} teacher {tsc.teacher}, {steps or tsc.teacher_steps} steps, scale {sc.name}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    net, info = train_teacher(task, tsc, seed, steps, sc.device, progress)
    losses = info["history"]["loss"]
    info["final_loss"] = float(sum(losses[-5:]) / len(losses[-5:]))
    print(f"trained in {info['train_seconds']:.0f} s; measuring it and a data-only student", flush=True)
    save_teacher(net, folder, task, tsc, info, command, sc)
    acc = quality(load_teacher(task, folder)["model"], task, tsc, device=sc.device)
    base = data_only_student(task, tsc, device=sc.device, progress=progress)
    return update_manifest(folder, quality={"test_accuracy": acc, "data_only_student": base})


def load_or_train_teacher(task: str, path: str | os.PathLike | None = None, scale=None,
                          progress: bool = True) -> dict:
    """:func:`load_teacher`, except that without ``path`` and with ``$DISTILL_LAB_TRAIN_TEACHERS=1`` a
    scale's missing teacher is first trained into its own folder (:func:`make_teacher`; minutes to an
    hour on a CPU). Without that variable, a scale with no teacher of its own loads the ``ci`` one."""
    if path is None and train_teachers_requested():
        sc = get_scale(scale)
        folder = own_teacher_dir(task, sc)
        if load_teacher(task, folder, missing_ok=True) is None:
            print(f"no valid LLM teacher at {folder}; training one (scale {sc.name})", flush=True)
            make_teacher(teacher_task(task), sc, folder, progress=progress)
    return load_teacher(task, path, scale)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog=REBUILD, description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, help=f"one of {', '.join(t for t in TASKS if t != 'mult_short')}, or all")
    ap.add_argument("--scale", default=None, help="ci, default or gpu (default: $DISTILL_LAB_SCALE or default)")
    ap.add_argument("--out", default=None, help="folder to write (default: datasets/teachers/llm_<task>_<scale>)")
    ap.add_argument("--steps", type=int, default=None, help="override the scale's AdamW steps (pilots)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sc = get_scale(args.scale)
    if args.task != "all" and args.task not in TASKS:
        ap.error(f"unknown task {args.task!r}; choose one of {', '.join(t for t in TASKS if t != 'mult_short')}, or all")
    names = ["mult", "star", "sort"] if args.task == "all" else [teacher_task(args.task)]
    if args.out and len(names) > 1:
        ap.error("--out names one folder: give it with one --task, not with --task all")
    out = {}
    for task in names:
        folder = Path(args.out) if args.out else own_teacher_dir(task, sc)
        command = f"{REBUILD} " + shlex.join(["--task", task] + [a for a in (sys.argv[1:] if argv is None else argv)
                                                                 if a not in ("--task", args.task)])
        manifest = make_teacher(task, sc, folder, args.steps, args.seed, not args.no_progress, command)
        print(json.dumps({k: manifest[k] for k in ("train_seconds", "n_params", "quality")}, indent=2), flush=True)
        out[task] = manifest
    return out


if __name__ == "__main__":
    main()
