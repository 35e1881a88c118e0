"""Exercises of lab 37's representation section: the effective rank that judges collapse, and predictions on
UniSurg's probe and FFP-300K's identity regulariser (:mod:`distill_lab.video.represent`)."""

from __future__ import annotations

import torch

from . import compare, implement, prediction


# ---------------------------------------------------------------- lab 37: video self-distillation for representations
def _erank_variant(centre=True, power=1, exponentiate=True, hard=False):
    """The effective rank (exercise 37.effective_rank) and its wrong variants: the mean left in, the
    eigenvalues of the covariance (squared singular values) in place of the singular values, the entropy
    itself instead of its exponential, the count of non-zero singular values (the ordinary rank)."""
    def erank(features):
        z = features.double()
        if centre:
            z = z - z.mean(0)
        s = torch.linalg.svdvals(z) ** power
        if hard:
            return float((s > 1e-9 * s.max()).sum())
        p = s / s.sum()
        h = -(p * p.clamp_min(1e-300).log()).sum()
        return float(h.exp() if exponentiate else h)
    return erank


@implement("37.effective_rank", "the effective rank of a batch of features (Roy & Vetterli 2007)",
           solution=_erank_variant(),
           wrong={"the mean left in (a shared offset counts as a direction)": _erank_variant(centre=False),
                  "squared singular values (the covariance's eigenvalues)": _erank_variant(power=2),
                  "the entropy, not its exponential": _erank_variant(exponentiate=False),
                  "the ordinary rank (every non-zero singular value counts as one)": _erank_variant(hard=True)})
def _check_effective_rank(fn) -> str:
    """``fn(features [N, D]) -> float`` must equal :func:`~distill_lab.metrics.representation.effective_rank`
    on isotropic, stretched, offset and one-dimensional features."""
    from ..metrics.representation import effective_rank

    g = torch.Generator().manual_seed(37)
    iso = torch.randn(300, 6, generator=g, dtype=torch.float64)
    cases = {"isotropic features": iso,
             "features stretched along one axis (scales 4, 1, 1, 0.25)": iso[:, :4] * torch.tensor([4.0, 1, 1, 0.25]),
             "features with a large shared offset": iso[:, :5] + 10.0,
             "features on a line": torch.linspace(-1, 1, 50, dtype=torch.float64)[:, None]
             * torch.randn(1, 7, generator=g, dtype=torch.float64) + 3.0}
    for what, z in cases.items():
        compare(float(fn(z.clone())), effective_rank(z), f"the effective rank of {what}", atol=1e-6, rtol=1e-6)
    return "equals exp(entropy of the normalised singular values of the centred features) on four cases"


prediction("37.unisurg_probe", "the linear probe of the motion class on the EMA teacher's pooled features, same "
           "budget and seed: affinity self-distillation + diversity against masked latent prediction alone",
           ("masked latents", "about the same", "UniSurg"), solution="UniSurg")
prediction("37.identity_drift", "FFP toy, two edit pairs: the identity-propagation regulariser's effect on the "
           "error past the trained horizon (relative to edit pairs only, paired by seed)",
           ("lower", "about the same", "higher"), solution="lower")
