"""The super-resolution track: the range/null split, the SR flow (any sampler keeps the LR image; with a
perfect LR condition and zero noise the teacher reproduces the HR image's downsampling), the image
metrics on cases with known answers, TAD-SR's and CTMSR's losses (their paths, times, signs and
stop-gradients), and both recipes end to end on a tiny experiment."""

import math

import pytest
import torch

from distill_lab.cifar import sr
from distill_lab.methods.step import superres as S
from distill_lab.metrics.images import hf_spectrum_error, psnr, radial_spectrum
from distill_lab.nets.unet import TimeUNet


def _images(n=6, res=8, seed=0):
    return torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def _tiny_velocity(seed=0, n_times=1):
    torch.manual_seed(seed)
    return sr.SRVelocity(TimeUNet(channels=3, cond_channels=3, base=8, mults=(1, 2), n_times=n_times, groups=4))


def test_range_and_null_parts_are_complementary_orthogonal_projections():
    x, y = _images(seed=1), _images(seed=2)
    P = sr.range_part
    assert torch.allclose(P(P(x)), P(x), atol=1e-6)
    assert torch.allclose(P(x) + sr.null_part(x), x)
    assert abs(float((P(x) * sr.null_part(x)).sum())) < 1e-4
    assert float((P(x) * y).sum()) == pytest.approx(float((x * P(y)).sum()), rel=1e-5)  # self-adjoint
    assert torch.allclose(sr.downsample(P(x)), sr.downsample(x), atol=1e-6)
    assert sr.upsample(torch.arange(4.0).reshape(1, 1, 2, 2)).tolist() == [[[[0, 0, 1, 1], [0, 0, 1, 1],
                                                                             [2, 2, 3, 3], [2, 2, 3, 3]]]]
    with pytest.raises(ValueError, match="divisible by 2"):
        sr.downsample(torch.zeros(1, 3, 7, 7))


@pytest.mark.parametrize("nfe,method", [(1, "euler"), (4, "euler"), (4, "midpoint")])
def test_every_sampler_of_the_sr_flow_keeps_the_lr_image(nfe, method):
    hr = _images()
    c = sr.range_part(hr)
    v = _tiny_velocity()
    # a perfect LR condition and zero noise: the output's downsampling is the LR image, exactly
    out = sr.sr_sample(v, c, torch.zeros_like(hr), nfe, method)
    assert torch.allclose(sr.downsample(out), sr.downsample(hr), atol=1e-5)
    out = sr.sr_sample(v, c, torch.randn_like(hr), nfe, method)  # and with noise on the null part too
    assert torch.allclose(sr.range_part(out), c, atol=1e-5)
    assert float(sr.null_part(out).abs().max()) > 1e-3  # the null part is filled in
    # without the projection a network moves the block averages: the guarantee comes from (I - P)
    raw = sr.sr_sample(lambda x, t, cond: v.net(x, t, cond=cond), c, torch.zeros_like(hr), nfe, method)
    assert float((sr.downsample(raw) - sr.downsample(hr)).abs().max()) > 1e-3


def test_the_committed_teacher_keeps_the_lr_image_and_matches_its_settings():
    loaded = sr.load_sr_teacher()
    m = loaded["manifest"]
    assert m["unet"] == {k: list(v) if isinstance(v, tuple) else v for k, v in
                         sr.sr_unet(sr.SR_SETTINGS["ci"]).config.items()}, \
        f"the committed SR teacher is stale: rebuild with `{sr.COMMAND} ci`"
    assert m["settings"]["steps"] == sr.SR_SETTINGS["ci"]["steps"] and m["factor"] == sr.FACTOR
    q = m["quality"]
    assert q[f"midpoint_{sr.SR_SETTINGS['ci']['ref_nfe']}"]["fd"] < q["upsampled_lr"]["fd"]
    hr = _images(4, 16, seed=3)
    out = sr.sr_sample(loaded["model"], sr.range_part(hr), torch.zeros_like(hr), 4, "midpoint")
    assert torch.allclose(sr.downsample(out), sr.downsample(hr), atol=1e-4)


