"""ArcFlow: a few-step student whose step follows a curved arc, integrated in closed form.

Yang, Tu, Zhang, Dai, Jiang & Wu (2026), "ArcFlow: Unleashing 2-Step Text-to-Image Generation via
High-Precision Non-Linear Flow Distillation" (arXiv 2602.09014). A few-step student usually jumps
along a straight line inside each step (one velocity times the step length), while the teacher's
trajectory bends. ArcFlow has the student predict, at the start of a step (point ``x``, time ``t``),
a *mixture of momentum processes* for the velocity over the elapsed time ``tau`` of that step,

.. math::  u(\\tau) = \\sum_k w_k\\, m_k\\, e^{a_k \\tau}, \\qquad w = \\mathrm{softmax}(\\ell),

with the first component constant (``a_0 = 0``, a plain velocity) and the others growing or decaying
at their own rate ``a_k``. Its integral is analytic,

.. math::  x(\\tau) = x + \\sum_k w_k\\, m_k\\, \\tau\\, \\varphi(a_k \\tau), \\qquad
           \\varphi(z) = (e^z - 1) / z,\\ \\varphi(0) = 1,

so the student lands on the arc's end with no discretisation error (:func:`arc_displacement`), and
every point inside the step is available to supervise. The paper trains the mixture by trajectory
distillation with light adapters on a frozen teacher (<5% of its parameters).

What this module implements: the mixture and its closed-form integral; a student
(:class:`ArcFlowStudent`) whose means are the teacher's velocity plus an adapter's offsets (so it
starts as the teacher's Euler step); trajectory distillation on the teacher's ODE paths, matching the
arc's position at the step's end and at points inside it (:func:`arcflow_loss`). ``k=1`` is the same
student with a single constant component: the linear shortcut ArcFlow is measured against. The
paper's adapters sit on 12B and 20B text-to-image teachers; here ``train_base=False`` freezes the
copied teacher and trains only the arc head (the adapter regime), ``train_base=True`` (default)
fine-tunes both.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.flows import batch_t, sample_ode
from ...core.registry import recipe
from ...nets.mlp import FourierSpace, FourierTime

__all__ = ["arc_velocity", "arc_displacement", "ArcFlowStudent", "arcflow_loss", "teacher_paths", "train_arcflow",
           "path_error"]

PAPER = "Yang et al. 2026, ArcFlow: 2-Step Text-to-Image Generation via High-Precision Non-Linear Flow Distillation"


def _check_mixture(means: torch.Tensor, logits: torch.Tensor, rates: torch.Tensor, tau) -> torch.Tensor:
    if means.dim() < 3:
        raise ValueError(f"means must have shape [B, K, ...] (K mixture components), got {tuple(means.shape)}")
    B, K = means.shape[:2]
    if logits.shape != (B, K) or rates.shape != (B, K):
        raise ValueError(f"logits and rates must have shape [B, K] = [{B}, {K}] like means' first two dims, "
                         f"got {tuple(logits.shape)} and {tuple(rates.shape)}")
    tau = batch_t(tau, means)
    if tau.shape != (B,):
        raise ValueError(f"tau must be a scalar or have shape [B] = [{B}], got {tuple(tau.shape)}")
    return tau


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` -> ``[B, K, 1, ...]`` broadcasting against ``like: [B, K, ...]``."""
    return v.reshape(*v.shape, *([1] * (like.dim() - 2)))


def arc_velocity(means: torch.Tensor, logits: torch.Tensor, rates: torch.Tensor, tau) -> torch.Tensor:
    """The mixture of momentum processes at elapsed time ``tau`` (ArcFlow's velocity parameterisation):
    ``u(tau) = sum_k softmax(logits)_k * means_k * exp(rates_k * tau)``.

    Shapes: ``means: [B, K, ...]``, ``logits, rates: [B, K]``, ``tau``: a scalar or ``[B]``. Returns ``[B, ...]``."""
    tau = _check_mixture(means, logits, rates, tau)
    w = torch.softmax(logits, 1) * torch.exp(rates * tau[:, None])
    return (_expand(w, means) * means).sum(1)


def _phi(z: torch.Tensor) -> torch.Tensor:
    """``(e^z - 1) / z`` with its limit 1 at ``z = 0`` (a series where ``|z|`` is small, where the
    quotient loses its digits)."""
    small = z.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 + z / 2 + z * z / 6, torch.expm1(safe) / safe)


def arc_displacement(means: torch.Tensor, logits: torch.Tensor, rates: torch.Tensor, tau) -> torch.Tensor:
    """The exact integral of :func:`arc_velocity` over ``[0, tau]`` (ArcFlow's analytic integration):
    ``x(tau) - x = sum_k softmax(logits)_k * means_k * tau * phi(rates_k * tau)``, ``phi(z) = (e^z - 1)/z``.

    Same shapes as :func:`arc_velocity`; with one component of rate 0 it is the Euler step ``tau * means_0``."""
    tau = _check_mixture(means, logits, rates, tau)
    w = torch.softmax(logits, 1) * _phi(rates * tau[:, None]) * tau[:, None]
    return (_expand(w, means) * means).sum(1)


