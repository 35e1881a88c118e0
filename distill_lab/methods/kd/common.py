"""The divergences every logit-level distillation loss shares: the KL between softmax distributions
(:func:`kl_per_example`, the forward KL of Hinton et al. 2015), the same against a probability target,
and the mixing of a distillation term with the label cross-entropy.

Conventions. Logits have the class dimension last, ``[B, C]`` or ``[B, ..., C]`` (every leading
position is one example); labels have the leading shape ``[B, ...]``. Losses average over examples.
A "teacher" tensor passed to a loss is detached inside it: no gradient ever reaches a teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.checks import check_labels, check_pair, check_temperature


def _kl_probs(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_c p (log p - log q)`` over the last dim, with ``0 log 0 = 0``."""
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def kl_per_example(target_logits: torch.Tensor, student_logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T))`` for each example, shape ``[B, ...]`` (no reduction).

    The first argument is the *target* distribution (forward KL, as in Hinton et al. 2015).
    Gradients flow into both arguments here; the losses below detach their teachers.
    """
    check_pair(student_logits, target_logits, ("student_logits", "target_logits"))
    T = check_temperature(T)
    log_p = F.log_softmax(target_logits / T, dim=-1)
    log_q = F.log_softmax(student_logits / T, dim=-1)
    return _kl_probs(log_p.exp(), log_p, log_q)


def _soft_ce_kl(student_logits, target_probs, T):
    """Per-example ``KL(target || softmax(s/T))`` for a probability target."""
    log_q = F.log_softmax(student_logits / T, dim=-1)
    return _kl_probs(target_probs, _log(target_probs), log_q)


def _mix_with_labels(kd: torch.Tensor, student_logits: torch.Tensor, labels, alpha: float):
    """``alpha * kd + (1 - alpha) * CE(student, labels)``; returns ``(loss, ce)`` (``ce`` is NaN, and
    only the KD term counts, when no labels are given)."""
    loss = alpha * kd
    ce = torch.full((), float("nan"))
    if labels is not None:
        labels = check_labels(labels, student_logits)
        ce = F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1))
        if alpha < 1.0:
            loss = loss + (1.0 - alpha) * ce
    return loss, ce
