"""A small selective state-space language model, with a dense or a low-rank state transition, and the
alignment of hidden-state trajectories that distils the one into the other (after DLRMamba, "Distilling
Low-Rank Mamba for Edge Multispectral Fusion Object Detection": a low-rank factorised state transition,
and a structure-aware distillation aligning the student's latent state dynamics with a full-rank
teacher's).

One layer (:class:`SelectiveSSM`) keeps a state ``h_t`` of ``n`` numbers and reads the sequence token by
token::

    a_t = sigmoid(W_a x_t)              (selective: how much of the transition each state keeps, per token)
    h_t = a_t ⊙ (A h_{t-1}) + B x_t,    y_t = C h_t

``A`` is a dense ``n x n`` matrix (``rank=None``, the teacher's; ``n^2`` parameters) or ``diag(d) + U V^T``
with ``U, V`` of rank ``r`` (``2 n r + n``; the student's). Every transition is divided by
``max(1, |A|_inf)`` (its largest absolute row sum, a bound on its spectral radius), so the recurrence
cannot blow up whatever training does. :class:`SSMLM` stacks layers between a token
embedding and a head, like the track's GPT: ``model(tokens)`` gives the logits of every position,
``model(tokens, cache)`` continues from a cached state, so :func:`distill_lab.llm.gpt.generate` samples
it and every LLM-track loss trains it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


GATE_BIAS = 3.0  # pragma: no mutate (the gate's initial bias: states start by keeping 95% a token)


class SelectiveSSM(nn.Module):
    """One selective state-space layer (module docstring): ``forward(x [B, T, D], h0 [B, n] or None)
    -> (y [B, T, D], states [B, T, n])``."""

    def __init__(self, dim: int, state: int, rank: int | None = None):
        super().__init__()
        if rank is not None and not 1 <= rank <= state:
            raise ValueError(f"rank must lie in [1, state={state}] (None: a dense transition), got {rank}")
        self.dim, self.state, self.rank = dim, state, rank
        self.gate = nn.Linear(dim, state)
        nn.init.constant_(self.gate.bias, GATE_BIAS)  # a long memory to start with (sigmoid(3) = 0.95)
        self.B = nn.Linear(dim, state, bias=False)
        self.C = nn.Linear(state, dim, bias=False)
        # pragma: no mutate start (initial values: another scale is another setting, not a bug)
        if rank is None:
            self.A = nn.Parameter(torch.eye(state) + 0.01 * torch.randn(state, state))
        else:
            self.d = nn.Parameter(torch.ones(state))
            self.U = nn.Parameter(0.1 * torch.randn(state, rank))
            self.V = nn.Parameter(0.1 * torch.randn(state, rank))
        # pragma: no mutate end

    def transition(self) -> torch.Tensor:
        """``A`` (dense, or ``diag(d) + U V^T``), scaled so its infinity norm is at most 1."""
        A = self.A if self.rank is None else torch.diag(self.d) + self.U @ self.V.T
        return A / A.abs().sum(1).max().clamp(min=1.0)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None):
        B, T, _ = x.shape
        A = self.transition()
        a, bx = torch.sigmoid(self.gate(x)), self.B(x)
        h = torch.zeros(B, self.state, dtype=x.dtype, device=x.device) if h0 is None else h0
        states = []
        for t in range(T):
            h = a[:, t] * (h @ A.T) + bx[:, t]
            states.append(h)
        hs = torch.stack(states, 1)
        return self.C(hs), hs

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass(frozen=True)
class SSMConfig:
    """``vocab_size`` tokens, ``n_layer`` layers of width ``n_embd`` with states of ``state`` numbers and a
    transition of rank ``rank`` (None: dense). ``block_size`` caps the sequence (as the GPT's does)."""

    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_embd: int = 64
    state: int = 32
    rank: int | None = None


class SSMCache:
    """The last state of every layer, ``h[l] [B, n]``, and the positions read so far."""

    def __init__(self, n_layer: int):
        self.h: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0

    def __len__(self) -> int:
        return self.length


class SSMLM(nn.Module):
    """Token embedding, ``n_layer`` pre-norm residual blocks (a :class:`SelectiveSSM` and an MLP), a final
    norm and a head: ``model(tokens [B, T]) -> logits [B, T, V]`` of the next token after each position;
    ``model(tokens, cache)`` continues from the cached states. :attr:`last_states` holds each layer's
    ``[B, T, n]`` states of the last call (what :func:`state_alignment_loss` aligns)."""

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        self.config = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.n_embd) for _ in range(2 * cfg.n_layer))
        self.ssms = nn.ModuleList(SelectiveSSM(cfg.n_embd, cfg.state, cfg.rank) for _ in range(cfg.n_layer))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(cfg.n_embd, 2 * cfg.n_embd), nn.GELU(),
                                                nn.Linear(2 * cfg.n_embd, cfg.n_embd)) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.last_states: list[torch.Tensor] = []

    def new_cache(self, batch: int | None = None) -> SSMCache:
        return SSMCache(self.config.n_layer)

    def forward(self, tokens: torch.Tensor, cache: SSMCache | None = None) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got {tuple(tokens.shape)}")
        past = 0 if cache is None else len(cache)
        if past + tokens.shape[1] > self.config.block_size:
            raise ValueError(f"{past + tokens.shape[1]} positions exceed the model's block_size {self.config.block_size}")
        x = self.tok(tokens)
        self.last_states = []
        for i, (ssm, mlp) in enumerate(zip(self.ssms, self.mlps)):
            y, hs = ssm(self.norms[2 * i](x), None if cache is None else cache.h[i])
            if cache is not None:
                cache.h[i] = hs[:, -1]
            self.last_states.append(hs)
            x = x + y
            x = x + mlp(self.norms[2 * i + 1](x))
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.head(self.ln_f(x))


def state_alignment_loss(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor],
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """The structure-aware distillation term: the student's hidden-state trajectories pulled onto the
    teacher's, layer by layer, ``mean_l mean_{t in mask} |h^S_{l,t} - sg(h^T_{l,t})|^2 / n``. Both have
    the same state size (the student's economy is in the transition's rank, not the state's size).
    ``mask [B, T]``: the positions that count (default all). Stop-gradient: the teacher's states."""
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError(f"one teacher trajectory a student layer, got {len(student_states)} and {len(teacher_states)}")
    total = 0.0
    for s, t in zip(student_states, teacher_states):
        if s.shape != t.shape:
            raise ValueError(f"student and teacher states differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
        per = (s - t.detach()).pow(2).mean(-1)
        total = total + (per.mean() if mask is None else per[mask].mean())
    return total / len(student_states)
