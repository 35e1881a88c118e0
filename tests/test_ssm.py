"""The selective state-space LM and the hidden-state alignment of DLRMamba (issue 13, item 8)."""

from __future__ import annotations

import pytest
import torch

from distill_lab.llm.gpt import generate
from distill_lab.nets.ssm import SelectiveSSM, SSMConfig, SSMLM, state_alignment_loss


def test_the_scan_is_the_recurrence_and_the_transition_is_kept_stable():
    torch.manual_seed(0)
    ssm = SelectiveSSM(4, 3).double()
    with torch.no_grad():
        ssm.A.mul_(10)  # far beyond a stable matrix: the layer rescales it
    A = ssm.transition()
    assert A.abs().sum(1).max() <= 1 + 1e-12
    x = torch.randn(2, 2, 4, dtype=torch.float64)
    y, hs = ssm(x)
    a, bx = torch.sigmoid(ssm.gate(x)), ssm.B(x)
    h1 = bx[:, 0]
    h2 = a[:, 1] * (h1 @ A.T) + bx[:, 1]
    assert torch.allclose(hs[:, 0], h1) and torch.allclose(hs[:, 1], h2) and torch.allclose(y, ssm.C(hs))


def test_a_full_rank_factorisation_of_the_teachers_transition_is_the_teacher():
    torch.manual_seed(0)
    cfg = SSMConfig(vocab_size=11, block_size=16, n_layer=2, n_embd=8, state=4)
    teacher = SSMLM(cfg).double()
    student = SSMLM(SSMConfig(11, 16, 2, 8, 4, rank=4)).double()
    state = {k: v for k, v in teacher.state_dict().items() if not k.endswith(".A")}
    student.load_state_dict(state, strict=False)
    with torch.no_grad():
        for s, t in zip(student.ssms, teacher.ssms):  # diag(d) + U V^T = A exactly, at rank n
            s.d.zero_()
            s.U.copy_(t.A)
            s.V.copy_(torch.eye(4, dtype=torch.float64))
    tokens = torch.randint(0, 11, (3, 9))
    assert torch.allclose(student(tokens), teacher(tokens))
    assert state_alignment_loss(student.last_states, teacher.last_states).item() < 1e-20


def test_low_rank_transitions_have_fewer_parameters():
    dense, low = SelectiveSSM(16, 32), SelectiveSSM(16, 32, rank=4)
    assert low.n_params() < dense.n_params()
    assert dense.n_params() - low.n_params() == 32 * 32 - (2 * 32 * 4 + 32)
    with pytest.raises(ValueError, match="rank"):
        SelectiveSSM(16, 32, rank=33)


def test_the_cache_continues_the_sequence_and_generate_samples_the_model():
    torch.manual_seed(0)
    lm = SSMLM(SSMConfig(11, 16, 2, 8, 4, rank=2)).double()
    tokens = torch.randint(0, 11, (2, 7))
    cache = lm.new_cache()
    parts = torch.cat([lm(tokens[:, :4], cache), lm(tokens[:, 4:], cache)], 1)
    assert torch.allclose(parts, lm(tokens)) and len(cache) == 7
    r = generate(lm, tokens[:, :3], 5, temperature=1.0, eos_id=None)
    assert r.tokens.shape == (2, 8)
    with pytest.raises(ValueError, match="block_size"):
        lm(torch.zeros(1, 17, dtype=torch.long))


def test_state_alignment_pulls_the_student_only_and_averages_layers_and_positions():
    s = [torch.zeros(2, 3, 4, requires_grad=True), torch.zeros(2, 3, 4, requires_grad=True)]
    t = [torch.ones(2, 3, 4, requires_grad=True), 2 * torch.ones(2, 3, 4, requires_grad=True)]
    loss = state_alignment_loss(s, t)
    assert loss.item() == pytest.approx((1 + 4) / 2)
    loss.backward()
    assert t[0].grad is None and s[0].grad is not None and (s[0].grad < 0).all()  # descent moves towards the teacher
    mask = torch.tensor([[True, False, False], [False, False, False]])
    assert state_alignment_loss(s, t, mask).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="one teacher trajectory"):
        state_alignment_loss(s, t[:1])


