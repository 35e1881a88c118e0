"""The adversarial terms push the right way.

A GAN loss with its sign flipped, or a discriminator loss with real and fake swapped, still returns a
finite number and still routes gradients to the right parameters, so shape and routing tests pass it.
These tests look at the direction: a discriminator step on a separable toy separates real from fake
(real scored higher), and a generator step moves the samples towards what the discriminator calls
real. Each would fail on the flipped or swapped loss. The last tests check DMD's and CDM's
distribution-matching gradients, and the fake score's loss, against closed-form velocities.
"""

import pytest
import torch
from torch import nn

from distill_lab.methods.step.dmd import (Discriminator, adm_discriminator_loss, adm_generator_loss, cdm_loss,
                                          dmd_loss, fake_score_loss, frozen, gan_discriminator_loss,
                                          gan_generator_loss)


class LinearCritic(nn.Module):
    """``D(x, t) = k * sum(x)``: larger for samples with larger coordinates; ignores ``t``."""

    def __init__(self, k: float = 1.0):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(float(k)))

    def forward(self, x, t):
        return self.k * x.reshape(x.shape[0], -1).sum(1)


class ConstantVelocity(nn.Module):
    """``v(x, t) = c`` everywhere (a score model whose one Euler step moves every point by ``(s - t) c``)."""

    def __init__(self, c: float, dim: int = 2):
        super().__init__()
        self.c = c
        self.dim = dim
        self.w = nn.Parameter(torch.zeros(()))  # a parameter, so that frozen() has something to freeze

    def forward(self, x, t):
        return torch.full_like(x, self.c) + 0.0 * self.w


