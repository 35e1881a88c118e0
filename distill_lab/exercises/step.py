"""Exercises of the toy step-distillation labs (00 to 06).

Each checker runs the student's function on the closed-form cases of :mod:`distill_lab.core.flows`
(:class:`~distill_lab.core.flows.GaussianLinearFlow`: the velocity, flow map and consistency function
are known exactly) or against the package's own implementation on fixed random inputs.
"""

from __future__ import annotations

import torch

from ..core import flows
from ..methods.step import arcflow, consistency, trajectory
from ..methods.step.students import ConsistencyFunction
from ..nets.mlp import TimeMLP
from . import compare, implement, prediction

# ---------------------------------------------------------------- shared helpers


def _bent_velocity(x, t):
    """A velocity that depends on x and t nonlinearly (no sampler is exact on it)."""
    te = flows.expand_t(t, x)
    return torch.sin(2 * x + te) - te * x


def _strict_times(velocity):
    """``velocity`` that refuses a time that is not a ``[B]`` tensor (the package's convention)."""

    def v(x, t):
        if not (isinstance(t, torch.Tensor) and t.shape == (x.shape[0],)):
            raise AssertionError(f"call velocity(x, t) with t a [B] tensor of times (here [B]=[{x.shape[0]}]), "
                                 f"e.g. torch.zeros(x.shape[0]); got {t!r:.60}")
        return velocity(x, t)

    return v


def _frozen_net(dim=2, seed=0):
    """A small velocity network whose parameters require gradient (to catch a missing stop-gradient)."""
    with torch.random.fork_rng(devices=[]):  # the lab's own random stream is left as it was
        torch.manual_seed(seed)
        return TimeMLP(dim, 16, 2)


# ---------------------------------------------------------------- lab 00: the tour


def _one_euler_step(velocity, z):
    return z + velocity(z, torch.zeros(z.shape[0], device=z.device))


@implement("00.one_euler_step", "the teacher's one-step sample z + v(z, 0)",
           solution=_one_euler_step,
           wrong={"a step backwards: z - v(z, 0)": lambda v, z: z - v(z, torch.zeros(z.shape[0])),
                  "the velocity alone, without the start point z": lambda v, z: v(z, torch.zeros(z.shape[0])),
                  "the velocity at the data end t = 1": lambda v, z: z + v(z, torch.ones(z.shape[0]))})
def _check_one_euler_step(fn) -> str:
    """``fn(velocity, z)`` with ``z: [B, ...]`` must give one Euler step of size 1 from t = 0."""
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([1.5, -0.5])
    gauss = flows.GaussianLinearFlow(mu, 0.4)
    z = torch.randn(256, 2, generator=g)
    compare(fn(_strict_times(gauss.velocity), z), mu.expand(256, 2),
            "one Euler step on the Gaussian case (v(z, 0) = mu - z there, so every z must land on E[x1] = mu)")
    for shape in ((2,), (3, 4, 4)):
        z = torch.randn(64, *shape, generator=g)
        compare(fn(_strict_times(_bent_velocity), z), z + _bent_velocity(z, torch.zeros(64)),
                f"one Euler step of sin(2x + t) - t x on z of shape {(64, *shape)}")
    return ("sends every z to mu on the Gaussian case (the blur: E[x1], whatever the noise) and matches "
            "z + v(z, 0) on [B, 2] and [B, 3, 4, 4]")


prediction("00.coupled_farthest", "which one-step student lands farthest from the teacher's ODE endpoint "
           "from the same noise?", ("trajectory", "cd", "lagrangian", "dmd"), solution="dmd")


# ---------------------------------------------------------------- lab 01: the flow-matching teacher


def _gaussian_velocity(x, t, mu, sigma):
    a2 = (1 - t) ** 2 + t ** 2 * sigma ** 2
    return mu + (t * sigma ** 2 - (1 - t)) / a2 * (x - t * mu)


