"""Self-distillation with privileged information: the losses, on token logits.

The student and the teacher are **the same network**: the teacher view reads a privileged context (the
reference answer, part of the reference, a critique, a reward) that the student view does not, and the
student view learns, on its own rollouts, to do what the teacher view does. The teacher view's logits
are always detached here; the student view's carry the gradient. Logits ``[B, T, V]`` aligned with the
rollout's tokens, a mask ``[B, T]`` of the positions that count, as in :mod:`.token`, whose helpers
these reuse. With identical views every loss below and its gradient are zero (tested).

* :func:`clipped_forward_kl` -- OPSD's token target as PW-OPSD states it ("When Are Teacher Tokens
  Reliable? Position-Weighted On-Policy Self-Distillation for Reasoning"): the per-token forward KL
  ``KL(p_priv || q)`` on the student's rollout, clipped so no token's gradient exceeds that of a KL of
  ``clip``, and optionally weighted per position.
* :func:`position_weights` -- PW-OPSD's increasing position weight.
* :func:`opsd_rl_loss` -- OPSD as the pi-Distill paper defines it ("Privileged Information Distillation for
  Language Models"): reinforcement learning on a task reward with a reverse-KL penalty to the privileged
  teacher view, as a per-token policy gradient.
* :func:`avsd_loss` -- AVSD ("Adaptive-View Self-Distillation by Balancing Consensus and Teacher-Specific
  Privileged Signals"): several privileged views, a per-token consensus direction, and a view's residual
  added only where it is aligned with and proportionate to the consensus.
* :func:`reveal`, :class:`ExposureController` -- ATESD: the teacher view reads a share ``rho`` of the
  reference, and a Beta policy rewarded by the student's learning progress chooses ``rho``.
* :func:`sequence_pg_loss` -- the binary-reward feedback condition (GRPO's sequence-level advantage on
  every token); the reference and critique conditions are per-token advantages
  (:func:`~distill_lab.methods.kd.token.on_policy_pg_loss`, the critique's weights from
  :func:`distill_lab.llm.selfdistill.critique_focus`).
* :func:`token_contrastive_loss` -- UniSD's token-level contrastive term between the two views'
  representations (its divergence clipping is :func:`clipped_forward_kl`'s ``clip``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import _kl_probs
from .token import _check_aligned, _prepare, _token_logprobs, _up, check_mask, check_vocab, masked_mean


def clipped_forward_kl(student_logits, teacher_logits, mask=None, clip: float | None = None,
                       weights: torch.Tensor | None = None):
    """``mean_t w_t c_t KL(p_t || q_t)`` over the masked positions: ``p`` the privileged teacher view
    (detached), ``q`` the student view, ``w_t`` optional position weights (:func:`position_weights`,
    detached) and ``c_t = min(1, clip / sg(KL_t))`` the clip factor (this lab's reading of PW-OPSD's
    "clipped forward-KL target": a token's loss keeps its direction but its gradient is capped at that
    of a divergence of ``clip``, so a few tokens on which the views disagree wildly do not dominate;
    ``clip=None``: no clipping). Returns ``(loss, info)`` with the mean unclipped KL and the share of
    clipped tokens."""
    logq, logp, mask = _prepare(student_logits, teacher_logits, mask)  # the teacher view detached
    _check_aligned(weights, student_logits, "weights")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip caps a token's divergence: > 0 or None, got {clip}")
    kl = _kl_probs(logp.exp(), logp, logq)
    factor = torch.ones_like(kl) if clip is None else (clip / kl.detach().clamp(min=1e-12)).clamp(max=1.0)
    per = factor * kl if weights is None else factor * weights.detach() * kl
    loss = masked_mean(per, mask)
    return loss, {"kl": masked_mean(kl.detach(), mask), "clipped": masked_mean((factor < 1).float(), mask)}


def position_weights(mask: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """PW-OPSD's increasing position weight: within each sequence, the ``i``-th of its ``L`` masked
    positions weighs ``1 + alpha i / (L - 1)``, then the weights are scaled to average 1 over the
    masked positions of the sequence (so the loss's scale is OPSD's). ``alpha = 0`` is OPSD's uniform
    weighting; the paper's finding is that later positions of a rollout carry more reliable teacher
    tokens. ``[B, T]`` weights, 0 outside the mask."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got {tuple(mask.shape)}")
    if alpha < 0:
        raise ValueError(f"alpha sets how fast the weight grows along the sequence: >= 0, got {alpha}")
    m = mask.float()
    idx = m.cumsum(1) - 1  # 0, 1, ... over the masked positions
    length = m.sum(1, keepdim=True)
    w = (1 + alpha * idx / (length - 1).clamp(min=1)) * m
    return w * length / w.sum(1, keepdim=True).clamp(min=1e-12)


