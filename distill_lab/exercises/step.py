"""Exercises of the toy step-distillation labs (00 to 06).

Each checker runs the student's function on the closed-form cases of :mod:`distill_lab.core.flows`
(:class:`~distill_lab.core.flows.GaussianLinearFlow`: the velocity, flow map and consistency function
are known exactly) or against the package's own implementation on fixed random inputs.
"""

from __future__ import annotations

import torch

from ..core import flows
from . import compare, implement, prediction

# ---------------------------------------------------------------- lab 01: the flow-matching teacher


def _gaussian_velocity(x, t, mu, sigma):
    a2 = (1 - t) ** 2 + t ** 2 * sigma ** 2
    return mu + (t * sigma ** 2 - (1 - t)) / a2 * (x - t * mu)


@implement("01.gaussian_velocity", "the closed-form velocity from N(0, I) to N(mu, sigma^2 I)",
           solution=_gaussian_velocity,
           wrong={"a'/a with the wrong sign": lambda x, t, mu, s: mu - (t * s ** 2 - (1 - t)) / ((1 - t) ** 2
                                                                                             + t ** 2 * s ** 2) * (x - t * mu),
                  "x - mu instead of x - t mu": lambda x, t, mu, s: mu + (t * s ** 2 - (1 - t)) / (
                      (1 - t) ** 2 + t ** 2 * s ** 2) * (x - mu),
                  "a' / a^2 read as a' / a": lambda x, t, mu, s: mu + (t * s ** 2 - (1 - t)) / (
                      ((1 - t) ** 2 + t ** 2 * s ** 2) ** 0.5) * (x - t * mu)})
def _check_gaussian_velocity(fn) -> str:
    """``fn(x, t, mu, sigma)`` with ``x: [B, 2]``, ``t: [B, 1]``, ``mu: [2]`` must give ``v(x, t)``."""
    g = torch.Generator().manual_seed(0)
    for mu, sigma in ((torch.tensor([1.5, -0.5]), 0.4), (torch.tensor([0.0, 2.0]), 1.7)):
        flow = flows.GaussianLinearFlow(mu, sigma)
        t = torch.rand(256, generator=g) * 0.98 + 0.01
        x = torch.randn(256, 2, generator=g) * 2
        got = fn(x, t[:, None], mu, sigma)
        compare(got, flow.velocity(x, t), f"v(x, t) for mu={mu.tolist()}, sigma={sigma}", atol=1e-4)
    return "matches GaussianLinearFlow.velocity at 512 points, for two means and widths"


prediction("01.sampler_at_4", "at 4 NFE, which sampler lands closer to the data: Euler or midpoint?",
           ("euler", "midpoint", "about the same"), solution="midpoint")
