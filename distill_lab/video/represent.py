"""Video self-distillation for representations (issue 14, item 3): UniSurg's pipeline judged by a linear
probe, and FFP-300K's identity-propagation regulariser on a first-frame-propagation toy.

**UniSurg** ("UniSurg: A Video-Native Foundation Model for Universal Understanding of Surgical Videos",
2026) builds on V-JEPA: a **student** encoder sees a clip whose space-time tokens are partly masked (here
*tubes*: the same patches hidden in every frame), a **predictor** fills in the student's latents at the
masked tokens, and the target is what an **EMA teacher** (the student's exponential moving average, under
stop-gradient) gives the *whole* clip, layer-normed. UniSurg adds three terms, each a function of
:mod:`distill_lab.methods.video_ssl`: motion-weighted latent prediction, spatiotemporal affinity
self-distillation (the student's token-to-token similarities at the visible tokens against the teacher's
at the same tokens) and a feature-diversity term on the student's tokens. :data:`VARIANTS` adds them one
at a time over the same budget and seed; :func:`judge` measures what an encoder learned: a linear probe of
the **motion class** (the direction of motion, which no single frame gives) on its frozen mean-pooled
features, and their effective rank.

The clips (:func:`motion_clips`): one bright sprite moving in a straight line (no wall is reached within
the clip) over a few dim static blobs at random places, so appearance alone says nothing of the class.

**FFP-300K** ("FFP-300K: Scaling First-Frame Propagation for Generalizable Video Editing", 2026): an edit
made on the first frame is propagated through the clip, the motion taken from the source video. Its
regulariser is an **identity propagation** task: given the *unedited* first frame, the same model must
give back the source clip itself. In the toy (:func:`ffp_pairs`, :class:`Propagator`) the edit changes
the sprite's size and brightness, the ground truth is rendered in closed form, and a small convolutional
propagator steps frame to frame, ``e_t = e_{t-1} + net(e_{t-1}, s_{t-1}, s_t)``; it learns from a few edit
pairs, with or without identity pairs (free: any source clip is one), and is judged on held-out clips over
twice the horizon it trained on (:func:`ffp_errors`).

Sizes per scale are in :data:`SETTINGS` (numbers only).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.train import seed_everything
from ..methods.video_ssl import affinity_sd_loss, diversity_loss, motion_weighted_latent_loss
from ..metrics.representation import effective_rank, linear_probe
from ..nets.utils import clone_frozen, ema_update
from .nets import spatial_sincos


@dataclass(frozen=True)
class ReprSettings:
    """Sizes of the section. Clips: ``frames`` frames of ``resolution`` pixels, tokens of ``tubelet`` frames
    by ``patch`` x ``patch`` pixels; ``n_classes`` motion sectors; ``n_distractors`` static blobs. Encoder:
    ``depth`` layers of width ``dim``; predictor ``pred_depth`` layers. Pre-training: ``steps`` AdamW steps
    of ``batch`` clips from a pool of ``n_pretrain``, ``mask_ratio`` of the patches hidden as tubes, EMA
    ``ema``. Probe: ``n_probe_train`` / ``n_probe_test`` labelled clips. FFP toy: ``ffp_pairs`` edit pairs,
    ``ffp_identity`` identity sources, ``ffp_steps`` steps over ``ffp_frames`` frames, judged over
    ``ffp_eval_frames``."""

    frames: int = 8
    resolution: int = 16
    patch: int = 4
    tubelet: int = 2
    n_classes: int = 4
    n_distractors: int = 2
    dim: int = 48
    depth: int = 2
    heads: int = 4
    pred_depth: int = 1
    steps: int = 200
    batch: int = 32
    lr: float = 2e-3
    ema: float = 0.98
    mask_ratio: float = 0.5
    n_pretrain: int = 512
    n_probe_train: int = 512
    n_probe_test: int = 512
    alpha: float = 1.0  # the motion weight's strength (motion-weighted variants)
    w_aff: float = 1.0  # affinity self-distillation's weight (affinity variants)
    w_div: float = 1.0  # diversity's weight (UniSurg)
    tau_s: float = 0.1
    tau_t: float = 0.05
    ffp_pairs: int = 2
    ffp_identity: int = 128
    ffp_steps: int = 200
    ffp_batch: int = 8
    ffp_frames: int = 8
    ffp_eval_frames: int = 16
    ffp_width: int = 16
    ffp_lr: float = 2e-3
    ffp_identity_weight: float = 0.3
    ffp_n_test: int = 128

    def __post_init__(self):
        if self.resolution % self.patch or self.frames % self.tubelet:
            raise ValueError(f"patch {self.patch} must divide the resolution {self.resolution} and tubelet "
                             f"{self.tubelet} the frames {self.frames}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        if self.ffp_eval_frames < self.ffp_frames:
            raise ValueError("the FFP toy is judged over at least the frames it trained on")

    def config(self) -> dict:
        return asdict(self)


SETTINGS = {
    "ci": ReprSettings(dim=32, heads=2, batch=16, steps=120, n_pretrain=384, n_probe_train=384, n_probe_test=384,
                       ffp_steps=200, ffp_batch=4),
    "default": ReprSettings(dim=32, heads=2, batch=32, steps=400, n_pretrain=1024, n_probe_train=1024,
                            n_probe_test=1024, ffp_steps=500, ffp_n_test=256),
    "gpu": ReprSettings(dim=96, depth=4, heads=6, pred_depth=2, steps=3000, batch=128, ema=0.996, n_pretrain=8192,
                        n_probe_train=4096, n_probe_test=4096, ffp_steps=2000, ffp_width=32, ffp_n_test=1024),
}


# ================================================================ data: clips labelled by motion
def render_blobs(pos: torch.Tensor, sigma: torch.Tensor, level: torch.Tensor, resolution: int) -> torch.Tensor:
    """Gaussian blobs at ``pos [B, F, S, 2]`` (x, y in the unit square) of widths ``sigma [B, S]`` and peak
    intensities ``level [B, S]``, summed and clipped at 1, as frames ``[B, F, 1, R, R]`` in ``[-1, 1]``
    (background -1): :meth:`~distill_lab.video.world.World.render` with a width and a brightness a blob."""
    if pos.dim() != 4 or pos.shape[-1] != 2 or tuple(sigma.shape) != (pos.shape[0], pos.shape[2]) \
            or level.shape != sigma.shape:
        raise ValueError(f"pos must be [B, F, S, 2] and sigma, level [B, S]; got {tuple(pos.shape)}, "
                         f"{tuple(sigma.shape)}, {tuple(level.shape)}")
    c = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
    s2 = 2 * sigma.double()[:, None, :, None] ** 2
    gx = torch.exp(-(c - pos[..., 0:1].double()) ** 2 / s2)
    gy = torch.exp(-(c - pos[..., 1:2].double()) ** 2 / s2)
    inten = torch.einsum("bfsi,bfsj,bs->bfij", gy, gx, level.double()).clamp(max=1.0)
    return (2 * inten - 1).float().unsqueeze(2)


def motion_class(velocity: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The sector of the direction of ``velocity [..., 2]``: class ``k`` covers the angles within
    ``pi / n_classes`` of ``2 pi k / n_classes`` (class 0: moving towards +x, then counter-clockwise
    in (x, y))."""
    if velocity.shape[-1] != 2 or n_classes < 2:
        raise ValueError(f"velocity must be [..., 2] and n_classes >= 2, got {tuple(velocity.shape)}, {n_classes}")
    if (velocity.abs().sum(-1) == 0).any():
        raise ValueError("a still sprite has no direction of motion")
    angle = torch.atan2(velocity[..., 1].double(), velocity[..., 0].double())
    return torch.round(angle / (2 * math.pi / n_classes)).long() % n_classes


