"""Transition Matching Distillation (TMD): few outer transitions, each a small conditional flow.

"Transition Matching Distillation for Fast Video Generation" (NVIDIA, January 2026). A few-step
sampler takes ``K`` *outer* transitions ``x_{t_k} -> x_{t_{k+1}}``; each transition is not one
deterministic step but a sample from a conditional distribution, drawn by a light *flow head* in a
few *inner* steps. The teacher is split in two: a backbone (most of the network) runs once per outer
transition and gives features ``h = B(x_{t_k}, t_k)``; the flow head runs ``M`` times on those
features. So a transition costs one backbone pass and ``M`` cheap head passes.

What this module implements, on the lab's linear interpolant (``t = 0`` noise, ``t = 1`` data):

* the transition (difference transition matching, the form TMD builds on: Shaul et al. 2025,
  "Transition Matching"): ``x_{t'} = x_t + (t' - t) Y`` where ``Y`` is drawn from the head's
  conditional flow given ``h``. With ``Y = X_1 - X_0`` for the pair ``(X_0, X_1)`` that produced
  ``x_t``, this step lands *exactly* on the interpolant at ``t'``; so a head that samples the posterior
  of ``X_1 - X_0`` given ``x_t`` makes every outer transition exact in distribution, however few there
  are. A plain ``K``-step sampler can only take the posterior's *mean* (the velocity);
* :class:`TransitionStudent`: the backbone is the teacher's network up to its last hidden layer; the
  head is the teacher's output layer plus a light conditional MLP on ``[P h, y, s]`` whose output layer
  starts at zero. The head predicts ``Y`` (x-prediction in ``y``-space), and the inner sampler takes
  Euler steps of ``u = (Y_hat - y_s) / (1 - s)`` from ``y_0 ~ N(0, I)``; its last step lands on
  ``Y_hat``. At initialisation ``Y_hat`` is the teacher's velocity whatever ``y``, so the student
  starts as the teacher's ``K``-step Euler sampler;
* :func:`transition_matching_loss`: stage 1, adapting the head into a conditional flow (the paper's
  "transition matching pretraining"): ``|| Y_hat(h(x_t, t), y_s, s) - Y ||^2`` with
  ``y_s = (1 - s) y_0 + s Y``. It is data-free here: ``X_1`` are the teacher's ODE samples, ``X_0``
  fresh independent noise;
* :func:`tmd_rollout` and the recipe ``tmd``: stage 2, DMD (:func:`~.dmd.dmd_loss`, with the shared
  fake-score update) on the output of the full rollout, gradient flowing through every outer and
  inner step into backbone and head.

Deviations, said plainly: the paper's flow head is the last few blocks of a video transformer and
its stage 1 trains a conditional flow *map* (so the head needs few inner steps); here the toy MLP's
hidden layers each cost as much as a quarter of the network, so the head is a new light MLP beside
the teacher's output layer, and its inner sampler is plain Euler on the x-prediction. The cost of a
sample is reported in full-network evaluations (:meth:`TransitionStudent.cost`), counted from the
multiply-adds of the layers each pass runs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...core.flows import batch_t, expand_t, interpolate, sample_ode
from ...core.registry import recipe, with_options
from ...nets.mlp import FourierSpace, FourierTime, TimeMLP
from .dmd import _adam, _critic_step, dmd_loss, fake_score_loss, frozen, T_MAX, T_MIN

__all__ = ["TransitionStudent", "transition_matching_loss", "tmd_rollout", "train_tmd", "PAPER"]

PAPER = "NVIDIA 2026, Transition Matching Distillation for Fast Video Generation"


def _linear_macs(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


class TransitionStudent(nn.Module):
    """A TMD student built from a teacher :class:`~distill_lab.nets.mlp.TimeMLP`.

    ``features(x, t) -> (h, v)``: the backbone (the teacher's layers up to its last hidden activation)
    gives ``h: [B, width]``, and the teacher's output layer on ``h`` gives ``v``, the backbone's own
    velocity (the posterior mean of ``Y``). ``head(h, v, y, s) -> Y_hat = v + out(MLP([P h, y, s]))``:
    the flow head; ``out`` starts at zero. ``transition(x, t, t_next, inner)`` draws one outer
    transition; ``sample(z, nfe, inner)`` takes ``nfe`` uniform outer transitions.

    ``head_width`` sizes the head; ``inner`` is the default number of head steps per transition.
    """

    def __init__(self, teacher: TimeMLP, head_width: int = 64, inner: int = 4, n_freq: int = 4, y_freq: int = 4):
        super().__init__()
        if not isinstance(teacher, TimeMLP) or teacher.n_times != 1:
            raise ValueError("TransitionStudent splits a one-time TimeMLP velocity net (the toy teacher); "
                             f"got {type(teacher).__name__}")
        if inner < 1 or head_width < 1:
            raise ValueError(f"inner steps and head_width must be at least 1, got {inner} and {head_width}")
        net = copy.deepcopy(teacher)
        for p in net.parameters():
            p.requires_grad_(True)
        self.dim, self.inner = net.dim, int(inner)
        self.space, self.time = net.space, net.time
        self.backbone = net.net[:-1]  # every hidden layer and its activation
        self.out = net.net[-1]  # the teacher's output layer: h -> velocity
        self.y_time = FourierTime(n_freq)
        self.y_space = FourierSpace(y_freq, 2 * net.space.period)
        self.proj = nn.Linear(net.width, head_width)
        self.head_net = nn.Sequential(nn.Linear(head_width + self.y_space.dim(self.dim) + self.y_time.dim, head_width),
                                      nn.SiLU(),
                                      nn.Linear(head_width, head_width), nn.SiLU())
        self.head_out = nn.Linear(head_width, self.dim)
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)

    # ------------------------------------------------------------------ the two parts
    def features(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass: ``(h [B, width], v [B, ...])`` at ``(x, t)``."""
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"this student was built for samples of size {self.dim}, got x of shape {tuple(x.shape)}")
        h = self.backbone(torch.cat([self.space(flat), self.time(batch_t(t, x))], 1))
        return h, self.out(h).reshape(x.shape)

    def head(self, h: torch.Tensor, v: torch.Tensor, y: torch.Tensor, s) -> torch.Tensor:
        """One flow-head pass: the prediction ``Y_hat`` of the transition's ``Y = X_1 - X_0`` from the
        inner state ``y`` at inner time ``s`` (``[B]``), given the backbone's ``(h, v)``."""
        flat = y.reshape(y.shape[0], -1)
        g = self.head_net(torch.cat([self.proj(h), self.y_space(flat), self.y_time(batch_t(s, y))], 1))
        return v + self.head_out(g).reshape(y.shape)

    def inner_sample(self, h, v, y0: torch.Tensor, inner: int | None = None) -> torch.Tensor:
        """``inner`` Euler steps of the head's flow ``u = (Y_hat - y) / (1 - s)`` from ``y0`` at
        ``s = 0``; the last step lands on that step's ``Y_hat``. Keeps the graph."""
        inner = self.inner if inner is None else int(inner)
        if inner < 1:
            raise ValueError(f"a transition needs at least one inner step, got {inner}")
        y = y0
        for j in range(inner):
            s = j / inner
            y_hat = self.head(h, v, y, torch.full((y.shape[0],), s, device=y.device, dtype=y.dtype))
            y = y + (1.0 / inner) * (y_hat - y) / (1 - s)
        return y

    def transition(self, x: torch.Tensor, t, t_next, inner: int | None = None, y0: torch.Tensor | None = None):
        """One outer transition ``x_t -> x_t + (t_next - t) Y``: one backbone pass, ``inner`` head passes."""
        h, v = self.features(x, t)
        y = self.inner_sample(h, v, torch.randn_like(x) if y0 is None else y0, inner)
        return x + expand_t(batch_t(t_next, x) - batch_t(t, x), x) * y

    def rollout(self, z: torch.Tensor, nfe: int, inner: int | None = None) -> torch.Tensor:
        """``nfe`` uniform outer transitions from noise ``z`` to data (keeps the graph)."""
        if nfe < 1:
            raise ValueError(f"nfe (outer transitions) must be at least 1, got {nfe}")
        x = z
        for k in range(nfe):
            x = self.transition(x, k / nfe, (k + 1) / nfe, inner)
        return x

    @torch.no_grad()
    def sample(self, z: torch.Tensor, nfe: int = 2, inner: int | None = None) -> torch.Tensor:
        """The bench's interface: ``nfe`` outer transitions of ``inner`` head steps each (fresh inner noise)."""
        return self.rollout(z, nfe, inner)

    def cost(self, nfe: int, inner: int | None = None) -> float:
        """A sample's cost in full-network evaluations: ``nfe * (backbone + inner * head) / network``,
        counted in the multiply-adds of the linear layers each pass runs (the teacher's network is 1)."""
        inner = self.inner if inner is None else int(inner)
        full = _linear_macs(self.backbone) + _linear_macs(self.out)
        head = _linear_macs(self.proj) + _linear_macs(self.head_net) + _linear_macs(self.head_out)
        return nfe * (full + inner * head) / full


