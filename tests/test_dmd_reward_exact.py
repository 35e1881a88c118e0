"""Known answers for the distribution-matching losses (dmd.py) and reward-tilted DMD (reward.py).

Each test states the bug it catches. The recipe loops (``_dmd_family`` behind dmd/dmd2/adm, RTDMD's
``_train_generator``, ``train_stage1``, ``beta_sweep``) run for one or two steps on a tiny duck-typed
experiment while the loss functions and optimisers they call are wrapped to record their inputs, so
the tests check what each critic and generator term reads, which network each optimiser steps, how
many critic updates happen per generator step and what lands in the history. The loss functions are
checked against closed forms recomputed here in float64.
"""

import math
import types

import pytest
import torch
from spies import record_optimizer

from distill_lab.core.flows import interpolate, teacher_ode
from distill_lab.core.scale import Scale
from distill_lab.methods.step import dmd, reward
from distill_lab.methods.step.dmd import (ConvDiscriminator, Discriminator, adm_discriminator_loss,
                                          adm_generator_loss, adm_predictions, cdm_loss, continuous_schedule,
                                          dmd_loss, dmd_regression_loss, make_discriminator)
from distill_lab.methods.step.reward import (reward_disk, reward_linear, reward_right, rtdmd_loss,
                                             tilted_reference, tilted_velocity)
from distill_lab.nets.mlp import TimeMLP
from distill_lab.toy2d.experiment import TEACHER_METHOD, TEACHER_NFE

DATA_VALUE = 7.0


# ------------------------------------------------------------------------------ a tiny experiment
class FakeExp:
    """What the recipes read from an experiment, with every draw recorded."""

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        self.scale = Scale("ci", teacher_steps=1, width=16, depth=2, batch=32, student_steps=1, eval_n=64,
                           n_proj=8, device="cpu")
        self.shape = (2,)
        self.device = "cpu"
        self.teacher = TimeMLP(2, 16, 2, 1)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.n_times, self.noises, self.data_n, self.teacher_calls, self.fits = [], [], [], [], []

    def velocity(self, x, t):
        return self.teacher(x, t)

    def student_net(self, n_times=1):
        self.n_times.append(n_times)
        net = TimeMLP.from_net(self.teacher, n_times)
        for p in net.parameters():
            p.requires_grad_(True)
        return net.train()

    def noise_batch(self, n=None):
        assert n is not None, "recipes must ask for their own batch size"
        z = torch.randn(n, 2)
        self.noises.append(z)
        return z

    def data_batch(self, n=None):
        assert n is not None
        self.data_n.append(n)
        return torch.full((n, 2), DATA_VALUE)

    def teacher_sample(self, z, nfe=TEACHER_NFE, method=TEACHER_METHOD):
        self.teacher_calls.append((z, nfe, method))
        return teacher_ode(self.velocity, z, nfe, method)

    def fit(self, step, n_steps, desc):
        self.fits.append((n_steps, desc))
        return [step(i) for i in range(min(n_steps, 2))]


def _modules(args):
    return [a for a in args if isinstance(a, torch.nn.Module)]


def _record(monkeypatch, module, names):
    """Wrap ``module.name`` for each name: record args, kwargs, the result and whether the networks
    passed in had trainable parameters at call time."""
    calls = {k: [] for k in names}
    for k in names:
        fn = getattr(module, k)

        def wrapper(*args, _fn=fn, _k=k, **kwargs):
            flags = [p.requires_grad for m in _modules(args) for p in m.parameters()]
            out = _fn(*args, **kwargs)
            calls[_k].append(types.SimpleNamespace(args=args, kwargs=kwargs, out=out, trainable=flags))
            return out

        monkeypatch.setattr(module, k, wrapper)
    return calls


def _record_adam(monkeypatch):
    """Record every optimiser the loop builds: its parameters, lr, and how many times it steps."""
    opts = []
    orig = dmd._adam

    def spy(params, lr):
        params = list(params)
        opt = orig(params, lr)
        rec = types.SimpleNamespace(params=params, lr=lr, steps=0, opt=opt)
        step = opt.step

        def counted(*a, **k):
            rec.steps += 1
            return step(*a, **k)

        opt.step = counted
        opts.append(rec)
        return opt

    monkeypatch.setattr(dmd, "_adam", spy)
    return opts


def _owner(opts, module):
    ids = {id(p) for p in module.parameters()}
    found = [o for o in opts if {id(p) for p in o.params} == ids]
    assert len(found) == 1, "exactly one optimiser steps each network"
    return found[0]


