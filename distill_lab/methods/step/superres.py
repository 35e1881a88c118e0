"""Super-resolution as a flow, and two one-step students of it: TAD-SR and CTMSR.

**The SR flow.** The low-resolution (LR) image is the high-resolution (HR) one's ``FACTOR x FACTOR``
block average. Write ``P x`` for :func:`range_part`, the block average spread back over its block
(``up(down(x))``): an orthogonal projection onto block-constant images, and everything the LR image
says about the HR one; :func:`null_part` is ``x - P x``, what super-resolution must invent. The flow
starts at ``x_0 = c + sigma (I - P) eps`` with ``c = up(LR)`` and ``eps ~ N(0, I)`` (:func:`sr_start`),
ends at ``x_1 = HR`` and moves on the line ``x_t = (1 - t) x_0 + t x_1``. Its velocity
``x_1 - x_0 = (I - P)(HR - sigma eps)`` has no range part, so :class:`SRVelocity` projects its network's
output with ``I - P``: every sample of the flow, at any step count and with any weights, keeps
``P x = c``, its block averages are the LR input exactly. This is CTMSR's flow (a PF-ODE from the noisy
LR image to the HR image) with the noise kept to the part the LR image leaves open (the range/null-space
split of DDNM, Wang et al. 2023). :func:`sr_flow_loss` trains a velocity on it (the teacher of
:mod:`distill_lab.cifar.sr`), :func:`sr_sample` solves it.

**The students** map ``x_0`` to an HR image in one network call and keep ``P x = c`` by construction
(their networks are :class:`SRVelocity`). What each method adds:

* **TAD-SR** ("One Step Diffusion-based Super-Resolution with Time-Aware Distillation", August
  2024): a one-step generator initialised from the teacher, trained by
  (1) *score distillation after minor noise*: the student's output is noised along the SR flow to a
  late time ``t`` in ``[t_lo, 0.98]`` (little noise: ``t = 1`` is the HR image), and the gradient
  compares the teacher's and a fake score's data predictions from there (:func:`tadsr_loss`, the DMD
  gradient :func:`~.dmd.dmd_loss` restricted to those times, which is where the high frequencies are
  decided); and (2) an adversarial loss with a *time-aware* discriminator that sees the noised image,
  its time and the LR condition, real HR images against the student's outputs at the same late times
  (:func:`tadsr_discriminator_loss`, :func:`tadsr_gan_loss`). Deviation: the paper works in a latent
  space and builds its discriminator on the diffusion teacher's features; here pixels and a small
  convolutional discriminator (:class:`~.dmd.ConvDiscriminator` with the condition as extra channels).
* **CTMSR** ("Consistency Trajectory Matching for One-Step Generative Super-Resolution", March
  2025): no teacher. (1) *Consistency training* on the SR flow
  (:func:`ctmsr_ct_loss`: :func:`~.consistency.ct_loss` with the path from the noisy LR image to the HR
  image), from a fresh network; (2) *distribution trajectory matching* (:func:`ctmsr_dtm_loss`): the
  one-step outputs' flow from the LR distribution is pulled towards the HR images' flow from the same
  LR images. Here both flows' velocities are learned during the run by flow matching, one on HR
  images and one on the student's outputs, and their data predictions give a DMD-style gradient: our
  reading of the abstract's DTM, said as such; no pre-trained network enters.

Recipes ``tadsr`` and ``ctmsr`` (track ``cifar-sr``: ``python -m distill_lab bench cifar-sr``):
:func:`train_tadsr`, :func:`train_ctmsr`, both returning a student with ``sample(cond, noise)``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...core.flows import batch_t, expand_t, interpolate, sample_ode
from ...core.registry import recipe, with_options
from ...nets.unet import TimeUNet
from ...nets.utils import clone_frozen, ema_update
from .consistency import _grid_size, ct_loss
from .dmd import (_adam, _critic_step, _times, ConvDiscriminator, dmd_loss, fake_score_loss, frozen,
                  gan_discriminator_loss, gan_generator_loss, T_MAX)

__all__ = ["FACTOR", "SIGMA", "downsample", "upsample", "range_part", "null_part", "sr_start",
           "SRVelocity", "sr_flow_loss", "sr_sample", "SROneStep", "SRConsistency", "tadsr_loss", "tadsr_gan_loss",
           "tadsr_discriminator_loss",
           "ctmsr_ct_loss", "ctmsr_dtm_loss", "CondDiscriminator", "train_tadsr", "train_ctmsr",
           "TADSR_PAPER", "CTMSR_PAPER"]

TADSR_PAPER = "TAD-SR 2024, One Step Diffusion-based Super-Resolution with Time-Aware Distillation"
CTMSR_PAPER = "CTMSR 2025, Consistency Trajectory Matching for One-Step Generative Super-Resolution"


FACTOR = 2  # the LR image is the HR image's FACTOR x FACTOR block average
SIGMA = 1.0  # the start's noise level on the null part


# ------------------------------------------------------------------ the SR flow and its operators
def downsample(x: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """``[N, C, H, W] -> [N, C, H / f, W / f]``: the block average (area downsampling)."""
    if x.dim() != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"images [N, C, H, W] with H and W divisible by {factor} expected, got {tuple(x.shape)}")
    return F.avg_pool2d(x, factor)


def upsample(y: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """``[N, C, h, w] -> [N, C, h f, w f]``: each pixel repeated over its block (nearest)."""
    return y.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def range_part(x: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """``P x = up(down(x))``: the orthogonal projection onto block-constant images."""
    return upsample(downsample(x, factor), factor)


def null_part(x: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """``(I - P) x``: the part of ``x`` its block averages do not determine."""
    return x - range_part(x, factor)


def sr_start(cond: torch.Tensor, noise: torch.Tensor, sigma: float = SIGMA, factor: int = FACTOR) -> torch.Tensor:
    """The SR flow's start ``x_0 = c + sigma (I - P) eps`` for ``c = up(LR)`` and noise ``eps``."""
    if cond.shape != noise.shape:
        raise ValueError(f"cond and noise must have the same shape, got {tuple(cond.shape)} and {tuple(noise.shape)}")
    return cond + sigma * null_part(noise, factor)


