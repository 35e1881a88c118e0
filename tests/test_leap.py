"""VideoScene's leap flow distillation on the toy: the leap state, the warm start, the two losses'
reductions and stop-gradients, the policy's choice and the evaluation's wiring."""

import pytest
import torch

from distill_lab.core.scale import Scale
from distill_lab.methods.step import leap
from distill_lab.nets.mlp import TimeMLP


def test_leap_state_runs_from_noise_to_the_input():
    c, z = torch.randn(8, 2), torch.randn(8, 2)
    assert torch.equal(leap.leap_start(c, 0.0, z), z) and torch.equal(leap.leap_start(c, 1.0, z), c)
    assert torch.allclose(leap.leap_start(c, 0.25, z), 0.75 * z + 0.25 * c)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        leap.leap_start(c, 1.5, z)
    x = torch.zeros(1000, 2)
    c2, s = leap.coarse_inputs(x, 0.5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (1000,) and 0 <= float(s.min()) and float(s.max()) <= 0.5
    assert float((c2.norm(dim=1) / s).mean()) == pytest.approx((torch.pi / 2) ** 0.5, rel=0.1)  # E|eps| in 2D


def test_generator_starts_as_the_teachers_euler_jump_and_the_loss_reduces_per_sample():
    torch.manual_seed(0)
    net = TimeMLP(2, 16, 2)
    gen = leap.LeapGenerator(net)
    x, tau = torch.randn(6, 2), torch.full((6,), 0.7)
    assert torch.allclose(gen(x, tau), x + 0.3 * net(x, tau))
    target = gen(x, tau).detach()
    assert float(leap.leap_distill_loss(gen, x, tau, target).detach()) == 0.0
    off = target + torch.tensor([0.3, 0.4])  # every sample 0.5 away: the loss is 0.25 (sum over coordinates)
    loss = leap.leap_distill_loss(gen, x, tau, off.requires_grad_(True))
    assert float(loss.detach()) == pytest.approx(0.25, rel=1e-5)
    loss.backward()
    assert off.grad is None and all(p.grad is not None for p in gen.parameters())
    with pytest.raises(ValueError, match="shape"):
        leap.leap_distill_loss(gen, x, tau, target[:3])


def test_policy_regresses_the_errors_and_leaps_at_the_lowest():
    pred = torch.randn(5, 3, requires_grad=True)
    err = torch.rand(5, 3, requires_grad=True)
    loss = leap.policy_loss(pred, err)
    loss.backward()
    assert err.grad is None and float(loss.detach()) == pytest.approx(float((pred - err).detach().pow(2).mean()))
    pol = leap.LeapPolicy((0.5, 0.7, 0.9))
    with torch.no_grad():
        pol.net[-1].weight.zero_()
        pol.net[-1].bias.copy_(torch.tensor([0.3, 0.1, 0.2]))
    assert torch.allclose(pol.choose(torch.randn(4, 2)), torch.full((4,), 0.7))
    with pytest.raises(ValueError, match="at least two"):
        leap.LeapPolicy((0.5,))


@pytest.fixture(scope="module")
def tiny_exp():
    from distill_lab.toy2d.experiment import Toy2D
    sc = Scale("ci", teacher_steps=30, width=32, depth=2, batch=64, student_steps=10, eval_n=256,
               n_proj=16, device="cpu")
    return Toy2D("checkerboard", scale=sc, cache=False, progress=False)


def test_train_and_evaluate_leap_end_to_end(tiny_exp):
    gen, pol = leap.train_leap(tiny_exp, steps=20, policy_steps=20, pool=128, teacher_nfe=8)
    assert gen.history["loss"][-1] < gen.history["loss"][0] and pol.history["steps"] == 20
    res = leap.evaluate_leap(tiny_exp, gen, pol, n=256)
    assert set(res) == {"tau=0.5", "tau=0.7", "tau=0.85", "tau=0.95", "policy", "coarse input"}
    assert sum(res["policy"]["chosen"].values()) == pytest.approx(1.0)
    # a policy forced to one leap time reproduces that time's figures exactly (same noise, same inputs)
    with torch.no_grad():
        pol.net[-1].weight.zero_()
        pol.net[-1].bias.copy_(torch.tensor([1.0, 1.0, 0.0, 1.0]))
    forced = leap.evaluate_leap(tiny_exp, gen, pol, n=256)
    assert torch.equal(forced["policy"]["sq"], forced["tau=0.85"]["sq"])
    assert forced["policy"]["ratio"] == pytest.approx(forced["tau=0.85"]["ratio"])
    with pytest.raises(ValueError, match="strictly between"):
        leap.train_leap(tiny_exp, leap_times=(0.5, 1.0), steps=1)
