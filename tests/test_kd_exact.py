"""The KD-family losses against independent computations where the first tests were blind.

A mutation run over ``distill_lab/methods/kd`` (README, "For contributors") planted one change at a
time and kept those the suite did not notice. They fell in the classes this file closes:

* a loss checked only at ``T = 1`` (a ``T^2`` factor turned into ``T / T``, a temperature dropped);
* a loss checked only on ``[B, C]`` logits, where ``dim=+1`` is ``dim=-1`` (here ``[B, T1, T2, C]``);
* a documented default changed (each default call is compared with the paper's values written out);
* a normalisation option ignored, a weight's exponent passed in the wrong place;
* an error that no longer names the argument to fix;
* a ``p > 0`` guard widened to ``p >= 0``, which makes ``0 * log 0`` a NaN when a teacher bans a token.

Every reference below is written from the formula in the docstring, in float64, with plain loops or
explicit sums, never by calling the function under test.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from distill_lab.methods.kd import adaptive, hinton, kernel_sd, self_distill
from distill_lab.methods.kd import self_supervised as ssl
from distill_lab.methods.kd import token
from distill_lab.methods.kd.common import kl_per_example

D = torch.float64  # every input is float64 (set per tensor: a global default would leak into other tests)
V = 5
LEAD = (2, 3, 4)  # three leading dimensions: dim=+1 and flip(+1) differ from dim=-1 and flip(-1)


def _logits(seed, lead=LEAD, v=V, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*lead, v, generator=g, dtype=D)


def _mask(seed, lead=LEAD):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(*lead, generator=g) > 0.35
    m.view(-1)[0] = True
    return m


def _softmax(x, T=1.0):
    e = torch.exp(x / T - (x / T).max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _kl(p, q):
    """sum_c p (log p - log q), 0 log 0 = 0, one value per leading position."""
    out = torch.zeros(p.shape[:-1], dtype=D)
    for c in range(p.shape[-1]):
        pc, qc = p[..., c], q[..., c]
        out = out + torch.where(pc > 0, pc * (torch.log(pc.clamp_min(1e-300)) - torch.log(qc)), torch.zeros_like(pc))
    return out


def _masked(x, m):
    return x[m].sum() / m.sum()


# ============================================================================ token divergences at T != 1
@pytest.mark.parametrize("T", [0.5, 2.0])
def test_token_divergences_at_a_temperature_on_three_leading_dims(T):
    s, t, m = _logits(0), _logits(1), _mask(2)
    p, q = _softmax(t, T), _softmax(s, T)
    torch.testing.assert_close(token.forward_kl_loss(s, t, m, T=T), T * T * _masked(_kl(p, q), m))
    torch.testing.assert_close(token.reverse_kl_loss(s, t, m, T=T), T * T * _masked(_kl(q, p), m))
    beta = 0.3
    mix = beta * p + (1 - beta) * q
    jsd = beta * _kl(p, mix) + (1 - beta) * _kl(q, mix)
    torch.testing.assert_close(token.gjsd_loss(s, t, m, beta=beta, T=T), T * T * _masked(jsd, m))
    for b, ref in ((0.0, _kl(p, q)), (1.0, _kl(q, p))):  # the normalised limits keep the temperature
        torch.testing.assert_close(token.gjsd_loss(s, t, m, beta=b, T=T), T * T * _masked(ref, m))
    a = 0.2
    torch.testing.assert_close(token.skew_kl_loss(s, t, m, alpha=a, T=T), T * T * _masked(_kl(p, a * p + (1 - a) * q), m))
    torch.testing.assert_close(token.skew_kl_loss(s, t, m, alpha=a, reverse=True, T=T),
                               T * T * _masked(_kl(q, a * q + (1 - a) * p), m))
    torch.testing.assert_close(token.skew_kl_loss(s, t, m, alpha=0.0, T=T), T * T * _masked(_kl(p, q), m))
    k = 3
    idx = t.topk(k, dim=-1).indices
    pk = _softmax(t.gather(-1, idx), T)
    qk = _softmax(s.gather(-1, idx), T)
    torch.testing.assert_close(token.topk_kl_loss(s, t, m, k=k, T=T), T * T * _masked(_kl(pk, qk), m))


def test_token_losses_defaults_are_the_documented_values():
    s, t, m = _logits(3), _logits(4), _mask(5)
    p, q = _softmax(t), _softmax(s)
    mix = 0.5 * p + 0.5 * q
    torch.testing.assert_close(token.gjsd_loss(s, t, m), _masked(0.5 * _kl(p, mix) + 0.5 * _kl(q, mix), m))
    torch.testing.assert_close(token.skew_kl_loss(s, t, m), _masked(_kl(p, 0.1 * p + 0.9 * q), m))
    torch.testing.assert_close(token.forward_kl_loss(s, t, m), _masked(_kl(p, q), m))  # T = 1
    big_v = 12  # k = 8 of 12 tokens
    s12, t12 = _logits(6, v=big_v), _logits(7, v=big_v)
    idx = t12.topk(8, dim=-1).indices
    ref = _kl(_softmax(t12.gather(-1, idx)), _softmax(s12.gather(-1, idx)))
    torch.testing.assert_close(token.topk_kl_loss(s12, t12, m), _masked(ref, m))
    assert not torch.allclose(token.topk_kl_loss(s12, t12, m), token.topk_kl_loss(s12, t12, m, k=9))


def test_a_teacher_that_bans_tokens_gives_finite_losses():
    """A teacher logit of -inf (a banned token, a top-k filtered teacher) has p = 0 exactly: its term
    ``0 * (log 0 - log q)`` must count as 0, not NaN."""
    s, t = _logits(8), _logits(9)
    t[..., 0] = float("-inf")
    p, q = _softmax(t), _softmax(s)
    assert float(p[..., 0].max()) == 0.0
    got = token.forward_kl_loss(s, t)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, _kl(p, q).mean())
    k = kl_per_example(t, s, 2.0)
    assert torch.isfinite(k).all()
    torch.testing.assert_close(k, _kl(_softmax(t, 2.0), _softmax(s, 2.0)))


def test_minillm_long_term_reward_runs_along_the_last_leading_dim():
    """MiniLLM's R_{t+1} (mean of the later rewards, 0 after the last position) on ``[B, T1, T2]``
    positions: the "later positions" are along the last leading dimension, sequence by sequence."""
    lead = (2, 3, 4)
    s, t, m = _logits(10, lead), _logits(11, lead), _mask(12, lead)
    tokens = torch.randint(0, V, lead, generator=torch.Generator().manual_seed(13))
    g = torch.Generator().manual_seed(14)
    sample_lp = torch.log(torch.rand(*lead, generator=g, dtype=D) * 0.5 + 0.01)  # some ratios above the clip
    loss, info = token.minillm_loss(s, t, tokens, m, sample_lp)  # default clip 3
    lq, lp = torch.log(_softmax(s)), torch.log(_softmax(t))
    logq = lq.gather(-1, tokens[..., None])[..., 0]
    r = torch.where(m, lp.gather(-1, tokens[..., None])[..., 0] - logq, torch.zeros_like(logq))
    R = torch.zeros_like(r)
    for i in range(lead[0]):
        for j in range(lead[1]):
            for n in range(lead[2]):
                later = [k for k in range(n + 1, lead[2]) if m[i, j, k]]
                R[i, j, n] = sum(r[i, j, k] for k in later) / max(len(later), 1)
    rho = (logq - sample_lp).exp().clamp(max=3.0)
    assert float(rho.max()) == 3.0  # the clip is reached
    single = _kl(_softmax(s), _softmax(t))
    ref = _masked(rho * single - rho * R * logq, m)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(info["mean_rho"], _masked(rho, m))


def test_masked_mean_weights_and_check_mask():
    v = torch.arange(6.0, dtype=D).view(2, 3)
    m = torch.tensor([[True, False, True], [True, True, False]])
    w = torch.tensor([[0.1, 5.0, 0.2], [0.05, 0.05, 9.0]], dtype=D)  # masked sum 0.4 < 1: still a valid weighting
    ref = (0.1 * 0 + 0.2 * 2 + 0.05 * 3 + 0.05 * 4) / 0.4
    torch.testing.assert_close(token.masked_mean(v, m, w), torch.tensor(ref, dtype=D))
    with pytest.raises(ValueError, match=">= 0"):
        token.masked_mean(v, m, -w)
    logits = torch.zeros(2, 3, V, dtype=D)
    full = token.check_mask(None, logits)
    assert full.dtype == torch.bool and full.shape == (2, 3) and full.device == logits.device and bool(full.all())
    with pytest.raises(ValueError, match="boolean"):
        token.check_mask(torch.ones(2, 3), logits)


def test_token_checks_at_their_boundaries_and_errors_name_the_argument():
    s, t = _logits(15, (2, 3)), _logits(16, (2, 3))
    tok = torch.zeros(2, 3, dtype=torch.long)
    tok[0, 0] = V  # one past the vocabulary
    with pytest.raises(ValueError, match="token ids"):
        token.token_ce_loss(s, tok)
    tok[0, 0] = -1  # negative, the largest id valid
    with pytest.raises(ValueError, match="token ids"):
        token.token_ce_loss(s, tok)
    tok[0, 0] = V - 1
    assert torch.isfinite(token.token_ce_loss(s, tok))
    assert torch.isfinite(token.topk_kl_loss(s, t, k=1))  # k = 1 is allowed (the teacher's argmax only)
    with pytest.raises(ValueError, match="positive integer"):
        token.topk_kl_loss(s, t, k=0)
    with pytest.raises(ValueError, match="positive integer"):
        token.topk_kl_loss(s, t, k=2.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        token.forward_kl_loss(s, torch.zeros(2))
    with pytest.raises(ValueError, match="student_logits"):
        token.forward_kl_loss(torch.zeros(2), t)
    with pytest.raises(ValueError, match="student_logits"):
        token.token_ce_loss(torch.zeros(2), tok[0])
    with pytest.raises(ValueError, match="weights"):
        token.on_policy_pg_loss(s, t, tok.clamp(0, V - 1), weights=torch.ones(3))
    with pytest.raises(ValueError, match="sample_logprobs"):
        token.minillm_loss(s, t, tok.clamp(0, V - 1), None, torch.zeros(3))


def test_skew_kl_at_alpha_one_is_zero_with_a_gradient_path():
    s, t = _logits(17, (2, 3)).requires_grad_(), _logits(18, (2, 3))
    out = token.skew_kl_loss(s, t, alpha=1.0, T=2.0)
    assert float(out.detach()) == 0.0
    out.backward()
    assert s.grad is not None and float(s.grad.abs().max()) == 0.0


# ============================================================================ Hinton KD
def test_kd_loss_defaults_are_T4_and_alpha_09():
    s, t = _logits(20, (6,), 4), _logits(21, (6,), 4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss, info = hinton.kd_loss(s, t, labels=y)
    kd = 16.0 * _kl(_softmax(t, 4.0), _softmax(s, 4.0)).mean()
    ce = -torch.log(_softmax(s)).gather(-1, y[:, None]).mean()
    torch.testing.assert_close(loss, 0.9 * kd + 0.1 * ce)
    torch.testing.assert_close(info["kd"], kd)


# ============================================================================ PACED
@pytest.mark.parametrize("normalize", [True, False])
def test_paced_kd_loss_at_a_temperature_with_unequal_exponents(normalize):
    lead = (2, 3)
    s, t = _logits(22, lead), _logits(23, lead)
    y = torch.randint(0, V, lead, generator=torch.Generator().manual_seed(24))
    T, a, b = 2.0, 2.0, 0.5
    loss, info = adaptive.paced_kd_loss(s, t, y, T=T, a=a, b=b, normalize=normalize)
    p_y = _softmax(s).gather(-1, y[..., None])[..., 0]
    w = p_y ** a * (1 - p_y) ** b
    kl = T * T * _kl(_softmax(t, T), _softmax(s, T))
    ref = (w * kl).sum() / w.sum() if normalize else (w * kl).mean()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-8)  # the weights are computed in float32
    torch.testing.assert_close(info["mean_p"], p_y.mean())
    torch.testing.assert_close(info["kd_unweighted"], kl.mean())
    torch.testing.assert_close(adaptive.paced_weights(s, y, a, b), w.float())
    # the defaults: T = 1, a = b = 1, normalised
    w1 = p_y * (1 - p_y)
    torch.testing.assert_close(adaptive.paced_kd_loss(s, t, y)[0], (w1 * _kl(_softmax(t), _softmax(s))).sum() / w1.sum(),
                               rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(adaptive.paced_weights(s, y), w1.float())


def test_paced_token_loss_defaults_and_beta_kernel_edges():
    s, t, m = _logits(25), _logits(26), _mask(27)
    tok = torch.randint(0, V, LEAD, generator=torch.Generator().manual_seed(28))
    p_y = _softmax(s).gather(-1, tok[..., None])[..., 0][m]
    w = p_y * (1 - p_y)
    ref = (w * _kl(_softmax(t), _softmax(s))[m]).sum() / w.sum()
    torch.testing.assert_close(token.paced_token_loss(s, t, tok, m)[0], ref, rtol=1e-6, atol=1e-8)
    pr = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=D)
    torch.testing.assert_close(adaptive.beta_kernel(pr), (pr * (1 - pr)).float())
    torch.testing.assert_close(adaptive.beta_kernel(pr, 0.0, 2.0), ((1 - pr) ** 2).float())  # a = 0 allowed
    torch.testing.assert_close(adaptive.beta_kernel(pr, 2.0, 0.0), (pr ** 2).float())  # b = 0 allowed
    with pytest.raises(ValueError, match="exponents"):
        adaptive.beta_kernel(pr, -0.5, 1.0)
    with pytest.raises(ValueError, match="exponents"):
        adaptive.beta_kernel(pr, 1.0, -0.5)


# ============================================================================ TAID
def test_taid_schedule_follows_its_update_rule_step_by_step():
    """t_{n+1} = min(t_end, max(t_linear(n), t_n + alpha sigmoid(m_n) (1 - t_n))), with the momentum
    of the loss's relative improvement; replayed by hand on a loss curve."""
    losses = [2.0, 1.5, 1.4, 1.6, 0.9, 0.85]
    N, t0, a, beta, eps = 1000, 0.3, 0.3, 0.9, 1e-15  # a slow floor: the adaptive step shows
    sched = adaptive.TAIDSchedule(N, t_start=t0, alpha=a, beta=beta)
    assert sched.momentum == 0.0 and sched.t == t0
    t, mom, prev = t0, 0.0, None
    for n, J in enumerate(losses, start=1):
        floor = t0 + (1.0 - t0) * n / N
        if prev is not None:
            mom = beta * mom + (1 - beta) * (prev - J) / (prev + eps)
            t = min(1.0, max(floor, t + a / (1 + math.exp(-mom)) * (1 - t)))
        else:
            t = min(1.0, max(floor, t))
        prev = J
        assert sched.step(J) == pytest.approx(t, rel=0, abs=1e-15)
        assert sched.momentum == pytest.approx(mom, rel=0, abs=1e-15)
    assert sched.t > t0 + (1.0 - t0) * len(losses) / N  # the adaptive part moved it above the floor


