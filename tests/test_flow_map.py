"""Flow-map losses: exact on the analytic Gaussian flow, stop-gradients where documented, any shape."""

import pytest
import torch

from distill_lab.core.flows import GaussianLinearFlow, expand_t, sample_ode
from distill_lab.core.scale import Scale
from distill_lab.methods.step import flow_map as fm
from distill_lab.methods.step.students import FlowMap
from distill_lab.nets.mlp import TimeMLP

G = GaussianLinearFlow(mu=1.5, sigma=0.5)
SHAPES = [(2,), (3, 8, 8)]


class ExactMap:
    """GaussianLinearFlow's closed-form flow map, with its diagonal velocity (no jvp methods, so the
    losses fall back to torch.func.jvp on the plain callable)."""

    def __init__(self, g=G, eps=0.0):
        self.g, self.eps = g, eps

    def __call__(self, x, s, t):
        # perturbed by eps (t - s) x: still the identity at s = t, but no longer a flow
        return self.g.flow_map(x, s, t) + self.eps * expand_t(t - s, x) * x

    def velocity(self, x, t):
        return self.g.velocity(x, t) + self.eps * x


def _batch(shape, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    s = torch.rand(n, generator=g) * 0.8
    t = s + (1 - s) * torch.rand(n, generator=g)
    u = s + (t - s) * torch.rand(n, generator=g)
    return x, s, t, u


def _student(shape, seed=0):
    torch.manual_seed(seed)
    dim = int(torch.tensor(shape).prod())
    return FlowMap(TimeMLP(dim=dim, width=32, depth=2, n_times=2))


def _grads(module, loss):
    module.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in module.parameters()]


# ------------------------------------------------------------------ exact objects: residuals vanish
@pytest.mark.parametrize("shape", SHAPES)
def test_lagrangian_exact_and_perturbed(shape):
    x, s, t, _ = _batch(shape)
    exact, _ = fm.lagrangian_loss(ExactMap(), G.velocity, x, s, t)
    bad, _ = fm.lagrangian_loss(ExactMap(eps=0.1), G.velocity, x, s, t)
    assert exact < 1e-9
    assert bad > 1e-3
    # self-distillation: the exact map's own diagonal is the exact velocity
    self_exact, _ = fm.lagrangian_loss(ExactMap(), ExactMap().velocity, x, s, t)
    assert self_exact < 1e-9


@pytest.mark.parametrize("shape", SHAPES)
def test_eulerian_exact_and_perturbed(shape):
    x, s, t, _ = _batch(shape)
    exact, info = fm.eulerian_loss(ExactMap(), G.velocity, x, s, t)
    bad, _ = fm.eulerian_loss(ExactMap(eps=0.1), G.velocity, x, s, t)
    assert exact < 1e-9 and info["residual_rms"] < 1e-4
    assert bad > 1e-3
    # the wrong tangent (a perturbed velocity) must also show
    wrong, _ = fm.eulerian_loss(ExactMap(), ExactMap(eps=0.1).velocity, x, s, t)
    assert wrong > 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_progressive_exact_and_perturbed(shape):
    x, s, t, u = _batch(shape)
    s, t = 0.2 * s / 0.8, 0.8 + 0.2 * t  # long jumps, so the two halves differ visibly from one jump
    u = (s + t) / 2
    exact, _ = fm.progressive_flow_map_loss(ExactMap(), x, s, u, t)
    # eps (t - s) x breaks the semigroup only at second order in eps; eps (t - s)^2 x at first order
    bad2 = lambda x, s, t: G.flow_map(x, s, t) + 0.1 * expand_t((t - s) ** 2, x) * x  # noqa: E731
    bad, _ = fm.progressive_flow_map_loss(bad2, x, s, u, t)
    assert exact < 1e-10
    assert bad > 1e-4
    bad1, _ = fm.progressive_flow_map_loss(ExactMap(eps=0.1), x, s, u, t)
    assert bad1 > 1e3 * exact


def test_diagonal_loss_is_stationary_at_the_exact_velocity():
    # flow matching's minimiser is the exact velocity: d loss / d c of v + c x vanishes at c = 0
    g = torch.Generator().manual_seed(1)
    x1 = G.sample_data(200_000, generator=g)
    x0 = torch.randn(x1.shape, generator=g)
    t = torch.rand(x1.shape[0], generator=g)

    def slope(c0):
        c = torch.tensor(c0, requires_grad=True)

        class M:
            velocity = staticmethod(lambda x, tt: G.velocity(x, tt) + c * x)

        loss, _ = fm.diagonal_loss(M(), x1, x0, t)
        loss.backward()
        return float(c.grad)

    assert abs(slope(0.0)) < 0.02
    assert slope(0.3) > 0.2


