"""Tests for the token-level distillation losses (distill_lab.methods.kd.token) on logits [B, T, V]
with a mask [B, T]: every value is checked against a hand computation (softmax, explicit sums over
the vocabulary), on a mask that selects a different number of positions in each row, so a flipped
sign, swapped arguments, a dropped detach, a wrong reduction or a leaking masked position fails."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from distill_lab.methods.kd import adaptive
from distill_lab.methods.kd import token as tk

B, T, V = 3, 5, 7
MASK = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)  # 4, 1, 2 positions
N = int(MASK.sum())
_Z = torch.zeros(1, 2, dtype=torch.float64)
# Tight in float64; token.py computes in float32 today (test_float64_logits_are_not_downcast), which
# costs ~1e-7. The logic bugs these tests target give errors of order 1 either way.
CLOSE = {"rtol": 1e-10, "atol": 1e-12} if tk.forward_kl_loss(_Z, _Z).dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-7}


def _logits(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def _tokens(seed=3):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _kl(a, b):
    """KL(a || b) per position for probabilities a, b: an explicit sum over the vocabulary."""
    return (a * (a.log() - b.log())).sum(-1)


def _pq(s, t, temp=1.0):
    return torch.softmax(t.detach() / temp, -1), torch.softmax(s.detach() / temp, -1)  # teacher p, student q


DIVERGENCES = {
    "forward": tk.forward_kl_loss,
    "forward_T2": partial(tk.forward_kl_loss, T=2.0),
    "reverse": tk.reverse_kl_loss,
    **{f"gjsd_{b}": partial(tk.gjsd_loss, beta=b) for b in (0.0, 0.3, 0.5, 1.0)},
    **{f"skew_{a}": partial(tk.skew_kl_loss, alpha=a) for a in (0.0, 0.1, 0.5)},
    **{f"skew_rev_{a}": partial(tk.skew_kl_loss, alpha=a, reverse=True) for a in (0.0, 0.1, 0.5)},
    "topk3": partial(tk.topk_kl_loss, k=3),
}
SAMPLED = {  # losses on tokens; each takes (s, t, mask, tokens) and returns the loss
    "token_ce": lambda s, t, m, y: tk.token_ce_loss(s, y, m),
    "on_policy_pg": lambda s, t, m, y: tk.on_policy_pg_loss(s, t, y, m)[0],
    "minillm": lambda s, t, m, y: tk.minillm_loss(s, t, y, m, sample_logprobs=torch.full((B, T), -1.5))[0],
    "taid": lambda s, t, m, y: tk.taid_token_loss(s, t, m, 0.4)[0],
    "paced": lambda s, t, m, y: tk.paced_token_loss(s, t, y, m, T=2.0)[0],
}


def _ignore_tokens(f):
    return lambda s, t, m, y: f(s, t, m)


ALL = {**{k: _ignore_tokens(f) for k, f in DIVERGENCES.items()}, **SAMPLED}


# ----------------------------------------------------------------------------- divergences: values
@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_divergence_zero_iff_equal(name):
    """Catches a loss that is not a divergence (a wrong mixture, a missing term, a stray constant)."""
    s, t = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2)
    assert abs(DIVERGENCES[name](t.clone(), t, MASK).item()) < 1e-10
    assert DIVERGENCES[name](s, t, MASK).item() > 1e-3


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_forward_and_reverse_kl_are_masked_means_of_hand_kl(temp):
    """Catches swapped arguments (forward vs reverse), a missing T^2, and a wrong reduction (mean over
    every position, or a mean of per-row means)."""
    s, t = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2)
    p, q = _pq(s, t, temp)
    fwd, rev = _kl(p, q), _kl(q, p)
    torch.testing.assert_close(tk.forward_kl_loss(s, t, MASK, T=temp).double(), temp**2 * fwd[MASK].mean(), **CLOSE)
    torch.testing.assert_close(tk.reverse_kl_loss(s, t, MASK, T=temp).double(), temp**2 * rev[MASK].mean(), **CLOSE)
    assert abs(fwd[MASK].mean() - rev[MASK].mean()) > 1e-2  # asymmetric example: swapped arguments fail
    row_means = torch.stack([fwd[b][MASK[b]].mean() for b in range(B)]).mean()
    assert abs(fwd[MASK].mean() - fwd.mean()) > 1e-2 and abs(fwd[MASK].mean() - row_means) > 1e-2


def test_gjsd_endpoints_interior_and_limits():
    """Catches beta and 1 - beta swapped, p and q swapped in the mixture, and normalised limits that
    do not join the interior (gjsd / beta -> KL(p || q) as beta -> 0, gjsd / (1 - beta) -> KL(q || p))."""
    s, t = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2)
    p, q = _pq(s, t)
    fwd, rev = _kl(p, q)[MASK].mean(), _kl(q, p)[MASK].mean()
    torch.testing.assert_close(tk.gjsd_loss(s, t, MASK, beta=0.0).double(), fwd, **CLOSE)
    torch.testing.assert_close(tk.gjsd_loss(s, t, MASK, beta=1.0).double(), rev, **CLOSE)
    for beta in (0.1, 0.3, 0.5, 0.9):
        m = beta * p + (1 - beta) * q
        hand = (beta * _kl(p, m) + (1 - beta) * _kl(q, m))[MASK].mean()
        torch.testing.assert_close(tk.gjsd_loss(s, t, MASK, beta=beta).double(), hand, **CLOSE)
    small = 1e-4
    torch.testing.assert_close(tk.gjsd_loss(s, t, MASK, beta=small).double() / small, fwd, rtol=5e-3, atol=0)
    torch.testing.assert_close(tk.gjsd_loss(s, t, MASK, beta=1 - small).double() / small, rev, rtol=5e-3, atol=0)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_skew_kl_matches_hand_formula(alpha):
    """Catches alpha and 1 - alpha swapped, and the reversed skew built from the wrong distributions."""
    s, t = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2)
    p, q = _pq(s, t)
    fwd = _kl(p, alpha * p + (1 - alpha) * q)[MASK].mean()
    rev = _kl(q, alpha * q + (1 - alpha) * p)[MASK].mean()
    torch.testing.assert_close(tk.skew_kl_loss(s, t, MASK, alpha=alpha).double(), fwd, **CLOSE)
    torch.testing.assert_close(tk.skew_kl_loss(s, t, MASK, alpha=alpha, reverse=True).double(), rev, **CLOSE)
    if alpha == 0.0:  # the plain KLs
        torch.testing.assert_close(fwd, _kl(p, q)[MASK].mean())
        torch.testing.assert_close(rev, _kl(q, p)[MASK].mean())


def test_topk_kl_full_vocab_and_renormalised_topk():
    """Catches top-k taken from the student instead of the teacher, and a missing renormalisation."""
    s, t = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2)
    p, q = _pq(s, t)
    torch.testing.assert_close(tk.topk_kl_loss(s, t, MASK, k=V).double(), _kl(p, q)[MASK].mean(), **CLOSE)
    k = 3
    idx = t.argsort(-1, descending=True)[..., :k]
    pk, qk = p.gather(-1, idx), q.gather(-1, idx)
    hand = _kl(pk / pk.sum(-1, keepdim=True), qk / qk.sum(-1, keepdim=True))[MASK].mean()
    torch.testing.assert_close(tk.topk_kl_loss(s, t, MASK, k=k).double(), hand, **CLOSE)


# ----------------------------------------------------------------------------- masks and stop-gradients
@pytest.mark.parametrize("name", list(ALL))
def test_masked_positions_contribute_nothing(name):
    """Catches masked-out positions (prompt, padding) leaking into the value or the gradient."""
    s, t, y = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2), _tokens()
    s2 = torch.where(MASK[..., None], s, 50 * _logits(B, T, V, seed=4))
    t2 = torch.where(MASK[..., None], t, 50 * _logits(B, T, V, seed=5))
    y2 = torch.where(MASK, y, (y + 1) % V)
    torch.testing.assert_close(ALL[name](s2, t2, MASK, y2), ALL[name](s, t, MASK, y), rtol=0, atol=1e-12)
    s2.requires_grad_(True)
    ALL[name](s2, t2, MASK, y2).backward()
    assert (s2.grad[~MASK] == 0).all() and s2.grad[MASK].abs().sum() > 0


@pytest.mark.parametrize("name", list(ALL))
def test_teacher_gets_no_gradient(name):
    """Catches a dropped detach on the teacher's logits."""
    s = _logits(B, T, V, seed=1).requires_grad_(True)
    t = _logits(B, T, V, seed=2).requires_grad_(True)
    ALL[name](s, t * 1.0, MASK, _tokens()).backward()  # t * 1.0: a teacher that carries a graph
    assert t.grad is None or (t.grad == 0).all()
    assert s.grad is not None


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_forward_kl_student_gradient_is_analytic(temp):
    """Catches a sign flip, a wrong T scaling, and dividing by B*T instead of the masked count N."""
    s = _logits(B, T, V, seed=1).requires_grad_(True)
    t = _logits(B, T, V, seed=2)
    tk.forward_kl_loss(s, t, MASK, T=temp).backward()
    p, q = _pq(s, t, temp)
    torch.testing.assert_close(s.grad, temp * (q - p) * MASK[..., None] / N, **CLOSE)


