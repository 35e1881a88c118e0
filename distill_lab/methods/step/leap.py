"""VideoScene's leap flow distillation and its leap-time policy, on a toy restoration task.

Wang, Liu, Chi & Duan (2025), "VideoScene: Distilling Video Diffusion Model to Generate 3D Scenes in
One Step" (arXiv 2504.01956). A coarse estimate of the answer already exists (there, a rough render of
a feed-forward 3D reconstruction, with artifacts). Rather than start the many-step sampler from pure
noise, VideoScene noises the coarse estimate to a *leap* time ``tau`` and jumps from there to data in
one step of a distilled generator (leap flow distillation). Too late a leap keeps the artifacts, too
early a leap forgets the input; a small *policy* network picks the leap time for each input.

The toy: the coarse estimate of a data point ``x`` is ``c = x + s * eps`` with a per-sample artifact
level ``s`` (:func:`coarse_inputs`), which the policy does not see. :class:`LeapGenerator` is a
one-step generator from ``(x_tau, tau)`` to data, warm-started as the teacher's Euler jump and trained
by :func:`leap_distill_loss` to land on the teacher's ODE solution from the same leap state (the
distillation; the paper's own distillation objective on a video model and its 3D-aware parts are not
reproduced). :class:`LeapPolicy` scores each candidate leap time from ``c`` alone, trained by
:func:`policy_loss` to predict the error each leap time gives (a contextual bandit with every arm's
outcome observed: the toy can afford to try every leap time on each training input). What is
measured (:func:`evaluate_leap`): the error to the clean ``x`` at every fixed leap time and with the
policy's choice, and how far the outputs are from the data distribution.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.flows import batch_t, expand_t, interpolate, sample_ode
from ...nets.mlp import FourierSpace

__all__ = ["coarse_inputs", "leap_start", "LeapGenerator", "leap_distill_loss", "LeapPolicy", "policy_loss",
           "train_leap", "evaluate_leap", "LEAP_TIMES"]

PAPER = "Wang et al. 2025, VideoScene: Distilling Video Diffusion Model to Generate 3D Scenes in One Step"


def coarse_inputs(x: torch.Tensor, max_level: float = 1.0, generator: torch.Generator | None = None):
    """The toy's coarse estimates: ``c = x + s * eps``, ``s`` uniform in ``[0, max_level]`` per sample.
    Returns ``(c, s)`` with ``s: [B]``."""
    s = torch.rand(x.shape[0], generator=generator).to(x.device) * max_level
    eps = torch.randn(x.shape, generator=generator).to(x.device)
    return x + expand_t(s, x) * eps, s


def leap_start(coarse: torch.Tensor, tau, noise: torch.Tensor) -> torch.Tensor:
    """The leap state: the coarse estimate noised to time ``tau`` on the flow's path,
    ``x_tau = (1 - tau) * noise + tau * coarse`` (``tau = 0`` is pure noise, ``tau = 1`` the input itself)."""
    tau = batch_t(tau, coarse)
    if (tau < 0).any() or (tau > 1).any():
        raise ValueError("the leap time tau must lie in [0, 1]")
    return interpolate(noise, coarse, tau)


class LeapGenerator(nn.Module):
    """``G(x, tau) = x + (1 - tau) * v_theta(x, tau)``: one jump from the leap state at time ``tau`` to
    data. Copy the teacher's velocity net into it and it starts as the teacher's Euler jump."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, tau) -> torch.Tensor:
        tau = batch_t(tau, x)
        return x + expand_t(1 - tau, x) * self.net(x, tau)


def leap_distill_loss(generator: LeapGenerator, x_tau: torch.Tensor, tau: torch.Tensor, target: torch.Tensor):
    """Leap flow distillation's regression: ``mean_b || G(x_tau, tau) - sg[ODE_teacher(x_tau: tau -> 1)] ||^2``
    (summed over the sample's elements, averaged over the batch). The teacher provides ``target``, its
    ODE solution from the same leap state (:func:`train_leap` solves it once for a pool); it is detached."""
    if target.shape != x_tau.shape:
        raise ValueError(f"target must have x_tau's shape {tuple(x_tau.shape)}, got {tuple(target.shape)}")
    return (generator(x_tau, tau) - target.detach()).pow(2).reshape(x_tau.shape[0], -1).sum(1).mean()


class LeapPolicy(nn.Module):
    """Scores the candidate leap times for a coarse input: ``[B, 2] -> [B, m]`` predicted errors (an MLP on
    Fourier features of ``c``); the policy leaps at the time with the lowest predicted error."""

    def __init__(self, leap_times, width: int = 64, x_freq: int = 4, x_period: float = 3.6):
        super().__init__()
        self.register_buffer("leap_times", torch.as_tensor(leap_times, dtype=torch.float32))
        if self.leap_times.dim() != 1 or len(self.leap_times) < 2:
            raise ValueError("a policy chooses among at least two leap times")
        self.space = FourierSpace(x_freq, x_period)
        self.net = nn.Sequential(nn.Linear(self.space.dim(2), width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, len(self.leap_times)))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.net(self.space(c))

    @torch.no_grad()
    def choose(self, c: torch.Tensor) -> torch.Tensor:
        """The leap time ``[B]`` each input gets."""
        return self.leap_times[self(c).argmin(1)]


