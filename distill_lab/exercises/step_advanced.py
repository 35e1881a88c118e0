"""Exercises of the advanced toy step-distillation labs (04 flow maps, 05 distribution
matching, 06 reward tilting, 07 leaps and transitions, 08 few-step distribution matching, 09 rewards and
preferences).

Each checker runs the student's function on the closed-form Gaussian case of :mod:`distill_lab.core.flows`
(:class:`~distill_lab.core.flows.GaussianLinearFlow`: velocity, flow map and data prediction are exact), where
the right answer is known on paper, and checks what sits under stop-gradient by the gradient that reaches a
parameter. Lab 06's checker also compares with the package's own tilt
(:func:`distill_lab.methods.step.reward.tilted_velocity`) on a non-linear reward.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..core import flows
from ..core.flows import denoise, expand_t, interpolate
from ..methods.step import fewstep as FS
from ..methods.step import flow_map as fm
from ..methods.step import leap as L
from ..methods.step import preference as PF
from ..methods.step import reward as R
from . import compare, implement, prediction


def _call(what: str, fn, *args):
    """Run ``fn(*args)``; turn a runtime error (a shape mismatch, a missing graph) into a checker message."""
    try:
        return fn(*args)
    except (RuntimeError, TypeError, ValueError) as err:
        raise AssertionError(f"{what} raised {type(err).__name__}: {err}") from None


# ---------------------------------------------------------------- lab 04: flow maps


def _lagrangian_residual(flow_map, velocity, x, s, t):
    X, dX = fm.jvp_t(flow_map, x, s, t)
    with torch.no_grad():
        target = velocity(X.detach(), t)
    return dX - target


def _lagrangian_no_sg(flow_map, velocity, x, s, t):
    X, dX = fm.jvp_t(flow_map, x, s, t)
    return dX - velocity(X, t)


def _lagrangian_at_start(flow_map, velocity, x, s, t):
    _, dX = fm.jvp_t(flow_map, x, s, t)
    with torch.no_grad():
        target = velocity(x, t)
    return dX - target


def _lagrangian_at_s(flow_map, velocity, x, s, t):
    X, dX = fm.jvp_t(flow_map, x, s, t)
    with torch.no_grad():
        target = velocity(X.detach(), s)
    return dX - target


def _lagrangian_flipped(flow_map, velocity, x, s, t):
    return -_lagrangian_residual(flow_map, velocity, x, s, t)


def _lagrangian_d_ds(flow_map, velocity, x, s, t):
    X, dX = fm.jvp_s(flow_map, x, s, t)
    with torch.no_grad():
        target = velocity(X.detach(), t)
    return dX - target


@implement("04.lagrangian_residual", "the Lagrangian residual of a flow map",
           solution=_lagrangian_residual,
           wrong={"no stop-gradient on the target v(X, t)": _lagrangian_no_sg,
                  "velocity at the starting point x instead of X_{s,t}(x)": _lagrangian_at_start,
                  "velocity at time s instead of t": _lagrangian_at_s,
                  "flipped sign (v - dX/dt)": _lagrangian_flipped,
                  "derivative in s instead of t": _lagrangian_d_ds})
def _check_lagrangian_residual(fn) -> str:
    """``fn(flow_map, velocity, x, s, t) -> [B, ...]``: ``d/dt X_{s,t}(x) - sg[v(X_{s,t}(x), t)]``."""
    g = torch.Generator().manual_seed(4)
    for mu, shape in ((torch.tensor([1.5, -0.5]), (2,)), (1.5, (3, 4, 4))):
        flow = flows.GaussianLinearFlow(mu, 0.5)
        x = torch.randn(128, *shape, generator=g)
        s = 0.3 * torch.rand(128, generator=g)
        t = 0.5 + 0.5 * torch.rand(128, generator=g)
        where = f"x of shape {[128, *shape]}"
        res = _call("your function", fn, flow.flow_map, flow.velocity, x, s, t)
        compare(res, torch.zeros_like(x), f"the residual of the exact Gaussian flow map ({where}), which must "
                "vanish: is the velocity read at the map's output X_{s,t}(x) and at time t, and the derivative "
                "taken in t?", atol=1e-4)
        # a wrong map X + c (t - s)^2 x, with c a parameter: its residual and its gradient are known on paper
        c = torch.tensor(0.1, requires_grad=True)
        gap = expand_t(t - s, x)
        off = lambda xx, ss, tt: flow.flow_map(xx, ss, tt) + c * expand_t(tt - ss, xx) ** 2 * xx  # noqa: E731
        with torch.no_grad():
            X = off(x, s, t)
            want = flow.velocity(flow.flow_map(x, s, t), t) + 2 * c * gap * x - flow.velocity(X, t)
        res = _call("your function", fn, off, flow.velocity, x, s, t)
        compare(res, want, f"the residual of the perturbed map X + 0.1 (t-s)^2 x ({where}); a flipped sign shows "
                "as ratio -1", atol=1e-4)
        if not isinstance(res, torch.Tensor) or not res.requires_grad:
            raise AssertionError("your residual carries no gradient: the derivative d/dt X_{s,t}(x) must keep its "
                                 "graph (only the target v(X_{s,t}(x), t) is under stop-gradient)")
        (grad,) = torch.autograd.grad(res.pow(2).mean(), c)
        compare(grad, (2 * want * 2 * gap * x).mean(), "the gradient of mean(residual^2) with respect to the "
                "map's parameter: it must flow through d/dt X only; is the target v(X_{s,t}(x), t) detached, "
                "the point X fed into it included?", atol=1e-5)
    return ("vanishes on the exact Gaussian flow map and equals the closed form on a perturbed one, for [B, 2] "
            "and [B, 3, 4, 4]; the gradient flows through dX/dt only")


prediction("04.residual_left", "after Lagrangian training, which residual has fallen least, relative to the warm "
           "start?", ("lagrangian", "eulerian", "progressive"), solution="eulerian")

prediction("04.more_jumps", "the distilled flow map with 4 jumps instead of 1: better by more than a tenth, or not?",
           ("better", "not better"), solution="not better")


# ---------------------------------------------------------------- lab 05: distribution matching


def _dmd_loss(x, real_velocity, fake_velocity, t, noise):
    with torch.no_grad():
        xt = interpolate(noise, x.detach(), t)
        x_real = denoise(real_velocity, xt, t)
        x_fake = denoise(fake_velocity, xt, t)
        dims = tuple(range(1, x.dim()))
        weight = (x.detach() - x_real).abs().mean(dim=dims, keepdim=True)
        g = (x_fake - x_real) / weight
    return 0.5 * (x - (x.detach() - g)).pow(2).mean()


def _dmd_variant(flip=1.0, sg=True, normalize=True, reduce="mean", swap_noise=False, weight_on="real"):
    def loss(x, real_velocity, fake_velocity, t, noise):
        with torch.set_grad_enabled(not sg):
            xs = x.detach() if sg else x
            xt = interpolate(xs, noise, t) if swap_noise else interpolate(noise, xs, t)
            x_real = denoise(real_velocity, xt, t)
            x_fake = denoise(fake_velocity, xt, t)
            ref = x_real if weight_on == "real" else x_fake
            weight = (xs - ref).abs().flatten(1).mean(1) if normalize else torch.ones(x.shape[0])
            g = flip * (x_fake - x_real) / expand_t(weight, x)
        sq = (x - (xs - g)).pow(2)
        return 0.5 * (sq.mean() if reduce == "mean" else sq.sum())

    return loss


@implement("05.dmd_loss", "DMD's surrogate loss, whose gradient is the distribution-matching direction",
           solution=_dmd_loss,
           wrong={"real minus fake (flipped sign)": _dmd_variant(flip=-1.0),
                  "no stop-gradient (the target x - g keeps its graph)": _dmd_variant(sg=False),
                  "DMD's weight forgotten": _dmd_variant(normalize=False),
                  "weight from the fake prediction": _dmd_variant(weight_on="fake"),
                  "sum instead of mean": _dmd_variant(reduce="sum"),
                  "noised the wrong way round, (1 - t) x + t eps": _dmd_variant(swap_noise=True)})
def _check_dmd_loss(fn) -> str:
    """``fn(x, real_velocity, fake_velocity, t, noise) -> scalar`` whose gradient in ``x`` is ``g / x.numel()``."""
    gen = torch.Generator().manual_seed(5)
    sigma = 0.5
    for mu_real, mu_fake, shape in ((torch.tensor([1.0, -1.0]), torch.tensor([-0.5, 0.5]), (2,)),
                                    (1.0, -0.5, (3, 4, 4))):
        real, fake = flows.GaussianLinearFlow(mu_real, sigma), flows.GaussianLinearFlow(mu_fake, sigma)
        n = 128
        x0 = mu_fake + sigma * torch.randn(n, *shape, generator=gen)  # the generator's samples: the fake Gaussian
        t = 0.05 + 0.9 * torch.rand(n, generator=gen)
        noise = torch.randn(n, *shape, generator=gen)
        # two critic parameters, zero-valued: no gradient may reach them
        a = torch.zeros((), requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        real_v = lambda xx, tt: real.velocity(xx, tt) + a * xx  # noqa: E731
        fake_v = lambda xx, tt: fake.velocity(xx, tt) + b * xx  # noqa: E731
        x = x0.clone().requires_grad_(True)
        loss = _call("your function", fn, x, real_v, fake_v, t, noise)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = getattr(loss, "shape", type(loss))
            raise AssertionError(f"return the loss as one scalar tensor, got {got}")
        _call("loss.backward() on your loss", loss.backward)
        # on paper: x_t = (1 - t) eps + t x; D(x_t) = mu + t sigma^2 / a^2 (x_t - t mu); D_fake - D_real =
        # (mu_fake - mu_real) (1 - t)^2 / a^2; DMD's weight is mean |x - D_real| per sample
        te = expand_t(t, x0)
        xt = (1 - te) * noise + te * x0
        a2 = (1 - te) ** 2 + te ** 2 * sigma ** 2
        d_real = mu_real + te * sigma ** 2 / a2 * (xt - te * mu_real)
        weight = (x0 - d_real).abs().flatten(1).mean(1).view(-1, *[1] * len(shape))
        g = (mu_fake - mu_real) * (1 - te) ** 2 / a2 / weight * torch.ones_like(x0)
        where = f"x of shape {[n, *shape]}"
        if x.grad is None:
            raise AssertionError(f"no gradient reached the generator's samples x ({where}): the loss must depend "
                                 "on x itself, as 0.5 * mean((x - sg(x - g))^2)")
        for name, p in (("real", a), ("fake", b)):
            if p.grad is not None and float(p.grad.abs()) > 1e-8:
                raise AssertionError(f"gradient reached the {name} velocity's parameters: both data predictions "
                                     "must be computed under torch.no_grad() (they are critics, not what this "
                                     "step trains)")
        if float((x.grad * (mu_fake - mu_real)).sum()) < 0:
            raise AssertionError("sign: a gradient-descent step on your loss moves the samples away from the "
                                 "teacher (the 'real' Gaussian) and toward the fake one; g is fake minus real")
        compare(x.grad * x.numel(), g, f"x.numel() * dloss/dx, which must be DMD's direction g = (D_fake - "
                f"D_real) / mean|x - D_real| ({where}; a ratio of x.numel() means a sum where a mean belongs)",
                atol=1e-4)
    return ("on two Gaussians, for [B, 2] and [B, 3, 4, 4]: the gradient in x is (D_fake - D_real) / "
            "mean|x - D_real| over x.numel(), so a descent step moves samples toward the teacher; no gradient "
            "reaches either velocity")


prediction("05.critic_budget", "on eight Gaussians, which DMD student keeps the modes' masses more even: the "
           "starved critic (1 update, small learning rate) or the full one (5 updates)?",
           ("starved critic", "full critic", "about the same"), solution="full critic")


# ---------------------------------------------------------------- lab 06: reward-tilted distillation


def _tilted_velocity(velocity, reward, beta):
    def v_tilted(x, t):
        te = expand_t(t, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = velocity(xg, t)
            (g,) = torch.autograd.grad(reward(xg + (1 - te) * v).sum(), xg)
        return (v + (1 - te) / te * g / beta).detach()

    return v_tilted


def _tilted_variant(factor="(1-t)/t", at_xt=False, times_beta=False, enable_grad=True, detach=True):
    def make(velocity, reward, beta):
        def v_tilted(x, t):
            te = expand_t(t, x)
            with torch.enable_grad() if enable_grad else contextlib.nullcontext():
                xg = x.detach().requires_grad_(True)
                v = velocity(xg, t)
                point = xg if at_xt else xg + (1 - te) * v
                (g,) = torch.autograd.grad(reward(point).sum(), xg)
            k = (1 - te) / te if factor == "(1-t)/t" else te / (1 - te)
            out = v + k * g * (beta if times_beta else 1 / beta)
            return out.detach() if detach else out

        return v_tilted

    return make


@implement("06.tilted_velocity", "the reward-tilted teacher velocity",
           solution=_tilted_velocity,
           wrong={"t / (1 - t) instead of (1 - t) / t": _tilted_variant(factor="t/(1-t)"),
                  "reward's gradient at x_t, not at the data prediction D(x_t)": _tilted_variant(at_xt=True),
                  "multiplied by beta instead of divided": _tilted_variant(times_beta=True),
                  "no torch.enable_grad (fails inside DMD's torch.no_grad)": _tilted_variant(enable_grad=False),
                  "returned with its graph (a target must be detached)": _tilted_variant(detach=False)})
def _check_tilted_velocity(fn) -> str:
    """``fn(velocity, reward, beta) -> v~`` with ``v~(x, t) = v + ((1 - t) / t) grad_x r(D(x)) / beta``."""
    gen = torch.Generator().manual_seed(6)
    mu, sigma, a = torch.tensor([1.0, 0.0]), 0.6, torch.tensor([0.8, -0.4])
    base = flows.GaussianLinearFlow(mu, sigma)
    x = 2 * torch.randn(1000, 2, generator=gen)
    t = 0.02 + 0.97 * torch.rand(1000, generator=gen)
    for beta in (0.5, 2.0):
        v_tilt = _call("your function", fn, base.velocity, lambda y: R.reward_linear(y, a), beta)
        with torch.no_grad():  # as DMD calls its teacher
            got = _call("your tilted velocity, called under torch.no_grad() as DMD calls it (the reward's "
                        "gradient needs torch.enable_grad() inside)", v_tilt, x, t)
        shifted = flows.GaussianLinearFlow(mu + sigma ** 2 * a / beta, sigma)
        compare(got, shifted.velocity(x, t), f"the tilted velocity of N(mu, sigma^2 I) by r(x) = a.x at "
                f"beta={beta}, which is the exact velocity of N(mu + sigma^2 a / beta, sigma^2 I)", atol=1e-4)
    # a non-linear reward: against the package's own tilt
    disk = lambda y: R.reward_disk(y, center=(1.2, 0.3), radius=0.5, width=0.3)  # noqa: E731
    xg = x[:300].clone().requires_grad_(True)
    got = _call("your tilted velocity", fn(base.velocity, disk, 1.0), xg, t[:300])
    if isinstance(got, torch.Tensor) and got.requires_grad:
        raise AssertionError("your tilted velocity carries a graph back to x: it is a target, return it detached")
    compare(got, R.tilted_velocity(base.velocity, disk, 1.0)(x[:300], t[:300]),
            "the tilted velocity for a smooth disk reward at beta=1", atol=1e-4)
    inf = _call("your tilted velocity at beta=inf", fn(base.velocity, disk, math.inf), x[:300], t[:300])
    compare(inf, base.velocity(x[:300], t[:300]), "the tilted velocity at beta=inf, which is the teacher's own")
    return ("matches the exact velocity of the tilted Gaussian at beta 0.5 and 2 (under torch.no_grad), the "
            "package's tilt for a disk reward, and the teacher at beta=inf; the result is detached")


prediction("06.fidelity", "as beta falls from inf to 0.5, what happens to the student's distance to the untilted "
           "data (its ratio to the noise floor)?", ("rises", "falls", "about the same"), solution="rises")


# ---------------------------------------------------------------- lab 07: leaps and transitions


def _leap_start(coarse, tau, noise):
    tau = torch.as_tensor(tau, dtype=coarse.dtype)
    tau = tau.expand(coarse.shape[0]) if tau.dim() == 0 else tau
    te = tau.reshape(-1, *([1] * (coarse.dim() - 1)))
    return (1 - te) * noise + te * coarse


def _leap_swapped(coarse, tau, noise):  # tau on the noise: tau = 1 would be pure noise
    return _leap_start(noise, tau, coarse)


def _leap_added(coarse, tau, noise):  # noise added on top of the whole input, not interpolated
    te = torch.as_tensor(tau, dtype=coarse.dtype)
    te = te.reshape(-1, *([1] * (coarse.dim() - 1))) if te.dim() else te
    return coarse + (1 - te) * noise


def _leap_sqrt(coarse, tau, noise):  # a variance-preserving mix: not the lab's linear path
    te = torch.as_tensor(tau, dtype=coarse.dtype)
    te = te.reshape(-1, *([1] * (coarse.dim() - 1))) if te.dim() else te
    return torch.sqrt(1 - te ** 2) * noise + te * coarse


@implement("07.leap_start", "VideoScene's leap state: the coarse estimate noised to the leap time on the flow's path",
           solution=_leap_start,
           wrong={"tau and 1 - tau swapped": _leap_swapped,
                  "noise added to the whole input": _leap_added,
                  "a variance-preserving mix (sqrt(1 - tau^2) noise)": _leap_sqrt})
def _check_leap_start(fn) -> str:
    """``fn(coarse [B, ...], tau (scalar or [B]), noise [B, ...])``."""
    g = torch.Generator().manual_seed(7)
    c, z = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    tau = torch.rand(16, generator=g)
    compare(_call("your leap state, per-sample tau", fn, c, tau, z), L.leap_start(c, tau, z),
            "the leap state with one tau per sample")
    compare(_call("your leap state, tau = 0.7", fn, c, 0.7, z), L.leap_start(c, 0.7, z), "the leap state at tau = 0.7")
    compare(_call("your leap state at tau = 1", fn, c, 1.0, z), c, "at tau = 1 the leap state is the input itself")
    ci, zi = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    ti = torch.rand(4, generator=g)
    compare(_call("your leap state on images", fn, ci, ti, zi), L.leap_start(ci, ti, zi), "the same on [4, 3, 4, 4] images")
    return "matches leap.leap_start on points and images, per-sample and scalar tau, and is the input at tau = 1"


prediction("07.tmd_trade", "against plain 2-step DMD with the same two backbone passes, what does TMD's stochastic "
           "flow head change on the checkerboard?",
           ("recall up, precision down", "precision up, recall down", "both up", "both down"),
           solution="recall up, precision down")


# ---------------------------------------------------------------- lab 08: few-step distribution matching
def _renoise(y, s, tau, xi):
    s, tau = flows.batch_t(s, y), flows.batch_t(tau, y)
    r = tau / s
    return expand_t(r, y) * y + expand_t(((1 - tau) ** 2 - (r * (1 - s)) ** 2).clamp_min(0).sqrt(), y) * xi


def _renoise_fresh(y, s, tau, xi):  # forgets y: a fresh draw of the path at tau around the mean
    tau = flows.batch_t(tau, y)
    return expand_t(tau, y) * y + expand_t(1 - tau, y) * xi


def _renoise_no_shrink(y, s, tau, xi):  # keeps y whole and only adds noise
    s, tau = flows.batch_t(s, y), flows.batch_t(tau, y)
    return y + expand_t(((1 - tau) ** 2 - (1 - s) ** 2).clamp_min(0).sqrt(), y) * xi


def _renoise_vp(y, s, tau, xi):  # a variance-preserving mix
    s, tau = flows.batch_t(s, y), flows.batch_t(tau, y)
    r = tau / s
    return expand_t(r, y) * y + expand_t((1 - r ** 2).clamp_min(0).sqrt(), y) * xi


@implement("08.renoise", "TDM's forward kernel: a point of the path at time s carried back to the noisier time tau",
           solution=_renoise,
           wrong={"a fresh noising (tau y + (1 - tau) xi)": _renoise_fresh,
                  "noise added without shrinking y": _renoise_no_shrink,
                  "a variance-preserving mix": _renoise_vp})
def _check_renoise(fn) -> str:
    """``fn(y [B, ...], s [B], tau [B], xi [B, ...])`` with ``0 < tau <= s <= 1``."""
    g = torch.Generator().manual_seed(11)
    y, xi = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    s = 0.3 + 0.7 * torch.rand(16, generator=g)
    tau = s * torch.rand(16, generator=g).clamp_min(0.05)
    compare(_call("your renoise", fn, y, s, tau, xi), FS.renoise(y, s, tau, xi), "the carried-back point, per-sample times")
    compare(_call("your renoise at tau = s", fn, y, s, s, xi), y, "at tau = s nothing changes")
    flow = flows.GaussianLinearFlow(torch.tensor([1.5, -1.0]), 0.5)
    n = 100_000
    ss, tt = torch.full((n,), 0.8), torch.full((n,), 0.3)
    yy = flow.flow_map(torch.randn(n, 2, generator=g), torch.zeros(n), ss)
    x = _call("your renoise on 100k points", fn, yy, ss, tt, torch.randn(n, 2, generator=g))
    compare(x.mean(0), 0.3 * flow.mu, "the mean of renoised exact marginal points at tau = 0.3 (tau * mu)", atol=0.02)
    compare(x.var(0), flow.a(torch.tensor(0.3)).pow(2).expand(2), "their variance (a(tau)^2 of the marginal)", atol=0.02)
    yi, xii = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    si = 0.5 + 0.5 * torch.rand(4, generator=g)
    ti = si * 0.5
    compare(_call("your renoise on images", fn, yi, si, ti, xii), FS.renoise(yi, si, ti, xii), "the same on [4, 3, 4, 4] images")
    return ("matches fewstep.renoise on points and images, is the identity at tau = s, and carries the exact marginal "
            "at s to the marginal at tau")


prediction("08.more_steps", "each student is trained for a 4-step Euler sampler; from 1 to 4 sampling steps, whose "
           "samples improve by more than the noise floor?",
           ("TDM only", "CDM only", "both", "neither"), solution="TDM only")


# ---------------------------------------------------------------- lab 09: rewards and preferences
def _pairs(x_a, x_b, score, tie):
    with torch.no_grad():
        sa, sb = score(x_a), score(x_b)
    a_wins = (sa >= sb)[:, None]
    return torch.where(a_wins, x_a, x_b), torch.where(a_wins, x_b, x_a), (sa - sb).abs() > tie


def _pairs_swapped(x_a, x_b, score, tie):
    w, l, k = _pairs(x_a, x_b, score, tie)
    return l, w, k


def _pairs_all_kept(x_a, x_b, score, tie):
    w, l, _ = _pairs(x_a, x_b, score, tie)
    return w, l, torch.ones(x_a.shape[0], dtype=torch.bool)


def _pairs_detached(x_a, x_b, score, tie):
    w, l, k = _pairs(x_a, x_b, score, tie)
    return w.detach(), l.detach(), k


@implement("09.pairs", "Distillation-DPO's preference pairs: winner and loser of each pair by a non-differentiable score",
           solution=_pairs,
           wrong={"winner and loser swapped": _pairs_swapped, "ties kept": _pairs_all_kept,
                  "samples detached (the generator would get no gradient)": _pairs_detached})
def _check_pairs(fn) -> str:
    """``fn(x_a [B, 2], x_b [B, 2], score, tie) -> (x_win, x_lose, keep)``."""
    g = torch.Generator().manual_seed(13)
    xa = (2 * torch.randn(64, 2, generator=g)).requires_grad_(True)
    xb = (2 * torch.randn(64, 2, generator=g)).requires_grad_(True)
    out = _call("your pairs", fn, xa, xb, PF.column_score, 0.0)
    if not isinstance(out, tuple) or len(out) != 3:
        raise AssertionError("return a tuple (x_win, x_lose, keep)")
    w, l, k = out
    ww, wl, wk, _ = PF.preference_pairs(xa, xb, PF.column_score, 0.0)
    compare(w.detach(), ww.detach(), "the winners (the higher column score of each pair; the first sample on a tie)")
    compare(l.detach(), wl.detach(), "the losers")
    if k.dtype != torch.bool or k.tolist() != wk.tolist():
        raise AssertionError("keep must be a [B] bool tensor, true exactly where the two scores differ by more than tie")
    if not (w.requires_grad and l.requires_grad):
        raise AssertionError("the winners and losers must keep the generator's graph (pick them with torch.where, "
                             "do not detach them): only the score is read without gradient")
    w2, _, k2 = _call("your pairs with tie = 1", fn, xa, xb, PF.column_score, 1.0)
    if k2.tolist() != PF.preference_pairs(xa, xb, PF.column_score, 1.0)[2].tolist():
        raise AssertionError("with tie = 1, only pairs whose scores differ by more than 1 are kept")
    return "winners, losers and kept pairs match preference_pairs, ties are dropped, and the samples keep their graph"


prediction("09.reward_only", "fine-tuning the DMD student on the reward alone (no DMD term) for the same steps: how far does "
           "its fidelity ratio move from the stage-I student's?",
           ("less than 2x", "2x to 10x", "more than 10x"), solution="more than 10x")
