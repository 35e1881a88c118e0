"""Few-step distribution matching (methods/step/fewstep.py): known answers and wiring.

Closed forms come from :class:`GaussianLinearFlow` (noise to ``N(mu, sigma^2 I)`` along the linear path,
whose velocity, flow map and marginals are exact). Each test names the bug it catches. The recipe loops
run for two steps on the tiny experiment of ``test_dmd_reward_exact`` with the loss functions wrapped, so
the tests check which samples each critic fits and which network each optimiser steps.
"""

import types

import pytest
import torch
from test_dmd_reward_exact import FakeExp, _record

from distill_lab.core.flows import GaussianLinearFlow, denoise, sample_ode
from distill_lab.methods.step import fewstep as fs
from distill_lab.methods.step.dmd import T_MAX, T_MIN, dmd_loss, dmd_loss_at
from distill_lab.nets.mlp import TimeMLP

D = torch.float64


def _gauss(mu, sigma=0.6):
    return GaussianLinearFlow(torch.tensor(mu, dtype=D), sigma)


class Affine(torch.nn.Module):
    """A student velocity ``v(x, t) = x A^T + t b + c`` with trainable parameters (float64)."""

    def __init__(self, d=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(0.3 * torch.randn(d, d, generator=g, dtype=D))
        self.b = torch.nn.Parameter(torch.randn(d, generator=g, dtype=D))
        self.c = torch.nn.Parameter(torch.randn(d, generator=g, dtype=D))

    def forward(self, x, t):
        return x @ self.A.T + t[:, None] * self.b + self.c


def _grads(net):
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def _batch(n=64, seed=3):
    g = torch.Generator().manual_seed(seed)
    K = 4
    k = torch.randint(0, K, (n,), generator=g)
    return torch.randn(n, 2, generator=g, dtype=D), k.to(D) / K, (k + 1).to(D) / K


# ------------------------------------------------------------------ the fake equal to the teacher
@pytest.mark.parametrize("which", ["fewstep_dmd", "tdm", "tdm_joint", "dmd_loss_at"])
def test_with_the_fake_equal_to_the_teacher_every_generator_gradient_is_zero(which):
    """At p_fake = p_real the reverse KL is at its minimum: a DMD-family loss that leaves any gradient
    there (a missing stop-gradient on a prediction, a term not built from fake minus real) fails."""
    teacher = _gauss([1.0, -0.5])
    net = Affine()
    x, t_k, t_next = _batch()
    if which == "fewstep_dmd":
        loss, _ = fs.fewstep_dmd_loss(net, x, t_k, teacher.velocity, teacher.velocity)
    elif which in ("tdm", "tdm_joint"):
        loss, _ = fs.tdm_loss(net, x, t_k, t_next, teacher.velocity, teacher.velocity,
                              separate=which == "tdm")
    else:
        xh = net(x, t_k)
        xt = 0.5 * xh.detach() + 0.3 * torch.randn_like(xh)
        loss, _ = dmd_loss_at(xh, xt, torch.full((64,), 0.5, dtype=D), teacher.velocity, teacher.velocity)
    loss.backward()
    assert _grads(net).abs().max() < 1e-12
    # and a fake that differs gives a clearly nonzero gradient (the check above is not vacuous)
    net.zero_grad()
    if which == "fewstep_dmd":
        loss, _ = fs.fewstep_dmd_loss(net, x, t_k, teacher.velocity, _gauss([0.0, 0.5]).velocity)
    elif which in ("tdm", "tdm_joint"):
        loss, _ = fs.tdm_loss(net, x, t_k, t_next, teacher.velocity, _gauss([0.0, 0.5]).velocity,
                              separate=which == "tdm")
    else:
        loss, _ = dmd_loss_at(net(x, t_k), xt, torch.full((64,), 0.5, dtype=D), teacher.velocity,
                              _gauss([0.0, 0.5]).velocity)
    loss.backward()
    assert _grads(net).abs().max() > 1e-4


def test_dmd_loss_is_dmd_loss_at_its_own_noised_point():
    """dmd_loss must noise x as (1 - t) eps + t x and read the direction there (a refactor that noises
    with the wrong weights or at another time fails)."""
    real, fake = _gauss([1.0, 0.0]), _gauss([0.0, 1.0])
    x = torch.randn(16, 2, dtype=D, requires_grad=True)
    eps, t = torch.randn(16, 2, dtype=D), torch.rand(16, dtype=D) * 0.9
    l1, i1 = dmd_loss(x, real.velocity, fake.velocity, t=t, noise=eps)
    l2, i2 = dmd_loss_at(x, (1 - t[:, None]) * eps + t[:, None] * x.detach(), t, real.velocity, fake.velocity)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(i1["grad"], i2["grad"])
    with pytest.raises(ValueError, match="xt must have x's shape"):
        dmd_loss_at(x, x[:, :1], t, real.velocity, fake.velocity)


# ------------------------------------------------------------------------------------ grid points
def test_grid_points_roll_out_euler_steps_to_index_k():
    """k = 0 returns the noise at t = 0; index k is k Euler steps of the uniform K-step grid (a wrong
    grid, an off-by-one in k, or a step taken with gradient fails)."""
    teacher = _gauss([1.0, -0.5])
    z = torch.randn(6, 2, dtype=D)
    k = torch.tensor([0, 1, 2, 3, 3, 0])
    x, t, tn = fs.grid_points(teacher.velocity, z, 4, k)
    torch.testing.assert_close(t, k.to(D) / 4)
    torch.testing.assert_close(tn, (k + 1).to(D) / 4)
    for i in range(6):
        want = sample_ode(teacher.velocity, z[i:i + 1], int(k[i]), t1=float(k[i]) / 4) if k[i] else z[i:i + 1]
        torch.testing.assert_close(x[i:i + 1], want)
    assert not x.requires_grad
    with pytest.raises(ValueError, match="grid indices in 0..3"):
        fs.grid_points(teacher.velocity, z, 4, torch.tensor([0, 1, 2, 4, 0, 0]))
    with pytest.raises(ValueError, match="positive whole number"):
        fs.grid_points(teacher.velocity, z, 0)


# ------------------------------------------------------------------------------------------- TDM
def test_renoise_carries_the_marginal_at_s_to_the_marginal_at_tau():
    """Points of the exact marginal at s, renoised to tau, have the marginal at tau: mean tau mu and
    variance a(tau)^2 (a wrong shrink factor or noise scale fails), and tau = s is the identity."""
    flow = _gauss([1.5, -1.0], sigma=0.5)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    s, tau = torch.full((n,), 0.8, dtype=D), torch.full((n,), 0.3, dtype=D)
    y = flow.flow_map(torch.randn(n, 2, generator=g, dtype=D), torch.zeros(n, dtype=D), s)
    x = fs.renoise(y, s, tau, torch.randn(n, 2, generator=g, dtype=D))
    torch.testing.assert_close(x.mean(0), 0.3 * flow.mu.to(D), atol=0.01, rtol=0)
    torch.testing.assert_close(x.var(0), flow.a(torch.tensor(0.3, dtype=D)).pow(2).expand(2), atol=0.01, rtol=0)
    torch.testing.assert_close(fs.renoise(y[:5], s[:5], s[:5], torch.randn(5, 2, dtype=D)), y[:5])
    with pytest.raises(ValueError, match="0 < tau <= s"):
        fs.renoise(y[:5], tau[:5], s[:5])


def test_tdm_points_closed_forms_and_the_segment_of_tau():
    """x_hat = x_k + (1 - t_k) v, the trajectory point y = (1 - s) eps_hat + s x_hat = x_k + (s - t_k) v,
    x_tau its renoising, eps_mix = (x_tau - tau x_hat) / (1 - tau); tau inside [t_k, s] (separate) or
    [0.02, s] (joint). A swapped eps_hat/x_hat, a tau drawn across the whole range when separate, or
    gradient on x_tau fails."""
    net = Affine()
    x, t_k, t_next = _batch(n=4000)
    xi = torch.randn_like(x)
    p = fs.tdm_points(net, x, t_k, t_next, xi=xi)
    v = net(x, t_k).detach()
    torch.testing.assert_close(p["x_hat"].detach(), x + (1 - t_k)[:, None] * v)
    y = x + (t_next - t_k)[:, None] * v
    torch.testing.assert_close(p["x_tau"], fs.renoise(y, t_next, p["tau"], xi))
    torch.testing.assert_close(p["eps_mix"], (p["x_tau"] - p["tau"][:, None] * p["x_hat"].detach())
                               / (1 - p["tau"])[:, None])
    assert p["x_hat"].requires_grad and not p["x_tau"].requires_grad
    lo, hi = t_k.clamp_min(T_MIN), t_next.clamp_max(T_MAX)
    assert bool(((p["tau"] >= lo - 1e-12) & (p["tau"] <= hi + 1e-12)).all())
    assert float((p["tau"] - lo).min()) < 0.01 and float((hi - p["tau"]).min()) < 0.01
    joint = fs.tdm_points(net, x, t_k, t_next, separate=False)["tau"]
    assert bool(((joint >= T_MIN - 1e-12) & (joint <= hi + 1e-12)).all())
    assert float((joint - t_k)[t_k > 0.3].min()) < -0.2, "joint taus reach below the step's own segment"
    with pytest.raises(ValueError, match="t_next must come after t_k"):
        fs.tdm_points(net, x, t_next.clamp_max(0.75), t_k)
    with pytest.raises(ValueError, match="tau must not come after s"):
        fs.tdm_points(net, x[:3], t_k[:3] * 0, t_next[:3] * 0 + 0.25, tau=torch.full((3,), 0.5, dtype=D))


def test_tdm_loss_moves_x_hat_along_dmd_direction_at_the_trajectory_point():
    """d loss / d x_hat = g / numel with g = (x_fake(x_tau) - x_real(x_tau)) / mean|x_hat - x_real(x_tau)|
    read at the renoised trajectory point (not at a fresh noising of x_hat), and a descent step moves
    x_hat toward the teacher's mean. A flipped sign or the direction read at the wrong point fails."""
    real, fake = _gauss([1.0, -1.0]), _gauss([-1.0, 1.0])
    net = Affine()
    x, t_k, t_next = _batch(n=256)
    xi = torch.randn_like(x)
    tau = t_k + 0.5 * (t_next - t_k)
    tau = tau.clamp_min(0.05)
    loss, info = fs.tdm_loss(net, x, t_k, t_next, real.velocity, fake.velocity, tau=tau, xi=xi)
    xt = info["x_tau"]
    x_real, x_fake = denoise(real.velocity, xt, tau), denoise(fake.velocity, xt, tau)
    w = (info["x_hat"] - x_real).abs().mean(1, keepdim=True)
    g = (x_fake - x_real) / w
    xh = info["x_hat"].clone().requires_grad_(True)
    ref = 0.5 * (xh - (xh.detach() - g)).pow(2).mean()
    torch.testing.assert_close(loss, ref)
    ref.backward()
    torch.testing.assert_close(xh.grad * xh.numel(), g)
    mu = real.mu.to(D)
    xh = xh.detach()
    assert float(((xh - 0.1 * g - mu).norm(dim=1)).mean()) < float((xh - mu).norm(dim=1).mean())


def test_tdm_fake_loss_regresses_x_hat_with_the_importance_weight():
    """Target velocity (x_hat - x_tau) / (1 - tau); weight exp(-mean eps_mix^2 / 2 + mean xi^2 / 2) per
    sample; zero for the exact target; only the fake's parameters get gradient. A target built from
    x_tau alone, a swapped weight ratio or a mean over the wrong axis fails."""
    fake = Affine(seed=1)
    g = torch.Generator().manual_seed(5)
    x_tau, x_hat = torch.randn(8, 2, generator=g, dtype=D), torch.randn(8, 2, generator=g, dtype=D)
    tau = torch.rand(8, generator=g, dtype=D) * 0.9
    eps_mix, xi = torch.randn(8, 2, generator=g, dtype=D), torch.randn(8, 2, generator=g, dtype=D)
    loss, info = fs.tdm_fake_loss(fake, x_tau, tau, x_hat, eps_mix, xi)
    u = (x_hat - x_tau) / (1 - tau)[:, None]
    per = (fake(x_tau, tau) - u).pow(2).mean(1)
    w = torch.exp(-0.5 * eps_mix.pow(2).mean(1) + 0.5 * xi.pow(2).mean(1))
    torch.testing.assert_close(loss, (w * per).mean())
    assert info["is_weight"] == pytest.approx(float(w.mean()))
    plain, _ = fs.tdm_fake_loss(fake, x_tau, tau, x_hat)
    torch.testing.assert_close(plain, per.mean())
    loss.backward()
    assert _grads(fake).abs().max() > 0

    class Exact(torch.nn.Module):
        def forward(self, x, t):
            return (x_hat - x) / (1 - t)[:, None]

    torch.testing.assert_close(fs.tdm_fake_loss(Exact(), x_tau, tau, x_hat)[0], torch.zeros((), dtype=D))


# ---------------------------------------------------------------------------------------- SC-DMD
def test_sc_term_is_zero_for_an_exact_flow_map_and_positive_for_euler_on_a_curved_flow():
    """The semigroup property makes Salt's term vanish at an exact flow map; the Euler jumps of the same
    (curved) flow's exact velocity do not compose, so the term is positive there (a term that compares
    the wrong points, or is zero everywhere, fails one of the two)."""
    flow = _gauss([1.5, -0.5], sigma=0.4)
    x = torch.randn(32, 2, dtype=D)
    t = torch.rand(32, dtype=D) * 0.5
    t_mid = t + 0.25
    loss, _ = fs.sc_loss(flow.flow_map, x, t, t_mid, 1.0)
    assert float(loss) < 1e-20
    euler, _ = fs.sc_loss(fs.euler_jump(flow.velocity), x, t, t_mid, 1.0)
    assert float(euler) > 1e-3


def test_sc_term_closed_form_stop_gradient_and_weighting():
    """loss = mean_i t_i * mean_d (X(x,t,1) - sg(X(sg X(x,t,t_mid), t_mid, 1)))^2 for the Euler jump of a
    student; gradient reaches only the one-jump prediction (dropping the stop-gradient on the target
    doubles a linear student's gradient here); weighted=False drops the factor t."""
    net = Affine()
    x = torch.randn(16, 2, dtype=D)
    t = torch.rand(16, dtype=D) * 0.6
    t_mid = t + 0.2
    loss, info = fs.sc_loss(fs.euler_jump(net), x, t, t_mid, 1.0)
    with torch.no_grad():
        mid = x + (t_mid - t)[:, None] * net(x, t)
        target = mid + (1 - t_mid)[:, None] * net(mid, t_mid)
    pred = x + (1 - t)[:, None] * net(x, t)
    per = (pred - target).pow(2).mean(1)
    torch.testing.assert_close(loss, (t * per).mean())
    unweighted, _ = fs.sc_loss(fs.euler_jump(net), x, t, t_mid, 1.0, weighted=False)
    torch.testing.assert_close(unweighted, per.mean())
    net.zero_grad()
    loss.backward()
    got = _grads(net).clone()
    net.zero_grad()
    (t * per).mean().backward()
    torch.testing.assert_close(got, _grads(net))
    assert info["sc_rms"] == pytest.approx(float(per.detach().mean().sqrt()))
    with pytest.raises(ValueError, match="t <= t_mid <= t_end"):
        fs.sc_loss(fs.euler_jump(net), x, t_mid, t, 1.0)


# ------------------------------------------------------------------------------------------- GDD
class LinearDisc(torch.nn.Module):
    """D(x, t) = x . w + 10 (t - 1): linear in x, and off by 10 per unit of time away from clean data."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=D))

    def forward(self, x, t):
        return x @ self.w + 10 * (t - 1)


def test_gdd_losses_closed_forms_on_clean_samples():
    """Generator: mean softplus(-D(x, 1)); discriminator: mean softplus(-D(real, 1)) + mean
    softplus(D(fake, 1)). A noised input, a time other than 1, swapped real/fake or a saturating
    generator loss fails; the generator's descent raises D (its samples move toward 'real')."""
    disc = LinearDisc()
    x = torch.randn(10, 2, dtype=D, requires_grad=True)
    real = torch.randn(10, 2, dtype=D) + 2
    lg, _ = fs.gdd_generator_loss(disc, x)
    torch.testing.assert_close(lg, torch.nn.functional.softplus(-(x @ disc.w)).mean())
    ld, info = fs.gdd_discriminator_loss(disc, x, real)
    want = (torch.nn.functional.softplus(-(real @ disc.w)).mean() + torch.nn.functional.softplus(x @ disc.w).mean())
    torch.testing.assert_close(ld, want)
    assert info["d_real"] == pytest.approx(float((real @ disc.w).detach().mean()))
    ld.backward()
    assert x.grad is None, "the discriminator's loss must not reach the generator's samples"
    lg, _ = fs.gdd_generator_loss(disc, x)
    lg.backward()
    with torch.no_grad():
        assert float(((x - 0.1 * x.grad) @ disc.w).mean()) > float((x @ disc.w).mean())
    with pytest.raises(ValueError, match="same shape"):
        fs.gdd_discriminator_loss(disc, x, real[:3])


def test_freeze_most_keeps_the_first_and_last_weights_and_every_bias_trainable():
    """GDD-I freezes the inner weight matrices only: freezing the head, the input layer or a bias fails."""
    net = TimeMLP(2, 32, 3, 1)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    frac = fs.freeze_most(net)
    assert linears[0].weight.requires_grad and linears[-1].weight.requires_grad
    assert all(not m.weight.requires_grad for m in linears[1:-1])
    assert all(m.bias.requires_grad for m in linears)
    n = sum(p.numel() for p in net.parameters())
    assert frac == pytest.approx(sum(p.numel() for p in net.parameters() if p.requires_grad) / n)
    assert 0 < frac < 0.5
    with pytest.raises(ValueError, match="at least 3"):
        fs.freeze_most(TimeMLP(2, 8, 1, 1))


# ---------------------------------------------------------------------------------------- recipes
def _spy(monkeypatch, names):
    return _record(monkeypatch, fs, names)


def _adams(monkeypatch):
    opts = []
    orig = fs._adam

    def spy(params, lr):
        params = list(params)
        opt = orig(params, lr)
        opts.append(types.SimpleNamespace(params=params, lr=lr))
        return opt

    monkeypatch.setattr(fs, "_adam", spy)
    return opts


def _same(params, module):
    return {id(p) for p in params} == {id(p) for p in module.parameters() if p.requires_grad}


def _x_hat(net, x_k, t_k):
    with torch.no_grad():
        return x_k + (1 - t_k)[:, None] * net(x_k, t_k)


def test_fewstep_dmd_fake_fits_the_students_predictions_and_the_teacher_is_the_real_score(monkeypatch):
    """dmd_fewstep: each critic update fits the fake score to x_hat = x_k + (1 - t_k) v(x_k, t_k) of fresh
    grid points (not the grid points themselves), the generator step reads its own fresh grid points, the
    teacher as the real score and the fake frozen, and no SC term is added. (gen_lr = 0 keeps the student
    fixed, so every x_hat can be recomputed afterwards.)"""
    exp = FakeExp()
    calls = _spy(monkeypatch, ["fake_score_loss", "fewstep_dmd_loss", "sc_loss", "grid_points"])
    opts = _adams(monkeypatch)
    st = fs.train_dmd_fewstep(exp, steps=2, batch=8, critic_updates=2, gen_lr=0.0)
    assert len(calls["fake_score_loss"]) == 4 and len(calls["fewstep_dmd_loss"]) == 2 and not calls["sc_loss"]
    gp = [c.out for c in calls["grid_points"]]
    assert all(c.args[2] == 4 for c in calls["grid_points"]), "the default grid has K = 4 steps"
    for c, (x_k, t_k, _) in zip(calls["fake_score_loss"], [gp[0], gp[1], gp[3], gp[4]]):
        assert c.args[0] is st.fake and all(c.trainable)
        torch.testing.assert_close(c.args[1], _x_hat(st.net, x_k, t_k))
    n_student = len(list(st.net.parameters()))
    for c, (x_k, t_k, _) in zip(calls["fewstep_dmd_loss"], [gp[2], gp[5]]):
        assert c.args[0] is st.net and c.args[1] is x_k and c.args[2] is t_k
        assert c.args[3] == exp.velocity and c.args[4] is st.fake
        assert c.trainable[n_student:] and not any(c.trainable[n_student:]), "the fake is frozen in the generator step"
    assert _same(opts[0].params, st.net) and _same(opts[1].params, st.fake) and len(opts) == 2


def test_scdmd_adds_the_weighted_sc_term_at_the_generators_grid_points(monkeypatch):
    """scdmd: the SC term reads the generator step's own grid points, t_mid = the next grid time and
    t_end = 1, and the logged loss is dmd + sc_weight * sc (a term at other points, or unweighted, fails)."""
    exp = FakeExp()
    calls = _spy(monkeypatch, ["fewstep_dmd_loss", "sc_loss", "grid_points"])
    st = fs.train_scdmd(exp, steps=2, batch=8, critic_updates=1, sc_weight=0.5)
    gp = [c.out for c in calls["grid_points"]]
    assert len(calls["sc_loss"]) == 2
    for j, (c, d) in enumerate(zip(calls["sc_loss"], calls["fewstep_dmd_loss"])):
        x_k, t_k, t_next = gp[2 * j + 1]
        assert c.args[1] is x_k and c.args[2] is t_k and c.args[3] is t_next and c.args[4] == 1.0
        h = st.history[j]
        assert h["loss"] == pytest.approx(float(d.out[0].detach()) + 0.5 * float(c.out[0].detach()))
        assert c.kwargs["weighted"] is False, "the default SC term is unweighted"


def test_tdm_fake_fits_the_trajectory_points_with_importance_and_the_generator_reads_them(monkeypatch):
    """tdm: the fake score is fitted on tdm_points of fresh grid points (x_tau, tau, x_hat, and eps_mix,
    xi for the importance weight), never on plain x_hat; the generator step calls tdm_loss with the
    teacher as the real score and the frozen fake; importance=False drops the weight."""
    exp = FakeExp()
    calls = _spy(monkeypatch, ["tdm_fake_loss", "tdm_points", "tdm_loss", "fake_score_loss", "grid_points"])
    st = fs.train_tdm(exp, steps=2, batch=8, critic_updates=2, gen_lr=0.0)
    assert not calls["fake_score_loss"] and len(calls["tdm_fake_loss"]) == 4 and len(calls["tdm_loss"]) == 2
    pts = calls["tdm_points"]
    gp = [c.out for c in calls["grid_points"]]
    fake_calls = iter(calls["tdm_fake_loss"])
    for j, (x_k, t_k, t_next) in enumerate(gp):
        if j % 3 == 2:
            continue
        p = next(c for c in pts if c.args[1] is x_k).out
        f = next(fake_calls)
        assert f.args[0] is st.fake and all(f.trainable)
        assert f.args[1] is p["x_tau"] and f.args[2] is p["tau"] and f.args[3] is p["x_hat"]
        assert f.args[4] is p["eps_mix"] and f.args[5] is p["xi"]
        torch.testing.assert_close(p["x_hat"], _x_hat(st.net, x_k, t_k))
    n_student = len(list(st.net.parameters()))
    for c, (x_k, t_k, t_next) in zip(calls["tdm_loss"], [gp[2], gp[5]]):
        assert c.args[0] is st.net and c.args[1] is x_k and c.args[2] is t_k and c.args[3] is t_next
        assert c.args[4] == exp.velocity and c.args[5] is st.fake
        assert c.trainable[n_student:] and not any(c.trainable[n_student:]), "the fake is frozen in the generator step"
    calls = _spy(monkeypatch, ["tdm_fake_loss"])
    fs.train_tdm(FakeExp(), steps=1, batch=8, critic_updates=1, importance=False)
    assert len(calls["tdm_fake_loss"][0].args) == 4


def test_gdd_discriminator_sees_real_data_and_the_generator_tunes_only_unfrozen_weights(monkeypatch):
    """gdd: the discriminator's positives are data batches and its negatives the generator's samples; the
    generator's optimiser holds exactly the parameters freeze_most left trainable (freeze=False: all), the
    discriminator is frozen in the generator step, and no teacher output is read."""
    exp = FakeExp()
    calls = _spy(monkeypatch, ["gdd_discriminator_loss", "gdd_generator_loss"])
    opts = _adams(monkeypatch)
    gen = fs.train_gdd(exp, steps=2, batch=8, critic_updates=2)
    assert len(calls["gdd_discriminator_loss"]) == 4 and len(calls["gdd_generator_loss"]) == 2
    for c in calls["gdd_discriminator_loss"]:
        assert bool((c.args[2] == 7.0).all()) and not bool((c.args[1] == 7.0).all())
        assert c.args[0] is gen.disc
    for c in calls["gdd_generator_loss"]:
        assert c.args[0] is gen.disc and not any(c.trainable) and c.args[1].requires_grad
    assert _same(opts[0].params, gen.net) and len(opts[0].params) < len(list(gen.net.parameters()))
    assert 0 < gen.trainable < 1 and not exp.teacher_calls
    opts.clear()
    full = fs.train_gdd(FakeExp(), steps=1, batch=8, freeze=False)
    assert full.trainable == 1.0 and len(opts[0].params) == len(list(full.net.parameters()))


# ================================================================ preference.py: Flash-DMD, Distillation-DPO
from distill_lab.methods.step import preference as pf  # noqa: E402
from distill_lab.methods.step.reward import reward_linear  # noqa: E402


def test_reward_ascent_and_joint_loss_gradients():
    """reward-only: d loss / dx = -grad r / B (a flipped sign descends the reward); the joint loss adds DMD's
    gradient times dmd_weight to reward_weight times that, and with the fake equal to the teacher only the
    reward part is left (a missing stop-gradient or a wrong weight fails)."""
    real = _gauss([1.0, 0.0])
    a = torch.tensor([0.5, -2.0], dtype=D)
    x = torch.randn(12, 2, dtype=D, requires_grad=True)
    loss, info = pf.reward_ascent_loss(x, lambda y: reward_linear(y, a))
    loss.backward()
    torch.testing.assert_close(x.grad, -a.expand(12, 2) / 12)
    assert info["reward"] == pytest.approx(float((x.detach() @ a).mean()))
    x.grad = None
    t, eps = torch.rand(12, dtype=D) * 0.9, torch.randn(12, 2, dtype=D)
    fake = _gauss([0.0, 1.0])
    joint, _ = pf.joint_reward_loss(x, real.velocity, fake.velocity, lambda y: reward_linear(y, a), 0.3, 2.0, t=t, noise=eps)
    joint.backward()
    xd = x.detach().clone().requires_grad_(True)
    d, _ = dmd_loss(xd, real.velocity, fake.velocity, t=t, noise=eps)
    d.backward()
    torch.testing.assert_close(x.grad, 2.0 * xd.grad - 0.3 * a.expand(12, 2) / 12)
    x.grad = None
    same, _ = pf.joint_reward_loss(x, real.velocity, real.velocity, lambda y: reward_linear(y, a), 0.3, t=t, noise=eps)
    same.backward()
    torch.testing.assert_close(x.grad, -0.3 * a.expand(12, 2) / 12)
    with pytest.raises(ValueError, match="non-negative"):
        pf.joint_reward_loss(x, real.velocity, fake.velocity, reward_linear, -1.0)


def test_preference_pairs_rank_by_the_score_keep_the_graph_and_mark_ties():
    """The winner of each pair has the higher score, ties are marked (and go to the first batch), the
    samples keep their graph while the score is never differentiated (swapped winners fail)."""
    xa = torch.tensor([[0.2, 0.0], [1.7, 1.0], [-1.5, 0.3]], dtype=D, requires_grad=True)
    xb = torch.tensor([[1.1, 0.0], [-0.9, 2.0], [-1.2, 0.0]], dtype=D, requires_grad=True)
    xw, xl, keep, margin = pf.preference_pairs(xa, xb, pf.column_score)
    torch.testing.assert_close(xw.detach(), torch.stack([xb[0], xa[1], xa[2]]).detach())
    torch.testing.assert_close(xl.detach(), torch.stack([xa[0], xb[1], xb[2]]).detach())
    assert keep.tolist() == [True, True, False] and margin.tolist() == [1.0, 2.0, 0.0]
    assert xw.requires_grad
    torch.testing.assert_close(pf.column_score(xa), torch.tensor([2.0, 3.0, 0.0], dtype=D))


def test_ddpo_loss_closed_form_ties_and_equal_fakes_give_no_update():
    """The term moves both samples of a kept pair along (x_win_fake - x_lose_fake) / mean|x - x_real|; tied
    pairs and equal auxiliary fakes give exactly zero gradient, and a descent step moves samples toward the
    winners' mean (a flipped sign or an unmasked tie fails)."""
    real, fw, fl = _gauss([0.0, 0.0]), _gauss([1.0, 0.0]), _gauss([-1.0, 0.0])
    xw = torch.randn(8, 2, dtype=D, requires_grad=True)
    xl = torch.randn(8, 2, dtype=D, requires_grad=True)
    keep = torch.tensor([True] * 6 + [False] * 2)
    t, eps = torch.rand(8, dtype=D) * 0.9, torch.randn(8, 2, dtype=D)
    loss, _ = pf.ddpo_loss(xw, xl, keep, real.velocity, fw.velocity, fl.velocity, t=t, noise=eps, beta=2.0)
    loss.backward()
    for x in (xw, xl):
        xt = (1 - t[:, None]) * eps + t[:, None] * x.detach()
        x_real = denoise(real.velocity, xt, t)
        d = (denoise(fw.velocity, xt, t) - denoise(fl.velocity, xt, t)) / (x.detach() - x_real).abs().mean(1, keepdim=True)
        want = -2.0 * keep[:, None].to(D) * d / x.numel()
        torch.testing.assert_close(x.grad, want)
        assert bool((x.grad[6:] == 0).all())
        assert float((-x.grad[:6, 0]).min()) > 0, "descent moves toward the winners' mean (+x)"
    xw.grad = xl.grad = None
    same, _ = pf.ddpo_loss(xw, xl, keep, real.velocity, fw.velocity, fw.velocity, t=t, noise=eps)
    same.backward()
    assert float(xw.grad.abs().max()) == 0 and float(xl.grad.abs().max()) == 0
    xw.grad = None
    tied, _ = pf.ddpo_loss(xw, xl, torch.zeros(8, dtype=torch.bool), real.velocity, fw.velocity, fl.velocity, t=t, noise=eps)
    tied.backward()
    assert float(xw.grad.abs().max()) == 0


def test_distillation_dpo_fits_each_fake_to_its_side_and_flash_reward_only_drops_dmd(monkeypatch):
    """distillation_dpo: the winners' fake is fitted on winners (higher column score) and the losers' on
    losers, ties dropped; the generator reads both (frozen) and the teacher. flash_dmd with dmd_weight=0
    never calls dmd_loss (reward-only), with dmd_weight > 0 it does, with the stage-I fake frozen."""
    from distill_lab.methods.step import reward as R

    exp = FakeExp()
    base = R.train_stage1(exp, steps=1, batch=8)
    calls = {"fit": [], "ddpo": [], "joint": []}
    orig_fit, orig_ddpo, orig_joint = pf.fake_score_loss, pf.ddpo_loss, pf.joint_reward_loss

    def fit(fake, x, *a, **k):
        calls["fit"].append((fake, x.detach().clone()))
        return orig_fit(fake, x, *a, **k)

    def ddpo(*a, **k):
        calls["ddpo"].append((a, [p.requires_grad for p in a[4].parameters()] + [p.requires_grad for p in a[5].parameters()]))
        return orig_ddpo(*a, **k)

    monkeypatch.setattr(pf, "fake_score_loss", fit)
    monkeypatch.setattr(pf, "ddpo_loss", ddpo)
    G = pf.train_distillation_dpo(exp, steps=2, base=base, batch=16, critic_updates=1, dmd_weight=0.0,
                                  score=lambda x: x[:, 0].detach())
    wins = [x for f, x in calls["fit"] if f is G.fake_win]
    loses = [x for f, x in calls["fit"] if f is G.fake_lose]
    assert len(wins) == len(loses) == 2 and not any(f is G.fake for f, _ in calls["fit"])
    for w, l in zip(wins, loses):
        assert w.shape == l.shape and float(w[:, 0].mean()) > float(l[:, 0].mean())
    for a, flags in calls["ddpo"]:
        assert a[3] == exp.velocity and a[4] is G.fake_win and a[5] is G.fake_lose and not any(flags)
        assert bool((a[0][:, 0] >= a[1][:, 0]).all())
    seen = []
    monkeypatch.setattr(pf, "joint_reward_loss", lambda *a, **k: (seen.append(a), orig_joint(*a, **k))[1])
    pf.train_flash_dmd(exp, steps=1, base=base, batch=8, dmd_weight=0.0)
    assert seen[-1][5] == 0.0 and seen[-1][4] == 0.05
    G2 = pf.train_flash_dmd(exp, steps=1, base=base, batch=8)
    assert seen[-1][5] == 1.0 and seen[-1][2] is G2.fake and seen[-1][1] == exp.velocity
    assert G2.fake is not base.fake, "the stage-I student is copied, not changed"


# ------------------------------------------------------------------------------------ R_dm / GNDM
def test_group_advantages_closed_form_and_identical_rewards_give_zero():
    """(r - group mean) / (group std + eps) per consecutive group; identical rewards give zero advantage (a
    mean over the whole batch, or a missing centring, fails)."""
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0], dtype=D)
    a = pf.group_advantages(r, 4)
    g = r[:4]
    torch.testing.assert_close(a[:4], (g - g.mean()) / (g.std() + 1e-8))
    assert bool((a[4:] == 0).all())
    with pytest.raises(ValueError, match="group >= 2"):
        pf.group_advantages(r, 3)


