"""The streaming-video track: the world and its metrics, the causal network and its cache, the
rollouts, the streaming losses, and every recipe on a tiny world."""

from dataclasses import replace

import pytest
import torch

from distill_lab.core.flows import flow_matching_loss
from distill_lab.core.registry import get_recipe
from distill_lab.methods.step import dmd
from distill_lab.methods.streaming import diffusion_forcing_loss, ode_regression_loss, teacher_forcing_loss
from distill_lab.video import recipes as video_recipes
from distill_lab.video.config import VIDEO_SCALES
from distill_lab.video.experiment import VideoWorld
from distill_lab.video.metrics import clip_metrics, motion_fd
from distill_lab.video.nets import KVCache, VideoNetConfig, VideoTransformer, frame_mask
from distill_lab.video.rollout import StreamingStudent, self_forcing_rollout, teacher_rollout
from distill_lab.video.world import World

SMALL = VideoNetConfig(resolution=8, patch=4, dim=32, depth=2, heads=2)
TINY = replace(VIDEO_SCALES["ci"], net=SMALL, frames=4, block=2, teacher_steps=3, teacher_batch=4, teacher_nfe=2,
               batch=4, student_steps=2, student_nfe=2, eval_n=6)


def random_net(mask="block_causal", block=2, window=None, dtype=torch.float64, seed=0, cfg=SMALL):
    torch.manual_seed(seed)
    net = VideoTransformer(cfg, mask, block, window).to(dtype)
    for p in net.parameters():  # the zero-initialised output layers would hide every difference
        torch.nn.init.normal_(p, std=0.3)
    return net


@pytest.fixture(scope="module")
def tiny_exp():
    torch.manual_seed(0)
    teacher = VideoTransformer(SMALL, "full")
    return VideoWorld("ci", teacher=teacher, video_scale=TINY, progress=False)


# ------------------------------------------------------------------ the world and its metrics
def test_renderer_and_detector_invert_each_other():
    w = World()
    s = w.simulate(32, 24, seed=3)
    for res in (16, 32):
        pos = w.detect(w.render(s, res))
        assert (pos - w.sort_sprites(s)[..., :2]).abs().max() < 1e-6
    assert (s[..., :2] >= w.margin - 1e-9).all() and (s[..., :2] <= 1 - w.margin + 1e-9).all()


def test_walls_reflect_and_kicks_keep_the_speed():
    w = World(kick_prob=0.0)
    s = torch.tensor([[[w.margin + 0.01, 0.5, -0.05, 0.0]]], dtype=torch.float64)
    nxt = w.move(s)
    assert nxt[0, 0, 0] == pytest.approx(2 * w.margin - (w.margin - 0.04)) and nxt[0, 0, 2] == pytest.approx(0.05)
    kicked = World(kick_prob=1.0).simulate(50, 10, seed=1)
    speed = kicked[..., 2:].norm(dim=-1)
    assert torch.allclose(speed, speed[:, :1].expand_as(speed), atol=1e-12)


def test_real_clips_score_near_zero_and_shuffled_frames_score_high():
    w = World()
    real = w.render(w.simulate(100, 32, seed=0), 16)
    other = w.render(w.simulate(100, 32, seed=1), 16)
    m, mo = clip_metrics(real, w, 8), clip_metrics(other, w, 8)
    shuffled = clip_metrics(real[:, torch.randperm(32, generator=torch.Generator().manual_seed(0))], w, 8)
    assert m["error_1x"] < 1e-9 and m["error_4x"] < 1e-9 and abs(m["slope"]) < 1e-9
    assert m["physics"] < 0.02 and shuffled["physics"] > 10 * m["physics"]
    assert shuffled["dynamic_degree"] > 3 * m["dynamic_degree"]
    floor = motion_fd(m["positions"], mo["positions"])
    assert motion_fd(shuffled["positions"], mo["positions"]) > 20 * floor
    blurred = torch.nn.functional.avg_pool3d(real.transpose(1, 2), (1, 3, 3), 1, (0, 1, 1)).transpose(1, 2)
    assert clip_metrics(blurred, w, 8)["error_1x"] > 1e-3
    frozen = real[:, :1].expand(-1, 32, -1, -1, -1)
    assert clip_metrics(frozen, w, 8)["dynamic_degree"] == 0.0


# ------------------------------------------------------------------ the network and its cache
@pytest.mark.parametrize("window", [None, 4])
def test_streaming_with_the_cache_equals_the_one_pass_block_causal_forward(window):
    net = random_net(window=window)
    x, t = torch.randn(3, 8, 1, 8, 8, dtype=torch.float64), torch.rand(3, 8, dtype=torch.float64)
    one_pass = net(x, t)
    cache, blocks = KVCache(SMALL.depth, window=window), []
    for i in range(0, 8, 2):
        out, kv = net.forward_block(x[:, i:i + 2], t[:, i:i + 2], cache, return_kv=True)
        cache.append(kv, 2)
        blocks.append(out)
    assert (torch.cat(blocks, 1) - one_pass).abs().max() < 1e-10
    assert len(cache) == (8 if window is None else window)