class SRVelocity(nn.Module):
    """``v(x, t, c) = (I - P) net(x, t, cond=c)``: a conditional velocity with no range part, around a
    :class:`~distill_lab.nets.unet.TimeUNet` built with ``cond_channels`` equal to its ``channels``.
    ``net`` may take several times (a flow map's ``V(x, s, t, c)``): ``forward(x, *times, cond=c)``."""

    def __init__(self, net: TimeUNet, factor: int = FACTOR):
        super().__init__()
        if getattr(net, "cond_channels", 0) != getattr(net, "channels", -1):
            raise ValueError("SRVelocity needs a TimeUNet with cond_channels equal to channels (the "
                             "condition is the upsampled LR image)")
        self.net, self.factor = net, factor

    def forward(self, x: torch.Tensor, *times: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return null_part(self.net(x, *times, cond=cond), self.factor)


def sr_flow_loss(velocity: Callable, hr: torch.Tensor, noise: torch.Tensor | None = None,
                 t: torch.Tensor | None = None, sigma: float = SIGMA, factor: int = FACTOR) -> torch.Tensor:
    """Flow matching on the SR flow (Lipman et al. 2023, eq. 23, on this path): with ``c = P hr``,
    ``x_0 = sr_start(c, eps)``, ``x_t = (1 - t) x_0 + t hr``, the loss is
    ``mean || v(x_t, t, c) - (hr - x_0) ||^2`` over elements. No teacher; ``velocity(x, t, cond=c)``."""
    noise = torch.randn_like(hr) if noise is None else noise
    t = torch.rand(hr.shape[0], device=hr.device) if t is None else t
    c = range_part(hr, factor)
    x0 = sr_start(c, noise, sigma, factor)
    return (velocity(interpolate(x0, hr, t), t, cond=c) - (hr - x0)).pow(2).mean()


@torch.no_grad()
def sr_sample(velocity: Callable, cond: torch.Tensor, noise: torch.Tensor, nfe: int, method: str = "euler",
              sigma: float = SIGMA, factor: int = FACTOR) -> torch.Tensor:
    """Solve the SR flow from ``sr_start(cond, noise)`` to ``t = 1`` in ``nfe`` evaluations: the lab's
    :func:`~distill_lab.core.flows.sample_ode` (``method`` one of its samplers) on ``velocity(x, t, cond=c)``."""
    return sample_ode(lambda x, t: velocity(x, t, cond=cond), sr_start(cond, noise, sigma, factor), nfe, method)


class SROneStep(nn.Module):
    """``G(c, z) = x_0 + v(x_0, 0, c)`` with ``x_0 = sr_start(c, z)``: one Euler step of a conditional
    velocity; copied from the teacher it starts as the teacher's 1-step sample (the posterior mean's
    estimate: sharp range, blurred null part)."""

    def __init__(self, velocity: nn.Module):
        super().__init__()
        self.velocity = velocity

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x0 = sr_start(cond, noise)
        return x0 + self.velocity(x0, torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype), cond=cond)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self(cond, noise)


