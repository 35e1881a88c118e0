"""Memory for long rollouts and speculative streaming, each on a case with a known answer.

An EMA-sink with decay 1 is the static sink and with decay 0 the last evicted frames; one fold is
``a s + (1 - a) e`` exactly; a linear state holds linear attention over exactly the evicted tokens
(the CIFAR track's ``mix_tokens``); a fresh hybrid network streams as the plain window does; memory
stays constant as the rollout grows for every cache but the unbounded one; SDVG with ``tau = +inf``
is the target and with ``tau = -inf`` the drafter; the committed students load as they were saved.
"""

import math
from dataclasses import replace

import pytest
import torch
from test_video import random_net as video_random_net

from distill_lab.core.registry import get_recipe
from distill_lab.nets.attention import mix_tokens
from distill_lab.video import students as video_students
from distill_lab.video.config import VIDEO_SCALES
from distill_lab.video.experiment import VideoWorld
from distill_lab.video.nets import KVCache, VideoNetConfig, VideoTransformer
from distill_lab.video.rollout import StreamingStudent
from distill_lab.video.speculative import speculative_stream, stream_evals_per_frame, worst_frame_score
from distill_lab.video.world import World

SMALL = VideoNetConfig(resolution=8, patch=4, dim=16, depth=2, heads=2)
TINY = replace(VIDEO_SCALES["ci"], net=SMALL, frames=4, block=2, teacher_steps=3, teacher_batch=4, teacher_nfe=2,
               batch=4, student_steps=2, student_nfe=2, eval_n=4)


def random_net(**kw):
    return video_random_net(cfg=SMALL, **kw)


def stream(net, x, t, cache):
    """Every block of ``x`` through ``net`` against ``cache``, committing the block itself."""
    outs = []
    for i in range(0, x.shape[1], net.block):
        out, kv = net.forward_block(x[:, i:i + net.block], t[:, i:i + net.block], cache, return_kv=True)
        cache.append(kv, net.block)
        outs.append(out)
    return torch.cat(outs, 1)


def clip(n=2, frames=12):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, frames, 1, 8, 8, generator=g, dtype=torch.float64),
            torch.rand(n, frames, generator=g, dtype=torch.float64))


def kv_of(tag: float, frames: int, per: int = 1):
    """Keys and values whose every entry names its frame: ``tag + frame``."""
    vals = torch.cat([torch.full((1, 1, per, 2), tag + f, dtype=torch.float64) for f in range(frames)], 2)
    return [(vals.clone(), -vals.clone())]


# ------------------------------------------------------------------ EMA-sink
def test_ema_sink_with_decay_one_is_the_static_sink():
    net = random_net(window=4)
    x, t = clip()
    static = stream(net, x, t, KVCache(SMALL.depth, window=4, sink=2))
    ema1 = stream(net, x, t, KVCache(SMALL.depth, window=4, sink=2, ema=1.0))
    assert torch.equal(static, ema1)
    ema = stream(net, x, t, KVCache(SMALL.depth, window=4, sink=2, ema=0.5))
    assert (ema - static).abs().max() > 1e-6  # the decay is used


def test_one_fold_is_the_moving_average_and_decay_zero_keeps_the_last_evicted_frames():
    for a in (0.0, 0.3):
        cache = KVCache(1, window=2, sink=2, ema=a)
        for start in (0, 2, 4):  # frames 0-1 (the sink), 2-3, then 4-5 evicts 2-3
            k = torch.stack([torch.full((1, 1, 2), float(start + f), dtype=torch.float64) for f in range(2)], 2)
            cache.append([(k, -k)], 2)
        assert cache.frames == [0, 1, 4, 5] and cache.folded == 2
        sink_k = cache.k[0][0, 0, :2, 0]
        assert torch.allclose(sink_k, torch.tensor([a * 0 + (1 - a) * 2, a * 1 + (1 - a) * 3], dtype=torch.float64))
        assert torch.allclose(cache.v[0][0, 0, :2, 0], -sink_k)  # values folded the same way
        assert cache.k[0][0, 0, 2:, 0].tolist() == [4.0, 5.0]  # the window is untouched


def test_frames_fold_into_the_sink_slots_in_turn():
    cache = KVCache(1, window=1, sink=2, ema=0.0)
    for f in range(6):  # one frame a block: frames 2, 3, 4 are evicted in turn
        k = torch.full((1, 1, 1, 1), float(f), dtype=torch.float64)
        cache.append([(k, k)], 1)
    # slot 0 got frame 2 then frame 4; slot 1 got frame 3
    assert cache.k[0][0, 0, :, 0].tolist() == [4.0, 3.0, 5.0]


