"""The streaming-video track wired right: rollouts, streaming losses and recipes checked against
independent re-computations and by short instrumented runs that record what each loss and rollout
was called with.

A video recipe can "run" while its teacher-forcing loss reads the student's frames instead of the
real ones, CausVid's clips use the student's own context, the critic's samples carry a gradient, the
DMD loss scores the first horizon of a sink rollout instead of the last, or the returned student is
an untrained copy; a sampler can step to the wrong time or exit one step early. The end-to-end test
in ``test_video.py`` sees none of that. The world here is tiny and every run takes a step or three.
"""

from dataclasses import replace

import pytest
import torch
from spies import record
from test_video import random_net as video_random_net

from distill_lab.core.registry import get_recipe
from distill_lab.methods.streaming import (_block_index, _check_clip, diffusion_forcing_loss, ode_regression_loss,
                                           teacher_forcing_loss)
from distill_lab.video import recipes as video_recipes
from distill_lab.video.config import VIDEO_SCALES
from distill_lab.video.experiment import VideoWorld
from distill_lab.video.nets import KVCache, VideoNetConfig, VideoTransformer
from distill_lab.video.rollout import StreamingStudent, _euler_window, self_forcing_rollout, uniform_times

SMALL = VideoNetConfig(resolution=8, patch=4, dim=16, depth=1, heads=2)
TINY = replace(VIDEO_SCALES["ci"], net=SMALL, frames=4, block=2, teacher_steps=3, teacher_batch=4, teacher_nfe=2,
               batch=4, student_steps=2, student_nfe=2, eval_n=4)


def random_net(**kw):
    """test_video's randomly initialised transformer, at this file's smaller size."""
    return video_random_net(cfg=SMALL, **kw)


@pytest.fixture(scope="module")
def tiny_exp():
    torch.manual_seed(0)
    return VideoWorld("ci", teacher=VideoTransformer(SMALL, "full"), video_scale=TINY, progress=False)


def fake_velocity(x, t):
    """A velocity with a known closed form, nonlinear in ``t`` so a wrong time shows."""
    t = float(t)
    return -(0.5 + t) * x + t * t + 0.1


def _fake_forward_block(student, monkeypatch, times_seen):
    def forward_block(x, t, cache, return_kv=False):
        times_seen.append(float(t))
        return fake_velocity(x, t)

    monkeypatch.setattr(student.net, "forward_block", forward_block)


# ------------------------------------------------------------------ rollout.uniform_times
def test_uniform_times_start_each_step_and_one_step_is_allowed():
    assert uniform_times(1) == [0.0]  # a one-step student is legal (steps < 1 only is rejected)
    assert uniform_times(4) == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="at least one denoising step"):
        uniform_times(0)


# ------------------------------------------------------------------ StreamingStudent.__init__ / new_cache
def test_student_schedule_window_and_sink_defaults_and_overrides():
    net = random_net()
    s = StreamingStudent(net)
    assert s.times == [0.0, 0.25, 0.5, 0.75] and s.nfe_per_frame == 4  # the documented default: 4 steps
    assert s.window is None and s.sink == 0
    assert StreamingStudent(net, steps=4, times=[0.0, 0.5]).times == [0.0, 0.5]  # explicit times win
    assert StreamingStudent(net, window=3).window == 3
    windowed = random_net(window=4)
    assert StreamingStudent(windowed).window == 4  # the network's own window by default
    assert StreamingStudent(windowed, window=2).window == 2
    cache = StreamingStudent(net, window=3, sink=2).new_cache()
    assert isinstance(cache, KVCache) and cache.window == 3 and cache.sink == 2 and cache.depth == SMALL.depth
    default_cache = StreamingStudent(net).new_cache()
    assert default_cache.window is None and default_cache.sink == 0


@pytest.mark.parametrize("times", [[], [0.5, 0.5], [0.5, 0.2], [0.5, 0.2, 0.7], [-0.1, 0.5], [0.0, 1.0], [0.5, 1.5]])
def test_student_rejects_each_non_increasing_or_out_of_range_schedule(times):
    with pytest.raises(ValueError, match="times must increase"):
        StreamingStudent(random_net(), times=times)