class SRConsistency(nn.Module):
    """``f(x, t, c) = x + (1 - t) F(x, t, c)``: the consistency function of the SR flow (``f(x, 1) = x``
    built in; Song et al. 2023, eq. 7, in this lab's time direction). ``sample(c, z) = f(x_0, 0, c)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        t = batch_t(t, x)
        return x + expand_t(1 - t, x) * self.net(x, t, cond=cond)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x0 = sr_start(cond, noise)
        return self(x0, 0.0, cond)


class CondDiscriminator(nn.Module):
    """``D(x_t, t, c)``: :class:`~.dmd.ConvDiscriminator` on ``[x_t, c]`` (the condition as extra
    channels) with the time's Fourier features: TAD-SR's time-aware discriminator, small."""

    def __init__(self, channels: int = 3, width: int = 32):
        super().__init__()
        self.channels = channels
        self.body = ConvDiscriminator(2 * channels, width)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if cond.shape != x.shape:
            raise ValueError(f"cond must have x's shape {tuple(x.shape)}, got {tuple(cond.shape)}")
        return self.body(torch.cat([x, cond], 1), t)


def _late_times(x: torch.Tensor, t, t_lo: float) -> torch.Tensor:
    """DMD's noising times (:func:`~.dmd._times`), drawn in ``[t_lo, 0.98]`` when not given."""
    if not 0 <= t_lo < T_MAX:
        raise ValueError(f"t_lo must lie in [0, {T_MAX}), got {t_lo}")
    return _times(x, t, t_lo, T_MAX)


def tadsr_loss(x: torch.Tensor, cond: torch.Tensor, teacher, fake, t_lo: float = 0.7, t=None, noise=None):
    """TAD-SR's score distillation after minor noise: :func:`~.dmd.dmd_loss` on the SR flow. The output
    ``x`` (with gradient) is noised to ``x_t = (1 - t) sr_start(c, eps) + t x`` with ``t`` uniform in
    ``[t_lo, 0.98]`` (late: little noise); the teacher ``teacher(x, t, cond=c)`` and the fake score
    ``fake(x, t, cond=c)`` give data predictions, and their difference is the gradient on ``x``.
    Stop-gradient: both predictions (inside ``dmd_loss``, under ``no_grad``). Returns ``(loss, info)``."""
    t = _late_times(x, t, t_lo)
    start = sr_start(cond, torch.randn_like(x) if noise is None else noise)
    return dmd_loss(x, lambda y, s: teacher(y, s, cond=cond), lambda y, s: fake(y, s, cond=cond), t=t, noise=start)


def tadsr_gan_loss(disc: CondDiscriminator, x: torch.Tensor, cond: torch.Tensor, t_lo: float = 0.7, t=None, noise=None):
    """TAD-SR's adversarial term, generator side: ``softplus(-D(x_t, t, c))`` on the student's output
    noised along the SR flow to a late time (:func:`~.dmd.gan_generator_loss`). Freeze ``disc``."""
    t = _late_times(x, t, t_lo)
    start = sr_start(cond, torch.randn_like(x) if noise is None else noise)
    return gan_generator_loss(lambda y, s: disc(y, s, cond), x, t=t, noise=start)


def tadsr_discriminator_loss(disc: CondDiscriminator, x_fake: torch.Tensor, hr: torch.Tensor, cond: torch.Tensor,
                             t_lo: float = 0.7, t=None):
    """TAD-SR's time-aware discriminator: real HR images against the student's outputs for the same
    LR images, both noised along the SR flow to the same late times (:func:`~.dmd.gan_discriminator_loss`;
    inputs detached there)."""
    t = _late_times(x_fake, t, t_lo)
    return gan_discriminator_loss(lambda y, s: disc(y, s, cond), x_fake, hr, t=t,
                                  noise_fake=sr_start(cond, torch.randn_like(hr)),
                                  noise_real=sr_start(cond, torch.randn_like(hr)))


