"""Exercises of the knowledge-distillation labs (10 to 13).

Each checker runs the student's function on cases with a known answer (distributions written as
``T * log p`` so that ``softmax(z / T) = p`` exactly, a diagonal kernel matrix, identical or disjoint
teachers) and against the package's own function (:mod:`distill_lab.methods.kd`) on fixed random
inputs, in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..methods import kd as kdlib
from ..methods.kd import kernel_sd
from . import compare, implement, prediction

# ---------------------------------------------------------------- helpers


def _randn(*shape, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift


def _hint(got, mistakes: dict) -> str:
    """The name of the known mistake whose value ``got`` equals, as a sentence (or "")."""
    got = torch.as_tensor(got, dtype=torch.float64).detach()
    for name, value in mistakes.items():
        value = torch.as_tensor(value, dtype=torch.float64).detach()
        if got.shape == value.shape and torch.allclose(got, value, rtol=1e-6, atol=1e-9):
            return f" Your value is exactly what {name} gives."
    return ""


def _compare(got, want, what, mistakes=None, **tol):
    try:
        compare(got, want, what, **tol)
    except AssertionError as err:
        raise AssertionError(str(err) + (_hint(got, mistakes) if mistakes else "")) from None


def _kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


# ---------------------------------------------------------------- lab 10: Hinton KD


def _kd_loss(student_logits, teacher_logits, labels, T, alpha):
    t = teacher_logits.detach()                                   # the teacher is a fixed target
    log_p = F.log_softmax(t / T, dim=-1)
    log_q = F.log_softmax(student_logits / T, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()           # KL(p_teacher || p_student), mean over B
    ce = F.cross_entropy(student_logits, labels)
    return alpha * T * T * kl + (1 - alpha) * ce


def _kd_variant(no_t2=False, swapped=False, batch_sum=False, student_at_1=False, alpha_on_ce=False,
                no_detach=False):
    def loss(s, t, y, T, alpha):
        t = t if no_detach else t.detach()
        log_p = F.log_softmax(t / T, -1)
        log_q = F.log_softmax(s if student_at_1 else s / T, -1)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1) if swapped else (log_p.exp() * (log_p - log_q)).sum(-1)
        kl = kl.sum() if batch_sum else kl.mean()
        kd = kl if no_t2 else T * T * kl
        ce = F.cross_entropy(s, y)
        return (1 - alpha) * kd + alpha * ce if alpha_on_ce else alpha * kd + (1 - alpha) * ce
    return loss


@implement("10.kd_loss", "Hinton's KD loss: alpha T^2 KL(teacher || student) at temperature T + (1 - alpha) CE",
           solution=_kd_loss,
           wrong={"no T^2 factor": _kd_variant(no_t2=True),
                  "KL(student || teacher), the direction swapped": _kd_variant(swapped=True),
                  "the sum over the batch instead of the mean": _kd_variant(batch_sum=True),
                  "the student's softmax without the temperature": _kd_variant(student_at_1=True),
                  "alpha on the label term": _kd_variant(alpha_on_ce=True),
                  "the teacher not detached": _kd_variant(no_detach=True)})
def _check_kd_loss(fn) -> str:
    """``fn(student_logits [B, C], teacher_logits [B, C], labels [B], T, alpha)`` -> a scalar."""
    # 1. a case solved by hand: softmax(T log p / T) = p exactly, so the loss is alpha T^2 KL(p || q)
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    T, B = 4.0, 4
    s, t = (T * q.log()).repeat(B, 1), (T * p.log()).repeat(B, 1)
    y = torch.zeros(B, dtype=torch.long)
    kl = float(_kl(p, q))
    got = fn(s, t, y, T, 1.0)
    _compare(got, T * T * kl, f"alpha = 1, T = {T:g}, {B} copies of p = {p.tolist()} (teacher) and "
             f"q = {q.tolist()} (student): the loss is T^2 KL(p || q) = {T * T:g} x {kl:.5f}",
             {"the KL alone, without T^2": kl, "KL(q || p)": T * T * float(_kl(q, p)),
              "the sum over the batch": B * T * T * kl,
              "softmax(student logits) without T": T * T * float(_kl(p, (T * q.log()).softmax(-1)))})
    # 2. against the package's kd_loss on random logits, for three (T, alpha)
    s, t = _randn(16, 10, seed=1, scale=2), _randn(16, 10, seed=2, scale=3)
    y = torch.arange(16) % 10
    for T, alpha in ((4.0, 0.9), (1.0, 0.5), (2.0, 0.25)):
        want, _ = kdlib.kd_loss(s, t, T=T, alpha=alpha, labels=y)
        _compare(fn(s, t, y, T, alpha), want, f"the loss on random logits at T = {T:g}, alpha = {alpha:g}",
                 {"alpha on the label term and 1 - alpha on the KD term":
                  kdlib.kd_loss(s, t, T=T, alpha=1 - alpha, labels=y)[0]})
    # 3. the gradients: the student's as the package's, none into the teacher
    s_, t_ = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    fn(s_, t_, y, 4.0, 0.9).backward()
    if t_.grad is not None and t_.grad.abs().max() > 0:
        raise AssertionError("a gradient reached the teacher's logits: the teacher is a fixed target, "
                             "use teacher_logits.detach()")
    s2 = s.clone().requires_grad_(True)
    kdlib.kd_loss(s2, t, T=4.0, alpha=0.9, labels=y)[0].backward()
    _compare(s_.grad, s2.grad, "the gradient with respect to the student's logits")
    return ("T^2 KL(p || q) on a hand-solved case, the package's kd_loss at 3 (T, alpha), its gradient, "
            "and no gradient into the teacher")


def _logit_matching_limit(student_logits, teacher_logits):
    C = student_logits.shape[-1]
    s = student_logits - student_logits.mean(-1, keepdim=True)   # softmax ignores a shift: centre
    t = teacher_logits - teacher_logits.mean(-1, keepdim=True)
    return ((s - t) ** 2).sum(-1) / (2 * C)


@implement("10.t2_limit", "the large-T limit of T^2 KL: matching centred logits",
           solution=_logit_matching_limit,
           wrong={"no centring": lambda s, t: ((s - t) ** 2).sum(-1) / (2 * s.shape[-1]),
                  "the factor 1/2 missing": lambda s, t: 2 * _logit_matching_limit(s, t),
                  "the factor 1/C missing": lambda s, t: s.shape[-1] * _logit_matching_limit(s, t)})
def _check_t2_limit(fn) -> str:
    """``fn(student_logits [B, C], teacher_logits [B, C])`` -> ``[B]``."""
    s, t = _randn(6, 10, seed=3, scale=2, shift=1.0), _randn(6, 10, seed=4, scale=3, shift=-2.0)
    s[0] += 5.0  # an example whose student logits are all shifted: the limit must not change
    C = s.shape[-1]
    got = fn(s, t)
    centred = lambda z: z - z.mean(-1, keepdim=True)  # noqa: E731
    want = ((centred(s) - centred(t)) ** 2).sum(-1) / (2 * C)
    _compare(got, want, "the limit per example (logits with different means per row)",
             {"the uncentred difference": ((s - t) ** 2).sum(-1) / (2 * C),
              "a missing 1/2": 2 * want, "a missing 1/C": C * want})
    T = 1e4
    kl = T * T * kdlib.kl_per_example(t, s, T)
    _compare(got, kl, f"T^2 KL(softmax(t/T) || softmax(s/T)) at T = {T:g} (the package's kl_per_example)",
             rtol=2e-3, atol=1e-6)
    return "equals |centred s - centred t|^2 / (2C) and T^2 KL at T = 10^4 (to 0.2%), shifts ignored"


prediction("10.kd_beats_labels", "at this lab's labelled-set size, does KD from the teacher beat labels alone by "
           "more than the seeds' spread?",
           ("yes, by more than the spread", "within the spread", "no, KD is worse"),
           solution="yes, by more than the spread")

prediction("10.kd_confidence", "at T = 1, is the KD student (trained towards the teacher's T = 4 targets) "
           "over- or under-confident on the test images?",
           ("over-confident", "about right", "under-confident"), solution="over-confident")

# ---------------------------------------------------------------- lab 11: self-distillation


def _self_distill_step(K, y, f_prev, c, alpha):
    u = alpha * y + (1 - alpha) * f_prev                            # this generation's targets
    A = K + c * torch.eye(K.shape[0], dtype=K.dtype)
    return K @ torch.linalg.solve(A, u)                             # predictions at the training points


@implement("11.sd_step", "one generation of kernel self-distillation: K (K + cI)^{-1} (alpha y + (1 - alpha) f)",
           solution=_self_distill_step,
           wrong={"alpha on the previous predictions": lambda K, y, f, c, a: _self_distill_step(K, y, f, c, 1 - a),
                  "the coefficients beta instead of the predictions K beta":
                      lambda K, y, f, c, a: torch.linalg.solve(K + c * torch.eye(len(K), dtype=K.dtype),
                                                               a * y + (1 - a) * f),
                  "the ridge c added to every entry (K + c)":
                      lambda K, y, f, c, a: K @ torch.linalg.solve(K + c, a * y + (1 - a) * f),
                  "the labels mixed into the outputs, not the targets":
                      lambda K, y, f, c, a: a * y + (1 - a) * _self_distill_step(K, y, f, c, 0.0)})
def _check_sd_step(fn) -> str:
    """``fn(K [n, n], y [n], f_prev [n], c, alpha)`` -> the next generation's predictions ``[n]``."""
    # 1. a diagonal kernel: each coordinate is shrunk by d / (d + c)
    d = torch.tensor([4.0, 1.0, 0.25, 0.05], dtype=torch.float64)
    y = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    f = torch.tensor([0.5, -1.0, 0.0, 1.0], dtype=torch.float64)
    c, a = 0.5, 0.25
    _compare(fn(torch.diag(d), y, f, c, a), d / (d + c) * (a * y + (1 - a) * f),
             f"K = diag({d.tolist()}), c = {c}, alpha = {a}: each target is shrunk by d / (d + c)")
    # 2. a tiny RBF kernel: generation after generation, as the package refits
    x, y, _ = kernel_sd.toy_problem(n=6, noise=0.5, seed=1)
    K = kernel_sd.kernel_matrix(x, gamma=2.0)
    for a in (0.0, 0.3):
        want = kernel_sd.self_distill_iterative(K, y, c, a, 4)
        f = fn(K, y, y, c, a)  # generation 0: f_prev = y makes the targets y for any alpha
        for k in range(1, 5):
            f = fn(K, y, f, c, a)
            _compare(f, want[k], f"generation {k} on a 6-point RBF kernel, c = {c}, alpha = {a}")
    # 3. Mobahi et al.: with alpha = 0, k rounds multiply y's eigen-coefficients by (d / (d + c))^(k + 1)
    dk, V = torch.linalg.eigh(K)
    _compare(_run(fn, K, y, c, 0.0, 4), V @ ((dk / (dk + c)) ** 5 * (V.T @ y)),
             "generation 4 at alpha = 0 against V diag(s^5) V^T y")
    return "a diagonal kernel by hand, 4 generations on a tiny RBF kernel (alpha 0 and 0.3), and s^(k+1)"