def test_float64_logits_are_not_downcast():
    """Catches ``.float()`` on the logits: float64 inputs lose precision (and return float32)."""
    s, t, y = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2), _tokens()
    downcast = [name for name, f in ALL.items() if f(s, t, MASK, y).dtype != torch.float64]
    assert not downcast, f"float64 logits give a float32 loss in {downcast}"


# ----------------------------------------------------------------------------- sampled-token losses
def test_on_policy_pg_expected_gradient_is_reverse_kl_gradient():
    """Enumerate every token y of one position (row y holds token y, weight q(y)): the weighted loss
    is sum_y q(y) (-A(y) log q(y)) / V, whose gradient must be grad KL(q || p) / V. Catches a flipped
    advantage, an advantage that is not under stop-gradient, and a reward with p and q swapped."""
    s = _logits(V, seed=1).requires_grad_(True)
    t = _logits(V, seed=2)
    q = torch.softmax(s.detach(), -1)
    tokens = torch.arange(V).view(V, 1)
    loss, info = tk.on_policy_pg_loss(s.expand(V, 1, V), t.expand(V, 1, V), tokens,
                                      torch.ones(V, 1, dtype=torch.bool), weights=q.view(V, 1))
    (V * loss).backward()
    s_ref = s.detach().clone().requires_grad_(True)
    def rkl(x):
        return _kl(torch.softmax(x, -1), torch.softmax(t, -1))

    rkl(s_ref).backward()
    torch.testing.assert_close(s.grad, s_ref.grad, **CLOSE)
    with torch.no_grad():  # one step against the expected gradient lowers the reverse KL
        assert rkl(s - 0.5 * s.grad) < rkl(s) - 1e-3
    log_ratio = torch.log_softmax(s.detach(), -1) - torch.log_softmax(t, -1)
    torch.testing.assert_close(info["sampled_reverse_kl"].double(), log_ratio.mean(), **CLOSE)