def policy_loss(predicted: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
    """The policy's regression onto the measured error of every leap time: ``mean (pred - sg[err])^2`` over
    the batch and the leap times (``[B, m]`` each). The errors are measurements, detached."""
    if predicted.shape != errors.shape:
        raise ValueError(f"predicted and measured errors must have one shape [B, m], got {tuple(predicted.shape)} "
                         f"and {tuple(errors.shape)}")
    return (predicted - errors.detach()).pow(2).mean()


@torch.no_grad()
def _leap_errors(generator, x, c, leap_times, noise) -> torch.Tensor:
    """``[B, m]``: squared distance to the clean ``x`` of the generator's output from each leap time."""
    errs = []
    for tau in leap_times.tolist():
        out = generator(leap_start(c, tau, noise), tau)
        errs.append((out - x).pow(2).reshape(x.shape[0], -1).sum(1))
    return torch.stack(errs, 1)


LEAP_TIMES = (0.5, 0.7, 0.85, 0.95)  # the candidate leap times (later leaps keep more of the input)


def train_leap(exp, leap_times=LEAP_TIMES, steps: int | None = None, policy_steps: int | None = None,
               pool: int | None = None, max_level: float = 1.0, lr: float = 1e-3, teacher_nfe: int = 32,
               batch: int | None = None) -> tuple[LeapGenerator, LeapPolicy]:
    """Leap flow distillation, then the policy (VideoScene's two parts).

    1. A pool of data points, their coarse estimates and, for each candidate leap time, the leap state
       and the teacher's ODE solution from it (``teacher_nfe`` midpoint evaluations over ``[0, 1]``, a
       jump getting its share); :class:`LeapGenerator` (a copy of the teacher) regresses onto them.
    2. :class:`LeapPolicy` learns, on fresh inputs, the error each leap time gives with that generator.
    Returns ``(generator, policy)``; both carry ``history``.
    """
    sc = exp.scale
    steps = steps or sc.pick(ci=600, default=2000, gpu=8000)
    policy_steps = policy_steps or sc.pick(ci=600, default=2000, gpu=4000)
    pool = pool or sc.pick(ci=8192, default=32768, gpu=131072)
    batch = batch or sc.batch
    taus = torch.as_tensor(leap_times, dtype=torch.float32)
    if (taus <= 0).any() or (taus >= 1).any():
        raise ValueError("leap times must lie strictly between 0 (pure noise) and 1 (the input itself)")
    with torch.no_grad():
        x = exp.data_batch(pool)
        c, _ = coarse_inputs(x, max_level)
        states, targets, times = [], [], []
        for tau in taus.tolist():
            xt = leap_start(c, tau, torch.randn_like(c))
            n = max(2, 2 * round(teacher_nfe * (1 - tau) / 2))
            states.append(xt)
            targets.append(sample_ode(exp.velocity, xt, n, "midpoint", tau, 1.0))
            times.append(torch.full((pool,), tau, device=exp.device))
        states, targets, times = torch.cat(states), torch.cat(targets), torch.cat(times)
    gen = LeapGenerator(exp.student_net(1))
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def gen_step(i):
        idx = torch.randint(0, len(states), (batch,), device=exp.device)
        loss = leap_distill_loss(gen, states[idx], times[idx], targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss

    gen.history = exp.fit(gen_step, steps, desc="leap flow distillation")
    gen.eval().requires_grad_(False)
    policy = LeapPolicy(taus).to(exp.device)
    p_opt = torch.optim.Adam(policy.parameters(), lr=lr)

    def policy_step(i):
        xb = exp.data_batch(batch)
        cb, _ = coarse_inputs(xb, max_level)
        errs = _leap_errors(gen, xb, cb, policy.leap_times, torch.randn_like(cb))
        loss = policy_loss(policy(cb), errs)
        p_opt.zero_grad(set_to_none=True)
        loss.backward()
        p_opt.step()
        return loss

    policy.history = exp.fit(policy_step, policy_steps, desc="leap-time policy")
    return gen, policy.eval()


@torch.no_grad()
def evaluate_leap(exp, generator: LeapGenerator, policy: LeapPolicy, n: int = 4000, max_level: float = 1.0,
                  seed: int = 0) -> dict:
    """Held-out figures on ``n`` fresh data points and coarse estimates (seeded), one noise shared by every
    leap time: for each fixed leap time and for the policy, the RMS error to the clean points
    (``"rmse"``), its per-sample squares (``"sq"``, for paired comparisons) and the sliced W2 of the
    outputs to held-out data over its floor (``"ratio"``). Also the coarse input's own RMS error and,
    for context, the best fixed time in hindsight."""
    g = torch.Generator().manual_seed(seed)
    x = exp.sample_data(n, seed + 101)
    c, level = coarse_inputs(x, max_level, generator=g)
    noise = torch.randn(x.shape, generator=g).to(x.device)
    errs = _leap_errors(generator, x, c, policy.leap_times, noise)
    out = {}
    for j, tau in enumerate(policy.leap_times.tolist()):
        y = generator(leap_start(c, tau, noise), tau)
        out[f"tau={tau:g}"] = {"rmse": float(errs[:, j].mean().sqrt()), "sq": errs[:, j], "ratio": _ratio(exp, y)}
    pick = policy(c).argmin(1)
    taus = policy.leap_times[pick]
    y = generator(leap_start(c, taus, noise), taus)
    sq = errs.gather(1, pick[:, None])[:, 0]
    out["policy"] = {"rmse": float(sq.mean().sqrt()), "sq": sq, "ratio": _ratio(exp, y),
                     "chosen": {f"{t:g}": float((taus == t).float().mean()) for t in policy.leap_times.tolist()},
                     "level_by_choice": {f"{t:g}": float(level[taus == t].mean()) if (taus == t).any() else None
                                         for t in policy.leap_times.tolist()}}
    out["coarse input"] = {"rmse": float((c - x).pow(2).sum(1).mean().sqrt()), "ratio": _ratio(exp, c)}
    return out


def _ratio(exp, y: torch.Tensor) -> float:
    """The outputs' distance to the held-out data over the noise floor (the experiment's metric)."""
    return exp.distance(y) / exp.floor
