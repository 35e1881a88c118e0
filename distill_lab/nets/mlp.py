"""Time-conditioned MLPs: the toy track's networks, and the Fourier time features every time-conditioned
network of the lab shares.

* :class:`FourierTime`: ``t -> [t, sin(pi 2^k t), cos(pi 2^k t)]``, smooth in ``t`` (the U-Net of
  :mod:`distill_lab.nets.unet` and the discriminators of :mod:`distill_lab.methods.step.dmd` use it too).
* :class:`FourierSpace`: the same features of the input coordinates, for MLPs that must draw sharp edges.
* :class:`TimeMLP` is ``net(x, *times)``: an MLP on ``x: [B, d]`` and one or more times ``[B]``.
  With one time it is a velocity field ``v(x, t)``; with two it is the ``V(x, s, t)`` inside a flow
  map (:class:`~distill_lab.methods.step.students.FlowMap`). It flattens the trailing dims, so the
  same toy networks also run on small images in tests.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..core.flows import batch_t


class FourierTime(nn.Module):
    """Features ``[t, sin(pi 2^k t), cos(pi 2^k t)]`` for ``k < n_freq``: smooth in ``t``."""

    def __init__(self, n_freq: int = 8):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq).float(), persistent=False)
        self.dim = 1 + 2 * n_freq

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        ang = t[:, None] * self.freqs
        return torch.cat([t[:, None], torch.sin(ang), torch.cos(ang)], 1)


class FourierSpace(nn.Module):
    """Features ``[x, sin(2 pi 2^k x / P), cos(2 pi 2^k x / P)]`` of each coordinate, ``k < n_freq``.

    Axis-aligned Fourier features of the input (the positional encoding of NeRF; Tancik et al. 2020,
    "Fourier Features Let Networks Learn High Frequency Functions in Low Dimensional Domains", show why an
    MLP on raw coordinates cannot fit sharp edges: its spectral bias favours smooth functions). ``P`` is
    the longest period, in the data's units. With ``n_freq = 0`` this is the identity.
    """

    def __init__(self, n_freq: int = 0, period: float = 3.6):
        super().__init__()
        if n_freq < 0 or period <= 0:
            raise ValueError(f"FourierSpace needs n_freq >= 0 and period > 0, got {n_freq} and {period}")
        self.n_freq, self.period = n_freq, float(period)
        self.register_buffer("freqs", 2 * math.pi * 2.0 ** torch.arange(n_freq).float() / period, persistent=False)

    def dim(self, d: int) -> int:
        """The feature size for ``d`` input coordinates."""
        return d * (1 + 2 * self.n_freq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.n_freq:
            return x
        ang = (x[:, :, None] * self.freqs).flatten(1)
        return torch.cat([x, torch.sin(ang), torch.cos(ang)], 1)


class TimeMLP(nn.Module):
    """``net(x, *times)``: an MLP on a flattened ``x`` and ``n_times`` Fourier-embedded times.

    ``dim`` is the flattened data size (2 for toy points). SiLU activations, ``depth`` hidden layers of
    ``width`` units. The output has ``x``'s shape. ``x_freq > 0`` feeds the MLP Fourier features of
    ``x`` too (:class:`FourierSpace`, longest period ``x_period``): the toy track's networks use 4, which
    lets them draw the checkerboard's square cells where raw coordinates give round blobs.
    """

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, n_times: int = 1, n_freq: int = 8,
                 x_freq: int = 0, x_period: float = 3.6):
        super().__init__()
        self.dim, self.width, self.depth, self.n_times = dim, width, depth, n_times
        self.time = FourierTime(n_freq)
        self.space = FourierSpace(x_freq, x_period)
        layers = [nn.Linear(self.space.dim(dim) + n_times * self.time.dim, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers += [nn.Linear(width, dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, *times: torch.Tensor) -> torch.Tensor:
        if len(times) != self.n_times:
            raise ValueError(f"this network takes {self.n_times} time argument(s), got {len(times)}")
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"this network was built for inputs of size {self.dim}, got x of shape {tuple(x.shape)}")
        feats = [self.space(flat)] + [self.time(batch_t(t, x)) for t in times]
        return self.net(torch.cat(feats, 1)).reshape(x.shape)

    @classmethod
    def from_net(cls, net: "TimeMLP", n_times: int | None = None) -> "TimeMLP":
        """A copy of ``net`` taking ``n_times`` times; extra time inputs start with zero weights.

        So a two-time flow-map net copied from a one-time teacher computes ``V(x, s, t) = v(x, s)``
        at initialisation: the teacher's Euler step.
        """
        n_times = net.n_times if n_times is None else n_times
        if n_times < net.n_times:
            raise ValueError("can only add time inputs, not remove them")
        new = cls(net.dim, net.width, net.depth, n_times, n_freq=(net.time.dim - 1) // 2,
                  x_freq=net.space.n_freq, x_period=net.space.period)
        sd = copy.deepcopy(net.state_dict())
        w = sd["net.0.weight"]
        extra = torch.zeros(w.shape[0], (n_times - net.n_times) * net.time.dim, dtype=w.dtype, device=w.device)
        sd["net.0.weight"] = torch.cat([w, extra], 1)
        new.load_state_dict(sd)
        return new.to(w.device)
