"""Input checks with errors that say what is wrong and what to pass instead, for logits,
probabilities, labels, temperatures and mixing weights. Shared by the logit-level losses of
:mod:`distill_lab.methods.kd` and the classification metrics of :mod:`distill_lab.metrics.classification`.
"""

from __future__ import annotations

import math

import torch


def check_logits(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"{name} must be a tensor [B, ..., C] with classes last, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes in its last dimension, got {tuple(x.shape)}")
    return x


def check_pair(s: torch.Tensor, t: torch.Tensor, names=("student_logits", "teacher_logits")):
    check_logits(names[0], s)
    check_logits(names[1], t)
    if s.shape != t.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got "
                         f"{tuple(s.shape)} and {tuple(t.shape)}")


def check_temperature(T: float, name: str = "T") -> float:
    if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
        raise ValueError(f"temperature {name} must be a finite number > 0, got {T!r}")
    return float(T)


def check_weight(a: float, name: str = "alpha") -> float:
    if not (isinstance(a, (int, float)) and 0.0 <= a <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {a!r}")
    return float(a)


def check_labels(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have the logits' leading shape {tuple(logits.shape[:-1])}, "
                         f"got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[-1] - 1}]")
    return labels.long()


def check_probs(name: str, p: torch.Tensor, atol: float = 1e-4) -> torch.Tensor:
    check_logits(name, p)
    if (p < -atol).any() or not torch.allclose(p.sum(-1), torch.ones((), dtype=p.dtype, device=p.device),
                                                atol=atol):
        raise ValueError(f"{name} must be probabilities (non-negative, rows summing to 1); "
                         "pass softmax(logits), not logits")
    return p
