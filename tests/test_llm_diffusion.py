"""The masked-diffusion LM core (issue 13, item 6): a bidirectional tiny GPT, MDLM's loss, the unmasking
sampler and TAD's loss, each on a case with a known answer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill_lab.llm.diffusion import denoiser_logits, masked_lm, mdlm_loss, tad_loss, unmask_sample
from distill_lab.llm.gpt import GPT, GPTConfig
from distill_lab.llm.config import NetSize
from distill_lab.llm.tasks import get_task

V, MASK = 12, 0


class Oracle(torch.nn.Module):
    """A denoiser that knows each prompt's completion. ``chain=True``: it is sure of position ``i`` only
    once position ``i - 1`` is revealed (a left-to-right dependency); before that it guesses ``wrong``
    with less confidence."""

    def __init__(self, answers: dict, chain: bool = False, wrong: int = 5):
        super().__init__()
        self.answers, self.chain, self.wrong = answers, chain, wrong
        self.config = GPTConfig(V, 64, causal=False)

    def forward(self, tokens):
        B, T = tokens.shape
        out = torch.zeros(B, T, V)
        for b in range(B):
            prompt = next(p for p in self.answers if tuple(tokens[b, :len(p)].tolist()) == p)
            ans, P = self.answers[prompt], len(prompt)
            for i, tok in enumerate(ans):
                known = not self.chain or i == 0 or tokens[b, P + i - 1] != MASK
                out[b, P + i, tok if known else self.wrong] = 9.0 if known else 3.0
        return out


def problems():
    answers = {(1, 2): (3, 4, 6, 7), (2, 2): (8, 8, 9, 3), (1, 1): (4, 3, 2, 11)}
    prompts = torch.tensor([list(p) for p in answers])
    return answers, prompts, torch.tensor([list(a) for a in answers.values()])


@pytest.mark.parametrize("order", ["confidence", "random"])
def test_one_token_per_forward_with_a_perfect_model_reproduces_the_data(order):
    answers, prompts, targets = problems()
    for k in (1, 2, 4):  # a perfect model needs no dependency between positions: any speed is exact
        tr = unmask_sample(Oracle(answers), prompts, 4, MASK, tokens_per_forward=k, order=order)
        assert torch.equal(tr.tokens, targets) and tr.forwards == math.ceil(4 / k)
        assert sorted(tr.reveal_step[0].tolist()) == sorted(i // k for i in range(4))  # k positions a pass


def test_parallel_decoding_breaks_a_left_to_right_dependency_that_one_token_a_forward_keeps():
    answers, prompts, targets = problems()
    oracle = Oracle(answers, chain=True)
    slow = unmask_sample(oracle, prompts, 4, MASK, tokens_per_forward=1)
    fast = unmask_sample(oracle, prompts, 4, MASK, tokens_per_forward=4)
    assert torch.equal(slow.tokens, targets)
    assert torch.equal(slow.reveal_step, torch.arange(4).expand(3, 4))  # confidence follows the chain
    assert torch.equal(fast.tokens[:, 0], targets[:, 0]) and (fast.tokens[:, 1:] == 5).all()


def test_the_sampler_never_writes_the_mask_token_and_refuses_bad_settings():
    net = masked_lm(get_task("sort"), NetSize(1, 2, 16))
    tok = get_task("sort").tokenizer
    prompts = torch.full((2, 3), tok.bos_id)
    tr = unmask_sample(net, prompts, 5, tok.pad_id, tokens_per_forward=2, temperature=1.0)
    assert (tr.tokens != tok.pad_id).all() and (tr.reveal_step >= 0).all() and tr.forwards == 3
    with pytest.raises(ValueError, match="tokens_per_forward"):
        unmask_sample(net, prompts, 5, tok.pad_id, tokens_per_forward=0)
    with pytest.raises(ValueError, match="bidirectional"):
        unmask_sample(GPT(GPTConfig(V, 16)), prompts, 5, MASK)


def test_a_bidirectional_gpt_reads_later_positions_and_a_causal_one_does_not():
    torch.manual_seed(0)
    a, b = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 3, 7]])
    bi = GPT(GPTConfig(V, 8, causal=False))
    ca = GPT(GPTConfig(V, 8))
    ca.load_state_dict(bi.state_dict())
    assert not torch.allclose(bi(a)[:, 0], bi(b)[:, 0])
    assert torch.allclose(ca(a)[:, :3], ca(b)[:, :3])
    with pytest.raises(ValueError, match="no KV cache"):
        bi(a, bi.new_cache())


class Uniform(torch.nn.Module):
    """Uniform logits with one trainable scale, so the loss's gradient reaches the model only."""

    def __init__(self):
        super().__init__()
        self.config = GPTConfig(V, 64, causal=False)
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, tokens):
        return self.w * torch.zeros(*tokens.shape, V)


