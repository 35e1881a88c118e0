"""The consistency family: CD, CT, sCM, TBCM, Hyper-SD (TSCD) and CTM.

Every method here learns a map that jumps along the teacher's probability-flow ODE, and trains it by
asking two points of one trajectory to agree. They differ in three choices:

* **how far apart the two points are** - a grid cell (CD, CT, Hyper-SD, CTM) or infinitesimally close
  (sCM, TBCM: the difference becomes a time derivative computed with ``torch.func.jvp``);
* **where the second point comes from** - one teacher ODE step (CD, Hyper-SD), a few teacher steps
  (CTM), the same noise and data at the next time (CT, no teacher), or the ODE's tangent (sCM, TBCM);
* **where the jump lands** - always data (``f(x, t)``; CD, CT, sCM, TBCM), the end of a segment
  (Hyper-SD), or any later time (CTM: a flow map ``X(x, t, s)``).

Time direction (this lab's convention, see :mod:`distill_lab.core.flows`): ``t = 0`` is noise and ``t = 1``
is data, so the teacher ODE always steps *forward* in ``t``, from the noisier time to the cleaner one,
and the papers' "``t_{n+1} -> t_n``" reads "``t_n -> t_{n+1}``" here.

Each loss is one plain function returning ``(loss, info)``; each recipe (``cd``, ``ct``, ``scm``,
``tbcm``, ``hypersd``, ``ctm``) is its losses plus an update schedule.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ...core.flows import batch_t, expand_t, interpolate
from ...core.registry import recipe, with_options
from ...nets.utils import clone_frozen, ema_update
from .students import ConsistencyFunction, FlowMap

Tensor = torch.Tensor
Velocity = Callable[[Tensor, Tensor], Tensor]
STEP_METHODS = ("euler", "heun")


# ------------------------------------------------------------------ checks and small helpers
def _check_x_t(x: Tensor, t: Tensor, name: str = "t") -> Tensor:
    """Validate ``x: [B, ...]`` and a time ``[B]`` (or scalar) in ``[0, 1]``; return ``[B]``."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of shape [B, ...] with a batch dim and data dims, got "
                         f"{getattr(x, 'shape', type(x))}; add a batch dimension (x[None]) if needed")
    t = batch_t(t, x)
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"{name} must be a scalar or have shape [B]=[{x.shape[0]}], got {tuple(t.shape)}")
    if (t < 0).any() or (t > 1).any():
        raise ValueError(f"{name} must lie in [0, 1] (0 = noise, 1 = data); got values in "
                         f"[{float(t.min()):.3g}, {float(t.max()):.3g}]")
    return t


def _check_order(a: Tensor, b: Tensor, names: str, strict: bool = True) -> None:
    bad = (a >= b) if strict else (a > b)
    if bad.any():
        rel = "<" if strict else "<="
        raise ValueError(f"times must satisfy {names.replace(',', f' {rel} ')} for every sample "
                         f"(t grows from noise 0 to data 1); {int(bad.sum())} samples do not")


def ode_step(velocity: Velocity, x: Tensor, s: Tensor, t: Tensor, method: str = "heun") -> Tensor:
    """One teacher ODE step from time ``s`` to ``t`` (``[B]`` each): Euler or Heun (2 NFE)."""
    if method not in STEP_METHODS:
        raise ValueError(f"unknown ODE step {method!r}; choose one of {', '.join(STEP_METHODS)}")
    h = expand_t(t - s, x)
    v1 = velocity(x, s)
    if method == "euler":
        return x + h * v1
    v2 = velocity(x + h * v1, t)
    return x + 0.5 * h * (v1 + v2)


def teacher_solve(teacher_step, velocity: Velocity | None, x: Tensor, s: Tensor, t: Tensor,
                  n_steps: int = 1) -> Tensor:
    """Move ``x`` from ``s`` to ``t`` with ``n_steps`` uniform teacher steps, without gradient.

    ``teacher_step`` is ``"euler"``/``"heun"`` (steps of ``velocity``) or a callable flow map
    ``(x, s, t) -> x`` (e.g. an exact one in tests; then ``n_steps`` is ignored).
    """
    with torch.no_grad():
        if callable(teacher_step):
            return teacher_step(x, s, t)
        if velocity is None:
            raise ValueError("a teacher velocity is needed when teacher_step is 'euler' or 'heun'")
        h = (t - s) / n_steps
        for i in range(n_steps):
            x = ode_step(velocity, x, s + i * h, s + (i + 1) * h, teacher_step)
        return x


def _sg_call(module):
    """The stop-gradient copy of ``module``'s function: same parameters, detached.

    Gradients still flow through its *input* (as CTM's outer map needs), never into its parameters.
    A plain callable without parameters is returned as is.
    """
    if not isinstance(module, nn.Module):
        return module
    params = {k: v.detach() for k, v in module.named_parameters()}
    buffers = dict(module.named_buffers())
    return lambda *args: torch.func.functional_call(module, {**params, **buffers}, args)


def _mse_per_sample(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).reshape(a.shape[0], -1).mean(1)


def _info(**kw) -> dict:
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


