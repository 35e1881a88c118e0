"""Flow maps learned by (self-)distillation, and any-step sampling from one map.

A flow map ``X_{s,t}(x)`` transports a point at time ``s`` along the teacher's ODE to time ``t``;
one map gives a sampler for every number of steps: ``x <- X_{t_i, t_{i+1}}(x)`` on any time grid.
The network is :class:`distill_lab.methods.step.students.FlowMap`, ``X_{s,t}(x) = x + (t - s) V(x, s, t)``
(Boffi, Albergo & Vanden-Eijnden 2025, "How to build a consistency model: learning flow maps via
self-distillation", eq. 2.6), so ``X_{s,s} = id`` and the diagonal ``V(x, t, t)`` is a velocity.

The exact flow map of a velocity ``b`` is characterised three ways (same paper, Section 2):

* **Lagrangian** ``d/dt X_{s,t}(x) = b(X_{s,t}(x), t)``: follow a point forward in ``t``;
* **Eulerian** ``d/ds X_{s,t}(x) + grad_x X_{s,t}(x) . b(x, s) = 0``: move the starting point;
* **semigroup** ``X_{u,t}(X_{s,u}(x)) = X_{s,t}(x)``: two short jumps make one long one.

Each gives a loss (one function each below). With ``b`` the teacher's velocity they *distil* the
teacher; with ``b`` the map's own diagonal ``V(x, t, t)``, itself trained by flow matching
(:func:`diagonal_loss`), they *self-distil* (LSD, ESD, PSD in the paper), needing no teacher.

AnyFlow (Gu, Fang, Jiang, Mao, Han, Cai & Shou 2026, "AnyFlow: any-step video diffusion model with
on-policy flow map distillation") trains the map forward as above, then *on policy*: it rolls the
student's own few-step sampler out ("flow map backward simulation") and corrects the transition it
takes from the states it really visits. :func:`anyflow_backward_simulation` makes those states and
the shortcut jump to data from them; :func:`anyflow_dmd_loss` scores the jump by distribution matching
(the paper's on-policy objective); :func:`anyflow_onpolicy_loss` is a simpler coupled variant (the
teacher's ODE from the same state); :func:`anyflow_sample` is the any-step sampler.

Conventions: ``t = 0`` noise, ``t = 1`` data; ``x: [B, ...]``, times ``[B]`` (or scalars). Every loss
returns ``(loss, info)`` with ``info`` a dict of detached numbers for logging.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ...core.flows import Velocity, batch_t, interpolate, sample_ode
from ...core.registry import recipe
from .students import FlowMap

FlowMapFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

PAPER = ("Boffi, Albergo & Vanden-Eijnden 2025, How to build a consistency model: "
         "learning flow maps via self-distillation")
ANYFLOW_PAPER = ("Gu et al. 2026, AnyFlow: any-step video diffusion model with on-policy "
                 "flow map distillation")


# ----------------------------------------------------------------------------- helpers
def _times(x: torch.Tensor, *times, names=("s", "t", "u")) -> list[torch.Tensor]:
    """Validate times against ``x`` and return them as ``[B]`` tensors in ``[0, 1]``."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a batch of shape [B, ...], got {getattr(x, 'shape', type(x))}")
    out = []
    for name, t in zip(names, times):
        tb = batch_t(t, x)
        if tb.dim() != 1 or tb.shape[0] != x.shape[0]:
            raise ValueError(f"time {name} must be a scalar or have shape [B]=[{x.shape[0]}], "
                             f"got {tuple(tb.shape)}")
        if not torch.isfinite(tb).all() or tb.min() < 0 or tb.max() > 1:
            raise ValueError(f"time {name} must lie in [0, 1] (0 = noise, 1 = data); "
                             f"got values in [{float(tb.min()):.3g}, {float(tb.max()):.3g}]")
        out.append(tb)
    return out


