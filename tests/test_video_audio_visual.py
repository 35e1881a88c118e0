"""The audio-visual pair (distill_lab.video.audio_visual): cases with known answers.

A tone's pitch reads back its height; a clip and its own sound are in sync; streaming block by block is the
one-pass block-causal forward; no token of the student sees a later block of either stream; the prefix and the
sink carry no position; the rolling cache keeps each stream's own window; joint DMD moves each stream along its own
normalised direction with the teacher and the fake score under stop-gradient.
"""

import pytest
import torch

from distill_lab.video.audio_visual import (AVCache, AVLayout, AVStudent, DualStreamNet, av_clips, block_heights,
                                            joint_dmd_loss, joint_flow_matching_loss, pitch, shuffled_sync,
                                            sync_error, tone, with_layout)
from distill_lab.video.dual_stream import AUDIO, PREFIX, SINK, VIDEO
from distill_lab.video.nets import VideoNetConfig, VideoTransformer
from distill_lab.video.world import World

WORLD = World(n_sprites=1)


def small_net(layout=AVLayout(), causal=False, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    video = VideoTransformer(VideoNetConfig(resolution=16, patch=8, dim=32, depth=2, heads=2))
    net = DualStreamNet(video, layout, causal).to(dtype)
    with torch.no_grad():  # the heads start at zero: give every weight a value so outputs depend on inputs
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def test_pitch_reads_back_the_height_of_a_tone_at_every_height_between_the_walls():
    h = torch.linspace(WORLD.margin, 1 - WORLD.margin, 301, dtype=torch.float64)
    for bins in (4, 8, 13):
        assert (pitch(tone(h, WORLD, bins), WORLD) - h).abs().max() < 1e-5
    # a tone is in [-1, 1], loudest at the bin nearest its pitch
    a = tone(torch.tensor([0.5]), WORLD, 9)
    assert a.max() <= 1 and a.min() >= -1 and int(a.argmax()) == 4


def test_a_clip_and_its_own_sound_are_in_sync_and_a_shuffled_pairing_is_not():
    xv, xa = av_clips(WORLD, 32, 8, 16, 2, generator=torch.Generator().manual_seed(0))
    assert xv.shape == (32, 8, 1, 16, 16) and xa.shape == (32, 4, 8)
    assert sync_error(xv, xa, WORLD, 2).max() < 1e-5
    assert shuffled_sync(xv, xa, WORLD, 2) > 0.1
    # the audio is the tone of each block's mean height, not of its first frame
    states = WORLD.simulate(4, 8, seed=3)
    assert torch.allclose(block_heights(states, 2), states[:, :, 0, 1].reshape(4, 4, 2).mean(-1))
    with pytest.raises(ValueError, match="one token a block"):
        sync_error(xv[:, :6], xa, WORLD, 2)


@pytest.mark.parametrize("layout", [AVLayout(), AVLayout(prefix=0, sink=True), AVLayout(prefix=3, sink=False),
                                    AVLayout(prefix=0, sink=False)])
def test_streaming_block_by_block_is_the_one_pass_block_causal_forward(layout):
    net = small_net(layout, causal=True)
    xv, xa = av_clips(WORLD, 2, 8, 16, 2, generator=torch.Generator().manual_seed(1))
    xv, xa = xv.double(), xa.double()
    with torch.no_grad():
        ov, oa = net(xv, xa, torch.ones(2, dtype=torch.float64))
        cache = net.new_cache(2, dtype=torch.float64)
        for n in range(4):
            (bv, ba), (kv, s, b, pos) = net.forward_block(xv[:, 2 * n:2 * n + 2], xa[:, n:n + 1], 1.0, cache,
                                                          return_kv=True)
            cache.append(kv, s, b, pos)
            assert torch.allclose(bv, ov[:, 2 * n:2 * n + 2], atol=1e-10)
            assert torch.allclose(ba, oa[:, n:n + 1], atol=1e-10)
    assert cache.count(VIDEO) == 4 * 8 and cache.count(AUDIO) == 4
    assert cache.count(PREFIX) == layout.prefix and cache.count(SINK) == int(layout.sink)


def test_no_token_of_the_student_sees_a_later_block_of_either_stream_and_the_teacher_sees_all():
    student, teacher = small_net(causal=True), small_net(causal=False)
    xv, xa = av_clips(WORLD, 2, 8, 16, 2, generator=torch.Generator().manual_seed(2))
    xv, xa = xv.double(), xa.double()
    t = torch.full((2,), 0.4, dtype=torch.float64)
    for later in ("video", "audio"):
        xv2, xa2 = xv.clone(), xa.clone()
        if later == "video":
            xv2[:, 4:] = torch.randn_like(xv2[:, 4:])   # blocks 2 and 3 of the video
        else:
            xa2[:, 2:] = torch.randn_like(xa2[:, 2:])   # blocks 2 and 3 of the audio
        with torch.no_grad():
            (v1, a1), (v2, a2) = student(xv, xa, t), student(xv2, xa2, t)
            (tv1, ta1), (tv2, ta2) = teacher(xv, xa, t), teacher(xv2, xa2, t)
        assert torch.allclose(v1[:, :4], v2[:, :4], atol=1e-12) and torch.allclose(a1[:, :2], a2[:, :2], atol=1e-12)
        # ... while the same block of the other stream does read it, and the teacher's early blocks do
        assert not torch.allclose(tv1[:, :4], tv2[:, :4], atol=1e-6) and not torch.allclose(ta1[:, :2], ta2[:, :2],
                                                                                            atol=1e-6)
    xv3 = xv.clone()
    xv3[:, 2:4] = torch.randn_like(xv3[:, 2:4])        # video of block 1: block 1's audio must read it
    with torch.no_grad():
        _, a3 = student(xv3, xa, t)
        _, a1 = student(xv, xa, t)
    assert torch.allclose(a1[:, 0], a3[:, 0], atol=1e-12) and not torch.allclose(a1[:, 1], a3[:, 1], atol=1e-6)


def test_the_prefix_and_the_sink_carry_no_position_while_timed_keys_do():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 2, 8, dtype=torch.float64) for _ in range(3))
    glob_q = torch.tensor([False, False])
    glob_k = torch.tensor([True, False])  # key 0: the sink; key 1 a timed key
    allowed = torch.tensor([[True, False], [True, True]])  # query 0 reads only the sink
    out = [DualStreamNet._attend(q, k, v, torch.tensor([p, p + 1.0], dtype=torch.float64),
                                 torch.tensor([0.0, p + 1.0], dtype=torch.float64), glob_q, glob_k, allowed)
           for p in (3.0, 10.0)]
    # query 1 reads the sink and a key at its own position: a shift of both leaves it unchanged; query 0 reads only
    # the sink: the same whatever its position
    assert torch.allclose(out[0], out[1], atol=1e-12)
    # the sink's score is the unrotated q . k: its weight among query 1's two keys is exactly that softmax
    s_glob = (q[0, 0, 1] @ k[0, 0, 0]) / 8 ** 0.5
    s_pos = (q[0, 0, 1] @ k[0, 0, 1]) / 8 ** 0.5  # same position: the rotation cancels
    w = torch.softmax(torch.stack([s_glob, s_pos]), 0)
    assert torch.allclose(out[0][0, 0, 1], w[0] * v[0, 0, 0] + w[1] * v[0, 0, 1], atol=1e-12)


