"""Exercises of the image labs (20 to 23).

The checkers compare the student's function with the package's own (:mod:`distill_lab.metrics.frechet`,
:func:`distill_lab.core.flows.sample_ode`, :func:`distill_lab.nets.attention.mix_tokens`) on fixed
random inputs, and with a case known on paper: Gaussians whose Fréchet distance is a sum of squares,
the exact flow map of :class:`~distill_lab.core.flows.GaussianLinearFlow`, attention written out as
its ``N x N`` weight matrix.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..core import flows
from ..methods.step import superres
from ..metrics.frechet import frechet_distance_from_stats
from ..nets.attention import mix_tokens
from . import compare, implement, prediction


def _call(fn, *args, what: str):
    """``fn(*args)``, with an error inside it reported as a wrong answer (shapes that do not broadcast...)."""
    try:
        return fn(*args)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:  # noqa: BLE001 - any crash of the student's code is a wrong answer here
        raise AssertionError(f"{what}: your function raised {type(err).__name__}: {err}") from None


def _random_cov(d: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# ---------------------------------------------------------------- lab 20: the metric


def _sqrtm_psd(s):
    lam, vec = torch.linalg.eigh(s)
    return (vec * lam.clamp_min(0).sqrt()) @ vec.T


def _frechet(mu_a, sigma_a, mu_b, sigma_b):
    root_a = _sqrtm_psd(sigma_a)
    cross = _sqrtm_psd(root_a @ sigma_b @ root_a)
    return (mu_a - mu_b).pow(2).sum() + torch.trace(sigma_a + sigma_b - 2 * cross)


def _frechet_no_two(mu_a, sigma_a, mu_b, sigma_b):
    root_a = _sqrtm_psd(sigma_a)
    return (mu_a - mu_b).pow(2).sum() + torch.trace(sigma_a + sigma_b - _sqrtm_psd(root_a @ sigma_b @ root_a))


def _frechet_no_outer_root(mu_a, sigma_a, mu_b, sigma_b):
    root_a = _sqrtm_psd(sigma_a)
    return (mu_a - mu_b).pow(2).sum() + torch.trace(sigma_a + sigma_b - 2 * root_a @ sigma_b @ root_a)


def _frechet_elementwise(mu_a, sigma_a, mu_b, sigma_b):
    return (mu_a - mu_b).pow(2).sum() + torch.trace(sigma_a + sigma_b - 2 * (sigma_a * sigma_b).abs().sqrt())


def _frechet_mean_distance_not_squared(mu_a, sigma_a, mu_b, sigma_b):
    return (mu_a - mu_b).norm() + torch.trace(sigma_a + sigma_b - 2 * _sqrtm_psd(_sqrtm_psd(sigma_a) @ sigma_b
                                                                                   @ _sqrtm_psd(sigma_a)))


@implement("20.frechet_gaussian", "the Fréchet distance between two Gaussians",
           solution=_frechet,
           wrong={"the trace term without its factor 2": _frechet_no_two,
                  "no square root of S_a^1/2 S_b S_a^1/2": _frechet_no_outer_root,
                  "sqrt(S_a * S_b) elementwise in place of the matrix root": _frechet_elementwise,
                  "|mu_a - mu_b| not squared": _frechet_mean_distance_not_squared})
def _check_frechet(fn) -> str:
    """``fn(mu_a [D], sigma_a [D, D], mu_b [D], sigma_b [D, D])`` (float64) returns the distance."""
    g = torch.Generator().manual_seed(0)
    d = 6
    mu, s = torch.randn(d, generator=g, dtype=torch.float64), _random_cov(d, g)
    got = _call(fn, mu, s, mu.clone(), s.clone(), what="two identical Gaussians")
    compare(got, torch.tensor(0.0, dtype=torch.float64), "FD of a Gaussian with itself (must be 0)", atol=1e-6)
    shift = torch.randn(d, generator=g, dtype=torch.float64)
    got = _call(fn, mu, s, mu + shift, s.clone(), what="shifted means")
    compare(got, shift.pow(2).sum(), "FD of N(mu, S) and N(mu + delta, S) (must be |delta|^2)", atol=1e-6)
    va, vb = (torch.rand(d, generator=g, dtype=torch.float64) + 0.2 for _ in range(2))
    got = _call(fn, mu, torch.diag(va), mu, torch.diag(vb), what="diagonal covariances")
    compare(got, (va.sqrt() - vb.sqrt()).pow(2).sum(), "FD of N(mu, diag a) and N(mu, diag b) "
            "(must be sum (sqrt a - sqrt b)^2)", atol=1e-6)
    for trial in range(3):
        mu_a, mu_b = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(2))
        sa, sb = _random_cov(d, g), _random_cov(d, g)
        got = _call(fn, mu_a, sa, mu_b, sb, what="random Gaussians")
        want = frechet_distance_from_stats(mu_a, sa, mu_b, sb)
        compare(got, torch.tensor(want, dtype=torch.float64),
                f"FD of two random Gaussians in {d} dimensions with full covariances (trial {trial})", atol=1e-6)
    return ("0 for identical Gaussians, |delta|^2 for shifted means, the diagonal closed form, and "
            "frechet_distance_from_stats on three pairs of full covariances")


prediction("20.fd_2_to_8", "by what factor does the teacher's FD fall from 2 to 8 Euler NFE?",
           ("under 2x", "2x to 10x", "over 10x"), solution="2x to 10x")
prediction("20.one_step_precision", "the one-step Euler blur: its precision against the real images?",
           ("near 0", "in between", "at or above the real-vs-real floor"),
           solution="at or above the real-vs-real floor")


# ---------------------------------------------------------------- lab 21: shape-generic, by broadcasting


def _denoise(velocity, x, t):
    te = t.reshape(-1, *([1] * (x.dim() - 1)))          # [B] -> [B, 1, ..., 1]
    return x + (1 - te) * velocity(x, t)


def _denoise_2d_only(velocity, x, t):
    return x + (1 - t[:, None]) * velocity(x, t)


def _denoise_t_not_1_minus_t(velocity, x, t):
    te = t.reshape(-1, *([1] * (x.dim() - 1)))
    return x + te * velocity(x, t)


def _denoise_backwards(velocity, x, t):
    te = t.reshape(-1, *([1] * (x.dim() - 1)))
    return x - (1 - te) * velocity(x, t)


def _denoise_broadcast_time_into_net(velocity, x, t):
    te = t.reshape(-1, *([1] * (x.dim() - 1)))
    return x + (1 - te) * velocity(x, te)


@implement("21.denoise_any_shape", "the clean-data guess x_t + (1 - t) v(x_t, t), for points, images and clips",
           solution=_denoise,
           wrong={"t[:, None]: broadcasts only over [B, D] points": _denoise_2d_only,
                  "t v in place of (1 - t) v": _denoise_t_not_1_minus_t,
                  "a step backwards, x_t - (1 - t) v": _denoise_backwards,
                  "the network called with t reshaped to [B, 1, 1, 1] instead of [B]":
                      _denoise_broadcast_time_into_net})
def _check_denoise(fn) -> str:
    """``fn(velocity, x [B, ...], t [B])`` returns the data prediction ``[B, ...]``."""
    g = torch.Generator().manual_seed(0)
    mu, sigma = 0.6, 0.4
    flow = flows.GaussianLinearFlow(mu=torch.tensor(mu), sigma=sigma)

    def velocity(x, t):
        if not (torch.is_tensor(t) and t.shape == (x.shape[0],)):
            raise AssertionError(f"call the velocity with one time a sample, t of shape [B] = [{x.shape[0]}], as "
                                 f"the U-Net wants; got {tuple(t.shape) if torch.is_tensor(t) else t!r}")
        return flow.velocity(x, t)

    for shape in ((64, 2), (16, 3, 8, 8), (4, 6, 1, 4, 4)):
        t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.96 + 0.02
        x = flow.sample_marginal(shape[0], t, shape[1:], generator=g).double()
        got = _call(fn, velocity, x, t, what=f"x of shape {list(shape)}")
        te = t.reshape(-1, *([1] * (len(shape) - 1)))
        a2 = (1 - te) ** 2 + te ** 2 * sigma ** 2
        posterior_mean = mu + te * sigma ** 2 / a2 * (x - te * mu)   # E[x_1 | x_t] of the Gaussian case
        compare(got, posterior_mean, f"the clean-data guess for x of shape {list(shape)}, against E[x_1 | x_t] "
                "of the Gaussian case", atol=1e-6)
    return ("equals E[x_1 | x_t], known in closed form for the Gaussian case, on points [64, 2], images "
            "[16, 3, 8, 8] and clips [4, 6, 1, 4, 4], calling the velocity with t of shape [B]")


prediction("21.one_step_family", "on images, at one step and these budgets, which family wins: regressing the "
           "teacher's map (trajectory, CD, progressive) or distribution matching (DMD)?",
           ("map regression", "distribution matching", "about the same"), solution="map regression")


# ---------------------------------------------------------------- lab 22: linear attention


def _linear_attention(q, k, v, eps=1e-6):
    q, k = F.elu(q) + 1, F.elu(k) + 1
    kv = k.transpose(-1, -2) @ v                        # [..., d, d_v]
    z = q @ k.sum(-2).unsqueeze(-1)                     # [..., N, 1]
    return (q @ kv) / (z + eps)


def _linear_unnormalised(q, k, v, eps=1e-6):
    q, k = F.elu(q) + 1, F.elu(k) + 1
    return q @ (k.transpose(-1, -2) @ v)


def _linear_relu(q, k, v, eps=1e-6):
    q, k = F.relu(q), F.relu(k)
    return (q @ (k.transpose(-1, -2) @ v)) / (q @ k.sum(-2).unsqueeze(-1) + eps)


def _linear_normaliser_over_queries(q, k, v, eps=1e-6):
    q, k = F.elu(q) + 1, F.elu(k) + 1
    return (q @ (k.transpose(-1, -2) @ v)) / ((q * k).sum(-1, keepdim=True) * k.shape[-2] + eps)


def _linear_kv_wrong_way(q, k, v, eps=1e-6):
    q, k = F.elu(q) + 1, F.elu(k) + 1
    return (q @ (v.transpose(-1, -2) @ k)) / (q @ k.sum(-2).unsqueeze(-1) + eps)


@implement("22.linear_attention", "normalised linear attention with phi = elu + 1 (Katharopoulos et al. 2020)",
           solution=_linear_attention,
           wrong={"no normaliser": _linear_unnormalised,
                  "phi = relu (weights that can all vanish)": _linear_relu,
                  "normaliser phi(q_i).phi(k_i) N, not phi(q_i).sum_j phi(k_j)": _linear_normaliser_over_queries,
                  "phi(k)^T v written as v^T phi(k)": _linear_kv_wrong_way})
def _check_linear_attention(fn) -> str:
    """``fn(q, k, v)`` with ``[..., N, d]`` tensors returns ``[..., N, d]``."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g, dtype=torch.float64) for _ in range(3))
    got = _call(fn, q, k, v, what="q, k, v of shape [2, 3, 17, 8]")
    pq, pk = F.elu(q) + 1, F.elu(k) + 1
    w = pq @ pk.transpose(-1, -2)                                    # [2, 3, N, N]: the weights, written out
    compare(got, (w / w.sum(-1, keepdim=True)) @ v, "the output against the quadratic form "
            "(phi(q) phi(k)^T normalised over the keys) v, [2, 3, 17, 8]", atol=1e-6)
    q, k, v = (torch.randn(4, 64, 16, generator=g) * 2 for _ in range(3))
    got = _call(fn, q, k, v, what="q, k, v of shape [4, 64, 16]")
    compare(got, mix_tokens(q, k, v, "linear"), "the output against mix_tokens(q, k, v, 'linear'), [4, 64, 16]",
            atol=1e-4)
    v1 = torch.ones(4, 64, 5)
    compare(_call(fn, q, k, v1, what="constant values"), v1, "the output for v = 1 everywhere (the weights of "
            "each query must sum to one, so the output is 1)", atol=1e-4)
    return ("matches the N x N form and mix_tokens(..., 'linear') on random inputs, and each query's weights "
            "sum to one")


