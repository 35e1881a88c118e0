"""Autoregressive (streaming) video distillation: the losses that train a block-causal student.

Clips are ``[B, F, C, H, W]``; a student is a callable ``net(x, t)`` with a time per frame ``t: [B, F]``
whose attention is block-causal (a block of ``block`` frames sees itself and earlier blocks only),
e.g. :class:`distill_lab.video.nets.VideoTransformer` with ``mask="block_causal"``. Time runs from
noise (``t = 0``) to data (``t = 1``), so a clean context frame has ``t = 1``. None of these losses
knows about KV caches or rollouts (:mod:`distill_lab.video.rollout`); all reuse the foundation's
:func:`~distill_lab.core.flows.flow_matching_loss`, and the distribution-matching stage of the video
recipes reuses :func:`distill_lab.methods.step.dmd.dmd_loss` and
:func:`~distill_lab.methods.step.dmd.fake_score_loss` unchanged.

* :func:`teacher_forcing_loss` -- flow matching on one block given the *clean* real frames before it:
  the training of an autoregressive model on ground-truth context (teacher forcing), whose
  train-test gap is exposure bias (Huang et al. 2025, "Self Forcing", sec. 3).
* :func:`diffusion_forcing_loss` -- flow matching with an independent noise level for every frame
  (Chen et al. 2024, "Diffusion Forcing: Next-token Prediction Meets Full-Sequence Diffusion"): the
  context a block sees during training is noisy real frames.
* :func:`ode_regression_loss` -- CausVid's ODE initialisation (Yin et al. 2025, "From Slow
  Bidirectional to Fast Autoregressive Video Diffusion Models", sec. 4): the causal student learns to
  jump from points on the straight path between a noise clip and the *teacher's* clip from that noise
  to the teacher's clip, block by block, given the teacher's earlier frames.
* :func:`rewarded_dmd_loss` -- Reward Forcing's Re-DMD (Lu et al. 2025): the shared DMD loss with each
  sample's term weighted by ``exp(beta r)`` of a reward under stop-gradient.
* :func:`saliency_weights`, :func:`stream_r1_loss` -- Stream-R1 (2026): the same per-rollout weight, and a
  per-element weight from the gradient saliency of a differentiable reward, factored into a spatial and
  a temporal part.
* :func:`asd_generator_loss`, :func:`asd_discriminator_loss` -- ASD's adversarial self-distillation
  ("Towards One-step Causal Video Generation via Adversarial Self-Distillation"): a discriminator tells
  the student's own (n+1)-step clips from its n-step clips, and the n-step student is pushed towards
  the (n+1)-step distribution, beside DMD; DMD2's GAN losses on clips stacked as images.
* :func:`mutual_distillation_loss` -- Mutual Forcing's self-distillation: the few-step mode's block
  regressed onto the multi-step mode's block from the same noise and the same history.
"""

from __future__ import annotations

import torch

from ..core.flows import batch_t, flow_matching_loss, interpolate
from .step.dmd import ConvDiscriminator, gan_discriminator_loss, gan_generator_loss


