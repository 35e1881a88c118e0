"""Video self-distillation for representations: UniSurg's three losses (issue 14, item 3).

UniSurg ("UniSurg: A Video-Native Foundation Model for Universal Understanding of Surgical Videos", 2026)
trains a V-JEPA-style encoder: a student sees a clip with some space-time tokens masked and predicts the
latents an **EMA teacher** gives the whole clip. Its three additions, each a function here, shape-generic
over tokens ``[B, N, D]``:

* :func:`motion_weighted_latent_loss` -- masked latent prediction (an L1 distance to the teacher's latents
  at the masked tokens, as V-JEPA) with each token weighted by how much it moves, so the loss is spent on
  what changes rather than on static texture;
* :func:`affinity_sd_loss` -- spatiotemporal affinity self-distillation: the student's token-to-token
  similarity structure (a softmax over each token's cosine similarities to the others) is matched to the
  teacher's by a KL divergence row by row, so the relations between tokens are kept, not only each token;
* :func:`diversity_loss` -- feature-diversity regularisation: a hinge that keeps every feature's standard
  deviation over the batch's tokens above a target, and a penalty on the features' covariances, against
  the collapse a texture-poor scene invites.

The teacher's latents are under stop-gradient in every loss (the teacher is the EMA of the student).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def affinity_logits(tokens: torch.Tensor, tau: float) -> torch.Tensor:
    """``[B, N, N]``: each token's cosine similarities to the others over ``tau``, its own entry at -inf
    (a token's similarity to itself is 1 whatever the encoder, and would dominate the row)."""
    if tokens.dim() != 3 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [B, N >= 2, D], got {tuple(tokens.shape)}")
    if tau <= 0:
        raise ValueError(f"the temperature tau must be > 0, got {tau}")
    z = F.normalize(tokens, dim=-1)
    sim = z @ z.transpose(1, 2) / tau
    eye = torch.eye(tokens.shape[1], dtype=torch.bool, device=tokens.device)
    return sim.masked_fill(eye, float("-inf"))


def affinity_sd_loss(student: torch.Tensor, teacher: torch.Tensor, tau_s: float = 0.1, tau_t: float = 0.05):
    """UniSurg's spatiotemporal affinity self-distillation: ``mean_{b, i} KL(P_t[b, i, :] || P_s[b, i, :])`` with
    ``P = softmax`` of :func:`affinity_logits` (the teacher's sharper, ``tau_t <= tau_s`` as in
    self-distillation's usual temperatures). Zero when the two token sets have the same similarity
    structure (identical networks: tested). Stop-gradient: the teacher. Returns ``(loss, info)``."""
    if student.shape != teacher.shape:
        raise ValueError(f"student and teacher tokens differ in shape: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    ls = F.log_softmax(affinity_logits(student, tau_s), -1)
    lt = F.log_softmax(affinity_logits(teacher.detach(), tau_t), -1)
    pt = lt.exp()
    off = ~torch.eye(student.shape[1], dtype=torch.bool, device=student.device)
    kl = (pt * (lt - ls)).masked_fill(~off, 0.0).sum(-1)  # the diagonal holds 0 * (-inf - -inf): left out
    return kl.mean(), {"affinity_kl": float(kl.detach().mean())}


def motion_weighted_latent_loss(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor,
                                motion: torch.Tensor, alpha: float = 1.0):
    """Masked latent prediction with motion weights: ``sum_masked w_i |pred_i - sg(target_i)|_1 / D /
    sum_masked w_i``, ``w_i = 1 + alpha * m_i / mean_masked(m)`` with ``m_i >= 0`` the motion at token ``i``
    (e.g. the magnitude of the frame difference over its patch); ``alpha = 0`` is V-JEPA's unweighted L1.
    ``pred``, ``target`` ``[B, N, D]``; ``masked``, ``motion`` ``[B, N]``. Returns ``(loss, info)``."""
    if pred.shape != target.shape or masked.shape != pred.shape[:2] or motion.shape != pred.shape[:2]:
        raise ValueError("pred and target must be [B, N, D], masked and motion [B, N]")
    if alpha < 0 or (motion < 0).any():
        raise ValueError("alpha and the motion must be >= 0")
    m = masked.to(pred.dtype)
    mean_motion = (motion * m).sum() / m.sum().clamp(min=1)
    w = (1 + alpha * motion / mean_motion.clamp(min=1e-12)) * m
    err = (pred - target.detach()).abs().mean(-1)
    return (w * err).sum() / w.sum().clamp(min=1e-12), {"mean_weight": float(w.sum() / m.sum().clamp(min=1))}


def diversity_loss(tokens: torch.Tensor, target_std: float = 1.0, cov_weight: float = 0.04, eps: float = 1e-4):
    """Feature diversity over all ``B * N`` tokens of ``[B, N, D]``: ``mean_d relu(target_std - std_d)`` (each
    feature must vary) plus ``cov_weight`` times the mean squared off-diagonal covariance (features must not
    repeat each other), VICReg's two terms. A collapsed encoder (every token the same) scores ``target_std``
    in the first. Returns ``(loss, info)``."""
    x = tokens.reshape(-1, tokens.shape[-1])
    if x.shape[0] < 2:
        raise ValueError("diversity needs at least two tokens")
    x = x - x.mean(0)
    std = (x.var(0) + eps).sqrt()
    var_term = F.relu(target_std - std).mean()
    cov = x.T @ x / (x.shape[0] - 1)
    D = cov.shape[0]
    cov_term = (cov ** 2).masked_fill(torch.eye(D, dtype=torch.bool, device=cov.device), 0.0).sum() / max(D * (D - 1), 1)
    return var_term + cov_weight * cov_term, {"std": float(std.detach().mean()), "cov": float(cov_term.detach())}