# ------------------------------------------------------------------ 1. consistency distillation
def cd_loss(f: Callable, f_target: Callable, velocity: Velocity | None, x_t: Tensor, t: Tensor,
            t_next: Tensor, teacher_step="heun", weight: Tensor | None = None):
    """Consistency distillation loss with one teacher ODE step between adjacent grid times.

    Song, Dhariwal, Chen & Sutskever (2023), "Consistency Models", the CD objective ``L_CD^N``
    (Sec. 4, Definition 1; Algorithm 2), with the squared L2 distance and ``lambda = 1`` unless
    ``weight`` is given. In this lab's time direction ``t_n < t_{n+1}``: the teacher steps from the
    noisier ``t = t_n`` to ``t_next = t_{n+1}`` (closer to data), and

    ``L = E || f_theta(x_t, t) - sg[ f_ema(x_hat_{t_next}, t_next) ] ||^2``,
    ``x_hat_{t_next} = Phi_teacher(x_t; t -> t_next)``.

    Parameters
    ----------
    f : the student ``f(x, t)`` (e.g. :class:`ConsistencyFunction`), trained.
    f_target : the EMA target ``f_ema``; evaluated under ``torch.no_grad()`` (stop-gradient).
    velocity : the teacher ``v(x, t)``; provides the ODE step (no gradient).
    x_t : ``[B, ...]`` points at time ``t`` (noised data).
    t, t_next : ``[B]`` times with ``0 <= t < t_next <= 1``.
    teacher_step : ``"heun"`` (2 NFE), ``"euler"`` (1 NFE), or a flow map ``(x, s, t) -> x``.
    weight : optional ``[B]`` per-sample weights ``lambda(t_n)``.

    Stop-gradient: the teacher step and the whole target ``f_ema(x_hat, t_next)``; the gradient
    reaches only ``f(x_t, t)``. Returns ``(loss, info)``, ``loss`` a scalar.
    """
    t = _check_x_t(x_t, t)
    t_next = _check_x_t(x_t, t_next, "t_next")
    _check_order(t, t_next, "t,t_next")
    x_hat = teacher_solve(teacher_step, velocity, x_t, t, t_next)
    with torch.no_grad():
        target = f_target(x_hat, t_next)
    per = _mse_per_sample(f(x_t, t), target)
    loss = (per * weight).mean() if weight is not None else per.mean()
    return loss, _info(loss=loss, gap=(t_next - t).mean())


@recipe("cd", tracks=("toy2d", "cifar-gen"), family="consistency", nfes=(1, 2),
        paper="Song et al. 2023, Consistency Models (consistency distillation)")
def train_cd(exp, steps=None, **overrides):
    """Consistency distillation (Algorithm 2): EMA target, one Heun teacher step between grid times.

    Student: :class:`ConsistencyFunction` warm-started from the teacher (``exp.student_net()``), so it
    starts as the teacher's 1-step Euler sampler. Grid ``t_n = n / N``; ``N`` grows from ``N0`` to
    ``N1`` during training (coarse cells first propagate the ``t = 1`` boundary fast, fine cells then
    reduce the teacher-step bias). Overrides: ``lr``, ``batch``, ``N0``, ``N1``, ``ema``,
    ``teacher_step``.
    """
    sc = exp.scale
    o = dict(steps=steps or sc.pick(ci=400, default=2000, gpu=10000), lr=sc.pick(ci=1e-3, default=5e-4, gpu=2e-4),
             batch=sc.batch, N0=4, N1=sc.pick(ci=16, default=32, gpu=64), ema=sc.pick(ci=0.95, default=0.98, gpu=0.99),
             teacher_step="heun")
    o.update(overrides)
    f = ConsistencyFunction(exp.student_net())

    def pair_loss(f, f_ema, x0, x1, t, t_next):
        return cd_loss(f, f_ema, exp.velocity, interpolate(x0, x1, t), t, t_next, o["teacher_step"])

    return _train_on_grid(exp, f, o, "cd", pair_loss)


def _train_on_grid(exp, f, o, desc, pair_loss):
    """The loop CD and CT share: grid ``t_n = n / N`` with ``N`` growing from ``o["N0"]`` to
    ``o["N1"]``, ``pair_loss(f, f_ema, x0, x1, t_n, t_{n+1})`` on fresh data and noise, Adam on ``f``,
    EMA update of the target. Returns the EMA network, the sampler, as in the paper."""
    f_ema = clone_frozen(f)
    opt = torch.optim.Adam(f.parameters(), lr=o["lr"])

    def step(i):
        N = _grid_size(i, o["steps"], o["N0"], o["N1"])
        x1, x0 = exp.data_batch(o["batch"]), exp.noise_batch(o["batch"])
        n = torch.randint(0, N, (x1.shape[0],), device=x1.device)
        loss, _ = pair_loss(f, f_ema, x0, x1, n / N, (n + 1) / N)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(f_ema, f, o["ema"])
        return {"loss": loss, "N": N}

    f_ema.history = exp.fit(step, o["steps"], desc=desc)
    return f_ema.eval()


