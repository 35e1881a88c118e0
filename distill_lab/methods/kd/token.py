"""Token-level distillation of language models: divergences between the teacher's and the student's
next-token distributions at every position of a sequence, with a mask of the positions that count.

Logits are ``[B, T, V]`` (any leading shape works: ``[..., V]``), the ``mask`` is ``[B, T]`` (True
where a position is trained: the generated or target tokens, never the prompt or the padding), and
every loss is the mean over the masked positions. The teacher's logits are detached inside each
loss; the student's carry the gradient. Throughout, ``p`` is the teacher's distribution and ``q``
the student's, as in the GKD paper.

Divergences (each 0 when the two distributions are equal; tested):

* :func:`forward_kl_loss` -- ``KL(p || q)``: word-level KD (Kim & Rush 2016, eq. 3; Hinton et al.
  2015 at the token level); mode covering.
* :func:`reverse_kl_loss` -- ``KL(q || p)``, exact over the vocabulary; mode seeking (MiniLLM, Gu
  et al. 2024, eq. 1).
* :func:`gjsd_loss` -- the generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024, eq. 2)
  with ``beta``; at ``beta = 0`` and ``1`` its normalised limits, forward and reverse KL.
* :func:`skew_kl_loss` -- DistiLLM's skew KL (Ko et al. 2024, eq. 4 and 5): ``KL(p || a p + (1 - a) q)``
  or, reversed, ``KL(q || a q + (1 - a) p)``.
* :func:`topk_kl_loss` -- the KL over the teacher's ``k`` most likely tokens only (both
  distributions renormalised on them): what a teacher that ships its top-k log-probabilities allows.

Losses on sampled tokens (a rollout's tokens ``[B, T]`` aligned with the logits that predicted them):

* :func:`token_ce_loss` -- cross-entropy on given tokens: supervised fine-tuning on data, and
  sequence-level KD (Kim & Rush 2016, eq. 5) when the tokens are the teacher's samples.
* :func:`sampled_reverse_kl` -- the one-sample estimate ``log q(y) - log p(y)`` of the reverse KL at
  each sampled token ``y ~ q``.
* :func:`on_policy_pg_loss` -- sampled-token on-policy distillation: a policy-gradient step with the
  per-token advantage ``-(log q(y) - log p(y))`` (the on-policy distillation recipe of Agarwal et al.
  2024, sec. 3, with the sampled-token reverse KL as the reward, as in the Thinking Machines write-up
  of on-policy distillation, 2025). Its expected gradient is the reverse KL's (tested exactly).
* :func:`minillm_loss` -- MiniLLM's policy gradient (Gu et al. 2024, eq. 5 to 7): the exact single-step
  reverse KL, the normalised long-term reward, and the importance weights of teacher-mixed sampling.

TAID and PACED on tokens are the CIFAR track's functions (:mod:`.adaptive`), applied to the masked
positions by :func:`taid_token_loss` and :func:`paced_token_loss`, not re-implemented.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...core.checks import check_logits, check_temperature, check_weight
from .adaptive import paced_kd_loss, taid_loss
from .common import _kl_probs


# ============================================================================ masks and checks
def check_mask(mask: torch.Tensor | None, logits: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """A boolean mask with the logits' leading shape that selects at least one position (None: all)."""
    lead = logits.shape[:-1]
    if mask is None:
        return torch.ones(lead, dtype=torch.bool, device=logits.device)
    if mask.shape != lead:
        raise ValueError(f"{name} must have the logits' leading shape {tuple(lead)} (one entry a position), "
                         f"got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a boolean tensor (True where a position is trained), got {mask.dtype}")
    if not bool(mask.any()):
        raise ValueError(f"{name} selects no position: every loss would be empty. Check that the mask marks "
                         "the generated or target tokens (not only the prompt) and that no sequence is all padding")
    return mask


def check_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Same shape, and in particular the same vocabulary size, for the two models' logits."""
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"the student's logits have {student_logits.shape[-1]} tokens and the teacher's "
                         f"{teacher_logits.shape[-1]}: token-level losses need one vocabulary (the same tokenizer); "
                         "distil at the sequence level (seq_kd) when the tokenizers differ")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits and teacher_logits must have the same shape (the same positions), "
                         f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")