def test_taid_schedule_bounds_and_defaults():
    assert adaptive.TAIDSchedule(1).t == 0.4  # one step is allowed; t_start 0.4 by default
    assert adaptive.TAIDSchedule(5, t_start=0.0).t == 0.0
    sched = adaptive.TAIDSchedule(10)
    assert (sched.alpha, sched.beta, sched.t_end) == (5e-4, 0.99, 1.0)
    assert sched.eps < 1e-12
    for kw in (dict(t_start=0.5, t_end=0.5), dict(t_start=0.2, t_end=1.5), dict(t_start=-0.1)):
        with pytest.raises(ValueError, match="t_start"):
            adaptive.TAIDSchedule(10, **kw)
    with pytest.raises(ValueError, match="total_steps"):
        adaptive.TAIDSchedule(0)
    with pytest.raises(ValueError, match="alpha"):
        adaptive.TAIDSchedule(10, alpha=2.0)
    with pytest.raises(ValueError, match="beta"):
        adaptive.TAIDSchedule(10, beta=2.0)


def test_taid_target_and_loss_on_three_leading_dims():
    s, t = _logits(30), _logits(31)
    tt = 0.3
    p_t = _softmax((1 - tt) * s + tt * t)
    torch.testing.assert_close(adaptive.taid_target(s, t, tt), p_t)
    loss, info = adaptive.taid_loss(s, t, tt)
    torch.testing.assert_close(loss, _kl(p_t, _softmax(s)).mean())
    torch.testing.assert_close(info["kl_to_teacher"], _kl(_softmax(t), _softmax(s)).mean())


