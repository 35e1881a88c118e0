"""Tests of the shared core: scale switch, toy data, flows and samplers, metrics, training loop."""

import math

import pytest
import torch

from distill_lab.core import flows
from distill_lab.core.scale import get_scale
from distill_lab.core.train import TrainingDiverged, fit, load_or_train
from distill_lab.methods.step.students import ConsistencyFunction, FlowMap, OneStepGenerator
from distill_lab.metrics import samples as metrics
from distill_lab.nets.mlp import TimeMLP
from distill_lab.nets.utils import n_params
from distill_lab.toy2d import data as toy2d

SHAPES = [(2,), (3, 8, 8)]


# ------------------------------------------------------------------ scale
def test_scale_from_env_and_argument(monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_SCALE", "ci")
    assert get_scale().name == "ci"
    assert get_scale("gpu").name == "gpu"  # an argument wins over the environment
    monkeypatch.delenv("DISTILL_LAB_SCALE")
    assert get_scale().name == "default"
    sc = get_scale("ci")
    assert sc.pick(ci=1, default=2, gpu=3) == 1
    assert get_scale("default").teacher_steps > sc.teacher_steps


def test_device_switch_picks_the_device_or_says_what_exists(monkeypatch):
    """``$DISTILL_LAB_DEVICE`` chooses the device of every scale (an argument still wins); a device
    this machine lacks is refused at once, naming the variable and what to set instead."""
    monkeypatch.setenv("DISTILL_LAB_DEVICE", "cpu")
    assert get_scale("ci").device == "cpu"
    assert get_scale("ci", device="meta").device == "meta"
    monkeypatch.setenv("DISTILL_LAB_DEVICE", " ")
    assert get_scale("ci").device == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("DISTILL_LAB_DEVICE", "banana")
    with pytest.raises(ValueError, match=r"\$DISTILL_LAB_DEVICE='banana' is not a torch device"):
        get_scale("ci")
    monkeypatch.setenv("DISTILL_LAB_DEVICE", f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(ValueError, match=r"usable CUDA device\(s\); unset DISTILL_LAB_DEVICE or set it to cpu"):
        get_scale("ci")


def test_scale_unknown_name_says_what_to_do(monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_SCALE", "huge")
    with pytest.raises(ValueError, match=r"unknown scale 'huge' \(from \$DISTILL_LAB_SCALE\).*ci, default, gpu"):
        get_scale()


# ------------------------------------------------------------------ toy data
@pytest.mark.parametrize("name", list(toy2d.DATASETS))
def test_builtin_datasets_are_reproducible_2d_and_unit_scaled(name):
    a = toy2d.sample_data(name, 2000, seed=3)
    b = toy2d.sample_data(name, 2000, seed=3)
    c = toy2d.sample_data(name, 2000, seed=4)
    assert a.shape == (2000, 2) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0.3 < a.std(0).min() and a.std(0).max() < 2.0


def test_user_callable_stands_in_for_a_dataset():
    ring = lambda n: torch.randn(n, 2) / torch.randn(n, 2).norm(dim=1, keepdim=True)  # noqa: E731
    x = toy2d.sample_data(ring, 100, seed=0)
    y = toy2d.sample_data(ring, 100, seed=0)
    assert x.shape == (100, 2) and torch.equal(x, y)


def test_bad_datasets_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown toy dataset 'nope'.*checkerboard"):
        toy2d.get_dataset("nope")
    with pytest.raises(ValueError, match=r"returned shape \(10,\).*\[n, d\]"):
        toy2d.sample_data(lambda n: torch.zeros(n), 10)
    with pytest.raises(ValueError, match="NaN or inf"):
        toy2d.sample_data(lambda n: torch.full((n, 2), float("nan")), 10)


# ------------------------------------------------------------------ flows
def test_gaussian_flow_velocity_is_the_time_derivative_of_its_flow_map():
    g = flows.GaussianLinearFlow(mu=torch.tensor([1.0, -0.5]), sigma=0.3)
    x = torch.randn(64, 2)
    s, t = torch.rand(64) * 0.5, 0.5 + torch.rand(64) * 0.4
    h = 1e-3
    fd = (g.flow_map(x, s, t + h) - g.flow_map(x, s, t - h)) / (2 * h)
    assert torch.allclose(fd, g.velocity(g.flow_map(x, s, t), t), atol=1e-3)
    # semigroup and identity
    u = (s + t) / 2
    assert torch.allclose(g.flow_map(g.flow_map(x, s, u), u, t), g.flow_map(x, s, t), atol=1e-5)
    assert torch.allclose(g.flow_map(x, s, s), x)


def test_gaussian_flow_marginals_match_the_interpolant():
    g = flows.GaussianLinearFlow(mu=1.5, sigma=0.5)
    gen = torch.Generator().manual_seed(0)
    n, t = 200_000, torch.tensor(0.7)
    xt = flows.interpolate(torch.randn(n, 1, generator=gen), g.sample_data(n, (1,), generator=gen), t.expand(n))
    pushed = g.sample_marginal(n, t.expand(n), (1,), generator=gen)
    assert abs(xt.mean() - pushed.mean()) < 0.01 and abs(xt.std() - pushed.std()) < 0.01


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2)])
def test_samplers_converge_at_their_order_and_count_nfe(method, order):
    g = flows.GaussianLinearFlow(mu=1.0, sigma=0.4)
    x0 = torch.randn(256, 2, dtype=torch.float64)
    exact = g.flow_map(x0, torch.zeros(256, dtype=torch.float64), torch.ones(256, dtype=torch.float64))
    errs = []
    for nfe in (32, 64, 128):
        cv = flows.CountingVelocity(g.velocity)
        x = flows.sample_ode(cv, x0, nfe, method)
        assert cv.nfe == nfe
        errs.append((x - exact).abs().max().item())
    rate = math.log2(errs[1] / errs[2])
    assert rate > order - 0.25, (errs, rate)  # at least the method's order (midpoint superconverges here)
    assert errs[2] < errs[0]


