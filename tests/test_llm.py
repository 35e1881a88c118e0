"""The LLM track: the tiny GPT and its KV cache, the tasks and their splits, the rollout module's
alignment, the teacher's folder, the experiment and every recipe at toy size."""

import json

import pytest
import torch

import distill_lab.llm.recipes as llm_recipes

from distill_lab.core.registry import get_recipe, recipes
from distill_lab.core.train import seed_everything
from distill_lab.llm.config import NetSize, TaskScale, llm_scale
from distill_lab.llm.experiment import LLMTask
from distill_lab.llm.gpt import GPT, GPTConfig, generate
from distill_lab.llm.rollout import from_data, from_model, greedy_completions, score
from distill_lab.llm.sft import build_gpt
from distill_lab.llm.tasks import Multiplication, StarGraph, Tokenizer, check_same_tokenizer, get_task, split_of
from distill_lab.llm.teacher import LLMTeacherUnavailable, load_teacher, save_teacher


def tiny_gpt(vocab=48, block=64, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab, block, n_layer=2, n_head=2, n_embd=16)).to(dtype).eval()


# ------------------------------------------------------------------ the GPT
def test_kv_cache_decoding_equals_the_full_forward():
    """Prefill then one token at a time through the cache gives the full forward's logits (float64);
    a wrong causal mask or position offset with a cache fails this."""
    m = tiny_gpt()
    x = torch.randint(0, 48, (3, 20))
    full = m(x)
    cache = m.new_cache(3)
    parts = [m(x[:, :7], cache)] + [m(x[:, i:i + 1], cache) for i in range(7, 17)] + [m(x[:, 17:], cache)]
    assert len(cache) == 20
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-12, rtol=0)


def test_logits_are_causal_and_every_position_is_returned():
    m = tiny_gpt()
    x = torch.randint(0, 48, (2, 12))
    y = x.clone()
    y[:, 8] = (y[:, 8] + 1) % 48
    a, b = m(x), m(y)
    assert a.shape == (2, 12, 48)
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=1e-12, rtol=0)
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-6


def test_greedy_generation_equals_repeated_argmax_and_stops_at_the_end_token():
    m = tiny_gpt()
    prompt = torch.randint(3, 48, (4, 5))
    eos = int(m(prompt)[0, -1].argmax())  # row 0 ends at once
    r = generate(m, prompt, 6, temperature=0.0, eos_id=eos, pad_id=0)
    seq = prompt
    for _ in range(6):
        seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    for b in range(4):
        gen, want = r.generated[b], seq[b, 5:]
        n = int(r.mask[b].sum())
        assert torch.equal(gen[:n], want[:n])
        hit = (want == eos).nonzero()
        if len(hit):  # the end token is kept in the mask, everything after is padding
            assert n == int(hit[0]) + 1 and bool((gen[n:] == 0).all()) and bool((r.logprobs[b, n:] == 0).all())
    assert r.n_generated == int(r.mask.sum()) and r.generated[0, 0] == eos and r.mask[0, 5:].sum() == 1
    assert not r.mask[:, :5].any()


def test_sampled_logprobs_are_those_of_the_sampling_distribution():
    m = tiny_gpt()
    prompt = torch.randint(3, 48, (2, 4))
    r = generate(m, prompt, 5, temperature=0.7, top_k=5, generator=torch.Generator().manual_seed(1))
    logits = m(r.tokens)[:, 3:-1] / 0.7
    kth = logits.topk(5, -1).values[..., -1:]
    logp = logits.masked_fill(logits < kth, float("-inf")).log_softmax(-1)
    want = logp.gather(-1, r.generated[..., None]).squeeze(-1)
    torch.testing.assert_close(r.logprobs, want, atol=1e-10, rtol=0)


def test_teacher_mixed_sampling_endpoints():
    """mix_alpha 0 samples the model itself, 1 the mixing model (the same draws from one seed)."""
    a, b = tiny_gpt(seed=1), tiny_gpt(seed=2)
    p = torch.randint(3, 48, (3, 4))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(generate(a, p, 6, generator=g(), mix_with=b, mix_alpha=0.0).tokens,
                       generate(a, p, 6, generator=g()).tokens)
    assert torch.equal(generate(a, p, 6, generator=g(), mix_with=b, mix_alpha=1.0).tokens,
                       generate(b, p, 6, generator=g()).tokens)


