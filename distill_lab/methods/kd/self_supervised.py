"""Distillation without labels: the teacher is random, or an average of the student itself.

* :func:`random_teacher_loss`, :class:`DINOHead` -- random teachers (Sarnthein, Bachmann,
  Anagnostidis & Hofmann, ICML 2023): a student distils a frozen, randomly initialised network;
  :func:`output_information` measures how much the teacher's target depends on the image.
* :func:`rotate_batch`, :func:`sla_joint_labels`, :func:`sla_loss`, :func:`sla_aggregate`,
  :func:`sla_sd_loss` -- self-supervised label augmentation with self-distillation (Lee, Hwang &
  Shin, ICML 2020).
* :func:`ema_self_distill_loss`, :func:`feature_diversity_loss` -- momentum (EMA) self-distillation
  with an anti-collapse regulariser: the generic EMA teacher of mean teacher (Tarvainen & Valpola 2017) and
  BYOL (Grill et al. 2020), with VICReg's variance/covariance terms. Not Momentum-GS's block-wise scheme nor
  UniSurg's affinity self-distillation: those are other recipes' business.

Their yardsticks (linear probe, effective rank, collapse) are in :mod:`distill_lab.metrics.representation`.

The conventions (classes last, mean over examples, teachers detached) are :mod:`.common`'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...core.checks import check_pair, check_temperature
from ...metrics.classification import accuracy
from ...metrics.representation import effective_rank, flat_features
from .common import _kl_probs, kl_per_example


# ============================================================================ random teachers
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
    check_pair(student_logits, teacher_logits)
    ts = check_temperature(student_temp, "student_temp")
    tt = check_temperature(teacher_temp, "teacher_temp")
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


def output_information(logits: torch.Tensor, temp: float = 0.04) -> dict:
    """How much a (teacher's) sharpened output tells about its input: the mutual information, in nats,
    between the example and a class drawn from ``softmax(logits / temp)``,

        I = H(mean_b p_b) - mean_b H(p_b),

    the entropy of the average distribution minus the average entropy. ``I = 0`` when every example gets
    the same distribution (then a student can match the target with a constant and learns nothing about
    the data from it); its largest value is ``log B`` (each example one-hot on its own class). A
    diagnostic for :func:`random_teacher_loss`: a random network's outputs through a
    :class:`DINOHead` can be nearly the same for every image. Our yardstick, not a formula of
    Sarnthein et al. (2023).

    Parameters
    ----------
    logits : ``[B, K]``, the outputs on ``B`` examples (detached here).
    temp : the sharpening temperature (the teacher's, 0.04 by default as in :func:`random_teacher_loss`).

    Returns
    -------
    ``{"mutual_information", "entropy", "marginal_entropy"}``: floats in nats (``entropy`` the mean of
    ``H(p_b)``, ``marginal_entropy`` ``H(mean_b p_b)``).
    """
    if logits.dim() != 2 or logits.shape[0] < 2:
        raise ValueError(f"logits must be [B, K] with B >= 2 examples, got {tuple(logits.shape)}")
    tau = check_temperature(temp, "temp")
    log_p = F.log_softmax(logits.detach().double() / tau, dim=-1)
    p = log_p.exp()
    h = -(p * log_p).sum(-1).mean()
    p_bar = p.mean(0)
    h_bar = -(p_bar * p_bar.clamp_min(1e-300).log()).sum()
    return {"mutual_information": float((h_bar - h).clamp_min(0.0)), "entropy": float(h),
            "marginal_entropy": float(h_bar)}


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


# ============================================================================ self-supervised label augmentation
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
    T = check_temperature(T)
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


# ============================================================================ EMA self-distillation + diversity
def feature_diversity_loss(features: torch.Tensor, gamma: float = 1.0, cov_weight: float = 1.0,
                           eps: float = 1e-4):
    """Anti-collapse regulariser: VICReg's variance and covariance terms, Bardes, Ponce & LeCun (ICLR
    2022), "VICReg", the variance and covariance regularisation terms::

        v(Z) = (1/D) sum_d relu(gamma - sqrt(Var(z_d) + eps))        every dimension keeps spread
        c(Z) = (1/D) sum_{d != d'} Cov(Z)_{d d'}^2                    dimensions are decorrelated
        L = v(Z) + cov_weight * c(Z)

    High (about ``gamma``) on collapsed features, 0 on whitened ones (unit variance, zero covariance).

    features : ``[B, ...]`` flattened to ``[B, D]``. Returns ``(loss, info)`` with
    ``{"loss", "variance", "covariance", "mean_std"}``.
    """
    z = flat_features(features)
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
    with :func:`distill_lab.nets.utils.ema_update`): the mean teacher of Tarvainen & Valpola (2017), the
    target network of BYOL (Grill et al. 2020). Its output is under stop-gradient. A target
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
