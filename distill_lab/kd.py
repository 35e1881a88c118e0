"""Knowledge distillation and self-distillation for classifiers: the losses, small algorithms, metrics.

One section per method, each a function that returns ``(loss, info)`` (``info``: detached values):

* :func:`kd_loss` -- Hinton, Vinyals & Dean (2015): temperature-softened KL to a teacher plus CE.
* :func:`self_distill_targets`, :func:`soft_target_loss` -- born-again networks (Furlanello et al.
  2018) and iterative self-distillation with ground-truth weighting (Borup & Andersen 2021).
* :func:`anchored_target`, :func:`anchored_recursion`, :func:`generation_kls` -- recursive
  meta-distillation anchored to the base teacher (Flouro & Chadwick 2026).
* :func:`taid_target`, :func:`taid_loss`, :class:`TAIDSchedule` -- TAID (Shing et al., ICLR 2025).
* :func:`random_teacher_loss`, :class:`DINOHead`, :func:`linear_probe` -- random teachers
  (Sarnthein, Bachmann, Anagnostidis & Hofmann, ICML 2023).
* :func:`rotate_batch`, :func:`sla_loss`, :func:`sla_aggregate`, :func:`sla_sd_loss` --
  self-supervised label augmentation (Lee, Hwang & Shin, ICML 2020).
* :func:`ema_self_distill_loss`, :func:`feature_diversity_loss`, :func:`collapse_metrics` --
  momentum (EMA) self-distillation with an anti-collapse regulariser (Momentum-GS, UniSurg; the
  regulariser is VICReg's variance/covariance terms).
* :func:`paced_weights`, :func:`paced_kd_loss` -- PACED (Xu et al. 2026): weight ``p(1-p)``.
* :func:`consensus_targets`, :func:`consensus_loss` -- multi-teacher consensus weighted by
  agreement (after AVSD, 2026; the weighting here is this lab's, see its docstring).
* Metrics: :func:`accuracy`, :func:`nll`, :func:`reliability_curve`,
  :func:`expected_calibration_error`, :func:`agreement`.

Conventions. Logits have the class dimension last, ``[B, C]`` or ``[B, ..., C]`` (every leading
position is one example); labels have the leading shape ``[B, ...]``. Losses average over examples.
A "teacher" tensor passed to a loss is detached inside it: no gradient ever reaches a teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "kl_per_example", "kd_loss",
    "self_distill_targets", "soft_target_loss", "self_distill_loss",
    "anchored_target", "anchored_recursion", "anchored_distill_loss", "generation_kls",
    "taid_target", "taid_loss", "TAIDSchedule",
    "random_teacher_loss", "DINOHead", "linear_probe",
    "rotate_batch", "sla_joint_labels", "sla_loss", "sla_aggregate", "sla_sd_loss",
    "ema_self_distill_loss", "feature_diversity_loss", "effective_rank", "collapse_metrics",
    "paced_weights", "paced_kd_loss",
    "consensus_targets", "consensus_loss",
    "accuracy", "nll", "reliability_curve", "expected_calibration_error", "agreement",
]


# ============================================================================ shared helpers
def _check_logits(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"{name} must be a tensor [B, ..., C] with classes last, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes in its last dimension, got {tuple(x.shape)}")
    return x


def _check_pair(s: torch.Tensor, t: torch.Tensor, names=("student_logits", "teacher_logits")):
    _check_logits(names[0], s)
    _check_logits(names[1], t)
    if s.shape != t.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got "
                         f"{tuple(s.shape)} and {tuple(t.shape)}")


def _check_temperature(T: float, name: str = "T") -> float:
    if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
        raise ValueError(f"temperature {name} must be a finite number > 0, got {T!r}")
    return float(T)


def _check_weight(a: float, name: str = "alpha") -> float:
    if not (isinstance(a, (int, float)) and 0.0 <= a <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {a!r}")
    return float(a)


def _check_labels(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have the logits' leading shape {tuple(logits.shape[:-1])}, "
                         f"got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[-1] - 1}]")
    return labels.long()


def _check_probs(name: str, p: torch.Tensor, atol: float = 1e-4) -> torch.Tensor:
    _check_logits(name, p)
    if (p < -atol).any() or not torch.allclose(p.sum(-1), torch.ones((), dtype=p.dtype, device=p.device),
                                                atol=atol):
        raise ValueError(f"{name} must be probabilities (non-negative, rows summing to 1); "
                         "pass softmax(logits), not logits")
    return p


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
    _check_pair(student_logits, target_logits, ("student_logits", "target_logits"))
    T = _check_temperature(T)
    log_p = F.log_softmax(target_logits / T, dim=-1)
    log_q = F.log_softmax(student_logits / T, dim=-1)
    return _kl_probs(log_p.exp(), log_p, log_q)


def _soft_ce_kl(student_logits, target_probs, T):
    """Per-example ``KL(target || softmax(s/T))`` for a probability target."""
    log_q = F.log_softmax(student_logits / T, dim=-1)
    return _kl_probs(target_probs, _log(target_probs), log_q)


# ============================================================================ 1. Hinton KD

def _mix_with_labels(kd: torch.Tensor, student_logits: torch.Tensor, labels, alpha: float):
    """``alpha * kd + (1 - alpha) * CE(student, labels)``; returns ``(loss, ce)`` (``ce`` is NaN, and
    only the KD term counts, when no labels are given)."""
    loss = alpha * kd
    ce = torch.full((), float("nan"))
    if labels is not None:
        labels = _check_labels(labels, student_logits)
        ce = F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1))
        if alpha < 1.0:
            loss = loss + (1.0 - alpha) * ce
    return loss, ce

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
    _check_pair(student_logits, teacher_logits)
    T = _check_temperature(T)
    alpha = _check_weight(alpha)
    if labels is None and alpha != 1.0:
        raise ValueError(f"without labels the CE term (weight 1 - alpha = {1 - alpha:g}) cannot be "
                         "computed: pass labels, or alpha=1 for pure distillation")
    t = teacher_logits.detach()  # stop-gradient: the teacher is fixed
    kd = (T * T) * kl_per_example(t, student_logits, T).mean()
    loss, ce = _mix_with_labels(kd, student_logits, labels, alpha)
    info = {"loss": loss.detach(), "kd": kd.detach(), "ce": ce.detach(),
            "agreement": torch.tensor(agreement(student_logits.detach(), t))}
    return loss, info


# ============================================================================ 2. born-again / ground-truth weighting
def self_distill_targets(prev_probs: torch.Tensor, onehot: torch.Tensor, alpha: float) -> torch.Tensor:
    """Targets of one self-distillation generation, mixing ground truth and the previous model::

        target = alpha * onehot(y) + (1 - alpha) * p_prev

    Born-again networks (Furlanello et al. 2018, "Born-again neural networks") train generation
    k+1 on generation k's outputs; Borup & Andersen (NeurIPS 2021, "Even your teacher needs
    guidance", their weighted-target objective) add the ground truth with a weight and
    show it dampens the regularisation that pure self-distillation amplifies (see
    :mod:`distill_lab.kernel_sd` for the closed form). Here ``alpha`` is the weight on the ground
    truth: ``alpha = 1`` is supervised training, ``alpha = 0`` pure self-distillation (Mobahi et
    al. 2020's setting). (Check the symbol against the paper before quoting values of it: this lab
    fixes the convention above.)

    Parameters
    ----------
    prev_probs : ``[B, ..., C]`` probabilities of the previous generation (detached here).
    onehot : ``[B, ..., C]`` one-hot (or soft) labels, or ``[B, ...]`` integer labels.
    alpha : in [0, 1].
    """
    alpha = _check_weight(alpha)
    _check_probs("prev_probs", prev_probs)
    if onehot.shape == prev_probs.shape[:-1]:
        onehot = F.one_hot(_check_labels(onehot, prev_probs), prev_probs.shape[-1]).to(prev_probs.dtype)
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
    _check_logits("student_logits", student_logits)
    T = _check_temperature(T)
    if target_probs.shape != student_logits.shape:
        raise ValueError(f"target_probs must match student_logits {tuple(student_logits.shape)}, got "
                         f"{tuple(target_probs.shape)}")
    p = _check_probs("target_probs", target_probs.detach())
    kl = _soft_ce_kl(student_logits, p, T)
    loss = (T * T) * kl.mean()
    ent = -(torch.where(p > 0, p * _log(p), torch.zeros_like(p))).sum(-1).mean()
    return loss, {"loss": loss.detach(), "soft_ce": (kl.mean() + ent).detach(), "target_entropy": ent}


def self_distill_loss(student_logits: torch.Tensor, prev_probs: torch.Tensor, labels: torch.Tensor,
                      alpha: float, T: float = 1.0):
    """One born-again / ground-truth-weighted self-distillation step (Borup & Andersen 2021):
    :func:`soft_target_loss` on :func:`self_distill_targets` ``(prev_probs, labels, alpha)``."""
    return soft_target_loss(student_logits, self_distill_targets(prev_probs, labels, alpha), T)


# ============================================================================ 3. anchored recursive distillation
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
    lam = _check_weight(lam, "lam")
    _check_probs("prev_probs", prev_probs)
    _check_probs("base_probs", base_probs)
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
    _check_probs("base_probs", base_probs)
    lb = _log(base_probs)

    def kl(p, lp, q):
        return float(_kl_probs(p, lp, _log(q)).mean())

    to_base = [kl(base_probs, lb, q) for q in probs]
    step = [kl(probs[k - 1], _log(probs[k - 1]), probs[k]) for k in range(1, len(probs))]
    ratio = [to_base[k] / to_base[k - 1] if to_base[k - 1] > 0 else float("nan") for k in range(1, len(probs))]
    return {"to_base": to_base, "step": step, "ratio": ratio}


# ============================================================================ 4. TAID
def taid_target(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """TAID's intermediate distribution, Shing et al. (ICLR 2025), "TAID: Temporally adaptive
    interpolated distillation for efficient knowledge transfer in language models" (the
    time-dependent intermediate distribution)::

        p_t = softmax( (1 - t) * stopgrad(s) + t * teacher_logits )

    The interpolation is in *logit* space, with the student's logits detached (as in the authors'
    code): at ``t = 0`` the target is the student's own (detached) softmax, at ``t = 1`` the
    teacher's. Shapes ``[B, ..., C]``; returns probabilities without gradient.
    """
    _check_pair(student_logits, teacher_logits)
    if not (isinstance(t, (int, float)) and 0.0 <= t <= 1.0):
        raise ValueError(f"the interpolation parameter t must lie in [0, 1], got {t!r}")
    mix = (1.0 - t) * student_logits.detach() + t * teacher_logits.detach()
    return F.softmax(mix, dim=-1)


def taid_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float):
    """TAID objective, Shing et al. (2025): ``KL( p_t || softmax(s) )`` with ``p_t`` from
    :func:`taid_target`, mean over examples (the paper's forward-KL form; the authors' code minimises
    the soft cross-entropy, which differs by the entropy of ``p_t``, a constant).

    The teacher provides logits; the target ``p_t`` is entirely under stop-gradient (teacher *and* the
    detached student). Update ``t`` after each step with :class:`TAIDSchedule`.

    Returns ``(loss, info)`` with info ``{"loss", "t", "kl_to_teacher"}``.
    """
    p_t = taid_target(student_logits, teacher_logits, t)
    loss = _soft_ce_kl(student_logits, p_t, 1.0).mean()
    with torch.no_grad():
        kl_t = kl_per_example(teacher_logits.detach(), student_logits.detach()).mean()
    return loss, {"loss": loss.detach(), "t": torch.tensor(float(t)), "kl_to_teacher": kl_t}


class TAIDSchedule:
    """TAID's adaptive update of the interpolation parameter t, Shing et al. (2025), checked
    against the authors' code (momentum on the relative change of the objective)::

        delta_n = (J_{n-1} - J_n) / (J_{n-1} + eps)               relative improvement of the loss
        m_n     = beta * m_{n-1} + (1 - beta) * delta_n           momentum
        t_{n+1} = min(t_end, max(t_linear(n), t_n + alpha * sigmoid(m_n) * (1 - t_n)))

    with ``t_linear(n) = t_start + (t_end - t_start) * n / N`` a floor that guarantees t reaches
    ``t_end`` by the last step: t moves faster while the student improves quickly and never falls
    behind the linear schedule. Defaults are the authors' (t_start 0.4, alpha 5e-4, beta 0.99); with
    few steps (CIFAR-size runs) a larger ``alpha`` makes the adaptive part visible.

    >>> sched = TAIDSchedule(total_steps=1000)
    >>> loss, info = taid_loss(s, t_logits, sched.t)          # doctest: +SKIP
    >>> sched.step(loss.item())                               # doctest: +SKIP
    """

    def __init__(self, total_steps: int, t_start: float = 0.4, t_end: float = 1.0, alpha: float = 5e-4,
                 beta: float = 0.99, adaptive: bool = True, eps: float = 1e-15):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not (0.0 <= t_start < t_end <= 1.0):
            raise ValueError(f"need 0 <= t_start < t_end <= 1, got t_start={t_start}, t_end={t_end}")
        _check_weight(alpha, "alpha")
        _check_weight(beta, "beta")
        self.total_steps, self.t_start, self.t_end = total_steps, float(t_start), float(t_end)
        self.alpha, self.beta, self.adaptive, self.eps = float(alpha), float(beta), adaptive, eps
        self.t = float(t_start)
        self.momentum = 0.0
        self.prev_loss: float | None = None
        self.n = 0

    def t_linear(self, n: int) -> float:
        return self.t_start + (self.t_end - self.t_start) * min(n, self.total_steps) / self.total_steps

    def step(self, loss: float) -> float:
        """Record this step's objective ``J_n`` and return the new ``t``."""
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"TAIDSchedule.step got a non-finite loss {loss}")
        self.n += 1
        floor = self.t_linear(self.n)
        if self.prev_loss is None or not self.adaptive:
            self.t = min(self.t_end, max(floor, self.t))
        else:
            delta = (self.prev_loss - loss) / (self.prev_loss + self.eps)
            self.momentum = self.beta * self.momentum + (1.0 - self.beta) * delta
            step = self.alpha * (1.0 / (1.0 + math.exp(-self.momentum))) * (1.0 - self.t)
            self.t = min(self.t_end, max(floor, self.t + step))
        self.prev_loss = loss
        return self.t