def opsd_rl_loss(student_logits, teacher_logits, tokens, mask, reward: torch.Tensor, beta: float = 1.0):
    """OPSD as reinforcement learning with a reverse-KL penalty to the privileged teacher view (the
    pi-Distill paper's OPSD). On the student's own samples ``y``, each token's advantage (a constant)::

        A_t = (r - mean_batch r) - beta (log q(y_t) - log p_priv(y_t))        L = -mean_t A_t log q(y_t)

    the sequence's task reward ``r`` (``[B]``, e.g. 1 for a right answer) centred on the batch, and the
    sampled-token reverse KL to the teacher view as a per-token penalty (discount 0, as the shared
    :func:`~distill_lab.methods.kd.token.on_policy_pg_loss`, which this is at zero reward and
    ``beta = 1``). Stop-gradient: the advantage, the teacher view. Returns ``(loss, info)``."""
    check_vocab(student_logits, teacher_logits)
    mask = check_mask(mask, student_logits)
    reward = torch.as_tensor(reward, dtype=torch.float32, device=student_logits.device)
    if reward.shape != (student_logits.shape[0],):
        raise ValueError(f"reward must be one number a sequence, [B]=[{student_logits.shape[0]}], got {tuple(reward.shape)}")
    logq = _token_logprobs(student_logits, tokens)
    logp = _token_logprobs(teacher_logits.detach(), tokens)
    gap = (logq - logp).detach()
    adv = (reward - reward.mean())[:, None] - beta * gap
    loss = -masked_mean(adv * logq, mask)
    return loss, {"sampled_reverse_kl": masked_mean(gap, mask), "reward": float(reward.mean())}


def avsd_loss(student_logits, view_logits: list, mask=None, ratio: float = 1.0):
    """AVSD's target on the student view's rollout. With ``q`` the student view and ``p_v`` each
    privileged view (detached), at every position the signal of view ``v`` is the log-ratio
    ``s_v = log p_v - log q`` (a vector over the vocabulary), the **consensus** is their mean ``c``,
    and view ``v``'s **residual** ``r_v = s_v - c`` is kept only where it is aligned with the consensus
    (``<r_v, c> > 0``) and proportionate to it (``|r_v| <= ratio |c|``); the target is
    ``p* = softmax(log q + c + mean of the kept residuals)`` and the loss ``KL(p* || q)``, mean over the
    masked positions. With one view the residual is zero and ``p* = p_1``: plain forward-KL
    distillation from that view (tested). The kept residuals change the update's size along the
    consensus, never its direction against it. Stop-gradient: the views, the target. Returns
    ``(loss, info)`` with the share of residuals kept."""
    if not view_logits:
        raise ValueError("AVSD needs at least one privileged view")
    for v in view_logits:
        check_vocab(student_logits, v)
    mask = check_mask(mask, student_logits)
    if ratio < 0:
        raise ValueError(f"ratio bounds a residual by the consensus's size: >= 0, got {ratio}")
    logq = F.log_softmax(_up(student_logits), -1)
    with torch.no_grad():
        sig = torch.stack([F.log_softmax(_up(v.detach()), -1) for v in view_logits]) - logq.detach()
        c = sig.mean(0)
        res = sig - c
        keep = ((res * c).sum(-1) > 0) & (res.norm(dim=-1) <= ratio * c.norm(dim=-1))
        added = (res * keep[..., None]).sum(0) / len(view_logits)
        target = F.log_softmax(logq.detach() + c + added, -1)
    kl = _kl_probs(target.exp(), target, logq)
    return masked_mean(kl, mask), {"kept": masked_mean(keep.float().mean(0), mask)}


