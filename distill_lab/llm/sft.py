"""Supervised training of the tiny GPTs: the loop that trains the teachers, the students' warm start and
the data-only baseline, and the helpers around it (a GPT sized for a task, the held-out problems).

:func:`train_sft` is teacher forcing on the ground truth: cross-entropy on the target tokens only
(:func:`distill_lab.methods.kd.token.token_ce_loss`), fresh training-split problems every step, AdamW
with a warm-up and cosine decay, gradients clipped at norm 1.
"""

from __future__ import annotations

import math

import torch

from ..core.train import fit
from ..methods.kd.token import token_ce_loss
from .config import NetSize
from .gpt import GPT, GPTConfig
from .rollout import from_data, score
from .tasks import Task


def build_gpt(task: Task, size: NetSize) -> GPT:
    """A fresh tiny GPT sized for ``task`` (its vocabulary, the longest prompt plus target)."""
    return GPT(GPTConfig(task.tokenizer.vocab_size, task.block_size, size.n_layer, size.n_head, size.n_embd))


def cosine_lr(opt, steps: int, warm: int | None = None):
    warm = warm or max(1, steps // 30)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))


def update(model, opt, loss, sched=None) -> None:
    """One optimiser step of the LLM track: clear the gradients, back-propagate ``loss``, clip the
    gradient norm at 1, step (and the learning-rate schedule, if any)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if sched is not None:
        sched.step()


def train_sft(model: GPT, tasks: list[Task], steps: int, batch: int, lr: float, privileged: bool = False,
              desc: str = "sft", progress: bool = True, device="cpu", deadline: float | None = None,
              draw=None) -> dict:
    """Supervised fine-tuning on the data (teacher forcing on the ground truth): the teachers' training
    and the students' warm start. Each step draws ``batch`` training problems, split evenly over
    ``tasks``, fresh ones or, with ``draw(n) -> problems`` (one task only), from wherever it draws (an
    experiment's fixed pool). Returns :func:`~distill_lab.core.train.fit`'s history with ``"tokens"``."""
    if draw is not None and len(tasks) != 1:
        raise ValueError("train_sft: a draw function serves one task")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.1)
    sched = cosine_lr(opt, steps)
    share = max(1, batch // len(tasks))
    seen = {"tokens": 0}

    def step(i):
        loss = 0.0
        for t in tasks:
            c = from_data(t, draw(share) if draw is not None else t.problems(share, "train"), device)
            loss = loss + token_ce_loss(score(model, t, c, privileged), c.tokens, c.mask) / len(tasks)
            seen["tokens"] += c.n_tokens
        update(model, opt, loss, sched)
        return loss

    model.train()
    hist = fit(step, steps, desc=desc, progress=progress, deadline=deadline)
    hist["tokens"] = seen["tokens"]
    return hist


def heldout_problems(task: Task, n: int, seed: int = 0):
    """The fixed held-out problems every model of a task is measured on."""
    return task.problems(n, "test", torch.Generator().manual_seed(10_000 + seed))