# ------------------------------------------------------------------ StreamingStudent.denoise_block
def _manual_block(z, times, last, sampler, seed):
    """The update rules of the module docstring, written out (float64)."""
    torch.manual_seed(seed)
    x = z
    for k in range(last + 1):
        t = times[k]
        tn = times[k + 1] if k + 1 < len(times) else 1.0
        v = fake_velocity(x, t)
        if sampler == "euler":
            x = x + (tn - t) * v
            if k == last and tn < 1.0:
                x = x + (1 - tn) * fake_velocity(x, tn)
        else:
            x1 = x + (1 - t) * v
            x = x1 if k == last else (1 - tn) * torch.randn_like(x1) + tn * x1
    return x


@pytest.mark.parametrize("sampler", ["euler", "renoise"])
@pytest.mark.parametrize("exit_step", [None, 0, 1, 3])
def test_denoise_block_follows_its_update_rule_and_stops_at_the_exit_step(sampler, exit_step, monkeypatch):
    """Catches a wrong next time, the clean prediction x + (1 - t) v, the renoising
    (1 - t') eps + t' x1, an off-by-one last step, and an early-exit Euler step missing or added."""
    student = StreamingStudent(random_net(), steps=4, sampler=sampler)
    seen = []
    _fake_forward_block(student, monkeypatch, seen)
    z = torch.randn(2, 2, 1, 8, 8, dtype=torch.float64)
    torch.manual_seed(3)
    out = student.denoise_block(z, student.new_cache(), exit_step=exit_step)
    last = 3 if exit_step is None else exit_step
    expected = _manual_block(z, student.times, last, sampler, seed=3)
    assert torch.allclose(out, expected, atol=1e-12, rtol=0)
    calls = student.times[:last + 1]
    if sampler == "euler" and last < 3:
        calls = calls + [student.times[last + 1]]  # the early exit's clean prediction
    assert seen == calls


def test_renoise_block_returns_the_last_clean_prediction_with_fresh_noise(monkeypatch):
    """Two steps at times [0, 0.5], written out: x1 = z + v(z, 0); x = 0.5 eps + 0.5 x1;
    out = x + 0.5 v(x, 0.5)."""
    student = StreamingStudent(random_net(), times=[0.0, 0.5], sampler="renoise")
    _fake_forward_block(student, monkeypatch, [])
    z = torch.randn(1, 2, 1, 8, 8, dtype=torch.float64)
    torch.manual_seed(11)
    eps = torch.randn_like(z)
    x1 = z + (-0.5 * z + 0.1)
    x = 0.5 * eps + 0.5 * x1
    expected = x + 0.5 * (-(1.0) * x + 0.25 + 0.1)
    torch.manual_seed(11)
    assert torch.allclose(student.denoise_block(z, student.new_cache()), expected, atol=1e-12, rtol=0)


def test_euler_early_exit_predicts_from_the_cached_context():
    """The early exit's clean prediction x + (1 - t') v(x, t') attends to the same cache as the steps."""
    student = StreamingStudent(random_net(), times=[0.0, 0.5], sampler="euler")
    cache = student.new_cache()
    student.commit(torch.randn(1, 2, 1, 8, 8, dtype=torch.float64), cache)
    z = torch.randn(1, 2, 1, 8, 8, dtype=torch.float64)
    x = z + 0.5 * student.net.forward_block(z, 0.0, cache)
    expected = x + 0.5 * student.net.forward_block(x, 0.5, cache)
    assert torch.allclose(student.denoise_block(z, cache, exit_step=0), expected, atol=1e-12, rtol=0)


def test_denoise_block_keeps_no_gradient_by_default():
    student = StreamingStudent(random_net(), steps=2, sampler="renoise")
    z = torch.randn(1, 2, 1, 8, 8, dtype=torch.float64)
    with torch.enable_grad():
        assert not student.denoise_block(z, student.new_cache()).requires_grad
        assert student.denoise_block(z, student.new_cache(), grad=True).requires_grad