def test_dm_reward_is_minus_the_dmd_direction_dotted_with_the_centred_sample():
    """R_i = -<g_i, x_i - mean_group x> with g_i DMD's normalised direction at x_i, each group sharing its t and
    noise; a group of identical samples has zero reward and zero advantage; the fake equal to the teacher gives
    zero reward (a sign flip, an uncentred sample, or per-sample noise fails)."""
    real, fake = _gauss([1.0, -1.0]), _gauss([-0.5, 0.5])
    x = torch.randn(12, 2, dtype=D)
    t, eps = torch.rand(3, dtype=D) * 0.9, torch.randn(3, 2, dtype=D)
    r = pf.dm_reward(x, real.velocity, fake.velocity, 4, t=t, noise=eps)
    tt, ee = t.repeat_interleave(4), eps.repeat_interleave(4, 0)
    xt = (1 - tt[:, None]) * ee + tt[:, None] * x
    x_real = denoise(real.velocity, xt, tt)
    g = (denoise(fake.velocity, xt, tt) - x_real) / (x - x_real).abs().mean(1, keepdim=True)
    centred = x - x.view(3, 4, 2).mean(1).repeat_interleave(4, 0)
    torch.testing.assert_close(r, -(g * centred).sum(1))
    same = x[:1].repeat(8, 1)
    r_same = pf.dm_reward(same, real.velocity, fake.velocity, 4)
    assert float(r_same.abs().max()) == 0 and float(pf.group_advantages(r_same, 4).abs().max()) == 0
    assert float(pf.dm_reward(x, real.velocity, real.velocity, 4).abs().max()) < 1e-12
    with pytest.raises(ValueError, match="divide the batch"):
        pf.dm_reward(x, real.velocity, fake.velocity, 5)


