"""Flow maps, any-step sampling and trajectory distillation checked against known answers.

Every loss here is re-computed independently in float64 on an *affine* flow-map network
``V(x, s, t) = A x + s b + t c``, whose derivatives are closed forms:

    X_{s,t}(x)       = x + (t - s) V(x, s, t)
    d/dt X_{s,t}(x)  = V(x, s, t) + (t - s) c
    d/ds X_{s,t}(x)  = -V(x, s, t) + (t - s) b
    grad_x X . v     = v + (t - s) A v

The time schedules and the pair sampler are checked against their documented closed forms and
shares (with ``torch.rand`` stubbed where a boundary draw matters), the validation one invalid input
at a time, and the shared training loop by an instrumented run on a fake experiment.
"""

import math

import pytest
import torch
from torch import nn

from distill_lab.methods.step import flow_map as fm
from distill_lab.methods.step import trajectory as tj
from distill_lab.methods.step.students import FlowMap, OneStepGenerator

D = torch.float64


class AffineV(nn.Module):
    """``V(x, s, t) = x A^T + s b + t c`` on ``x: [B, d]`` (float64)."""

    def __init__(self, d=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(0.5 * torch.randn(d, d, generator=g, dtype=D))
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=D))
        self.c = nn.Parameter(torch.randn(d, generator=g, dtype=D))

    def forward(self, x, s, t):
        return x @ self.A.T + s[:, None] * self.b + t[:, None] * self.c


def _V(net, x, s, t):  # the same formula, from the parameters, without the module
    return x @ net.A.detach().T + s[:, None] * net.b.detach() + t[:, None] * net.c.detach()


def _X(net, x, s, t):
    return x + (t - s)[:, None] * _V(net, x, s, t)


def _lin_velocity(x, t):
    """An analytic velocity ``b(x, t) = -0.7 x + (1 + t) m`` (a stand-in teacher)."""
    m = torch.tensor([0.3, -1.2, 0.5], dtype=x.dtype)
    return -0.7 * x + (1 + t)[:, None] * m


def _data(n=6, d=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D)
    s = 0.6 * torch.rand(n, generator=g, dtype=D)
    t = s + (1 - s) * torch.rand(n, generator=g, dtype=D)
    u = s + (t - s) * torch.rand(n, generator=g, dtype=D)
    return x, s, t, u


def _persample_mse(r):
    return (r ** 2).mean(dim=1)


# ================================================================ students.FlowMap / OneStepGenerator
def test_flowmap_forward_is_x_plus_t_minus_s_times_V():
    """Catches a flipped sign or (t + s) in X_{s,t}(x) = x + (t - s) V(x, s, t) (Boffi et al. eq. 2.6)."""
    net = AffineV()
    x, s, t, _ = _data()
    torch.testing.assert_close(FlowMap(net)(x, s, t), _X(net, x, s, t))
    torch.testing.assert_close(FlowMap(net)(x, s, s), x)  # X_{s,s} = id


def test_one_step_generator_is_z_plus_v_at_time_zero():
    """Catches G(z) = z - v(z, 0) (or a wrong time): G must be one Euler step of size 1 from t = 0."""
    seen = []

    class Net(nn.Module):
        def forward(self, z, t):
            seen.append(t.clone())
            return 2.0 * z + 1.0

    z = torch.randn(5, 3, dtype=D)
    torch.testing.assert_close(OneStepGenerator(Net())(z), z + 2.0 * z + 1.0)
    assert seen[0].shape == (5,) and bool((seen[0] == 0).all())


# ================================================================ jvp_t / jvp_s / jvp_x dispatch
def test_jvps_use_the_flow_maps_own_methods_with_scalar_times():
    """jvp_t/jvp_s/jvp_x must dispatch to FlowMap's methods (which accept float times); the
    torch.func fallback cannot take a Python float, so a broken dispatch raises here. Values are
    checked against the affine closed forms."""
    net = AffineV()
    m = FlowMap(net)
    x = _data()[0]
    s, t = 0.2, 0.7
    sb, tb = torch.full((6,), s, dtype=D), torch.full((6,), t, dtype=D)
    V = _V(net, x, sb, tb)
    X, dt = fm.jvp_t(m, x, s, t)
    torch.testing.assert_close(X, _X(net, x, sb, tb))
    torch.testing.assert_close(dt, V + (t - s) * net.c.detach())
    X, ds = fm.jvp_s(m, x, s, t)
    torch.testing.assert_close(ds, -V + (t - s) * net.b.detach())
    v = torch.randn_like(x)
    X, dx = fm.jvp_x(m, x, s, t, v)
    torch.testing.assert_close(dx, v + (t - s) * v @ net.A.detach().T)


