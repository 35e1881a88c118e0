"""Self-attention over the pixels of a feature map, softmax or linear, with the same parameters.

:class:`Attention` is one residual self-attention layer over the ``H * W`` positions with a ``kind``
switch: ``"softmax"`` (Vaswani et al. 2017) or ``"linear"`` (Katharopoulos et al. 2020), with the same
parameters, so a softmax teacher's weights load into a linear-attention student (the architecture
distillation of LinFusion, Liu et al. 2024, :mod:`distill_lab.methods.arch`):
``TimeUNet.from_net(teacher, attn_kind="linear")``. :func:`mix_tokens` is the token mixing itself,
on ``[..., N, d]`` tensors, for any network that attends.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

ATTENTION_KINDS = ("softmax", "linear")


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    g = math.gcd(channels, groups)  # the largest group count <= groups that divides the width
    return nn.GroupNorm(g, channels)


def mix_tokens(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str = "softmax",
               eps: float = 1e-6) -> torch.Tensor:
    """Non-causal attention of queries ``q`` over keys ``k`` and values ``v``, all ``[..., N, d]``.

    * ``"softmax"``: ``softmax(q k^T / sqrt(d)) v`` (Vaswani et al. 2017), an ``N x N`` weight matrix:
      quadratic in the number of tokens ``N``.
    * ``"linear"``: ``phi(q) (phi(k)^T v) / (phi(q) . sum_j phi(k_j))`` with ``phi(u) = elu(u) + 1``
      (Katharopoulos et al. 2020, "Transformers are RNNs", sec. 3.2: the kernelised attention and its
      ``elu + 1`` feature map). It is the same
      as weighting ``v_j`` by ``phi(q_i) . phi(k_j)`` normalised over ``j``, but computing the
      ``d x d`` matrix ``phi(k)^T v`` first makes it linear in ``N``.

    Both are normalised (each query's weights are positive and sum to one) and non-causal (every token
    sees every other): the two properties LinFusion (Liu et al. 2024) finds a linear token mixer needs
    to stand in for a diffusion U-Net's softmax attention. Written out (no fused kernel) so that
    ``torch.func.jvp`` runs through both.
    """
    if kind == "softmax":
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [..., N, N]
        return w @ v
    if kind == "linear":
        kv, ksum = linear_state(k, v)
        return read_linear_state(q, kv, ksum, eps)
    raise ValueError(f"unknown attention kind {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")


def feature_map(u: torch.Tensor) -> torch.Tensor:
    """``phi(u) = elu(u) + 1``: the positive feature map of linear attention (Katharopoulos et al. 2020)."""
    return F.elu(u) + 1


def linear_state(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed-size memory linear attention keeps of keys ``k [..., N, d]`` and values ``v [..., N, d_v]``:
    ``(sum_j phi(k_j) v_j^T [..., d, d_v], sum_j phi(k_j) [..., d])``. Its size does not grow with ``N``,
    and two states add: the state of two sets of tokens is the sum of their states (what lets a
    streaming network absorb tokens as they leave its window, :class:`distill_lab.video.nets.KVCache`)."""
    k = feature_map(k)
    return k.transpose(-1, -2) @ v, k.sum(-2)


def read_linear_state(q: torch.Tensor, kv: torch.Tensor, ksum: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Queries ``q [..., N, d]`` read a :func:`linear_state`: ``phi(q) kv / (phi(q) . ksum)``, each query's
    normalised mix of the values the state absorbed, ``[..., N, d_v]``."""
    q = feature_map(q)
    return (q @ kv) / ((q @ ksum.unsqueeze(-1)) + eps)


class Attention(nn.Module):
    """Residual self-attention over the ``H * W`` positions of ``x: [B, C, H, W]``.

    ``q, k, v = 1x1 conv(GN(x))``, split in ``heads`` heads of ``C / heads`` channels, then
    ``out = x + proj(mix_tokens(q, k, v, kind))``: ``kind`` is ``"softmax"`` (Vaswani et al. 2017)
    or ``"linear"`` (Katharopoulos et al. 2020), see :func:`mix_tokens`.

    Both kinds have the same parameters, so ``kind`` can be switched on a trained layer (set the
    attribute) and a state dict loads across kinds: a softmax teacher's weights initialise a
    linear-attention student, the starting point of LinFusion's distillation (Liu et al. 2024,
    "LinFusion: 1 GPU, 1 minute, 16K image"). LinFusion also puts a small trainable residual MLP in
    front of the teacher's query and key projections; that extra is left out here, where the
    feature map is the fixed ``elu + 1``.

    ``fused`` (a switch, not a parameter; default off) computes the softmax kind with torch's
    ``scaled_dot_product_attention``: the same function, by the fastest kernel the build has, for
    timing a softmax teacher fairly. The written-out form stays the default because
    ``torch.func.jvp`` (sCM, Eulerian flow maps) runs through it.
    """

    def __init__(self, channels: int, heads: int = 1, kind: str = "softmax", groups: int = 8, eps: float = 1e-6):
        super().__init__()
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")
        if channels % heads:
            raise ValueError(f"{heads} heads do not divide {channels} channels")
        self.kind, self.heads, self.eps, self.fused = kind, heads, eps, False
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        d = C // self.heads
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, d, H * W).transpose(-1, -2)
        q, k, v = qkv.unbind(1)                                   # each [B, heads, N, d]
        if self.fused and self.kind == "softmax":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = mix_tokens(q, k, v, self.kind, self.eps)
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, heads={self.heads}" + (", fused=True" if self.fused else "")