# ============================================================================ 5. random teachers
def random_teacher_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        student_temp: float = 0.1, teacher_temp: float = 0.04, cross_view: bool = True):
    """Distillation into a frozen *random* teacher, Sarnthein, Bachmann, Anagnostidis & Hofmann
    (ICML 2023), "Random teachers are good teachers", their objective (1).

    The teacher is a network at random initialisation, never trained and never updated (no EMA); the
    student (same architecture, its own initialisation) minimises the cross-entropy between the
    teacher's and its own softmax outputs of a DINO head (Caron et al. 2021: MLP, L2-normalised
    bottleneck, weight-normalised last layer, see :class:`DINOHead`)::

        L = mean over view pairs (i, j) of  H( softmax(t_i / tau_t), softmax(s_j / tau_s) )

    The paper's point is that this works *without* augmentation (one view, ``i = j``); with several
    augmented views, ``cross_view=True`` pairs each teacher view with the *other* student views
    (DINO's multi-crop pairing) and ``cross_view=False`` pairs each view with itself. Temperatures
    default to DINO's (teacher 0.04, student 0.1); we did not confirm the paper's exact values. The
    teacher's outputs are under stop-gradient (detached).

    Parameters
    ----------
    student_logits, teacher_logits : ``[B, K]`` (one view) or ``[V, B, K]`` (V views of a batch).

    Returns
    -------
    ``(loss, info)`` with info ``{"loss", "kl", "teacher_entropy", "student_entropy"}``; the KL is the
    CE minus the teacher entropy (same gradient).
    """
    _check_pair(student_logits, teacher_logits)
    ts = _check_temperature(student_temp, "student_temp")
    tt = _check_temperature(teacher_temp, "teacher_temp")
    s, t = student_logits, teacher_logits.detach()
    if s.dim() == 2:
        s, t = s.unsqueeze(0), t.unsqueeze(0)
    if s.dim() != 3:
        raise ValueError(f"logits must be [B, K] or [V, B, K], got {tuple(student_logits.shape)}")
    log_q = F.log_softmax(s / ts, dim=-1)
    log_p = F.log_softmax(t / tt, dim=-1)
    p = log_p.exp()
    V = s.shape[0]
    ces, kls = [], []
    for i in range(V):          # teacher view
        for j in range(V):      # student view
            if V > 1 and (i == j) == cross_view:
                continue  # cross_view: pairs of different views only; else each view with itself
            ce = -(p[i] * log_q[j]).sum(-1).mean()
            ces.append(ce)
            kls.append(_kl_probs(p[i], log_p[i], log_q[j]).mean())
    loss = torch.stack(ces).mean()
    h_t = -(p * log_p).sum(-1).mean()
    h_s = -(log_q.exp() * log_q).sum(-1).mean()
    return loss, {"loss": loss.detach(), "kl": torch.stack(kls).mean().detach(),
                  "teacher_entropy": h_t.detach(), "student_entropy": h_s.detach()}


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021), as used by Sarnthein et al. (2023):
    an MLP, an L2-normalised bottleneck, and a weight-normalised linear layer to ``out_dim`` logits.

    ``[B, in_dim] -> [B, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden: int = 512, bottleneck: int = 128,
                 layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        mods = []
        for k in range(len(dims) - 1):
            mods.append(nn.Linear(dims[k], dims[k + 1]))
            if k < len(dims) - 2:
                mods.append(nn.GELU())
        self.mlp = nn.Sequential(*mods)
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


@torch.no_grad()
def linear_probe(features_train: torch.Tensor, y_train: torch.Tensor, features_test: torch.Tensor,
                 y_test: torch.Tensor, l2: float = 1e-3, num_classes: int | None = None) -> float:
    """Test accuracy of a linear classifier on frozen features: closed-form ridge regression onto
    one-hot targets (the "linear probe" of representation learning, e.g. Sarnthein et al. 2023's
    probing accuracy, here in its deterministic least-squares form instead of logistic regression).

    Features are standardised with the training mean and std; the ridge ``l2`` is relative to the
    number of training examples; solved in float64, so the result is deterministic.

    Parameters
    ----------
    features_train : ``[N, ...]`` (flattened to ``[N, D]``); y_train : ``[N]`` integer labels.
    features_test : ``[M, ...]``; y_test : ``[M]``.

    Returns
    -------
    accuracy on the test set, a float in [0, 1].
    """
    xtr = features_train.reshape(features_train.shape[0], -1).detach().double().cpu()
    xte = features_test.reshape(features_test.shape[0], -1).detach().double().cpu()
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train and test features differ in dimension: {xtr.shape[1]} vs {xte.shape[1]}")
    if y_train.shape != (xtr.shape[0],) or y_test.shape != (xte.shape[0],):
        raise ValueError("y_train / y_test must be [N] / [M] integer labels matching the features")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    if not (torch.isfinite(xtr).all() and torch.isfinite(xte).all()):
        raise ValueError("features contain NaN or inf")
    C = num_classes or int(max(y_train.max(), y_test.max())) + 1
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-8)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ones = torch.ones(xtr.shape[0], 1, dtype=xtr.dtype)
    X = torch.cat([xtr, ones], 1)
    Y = F.one_hot(y_train.long().cpu(), C).double()
    reg = l2 * X.shape[0] * torch.eye(X.shape[1], dtype=X.dtype)
    reg[-1, -1] = 0.0  # do not shrink the intercept
    W = torch.linalg.solve(X.T @ X + reg + 1e-10 * torch.eye(X.shape[1], dtype=X.dtype), X.T @ Y)
    pred = (torch.cat([xte, torch.ones(xte.shape[0], 1, dtype=xte.dtype)], 1) @ W).argmax(1)
    return float((pred == y_test.long().cpu()).double().mean())


