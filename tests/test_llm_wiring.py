"""The LLM track's loop and rollouts wired right: which model samples, with which prompt, temperature and
mixture; what the loop counts; what accuracy averages.

A recipe can train and report a number with the teacher reading the student's prompt instead of its
privileged one, with a greedy teacher where it should sample, with MiniLLM's mixture dropped, or with
the tokens it trained on miscounted. Each test here runs the piece on a tiny task with the functions it
calls wrapped to record their arguments, and checks them against what the recipe's paper says.
"""

import pytest
import torch
from spies import record, record_optimizer
from test_llm import _tiny_scale, tiny_gpt

from distill_lab.core.registry import get_recipe
from distill_lab.llm import LLMTask
from distill_lab.llm import recipes as R
from distill_lab.llm import rollout
from distill_lab.llm.sft import build_gpt
from distill_lab.llm.tasks import get_task


def _exp(task="star", steps=3):
    ts = _tiny_scale(task)
    torch.manual_seed(0)
    teacher_task = "mult" if task == "mult_short" else task
    return LLMTask(task, "ci", teacher=build_gpt(get_task(teacher_task), ts.teacher).eval(), task_scale=ts,
                   progress=False, steps=steps)


@pytest.fixture(scope="module")
def star():
    return _exp("star")


# ------------------------------------------------------------------ rollout
def test_score_defaults_to_the_students_prompt_and_a_privileged_teacher_reads_the_hint(star):
    """On the star task the teacher's prompt holds the path: scoring with ``privileged=True`` must read
    another prompt than the default, which is the student's."""
    task = star.task
    c = rollout.from_data(task, task.problems(4, generator=torch.Generator().manual_seed(1)))
    m = tiny_gpt(vocab=task.tokenizer.vocab_size, block=task.block_size)
    default, student, privileged = rollout.score(m, task, c), rollout.score(m, task, c, False), rollout.score(
        m, task, c, True)
    torch.testing.assert_close(default, student)
    assert default.shape == privileged.shape == (4, c.tokens.shape[1], task.tokenizer.vocab_size)
    assert (default - privileged).abs().max() > 1e-6


def test_from_model_passes_its_sampling_options_to_generate(star, monkeypatch):
    """Temperature, top-k, the end and pad tokens, the generator and MiniLLM's mixture (model, weight,
    the mixing model's own prompt) all reach ``generate``; the default temperature is 1 (the model's own
    distribution)."""
    task = star.task
    probs = task.problems(3, generator=torch.Generator().manual_seed(2))
    calls = record(monkeypatch, rollout, "generate")
    m = tiny_gpt(vocab=task.tokenizer.vocab_size, block=task.block_size, dtype=torch.float32)
    rollout.from_model(m, task, probs, "student")
    _, kw, _ = calls[-1]
    assert kw["temperature"] == 1.0 and kw["top_k"] is None and kw["mix_with"] is None and kw["mix_prompt"] is None
    assert kw["mix_alpha"] == 0.0
    g = torch.Generator().manual_seed(3)
    mixer = tiny_gpt(vocab=task.tokenizer.vocab_size, block=task.block_size, seed=1, dtype=torch.float32)
    c = rollout.from_model(m, task, probs, "mixed", temperature=0.7, top_k=5, mix_with=mixer, mix_alpha=0.3,
                           mix_privileged=True, generator=g)
    (_, prompts, n_new), kw, r = calls[-1]
    assert kw["temperature"] == 0.7 and kw["top_k"] == 5 and kw["generator"] is g
    assert kw["eos_id"] == task.tokenizer.eos_id and kw["pad_id"] == task.tokenizer.pad_id
    assert kw["mix_with"] is mixer and kw["mix_alpha"] == 0.3
    assert torch.equal(prompts, task.encode_prompts(probs, False))  # the sampling model: the student prompt
    assert torch.equal(kw["mix_prompt"], task.encode_prompts(probs, True))  # the mixing model: its own
    assert not torch.equal(kw["mix_prompt"], prompts)
    assert c.source == "mixed" and torch.equal(c.tokens, r.generated) and c.sample_logprobs is r.logprobs
    rollout.from_model(m, task, probs, "mixed", mix_with=mixer)
    assert torch.equal(calls[-1][1]["mix_prompt"], task.encode_prompts(probs, False))  # default: not privileged
    rollout.from_model(m, task, probs, "teacher", privileged=True)
    (_, prompts, _), kw, _ = calls[-1]
    assert torch.equal(prompts, task.encode_prompts(probs, True))