def test_the_rolling_cache_keeps_each_streams_own_window_and_the_global_tokens_for_ever():
    net = small_net(causal=True)
    s = AVStudent(net, [0.0, 0.5], video_window=1, audio_window=3)
    seen = []
    with torch.no_grad():
        s.video_window, s.audio_window = 1, 3
        xv, xa = s.stream(torch.randn(2, 12, 1, 16, 16, dtype=torch.float64), torch.randn(2, 6, 8, dtype=torch.float64),
                          on_block=lambda n, c: seen.append((c.count(VIDEO), c.count(AUDIO), c.count(PREFIX),
                                                             c.count(SINK), sorted(set(c.block.tolist())))))
    assert xv.shape == (2, 12, 1, 16, 16) and xa.shape == (2, 6, 8)
    assert [x[:4] for x in seen] == [(8, 1, 2, 1), (8, 2, 2, 1), (8, 3, 2, 1), (8, 3, 2, 1), (8, 3, 2, 1), (8, 3, 2, 1)]
    assert seen[-1][4] == [-1, 3, 4, 5]
    with pytest.raises(ValueError, match="audio_window"):
        AVCache(2, 1, -1)


def stub(vv, va, calls=None):
    """A 'network' whose velocities are the given constants (a parameter so stop-gradient can be checked)."""
    w = torch.nn.Parameter(torch.ones(()))

    def f(xv, xa, tv, ta=None):
        if calls is not None:
            calls.append((xv.clone(), xa.clone()))
        return w * vv.expand_as(xv), w * va.expand_as(xa)
    f.w = w
    return f


