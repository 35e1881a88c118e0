"""Self-distillation with privileged information on the tiny GPT (issue 13, items 1 to 4): the teacher
view's prompt, the warm start on both views, the step-aligned critique, the self-teacher's weights, the
binary-reward loss, and the recipes' wiring. Known answers: identical views give zero loss and gradient;
the critique marks exactly the failing step; the EMA teacher moves by exactly ``1 - decay``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from distill_lab.core.registry import get_recipe, recipes
from distill_lab.llm.config import llm_scale
from distill_lab.llm import self_recipes as SR
from distill_lab.llm.rollout import Completions, score
from distill_lab.llm.selfdistill import MARK, SelfDistillTask, critique_focus, self_scale, with_reference
from distill_lab.llm.tasks import PAD, get_task
from distill_lab.methods.kd.privileged import clipped_forward_kl, sequence_pg_loss
from distill_lab.methods.kd.token import on_policy_pg_loss
from test_llm import _tiny_scale


def _exp(task="mult", steps=3, **kw):
    ts = _tiny_scale(task)
    ts = replace(ts, task_kwargs={**ts.task_kwargs, **({"digits_a": 2, "digits_b": 2} if task == "mult" else {})})
    return SelfDistillTask(task, "ci", task_scale=ts, progress=False, steps=steps, **kw)


@pytest.fixture(scope="module")
def mult():
    return _exp()


# ------------------------------------------------------------------ the teacher view
def test_the_teacher_view_reveals_a_share_of_the_reference_at_one_length():
    p = get_task("mult", digits_a=2, digits_b=2).write(12, 34)
    full, none, half = (with_reference(p, r) for r in (1.0, 0.0, 0.5))
    assert full.privileged_prompt == p.prompt + MARK + p.target
    assert none.privileged_prompt == p.prompt + MARK + PAD * len(p.target)
    k = round(0.5 * len(p.target))
    assert half.privileged_prompt == p.prompt + MARK + p.target[:k] + PAD * (len(p.target) - k)
    assert full.prompt == p.prompt and full.target == p.target  # the student view is unchanged
    with pytest.raises(ValueError, match="width"):
        with_reference(p, 1.0, width=3)
    with pytest.raises(ValueError, match="rho"):
        with_reference(p, 1.5)


def test_problems_carry_the_exposure_asked_for(mult):
    torch.manual_seed(0)
    for rho in (0.0, 0.5, 1.0):
        for p in mult.problems(4, rho=rho):
            assert p.privileged_prompt == with_reference(replace(p, teacher_prompt=None), rho, mult.width).privileged_prompt
    assert all(p.privileged_prompt.endswith(p.target) for p in mult.eval_problems)  # evaluation: whole reference
    enc = mult.task.encode_prompts(mult.problems(3, rho=0.3), privileged=True)
    assert enc.shape == (3, mult.task.prompt_len + 1 + mult.width)


def test_self_distillation_refuses_tasks_with_their_own_privileged_prompt_and_bad_settings():
    for task in ("star", "mult_short"):
        with pytest.raises(ValueError, match="self-distillation|runs on"):
            SelfDistillTask(task, "ci", progress=False, task_scale=_tiny_scale(task))
    with pytest.raises(ValueError, match="view_share"):
        _exp(view_share=1.0)
    with pytest.raises(ValueError, match="pool"):
        _exp(pool=0)
    with pytest.raises(ValueError, match="runs on"):
        self_scale("star")


def test_the_warm_start_is_one_per_seed_and_reads_both_views(mult):
    torch.manual_seed(3)
    a, b = mult.student(), mult.student()
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)
    c = Completions(mult.eval_problems[:2], mult.task.encode_targets(mult.eval_problems[:2]),
                    mult.task.encode_targets(mult.eval_problems[:2]) != 0, None, "data")
    with torch.no_grad():
        plain, priv = score(a, mult.task, c), score(a, mult.task, c, privileged=True)
    assert plain.shape == priv.shape and not torch.allclose(plain, priv)  # the views read different prompts


def test_stray_swaps_a_share_of_the_trained_tokens_only(mult):
    probs = mult.problems(64)
    c = Completions(probs, mult.task.encode_targets(probs), mult.task.encode_targets(probs) != 0, None, "data")
    mult.stray_share = 0.3
    try:
        torch.manual_seed(0)
        s = mult.stray(c)
    finally:
        mult.stray_share = 0.1
    changed = s.tokens != c.tokens
    assert not changed[~c.mask].any()  # padding and what follows the end token untouched
    share = changed[c.mask].float().mean().item()
    assert 0.15 < share < 0.3  # 0.3 drawn, less the swaps that drew the same character
    alphabet = {t for p in probs for t in mult.task.tokenizer.encode(p.target)}
    assert set(s.tokens[changed].tolist()) <= alphabet
    mult.stray_share = 0.0
    try:
        assert mult.stray(c) is c
    finally:
        mult.stray_share = 0.1


# ------------------------------------------------------------------ the critique
def _ids(task, texts, n):
    tok = task.tokenizer
    return torch.tensor([(tok.encode(t) + [tok.eos_id] + [tok.pad_id] * n)[:n] for t in texts])


def test_the_critique_marks_exactly_the_first_failing_step():
    task = get_task("mult", digits_a=2, digits_b=2)
    p = task.write(12, 34)  # target 8400+0630>8040
    wrong_p1 = p.target[:6] + "9" + p.target[7:]
    wrong_both = "1" + p.target[1:6] + "9" + p.target[7:]
    texts = [p.target, wrong_p1, wrong_both, p.target[:3], p.target[:-1] + "7"]
    f = critique_focus(task, [p] * 5, _ids(task, texts, 16))
    assert f[0].sum() == 0  # right: no token blamed
    assert f[1].nonzero().flatten().tolist() == [4, 5, 6, 7, 8]  # "+0930": the second step only
    assert f[2].nonzero().flatten().tolist() == [0, 1, 2, 3]  # the first failing step, not the later one
    assert f[3].nonzero().flatten().tolist() == [0, 1, 2]  # a cut first step is the failing one
    assert f[4].nonzero().flatten().tolist() == list(range(9, 14))  # the answer step
    stopped = critique_focus(task, [p], _ids(task, [p.target[:9]], 16))  # stopped before the answer
    assert stopped[0].nonzero().flatten().tolist() == [9]  # its end token is the mistake


def test_the_sorting_critique_is_per_digit_and_a_task_without_one_is_refused():
    task = get_task("sort", n=4)
    p = task.draw(torch.Generator().manual_seed(1))
    wrong = p.target[:2] + ("9" if p.target[2] != "9" else "0") + p.target[3:]
    assert task.critique(p, p.target) is None and task.critique(p, wrong) == 2
    assert task.critique(p, p.target[:2]) == 2 and task.critique(p, p.target + "1") == len(p.target)
    f = critique_focus(task, [p], _ids(task, [wrong], 8))
    assert f[0].nonzero().flatten().tolist() == [2]
    with pytest.raises(ValueError, match="checker"):
        critique_focus(get_task("star"), [p], _ids(task, [wrong], 8))


# ------------------------------------------------------------------ the self-teacher's weights
def test_the_initial_teacher_is_the_frozen_warm_start_and_current_is_the_student(mult):
    torch.manual_seed(5)
    student = mult.student()
    init = SR.SelfTeacher(mult, "initial")(student)
    assert init is not student and not any(p.requires_grad for p in init.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    for a, b in zip(init.parameters(), mult.student().parameters()):
        assert torch.equal(a, b)  # training the student leaves it as it was
    assert SR.SelfTeacher(mult, "current")(student) is student
    with pytest.raises(ValueError, match="self-teacher"):
        SR.SelfTeacher(mult, "best")
    with pytest.raises(ValueError, match="decay"):
        SR.SelfTeacher(mult, "ema", decay=1.0)


def test_the_ema_teacher_moves_by_one_minus_decay_towards_the_student(mult):
    torch.manual_seed(6)
    start = [p.detach().clone() for p in mult.student().parameters()]
    student = mult.student()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(2.0)
    ema = SR.SelfTeacher(mult, "ema", decay=0.75)
    t = ema(student)
    for a, s0 in zip(t.parameters(), start):
        torch.testing.assert_close(a, s0 + 0.25 * 2.0)
    t = ema(student)  # a second step: 0.75 of the gap left, closed by another quarter
    for a, s0 in zip(t.parameters(), start):
        torch.testing.assert_close(a, s0 + 2.0 * (1 - 0.75 ** 2))


# ------------------------------------------------------------------ the binary-reward loss
def _logits(seed, B=3, T=4, V=6):
    return torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_sequence_pg_loss_is_the_sequence_advantage_times_each_tokens_log_likelihood():
    s = _logits(0).requires_grad_()
    tokens = torch.tensor([[1, 2, 3, 0], [4, 4, 0, 0], [5, 1, 2, 3]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)
    loss, _ = sequence_pg_loss(s, tokens, mask, adv)
    logq = torch.log_softmax(s, -1).gather(-1, tokens[..., None]).squeeze(-1)
    want = -(adv[:, None] * logq)[mask].sum() / mask.sum()
    torch.testing.assert_close(loss, want.float() if loss.dtype == torch.float32 else want)
    loss.backward()
    assert s.grad[2].abs().max() == 0  # zero advantage: no push
    s2 = _logits(0).requires_grad_()
    sequence_pg_loss(s2, tokens, mask, torch.zeros(3))[0].backward()
    assert s2.grad.abs().max() == 0
    with pytest.raises(ValueError, match="one number a sequence"):
        sequence_pg_loss(s, tokens, mask, torch.zeros(2))
    a = adv.clone().requires_grad_()
    sequence_pg_loss(_logits(0).requires_grad_(), tokens, mask, a)[0].backward()
    assert a.grad is None  # the advantage is under stop-gradient


def test_a_right_rollouts_critique_leaves_it_alone_and_identical_views_teach_nothing():
    s, t = _logits(1), _logits(2)
    tokens = torch.randint(0, 6, (3, 4), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 4, dtype=torch.bool)
    focus = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.float64)
    x = s.clone().requires_grad_()
    on_policy_pg_loss(x, t, tokens, mask, weights=focus)[0].backward()
    assert x.grad[0].abs().max() == 0 and x.grad[2].abs().max() == 0 and x.grad[1, 1:3].abs().max() > 0
    assert x.grad[1, [0, 3]].abs().max() == 0
    y = s.clone().requires_grad_()
    loss = on_policy_pg_loss(y, y.detach(), tokens, mask, weights=focus)[0]
    loss.backward()
    assert abs(loss.item()) < 1e-12 and y.grad.abs().max() < 1e-12


# ------------------------------------------------------------------ the recipes
SELF_RECIPES = [r.name for r in recipes("llm_self")]


def test_every_self_distillation_recipe_is_on_its_track_with_its_paper():
    assert set(SELF_RECIPES) == {"reference_sft", "opsd", "pw_opsd", "opsd_rl", "pi_distill", "atesd",
                                 "feedback_reward", "feedback_critique", "unisd", "avsd"}
    assert all(get_recipe(n).paper for n in SELF_RECIPES)


@pytest.mark.parametrize("name", SELF_RECIPES)
def test_each_recipe_trains_the_student_view_for_its_steps(mult, name):
    torch.manual_seed(0)
    before = [p.detach().clone() for p in mult.student().parameters()]
    st = get_recipe(name).train(mult, steps=2)
    assert st.train_info["steps"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(st.parameters(), before))
    assert 0.0 <= mult.evaluate(st)["accuracy"] <= 100.0


def _spy(monkeypatch, fn_name):
    seen = []
    real = getattr(SR, fn_name)

    def spy(*a, **k):
        seen.append((a, k))
        return real(*a, **k)

    monkeypatch.setattr(SR, fn_name, spy)
    return seen


def test_opsd_reads_the_exposure_and_pw_opsd_weights_the_positions(mult, monkeypatch):
    drawn = []
    real = mult.problems
    monkeypatch.setattr(mult, "problems", lambda n=None, rho=None: drawn.append(rho) or real(n, rho))
    seen = _spy(monkeypatch, "clipped_forward_kl")
    torch.manual_seed(0)
    get_recipe("opsd").train(mult, steps=1, rho=0.25, clip=0.5)
    assert 0.25 in drawn and seen[-1][1]["clip"] == 0.5 and seen[-1][1]["weights"] is None
    get_recipe("pw_opsd").train(mult, steps=1)
    a, k = seen[-1]
    mask = a[2]
    w = k["weights"]
    torch.testing.assert_close(w, SR.position_weights(mask, 1.0))


def test_opsd_scores_the_teacher_view_with_the_teachers_weights(mult, monkeypatch):
    calls = []
    real = SR.distill

    def spy(exp, name, loss, source="data", **k):
        calls.append((source, k.get("teacher")))
        return real(exp, name, loss, source, **k)

    monkeypatch.setattr(SR, "distill", spy)
    torch.manual_seed(0)
    get_recipe("opsd").train(mult, steps=1, teacher="current")
    source, teacher = calls[-1]
    s = mult.student()
    assert source == "student" and teacher(s) is s
    get_recipe("pi_distill").train(mult, steps=1)
    assert calls[-1][0] == "teacher"  # pi-Distill learns on the teacher view's samples


def test_pi_distill_is_alpha_times_the_teacher_views_likelihood_plus_the_detached_distillation(mult, monkeypatch):
    """On data completions (every reward 1) the loss and its gradient equal, exactly,
    ``alpha * CE(teacher view) + (1 - alpha) * clipped KL(sg teacher view || student view)``: a flipped sign,
    a swapped weight or a teacher view left undetached in the distillation term fails."""
    from distill_lab.methods.kd.token import token_ce_loss

    got = {}

    def spy(exp, name, loss, source="data", **k):
        assert source == "teacher" and k["pass_model"] and not k["teacher_logits"]
        torch.manual_seed(3)
        probs = exp.problems(4)
        tok = exp.task.encode_targets(probs)
        c = Completions(probs, tok, tok != 0, None, "teacher")
        model, ref = exp.student(), exp.student()
        out = loss(score(model, exp.task, c), None, c, model=model)[0]
        out.backward()
        t_ref = score(ref, exp.task, c, privileged=True)
        want = (got["alpha"] * token_ce_loss(t_ref, c.tokens, c.mask)
                + (1 - got["alpha"]) * clipped_forward_kl(score(ref, exp.task, c), t_ref.detach(), c.mask)[0])
        want.backward()
        got["pairs"] = [(out, want)] + [(a.grad, b.grad) for a, b in zip(model.parameters(), ref.parameters())]
        return model

    monkeypatch.setattr(SR, "distill", spy)
    for alpha in (0.0, 0.3, 1.0):
        got["alpha"] = alpha
        torch.manual_seed(0)
        SR.pi_distill(mult, alpha=alpha)
        for a, b in got["pairs"]:
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="alpha"):
        SR.pi_distill(mult, alpha=1.5)


def test_atesd_holds_each_exposure_for_its_window(mult):
    torch.manual_seed(0)
    st = get_recipe("atesd").train(mult, steps=5, window=2)
    rhos = st.train_info["rho"]
    assert len(rhos) == 3 and all(0 < r < 1 for r in rhos)
    hist = st.train_info["history"]
    assert hist["rho"][0] == rhos[0]


def test_feedback_critique_matches_only_the_failing_steps_tokens(mult, monkeypatch):
    seen = _spy(monkeypatch, "clipped_forward_kl")
    focus = _spy(monkeypatch, "critique_focus")
    torch.manual_seed(0)
    get_recipe("feedback_critique").train(mult, steps=1, clip=0.7)
    a, k = seen[-1]
    (task, problems, tokens), _ = focus[-1]
    torch.testing.assert_close(k["weights"], critique_focus(task, problems, tokens))
    assert k["clip"] == 0.7 and tokens.shape == a[2].shape


def test_feedback_reward_draws_groups_of_the_same_problem(mult, monkeypatch):
    seen = _spy(monkeypatch, "group_advantages")
    torch.manual_seed(0)
    get_recipe("feedback_reward").train(mult, steps=1, group=4)
    r, group = seen[-1][0]
    assert group == 4 and r.shape == (mult.batch // 4 * 4,)


def test_policy_gradient_recipes_default_to_a_tenth_of_the_learning_rate(mult, monkeypatch):
    lrs = []
    real = SR.distill
    monkeypatch.setattr(SR, "distill", lambda exp, name, loss, source="data", **k: lrs.append(k["lr"]) or real(
        exp, name, loss, source, **{**k, "steps": 1}))
    torch.manual_seed(0)
    for n in ("opsd_rl", "feedback_reward"):
        get_recipe(n).train(mult)
    assert lrs == [pytest.approx(SR.PG_LR * mult.lr)] * 2
    get_recipe("feedback_critique").train(mult)
    assert lrs[-1] is None  # a distribution-matching recipe: the experiment's own rate
    get_recipe("opsd_rl").train(mult, lr=1e-3)
    assert lrs[-1] == 1e-3


# ------------------------------------------------------------------ PW-OPSD's branch viability
class SortOracle(torch.nn.Module):
    """A model that sorts perfectly: after ``=`` it writes ``>`` and the prompt's digits sorted, whatever
    it wrote before (it reads the digits before ``=``; a teacher-view ``#...`` suffix is skipped)."""

    def __init__(self, task):
        super().__init__()
        self.task, self.tok = task, task.tokenizer
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def new_cache(self, batch):
        return []  # the tokens read so far

    def forward(self, x, cache=None):
        if cache is not None:
            cache.append(x)
            return self.forward(torch.cat(cache, 1))[:, -x.shape[1]:]
        B, T = x.shape
        out = torch.full((B, T, self.tok.vocab_size), -30.0)
        eq, mark = self.tok.index["="], self.tok.index["#"]
        for b in range(B):
            row = x[b].tolist()
            e = row.index(eq)
            digits = "".join(self.tok.chars[i] for i in row[1:e])
            start = e + 1 + (1 + len(digits) + 1 if mark in row else 0)  # after "#" and the reference
            target = ">" + "".join(sorted(digits))
            for t in range(start - 1, T):
                k = t - (start - 1)
                nxt = self.tok.eos_id if k >= len(target) else self.tok.index[target[k]]
                out[b, t, nxt] = 30.0
        return out + 0 * self.dummy


def test_branch_viability_is_true_until_the_rollouts_first_mistake():
    from distill_lab.llm.diagnostics import branch_viability
    from distill_lab.llm.selfdistill import with_reference

    task = get_task("sort", n=4)
    p = with_reference(task.draw(torch.Generator().manual_seed(2)), 1.0)
    good = p.target
    bad = good[:3] + ("9" if good[3] != "9" else "0") + good[4:]  # the fourth token wrong
    oracle = SortOracle(task)
    toks = _ids(task, [good, bad], len(good) + 1)
    mask = torch.ones_like(toks, dtype=torch.bool)
    d = branch_viability(oracle, oracle, task, [p, p], toks, mask)
    n = len(good) + 1
    assert d["viable"][:n].all()  # a right rollout: every teacher token viable
    assert d["viable"][n:n + 4].all() and not d["viable"][n + 4:].any()  # up to the mistake, then never
    assert not d["agrees"][n + 3] and d["agrees"][n + 2]  # the teacher corrects the wrong token
    torch.testing.assert_close(d["position"][:n], torch.linspace(0, 1, n))
    assert d["entropy"].max() < 1e-6


def test_auroc_is_the_mann_whitney_probability():
    from distill_lab.llm.diagnostics import auroc

    label = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    assert auroc(label.float(), label) == 1.0 and auroc(-label.float(), label) == 0.0
    assert auroc(torch.zeros(6), label) == 0.5
    s = torch.tensor([0.9, 0.2, 0.5, 0.1, 0.5, 0.3])
    pairs = [(a, b) for a in s[label] for b in s[~label]]
    want = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert auroc(s, label) == pytest.approx(want)
    with pytest.raises(ValueError, match="positives and negatives"):
        auroc(s, torch.ones(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="one score a label"):
        auroc(s, label[:3])


# ------------------------------------------------------------------ several views: UniSD and AVSD
def test_agreement_target_is_the_views_mean_weighted_by_their_agreement():
    a, b = torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)
    a[..., 0], b[..., 2] = 9.0, 9.0
    target, w = SR.agreement_target([a, a, b])
    torch.testing.assert_close(target.exp(), (2 * a.softmax(-1) + b.softmax(-1)) / 3)
    torch.testing.assert_close(w, torch.full((1, 2), 2 / 3))
    same, w1 = SR.agreement_target([a, a])
    torch.testing.assert_close(same.exp(), a.softmax(-1))
    assert (w1 == 1).all()


def test_the_gpt_keeps_its_last_hidden_states_for_feature_distillation():
    from test_llm import tiny_gpt

    m = tiny_gpt()
    x = torch.randint(0, 48, (2, 7), generator=torch.Generator().manual_seed(0))
    logits = m(x)
    assert m.last_hidden.shape == (2, 7, 16)
    torch.testing.assert_close(m.head(m.last_hidden), logits)


def _one_batch_loss(mult, monkeypatch, recipe, **options):
    """Call ``recipe`` with ``distill`` replaced: its loss is evaluated once on a fixed batch of data
    completions, the student being the warm start and the teacher the recipe's own; returns the loss,
    the student's logits and the batch."""
    got = {}

    def fake(exp, name, loss, source="data", teacher=None, pass_model=False, **k):
        torch.manual_seed(1)
        probs = exp.problems(6)
        tok = exp.task.encode_targets(probs)
        c = Completions(probs, tok, tok != 0, None, "student")
        model = exp.student()
        tm = teacher(model)
        s = score(model, exp.task, c)
        with torch.no_grad():
            t = score(tm, exp.task, c, privileged=True)
        s_hidden = model.last_hidden  # score() of the student sets it; the teacher is another module
        out = loss(s, t, c, model=model) if pass_model else loss(s, t, c)
        got.update(loss=out[0], info=out[1], s=s, t=t, c=c, model=model, teacher=tm, s_hidden=s_hidden)
        return model

    monkeypatch.setattr(SR, "distill", fake)
    torch.manual_seed(0)
    recipe(mult, **options)
    return got


OFF = dict(agreement=False, ema=False, contrastive=0.0, features=0.0)


def test_unisd_with_every_part_off_is_opsd(mult, monkeypatch):
    g = _one_batch_loss(mult, monkeypatch, SR.unisd, clip=0.5, **OFF)
    torch.testing.assert_close(g["loss"], clipped_forward_kl(g["s"], g["t"], g["c"].mask, clip=0.5)[0])


def test_unisd_adds_each_part_with_its_weight(mult, monkeypatch):
    from distill_lab.methods.kd.privileged import token_contrastive_loss

    base = _one_batch_loss(mult, monkeypatch, SR.unisd, clip=1.0, **OFF)["loss"]
    P, W = mult.task.prompt_len, mult.width
    g = _one_batch_loss(mult, monkeypatch, SR.unisd, clip=1.0, **{**OFF, "features": 0.3})
    s_h = g["s_hidden"][:, P - 1:]
    with torch.no_grad():
        score(g["teacher"], mult.task, g["c"], privileged=True)
        t_h = g["teacher"].last_hidden[:, P + W:]
    assert s_h.shape == t_h.shape
    torch.testing.assert_close(g["teacher"].head(t_h), g["t"])  # the slice lines up with the rollout's tokens
    mse = (((s_h - t_h) ** 2).mean(-1))[g["c"].mask].mean()
    torch.testing.assert_close(g["loss"], base + 0.3 * mse)
    g = _one_batch_loss(mult, monkeypatch, SR.unisd, clip=1.0, tau=0.2, **{**OFF, "contrastive": 0.5})
    want = base + 0.5 * token_contrastive_loss(g["s_hidden"][:, P - 1:], t_h, g["c"].mask, 0.2)[0]
    torch.testing.assert_close(g["loss"], want)


def test_unisd_agreement_matches_the_views_mean_with_agreement_weights(mult, monkeypatch):
    g = _one_batch_loss(mult, monkeypatch, SR.unisd, clip=None, views=(1.0, 0.5), **{**OFF, "agreement": True})
    views = SR.view_logits(g["teacher"], mult, g["c"], (1.0, 0.5))
    torch.testing.assert_close(views[0], g["t"])  # the whole reference's view is the loop's teacher view
    target, w = SR.agreement_target(views)
    torch.testing.assert_close(g["loss"], clipped_forward_kl(g["s"], target, g["c"].mask, weights=w)[0])
    assert 0 < float(g["info"]["agreement"]) <= 1


def test_unisd_ema_teacher_moves_and_the_initial_one_does_not(mult, monkeypatch):
    seen = _spy(monkeypatch, "SelfTeacher")
    torch.manual_seed(0)
    get_recipe("unisd").train(mult, steps=1, ema=True, decay=0.9)
    assert seen[-1][0][1] == "ema" and seen[-1][0][2] == 0.9
    get_recipe("unisd").train(mult, steps=1)
    assert seen[-1][0][1] == "initial"  # the default: the frozen warm start


def test_avsd_recipe_is_the_avsd_loss_over_its_views(mult, monkeypatch):
    from distill_lab.methods.kd.privileged import avsd_loss

    g = _one_batch_loss(mult, monkeypatch, SR.avsd, views=(1.0, 0.75, 0.25), ratio=0.5)
    views = SR.view_logits(g["teacher"], mult, g["c"], (1.0, 0.75, 0.25))
    torch.testing.assert_close(g["loss"], avsd_loss(g["s"], views, g["c"].mask, 0.5)[0])
    one = _one_batch_loss(mult, monkeypatch, SR.avsd, views=(1.0,))
    torch.testing.assert_close(one["loss"], clipped_forward_kl(one["s"], one["t"], one["c"].mask)[0])  # one view: plain KD


# ------------------------------------------------------------------ what a targeted mutation run found untested
def test_the_experiment_sizes_its_gpt_for_both_views(mult):
    ts = mult.tscale
    net = mult.student_factory()
    cfg = net.config
    assert cfg.vocab_size == mult.task.tokenizer.vocab_size
    assert cfg.block_size == mult.task.prompt_len + 1 + mult.width + mult.task.max_new_tokens
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (ts.student.n_layer, ts.student.n_head, ts.student.n_embd)
    assert mult.width == len(mult.eval_problems[0].target)
    assert mult.privileged is True and mult.teacher is None and mult.name == "self:mult"
    assert (mult.steps, mult.batch, mult.lr) == (3, ts.batch, ts.student_lr)
    assert mult.scale.batch == ts.batch and mult.scale.student_steps == 3 and mult.scale.eval_n == ts.eval_n
    assert _exp(pool=5).name == "self:mult@5"
    full = SelfDistillTask("mult", "ci", progress=False)
    assert full.steps == self_scale("mult", "ci").student_steps == llm_scale("mult", "ci").student_steps // 2
    assert full.task.digits_a == full.task.digits_b == 2 and full.tscale.warm_steps == 600


def test_the_warm_start_loss_weighs_the_two_views(mult, monkeypatch):
    """One warm-start step's loss is (1 - view_share) x the student view's cross-entropy on plain problems
    plus view_share x the teacher view's on problems with a revealed reference, both on the data."""
    import copy as _copy

    import distill_lab.llm.selfdistill as SD
    from distill_lab.methods.kd.token import token_ce_loss

    got = {}
    monkeypatch.setattr(SD, "fit", lambda step, steps, desc, progress: got.setdefault("loss", step(0)))
    torch.manual_seed(11)
    net = mult.student_factory()
    start = _copy.deepcopy(net)
    mult.stray_share = 0.0
    try:
        torch.manual_seed(7)
        mult.train_both_views(net, 1)
        torch.manual_seed(7)
        n_priv = round(mult.view_share * mult.batch)
        plain = mult.plain_problems(mult.batch - n_priv)
        rhos = torch.rand(n_priv).tolist()
        priv = [with_reference(p, r, mult.width) for p, r in zip(mult.task.problems(n_priv, "train"), rhos)]
    finally:
        mult.stray_share = 0.1
    want = 0.0
    for probs, view, share in ((plain, False, 1 - mult.view_share), (priv, True, mult.view_share)):
        tok = mult.task.encode_targets(probs)
        c = Completions(probs, tok, tok != 0, None, "data")
        want = want + share * token_ce_loss(score(start, mult.task, c, privileged=view), c.tokens, c.mask)
    torch.testing.assert_close(got["loss"], want)
    assert any(not torch.equal(a, b) for a, b in zip(net.parameters(), start.parameters()))  # and it stepped


def test_the_critique_weights_are_ones_and_a_full_length_rollout_is_handled():
    task = get_task("mult", digits_a=2, digits_b=2)
    p = task.write(12, 34)
    wrong = "1" + p.target[1:]
    f = critique_focus(task, [p], _ids(task, [wrong], 16))
    assert set(f.unique().tolist()) == {0.0, 1.0}
    cut = critique_focus(task, [p], _ids(task, [p.target[:9]], 16))
    assert set(cut.unique().tolist()) == {0.0, 1.0}
    tok = task.tokenizer
    full = torch.tensor([tok.encode(p.target[:9])])  # no end token, every position used: nothing to mark
    assert critique_focus(task, [p], full).sum() == 0


def test_the_initial_teacher_stays_put_however_often_it_is_asked_and_decay_zero_is_allowed(mult):
    torch.manual_seed(5)
    student = mult.student()
    teacher = SR.SelfTeacher(mult, "initial")
    first = [p.detach().clone() for p in teacher(student).parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    for a, b in zip(teacher(student).parameters(), first):
        assert torch.equal(a, b)
    copy_now = SR.SelfTeacher(mult, "ema", decay=0.0)(student)  # decay 0: the teacher is the student's copy
    for a, b in zip(copy_now.parameters(), student.parameters()):
        torch.testing.assert_close(a, b)


def test_opsd_defaults_and_options_reach_the_loop(mult, monkeypatch):
    drawn, seen, calls = [], _spy(monkeypatch, "clipped_forward_kl"), []
    real_problems = mult.problems
    monkeypatch.setattr(mult, "problems", lambda n=None, rho=None: drawn.append((n, rho)) or real_problems(n, rho))
    real = SR.distill
    monkeypatch.setattr(SR, "distill", lambda exp, name, loss, source="data", **k: calls.append((name, k)) or real(
        exp, name, loss, source, **k))
    torch.manual_seed(0)
    get_recipe("opsd").train(mult, steps=1, lr=1e-3)
    assert seen[-1][1]["clip"] == 1.0 and drawn[-1] == (mult.batch, 1.0)
    assert calls[-1][0] == "opsd" and calls[-1][1]["lr"] == 1e-3
    get_recipe("pw_opsd").train(mult, steps=1, alpha=0.5)
    mask = seen[-1][0][2]
    torch.testing.assert_close(seen[-1][1]["weights"], SR.position_weights(mask, 0.5))
    assert calls[-1][0] == "pw_opsd"