# ============================================================================ 6. self-supervised label augmentation
def rotate_batch(x: torch.Tensor, n_rot: int = 4):
    """The 4 rotations of SLA, Lee, Hwang & Shin (ICML 2020), "Self-supervised label augmentation via
    input transformations": ``t_j`` = rotation by ``90 j`` degrees, j = 0..3.

    ``x [B, C, H, W]`` (square images) -> ``(x_rot [n_rot * B, C, H, W], rot [n_rot * B])``, ordered
    rotation-major: rows ``j * B .. (j + 1) * B - 1`` hold ``rot90(x, j)`` (counter-clockwise in the
    ``(H, W)`` plane, :func:`torch.rot90`) and ``rot == j``.
    """
    if x.dim() < 3 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate_batch needs square images [B, ..., H, W] with H == W, got {tuple(x.shape)}")
    if n_rot not in (1, 2, 4):
        raise ValueError(f"n_rot must be 1, 2 or 4 (rotations by multiples of {360 // 4} degrees), got {n_rot}")
    step = 4 // n_rot
    xs = torch.cat([torch.rot90(x, j * step, dims=(-2, -1)) for j in range(n_rot)])
    rot = torch.arange(n_rot, device=x.device).repeat_interleave(x.shape[0])
    return xs, rot