def _run(fn, K, y, c, a, generations):
    f = fn(K, y, y, c, a)
    for _ in range(generations):
        f = fn(K, y, f, c, a)
    return f


prediction("11.collapse", "after 100 generations of pure self-distillation (alpha = 0), what do the predictions "
           "look like?",
           ("close to the first fit", "close to the clean function", "collapsed towards zero"),
           solution="collapsed towards zero")

prediction("11.born_again", "at the ci scale, is the pure born-again student (w = 0) more accurate than the "
           "label-only student it was born from?",
           ("better than its parent", "within the seeds' spread", "worse than its parent"),
           solution="worse than its parent")

# ---------------------------------------------------------------- lab 12: random teachers, momentum


def _ema_update(target, source, decay):
    with torch.no_grad():
        for pt, ps in zip(target.parameters(), source.parameters()):
            pt.mul_(decay).add_(ps, alpha=1 - decay)


def _ema_wrong_side(target, source, decay):
    _ema_update(target, source, 1 - decay)


def _ema_copy(target, source, decay):
    with torch.no_grad():
        for pt, ps in zip(target.parameters(), source.parameters()):
            pt.copy_(ps)


def _ema_no_grad_missing(target, source, decay):
    for pt, ps in zip(target.parameters(), source.parameters()):
        pt.mul_(decay).add_(ps, alpha=1 - decay)