def _toy(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = 2.0 + 0.3 * torch.randn(n, 2, generator=g)
    fake = -2.0 + 0.3 * torch.randn(n, 2, generator=g)
    return real, fake


def _trained_discriminator(real, fake, steps=60):
    """A small discriminator after ``steps`` Adam steps of :func:`gan_discriminator_loss` (seed 0), and
    the last step's info."""
    torch.manual_seed(0)
    disc = Discriminator(2, 32, 2)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for _ in range(steps):
        loss, info = gan_discriminator_loss(disc, fake, real)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return disc, info


def test_gan_discriminator_loss_rewards_scoring_real_above_fake():
    """With a critic that already scores real far above fake, the loss is near 0; the same critic
    with the roles reversed pays about ``2 * 9 * k * d`` (softplus of large margins)."""
    real, fake = _toy()
    t = torch.full((real.shape[0],), 0.9)
    torch.manual_seed(0)
    good, _ = gan_discriminator_loss(LinearCritic(3.0), fake, real, t)
    torch.manual_seed(0)
    bad, _ = gan_discriminator_loss(LinearCritic(-3.0), fake, real, t)
    assert float(good) < 1e-3 < 10.0 < float(bad)


def test_a_discriminator_step_separates_real_from_fake():
    real, fake = _toy()
    disc, info = _trained_discriminator(real, fake)
    t = torch.full((real.shape[0],), 0.8)
    with torch.no_grad():
        d_real, d_fake = disc(real, t).mean(), disc(fake, t).mean()
    assert float(d_real) > float(d_fake) + 2.0
    assert info["d_real"] > info["d_fake"]


def test_a_generator_step_moves_samples_towards_what_the_critic_calls_real():
    """Non-saturating generator loss ``softplus(-D(x_t))``: its gradient on every sample points against
    the critic's "real" direction (here: larger coordinates), so descent raises the samples' score; a
    trained critic's score of the samples rises after a few steps."""
    real, fake = _toy()
    x = fake.clone().requires_grad_(True)
    critic = LinearCritic(1.0)
    torch.manual_seed(0)
    with frozen(critic):
        loss, _ = gan_generator_loss(critic, x)
        loss.backward()
    assert bool((x.grad < 0).all())  # every coordinate of every sample is pushed up
    assert critic.k.grad is None  # the critic stays out of the generator's step
    disc, _ = _trained_discriminator(real, fake)
    t = torch.full((real.shape[0],), 0.8)
    x = fake.clone().requires_grad_(True)
    gopt = torch.optim.SGD([x], lr=50.0)
    with frozen(disc):
        before = float(disc(x, t).mean())
        for _ in range(5):
            lg, _ = gan_generator_loss(disc, x)
            gopt.zero_grad()
            lg.backward()
            gopt.step()
        after = float(disc(x, t).mean())
    assert after > before and float(x.mean()) > float(fake.mean())


def test_adm_discriminator_prefers_the_teachers_predictions():
    """ADM's hinge loss: positives are the teacher's (real score's) predictions, negatives the fake
    score's. With the teacher stepping to larger coordinates and the fake score to smaller ones, a
    critic that scores larger coordinates higher pays little, the reversed critic much more."""
    torch.manual_seed(0)
    x = 0.5 * torch.randn(128, 2)
    real_v, fake_v = ConstantVelocity(+4.0), ConstantVelocity(-4.0)
    t = torch.full((128,), 0.2)
    s = torch.full((128,), 0.9)
    good, info = adm_discriminator_loss(LinearCritic(1.0), x, real_v, fake_v, t, s, noise=torch.zeros_like(x))
    bad, _ = adm_discriminator_loss(LinearCritic(-1.0), x, real_v, fake_v, t, s, noise=torch.zeros_like(x))
    assert info["d_real"] > info["d_fake"]
    assert float(good) < 0.5 and float(bad) > 5.0
    # the hinge's value, written out: y = x_t + (s - t) v, x_t = t x with zero noise
    y_real = 0.2 * x + 0.7 * 4.0
    y_fake = 0.2 * x - 0.7 * 4.0
    ref = torch.relu(1 - y_real.sum(1)).mean() + torch.relu(1 + y_fake.sum(1)).mean()
    torch.testing.assert_close(good, ref)


def test_adm_generator_step_raises_the_critics_score_of_its_predictions():
    """ADM's generator loss ``-D(y_fake)``: with a critic that scores larger coordinates higher and a
    constant fake velocity (``y_fake = x_t + (s - t) c``, ``dy/dx = t``), the gradient on every sample
    is negative: descent moves the fake score's predictions towards the critic's "real"."""
    torch.manual_seed(0)
    x = (0.5 * torch.randn(64, 2)).requires_grad_(True)
    critic, real_v, fake_v = LinearCritic(1.0), ConstantVelocity(1.0), ConstantVelocity(0.0)
    with frozen(critic, fake_v):
        loss, _ = adm_generator_loss(critic, x, real_v, fake_v)
        loss.backward()
    assert bool((x.grad < 0).all())
    assert critic.k.grad is None and fake_v.w.grad is None


@pytest.mark.parametrize("swap", [False, True])
def test_gan_discriminator_loss_treats_its_arguments_as_fake_then_real(swap):
    """The signature is ``(disc, x_fake, x_real)``: passing real data first must make a correct
    critic pay, so that a call site that swaps them is caught by the training curves and this test."""
    real, fake = _toy()
    t = torch.full((real.shape[0],), 0.9)
    args = (real, fake) if swap else (fake, real)
    torch.manual_seed(0)
    loss, info = gan_discriminator_loss(LinearCritic(3.0), *args, t)
    assert (float(loss) > 10.0) == swap
    assert (info["d_real"] > info["d_fake"]) == (not swap)


# ------------------------------------------------------------------ the distribution-matching terms, exactly


class AffineVelocity(nn.Module):
    """``v(x, t) = a x + b`` (a closed-form stand-in for a score network)."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x, t):
        return self.a * x + self.b


def _denoise(v, xt, t):
    """The data prediction on the linear path x_t = (1 - t) eps + t x: x = x_t + (1 - t) v."""
    return xt + (1 - t)[:, None] * v(xt, t)


@pytest.mark.parametrize("normalize", [True, False])
def test_dmd_loss_gradient_is_the_fake_minus_real_prediction(normalize):
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64).requires_grad_(True)
    eps = torch.randn(6, 3, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    real, fake = AffineVelocity(-0.5, 1.0), AffineVelocity(0.3, -2.0)
    loss, info = dmd_loss(x, real, fake, t=t, noise=eps, normalize=normalize)
    loss.backward()
    xt = (1 - t)[:, None] * eps + t[:, None] * x.detach()
    x_real, x_fake = _denoise(real, xt, t), _denoise(fake, xt, t)
    g = x_fake - x_real
    w = (x.detach() - x_real).abs().mean(1, keepdim=True)
    if normalize:
        g = g / w
    torch.testing.assert_close(x.grad, g / x.numel())  # d loss / dx = g / numel: a step moves x along -g
    torch.testing.assert_close(info["grad"], g)
    assert info["weight"] == pytest.approx(float(w.mean()))
    torch.testing.assert_close(info["t"], t)
    x2 = x.detach().clone().requires_grad_(True)
    default, _ = dmd_loss(x2, real, fake, t=t, noise=eps)  # normalised by default
    default.backward()
    torch.testing.assert_close(x2.grad, (x_fake - x_real) / w / x.numel())


def test_cdm_loss_extrapolates_with_the_students_velocity_and_passes_t_and_noise_on():
    torch.manual_seed(1)
    x_s = torch.randn(5, 2, dtype=torch.float64)
    s = torch.tensor([0.0, 0.2, 0.5, 0.7, 0.9], dtype=torch.float64)
    t = torch.full((5,), 0.6, dtype=torch.float64)
    eps = torch.randn(5, 2, dtype=torch.float64)
    student = AffineVelocity(0.5, 1.5)
    real, fake = AffineVelocity(-0.5, 1.0), AffineVelocity(0.3, -2.0)
    loss, info = cdm_loss(student, x_s, s, real, fake, t=t, noise=eps, normalize=False)
    x_hat = x_s + (1 - s)[:, None] * (0.5 * x_s + 1.5)
    torch.testing.assert_close(info["x_hat"], x_hat)
    ref, _ = dmd_loss(x_hat, real, fake, t=t, noise=eps, normalize=False)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(info["t"], t)
    normalised, _ = cdm_loss(student, x_s, s, real, fake, t=t, noise=eps)  # DMD's weighting by default
    torch.testing.assert_close(normalised, dmd_loss(x_hat, real, fake, t=t, noise=eps)[0])
    with pytest.raises(ValueError, match="s must have shape"):
        cdm_loss(student, x_s, torch.ones(5, dtype=torch.float64), real, fake)
    with pytest.raises(ValueError, match="s must have shape"):
        cdm_loss(student, x_s, -0.1 * torch.ones(5, dtype=torch.float64), real, fake)
    assert torch.isfinite(cdm_loss(student, x_s, torch.full((5,), 0.999, dtype=torch.float64), real, fake)[0])


def test_fake_score_loss_and_gan_generator_loss_use_the_given_times_and_noise():
    torch.manual_seed(2)
    x = torch.randn(4, 2)
    eps = torch.randn(4, 2)
    t = torch.tensor([0.0, 0.3, 0.6, 1.0])  # the fake score's times may include both ends
    fake = AffineVelocity(0.2, 0.1)
    loss, info = fake_score_loss(fake, x, t=t, noise=eps)
    xt = (1 - t)[:, None] * eps + t[:, None] * x
    ref = ((fake(xt, t) - (x - eps)) ** 2).mean()
    torch.testing.assert_close(loss, ref)
    assert info["fake_fm"] == pytest.approx(float(ref))
    for bad in (torch.tensor([0.1, 0.2, 0.3]), torch.tensor([-0.1, 0.2, 0.3, 0.4]), torch.tensor([0.1, 0.2, 0.3, 1.1])):
        with pytest.raises(ValueError, match="t must have shape"):
            fake_score_loss(fake, x, t=bad)
    critic = LinearCritic(1.0)
    tg = torch.full((4,), 0.5)
    lg, ginfo = gan_generator_loss(critic, x, t=tg, noise=eps)
    logits = (0.5 * eps + 0.5 * x).sum(1)
    torch.testing.assert_close(lg, torch.nn.functional.softplus(-logits).mean())
    assert set(ginfo) == {"gan_g", "d_fake"} and ginfo["d_fake"] == pytest.approx(float(logits.mean()))
    ld, dinfo = gan_discriminator_loss(critic, x, x + 1.0, t=tg)
    assert set(dinfo) == {"gan_d", "d_real", "d_fake"}
    with pytest.raises(ValueError, match="x_fake"):
        gan_discriminator_loss(critic, torch.zeros(3), x, t=tg)
    with pytest.raises(ValueError, match="x_real"):
        gan_discriminator_loss(critic, x, torch.zeros(3), t=tg)
