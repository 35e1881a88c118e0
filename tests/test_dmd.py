"""Tests for distribution-matching distillation (DMD, DMD2's GAN, ADM, CDM)."""

import pytest
import torch

from distill_lab.core.flows import GaussianLinearFlow
from distill_lab.methods.step.dmd import (Discriminator, adm_discriminator_loss, adm_generator_loss, cdm_loss,
                                          continuous_schedule, dmd_loss, dmd_regression_loss, fake_score_loss,
                                          frozen, gan_discriminator_loss, gan_generator_loss, student_rollout)
from distill_lab.methods.step.students import OneStepGenerator
from distill_lab.nets.mlp import TimeMLP

SHAPES = [(2,), (3, 8, 8)]


def _dim(shape):
    return int(torch.tensor(shape).prod())


def _gauss_denoise(mu, sigma, xt, t):
    """Closed-form E[x1 | x_t] for N(0,I) -> N(mu, sigma^2 I): mu + t sigma^2 / a^2 (x_t - t mu)."""
    te = t.view(-1, *([1] * (xt.dim() - 1)))
    a2 = (1 - te) ** 2 + te ** 2 * sigma ** 2
    return mu + te * sigma ** 2 / a2 * (xt - te * mu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("shape", SHAPES)
def test_dmd_gradient_vanishes_when_fake_equals_real(shape):
    flow = GaussianLinearFlow(1.5, 0.5)
    x = flow.sample_data(16, shape).requires_grad_(True)
    loss, info = dmd_loss(x, flow.velocity, flow.velocity)
    loss.backward()
    assert float(loss.detach()) < 1e-12
    assert x.grad.abs().max() < 1e-8


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_dmd_gradient_matches_closed_form(shape, normalize):
    real, fake = GaussianLinearFlow(1.5, 0.5), GaussianLinearFlow(0.5, 0.8)
    x = fake.sample_data(16, shape).requires_grad_(True)
    t = torch.rand(16) * 0.9 + 0.05
    eps = torch.randn_like(x)
    loss, info = dmd_loss(x, real.velocity, fake.velocity, t=t, noise=eps, normalize=normalize)
    loss.backward()
    te = t.view(-1, *([1] * len(shape)))
    xt = (1 - te) * eps + te * x.detach()
    x_real, x_fake = _gauss_denoise(1.5, 0.5, xt, t), _gauss_denoise(0.5, 0.8, xt, t)
    g = x_fake - x_real
    if normalize:
        g = g / (x.detach() - x_real).abs().flatten(1).mean(1).view_as(te)
    assert g.abs().mean() > 0.05  # the two distributions differ: a clearly nonzero direction
    torch.testing.assert_close(x.grad * x.numel(), g, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(info["grad"], g, rtol=1e-4, atol=1e-5)


def test_dmd_loss_stops_gradient_to_real_and_fake_nets():
    real, fake = TimeMLP(2, 32, 2), TimeMLP(2, 32, 2)
    gen = OneStepGenerator(TimeMLP(2, 32, 2))
    x = gen(torch.randn(32, 2))
    loss, _ = dmd_loss(x, real, fake)
    loss.backward()
    assert all(p.grad is None for p in real.parameters())
    assert all(p.grad is None for p in fake.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


@pytest.mark.parametrize("shape", SHAPES)
def test_fake_score_loss_gives_no_gradient_to_generator(shape):
    d = _dim(shape)
    gen = OneStepGenerator(TimeMLP(d, 32, 2))
    fake = TimeMLP(d, 32, 2)
    x = gen(torch.randn(8, *shape))
    loss, _ = fake_score_loss(fake, x)
    loss.backward()
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is not None for p in fake.parameters())


@pytest.mark.parametrize("shape", SHAPES)
def test_fake_score_loss_minimised_at_exact_velocity(shape):
    flow = GaussianLinearFlow(1.5, 0.5)
    x = flow.sample_data(256, shape)
    eps, t = torch.randn_like(x), torch.rand(256)
    exact, _ = fake_score_loss(flow.velocity, x, t=t, noise=eps)
    up, _ = fake_score_loss(lambda y, s: flow.velocity(y, s) + 0.3, x, t=t, noise=eps)
    down, _ = fake_score_loss(lambda y, s: flow.velocity(y, s) - 0.3, x, t=t, noise=eps)
    # flow matching's minimum is the conditional variance, not 0; with the same draws the
    # cross terms cancel and a constant offset c costs exactly c^2 on average
    assert 0.5 * (float(up) + float(down)) - float(exact) == pytest.approx(0.09, rel=1e-4)
    assert min(float(up), float(down)) > float(exact)


def test_regression_loss_zero_at_reference():
    x = torch.randn(8, 3, 8, 8, requires_grad=True)
    loss, _ = dmd_regression_loss(x, x.detach().clone())
    assert float(loss.detach()) == 0.0
    loss2, _ = dmd_regression_loss(x, x.detach() + 0.1)
    assert float(loss2.detach()) == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_gan_losses_route_gradients(shape):
    d = _dim(shape)
    disc = Discriminator(d, 32, 2)
    gen = OneStepGenerator(TimeMLP(d, 32, 2))
    x = gen(torch.randn(8, *shape))
    real = torch.randn(8, *shape)
    ld, _ = gan_discriminator_loss(disc, x, real)
    ld.backward()
    assert all(p.grad is None for p in gen.parameters())  # discriminator step: generator untouched
    assert all(p.grad is not None for p in disc.parameters())
    disc.zero_grad(set_to_none=True)
    x = gen(torch.randn(8, *shape))
    with frozen(disc):
        lg, _ = gan_generator_loss(disc, x)
        lg.backward()
    assert all(p.grad is None for p in disc.parameters())  # generator step: disc frozen
    assert all(p.requires_grad for p in disc.parameters())  # and unfrozen afterwards
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


def test_gan_discriminator_loss_is_log4_for_a_blind_discriminator():
    disc = Discriminator(2, 16, 1)
    with torch.no_grad():
        disc.net[-1].weight.zero_()
        disc.net[-1].bias.zero_()
    ld, _ = gan_discriminator_loss(disc, torch.randn(8, 2), torch.randn(8, 2))
    assert float(ld.detach()) == pytest.approx(2 * torch.log(torch.tensor(2.0)).item(), abs=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_adm_losses_route_gradients(shape):
    d = _dim(shape)
    real, fake, disc = TimeMLP(d, 32, 2), TimeMLP(d, 32, 2), Discriminator(d, 32, 2)
    for p in real.parameters():
        p.requires_grad_(False)
    gen = OneStepGenerator(TimeMLP(d, 32, 2))
    x = gen(torch.randn(8, *shape))
    ld, _ = adm_discriminator_loss(disc, x, real, fake)
    ld.backward()
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is None for p in fake.parameters())
    assert all(p.grad is not None for p in disc.parameters())
    disc.zero_grad(set_to_none=True)
    x = gen(torch.randn(8, *shape))
    with frozen(disc, fake):
        lg, _ = adm_generator_loss(disc, x, real, fake)
        lg.backward()
    assert all(p.grad is None for p in list(disc.parameters()) + list(fake.parameters()))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


def test_adm_predictions_agree_when_fake_equals_real():
    from distill_lab.methods.step.dmd import adm_predictions
    flow = GaussianLinearFlow(1.5, 0.5)
    x = flow.sample_data(16, (3, 8, 8))
    t = torch.full((16,), 0.3)
    yr, yf = adm_predictions(x, flow.velocity, flow.velocity, t, t + 0.5)
    assert (yr - yf).abs().max() < 1e-6
    yr, yf = adm_predictions(x, flow.velocity, lambda y, s: flow.velocity(y, s) + 0.1, t, t + 0.5)
    torch.testing.assert_close(yf - yr, torch.full_like(yr, 0.05))


def test_continuous_schedule_and_rollout():
    times, k = continuous_schedule(64, 4)
    assert times.shape == (64, 5) and (times[:, 0] == 0).all() and (times[:, -1] == 1).all()
    assert (times.diff(dim=1) >= 0).all() and (k >= 0).all() and (k < 4).all()
    c = torch.tensor([0.7, -1.2])
    z = torch.randn(64, 2)
    x, s = student_rollout(lambda y, t: c.expand_as(y), z, times, k)
    assert torch.equal(x[k == 0], z[k == 0]) and (s[k == 0] == 0).all()
    assert (s > 0).any()
    # Euler steps of a constant velocity are exact: x = z + s c along any schedule
    torch.testing.assert_close(x, z + s[:, None] * c)


@pytest.mark.parametrize("shape", SHAPES)
def test_cdm_loss_vanishes_at_exact_student_and_flows_only_into_student(shape):
    flow = GaussianLinearFlow(1.5, 0.5)
    s = torch.rand(8) * 0.9
    x_s = flow.sample_marginal(8, s, shape)
    loss, info = cdm_loss(flow.velocity, x_s, s, flow.velocity, flow.velocity)
    assert float(loss) < 1e-12
    d = _dim(shape)
    student, real, fake = TimeMLP(d, 32, 2), TimeMLP(d, 32, 2), TimeMLP(d, 32, 2)
    loss, info = cdm_loss(student, x_s, s, real, fake)
    loss.backward()
    assert info["x_hat"].shape == x_s.shape
    assert all(p.grad is None for p in list(real.parameters()) + list(fake.parameters()))
    assert all(p.grad is not None for p in student.parameters())


def test_bad_inputs_raise_clear_errors():
    flow = GaussianLinearFlow()
    with pytest.raises(ValueError, match="shaped"):
        dmd_loss(torch.randn(4), flow.velocity, flow.velocity)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dmd_loss(torch.randn(4, 2), flow.velocity, flow.velocity, t=torch.ones(4))
    with pytest.raises(ValueError, match="noise"):
        dmd_loss(torch.randn(4, 2), flow.velocity, flow.velocity, noise=torch.randn(4, 3))
    with pytest.raises(ValueError, match="same shape"):
        gan_discriminator_loss(Discriminator(2), torch.randn(4, 2), torch.randn(5, 2))


@pytest.fixture(scope="module")
def tiny_exp():
    from distill_lab.core.scale import Scale
    from distill_lab.toy2d.experiment import Toy2D
    sc = Scale("ci", teacher_steps=50, width=32, depth=2, batch=64, student_steps=5, eval_n=256,
               n_proj=16, device="cpu")
    return Toy2D("8gaussians", scale=sc, cache=False, progress=False)


@pytest.mark.parametrize("name", ["dmd", "dmd2", "adm", "cdm"])
def test_recipes_smoke(tiny_exp, name):
    from distill_lab.core.registry import get_recipe
    rec = get_recipe(name)
    student = rec.train(tiny_exp, steps=3, batch=32, critic_updates=2)
    for nfe in rec.nfes:
        out = tiny_exp.evaluate(student.sample, nfe)
        assert out["value"] > 0 and out["ratio"] > 0
    assert len(student.history["loss"]) >= 1
    with pytest.raises(ValueError, match="unknown option"):
        rec.train(tiny_exp, steps=1, bogus=1)