@implement("12.ema_update", "the momentum teacher's update: theta_bar <- m theta_bar + (1 - m) theta, in place",
           solution=_ema_update,
           wrong={"m and 1 - m swapped": _ema_wrong_side,
                  "the student copied (no averaging)": _ema_copy,
                  "the source and target swapped": lambda t, s, m: _ema_update(s, t, m),
                  "no torch.no_grad() around the in-place update": _ema_no_grad_missing})
def _check_ema_update(fn) -> str:
    """``fn(target: nn.Module, source: nn.Module, decay)`` updates ``target`` in place, returns nothing."""
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    torch.manual_seed(1)
    target = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()  # requires_grad, as a live net
    t0 = [p.detach().clone() for p in target.parameters()]
    s0 = [p.detach().clone() for p in source.parameters()]
    m = 0.9
    try:
        fn(target, source, m)
    except RuntimeError as err:
        if "requires grad" in str(err) or "leaf Variable" in str(err):
            raise AssertionError("an in-place update of a parameter that requires grad: do the update under "
                                 "torch.no_grad() (the teacher is not trained by gradients)") from None
        raise
    for k, (p, b) in enumerate(zip(source.parameters(), s0)):
        _compare(p, b, f"the source's parameter {k} (it must not change)")
    for k, (p, a, b) in enumerate(zip(target.parameters(), t0, s0)):
        _compare(p, m * a + (1 - m) * b, f"the target's parameter {k} after one update with m = {m}",
                 {"1 - m on the target": (1 - m) * a + m * b, "a copy of the source": b})
    for _ in range(9):
        fn(target, source, m)
    for k, (p, a, b) in enumerate(zip(target.parameters(), t0, s0)):
        _compare(p, m ** 10 * a + (1 - m ** 10) * b, f"the target's parameter {k} after 10 updates towards a "
                 f"fixed source: m^10 theta_bar_0 + (1 - m^10) theta")
    return "one update and ten updates (m^10) on a two-layer net, in place, the source untouched"