@implement("01.gaussian_velocity", "the closed-form velocity from N(0, I) to N(mu, sigma^2 I)",
           solution=_gaussian_velocity,
           wrong={"a'/a with the wrong sign": lambda x, t, mu, s: mu - (t * s ** 2 - (1 - t)) / (
                      (1 - t) ** 2 + t ** 2 * s ** 2) * (x - t * mu),
                  "x - mu instead of x - t mu": lambda x, t, mu, s: mu + (t * s ** 2 - (1 - t)) / (
                      (1 - t) ** 2 + t ** 2 * s ** 2) * (x - mu),
                  "a' / a^2 read as a' / a": lambda x, t, mu, s: mu + (t * s ** 2 - (1 - t)) / (
                      ((1 - t) ** 2 + t ** 2 * s ** 2) ** 0.5) * (x - t * mu)})
def _check_gaussian_velocity(fn) -> str:
    """``fn(x, t, mu, sigma)`` with ``x: [B, 2]``, ``t: [B, 1]``, ``mu: [2]`` must give ``v(x, t)``."""
    g = torch.Generator().manual_seed(0)
    for mu, sigma in ((torch.tensor([1.5, -0.5]), 0.4), (torch.tensor([0.0, 2.0]), 1.7)):
        flow = flows.GaussianLinearFlow(mu, sigma)
        t = torch.rand(256, generator=g) * 0.98 + 0.01
        x = torch.randn(256, 2, generator=g) * 2
        got = fn(x, t[:, None], mu, sigma)
        compare(got, flow.velocity(x, t), f"v(x, t) for mu={mu.tolist()}, sigma={sigma}", atol=1e-4)
    return "matches GaussianLinearFlow.velocity at 512 points, for two means and widths"


prediction("01.sampler_at_4", "at 4 NFE, which sampler lands closer to the data: Euler or midpoint?",
           ("euler", "midpoint", "about the same"), solution="midpoint")

prediction("01.metric_sees_bleed", "which distance separates the raw-x teacher from the sharp one by the most of "
           "its own floors?", ("sliced W2", "exact W2", "precision"), solution="precision")


def _midpoint_sample(velocity, x0, nfe):
    n = nfe // 2
    h = 1.0 / n
    x = x0
    for i in range(n):
        s = torch.full((x.shape[0],), i * h, device=x.device)
        x_mid = x + 0.5 * h * velocity(x, s)
        x = x + h * velocity(x_mid, s + 0.5 * h)
    return x


def _midpoint_at_start(velocity, x0, nfe):  # the second evaluation at the start time
    n, x = nfe // 2, x0
    for i in range(n):
        s = torch.full((x.shape[0],), i / n)
        x = x + velocity(x + 0.5 / n * velocity(x, s), s) / n
    return x


def _midpoint_nfe_steps(velocity, x0, nfe):  # nfe steps of two evaluations each: twice the budget
    x = x0
    for i in range(nfe):
        s = torch.full((x.shape[0],), i / nfe)
        x = x + velocity(x + 0.5 / nfe * velocity(x, s), s + 0.5 / nfe) / nfe
    return x


def _midpoint_half_step(velocity, x0, nfe):  # the full step taken from the midpoint instead of the start
    n, x = nfe // 2, x0
    for i in range(n):
        s = torch.full((x.shape[0],), i / n)
        x_mid = x + 0.5 / n * velocity(x, s)
        x = x_mid + velocity(x_mid, s + 0.5 / n) / n
    return x


@implement("01.midpoint_sampler", "the midpoint sampler with a budget of nfe evaluations",
           solution=_midpoint_sample,
           wrong={"second evaluation at the start time s instead of s + h/2": _midpoint_at_start,
                  "nfe steps instead of nfe / 2 (twice the budget)": _midpoint_nfe_steps,
                  "full step taken from x_mid instead of from x": _midpoint_half_step})