def sla_joint_labels(labels: torch.Tensor, n_rot: int = 4) -> torch.Tensor:
    """Joint labels ``(y, j) -> y * n_rot + j`` for the rotation-major batch of :func:`rotate_batch`:
    ``[B] -> [n_rot * B]``. A joint head has ``C * n_rot`` outputs, viewed as ``[C, n_rot]``."""
    if labels.dim() != 1:
        raise ValueError(f"labels must be [B], got {tuple(labels.shape)}")
    rot = torch.arange(n_rot, device=labels.device).repeat_interleave(labels.shape[0])
    return labels.long().repeat(n_rot) * n_rot + rot


def _check_joint(joint_logits: torch.Tensor, n_rot: int):
    if joint_logits.dim() != 2 or joint_logits.shape[0] % n_rot or joint_logits.shape[1] % n_rot:
        raise ValueError(f"joint_logits must be [n_rot * B, C * n_rot] for the rotation-major batch of "
                         f"rotate_batch (n_rot={n_rot}), got {tuple(joint_logits.shape)}")
    return joint_logits.shape[0] // n_rot, joint_logits.shape[1] // n_rot


def sla_loss(joint_logits: torch.Tensor, labels: torch.Tensor, n_rot: int = 4):
    """SLA's joint cross-entropy, Lee, Hwang & Shin (2020), the SLA training objective:
    ``L = mean_j CE( joint_logits(t_j(x)), (y, j) )`` over the ``C * n_rot`` joint classes.

    joint_logits : ``[n_rot * B, C * n_rot]`` on ``rotate_batch(x)``; labels : ``[B]``.
    Returns ``(loss, info)`` with ``{"loss", "joint_acc", "agg_acc"}``.
    """
    B, C = _check_joint(joint_logits, n_rot)
    if labels.shape != (B,):
        raise ValueError(f"labels must be [B]=[{B}], got {tuple(labels.shape)}")
    joint = sla_joint_labels(labels, n_rot)
    loss = F.cross_entropy(joint_logits, joint)
    with torch.no_grad():
        info = {"loss": loss.detach(), "joint_acc": (joint_logits.argmax(1) == joint).float().mean(),
                "agg_acc": torch.tensor(accuracy(sla_aggregate(joint_logits, n_rot), labels))}
    return loss, info