# ------------------------------------------------------------------ self_forcing_rollout
def _spy_student(student, monkeypatch):
    """Record each denoise_block call (block, exit step, grad, output) and each committed block."""
    denoised, committed = [], []
    denoise, commit = student.denoise_block, student.commit

    def denoise_block(z, cache, exit_step=None, grad=False, times=None):
        assert times is None or times == student.times_for(len(denoised))  # each block's own schedule
        out = denoise(z, cache, exit_step=exit_step, grad=grad, times=times)
        denoised.append((z, exit_step, grad, out, len(cache)))
        return out

    def commit_block(block, cache):
        committed.append(block)
        return commit(block, cache)

    monkeypatch.setattr(student, "denoise_block", denoise_block)
    monkeypatch.setattr(student, "commit", commit_block)
    return denoised, committed


def test_self_forcing_rollout_draws_an_exit_step_a_block_and_streams_on_its_own_outputs(monkeypatch):
    student = StreamingStudent(random_net(), steps=3, sampler="renoise")
    denoised, committed = _spy_student(student, monkeypatch)
    z = torch.randn(2, 8, 1, 8, 8, dtype=torch.float64)
    torch.manual_seed(1)
    exits = torch.randint(0, 3, (4,)).tolist()
    assert len(set(exits)) > 1 and 0 in exits  # the seed gives distinct exits, the first step among them
    torch.manual_seed(1)
    clip = self_forcing_rollout(student, z)
    assert [e for _, e, _, _, _ in denoised] == exits
    assert all(g for _, _, g, _, _ in denoised)  # grad=True by default
    assert [n for *_, n in denoised] == [0, 2, 4, 6]  # the cache grows by the committed blocks
    for j, (zb, _, _, out, _) in enumerate(denoised):
        assert torch.equal(zb, z[:, 2 * j:2 * j + 2])
        assert torch.equal(committed[j], out)  # the cache holds the student's own block
    assert clip.shape == z.shape and torch.equal(clip, torch.cat([d[3] for d in denoised], 1))


def test_self_forcing_rollout_same_exit_uses_one_exit_for_every_block(monkeypatch):
    student = StreamingStudent(random_net(), steps=3, sampler="renoise")
    denoised, _ = _spy_student(student, monkeypatch)
    z = torch.randn(1, 8, 1, 8, 8, dtype=torch.float64)
    for seed in range(4):
        denoised.clear()
        torch.manual_seed(seed)
        first = torch.randint(0, 3, (1,)).tolist()[0]
        torch.manual_seed(seed)
        self_forcing_rollout(student, z, same_exit=True, grad=False)
        assert [e for _, e, _, _, _ in denoised] == [first] * 4
        assert not any(g for _, _, g, _, _ in denoised)


# ------------------------------------------------------------------ recipes.teacher_forced_rollout
def test_teacher_forced_rollout_commits_the_real_frames_and_keeps_the_gradient(monkeypatch):
    """CausVid's generation: each block from its noise given the *real* frames before it."""
    student = StreamingStudent(random_net(), steps=3, sampler="renoise")
    denoised, committed = _spy_student(student, monkeypatch)
    z, real = torch.randn(2, 6, 1, 8, 8, dtype=torch.float64), torch.randn(2, 6, 1, 8, 8, dtype=torch.float64)
    torch.manual_seed(2)
    exits = torch.randint(0, 3, (3,)).tolist()
    assert len(set(exits)) > 1 and 0 in exits
    torch.manual_seed(2)
    with torch.enable_grad():
        clip = video_recipes.teacher_forced_rollout(student, z, real)
    assert clip.requires_grad and all(g for _, _, g, _, _ in denoised)  # grad=True by default
    assert [e for _, e, _, _, _ in denoised] == exits
    for j, (zb, _, _, _, _) in enumerate(denoised):
        assert torch.equal(zb, z[:, 2 * j:2 * j + 2]) and torch.equal(committed[j], real[:, 2 * j:2 * j + 2])
    assert clip.shape == z.shape and torch.equal(clip, torch.cat([d[3] for d in denoised], 1))