def test_mdlm_loss_is_the_elbo_weighted_ce_of_the_masked_positions_without_padding():
    prompts = torch.ones(2, 2, dtype=torch.long)
    targets = torch.tensor([[3, 4, 5, 6], [3, 4, 1, 1]])  # 1: padding of the second row
    loss, info = mdlm_loss(Uniform(), prompts, targets, MASK, pad_id=1, t=torch.ones(2))
    assert loss.item() == pytest.approx(math.log(V)) and info["masked_share"] == 1.0  # t = 1: all masked, weight 1
    torch.manual_seed(3)
    t = torch.tensor([0.5, 0.25])
    loss, _ = mdlm_loss(Uniform(), prompts, targets, MASK, pad_id=1, t=t)
    torch.manual_seed(3)
    masked = (torch.rand(2, 4) < t[:, None]) & (targets != 1)
    want = ((masked.sum(1) / torch.tensor([4, 2])) / t).mean() * math.log(V)
    assert loss.item() == pytest.approx(want.item())
    with pytest.raises(ValueError, match="masking rates"):
        mdlm_loss(Uniform(), prompts, targets, MASK, t=torch.zeros(2))


def test_mdlm_loss_trains_a_real_bidirectional_gpt():
    task = get_task("sort")
    net = masked_lm(task, NetSize(1, 2, 16))
    probs = task.problems(4, "train", torch.Generator().manual_seed(0))
    prompts, targets = task.encode_prompts(probs), task.encode_targets(probs)
    loss, _ = mdlm_loss(net, prompts, targets, task.tokenizer.pad_id, task.tokenizer.pad_id)
    loss.backward()
    assert torch.isfinite(loss) and net.tok.weight.grad.abs().sum() > 0
    assert denoiser_logits(net, prompts, targets).shape == (*targets.shape, task.tokenizer.vocab_size)


