"""How good, and how well calibrated, a classifier's predictions are.

* :func:`accuracy`, :func:`nll` -- top-1 accuracy and the mean negative log-likelihood;
* :func:`reliability_curve`, :func:`expected_calibration_error` -- Guo et al. (ICML 2017);
* :func:`agreement` -- top-1 agreement between a student and its teacher (fidelity);
* :func:`metrics_from_logits` -- ``{"acc", "nll", "ece"}`` at once.

Logits and probabilities have the class dimension last, ``[B, C]`` or ``[B, ..., C]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.checks import check_labels, check_logits, check_pair, check_probs


@torch.no_grad()
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``[B, ..., C]`` logits (or probabilities) against ``[B, ...]`` labels."""
    check_logits("logits", logits)
    labels = check_labels(labels, logits)
    return float((logits.argmax(-1) == labels).double().mean())


@torch.no_grad()
def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood (cross-entropy, nats) of ``[B, ..., C]`` logits."""
    check_logits("logits", logits)
    labels = check_labels(labels, logits)
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), labels.reshape(-1)))


@torch.no_grad()
def reliability_curve(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """Reliability diagram data (Guo, Pleiss, Sun & Weinberger, ICML 2017, "On calibration of modern
    neural networks", Sec. 2): examples binned by top-label confidence in ``n_bins`` equal-width bins
    ``(e_b, e_{b+1}]`` (confidence 0 goes to the first bin).

    probs : ``[B, ..., C]`` probabilities (softmax outputs); labels : ``[B, ...]``.
    Returns ``{"edges" [n_bins + 1], "confidence" [n_bins], "accuracy" [n_bins], "counts" [n_bins]}``
    as float64 tensors; empty bins have ``nan`` confidence and accuracy.
    """
    check_probs("probs", probs)
    labels = check_labels(labels, probs)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, pred = probs.reshape(-1, probs.shape[-1]).double().max(-1)
    correct = (pred == labels.reshape(-1)).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, edges[1:-1].to(conf.device), right=False).cpu()
    conf, correct = conf.cpu(), correct.cpu()
    counts = torch.bincount(idx, minlength=n_bins).double()
    s_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    s_acc = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    nan = torch.full_like(counts, float("nan"))
    return {"edges": edges, "counts": counts,
            "confidence": torch.where(counts > 0, s_conf / counts.clamp_min(1), nan),
            "accuracy": torch.where(counts > 0, s_acc / counts.clamp_min(1), nan)}


@torch.no_grad()
def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Naeini, Cooper & Hauskrecht 2015; Guo et al. 2017, Sec. 2)::

        ECE = sum_b (n_b / n) | acc(b) - conf(b) |

    over the equal-width confidence bins of :func:`reliability_curve`. 0 for a calibrated model (up to
    sampling noise); e.g. every prediction at confidence 0.9 with 60% of them right gives 0.3.
    """
    rc = reliability_curve(probs, labels, n_bins)
    n = rc["counts"].sum()
    keep = rc["counts"] > 0
    gap = (rc["accuracy"][keep] - rc["confidence"][keep]).abs()
    return float((rc["counts"][keep] / n * gap).sum())


@torch.no_grad()
def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Top-1 agreement: the fraction of examples where student and teacher predict the same class
    (Stanton et al. 2021, "Does knowledge distillation really work?", measure fidelity this way)."""
    check_pair(student_logits, teacher_logits)
    return float((student_logits.argmax(-1) == teacher_logits.argmax(-1)).double().mean())


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor) -> dict:
    """``{"acc", "nll", "ece"}`` of logits ``[N, C]`` against labels ``[N]``."""
    logits, y = logits.detach().float().cpu(), y.cpu()
    return {"acc": float((logits.argmax(-1) == y).double().mean()),
            "nll": float(F.cross_entropy(logits.double(), y)),
            "ece": expected_calibration_error(logits.softmax(-1), y)}