def test_ema_sink_needs_sink_frames_a_window_and_a_decay_in_range():
    for kw in ({"ema": 0.9, "window": 4}, {"ema": 1.5, "window": 4, "sink": 2}, {"ema": 0.9, "sink": 2}):
        with pytest.raises(ValueError, match="EMA sink"):
            KVCache(2, **kw)
    with pytest.raises(ValueError, match="window"):
        KVCache(2, linear=True)


# ------------------------------------------------------------------ Hybrid Forcing's linear state
def test_the_linear_state_is_linear_attention_over_exactly_the_evicted_tokens():
    cache = KVCache(1, window=2, linear=True)
    ks, vs = [], []
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # blocks of 2 frames, 3 tokens a frame
        k, v = torch.randn(2, 2, 6, 4, generator=g, dtype=torch.float64), torch.randn(2, 2, 6, 4, generator=g,
                                                                                     dtype=torch.float64)
        ks.append(k)
        vs.append(v)
        cache.append([(k, v)], 2)
    assert cache.absorbed == 8 and cache.frames == [8, 9]
    q = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64)
    kv, ksum = cache.linear_layer(0)
    from distill_lab.nets.attention import read_linear_state
    expected = mix_tokens(q, torch.cat(ks[:4], 2), torch.cat(vs[:4], 2), "linear")
    assert torch.allclose(read_linear_state(q, kv, ksum), expected, atol=1e-12)
    assert torch.equal(cache.k[0], ks[4])  # the window holds the last block only


def test_a_fresh_hybrid_network_streams_as_the_plain_window_does():
    net = random_net(window=2)
    hybrid = net.with_linear_memory(window=2)
    assert all(layer.linear_proj is not None for layer in hybrid.layers)
    x, t = clip()
    plain = stream(net, x, t, KVCache(SMALL.depth, window=2))
    cache = KVCache(SMALL.depth, window=2, linear=True)
    assert torch.equal(stream(hybrid, x, t, cache), plain)  # zero read-out: the state changes nothing
    assert cache.absorbed == 10  # 12 frames streamed, 2 in the window
    for layer in hybrid.layers:  # a trained read-out uses it
        torch.nn.init.normal_(layer.linear_proj.weight, std=0.3)
    assert (stream(hybrid, x, t, KVCache(SMALL.depth, window=2, linear=True)) - plain).abs().max() > 1e-6


def test_a_linear_state_that_absorbs_nothing_changes_nothing():
    hybrid = random_net(window=8).with_linear_memory(window=8)
    for layer in hybrid.layers:
        torch.nn.init.normal_(layer.linear_proj.weight, std=0.3)
    plain = random_net(window=8)  # the same weights but the read-out (same seed)
    x, t = clip(frames=8)
    assert torch.equal(stream(hybrid, x, t, KVCache(SMALL.depth, window=8, linear=True)),
                       stream(plain, x, t, KVCache(SMALL.depth, window=8)))


def test_hybrid_networks_refuse_what_they_cannot_do():
    hybrid = random_net(window=2).with_linear_memory(window=2)
    x, t = clip(frames=8)
    with pytest.raises(ValueError, match="stream it"):
        hybrid(x, t)
    with pytest.raises(ValueError, match="as_causal"):
        random_net(mask="full").with_linear_memory(2)
    with pytest.raises(ValueError, match="block_causal"):
        VideoTransformer(SMALL, "full", linear_memory=True)


def test_memory_is_constant_for_every_bounded_cache_and_grows_without_a_bound():
    net = random_net(window=4)
    hybrid = random_net(window=2).with_linear_memory(2)
    z = torch.randn(1, 24, 1, 8, 8, dtype=torch.float64)
    sizes = {
        "window": StreamingStudent(net, steps=1, window=4).cache_bytes(z),
        "sink": StreamingStudent(net, steps=1, window=4, sink=2).cache_bytes(z),
        "ema": StreamingStudent(net, steps=1, window=4, sink=2, ema=0.9).cache_bytes(z),
        "hybrid": StreamingStudent(hybrid, steps=1, window=2).cache_bytes(z),
        "all": StreamingStudent(random_net(), steps=1, window=None).cache_bytes(z),
    }
    tokens = SMALL.tokens_per_frame * SMALL.dim * 2 * 8 * SMALL.depth  # k and v of one frame, float64 bytes
    for name in ("window", "sink", "ema", "hybrid"):
        assert len(set(sizes[name][4:])) == 1, (name, sizes[name])
    assert sizes["window"][-1] == 4 * tokens and sizes["sink"][-1] == sizes["ema"][-1] == 6 * tokens
    d = SMALL.dim // SMALL.heads
    assert sizes["hybrid"][-1] == 2 * tokens + SMALL.depth * SMALL.heads * (d * d + d) * 8
    assert sizes["all"] == [2 * tokens * (n + 1) for n in range(12)]


