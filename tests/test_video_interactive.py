"""The interactive toy world (issue 14, item 1): the camera, the push, the sparse second stream and the
scene seen through the window, each against its closed form."""

from __future__ import annotations

import math

import pytest
import torch

from distill_lab.video.interactive import (CameraMemory, InteractiveWorld, action_following_error, first_visits, loop_closure_error,
                                          revisit_error, sprite_positions, sync_error)
from distill_lab.video.world import World

W = InteractiveWorld()


def test_a_zero_action_leaves_the_camera_still_and_a_pan_moves_it_by_the_clipped_action():
    start = torch.tensor([[0.3, 0.7], [0.0, 1.0]], dtype=torch.float64)
    still = W.camera_path(start, torch.zeros(2, 6, 4))
    assert torch.equal(still, start[:, None].expand(2, 6, 2))
    a = torch.zeros(2, 4, 4, dtype=torch.float64)
    a[:, :, 0] = torch.tensor([0.05, 0.3, -0.02, 0.0])  # the second pan is clipped to max_pan
    cam = W.camera_path(start, a)
    assert torch.allclose(cam[0, :, 0], torch.tensor([0.3, 0.35, 0.45, 0.43], dtype=torch.float64))
    assert torch.equal(cam[:, :, 1], start[:, None, 1].expand(2, 4))  # no vertical pan: y stays


def test_the_window_never_leaves_the_scene():
    start = torch.tensor([[0.95, 0.02]], dtype=torch.float64)
    a = torch.zeros(1, 30, 4, dtype=torch.float64)
    a[..., 0], a[..., 1] = 0.1, -0.1
    cam = W.camera_path(start, a)
    assert cam.min() >= 0 and cam.max() <= W.scene_size - 1
    assert cam[0, -1].tolist() == [W.scene_size - 1, 0.0]


def test_the_push_changes_sprite_zeros_velocity_by_the_clipped_action_before_it_moves():
    state = World(kick_prob=0.0).initial(3, torch.Generator().manual_seed(0))
    state[:, 0, :2] = 0.5  # away from the walls
    state[:, 0, 2:] = torch.tensor([0.03, -0.02], dtype=torch.float64)
    act = torch.tensor([[0, 0, 0.01, 0.0], [0, 0, 0.5, -0.5], [0, 0, 0, 0]], dtype=torch.float64)
    nxt = W.step(state, act)
    want_v = torch.tensor([[0.04, -0.02], [0.05, -0.04], [0.03, -0.02]], dtype=torch.float64)  # push clipped to 0.02
    assert torch.allclose(nxt[:, 0, 2:], want_v) and torch.allclose(nxt[:, 0, :2], 0.5 + want_v)
    assert torch.equal(state[:, 0, 2:], torch.tensor([[0.03, -0.02]] * 3, dtype=torch.float64))  # the input is kept
    fast = state.clone()
    fast[:, 0, 2:] = 0.095
    assert (W.step(fast, act)[:, 0, 2:].abs() <= W.max_speed + 1e-12).all()  # the speed bound


def test_a_revisited_place_shows_the_same_scene_and_the_scene_is_fixed_by_its_seed():
    cam = torch.tensor([[[0.2, 0.4], [0.6, 0.1], [0.2, 0.4]]], dtype=torch.float64)
    bg = W.background(cam, 16)
    assert torch.equal(bg[0, 0], bg[0, 2]) and not torch.equal(bg[0, 0], bg[0, 1])
    assert torch.equal(InteractiveWorld(scene_seed=0).landmarks, W.landmarks)
    assert not torch.equal(InteractiveWorld(scene_seed=1).landmarks, W.landmarks)
    # a landmark at the window's centre peaks there at landmark_level
    one = InteractiveWorld(n_landmarks=1)
    c = one.landmarks[0] - 0.5
    img = one.background(c[None, None], 17)[0, 0]
    assert float(img.max()) == pytest.approx(one.landmark_level) and img.argmax() == 8 * 17 + 8
    empty = InteractiveWorld(n_landmarks=0).background(cam, 8)
    assert torch.equal(empty, torch.zeros_like(empty))


