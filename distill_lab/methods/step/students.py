"""The student parametrisations every step-distillation recipe shares: wrappers that give a
time-conditioned network (:class:`~distill_lab.nets.mlp.TimeMLP`, :class:`~distill_lab.nets.unet.TimeUNet`)
its meaning.

* :class:`FlowMap` turns a two-time net into ``X_{s,t}(x) = x + (t - s) V(x, s, t)`` (Boffi et al.
  2025, "How to build a consistency model", eq. 2.6), with ``velocity(x, t) = V(x, t, t)`` on the
  diagonal and the time and space derivatives computed by ``torch.func.jvp``.
* :class:`ConsistencyFunction` is ``f(x, t) = x + (1 - t) F(x, t)``: the flow map to data ``t = 1``,
  so ``f(x, 1) = x`` holds by construction (Song et al. 2023, eq. 7, in this lab's time direction).
* :class:`OneStepGenerator` is ``G(z) = z + v(z, 0)``: one Euler step of a velocity-shaped net, so
  that it starts as the teacher's one-step sample when copied from the teacher.
* :class:`VelocityStudent`: a student that samples like a teacher, by Euler steps of its own velocity.

Every wrapper accepts ``[B, ...]`` inputs and has ``sample(z, nfe)``, the interface the bench evaluates.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.flows import batch_t, expand_t, sample_ode


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
        return sample_ode(self.net, z, nfe, "euler")
