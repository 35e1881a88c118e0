"""The masked-diffusion distillation track (issue 13, item 6): the experiment's two views, TAD's
trajectory states, and the wiring of ``mdlm_sft``, ``tad``, ``gdsd`` and ``elbo_pg``, on cases with known
answers and a tiny base trained here (a few seconds)."""

from __future__ import annotations

import math

import pytest
import torch

from distill_lab.core.registry import get_recipe
from distill_lab.llm import dlm
from distill_lab.llm.config import NetSize
from distill_lab.llm.dlm import DiffusionLMTask, DLMScale, trajectory_state
from distill_lab.llm.gpt import GPTConfig
from distill_lab.llm.sft import heldout_problems

TINY = DLMScale(NetSize(1, 2, 16), base_steps=20, base_batch=8, base_lr=3e-3, steps=2, batch=8, lr=1e-3, pool=12,
                group=4, eval_n=8, tpfs=(1, 15), rl_steps=3)


@pytest.fixture(scope="module")
def exp():
    torch.manual_seed(0)
    return DiffusionLMTask("ci", dscale=TINY, base="train", progress=False)


class Oracle(torch.nn.Module):
    """A denoiser that reads the two factors from the prompt and is sure of every completion token
    (``wrong``: of a product off by one in its last written digit)."""

    def __init__(self, exp, wrong: bool = False, chain: bool = False, needs_reference: bool = False):
        super().__init__()
        self.exp, self.wrong, self.chain, self.needs_reference = exp, wrong, chain, needs_reference
        self.config = GPTConfig(exp.tok.vocab_size, exp.block, causal=False)

    def forward(self, tokens):
        B, T = tokens.shape
        P = T - self.exp.n
        out = torch.zeros(B, T, self.exp.tok.vocab_size)
        mark = self.exp.tok.encode("#")[0]
        for b in range(B):
            text = self.exp.tok.decode(tokens[b, :self.exp.task.prompt_len].tolist())
            a, c = (int(x[::-1]) for x in text.lstrip("^").rstrip("=").split("*"))
            target = self.exp.task.write(a, c).target
            if self.wrong or (self.needs_reference and not (tokens[b, :P] == mark).any()):
                target = target[:-1] + str((int(target[-1]) + 1) % 10)
            ids = self.exp.tok.encode(target) + [self.exp.tok.eos_id]
            for i, t in enumerate(ids):
                # chain: sure of a position only once the one before it is committed, else a less sure wrong guess
                known = not self.chain or i == 0 or tokens[b, P + i - 1] != self.exp.mask_id
                out[b, P + i, t if known else (t + 1) % 10 + 3] = 9.0 if known else 3.0
        return out


def test_a_trajectory_state_hides_what_is_revealed_from_that_pass_on():
    tokens = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    reveal = torch.tensor([[2, 0, 3, 1], [0, 1, 2, 3]])
    state, masked, to_reveal = trajectory_state(tokens, reveal, torch.tensor([2, 0]), mask_id=0)
    assert state.tolist() == [[0, 6, 0, 8], [0, 0, 0, 0]]
    assert masked.tolist() == [[True, False, True, False], [True, True, True, True]]
    assert to_reveal[masked].tolist() == [1, 2, 1, 2, 3, 4]  # the next pass reveals it: 1
    # the last pass's state hides exactly one position, revealed one pass later
    state, masked, to_reveal = trajectory_state(tokens, reveal, torch.tensor([3, 3]), mask_id=0)
    assert masked.sum(1).tolist() == [1, 1] and to_reveal[masked].tolist() == [1, 1]


def test_the_views_the_network_and_the_oracles_accuracy(exp):
    p = exp.problems(2)
    assert all(q.teacher_prompt == q.prompt + "#" + q.target for q in p)  # the whole reference
    assert exp.prompts(p, True).shape[1] + exp.n == exp.block and exp.targets(p).shape == (2, exp.n)
    assert not exp.new_model().config.causal
    for tpf in (1, 4, 15):  # a perfect denoiser is exact at every speed, a wrong one never
        assert exp.evaluate(Oracle(exp), tpf) == 100.0
        assert exp.evaluate(Oracle(exp, wrong=True), tpf) == 0.0
    # the speed knob: an oracle that needs its left neighbour committed is exact at one token a pass only
    chain = Oracle(exp, chain=True)
    assert exp.evaluate(chain) == exp.evaluate(chain, 1) == 100.0 and exp.evaluate(chain, 2) == 0.0
    assert exp.curve(chain) == {1: 100.0, 15: 0.0}
    # the views: an oracle right only when it reads the reference
    reader = Oracle(exp, needs_reference=True)
    assert exp.evaluate(reader, 1, privileged=True) == 100.0 and exp.evaluate(reader, 1) == 0.0
    assert exp.curve(reader, (1, 4), privileged=True) == {1: 100.0, 4: 100.0}
    assert [q.prompt for q in exp.eval_problems] == [q.prompt for q in heldout_problems(exp.task, TINY.eval_n, 0)]
    tr = exp.generate(Oracle(exp), exp.eval_problems[:3], 4)
    assert tr.forwards == math.ceil(exp.n / 4) and exp.rewards(exp.eval_problems[:3], tr.tokens).tolist() == [1.0] * 3