def test_sampler_rejects_bad_nfe_and_names():
    v = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="nfe=3 must be a positive multiple of 2"):
        flows.sample_ode(v, torch.zeros(2, 2), 3, "heun")
    with pytest.raises(ValueError, match="unknown sampler 'rk9'"):
        flows.sample_ode(v, torch.zeros(2, 2), 3, "rk9")


@pytest.mark.parametrize("shape", SHAPES)
def test_flow_matching_loss_is_minimised_by_the_exact_velocity(shape):
    g = flows.GaussianLinearFlow(mu=0.8, sigma=0.5)
    gen = torch.Generator().manual_seed(1)
    x1 = g.sample_data(4096, shape, generator=gen)
    x0 = torch.randn(x1.shape, generator=gen)
    t = torch.rand(4096, generator=gen)
    exact = flows.flow_matching_loss(g.velocity, x1, x0, t)
    worse = flows.flow_matching_loss(lambda x, t: g.velocity(x, t) * 1.1, x1, x0, t)
    # the conditional loss keeps an irreducible variance, so compare against a perturbed field
    assert exact < worse
    # its minimiser is the conditional mean: the residual is uncorrelated with functions of x_t
    xt = flows.interpolate(x0, x1, t)
    resid = (x1 - x0) - g.velocity(xt, t)
    assert resid.mean().abs() < 0.05


def test_score_and_denoiser_from_velocity_match_closed_form():
    g = flows.GaussianLinearFlow(mu=1.0, sigma=0.5)
    x, t = torch.randn(16, 2), torch.full((16,), 0.4)
    a2 = g.a(t)[:, None] ** 2
    score = -(x - t[:, None] * g.mu) / a2
    assert torch.allclose(flows.score_from_velocity(g.velocity, x, t), score, atol=1e-5)
    # E[x1 | x_t] for jointly Gaussian (x_t, x1)
    cov = t[:, None] * g.sigma ** 2
    mean = g.mu + cov / a2 * (x - t[:, None] * g.mu)
    assert torch.allclose(flows.denoise(g.velocity, x, t), mean, atol=1e-5)


def test_expand_t_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"shape \[B\]=\[4\]"):
        flows.expand_t(torch.zeros(3), torch.zeros(4, 2))


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("shape", SHAPES)
def test_wrappers_are_shape_generic_and_keep_their_boundary_conditions(shape):
    d = math.prod(shape)
    x = torch.randn(5, *shape)
    fm = FlowMap(TimeMLP(d, 32, 2, n_times=2))
    s = torch.rand(5)
    assert fm(x, s, s).shape == x.shape and torch.allclose(fm(x, s, s), x)
    cf = ConsistencyFunction(TimeMLP(d, 32, 2))
    assert torch.allclose(cf(x, torch.ones(5)), x)
    assert OneStepGenerator(TimeMLP(d, 32, 2))(x).shape == x.shape


def test_from_net_starts_as_the_teacher_and_jvps_match_finite_differences():
    torch.manual_seed(0)
    teacher = TimeMLP(2, 32, 2).double()
    fm = FlowMap(TimeMLP.from_net(teacher, 2)).double()
    x, s, t = torch.randn(8, 2).double(), torch.rand(8).double(), torch.rand(8).double()
    assert torch.allclose(fm.velocity(x, s), teacher(x, s), atol=1e-5)
    assert torch.allclose(fm.net(x, s, t), teacher(x, s), atol=1e-5)
    h = 1e-6  # float64 central differences; the time features reach frequency 128*pi
    _, dt = fm.jvp_t(x, s, t)
    assert torch.allclose(dt, (fm(x, s, t + h) - fm(x, s, t - h)) / (2 * h), atol=1e-5)
    _, ds = fm.jvp_s(x, s, t)
    assert torch.allclose(ds, (fm(x, s + h, t) - fm(x, s - h, t)) / (2 * h), atol=1e-5)
    v = torch.randn(8, 2).double()
    _, dx = fm.jvp_x(x, s, t, v)
    assert torch.allclose(dx, (fm(x + h * v, s, t) - fm(x - h * v, s, t)) / (2 * h), atol=1e-5)
    assert n_params(teacher) == sum(p.numel() for p in teacher.parameters())