def test_sr_flow_loss_target_and_sampler_input_checks():
    hr = _images(seed=4)
    noise, t = torch.randn_like(hr), torch.rand(hr.shape[0]) * 0.8 + 0.1
    x0 = sr.sr_start(sr.range_part(hr), noise)
    assert torch.allclose(sr.range_part(x0), sr.range_part(hr), atol=1e-6)

    def oracle(x, s, cond):  # recovers hr - x0 from x_t when the path is right
        return (x - x0) / s[:, None, None, None]

    assert float(sr.sr_flow_loss(oracle, hr, noise, t)) < 1e-8
    assert float(sr.sr_flow_loss(lambda x, s, cond: -oracle(x, s, cond), hr, noise, t)) > 0.1
    with pytest.raises(ValueError, match="midpoint"):
        sr.sr_sample(oracle, hr, noise, 3, "midpoint")
    with pytest.raises(ValueError, match="same shape"):
        sr.sr_start(hr, noise[:2])
    with pytest.raises(ValueError, match="cond_channels"):
        sr.SRVelocity(TimeUNet(channels=3, base=8, mults=(1,)))
    with pytest.raises(ValueError, match="cond"):
        TimeUNet(channels=3, base=8, mults=(1,), cond_channels=3)(hr, t)


def test_image_metrics_on_known_cases():
    ref = _images(8, 16, seed=5)
    assert torch.allclose(psnr(ref + 0.1, ref), torch.full((8,), 10 * math.log10(4 / 0.01)), atol=1e-3)
    k = 3  # a cosine of 3 cycles along the width puts its power on ring 3
    wave = torch.cos(2 * math.pi * k * torch.arange(16.0) / 16).expand(2, 3, 16, 16)
    spec = radial_spectrum(wave)
    assert int(spec.argmax()) == k and float(spec[k]) > 1e3 * float(spec[torch.arange(9) != k].max() + 1e-9)
    assert hf_spectrum_error(ref, ref, 5) == pytest.approx(0.0, abs=1e-9)
    assert hf_spectrum_error(2 * ref, ref, 5) == pytest.approx(math.log10(4), abs=1e-6)  # power x 4
    blurred = sr.range_part(ref)  # block averages carry less power at the highest rings
    assert hf_spectrum_error(blurred, ref, 5) > 0.3
    with pytest.raises(ValueError, match="ring"):
        hf_spectrum_error(ref, ref, 0)


def test_tadsr_distils_on_late_times_of_the_sr_path_and_its_sign():
    hr = _images(8, 8, seed=6)
    c = sr.range_part(hr)
    x = (c + 0.3 * sr.null_part(torch.randn_like(hr))).requires_grad_(True)
    seen = []

    def teacher(y, s, cond):
        seen.append((y, s))
        assert torch.equal(cond, c)
        return torch.zeros_like(y)

    e = sr.null_part(_images(8, 8, seed=60))  # a direction the LR image leaves open

    def fake(y, s, cond):  # predicts data shifted by +e: the outputs must move by -e
        return e / (1 - s)[:, None, None, None]

    loss, info = S.tadsr_loss(x, c, teacher, fake, t_lo=0.7)
    y, s = seen[0]
    assert float(s.min()) >= 0.7 and torch.allclose(sr.range_part(y), c, atol=1e-5)  # on the SR path
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert float((x.grad * e).sum()) > 0  # descent moves x along -e
    zero, info = S.tadsr_loss(x.detach(), c, teacher, teacher)
    assert info["grad_norm"] == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="t_lo"):
        S.tadsr_loss(x, c, teacher, fake, t_lo=1.0)


def test_tadsr_discriminator_sees_the_condition_and_real_images_on_the_same_times():
    hr = _images(8, 8, seed=7)
    c = sr.range_part(hr)
    x_fake = c.clone()
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, y, t, cond):
            calls.append((y, t, cond))
            return y.flatten(1).sum(1) * 0 + 1.0

    d = Recorder()
    loss, info = S.tadsr_discriminator_loss(d, x_fake, hr, c, t_lo=0.8)
    (yr, tr, cr), (yf, tf, cf) = calls[0], calls[1]
    assert torch.equal(tr, tf) and float(tr.min()) >= 0.8 and torch.equal(cr, c) and torch.equal(cf, c)
    assert torch.allclose(sr.range_part(yr), c, atol=1e-5) and torch.allclose(sr.range_part(yf), c, atol=1e-5)
    # D = +1 everywhere: softplus(-1) for the real images, softplus(+1) for the fakes
    assert float(loss) == pytest.approx(math.log1p(math.exp(-1)) + math.log1p(math.exp(1)), rel=1e-5)
    g, _ = S.tadsr_gan_loss(d, x_fake.requires_grad_(True), c)
    assert float(g.detach()) == pytest.approx(math.log1p(math.exp(-1)), rel=1e-5)
    disc = S.CondDiscriminator(3)
    assert disc(hr, torch.rand(8), c).shape == (8,)
    with pytest.raises(ValueError, match="cond"):
        disc(hr, torch.rand(8), c[:, :1])


