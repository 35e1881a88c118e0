"""Trajectory distillation: regress the teacher's ODE solution directly, or halve its steps in rounds.

Two of the oldest step-distillation methods, both *supervised by the teacher's own trajectories*:

* **Direct (trajectory) distillation** -- Luhman & Luhman (2021), "Knowledge distillation in
  iterative generative models for improved sampling speed". Solve the teacher's ODE once from many
  noises ``z``, store the pairs ``(z, ODE_teacher(z))``, and regress a one-step generator on them:
  ``L = E_z || G(z) - ODE_teacher(z) ||^2``. See :func:`trajectory_loss` and
  :func:`train_trajectory`.
* **Progressive distillation** -- Salimans & Ho (2022), "Progressive distillation for fast sampling
  of diffusion models", Algorithm 2. A student learns to cover in *one* step what its teacher covers
  in *two*; the student then becomes the teacher of the next round, halving the step count each
  round (64 -> 32 -> ... -> 1). Here it is written for the flow / velocity parametrisation of this lab
  (one Euler step of the velocity net replaces one DDIM step of the denoiser). See
  :func:`progressive_target`, :func:`progressive_loss` and :func:`train_progressive`.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ...core.flows import Velocity, batch_t, expand_t, interpolate
from ...core.registry import recipe
from ...nets.utils import clone_frozen
from .students import OneStepGenerator, VelocityStudent

__all__ = [
    "trajectory_loss", "teacher_pairs", "train_trajectory",
    "progressive_target", "progressive_loss", "ProgressiveStudent", "train_progressive",
]


# --------------------------------------------------------------------------- direct distillation
def trajectory_loss(student_x: torch.Tensor, teacher_x: torch.Tensor):
    """Direct trajectory-distillation loss, Luhman & Luhman (2021), the student objective of Sec. 3.

    Luhman & Luhman, "Knowledge distillation in iterative generative models for improved sampling
    speed" (2021), Section 3, the "Denoising Student" loss (a KL to the teacher's deterministic DDIM
    map that reduces to a squared error): ``L = E_z || G(z) - ODE_teacher(z) ||^2``, here as the
    mean squared error over all entries.

    Parameters
    ----------
    student_x : ``[B, ...]``, the student's sample ``G(z)`` from noise ``z`` (carries gradient).
    teacher_x : ``[B, ...]``, the teacher's ODE endpoint from the *same* noise ``z``. The teacher
        provides only this deterministic solution (computed once, without gradient). It is under
        stop-gradient: the function detaches it, so no gradient reaches the teacher even when the
        caller passes a tensor that still has a graph.

    Returns
    -------
    ``(loss, info)``: the scalar mean squared error and ``{"loss", "coupled"}`` (detached), where
    ``coupled`` is the mean Euclidean distance ``E |G(z) - ODE_teacher(z)|``.
    """
    if student_x.shape != teacher_x.shape:
        raise ValueError(f"student and teacher samples must have the same shape [B, ...], got "
                         f"{tuple(student_x.shape)} and {tuple(teacher_x.shape)}; pair each noise z with "
                         "the teacher's ODE solution from that same z")
    if student_x.dim() < 2:
        raise ValueError(f"samples must have shape [B, ...], got {tuple(student_x.shape)}")
    target = teacher_x.detach()  # stop-gradient: the teacher's endpoint is a fixed regression target
    diff = student_x - target
    loss = diff.pow(2).mean()
    info = {"loss": loss.detach(),
            "coupled": diff.detach().reshape(diff.shape[0], -1).norm(dim=1).mean()}
    return loss, info


@torch.no_grad()
def teacher_pairs(exp, n: int, chunk: int = 4096, progress: bool = True):
    """``n`` pairs ``(z, exp.teacher_sample(z))``: fresh noise and the teacher's ODE endpoint.

    Solved in chunks of ``chunk`` noises with a progress bar (the teacher's reference solver is 64
    midpoint evaluations, so this is the expensive part of direct distillation, paid once).
    """
    if n < 1 or chunk < 1:
        raise ValueError(f"need n >= 1 pairs and chunk >= 1, got n={n}, chunk={chunk}")
    z = exp.noise_batch(n)
    xs = [exp.teacher_sample(z[i:i + chunk])
          for i in tqdm(range(0, n, chunk), desc="teacher ODE pairs", disable=not progress, leave=False)]
    return z, torch.cat(xs)


@recipe("trajectory", tracks=("toy2d", "cifar-gen"), family="trajectory", nfes=(1,),
        paper="Luhman & Luhman 2021, Knowledge distillation in iterative generative models")
def train_trajectory(exp, steps: int | None = None, **overrides) -> nn.Module:
    """Direct distillation of the teacher's ODE map into a one-step generator ``G(z) = z + v(z, 0)``.

    The student is warm-started from the teacher (so it starts as the teacher's 1-step Euler
    sample); the pairs come from a pool solved once (``pool`` noises) and are re-drawn in
    mini-batches. Overrides: ``pool``, ``batch``, ``lr``.
    """
    sc = exp.scale
    steps = steps or sc.pick(ci=800, default=4000, gpu=20000)
    pool = overrides.pop("pool", sc.pick(ci=8192, default=65536, gpu=262144))
    batch = overrides.pop("batch", sc.batch)
    lr = overrides.pop("lr", 1e-3)
    if overrides:
        raise ValueError(f"train_trajectory: unknown overrides {sorted(overrides)}; known: pool, batch, lr")

    z_pool, x_pool = teacher_pairs(exp, pool, progress=exp.progress)
    student = OneStepGenerator(exp.student_net(1)).to(exp.device)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def step(i):
        idx = torch.randint(0, pool, (batch,), device=z_pool.device)
        loss, info = trajectory_loss(student(z_pool[idx]), x_pool[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return info

    student.history = exp.fit(step, steps, desc="trajectory distillation")
    return student.eval()


# --------------------------------------------------------------------------- progressive distillation
def _check_times(x: torch.Tensor, t, h):
    t = batch_t(t, x)
    h = batch_t(h, x)
    if t.shape != (x.shape[0],) or h.shape != (x.shape[0],):
        raise ValueError(f"t and h must be scalars or have shape [B]=[{x.shape[0]}], got "
                         f"{tuple(t.shape)} and {tuple(h.shape)}")
    if (h <= 0).any():
        raise ValueError("the teacher step h must be positive (time runs from noise t=0 to data t=1)")
    if (t < 0).any() or (t + 2 * h > 1 + 1e-5).any():
        raise ValueError("need 0 <= t and t + 2h <= 1: the student's step [t, t + 2h] must lie in [0, 1]")
    return t, h


def progressive_target(teacher_velocity: Velocity, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor):
    """The progressive-distillation target in the velocity parametrisation.

    Salimans & Ho (2022), "Progressive distillation for fast sampling of diffusion models",
    Algorithm 2, lines "2 steps of DDIM with teacher" and "the target x~ such that one student step
    lands there", adapted to flows: a teacher (DDIM) step becomes an Euler step of size ``h`` of the
    teacher's velocity, and the student's one step of size ``2h`` must reach the same point::

        x'  = x  + h v_T(x,  t)
        x'' = x' + h v_T(x', t + h)
        v*  = (x'' - x) / (2h) = (v_T(x, t) + v_T(x', t + h)) / 2

    Parameters
    ----------
    teacher_velocity : ``velocity(x, t)``, the previous round's student (or the flow teacher). It is
        evaluated twice, entirely under ``torch.no_grad()`` -- the target is under stop-gradient.
    x : ``[B, ...]`` points at time ``t``.
    t : ``[B]`` (or a scalar) start times; h : ``[B]`` (or a scalar) teacher step, ``t + 2h <= 1``.

    Returns
    -------
    ``(v_target, x_end)``: the velocity target ``[B, ...]`` and the teacher's two-step endpoint
    ``x''`` ``[B, ...]``, both without gradient. ``x + 2h v_target == x_end`` by construction.
    """
    t, h = _check_times(x, t, h)
    he = expand_t(h, x)
    with torch.no_grad():
        x_mid = x + he * teacher_velocity(x, t)
        x_end = x_mid + he * teacher_velocity(x_mid, t + h)
        v_target = (x_end - x) / (2 * he)
    return v_target.detach(), x_end.detach()


def progressive_loss(student_velocity: Velocity, teacher_velocity: Velocity, x: torch.Tensor,
                     t: torch.Tensor, h: torch.Tensor):
    """One round's loss of progressive distillation (Salimans & Ho 2022, Algorithm 2), flow version.

    ``L = E || v_S(x_t, t) - v* ||^2`` with ``v*`` from :func:`progressive_target`: the student's
    one Euler step of size ``2h`` from ``x_t`` should land where two teacher Euler steps of size
    ``h`` land. Since the student's endpoint error is ``2h (v_S - v*)``, regressing the velocity is
    the endpoint regression of Algorithm 2 weighted by ``1 / (2h)^2`` -- constant within a round
    (it plays the role of the paper's SNR weighting, keeping the loss scale comparable across rounds).

    Parameters
    ----------
    student_velocity : ``velocity(x, t)`` being trained (carries gradient).
    teacher_velocity : the frozen teacher of this round; the target is computed under
        ``torch.no_grad()`` and detached, so no gradient reaches the teacher or through ``x``'s
        teacher path.
    x : ``[B, ...]`` points at times ``t`` (in the paper: the interpolant of data and noise at a
        grid time of the student); t, h : ``[B]`` or scalars.

    Returns
    -------
    ``(loss, info)`` with ``info = {"loss", "endpoint_err"}`` (detached; ``endpoint_err`` is the mean
    distance between the student's one-step and the teacher's two-step endpoints).
    """
    t, h = _check_times(x, t, h)
    v_target, _ = progressive_target(teacher_velocity, x, t, h)
    v_student = student_velocity(x, t)
    if v_student.shape != x.shape:
        raise ValueError(f"the student velocity must have x's shape {tuple(x.shape)}, got {tuple(v_student.shape)}")
    diff = v_student - v_target
    loss = diff.pow(2).mean()
    end_err = (2 * expand_t(h, x) * diff.detach()).reshape(x.shape[0], -1).norm(dim=1).mean()
    return loss, {"loss": loss.detach(), "endpoint_err": end_err}


class ProgressiveStudent(nn.Module):
    """The students of every progressive round, kept side by side.

    ``nets[str(n)]`` is the velocity net trained to sample in ``n`` Euler steps; ``sample(z, nfe)``
    uses the net of the round whose step count is ``nfe``.
    """

    def __init__(self):
        super().__init__()
        self.nets = nn.ModuleDict()

    @property
    def nfes(self) -> list[int]:
        return sorted(int(k) for k in self.nets)

    def add(self, nfe: int, net: nn.Module) -> None:
        self.nets[str(nfe)] = net

    @torch.no_grad()
    def sample(self, z: torch.Tensor, nfe: int = 1) -> torch.Tensor:
        if str(nfe) not in self.nets:
            raise ValueError(f"no progressive round was trained for nfe={nfe}; available: {self.nfes}")
        return VelocityStudent(self.nets[str(nfe)]).sample(z, nfe)


@recipe("progressive", tracks=("toy2d", "cifar-gen"), family="trajectory", nfes=(1, 2, 4),
        paper="Salimans & Ho 2022, Progressive distillation for fast sampling of diffusion models")
def train_progressive(exp, steps: int | None = None, **overrides) -> nn.Module:
    """Progressive distillation, ``start`` Euler steps of the teacher -> 1 step, halving each round.

    Round ``k`` trains a student with ``N`` steps (grid ``t = i / N``) to match two steps of its
    teacher (``h = 1 / (2N)``); the student starts as a copy of its teacher and becomes the next
    round's teacher. The first teacher is the flow teacher with ``start = 64`` Euler steps (ratio
    close to its 64-step midpoint reference), so there are ``log2(start)`` rounds. Starting from a
    fine Euler grid, as the paper starts from a many-step sampler, keeps the lesson's target one
    formula (two Euler steps); the first rounds are nearly free -- a copy of the teacher already
    almost matches two of its own small steps -- which is why they get the fewest Adam steps.

    ``steps`` is the total number of Adam steps over all rounds; rounds with few student steps
    (the last ones) are hardest and get more of it (weights ``round_weights``, default rising
    linearly). Overrides: ``start``, ``batch``, ``lr``, ``round_weights``.

    Returns a :class:`ProgressiveStudent` whose ``sample(z, nfe)`` works for every round's ``nfe``
    (``start / 2, ..., 2, 1``); its ``history`` is a dict ``{nfe: fit-history}``.
    """
    sc = exp.scale
    steps = steps or sc.pick(ci=1200, default=6000, gpu=30000)
    start = overrides.pop("start", 64)
    batch = overrides.pop("batch", sc.pick(ci=512, default=sc.batch, gpu=sc.batch))
    lr = overrides.pop("lr", 5e-4)
    weights = overrides.pop("round_weights", None)
    if overrides:
        raise ValueError(f"train_progressive: unknown overrides {sorted(overrides)}; "
                         "known: start, batch, lr, round_weights")
    if start < 2 or start & (start - 1):
        raise ValueError(f"start must be a power of two >= 2 (the teacher's step count), got {start}")
    n_rounds = start.bit_length() - 1
    if weights is None:
        weights = list(range(1, n_rounds + 1))
    if len(weights) != n_rounds:
        raise ValueError(f"round_weights needs one weight per round ({n_rounds}), got {len(weights)}")
    per_round = [max(1, round(steps * w / sum(weights))) for w in weights]

    out = ProgressiveStudent().to(exp.device)
    teacher = exp.teacher
    history = {}
    n_student = start // 2
    for r in range(n_rounds):
        net = exp.student_net(1)
        net.load_state_dict(teacher.state_dict())  # the student starts as its teacher
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, per_round[r])
        h = 1.0 / (2 * n_student)

        def step(i, net=net, opt=opt, sched=sched, teacher=teacher, n=n_student, h=h):
            x1 = exp.data_batch(batch)
            x0 = torch.randn_like(x1)
            t = torch.randint(0, n, (batch,), device=x1.device).to(x1.dtype) / n  # student grid times
            xt = interpolate(x0, x1, t)
            loss, info = progressive_loss(net, teacher, xt, t, h)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            return info

        history[n_student] = exp.fit(step, per_round[r], desc=f"progressive {2 * n_student}->{n_student} steps")
        net.eval()
        out.add(n_student, net)
        teacher = clone_frozen(net)
        n_student //= 2
    out.history = history
    return out.eval()
