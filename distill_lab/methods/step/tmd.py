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
  head is the teacher's output layer plus a light conditional MLP on ``[P h, y, s, d]`` whose output
  layer starts at zero. The head is a flow *map* in ``y``-space: it predicts ``Y`` (x-prediction) for a
  jump of size ``d`` from inner time ``s``, ``y <- y + d (Y_hat - y) / (1 - s)``; ``M`` jumps of
  ``1 / M`` take ``y_0 ~ N(0, I)`` to a sample of ``Y``. At initialisation ``Y_hat`` is the teacher's
  velocity whatever ``y``, so the student starts as the teacher's ``K``-step Euler sampler;
* stage 1, adapting the head into a conditional flow map (the paper's first stage), data-free:
  ``X_1`` are the teacher's ODE samples, ``X_0`` fresh independent noise.
  :func:`transition_matching_loss` trains the instantaneous flow (``d = 0``):
  ``|| Y_hat(h(x_t, t), y_s, s) - Y ||^2`` with ``y_s = (1 - s) y_0 + s Y``;
  :func:`head_flow_map_loss` makes a jump of ``d`` land where the instantaneous flow goes in many
  small Euler steps (flow-map distillation of the head's own flow), so a few inner jumps follow it;
* :func:`tmd_rollout` and the recipe ``tmd``: stage 2, DMD (:func:`~.dmd.dmd_loss`, with the shared
  fake-score update) on the output of the full rollout, gradient flowing through every outer and
  inner step into backbone and head.

Deviations, said plainly: the paper's flow head is the last few blocks of a video transformer, and
we do not know that its flow map is trained by the objective used here; the toy MLP's hidden
layers each cost up to half of the network, so the head is a new light MLP beside the teacher's output
layer. The cost of a sample is reported in full-network evaluations (:meth:`TransitionStudent.cost`),
counted from the multiply-adds of the layers each pass runs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...core.flows import batch_t, expand_t, interpolate, sample_ode
from ...core.registry import recipe, with_options
from ...nets.mlp import FourierSpace, FourierTime, TimeMLP
from .dmd import _adam, _critic_step, dmd_loss, fake_score_loss, frozen, T_MAX, T_MIN

__all__ = ["TransitionStudent", "transition_matching_loss", "head_flow_map_loss", "tmd_rollout", "train_tmd",
           "PAPER"]

PAPER = "NVIDIA 2026, Transition Matching Distillation for Fast Video Generation"


def _linear_macs(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


class TransitionStudent(nn.Module):
    """A TMD student built from a teacher :class:`~distill_lab.nets.mlp.TimeMLP`.

    ``features(x, t) -> (h, v)``: the backbone (the teacher's layers up to its last hidden activation)
    gives ``h: [B, width]``, and the teacher's output layer on ``h`` gives ``v``, the backbone's own
    velocity (the posterior mean of ``Y``). ``head(h, v, y, s, d) -> Y_hat = v + out(MLP([P h, y, s, d]))``:
    the flow head, a conditional flow *map* in ``y``-space: :meth:`jump` moves the inner state from
    ``s`` to ``s + d`` as ``y + d (Y_hat - y) / (1 - s)``; at ``d = 0`` it is the instantaneous flow
    (``Y_hat`` the x-prediction). ``out`` starts at zero. ``transition(x, t, t_next, inner)`` draws one
    outer transition in ``inner`` jumps of ``1 / inner``; ``inner=0`` skips the head (``Y = v``: the
    plain Euler step, the baseline). ``sample(z, nfe, inner)`` takes ``nfe`` uniform outer transitions.

    ``head_width`` sizes the head; ``inner`` is the default number of head steps per transition;
    ``flow_map=False``: the inner steps are Euler steps of the instantaneous flow (``d_in = 0``).
    """

    def __init__(self, teacher: TimeMLP, head_width: int = 64, inner: int = 4, n_freq: int = 4, y_freq: int = 4,
                 flow_map: bool = True):
        super().__init__()
        if not isinstance(teacher, TimeMLP) or teacher.n_times != 1:
            raise ValueError("TransitionStudent splits a one-time TimeMLP velocity net (the toy teacher); "
                             f"got {type(teacher).__name__}")
        if inner < 0 or head_width < 1:
            raise ValueError(f"inner steps must be >= 0 and head_width >= 1, got {inner} and {head_width}")
        net = copy.deepcopy(teacher)
        for p in net.parameters():
            p.requires_grad_(True)
        self.dim, self.inner, self.flow_map = net.dim, int(inner), bool(flow_map)
        self.space, self.time = net.space, net.time
        self.backbone = net.net[:-1]  # every hidden layer and its activation
        self.out = net.net[-1]  # the teacher's output layer: h -> velocity
        self.y_time = FourierTime(n_freq)
        self.y_space = FourierSpace(y_freq, 2 * net.space.period)
        self.proj = nn.Linear(net.width, head_width)
        n_in = head_width + self.y_space.dim(self.dim) + 2 * self.y_time.dim  # [P h, y, s, d]
        self.head_net = nn.Sequential(nn.Linear(n_in, head_width), nn.SiLU(),
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

    def head(self, h: torch.Tensor, v: torch.Tensor, y: torch.Tensor, s, d=0.0) -> torch.Tensor:
        """One flow-head pass: ``Y_hat`` from the inner state ``y`` at inner time ``s`` for a jump of size
        ``d`` (both ``[B]`` or scalars), given the backbone's ``(h, v)``. At ``d = 0``, the prediction of
        the transition's ``Y = X_1 - X_0`` (the x-prediction of the head's flow)."""
        flat = y.reshape(y.shape[0], -1)
        g = self.head_net(torch.cat([self.proj(h), self.y_space(flat), self.y_time(batch_t(s, y)),
                                     self.y_time(batch_t(d, y))], 1))
        return v + self.head_out(g).reshape(y.shape)

    def jump(self, h, v, y: torch.Tensor, s, d, d_in=None) -> torch.Tensor:
        """The head's flow map from ``s`` to ``s + d``: ``y + d (Y_hat(y, s, d_in) - y) / (1 - s)``
        (``d_in`` defaults to ``d``; ``d_in = 0`` is an Euler step of the instantaneous flow). A jump
        that ends at ``s + d = 1`` lands on ``Y_hat``. Keeps the graph."""
        s, d = batch_t(s, y), batch_t(d, y)
        y_hat = self.head(h, v, y, s, d if d_in is None else batch_t(d_in, y))
        return y + expand_t(d / (1 - s), y) * (y_hat - y)

    def inner_sample(self, h, v, y0: torch.Tensor, inner: int | None = None) -> torch.Tensor:
        """``inner`` jumps of ``1 / inner`` of the head's flow map from ``y0`` at ``s = 0`` to ``s = 1``
        (Euler steps of its instantaneous flow when the student was built with ``flow_map=False``);
        ``inner=0``: no head, ``Y = v``. Keeps the graph."""
        inner = self.inner if inner is None else int(inner)
        if inner < 0:
            raise ValueError(f"inner steps must be >= 0, got {inner}")
        if inner == 0:
            return v
        y = y0
        for j in range(inner):
            y = self.jump(h, v, y, j / inner, 1.0 / inner, None if self.flow_map else 0.0)
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
    [0, 1) unless given. Gradient reaches backbone and head. Returns ``(loss, info)``; ``info["h"]`` and
    ``info["v"]`` are the backbone's features at ``x_t``, detached (what :func:`head_flow_map_loss` reads).
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
    return loss, {"tm": float(loss.detach()), "h": h.detach(), "v": v.detach()}


def head_flow_map_loss(student: TransitionStudent, h: torch.Tensor, v: torch.Tensor, y0: torch.Tensor,
                       target: torch.Tensor, d: torch.Tensor, substeps: int = 8, s: torch.Tensor | None = None):
    """Stage 1's flow-map part: the head's jump of size ``d`` must land where its own instantaneous flow
    (``d_in = 0``, the flow :func:`transition_matching_loss` trains) goes from ``(y_s, s)`` in
    ``substeps`` Euler steps over ``[s, s + d]``: flow-map distillation of the head's flow into its jumps
    (the trajectory-distillation form of the Lagrangian flow-map objective, Boffi et al. 2025), so a few
    inner jumps do what many Euler steps would. ``y_s = (1 - s) y0 + s Y`` with ``Y = target``; ``s``
    is a multiple of ``d`` with ``s + d <= 1`` (drawn when not given).

    ``loss = mean_b || jump(y_s, s, d) - sg[Euler^substeps(y_s; s -> s + d)] ||^2 / d^2`` (summed over a
    sample's elements: a velocity-scale error). Stop-gradient: the Euler target (under ``no_grad``) and
    the backbone's ``h, v`` (only the head learns its jumps). Returns ``(loss, info)``.
    """
    d = batch_t(d, y0)
    if (d <= 0).any() or (d > 1).any():
        raise ValueError("jump sizes d must lie in (0, 1]")
    if substeps < 1:
        raise ValueError(f"substeps must be at least 1, got {substeps}")
    if s is None:
        s = torch.floor(torch.rand_like(d) / d) * d
    s = batch_t(s, y0)
    if ((s + d) > 1 + 1e-6).any() or (s < 0).any():
        raise ValueError("each jump must stay inside [0, 1]: need 0 <= s and s + d <= 1")
    y_s = interpolate(y0, target.detach(), s)
    h, v = h.detach(), v.detach()
    with torch.no_grad():
        goal, step = y_s, d / substeps
        for k in range(substeps):
            goal = student.jump(h, v, goal, s + k * step, step, 0.0)
    err = (student.jump(h, v, y_s, s, d) - goal) / expand_t(d, y_s)
    loss = err.pow(2).reshape(err.shape[0], -1).sum(1).mean()
    return loss, {"map": float(loss.detach())}


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
    """TMD: :class:`TransitionStudent` from the teacher; stage 1 (``pretrain`` steps on a pool of teacher
    samples) :func:`transition_matching_loss` plus, with ``flow_map``, :func:`head_flow_map_loss` at jump
    sizes ``2^-k``, ``k < levels`` (``substeps`` Euler steps each), so the head becomes a conditional
    flow map; then stage 2 DMD
    on the ``outer``-transition rollout (:func:`tmd_rollout`), ``critic_updates`` fake-score updates per
    student update.

    Ablations: ``inner=0`` is the baseline at the same backbone cost, a plain ``outer``-step Euler
    student trained by the same DMD stage (no head); ``flow_map=False`` keeps the head an instantaneous
    flow sampled by Euler steps. Options: ``outer``, ``inner``, ``flow_map``, ``levels``, ``substeps``,
    ``map_weight`` (the flow-map term's weight beside transition matching),
    ``head_width``,
    ``pretrain``, ``pool``, ``critic_updates``, ``gen_lr``, ``head_lr`` (stage 1's head), ``head_gen_lr``
    (stage 2's head; default ``gen_lr``), ``fake_lr``, ``batch``, ``grid_times`` (stage 1 at the outer
    transitions' start times ``k / outer`` only, the times the sampler uses; ``False``: uniform times,
    transition matching's own training).
    """
    sc = exp.scale
    # pragma: no mutate start (tuned defaults)
    o = with_options(overrides, "tmd", outer=2, inner=4, head_width=64,
                     pretrain=sc.pick(ci=600, default=2000, gpu=6000),
                     pool=sc.pick(ci=8192, default=32768, gpu=131072), critic_updates=2, gen_lr=1e-4, head_lr=3e-4,
                     head_gen_lr=None, fake_lr=4e-4, grid_times=True, flow_map=True, levels=3, substeps=8,
                     map_weight=0.03,
                     batch=sc.pick(ci=256, default=1024, gpu=4096))
    steps = sc.pick(ci=600, default=2000, gpu=6000) if steps is None else steps
    # pragma: no mutate end
    student = TransitionStudent(exp.teacher, o["head_width"], o["inner"], flow_map=o["flow_map"]).to(exp.device)
    head = [p for n, p in student.named_parameters() if n.startswith(("proj", "head_net", "head_out"))]
    body = [p for n, p in student.named_parameters() if not n.startswith(("proj", "head_net", "head_out"))]
    with torch.no_grad():
        pool = sample_ode(exp.velocity, exp.noise_batch(o["pool"]), 16, "midpoint")
    t_opt = torch.optim.Adam([{"params": head, "lr": o["head_lr"]}, {"params": body, "lr": o["gen_lr"]}])

    B1 = sc.batch

    def pre(i):
        x1 = pool[torch.randint(0, o["pool"], (B1,), device=exp.device)]
        t = (torch.randint(0, o["outer"], (B1,), device=exp.device) / o["outer"] if o["grid_times"]
             else torch.rand(B1, device=exp.device))
        x0, y0 = torch.randn_like(x1), torch.randn_like(x1)
        loss, info = transition_matching_loss(student, x1, t, x0=x0, y0=y0)
        logs = {"tm": loss.detach()}
        if o["flow_map"]:
            d = 2.0 ** -torch.randint(0, o["levels"], (B1,), device=exp.device).to(x1.dtype)
            lmap, _ = head_flow_map_loss(student, info["h"], info["v"], torch.randn_like(x1), x1 - x0, d,
                                         o["substeps"])
            loss = loss + o["map_weight"] * lmap
            logs["map"] = lmap.detach()
        t_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        t_opt.step()
        return {"loss": loss.detach(), **logs}

    needs_head = o["inner"] > 0
    pre_hist = exp.fit(pre, o["pretrain"], desc="tmd stage 1 (transition matching)") \
        if o["pretrain"] and needs_head else {}
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
