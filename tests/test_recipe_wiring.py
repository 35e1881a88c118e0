"""Recipes wired right: each term reads the networks and samples its paper says, checked by a short
instrumented run rather than a smoke test.

A recipe can "run" with its critic trained on the data instead of the generator's samples, with real
and fake handed to the discriminator the other way round, with an EMA target that never moves, or with
the online network returned in place of the averaged one. The losses' own tests cannot see any of
that. Here the recipe runs for a step or two on a tiny experiment while the loss functions it calls
are wrapped to record their inputs.
"""

import copy

import pytest
import torch
from spies import record

from distill_lab.core.registry import get_recipe
from distill_lab.core.scale import Scale
from distill_lab.methods.step import consistency, dmd
from distill_lab.methods.step.students import OneStepGenerator
from distill_lab.toy2d.experiment import Toy2D

DATA_VALUE = 7.0  # every data batch is this constant: no generator sample or noise is equal to it


@pytest.fixture(scope="module")
def tiny_exp():
    sc = Scale("ci", teacher_steps=30, width=32, depth=2, batch=64, student_steps=2, eval_n=128, n_proj=16,
               device="cpu")
    return Toy2D("8gaussians", scale=sc, cache=False, progress=False)


def noise_recording(tiny_exp):
    """A copy of the experiment whose ``noise_batch`` keeps every noise it hands out, in order."""
    exp, noises = copy.copy(tiny_exp), []

    def noise_batch(n=None):
        z = torch.randn(n or 64, 2)
        noises.append(z)
        return z

    exp.noise_batch = noise_batch
    return exp, noises


def test_dmd2_critics_read_generator_samples_and_the_discriminator_gets_real_data(tiny_exp, monkeypatch):
    exp, noises = noise_recording(tiny_exp)
    exp.data_batch = lambda n=None: torch.full((n or 64, 2), DATA_VALUE)
    calls = {k: [] for k in ("fake_score_loss", "gan_discriminator_loss", "dmd_loss", "gan_generator_loss")}
    for k, c in calls.items():
        record(monkeypatch, dmd, k, c)
    torch.manual_seed(0)
    gen0 = OneStepGenerator(exp.student_net(1)).eval()  # the generator the recipe starts from
    torch.manual_seed(0)
    gen = get_recipe("dmd2").train(exp, steps=1, batch=16, critic_updates=2)

    assert len(calls["fake_score_loss"]) == 2 and len(calls["gan_discriminator_loss"]) == 2
    assert len(calls["dmd_loss"]) == 1 and len(calls["gan_generator_loss"]) == 1
    # critic updates: the fake score and the discriminator's negatives are the generator's samples of
    # the recorded noise (detached); the discriminator's positives are the data
    for k in range(2):
        with torch.no_grad():
            expected = gen0(noises[k])
        (fake_net, xg), _, _ = calls["fake_score_loss"][k]
        assert fake_net is gen.fake and not xg.requires_grad
        torch.testing.assert_close(xg, expected)
        (disc, x_fake, x_real), kw, _ = calls["gan_discriminator_loss"][k]
        assert disc is gen.disc
        torch.testing.assert_close(x_fake, expected)
        assert bool((x_real == DATA_VALUE).all())
    # generator update: DMD's gradient and the GAN term read the same fresh samples, with their graph,
    # DMD's fake score is the critic just trained, the teacher's velocity the real score
    (x, real_v, fake_v), _, _ = calls["dmd_loss"][0]
    assert x.requires_grad and fake_v is gen.fake and real_v == exp.velocity
    torch.testing.assert_close(x.detach(), gen0(noises[2]).detach())
    (disc, xg_gen), _, _ = calls["gan_generator_loss"][0]
    assert disc is gen.disc and xg_gen is x


def test_consistency_distillation_returns_the_ema_target_moved_at_its_rate(tiny_exp, monkeypatch):
    """CD's target ``f_ema <- mu f_ema + (1 - mu) f`` after every step, read as the loss's target
    (second argument) and returned as the sampler; the online network is the one the loss trains."""
    updates, losses = [], []

    def ema_spy(target, source, decay):
        before = [p.detach().clone() for p in target.parameters()]
        consistency.ema_update.__wrapped_original__(target, source, decay)
        updates.append((target, source, decay, before, [p.detach().clone() for p in source.parameters()],
                        [p.detach().clone() for p in target.parameters()]))

    ema_spy.__wrapped_original__ = consistency.ema_update
    monkeypatch.setattr(consistency, "ema_update", ema_spy)
    record(monkeypatch, consistency, "cd_loss", losses)
    torch.manual_seed(0)
    out = get_recipe("cd").train(tiny_exp, steps=3, batch=16, ema=0.7)
    assert len(updates) == 3 and len(losses) == 3
    for (target, source, decay, before, src, after), ((f, f_ema, *_), _, _) in zip(updates, losses):
        assert decay == 0.7
        assert target is out and f_ema is out  # the loss's target is the averaged network, which is returned
        assert source is f and source is not target  # and the online network is what the loss trains
        assert all(p.requires_grad for p in f.parameters()) and not any(p.requires_grad for p in out.parameters())
        for b, s, a in zip(before, src, after):
            torch.testing.assert_close(a, 0.7 * b + 0.3 * s)
    assert any(not torch.equal(b, a) for b, a in zip(updates[0][3], updates[-1][5]))  # the target moved


