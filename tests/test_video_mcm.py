"""The Motion Consistency Model pieces (distill_lab.video.mcm): stills and the width metric, the motion
representation, the motion-only consistency loss, the frame GAN, mixed trajectories, and a tiny run."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_lab.methods.step.consistency import cd_loss
from distill_lab.methods.step.students import ConsistencyFunction
from distill_lab.video import mcm
from distill_lab.video.config import VIDEO_SCALES
from distill_lab.video.experiment import VideoWorld
from distill_lab.video.nets import VideoNetConfig, VideoTransformer
from distill_lab.video.world import World

WORLD = World()


def clips(n=6, frames=5, seed=0, world=WORLD, R=16):
    return world.clips(n, frames, R, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ stills and the width metric
def test_sharp_world_rejects_a_blurrier_or_nonpositive_width():
    assert mcm.sharp_world(WORLD, 0.04).sigma == 0.04
    for bad in (0.07, 0.1, 0.0, -0.01):
        with pytest.raises(ValueError, match="sharper"):
            mcm.sharp_world(WORLD, bad)


@pytest.mark.parametrize("sigma", [0.07, 0.045, 0.03])
def test_sprite_width_is_exact_on_rendered_clips_and_stills(sigma):
    w = World(sigma=sigma)
    got = mcm.sprite_width(clips(world=w), w)
    assert got.shape == (6, 5)
    assert torch.allclose(got, torch.full_like(got, sigma), atol=1e-6)
    if sigma < WORLD.sigma:
        stills = mcm.still_frames(mcm.sharp_world(WORLD, sigma), 40, 16, torch.Generator().manual_seed(1))
        assert stills.shape == (40, 1, 16, 16)
        ws = mcm.sprite_width(stills, WORLD)
        assert ws.shape == (40,) and torch.allclose(ws, torch.full_like(ws, sigma), atol=1e-6)
        assert mcm.median_width(stills, WORLD) == pytest.approx(sigma, abs=1e-6)


def test_sprite_width_averages_the_two_axes_of_an_elongated_sprite():
    c = (torch.arange(16, dtype=torch.float64) + 0.5) / 16
    blob = torch.exp(-(c[:, None] - 0.43) ** 2 / (2 * 0.08 ** 2) - (c[None, :] - 0.61) ** 2 / (2 * 0.05 ** 2))
    frame = (2 * blob - 1).float()[None, None]                          # rows y (width 0.08), columns x (0.05)
    assert float(mcm.sprite_width(frame, WORLD)[0]) == pytest.approx(0.065, abs=1e-5)


def test_sprite_width_flags_a_frame_without_a_peak_and_rejects_bad_shapes():
    flat = -torch.ones(1, 2, 1, 16, 16)
    assert torch.isinf(mcm.sprite_width(flat, WORLD)).all()
    for bad in (torch.zeros(2, 16, 16), torch.zeros(1, 2, 3, 16, 16)):
        with pytest.raises(ValueError, match="frames must be"):
            mcm.sprite_width(bad, WORLD)


def test_sharpness_is_zero_for_the_video_look_one_for_the_stills():
    assert mcm.sharpness(0.07, 0.07, 0.045) == pytest.approx(0.0)
    assert mcm.sharpness(0.045, 0.07, 0.045) == pytest.approx(1.0)
    assert mcm.sharpness(0.08, 0.07, 0.045) < 0 < 1 < mcm.sharpness(0.03, 0.07, 0.045)
    with pytest.raises(ValueError, match="smaller"):
        mcm.sharpness(0.05, 0.045, 0.07)


# ------------------------------------------------------------------ the motion representation
def test_frame_differences_zero_on_a_static_clip_and_blind_to_a_clipwide_change():
    x = clips()
    static = x[:, :1].expand(-1, 4, -1, -1, -1)
    assert mcm.frame_differences(static).abs().max() == 0
    d = mcm.frame_differences(x)
    assert d.shape == (6, 4, 1, 16, 16)
    assert torch.equal(d[:, 2], x[:, 3] - x[:, 2])                     # later minus earlier, adjacent frames
    background = torch.randn(6, 1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(mcm.frame_differences(x + background), d, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 frames"):
        mcm.frame_differences(x[:, :1])
    with pytest.raises(ValueError, match=r"\[B, F, C, H, W\]"):
        mcm.frame_differences(x[:, 0])


# ------------------------------------------------------------------ the motion-only consistency loss
class Affine(nn.Module):
    """``F(x, t) = w * x + b``: a velocity-shaped net with parameters, for gradient checks."""

    def __init__(self, w=0.3, b=0.1):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, x, t):
        return self.w * x + self.b * (1 + torch.arange(x.shape[1], dtype=x.dtype)).view(1, -1, 1, 1, 1)


def setting(seed=0):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(4, 5, 1, 6, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.5, 0.7], dtype=torch.float64)
    return x_t, t, t + 0.125


def test_loss_is_zero_along_an_exact_flow_for_a_consistent_student():
    """A constant teacher velocity ``c``: its flow is ``x + (s - t) c`` (Euler is exact) and
    ``f(x, t) = x + (1 - t) c`` is its exact consistency function, so both distances vanish."""
    x_t, t, tn = setting()
    c = torch.randn(1, 5, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    velocity = lambda x, s: c.expand_as(x)  # noqa: E731
    f = ConsistencyFunction(velocity)
    for rep in (mcm.frame_differences, None):
        loss, _ = mcm.motion_cd_loss(f, f, velocity, x_t, t, tn, rep)
        assert float(loss.detach()) < 1e-24


def test_motion_loss_ignores_a_clipwide_appearance_change_that_the_pixel_loss_sees():
    x_t, t, tn = setting()
    velocity = lambda x, s: torch.zeros_like(x)  # noqa: E731
    offset = torch.randn(4, 1, 1, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    f = lambda x, s: x + offset  # noqa: E731   the student: the target plus a static per-clip image
    f_target = lambda x, s: x  # noqa: E731
    motion, _ = mcm.motion_cd_loss(f, f_target, velocity, x_t, t, tn)
    pixels, _ = mcm.motion_cd_loss(f, f_target, velocity, x_t, t, tn, None)
    assert float(motion) < 1e-24
    assert float(pixels) == pytest.approx(float(offset.pow(2).mean()), rel=1e-12)


def test_pixel_variant_equals_the_package_cd_loss():
    x_t, t, tn = setting()
    torch.manual_seed(0)
    f, f_ema, teacher = ConsistencyFunction(Affine(0.3, 0.1)), ConsistencyFunction(Affine(0.2, -0.1)), Affine(-0.5, 0.2)
    mine, _ = mcm.motion_cd_loss(f, f_ema, teacher, x_t, t, tn, None)
    ref, _ = cd_loss(f, f_ema, teacher, x_t, t, tn, "euler")
    assert float(mine.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)


def manual_motion_loss(f, f_ema, teacher, x_t, t, tn):
    h = (tn - t).view(-1, 1, 1, 1, 1)
    x_hat = x_t + h * teacher(x_t, t)
    d = lambda x: x[:, 1:] - x[:, :-1]  # noqa: E731
    per = (d(f(x_t, t)) - d(f_ema(x_hat, tn))).pow(2).flatten(1).mean(1)
    return per.mean()


def test_motion_loss_value_sign_reduction_and_stop_gradients():
    x_t, t, tn = setting(1)
    net, target_net, teacher = Affine(0.3, 0.1), Affine(0.2, -0.1), Affine(-0.5, 0.2)
    f, f_ema = ConsistencyFunction(net), ConsistencyFunction(target_net)
    loss, info = mcm.motion_cd_loss(f, f_ema, teacher, x_t, t, tn)
    want = manual_motion_loss(f, f_ema, teacher, x_t, t, tn)  # a flipped step, a sum, a wrong target time
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-10)
    assert info["prediction"].shape == x_t.shape
    loss.backward()
    assert net.w.grad is not None and float(net.w.grad.abs()) > 0
    for frozen_net in (target_net, teacher):                     # the EMA target and the teacher: no gradient
        assert all(p.grad is None for p in frozen_net.parameters())
    got = (net.w.grad.clone(), net.b.grad.clone())
    net.zero_grad(set_to_none=True)
    manual_motion_loss(f, f_ema, teacher, x_t, t, tn).backward()  # the student's gradient only, the target held
    assert torch.allclose(got[0], net.w.grad) and torch.allclose(got[1], net.b.grad)


def test_motion_loss_rejects_bad_times_and_shapes():
    x_t, t, tn = setting()
    f = ConsistencyFunction(Affine())
    with pytest.raises(ValueError, match="t < t_next"):
        mcm.motion_cd_loss(f, f, Affine(), x_t, tn, t)
    with pytest.raises(ValueError, match="clips"):
        mcm.motion_cd_loss(f, f, Affine(), x_t[:, 0], t, tn)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mcm.motion_cd_loss(f, f, Affine(), x_t, t + 0.5, tn + 0.5)


# ------------------------------------------------------------------ the frame GAN
class Brightness(nn.Module):
    """``D(frame) = k * mean(frame) + b``: a discriminator whose answer is known."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(2.0))
        self.b = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t):
        assert x.dim() == 4 and torch.all(t == 1)
        return self.k * x.mean(dim=(1, 2, 3)) + self.b