def test_copies_of_the_base_draw_no_random_numbers(exp):
    torch.manual_seed(5)
    exp.student(), exp.teacher()
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # a student's run does not depend on how many copies came before


def test_the_base_is_trained_once_and_every_student_and_the_teacher_start_from_it(exp):
    s1, s2, t = exp.student(), exp.student(), exp.teacher()
    assert s1.training and not t.training and not any(p.requires_grad for p in t.parameters())
    for a, b, c in zip(s1.parameters(), s2.parameters(), t.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    with torch.no_grad():
        next(s1.parameters()).add_(1.0)
    assert not torch.equal(next(s1.parameters()), next(exp.student().parameters()))  # a copy, not the base


def test_the_trajectory_pool_is_the_teacher_views_decoding_one_token_a_pass(exp, monkeypatch):
    calls = []
    real = dlm.unmask_sample

    def spy(model, prompts, n, mask_id, tpf, temperature=0.0, generator=None, **kept):
        calls.append((prompts.clone(), tpf, temperature))
        return real(model, prompts, n, mask_id, tpf, temperature, generator=generator, **kept)

    monkeypatch.setattr(dlm, "unmask_sample", spy)
    fresh = DiffusionLMTask("ci", dscale=TINY, base=exp.base(), progress=False)
    probs, traj = fresh.trajectories()
    assert len(probs) == TINY.pool and traj.tokens.shape == (TINY.pool, fresh.n) and traj.forwards == fresh.n
    prompts, tpf, temp = calls[0]
    assert tpf == 1 and temp == 0.0 and torch.equal(prompts, fresh.prompts(probs, privileged=True))
    assert all(p.teacher_prompt == p.prompt + "#" + p.target for p in probs)  # the whole reference
    for row in traj.reveal_step.tolist():  # one position a pass
        assert sorted(row) == list(range(fresh.n))
    assert fresh.trajectories() is fresh.trajectories() and len(calls) == 1  # made once
    half, _ = fresh.trajectories(0.5)  # the same problems, half the reference read
    assert [p.prompt for p in half] == [p.prompt for p in probs]
    assert all(p.teacher_prompt == p.prompt + "#" + p.target[:7].ljust(fresh.width, "_") for p in half)


def test_tad_trains_the_student_view_on_trajectory_states_against_the_teacher_view(exp, monkeypatch):
    seen = []
    real = dlm.tad_loss

    def spy(s_logits, t_logits, tokens, to_reveal, k, masked):
        seen.append((s_logits.requires_grad, t_logits.requires_grad, tokens.clone(), to_reveal.clone(), k,
                     masked.clone()))
        return real(s_logits, t_logits, tokens, to_reveal, k, masked)

    calls = []
    real_logits = dlm.denoiser_logits

    def logits_spy(model, prompts, x):
        calls.append((prompts.clone(), x.clone()))
        return real_logits(model, prompts, x)

    monkeypatch.setattr(dlm, "tad_loss", spy)
    monkeypatch.setattr(dlm, "denoiser_logits", logits_spy)
    exp.trajectories()
    exp._soft.clear()  # the teacher view scores each state when first drawn (the decoding's table: the next test)
    calls.clear()
    torch.manual_seed(1)
    student = get_recipe("tad", track="llm_dlm").train(exp, k=3)
    assert len(seen) == TINY.steps and student.train_info["steps"] == TINY.steps
    probs, traj = exp.trajectories()
    pool_rows = {tuple(r) for r in traj.tokens.tolist()}
    mark = exp.tok.encode("#")[0]
    # a step's student-view pass, then the teacher view's on the states of that step it has not scored before
    # (a state: a problem's prompt and a partly revealed completion)
    P = exp.task.prompt_len  # the start token and the student prompt: the teacher prompt's first tokens
    steps = []
    for prompts, x in calls:
        if (prompts == mark).any():
            assert (prompts == mark).any(1).all() and steps  # the teacher view, after a student pass
            steps[-1][1].append((prompts, x))
        else:
            steps.append(((prompts, x), []))
    assert len(steps) == len(seen) and any(t for _, t in steps)
    scored = set()
    for (s_grad, t_grad, tokens, to_reveal, k, masked), ((s_prompts, s_state), teacher_passes) in zip(seen, steps):
        assert s_grad and not t_grad and k == 3
        assert all(tuple(r) in pool_rows for r in tokens.tolist())
        assert s_prompts.shape[1] == P
        rows = {(tuple(p), tuple(r)) for p, r in zip(s_prompts.tolist(), s_state.tolist())}
        for t_prompts, t_state in teacher_passes:  # both views read the same states, each scored once
            new = {(tuple(p[:P]), tuple(r)) for p, r in zip(t_prompts.tolist(), t_state.tolist())}
            assert new <= rows and not new & scored
            scored |= new
        assert rows <= scored
        assert torch.equal(s_state == exp.mask_id, masked) and torch.equal(s_state[~masked], tokens[~masked])
        assert (to_reveal[masked] >= 1).all()
    calls.clear()  # cross-entropy only needs no teacher pass: one forward a step, the student view's
    get_recipe("tad", track="llm_dlm").train(exp, k=math.inf)
    assert len(calls) == TINY.steps and not any((p == mark).any() for p, _ in calls)


def test_tads_teacher_targets_are_scored_once_a_state_and_equal_the_teacher_views(exp):
    """The teacher view's logits at a state of the pool's trajectories are kept from the teacher view's own
    decoding of the pool, or else from their first scoring: the lookup equals scoring the batch, a state is
    never scored twice, and a run gives the same student as one that scores every batch."""
    given = exp.base()
    fresh = DiffusionLMTask("ci", dscale=TINY, base=given, progress=False)
    probs, traj = fresh.trajectories()
    assert traj.logits is None and bool(fresh._soft[(1.0, "given")][0].all())  # every state, from the decoding
    teacher = fresh.teacher()
    idx, s = torch.tensor([0, 3, 3, 5, 0]), torch.tensor([0, 4, 4, 14, 0])
    state, _, _ = trajectory_state(traj.tokens[idx], traj.reveal_step[idx], s, fresh.mask_id)
    with torch.no_grad():
        direct = dlm.denoiser_logits(teacher, fresh.prompts([probs[j] for j in idx.tolist()], True), state)
    calls = []
    hook = teacher.register_forward_hook(lambda *a: calls.append(1))
    torch.testing.assert_close(fresh.trajectory_teacher_logits(teacher, idx, s), direct, rtol=0, atol=1e-6)
    torch.manual_seed(3)
    cached = get_recipe("tad", track="llm_dlm").train(fresh, k=2).state_dict()
    assert not calls  # TAD's teacher passes were all made by the decoding
    hook.remove()
    lazy = DiffusionLMTask("ci", dscale=TINY, base=given, progress=False)
    lazy.trajectories()
    lazy._soft.clear()  # no table: each state is scored the first time it is drawn
    torch.testing.assert_close(lazy.trajectory_teacher_logits(teacher, idx, s), direct, rtol=0, atol=1e-6)
    assert int(lazy._soft[(1.0, "given")][0].sum()) == 3  # three distinct states
    hook = teacher.register_forward_hook(lambda *a: calls.append(1))
    lazy.trajectory_teacher_logits(teacher, idx[:2], s[:2])
    assert not calls
    hook.remove()

    def every_batch(self, teacher, idx, s, rho=1.0):
        probs, traj = self.trajectories(rho)
        state, _, _ = trajectory_state(traj.tokens[idx], traj.reveal_step[idx], s, self.mask_id)
        with torch.no_grad():
            return dlm.denoiser_logits(teacher, self.prompts([probs[j] for j in idx.tolist()], True), state)

    other = DiffusionLMTask("ci", dscale=TINY, base=given, progress=False)
    other.trajectory_teacher_logits = every_batch.__get__(other)
    torch.manual_seed(3)
    scored = get_recipe("tad", track="llm_dlm").train(other, k=2).state_dict()
    assert all(torch.allclose(cached[k], scored[k], atol=1e-6, rtol=0) for k in cached)


def test_a_curve_runs_the_first_pass_once_and_equals_decoding_at_each_speed(exp):
    base = exp.base()
    first = exp.first_pass(base, exp.eval_problems)
    for tpf in (1, 3, 15):
        a = exp.generate(base, exp.eval_problems, tpf)
        b = exp.generate(base, exp.eval_problems, tpf, first=first)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.reveal_step, b.reveal_step) and a.forwards == b.forwards
    assert exp.curve(base, (1, 3, 15)) == {t: exp.evaluate(base, t) for t in (1, 3, 15)}
    with pytest.raises(ValueError, match="first_logits"):
        exp.generate(base, exp.eval_problems, 1, first=[first[0][:2]])