prediction("22.linear_wins_from", "from how many tokens on is linear attention faster than the fused softmax "
           "kernel, on the device this lab runs on?",
           ("from 64", "from 256 or 1024", "from 4096", "not up to 4096"), solution="from 256 or 1024")


# ---------------------------------------------------------------- lab 23: super-resolution


def _null_part(x, factor=2):
    lr = F.avg_pool2d(x, factor)                                   # the block averages: the LR image
    up = lr.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    return x - up


def _null_range_part(x, factor=2):  # returns P x, the part the LR image fixes
    lr = F.avg_pool2d(x, factor)
    return lr.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def _null_bilinear(x, factor=2):  # bilinear upsampling: x minus it is not orthogonal to P
    return x - F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="bilinear", align_corners=False)


def _null_global_mean(x, factor=2):  # the whole image's mean per channel, not each block's
    return x - x.mean(dim=(-2, -1), keepdim=True)


def _null_max_pool(x, factor=2):  # the block maximum is not the block average
    mx = F.max_pool2d(x, factor)
    return x - mx.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


@implement("23.null_part", "the part of an HR image that its LR image (block averages) leaves open",
           solution=_null_part,
           wrong={"the range part P x instead of x - P x": _null_range_part,
                  "bilinear upsampling of the LR image": _null_bilinear,
                  "the image's global mean per channel": _null_global_mean,
                  "the block maximum instead of the block average": _null_max_pool})
def _check_null_part(fn) -> str:
    """``fn(x [N, C, H, W])`` gives ``x - up(down(x))`` for 2 x 2 blocks."""
    g = torch.Generator().manual_seed(23)
    x = torch.randn(4, 3, 8, 8, generator=g)
    out = _call(fn, x, what="on random 8 x 8 images")
    compare(out, superres.null_part(x), "x - up(down(x)) on random 8 x 8 images")
    compare(F.avg_pool2d(out, 2), torch.zeros(4, 3, 4, 4), "the block averages of your result (must vanish)")
    blocks = torch.randn(2, 3, 4, 4, generator=g).repeat_interleave(2, -2).repeat_interleave(2, -1)
    compare(_call(fn, blocks, what="on block-constant images"), torch.zeros_like(blocks),
            "a block-constant image (the LR image fixes all of it)")
    return ("matches superres.null_part on random images, has zero block averages, and vanishes on images that "
            "are constant on each 2 x 2 block")


prediction("23.best_psnr", "which sampler has the highest PSNR to the true HR images: the teacher's 1 step, its "
           "16 NFE, or TAD-SR's one step?",
           ("the teacher's 1 step", "the teacher's 16 NFE", "TAD-SR's one step"), solution="the teacher's 1 step")