LOSSES = ("fake_score_loss", "adm_discriminator_loss", "gan_discriminator_loss", "adm_generator_loss", "dmd_loss",
          "gan_generator_loss", "dmd_regression_loss")


def _in_range(t, lo, hi, n):
    return isinstance(t, torch.Tensor) and t.shape == (n,) and bool(((t >= lo) & (t <= hi)).all())


# ------------------------------------------------------------------------------ _dmd_family: dmd
def test_dmd_loop_updates_critic_n_times_reads_its_time_range_and_logs_its_loss(monkeypatch):
    """dmd: `critic_updates` fake-score steps per generator step, each optimiser on its own network at
    its own lr, DMD times drawn from the configured [t_min, t_max] (not the loss's default), the fake
    score frozen during the generator step, no discriminator or GAN/regression term by default, and the
    history's "dmd"/"grad_norm"/"loss" equal to what the loss returned."""
    exp = FakeExp()
    calls = _record(monkeypatch, dmd, LOSSES)
    opts = _record_adam(monkeypatch)
    gen = dmd.train_dmd(exp, steps=2, batch=8, critic_updates=3, t_min=0.5, t_max=0.6, gen_lr=1e-3,
                        fake_lr=2e-3)
    assert exp.fits == [(2, "dmd")] and exp.n_times == [1, 1]
    assert gen.disc is None and not calls["gan_generator_loss"] and not calls["gan_discriminator_loss"]
    assert not calls["dmd_regression_loss"] and not calls["adm_generator_loss"]
    assert len(calls["fake_score_loss"]) == 6 and len(calls["dmd_loss"]) == 2
    assert gen.config["critic_updates"] == 3 and gen.config["batch"] == 8 and gen.config["gan_weight"] == 0
    assert gen.config["reg_weight"] == 0
    g_opt, f_opt = _owner(opts, gen.net), _owner(opts, gen.fake)
    assert (g_opt.lr, g_opt.steps) == (1e-3, 2) and (f_opt.lr, f_opt.steps) == (2e-3, 6) and len(opts) == 2
    for c in calls["fake_score_loss"]:
        assert c.args[0] is gen.fake and all(c.trainable) and c.args[1].shape == (8, 2)
    for i, c in enumerate(calls["dmd_loss"]):
        x, real_v, fake_v = c.args
        assert real_v == exp.velocity and fake_v is gen.fake and x.requires_grad
        assert not any(c.trainable), "the fake score must be frozen in the generator step"
        assert _in_range(c.kwargs.get("t"), 0.5, 0.6, 8)
        loss, info = c.out
        h = gen.history[i]
        assert h["dmd"] == float(loss.detach()) == h["loss"] and h["grad_norm"] == info["grad_norm"]
    assert all(p.requires_grad for p in gen.fake.parameters())


def test_dmd_regression_term_reads_teacher_ode_of_the_same_noise_and_adds_reg_weight_times_it(monkeypatch):
    """reg_weight > 0 (even below 1) adds DMD's eq. (9): x pulled toward the teacher's ODE solution from
    the same z, loss = dmd + reg_weight * regression."""
    exp = FakeExp()
    calls = _record(monkeypatch, dmd, LOSSES)
    gen = dmd.train_dmd(exp, steps=1, batch=8, critic_updates=1, reg_weight=0.5)
    (c,) = calls["dmd_regression_loss"]
    x, x_ref = c.args
    assert x is calls["dmd_loss"][0].args[0]
    z = exp.noises[-1]
    ((z_ref, nfe, method),) = exp.teacher_calls
    assert z_ref is z and isinstance(nfe, int) and nfe >= 2, "a many-step ODE solution of the generator's noise"
    torch.testing.assert_close(x_ref, teacher_ode(exp.velocity, z, nfe, method))
    h = gen.history[0]
    assert h["regression"] == float(c.out[0].detach())
    assert h["loss"] == pytest.approx(h["dmd"] + 0.5 * h["regression"], rel=1e-6)


def test_dmd_family_default_has_no_gan_term(monkeypatch):
    """_dmd_family's own gan_weight default is 0: called without it, no discriminator is built."""
    exp = FakeExp()
    calls = _record(monkeypatch, dmd, LOSSES)
    gen = dmd._dmd_family(exp, 1, "x", batch=4, critic_updates=1)
    assert gen.disc is None and gen.config["gan_weight"] == 0 and not calls["gan_generator_loss"]