class ArcFlowStudent(nn.Module):
    """A few-step sampler whose every step is an arc: ``x <- x + arc_displacement(head(x, t), h)``.

    ``base`` is a trainable copy of the teacher's velocity net (``exp.student_net()``). A small head
    (``adapter_width`` units, on Fourier features of ``x`` and ``t``) gives ``k`` mean offsets, ``k``
    logits and ``k - 1`` rates; component ``k``'s mean is ``base(x, t) + offset_k``. The head's last
    layer starts at zero, so every mean is the teacher's velocity, every rate 0 and the student is the
    teacher's Euler sampler before training. ``train_base=False`` freezes ``base`` (only the head learns,
    as ArcFlow's adapters on a frozen teacher). ``k=1`` has one constant component: a straight step.
    """

    def __init__(self, base: nn.Module, k: int = 4, adapter_width: int = 64, train_base: bool = True,
                 x_freq: int = 4, x_period: float = 3.6):
        super().__init__()
        if k < 1:
            raise ValueError(f"an arc needs at least one component, got k={k}")
        dim = int(getattr(base, "dim", 0))
        if dim < 1:
            raise ValueError("base must be a velocity net with a .dim (the flattened data size), "
                             "e.g. exp.student_net()")
        self.base, self.k, self.dim = base, k, dim
        base.requires_grad_(train_base)
        self.space, self.time = FourierSpace(x_freq, x_period), FourierTime(4)
        n_out = k * dim + k + (k - 1)
        self.head = nn.Sequential(nn.Linear(self.space.dim(dim) + self.time.dim, adapter_width), nn.SiLU(),
                                  nn.Linear(adapter_width, adapter_width), nn.SiLU(),
                                  nn.Linear(adapter_width, n_out))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def mixture(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(means [B, K, ...], logits [B, K], rates [B, K])`` at the start of a step from ``x`` at time ``t``."""
        t = batch_t(t, x)
        B, k, d = x.shape[0], self.k, self.dim
        out = self.head(torch.cat([self.space(x.reshape(B, -1)), self.time(t)], 1))
        offsets, logits, rates = out[:, :k * d].reshape(B, k, d), out[:, k * d:k * d + k], out[:, k * d + k:]
        means = self.base(x, t).reshape(B, 1, d) + offsets
        rates = torch.cat([torch.zeros_like(logits[:, :1]), rates], 1)  # component 0: a constant velocity
        return means.reshape(B, k, *x.shape[1:]), logits, rates

    def step(self, x: torch.Tensor, t, h) -> torch.Tensor:
        """One arc from ``x`` at time ``t`` over a step of length ``h`` (one network evaluation)."""
        return x + arc_displacement(*self.mixture(x, t), h)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, nfe: int = 1) -> torch.Tensor:
        if nfe < 1:
            raise ValueError(f"nfe must be at least 1, got {nfe}")
        x = z
        for i in range(nfe):
            x = self.step(x, i / nfe, 1 / nfe)
        return x


def arcflow_loss(student: ArcFlowStudent, path: torch.Tensor, start: torch.Tensor, stop: torch.Tensor,
                 inner: int = 3):
    """ArcFlow's trajectory distillation on the teacher's ODE paths: from the teacher's state at a step's
    start, the arc must pass through the teacher's states inside the step and at its end.

    ``path: [G + 1, B, ...]`` holds each sample's teacher trajectory on the uniform grid ``j / G`` (the
    teacher provides it: :func:`teacher_paths`, no gradient). ``start, stop: [B]`` integer grid indices
    of the student step ``[start / G, stop / G]``. The loss averages, over the batch, the squared error
    of the arc's position at the step's end and at ``inner`` grid points drawn inside it (with repeats
    when the step holds fewer), each in :func:`arc_displacement`'s closed form from one network call.
    The targets are data, not outputs of the student: nothing needs a stop-gradient.
    Returns ``(loss, {"end": ..., "inner": ...})``, the two parts' mean squares.
    """
    G, B = path.shape[0] - 1, path.shape[1]
    if start.shape != (B,) or stop.shape != (B,) or (start < 0).any() or (stop > G).any() or (stop <= start).any():
        raise ValueError(f"start and stop must be [B] = [{B}] grid indices with 0 <= start < stop <= {G}")
    rows = torch.arange(B, device=path.device)
    x = path[start, rows]
    mix = student.mixture(x, start.to(x.dtype) / G)
    span = (stop - start).to(x.dtype)
    end = x + arc_displacement(*mix, span / G)
    err_end = (end - path[stop, rows]).pow(2).reshape(B, -1).sum(1).mean()
    if inner <= 0:
        return err_end, {"end": err_end.detach(), "inner": torch.zeros(())}
    errs = []
    for _ in range(inner):
        j = start + 1 + (torch.rand(B, device=path.device) * (stop - start - 1).clamp(min=1)).long()
        j = torch.minimum(j, stop)
        xj = x + arc_displacement(*mix, (j - start).to(x.dtype) / G)
        errs.append((xj - path[j, rows]).pow(2).reshape(B, -1).sum(1).mean())
    err_in = torch.stack(errs).mean()
    return 0.5 * (err_end + err_in), {"end": err_end.detach(), "inner": err_in.detach()}


@torch.no_grad()
def teacher_paths(exp, n: int, grid: int = 32, chunk: int = 4096) -> torch.Tensor:
    """The teacher's ODE trajectories from ``n`` fresh noises on the grid ``j / grid``: ``[grid + 1, n, ...]``
    (``grid`` midpoint steps, ``2 * grid`` NFE; at ``grid=32`` the track's reference solver)."""
    z = exp.noise_batch(n)
    parts = [sample_ode(exp.velocity, z[i:i + chunk], 2 * grid, "midpoint", return_path=True)[1]
             for i in range(0, n, chunk)]
    return torch.cat(parts, 1)


@recipe("arcflow", tracks=("toy2d",), family="trajectory", nfes=(2,), paper=PAPER)
def train_arcflow(exp, steps: int | None = None, **overrides) -> ArcFlowStudent:
    """ArcFlow: :class:`ArcFlowStudent` trained by :func:`arcflow_loss` on a pool of teacher paths.

    Each sample's step is one of the steps of the uniform schedules in ``nfes``: by default the
    paper's 2-step sampler, ``[0, 1/2]`` and ``[1/2, 1]``. ``nfes=(1, 2)`` trains one student for both,
    but one arc from ``(x, 0)`` must then serve a step of length 1 and one of length 1/2, and both
    suffer (measured at ci, seed 0: 2-step sliced W2 5.96x the floor against 1.13x for 2 steps alone).
    Options: ``k`` (mixture components; ``k=1, inner=0`` is the straight few-step student trained on
    step ends, the baseline), ``inner`` (points inside the step), ``pool``, ``grid``, ``batch``, ``lr``,
    ``adapter_width``, ``train_base``, ``nfes``.
    """
    sc = exp.scale
    # pragma: no mutate start (tuned defaults)
    o = dict(k=4, inner=3, pool=sc.pick(ci=8192, default=32768, gpu=131072), grid=32, batch=sc.batch,
             lr=1e-3, adapter_width=64, train_base=True, nfes=(2,))
    # pragma: no mutate end
    unknown = set(overrides) - set(o)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for arcflow; known: {sorted(o)}")
    o.update(overrides)
    steps = steps or sc.pick(ci=800, default=3000, gpu=12000)
    G = o["grid"]
    bad = [n for n in o["nfes"] if n < 1 or G % n]
    if bad:
        raise ValueError(f"every student step must end on the teacher's grid: grid={G} is not a multiple of nfe {bad}")
    segments = torch.tensor([(i * G // n, (i + 1) * G // n) for n in o["nfes"] for i in range(n)], device=exp.device)
    path = teacher_paths(exp, o["pool"], G)
    student = ArcFlowStudent(exp.student_net(1), o["k"], o["adapter_width"], o["train_base"]).to(exp.device)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=o["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def step(i):
        idx = torch.randint(0, o["pool"], (o["batch"],), device=exp.device)
        seg = segments[torch.randint(0, len(segments), (o["batch"],), device=exp.device)]
        loss, info = arcflow_loss(student, path[:, idx], seg[:, 0], seg[:, 1], o["inner"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.detach(), **info}

    student.history = exp.fit(step, steps, desc=f"arcflow (k={o['k']})")
    student.config = o
    return student.eval()


@torch.no_grad()
def path_error(student: ArcFlowStudent, path: torch.Tensor, nfe: int) -> dict:
    """How closely the student's steps follow the teacher's trajectory, each step started from the
    teacher's own state (so errors do not compound): the RMS distance to the teacher's state at each
    step's middle (``"mid"``) and end (``"end"``), over held-out ``path: [G + 1, B, ...]``
    (:func:`teacher_paths` from other noises). A straight step can land on the end; only a step that
    bends with the trajectory also passes through its middle. ``"mid_sq"`` holds the per-sample squared
    mid-step errors (``[nfe * B]``, step by step) for paired comparisons of two students on one ``path``."""
    G = path.shape[0] - 1
    if nfe < 1 or G % (2 * nfe):
        raise ValueError(f"the grid ({G} steps) must hold each step's middle: use a multiple of 2 * nfe = {2 * nfe}")
    mids, ends = [], []
    for i in range(nfe):
        a, b = i * G // nfe, (i + 1) * G // nfe
        mix = student.mixture(path[a], a / G)
        for j, out in (((a + b) // 2, mids), (b, ends)):
            x = path[a] + arc_displacement(*mix, (j - a) / G)
            out.append((x - path[j]).pow(2).reshape(x.shape[0], -1).sum(1))
    mid = torch.cat(mids)
    return {"mid": float(mid.mean().sqrt()), "end": float(torch.cat(ends).mean().sqrt()), "mid_sq": mid}