# ------------------------------------------------------------------ rollout._euler_window
@pytest.mark.parametrize("n_ctx", [0, 2])
def test_euler_window_holds_its_context_clean_and_integrates_the_rest(n_ctx):
    """Euler with nfe steps at t = k / nfe, the context frames' time fixed at 1 and never moved."""
    seen = []

    def net(x, tf):
        seen.append(tf.clone())
        return -(0.5 + tf)[..., None, None, None] * x + tf[..., None, None, None] ** 2

    z = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64)
    ctx = torch.randn(2, n_ctx, 1, 4, 4, dtype=torch.float64) if n_ctx else None
    out = _euler_window(net, z, ctx, 4)
    x = z.clone()
    for k in range(4):
        t = k / 4
        x = x + (-(0.5 + t) * x + t * t) / 4
        tf = torch.full((2, 3 + n_ctx), t, dtype=torch.float64)
        tf[:, :n_ctx] = 1.0
        assert torch.equal(seen[k], tf)
    assert out.shape == (2, 3 + n_ctx, 1, 4, 4)
    assert torch.allclose(out[:, n_ctx:], x, atol=1e-12, rtol=0)
    if n_ctx:
        assert torch.equal(out[:, :n_ctx], ctx)


# ------------------------------------------------------------------ methods.streaming validation
def test_check_clip_rejects_each_bad_input_alone_and_accepts_one_frame_blocks():
    with pytest.raises(ValueError, match="clip must be frames .* got list"):
        _check_clip([[0.0]], 2)  # not a tensor at all: a ValueError naming its type, not an AttributeError
    with pytest.raises(ValueError, match=r"clip must be frames .* got \(1, 4, 8, 8\)"):
        _check_clip(torch.zeros(1, 4, 8, 8), 2)  # a tensor: the message gives its shape
    with pytest.raises(ValueError, match="not a whole number of blocks of 2"):
        _check_clip(torch.zeros(1, 3, 1, 8, 8), 2)
    with pytest.raises(ValueError, match="blocks of 0"):
        _check_clip(torch.zeros(1, 4, 1, 8, 8), 0)
    assert _check_clip(torch.zeros(1, 3, 1, 8, 8), 1) == 3  # blocks of one frame: frame-wise AR
    assert _check_clip(torch.zeros(1, 6, 1, 8, 8), 2) == 3


def test_block_index_bounds_and_random_draw_cover_every_block():
    assert _block_index(3, 0, None) == 0 and _block_index(3, 2, None) == 2
    for bad in (-1, 3):
        with pytest.raises(ValueError, match="outside the clip's 3 blocks"):
            _block_index(3, bad, None)
    torch.manual_seed(0)
    assert {_block_index(3, None, None) for _ in range(60)} == {0, 1, 2}


def test_ode_regression_names_x1_in_its_errors():
    z = torch.zeros(1, 3, 1, 8, 8)
    with pytest.raises(ValueError, match="x1 has 3 frames"):
        ode_regression_loss(random_net(), z, z, 2, torch.zeros(1))


# ------------------------------------------------------------------ methods.streaming info dicts and draws
def test_streaming_losses_report_their_loss_and_block():
    net = random_net()
    clip, z = torch.randn(2, 4, 1, 8, 8, dtype=torch.float64), torch.randn(2, 4, 1, 8, 8, dtype=torch.float64)
    loss, info = teacher_forcing_loss(net, clip, 2, k=1)
    assert info["loss"] == loss and info["block"] == 1
    loss, info = ode_regression_loss(net, z, clip, 2, torch.full((2,), 0.5, dtype=torch.float64), k=1)
    assert info["loss"] == loss and info["block"] == 1
    loss, info = diffusion_forcing_loss(net, clip, 2)
    assert info["loss"] == loss


def test_diffusion_forcing_draws_an_independent_time_per_frame():
    """With t=None the loss equals the one at t = rand([B, F]) drawn from the same seed."""
    net = random_net()
    clip, noise = torch.randn(3, 4, 1, 8, 8, dtype=torch.float64), torch.randn(3, 4, 1, 8, 8, dtype=torch.float64)
    torch.manual_seed(7)
    t = torch.rand(3, 4, dtype=torch.float64)
    torch.manual_seed(7)
    loss, _ = diffusion_forcing_loss(net, clip, 2, noise=noise)
    assert torch.allclose(loss, diffusion_forcing_loss(net, clip, 2, t=t, noise=noise)[0], atol=1e-12, rtol=0)