# ------------------------------------------------------------------------------ _dmd_family: dmd2
def test_dmd2_loop_adds_weighted_gan_term_with_frozen_critics_and_steps_the_discriminator(monkeypatch):
    """dmd2: the discriminator gets generator samples vs data at the configured times, is frozen with the
    fake score in the generator step, total = dmd + gan_weight * gan_g, and its optimiser steps it
    `critic_updates` times per step at disc_lr."""
    exp = FakeExp()
    calls = _record(monkeypatch, dmd, LOSSES)
    opts = _record_adam(monkeypatch)
    gen = dmd.train_dmd2(exp, steps=1, batch=8, critic_updates=2, gan_weight=0.3, t_min=0.5, t_max=0.6,
                         disc_lr=3e-3)
    assert isinstance(gen.disc, Discriminator) and gen.config["gan_weight"] == 0.3
    d_opt = _owner(opts, gen.disc)
    assert (d_opt.lr, d_opt.steps) == (3e-3, 2)
    assert len(calls["gan_discriminator_loss"]) == 2 and exp.data_n == [8, 8]
    for c in calls["gan_discriminator_loss"]:
        assert c.args[0] is gen.disc and all(c.trainable)
        assert _in_range(c.kwargs.get("t"), 0.5, 0.6, 8)
    (g,) = calls["gan_generator_loss"]
    assert g.args[0] is gen.disc and not any(g.trainable), "the discriminator must be frozen for the generator"
    assert g.args[1] is calls["dmd_loss"][0].args[0]
    assert _in_range(g.kwargs.get("t"), 0.5, 0.6, 8)
    assert not any(calls["dmd_loss"][0].trainable)
    h = gen.history[0]
    assert h["gan_g"] == float(g.out[0].detach())
    assert h["loss"] == pytest.approx(h["dmd"] + 0.3 * h["gan_g"], rel=1e-6)


# ------------------------------------------------------------------------------ _dmd_family: adm
def test_adm_loop_uses_hinge_terms_at_configured_times_with_frozen_critics(monkeypatch):
    """adm: the discriminator compares teacher and fake predictions (adm_discriminator_loss) at the
    configured times; the generator loss is adm_generator_loss alone (no DMD term), with the
    discriminator and fake score frozen; the history's loss is the generator loss."""
    exp = FakeExp()
    calls = _record(monkeypatch, dmd, LOSSES)
    opts = _record_adam(monkeypatch)
    gen = dmd.train_adm(exp, steps=1, batch=8, critic_updates=2, t_min=0.5, t_max=0.6)
    assert gen.disc is not None and not calls["dmd_loss"] and not calls["gan_discriminator_loss"]
    assert _owner(opts, gen.disc).steps == 2
    for c in calls["adm_discriminator_loss"]:
        assert c.args[0] is gen.disc and c.args[2] == exp.velocity and c.args[3] is gen.fake
        assert all(c.trainable) and _in_range(c.kwargs.get("t"), 0.5, 0.6, 8)
    (g,) = calls["adm_generator_loss"]
    assert g.args[0] is gen.disc and g.args[3] is gen.fake and g.args[1].requires_grad
    assert not any(g.trainable), "disc and fake must both be frozen in ADM's generator step"
    assert _in_range(g.kwargs.get("t"), 0.5, 0.6, 8)
    h = gen.history[0]
    assert h["adm_g"] == float(g.out[0].detach()) == h["loss"]


# ------------------------------------------------------------------------------ helpers and validation
def test_adam_uses_the_given_lr_and_dmd2_betas():
    """_adam: the lr argument is used, with the recipes' documented betas (0, 0.99)."""
    p = torch.nn.Parameter(torch.zeros(2))
    g = dmd._adam([p], 0.123).param_groups[0]
    assert g["lr"] == 0.123 and tuple(g["betas"]) == (0.0, 0.99)


def test_check_x_messages_and_batch_bounds():
    """_check_x names the type or shape it got, rejects an empty batch, accepts a batch of one."""
    with pytest.raises(ValueError, match=r"got list"):
        dmd._check_x([1.0, 2.0])
    with pytest.raises(ValueError, match=r"got \(3,\)"):
        dmd._check_x(torch.zeros(3))
    with pytest.raises(ValueError, match="empty batch"):
        dmd._check_x(torch.zeros(0, 2))
    dmd._check_x(torch.zeros(1, 2))
    dmd._check_x(torch.zeros(2, 0))  # an empty sample is not an empty batch
    with pytest.raises(ValueError, match="x_s must"):
        cdm_loss(lambda x, t: x, torch.zeros(3), torch.zeros(3), lambda x, t: x, lambda x, t: x)