def tad_case():
    g = torch.Generator().manual_seed(0)
    s, te = torch.randn(2, 3, V, generator=g), torch.randn(2, 3, V, generator=g)
    tokens = torch.randint(0, V, (2, 3), generator=g)
    steps = torch.tensor([[1, 2, 5], [3, 1, 4]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    return s, te, tokens, steps, mask


def per_token(s, te, tokens):
    logq, logp = F.log_softmax(s, -1), F.log_softmax(te, -1)
    return -logq.gather(-1, tokens[..., None]).squeeze(-1), (logp.exp() * (logp - logq)).sum(-1)


def test_tad_with_k_zero_is_pure_kl_and_with_k_infinite_pure_cross_entropy():
    s, te, tokens, steps, mask = tad_case()
    ce, kl = per_token(s, te, tokens)
    assert tad_loss(s, te, tokens, steps, 0, mask)[0].item() == pytest.approx(kl[mask].mean().item())
    assert tad_loss(s, te, tokens, steps, math.inf, mask)[0].item() == pytest.approx(ce[mask].mean().item())
    loss, info = tad_loss(s, te, tokens, steps, 2, mask)  # hard: revealed within 2 steps
    hard = mask & (steps <= 2)
    want = (ce[hard].sum() + kl[mask & ~hard].sum()) / mask.sum()
    assert loss.item() == pytest.approx(want.item()) and info["hard_share"] == pytest.approx(2 / 5)


def test_tad_trains_the_student_only_and_refuses_bad_input():
    s, te, tokens, steps, mask = tad_case()
    s, te = s.clone().requires_grad_(), te.clone().requires_grad_()
    tad_loss(s, te, tokens, steps, 2, mask)[0].backward()
    assert te.grad is None and s.grad[1, 1].abs().sum() == 0 and s.grad[0, 0].abs().sum() > 0  # unmasked: no signal
    with pytest.raises(ValueError, match="at least one step"):
        tad_loss(s, te, tokens, torch.zeros_like(steps), 2, mask)
    with pytest.raises(ValueError, match="k counts"):
        tad_loss(s, te, tokens, steps, -1, mask)


def test_gdsd_moves_only_the_sampled_tokens_logit_by_the_advantage_over_beta():
    from distill_lab.llm.diffusion import elbo_pg_loss, gdsd_loss

    z = torch.randn(2, 3, V, dtype=torch.float64, requires_grad=True)
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss, _ = gdsd_loss(z, tokens, adv, 0.5, mask)
    assert loss.item() == pytest.approx(0.5 * ((adv[:, None] / 0.5) ** 2 * mask).sum().item() / 5)
    loss.backward()
    want = torch.zeros_like(z)
    for b in range(2):
        for i in range(3):
            if mask[b, i]:
                want[b, i, tokens[b, i]] = -adv[b] / 0.5 / 5  # a descent step raises y's logit by A / beta
    assert torch.allclose(z.grad, want)
    zero, _ = gdsd_loss(z, tokens, torch.zeros(2, dtype=torch.float64), 0.5, mask)
    assert zero.item() == 0.0
    z.grad = None  # the ELBO surrogate moves every logit of a position, through the softmax
    elbo_pg_loss(z, tokens, adv, torch.tensor([0.5, 1.0], dtype=torch.float64), mask)[0].backward()
    other = torch.ones_like(z, dtype=torch.bool).scatter_(-1, tokens[..., None], False) & mask[..., None]
    assert (z.grad[other] != 0).all() and (z.grad[~mask] == 0).all()
    with pytest.raises(ValueError, match="beta"):
        gdsd_loss(z, tokens, adv, 0.0, mask)


def test_the_elbo_surrogate_is_reinforce_on_the_scaled_masked_log_likelihood():
    from distill_lab.llm.diffusion import elbo_pg_loss, gdsd_loss

    z = torch.randn(2, 3, V, dtype=torch.float64)
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    t = torch.tensor([0.5, 0.25], dtype=torch.float64)
    logp = F.log_softmax(z, -1).gather(-1, tokens[..., None]).squeeze(-1)
    elbo = (logp * mask).sum(1) / t / 3
    loss, info = elbo_pg_loss(z, tokens, adv, t, mask)
    assert loss.item() == pytest.approx(-(adv * elbo).mean().item()) and info["elbo"] == pytest.approx(elbo.mean().item())
    _, info = gdsd_loss(z, tokens, adv, 0.5, mask)
    assert info["shift"] == pytest.approx(3.0)  # mean |A| / beta
    one = torch.tensor([[True, False, False], [False, False, False]])  # a single scored position: its own value
    lg, _ = gdsd_loss(z, tokens, adv, 0.5, one)
    assert lg.item() == pytest.approx(0.5 * (1.0 / 0.5) ** 2)
    with pytest.raises(ValueError, match="one number a sequence"):
        elbo_pg_loss(z, tokens, adv, torch.ones(3, dtype=torch.float64), mask)


def test_mdlm_draws_rates_in_the_unit_interval_and_normalises_by_valid_positions():
    prompts = torch.ones(3, 2, dtype=torch.long)
    targets = torch.tensor([[3, 1, 1], [3, 4, 1], [3, 4, 5]])  # one, two and three valid tokens
    torch.manual_seed(0)
    for _ in range(20):
        _, info = mdlm_loss(Uniform(), prompts, targets, MASK, pad_id=1)
        assert ((info["t"] > 0) & (info["t"] <= 1)).all()
    loss, _ = mdlm_loss(Uniform(), prompts[:1], targets[:1], MASK, pad_id=1, t=torch.ones(1))
    assert loss.item() == pytest.approx(math.log(V))  # one valid token, masked: its CE over one position
    with pytest.raises(ValueError, match="masking rates"):
        mdlm_loss(Uniform(), prompts, targets, MASK, t=torch.full((3,), 1.5))


def test_tad_on_one_masked_position_is_that_positions_loss():
    s, te, tokens, steps, mask = tad_case()
    ce, kl = per_token(s, te, tokens)
    one = torch.zeros_like(mask)
    one[0, 2] = True  # revealed 5 steps later: soft
    assert tad_loss(s, te, tokens, steps, 2, one)[0].item() == pytest.approx(kl[0, 2].item())


def test_masked_lm_is_sized_as_asked_and_a_model_without_a_config_is_refused():
    net = masked_lm(get_task("sort"), NetSize(3, 4, 16))
    cfg = net.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.causal) == (3, 4, 16, False)

    class Bare(torch.nn.Module):
        def forward(self, tokens):
            return torch.zeros(*tokens.shape, V)

    with pytest.raises(ValueError, match="bidirectional"):
        denoiser_logits(Bare(), torch.ones(1, 2, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
