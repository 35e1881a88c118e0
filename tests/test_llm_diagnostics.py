"""The gradient-alignment diagnostic (issue 13, item 7): the ideal per-node gradient and its score."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill_lab.llm.config import NetSize
from distill_lab.llm.diagnostics import action_values, alignment, ideal_logit_direction, kd_logit_direction
from distill_lab.llm.sft import build_gpt
from distill_lab.llm.tasks import get_task


def test_the_ideal_direction_is_the_gradient_of_the_success_probability_and_scores_one():
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    Q = torch.rand(3, 6, dtype=torch.float64)
    (F.softmax(z, -1) * Q).sum().backward()
    ideal = ideal_logit_direction(z.detach(), Q)
    assert torch.allclose(ideal, z.grad)
    assert torch.allclose(alignment(ideal, ideal), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(alignment(-ideal, ideal), -torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["forward", "reverse"])
def test_kd_directions_are_the_losses_descent_directions(kind):
    z = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 5, dtype=torch.float64)
    lq, lp = F.log_softmax(z, -1), F.log_softmax(t, -1)
    kl = (lp.exp() * (lp - lq)).sum() if kind == "forward" else (lq.exp() * (lq - lp)).sum()
    kl.backward()
    assert torch.allclose(kd_logit_direction(z.detach(), t, kind), -z.grad)


def test_a_teacher_sure_of_the_only_winning_token_points_exactly_where_success_lies():
    for seed in range(20):
        z = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        k = torch.tensor([2, 0, 6, 3])
        Q = F.one_hot(k, 7).double()  # one token a node wins, every other loses
        teacher = torch.log(Q.clamp(min=1e-300))
        score = alignment(kd_logit_direction(z, teacher, "forward"), ideal_logit_direction(z, Q))
        assert torch.allclose(score, torch.ones(4, dtype=torch.float64))  # p - q = (q_k)^-1 q ⊙ (Q - V)
        # a teacher sure of a loser j: the cosine has the sign of |q|^2 - q_j - q_k, negative once the student
        # leans to the winner (moving mass off a third loser can otherwise still help)
        wrong = torch.log(F.one_hot(torch.tensor([1, 1, 1, 1]), 7).double().clamp(min=1e-300))
        q = z.softmax(-1)
        sign = torch.sign((q * q).sum(-1) - q[:, 1] - q.gather(1, k[:, None])[:, 0])
        got = alignment(kd_logit_direction(z, wrong, "forward"), ideal_logit_direction(z, Q))
        assert torch.equal(torch.sign(got), sign) and (got < 1 - 1e-6).all()
        leaning = z.clone()
        leaning[torch.arange(4), k] = z.max(-1).values + 3.0  # the winner holds most of the mass
        assert (alignment(kd_logit_direction(leaning, wrong, "forward"), ideal_logit_direction(leaning, Q)) < 0).all()
    with pytest.raises(ValueError, match="kind"):
        kd_logit_direction(z, teacher, "jsd")


def test_action_values_are_success_rates_of_rollouts_and_an_early_end_fails():
    task = get_task("sort")
    torch.manual_seed(0)
    net = build_gpt(task, NetSize(1, 2, 16))
    problem = task.problems(1, "train", torch.Generator().manual_seed(0))[0]
    cands = [task.tokenizer.eos_id] + task.tokenizer.encode(problem.target[:1])
    a = action_values(net, task, problem, [], cands, n=4, generator=torch.Generator().manual_seed(1))
    b = action_values(net, task, problem, [], cands, n=4, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2,) and torch.equal(a, b) and a[0] == 0 and 0 <= a[1] <= 1
    full = task.tokenizer.encode(problem.target)  # the whole right completion, ended: success 1
    done = action_values(net, task, problem, full, [task.tokenizer.eos_id], n=1)
    assert done.tolist() == [1.0]


def test_directions_and_scores_act_on_the_last_dimension_of_any_shape():
    g = torch.Generator().manual_seed(3)
    z, t = torch.randn(2, 3, 5, generator=g, dtype=torch.float64), torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    Q = torch.rand(2, 3, 5, generator=g, dtype=torch.float64)
    for kind in ("forward", "reverse"):
        d, i = kd_logit_direction(z, t, kind), ideal_logit_direction(z, Q)
        score = alignment(d, i)
        assert score.shape == (2, 3)
        for a in range(2):
            for b in range(3):  # node by node, as flat vectors
                want = torch.dot(d[a, b], i[a, b]) / (d[a, b].norm() * i[a, b].norm())
                assert score[a, b].item() == pytest.approx(want.item())
                assert torch.allclose(d[a, b], kd_logit_direction(z[a, b], t[a, b], kind))
                assert torch.allclose(i[a, b], ideal_logit_direction(z[a, b], Q[a, b]))