def test_times_range_and_validation():
    """_times: a None t is uniform in [lo, hi]; a wrong-length t or one outside [0, 1) is rejected; 0 is
    allowed."""
    x = torch.zeros(4000, 2)
    t = dmd._times(x, None, lo=0.5, hi=0.6)
    assert float(t.min()) >= 0.5 and float(t.max()) <= 0.6 and float(t.max()) > 0.59 and float(t.min()) < 0.51
    with pytest.raises(ValueError, match="shape"):
        dmd._times(torch.zeros(3, 2), torch.full((4,), 0.5))
    assert float(dmd._times(torch.zeros(3, 2), 0.0).sum()) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dmd._times(torch.zeros(3, 2), 1.0)


# ------------------------------------------------------------------------------ dmd_loss
def test_dmd_loss_grad_norm_is_mean_of_per_sample_norms():
    """info["grad_norm"] is the mean over samples of each sample's gradient norm (not the batch norm)."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    _, info = dmd_loss(x, lambda y, t: 2 * y, lambda y, t: -y, t=torch.full((5,), 0.4, dtype=torch.float64))
    g = info["grad"]
    assert info["grad_norm"] == pytest.approx(float(g.norm(dim=1).mean()), rel=1e-12)
    assert info["grad_norm"] != pytest.approx(float(g.norm()), rel=1e-3)


def test_dmd_regression_info_key():
    x = torch.ones(2, 2, requires_grad=True)
    loss, info = dmd_regression_loss(x, torch.zeros(2, 2))
    assert info["regression"] == float(loss) == 1.0


# ------------------------------------------------------------------------------ discriminators
def test_discriminator_layers_follow_depth_and_output_one_logit():
    """Discriminator: depth hidden Linear layers plus a one-unit head; default input size is 2D points."""
    d = Discriminator(dim=3, width=8, depth=3)
    lin = [m for m in d.net if isinstance(m, torch.nn.Linear)]
    assert len(lin) == 4 and lin[-1].out_features == 1 and lin[0].out_features == 8
    assert Discriminator()(torch.zeros(4, 2), torch.full((4,), 0.5)).shape == (4,)


def test_make_discriminator_sizes_from_sample_shape():
    """make_discriminator: images (C, H, W) get a ConvDiscriminator on C channels, other shapes an MLP on
    prod(shape) inputs with the given width and depth."""
    conv = make_discriminator((2, 8, 8))
    assert isinstance(conv, ConvDiscriminator) and conv.channels == 2
    assert conv(torch.zeros(3, 2, 8, 8), torch.full((3,), 0.5)).shape == (3,)
    d = make_discriminator((2, 3), width=8, depth=3)
    lin = [m for m in d.net if isinstance(m, torch.nn.Linear)]
    assert isinstance(d, Discriminator) and d.dim == 6 and lin[0].out_features == 8 and len(lin) == 4


def test_conv_discriminator_matches_its_documented_forward_in_float64():
    """ConvDiscriminator: two stride-2, padding-1 convolutions (8x8 -> 4x4 -> 2x2), the time's Fourier
    features added as a per-channel bias after the first, global average pooling, a one-logit linear
    head; recomputed here with the functional ops."""
    torch.manual_seed(0)
    d = ConvDiscriminator(channels=2, width=4).double()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    t = torch.rand(3, dtype=torch.float64)
    h = torch.nn.functional.conv2d(x, d.conv1.weight, d.conv1.bias, stride=2, padding=1)
    h = torch.nn.functional.silu(h + d.temb(d.time(t))[:, :, None, None])
    assert h.shape == (3, 4, 4, 4)
    h = torch.nn.functional.silu(torch.nn.functional.conv2d(h, d.conv2.weight, d.conv2.bias, stride=2, padding=1))
    assert h.shape == (3, 8, 2, 2)
    expected = h.mean(dim=(2, 3)) @ d.head.weight[0] + d.head.bias[0]
    assert d.head.out_features == 1
    torch.testing.assert_close(d(x, t), expected)
    assert ConvDiscriminator()(torch.zeros(2, 3, 8, 8), torch.zeros(2)).shape == (2,)  # default: RGB
    with pytest.raises(ValueError, match="images"):
        d(torch.zeros(3, 3, 8, 8), t)


# ------------------------------------------------------------------------------ ADM
class LinearD(torch.nn.Module):
    """D(y, s) = <a, y> + c s: a discriminator whose logits are known in closed form."""

    def __init__(self, a, c):
        super().__init__()
        self.a, self.c = a, c

    def forward(self, y, s):
        return y @ self.a + self.c * s


def _adm_setup():
    torch.manual_seed(1)
    B = 6
    x = torch.randn(B, 2, dtype=torch.float64)
    eps = torch.randn(B, 2, dtype=torch.float64)
    t = torch.rand(B, dtype=torch.float64) * 0.5
    s = t + 0.3
    real = lambda y, tt: 2.0 * y  # noqa: E731
    fake = lambda y, tt: -y + 1.0  # noqa: E731
    xt = interpolate(eps, x, t)
    h = (s - t)[:, None]
    y_real, y_fake = xt + h * real(xt, t), xt + h * fake(xt, t)
    return x, eps, t, s, real, fake, y_real, y_fake


def test_adm_predictions_closed_form_and_validation():
    """adm_predictions: one Euler step of each velocity from the same x_t, with the given noise; s = t and
    s = 1 allowed; each invalid s (wrong shape, s < t, s > 1) rejected on its own."""
    x, eps, t, s, real, fake, y_real, y_fake = _adm_setup()
    yr, yf = adm_predictions(x, real, fake, t, s, noise=eps)
    torch.testing.assert_close(yr, y_real)
    torch.testing.assert_close(yf, y_fake)
    adm_predictions(x, real, fake, t, t.clone(), noise=eps)
    adm_predictions(x, real, fake, t, torch.ones_like(t), noise=eps)
    with pytest.raises(ValueError, match="t <= s <= 1"):
        adm_predictions(x, real, fake, t, s[:3], noise=eps)
    with pytest.raises(ValueError, match="t <= s <= 1"):
        adm_predictions(x, real, fake, t, t - 0.01, noise=eps)
    with pytest.raises(ValueError, match="t <= s <= 1"):
        adm_predictions(x, real, fake, t, torch.full_like(t, 1.5), noise=eps)


def test_adm_losses_closed_form_hinge_with_given_noise_t_and_s():
    """ADM: generator loss -mean D(y_fake, s); discriminator loss relu(1 - D(y_real, s)) + relu(1 + D(y_fake, s))
    (margins 1), both with the given t, s and noise, reported under "adm_g" / "adm_d"."""
    x, eps, t, s, real, fake, y_real, y_fake = _adm_setup()
    disc = LinearD(torch.tensor([0.7, -0.4], dtype=torch.float64), 0.9)
    lg, ig = adm_generator_loss(disc, x, real, fake, t=t, s=s, noise=eps)
    assert float(lg) == pytest.approx(float(-disc(y_fake, s).mean()), rel=1e-12)
    assert ig["adm_g"] == float(lg)
    ld, idd = adm_discriminator_loss(disc, x, real, fake, t=t, s=s, noise=eps)
    lr, lf = disc(y_real, s), disc(y_fake, s)
    assert bool((lr < 2).any() and (lf > -2).any()), "test data: both hinges active, so each margin counts"
    expected = torch.relu(1 - lr).mean() + torch.relu(1 + lf).mean()
    assert float(ld) == pytest.approx(float(expected), rel=1e-12)
    assert idd["adm_d"] == float(ld)


# ------------------------------------------------------------------------------ CDM schedule
def test_continuous_schedule_k_max_one_is_the_single_step():
    """k_max = 1 is valid: every schedule is [0, 1] with start index 0."""
    times, k = continuous_schedule(5, 1)
    torch.testing.assert_close(times, torch.tensor([[0.0, 1.0]] * 5))
    assert bool((k == 0).all())
    with pytest.raises(ValueError, match="k_max"):
        continuous_schedule(5, 0)


def test_continuous_schedule_lengths_are_uniform_on_1_to_k_max():
    """K ~ U{1..k_max}: the number of interior times (K - 1) is uniform on {0..k_max-1}; times sorted,
    interior ones independent per sample; the start index k lies before the end (times[k] < 1)."""
    torch.manual_seed(0)
    n, k_max = 20000, 3
    times, k = continuous_schedule(n, k_max)
    assert times.shape == (n, k_max + 1)
    assert bool((times[:, 0] == 0).all() and (times[:, -1] == 1).all())
    assert bool((times[:, 1:] >= times[:, :-1]).all())
    interior = ((times > 0) & (times < 1)).sum(1)
    for m in range(k_max):  # P(K - 1 = m) = 1 / k_max, 5 sigma
        assert abs(float((interior == m).float().mean()) - 1 / k_max) < 5 * math.sqrt(2 / 9 / n)
    full = times[interior == k_max - 1, 1]
    assert float(full.std()) > 0.1, "interior times are drawn per sample"
    assert bool((times.gather(1, k[:, None])[:, 0] < 1).all())
    # k ~ U{0..K-1}: P(k = 0) = E[1/K] = (1 + 1/2 + 1/3) / 3
    assert abs(float((k == 0).float().mean()) - (1 + 1 / 2 + 1 / 3) / 3) < 0.02


# ------------------------------------------------------------------------------ rewards
def test_reward_checks_name_the_function_and_reject_bad_inputs_alone():
    """Each reward's error names the function; non-tensors and 1-D tensors raise ValueError; the
    disk's radius and width must each be positive."""
    for fn, name in ((reward_right, "reward_right"), (reward_disk, "reward_disk"),
                     (lambda x: reward_linear(x, [1.0]), "reward_linear")):
        with pytest.raises(ValueError, match=name):
            fn(torch.zeros(3))
    with pytest.raises(ValueError, match="rtdmd_loss"):
        rtdmd_loss(torch.zeros(3), lambda x, t: x, lambda x, t: x, reward_right, 1.0)
    with pytest.raises(ValueError, match="expected samples"):
        reward._check_points([[0.0, 1.0]], "f")
    with pytest.raises(ValueError, match="positive"):
        reward_disk(torch.zeros(2, 2), radius=0.0)
    with pytest.raises(ValueError, match="positive"):
        reward_disk(torch.zeros(2, 2), width=0.0)
    with pytest.raises(ValueError, match=r"one sample has shape \(2,\)"):
        reward_linear(torch.zeros(4, 2), [1.0, 2.0, 3.0])


