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

    monkeypatch.setattr(ssm_distill, "state_alignment_loss", spy)
    st = ssm_distill.distill_ssm(teacher, task, rank=2, steps=2, state_weight=0.5, batch=4, progress=False)
    assert seen == [(2, True, True)] * 2 and all(h > 50 for h in st.train_info["loss"])
    assert st.ssms[0].rank == 2 and st.config.state == teacher.config.state and teacher.ssms[0].rank is None
    seen.clear()
    plain = ssm_distill.distill_ssm(teacher, task, rank=2, steps=2, state_weight=0.0, batch=4, progress=False)
    assert seen == [] and all(h < 50 for h in plain.train_info["loss"])  # logit-only: no state term
    with pytest.raises(ValueError, match="state_weight"):
        ssm_distill.distill_ssm(teacher, task, rank=2, steps=1, state_weight=-1.0)