def test_a_privileged_model_writes_as_many_tokens_as_its_own_longest_completion():
    """On mult_short the teacher writes the full chain (longer) and the student the short one: each
    sampling gets its own length."""
    task = get_task("mult_short")
    assert task.teacher_max_new_tokens > task.max_new_tokens
    probs = task.problems(2, generator=torch.Generator().manual_seed(4))
    m = tiny_gpt(vocab=task.tokenizer.vocab_size, block=task.block_size, dtype=torch.float32)
    # a model that never writes the end token: the completion's length is the budget
    with torch.no_grad():
        m.head.weight.zero_()  # uniform logits: greedy writes token 0 (padding), never the end token
    short = rollout.from_model(m, task, probs, "student", temperature=0.0)
    long = rollout.from_model(m, task, probs, "teacher", temperature=0.0, privileged=True)
    assert short.tokens.shape[1] == task.max_new_tokens and long.tokens.shape[1] == task.teacher_max_new_tokens


def test_from_texts_masks_each_text_and_its_end_token_only():
    task = get_task("sort")
    probs = task.problems(2, generator=torch.Generator().manual_seed(5))
    c = rollout.from_texts(task, probs, ["12>3", "1>22222"], "teacher")
    assert c.source == "teacher" and c.sample_logprobs is None
    assert c.mask.sum(1).tolist() == [5, 8]  # each text and its end token, no padding
    assert c.tokens[0, 4] == task.tokenizer.eos_id and c.tokens[0, 5] == task.tokenizer.pad_id


def test_accuracy_weighs_each_chunk_by_its_size(monkeypatch):
    """Exact-match accuracy over chunks of unequal size (7 problems, chunks of 3): the right share of the
    whole set, each chunk decoded with the caller's options."""
    task = get_task("sort")
    probs = task.problems(7, generator=torch.Generator().manual_seed(6))
    right = {0, 3, 4, 6}  # problem indices the fake model answers right
    seen = []

    def fake(model, task_, chunk, privileged, forced_prefix, device):
        seen.append((len(chunk), privileged, forced_prefix, device))
        texts = [p.target if probs.index(p) in right else p.target[:-1] + str((int(p.target[-1]) + 1) % 10)
                 for p in chunk]
        return rollout.from_texts(task, chunk, texts, "fake").tokens

    monkeypatch.setattr(rollout, "greedy_completions", fake)
    acc = rollout.accuracy(None, task, probs, batch_size=3, privileged=True, forced_prefix=True, device="meta")
    assert acc == pytest.approx(100.0 * 4 / 7)
    assert seen == [(3, True, True, "meta"), (3, True, True, "meta"), (1, True, True, "meta")]
    seen.clear()
    rollout.accuracy(None, task, probs)
    assert seen == [(7, False, False, "cpu")]  # defaults: one chunk, the student's prompt, no forced prefix
    assert rollout.accuracy(None, task, []) == 0.0


# ------------------------------------------------------------------ completions
@pytest.mark.parametrize("source,temperature", [("teacher", 1.0), ("teacher_greedy", 0.0)])
def test_teacher_completions_sample_or_decode_greedily_from_its_own_prompt(star, monkeypatch, source, temperature):
    calls = record(monkeypatch, R, "from_model")
    probs = star.problems(3)
    c = R.completions(star, None, probs, source)
    (model, task, p, src), kw, out = calls[0]
    assert model is star.teacher and p is probs and src == "teacher" and c is out
    assert kw["temperature"] == temperature and kw["privileged"] is True


