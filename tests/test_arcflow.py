"""ArcFlow: the closed-form arc against a fine numerical integration, the loss at an exact and a
perturbed arc, the student's warm start, and the recipe end to end on a tiny experiment."""

import pytest
import torch

from distill_lab.core.scale import Scale
from distill_lab.methods.step import arcflow as af
from distill_lab.nets.mlp import TimeMLP


def _mixture(B=16, K=4, shape=(2,), seed=0, rate_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(B, K, *shape, generator=g)
    logits = torch.randn(B, K, generator=g)
    rates = torch.randn(B, K, generator=g) * rate_scale
    rates[:, 0] = 0.0
    rates[:2, 1] = 1e-6  # near zero, where (e^z - 1)/z needs its series
    return means, logits, rates


@pytest.mark.parametrize("shape", [(2,), (3, 4, 4)])
def test_closed_form_arc_matches_a_fine_numerical_integration(shape):
    means, logits, rates = _mixture(shape=shape)
    tau = torch.rand(means.shape[0], generator=torch.Generator().manual_seed(1)) * 1.5
    n = 4000  # composite Simpson on [0, tau]
    s = torch.linspace(0, 1, n + 1)
    w = torch.ones(n + 1)
    w[1:-1:2], w[2:-1:2] = 4, 2
    total = sum(w[i] * af.arc_velocity(means, logits, rates, s[i] * tau) for i in range(n + 1))
    numeric = total * (tau / (3 * n)).reshape(-1, *([1] * len(shape)))
    exact = af.arc_displacement(means, logits, rates, tau)
    assert torch.allclose(exact, numeric, atol=1e-5, rtol=1e-5)
    # the derivative of the displacement is the velocity (autograd on tau)
    t = tau.clone().requires_grad_(True)
    d = af.arc_displacement(means, logits, rates, t)
    grad = torch.autograd.grad(d.sum(), t)[0]
    assert torch.allclose(grad, af.arc_velocity(means, logits, rates, tau).reshape(len(tau), -1).sum(1), atol=1e-4)


def test_one_constant_component_is_an_euler_step_and_bad_shapes_are_refused():
    m = torch.randn(5, 1, 2)
    zero = torch.zeros(5, 1)
    assert torch.allclose(af.arc_displacement(m, zero, zero, 0.3), 0.3 * m[:, 0])
    assert torch.allclose(af.arc_velocity(m, zero, zero, 0.7), m[:, 0])
    # a growing component bends the step outwards, a decaying one inwards (the sign of the rate matters)
    m2 = torch.ones(1, 1, 2)
    up = af.arc_displacement(m2, torch.zeros(1, 1), torch.full((1, 1), 2.0), 1.0)
    down = af.arc_displacement(m2, torch.zeros(1, 1), torch.full((1, 1), -2.0), 1.0)
    assert torch.allclose(up, torch.full((1, 2), (torch.e ** 2 - 1) / 2))
    assert torch.allclose(down, torch.full((1, 2), (1 - torch.e ** -2) / 2))
    with pytest.raises(ValueError, match=r"\[B, K"):
        af.arc_displacement(torch.randn(5, 2), zero, zero, 0.3)
    with pytest.raises(ValueError, match="logits and rates"):
        af.arc_displacement(m, torch.zeros(5, 2), zero, 0.3)


class FixedArc:
    """A "student" whose mixture is fixed per sample: the teacher path it follows is its own arc."""

    def __init__(self, mix):
        self.mix = mix

    def mixture(self, x, t):
        return self.mix


def _arc_path(mix, x0, G):
    return torch.stack([x0 + af.arc_displacement(*mix, j / G) for j in range(G + 1)])


def test_arcflow_loss_vanishes_on_the_students_own_arc_and_not_on_a_perturbed_one():
    B, G = 16, 8
    mix = _mixture(B=B, rate_scale=1.0)
    x0 = torch.randn(B, 2)
    path = _arc_path(mix, x0, G)
    start, stop = torch.zeros(B, dtype=torch.long), torch.full((B,), G)
    loss, info = af.arcflow_loss(FixedArc(mix), path, start, stop, inner=3)
    assert float(loss) < 1e-10 and float(info["end"]) < 1e-10
    # a flipped rate, or a straight chord to the same end, no longer follows the path inside the step
    means, logits, rates = mix
    flipped, _ = af.arcflow_loss(FixedArc((means, logits, -rates)), path, start, stop, inner=3)
    assert float(flipped) > 1e-3
    # the loss is the mean over the batch of the summed squared error, halved between end and inside
    shift = (means, logits, rates)
    p2 = path.clone()
    p2[G] += torch.tensor([0.3, 0.4])  # end off by 0.5 for every sample
    l2, i2 = af.arcflow_loss(FixedArc(shift), p2, start, stop, inner=0)
    assert float(l2) == pytest.approx(0.25, rel=1e-5) and float(i2["end"]) == pytest.approx(0.25, rel=1e-5)
    # a later step starts from the teacher's state at its start
    l3, _ = af.arcflow_loss(FixedArc(mix), _arc_path(mix, x0, G), torch.full((B,), 0), torch.full((B,), G // 2))
    assert float(l3) < 1e-10
    with pytest.raises(ValueError, match="grid indices"):
        af.arcflow_loss(FixedArc(mix), path, stop, start)


def test_student_starts_as_the_teachers_euler_step_and_k1_is_a_straight_step():
    torch.manual_seed(0)
    base = TimeMLP(2, 32, 2)
    x = torch.randn(8, 2)
    for k in (1, 4):
        st = af.ArcFlowStudent(base, k=k)
        means, logits, rates = st.mixture(x, 0.25)
        assert means.shape == (8, k, 2) and rates.shape == (8, k) and torch.all(rates == 0)
        assert torch.allclose(st.step(x, 0.25, 0.5), x + 0.5 * base(x, torch.full((8,), 0.25)), atol=1e-6)
    frozen = af.ArcFlowStudent(TimeMLP(2, 32, 2), k=3, train_base=False)
    trainable = [n for n, p in frozen.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") for n in trainable)
    with pytest.raises(ValueError, match="at least one component"):
        af.ArcFlowStudent(base, k=0)


@pytest.fixture(scope="module")
def tiny_exp():
    from distill_lab.toy2d.experiment import Toy2D
    sc = Scale("ci", teacher_steps=30, width=32, depth=2, batch=64, student_steps=10, eval_n=256,
               n_proj=16, device="cpu")
    return Toy2D("checkerboard", scale=sc, cache=False, progress=False)


def test_teacher_paths_are_the_reference_solver_on_a_grid(tiny_exp):
    from distill_lab.core.flows import sample_ode
    torch.manual_seed(3)
    path = af.teacher_paths(tiny_exp, 10, grid=8)
    torch.manual_seed(3)
    z = tiny_exp.noise_batch(10)
    assert path.shape == (9, 10, 2) and torch.equal(path[0], z)
    assert torch.allclose(path[-1], sample_ode(tiny_exp.velocity, z, 16, "midpoint"), atol=1e-6)


def test_arcflow_recipe_trains_and_samples_at_one_and_two_steps(tiny_exp):
    from distill_lab.core.registry import get_recipe
    r = get_recipe("arcflow")
    st = r.train(tiny_exp, steps=30, pool=256, grid=8, lr=3e-3)
    assert st.history["loss"][-1] < st.history["loss"][0]
    for nfe in r.nfes:
        assert tiny_exp.evaluate(st.sample, nfe)["ratio"] > 0
    assert r.train(tiny_exp, steps=2, pool=64, grid=8, k=1).k == 1
    with pytest.raises(ValueError, match="unknown option"):
        r.train(tiny_exp, steps=1, components=2)
    with pytest.raises(ValueError, match="end on the teacher's grid"):
        r.train(tiny_exp, steps=1, grid=9)


def test_path_error_is_zero_on_the_own_arc_and_sees_a_straight_chord():
    B, G = 12, 8
    mix = _mixture(B=B, rate_scale=1.5)
    x0 = torch.randn(B, 2)
    path = _arc_path(mix, x0, G)
    exact = af.path_error(FixedArc(mix), path, nfe=1)
    assert exact["mid"] < 1e-6 and exact["end"] < 1e-6
    # the straight chord to the same end: exact at the end, off in the middle
    means, logits, rates = mix
    chord = (path[G] - x0)[:, None]
    straight = af.path_error(FixedArc((chord, torch.zeros(B, 1), torch.zeros(B, 1))), path, nfe=1)
    assert straight["end"] < 1e-5 and straight["mid"] > 1e-2
    assert straight["mid_sq"].shape == (B,) and straight["mid"] == pytest.approx(float(straight["mid_sq"].mean().sqrt()))
    two = af.path_error(FixedArc(mix), _arc_path(mix, x0, G), nfe=2)  # both halves of the arc, from the arc's own states
    assert two["mid_sq"].shape == (2 * B,)
    with pytest.raises(ValueError, match="middle"):
        af.path_error(FixedArc(mix), path, nfe=3)
