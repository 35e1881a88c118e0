"""The LLM experiment: a task, its committed teacher, a student of fixed size and budget, a fixed test set.

:class:`LLMTask` implements :class:`~distill_lab.core.experiment.TokenExperiment`, what the LLM recipes
(:mod:`distill_lab.llm.recipes`) use::

    exp = LLMTask("mult", scale="ci")               # loads datasets/teachers/llm_mult_ci
    student = get_recipe("gkd_on").train(exp)       # a GPT
    exp.evaluate(student)["accuracy"]               # greedy exact match on held-out problems, percent

Every student of one experiment has the same size (the scale's ``student`` GPT), the same number of
optimiser steps and sequences a step (``steps`` x ``batch``), and is measured on the same
``eval_n`` held-out problems (test split, fixed by the experiment's seed) by greedy decoding.
Every student starts from the same warm start (``warm_steps`` supervised steps, once a seed); the
``sft`` recipe continues it on the data alone: the baseline.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..core.experiment import TokenExperiment
from ..core.scale import Scale, get_scale
from ..core.train import fit
from ..nets.utils import n_params
from .config import TaskScale, llm_scale
from .gpt import GPT
from .rollout import accuracy, greedy_completions
from .sft import build_gpt, heldout_problems, train_sft
from .tasks import Task, Tokenizer, check_same_tokenizer, get_task


class LLMTask(TokenExperiment):
    """Task, teacher and evaluation for one task at one scale.

    Parameters
    ----------
    task : ``"mult"``, ``"mult_short"``, ``"star"`` or ``"sort"`` (:mod:`distill_lab.llm.tasks`).
    scale : ``"ci"``, ``"default"``, ``"gpu"``, a :class:`~distill_lab.core.scale.Scale`, or ``None``.
    teacher : a trained GPT (default: the task's committed teacher, its hashes checked; at a scale with no
        committed teacher, the ``ci`` one after a printed notice, or with ``$DISTILL_LAB_TRAIN_TEACHERS=1``
        the scale's own, trained first).
    task_scale : override the scale's :class:`~distill_lab.llm.config.TaskScale` (tests).
    steps, eval_n : override the students' steps and the held-out problems.
    pool : train on a fixed pool of this many training problems (prompts and targets) instead of fresh
        ones every step: the regime of a fixed distillation set, where off-policy training sees the same
        sequences again and on-policy training samples new ones from the same prompts.
    student_factory : builds an untrained student (default: the scale's student GPT); any model with
        the track's two calls works, e.g. a Hugging Face model through :mod:`distill_lab.llm.hf`.
    """

    deadline: float | None = None  # a time.perf_counter() value after which training loops stop early

    def __init__(self, task: str = "mult", scale: str | Scale | None = None, teacher: nn.Module | None = None,
                 teacher_dir: str | Path | None = None, task_scale: TaskScale | None = None,
                 steps: int | None = None, eval_n: int | None = None, seed: int = 0, progress: bool = True,
                 student_factory: Callable[[], nn.Module] | None = None, pool: int | None = None):
        base = get_scale(scale)
        self._set_task(task, base, task_scale or llm_scale(task, base), steps, eval_n, seed, progress, pool)
        t0 = time.perf_counter()
        self.teacher_manifest = None
        if teacher is None:
            # imported here, so that `python -m distill_lab.llm.teacher` runs a module the package
            # has not imported yet
            from .teacher import load_or_train_teacher

            loaded = load_or_train_teacher(task, teacher_dir, scale=base, progress=progress)
            teacher, self.teacher_manifest = loaded["model"], loaded["manifest"]
        if self.teacher_manifest is not None and "tokenizer" in self.teacher_manifest:  # optional in a manifest
            check_same_tokenizer(Tokenizer(self.teacher_manifest["tokenizer"]), self.task.tokenizer)
        if teacher.config.vocab_size != self.task.tokenizer.vocab_size:
            raise ValueError(f"the teacher has {teacher.config.vocab_size} tokens, the task's tokenizer "
                             f"{self.task.tokenizer.vocab_size}: train the teacher on this task "
                             f"(python -m distill_lab.llm.teacher --task {task})")
        self.teacher = teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher_seconds = time.perf_counter() - t0
        self.student_factory = student_factory or (lambda: build_gpt(self.task, self.tscale.student))

    def _set_task(self, task: str, base: Scale, ts: TaskScale, steps, eval_n, seed: int, progress: bool, pool) -> None:
        """The task, the students' budget, the evaluation's size and the training pool: everything but the
        teacher (shared with :class:`~distill_lab.llm.selfdistill.SelfDistillTask`)."""
        self.tscale = ts
        self.task: Task = get_task(task, **ts.task_kwargs)
        self.device, self.seed, self.progress = base.device, seed, progress
        self.steps, self.batch, self.lr = steps or ts.student_steps, ts.batch, ts.student_lr
        self.eval_n = eval_n or ts.eval_n
        if pool is not None and pool < 1:
            raise ValueError(f"pool must be a positive number of problems or None, got {pool}")
        self.pool = pool
        self.scale = Scale(base.name, teacher_steps=ts.teacher_steps, width=ts.student.n_embd,
                           depth=ts.student.n_layer, batch=ts.batch, student_steps=self.steps, eval_n=self.eval_n,
                           n_proj=0, device=base.device)
        self.name = self.task.name + (f"@{pool}" if pool else "")  # mult@256: a fixed set of 256 problems
        self.privileged = self.task.privileged
        self._warm: dict[int, dict] = {}

    # ---------------------------------------------------------------- networks and draws
    def student(self) -> GPT:
        """A fresh student: the scale's student GPT after ``warm_steps`` supervised steps on the data
        (the warm start is trained once a seed, the seed being ``torch.initial_seed()``, i.e. the one
        the bench set with ``seed_everything``; the global RNG stream is left as it was)."""
        seed = torch.initial_seed()
        if seed not in self._warm:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                net = self.student_factory().to(self.device)
                if self.tscale.warm_steps:
                    train_sft(net, [self.task], self.tscale.warm_steps, self.batch, self.lr, desc=f"{self.name} warm start",
                              draw=self.problems,
                              progress=self.progress, device=self.device)
            self._warm[seed] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net = self.student_factory().to(self.device)
        net.load_state_dict(self._warm[seed])
        return net.train()

    def problems(self, n: int | None = None) -> list:
        """``n`` training problems: fresh ones, or with ``pool`` drawn (with replacement) from the
        experiment's fixed pool of ``pool`` training problems (global RNG either way)."""
        n = n or self.batch
        if not self.pool:
            return self.task.problems(n, "train")
        idx = torch.randint(0, len(self.pool_problems), (n,)).tolist()
        return [self.pool_problems[i] for i in idx]

    @cached_property
    def pool_problems(self) -> list:
        """The fixed training pool (``pool`` problems, the same for every seed of this experiment); empty when the
        experiment draws fresh problems (no pool)."""
        if not self.pool:
            return []
        return self.task.problems(self.pool, "train", torch.Generator().manual_seed(20_000 + self.seed))

    def fit(self, step: Callable, n_steps: int, desc: str) -> dict:
        return fit(step, n_steps, desc=desc, progress=self.progress, check_every=self.scale.check_every,
                   deadline=self.deadline)

    # ---------------------------------------------------------------- evaluation
    @cached_property
    def eval_problems(self) -> list:
        return heldout_problems(self.task, self.eval_n, self.seed)

    def evaluate(self, student: nn.Module, privileged: bool = False) -> dict:
        """On the held-out problems, greedy decoding: ``accuracy`` (exact match, percent); ``forced``,
        the same when the true chain is written for the model (:meth:`Task.forced_prefix`) and it only
        continues; ``exposure_gap`` = ``forced - accuracy``, what the model loses by reading its own
        chain instead of the true one; for the star graph ``first_node`` (percent right at the token
        that needs planning)."""
        probs, dev = self.eval_problems, self.device
        gen = greedy_completions(student, self.task, probs, privileged, device=dev).cpu()
        out = {"accuracy": self.task.accuracy(probs, gen),
               "forced": accuracy(student, self.task, probs, privileged=privileged, forced_prefix=True, device=dev)}
        out["exposure_gap"] = out["forced"] - out["accuracy"]
        if hasattr(self.task, "first_node_accuracy"):
            out["first_node"] = self.task.first_node_accuracy(probs, gen)
        return out

    @cached_property
    def teacher_eval(self) -> dict:
        """The teacher on the same problems (reading its own, possibly privileged, prompt)."""
        return self.evaluate(self.teacher, privileged=self.privileged)

    def __repr__(self):
        return (f"LLMTask({self.name!r}, scale={self.scale.name!r}, teacher={n_params(self.teacher):,} params, "
                f"student {self.tscale.student}, {self.steps} steps x {self.batch}, "
                f"{f'a fixed set of {self.pool} problems' if self.pool else 'fresh problems'}, device={self.device!r})")