def sla_aggregate(joint_logits: torch.Tensor, n_rot: int = 4) -> torch.Tensor:
    """SLA's aggregated prediction, Lee, Hwang & Shin (2020), "aggregated inference": average, over the
    rotations j, of the joint logits of class i *paired with the rotation actually applied*::

        z_agg(x)_i = (1 / M) sum_j  z(t_j(x))_{(i, j)}       P_agg = softmax(z_agg)

    ``[n_rot * B, C * n_rot]`` (rotation-major, joint index ``i * n_rot + j``) -> ``[B, C]`` logits.
    """
    B, C = _check_joint(joint_logits, n_rot)
    z = joint_logits.reshape(n_rot, B, C, n_rot)          # [rotation applied, B, class, rotation label]
    return torch.diagonal(z, dim1=0, dim2=3).mean(-1)     # diagonal -> [B, C, n_rot]


def sla_sd_loss(joint_logits: torch.Tensor, single_logits: torch.Tensor, labels: torch.Tensor,
                n_rot: int = 4, T: float = 1.0, beta: float = 1.0):
    """SLA with self-distillation (SLA+SD), Lee, Hwang & Shin (2020), their self-distillation objective::

        L = L_SLA  +  T^2 KL( softmax(z_agg / T) || softmax(u(x) / T) )  +  beta * CE(u(x), y)

    The aggregated joint prediction (the teacher, :func:`sla_aggregate`) is distilled into an ordinary
    ``C``-way head ``u`` on the unrotated input, so at test time one forward pass suffices. The
    aggregated target is under stop-gradient here (the joint head learns from ``L_SLA`` only); we are
    not certain the paper detaches it.

    joint_logits : ``[n_rot * B, C * n_rot]``; single_logits : ``[B, C]`` (the C-way head on x);
    labels : ``[B]``. Returns ``(loss, info)`` with ``{"loss", "sla", "sd", "ce", "single_acc"}``.
    """
    T = _check_temperature(T)
    B, C = _check_joint(joint_logits, n_rot)
    if single_logits.shape != (B, C):
        raise ValueError(f"single_logits must be [B, C]=[{B}, {C}], got {tuple(single_logits.shape)}")
    sla, _ = sla_loss(joint_logits, labels, n_rot)
    agg = sla_aggregate(joint_logits, n_rot).detach()
    sd = (T * T) * kl_per_example(agg, single_logits, T).mean()
    ce = F.cross_entropy(single_logits, labels.long())
    loss = sla + sd + beta * ce
    return loss, {"loss": loss.detach(), "sla": sla.detach(), "sd": sd.detach(), "ce": ce.detach(),
                  "single_acc": torch.tensor(accuracy(single_logits.detach(), labels))}


