"""How good, and how collapsed, learned features are.

* :func:`linear_probe` -- test accuracy of a closed-form ridge classifier on frozen features.
* :func:`effective_rank` -- Roy & Vetterli (2007): ``exp`` of the entropy of the normalised singular values.
* :func:`collapse_metrics` -- per-dimension spread and effective rank of a batch of features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def flat_features(z: torch.Tensor) -> torch.Tensor:
    if z.dim() < 2 or z.shape[0] < 2:
        raise ValueError(f"features must be [B, ...] with B >= 2, got {tuple(z.shape)}")
    return z.reshape(z.shape[0], -1)


@torch.no_grad()
def linear_probe(features_train: torch.Tensor, y_train: torch.Tensor, features_test: torch.Tensor,
                 y_test: torch.Tensor, l2: float = 1e-3, num_classes: int | None = None) -> float:
    """Test accuracy of a linear classifier on frozen features: closed-form ridge regression onto
    one-hot targets (the "linear probe" of representation learning, e.g. Sarnthein et al. 2023's
    probing accuracy, here in its deterministic least-squares form instead of logistic regression).

    Features are standardised with the training mean and std; the ridge ``l2`` is relative to the
    number of training examples; solved in float64, so the result is deterministic.

    Parameters
    ----------
    features_train : ``[N, ...]`` (flattened to ``[N, D]``); y_train : ``[N]`` integer labels.
    features_test : ``[M, ...]``; y_test : ``[M]``.

    Returns
    -------
    accuracy on the test set, a float in [0, 1].
    """
    xtr = features_train.reshape(features_train.shape[0], -1).detach().double().cpu()
    xte = features_test.reshape(features_test.shape[0], -1).detach().double().cpu()
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train and test features differ in dimension: {xtr.shape[1]} vs {xte.shape[1]}")
    if y_train.shape != (xtr.shape[0],) or y_test.shape != (xte.shape[0],):
        raise ValueError("y_train / y_test must be [N] / [M] integer labels matching the features")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    if not (torch.isfinite(xtr).all() and torch.isfinite(xte).all()):
        raise ValueError("features contain NaN or inf")
    C = num_classes or int(max(y_train.max(), y_test.max())) + 1
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-8)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ones = torch.ones(xtr.shape[0], 1, dtype=xtr.dtype)
    X = torch.cat([xtr, ones], 1)
    Y = F.one_hot(y_train.long().cpu(), C).double()
    reg = l2 * X.shape[0] * torch.eye(X.shape[1], dtype=X.dtype)
    reg[-1, -1] = 0.0  # do not shrink the intercept
    W = torch.linalg.solve(X.T @ X + reg + 1e-10 * torch.eye(X.shape[1], dtype=X.dtype), X.T @ Y)
    pred = (torch.cat([xte, torch.ones(xte.shape[0], 1, dtype=xte.dtype)], 1) @ W).argmax(1)
    return float((pred == y_test.long().cpu()).double().mean())


@torch.no_grad()
def effective_rank(features: torch.Tensor) -> float:
    """Effective rank of the centred features, Roy & Vetterli (2007): ``exp(H(sigma / sum sigma))`` with
    sigma the singular values. ``D`` for isotropic features, 1 for features on a line, 0 for constant."""
    z = flat_features(features).double()
    s = torch.linalg.svdvals(z - z.mean(0))
    if s.sum() <= 1e-12 * max(1.0, float(z.abs().max())):
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum()))


@torch.no_grad()
def collapse_metrics(features: torch.Tensor) -> dict:
    """``{"mean_std", "min_std", "effective_rank"}`` of ``[B, ...]`` features: how collapsed they are."""
    z = flat_features(features).float()
    std = z.std(0)
    return {"mean_std": float(std.mean()), "min_std": float(std.min()), "effective_rank": effective_rank(z)}