def test_frames_are_the_sprites_over_the_scene_and_the_closed_form_replays():
    out = W.simulate(2, 9, seed=3)
    again = W.simulate(2, 9, seed=3)
    for k in out:
        assert torch.equal(out[k], again[k])
    frames = W.render(out["states"], out["camera"], 16)
    assert frames.shape == (2, 9, 1, 16, 16) and frames.min() >= -1 and frames.max() <= 1
    sprites = (W.world.render(out["states"], 16)[:, :, 0].double() + 1) / 2
    scene = W.background(out["camera"], 16)
    want = 2 * (1 - (1 - sprites) * (1 - scene)) - 1  # the screen blend: a white sprite stays white, over any scene
    assert torch.allclose(frames[:, :, 0].double(), want, atol=1e-6)
    added = 2 * (sprites + scene).clamp(max=1) - 1
    assert (frames[:, :, 0].double() - added).abs().max() > 1e-3  # not intensities added and clipped
    # sprite_positions inverts the blend: the true frames give back the true positions
    from distill_lab.video.interactive import sprite_positions
    pos = sprite_positions(W, frames, out["camera"])
    assert torch.allclose(pos[:, :, 0], out["states"][:, :, 0, :2], atol=2e-3)
    # the replay from the states, the camera's start and the actions alone
    s = out["states"][:, 0]
    for t in range(8):
        s = W.step(s, out["actions"][:, t])  # no kicks in the default world
        assert torch.allclose(s, out["states"][:, t + 1])
    assert torch.allclose(W.camera_path(out["camera"][:, 0], out["actions"]), out["camera"])


def test_the_audio_stream_is_sprite_zeros_height_at_its_rate_and_flags_bounces():
    out = W.simulate(4, 13, seed=1)
    audio, states = out["audio"], out["states"]
    assert audio.shape == (4, 4, 2)  # frames 0, 4, 8, 12
    assert torch.equal(audio[..., 0], states[:, ::4, 0, 1])
    v = states[:, :, 0, 2:]
    flips = ((v[:, 1:] * v[:, :-1]) < 0).any(-1)  # into frames 1..12
    assert audio[:, 0, 1].sum() == 0
    for i in range(1, 4):
        assert torch.equal(audio[:, i, 1], flips[:, 4 * i - 4:4 * i].any(1).double())
    # a sprite sent at a wall bounces and the flag says so at the next audio value
    state = W.world.initial(1, torch.Generator().manual_seed(0))
    state[0, 0] = torch.tensor([0.8, 0.5, 0.06, 0.0], dtype=torch.float64)
    traj = torch.stack([state] + [state := W.step(state, torch.zeros(1, 4)) for _ in range(4)], 1)
    assert W.bounces(traj)[0].tolist() == [False, True, False, False, False]
    assert W.audio(traj)[0, 1, 1] == 1.0


def test_bad_settings_and_shapes_are_refused():
    with pytest.raises(ValueError, match="scene_size"):
        InteractiveWorld(scene_size=0.5)
    with pytest.raises(ValueError, match="max_speed"):
        InteractiveWorld(max_speed=0.9)
    with pytest.raises(ValueError, match="actions must be"):
        W.simulate(2, 5, actions=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="camera must be"):
        W.background(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="share"):
        W.render(torch.zeros(1, 3, 1, 4), torch.zeros(1, 2, 2))


def test_a_loop_closed_clip_returns_the_camera_through_its_places_to_its_start():
    F = 6
    a = W.random_actions(2, F, torch.Generator().manual_seed(4))
    start = torch.full((2, 2), 0.5, dtype=torch.float64)  # mid-scene: no pan is clipped at an edge
    loop = W.loop_closed(a)
    assert loop.shape == (2, 2 * F, 4) and torch.equal(loop[:, :F - 1], a[:, :F - 1])
    assert (loop[:, F:, 2:] == 0).all()  # no push on the way back
    cam = W.camera_path(start, loop)
    for j in range(F):  # frame F + j shows frame F - 1 - j's place; the last frame the start
        assert torch.allclose(cam[:, F + j], cam[:, F - 1 - j], atol=1e-12)
    assert torch.allclose(cam[:, -1], start, atol=1e-12)
    first = first_visits(cam, 1e-9)
    assert (first[:, :F] == -1).all()  # the way out shows new places
    assert first[:, F:].tolist() == [list(range(F - 1, -1, -1))] * 2  # the way back, each first seen on the way out