# ------------------------------------------------------------------ SDVG
def euler_student(seed, steps):
    return StreamingStudent(random_net(seed=seed), steps=steps, sampler="euler", window=4)


def test_sdvg_with_tau_plus_infinity_is_the_target_and_minus_infinity_the_drafter():
    drafter, target = euler_student(1, 1), euler_student(2, 3)
    z = torch.randn(3, 8, 1, 8, 8, dtype=torch.float64)
    score = worst_frame_score(World())
    top = speculative_stream(drafter, target, z, math.inf, score)
    assert torch.equal(top["clips"], target.sample(z)) and not top["accepted"].any()
    bottom = speculative_stream(drafter, target, z, -math.inf, score, force_first=False)
    assert torch.equal(bottom["clips"], drafter.sample(z)) and bottom["accepted"].all()
    assert top["evals_per_frame"] == pytest.approx((1 + 2 + 3) / 2)
    assert bottom["evals_per_frame"] == pytest.approx((1 + 2) / 2)
    assert stream_evals_per_frame(target) == 2.0 and stream_evals_per_frame(drafter) == 1.0
    first = speculative_stream(drafter, target, z, -math.inf, score)  # the first block is always the target's
    assert torch.equal(first["clips"][:, :2], target.sample(z[:, :2])) and first["accept_rate"] == 1.0
    assert not first["accepted"][:, 0].any() and first["accepted"][:, 1:].all()


def test_sdvg_accepts_exactly_the_drafts_scoring_at_least_tau_clip_by_clip():
    drafter, target = euler_student(1, 1), euler_student(2, 2)
    z = torch.randn(4, 8, 1, 8, 8, dtype=torch.float64)
    score = worst_frame_score(World())
    free = speculative_stream(drafter, target, z, -math.inf, score)
    tau = float(free["scores"][:, 1].median())
    run = speculative_stream(drafter, target, z, tau, score)
    assert torch.equal(run["accepted"][:, 1], run["scores"][:, 1] >= tau)
    assert 0 < run["accepted"][:, 1].sum() < 4  # some clips accept the second block, some do not
    rejected = run["accepted"].logical_not().double()
    expected = (1 + 2 + 2 * rejected).sum(1).mean() / 8
    assert run["evals_per_frame"] == pytest.approx(float(expected))


def test_worst_frame_score_is_the_worst_frame_and_zero_on_clean_frames():
    w = World()
    real = w.clips(3, 4, 16, generator=torch.Generator().manual_seed(0))
    assert worst_frame_score(w)(real).abs().max() < 1e-8
    broken = real.clone()
    broken[1, 2] = -1.0 + 0.5 * torch.rand_like(broken[1, 2])  # one frame of noise in clip 1
    s = worst_frame_score(w)(broken)
    from distill_lab.video.metrics import frame_error
    assert s[1] == pytest.approx(-float(frame_error(broken[1:2], w)[0, 2])) and s[1] < -0.01
    assert s[0].abs() < 1e-8 and s[2].abs() < 1e-8


def test_sdvg_rejects_bad_input():
    drafter = euler_student(1, 1)
    other = StreamingStudent(random_net(block=4), steps=1)
    z = torch.randn(1, 8, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="same size"):
        speculative_stream(drafter, other, z, 0.0, worst_frame_score(World()))
    with pytest.raises(ValueError, match="nan"):
        speculative_stream(drafter, drafter, z, float("nan"), worst_frame_score(World()))
    lock = StreamingStudent(drafter.net, steps=1, window=4, order="lockstep")
    with pytest.raises(ValueError, match="sequential"):
        speculative_stream(drafter, lock, z, 0.0, worst_frame_score(World()))
    corrected = StreamingStudent(drafter.net, steps=1, window=4, retro=1)
    with pytest.raises(ValueError, match="retro"):
        speculative_stream(drafter, corrected, z, 0.0, worst_frame_score(World()))


def test_sdvg_follows_each_students_block_schedule():
    drafter = StreamingStudent(random_net(seed=1), steps=1, sampler="euler", window=4, block_steps=[3, 1])
    target = euler_student(2, 2)
    z = torch.randn(2, 8, 1, 8, 8, dtype=torch.float64)
    score = worst_frame_score(World())
    bottom = speculative_stream(drafter, target, z, -math.inf, score, force_first=False)
    assert torch.equal(bottom["clips"], drafter.sample(z))  # the drafter's own schedule, block by block
    assert bottom["evals_per_frame"] == pytest.approx((3 + 2 + 3 * (1 + 2)) / 8)


