"""Identities that labs 04 (flow maps), 05 (distribution matching) and 06 (reward tilting) used to assert in
their last cell, and the agreement of their exercises' solutions with the package functions the labs run.

They hold by construction (a residual that vanishes on the exact map, a tilt that is exact for a Gaussian),
so they are unit tests here, not claims about what a lab measured.
"""

import torch

from distill_lab.core.flows import GaussianLinearFlow, expand_t
from distill_lab.exercises import step_advanced as sa
from distill_lab.methods.step import dmd
from distill_lab.methods.step import flow_map as fm
from distill_lab.methods.step import reward as R


def test_lab04_every_residual_vanishes_on_the_exact_gaussian_map_and_not_on_a_perturbed_one():
    torch.manual_seed(0)
    gauss = GaussianLinearFlow(mu=1.5, sigma=0.5)
    off = lambda x, s, t: gauss.flow_map(x, s, t) + 0.1 * expand_t((t - s) ** 2, x) * x  # noqa: E731
    x = torch.randn(512, 2)
    s = torch.rand(512) * 0.3
    t = 0.7 + 0.3 * torch.rand(512)
    u = (s + t) / 2
    for f_loss in (lambda f: fm.lagrangian_loss(f, gauss.velocity, x, s, t),
                   lambda f: fm.eulerian_loss(f, gauss.velocity, x, s, t),
                   lambda f: fm.progressive_flow_map_loss(f, x, s, u, t)):
        exact, bad = float(f_loss(gauss.flow_map)[0]), float(f_loss(off)[0])
        assert bad > 1e-3
        assert exact < 1e-6 * bad


def test_lab04_exercise_solution_squared_is_the_packages_lagrangian_loss():
    torch.manual_seed(1)
    gauss = GaussianLinearFlow(mu=torch.tensor([1.0, -0.5]), sigma=0.7)
    off = lambda x, s, t: gauss.flow_map(x, s, t) + 0.2 * expand_t((t - s) ** 2, x) * x.sin()  # noqa: E731
    x, s, t = torch.randn(64, 2), 0.4 * torch.rand(64), 0.5 + 0.5 * torch.rand(64)
    res = sa._lagrangian_residual(off, gauss.velocity, x, s, t)
    loss, _ = fm.lagrangian_loss(off, gauss.velocity, x, s, t)
    torch.testing.assert_close(res.pow(2).mean(), loss)


def test_lab05_exercise_solution_has_the_gradient_of_the_packages_dmd_loss():
    torch.manual_seed(2)
    real, fake = GaussianLinearFlow(1.0, 0.5), GaussianLinearFlow(-0.5, 0.8)
    x0 = torch.randn(32, 3, 4, 4)
    t, noise = 0.05 + 0.9 * torch.rand(32), torch.randn(32, 3, 4, 4)
    grads = []
    for f in (sa._dmd_loss, lambda *a: dmd.dmd_loss(*a[:3], t=a[3], noise=a[4])[0]):
        x = x0.clone().requires_grad_(True)
        f(x, real.velocity, fake.velocity, t, noise).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_lab06_the_tilt_of_a_gaussian_by_a_linear_reward_is_the_shifted_gaussians_velocity():
    torch.manual_seed(0)
    a, beta, mu, sig = torch.tensor([0.8, -0.4]), 0.5, torch.tensor([1.0, 0.0]), 0.6
    base = GaussianLinearFlow(mu, sig)
    shifted = GaussianLinearFlow(mu + sig ** 2 * a / beta, sig)
    xs, ts = 2 * torch.randn(2000, 2), 0.02 + 0.97 * torch.rand(2000)
    v_tilt = R.tilted_velocity(base.velocity, lambda y: R.reward_linear(y, a), beta)
    assert float((v_tilt(xs, ts) - shifted.velocity(xs, ts)).abs().max()) < 1e-4
    # the exercise's solution is the same function
    mine = sa._tilted_velocity(base.velocity, lambda y: R.reward_disk(y), 0.7)
    theirs = R.tilted_velocity(base.velocity, lambda y: R.reward_disk(y), 0.7)
    torch.testing.assert_close(mine(xs, ts), theirs(xs, ts))
