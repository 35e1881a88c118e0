"""Self-distillation: a network distils a previous generation of itself.

* :func:`self_distill_targets`, :func:`soft_target_loss`, :func:`self_distill_loss` -- born-again
  networks (Furlanello et al. 2018) and iterative self-distillation with ground-truth weighting
  (Borup & Andersen 2021).
* :func:`anchored_target`, :func:`anchored_recursion`, :func:`anchored_distill_loss`,
  :func:`generation_kls` -- recursive meta-distillation anchored to the base teacher (Flouro &
  Chadwick 2026).

The closed-form case (kernel ridge regression, Mobahi et al. 2020) is :mod:`.kernel_sd`.

The conventions (classes last, mean over examples, teachers detached) are :mod:`.common`'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.checks import check_labels, check_logits, check_probs, check_temperature, check_weight
from .common import _kl_probs, _log, _soft_ce_kl


# ============================================================================ born-again / ground-truth weighting
def self_distill_targets(prev_probs: torch.Tensor, onehot: torch.Tensor, alpha: float) -> torch.Tensor:
    """Targets of one self-distillation generation, mixing ground truth and the previous model::

        target = alpha * onehot(y) + (1 - alpha) * p_prev

    Born-again networks (Furlanello et al. 2018, "Born-again neural networks") train generation
    k+1 on generation k's outputs; Borup & Andersen (NeurIPS 2021, "Even your teacher needs
    guidance", their weighted-target objective) add the ground truth with a weight and
    show it dampens the regularisation that pure self-distillation amplifies (see
    :mod:`distill_lab.methods.kd.kernel_sd` for the closed form). Here ``alpha`` is the weight on the ground
    truth: ``alpha = 1`` is supervised training, ``alpha = 0`` pure self-distillation (Mobahi et
    al. 2020's setting). (Check the symbol against the paper before quoting values of it: this lab
    fixes the convention above.)

    Parameters
    ----------
    prev_probs : ``[B, ..., C]`` probabilities of the previous generation (detached here).
    onehot : ``[B, ..., C]`` one-hot (or soft) labels, or ``[B, ...]`` integer labels.
    alpha : in [0, 1].
    """
    alpha = check_weight(alpha)
    check_probs("prev_probs", prev_probs)
    if onehot.shape == prev_probs.shape[:-1]:
        onehot = F.one_hot(check_labels(onehot, prev_probs), prev_probs.shape[-1]).to(prev_probs.dtype)
    if onehot.shape != prev_probs.shape:
        raise ValueError(f"onehot must be [B, ..., C] like prev_probs {tuple(prev_probs.shape)} or integer "
                         f"labels [B, ...], got {tuple(onehot.shape)}")
    return alpha * onehot.to(prev_probs.dtype) + (1.0 - alpha) * prev_probs.detach()


def soft_target_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, T: float = 1.0):
    """Distillation to a probability target: ``T^2 * KL(target || softmax(s / T))``, mean over examples.

    The KL differs from the soft cross-entropy ``-sum target * log softmax(s/T)`` by the target's
    entropy, a constant, so the gradients are the same; the KL is 0 at a perfect fit, which makes it
    readable. The target is under stop-gradient (detached).

    Returns ``(loss, info)`` with info ``{"loss", "soft_ce", "target_entropy"}``.
    """
    check_logits("student_logits", student_logits)
    T = check_temperature(T)
    if target_probs.shape != student_logits.shape:
        raise ValueError(f"target_probs must match student_logits {tuple(student_logits.shape)}, got "
                         f"{tuple(target_probs.shape)}")
    p = check_probs("target_probs", target_probs.detach())
    kl = _soft_ce_kl(student_logits, p, T)
    loss = (T * T) * kl.mean()
    ent = -(torch.where(p > 0, p * _log(p), torch.zeros_like(p))).sum(-1).mean()
    return loss, {"loss": loss.detach(), "soft_ce": (kl.mean() + ent).detach(), "target_entropy": ent}


def self_distill_loss(student_logits: torch.Tensor, prev_probs: torch.Tensor, labels: torch.Tensor,
                      alpha: float, T: float = 1.0):
    """One born-again / ground-truth-weighted self-distillation step (Borup & Andersen 2021):
    :func:`soft_target_loss` on :func:`self_distill_targets` ``(prev_probs, labels, alpha)``."""
    return soft_target_loss(student_logits, self_distill_targets(prev_probs, labels, alpha), T)


# ============================================================================ anchored recursive distillation
def anchored_target(prev_probs: torch.Tensor, base_probs: torch.Tensor, lam: float) -> torch.Tensor:
    """The anchored meta-teacher of one generation: ``q_target = lam * p_base + (1 - lam) * q_prev``.

    After Flouro & Chadwick (2026), "Recursive meta-distillation: an axiomatic framework for iterative
    knowledge refinement" (arXiv 2601.13100): each generation is distilled from an operator that
    mixes the previous generation with the *base* teacher. The paper is axiomatic and does not fix one
    operator; this is the simplest member we know satisfies the contraction they state, a convex
    mixture in probability space. Because KL is convex in its second argument,

        KL(p_base || lam p_base + (1 - lam) q) <= (1 - lam) KL(p_base || q),

    so with students that fit their targets exactly, ``KL(p_base || q_k) <= (1 - lam)^k KL(p_base || q_0)``:
    geometric convergence to the base teacher (the fixed point), rather than drift. We are not sure
    this is the exact operator of the paper; it is the one implemented and tested here.

    Shapes ``[B, ..., C]`` (probabilities); both are detached; ``lam`` in [0, 1].
    """
    lam = check_weight(lam, "lam")
    check_probs("prev_probs", prev_probs)
    check_probs("base_probs", base_probs)
    if prev_probs.shape != base_probs.shape:
        raise ValueError(f"prev_probs and base_probs must have one shape, got {tuple(prev_probs.shape)} "
                         f"and {tuple(base_probs.shape)}")
    return lam * base_probs.detach() + (1.0 - lam) * prev_probs.detach()


def anchored_recursion(base_probs: torch.Tensor, init_probs: torch.Tensor, lam: float,
                       generations: int) -> list[torch.Tensor]:
    """The idealised recursion (every student fits its anchored target exactly): ``[q_0, ..., q_G]``
    with ``q_0 = init_probs`` and ``q_{k+1} =`` :func:`anchored_target` ``(q_k, base_probs, lam)``."""
    if generations < 0:
        raise ValueError(f"generations must be >= 0, got {generations}")
    qs = [init_probs.detach()]
    for _ in range(generations):
        qs.append(anchored_target(qs[-1], base_probs, lam))
    return qs


def anchored_distill_loss(student_logits: torch.Tensor, prev_probs: torch.Tensor, base_probs: torch.Tensor,
                          lam: float, T: float = 1.0):
    """Distil one generation onto the anchored target: :func:`soft_target_loss` of
    :func:`anchored_target` ``(prev_probs, base_probs, lam)``. Both teachers are under stop-gradient."""
    return soft_target_loss(student_logits, anchored_target(prev_probs, base_probs, lam), T)


@torch.no_grad()
def generation_kls(probs: list[torch.Tensor], base_probs: torch.Tensor) -> dict:
    """KL across generations, averaged over examples.

    Returns ``{"to_base": [KL(p_base || q_k) for k], "step": [KL(q_{k-1} || q_k) for k >= 1],
    "ratio": [to_base[k] / to_base[k-1]]}`` as float lists; under the anchored recursion ``ratio``
    stays at or below ``1 - lam`` (the contraction factor).
    """
    if len(probs) < 1:
        raise ValueError("need at least one generation")
    check_probs("base_probs", base_probs)
    lb = _log(base_probs)

    def kl(p, lp, q):
        return float(_kl_probs(p, lp, _log(q)).mean())

    to_base = [kl(base_probs, lb, q) for q in probs]
    step = [kl(probs[k - 1], _log(probs[k - 1]), probs[k]) for k in range(1, len(probs))]
    ratio = [to_base[k] / to_base[k - 1] if to_base[k - 1] > 0 else float("nan") for k in range(1, len(probs))]
    return {"to_base": to_base, "step": step, "ratio": ratio}
