"""Transition Matching Distillation: an exact head makes few outer transitions exact in distribution on
the Gaussian-to-Gaussian flow (and one inner step collapses to the mean), the inner sampler's Euler
formula, the student's warm start, the stage-1 loss's target, reduction and stop-gradient, stage 2's
gradient path, the cost count, and the recipe end to end."""

import math

import pytest
import torch

from distill_lab.core.flows import interpolate, sample_ode
from distill_lab.core.scale import Scale
from distill_lab.methods.step import tmd
from distill_lab.nets.mlp import TimeMLP

M, SIGMA = 1.5, 0.5  # data N(M, SIGMA^2) per coordinate; noise N(0, 1)


def _posterior(x, t):
    """Mean and variance of Y = X1 - X0 given x_t = (1 - t) X0 + t X1, per coordinate."""
    vx = (1 - t) ** 2 + t ** 2 * SIGMA ** 2
    c = t * SIGMA ** 2 - (1 - t)
    return M + c / vx * (x - t * M), (SIGMA ** 2 + 1) - c ** 2 / vx


class ExactHead(tmd.TransitionStudent):
    """A TransitionStudent whose backbone passes ``(x, t)`` on and whose head is the exact x-prediction
    ``E[Y | y_s, x_t]`` of the Gaussian posterior of ``Y``: its inner flow samples that posterior."""

    def __init__(self, inner):
        torch.nn.Module.__init__(self)
        self.dim, self.inner, self.flow_map = 2, inner, False  # Euler steps of its instantaneous flow

    def features(self, x, t):
        return (x, torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0]).clone()), None

    def head(self, h, v, y, s, d=0.0):  # the instantaneous x-prediction, whatever d
        x, t = h
        mu, var = _posterior(x, t[:, None])
        s = torch.as_tensor(s, dtype=y.dtype).reshape(-1, 1)
        vy = (1 - s) ** 2 + s ** 2 * var  # Var(y_s | x_t), y_s = (1 - s) y0 + s Y
        return mu + s * var / vy * (y - s * mu)


@pytest.mark.parametrize("nfe", [1, 2])
def test_an_exact_head_makes_few_transitions_exact_and_one_inner_step_gives_the_mean(nfe):
    torch.manual_seed(0)
    z = torch.randn(40_000, 2)
    x = ExactHead(inner=200).sample(z, nfe)
    assert abs(float(x.mean()) - M) < 0.02 and abs(float(x.std()) - SIGMA) < 0.02
    # one inner step from independent noise can only take the posterior mean: the plain Euler step,
    # which at one transition puts every sample on the data mean (variance collapses)
    x1 = ExactHead(inner=1).sample(z, 1)
    assert torch.allclose(x1, torch.full_like(x1, M), atol=1e-5)
    # and at two transitions the mean-only sampler stays far too narrow where the exact one is not
    assert float(ExactHead(inner=1).sample(z, 2).std()) < 0.6 * SIGMA


def test_inner_sampler_is_euler_on_the_x_prediction_and_lands_on_the_last_prediction():
    st = ExactHead(inner=3)
    st.flow_map = True  # jumps of 1/3 read the head at d = 1/3
    calls = []

    def head(h, v, y, s, d):
        calls.append((float(s[0]), float(d[0])))
        return 2 * y + 1

    st.head = head
    y0 = torch.randn(4, 2)
    y = y0
    for j in range(3):
        s = j / 3
        y = y + (1 / 3) * ((2 * y + 1) - y) / (1 - s)
    out = st.inner_sample(None, None, y0)
    assert torch.allclose(out, y, atol=1e-6)
    assert [c[0] for c in calls] == pytest.approx([0, 1 / 3, 2 / 3])
    assert [c[1] for c in calls] == pytest.approx([1 / 3] * 3)
    calls.clear()
    st.flow_map = False  # Euler steps of the instantaneous flow: the same steps, the head read at d = 0
    assert torch.allclose(st.inner_sample(None, None, y0), y, atol=1e-6) and [c[1] for c in calls] == [0, 0, 0]
    st.head = lambda h, v, y, s, d: torch.full_like(y, 0.7)  # a head that ignores y: the result is its output
    assert torch.allclose(st.inner_sample(None, None, y0, inner=5), torch.full_like(y0, 0.7))
    v = torch.randn(4, 2)  # no inner step: the backbone's velocity, the plain Euler step
    assert torch.equal(st.inner_sample(None, v, y0, inner=0), v)
    with pytest.raises(ValueError, match=">= 0"):
        st.inner_sample(None, None, y0, inner=-1)


class LinearFlowHead(ExactHead):
    """A head whose instantaneous flow is linear, ``Y_hat(y, s, 0) = a y``, so the flow has the closed
    form ``y(s') = y(s) ((1 - s') / (1 - s))^(1 - a)``; at ``d > 0`` it returns the exact jump's
    x-prediction (plus ``bias``)."""

    def __init__(self, a=0.4, bias=0.0):
        super().__init__(inner=1)
        self.a, self.bias = a, bias

    def head(self, h, v, y, s, d=0.0):
        s = torch.as_tensor(s, dtype=y.dtype).reshape(-1, 1).expand(y.shape[0], 1)
        d = torch.as_tensor(d, dtype=y.dtype).reshape(-1, 1).expand(y.shape[0], 1)
        r = ((1 - s - d) / (1 - s)) ** (1 - self.a)
        exact = y * (1 + (r - 1) * (1 - s) / d.clamp_min(1e-12))
        return torch.where(d > 0, exact + self.bias, self.a * y)