def _check_clip(x: torch.Tensor, block: int, name: str = "clip") -> int:
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        raise ValueError(f"{name} must be frames [B, F, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if block < 1 or x.shape[1] % block:
        raise ValueError(f"{name} has {x.shape[1]} frames, not a whole number of blocks of {block}; use clips "
                         f"of a multiple of the block's frames")
    return x.shape[1] // block


def _block_index(n_blocks: int, k, device) -> int:
    if k is None:
        return int(torch.randint(0, n_blocks, (1,)))
    if not 0 <= int(k) < n_blocks:
        raise ValueError(f"block index {k} is outside the clip's {n_blocks} blocks")
    return int(k)


def block_velocity(net, context: torch.Tensor, block: int):
    """``v(x_b, t_b)``: ``net``'s velocity on one block ``x_b [B, b, ...]`` placed after the clean
    ``context [B, k b, ...]`` (their time is 1), at the block's time ``t_b: [B]``."""
    def v(xb: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
        if xb.shape[1] != block:
            raise ValueError(f"a block has {block} frames, got {xb.shape[1]}")
        B, c = xb.shape[0], context.shape[1]
        tb = batch_t(tb, xb)
        t = torch.cat([torch.ones(B, c, dtype=xb.dtype, device=xb.device), tb[:, None].expand(B, block)], 1)
        return net(torch.cat([context, xb], 1), t)[:, c:]
    return v


def teacher_forcing_loss(net, clip: torch.Tensor, block: int, k: int | None = None,
                         t: torch.Tensor | None = None, noise: torch.Tensor | None = None):
    """Flow matching on block ``k`` (random when ``None``) of real clips, given their clean earlier
    frames (teacher forcing). No teacher network is involved; the context is real data. Only the
    block's frames enter the loss; later frames are cut off (block-causal attention never lets them
    reach block ``k``). ``t: [B]`` the block's time (default uniform). Returns ``(loss, info)``."""
    n = _check_clip(clip, block)
    k = _block_index(n, k, clip.device)
    context, target = clip[:, :k * block], clip[:, k * block:(k + 1) * block]
    loss = flow_matching_loss(block_velocity(net, context, block), target, x0=noise, t=t)
    return loss, {"loss": loss.detach(), "block": k}


def diffusion_forcing_loss(net, clip: torch.Tensor, block: int, t: torch.Tensor | None = None,
                           noise: torch.Tensor | None = None):
    """Flow matching with an independent time per frame, ``t: [B, F]`` uniform in [0, 1] by default
    (Chen et al. 2024): every block learns to denoise given earlier frames at their own noise levels.
    Returns ``(loss, info)``."""
    _check_clip(clip, block)
    if t is None:
        t = torch.rand(clip.shape[:2], device=clip.device, dtype=clip.dtype)
    elif tuple(t.shape) != tuple(clip.shape[:2]):
        raise ValueError(f"diffusion forcing needs a time per frame, [B, F]={tuple(clip.shape[:2])}, got {tuple(t.shape)}")
    loss = flow_matching_loss(net, clip, x0=noise, t=t)
    return loss, {"loss": loss.detach()}


def ode_regression_loss(net, z: torch.Tensor, x1: torch.Tensor, block: int, t: torch.Tensor,
                        k: int | None = None):
    """CausVid's ODE-pair regression (Yin et al. 2025, sec. 4, "student initialisation"), on one block.

    The teacher provides ``x1``: its clips from the noise clips ``z`` (both ``[B, F, ...]``, computed
    without gradient by the caller). Block ``k``'s input is the straight-path point
    ``x_t = (1 - t) z + t x1`` at the student's sampling time ``t: [B]``; its context is the teacher's
    clean earlier frames; the student's clean prediction ``x_t + (1 - t) v`` regresses ``x1``'s block
    (mean squared error). ``z`` and ``x1`` are detached: only the student learns."""
    n = _check_clip(x1, block, "x1")
    if z.shape != x1.shape:
        raise ValueError(f"noise and teacher clips must have the same shape, got {tuple(z.shape)} and {tuple(x1.shape)}")
    k = _block_index(n, k, x1.device)
    z, x1 = z.detach(), x1.detach()
    sl = slice(k * block, (k + 1) * block)
    t = batch_t(t, x1)
    xt = interpolate(z[:, sl], x1[:, sl], t)
    v = block_velocity(net, x1[:, :k * block], block)(xt, t)
    pred = xt + (1 - t).view(-1, 1, 1, 1, 1) * v
    loss = (pred - x1[:, sl]).pow(2).mean()
    return loss, {"loss": loss.detach(), "block": k}


def rewarded_dmd_loss(x: torch.Tensor, real_velocity, fake_velocity, reward, beta: float,
                      t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                      element_weights: torch.Tensor | None = None):
    r"""Rewarded distribution matching (Re-DMD; Lu et al. 2025, Reward Forcing, sec. 3.3): DMD's loss with
    each sample's term weighted by the exponential of its reward,

    .. math:: L = \frac{1}{B} \sum_b e^{\beta r(x_b)} \, \tfrac12 \,\text{mean}\big((x_b - \text{sg}(x_b - g_b))^2\big),

    so the student's distribution is pulled towards the teacher's where its samples score high: the
    gradient on sample ``b`` is DMD's direction ``g_b`` (:func:`~distill_lab.methods.step.dmd.dmd_loss`,
    Yin et al. 2024, eqs. (7)-(8), computed by that very function) scaled by ``exp(beta r_b)``. The
    authors' code scores a rollout with a video reward model's motion-quality head and multiplies its
    DMD loss by ``exp(beta r)``; ``beta = 0`` is plain DMD.

    Teacher provides: ``real_velocity``. Stop-gradient: the reward and its weights (computed on
    ``x.detach()``), both data predictions and the target ``x - g``; gradient reaches ``x`` only.
    ``reward(x) -> [B]``. ``element_weights`` (shaped like ``x``, detached; default all ones) weigh each
    element's squared term as well (Stream-R1's saliency, :func:`stream_r1_loss`). Returns ``(loss, info)``,
    ``info`` as :func:`dmd_loss`'s plus ``"reward"`` and ``"weights"`` (``[B]``, detached).
    """
    from .step.dmd import dmd_loss

    _, info = dmd_loss(x, real_velocity, fake_velocity, t=t, noise=noise)
    with torch.no_grad():
        r = torch.as_tensor(reward(x.detach()), dtype=x.dtype, device=x.device).reshape(-1)
        if r.shape[0] != x.shape[0]:
            raise ValueError(f"the reward must give one number a sample ([{x.shape[0]}]), got {tuple(r.shape)}")
        w = torch.exp(beta * r)
    target = (x.detach() - info["grad"]).detach()
    sq = (x - target).pow(2)
    if element_weights is not None:
        if element_weights.shape != x.shape:
            raise ValueError(f"element_weights must be shaped like x {tuple(x.shape)}, got {tuple(element_weights.shape)}")
        sq = element_weights.detach() * sq
    loss = (w * 0.5 * sq.flatten(1).mean(1)).mean()
    return loss, {**info, "reward": r, "weights": w}


def saliency_weights(x: torch.Tensor, reward, eps: float = 1e-8) -> tuple[torch.Tensor, dict]:
    r"""Stream-R1's intra-perplexity weights (Stream-R1, 2026): the saliency ``|d R / d x|`` of a
    differentiable reward ``R(x) -> [B]`` (summed over the batch, so each clip gets its own gradient),
    factored into a spatial map (the saliency averaged over frames) and a temporal profile (averaged
    over pixels), each normalised to mean 1 within its clip; the element weight is their product, so
    optimisation concentrates on the regions and frames where the reward says refinement pays.
    ``x: [B, F, C, H, W]``; returns ``(weights [B, F, C, H, W], info)`` with ``"spatial" [B, 1, C, H, W]``
    and ``"temporal" [B, F]``, all detached. A reward with no gradient anywhere gives uniform weights."""
    if x.dim() != 5:
        raise ValueError(f"saliency weights are for clips [B, F, C, H, W], got {tuple(x.shape)}")
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        out = reward(xg).sum()
        g = torch.autograd.grad(out, xg, allow_unused=True)[0] if out.requires_grad else None
    sal = torch.zeros_like(x) if g is None else g.detach().abs()
    spatial = sal.mean(1, keepdim=True)
    spatial = (spatial + eps) / (spatial + eps).flatten(1).mean(1).view(-1, 1, 1, 1, 1)
    temporal = sal.flatten(2).mean(2)
    temporal = (temporal + eps) / (temporal + eps).mean(1, keepdim=True)
    w = spatial * temporal.view(*temporal.shape, 1, 1, 1)
    return w, {"spatial": spatial, "temporal": temporal}


def stream_r1_loss(x: torch.Tensor, real_velocity, fake_velocity, rollout_reward, beta: float,
                   saliency_reward=None, t: torch.Tensor | None = None, noise: torch.Tensor | None = None):
    r"""Stream-R1's reward-distilled DMD (Stream-R1, 2026): DMD's per-element term (the shared
    :func:`~distill_lab.methods.step.dmd.dmd_loss`'s direction ``g``, Yin et al. 2024, eqs. (7)-(8))
    weighted twice,

    .. math:: L = \frac{1}{B}\sum_b e^{\beta r_b}\; \tfrac12\,\text{mean}\big(W_b \odot (x_b - \text{sg}(x_b - g_b))^2\big),

    ``r_b = rollout_reward(x_b)`` (inter-reliability: rollouts whose supervision is reliable dominate)
    and ``W_b`` the :func:`saliency_weights` of ``saliency_reward`` (intra-perplexity; uniform when
    ``None``). The paper's adaptive balancing of several reward axes is the caller's: here
    ``rollout_reward`` returns one balanced number a clip. Teacher provides ``real_velocity``.
    Stop-gradient: both rewards, both weights, the data predictions and the target; gradient reaches ``x``
    only. With ``beta = 0`` and no saliency reward it is :func:`dmd_loss`. Returns ``(loss, info)``."""
    elem = None if saliency_reward is None else saliency_weights(x, saliency_reward)[0]
    loss, info = rewarded_dmd_loss(x, real_velocity, fake_velocity, rollout_reward, beta, t=t, noise=noise,
                                   element_weights=elem)
    return loss, {**info, "element_weights": torch.ones_like(x) if elem is None else elem}


class BalancedReward:
    """Several reward axes combined into one number a clip, each axis rescaled by a running estimate of
    its spread so none dominates: ``r = mean_k (r_k - mean_batch r_k) / (s_k + eps)``, ``s_k`` an
    exponential moving average (decay ``decay``) of the batch standard deviation of axis ``k``. This is
    this lab's reading of Stream-R1's adaptive balancing across quality axes (the paper balances visual
    quality, motion quality and text alignment). ``axes``: ``{name: reward(x) -> [B]}``; after each call
    ``last`` holds every axis's raw mean and ``scale`` the spreads."""

    def __init__(self, axes: dict, decay: float = 0.9, eps: float = 1e-6):
        if not axes:
            raise ValueError("BalancedReward needs at least one reward axis")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.axes, self.decay, self.eps = dict(axes), decay, eps
        self.scale: dict = {}
        self.last: dict = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        with torch.no_grad():
            for name, fn in self.axes.items():
                r = torch.as_tensor(fn(x), dtype=torch.float64).reshape(-1)
                sd = float(r.std()) if r.numel() > 1 else 0.0
                self.scale[name] = sd if name not in self.scale else self.decay * self.scale[name] + (1 - self.decay) * sd
                self.last[name] = float(r.mean())
                parts.append((r - r.mean()) / (self.scale[name] + self.eps))
        return torch.stack(parts).mean(0).to(x.dtype)


# --------------------------------------------------------------- ASD's adversarial self-distillation
ASD = "Towards One-step Causal Video Generation via Adversarial Self-Distillation (ASD)"


def clip_as_image(x: torch.Tensor) -> torch.Tensor:
    """``[B, F, C, H, W] -> [B, F C, H, W]``: a clip's frames stacked as channels, so an image
    discriminator sees all of them at once (motion included)."""
    if x.dim() != 5:
        raise ValueError(f"a clip is [B, F, C, H, W], got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def clip_discriminator(frames: int, channels: int) -> ConvDiscriminator:
    """The discriminator of :func:`asd_discriminator_loss`: DMD2's small convolutional one on a clip of
    ``frames`` frames of ``channels`` channels (stacked, :func:`clip_as_image`), with a noise-time input."""
    return ConvDiscriminator(frames * channels)


def asd_discriminator_loss(disc, fewer: torch.Tensor, more: torch.Tensor, t: torch.Tensor | None = None):
    """ASD's discriminator side: the student's clips of ``n + 1`` steps (``more``) are its "real" data,
    those of ``n`` steps from the same noise (``fewer``) its "fake"; DMD2's non-saturating loss
    (:func:`~distill_lab.methods.step.dmd.gan_discriminator_loss`) on both noised to the same ``t``.
    The teacher is not read: the target distribution is the student's own at one more step, the small
    gap the paper says gives smoother supervision than the teacher's alone. Stop-gradient: both clips
    (only ``disc`` learns). Shapes ``[B, F, C, H, W]``. Returns ``(loss, info)``."""
    if fewer.shape != more.shape:
        raise ValueError(f"the n-step and (n+1)-step clips must have one shape, got {tuple(fewer.shape)} "
                         f"and {tuple(more.shape)}")
    return gan_discriminator_loss(disc, clip_as_image(fewer), clip_as_image(more), t)


def asd_generator_loss(disc, fewer: torch.Tensor, t: torch.Tensor | None = None):
    """ASD's generator side: ``softplus(-D(x_t, t))`` on the student's n-step clips
    (:func:`~distill_lab.methods.step.dmd.gan_generator_loss`), which moves them towards its own
    (n+1)-step clips; added to DMD with a weight. Freeze ``disc`` while it backpropagates
    (:func:`~distill_lab.methods.step.dmd.frozen`). Returns ``(loss, info)``."""
    return gan_generator_loss(disc, clip_as_image(fewer), t)


# --------------------------------------------------------------- Mutual Forcing
def mutual_distillation_loss(few: torch.Tensor, multi: torch.Tensor):
    """Mutual Forcing's self-distillation ("Mutual Forcing: Dual-Mode Self-Evolution for Fast
    Autoregressive Audio-Video Character Generation"): ``mean((x_few - sg(x_multi))^2)``, the few-step
    mode's blocks regressed onto the blocks the multi-step mode of the *same* network makes from the same
    noise and the same history (the history the few-step mode streamed). No external teacher: the
    multi-step mode learns from real data and teaches the few-step one. Stop-gradient: ``multi``.
    Returns ``(loss, info)``."""
    if few.shape != multi.shape:
        raise ValueError(f"few-step and multi-step blocks must have one shape, got {tuple(few.shape)} and {tuple(multi.shape)}")
    loss = (few - multi.detach()).pow(2).mean()
    return loss, {"self_distill": float(loss.detach())}