def _check_midpoint_sampler(fn) -> str:
    """``fn(velocity, x0, nfe)`` integrates from t=0 to 1 with ``nfe / 2`` midpoint steps."""
    g = torch.Generator().manual_seed(1)
    gauss = flows.GaussianLinearFlow(torch.tensor([1.5, -0.5]), 0.4)
    for velocity, what in ((gauss.velocity, "the Gaussian case"), (_bent_velocity, "sin(2x + t) - t x")):
        for nfe in (2, 8):
            x0 = torch.randn(128, 2, generator=g)
            counted = flows.CountingVelocity(velocity)
            got = fn(counted, x0, nfe)
            if counted.nfe != nfe:
                raise AssertionError(f"with nfe={nfe} your sampler called the velocity {counted.nfe} times; "
                                     f"it must use exactly nfe evaluations (nfe / 2 = {nfe // 2} steps of two)")
            compare(got, flows.sample_ode(velocity, x0, nfe, "midpoint"),
                    f"the {nfe}-NFE sample on {what}", atol=1e-4)
    x0 = torch.randn(256, 2, generator=g)
    exact = gauss.flow_map(x0, torch.zeros(256), torch.ones(256))
    compare(fn(gauss.velocity, x0, 64), exact, "the 64-NFE sample against the exact flow map X_{0,1}", atol=2e-3)
    return ("uses exactly nfe evaluations, matches flows.sample_ode(..., 'midpoint') at 2 and 8 NFE on two "
            "velocities, and lands on the exact X_{0,1} of the Gaussian case at 64 NFE")


# ---------------------------------------------------------------- lab 02: trajectory and progressive distillation


def _progressive_target(teacher_velocity, x, t, h):
    he = flows.expand_t(h, x)
    with torch.no_grad():
        x_mid = x + he * teacher_velocity(x, t)
        x_end = x_mid + he * teacher_velocity(x_mid, t + h)
    return (x_end - x) / (2 * he)


def _progressive_one_step(teacher_velocity, x, t, h):  # one teacher step: the teacher's own velocity
    with torch.no_grad():
        return teacher_velocity(x, t)


def _progressive_same_time(teacher_velocity, x, t, h):  # the second step evaluated at t, not t + h
    he = flows.expand_t(h, x)
    with torch.no_grad():
        x_mid = x + he * teacher_velocity(x, t)
        return (x_mid + he * teacher_velocity(x_mid, t) - x) / (2 * he)


def _progressive_over_h(teacher_velocity, x, t, h):  # divided by h: the velocity of a step of size h
    he = flows.expand_t(h, x)
    with torch.no_grad():
        x_mid = x + he * teacher_velocity(x, t)
        return (x_mid + he * teacher_velocity(x_mid, t + h) - x) / he


def _progressive_no_sg(teacher_velocity, x, t, h):  # no stop-gradient: the target trains the teacher too
    he = flows.expand_t(h, x)
    x_mid = x + he * teacher_velocity(x, t)
    return (x_mid + he * teacher_velocity(x_mid, t + h) - x) / (2 * he)


@implement("02.progressive_target", "the progressive-distillation target: two teacher steps as one",
           solution=_progressive_target,
           wrong={"one teacher step (the teacher's own velocity)": _progressive_one_step,
                  "the second teacher step evaluated at t instead of t + h": _progressive_same_time,
                  "divided by h instead of 2h": _progressive_over_h,
                  "no stop-gradient (the target carries the teacher's graph)": _progressive_no_sg})
def _check_progressive_target(fn) -> str:
    """``fn(teacher_velocity, x, t, h)`` with ``x: [B, ...]``, ``t, h: [B]`` gives ``v*: [B, ...]``."""
    g = torch.Generator().manual_seed(2)
    c = torch.tensor([0.7, -1.2])
    x = torch.randn(128, 2, generator=g)
    t = torch.rand(128, generator=g) * 0.5
    h = torch.full((128,), 0.125)
    compare(fn(lambda x, t: c.expand_as(x), x, t, h), c.expand(128, 2),
            "v* for a constant velocity c (two Euler steps are exact there, so v* = c)")
    gauss = flows.GaussianLinearFlow(torch.tensor([1.5, -0.5]), 0.4)
    for velocity, shape, what in ((gauss.velocity, (2,), "the Gaussian case"),
                                  (_bent_velocity, (3, 4, 4), "sin(2x + t) - t x")):
        x = torch.randn(64, *shape, generator=g)
        t = torch.rand(64, generator=g) * 0.5
        h = torch.rand(64, generator=g) * 0.2 + 0.02
        want, x_end = trajectory.progressive_target(velocity, x, t, h)
        got = fn(velocity, x, t, h)
        compare(got, want, f"v* on {what}, x of shape {tuple(x.shape)}, per-sample t and h", atol=1e-4)
    teacher = _frozen_net()
    x, t = torch.randn(32, 2, generator=g), torch.rand(32, generator=g) * 0.5
    got = fn(teacher, x, t, torch.full((32,), 0.25))
    if got.requires_grad:
        raise AssertionError("your target carries gradient back into the teacher network: compute it under "
                             "torch.no_grad() (or .detach() it); the target is under stop-gradient")
    return ("v* = c for a constant velocity; matches trajectory.progressive_target on the Gaussian case and on "
            "[B, 3, 4, 4] with per-sample t and h; carries no gradient into the teacher")


