"""Known answers for the consistency family (``methods.step.consistency``) and rCM (``methods.step.rcm``).

``test_consistency.py`` checks that each residual vanishes at the exact objects of a Gaussian linear flow;
here each loss is recomputed independently in float64 (per-sample squared distances, explicit weighted
means, closed-form tangents of a linear network), the validation is checked one invalid input at a time,
and the recipes' training loops are run for a few steps on a stub experiment while the losses they call
are wrapped to record their arguments (the grid curriculum, the drawn cells, the tangent warm-up ramp,
the normalisation constant, the learning rate).
"""

import pytest
import torch
from spies import record, record_optimizer
from torch import nn

from distill_lab.core.flows import GaussianLinearFlow, expand_t, interpolate
from distill_lab.core.scale import Scale
from distill_lab.core.train import fit
from distill_lab.methods.step import consistency
from distill_lab.methods.step.consistency import (_check_x_t, _grid_size, _info, _mse_per_sample, _t_uniform,
                                                  cd_loss, consistency_tangent, ct_loss, ctm_diagonal_loss,
                                                  ctm_loss, ode_step, scm_loss, segment_end, train_cd, train_ct,
                                                  train_scm, tscd_loss)
from distill_lab.methods.step.dmd import dmd_loss
from distill_lab.methods.step.rcm import rcm_losses
from distill_lab.methods.step.students import ConsistencyFunction
from distill_lab.nets.mlp import TimeMLP

D64 = torch.float64
G = GaussianLinearFlow(mu=1.5, sigma=0.5)


def pert_f(x, t):
    """Not G's consistency function (its residuals are non-zero and differ from sample to sample)."""
    return G.consistency(x, t) + 0.3 * (1 - expand_t(t, x)) * x.pow(2)


def pert_X(x, s, t):
    return G.flow_map(x, s, t) + 0.3 * expand_t(t - s, x) * x.pow(2)


def draw(n=32, shape=(2,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=D64), (1.5 + 0.5 * torch.randn(n, *shape, generator=g)).to(D64)


def per_sample_sq(a, b):
    """Independent per-sample mean squared distance: a loop over samples."""
    return torch.stack([((ai - bi) ** 2).mean() for ai, bi in zip(a, b)])


def weights(n, seed=1):
    return 0.2 + 2.0 * torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=D64)


# ------------------------------------------------------------------ helpers
def test_mse_per_sample_is_a_per_sample_mean_over_all_entries():
    """Catches a wrong reduction (over the batch too) or a reshape by the wrong dimension."""
    a, b = torch.randn(4, 3, 2, dtype=D64), torch.randn(4, 3, 2, dtype=D64)
    out = _mse_per_sample(a, b)
    assert out.shape == (4,)
    torch.testing.assert_close(out, per_sample_sq(a, b))


def test_info_detaches_tensors_and_passes_other_values_through():
    """Catches ``.detach()`` called on plain numbers."""
    x = torch.ones(2, requires_grad=True) * 2
    out = _info(a=x, b=1.5, c="s")
    assert not out["a"].requires_grad and torch.equal(out["a"], x.detach())
    assert out["b"] == 1.5 and out["c"] == "s"


def test_check_x_t_rejects_a_time_of_the_wrong_rank_even_with_the_right_batch():
    """``t: [B, 1]`` has the right first size but is not ``[B]``: rejected (``or``, not ``and``)."""
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"must be a scalar or have shape \[B\]=\[4\]"):
        _check_x_t(x, torch.full((4, 1), 0.5))
    with pytest.raises(ValueError, match=r"shape \[B\]=\[4\]"):
        _check_x_t(x, torch.full((3,), 0.5))
    torch.testing.assert_close(_check_x_t(x, 0.25), torch.full((4,), 0.25))


def test_check_x_t_error_names_the_shape_or_type_it_got():
    """The message shows a tensor's shape, or a non-tensor's type."""
    with pytest.raises(ValueError, match=r"got torch\.Size\(\[3\]\); add a batch dimension"):
        _check_x_t(torch.randn(3), 0.5)
    with pytest.raises(ValueError, match=r"got <class 'list'>; add a batch dimension"):
        _check_x_t([1.0, 2.0], 0.5)