def test_network_rejects_wrong_input_size_and_time_count():
    net = TimeMLP(2, 16, 1, n_times=2)
    with pytest.raises(ValueError, match="takes 2 time argument"):
        net(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="built for inputs of size 2"):
        net(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3))


# ------------------------------------------------------------------ metrics
def test_sliced_w2_of_a_shift_matches_closed_form():
    x = torch.randn(5000, 2, generator=torch.Generator().manual_seed(0))
    a = torch.tensor([0.6, 0.8])  # |a| = 1; mean over directions of (a . theta)^2 = |a|^2 / 2 in 2D
    d = metrics.sliced_w2(x + a, x, n_proj=1000)  # Monte Carlo error over directions ~0.008
    assert abs(d - 1 / math.sqrt(2)) < 0.03
    assert metrics.sliced_w2(x, x) == 0.0


def test_noise_floor_is_small_and_a_different_distribution_is_far():
    draw = lambda n, seed: toy2d.sample_data("checkerboard", n, seed=seed)  # noqa: E731
    floor = metrics.noise_floor(draw, 2000)
    other = metrics.sliced_w2(toy2d.sample_data("moons", 2000, seed=5), draw(2000, 6))
    assert 0 < floor < other / 5
    e_floor = metrics.noise_floor(draw, 1000, metric="energy")
    e_other = metrics.energy_distance(toy2d.sample_data("moons", 1000, seed=5), draw(1000, 6))
    assert abs(e_floor) < e_other / 5


def test_energy_distance_of_gaussians_matches_closed_form_in_1d():
    # for N(0,1) vs N(m,1): E|X-Y| with X-Y ~ N(m, 2); E|X-X'| = 2/sqrt(pi)
    gen = torch.Generator().manual_seed(0)
    m = 1.0
    x, y = torch.randn(4000, 1, generator=gen), torch.randn(4000, 1, generator=gen) + m
    s = math.sqrt(2)
    e_abs = s * math.sqrt(2 / math.pi) * math.exp(-m**2 / (2 * s**2)) + m * math.erf(m / (s * math.sqrt(2)))
    exact = 2 * e_abs - 2 * (2 / math.sqrt(math.pi))
    assert abs(metrics.energy_distance(x, y) - exact) < 0.03


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="different spaces"):
        metrics.sliced_w2(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.sliced_w2(torch.full((4, 2), float("nan")), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="same shape"):
        metrics.coupled_error(torch.zeros(4, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.get_metric("fid")


# ------------------------------------------------------------------ training loop
def test_nan_guard_names_the_method_and_step():
    def step(i):
        return torch.tensor(float("nan") if i == 7 else 1.0)

    with pytest.raises(TrainingDiverged, match="my-method: the loss became nan at step 7 of 20"):
        fit(step, 20, desc="my-method", progress=False)


def test_fit_logs_dict_losses():
    hist = fit(lambda i: {"loss": torch.tensor(1.0 / (i + 1)), "aux": 2.0}, 10, log_every=3, progress=False)
    assert hist["step"] == [0, 3, 6, 9] and hist["aux"] == [2.0] * 4 and hist["loss"][-1] == pytest.approx(0.1)


def test_load_or_train_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_CACHE", str(tmp_path))
    calls = []

    def train(m):
        calls.append(1)
        with torch.no_grad():
            m.weight.fill_(3.0)

    a = load_or_train("lin", {"k": 1}, lambda: torch.nn.Linear(2, 2), train, verbose=False)
    b = load_or_train("lin", {"k": 1}, lambda: torch.nn.Linear(2, 2), train, verbose=False)
    load_or_train("lin", {"k": 2}, lambda: torch.nn.Linear(2, 2), train, verbose=False)
    assert len(calls) == 2 and torch.equal(a.weight, b.weight) and float(b.weight[0, 0].detach()) == 3.0


def test_paired_differences_seed_by_seed_and_the_verdict_reads_them():
    from distill_lab.core.bench import gap_verdict, paired

    g, s = paired([1.0, 2.0, 4.0], [0.5, 1.0, 3.0])  # differences 0.5, 1.0, 1.0
    assert g == pytest.approx(2.5 / 3) and s == pytest.approx(float(torch.tensor([0.5, 1.0, 1.0]).std()))
    with pytest.raises(ValueError, match="one base value a seed"):
        paired([1.0, 2.0], [1.0])
    assert gap_verdict(-0.3, 0.1) == "lower" and gap_verdict(0.3, 0.1) == "higher"
    assert gap_verdict(0.05, 0.1) == "within the spread" and gap_verdict(-0.05, 0.1, within="same") == "same"
    assert gap_verdict(-0.3, 0.1, "closer", "further") == "closer"