# ============================================================================ consensus of teachers
def test_consensus_targets_and_loss_against_the_formula():
    M, T = 3, 2.0
    ts = [_logits(40 + k, (2, 3), 4) for k in range(M)]
    s = _logits(45, (2, 3), 4)
    P = torch.stack([_softmax(t, T) for t in ts])
    p_bar = P.mean(0)

    def H(p):
        return -(p * torch.log(p)).sum(-1)

    w = (1 - (H(p_bar) - H(P).mean(0)).clamp_min(0) / math.log(min(M, 4))).clamp(0, 1)
    got_p, got_w = adaptive.consensus_targets(ts, T)
    torch.testing.assert_close(got_p, p_bar)
    torch.testing.assert_close(got_w, w)
    two = adaptive.consensus_targets(ts[:2], T)  # two teachers are enough
    assert two[1].shape == (2, 3)
    # more teachers than classes: the agreement is normalised by log C (here two opposite teachers
    # and a third on the first class: w = 1 - JS / log 2)
    opp = [torch.tensor([[9.0, -9.0]], dtype=D), torch.tensor([[-9.0, 9.0]], dtype=D), torch.tensor([[9.0, -9.0]], dtype=D)]
    Q = torch.stack([_softmax(x) for x in opp])
    wq = 1 - (H(Q.mean(0)) - H(Q).mean(0)) / math.log(2)
    torch.testing.assert_close(adaptive.consensus_targets(opp)[1], wq)
    loss, info = adaptive.consensus_loss(s, ts)  # T = 4, alpha = 1 by default
    P4 = torch.stack([_softmax(t, 4.0) for t in ts])
    pb4 = P4.mean(0)
    w4 = (1 - (H(pb4) - H(P4).mean(0)).clamp_min(0) / math.log(min(M, 4))).clamp(0, 1)
    torch.testing.assert_close(loss, 16.0 * (w4 * _kl(pb4, _softmax(s, 4.0))).sum() / w4.sum())
    y = torch.tensor([[0, 1, 2], [3, 0, 1]])
    mixed, info = adaptive.consensus_loss(s, ts, alpha=0.7, labels=y)
    ce = -torch.log(_softmax(s)).gather(-1, y[..., None]).mean()
    torch.testing.assert_close(mixed, 0.7 * loss + 0.3 * ce)
    with pytest.raises(ValueError, match="alpha=1"):
        adaptive.consensus_loss(s, ts, alpha=0.5)
    with pytest.raises(ValueError, match="teacher_logits_list\\[1\\]"):
        adaptive.consensus_targets([ts[0], ts[1][:, :2]])
    with pytest.raises(ValueError, match="student_logits"):
        adaptive.consensus_loss(torch.zeros(3), ts)


