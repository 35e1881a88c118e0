"""Video self-distillation for representations (issue 14, item 3; distill_lab.video.represent) on cases with
known answers: motion classes of hand-made clips, the effective rank and the probe on features built by hand,
tube masks that hide exactly the masked tokens from the student, an EMA teacher that gets no gradient, and
FFP-300K's identity-propagation target being the source clip."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from distill_lab.metrics.representation import effective_rank, linear_probe
from distill_lab.video import represent as rp
from distill_lab.video.world import World

TINY = replace(rp.SETTINGS["ci"], dim=16, heads=2, batch=4, steps=2, n_pretrain=8, n_probe_train=8, n_probe_test=8,
               ffp_pairs=2, ffp_identity=4, ffp_steps=2, ffp_batch=2, ffp_n_test=4)


def test_motion_class_of_hand_made_velocities():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.9], [1.0, -0.9], [-0.2, 1.0]])
    assert rp.motion_class(v, 4).tolist() == [0, 1, 2, 3, 0, 0, 1]
    assert rp.motion_class(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), 8).tolist() == [1, 5]
    with pytest.raises(ValueError, match="still"):
        rp.motion_class(torch.zeros(1, 2), 4)


def test_motion_clips_move_as_labelled_and_distractors_stand_still():
    s = replace(TINY, n_distractors=2)
    x, y = rp.motion_clips(64, s, torch.Generator().manual_seed(0))
    assert x.shape == (64, s.frames, 1, s.resolution, s.resolution) and x.min() >= -1 and x.max() <= 1
    assert torch.bincount(y, minlength=4).min() > 5  # every class drawn
    # without distractors, the detected sprite moves in the labelled direction
    x0, y0 = rp.motion_clips(64, replace(TINY, n_distractors=0), torch.Generator().manual_seed(0))
    w = World(n_sprites=1)
    pos = w.detect(x0)[:, :, 0]                                     # [n, F, 2]
    assert torch.equal(rp.motion_class(pos[:, -1] - pos[:, 0], 4), y0)
    # the same draws with distractors: the difference is static (the blobs stand still)
    extra = x - x0
    far = (x0 < -0.99999).all(1, keepdim=True)                       # pixels the sprite never reaches
    assert (extra.amax(1) > 0.1).any() and float(((extra - extra[:, :1]) * far).abs().max()) < 1e-4
    # a single frame is the same whatever the class: frame 0 of a clip moving right equals that of one moving left
    same = rp.render_blobs(torch.tensor([[[[0.5, 0.5]]]], dtype=torch.float64), torch.tensor([[0.07]]),
                           torch.tensor([[1.0]]), 16)
    assert torch.allclose(same[0, 0, 0], w.render(torch.tensor([[[[0.5, 0.5]]]]), 16)[0, 0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="leave the square"):
        rp.motion_clips(2, replace(TINY, frames=16), torch.Generator(), speed=(0.05, 0.06))


def test_effective_rank_of_known_matrices():
    assert effective_rank(torch.eye(6) - 1 / 6) == pytest.approx(5.0, rel=1e-6)  # centred identity: rank D - 1
    z = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    q, _ = torch.linalg.qr(z - z.mean(0))
    assert effective_rank(q) == pytest.approx(5.0, rel=1e-6)  # equal singular values
    g = torch.Generator().manual_seed(1)
    line = torch.linspace(-1, 1, 50, dtype=torch.float64)[:, None] * torch.randn(1, 8, generator=g, dtype=torch.float64)
    assert effective_rank(line) == pytest.approx(1.0, rel=1e-6)


def test_probe_is_perfect_on_separable_features_and_chance_on_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    sep = torch.nn.functional.one_hot(y, 4).float() * 3 + 0.3 * torch.randn(400, 4, generator=g)
    sep = torch.cat([sep, torch.randn(400, 12, generator=g)], 1)
    assert linear_probe(sep[:200], y[:200], sep[200:], y[200:]) == 1.0
    noise = torch.randn(400, 16, generator=g)
    assert abs(linear_probe(noise[:200], y[:200], noise[200:], y[200:]) - 0.25) < 0.1


def test_tube_mask_hides_the_same_patches_at_every_step():
    g = torch.Generator().manual_seed(1)
    m = rp.tube_mask(3, 4, 16, 6, g)
    assert m.shape == (3, 64) and (m.sum(1) == 24).all()
    per_step = m.reshape(3, 4, 16)
    assert (per_step == per_step[:, :1]).all()
    keep = rp.visible_index(m)
    assert keep.shape == (3, 40) and not m.gather(1, keep).any()
    with pytest.raises(ValueError):
        rp.tube_mask(1, 4, 16, 16)


def test_tokenize_is_time_major_tubelets():
    x = torch.arange(2 * 4 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 4, 1, 8, 8)
    tok = rp.tokenize(x, tubelet=2, patch=4)
    assert tok.shape == (2, 2 * 4, 2 * 16)
    # token 5 = time step 1 (frames 2, 3), patch 1 (rows 0-3, columns 4-7)
    want = torch.stack([x[0, 2, 0, :4, 4:], x[0, 3, 0, :4, 4:]]).flatten()
    assert torch.equal(tok[0, 5], want)
    still = torch.zeros(1, 4, 1, 8, 8)
    assert rp.token_motion(still, 2, 4).abs().max() == 0
    moved = still.clone()
    moved[:, 3, 0, 0, 0] = 1.0  # one pixel lights up in frame 3, patch 0
    mo = rp.token_motion(moved, 2, 4)
    assert mo[0, 4] > 0 and mo[0, [0, 1, 2, 3, 5, 6, 7]].abs().max() == 0


def test_the_student_sees_nothing_of_the_masked_tokens():
    torch.manual_seed(0)
    enc = rp.SpaceTimeEncoder(TINY)
    x = torch.rand(2, TINY.frames, 1, TINY.resolution, TINY.resolution) * 2 - 1
    m = rp.tube_mask(2, TINY.frames // TINY.tubelet, 16, 8, torch.Generator().manual_seed(0))
    keep = rp.visible_index(m)
    pix = rp.tokenize(torch.ones_like(x), TINY.tubelet, TINY.patch)  # which pixels belong to a hidden token
    hidden_pixels = _untokenize(pix * m[..., None].float(), TINY)
    y = x + 5 * hidden_pixels * torch.randn_like(x)  # change only the hidden tokens' pixels
    assert not torch.allclose(x, y)
    assert torch.allclose(enc(x, keep), enc(y, keep), atol=1e-6)
    assert not torch.allclose(enc(x), enc(y), atol=1e-3)  # the full view does see them


def _untokenize(tok, s):
    B = tok.shape[0]
    T, n = s.frames // s.tubelet, s.resolution // s.patch
    x = tok.reshape(B, T, n, n, s.tubelet, 1, s.patch, s.patch).permute(0, 1, 4, 5, 2, 6, 3, 7)
    return x.reshape(B, s.frames, 1, s.resolution, s.resolution)


@pytest.mark.parametrize("variant", list(rp.VARIANTS.values()))
def test_teacher_gets_no_gradient_and_the_student_and_predictor_do(variant):
    torch.manual_seed(0)
    student, pred = rp.SpaceTimeEncoder(TINY), rp.Predictor(TINY)
    teacher = rp.SpaceTimeEncoder(TINY)
    for p in teacher.parameters():
        p.requires_grad_(True)  # even a teacher that could take a gradient must get none
    x, _ = rp.motion_clips(4, TINY, torch.Generator().manual_seed(0))
    m = rp.tube_mask(4, TINY.frames // TINY.tubelet, 16, 8, torch.Generator().manual_seed(0))
    grad_mode = []
    teacher.register_forward_hook(lambda *_: grad_mode.append(torch.is_grad_enabled()))
    loss, info = rp.unisurg_loss(student, pred, teacher, x, m, variant, TINY)
    loss.backward()
    assert grad_mode == [False]  # the teacher runs under stop-gradient (no graph is even built)
    assert all(p.grad is None for p in teacher.parameters())
    assert student.embed.weight.grad.abs().sum() > 0 and pred.mask_token.grad.abs().sum() > 0
    assert ("affinity" in info) == variant.affinity and ("diversity" in info) == variant.diversity


def test_unisurg_terms_add_up_to_the_methods_losses():
    """The objective is the sum of the package's three losses on the right tensors (a swapped argument or a
    dropped term changes it)."""
    from distill_lab.methods.video_ssl import affinity_sd_loss, diversity_loss, motion_weighted_latent_loss

    torch.manual_seed(0)
    s = replace(TINY, w_aff=0.7, w_div=0.3, alpha=2.0)
    student, pred, teacher = rp.SpaceTimeEncoder(s), rp.Predictor(s), rp.SpaceTimeEncoder(s)
    with torch.no_grad():  # a teacher whose tokens are not layer-normed already: the targets must be
        teacher.norm.weight.mul_(2.0)
        teacher.norm.bias.add_(0.5)
    x, _ = rp.motion_clips(4, s, torch.Generator().manual_seed(0))
    m = rp.tube_mask(4, s.frames // s.tubelet, 16, 8, torch.Generator().manual_seed(0))
    full, _ = rp.unisurg_loss(student, pred, teacher, x, m, rp.Variant(True, True, True), s)
    with torch.no_grad():
        target = torch.nn.functional.layer_norm(teacher(x), (s.dim,))
        keep = rp.visible_index(m)
        ctx = student(x, keep)
        p = pred(ctx, keep)
        lat = motion_weighted_latent_loss(p, target, m, rp.token_motion(x, s.tubelet, s.patch), 2.0)[0]
        aff = affinity_sd_loss(ctx, target.gather(1, keep[..., None].expand(-1, -1, s.dim)), s.tau_s, s.tau_t)[0]
        div = diversity_loss(ctx)[0]
    assert float(full.detach()) == pytest.approx(float(lat + 0.7 * aff + 0.3 * div), rel=1e-5)
    plain, _ = rp.unisurg_loss(student, pred, teacher, x, m, rp.Variant(), s)
    lat0 = motion_weighted_latent_loss(p, target, m, rp.token_motion(x, s.tubelet, s.patch), 0.0)[0]
    assert float(plain.detach()) == pytest.approx(float(lat0), rel=1e-5)


def test_pretrain_moves_the_teacher_by_ema_and_is_seeded():
    data = rp.ReprData.make(TINY, 0)
    st, te, hist = rp.pretrain(rp.VARIANTS["masked latents (V-JEPA)"], TINY, data, seed=3, steps=1)
    torch.manual_seed(3)
    init = rp.SpaceTimeEncoder(TINY)  # pretrain's initialisation, rebuilt from the same seed
    w0, w1, wt = init.embed.weight, st.embed.weight, te.embed.weight
    assert torch.allclose(wt, TINY.ema * w0 + (1 - TINY.ema) * w1, atol=1e-6)
    assert not any(p.requires_grad for p in te.parameters())
    st2, _, hist2 = rp.pretrain(rp.VARIANTS["masked latents (V-JEPA)"], TINY, data, seed=3, steps=1)
    assert hist2["loss"] == hist["loss"] and torch.equal(st2.embed.weight, w1)


def test_identity_propagation_target_is_the_source_clip():
    g = torch.Generator().manual_seed(0)
    src, tgt = rp.ffp_pairs(3, 6, 16, g, edited=False)
    assert torch.equal(src, tgt)
    src, tgt = rp.ffp_pairs(3, 6, 16, torch.Generator().manual_seed(0))
    assert not torch.allclose(src, tgt)
    # the edit keeps the motion: the sprite's place is the source's in every frame
    w = World(n_sprites=2)
    assert torch.allclose(w.detect(src).float(), w.detect(tgt).float(), atol=0.03)

    class Oracle(rp.Propagator):  # a propagator that adds the source's change reproduces the source exactly
        def forward(self, source, first):
            return torch.cat([first[:, None], source[:, 1:] - source[:, :1] + first[:, None]], 1)

    assert float(rp.identity_propagation_loss(Oracle(), src)) < 1e-12
    model = rp.Propagator(8)
    held = model(src, src[:, 0])  # untrained: holds the first frame still
    assert torch.equal(held, src[:, :1].expand_as(src))
    held_still = float(((src[:, 1:] - src[:, :1]) ** 2).mean())
    assert float(rp.identity_propagation_loss(model, src).detach()) == pytest.approx(held_still)


def test_ffp_training_lowers_the_error_on_its_pairs_and_errors_are_per_frame():
    s = replace(TINY, ffp_steps=30)
    data = rp.FFPData.make(s, 0)
    model, losses = rp.train_ffp(s, data, 0, identity_weight=0.0)
    assert losses[-1] < losses[0]
    err = rp.ffp_errors(model, data.test_src, data.test_tgt)
    assert err.shape == (s.ffp_eval_frames,) and err[0] == 0
    assert rp.late_error([0.0, 1.0, 3.0, 5.0], 2) == 4.0
    # per frame, averaged over clips and pixels: frame f off by f everywhere in clip 0, by 0 in clip 1
    src = torch.zeros(2, 4, 1, 8, 8)
    per_clip = torch.tensor([1.0, 0.0])[:, None, None, None, None]
    tgt = torch.arange(4.0)[None, :, None, None, None].expand(2, 4, 1, 8, 8) * per_clip
    assert rp.ffp_errors(None, src, tgt).tolist() == [0.0, 0.5, 2.0, 4.5]
    with pytest.raises(ValueError):
        model(data.test_src, data.test_tgt[:, :2])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="patch"):
        replace(TINY, patch=5)
    with pytest.raises(ValueError, match="mask_ratio"):
        replace(TINY, mask_ratio=1.0)
    enc = rp.SpaceTimeEncoder(TINY)
    with pytest.raises(ValueError, match="clips must be"):
        enc(torch.zeros(1, 4, 1, 16, 16))
    with pytest.raises(ValueError, match="same number"):
        rp.visible_index(torch.tensor([[True, False, False], [True, True, False]]))
    with pytest.raises(ValueError, match="sigma"):
        rp.render_blobs(torch.zeros(1, 2, 1, 2), torch.ones(2, 1), torch.ones(2, 1), 8)


def test_settings_are_numbers_and_a_tiny_seed_runs():
    for s in rp.SETTINGS.values():
        assert all(isinstance(v, (int, float)) for v in s.config().values())
    out = rp.run_seed(TINY, 0)
    assert set(out) == {"random init (floor)", "raw pixels", *rp.VARIANTS}
    assert all(0 <= r["probe"] <= 1 for r in out.values())
    assert math.isfinite(out["masked latents (V-JEPA)"]["erank"])