def test_head_flow_map_loss_vanishes_at_the_exact_map_of_the_heads_own_flow():
    torch.manual_seed(4)
    y0, target = torch.randn(64, 2), torch.randn(64, 2)
    d = 2.0 ** -torch.randint(0, 3, (64,)).float()
    s = torch.floor(torch.rand(64) / d) * d
    h = v = torch.zeros(64, 2)
    exact, _ = tmd.head_flow_map_loss(LinearFlowHead(), h, v, y0, target, d, substeps=16000, s=s)
    off, _ = tmd.head_flow_map_loss(LinearFlowHead(bias=0.1), h, v, y0, target, d, substeps=16000, s=s)
    coarse, _ = tmd.head_flow_map_loss(LinearFlowHead(), h, v, y0, target, d, substeps=1, s=s)
    assert float(exact) < 1e-5 and float(off) > 100 * float(exact) and float(coarse) > 1e-3
    with pytest.raises(ValueError, match="inside"):
        tmd.head_flow_map_loss(LinearFlowHead(), h, v, y0, target, torch.full((64,), 0.5), s=torch.full((64,), 0.75))
    with pytest.raises(ValueError, match="substeps"):
        tmd.head_flow_map_loss(LinearFlowHead(), h, v, y0, target, d, substeps=0)
    # only the head learns its jumps: no gradient reaches the backbone's features through this loss
    st = tmd.TransitionStudent(_teacher(), head_width=16)
    torch.nn.init.normal_(st.head_out.weight, std=0.1)
    hh, vv = st.features(torch.randn(64, 2), torch.zeros(64))
    loss, _ = tmd.head_flow_map_loss(st, hh, vv, y0, target, d, substeps=4, s=s)
    loss.backward()
    assert st.head_out.weight.grad.abs().sum() > 0 and st.backbone[0].weight.grad is None


def _teacher(seed=0):
    torch.manual_seed(seed)
    return TimeMLP(2, 32, 2, 1, x_freq=2)


def test_student_starts_as_the_teachers_euler_sampler_whatever_the_inner_noise():
    teacher = _teacher()
    st = tmd.TransitionStudent(teacher, head_width=16, inner=3)
    z = torch.randn(64, 2)
    with torch.no_grad():
        for nfe in (1, 2, 4):
            assert torch.allclose(st.sample(z, nfe), sample_ode(teacher, z, nfe, "euler"), atol=1e-5)
        h, v = st.features(z, torch.full((64,), 0.3))
        assert torch.allclose(v, teacher(z, torch.full((64,), 0.3)), atol=1e-6)
    # the student's parameters are its own: training it leaves the teacher alone
    assert all(p.data_ptr() != q.data_ptr() for p in st.parameters() for q in teacher.parameters())
    with pytest.raises(ValueError, match="one-time TimeMLP"):
        tmd.TransitionStudent(TimeMLP(2, 32, 2, 2))
    with pytest.raises(ValueError, match="size 2"):
        st.features(torch.randn(3, 5), 0.1)


def test_cost_counts_backbone_once_and_the_head_per_inner_step():
    st = tmd.TransitionStudent(_teacher(), head_width=16, inner=4)
    full = sum(m.in_features * m.out_features for m in st.backbone.modules() if isinstance(m, torch.nn.Linear)) + 32 * 2
    head = (st.cost(1, 1) - 1) * full
    assert head > 0 and st.cost(1, 0) == pytest.approx(1.0)
    assert st.cost(2, 4) == pytest.approx(2 * (1 + 4 * head / full))
    assert st.cost(3) == pytest.approx(st.cost(3, 4))


def test_transition_matching_loss_target_reduction_and_stop_gradient():
    torch.manual_seed(1)
    B = 32
    x1, x0, y0 = torch.randn(B, 2), torch.randn(B, 2), torch.randn(B, 2)
    t, s = torch.rand(B) * 0.9, torch.rand(B) * 0.8 + 0.1
    seen = {}

    class Oracle(ExactHead):
        def features(self, x, tt):
            seen["x_t"] = x
            return x, torch.zeros_like(x)  # the head below reads neither

        def head(self, h, v, y, ss, d=0.0):  # recovers Y from y_s with the known y0: exact when the loss is right
            return (y - (1 - ss)[:, None] * y0) / ss[:, None]

    loss, _ = tmd.transition_matching_loss(Oracle(1), x1, t, s, x0, y0)
    assert float(loss) < 1e-8
    assert torch.allclose(seen["x_t"], interpolate(x0, x1, t))
    # a head off by a known amount: per-sample squared norms summed over coordinates, averaged over the batch
    st = tmd.TransitionStudent(_teacher(), head_width=16)
    x1g = x1.clone().requires_grad_(True)
    loss, info = tmd.transition_matching_loss(st, x1g, t, s, x0, y0)
    h, v = st.features(interpolate(x0, x1, t), t)
    assert torch.equal(info["h"], h.detach()) and torch.equal(info["v"], v.detach()) and not info["h"].requires_grad
    y_hat = st.head(h, v, interpolate(y0, x1 - x0, s), s)
    assert float(loss.detach()) == pytest.approx(float((y_hat - (x1 - x0)).detach().pow(2).sum(1).mean()), rel=1e-5)
    loss.backward()
    assert x1g.grad is None  # the teacher's samples are data: no gradient reaches them
    assert st.proj.weight.grad is not None and st.backbone[0].weight.grad is not None
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        tmd.transition_matching_loss(st, x1, t, torch.ones(B))