@pytest.mark.parametrize("shape", SHAPES)
def test_any_step_sampling_of_the_exact_map_is_exact(shape):
    z = torch.randn(32, *shape)
    ref = G.flow_map(z, torch.zeros(32), torch.ones(32))
    for nfe in (1, 2, 4):
        for schedule in ("uniform", "cosine", "late"):
            out = fm.anyflow_sample(ExactMap(), z, nfe, schedule)
            assert torch.allclose(out, ref, atol=1e-5)
    bad = fm.anyflow_sample(ExactMap(eps=0.1), z, 4)
    assert (bad - ref).abs().max() > 1e-2


@pytest.mark.parametrize("shape", SHAPES)
def test_onpolicy_exact_and_perturbed(shape):
    z = torch.randn(64, *shape)
    exact, _ = fm.anyflow_onpolicy_loss(ExactMap(), G.velocity, z, nfe=4, k=2, teacher_nfe=128)
    bad, _ = fm.anyflow_onpolicy_loss(ExactMap(eps=0.1), G.velocity, z, nfe=4, k=2, teacher_nfe=128)
    assert exact < 1e-8
    assert bad > 1e-4


# ------------------------------------------------------------------ stop-gradients
@pytest.mark.parametrize("shape", SHAPES)
def test_lagrangian_stop_gradient(shape):
    x, s, t, _ = _batch(shape, n=16)
    student = _student(shape)
    teacher = _student(shape, seed=1)  # a parametric teacher: its gradient must stay None
    loss, _ = fm.lagrangian_loss(student, teacher.velocity, x, s, t)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())

    # self-distillation: the gradient is that of |dX/dt - c|^2 with the target c a constant,
    # i.e. neither v_{t,t} nor the X_{s,t} fed into it carries gradient
    loss, _ = fm.lagrangian_loss(student, student.velocity, x, s, t)
    got = _grads(student, loss)
    X, dX = student.jvp_t(x, s, t)
    c = student.velocity(X, t).detach()
    want = _grads(student, (dX - c).pow(2).reshape(len(x), -1).mean(1).mean())
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # ... and differs from the gradient without any stop-gradient (so the check can fail)
    X, dX = student.jvp_t(x, s, t)
    nosg = _grads(student, (dX - student.velocity(X, t)).pow(2).reshape(len(x), -1).mean(1).mean())
    assert max((a - b).abs().max() for a, b in zip(got, nosg)) > 1e-6