def test_t_uniform_is_u_0_0999():
    """``t ~ U[0, 0.999)``: the same draw as ``0.999 * rand`` and never at or above 0.999."""
    torch.manual_seed(3)
    t = _t_uniform(100_000, "cpu")
    torch.manual_seed(3)
    torch.testing.assert_close(t, torch.rand(100_000) * 0.999)
    assert float(t.max()) < 0.999 and float(t.max()) > 0.998 and float(t.min()) >= 0


def test_ode_step_closed_forms_and_heun_default():
    """With ``v(x, t) = t`` Heun is exact, ``x + (t^2 - s^2) / 2``; Euler is ``x + (t - s) s``.
    Catches a wrong default method and a misspelt ``"euler"`` branch."""
    x = torch.randn(5, 2, dtype=D64)
    s, t = torch.full((5,), 0.2, dtype=D64), torch.full((5,), 0.7, dtype=D64)

    def v(xx, tt):
        return expand_t(tt, xx).expand_as(xx)

    torch.testing.assert_close(ode_step(v, x, s, t), x + (0.49 - 0.04) / 2)
    torch.testing.assert_close(ode_step(v, x, s, t, "heun"), x + (0.49 - 0.04) / 2)
    torch.testing.assert_close(ode_step(v, x, s, t, "euler"), x + 0.5 * 0.2)


def test_check_order_is_strict_for_grid_pairs():
    """``t = t_next`` is not a grid cell: rejected (strict ``<``), while ``u = s`` is allowed in CTM."""
    x = torch.randn(4, 2)
    t = torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="t < t_next"):
        cd_loss(G.consistency, G.consistency, None, x, t, t.clone(), teacher_step=G.flow_map)
    with pytest.raises(ValueError, match="t < t_next"):
        ct_loss(G.consistency, G.consistency, x, x, t, t.clone())
    loss, _ = ctm_loss(G.flow_map, G.flow_map, None, x, t, t + 0.2, t + 0.2, teacher_step=G.flow_map)
    assert loss < 1e-10


# ------------------------------------------------------------------ CD
def test_cd_loss_is_the_weighted_mean_of_per_sample_distances():
    """``L = mean_b w_b |f(x_t, t) - f_ema(Phi(x_t; t -> t_next), t_next)|^2 / D``; catches ``per / w``,
    an ignored weight, and a wrong ``info["gap"]``."""
    x0, x1 = draw()
    t = 0.8 * torch.rand(32, generator=torch.Generator().manual_seed(2), dtype=D64)
    t_next = t + 0.1 + 0.1 * t
    xt = interpolate(x0, x1, t)
    w = weights(32)
    per = per_sample_sq(pert_f(xt, t), G.consistency(G.flow_map(xt, t, t_next), t_next))
    loss, info = cd_loss(pert_f, G.consistency, None, xt, t, t_next, teacher_step=G.flow_map, weight=w)
    torch.testing.assert_close(loss, (per * w).mean())
    assert torch.equal(info["loss"], loss)
    torch.testing.assert_close(info["gap"], (0.1 + 0.1 * t).mean())
    plain, _ = cd_loss(pert_f, G.consistency, None, xt, t, t_next, teacher_step=G.flow_map)
    torch.testing.assert_close(plain, per.mean())


def test_cd_loss_names_t_next_in_its_errors():
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    with pytest.raises(ValueError, match=r"^t_next must lie in \[0, 1\]"):
        cd_loss(G.consistency, G.consistency, None, x, t, t + 0.7, teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"^t_next must be a scalar or have shape"):
        cd_loss(G.consistency, G.consistency, None, x, t, torch.full((3,), 0.7), teacher_step=G.flow_map)


# ------------------------------------------------------------------ CT
def test_ct_loss_is_the_weighted_mean_of_per_sample_distances():
    """``L = mean_b w_b |f(x_t, t) - f_ema(x_{t_next}, t_next)|^2 / D`` with one shared ``x0, x1``."""
    x0, x1 = draw(shape=(3, 2))
    t = 0.8 * torch.rand(32, generator=torch.Generator().manual_seed(4), dtype=D64)
    t_next = t + 0.15
    w = weights(32)
    per = per_sample_sq(pert_f(interpolate(x0, x1, t), t), G.consistency(interpolate(x0, x1, t_next), t_next))
    loss, info = ct_loss(pert_f, G.consistency, x0, x1, t, t_next, weight=w)
    torch.testing.assert_close(loss, (per * w).mean())
    assert torch.equal(info["loss"], loss)
    plain, _ = ct_loss(pert_f, G.consistency, x0, x1, t, t_next)
    torch.testing.assert_close(plain, per.mean())