def test_discriminator_loss_value_real_fake_roles_and_detached_inputs():
    disc = Brightness()
    fake = (clips(3, 4) * 0.5).requires_grad_()                  # dimmer frames
    real = mcm.still_frames(mcm.sharp_world(WORLD, 0.045), 10, 16, torch.Generator().manual_seed(4))
    loss, info = mcm.frame_discriminator_loss(disc, fake, real)
    d_real = 2.0 * real.mean(dim=(1, 2, 3)) + 0.5
    d_fake = 2.0 * fake.detach().reshape(12, 1, 16, 16).mean(dim=(1, 2, 3)) + 0.5
    want = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)
    swapped = F.softplus(-d_fake).mean() + F.softplus(d_real).mean()
    assert abs(float(want) - float(swapped)) > 1e-3                  # the check above tells real from fake
    loss.backward()
    assert fake.grad is None and disc.k.grad is not None and float(disc.k.grad.abs()) > 0
    with pytest.raises(ValueError, match="frames"):
        mcm.frame_discriminator_loss(disc, fake, real[:, None])


def test_generator_loss_value_sign_and_no_gradient_into_the_discriminator():
    disc = Brightness()
    x = clips(3, 4).requires_grad_()
    loss, _ = mcm.frame_generator_loss(disc, x)
    want = F.softplus(-(2.0 * x.detach().reshape(12, 1, 16, 16).mean(dim=(1, 2, 3)) + 0.5)).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)
    loss.backward()
    assert disc.k.grad is None and disc.b.grad is None
    assert disc.k.requires_grad and disc.b.requires_grad           # unfrozen afterwards
    assert float(x.grad.sum()) < 0    # a step against the gradient brightens the frames: D says "real" more
    with torch.no_grad():
        stepped = x - 10.0 * x.grad
    assert float(mcm.frame_generator_loss(disc, stepped)[0]) < float(loss.detach())


