"""Architecture distillation's loss against an independent computation, and its recipe's wiring.

The tests of ``test_arch.py`` see the loss at an exact copy (where only the task term is left) and a
trained student's error; a flipped sign inside the task term, a weight dropped or a term subtracted
passes them. Here each term is recomputed by hand at known weights, and the recipe runs two steps with
the loss and the optimizer wrapped to record what they receive.
"""

import pytest
import torch
from spies import record, record_optimizer
from test_arch import attn_net

from distill_lab.methods import arch
from distill_lab.methods.arch import arch_distill_loss, capture_attention, linear_attention_student


def _pair():
    teacher = attn_net().double()
    return teacher, linear_attention_student(teacher)


def test_each_term_and_their_weighted_sum_against_a_hand_computation():
    teacher, student = _pair()
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.double), torch.randn(3, 3, 8, 8, generator=g,
                                                                                   dtype=torch.double)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.double)
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * x1
    with torch.no_grad(), capture_attention(teacher) as ft:
        vt = teacher(xt, t)
    with torch.no_grad(), capture_attention(student) as fs:
        vs = student(xt, t)
    task = ((vs - (x1 - x0)) ** 2).mean()
    out = ((vs - vt) ** 2).mean()
    feat = sum(((fs[k] - ft[k]) ** 2).mean() for k in ft) / len(ft)
    loss, info = arch_distill_loss(student, teacher, x1, x0, t, w_task=0.3, w_out=0.5, w_feat=0.7)
    for k, want in (("task", task), ("out", out), ("feat", feat)):
        torch.testing.assert_close(info[k], want, rtol=1e-10, atol=0)
    torch.testing.assert_close(loss, 0.3 * task + 0.5 * out + 0.7 * feat, rtol=1e-10, atol=0)
    torch.testing.assert_close(info["loss"], loss.detach())
    default, _ = arch_distill_loss(student, teacher, x1, x0, t)  # the three terms, equal weights
    torch.testing.assert_close(default, task + out + feat, rtol=1e-10, atol=0)


def test_without_feature_matching_the_feature_term_is_not_computed():
    teacher, student = _pair()
    x1 = torch.randn(2, 3, 8, 8, dtype=torch.double)
    _, info = arch_distill_loss(student, teacher, x1, w_feat=0.0)
    assert info["feat"] == 0 and info["out"] > 0
    # and then the two networks need not share their attention layers
    loss, _ = arch_distill_loss(attn_net(attn_levels=(1,)), attn_net(), torch.randn(2, 3, 8, 8), w_feat=0.0)
    assert torch.isfinite(loss)


def test_the_student_is_built_through_the_teachers_own_constructor(monkeypatch):
    """A teacher class with ``from_net`` (the U-Net) builds the student with the requested kind."""
    teacher = attn_net()
    seen = []
    orig = type(teacher).from_net

    def spy(net, *a, **kw):
        seen.append(kw)
        return orig(net, *a, **kw)

    monkeypatch.setattr(type(teacher), "from_net", staticmethod(spy))
    student = linear_attention_student(teacher, kind="softmax")
    assert seen == [{"attn_kind": "softmax"}]
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(student(x, t), teacher(x, t))
    free = linear_attention_student(teacher, freeze_rest=False)
    assert all(p.requires_grad for p in free.parameters())


class _Exp:
    """Just enough of the Toy2D interface for the recipe: a teacher, a data batch, a scale, ``fit``."""

    def __init__(self, teacher):
        self.teacher = teacher
        self.batches = []
        self.scale = type("S", (), {"student_steps": 2, "batch": 5})()

    def data_batch(self, n):
        self.batches.append(n)
        return torch.randn(n, 3, 8, 8)

    def fit(self, step, steps, desc):
        return {k: [float(v)] for i in range(steps) for k, v in step(i).items()}


def test_the_recipe_trains_only_the_attention_with_its_weights_and_learning_rate(monkeypatch):
    teacher = attn_net()
    losses = record(monkeypatch, arch, "arch_distill_loss")
    opts = record_optimizer(monkeypatch)
    exp = _Exp(teacher)
    student, hist = arch.train_linear_attention(exp, lr=0.004, w_task=0.2, w_out=0.3, w_feat=0.4)
    assert len(losses) == 2 and exp.batches == [5, 5]  # the scale's steps and batch by default
    (s, t, x1), kw, _ = losses[0]
    assert s is student and t is teacher and x1.shape[0] == 5
    assert kw == {"w_task": 0.2, "w_out": 0.3, "w_feat": 0.4}
    params, okw = opts[0]
    assert okw["lr"] == 0.004
    assert {id(p) for p in params} == {id(p) for n, p in student.named_parameters() if n.startswith("level_attn.")}
    assert set(hist) == {"loss", "task", "out", "feat"} and not student.training
    losses.clear()
    arch.train_linear_attention(exp, steps=1, batch=3)
    (_, _, x1), kw, _ = losses[0]
    assert x1.shape[0] == 3 and kw == {"w_task": 1.0, "w_out": 1.0, "w_feat": 1.0}
    opts.clear()
    arch.train_linear_attention(exp, steps=1, freeze_rest=False, kind="softmax")
    assert len(opts[0][0]) == len(list(teacher.parameters()))


def test_forward_seconds_times_the_network_itself(monkeypatch):
    """The timer calls ``net(x, t)`` warmup + repeats times, with ``t`` broadcast over the batch."""
    calls = []

    class Net(torch.nn.Module):
        def forward(self, x, t):
            calls.append(t.clone())
            return x

    x = torch.randn(4, 2)
    secs = arch.forward_seconds(Net(), x, 0.25, repeats=3, warmup=2)
    assert secs >= 0 and len(calls) == 5
    assert all(torch.equal(c, torch.full((4,), 0.25)) for c in calls)
    calls.clear()
    tt = torch.rand(4)
    arch.forward_seconds(Net(), x, tt)
    assert len(calls) == 6 and all(torch.equal(c, tt) for c in calls)  # default 1 warmup, 5 repeats
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        arch.forward_seconds(Net(), x, repeats=0)


def test_mixer_seconds_times_each_kind_on_inputs_of_the_asked_shape(monkeypatch):
    shapes = []
    mix = arch.mix_tokens

    def spy(q, k, v, kind):
        shapes.append((kind, tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return mix(q, k, v, kind)

    monkeypatch.setattr(arch, "mix_tokens", spy)
    out = arch.mixer_seconds(16, 4, heads=2, batch=3, repeats=2, warmup=1, fused=False)
    assert set(out) == {"softmax", "linear"} and all(v >= 0 for v in out.values())
    want = (3, 2, 16, 4)
    assert shapes == [(k, want, want, want) for k in ("softmax",) * 3 + ("linear",) * 3]