def test_policy_logp_and_clipped_surrogate_closed_forms():
    """log pi = -|x - mean|^2 / (2 sigma^2); the surrogate is -mean min(rho A, clip(rho) A): at rho = 1 its gradient
    is -mean(A grad logp), and a ratio already past the clip in the advantage's direction gives no gradient."""
    x, m = torch.randn(6, 2, dtype=D), torch.randn(6, 2, dtype=D, requires_grad=True)
    lp = pf.gaussian_policy_logp(x, m, 0.5)
    torch.testing.assert_close(lp, -(x - m).pow(2).sum(1) / 0.5)
    adv = torch.tensor([1.0, -1.0, 2.0, 0.0, -0.5, 0.3], dtype=D)
    loss, info = pf.clipped_policy_loss(lp, lp.detach(), adv)
    loss.backward()
    grad1 = m.grad.clone()
    m.grad = None
    (-(adv * pf.gaussian_policy_logp(x, m, 0.5)).mean()).backward()
    torch.testing.assert_close(grad1, m.grad)
    assert info["ratio"] == pytest.approx(1.0)
    lp_new = torch.zeros(2, dtype=D, requires_grad=True)
    loss, info = pf.clipped_policy_loss(lp_new, torch.tensor([-1.0, 1.0], dtype=D), torch.tensor([1.0, -1.0], dtype=D))
    loss.backward()
    assert float(lp_new.grad.abs().max()) == 0 and info["clipped"] == 1.0
    with pytest.raises(ValueError, match="positive"):
        pf.gaussian_policy_logp(x, m, 0.0)


