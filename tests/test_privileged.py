"""Self-distillation with privileged information (issue 13, items 1, 2 and 5): OPSD's clipped forward
KL, PW-OPSD's position weights, OPSD as RL with a reverse-KL penalty, AVSD's consensus. Known answers:
identical views give zero loss and zero gradient; AVSD with one view is plain distillation from it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill_lab.methods.kd.privileged import avsd_loss, clipped_forward_kl, opsd_rl_loss, position_weights
from distill_lab.methods.kd.token import forward_kl_loss, on_policy_pg_loss


def logits(seed, B=2, T=4, V=7):
    return torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])
TOKENS = torch.tensor([[1, 4, 2, 0], [3, 3, 6, 0]])


def grad_of(fn, s):
    s = s.clone().requires_grad_()
    loss = fn(s)
    loss.backward()
    return loss.detach(), s.grad


def test_identical_views_give_zero_loss_and_zero_gradient():
    s = logits(0)
    w = position_weights(MASK, 2.0)
    for fn in (lambda x: clipped_forward_kl(x, x.detach(), MASK)[0],
               lambda x: clipped_forward_kl(x, x.detach(), MASK, clip=0.1, weights=w)[0],
               lambda x: opsd_rl_loss(x, x.detach(), TOKENS, MASK, torch.tensor([1.0, 1.0]))[0],
               lambda x: avsd_loss(x, [x.detach(), x.detach(), x.detach()], MASK)[0]):
        loss, g = grad_of(fn, s)
        assert abs(loss.item()) < 1e-12 and g.abs().max() < 1e-12


def test_unclipped_opsd_target_is_the_shared_forward_kl():
    s, t = logits(0), logits(1)
    a, ga = grad_of(lambda x: clipped_forward_kl(x, t, MASK)[0], s)
    b, gb = grad_of(lambda x: forward_kl_loss(x, t, MASK), s)
    assert a.item() == pytest.approx(b.item()) and torch.allclose(ga, gb)
    c, gc = grad_of(lambda x: clipped_forward_kl(x, t, MASK, clip=1e9)[0], s)
    assert c.item() == pytest.approx(b.item()) and torch.allclose(gc, gb)


def test_clipping_caps_each_tokens_divergence_and_keeps_its_direction():
    s, t = logits(0), 3 * logits(1)
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1)
    clip = float(kl[MASK].median())
    loss, info = clipped_forward_kl(s, t, MASK, clip=clip)
    assert loss.item() == pytest.approx(kl.clamp(max=clip)[MASK].mean().item())  # the value is min(KL, clip)
    assert 0 < info["clipped"] < 1
    _, g = grad_of(lambda x: clipped_forward_kl(x, t, MASK, clip=clip)[0], s)
    _, g0 = grad_of(lambda x: clipped_forward_kl(x, t, MASK)[0], s)
    scale = (clip / kl).clamp(max=1)  # each position's gradient scaled, never turned
    assert torch.allclose(g, g0 * scale[..., None])
    with pytest.raises(ValueError, match="clip"):
        clipped_forward_kl(s, t, MASK, clip=0.0)


def test_position_weights_grow_along_the_rollout_and_average_one():
    assert torch.equal(position_weights(MASK, 0.0), MASK.double().float())
    w = position_weights(MASK, 1.0)
    assert torch.allclose(w[0, :3], torch.tensor([2 / 3, 1.0, 4 / 3])) and w[0, 3] == 0
    assert torch.allclose(w[1, :2], torch.tensor([2 / 3, 4 / 3])) and (w[1, 2:] == 0).all()
    s, t = logits(0), logits(1)  # the weights enter the loss position by position
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1)
    loss, _ = clipped_forward_kl(s, t, MASK, weights=w)
    assert loss.item() == pytest.approx((w * kl)[MASK].mean().item())
    with pytest.raises(ValueError, match="alpha"):
        position_weights(MASK, -1.0)


def test_opsd_rl_is_on_policy_distillation_at_zero_reward_and_pushes_up_rewarded_rollouts():
    s, t = logits(0), logits(1)
    a, ga = grad_of(lambda x: opsd_rl_loss(x, t, TOKENS, MASK, torch.zeros(2), beta=1.0)[0], s)
    b, gb = grad_of(lambda x: on_policy_pg_loss(x, t, TOKENS, MASK)[0], s)
    assert a.item() == pytest.approx(b.item()) and torch.allclose(ga, gb)
    # teacher view = student view: only the centred reward remains, +0.5 for the right rollout, -0.5 the other
    loss, g = grad_of(lambda x: opsd_rl_loss(x, s.detach(), TOKENS, MASK, torch.tensor([1.0, 0.0]))[0], s)
    logq = F.log_softmax(s, -1).gather(-1, TOKENS[..., None]).squeeze(-1)
    want = -(torch.tensor([[0.5], [-0.5]], dtype=torch.float64) * logq)[MASK].mean()
    assert loss.item() == pytest.approx(want.item())
    sampled = F.one_hot(TOKENS, 7).bool()
    assert (g[0][sampled[0] & MASK[0, :, None]] < 0).all()  # descent raises the rewarded rollout's tokens
    assert (g[1][sampled[1] & MASK[1, :, None]] > 0).all()  # and lowers the other's
    with pytest.raises(ValueError, match="one number a sequence"):
        opsd_rl_loss(s, t, TOKENS, MASK, torch.zeros(3))


def test_avsd_with_one_view_is_plain_distillation_from_it():
    s, t = logits(0), logits(1)
    a, ga = grad_of(lambda x: avsd_loss(x, [t], MASK)[0], s)
    b, gb = grad_of(lambda x: forward_kl_loss(x, t, MASK), s)
    assert a.item() == pytest.approx(b.item()) and torch.allclose(ga, gb)


def test_avsd_adds_a_residual_only_when_aligned_with_and_proportionate_to_the_consensus():
    s = torch.zeros(1, 1, 3, dtype=torch.float64)  # a uniform student: the signals are the views' log-probs + log 3
    v1 = torch.log(torch.tensor([[[0.8, 0.1, 0.1]]], dtype=torch.float64))
    v2 = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]], dtype=torch.float64))
    logq = F.log_softmax(s, -1)
    s1, s2 = v1 - logq, v2 - logq
    c, r1 = (s1 + s2) / 2, (s1 - s2) / 2
    assert (r1 * c).sum() > 0  # the sharper view's residual points along the consensus; the other's against it

    def target_loss(extra):
        tgt = F.log_softmax(logq + c + extra, -1)
        return (tgt.exp() * (tgt - logq)).sum().item()

    ratio_needed = float(r1.norm() / c.norm())
    loss, info = avsd_loss(s, [v1, v2], ratio=ratio_needed * 1.01)
    assert loss.item() == pytest.approx(target_loss(r1 / 2)) and info["kept"] == pytest.approx(0.5)
    loss, info = avsd_loss(s, [v1, v2], ratio=ratio_needed * 0.99)  # too large a residual: consensus alone
    assert loss.item() == pytest.approx(target_loss(0 * r1)) and info["kept"] == 0
    loss_swapped, _ = avsd_loss(s, [v2, v1], ratio=ratio_needed * 1.01)  # the views' order does not matter
    assert loss_swapped.item() == pytest.approx(target_loss(r1 / 2))
    with pytest.raises(ValueError, match="at least one"):
        avsd_loss(s, [])


def test_no_loss_sends_a_gradient_into_the_privileged_view():
    s, t = logits(0).requires_grad_(), logits(1).requires_grad_()
    w = position_weights(MASK, 1.0).requires_grad_()
    for loss in (clipped_forward_kl(s, t, MASK, clip=0.5, weights=w)[0],
                 opsd_rl_loss(s, t, TOKENS, MASK, torch.tensor([1.0, 0.0]))[0],
                 avsd_loss(s, [t, logits(2).requires_grad_()], MASK)[0]):
        loss.backward()
    assert t.grad is None and w.grad is None and s.grad.abs().sum() > 0


def test_reveal_gives_the_teacher_view_a_share_of_the_reference():
    from distill_lab.methods.kd.privileged import reveal

    assert reveal("123456", 0.0) == "" and reveal("123456", 0.5) == "123" and reveal("123456", 1.0) == "123456"
    with pytest.raises(ValueError, match="rho"):
        reveal("12", 1.5)


def test_exposure_controller_credits_later_progress_and_learns_where_progress_peaks():
    from distill_lab.methods.kd.privileged import ExposureController

    ctl = ExposureController(gamma=0.5, horizon=2)
    assert ctl.mean() == pytest.approx(0.5, abs=1e-6)  # the Beta(2, 2) prior
    ctl.decide()
    assert ctl.learn(1.0) == []  # its second window is not in yet
    ctl.decide()
    steps = ctl.learn(4.0)
    assert len(steps) == 1 and steps[0]["return"] == pytest.approx(1.0 + 0.5 * 4.0)  # R_0 = p_0 + gamma p_1
    with pytest.raises(ValueError, match="follows a decide"):
        ctl.learn(0.0)
    torch.manual_seed(0)  # a bandit whose progress peaks at rho = 0.25: the policy's mean moves there
    bandit = ExposureController(gamma=0.0, horizon=1, lr=0.05)
    for _ in range(400):
        rho = bandit.decide()
        bandit.learn(-10 * (rho - 0.25) ** 2)
    assert abs(bandit.mean() - 0.25) < 0.1 < abs(0.5 - 0.25)
    flipped = ExposureController(gamma=0.0, horizon=1, lr=0.05)  # rewarding the opposite moves it away
    torch.manual_seed(0)
    for _ in range(400):
        rho = flipped.decide()
        flipped.learn(10 * (rho - 0.25) ** 2)
    assert flipped.mean() > 0.5


def test_exposure_controller_reads_its_state():
    from distill_lab.methods.kd.privileged import ExposureController

    ctl = ExposureController(state_dim=2)
    torch.manual_seed(0)
    for _ in range(300):  # early state (1, 0) rewards little exposure, late state (0, 1) a lot
        for state, best in ((torch.tensor([1.0, 0.0]), 0.2), (torch.tensor([0.0, 1.0]), 0.8)):
            rho = ctl.decide(state)
            ctl.learn(-10 * (rho - best) ** 2)
    assert ctl.mean(torch.tensor([1.0, 0.0])) < 0.4 < 0.6 < ctl.mean(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="state statistics"):
        ctl.policy(torch.zeros(3))


def test_the_step_aligned_checker_names_the_first_failing_step_of_a_chain():
    from distill_lab.llm.tasks import Multiplication

    task = Multiplication()
    p = task.write(123, 456)  # written 321*654=
    steps = task.steps(p.target)
    assert "".join(steps) == p.target and len(steps) == 5 and steps[0][0] not in "+:>" and steps[-1][0] == ">"
    assert task.critique(p, p.target) is None
    bad = steps[:2] + [":" + "9" * (len(steps[2]) - 1)] + steps[3:]  # the running sum wrong, the rest right
    assert task.critique(p, "".join(bad)) == 2
    assert task.critique(p, "".join(steps[:3])) == 3  # stopped early: the first missing step
    assert task.critique(p, p.target + "+1") == 5  # a step too many
    assert task.critique(p, "") == 0


def test_token_contrastive_term_is_infonce_over_the_positions_of_a_sequence():
    from distill_lab.methods.kd.privileged import token_contrastive_loss

    e = torch.eye(4, dtype=torch.float64)[None]  # four orthogonal positions
    loss, info = token_contrastive_loss(e, e, tau=0.1)
    want = -torch.log_softmax(torch.tensor([10.0, 0, 0, 0], dtype=torch.float64), 0)[0]
    assert loss.item() == pytest.approx(want.item()) and info["top1"] == 1.0
    shuffled = e[:, [1, 0, 2, 3]]  # the first two student positions point at each other's teacher
    worse, info = token_contrastive_loss(shuffled, e, tau=0.1)
    assert worse.item() > loss.item() and info["top1"] == pytest.approx(0.5)
    m = torch.tensor([[True, True, False, False]])
    masked, _ = token_contrastive_loss(e, e, m, tau=0.1)  # two candidates only
    assert masked.item() == pytest.approx(-torch.log_softmax(torch.tensor([10.0, 0], dtype=torch.float64), 0)[0].item())
    s, t = e.clone().requires_grad_(), e.clone().requires_grad_()
    token_contrastive_loss(s + 0.1, t)[0].backward()
    assert t.grad is None and s.grad is not None


def test_clipping_of_small_divergences_and_avsd_at_ratio_zero():
    s = torch.zeros(1, 2, 3, dtype=torch.float64)
    t = torch.tensor([[[0.3, 0.0, 0.0], [0.0, 0.6, 0.0]]], dtype=torch.float64)  # two KLs well below 1
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1)
    assert (kl < 0.1).all()
    clip = float(kl.min() + kl.max()) / 2  # caps the larger one only
    loss, info = clipped_forward_kl(s, t, clip=clip)
    assert loss.item() == pytest.approx(kl.clamp(max=clip).mean().item()) and info["clipped"] == pytest.approx(0.5)
    v1, v2 = logits(1, 1, 2, 3), logits(2, 1, 2, 3)
    consensus_only, info = avsd_loss(s, [v1, v2], ratio=0.0)  # no residual is kept
    c = (F.log_softmax(v1, -1) + F.log_softmax(v2, -1)) / 2 - F.log_softmax(s, -1)
    tgt = F.log_softmax(F.log_softmax(s, -1) + c, -1)
    assert consensus_only.item() == pytest.approx((tgt.exp() * (tgt - F.log_softmax(s, -1))).sum(-1).mean().item())
    assert info["kept"] == 0