@pytest.mark.parametrize("shape", SHAPES)
def test_eulerian_stop_gradient(shape):
    x, s, t, _ = _batch(shape, n=16)
    student = _student(shape)
    loss, info = fm.eulerian_loss(student, student.velocity, x, s, t)
    got = _grads(student, loss)
    with torch.no_grad():
        b = student.velocity(x, s)
        _, spatial = student.jvp_x(x, s, t, b)
    _, dsX = student.jvp_s(x, s, t)
    full = dsX + spatial
    want = _grads(student, full.pow(2).reshape(len(x), -1).mean(1).mean())
    for a, c in zip(got, want):
        assert torch.allclose(a, c, atol=1e-6, rtol=1e-4)
    # the single (x, s) jvp with tangent (b, 1) gives the same total residual
    _, total = torch.func.jvp(lambda xx, ss: student(xx, ss, t), (x, s), (b, torch.ones_like(s)))
    assert torch.allclose(total.detach(), full.detach(), atol=1e-5)
    assert torch.allclose(info["residual_rms"], total.pow(2).mean().sqrt().detach(), rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_progressive_stop_gradient(shape):
    x, s, t, u = _batch(shape, n=16)
    student = _student(shape)
    loss, _ = fm.progressive_flow_map_loss(student, x, s, u, t)
    got = _grads(student, loss)
    c = student(student(x, s, u), u, t).detach()
    want = _grads(student, (student(x, s, t) - c).pow(2).reshape(len(x), -1).mean(1).mean())
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_simulation_of_the_exact_map_lands_on_the_exact_sample(shape):
    x = torch.randn(32, *shape)
    want = G.flow_map(x, torch.zeros(32), torch.ones(32))
    for nfe, k in ((1, 0), (4, 0), (4, 3), (8, 5)):
        x_hat, x_k, tk = fm.anyflow_backward_simulation(ExactMap(), x, nfe, k)
        assert tk == pytest.approx(k / nfe)
        assert torch.allclose(x_k, G.flow_map(x, torch.zeros(32), torch.full((32,), tk)), atol=1e-5)
        assert torch.allclose(x_hat, want, atol=1e-5)
    # a perturbed map is no longer a flow: the rolled-out states drift, and the sample with them
    x_hat, _, _ = fm.anyflow_backward_simulation(ExactMap(eps=0.2), x, 4, 3)
    assert (x_hat - want).abs().max() > 1e-2
    with pytest.raises(ValueError, match="rolled-out jumps"):
        fm.anyflow_backward_simulation(ExactMap(), x, 2, 2)


def test_anyflow_dmd_loss_gradient_reaches_only_the_last_jump():
    from distill_lab.methods.step.dmd import dmd_loss

    student, real, fake = _student((2,)), _student((2,), seed=1), _student((2,), seed=2)
    z = torch.randn(16, 2)
    t = torch.full((16,), 0.5)
    torch.manual_seed(7)
    loss, info = fm.anyflow_dmd_loss(student, real.velocity, fake.velocity, z, nfe=4, k=2, t=t)
    got = _grads(student, loss)
    assert all(p.grad is None for p in list(real.parameters()) + list(fake.parameters()))
    assert info["t_k"] == 0.5 and float(info["grad_norm"]) > 0
    ts = fm.time_schedule(4)
    with torch.no_grad():
        x = student(student(z, ts[0], ts[1]), ts[1], ts[2])
    torch.manual_seed(7)
    want_loss, _ = dmd_loss(student(x, ts[2], torch.ones(16)), real.velocity, fake.velocity, t=t)
    want = _grads(student, want_loss)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # a fake score equal to the real one gives no gradient: the student already matches
    same, _ = fm.anyflow_dmd_loss(student, real.velocity, real.velocity, z, nfe=4, k=1, t=t)
    assert float(same.detach()) == 0.0


def test_onpolicy_stop_gradient():
    student = _student((2,))
    teacher = _student((2,), seed=1)
    z = torch.randn(16, 2)
    loss, _ = fm.anyflow_onpolicy_loss(student, teacher.velocity, z, nfe=4, k=3, teacher_nfe=32)
    got = _grads(student, loss)
    assert all(p.grad is None for p in teacher.parameters())
    ts = fm.time_schedule(4)
    with torch.no_grad():
        x = z
        for i in range(3):
            x = student(x, ts[i], ts[i + 1])
        c = sample_ode(teacher.velocity, x, 8, "midpoint", float(ts[3]), 1.0)
    want = _grads(student, (student(x, ts[3], ts[4]) - c).pow(2).mean(1).mean())
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------ FlowMap derivatives
def test_flow_map_jvps_match_finite_differences():
    torch.manual_seed(0)
    f = FlowMap(TimeMLP(dim=2, width=32, depth=2, n_times=2)).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    s = torch.rand(8, dtype=torch.float64) * 0.5
    t = s + 0.4
    v = torch.randn(8, 2, dtype=torch.float64)
    h = 1e-6
    _, dt = f.jvp_t(x, s, t)
    _, ds = f.jvp_s(x, s, t)
    _, dx = f.jvp_x(x, s, t, v)
    with torch.no_grad():
        fd_t = (f(x, s, t + h) - f(x, s, t - h)) / (2 * h)
        fd_s = (f(x, s + h, t) - f(x, s - h, t)) / (2 * h)
        fd_x = (f(x + h * v, s, t) - f(x - h * v, s, t)) / (2 * h)
    for a, b in ((dt, fd_t), (ds, fd_s), (dx, fd_x)):
        assert torch.allclose(a, b, atol=1e-7)


def test_jvp_fallback_on_plain_callables_matches_analytic():
    x, s, t, _ = _batch((2,), n=8)
    # d/dt X_{s,t}(x) of the exact map is the velocity at X_{s,t}(x)
    X, dX = fm.jvp_t(G.flow_map, x, s, t)
    assert torch.allclose(dX, G.velocity(X, t), atol=1e-5)


# ------------------------------------------------------------------ image shapes with a network
def test_losses_run_on_images_with_a_network():
    x, s, t, u = _batch((3, 8, 8), n=8)
    student = FlowMap(TimeMLP(dim=192, width=32, depth=2, n_times=2))
    for loss, _ in (fm.lagrangian_loss(student, student.velocity, x, s, t),
                    fm.eulerian_loss(student, student.velocity, x, s, t),
                    fm.progressive_flow_map_loss(student, x, s, u, t),
                    fm.diagonal_loss(student, x),
                    fm.anyflow_onpolicy_loss(student, G.velocity, x, 2, 1)):
        assert loss.dim() == 0 and torch.isfinite(loss)
    assert fm.anyflow_sample(student, x, 3, "cosine").shape == x.shape


# ------------------------------------------------------------------ bad input
def test_bad_input_raises_clear_errors():
    x, s, t, u = _batch((2,), n=8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fm.lagrangian_loss(ExactMap(), G.velocity, x, s, t + 1)
    with pytest.raises(ValueError, match="shape"):
        fm.eulerian_loss(ExactMap(), G.velocity, x, s[:3], t)
    with pytest.raises(ValueError, match="s <= u <= t"):
        fm.progressive_flow_map_loss(ExactMap(), x, t, u, s + 0.0 * t)
    with pytest.raises(ValueError, match="schedule"):
        fm.time_schedule(2, "geometric")
    with pytest.raises(ValueError, match="increasing"):
        fm.time_schedule(2, [0.0, 0.7, 0.5])
    with pytest.raises(ValueError, match="nfe"):
        fm.anyflow_sample(ExactMap(), x, 0)
    with pytest.raises(ValueError, match="velocity"):
        fm.diagonal_loss(G.flow_map, x)
    with pytest.raises(ValueError, match="k"):
        fm.anyflow_onpolicy_loss(ExactMap(), G.velocity, x, 2, 2)


def test_sample_pairs_shares():
    torch.manual_seed(0)
    s, t = fm.sample_pairs(20_000, p_endpoints=0.25, p_from_noise=0.25)
    assert (s <= t).all() and s.min() >= 0 and t.max() <= 1
    ends = ((s == 0) & (t == 1)).float().mean()
    assert abs(float(ends) - 0.25) < 0.02
    assert abs(float((s == 0).float().mean()) - 0.5) < 0.02


# ------------------------------------------------------------------ recipes (smoke)
@pytest.fixture(scope="module")
def tiny_exp():
    from distill_lab.toy2d.experiment import Toy2D
    sc = Scale("ci", teacher_steps=30, width=32, depth=2, batch=64, student_steps=10, eval_n=256,
               n_proj=16, device="cpu")
    return Toy2D("checkerboard", scale=sc, cache=False, progress=False)


@pytest.mark.parametrize("name", ["lagrangian", "lsd_self", "eulerian", "esd_self", "progressive_flow_map", "anyflow"])
def test_recipes_smoke(tiny_exp, name):
    from distill_lab.core.registry import get_recipe
    r = get_recipe(name)
    assert r.nfes == ((1, 2, 4, 8) if name == "anyflow" else (1, 2, 4))
    student = r.train(tiny_exp, steps=4)
    assert "loss" in student.history
    for nfe in r.nfes:
        out = tiny_exp.evaluate(student.sample, nfe)
        assert out["ratio"] > 0
    with pytest.raises(ValueError, match="unknown option"):
        r.train(tiny_exp, steps=1, learning_rate=1.0)
    if name == "anyflow":  # the on-policy stage by the teacher's ODE runs too; a misspelt kind is refused
        assert "loss" in r.train(tiny_exp, steps=4, onpolicy="teacher").history
        with pytest.raises(ValueError, match="'dmd'"):
            r.train(tiny_exp, steps=1, onpolicy="kl")


@pytest.mark.parametrize("name, loss_name, self_distilled", [
    ("lsd_self", "lagrangian_loss", True), ("esd_self", "eulerian_loss", True),
    ("lagrangian", "lagrangian_loss", False), ("eulerian", "eulerian_loss", False)])
def test_self_distillation_uses_the_maps_own_diagonal_and_distillation_the_teacher(tiny_exp, monkeypatch, name,
                                                                                    loss_name, self_distilled):
    """LSD and ESD take the tangent from the student's own diagonal V(x, s, s); LMD and EMD from the teacher.
    A swapped velocity argument (the teacher in ESD, the map in EMD) fails here."""
    from distill_lab.core.registry import get_recipe

    seen = []
    real = getattr(fm, loss_name)

    def spy(flow_map, velocity, x, s, t):
        seen.append((flow_map, velocity))
        return real(flow_map, velocity, x, s, t)

    monkeypatch.setattr(fm, loss_name, spy)
    student = get_recipe(name).train(tiny_exp, steps=2)
    assert len(seen) == 2
    for flow_map, velocity in seen:
        assert flow_map is student
        if self_distilled:
            assert getattr(velocity, "__self__", None) is student and velocity.__func__ is type(student).velocity
        else:
            assert velocity == tiny_exp.velocity