def test_ctmsr_ct_loss_vanishes_at_the_exact_consistency_function_of_one_image():
    hr = _images(1, 8, seed=8).expand(6, -1, -1, -1).contiguous()  # a one-image data set: f*(x, t) = hr
    c = sr.range_part(hr)
    exact = S.SRConsistency(lambda x, t, cond: (hr - x) / (1 - t)[:, None, None, None])
    t = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9])
    loss, _ = S.ctmsr_ct_loss(exact, exact, hr, c, t, t + 0.05)
    assert float(loss) < 1e-10
    off = S.SRConsistency(lambda x, t, cond: (hr + 0.1 * t[:, None, None, None] - x) / (1 - t)[:, None, None, None])
    assert float(S.ctmsr_ct_loss(off, exact, hr, c, t, t + 0.05)[0]) > 1e-4
    # the target is under stop-gradient: only the online network's call carries a graph
    v = _tiny_velocity(1)
    f, f_t = S.SRConsistency(v), S.SRConsistency(_tiny_velocity(2))
    loss, _ = S.ctmsr_ct_loss(f, f_t, hr, c, t, t + 0.05)
    loss.backward()
    assert all(p.grad is None for p in f_t.parameters()) and v.net.stem.weight.grad is not None


def test_ctmsr_dtm_moves_outputs_from_the_fake_flow_to_the_real_one():
    hr = _images(8, 8, seed=9)
    c = sr.range_part(hr)
    x = (c + 0.2 * sr.null_part(torch.randn_like(hr))).requires_grad_(True)

    def real(y, s, cond):
        return torch.zeros_like(y)

    e = sr.null_part(_images(8, 8, seed=90))

    def fake(y, s, cond):
        return -e / (1 - s)[:, None, None, None]

    loss, info = S.ctmsr_dtm_loss(x, c, real, fake)
    loss.backward()
    assert float((x.grad * e).sum()) < 0  # descent moves x along +e
    _, same = S.ctmsr_dtm_loss(x.detach(), c, real, real)
    assert same["grad_norm"] == pytest.approx(0.0, abs=1e-7)


@pytest.fixture(scope="module")
def tiny_sr():
    data = {"train": _images(64, 16, seed=10), "test": _images(64, 16, seed=11)}
    exp = sr.SRExperiment("ci", teacher=_tiny_velocity(3), data=data, feature_fn=lambda x: x.mean(dim=(2, 3)),
                          eval_n=16, progress=False)
    exp.batch = 8
    return exp


def test_sr_experiment_measures_a_perfect_sr_at_its_floors(tiny_sr):
    perfect = tiny_sr.measure(tiny_sr.eval_hr)
    assert perfect["psnr"] == math.inf and perfect["hf"] == 0 and perfect["range_error"] == 0
    assert perfect["fd"] == pytest.approx(tiny_sr.floors["fd"])
    base = tiny_sr.baselines
    lr = base["upsampled LR"]
    assert lr["range_error"] < 1e-6 and lr["hf"] > 0.3 and lr["psnr"] < 30
    assert set(base) == {"upsampled LR", "teacher, 1 step", "teacher, 16 NFE"}
    with pytest.raises(ValueError, match="shape"):
        tiny_sr.measure(tiny_sr.eval_hr[:3])


@pytest.mark.parametrize("train,kw", [(S.train_tadsr, dict(critic_updates=1)),
                                      (S.train_ctmsr, dict(dtm_start=0.5, N1=8))])
def test_sr_recipes_train_and_keep_the_lr_image(tiny_sr, train, kw):
    st = train(tiny_sr, steps=4, **kw)
    r = tiny_sr.evaluate(st.sample)
    assert r["range_error"] < 1e-4 and math.isfinite(r["psnr"]) and math.isfinite(r["fd"])
    assert len(st.history["loss"]) >= 1
    with pytest.raises(ValueError, match="unknown option"):
        train(tiny_sr, steps=1, lr_gen=1.0)
    if train is S.train_ctmsr:
        assert st.real is not None and train(tiny_sr, steps=2, dtm_weight=0.0).real is None
        with pytest.raises(ValueError, match="init"):
            train(tiny_sr, steps=1, init="imagenet")