def _random_teacher_ce(student_logits, teacher_logits, tau_s, tau_t):
    p = F.softmax(teacher_logits.detach() / tau_t, dim=-1)          # [V, B, K], sharpened, no gradient
    log_q = F.log_softmax(student_logits / tau_s, dim=-1)
    V = student_logits.shape[0]
    ces = [-(p[i] * log_q[j]).sum(-1).mean() for i in range(V) for j in range(V) if i != j]
    return torch.stack(ces).mean()


def _rt_variant(all_pairs=False, no_detach=False, swap_temps=False, one_temp=False):
    def loss(s, t, tau_s, tau_t):
        if swap_temps:
            tau_s, tau_t = tau_t, tau_s
        if one_temp:
            tau_t = tau_s
        p = F.softmax((t if no_detach else t.detach()) / tau_t, -1)
        log_q = F.log_softmax(s / tau_s, -1)
        V = s.shape[0]
        return torch.stack([-(p[i] * log_q[j]).sum(-1).mean() for i in range(V) for j in range(V)
                            if all_pairs or i != j]).mean()
    return loss


@implement("12.random_teacher_loss",
           "the random-teacher loss: H(softmax(t_i / tau_t), softmax(s_j / tau_s)) over views i != j",
           solution=_random_teacher_ce,
           wrong={"each view paired with itself too": _rt_variant(all_pairs=True),
                  "the two temperatures swapped": _rt_variant(swap_temps=True),
                  "the teacher not sharpened (tau_t = tau_s)": _rt_variant(one_temp=True),
                  "the teacher not detached": _rt_variant(no_detach=True)})