# ------------------------------------------------------------------ the recipes and committed students
@pytest.fixture(scope="module")
def tiny_exp():
    torch.manual_seed(0)
    return VideoWorld("ci", teacher=VideoTransformer(SMALL, "full"), video_scale=TINY, progress=False)


def test_ema_sink_recipe_trains_and_streams_with_its_decay(tiny_exp):
    torch.manual_seed(0)
    st = get_recipe("ema_sink", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1, pool=4,
                                                     init_steps=1)
    assert st.ema == 0.9 and st.sink == tiny_exp.block and st.options["rollout_factor"] == 2
    assert st.new_cache().ema == 0.9


def test_hybrid_forcing_starts_its_second_stage_from_the_first(tiny_exp, monkeypatch):
    torch.manual_seed(0)
    first = get_recipe("self_forcing", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1, pool=4,
                                                            init_steps=1)
    starts = []
    from distill_lab.video import recipes

    real = recipes._distribution_matching

    def spy(exp, name, steps, overrides, own_context):
        if overrides.get("from_student") is not None:
            starts.append({k: v.clone() for k, v in overrides["from_student"].net.state_dict().items()})
        return real(exp, name, steps, overrides, own_context)

    monkeypatch.setattr(recipes, "_distribution_matching", spy)
    hy = get_recipe("hybrid_forcing", track="video").train(tiny_exp, steps=2, batch=2, critic_updates=1,
                                                           from_student=first)
    assert hy.net.linear_memory and hy.window == tiny_exp.block and hy.new_cache().linear
    assert hy.first_stage is first and hy.options["init_steps"] == 0 and hy.options["rollout_factor"] == 2
    assert len(hy.history["loss"]) == 1  # hybrid_steps defaults to half the steps
    assert all(torch.equal(starts[0][k], v) for k, v in first.net.state_dict().items())
    changed = [k for k, v in first.net.state_dict().items() if not torch.equal(hy.net.state_dict()[k], v)]
    assert changed  # the second stage trained the copy, not the first stage's network
    ablation = get_recipe("hybrid_forcing", track="video").train(tiny_exp, steps=2, batch=2, critic_updates=1,
                                                                 from_student=first, linear=False)
    assert not ablation.net.linear_memory and ablation.window == tiny_exp.block


def test_committed_students_load_as_saved_and_train_when_missing(tiny_exp, tmp_path, monkeypatch):
    monkeypatch.setattr(video_students, "students_dir", lambda scale: tmp_path)
    trained = []
    real = video_students.train_student

    def spy(exp, name, seed, start=None):
        trained.append((name, seed, start is not None))
        return real(exp, name, seed, start)

    monkeypatch.setattr(video_students, "train_student", spy)
    monkeypatch.setitem(video_students.STUDENTS, "self_forcing",
                        ("self_forcing", {"steps": 1, "batch": 2, "critic_updates": 1, "pool": 4, "init_steps": 1}, None))
    monkeypatch.setitem(video_students.STUDENTS, "hybrid_forcing",
                        ("hybrid_forcing", {"steps": 2, "batch": 2, "critic_updates": 1}, "self_forcing"))
    got = video_students.committed_students(tiny_exp, "hybrid_forcing", seeds=(0,), quiet=True)
    assert trained == [("self_forcing", 0, False), ("hybrid_forcing", 0, True)]  # nothing committed: trained
    assert got[0].net.linear_memory
    video_students.save_student(got[0], tmp_path / "x.pt")
    back = video_students.load_student(tmp_path / "x.pt")
    assert (back.times, back.window, back.sink, back.ema, back.sampler) == \
        (got[0].times, got[0].window, got[0].sink, got[0].ema, got[0].sampler)
    for k, v in got[0].net.state_dict().items():
        assert torch.equal(back.net.state_dict()[k], v.half().float()), k
    with pytest.raises(ValueError, match="known"):
        video_students.committed_students(tiny_exp, "nope")


def test_a_cache_of_some_rows_denoises_those_clips_as_the_whole_batch_does():
    st = StreamingStudent(random_net(window=4).with_linear_memory(4), steps=2, sampler="euler", window=4, sink=2,
                          ema=0.5)
    z = torch.randn(4, 12, 1, 8, 8, dtype=torch.float64)
    cache = st.new_cache()
    for i in range(0, 10, 2):
        st.commit(st.denoise_block(z[:, i:i + 2], cache), cache)
    assert cache.folded and cache.absorbed  # the sub-cache must carry the sink and the linear state
    idx = torch.tensor([3, 1])
    whole = st.denoise_block(z[:, 10:12], cache)
    part = st.denoise_block(z[idx, 10:12], cache.rows(idx))
    assert torch.allclose(part, whole[idx], atol=1e-12)
    for layer in st.net.layers:  # with a live read-out of the state
        torch.nn.init.normal_(layer.linear_proj.weight, std=0.3)
    assert torch.allclose(st.denoise_block(z[idx, 10:12], cache.rows(idx)), st.denoise_block(z[:, 10:12], cache)[idx],
                          atol=1e-12)