def transition_matching_loss(student: TransitionStudent, x1: torch.Tensor, t: torch.Tensor | None = None,
                             s: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                             y0: torch.Tensor | None = None):
    """Stage 1, difference transition matching (Shaul et al. 2025, the DTM loss that TMD's head is
    adapted with): ``x_t = (1 - t) x0 + t x1``, ``Y = x1 - x0``, ``y_s = (1 - s) y0 + s Y``, and
    ``loss = mean_b || Y_hat(h(x_t, t), y_s, s) - Y ||^2`` (summed over a sample's elements).

    ``x1`` are the teacher's samples (the teacher provides them, detached: no gradient reaches it);
    ``x0`` and ``y0`` are independent Gaussian noises, ``t`` uniform in [0, 1) and ``s`` uniform in
    [0, 1) unless given. Gradient reaches backbone and head. Returns ``(loss, info)``.
    """
    x1 = x1.detach()
    B = x1.shape[0]
    x0 = torch.randn_like(x1) if x0 is None else x0
    y0 = torch.randn_like(x1) if y0 is None else y0
    if x0.shape != x1.shape or y0.shape != x1.shape:
        raise ValueError(f"x0 and y0 must have x1's shape {tuple(x1.shape)}")
    t = torch.rand(B, device=x1.device, dtype=x1.dtype) if t is None else batch_t(t, x1)
    s = torch.rand(B, device=x1.device, dtype=x1.dtype) if s is None else batch_t(s, x1)
    if (s < 0).any() or (s >= 1).any() or (t < 0).any() or (t >= 1).any():
        raise ValueError("t and s must lie in [0, 1)")
    target = x1 - x0
    h, v = student.features(interpolate(x0, x1, t), t)
    y_hat = student.head(h, v, interpolate(y0, target, s), s)
    loss = (y_hat - target).pow(2).reshape(B, -1).sum(1).mean()
    return loss, {"tm": float(loss.detach())}