def test_perturbing_a_future_frame_leaves_every_past_output_unchanged():
    net = random_net()
    x, t = torch.randn(2, 8, 1, 8, 8, dtype=torch.float64), torch.rand(2, 8, dtype=torch.float64)
    base = net(x, t)
    for f in range(1, 8):
        x2 = x.clone()
        x2[:, f] += torch.randn_like(x2[:, f])
        out = net(x2, t)
        first_affected = (f // 2) * 2  # the frame's own block sees it, earlier blocks never do
        assert torch.equal(out[:, :first_affected], base[:, :first_affected])
        assert not torch.allclose(out[:, first_affected:], base[:, first_affected:])
    full = random_net(mask="full")
    x2 = x.clone()
    x2[:, 7] += 1
    assert not torch.allclose(full(x2, t)[:, 0], full(x, t)[:, 0])  # the teacher is bidirectional


def test_causal_copy_keeps_the_weights_and_windows_mask_old_frames():
    teacher = random_net(mask="full", dtype=torch.float32)
    student = teacher.as_causal(block=2)
    assert student.mask == "block_causal" and all(torch.equal(a, b) for a, b in zip(
        teacher.state_dict().values(), student.state_dict().values()))
    frames = torch.arange(8)
    m = frame_mask(frames, frames, "block_causal", block=2, window=2)
    assert m[7].tolist() == [False, False, False, False, True, True, True, True]
    assert m[2].tolist() == [True, True, True, True, False, False, False, False]


def test_sink_frames_are_kept_and_placed_before_the_window():
    cache = KVCache(depth=1, window=2, sink=2)
    kv = [(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))]
    for _ in range(5):
        cache.append(kv, 2)
    assert cache.frames == [0, 1, 8, 9] and cache.k[0].shape[2] == 4
    assert cache.key_positions(1).tolist() == [6, 7, 8, 9]