def test_jvps_return_what_the_own_method_returns():
    """The dispatch returns the object's own method result (e.g. a map with a cheaper analytic jvp)."""

    class Own:
        def __call__(self, x, s, t):
            return x

        def jvp_t(self, x, s, t):
            return "X", "t"

        def jvp_s(self, x, s, t):
            return "X", "s"

        def jvp_x(self, x, s, t, v):
            return "X", "x"

    x = torch.zeros(2, 3)
    o = torch.zeros(2)
    assert fm.jvp_t(Own(), x, o, o) == ("X", "t")
    assert fm.jvp_s(Own(), x, o, o) == ("X", "s")
    assert fm.jvp_x(Own(), x, o, o, x) == ("X", "x")


# ================================================================ _times / _sq
def test_times_rejects_each_bad_input_alone():
    """Each validation clause alone must raise (catches `or` -> `and` in _times)."""
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="x must be a batch"):
        fm._times(torch.zeros(4), 0.5)  # a tensor, but not a batch
    with pytest.raises(ValueError, match="x must be a batch"):
        fm._times([[0.0, 0.0]], 0.5)  # not a tensor
    with pytest.raises(ValueError, match="time s must be a scalar or have shape"):
        fm._times(x, torch.full((4, 1), 0.5))  # right B, wrong rank
    with pytest.raises(ValueError, match="time s must be a scalar or have shape"):
        fm._times(x, torch.full((3,), 0.5))  # rank 1, wrong B
    with pytest.raises(ValueError, match="time s must lie in"):
        fm._times(x, float("nan"))  # not finite, neither < 0 nor > 1
    with pytest.raises(ValueError, match="time s must lie in"):
        fm._times(x, -0.1)
    with pytest.raises(ValueError, match="time s must lie in"):
        fm._times(x, 1.1)
    (tb,) = fm._times(x, 1.0)
    assert tb.shape == (4,) and bool((tb == 1).all())


def test_sq_is_the_per_sample_mean_of_squares():
    """_sq: [B, ...] -> [B], the mean of squares over each sample's trailing entries."""
    r = torch.arange(24, dtype=D).reshape(2, 3, 4) - 5
    torch.testing.assert_close(fm._sq(r), torch.stack([(r[i] ** 2).mean() for i in range(2)]))


# ================================================================ losses: known answers and info keys
def test_diagonal_loss_matches_flow_matching_on_the_diagonal():
    """|V(x_t, t, t) - (x1 - x0)|^2 with x_t = (1 - t) x0 + t x1; info['diagonal'] is the loss."""
    net = AffineV()
    x1, _, t, _ = _data(seed=2)
    x0 = torch.randn_like(x1)
    loss, info = fm.diagonal_loss(FlowMap(net), x1, x0, t)
    xt = (1 - t)[:, None] * x0 + t[:, None] * x1
    ref = _persample_mse(_V(net, xt, t, t) - (x1 - x0)).mean()
    torch.testing.assert_close(loss, ref)
    assert torch.equal(info["diagonal"], loss.detach())
    with pytest.raises(ValueError, match="time t must lie"):  # the error names the time it checks
        fm.diagonal_loss(FlowMap(net), x1, x0, t + 2)


def test_lagrangian_loss_and_info_match_the_closed_form():
    """d/dt X_{s,t}(x) - b(X_{s,t}(x), t), squared; info['residual_rms'] = sqrt(loss)."""
    net = AffineV()
    x, s, t, _ = _data()
    loss, info = fm.lagrangian_loss(FlowMap(net), _lin_velocity, x, s, t)
    dX = _V(net, x, s, t) + (t - s)[:, None] * net.c.detach()
    ref = _persample_mse(dX - _lin_velocity(_X(net, x, s, t), t)).mean()
    torch.testing.assert_close(loss, ref)
    assert torch.equal(info["lagrangian"], loss.detach())
    torch.testing.assert_close(info["residual_rms"], ref.sqrt())