# ----------------------------------------------------------------------------- ATESD's teacher exposure
def reveal(reference: str, rho: float) -> str:
    """The first ``round(rho * len(reference))`` characters of a reference solution: what a teacher view
    with exposure ``rho`` reads (ATESD's reveal ratio; ``rho = 1`` the whole reference, 0 nothing)."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"the exposure rho is a share of the reference in [0, 1], got {rho}")
    return reference[:round(rho * len(reference))]


class ExposureController(torch.nn.Module):
    """ATESD's teacher-exposure controller ("Adaptive Teacher Exposure for Self-Distillation in LLM
    Reasoning"): a Beta policy over the reveal ratio ``rho``, its two concentrations a softplus of a
    linear map of a few training-state statistics (``state_dim`` numbers, e.g. the student's recent
    accuracy and loss), so the exposure can follow the student. :meth:`decide` samples one ``rho`` to
    hold for a window of student updates; after the window, :meth:`learn` takes the student's progress
    over it. Decision ``i`` is credited with the discounted learning progress of its own window and the
    ``horizon - 1`` after it, ``R_i = sum_{j < horizon} gamma^j progress_{i + j}`` (its effect on the
    student's later improvement, not only on the next loss change), and the policy takes a REINFORCE
    step ``-(R_i - b) log pi(rho_i | state_i)`` with ``b`` a running mean of the returns. Stop-gradient:
    the return. ``state_dim = 0``: no state, a Beta bandit."""

    def __init__(self, state_dim: int = 0, gamma: float = 0.5, horizon: int = 2, lr: float = 0.05,
                 init: tuple[float, float] = (2.0, 2.0)):
        super().__init__()
        if not 0.0 <= gamma <= 1.0 or horizon < 1 or min(init) <= 0:
            raise ValueError(f"gamma in [0, 1], horizon >= 1 and positive initial concentrations; got gamma={gamma}, "
                             f"horizon={horizon}, init={init}")
        self.state_dim, self.gamma, self.horizon = state_dim, gamma, horizon
        self.lin = torch.nn.Linear(max(state_dim, 1), 2)
        torch.nn.init.zeros_(self.lin.weight)
        with torch.no_grad():  # softplus(bias) = init: a prior mean of init[0] / sum(init)
            self.lin.bias.copy_(torch.log(torch.expm1(torch.tensor(init, dtype=torch.float32))))
        self.opt = torch.optim.Adam(self.parameters(), lr=lr)
        self.decisions: list[tuple[torch.Tensor | None, float]] = []  # (state, rho) of every decision
        self.progress: list[float] = []  # the student's progress over each decision's window
        self.updated = 0  # decisions whose return was complete and trained on
        self.baseline: float | None = None

    def policy(self, state: torch.Tensor | None = None) -> torch.distributions.Beta:
        x = torch.zeros(1) if state is None or self.state_dim == 0 else torch.as_tensor(state, dtype=torch.float32)
        if x.shape != (max(self.state_dim, 1),):
            raise ValueError(f"the controller reads {self.state_dim} state statistics, got {tuple(x.shape)}")
        a, b = F.softplus(self.lin(x)) + 1e-3
        return torch.distributions.Beta(a, b)

    @torch.no_grad()
    def decide(self, state: torch.Tensor | None = None) -> float:
        """Sample the exposure to hold until the next :meth:`learn`."""
        if len(self.decisions) > len(self.progress):
            raise ValueError("decide() follows a learn(): report the progress of the window held before")
        rho = float(self.policy(state).sample().clamp(1e-4, 1 - 1e-4))
        self.decisions.append((None if state is None else torch.as_tensor(state, dtype=torch.float32), rho))
        return rho

    def learn(self, progress: float) -> list[dict]:
        """The student's progress over the window just held (e.g. the rise of its accuracy, the fall of its
        loss); then a policy step for every decision whose ``horizon`` windows are all in. Returns one
        ``{"rho", "return", "advantage"}`` a step taken."""
        if len(self.progress) >= len(self.decisions):
            raise ValueError("learn() follows a decide(): one progress a held decision")
        self.progress.append(float(progress))
        steps = []
        while self.updated + self.horizon <= len(self.progress):
            i = self.updated
            state, rho = self.decisions[i]
            ret = sum(self.gamma ** j * self.progress[i + j] for j in range(self.horizon))
            self.baseline = ret if self.baseline is None else self.baseline
            adv = ret - self.baseline
            self.baseline = 0.9 * self.baseline + 0.1 * ret
            loss = -adv * self.policy(state).log_prob(torch.tensor(rho))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.updated += 1
            steps.append({"rho": rho, "return": ret, "advantage": adv})
        return steps

    @torch.no_grad()
    def mean(self, state: torch.Tensor | None = None) -> float:
        """The policy's mean exposure."""
        return float(self.policy(state).mean)