def test_on_policy_pg_value_and_sampled_reverse_kl():
    """Catches a wrong sign of the loss or of the logged estimate, and an unmasked mean."""
    s, t, y = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2), _tokens()
    lq = torch.log_softmax(s, -1).gather(-1, y[..., None]).squeeze(-1)
    lp = torch.log_softmax(t, -1).gather(-1, y[..., None]).squeeze(-1)
    loss, info = tk.on_policy_pg_loss(s, t, y, MASK)
    torch.testing.assert_close(loss.double(), ((lq - lp) * lq)[MASK].mean(), **CLOSE)  # -mean(A log q), A = lp - lq
    torch.testing.assert_close(info["sampled_reverse_kl"].double(), (lq - lp)[MASK].mean(), **CLOSE)
    torch.testing.assert_close(tk.sampled_reverse_kl(s, t, y).double(), lq - lp, **CLOSE)


def test_minillm_single_step_and_importance_weights():
    """Catches a single-step term that is not the reverse KL, rho = p~/q instead of q/p~, and a
    missing clip."""
    s, t, y = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2), _tokens()
    p, q = _pq(s, t)
    kl = _kl(q, p)
    torch.testing.assert_close(tk.minillm_loss(s, t, y, MASK, long_term=False)[0], tk.reverse_kl_loss(s, t, MASK))
    lq = torch.log_softmax(s, -1).gather(-1, y[..., None]).squeeze(-1)
    for lt in (False, True):  # sample_logprobs = log q(y): rho = 1, the on-policy case
        torch.testing.assert_close(tk.minillm_loss(s, t, y, MASK, sample_logprobs=lq, long_term=lt)[0],
                                   tk.minillm_loss(s, t, y, MASK, long_term=lt)[0], **CLOSE)
    shift = torch.linspace(-2.0, 3.0, B * T, dtype=torch.float64).view(B, T)  # log rho, some above log 3
    loss, info = tk.minillm_loss(s, t, y, MASK, sample_logprobs=lq - shift, clip=3.0, long_term=False)
    rho = shift.exp().clamp(max=3.0)
    assert (shift[MASK].exp() > 3.0).any() and (shift[MASK].exp() < 1.0).any()
    torch.testing.assert_close(loss.double(), (rho * kl)[MASK].mean(), **CLOSE)
    torch.testing.assert_close(info["mean_rho"].double(), rho[MASK].mean(), **CLOSE)