def test_joint_dmd_moves_each_stream_along_its_own_normalised_direction_under_stop_gradient():
    torch.manual_seed(0)
    B = 3
    xv = torch.randn(B, 4, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    xa = torch.randn(B, 2, 8, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    calls = []
    real = stub(torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64), calls)
    fake = stub(torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.7, dtype=torch.float64))
    loss, info = joint_dmd_loss(xv, xa, real, fake, t)
    loss.backward()
    (xvt, xat), = calls
    tv, ta = t.reshape(B, 1, 1, 1, 1), t.reshape(B, 1, 1)
    # x_real = x_t (zero velocity), x_fake = x_t + (1 - t) c; the direction is (x_fake - x_real) / mean|x - x_real|
    wv = (xv.detach() - xvt).abs().flatten(1).mean(1).reshape(B, 1, 1, 1, 1)
    wa = (xa.detach() - xat).abs().flatten(1).mean(1).reshape(B, 1, 1)
    gv, ga = (1 - tv) * 0.3 / wv, (1 - ta) * -0.7 / wa
    assert torch.allclose(xv.grad, gv.expand_as(xv) / xv.numel(), atol=1e-12)  # each stream's own mean
    assert torch.allclose(xa.grad, ga.expand_as(xa) / xa.numel(), atol=1e-12)
    assert real.w.grad is None and fake.w.grad is None
    # x_t is each stream's own interpolant at the clip's one time
    assert ((xvt - tv * xv.detach()) / (1 - tv)).std() > 0.5 and ((xat - ta * xa.detach()) / (1 - ta)).std() > 0.5
    assert info["grad_audio"] > 0 and info["grad_video"] > 0
    with pytest.raises(ValueError, match="same clips"):
        joint_dmd_loss(xv, xa[:2], real, fake)