# ----------------------------------------------------------------------------- UniSD's representation terms
def token_contrastive_loss(student_h: torch.Tensor, teacher_h: torch.Tensor, mask=None, tau: float = 0.1):
    """UniSD's token-level contrastive term ("UniSD: Towards a Unified Self-Distillation Framework for Large
    Language Models"): each position's student representation must pick out the teacher view's
    representation of the *same* position among those of every position of the sequence (InfoNCE over
    the sequence's masked positions, cosine similarities at temperature ``tau``). ``[B, T, D]`` both,
    ``mask [B, T]``. Stop-gradient: the teacher view's representations. Returns ``(loss, info)`` with the
    share of positions whose own teacher representation is the closest."""
    if student_h.shape != teacher_h.shape or student_h.dim() != 3:
        raise ValueError(f"representations must be [B, T, D] of one shape, got {tuple(student_h.shape)} and "
                         f"{tuple(teacher_h.shape)}")
    if tau <= 0:
        raise ValueError(f"tau is a temperature: > 0, got {tau}")
    B, T, _ = student_h.shape
    mask = torch.ones(B, T, dtype=torch.bool, device=student_h.device) if mask is None else mask
    s = F.normalize(_up(student_h), dim=-1)
    t = F.normalize(_up(teacher_h.detach()), dim=-1)
    sim = s @ t.transpose(1, 2) / tau  # [B, T, T]: position i of the student against j of the teacher
    sim = sim.masked_fill(~mask[:, None, :], float("-inf"))
    logp = F.log_softmax(sim, -1).diagonal(dim1=1, dim2=2)
    right = (sim.argmax(-1) == torch.arange(T, device=sim.device)).float()
    return masked_mean(-logp, mask), {"top1": masked_mean(right, mask)}


# ----------------------------------------------------------------------------- feedback contexts
def sequence_pg_loss(student_logits, tokens, mask, advantage: torch.Tensor):
    """A binary reward as the only feedback (the GRPO condition of "The Role of Feedback Alignment in
    Self-Distillation"): every token of a sampled sequence shares the sequence's advantage ``A`` (``[B]``,
    e.g. :func:`~distill_lab.methods.step.preference.group_advantages` of the rewards), and
    ``L = -mean_t A log q(y_t)`` over the masked tokens. Stop-gradient: the advantage. Returns
    ``(loss, info)``."""
    mask = check_mask(mask, student_logits)
    advantage = torch.as_tensor(advantage, dtype=torch.float32, device=student_logits.device)
    if advantage.shape != (student_logits.shape[0],):
        raise ValueError(f"advantage must be one number a sequence, [B]=[{student_logits.shape[0]}], got "
                         f"{tuple(advantage.shape)}")
    logq = _token_logprobs(student_logits, tokens)
    loss = -masked_mean(advantage.detach()[:, None] * logq, mask)
    return loss, {"advantage_abs": float(advantage.abs().mean())}