# ------------------------------------------------------------------ Re-DMD and the motion reward
def linear_dmd_case(n: int, side: int, t: float, shift: float, slope: float, seed: int = 0):
    """Closed-form real and fake velocities (``-x + shift`` and ``-slope x``), a batch of clips, their times
    and noise, and plain DMD's loss and gradient on it: what a weighted DMD must rescale."""
    from distill_lab.methods.step.dmd import dmd_loss

    def real(x, t):
        return -x + shift

    def fake(x, t):
        return -slope * x

    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, 1, side, side, generator=g, dtype=torch.float64)
    tt, noise = torch.full((n,), t, dtype=torch.float64), torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    plain, _ = dmd_loss(x, real, fake, t=tt, noise=noise)
    plain.backward()
    return real, fake, x0, tt, noise, plain, x.grad


def test_rewarded_dmd_scales_each_samples_dmd_gradient_by_exp_beta_reward():
    from distill_lab.methods.streaming import rewarded_dmd_loss

    real, fake, x0, t, noise, plain, plain_grad = linear_dmd_case(4, 3, 0.4, 0.3, 0.5)

    def reward(c):  # differentiable, so a reward that leaked its gradient into the loss would show
        return 2 * c.flatten(1).mean(1)

    r = reward(x0)
    x = x0.clone().requires_grad_(True)
    loss, info = rewarded_dmd_loss(x, real, fake, reward, beta=0.7, t=t, noise=noise)
    loss.backward()
    w = torch.exp(0.7 * r)
    assert torch.allclose(info["weights"], w)
    assert torch.allclose(x.grad, w.view(4, 1, 1, 1, 1) * plain_grad, atol=1e-12)  # per sample, not a mean weight
    x_zero = x0.clone().requires_grad_(True)
    zero, _ = rewarded_dmd_loss(x_zero, real, fake, lambda c: r, beta=0.0, t=t, noise=noise)
    assert torch.allclose(zero, plain)  # beta = 0 is DMD
    with pytest.raises(ValueError, match="one number a sample"):
        rewarded_dmd_loss(x0.clone().requires_grad_(True), real, fake, lambda c: r[:2], beta=1.0, t=t, noise=noise)


