"""Step counts and self-correction of streaming students (issue 12's second half): ASD's adversarial
self-distillation, Diagonal Distillation's trained schedule and partially denoised context,
SoulX-FlashTalk's retrospective correction, and Mutual Forcing's two modes of one network. Each
mechanism on a case with a known answer; each loss fails on a flipped sign, a swapped argument, a
dropped stop-gradient or a wrong reduction."""

from __future__ import annotations

import pytest
import torch
from test_video_memory import SMALL, TINY, random_net

from distill_lab.core.registry import get_recipe
from distill_lab.methods.streaming import (asd_discriminator_loss, asd_generator_loss, clip_as_image,
                                           mutual_distillation_loss)
from distill_lab.video.experiment import VideoWorld
from distill_lab.video.nets import KVCache, VideoTransformer
from distill_lab.video.recipes import mutual_rollout
from distill_lab.video.rollout import StreamingStudent, self_forcing_rollout


def noise(frames=8, n=2, seed=3):
    return torch.randn(n, frames, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def student(**kw):
    kw.setdefault("sampler", "renoise")
    kw.setdefault("steps", 2)
    return StreamingStudent(random_net(), **kw)


def same_stream(a: StreamingStudent, b: StreamingStudent, z, seed=0):
    torch.manual_seed(seed)
    x = a.sample(z)
    torch.manual_seed(seed)
    return x, b.sample(z)


# ------------------------------------------------------------------ the cache's snapshot
def test_a_snapshot_is_the_cache_as_it_was_whatever_is_appended_later():
    net = random_net()
    cache = KVCache(net.config.depth, window=2, sink=2, ema=0.5)
    z = noise(6)
    for i in range(0, 4, 2):
        _, kv = net.forward_block(z[:, i:i + 2], 1.0, cache, return_kv=True)
        cache.append(kv, 2)
    snap = cache.snapshot()
    keys, frames = [k.clone() for k in cache.k], list(cache.frames)
    _, kv = net.forward_block(z[:, 4:6], 1.0, cache, return_kv=True)
    cache.append(kv, 2)  # evicts a frame and folds it into the sink of the original
    assert cache.folded > snap.folded and cache.frames != frames
    assert snap.frames == frames and all(torch.equal(a, b) for a, b in zip(snap.k, keys))
    snap.append(kv, 2)  # and the other way round: the snapshot goes on alone to the same state
    assert all(torch.equal(a, b) for a, b in zip(snap.k, cache.k)) and snap.frames == cache.frames


# ------------------------------------------------------------------ Diagonal: partially denoised context
def test_a_clean_context_time_is_the_plain_student():
    z = noise()
    a, b = same_stream(student(), student(context_time=1.0), z)
    assert torch.equal(a, b)


def test_a_block_enters_the_cache_renoised_to_the_context_time_and_encoded_there():
    st = student(context_time=0.75)
    x = noise(2, seed=5)
    cache = st.new_cache()
    torch.manual_seed(1)
    st.commit(x, cache)
    torch.manual_seed(1)
    eps = torch.randn_like(x)
    _, kv = st.net.forward_block(0.25 * eps + 0.75 * x, 0.75, st.new_cache(), return_kv=True)
    assert all(torch.allclose(cache.k[i], k) and torch.allclose(cache.v[i], v) for i, (k, v) in enumerate(kv))
    clean = st.new_cache()
    StreamingStudent(st.net, steps=2, sampler="renoise").commit(x, clean)
    assert not torch.allclose(clean.k[0], cache.k[0])  # the time (and noise) does reach the keys


def test_training_rollouts_follow_each_blocks_schedule_and_context_time():
    st = student(block_steps=[3, 1], context_time=0.5)
    z = noise()
    torch.manual_seed(0)
    roll = self_forcing_rollout(st, z, grad=False, same_exit=True)
    assert roll.shape == z.shape
    seen = []
    real = st.denoise_block
    st.denoise_block = lambda zb, cache, exit_step=None, grad=False, times=None: seen.append((exit_step, times)) or real(
        zb, cache, exit_step=exit_step, grad=grad, times=times)
    for seed in range(6):
        seen.clear()
        torch.manual_seed(seed)
        self_forcing_rollout(st, z, grad=False)
        assert [t for _, t in seen] == [[0, 1 / 3, 2 / 3], [0.0], [0.0], [0.0]]
        assert seen[0][0] in (0, 1, 2) and all(e == 0 for e, _ in seen[1:])  # exits within each schedule


def test_bad_context_times_and_corrections_are_refused():
    for kw, msg in (({"context_time": 0.0}, "context_time"), ({"context_time": 1.5}, "context_time"),
                    ({"retro": -1}, "retro"), ({"retro": 1, "retro_time": 1.0}, "retro"),
                    ({"retro": 1, "order": "lockstep"}, "lockstep"), ({"mode": 1}, "mode")):
        with pytest.raises(ValueError, match=msg):
            student(**kw)


# ------------------------------------------------------------------ SoulX: retrospective self-correction
def test_no_correction_is_the_plain_student():
    z = noise()
    a, b = same_stream(student(), student(retro=0), z)
    assert torch.equal(a, b)


@pytest.mark.parametrize("k", [1, 2])
def test_retrospection_corrects_the_memory_not_the_frames_already_out(k):
    """The stream by hand: each block denoised on the corrected cache; after it, the last k blocks
    re-noised to 0.5 and re-denoised in order from the cache as it was before the oldest of them."""
    st = student(retro=k, retro_time=0.5)
    plain = StreamingStudent(st.net, steps=2, sampler="renoise")
    z = noise(8)
    torch.manual_seed(0)
    out = st.sample(z)
    torch.manual_seed(0)
    cache, recent, blocks = plain.new_cache(), [], []  # recent: (cache before, block) of the last k
    for i in range(0, 8, 2):
        x = plain.denoise_block(z[:, i:i + 2], cache)
        blocks.append(x)
        before = cache.snapshot()
        plain.commit(x, cache)
        recent = (recent + [(before, x)])[-k:]
        cache, fixed = recent[0][0].snapshot(), []
        for _, y in recent:
            b = cache.snapshot()
            yt = 0.5 * torch.randn_like(y) + 0.5 * y
            y = plain.denoise_block(yt, cache, times=[0.5])  # retro_time, then the grid's later times (none)
            plain.commit(y, cache)
            fixed.append((b, y))
        recent = fixed
    assert torch.equal(out, torch.cat(blocks, 1))
    torch.manual_seed(0)
    uncorrected = plain.sample(z)
    assert torch.equal(out[:, :2], uncorrected[:, :2])  # the first block is out before any correction
    assert not torch.allclose(out[:, 2:], uncorrected[:, 2:])  # the later ones stream on corrected memory


def test_retrospection_costs_its_evaluations():
    st = student(retro=1, retro_time=0.5, steps=2)
    assert st.retro_times == [0.5] and st.mean_nfe_per_frame(8) == pytest.approx((4 * 2 + 4 * 1) / 4 / 1)
    st2 = student(retro=2, retro_time=0.25, steps=2)
    assert st2.retro_times == [0.25, 0.5]
    assert st2.mean_nfe_per_frame(8) == pytest.approx((4 * 2 + (1 + 2 + 2 + 2) * 2) / 4)


# ------------------------------------------------------------------ ASD
class MeanDisc(torch.nn.Module):
    """D(x, t) = k mean(x): a discriminator whose verdict is known in closed form."""

    def __init__(self, k=1.0):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(float(k), dtype=torch.float64))

    def forward(self, x, t):
        return self.k * x.reshape(x.shape[0], -1).mean(1)