def ctmsr_ct_loss(f: SRConsistency, f_target: nn.Module, hr: torch.Tensor, cond: torch.Tensor,
                  t: torch.Tensor, t_next: torch.Tensor, noise: torch.Tensor | None = None):
    """CTMSR's consistency training: :func:`~.consistency.ct_loss` (Song et al. 2023, Algorithm 3) on the
    SR flow, both points of a pair on the line from ``x_0 = sr_start(c, eps)`` to the HR image (the same
    ``eps``). Stop-gradient: the target ``f_target(x_{t_next}, t_next, c)``."""
    x0 = sr_start(cond, torch.randn_like(hr) if noise is None else noise)
    return ct_loss(lambda x, s: f(x, s, cond), lambda x, s: f_target(x, s, cond), x0, hr, t, t_next)


def ctmsr_dtm_loss(x: torch.Tensor, cond: torch.Tensor, real, fake, t=None, noise=None):
    """Distribution trajectory matching (as read here): the one-step outputs ``x`` (with gradient) are
    put on the SR flow from their LR images, ``x_t = (1 - t) sr_start(c, eps) + t x``, and moved along
    ``fake - real`` data predictions, where ``real(x, t, cond=c)`` is a velocity fitted to the HR images'
    flow and ``fake`` one fitted to the outputs' flow (both fitted during the run, no teacher).
    :func:`~.dmd.dmd_loss` with ``t`` uniform in [0.02, 0.98]; both predictions under ``no_grad``."""
    start = sr_start(cond, torch.randn_like(x) if noise is None else noise)
    return dmd_loss(x, lambda y, s: real(y, s, cond=cond), lambda y, s: fake(y, s, cond=cond), t=t, noise=start)


def _fm_step(opt, velocity, x1, cond):
    """One flow-matching update of ``velocity`` on the SR flow towards ``x1`` (detached)."""
    start = sr_start(cond, torch.randn_like(x1))
    loss, _ = fake_score_loss(lambda y, s: velocity(y, s, cond=cond), x1.detach(), noise=start)
    _critic_step(opt, loss)
    return float(loss.detach())


@recipe("tadsr", tracks=("cifar-sr",), family="distribution matching", paper=TADSR_PAPER)
def train_tadsr(exp, steps: int | None = None, **overrides) -> SROneStep:
    """TAD-SR: :class:`SROneStep` and a fake score, both copies of the teacher, and a
    :class:`CondDiscriminator`; each step ``critic_updates`` fake-score (flow matching on the outputs)
    and discriminator updates, then one generator update on :func:`tadsr_loss` plus ``gan_weight``
    times :func:`tadsr_gan_loss`. ``gan_weight=0`` is score distillation alone; ``t_lo=0.02`` spreads
    it over every noise level (plain DMD on the SR flow), the ablation of the time-aware part.
    Options: ``t_lo``, ``gan_weight``, ``critic_updates``, ``gen_lr``, ``fake_lr``, ``disc_lr``, ``batch``."""
    # pragma: no mutate start (tuned defaults)
    o = with_options(overrides, "tadsr", t_lo=0.7, gan_weight=0.05, critic_updates=2, gen_lr=5e-5, fake_lr=2e-4,
                 disc_lr=2e-4, batch=exp.batch)
    steps = 600 if steps is None else steps
    # pragma: no mutate end
    gen = SROneStep(exp.student_net())
    fake = exp.student_net()
    disc = CondDiscriminator(exp.shape[0]).to(exp.device)
    g_opt, f_opt, d_opt = _adam(gen.parameters(), o["gen_lr"]), _adam(fake.parameters(), o["fake_lr"]), \
        _adam(disc.parameters(), o["disc_lr"])
    B = o["batch"]

    def step(i):
        logs = {}
        for _ in range(o["critic_updates"]):
            hr, c = exp.hr_batch(B)
            with torch.no_grad():
                xg = gen(c, torch.randn_like(hr))
            logs["fake_fm"] = _fm_step(f_opt, fake, xg, c)
            if o["gan_weight"] > 0:
                ld, info = tadsr_discriminator_loss(disc, xg, hr, c, o["t_lo"])
                _critic_step(d_opt, ld)
                logs.update(info)
        hr, c = exp.hr_batch(B)
        x = gen(c, torch.randn_like(hr))
        with frozen(fake, disc):
            loss, info = tadsr_loss(x, c, exp.velocity, fake, o["t_lo"])
            logs["grad_norm"] = info["grad_norm"]
            total = loss
            if o["gan_weight"] > 0:
                lg, info = tadsr_gan_loss(disc, x, c, o["t_lo"])
                logs.update(info)
                total = total + o["gan_weight"] * lg
        _critic_step(g_opt, total)
        logs["loss"] = float(total.detach())
        return logs

    gen.history = exp.fit(step, steps, desc="tad-sr")
    gen.fake, gen.disc, gen.config = fake, disc, o
    return gen.eval()


