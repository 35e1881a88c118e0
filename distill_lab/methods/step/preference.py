"""Rewards and preferences on a distribution-matching student: Flash-DMD's joint stage, Distillation-DPO, GNDM.

Both start from a one-step DMD student (RTDMD's stage I, :func:`~distill_lab.methods.step.reward.train_stage1`)
and push it toward a reward while distribution matching holds it near the teacher.

* :func:`reward_ascent_loss`, :func:`joint_reward_loss` (recipe ``flash_dmd``) - Flash-DMD (2025),
  "Flash-DMD: Towards High-Fidelity Few-Step Image Generation with Efficient Distillation and Joint
  Reinforcement Learning": reward fine-tuning *while* the DMD term keeps running as a regulariser, against
  reward-only fine-tuning of the same student (``dmd_weight=0``), which is free to reward-hack. What is
  here is that joint stage. The reward enters by its gradient through the sample (direct reward
  back-propagation) in place of the paper's RL estimator, and stage I is plain DMD, not the paper's
  timestep-aware distillation schedule.
* :func:`preference_pairs`, :func:`ddpo_loss` (recipe ``distillation_dpo``) - Distillation-DPO (2025), a
  diffusion distillation framework with preference alignment for LiDAR scene completion: pairs of samples
  from different noises, the winner picked by a non-differentiable metric, two auxiliary fake scores (one
  fitted to winners, one to losers) and a generator update built from their teacher-minus-fake score
  differences, here with DMD kept as the anchor (see :func:`ddpo_loss` for the form used and why).

* :func:`dm_reward`, :func:`group_advantages`, :func:`clipped_policy_loss` (recipe ``gndm``) - R_dm (2026),
  "Re-conceptualizing Distribution Matching as a Reward for Diffusion Distillation": distribution matching
  read as a reward, group-normalised advantages (GNDM), importance-sampled reuse of samples, and an external
  reward mixed in (GNDMR). The paper's code is not released; the reward estimate here is the lab's reading.

Time runs from noise (``t = 0``) to data (``t = 1``): ``x_t = (1 - t) eps + t x``.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from ...core.flows import denoise, interpolate
from ...core.registry import recipe, with_options
from .dmd import _adam, _check_x, _critic_step, _noise, _times, dmd_loss, dmd_loss_at, fake_score_loss, frozen
from .reward import _reward_values, reward_right, train_stage1
from .students import OneStepGenerator

Score = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["reward_ascent_loss", "joint_reward_loss", "column_score", "preference_pairs", "ddpo_loss",
           "gaussian_policy_logp", "dm_reward", "group_advantages", "clipped_policy_loss"]


# ------------------------------------------------------------------------------------ Flash-DMD
def reward_ascent_loss(x: torch.Tensor, reward):
    """Direct reward back-propagation: ``loss = -mean_i r(x_i)``, so a descent step climbs the reward.

    No teacher. Gradient flows through the reward into ``x`` (the reward must be differentiable).
    Returns ``(loss, {"reward": mean r})``.
    """
    _check_x(x)
    r = _reward_values(reward, x)
    return -r.mean(), {"reward": float(r.detach().mean())}


def joint_reward_loss(x: torch.Tensor, real_velocity, fake_velocity, reward, reward_weight: float,
                      dmd_weight: float = 1.0, t: torch.Tensor | None = None, noise: torch.Tensor | None = None):
    """Flash-DMD's joint stage: ``dmd_weight * DMD + reward_weight * (-mean r(x))``.

    Flash-DMD (2025): the distillation loss keeps running during reward fine-tuning and regularises it.
    The DMD term is :func:`~distill_lab.methods.step.dmd.dmd_loss` (Yin et al. 2024, eqs. (7)-(8)); the
    teacher provides ``real_velocity``; stop-gradient on both score predictions. ``dmd_weight = 0`` is
    reward-only fine-tuning (the baseline that reward-hacks). Returns ``(loss, info)``.
    """
    if reward_weight < 0 or dmd_weight < 0:
        raise ValueError(f"reward_weight and dmd_weight must be non-negative, got {reward_weight}, {dmd_weight}")
    lr_, info = reward_ascent_loss(x, reward)
    total = reward_weight * lr_
    if dmd_weight > 0:
        ld, dinfo = dmd_loss(x, real_velocity, fake_velocity, t=t, noise=noise)
        total = total + dmd_weight * ld
        info.update(dmd=float(ld.detach()), grad_norm=dinfo["grad_norm"])
    return total, info


# ------------------------------------------------------------------------------ Distillation-DPO
def column_score(x: torch.Tensor) -> torch.Tensor:
    """A non-differentiable score for 2D points: the index of the checkerboard column, ``floor(x_1 + 2)``.

    Piecewise constant (its gradient is zero almost everywhere), so no method can climb it by
    back-propagation; Distillation-DPO only ranks samples by it. Returns ``[B]``.
    """
    _check_x(x)
    if x.shape[1:] != (2,):
        raise ValueError(f"column_score is defined for 2D points [B, 2], got {tuple(x.shape)}")
    return torch.floor(x[:, 0].detach() + 2.0)


def preference_pairs(x_a: torch.Tensor, x_b: torch.Tensor, score: Score, tie: float = 0.0):
    """Rank two batches of samples from *different* noises, pair by pair, with a non-differentiable score.

    Returns ``(x_win, x_lose, keep, margin)``: per pair the sample with the higher score (the first on a
    tie), the other one, ``keep`` (``[B]`` bool) true where the scores differ by more than ``tie`` (ties
    carry no preference), and the score difference. The score is read without gradient and never
    differentiated; the returned samples keep the graph of ``x_a`` and ``x_b``.
    """
    _check_x(x_a, "x_a")
    if x_b.shape != x_a.shape:
        raise ValueError(f"x_a and x_b must have the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    with torch.no_grad():
        sa, sb = _reward_values(score, x_a.detach()), _reward_values(score, x_b.detach())
    a_wins = (sa >= sb).view(-1, *([1] * (x_a.dim() - 1)))
    margin = (sa - sb).abs()
    return torch.where(a_wins, x_a, x_b), torch.where(a_wins, x_b, x_a), margin > tie, margin


def ddpo_loss(x_win: torch.Tensor, x_lose: torch.Tensor, keep: torch.Tensor, real_velocity, fake_win, fake_lose,
              t: torch.Tensor | None = None, noise: torch.Tensor | None = None, beta: float = 1.0):
    r"""Distillation-DPO's preference term on pairs: move each paired sample from the losers' toward the winners'.

    Distillation-DPO (2025, LiDAR scene completion) updates the student from the difference of
    teacher-minus-fake scores on winners and losers, with one auxiliary fake score fitted to each. Here
    both samples of a kept pair are noised to the same ``t`` with the same noise, and at each the
    difference of the two teacher-minus-fake data predictions,

    .. math:: d = ig(\hat x_r - \hat x_{f,l}ig) - ig(\hat x_r - \hat x_{f,w}ig)
              = \hat x_{f,w}(x_t) - \hat x_{f,l}(x_t),

    normalised per sample as DMD (by ``mean|x - x_r(x_t)|``), is the ascent direction: the loss
    ``0.5 * beta * mean(keep (x - sg(x + d))^2)`` over winners and losers moves every sample toward where
    winners denoise to and away from where losers do. It is the reverse-KL step toward the teacher tilted by
    the winners-to-losers density ratio, ``p_teacher (p_win / p_lose)^beta``, without its DMD part (the
    recipe adds DMD as the anchor). Tied pairs (``keep`` false) give no gradient, and equal fake scores give
    none. Stop-gradient: every score prediction and the targets; gradient reaches only the samples.
    Shapes ``[B, ...]``, ``keep: [B]``. Returns ``(loss, info)``.
    """
    _check_x(x_win, "x_win")
    if x_lose.shape != x_win.shape:
        raise ValueError(f"x_win and x_lose must have the same shape, got {tuple(x_win.shape)} and {tuple(x_lose.shape)}")
    if keep.shape != (x_win.shape[0],):
        raise ValueError(f"keep must have shape [B]=[{x_win.shape[0]}], got {tuple(keep.shape)}")
    if not beta >= 0:
        raise ValueError(f"beta must be non-negative, got {beta}")
    t = _times(x_win, t)
    eps = _noise(x_win, noise)
    dims = tuple(range(1, x_win.dim()))
    m = keep.to(x_win.dtype).view(-1, *([1] * (x_win.dim() - 1)))

    def term(x):
        with torch.no_grad():
            xt = interpolate(eps, x.detach(), t)
            x_real = denoise(real_velocity, xt, t)
            w = (x.detach() - x_real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-6)
            d = ((x_real - denoise(fake_lose, xt, t)) - (x_real - denoise(fake_win, xt, t))) / w
        return 0.5 * (m * (x - (x.detach() + d)).pow(2)).mean(), d

    lw, dw = term(x_win)
    ll, dl = term(x_lose)
    loss = beta * (lw + ll)
    return loss, {"kept": float(keep.float().mean()), "pref_norm": float(torch.cat([dw, dl]).flatten(1).norm(dim=1).mean())}


# ------------------------------------------------------------------------------------ R_dm / GNDM
def gaussian_policy_logp(x: torch.Tensor, mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """``log N(x; mean, sigma^2 I)`` per sample, without its constant: ``-|x - mean|^2 / (2 sigma^2)``, ``[B]``.

    The one-step generator made a policy for group sampling: ``x = G(z) + sigma xi``.
    """
    if not sigma > 0:
        raise ValueError(f"sigma (the exploration noise) must be positive, got {sigma}")
    return -(x - mean).pow(2).flatten(1).sum(1) / (2 * sigma ** 2)


def dm_reward(x: torch.Tensor, real_velocity, fake_velocity, group: int, t: torch.Tensor | None = None,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    r"""The distribution-matching reward of each sample, relative to its group: ``R_dm`` of the R_dm paper.

    R_dm (2026), "Re-conceptualizing Distribution Matching as a Reward for Diffusion Distillation", reads
    DMD as a reward. The reward whose gradient is minus DMD's direction is ``log p_real - log p_fake`` (the
    reverse KL's integrand, at the noise level ``t``); only its differences within a group are needed, and
    to first order they are ``R_i = -<g_i, x_i - mean_group(x)>`` with ``g_i`` DMD's normalised direction
    (:func:`~distill_lab.methods.step.dmd.dmd_loss`) at sample ``i``. The ``B = n * group`` samples come in
    ``n`` consecutive groups; each group shares its ``t`` and its noise, so the teacher and fake predictions
    differ inside a group only through the samples. Teacher provides ``real_velocity``. Everything is
    computed without gradient (a reward). Returns ``[B]``. This first-order estimate is the lab's reading of
    the paper, whose code is not released.
    """
    _check_x(x)
    if group < 2 or x.shape[0] % group:
        raise ValueError(f"group must be at least 2 and divide the batch size {x.shape[0]}, got {group}")
    n = x.shape[0] // group
    x = x.detach()
    with torch.no_grad():
        tt = _times(x[:n], t).repeat_interleave(group)
        eps = _noise(x[:n], noise).repeat_interleave(group, 0)
        g = dmd_loss_at(x, interpolate(eps, x, tt), tt, real_velocity, fake_velocity)[1]["grad"]
        centred = x - x.view(n, group, *x.shape[1:]).mean(1).repeat_interleave(group, 0)
        return -(g * centred).flatten(1).sum(1)


def group_advantages(r: torch.Tensor, group: int, eps: float = 1e-8) -> torch.Tensor:
    """GRPO's group normalisation: ``(r - mean_group r) / (std_group r + eps)`` over consecutive groups.

    A group of identical rewards has zero advantage. Shape ``[n * group] -> [n * group]``.
    """
    if r.dim() != 1 or group < 2 or r.shape[0] % group:
        raise ValueError(f"r must be [n * group] with group >= 2 dividing its length, got {tuple(r.shape)} and {group}")
    rg = r.view(-1, group)
    return ((rg - rg.mean(1, keepdim=True)) / (rg.std(1, keepdim=True) + eps)).flatten()


def clipped_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip: float = 0.2):
    """The clipped importance-sampled surrogate (PPO/GRPO): ``-mean min(rho A, clip(rho, 1 -+ clip) A)``,
    ``rho = exp(logp - logp_old)``, so samples drawn by an older generator are reused. ``logp_old`` and ``adv``
    are detached. Returns ``(loss, {"ratio": mean rho, "clipped": fraction clipped})``."""
    if logp.shape != logp_old.shape or logp.shape != adv.shape:
        raise ValueError(f"logp, logp_old and adv must share one shape [B], got {tuple(logp.shape)}, "
                         f"{tuple(logp_old.shape)}, {tuple(adv.shape)}")
    rho = torch.exp(logp - logp_old.detach())
    adv = adv.detach()
    loss = -torch.minimum(rho * adv, rho.clamp(1 - clip, 1 + clip) * adv).mean()
    return loss, {"ratio": float(rho.detach().mean()), "clipped": float(((rho - 1).abs() > clip).float().mean())}


# --------------------------------------------------------------------------------------- recipes
def _stage1(exp, base, stage1_steps) -> OneStepGenerator:
    """A trainable copy of the stage-I student (its network and fake score; ``base`` is left unchanged)."""
    if base is None:
        base = train_stage1(exp, stage1_steps)
    if not hasattr(base, "fake") or not hasattr(base, "net"):
        raise ValueError("base must come from reward.train_stage1 (a one-step DMD student that carries .fake)")
    G = OneStepGenerator(copy.deepcopy(base.net)).train()
    G.fake = copy.deepcopy(base.fake)
    return G


@recipe("flash_dmd", tracks=("toy2d",), family="distribution matching", nfes=(1,),
        paper="Flash-DMD 2025: joint reward fine-tuning with DMD as regulariser (joint stage only)")
def train_flash_dmd(exp, steps=None, reward=None, base=None, stage1_steps=None, **overrides):
    """Flash-DMD's joint stage: a stage-I DMD student fine-tuned on ``reward_weight * (-r) + dmd_weight * DMD``
    (:func:`joint_reward_loss`), its fake score still updated ``critic_updates`` times a step.
    ``dmd_weight=0`` is the reward-only baseline. Default reward :func:`~distill_lab.methods.step.reward.reward_right`.
    Stage I is plain DMD (``base`` reuses one); the paper's timestep-aware stage I and its RL estimator
    are not implemented (the reward acts through its gradient)."""
    sc = exp.scale
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    cfg = with_options(overrides, "flash_dmd", lr=2e-4, fake_lr=2e-4, critic_updates=2, reward_weight=0.05,
                       dmd_weight=1.0, batch=min(sc.batch, 512))
    steps = steps if steps is not None else sc.pick(ci=150, default=1000, gpu=3000)
    # pragma: no mutate end
    reward = reward_right if reward is None else reward
    G = _stage1(exp, base, stage1_steps)
    g_opt, f_opt = _adam(G.net.parameters(), cfg["lr"]), _adam(G.fake.parameters(), cfg["fake_lr"])
    B = cfg["batch"]

    def step(i):
        logs = {}
        for _ in range(cfg["critic_updates"]):
            with torch.no_grad():
                xg = G(exp.noise_batch(B))
            lf, finfo = fake_score_loss(G.fake, xg)
            _critic_step(f_opt, lf)
            logs.update(finfo)
        x = G(exp.noise_batch(B))
        with frozen(G.fake):
            loss, info = joint_reward_loss(x, exp.velocity, G.fake, reward, cfg["reward_weight"], cfg["dmd_weight"])
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        logs.update(info)
        logs["loss"] = float(loss.detach())
        return logs

    G.history = exp.fit(step, steps, desc="flash_dmd" if cfg["dmd_weight"] > 0 else "reward only")
    G.config, G.reward = cfg, reward
    return G.eval()


@recipe("distillation_dpo", tracks=("toy2d",), family="distribution matching", nfes=(1,),
        paper="Distillation-DPO 2025: diffusion distillation with preference alignment (LiDAR scene completion)")
def train_distillation_dpo(exp, steps=None, score=None, base=None, stage1_steps=None, **overrides):
    """Distillation-DPO on a stage-I DMD student: each step draws two batches from different noises, ranks
    each pair by the non-differentiable ``score`` (default :func:`column_score`: further right is better),
    updates the winners' and the losers' fake scores ``critic_updates`` times (flow matching on winners,
    on losers; both start from stage I's fake) and the generator by ``beta`` times :func:`ddpo_loss` plus
    ``dmd_weight`` times DMD on all samples (with stage I's fake, kept fitted to them). The linear
    winner-minus-loser loss of the paper's released code (DMD toward the teacher on winners, away from it on
    losers) lowered the preferred score here (mean column 1.50 to -147 at ci, seed 0), so it is not used."""
    sc = exp.scale
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    cfg = with_options(overrides, "distillation_dpo", lr=2e-4, fake_lr=2e-4, critic_updates=2, beta=1.0,
                       tie=0.0, dmd_weight=1.0, batch=min(sc.batch, 512))
    steps = steps if steps is not None else sc.pick(ci=150, default=1000, gpu=3000)
    # pragma: no mutate end
    score = column_score if score is None else score
    G = _stage1(exp, base, stage1_steps)
    fake_w, fake_l = copy.deepcopy(G.fake), copy.deepcopy(G.fake)
    g_opt = _adam(G.net.parameters(), cfg["lr"])
    w_opt, l_opt = _adam(fake_w.parameters(), cfg["fake_lr"]), _adam(fake_l.parameters(), cfg["fake_lr"])
    a_opt = _adam(G.fake.parameters(), cfg["fake_lr"]) if cfg["dmd_weight"] > 0 else None
    B = cfg["batch"]

    def pairs(grad):
        with torch.set_grad_enabled(grad):
            xa, xb = G(exp.noise_batch(B)), G(exp.noise_batch(B))
        xw, xl, keep, _ = preference_pairs(xa, xb, score, cfg["tie"])
        return xw, xl, keep

    def step(i):
        logs = {}
        for _ in range(cfg["critic_updates"]):
            xw, xl, keep = pairs(False)
            lw, _ = fake_score_loss(fake_w, xw[keep] if keep.any() else xw)
            _critic_step(w_opt, lw)
            ll, _ = fake_score_loss(fake_l, xl[keep] if keep.any() else xl)
            _critic_step(l_opt, ll)
            logs.update(fake_win=float(lw.detach()), fake_lose=float(ll.detach()))
            if a_opt is not None:
                la, _ = fake_score_loss(G.fake, torch.cat([xw, xl]))
                _critic_step(a_opt, la)
        xw, xl, keep = pairs(True)
        with frozen(fake_w, fake_l, G.fake):
            loss, info = ddpo_loss(xw, xl, keep, exp.velocity, fake_w, fake_l, beta=cfg["beta"])
            if cfg["dmd_weight"] > 0:
                ld, _ = dmd_loss(torch.cat([xw, xl]), exp.velocity, G.fake)
                loss = loss + cfg["dmd_weight"] * ld
                info["dmd"] = float(ld.detach())
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        logs.update(info)
        logs["loss"] = float(loss.detach())
        return logs

    G.history = exp.fit(step, steps, desc="distillation_dpo")
    G.fake_win, G.fake_lose, G.config, G.score = fake_w, fake_l, cfg, score
    return G.eval()


@recipe("gndm", tracks=("toy2d",), family="distribution matching", nfes=(1,),
        paper="R_dm 2026: distribution matching as a reward, GNDM (the lab's reading; code not released)")
def train_gndm(exp, steps=None, reward=None, base=None, stage1_steps=None, **overrides):
    """GNDM: the stage-I one-step generator as a Gaussian policy ``x = G(z) + sigma xi``, ``group`` samples per
    noise ``z``, trained by the clipped importance-sampled surrogate (:func:`clipped_policy_loss`, ``reuse``
    updates per batch of samples) on group-normalised advantages (:func:`group_advantages`) of the
    distribution-matching reward :func:`dm_reward`; with an external ``reward`` (GNDMR) each reward is
    normalised in its group and the advantages are added with weight ``reward_weight``, so the mix does not
    depend on the rewards' scales. The fake score keeps fitting the policy's samples. Without ``reward`` it is
    GNDM against plain DMD. The paper's exact estimator and adaptive weight are not public; see
    :func:`dm_reward`."""
    sc = exp.scale
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    cfg = with_options(overrides, "gndm", lr=2e-4, fake_lr=2e-4, critic_updates=2, group=8, sigma=0.05,
                       reuse=2, clip=0.2, reward_weight=1.0, n_groups=min(sc.batch, 512) // 8)
    steps = steps if steps is not None else sc.pick(ci=150, default=1000, gpu=3000)
    # pragma: no mutate end
    G = _stage1(exp, base, stage1_steps)
    g_opt, f_opt = _adam(G.net.parameters(), cfg["lr"]), _adam(G.fake.parameters(), cfg["fake_lr"])
    K, n, sigma = int(cfg["group"]), int(cfg["n_groups"]), float(cfg["sigma"])

    def step(i):
        logs = {}
        z = exp.noise_batch(n).repeat_interleave(K, 0)
        with torch.no_grad():
            mean_old = G(z)
            x = mean_old + sigma * torch.randn_like(mean_old)
            logp_old = gaussian_policy_logp(x, mean_old, sigma)
        for _ in range(cfg["critic_updates"]):
            lf, finfo = fake_score_loss(G.fake, x)
            _critic_step(f_opt, lf)
            logs.update(finfo)
        r_dm = dm_reward(x, exp.velocity, G.fake, K)
        adv = group_advantages(r_dm, K)
        logs["r_dm_spread"] = float(r_dm.view(n, K).std(1).mean())
        if reward is not None:
            with torch.no_grad():
                r_ext = _reward_values(reward, x)
            adv = adv + cfg["reward_weight"] * group_advantages(r_ext, K)
            logs["reward"] = float(r_ext.mean())
        for _ in range(cfg["reuse"]):
            loss, info = clipped_policy_loss(gaussian_policy_logp(x, G(z), sigma), logp_old, adv, cfg["clip"])
            g_opt.zero_grad(set_to_none=True)
            loss.backward()
            g_opt.step()
        logs.update(info)
        logs["loss"] = float(loss.detach())
        return logs

    G.history = exp.fit(step, steps, desc="gndm" if reward is None else "gndmr")
    G.config, G.reward = cfg, reward
    return G.eval()
