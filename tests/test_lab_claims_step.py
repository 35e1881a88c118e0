"""Identities that labs 00 to 03 state in words, checked here instead of in the notebooks.

A notebook's closing table holds only claims about what its run measured; what holds by construction
(a warm-started student *is* the teacher's one Euler step, one exact Euler step lands on the data mean)
is a unit test.
"""

import pytest
import torch

from distill_lab.core.flows import GaussianLinearFlow, denoise, sample_ode
from distill_lab.core.scale import Scale
from distill_lab.methods.step.students import ConsistencyFunction, OneStepGenerator
from distill_lab.toy2d.experiment import Toy2D


@pytest.fixture(scope="module")
def tiny_exp():
    sc = Scale("ci", teacher_steps=30, width=32, depth=2, batch=64, student_steps=10, eval_n=256,
               n_proj=16, device="cpu")
    return Toy2D("checkerboard", scale=sc, cache=False, progress=False)


@pytest.mark.parametrize("shape", [(2,), (3, 4, 4)])
def test_one_euler_step_of_the_exact_velocity_lands_on_the_data_mean(shape):
    """Labs 00 and 01: at t = 0 the point carries no information about its data point, so the exact
    velocity is v(z, 0) = E[x1] - z and one Euler step sends every noise to E[x1] (the blur)."""
    flow = GaussianLinearFlow(mu=1.5, sigma=0.4)
    z = torch.randn(64, *shape, generator=torch.Generator().manual_seed(0))
    mean = torch.full_like(z, 1.5)
    torch.testing.assert_close(sample_ode(flow.velocity, z, 1, "euler"), mean)
    torch.testing.assert_close(denoise(flow.velocity, z, torch.zeros(64)), mean)
    # two steps already depend on z: the blur is a one-step effect
    assert (sample_ode(flow.velocity, z, 2, "euler") - mean).abs().max() > 0.1


def test_trajectory_student_starts_as_the_teachers_one_euler_step(tiny_exp):
    """Labs 00 and 02: G(z) = z + v(z, 0) built on a copy of the teacher is its 1-NFE Euler sampler."""
    z = tiny_exp.eval_noise[:128]
    with torch.no_grad():
        start = OneStepGenerator(tiny_exp.student_net())(z)
        torch.testing.assert_close(start, sample_ode(tiny_exp.velocity, z, 1, "euler"))


def test_consistency_student_starts_as_the_teachers_euler_jump_to_data(tiny_exp):
    """Lab 03: f(x, t) = x + (1 - t) F(x, t) on a copy of the teacher is its one Euler step from t to 1
    (the lab's 'starting point' curve), keeps the boundary condition f(x, 1) = x, and at t = 0 is the
    teacher's 1-NFE sample."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 2, generator=g)
    t = torch.rand(128, generator=g)
    f = ConsistencyFunction(tiny_exp.student_net())
    with torch.no_grad():
        torch.testing.assert_close(f(x, t), x + (1 - t)[:, None] * tiny_exp.velocity(x, t))
        torch.testing.assert_close(f(x, torch.ones(128)), x)
        torch.testing.assert_close(f(x, torch.zeros(128)), sample_ode(tiny_exp.velocity, x, 1, "euler"))
        torch.testing.assert_close(f.sample(x, 1), f(x, torch.zeros(128)))