def test_tilted_velocity_at_t_one_is_the_teacher_and_rejects_t_above_one():
    """At t = 1 the tilt's factor (1 - t) / t vanishes: v~ = v exactly; t in (1, 2] is rejected."""
    v = lambda x, t: 3.0 * x  # noqa: E731
    vt = tilted_velocity(v, reward_right, 0.5)
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(vt(x, torch.ones(4, dtype=torch.float64)), 3.0 * x)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        vt(x, torch.full((4,), 1.5, dtype=torch.float64))


def test_rtdmd_loss_passes_normalize_and_reports_beta():
    """rtdmd_loss(normalize=False) is dmd_loss on the tilted teacher without DMD's weight; info["beta"] is beta."""
    torch.manual_seed(0)
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    t = torch.full((6,), 0.5, dtype=torch.float64)
    eps = torch.randn(6, 2, dtype=torch.float64)
    real, fake = (lambda y, tt: 2.0 * y), (lambda y, tt: -y)
    loss, info = rtdmd_loss(x, real, fake, reward_right, 0.5, t=t, noise=eps, normalize=False)
    ref, _ = dmd_loss(x, tilted_velocity(real, reward_right, 0.5), fake, t=t, noise=eps, normalize=False)
    ref_n, _ = dmd_loss(x, tilted_velocity(real, reward_right, 0.5), fake, t=t, noise=eps, normalize=True)
    assert float(loss) == pytest.approx(float(ref), rel=1e-12) and float(loss) != pytest.approx(float(ref_n))
    assert info["beta"] == 0.5


