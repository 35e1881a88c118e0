"""Tests of the consistency family: every residual vanishes at the exact objects of a Gaussian linear
flow and not at perturbed ones; every stop-gradient stops the gradient; shapes [B, 2] and [B, 3, 8, 8]."""

import copy

import pytest
import torch

from distill_lab.core.flows import GaussianLinearFlow, expand_t, interpolate
from distill_lab.core.registry import get_recipe
from distill_lab.core.scale import Scale
from distill_lab.methods.step.consistency import (cd_loss, consistency_tangent, ct_loss, ctm_diagonal_loss,
                                                  ctm_loss, scm_loss, segment_end, trajectory_pairs, tscd_loss)
from distill_lab.methods.step.students import ConsistencyFunction, FlowMap
from distill_lab.nets.mlp import TimeMLP
from distill_lab.toy2d.experiment import Toy2D

SHAPES = [(2,), (3, 8, 8)]
G = GaussianLinearFlow(mu=1.5, sigma=0.5)


def perturbed_f(x, t):
    """Not a consistency function of G (but still ``f(x, 1) = x``)."""
    return G.consistency(x, t) + 0.1 * (1 - expand_t(t, x)) * x


def perturbed_X(x, s, t):
    return G.flow_map(x, s, t) + 0.1 * expand_t(t - s, x) * x


def draw(shape, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *shape, generator=g)
    x1 = G.sample_data(n, shape, generator=g)
    return x0, x1


def dim_of(shape):
    return int(torch.tensor(shape).prod())


# ------------------------------------------------------------------ CD
@pytest.mark.parametrize("shape", SHAPES)
def test_cd_exact_zero_perturbed_not(shape):
    x0, x1 = draw(shape)
    t = torch.rand(x0.shape[0]) * 0.9
    t_next = t + 0.1
    xt = interpolate(x0, x1, t)
    exact, _ = cd_loss(G.consistency, G.consistency, None, xt, t, t_next, teacher_step=G.flow_map)
    pert, _ = cd_loss(perturbed_f, perturbed_f, None, xt, t, t_next, teacher_step=G.flow_map)
    assert exact < 1e-10
    assert pert > 1e-4
    # with the teacher's own Heun step the residual is the (small) local error of Heun
    heun, _ = cd_loss(G.consistency, G.consistency, G.velocity, xt, t, t + 0.01, teacher_step="heun")
    assert heun < 1e-8


@pytest.mark.parametrize("shape", SHAPES)
def test_cd_ct_ema_target_gets_no_gradient(shape):
    torch.manual_seed(0)
    f = ConsistencyFunction(TimeMLP(dim=dim_of(shape), width=32, depth=2))
    f_ema = copy.deepcopy(f)  # trainable on purpose: the loss itself must stop its gradient
    x0, x1 = draw(shape, n=16)
    t = torch.full((16,), 0.25)
    loss, info = cd_loss(f, f_ema, G.velocity, interpolate(x0, x1, t), t, t + 0.25)
    loss.backward()
    assert all(p.grad is None for p in f_ema.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in f.parameters())
    assert isinstance(info["loss"], torch.Tensor) and not info["loss"].requires_grad
    f.zero_grad(set_to_none=True)
    loss, _ = ct_loss(f, f_ema, x0, x1, t, t + 0.25)
    loss.backward()
    assert all(p.grad is None for p in f_ema.parameters())
    assert all(p.grad is not None for p in f.parameters())


# ------------------------------------------------------------------ CT
def _ct_expected_grad(f_base, n=200_000, dt=1e-3, seed=1):
    """d/d eps of the CT loss for f_base + eps * h at eps = 0, divided by dt (same draws every call)."""
    x0, x1 = draw((2,), n=n, seed=seed)
    t = torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1
    eps = torch.zeros((), requires_grad=True)

    def h(x, tt):
        return (1 - expand_t(tt, x)) * torch.sin(x)

    f = lambda x, tt: f_base(x, tt) + eps * h(x, tt)  # noqa: E731
    loss, _ = ct_loss(f, f, x0, x1, t, t + dt)
    (g,) = torch.autograd.grad(loss, eps)
    return float(g) / dt


def test_ct_expected_gradient_vanishes_at_exact_consistency_function():
    # The CT residual is noisy per sample; its expected gradient is what vanishes (Song et al., Thm. 2)
    exact = abs(_ct_expected_grad(G.consistency))
    pert = abs(_ct_expected_grad(perturbed_f))
    assert pert > 10 * exact, (exact, pert)
    assert exact < 0.02


@pytest.mark.parametrize("shape", SHAPES)
def test_ct_runs_on_shapes(shape):
    x0, x1 = draw(shape, n=8)
    t = torch.full((8,), 0.5)
    loss, _ = ct_loss(G.consistency, G.consistency, x0, x1, t, t + 0.1)
    assert loss.dim() == 0 and torch.isfinite(loss)


