"""The interactive track's world model (issue 14, item 2): the condition stream of the video network, the
world's conditions and scenes a clip, and the conditioned teacher's training step."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distill_lab.video.interactive import InteractiveWorld
from distill_lab.video.nets import KVCache, VideoNetConfig, VideoTransformer

COND = VideoNetConfig(resolution=8, patch=4, dim=32, depth=2, heads=2, cond_dim=3)
W = InteractiveWorld()


def cond_net(mask="block_causal", window=None, seed=0):
    torch.manual_seed(seed)
    net = VideoTransformer(COND, mask, 2, window).double()
    for p in net.parameters():  # the zero-initialised output layers would hide every difference
        torch.nn.init.normal_(p, std=0.3)
    return net


def draw(B=2, F=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, F, 1, 8, 8, generator=g, dtype=torch.float64), torch.rand(B, F, generator=g, dtype=torch.float64),
            torch.randn(B, F, 3, generator=g, dtype=torch.float64))


# ------------------------------------------------------------------ the condition stream
def test_each_frame_reads_its_own_condition_and_a_causal_net_no_later_one():
    net = cond_net()
    x, t, c = draw()
    with net.conditioned(c):
        base = net(x, t)
    for f in range(8):
        c2 = c.clone()
        c2[:, f] += 1.0
        with net.conditioned(c2):
            out = net(x, t)
        first = (f // 2) * 2  # the frame's own block reads it; no earlier block does
        assert torch.equal(out[:, :first], base[:, :first])
        assert not torch.allclose(out[:, f], base[:, f])
    full = cond_net("full")
    c2 = c.clone()
    c2[:, 7] += 1.0
    with full.conditioned(c):
        a = full(x, t)
    with full.conditioned(c2):
        b = full(x, t)
    assert not torch.allclose(a[:, 0], b[:, 0])  # the bidirectional teacher reads every frame's condition


@pytest.mark.parametrize("window", [None, 4])
def test_streaming_reads_the_condition_of_the_streamed_frames(window):
    """Block by block with a cache equals the one-pass block-causal forward under the same conditions: each
    block reads frames cache.next_frame... of the stream's condition, not its first frames."""
    net = cond_net(window=window)
    x, t, c = draw()
    with net.conditioned(c):
        one_pass = net(x, t)
        cache, blocks = KVCache(COND.depth, window=window), []
        for i in range(0, 8, 2):
            out, kv = net.forward_block(x[:, i:i + 2], t[:, i:i + 2], cache, return_kv=True)
            cache.append(kv, 2)
            blocks.append(out)
        tail = net(x[:, 4:], t[:, 4:], frame_offset=4) if window is None else None
    assert (torch.cat(blocks, 1) - one_pass).abs().max() < 1e-10
    with net.conditioned(torch.cat([c[:, 4:], c[:, :4]], 1)):  # the same frames read at offset 0
        shifted = net(x[:, 4:], t[:, 4:], frame_offset=4)
    if tail is not None:
        assert not torch.allclose(tail, shifted)  # frame_offset picks the frames' own conditions


def test_the_condition_is_scoped_and_copies_carry_the_condition_weights():
    net = cond_net()
    x, t, c = draw()
    with net.conditioned(c):
        out = net(x, t)
    assert net._cond is None  # restored on leaving
    causal = cond_net("full").as_causal(2)
    assert causal.config.cond_dim == 3 and causal.cond_mlp is not None
    full = cond_net("full")
    assert all(torch.equal(a, b.float()) for a, b in zip(causal.cond_mlp.parameters(), full.cond_mlp.parameters()))
    assert out.shape == x.shape