def test_motion_reward_is_zero_at_the_datas_motion_and_minus_one_when_frozen():
    from distill_lab.video.metrics import clip_dynamic_degree, motion_reward

    w = World()
    states = w.simulate(3, 6, seed=0)
    clips = w.render(states, 16)
    dd = clip_dynamic_degree(w.detect(clips))
    reward = motion_reward(w, float(dd[0]))
    r = reward(clips)
    assert abs(float(r[0])) < 1e-9 and torch.allclose(r, (dd / dd[0] - 1).float(), atol=1e-6)
    frozen = clips[:, :1].expand_as(clips).contiguous()
    assert torch.allclose(reward(frozen), torch.full((3,), -1.0), atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        motion_reward(w, 0.0)


def test_reward_forcing_weights_its_dmd_by_the_motion_reward(tiny_exp, monkeypatch):
    from distill_lab.video import recipes

    seen = []
    real = recipes.rewarded_dmd_loss

    def spy(x, real_v, fake_v, reward, beta, **kw):
        seen.append((beta, reward(x.detach())))
        return real(x, real_v, fake_v, reward, beta, **kw)

    monkeypatch.setattr(recipes, "rewarded_dmd_loss", spy)
    torch.manual_seed(0)
    st = get_recipe("reward_forcing", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1, pool=4,
                                                           init_steps=1)
    assert [b for b, _ in seen] == [2.0] and seen[0][1].shape == (2,)
    assert st.ema == 0.9 and st.sink == tiny_exp.block and st.options["reward_beta"] == 2.0
    seen.clear()
    get_recipe("ema_sink", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1, pool=4, init_steps=1)
    assert not seen  # EMA-sink alone is plain DMD


# ------------------------------------------------------------------ step schedules and HiAR's order
def test_block_steps_give_each_block_its_own_schedule():
    st = StreamingStudent(random_net(window=4), steps=2, sampler="euler", window=4, block_steps=[4, 2, 1])
    assert st.times_for(0) == [0.0, 0.25, 0.5, 0.75] and st.times_for(1) == [0.0, 0.5]
    assert st.times_for(2) == [0.0] and st.times_for(7) == [0.0]
    assert st.nfe_per_frame == 1 and st.mean_nfe_per_frame(8) == pytest.approx((4 + 2 + 1 + 1) / 4)
    z = torch.randn(2, 8, 1, 8, 8, dtype=torch.float64)
    got = st.sample(z)
    cache, out = st.new_cache(), []
    for n, steps in enumerate((4, 2, 1, 1)):  # the same, block by block, each with its own uniform steps
        one = StreamingStudent(st.net, steps=steps, sampler="euler", window=4)
        out.append(one.denoise_block(z[:, 2 * n:2 * n + 2], cache))
        st.commit(out[-1], cache)
    assert torch.equal(got, torch.cat(out, 1))
    for bad in ([], [2, 0]):
        with pytest.raises(ValueError, match="block_steps"):
            StreamingStudent(random_net(), steps=2, block_steps=bad)


@pytest.mark.parametrize("sampler", ["euler", "renoise"])
def test_lockstep_denoising_of_one_block_is_the_plain_sampler(sampler):
    from distill_lab.video.rollout import lockstep_sample

    st = StreamingStudent(random_net(window=4), steps=3, sampler=sampler, window=4)
    z = torch.randn(2, 2, 1, 8, 8, dtype=torch.float64)
    torch.manual_seed(5)
    plain = st.sample(z)
    torch.manual_seed(5)
    assert torch.allclose(lockstep_sample(st, z), plain, atol=1e-12)


def test_lockstep_denoising_conditions_each_block_on_context_at_its_own_noise_level():
    from distill_lab.video.rollout import lockstep_sample

    st = StreamingStudent(random_net(window=4), steps=2, sampler="euler", window=4)
    z = torch.randn(2, 4, 1, 8, 8, dtype=torch.float64)
    b0, b1 = z[:, :2], z[:, 2:]
    for k, t in enumerate((0.0, 0.5)):  # by hand: both blocks step together, block 1 sees block 0 at time t
        cache = st.new_cache()
        v0, kv = st.net.forward_block(b0, t, cache, return_kv=True)
        cache.append(kv, 2)
        v1 = st.net.forward_block(b1, t, cache)
        b0, b1 = b0 + 0.5 * v0, b1 + 0.5 * v1
    got = lockstep_sample(st, z)
    assert torch.allclose(got, torch.cat([b0, b1], 1), atol=1e-12)
    assert (got - st.sample(z)).abs().max() > 1e-6  # not the sequential order


def test_lockstep_rollout_keeps_the_gradient_of_its_exit_step_only_and_detaches_the_context():
    from distill_lab.video.rollout import lockstep_rollout, lockstep_sample

    st = StreamingStudent(random_net(window=4), steps=3, sampler="euler", window=4)
    z = torch.randn(2, 4, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    out = lockstep_rollout(st, z, exit_step=0)
    g = torch.autograd.grad(out[:, 2:].sum(), z)[0]
    assert g[:, 2:].abs().max() > 0  # block 1's own input at the exit step
    assert g[:, :2].abs().max() == 0  # block 0 reaches block 1 only through detached keys and values
    late = lockstep_rollout(st, z, exit_step=2)
    assert late.requires_grad  # through the exit evaluation's parameters ...
    assert torch.autograd.grad(late.sum(), z, allow_unused=True)[0] is None  # ... not through earlier steps
    with torch.no_grad():
        assert torch.allclose(lockstep_rollout(st, z, grad=False, exit_step=2), lockstep_sample(st, z), atol=1e-12)


def test_hiar_trains_in_lockstep_with_its_bidirectional_forward_kl_term(tiny_exp, monkeypatch):
    from distill_lab.video import recipes

    calls = {"lockstep": 0, "fm_masks": []}
    real_roll, real_fm = recipes.lockstep_rollout, recipes.flow_matching_loss

    def roll(student, z, grad=True):
        calls["lockstep"] += 1
        return real_roll(student, z, grad=grad)

    def fm(net, x1, *a, **k):  # the real term, shifted by 100: the generator's logged loss must carry +25
        calls["fm_masks"].append(net.mask)
        return real_fm(net, x1, *a, **k) + 100.0

    monkeypatch.setattr(recipes, "lockstep_rollout", roll)
    monkeypatch.setattr(recipes, "flow_matching_loss", fm)
    torch.manual_seed(0)
    st = get_recipe("hiar", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1, pool=4, init_steps=1)
    assert calls["lockstep"] == 2 and calls["fm_masks"] == ["full"]  # critic + generator rollouts; one FKL term
    assert st.history["loss"][0] > 20  # DMD + 0.25 x (>= 100): the term is added with its weight, not subtracted
    assert st.order == "lockstep" and st.net.mask == "block_causal"  # bidirectional only inside the term
    m = tiny_exp.evaluate(st)
    assert torch.isfinite(m["clips"]).all() and m["exposure_gap"] is not None
    with pytest.raises(ValueError, match="block_steps"):
        StreamingStudent(st.net, steps=2, order="lockstep", block_steps=[2, 1])


# ------------------------------------------------------------------ Salt
def test_salt_terms_vanish_for_a_student_blind_to_its_cache_and_use_the_shared_sc_loss():
    from distill_lab.methods.step import fewstep
    from distill_lab.video import recipes

    assert recipes.sc_loss is fewstep.sc_loss  # the toy track's SC-DMD term, unchanged
    st = StreamingStudent(random_net(window=4), steps=2, sampler="euler", window=4)
    z = torch.randn(2, 6, 1, 8, 8, dtype=torch.float64)
    real = st.net.forward_block
    blind = StreamingStudent(random_net(window=4), steps=2, sampler="euler", window=4)
    blind.net.forward_block = lambda x, t, cache, return_kv=False: real(x, t, KVCache(SMALL.depth, window=4),
                                                                         return_kv=return_kv)
    torch.manual_seed(0)
    _, blind_info = recipes.salt_terms(blind, z, align_steps=4)
    assert blind_info["align"] < 1e-20  # a student that ignores its cache has nothing to align
    torch.manual_seed(0)
    terms, info = recipes.salt_terms(st, z, align_steps=5)
    assert info["align"] > 1e-8 and info["sc"] > 0
    st.net.zero_grad()
    (terms["align"] + terms["sc"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in st.net.parameters())
    with pytest.raises(ValueError, match="history"):
        recipes.salt_terms(st, z[:, :2], align_steps=4)


def test_salt_terms_are_zero_for_a_straight_velocity_that_ignores_the_cache(monkeypatch):
    from distill_lab.video import recipes

    st = StreamingStudent(random_net(window=4), steps=3, sampler="euler", window=4)
    const = torch.randn(1, 2, 1, 8, 8, dtype=torch.float64)
    monkeypatch.setattr(st.net, "forward_block", lambda x, t, cache, return_kv=False:
                        (const.expand_as(x), [(torch.zeros(x.shape[0], 2, 8, 8, dtype=x.dtype),) * 2] * 2)
                        if return_kv else const.expand_as(x) + 0 * x)
    terms, info = recipes.salt_terms(st, torch.randn(2, 6, 1, 8, 8, dtype=torch.float64), align_steps=4)
    assert info["sc"] < 1e-20 and info["align"] < 1e-20  # straight paths compose, and no cache to differ by


def test_salt_adds_both_terms_to_the_generators_loss(tiny_exp, monkeypatch):
    from distill_lab.video import recipes

    calls = []
    real = recipes.salt_terms

    def spy(student, z, align_steps):  # the real terms, shifted by 100 and 1000
        terms, info = real(student, z, align_steps)
        calls.append((z.shape, align_steps))
        return {"sc": terms["sc"] + 100.0, "align": terms["align"] + 1000.0}, info

    monkeypatch.setattr(recipes, "salt_terms", spy)
    torch.manual_seed(0)
    st = get_recipe("salt", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1, pool=4, init_steps=1)
    assert calls == [((2, tiny_exp.frames, 1, 8, 8), 4)]
    assert {"sc", "align"} <= set(st.history)
    assert 1099 < st.history["loss"][0] < 1200  # both terms added to DMD with weight 1, neither subtracted
    torch.manual_seed(0)
    off = get_recipe("salt", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1, pool=4, init_steps=1,
                                                  align_weight=0.0)
    assert 99 < off.history["loss"][0] < 200  # the weight reaches its term
    assert st.options["sc_weight"] == 1.0 and st.options["align_weight"] == 1.0


# ------------------------------------------------------------------ Stream-R1
def test_saliency_weights_follow_the_rewards_gradient_and_average_one():
    from distill_lab.methods.streaming import saliency_weights

    x = torch.zeros(2, 3, 1, 4, 4, dtype=torch.float64)
    mask = torch.zeros_like(x)
    mask[0, 1, 0, 2, 3] = 1.0  # clip 0: the reward reads one pixel of frame 1
    mask[1] = 1.0  # clip 1: every element alike
    w, info = saliency_weights(x, lambda c: (c * mask).flatten(1).sum(1) * 3.0)
    assert torch.allclose(info["spatial"].flatten(1).mean(1), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(info["temporal"].mean(1), torch.ones(2, dtype=torch.float64))
    assert int(info["temporal"][0].argmax()) == 1 and int(info["spatial"][0, 0, 0].flatten().argmax()) == 2 * 4 + 3
    assert torch.allclose(w[1], torch.ones_like(w[1]))  # uniform saliency: uniform weights
    const, _ = saliency_weights(x, lambda c: torch.ones(2, dtype=c.dtype))  # no gradient at all
    assert torch.allclose(const, torch.ones_like(const))


def test_stream_r1_scales_dmd_per_clip_and_per_element_and_is_dmd_without_rewards():
    from distill_lab.methods.streaming import saliency_weights, stream_r1_loss

    real, fake, x0, t, noise, plain, plain_grad = linear_dmd_case(3, 4, 0.3, 0.2, 0.4)
    r = torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64)
    sal = lambda c: -(c - 0.5).pow(2).flatten(1).mean(1)  # noqa: E731
    x = x0.clone().requires_grad_(True)
    loss, info = stream_r1_loss(x, real, fake, lambda c: r, 0.5, saliency_reward=sal, t=t, noise=noise)
    loss.backward()
    elem, _ = saliency_weights(x0, sal)
    assert torch.allclose(x.grad, torch.exp(0.5 * r).view(3, 1, 1, 1, 1) * elem * plain_grad, atol=1e-12)
    x2 = x0.clone().requires_grad_(True)
    same, _ = stream_r1_loss(x2, real, fake, lambda c: r, 0.0, t=t, noise=noise)
    assert torch.allclose(same, plain)


def test_balanced_reward_puts_each_axis_on_its_own_spread():
    from distill_lab.methods.streaming import BalancedReward

    x = torch.zeros(4, 1)
    big = torch.tensor([0.0, 100.0, 200.0, 300.0])
    small = torch.tensor([3.0, 2.0, 1.0, 0.0])
    b = BalancedReward({"big": lambda c: big, "small": lambda c: small}, decay=0.5)
    r = b(x)
    zb, zs = (big - big.mean()) / big.std(), (small - small.mean()) / small.std()
    assert torch.allclose(r, ((zb + zs) / 2).float(), atol=1e-5)  # equal say, whatever the units
    assert torch.allclose(r, torch.zeros(4), atol=1e-5)  # here the two axes disagree exactly
    b(x)
    assert b.scale["big"] == pytest.approx(float(big.std()))  # an EMA of equal spreads stays put
    with pytest.raises(ValueError):
        BalancedReward({})
    with pytest.raises(ValueError):
        BalancedReward({"a": lambda c: big}, decay=1.0)


def test_quality_reward_is_zero_on_real_clips_and_pulls_pixels_to_the_clean_rendering():
    from distill_lab.video.metrics import quality_reward

    w = World()
    real = w.clips(2, 3, 16, generator=torch.Generator().manual_seed(0)).double()
    q = quality_reward(w)
    assert q(real).abs().max() < 1e-10
    noisy = (real + 0.05 * torch.randn_like(real)).requires_grad_(True)
    g, = torch.autograd.grad(q(noisy).sum(), noisy)
    clean = w.render(w.detect(noisy.detach()), 16).double()
    assert torch.allclose(g, 2 * (clean - noisy.detach()) / noisy[0].numel(), atol=1e-10)


def test_stream_r1_recipe_balances_quality_and_motion_and_weights_pixels(tiny_exp, monkeypatch):
    from distill_lab.video import recipes

    seen = []
    real = recipes.stream_r1_loss

    def spy(x, rv, fv, rollout_reward, beta, saliency_reward=None, **kw):
        seen.append((beta, sorted(rollout_reward.axes), saliency_reward is not None))
        return real(x, rv, fv, rollout_reward, beta, saliency_reward=saliency_reward, **kw)

    monkeypatch.setattr(recipes, "stream_r1_loss", spy)
    torch.manual_seed(0)
    get_recipe("stream_r1", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1, pool=4, init_steps=1)
    assert seen == [(1.0, ["motion", "quality"], True)]


def test_salt_reads_the_good_cache_only_without_gradient(monkeypatch):
    from distill_lab.video import recipes

    st = StreamingStudent(random_net(window=4), steps=2, sampler="euler", window=4)
    real, seen = st.net.forward_block, []

    def forward_block(x, t, cache, return_kv=False):
        seen.append((id(cache), torch.is_grad_enabled()))
        return real(x, t, cache, return_kv=return_kv)

    monkeypatch.setattr(st.net, "forward_block", forward_block)
    torch.manual_seed(0)
    with torch.enable_grad():
        recipes.salt_terms(st, torch.randn(2, 6, 1, 8, 8, dtype=torch.float64), align_steps=3)
    good = seen[0][0]  # the good history is streamed first
    assert all(not g for c, g in seen if c == good)  # the target side carries no gradient
    assert any(g for c, g in seen if c != good)  # the poor-cache side does