def test_gpt_bad_input():
    m = tiny_gpt(block=8)
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="vocabulary"):
        m(torch.full((1, 3), 48))
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(10, 8, n_head=3, n_embd=16)


# ------------------------------------------------------------------ the tasks
@pytest.mark.parametrize("name", ["mult", "mult_short", "star", "sort"])
def test_splits_never_overlap_and_targets_check(name):
    task = get_task(name)
    train = task.problems(600, "train", torch.Generator().manual_seed(0))
    test = task.problems(200, "test", torch.Generator().manual_seed(1))
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert all(split_of(p.prompt) == "test" for p in test)
    for p in train[:50]:
        assert task.check(p, p.target)
        assert not task.check(p, p.target[:-1] + ("0" if p.target[-1] != "0" else "1"))
        assert not task.check(p, "")
    assert len({len(p.prompt) for p in train}) == 1 and len({len(p.target) for p in train}) == 1


def _num(s):  # digits written least significant first
    return int(s[::-1])


@pytest.mark.parametrize("chain", ["full", "short"])
def test_multiplication_chain_is_right(chain):
    task = Multiplication(3, 3, chain)
    for p in task.problems(100, "train", torch.Generator().manual_seed(2)):
        a, b = _num(p.prompt[:3]), _num(p.prompt[4:7])
        body, ans = p.target.split(">")
        assert _num(ans) == a * b
        parts = body.replace(":", "+").split("+")
        prods = [a * int(d) * 10 ** j for j, d in enumerate(str(b)[::-1])]
        if chain == "full":  # p0, p1, s1, p2
            assert [_num(x) for x in parts] == [prods[0], prods[1], prods[0] + prods[1], prods[2]]
        else:
            assert [_num(x) for x in parts] == prods
    assert task.write(123, 45).answer == "535500"  # 5535 in six digits, least significant first


def test_star_graph_path_is_a_path_and_the_privileged_prompt_holds_it():
    task = StarGraph(3, 4)
    for p in task.problems(100, "train", torch.Generator().manual_seed(3)):
        edges = set(p.prompt.split("|")[0].split(","))
        path = p.answer
        assert p.target == ">" + path and len(path) == 5
        assert all(path[i] + path[i + 1] in edges for i in range(4))
        start, goal = p.prompt.split("|")[1][:-1].split("/")
        assert path[0] == start and path[-1] == goal
        assert p.teacher_prompt == p.prompt + "#" + path


def test_task_and_tokenizer_errors():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("chess")
    with pytest.raises(ValueError, match="not in the tokenizer"):
        Tokenizer().encode("12?")
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_same_tokenizer(Tokenizer(), Tokenizer("_^$0123456789*+>="))
    with pytest.raises(ValueError, match="split"):
        get_task("sort").problems(2, "valid")


# ------------------------------------------------------------------ rollouts
def test_score_lines_up_with_the_full_forward_for_both_prompts():
    """Position i of ``score`` predicts completion token i, after the model's own prompt (the privileged
    teacher reads a longer prompt); an off-by-one misalignment fails."""
    task = get_task("star")
    m = tiny_gpt(block=task.block_size)
    probs = task.problems(3, "train", torch.Generator().manual_seed(0))
    c = from_data(task, probs)
    for priv in (False, True):
        prompts = task.encode_prompts(probs, priv)
        full = m(torch.cat([prompts, c.tokens], 1))
        P = prompts.shape[1]
        torch.testing.assert_close(score(m, task, c, priv), full[:, P - 1:-1], atol=1e-12, rtol=0)
    assert c.mask.sum() == sum(len(p.target) + 1 for p in probs) and c.source == "data" and not c.on_policy


def test_from_model_marks_generated_tokens_and_source():
    task = get_task("sort")
    m = tiny_gpt(block=task.block_size, dtype=torch.float32)
    probs = task.problems(4, "train", torch.Generator().manual_seed(0))
    c = from_model(m, task, probs, "student")
    assert c.tokens.shape == (4, task.max_new_tokens) and c.on_policy and c.sample_logprobs.shape == c.tokens.shape
    assert c.n_tokens == int(c.mask.sum()) > 0


# ------------------------------------------------------------------ teacher folder and experiment
def _tiny_scale(task):
    ts = llm_scale(task, "ci")
    return TaskScale(**{**ts.__dict__, "teacher": NetSize(1, 2, 16), "student": NetSize(1, 2, 16),
                        "teacher_steps": 3, "student_steps": 3, "warm_steps": 2, "eval_n": 8})


