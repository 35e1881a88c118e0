"""A tiny GPT in one file: the language model of the LLM track (nanoGPT-sized, trained from scratch).

* :class:`GPTConfig` -- vocabulary, context length, width, depth, heads;
* :class:`GPT` -- token and position embeddings, pre-norm blocks of causal self-attention and an
  MLP, a final norm and an untied head. ``model(tokens)`` returns the logits of **every** position,
  ``[B, T, V]`` (distillation compares the teacher's and the student's next-token distributions at
  each position, not only the last); ``model(tokens, cache)`` appends ``tokens`` to a :class:`KVCache`
  and returns the logits of the new positions only;
* :func:`generate` -- sampling with the KV cache, temperature and top-k, optionally from a mixture
  with a second model (MiniLLM's teacher-mixed sampling). It returns a :class:`Rollout`: the tokens,
  the log-probability of each sampled token under the distribution it was drawn from, and a mask of
  the generated positions (up to and including the end-of-sequence token).

Any model with the same two calls (``model(tokens, cache=None)`` and ``model.new_cache(batch)``) can
be sampled and distilled by the track; :mod:`distill_lab.llm.hf` wraps Hugging Face causal LMs so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """``vocab_size`` tokens, sequences of at most ``block_size``, ``n_layer`` blocks of width ``n_embd``
    with ``n_head`` heads (``n_embd`` must divide by ``n_head``). ``causal=False``: every position attends
    to every other (the bidirectional denoiser of a masked-diffusion LM, :mod:`distill_lab.llm.diffusion`;
    it has no KV cache)."""

    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    causal: bool = True

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if min(self.vocab_size, self.block_size, self.n_layer, self.n_head) < 1:
            raise ValueError(f"every size of GPTConfig must be >= 1, got {self}")


class KVCache:
    """Keys and values of every layer for the positions seen so far: ``k[l], v[l]`` of shape
    ``[B, heads, T, head_dim]``. :class:`GPT` appends to it; ``len(cache)`` is the number of positions."""

    def __init__(self, n_layer: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def __len__(self) -> int:
        return self.length(0)

    def length(self, layer: int) -> int:
        """Positions cached at ``layer`` (during a forward the earlier layers are already one step ahead)."""
        return 0 if self.k[layer] is None else self.k[layer].shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.causal = cfg.n_head, cfg.causal
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))
        past = 0
        if cache is not None and not self.causal:
            raise ValueError("a bidirectional (causal=False) GPT has no KV cache: every position reads every "
                             "other, so a new token changes them all; call it on the whole sequence")
        if cache is not None:
            past = cache.length(layer)
            k, v = cache.append(layer, k, v)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:  # new queries see every cached position and the new ones up to themselves
            S = k.shape[2]
            allowed = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd))

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """The tiny GPT (see the module docstring). Weights initialised as GPT-2 (normal, std 0.02; the
    residual projections scaled by ``1/sqrt(2 n_layer)``)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("proj.weight") or name.endswith("mlp.2.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def new_cache(self, batch: int | None = None) -> KVCache:
        """An empty :class:`KVCache` (the batch size is taken from the first tokens appended)."""
        return KVCache(self.config.n_layer)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``[B, T, V]`` of the next token after each of ``tokens [B, T]`` (int64). With a
        ``cache``, ``tokens`` continue the cached positions and are appended to the cache."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor [B, T], got {tuple(tokens.shape)} {tokens.dtype}")
        past = 0 if cache is None else len(cache)
        T = tokens.shape[1]
        if past + T > self.config.block_size:
            raise ValueError(f"{past + T} positions exceed the model's block_size {self.config.block_size}; "
                             "shorten the sequence or build the GPT with a larger block_size")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size - 1}] (the model's vocabulary); "
                             "was the sequence encoded with another task's tokenizer?")
        pos = torch.arange(past, past + T, device=tokens.device)
        x = self.tok(tokens) + self.pos(pos)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        self.last_hidden = self.ln_f(x)  # [B, T, C]: the last forward's final hidden states (feature distillation)
        return self.head(self.last_hidden)


