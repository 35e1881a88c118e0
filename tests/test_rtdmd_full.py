"""RTDMD whole (methods/step/rtdmd_full.py): the stochastic K-step generator, AC-DMD and the hybrid policy
gradient, checked on closed forms; each test names the bug it catches."""

import math

import pytest
import torch

from distill_lab.core.flows import GaussianLinearFlow, denoise
from distill_lab.methods.step import rtdmd_full as rf
from distill_lab.methods.step.dmd import dmd_loss

D = torch.float64


class Affine(torch.nn.Module):
    """v(x, t) = x A^T + t b + c (float64), trainable."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(0.3 * torch.randn(2, 2, generator=g, dtype=D))
        self.b = torch.nn.Parameter(torch.randn(2, generator=g, dtype=D))
        self.c = torch.nn.Parameter(torch.randn(2, generator=g, dtype=D))

    def forward(self, x, t):
        return x @ self.A.T + t[:, None] * self.b + self.c


def _grads(net):
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def test_stochastic_rollout_renoises_each_prediction_to_the_next_grid_time():
    """x_{k+1} = t_{k+1} x_hat_k + (1 - t_{k+1}) xi with xi standard normal, and x_hat_k = x_k + (1 - t_k) v: the
    residual noise has mean 0 and variance 1 (a wrong mix, or a deterministic step, fails)."""
    net = Affine()
    z = torch.randn(40000, 2, dtype=D)
    states, outs = rf.stochastic_rollout(net, z, 4)
    assert len(states) == 4 and len(outs) == 4 and states[0] is z
    for k in range(3):
        tk = torch.full((z.shape[0],), k / 4, dtype=D)
        torch.testing.assert_close(outs[k], states[k] + (1 - k / 4) * net(states[k], tk))
        xi = (states[k + 1] - (k + 1) / 4 * outs[k]) / (1 - (k + 1) / 4)
        assert float(xi.mean(0).abs().max()) < 0.02 and float((xi.var(0) - 1).abs().max()) < 0.03
    assert not outs[-1].requires_grad


def test_transition_logp_closed_form_and_its_gradient_reaches_only_the_prediction():
    """log pi = -|x_next - t_next x_hat|^2 / (2 (1 - t_next)^2): a swapped time or a missing square fails; the
    states carry no gradient."""
    net = Affine()
    x, xn = torch.randn(5, 2, dtype=D, requires_grad=True), torch.randn(5, 2, dtype=D, requires_grad=True)
    lp = rf.transition_logp(net, x, xn, 0.25, 0.5)
    x_hat = x.detach() + 0.75 * net(x.detach(), torch.full((5,), 0.25, dtype=D))
    torch.testing.assert_close(lp, -(xn.detach() - 0.5 * x_hat).pow(2).sum(1) / (2 * 0.25))
    lp.sum().backward()
    assert x.grad is None and xn.grad is None and _grads(net).abs().max() > 0
    with pytest.raises(ValueError, match="t_k < t_next < 1"):
        rf.transition_logp(net, x, xn, 0.5, 1.0)


def test_acdmd_reads_each_steps_subinterval_and_is_zero_with_the_fake_equal_to_the_teacher():
    """AC-DMD's noising times lie in [k/K, (k+1)/K] (clipped to [0.02, 0.98]); with a given t it is DMD; with the
    fake equal to the teacher the gradient is zero (a time drawn over the whole range or a missing
    stop-gradient fails)."""
    teacher = GaussianLinearFlow(torch.tensor([1.0, -0.5], dtype=D), 0.6)
    x = torch.randn(4000, 2, dtype=D, requires_grad=True)
    k = torch.randint(0, 4, (4000,))
    _, info = rf.acdmd_loss(x, k, 4, teacher.velocity, GaussianLinearFlow(torch.tensor([0.0, 0.0], dtype=D)).velocity)
    t = info["t"]
    lo, hi = (k.to(D) / 4).clamp_min(0.02), ((k + 1).to(D) / 4).clamp_max(0.98)
    assert bool(((t >= lo) & (t <= hi)).all())
    loss, _ = rf.acdmd_loss(x, k, 4, teacher.velocity, teacher.velocity)
    loss.backward()
    assert float(x.grad.abs().max()) < 1e-12
    tt, eps = torch.rand(4000, dtype=D) * 0.9, torch.randn(4000, 2, dtype=D)
    fake = GaussianLinearFlow(torch.tensor([0.5, 0.5], dtype=D)).velocity
    torch.testing.assert_close(rf.acdmd_loss(x, k, 4, teacher.velocity, fake, t=tt, noise=eps)[0],
                               dmd_loss(x, teacher.velocity, fake, t=tt, noise=eps)[0])
    with pytest.raises(ValueError, match="steps in 0..3"):
        rf.acdmd_loss(x, k + 1, 4, teacher.velocity, fake)


def test_fake_losses_closed_forms():
    """The fake's flow matching regresses x_hat - eps at (1 - t) eps + t x_hat; the consistency regulariser is
    zero for a constant velocity (a straight flow) and positive for a curved one, with its target detached."""
    fake = Affine(seed=2)
    x_hat, eps = torch.randn(6, 2, dtype=D), torch.randn(6, 2, dtype=D)
    t = torch.rand(6, dtype=D) * 0.9
    loss, _ = rf.acdmd_fake_loss(fake, x_hat, torch.zeros(6, dtype=torch.long), 4, t=t, noise=eps)
    xt = (1 - t[:, None]) * eps + t[:, None] * x_hat
    torch.testing.assert_close(loss, (fake(xt, t) - (x_hat - eps)).pow(2).mean())
    const = lambda x, tt: torch.ones_like(x) * torch.tensor([0.3, -1.0], dtype=D)  # noqa: E731
    assert float(rf.fake_consistency_loss(const, xt, t * 0.8)[0]) < 1e-24
    curved = GaussianLinearFlow(torch.tensor([1.0, 1.0], dtype=D), 0.3).velocity
    assert float(rf.fake_consistency_loss(curved, xt, t * 0.8)[0]) > 1e-6
    lc, _ = rf.fake_consistency_loss(fake, xt, t * 0.8)
    lc.backward()
    pred = denoise(fake, xt, t * 0.8)
    with torch.no_grad():
        xn = xt + 0.05 * fake(xt, t * 0.8)
        target = denoise(fake, xn, t * 0.8 + 0.05)
    g_got = _grads(fake).clone()
    fake.zero_grad()
    (pred - target).pow(2).mean().backward()
    torch.testing.assert_close(g_got, _grads(fake))


def test_hybrid_reward_loss_is_zero_at_beta_infinity_and_matches_its_two_parts():
    """beta = inf leaves no reward gradient (RTDMD then is its DMD stage); otherwise the loss is
    -(mean r(x_hat_{K-1}) + mean A sum_{k in S} log pi) / beta with group-normalised A, and identical rewards in
    every group leave only the pathwise part (a sign flip, a missing 1/beta or ungrouped advantages fail)."""
    net = Affine()
    z = torch.randn(4, 2, dtype=D).repeat_interleave(4, 0)
    states, _ = rf.stochastic_rollout(net, z, 3)
    reward = lambda x: x[:, 0]  # noqa: E731
    loss, _ = rf.hybrid_reward_loss(net, states, states[-1], reward, math.inf, 4, 3)
    loss.backward()
    assert float(_grads(net).abs().max()) == 0
    net.zero_grad()
    g = torch.Generator().manual_seed(0)
    loss, info = rf.hybrid_reward_loss(net, states, states[-1], reward, 0.5, 4, 3, subset=1, generator=g)
    k = int(torch.randperm(2, generator=torch.Generator().manual_seed(0))[0])
    tl = torch.full((16,), 2 / 3, dtype=D)
    x_out = states[-1] + (1 / 3) * net(states[-1], tl)
    r = x_out[:, 0]
    rg = r.detach().view(4, 4)
    adv = ((rg - rg.mean(1, keepdim=True)) / (rg.std(1, keepdim=True) + 1e-8)).flatten()
    lp = rf.transition_logp(net, states[k], states[k + 1], k / 3, (k + 1) / 3)
    torch.testing.assert_close(loss, -(r.mean() + (adv * lp).mean()) / 0.5)
    same = lambda x: torch.zeros(x.shape[0], dtype=x.dtype) + 0 * x[:, 0]  # noqa: E731
    loss0, info0 = rf.hybrid_reward_loss(net, states, states[-1], same, 0.5, 4, 3, subset=2)
    assert info0["pg"] == 0.0


def test_rtdmd_full_stage_two_at_beta_infinity_is_acdmd_alone(monkeypatch):
    """With beta = inf the stage-II loss equals the AC-DMD term (the reward term adds exactly zero), and the
    student samples with its K stochastic steps."""
    from test_dmd_reward_exact import FakeExp

    seen = []
    orig = rf.hybrid_reward_loss
    monkeypatch.setattr(rf, "hybrid_reward_loss", lambda *a, **k: (lambda out: (seen.append(out), out)[1])(orig(*a, **k)))
    exp = FakeExp()
    exp.device = "cpu"
    st = rf.train_rtdmd_full(exp, steps=2, beta=math.inf, stage1_steps=1, batch=8, n_groups=2, group=4, K=3,
                             critic_updates=1)
    assert len(seen) == 2 and all(float(loss.detach()) == 0.0 for loss, _ in seen)
    for h in st.history:
        assert h["loss"] == pytest.approx(h["dmd"])
    assert st.sample(torch.randn(5, 2), 3).shape == (5, 2)