# ============================================================================ self-distillation
def test_soft_target_loss_at_a_temperature_and_its_entropy():
    s = _logits(50, (2, 3))
    target = _softmax(_logits(51, (2, 3)))
    target[0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=D)  # an exact one-hot row: 0 log 0 = 0
    loss, info = self_distill.soft_target_loss(s, target, T=2.0)
    kl = _kl(target, _softmax(s, 2.0))
    torch.testing.assert_close(loss, 4.0 * kl.mean())
    ent = -(torch.where(target > 0, target * torch.log(target.clamp_min(1e-300)), torch.zeros_like(target))).sum(-1).mean()
    torch.testing.assert_close(info["target_entropy"], ent)
    torch.testing.assert_close(info["soft_ce"], kl.mean() + ent)
    torch.testing.assert_close(self_distill.soft_target_loss(s, target)[0], _kl(target, _softmax(s)).mean())  # T = 1
    y = torch.tensor([[0, 1, 2], [3, 4, 0]])
    tgt = self_distill.self_distill_targets(target, y, 0.4)
    torch.testing.assert_close(tgt, 0.4 * F.one_hot(y, V).to(D) + 0.6 * target)
    torch.testing.assert_close(self_distill.self_distill_loss(s, target, y, 0.4, T=2.0)[0],
                               4.0 * _kl(tgt, _softmax(s, 2.0)).mean())
    assert len(self_distill.anchored_recursion(target, target, 0.5, 0)) == 1  # zero generations: q_0 only


# ============================================================================ what the losses report and say
def test_every_loss_reports_its_documented_info_keys():
    s, t, m = _logits(60, (2, 3)), _logits(61, (2, 3)), _mask(62, (2, 3))
    y = torch.tensor([[0, 1, 2], [3, 4, 0]])
    lp = torch.log(torch.full((2, 3), 0.3, dtype=D))
    cases = {
        "kd_loss": (hinton.kd_loss(s, t, labels=y), {"loss", "kd", "ce", "agreement"}),
        "taid_loss": (adaptive.taid_loss(s, t, 0.5), {"loss", "t", "kl_to_teacher"}),
        "paced_kd_loss": (adaptive.paced_kd_loss(s, t, y), {"loss", "kd_unweighted", "mean_weight", "mean_p"}),
        "consensus_loss": (adaptive.consensus_loss(s, [t, s + t], alpha=0.5, labels=y),
                           {"loss", "kd", "ce", "mean_agreement"}),
        "soft_target_loss": (self_distill.soft_target_loss(s, _softmax(t)), {"loss", "soft_ce", "target_entropy"}),
        "on_policy_pg_loss": (token.on_policy_pg_loss(s, t, y, m), {"loss", "sampled_reverse_kl"}),
        "minillm_loss": (token.minillm_loss(s, t, y, m, lp), {"loss", "reverse_kl", "mean_rho"}),
    }
    for name, ((loss, info), keys) in cases.items():
        assert set(info) == keys, name
        torch.testing.assert_close(info["loss"], loss.detach(), msg=name)
    assert float(cases["taid_loss"][0][1]["t"]) == 0.5
    (loss, info) = cases["consensus_loss"][0]
    torch.testing.assert_close(loss, 0.5 * info["kd"] + 0.5 * info["ce"])
    torch.testing.assert_close(cases["paced_kd_loss"][0][1]["mean_weight"], adaptive.paced_weights(s, y).to(D).mean())
    rk = cases["minillm_loss"][0][1]["reverse_kl"]
    torch.testing.assert_close(rk, _masked(_kl(_softmax(s), _softmax(t)), m))