@pytest.mark.parametrize("k, share", [(0, 0.0), (math.inf, 1.0)])
def test_tad_with_k_zero_is_kl_only_and_with_k_infinite_cross_entropy_only(exp, k, share):
    torch.manual_seed(2)
    st = get_recipe("tad", track="llm_dlm").train(exp, k=k)
    assert st.train_info["history"]["hard_share"] == [share] * TINY.steps
    with pytest.raises(ValueError, match="k counts"):
        get_recipe("tad", track="llm_dlm").train(exp, k=-1)


@pytest.mark.parametrize("name", ["gdsd", "elbo_pg"])
def test_the_rl_recipes_sample_the_student_view_in_groups_and_score_a_masked_state(exp, monkeypatch, name):
    seen = []
    real_g, real_e = dlm.gdsd_loss, dlm.elbo_pg_loss

    def spy_g(logits, tokens, adv, beta, masked):
        seen.append((logits.requires_grad, tokens.clone(), adv.clone(), masked.clone(), beta))
        return real_g(logits, tokens, adv, beta, masked)

    def spy_e(logits, tokens, adv, t, masked):
        seen.append((logits.requires_grad, tokens.clone(), adv.clone(), masked.clone(), t.clone()))
        return real_e(logits, tokens, adv, t, masked)

    states = []
    real_logits = dlm.denoiser_logits

    def logits_spy(model, prompts, x):
        states.append((prompts.clone(), x.clone()))
        return real_logits(model, prompts, x)

    monkeypatch.setattr(dlm, "gdsd_loss", spy_g)
    monkeypatch.setattr(dlm, "elbo_pg_loss", spy_e)
    monkeypatch.setattr(dlm, "denoiser_logits", logits_spy)
    torch.manual_seed(3)
    opts = {"beta": 0.5} if name == "gdsd" else {}
    st = get_recipe(name, track="llm_dlm").train(exp, **opts)
    assert len(seen) == TINY.rl_steps and st.train_info["steps"] == TINY.rl_steps
    assert len(st.train_info["rewards"]) == TINY.rl_steps and all(0 <= r <= 1 for r in st.train_info["rewards"])
    mark = exp.tok.encode("#")[0]
    assert len(states) == TINY.rl_steps  # the sampler's passes do not go through the spied name; one scored state a step
    for (grad, tokens, adv, masked, extra), (prompts, state) in zip(seen, states):
        assert grad and tokens.shape == (TINY.batch, exp.n) and masked.shape == tokens.shape
        # the student view scores its own sample with exactly the masked positions hidden
        assert not (prompts == mark).any() and torch.equal(state, torch.where(masked, exp.mask_id, tokens))
        assert torch.equal(prompts[::TINY.group], prompts[TINY.group - 1::TINY.group])  # a group shares its prompt
        assert (tokens != exp.mask_id).all()  # whole samples
        assert torch.allclose(adv.view(-1, TINY.group).sum(1), torch.zeros(TINY.batch // TINY.group), atol=1e-5)
        if name == "gdsd":
            assert extra == 0.5
        else:
            assert ((extra > 0) & (extra <= 1)).all() and extra.shape == (TINY.batch,)


def test_the_baseline_trains_on_the_references_and_options_are_checked(exp):
    torch.manual_seed(4)
    st = get_recipe("mdlm_sft", track="llm_dlm").train(exp)
    base = exp.base()
    assert any(not torch.equal(a, b) for a, b in zip(st.parameters(), base.parameters()))
    with pytest.raises(ValueError, match="unknown option"):
        get_recipe("gdsd", track="llm_dlm").train(exp, k=2)
    with pytest.raises(ValueError, match="base is"):
        DiffusionLMTask("ci", dscale=TINY, base="nope", progress=False).base()