# ------------------------------------------------------------------ recipes._adam
def test_adam_takes_the_given_learning_rate_and_betas():
    p = torch.nn.Parameter(torch.zeros(2))
    g = video_recipes._adam([p], 0.123, (0.0, 0.5)).param_groups[0]
    assert g["lr"] == 0.123 and g["betas"] == (0.0, 0.5)


# ------------------------------------------------------------------ recipes._flow_student
@pytest.mark.parametrize("name,loss_name", [("teacher_forcing", "teacher_forcing_loss"),
                                            ("diffusion_forcing", "diffusion_forcing_loss")])
def test_flow_students_train_the_returned_net_on_real_batches(tiny_exp, monkeypatch, name, loss_name):
    calls, data = [], []
    record(monkeypatch, video_recipes, loss_name, calls)
    record(monkeypatch, tiny_exp, "data_batch", data)
    start = tiny_exp.causal_net()
    torch.manual_seed(0)
    student = get_recipe(name, track="video").train(tiny_exp, steps=3, batch=3, sample_steps=3)
    assert len(calls) == 3 and len(data) == 3
    for (args, kwargs, (loss, _)), (dargs, dkw, x) in zip(calls, data):
        assert args[0] is student.net and args[1] is x and args[2] == tiny_exp.block
        assert x.shape[0] == 3  # the batch option reaches the data
    h = student.history
    assert h["steps"] == 3 and h["step"] == [0, 2]
    assert h["loss"] == [float(calls[0][2][0].detach()), float(calls[2][2][0].detach())]
    assert not student.net.training
    assert any(not torch.equal(a, b) for a, b in zip(student.net.parameters(), start.parameters()))  # trained
    assert student.sampler == "euler" and student.times == uniform_times(3)
    assert student.window == tiny_exp.frames - tiny_exp.block and student.options["batch"] == 3
    torch.manual_seed(0)
    default = get_recipe(name, track="video").train(tiny_exp)
    assert default.history["steps"] == tiny_exp.scale.student_steps


# ------------------------------------------------------------------ recipes.ode_init
def test_ode_init_regresses_teacher_clips_of_the_same_noise(tiny_exp, monkeypatch):
    """The teacher's clips are computed in chunks of 64 from the pool's noise: every regression pair
    must be (z, teacher(z)) of the same rows, at the student's own sampling times."""
    chunks, calls = [], []
    monkeypatch.setattr(tiny_exp, "teacher_sample", lambda z: chunks.append(z.shape[0]) or 2 * z + 1)
    record(monkeypatch, video_recipes, "ode_regression_loss", calls)
    student = StreamingStudent(tiny_exp.causal_net(), times=[0.0, 0.5], sampler="renoise")
    torch.manual_seed(0)
    hist = video_recipes.ode_init(tiny_exp, student, 2, 5, 1e-3, 130)
    assert chunks == [64, 64, 2] and hist["steps"] == 2 and len(calls) == 2
    assert hist["loss"] == [float(c[2][0].detach()) for c in calls]
    for args, _, _ in calls:
        net, z, x1, block, t = args
        assert net is student.net and block == tiny_exp.block and z.shape[0] == 5
        assert torch.equal(x1, 2 * z + 1)
        assert set(t.tolist()) <= {0.0, 0.5}


def test_ode_init_draws_every_pool_row_and_every_sampling_time(tiny_exp, monkeypatch):
    calls, noise = [], []
    monkeypatch.setattr(tiny_exp, "teacher_sample", lambda z: 2 * z + 1)
    record(monkeypatch, video_recipes, "ode_regression_loss", calls)
    record(monkeypatch, tiny_exp, "noise_batch", noise)
    student = StreamingStudent(tiny_exp.causal_net(), times=[0.0, 0.5], sampler="renoise")
    torch.manual_seed(0)
    video_recipes.ode_init(tiny_exp, student, 1, 32, 1e-3, 2)
    pool = noise[0][2]
    (_, z, _, _, t), _, _ = calls[0]
    rows = {next(r for r in range(2) if torch.equal(zi, pool[r])) for zi in z}
    assert rows == {0, 1} and set(t.tolist()) == {0.0, 0.5}


