"""RTDMD whole: a few-step stochastic generator, AC-DMD (stage I) and the hybrid policy gradient (stage II).

Huang, Zhou, Wang, Zhang, Zhang & Pang (2026), "Reinforcing Few-step Generators via Reward-Tilted
Distribution Matching". ``reward.py`` holds the one-step score-tilt (the tilted teacher handed to DMD);
this module holds the paper's two stages for a ``K``-step generator:

* the generator: a velocity student on the grid ``t_k = k / K``. Step ``k`` predicts data,
  ``x_hat_k = x_k + (1 - t_k) v(x_k, t_k)``; the intermediate transitions are stochastic,
  ``x_{k+1} = t_{k+1} x_hat_k + (1 - t_{k+1}) xi`` (a Gaussian policy, :func:`transition_logp`), and the last
  step is deterministic: the sample is ``x_hat_{K-1}`` (:func:`stochastic_rollout`);
* stage I, AC-DMD (:func:`acdmd_loss`, :func:`acdmd_fake_loss`): distribution matching per subinterval
  (step ``k``'s prediction noised only to times in ``[t_k, t_{k+1}]``, with the fake score fitted the same
  way) and a consistency regulariser on the fake score (:func:`fake_consistency_loss`: its data prediction
  agrees with its own after one Euler step of its flow), to help it track the moving generator;
* stage II (:func:`hybrid_reward_loss`): the reward term of ``KL(p_G || p exp(r / beta))``,
  ``-E[r] / beta``, by a hybrid policy gradient: group-normalised (GRPO) advantages on a random subset of
  the stochastic transitions (SubGRPO) plus the reward's gradient back-propagated through the
  deterministic last step; the AC-DMD term keeps running. ``beta = inf`` leaves AC-DMD alone.

What the paper specifies beyond its abstract (its exact weights, the form of its consistency regulariser)
is read here as described; the toy uses the package's rewards.
"""

from __future__ import annotations

import math

import torch

from ...core.flows import denoise, expand_t, interpolate
from ...core.registry import recipe, with_options
from .dmd import _adam, _check_x, _critic_step, dmd_loss, fake_score_loss, frozen
from .preference import gaussian_policy_logp, group_advantages
from .reward import _check_beta, _reward_values, reward_disk
from .students import VelocityStudent

__all__ = ["stochastic_rollout", "transition_logp", "acdmd_loss", "acdmd_fake_loss", "fake_consistency_loss",
           "hybrid_reward_loss"]


def _grid(K: int, device, dtype=torch.float32) -> torch.Tensor:
    if int(K) != K or K < 1:
        raise ValueError(f"K (the generator's number of steps) must be a positive whole number, got {K!r}")
    return torch.linspace(0, 1, int(K) + 1, device=device, dtype=dtype)


@torch.no_grad()
def stochastic_rollout(velocity, z: torch.Tensor, K: int, upto: int | None = None):
    """Run the ``K``-step stochastic generator from noise ``z`` without gradient.

    Returns ``(states, outputs)``: ``states[k]`` is ``x_k`` (``states[0] = z``) for ``k = 0..upto`` (default
    ``K - 1``), ``outputs[k]`` the data prediction ``x_hat_k``; between steps ``x_{k+1} = t_{k+1} x_hat_k +
    (1 - t_{k+1}) xi``. The generator's sample is ``outputs[K - 1]``.
    """
    _check_x(z, "z")
    t = _grid(K, z.device, z.dtype)
    upto = K - 1 if upto is None else int(upto)
    states, outputs = [z], []
    for k in range(upto + 1):
        x = states[-1]
        tk = torch.full((x.shape[0],), float(t[k]), device=x.device, dtype=x.dtype)
        outputs.append(x + expand_t(1 - tk, x) * velocity(x, tk))
        if k < upto:
            states.append(t[k + 1] * outputs[-1] + (1 - t[k + 1]) * torch.randn_like(x))
    return states, outputs


