"""Identities the LLM labs (40 to 42) used to assert in their cells, checked here on the labs' own objects:
the splits of lab 40's draws never overlap, the KV cache of lab 40's student-size GPT gives the full
forward's logits on its task, and lab 42's ``transformers`` copy of the committed multiplication teacher
computes the same logits, the same distillation loss and the same greedy answers. (The memory estimate
growing with the student's size, lab 42's last identity, is ``tests/test_llm_hf.py``'s
``test_estimate_of_the_gpu_recipe``.)"""

import pytest
import torch

from distill_lab.llm.gpt import GPT, GPTConfig
from distill_lab.llm.tasks import get_task, split_of


def test_lab40_splits_of_the_labs_draws_never_overlap():
    mult = get_task("mult")
    train = mult.problems(4000, "train", torch.Generator().manual_seed(1))
    test = mult.problems(1000, "test", torch.Generator().manual_seed(2))
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert all(split_of(p.prompt) == "test" for p in test) and all(split_of(p.prompt) == "train" for p in train)
    g = torch.Generator().manual_seed(3)
    share = sum(split_of(mult.draw(g).prompt) == "test" for _ in range(5000)) / 5000
    assert abs(share - 0.1) < 4 * (0.1 * 0.9 / 5000) ** 0.5  # one prompt in ten, within four standard errors


def test_lab40_kv_cache_of_the_student_size_gpt_equals_the_full_forward():
    """Lab 40's model (float32, its task's block size), one token at a time through the cache after a
    prefill, over whole prompt-and-target sequences."""
    mult = get_task("mult")
    torch.manual_seed(0)
    model = GPT(GPTConfig(mult.tokenizer.vocab_size, mult.block_size, n_layer=2, n_head=2, n_embd=64)).eval()
    problems = mult.problems(4, "train", torch.Generator().manual_seed(1))
    x = torch.cat([mult.encode_prompts(problems), mult.encode_targets(problems)], 1)
    assert x.shape[1] == mult.block_size
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        p = mult.prompt_len
        steps = [model(x[:, :p], cache)] + [model(x[:, i:i + 1], cache) for i in range(p, x.shape[1])]
        stepwise = torch.cat(steps, 1)
    torch.testing.assert_close(stepwise, full, rtol=0, atol=1e-4)


def test_lab42_transformers_copy_of_the_committed_teacher_is_the_same_teacher():
    pytest.importorskip("transformers")
    from distill_lab.llm import LLMTask, hf
    from distill_lab.llm.rollout import from_data, greedy_completions, score
    from distill_lab.methods.kd import token

    exp = LLMTask("mult", progress=False)
    teacher_hf = hf.gpt2_from_tiny(exp.teacher).to(exp.device)
    probs = exp.eval_problems[:32]
    batch = from_data(exp.task, probs, device=exp.device)
    torch.manual_seed(0)
    student = exp.student_factory().to(exp.device)
    with torch.no_grad():
        t_tiny, t_hf = score(exp.teacher, exp.task, batch), score(teacher_hf, exp.task, batch)
        s_logits = score(student, exp.task, batch)
        torch.testing.assert_close(t_hf, t_tiny, rtol=0, atol=1e-4)
        loss_tiny = token.gjsd_loss(s_logits, t_tiny, batch.mask, beta=0.5)
        loss_hf = token.gjsd_loss(s_logits, t_hf, batch.mask, beta=0.5)
    assert abs(float(loss_tiny) - float(loss_hf)) < 1e-5
    # greedy decoding with either model's cache: the same chains (float32 rounding may flip a near-tie)
    probs = exp.eval_problems[:64]
    a = greedy_completions(exp.teacher, exp.task, probs, device=exp.device)
    b = greedy_completions(teacher_hf, exp.task, probs, device=exp.device)
    assert (a != b).any(dim=1).sum() <= 1


def test_lab42_llama_student_factory_builds_a_wrapped_transformers_model():
    pytest.importorskip("transformers")
    from distill_lab.llm import hf

    task = get_task("sort")
    net = hf.tiny_model("llama", task.tokenizer.vocab_size, task.block_size, n_layer=1, n_embd=16, n_head=2)
    assert isinstance(net, hf.HFCausalLM) and net.vocab_size == task.tokenizer.vocab_size
    x = task.encode_prompts(task.problems(2, "train", torch.Generator().manual_seed(0)))
    assert net(x).shape == (*x.shape, task.tokenizer.vocab_size)