# ------------------------------------------------------------------ recipes._distribution_matching
def _instrument_dm(exp, monkeypatch):
    rec = {k: [] for k in ("self_forcing_rollout", "teacher_forced_rollout", "fake_score_loss", "dmd_loss",
                           "ode_init", "noise_batch", "data_batch", "adam")}
    order = []
    for k in ("self_forcing_rollout", "teacher_forced_rollout", "fake_score_loss", "dmd_loss", "ode_init"):
        record(monkeypatch, video_recipes, k, rec[k])
    for k in ("self_forcing_rollout", "teacher_forced_rollout"):
        fn = getattr(video_recipes, k)

        def ordered(*a, _fn=fn, _k=k, **kw):
            order.append(_k)
            return _fn(*a, **kw)

        monkeypatch.setattr(video_recipes, k, ordered)
    record(monkeypatch, exp, "noise_batch", rec["noise_batch"])
    record(monkeypatch, exp, "data_batch", rec["data_batch"])
    adam = video_recipes._adam

    def recorded_adam(params, lr, *betas):
        params = list(params)
        rec["adam"].append((params, lr, betas))
        return adam(params, lr, *betas)

    monkeypatch.setattr(video_recipes, "_adam", recorded_adam)
    return rec, order


def test_self_forcing_trains_on_its_own_rollouts_with_a_gradient_only_for_the_generator(tiny_exp, monkeypatch):
    rec, order = _instrument_dm(tiny_exp, monkeypatch)
    torch.manual_seed(0)
    student = get_recipe("self_forcing", track="video").train(
        tiny_exp, steps=2, batch=3, critic_updates=2, init_steps=1, pool=4, sample_steps=3, gen_lr=1e-4,
        fake_lr=3e-4)
    o = student.options
    # the student: renoise sampler on sample_steps uniform times, cache window one horizon minus a block
    assert student.sampler == "renoise" and student.times == uniform_times(3)
    assert student.window == tiny_exp.frames - tiny_exp.block and student.sink == 0
    assert not student.net.training
    # the ODE initialisation ran on this student with the options
    (args, _, init_hist), = rec["ode_init"]
    assert args == (tiny_exp, student, 1, 3, o["init_lr"], 4) and student.init_history is init_hist
    # the optimisers: generator on the student's parameters, critic on the fake score's
    g, f = [a for a in rec["adam"] if a[2] == (video_recipes.DMD_BETAS,)]
    assert [p is q for p, q in zip(g[0], student.net.parameters())] == [True] * len(g[0]) and g[1] == 1e-4
    assert [p is q for p, q in zip(f[0], student.fake.parameters())] == [True] * len(f[0]) and f[1] == 3e-4
    # each step: two critic rollouts without gradient, then one generator rollout with it
    assert order == ["self_forcing_rollout"] * 6 and not rec["teacher_forced_rollout"]
    assert [kw["grad"] for _, kw, _ in rec["self_forcing_rollout"]] == [False, False, True] * 2
    assert [a for a, _, _ in rec["noise_batch"] if a != (4,)] == [(3, tiny_exp.frames)] * 6
    noises = [out for a, _, out in rec["noise_batch"] if a != (4,)]
    for (a, _, clip), zn in zip(rec["self_forcing_rollout"], noises):
        assert a[0] is student and a[1] is zn
    outs = [out for _, _, out in rec["self_forcing_rollout"]]
    critic_clips = [outs[0], outs[1], outs[3], outs[4]]
    for (a, _, _), clip in zip(rec["fake_score_loss"], critic_clips):
        assert a[0] is student.fake and torch.equal(a[1], clip)
    assert len(rec["dmd_loss"]) == 2
    for (a, _, (loss, info)), clip in zip(rec["dmd_loss"], (outs[2], outs[5])):
        assert torch.equal(a[0], clip) and a[0].requires_grad
        assert a[1] == tiny_exp.velocity and a[2] is student.fake
    h = student.history
    assert h["steps"] == 2 and h["own_context"] == [1.0, 1.0]
    assert h["grad_norm"] == [float(rec["dmd_loss"][i][2][1]["grad_norm"]) for i in (0, 1)]
    assert h["loss"] == [float(rec["dmd_loss"][i][2][0].detach()) for i in (0, 1)]