def _check_random_teacher_loss(fn) -> str:
    """``fn(student_logits [V, B, K], teacher_logits [V, B, K], tau_s, tau_t)`` -> a scalar."""
    # a uniform teacher: H(uniform, q) = logsumexp(s / tau) - mean(s / tau), by hand
    s = _randn(2, 5, 8, seed=5, scale=0.3)
    t = torch.zeros(2, 5, 8, dtype=torch.float64)
    want = (torch.logsumexp(s / 0.1, -1) - (s / 0.1).mean(-1)).mean()
    _compare(fn(s, t, 0.1, 0.04), want, "a uniform teacher (zero logits), 2 views, tau_s = 0.1: "
             "H(uniform, q) = logsumexp(s / tau_s) - mean(s / tau_s)",
             {"tau_t used for the student": (torch.logsumexp(s / 0.04, -1) - (s / 0.04).mean(-1)).mean()})
    for V in (2, 3):
        s, t = _randn(V, 6, 16, seed=6 + V, scale=0.3), _randn(V, 6, 16, seed=9 + V, scale=0.3)
        for tau_s, tau_t in ((0.1, 0.04), (0.5, 0.2)):
            want, _ = kdlib.random_teacher_loss(s, t, student_temp=tau_s, teacher_temp=tau_t)
            _compare(fn(s, t, tau_s, tau_t), want, f"{V} views, tau_s = {tau_s}, tau_t = {tau_t} "
                     "(the package's random_teacher_loss, cross-view pairs)",
                     {"all V^2 pairs (i == j included)": kdlib.random_teacher_loss(
                         s, t, student_temp=tau_s, teacher_temp=tau_t, cross_view=False)[0] / V ** 2 * V
                      + (V - 1) / V * want})
    s_, t_ = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    fn(s_, t_, 0.1, 0.04).backward()
    if t_.grad is not None and t_.grad.abs().max() > 0:
        raise AssertionError("a gradient reached the teacher's logits: the random teacher is frozen, "
                             "use teacher_logits.detach()")
    return ("a uniform teacher by hand, the package's loss for 2 and 3 views at two temperature pairs, "
            "a frozen teacher")


prediction("12.random_teacher_gain", "a linear probe on the features: how much of the way from the random teacher "
           "to the label-trained student does the student of the random teacher go, at this lab's budget?",
           ("almost none of it", "about half", "most of it"), solution="almost none of it")

# ---------------------------------------------------------------- lab 13: adaptive distillation


def _taid_target(student_logits, teacher_logits, t):
    mix = (1 - t) * student_logits.detach() + t * teacher_logits.detach()   # interpolate the logits
    return F.softmax(mix, dim=-1)


@implement("13.taid_target", "TAID's intermediate target softmax((1 - t) sg(z_s) + t z_t)",
           solution=_taid_target,
           wrong={"the probabilities interpolated, not the logits":
                      lambda s, z, t: (1 - t) * F.softmax(s.detach(), -1) + t * F.softmax(z, -1),
                  "t on the student's end": lambda s, z, t: _taid_target(s, z, 1 - t),
                  "the student's logits not detached": lambda s, z, t: F.softmax((1 - t) * s + t * z, -1)})