def test_ct_loss_errors_name_their_argument():
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    with pytest.raises(ValueError, match=r"^t_next must lie in \[0, 1\]"):
        ct_loss(G.consistency, G.consistency, x, x, t, t + 0.7)
    with pytest.raises(ValueError, match=r"^t_next must be a scalar or have shape"):
        ct_loss(G.consistency, G.consistency, x, x, t, torch.full((3,), 0.7))
    with pytest.raises(ValueError, match=r"t < t_next for every sample"):
        ct_loss(G.consistency, G.consistency, x, x, t, t - 0.1)


# ------------------------------------------------------------------ sCM
class LinearNet(nn.Module):
    """``F(x, t) = a x + b t`` (float64): along ``dx/dt = v``, ``dF/dt = a v + b`` exactly."""

    def __init__(self, a, b):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=D64))
        self.b = nn.Parameter(torch.tensor(b, dtype=D64))

    def forward(self, x, t):
        return self.a * x + self.b * expand_t(t, x)


def linear_tangent(net, x, t, r=1.0):
    """Closed form of ``d/dt [x + (1 - t) F]`` along ``G.velocity``, with warm-up ``r`` on ``(1 - t) dF/dt``."""
    v = G.velocity(x, t)
    te = expand_t(t, x)
    with torch.no_grad():
        F = net(x, t)
        return (v - F) + r * (1 - te) * (net.a * v + net.b)


def scm_setup(n=24, seed=5):
    x0, x1 = draw(n, seed=seed)
    t = 0.9 * torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=D64)
    return interpolate(x0, x1, t), t


def test_consistency_tangent_matches_the_closed_form_and_returns_f_under_warmup():
    """``(f(x_t, t), df/dt)`` for ``f = x + (1 - t)(a x + b t)``, for ``r = 1`` and ``r = 0.4``; catches a
    wrong ``f(x_t, t)`` in the warm-up branch (sign, factor, ``1 + t``)."""
    xt, t = scm_setup()
    f = ConsistencyFunction(LinearNet(0.7, [0.3, -0.2]))
    with torch.no_grad():
        fx_ref = f(xt, t)
    for r in (1.0, 0.4, 0.0):
        fx, dfdt = consistency_tangent(f, G.velocity, xt, t, r)
        torch.testing.assert_close(fx, fx_ref)
        torch.testing.assert_close(dfdt, linear_tangent(f.net, xt, t, r))


def scm_closed_form(dfdt, c, w=None):
    rms = dfdt.pow(2).reshape(dfdt.shape[0], -1).mean(1).sqrt()
    per = rms.pow(2) / (rms + c).pow(2) if c else rms.pow(2)
    return (per * w).mean() if w is not None else per.mean(), rms.mean()


def test_scm_loss_value_is_the_mean_squared_normalised_tangent():
    """``L = mean_b w_b rms_b^2 / (rms_b + c)^2`` (``c = 0`` or ``None``: ``mean_b rms_b^2``), with the tangent
    taken at warm-up ``r``; catches a dropped warm-up, normalisation always on, ``per / w``, a lost
    ``info["loss"]``."""
    xt, t = scm_setup()
    f = ConsistencyFunction(LinearNet(0.7, [0.3, -0.2]))
    w = weights(24)
    for r in (1.0, 0.3):
        dfdt = linear_tangent(f.net, xt, t, r)
        for c in (0.1, 0.5):
            loss, info = scm_loss(f, G.velocity, xt, t, tangent_warmup=r, norm_const=c, weight=w)
            exp_loss, exp_rms = scm_closed_form(dfdt, c, w)
            torch.testing.assert_close(loss, exp_loss)
            torch.testing.assert_close(info["dfdt_rms"], exp_rms)
            assert torch.equal(info["loss"], loss)
        for c in (0.0, None):
            loss, _ = scm_loss(f, G.velocity, xt, t, tangent_warmup=r, norm_const=c)
            torch.testing.assert_close(loss, scm_closed_form(dfdt, 0.0)[0])
    loss, _ = scm_loss(f, G.velocity, xt, t)  # defaults: r = 1, c = 0.1, no weight
    torch.testing.assert_close(loss, scm_closed_form(linear_tangent(f.net, xt, t), 0.1)[0])


