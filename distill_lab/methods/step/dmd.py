"""Distribution-matching distillation: DMD, DMD2's GAN term, ADM and CDM.

A one-step generator ``G(z)`` is trained so that its *distribution* matches the teacher's, not its
noise-to-data map. Two score models look at the generator's samples after they are noised to a time
``t`` along the interpolant: the frozen teacher (the "real" score) and a "fake" score that is kept
fitted, by flow matching, to the generator's own current samples. Their difference is the gradient
of the reverse KL divergence ``KL(p_fake || p_real)`` with respect to each sample.

Loss terms (one function each) and what they implement:

* :func:`dmd_loss` - Yin et al. (2024), "One-step Diffusion with Distribution Matching
  Distillation", eqs. (7)-(8): the distribution-matching gradient, with DMD's per-sample weighting.
* :func:`fake_score_loss` - the same paper's denoising loss for the fake score (their eq. (6)),
  here flow matching on detached generator samples.
* :func:`dmd_regression_loss` - the same paper's regression loss, eq. (9), with L2 in place of LPIPS.
* :func:`gan_generator_loss`, :func:`gan_discriminator_loss` - Yin et al. (2024), "Improved
  Distribution Matching Distillation for Fast Image Synthesis" (DMD2), eqs. (3)-(4): a
  non-saturating GAN in the noised space, with a small discriminator on ``(x_t, t)``.
* :func:`adm_generator_loss`, :func:`adm_discriminator_loss` - Lu et al. (2025), "Adversarial
  Distribution Matching for Diffusion Distillation Towards Efficient Image and Video Synthesis":
  a discriminator in the noised space judges the real and the fake score's predictions from the
  same noised sample (hinge loss), replacing DMD's fixed reverse KL.
* :func:`cdm_loss` - Liu et al. (2026), "Continuous-Time Distribution Matching for Few-Step
  Diffusion Distillation": distribution matching on predictions extrapolated by the student's own
  velocity from points of a random-length, continuous-time schedule.

Recipes: ``dmd``, ``dmd2``, ``adm``, ``cdm``. Each one separates the generator step from the critic
step (fake score, discriminator) and runs several critic updates per generator update.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ...core.flows import batch_t, denoise, expand_t, flow_matching_loss, interpolate
from ...core.registry import recipe
from ...nets.mlp import FourierTime
from .students import OneStepGenerator, VelocityStudent

T_MIN, T_MAX = 0.02, 0.98  # noising times for the distribution-matching gradient (DMD's range)


# ---------------------------------------------------------------------------------------- helpers
def _check_x(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a batch of samples shaped [B, ...] (e.g. [B, 2]), got {shape}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} is an empty batch; pass at least one sample")


def _times(x: torch.Tensor, t, lo: float = T_MIN, hi: float = T_MAX, name: str = "t") -> torch.Tensor:
    """``t`` as a ``[B]`` tensor (drawn uniformly in ``[lo, hi]`` when ``None``), checked to lie in [0, 1)."""
    if t is None:
        return lo + (hi - lo) * torch.rand(x.shape[0], device=x.device, dtype=x.dtype)
    t = batch_t(t, x)
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"{name} must be a scalar or have shape [B]=[{x.shape[0]}], got {tuple(t.shape)}")
    if (t < 0).any() or (t >= 1).any():
        raise ValueError(f"{name} must lie in [0, 1) (t=1 is clean data, where the scores carry no "
                         f"information); got values in [{float(t.min()):.3g}, {float(t.max()):.3g}]")
    return t


def _noise(x: torch.Tensor, noise) -> torch.Tensor:
    if noise is None:
        return torch.randn_like(x)
    if noise.shape != x.shape:
        raise ValueError(f"noise must have x's shape {tuple(x.shape)}, got {tuple(noise.shape)}")
    return noise


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Temporarily set ``requires_grad=False`` on every parameter of ``modules``.

    Used in a generator step so that gradient flows *through* a critic (to the generator's samples)
    without being accumulated *in* the critic's parameters.
    """
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class Discriminator(nn.Module):
    """``D(x, t) -> [B]`` logits: an MLP on a flattened sample and Fourier features of its time.

    The small stand-in for DMD2's classification head on the fake score's features (and ADM's
    diffusion-based discriminator): it sees a *noised* sample ``x_t`` together with ``t``.
    """

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 2, n_freq: int = 8):
        super().__init__()
        self.dim = dim
        self.time = FourierTime(n_freq)
        layers = [nn.Linear(dim + self.time.dim, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers += [nn.Linear(width, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"this discriminator was built for inputs of size {self.dim}, got x of shape {tuple(x.shape)}")
        return self.net(torch.cat([flat, self.time(batch_t(t, x))], 1))[:, 0]


class ConvDiscriminator(nn.Module):
    """``D(x, t) -> [B]`` logits for images ``[B, C, H, W]``: two stride-2 convolutions, the time's
    Fourier features added as a per-channel bias after the first, global average pooling, a linear head.

    The image counterpart of :class:`Discriminator` (same call, same role in DMD2 and ADM); an MLP on
    flattened pixels ignores locality and grows with the resolution, this does neither.
    """

    def __init__(self, channels: int = 3, width: int = 32, n_freq: int = 8):
        super().__init__()
        self.channels = channels
        self.time = FourierTime(n_freq)
        self.conv1 = nn.Conv2d(channels, width, 3, stride=2, padding=1)
        self.temb = nn.Linear(self.time.dim, width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * width, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"this discriminator takes images [B, {self.channels}, H, W], got x of shape {tuple(x.shape)}")
        h = F.silu(self.conv1(x) + self.temb(self.time(batch_t(t, x)))[:, :, None, None])
        h = F.silu(self.conv2(h)).mean(dim=(2, 3))
        return self.head(h)[:, 0]


def make_discriminator(sample_shape: tuple[int, ...], width: int = 128, depth: int = 2) -> nn.Module:
    """The discriminator for samples shaped ``sample_shape`` (one sample, no batch dimension).

    Images ``(C, H, W)`` get a :class:`ConvDiscriminator`; anything else (toy points ``(2,)``) the
    MLP :class:`Discriminator` on ``prod(sample_shape)`` inputs with ``width`` and ``depth``.
    """
    sample_shape = tuple(int(d) for d in sample_shape)
    if len(sample_shape) == 3:
        return ConvDiscriminator(sample_shape[0])
    return Discriminator(math.prod(sample_shape), width=width, depth=depth)


# ------------------------------------------------------------------------------------------- DMD
def dmd_loss(x: torch.Tensor, real_velocity, fake_velocity, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None, normalize: bool = True):
    r"""The distribution-matching loss whose gradient is DMD's KL gradient.

    Yin, Gharbi, Zhang, Shechtman, Durand, Freeman & Park (2024), "One-step Diffusion with
    Distribution Matching Distillation", eqs. (7)-(8). The generator sample ``x`` is noised to
    ``x_t = (1 - t) eps + t x``; the teacher ("real") and fake velocities give data predictions
    ``x_real = denoise(v_real, x_t, t)`` and ``x_fake = denoise(v_fake, x_t, t)``. Since
    ``s_fake - s_real`` is proportional to ``x_fake - x_real`` at one ``t``, the gradient of
    ``KL(p_fake || p_real)`` w.r.t. ``x`` is taken along

    .. math:: g = \frac{x_\text{fake} - x_\text{real}}{\text{mean}_\text{per sample}|x - x_\text{real}|}

    (DMD's weighting, eq. (8); ``normalize=False`` drops the denominator). The returned loss is
    ``0.5 * mean((x - sg(x - g))^2)`` (mean over all elements, as in the DMD2 code), so
    ``d loss / d x = g / x.numel()``: a step on the loss moves every sample along ``-g``.

    Teacher provides: its velocity ``real_velocity(x, t)``. Stop-gradient: both data predictions are
    computed under ``torch.no_grad()`` (no gradient reaches either network) and the target
    ``x - g`` is detached; gradient flows only into ``x``.

    Parameters
    ----------
    x : ``[B, ...]`` generator output, *with* gradient.
    real_velocity, fake_velocity : callables ``v(x_t, t)`` with ``t: [B]``.
    t : ``[B]`` noising times in [0, 1) (default: uniform in [0.02, 0.98]).
    noise : ``[B, ...]`` Gaussian noise for the interpolant (default: fresh).
    normalize : divide by DMD's per-sample weight ``mean |x - x_real|``.

    Returns
    -------
    loss : scalar; info : ``{"grad_norm", "weight", "grad" ([B, ...]), "t"}`` detached.
    """
    _check_x(x)
    t = _times(x, t)
    with torch.no_grad():
        xt = interpolate(_noise(x, noise), x.detach(), t)
    return dmd_loss_at(x, xt, t, real_velocity, fake_velocity, normalize=normalize)


def dmd_loss_at(x: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, real_velocity, fake_velocity,
                normalize: bool = True):
    r"""DMD's loss on ``x`` with the noised point ``x_t`` given, rather than drawn from ``x``.

    The direction of :func:`dmd_loss` (Yin et al. 2024, eqs. (7)-(8)) read at a point ``x_t`` the caller
    built: ``g = (x_fake(x_t) - x_real(x_t)) / mean|x - x_real(x_t)|``, and the loss
    ``0.5 * mean((x - sg(x - g))^2)``. :func:`dmd_loss` noises ``x`` itself; TDM
    (:func:`~distill_lab.methods.step.fewstep.tdm_loss`) noises a point of the student's trajectory.
    Stop-gradient: ``x_t`` and both predictions carry none; gradient reaches ``x`` only.
    Shapes ``x, x_t: [B, ...]``, ``t: [B]`` in [0, 1). Returns ``(loss, info)`` as :func:`dmd_loss`.
    """
    _check_x(x)
    t = _times(x, t)
    if xt.shape != x.shape:
        raise ValueError(f"xt must have x's shape {tuple(x.shape)}, got {tuple(xt.shape)}")
    with torch.no_grad():
        xt = xt.detach()
        x_real = denoise(real_velocity, xt, t)
        x_fake = denoise(fake_velocity, xt, t)
        grad = x_fake - x_real
        dims = tuple(range(1, x.dim()))
        weight = (x.detach() - x_real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-6)
        if normalize:
            grad = grad / weight
        target = x.detach() - grad
    loss = 0.5 * F.mse_loss(x, target, reduction="mean")
    info = {"grad_norm": float(grad.flatten(1).norm(dim=1).mean()), "weight": float(weight.mean()),
            "grad": grad.detach(), "t": t.detach()}
    return loss, info


def fake_score_loss(fake_velocity, x: torch.Tensor, t: torch.Tensor | None = None,
                    noise: torch.Tensor | None = None):
    """Fit the fake velocity to the generator's current samples by flow matching.

    Yin et al. (2024), "One-step Diffusion with Distribution Matching Distillation", eq. (6) (the
    fake score's denoising loss), written as flow matching (Lipman et al. 2023, eq. 23) on the
    linear path. No teacher involved. Stop-gradient: ``x`` is detached, so no gradient reaches the
    generator; only ``fake_velocity``'s parameters are trained.

    Shapes: ``x: [B, ...]``, ``t: [B]`` (default uniform in [0, 1]). Returns ``(loss, info)``.
    """
    _check_x(x)
    x = x.detach()
    if t is not None:
        t = batch_t(t, x)
        if t.shape != (x.shape[0],) or (t < 0).any() or (t > 1).any():
            raise ValueError(f"t must have shape [B]=[{x.shape[0]}] with values in [0, 1]")
    loss = flow_matching_loss(fake_velocity, x, x0=None if noise is None else _noise(x, noise), t=t)
    return loss, {"fake_fm": float(loss.detach())}


def dmd_regression_loss(x: torch.Tensor, x_ref: torch.Tensor):
    """DMD's regression loss, eq. (9) of Yin et al. (2024), with mean squared error for LPIPS.

    ``x = G(z)`` (with gradient) is pulled toward ``x_ref``, the teacher's many-step ODE solution
    from the same noise ``z`` (precomputed pairs; detached here). It anchors the generator to the
    teacher's modes, countering the mode-seeking of the reverse KL. Shapes ``[B, ...]``.
    """
    _check_x(x)
    if x_ref.shape != x.shape:
        raise ValueError(f"x_ref must have x's shape {tuple(x.shape)}, got {tuple(x_ref.shape)}")
    loss = F.mse_loss(x, x_ref.detach())
    return loss, {"regression": float(loss.detach())}


# ------------------------------------------------------------------------------------ DMD2's GAN
def gan_generator_loss(disc: nn.Module, x: torch.Tensor, t: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None):
    """Non-saturating GAN loss for the generator: ``softplus(-D(x_t, t))`` on its noised samples.

    Yin, Gharbi, Park, Zhang, Shechtman, Durand & Freeman (2024), "Improved Distribution Matching
    Distillation for Fast Image Synthesis" (DMD2), eq. (4), generator side; the discriminator here
    is a small network on ``(x_t, t)`` (:func:`make_discriminator`: an MLP for points, a convolutional
    one for images) in place of a head on the fake score's features.
    Gradient flows through ``D`` into ``x``; freeze ``D`` (:func:`frozen`) so its parameters collect
    none. Shapes: ``x: [B, ...]``, ``t: [B]``. Returns ``(loss, info)``.
    """
    _check_x(x)
    t = _times(x, t)
    xt = interpolate(_noise(x, noise), x, t)
    logits = disc(xt, t)
    loss = F.softplus(-logits).mean()
    return loss, {"gan_g": float(loss.detach()), "d_fake": float(logits.detach().mean())}


def gan_discriminator_loss(disc: nn.Module, x_fake: torch.Tensor, x_real: torch.Tensor,
                           t: torch.Tensor | None = None, noise_fake: torch.Tensor | None = None,
                           noise_real: torch.Tensor | None = None):
    """Non-saturating GAN loss for the discriminator (DMD2, eq. (4), discriminator side).

    Real data ``x_real`` (positives) and generator samples ``x_fake`` (negatives) are noised to the
    same times ``t`` with fresh noise (or ``noise_fake``, ``noise_real``: the path's start points, e.g.
    the super-resolution flow's); ``loss = softplus(-D(real_t)) + softplus(D(fake_t))``.
    Stop-gradient: both inputs are detached, so only ``disc`` is trained. Shapes ``[B, ...]``.
    """
    _check_x(x_fake, "x_fake")
    _check_x(x_real, "x_real")
    if x_fake.shape != x_real.shape:
        raise ValueError(f"x_fake and x_real must have the same shape, got {tuple(x_fake.shape)} and {tuple(x_real.shape)}")
    t = _times(x_fake, t)
    xf = interpolate(_noise(x_fake, noise_fake), x_fake.detach(), t)
    xr = interpolate(_noise(x_real, noise_real), x_real.detach(), t)
    lr, lf = disc(xr, t), disc(xf, t)
    loss = F.softplus(-lr).mean() + F.softplus(lf).mean()
    return loss, {"gan_d": float(loss.detach()), "d_real": float(lr.detach().mean()),
                  "d_fake": float(lf.detach().mean())}


# ------------------------------------------------------------------------------------------- ADM
def adm_predictions(x: torch.Tensor, real_velocity, fake_velocity, t: torch.Tensor,
                    s: torch.Tensor, noise: torch.Tensor | None = None):
    """The real and fake scores' predictions of the point at time ``s > t`` from the same ``x_t``.

    ``x_t = (1 - t) eps + t x``; each score takes one Euler step of its own PF-ODE,
    ``y = x_t + (s - t) v(x_t, t)``. The teacher's ``y_real`` is computed under ``torch.no_grad()``;
    ``y_fake`` keeps the graph through ``x_t`` (and so through ``x``). Returns ``(y_real, y_fake)``.
    """
    _check_x(x)
    t, s = _times(x, t), batch_t(s, x)
    if s.shape != t.shape or (s < t).any() or (s > 1).any():
        raise ValueError("s must have shape [B] with t <= s <= 1 (the predictions move toward data)")
    xt = interpolate(_noise(x, noise), x, t)
    h = expand_t(s - t, x)
    with torch.no_grad():
        y_real = xt + h * real_velocity(xt, t)
    y_fake = xt + h * fake_velocity(xt, t)
    return y_real, y_fake


def adm_generator_loss(disc: nn.Module, x: torch.Tensor, real_velocity, fake_velocity,
                       t: torch.Tensor | None = None, s: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None):
    """ADM's generator loss: ``-D(y_fake, s)`` (hinge GAN, generator side).

    Lu, Ren, Xia, Lin, Wang, Xiao, Ma, Xie & Lai (2025), "Adversarial Distribution Matching for
    Diffusion Distillation Towards Efficient Image and Video Synthesis", Sec. 3 (ADM): a
    diffusion-based discriminator in the noised space aligns the fake score's predictions with the
    teacher's, replacing DMD's fixed reverse-KL gradient by a learned discrepancy.
    ``y_fake`` is the fake score's step from ``x_t`` to ``s`` (:func:`adm_predictions`); gradient
    flows through ``D`` and the fake velocity's *input* into the generator's sample ``x``. Freeze
    ``disc`` and the fake net (:func:`frozen`) so they collect no gradient; the teacher's
    prediction is not used here. ``t`` defaults to U[0.02, 0.98], ``s`` to U[t, 1].
    """
    _check_x(x)
    t = _times(x, t)
    s = t + (1 - t) * torch.rand_like(t) if s is None else s
    _, y_fake = adm_predictions(x, real_velocity, fake_velocity, t, s, noise)
    logits = disc(y_fake, batch_t(s, x))
    loss = -logits.mean()
    return loss, {"adm_g": float(loss.detach())}


def adm_discriminator_loss(disc: nn.Module, x: torch.Tensor, real_velocity, fake_velocity,
                           t: torch.Tensor | None = None, s: torch.Tensor | None = None,
                           noise: torch.Tensor | None = None):
    """ADM's discriminator loss (hinge): ``relu(1 - D(y_real, s)) + relu(1 + D(y_fake, s))``.

    Lu et al. (2025), ADM, discriminator side: positives are the teacher's predictions ``y_real``,
    negatives the fake score's ``y_fake``, both from the same noised generator sample ``x_t``.
    Stop-gradient: ``x`` and both predictions are detached; only ``disc`` is trained.
    """
    _check_x(x)
    t = _times(x, t)
    s = t + (1 - t) * torch.rand_like(t) if s is None else s
    with torch.no_grad():
        y_real, y_fake = adm_predictions(x.detach(), real_velocity, fake_velocity, t, s, noise)
    sb = batch_t(s, x)
    lr, lf = disc(y_real, sb), disc(y_fake, sb)
    loss = F.relu(1 - lr).mean() + F.relu(1 + lf).mean()
    return loss, {"adm_d": float(loss.detach()), "d_real": float(lr.detach().mean()),
                  "d_fake": float(lf.detach().mean())}


# ------------------------------------------------------------------------------------------- CDM
def continuous_schedule(n: int, k_max: int, device=None):
    """A random-length, continuous-time schedule per sample (CDM's dynamic schedule).

    Each sample draws a length ``K ~ U{1..k_max}`` and ``K - 1`` sorted uniform interior times, so
    ``0 = tau_0 < tau_1 < ... < tau_K = 1``, and a start index ``k ~ U{0..K-1}``. Returns
    ``(times [n, k_max + 1], k [n])`` with ``times[:, j]`` padded by 1 beyond ``K``.
    """
    if k_max < 1:
        raise ValueError(f"k_max must be at least 1, got {k_max}")
    K = torch.randint(1, k_max + 1, (n,), device=device)
    u = torch.rand(n, k_max - 1, device=device)
    j = torch.arange(k_max - 1, device=device)
    u = torch.where(j[None] < (K[:, None] - 1), u, torch.ones_like(u)).sort(1).values
    times = torch.cat([torch.zeros(n, 1, device=device), u, torch.ones(n, 1, device=device)], 1)
    k = (torch.rand(n, device=device) * K).long()
    return times, k


@torch.no_grad()
def student_rollout(velocity, z: torch.Tensor, times: torch.Tensor, k: torch.Tensor):
    """Euler steps of the student's velocity from ``z`` along each sample's ``times`` up to index ``k``.

    No gradient (CDM's and DMD2's backward simulation). Returns ``(x_s [B, ...], s [B])``.
    """
    x = z
    for j in range(int(k.max()) if k.numel() else 0):
        live = (j < k)
        if not live.any():
            break
        a, b = times[:, j], times[:, j + 1]
        step = expand_t(b - a, x) * velocity(x, a)
        x = torch.where(expand_t(live.to(x.dtype), x) > 0, x + step, x)
    s = times.gather(1, k[:, None])[:, 0]
    return x, s


def cdm_loss(student_velocity, x_s: torch.Tensor, s: torch.Tensor, real_velocity, fake_velocity,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None, normalize: bool = True):
    r"""CDM's continuous-time distribution-matching loss on a velocity-extrapolated prediction.

    Liu, Yan, Chen, Hu, Yue, Pan, Lan, Zhu, Cheng, Zheng & Wang (2026), "Continuous-Time Distribution
    Matching for Few-Step Diffusion Distillation" (arXiv 2605.06376). ``x_s`` is a point reached by
    the student at an arbitrary continuous time ``s`` of a random-length schedule
    (:func:`continuous_schedule`, :func:`student_rollout`); the student's velocity extrapolates it
    to data, :math:`\hat x = x_s + (1 - s)\, v_\theta(x_s, s)`, and the DMD gradient
    (:func:`dmd_loss`) is applied to :math:`\hat x`, so distribution matching is enforced from every
    point of the sampling path rather than from a few fixed anchors.

    Teacher provides ``real_velocity``. Stop-gradient: ``x_s`` is detached (the rollout carries no
    gradient); the real and fake predictions inside :func:`dmd_loss` are under ``no_grad``; gradient
    reaches the student only through ``v_theta(x_s, s)``. Shapes: ``x_s: [B, ...]``, ``s: [B]``.
    Returns ``(loss, info)``, ``info["x_hat"]`` being the detached extrapolation (for the fake score).
    """
    _check_x(x_s, "x_s")
    s = batch_t(s, x_s)
    if s.shape != (x_s.shape[0],) or (s < 0).any() or (s >= 1).any():
        raise ValueError(f"s must have shape [B]=[{x_s.shape[0]}] with values in [0, 1)")
    x_s = x_s.detach()
    x_hat = x_s + expand_t(1 - s, x_s) * student_velocity(x_s, s)
    loss, info = dmd_loss(x_hat, real_velocity, fake_velocity, t=t, noise=noise, normalize=normalize)
    info["x_hat"] = x_hat.detach()
    return loss, info


# --------------------------------------------------------------------------------------- recipes
def _adam(params, lr):
    return torch.optim.Adam(params, lr=lr, betas=(0.0, 0.99))


def _critic_step(opt, loss):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _dmd_family(exp, steps, name, gan_weight=0.0, adm=False, **kw):
    """The shared update schedule: ``critic_updates`` critic steps, then one generator step.

    The discriminator (DMD2's GAN term, ADM) is sized from the data by :func:`make_discriminator`:
    an MLP for toy points, a small convolutional one for images."""
    sc = exp.scale
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    cfg = dict(gen_lr=1e-4, fake_lr=sc.pick(ci=4e-4, default=4e-4, gpu=2e-4), disc_lr=2e-4,
               critic_updates=5, batch=sc.pick(ci=256, default=1024, gpu=4096))
    default_steps = sc.pick(ci=800, default=2000, gpu=6000)
    # pragma: no mutate end
    cfg.update(gan_weight=gan_weight, reg_weight=0.0, t_min=T_MIN, t_max=T_MAX)
    unknown = set(kw) - set(cfg)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {name}; known: {sorted(cfg)}")
    cfg.update(kw)
    steps = steps or default_steps
    gen = OneStepGenerator(exp.student_net(1))
    fake = exp.student_net(1)
    g_opt, f_opt = _adam(gen.parameters(), cfg["gen_lr"]), _adam(fake.parameters(), cfg["fake_lr"])
    disc = d_opt = None
    if cfg["gan_weight"] > 0 or adm:
        disc = make_discriminator(tuple(exp.shape)).to(exp.device)
        d_opt = _adam(disc.parameters(), cfg["disc_lr"])
    B, lo, hi = cfg["batch"], cfg["t_min"], cfg["t_max"]

    def tdraw(n):
        return lo + (hi - lo) * torch.rand(n, device=exp.device)

    def step(i):
        logs = {}
        for _ in range(cfg["critic_updates"]):  # critic step(s): fake score (and discriminator)
            with torch.no_grad():
                xg = gen(exp.noise_batch(B))
            lf, info = fake_score_loss(fake, xg)
            _critic_step(f_opt, lf)
            logs.update(info)
            if adm:
                ld, info = adm_discriminator_loss(disc, xg, exp.velocity, fake, t=tdraw(B))
                _critic_step(d_opt, ld)
                logs.update(info)
            elif disc is not None:
                ld, info = gan_discriminator_loss(disc, xg, exp.data_batch(B), t=tdraw(B))
                _critic_step(d_opt, ld)
                logs.update(info)
        z = exp.noise_batch(B)  # generator step
        x = gen(z)
        with frozen(fake, *([disc] if disc is not None else [])):
            if adm:
                loss, info = adm_generator_loss(disc, x, exp.velocity, fake, t=tdraw(B))
                logs.update(info)
                total = loss
            else:
                loss, info = dmd_loss(x, exp.velocity, fake, t=tdraw(B))
                logs["dmd"] = float(loss.detach())
                logs["grad_norm"] = info["grad_norm"]
                total = loss
                if cfg["gan_weight"] > 0:
                    lg, info = gan_generator_loss(disc, x, t=tdraw(B))
                    logs.update(info)
                    total = total + cfg["gan_weight"] * lg
            if cfg["reg_weight"] > 0:
                with torch.no_grad():
                    x_ref = exp.teacher_sample(z, nfe=8, method="midpoint")
                lr_, info = dmd_regression_loss(x, x_ref)
                logs.update(info)
                total = total + cfg["reg_weight"] * lr_
        g_opt.zero_grad(set_to_none=True)
        total.backward()
        g_opt.step()
        logs["loss"] = float(total.detach())
        return logs

    gen.history = exp.fit(step, steps, desc=name)
    gen.fake = fake
    gen.disc = disc
    gen.config = cfg
    return gen.eval()


@recipe("dmd", tracks=("toy2d", "cifar-gen"), family="distribution matching", nfes=(1,),
        paper="Yin et al. 2024, One-step Diffusion with Distribution Matching Distillation")
def train_dmd(exp, steps=None, **overrides):
    """DMD: one-step generator and fake score warm-started from the teacher; ``critic_updates``
    fake-score updates (flow matching on generator samples) per generator update on :func:`dmd_loss`;
    Adam betas (0, 0.99). ``reg_weight > 0`` adds DMD's regression loss to the teacher's ODE output."""
    return _dmd_family(exp, steps, "dmd", **overrides)


@recipe("dmd2", tracks=("toy2d", "cifar-gen"), family="distribution matching", nfes=(1,),
        paper="Yin et al. 2024, Improved Distribution Matching Distillation for Fast Image Synthesis")
def train_dmd2(exp, steps=None, **overrides):
    """DMD2: DMD plus a non-saturating GAN in the noised space (real data as positives),
    two time-scale updates (fake score and discriminator updated ``critic_updates`` times a step)."""
    overrides.setdefault("gan_weight", 0.1)
    return _dmd_family(exp, steps, "dmd2", **overrides)


@recipe("adm", tracks=("toy2d",), family="distribution matching", nfes=(1,),
        paper="Lu et al. 2025, Adversarial Distribution Matching for Diffusion Distillation")
def train_adm(exp, steps=None, **overrides):
    """ADM: the reverse-KL gradient is replaced by a hinge GAN whose discriminator compares the
    teacher's and the fake score's predictions from the same noised generator sample. The
    discriminator learns faster here (``disc_lr`` 1e-3: 1-step ratio 2.2 vs 4.3 at 2e-4, ci, 800 steps)."""
    overrides.setdefault("disc_lr", 1e-3)
    return _dmd_family(exp, steps, "adm", adm=True, **overrides)


@recipe("cdm", tracks=("toy2d",), family="distribution matching", nfes=(1, 2),
        paper="Liu et al. 2026, Continuous-Time Distribution Matching for Few-Step Diffusion Distillation")
def train_cdm(exp, steps=None, **overrides):
    """CDM: a few-step velocity student (Euler sampling on any grid) trained by :func:`cdm_loss` from
    points of random-length continuous schedules (at most ``k_max`` steps), with a fake score fitted
    to the extrapolated predictions; ``critic_updates`` fake updates per student update."""
    sc = exp.scale
    cfg = dict(gen_lr=1e-4, fake_lr=4e-4, critic_updates=5, k_max=2,
               batch=sc.pick(ci=256, default=1024, gpu=4096))
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for cdm; known: {sorted(cfg)}")
    cfg.update(overrides)
    steps = steps or sc.pick(ci=800, default=2000, gpu=6000)
    student = VelocityStudent(exp.student_net(1))
    fake = exp.student_net(1)
    g_opt, f_opt = _adam(student.parameters(), cfg["gen_lr"]), _adam(fake.parameters(), cfg["fake_lr"])
    B = cfg["batch"]

    def draw():
        z = exp.noise_batch(B)
        times, k = continuous_schedule(B, cfg["k_max"], device=exp.device)
        return student_rollout(student.net, z, times, k)

    def step(i):
        logs = {}
        for _ in range(cfg["critic_updates"]):
            x_s, s = draw()
            with torch.no_grad():
                x_hat = x_s + expand_t(1 - s, x_s) * student.net(x_s, s)
            lf, info = fake_score_loss(fake, x_hat)
            _critic_step(f_opt, lf)
            logs.update(info)
        x_s, s = draw()
        with frozen(fake):
            loss, info = cdm_loss(student.net, x_s, s, exp.velocity, fake)
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        logs["loss"] = float(loss.detach())
        logs["grad_norm"] = info["grad_norm"]
        return logs

    student.history = exp.fit(step, steps, desc="cdm")
    student.fake = fake
    student.config = cfg
    return student.eval()
