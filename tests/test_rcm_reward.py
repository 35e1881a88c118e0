"""Tests for rCM (sCM + lambda DMD) and reward-tilted DMD (RTDMD)."""

import math

import pytest
import torch

from distill_lab.core.flows import GaussianLinearFlow, interpolate
from distill_lab.core.registry import get_recipe
from distill_lab.core.scale import Scale
from distill_lab.methods.step.consistency import scm_loss
from distill_lab.methods.step.dmd import dmd_loss
from distill_lab.methods.step.rcm import rcm_losses, rollout_input, train_rcm
from distill_lab.methods.step.reward import (beta_sweep, mean_reward, reward_disk, reward_linear, reward_right,
                                             rtdmd_loss, tilted_reference, tilted_velocity, train_rtdmd,
                                             train_stage1)
from distill_lab.methods.step.students import ConsistencyFunction
from distill_lab.nets.mlp import TimeMLP
from distill_lab.toy2d.experiment import Toy2D

SHAPES = [(2,), (3, 8, 8)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These nets are tiny: one thread is faster, and kinder to a shared CPU. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _flow(shape, mu=0.7, sigma=0.5):
    return GaussianLinearFlow(torch.full(shape, mu), sigma)


def _direction(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, generator=g)
    return a / a.norm() * 1.3


def _tilted_flow(shape, a, beta, mu=0.7, sigma=0.5):
    """Closed form: N(mu, s^2 I) tilted by r(x) = <a, x> is N(mu + s^2 a / beta, s^2 I)."""
    return GaussianLinearFlow(torch.full(shape, mu) + sigma ** 2 * a / beta, sigma)


# ----------------------------------------------------------------------------------- rewards
def test_rewards_values_shapes_and_errors():
    x = torch.tensor([[1.35, 1.35], [-1.35, -1.35], [0.3, 2.0]])
    assert torch.equal(reward_right(x), x[:, 0])
    d = reward_disk(x)
    assert d.shape == (3,) and d[0] > 0.95 and d[1] < 1e-3  # inside vs far outside the disk
    img = torch.randn(4, 3, 8, 8)
    a = _direction((3, 8, 8))
    assert torch.allclose(reward_linear(img, a), (img * a).flatten(1).sum(1))
    with pytest.raises(ValueError, match="2D points"):
        reward_right(img)
    with pytest.raises(ValueError, match="direction"):
        reward_linear(img, torch.ones(2))
    with pytest.raises(ValueError, match="positive"):
        reward_disk(x, radius=-1.0)


# --------------------------------------------------------------------------- tilt maths
@pytest.mark.parametrize("shape", SHAPES)
def test_tilted_velocity_matches_closed_form(shape):
    torch.manual_seed(0)
    beta, a = 0.8, _direction(shape)
    flow, tilted = _flow(shape), _tilted_flow(shape, a, beta)
    x = 1.5 * torch.randn(64, *shape)
    t = 0.02 + 0.97 * torch.rand(64)
    vt = tilted_velocity(flow.velocity, lambda y: reward_linear(y, a), beta)(x, t)
    exact = tilted.velocity(x, t)
    assert (vt - exact).abs().max() < 2e-5
    # the untilted velocity is clearly not the tilted target's velocity
    assert (flow.velocity(x, t) - exact).abs().max() > 0.05
    # and a wrong temperature gives a clearly wrong tilt
    wrong = tilted_velocity(flow.velocity, lambda y: reward_linear(y, a), 2 * beta)(x, t)
    assert (wrong - exact).abs().max() > 0.05


def test_tilted_velocity_works_under_no_grad_and_rejects_bad_input():
    flow, a = _flow((2,)), _direction((2,))
    vt = tilted_velocity(flow.velocity, lambda y: reward_linear(y, a), 0.5)
    x, t = torch.randn(8, 2), torch.full((8,), 0.5)
    with torch.no_grad():
        out = vt(x, t)
    assert out.shape == x.shape and not out.requires_grad
    assert tilted_velocity(flow.velocity, reward_right, math.inf) == flow.velocity  # no tilt: the same callable
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        vt(x, torch.zeros(8))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            tilted_velocity(flow.velocity, reward_right, bad)
    with pytest.raises(ValueError, match="one value per sample"):
        tilted_velocity(flow.velocity, lambda y: y, 0.5)(x, t)


@pytest.mark.parametrize("shape", SHAPES)
def test_rtdmd_vanishes_at_the_exact_tilted_distribution(shape):
    """Generator samples from the exact tilted target, fake velocity = that target's velocity: zero gradient.
    At the untilted teacher instead, the gradient step moves samples up the reward."""
    torch.manual_seed(1)
    beta, a = 0.7, _direction(shape)
    flow, tilted = _flow(shape), _tilted_flow(shape, a, beta)
    rew = lambda y: reward_linear(y, a)  # noqa: E731
    B = 128
    t, noise = 0.02 + 0.96 * torch.rand(B), torch.randn(B, *shape)
    x = tilted.sample_data(B, shape).requires_grad_(True)
    loss, info = rtdmd_loss(x, flow.velocity, tilted.velocity, rew, beta, t=t, noise=noise)
    loss.backward()
    assert loss.item() < 1e-9 and x.grad.abs().max() < 1e-7
    assert info["grad"].abs().max() < 2e-4
    # perturbed: the generator still produces the untilted teacher's distribution
    x0 = flow.sample_data(B, shape).requires_grad_(True)
    loss0, info0 = rtdmd_loss(x0, flow.velocity, flow.velocity, rew, beta, t=t, noise=noise)
    loss0.backward()
    assert loss0.item() > 1e-4
    step = -x0.grad.flatten(1)  # the direction one gradient step moves each sample
    assert (step @ a.flatten()).mean() > 0  # up the reward
    cos = torch.nn.functional.cosine_similarity(step, a.flatten()[None], dim=1)
    assert cos.min() > 0.99  # for a linear reward on a Gaussian, exactly along a


@pytest.mark.parametrize("shape", SHAPES)
def test_rtdmd_with_infinite_beta_is_dmd(shape):
    torch.manual_seed(2)
    B = 32
    real, fake = TimeMLP(math.prod(shape), 32, 2), TimeMLP(math.prod(shape), 32, 2)
    t, noise = 0.02 + 0.96 * torch.rand(B), torch.randn(B, *shape)
    x1 = torch.randn(B, *shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    x3 = x1.detach().clone().requires_grad_(True)
    rew = lambda y: reward_linear(y, _direction(shape))  # noqa: E731
    l1, _ = rtdmd_loss(x1, real, fake, rew, math.inf, t=t, noise=noise)
    l2, _ = dmd_loss(x2, real, fake, t=t, noise=noise)
    l3, _ = rtdmd_loss(x3, real, fake, rew, 1e9, t=t, noise=noise)
    (l1 + l2 + l3).backward()
    assert torch.equal(l1, l2) and torch.equal(x1.grad, x2.grad)
    assert torch.allclose(x3.grad, x2.grad, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_rtdmd_stop_gradients(shape):
    """Only the generator sample receives gradient, and it equals DMD's normalised gradient / numel."""
    torch.manual_seed(3)
    B, D = 16, math.prod(shape)
    real, fake = TimeMLP(D, 32, 2), TimeMLP(D, 32, 2)
    gen = TimeMLP(D, 32, 2)
    z = torch.randn(B, *shape)
    x = z + gen(z, torch.zeros(B))
    x.retain_grad()
    rew = lambda y: reward_linear(y, _direction(shape))  # noqa: E731
    loss, info = rtdmd_loss(x, real, fake, rew, 0.3)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in real.parameters())
    assert all(p.grad is None for p in fake.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    assert torch.allclose(x.grad * x.numel(), info["grad"], atol=1e-6, rtol=1e-4)
    assert set(info) >= {"reward", "beta", "grad_norm"}


def test_tilted_reference_on_a_gaussian():
    torch.manual_seed(4)
    a, beta = torch.tensor([1.0, -0.5]), 0.5
    data = _flow((2,)).sample_data(200000)
    pts, er = tilted_reference(data, lambda y: reward_linear(y, a), beta, n=50000)
    mu_t = torch.full((2,), 0.7) + 0.25 * a / beta
    assert abs(er - float(a @ mu_t)) < 0.02
    assert (pts.mean(0) - mu_t).abs().max() < 0.02
    same, er_inf = tilted_reference(data, lambda y: reward_linear(y, a), math.inf)
    assert same is data and abs(er_inf - float((data @ a).mean())) < 1e-5


# ------------------------------------------------------------------------------------- rCM
def _exact_rcm_objects(shape):
    flow = _flow(shape)
    return flow, flow.consistency, flow.velocity


@pytest.mark.parametrize("shape", SHAPES)
def test_rcm_vanishes_at_the_exact_consistency_function(shape):
    torch.manual_seed(5)
    B = 64
    flow, f, v = _exact_rcm_objects(shape)
    x0, x1 = torch.randn(B, *shape), flow.sample_data(B, shape)
    t = torch.rand(B) * 0.999
    x_t = interpolate(x0, x1, t)
    z = torch.randn(B, *shape)
    loss, info = rcm_losses(f, v, v, x_t, t, z, 0.0, lam=1.0)
    assert loss.item() < 1e-9 and info["dmd"] < 1e-9
    # perturbed consistency function (its one-step samples are N(mu, (sigma + 0.1)^2 I), whose exact
    # velocity is the fake velocity): both terms come alive
    fp = lambda x, tt: f(x, tt) + 0.1 * x  # noqa: E731
    fake_p = GaussianLinearFlow(flow.mu, flow.sigma + 0.1).velocity
    loss_p, info_p = rcm_losses(fp, v, fake_p, x_t, t, z, 0.0, lam=1.0)
    assert info_p["scm"] > 1e-3 and info_p["dmd"] > 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_rcm_gradients_reach_the_student_only(shape):
    torch.manual_seed(6)
    B, D = 16, math.prod(shape)
    teacher, fake = TimeMLP(D, 32, 2), TimeMLP(D, 32, 2)  # requires_grad on: they must stay untouched
    f = ConsistencyFunction(TimeMLP(D, 32, 2))
    x_t, t = torch.randn(B, *shape), torch.rand(B) * 0.999
    loss, info = rcm_losses(f, teacher, fake, x_t, t, torch.randn(B, *shape), 0.0, lam=0.5)
    loss.backward()
    assert torch.isfinite(loss) and info["x_gen"].shape == (B, *shape) and not info["x_gen"].requires_grad
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in fake.parameters())
    assert all(p.grad is not None for p in f.parameters())
    assert sum(float(p.grad.abs().sum()) for p in f.parameters()) > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_rcm_is_scm_at_lambda_zero_and_adds_dmd_linearly(shape):
    torch.manual_seed(7)
    B, D = 16, math.prod(shape)
    teacher, fake = TimeMLP(D, 32, 2), TimeMLP(D, 32, 2)
    f = ConsistencyFunction(TimeMLP(D, 32, 2))
    x_t, t, z = torch.randn(B, *shape), torch.rand(B) * 0.999, torch.randn(B, *shape)
    dt, dn = 0.02 + 0.96 * torch.rand(B), torch.randn(B, *shape)

    def grads(loss):
        f.zero_grad(set_to_none=True)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in f.parameters()])

    kw = dict(dmd_t=dt, dmd_noise=dn, tangent_warmup=0.5)
    l0, _ = rcm_losses(f, teacher, fake, x_t, t, z, 0.0, lam=0.0, **kw)
    g0 = grads(l0)
    ls, _ = scm_loss(f, teacher, x_t, t, tangent_warmup=0.5)
    gs = grads(ls)
    assert torch.equal(l0, ls) and torch.allclose(g0, gs, atol=1e-7)
    l2, info2 = rcm_losses(f, teacher, fake, x_t, t, z, 0.0, lam=2.0, **kw)
    g2 = grads(l2)
    ld, _ = dmd_loss(f(z, torch.zeros(B)), teacher, fake, t=dt, noise=dn)
    gd = grads(ld)
    assert abs(l2.item() - (ls.item() + 2 * ld.item())) < 1e-6
    assert torch.allclose(g2, gs + 2 * gd, atol=1e-6, rtol=1e-4)


