"""Motion Consistency Model (MCM) on the toy video world: motion from the video teacher, appearance from stills.

Zhai et al. 2024, "Motion Consistency Model: Accelerating Video Diffusion with Disentangled
Motion-Appearance Distillation". A video teacher learnt from low-quality video: its frames look like that
video. Plenty of high-quality *images* exist, but no high-quality video. MCM distils a few-step video
student that takes its **motion** from the teacher (consistency distillation) and its **appearance**
from the images (a frame discriminator), and names two problems of doing both at once:

1. *conflicting frame objectives*: a consistency loss on pixels pulls every frame towards the teacher's
   look while the discriminator pulls it towards the images'. **Disentangled motion distillation**
   applies the consistency loss to a *motion representation* of the clip only (:func:`frame_differences`,
   the latent difference ``x[:, 1:] - x[:, :-1]`` among the representations the paper compares, ``diff``
   in the reference code, whose training scripts use a learnt head), leaving appearance to the discriminator;
2. *training-inference mismatch*: the consistency starts are noised low-quality clips, while at
   inference the student starts from its own, sharper, outputs. **Mixed trajectory distillation**
   draws a share of the starts from noised student generations (the "high-quality
   video" domain, the reference code's ``cd_pred_x0_portion = 0.5``) (:func:`mixed_starts`).

In this world (:mod:`distill_lab.video.world`), the "low-quality video" is the data the committed teacher
learnt: Gaussian sprites of width ``sigma = 0.07``. The **high-quality stills** are single frames of
the same world rendered sharper (:func:`sharp_world`, :func:`still_frames`; ``sigma = 0.045`` at
every scale), and the **frame-quality metric** is the sprite's fitted width (:func:`sprite_width`, exact
on rendered frames of any width) and where it sits between the data's and the stills'
(:func:`sharpness`: 0 the data's look, 1 the stills').

The variants (:data:`VARIANTS`) share one budget and seed: consistency distillation on pixels (the
baseline), pixels plus the frame discriminator (the conflict the paper names), motion only plus the
discriminator (MCM), and MCM with mixed trajectories. :func:`train_mcm` trains one,
:func:`evaluate_mcm` measures it beside :func:`references` (data, stills, teacher).

Time runs from noise ``t = 0`` to data ``t = 1`` (:mod:`distill_lab.core.flows`), so the teacher ODE
steps forward in ``t``, as in :mod:`distill_lab.methods.step.consistency`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.flows import interpolate
from ..core.scale import Scale, get_scale
from ..core.train import fit, seed_everything
from ..methods.step.consistency import _check_order, _check_x_t, teacher_solve
from ..methods.step.dmd import ConvDiscriminator, frozen
from ..methods.step.students import ConsistencyFunction
from ..nets.utils import clone_frozen, ema_update
from .metrics import dynamic_degree, frame_error, motion_fd
from .world import World

Tensor = torch.Tensor


# ------------------------------------------------------------------ sizes
@dataclass(frozen=True)
class MCMScale:
    """What the MCM section sizes by the scale (numbers only; the code path is the same).

    ``still_sigma``: the stills' sprite width (the data's is the world's ``sigma``); ``steps``,
    ``batch``, ``lr``, ``ema``: each variant's consistency-distillation run (Adam); ``grid``: cells of
    the time grid ``t_n = n / grid``, each crossed by ``teacher_steps`` Euler steps of the teacher;
    ``disc_weight``: the weight of the frame discriminator's generator loss beside the consistency
    loss; ``disc_lr``: the
    discriminator's Adam rate (one discriminator update per student update); ``stills_batch``: stills
    a discriminator update sees; ``mixed_share``: share of consistency starts drawn from noised student
    generations (MCM's mixed trajectories); ``eval_n``: clips of an evaluation; ``student_nfe``:
    the student's sampling steps; ``seeds``: seeds of the section.
    """

    still_sigma: float
    steps: int
    batch: int
    lr: float
    ema: float
    grid: int
    teacher_steps: int
    disc_weight: float
    disc_lr: float
    stills_batch: int
    mixed_share: float
    eval_n: int
    student_nfe: int
    seeds: tuple = (0, 1, 2)

    def __post_init__(self):
        if not 0 < self.still_sigma:
            raise ValueError(f"still_sigma must be positive, got {self.still_sigma}")
        if not 0 <= self.mixed_share <= 1:
            raise ValueError(f"mixed_share must lie in [0, 1], got {self.mixed_share}")
        if min(self.steps, self.batch, self.grid, self.stills_batch, self.eval_n, self.student_nfe) < 1:
            raise ValueError("steps, batch, grid, stills_batch, eval_n and student_nfe must be at least 1")


MCM_SCALES = {
    # pilots at ci (seed 0, 60 steps of batch 8): at lr 1e-3 every variant's motion broke (dynamic degree 0.12 to 0.32);
    # at 3e-4 pixel CD kept the teacher's motion; a discriminator weight of 0.02 made motion-only students'
    # frames spiky (width 0.016), 0.005 did not. One sampling step is out of reach of these budgets (the
    # teacher's one Euler step, where every student starts, moves four times as much as the data), so the
    # students sample in four consistency steps, as the paper's 4-step rows.
    "ci": MCMScale(still_sigma=0.045, steps=50, batch=8, lr=3e-4, ema=0.9, grid=16, teacher_steps=1,
                   disc_weight=0.005, disc_lr=1e-3, stills_batch=32, mixed_share=0.5, eval_n=80, student_nfe=4),
    "default": MCMScale(still_sigma=0.045, steps=120, batch=12, lr=3e-4, ema=0.9, grid=16, teacher_steps=1,
                        disc_weight=0.005, disc_lr=1e-3, stills_batch=48, mixed_share=0.5, eval_n=256, student_nfe=4),
    "gpu": MCMScale(still_sigma=0.045, steps=3000, batch=64, lr=1e-4, ema=0.99, grid=32, teacher_steps=1,
                    disc_weight=0.005, disc_lr=5e-4, stills_batch=256, mixed_share=0.5, eval_n=512, student_nfe=4),
}


def mcm_scale(scale: str | Scale | None = None) -> MCMScale:
    """The :class:`MCMScale` of a scale name (or ``$DISTILL_LAB_SCALE``). The functions below default to
    it, not to ``exp.scale``: at ``default`` the video teacher runs at ``ci``'s settings
    (``exp.scale.name == "ci"``), while this section's budgets are the scale's own."""
    return MCM_SCALES[get_scale(scale).name]


# ------------------------------------------------------------------ stills and frame quality
def sharp_world(world: World, sigma: float) -> World:
    """The same world with sprites of width ``sigma``, which must be sharper (smaller) than the world's:
    the renderer of the high-quality stills."""
    if not 0 < sigma < world.sigma:
        raise ValueError(f"the stills must be sharper than the video: need 0 < sigma < {world.sigma} (the "
                         f"world's sprite width), got {sigma}")
    return dataclasses.replace(world, sigma=sigma)


def still_frames(world: World, n: int, resolution: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` single frames ``[n, C=1, R, R]`` of ``world`` (pass a :func:`sharp_world`): sprites at positions
    drawn as a clip's first frame is, rendered at the world's width; images, no motion."""
    if n < 1 or resolution < 3:
        raise ValueError(f"need n >= 1 stills of resolution >= 3, got n={n}, resolution={resolution}")
    state = world.initial(n, generator)[:, None]                      # [n, 1, S, 4]
    return world.render(state, resolution)[:, 0]                      # [n, 1, R, R]


def _as_clips(frames: Tensor) -> Tensor:
    if frames.dim() == 4:
        return frames[:, None]
    if frames.dim() != 5 or frames.shape[2] != 1:
        raise ValueError(f"frames must be [N, 1, R, R] or clips [B, F, 1, R, R], got {tuple(frames.shape)}")
    return frames


def sprite_width(frames: Tensor, world: World) -> Tensor:
    """The sprite's fitted width in every frame: ``[B, F]`` for clips ``[B, F, 1, R, R]``, ``[N]`` for frames
    ``[N, 1, R, R]`` (units of the square, like ``World.sigma``).

    At the brightest pixel ``k`` (the world's detector's peak) the intensity ``I = (x + 1) / 2`` of a
    Gaussian blob has ``log I(k - 1) - 2 log I(k) + log I(k + 1) = -(h / sigma)^2`` along each axis,
    ``h = 1 / R`` the pixel, wherever the centre lies in the pixel: so ``sigma = h / sqrt(-that)``,
    exact for rendered frames of any width, averaged over the two axes. The first sprite found only
    (the section's world has one). A frame with no peak there (a flat or convex log-intensity) gets ``inf``.
    """
    clips = _as_clips(frames)
    B, Fr, _, R, _ = clips.shape
    img = ((clips[:, :, 0].double() + 1) / 2).clamp(min=1e-6).reshape(B * Fr, R, R)
    flat = img.flatten(1).argmax(1)
    i, j = (flat // R).clamp(1, R - 2), (flat % R).clamp(1, R - 2)
    n = torch.arange(B * Fr)
    logi = img.log()
    d2x = logi[n, i, j - 1] - 2 * logi[n, i, j] + logi[n, i, j + 1]
    d2y = logi[n, i - 1, j] - 2 * logi[n, i, j] + logi[n, i + 1, j]
    h = 1.0 / R
    wx = torch.where(d2x < 0, h / (-d2x).clamp(min=1e-12).sqrt(), torch.full_like(d2x, float("inf")))
    wy = torch.where(d2y < 0, h / (-d2y).clamp(min=1e-12).sqrt(), torch.full_like(d2y, float("inf")))
    w = (0.5 * (wx + wy)).reshape(B, Fr)
    return w[:, 0] if frames.dim() == 4 else w


def sharpness(width: float | Tensor, blurry: float, sharp: float):
    """Where a width sits between the video's look (``blurry``: 0) and the stills' (``sharp``: 1); below 0
    is blurrier than the data, above 1 sharper than the stills."""
    if not sharp < blurry:
        raise ValueError(f"the stills' width must be smaller than the video's, got sharp={sharp}, blurry={blurry}")
    return (blurry - width) / (blurry - sharp)


def median_width(frames: Tensor, world: World) -> float:
    """The median of :func:`sprite_width` over all frames (a frame without a peak does not make it inf)."""
    return float(sprite_width(frames, world).flatten().median())


# ------------------------------------------------------------------ the motion representation
def frame_differences(x: Tensor) -> Tensor:
    """The motion representation of clips ``[B, F, C, H, W]``: ``x[:, 1:] - x[:, :-1]``, ``[B, F - 1, C, H, W]``.

    MCM's "latent difference" (Zhai et al. 2024, one of the motion representations of its disentangled
    motion distillation; ``diff`` in the reference code).
    Zero for a static clip, and blind to anything added to every frame alike (a static background, a
    clip-wide brightness): that part of a clip is left to the discriminator. A moving sprite's edge is
    still in it, so its sharpness is not entirely free.
    """
    if x.dim() != 5:
        raise ValueError(f"clips must be [B, F, C, H, W], got {tuple(x.shape)}")
    if x.shape[1] < 2:
        raise ValueError(f"a motion representation needs at least 2 frames, got {x.shape[1]}")
    return x[:, 1:] - x[:, :-1]


def _mse_per_sample(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).reshape(a.shape[0], -1).mean(1)


def motion_cd_loss(f: Callable, f_target: Callable, velocity: Callable | None, x_t: Tensor, t: Tensor,
                   t_next: Tensor, represent: Callable[[Tensor], Tensor] | None = frame_differences,
                   teacher_step="euler", teacher_steps: int = 1):
    """Consistency distillation with the distance on a motion representation: MCM's disentangled motion
    distillation.

    Zhai et al. 2024, disentangled motion distillation: the consistency-distillation objective of Song et al. 2023
    (``L_CD``, one teacher ODE step between adjacent grid times, an EMA target) with the distance taken
    between motion representations ``phi`` of the two predictions,

    ``L = E || phi(f_theta(x_t, t)) - sg[ phi(f_ema(x_hat_{t_next}, t_next)) ] ||^2``,
    ``x_hat_{t_next} = Phi_teacher(x_t; t -> t_next)`` (this lab's time direction: ``t < t_next``, data at 1).

    ``represent = None`` is plain consistency distillation on pixels (``phi`` the identity), the baseline.
    The teacher provides the ODE step (``velocity``, no gradient; ``teacher_steps`` uniform steps of
    ``teacher_step`` across the cell). Stop-gradient: the teacher step and
    the whole target ``phi(f_ema(...))``; gradient reaches only ``f(x_t, t)``. Shapes: ``x_t`` clips
    ``[B, F, C, H, W]``, ``t, t_next`` ``[B]``. Squared L2 averaged over each sample's entries, then over
    the batch. Returns ``(loss, info)``.
    """
    if x_t.dim() != 5:
        raise ValueError(f"x_t must be clips [B, F, C, H, W], got {tuple(x_t.shape)}")
    t = _check_x_t(x_t, t)
    t_next = _check_x_t(x_t, t_next, "t_next")
    _check_order(t, t_next, "t,t_next")
    phi = represent if represent is not None else (lambda x: x)
    x_hat = teacher_solve(teacher_step, velocity, x_t, t, t_next, teacher_steps)
    with torch.no_grad():
        target = phi(f_target(x_hat, t_next))
    pred = f(x_t, t)
    loss = _mse_per_sample(phi(pred), target).mean()
    return loss, {"cd": float(loss.detach()), "prediction": pred}


# ------------------------------------------------------------------ the frame discriminator
def frame_discriminator(channels: int = 1, width: int = 32) -> ConvDiscriminator:
    """MCM's image discriminator (a head on frozen DINO features in the reference code): DMD2's small convolutional
    discriminator (:class:`~distill_lab.methods.step.dmd.ConvDiscriminator`) on single clean frames
    ``[N, C, H, W]``; its time input is held at 1 (clean frames, no noising)."""
    return ConvDiscriminator(channels, width)


def _frames(clips: Tensor) -> Tensor:
    if clips.dim() != 5:
        raise ValueError(f"clips must be [B, F, C, H, W], got {tuple(clips.shape)}")
    return clips.reshape(-1, *clips.shape[2:])


def _logits(disc: nn.Module, frames: Tensor) -> Tensor:
    return disc(frames, torch.ones(frames.shape[0], device=frames.device, dtype=frames.dtype))


def frame_discriminator_loss(disc: nn.Module, fake_clips: Tensor, real_frames: Tensor):
    """The frame discriminator's non-saturating loss: ``mean softplus(-D(real)) + mean softplus(D(fake))``.

    Zhai et al. 2024, the adversarial objective on frames against high-quality images; the non-saturating form
    of Goodfellow et al. 2014 as in DMD2. Real: high-quality stills ``[N, C, H, W]``
    (:func:`still_frames`); fake: every frame of the student's clips ``[B, F, C, H, W]`` (the frames
    are judged one by one, no motion). Stop-gradient: both inputs are detached, only ``disc`` learns.
    Each term is averaged over its own frames (the counts may differ). Returns ``(loss, info)``.
    """
    if real_frames.dim() != 4:
        raise ValueError(f"real stills must be frames [N, C, H, W], got {tuple(real_frames.shape)}")
    fake = _frames(fake_clips).detach()
    if fake.shape[1:] != real_frames.shape[1:]:
        raise ValueError(f"fake frames {tuple(fake.shape[1:])} and stills {tuple(real_frames.shape[1:])} "
                         "differ in shape")
    lr, lf = _logits(disc, real_frames.detach()), _logits(disc, fake)
    loss = F.softplus(-lr).mean() + F.softplus(lf).mean()
    return loss, {"disc": float(loss.detach()), "d_real": float(lr.detach().mean()),
                  "d_fake": float(lf.detach().mean())}


def frame_generator_loss(disc: nn.Module, clips: Tensor):
    """The student's side of the frame GAN: ``mean softplus(-D(frame))`` over every frame of ``clips``
    ``[B, F, C, H, W]`` (non-saturating; Zhai et al. 2024's adversarial objective, generator side). Gradient flows
    through ``disc`` into the frames; its parameters collect none (they are frozen here, as in
    :func:`~distill_lab.methods.step.dmd.frozen`). Returns ``(loss, info)``."""
    with frozen(disc):
        logits = _logits(disc, _frames(clips))
        loss = F.softplus(-logits).mean()
    return loss, {"gan_g": float(loss.detach())}


# ------------------------------------------------------------------ mixed trajectories
def mixed_starts(noise: Tensor, data: Tensor, generated: Tensor, t: Tensor, use_generated: Tensor) -> Tensor:
    """MCM's mixed trajectory distillation (Zhai et al. 2024): the consistency start
    ``x_t = (1 - t) noise + t x`` with the clean end ``x`` a real clip (the low-quality video domain)
    where ``use_generated`` is False, and the student's own generation ``generated`` (detached: the
    high-quality video domain, what the student meets at inference) where it is True. Shapes: clips
    ``[B, F, C, H, W]``, ``t`` and ``use_generated`` ``[B]``."""
    if not (noise.shape == data.shape == generated.shape):
        raise ValueError(f"noise, data and generated clips must have one shape, got {tuple(noise.shape)}, "
                         f"{tuple(data.shape)}, {tuple(generated.shape)}")
    if use_generated.shape != (data.shape[0],) or use_generated.dtype != torch.bool:
        raise ValueError(f"use_generated must be a boolean [B]=[{data.shape[0]}] mask, got "
                         f"{tuple(use_generated.shape)} {use_generated.dtype}")
    end = torch.where(use_generated.view(-1, *[1] * (data.dim() - 1)), generated.detach(), data)
    return interpolate(noise, end, t)


# ------------------------------------------------------------------ variants and training
@dataclass(frozen=True)
class Variant:
    """One row of the section: the consistency distance on the motion representation only
    (``motion_only``) or on pixels, with or without the frame discriminator (``disc``), with or
    without mixed trajectories (``mixed``)."""

    motion_only: bool
    disc: bool
    mixed: bool


VARIANTS = {
    "pixel CD": Variant(motion_only=False, disc=False, mixed=False),
    "pixel CD + disc": Variant(motion_only=False, disc=True, mixed=False),
    "MCM (motion CD + disc)": Variant(motion_only=True, disc=True, mixed=False),
    "MCM + mixed trajectories": Variant(motion_only=True, disc=True, mixed=True),
}


def train_mcm(exp, variant: Variant, seed: int, cfg: MCMScale | None = None, progress: bool = False,
              steps: int | None = None) -> ConsistencyFunction:
    """Train one variant from the teacher's weights; return the EMA student (a :class:`ConsistencyFunction`,
    with ``.history``).

    Student: ``f(x, t) = x + (1 - t) F(x, t)`` with ``F`` a trainable bidirectional copy of the teacher
    (``exp.score_net()``), so it starts as the teacher's one Euler step; an EMA copy is the target and
    the sampler. Each step draws real clips, noise and a grid cell ``n`` (``t = n / grid``); the
    teacher takes one Euler step to ``t + 1 / grid``; :func:`motion_cd_loss` (pixels or motion). With
    ``disc``: one discriminator update on the student's predictions ``f(x_t, t)`` against fresh stills,
    then the student adds ``disc_weight`` times :func:`frame_generator_loss` on the same predictions.
    With ``mixed``: a share ``mixed_share`` of the starts is built (:func:`mixed_starts`) from the
    student's own one-step predictions of noised real clips, re-noised to the step's ``t``.
    Same ``seed``, same draws of data, noise and times for every variant (the discriminator's draws
    come from their own generator).
    """
    cfg = cfg or mcm_scale()
    n_steps = steps or cfg.steps
    seed_everything(seed)
    still_w = sharp_world(exp.world, cfg.still_sigma)
    g_data, g_still = torch.Generator().manual_seed(1000 + seed), torch.Generator().manual_seed(2000 + seed)
    f = ConsistencyFunction(exp.score_net())
    f_ema = clone_frozen(f)
    opt = torch.optim.Adam(f.parameters(), lr=cfg.lr)
    disc = frame_discriminator(exp.shape[1]).to(exp.device) if variant.disc else None
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999)) if variant.disc else None
    represent = frame_differences if variant.motion_only else None
    B, R = cfg.batch, exp.resolution

    def step(i):
        x1 = exp.world.clips(B, exp.frames, R, exp.device, generator=g_data)
        x0 = torch.randn(x1.shape, generator=g_data).to(exp.device)
        n = torch.randint(0, cfg.grid, (B,), generator=g_data).to(exp.device)
        t, t_next = n / cfg.grid, (n + 1) / cfg.grid
        mix = torch.rand(B, generator=g_data).to(exp.device) < cfg.mixed_share
        renoise = torch.randn(x1.shape, generator=g_data).to(exp.device)  # drawn by every variant alike
        x_t = interpolate(x0, x1, t)
        if variant.mixed and bool(mix.any()):
            gen = x1.clone()
            with torch.no_grad():                            # the student's own clips from noised real ones
                gen[mix] = f(x_t[mix], t[mix])
            x_t = mixed_starts(renoise, x1, gen, t, mix)
        loss, info = motion_cd_loss(f, f_ema, exp.velocity, x_t, t, t_next, represent, "euler", cfg.teacher_steps)
        logs = {"cd": info["cd"]}
        if disc is not None:
            stills = still_frames(still_w, cfg.stills_batch, R, g_still).to(exp.device)
            d_loss, d_info = frame_discriminator_loss(disc, info["prediction"], stills)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_loss, _ = frame_generator_loss(disc, info["prediction"])
            loss = loss + cfg.disc_weight * g_loss
            logs.update(gan_g=float(g_loss.detach()), d_real=d_info["d_real"], d_fake=d_info["d_fake"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(f_ema, f, cfg.ema)
        return {"loss": loss, **logs}

    f_ema.history = fit(step, n_steps, desc="mcm", progress=progress)
    return f_ema.eval()


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def sample(f: ConsistencyFunction, z: Tensor, nfe: int = 1, seed: int = 0) -> Tensor:
    """The student's clips from noise ``z`` in ``nfe`` consistency steps (fresh noise between steps drawn
    from ``seed``, so every variant re-noises alike)."""
    torch.manual_seed(seed)
    return f.sample(z, nfe)


def measure(clips: Tensor, world: World, data_positions: Tensor, still_sigma: float) -> dict:
    """Motion and frame quality of clips ``[B, F, 1, R, R]``: dynamic degree, motion FD against the real
    clips' positions, median sprite width, and the frame error (:func:`~distill_lab.video.metrics.frame_error`:
    each frame against a clean sprite at the position detected in it) against the video's look
    (``frame_error``, width ``world.sigma``) and against the stills' (``still_error``, ``still_sigma``): a
    sharp, clean sprite has a small ``still_error``, a narrow but messy peak a large one."""
    clips = clips.cpu()
    pos = world.detect(clips)
    return {"dynamic_degree": dynamic_degree(pos), "fd": motion_fd(pos, data_positions),
            "width": median_width(clips, world), "frame_error": float(frame_error(clips, world).mean()),
            "still_error": float(frame_error(clips, sharp_world(world, still_sigma)).mean())}


@torch.no_grad()
def references(exp, cfg: MCMScale | None = None, seed: int = 0) -> dict:
    """What every variant is read against, on ``eval_n`` clips of the training horizon: the data (its
    motion, its width: the world's ``sigma``), the motion FD's floor (two independent sets of real
    clips), the stills' width, and the teacher (its Euler sampler on the evaluation noise, measured the
    same way). Returns a dict with ``data``, ``teacher`` (rows of :func:`measure`), ``fd_floor``,
    ``stills_width``, ``noise`` (the evaluation noise), ``positions`` (the real clips' positions) and
    the teacher's ``clips``."""
    cfg = cfg or mcm_scale()
    n, L, R = cfg.eval_n, exp.frames, exp.resolution
    real = exp.world.clips(n, L, R, generator=torch.Generator().manual_seed(seed + 11))
    other = exp.world.clips(n, L, R, generator=torch.Generator().manual_seed(seed + 13))
    pos = exp.world.detect(real)
    z = torch.randn(n, L, *exp.shape[1:], generator=torch.Generator().manual_seed(seed + 7)).to(exp.device)
    t0 = time.perf_counter()
    teacher = exp.teacher_sample(z).cpu()
    stills = still_frames(sharp_world(exp.world, cfg.still_sigma), n, R, torch.Generator().manual_seed(seed + 17))
    return {"data": measure(other, exp.world, pos, cfg.still_sigma),
            "teacher": measure(teacher, exp.world, pos, cfg.still_sigma),
            "fd_floor": motion_fd(exp.world.detect(other), pos), "stills_width": median_width(stills, exp.world),
            "data_width": median_width(real, exp.world), "noise": z, "positions": pos, "clips": teacher,
            "teacher_seconds": time.perf_counter() - t0}


def evaluate_mcm(f: ConsistencyFunction, exp, ref: dict, cfg: MCMScale | None = None) -> dict:
    """One student measured on the references' noise (:func:`measure`), plus its ``sharpness`` (0 the
    data's width, 1 the stills'), its ``clips``, and its NFE."""
    cfg = cfg or mcm_scale()
    clips = sample(f, ref["noise"], cfg.student_nfe).cpu()
    m = measure(clips, exp.world, ref["positions"], cfg.still_sigma)
    m["sharpness"] = float(sharpness(m["width"], ref["data_width"], ref["stills_width"]))
    m["clips"], m["nfe"] = clips, cfg.student_nfe
    return m


def run_variants(exp, cfg: MCMScale | None = None, variants: dict | None = None, seeds=None,
                 progress: bool = True) -> tuple[dict, dict]:
    """Train and evaluate every variant on every seed (one tqdm bar over the runs); returns
    ``(references, {variant name: [row a seed]})``, each row :func:`evaluate_mcm`'s plus ``seconds``."""
    from tqdm.auto import tqdm

    cfg = cfg or mcm_scale()
    variants = variants or VARIANTS
    seeds = tuple(seeds or cfg.seeds)
    ref = references(exp, cfg)
    rows: dict[str, list] = {name: [] for name in variants}
    runs = [(name, s) for s in seeds for name in variants]
    for name, s in tqdm(runs, desc="MCM variants x seeds", disable=not progress, mininterval=0.5):
        t0 = time.perf_counter()
        f = train_mcm(exp, variants[name], s, cfg)
        row = evaluate_mcm(f, exp, ref, cfg)
        row["seconds"] = time.perf_counter() - t0
        rows[name].append(row)
    return ref, rows