def test_joint_flow_matching_averages_each_stream_over_its_own_elements():
    torch.manual_seed(1)
    xv, xa = torch.randn(4, 2, 1, 16, 16), torch.randn(4, 1, 8)
    zero = stub(torch.zeros(()), torch.zeros(()))
    t = torch.rand(4)
    g = torch.get_rng_state()
    loss, info = joint_flow_matching_loss(zero, xv, xa, t, audio_weight=2.0)
    torch.set_rng_state(g)
    nv, na = torch.randn_like(xv), torch.randn_like(xa)
    assert info["video"] == pytest.approx(float((xv - nv).pow(2).mean()), rel=1e-5)
    assert info["audio"] == pytest.approx(float((xa - na).pow(2).mean()), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(info["video"] + 2.0 * info["audio"], rel=1e-5)


def test_only_the_exit_step_of_a_block_carries_a_gradient():
    net = small_net(causal=True, dtype=torch.float32)
    for p in net.parameters():
        p.requires_grad_(True)
    s = AVStudent(net, [0.0, 0.3, 0.6])
    modes = []
    orig = net.forward_block

    def spy(*a, **k):
        modes.append((torch.is_grad_enabled(), k.get("return_kv", False)))
        return orig(*a, **k)
    net.forward_block = spy
    xv, xa = s.stream(torch.randn(2, 4, 1, 16, 16), torch.randn(2, 2, 8), grad=True, exits=[1, 2])
    # block 0: steps 0, 1 (exit), commit; block 1: steps 0, 1, 2 (exit), commit
    assert modes == [(False, False), (True, False), (False, True), (False, False), (False, False), (True, False),
                     (False, True)]
    assert xv.requires_grad and xa.requires_grad
    (xv.sum() + xa.sum()).backward()
    assert net.audio_out.weight.grad is not None and net.audio_out.weight.grad.abs().sum() > 0


def test_with_layout_keeps_the_shared_weights_and_drops_or_adds_the_global_tokens():
    net = small_net(AVLayout(prefix=2, sink=True))
    no_sink = with_layout(net, AVLayout(prefix=2, sink=False))
    assert no_sink.sink is None and torch.equal(no_sink.prefix, net.prefix)
    longer = with_layout(net, AVLayout(prefix=4, sink=True))
    assert torch.equal(longer.prefix[:2], net.prefix) and torch.equal(longer.sink, net.sink)
    for k, v in no_sink.state_dict().items():
        assert torch.equal(v, net.state_dict()[k])


def test_bad_inputs_say_what_is_wrong():
    net = small_net()
    xv, xa = torch.randn(2, 8, 1, 16, 16, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="same blocks"):
        net(xv, xa, torch.rand(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="times must be"):
        net(xv, torch.randn(2, 4, 8, dtype=torch.float64), torch.rand(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="as_causal"):
        net.new_cache(2)
    with pytest.raises(ValueError, match="block-causal"):
        AVStudent(net, [0.0])
    with pytest.raises(ValueError, match="times must start at 0"):
        AVStudent(net.as_causal(), [0.5])


def test_the_av_bench_rows_stand_beside_the_student_without_the_sink(tmp_path, monkeypatch):
    from dataclasses import replace

    from distill_lab.core import registry
    from distill_lab.video import audio_visual as av
    from distill_lab.video import av_bench

    assert [r.name for r in registry.recipes("video_av")] == list(av_bench.AV_RECIPES)
    assert {r.name for r in registry.recipes("video_av") if r.baseline} == {"no_sink"}
    assert set(av_bench.AV_RECIPES.values()) == set(av.AV_VARIANTS)
    monkeypatch.setattr(av, "av_dir", lambda scale="ci": tmp_path)  # no committed students: each seed is trained
    exp = object.__new__(av_bench.AVBench)
    exp.teacher, exp.manifest = small_net(dtype=torch.float32), {"files": {"teacher.pt": {"sha256": "none"}}}
    exp.asc = replace(av.AV_SCALES["ci"], student_steps=2, batch=2, eval_n=4, teacher_nfe=2)
    exp.world, exp.students_scale, exp.progress = WORLD, "ci", False
    rows = av_bench.run_av(exp, ["omniforcing"], seeds=(0, 1))
    by = {r["method"]: r for r in rows}
    assert list(by) == ["no_sink", "omniforcing"]
    assert by["no_sink"]["paired"] == (0.0, 0.0) and by["omniforcing"]["baseline"] == by["no_sink"]["value"]
    assert by["omniforcing"]["floor"] < 1e-4 and 0 < by["omniforcing"]["value"] < 1
    assert by["omniforcing"]["extra"]["grad_audio_max"] > 0
    # the recipe trains what the row measures: a student with the sink, one without
    s = registry.get_recipe("omniforcing").train(exp, seed=0, steps=1)
    assert isinstance(s, av.AVStudent) and s.net.sink is not None and s.net.causal
    assert registry.get_recipe("no_sink").train(exp, seed=0, steps=1).net.sink is None


def test_the_committed_joint_teacher_reproduces_its_manifests_sync_error():
    from distill_lab.video import audio_visual as av

    loaded = av.load_av_teacher(av.av_dir("ci"))
    q = loaded["manifest"]["quality"]
    asc = av.AV_SCALES["ci"]
    got = av.teacher_measures(loaded["model"], asc, WORLD)
    assert got["sync"] == pytest.approx(q["sync"], rel=1e-3, abs=1e-5)
    assert got["shuffled"] == pytest.approx(q["shuffled"], rel=1e-3)
    assert got["sync"] < got["shuffled"] / 4


def test_a_committed_student_is_refused_with_the_reason_when_its_record_or_file_does_not_match(tmp_path):
    from distill_lab.core.checkpoints import sha256, stored_student_problem

    (tmp_path / "a.pt").write_bytes(b"weights")
    index = {"teacher_sha256": "T", "students": {"a.pt": {"sha256": sha256(tmp_path / "a.pt")}, "b.pt": {"sha256": "x"}}}
    assert stored_student_problem(tmp_path, index, "a.pt", "T") is None
    assert stored_student_problem(tmp_path, None, "a.pt", "T", "students.json") == "no students.json"
    assert stored_student_problem(tmp_path, index, "c.pt", "T") == "not listed in the manifest"
    assert stored_student_problem(tmp_path, index, "a.pt", "U") == "distilled from another teacher"
    assert stored_student_problem(tmp_path, index, "b.pt", "T") == "missing"
    (tmp_path / "a.pt").write_bytes(b"altered")
    assert "sha256 differs" in stored_student_problem(tmp_path, index, "a.pt", "T")