def test_scm_loss_takes_the_tangent_of_f_target():
    """With ``f_target`` the exact consistency function the tangent is zero, so the loss is zero even for a
    wrong ``f``; with ``f`` itself it is not."""
    xt, t = scm_setup()
    loss, info = scm_loss(pert_f, G.velocity, xt, t, f_target=G.consistency)
    assert float(loss) < 1e-20 and float(info["dfdt_rms"]) < 1e-10
    own, _ = scm_loss(pert_f, G.velocity, xt, t)
    assert float(own) > 1e-3


def test_scm_loss_tangent_warmup_range():
    """``r`` in ``[0, 1]``: both ends accepted, anything outside rejected."""
    xt, t = scm_setup()
    f = ConsistencyFunction(LinearNet(0.7, [0.3, -0.2]))
    loss0, _ = scm_loss(f, G.velocity, xt, t, tangent_warmup=0.0)
    torch.testing.assert_close(loss0, scm_closed_form(linear_tangent(f.net, xt, t, 0.0), 0.1)[0])
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"tangent_warmup must be in \[0, 1\]"):
            scm_loss(f, G.velocity, xt, t, tangent_warmup=bad)


# ------------------------------------------------------------------ Hyper-SD
def test_tscd_loss_is_the_weighted_mean_of_per_sample_distances():
    """``L = mean_b w_b |X(x_t, t, e) - X_ema(Phi(x_t; t -> t_next), t_next, e)|^2 / D``."""
    x0, x1 = draw()
    n = torch.randint(0, 8, (32,), generator=torch.Generator().manual_seed(6))
    t, t_next = (n / 8).to(D64), ((n + 1) / 8).to(D64)
    e = segment_end(t, 2)
    xt = interpolate(x0, x1, t)
    w = weights(32)
    per = per_sample_sq(pert_X(xt, t, e), G.flow_map(G.flow_map(xt, t, t_next), t_next, e))
    loss, info = tscd_loss(pert_X, G.flow_map, None, xt, t, t_next, e, teacher_step=G.flow_map, weight=w)
    torch.testing.assert_close(loss, (per * w).mean())
    assert torch.equal(info["loss"], loss)
    plain, _ = tscd_loss(pert_X, G.flow_map, None, xt, t, t_next, e, teacher_step=G.flow_map)
    torch.testing.assert_close(plain, per.mean())


def test_tscd_loss_checks_each_time_by_name():
    """``t_next`` may equal the segment end but not pass it; each error names its argument."""
    x, t = torch.randn(4, 2), torch.full((4,), 0.25)
    args = (G.flow_map, G.flow_map, None, x)
    ok, _ = tscd_loss(*args, t, t + 0.25, t + 0.25, teacher_step=G.flow_map)  # t_next == seg_end: allowed
    assert ok < 1e-10
    with pytest.raises(ValueError, match=r"t_next < seg_end"):
        tscd_loss(*args, t, t + 0.25, t + 0.2, teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"t_next < seg_end"):
        tscd_loss(*args, t, torch.full((4,), 0.6), torch.full((4,), 0.5), teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"t < t_next for every sample"):
        tscd_loss(*args, t, t - 0.1, t + 0.25, teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"^t_next must lie in \[0, 1\]"):
        tscd_loss(*args, t, t + 0.9, t + 0.25, teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"^t_next must be a scalar"):
        tscd_loss(*args, t, torch.full((3,), 0.5), t + 0.25, teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"^seg_end must lie in \[0, 1\]"):
        tscd_loss(*args, t, t + 0.25, t + 0.9, teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"^seg_end must be a scalar"):
        tscd_loss(*args, t, t + 0.25, torch.full((3,), 0.5), teacher_step=G.flow_map)