# ------------------------------------------------------------------------------ RTDMD training loop
def _gen_and_fake(exp):
    from distill_lab.methods.step.students import OneStepGenerator
    return OneStepGenerator(exp.student_net(1)), exp.student_net(1)


def test_train_generator_dmd_branch_optimisers_times_batch_and_history(monkeypatch):
    """_train_generator with a reward but beta = inf: plain dmd_loss (not rtdmd) at times in t_range, the
    generator's and fake's optimisers at lr / fake_lr with betas (0, 0.99), fake_updates fake steps of
    `batch` samples, history with the loss, the last fake loss and the mean reward of x."""
    from distill_lab.methods.step import dmd as dmd_mod
    exp = FakeExp()
    G, fake = _gen_and_fake(exp)
    made = record_optimizer(monkeypatch)
    calls = _record(monkeypatch, dmd_mod, ("dmd_loss", "fake_score_loss"))
    rt = _record(monkeypatch, reward, ("rtdmd_loss",))
    hist = reward._train_generator(exp, G, fake, 1, reward_right, math.inf, lr=1e-3, fake_lr=2e-3, fake_updates=3,
                                   batch=8, desc="d", t_range=(0.5, 0.6))
    assert exp.fits == [(1, "d")]
    (pg, kg), (pf, kf) = made
    assert [id(p) for p in pg] == [id(p) for p in G.parameters()] and kg == {"lr": 1e-3, "betas": (0.0, 0.99)}
    assert [id(p) for p in pf] == [id(p) for p in fake.parameters()] and kf == {"lr": 2e-3, "betas": (0.0, 0.99)}
    assert [z.shape[0] for z in exp.noises] == [8, 8, 8, 8]
    assert not rt["rtdmd_loss"] and len(calls["fake_score_loss"]) == 3
    (c,) = calls["dmd_loss"]
    assert _in_range(c.kwargs.get("t"), 0.5, 0.6, 8)
    (h,) = hist
    x = c.args[0]
    assert h["loss"] is c.out[0] and h["fake_loss"] == calls["fake_score_loss"][-1].out[0].detach()
    assert h["reward"] == pytest.approx(float(x.detach()[:, 0].mean()))