def test_errors_say_which_argument_and_which_sizes():
    s, t = _logits(63, (2, 3)), _logits(64, (2, 3), 6)
    with pytest.raises(ValueError, match="student's logits have 5 tokens and the teacher's 6"):
        token.forward_kl_loss(s, t)
    tok = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"tokens must have the logits' leading shape \(2, 3\)"):
        token.token_ce_loss(s, tok)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 4\]"):
        token.token_ce_loss(s, torch.full((2, 3), 7))
    with pytest.raises(ValueError, match=r"weights must have the logits' leading shape \(2, 3\)"):
        token.on_policy_pg_loss(s, _logits(65, (2, 3)), torch.zeros(2, 3, dtype=torch.long), weights=torch.ones(3))
    with pytest.raises(ValueError, match="^mask selects no position"):
        token.forward_kl_loss(s, _logits(66, (2, 3)), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"weight 1 - alpha = 0.3\)"):
        hinton.kd_loss(s, _logits(67, (2, 3)), alpha=0.7)
    with pytest.raises(ValueError, match="the CE term needs labels"):
        adaptive.consensus_loss(s, [s, s], alpha=0.5)
    with pytest.raises(ValueError, match="^pass rates must lie in"):
        adaptive.beta_kernel(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="^weights must be >= 0"):
        token.masked_mean(torch.ones(2, dtype=D), torch.ones(2, dtype=torch.bool), torch.tensor([-1.0, 3.0], dtype=D))
    for fn, name in ((lambda x: kl_per_example(s, x), "student_logits"), (lambda x: kl_per_example(x, s), "target_logits"),
                     (lambda x: adaptive.paced_weights(x, torch.zeros(3, dtype=torch.long)), "student_logits"),
                     (lambda x: self_distill.soft_target_loss(x, _softmax(s)), "student_logits"),
                     (lambda x: adaptive.consensus_targets([s, x]), "teacher_logits_list"),
                     (lambda x: token.token_ce_loss(x, torch.zeros(3, dtype=torch.long)), "student_logits")):
        with pytest.raises(ValueError, match=name):
            fn(torch.zeros(3, dtype=D))
    p = _softmax(s)
    with pytest.raises(ValueError, match="prev_probs"):
        self_distill.self_distill_targets(-p, torch.zeros(2, 3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="target_probs"):
        self_distill.soft_target_loss(s, -p)
    with pytest.raises(ValueError, match="lam"):
        self_distill.anchored_target(p, p, 2.0)
    with pytest.raises(ValueError, match="^prev_probs"):
        self_distill.anchored_target(-p, p, 0.5)
    with pytest.raises(ValueError, match="^base_probs"):
        self_distill.anchored_target(p, -p, 0.5)
    with pytest.raises(ValueError, match="^beta"):
        token.gjsd_loss(s, s, beta=3.0)
    with pytest.raises(ValueError, match="^alpha"):
        token.skew_kl_loss(s, s, alpha=3.0)
    with pytest.raises(ValueError, match="^sample_logprobs"):
        token.minillm_loss(s, s, torch.zeros(2, 3, dtype=torch.long), None, torch.zeros(3))


def test_half_precision_logits_are_computed_in_float32():
    """bf16 logits are promoted before the softmax: the loss equals the float32 computation on the same
    (rounded) logits, not a bf16 one."""
    s, t, m = _logits(70, (4, 6), 50).bfloat16(), _logits(71, (4, 6), 50).bfloat16(), _mask(72, (4, 6))
    for fn in (token.forward_kl_loss, token.reverse_kl_loss, token.gjsd_loss, token.skew_kl_loss, token.topk_kl_loss):
        got = fn(s, t, m)
        assert got.dtype == torch.float32, fn.__name__
        torch.testing.assert_close(got, fn(s.float(), t.float(), m), rtol=1e-6, atol=1e-7, msg=fn.__name__)


def test_masked_mean_rejects_any_negative_weight_even_with_a_positive_sum():
    v, m = torch.ones(3, dtype=D), torch.ones(3, dtype=torch.bool)
    with pytest.raises(ValueError, match=">= 0"):
        token.masked_mean(v, m, torch.tensor([-0.5, 1.0, 1.0], dtype=D))


def test_consensus_loss_normalises_by_the_agreement_of_one_example():
    """One example whose teachers half disagree: the agreement w < 1 divides out, the loss is the
    plain ``T^2 KL(p_bar || q)`` of that example."""
    s = _logits(73, (1,), 3)
    ts = [torch.tensor([[3.0, 0.0, 0.0]], dtype=D), torch.tensor([[0.0, 3.0, 0.0]], dtype=D)]
    p_bar, w = adaptive.consensus_targets(ts, 2.0)
    assert 0.0 < float(w) < 1.0
    loss, _ = adaptive.consensus_loss(s, ts, T=2.0)
    torch.testing.assert_close(loss, 4.0 * _kl(p_bar, _softmax(s, 2.0)).sum())


def test_self_distill_targets_from_labels_that_miss_the_last_class():
    p = _softmax(_logits(74, (3,)))
    y = torch.tensor([0, 1, 1])  # no label of class V - 1: the one-hot still has V columns
    torch.testing.assert_close(self_distill.self_distill_targets(p, y, 0.25), 0.25 * F.one_hot(y, V).to(D) + 0.75 * p)


# ============================================================================ kernel self-distillation


def test_toy_problem_is_the_documented_regression():
    x, y, f = kernel_sd.toy_problem()
    assert x.shape == (64, 1) and x.dtype == D and y.dtype == D
    assert float(x.min()) >= -3.0 and float(x.max()) <= 3.0 and bool((x[1:] >= x[:-1]).all())
    assert float(x.max() - x.min()) > 5.0  # spread over [-3, 3], not [0, 1] or [3, 9]
    torch.testing.assert_close(f, torch.sin(2 * x[:, 0]) + 0.3 * x[:, 0])
    noise = (y - f) / 0.3
    assert abs(float(noise.mean())) < 0.35 and 0.7 < float(noise.std()) < 1.3  # N(0, 1) noise of size 0.3
    x2, y2, _ = kernel_sd.toy_problem()
    assert torch.equal(x, x2) and torch.equal(y, y2)  # seed 0 by default: reproducible
    x3, _, _ = kernel_sd.toy_problem(seed=1)
    assert not torch.equal(x, x3)
    g = torch.Generator().manual_seed(0)
    xr = (torch.rand(64, generator=g, dtype=D) * 6 - 3).sort().values
    torch.testing.assert_close(x[:, 0], xr)
    torch.testing.assert_close(y, f + 0.3 * torch.randn(64, generator=g, dtype=D))


def test_kernel_matrix_kinds_and_gamma():
    a = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]], dtype=D)
    b = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=D)
    torch.testing.assert_close(kernel_sd.kernel_matrix(a, b, "linear"), a @ b.T)
    d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
    torch.testing.assert_close(kernel_sd.kernel_matrix(a, b), torch.exp(-d2))  # rbf, gamma 1 by default
    torch.testing.assert_close(kernel_sd.kernel_matrix(a, b, "rbf", 0.5), torch.exp(-0.5 * d2))
    d1 = (a[:, None] - b[None]).abs().sum(-1)
    torch.testing.assert_close(kernel_sd.kernel_matrix(a, b, "laplacian", 0.7), torch.exp(-0.7 * d1))
    assert torch.equal(kernel_sd.kernel_matrix(a, kind="linear", gamma=0.0), a @ a.T)  # gamma unused by linear
    with pytest.raises(ValueError, match="gamma must be > 0"):
        kernel_sd.kernel_matrix(a, gamma=0.0)
    for bad, name in (((torch.zeros(2, 2, 2, dtype=D), None), "x must be"), ((a, torch.zeros(2, 2, 2, dtype=D)), "x2 must be")):
        with pytest.raises(ValueError, match=name):
            kernel_sd.kernel_matrix(*bad)


def test_kernel_solvers_take_float32_and_compute_in_float64():
    x, y, f = kernel_sd.toy_problem(n=16)
    K = kernel_sd.kernel_matrix(x, gamma=2.0)
    K32, y32, f32 = K.float(), y.float(), f.float()
    closed = kernel_sd.self_distill_closed_form(K32, y32, 0.1, 0.2, 3, K_test=K32[:4])
    assert closed[0].dtype == D and closed[1].dtype == D
    ref = kernel_sd.self_distill_closed_form(K32.double(), y32.double(), 0.1, 0.2, 3, K_test=K32[:4].double())
    torch.testing.assert_close(closed[0], ref[0])
    it = kernel_sd.self_distill_iterative(K32, y32, 0.1, 0.2, 3, K_test=K32[:4])
    assert it[0].dtype == D and it[1].dtype == D
    torch.testing.assert_close(it[0], ref[0])
    torch.testing.assert_close(it[1], ref[1])
    a32 = kernel_sd.optimal_alpha(K32, y32, f32, 0.1, ref[0][1].float())
    a64 = kernel_sd.optimal_alpha(K32.double(), y32.double(), f32.double(), 0.1, ref[0][1].float().double())
    assert a32 == pytest.approx(a64, rel=1e-12)
    b32 = kernel_sd.best_fixed_alpha(K32, y32, f32, 0.1, 3, grid=torch.tensor([0.0, 0.3, 0.6], dtype=torch.float32))
    assert b32[2].dtype == D
    m = kernel_sd.eigen_multipliers(torch.tensor([0.5, 2.0]), 0.1, 0.2, 2)
    assert m.dtype == D