# ------------------------------------------------------------------ CTM
def test_ctm_loss_is_the_weighted_mean_in_data_space():
    """``L = mean_b w_b |X(X(x_t, t, s), s, 1) - X(X_ema(x_hat_u, u, s), s, 1)|^2 / D`` (plain callable:
    the outer map is the callable itself)."""
    x0, x1 = draw()
    g = torch.Generator().manual_seed(7)
    t = 0.5 * torch.rand(32, generator=g, dtype=D64)
    u = t + 0.2
    s = torch.minimum(u + 0.5 * torch.rand(32, generator=g, dtype=D64), torch.ones(32, dtype=D64))
    xt = interpolate(x0, x1, t)
    one = torch.ones(32, dtype=D64)
    w = weights(32)
    pred = pert_X(pert_X(xt, t, s), s, one)
    target = pert_X(G.flow_map(G.flow_map(xt, t, u), u, s), s, one)
    per = per_sample_sq(pred, target)
    loss, info = ctm_loss(pert_X, G.flow_map, None, xt, t, u, s, teacher_step=G.flow_map, weight=w)
    torch.testing.assert_close(loss, (per * w).mean())
    assert torch.equal(info["loss"], loss)
    plain, _ = ctm_loss(pert_X, G.flow_map, None, xt, t, u, s, teacher_step=G.flow_map)
    torch.testing.assert_close(plain, per.mean())


def test_ctm_loss_teacher_takes_n_solver_steps():
    """``n_solver_steps`` Heun steps from ``t`` to ``u``: ``2 n`` teacher calls, and the solved point is
    what the EMA target reads."""
    x = torch.randn(8, 2, dtype=D64)
    t, u, s = (torch.full((8,), c, dtype=D64) for c in (0.1, 0.5, 0.8))
    calls, seen = [], []

    def v(xx, tt):
        calls.append(1)
        return G.velocity(xx, tt)

    def X_target(xx, a, b):
        seen.append(xx.clone())
        return G.flow_map(xx, a, b)

    ctm_loss(G.flow_map, X_target, v, x, t, u, s, "heun", n_solver_steps=3)
    assert len(calls) == 6
    ref = x
    for k in range(3):
        a, b = 0.1 + 0.4 * k / 3, 0.1 + 0.4 * (k + 1) / 3
        ref = ode_step(G.velocity, ref, torch.full((8,), a, dtype=D64), torch.full((8,), b, dtype=D64))
    torch.testing.assert_close(seen[0], ref)


def test_ctm_loss_checks_each_time_by_name():
    x, t = torch.randn(4, 2), torch.full((4,), 0.2)
    args = (G.flow_map, G.flow_map, None, x, t)
    with pytest.raises(ValueError, match=r"^u must lie in \[0, 1\]"):
        ctm_loss(*args, t + 0.9, t + 0.3, teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"^u must be a scalar"):
        ctm_loss(*args, torch.full((3,), 0.5), t + 0.3, teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"^s must lie in \[0, 1\]"):
        ctm_loss(*args, t + 0.3, t + 0.9, teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"^s must be a scalar"):
        ctm_loss(*args, t + 0.3, torch.full((3,), 0.5), teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"t < u for every sample"):
        ctm_loss(*args, t.clone(), t + 0.3, teacher_step=G.flow_map)
    with pytest.raises(ValueError, match=r"u <= s for every sample"):
        ctm_loss(*args, t + 0.3, t + 0.2, teacher_step=G.flow_map)


def test_ctm_diagonal_loss_data_target_is_x1_minus_x0():
    """Flow matching on the diagonal: with ``V = 0`` the loss is ``mean (x1 - x0)^2``; with ``V = x1 - x0``
    (the conditional velocity of these very pairs) it is zero."""
    x0, x1 = draw(shape=(3, 2))
    t = torch.rand(32, generator=torch.Generator().manual_seed(8), dtype=D64)
    loss, info = ctm_diagonal_loss(lambda x, tt: torch.zeros_like(x), x0, x1, t)
    torch.testing.assert_close(loss, (x1 - x0).pow(2).mean())
    assert torch.equal(info["loss"], loss)
    zero, _ = ctm_diagonal_loss(lambda x, tt: x1 - x0, x0, x1, t)
    assert float(zero) == 0.0