def test_eulerian_loss_and_info_match_the_closed_form():
    """d/ds X_{s,t}(x) + grad_x X_{s,t}(x) . b(x, s), squared; info['residual_rms'] = sqrt(loss)."""
    net = AffineV()
    x, s, t, _ = _data()
    loss, info = fm.eulerian_loss(FlowMap(net), _lin_velocity, x, s, t)
    b = _lin_velocity(x, s)
    res = -_V(net, x, s, t) + (t - s)[:, None] * net.b.detach() + b + (t - s)[:, None] * (b @ net.A.detach().T)
    ref = _persample_mse(res).mean()
    torch.testing.assert_close(loss, ref)
    assert torch.equal(info["eulerian"], loss.detach())
    torch.testing.assert_close(info["residual_rms"], ref.sqrt())


def test_progressive_flow_map_loss_matches_the_two_jump_target():
    """X_{s,t}(x) - X_{u,t}(X_{s,u}(x)), squared; info['progressive'] is the loss."""
    net = AffineV()
    x, s, t, u = _data()
    loss, info = fm.progressive_flow_map_loss(FlowMap(net), x, s, u, t)
    ref = _persample_mse(_X(net, x, s, t) - _X(net, _X(net, x, s, u), u, t)).mean()
    torch.testing.assert_close(loss, ref)
    assert torch.equal(info["progressive"], loss.detach())


def test_progressive_flow_map_loss_ordering_each_violation_alone():
    """u < s alone and t < u alone must raise; the boundary cases u = s and u = t are allowed
    (catches `or` -> `and` and `<` -> `<=`), and a bad u is reported by its name."""
    m = FlowMap(AffineV())
    x = _data()[0]
    with pytest.raises(ValueError, match="s <= u <= t"):
        fm.progressive_flow_map_loss(m, x, 0.5, 0.3, 0.8)
    with pytest.raises(ValueError, match="s <= u <= t"):
        fm.progressive_flow_map_loss(m, x, 0.2, 0.8, 0.5)
    for s, u, t in ((0.3, 0.3, 0.8), (0.3, 0.8, 0.8)):  # a zero-length jump: X_{u,u} = id, loss 0
        loss, _ = fm.progressive_flow_map_loss(m, x, s, u, t)
        assert float(loss.detach()) < 1e-24
    with pytest.raises(ValueError, match="time u must lie"):
        fm.progressive_flow_map_loss(m, x, 0.2, 1.5, 1.0)


# ================================================================ time_schedule
def test_time_schedules_closed_forms():
    """uniform i/n, cosine (1 - cos(pi i/n)) / 2, late 1 - (1 - i/n)^2 (docstring), ends exact."""
    n = 5
    r = [i / n for i in range(n + 1)]
    forms = {"uniform": r,
             "cosine": [(1 - math.cos(math.pi * v)) / 2 for v in r],
             "late": [1 - (1 - v) ** 2 for v in r]}
    for name, ref in forms.items():
        ts = fm.time_schedule(n, name)
        assert ts.shape == (n + 1,)
        torch.testing.assert_close(ts.double(), torch.tensor(ref, dtype=D), atol=1e-6, rtol=0)
        assert float(ts[0]) == 0.0 and float(ts[-1]) == 1.0
    assert torch.equal(fm.time_schedule(2), torch.tensor([0.0, 0.5, 1.0]))  # default: uniform