def test_kernel_solver_defaults_and_shapes():
    x, y, f = kernel_sd.toy_problem(n=12)
    K = kernel_sd.kernel_matrix(x, gamma=2.0)
    preds = kernel_sd.self_distill_closed_form(K, y, 0.1)  # alpha 0 and 5 generations by default
    assert preds.shape == (6, 12)
    torch.testing.assert_close(preds, kernel_sd.self_distill_closed_form(K, y, 0.1, 0.0, 5))
    torch.testing.assert_close(kernel_sd.self_distill_iterative(K, y, 0.1), preds)
    assert kernel_sd.collapse_curve(K, y, 0.1, 5) == [float(p.norm()) for p in preds]
    # one generation by hand: f_{k+1} = K (K + cI)^{-1} f_k at alpha 0
    A = K @ torch.linalg.inv(K + 0.1 * torch.eye(12, dtype=D))
    torch.testing.assert_close(preds[1], A @ preds[0])
    # a matrix of targets [n, m]: the multipliers act on each column
    Y = torch.stack([y, 2 * y + 1], 1)
    F2 = torch.stack([f, 2 * f + 1], 1)
    best = kernel_sd.best_fixed_alpha(K, Y, F2, 0.1, 2, grid=torch.tensor([0.0, 0.5, 1.0], dtype=D))
    errs = [float(((kernel_sd.self_distill_closed_form(K, Y, 0.1, a, 2)[-1] - F2) ** 2).mean()) for a in (0.0, 0.5, 1.0)]
    torch.testing.assert_close(best[2], torch.tensor(errs, dtype=D))
    assert best[0] == (0.0, 0.5, 1.0)[min(range(3), key=errs.__getitem__)]
    fine = kernel_sd.best_fixed_alpha(K, y, f, 0.1, 2)
    assert fine[2].shape == (1001,)
    assert fine[0] == pytest.approx(round(fine[0], 3)) and 0.0 <= fine[0] <= 1.0
    assert kernel_sd.best_fixed_alpha(K, y, f, 0.1, 2, grid=torch.tensor([1.0], dtype=D))[0] == 1.0  # one point
    fp = preds[1]
    Ap = A @ torch.stack([fp, fp], 1)
    b = A @ (Y - torch.stack([fp, fp], 1))
    ref = float(((F2 - Ap) * b).sum() / (b * b).sum())
    assert kernel_sd.optimal_alpha(K, Y, F2, 0.1, torch.stack([fp, fp], 1)) == pytest.approx(ref, rel=1e-9)
    assert math.isnan(kernel_sd.optimal_alpha(K, y, f, 0.1, y))  # f_prev = y: the step ignores alpha


def test_kernel_problem_checks():
    x, y, f = kernel_sd.toy_problem(n=6)
    K = kernel_sd.kernel_matrix(x)
    for bad_K in (torch.zeros(6, 5, dtype=D), torch.zeros(6, 6, 6, dtype=D)):
        with pytest.raises(ValueError, match="square"):
            kernel_sd.self_distill_closed_form(bad_K, y, 0.1)
    with pytest.raises(ValueError, match="symmetric"):
        kernel_sd.self_distill_closed_form(K + torch.triu(torch.ones(6, 6, dtype=D), 1) * 1e-3, y, 0.1)
    for bad_y in (y[:5], y[:, None, None].expand(6, 2, 2)):
        with pytest.raises(ValueError, match="y must be"):
            kernel_sd.self_distill_closed_form(K, bad_y, 0.1)
    for g in (-1, 2.5):
        for fn in (kernel_sd.self_distill_closed_form, kernel_sd.self_distill_iterative):
            with pytest.raises(ValueError, match="generations"):
                fn(K, y, 0.1, 0.0, g)
        with pytest.raises(ValueError, match="generations"):
            kernel_sd.best_fixed_alpha(K, y, f, 0.1, g)
    with pytest.raises(ValueError, match="alpha"):
        kernel_sd.self_distill_iterative(K, y, 0.1, 1.5)
    for bad_test in (torch.zeros(2, 5, dtype=D), torch.zeros(6, dtype=D)):
        with pytest.raises(ValueError, match="K_test"):
            kernel_sd.self_distill_closed_form(K, y, 0.1, K_test=bad_test)
    with pytest.raises(ValueError, match="f_star and f_prev"):
        kernel_sd.optimal_alpha(K, y, f, 0.1, f[:5])
    with pytest.raises(ValueError, match="f_star and f_prev"):
        kernel_sd.optimal_alpha(K, y, f[:5], 0.1, f)
    for grid in (torch.tensor([], dtype=D), torch.tensor([-0.1, 0.5], dtype=D), torch.tensor([0.5, 1.5], dtype=D)):
        with pytest.raises(ValueError, match="grid"):
            kernel_sd.best_fixed_alpha(K, y, f, 0.1, 2, grid=grid)
    assert kernel_sd.eigen_multipliers(torch.tensor([0.0, 1.0], dtype=D), 0.1, 1.0, 3).max() <= 1.0


# ============================================================================ self-supervised self-distillation


def _ce(p, log_q):
    return -(p * log_q).sum(-1).mean()


@pytest.mark.parametrize("cross_view", [True, False])
def test_random_teacher_loss_against_its_view_pairs(cross_view):
    Vw, B, K = 3, 4, 6
    s, t = _logits(80, (Vw, B), K), _logits(81, (Vw, B), K)
    loss, info = ssl.random_teacher_loss(s, t, cross_view=cross_view)  # temperatures 0.1 and 0.04
    p = _softmax(t, 0.04)
    log_q = torch.log(_softmax(s, 0.1))
    pairs = [(i, j) for i in range(Vw) for j in range(Vw) if (i != j) == cross_view]
    assert len(pairs) == (6 if cross_view else 3)
    torch.testing.assert_close(loss, torch.stack([_ce(p[i], log_q[j]) for i, j in pairs]).mean())
    torch.testing.assert_close(info["kl"], torch.stack([_kl(p[i], log_q[j].exp()).mean() for i, j in pairs]).mean())
    torch.testing.assert_close(info["teacher_entropy"], -(p * torch.log(p)).sum(-1).mean())
    q = log_q.exp()
    torch.testing.assert_close(info["student_entropy"], -(q * log_q).sum(-1).mean())
    one, _ = ssl.random_teacher_loss(s[0], t[0], student_temp=0.5, teacher_temp=0.2)  # [B, K]: one view
    torch.testing.assert_close(one, _ce(_softmax(t[0], 0.2), torch.log(_softmax(s[0], 0.5))))
    with pytest.raises(ValueError, match="student_temp"):
        ssl.random_teacher_loss(s, t, student_temp=0.0)
    with pytest.raises(ValueError, match="teacher_temp"):
        ssl.random_teacher_loss(s, t, teacher_temp=-1.0)


