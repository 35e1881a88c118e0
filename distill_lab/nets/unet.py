"""A small time-conditioned U-Net for images, called exactly like :class:`~distill_lab.nets.mlp.TimeMLP`.

``net(x, *times)`` with ``x: [B, C, H, W]`` and ``n_times`` time tensors ``[B]`` (or scalars) returns a
tensor shaped like ``x``. With one time it is a velocity field ``v(x, t)``; with two it is the
``V(x, s, t)`` inside a :class:`~distill_lab.methods.step.students.FlowMap`, and :meth:`TimeUNet.from_net` turns a
one-time teacher into a two-time student that computes the teacher's Euler step at initialisation.
The wrappers of :mod:`distill_lab.nets.mlp` and the shape-generic losses of :mod:`distill_lab.methods`
take it in place of the MLP, unchanged.

The shape is the U-Net of Ronneberger et al. (2015) as diffusion models use it (Ho et al. 2020,
"Denoising diffusion probabilistic models", appendix B), cut down to what a CPU can train:

* a 3x3 stem convolution to ``base`` channels;
* one level per entry of ``mults`` (``len(mults)`` resolutions, e.g. 16 -> 8 pixels for ``(1, 2)``
  or 32 -> 16 -> 8 for ``(1, 2, 2)``), each with ``blocks`` residual blocks at ``base * mult``
  channels, and a stride-2 convolution between levels;
* a middle of two residual blocks at the lowest resolution, with an optional self-attention layer
  between them (``attention=True``);
* optionally, a self-attention layer after every residual block of the levels in ``attn_levels``
  (encoder and decoder), as DDPM puts attention at its 16 x 16 level: ``attn_levels=(0,)`` attends
  over all ``H * W`` pixels of the first level;
* the mirror-image decoder: nearest-neighbour upsampling and residual blocks that take the encoder's
  activation at the same resolution concatenated on the channels (the skip connections);
* GroupNorm, SiLU and a 3x3 convolution back to ``channels``.

A residual block is ``x + conv(SiLU(GN(conv(SiLU(GN(x))) + W SiLU(e))))`` (a 1x1 convolution on the
shortcut where the width changes), where ``e`` is the time embedding: the per-block additive
conditioning of Ho et al. (2020).

**Time features and why they are low-frequency.** Each time ``t`` becomes
``[t, sin(pi 2^k t), cos(pi 2^k t)]`` for ``k < n_freq`` (:class:`~distill_lab.nets.mlp.FourierTime`),
then a two-layer MLP. The default ``n_freq = 5`` tops out at ``16 pi ~ 50`` rad per unit time, so
``|d features / dt| <= 16 pi``. Continuous-time consistency (sCM, Lu & Song 2024) and the Eulerian
flow-map loss train on ``d/dt`` of the network itself through ``torch.func.jvp``; on the toy track,
features up to ``128 pi`` made that derivative large and sCM unstable. DDPM's sinusoidal embedding
of the step index ``0..1000`` reaches 1000 rad per unit of ``t`` (about ``318 pi``); a flow-matching
net on ``t in [0, 1]`` does not need that, and the MLP after the features can still build sharper
functions of ``t`` if training asks for them.

Sizes (``n_params``; multiply-adds of the convolutions and linear layers for one image, which is what
the CPU time follows: on one thread a forward + backward pass of a batch of 64 costs roughly
3 to 4 ms per million multiply-adds an image). Three channels, one time, ``blocks=1``, ``n_freq=5``:

=================================================  ===========  ==========  =============
``TimeUNet(...)``                                   parameters   image       M mult-adds
=================================================  ===========  ==========  =============
``base=32, mults=(1, 2)`` (the defaults)               454,627   16 x 16           36.7
``base=32, mults=(1, 2), attention=True``              471,395   16 x 16           37.8
``base=24, mults=(1, 2)``                              256,875   16 x 16           20.8
``base=16, mults=(1, 4)``                              361,971   16 x 16           25.5
``base=16, mults=(1, 3)``                              219,635   16 x 16           16.2
``base=16, mults=(1, 2, 4)`` (16 -> 8 -> 4)            435,283   16 x 16           12.9
``base=64, mults=(1, 2, 2)``                         2,791,619   32 x 32          529.2
=================================================  ===========  ==========  =============

With two resolutions most parameters sit at the lower one, so the multiply-adds an image are
roughly ``(H / 2) * (W / 2)`` times the parameter count or more: 64 or more per parameter at 16 x 16. A third,
4 x 4 level holds parameters for a quarter of that.

    >>> from distill_lab.nets.unet import TimeUNet
    >>> from distill_lab.nets.mlp import n_params
    >>> n_params(TimeUNet(base=32, mults=(1, 2)))
    454627
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from ..core.flows import batch_t
from .attention import ATTENTION_KINDS, Attention, group_norm
from .mlp import FourierTime


class ResBlock(nn.Module):
    """``h = conv1(SiLU(GN(x))) + W SiLU(e);  out = shortcut(x) + conv2(SiLU(GN(h)))`` (Ho et al. 2020).

    ``e: [B, emb_dim]`` is the time embedding, projected to a per-channel shift ``W SiLU(e)`` and added
    once per block. The shortcut is the identity, or a 1x1 convolution where the width changes.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = group_norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class TimeUNet(nn.Module):
    """``net(x, *times)``: a U-Net velocity network for images ``x: [B, C, H, W]``.

    Parameters
    ----------
    channels : image channels (3 for CIFAR-10).
    base : width of the first level; level ``i`` has ``base * mults[i]`` channels.
    mults : one entry per resolution; ``H`` and ``W`` must be divisible by ``2 ** (len(mults) - 1)``.
    n_times : how many time arguments ``forward`` takes (1: velocity, 2: flow map).
    attention : put one :class:`Attention` layer in the middle, at the lowest resolution.
    attn_levels : level indices (0 = full resolution) with an :class:`Attention` layer after each
        residual block, encoder and decoder; ``()`` for none.
    attn_kind : ``"softmax"`` or ``"linear"`` (see :class:`Attention`).
    heads : attention heads.
    blocks : residual blocks per level in the encoder (the decoder has the same number).
    n_freq : Fourier frequencies of each time, ``pi 2^k`` for ``k < n_freq`` (module docstring).
    emb_dim : width of the time embedding; ``4 * base`` by default.
    groups : GroupNorm groups (reduced to a divisor of each width).
    cond_channels : channels of an image condition ``cond: [B, cond_channels, H, W]`` (e.g. the
        upsampled low-resolution image of super-resolution) concatenated to ``x`` at the input; the
        output keeps ``channels``. ``0``: no condition.
    """

    def __init__(self, channels: int = 3, base: int = 32, mults=(1, 2), n_times: int = 1,
                 attention: bool = False, attn_kind: str = "softmax", heads: int = 1, blocks: int = 1,
                 n_freq: int = 5, emb_dim: int | None = None, groups: int = 8, attn_levels=(),
                 cond_channels: int = 0):
        super().__init__()
        mults = tuple(int(m) for m in mults)
        attn_levels = tuple(sorted({int(a) for a in attn_levels}))
        if any(a < 0 or a >= len(mults) for a in attn_levels):
            raise ValueError(f"attn_levels {attn_levels} must be level indices in 0..{len(mults) - 1}")
        if not mults or min(mults) < 1 or channels < 1 or base < 1 or blocks < 1 or n_times < 1:
            raise ValueError("TimeUNet needs channels, base, blocks, n_times >= 1 and a non-empty mults of positive ints")
        if attn_kind not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {attn_kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")
        emb_dim = emb_dim or 4 * base
        self.config = dict(channels=channels, base=base, mults=mults, n_times=n_times, attention=attention,
                           attn_kind=attn_kind, heads=heads, blocks=blocks, n_freq=n_freq, emb_dim=emb_dim,
                           groups=groups)
        if attn_levels:  # only when used, so configurations saved before the option still compare equal
            self.config["attn_levels"] = attn_levels
        if cond_channels < 0:
            raise ValueError(f"cond_channels must be >= 0, got {cond_channels}")
        if cond_channels:  # likewise
            self.config["cond_channels"] = int(cond_channels)
        self.channels, self.n_times, self.mults, self.cond_channels = channels, n_times, mults, int(cond_channels)

        self.time = FourierTime(n_freq)
        self.time_mlp = nn.Sequential(nn.Linear(n_times * self.time.dim, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))

        widths = [base * m for m in mults]
        self.stem = nn.Conv2d(channels + cond_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        # attention after block j of level i: "d{i}_{j}" (encoder), "u{i}_{j}" (decoder); empty if unused
        self.level_attn = nn.ModuleDict()
        skips, c = [], base
        for i, w in enumerate(widths):
            level = nn.ModuleList()
            for j in range(blocks):
                level.append(ResBlock(c, w, emb_dim, groups))
                c = w
                skips.append(c)
                if i in attn_levels:
                    self.level_attn[f"d{i}_{j}"] = Attention(w, heads, attn_kind, groups)
            self.down.append(level)
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1 = ResBlock(c, c, emb_dim, groups)
        self.attn = Attention(c, heads, attn_kind, groups) if attention else None
        self.mid2 = ResBlock(c, c, emb_dim, groups)
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            level = nn.ModuleList()
            for j in range(blocks):
                level.append(ResBlock(c + skips.pop(), w, emb_dim, groups))
                c = w
                if i in attn_levels:
                    self.level_attn[f"u{i}_{j}"] = Attention(w, heads, attn_kind, groups)
            self.up.append(level)
        self.out_norm = group_norm(c, groups)
        self.out = nn.Conv2d(c, channels, 3, padding=1)

    def embed(self, x: torch.Tensor, times) -> torch.Tensor:
        """The time embedding ``[B, emb_dim]`` of the ``n_times`` times."""
        return self.time_mlp(torch.cat([self.time(batch_t(t, x)) for t in times], 1))

    def forward(self, x: torch.Tensor, *times: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if len(times) != self.n_times:
            raise ValueError(f"this network takes {self.n_times} time argument(s), got {len(times)}")
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"this network takes images [B, {self.channels}, H, W], got x of shape {tuple(x.shape)}")
        if (cond is None) != (self.cond_channels == 0):
            raise ValueError(f"this network was built with cond_channels={self.cond_channels}: pass cond "
                             f"[B, {self.cond_channels}, H, W] exactly when it is > 0")
        if cond is not None:
            if cond.shape != (x.shape[0], self.cond_channels, *x.shape[2:]):
                raise ValueError(f"cond must be [B, {self.cond_channels}, H, W] = "
                                 f"{(x.shape[0], self.cond_channels, *x.shape[2:])}, got {tuple(cond.shape)}")
            x_in = torch.cat([x, cond], 1)
        else:
            x_in = x
        f = 2 ** (len(self.mults) - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"with {len(self.mults)} resolutions, H and W must be divisible by {f}; "
                             f"got {x.shape[2]}x{x.shape[3]}")
        emb = self.embed(x, times)
        h = self.stem(x_in)
        hs = []
        attn = self.level_attn
        for i, level in enumerate(self.down):
            for j, block in enumerate(level):
                h = block(h, emb)
                if f"d{i}_{j}" in attn:
                    h = attn[f"d{i}_{j}"](h)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid1(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        h = self.mid2(h, emb)
        for k, level in enumerate(self.up):
            i = len(self.up) - 1 - k
            if k > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            for j, block in enumerate(level):
                h = block(torch.cat([h, hs.pop()], 1), emb)
                if f"u{i}_{j}" in attn:
                    h = attn[f"u{i}_{j}"](h)
        return self.out(F.silu(self.out_norm(h)))

    @classmethod
    def from_net(cls, net: "TimeUNet", n_times: int | None = None, attn_kind: str | None = None) -> "TimeUNet":
        """A copy of ``net`` taking ``n_times`` times; extra time inputs start with zero weights.

        So ``FlowMap(TimeUNet.from_net(teacher, 2))`` computes ``V(x, s, t) = v(x, s)`` at
        initialisation: the teacher's Euler step from ``s`` to ``t``. ``attn_kind`` switches the
        copy's attention (``"linear"`` for a LinFusion-style student of a softmax teacher); the
        weights are shared by both kinds.
        """
        n_times = net.n_times if n_times is None else n_times
        if n_times < net.n_times:
            raise ValueError("can only add time inputs, not remove them")
        cfg = dict(net.config, n_times=n_times)
        if attn_kind is not None:
            cfg["attn_kind"] = attn_kind
        new = cls(**cfg)
        sd = copy.deepcopy(net.state_dict())
        w = sd["time_mlp.0.weight"]
        extra = torch.zeros(w.shape[0], (n_times - net.n_times) * net.time.dim, dtype=w.dtype, device=w.device)
        sd["time_mlp.0.weight"] = torch.cat([w, extra], 1)
        new.load_state_dict(sd)
        return new.to(device=w.device, dtype=w.dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