@dataclass
class Rollout:
    """Sampled continuations: ``tokens [B, P + N]`` (prompt then generated, padded after the end token),
    ``logprobs [B, N]`` (log-probability of each sampled token under the distribution it was drawn
    from; 0 on padding), ``mask [B, P + N]`` (True at generated positions up to and including the end
    token), and ``prompt_len`` P."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    mask: torch.Tensor
    prompt_len: int

    @property
    def generated(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_len:]

    @property
    def n_generated(self) -> int:
        """Generated tokens, end tokens included, padding excluded."""
        return int(self.mask.sum())


def _filter(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return F.log_softmax(logits, dim=-1)


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, eos_id: int | None = None, pad_id: int = 0,
             generator: torch.Generator | None = None, mix_with: nn.Module | None = None,
             mix_alpha: float = 0.0, mix_prompt: torch.Tensor | None = None) -> Rollout:
    """Sample ``max_new_tokens`` after ``prompt [B, P]`` (one length for the whole batch) with the KV cache.

    ``temperature`` 0 is greedy decoding. ``top_k`` keeps the k most likely tokens. A sequence stops at
    ``eos_id``; the positions after it hold ``pad_id`` and are outside the mask. With ``mix_with`` (a
    second model, e.g. the teacher) each token is drawn from ``mix_alpha * p_mix + (1 - mix_alpha) *
    p_model`` (MiniLLM's teacher-mixed sampling, Gu et al. 2024, sec. 2.2), and ``logprobs`` are under
    that mixture; ``mix_prompt`` (default ``prompt``) is what the second model reads before the
    shared continuation (a privileged teacher's own prompt, of any length). No gradient flows: the procedures re-score the tokens with gradient.
    """
    if prompt.dim() != 2:
        raise ValueError(f"prompt must be [B, P] token ids, got shape {tuple(prompt.shape)}")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if not 0.0 <= mix_alpha <= 1.0:
        raise ValueError(f"mix_alpha must lie in [0, 1], got {mix_alpha}")
    B, P = prompt.shape
    models = [model] + ([mix_with] if mix_with is not None else [])
    caches = [m.new_cache(B) for m in models]
    prompts = [prompt, prompt if mix_prompt is None else mix_prompt]
    logits = [m(p, c)[:, -1] for m, p, c in zip(models, prompts, caches)]
    out, lps = [], []
    done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    alive = torch.ones(B, max_new_tokens, dtype=torch.bool, device=prompt.device)
    for n in range(max_new_tokens):
        greedy = temperature == 0
        logp = _filter(logits[0], 1.0 if greedy else temperature, top_k)
        if mix_with is not None and mix_alpha > 0:
            logp_mix = _filter(logits[1], 1.0 if greedy else temperature, top_k)
            logp = torch.logaddexp(logp + math.log1p(-mix_alpha) if mix_alpha < 1 else torch.full_like(logp, -math.inf),
                                   logp_mix + math.log(mix_alpha))
        if greedy:
            nxt = logp.argmax(-1)
        else:
            nxt = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        lp = logp.gather(-1, nxt[:, None]).squeeze(-1)
        alive[:, n] = ~done
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        lps.append(torch.where(done, torch.zeros_like(lp), lp))
        out.append(nxt)
        if eos_id is not None:
            done = done | (nxt == eos_id)
            if bool(done.all()):
                alive = alive[:, :n + 1]
                break
        if n + 1 < max_new_tokens:
            logits = [m(nxt[:, None], c)[:, -1] for m, c in zip(models, caches)]
    gen = torch.stack(out, 1)
    mask = torch.cat([torch.zeros(B, P, dtype=torch.bool, device=prompt.device), alive], 1)
    return Rollout(torch.cat([prompt, gen], 1), torch.stack(lps, 1), mask, P)
