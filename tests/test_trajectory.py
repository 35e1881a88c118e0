"""Tests for trajectory (direct) and progressive distillation: exactness on the analytic flow,
stop-gradients, shape-genericity, and short recipe smoke runs."""

import pytest
import torch

from distill_lab.core.flows import GaussianLinearFlow, expand_t, teacher_ode
from distill_lab.methods.step.trajectory import (ProgressiveStudent, progressive_loss, progressive_target,
                                                 train_progressive, train_trajectory, trajectory_loss)
from distill_lab.nets.mlp import TimeMLP

SHAPES = [(2,), (3, 8, 8)]


@pytest.fixture
def glf():
    return GaussianLinearFlow(mu=1.5, sigma=0.5)


# ----------------------------------------------------------------------------- trajectory_loss
@pytest.mark.parametrize("shape", SHAPES)
def test_trajectory_loss_vanishes_at_exact_map(glf, shape):
    torch.manual_seed(0)
    z = torch.randn(64, *shape)
    teacher_x = teacher_ode(glf.velocity, z, nfe=64, method="midpoint")  # the teacher's ODE endpoint
    exact = glf.flow_map(z, torch.zeros(64), torch.ones(64))  # X_{0,1}(z)
    loss, info = trajectory_loss(exact, teacher_x)
    assert loss.item() < 1e-8
    assert set(info) == {"loss", "coupled"}
    perturbed, _ = trajectory_loss(exact + 0.1 * z, teacher_x)
    assert perturbed.item() > 1e-3
    # the perturbation is 0.1 z, so the loss is close to 0.01 E[z^2]
    assert perturbed.item() == pytest.approx(0.01 * z.pow(2).mean().item(), rel=0.05)


def test_trajectory_loss_stops_gradient_into_teacher():
    torch.manual_seed(0)
    student_x = torch.randn(16, 2, requires_grad=True)
    leaf = torch.randn(16, 2, requires_grad=True)
    teacher_x = 2.0 * leaf  # a target that still has a graph back to `leaf`
    loss, _ = trajectory_loss(student_x, teacher_x)
    loss.backward()
    assert student_x.grad is not None
    # analytic gradient of mean squared error: 2 (G - T) / numel
    torch.testing.assert_close(student_x.grad, 2 * (student_x - teacher_x).detach() / student_x.numel())
    assert leaf.grad is None


def test_trajectory_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        trajectory_loss(torch.zeros(4, 2), torch.zeros(5, 2))


# ----------------------------------------------------------------------------- progressive_target
def const_velocity(c):
    """A flow whose Euler steps are exact: ``v(x, t) = c``."""
    return lambda x, t: c.expand_as(x)