prediction("02.progressive_vs_euler_at_4", "at 4 NFE, which is closer to the data: the progressive student or "
           "the teacher's Euler sampler?", ("progressive", "teacher", "about the same"), solution="progressive")


def _phi_safe(z):
    safe = torch.where(z == 0, torch.ones_like(z), z)
    return torch.where(z.abs() < 1e-6, 1 + z / 2, torch.expm1(safe) / safe)


def _arc_sum(means, weights, tau, phi):
    """``sum_k weights_k * means_k * tau * phi_k`` with ``weights, phi: [B, K]``."""
    coef = weights * phi * tau[:, None]
    return (coef.reshape(*coef.shape, *([1] * (means.dim() - 2))) * means).sum(1)


def _arc_displacement(means, logits, rates, tau):
    tau = flows.batch_t(tau, means)
    return _arc_sum(means, torch.softmax(logits, 1), tau, _phi_safe(rates * tau[:, None]))


def _arc_euler(means, logits, rates, tau):  # a straight step with the starting velocity
    tau = flows.batch_t(tau, means)
    return _arc_sum(means, torch.softmax(logits, 1), tau, torch.ones_like(rates))


def _arc_raw_weights(means, logits, rates, tau):  # the logits used as weights, no softmax
    tau = flows.batch_t(tau, means)
    return _arc_sum(means, logits, tau, _phi_safe(rates * tau[:, None]))


def _arc_end_velocity(means, logits, rates, tau):  # tau * u(tau): the velocity at the step's end, not its integral
    tau = flows.batch_t(tau, means)
    return _arc_sum(means, torch.softmax(logits, 1), tau, torch.exp(rates * tau[:, None]))


def _arc_no_limit(means, logits, rates, tau):  # (e^z - 1) / z without its limit 1 at z = 0
    tau = flows.batch_t(tau, means)
    z = rates * tau[:, None]
    return _arc_sum(means, torch.softmax(logits, 1), tau, torch.expm1(z) / z)


@implement("02.arc_displacement", "ArcFlow's closed-form step: the integral of a mixture of momentum processes",
           solution=_arc_displacement,
           wrong={"a straight step with the starting velocity (no integral)": _arc_euler,
                  "the logits used as weights (no softmax)": _arc_raw_weights,
                  "tau times the velocity at the step's end": _arc_end_velocity,
                  "(e^z - 1) / z without its limit at a zero rate": _arc_no_limit})
def _check_arc_displacement(fn) -> str:
    """``fn(means [B, K, ...], logits [B, K], rates [B, K], tau [B] or scalar)`` gives ``[B, ...]``."""
    g = torch.Generator().manual_seed(4)
    for shape in ((2,), (3, 4, 4)):
        means = torch.randn(32, 4, *shape, generator=g)
        logits = torch.randn(32, 4, generator=g)
        rates = torch.randn(32, 4, generator=g) * 2
        rates[:, 0] = 0.0  # component 0 is a constant velocity
        tau = torch.rand(32, generator=g)
        compare(fn(means, logits, rates, tau), arcflow.arc_displacement(means, logits, rates, tau),
                f"the arc's displacement, means of shape {tuple(means.shape)}, per-sample tau", atol=1e-4)
    compare(fn(means, logits, rates, 0.5), arcflow.arc_displacement(means, logits, rates, 0.5),
            "the same with one scalar tau = 0.5", atol=1e-4)
    return ("matches arcflow.arc_displacement on [B, K, 2] and [B, K, 3, 4, 4] means, per-sample and scalar tau, "
            "with component 0 at rate 0 (where (e^z - 1) / z needs its limit 1)")