# ------------------------------------------------------------------ sCM
@pytest.mark.parametrize("shape", SHAPES)
def test_scm_tangent_vanishes_along_exact_ode(shape):
    x0, x1 = draw(shape)
    t = torch.rand(x0.shape[0]) * 0.95
    xt = interpolate(x0, x1, t)
    _, dfdt = consistency_tangent(G.consistency, G.velocity, xt, t)
    _, dfdt_p = consistency_tangent(perturbed_f, G.velocity, xt, t)
    assert dfdt.abs().max() < 1e-5
    assert dfdt_p.abs().mean() > 1e-2
    loss, info = scm_loss(G.consistency, G.velocity, xt, t)
    loss_p, _ = scm_loss(perturbed_f, G.velocity, xt, t)
    assert loss < 1e-8 and info["dfdt_rms"] < 1e-5
    assert loss_p > 1e-2


@pytest.mark.parametrize("shape", SHAPES)
def test_scm_gradient_is_grad_f_dot_normalised_tangent(shape):
    torch.manual_seed(0)
    D = dim_of(shape)
    f = ConsistencyFunction(TimeMLP(dim=D, width=32, depth=2))
    x0, x1 = draw(shape, n=16)
    t = torch.rand(16) * 0.9
    xt = interpolate(x0, x1, t)
    loss, _ = scm_loss(f, G.velocity, xt, t, norm_const=0.1)
    grads = torch.autograd.grad(loss, list(f.parameters()))
    # expected: -2/(B D) sum_b grad_theta f_b . g_b with g the normalised tangent (held fixed)
    _, dfdt = consistency_tangent(f, G.velocity, xt, t)
    rms = dfdt.pow(2).reshape(16, -1).mean(1).sqrt()
    g = dfdt / (expand_t(rms, xt) + 0.1)
    surrogate = -2.0 / (16 * D) * (f(xt, t) * g).sum()
    expected = torch.autograd.grad(surrogate, list(f.parameters()))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_scm_target_network_gets_no_gradient_and_warmup_split_matches():
    torch.manual_seed(0)
    f = ConsistencyFunction(TimeMLP(dim=2, width=32, depth=2))
    f_t = copy.deepcopy(f)
    x0, x1 = draw((2,), n=32)
    t = torch.rand(32) * 0.9
    xt = interpolate(x0, x1, t)
    loss, _ = scm_loss(f, G.velocity, xt, t, f_target=f_t, tangent_warmup=0.5)
    loss.backward()
    assert all(p.grad is None for p in f_t.parameters())
    assert all(p.grad is not None for p in f.parameters())
    # the split (v - F) + r (1 - t) dF/dt equals the full jvp when r -> 1
    _, full = consistency_tangent(f, G.velocity, xt, t, 1.0)
    _, split = consistency_tangent(f, G.velocity, xt, t, 1.0 - 1e-7)
    torch.testing.assert_close(full, split, rtol=1e-4, atol=1e-5)
    _, r0 = consistency_tangent(f, G.velocity, xt, t, 0.0)
    torch.testing.assert_close(r0, G.velocity(xt, t) - f.net(xt, t))


# ------------------------------------------------------------------ TBCM pairs
def test_trajectory_pairs_lie_on_teacher_trajectories():
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    xt, t = trajectory_pairs(G.velocity, z, n_steps=32, method="heun")
    assert xt.shape == z.shape and t.shape == (512,)
    assert (t >= 0).all() and (t < 1).all()
    on_traj = G.flow_map(z, torch.zeros(512), t)
    assert (xt - on_traj).abs().max() < 2e-3
    # and so the exact consistency function sends them to where their noise goes
    torch.testing.assert_close(G.consistency(xt, t), G.consistency(z, torch.zeros(512)), atol=5e-3, rtol=0)
    xr, tr = trajectory_pairs(G.velocity, z, n_steps=4, mode="renoise")
    assert xr.shape == z.shape and (tr < 1).all()


# ------------------------------------------------------------------ Hyper-SD
def test_segment_end():
    t = torch.tensor([0.0, 0.1, 0.25, 0.26, 0.74, 0.75, 0.99])
    torch.testing.assert_close(segment_end(t, 4), torch.tensor([0.25, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0]))
    torch.testing.assert_close(segment_end(t, 1), torch.ones(7))


@pytest.mark.parametrize("shape", SHAPES)
def test_tscd_exact_zero_perturbed_not(shape):
    x0, x1 = draw(shape)
    n = torch.randint(0, 8, (x0.shape[0],), generator=torch.Generator().manual_seed(0))
    t, t_next = n / 8, (n + 1) / 8
    e = segment_end(t, 2)
    xt = interpolate(x0, x1, t)
    exact, _ = tscd_loss(G.flow_map, G.flow_map, None, xt, t, t_next, e, teacher_step=G.flow_map)
    pert, _ = tscd_loss(perturbed_X, perturbed_X, None, xt, t, t_next, e, teacher_step=G.flow_map)
    assert exact < 1e-10
    assert pert > 1e-5