# ============================================================================ 7. EMA self-distillation + diversity
def _flat_features(z: torch.Tensor) -> torch.Tensor:
    if z.dim() < 2 or z.shape[0] < 2:
        raise ValueError(f"features must be [B, ...] with B >= 2, got {tuple(z.shape)}")
    return z.reshape(z.shape[0], -1)


def feature_diversity_loss(features: torch.Tensor, gamma: float = 1.0, cov_weight: float = 1.0,
                           eps: float = 1e-4):
    """Anti-collapse regulariser: VICReg's variance and covariance terms, Bardes, Ponce & LeCun (ICLR
    2022), "VICReg", the variance and covariance regularisation terms::

        v(Z) = (1/D) sum_d relu(gamma - sqrt(Var(z_d) + eps))        every dimension keeps spread
        c(Z) = (1/D) sum_{d != d'} Cov(Z)_{d d'}^2                    dimensions are decorrelated
        L = v(Z) + cov_weight * c(Z)

    This is the kind of feature-diversity / variance regularisation that UniSurg (Wu et al. 2026)
    adds to its EMA self-distillation "to prevent representation collapse"; we did not find its exact
    form, so the VICReg terms stand in for it. High (about ``gamma``) on collapsed features, 0 on
    whitened ones (unit variance, zero covariance).

    features : ``[B, ...]`` flattened to ``[B, D]``. Returns ``(loss, info)`` with
    ``{"loss", "variance", "covariance", "mean_std"}``.
    """
    z = _flat_features(features)
    z = z - z.mean(0)
    std = torch.sqrt(z.var(0) + eps)
    var_term = F.relu(gamma - std).mean()
    B, D = z.shape
    cov = (z.T @ z) / (B - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    cov_term = off.pow(2).sum() / D
    loss = var_term + cov_weight * cov_term
    return loss, {"loss": loss.detach(), "variance": var_term.detach(), "covariance": cov_term.detach(),
                  "mean_std": std.detach().mean()}


def ema_self_distill_loss(student_out: torch.Tensor, ema_out: torch.Tensor,
                          features: torch.Tensor | None = None, diversity_weight: float = 0.1, **diversity_kw):
    """Momentum (EMA) self-distillation with a diversity term against collapse::

        L = mean || student_out - stopgrad(ema_out) ||^2  +  diversity_weight * feature_diversity_loss(features)

    The teacher is an exponential moving average of the student (update it after each optimiser step
    with :func:`distill_lab.models.ema_update`), as in Momentum-GS (Fan et al., ICCV 2025: a
    momentum-updated teacher decoder gives a stable target, and a consistency loss aligns the online
    decoder with it) and UniSurg's EMA self-distillation. Its output is under stop-gradient. A target
    that is a moving average of the student admits the trivial constant solution; the diversity term
    (:func:`feature_diversity_loss`, on ``features`` or else on ``student_out``) rules it out.

    student_out, ema_out : ``[B, ...]`` of one shape. Returns ``(loss, info)`` with
    ``{"loss", "consistency", "diversity", "mean_std", "effective_rank"}``.
    """
    if student_out.shape != ema_out.shape:
        raise ValueError(f"student_out and ema_out must have one shape, got {tuple(student_out.shape)} and "
                         f"{tuple(ema_out.shape)}")
    if diversity_weight < 0:
        raise ValueError(f"diversity_weight must be >= 0, got {diversity_weight}")
    consistency = (student_out - ema_out.detach()).pow(2).mean()
    feats = student_out if features is None else features
    div, dinfo = feature_diversity_loss(feats, **diversity_kw)
    loss = consistency + diversity_weight * div
    return loss, {"loss": loss.detach(), "consistency": consistency.detach(), "diversity": div.detach(),
                  "mean_std": dinfo["mean_std"], "effective_rank": torch.tensor(effective_rank(feats.detach()))}


@torch.no_grad()
def effective_rank(features: torch.Tensor) -> float:
    """Effective rank of the centred features, Roy & Vetterli (2007): ``exp(H(sigma / sum sigma))`` with
    sigma the singular values. ``D`` for isotropic features, 1 for features on a line, 0 for constant."""
    z = _flat_features(features).double()
    s = torch.linalg.svdvals(z - z.mean(0))
    if s.sum() <= 1e-12 * max(1.0, float(z.abs().max())):
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum()))


