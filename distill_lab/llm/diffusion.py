"""Masked-diffusion language models on the tiny GPT: the model, its training loss, its sampler, and
TAD's trajectory distillation loss.

A masked-diffusion LM (MDLM, Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language
Models"; LLaDA, Nie et al. 2025) is the tiny GPT with **bidirectional** attention (``GPTConfig(causal=
False)``, :func:`masked_lm`) that reads the prompt followed by the completion with some positions
replaced by a mask token, and predicts, at every position, the token that belongs there (not the next
one). It is trained by masking each completion token with probability ``t ~ U(0, 1)`` and scoring the
masked positions (:func:`mdlm_loss`); it generates by starting from a fully masked completion and
unmasking some positions at every forward pass (:func:`unmask_sample`): the **tokens per forward** are the
speed knob, one being as slow as an autoregressive model and the whole completion at once the fastest
and, unless the model is perfect, the least accurate.

The mask token is the tokenizer's padding id: it never occurs inside a completion (the end token closes
every target), so it cannot be confused with a real token, and no tokenizer grows a token (the track's
teachers keep their vocabulary).

* :func:`tad_loss` -- TAD ("Temporal-Aware Trajectory Self-Distillation for Fast and Accurate Diffusion
  LLM"): along a teacher's decoding trajectory, recorded with the answer visible, the student at one
  state of it learns hard targets (cross-entropy on the teacher's token) for the positions the teacher
  reveals within the next ``k`` steps and soft ones (KL to the teacher's distribution) for those it
  reveals later.
* :func:`gdsd_loss`, :func:`elbo_pg_loss` -- GDSD's advantage-guided self-teacher and normalisation-free
  logit matching, and the ELBO-surrogate policy gradient it replaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..methods.kd.common import _kl_probs
from ..methods.kd.token import _prepare
from .config import NetSize
from .gpt import GPT, GPTConfig
from .tasks import Task

T_MIN = 1e-3  # pragma: no mutate (the smallest masking rate drawn: its ELBO weight 1/t stays finite)


def masked_lm(task: Task, size: NetSize) -> GPT:
    """A fresh bidirectional tiny GPT sized for ``task`` (its vocabulary; the longest prompt plus target)."""
    return GPT(GPTConfig(task.tokenizer.vocab_size, task.block_size, size.n_layer, size.n_head, size.n_embd,
                         causal=False))


def _check_model(model) -> None:
    if getattr(getattr(model, "config", None), "causal", True):
        raise ValueError("a masked-diffusion LM needs a bidirectional GPT (GPTConfig(causal=False), masked_lm): "
                         "a causal one cannot read the positions after the one it fills")


def denoiser_logits(model, prompts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[B, N, V]``: the model's distribution of the token *at* each of the ``N`` completion positions
    of ``x`` (some masked), given the prompts ``[B, P]`` and all of ``x``."""
    _check_model(model)
    if prompts.shape[0] != x.shape[0]:
        raise ValueError(f"prompts and completions must share the batch, got {prompts.shape[0]} and {x.shape[0]}")
    return model(torch.cat([prompts, x], 1))[:, prompts.shape[1]:]


def mdlm_loss(model, prompts: torch.Tensor, targets: torch.Tensor, mask_id: int, pad_id: int | None = None,
              t: torch.Tensor | None = None):
    """MDLM's objective (Sahoo et al. 2024, eq. 10 for a linear masking schedule; LLaDA's eq. 3): each
    sequence draws a masking rate ``t ~ U(T_MIN, 1)`` (or ``t: [B]``), each completion token is masked
    with probability ``t``, and ``loss = mean_b (1 / t_b) sum_{masked i} CE(x_i | x_masked) / N``, the
    negative ELBO per token. Positions holding ``pad_id`` are never masked nor scored; ``N`` counts the
    rest. Returns ``(loss, info)`` with the masked share."""
    B, N = targets.shape
    t = T_MIN + (1 - T_MIN) * torch.rand(B, device=targets.device) if t is None else t.to(targets.device)
    if t.shape != (B,) or (t <= 0).any() or (t > 1).any():
        raise ValueError(f"t must be [B]=[{B}] masking rates in (0, 1], got {tuple(t.shape)}")
    valid = torch.ones_like(targets, dtype=torch.bool) if pad_id is None else targets != pad_id
    masked = (torch.rand(B, N, device=targets.device) < t[:, None]) & valid
    x = torch.where(masked, torch.full_like(targets, mask_id), targets)
    logits = denoiser_logits(model, prompts, x)
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    per_seq = (ce * masked).sum(1) / valid.sum(1).clamp(min=1) / t
    return per_seq.mean(), {"masked_share": float(masked.sum() / valid.sum().clamp(min=1)), "t": t}


