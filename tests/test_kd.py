"""Tests for the classifier KD / self-distillation losses (distill_lab.kd) and the closed-form kernel
self-distillation (distill_lab.methods.kd.kernel_sd): analytic gradients, stop-gradients, exact values on
constructed examples, and the closed form against actual refitting."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill_lab.methods import kd
from distill_lab.methods.kd import kernel_sd
from distill_lab.metrics import classification as clsm
from distill_lab.metrics import representation as rep


def _logits(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g)


# ----------------------------------------------------------------------------- Hinton KD
def test_kd_loss_zero_when_student_equals_teacher():
    t = _logits(32, 10)
    loss, info = kd.kd_loss(t.clone(), t, T=4.0, alpha=1.0)
    assert abs(loss.item()) < 1e-6
    assert set(info) == {"loss", "kd", "ce", "agreement"}
    assert info["agreement"].item() == 1.0


@pytest.mark.parametrize("shape", [(16, 10), (4, 3, 5, 7)])
@pytest.mark.parametrize("T,alpha", [(1.0, 1.0), (4.0, 0.7), (0.5, 0.3)])
def test_kd_gradient_matches_analytic(shape, T, alpha):
    s = _logits(*shape, seed=1).requires_grad_(True)
    t = _logits(*shape, seed=2).requires_grad_(True)  # a teacher that carries a graph
    y = torch.randint(0, shape[-1], shape[:-1], generator=torch.Generator().manual_seed(3))
    loss, _ = kd.kd_loss(s, t, T=T, alpha=alpha, labels=y)
    loss.backward()
    n = s[..., 0].numel()
    kd_grad = alpha * T * (F.softmax(s.detach() / T, -1) - F.softmax(t.detach() / T, -1))
    ce_grad = (1 - alpha) * (F.softmax(s.detach(), -1) - F.one_hot(y, shape[-1]).float())
    torch.testing.assert_close(s.grad, (kd_grad + ce_grad) / n, atol=1e-6, rtol=1e-5)
    assert t.grad is None  # the teacher is under stop-gradient


def test_kd_loss_rejects_bad_arguments():
    s, t = _logits(8, 5), _logits(8, 5, seed=1)
    y = torch.zeros(8, dtype=torch.long)
    for T in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            kd.kd_loss(s, t, T=T, alpha=1.0)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            kd.kd_loss(s, t, T=2.0, alpha=alpha, labels=y)
    with pytest.raises(ValueError, match="labels"):
        kd.kd_loss(s, t, T=2.0, alpha=0.5)  # CE term without labels
    with pytest.raises(ValueError, match="same shape"):
        kd.kd_loss(s, t[:, :4], T=2.0, alpha=1.0)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        kd.kd_loss(s, t, T=2.0, alpha=0.5, labels=torch.full((8,), 7))


def test_kl_known_values():
    # two-class distributions from logits: KL(Bern(p) || Bern(q)) in closed form
    p, q = 0.8, 0.3
    t = torch.tensor([[math.log(p), math.log(1 - p)]])
    s = torch.tensor([[math.log(q), math.log(1 - q)]])
    expected = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert kd.kl_per_example(t, s).item() == pytest.approx(expected, abs=1e-6)
    # uniform target against a one-hot-ish student over C classes: KL = log C - mean log q
    C = 4
    s = torch.tensor([[0.0, 0.0, 0.0, math.log(5.0)]])  # q = (1, 1, 1, 5) / 8
    expected = sum(0.25 * math.log(0.25 / qc) for qc in (1 / 8, 1 / 8, 1 / 8, 5 / 8))
    assert kd.kl_per_example(torch.zeros(1, C), s).item() == pytest.approx(expected, abs=1e-6)
    # T^2 scaling: kd term = T^2 KL at temperature T
    s2, t2 = _logits(6, 5, seed=4), _logits(6, 5, seed=5)
    loss, _ = kd.kd_loss(s2, t2, T=3.0, alpha=1.0)
    assert loss.item() == pytest.approx(9.0 * kd.kl_per_example(t2, s2, 3.0).mean().item(), rel=1e-6)


# ----------------------------------------------------------------------------- self-distillation targets
def test_self_distill_targets_and_loss():
    prev = F.softmax(_logits(5, 4), -1)
    y = torch.tensor([0, 1, 2, 3, 0])
    tgt = kd.self_distill_targets(prev, y, alpha=0.25)
    torch.testing.assert_close(tgt, 0.25 * F.one_hot(y, 4).float() + 0.75 * prev)
    torch.testing.assert_close(tgt.sum(-1), torch.ones(5))
    torch.testing.assert_close(kd.self_distill_targets(prev, F.one_hot(y, 4).float(), 0.25), tgt)
    s = torch.log(tgt).requires_grad_(True)  # a student that already matches the target
    loss, info = kd.self_distill_loss(s, prev, y, alpha=0.25)
    assert abs(loss.item()) < 1e-6
    with pytest.raises(ValueError, match="probabilities"):
        kd.self_distill_targets(_logits(5, 4), y, 0.5)


# ----------------------------------------------------------------------------- anchored recursion
def test_anchored_recursion_contracts_kl_to_base():
    base = F.softmax(_logits(64, 10, seed=6), -1)
    q0 = F.softmax(_logits(64, 10, seed=7), -1)
    lam = 0.3
    qs = kd.anchored_recursion(base, q0, lam, generations=8)
    kls = kd.generation_kls(qs, base)
    assert len(kls["to_base"]) == 9 and len(kls["step"]) == 8
    for k in range(8):  # KL(base || q_{k+1}) <= (1 - lam) KL(base || q_k)  (convexity of KL)
        assert kls["to_base"][k + 1] <= (1 - lam) * kls["to_base"][k] + 1e-9
    assert kls["to_base"][-1] < 0.1 * kls["to_base"][0]


# ----------------------------------------------------------------------------- TAID
def test_taid_target_endpoints_and_stopgrad():
    s = _logits(8, 6, seed=8).requires_grad_(True)
    t = _logits(8, 6, seed=9).requires_grad_(True)
    torch.testing.assert_close(kd.taid_target(s, t, 0.0), F.softmax(s.detach(), -1))
    torch.testing.assert_close(kd.taid_target(s, t, 1.0), F.softmax(t.detach(), -1))
    assert not kd.taid_target(s, t, 0.5).requires_grad
    loss, info = kd.taid_loss(s, t, 0.0)
    assert abs(loss.item()) < 1e-6  # at t = 0 the target is the student itself
    loss, _ = kd.taid_loss(s, t, 0.6)
    loss.backward()
    assert t.grad is None and s.grad is not None
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        kd.taid_target(s, t, 1.5)


def test_taid_schedule_monotone_and_reaches_end():
    sched = kd.TAIDSchedule(total_steps=100, t_start=0.4, alpha=0.05)
    ts = [sched.t] + [sched.step(1.0 / (1 + n)) for n in range(100)]  # a steadily improving loss
    assert all(b >= a - 1e-12 for a, b in zip(ts, ts[1:]))
    assert ts[-1] == pytest.approx(1.0)
    assert ts[10] > sched.t_linear(10)  # improvement pushes t ahead of the linear floor
    flat = kd.TAIDSchedule(total_steps=100, adaptive=False)
    assert [flat.step(1.0) for _ in range(3)][-1] == pytest.approx(flat.t_linear(3))


# ----------------------------------------------------------------------------- random teachers, probe
@pytest.mark.parametrize("shape", [(16, 32), (2, 16, 32)])
def test_random_teacher_loss(shape):
    t = _logits(*shape, seed=10).requires_grad_(True)
    s = _logits(*shape, seed=11).requires_grad_(True)
    loss, info = kd.random_teacher_loss(s, t)
    loss.backward()
    assert t.grad is None and torch.isfinite(s.grad).all()
    assert info["kl"].item() >= 0
    # same view, same temperature, student == teacher: the KL part of the CE vanishes
    loss1, info1 = kd.random_teacher_loss(t.detach(), t, student_temp=0.1, teacher_temp=0.1, cross_view=False)
    assert info1["kl"].item() == pytest.approx(0.0, abs=1e-5)
    head = kd.DINOHead(8, out_dim=20, hidden=16, bottleneck=4)
    assert head(torch.randn(5, 8)).shape == (5, 20)


def test_output_information_closed_forms():
    # the same distribution for every example: the target says nothing about the input
    row = torch.tensor([0.3, -1.0, 2.0, 0.5])
    info = kd.output_information(row.repeat(6, 1), temp=0.5)
    h = -(F.softmax(row / 0.5, -1) * F.log_softmax(row / 0.5, -1)).sum()
    assert info["mutual_information"] == pytest.approx(0.0, abs=1e-12)
    assert info["entropy"] == pytest.approx(float(h)) and info["marginal_entropy"] == pytest.approx(float(h))
    # two examples, mirrored Bernoulli(a) outputs: I = log 2 - H_b(a); the temperature divides the logits
    a = 0.8
    logits = torch.tensor([[math.log(a), math.log(1 - a)], [math.log(1 - a), math.log(a)]])
    hb = -(a * math.log(a) + (1 - a) * math.log(1 - a))
    got = kd.output_information(0.25 * logits, temp=0.25)
    assert got["mutual_information"] == pytest.approx(math.log(2) - hb, rel=1e-6)
    assert got["entropy"] == pytest.approx(hb, rel=1e-6) and got["marginal_entropy"] == pytest.approx(math.log(2))
    sharper = kd.output_information(logits, temp=0.1)["mutual_information"]
    assert math.log(2) - hb < sharper < math.log(2)  # a colder temperature tells more about the input
    # one-hot on a class of its own: the most it can be, log B
    assert kd.output_information(40.0 * torch.eye(5), temp=1.0)["mutual_information"] == pytest.approx(math.log(5))
    with pytest.raises(ValueError, match="B >= 2"):
        kd.output_information(torch.zeros(1, 4))
    with pytest.raises(ValueError):
        kd.output_information(torch.zeros(3, 4), temp=0.0)


def test_linear_probe_separates_linearly_separable_data():
    g = torch.Generator().manual_seed(12)
    centers = 4.0 * torch.randn(3, 10, generator=g)
    y = torch.arange(3).repeat_interleave(100)
    x = centers[y] + 0.5 * torch.randn(300, 10, generator=g)
    yt = torch.arange(3).repeat_interleave(50)
    xt = centers[yt] + 0.5 * torch.randn(150, 10, generator=g)
    assert rep.linear_probe(x, y, xt, yt) == 1.0
    assert rep.linear_probe(x, y, xt, yt) == rep.linear_probe(x, y, xt, yt)  # deterministic
    assert rep.linear_probe(torch.randn(300, 10, generator=g), y, xt, yt) < 0.7  # noise features


# ----------------------------------------------------------------------------- SLA
def test_rotate_batch():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    xr, rot = kd.rotate_batch(x)
    assert xr.shape == (8, 1, 3, 3) and rot.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    torch.testing.assert_close(xr[:2], x)
    # rotating by 90 degrees counter-clockwise moves the top-right corner to the top-left
    assert xr[2, 0, 0, 0] == x[0, 0, 0, 2]
    torch.testing.assert_close(xr[4], x[0].flip(-1).flip(-2))  # 180 degrees
    torch.testing.assert_close(torch.rot90(xr[6], 1, dims=(-2, -1)), x[0])  # 270 + 90 = 360
    with pytest.raises(ValueError, match="square"):
        kd.rotate_batch(torch.zeros(2, 1, 3, 4))


def test_sla_aggregate_constructed():
    B, C, M = 2, 3, 4
    z = torch.zeros(M * B, C * M)
    # for image b under rotation j, put value 10*j + i + b on the joint logit (i, j) with i = class;
    # other rotation labels get a large distractor that aggregation must ignore
    for j in range(M):
        for b in range(B):
            for i in range(C):
                for r in range(M):
                    z[j * B + b, i * M + r] = (10 * j + i + b) if r == j else 1000.0
    agg = kd.sla_aggregate(z, n_rot=M)
    expected = torch.tensor([[sum(10 * j + i + b for j in range(M)) / M for i in range(C)] for b in range(B)])
    torch.testing.assert_close(agg, expected)
    assert kd.sla_joint_labels(torch.tensor([2, 0]), M).tolist() == [8, 0, 9, 1, 10, 2, 11, 3]


def test_sla_losses_run_and_stopgrad():
    B, C, M = 4, 3, 4
    y = torch.tensor([0, 1, 2, 1])
    joint = _logits(M * B, C * M, seed=13).requires_grad_(True)
    single = _logits(B, C, seed=14).requires_grad_(True)
    loss, info = kd.sla_sd_loss(joint, single, y, n_rot=M)
    loss.backward()
    assert set(info) >= {"sla", "sd", "ce"}
    # the joint head gets gradient only from L_SLA (the aggregated teacher is detached)
    joint2 = joint.detach().clone().requires_grad_(True)
    kd.sla_loss(joint2, y, M)[0].backward()
    torch.testing.assert_close(joint.grad, joint2.grad)


# ----------------------------------------------------------------------------- calibration metrics
def test_ece_calibrated_near_zero_overconfident_positive():
    g = torch.Generator().manual_seed(15)
    n = 200_000
    conf = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    correct = torch.rand(n, generator=g, dtype=torch.float64) < conf
    probs = torch.stack([conf, 1 - conf], 1)
    labels = torch.where(correct, 0, 1)
    assert clsm.expected_calibration_error(probs, labels) < 0.01
    # every prediction at confidence 0.9, 60% right: ECE = |0.6 - 0.9| = 0.3 exactly
    probs = torch.tensor([[0.9, 0.1]]).repeat(10, 1)
    labels = torch.tensor([0] * 6 + [1] * 4)
    assert clsm.expected_calibration_error(probs, labels) == pytest.approx(0.3, abs=1e-6)
    # two bins: half at 0.95 (70% right), half at 0.65 (50% right): 0.5 * 0.25 + 0.5 * 0.15 = 0.2
    probs = torch.cat([torch.tensor([[0.95, 0.05]]).repeat(10, 1), torch.tensor([[0.65, 0.35]]).repeat(10, 1)])
    labels = torch.tensor([0] * 7 + [1] * 3 + [0] * 5 + [1] * 5)
    assert clsm.expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.2, abs=1e-6)
    rc = clsm.reliability_curve(probs, labels, n_bins=10)
    assert rc["counts"].sum() == 20 and rc["counts"][9] == 10 and rc["counts"][6] == 10
    assert rc["accuracy"][9].item() == pytest.approx(0.7) and math.isnan(rc["confidence"][0].item())
    with pytest.raises(ValueError, match="probabilities"):
        clsm.expected_calibration_error(_logits(4, 3), torch.zeros(4, dtype=torch.long))


def test_metrics():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    assert clsm.accuracy(logits, y) == pytest.approx(2 / 3)
    assert clsm.nll(logits, y) == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert clsm.agreement(logits, torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- consensus, PACED
def test_consensus_weights_higher_where_teachers_agree():
    agree = torch.tensor([[5.0, 0.0, 0.0]])
    t1 = torch.cat([agree, torch.tensor([[5.0, 0.0, 0.0]])])
    t2 = torch.cat([agree, torch.tensor([[0.0, 5.0, 0.0]])])
    t3 = torch.cat([agree, torch.tensor([[0.0, 0.0, 5.0]])])
    p_bar, w = kd.consensus_targets([t1, t2, t3])
    assert w[0].item() == pytest.approx(1.0, abs=1e-6) and w[1].item() < 0.2
    torch.testing.assert_close(p_bar.sum(-1), torch.ones(2))
    # the loss gradient of example i is w_i / sum(w) times T (softmax(s_i / T) - p_bar_i)
    s = _logits(2, 3, seed=16).requires_grad_(True)
    T = 2.0
    p_bar, w = kd.consensus_targets([t1, t2, t3], T)
    loss, info = kd.consensus_loss(s, [t1, t2, t3], T=T)
    loss.backward()
    expected = (w / w.sum())[:, None] * T * (F.softmax(s.detach() / T, -1) - p_bar)
    torch.testing.assert_close(s.grad, expected, atol=1e-6, rtol=1e-5)
    assert w[1] < 0.5 * w[0]  # the disputed example pulls less
    with pytest.raises(ValueError, match="at least 2"):
        kd.consensus_targets([t1])


def test_paced_weights_peak_at_half():
    p = torch.linspace(0.01, 0.99, 99)
    logits = torch.stack([torch.log(p), torch.log(1 - p)], 1).requires_grad_(True)
    w = kd.paced_weights(logits, torch.zeros(99, dtype=torch.long))
    assert not w.requires_grad
    assert p[w.argmax()].item() == pytest.approx(0.5, abs=1e-6)
    torch.testing.assert_close(w, p * (1 - p), atol=1e-6, rtol=1e-5)
    t = _logits(99, 2, seed=17)
    loss, _ = kd.paced_kd_loss(logits, t, torch.zeros(99, dtype=torch.long), T=2.0)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------- EMA + diversity
def test_feature_diversity_high_on_collapsed_low_on_whitened():
    g = torch.Generator().manual_seed(18)
    collapsed = torch.randn(1, 16, generator=g).repeat(256, 1)
    z = torch.randn(256, 16, generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    cov = z.T @ z / (z.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    white = (z @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T).float()  # exactly unit covariance
    hi, _ = kd.feature_diversity_loss(collapsed)
    lo, info = kd.feature_diversity_loss(white)
    assert hi.item() > 0.9 and lo.item() < 1e-4
    assert rep.collapse_metrics(collapsed)["effective_rank"] == 0.0
    assert rep.collapse_metrics(white)["effective_rank"] > 15.0
    s = white.clone().requires_grad_(True)
    ema = (white + 0.1).requires_grad_(True)
    loss, info = kd.ema_self_distill_loss(s, ema)
    loss.backward()
    assert ema.grad is None and info["consistency"].item() == pytest.approx(0.01, rel=1e-4)


# ----------------------------------------------------------------------------- kernel self-distillation
@pytest.fixture(scope="module")
def kproblem():
    x, y, f = kernel_sd.toy_problem(n=48, noise=0.3, seed=0)
    return kernel_sd.kernel_matrix(x, gamma=2.0), y, f, x


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_kernel_closed_form_equals_iterative(kproblem, alpha):
    K, y, _, x = kproblem
    xt = torch.linspace(-3, 3, 20, dtype=torch.float64)[:, None]
    Kt = kernel_sd.kernel_matrix(xt, x, gamma=2.0)
    cf, cf_t = kernel_sd.self_distill_closed_form(K, y, 0.1, alpha, 8, K_test=Kt)
    it, it_t = kernel_sd.self_distill_iterative(K, y, 0.1, alpha, 8, K_test=Kt)
    assert cf.dtype == torch.float64 and cf.shape == (9, 48)
    assert (cf - it).abs().max().item() < 1e-6 and (cf_t - it_t).abs().max().item() < 1e-6
    # multi-output targets (one-hot labels) too
    Y = F.one_hot((y > 0).long(), 2).double()
    assert (kernel_sd.self_distill_closed_form(K, Y, 0.1, alpha, 3)
            - kernel_sd.self_distill_iterative(K, Y, 0.1, alpha, 3)).abs().max().item() < 1e-6


def test_kernel_collapse_and_amplified_ridge_limit(kproblem):
    K, y, _, _ = kproblem
    norms = kernel_sd.collapse_curve(K, y, c=0.5, generations=60, alpha=0.0)
    assert all(b < a for a, b in zip(norms, norms[1:]))  # strictly decreasing
    assert norms[-1] < 0.2 * norms[0]
    # with alpha > 0 the generations converge to ridge regression with ridge c / alpha
    a, c = 0.25, 0.1
    limit = K @ torch.linalg.solve(K + (c / a) * torch.eye(K.shape[0], dtype=torch.float64), y)
    last = kernel_sd.self_distill_closed_form(K, y, c, a, 300)[-1]
    assert (last - limit).abs().max().item() < 1e-8


def test_kernel_optimal_alpha(kproblem):
    K, y, f, _ = kproblem
    c = 0.05
    f0 = kernel_sd.self_distill_closed_form(K, y, c, 0.0, 0)[0]
    a_star = kernel_sd.optimal_alpha(K, y, f, c, f0)
    grid = torch.linspace(a_star - 0.5, a_star + 0.5, 2001, dtype=torch.float64)
    A = K @ torch.linalg.inv(K + c * torch.eye(K.shape[0], dtype=torch.float64))
    errs = torch.stack([((A @ (a * y + (1 - a) * f0) - f) ** 2).sum() for a in grid])
    assert float(grid[errs.argmin()]) == pytest.approx(a_star, abs=1e-3)
    best, err, _ = kernel_sd.best_fixed_alpha(K, y, f, c, generations=3)
    assert 0.0 <= best <= 1.0
    assert err <= float(((kernel_sd.self_distill_closed_form(K, y, c, 1.0, 3)[-1] - f) ** 2).mean()) + 1e-12
    with pytest.raises(ValueError, match="ridge"):
        kernel_sd.self_distill_closed_form(K, y, 0.0, 0.5, 2)
    with pytest.raises(ValueError, match="alpha"):
        kernel_sd.self_distill_closed_form(K, y, 0.1, 1.5, 2)