def tmd_rollout(student: TransitionStudent, z: torch.Tensor, nfe: int, real_velocity, fake_velocity,
                inner: int | None = None, t: torch.Tensor | None = None, noise: torch.Tensor | None = None):
    """Stage 2: DMD on the flow-head rollout. The student's full rollout (``nfe`` outer transitions of
    ``inner`` head steps, with gradient through all of them) gives ``x``; :func:`~.dmd.dmd_loss` (Yin
    et al. 2024, eqs. 7-8) gives its gradient from the teacher's (``real_velocity``) and the fake
    score's data predictions, both under ``no_grad``. Returns ``(loss, info)`` with ``info["x"]`` the
    detached samples (for the fake score's update)."""
    x = student.rollout(z, nfe, inner)
    loss, info = dmd_loss(x, real_velocity, fake_velocity, t=t, noise=noise)
    info["x"] = x.detach()
    return loss, info


@recipe("tmd", tracks=("toy2d",), family="distribution matching", nfes=(2,), paper=PAPER)
def train_tmd(exp, steps: int | None = None, **overrides) -> TransitionStudent:
    """TMD: :class:`TransitionStudent` from the teacher; stage 1 :func:`transition_matching_loss` on a
    pool of teacher samples (``pretrain`` steps), then stage 2 DMD on the ``outer``-transition rollout
    (:func:`tmd_rollout`), ``critic_updates`` fake-score updates per student update.

    ``inner=1`` is the baseline at the same backbone cost: a single head step from independent noise
    can only predict ``Y``'s mean, so the student is a plain ``outer``-step DMD student whose steps
    are the backbone's velocity (plus the head's correction). Options: ``outer``, ``inner``,
    ``head_width``, ``pretrain``, ``pool``, ``critic_updates``, ``gen_lr``, ``head_lr`` (stage 1's head),
    ``head_gen_lr`` (stage 2's head; default ``gen_lr``), ``fake_lr``, ``batch``, ``grid_times`` (stage 1
    at the outer transitions' start times ``k / outer`` only, the times the sampler uses; ``False``:
    uniform times, transition matching's own training).
    """
    sc = exp.scale
    # pragma: no mutate start (tuned defaults)
    o = with_options(overrides, "tmd", outer=2, inner=4, head_width=64,
                     pretrain=sc.pick(ci=600, default=2000, gpu=6000),
                     pool=sc.pick(ci=8192, default=32768, gpu=131072), critic_updates=2, gen_lr=1e-4, head_lr=1e-3,
                     head_gen_lr=None, fake_lr=4e-4, grid_times=True, batch=sc.pick(ci=256, default=1024, gpu=4096))
    steps = sc.pick(ci=600, default=2000, gpu=6000) if steps is None else steps
    # pragma: no mutate end
    student = TransitionStudent(exp.teacher, o["head_width"], o["inner"]).to(exp.device)
    head = [p for n, p in student.named_parameters() if n.startswith(("proj", "head_net", "head_out"))]
    body = [p for n, p in student.named_parameters() if not n.startswith(("proj", "head_net", "head_out"))]
    with torch.no_grad():
        pool = sample_ode(exp.velocity, exp.noise_batch(o["pool"]), 16, "midpoint")
    t_opt = torch.optim.Adam([{"params": head, "lr": o["head_lr"]}, {"params": body, "lr": o["gen_lr"]}])

    def pre(i):
        x1 = pool[torch.randint(0, o["pool"], (sc.batch,), device=exp.device)]
        t = torch.randint(0, o["outer"], (sc.batch,), device=exp.device) / o["outer"] if o["grid_times"] else None
        loss, info = transition_matching_loss(student, x1, t)
        _critic_step(t_opt, loss)
        return {"loss": loss.detach()}

    pre_hist = exp.fit(pre, o["pretrain"], desc="tmd stage 1 (transition matching)") if o["pretrain"] else {}
    fake = exp.student_net(1)
    head_gen_lr = o["gen_lr"] if o["head_gen_lr"] is None else o["head_gen_lr"]
    g_opt = torch.optim.Adam([{"params": head, "lr": head_gen_lr}, {"params": body, "lr": o["gen_lr"]}],
                             betas=(0.0, 0.99))
    f_opt = _adam(fake.parameters(), o["fake_lr"])
    B = o["batch"]

    def step(i):
        logs = {}
        for _ in range(o["critic_updates"]):
            with torch.no_grad():
                xg = student.rollout(exp.noise_batch(B), o["outer"])
            lf, info = fake_score_loss(fake, xg)
            _critic_step(f_opt, lf)
            logs.update(info)
        t = T_MIN + (T_MAX - T_MIN) * torch.rand(B, device=exp.device)
        with frozen(fake):
            loss, info = tmd_rollout(student, exp.noise_batch(B), o["outer"], exp.velocity, fake, t=t)
        _critic_step(g_opt, loss)
        logs["loss"] = float(loss.detach())
        logs["grad_norm"] = info["grad_norm"]
        return logs

    student.history = exp.fit(step, steps, desc=f"tmd stage 2 (DMD, {o['outer']}x{o['inner']})") if steps > 0 else {}
    student.pretrain_history = pre_hist
    student.fake = fake
    student.config = o
    return student.eval()