def test_train_generator_without_reward_is_dmd_and_with_finite_beta_is_rtdmd(monkeypatch):
    """reward None -> dmd_loss, reward nan in the history (even with a finite beta); reward and finite
    beta -> rtdmd_loss at the drawn times, reward taken from its info."""
    from distill_lab.methods.step import dmd as dmd_mod
    exp = FakeExp()
    G, fake = _gen_and_fake(exp)
    calls = _record(monkeypatch, dmd_mod, ("dmd_loss",))
    rt = _record(monkeypatch, reward, ("rtdmd_loss",))
    (h,) = reward._train_generator(exp, G, fake, 1, None, 0.5, lr=1e-4, fake_lr=1e-4, fake_updates=1, batch=4,
                                   desc="d")
    assert math.isnan(h["reward"]) and len(calls["dmd_loss"]) == 1 and not rt["rtdmd_loss"]
    (h,) = reward._train_generator(exp, G, fake, 1, reward_right, 0.5, lr=1e-4, fake_lr=1e-4, fake_updates=1,
                                   batch=4, desc="d", t_range=(0.5, 0.6))
    (c,) = rt["rtdmd_loss"]
    assert c.args[3] is reward_right and c.args[4] == 0.5 and _in_range(c.kwargs.get("t"), 0.5, 0.6, 4)
    assert h["reward"] == c.out[1]["reward"]


def test_hyper_reads_every_override_and_validates_each_bound():
    """_hyper: each known override is used (an unread one would be reported unknown); fake_updates = 1 and
    t_min just inside (0, 0.98) are fine; fake_updates = 0, t_min = 0 and t_min = 0.98 each raise."""
    sc = FakeExp().scale
    kw = reward._hyper(sc, dict(lr=0.1, fake_lr=0.2, fake_updates=1, batch=7, t_min=0.4))
    assert kw == dict(lr=0.1, fake_lr=0.2, fake_updates=1, batch=7, t_range=(0.4, 0.98))
    default = reward._hyper(sc, dict(t_min=0.97))
    assert default["t_range"] == (0.97, 0.98)
    assert all(isinstance(default[k], (int, float)) and default[k] > 0 for k in ("lr", "fake_lr", "fake_updates",
                                                                                  "batch"))
    with pytest.raises(ValueError, match="fake_updates"):
        reward._hyper(sc, dict(fake_updates=0))
    with pytest.raises(ValueError, match="t_min"):
        reward._hyper(sc, dict(t_min=0.0))
    with pytest.raises(ValueError, match="t_min"):
        reward._hyper(sc, dict(t_min=0.98))
    with pytest.raises(ValueError, match="unknown"):
        reward._hyper(sc, dict(lr=0.1, nope=1))


def test_train_stage1_is_plain_dmd_from_teacher_copies_with_given_steps(monkeypatch):
    """train_stage1: _train_generator with no reward and beta = inf (plain DMD), DMD's t_min = 0.02,
    the given number of steps (0 included) or a positive default, generator and fake built from
    one-time copies of the teacher; the returned history is stage I's."""
    exp = FakeExp()
    rec = []

    def spy(exp_, G, fake, steps, rew, beta, **kw):
        rec.append(dict(G=G, fake=fake, steps=steps, reward=rew, beta=beta, **kw))
        return {"marker": len(rec)}

    monkeypatch.setattr(reward, "_train_generator", spy)
    G = reward.train_stage1(exp, steps=3, lr=0.01)
    (r,) = rec
    assert r["steps"] == 3 and r["reward"] is None and r["beta"] == math.inf and r["lr"] == 0.01
    assert r["G"] is G and r["fake"] is G.fake and r["t_range"][0] == 0.02
    assert exp.n_times == [1, 1] and G.history == G.stage1_history == {"marker": 1}
    reward.train_stage1(exp, steps=0)
    assert rec[-1]["steps"] == 0
    reward.train_stage1(exp)
    assert isinstance(rec[-1]["steps"], int) and rec[-1]["steps"] > 0


