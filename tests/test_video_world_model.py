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
    assert c[..., 6].abs().sum() == 0  # no frame recalled from memory
    mem = W.conditions(a, cam, memory=torch.tensor([[True, False, True, False]]))
    assert mem[0, :, 6].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert mem[0, 2, :4].abs().sum() == 0 and torch.equal(mem[0, 1], c[0, 1] + 0 * mem[0, 1])  # no action into a recalled frame
    assert torch.equal(mem[0, 2, 4:6], c[0, 2, 4:6])  # its pose is kept
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
    assert a["frames"].shape == (4, 6, 1, 16, 16) and a["cond"].shape == (4, 6, W.COND_DIM)


# ------------------------------------------------------------------ the teacher's training
def test_the_world_teacher_trains_under_its_conditions():
    from distill_lab.video.world_model import WORLD_MODEL_SCALES, WorldModelScale, train_world_teacher

    tiny = dataclasses.replace(WORLD_MODEL_SCALES["ci"], net=VideoNetConfig(resolution=16, patch=8, dim=16, depth=1,
                                                                            heads=2, cond_dim=W.COND_DIM),
                               teacher_batch=4, frames=4)
    net, info = train_world_teacher(tiny, steps=3, progress=False)
    assert info["steps"] == 3 and net.mask == "full" and not any(p.requires_grad for p in net.parameters())
    assert net.cond_mlp[0].weight.abs().sum() > 0
    with pytest.raises(ValueError, match="cond_dim=7"):
        WorldModelScale(**{**dataclasses.asdict(tiny), "world": tiny.world, "net": VideoNetConfig(cond_dim=0)})


# ------------------------------------------------------------------ memory: retrieval, layout, the base model's loss
def test_retrieval_picks_the_frames_seen_from_nearest_the_coming_poses():
    from distill_lab.video.interactive import nearest_frames

    hist = torch.tensor([[[0.0, 0.0], [0.5, 0.5], [0.9, 0.1], [0.2, 0.2]]], dtype=torch.float64)
    query = torch.tensor([[[0.85, 0.15], [0.25, 0.2]]], dtype=torch.float64)
    assert nearest_frames(hist, query, 2)[0].tolist() == [3, 2]  # 0.05 and 0.05 away... nearest first
    assert nearest_frames(hist, query, 1)[0].tolist() in ([3], [2])
    assert nearest_frames(hist, query[:, :1], 1)[0].tolist() == [2]
    with pytest.raises(ValueError, match="k must lie"):
        nearest_frames(hist, query, 5)


def test_sprite_free_pixels_show_the_scene_alone():
    from distill_lab.video.interactive import sprite_free

    sim = W.simulate(3, 4, seed=1, random_scene=True)
    free = sprite_free(W, sim["states"], 16)
    frames = W.render(sim["states"], sim["camera"], 16, sim["landmarks"])[:, :, 0]
    scene = 2 * W.background(sim["camera"], 16, sim["landmarks"]) - 1
    assert (frames - scene)[free].abs().max() < 1e-3 and (frames - scene)[~free].abs().max() > 0.5
    assert 0.5 < free.float().mean() < 1


def _wsc(**kw):
    from distill_lab.video.world_model import WORLD_MODEL_SCALES

    small = VideoNetConfig(resolution=16, patch=8, dim=16, depth=1, heads=2, cond_dim=W.COND_DIM)
    return dataclasses.replace(WORLD_MODEL_SCALES["ci"], net=small, **kw)


def test_a_memory_sample_puts_recalled_frames_before_the_clip():
    from distill_lab.video.world_model import memory_sample

    wsc = _wsc()
    b = memory_sample(wsc, 6, torch.Generator().manual_seed(0))
    M, F = wsc.memory, wsc.frames
    assert b["x"].shape == (6, M + F, 1, 16, 16) and b["cond"].shape == (6, M + F, W.COND_DIM)
    assert (b["cond"][:, :M, 6] == 1).all() and (b["cond"][:, M:, 6] == 0).all()
    assert b["cond"][:, :M, :4].abs().sum() == 0  # no action into a recalled frame
    again = memory_sample(wsc, 6, torch.Generator().manual_seed(0))
    assert torch.equal(b["x"], again["x"])


def test_layout_times_keep_memory_clean_and_the_streaming_layout_makes_one_block():
    from distill_lab.video.world_model import layout_times

    t = layout_times(300, 8, 2, 2, torch.Generator().manual_seed(0))
    assert t.shape == (300, 10) and (t[:, :2] == 1).all()
    clip = t[:, 2:]
    stream = (clip[:, :6] == 1).all(1)
    one_time = (clip == clip[:, :1]).all(1)
    assert 120 < int(stream.sum()) < 180 and 40 < int(one_time.sum()) < 110
    assert (clip[stream, 6] == clip[stream, 7]).all() and (clip[stream, 6] < 1).all()