@torch.no_grad()
def collapse_metrics(features: torch.Tensor) -> dict:
    """``{"mean_std", "min_std", "effective_rank"}`` of ``[B, ...]`` features: how collapsed they are."""
    z = _flat_features(features).float()
    std = z.std(0)
    return {"mean_std": float(std.mean()), "min_std": float(std.min()), "effective_rank": effective_rank(z)}


# ============================================================================ 8. PACED
def paced_weights(student_logits: torch.Tensor, labels: torch.Tensor, a: float = 1.0, b: float = 1.0) -> torch.Tensor:
    """PACED's competence weights, Xu, Sang, Zhou, He & Wang (2026), "PACED: distillation at the frontier
    of student competence" (arXiv 2603.11178), the weight ``w(p) = p^a (1 - p)^b`` (``a = b = 1``:
    ``p (1 - p)``, the Bernoulli variance).

    In the paper ``p`` is the student's empirical pass rate on a problem (from rollouts); for a
    classifier the analogue used here is the student's probability of the correct class,
    ``p = softmax(s)_y`` at temperature 1. The weights are under stop-gradient (computed from detached
    logits): they select examples, they are not optimised. Largest at ``p = a / (a + b)`` (0.5 by
    default), near 0 for mastered (p -> 1) and hopeless (p -> 0) examples.

    student_logits : ``[B, ..., C]``; labels : ``[B, ...]``. Returns weights ``[B, ...]``.
    """
    _check_logits("student_logits", student_logits)
    labels = _check_labels(labels, student_logits)
    if a < 0 or b < 0:
        raise ValueError(f"the Beta-kernel exponents must be >= 0, got a={a}, b={b}")
    p = F.softmax(student_logits.detach().float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return p.pow(a) * (1.0 - p).pow(b)


def paced_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  T: float = 1.0, a: float = 1.0, b: float = 1.0, normalize: bool = True):
    """Competence-weighted KD (PACED, Xu et al. 2026, the weighted distillation objective)::

        L = sum_i w_i T^2 KL_i / sum_i w_i      (normalize=True; else mean_i w_i T^2 KL_i)

    with ``w_i`` from :func:`paced_weights` (stop-gradient) and ``KL_i = KL(softmax(t_i/T) ||
    softmax(s_i/T))`` (forward KL; the teacher is detached). Returns ``(loss, info)`` with
    ``{"loss", "kd_unweighted", "mean_weight", "mean_p"}``.
    """
    _check_pair(student_logits, teacher_logits)
    T = _check_temperature(T)
    w = paced_weights(student_logits, labels, a, b).to(student_logits.dtype)
    kl = (T * T) * kl_per_example(teacher_logits.detach(), student_logits, T)
    loss = (w * kl).sum() / w.sum().clamp_min(1e-12) if normalize else (w * kl).mean()
    with torch.no_grad():
        p = F.softmax(student_logits.detach(), -1).gather(-1, labels.long().unsqueeze(-1)).mean()
    return loss, {"loss": loss.detach(), "kd_unweighted": kl.detach().mean(), "mean_weight": w.mean(),
                  "mean_p": p}


# ============================================================================ 9. multi-teacher consensus
def consensus_targets(teacher_logits_list, T: float = 1.0):
    """Consensus of several teachers and how much they agree, per example.

    Inspired by AVSD (Adaptive-View Self-Distillation, arXiv 2605.20643, 2026), which separates the
    signal shared by several privileged teacher views (the consensus, a reliable direction) from each
    view's residual. AVSD works on token-level signals of language models; this classifier version is
    the lab's own, simpler rule, not AVSD's formula:

        p_bar   = (1/M) sum_m softmax(t_m / T)                        consensus (mixture) target
        JS      = H(p_bar) - (1/M) sum_m H(softmax(t_m / T))          generalised Jensen-Shannon
        w       = 1 - JS / log(min(M, C))                             agreement in [0, 1]

    ``w = 1`` when all teachers give the same distribution, ``w = 0`` when they put all mass on
    different classes. Teachers are detached.

    teacher_logits_list : a list of M >= 2 tensors ``[B, ..., C]`` (or one tensor ``[M, B, ..., C]``).
    Returns ``(p_bar [B, ..., C], w [B, ...])``.
    """
    T = _check_temperature(T)
    if isinstance(teacher_logits_list, torch.Tensor):
        ts = list(teacher_logits_list.unbind(0))
    else:
        ts = list(teacher_logits_list)
    if len(ts) < 2:
        raise ValueError(f"consensus needs at least 2 teachers, got {len(ts)}")
    for k, t in enumerate(ts):
        _check_pair(ts[0], t, ("teacher_logits_list[0]", f"teacher_logits_list[{k}]"))
    P = torch.stack([F.softmax(t.detach() / T, dim=-1) for t in ts])  # [M, B, ..., C]
    p_bar = P.mean(0)

    def H(p):
        return -(torch.where(p > 0, p * _log(p), torch.zeros_like(p))).sum(-1)

    js = (H(p_bar) - H(P).mean(0)).clamp_min(0.0)
    w = (1.0 - js / math.log(min(len(ts), P.shape[-1]))).clamp(0.0, 1.0)
    return p_bar, w


