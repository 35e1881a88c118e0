"""Small utilities on ``nn.Module`` that every track uses: parameter counts, frozen copies, EMA updates."""

from __future__ import annotations

import copy

import torch
from torch import nn


def n_params(module: nn.Module) -> int:
    """Number of parameters (trainable or frozen)."""
    return sum(p.numel() for p in module.parameters())


def clone_frozen(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False`` everywhere (for EMA targets and frozen teachers)."""
    m = copy.deepcopy(module)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * source``, parameter by parameter."""
    for pt, ps in zip(target.parameters(), source.parameters()):
        pt.lerp_(ps.detach(), 1 - decay)