def test_causvid_generates_each_block_from_the_real_frames_before_it(tiny_exp, monkeypatch):
    rec, order = _instrument_dm(tiny_exp, monkeypatch)
    torch.manual_seed(0)
    student = get_recipe("causvid", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1,
                                                           init_steps=0, window=1, sink=2)
    assert order == ["teacher_forced_rollout"] * 2 and not rec["ode_init"] and student.init_history is None
    assert student.window == 1 and student.sink == 2
    assert [kw["grad"] for _, kw, _ in rec["teacher_forced_rollout"]] == [False, True]
    assert [a for a, _, _ in rec["data_batch"]] == [(2, tiny_exp.frames)] * 2
    for (a, _, _), (_, _, real) in zip(rec["teacher_forced_rollout"], rec["data_batch"]):
        assert a[0] is student and a[2] is real
    assert student.history["own_context"] == [0.0]
    assert torch.equal(rec["dmd_loss"][0][0][0], rec["teacher_forced_rollout"][1][2])


def test_self_forcing_sink_rolls_out_twice_the_horizon_and_scores_the_last_one(tiny_exp, monkeypatch):
    rec, _ = _instrument_dm(tiny_exp, monkeypatch)
    torch.manual_seed(0)
    student = get_recipe("self_forcing_sink", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1)
    F = tiny_exp.frames
    assert student.sink == tiny_exp.block and student.window == F - tiny_exp.block
    assert [a for a, _, _ in rec["noise_batch"] if len(a) == 2] == [(2, 2 * F)] * 2
    outs = [out for _, _, out in rec["self_forcing_rollout"]]
    assert all(o.shape[1] == 2 * F for o in outs)
    assert torch.equal(rec["fake_score_loss"][0][0][1], outs[0][:, -F:])
    assert torch.equal(rec["dmd_loss"][0][0][0], outs[1][:, -F:])


def test_self_forcing_no_init_skips_the_ode_initialisation(tiny_exp, monkeypatch):
    rec, order = _instrument_dm(tiny_exp, monkeypatch)
    torch.manual_seed(0)
    student = get_recipe("self_forcing_no_init", track="video").train(tiny_exp, steps=1, batch=2, critic_updates=1)
    assert not rec["ode_init"] and student.init_history is None and order == ["self_forcing_rollout"] * 2


def test_self_forcing_ramp_moves_from_real_to_own_context(tiny_exp, monkeypatch):
    """ramp = 0.5 of 4 steps: step 0 always on real frames, steps 2 and 3 always on own rollouts."""
    _, order = _instrument_dm(tiny_exp, monkeypatch)
    torch.manual_seed(0)
    student = get_recipe("self_forcing_ramp", track="video").train(tiny_exp, steps=4, batch=2, critic_updates=1,
                                                                     init_steps=0)
    assert student.options["ramp"] == 0.5
    assert order[:2] == ["teacher_forced_rollout"] * 2 and order[4:] == ["self_forcing_rollout"] * 4
    assert student.history["own_context"] == [0.0, 1.0]


def test_self_forcing_ramp_probability_is_step_over_ramp_steps(tiny_exp, monkeypatch):
    """ramp = 2 over 3 steps: own context with probability i / 6 (never 1 before the ramp ends)."""
    _, order = _instrument_dm(tiny_exp, monkeypatch)
    torch.manual_seed(0)
    get_recipe("self_forcing", track="video").train(tiny_exp, steps=3, batch=1, critic_updates=3, init_steps=0,
                                                      ramp=2.0)
    assert order[:4] == ["teacher_forced_rollout"] * 4
    assert order[4:].count("self_forcing_rollout") < 8