def test_dino_head_shapes_and_normalised_bottleneck():
    torch.manual_seed(0)
    head = ssl.DINOHead(8).double()
    assert head.last.weight.shape == (1024, 128) and head.last.bias is None  # the defaults: 1024 out, 128 bottleneck
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 512), (512, 512), (512, 128)]  # 3 layers
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2 and not isinstance(head.mlp[-1], torch.nn.GELU)
    one = ssl.DINOHead(8, out_dim=5, hidden=7, bottleneck=3, layers=1).double()
    assert [(m.in_features, m.out_features) for m in one.mlp] == [(8, 3)]
    x = torch.randn(4, 8, dtype=D)
    z = F.normalize(one.mlp(x), dim=-1)
    torch.testing.assert_close(one(x), one.last(z))
    torch.testing.assert_close(one(3.0 * x[:1]).shape, torch.Size([1, 5]))
    with pytest.raises(ValueError, match="layers"):
        ssl.DINOHead(8, layers=0)


def test_rotations_and_joint_labels():
    x = torch.arange(2 * 1 * 3 * 3, dtype=D).view(2, 1, 3, 3)
    xs, rot = ssl.rotate_batch(x)
    assert xs.shape == (8, 1, 3, 3) and rot.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for j in range(4):
        torch.testing.assert_close(xs[2 * j:2 * j + 2], torch.rot90(x, j, dims=(-2, -1)))
    xs2, rot2 = ssl.rotate_batch(x, 2)
    torch.testing.assert_close(xs2[2:], torch.rot90(x, 2, dims=(-2, -1)))
    assert rot2.tolist() == [0, 0, 1, 1]
    xs1, rot1 = ssl.rotate_batch(x[:, 0], 1)  # [B, H, W] images: three dimensions are enough
    assert torch.equal(xs1, x[:, 0]) and rot1.tolist() == [0, 0]
    for bad in (torch.zeros(2, 3, 4), torch.zeros(3, 3)):
        with pytest.raises(ValueError, match="square images"):
            ssl.rotate_batch(bad)
    with pytest.raises(ValueError, match="n_rot must be 1, 2 or 4 .rotations by multiples of 90 degrees"):
        ssl.rotate_batch(x, 3)
    y = torch.tensor([2, 0])
    assert ssl.sla_joint_labels(y).tolist() == [8, 0, 9, 1, 10, 2, 11, 3]  # class * 4 + rotation, 4 by default


def test_sla_losses_against_the_joint_formula():
    B, C, R = 3, 2, 4
    joint = _logits(82, (R * B,), C * R)
    single = _logits(83, (B,), C)
    y = torch.tensor([1, 0, 1])
    jl = torch.tensor([int(y[b]) * R + r for r in range(R) for b in range(B)])
    loss, info = ssl.sla_loss(joint, y)
    torch.testing.assert_close(loss, F.cross_entropy(joint, jl))
    assert float(info["joint_acc"]) == pytest.approx(float((joint.argmax(1) == jl).double().mean()))
    z = joint.view(R, B, C, R)
    agg = torch.stack([z[r, :, :, r] for r in range(R)], -1).mean(-1)  # each rotation read at its own label
    torch.testing.assert_close(ssl.sla_aggregate(joint), agg)
    assert float(info["agg_acc"]) == pytest.approx(float((agg.argmax(1) == y).double().mean()))
    T, beta = 2.0, 0.5
    total, parts = ssl.sla_sd_loss(joint, single, y, T=T, beta=beta)
    sd = T * T * _kl(_softmax(agg, T), _softmax(single, T)).mean()
    ce = F.cross_entropy(single, y)
    torch.testing.assert_close(parts["sd"], sd)
    torch.testing.assert_close(total, loss + sd + beta * ce)
    d_total, _ = ssl.sla_sd_loss(joint, single, y)  # T = 1, beta = 1 by default
    torch.testing.assert_close(d_total, loss + _kl(_softmax(agg), _softmax(single)).mean() + ce)
    # n_rot = 2 everywhere it is passed
    j2 = _logits(84, (2 * B,), C * 2)
    l2, _ = ssl.sla_loss(j2, y, 2)
    torch.testing.assert_close(l2, F.cross_entropy(j2, ssl.sla_joint_labels(y, 2)))
    t2, p2 = ssl.sla_sd_loss(j2, single, y, n_rot=2)
    torch.testing.assert_close(t2, l2 + p2["sd"] + p2["ce"])
    for bad in (torch.zeros(7, 8, dtype=D), torch.zeros(8, 7, dtype=D), torch.zeros(12, dtype=D)):
        with pytest.raises(ValueError, match="joint_logits"):
            ssl.sla_aggregate(bad)


def test_feature_diversity_and_ema_losses_against_their_formulas():
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(85), dtype=D) * torch.tensor([0.2, 1.0, 3.0, 0.5], dtype=D) + 5.0
    loss, info = ssl.feature_diversity_loss(z, gamma=1.0, cov_weight=0.5)
    c = z - z.mean(0)
    std = torch.sqrt(c.var(0) + 1e-4)
    var_term = torch.relu(1.0 - std).mean()
    cov = c.T @ c / 5
    off = cov - torch.diag(torch.diagonal(cov))
    cov_term = (off ** 2).sum() / 4
    torch.testing.assert_close(info["variance"], var_term)
    torch.testing.assert_close(info["covariance"], cov_term)
    torch.testing.assert_close(loss, var_term + 0.5 * cov_term)
    torch.testing.assert_close(ssl.feature_diversity_loss(z)[0], var_term + cov_term)  # cov_weight 1 by default
    s, e = _logits(86, (6,), 4), _logits(87, (6,), 4)
    total, parts = ssl.ema_self_distill_loss(s, e)  # diversity on the outputs, weight 0.1
    cons = ((s - e) ** 2).mean()
    torch.testing.assert_close(total, cons + 0.1 * ssl.feature_diversity_loss(s)[0])
    total_f, _ = ssl.ema_self_distill_loss(s, e, features=z, diversity_weight=0.3, gamma=2.0)
    torch.testing.assert_close(total_f, cons + 0.3 * ssl.feature_diversity_loss(z, gamma=2.0)[0])
    assert torch.equal(ssl.ema_self_distill_loss(s, e, diversity_weight=0.0)[0], cons)  # 0 is allowed
    with pytest.raises(ValueError, match="diversity_weight"):
        ssl.ema_self_distill_loss(s, e, diversity_weight=-0.1)


