"""Sample quality in any feature space, offline: a Fréchet distance and precision/recall, each beside
its noise floor.

* :func:`frechet_distance`: ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})``
  (Heusel et al. 2017; Dowson & Landau 1982), in float64, with matrix square roots taken by
  symmetric eigendecomposition and negative round-off eigenvalues clipped to zero, so rank-deficient
  covariances (fewer samples than features, or features that are exact copies) give a finite answer
  instead of a complex one.
* :func:`precision_recall`: the k-nearest-neighbour manifolds of Kynkäänniemi et al. (2019),
  "Improved precision and recall metric for assessing generative models": precision is the
  share of generated samples inside the real manifold (fidelity), recall the share of real samples
  inside the generated one (coverage; a mode-dropping generator has low recall).
* :func:`fd_noise_floor`, :func:`pr_noise_floor`: the same numbers between two disjoint random halves
  of the real data (:func:`disjoint_halves`), each of the size the generator is measured at. Both
  estimators are biased at finite sample size (the Fréchet distance upward, roughly like ``1 / n``),
  so a value means something only beside its floor: the best a perfect sampler can show at that ``n``.
* :func:`evaluate_features`, :func:`evaluate_samples`: everything above in one dict, the generated
  samples and the floor measured against the same reference half of the real data.

The feature network is a parameter (``feature_fn: images -> [N, D]``). **With Inception-v3's pool3
features on 50,000 samples the Fréchet distance is FID** (Heusel et al. 2017); those weights cannot be
fetched on the machines this lab runs on, so the image track measures it in the penultimate features
of the project's own CIFAR-10 classifier (:class:`distill_lab.cifar.features.ClassifierFeatures`):
"FD (classifier features)", comparable with itself at the same feature network and sample size, and
with its noise floor, never with published FIDs. A standard FID package's feature extractor, where
the network allows downloading its weights, plugs in as ``feature_fn``.

    >>> real, fake = feature_fn(real_images), feature_fn(sampler(noise))   # doctest: +SKIP
    >>> evaluate_features(real, fake)                                      # doctest: +SKIP
    {'n': ..., 'fd': ..., 'fd_floor': ..., 'precision': ..., 'recall': ..., ...}
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------ inputs
def _features(x, name: str = "features") -> torch.Tensor:
    """``x`` (tensor or array) as a float64 CPU tensor ``[N, D]``, checked."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a tensor or array of shape [N, D], got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape [N, D] (one feature vector a sample), got {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf; a distance would be meaningless")
    return x


def _pair(a, b, names=("feats_a", "feats_b")) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _features(a, names[0]), _features(b, names[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} live in different spaces: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


# ------------------------------------------------------------------ Fréchet distance
def feature_stats(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``.

    Needs ``N >= 2``. With ``N <= D`` the covariance has rank at most ``N - 1 < D`` and a
    ``UserWarning`` says so: the Fréchet distance is still finite, but dominated by sampling noise.
    Compute the real data's statistics once and reuse them with :func:`frechet_distance_from_stats`.
    """
    x = _features(feats)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {n}")
    if n <= d:
        warnings.warn(f"{n} samples of {d} features: the covariance is rank-deficient (rank <= {n - 1}), so the "
                      f"Fréchet distance is dominated by sampling noise. Use more than {d} samples (ideally "
                      f"10x that) and compare only with a noise floor at the same n.", UserWarning, stacklevel=3)
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (n - 1)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a positive semi-definite matrix, via ``eigh``; round-off
    negative eigenvalues are clipped to zero."""
    lam, vec = torch.linalg.eigh((s + s.T) / 2)
    return (vec * lam.clamp_min(0).sqrt()) @ vec.T


def frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """The Fréchet (2-Wasserstein squared) distance between ``N(mu_a, sigma_a)`` and ``N(mu_b, sigma_b)``.

    ``d^2 = |mu_a - mu_b|^2 + tr(sigma_a) + tr(sigma_b) - 2 tr((sigma_a^{1/2} sigma_b sigma_a^{1/2})^{1/2})``
    (Dowson & Landau 1982; Heusel et al. 2017). ``sigma_a^{1/2} sigma_b sigma_a^{1/2}`` is
    symmetric positive semi-definite, so the trace of its square root is the sum of the square roots
    of its eigenvalues (clipped at zero), all in float64: no complex parts to discard and no
    ``eps * I`` to add, as the ``scipy.linalg.sqrtm`` route needs on near-singular covariances.
    """
    mu_a, mu_b = (torch.as_tensor(m, dtype=torch.float64) for m in (mu_a, mu_b))
    sa, sb = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma_a, sigma_b))
    d = mu_a.shape[0]
    if mu_a.shape != (d,) or mu_b.shape != (d,) or sa.shape != (d, d) or sb.shape != (d, d):
        raise ValueError(f"need means [D] and covariances [D, D] of one D; got {tuple(mu_a.shape)}, "
                         f"{tuple(sa.shape)}, {tuple(mu_b.shape)}, {tuple(sb.shape)}")
    root_a = _psd_sqrt(sa)
    m = root_a @ sb @ root_a
    cross = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + torch.trace(sa) + torch.trace(sb) - 2 * cross
    return max(float(fd), 0.0)


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features ``[N_a, D]``, ``[N_b, D]``.

    Heusel et al. (2017), "GANs trained by a two time-scale update rule converge to a local Nash
    equilibrium": with Inception-v3 pool3 features this is FID; with any other features (here:
    a CIFAR-10 classifier's) it is *not* FID, and only comparable at the same features and sample
    sizes. Symmetric, zero for identical sets, ``|c|^2`` for a set and its translate by ``c``.
    """
    a, b = _pair(feats_a, feats_b)
    return frechet_distance_from_stats(*feature_stats(a), *feature_stats(b))


# ------------------------------------------------------------------ precision and recall
def _knn_radii(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its ``k``-th nearest other row."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        d = torch.cdist(x[i:i + batch_size], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the point itself is the 0-th neighbour
    return torch.cat(out)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Whether each point lies in at least one ball ``|p - c_j| <= r_j``."""
    out = []
    for i in range(0, points.shape[0], batch_size):
        d = torch.cdist(points[i:i + batch_size], centres)
        out.append((d <= radii[None, :]).any(1))
    return torch.cat(out)