# ------------------------------------------------------------------------------ beta_sweep
class FakeStudent:
    def __init__(self, shift):
        self.shift, self.nfes = shift, []

    def sample(self, z, nfe=None):
        self.nfes.append(nfe)
        return z * 0.5 + self.shift


class SweepExp:
    def __init__(self, metric_name):
        self.scale = types.SimpleNamespace(eval_n=32, n_proj=9)
        self.seed, self.metric_name = 5, metric_name
        g = torch.Generator().manual_seed(0)
        self.eval_noise = torch.randn(32, 2, generator=g)
        self.eval_data = torch.randn(32, 2, generator=g) + 0.3
        self.drawn, self.metric_kw, self.eval_nfe = [], [], []

    def sample_data(self, n, seed):
        self.drawn.append((n, seed))
        return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))

    def evaluate(self, sample, nfe=None):
        self.eval_nfe.append(nfe)
        return {"ratio": float(sample(self.eval_noise, nfe).mean()) + 10.0}

    def metric(self, x, y, **kw):
        self.metric_kw.append(kw)
        return _fingerprint(x, y)


def _fingerprint(x, y):
    return float(x.mean(0) @ torch.tensor([1.0, 3.0]) + 7 * y.mean(0) @ torch.tensor([1.0, -2.0]) + y.shape[0])


@pytest.mark.parametrize("metric_name", ["sliced_w2", "energy"])
def test_beta_sweep_trains_one_student_per_finite_beta_and_measures_against_the_tilted_target(
        monkeypatch, metric_name):
    """beta_sweep: stage I trained once when no base is given; beta = inf is the base itself; each finite
    beta trains RTDMD from the base with the sweep's steps, reward, beta and overrides; each row's
    reward/ratio/tilted_w2/tilted_floor/student are what their names say (tilted targets resampled with
    seeds 1 and 2 at the evaluation size); n_proj goes to the metric only for sliced W2."""
    exp = SweepExp(metric_name)
    base = FakeStudent(0.0)
    stage1, trained = [], []
    monkeypatch.setattr(reward, "train_stage1", lambda e, **kw: stage1.append((e, kw)) or base)

    def fake_rtdmd(e, **kw):
        st = FakeStudent(kw["beta"])
        trained.append((kw, st))
        return st

    monkeypatch.setattr(reward, "train_rtdmd", fake_rtdmd)
    rew = lambda x: reward_linear(x, [0.0, 1.0])  # noqa: E731
    out = reward.beta_sweep(exp, [math.inf, 0.5], reward=rew, steps=4, lr=0.01, t_min=0.2)
    assert stage1 == [(exp, {"lr": 0.01})]
    ((kw, st),) = trained
    assert kw == dict(steps=4, reward=rew, beta=0.5, base=base, lr=0.01, t_min=0.2)
    assert out[0]["student"] is base and out[1]["student"] is st
    (n_pool, pool_seed), = exp.drawn
    assert n_pool >= 32 and isinstance(pool_seed, int)
    pool = torch.randn(n_pool, 2, generator=torch.Generator().manual_seed(pool_seed))
    assert exp.eval_nfe == [1, 1] and set(base.nfes) == {1} and set(st.nfes) == {1}
    assert exp.metric_kw == ([{"n_proj": 9}] * 4 if metric_name == "sliced_w2" else [{}] * 4)
    for row, b, s in zip(out, (math.inf, 0.5), (base, st)):
        x = s.sample(exp.eval_noise, 1)
        ref_a, _ = tilted_reference(pool, rew, b, n=32, seed=1)
        ref_b, _ = tilted_reference(pool, rew, b, n=32, seed=2)
        assert row["beta"] == b
        assert row["reward"] == pytest.approx(float(x[:, 1].mean()))
        assert row["ratio"] == pytest.approx(float(x.mean()) + 10.0)
        assert row["target_reward"] == pytest.approx(tilted_reference(exp.eval_data, rew, b)[1])
        assert row["tilted_w2"] == pytest.approx(_fingerprint(x, ref_a))
        assert row["tilted_floor"] == pytest.approx(_fingerprint(ref_b, ref_a))


def test_beta_sweep_reuses_a_given_base_and_defaults_to_reward_right(monkeypatch):
    """A given stage-I base is not retrained; no reward means reward_right."""
    exp = SweepExp("sliced_w2")
    base = FakeStudent(0.25)
    monkeypatch.setattr(reward, "train_stage1", lambda e, **kw: pytest.fail("stage I retrained"))
    (row,) = reward.beta_sweep(exp, [math.inf], base=base)
    assert row["student"] is base
    assert row["reward"] == pytest.approx(float((exp.eval_noise * 0.5 + 0.25)[:, 0].mean()))
