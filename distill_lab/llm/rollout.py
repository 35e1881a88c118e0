"""The one rollout module of the LLM track: where training sequences come from, and how both models
score them. Every procedure of :mod:`distill_lab.llm.recipes` goes through it; the losses stay in
:mod:`distill_lab.methods.kd.token`.

A :class:`Completions` batch is what a procedure trains on: the problems, the completion tokens
``[B, N]`` (the chain, the answer and the end token, padding after it) and their mask ``[B, N]``, plus,
for sampled completions, the log-probability of each token under the distribution that drew it.
The completions come from

* the data (:func:`from_data`: the task's own targets, i.e. teacher forcing on ground truth),
* a model's samples (:func:`from_model`: the teacher's for sequence-level KD, the student's own for
  on-policy distillation, or the teacher-mixed distribution of MiniLLM with ``mix_with``).

:func:`score` gives a model's logits ``[B, N, V]`` at the positions that predict the completion's
tokens, after *its own* prompt: the student reads the student prompt, a privileged teacher the
teacher prompt (e.g. with a hint), and the two sets of logits line up token by token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .gpt import generate
from .tasks import Problem, Task


@dataclass
class Completions:
    """``tokens [B, N]`` after the prompts of ``problems``; ``mask [B, N]`` True on the tokens trained
    (up to and including the end token); ``sample_logprobs [B, N]`` (None for data): ``log`` of the
    probability each token had under the distribution it was sampled from; ``source``: where they came
    from (``"data"``, ``"teacher"``, ``"student"``, ``"mixed"``)."""

    problems: list[Problem]
    tokens: torch.Tensor
    mask: torch.Tensor
    sample_logprobs: torch.Tensor | None
    source: str

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())

    @property
    def on_policy(self) -> bool:
        return self.source in ("student", "mixed")


def from_data(task: Task, problems: list[Problem], device="cpu") -> Completions:
    """The task's targets (chain, answer, end token): teacher forcing on the data."""
    tokens = task.encode_targets(problems).to(device)
    return Completions(problems, tokens, tokens != task.tokenizer.pad_id, None, "data")


def from_texts(task: Task, problems: list[Problem], texts: list[str], source: str, device="cpu") -> Completions:
    """Completions given as text (e.g. a teacher's outputs rewritten in the student's format), each
    followed by the end token; padded to the longest."""
    tok = task.tokenizer
    rows = [tok.encode(t) + [tok.eos_id] for t in texts]
    n = max(len(r) for r in rows)
    tokens = torch.tensor([r + [tok.pad_id] * (n - len(r)) for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor([[i < len(r) for i in range(n)] for r in rows], dtype=torch.bool, device=device)
    return Completions(problems, tokens, mask, None, source)


def from_model(model: nn.Module, task: Task, problems: list[Problem], source: str, temperature: float = 1.0,
               top_k: int | None = None, privileged: bool = False, mix_with: nn.Module | None = None,
               mix_alpha: float = 0.0, mix_privileged: bool = False, generator: torch.Generator | None = None,
               device="cpu") -> Completions:
    """``model``'s samples after the prompts (the teacher prompt when ``privileged``), as many tokens as
    the task's longest target (the teacher's, when it reads its own prompt). With ``mix_with``, MiniLLM's teacher-mixed sampling (``mix_privileged``:
    the mixing model reads the teacher prompt)."""
    prompts = task.encode_prompts(problems, privileged).to(device)
    mix_prompt = task.encode_prompts(problems, mix_privileged).to(device) if mix_with is not None else None
    was = model.training
    model.eval()
    n_new = task.teacher_max_new_tokens if privileged else task.max_new_tokens
    r = generate(model, prompts, n_new, temperature=temperature, top_k=top_k,
                 eos_id=task.tokenizer.eos_id, pad_id=task.tokenizer.pad_id, generator=generator,
                 mix_with=mix_with, mix_alpha=mix_alpha, mix_prompt=mix_prompt)
    model.train(was)
    return Completions(problems, r.generated, r.mask[:, r.prompt_len:], r.logprobs, source)


def score(model: nn.Module, task: Task, batch: Completions, privileged: bool = False) -> torch.Tensor:
    """``model``'s logits ``[B, N, V]`` for the completion's tokens: position ``i`` is the distribution
    of ``tokens[:, i]`` given the prompt and ``tokens[:, :i]``. Gradient flows if ``model`` trains;
    score a teacher under ``torch.no_grad()``."""
    prompts = task.encode_prompts(batch.problems, privileged).to(batch.tokens.device)
    seq = torch.cat([prompts, batch.tokens[:, :-1]], 1)
    logits = model(seq)
    return logits[:, prompts.shape[1] - 1:]


@torch.no_grad()
def greedy_completions(model: nn.Module, task: Task, problems: list[Problem], privileged: bool = False,
                       forced_prefix: bool = False, device="cpu") -> torch.Tensor:
    """Greedy completions ``[B, N]`` (after the prompt). With ``forced_prefix`` the task's
    :meth:`~distill_lab.llm.tasks.Task.forced_prefix` of the *true* target (e.g. the chain of thought)
    is written for the model, which continues from it: teacher forcing up to that point."""
    prompts = task.encode_prompts(problems, privileged).to(device)
    prefix = None
    if forced_prefix:
        texts = [task.forced_prefix(p) for p in problems]
        if len({len(t) for t in texts}) > 1:
            raise ValueError(f"{task.name}: forced prefixes of one batch must have one length")
        prefix = torch.tensor([task.tokenizer.encode(t) for t in texts], dtype=torch.long, device=device)
        prompts = torch.cat([prompts, prefix], 1)
    was = model.training
    model.eval()
    n_new = task.teacher_max_new_tokens if privileged else task.max_new_tokens
    r = generate(model, prompts, n_new - (0 if prefix is None else prefix.shape[1]), temperature=0.0,
                 eos_id=task.tokenizer.eos_id, pad_id=task.tokenizer.pad_id)
    model.train(was)
    return r.generated if prefix is None else torch.cat([prefix, r.generated], 1)


def accuracy(model: nn.Module, task: Task, problems: list[Problem], batch_size: int = 256,
             privileged: bool = False, forced_prefix: bool = False, device="cpu") -> float:
    """Greedy-decoding exact-match accuracy in percent on ``problems`` (``forced_prefix``: after the
    true chain, see :func:`greedy_completions`)."""
    right = 0.0
    for i in range(0, len(problems), batch_size):
        chunk = problems[i:i + batch_size]
        gen = greedy_completions(model, task, chunk, privileged, forced_prefix, device)
        right += task.accuracy(chunk, gen.cpu()) * len(chunk) / 100.0
    return 100.0 * right / max(1, len(problems))