class Spy(torch.nn.Module):
    """A stand-in network: velocity = a learnable scale times what ``fn(x, t, cond)`` returns."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.w, self.cond = fn, torch.nn.Parameter(torch.ones(())), None

    def conditioned(self, cond):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            self.cond = cond
            yield self
            self.cond = None
        return ctx()

    def forward(self, x, t):
        return self.w * self.fn(x, t, self.cond)


def test_the_base_models_loss_counts_only_the_frames_to_make_and_its_target_is_x1_minus_x0():
    from distill_lab.video.world_model import base_model_loss

    g = torch.Generator().manual_seed(3)
    x1, x0 = torch.randn(2, 4, 1, 4, 4, generator=g), torch.randn(2, 4, 1, 4, 4, generator=g)
    cond = torch.zeros(2, 4, W.COND_DIM)
    t = torch.tensor([[1.0, 1.0, 0.3, 0.6], [1.0, 0.2, 0.5, 0.5]])
    exact = Spy(lambda x, tt, c: x1 - x0)
    assert float(base_model_loss(exact, x1, cond, t, x0=x0)[0].detach()) == pytest.approx(0.0, abs=1e-12)
    wrong_on_clean = Spy(lambda x, tt, c: (x1 - x0) + 5.0 * (tt >= 1).float()[..., None, None, None])
    assert float(base_model_loss(wrong_on_clean, x1, cond, t, x0=x0)[0].detach()) == pytest.approx(0.0, abs=1e-12)
    off = Spy(lambda x, tt, c: (x1 - x0) + 1.0)
    loss = float(base_model_loss(off, x1, cond, t, x0=x0)[0].detach())
    assert loss == pytest.approx(1.0)  # a mean over the frames to make, not a sum, nor diluted by the clean ones
    seen = {}
    base_model_loss(Spy(lambda x, tt, c: seen.__setitem__("xt", x) or x * 0), x1, cond, t, x0=x0)
    te = t[..., None, None, None]
    assert torch.allclose(seen["xt"], (1 - te) * x0 + te * x1)  # the path from noise at 0 to data at 1


def test_reinjection_perturbs_only_the_clean_frames_of_the_marked_clips_and_banks_detached_residuals():
    from distill_lab.video.world_model import ResidualBank, base_model_loss

    g = torch.Generator().manual_seed(4)
    x1, x0 = torch.randn(2, 4, 1, 4, 4, generator=g), torch.randn(2, 4, 1, 4, 4, generator=g)
    cond = torch.zeros(2, 4, W.COND_DIM)
    t = torch.tensor([[1.0, 1.0, 0.7, 0.9], [1.0, 1.0, 0.6, 0.8]])
    bank = ResidualBank()
    bank.add(torch.full((1, 3, 1, 4, 4), 0.5))
    seen = {}
    net = Spy(lambda x, tt, c: seen.__setitem__("xt", x) or (x1 - x0) + 0.1)
    _, _ = base_model_loss(net, x1, cond, t, x0=x0, bank=bank, reinject=torch.tensor([True, False]))
    te = t[..., None, None, None]
    plain = (1 - te) * x0 + te * x1
    diff = seen["xt"] - plain
    assert torch.allclose(diff[0, :2], torch.full_like(diff[0, :2], 0.5))  # clean frames of the marked clip
    assert diff[0, 2:].abs().max() == 0 and diff[1].abs().max() == 0
    assert len(bank) == 3 + 4 and not bank.bank.requires_grad  # this batch's frames to make, at t >= 0.5
    assert torch.allclose(bank.bank[-1], torch.full((1, 4, 4), 0.1 * (1 - 0.8)), atol=1e-6)  # x_hat - x1 = (1 - t) (v - (x1 - x0))


def test_streaming_with_retrieval_recalls_a_revisited_place_and_a_recent_memory_does_not():
    """A stand-in world model that draws each new frame as the first frame it was given from memory: under
    camera-aware retrieval the frames made on the way back equal the frames first seen there (real, given),
    so the revisit error is 0 where the retrieved frame is an exact revisit; with the recent frames it is not."""
    from distill_lab.video.world_model import eval_trajectories, stream_base_model

    wsc = _wsc(eval_frames=16, frames=4, block=1, memory=1, history=4)
    data = eval_trajectories(wsc, 4)

    def copy_memory(x, t, c):
        target = x[:, :1].expand_as(x)
        return (target - x) / (1 - t).clamp(min=1e-6)[..., None, None, None]

    net = Spy(copy_memory)
    given = wsc.memory + wsc.frames - wsc.block
    back, first = slice(12, 16), [3, 2, 1, 0]  # frames 12..15 revisit frames 3..0, all given (8 out, 8 back)
    s = stream_base_model(net, wsc, data, "retrieval", nfe=4)
    assert torch.equal(s[:, :given], data["frames"][:, :given])
    assert (s[:, back] - data["frames"][:, first]).abs().max() < 1e-5
    r = stream_base_model(net, wsc, data, "recent", nfe=4)
    assert (r[:, back] - data["frames"][:, first]).abs().max() > 0.1


def test_a_compressed_frame_is_attended_as_the_mean_of_its_tokens(monkeypatch):
    """RELIC's compressed memory: in the first layer (same inputs) the keys and values of a compressed frame are
    the means of its tokens' (at its position), the other frames' are unchanged; with one token a frame,
    compression changes nothing; with none the forward is the plain one."""
    import distill_lab.video.nets as nets

    net = cond_net("full")
    x, t, c = draw()
    seen = []
    sdpa = nets.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None):
        seen.append((k, v, attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask)

    monkeypatch.setattr(nets.F, "scaled_dot_product_attention", spy)
    with net.conditioned(c):
        plain = net(x, t)
        k0, v0, _ = seen[0]
        seen.clear()
        with net.compressed(0):
            assert torch.equal(net(x, t), plain)
        seen.clear()
        with net.compressed(2):
            squeezed = net(x, t)
    N = COND.tokens_per_frame
    k1, v1, mask = seen[0]
    assert k1.shape[2] == 2 + 6 * N and mask.shape == (8 * N, 2 + 6 * N)
    for a, b in ((k1, k0), (v1, v0)):
        assert torch.allclose(a[:, :, :2], b[:, :, :2 * N].unflatten(2, (2, N)).mean(3), atol=1e-10)
        assert torch.allclose(a[:, :, 2:], b[:, :, 2 * N:], atol=1e-10)
    assert not torch.allclose(squeezed[:, 2:], plain[:, 2:])
    one = dataclasses.replace(COND, resolution=4, patch=4)
    torch.manual_seed(0)
    net1 = VideoTransformer(one, "block_causal", 2).double()
    for p in net1.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x1 = torch.randn(2, 8, 1, 4, 4, dtype=torch.float64)
    with net1.conditioned(c):
        a = net1(x1, t)
        with net1.compressed(4):
            b = net1(x1, t)
    assert torch.allclose(a, b, atol=1e-12)  # one token a frame: nothing to compress
    with pytest.raises(ValueError, match="compressed frames"):
        with net.conditioned(c), net.compressed(9):
            net(x, t)


def test_holding_the_last_frame_is_the_baseline_that_ignores_actions():
    from distill_lab.video.world_model import eval_trajectories, hold_last, stream_measures

    wsc = _wsc(eval_frames=16, frames=4, block=1, memory=1, history=4)
    data = eval_trajectories(wsc, 4)
    held = hold_last(data, 4)
    assert torch.equal(held[:, :4], data["frames"][:, :4]) and (held[:, 4:] == held[:, 3:4]).all()
    m = stream_measures(wsc, data, held, 4)
    exact = stream_measures(wsc, data, data["frames"], 4)
    assert exact["frame_error"] == 0 and m["frame_error"] > 0.01
    assert exact["action_following"] == m["action_following_data"] < m["action_following"]
    assert abs(exact["push_gain"] - 1) < 0.2 and abs(m["push_gain"]) < 0.05  # the world takes up its pushes, held frames none


# ------------------------------------------------------------------ lab 35: starting from the video teacher, reading conditions
def test_the_base_model_starts_from_an_unconditioned_net_and_keeps_a_fresh_condition_mlp():
    from distill_lab.video.world_model import init_from

    plain = VideoTransformer(dataclasses.replace(COND, cond_dim=0), "full")
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.3)
    net = VideoTransformer(COND, "full")
    fresh = {k: v.clone() for k, v in net.cond_mlp.state_dict().items()}
    kept = init_from(net, plain.state_dict())
    assert kept and all(k.startswith("cond_mlp.") for k in kept)
    for k, v in plain.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    for k, v in net.cond_mlp.state_dict().items():
        assert torch.equal(v, fresh[k])
    other = VideoTransformer(dataclasses.replace(COND, cond_dim=0, dim=48, heads=2), "full")
    with pytest.raises(RuntimeError, match="size mismatch"):
        init_from(VideoTransformer(COND, "full"), other.state_dict())
    extra = {**plain.state_dict(), "surplus.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="same VideoNetConfig"):
        init_from(VideoTransformer(COND, "full"), extra)


def test_condition_use_is_zero_for_a_model_that_ignores_conditions_and_positive_for_one_that_needs_them():
    from distill_lab.video.world_model import WORLD_MODEL_SCALES, condition_use

    wsc = dataclasses.replace(WORLD_MODEL_SCALES["ci"], frames=4, memory=1, history=2)
    deaf = Spy(lambda x, tt, c: x * 0)
    cu = condition_use(deaf, wsc, n=16)
    assert cu["block_shuffled_minus_true"] == (0.0, 0.0) and cu["zero_minus_true"] == (0.0, 0.0)
    assert cu["true"] == cu["block_shuffled"] == cu["zero"] > 0
    # a stand-in whose velocity is shifted by how far its conditions are from those of its first call (the true ones):
    # any other conditions must raise its loss, and the differences are the named way round (other minus true)
    truth = {}

    def knows(x, tt, c):
        truth.setdefault("c", c.clone())
        return x * 0 + 3.0 * (c - truth["c"]).abs().sum(-1)[..., None, None, None].to(x.dtype)
    cu = condition_use(Spy(knows), wsc, n=16)
    assert truth["c"].shape[1] == wsc.memory + wsc.frames
    for k in ("block_shuffled", "zero"):
        d, se = cu[f"{k}_minus_true"]
        assert d > 0 and se > 0 and cu[k] == pytest.approx(cu["true"] + d)
