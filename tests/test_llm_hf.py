"""Tests for the Hugging Face adapter (distill_lab.llm.hf) on tiny GPT-2 and Llama models built locally
(no download): the adapter's logits are the wrapped model's, a cached token-by-token decode equals
the full forward, the track's generate / score / losses run on it unchanged and agree with the tiny
GPT path (a tiny GPT's weights ported into an HF GPT-2 give the same rollouts and losses), and the
alignment of ``score`` is checked against transformers' own shifted language-model loss."""

import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from distill_lab.llm import hf  # noqa: E402
from distill_lab.llm.gpt import GPT, GPTConfig, generate  # noqa: E402
from distill_lab.llm.rollout import from_data, from_model, score  # noqa: E402
from distill_lab.llm.tasks import Multiplication, Tokenizer  # noqa: E402
from distill_lab.methods.kd import token as tk  # noqa: E402

KINDS = ("gpt2", "llama")
V, BLOCK = 48, 24
TIGHT = {"rtol": 0.0, "atol": 1e-10}
# the losses (and transformers' own loss) compute in float32; the bugs targeted give errors of order 1
LOSS = {"rtol": 1e-5, "atol": 1e-6}


def _tokens(B, T, seed=0, vocab=V):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def _hf(kind, seed=0, vocab=V, block=BLOCK, **kw):
    return hf.tiny_model(kind, vocab, block, seed=seed, **kw).double().eval()


def _gpt(seed=0, vocab=V, block=BLOCK):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(GPTConfig(vocab, block, n_layer=2, n_head=2, n_embd=32)).double().eval()


def _port(gpt: GPT) -> hf.HFCausalLM:
    return hf.gpt2_from_tiny(gpt.double()).double()


# ============================================================================ the adapter's calls
@pytest.mark.parametrize("kind", KINDS)
def test_full_forward_is_the_wrapped_models_logits(kind):
    m = _hf(kind)
    x = _tokens(3, 11)
    out = m(x)
    assert out.shape == (3, 11, V) and out.dtype == torch.float64
    torch.testing.assert_close(out, m.model(input_ids=x).logits, **TIGHT)
    assert m.vocab_size == m.config.vocab_size == V and m.block_size == m.config.block_size == BLOCK
    assert isinstance(m.model, torch.nn.Module)