@dataclass
class Trajectory:
    """An unmasking run: the completed ``tokens [B, N]``, the forward pass at which each position was
    revealed ``reveal_step [B, N]`` (0-based), and ``forwards`` (passes made); ``logits [B, forwards, N, V]``,
    the model's logits at every pass (the state before pass ``s`` read), only when the run was asked to keep
    them."""

    tokens: torch.Tensor
    reveal_step: torch.Tensor
    forwards: int
    logits: torch.Tensor | None = None


@torch.no_grad()
def unmask_sample(model, prompts: torch.Tensor, n: int, mask_id: int, tokens_per_forward: int = 1,
                  temperature: float = 0.0, order: str = "confidence",
                  generator: torch.Generator | None = None, first_logits: torch.Tensor | None = None,
                  keep_logits: bool = False) -> Trajectory:
    """Iterative unmasking (LLaDA's low-confidence remasking, without remasking): the completion of
    ``n`` positions starts fully masked; each forward pass predicts every masked position and reveals
    ``tokens_per_forward`` of them, the most confident (``order="confidence"``, the largest predicted
    probability) or random ones (``"random"``), so ``ceil(n / tokens_per_forward)`` passes in all. The
    mask token itself is never predicted. ``temperature`` 0 reveals the most likely token, otherwise a
    sample. ``first_logits``: the model's logits on the all-masked completion, if already computed (the
    first pass is the same at every ``tokens_per_forward``), used instead of that pass. ``keep_logits``:
    the trajectory keeps the model's logits at every pass. Returns the :class:`Trajectory`."""
    if tokens_per_forward < 1:
        raise ValueError(f"tokens_per_forward must be >= 1, got {tokens_per_forward}")
    if order not in ("confidence", "random"):
        raise ValueError(f"order is 'confidence' or 'random', got {order!r}")
    B = prompts.shape[0]
    dev = prompts.device
    x = torch.full((B, n), mask_id, dtype=torch.long, device=dev)
    reveal = torch.full((B, n), -1, dtype=torch.long, device=dev)
    forwards = math.ceil(n / tokens_per_forward)
    kept = []
    for s in range(forwards):
        if s == 0 and first_logits is not None:
            if first_logits.shape[:2] != x.shape:
                raise ValueError(f"first_logits must be [B, n, V] with [B, n] = {tuple(x.shape)}, got "
                                 f"{tuple(first_logits.shape)}")
            raw = first_logits
        else:
            raw = denoiser_logits(model, prompts, x)
        if keep_logits:
            kept.append(raw.clone())
        logits = raw.float()
        if logits is first_logits:  # the caller's tensor: the line below writes in place
            logits = logits.clone()
        logits[..., mask_id] = float("-inf")
        logp = F.log_softmax(logits if temperature == 0 else logits / temperature, -1)
        if temperature == 0:
            pred = logp.argmax(-1)
        else:
            pred = torch.multinomial(logp.exp().reshape(B * n, -1), 1, generator=generator).reshape(B, n)
        still = x == mask_id
        if order == "confidence":
            score = logp.gather(-1, pred[..., None]).squeeze(-1)
        else:
            score = torch.rand(B, n, device=dev, generator=generator)
        score = score.masked_fill(~still, float("-inf"))
        k = min(tokens_per_forward, int(still.sum(1).max()))
        top = score.topk(k, dim=1).indices
        pick = torch.zeros_like(still).scatter_(1, top, True) & still
        x = torch.where(pick, pred, x)
        reveal = torch.where(pick, torch.full_like(reveal, s), reveal)
    return Trajectory(x, reveal, forwards, torch.stack(kept, 1) if keep_logits else None)


