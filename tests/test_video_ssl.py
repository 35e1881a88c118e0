"""UniSurg's three losses (issue 14, item 3) on cases with known answers: affinity self-distillation is
zero for identical networks, the motion weight and the diversity terms have their closed forms, and only the
student gets a gradient."""

from __future__ import annotations

import math

import pytest
import torch

from distill_lab.methods.video_ssl import affinity_logits, affinity_sd_loss, diversity_loss, motion_weighted_latent_loss


def test_affinity_self_distillation_is_zero_for_identical_networks_and_only_trains_the_student():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    loss, _ = affinity_sd_loss(z, z, tau_s=0.1, tau_t=0.1)
    assert abs(float(loss)) < 1e-12
    # the relations, not the tokens: a rescaled copy has the same cosine structure
    assert abs(float(affinity_sd_loss(3 * z, z, 0.1, 0.1)[0])) < 1e-12
    s = torch.randn(2, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    t = z.clone().requires_grad_()
    loss, _ = affinity_sd_loss(s, t)
    loss.backward()
    assert float(loss.detach()) > 0 and s.grad.abs().sum() > 0 and t.grad is None


def test_affinity_kl_on_three_tokens_by_hand():
    # three 2-D tokens at angles 0, 60 and 180 degrees: cosines 0.5, -1, -0.5
    ang = torch.tensor([0.0, math.pi / 3, math.pi], dtype=torch.float64)
    t = torch.stack([ang.cos(), ang.sin()], -1)[None]
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]], dtype=torch.float64)  # cosines 0, -1, 0
    cos_t = {(0, 1): 0.5, (0, 2): -1.0, (1, 2): -0.5}
    cos_s = {(0, 1): 0.0, (0, 2): -1.0, (1, 2): 0.0}
    want = 0.0
    for i in range(3):
        others = [j for j in range(3) if j != i]
        pt = torch.softmax(torch.tensor([cos_t[tuple(sorted((i, j)))] / 0.5 for j in others], dtype=torch.float64), 0)
        ps = torch.softmax(torch.tensor([cos_s[tuple(sorted((i, j)))] / 1.0 for j in others], dtype=torch.float64), 0)
        want += float((pt * (pt.log() - ps.log())).sum()) / 3
    assert float(affinity_sd_loss(s, t, tau_s=1.0, tau_t=0.5)[0]) == pytest.approx(want, rel=1e-9)
    assert torch.isinf(affinity_logits(t, 1.0).diagonal(dim1=1, dim2=2)).all()


def test_the_motion_weight_counts_a_moving_token_more_and_alpha_zero_is_plain_l1():
    pred = torch.zeros(1, 3, 2, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [5.0, 5.0]]], dtype=torch.float64, requires_grad=True)
    masked = torch.tensor([[True, True, False]])
    motion = torch.tensor([[0.0, 2.0, 9.0]], dtype=torch.float64)
    plain, _ = motion_weighted_latent_loss(pred, target, masked, motion, alpha=0.0)
    assert float(plain) == pytest.approx(1.5)  # the two masked tokens' L1, the unmasked one left out
    weighted, info = motion_weighted_latent_loss(pred, target, masked, motion, alpha=1.0)
    # mean masked motion 1: weights 1 and 3 -> (1 * 1 + 3 * 2) / 4
    assert float(weighted) == pytest.approx(7 / 4) and info["mean_weight"] == pytest.approx(2.0)
    weighted.backward()
    assert target.grad is None and pred.grad[0, 2].abs().sum() == 0


def test_diversity_is_its_target_for_a_collapsed_encoder_and_zero_for_spread_decorrelated_features():
    collapsed = torch.ones(4, 6, 3, dtype=torch.float64)
    loss, info = diversity_loss(collapsed, target_std=1.0, cov_weight=0.04)
    assert float(loss) == pytest.approx(1.0 - math.sqrt(1e-4))
    # features +-2 in a balanced design: std above 1, covariances zero
    signs = torch.tensor([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=torch.float64)
    spread = (2 * signs).repeat(3, 1)[None]
    assert float(diversity_loss(spread)[0]) == pytest.approx(0.0, abs=1e-12)
    copied = torch.cat([spread[..., :1], spread[..., :1]], -1)  # two features repeating each other
    assert float(diversity_loss(copied, cov_weight=1.0)[0]) > 1.0
    with pytest.raises(ValueError, match="two tokens"):
        diversity_loss(torch.ones(1, 1, 3))