# ---------------------------------------------------------------- lab 03: the consistency family


def _cd_target(f_ema, velocity, x, t, t_next):
    with torch.no_grad():
        dt = flows.expand_t(t_next - t, x)
        v1 = velocity(x, t)
        v2 = velocity(x + dt * v1, t_next)
        x_next = x + 0.5 * dt * (v1 + v2)
        return f_ema(x_next, t_next)


def _cd_euler(f_ema, velocity, x, t, t_next):  # an Euler teacher step where the recipe takes Heun
    with torch.no_grad():
        return f_ema(x + flows.expand_t(t_next - t, x) * velocity(x, t), t_next)


def _cd_no_step(f_ema, velocity, x, t, t_next):  # no teacher step: the EMA net at the next time, same point
    with torch.no_grad():
        return f_ema(x, t_next)


def _cd_wrong_time(f_ema, velocity, x, t, t_next):  # the EMA net evaluated at t, not at t_next
    with torch.no_grad():
        return f_ema(_cd_target(lambda y, s: y, velocity, x, t, t_next), t)


def _cd_no_sg(f_ema, velocity, x, t, t_next):  # no stop-gradient on the EMA target
    dt = flows.expand_t(t_next - t, x)
    v1 = velocity(x, t)
    v2 = velocity(x + dt * v1, t_next)
    return f_ema(x + 0.5 * dt * (v1 + v2), t_next)


@implement("03.cd_target", "the consistency-distillation target: one Heun step, then the EMA net",
           solution=_cd_target,
           wrong={"an Euler teacher step instead of Heun": _cd_euler,
                  "no teacher step (f_ema at the same point)": _cd_no_step,
                  "f_ema evaluated at t instead of t_next": _cd_wrong_time,
                  "no stop-gradient on the target": _cd_no_sg})
def _check_cd_target(fn) -> str:
    """``fn(f_ema, velocity, x, t, t_next)`` with ``x: [B, ...]``, ``t, t_next: [B]``, gives ``[B, ...]``."""
    g = torch.Generator().manual_seed(3)
    gauss = flows.GaussianLinearFlow(torch.tensor([1.5, -0.5]), 0.4)
    t = torch.rand(256, generator=g) * 0.9
    x = gauss.sample_marginal(256, t, generator=g)
    got = fn(gauss.consistency, gauss.velocity, x, t, t + 1 / 64)
    compare(got, gauss.consistency(x, t), "the target with the exact consistency function of the Gaussian case "
            "as f_ema (the CD residual f(x_t, t) - target must vanish, up to Heun's error)", atol=1e-4)
    for shape in ((2,), (3, 4, 4)):
        x = torch.randn(64, *shape, generator=g)
        t = torch.rand(64, generator=g) * 0.7
        t_next = t + 0.25

        def f_ema(y, s):
            return y + (1 - flows.expand_t(s, y)) * torch.tanh(y + flows.expand_t(s, y))

        want = f_ema(consistency.teacher_solve("heun", _bent_velocity, x, t, t_next), t_next)
        compare(fn(f_ema, _bent_velocity, x, t, t_next), want,
                f"the target on x of shape {tuple(x.shape)} (velocity sin(2x + t) - t x, a nonlinear f_ema)")
    f_net = ConsistencyFunction(_frozen_net())
    x, t = torch.randn(32, 2, generator=g), torch.rand(32, generator=g) * 0.5
    if fn(f_net, gauss.velocity, x, t, t + 0.1).requires_grad:
        raise AssertionError("your target carries gradient into the EMA network: compute it under "
                             "torch.no_grad(); in CD only f_theta(x_t, t) is trained")
    return ("the CD residual vanishes at the Gaussian case's exact consistency function; matches one Heun step "
            "then f_ema(., t_next) on [B, 2] and [B, 3, 4, 4]; carries no gradient")


prediction("03.cd_coupled_two_steps", "CD's 2-step sampler re-noises with fresh noise: is its coupled error "
           "smaller, about the same or larger than at 1 step?", ("smaller", "about the same", "larger"),
           solution="larger")