def transition_logp(velocity, x_k: torch.Tensor, x_next: torch.Tensor, t_k: float, t_next: float) -> torch.Tensor:
    """``log pi(x_{k+1} | x_k)`` of a stochastic transition, without its constant, per sample ``[B]``:
    ``-|x_{k+1} - t_{k+1} x_hat_k|^2 / (2 (1 - t_{k+1})^2)`` with ``x_hat_k`` the student's prediction at ``x_k``.
    Gradient reaches the student through ``x_hat_k``; ``x_k`` and ``x_{k+1}`` are detached."""
    if not 0 <= t_k < t_next < 1:
        raise ValueError(f"a stochastic transition needs 0 <= t_k < t_next < 1, got {t_k}, {t_next}")
    x_k = x_k.detach()
    tk = torch.full((x_k.shape[0],), float(t_k), device=x_k.device, dtype=x_k.dtype)
    x_hat = x_k + expand_t(1 - tk, x_k) * velocity(x_k, tk)
    return gaussian_policy_logp(x_next.detach(), t_next * x_hat, 1 - t_next)


def _subinterval_times(k: torch.Tensor, K: int, x: torch.Tensor, lo: float = 0.02, hi: float = 0.98) -> torch.Tensor:
    a = (k.to(x.dtype) / K).clamp_min(lo)
    b = ((k + 1).to(x.dtype) / K).clamp_max(hi)
    return a + (b - a).clamp_min(0) * torch.rand_like(a)


def acdmd_loss(x_hat: torch.Tensor, k: torch.Tensor, K: int, real_velocity, fake_velocity,
               t: torch.Tensor | None = None, noise: torch.Tensor | None = None):
    """AC-DMD's subinterval-wise distribution matching on step ``k``'s data prediction ``x_hat``.

    DMD (Yin et al. 2024, eqs. (7)-(8), :func:`~distill_lab.methods.step.dmd.dmd_loss`) with the noising time
    drawn in step ``k``'s own subinterval ``[k / K, (k + 1) / K]`` (clipped to [0.02, 0.98]), so each step's
    output is matched where that step acts. Teacher provides ``real_velocity``; stop-gradient on both score
    predictions; gradient reaches ``x_hat`` only. ``k: [B]`` integer steps. Returns ``(loss, info)``.
    """
    _check_x(x_hat, "x_hat")
    if k.shape != (x_hat.shape[0],) or (k < 0).any() or (k >= K).any():
        raise ValueError(f"k must have shape [B]=[{x_hat.shape[0]}] with steps in 0..{K - 1}")
    t = _subinterval_times(k, K, x_hat) if t is None else t
    return dmd_loss(x_hat, real_velocity, fake_velocity, t=t, noise=noise)


def acdmd_fake_loss(fake_velocity, x_hat: torch.Tensor, k: torch.Tensor, K: int, t: torch.Tensor | None = None,
                    noise: torch.Tensor | None = None):
    """Fit AC-DMD's fake score to step ``k``'s predictions: :func:`~distill_lab.methods.step.dmd.fake_score_loss`
    (flow matching on the detached ``x_hat``) at times in step ``k``'s subinterval, the times its generator loss
    reads. Returns ``(loss, info)``."""
    _check_x(x_hat, "x_hat")
    t = _subinterval_times(k, K, x_hat) if t is None else t
    return fake_score_loss(fake_velocity, x_hat, t=t, noise=noise)


def fake_consistency_loss(fake_velocity, x_t: torch.Tensor, t: torch.Tensor, dt: float = 0.05):
    """The fake score's consistency regulariser: its data prediction at ``(x_t, t)`` agrees with its own
    prediction one Euler step of its flow later, ``sg(D_fake(x_t + dt v_fake, t + dt))``.

    Zero for the exact velocity of a straight (linear-in-time) flow; it smooths the fake score along its
    own trajectories, which RTDMD uses to help the fake track the generator with few updates. Stop-gradient:
    the target (and the point it is read at). Shapes ``x_t: [B, ...]``, ``t: [B]`` with ``t + dt < 1``.
    """
    _check_x(x_t, "x_t")
    if (t + dt >= 1).any() or dt <= 0:
        raise ValueError("fake_consistency_loss needs dt > 0 and t + dt < 1")
    x_t = x_t.detach()
    pred = denoise(fake_velocity, x_t, t)
    with torch.no_grad():
        x_next = x_t + dt * fake_velocity(x_t, t)
        target = denoise(fake_velocity, x_next, t + dt)
    loss = (pred - target).pow(2).mean()
    return loss, {"fake_consistency": float(loss.detach())}