def motion_clips(n: int, s: ReprSettings, generator: torch.Generator, sigma: float = 0.07,
                 speed: tuple[float, float] = (0.04, 0.08), margin: float = 0.1, distractor_level: float = 0.6):
    """``n`` clips ``[n, F, 1, R, R]`` and their motion classes ``[n]``: one sprite (peak 1) in straight-line
    motion at a uniform direction and a speed in ``speed`` (units a frame), its start drawn so that it stays
    at least ``margin`` from the edges over the clip, over ``n_distractors`` static blobs of peak
    ``distractor_level`` at uniform places. Reproducible from ``generator``."""
    Fr = s.frames
    if (Fr - 1) * speed[1] >= 1 - 2 * margin:
        raise ValueError(f"{Fr} frames at speed {speed[1]} leave the square: shorten the clip or slow the sprite")
    g = generator
    angle = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    sp = speed[0] + (speed[1] - speed[0]) * torch.rand(n, generator=g, dtype=torch.float64)
    v = torch.stack([sp * angle.cos(), sp * angle.sin()], -1)                        # [n, 2]
    travel = (Fr - 1) * v
    lo = margin - travel.clamp(max=0)
    hi = 1 - margin - travel.clamp(min=0)
    p0 = lo + (hi - lo) * torch.rand(n, 2, generator=g, dtype=torch.float64)
    t = torch.arange(Fr, dtype=torch.float64)
    sprite = p0[:, None, None, :] + t[None, :, None, None] * v[:, None, None, :]      # [n, F, 1, 2]
    D = s.n_distractors
    still = margin + (1 - 2 * margin) * torch.rand(n, 1, D, 2, generator=g, dtype=torch.float64)
    pos = torch.cat([sprite, still.expand(n, Fr, D, 2)], 2)
    sig = torch.full((n, 1 + D), sigma, dtype=torch.float64)
    level = torch.cat([torch.ones(n, 1), torch.full((n, D), distractor_level)], 1).double()
    return render_blobs(pos, sig, level, s.resolution), motion_class(v, s.n_classes)


