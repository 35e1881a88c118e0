"""Few-step world students (issue 14, item 2): the window they stream in, the exit step that carries the
gradient, the memory each policy recalls, and Self Forcing's multi-segment DMD."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distill_lab.video.interactive import InteractiveWorld
from distill_lab.video.nets import VideoNetConfig, VideoTransformer
from distill_lab.video.world_model import WORLD_MODEL_SCALES, eval_trajectories
from distill_lab.video.world_students import (WorldStudent, evaluate_world_student, segment_windows,
                                              train_world_student, window_velocity)

W = InteractiveWorld()
SMALL = VideoNetConfig(resolution=16, patch=8, dim=16, depth=1, heads=2, cond_dim=W.COND_DIM)
WSC = dataclasses.replace(WORLD_MODEL_SCALES["ci"], net=SMALL, eval_frames=16, batch=2, memory=2, frames=4, block=2,
                          history=4)


def base(seed=0):
    torch.manual_seed(seed)
    net = VideoTransformer(SMALL, "full")
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return net.eval()


def test_a_stream_keeps_its_given_frames_and_makes_the_rest_block_by_block():
    s = WorldStudent(base().as_causal(2), WSC, policy="retrieval")
    data = eval_trajectories(WSC, 3)
    assert s.given == 2 + 4 - 2
    out, blocks = s.stream(data)
    assert torch.equal(out[:, :s.given], data["frames"][:, :s.given])
    assert [b[0] for b in blocks] == list(range(s.given, 16, 2))
    assert not torch.equal(out[:, s.given:], data["frames"][:, s.given:])
    with pytest.raises(ValueError, match="one exit step a block"):
        s.stream(data, exit_steps=[0])
    with pytest.raises(ValueError, match="block-causal"):
        WorldStudent(base(), WSC)


def test_only_the_exit_step_carries_the_gradient():
    s = WorldStudent(base().as_causal(2), WSC, times=[0.0, 0.5])
    calls = []
    net_forward = s.net.forward

    def spy(x, t, frame_offset=0):
        out = net_forward(x, t, frame_offset)
        calls.append(out.requires_grad)
        return out

    s.net.forward = spy
    window, cond = torch.randn(2, 4, 1, 16, 16), torch.zeros(2, 6, W.COND_DIM)
    z = torch.randn(2, 2, 1, 16, 16)
    x = s.make_block(window, cond, z, exit_step=1)
    assert calls == [False, True] and x.requires_grad
    calls.clear()
    x0 = s.make_block(window, cond, z, exit_step=0)
    assert calls == [True] and x0.requires_grad
    calls.clear()
    with torch.no_grad():
        s.make_block(window, cond, z)
    assert calls == [False, False]


def test_the_window_velocity_reads_the_block_after_clean_frames():
    seen = {}

    class Net(torch.nn.Module):
        def conditioned(self, cond):
            import contextlib
            seen["cond"] = cond
            return contextlib.nullcontext(self)

        def forward(self, x, t):
            seen["x"], seen["t"] = x, t
            return x * 2

    window, cond = torch.randn(2, 3, 1, 4, 4), torch.zeros(2, 5, 7)
    xt, t = torch.randn(2, 2, 1, 4, 4), torch.tensor([0.2, 0.7])
    v = window_velocity(Net(), window, cond)(xt, t)
    assert torch.equal(v, 2 * xt) and torch.equal(seen["x"][:, :3], window)
    assert seen["t"][:, :3].eq(1).all() and torch.allclose(seen["t"][:, 3:], t[:, None].expand(2, 2))


def test_the_scores_see_the_teachers_memory_not_the_students():
    s = WorldStudent(base().as_causal(2), WSC, policy="recent")
    data = eval_trajectories(WSC, 2)
    out, blocks = s.stream(data)
    win = segment_windows(WSC, data, out, blocks, "retrieval", 2)
    last_start = blocks[-1][0]  # the last block revisits the first frames: retrieval recalls given frames
    from distill_lab.video.world_model import choose_memory
    idx = choose_memory(data, last_start - 2, data["camera"][:, last_start:last_start + 2], 2, "retrieval")
    assert torch.equal(win[-1][0][:, :2], torch.stack([out[b, idx[b]] for b in range(2)]))
    assert not torch.equal(idx, blocks[-1][2])  # the student itself recalled the recent frames
    assert torch.equal(win[-1][1][:, :2, 6], torch.ones(2, 2))


@pytest.mark.parametrize("segments,n_dmd", [("all", 5), ("last", 1)])
def test_multi_segment_dmd_scores_every_block_and_the_single_segment_only_the_last(monkeypatch, segments, n_dmd):
    import distill_lab.video.world_students as ws

    calls = []
    real = ws.dmd_loss

    def spy(x, real_v, fake_v, *a, **k):
        calls.append(x.shape)
        return real(x, real_v, fake_v, *a, **k)

    monkeypatch.setattr(ws, "dmd_loss", spy)
    teacher = base()
    before = [p.clone() for p in teacher.parameters()]
    st = train_world_student(teacher, WSC, steps=1, progress=False, segments=segments, blocks=5)
    assert len(calls) == n_dmd and all(c == (2, 2, 1, 16, 16) for c in calls)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # the base model is frozen
    assert not all(torch.equal(a, b) for a, b in zip(before, st.net.parameters()))
    with pytest.raises(ValueError, match="segments"):
        train_world_student(teacher, WSC, steps=1, progress=False, segments="every")


def test_evaluation_measures_a_stream_and_its_memory():
    s = WorldStudent(base().as_causal(2), WSC, policy="retrieval")
    r = evaluate_world_student(s, n=2)
    assert r["memory_bytes"] == (2 + 2) * 16 * 16 * 4 and r["stream"].shape == (2, 16, 1, 16, 16)
    assert r["revisit_data"] < 1e-3 and r["revisit"] > r["revisit_data"]


def test_a_compressed_memory_spreads_over_the_history_at_the_same_number_of_tokens():
    s = WorldStudent(base().as_causal(2), WSC, policy="compressed")
    data = eval_trajectories(WSC, 2)
    N = SMALL.tokens_per_frame
    idx, P = s.recall(data, 10, 12)
    assert P == 2 * N and idx.shape == (2, P) and idx[0, 0] == 0 and idx[0, -1] == 9
    assert torch.equal(idx[0], idx[0].sort().values)
    idx, P = s.recall(data, 2, 4)  # fewer earlier frames than tokens: each kept once
    assert P == 2 and idx[0].tolist() == [0, 1]
    seen = []
    real = s.net.compressed

    def spy(n):
        seen.append(n)
        return real(n)

    s.net.compressed = spy
    s.sample(data)
    assert seen[0] == 2 and max(seen) == 2 * N


def test_a_stored_student_is_its_base_plus_int8_deltas(tmp_path):
    from distill_lab.video.world_students import apply_delta, delta_state, load_world_student

    teacher = base()
    causal = teacher.as_causal(2)
    student = teacher.as_causal(2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=g))
    d = delta_state(student, causal)
    assert all(v["q"].dtype == torch.int8 for v in d.values())
    back = apply_delta(causal, d)
    for k, v in student.state_dict().items():
        step = float(d[k]["scale"])
        assert (back[k] - v).abs().max() <= step / 2 + 1e-7  # rounding to the nearest level, no more
    torch.save({"record": {"times": [0.0, 0.5], "policy": "retrieval", "memory": 2}, "delta": d}, tmp_path / "s.pt")
    loaded = load_world_student(tmp_path / "s.pt", teacher, WSC)
    assert loaded.policy == "retrieval" and torch.allclose(loaded.net.embed.weight, back["embed.weight"])
    other = VideoTransformer(dataclasses.replace(SMALL, depth=2), "full").as_causal(2)
    with pytest.raises(ValueError, match="another one"):
        apply_delta(other, d)


def test_committed_students_load_when_their_hashes_match_and_are_trained_when_not(tmp_path, monkeypatch, capsys):
    import json

    import distill_lab.video.world_students as ws
    from distill_lab.core.checkpoints import file_records

    wsc = dataclasses.replace(WSC, student_steps=1)
    teacher = base()
    monkeypatch.setattr(ws, "students_dir", lambda scale: tmp_path)
    manifest = {"teacher_sha256": "abc"}
    got = ws.committed_world_students(teacher, {"files": {"teacher.pt": {"sha256": "abc"}}}, wsc, "retrieval", seeds=(0,))
    assert "no manifest" in capsys.readouterr().out and got[0].policy == "retrieval"
    student = got[0]
    torch.save({"record": {"times": student.times, "policy": "retrieval", "memory": 2},
                "delta": ws.delta_state(student.net, teacher.as_causal(2))}, tmp_path / "retrieval_seed0.pt")
    manifest["students"] = {"retrieval_seed0.pt": file_records(tmp_path, ["retrieval_seed0.pt"])["retrieval_seed0.pt"]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    loaded = ws.committed_world_students(teacher, {"files": {"teacher.pt": {"sha256": "abc"}}}, wsc, "retrieval", seeds=(0,))
    assert capsys.readouterr().out == "" and torch.allclose(loaded[0].net.embed.weight, student.net.embed.weight, atol=1e-3)
    ws.committed_world_students(teacher, {"files": {"teacher.pt": {"sha256": "other"}}}, wsc, "retrieval", seeds=(0,))
    assert "distilled from another teacher" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown committed"):
        ws.committed_world_students(teacher, {}, wsc, "everything")


def test_training_rollouts_draw_fresh_noise_and_sampling_is_fixed():
    s = WorldStudent(base().as_causal(2), WSC, policy="recent")
    data = eval_trajectories(WSC, 2)
    torch.manual_seed(0)
    a, _ = s.stream(data)
    b, _ = s.stream(data)
    assert not torch.equal(a, b)  # the global generator moves on: each training step its own noise
    assert torch.equal(s.sample(data), s.sample(data))  # an evaluation streams from the same noise


def test_the_video_world_bench_track_has_a_recipe_a_variant_and_recent_as_its_baseline():
    from distill_lab.core import registry
    from distill_lab.core.bench import get_track
    from distill_lab.video import world_bench
    from distill_lab.video.world_students import MATRIX_GAME, REALCAM, RELIC, VARIANTS

    names = [r.name for r in registry.recipes("video_world")]
    assert names == list(world_bench.WORLD_RECIPES) and set(names) == set(VARIANTS)
    assert {r.name for r in registry.recipes("video_world") if r.baseline} == {"recent"}
    papers = {r.name: r.paper for r in registry.recipes("video_world")}
    assert papers["retrieval"] == MATRIX_GAME and papers["compressed"] == RELIC and papers["retrieval_loop"] == REALCAM
    assert get_track("video_world").row_keys[:3] == ("method", "metric", "value")


def test_seed_rows_average_each_method_over_its_seeds_and_pair_it_with_the_baseline():
    from distill_lab.video.ssl_bench import seed_rows

    res = {"base": [{"m": 1.0, "x": 0.0, "seconds": 2.0}, {"m": 3.0, "x": 2.0, "seconds": 4.0}],
           "new": [{"m": 0.5, "x": 1.0, "seconds": 1.0}, {"m": 2.0, "x": 3.0, "seconds": 3.0}]}
    rows = seed_rows(res, "base", "m", 0.1, (0, 1), fixed={"teacher": 7.0}, extra_keys=("x",))
    assert [r["method"] for r in rows] == ["base", "new"]
    base, new = rows
    assert base["value"] == 2.0 and new["value"] == 1.25 and new["baseline"] == base["baseline"] == 2.0
    assert new["paired"][0] == -0.75 and base["paired"] == (0.0, 0.0)  # seed by seed: (0.5 - 1, 2 - 3) / 2, row minus baseline
    assert new["floor"] == 0.1 and new["seeds"] == [0, 1] and new["train_seconds"] == 2.0
    assert new["extra"] == {"teacher": 7.0, "x": 2.0} and base["extra"]["x"] == 1.0
