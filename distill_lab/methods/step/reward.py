"""Reward-tilted distribution matching (RTDMD): distil toward ``p_teacher(x) exp(r(x) / beta)``.

Huang, Zhou, Wang, Zhang, Zhang & Pang (2026), "Reinforcing Few-step Generators via Reward-Tilted
Distribution Matching" (arXiv 2605.26108). The target is the teacher's distribution tilted by a
reward ``r`` (their eq. 6, written there with ``exp(beta r)``; here ``beta`` is a temperature, so
their ``beta`` is our ``1 / beta``)::

    p~(x) = p(x) exp(r(x) / beta) / Z.

The reverse KL to it splits in two (their eq. 7)::

    KL(p_G || p~) = KL(p_G || p) - E_{x ~ p_G}[r(x)] / beta + log Z,

a distribution-matching term and a reward term. In score form the tilted target's score is the
teacher's score plus ``grad r / beta``; so DMD, which follows the difference of two scores, needs
only a *tilted teacher*. This module builds that tilted teacher at every noise level (see
:func:`tilted_velocity`) and hands it to the package's DMD loss, so the reward enters the generator
gradient with exactly DMD's time weighting and normalisation, and ``beta -> inf`` is DMD itself.

* rewards: :func:`reward_right`, :func:`reward_linear`, :func:`reward_disk` (differentiable, ``[B]``);
* the tilt: :func:`tilted_velocity`, the loss :func:`rtdmd_loss`;
* the recipe ``rtdmd`` (a one-step generator) and :func:`beta_sweep` for the reward/fidelity
  trade-off, plus :func:`tilted_reference`, the exact tilted target by importance weighting of data.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch

from ...core.flows import Velocity, batch_t, expand_t
from ...core.registry import recipe
from .students import OneStepGenerator

Reward = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- rewards
def _check_points(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"{name}: expected samples of shape [B, ...], got {getattr(x, 'shape', type(x))}")
    return x


def reward_linear(x: torch.Tensor, direction: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """``r(x) = <a, x>`` for a fixed ``direction`` ``a`` shaped like one sample (``x[0]``). Returns ``[B]``.

    Its gradient is ``a`` everywhere, so tilting ``N(mu, s^2 I)`` by it gives ``N(mu + s^2 a / beta, s^2 I)``:
    the analytic case of the tests.
    """
    x = _check_points(x, "reward_linear")
    a = torch.as_tensor(direction, dtype=x.dtype, device=x.device)
    if a.shape != x.shape[1:]:
        raise ValueError(f"reward_linear: direction has shape {tuple(a.shape)}, but one sample has shape "
                         f"{tuple(x.shape[1:])}; pass a direction shaped like x[0]")
    return (x * a).flatten(1).sum(1)


def reward_right(x: torch.Tensor) -> torch.Tensor:
    """``r(x) = x_1``: the first coordinate (go right). For 2D points ``[B, 2]``; returns ``[B]``."""
    x = _check_points(x, "reward_right")
    if x.shape[1:] != (2,):
        raise ValueError(f"reward_right is defined for 2D points [B, 2], got {tuple(x.shape)}; "
                         "use reward_linear for other shapes")
    return x[:, 0]


def reward_disk(x: torch.Tensor, center: Sequence[float] = (1.35, 1.35), radius: float = 0.6,
                width: float = 0.15) -> torch.Tensor:
    """A smooth indicator of a disk: ``sigmoid((radius - |x - center|) / width)`` in ``(0, 1)``.

    Defaults put the disk on the checkerboard's top-right square. For 2D points ``[B, 2]``; returns ``[B]``.
    """
    x = _check_points(x, "reward_disk")
    if x.shape[1:] != (2,):
        raise ValueError(f"reward_disk is defined for 2D points [B, 2], got {tuple(x.shape)}")
    if radius <= 0 or width <= 0:
        raise ValueError(f"reward_disk: radius and width must be positive, got radius={radius}, width={width}")
    c = torch.as_tensor(center, dtype=x.dtype, device=x.device)
    d = (x - c).pow(2).sum(1).add(1e-12).sqrt()
    return torch.sigmoid((radius - d) / width)


def _reward_values(reward: Reward, x: torch.Tensor) -> torch.Tensor:
    r = reward(x)
    if r.shape != (x.shape[0],):
        raise ValueError(f"a reward must return one value per sample, shape [{x.shape[0]}], got {tuple(r.shape)}")
    return r


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not beta > 0:  # also rejects NaN
        raise ValueError(f"beta (the reward temperature) must be positive (use math.inf for no tilt), got {beta}")
    return beta


# ----------------------------------------------------------------------------- the tilt
def tilted_velocity(velocity: Velocity, reward: Reward, beta: float) -> Velocity:
    """The teacher velocity of the tilted target ``p~ = p exp(r / beta) / Z``, at every time.

    Let ``D(x_t) = x_t + (1 - t) v(x_t, t)`` be the teacher's data prediction ``E[x_1 | x_t]``. The tilted
    marginal at time ``t`` has score ``s~ = s + grad_{x_t} log E[exp(r(x_1) / beta) | x_t]``; we take the
    expectation at the posterior mean, ``E[exp(r(x_1)/beta) | x_t] ~ exp(r(D(x_t)) / beta)``, which is exact
    for a Gaussian target and a linear reward (the posterior is Gaussian with fixed covariance) and
    tends to ``grad r(x) / beta`` at ``t = 1``. For a bounded, multi-modal target and a strong tilt it
    over-shoots at high noise (small ``t``), where the teacher's posterior is broad: the student then
    over-optimises the reward (measured in lab 06). With the linear interpolant ``v = (D - x_t) / (1 - t)`` and
    ``D = (x_t + (1 - t)^2 s) / t``, this is::

        v~(x_t, t) = v(x_t, t) + ((1 - t) / t) * grad_{x_t} r(D(x_t)) / beta.

    The gradient is a vector-Jacobian product through the teacher (``torch.autograd.grad`` under
    ``torch.enable_grad``, so it works inside ``torch.no_grad``); the result is returned detached: it
    is a target. ``beta = inf`` returns ``velocity`` itself. Shapes: ``x: [B, ...]``, ``t: [B]`` in
    ``(0, 1]`` (``t = 0`` is excluded: the factor ``1 / t`` diverges there).
    """
    beta = _check_beta(beta)
    if math.isinf(beta):
        return velocity

    def v_tilted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_t(t, x)
        if (t <= 0).any() or (t > 1).any():
            raise ValueError("tilted_velocity: times must lie in (0, 1]; the tilt's factor (1 - t) / t "
                             "diverges at t = 0 (draw DMD times away from 0)")
        te = expand_t(t, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = velocity(xg, t)
            d = xg + (1 - te) * v
            (g,) = torch.autograd.grad(_reward_values(reward, d).sum(), xg)
        return (v + (1 - te) / te * g / beta).detach()

    return v_tilted


def rtdmd_loss(x: torch.Tensor, real_velocity: Velocity, fake_velocity: Velocity, reward: Reward,
               beta: float, t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
               normalize: bool = True):
    """Reward-tilted DMD generator loss (Huang et al. 2026, RTDMD, eqs. 6-7, in DMD's score form).

    Huang, Zhou, Wang, Zhang, Zhang & Pang (2026), "Reinforcing Few-step Generators via Reward-Tilted
    Distribution Matching". The generator minimises ``KL(p_G || p exp(r / beta) / Z)``; its gradient
    with respect to a sample ``x`` is the DMD gradient with the teacher's score replaced by the tilted
    score ``s + grad r / beta`` (Yin et al. 2024, "One-step Diffusion with Distribution Matching
    Distillation", eq. 7-8, for the untilted part). We pass :func:`tilted_velocity` as the *real*
    velocity to :func:`distill_lab.methods.step.dmd.dmd_loss`, so the reward term is weighted and normalised
    exactly like the score difference (``mean |x - D~_real|`` per sample when ``normalize``), and
    ``beta = inf`` gives ``dmd_loss`` exactly.

    Teacher: ``real_velocity(x, t)`` (frozen). ``fake_velocity`` is the velocity of the generator's own
    distribution, trained alongside with :func:`distill_lab.methods.step.dmd.fake_score_loss`.
    Stop-gradient: everything but ``x`` -- the tilted teacher, its reward gradient, the fake velocity and
    the normaliser are targets computed without a graph (``dmd_loss`` detaches them; the tilt returns a
    detached tensor); the gradient flows into the generator only through ``x``.

    Shapes: ``x: [B, ...]`` (the generator's output, with graph); optional ``t: [B]`` in ``(0, 1)`` and
    ``noise`` like ``x``. ``reward(x) -> [B]``. Returns ``(loss, info)``; ``info`` adds the batch's mean
    reward and ``beta`` to DMD's entries.
    """
    _check_points(x, "rtdmd_loss")
    beta = _check_beta(beta)
    from .dmd import dmd_loss

    loss, info = dmd_loss(x, tilted_velocity(real_velocity, reward, beta), fake_velocity, t=t, noise=noise,
                          normalize=normalize)
    info = dict(info)
    with torch.no_grad():
        info["reward"] = float(_reward_values(reward, x.detach()).mean())
    info["beta"] = beta
    return loss, info


# ----------------------------------------------------------------------------- the exact tilted target
@torch.no_grad()
def tilted_reference(data: torch.Tensor, reward: Reward, beta: float, n: int | None = None,
                     seed: int = 0) -> tuple[torch.Tensor, float]:
    """The exact tilted target, from samples of the untilted one, by self-normalised importance weights.

    Weights ``w_i ~ exp(r(x_i) / beta)``; returns ``(resampled points [n, ...], E_{p~}[r])`` where the
    expectation uses the weights (no resampling noise). ``beta = inf`` with ``n=None`` returns the data
    itself and its mean reward.
    """
    beta = _check_beta(beta)
    r = _reward_values(reward, data)
    if math.isinf(beta) and n is None:
        return data, float(r.mean())
    w = torch.softmax(r / beta, 0)  # uniform when beta = inf
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(w.cpu(), n or data.shape[0], replacement=True, generator=g).to(data.device)
    return data[idx], float((w * r).sum())


# ----------------------------------------------------------------------------- the method
def _train_generator(exp, G: OneStepGenerator, fake: torch.nn.Module, steps: int, reward: Reward | None,
                     beta: float, lr: float, fake_lr: float, fake_updates: int, batch: int, desc: str,
                     t_range=(0.02, 0.98)) -> dict:
    """The DMD update schedule: ``fake_updates`` fake-velocity steps, then one generator step."""
    from .dmd import dmd_loss, fake_score_loss

    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.99))
    opt_f = torch.optim.Adam(fake.parameters(), lr=fake_lr, betas=(0.0, 0.99))
    lo, hi = t_range

    def step(i):
        for _ in range(fake_updates):
            with torch.no_grad():
                xg = G(exp.noise_batch(batch))
            lf, _ = fake_score_loss(fake, xg)
            opt_f.zero_grad(set_to_none=True)
            lf.backward()
            opt_f.step()
        x = G(exp.noise_batch(batch))
        t = lo + (hi - lo) * torch.rand(batch, device=x.device)
        if reward is None or math.isinf(beta):
            loss, info = dmd_loss(x, exp.velocity, fake, t=t)
            r = float(reward(x.detach()).mean()) if reward is not None else float("nan")
        else:
            loss, info = rtdmd_loss(x, exp.velocity, fake, reward, beta, t=t)
            r = info["reward"]
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        return {"loss": loss, "fake_loss": lf.detach(), "reward": r}

    return exp.fit(step, steps, desc)


STAGE2_T_MIN = 0.3  # stage II draws DMD times in [0.3, 0.98]: where the linearised tilt is accurate


def _hyper(sc, overrides: dict) -> dict:
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    default = dict(lr=2e-4, fake_lr=2e-4, fake_updates=2, batch=min(sc.batch, 512))
    # pragma: no mutate end
    kw = dict(lr=overrides.pop("lr", default["lr"]), fake_lr=overrides.pop("fake_lr", default["fake_lr"]),
              fake_updates=overrides.pop("fake_updates", default["fake_updates"]),
              batch=overrides.pop("batch", default["batch"]),
              t_range=(overrides.pop("t_min", STAGE2_T_MIN), 0.98))
    if overrides:
        raise ValueError(f"rtdmd: unknown overrides {sorted(overrides)}; "
                         "known: lr, fake_lr, fake_updates, batch, t_min")
    if kw["fake_updates"] < 1:
        raise ValueError(f"rtdmd: fake_updates must be at least 1 (the fake velocity must track the generator), "
                         f"got {kw['fake_updates']}")
    if not 0 < kw["t_range"][0] < kw["t_range"][1]:
        raise ValueError(f"rtdmd: t_min must lie in (0, 0.98), got {kw['t_range'][0]}")
    return kw


def train_stage1(exp, steps: int | None = None, **overrides) -> OneStepGenerator:
    """RTDMD's stage I: a one-step generator by plain DMD from the teacher (both it and its fake
    velocity start as copies of the teacher). The fake velocity is kept as ``G.fake``."""
    sc = exp.scale
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    default_steps = sc.pick(ci=300, default=1000, gpu=3000)
    # pragma: no mutate end
    steps = steps if steps is not None else default_steps
    G = OneStepGenerator(exp.student_net(1))
    G.fake = exp.student_net(1)
    overrides.setdefault("t_min", 0.02)  # DMD's usual range
    G.stage1_history = _train_generator(exp, G, G.fake, steps, None, math.inf, desc="rtdmd stage I (DMD)",
                                        **_hyper(sc, overrides))
    G.history, G.beta, G.reward = G.stage1_history, math.inf, None
    return G.eval()


DEFAULT_BETA = 0.5


@recipe("rtdmd", tracks=("toy2d",), family="distribution matching", nfes=(1,),
        paper="Huang et al. 2026, Reinforcing Few-step Generators via Reward-Tilted Distribution Matching")
def train_rtdmd(exp, steps=None, reward: Reward | None = None, beta: float | None = None,
                stage1_steps: int | None = None, base: OneStepGenerator | None = None, **overrides):
    """A one-step generator distilled toward ``p_teacher exp(r / beta)``, in RTDMD's two stages.

    Stage I (``stage1_steps``): plain DMD from the teacher (skipped when ``base``, a stage-I student
    with its ``.fake`` velocity, is given; it is copied, not changed). Stage II (``steps``): reward-tilted
    DMD. Default reward :func:`reward_right` (push mass to the right columns of the checkerboard) at
    ``beta = 0.5``: the exact tilted target then keeps about 83% of its mass in the rightmost column.
    Schedule (both stages): ``fake_updates`` (2) fake-velocity updates by flow matching on generator
    samples, then one generator update; Adam betas (0, 0.99), lr 2e-4 for both, batch 512, DMD times
    uniform in ``[t_min, 0.98]``: ``t_min = 0.02`` in stage I (DMD's range) and, by default, 0.3 in
    stage II, which keeps the tilt where its linearisation is accurate (:func:`tilted_velocity`; at ci
    and ``beta = 0.5`` this cut the sliced W2 to the exact tilted target from 0.29 to 0.18).
    Overrides: ``lr``, ``fake_lr``, ``fake_updates``, ``batch``, ``t_min``. Returns the generator
    (``.sample(z, 1)``) with ``.history`` (stage II), ``.stage1_history``, ``.fake``, ``.beta``, ``.reward``.
    """
    sc = exp.scale
    reward = reward_right if reward is None else reward
    beta = _check_beta(DEFAULT_BETA if beta is None else beta)
    steps = steps if steps is not None else sc.pick(ci=150, default=1000, gpu=3000)
    stage1_overrides = {k: v for k, v in overrides.items() if k != "t_min"}  # stage I: DMD's full time range
    kw = _hyper(sc, overrides)
    if base is None:
        base = train_stage1(exp, stage1_steps, **stage1_overrides)
    elif not hasattr(base, "fake"):
        raise ValueError("train_rtdmd: `base` must come from train_stage1 or train_rtdmd (it carries .fake)")
    G = copy.deepcopy(base).train()
    G.history = _train_generator(exp, G, G.fake, steps, reward, beta, desc=f"rtdmd stage II (beta={beta:g})", **kw)
    G.beta, G.reward = beta, reward
    return G.eval()


@torch.no_grad()
def mean_reward(exp, student, reward: Reward) -> float:
    """The mean reward of ``student``'s one-step samples on the experiment's fixed evaluation noise."""
    return float(_reward_values(reward, student.sample(exp.eval_noise, 1)).mean())


def beta_sweep(exp, betas: Sequence[float], reward: Reward | None = None, steps: int | None = None,
               base: OneStepGenerator | None = None, **overrides) -> list[dict]:
    """Train one RTDMD student per ``beta`` from a shared stage-I student, and measure the trade-off.

    Returns one dict per beta: ``beta``, ``reward`` (mean reward of 1-step samples on the evaluation
    noise), ``ratio`` (sliced-W2 to the *untilted* held-out data over its floor: fidelity to the
    teacher's distribution), ``target_reward`` (the exact tilted target's mean reward, from
    :func:`tilted_reference`), ``tilted_w2`` (the experiment's metric from the student's samples to
    the exact tilted target, resampled from fresh data; ``tilted_floor`` is the same between two
    such resamplings) and ``student``. ``beta = inf`` is stage I itself (plain DMD).
    """
    reward = reward_right if reward is None else reward
    n = exp.scale.eval_n
    pool = exp.sample_data(10 * n, exp.seed + 17)
    kw = {"n_proj": exp.scale.n_proj} if exp.metric_name == "sliced_w2" else {}
    if base is None:
        base = train_stage1(exp, **{k: v for k, v in overrides.items() if k != "t_min"})
    out = []
    for b in betas:
        b = _check_beta(b)
        st = base if math.isinf(b) else train_rtdmd(exp, steps=steps, reward=reward, beta=b, base=base, **overrides)
        ev = exp.evaluate(st.sample, 1)
        ref_a, _ = tilted_reference(pool, reward, b, n=n, seed=1)
        ref_b, _ = tilted_reference(pool, reward, b, n=n, seed=2)
        with torch.no_grad():
            x = st.sample(exp.eval_noise, 1)
        out.append({"beta": b, "reward": mean_reward(exp, st, reward), "ratio": ev["ratio"],
                    "target_reward": tilted_reference(exp.eval_data, reward, b)[1],
                    "tilted_w2": exp.metric(x, ref_a, **kw), "tilted_floor": exp.metric(ref_b, ref_a, **kw),
                    "student": st})
    return out