@recipe("ctmsr", tracks=("cifar-sr",), family="consistency", paper=CTMSR_PAPER)
def train_ctmsr(exp, steps: int | None = None, **overrides) -> SRConsistency:
    """CTMSR: :class:`SRConsistency` from a fresh network (``init="teacher"``: the teacher's weights,
    faster and no longer teacher-free) trained by :func:`ctmsr_ct_loss` on a grid ``t_n = n / N`` with
    ``N`` doubling from ``N0`` to ``N1`` and an EMA target; from ``dtm_start`` (a fraction of the
    steps) also ``dtm_weight`` times :func:`ctmsr_dtm_loss` on the online network's one-step outputs,
    with a real and a fake velocity (fresh networks) fitted by flow matching on HR images and on those
    outputs from the first step. ``dtm_weight=0`` is consistency training alone. Returns the EMA network.
    Options: ``lr``, ``ema``, ``N0``, ``N1``, ``dtm_weight``, ``dtm_start``, ``critic_lr``, ``init``, ``batch``."""
    # pragma: no mutate start (tuned defaults)
    o = with_options(overrides, "ctmsr", lr=5e-4, ema=0.99, N0=4, N1=32, dtm_weight=1.0, dtm_start=0.5,
                 critic_lr=1e-3, init="scratch", batch=exp.batch)
    steps = 1500 if steps is None else steps
    # pragma: no mutate end
    if o["init"] not in ("scratch", "teacher"):
        raise ValueError(f"init must be 'scratch' or 'teacher', got {o['init']!r}")
    f = SRConsistency(exp.new_net() if o["init"] == "scratch" else exp.student_net())
    f_ema = clone_frozen(f)
    opt = torch.optim.Adam(f.parameters(), lr=o["lr"])
    use_dtm = o["dtm_weight"] > 0
    real = exp.new_net() if use_dtm else None
    fake = exp.new_net() if use_dtm else None
    r_opt = torch.optim.Adam(real.parameters(), lr=o["critic_lr"]) if use_dtm else None
    f_opt = torch.optim.Adam(fake.parameters(), lr=o["critic_lr"]) if use_dtm else None
    B, start = o["batch"], int(o["dtm_start"] * steps)

    def step(i):
        logs = {}
        hr, c = exp.hr_batch(B)
        N = _grid_size(i, steps, o["N0"], o["N1"])
        n = torch.randint(0, N, (B,), device=hr.device)
        loss, _ = ctmsr_ct_loss(f, f_ema, hr, c, n / N, (n + 1) / N)
        logs["ct"] = float(loss.detach())
        if use_dtm:
            logs["real_fm"] = _fm_step(r_opt, real, hr, c)
            z = torch.randn_like(hr)
            x0 = sr_start(c, z)
            with torch.no_grad():
                xs = f(x0, 0.0, c)
            logs["fake_fm"] = _fm_step(f_opt, fake, xs, c)
            if i >= start:
                with frozen(real, fake):
                    ld, info = ctmsr_dtm_loss(f(x0, 0.0, c), c, real, fake)
                logs["dtm_grad"] = info["grad_norm"]
                loss = loss + o["dtm_weight"] * ld
        _critic_step(opt, loss)
        ema_update(f_ema, f, o["ema"])
        logs["loss"] = float(loss.detach())
        return logs

    f_ema.history = exp.fit(step, steps, desc="ctmsr")
    f_ema.real, f_ema.fake, f_ema.config = real, fake, o
    return f_ema.eval()