def test_a_memory_that_stores_every_frame_recalls_a_revisited_place_exactly():
    F = 5
    a = W.random_actions(1, F, torch.Generator().manual_seed(5))
    cam = W.camera_path(torch.full((1, 2), 0.4, dtype=torch.float64), W.loop_closed(a))
    scene = W.background(cam, 16).unsqueeze(2)  # what a perfect memory of the scene shows at each place
    assert revisit_error(scene, cam, tol=1e-9) < 1e-12
    drift = scene.clone()
    drift[:, F:] = W.background(cam[:, F:] + 1 / 16, 16).unsqueeze(2)  # the way back drawn a pixel off
    assert revisit_error(drift, cam, tol=1e-9) > 0.01
    free = torch.ones(1, 2 * F, 16, 16, dtype=torch.bool)
    free[:, :, :, :8] = False  # only the right half is compared (a sprite covers the left, say)
    part = scene.clone()
    part[:, F:, :, :, :8] += 0.5  # the way back differs in the left half only
    assert revisit_error(part, cam, free, tol=1e-9) < 1e-12
    assert revisit_error(part, cam, tol=1e-9) == pytest.approx(0.25)  # unmasked: half the pixels, off by 0.5
    assert torch.isnan(torch.tensor(revisit_error(scene[:, :F], cam[:, :F], tol=1e-9)))  # never came back
    with pytest.raises(ValueError, match="camera must be"):
        first_visits(torch.zeros(3, 2))


def test_the_true_motion_follows_the_actions_and_other_pushes_do_not():
    out = W.simulate(16, 20, seed=7)
    pos = out["states"][..., :2]
    assert action_following_error(W, pos, out["actions"]) < 1e-12
    wrong = out["actions"].clone()
    wrong[..., 2:] = -wrong[..., 2:]  # the opposite pushes
    assert action_following_error(W, pos, wrong) > 1e-3
    assert torch.isnan(torch.tensor(action_following_error(W, pos, out["actions"], wall_gap=0.4)))  # no frame qualifies


def test_sprites_are_read_off_frames_once_the_known_scene_is_taken_away():
    world = InteractiveWorld(landmark_level=0.3)
    out = world.simulate(4, 6, seed=2)
    frames = world.render(out["states"], out["camera"], 32)
    found = sprite_positions(world, frames, out["camera"])
    err = (found - out["states"][..., :2]).abs()
    assert float(err.median()) < 1e-3  # exact up to where a landmark and the sprite together pass the clip at 1
    assert sync_error(world, out["audio"], out["states"][..., :2]) < 1e-12
    late = out["audio"].clone()
    late[:, 1:] = out["audio"][:, :-1]  # the audio one value late
    assert sync_error(world, late, out["states"][..., :2]) > 1e-3


def test_a_world_model_that_remembers_closes_the_loop():
    a = W.random_actions(2, 5, torch.Generator().manual_seed(8))
    cam = W.camera_path(torch.full((2, 2), 0.5, dtype=torch.float64), W.loop_closed(a))
    scene = W.background(cam, 16).unsqueeze(2)
    assert loop_closure_error(scene) < 1e-12
    forgot = scene.clone()
    forgot[:, -1] = 0.0
    assert loop_closure_error(forgot) > 0.01
    free = torch.zeros(2, 10, 16, 16, dtype=torch.bool)
    assert loop_closure_error(forgot, free) == 0.0  # nothing compared