def test_teacher_folder_round_trip_and_tamper_check(tmp_path):
    ts = _tiny_scale("sort")
    net = build_gpt(get_task("sort"), ts.teacher)
    save_teacher(net, tmp_path, "sort", ts, {"steps": 3, "train_seconds": 0.1, "history": {}, "tokens": 10},
                 "test", "ci")
    back = load_teacher("sort", tmp_path)["model"]
    x = torch.randint(0, 48, (2, 6))
    torch.testing.assert_close(back(x), net.half().float()(x), atol=1e-5, rtol=0)
    (tmp_path / "teacher.pt").write_bytes(b"tampered")
    with pytest.raises(LLMTeacherUnavailable, match="distill_lab.llm.teacher --task sort"):
        load_teacher("sort", tmp_path)


def test_experiment_refuses_a_teacher_of_another_tokenizer(tmp_path):
    ts = _tiny_scale("sort")
    net = build_gpt(get_task("sort"), ts.teacher)
    save_teacher(net, tmp_path, "sort", ts, {"steps": 3, "train_seconds": 0.1, "history": {}, "tokens": 10}, "t", "ci")
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["tokenizer"] = m["tokenizer"][:-1] + "!"
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="tokenizers differ"):
        LLMTask("sort", "ci", teacher_dir=tmp_path, task_scale=ts, progress=False)


def test_short_chain_variant_learns_from_the_teachers_shortened_chains():
    """On mult_short the teacher reads the full-chain prompt and writes the full chain: seq_kd trains on
    its chains without the running sums; a token-level recipe refuses with a message naming seq_kd."""
    from distill_lab.llm.recipes import completions

    ts = _tiny_scale("mult_short")
    exp = LLMTask("mult_short", "ci", teacher=build_gpt(get_task("mult"), ts.teacher).eval(), task_scale=ts,
                  progress=False)
    probs = exp.problems(4)
    assert all(p.teacher_prompt.replace("*", "x") == p.prompt for p in probs)
    c = completions(exp, None, probs, "teacher_greedy")
    full = from_model(exp.teacher, exp.task, probs, "teacher", temperature=0.0, privileged=True)
    for i, text in enumerate(exp.task.decode_completions(full.tokens)):
        assert exp.task.tokenizer.decode(c.tokens[i]) == exp.task.student_text(text) and ":" not in exp.task.student_text(text)
    assert get_recipe("seq_kd").train(exp).train_info["train_tokens"] > 0
    for name in ("word_kd", "gkd_jsd", "minillm"):
        with pytest.raises(ValueError, match="seq_kd"):
            get_recipe(name).train(exp)


@pytest.mark.parametrize("task", ["mult", "star"])
def test_every_recipe_trains_and_reports_its_tokens(task):
    ts = _tiny_scale(task)
    exp = LLMTask(task, "ci", teacher=build_gpt(get_task(task), ts.teacher).eval(), task_scale=ts, progress=False)
    for r in recipes("llm"):
        seed_everything(0)
        st = get_recipe(r.name).train(exp)
        info = st.train_info
        assert info["steps"] == 3 and info["train_tokens"] > 0
        assert info["on_policy"] == (r.family == "on-policy"), r.name
        assert (info["student_tokens"] > 0) == info["on_policy"], r.name
        assert 0.0 <= exp.evaluate(st)["accuracy"] <= 100.0
    with pytest.raises(ValueError, match="unknown option"):
        get_recipe("gkd_jsd").train(exp, betta=0.3)


def test_students_start_from_one_warm_start_a_seed():
    ts = _tiny_scale("sort")
    exp = LLMTask("sort", "ci", teacher=build_gpt(get_task("sort"), ts.teacher).eval(), task_scale=ts, progress=False)
    seed_everything(0)
    a = exp.student()
    r0 = torch.rand(())
    seed_everything(0)
    b = exp.student()
    assert torch.rand(()) == r0  # the warm start leaves the global RNG stream alone
    seed_everything(1)
    c = exp.student()
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", ["mult", "star"])
def test_forced_prefix_writes_the_true_chain_first(name):
    """The exposure-bias measurement gives the model the true chain (star: the planning node) and lets
    it continue; the completion keeps its full length."""
    task = get_task(name)
    m = tiny_gpt(block=task.block_size, dtype=torch.float32)
    probs = task.problems(3, "train", torch.Generator().manual_seed(0))
    gen = greedy_completions(m, task, probs, forced_prefix=True)
    assert gen.shape == (3, task.max_new_tokens)
    for p, text in zip(probs, task.decode_completions(gen)):
        assert text.startswith(task.forced_prefix(p)) and len(task.forced_prefix(p)) >= 1
    assert task.forced_prefix(probs[0]).endswith(">") if name == "mult" else len(task.forced_prefix(probs[0])) == 3