def tad_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_tokens: torch.Tensor,
             steps_to_reveal: torch.Tensor, k: float, mask: torch.Tensor):
    """TAD's temporal-aware loss at one state of a teacher trajectory ("Temporal-Aware Trajectory
    Self-Distillation for Fast and Accurate Diffusion LLM"). For every position still masked at that state
    (``mask [B, N]``), ``steps_to_reveal`` says how many passes later the teacher revealed it (``>= 1``):

    * revealed within ``k`` steps -> hard target: ``CE(student, teacher_token)``, the token the teacher
      committed to soon (near-term tokens are confident, so their argmax is the signal);
    * revealed later -> soft target: ``KL(p_teacher || p_student)``, the teacher's whole distribution
      (far tokens are still uncertain for the teacher too).

    ``k = 0`` is pure KL, ``k = inf`` pure cross-entropy. Averaged over the masked positions. Stop-gradient:
    the teacher's logits and tokens (the teacher is another network, or the same one shown the answer).
    Shapes ``[B, N, V]`` and ``[B, N]``. Returns ``(loss, info)`` with the share of hard positions."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")
    if not (teacher_tokens.shape == steps_to_reveal.shape == mask.shape == student_logits.shape[:2]):
        raise ValueError("teacher_tokens, steps_to_reveal and mask must all be [B, N] like the logits' first two dims")
    if k < 0:
        raise ValueError(f"k counts steps ahead (>= 0; inf: all hard), got {k}")
    if (steps_to_reveal[mask] < 1).any():
        raise ValueError("a masked position is revealed at least one step after the state it is scored at")
    logq, logp, mask = _prepare(student_logits, teacher_logits, mask)  # the teacher detached
    hard = mask & (steps_to_reveal <= k)
    soft = mask & ~hard
    ce = -logq.gather(-1, teacher_tokens.detach()[..., None]).squeeze(-1)
    kl = _kl_probs(logp.exp(), logp, logq)
    n = mask.sum().clamp(min=1)
    loss = ((ce * hard).sum() + (kl * soft).sum()) / n
    return loss, {"hard_share": float(hard.sum() / n)}


# ------------------------------------------------------------------------ GDSD against the ELBO surrogate
def gdsd_loss(logits: torch.Tensor, tokens: torch.Tensor, advantage: torch.Tensor, beta: float, mask: torch.Tensor):
    """GDSD ("Reinforcement Learning as Guided Denoiser Self-Distillation for Diffusion Language Models"):
    the optimum of reverse-KL-regularised RL is the current policy tilted by ``exp(A / beta)``, so the
    self-teacher's logits are the denoiser's own plus ``A / beta`` on each sampled token,
    ``z* = sg(z) + (A / beta) e_y``, and the denoiser's logits are matched to them without normalising,
    ``0.5 (z_y - z*_y)^2`` at each masked position that the rollout filled with ``y``. The gradient moves
    only the sampled token's logit, by ``-A / beta`` (tested): no likelihood, no ELBO. ``logits [B, N, V]``
    (the denoiser on a masked state), ``tokens [B, N]`` (the rollout's), ``advantage [B]`` (a sequence's
    reward minus the group's mean), ``mask [B, N]`` (the positions masked in that state). Stop-gradient:
    the self-teacher. Returns ``(loss, info)``."""
    if beta <= 0:
        raise ValueError(f"beta is the KL regulariser's strength: > 0, got {beta}")
    adv = torch.as_tensor(advantage, dtype=logits.dtype, device=logits.device)
    if adv.shape != (logits.shape[0],):
        raise ValueError(f"advantage must be one number a sequence, [B]=[{logits.shape[0]}], got {tuple(adv.shape)}")
    z = logits.gather(-1, tokens[..., None]).squeeze(-1)
    target = z.detach() + adv[:, None] / beta
    per = 0.5 * (z - target) ** 2
    n = mask.sum().clamp(min=1)
    return (per * mask).sum() / n, {"shift": float((adv.abs() / beta).mean())}


def elbo_pg_loss(logits: torch.Tensor, tokens: torch.Tensor, advantage: torch.Tensor, t: torch.Tensor, mask: torch.Tensor):
    """The ELBO-surrogate policy gradient GDSD compares with (diffu-GRPO's family): the intractable
    ``log pi(y)`` of a rollout replaced by MDLM's ELBO estimate on one masked state,
    ``(1 / t) sum_{masked i} log softmax(z_i)[y_i]``, in REINFORCE: ``L = -A * ELBO / N``. Its gradient
    goes through the softmax, so every logit of a position moves, not only the sampled one's.
    ``t [B]``: the masking rate of the state. Returns ``(loss, info)``."""
    adv = torch.as_tensor(advantage, dtype=logits.dtype, device=logits.device)
    if adv.shape != (logits.shape[0],) or t.shape != (logits.shape[0],):
        raise ValueError("advantage and t must be one number a sequence, [B]")
    logp = F.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    elbo = (logp * mask).sum(1) / t.to(logits.dtype) / mask.shape[1]
    loss = -(adv.detach() * elbo).mean()
    return loss, {"elbo": float(elbo.detach().mean())}
