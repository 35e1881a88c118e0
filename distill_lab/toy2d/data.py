"""Toy 2D distributions: the data every step-distillation method is first run and looked at on.

A distribution is any callable ``sample(n, generator=None) -> Tensor[n, 2]``. The built-in ones are
named (``checkerboard``, ``moons``, ``8gaussians``, ``spirals``, ``rings``, ``swissroll``); any
callable ``n -> Tensor[n, 2]`` of your own stands in for them everywhere (Python API, labs, bench).
All built-ins are scaled to roughly unit variance per coordinate.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Sampler = Callable[..., torch.Tensor]


def _randn(n, g, dim=2):
    return torch.randn(n, dim, generator=g)


def _rand(n, g, dim=1):
    return torch.rand(n, dim, generator=g)


def checkerboard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eight squares of a 4x4 checkerboard on [-2, 2]^2 (a standard flow-matching toy)."""
    g = generator
    x1 = _rand(n, g)[:, 0] * 4 - 2
    x2 = _rand(n, g)[:, 0] - torch.randint(0, 2, (n,), generator=g).float() * 2
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], 1) * 0.9


def checkerboard_off_cells(x: torch.Tensor) -> float:
    """The fraction of the points ``x: [B, 2]`` that lie outside the checkerboard's eight cells: 0 for
    :func:`checkerboard`'s own draws, and exactly the mass a sampler bleeds into the empty cells and
    beyond the board. A closed-form sharpness measure, for this dataset only."""
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"checkerboard_off_cells takes points of shape [B, 2], got {tuple(x.shape)}")
    u = x.detach().float().cpu() / 0.9
    on_board = (u.abs() <= 2).all(1)
    same_parity = torch.floor(u[:, 0]) % 2 == torch.floor(u[:, 1]) % 2
    return float(1 - (on_board & same_parity).float().mean())


def moons(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two interleaving half circles with a little noise."""
    g = generator
    which = torch.randint(0, 2, (n,), generator=g)
    ang = _rand(n, g)[:, 0] * math.pi
    x = torch.where(which == 0, torch.cos(ang), 1 - torch.cos(ang))
    y = torch.where(which == 0, torch.sin(ang), 0.5 - torch.sin(ang))
    pts = torch.stack([x, y], 1) + 0.06 * _randn(n, g)
    return (pts - torch.tensor([0.5, 0.25])) * torch.tensor([1.6, 2.4])


def eight_gaussians(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eight isotropic gaussians (std 0.1) on a circle of radius 2: the mode-collapse test."""
    g = generator
    k = torch.randint(0, 8, (n,), generator=g).float()
    centers = torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1) * 2.0
    return (centers + 0.1 * _randn(n, g)) / 1.414


def spirals(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two interleaved spiral arms."""
    g = generator
    r = torch.sqrt(_rand(n, g)[:, 0]) * 3 * math.pi
    sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    x = sign * -torch.cos(r) * r + _rand(n, g)[:, 0] * 0.5
    y = sign * torch.sin(r) * r + _rand(n, g)[:, 0] * 0.5
    return torch.stack([x, y], 1) / 4.0


def rings(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Four concentric circles with equal mass per unit length."""
    g = generator
    radii = torch.tensor([0.5, 1.0, 1.5, 2.0])
    k = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=g)
    ang = _rand(n, g)[:, 0] * 2 * math.pi
    r = radii[k]
    pts = torch.stack([r * torch.cos(ang), r * torch.sin(ang)], 1) + 0.04 * _randn(n, g)
    return pts / 1.2


def swissroll(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A 2D swiss roll."""
    g = generator
    t = 1.5 * math.pi * (1 + 2 * _rand(n, g)[:, 0])
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + 0.5 * _randn(n, g)
    return pts / 7.0


DATASETS: dict[str, Sampler] = {
    "checkerboard": checkerboard,
    "moons": moons,
    "8gaussians": eight_gaussians,
    "spirals": spirals,
    "rings": rings,
    "swissroll": swissroll,
}


def get_dataset(data: str | Sampler) -> Sampler:
    """Return a sampler ``sample(n, generator=None) -> Tensor[n, 2]`` for a name or a callable.

    A callable is wrapped so that it may ignore ``generator``; its output is checked on first use
    (see :func:`sample_data`). Unknown names raise ``ValueError`` listing the built-ins.
    """
    if callable(data):
        return data
    if isinstance(data, str) and data in DATASETS:
        return DATASETS[data]
    raise ValueError(
        f"unknown toy dataset {data!r}; choose one of {', '.join(DATASETS)} "
        "or pass any callable n -> Tensor[n, 2]"
    )


def dataset_name(data: str | Sampler) -> str:
    """A printable name for a dataset given by name or by callable."""
    if isinstance(data, str):
        return data
    return getattr(data, "__name__", type(data).__name__)


def sample_data(data: str | Sampler, n: int, seed: int | None = None,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Draw ``n`` points from ``data`` (a name or a callable), reproducibly when ``seed`` is given.

    The result is validated: it must be a float tensor of shape ``[n, d]`` without NaN or inf;
    anything else raises ``ValueError`` saying what came back.
    """
    fn = get_dataset(data)
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    try:
        x = fn(n, generator=g)
    except TypeError:
        # a user's callable n -> Tensor[n, 2] that takes no generator: seed the global RNG instead
        if seed is not None:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                x = fn(n)
        else:
            x = fn(n)
    name = dataset_name(data)
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[0] != n:
        raise ValueError(
            f"dataset {name!r} returned shape {tuple(x.shape)} for n={n}; a toy sampler must return "
            f"a tensor of shape [n, d] (here [{n}, 2])"
        )
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"dataset {name!r} returned NaN or inf values")
    return x.to(device)