def test_a_memory_that_stores_everything_recalls_a_revisited_frame_exactly():
    F = 6
    a = W.random_actions(2, F, torch.Generator().manual_seed(9))
    cam = W.camera_path(torch.full((2, 2), 0.5, dtype=torch.float64), W.loop_closed(a))
    frames = W.background(cam, 8)
    mem = CameraMemory()
    for t in range(F):  # the way out
        mem.write(cam[:, t], frames[:, t])
    for t in range(F, 2 * F):  # the way back: every place was seen
        got, dist = mem.read(cam[:, t])
        assert torch.allclose(dist, torch.zeros(2, 1, dtype=torch.float64), atol=1e-12) and torch.equal(got[:, 0], frames[:, 2 * F - 1 - t])
    assert len(mem) == F and mem.nbytes == frames[:, :F].numel() * frames.element_size()


def test_at_constant_memory_a_spread_policy_keeps_the_start_a_sliding_window_forgets():
    # out along x in 8 steps, then back: a memory of 3 entries
    cam = torch.tensor([[[0.1 * i, 0.2] for i in list(range(8)) + list(range(7, -1, -1))]], dtype=torch.float64)
    recent, spread = CameraMemory(3, "recent"), CameraMemory(3, "spread")
    for t in range(8):
        recent.write(cam[:, t], torch.full((1, 2), float(t)))
        spread.write(cam[:, t], torch.full((1, 2), float(t)))
    assert len(recent) == len(spread) == 3 and recent.nbytes == spread.nbytes
    _, d_recent = recent.read(cam[:, -1])  # back at the start
    got, d_spread = spread.read(cam[:, -1])
    assert float(d_recent) == pytest.approx(0.5) and float(d_spread) == 0.0 and float(got[0, 0, 0]) == 0.0
    assert recent.poses[0, :, 0].tolist() == pytest.approx([0.5, 0.6, 0.7])  # the last three written
    assert spread.poses[0, :, 0].tolist() == pytest.approx([0.0, 0.2, 0.7])  # the ends and one between
    with pytest.raises(ValueError, match="policy"):
        CameraMemory(3, "oldest")
    with pytest.raises(ValueError, match="empty"):
        CameraMemory().read(cam[:, 0])
    with pytest.raises(ValueError, match="k must"):
        recent.read(cam[:, 0], k=4)


def test_the_push_gain_is_one_for_the_world_and_zero_for_a_sprite_that_ignores_pushes():
    from distill_lab.video.interactive import push_gain

    a = W.random_actions(16, 12, torch.Generator().manual_seed(3))
    sim = W.simulate(16, 12, actions=a, seed=3)
    pos = sim["states"][..., :2]
    assert push_gain(W, pos, a) == pytest.approx(1.0, abs=0.05)  # below 1 only where the speed bound clips
    steady = pos[:, :1] + torch.arange(12, dtype=torch.float64)[None, :, None, None] * 0.01  # constant velocity
    assert push_gain(W, steady, a) == pytest.approx(0.0, abs=1e-9)
    assert push_gain(W, pos, -a) < 0  # pushed the other way: the slope's sign turns
    assert math.isnan(push_gain(W, pos, torch.zeros_like(a)))


def test_the_scene_image_tiles_the_windows_at_integer_cameras_and_revisits_by_frame():
    from distill_lab.video.interactive import revisit_by_frame, revisit_error

    w = InteractiveWorld()
    lm = w.random_landmarks(1, torch.Generator().manual_seed(0))
    img = w.scene_image(lm[0], 8)
    assert img.shape == (16, 16)
    win = w.background(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64), 8, lm)[0]
    assert torch.equal(img[:8, 8:], win[0]) and torch.equal(img[8:, :8], win[1])  # rows y, columns x
    with pytest.raises(ValueError, match="integer"):
        InteractiveWorld(scene_size=1.5).scene_image()
    # frames that repeat their place exactly score 0 at each revisit, nan where no place is revisited
    cam = torch.tensor([[[0.0, 0.0], [0.1, 0.0], [0.0, 0.0], [0.3, 0.0]]], dtype=torch.float64)
    frames = torch.zeros(1, 4, 1, 4, 4)
    frames[0, 1] = 1.0
    per = revisit_by_frame(frames, cam)
    assert per[2] == 0 and torch.isnan(per[[0, 1, 3]]).all()
    frames[0, 2] = 0.5
    assert float(revisit_by_frame(frames, cam)[2]) == pytest.approx(0.5) == revisit_error(frames, cam)