def test_a_fixed_pool_is_every_students_only_data():
    """``pool=N``: the warm start and every recipe draw their problems from one fixed set of N training
    problems (the same set for every seed of the experiment); ``mult@N`` names it on the command line."""
    from distill_lab.llm.bench import parse_task

    ts = _tiny_scale("sort")
    exp = LLMTask("sort", "ci", teacher=build_gpt(get_task("sort"), ts.teacher).eval(), task_scale=ts,
                  progress=False, pool=5)
    pool = {p.prompt for p in exp.pool_problems}
    assert len(exp.pool_problems) == 5 and exp.name == "sort@5"
    seed_everything(0)
    drawn = {p.prompt for _ in range(20) for p in exp.problems(4)}
    assert drawn <= pool and len(drawn) > 1
    info = get_recipe("sft").train(exp).train_info  # the data's sequences: at most the pool's 5
    assert 1 <= info["distinct_sequences"] <= 5 < info["steps"] * exp.batch
    seed_everything(1)
    assert [p.prompt for p in exp.pool_problems] == [p.prompt for p in LLMTask(
        "sort", "ci", teacher=exp.teacher, task_scale=ts, progress=False, pool=5).pool_problems]
    fresh = LLMTask("sort", "ci", teacher=exp.teacher, task_scale=ts, progress=False)
    assert fresh.name == "sort" and len({p.prompt for p in fresh.problems(40)}) > 5
    assert parse_task("mult") == ("mult", None) and parse_task("mult@256") == ("mult", 256)
    for bad, msg in (("mul@3", "unknown task"), ("mult@", "positive"), ("mult@0", "positive"), ("mult@x", "positive")):
        with pytest.raises(ValueError, match=msg):
            parse_task(bad)
    with pytest.raises(ValueError, match="pool"):
        LLMTask("sort", "ci", teacher=exp.teacher, task_scale=ts, progress=False, pool=0)


def test_a_fixed_pools_teacher_logits_are_scored_once_and_equal_the_teachers():
    """On a fixed pool the off-policy recipes read the frozen teacher's logits on the pool's data from one
    scoring of the whole pool: the same numbers as scoring the batch, the same student as scoring every
    step, and the teacher runs once (not once a step) for ``word_kd``."""
    from distill_lab.llm.recipes import pool_teacher_logits

    ts = _tiny_scale("sort")
    exp = LLMTask("sort", "ci", teacher=build_gpt(get_task("sort"), ts.teacher).eval(), task_scale=ts,
                  progress=False, pool=5)
    seed_everything(0)
    probs = exp.problems(4)
    c = from_data(exp.task, probs)
    with torch.no_grad():
        direct = score(exp.teacher, exp.task, c)
    torch.testing.assert_close(pool_teacher_logits(exp, c), direct, rtol=0, atol=1e-6)
    other = exp.task.problems(2, "train", torch.Generator().manual_seed(99))  # not in the pool
    assert pool_teacher_logits(exp, from_data(exp.task, other)) is None
    calls = []
    hook = exp.teacher.register_forward_hook(lambda *a: calls.append(1))
    llm_recipes._POOL_TEACHER.pop(exp, None)
    seed_everything(0)
    pooled = get_recipe("word_kd").train(exp)
    assert len(calls) == 1 and pooled.train_info["steps"] == 3
    hook.remove()
    scored_each_step = LLMTask("sort", "ci", teacher=exp.teacher, task_scale=ts, progress=False, pool=5)
    scored_each_step._warm = exp._warm
    llm_recipes._POOL_TEACHER[scored_each_step] = (exp.teacher, {}, None)  # no lookup: the loop scores every batch
    seed_everything(0)
    each = get_recipe("word_kd").train(scored_each_step)
    a, b = pooled.state_dict(), each.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