def consensus_loss(student_logits: torch.Tensor, teacher_logits_list, T: float = 4.0, alpha: float = 1.0,
                   labels: torch.Tensor | None = None):
    """Agreement-weighted multi-teacher distillation::

        L = alpha * sum_i w_i T^2 KL(p_bar_i || softmax(s_i / T)) / sum_i w_i  +  (1 - alpha) CE(s, y)

    with ``(p_bar, w)`` from :func:`consensus_targets` (under stop-gradient): examples where the
    teachers disagree pull the student less. Returns ``(loss, info)`` with
    ``{"loss", "kd", "ce", "mean_agreement"}``.
    """
    alpha = _check_weight(alpha)
    T = _check_temperature(T)
    _check_logits("student_logits", student_logits)
    p_bar, w = consensus_targets(teacher_logits_list, T)
    if p_bar.shape != student_logits.shape:
        raise ValueError(f"teachers {tuple(p_bar.shape)} and student {tuple(student_logits.shape)} differ in shape")
    if labels is None and alpha != 1.0:
        raise ValueError("without labels pass alpha=1 (the CE term needs labels)")
    w = w.to(student_logits.dtype)
    kd = (T * T) * (w * _soft_ce_kl(student_logits, p_bar, T)).sum() / w.sum().clamp_min(1e-12)
    loss, ce = _mix_with_labels(kd, student_logits, labels, alpha)
    return loss, {"loss": loss.detach(), "kd": kd.detach(), "ce": ce.detach(), "mean_agreement": w.mean()}


# ============================================================================ metrics
@torch.no_grad()
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``[B, ..., C]`` logits (or probabilities) against ``[B, ...]`` labels."""
    _check_logits("logits", logits)
    labels = _check_labels(labels, logits)
    return float((logits.argmax(-1) == labels).double().mean())


@torch.no_grad()
def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood (cross-entropy, nats) of ``[B, ..., C]`` logits."""
    _check_logits("logits", logits)
    labels = _check_labels(labels, logits)
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), labels.reshape(-1)))


@torch.no_grad()
def reliability_curve(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """Reliability diagram data (Guo, Pleiss, Sun & Weinberger, ICML 2017, "On calibration of modern
    neural networks", Sec. 2): examples binned by top-label confidence in ``n_bins`` equal-width bins
    ``(e_b, e_{b+1}]`` (confidence 0 goes to the first bin).

    probs : ``[B, ..., C]`` probabilities (softmax outputs); labels : ``[B, ...]``.
    Returns ``{"edges" [n_bins + 1], "confidence" [n_bins], "accuracy" [n_bins], "counts" [n_bins]}``
    as float64 tensors; empty bins have ``nan`` confidence and accuracy.
    """
    _check_probs("probs", probs)
    labels = _check_labels(labels, probs)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, pred = probs.reshape(-1, probs.shape[-1]).double().max(-1)
    correct = (pred == labels.reshape(-1)).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, edges[1:-1].to(conf.device), right=False).cpu()
    conf, correct = conf.cpu(), correct.cpu()
    counts = torch.bincount(idx, minlength=n_bins).double()
    s_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    s_acc = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    nan = torch.full_like(counts, float("nan"))
    return {"edges": edges, "counts": counts,
            "confidence": torch.where(counts > 0, s_conf / counts.clamp_min(1), nan),
            "accuracy": torch.where(counts > 0, s_acc / counts.clamp_min(1), nan)}


@torch.no_grad()
def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Naeini, Cooper & Hauskrecht 2015; Guo et al. 2017, Sec. 2)::

        ECE = sum_b (n_b / n) | acc(b) - conf(b) |

    over the equal-width confidence bins of :func:`reliability_curve`. 0 for a calibrated model (up to
    sampling noise); e.g. every prediction at confidence 0.9 with 60% of them right gives 0.3.
    """
    rc = reliability_curve(probs, labels, n_bins)
    n = rc["counts"].sum()
    keep = rc["counts"] > 0
    gap = (rc["accuracy"][keep] - rc["confidence"][keep]).abs()
    return float((rc["counts"][keep] / n * gap).sum())


@torch.no_grad()
def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Top-1 agreement: the fraction of examples where student and teacher predict the same class
    (Stanton et al. 2021, "Does knowledge distillation really work?", measure fidelity this way)."""
    _check_pair(student_logits, teacher_logits)
    return float((student_logits.argmax(-1) == teacher_logits.argmax(-1)).double().mean())