def hybrid_reward_loss(velocity, states: list, final_input: torch.Tensor, reward, beta: float, group: int,
                       K: int, subset: int = 1, generator: torch.Generator | None = None):
    """Stage II's reward term by RTDMD's hybrid policy gradient, with SubGRPO.

    The reward part of ``KL(p_G || p exp(r / beta))`` is ``-E[r] / beta``. Its gradient has two parts here:
    the pathwise one through the deterministic last step, ``-mean r(x_hat_{K-1}(sg x_{K-1})) / beta``, and a
    GRPO estimator for the stochastic transitions, ``-mean A_i sum_{k in S} log pi(x_{k+1} | x_k) / beta`` with
    ``A`` the group-normalised reward (:func:`~distill_lab.methods.step.preference.group_advantages`, groups
    of ``group`` rollouts from the same noise) and ``S`` a random subset of ``subset`` of the ``K - 1``
    stochastic transitions (SubGRPO). ``states`` are the rollout's states ``x_0..x_{K-1}`` (detached);
    ``final_input`` is ``x_{K-1}``. ``beta = inf`` gives zero. Returns ``(loss, info)``.
    """
    beta = _check_beta(beta)
    x_in = final_input.detach()
    tl = torch.full((x_in.shape[0],), (K - 1) / K, device=x_in.device, dtype=x_in.dtype)
    x_out = x_in + expand_t(1 - tl, x_in) * velocity(x_in, tl)
    r = _reward_values(reward, x_out)
    if math.isinf(beta):
        return 0.0 * x_out.sum(), {"reward": float(r.detach().mean())}
    adv = group_advantages(r.detach(), group)
    pg = torch.zeros((), device=x_in.device, dtype=x_in.dtype)
    if K > 1 and subset > 0:
        steps = torch.randperm(K - 1, generator=generator)[:subset].tolist()
        for k in steps:
            lp = transition_logp(velocity, states[k], states[k + 1], k / K, (k + 1) / K)
            pg = pg + (adv * lp).mean()
    loss = -(r.mean() + pg) / beta
    return loss, {"reward": float(r.detach().mean()), "pg": float(pg.detach())}


@recipe("rtdmd_full", tracks=("toy2d",), family="distribution matching", nfes=(4,),
        paper="Huang et al. 2026, RTDMD: AC-DMD stage I and hybrid policy gradient stage II (K-step)")