@pytest.mark.parametrize("kind", KINDS)
def test_cached_decode_equals_full_forward(kind):
    """Prefill a prompt, then one token at a time, then a chunk of two: the positions must continue
    where the cache stopped (a wrong position id or a missing cache entry changes every logit)."""
    m = _hf(kind, seed=1)
    x = _tokens(2, 14, seed=1)
    full = m(x)
    cache = m.new_cache(2)
    parts = [m(x[:, :5], cache)]
    assert len(cache) == 5
    for i in range(5, 12):
        parts.append(m(x[:, i:i + 1], cache))
    parts.append(m(x[:, 12:14], cache))
    assert len(cache) == 14 and all(p.shape[1] == n for p, n in zip(parts, [5] + [1] * 7 + [2]))
    torch.testing.assert_close(torch.cat(parts, 1), full, **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_greedy_equals_repeated_full_forwards(kind):
    m = _hf(kind, seed=2)
    prompt = _tokens(3, 4, seed=2)
    r = generate(m, prompt, 8, temperature=0.0)
    seq, lps = prompt, []
    for _ in range(8):
        logp = F.log_softmax(m(seq)[:, -1], -1)
        nxt = logp.argmax(-1)
        lps.append(logp.gather(-1, nxt[:, None]).squeeze(-1))
        seq = torch.cat([seq, nxt[:, None]], 1)
    assert torch.equal(r.tokens, seq)
    torch.testing.assert_close(r.logprobs.double(), torch.stack(lps, 1), rtol=0, atol=1e-5)
    assert r.prompt_len == 4 and r.mask[:, 4:].all() and not r.mask[:, :4].any()


def test_ported_tiny_gpt_gives_the_same_logits_and_rollouts():
    """A tiny GPT's weights in an HF GPT-2: the same logits, and the track's sampler then draws the
    same tokens with the same log-probabilities and end-of-sequence masks from either."""
    gpt = _gpt(seed=3)
    m = _port(gpt)
    x = _tokens(2, BLOCK, seed=3)
    torch.testing.assert_close(m(x), gpt(x), **TIGHT)
    prompt = _tokens(16, 4, seed=4)
    a = generate(gpt, prompt, 20, temperature=1.0, eos_id=2, generator=torch.Generator().manual_seed(0))
    b = generate(m, prompt, 20, temperature=1.0, eos_id=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert (~a.mask[:, 4:]).any(), "no sequence ended: the mask comparison would be vacuous"
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=1e-6)


def test_half_precision_logits_come_back_float32():
    m = hf.tiny_model("llama", V, BLOCK, seed=4).to(torch.bfloat16).eval().requires_grad_(False)
    x = _tokens(2, 6, seed=4)
    full = m(x)
    assert full.dtype == torch.float32
    cache = m.new_cache(2)
    steps = torch.cat([m(x[:, :3], cache)] + [m(x[:, i:i + 1], cache) for i in range(3, 6)], 1)
    # bf16 rounding allowed; a shifted position changes logits by the order of their size
    torch.testing.assert_close(steps, full, rtol=0, atol=0.02 * float(full.abs().max()))


# ============================================================================ rollouts and losses
def _task_batch():
    task = Multiplication(2, 2)
    problems = task.problems(4, generator=torch.Generator().manual_seed(0))
    batch = from_data(task, problems)
    # end two rows early, so the mask selects a different number of positions per row
    pad, eos = task.tokenizer.pad_id, task.tokenizer.eos_id
    batch.tokens[1, 6], batch.tokens[1, 7:] = eos, pad
    batch.tokens[3, 10], batch.tokens[3, 11:] = eos, pad
    batch.mask = batch.tokens != pad
    batch.mask[1, 6] = batch.mask[3, 10] = True
    return task, batch


def test_score_and_losses_match_hand_alignment_and_the_tiny_gpt_path():
    """``score`` with an HF teacher and a tiny GPT student: each model's logits are its own full
    forward at positions P-1 .. P+N-2 (the ones that predict the completion), the losses equal those
    on the hand slices, and the teacher's cross-entropy equals transformers' own shifted LM loss, so
    an off-by-one in ``score`` fails. A ported copy of the student scores and loses the same."""
    task, batch = _task_batch()
    vocab, block = task.tokenizer.vocab_size, task.block_size
    teacher = _hf("llama", seed=5, vocab=vocab, block=block)
    student = _gpt(seed=6, vocab=vocab, block=block)
    prompts = task.encode_prompts(batch.problems)
    P, N = prompts.shape[1], batch.tokens.shape[1]
    seq = torch.cat([prompts, batch.tokens], 1)
    with torch.no_grad():
        t_logits = score(teacher, task, batch)
    s_logits = score(student, task, batch)
    torch.testing.assert_close(t_logits, teacher(seq)[:, P - 1:P + N - 1], **TIGHT)
    torch.testing.assert_close(s_logits, student(seq)[:, P - 1:P + N - 1], **TIGHT)

    labels = seq.masked_fill(torch.cat([torch.zeros_like(prompts, dtype=torch.bool), batch.mask], 1).logical_not(), -100)
    hf_ce = teacher.model(input_ids=seq, labels=labels).loss
    torch.testing.assert_close(tk.token_ce_loss(t_logits, batch.tokens, batch.mask), hf_ce.to(t_logits.dtype), **LOSS)

    hand_t = teacher(seq)[:, P - 1:P + N - 1]
    hand_s = student(seq)[:, P - 1:P + N - 1]
    for loss in (tk.forward_kl_loss, tk.reverse_kl_loss, lambda s, t, m: tk.gjsd_loss(s, t, m, beta=0.5)):
        got = loss(s_logits, t_logits, batch.mask)
        torch.testing.assert_close(got, loss(hand_s, hand_t, batch.mask), **LOSS)
        assert float(got.detach()) > 1e-3  # two random models: a vanishing loss would hide a mix-up

    ported = _port(student)
    torch.testing.assert_close(score(ported, task, batch), s_logits.detach(), **TIGHT)
    torch.testing.assert_close(tk.gjsd_loss(score(ported, task, batch), t_logits, batch.mask),
                               tk.gjsd_loss(s_logits, t_logits, batch.mask), **LOSS)


def test_on_policy_step_trains_an_hf_student():
    """One GKD step (the student's own samples, generalised JSD to an HF teacher) through the adapter:
    the gradient reaches the wrapped model's weights and the loss on the same batch goes down."""
    task = Multiplication(2, 2)
    problems = task.problems(8, generator=torch.Generator().manual_seed(1))
    vocab, block = task.tokenizer.vocab_size, task.block_size
    teacher = _hf("gpt2", seed=7, vocab=vocab, block=block)
    student = hf.tiny_model("llama", vocab, block, seed=8).double().train()
    batch = from_model(student, task, problems, "student", generator=torch.Generator().manual_seed(2))
    assert student.training and batch.on_policy and batch.mask.any()
    with torch.no_grad():
        t_logits = score(teacher, task, batch)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    before = tk.gjsd_loss(score(student, task, batch), t_logits, batch.mask, beta=0.5)
    before.backward()
    assert all(p.grad is not None for p in student.model.parameters() if p.requires_grad)
    opt.step()
    with torch.no_grad():
        after = tk.gjsd_loss(score(student, task, batch), t_logits, batch.mask, beta=0.5)
    assert float(after) < float(before.detach())


# ============================================================================ refusals
def test_bad_tokens_raise():
    m = _hf("gpt2")
    with pytest.raises(ValueError, match=r"\[0, 47\]"):
        m(torch.tensor([[1, V]]))
    with pytest.raises(ValueError, match="vocabulary"):
        m(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="block_size"):
        m(_tokens(1, BLOCK + 1))
    cache = m.new_cache(1)
    m(_tokens(1, BLOCK - 1), cache)
    with pytest.raises(ValueError, match="block_size"):
        m(_tokens(1, 2), cache)
    with pytest.raises(ValueError, match="integer tensor"):
        m(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="batch of 2"):
        c2 = m.new_cache(2)
        m(_tokens(2, 3), c2)
        m(_tokens(3, 1), c2)


def test_vocab_mismatch_in_a_loss_raises_and_vocab_size_trims_padded_logits():
    task, batch = _task_batch()
    vocab, block = task.tokenizer.vocab_size, task.block_size
    big = _hf("llama", vocab=vocab + 3, block=block)
    student = _gpt(vocab=vocab, block=block)
    with torch.no_grad():
        t_logits, s_logits = score(big, task, batch), score(student, task, batch)
    with pytest.raises(ValueError, match="one vocabulary"):
        tk.forward_kl_loss(s_logits, t_logits, batch.mask)
    trimmed = hf.HFCausalLM(big.model, vocab_size=vocab)
    with torch.no_grad():
        t2 = score(trimmed, task, batch)
    torch.testing.assert_close(t2, t_logits[..., :vocab], **TIGHT)
    assert torch.isfinite(tk.forward_kl_loss(s_logits, t2, batch.mask))
    with pytest.raises(ValueError, match="vocab_size"):
        hf.HFCausalLM(big.model, vocab_size=vocab + 4)


class _FakeTok:
    def __init__(self, tokens):
        self._v = {t: i for i, t in enumerate(tokens)}

    def get_vocab(self):
        return dict(self._v)


def test_check_tokenizers():
    a = _FakeTok(["<s>", "</s>", "a", "b", "c"])
    hf.check_tokenizers(a, _FakeTok(["<s>", "</s>", "a", "b", "c"]))
    with pytest.raises(ValueError, match=r"5 and 6 tokens.*one vocabulary.*sequence level"):
        hf.check_tokenizers(a, _FakeTok(["<s>", "</s>", "a", "b", "c", "d"]))
    with pytest.raises(ValueError, match=r"both 5 tokens, 2 of them"):
        hf.check_tokenizers(a, _FakeTok(["<s>", "</s>", "b", "a", "c"]))
    with pytest.raises(TypeError, match="get_vocab"):
        hf.check_tokenizers(a, object())
    hf.check_tokenizers(Tokenizer(), Tokenizer())
    with pytest.raises(ValueError, match="one vocabulary"):
        hf.check_tokenizers(Tokenizer(), Tokenizer("_^$0123456789"))


def test_tiny_config_refuses_bad_arguments():
    with pytest.raises(ValueError, match="unknown kind"):
        hf.tiny_config("mamba", V, BLOCK)
    with pytest.raises(ValueError, match="eos_id"):
        hf.tiny_config("gpt2", 2, BLOCK)
    with pytest.raises(ValueError, match="multiple"):
        hf.tiny_config("llama", V, BLOCK, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="vocab_size and block_size"):
        hf.tiny_config("gpt2")
    # the same seed gives the same weights; the global random stream is left alone
    state = torch.random.get_rng_state()
    a, b = hf.tiny_model("llama", V, BLOCK, seed=3), hf.tiny_model("llama", V, BLOCK, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_missing_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r'pip install "distill-lab\[hf\]"'):
        hf.tiny_config("gpt2", V, BLOCK)


def test_from_pretrained_wraps_the_hub_loader(monkeypatch):
    """No download: the Hub loader is replaced by a tiny model; the wrapper's arguments reach it."""
    import transformers

    seen = {}

    def fake(name, **kwargs):
        seen.update(name=name, **kwargs)
        return transformers.AutoModelForCausalLM.from_config(hf.tiny_config("llama", V, BLOCK))

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    m = hf.from_pretrained("org/model", dtype=torch.float64, device="cpu", revision="main")
    assert isinstance(m, hf.HFCausalLM) and m.vocab_size == V
    key = "dtype" if "dtype" in seen else "torch_dtype"
    assert seen["name"] == "org/model" and seen[key] == torch.float64 and seen["revision"] == "main"


# ============================================================================ the GPU recipe
def test_estimate_of_the_gpu_recipe():
    r = hf.GPU_RECIPE
    assert r["teacher"] == "Qwen/Qwen2.5-1.5B-Instruct" and r["student"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert r["method"] == "gkd_jsd" and all(r[k] > 0 for k in ("batch", "max_new_tokens", "steps"))
    e = hf.estimate(r)
    assert e == r["estimate"]
    assert e["memory_gb"] > 0 and e["step_s"] > 0 and e["hours"] > 0 and e["hours_eager"] >= e["hours"]
    b = e["memory_breakdown_gb"]
    assert b["teacher_weights"] == pytest.approx(2 * 1.54) and b["student_train_state"] == pytest.approx(16 * 0.49)
    assert e["memory_gb"] == pytest.approx(sum(b.values()))
    assert e["memory_gb"] < 80, "the recipe should fit the GPU it names"
    sizes = [0.1e9, 0.49e9, 1e9, 3e9]
    est = [hf.estimate(dict(r, student_params=n)) for n in sizes]
    mem, step = [x["memory_gb"] for x in est], [x["step_s"] for x in est]
    assert mem == sorted(mem) and len(set(mem)) == len(mem)
    assert step == sorted(step) and len(set(step)) == len(step)
    with pytest.raises(ValueError, match="positive"):
        hf.estimate(dict(r, batch=0))