def test_progressive_rounds_hand_each_student_on_as_the_next_frozen_teacher(tiny_exp, monkeypatch):
    """Salimans & Ho's rounds: round k's student starts as a copy of its teacher, trains on the teacher's
    two steps of size h = 1 / (2 n) at the student's grid times i / n, and becomes round k + 1's frozen
    teacher; the first teacher is the flow teacher."""
    from distill_lab.methods.step import trajectory

    calls = []
    fn = trajectory.progressive_loss

    def spy(student, teacher, x, t, h):
        calls.append(dict(student=student, teacher=teacher, t=t.clone(), h=h,
                          s_params=[p.detach().clone() for p in student.parameters()],
                          t_params=[p.detach().clone() for p in teacher.parameters()]))
        return fn(student, teacher, x, t, h)

    monkeypatch.setattr(trajectory, "progressive_loss", spy)
    torch.manual_seed(0)
    out = get_recipe("progressive").train(tiny_exp, steps=6, start=8, batch=16, round_weights=[1, 1, 1])
    assert sorted(int(k) for k in out.nets) == [1, 2, 4]
    rounds = [calls[0:2], calls[2:4], calls[4:6]]
    assert len(calls) == 6
    for k, (n, rc) in enumerate(zip((4, 2, 1), rounds)):
        first = rc[0]
        assert first["student"] is out.nets[str(n)] and all(c["student"] is first["student"] for c in rc)
        assert all(c["h"] == 1.0 / (2 * n) for c in rc)
        assert all(bool(((c["t"] * n) == (c["t"] * n).round()).all()) and float(c["t"].max()) < 1.0 for c in rc)
        for a, b in zip(first["s_params"], first["t_params"]):  # the student starts as its teacher
            torch.testing.assert_close(a, b)
        teacher = first["teacher"]
        if k == 0:
            assert teacher is tiny_exp.teacher
        else:
            prev = out.nets[str(2 * n)]
            assert teacher is not prev and not any(p.requires_grad for p in teacher.parameters())
            for a, b in zip(teacher.parameters(), prev.parameters()):  # the previous round's final student
                torch.testing.assert_close(a, b)
            assert any(not torch.equal(a, b) for a, b in zip(rounds[k - 1][0]["s_params"], prev.parameters()))


@pytest.mark.parametrize("name, source", [("word_kd", "data"), ("seq_kd", "teacher"), ("gkd_fkl", "student"),
                                          ("minillm", "mixed"), ("sft", "data")])
def test_llm_recipes_score_one_batch_with_both_models(name, source, monkeypatch):
    """Every LLM recipe's step: the completions come from the recipe's source (the data, the teacher's
    greedy outputs, the student's own samples, the teacher-mixed samples), the student scores them with
    gradient and, where the loss needs it, the teacher scores the very same completions without."""
    from test_llm import _tiny_scale

    from distill_lab.llm import LLMTask
    from distill_lab.llm import recipes as llm_recipes
    from distill_lab.llm.sft import build_gpt
    from distill_lab.llm.tasks import get_task

    ts = _tiny_scale("sort")
    torch.manual_seed(0)
    exp = LLMTask("sort", "ci", teacher=build_gpt(get_task("sort"), ts.teacher).eval(), task_scale=ts, progress=False)
    scored = []
    score = llm_recipes.score

    def spy(model, task, batch, privileged=False):
        out = score(model, task, batch, privileged)
        scored.append((model, batch, out.requires_grad, privileged))
        return out

    monkeypatch.setattr(llm_recipes, "score", spy)
    torch.manual_seed(0)
    student = get_recipe(name).train(exp)
    steps = student.train_info["steps"]
    per_step = 1 if name in ("sft", "seq_kd") else 2
    assert len(scored) == per_step * steps
    for k in range(steps):
        (m_s, c_s, grad_s, _), *rest = scored[per_step * k: per_step * (k + 1)]
        assert m_s is student and grad_s and c_s.source == ("teacher" if source == "teacher" else source)
        if rest:
            (m_t, c_t, grad_t, priv), = rest
            assert m_t is exp.teacher and c_t is c_s and not grad_t and priv == exp.privileged


def test_anyflow_fake_score_reads_the_students_backward_simulated_samples(tiny_exp, monkeypatch):
    """AnyFlow's DMD stage: the fake score is fitted to the student's own jump from its visited state
    (detached), and DMD's gradient reaches the student through a fresh jump, with the teacher as the
    real score and the fitted fake score as the fake one."""
    from distill_lab.methods.step.students import FlowMap

    exp, noises = noise_recording(tiny_exp)
    calls = {k: [] for k in ("fake_score_loss", "dmd_loss")}
    for k, c in calls.items():
        record(monkeypatch, dmd, k, c)
    torch.manual_seed(0)
    student0 = FlowMap(exp.student_net(2)).eval()  # the map the recipe starts from
    torch.manual_seed(0)
    student = get_recipe("anyflow").train(exp, steps=1, onpolicy_frac=1.0, critic_updates=1, nfes=(1,))
    assert len(calls["fake_score_loss"]) == 1 and len(calls["dmd_loss"]) == 1
    ones, zeros = torch.ones(len(noises[0])), torch.zeros(len(noises[0]))
    (fake_net, x_hat), _, _ = calls["fake_score_loss"][0]
    assert fake_net is student.fake and not x_hat.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(x_hat, student0(noises[0], zeros, ones))
    (x, real_v, fake_v), _, _ = calls["dmd_loss"][0]
    assert x.requires_grad and fake_v is student.fake and real_v == exp.velocity
    torch.testing.assert_close(x.detach(), student0(noises[1], zeros, ones).detach())