# ------------------------------------------------------------------ recipes, instrumented
class StubExp:
    """What the consistency recipes read from an experiment, with a closed-form teacher and no training."""

    def __init__(self, batch=64):
        self.scale = Scale("ci", teacher_steps=1, width=8, depth=1, batch=batch, student_steps=1, eval_n=16,
                           n_proj=4, device="cpu")
        self.velocity = G.velocity
        self.hist = None

    def student_net(self, n_times=1):
        return TimeMLP(2, 8, 1, n_times)

    new_net = student_net

    def data_batch(self, n=None):
        return G.sample_data(n or self.scale.batch)

    def noise_batch(self, n=None):
        return torch.randn(n or self.scale.batch, 2)

    def fit(self, step, n_steps, desc):
        if n_steps > 20:  # the tests ask for a few steps: more means the step count was miswired
            raise AssertionError(f"{desc}: asked for {n_steps} steps")
        self.hist = fit(step, n_steps, desc=desc, progress=False)
        return self.hist


class FewStepsScale(Scale):
    """The ci scale with every step count it picks cut to 2 (other picks unchanged)."""

    def pick(self, ci, default, gpu):
        v = super().pick(ci, default, gpu)
        return 2 if isinstance(v, int) and v >= 100 else v


def test_grid_size_doubles_in_equal_phases():
    """``N`` doubles from ``n0`` and ends at ``n1``, each value held for an equal share of the steps."""
    assert [_grid_size(i, 30, 4, 16) for i in range(30)] == [4] * 10 + [8] * 10 + [16] * 10
    assert [_grid_size(i, 8, 4, 12) for i in range(8)] == [4] * 3 + [8] * 3 + [12] * 2
    assert [_grid_size(i, 4, 2, 3) for i in range(4)] == [2, 2, 3, 3]
    assert _grid_size(0, 10, 16, 8) == 8 and _grid_size(9, 10, 16, 16) == 16


@pytest.mark.parametrize("name", ["ct", "cd"])
def test_grid_recipes_draw_every_cell_of_the_current_grid(monkeypatch, name):
    """Each step draws ``t = n / N``, ``t_next = (n + 1) / N`` with ``n`` uniform on ``0..N-1`` (the first
    cell included) and ``N`` from the curriculum; the history logs ``N``; Adam gets the ``lr`` option."""
    calls = record(monkeypatch, consistency, f"{name}_loss")
    adams = record_optimizer(monkeypatch)
    exp = StubExp(batch=256)
    torch.manual_seed(0)
    (train_ct if name == "ct" else train_cd)(exp, steps=6, N0=2, N1=8, lr=3e-4, batch=256)
    assert len(calls) == 6 and [kw["lr"] for _, kw in adams] == [3e-4]
    expected_N = [2, 2, 4, 4, 8, 8]
    for (args, kw, _), N in zip(calls, expected_N):
        t, t_next = args[4], args[5]  # (f, f_ema, x0, x1, t, t_next) and (f, f_ema, v, x_t, t, t_next)
        n = t * N
        torch.testing.assert_close(n, n.round())
        assert set(n.round().long().tolist()) == set(range(N))
        torch.testing.assert_close(t_next - t, torch.full_like(t, 1 / N))
    assert exp.hist["N"] == [2, 8]  # logged at the first and the last step