def precision_recall(real_feats, fake_feats, k: int = 3, batch_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi, Karras, Laine, Lehtinen & Aila 2019).

    Each set's manifold is the union of balls centred on its samples, each of radius the distance to
    that sample's ``k``-th nearest neighbour in the same set (``k = 3`` in the paper). Then

    * precision = share of ``fake_feats`` inside the real manifold: are generated samples realistic?
    * recall = share of ``real_feats`` inside the fake manifold: is all of the data covered?

    Identical sets give ``(1, 1)``; sets far apart give ``(0, 0)``. Each set needs more than ``k``
    samples; the paper uses equal sizes (50,000), and at small sizes both numbers drop, so read them
    beside :func:`pr_noise_floor` at the same sizes. Distances are Euclidean, in float64, computed in
    chunks of ``batch_size`` rows (memory ``batch_size * N * 8`` bytes).
    """
    real, fake = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"))
    if k < 1:
        raise ValueError(f"k must be a positive number of neighbours, got {k}")
    for name, x in (("real_feats", real), ("fake_feats", fake)):
        if x.shape[0] <= k:
            raise ValueError(f"{name} has {x.shape[0]} samples; k={k} nearest neighbours need more than {k}")
    precision = _inside(fake, real, _knn_radii(real, k, batch_size), batch_size).double().mean()
    recall = _inside(real, fake, _knn_radii(fake, k, batch_size), batch_size).double().mean()
    return float(precision), float(recall)


# ------------------------------------------------------------------ noise floors
def disjoint_halves(n_total: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random index sets of size ``n`` from ``range(n_total)``."""
    if n < 2 or 2 * n > n_total:
        raise ValueError(f"two disjoint halves of n={n} samples need 2 <= n and 2n <= {n_total} real samples")
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return perm[:n], perm[n:2 * n]


def fd_noise_floor(real_feats, n: int, seed: int = 0) -> float:
    """The Fréchet distance between two disjoint random halves of the real features, ``n`` each.

    What a sampler that draws exactly from the data distribution would score at sample size ``n``:
    report it beside every Fréchet distance measured with ``n`` generated samples.
    """
    real = _features(real_feats, "real_feats")
    a, b = disjoint_halves(real.shape[0], n, seed)
    return frechet_distance(real[a], real[b])


def pr_noise_floor(real_feats, n: int, seed: int = 0, k: int = 3) -> tuple[float, float]:
    """Precision and recall between two disjoint random halves of the real features, ``n`` each."""
    real = _features(real_feats, "real_feats")
    a, b = disjoint_halves(real.shape[0], n, seed)
    return precision_recall(real[a], real[b], k)


def evaluate_features(real_feats, fake_feats, k: int = 3, seed: int = 0) -> dict:
    """FD and precision/recall of ``fake_feats`` (``n`` samples) with their noise floors.

    The real features are split into two disjoint random halves ``A``, ``B`` of ``n`` each (so at least
    ``2n`` are needed); the generated samples are measured against ``A`` and the floor is ``B``
    against ``A``: same reference, same sizes. Returns ``n, fd, fd_floor, precision, recall,
    precision_floor, recall_floor``.
    """
    real, fake = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"))
    n = fake.shape[0]
    a, b = disjoint_halves(real.shape[0], n, seed)
    ref, other = real[a], real[b]
    p, r = precision_recall(ref, fake, k)
    pf, rf = precision_recall(ref, other, k)
    return {"n": n, "fd": frechet_distance(fake, ref), "fd_floor": frechet_distance(other, ref),
            "precision": p, "recall": r, "precision_floor": pf, "recall_floor": rf}


def evaluate_samples(real_images: torch.Tensor, fake_images: torch.Tensor, feature_fn: FeatureFn,
                     k: int = 3, seed: int = 0) -> dict:
    """:func:`evaluate_features` on ``feature_fn(real_images)`` and ``feature_fn(fake_images)``.

    ``feature_fn`` is the hook for the feature network: a :class:`~distill_lab.cifar.features.ClassifierFeatures` offline, or a
    standard FID package's Inception-v3 feature extractor where its weights can be fetched.
    """
    return evaluate_features(feature_fn(real_images), feature_fn(fake_images), k, seed)