def test_sr_bench_rows_and_table(tiny_sr, monkeypatch):
    from distill_lab.core import bench, registry
    import distill_lab.cifar  # noqa: F401  (registers the track)

    assert "cifar-sr" in bench.TRACKS and {r.name for r in registry.recipes("cifar-sr")} == {"tadsr", "ctmsr"}

    def broken(exp, *a, **k):
        raise RuntimeError("boom")

    monkeypatch.setitem(registry.RECIPES, "broken-sr",
                        registry.Recipe("broken-sr", ("cifar-sr",), "test", "none", broken))
    orig = registry.RECIPES["tadsr"]
    monkeypatch.setitem(registry.RECIPES, "tadsr", registry.Recipe(
        "tadsr", orig.tracks, orig.family, orig.paper, lambda exp: orig.train(exp, steps=1, critic_updates=1)))
    rows = sr.run_sr_bench(tiny_sr, ["tadsr", "broken-sr"])
    assert [r["method"] for r in rows][:3] == ["[upsampled LR]", "[teacher, 1 step]", "[teacher, 16 NFE]"]
    assert set(sr.SR_ROW_KEYS) <= set(rows[0])
    ok, bad = rows[3], rows[4]
    assert ok["error"] is None and ok["range_error"] < 1e-4 and ok["value"] > 0
    assert bad["error"] == "RuntimeError: boom" and bad["value"] is None
    table = sr.format_sr_table(rows)
    assert "tadsr" in table and "failed: RuntimeError: boom" in table and "floors" in table


def _recording(monkeypatch, module, name, calls):
    """Wrap ``module.name`` so that each call's arguments are kept (tensors cloned) before it runs."""
    orig = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append([a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args])
        return orig(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def _with_recorded_batches(exp):
    import copy

    rec, batches = copy.copy(exp), []
    orig = exp.hr_batch

    def hr_batch(n=None):
        batches.append(orig(n))
        return batches[-1]

    rec.hr_batch = hr_batch
    return rec, batches


def test_tadsr_fake_score_fits_the_generators_outputs_and_the_discriminator_sees_real_images(tiny_sr, monkeypatch):
    exp, batches = _with_recorded_batches(tiny_sr)
    fm, disc, starts = [], [], []
    _recording(monkeypatch, S, "_fm_step", fm)
    _recording(monkeypatch, S, "tadsr_discriminator_loss", disc)
    orig_start = S.sr_start
    monkeypatch.setattr(S, "sr_start", lambda c, z, *a, **k: starts.append(orig_start(c, z, *a, **k)) or starts[-1])
    st = S.train_tadsr(exp, 1, critic_updates=1)
    hr, c = batches[0]
    x0 = starts[0]  # the generator's start in the critic step; the generator begins as the teacher's Euler step
    with torch.no_grad():
        expected = x0 + exp.teacher(x0, torch.zeros(len(x0)), cond=c)
    (_, vel, x_fit, cond), = fm[:1]
    assert vel is st.fake and torch.equal(cond, c)
    torch.testing.assert_close(x_fit, expected, atol=1e-5, rtol=1e-5)
    _, x_fake, x_real, cond_d, _t_lo = disc[0]
    torch.testing.assert_close(x_fake, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(x_real, hr) and torch.equal(cond_d, c)


def test_ctmsr_fits_the_real_velocity_to_hr_images_and_the_fake_one_to_the_outputs(tiny_sr, monkeypatch):
    import copy

    exp, batches = _with_recorded_batches(tiny_sr)
    fm, starts = [], []
    _recording(monkeypatch, S, "_fm_step", fm)
    orig_start = S.sr_start
    monkeypatch.setattr(S, "sr_start", lambda c, z, *a, **k: starts.append(orig_start(c, z, *a, **k)) or starts[-1])
    init = []
    orig_cons = S.SRConsistency
    monkeypatch.setattr(S, "SRConsistency", lambda net: init.append(copy.deepcopy(net)) or orig_cons(net))
    st = S.train_ctmsr(exp, 1, dtm_start=0.0)
    hr, c = batches[0]
    (_, real_v, real_x1, real_c), (_, fake_v, fake_x1, fake_c) = fm[:2]
    assert real_v is st.real and fake_v is st.fake and torch.equal(real_c, c) and torch.equal(fake_c, c)
    assert torch.equal(real_x1, hr)  # the real flow is the HR images'
    x0 = starts[2]  # after the CT pair's start and the real velocity's path start: the outputs' start
    with torch.no_grad():
        expected = orig_cons(init[0])(x0, 0.0, c)  # the online network before its first update
    torch.testing.assert_close(fake_x1, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fake_x1, hr)
