"""Self-distillation with privileged information on the tiny GPT: one network, two views.

There is no external teacher here. The **student view** reads the task's prompt; the **teacher view**
reads the same prompt, then ``#`` and a share ``rho`` of the reference solution (the privileged
information), padded to a fixed length::

    student view   ^321*543=
    teacher view   ^321*543=#51600+029__________________      (rho = 0.3)

A language model that was pretrained on text reads a solution in its context without being taught to;
the tiny GPT has to learn it, so every student starts from a warm start trained on **both views**
(half of each batch with the student prompt, half with a reference revealed at a random share):
the analogue of the pretrained model the papers start from. After the warm start the teacher view
with the whole reference is nearly always right and the student view is not; self-distillation moves
what the teacher view knows into the student view, on the student view's own rollouts.

:class:`SelfDistillTask` is the experiment (a :class:`~distill_lab.llm.experiment.LLMTask` whose
"teacher" is the network itself); the recipes are in :mod:`distill_lab.llm.self_recipes`, the losses
in :mod:`distill_lab.methods.kd.privileged`.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property

import torch

from ..core.scale import Scale, get_scale
from ..core.train import fit
from ..methods.kd.privileged import reveal
from ..methods.kd.token import token_ce_loss
from .config import TaskScale, llm_scale
from .experiment import LLMTask
from .gpt import GPT, GPTConfig
from .rollout import Completions, from_data, score
from .sft import cosine_lr, heldout_problems, update
from .tasks import PAD, Problem, Task

MARK = "#"  # separates the prompt from the revealed reference in the teacher view


def with_reference(problem: Problem, rho: float = 1.0, width: int | None = None) -> Problem:
    """``problem`` whose privileged (teacher-view) prompt is the prompt, ``#``, and the first ``rho``
    share of the reference solution (:func:`~distill_lab.methods.kd.privileged.reveal`), padded with
    the pad character to ``width`` (default the reference's length), so every teacher prompt of a
    task has one length whatever ``rho``."""
    width = len(problem.target) if width is None else width
    shown = reveal(problem.target, rho)
    if len(shown) > width:
        raise ValueError(f"the revealed reference has {len(shown)} characters, more than the width {width}")
    return replace(problem, teacher_prompt=problem.prompt + MARK + shown.ljust(width, PAD))


SELF_TASKS = {"mult": {"digits_a": 2, "digits_b": 2}, "sort": {}}


def self_scale(task: str, scale: str | Scale | None = None) -> TaskScale:
    """The LLM track's :class:`~distill_lab.llm.config.TaskScale` of ``task``, sized for
    self-distillation: two-digit products (``mult``, so that the warm start on both views takes about ten
    seconds at ci), 600 warm-start steps and half the students' steps (300 at ci)."""
    if task not in SELF_TASKS:
        raise ValueError(f"self-distillation runs on {', '.join(SELF_TASKS)}, got {task!r}")
    ts = llm_scale(task, scale)
    return replace(ts, task_kwargs={**ts.task_kwargs, **SELF_TASKS[task]}, warm_steps=600,
                   student_steps=ts.student_steps // 2)


class SelfDistillTask(LLMTask):
    """A task, a student GPT that reads both views, its warm start, and the fixed evaluation.

    Parameters are :class:`~distill_lab.llm.experiment.LLMTask`'s, less the teacher. ``rho`` is the
    exposure of :meth:`problems` unless a recipe asks for another; ``view_share`` the share of each
    warm-start batch that reads the teacher view. ``evaluate(student)`` measures the student view;
    ``evaluate(student, privileged=True)`` the teacher view with the whole reference.
    """

    def __init__(self, task: str = "mult", scale: str | Scale | None = None, task_scale: TaskScale | None = None,
                 steps: int | None = None, eval_n: int | None = None, seed: int = 0, progress: bool = True,
                 rho: float = 1.0, view_share: float = 0.75, stray_share: float = 0.1, pool: int | None = None):
        base = get_scale(scale)
        self._set_task(task, base, task_scale or self_scale(task, base), steps, eval_n, seed, progress, pool)
        ts = self.tscale
        if self.task.other_format or self.task.privileged:
            raise ValueError(f"self-distillation builds its own privileged view from the reference; {task!r} already "
                             "has a teacher prompt or format of its own: use 'mult' or 'sort'")
        if not 0.0 < view_share < 1.0:
            raise ValueError(f"view_share is the share of warm-start sequences in the teacher view, in (0, 1), got {view_share}")
        reveal("", rho)  # checks rho
        self.rho, self.view_share, self.stray_share = rho, view_share, stray_share
        self.name = "self:" + self.name
        self.scale = replace(self.scale, teacher_steps=0)  # no teacher is trained
        self.privileged = True
        self.teacher, self.teacher_manifest, self.teacher_seconds = None, None, 0.0
        width = self.task.max_new_tokens - 1  # the reference, without its end token
        self.width = width
        block = self.task.prompt_len + len(MARK) + width + self.task.max_new_tokens
        size = ts.student
        self.student_factory = lambda: GPT(GPTConfig(self.task.tokenizer.vocab_size, block, size.n_layer,
                                                     size.n_head, size.n_embd))

    # ---------------------------------------------------------------- problems
    def problems(self, n: int | None = None, rho: float | None = None) -> list[Problem]:
        """``n`` fresh training problems whose teacher prompt reveals ``rho`` (default ``self.rho``) of
        the reference."""
        rho = self.rho if rho is None else rho
        return [with_reference(p, rho, self.width) for p in self.plain_problems(n)]

    def plain_problems(self, n: int | None = None) -> list[Problem]:
        """``n`` training problems as the task writes them: fresh, or drawn from the fixed pool."""
        return LLMTask.problems(self, n)

    @cached_property
    def eval_problems(self) -> list[Problem]:
        return [with_reference(p, 1.0, self.width) for p in heldout_problems(self.task, self.eval_n, self.seed)]

    # ---------------------------------------------------------------- the warm start on both views
    def student(self) -> GPT:
        """A fresh copy of the seed's warm start (``warm_steps`` supervised steps on both views,
        trained once a seed, as :meth:`LLMTask.student`), in training mode."""
        seed = torch.initial_seed()
        if seed not in self._warm:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                net = self.student_factory().to(self.device)
                self.train_both_views(net, self.tscale.warm_steps)
            self._warm[seed] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net = self.student_factory().to(self.device)
        net.load_state_dict(self._warm[seed])
        return net.train()

    def train_both_views(self, net: GPT, steps: int) -> dict:
        """Supervised steps on the data in both views: each batch ``1 - view_share`` student prompts and
        ``view_share`` teacher prompts, each revealing a share of the reference drawn uniformly in [0, 1]
        (so the teacher view learns to read whatever share it is given)."""
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, betas=(0.9, 0.98), weight_decay=0.1)
        sched = cosine_lr(opt, steps)
        n_priv = max(1, round(self.view_share * self.batch))

        def step(i):
            plain = self.plain_problems(self.batch - n_priv)
            rhos = torch.rand(n_priv).tolist()
            # reading a reference is a skill of the pretrained model, not of the task's data: fresh problems
            priv = [with_reference(p, r, self.width) for p, r in zip(self.task.problems(n_priv, "train"), rhos)]
            loss = 0.0
            for probs, view, share in ((plain, False, 1 - self.view_share), (priv, True, self.view_share)):
                c = from_data(self.task, probs, self.device)
                read = self.stray(c) if view else c  # the teacher view reads a prefix that strays, predicts the reference
                loss = loss + share * token_ce_loss(score(net, self.task, read, privileged=view), c.tokens, c.mask)
            update(net, opt, loss, sched)
            return loss

        net.train()
        return fit(step, steps, desc=f"{self.name} warm start (both views)", progress=self.progress)

    def stray(self, c: Completions) -> Completions:
        """``c`` with each trained token replaced, with probability ``stray_share``, by a random token of
        the reference's alphabet: the teacher view's warm start reads such prefixes and is still trained
        to write the reference's next token, as a pretrained model given a solution goes on with it after
        a wrong step (without it the teacher view has only seen prefixes that agree with its reference,
        and on the student's rollouts it is off its training distribution)."""
        if not self.stray_share:
            return c
        alphabet = torch.tensor(sorted({t for p in c.problems for t in self.task.tokenizer.encode(p.target)}),
                                device=c.tokens.device)
        swap = (torch.rand(c.tokens.shape, device=c.tokens.device) < self.stray_share) & c.mask
        other = alphabet[torch.randint(0, len(alphabet), c.tokens.shape, device=c.tokens.device)]
        return replace(c, tokens=torch.where(swap, other, c.tokens))

    @cached_property
    def teacher_eval(self) -> dict:
        """The warm start's teacher view (the whole reference in its prompt) on the held-out problems:
        the self-teacher every recipe starts from."""
        return self.evaluate(self.student(), privileged=True)

    def __repr__(self):
        return (f"SelfDistillTask({self.task.name!r}, scale={self.scale.name!r}, student {self.tscale.student}, "
                f"{self.tscale.warm_steps} warm-start steps on both views, {self.steps} steps x {self.batch}, "
                f"rho={self.rho}, device={self.device!r})")


def critique_focus(task: Task, problems: list[Problem], tokens: torch.Tensor) -> torch.Tensor:
    """The step-aligned critique as token weights ``[B, T]``: 1 on the tokens of the first step that
    the task's checker (:meth:`~distill_lab.llm.tasks.Multiplication.critique`) names as failing, 0
    elsewhere; a completion that stops before that step is marked at its end token; a right completion
    is all 0. This is what the critique tells the self-teacher: *where* the reasoning fails, not how to
    fix it (the fix comes from the teacher view's log-ratio on those tokens)."""
    if not hasattr(task, "critique"):
        raise ValueError(f"{task.name} has no step-aligned checker; the critique condition needs one (task 'mult')")
    tok = task.tokenizer
    focus = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    for b, (p, row) in enumerate(zip(problems, tokens.tolist())):
        n = row.index(tok.eos_id) if tok.eos_id in row else len(row)
        text = "".join(tok.chars[i] for i in row[:n])  # one character a token, padding kept in place
        k = task.critique(p, text)
        if k is None:
            continue
        steps = task.steps(text)
        if k < len(steps):
            start = sum(len(s) for s in steps[:k])
            focus[b, start:start + len(steps[k])] = 1.0
        elif n < tokens.shape[1]:
            focus[b, n] = 1.0  # it stopped before the failing step: the end token is the mistake
    return focus