def test_custom_schedule_used_as_given():
    """A valid custom schedule is returned unchanged (catches index or bound slips in its check)."""
    ts = fm.time_schedule(3, [0.0, 0.2, 0.7, 1.0])
    torch.testing.assert_close(ts, torch.tensor([0.0, 0.2, 0.7, 1.0]))
    torch.testing.assert_close(fm.time_schedule(1, torch.tensor([0.0, 1.0])), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("nfe, times", [
    (2, [0.0, 0.3, 0.6, 1.0]),   # wrong length only
    (2, [0.5, 0.75, 1.0]),       # does not start at 0 only
    (2, [0.0, 0.25, 0.5]),       # does not end at 1 only
    (3, [0.0, 0.5, 0.5, 1.0]),   # not strictly increasing only
])
def test_custom_schedule_each_defect_alone_raises(nfe, times):
    with pytest.raises(ValueError, match="custom schedule"):
        fm.time_schedule(nfe, times)


# ================================================================ anyflow_sample / AnyStepFlowMap
class SpyMap:
    """An affine flow map that records each (s, t) it is called with."""

    def __init__(self, net):
        self.net, self.calls = net, []

    def __call__(self, x, s, t):
        self.calls.append((s.clone(), t.clone()))
        return _X(self.net, x, s, t)


def test_anyflow_sample_follows_the_given_schedule_and_returns_its_path():
    """x <- X_{t_i, t_{i+1}}(x) on the requested schedule; the path holds z and every jump."""
    net = AffineV()
    z = _data()[0]
    spy = SpyMap(net)
    x, path = fm.anyflow_sample(spy, z, 3, "late", return_path=True)
    ts = [0.0, 5 / 9, 8 / 9, 1.0]
    ref = [z]
    for i in range(3):
        si, ti = torch.full((6,), ts[i], dtype=D), torch.full((6,), ts[i + 1], dtype=D)
        ref.append(_X(net, ref[-1], si, ti))
    assert path.shape == (4, 6, 3)
    torch.testing.assert_close(path, torch.stack(ref), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x, ref[-1], atol=1e-6, rtol=1e-6)
    for (s, t), a, b in zip(spy.calls, ts[:-1], ts[1:]):
        torch.testing.assert_close(s, torch.full((6,), a, dtype=D))
        torch.testing.assert_close(t, torch.full((6,), b, dtype=D))
    only = fm.anyflow_sample(SpyMap(net), z, 3, "late")
    assert isinstance(only, torch.Tensor)
    torch.testing.assert_close(only, x)


def test_any_step_flow_map_samples_uniformly_by_default():
    """AnyStepFlowMap's default schedule is uniform: two jumps 0 -> 1/2 -> 1."""
    net = AffineV()
    z = _data()[0]
    half, one, zero = (torch.full((6,), v, dtype=D) for v in (0.5, 1.0, 0.0))
    ref = _X(net, _X(net, z, zero, half), half, one)
    torch.testing.assert_close(fm.AnyStepFlowMap(net).sample(z, 2), ref)


# ================================================================ anyflow_onpolicy_loss
def _spy_ode(monkeypatch):
    calls = []
    real = fm.sample_ode

    def spy(velocity, x, nfe, method, t0, t1):
        calls.append(dict(nfe=nfe, method=method, t0=t0, t1=t1))
        return real(velocity, x, nfe, method, t0, t1)

    monkeypatch.setattr(fm, "sample_ode", spy)
    return calls


def test_onpolicy_loss_matches_rollout_then_teacher_jump(monkeypatch):
    """Roll the student out to t_k on the *given* schedule, then |X_{t_k,t_{k+1}}(x_k) - teacher(x_k)|^2.
    With a constant teacher velocity m the midpoint solution is exact: x_k + (t_{k+1} - t_k) m."""
    calls = _spy_ode(monkeypatch)
    net = AffineV()
    z = _data()[0]
    m = torch.tensor([0.4, -0.3, 1.1], dtype=D)
    spy = SpyMap(net)
    loss, info = fm.anyflow_onpolicy_loss(spy, lambda x, t: m.expand_as(x), z, nfe=3, k=2, schedule="late")
    ts = [0.0, 5 / 9, 8 / 9, 1.0]
    full = [torch.full((6,), v, dtype=D) for v in ts]
    xk = _X(net, _X(net, z, full[0], full[1]), full[1], full[2])
    ref = _persample_mse(_X(net, xk, full[2], full[3]) - (xk + (ts[3] - ts[2]) * m)).mean()
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(info["onpolicy"], loss.detach())
    assert len(calls) == 1 and calls[0]["method"] == "midpoint"
    assert calls[0]["t0"] == pytest.approx(8 / 9, abs=1e-6) and calls[0]["t1"] == pytest.approx(1.0)


@pytest.mark.parametrize("teacher_nfe, nfe, schedule", [(16, 4, "uniform"), (16, 4, "cosine"),
                                                        (2, 4, "uniform"), (2, 1, "uniform"), (40, 3, "late")])
def test_onpolicy_teacher_budget_share(monkeypatch, teacher_nfe, nfe, schedule):
    """Each jump gets an even midpoint budget >= 2 closest to teacher_nfe * (t_{k+1} - t_k)."""
    calls = _spy_ode(monkeypatch)
    net = AffineV()
    z = _data()[0]
    ts = fm.time_schedule(nfe, schedule)
    for k in range(nfe):
        fm.anyflow_onpolicy_loss(FlowMap(net), _lin_velocity, z, nfe, k, schedule, teacher_nfe)
        got = calls[-1]["nfe"]
        share = teacher_nfe * float(ts[k + 1] - ts[k])
        assert got % 2 == 0 and got >= 2
        assert got == 2 or abs(got - share) <= 1.0 + 1e-6


def test_onpolicy_teacher_nfe_validation_each_alone():
    """teacher_nfe too small (but even) raises, odd (but >= 2) raises, 2 is allowed."""
    m = FlowMap(AffineV())
    z = _data()[0]
    for bad in (0, 3):
        with pytest.raises(ValueError, match="teacher_nfe"):
            fm.anyflow_onpolicy_loss(m, _lin_velocity, z, 2, 0, teacher_nfe=bad)
    loss, _ = fm.anyflow_onpolicy_loss(m, _lin_velocity, z, 1, 0, teacher_nfe=2)
    assert torch.isfinite(loss)


# ================================================================ sample_pairs
def test_sample_pairs_validation_each_alone():
    for pe, pn in ((-0.1, 0.25), (0.25, -0.1), (0.6, 0.6)):
        with pytest.raises(ValueError, match="shares"):
            fm.sample_pairs(8, p_endpoints=pe, p_from_noise=pn)
    for pe, pn in ((0.0, 0.0), (0.5, 0.5), (1.0, 0.0), (0.0, 1.0)):  # boundary shares are valid
        s, t = fm.sample_pairs(8, p_endpoints=pe, p_from_noise=pn)
        assert s.shape == t.shape == (8,)


def test_sample_pairs_defaults_are_valid_and_draw_all_three_kinds():
    torch.manual_seed(0)
    s, t = fm.sample_pairs(4000)
    assert bool((s >= 0).all() and (s <= t).all() and (t <= 1).all())
    ends = (s == 0) & (t == 1)
    noise = (s == 0) & ~ends
    assert 0 < int(ends.sum()) < 4000 and 0 < int(noise.sum()) and int((s > 0).sum()) > 0


def _const_rand(monkeypatch, c):
    real = torch.rand

    def fake(n, device=None, **kw):
        return torch.full((n,), c, device=device)

    monkeypatch.setattr(torch, "rand", fake)
    return real


def test_sample_pairs_gap_is_u_to_the_gap_power_placed_uniformly(monkeypatch):
    """With every uniform draw U = 0.25 and no endpoint / from-noise share: gap = U^p,
    s = U (1 - gap), t = s + gap (docstring)."""
    _const_rand(monkeypatch, 0.25)
    for p in (0.5, 2.0):
        s, t = fm.sample_pairs(3, p_endpoints=0.0, p_from_noise=0.0, gap_power=p)
        gap = 0.25 ** p
        torch.testing.assert_close(s, torch.full((3,), 0.25 * (1 - gap)))
        torch.testing.assert_close(t, torch.full((3,), 0.25 * (1 - gap) + gap))


def test_sample_pairs_share_is_strictly_below_p(monkeypatch):
    """torch.rand draws from [0, 1), so a share p is `r < p`: a draw exactly at p belongs to the next
    kind (catches `<` -> `<=`, which would give a share larger than p, and p = 0 a nonzero share)."""
    _const_rand(monkeypatch, 0.5)
    gap_pair = (torch.full((2,), 0.25), torch.full((2,), 0.75))  # U = 0.5, power 1
    for pe, pn in ((0.5, 0.0), (0.0, 0.5), (0.0, 0.0)):
        s, t = fm.sample_pairs(2, p_endpoints=pe, p_from_noise=pn, gap_power=1.0)
        torch.testing.assert_close((s, t), gap_pair)
    s, t = fm.sample_pairs(2, p_endpoints=0.25, p_from_noise=0.5, gap_power=1.0)  # 0.5 < 0.75: from noise
    torch.testing.assert_close((s, t), (torch.zeros(2), torch.full((2,), 0.5)))
    s, t = fm.sample_pairs(2, p_endpoints=0.75, p_from_noise=0.0, gap_power=1.0)  # 0.5 < 0.75: endpoints
    torch.testing.assert_close((s, t), (torch.zeros(2), torch.ones(2)))


# ================================================================ _train_flow_map / _interp_batch
class FitExp:
    """A fake experiment whose fit runs the step and records its arguments."""

    def __init__(self):
        self.fits = []

    def fit(self, step, n, desc):
        self.fits.append((n, desc))
        return {"records": [step(i) for i in range(n)]}


class Params(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=D))
        self.b = nn.Parameter(torch.tensor([0.5, -0.5], dtype=D))


