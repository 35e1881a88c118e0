"""Flows: the linear interpolant, flow-matching teacher training, and ODE samplers that count NFE.

Conventions used by every method in distill-lab (read these once):

* time runs from ``t = 0`` (pure noise ``x0 ~ N(0, I)``) to ``t = 1`` (data ``x1``);
* the linear interpolant (rectified flow, Liu et al. 2023; stochastic interpolants, Albergo &
  Vanden-Eijnden 2023) is ``x_t = (1 - t) x0 + t x1`` and its velocity is ``x1 - x0``;
* a *velocity* is a callable ``velocity(x, t) -> Tensor`` with ``x: [B, ...]`` and ``t: [B]``;
* a *flow map* is a callable ``flow_map(x, s, t)`` that transports ``x`` at time ``s`` to time ``t``;
* times are ``[B]`` tensors and are broadcast over the trailing dims with :func:`expand_t`.

Flow matching (Lipman et al. 2023, eq. 23; Liu et al. 2023, eq. 1) regresses the conditional
velocity: ``L(theta) = E_{t, x0, x1} || v_theta(x_t, t) - (x1 - x0) ||^2``.
"""

from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SAMPLERS = {"euler": 1, "midpoint": 2, "heun": 2}  # function evaluations per step


def expand_t(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a time ``t`` (a float, ``[]`` or ``[B]``) to ``[B, 1, ..., 1]`` matching ``x``.

    A time per element of ``x``'s leading dimensions, e.g. ``[B, F]`` for clips ``[B, F, C, H, W]``
    with a noise level per frame (diffusion forcing), becomes ``[B, F, 1, 1, 1]``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if not 1 <= t.dim() < x.dim() or tuple(t.shape) != tuple(x.shape[:t.dim()]):
        raise ValueError(f"time must be a scalar or have shape [B]=[{x.shape[0]}] (or x's leading "
                         f"dimensions {tuple(x.shape[:-1])}), got {tuple(t.shape)}")
    return t.view(*t.shape, *([1] * (x.dim() - t.dim())))


def batch_t(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A time as a ``[B]`` tensor on ``x``'s device (scalars are repeated)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]).clone() if t.dim() == 0 else t


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The linear interpolant ``x_t = (1 - t) x0 + t x1`` with ``t: [B]``."""
    if x0.shape != x1.shape:
        raise ValueError(f"noise and data must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    te = expand_t(t, x1)
    return (1 - te) * x0 + te * x1


def flow_matching_loss(velocity: Velocity, x1: torch.Tensor, x0: torch.Tensor | None = None,
                       t: torch.Tensor | None = None) -> torch.Tensor:
    """Conditional flow-matching loss (Lipman et al. 2023, eq. 23, with the linear path).

    ``velocity`` is the network being trained; the target ``x1 - x0`` needs no teacher.
    Shapes: ``x1: [B, ...]``; ``x0`` (noise) and ``t: [B]`` are drawn when not given.
    Returns the mean squared error (a scalar).
    """
    if x0 is None:
        x0 = torch.randn_like(x1)
    if t is None:
        t = torch.rand(x1.shape[0], device=x1.device)
    xt = interpolate(x0, x1, t)
    return (velocity(xt, t) - (x1 - x0)).pow(2).mean()


def denoise(velocity: Velocity, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The data prediction ``E[x1 | x_t = x] = x + (1 - t) v(x, t)`` implied by a velocity."""
    return x + (1 - expand_t(t, x)) * velocity(x, batch_t(t, x))


def score_from_velocity(velocity: Velocity, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The score ``grad log p_t(x) = -E[x0 | x_t = x] / (1 - t)`` for Gaussian noise ``x0``.

    With the linear interpolant, ``E[x0 | x_t] = x - t v(x, t)``. Undefined at ``t = 1``.
    """
    te = expand_t(t, x)
    return -(x - te * velocity(x, batch_t(t, x))) / (1 - te)


class CountingVelocity:
    """Wrap a velocity to count its function evaluations (NFE): ``cv.nfe`` after sampling."""

    def __init__(self, velocity: Velocity):
        self.velocity = velocity
        self.nfe = 0

    def __call__(self, x, t):
        self.nfe += 1
        return self.velocity(x, t)


def time_grid(n_steps: int, t0: float = 0.0, t1: float = 1.0, device=None) -> torch.Tensor:
    """``n_steps + 1`` uniformly spaced times from ``t0`` to ``t1``."""
    return torch.linspace(t0, t1, n_steps + 1, device=device)


def sample_ode(velocity: Velocity, x0: torch.Tensor, nfe: int, method: str = "euler",
               t0: float = 0.0, t1: float = 1.0, return_path: bool = False):
    """Integrate ``dx/dt = v(x, t)`` from ``t0`` to ``t1`` with exactly ``nfe`` function evaluations.

    ``method`` is ``euler`` (1 NFE a step), ``midpoint`` or ``heun`` (2 NFE a step; ``nfe`` must be
    even). Runs without gradient tracking only if the caller wraps it in ``torch.no_grad()``.
    Returns the final state, or ``(final, path)`` with ``path: [steps + 1, B, ...]``.
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {', '.join(SAMPLERS)}")
    per = SAMPLERS[method]
    if nfe < per or nfe % per:
        raise ValueError(f"the {method} sampler uses {per} evaluations a step; nfe={nfe} must be a positive multiple of {per}")
    n = nfe // per
    ts = time_grid(n, t0, t1, device=x0.device)
    x = x0
    path = [x]
    for i in range(n):
        s, t = ts[i], ts[i + 1]
        h = t - s
        sb = batch_t(s, x)
        if method == "euler":
            x = x + h * velocity(x, sb)
        elif method == "midpoint":
            xm = x + 0.5 * h * velocity(x, sb)
            x = x + h * velocity(xm, batch_t(s + 0.5 * h, x))
        else:  # heun
            v1 = velocity(x, sb)
            xe = x + h * v1
            v2 = velocity(xe, batch_t(t, x))
            x = x + 0.5 * h * (v1 + v2)
        if return_path:
            path.append(x)
    return (x, torch.stack(path)) if return_path else x


@torch.no_grad()
def teacher_ode(velocity: Velocity, x0: torch.Tensor, nfe: int = 32, method: str = "midpoint",
                batch_size: int = 8192, t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
    """The teacher's many-step ODE solution from noise ``x0`` (no gradient), computed in chunks."""
    outs = [sample_ode(velocity, x0[i:i + batch_size], nfe, method, t0, t1)
            for i in range(0, x0.shape[0], batch_size)]
    return torch.cat(outs)


class GaussianLinearFlow:
    """The analytic test case: noise ``N(0, I)`` to data ``N(mu, sigma^2 I)`` along the linear path.

    With ``x_t = (1 - t) x0 + t x1`` the marginal is ``N(t mu, a(t)^2 I)`` with
    ``a(t)^2 = (1 - t)^2 + t^2 sigma^2``. Everything is closed form:

    * velocity ``v(x, t) = mu + (a'(t) / a(t)) (x - t mu)`` with
      ``a'(t) a(t) = t sigma^2 - (1 - t)``;
    * flow map ``X_{s,t}(x) = t mu + (a(t) / a(s)) (x - s mu)``;
    * consistency function ``f(x, t) = X_{t,1}(x)``.

    Every distillation residual must vanish at these exact objects; the unit tests check that.
    """

    def __init__(self, mu: torch.Tensor | float = 1.5, sigma: float = 0.5):
        self.mu = torch.as_tensor(mu, dtype=torch.float32)
        self.sigma = float(sigma)

    def a(self, t):
        return torch.sqrt((1 - t) ** 2 + t ** 2 * self.sigma ** 2)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        te = expand_t(t, x)
        a = self.a(te)
        dadt_a = (te * self.sigma ** 2 - (1 - te)) / a ** 2
        mu = self.mu.to(x)
        return mu + dadt_a * (x - te * mu)

    def flow_map(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        se, te = expand_t(s, x), expand_t(t, x)
        mu = self.mu.to(x)
        return te * mu + self.a(te) / self.a(se) * (x - se * mu)

    def consistency(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.flow_map(x, t, torch.ones_like(batch_t(t, x)))

    def sample_data(self, n: int, shape=(2,), generator=None) -> torch.Tensor:
        return self.mu + self.sigma * torch.randn(n, *shape, generator=generator)

    def sample_marginal(self, n: int, t: torch.Tensor, shape=(2,), generator=None) -> torch.Tensor:
        x0 = torch.randn(n, *shape, generator=generator)
        return self.flow_map(x0, torch.zeros(n), t)