def train_rtdmd_full(exp, steps=None, reward=None, beta: float | None = None, **overrides):
    """RTDMD's two stages on a ``K``-step (default 4) stochastic generator, sampled with ``K`` steps.

    Stage I (``stage1_steps``): AC-DMD at a random step of a stochastic rollout (:func:`acdmd_loss`), the fake
    score fitted per subinterval (:func:`acdmd_fake_loss`) plus ``consistency_weight`` times
    :func:`fake_consistency_loss`, ``critic_updates`` fake updates a step. Stage II (``steps``): the same
    AC-DMD term plus :func:`hybrid_reward_loss` on ``n_groups`` groups of ``group`` rollouts. Default reward
    :func:`~distill_lab.methods.step.reward.reward_disk` (bounded: the unbounded ``reward_right`` ran off to
    ratios above 1e5 at ci, since DMD's normalised gradient cannot hold a reward gradient that never
    fades) at ``beta`` 0.1; ``beta=math.inf`` is AC-DMD alone.
    Returns a student whose ``sample(z, K)`` runs the stochastic generator (``.history``, ``.stage1_history``).
    """
    sc = exp.scale
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    cfg = with_options(overrides, "rtdmd_full", K=4, lr=1e-4, fake_lr=4e-4, critic_updates=3, consistency_weight=0.1,
                       batch=sc.pick(ci=256, default=1024, gpu=4096), group=8, n_groups=32, subset=1,
                       stage1_steps=sc.pick(ci=600, default=2000, gpu=6000))
    steps = steps if steps is not None else sc.pick(ci=150, default=1000, gpu=3000)
    # pragma: no mutate end
    reward = reward_disk if reward is None else reward
    beta = _check_beta(0.1 if beta is None else beta)
    K, B = int(cfg["K"]), cfg["batch"]
    student = StochasticFewStep(exp.student_net(1), K)
    fake = exp.student_net(1)
    g_opt, f_opt = _adam(student.parameters(), cfg["lr"]), _adam(fake.parameters(), cfg["fake_lr"])

    def draw(n):
        """A random step ``k`` of fresh rollouts: its input ``x_k`` and its (detached) prediction ``x_hat_k``."""
        k = torch.randint(0, K, (n,), device=exp.device)
        states, outputs = stochastic_rollout(student.net, exp.noise_batch(n), K)
        rows = torch.arange(n, device=exp.device)
        return torch.stack(states)[k, rows], torch.stack(outputs)[k, rows], k

    def critic(logs):
        for _ in range(cfg["critic_updates"]):
            _, x_hat, k = draw(B)
            lf, info = acdmd_fake_loss(fake, x_hat, k, K)
            if cfg["consistency_weight"] > 0:
                t = 0.02 + 0.9 * torch.rand(B, device=x_hat.device)
                lc, cinfo = fake_consistency_loss(fake, interpolate(torch.randn_like(x_hat), x_hat, t), t)
                lf = lf + cfg["consistency_weight"] * lc
                info.update(cinfo)
            _critic_step(f_opt, lf)
            logs.update(info)

    def dm_term(logs):
        x_k, _, k = draw(B)
        tk = k.to(x_k.dtype) / K
        x_hat = x_k + expand_t(1 - tk, x_k) * student.net(x_k, tk)
        with frozen(fake):
            loss, info = acdmd_loss(x_hat, k, K, exp.velocity, fake)
        logs.update(dmd=float(loss.detach()), grad_norm=info["grad_norm"])
        return loss

    def stage1(i):
        logs = {}
        critic(logs)
        loss = dm_term(logs)
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        logs["loss"] = float(loss.detach())
        return logs

    def stage2(i):
        logs = {}
        critic(logs)
        loss = dm_term(logs)
        z = exp.noise_batch(cfg["n_groups"]).repeat_interleave(cfg["group"], 0)
        states, _ = stochastic_rollout(student.net, z, K)
        lr_, rinfo = hybrid_reward_loss(student.net, states, states[-1], reward, beta, cfg["group"], K, cfg["subset"])
        loss = loss + lr_
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        logs.update(rinfo)
        logs["loss"] = float(loss.detach())
        return logs

    student.stage1_history = exp.fit(stage1, cfg["stage1_steps"], desc="rtdmd AC-DMD (stage I)")
    student.history = exp.fit(stage2, steps, desc=f"rtdmd hybrid PG (stage II, beta={beta:g})")
    student.fake, student.config, student.beta, student.reward = fake, cfg, beta, reward
    return student.eval()


class StochasticFewStep(VelocityStudent):
    """A velocity student sampled as RTDMD's stochastic ``K``-step generator (:func:`stochastic_rollout`).

    ``sample(z, nfe)`` runs ``nfe`` steps on the grid ``k / nfe`` (re-noising between steps, the last step
    deterministic); the generator is trained for ``nfe = K``."""

    def __init__(self, net, K: int):
        super().__init__(net)
        self.K = int(K)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, nfe: int | None = None) -> torch.Tensor:
        return stochastic_rollout(self.net, z, nfe or self.K)[1][-1]