def _terms(student):
    def terms(i):
        loss = 100 * (student.a ** 2).sum() + 0 * student.b.sum()  # b: a zero (not missing) gradient
        return loss, {"extra": torch.tensor(float(i))}
    return terms


def test_train_flow_map_adam_lr_clip_and_history():
    """One step of Adam moves each parameter by lr against its gradient's sign; the gradient is clipped
    to norm 1; no weight decay by default (b, with zero gradient, stays); fit gets steps and desc; the
    history is fit's, with the loss and the terms' info in every record; the student comes back in eval."""
    exp, st = FitExp(), Params()
    a0, b0 = st.a.detach().clone(), st.b.detach().clone()
    out = fm._train_flow_map(exp, st, 1, 0.05, "my flow map", _terms(st))
    assert out is st and not st.training
    assert exp.fits == [(1, "my flow map")]
    torch.testing.assert_close(st.a.detach(), a0 - 0.05 * torch.sign(a0))
    torch.testing.assert_close(st.b.detach(), b0)
    assert float(st.a.grad.norm()) == pytest.approx(1.0, rel=1e-5)  # raw norm 200 |a| ~ 748, clipped to 1
    rec = st.history["records"][0]
    torch.testing.assert_close(rec["loss"], 100 * (a0 ** 2).sum())
    assert float(rec["extra"]) == 0.0