def test_bad_input_says_what_to_do():
    net = random_net(window=2, dtype=torch.float32)
    with pytest.raises(ValueError, match="frames must be"):
        net(torch.zeros(2, 4, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="must have 2 frames"):
        net.forward_block(torch.zeros(1, 3, 1, 8, 8), 0.0, KVCache(2, window=2))
    with pytest.raises(ValueError, match="KVCache\\(depth, window=2\\)"):
        net.forward_block(torch.zeros(1, 2, 1, 8, 8), 0.0, KVCache(2))
    student = StreamingStudent(random_net(dtype=torch.float32), steps=2)
    with pytest.raises(ValueError, match="multiple of the block"):
        student.sample(torch.zeros(1, 3, 1, 8, 8))
    with pytest.raises(ValueError, match="block-causal"):
        StreamingStudent(random_net(mask="full", dtype=torch.float32))
    with pytest.raises(ValueError, match="not a whole number of blocks of 2"):
        teacher_forcing_loss(student.net, torch.zeros(1, 3, 1, 8, 8), block=2)
    with pytest.raises(ValueError, match="must divide the training clip"):
        replace(TINY, frames=5)
    with pytest.raises(ValueError, match="unknown method 'nope' on track 'video'"):
        get_recipe("nope", track="video")


# ------------------------------------------------------------------ rollouts
def test_streaming_sample_equals_block_by_block_denoising_and_context_is_used():
    student = StreamingStudent(random_net(dtype=torch.float32), steps=2, sampler="euler")
    z = torch.randn(2, 6, 1, 8, 8)
    out = student.sample(z)
    cache = student.new_cache()
    manual = []
    for i in range(0, 6, 2):
        x = z[:, i:i + 2]
        for k, (a, b) in enumerate(zip([0.0, 0.5], [0.5, 1.0])):
            x = x + (b - a) * student.net.forward_block(x, a, cache)
        manual.append(x)
        _, kv = student.net.forward_block(x, 1.0, cache, return_kv=True)
        cache.append(kv, 2)
    assert torch.allclose(out, torch.cat(manual, 1), atol=1e-5)
    real = torch.randn(2, 6, 1, 8, 8)
    forced = student.sample_with_context(z, real)
    assert torch.allclose(forced[:, :2], out[:, :2]) and not torch.allclose(forced[:, 2:], out[:, 2:])


def test_self_forcing_rollout_keeps_the_gradient_of_each_exit_step_only(monkeypatch):
    student = StreamingStudent(random_net(dtype=torch.float32), steps=3, sampler="renoise")
    calls = []
    original = student.net.forward_block

    def spy(x, t, cache, return_kv=False):
        calls.append((torch.is_grad_enabled(), return_kv))
        return original(x, t, cache, return_kv)

    monkeypatch.setattr(student.net, "forward_block", spy)
    torch.manual_seed(0)
    clip = self_forcing_rollout(student, torch.randn(2, 6, 1, 8, 8))
    with_grad = [c for c in calls if c[0]]
    assert clip.requires_grad and len(with_grad) == 3 and not any(kv for _, kv in with_grad)
    assert all(not g for g, kv in calls if kv)  # the cache passes run without gradient
    calls.clear()
    assert not self_forcing_rollout(student, torch.randn(2, 6, 1, 8, 8), grad=False).requires_grad
    assert not any(g for g, _ in calls)


def test_teacher_rollout_holds_its_context_and_extends_the_clip():
    teacher = random_net(mask="full", dtype=torch.float32)
    z = torch.randn(2, 8, 1, 8, 8)
    out = teacher_rollout(teacher, z, frames=4, nfe=2, context=2)
    assert out.shape == z.shape
    first = teacher_rollout(teacher, z[:, :4], frames=4, nfe=2, context=2)
    assert torch.allclose(out[:, :4], first, atol=1e-6)
    with pytest.raises(ValueError, match="cannot tile 7 frames"):
        teacher_rollout(teacher, z[:, :7], frames=4, nfe=2, context=2)


# ------------------------------------------------------------------ the losses
def test_teacher_forcing_sees_only_the_clean_past_of_its_block():
    net = random_net(dtype=torch.float32)
    clip = torch.randn(2, 6, 1, 8, 8)
    noise, t = torch.randn(2, 2, 1, 8, 8), torch.rand(2)
    base, _ = teacher_forcing_loss(net, clip, 2, k=1, t=t, noise=noise)
    later = clip.clone()
    later[:, 4:] += 5
    assert teacher_forcing_loss(net, later, 2, k=1, t=t, noise=noise)[0] == base
    earlier = clip.clone()
    earlier[:, :2] += 5
    assert teacher_forcing_loss(net, earlier, 2, k=1, t=t, noise=noise)[0] != base
    # it is flow matching on the block with the context fixed at t = 1
    direct = flow_matching_loss(lambda xb, tb: net(torch.cat([clip[:, :2], xb], 1), torch.cat(
        [torch.ones(2, 2), tb[:, None].expand(2, 2)], 1))[:, 2:], clip[:, 2:4], x0=noise, t=t)
    assert torch.allclose(base, direct)


def test_diffusion_forcing_noises_each_frame_at_its_own_level():
    net = random_net(dtype=torch.float32)
    clip, noise = torch.randn(2, 4, 1, 8, 8), torch.randn(2, 4, 1, 8, 8)
    t = torch.rand(2, 4)
    loss, _ = diffusion_forcing_loss(net, clip, 2, t=t, noise=noise)
    te = t[..., None, None, None]
    xt = (1 - te) * noise + te * clip
    assert torch.allclose(loss, (net(xt, t) - (clip - noise)).pow(2).mean())
    with pytest.raises(ValueError, match="a time per frame"):
        diffusion_forcing_loss(net, clip, 2, t=torch.rand(2))


def test_ode_regression_trains_the_student_only_toward_the_teacher_clip():
    net = random_net(dtype=torch.float32)
    z, x1 = torch.randn(2, 4, 1, 8, 8, requires_grad=True), torch.randn(2, 4, 1, 8, 8, requires_grad=True)
    t = torch.full((2,), 0.5)
    loss, _ = ode_regression_loss(net, z, x1, 2, t, k=1)
    loss.backward()
    assert z.grad is None and x1.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    xt = 0.5 * z[:, 2:] + 0.5 * x1[:, 2:]
    v = net(torch.cat([x1[:, :2], xt], 1), torch.cat([torch.ones(2, 2), torch.full((2, 2), 0.5)], 1))[:, 2:]
    assert torch.allclose(loss, (xt + 0.5 * v - x1[:, 2:]).pow(2).mean(), atol=1e-6)


def test_video_recipes_import_the_shared_dmd_and_flow_matching_unchanged():
    assert video_recipes.dmd_loss is dmd.dmd_loss and video_recipes.fake_score_loss is dmd.fake_score_loss
    from distill_lab.methods.streaming import flow_matching_loss as streaming_fm
    from distill_lab.video.teacher import flow_matching_loss as teacher_fm
    assert streaming_fm is flow_matching_loss and teacher_fm is flow_matching_loss
    assert dmd.flow_matching_loss is flow_matching_loss  # the toy and CIFAR critics fit with it too


def test_every_video_recipe_trains_and_streams_on_a_tiny_world(tiny_exp):
    for name in ("teacher_forcing", "diffusion_forcing", "causvid", "self_forcing", "self_forcing_no_init",
                 "self_forcing_ramp", "self_forcing_sink"):
        torch.manual_seed(0)
        opts = {} if "forcing" in name and "self" not in name else {"pool": 8, "init_steps": 2}
        if name == "self_forcing_no_init":
            opts.pop("init_steps")
        student = get_recipe(name, track="video").train(tiny_exp, steps=2, **opts)
        m = tiny_exp.evaluate(student)
        assert m["clips"].shape == (6, 16, 1, 8, 8) and torch.isfinite(m["clips"]).all()
        assert m["nfe_per_frame"] >= 1 and m["exposure_gap"] is not None, name