def test_scm_recipe_ramps_the_tangent_warmup_and_passes_norm_const(monkeypatch):
    """``r_i = min(1, (i + 1) / n_warm)``, ``n_warm = max(1, int(warmup * steps))``; ``norm_const`` defaults
    to sCM's ``c = 0.1`` and follows its override; ``steps`` is honoured; the history logs each step's
    ``dfdt_rms``; Adam gets ``lr`` and sCM's betas ``(0.9, 0.99)``."""
    calls = record(monkeypatch, consistency, "scm_loss")
    adams = record_optimizer(monkeypatch)
    exp = StubExp(batch=16)
    torch.manual_seed(0)
    train_scm(exp, steps=4, warmup=0.75, lr=1e-3)
    assert [kw["tangent_warmup"] for _, kw, _ in calls] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert [kw["norm_const"] for _, kw, _ in calls] == [0.1] * 4
    assert [kw for _, kw in adams] == [{"lr": 1e-3, "betas": (0.9, 0.99)}]
    assert exp.hist["dfdt_rms"] == pytest.approx([float(calls[i][2][1]["dfdt_rms"]) for i in (0, 3)])
    assert exp.hist["loss"] == pytest.approx([calls[i][2][0].item() for i in (0, 3)])
    calls.clear()
    train_scm(exp, steps=4, warmup=0.25, norm_const=0.5)  # int(0.25 * 4) = 1: no ramp at all
    assert [kw["tangent_warmup"] for _, kw, _ in calls] == [1.0] * 4
    assert [kw["norm_const"] for _, kw, _ in calls] == [0.5] * 4
    calls.clear()
    train_scm(exp, steps=3, warmup=0.0)  # n_warm floors at 1
    assert [kw["tangent_warmup"] for _, kw, _ in calls] == [1.0] * 3
    calls.clear()
    exp.scale = FewStepsScale("ci", teacher_steps=1, width=8, depth=1, batch=16, student_steps=1, eval_n=16,
                              n_proj=4, device="cpu")
    train_scm(exp)  # no steps: the scale's pick
    assert len(calls) == 2


# ------------------------------------------------------------------ rCM
def _rcm_setup(B=8, seed=9):
    torch.manual_seed(seed)
    f = ConsistencyFunction(TimeMLP(2, 16, 2))
    teacher, fake = TimeMLP(2, 16, 2), TimeMLP(2, 16, 2)
    x_t, t, z = torch.randn(B, 2), torch.rand(B) * 0.999, torch.randn(B, 2)
    kw = dict(dmd_t=0.02 + 0.96 * torch.rand(B), dmd_noise=torch.randn(B, 2))
    return f, teacher, fake, x_t, t, z, kw


def test_rcm_defaults_jump_from_noise_with_unit_weight():
    """Default ``gen_t = 0`` (the one-step jump from noise) and ``lam = 1`` (the plain sum); the info
    reports DMD's ``grad_norm`` and the jump's output."""
    f, teacher, fake, x_t, t, z, kw = _rcm_setup()
    loss, info = rcm_losses(f, teacher, fake, x_t, t, z, **kw)
    ls, _ = scm_loss(f, teacher, x_t, t)
    x_gen = f(z, torch.zeros(8))
    ld, i_d = dmd_loss(x_gen, teacher, fake, t=kw["dmd_t"], noise=kw["dmd_noise"])
    torch.testing.assert_close(loss, ls + ld)
    torch.testing.assert_close(info["x_gen"], x_gen.detach())
    assert info["grad_norm"] == pytest.approx(i_d["grad_norm"])
    assert info["scm"] == pytest.approx(float(ls)) and info["dmd"] == pytest.approx(float(ld))


def test_rcm_passes_norm_const_and_normalize_on():
    """``norm_const`` reaches the sCM term and ``normalize`` the DMD term."""
    f, teacher, fake, x_t, t, z, kw = _rcm_setup()
    _, info = rcm_losses(f, teacher, fake, x_t, t, z, 0.0, 1.0, norm_const=0.0, normalize=False, **kw)
    ls, _ = scm_loss(f, teacher, x_t, t, norm_const=0.0)
    ld, i_d = dmd_loss(f(z, torch.zeros(8)), teacher, fake, t=kw["dmd_t"], noise=kw["dmd_noise"], normalize=False)
    ls_n, _ = scm_loss(f, teacher, x_t, t)
    ld_n, _ = dmd_loss(f(z, torch.zeros(8)), teacher, fake, t=kw["dmd_t"], noise=kw["dmd_noise"])
    assert info["scm"] == pytest.approx(float(ls)) and info["dmd"] == pytest.approx(float(ld))
    assert info["grad_norm"] == pytest.approx(i_d["grad_norm"])
    assert abs(float(ls) - float(ls_n)) > 1e-3 * float(ls) and abs(float(ld) - float(ld_n)) > 1e-3 * float(ld)


