"""One small video transformer, bidirectional (the teacher) or block-causal with a KV cache (the student).

:class:`VideoTransformer` is ``net(x, t)``: ``x: [B, F, C, H, W]`` frames, ``t: [B]`` (one time for
the clip) or ``[B, F]`` (a time per frame, diffusion forcing's and the streaming student's), and it
returns a velocity shaped like ``x``, so the foundation's flow matching, samplers and the shared
DMD loss take it as they take an MLP or a U-Net. Every frame is cut into ``patch x patch`` patches;
each patch is a token: a linear embedding, plus a learned embedding of its place in the frame. Time
runs from noise (``t = 0``) to data (``t = 1``); each frame's time, in Fourier features through an MLP,
modulates every layer norm of that frame's tokens (adaptive layer norm, as DiT does).

**Attention across frames.** Rotary position embedding (RoPE, Su et al. 2021) on the frame index
encodes when a token is, so attention depends on frame *offsets* only: a streaming student that
keeps a window of recent frames sees the offsets it was trained on however long it runs. Masks
(:func:`frame_mask`):

* ``"full"``: every token sees every frame of the clip (the bidirectional teacher);
* ``"block_causal"`` with ``block`` frames a block: a token sees its own block and the earlier ones,
  never a later one (the autoregressive student), optionally only the ``window`` frames before its
  block (a rolling window).

**Streaming.** :meth:`VideoTransformer.forward_block` runs one block of frames against a
:class:`KVCache` of earlier frames' keys and values (per layer), and :meth:`KVCache.append` stores the
block once it is final. The cache keeps ``sink`` first frames and the last ``window`` frames (rolling
eviction); keys are stored before rotation, with their frame index, and rotated when used, so a sink
frame is placed just before the window (the offsets stay the trained ones). Without sink frames,
streaming block by block is exactly the one-pass block-causal forward with the same window
(tested in float64), so a student trains in one pass and streams with the same weights.

**A condition stream.** A network built with ``VideoNetConfig(cond_dim=k)`` reads ``k`` numbers a frame
(an interactive world's action into the frame and the camera's pose): under ``with net.conditioned(c)``,
``c [B, L, k]`` for the whole stream, each frame's condition passes a small MLP and is added to the frame's
tokens and to its time embedding (so it modulates every layer norm, as DiT's class label does). A frame
reads its own condition by its index, in one pass and when streamed block by block alike.

**Memory past the window.** What an evicted frame leaves behind is the cache's choice (:class:`KVCache`):

* nothing (the rolling window), or the first frames kept for ever (sink frames);
* ``ema``: the sink frames become a running summary, each evicted frame folded into a sink slot by an
  exponential moving average, ``s <- ema s + (1 - ema) e`` on keys and values (Reward Forcing's
  EMA-Sink, Lu et al. 2025; ``ema = 1`` is the static sink);
* ``linear``: every evicted token is absorbed into a per-layer linear-attention state (the fixed-size
  ``sum phi(k) v^T`` and ``sum phi(k)`` of :func:`distill_lab.nets.attention.linear_state`, the CIFAR
  track's linear attention), which a network built with ``linear_memory=True`` reads beside its
  softmax window through a zero-initialised projection a layer (Hybrid Forcing's linear temporal
  attention): a fresh hybrid network streams exactly as the plain one does.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..core.flows import batch_t
from ..nets.attention import linear_state, read_linear_state
from ..nets.mlp import FourierTime

MASKS = ("full", "block_causal")


@dataclass(frozen=True)
class VideoNetConfig:
    """The network's shape: frames ``channels x resolution x resolution`` cut in ``patch``-square
    patches; ``depth`` layers of width ``dim`` with ``heads`` heads and an MLP ``mlp_ratio`` wide;
    ``cond_dim > 0``: a condition stream of that many numbers a frame (actions, a camera pose), see
    :meth:`VideoTransformer.conditioned`."""

    resolution: int = 16
    channels: int = 1
    patch: int = 4
    dim: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 4
    n_freq: int = 6
    cond_dim: int = 0

    def __post_init__(self):
        if self.resolution % self.patch:
            raise ValueError(f"patch {self.patch} does not divide the resolution {self.resolution}")
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.heads} heads of an even width (RoPE)")
        if self.cond_dim < 0:
            raise ValueError(f"cond_dim is the numbers of a frame's condition (0: none), got {self.cond_dim}")

    @property
    def tokens_per_frame(self) -> int:
        return (self.resolution // self.patch) ** 2


def frame_mask(frames_q: torch.Tensor, frames_k: torch.Tensor, mask: str = "full", block: int = 1,
               window: int | None = None) -> torch.Tensor:
    """Which keys each query may attend to, ``[Nq, Nk]`` booleans, from the frame index of every query
    and key token. ``"block_causal"``: key frame's block <= query frame's block and, with ``window``,
    the key frame is at most ``window`` frames before the query's block starts."""
    if mask not in MASKS:
        raise ValueError(f"unknown attention mask {mask!r}; choose one of {', '.join(MASKS)}")
    fq, fk = frames_q[:, None], frames_k[None, :]
    if mask == "full":
        return torch.ones(fq.shape[0], fk.shape[1], dtype=torch.bool, device=frames_q.device)
    allowed = (fk // block) <= (fq // block)
    if window is not None:
        allowed &= fk >= (fq // block) * block - window
    return allowed


def spatial_sincos(side: int, dim: int) -> torch.Tensor:
    """``[side * side, dim]``: a fixed 2D sine-cosine code of each patch's row and column (a quarter of
    the channels each for sin(row), cos(row), sin(column), cos(column), at geometric frequencies)."""
    q = dim // 4
    freqs = 1.0 / (10.0 ** (torch.arange(q, dtype=torch.float64) / max(1, q)))
    r, c = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                          indexing="ij")
    r, c = r.flatten()[:, None] * freqs, c.flatten()[:, None] * freqs
    code = torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], 1)
    return torch.nn.functional.pad(code, (0, dim - 4 * q)).float()