def test_frame_discriminator_takes_single_frames():
    d = mcm.frame_discriminator(1)
    out = d(torch.zeros(7, 1, 16, 16), torch.ones(7))
    assert out.shape == (7,)


# ------------------------------------------------------------------ mixed trajectories
def test_mixed_starts_pick_the_clean_end_per_sample_and_detach_generations():
    g = torch.Generator().manual_seed(0)
    noise, data = torch.randn(4, 3, 1, 4, 4, generator=g), torch.randn(4, 3, 1, 4, 4, generator=g)
    gen = torch.randn(4, 3, 1, 4, 4, generator=g, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 0.6, 0.9])
    mask = torch.tensor([False, True, False, True])
    got = mcm.mixed_starts(noise, data, gen, t, mask)
    te = t.view(-1, 1, 1, 1, 1)
    want = torch.where(mask.view(-1, 1, 1, 1, 1), (1 - te) * noise + te * gen.detach(), (1 - te) * noise + te * data)
    assert torch.allclose(got, want)
    assert not got.requires_grad
    assert torch.allclose(mcm.mixed_starts(noise, data, gen, t, torch.zeros(4, dtype=torch.bool)),
                          (1 - te) * noise + te * data)
    with pytest.raises(ValueError, match="boolean"):
        mcm.mixed_starts(noise, data, gen, t, torch.zeros(4))
    with pytest.raises(ValueError, match="one shape"):
        mcm.mixed_starts(noise, data[:, :2], gen, t, mask)


# ------------------------------------------------------------------ scales and a tiny run
def test_scales_share_their_fields_and_reject_bad_values():
    assert set(mcm.MCM_SCALES) == {"ci", "default", "gpu"}
    for sc in mcm.MCM_SCALES.values():
        assert sc.still_sigma < WORLD.sigma and sc.student_nfe >= 1
    with pytest.raises(ValueError, match="mixed_share"):
        replace(mcm.MCM_SCALES["ci"], mixed_share=1.5)
    with pytest.raises(ValueError, match="at least 1"):
        replace(mcm.MCM_SCALES["ci"], steps=0)


def tiny_world():
    small = VideoNetConfig(resolution=16, patch=8, dim=32, depth=1, heads=2)
    vs = replace(VIDEO_SCALES["ci"], net=small, frames=4, block=2, teacher_nfe=2, eval_n=6)
    torch.manual_seed(0)
    return VideoWorld(teacher=VideoTransformer(small, "full"), video_scale=vs, progress=False)


def test_every_variant_trains_and_evaluates_and_a_seed_repeats():
    exp = tiny_world()
    cfg = replace(mcm.MCM_SCALES["ci"], steps=2, batch=2, stills_batch=4, eval_n=6, student_nfe=2, seeds=(0,))
    ref, rows = mcm.run_variants(exp, cfg, progress=False)
    assert ref["data"]["width"] == pytest.approx(WORLD.sigma, abs=1e-6)
    assert ref["stills_width"] == pytest.approx(cfg.still_sigma, abs=1e-6)
    assert ref["fd_floor"] >= 0 and set(rows) == set(mcm.VARIANTS)
    for name, (row,) in rows.items():
        assert row["clips"].shape == (6, 4, 1, 16, 16)
        for key in ("dynamic_degree", "fd", "width", "sharpness", "frame_error", "still_error"):
            assert isinstance(row[key], float)
    again = mcm.evaluate_mcm(mcm.train_mcm(exp, mcm.VARIANTS["MCM + mixed trajectories"], 0, cfg), exp, ref, cfg)
    assert torch.equal(again["clips"], rows["MCM + mixed trajectories"][0]["clips"])