def test_rcm_checks_each_input_alone():
    """Each invalid input raises on its own, naming itself and what it got; a batch of one is fine."""
    f, teacher, fake, x_t, t, z, kw = _rcm_setup()
    with pytest.raises(ValueError, match=r"^x_t must be a batch shaped \[B, \.\.\.\] \(e\.g\. \[B, 2\]\), got \(8,\)"):
        rcm_losses(f, teacher, fake, torch.randn(8), t, z)
    with pytest.raises(ValueError, match=r"^x_t must be a batch .* got \(0, 2\)"):
        rcm_losses(f, teacher, fake, torch.randn(0, 2), t[:0], z)
    with pytest.raises(ValueError, match=r"^x_t must be a batch .* got list"):
        rcm_losses(f, teacher, fake, [[0.0, 1.0]], t, z)
    with pytest.raises(ValueError, match=r"^gen_x must be a batch .* got \(8,\)"):
        rcm_losses(f, teacher, fake, x_t, t, torch.randn(8))
    with pytest.raises(ValueError, match=r"^gen_t must be a scalar or shape \[B\]=\[8\]"):
        rcm_losses(f, teacher, fake, x_t, t, z, torch.full((5,), 0.5))
    with pytest.raises(ValueError, match=r"^gen_t must be"):
        rcm_losses(f, teacher, fake, x_t, t, z, -0.1)
    with pytest.raises(ValueError, match=r"^gen_t must be"):
        rcm_losses(f, teacher, fake, x_t, t, z, 1.0)
    loss, info = rcm_losses(f, teacher, fake, x_t[:1], t[:1], z[:1], torch.full((1,), 0.5),
                            dmd_t=kw["dmd_t"][:1], dmd_noise=kw["dmd_noise"][:1])
    torch.testing.assert_close(info["x_gen"], f(z[:1], torch.full((1,), 0.5)).detach())
    assert torch.isfinite(loss)


# ------------------------------------------------------------------ Hyper-SD, whole
def test_hypersd_full_runs_its_four_stages_in_order_and_ends_in_one_model(monkeypatch):
    """hypersd_full: the TSCD stages 8 -> 4 -> 2 -> 1, then the mixed-segment stage (TSCD with a segment count
    drawn from `segments` each step), the reward stage only when a reward is given, and the DMD stage on the
    one-step jump X(z, 0, 1) with the teacher as the real score and the fake frozen; the student is one flow
    map sampled with the same weights at every NFE (a stage skipped or run out of order, a DMD term on another
    jump, or separate weights per NFE fails)."""
    from distill_lab.methods.step import dmd as dmd_mod

    tscd = record(monkeypatch, consistency, "tscd_loss")
    dmd_calls = []
    orig = dmd_mod.dmd_loss

    def spy(x, real, fake, *a, **k):
        dmd_calls.append((x.detach().clone(), real, [p.requires_grad for p in fake.parameters()]))
        return orig(x, real, fake, *a, **k)

    monkeypatch.setattr(dmd_mod, "dmd_loss", spy)
    exp = StubExp(batch=32)
    torch.manual_seed(0)
    st = consistency.train_hypersd_full(exp, steps=8, N=8, unified_steps=6, reward_steps=3, dmd_steps=2,
                                        critic_updates=1)
    ends = [args[6] for args, _, _ in tscd]
    # TSCD stages: 2 steps each with k = 8, 4, 2, 1 (segment ends on that k's grid)
    for i, k in enumerate((8, 4, 2, 1)):
        for e in ends[2 * i:2 * i + 2]:
            torch.testing.assert_close(e * k, (e * k).round())
    assert len(tscd) == 8 + 6 + 2, "no reward stage without a reward; one mixed TSCD term per unified and DMD step"
    assert len(dmd_calls) == 2 and all(r == exp.velocity and not any(flags) for _, r, flags in dmd_calls)
    assert isinstance(st, consistency.FlowMap), "one flow map, sampled with the same weights at every NFE"
    assert set(st.stage_histories) == {"unified", "dmd"}
    tscd.clear()
    st2 = consistency.train_hypersd_full(exp, steps=4, N=8, unified_steps=1, reward_steps=3, dmd_steps=0,
                                         reward=lambda x: x[:, 0])
    assert "reward" in st2.stage_histories and st2.stage_histories["reward"]["steps"] == 3
    with pytest.raises(ValueError, match="unknown option"):
        consistency.train_hypersd_full(exp, steps=4, nope=1)