def _up(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (half-precision logits are promoted; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def masked_mean(values: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is True (the mask must select some); with
    ``weights`` (same shape, >= 0, detached) the weighted mean ``sum w v / sum w`` over those positions."""
    if not bool(mask.any()):
        raise ValueError("the mask selects no position; nothing to average")
    if weights is None:
        return values.masked_select(mask).mean()
    if weights.shape != values.shape:
        raise ValueError(f"weights must have the values' shape {tuple(values.shape)} (one a position), "
                         f"got {tuple(weights.shape)}")
    w = weights.detach().to(values.dtype).masked_select(mask)
    if bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError("weights must be >= 0 with a positive sum over the masked positions")
    return (w * values.masked_select(mask)).sum() / w.sum()


def _prepare(student_logits, teacher_logits, mask, T: float = 1.0):
    check_vocab(student_logits, teacher_logits)
    mask = check_mask(mask, student_logits)
    T = check_temperature(T)
    log_q = F.log_softmax(_up(student_logits) / T, dim=-1)
    log_p = F.log_softmax(_up(teacher_logits.detach()) / T, dim=-1)
    return log_q, log_p, mask


# ============================================================================ divergences
def forward_kl_loss(student_logits, teacher_logits, mask=None, T: float = 1.0,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """Forward KL ``KL(p || q)`` per position, mean over the mask: word-level knowledge distillation
    (Kim & Rush 2016, "Sequence-level knowledge distillation", eq. 3; the token-level form of Hinton
    et al. 2015). The teacher provides its logits (detached); temperature ``T`` softens both, and the
    loss is scaled by ``T^2`` as in Hinton et al. Mode covering: the student pays wherever the teacher
    has mass it lacks. ``weights`` (``[B, T]``, under stop-gradient) make it a weighted mean, e.g.
    PACED's per-problem weights."""
    log_q, log_p, mask = _prepare(student_logits, teacher_logits, mask, T)
    return (T * T) * masked_mean(_kl_probs(log_p.exp(), log_p, log_q), mask, weights)


def reverse_kl_loss(student_logits, teacher_logits, mask=None, T: float = 1.0) -> torch.Tensor:
    """Reverse KL ``KL(q || p)`` per position, exact over the vocabulary, mean over the mask (the
    objective of MiniLLM, Gu et al. 2024, eq. 1, and of on-policy distillation). The gradient flows
    through ``q`` in both places; the teacher's logits are detached. Mode seeking: the student pays
    wherever it puts mass the teacher lacks."""
    log_q, log_p, mask = _prepare(student_logits, teacher_logits, mask, T)
    return (T * T) * masked_mean(_kl_probs(log_q.exp(), log_q, log_p), mask)


def gjsd_loss(student_logits, teacher_logits, mask=None, beta: float = 0.5, T: float = 1.0) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024, "On-policy distillation of
    language models: learning from self-generated mistakes", eq. 2)::

        JSD(beta)(p || q) = beta KL(p || m) + (1 - beta) KL(q || m),   m = beta p + (1 - beta) q

    with the gradient through ``q`` (in both terms, the mixture included) and ``p`` detached. For
    small ``beta`` it behaves like ``beta KL(p || q)``, near 1 like ``(1 - beta) KL(q || p)``; at the
    end points themselves (where the divergence is 0) this function returns those normalised limits,
    forward KL at ``beta = 0`` and reverse KL at ``beta = 1``, as GKD's implementations do."""
    beta = check_weight(beta, "beta")
    if beta == 0.0:
        return forward_kl_loss(student_logits, teacher_logits, mask, T)
    if beta == 1.0:
        return reverse_kl_loss(student_logits, teacher_logits, mask, T)
    log_q, log_p, mask = _prepare(student_logits, teacher_logits, mask, T)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    jsd = beta * _kl_probs(log_p.exp(), log_p, log_m) + (1.0 - beta) * _kl_probs(log_q.exp(), log_q, log_m)
    return (T * T) * masked_mean(jsd, mask)


def skew_kl_loss(student_logits, teacher_logits, mask=None, alpha: float = 0.1, reverse: bool = False,
                 T: float = 1.0) -> torch.Tensor:
    """DistiLLM's skew KL (Ko, Kim, Chen & Yun 2024, "DistiLLM: towards streamlined distillation for
    large language models", eq. 4 and 5)::

        SKL(alpha)  = KL( p || alpha p + (1 - alpha) q )          (reverse=False)
        SRKL(alpha) = KL( q || alpha q + (1 - alpha) p )          (reverse=True)

    ``alpha = 0`` gives the plain forward (reverse) KL; a small ``alpha`` bounds the loss and its
    gradient where ``q`` (``p``) is near 0, which is why the paper skews. The gradient flows through
    ``q`` everywhere, the mixture included (as in the authors' code); ``p`` is detached."""
    alpha = check_weight(alpha, "alpha")
    log_q, log_p, mask = _prepare(student_logits, teacher_logits, mask, T)
    if alpha == 1.0:  # KL(x || x) = 0
        return 0.0 * masked_mean(log_q.sum(-1), mask)
    a, b = (log_q, log_p) if reverse else (log_p, log_q)  # KL(a || alpha a + (1 - alpha) b)
    log_m = b if alpha == 0.0 else torch.logaddexp(a + math.log(alpha), b + math.log1p(-alpha))
    return (T * T) * masked_mean(_kl_probs(a.exp(), a, log_m), mask)


def topk_kl_loss(student_logits, teacher_logits, mask=None, k: int = 8, T: float = 1.0) -> torch.Tensor:
    """KL between teacher and student restricted to the teacher's top ``k`` tokens at each position,
    both renormalised over those ``k`` ids: ``sum_{y in topk(p)} p~(y) (log p~(y) - log q~(y))``. The
    approximation a teacher that exports only its top-k log-probabilities allows (a sparse form of
    word-level KD); exact forward KL when ``k`` is the vocabulary size."""
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    check_vocab(student_logits, teacher_logits)
    mask = check_mask(mask, student_logits)
    T = check_temperature(T)
    k = min(k, student_logits.shape[-1])
    t = _up(teacher_logits.detach()) / T
    idx = t.topk(k, dim=-1).indices
    log_p = F.log_softmax(t.gather(-1, idx), dim=-1)
    log_q = F.log_softmax(_up(student_logits).gather(-1, idx) / T, dim=-1)
    return (T * T) * masked_mean(_kl_probs(log_p.exp(), log_p, log_q), mask)


# ============================================================================ sampled tokens
def _check_tokens(tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(f"tokens must have the logits' leading shape {tuple(logits.shape[:-1])} (the token each "
                         f"position predicts), got {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= logits.shape[-1]):
        raise ValueError(f"token ids must lie in [0, {logits.shape[-1] - 1}] (the logits' vocabulary); were the "
                         "tokens encoded with another tokenizer?")
    return tokens.long()


def _check_aligned(x: torch.Tensor | None, logits: torch.Tensor, name: str) -> None:
    if x is not None and x.shape != logits.shape[:-1]:
        raise ValueError(f"{name} must have the logits' leading shape {tuple(logits.shape[:-1])} (one value a "
                         f"position), got {tuple(x.shape)}")


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    tokens = _check_tokens(tokens, logits)
    return F.log_softmax(_up(logits), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_ce_loss(student_logits, tokens, mask=None) -> torch.Tensor:
    """Cross-entropy ``-log q(y_t)`` of the given next tokens, mean over the mask: supervised fine-tuning
    on data, or sequence-level KD (Kim & Rush 2016, eq. 5, the mode of the teacher's sequence
    distribution approximated by its samples) when ``tokens`` were sampled from the teacher."""
    check_logits("student_logits", student_logits)
    mask = check_mask(mask, student_logits)
    return -masked_mean(_token_logprobs(student_logits, tokens), mask)


def sampled_reverse_kl(student_logits, teacher_logits, tokens) -> torch.Tensor:
    """``log q(y_t) - log p(y_t)`` at each sampled token, no reduction, no gradient: the one-sample
    estimate of ``KL(q || p)`` at that position when ``y_t ~ q`` (its negative is the per-token reward
    of on-policy distillation)."""
    check_vocab(student_logits, teacher_logits)
    with torch.no_grad():
        return _token_logprobs(student_logits.detach(), tokens) - _token_logprobs(teacher_logits.detach(), tokens)


def on_policy_pg_loss(student_logits, teacher_logits, tokens, mask=None, weights: torch.Tensor | None = None):
    """Sampled-token on-policy distillation as a policy gradient. With the student's own samples
    ``y_t ~ q`` and the per-token advantage (a constant, under stop-gradient)::

        A_t = -(log q(y_t) - log p(y_t))          L = -mean_t  A_t log q(y_t)

    In expectation over ``y_t ~ q``, ``grad L = grad KL(q || p)`` at each position (the score-function
    identity; the term ``E[grad log q] = 0`` absorbs the baseline), so the step is a one-sample
    reverse-KL step that needs from the teacher only the log-probability of the tokens the student
    chose. Per-token reward without future terms (discount 0), as in the on-policy distillation
    write-up of Thinking Machines (2025). ``weights`` (``[B, T]``, detached) reweight positions, e.g.
    importance weights. Returns ``(loss, info)`` with the mean sampled reverse KL."""
    check_vocab(student_logits, teacher_logits)
    mask = check_mask(mask, student_logits)
    _check_aligned(weights, student_logits, "weights")
    logq = _token_logprobs(student_logits, tokens)
    adv = -sampled_reverse_kl(student_logits, teacher_logits, tokens)
    w = adv if weights is None else adv * weights.detach()
    loss = -masked_mean(w * logq, mask)
    return loss, {"loss": loss.detach(), "sampled_reverse_kl": masked_mean(-adv, mask)}


def minillm_loss(student_logits, teacher_logits, tokens, mask, sample_logprobs: torch.Tensor | None = None,
                 clip: float = 3.0, long_term: bool = True):
    """MiniLLM's policy gradient of the sequence-level reverse KL (Gu, Dong, Wei & Huang 2024, "MiniLLM:
    knowledge distillation of large language models", eq. 5 to 7), on tokens sampled from the
    teacher-mixed distribution ``p~ = a p + (1 - a) q`` (:func:`distill_lab.llm.gpt.generate` with
    ``mix_with``):

    * single-step part: the exact reverse KL ``KL(q || p)`` at each position (gradient through ``q``);
    * long-term part: ``-R_{t+1} log q(y_t)`` with ``R_{t+1}`` the mean over the later positions of the
      per-token reward ``log p(y) - log q(y)`` (length-normalised, under stop-gradient);
    * each position weighted by the importance ratio ``rho_t = q(y_t) / p~(y_t)`` (detached, clipped
      at ``clip``) because the tokens came from ``p~`` rather than ``q``; ``sample_logprobs`` are
      ``log p~(y_t)`` (None: the tokens came from ``q`` itself, ``rho = 1``).

    Returns ``(loss, info)``. The teacher's logits are detached; MiniLLM's pre-training loss term and
    PPO clipping are left out."""
    check_vocab(student_logits, teacher_logits)
    mask = check_mask(mask, student_logits)
    tokens = _check_tokens(tokens, student_logits)
    _check_aligned(sample_logprobs, student_logits, "sample_logprobs")
    log_q_all = F.log_softmax(_up(student_logits), dim=-1)
    log_p_all = F.log_softmax(_up(teacher_logits.detach()), dim=-1)
    single = _kl_probs(log_q_all.exp(), log_q_all, log_p_all)
    logq = log_q_all.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        rho = torch.ones_like(logq) if sample_logprobs is None else (logq - sample_logprobs.to(logq.dtype)).exp().clamp(max=clip)
        r = torch.where(mask, log_p_all.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1) - logq, torch.zeros_like(logq))
        m = mask.to(r.dtype)
        # R_{t+1}: mean reward over the positions after t (0 at the last one)
        later_sum = r.flip(-1).cumsum(-1).flip(-1) - r
        later_n = m.flip(-1).cumsum(-1).flip(-1) - m
        R = later_sum / later_n.clamp_min(1.0)
    loss_t = rho * single
    if long_term:
        loss_t = loss_t - rho * R * logq
    loss = masked_mean(loss_t, mask)
    return loss, {"loss": loss.detach(), "reverse_kl": masked_mean(single.detach(), mask),
                  "mean_rho": masked_mean(rho, mask)}


# ============================================================================ TAID and PACED on tokens
def _select(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask]  # [N, V]: every masked position becomes one example of the CIFAR-track losses


def taid_token_loss(student_logits, teacher_logits, mask, t: float):
    """TAID (Shing et al. 2025) on the masked positions: :func:`.adaptive.taid_loss` (the CIFAR
    track's function) on the ``[N, V]`` logits the mask selects. Returns ``(loss, info)``."""
    check_vocab(student_logits, teacher_logits)
    mask = check_mask(mask, student_logits)
    return taid_loss(_select(student_logits, mask), _select(teacher_logits, mask), t)


def paced_token_loss(student_logits, teacher_logits, tokens, mask, T: float = 1.0, a: float = 1.0, b: float = 1.0):
    """PACED (Xu et al. 2026) on the masked positions: :func:`.adaptive.paced_kd_loss` (the CIFAR
    track's function) with each position's target token as the label, so each position's forward KL
    is weighted by ``w = q(y)^a (1 - q(y))^b`` of the student's probability of that token. (The
    problem-level form, weights from pass rates of rollouts, is the ``paced_pass_rate`` recipe of the LLM
    track, through :func:`.adaptive.beta_kernel`.) Returns ``(loss, info)``."""
    check_vocab(student_logits, teacher_logits)
    mask = check_mask(mask, student_logits)
    tokens = _check_tokens(tokens, student_logits)
    return paced_kd_loss(_select(student_logits, mask), _select(teacher_logits, mask), tokens[mask], T=T, a=a, b=b)