def _sq(r: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of squares over the trailing dims: ``[B, ...] -> [B]``."""
    return r.pow(2).reshape(r.shape[0], -1).mean(1)


def jvp_t(flow_map: FlowMapFn, x, s, t):
    """``(X_{s,t}(x), d/dt X_{s,t}(x))``: uses ``flow_map.jvp_t`` when it has one (a
    :class:`FlowMap`), else ``torch.func.jvp`` on the plain callable ``flow_map(x, s, t)``."""
    if hasattr(flow_map, "jvp_t"):
        return flow_map.jvp_t(x, s, t)
    return torch.func.jvp(lambda tt: flow_map(x, s, tt), (t,), (torch.ones_like(t),))


def jvp_s(flow_map: FlowMapFn, x, s, t):
    """``(X_{s,t}(x), d/ds X_{s,t}(x))`` (see :func:`jvp_t`)."""
    if hasattr(flow_map, "jvp_s"):
        return flow_map.jvp_s(x, s, t)
    return torch.func.jvp(lambda ss: flow_map(x, ss, t), (s,), (torch.ones_like(s),))


def jvp_x(flow_map: FlowMapFn, x, s, t, v):
    """``(X_{s,t}(x), grad_x X_{s,t}(x) . v)`` (see :func:`jvp_t`)."""
    if hasattr(flow_map, "jvp_x"):
        return flow_map.jvp_x(x, s, t, v)
    return torch.func.jvp(lambda xx: flow_map(xx, s, t), (x,), (v,))


# ----------------------------------------------------------------------------- losses
def diagonal_loss(flow_map: FlowMap, x1: torch.Tensor, x0: torch.Tensor | None = None,
                  t: torch.Tensor | None = None):
    """Flow matching on the diagonal ``s = t``: ``|V(x_t, t, t) - (x1 - x0)|^2``.

    Boffi, Albergo & Vanden-Eijnden (2025), the diagonal (tangent-condition) loss, eq. (3.1): since
    ``lim_{t->s} d/dt X_{s,t} = V(x, s, s)``, training the diagonal by flow matching (Lipman et al.
    2023) makes it the velocity whose flow the off-diagonal losses then learn.

    Teacher: none (the target ``x1 - x0`` is the interpolant's velocity). Stop-gradient: none.
    Shapes: ``x1, x0: [B, ...]`` (``x0`` drawn when None), ``t: [B]`` (uniform when None).
    ``flow_map`` needs a ``velocity(x, t)`` method (its diagonal), as :class:`FlowMap` has.
    """
    if not hasattr(flow_map, "velocity"):
        raise ValueError("diagonal_loss needs a flow map with a .velocity(x, t) method (its diagonal "
                         "V(x, t, t)); wrap the network in distill_lab.methods.step.students.FlowMap")
    if x0 is None:
        x0 = torch.randn_like(x1)
    if x0.shape != x1.shape:
        raise ValueError(f"noise and data must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    if t is None:
        t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)
    (t,) = _times(x1, t, names=("t",))
    xt = interpolate(x0, x1, t)
    per = _sq(flow_map.velocity(xt, t) - (x1 - x0))
    loss = per.mean()
    return loss, {"diagonal": loss.detach()}


def lagrangian_loss(flow_map: FlowMapFn, velocity: Velocity, x: torch.Tensor, s, t):
    """Lagrangian residual ``d/dt X_{s,t}(x) - sg[b(X_{s,t}(x), t)]``, squared.

    Boffi, Albergo & Vanden-Eijnden (2025): the Lagrangian equation ``d/dt X_{s,t} = b_t(X_{s,t})``
    (eq. 2.4) turned into a loss: Lagrangian map distillation (LMD, eq. 3.4) when ``velocity`` is
    a teacher, Lagrangian self-distillation (LSD, eq. 3.9) when ``velocity`` is the map's own
    diagonal ``flow_map.velocity``. The time derivative comes from one forward-mode pass
    (:meth:`FlowMap.jvp_t`, or ``torch.func.jvp`` for a plain callable).

    Teacher: ``velocity(x, t)`` gives ``b`` at the *student's* point ``X_{s,t}(x)``.
    Stop-gradient: the whole target ``b(X_{s,t}(x), t)``, including the ``X_{s,t}(x)`` fed into it
    (computed under ``torch.no_grad`` from a detached copy, as the paper's ``sg`` around
    ``v_{t,t}(X_{s,t})``). Gradient flows only through ``d/dt X_{s,t}(x)``. In self-distillation
    the diagonal therefore learns from :func:`diagonal_loss` only.

    Shapes: ``x: [B, ...]`` (a point at time ``s``, e.g. the interpolant ``I_s``), ``s, t: [B]``
    or scalars in ``[0, 1]``. Returns the mean over the batch of the per-sample mean square.
    """
    s, t = _times(x, s, t)
    X, dX = jvp_t(flow_map, x, s, t)
    with torch.no_grad():
        target = velocity(X.detach(), t)
    res = dX - target.detach()
    per = _sq(res)
    loss = per.mean()
    return loss, {"lagrangian": loss.detach(), "residual_rms": per.detach().mean().sqrt()}


def eulerian_loss(flow_map: FlowMapFn, velocity: Velocity, x: torch.Tensor, s, t):
    """Eulerian residual ``d/ds X_{s,t}(x) + sg[grad_x X_{s,t}(x) . b(x, s)]``, squared.

    Boffi, Albergo & Vanden-Eijnden (2025): the Eulerian equation
    ``d/ds X_{s,t}(x) + grad_x X_{s,t}(x) b_s(x) = 0`` (eq. 2.5) as a loss: Eulerian map
    distillation (EMD, eq. 3.5) with a teacher ``b``, Eulerian self-distillation (ESD, eq. 3.10)
    with ``b`` the map's own diagonal. The residual is the derivative of ``X_{s,t}(x)`` along the
    tangent ``(dx, ds) = (b(x, s), 1)``; we take its two parts by two forward-mode passes.

    Teacher: ``velocity(x, s)`` gives the tangent ``b(x, s)`` at the *data-side* point ``x``.
    Stop-gradient (as in the paper's ESD): the tangent ``b(x, s)`` and the whole spatial term
    ``grad_x X_{s,t}(x) . b(x, s)``; gradient flows only through ``d/ds X_{s,t}(x)``. Back-propagating
    through the spatial Jacobian is what the paper found unstable.

    Shapes: ``x: [B, ...]`` at time ``s``; ``s, t: [B]`` or scalars in ``[0, 1]``.
    ``info['residual_rms']`` is the full residual's RMS (the loss's square root).
    """
    s, t = _times(x, s, t)
    with torch.no_grad():
        b = velocity(x, s).detach()
    _, dsX = jvp_s(flow_map, x, s, t)
    with torch.no_grad():
        _, spatial = jvp_x(flow_map, x.detach(), s, t, b)
    res = dsX + spatial.detach()
    per = _sq(res)
    loss = per.mean()
    return loss, {"eulerian": loss.detach(), "residual_rms": per.detach().mean().sqrt()}


def progressive_flow_map_loss(flow_map: FlowMapFn, x: torch.Tensor, s, u, t):
    """Semigroup residual ``X_{s,t}(x) - sg[X_{u,t}(X_{s,u}(x))]``, squared, for ``s <= u <= t``.

    Boffi, Albergo & Vanden-Eijnden (2025): the semigroup property ``X_{u,t} o X_{s,u} = X_{s,t}``
    (eq. 2.3) as progressive self-distillation (PSD, eq. 3.11): the long jump learns from two
    shorter jumps of the same map, which the diagonal loss anchors at ``t -> s``.

    Teacher: none (the two-jump target comes from the map itself; pair with :func:`diagonal_loss`).
    Stop-gradient: the whole two-jump target, computed under ``torch.no_grad``; gradient flows only
    through the one-jump ``X_{s,t}(x)``.

    Shapes: ``x: [B, ...]`` at time ``s``; ``s, u, t: [B]`` or scalars in ``[0, 1]`` with
    ``s <= u <= t`` elementwise (otherwise ``ValueError``).
    """
    s, u, t = _times(x, s, u, t, names=("s", "u", "t"))
    if (u < s).any() or (t < u).any():
        raise ValueError("progressive_flow_map_loss needs s <= u <= t for every sample (u is the "
                         "intermediate time of the two-jump target); sort your times")
    with torch.no_grad():
        target = flow_map(flow_map(x, s, u), u, t)
    pred = flow_map(x, s, t)
    per = _sq(pred - target.detach())
    loss = per.mean()
    return loss, {"progressive": loss.detach()}


# ----------------------------------------------------------------------------- any-step sampling
SCHEDULES = ("uniform", "cosine", "late")


def time_schedule(nfe: int, schedule: str | Sequence[float] | torch.Tensor = "uniform",
                  device=None) -> torch.Tensor:
    """``nfe + 1`` increasing times from 0 to 1 for an ``nfe``-jump flow-map sampler.

    ``"uniform"``: ``i / n``. ``"cosine"``: ``(1 - cos(pi i / n)) / 2``, short jumps at both ends.
    ``"late"``: ``1 - (1 - i / n)^2``, long first jump out of the noise, short jumps near the data
    where the checkerboard's sharp edges are. A sequence of ``nfe + 1`` increasing times from 0
    to 1 is used as given.
    """
    if not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer (one flow-map jump per evaluation), got {nfe!r}")
    if isinstance(schedule, str):
        r = torch.linspace(0, 1, nfe + 1, device=device)
        if schedule == "uniform":
            ts = r
        elif schedule == "cosine":
            ts = (1 - torch.cos(math.pi * r)) / 2
        elif schedule == "late":
            ts = 1 - (1 - r) ** 2
        else:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)} "
                             "or pass nfe + 1 increasing times from 0 to 1")
        ts[0], ts[-1] = 0.0, 1.0
        return ts
    ts = torch.as_tensor(schedule, dtype=torch.float32, device=device).flatten()
    if ts.numel() != nfe + 1 or abs(float(ts[0])) > 1e-6 or abs(float(ts[-1]) - 1) > 1e-6 \
            or (ts[1:] <= ts[:-1]).any():
        raise ValueError(f"a custom schedule must hold nfe + 1 = {nfe + 1} strictly increasing times "
                         f"from 0 to 1, got {ts.tolist()}")
    return ts


def anyflow_sample(flow_map: FlowMapFn, z: torch.Tensor, nfe: int,
                   schedule: str | Sequence[float] | torch.Tensor = "uniform",
                   return_path: bool = False):
    """Any-step sampling from one flow map: ``x <- X_{t_i, t_{i+1}}(x)`` on :func:`time_schedule`.

    One map serves every ``nfe`` (AnyFlow, Gu et al. 2026; the flow-map sampler of Boffi et al.
    2025): unlike multistep consistency sampling, no fresh noise is injected, so the jumps follow
    the ODE trajectory and more steps can only refine it. No gradient is tracked.
    Shapes: ``z: [B, ...]`` noise at ``t = 0``; returns ``[B, ...]`` (and ``[nfe + 1, B, ...]``).
    """
    ts = time_schedule(nfe, schedule, device=z.device)
    x, path = z, [z]
    with torch.no_grad():
        for i in range(nfe):
            x = flow_map(x, batch_t(ts[i], x), batch_t(ts[i + 1], x))
            path.append(x)
    return (x, torch.stack(path)) if return_path else x


def anyflow_onpolicy_loss(flow_map: FlowMapFn, velocity: Velocity, z: torch.Tensor, nfe: int, k: int,
                          schedule: str | Sequence[float] | torch.Tensor = "uniform",
                          teacher_nfe: int = 16):
    """On-policy transition loss: ``|X_{t_k, t_{k+1}}(x_k) - sg[Phi^teacher_{t_k -> t_{k+1}}(x_k)]|^2``.

    Gu et al. (2026), AnyFlow, on-policy flow-map distillation with "flow map backward simulation":
    the student's own ``nfe``-jump sampler is rolled out from noise ``z`` (no gradient) to the state
    ``x_k`` it really reaches at ``t_k``; the jump it takes from there gets the gradient. This
    trains the map on the states its sampler visits (fighting exposure bias), for every step count.

    Simplification (documented, deliberate): AnyFlow scores the rollout with a distribution-matching
    (DMD) gradient, which needs a second "fake" velocity network; here the on-policy target is
    instead the *teacher's* ODE solution from the same visited state ``x_k``, i.e. a coupled,
    per-sample target on on-policy states. ``teacher_nfe`` is the midpoint budget for the whole of
    ``[0, 1]``; a jump gets its share ``teacher_nfe * (t_{k+1} - t_k)`` (even, at least 2).

    Teacher: ``velocity(x, t)`` integrated from ``t_k`` to ``t_{k+1}``.
    Stop-gradient: the rollout ``x_k`` and the teacher target (both under ``torch.no_grad``);
    gradient flows only through the one jump ``X_{t_k, t_{k+1}}(x_k)``.
    Shapes: ``z: [B, ...]`` noise; ``nfe >= 1`` jumps on ``schedule``; ``0 <= k < nfe``.
    """
    ts = time_schedule(nfe, schedule, device=z.device)
    if not 0 <= k < nfe:
        raise ValueError(f"k is the index of the trained jump and must satisfy 0 <= k < nfe={nfe}, got {k}")
    if teacher_nfe < 2 or teacher_nfe % 2:
        raise ValueError(f"teacher_nfe counts midpoint evaluations over [0, 1] and must be even and >= 2, "
                         f"got {teacher_nfe}")
    jump_nfe = max(2, 2 * round(teacher_nfe * float(ts[k + 1] - ts[k]) / 2))
    with torch.no_grad():
        x = z
        for i in range(k):
            x = flow_map(x, batch_t(ts[i], x), batch_t(ts[i + 1], x))
        x = x.detach()
        target = sample_ode(velocity, x, jump_nfe, "midpoint", float(ts[k]), float(ts[k + 1]))
    pred = flow_map(x, batch_t(ts[k], x), batch_t(ts[k + 1], x))
    per = _sq(pred - target.detach())
    loss = per.mean()
    return loss, {"onpolicy": loss.detach()}


def anyflow_backward_simulation(flow_map: FlowMapFn, z: torch.Tensor, nfe: int, k: int,
                                schedule: str | Sequence[float] | torch.Tensor = "uniform"):
    """Flow map backward simulation (Gu et al. 2026, AnyFlow): the student's own ``nfe``-jump sampler
    rolled out from noise ``z`` to the state ``x_k`` it reaches at ``t_k`` (``k`` jumps, no gradient),
    then one shortcut jump ``x_hat = X_{t_k, 1}(x_k)`` to data, *with* gradient. A full Euler rollout
    would need every step of the trajectory; the flow map lets any visited state reach ``t = 1`` in one call.

    Shapes: ``z: [B, ...]``; ``nfe >= 1``; ``0 <= k < nfe``. Returns ``(x_hat, x_k, t_k)`` with ``x_k``
    detached and ``t_k`` a float.
    """
    ts = time_schedule(nfe, schedule, device=z.device)
    if not 0 <= k < nfe:
        raise ValueError(f"k is the number of rolled-out jumps and must satisfy 0 <= k < nfe={nfe}, got {k}")
    with torch.no_grad():
        x = z
        for i in range(k):
            x = flow_map(x, batch_t(ts[i], x), batch_t(ts[i + 1], x))
    x = x.detach()
    tk = float(ts[k])
    return flow_map(x, batch_t(tk, x), batch_t(1.0, x)), x, tk


def anyflow_dmd_loss(flow_map: FlowMapFn, real_velocity: Velocity, fake_velocity: Velocity, z: torch.Tensor,
                     nfe: int, k: int, schedule: str | Sequence[float] | torch.Tensor = "uniform",
                     t: torch.Tensor | None = None):
    """AnyFlow's on-policy distribution matching: DMD (:func:`~distill_lab.methods.step.dmd.dmd_loss`,
    Yin et al. 2024 eqs. 7-8) on the sample ``x_hat = X_{t_k, 1}(x_k)`` reached by
    :func:`anyflow_backward_simulation` from a state the student's own ``nfe``-jump sampler visits.

    Teacher provides: ``real_velocity`` (the real score). ``fake_velocity`` is the fake score, fitted
    to the student's ``x_hat`` by :func:`~distill_lab.methods.step.dmd.fake_score_loss` (the caller's
    critic step). Stop-gradient: the rollout to ``x_k``, both scores' predictions and the DMD target;
    gradient flows only through the one shortcut jump from ``x_k``. ``t``: DMD's noising times.
    Returns ``(loss, info)``; ``info["x_hat"]`` is the detached sample (for the fake score).
    """
    from .dmd import dmd_loss  # here, so importing flow_map does not register DMD's recipes first

    x_hat, _, tk = anyflow_backward_simulation(flow_map, z, nfe, k, schedule)
    loss, info = dmd_loss(x_hat, real_velocity, fake_velocity, t=t)
    return loss, {"onpolicy_dmd": loss.detach(), "grad_norm": info["grad_norm"], "t_k": tk, "x_hat": x_hat.detach()}


# ----------------------------------------------------------------------------- time sampling
def sample_pairs(n: int, device=None, p_endpoints: float = 0.25, p_from_noise: float = 0.25,
                 gap_power: float = 0.5):
    """Draw ``(s, t)`` with ``0 <= s <= t <= 1`` for training a flow map: ``[n]`` each.

    A share ``p_endpoints`` is exactly ``(0, 1)`` (the one-step jump); a share ``p_from_noise``
    has ``s = 0`` and ``t`` uniform (the whole trajectory out of the noise, which the Lagrangian
    residual needs to reach ``t = 1``); the rest have a gap ``t - s = U^gap_power`` (``< 1`` biases
    it large) placed uniformly in ``[0, 1]``.
    """
    if p_endpoints < 0 or p_from_noise < 0 or p_endpoints + p_from_noise > 1:
        raise ValueError("p_endpoints and p_from_noise are shares of the batch: each >= 0, sum <= 1")
    r = torch.rand(n, device=device)
    gap = torch.rand(n, device=device) ** gap_power
    s = torch.rand(n, device=device) * (1 - gap)
    t = s + gap
    noise = r < p_endpoints + p_from_noise
    s = torch.where(noise, torch.zeros_like(s), s)
    t = torch.where(noise, torch.rand(n, device=device), t)
    ends = r < p_endpoints
    t = torch.where(ends, torch.ones_like(t), t)
    return s, t.clamp(max=1.0)


# ----------------------------------------------------------------------------- students
class AnyStepFlowMap(FlowMap):
    """A :class:`FlowMap` whose ``sample(z, nfe)`` uses :func:`anyflow_sample` on ``schedule``."""

    def __init__(self, net: torch.nn.Module, schedule: str | Sequence[float] = "uniform"):
        super().__init__(net)
        self.schedule = schedule

    @torch.no_grad()
    def sample(self, z: torch.Tensor, nfe: int = 1, schedule=None) -> torch.Tensor:
        return anyflow_sample(self, z, nfe, self.schedule if schedule is None else schedule)


# ----------------------------------------------------------------------------- recipes
def _train_flow_map(exp, student, steps, lr, desc, terms, weight_decay=0.0):
    """Shared loop: Adam with cosine decay over ``steps`` and gradient-norm clipping at 1;
    ``terms(i) -> (loss, info)``."""
    opt = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def step(i):
        loss, info = terms(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        return {"loss": loss.detach(), **info}

    student.history = exp.fit(step, steps, desc)
    return student.eval()


def _interp_batch(exp, s):
    """A batch at time ``s`` on the linear interpolant ``I_s = (1 - s) x0 + s x1`` (fresh draws)."""
    x1 = exp.data_batch(s.shape[0])
    x0 = torch.randn_like(x1)
    return interpolate(x0, x1, s), x1


def _defaults(exp, overrides, **kw):
    unknown = set(overrides) - set(kw)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; this recipe takes {sorted(kw)}")
    return {**kw, **overrides}


@recipe("lagrangian", tracks=("toy2d", "cifar-gen"), family="flow map", nfes=(1, 2, 4),
        paper=PAPER + " (LMD)")
def train_lagrangian(exp, steps=None, **overrides):
    """Lagrangian map distillation from the teacher velocity, plus a light flow-matching diagonal term.

    Warm start ``V(x, s, t) = v_teacher(x, s)`` (:meth:`Toy2D.student_net`), so the map starts as
    the teacher's Euler step. Each step: :func:`lagrangian_loss` with the teacher on
    :func:`sample_pairs` times at interpolant points, plus ``w_diag`` times :func:`diagonal_loss`.
    """
    o = _defaults(exp, overrides, lr=exp.scale.pick(ci=1e-3, default=1e-3, gpu=5e-4), w_diag=0.1,
                  p_endpoints=0.25, p_from_noise=0.25, gap_power=0.5)
    steps = steps or exp.scale.pick(ci=800, default=3000, gpu=20000)
    student = FlowMap(exp.student_net(n_times=2))

    def terms(i):
        n = exp.scale.batch
        s, t = sample_pairs(n, exp.device, o["p_endpoints"], o["p_from_noise"], o["gap_power"])
        x, x1 = _interp_batch(exp, s)
        lag, info = lagrangian_loss(student, exp.velocity, x, s, t)
        diag, dinfo = diagonal_loss(student, x1)
        return lag + o["w_diag"] * diag, {**info, **dinfo}

    return _train_flow_map(exp, student, steps, o["lr"], "lagrangian flow map", terms)


def _train_self_distilled(exp, steps, overrides, residual, desc):
    """The self-distillation loop LSD and ESD share: the warm-started map's ``residual`` loss with its
    own diagonal ``student.velocity`` as the velocity (under stop-gradient inside the loss), plus
    ``w_diag`` times :func:`diagonal_loss` on data; ``batch`` pairs a step."""
    o = _defaults(exp, overrides, lr=exp.scale.pick(ci=1e-3, default=1e-3, gpu=5e-4), w_diag=1.0,
                  p_endpoints=0.25, p_from_noise=0.25, gap_power=0.5, batch=exp.scale.batch)
    steps = steps or exp.scale.pick(ci=400, default=3000, gpu=20000)
    student = FlowMap(exp.student_net(n_times=2))

    def terms(i):
        s, t = sample_pairs(o["batch"], exp.device, o["p_endpoints"], o["p_from_noise"], o["gap_power"])
        x, x1 = _interp_batch(exp, s)
        res, info = residual(student, student.velocity, x, s, t)
        diag, dinfo = diagonal_loss(student, x1)
        return res + o["w_diag"] * diag, {**info, **dinfo}

    return _train_flow_map(exp, student, steps, o["lr"], desc, terms)


@recipe("lsd_self", tracks=("toy2d",), family="flow map", nfes=(1, 2, 4), paper=PAPER + " (LSD)")
def train_lsd_self(exp, steps=None, **overrides):
    """Lagrangian *self*-distillation: the target velocity is the map's own diagonal ``V(x, t, t)``.

    The teacher is used only for the warm start; the diagonal is then trained by flow matching on
    data (:func:`diagonal_loss`, weight ``w_diag``) and the off-diagonal by :func:`lagrangian_loss`
    with ``velocity = student.velocity`` (under stop-gradient), as LSD in the paper (eq. 3.9).
    """
    return _train_self_distilled(exp, steps, overrides, lagrangian_loss, "LSD (self) flow map")


@recipe("eulerian", tracks=("toy2d",), family="flow map", nfes=(1, 2, 4), paper=PAPER + " (EMD)")
def train_eulerian(exp, steps=None, **overrides):
    """Eulerian map distillation: :func:`eulerian_loss` with the teacher as the tangent ``b(x, s)``,
    plus ``w_diag`` times :func:`diagonal_loss`. Warm-started from the teacher like the others."""
    o = _defaults(exp, overrides, lr=exp.scale.pick(ci=1e-3, default=1e-3, gpu=5e-4), w_diag=0.1,
                  p_endpoints=0.25, p_from_noise=0.0, gap_power=0.5)
    steps = steps or exp.scale.pick(ci=600, default=3000, gpu=20000)
    student = FlowMap(exp.student_net(n_times=2))

    def terms(i):
        s, t = sample_pairs(exp.scale.batch, exp.device, o["p_endpoints"], o["p_from_noise"], o["gap_power"])
        x, x1 = _interp_batch(exp, s)
        eul, info = eulerian_loss(student, exp.velocity, x, s, t)
        diag, dinfo = diagonal_loss(student, x1)
        return eul + o["w_diag"] * diag, {**info, **dinfo}

    return _train_flow_map(exp, student, steps, o["lr"], "eulerian flow map", terms)


@recipe("esd_self", tracks=("toy2d",), family="flow map", nfes=(1, 2, 4), paper=PAPER + " (ESD)")
def train_esd_self(exp, steps=None, **overrides):
    """Eulerian *self*-distillation: :func:`eulerian_loss` with the map's own diagonal ``V(x, s, s)`` as the
    tangent ``b(x, s)`` (under stop-gradient, with the spatial term), plus :func:`diagonal_loss` (weight
    ``w_diag``) training that diagonal by flow matching on data: ESD of the paper (eq. 3.10). The teacher
    is used only for the warm start. Same loop, pairs and budget as ``lsd_self`` (``batch``: pairs a step,
    the scale's batch by default), so the two compare."""
    return _train_self_distilled(exp, steps, overrides, eulerian_loss, "ESD (self) flow map")


@recipe("progressive_flow_map", tracks=("toy2d", "cifar-gen"), family="flow map", nfes=(1, 2, 4),
        paper=PAPER + " (PSD)")
def train_progressive_flow_map(exp, steps=None, **overrides):
    """Progressive self-distillation: :func:`progressive_flow_map_loss` with ``u`` uniform in
    ``[s, t]`` plus :func:`diagonal_loss` (weight ``w_diag``) on data; the teacher is used only for
    the warm start."""
    o = _defaults(exp, overrides, lr=exp.scale.pick(ci=1e-3, default=1e-3, gpu=5e-4), w_diag=0.3,
                  p_endpoints=0.25, p_from_noise=0.25, gap_power=0.5,
                  batch=exp.scale.batch)
    steps = steps or exp.scale.pick(ci=1000, default=4000, gpu=20000)
    student = FlowMap(exp.student_net(n_times=2))

    def terms(i):
        s, t = sample_pairs(o["batch"], exp.device, o["p_endpoints"], o["p_from_noise"], o["gap_power"])
        u = s + (t - s) * torch.rand_like(s)
        x, x1 = _interp_batch(exp, s)
        prog, info = progressive_flow_map_loss(student, x, s, u, t)
        diag, dinfo = diagonal_loss(student, x1)
        return prog + o["w_diag"] * diag, {**info, **dinfo}

    return _train_flow_map(exp, student, steps, o["lr"], "progressive flow map", terms)


@recipe("anyflow", tracks=("toy2d",), family="flow map", nfes=(1, 2, 4, 8), paper=ANYFLOW_PAPER)
def train_anyflow(exp, steps=None, **overrides):
    """AnyFlow's two stages on one map: forward flow-map training (Lagrangian distillation, as
    ``lagrangian``) for a share ``1 - onpolicy_frac`` of the steps, then the same loss plus an on-policy
    term (weight ``w_onpolicy``) with the step count drawn from ``nfes`` and the rolled-out jumps ``k``
    drawn uniformly each step. ``onpolicy="dmd"`` (default, the paper's): :func:`anyflow_dmd_loss`, with
    a fake score warm-started from the teacher and fitted to the student's backward-simulated samples
    (``critic_updates`` flow-matching steps at ``fake_lr`` per student step). ``onpolicy="teacher"``: the
    coupled variant :func:`anyflow_onpolicy_loss` (the teacher's ODE from the visited state; no fake
    score). Samples on ``schedule`` with :func:`anyflow_sample` at any NFE."""
    o = _defaults(exp, overrides, lr=exp.scale.pick(ci=1e-3, default=1e-3, gpu=5e-4), w_diag=0.1,
                  p_endpoints=0.25, p_from_noise=0.25, gap_power=0.5, onpolicy_frac=0.5,
                  w_onpolicy=1.0, nfes=(1, 2, 4), schedule="uniform", teacher_nfe=16, onpolicy="dmd",
                  fake_lr=4e-4, critic_updates=2)
    if o["onpolicy"] not in ("dmd", "teacher"):
        raise ValueError(f"onpolicy must be 'dmd' (the paper's distribution matching) or 'teacher', "
                         f"got {o['onpolicy']!r}")
    steps = steps or exp.scale.pick(ci=700, default=3000, gpu=20000)
    student = AnyStepFlowMap(exp.student_net(n_times=2), schedule=o["schedule"])
    start = int(steps * (1 - o["onpolicy_frac"]))
    fake = f_opt = None
    if o["onpolicy"] == "dmd":
        from .dmd import fake_score_loss, frozen

        fake = exp.student_net(1)
        f_opt = torch.optim.Adam(fake.parameters(), lr=o["fake_lr"], betas=(0.0, 0.99))

    def draw():
        nfe = o["nfes"][int(torch.randint(len(o["nfes"]), (1,)))]
        return nfe, int(torch.randint(nfe, (1,)))

    def terms(i):
        s, t = sample_pairs(exp.scale.batch, exp.device, o["p_endpoints"], o["p_from_noise"], o["gap_power"])
        x, x1 = _interp_batch(exp, s)
        lag, info = lagrangian_loss(student, exp.velocity, x, s, t)
        diag, dinfo = diagonal_loss(student, x1)
        loss, info = lag + o["w_diag"] * diag, {**info, **dinfo}
        if i >= start and fake is not None:
            for _ in range(o["critic_updates"]):  # the fake score follows the student's samples
                nfe, k = draw()
                with torch.no_grad():
                    x_hat = anyflow_backward_simulation(student, exp.noise_batch(), nfe, k, o["schedule"])[0]
                lf, finfo = fake_score_loss(fake, x_hat)
                f_opt.zero_grad(set_to_none=True)
                lf.backward()
                f_opt.step()
            nfe, k = draw()
            with frozen(fake):  # the gradient flows through the fake score, not into it
                on, oinfo = anyflow_dmd_loss(student, exp.velocity, fake, exp.noise_batch(), nfe, k, o["schedule"])
            oinfo = {k_: v for k_, v in oinfo.items() if k_ != "x_hat"}
            loss, info = loss + o["w_onpolicy"] * on, {**info, **oinfo, **finfo}
        elif i >= start:
            nfe, k = draw()
            on, oinfo = anyflow_onpolicy_loss(student, exp.velocity, exp.noise_batch(), nfe, k,
                                              o["schedule"], o["teacher_nfe"])
            loss, info = loss + o["w_onpolicy"] * on, {**info, **oinfo}
        return loss, info

    student = _train_flow_map(exp, student, steps, o["lr"], "AnyFlow flow map", terms)
    student.fake = fake  # after training, so the map's optimiser never holds the fake score (None: "teacher")
    return student