def test_mixed_completions_mix_the_teacher_into_the_students_samples(star, monkeypatch):
    calls = record(monkeypatch, R, "from_model")
    student = star.student()
    probs = star.problems(3)
    R.completions(star, student, probs, "mixed")
    (model, _, _, src), kw, _ = calls[-1]
    assert model is student and src == "mixed" and kw["mix_with"] is star.teacher
    assert kw["mix_alpha"] == 0.2  # MiniLLM's alpha (Gu et al. 2024, sec. 2.2), the default
    assert kw["mix_privileged"] is True  # the teacher mixes in from its own prompt
    R.completions(star, student, probs, "mixed", mix_alpha=0.35)
    assert calls[-1][1]["mix_alpha"] == 0.35
    R.completions(star, student, probs, "student")
    (model, _, _, src), kw, _ = calls[-1]
    assert model is student and src == "student" and "mix_with" not in kw and "privileged" not in kw


def test_data_completions_are_the_targets_on_the_experiments_device(star, monkeypatch):
    calls = record(monkeypatch, R, "from_data")
    probs = star.problems(2)
    c = R.completions(star, None, probs, "data")
    (_, p, dev), _, _ = calls[0]
    assert p is probs and dev == star.device and c.source == "data"
    assert torch.equal(c.tokens, star.task.encode_targets(probs))


def test_a_teacher_in_another_format_is_rewritten_into_the_students(monkeypatch):
    """mult_short: the teacher's full chains, shortened, become ``teacher`` completions in the student's
    format (on the experiment's device)."""
    exp = _exp("mult_short")
    calls = record(monkeypatch, R, "from_texts")
    sampled = record(monkeypatch, R, "from_model")
    probs = exp.problems(2)
    c = R.completions(exp, None, probs, "teacher_greedy")
    (task, p, texts, src, dev), _, out = calls[0]
    assert p is probs and src == "teacher" and dev == exp.device and c is out
    full = exp.task.decode_completions(sampled[0][2].tokens)
    assert texts == [exp.task.student_text(t) for t in full]


def test_an_unknown_source_is_refused(star):
    with pytest.raises(ValueError, match="unknown source 'beam'"):
        R.completions(star, None, star.problems(1), "beam")


# ------------------------------------------------------------------ the loop
def test_distill_counts_what_it_trains_on_and_passes_the_losss_diagnostics(star, monkeypatch):
    """Over a run mixing data and student steps (GKD's lambda = 0.5): the tokens trained on, the student
    tokens among them and the on-policy steps are sums over the steps; the loss's own diagnostics reach
    the history, its ``loss`` entry does not replace the loss; the teacher reads its privileged prompt."""
    calls = record(monkeypatch, R, "completions")
    scored = record(monkeypatch, R, "score")
    got = []

    def loss_fn(s, t, c):
        got.append((t, c))
        return (s.float().logsumexp(-1) * c.mask).sum() / c.mask.sum(), {"loss": torch.tensor(-5.0), "extra": 7.0}

    torch.manual_seed(3)
    student = R.distill(star, "probe", loss_fn, "data", lam=0.5, steps=8, batch=3, mix_alpha=0.3)
    info = student.train_info
    comps = [out for _, _, out in calls]
    assert len(comps) == 8 and {c.source for c in comps} == {"data", "student"}
    assert all(len(c.problems) == 3 for c in comps)
    assert all(args[4] == 0.3 for args, _, _ in calls)  # mix_alpha reaches the completions
    assert info["train_tokens"] == sum(c.n_tokens for c in comps)
    assert info["student_tokens"] == sum(c.n_tokens for c in comps if c.on_policy) > 0
    assert info["on_policy_steps"] == sum(c.on_policy for c in comps)
    assert info["on_policy"] and info["steps"] == 8 and info["seconds"] > 0
    h = info["history"]
    assert h["extra"] and h["extra"] == [7.0] * len(h["loss"]) and min(h["loss"]) > 0
    assert all(t is not None for t, _ in got)
    teacher_calls = [(a, kw) for a, kw, _ in scored if a[0] is star.teacher]
    assert len(teacher_calls) == 8 and all(kw["privileged"] is True for _, kw in teacher_calls)