def test_gndm_fits_the_fake_to_policy_samples_reuses_them_and_mixes_the_external_reward(monkeypatch):
    """gndm: the fake fits the perturbed policy samples the rewards are read on; the generator takes `reuse`
    steps per batch against the samples' old log-probabilities; without a reward only R_dm's advantages enter,
    with one the reward's group advantages are added times reward_weight."""
    from distill_lab.methods.step import reward as R

    exp = FakeExp()
    base = R.train_stage1(exp, steps=1, batch=8)
    seen = {"fit": [], "dm": [], "adv": [], "loss": []}
    orig = {k: getattr(pf, k) for k in ("fake_score_loss", "dm_reward", "group_advantages", "clipped_policy_loss")}

    def spy(name, key, pick):
        def wrapper(*a, **k):
            seen[key].append(pick(a))
            return orig[name](*a, **k)
        monkeypatch.setattr(pf, name, wrapper)

    spy("fake_score_loss", "fit", lambda a: a[1])
    spy("dm_reward", "dm", lambda a: (a[0], a[1:]))
    spy("group_advantages", "adv", lambda a: a[0])
    spy("clipped_policy_loss", "loss", lambda a: a)
    G = pf.train_gndm(exp, steps=1, base=base, group=4, n_groups=2, reuse=3, critic_updates=1)
    x, args = seen["dm"][0]
    assert seen["fit"][0] is x and args[0] == exp.velocity and args[1] is G.fake and args[2] == 4
    assert len(seen["loss"]) == 3 and all(a[1] is seen["loss"][0][1] for a in seen["loss"]), "old log-probs reused"
    assert len(seen["adv"]) == 1
    seen["adv"].clear()
    seen["loss"].clear()
    pf.train_gndm(exp, steps=1, base=base, group=4, n_groups=2, reuse=1, reward=lambda y: y[:, 0], reward_weight=0.5)
    assert len(seen["adv"]) == 2
    a_dm, a_ext = orig["group_advantages"](seen["adv"][0], 4), orig["group_advantages"](seen["adv"][1], 4)
    torch.testing.assert_close(seen["loss"][0][2], a_dm + 0.5 * a_ext)