def test_train_flow_map_weight_decay_reaches_adam():
    """weight_decay adds wd * p to the gradient: b (zero loss gradient) then moves by lr against sign(b)."""
    exp, st = FitExp(), Params()
    b0 = st.b.detach().clone()
    fm._train_flow_map(exp, st, 1, 0.05, "wd", _terms(st), weight_decay=0.1)
    torch.testing.assert_close(st.b.detach(), b0 - 0.05 * torch.sign(b0))


def test_interp_batch_draws_one_data_point_per_time():
    """x = (1 - s) x0 + s x1 with one fresh data point per time s: at s = 1 the batch is the data."""
    asked = []

    class E:
        def data_batch(self, n=None):
            asked.append(n)
            return torch.full((n if n is not None else 99, 2), 7.0)

    x, x1 = fm._interp_batch(E(), torch.ones(5))
    assert asked == [5] and x1.shape == (5, 2)
    torch.testing.assert_close(x, x1)


# ================================================================ trajectory: info quantities
def test_trajectory_loss_coupled_is_mean_per_sample_distance():
    """info['coupled'] = mean over samples of |G(z) - ODE(z)| (Euclidean per sample)."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 2, 3, generator=g, dtype=D)
    b = torch.randn(5, 2, 3, generator=g, dtype=D)
    loss, info = tj.trajectory_loss(a, b)
    torch.testing.assert_close(loss, ((a - b) ** 2).mean())
    ref = torch.stack([(a[i] - b[i]).pow(2).sum().sqrt() for i in range(5)]).mean()
    torch.testing.assert_close(info["coupled"], ref)


def test_progressive_loss_endpoint_err_is_mean_distance_of_endpoints():
    """info['endpoint_err'] = mean over samples of |x + 2h v_S(x, t) - x''| with x'' two teacher
    Euler steps of size h (Salimans & Ho Algorithm 2, flow form)."""
    x = _data(n=5)[0]
    t = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4], dtype=D)
    h = torch.tensor([0.05, 0.1, 0.2, 0.25, 0.3], dtype=D)

    def student(x, t):
        return 0.3 * x + t[:, None]

    loss, info = tj.progressive_loss(student, _lin_velocity, x, t, h)
    xm = x + h[:, None] * _lin_velocity(x, t)
    xe = xm + h[:, None] * _lin_velocity(xm, t + h)
    end = x + 2 * h[:, None] * student(x, t)
    ref = torch.stack([(end[i] - xe[i]).norm() for i in range(5)]).mean()
    torch.testing.assert_close(info["endpoint_err"], ref)
    torch.testing.assert_close(loss, ((student(x, t) - (xe - x) / (2 * h[:, None])) ** 2).mean())