def rope(x: torch.Tensor, pos: torch.Tensor, base: float = 100.0) -> torch.Tensor:
    """Rotate pairs of channels of ``x [B, heads, N, d]`` by angles ``pos [N] * base^(-2i/d)``."""
    d = x.shape[-1]
    freqs = base ** (-torch.arange(0, d, 2, dtype=x.dtype, device=x.device) / d)      # [d/2]
    ang = pos.to(x.dtype)[:, None] * freqs[None, :]                                     # [N, d/2]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
    return out.flatten(-2)


class Layer(nn.Module):
    """Pre-norm transformer layer; each norm is modulated per token by its frame's time embedding."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.mod = nn.Linear(dim, 4 * dim)  # shift and scale of both norms, from the time embedding
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)
        self.linear_proj: nn.Linear | None = None  # Hybrid Forcing's read-out of the linear state (add_linear_memory)

    def add_linear_memory(self) -> None:
        """A zero-initialised ``d_head -> d_head`` projection of the linear state's read-out, shared by the
        heads, added to the softmax attention's output: zero at first, so nothing changes until trained."""
        d = self.qkv.in_features // self.heads
        self.linear_proj = nn.Linear(d, d).to(self.qkv.weight.device, self.qkv.weight.dtype)
        nn.init.zeros_(self.linear_proj.weight)
        nn.init.zeros_(self.linear_proj.bias)

    def qkv_heads(self, h: torch.Tensor, emb: torch.Tensor):
        """``h [B, N, D]`` -> (normalised, modulated) q, k, v ``[B, heads, N, D / heads]``."""
        s1, b1, _, _ = self.mod(emb).chunk(4, -1)
        q, k, v = self.qkv(self.norm1(h) * (1 + s1) + b1).chunk(3, -1)
        B, N, D = h.shape
        return [a.reshape(B, N, self.heads, D // self.heads).transpose(1, 2) for a in (q, k, v)]

    def finish(self, h: torch.Tensor, attn: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        B, _, N, _ = attn.shape
        h = h + self.proj(attn.transpose(1, 2).reshape(B, N, -1))
        _, _, s2, b2 = self.mod(emb).chunk(4, -1)
        return h + self.mlp(self.norm2(h) * (1 + s2) + b2)


class VideoTransformer(nn.Module):
    """``net(x [B, F, C, H, W], t [B] or [B, F]) -> [B, F, C, H, W]`` (see the module docstring).

    ``mask``, ``block``, ``window``: the attention pattern of :func:`frame_mask`; the teacher uses
    ``"full"``, a student ``"block_causal"``. :meth:`as_causal` copies a network and sets them.
    """

    def __init__(self, config: VideoNetConfig = VideoNetConfig(), mask: str = "full", block: int = 1,
                 window: int | None = None, linear_memory: bool = False, modes: int = 0):
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"unknown attention mask {mask!r}; choose one of {', '.join(MASKS)}")
        if linear_memory and mask != "block_causal":
            raise ValueError("a linear memory of evicted frames belongs to a streaming (block_causal) network")
        self.config, self.mask, self.block, self.window = config, mask, block, window
        self.linear_memory = linear_memory
        c = config
        self.patch_dim = c.channels * c.patch * c.patch
        self.embed = nn.Linear(self.patch_dim, c.dim)
        self.pos = nn.Parameter(torch.zeros(c.tokens_per_frame, c.dim))  # learned, on top of a fixed 2D sin-cos code
        self.register_buffer("pos_fixed", spatial_sincos(c.resolution // c.patch, c.dim), persistent=False)
        self.time = FourierTime(c.n_freq)
        self.time_mlp = nn.Sequential(nn.Linear(self.time.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.layers = nn.ModuleList(Layer(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.dim, elementwise_affine=False)
        self.out_mod = nn.Linear(c.dim, 2 * c.dim)
        self.out = nn.Linear(c.dim, self.patch_dim)
        for lin in (self.out_mod, self.out):  # the network starts as v = 0
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        if linear_memory:
            for layer in self.layers:
                layer.add_linear_memory()
        if modes < 0 or modes == 1:
            raise ValueError(f"modes is 0 (one mode) or the number of sampling modes sharing the weights (>= 2), got {modes}")
        self.cond_mlp = None
        if c.cond_dim:  # the condition stream: a frame's condition embedded, added to its tokens and its time embedding
            self.cond_mlp = nn.Sequential(nn.Linear(c.cond_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self._cond: torch.Tensor | None = None  # [B, L, cond_dim] of the whole stream (conditioned())
        self._pooled = 0  # leading frames attended as one compressed token each (compressed())
        self.modes, self.active_mode = modes, 0
        # Mutual Forcing's modes: a learned vector a mode added to the time embedding of noisy frames
        self.mode_emb = nn.Parameter(torch.zeros(modes, c.dim)) if modes else None

    # ---------------------------------------------------------------- shapes
    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        if x.dim() != 5 or tuple(x.shape[2:]) != (c.channels, c.resolution, c.resolution):
            raise ValueError(f"frames must be [B, F, {c.channels}, {c.resolution}, {c.resolution}], "
                             f"got {tuple(x.shape)}")

    def _frame_times(self, t, x: torch.Tensor) -> torch.Tensor:
        """``t`` as ``[B, F]``: a clip time repeated over the frames, or a time per frame."""
        B, Fr = x.shape[:2]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 2:
            if tuple(t.shape) != (B, Fr):
                raise ValueError(f"per-frame times must be [B, F]=[{B}, {Fr}], got {tuple(t.shape)}")
            return t
        return batch_t(t, x)[:, None].expand(B, Fr)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, F, C, R, R] -> [B, F, N, C p p]``."""
        B, Fr, C, R, _ = x.shape
        p, n = self.config.patch, R // self.config.patch
        x = x.reshape(B, Fr, C, n, p, n, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(B, Fr, n * n, C * p * p)

    def unpatchify(self, tok: torch.Tensor) -> torch.Tensor:
        B, Fr, N, _ = tok.shape
        c = self.config
        n, p = c.resolution // c.patch, c.patch
        x = tok.reshape(B, Fr, n, n, c.channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, Fr, c.channels, c.resolution, c.resolution)

    def _frame_cond(self, B: int, start: int, Fr: int) -> torch.Tensor | None:
        """The condition of frames ``start ... start + Fr - 1`` ``[B, Fr, cond_dim]``, or ``None`` for a network
        without a condition stream."""
        if self.cond_mlp is None:
            return None
        c = self._cond
        if c is None:
            raise ValueError(f"this network is conditioned ({self.config.cond_dim} numbers a frame): call it inside "
                             "`with net.conditioned(cond):`, cond [B, frames, cond_dim] for the whole stream")
        if c.shape[0] != B or c.shape[1] < start + Fr:
            raise ValueError(f"the condition {tuple(c.shape)} does not cover frames {start}..{start + Fr - 1} of "
                             f"{B} clips: give one condition a frame of the whole stream")
        return c[:, start:start + Fr]

    def _embed(self, x: torch.Tensor, t: torch.Tensor, start: int = 0):
        """Tokens ``[B, F N, D]`` and each token's time embedding ``[B, F N, D]`` (``start``: the index of
        ``x``'s first frame, where its condition is read)."""
        B, Fr = x.shape[:2]
        N = self.config.tokens_per_frame
        h = self.embed(self.patchify(x)) + self.pos + self.pos_fixed                  # [B, F, N, D]
        emb = self.time_mlp(self.time(t.reshape(-1))).reshape(B, Fr, 1, -1)
        cond = self._frame_cond(B, start, Fr)
        if cond is not None:
            ce = self.cond_mlp(cond.to(x.dtype))[:, :, None]                          # [B, F, 1, D]
            h, emb = h + ce, emb + ce
        if self.mode_emb is not None:  # only noisy frames: clean context is encoded alike in every mode
            emb = emb + (t < 1).to(emb.dtype)[..., None, None] * self.mode_emb[self.active_mode]
        emb = emb.expand(B, Fr, N, -1)
        return h.reshape(B, Fr * N, -1), emb.reshape(B, Fr * N, -1)

    def _out(self, h: torch.Tensor, emb: torch.Tensor, B: int, Fr: int) -> torch.Tensor:
        s, b = self.out_mod(emb).chunk(2, -1)
        tok = self.out(self.norm_out(h) * (1 + s) + b)
        return self.unpatchify(tok.reshape(B, Fr, self.config.tokens_per_frame, -1))

    # ---------------------------------------------------------------- one pass over a clip
    def forward(self, x: torch.Tensor, t, frame_offset: int = 0) -> torch.Tensor:
        """The velocity of every frame, all frames at once under this network's mask. ``frame_offset``
        is the index of ``x``'s first frame (for RoPE and the blocks)."""
        self._check(x)
        B, Fr = x.shape[:2]
        if self.linear_memory and self.window is not None and Fr > self.window + self.block:
            raise ValueError(f"a hybrid network's one-pass forward has no linear state for the frames its "
                             f"{self.window}-frame window drops ({Fr} frames given): stream it with "
                             "forward_block and a KVCache(..., linear=True)")
        N = self.config.tokens_per_frame
        t = self._frame_times(t, x)
        h, emb = self._embed(x, t, frame_offset)
        frames = torch.arange(frame_offset, frame_offset + Fr, device=x.device).repeat_interleave(N)
        P = self._pooled
        if P > Fr:
            raise ValueError(f"{P} compressed frames asked of a clip of {Fr}")
        frames_k = frames if not P else torch.cat([frames[:P * N:N], frames[P * N:]])
        allowed = frame_mask(frames, frames_k, self.mask, self.block, self.window)
        for layer in self.layers:
            q, k, v = layer.qkv_heads(h, emb)
            if P:  # RELIC's compressed memory: one key and one value a frame, the means over its tokens
                k, v = (torch.cat([a[:, :, :P * N].unflatten(2, (P, N)).mean(3), a[:, :, P * N:]], 2) for a in (k, v))
            q, k = rope(q, frames), rope(k, frames_k)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
            h = layer.finish(h, attn, emb)
        return self._out(h, emb, B, Fr)

    # ---------------------------------------------------------------- streaming
    def forward_block(self, x: torch.Tensor, t, cache: "KVCache", return_kv: bool = False):
        """Velocity of the block ``x [B, b, C, H, W]`` (frames ``cache.next_frame ...``) attending to
        the cached frames and to itself. With ``return_kv`` also returns the block's keys and values
        per layer, for :meth:`KVCache.append` once the block is final."""
        self._check(x)
        B, b = x.shape[:2]
        N = self.config.tokens_per_frame
        if self.mask == "block_causal" and b != self.block:
            raise ValueError(f"a streamed block must have {self.block} frames (the network's block), got {b}")
        if self.window is not None and (cache.window is None or cache.window > self.window):
            raise ValueError(f"this network attends to the {self.window} frames before a block, but the cache "
                             f"keeps {'all of them' if cache.window is None else cache.window}: create it with "
                             f"KVCache(depth, window={self.window}) so old frames are evicted")
        t = self._frame_times(t, x)
        start = cache.next_frame
        h, emb = self._embed(x, t, start)
        frames_q = torch.arange(start, start + b, device=x.device).repeat_interleave(N)
        pos_k = torch.cat([cache.key_positions(N).to(x.device), frames_q])
        new_kv = []
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv_heads(h, emb)
            new_kv.append((k, v))
            ck, cv = cache.layer(i)
            if ck is not None:
                k, v = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
            attn = F.scaled_dot_product_attention(rope(q, frames_q), rope(k, pos_k), v)
            state = cache.linear_layer(i)
            if layer.linear_proj is not None and state is not None:  # Hybrid Forcing: what left the window
                attn = attn + layer.linear_proj(read_linear_state(q, *state))
            h = layer.finish(h, attn, emb)
        out = self._out(h, emb, B, b)
        return (out, new_kv) if return_kv else out

    def as_causal(self, block: int, window: int | None = None) -> "VideoTransformer":
        """A copy with the same weights and a block-causal mask (the student's initialisation)."""
        net = VideoTransformer(self.config, "block_causal", block, window).to(next(self.parameters()).device)
        net.load_state_dict(self.state_dict())
        return net

    @contextmanager
    def bidirectional(self):
        """Within the block, :meth:`forward` attends over the whole clip (the ``"full"`` mask) with the same
        weights: a block-causal student run in bidirectional mode, as HiAR's forward-KL regulariser
        trains it. Streaming (:meth:`forward_block`) is unaffected."""
        mask, window = self.mask, self.window
        self.mask, self.window = "full", None
        try:
            yield self
        finally:
            self.mask, self.window = mask, window

    @contextmanager
    def mode(self, k: int):
        """Run in sampling mode ``k`` (Mutual Forcing: one network, a multi-step mode 0 and a few-step mode
        1 sharing every weight but a mode vector added to the time embedding of its noisy frames)."""
        if not 0 <= k < max(1, self.modes):
            raise ValueError(f"this network has {max(1, self.modes)} mode(s); mode {k} does not exist "
                             "(build it with modes=2, or with_modes(2))")
        old, self.active_mode = self.active_mode, k
        try:
            yield self
        finally:
            self.active_mode = old

    @contextmanager
    def conditioned(self, cond: torch.Tensor):
        """Run under the condition stream ``cond [B, L, cond_dim]``: one condition a frame of the whole stream
        (e.g. the action into that frame and the camera's pose, :func:`distill_lab.video.interactive.frame_conditions`).
        :meth:`forward` reads frames ``frame_offset ...`` of it, :meth:`forward_block` frames ``cache.next_frame
        ...``, so a stream and every slice of it see their own frames' conditions. Each frame's condition goes
        through a small MLP and is added to the frame's tokens and to its time embedding (the adaptive layer
        norms; DiT's class conditioning, one condition a frame)."""
        if self.cond_mlp is None:
            raise ValueError("this network has no condition stream: build it with VideoNetConfig(cond_dim=...)")
        if cond.dim() != 3 or cond.shape[-1] != self.config.cond_dim:
            raise ValueError(f"cond must be [B, frames, {self.config.cond_dim}], got {tuple(cond.shape)}")
        old, self._cond = self._cond, cond
        try:
            yield self
        finally:
            self._cond = old

    @contextmanager
    def compressed(self, frames: int):
        """:meth:`forward` attends to the first ``frames`` frames of the clip through one key and one value a
        frame, the means of its tokens' (at the frame's position): a memory of compressed historical tokens
        (RELIC), ``tokens_per_frame`` times smaller in the cache. The compressed frames' own tokens still pass
        through every layer (their keys and values at each layer are pooled from them)."""
        if frames < 0:
            raise ValueError(f"frames counts the compressed leading frames (>= 0), got {frames}")
        old, self._pooled = self._pooled, int(frames)
        try:
            yield self
        finally:
            self._pooled = old

    def _extended(self, new: str, **changes) -> "VideoTransformer":
        """A copy built with ``changes`` to the constructor's arguments, carrying every weight of this
        network; only parameters whose name contains ``new`` may be missing (they keep their zero
        initialisation, so the copy starts as this network)."""
        kw = {**dict(config=self.config, mask=self.mask, block=self.block, window=self.window,
                     linear_memory=self.linear_memory, modes=self.modes), **changes}
        p = next(self.parameters())
        net = VideoTransformer(**kw).to(p.device, p.dtype)
        missing, unexpected = net.load_state_dict(self.state_dict(), strict=False)
        if unexpected or any(new not in k for k in missing):
            raise ValueError(f"cannot copy the weights: missing {missing}, unexpected {unexpected}")
        return net

    def with_modes(self, modes: int = 2) -> "VideoTransformer":
        """A copy with ``modes`` zero-initialised mode vectors: every mode starts as this network."""
        if self.modes:
            raise ValueError(f"this network already has {self.modes} modes")
        return self._extended("mode_emb", modes=modes)

    def with_linear_memory(self, window: int) -> "VideoTransformer":
        """A hybrid copy of this block-causal network (Hybrid Forcing's second stage): the same weights,
        a ``window``-frame softmax window, and a zero-initialised read-out of the linear state of
        evicted frames a layer, so it starts as this network streamed with a ``window``-frame cache."""
        if self.mask != "block_causal":
            raise ValueError("with_linear_memory turns a block-causal student into a hybrid one; "
                             "call as_causal first")
        return self._extended("linear_proj", window=window, linear_memory=True)

    def extra_repr(self) -> str:
        hybrid = (", linear_memory=True" if self.linear_memory else "") + (f", modes={self.modes}" if self.modes else "")
        return f"mask={self.mask!r}, block={self.block}, window={self.window}{hybrid}, {asdict(self.config)}"


class KVCache:
    """Keys and values of the frames a streaming network has generated, per layer.

    ``window``: how many of the most recent frames are kept (``None``: all); ``sink``: how many first
    frames are kept beside them (attention sinks, as in Live Avatar's and MotionStream's rolling sink
    frames). :meth:`append` adds a finished block and evicts the oldest non-sink frames beyond the
    window. Keys are stored unrotated; :meth:`key_positions` gives the position each one is rotated
    to when used: its frame index, except that sink frames sit just before the oldest kept frame, so
    attention offsets stay within those of training however long the stream runs.

    What an evicted frame leaves (module docstring): with ``ema`` (a decay in ``[0, 1]``, needs sink
    frames) it is folded into the sink slot ``j = n mod sink`` (``n`` counts the frames folded so far),
    ``k_s <- ema k_s + (1 - ema) k_e`` and the same for values: Reward Forcing's EMA-Sink (Lu et al.
    2025, sec. 3.2), which with a block of ``sink`` frames blends the evicted block into the sink block
    position by position, as the authors' code does; ``ema = 1`` keeps the first frames (the static
    sink), ``ema = 0`` makes the sink the last evicted frames. With ``linear`` every evicted token is
    also absorbed into the layer's linear-attention state (:func:`~distill_lab.nets.attention.linear_state`,
    summed over everything evicted): Hybrid Forcing's compact state.
    :attr:`nbytes` is the memory all of it holds.
    """

    def __init__(self, depth: int, window: int | None = None, sink: int = 0, ema: float | None = None,
                 linear: bool = False):
        if window is not None and window < 1:
            raise ValueError(f"window must be at least one frame (or None), got {window}")
        if sink < 0:
            raise ValueError(f"sink must be >= 0 frames, got {sink}")
        if ema is not None and not (0.0 <= ema <= 1.0 and sink > 0 and window is not None):
            raise ValueError(f"an EMA sink needs a decay in [0, 1], sink frames and a window (frames are folded "
                             f"into the sink as they leave the window); got ema={ema}, sink={sink}, window={window}")
        if linear and window is None:
            raise ValueError("a linear state absorbs the frames a window evicts: give the cache a window")
        self.depth, self.window, self.sink, self.ema, self.linear = depth, window, sink, ema, linear
        self.k: list = [None] * depth
        self.v: list = [None] * depth
        self.state: list = [None] * depth  # per layer (sum phi(k) v^T, sum phi(k)) of evicted tokens
        self.frames: list[int] = []  # frame index of each cached frame, in order
        self.next_frame = 0
        self.folded = 0  # evicted frames folded into the EMA sink so far
        self.absorbed = 0  # evicted frames absorbed into the linear state so far

    def layer(self, i: int):
        return self.k[i], self.v[i]

    def linear_layer(self, i: int):
        """Layer ``i``'s linear state ``(kv [B, heads, d, d], ksum [B, heads, d])``, or ``None`` while
        nothing has been absorbed (then a hybrid network attends as the plain one does)."""
        return self.state[i]

    def rows(self, idx: torch.Tensor) -> "KVCache":
        """A cache of the clips ``idx`` of this batch only (new tensors, same frames): for denoising a
        block of some clips of a batch, as speculative streaming regenerates only the rejected ones."""
        out = self.snapshot()
        out.k = [None if k is None else k[idx] for k in self.k]
        out.v = [None if v is None else v[idx] for v in self.v]
        out.state = [None if st is None else (st[0][idx], st[1][idx]) for st in self.state]
        return out

    def snapshot(self) -> "KVCache":
        """A copy of this cache's state as it is now, sharing its tensors (:meth:`append` never writes into
        a stored tensor, it builds new ones), so later appends to either leave the other as it was: for
        going back to an earlier point of a stream (retrospective self-correction)."""
        out = KVCache(self.depth, self.window, self.sink, self.ema, self.linear)
        out.k, out.v, out.state, out.frames = list(self.k), list(self.v), list(self.state), list(self.frames)
        out.next_frame, out.folded, out.absorbed = self.next_frame, self.folded, self.absorbed
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held: cached keys and values, and the linear state."""
        tensors = [t for t in self.k + self.v if t is not None]
        tensors += [t for st in self.state if st is not None for t in st]
        return sum(t.numel() * t.element_size() for t in tensors)

    def key_positions(self, tokens_per_frame: int) -> torch.Tensor:
        if not self.frames:
            return torch.zeros(0, dtype=torch.long)
        pos = torch.tensor(self.frames)
        n_sink = sum(1 for f in self.frames if f < self.sink)
        if n_sink and len(self.frames) > n_sink and self.frames[n_sink] > n_sink:
            pos[:n_sink] = self.frames[n_sink] - n_sink + torch.arange(n_sink)  # just before the window
        return pos.repeat_interleave(tokens_per_frame)

    def append(self, kv: list, frames: int) -> None:
        """Store a finished block's keys and values (``kv``: per layer ``(k, v)`` ``[B, heads, b N, d]``,
        ``frames`` frames), then evict the oldest non-sink frames beyond the window (folding them into
        the EMA sink, absorbing them into the linear state, as the cache was built to)."""
        if len(kv) != self.depth:
            raise ValueError(f"the cache holds {self.depth} layers, got keys and values for {len(kv)}")
        for i, (k, v) in enumerate(kv):
            self.k[i] = k if self.k[i] is None else torch.cat([self.k[i], k], 2)
            self.v[i] = v if self.v[i] is None else torch.cat([self.v[i], v], 2)
        self.frames += list(range(self.next_frame, self.next_frame + frames))
        self.next_frame += frames
        if self.window is None:
            return
        keep = [j for j, f in enumerate(self.frames) if f < self.sink]
        rest = [j for j, f in enumerate(self.frames) if f >= self.sink]
        evicted = rest[:max(0, len(rest) - self.window)]
        if not evicted:
            return
        keep += rest[len(evicted):]
        per = self.k[0].shape[2] // len(self.frames)
        dev = self.k[0].device

        def tokens(js):
            return torch.tensor([j * per + n for j in js for n in range(per)], device=dev)

        if self.linear:
            idx = tokens(evicted)
            for i in range(self.depth):
                add = linear_state(self.k[i].index_select(2, idx), self.v[i].index_select(2, idx))
                self.state[i] = add if self.state[i] is None else (self.state[i][0] + add[0], self.state[i][1] + add[1])
            self.absorbed += len(evicted)
        idx = tokens(keep)  # fresh tensors: the sink slots are their first frames, in order
        new_k = [k.index_select(2, idx) for k in self.k]
        new_v = [v.index_select(2, idx) for v in self.v]
        if self.ema is not None:
            n_sink = sum(1 for f in self.frames if f < self.sink)
            for j in evicted:  # oldest first, each into the next sink slot in turn
                slot, e = self.folded % n_sink, tokens([j])
                s = slice(slot * per, (slot + 1) * per)
                for i in range(self.depth):
                    for new, old in ((new_k, self.k), (new_v, self.v)):
                        new[i][:, :, s] = self.ema * new[i][:, :, s] + (1 - self.ema) * old[i][:, :, e]
                self.folded += 1
        self.k, self.v = new_k, new_v
        self.frames = [self.frames[j] for j in keep]

    def __len__(self) -> int:
        return len(self.frames)