def test_asd_discriminator_takes_the_more_step_clips_as_real_and_averages_over_clips():
    disc, half = MeanDisc(2.0), torch.full((3,), 0.5, dtype=torch.float64)
    fewer = torch.zeros(3, 4, 1, 8, 8, dtype=torch.float64)
    more = torch.stack([torch.full((4, 1, 8, 8), v, dtype=torch.float64) for v in (1.0, 2.0, 3.0)])
    torch.manual_seed(0)
    loss, _ = asd_discriminator_loss(disc, fewer, more, t=half)
    torch.manual_seed(0)  # the same draws by hand: the n-step clips' noise first, then the (n+1)-step ones'
    eps_f, eps_r = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 8, 8, dtype=torch.float64)
    d_real = disc(0.5 * eps_r + 0.5 * clip_as_image(more), half)
    d_fake = disc(0.5 * eps_f + 0.5 * clip_as_image(fewer), half)
    sp = torch.nn.functional.softplus
    assert loss.item() == pytest.approx((sp(-d_real).mean() + sp(d_fake).mean()).item())
    torch.manual_seed(0)
    swapped, _ = asd_discriminator_loss(disc, more, fewer, t=half)
    assert swapped.item() > loss.item() + 1  # calling the n-step clips real is penalised
    f, m = fewer.clone().requires_grad_(), more.clone().requires_grad_()
    asd_discriminator_loss(disc, f, m, t=half)[0].backward()
    assert f.grad is None and m.grad is None and disc.k.grad is not None  # only the discriminator learns
    with pytest.raises(ValueError, match="one shape"):
        asd_discriminator_loss(disc, fewer, more[:, :2], t=half)


