"""Sample quality for image generators, offline: a Fréchet distance and precision/recall in the
feature space of this project's own CIFAR-10 classifier, each beside its noise floor.

**This is not FID.** FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to
the pool3 features of one particular Inception-v3 network, on 50,000 samples; its weights cannot be
fetched on the machines this lab runs on. Here the same distance is taken in the penultimate
features of a CIFAR-10 classifier trained by :mod:`distill_lab.teacher_cifar` (128 features for the
committed teacher, 256 for the ``gpu`` one; Inception's are 2048). Numbers are comparable with each other, at the same feature network and the
same sample size, and with their noise floor; never with published FIDs. Call it "FD (classifier
features)" in tables.

* :func:`frechet_distance`: ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})``
  (Heusel et al. 2017; Dowson & Landau 1982), in float64, with matrix square roots taken by
  symmetric eigendecomposition and negative round-off eigenvalues clipped to zero, so rank-deficient
  covariances (fewer samples than features, or features that are exact copies) give a finite answer
  instead of a complex one.
* :func:`precision_recall`: the k-nearest-neighbour manifolds of Kynkäänniemi et al. (2019),
  "Improved precision and recall metric for assessing generative models": precision is the
  share of generated samples inside the real manifold (fidelity), recall the share of real samples
  inside the generated one (coverage; a mode-dropping generator has low recall).
* :class:`ClassifierFeatures`: images -> features ``[N, D]`` through ``model.features`` of a
  :mod:`distill_lab.cifar_models` network. Any other callable ``images -> [N, D]`` can stand in
  wherever a ``feature_fn`` is taken: an Inception-v3 feature extractor from a standard FID package,
  where the network allows downloading its weights, turns :func:`evaluate_samples` into FID and
  Inception precision/recall.
* :func:`fd_noise_floor`, :func:`pr_noise_floor`: the same numbers between two disjoint random halves
  of the real data, each of the size the generator is measured at. Both estimators are biased at
  finite sample size (the Fréchet distance upward, roughly like ``1 / n``), so a value means
  something only beside its floor: the best a perfect sampler can show at that ``n``.
* :func:`evaluate_features`, :func:`evaluate_samples`: everything above in one dict, the generated
  samples and the floor measured against the same reference half of the real data.

**Image conventions.** Generators in this lab work in ``[-1, 1]`` floats (``x = 2 * pixel / 255 - 1``);
the CIFAR-10 tensors of :func:`distill_lab.cifar.load_cifar10` are ``uint8`` in ``[0, 255]``; the
classifiers take :func:`distill_lab.cifar.normalize`'s per-channel standardisation. :func:`to_uint8`
and :func:`to_classifier_input` convert; :class:`ClassifierFeatures` accepts either image kind and by
default rounds float images to ``uint8`` first, so generated and real images take the same path (as
samples saved to PNG do for FID).

**The real reference.** Use images the feature classifier was not trained on (the test split) and a
*random* subset of them: the CIFAR-10 JPEG archive is decoded class by class, so ``test_x[:n]``
holds a few classes only, and the Fréchet distance to it is large for any good sampler.

    >>> feats = ClassifierFeatures.from_teacher()               # doctest: +SKIP
    >>> real = feats(data["test_x"])                            # doctest: +SKIP
    >>> fake = feats(sampler(noise))                            # doctest: +SKIP
    >>> evaluate_features(real, fake)                           # doctest: +SKIP
    {'n': ..., 'fd': ..., 'fd_floor': ..., 'precision': ..., 'recall': ..., ...}
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from .cifar import MEAN, STD, normalize

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
def _halves(n_total: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    a, b = _halves(real.shape[0], n, seed)
    return frechet_distance(real[a], real[b])


def pr_noise_floor(real_feats, n: int, seed: int = 0, k: int = 3) -> tuple[float, float]:
    """Precision and recall between two disjoint random halves of the real features, ``n`` each."""
    real = _features(real_feats, "real_feats")
    a, b = _halves(real.shape[0], n, seed)
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
    a, b = _halves(real.shape[0], n, seed)
    ref, other = real[a], real[b]
    p, r = precision_recall(ref, fake, k)
    pf, rf = precision_recall(ref, other, k)
    return {"n": n, "fd": frechet_distance(fake, ref), "fd_floor": frechet_distance(other, ref),
            "precision": p, "recall": r, "precision_floor": pf, "recall_floor": rf}


def evaluate_samples(real_images: torch.Tensor, fake_images: torch.Tensor, feature_fn: FeatureFn,
                     k: int = 3, seed: int = 0) -> dict:
    """:func:`evaluate_features` on ``feature_fn(real_images)`` and ``feature_fn(fake_images)``.

    ``feature_fn`` is the hook for the feature network: a :class:`ClassifierFeatures` offline, or a
    standard FID package's Inception-v3 feature extractor where its weights can be fetched.
    """
    return evaluate_features(feature_fn(real_images), feature_fn(fake_images), k, seed)


# ------------------------------------------------------------------ images -> classifier features
def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Generator output in ``[-1, 1]`` -> ``uint8`` pixels: ``round((x + 1) * 127.5)``, clipped.

    The inverse of ``x = pixel / 127.5 - 1``, exactly, on the 256 pixel values.
    """
    if not x.is_floating_point():
        raise ValueError(f"to_uint8 takes float images in [-1, 1], got dtype {x.dtype}")
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``uint8`` pixels -> floats in ``[-1, 1]``: ``pixel / 127.5 - 1`` (the generator's convention)."""
    if x.dtype != torch.uint8:
        raise ValueError(f"from_uint8 takes uint8 images, got dtype {x.dtype}")
    return x.to(dtype) / 127.5 - 1


def to_classifier_input(x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` -> what the CIFAR-10 classifiers take: ``(pixel / 255 - MEAN) / STD``.

    ``uint8`` images are pixels in ``[0, 255]``; float images are the generator's ``[-1, 1]``
    (values outside are clipped). With ``quantize``, float images are rounded to ``uint8`` first, the
    path real data takes; without, they are mapped directly (``(x + 1) / 2`` in place of
    ``pixel / 255``).
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return normalize(x)
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 pixels or floats in [-1, 1], got dtype {x.dtype}")
    if quantize:
        return normalize(to_uint8(x))
    mean = torch.tensor(MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(3, 1, 1)
    return ((x.float().clamp(-1, 1) + 1) / 2 - mean) / std


class ClassifierFeatures:
    """``feature_fn(images) -> [N, D]``: penultimate features of a CIFAR-10 classifier.

    Parameters
    ----------
    model : a :mod:`distill_lab.cifar_models` network (anything with ``features(x) -> [B, D]`` on
        normalised images), usually the trained teacher: :meth:`from_teacher`.
    size : images of another size are resized to ``size x size`` (bilinear, antialiased) after
        normalisation, since the classifier was trained at 32 x 32. Generated 16 x 16 images and the
        real images they are compared with must both be 16 x 16 here, so both take the same path.
        ``None`` keeps the size.
    quantize : round float images to ``uint8`` first (see :func:`to_classifier_input`).
    batch_size, device : how the features are computed. The model runs in eval mode (BatchNorm
        with its running statistics) without gradients; its mode is restored afterwards.

    Returns float64 CPU features. Not Inception features: see the module docstring.
    """

    def __init__(self, model: torch.nn.Module, size: int | None = 32, quantize: bool = True,
                 batch_size: int = 500, device: str | torch.device | None = None):
        if not hasattr(model, "features"):
            raise ValueError("the model needs a features(x) -> [B, D] method (see distill_lab.cifar_models)")
        self.model, self.size, self.quantize, self.batch_size = model, size, quantize, batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    @classmethod
    def from_teacher(cls, path=None, **kwargs) -> "ClassifierFeatures":
        """Features of the committed CIFAR-10 teacher (:func:`distill_lab.teacher_cifar.load_teacher`)."""
        from .teacher_cifar import DEFAULT_DIR, load_teacher
        return cls(load_teacher(path or DEFAULT_DIR)["model"], **kwargs)

    @property
    def dim(self) -> int:
        """``D``, the number of features."""
        return int(self.model.feature_dim)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(images.shape)}")
        was_training = self.model.training
        self.model.eval()
        try:
            out = []
            for i in range(0, images.shape[0], self.batch_size):
                x = to_classifier_input(images[i:i + self.batch_size].to(self.device), self.quantize)
                if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
                    x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                      antialias=True)
                out.append(self.model.features(x).to("cpu", torch.float64))
        finally:
            self.model.train(was_training)
        return torch.cat(out)