def test_minillm_long_term_reward_by_hand():
    """One row, positions 1, 3, 4 masked (2 is not): R_{t+1} is the mean of the later masked rewards
    log p(y) - log q(y), 0 at the last. Catches R including the current or unmasked positions, a sum
    instead of a mean, the reward's sign, and an R that is not under stop-gradient."""
    s = _logits(1, 5, V, seed=1).requires_grad_(True)
    t, y = _logits(1, 5, V, seed=2), torch.tensor([[0, 1, 2, 3, 4]])
    mask = torch.tensor([[False, True, False, True, True]])
    lq = torch.log_softmax(s.detach(), -1)[0, torch.arange(5), y[0]]
    r = torch.log_softmax(t, -1)[0, torch.arange(5), y[0]] - lq
    R = torch.zeros(5, dtype=torch.float64)
    R[1], R[3] = (r[3] + r[4]) / 2, r[4]
    loss, _ = tk.minillm_loss(s, t, y, mask)
    base, _ = tk.minillm_loss(s, t, y, mask, long_term=False)
    lq_g = torch.log_softmax(s, -1)[0, torch.arange(5), y[0]]
    hand = -(R * lq_g)[mask[0]].mean()
    torch.testing.assert_close((loss - base).double(), hand.detach(), **CLOSE)
    g_lt = torch.autograd.grad(loss - base, s)[0]
    torch.testing.assert_close(g_lt, torch.autograd.grad(hand, s)[0], **CLOSE)


# ----------------------------------------------------------------------------- reuse of the CIFAR-track losses
def test_taid_paced_and_ce_on_masked_positions(monkeypatch):
    """Catches TAID/PACED re-implemented (or applied to unmasked positions) instead of reused, and a
    token CE that averages over the wrong positions."""
    s, t, y = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2), _tokens()
    loss, info = tk.taid_token_loss(s, t, MASK, 0.4)
    ref, ref_info = adaptive.taid_loss(s[MASK], t[MASK], 0.4)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(info["kl_to_teacher"], ref_info["kl_to_teacher"])
    loss, _ = tk.paced_token_loss(s, t, y, MASK, T=2.0, a=2.0, b=0.5)
    torch.testing.assert_close(loss, adaptive.paced_kd_loss(s[MASK], t[MASK], y[MASK], T=2.0, a=2.0, b=0.5)[0])
    torch.testing.assert_close(tk.token_ce_loss(s, y, MASK).double(), F.cross_entropy(s[MASK], y[MASK]), **CLOSE)
    monkeypatch.setattr(tk, "taid_loss", lambda *a: ("taid", a[0].shape))
    monkeypatch.setattr(tk, "paced_kd_loss", lambda *a, **kw: ("paced", a[0].shape))
    assert tk.taid_token_loss(s, t, MASK, 0.4) == ("taid", (N, V))
    assert tk.paced_token_loss(s, t, y, MASK) == ("paced", (N, V))