# ================================================================ tokens, masks, motion
def tokenize(x: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """``[B, F, C, R, R] -> [B, T N, tubelet C patch patch]``: tubelets of ``tubelet`` frames by ``patch`` x
    ``patch`` pixels, time-major (``T = F / tubelet`` steps of ``N = (R / patch)^2`` patches)."""
    if x.dim() != 5 or x.shape[1] % tubelet or x.shape[-1] % patch or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"clips must be [B, F, C, R, R] with tubelet {tubelet} | F and patch {patch} | R, "
                         f"got {tuple(x.shape)}")
    B, Fr, C, R, _ = x.shape
    T, n = Fr // tubelet, R // patch
    x = x.reshape(B, T, tubelet, C, n, patch, n, patch).permute(0, 1, 4, 6, 2, 3, 5, 7)
    return x.reshape(B, T * n * n, tubelet * C * patch * patch)


def token_motion(x: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """``[B, T N]``: the mean absolute frame difference over each token's pixels (the first frame takes
    the difference to the second), UniSurg's motion cue for weighting the latent loss."""
    d = (x[:, 1:] - x[:, :-1]).abs()
    d = torch.cat([d[:, :1], d], 1)
    return tokenize(d, tubelet, patch).mean(-1)


def tube_mask(batch: int, steps: int, patches: int, n_masked: int, generator: torch.Generator | None = None):
    """``[batch, steps * patches]`` booleans, True where hidden: ``n_masked`` patches a clip, the same ones
    at every time step (V-JEPA's tubes, so a hidden patch cannot be copied from the next frame)."""
    if not 0 < n_masked < patches:
        raise ValueError(f"mask between 1 and {patches - 1} of {patches} patches, got {n_masked}")
    order = torch.rand(batch, patches, generator=generator).argsort(1)
    hidden = torch.zeros(batch, patches, dtype=torch.bool)
    hidden.scatter_(1, order[:, :n_masked], True)
    return hidden[:, None, :].expand(batch, steps, patches).reshape(batch, steps * patches)


def visible_index(masked: torch.Tensor) -> torch.Tensor:
    """``[B, K]``: the positions of the visible tokens, in order (every clip must hide as many)."""
    counts = (~masked).sum(1)
    if (counts != counts[0]).any():
        raise ValueError("every clip must have the same number of visible tokens")
    return (~masked).nonzero()[:, 1].reshape(masked.shape[0], int(counts[0]))


def spacetime_sincos(steps: int, side: int, dim: int) -> torch.Tensor:
    """``[steps side^2, dim]``: half the channels a 2D sin-cos code of the patch
    (:func:`~distill_lab.video.nets.spatial_sincos`), half a 1D one of the time step."""
    half = dim // 2
    space = spatial_sincos(side, half)                                             # [N, half]
    q = (dim - half) // 2
    freqs = 1.0 / (10.0 ** (torch.arange(q, dtype=torch.float64) / max(1, q)))
    t = torch.arange(steps, dtype=torch.float64)[:, None] * freqs
    time = F.pad(torch.cat([t.sin(), t.cos()], 1), (0, dim - half - 2 * q)).float()  # [T, dim - half]
    return torch.cat([space[None].expand(steps, -1, -1), time[:, None].expand(-1, side * side, -1)], -1) \
        .reshape(steps * side * side, dim)


# ================================================================ networks
def _blocks(dim: int, heads: int, depth: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class SpaceTimeEncoder(nn.Module):
    """A small space-time transformer over tubelet tokens: ``encoder(x [B, F, 1, R, R], keep [B, K] or None)
    -> [B, K (or T N), dim]``. With ``keep`` only those tokens enter (the masked ones are dropped before the
    first layer, so nothing of them reaches the output)."""

    def __init__(self, s: ReprSettings):
        super().__init__()
        self.s = s
        self.steps, self.side = s.frames // s.tubelet, s.resolution // s.patch
        self.n_tokens = self.steps * self.side ** 2
        self.embed = nn.Linear(s.tubelet * s.patch * s.patch, s.dim)
        self.register_buffer("pos", spacetime_sincos(self.steps, self.side, s.dim), persistent=False)
        self.blocks = _blocks(s.dim, s.heads, s.depth)
        self.norm = nn.LayerNorm(s.dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        s = self.s
        if x.dim() != 5 or tuple(x.shape[1:]) != (s.frames, 1, s.resolution, s.resolution):
            raise ValueError(f"clips must be [B, {s.frames}, 1, {s.resolution}, {s.resolution}], got {tuple(x.shape)}")
        h = self.embed(tokenize(x, s.tubelet, s.patch)) + self.pos
        if keep is not None:
            h = torch.gather(h, 1, keep[..., None].expand(-1, -1, h.shape[-1]))
        return self.norm(self.blocks(h))


class Predictor(nn.Module):
    """V-JEPA's predictor: the student's visible tokens in place, a learned mask token (plus the position
    code) at every hidden one, a few transformer layers; returns ``[B, T N, dim]`` (read at the hidden
    tokens)."""

    def __init__(self, s: ReprSettings):
        super().__init__()
        steps, side = s.frames // s.tubelet, s.resolution // s.patch
        self.n_tokens = steps * side ** 2
        self.inp = nn.Linear(s.dim, s.dim)
        self.mask_token = nn.Parameter(torch.zeros(s.dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("pos", spacetime_sincos(steps, side, s.dim), persistent=False)
        self.blocks = _blocks(s.dim, s.heads, s.pred_depth)
        self.out = nn.Sequential(nn.LayerNorm(s.dim), nn.Linear(s.dim, s.dim))

    def forward(self, context: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, K, D = context.shape
        h = self.mask_token.expand(B, self.n_tokens, D).clone()
        h = h.scatter(1, keep[..., None].expand(-1, -1, D), self.inp(context))
        return self.out(self.blocks(h + self.pos))


# ================================================================ UniSurg's variants
@dataclass(frozen=True)
class Variant:
    """Which of UniSurg's terms are on: the motion weight ``alpha`` (0: V-JEPA's plain L1), affinity
    self-distillation, diversity (their weights come from :class:`ReprSettings`)."""

    motion: bool = False
    affinity: bool = False
    diversity: bool = False


VARIANTS = {
    "masked latents (V-JEPA)": Variant(),
    "+ motion weighting": Variant(motion=True),
    "+ affinity SD": Variant(motion=True, affinity=True),
    "+ affinity SD + diversity (UniSurg)": Variant(motion=True, affinity=True, diversity=True),
}


def unisurg_loss(student: SpaceTimeEncoder, predictor: Predictor, teacher: SpaceTimeEncoder, x: torch.Tensor,
                 masked: torch.Tensor, variant: Variant, s: ReprSettings):
    """One UniSurg objective on clips ``x`` with hidden tokens ``masked [B, T N]``. Returns ``(loss, info)``.

    * the **teacher** (EMA of the student) encodes the *whole* clip under ``torch.no_grad`` (stop-gradient),
      its tokens layer-normed: the targets;
    * the **student** encodes the visible tokens only; the **predictor** fills in the hidden ones;
    * latent loss: :func:`~distill_lab.methods.video_ssl.motion_weighted_latent_loss` at the hidden tokens
      (``alpha = s.alpha`` with motion, 0 without);
    * affinity: :func:`~distill_lab.methods.video_ssl.affinity_sd_loss` between the student's visible tokens
      and the teacher's tokens at the same places;
    * diversity: :func:`~distill_lab.methods.video_ssl.diversity_loss` on the student's visible tokens.
    """
    with torch.no_grad():
        target = F.layer_norm(teacher(x), (s.dim,))
    keep = visible_index(masked)
    ctx = student(x, keep)
    pred = predictor(ctx, keep)
    motion = token_motion(x, s.tubelet, s.patch)
    loss, _ = motion_weighted_latent_loss(pred, target, masked, motion, s.alpha if variant.motion else 0.0)
    info = {"latent": float(loss.detach())}
    if variant.affinity:
        t_vis = torch.gather(target, 1, keep[..., None].expand(-1, -1, s.dim))
        aff, _ = affinity_sd_loss(ctx, t_vis, s.tau_s, s.tau_t)
        loss = loss + s.w_aff * aff
        info["affinity"] = float(aff.detach())
    if variant.diversity:
        div, _ = diversity_loss(ctx)
        loss = loss + s.w_div * div
        info["diversity"] = float(div.detach())
    info["loss"] = float(loss.detach())
    return loss, info


@dataclass
class ReprData:
    """The pre-training pool (unlabelled) and the probe's labelled train and test clips of one seed."""

    pool: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @classmethod
    def make(cls, s: ReprSettings, seed: int) -> "ReprData":
        g = torch.Generator().manual_seed(10_000 + seed)
        pool, _ = motion_clips(s.n_pretrain, s, g)
        xtr, ytr = motion_clips(s.n_probe_train, s, g)
        xte, yte = motion_clips(s.n_probe_test, s, g)
        return cls(pool, xtr, ytr, xte, yte)


def pretrain(variant: Variant, s: ReprSettings, data: ReprData, seed: int, steps: int | None = None):
    """Train a student, its predictor and its EMA teacher from ``seed`` on ``data.pool`` for ``steps``
    (default ``s.steps``) AdamW steps; the teacher follows ``ema_update`` after each. The masks and the
    batches come from a generator seeded by ``seed`` alone, so every variant of one seed sees the same
    clips with the same masks. Returns ``(student, teacher, history)``."""
    seed_everything(seed)
    student, predictor = SpaceTimeEncoder(s), Predictor(s)
    teacher = clone_frozen(student)
    opt = torch.optim.AdamW([*student.parameters(), *predictor.parameters()], lr=s.lr, weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    side2 = (s.resolution // s.patch) ** 2
    n_masked = max(1, round(s.mask_ratio * side2))
    hist: dict[str, list] = {}
    for _ in range(s.steps if steps is None else steps):
        idx = torch.randint(0, data.pool.shape[0], (s.batch,), generator=g)
        masked = tube_mask(s.batch, s.frames // s.tubelet, side2, n_masked, g)
        loss, info = unisurg_loss(student, predictor, teacher, data.pool[idx], masked, variant, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(teacher, student, s.ema)
        for k, v in info.items():
            hist.setdefault(k, []).append(v)
    return student, teacher, hist


@torch.no_grad()
def pooled_features(encoder: SpaceTimeEncoder, clips: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``[n, dim]``: the encoder's tokens of the whole clip, averaged (frozen features for the probe)."""
    return torch.cat([encoder(clips[i:i + batch]).mean(1) for i in range(0, clips.shape[0], batch)])


def judge(encoder: SpaceTimeEncoder, data: ReprData) -> dict:
    """``{"probe": test accuracy of the ridge probe of the motion class (in [0, 1]), "erank": effective rank
    of the held-out features}`` (:func:`~distill_lab.metrics.representation.linear_probe`,
    :func:`~distill_lab.metrics.representation.effective_rank`)."""
    ftr, fte = pooled_features(encoder, data.x_train), pooled_features(encoder, data.x_test)
    return {"probe": linear_probe(ftr, data.y_train, fte, data.y_test), "erank": effective_rank(fte)}


def pixel_probe(data: ReprData) -> float:
    """The probe on the raw pixels of the whole clip (a reference: a linear read-out of the frames)."""
    return linear_probe(data.x_train.flatten(1), data.y_train, data.x_test.flatten(1), data.y_test, l2=1e-1)


def run_seed(s: ReprSettings, seed: int, variants: dict | None = None, on_run=None,
             encoders: dict | None = None) -> dict:
    """Every variant (default :data:`VARIANTS`) pre-trained from ``seed``, and the floor (a random-init
    encoder from the same seed) and the pixel reference: ``{name: {"probe", "erank"}}``, the EMA teacher
    judged (V-JEPA's target encoder). ``on_run(name)`` is called after each variant (a progress bar);
    ``encoders``, when given, receives ``{name: teacher}``."""
    data = ReprData.make(s, seed)
    seed_everything(seed)
    floor = SpaceTimeEncoder(s)
    out = {"random init (floor)": judge(floor, data),
           "raw pixels": {"probe": pixel_probe(data), "erank": float("nan")}}
    if encoders is not None:
        encoders["random init (floor)"] = floor
    for name, v in (VARIANTS if variants is None else variants).items():
        _, teacher, hist = pretrain(v, s, data, seed)
        out[name] = {**judge(teacher, data), "final_loss": sum(hist["loss"][-10:]) / len(hist["loss"][-10:])}
        if encoders is not None:
            encoders[name] = teacher
        if on_run is not None:
            on_run(name)
    return out


# ================================================================ FFP-300K's toy
def ffp_pairs(n: int, frames: int, resolution: int, generator: torch.Generator, edited: bool = True,
              sigma: float = 0.07, margin: float = 0.15, speed: tuple[float, float] = (0.04, 0.08)):
    """Source clips and their edits, ``(source, target)`` ``[n, frames, 1, R, R]`` each.

    A sprite (width ``sigma``, peak 1) moves with the toy world's physics (straight lines, elastic walls at
    ``margin``) in front of one dim static blob (peak 0.5). The edit changes the sprite's appearance only:
    width times ``U(1.3, 1.8)`` and peak ``U(0.45, 0.75)``; the motion and the static blob are the source's.
    With ``edited=False`` the target *is* the source (the identity-propagation task)."""
    from .world import World

    w = World(n_sprites=1, sigma=sigma, margin=margin, speed_min=speed[0], speed_max=speed[1], kick_prob=0.0)
    states = w.simulate(n, frames, generator=generator)[..., :2]                      # [n, F, 1, 2]
    still = margin + (1 - 2 * margin) * torch.rand(n, 1, 1, 2, generator=generator, dtype=torch.float64)
    pos = torch.cat([states, still.expand(n, frames, 1, 2)], 2)
    base_sig = torch.full((n, 2), sigma, dtype=torch.float64)
    base_lvl = torch.tensor([1.0, 0.5], dtype=torch.float64).expand(n, 2)
    source = render_blobs(pos, base_sig, base_lvl, resolution)
    if not edited:
        return source, source.clone()
    scale = 1.3 + 0.5 * torch.rand(n, generator=generator, dtype=torch.float64)
    peak = 0.45 + 0.3 * torch.rand(n, generator=generator, dtype=torch.float64)
    sig = torch.stack([sigma * scale, torch.full_like(scale, sigma)], 1)
    lvl = torch.stack([peak, torch.full_like(peak, 0.5)], 1)
    return source, render_blobs(pos, sig, lvl, resolution)


class Propagator(nn.Module):
    """A first-frame propagator stepping frame to frame: ``e_t = e_{t-1} + net(e_{t-1}, s_{t-1}, s_t)``, three
    3x3 convolutions of ``width`` channels (a 7-pixel field, more than a frame's move); the last layer starts
    at zero, so the untrained propagator holds the first frame still."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(width, 1, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, source: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """The propagated clip ``[B, F, 1, R, R]`` from the source ``[B, F, 1, R, R]`` and a first frame
        ``[B, 1, R, R]`` (its frame 0 is ``first``)."""
        if source.dim() != 5 or first.shape != source.shape[:1] + source.shape[2:]:
            raise ValueError(f"source must be [B, F, 1, R, R] and first [B, 1, R, R]; got {tuple(source.shape)}, "
                             f"{tuple(first.shape)}")
        out = [first]
        for t in range(1, source.shape[1]):
            out.append(out[-1] + self.net(torch.cat([out[-1], source[:, t - 1], source[:, t]], 1)))
        return torch.stack(out, 1)


def identity_propagation_loss(model: Propagator, source: torch.Tensor) -> torch.Tensor:
    """FFP-300K's identity-propagation regulariser: the *unedited* first frame given, the model must give
    back the source clip itself, ``mean |model(s, s_0) - s|^2`` over the frames after the first. The target
    is the data (no stop-gradient is needed); the model is the one being trained on edits."""
    return F.mse_loss(model(source, source[:, 0])[:, 1:], source[:, 1:])


@dataclass
class FFPData:
    """A few edit pairs for training, identity sources (unedited clips), held-out edit pairs over the long
    horizon."""

    src: torch.Tensor
    tgt: torch.Tensor
    identity: torch.Tensor
    test_src: torch.Tensor
    test_tgt: torch.Tensor

    @classmethod
    def make(cls, s: ReprSettings, seed: int) -> "FFPData":
        g = torch.Generator().manual_seed(20_000 + seed)
        src, tgt = ffp_pairs(s.ffp_pairs, s.ffp_frames, s.resolution, g)
        ident, _ = ffp_pairs(s.ffp_identity, s.ffp_frames, s.resolution, g, edited=False)
        ts, tt = ffp_pairs(s.ffp_n_test, s.ffp_eval_frames, s.resolution, g)
        return cls(src, tgt, ident, ts, tt)


def train_ffp(s: ReprSettings, data: FFPData, seed: int, identity_weight: float) -> tuple[Propagator, list]:
    """Train a :class:`Propagator` from ``seed`` for ``s.ffp_steps`` Adam steps on the edit pairs (MSE to
    the rendered edit over ``s.ffp_frames`` frames, back-propagated through the rollout), plus
    ``identity_weight`` times :func:`identity_propagation_loss` on a batch of identity sources (0: off; the
    edit batches are the same either way)."""
    seed_everything(seed)
    model = Propagator(s.ffp_width)
    opt = torch.optim.Adam(model.parameters(), lr=s.ffp_lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(s.ffp_steps):
        i = torch.randint(0, data.src.shape[0], (s.ffp_batch,), generator=g)
        j = torch.randint(0, data.identity.shape[0], (s.ffp_batch,), generator=g)
        loss = F.mse_loss(model(data.src[i], data.tgt[i, 0])[:, 1:], data.tgt[i, 1:])
        if identity_weight:
            loss = loss + identity_weight * identity_propagation_loss(model, data.identity[j])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model, losses


@torch.no_grad()
def ffp_errors(model: Propagator | None, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """``[F]``: the mean squared error of each propagated frame against the rendered edit (``model=None``:
    the source clip itself, the propagator that ignores the edit)."""
    out = src if model is None else model(src, tgt[:, 0])
    return ((out - tgt) ** 2).mean((0, 2, 3, 4))


def run_ffp_seed(s: ReprSettings, seed: int, on_run=None, models: dict | None = None) -> dict:
    """Edit pairs only against edit pairs + identity propagation, from ``seed``: ``{name: per-frame error
    [F] as a list}``, plus the source clip as a reference. ``on_run(name)`` is called after each model;
    ``models``, when given, receives ``{name: propagator, "data": FFPData}``."""
    data = FFPData.make(s, seed)
    out = {"copy the source (ignores the edit)": ffp_errors(None, data.test_src, data.test_tgt).tolist()}
    if models is not None:
        models["data"] = data
    for name, w in (("edit pairs only", 0.0), ("+ identity propagation", s.ffp_identity_weight)):
        model, _ = train_ffp(s, data, seed, w)
        out[name] = ffp_errors(model, data.test_src, data.test_tgt).tolist()
        if models is not None:
            models[name] = model
        if on_run is not None:
            on_run(name)
    return out


def late_error(errors: list, trained_frames: int) -> float:
    """Mean error over the frames past the training horizon (the drift)."""
    return sum(errors[trained_frames:]) / max(1, len(errors) - trained_frames)


__all__ = ["FFPData", "Predictor", "Propagator", "ReprData", "ReprSettings", "SETTINGS", "SpaceTimeEncoder",
           "VARIANTS", "Variant", "ffp_errors", "ffp_pairs", "identity_propagation_loss", "judge", "late_error",
           "motion_class", "motion_clips", "pixel_probe", "pooled_features", "pretrain", "render_blobs",
           "run_ffp_seed", "run_seed", "spacetime_sincos", "token_motion", "tokenize", "train_ffp", "tube_mask",
           "unisurg_loss", "visible_index"]
