"""Hugging Face causal LMs in the LLM track: the adapter that lets the track's losses, rollouts and
procedures run on a ``transformers`` model instead of the tiny GPT.

The track calls a language model in two ways only (see :mod:`distill_lab.llm.gpt`):
``model(tokens, cache=None) -> logits [B, T, V]`` and ``model.new_cache(batch)``. :class:`HFCausalLM`
gives any ``AutoModelForCausalLM``-like model those two calls, so :func:`~distill_lab.llm.gpt.generate`,
:func:`~distill_lab.llm.rollout.score`, :func:`~distill_lab.llm.rollout.from_model` and the losses of
:mod:`distill_lab.methods.kd.token` take it unchanged, as teacher, student or both.

* :class:`HFCausalLM` -- the adapter: full-sequence logits, and incremental decoding through a
  :class:`HFCache` (the model's own key/value cache plus the number of positions seen, so positions
  continue where the cache stopped and a token-by-token decode equals the full forward);
* :func:`tiny_config` and :func:`tiny_model` -- small randomly initialised GPT-2 or Llama models built
  locally (no download), for tests and for running the track's procedures on a real HF architecture;
* :func:`gpt2_from_tiny` -- a tiny GPT of this track (a committed teacher) as a ``transformers`` GPT-2
  with the same logits;
* :func:`from_pretrained` -- a thin wrapper that downloads a checkpoint from the Hub (needs a network);
* :func:`check_tokenizers` -- refuses a teacher and a student whose vocabularies differ (token-level
  losses compare distributions over the same ids);
* :data:`GPU_RECIPE` and :func:`estimate` -- a real teacher/student pair (Qwen2.5 1.5B -> 0.5B, one
  tokenizer) for a machine with a network and a GPU, with its memory and time worked out from
  parameter counts.

What the adapter does not do: tokenise text (the track's tasks bring their own character tokenizer;
with a pretrained model, encode with its tokenizer and build the prompts yourself), pad or mask
(every position attends to every earlier one, as in the tiny GPT, so the prompts of one batch must
have one length, as the track's tasks guarantee), batch beams, or speed up decoding (it is the
track's plain Python loop over ``model(token, cache)``, one call per token).

``transformers`` is an optional dependency (``pip install "distill-lab[hf]"``); it is imported only
when a function here needs it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

INSTALL_HINT = 'pip install "distill-lab[hf]"'


def _transformers():
    """The ``transformers`` module, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError("distill_lab.llm.hf needs Hugging Face transformers, an optional dependency of "
                          f"distill-lab: {INSTALL_HINT}") from e
    return transformers


def _version(transformers) -> tuple[int, int]:
    parts = []
    for p in transformers.__version__.split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (2 - len(parts)))


# ============================================================================ the adapter
@dataclass(frozen=True)
class HFConfig:
    """What the track reads from a model's ``.config``: ``vocab_size`` (the logits' last size) and
    ``block_size`` (the most positions the model takes). The full Hugging Face config is ``model.config``
    of the wrapped model."""

    vocab_size: int
    block_size: int


class HFCache:
    """A Hugging Face key/value cache (``hf``, e.g. ``transformers.DynamicCache``) and the number of
    positions appended so far (``len(cache)``), which is where the next tokens' positions start."""

    def __init__(self, hf_cache, batch: int | None = None):
        self.hf = hf_cache
        self.batch = batch
        self.seen = 0

    def __len__(self) -> int:
        return self.seen

    def __repr__(self):
        return f"HFCache({self.seen} positions, batch={self.batch}, {type(self.hf).__name__})"