def test_rcm_bad_input_and_rollout():
    f = ConsistencyFunction(TimeMLP(2, 16, 2))
    v = TimeMLP(2, 16, 2)
    x = torch.randn(8, 2)
    with pytest.raises(ValueError, match="gen_t"):
        rcm_losses(f, v, v, x, torch.rand(8), x, 1.0)
    with pytest.raises(ValueError, match="lam"):
        rcm_losses(f, v, v, x, torch.rand(8), x, 0.0, lam=-1.0)
    with pytest.raises(ValueError, match=r"\[B, \.\.\.\]"):
        rcm_losses(f, v, v, torch.randn(8), torch.rand(8), x, 0.0)
    x0, t0 = rollout_input(f, x, 0)
    assert torch.equal(x0, x) and torch.equal(t0, torch.zeros(8))
    x1, t1 = rollout_input(f, x, 1)
    assert x1.shape == x.shape and torch.allclose(t1, torch.full((8,), 0.5))


# --------------------------------------------------------------------------------- recipes
@pytest.fixture(scope="module")
def tiny_exp():
    sc = Scale("ci", teacher_steps=60, width=32, depth=2, batch=64, student_steps=10, eval_n=256,
               n_proj=32, device="cpu")
    return Toy2D("checkerboard", scale=sc, cache=False, progress=False)