@pytest.mark.parametrize("shape", SHAPES)
def test_tscd_ema_target_gets_no_gradient(shape):
    torch.manual_seed(0)
    X = FlowMap(TimeMLP(dim=dim_of(shape), width=32, depth=2, n_times=2))
    X_ema = copy.deepcopy(X)
    x0, x1 = draw(shape, n=16)
    t = torch.full((16,), 0.25)
    loss, _ = tscd_loss(X, X_ema, G.velocity, interpolate(x0, x1, t), t, t + 0.125, segment_end(t, 2))
    loss.backward()
    assert all(p.grad is None for p in X_ema.parameters())
    assert all(p.grad is not None for p in X.parameters())


# ------------------------------------------------------------------ CTM
@pytest.mark.parametrize("shape", SHAPES)
def test_ctm_exact_zero_perturbed_not(shape):
    x0, x1 = draw(shape)
    B = x0.shape[0]
    t = torch.rand(B) * 0.5
    u = t + 0.2
    s = torch.minimum(u + torch.rand(B) * 0.5, torch.ones(B))
    xt = interpolate(x0, x1, t)
    exact, _ = ctm_loss(G.flow_map, G.flow_map, None, xt, t, u, s, teacher_step=G.flow_map)
    pert, _ = ctm_loss(perturbed_X, perturbed_X, None, xt, t, u, s, teacher_step=G.flow_map)
    assert exact < 1e-10
    assert pert > 1e-5
    heun, _ = ctm_loss(G.flow_map, G.flow_map, G.velocity, xt, t, t + 0.04, s, "heun", n_solver_steps=4)
    assert heun < 1e-8
    d_exact, _ = ctm_diagonal_loss(G.velocity, x0, x1, t, teacher_velocity=G.velocity)
    d_pert, _ = ctm_diagonal_loss(lambda x, tt: G.velocity(x, tt) + 0.1 * x, x0, x1, t, teacher_velocity=G.velocity)
    assert d_exact < 1e-12 and d_pert > 1e-3


@pytest.mark.parametrize("shape", SHAPES)
def test_ctm_outer_map_is_stop_gradient_but_passes_gradient_to_the_jump(shape):
    torch.manual_seed(0)
    X = FlowMap(TimeMLP(dim=dim_of(shape), width=32, depth=2, n_times=2))
    X_ema = copy.deepcopy(X)
    x0, x1 = draw(shape, n=16)
    t, u, s = torch.full((16,), 0.2), torch.full((16,), 0.4), torch.full((16,), 0.7)
    xt = interpolate(x0, x1, t)
    loss, _ = ctm_loss(X, X_ema, G.velocity, xt, t, u, s)
    grads = torch.autograd.grad(loss, list(X.parameters()))
    assert all(p.grad is None for p in X_ema.parameters())
    # reference: outer map as a frozen copy; the student's gradient must equal that exactly
    frozen = copy.deepcopy(X).requires_grad_(False)
    with torch.no_grad():
        xu = G.flow_map(xt, t, u)  # not used for the gradient; recompute the target as ctm_loss does
    from distill_lab.methods.step.consistency import teacher_solve
    xu = teacher_solve("heun", G.velocity, xt, t, u)
    with torch.no_grad():
        target = frozen(X_ema(xu, u, s), s, torch.ones(16))
    ref = (frozen(X(xt, t, s), s, torch.ones(16)) - target).pow(2).reshape(16, -1).mean(1).mean()
    torch.testing.assert_close(loss, ref)
    ref_grads = torch.autograd.grad(ref, list(X.parameters()))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert any(g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors():
    x = torch.randn(4, 2)
    t = torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="t < t_next"):
        cd_loss(G.consistency, G.consistency, G.velocity, x, t, t - 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scm_loss(G.consistency, G.velocity, x, t + 1.0)
    with pytest.raises(ValueError, match="shape"):
        scm_loss(G.consistency, G.velocity, x, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="batch"):
        scm_loss(G.consistency, G.velocity, torch.randn(2), 0.5)
    with pytest.raises(ValueError, match="euler"):
        cd_loss(G.consistency, G.consistency, G.velocity, x, t, t + 0.1, teacher_step="rk4")
    with pytest.raises(ValueError, match="u <= s"):
        ctm_loss(G.flow_map, G.flow_map, G.velocity, x, t, t + 0.3, t + 0.2)
    with pytest.raises(ValueError, match="at least 1"):
        segment_end(t, 0)


# ------------------------------------------------------------------ recipes
@pytest.fixture(scope="module")
def tiny_exp():
    sc = Scale("ci", teacher_steps=30, width=32, depth=2, batch=64, student_steps=10, eval_n=256,
               n_proj=16, device="cpu")
    return Toy2D("checkerboard", scale=sc, cache=False, progress=False)


@pytest.mark.parametrize("name,steps", [("cd", 4), ("ct", 4), ("scm", 4), ("tbcm", 4), ("hypersd", 8), ("ctm", 4)])
def test_recipe_smoke(tiny_exp, name, steps):
    rec = get_recipe(name)
    torch.manual_seed(0)
    student = rec.train(tiny_exp, steps=steps)
    assert "loss" in student.history
    for nfe in rec.nfes:
        out = tiny_exp.evaluate(student.sample, nfe)
        assert torch.isfinite(torch.tensor(out["value"]))
