"""Momentum-GS on a toy scene: block-wise fitting kept consistent by a momentum decoder.

Fan, Li, Zhou & Wu (2024), "Momentum-GS: Momentum Gaussian Self-Distillation for High-Quality Large
Scene Reconstruction" (arXiv 2412.04887). A large scene is split into blocks fitted in parallel;
its representation is hybrid, explicit features (anchors) read by a small implicit decoder. Fitted
alone, each block's decoder sees only its block's data and drifts from the others, so the blocks
disagree where they meet and no single decoder serves the whole scene. Momentum-GS keeps a teacher
decoder, a momentum (EMA) average of the block decoders, and asks each block's decoder to agree with
it on the block's own features (self-distillation); it also weights each block's reconstruction loss by
how badly that block is fitted, so the worst blocks get more of the gradient.

The toy: a 2D RGB field (:func:`toy_scene`) instead of a city, a bilinear feature grid per block
instead of Gaussian anchors, and a pixel's colour read directly instead of splatted. What carries
over is the paper's training structure: :class:`BlockField` (K blocks with their own feature grids,
read by one shared online decoder, or by one decoder per block for the independent baseline),
:func:`fit_blocks` fitting a few blocks a step (``gpus`` of them, a fresh random choice each step, so
the block count is not the worker count), :func:`momentum_consistency_loss` (the online decoder against
the stop-gradient momentum decoder on the block's features) and :func:`block_weights` (weights from the
blocks' reconstruction errors). Measured by :func:`evaluate_blocks`: held-out PSNR with the online
decoder(s) and with one decoder for the whole scene, and the seam error, the disagreement of two
neighbouring blocks on their common edge. Not here: Gaussians, rendering, views, the paper's PSNR-
and SSIM-based weights (mean squared error stands in).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

__all__ = ["toy_scene", "BlockField", "momentum_consistency_loss", "block_weights", "fit_blocks",
           "evaluate_blocks", "sample_pixels", "render"]

PAPER = "Fan et al. 2024, Momentum-GS: Momentum Gaussian Self-Distillation for Large Scene Reconstruction"


def toy_scene(xy: torch.Tensor) -> torch.Tensor:
    """A 2D RGB "scene" on ``[0, 1]^2``: smooth colour gradients, stripes, two discs and a square, so it
    has both slow variation and sharp edges crossing the block boundaries. ``xy: [N, 2]`` -> ``[N, 3]``
    in ``[0, 1]``."""
    if xy.dim() != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must have shape [N, 2], got {tuple(xy.shape)}")
    x, y = xy[:, 0], xy[:, 1]
    r = 0.5 + 0.35 * torch.sin(2 * math.pi * (1.3 * x + 0.4 * y))
    g = 0.5 + 0.35 * torch.cos(2 * math.pi * (0.7 * y - 0.9 * x * y))
    b = 0.5 + 0.25 * torch.sin(9 * math.pi * x) * torch.sin(5 * math.pi * y)
    rgb = torch.stack([r, g, b], 1)
    for cx, cy, rad, col in ((0.32, 0.55, 0.16, (0.95, 0.85, 0.2)), (0.7, 0.3, 0.12, (0.15, 0.3, 0.9))):
        inside = ((x - cx) ** 2 + (y - cy) ** 2 < rad ** 2)[:, None]
        rgb = torch.where(inside, torch.tensor(col, dtype=xy.dtype, device=xy.device), rgb)
    square = ((x - 0.62).abs() < 0.1) & ((y - 0.72).abs() < 0.1)
    rgb = torch.where(square[:, None], torch.tensor((0.9, 0.2, 0.25), dtype=xy.dtype, device=xy.device), rgb)
    return rgb.clamp(0, 1)


def _mean_parameters(decoders) -> list[torch.Tensor]:
    """Parameter by parameter, the mean over ``decoders`` (modules of one architecture)."""
    return [torch.stack(ps).mean(0) for ps in zip(*(d.parameters() for d in decoders))]


def _pixel_centres(res: int) -> torch.Tensor:
    """The ``res * res`` pixel centres of ``[0, 1]^2``, ``[res * res, 2]``, x fastest (row 0 at y near 0)."""
    t = (torch.arange(res).float() + 0.5) / res
    return torch.stack(torch.meshgrid(t, t, indexing="xy"), -1).reshape(-1, 2)


def _decoder(features: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                         nn.Linear(width, 3))


class BlockField(nn.Module):
    """``blocks x blocks`` square blocks tiling ``[0, 1]^2``; block ``b`` has a feature grid
    ``[features, cells, cells]`` over its own square (read bilinearly, edges included), read by a decoder
    (an MLP from a feature vector to RGB). ``shared_decoder=True``: one online decoder for every block
    (Momentum-GS's, trained by whichever blocks are being fitted); ``False``: one decoder per block, all
    from one initialisation (independent block training). ``momentum`` is the momentum (teacher)
    decoder, a frozen copy that :func:`fit_blocks` moves towards the online decoder(s)."""

    def __init__(self, blocks: int = 2, cells: int = 12, features: int = 8, width: int = 32, seed: int = 0,
                 shared_decoder: bool = False):
        super().__init__()
        if blocks < 1 or cells < 2:
            raise ValueError(f"need blocks >= 1 and cells >= 2, got blocks={blocks}, cells={cells}")
        g = torch.Generator().manual_seed(seed)
        self.blocks, self.k = blocks, blocks * blocks
        self.grids = nn.Parameter(0.1 * torch.randn(self.k, features, cells, cells, generator=g))
        torch.manual_seed(seed)
        first = _decoder(features, width)
        self.shared_decoder = shared_decoder
        self.decoders = nn.ModuleList([copy.deepcopy(first) for _ in range(1 if shared_decoder else self.k)])
        self.momentum = copy.deepcopy(first).requires_grad_(False)

    def block_of(self, xy: torch.Tensor) -> torch.Tensor:
        """The index ``[N]`` of the block each point of ``xy: [N, 2]`` lies in (row-major, x fastest)."""
        ij = (xy.clamp(0, 1 - 1e-6) * self.blocks).long()
        return ij[:, 1] * self.blocks + ij[:, 0]

    def local(self, xy: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Coordinates in ``[0, 1]^2`` of ``xy`` inside block ``b`` (a point on an edge may be read by either block)."""
        origin = torch.stack([b % self.blocks, b // self.blocks], 1).to(xy.dtype) / self.blocks
        return ((xy - origin) * self.blocks).clamp(0, 1)

    def features(self, xy: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Block ``b``'s feature at each point: ``[N, features]`` (bilinear, ``align_corners`` so the
        grid's outer cells sit on the block's edges)."""
        uv = self.local(xy, b) * 2 - 1
        grids = self.grids[b]  # [N, C, cells, cells]
        out = F.grid_sample(grids, uv[:, None, None, :], mode="bilinear", align_corners=True)
        return out[:, :, 0, 0]

    def decode(self, feats: torch.Tensor, b: torch.Tensor, decoder: str = "own") -> torch.Tensor:
        """RGB from features: each point's block decoder (``"own"``) or the momentum decoder (``"momentum"``)."""
        if decoder == "momentum":
            return self.momentum(feats)
        if decoder != "own":
            raise ValueError(f"decoder must be 'own' or 'momentum', got {decoder!r}")
        if self.shared_decoder:
            return self.decoders[0](feats)
        out = torch.empty(feats.shape[0], 3, dtype=feats.dtype, device=feats.device)
        for k in b.unique().tolist():
            m = b == k
            out[m] = self.decoders[k](feats[m])
        return out

    def decoder_of(self, k: int) -> nn.Module:
        """The online decoder that reads block ``k``."""
        return self.decoders[0 if self.shared_decoder else k]

    def forward(self, xy: torch.Tensor, b: torch.Tensor | None = None, decoder: str = "own") -> torch.Tensor:
        b = self.block_of(xy) if b is None else b
        return self.decode(self.features(xy, b), b, decoder)

    @torch.no_grad()
    def average_decoder(self) -> nn.Module:
        """One decoder whose weights are the block decoders' mean (what independent blocks can merge into)."""
        avg = copy.deepcopy(self.decoders[0])
        for p, mean in zip(avg.parameters(), _mean_parameters(self.decoders)):
            p.copy_(mean)
        return avg


def momentum_consistency_loss(block_out: torch.Tensor, momentum_out: torch.Tensor) -> torch.Tensor:
    """Momentum-GS's self-distillation term: ``mean || D_b(f) - sg[D_momentum(f)] ||^2`` over the points
    and channels, on the same features ``f`` of block ``b``. The teacher is the momentum decoder (an EMA
    of the block decoders, updated by :func:`fit_blocks`, never by gradient); its output is detached, so
    the gradient reaches only the block's decoder and its features."""
    if block_out.shape != momentum_out.shape:
        raise ValueError(f"block and momentum outputs must have one shape, got {tuple(block_out.shape)} "
                         f"and {tuple(momentum_out.shape)}")
    return (block_out - momentum_out.detach()).pow(2).mean()


def block_weights(errors: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Momentum-GS's block weighting: a block fitted worse than the average gets more weight,
    ``w_b = 1 + strength * (e_b / mean(e) - 1)``, clipped to ``[0.5, 2]`` and renormalised to mean 1.
    ``errors: [K]`` each block's recent reconstruction error (the paper uses PSNR and SSIM deviations;
    here the mean squared error). ``strength = 0`` gives equal weights."""
    if errors.dim() != 1 or (errors < 0).any():
        raise ValueError("errors must be a 1D tensor of non-negative reconstruction errors, one per block")
    w = (1 + strength * (errors / errors.mean().clamp_min(1e-12) - 1)).clamp(0.5, 2.0)
    return w / w.mean()


def sample_pixels(n: int, res: int, seed: int, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` observed pixels of the scene on a ``res x res`` grid (drawn without replacement, seeded),
    with Gaussian noise of std ``noise`` on the colours: ``(xy [n, 2], rgb [n, 3])``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(res * res, generator=g)[:n]
    xy = torch.stack([(idx % res).float(), (idx // res).float()], 1).add(0.5) / res
    rgb = toy_scene(xy)
    return xy, rgb + noise * torch.randn(rgb.shape, generator=g)


def fit_blocks(field: BlockField, xy: torch.Tensor, rgb: torch.Tensor, steps: int = 1500, batch: int = 128,
               lr: float = 1e-2, momentum: bool = True, decay: float = 0.99, consistency: float = 1.0,
               weighting: float = 1.0, gpus: int | None = None, progress: bool = True) -> dict:
    """Fit the blocks on their own observed pixels, ``gpus`` blocks a step (each step a fresh random
    choice, so the number of blocks is not tied to the number of workers; ``None``: every block).

    ``momentum=True`` (Momentum-GS): each fitted block's loss is ``w_b * MSE_b + consistency *``
    :func:`momentum_consistency_loss`, the weights :func:`block_weights` (``weighting``) of the blocks'
    running errors; after each step the momentum decoder moves towards the online decoder (the mean of
    them when each block has its own): ``theta_m <- decay * theta_m + (1 - decay) * theta_online``.
    ``momentum=False``: ``MSE_b`` alone (independent blocks when each has its own decoder). Returns the
    history ``{"loss", "weights"}``.
    """
    b_all = field.block_of(xy)
    own = [torch.nonzero(b_all == k).flatten() for k in range(field.k)]
    if any(len(i) == 0 for i in own):
        raise ValueError("every block needs observed pixels; observe more pixels or use fewer blocks")
    gpus = field.k if gpus is None else gpus
    if not 1 <= gpus <= field.k:
        raise ValueError(f"gpus (blocks fitted a step) must be in [1, {field.k}], got {gpus}")
    opt = torch.optim.Adam([field.grids] + list(field.decoders.parameters()), lr=lr)
    errs = torch.ones(field.k)
    hist = {"loss": [], "weights": []}
    g = torch.Generator().manual_seed(0)
    for _ in tqdm(range(steps), desc="block fitting" + (" (momentum)" if momentum else ""), disable=not progress,
                  leave=False):
        w = block_weights(errs, weighting) if momentum else torch.ones(field.k)
        total = 0.0
        for k in torch.randperm(field.k, generator=g)[:gpus].tolist():
            i = own[k][torch.randint(len(own[k]), (batch,), generator=g)]
            f = field.features(xy[i], torch.full((batch,), k))
            out = field.decoder_of(k)(f)
            rec = (out - rgb[i]).pow(2).mean()
            errs[k] = 0.9 * errs[k] + 0.1 * float(rec.detach())
            loss = w[k] * rec
            if momentum:
                with torch.no_grad():
                    target = field.momentum(f)
                loss = loss + consistency * momentum_consistency_loss(out, target)
            total = total + loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if momentum:
            with torch.no_grad():
                for pm, online in zip(field.momentum.parameters(), _mean_parameters(field.decoders)):
                    pm.lerp_(online, 1 - decay)
        hist["loss"].append(float(total.detach()))
        hist["weights"].append(w.tolist())
    return hist


@torch.no_grad()
def evaluate_blocks(field: BlockField, res: int = 64, edge_points: int = 200, shared: str = "momentum") -> dict:
    """Held-out figures of a fitted :class:`BlockField`, on every pixel centre of a ``res x res`` grid:

    * ``psnr_own``: each pixel read by its block's features and its block's own decoder;
    * ``psnr_shared``: the same features read by one decoder for the whole scene (``shared``: the
      ``"momentum"`` decoder, or ``"average"``, the block decoders' mean: what independent blocks offer);
    * ``seam``: RMS difference of the colours two neighbouring blocks give at ``edge_points`` points of
      each shared edge (each with its own features and decoder), beside ``seam_truth``, the scene's
      own RMS variation across a pixel at those edges (what a seam would be if it were one pixel's error).
    """
    xy = _pixel_centres(res)
    truth = toy_scene(xy)
    b = field.block_of(xy)
    f = field.features(xy, b)

    def psnr(pred):
        return float(10 * torch.log10(1 / (pred.clamp(0, 1) - truth).pow(2).mean()))

    if shared == "momentum":
        shared_out = field.momentum(f)
    elif shared == "average":
        shared_out = field.average_decoder()(f)
    else:
        raise ValueError(f"shared must be 'momentum' or 'average', got {shared!r}")
    gaps, truth_gaps = [], []
    s = (torch.arange(edge_points).float() + 0.5) / edge_points
    n = field.blocks
    for i in range(1, n):  # vertical edges x = i / n, then horizontal edges y = i / n
        for axis in (0, 1):
            at = torch.full_like(s, i / n)
            e = torch.stack([at, s], 1) if axis == 0 else torch.stack([s, at], 1)
            step = torch.zeros(2)
            step[axis] = 1e-4
            lo, hi = field.block_of(e - step), field.block_of(e + step)
            a, c = field(e, lo), field(e, hi)
            gaps.append((a - c).pow(2).sum(1))
            d = torch.zeros(2)
            d[axis] = 0.5 / res
            truth_gaps.append((toy_scene(e - d) - toy_scene(e + d)).pow(2).sum(1))
    out = {"psnr_own": psnr(field.decode(f, b)), "psnr_shared": psnr(shared_out)}
    out["seam"] = float(torch.cat(gaps).mean().sqrt()) if gaps else 0.0
    out["seam_truth"] = float(torch.cat(truth_gaps).mean().sqrt()) if truth_gaps else 0.0
    return out


@torch.no_grad()
def render(field: BlockField, res: int = 64, decoder: str = "own") -> torch.Tensor:
    """The fitted scene on a ``res x res`` grid of pixel centres, ``[res, res, 3]`` in ``[0, 1]`` (row 0 at
    ``y`` near 0): every pixel read by its block's features and ``decoder``: ``"own"`` (the online
    decoder(s)), ``"momentum"`` or ``"average"`` (the block decoders' mean); ``"truth"`` gives the scene."""
    xy = _pixel_centres(res)
    if decoder == "truth":
        out = toy_scene(xy)
    elif decoder == "average":
        b = field.block_of(xy)
        out = field.average_decoder()(field.features(xy, b))
    else:
        out = field(xy, decoder=decoder)
    return out.clamp(0, 1).reshape(res, res, 3)
