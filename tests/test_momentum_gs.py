"""Momentum-GS on the toy scene: the consistency term's stop-gradient, the block weights, the block
geometry, the momentum update and the seam measure."""

import pytest
import torch

from distill_lab.methods.kd import momentum_gs as mg


def test_consistency_is_zero_at_agreement_and_reaches_only_the_online_side():
    a = torch.randn(16, 3, requires_grad=True)
    m = torch.randn(16, 3, requires_grad=True)
    assert float(mg.momentum_consistency_loss(m.detach(), m.detach())) == 0.0
    loss = mg.momentum_consistency_loss(a, m)
    loss.backward()
    assert m.grad is None and torch.allclose(a.grad, 2 * (a - m).detach() / a.numel())
    assert float(loss.detach()) == pytest.approx(float((a - m).detach().pow(2).mean()))
    with pytest.raises(ValueError, match="one shape"):
        mg.momentum_consistency_loss(a, m[:4])


def test_block_weights_favour_the_worst_fitted_block():
    assert torch.allclose(mg.block_weights(torch.full((4,), 0.3)), torch.ones(4))
    w = mg.block_weights(torch.tensor([0.1, 0.1, 0.1, 0.3]))
    assert w[3] > 1 > w[0] and float(w.mean()) == pytest.approx(1.0) and torch.allclose(w[:3], w[0].expand(3))
    assert torch.allclose(mg.block_weights(torch.tensor([0.1, 0.5]), strength=0.0), torch.ones(2))
    extreme = mg.block_weights(torch.tensor([1e-4, 1e-4, 1e-4, 10.0]))
    assert float(extreme.max() / extreme.min()) == pytest.approx(4.0)  # clipped to [0.5, 2] before renormalising
    with pytest.raises(ValueError, match="non-negative"):
        mg.block_weights(torch.tensor([-0.1, 0.2]))


def test_blocks_tile_the_square_and_read_their_own_grids():
    f = mg.BlockField(blocks=2, cells=4, seed=0)
    xy = torch.tensor([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9], [1.0, 1.0]])
    assert f.block_of(xy).tolist() == [0, 1, 2, 3, 3]
    assert torch.allclose(f.local(xy[:1], torch.tensor([0])), torch.tensor([[0.2, 0.2]]))
    # a block's corner reads its grid's corner cell exactly (align_corners)
    corner = f.features(torch.tensor([[0.5, 0.5]]), torch.tensor([0]))
    assert torch.allclose(corner[0], f.grids[0, :, -1, -1].detach())
    assert len(f.decoders) == 4 and len(mg.BlockField(blocks=2, shared_decoder=True).decoders) == 1
    with pytest.raises(ValueError, match="'own' or 'momentum'"):
        f(xy, decoder="teacher")


def test_momentum_decoder_follows_the_online_decoder_and_independent_blocks_leave_it():
    xy, rgb = mg.sample_pixels(400, 32, seed=0)
    shared = mg.BlockField(blocks=2, cells=4, shared_decoder=True, seed=0)
    mg.fit_blocks(shared, xy, rgb, steps=5, decay=0.0, gpus=2, progress=False)  # decay 0: a plain copy
    for pm, po in zip(shared.momentum.parameters(), shared.decoders[0].parameters()):
        assert torch.equal(pm, po)
    alone = mg.BlockField(blocks=2, cells=4, seed=0)
    before = [p.clone() for p in alone.momentum.parameters()]
    hist = mg.fit_blocks(alone, xy, rgb, steps=5, momentum=False, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, alone.momentum.parameters()))
    assert hist["weights"][-1] == [1.0] * 4
    with pytest.raises(ValueError, match="gpus"):
        mg.fit_blocks(alone, xy, rgb, steps=1, gpus=5, progress=False)


def test_seam_is_zero_when_neighbours_agree_and_sees_one_block_off():
    f = mg.BlockField(blocks=2, cells=4, shared_decoder=True, seed=0)
    with torch.no_grad():
        f.grids.copy_(f.grids[:1].expand_as(f.grids) * 0 + 0.3)  # every block the same constant features
    same = mg.evaluate_blocks(f, res=16, edge_points=20)
    assert same["seam"] == pytest.approx(0.0, abs=1e-6) and same["seam_truth"] > 0
    with torch.no_grad():
        f.grids[3] += 1.0
    assert mg.evaluate_blocks(f, res=16, edge_points=20)["seam"] > 1e-3
    with pytest.raises(ValueError, match="'momentum' or 'average'"):
        mg.evaluate_blocks(f, res=8, shared="best")


def test_scene_is_rgb_in_the_unit_cube():
    xy, rgb = mg.sample_pixels(50, 16, seed=1)
    assert xy.shape == (50, 2) and rgb.shape == (50, 3) and 0 <= float(rgb.min()) and float(rgb.max()) <= 1
    assert len({tuple(p) for p in xy.tolist()}) == 50  # without replacement
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        mg.toy_scene(torch.zeros(3))


def test_render_reads_the_scene_and_each_decoder():
    f = mg.BlockField(blocks=2, cells=4, seed=0)
    truth = mg.render(f, res=8, decoder="truth")
    t = (torch.arange(8).float() + 0.5) / 8
    assert truth.shape == (8, 8, 3) and torch.allclose(truth[2, 5], mg.toy_scene(torch.tensor([[t[5], t[2]]]))[0])
    own, avg = mg.render(f, 8), mg.render(f, 8, "average")
    assert torch.allclose(own, avg, atol=1e-6)  # untrained: every block decoder is the same one