def test_asd_generator_pushes_the_n_step_clips_towards_what_the_discriminator_calls_real():
    disc = MeanDisc(1.0)
    x = torch.zeros(2, 4, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    half = torch.full((2,), 0.5, dtype=torch.float64)
    torch.manual_seed(0)
    loss, _ = asd_generator_loss(disc, x, t=half)
    torch.manual_seed(0)
    d = disc(0.5 * torch.randn(2, 4, 8, 8, dtype=torch.float64), half)
    assert loss.item() == pytest.approx(torch.nn.functional.softplus(-d).mean().item())
    loss.backward()
    # d/dx softplus(-k mean(x_t)) = -sigmoid(-d) 0.5 / 256 per clip, averaged over the 2 clips: descent raises x
    want = (-torch.sigmoid(-d) * 0.5 / 256 / 2)[:, None, None, None, None].expand_as(x)
    assert torch.allclose(x.grad, want)
    assert clip_as_image(x).shape == (2, 4, 8, 8)


# ------------------------------------------------------------------ Mutual Forcing
def test_mode_vectors_start_at_zero_and_never_touch_clean_context():
    base = random_net()
    net = base.with_modes(2)
    x, cache = noise(2), KVCache(SMALL.depth)
    with net.mode(1):
        assert torch.equal(net.forward_block(x, 0.3, cache), base.forward_block(x, 0.3, cache))
    with torch.no_grad():
        net.mode_emb[1].normal_()
    with net.mode(1):
        noisy, (clean, kv1) = net.forward_block(x, 0.3, cache), net.forward_block(x, 1.0, cache, return_kv=True)
    clean0, kv0 = net.forward_block(x, 1.0, cache, return_kv=True)
    assert not torch.allclose(noisy, net.forward_block(x, 0.3, cache))  # the mode changes how noise is removed
    assert torch.equal(clean, clean0) and all(torch.equal(a[0], b[0]) for a, b in zip(kv1, kv0))
    with pytest.raises(ValueError, match="mode"):
        with net.mode(2):
            pass
    with pytest.raises(ValueError, match="modes"):
        VideoTransformer(SMALL, "block_causal", 2, modes=1)


def test_mutual_distillation_loss_is_the_mean_square_gap_with_the_multi_step_side_held():
    few = torch.tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True)
    multi = torch.tensor([[1.0, 0.0], [0.0, 5.0]], requires_grad=True)
    loss, info = mutual_distillation_loss(few, multi)
    assert loss.item() == pytest.approx((0 + 4 + 9 + 0) / 4) and info["self_distill"] == pytest.approx(3.25)
    loss.backward()
    assert torch.allclose(few.grad, torch.tensor([[0.0, 1.0], [1.5, 0.0]])) and multi.grad is None
    with pytest.raises(ValueError, match="one shape"):
        mutual_distillation_loss(few, multi[:1])


