"""Adaptive distillation: the target or the weight of each example moves with the student.

* :func:`taid_target`, :func:`taid_loss`, :class:`TAIDSchedule` -- TAID (Shing et al., ICLR 2025):
  the target interpolates from the student towards the teacher.
* :func:`beta_kernel`, :func:`paced_weights`, :func:`paced_kd_loss` -- PACED (Xu et al. 2026): each example weighted by
  ``p (1 - p)`` of the student's success.
* :func:`consensus_targets`, :func:`consensus_loss` -- an agreement-weighted consensus of several
  teachers: this lab's own rule, no paper's method (AVSD's consensus of privileged views is
  :func:`distill_lab.methods.kd.privileged.avsd_loss`).

The conventions (classes last, mean over examples, teachers detached) are :mod:`.common`'s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...core.checks import check_labels, check_logits, check_pair, check_temperature, check_weight
from .common import _log, _mix_with_labels, _soft_ce_kl, kl_per_example


# ============================================================================ TAID
def taid_target(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """TAID's intermediate distribution, Shing et al. (ICLR 2025), "TAID: Temporally adaptive
    interpolated distillation for efficient knowledge transfer in language models" (the
    time-dependent intermediate distribution)::

        p_t = softmax( (1 - t) * stopgrad(s) + t * teacher_logits )

    The interpolation is in *logit* space, with the student's logits detached (as in the authors'
    code): at ``t = 0`` the target is the student's own (detached) softmax, at ``t = 1`` the
    teacher's. Shapes ``[B, ..., C]``; returns probabilities without gradient.
    """
    check_pair(student_logits, teacher_logits)
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
        check_weight(alpha, "alpha")
        check_weight(beta, "beta")
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


# ============================================================================ PACED
def beta_kernel(p: torch.Tensor, a: float = 1.0, b: float = 1.0) -> torch.Tensor:
    """PACED's weight of a success probability or pass rate ``p`` in [0, 1], Xu et al. (2026): the Beta
    kernel ``w(p) = p^a (1 - p)^b``, 0 at both ends (mastered and hopeless), largest at ``a / (a + b)``.
    No gradient (weights select problems; they are not optimised)."""
    if a < 0 or b < 0:
        raise ValueError(f"the Beta-kernel exponents must be >= 0, got a={a}, b={b}")
    p = torch.as_tensor(p).detach().float()
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError("pass rates must lie in [0, 1]")
    return p.pow(a) * (1.0 - p).pow(b)


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
    check_logits("student_logits", student_logits)
    labels = check_labels(labels, student_logits)
    p = F.softmax(student_logits.detach().float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return beta_kernel(p, a, b)


def paced_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  T: float = 1.0, a: float = 1.0, b: float = 1.0, normalize: bool = True):
    """Competence-weighted KD (PACED, Xu et al. 2026, the weighted distillation objective)::

        L = sum_i w_i T^2 KL_i / sum_i w_i      (normalize=True; else mean_i w_i T^2 KL_i)

    with ``w_i`` from :func:`paced_weights` (stop-gradient) and ``KL_i = KL(softmax(t_i/T) ||
    softmax(s_i/T))`` (forward KL; the teacher is detached). Returns ``(loss, info)`` with
    ``{"loss", "kd_unweighted", "mean_weight", "mean_p"}``.
    """
    check_pair(student_logits, teacher_logits)
    T = check_temperature(T)
    w = paced_weights(student_logits, labels, a, b).to(student_logits.dtype)
    kl = (T * T) * kl_per_example(teacher_logits.detach(), student_logits, T)
    loss = (w * kl).sum() / w.sum().clamp_min(1e-12) if normalize else (w * kl).mean()
    with torch.no_grad():
        p = F.softmax(student_logits.detach(), -1).gather(-1, labels.long().unsqueeze(-1)).mean()
    return loss, {"loss": loss.detach(), "kd_unweighted": kl.detach().mean(), "mean_weight": w.mean(),
                  "mean_p": p}


# ============================================================================ multi-teacher consensus
def consensus_targets(teacher_logits_list, T: float = 1.0):
    """Consensus of several teachers and how much they agree, per example.

    This lab's own rule, an agreement-weighted consensus (no paper's method; AVSD's per-token consensus
    of privileged views, which keeps a view's residual only where it agrees with the consensus, is
    :func:`distill_lab.methods.kd.privileged.avsd_loss`):

        p_bar   = (1/M) sum_m softmax(t_m / T)                        consensus (mixture) target
        JS      = H(p_bar) - (1/M) sum_m H(softmax(t_m / T))          generalised Jensen-Shannon
        w       = 1 - JS / log(min(M, C))                             agreement in [0, 1]

    ``w = 1`` when all teachers give the same distribution, ``w = 0`` when they put all mass on
    different classes. Teachers are detached.

    teacher_logits_list : a list of M >= 2 tensors ``[B, ..., C]`` (or one tensor ``[M, B, ..., C]``).
    Returns ``(p_bar [B, ..., C], w [B, ...])``.
    """
    T = check_temperature(T)
    if isinstance(teacher_logits_list, torch.Tensor):
        ts = list(teacher_logits_list.unbind(0))
    else:
        ts = list(teacher_logits_list)
    if len(ts) < 2:
        raise ValueError(f"consensus needs at least 2 teachers, got {len(ts)}")
    for k, t in enumerate(ts):
        check_pair(ts[0], t, ("teacher_logits_list[0]", f"teacher_logits_list[{k}]"))
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
    alpha = check_weight(alpha)
    T = check_temperature(T)
    check_logits("student_logits", student_logits)
    p_bar, w = consensus_targets(teacher_logits_list, T)
    if p_bar.shape != student_logits.shape:
        raise ValueError(f"teachers {tuple(p_bar.shape)} and student {tuple(student_logits.shape)} differ in shape")
    if labels is None and alpha != 1.0:
        raise ValueError("without labels pass alpha=1 (the CE term needs labels)")
    w = w.to(student_logits.dtype)
    kd = (T * T) * (w * _soft_ce_kl(student_logits, p_bar, T)).sum() / w.sum().clamp_min(1e-12)
    loss, ce = _mix_with_labels(kd, student_logits, labels, alpha)
    return loss, {"loss": loss.detach(), "kd": kd.detach(), "ce": ce.detach(), "mean_agreement": w.mean()}