@pytest.mark.parametrize("shape", SHAPES)
def test_progressive_target_equals_two_teacher_steps(glf, shape):
    torch.manual_seed(1)
    B = 32
    x = torch.randn(B, *shape)
    t = torch.rand(B) * 0.5
    h = torch.rand(B) * 0.2 + 0.01
    v_target, x_end = progressive_target(glf.velocity, x, t, h)
    he = expand_t(h, x)
    x_mid = x + he * glf.velocity(x, t)
    two_steps = x_mid + he * glf.velocity(x_mid, t + h)
    torch.testing.assert_close(x_end, two_steps)
    torch.testing.assert_close(x + 2 * he * v_target, two_steps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_progressive_loss_vanishes_when_euler_is_exact(shape):
    torch.manual_seed(2)
    B = 32
    c = torch.randn(1, *shape)
    v = const_velocity(c)
    x = torch.randn(B, *shape)
    t = torch.rand(B) * 0.5
    h = torch.full((B,), 0.125)
    loss, info = progressive_loss(v, v, x, t, h)
    assert loss.item() < 1e-10
    assert info["endpoint_err"].item() < 1e-5
    perturbed = lambda x, t: v(x, t) + 0.1 * x  # noqa: E731
    loss_p, info_p = progressive_loss(perturbed, v, x, t, h)
    assert loss_p.item() > 1e-3
    assert info_p["endpoint_err"].item() > 1e-3


def test_progressive_target_converges_to_exact_flow(glf):
    """On the analytic flow, the two-Euler-step target tends to the exact secant
    (X_{t,t+2h}(x) - x) / (2h) at first order in h."""
    torch.manual_seed(3)
    B = 256
    t = torch.full((B,), 0.3)
    x = glf.sample_marginal(B, t)
    errs = []
    for h in (0.04, 0.02, 0.01):
        v_target, _ = progressive_target(glf.velocity, x, t, h)
        exact = (glf.flow_map(x, t, t + 2 * h) - x) / (2 * h)
        errs.append((v_target - exact).abs().mean().item())
    assert errs[0] > 1e-4
    assert 1.6 < errs[0] / errs[1] < 2.5 and 1.6 < errs[1] / errs[2] < 2.5


@pytest.mark.parametrize("shape", SHAPES)
def test_progressive_loss_gradient_reaches_student_only(shape):
    torch.manual_seed(4)
    dim = int(torch.tensor(shape).prod())
    student, teacher = TimeMLP(dim=dim, width=32, depth=2), TimeMLP(dim=dim, width=32, depth=2)
    B = 8
    x = torch.randn(B, *shape)
    t = torch.rand(B) * 0.5
    loss, _ = progressive_loss(student, teacher, x, t, 0.1)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_progressive_loss_student_gradient_is_analytic():
    """With the student's output a free tensor, the gradient is 2 (v_S - v*) / numel."""
    torch.manual_seed(5)
    c = torch.randn(1, 2)
    x = torch.randn(8, 2)
    out = torch.randn(8, 2, requires_grad=True)
    loss, _ = progressive_loss(lambda x, t: out, const_velocity(c), x, torch.zeros(8), 0.25)
    loss.backward()
    torch.testing.assert_close(out.grad, 2 * (out - c).detach() / out.numel())


def test_progressive_bad_times():
    v = const_velocity(torch.zeros(1, 2))
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="positive"):
        progressive_target(v, x, torch.zeros(4), 0.0)
    with pytest.raises(ValueError, match="t \\+ 2h"):
        progressive_target(v, x, torch.full((4,), 0.9), 0.1)
    with pytest.raises(ValueError, match="shape"):
        progressive_target(v, x, torch.zeros(3), 0.1)


# ----------------------------------------------------------------------------- recipes
class TinyExp:
    """The experiment interface on the analytic Gaussian flow, with a small MLP teacher."""

    def __init__(self):
        from distill_lab.core.scale import get_scale
        from distill_lab.core.train import fit

        self.scale = get_scale("ci", device="cpu")
        self.device = "cpu"
        self.progress = False
        self.glf = GaussianLinearFlow(1.5, 0.5)
        self.teacher = TimeMLP(2, 32, 2, 1)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._fit = fit

    def velocity(self, x, t):
        return self.teacher(x, t)

    def student_net(self, n_times=1):
        net = TimeMLP.from_net(self.teacher, n_times)
        for p in net.parameters():
            p.requires_grad_(True)
        return net.train()

    def noise_batch(self, n=None):
        return torch.randn(n or 64, 2)

    def data_batch(self, n=None):
        return self.glf.sample_data(n or 64)

    @torch.no_grad()
    def teacher_sample(self, z):
        return teacher_ode(self.velocity, z, 8, "midpoint")

    def fit(self, step, n_steps, desc):
        return self._fit(step, n_steps, desc=desc, progress=False)


@pytest.fixture
def tiny_exp():
    torch.manual_seed(0)
    return TinyExp()


def test_trajectory_recipe_smoke(tiny_exp):
    exp = tiny_exp
    student = train_trajectory(exp, steps=5, pool=128, batch=32)
    z = torch.randn(10, 2)
    assert student.sample(z, 1).shape == (10, 2)
    assert len(student.history["loss"]) >= 1
    with pytest.raises(ValueError, match="unknown overrides"):
        train_trajectory(exp, steps=5, bogus=1)


def test_progressive_recipe_smoke(tiny_exp):
    exp = tiny_exp
    student = train_progressive(exp, steps=12, start=8, batch=32)
    assert isinstance(student, ProgressiveStudent)
    assert student.nfes == [1, 2, 4]
    z = torch.randn(10, 2)
    for n in (1, 2, 4):
        assert torch.isfinite(student.sample(z, n)).all()
    with pytest.raises(ValueError, match="available"):
        student.sample(z, 3)
    # each round's student is its own copy: the rounds' nets differ after training
    assert not torch.equal(student.nets["1"].net[0].weight, student.nets["4"].net[0].weight)
    with pytest.raises(ValueError, match="power of two"):
        train_progressive(exp, steps=5, start=6)