def test_beta_kernel():
    """Catches a wrong exponent order or a kernel that is not 0 at the ends, and silent bad input."""
    p = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    for a, b in [(1.0, 1.0), (2.0, 0.5)]:
        w = adaptive.beta_kernel(p, a, b)  # computed in float32 by design
        torch.testing.assert_close(w.double(), p**a * (1 - p) ** b, rtol=1e-6, atol=1e-7)
        assert w[0] == 0 and w[-1] == 0
    assert adaptive.beta_kernel(p, 1.0, 1.0).argmax() == 3  # largest at a / (a + b)
    for bad in (-0.1, 1.1):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            adaptive.beta_kernel(torch.tensor([0.5, bad]))
    with pytest.raises(ValueError, match="exponents"):
        adaptive.beta_kernel(p, -1.0, 1.0)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", list(ALL))
def test_bad_masks_and_vocabularies_raise(name):
    """Catches silent broadcasting of a wrong mask, a float mask used as indices, an empty mean (NaN),
    and two tokenizers mixed up."""
    s, t, y, f = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2), _tokens(), ALL[name]
    with pytest.raises(ValueError, match="selects no position"):
        f(s, t, torch.zeros(B, T, dtype=torch.bool), y)
    with pytest.raises(ValueError, match="boolean"):
        f(s, t, MASK.double(), y)
    with pytest.raises(ValueError, match="leading shape"):
        f(s, t, MASK[:, :-1], y)
    if name != "token_ce":  # the only loss without a teacher
        with pytest.raises(ValueError, match="vocabulary.*tokenizer"):
            f(s, _logits(B, T, V + 1, seed=2), MASK, y)


@pytest.mark.parametrize("name", [n for n in ALL if n in ("token_ce", "on_policy_pg", "minillm", "paced")])
def test_tokens_of_wrong_shape_raise(name):
    """Catches tokens misaligned with the logits (e.g. not shifted by one) failing deep inside torch."""
    s, t = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2)
    with pytest.raises(ValueError, match="tokens must have"):
        ALL[name](s, t, MASK, _tokens()[:, :-1])


def test_weighted_forward_kl_is_the_weighted_mean_of_per_position_kls():
    """PACED's per-sequence weights: a weighted mean over the masked positions (a plain mean, a sum, or
    weights that leak into masked positions would differ); a zero-weight row equals masking it out."""
    g = torch.Generator().manual_seed(7)
    s = torch.randn(3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    w = torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)[:, None].expand(3, 4)
    p, q = t.softmax(-1), s.softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1)
    want = (w * kl)[mask].sum() / w[mask].sum()
    got = tk.forward_kl_loss(s, t, mask, weights=w)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(tk.forward_kl_loss(s, t, mask, weights=torch.ones_like(w)), tk.forward_kl_loss(s, t, mask))
    row_masked = mask.clone()
    row_masked[2] = False
    torch.testing.assert_close(tk.forward_kl_loss(s, t, mask, weights=(w > 0).double()),
                               tk.forward_kl_loss(s, t, row_masked), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="positive sum"):
        tk.forward_kl_loss(s, t, mask, weights=torch.zeros_like(w))
    with pytest.raises(ValueError, match="shape"):
        tk.forward_kl_loss(s, t, mask, weights=w[:, :2])