def test_stage_two_pushes_the_rollout_along_dmd_and_reaches_backbone_and_head():
    torch.manual_seed(2)
    st = tmd.TransitionStudent(_teacher(), head_width=16, inner=2)
    torch.nn.init.normal_(st.head_out.weight, std=0.1)
    real = _teacher(0)

    def fake(x, t):  # a fake score that predicts data shifted by +1: DMD pushes samples by -1 direction
        return real(x, t) + 1.0 / (1 - t)[:, None]

    z = torch.randn(64, 2)
    torch.manual_seed(5)
    loss, info = tmd.tmd_rollout(st, z, 2, real, fake)
    loss.backward()
    assert info["x"].shape == z.shape and not info["x"].requires_grad
    assert st.head_out.weight.grad.abs().sum() > 0 and st.backbone[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in real.parameters())
    # one small step on the loss moves the samples against the fake-minus-real difference (here +1)
    opt = torch.optim.SGD(st.parameters(), lr=1e-2)
    opt.step()
    torch.manual_seed(5)
    with torch.no_grad():
        x_new = st.rollout(z, 2)
    assert float((x_new - info["x"]).mean()) < 0
    # with the fake score equal to the teacher there is nothing to match
    st.zero_grad()
    loss, info = tmd.tmd_rollout(st, z, 2, real, real)
    assert info["grad_norm"] == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def tiny_exp():
    from distill_lab.toy2d.experiment import Toy2D
    sc = Scale("ci", teacher_steps=30, width=32, depth=2, batch=64, student_steps=10, eval_n=256,
               n_proj=16, device="cpu")
    return Toy2D("checkerboard", scale=sc, cache=False, progress=False)


def test_tmd_recipe_runs_both_stages_and_samples(tiny_exp):
    from distill_lab.core.registry import get_recipe
    r = get_recipe("tmd")
    st = r.train(tiny_exp, steps=3, pretrain=60, pool=256, batch=32, head_lr=3e-3)
    assert len(st.pretrain_history["loss"]) >= 2 and len(st.history["loss"]) >= 1
    assert st.pretrain_history["loss"][-1] < st.pretrain_history["loss"][0]
    assert st.fake is not None and st.config["inner"] == 4
    for nfe in r.nfes:
        assert math.isfinite(tiny_exp.evaluate(st.sample, nfe)["ratio"])
    only = r.train(tiny_exp, 0, pretrain=2, pool=64)  # stage 1 alone
    assert only.history == {}
    with pytest.raises(ValueError, match="unknown option"):
        r.train(tiny_exp, steps=1, inner_steps=3)


def test_tmd_fake_score_fits_the_students_rollouts_and_dmd_reads_a_fresh_one(tiny_exp, monkeypatch):
    import copy

    exp, noises = copy.copy(tiny_exp), []

    def noise_batch(n=None):
        noises.append(torch.randn(n or 64, 2))
        return noises[-1]

    exp.noise_batch = noise_batch
    fits, dmd = [], []
    orig_fit, orig_dmd = tmd.fake_score_loss, tmd.dmd_loss
    monkeypatch.setattr(tmd, "fake_score_loss",
                        lambda f, x, *a, **k: fits.append((f, x.detach().clone())) or orig_fit(f, x, *a, **k))
    monkeypatch.setattr(tmd, "dmd_loss", lambda x, r, f, *a, **k: dmd.append((x, r, f)) or orig_dmd(x, r, f, *a, **k))
    st = tmd.train_tmd(exp, 1, pretrain=0, critic_updates=1, batch=32, pool=64)
    # no stage 1: the head's output layer is zero, so the student is the teacher's 2-step Euler sampler
    critic_noise, student_noise = noises[1], noises[2]  # noises[0] drew the stage-1 pool
    (f, x_fit), = fits
    assert f is st.fake
    torch.testing.assert_close(x_fit, sample_ode(exp.teacher, critic_noise, 2, "euler"), atol=1e-5, rtol=1e-5)
    (x, real, fake), = dmd
    assert x.requires_grad and real == exp.velocity and fake is st.fake
    torch.testing.assert_close(x.detach(), sample_ode(exp.teacher, student_noise, 2, "euler"), atol=1e-5, rtol=1e-5)