def _grid_size(i: int, steps: int, n0: int, n1: int) -> int:
    """A discretisation curriculum: ``N`` doubles from ``n0`` towards ``n1`` in equal phases."""
    if n1 <= n0:
        return int(n1)
    phases = []
    n = n0
    while n < n1:
        phases.append(n)
        n *= 2
    phases.append(n1)
    return int(phases[min(len(phases) - 1, i * len(phases) // steps)])


# ------------------------------------------------------------------ 2. consistency training
def ct_loss(f: Callable, f_target: Callable, x0: Tensor, x1: Tensor, t: Tensor, t_next: Tensor,
            weight: Tensor | None = None):
    """Consistency training loss: the pair shares the same noise and data, no teacher.

    Song et al. (2023), "Consistency Models", the CT objective ``L_CT^N`` (Sec. 5, Algorithm 3). The
    teacher step of CD is replaced by the interpolant itself: both points use the same ``x0, x1``,

    ``L = E || f_theta(x_t, t) - sg[ f_ema(x_{t_next}, t_next) ] ||^2``,
    ``x_t = (1 - t) x0 + t x1``, ``x_{t_next} = (1 - t_next) x0 + t_next x1``.

    Its per-sample residual is not zero even at the exact consistency function (``x1 - x0`` is a
    one-sample estimate of the velocity); its *expected gradient* there vanishes to first order in
    ``t_next - t`` (their Theorem 2). Shapes: ``x0, x1: [B, ...]``, ``t, t_next: [B]`` with
    ``t < t_next``. Stop-gradient: the whole target ``f_ema(x_{t_next}, t_next)``.
    """
    if x0.shape != x1.shape:
        raise ValueError(f"noise and data must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    t = _check_x_t(x1, t)
    t_next = _check_x_t(x1, t_next, "t_next")
    _check_order(t, t_next, "t,t_next")
    with torch.no_grad():
        target = f_target(interpolate(x0, x1, t_next), t_next)
    per = _mse_per_sample(f(interpolate(x0, x1, t), t), target)
    loss = (per * weight).mean() if weight is not None else per.mean()
    return loss, _info(loss=loss)


@recipe("ct", tracks=("toy2d", "cifar-gen"), family="consistency", nfes=(1, 2),
        paper="Song et al. 2023, Consistency Models (consistency training)")
def train_ct(exp, steps=None, **overrides):
    """Consistency training (Algorithm 3): no teacher in the loss, EMA target, growing grid ``N``.

    Initialised from the teacher's weights (``exp.student_net()``) for speed, so it is *consistency
    tuning* of a flow-matching net rather than training from scratch (pass ``init="scratch"`` for a
    fresh net). The teacher is never evaluated during training. Overrides: ``lr``, ``batch``, ``N0``,
    ``N1``, ``ema``, ``init``.
    """
    sc = exp.scale
    o = dict(steps=steps or sc.pick(ci=400, default=2000, gpu=10000), lr=sc.pick(ci=1e-3, default=5e-4, gpu=2e-4),
             batch=sc.batch, N0=4, N1=sc.pick(ci=16, default=32, gpu=64), ema=sc.pick(ci=0.95, default=0.98, gpu=0.99),
             init="teacher")
    o.update(overrides)
    if o["init"] not in ("teacher", "scratch"):
        raise ValueError(f"init must be 'teacher' or 'scratch', got {o['init']!r}")
    f = ConsistencyFunction(exp.student_net() if o["init"] == "teacher" else exp.new_net())
    return _train_on_grid(exp, f, o, "ct", ct_loss)


# ------------------------------------------------------------------ 3. continuous-time CM (sCM)
def consistency_tangent(f: Callable, velocity: Velocity, x_t: Tensor, t: Tensor,
                        tangent_warmup: float = 1.0):
    """``df/dt`` along the teacher ODE, by one forward-mode pass on the stop-gradient network.

    ``d/dt f(x_t, t) = grad_x f . v(x_t, t) + partial_t f`` = ``torch.func.jvp`` of ``f`` at
    ``(x_t, t)`` with tangents ``(v, 1)``. With ``f = x + (1 - t) F`` (a :class:`ConsistencyFunction`)
    this is ``(v - F) + (1 - t) dF/dt``, and ``tangent_warmup = r`` in ``[0, 1]`` scales the second
    part as sCM's tangent warmup does (Lu & Song 2024, Sec. 4.2). Computed under ``torch.no_grad``:
    returns ``(f(x_t, t), df/dt)``, both without graph. ``r < 1`` needs ``f`` with a ``.net``.
    """
    t = batch_t(t, x_t)
    with torch.no_grad():
        v = velocity(x_t, t)
        ones = torch.ones_like(t)
        if tangent_warmup == 1.0:
            fx, dfdt = torch.func.jvp(lambda xx, tt: f(xx, tt), (x_t, t), (v, ones))
        else:
            if not hasattr(f, "net"):
                raise ValueError("tangent_warmup < 1 needs a ConsistencyFunction f (with f.net) to split "
                                 "df/dt = (v - F) + (1 - t) dF/dt")
            F, dF = torch.func.jvp(lambda xx, tt: f.net(xx, tt), (x_t, t), (v, ones))
            te = expand_t(t, x_t)
            fx = x_t + (1 - te) * F
            dfdt = (v - F) + tangent_warmup * (1 - te) * dF
    return fx, dfdt


def scm_loss(f: Callable, velocity: Velocity, x_t: Tensor, t: Tensor, *, f_target: Callable | None = None,
             tangent_warmup: float = 1.0, norm_const: float = 0.1, weight: Tensor | None = None):
    """Continuous-time consistency loss with tangent normalisation (sCM).

    Lu & Song (2024), "Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models",
    the continuous-time consistency-model gradient (Sec. 4: the ``Delta t -> 0`` limit of the
    discrete CM loss) with tangent normalisation and tangent warmup (Sec. 4.2). The teacher provides ``v(x_t, t)``,
    the ODE direction along which ``f`` must stay constant.

    Sign convention in this lab's time direction (``t`` grows towards data). The discrete target is
    ``f^-(x_{t + dt}, t + dt) ~ f^-(x_t, t) + dt * g`` with ``g = d f^-/dt`` along the ODE, so the
    loss ``|| f_theta - sg(f^- + dt g) ||^2`` has gradient ``-2 dt grad_theta f . g``. We normalise
    ``g <- g / (rms(g) + c)`` (``rms`` over each sample's entries, ``c = norm_const``) and write

    ``L = E_w || f_theta(x_t, t) - sg[ f_theta(x_t, t) + g ] ||^2``  (mean over entries),

    whose value is ``E rms(g)^2`` and whose gradient is ``-2 E grad_theta f . g / D``: the student
    moves *along* ``+g``, the direction ``f`` changes as the ODE moves towards data, which is what
    cancels ``df/dt``. (sCM, with time running to noise, writes the same thing with ``-g``.)

    Parameters
    ----------
    f : :class:`ConsistencyFunction` (or any ``f(x, t)``), trained.
    velocity : the teacher ``v(x, t)`` (no gradient).
    x_t : ``[B, ...]``; t : ``[B]`` in ``[0, 1]``.
    f_target : the network whose tangent is taken (default ``f`` itself: ``theta^- = sg(theta)``).
    tangent_warmup : ``r`` in ``[0, 1]`` (see :func:`consistency_tangent`).
    norm_const : ``c`` in the normalisation; ``0`` or ``None`` switches normalisation off.
    weight : optional ``[B]`` weights ``w(t)``.

    Stop-gradient: ``v``, the jvp (``f^-`` and ``df^-/dt``), hence ``g`` and the whole target.
    Returns ``(loss, info)`` with ``info['dfdt_rms']`` the mean rms of the raw tangent.
    """
    t = _check_x_t(x_t, t)
    if not 0.0 <= tangent_warmup <= 1.0:
        raise ValueError(f"tangent_warmup must be in [0, 1], got {tangent_warmup}")
    f_sg = f if f_target is None else f_target
    _, dfdt = consistency_tangent(f_sg, velocity, x_t, t, tangent_warmup)
    rms = dfdt.pow(2).reshape(x_t.shape[0], -1).mean(1).sqrt()
    g = dfdt / (expand_t(rms, x_t) + norm_const) if norm_const else dfdt
    fx = f(x_t, t)
    target = (fx + g).detach()
    per = _mse_per_sample(fx, target)
    loss = (per * weight).mean() if weight is not None else per.mean()
    return loss, _info(loss=loss, dfdt_rms=rms.mean())


def _train_scm_like(exp, name: str, sample_xt, steps, overrides):
    """Shared loop of sCM and TBCM: only ``sample_xt(batch, i) -> (x_t, t)`` differs."""
    sc = exp.scale
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    o = dict(steps=sc.pick(ci=800, default=3000, gpu=12000), lr=sc.pick(ci=2e-5, default=2e-5, gpu=2e-5),
             batch=sc.batch, warmup=0.2)
    # pragma: no mutate end
    o["steps"] = steps or o["steps"]
    o["norm_const"] = 0.1  # sCM's tangent-normalisation constant c (Lu & Song 2024, Sec. 4.2)
    o.update(overrides)
    f = ConsistencyFunction(exp.student_net())
    opt = torch.optim.Adam(f.parameters(), lr=o["lr"], betas=(0.9, 0.99))
    n_warm = max(1, int(o["warmup"] * o["steps"]))

    def step(i):
        x_t, t = sample_xt(o["batch"], i)
        r = min(1.0, (i + 1) / n_warm)
        loss, info = scm_loss(f, exp.velocity, x_t, t, tangent_warmup=r, norm_const=o["norm_const"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss, "dfdt_rms": info["dfdt_rms"]}

    f.history = exp.fit(step, o["steps"], desc=name)
    return f.eval()


def _t_uniform(n: int, device) -> Tensor:
    """``t ~ U[0, 0.999)``: away from ``t = 1``, where ``f(x, 1) = x`` holds by construction."""
    return torch.rand(n, device=device) * 0.999


@recipe("scm", tracks=("toy2d", "cifar-gen"), family="consistency", nfes=(1, 2),
        paper="Lu & Song 2024, Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models")
def train_scm(exp, steps=None, **overrides):
    """sCM distillation: training points are noised data ``x_t = (1 - t) z + t x1``, ``t ~ U[0, 1)``.

    Student: :class:`ConsistencyFunction` warm-started from the teacher; ``theta^- = sg(theta)`` (no
    EMA), tangent warmup ``r: 0 -> 1`` over the first ``warmup`` fraction of steps, tangent
    normalisation ``c = 0.1``. Overrides: ``lr``, ``batch``, ``warmup``, ``norm_const``.
    """
    def sample_xt(b, i):
        x1, x0 = exp.data_batch(b), exp.noise_batch(b)
        t = _t_uniform(b, x1.device)
        return interpolate(x0, x1, t), t

    return _train_scm_like(exp, "scm", sample_xt, steps, overrides)


# ------------------------------------------------------------------ 4. TBCM (image-free sCM)
@torch.no_grad()
def trajectory_pairs(velocity: Velocity, z: Tensor, n_steps: int = 16, method: str = "heun",
                     mode: str = "trajectory"):
    """Training points ``(x_t, t)`` taken from the teacher's own ODE trajectories, no data.

    Tang et al. (2025), "Image-Free Timestep Distillation via Continuous-Time Consistency with
    Trajectory-Sampled Pairs" (TBCM). From noise ``z: [B, ...]`` the teacher integrates ``n_steps``
    steps to ``t = 1``. ``mode="trajectory"``: each sample takes a random grid index ``k < n_steps``
    and a partial Euler step of random length inside that cell, so ``t`` is continuous in ``[0, 1)``
    and ``x_t`` lies (to solver accuracy) on the teacher's trajectory - the generation space the
    sampler visits. ``mode="renoise"``: the teacher's endpoint is noised again with fresh noise,
    ``x_t = (1 - t) z' + t x_hat_1`` (the "diffusion space" with generated instead of real data).
    Returns ``(x_t, t)``, ``[B, ...]`` and ``[B]``, without gradient.
    """
    if mode not in ("trajectory", "renoise"):
        raise ValueError(f"mode must be 'trajectory' or 'renoise', got {mode!r}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    B = z.shape[0]
    grid = torch.linspace(0, 1, n_steps + 1, device=z.device)
    x = z
    if mode == "renoise":
        for k in range(n_steps):
            x = ode_step(velocity, x, batch_t(grid[k], x), batch_t(grid[k + 1], x), method)
        t = torch.rand(B, device=z.device) * 0.999
        return interpolate(torch.randn_like(z), x, t), t
    k_pick = torch.randint(0, n_steps, (B,), device=z.device)
    x_pick = torch.empty_like(z)
    for k in range(n_steps):
        sel = k_pick == k
        if sel.any():
            x_pick[sel] = x[sel]
        if k + 1 < n_steps and (k_pick > k).any():
            x = ode_step(velocity, x, batch_t(grid[k], x), batch_t(grid[k + 1], x), method)
    h = 1.0 / n_steps
    frac = torch.rand(B, device=z.device) * 0.999
    t0 = k_pick.to(z.dtype) * h
    t = t0 + frac * h
    x_t = x_pick + expand_t(frac * h, z) * velocity(x_pick, t0)
    return x_t, t


@recipe("tbcm", tracks=("toy2d", "cifar-gen"), family="consistency", nfes=(1, 2),
        paper="Tang et al. 2025, Image-Free Timestep Distillation via Continuous-Time Consistency "
              "with Trajectory-Sampled Pairs (TBCM)")
def train_tbcm(exp, steps=None, **overrides):
    """TBCM: the sCM loss (:func:`scm_loss`) on points from the teacher's trajectories, no data.

    Identical to ``scm`` except for where ``(x_t, t)`` come from (:func:`trajectory_pairs`): noise
    ``z`` integrated by the teacher (``traj_steps`` Heun steps). ``exp.data_batch`` is never called.
    To save teacher calls, a pool of ``pool`` batches of points is drawn every ``refresh`` steps and
    batches are resampled from it (each point is reused about ``refresh / pool`` times). Overrides:
    those of ``scm`` plus ``traj_steps``, ``mode``, ``refresh``, ``pool``.
    """
    o = dict(traj_steps=exp.scale.pick(ci=8, default=16, gpu=32), mode="trajectory", refresh=8, pool=2)
    for k in list(o):
        if k in overrides:
            o[k] = overrides.pop(k)
    pool = {}

    def sample_xt(b, i):
        # a pool of ``pool`` batches of trajectory points, regenerated every ``refresh`` steps
        if i % o["refresh"] == 0 or "x" not in pool:
            pool["x"], pool["t"] = trajectory_pairs(exp.velocity, exp.noise_batch(b * o["pool"]),
                                                    o["traj_steps"], "heun", o["mode"])
        idx = torch.randint(0, pool["x"].shape[0], (b,), device=pool["x"].device)
        return pool["x"][idx], pool["t"][idx]

    return _train_scm_like(exp, "tbcm", sample_xt, steps, overrides)


# ------------------------------------------------------------------ 5. Hyper-SD (TSCD)
def segment_end(t: Tensor, k: int) -> Tensor:
    """The end ``ceil(k t) / k`` of the segment of ``[0, 1]`` (``k`` equal parts) containing ``t``.

    Segments are ``[i/k, (i+1)/k)``; a time exactly on a boundary belongs to the segment it starts.
    """
    if k < 1:
        raise ValueError(f"the number of segments must be at least 1, got {k}")
    return torch.clamp(torch.floor(t * k + 1e-6) + 1, max=k) / k


def tscd_loss(X: Callable, X_target: Callable, velocity: Velocity | None, x_t: Tensor, t: Tensor,
              t_next: Tensor, seg_end: Tensor, teacher_step="heun", weight: Tensor | None = None):
    """Trajectory-segmented consistency distillation: consistency to each segment's end.

    Ren et al. (2024), "Hyper-SD: Trajectory Segmented Consistency Model for Efficient Image
    Synthesis", trajectory segmented consistency distillation (TSCD, Sec. 3): CD's loss with the jump landing on the segment end ``e`` instead of
    on data,

    ``L = E || X_theta(x_t, t, e) - sg[ X_ema(x_hat_{t_next}, t_next, e) ] ||^2``,

    ``x_hat_{t_next}`` one teacher step from ``t`` to ``t_next <= e`` (``X(x, e, e) = x`` makes the
    last cell of a segment a pure teacher target). ``X`` is a two-time flow map (:class:`FlowMap`).
    Shapes ``x_t: [B, ...]``, ``t, t_next, seg_end: [B]`` with ``t < t_next <= seg_end``.
    Stop-gradient: the teacher step and the whole EMA target.
    """
    t = _check_x_t(x_t, t)
    t_next = _check_x_t(x_t, t_next, "t_next")
    seg_end = _check_x_t(x_t, seg_end, "seg_end")
    _check_order(t, t_next, "t,t_next")
    _check_order(t_next, seg_end + 1e-6, "t_next,seg_end")
    x_hat = teacher_solve(teacher_step, velocity, x_t, t, t_next)
    with torch.no_grad():
        target = X_target(x_hat, t_next, seg_end)
    per = _mse_per_sample(X(x_t, t, seg_end), target)
    loss = (per * weight).mean() if weight is not None else per.mean()
    return loss, _info(loss=loss)


class SegmentedStudent(nn.Module):
    """Hyper-SD's students: one flow map per stage, each jumping segment end to segment end.

    Hyper-SD keeps the weights of each stage (its 8-, 4-, 2- and 1-step models). ``sample(z, nfe)``
    uses the stage with ``nfe`` segments and jumps ``0 -> 1/nfe -> ... -> 1``.
    """

    def __init__(self, stages: dict[int, FlowMap]):
        super().__init__()
        self.stages = nn.ModuleDict({str(k): m for k, m in stages.items()})

    @property
    def nfes(self):
        return sorted(int(k) for k in self.stages)

    @torch.no_grad()
    def sample(self, z: Tensor, nfe: int = 1) -> Tensor:
        if str(nfe) not in self.stages:
            raise ValueError(f"this Hyper-SD student has stages for nfe in {self.nfes}, got nfe={nfe}")
        return self.stages[str(nfe)].sample(z, nfe)


def _tscd_stages(exp, X: FlowMap, o: dict, segs: tuple[int, ...]):
    """Hyper-SD's TSCD stages on ``X`` (changed in place): for each segment count ``k`` in ``segs``,
    ``o["steps"] // len(segs)`` steps of :func:`tscd_loss` against an EMA target, the next stage starting
    from this stage's EMA. Returns ``(stages {k: frozen copy}, history, seconds)``."""
    stages, hist = {}, {"step": [], "loss": [], "segments": []}
    per_stage = max(1, o["steps"] // len(segs))
    offset, seconds = 0, 0.0
    for k in segs:
        X_ema = clone_frozen(X)
        opt = torch.optim.Adam(X.parameters(), lr=o["lr"])
        N = o["N"]

        def step(i, k=k, X_ema=X_ema, opt=opt):
            x1, x0 = exp.data_batch(o["batch"]), exp.noise_batch(o["batch"])
            n = torch.randint(0, N, (x1.shape[0],), device=x1.device)
            t, t_next = n / N, (n + 1) / N
            loss, _ = tscd_loss(X, X_ema, exp.velocity, interpolate(x0, x1, t), t, t_next, segment_end(t, k))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(X_ema, X, o["ema"])
            return loss

        h = exp.fit(step, per_stage, desc=f"hypersd k={k}")
        seconds += h["seconds"]
        hist["step"] += [s + offset for s in h["step"]]
        hist["loss"] += h["loss"]
        hist["segments"] += [k] * len(h["step"])
        offset += per_stage
        stages[k] = copy.deepcopy(X_ema).eval()
        X.load_state_dict(X_ema.state_dict())  # the next stage starts from this stage's EMA
    return stages, hist, seconds


@recipe("hypersd", tracks=("toy2d",), family="consistency", nfes=(1, 2, 4),
        paper="Ren et al. 2024, Hyper-SD: Trajectory Segmented Consistency Model (TSCD)")
def train_hypersd(exp, steps=None, **overrides):
    """TSCD with segments ``8 -> 4 -> 2 -> 1`` over stages, each stage starting from the previous one.

    Student: :class:`FlowMap` on ``exp.student_net(n_times=2)`` (so ``X(x, t, e)`` starts as the
    teacher's Euler step from ``t`` to ``e``). Per stage: grid ``t_n = n / N``, ``t`` a grid time,
    ``t_next = t + 1/N``, one Heun teacher step, EMA target. ``steps`` is the total over stages.
    Overrides: ``lr``, ``batch``, ``N``, ``ema``, ``segments``.
    """
    sc = exp.scale
    o = dict(steps=steps or sc.pick(ci=800, default=3000, gpu=12000), lr=sc.pick(ci=1e-3, default=5e-4, gpu=2e-4),
             batch=sc.batch, N=sc.pick(ci=16, default=32, gpu=64), ema=sc.pick(ci=0.95, default=0.98, gpu=0.99),
             segments=(8, 4, 2, 1))
    o.update(overrides)
    segs = tuple(int(k) for k in o["segments"])
    if any(o["N"] % k for k in segs):
        raise ValueError(f"the grid size N={o['N']} must be a multiple of every segment count {segs}")
    X = FlowMap(exp.student_net(n_times=2))
    stages, hist, seconds = _tscd_stages(exp, X, o, segs)
    student = SegmentedStudent(stages)
    hist["seconds"] = seconds
    student.history = hist
    return student.eval()



@recipe("hypersd_full", tracks=("toy2d",), family="consistency", nfes=(1, 2, 4),
        paper="Ren et al. 2024, Hyper-SD: TSCD, one model for all steps, reward feedback, DMD for one step")
def train_hypersd_full(exp, steps=None, reward=None, **overrides):
    """Hyper-SD's whole pipeline on the toy track, in four stages, ending in **one** model for every step count.

    Ren et al. (2024), "Hyper-SD": (1) TSCD stages ``8 -> 4 -> 2 -> 1`` (:func:`_tscd_stages`, as ``hypersd``);
    (2) one model for all steps: the last stage fine-tuned with the segment count drawn from ``segments`` at
    every step (the paper's unified LoRA; here the whole network); (3) reward feedback, when a differentiable
    ``reward`` is given: ``reward_weight`` times ``-r`` of the one-step output ``X(z, 0, 1)`` added to the
    mixed TSCD loss (the paper's human-feedback learning with a reward model; no reward, no stage);
    (4) score distillation for one step: DMD (:func:`~distill_lab.methods.step.dmd.dmd_loss`, with a fake score
    warm-started from the teacher and ``critic_updates`` updates a step) on ``X(z, 0, 1)``, plus the mixed TSCD
    loss so the other step counts keep working. Returns the one flow map (``sample(z, nfe)`` for any ``nfe``).
    Teacher provides the TSCD targets (Heun steps) and DMD's real
    score. Overrides: ``lr``, ``batch``, ``N``, ``ema``, ``segments``, ``unified_steps``, ``reward_steps``,
    ``reward_weight``, ``dmd_steps``, ``dmd_lr``, ``fake_lr``, ``critic_updates``, ``dmd_weight``.
    """
    # imported here, not at the top: importing dmd registers its recipes, and the registry keeps the
    # order the labs teach (consistency before distribution matching)
    from .dmd import _adam, _critic_step, dmd_loss, fake_score_loss, frozen
    from .reward import _reward_values

    sc = exp.scale
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    o = with_options(overrides, "hypersd_full", lr=sc.pick(ci=1e-3, default=5e-4, gpu=2e-4), batch=sc.batch,
                     N=sc.pick(ci=16, default=32, gpu=64), ema=sc.pick(ci=0.95, default=0.98, gpu=0.99),
                     segments=(8, 4, 2, 1), unified_steps=sc.pick(ci=200, default=750, gpu=3000),
                     reward_steps=sc.pick(ci=100, default=400, gpu=1500), reward_weight=0.05,
                     dmd_steps=sc.pick(ci=200, default=750, gpu=3000), dmd_lr=1e-4, fake_lr=4e-4, critic_updates=5,
                     dmd_weight=1.0)
    o["steps"] = steps or sc.pick(ci=800, default=3000, gpu=12000)
    # pragma: no mutate end
    segs = tuple(int(k) for k in o["segments"])
    if any(o["N"] % k for k in segs):
        raise ValueError(f"the grid size N={o['N']} must be a multiple of every segment count {segs}")
    X = FlowMap(exp.student_net(n_times=2))
    stages, hist, seconds = _tscd_stages(exp, X, o, segs)
    N, B = o["N"], o["batch"]
    X_ema = clone_frozen(X)

    def mixed_tscd():
        k = segs[int(torch.randint(0, len(segs), ()))]
        x1, x0 = exp.data_batch(B), exp.noise_batch(B)
        n = torch.randint(0, N, (B,), device=x1.device)
        t, t_next = n / N, (n + 1) / N
        loss, _ = tscd_loss(X, X_ema, exp.velocity, interpolate(x0, x1, t), t, t_next, segment_end(t, k))
        return loss

    def one_step(z):
        zero = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        return X(z, zero, zero + 1)

    logs = {}
    opt = torch.optim.Adam(X.parameters(), lr=o["lr"])

    def unify(i):
        loss = mixed_tscd()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(X_ema, X, o["ema"])
        return {"loss": float(loss.detach())}

    logs["unified"] = exp.fit(unify, o["unified_steps"], desc="hypersd one model") if o["unified_steps"] else {}
    X.load_state_dict(X_ema.state_dict())

    if reward is not None and o["reward_steps"]:
        def feedback(i):
            r = _reward_values(reward, one_step(exp.noise_batch(B)))
            loss = mixed_tscd() - o["reward_weight"] * r.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(X_ema, X, o["ema"])
            return {"loss": float(loss.detach()), "reward": float(r.detach().mean())}

        logs["reward"] = exp.fit(feedback, o["reward_steps"], desc="hypersd reward feedback")
        X.load_state_dict(X_ema.state_dict())

    if o["dmd_steps"]:
        fake = exp.student_net(1)
        g_opt, f_opt = _adam(X.parameters(), o["dmd_lr"]), _adam(fake.parameters(), o["fake_lr"])

        def distil(i):
            for _ in range(o["critic_updates"]):
                with torch.no_grad():
                    xg = one_step(exp.noise_batch(B))
                lf, _ = fake_score_loss(fake, xg)
                _critic_step(f_opt, lf)
            with frozen(fake):
                ld, info = dmd_loss(one_step(exp.noise_batch(B)), exp.velocity, fake)
            loss = o["dmd_weight"] * ld + mixed_tscd()
            g_opt.zero_grad(set_to_none=True)
            loss.backward()
            g_opt.step()
            ema_update(X_ema, X, o["ema"])
            return {"loss": float(loss.detach()), "dmd": float(ld.detach()), "grad_norm": info["grad_norm"]}

        logs["dmd"] = exp.fit(distil, o["dmd_steps"], desc="hypersd DMD one step")
        X.load_state_dict(X_ema.state_dict())
    hist["seconds"] = seconds  # X itself is the student: FlowMap.sample(z, nfe) serves every step count
    X.history, X.stage_histories, X.tscd_stages, X.config = hist, logs, stages, o
    return X.eval()

# ------------------------------------------------------------------ 6. CTM
def ctm_loss(X: Callable, X_target: Callable, velocity: Velocity | None, x_t: Tensor, t: Tensor,
             u: Tensor, s: Tensor, teacher_step="heun", n_solver_steps: int = 1,
             weight: Tensor | None = None):
    """Consistency trajectory model loss (soft consistency matching), compared in data space.

    Kim, Lai, Liao, Murata, Takida, Uesaka, He, Mitsufuji & Ermon (2024), "Consistency Trajectory
    Models: Learning Probability Flow ODE Trajectory of Diffusion" (ICLR), the CTM loss (Sec. 4,
    ``L_CTM``, with ``d`` measured after mapping both sides to data). In this lab's direction
    ``t < u <= s <= 1``:

    * student: ``X_theta(x_t, t, s)``, the any-to-any jump;
    * target: ``X_ema(x_hat_u, u, s)`` with ``x_hat_u`` the teacher solving ``t -> u``
      (``n_solver_steps`` steps) - the "soft" target mixes the teacher (up to ``u``) and the model;
    * both mapped to data by ``X_sg(., s, 1)``, the *stop-gradient* copy of the student,

    ``L = E || X_sg(X_theta(x_t, t, s), s, 1) - X_sg(sg[X_ema(x_hat_u, u, s)], s, 1) ||^2``.

    Stop-gradient: the teacher solve, the EMA target, and the parameters of the outer map ``X_sg``
    (gradient flows *through* its input into ``X_theta(x_t, t, s)`` only). ``X`` is a
    :class:`FlowMap` (``nn.Module``; for a plain callable the outer map is the callable itself).
    Shapes: ``x_t: [B, ...]``, ``t, u, s: [B]``.
    """
    t = _check_x_t(x_t, t)
    u = _check_x_t(x_t, u, "u")
    s = _check_x_t(x_t, s, "s")
    _check_order(t, u, "t,u")
    _check_order(u, s, "u,s", strict=False)
    outer = _sg_call(X)
    one = torch.ones_like(t)
    x_hat = teacher_solve(teacher_step, velocity, x_t, t, u, n_solver_steps)
    with torch.no_grad():
        target = outer(X_target(x_hat, u, s), s, one)
    pred = outer(X(x_t, t, s), s, one)
    per = _mse_per_sample(pred, target)
    loss = (per * weight).mean() if weight is not None else per.mean()
    return loss, _info(loss=loss)


def ctm_diagonal_loss(velocity_student: Velocity, x0: Tensor, x1: Tensor, t: Tensor,
                      teacher_velocity: Velocity | None = None):
    """CTM's DSM term, in flow-matching form, on the flow map's diagonal ``V(x, t, t)``.

    Kim et al. (2024), CTM, the denoising score matching term ``L_DSM`` that keeps ``s = t`` a
    diffusion model; with the linear interpolant it is flow matching (Lipman et al. 2023, eq. 23):
    ``E || V(x_t, t, t) - (x1 - x0) ||^2``. With ``teacher_velocity`` given the target is the
    teacher's ``v(x_t, t)`` instead (a distillation variant, zero at the exact velocity).
    Nothing is under stop-gradient except the target. Shapes ``x0, x1: [B, ...]``, ``t: [B]``.
    """
    if x0.shape != x1.shape:
        raise ValueError(f"noise and data must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    t = _check_x_t(x1, t)
    xt = interpolate(x0, x1, t)
    if teacher_velocity is None:
        target = x1 - x0
    else:
        with torch.no_grad():
            target = teacher_velocity(xt, t)
    loss = (velocity_student(xt, t) - target).pow(2).mean()
    return loss, _info(loss=loss)


@recipe("ctm", tracks=("toy2d",), family="consistency", nfes=(1, 2),
        paper="Kim et al. 2024, Consistency Trajectory Models (ICLR)")
def train_ctm(exp, steps=None, **overrides):
    """CTM distillation: any-to-any flow map, soft consistency matching plus the diagonal FM term.

    Student: :class:`FlowMap` on ``exp.student_net(n_times=2)``; EMA target. Times on a grid of
    ``N`` cells: ``t = n / N``, ``s`` uniform on the grid in ``(t, 1]`` (with probability ``p_one``
    exactly 1, the jump the 1-step sampler uses), ``u = min(t + k / N, s)`` with ``k`` in
    ``1..max_k``; the teacher solves ``t -> u`` in ``k`` Heun steps. Loss ``L_CTM + lam * L_diag``.
    Overrides: ``lr``, ``batch``, ``N``, ``ema``, ``max_k``, ``p_one``, ``lam``, ``diag_target``
    (``"data"`` as in CTM, or ``"teacher"``).
    """
    sc = exp.scale
    o = dict(steps=steps or sc.pick(ci=600, default=3000, gpu=12000), lr=sc.pick(ci=1e-3, default=5e-4, gpu=2e-4),
             batch=sc.batch, N=sc.pick(ci=16, default=32, gpu=64), ema=sc.pick(ci=0.95, default=0.98, gpu=0.99),
             max_k=4, p_one=0.5, lam=1.0,
             diag_target="data")
    o.update(overrides)
    if o["diag_target"] not in ("data", "teacher"):
        raise ValueError(f"diag_target must be 'data' or 'teacher', got {o['diag_target']!r}")
    X = FlowMap(exp.student_net(n_times=2))
    X_ema = clone_frozen(X)
    opt = torch.optim.Adam(X.parameters(), lr=o["lr"])
    N = o["N"]

    def step(i):
        x1, x0 = exp.data_batch(o["batch"]), exp.noise_batch(o["batch"])
        B, dev = x1.shape[0], x1.device
        n = torch.randint(0, N, (B,), device=dev)
        m = n + 1 + (torch.rand(B, device=dev) * (N - n)).long().clamp(max=N - n - 1)  # s index in (n, N]
        m = torch.where(torch.rand(B, device=dev) < o["p_one"], torch.full_like(m, N), m)
        k = int(torch.randint(1, o["max_k"] + 1, (1,)))
        j = torch.minimum(n + k, m)
        t, u, s = n / N, j / N, m / N
        l_ctm, _ = ctm_loss(X, X_ema, exp.velocity, interpolate(x0, x1, t), t, u, s, "heun", k)
        tv = exp.velocity if o["diag_target"] == "teacher" else None
        l_diag, _ = ctm_diagonal_loss(X.velocity, x0, x1, torch.rand(B, device=dev), tv)
        loss = l_ctm + o["lam"] * l_diag
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(X_ema, X, o["ema"])
        return {"loss": loss, "ctm": l_ctm, "diag": l_diag}

    hist = exp.fit(step, o["steps"], desc="ctm")
    X_ema.history = hist
    return X_ema.eval()