def test_distill_defaults_draw_the_experiments_batch_from_the_data_and_never_on_policy(star, monkeypatch):
    calls = record(monkeypatch, R, "completions")
    seen = []
    student = R.distill(star, "probe", lambda s, t, c: seen.append(t) or token_ce(s, c), teacher_logits=False,
                        steps=2)
    comps = [out for _, _, out in calls]
    assert [c.source for c in comps] == ["data", "data"] and all(len(c.problems) == star.batch for c in comps)
    assert seen == [None, None]  # no teacher logits asked: the loss gets None
    assert student.train_info["student_tokens"] == 0 and student.train_info["on_policy"] is False
    assert set(student.train_info) >= {"train_tokens", "distinct_sequences", "seconds", "history"}
    R.distill(star, "probe", lambda s, t, c: token_ce(s, c), "mixed", steps=1, teacher_logits=False)
    assert calls[-1][0][4] == 0.2  # MiniLLM's alpha by default


def token_ce(s, c):
    from distill_lab.methods.kd.token import token_ce_loss
    return token_ce_loss(s, c.tokens, c.mask)


def test_distill_trains_with_its_learning_rate(star, monkeypatch):
    made = record_optimizer(monkeypatch, "AdamW")
    # the loop's optimizer is the last one made (the student's warm start, trained once a seed, has its own)
    R.distill(star, "probe", lambda s, t, c: token_ce(s, c), steps=1, lr=0.0123, teacher_logits=False)
    assert made[-1][1]["lr"] == 0.0123
    R.distill(star, "probe", lambda s, t, c: token_ce(s, c), steps=1, teacher_logits=False)
    assert made[-1][1]["lr"] == star.lr


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_distill_refuses_an_on_policy_fraction_outside_0_1(star, lam):
    with pytest.raises(ValueError, match="lambda must lie in"):
        R.distill(star, "probe", lambda s, t, c: token_ce(s, c), lam=lam, steps=1)


def test_lambda_one_is_on_policy_at_every_step(star, monkeypatch):
    calls = record(monkeypatch, R, "completions")
    torch.manual_seed(0)
    student = R.distill(star, "probe", lambda s, t, c: token_ce(s, c), lam=1.0, steps=3, teacher_logits=False)
    assert [out.source for _, _, out in calls] == ["student"] * 3
    assert student.train_info["on_policy_steps"] == 3


def test_gkd_recipes_hand_their_beta_lambda_and_mask_to_the_loss(star, monkeypatch):
    """``_gkd`` (every GKD recipe): the generalised JSD with the recipe's beta, on the completion's mask,
    under the recipe's name and lambda; overrides of steps and lr reach the loop."""
    losses = record(monkeypatch, R, "gjsd_loss")
    loops = record(monkeypatch, R, "distill")
    torch.manual_seed(0)
    get_recipe("gkd_jsd").train(star, steps=1, lr=0.002)
    (exp, name, _), kw, _ = loops[0]
    assert name == "gkd_jsd" and kw["lam"] == 1.0 and kw["source"] == "data" and kw["steps"] == 1
    assert kw["lr"] == 0.002
    (s, t, mask), lkw, _ = losses[0]
    assert lkw["beta"] == 0.5 and mask.dtype == torch.bool and mask.shape == s.shape[:2]


def test_a_teacher_writing_another_format_refuses_token_level_and_mixed_recipes():
    """mult_short's teacher writes the full chain: its next-token distributions, and MiniLLM's mixture
    of them into the student's samples, do not line up with the student's tokens."""
    exp = _exp("mult_short", steps=1)
    for kw in ({"source": "data"}, {"source": "mixed", "teacher_logits": False}):
        with pytest.raises(ValueError, match="another format"):
            R.distill(exp, "probe", lambda s, t, c: token_ce(s, c), **kw)
    student = R.distill(exp, "probe", lambda s, t, c: token_ce(s, c), "teacher_greedy", teacher_logits=False)
    assert student.train_info["steps"] == 1


def test_a_misspelt_option_names_the_recipe(star):
    with pytest.raises(ValueError, match="unknown option.*'bta'.*for gkd_jsd"):
        get_recipe("gkd_jsd").train(star, bta=0.3)


def test_accuracy_of_a_single_problem(monkeypatch):
    task = get_task("sort")
    probs = task.problems(1, generator=torch.Generator().manual_seed(7))
    monkeypatch.setattr(rollout, "greedy_completions",
                        lambda m, t, chunk, *a: rollout.from_texts(task, chunk, [p.target for p in chunk], "x").tokens)
    assert rollout.accuracy(None, task, probs) == 100.0