def test_identical_modes_teach_nothing():
    """With zero mode vectors and the same schedule, the multi-step mode's block is the few-step one's."""
    net = random_net().with_modes(2)
    few = StreamingStudent(net, steps=2, sampler="euler", mode=1)
    multi = StreamingStudent(net, steps=2, sampler="euler", mode=0)
    torch.manual_seed(0)
    clip, target = mutual_rollout(few, multi, noise())
    assert torch.allclose(clip, target) and mutual_distillation_loss(clip, target)[0].item() == pytest.approx(0.0)
    assert clip.requires_grad and not target.requires_grad
    with pytest.raises(ValueError, match="share one network"):
        mutual_rollout(few, StreamingStudent(random_net().with_modes(2), steps=1, sampler="renoise"), noise())


# ------------------------------------------------------------------ the recipes
@pytest.fixture(scope="module")
def tiny_exp():
    torch.manual_seed(0)
    return VideoWorld("ci", teacher=VideoTransformer(SMALL, "full"), video_scale=TINY, progress=False)


def test_asd_trains_at_each_step_count_with_its_discriminator(tiny_exp, monkeypatch):
    from distill_lab.video import recipes

    seen = {"times": [], "g": 0}
    real_roll, real_g = recipes.self_forcing_rollout, recipes.asd_generator_loss

    def roll(s, z, grad=True):
        seen["times"].append(list(s.times))
        return real_roll(s, z, grad=grad)

    def gen(disc, x):  # the real term, shifted by 100: the generator's loss must carry +10 (weight 0.1)
        seen["g"] += 1
        loss, info = real_g(disc, x)
        return loss + 100.0, info

    monkeypatch.setattr(recipes, "self_forcing_rollout", roll)
    monkeypatch.setattr(recipes, "asd_generator_loss", gen)
    torch.manual_seed(0)
    st = get_recipe("asd", track="video").train(tiny_exp, steps=4, batch=2, critic_updates=1, pool=4, init_steps=1)
    assert seen["g"] == 4 and all(h > 9 for h in st.history["loss"])  # added with its weight, not subtracted
    assert {tuple(t) for t in seen["times"]} <= {(0.0,), (0.0, 0.5)}  # n-step rollouts, n in (1, 2)
    assert "gan_d" in st.history and st.discriminator is not None and st.times == [0.0, 0.5]
    with pytest.raises(ValueError, match="asd_steps"):
        get_recipe("asd", track="video").train(tiny_exp, steps=1, batch=2, pool=4, init_steps=1, asd_steps=())


def test_diagonal_soulx_and_mutual_forcing_stream_as_they_trained(tiny_exp):
    torch.manual_seed(0)
    d = get_recipe("diagonal", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1, pool=4, init_steps=1)
    assert d.block_steps == [4, 3, 2, 1] and d.context_time == 0.75
    s = get_recipe("soulx", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1, pool=4, init_steps=1)
    assert s.retro == 1 and s.retro_time == 0.5
    m = get_recipe("mutual_forcing", track="video").train(tiny_exp, steps=2, batch=2)
    assert m.mode == 1 and m.multi.mode == 0 and m.multi.net is m.net and m.net.modes == 2
    assert m.sampler == "euler" and len(m.times) == 2 and len(m.multi.times) == 8  # deterministic, so regressable
    assert set(m.history) >= {"flow", "self_distill"}
    for st in (d, s, m, m.multi):
        assert torch.isfinite(tiny_exp.evaluate(st)["clips"]).all()