def _check_taid_target(fn) -> str:
    """``fn(student_logits [B, C], teacher_logits [B, C], t)`` -> probabilities ``[B, C]``."""
    s = _randn(8, 10, seed=12, scale=2).requires_grad_(True)
    z = _randn(8, 10, seed=13, scale=3)
    _compare(fn(s, z, 0.0), F.softmax(s.detach(), -1), "t = 0: the student's own softmax")
    _compare(fn(s, z, 1.0), F.softmax(z, -1), "t = 1: the teacher's softmax")
    for t in (0.3, 0.8):
        _compare(fn(s, z, t), kdlib.taid_target(s, z, t), f"t = {t}: the package's taid_target",
                 {"interpolating probabilities": (1 - t) * F.softmax(s.detach(), -1) + t * F.softmax(z, -1),
                  "t on the student's end": kdlib.taid_target(s, z, 1 - t)})
    out = fn(s, z, 0.5)
    if out.requires_grad:
        (g,) = torch.autograd.grad((out * _randn(8, 10, seed=14)).sum(), s, allow_unused=True)
        if g is not None and g.abs().max() > 0:
            raise AssertionError("the target carries gradient into the student's logits: TAID's target is under "
                                 "stop-gradient, use student_logits.detach()")
    return "both endpoints, the package's taid_target at t = 0.3 and 0.8, and a stop-gradient on the student"


def _consensus(teacher_logits, T):
    P = F.softmax(teacher_logits / T, dim=-1)                       # [M, B, C]
    p_bar = P.mean(0)

    def H(p):
        return -(p * p.clamp_min(1e-300).log()).sum(-1)

    js = H(p_bar) - H(P).mean(0)                                    # generalised Jensen-Shannon
    M, C = teacher_logits.shape[0], teacher_logits.shape[-1]
    return p_bar, 1 - js / math.log(min(M, C))


def _consensus_logit_mean(z, T):
    _, w = _consensus(z, T)
    return F.softmax(z.mean(0) / T, -1), w


def _consensus_log_c(z, T):
    p_bar, w = _consensus(z, T)
    M, C = z.shape[0], z.shape[-1]
    return p_bar, 1 - (1 - w) * math.log(min(M, C)) / math.log(C)


@implement("13.consensus", "the teachers' mixture and their agreement w = 1 - JS / log min(M, C)",
           solution=_consensus,
           wrong={"the mean of the logits instead of the mixture": _consensus_logit_mean,
                  "JS divided by log C": _consensus_log_c,
                  "the disagreement JS / log min(M, C) instead of 1 minus it":
                      lambda z, T: (_consensus(z, T)[0], 1 - _consensus(z, T)[1])})
def _check_consensus(fn) -> str:
    """``fn(teacher_logits [M, B, C], T)`` -> ``(p_bar [B, C], w [B])``."""
    z = _randn(1, 4, 10, seed=15, scale=2).repeat(3, 1, 1)
    p_bar, w = fn(z, 1.0)
    _compare(w, torch.ones(4, dtype=torch.float64), "three identical teachers: full agreement, w = 1")
    one_hot = 60.0 * torch.eye(10, dtype=torch.float64)[:3, None, :].repeat(1, 2, 1)  # teacher m sure of class m
    _compare(fn(one_hot, 1.0)[1], torch.zeros(2, dtype=torch.float64),
             "three teachers each certain of a different class: no agreement, w = 0", atol=1e-6)
    z = _randn(3, 12, 10, seed=16, scale=2)
    for T in (1.0, 4.0):
        want_p, want_w = kdlib.consensus_targets(z, T=T)
        got_p, got_w = fn(z, T)
        _compare(got_p, want_p, f"the mixture p_bar at T = {T:g} (the package's consensus_targets)",
                 {"softmax of the mean logits": F.softmax(z.mean(0) / T, -1)})
        _compare(got_w, want_w, f"the agreement w at T = {T:g}, 3 teachers and 10 classes",
                 {"JS / log C": _consensus_log_c(z, T)[1], "1 - w (the disagreement)": 1 - want_w})
    return ("w = 1 for identical teachers, 0 for disjoint certain ones, the package's consensus_targets "
            "at T = 1 and 4")


prediction("13.consensus_right_where_agree", "on which half of the training images is the 3-teacher "
           "consensus more "
           "often right: where they agree most or least?",
           ("where they agree most", "no difference", "where they agree least"), solution="where they agree most")
