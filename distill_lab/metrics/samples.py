"""Distances between samples, always read beside their noise floor.

* :func:`sliced_w2`: the sliced 2-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015):
  project both samples on random unit directions, sort, and compare quantiles.
* :func:`energy_distance`: ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Székely & Rizzo 2013), whose
  square root is a metric on distributions.
* :func:`exact_w2`: the exact 2-Wasserstein distance between the empirical measures of two samples
  (optimal transport by POT's network simplex, on at most ``max_n`` points each). Unlike the sliced
  distance it sees the joint geometry: mass moved across a checkerboard's gap costs what it should.
* :func:`noise_floor`: the same distance between two independent draws of the data. A student is
  as good as the data allows when its distance is near this floor; a distance is meaningless
  without it.
* :func:`coupled_error`: ``E |student(z) - teacher_ODE(z)|`` for the *same* noise ``z``: how well a
  student reproduces the teacher's deterministic map, not just its distribution.

All take ``[B, ...]`` tensors and flatten the trailing dims.
"""

from __future__ import annotations

from typing import Callable

import torch


def _flat(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 2:
        raise ValueError(f"samples must have shape [B, ...], got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1).float()


def _check_pair(x, y):
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples live in different spaces: {tuple(x.shape)} vs {tuple(y.shape)}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("a sample contains NaN or inf; the distance would be meaningless")
    return x, y.to(x.device)


def _quantiles(p: torch.Tensor, n: int) -> torch.Tensor:
    """Projections ``[n_proj, N]`` sorted along each row and resampled to ``n`` quantiles (so samples
    of unequal size compare). Rows are contiguous, so the sort runs along memory (1.6x faster than
    sorting columns of ``[N, n_proj]``, measured on 10,000 points and 512 directions)."""
    p = p.sort(1).values
    if p.shape[1] == n:
        return p
    pos = (torch.arange(n, device=p.device) + 0.5) / n * p.shape[1] - 0.5
    pos = pos.clamp(0, p.shape[1] - 1)
    lo, hi = pos.floor().long(), pos.ceil().long()
    w = (pos - lo.float())[None, :]
    return p[:, lo] * (1 - w) + p[:, hi] * w


def _directions(dim: int, n_proj: int, seed: int, device) -> torch.Tensor:
    """``[n_proj, dim]`` unit directions fixed by ``seed`` (drawn as ``[dim, n_proj]``, as they always were,
    so every recorded figure stays the same)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(dim, n_proj, generator=g).to(device)
    return (dirs / dirs.norm(dim=0, keepdim=True)).T


def sliced_quantiles(y: torch.Tensor, n_proj: int = 256, seed: int = 0) -> torch.Tensor:
    """``y``'s sorted projections on :func:`sliced_w2`'s directions, ``[n_proj, len(y)]``: pass them as
    ``y_sorted`` when many samples are compared to one reference (its sort is then done once)."""
    y = y.reshape(y.shape[0], -1)
    return _quantiles(_directions(y.shape[1], n_proj, seed, y.device) @ y.T, y.shape[0])


def sliced_w2(x: torch.Tensor, y: torch.Tensor, n_proj: int = 256, seed: int = 0,
              y_sorted: torch.Tensor | None = None) -> float:
    """Sliced 2-Wasserstein distance between two samples (``sqrt`` of the mean squared W2 over
    ``n_proj`` random directions, fixed by ``seed`` so that every method is measured alike).
    ``y_sorted``: :func:`sliced_quantiles` of ``y`` with the same ``n_proj`` and ``seed``, to skip its sort."""
    x, y = _check_pair(x, y)
    dirs = _directions(x.shape[1], n_proj, seed, x.device)
    n = max(x.shape[0], y.shape[0])
    if y_sorted is None:
        y_sorted = _quantiles(dirs @ y.T, y.shape[0])
    elif tuple(y_sorted.shape) != (n_proj, y.shape[0]):
        raise ValueError(f"y_sorted has shape {tuple(y_sorted.shape)}, expected [n_proj, len(y)] = "
                         f"[{n_proj}, {y.shape[0]}]: make it with sliced_quantiles(y, n_proj, seed)")
    px = _quantiles(dirs @ x.T, n)
    py = y_sorted if y_sorted.shape[1] == n else _quantiles(y_sorted, n)
    return float((px - py).pow(2).mean().sqrt())


def energy_distance(x: torch.Tensor, y: torch.Tensor, max_n: int = 4000) -> float:
    """Energy distance ``2E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic), on at most ``max_n`` points each."""
    x, y = _check_pair(x, y)
    x, y = x[:max_n], y[:max_n]
    dxy = torch.cdist(x, y).mean()
    dxx = torch.cdist(x, x).mean()
    dyy = torch.cdist(y, y).mean()
    return float(2 * dxy - dxx - dyy)


def exact_w2(x: torch.Tensor, y: torch.Tensor, max_n: int = 2000) -> float:
    """Exact 2-Wasserstein distance ``sqrt(min_P sum_ij P_ij |x_i - y_j|^2)`` between the uniform
    empirical measures of the first ``max_n`` points of ``x`` and of ``y`` (they must be independent
    draws, so the first points are as good as any).

    The optimal plan comes from POT (``ot.emd2``: the network simplex of Bonneel et al. 2011) on the
    squared Euclidean costs, in float64. Zero between a set and itself; for two 1D samples it is the
    distance between their sorted values. Memory and time grow as ``max_n^2`` (2,000 points: about 0.7 s
    on one CPU thread)."""
    try:
        import ot
    except ImportError as err:  # pragma: no cover - pot is a dependency; this guards a partial install
        raise ImportError("exact_w2 needs POT, the Python Optimal Transport library: pip install pot") from err
    if max_n < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
    x, y = _check_pair(x, y)
    xa = x[:max_n].detach().double().cpu().numpy()
    ya = y[:max_n].detach().double().cpu().numpy()
    cost = ot.dist(xa, ya, metric="sqeuclidean")
    w2sq = ot.emd2([], [], cost, numItermax=max(100_000, 50 * cost.size))
    return float(max(w2sq, 0.0) ** 0.5)


METRICS: dict[str, Callable[..., float]] = {"sliced_w2": sliced_w2, "energy": energy_distance, "exact_w2": exact_w2}


def get_metric(name: str) -> Callable[..., float]:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return METRICS[name]


def noise_floor(sample: Callable[[int, int], torch.Tensor], n: int, metric: str = "sliced_w2",
                seed: int = 0, **kw) -> float:
    """The metric between two independent draws of ``n`` points, ``sample(n, seed)``."""
    a, b = sample(n, seed + 1000), sample(n, seed + 2000)
    return get_metric(metric)(a, b, **kw)


def coupled_error(student_x: torch.Tensor, teacher_x: torch.Tensor) -> float:
    """``E |student(z) - teacher(z)|``: mean Euclidean distance between paired samples."""
    if student_x.shape != teacher_x.shape:
        raise ValueError(f"paired samples must have the same shape, got {tuple(student_x.shape)} and {tuple(teacher_x.shape)}")
    return float((_flat(student_x) - _flat(teacher_x.to(student_x.device))).norm(dim=1).mean())
