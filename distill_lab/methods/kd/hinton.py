"""Hinton, Vinyals & Dean (2015), "Distilling the knowledge in a neural network": the student matches
the teacher's temperature-softened distribution, with a cross-entropy on the labels beside it.

* :func:`kd_loss` -- ``alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE``.

The conventions (classes last, mean over examples, teachers detached) are :mod:`.common`'s.
"""

from __future__ import annotations

import torch

from ...core.checks import check_pair, check_temperature, check_weight
from ...metrics.classification import agreement
from .common import _mix_with_labels, kl_per_example


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0,
            alpha: float = 0.9, labels: torch.Tensor | None = None):
    """Hinton knowledge distillation, Hinton, Vinyals & Dean (2015), Sec. 2 (soft targets at
    temperature T, the ``T^2`` rescaling, and a weighted average with the hard-label objective)::

        L = alpha * T^2 * KL( softmax(t / T) || softmax(s / T) )  +  (1 - alpha) * CE(s, y)

    **Which weight is which**: ``alpha`` multiplies the *distillation* (KL) term, ``1 - alpha`` the
    cross-entropy to the labels (at temperature 1). Public code bases disagree on this (some put
    ``alpha`` on the CE term); here ``alpha = 1`` is pure distillation, ``alpha = 0`` plain supervised
    training. **Why T^2**: the gradient of the softened KL with respect to the student logits is
    ``(1/T) (softmax(s/T) - softmax(t/T))``, and for large T its size falls like ``1/T^2`` (Hinton et
    al., end of Sec. 2); multiplying by ``T^2`` keeps the two terms' relative weight the same when T
    changes. Per example, ``d L / d s = alpha * T * (softmax(s/T) - softmax(t/T))`` (plus the CE part),
    and the loss is the mean over examples.

    Parameters
    ----------
    student_logits : ``[B, ..., C]``, carries gradient.
    teacher_logits : ``[B, ..., C]``; the teacher provides only these logits. Under stop-gradient
        (detached here).
    T : temperature > 0. alpha : in [0, 1].
    labels : ``[B, ...]`` integer labels; required unless ``alpha == 1``.

    Returns
    -------
    ``(loss, info)`` with info ``{"loss", "kd", "ce", "agreement"}`` (``kd`` is ``T^2 KL``; ``ce`` is
    ``nan`` without labels).
    """
    check_pair(student_logits, teacher_logits)
    T = check_temperature(T)
    alpha = check_weight(alpha)
    if labels is None and alpha != 1.0:
        raise ValueError(f"without labels the CE term (weight 1 - alpha = {1 - alpha:g}) cannot be "
                         "computed: pass labels, or alpha=1 for pure distillation")
    t = teacher_logits.detach()  # stop-gradient: the teacher is fixed
    kd = (T * T) * kl_per_example(t, student_logits, T).mean()
    loss, ce = _mix_with_labels(kd, student_logits, labels, alpha)
    info = {"loss": loss.detach(), "kd": kd.detach(), "ce": ce.detach(),
            "agreement": torch.tensor(agreement(student_logits.detach(), t))}
    return loss, info