class HFCausalLM(nn.Module):
    """A ``transformers`` causal LM with the tiny GPT's two calls (see the module docstring).

    ``model`` is any causal LM that returns ``.logits`` and takes a key/value cache (``cache=`` in
    transformers 5, ``past_key_values=`` before; the name is read from its ``forward``'s signature),
    ``position_ids`` and ``use_cache``. It is kept as ``.model``. ``vocab_size`` (default: the
    model's) keeps only the first ``vocab_size`` logits: for checkpoints whose embedding matrix is
    padded past the tokenizer's last id, so two models of one tokenizer give logits of one size.
    ``block_size`` (default: the config's ``max_position_embeddings``) caps the positions.

    Logits come back in the model's dtype, except that half-precision logits (bf16, fp16) are
    upcast to float32, as the losses compute in float32 anyway.
    """

    def __init__(self, model: nn.Module, vocab_size: int | None = None, block_size: int | None = None):
        super().__init__()
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "vocab_size", None) is None:
            raise TypeError(f"HFCausalLM wraps a transformers causal LM (with .config.vocab_size), got {type(model).__name__}")
        model_vocab = int(cfg.vocab_size)
        vocab_size = model_vocab if vocab_size is None else int(vocab_size)
        if not 1 <= vocab_size <= model_vocab:
            raise ValueError(f"vocab_size must lie in [1, {model_vocab}] (the model's logits), got {vocab_size}")
        if block_size is None:
            block_size = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
            if block_size is None:
                raise ValueError(f"{type(model).__name__}'s config names no max_position_embeddings; pass block_size")
        self.model = model
        self.config = HFConfig(vocab_size, int(block_size))
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._cache_position = "cache_position" in params  # transformers 4.x also takes explicit cache positions

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def new_cache(self, batch: int | None = None) -> HFCache:
        """An empty :class:`HFCache` holding a fresh ``transformers.DynamicCache`` for this model."""
        transformers = _transformers()
        try:
            hf = transformers.DynamicCache(config=self.model.config)
        except TypeError:  # older transformers: DynamicCache() takes no config
            hf = transformers.DynamicCache()
        return HFCache(hf, batch)

    def forward(self, tokens: torch.Tensor, cache: HFCache | None = None) -> torch.Tensor:
        """Logits ``[B, T, V]`` of the next token after each of ``tokens [B, T]`` (int64). With a
        ``cache``, ``tokens`` continue the cached positions (their position ids start at ``len(cache)``),
        are appended to it, and only their logits are returned."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor [B, T], got {tuple(tokens.shape)} {tokens.dtype}")
        if cache is not None and not isinstance(cache, HFCache):
            raise TypeError(f"cache must come from this model's new_cache(), got {type(cache).__name__}")
        B, T = tokens.shape
        past = 0 if cache is None else len(cache)
        if past + T > self.block_size:
            raise ValueError(f"{past + T} positions exceed the model's block_size {self.block_size}; "
                             "shorten the sequence or pass a larger block_size if the model allows it")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size - 1}] (the model's vocabulary); "
                             "was the sequence encoded with another model's or task's tokenizer?")
        if cache is not None:
            if cache.batch is None:
                cache.batch = B
            elif cache.batch != B:
                raise ValueError(f"the cache holds a batch of {cache.batch} sequences, got tokens for {B}")
        tokens = tokens.long()
        positions = torch.arange(past, past + T, device=tokens.device)
        kwargs = {
            "input_ids": tokens,
            "position_ids": positions.unsqueeze(0).expand(B, T),
            # all ones: no padding is masked (as in the tiny GPT), stated so that transformers does not
            # warn about a pad id at the edge of a sequence
            "attention_mask": torch.ones(B, past + T, dtype=torch.long, device=tokens.device),
            "use_cache": cache is not None,
        }
        if cache is not None:
            kwargs[self._cache_kw] = cache.hf
            if self._cache_position:
                kwargs["cache_position"] = positions
        logits = self.model(**kwargs).logits
        if cache is not None:
            cache.seen = past + T
        if logits.shape[-1] != self.vocab_size:
            logits = logits[..., :self.vocab_size]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return logits

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, block_size={self.block_size}"


# ============================================================================ tiny local models
KINDS = ("gpt2", "llama")


def tiny_config(kind: str = "gpt2", vocab_size: int | None = None, block_size: int | None = None, n_layer: int = 2,
                n_embd: int = 32, n_head: int = 2, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2):
    """A ``transformers`` config for a small ``kind`` model (``"gpt2"`` or ``"llama"``) of ``vocab_size``
    tokens and at most ``block_size`` positions, ``n_layer`` blocks of width ``n_embd`` with ``n_head``
    heads. The special ids default to the track's tokenizer (pad 0, start 1, end 2) and must lie in the
    vocabulary. Like the tiny GPT: no dropout, an untied head, an MLP of width ``4 n_embd`` (GPT-2's with
    the exact GELU, so a tiny GPT's weights map onto it one to one; Llama's gated SiLU MLP)."""
    transformers = _transformers()
    if vocab_size is None or block_size is None:
        raise ValueError("tiny_config needs vocab_size and block_size")
    if min(vocab_size, block_size, n_layer, n_embd, n_head) < 1:
        raise ValueError("every size of tiny_config must be >= 1")
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    for name, i in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
        if not 0 <= i < vocab_size:
            raise ValueError(f"{name} {i} is outside the vocabulary [0, {vocab_size - 1}]")
    ids = dict(pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, tie_word_embeddings=False)
    if kind == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab_size, n_positions=block_size, n_embd=n_embd, n_layer=n_layer,
                                       n_head=n_head, n_inner=4 * n_embd, activation_function="gelu", resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    if kind == "llama":
        return transformers.LlamaConfig(vocab_size=vocab_size, max_position_embeddings=block_size, hidden_size=n_embd,
                                        intermediate_size=4 * n_embd, num_hidden_layers=n_layer,
                                        num_attention_heads=n_head, num_key_value_heads=n_head, **ids)
    raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")


def tiny_model(kind: str = "gpt2", vocab_size: int | None = None, block_size: int | None = None, seed: int = 0,
               **kw) -> HFCausalLM:
    """A randomly initialised :func:`tiny_config` model (``kw`` go to it), wrapped in :class:`HFCausalLM`.
    The weights depend on ``seed`` only; the global random stream is left as it was."""
    transformers = _transformers()
    cfg = tiny_config(kind, vocab_size, block_size, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    return HFCausalLM(model)


def gpt2_from_tiny(gpt) -> HFCausalLM:
    """An HF GPT-2 holding a tiny GPT's weights, computing the same logits (the two architectures are
    the same: learned positions, pre-norm blocks, exact GELU, an untied head; GPT-2's ``Conv1D``
    stores a linear layer's weight transposed). How a committed teacher becomes a ``transformers``
    model: ``gpt2_from_tiny(exp.teacher).model.save_pretrained(folder)``."""
    c = gpt.config
    m = tiny_model("gpt2", c.vocab_size, c.block_size, n_layer=c.n_layer, n_embd=c.n_embd, n_head=c.n_head)
    m = m.to(dtype=next(gpt.parameters()).dtype)
    t = m.model.transformer
    with torch.no_grad():
        t.wte.weight.copy_(gpt.tok.weight)
        t.wpe.weight.copy_(gpt.pos.weight)
        for h, b in zip(t.h, gpt.blocks):
            for dst, src in ((h.ln_1, b.ln1), (h.ln_2, b.ln2)):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
            for dst, src in ((h.attn.c_attn, b.attn.qkv), (h.attn.c_proj, b.attn.proj), (h.mlp.c_fc, b.mlp[0]),
                             (h.mlp.c_proj, b.mlp[2])):
                dst.weight.copy_(src.weight.T)
                dst.bias.copy_(src.bias)
        t.ln_f.weight.copy_(gpt.ln_f.weight)
        t.ln_f.bias.copy_(gpt.ln_f.bias)
        m.model.lm_head.weight.copy_(gpt.head.weight)
    return m.eval()


def from_pretrained(name: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device | None = None,
                    **kwargs) -> HFCausalLM:
    """A pretrained causal LM from the Hugging Face Hub (``name``, e.g. ``"Qwen/Qwen2.5-0.5B-Instruct"``,
    or a local directory), in ``dtype`` on ``device`` (default: CUDA when available), wrapped in
    :class:`HFCausalLM`. **Downloads** the weights on first use (gigabytes; cached under ``HF_HOME``), so
    it needs a network unless ``name`` is a local path. ``kwargs`` go to
    ``AutoModelForCausalLM.from_pretrained``. The tokenizer is not loaded: use
    ``transformers.AutoTokenizer.from_pretrained(name)`` and :func:`check_tokenizers`."""
    transformers = _transformers()
    key = "dtype" if _version(transformers) >= (4, 56) else "torch_dtype"
    model = transformers.AutoModelForCausalLM.from_pretrained(name, **{key: dtype}, **kwargs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return HFCausalLM(model.to(device))


# ============================================================================ tokenizers
def check_tokenizers(teacher_tok, student_tok, names=("teacher", "student")) -> None:
    """Token-level distillation compares the two models' distributions over the same ids: raise a
    ValueError unless the two tokenizers have one vocabulary (the same token -> id map). Takes Hugging
    Face tokenizers (anything with ``get_vocab()``) or the track's own :class:`~distill_lab.llm.tasks.Tokenizer`.

    Equal vocabularies are necessary, not sufficient: a checkpoint may pad its embedding matrix past the
    tokenizer's last id (then pass ``vocab_size=len(tokenizer)`` to :class:`HFCausalLM`), and the chat
    templates of two model families may differ although their vocabularies agree."""
    from .tasks import Tokenizer, check_same_tokenizer

    if isinstance(teacher_tok, Tokenizer) and isinstance(student_tok, Tokenizer):
        return check_same_tokenizer(teacher_tok, student_tok, names)
    for name, tok in zip(names, (teacher_tok, student_tok)):
        if not callable(getattr(tok, "get_vocab", None)):
            raise TypeError(f"the {name}'s tokenizer has no get_vocab(): pass a Hugging Face tokenizer, got {type(tok).__name__}")
    a, b = teacher_tok.get_vocab(), student_tok.get_vocab()
    if a == b:
        return None
    if len(a) == len(b):
        differ = sum(1 for t, i in a.items() if b.get(t) != i)
        detail = f"both {len(a)} tokens, {differ} of them with another id or missing"
    else:
        detail = f"{len(a)} and {len(b)} tokens"
    raise ValueError(f"the {names[0]}'s and the {names[1]}'s tokenizers differ ({detail}); token-level losses need "
                     "one vocabulary: pick a teacher and a student of one tokenizer family, or distil at the "
                     "sequence level (seq_kd) on decoded text")


# ============================================================================ a real pair, sized
GPU_RECIPE = {
    "teacher": "Qwen/Qwen2.5-1.5B-Instruct",
    "student": "Qwen/Qwen2.5-0.5B-Instruct",  # one tokenizer with the teacher; logits of 151936 ids both
    "teacher_params": 1.54e9,
    "student_params": 0.49e9,
    "student_layers": 24,
    "student_hidden": 896,
    "vocab_size": 151936,
    "task": "gsm8k",  # grade-school word problems, chat template, exact match of the final number
    "method": "gkd_jsd",  # on-policy GKD: the student's own samples, generalised JSD
    "beta": 0.5,
    "on_policy_fraction": 1.0,
    "temperature": 1.0,
    "batch": 16,  # prompts a step
    "prompt_tokens": 192,  # chat template and problem, padded to one length
    "max_new_tokens": 256,
    "steps": 500,
    "lr": 1e-5,
    "gpu": "1x H100 80GB",
}


def estimate(recipe: dict, peak_flops: float = 400e12, utilisation: float = 0.4, hbm_bytes_per_s: float = 3.35e12,
             token_latency_s: float = 0.02) -> dict:
    """Memory and time of a teacher/student recipe such as :data:`GPU_RECIPE`, from parameter counts.
    Back-of-the-envelope figures to size a machine, not measurements. GB are 1e9 bytes.

    Memory counted (``memory_gb``, the sum of ``memory_breakdown_gb``):

    * teacher weights in bf16, 2 bytes a parameter (frozen: no gradient, no optimiser state);
    * student training state with AdamW in mixed precision, 16 bytes a parameter: bf16 weights (2),
      bf16 gradients (2), the fp32 master copy (4) and the two fp32 Adam moments (8);
    * logits: four fp32 ``[batch, prompt_tokens + max_new_tokens, vocab_size]`` tensors (teacher and
      student logits, the student's log-softmax and its gradient), which dominate at a 150k vocabulary;
    * the student's layer activations, roughly ``34 * tokens * hidden * layers`` bytes (Korthikanti
      et al. 2022, 16-bit activations, attention scores not stored as with flash attention), no
      activation checkpointing.

    Not counted: the key/value cache of generation (small for these models' grouped-query
    attention), temporaries, the CUDA context and allocator fragmentation (allow a few GB).

    Time per step, assuming one H100 at ``peak_flops`` (400 TFLOP/s, roughly its dense bf16 peak
    rounded down) and ``utilisation`` (40%) of it:

    * compute: ``6 N_student tokens`` (student forward and backward) + ``2 N_teacher tokens``
      (teacher scoring) + ``2 N_student generated`` (sampling), with ``tokens = batch * (prompt_tokens
      + max_new_tokens)`` and ``generated = batch * max_new_tokens``; ``step_s`` adds the
      memory-bandwidth floor of decoding (the student's bf16 weights read once a new token, at
      ``hbm_bytes_per_s``);
    * ``step_s_eager``: the same with decoding at ``token_latency_s`` a token instead (20 ms: a plain
      Python loop of eager kernel launches, like :func:`~distill_lab.llm.gpt.generate` on
      :class:`HFCausalLM`), which is what dominates in practice for a model this small; measure it.

    Returns a dict of the figures (``memory_gb``, ``memory_breakdown_gb``, ``flops_per_step``,
    ``step_s``, ``step_s_eager``, ``hours``, ``hours_eager``) and the ``assumptions`` used.
    """
    n_s, n_t = float(recipe["student_params"]), float(recipe["teacher_params"])
    batch, new = int(recipe["batch"]), int(recipe["max_new_tokens"])
    seq = int(recipe.get("prompt_tokens", 0)) + new
    tokens, generated = batch * seq, batch * new
    if min(n_s, n_t, batch, new, recipe["steps"]) <= 0:
        raise ValueError("parameter counts, batch, max_new_tokens and steps must be positive")
    gb = 1e-9
    breakdown = {
        "teacher_weights": 2 * n_t * gb,
        "student_train_state": 16 * n_s * gb,
        "logits": 4 * 4 * tokens * int(recipe.get("vocab_size", 0)) * gb,
        "activations": 34 * tokens * int(recipe.get("student_hidden", 0)) * int(recipe.get("student_layers", 0)) * gb,
    }
    flops = 6 * n_s * tokens + 2 * n_t * tokens + 2 * n_s * generated
    compute_s = flops / (peak_flops * utilisation)
    decode_floor_s = new * 2 * n_s / hbm_bytes_per_s
    step_s = compute_s + decode_floor_s
    step_s_eager = compute_s + new * token_latency_s
    steps = int(recipe["steps"])
    return {
        "memory_gb": sum(breakdown.values()),
        "memory_breakdown_gb": breakdown,
        "flops_per_step": flops,
        "step_s": step_s,
        "step_s_eager": step_s_eager,
        "hours": steps * step_s / 3600,
        "hours_eager": steps * step_s_eager / 3600,
        "assumptions": {"peak_flops": peak_flops, "utilisation": utilisation, "hbm_bytes_per_s": hbm_bytes_per_s,
                        "token_latency_s": token_latency_s, "tokens_per_step": tokens},
    }


GPU_RECIPE["estimate"] = estimate(GPU_RECIPE)  # memory_gb, step_s, hours, ...: see estimate()
