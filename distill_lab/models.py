"""Time-conditioned networks and the wrappers that give them meaning.

* :class:`TimeMLP` is ``net(x, *times)``: an MLP on ``x: [B, d]`` and one or more times ``[B]``
  (Fourier features). With one time it is a velocity field ``v(x, t)``; with two it is the
  ``V(x, s, t)`` inside a flow map.
* :class:`FlowMap` turns a two-time net into ``X_{s,t}(x) = x + (t - s) V(x, s, t)`` (Boffi et al.
  2025, "How to build a consistency model", eq. 2.6), with ``velocity(x, t) = V(x, t, t)`` on the
  diagonal and the time and space derivatives computed by ``torch.func.jvp``.
* :class:`ConsistencyFunction` is ``f(x, t) = x + (1 - t) F(x, t)``: the flow map to data ``t = 1``,
  so ``f(x, 1) = x`` holds by construction (Song et al. 2023, eq. 7, in this lab's time direction).
* :class:`OneStepGenerator` is ``G(z) = z + v(z, 0)``: one Euler step of a velocity-shaped net, so
  that it starts as the teacher's one-step sample when copied from the teacher.

Every wrapper accepts ``[B, ...]`` inputs; :class:`TimeMLP` itself flattens the trailing dims so the
same toy networks also run on small images in tests.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .flows import batch_t, expand_t


class FourierTime(nn.Module):
    """Features ``[t, sin(pi 2^k t), cos(pi 2^k t)]`` for ``k < n_freq``: smooth in ``t``."""

    def __init__(self, n_freq: int = 8):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq).float(), persistent=False)
        self.dim = 1 + 2 * n_freq

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        ang = t[:, None] * self.freqs
        return torch.cat([t[:, None], torch.sin(ang), torch.cos(ang)], 1)


class TimeMLP(nn.Module):
    """``net(x, *times)``: an MLP on a flattened ``x`` and ``n_times`` Fourier-embedded times.

    ``dim`` is the flattened data size (2 for toy points). SiLU activations, ``depth`` hidden layers of
    ``width`` units. The output has ``x``'s shape.
    """

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, n_times: int = 1, n_freq: int = 8):
        super().__init__()
        self.dim, self.width, self.depth, self.n_times = dim, width, depth, n_times
        self.time = FourierTime(n_freq)
        layers = [nn.Linear(dim + n_times * self.time.dim, width), nn.SiLU()]
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
        feats = [flat] + [self.time(batch_t(t, x)) for t in times]
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
        new = cls(net.dim, net.width, net.depth, n_times, n_freq=(net.time.dim - 1) // 2)
        sd = copy.deepcopy(net.state_dict())
        w = sd["net.0.weight"]
        extra = torch.zeros(w.shape[0], (n_times - net.n_times) * net.time.dim, dtype=w.dtype)
        sd["net.0.weight"] = torch.cat([w, extra], 1)
        new.load_state_dict(sd)
        return new.to(w.device)


def n_params(module: nn.Module) -> int:
    """Number of parameters (trainable or frozen)."""
    return sum(p.numel() for p in module.parameters())


class FlowMap(nn.Module):
    """``X_{s,t}(x) = x + (t - s) V(x, s, t)`` around a two-time network ``V``.

    Boffi, Albergo & Vanden-Eijnden (2025), "How to build a consistency model: learning flow maps via
    self-distillation", eq. (2.6). ``X_{s,s} = id`` holds by construction, and
    ``lim_{t->s} dX_{s,t}/dt = V(x, s, s)``, so the diagonal is a velocity field.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, t = batch_t(s, x), batch_t(t, x)
        return x + expand_t(t - s, x) * self.net(x, s, t)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The diagonal ``v(x, t) = V(x, t, t)``: the velocity this map is the flow of."""
        t = batch_t(t, x)
        return self.net(x, t, t)

    def jvp_t(self, x, s, t):
        """``(X_{s,t}(x), d/dt X_{s,t}(x))`` in one forward-mode pass."""
        s, t = batch_t(s, x), batch_t(t, x)
        return torch.func.jvp(lambda tt: self(x, s, tt), (t,), (torch.ones_like(t),))

    def jvp_s(self, x, s, t):
        """``(X_{s,t}(x), d/ds X_{s,t}(x))``."""
        s, t = batch_t(s, x), batch_t(t, x)
        return torch.func.jvp(lambda ss: self(x, ss, t), (s,), (torch.ones_like(s),))

    def jvp_x(self, x, s, t, v):
        """``(X_{s,t}(x), grad_x X_{s,t}(x) . v)``: the spatial derivative along ``v``."""
        s, t = batch_t(s, x), batch_t(t, x)
        return torch.func.jvp(lambda xx: self(xx, s, t), (x,), (v,))

    @torch.no_grad()
    def sample(self, z: torch.Tensor, nfe: int = 1, t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
        """Jump from noise ``z`` at ``t0`` to ``t1`` in ``nfe`` uniform flow-map steps."""
        ts = torch.linspace(t0, t1, nfe + 1, device=z.device)
        x = z
        for i in range(nfe):
            x = self(x, ts[i], ts[i + 1])
        return x


class ConsistencyFunction(nn.Module):
    """``f(x, t) = x + (1 - t) F(x, t)``: maps a point at time ``t`` to data at ``t = 1``.

    Song, Dhariwal, Chen & Sutskever (2023), "Consistency models", eq. (7): the boundary condition
    ``f(x, 1) = x`` (their ``f(x, eps) = x``, in this lab's time direction) is built in. Initialised
    from a teacher velocity net, ``f`` is the teacher's one Euler step to ``t = 1``.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_t(t, x)
        return x + expand_t(1 - t, x) * self.net(x, t)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, nfe: int = 1) -> torch.Tensor:
        """Multistep consistency sampling (Song et al. 2023, Algorithm 1): jump to data, re-noise to
        the next time on a uniform grid with fresh noise, jump again."""
        ts = torch.linspace(0, 1, nfe + 1, device=z.device)
        x = self(z, ts[0])
        for i in range(1, nfe):
            t = ts[i]
            x = self((1 - t) * torch.randn_like(x) + t * x, t)
        return x


class OneStepGenerator(nn.Module):
    """``G(z) = z + v(z, 0)``: a one-step generator with the shape of one Euler step.

    Copy the teacher's velocity net into it and it starts as the teacher's 1-NFE Euler sample: the
    usual initialisation of DMD and trajectory-distillation students.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.net(z, torch.zeros(z.shape[0], device=z.device, dtype=z.dtype))

    @torch.no_grad()
    def sample(self, z: torch.Tensor, nfe: int = 1) -> torch.Tensor:
        if nfe != 1:
            raise ValueError(f"a one-step generator samples with nfe=1 only, got nfe={nfe}")
        return self(z)


class VelocityStudent(nn.Module):
    """A student that samples like a teacher: ``nfe`` Euler steps of its own velocity net."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x, t)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, nfe: int = 1) -> torch.Tensor:
        from .flows import sample_ode
        return sample_ode(self.net, z, nfe, "euler")


def clone_frozen(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False`` everywhere (for EMA targets and frozen teachers)."""
    m = copy.deepcopy(module)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * source``, parameter by parameter."""
    for pt, ps in zip(target.parameters(), source.parameters()):
        pt.lerp_(ps.detach(), 1 - decay)