def test_dlrmamba_distils_a_low_rank_student_with_and_without_the_state_term(monkeypatch):
    from distill_lab.llm import ssm_distill
    from distill_lab.llm.tasks import get_task

    task = get_task("sort")
    torch.manual_seed(0)
    teacher = ssm_distill.train_ssm_teacher(task, 2, batch=4, progress=False, n_embd=8, state=4)
    seen = []
    real = ssm_distill.state_alignment_loss

    def spy(s, t):
        seen.append((len(s), all(not x.requires_grad for x in t), all(x.requires_grad for x in s)))
        return real(s, t) + 100.0  # shifted: the logged loss must carry +100 x the weight

    masks = []
    real_kl = ssm_distill.forward_kl_loss

    def kl_spy(s, t, mask):
        masks.append(mask)
        return real_kl(s, t, mask)

    monkeypatch.setattr(ssm_distill, "state_alignment_loss", spy)
    monkeypatch.setattr(ssm_distill, "forward_kl_loss", kl_spy)
    st = ssm_distill.distill_ssm(teacher, task, rank=2, steps=2, state_weight=0.5, batch=4, progress=False)
    assert seen == [(2, True, True)] * 2 and all(h > 50 for h in st.train_info["loss"])
    assert all(m is not None and m.dtype == torch.bool for m in masks)  # the completion's mask, not every position
    assert all(h > 100 for h in st.train_info["state_alignment"]) and "kd" in st.train_info
    assert st.ssms[0].rank == 2 and st.config.state == teacher.config.state and teacher.ssms[0].rank is None
    seen.clear()
    plain = ssm_distill.distill_ssm(teacher, task, rank=2, steps=2, state_weight=0.0, batch=4, progress=False)
    assert seen == [] and all(h < 50 for h in plain.train_info["loss"])  # logit-only: no state term
    with pytest.raises(ValueError, match="state_weight"):
        ssm_distill.distill_ssm(teacher, task, rank=2, steps=1, state_weight=-1.0)


def test_the_transition_is_scaled_by_its_largest_row_sum_and_only_above_one():
    ssm = SelectiveSSM(2, 2).double()
    with torch.no_grad():
        ssm.A.copy_(torch.tensor([[0.5, 0.4], [0.1, 0.2]]))  # row sums 0.9 and 0.3, all entries 1.2
    assert torch.allclose(ssm.transition(), ssm.A)  # already within the bound: unchanged
    with torch.no_grad():
        ssm.A.copy_(torch.tensor([[1.5, -0.5], [0.1, 0.2]]))  # largest absolute row sum 2
    assert torch.allclose(ssm.transition(), ssm.A / 2)
    assert SelectiveSSM(4, 3, rank=1).transition().shape == (3, 3)  # rank 1 is allowed


def test_parameter_counts_follow_the_architecture():
    dim, n, V, L = 8, 4, 11, 2
    layer = dim * n + n + dim * n + n * dim  # gate (with bias), B and C (without)
    assert SelectiveSSM(dim, n).n_params() == layer + n * n
    lm = SSMLM(SSMConfig(V, 16, L, dim, n))
    per_layer = layer + n * n + 2 * 2 * dim + (dim * 2 * dim + 2 * dim) + (2 * dim * dim + dim)
    assert sum(p.numel() for p in lm.parameters()) == V * dim + L * per_layer + 2 * dim + dim * V  # head: no bias


def test_the_lm_is_pre_norm_residual_blocks_computed_by_hand():
    torch.manual_seed(0)
    lm = SSMLM(SSMConfig(11, 6, 2, 8, 4, rank=2)).double()
    tokens = torch.randint(0, 11, (2, 6))  # exactly block_size positions: allowed
    x = lm.tok(tokens)
    for i in range(2):
        y, _ = lm.ssms[i](lm.norms[2 * i](x))
        x = x + y
        h = lm.norms[2 * i + 1](x)
        x = x + lm.mlps[i][2](torch.nn.functional.gelu(lm.mlps[i][0](h)))
    assert torch.allclose(lm(tokens), lm.head(lm.ln_f(x)))
    assert len(lm.last_states) == 2 and lm.last_states[1].shape == (2, 6, 4)


def test_the_alignment_mask_selects_positions():
    s = [torch.zeros(1, 3, 2)]
    t = [torch.tensor([[[1.0, 1.0], [3.0, 3.0], [5.0, 5.0]]])]
    assert state_alignment_loss(s, t).item() == pytest.approx((1 + 9 + 25) / 3)
    assert state_alignment_loss(s, t, torch.tensor([[False, True, False]])).item() == pytest.approx(9.0)


def test_the_teacher_gets_the_size_it_is_asked_for():
    from distill_lab.llm import ssm_distill
    from distill_lab.llm.tasks import get_task

    task = get_task("sort")
    net = ssm_distill.train_ssm_teacher(task, 1, batch=2, progress=False, n_layer=1, n_embd=8, state=4)
    assert (net.config.n_layer, net.config.n_embd, net.config.state, net.config.rank) == (1, 8, 4, None)
    assert net.config.vocab_size == task.tokenizer.vocab_size and net.config.block_size == task.block_size