def test_bad_conditions_say_what_to_do():
    net = cond_net()
    x, t, c = draw()
    with pytest.raises(ValueError, match="conditioned"):
        net(x, t)
    with pytest.raises(ValueError, match=r"\[B, frames, 3\]"):
        with net.conditioned(c[..., :2]):
            pass
    with net.conditioned(c[:, :6]), pytest.raises(ValueError, match="does not cover frames"):
        net(x, t)
    with net.conditioned(c[:1]), pytest.raises(ValueError, match="does not cover"):
        net(x, t)
    plain = VideoTransformer(dataclasses.replace(COND, cond_dim=0))
    with pytest.raises(ValueError, match="no condition stream"):
        with plain.conditioned(c):
            pass
    with pytest.raises(ValueError, match="cond_dim"):
        VideoNetConfig(cond_dim=-1)


# ------------------------------------------------------------------ what the world model is given
def test_conditions_are_the_action_into_each_frame_and_the_scaled_pose():
    a = torch.zeros(1, 4, 4, dtype=torch.float64)
    a[0, :, 0] = torch.tensor([0.05, -0.1, 0.3, 0.0])    # the third pan is clipped to max_pan = 0.1
    a[0, :, 3] = torch.tensor([0.0, 0.01, 0.0, -0.02])
    cam = W.camera_path(torch.tensor([[0.0, 1.0]], dtype=torch.float64), a)
    c = W.conditions(a, cam)
    assert c.shape == (1, 4, W.COND_DIM)
    assert c[0, 0, :4].abs().sum() == 0  # nothing led into the first frame
    assert torch.allclose(c[0, 1:, 0].double(), torch.tensor([0.5, -1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(c[0, 1:, 3].double(), torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64))
    assert c[0, 0, 4].item() == -1.0 and c[0, 0, 5].item() == 1.0  # pose 0 -> -1, scene_size - 1 -> +1
    assert torch.allclose(c[0, :, 4].double(), 2 * cam[0, :, 0] / (W.scene_size - 1) - 1)
    with pytest.raises(ValueError, match="camera"):
        W.conditions(a, cam[:, :3])


def test_a_scene_a_clip_and_the_fixed_scene_render_alike():
    sim = W.simulate(3, 5, seed=2)
    assert torch.equal(sim["landmarks"][1], W.landmarks)
    assert torch.equal(W.render(sim["states"], sim["camera"], 16),
                       W.render(sim["states"], sim["camera"], 16, sim["landmarks"]))
    own = W.simulate(3, 5, seed=2, random_scene=True)
    assert not torch.equal(own["landmarks"][0], own["landmarks"][1])
    same_cam = own["camera"][:1].expand(3, -1, -1)
    bg = W.background(same_cam, 16, own["landmarks"])  # one window onto three scenes
    assert not torch.equal(bg[0], bg[1])
    with pytest.raises(ValueError, match="one scene a clip"):
        W.background(same_cam, 16, own["landmarks"][:2])


def test_clips_are_the_rendered_simulation_and_repeat_under_a_seed():
    a = W.clips(4, 6, 16, generator=torch.Generator().manual_seed(5))
    b = W.clips(4, 6, 16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["cond"], b["cond"])
    assert torch.equal(a["frames"], W.render(a["states"], a["camera"], 16, a["landmarks"]))
    assert torch.equal(a["cond"], W.conditions(a["actions"], a["camera"]))
    assert a["frames"].shape == (4, 6, 1, 16, 16) and a["cond"].shape == (4, 6, 6)


# ------------------------------------------------------------------ the teacher's training
def test_the_world_teacher_trains_under_its_conditions():
    from distill_lab.video.world_model import WORLD_MODEL_SCALES, WorldModelScale, train_world_teacher

    tiny = dataclasses.replace(WORLD_MODEL_SCALES["ci"], net=VideoNetConfig(resolution=16, patch=8, dim=16, depth=1,
                                                                            heads=2, cond_dim=6),
                               teacher_batch=4, frames=4)
    net, info = train_world_teacher(tiny, steps=3, progress=False)
    assert info["steps"] == 3 and net.mask == "full" and not any(p.requires_grad for p in net.parameters())
    assert net.cond_mlp[0].weight.abs().sum() > 0
    with pytest.raises(ValueError, match="cond_dim=6"):
        WorldModelScale(**{**dataclasses.asdict(tiny), "world": tiny.world, "net": VideoNetConfig(cond_dim=0)})