def test_rtdmd_recipe_and_sweep_smoke(tiny_exp):
    assert get_recipe("rtdmd").nfes == (1,)
    torch.manual_seed(0)
    base = train_stage1(tiny_exp, steps=3, batch=32)
    st = train_rtdmd(tiny_exp, steps=3, beta=0.5, base=base, batch=32)
    x = st.sample(tiny_exp.eval_noise, 1)
    assert x.shape == tiny_exp.eval_noise.shape and torch.isfinite(x).all()
    assert "reward" in st.history and st.beta == 0.5
    assert isinstance(mean_reward(tiny_exp, st, reward_right), float)
    rows = beta_sweep(tiny_exp, [math.inf, 0.5], steps=2, base=base, batch=32)
    assert [r["beta"] for r in rows] == [math.inf, 0.5]
    assert rows[1]["target_reward"] > rows[0]["target_reward"]  # the tilted target's own reward rises
    with pytest.raises(ValueError, match="unknown overrides"):
        train_rtdmd(tiny_exp, steps=1, base=base, wrong=1)
    with pytest.raises(ValueError, match="fake_updates"):
        train_rtdmd(tiny_exp, steps=1, base=base, fake_updates=0)
    full = train_rtdmd(tiny_exp, steps=2, stage1_steps=2, batch=32, t_min=0.3)  # both stages from scratch
    assert full.stage1_history is not None and torch.isfinite(full.sample(tiny_exp.eval_noise, 1)).all()


def test_rcm_recipe_smoke(tiny_exp):
    assert get_recipe("rcm").nfes == (1, 2)
    torch.manual_seed(0)
    f = train_rcm(tiny_exp, steps=4, batch=32)
    for nfe in (1, 2):
        x = f.sample(tiny_exp.eval_noise, nfe)
        assert x.shape == tiny_exp.eval_noise.shape and torch.isfinite(x).all()
    assert "dmd" in f.history and hasattr(f, "fake")
    f0 = train_rcm(tiny_exp, steps=3, batch=32, lam=0.0)  # the ablation: plain sCM on this schedule
    assert "dmd" not in f0.history and "dfdt_rms" in f0.history
    with pytest.raises(ValueError, match="unknown option"):
        train_rcm(tiny_exp, steps=1, nope=3)