def test_self_supervised_losses_report_their_info_keys_and_defaults():
    s, t = _logits(90, (2, 4), 6), _logits(91, (2, 4), 6)
    cases = {
        "random_teacher_loss": (ssl.random_teacher_loss(s, t), {"loss", "kl", "teacher_entropy", "student_entropy"}),
        "feature_diversity_loss": (ssl.feature_diversity_loss(s[0]), {"loss", "variance", "covariance", "mean_std"}),
        "ema_self_distill_loss": (ssl.ema_self_distill_loss(s[0], t[0]),
                                  {"loss", "consistency", "diversity", "mean_std", "effective_rank"}),
        "sla_loss": (ssl.sla_loss(_logits(92, (8,), 8), torch.tensor([0, 1])), {"loss", "joint_acc", "agg_acc"}),
        "sla_sd_loss": (ssl.sla_sd_loss(_logits(92, (8,), 8), _logits(93, (2,), 2), torch.tensor([0, 1])),
                        {"loss", "sla", "sd", "ce", "single_acc"}),
    }
    for name, ((loss, info), keys) in cases.items():
        assert set(info) == keys, name
        torch.testing.assert_close(info["loss"], loss.detach(), msg=name)
    # cross-view pairs by default
    torch.testing.assert_close(cases["random_teacher_loss"][0][0], ssl.random_teacher_loss(s, t, cross_view=True)[0])
    assert not torch.allclose(cases["random_teacher_loss"][0][0], ssl.random_teacher_loss(s, t, cross_view=False)[0])


def test_dino_head_normalises_each_token_of_a_sequence():
    torch.manual_seed(1)
    head = ssl.DINOHead(6, out_dim=5, hidden=8, bottleneck=4, layers=2).double()
    x = torch.randn(2, 3, 6, dtype=D)  # [B, tokens, D]
    ref = head.last(F.normalize(head.mlp(x), dim=-1))
    torch.testing.assert_close(head(x), ref)
    torch.testing.assert_close(head(x)[1], head(x[1]))


def test_kernel_matrix_is_float64_and_the_default_grid_spans_zero_to_one():
    x = torch.linspace(-1, 1, 5)[:, None]  # float32 inputs
    assert kernel_sd.kernel_matrix(x).dtype == D and kernel_sd.kernel_matrix(x, x[:2], "laplacian").dtype == D
    xs, y, f = kernel_sd.toy_problem(n=12)
    alpha, err, errs = kernel_sd.best_fixed_alpha(kernel_sd.kernel_matrix(xs, gamma=2.0), y, f, 0.1, 3)
    assert float(errs.max() - errs.min()) > 0  # the errors vary along the grid: it is not one point repeated
    grid = torch.linspace(0, 1, 1001, dtype=D)
    assert float(errs[0]) == pytest.approx(kernel_sd.best_fixed_alpha(
        kernel_sd.kernel_matrix(xs, gamma=2.0), y, f, 0.1, 3, grid=grid[:1])[1])  # its first point is alpha = 0


def test_anchored_distill_loss_and_the_greedy_alpha_path():
    s = _logits(95, (3,))
    prev, base = _softmax(_logits(96, (3,))), _softmax(_logits(97, (3,)))
    loss, _ = self_distill.anchored_distill_loss(s, prev, base, 0.3, T=2.0)
    torch.testing.assert_close(loss, 4.0 * _kl(0.3 * base + 0.7 * prev, _softmax(s, 2.0)).mean())
    x, y, f = kernel_sd.toy_problem(n=10)
    K = kernel_sd.kernel_matrix(x, gamma=2.0)
    alphas, preds = kernel_sd.optimal_alpha_path(K, y, f, 0.1, 3)
    A = K @ torch.linalg.inv(K + 0.1 * torch.eye(10, dtype=D))
    assert len(alphas) == 3 and preds.shape == (4, 10) and all(0.0 <= a <= 1.0 for a in alphas)
    torch.testing.assert_close(preds[0], A @ y)
    for k, a in enumerate(alphas):
        raw = kernel_sd.optimal_alpha(K, y, f, 0.1, preds[k])
        assert a == min(1.0, max(0.0, raw))
        torch.testing.assert_close(preds[k + 1], A @ (a * y + (1 - a) * preds[k]))
    free, _ = kernel_sd.optimal_alpha_path(K, y, f, 0.1, 3, clip=False)
    assert free[0] == pytest.approx(kernel_sd.optimal_alpha(K, y, f, 0.1, preds[0]))


def test_the_greedy_alpha_path_clips_by_default_and_takes_alpha_1_when_the_step_ignores_it():
    x, y, f = kernel_sd.toy_problem(n=10)
    K = kernel_sd.kernel_matrix(x, gamma=2.0)
    far = 3.0 * y  # a "clean" function beyond the labels: the unconstrained weights exceed 1
    free, _ = kernel_sd.optimal_alpha_path(K, y, far, 0.1, 1, clip=False)
    assert free[0] > 1.0
    clipped, _ = kernel_sd.optimal_alpha_path(K, y, far, 0.1, 1)
    assert clipped == [1.0]
    alphas, preds = kernel_sd.optimal_alpha_path(torch.zeros(4, 4, dtype=D), y[:4], f[:4], 0.1, 2)
    assert alphas == [1.0, 1.0] and float(preds.abs().max()) == 0.0  # K = 0: every step ignores alpha
    with pytest.raises(ValueError, match="generations"):
        kernel_sd.optimal_alpha_path(K, y, f, 0.1, -1)
    s = _logits(98, (3,))
    prev, base = _softmax(_logits(99, (3,))), _softmax(_logits(100, (3,)))
    torch.testing.assert_close(self_distill.anchored_distill_loss(s, prev, base, 0.3)[0],  # T = 1 by default
                               _kl(0.3 * base + 0.7 * prev, _softmax(s)).mean())
