"""Two streams in sync: a sparse "audio" stream beside the video, a joint teacher and a streaming student (issue 14).

OmniForcing ("OmniForcing: Unleashing Real-time Joint Audio-Visual Generation", 2026) distils a bidirectional
video-and-audio teacher into a streaming generator. This module is its toy: the video is the toy world's clip
(:class:`~distill_lab.video.world.World`), and the audio is a lower-rate stream that follows the video.

**The sound of a clip** (:func:`tone`, :func:`pitch`, :func:`av_clips`). One audio token a block of ``block``
frames: ``bins`` numbers, a tone whose pitch is the sprite's mean height over the block's frames, a Gaussian
bump ``2 exp(-(c_k - h)^2 / (2 w^2)) - 1`` over bin centres ``c_k`` spread evenly between the walls. So a clip of
8 frames of 4 tokens has 32 video tokens and 4 audio tokens: the sparse stream. :func:`pitch` reads the height
back off any audio token (exact on a clean tone), and the world's detector reads it off the frames, so the
**sync error** (:func:`sync_error`) of any generated pair, the audio's height against the frames' height, is
measured, not judged.

**The network** (:class:`DualStreamNet`). One sequence ``[global prefix] [sink] [video tokens] [audio tokens]``
through a :class:`~distill_lab.video.nets.VideoTransformer`'s layers (the video part starts from the video
track's teacher): audio tokens have their own embedding, output head and time embedding (each stream is noised
at its own times), and both streams carry a learned stream embedding. Positions: a video token sits at its
frame's index, an audio token at its block's middle (the streams are aligned by time, not by token count), in
rotary embeddings. The **global prefix** (learned tokens, OmniForcing's global prefix, never evicted from the
cache: "zero truncation") and the **sink** (one learned token, OmniForcing's audio sink token) carry no
position: their keys are not rotated and a query reads them unrotated ("identity RoPE"), so their scores do
not depend on where the query is. The teacher's mask is full; the student's is
:func:`~distill_lab.video.dual_stream.dual_stream_mask`'s asymmetric block-causal one.

**Streaming** (:class:`AVCache`, :meth:`DualStreamNet.forward_block`). Keys and values a layer, tagged with
their stream and block; the cache keeps the prefix and the sink for ever and each stream's last
``video_window`` and ``audio_window`` blocks (OmniForcing's modality-independent rolling cache). Without
eviction, streaming block by block is exactly the one-pass block-causal forward (tested in float64).

**Distillation** (:func:`joint_dmd_loss`, :func:`train_av_student`): joint Self Forcing, the student streams
both modalities on its own outputs (one random exit step a block carries the gradient, the cache none) and
the whole clip is scored by DMD (Yin et al. 2024, eqs. 7-8) at one noise level for both streams, the
bidirectional joint teacher as the real score and a fake score trained on the student's clips; each stream's
direction is normalised and averaged over its own elements, so 32 audio numbers weigh as much as 2048 pixels.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..core.registry import with_options
from ..core.train import fit, seed_everything
from ..methods.step.dmd import frozen
from ..nets.utils import clone_frozen
from .dual_stream import AUDIO, PREFIX, SINK, VIDEO, dual_stream_mask
from .nets import VideoTransformer, rope
from .rollout import uniform_times
from .world import World

OMNIFORCING = "OmniForcing: Unleashing Real-time Joint Audio-Visual Generation (2026)"
DMD_BETAS = (0.0, 0.99)


# --------------------------------------------------------------------------------------------- the sound
def bin_centres(world: World, bins: int) -> torch.Tensor:
    """``[bins]`` float64: the pitches of the bins, evenly from one wall (``margin``) to the other."""
    if bins < 2:
        raise ValueError(f"a tone needs at least 2 bins, got {bins}")
    return torch.linspace(world.margin, 1 - world.margin, bins, dtype=torch.float64)


def tone_width(world: World, bins: int) -> float:
    """The bump's width: one bin spacing."""
    return (1 - 2 * world.margin) / (bins - 1)


def tone(height: torch.Tensor, world: World, bins: int = 8) -> torch.Tensor:
    """``height [...]`` (units of the square) -> ``[..., bins]`` in ``[-1, 1]``: ``2 exp(-(c_k - h)^2 / (2 w^2)) - 1``
    over the bin centres (:func:`bin_centres`), ``w`` one bin spacing."""
    c = bin_centres(world, bins).to(height.device)
    w = tone_width(world, bins)
    return (2 * torch.exp(-(c - height.double()[..., None]) ** 2 / (2 * w * w)) - 1).float()


def pitch(audio: torch.Tensor, world: World) -> torch.Tensor:
    """The height ``[...]`` a tone ``audio [..., bins]`` encodes (float64). The loudest bin ``k`` and the louder of
    its neighbours ``k'``: for a Gaussian bump of known width ``w``, ``log I_k - log I_k' = ((c_k' - h)^2 - (c_k -
    h)^2) / (2 w^2)`` is linear in ``h``, so two bins give the height exactly (intensities ``I = (a + 1) / 2``,
    floored at 1e-4 so a generated token's negative values do not break the logarithm)."""
    bins = audio.shape[-1]
    c = bin_centres(world, bins).to(audio.device)
    w2 = tone_width(world, bins) ** 2
    inten = ((audio.double() + 1) / 2).clamp(min=1e-4)
    k = inten.argmax(-1, keepdim=True)
    left, right = (k - 1).clamp(min=0), (k + 1).clamp(max=bins - 1)
    il, ir = inten.gather(-1, left), inten.gather(-1, right)
    kk = torch.where(((ir >= il) & (k < bins - 1)) | (k == 0), right, left)         # the louder neighbour
    ck, ckk = c[k], c[kk]
    d = inten.gather(-1, k).log() - inten.gather(-1, kk).log()
    h = ((ckk ** 2 - ck ** 2) - 2 * w2 * d) / (2 * (ckk - ck))
    return h.squeeze(-1)


def block_heights(states_or_pos: torch.Tensor, block: int) -> torch.Tensor:
    """The first sprite's mean height a block: positions ``[B, F, S, >=2]`` -> ``[B, F // block]``."""
    y = states_or_pos[..., 0, 1].double()
    B, Fr = y.shape
    if Fr % block:
        raise ValueError(f"the block ({block} frames) must divide the clip ({Fr} frames)")
    return y.reshape(B, Fr // block, block).mean(-1)


def av_clips(world: World, n: int, frames: int, resolution: int, block: int, bins: int = 8,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` clips and their sound: frames ``[n, frames, 1, R, R]`` and audio ``[n, frames // block, bins]``, the
    tone of each block's mean sprite height (:func:`tone`)."""
    g = generator or torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    states = world.simulate(n, frames, generator=g)
    return world.render(states, resolution), tone(block_heights(states, block), world, bins)


def sync_error(video: torch.Tensor, audio: torch.Tensor, world: World, block: int) -> torch.Tensor:
    """``[B]``: the mean over blocks of ``|pitch(audio) - height(frames)|``, the audio's height against the
    sprite's mean height over the same block's frames (detected off the pixels): 0 for a clip and its sound."""
    if video.shape[1] != audio.shape[1] * block:
        raise ValueError(f"{video.shape[1]} frames and {audio.shape[1]} audio tokens: one token a block of {block}")
    return (pitch(audio, world) - block_heights(world.detect(video), block)).abs().mean(1)


# --------------------------------------------------------------------------------------------- the network
@dataclass(frozen=True)
class AVLayout:
    """How the two streams interleave: ``block`` frames a block, ``bins`` numbers an audio token, one audio token a
    block, ``prefix`` global prefix tokens, ``sink`` an audio sink token or not."""

    block: int = 2
    bins: int = 8
    prefix: int = 2
    sink: bool = True


class DualStreamNet(nn.Module):
    """``net(video [B, F, C, R, R], audio [B, F / block, bins], t_video, t_audio) -> (v_video, v_audio)`` (see the
    module docstring). ``video_net``: the layers, the video embedding and head (a copy is kept); ``causal``: the
    asymmetric block-causal mask (the student) or full attention (the teacher). Times: ``[B]`` (one a clip) or one
    a frame ``[B, F]`` and one a block ``[B, F / block]``."""

    def __init__(self, video_net: VideoTransformer, layout: AVLayout = AVLayout(), causal: bool = False):
        super().__init__()
        if video_net.config.cond_dim or video_net.modes:
            raise ValueError("the dual-stream network wraps a plain video transformer (no condition stream, no modes)")
        self.video = copy.deepcopy(video_net)
        self.video.mask, self.video.block, self.video.window = "full", 1, None  # its own mask is not used here
        self.layout, self.causal = layout, causal
        D = video_net.config.dim
        self.audio_embed = nn.Linear(layout.bins, D)
        self.stream_emb = nn.Parameter(torch.zeros(2, D))            # video, audio
        self.audio_out_mod = nn.Linear(D, 2 * D)
        self.audio_out = nn.Linear(D, layout.bins)
        for lin in (self.audio_out_mod, self.audio_out):              # the audio head starts at v = 0
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        g = torch.Generator().manual_seed(0)
        self.prefix = nn.Parameter(0.02 * torch.randn(layout.prefix, D, generator=g)) if layout.prefix else None
        self.sink = nn.Parameter(0.02 * torch.randn(1, D, generator=g)) if layout.sink else None

    # ---------------------------------------------------------------- pieces
    @property
    def config(self):
        """The layers' settings (the wrapped video transformer's :class:`~distill_lab.video.nets.VideoNetConfig`)."""
        return self.video.config

    @property
    def n_global(self) -> int:
        return self.layout.prefix + int(self.layout.sink)

    def as_causal(self) -> "DualStreamNet":
        """A copy with the same weights and the asymmetric block-causal mask (the student's initialisation)."""
        net = copy.deepcopy(self)
        net.causal = True
        for p in net.parameters():
            p.requires_grad_(True)
        return net.train()

    def _times(self, t, n: int, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
        B = like.shape[0]
        if t.dim() == 0:
            t = t.expand(B)
        if t.dim() == 1:
            if t.shape[0] != B:
                raise ValueError(f"times must be one a clip [{B}] or one a token group [{B}, {n}], got {tuple(t.shape)}")
            return t[:, None].expand(B, n)
        if tuple(t.shape) != (B, n):
            raise ValueError(f"times must be one a clip [{B}] or one a token group [{B}, {n}], got {tuple(t.shape)}")
        return t

    def _temb(self, t: torch.Tensor) -> torch.Tensor:
        return self.video.time_mlp(self.video.time(t.reshape(-1))).reshape(*t.shape, -1)

    def _global_tokens(self, B: int, like: torch.Tensor):
        """The prefix and the sink: tokens ``[B, G, D]``, their (clean) time embedding, streams and blocks."""
        parts = [p for p in (self.prefix, self.sink) if p is not None]
        G = self.n_global
        if not G:
            z = like.new_zeros(B, 0, self.video.config.dim)
            return z, z, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        h = torch.cat(parts, 0).to(like.dtype)[None].expand(B, -1, -1)
        emb = self._temb(torch.ones(B, G, dtype=like.dtype, device=like.device))
        stream = torch.tensor([PREFIX] * self.layout.prefix + [SINK] * int(self.layout.sink))
        return h, emb, stream, torch.full((G,), -1, dtype=torch.long)

    def _stream_tokens(self, xv, xa, tv, ta, first_block: int):
        """The video and audio tokens of blocks ``first_block ...``: tokens, time embeddings, streams, blocks and
        positions (frame index; an audio token at its block's middle)."""
        b, N = self.layout.block, self.video.config.tokens_per_frame
        B, Fr = xv.shape[:2]
        nb = xa.shape[1]
        if Fr != nb * b or xa.shape[-1] != self.layout.bins:
            raise ValueError(f"video [B, F, ...] and audio [B, F / {b}, {self.layout.bins}] must cover the same blocks, "
                             f"got {tuple(xv.shape)} and {tuple(xa.shape)}")
        self.video._check(xv)
        tv, ta = self._times(tv, Fr, xv), self._times(ta, nb, xv)
        hv, ev = self.video._embed(xv, tv, first_block * b)
        hv = hv + self.stream_emb[0]
        ha = self.audio_embed(xa) + self.stream_emb[1]
        ea = self._temb(ta)
        f0 = first_block * b
        pos_v = torch.arange(f0, f0 + Fr, device=xv.device).repeat_interleave(N).to(xv.dtype)
        pos_a = (f0 + torch.arange(nb, device=xv.device) * b + (b - 1) / 2).to(xv.dtype)
        blk_v = (torch.arange(f0, f0 + Fr) // b).repeat_interleave(N)
        blk_a = first_block + torch.arange(nb)
        stream = torch.cat([torch.full((Fr * N,), VIDEO), torch.full((nb,), AUDIO)])
        return (torch.cat([hv, ha], 1), torch.cat([ev, ea], 1), stream, torch.cat([blk_v, blk_a]),
                torch.cat([pos_v, pos_a]))

    @staticmethod
    def _attend(q, k, v, pos_q, pos_k, global_q, global_k, allowed):
        """Softmax attention with rotary positions on timed tokens only: a global key (prefix, sink) is read by the
        unrotated query, so its score does not depend on the query's position (identity RoPE)."""
        qr, kr = rope(q, pos_q), rope(k, pos_k)
        qr = torch.where(global_q[:, None], q, qr)
        kr = torch.where(global_k[:, None], k, kr)
        scores_pos = qr @ kr.transpose(-1, -2)
        scores_glob = q @ k.transpose(-1, -2)
        scores = torch.where(global_k[None, :], scores_glob, scores_pos) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~allowed, float("-inf"))
        return torch.softmax(scores, -1) @ v

    def _outputs(self, h, emb, B: int, Fr: int, nb: int):
        N = self.video.config.tokens_per_frame
        hv, ev = h[:, :Fr * N], emb[:, :Fr * N]
        ha, ea = h[:, Fr * N:], emb[:, Fr * N:]
        out_v = self.video._out(hv, ev, B, Fr)
        s, sh = self.audio_out_mod(ea).chunk(2, -1)
        out_a = self.audio_out(self.video.norm_out(ha) * (1 + s) + sh)
        return out_v, out_a

    # ---------------------------------------------------------------- one pass
    def forward(self, xv: torch.Tensor, xa: torch.Tensor, tv, ta=None):
        """Both velocities, every token at once under this network's mask (``ta`` defaults to ``tv`` when that is
        one time a clip)."""
        B, Fr = xv.shape[:2]
        nb = xa.shape[1]
        if ta is None:
            ta = tv if torch.as_tensor(tv).dim() <= 1 else None
            if ta is None:
                raise ValueError("per-frame video times need per-block audio times (ta)")
        hs, es, stream_s, block_s, pos_s = self._stream_tokens(xv, xa, tv, ta, 0)
        hg, eg, stream_g, block_g = self._global_tokens(B, xv)
        h, emb = torch.cat([hg, hs], 1), torch.cat([eg, es], 1)
        stream, block = torch.cat([stream_g, stream_s]), torch.cat([block_g, block_s])
        pos = torch.cat([torch.zeros(len(stream_g), dtype=xv.dtype, device=xv.device), pos_s])
        glob = (stream == PREFIX) | (stream == SINK)
        allowed = (dual_stream_mask(stream, block) if self.causal
                   else torch.ones(len(stream), len(stream), dtype=torch.bool))
        for layer in self.video.layers:
            q, k, v = layer.qkv_heads(h, emb)
            attn = self._attend(q, k, v, pos, pos, glob, glob, allowed)
            h = layer.finish(h, attn, emb)
        G = len(stream_g)
        return self._outputs(h[:, G:], emb[:, G:], B, Fr, nb)

    # ---------------------------------------------------------------- streaming
    def new_cache(self, B: int, video_window: int | None = None, audio_window: int | None = None,
                  dtype=torch.float32) -> "AVCache":
        """A cache holding the global tokens' keys and values (they read only each other), ready for block 0."""
        if not self.causal:
            raise ValueError("only the block-causal (student) network streams: call as_causal() first")
        cache = AVCache(len(self.video.layers), video_window, audio_window)
        like = torch.zeros(B, 1, dtype=dtype, device=next(self.parameters()).device)
        h, emb, stream, block = self._global_tokens(B, like)
        if len(stream):
            pos = torch.zeros(len(stream), dtype=dtype, device=like.device)
            glob = torch.ones(len(stream), dtype=torch.bool)
            allowed = torch.ones(len(stream), len(stream), dtype=torch.bool)
            kv = []
            for layer in self.video.layers:
                q, k, v = layer.qkv_heads(h, emb)
                kv.append((k, v))
                h = layer.finish(h, self._attend(q, k, v, pos, pos, glob, glob, allowed), emb)
            cache.append(kv, stream, block, pos)
        return cache

    def forward_block(self, xv: torch.Tensor, xa: torch.Tensor, t, cache: "AVCache", return_kv: bool = False):
        """Both velocities of block ``cache.next_block`` (``xv [B, block, ...]``, ``xa [B, 1, bins]``, one time ``t``
        for both, ``[B]`` or a number) against the cache and itself."""
        B = xv.shape[0]
        if xv.shape[1] != self.layout.block or xa.shape[1] != 1:
            raise ValueError(f"a streamed block is {self.layout.block} frames and one audio token, got "
                             f"{tuple(xv.shape)} and {tuple(xa.shape)}")
        n = cache.next_block
        h, emb, stream_q, block_q, pos_q = self._stream_tokens(xv, xa, t, t, n)
        glob_q = torch.zeros(len(stream_q), dtype=torch.bool)
        stream_k = torch.cat([cache.stream, stream_q])
        block_k, pos_k = torch.cat([cache.block, block_q]), torch.cat([cache.pos.to(pos_q), pos_q])
        glob_k = (stream_k == PREFIX) | (stream_k == SINK)
        allowed = dual_stream_mask(stream_q, block_q, stream_k, block_k)
        new_kv = []
        for i, layer in enumerate(self.video.layers):
            q, k, v = layer.qkv_heads(h, emb)
            new_kv.append((k, v))
            ck, cv = cache.kv[i]
            if ck is not None:
                k, v = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
            h = layer.finish(h, self._attend(q, k, v, pos_q, pos_k, glob_q, glob_k, allowed), emb)
        out = self._outputs(h, emb, B, self.layout.block, 1)
        return (out, (new_kv, stream_q, block_q, pos_q)) if return_kv else out


class AVCache:
    """Per layer, the keys and values ``[B, heads, N, d]`` (unrotated) of the tokens kept, with each token's stream,
    block and position; the global tokens are kept for ever, each stream's last ``video_window`` / ``audio_window``
    blocks (``None``: all) after each :meth:`append` (the per-modality rolling cache)."""

    def __init__(self, depth: int, video_window: int | None = None, audio_window: int | None = None):
        for name, w in (("video_window", video_window), ("audio_window", audio_window)):
            if w is not None and w < 0:
                raise ValueError(f"{name} must be None (keep all) or >= 0 blocks, got {w}")
        self.kv = [(None, None)] * depth
        self.video_window, self.audio_window = video_window, audio_window
        self.stream = torch.zeros(0, dtype=torch.long)
        self.block = torch.zeros(0, dtype=torch.long)
        self.pos = torch.zeros(0)
        self.next_block = 0

    def append(self, kv: list, stream: torch.Tensor, block: torch.Tensor, pos: torch.Tensor) -> None:
        self.kv = [(k, v) if ck is None else (torch.cat([ck, k], 2), torch.cat([cv, v], 2))
                   for (ck, cv), (k, v) in zip(self.kv, kv)]
        self.stream, self.block = torch.cat([self.stream, stream]), torch.cat([self.block, block])
        self.pos = torch.cat([self.pos.to(pos), pos])
        if len(block) and int(block.max()) >= 0:
            self.next_block = int(block.max()) + 1
        self._evict()

    def _evict(self) -> None:
        last = self.next_block - 1
        keep = torch.ones(len(self.stream), dtype=torch.bool)
        for s, w in ((VIDEO, self.video_window), (AUDIO, self.audio_window)):
            if w is not None:
                keep &= ~((self.stream == s) & (self.block <= last - w))
        if bool(keep.all()):
            return
        idx = keep.nonzero().squeeze(1)
        self.kv = [(k[:, :, idx], v[:, :, idx]) for k, v in self.kv]
        self.stream, self.block, self.pos = self.stream[idx], self.block[idx], self.pos[idx]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv if k is not None)

    def count(self, stream: int) -> int:
        return int((self.stream == stream).sum())


# --------------------------------------------------------------------------------------------- the student
class AVStudent(nn.Module):
    """A few-step streaming generator of both streams: ``net`` block-causal, ``times`` the start times of its
    denoising steps (the renoise sampler: predict the clean block, noise it afresh to the next time)."""

    def __init__(self, net: DualStreamNet, times: list[float], video_window: int | None = None,
                 audio_window: int | None = None):
        super().__init__()
        if not net.causal:
            raise ValueError("a streaming student needs the block-causal network (DualStreamNet.as_causal())")
        if not times or times[0] != 0.0 or any(b <= a for a, b in zip(times, times[1:])) or times[-1] >= 1:
            raise ValueError(f"times must start at 0 and increase below 1, got {times}")
        self.net, self.times = net, list(times)
        self.video_window, self.audio_window = video_window, audio_window

    def denoise(self, zv, za, cache, exit_step: int | None = None, generator: torch.Generator | None = None):
        """The block's clean guess after ``exit_step + 1`` of the steps (all by default); only the exit step's
        network call carries a gradient (Self Forcing's truncation), the steps before it run without one. The
        fresh noise between steps comes from ``generator`` (default: the global stream)."""
        last = len(self.times) - 1 if exit_step is None else exit_step
        xv, xa = zv, za
        for j, t in enumerate(self.times[:last + 1]):
            with torch.set_grad_enabled(torch.is_grad_enabled() and j == last):
                vv, va = self.net.forward_block(xv, xa, t, cache)
                cv, ca = xv + (1 - t) * vv, xa + (1 - t) * va
            if j < last:
                s = self.times[j + 1]
                cv, ca = cv.detach(), ca.detach()
                nv = torch.randn(cv.shape, generator=generator, dtype=cv.dtype).to(cv.device)
                na = torch.randn(ca.shape, generator=generator, dtype=ca.dtype).to(ca.device)
                xv, xa = (1 - s) * nv + s * cv, (1 - s) * na + s * ca
        return cv, ca

    @torch.no_grad()
    def commit(self, cv, ca, cache) -> None:
        """Store a finished block's keys and values (the clean block read at ``t = 1``)."""
        _, (kv, stream, block, pos) = self.net.forward_block(cv.detach(), ca.detach(), 1.0, cache, return_kv=True)
        cache.append([(k.detach(), v.detach()) for k, v in kv], stream, block, pos)

    def stream(self, zv, za, grad: bool = False, exits: list[int] | None = None, on_block=None,
               generator: torch.Generator | None = None):
        """Both streams from noise ``zv [B, F, ...]``, ``za [B, F / block, bins]``, block by block on the student's
        own outputs. ``grad``: Self Forcing's training rollout (``exits``: each block's exit step, random by
        default). ``generator``: the source of the fresh noise between steps (an evaluation passes one, so that
        its figures do not depend on what ran before). Returns ``(video, audio)``."""
        b = self.net.layout.block
        nb = za.shape[1]
        cache = self.net.new_cache(zv.shape[0], self.video_window, self.audio_window, zv.dtype)
        if exits is None:
            exits = (torch.randint(0, len(self.times), (nb,)).tolist() if grad else [len(self.times) - 1] * nb)
        vs, aus = [], []
        with torch.set_grad_enabled(grad):
            for n in range(nb):
                cv, ca = self.denoise(zv[:, n * b:(n + 1) * b], za[:, n:n + 1], cache, exits[n], generator)
                vs.append(cv)
                aus.append(ca)
                self.commit(cv, ca, cache)
                if on_block is not None:
                    on_block(n, cache)
        return torch.cat(vs, 1), torch.cat(aus, 1)


# --------------------------------------------------------------------------------------------- losses
def joint_flow_matching_loss(net, xv, xa, tv=None, ta=None, audio_weight: float = 1.0):
    """Flow matching on both streams (Lipman et al. 2023, eq. 23, linear path), each stream's squared error averaged
    over its own elements: ``mean_video + audio_weight * mean_audio`` (the teacher's and the fake score's loss).
    Times default to one a clip, shared by both streams."""
    B = xv.shape[0]
    if tv is None:
        tv = torch.rand(B, device=xv.device)
    if ta is None:
        if tv.dim() != 1:
            raise ValueError("per-frame video times need per-block audio times (ta)")
        ta = tv
    nv, na = torch.randn_like(xv), torch.randn_like(xa)
    tvx = tv.reshape(B, -1, *[1] * (xv.dim() - 2)) if tv.dim() == 2 else tv.reshape(B, *[1] * (xv.dim() - 1))
    tax = ta.reshape(B, -1, 1) if ta.dim() == 2 else ta.reshape(B, 1, 1)
    vv, va = net(nv + tvx * (xv - nv), na + tax * (xa - na), tv, ta)
    lv = (vv - (xv - nv)).pow(2).mean()
    la = (va - (xa - na)).pow(2).mean()
    return lv + audio_weight * la, {"video": float(lv.detach()), "audio": float(la.detach())}


def joint_dmd_loss(xv: torch.Tensor, xa: torch.Tensor, real, fake, t: torch.Tensor | None = None):
    r"""Joint DMD on a generated clip and its sound (Yin et al. 2024, eqs. 7-8, as :func:`~distill_lab.methods.step.
    dmd.dmd_loss`, on two streams). Both streams are noised at one time ``t`` a clip, ``x_t = (1 - t) eps + t x``,
    and the real (teacher) and fake networks read the joint ``x_t``; per stream ``s`` the direction is

    .. math:: g_s = \frac{x_{s,\text{fake}} - x_{s,\text{real}}}{\text{mean}_\text{per sample}|x_s - x_{s,\text{real}}|}

    and the loss is ``0.5 mean((x_v - sg(x_v - g_v))^2) + 0.5 mean((x_a - sg(x_a - g_a))^2)``, each mean over its own
    stream, so the audio's 32 numbers a clip weigh as much as the video's pixels. Teacher provides: its joint
    velocity ``real(xv_t, xa_t, t) -> (v_v, v_a)``. Stop-gradient: ``x_t`` and both networks' predictions (no
    gradient reaches either), the targets; gradient reaches ``xv`` and ``xa`` only. Returns ``(loss, info)``."""
    B = xv.shape[0]
    if xa.shape[0] != B:
        raise ValueError(f"video and audio must hold the same clips, got {B} and {xa.shape[0]}")
    if t is None:
        t = 0.02 + 0.96 * torch.rand(B, device=xv.device)
    tvx, tax = t.reshape(B, *[1] * (xv.dim() - 1)), t.reshape(B, 1, 1)
    with torch.no_grad():
        xvt = (1 - tvx) * torch.randn_like(xv) + tvx * xv.detach()
        xat = (1 - tax) * torch.randn_like(xa) + tax * xa.detach()
        rv, ra = real(xvt, xat, t)
        fv, fa = fake(xvt, xat, t)
        real_v, real_a = xvt + (1 - tvx) * rv, xat + (1 - tax) * ra
        fake_v, fake_a = xvt + (1 - tvx) * fv, xat + (1 - tax) * fa
        wv = (xv.detach() - real_v).abs().flatten(1).mean(1).clamp_min(1e-6).reshape_as(tvx)
        wa = (xa.detach() - real_a).abs().flatten(1).mean(1).clamp_min(1e-6).reshape_as(tax)
        gv, ga = (fake_v - real_v) / wv, (fake_a - real_a) / wa
    loss = 0.5 * F.mse_loss(xv, (xv.detach() - gv)) + 0.5 * F.mse_loss(xa, (xa.detach() - ga))
    return loss, {"grad_video": float(gv.flatten(1).norm(dim=1).mean()),
                  "grad_audio": float(ga.flatten(1).norm(dim=1).mean())}


# --------------------------------------------------------------------------------------------- scales
@dataclass(frozen=True)
class AVScale:
    """What the audio-visual lab sizes by the scale (numbers only): the joint teacher's fine-tuning from the video
    teacher, the students' Self Forcing run and the evaluation (``eval_factor`` training horizons streamed)."""

    layout: AVLayout
    frames: int
    teacher_steps: int
    teacher_batch: int
    teacher_lr: float
    teacher_nfe: int
    student_steps: int
    batch: int
    student_nfe: int
    gen_lr: float
    fake_lr: float
    eval_n: int
    eval_factor: int
    video_window: int
    audio_window: int


AV_SCALES = {
    "ci": AVScale(layout=AVLayout(), frames=8, teacher_steps=2000, teacher_batch=32, teacher_lr=5e-4, teacher_nfe=16,
                  student_steps=150, batch=16, student_nfe=2, gen_lr=5e-5, fake_lr=2e-4, eval_n=128, eval_factor=4,
                  video_window=3, audio_window=3),
    "default": AVScale(layout=AVLayout(), frames=8, teacher_steps=4000, teacher_batch=32, teacher_lr=5e-4,
                       teacher_nfe=32, student_steps=600, batch=32, student_nfe=2, gen_lr=5e-5, fake_lr=2e-4,
                       eval_n=1024, eval_factor=4, video_window=3, audio_window=3),
    "gpu": AVScale(layout=AVLayout(), frames=16, teacher_steps=10000, teacher_batch=64, teacher_lr=5e-4,
                   teacher_nfe=32, student_steps=3000, batch=64, student_nfe=4, gen_lr=5e-5, fake_lr=2e-4,
                   eval_n=2048, eval_factor=4, video_window=6, audio_window=6),
}


def av_scale(scale=None) -> AVScale:
    from ..core.scale import get_scale

    return AV_SCALES[get_scale(scale).name]


# --------------------------------------------------------------------------------------------- training
def train_av_teacher(video_teacher: VideoTransformer, asc: AVScale, world: World, seed: int = 0,
                     steps: int | None = None, progress: bool = True) -> tuple[DualStreamNet, dict]:
    """The joint bidirectional teacher: a :class:`DualStreamNet` around the video track's teacher, fine-tuned by
    :func:`joint_flow_matching_loss` on clips and their sound (half the batches one time a clip, half one time a
    frame and one a block), with :func:`~distill_lab.video.teacher.fit_teacher`'s loop (Adam, cosine, EMA).
    Returns ``(ema_net, info)``."""
    from .teacher import fit_teacher, training_times

    steps = steps or asc.teacher_steps
    seed_everything(seed)
    net = DualStreamNet(video_teacher, asc.layout).train()
    for p in net.parameters():
        p.requires_grad_(True)
    b, R = asc.layout.block, video_teacher.config.resolution

    def batch_loss(i):
        xv, xa = av_clips(world, asc.teacher_batch, asc.frames, R, b, asc.layout.bins)
        tv = training_times(xv.shape[0], asc.frames)
        per_frame = (tv != tv[:, :1]).any(1, keepdim=True)
        ta = torch.where(per_frame, torch.rand(xv.shape[0], asc.frames // b), tv[:, ::b])
        return joint_flow_matching_loss(net, xv, xa, tv, ta)[0]

    return fit_teacher(net, batch_loss, steps, asc.teacher_lr, 0.999, "joint audio-video teacher", progress)


@torch.no_grad()
def sample_teacher(net: DualStreamNet, zv: torch.Tensor, za: torch.Tensor, nfe: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler steps of the joint teacher from noise over a whole clip and its sound (both streams at one time)."""
    xv, xa = zv.clone(), za.clone()
    for i in range(nfe):
        t = torch.full((zv.shape[0],), i / nfe)
        vv, va = net(xv, xa, t, t)
        xv, xa = xv + vv / nfe, xa + va / nfe
    return xv, xa


AV_VARIANTS = {
    # OmniForcing: the asymmetric block-causal mask with the global prefix and the audio sink token
    "omniforcing": dict(sink=True, prefix=2),
    # the same without the sink (the prefix kept)
    "no_sink": dict(sink=False, prefix=2),
    # neither global token: every query reads only the timed tokens of its block and the blocks before
    "no_global": dict(sink=False, prefix=0),
}


def train_av_student(teacher: DualStreamNet, asc: AVScale, world: World, seed: int = 0, steps: int | None = None,
                     progress: bool = True, **overrides) -> AVStudent:
    """Joint Self Forcing (module docstring): a block-causal copy of ``teacher`` (``sink`` and ``prefix`` as asked:
    a layout without the sink or with another prefix drops or adds those tokens, the rest of the weights kept)
    streams both modalities from noise on its own outputs, the clip is scored by :func:`joint_dmd_loss` with
    ``teacher`` as the real score and a fake score (a copy of the teacher) fitted to the student's clips,
    ``critic_updates`` fake-score steps before each generator step. Logged each step: the gradient norms of the
    audio-only and of all parameters before clipping (``grad_audio_params``, ``grad_norm``). The student carries
    ``history``, ``options`` and ``train_seconds``."""
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    o = with_options(overrides, "joint Self Forcing", sink=True, prefix=asc.layout.prefix, batch=asc.batch,
                     gen_lr=asc.gen_lr, fake_lr=asc.fake_lr, critic_updates=2, nfe=asc.student_nfe, max_norm=10.0)
    # pragma: no mutate end
    steps = steps or asc.student_steps
    seed_everything(seed)
    layout = AVLayout(asc.layout.block, asc.layout.bins, o["prefix"], o["sink"])
    net = with_layout(teacher, layout).as_causal()
    student = AVStudent(net, uniform_times(o["nfe"]))
    fake = copy.deepcopy(teacher).train()
    for p in fake.parameters():
        p.requires_grad_(True)
    real = clone_frozen(teacher).eval()
    g_opt = torch.optim.Adam(net.parameters(), lr=o["gen_lr"], betas=DMD_BETAS)
    f_opt = torch.optim.Adam(fake.parameters(), lr=o["fake_lr"], betas=DMD_BETAS)
    audio_params = [p for n, p in net.named_parameters() if n.startswith(("audio_", "sink"))]
    B, b, R = o["batch"], asc.layout.block, teacher.video.config.resolution
    nb = asc.frames // b

    def noise():
        return torch.randn(B, asc.frames, 1, R, R), torch.randn(B, nb, asc.layout.bins)

    def step(i):
        logs = {}
        for _ in range(o["critic_updates"]):
            with torch.no_grad():
                xv, xa = student.stream(*noise())
            lf, info = joint_flow_matching_loss(fake, xv, xa)
            f_opt.zero_grad(set_to_none=True)
            lf.backward()
            f_opt.step()
            logs["fake_fm"] = lf.detach()
        xv, xa = student.stream(*noise(), grad=True)
        with frozen(fake):
            loss, info = joint_dmd_loss(xv, xa, real, fake)
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        ga = torch.sqrt(sum((p.grad.pow(2).sum() for p in audio_params if p.grad is not None), torch.tensor(0.0)))
        gn = torch.nn.utils.clip_grad_norm_(net.parameters(), o["max_norm"])
        g_opt.step()
        return {**logs, "loss": loss.detach(), "grad_norm": gn.detach(), "grad_audio_params": ga.detach(),
                "dmd_grad_audio": info["grad_audio"], "dmd_grad_video": info["grad_video"]}

    t0 = time.perf_counter()
    hist = fit(step, steps, desc=f"joint Self Forcing ({'sink' if o['sink'] else 'no sink'}, seed {seed})",
               log_every=1, progress=progress)
    student.train_seconds = time.perf_counter() - t0
    student.net.eval()
    for p in student.net.parameters():
        p.requires_grad_(False)
    student.history, student.options = hist, o
    return student


def with_layout(net: DualStreamNet, layout: AVLayout) -> DualStreamNet:
    """A copy of ``net`` with another prefix length or without (or with) the sink: the shared weights copied, a
    prefix cut or extended (new tokens drawn as at initialisation), a missing sink dropped, a new one drawn."""
    ref = next(net.parameters())
    out = DualStreamNet(net.video, layout, net.causal).to(ref.device, ref.dtype)
    state = {k: v for k, v in net.state_dict().items() if k not in ("prefix", "sink")}
    out.load_state_dict(state, strict=False)
    with torch.no_grad():
        if out.prefix is not None and net.prefix is not None:
            n = min(len(out.prefix), len(net.prefix))
            out.prefix[:n] = net.prefix[:n]
        if out.sink is not None and net.sink is not None:
            out.sink.copy_(net.sink)
    return out


# --------------------------------------------------------------------------------------------- measures
@torch.no_grad()
def evaluate_av(video: torch.Tensor, audio: torch.Tensor, world: World, block: int) -> dict:
    """A set of generated clips and their sound: the sync error (mean, its standard error over clips, and per
    block), the frame error (mean squared difference from a clean render of the sprite where the detector finds
    it) and the tone error (each audio token against the clean tone at its own pitch): how clean each stream is,
    apart from how well the two agree."""
    if video.shape[1] != audio.shape[1] * block:
        raise ValueError(f"{video.shape[1]} frames and {audio.shape[1]} audio tokens: one token a block of {block}")
    pos, heard = world.detect(video), pitch(audio, world)  # each read once: the sync and the cleanliness share them
    gap = (heard - block_heights(pos, block)).abs()                                  # [B, blocks]
    per_clip, per_block = gap.mean(1), gap.mean(0)
    clean_v = world.render(pos, video.shape[-1])
    clean_a = tone(heard, world, audio.shape[-1])
    return {"sync": float(per_clip.mean()), "sync_se": float(per_clip.std() / math.sqrt(len(per_clip))),
            "sync_per_block": per_block.tolist(), "frame_error": float((video - clean_v).pow(2).mean()),
            "tone_error": float((audio - clean_a).pow(2).mean())}


def shuffled_sync(video: torch.Tensor, audio: torch.Tensor, world: World, block: int) -> float:
    """The sync error of the same clips and sounds, each sound given to another clip (a rotation by one): the
    baseline of two streams that do not follow each other."""
    return float(sync_error(video, audio.roll(1, 0), world, block).mean())


@torch.no_grad()
def evaluate_student(student: AVStudent, asc: AVScale, world: World, factor: int = 1, n: int | None = None,
                     video_window: int | None = None, audio_window: int | None = None, seed: int = 5) -> dict:
    """Stream ``n`` clips (default ``asc.eval_n``) of ``factor`` training horizons from fixed noise (``seed``), the
    cache keeping ``video_window`` / ``audio_window`` blocks of each stream (``None``: all); returns
    :func:`evaluate_av`'s measures, the shuffled pairing's sync error, the sync error a training horizon
    (``sync_per_horizon``), the cache's bytes after each block (``cache_bytes``) and frames per second of the
    stream (``fps``, one CPU thread here), with the clips (``video``, ``audio``)."""
    n = n or asc.eval_n
    b, bins = student.net.layout.block, student.net.layout.bins
    R = student.net.config.resolution
    g = torch.Generator().manual_seed(seed)
    frames = asc.frames * factor
    zv, za = torch.randn(n, frames, 1, R, R, generator=g), torch.randn(n, frames // b, bins, generator=g)
    old = student.video_window, student.audio_window
    student.video_window, student.audio_window = video_window, audio_window
    sizes = []
    t0 = time.perf_counter()
    try:
        xv, xa = student.stream(zv, za, on_block=lambda i, cache: sizes.append(cache.nbytes() / n), generator=g)
    finally:
        student.video_window, student.audio_window = old
    secs = time.perf_counter() - t0
    m = evaluate_av(xv, xa, world, b)
    per_block = torch.tensor(m["sync_per_block"])
    per_h = asc.frames // b
    return {**m, "shuffled": shuffled_sync(xv, xa, world, b),
            "sync_per_horizon": per_block.reshape(factor, per_h).mean(1).tolist(),
            "cache_bytes": sizes, "fps": n * frames / secs, "video": xv, "audio": xa}


def plot_av(video: torch.Tensor, audio: torch.Tensor, world: World, title: str = "", axes=None):
    """One clip ``video [F, 1, R, R]`` above its sound ``audio [F / block, bins]`` drawn as a spectrogram (the bins
    ordered as the frame's rows, each token spanning its block's frames), with the sprite's detected height and the audio's pitch a block
    marked on it. Returns the axes."""
    import matplotlib.pyplot as plt

    Fr, nb, bins = video.shape[0], audio.shape[0], audio.shape[1]
    b = Fr // nb
    if axes is None:
        _, axes = plt.subplots(2, 1, figsize=(0.7 * Fr + 1, 2.6), gridspec_kw={"height_ratios": [1, 1.1]})
    frames = ((video[:, 0].detach().float().cpu().clamp(-1, 1) + 1) / 2)
    axes[0].imshow(torch.cat(list(frames), 1).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_title(title, fontsize=9)
    lo, hi = world.margin, 1 - world.margin
    spec = audio.detach().float().cpu().T.repeat_interleave(b, 1)      # [bins, F]
    half = (hi - lo) / (bins - 1) / 2    # heights grow downwards, as the frame's rows do: pitch and picture align
    axes[1].imshow(spec.numpy(), aspect="auto", origin="upper", cmap="magma", vmin=-1, vmax=1,
                   extent=(-0.5, Fr - 0.5, hi + half, lo - half))
    heights = world.detect(video[None].float())[0, :, 0, 1]
    mids = torch.arange(nb) * b + (b - 1) / 2
    axes[1].plot(torch.arange(Fr).numpy(), heights.numpy(), "c.-", lw=1, label="sprite height (frames)")
    axes[1].plot(mids.numpy(), pitch(audio.detach().float().cpu(), world).numpy(), "wo", ms=5, mfc="none",
                 label="pitch (audio)")
    axes[1].set_ylabel("height", fontsize=8)
    axes[1].set_xlabel("frame", fontsize=8)
    axes[1].legend(fontsize=6, loc="upper right")
    return axes


# --------------------------------------------------------------------------------------------- checkpoints
SEEDS = (0, 1, 2)
REBUILD = "python -m distill_lab.video.audio_visual"


def av_dir(scale: str = "ci") -> Path:
    """``datasets/teachers/av_<scale>``: the joint teacher (``teacher.pt``, ``manifest.json``) and the students."""
    from ..core.checkpoints import TEACHERS_DIR

    return TEACHERS_DIR / f"av_{scale}"


def av_teacher_dir(scale=None) -> Path:
    """The joint teacher's folder a scale loads: its own when committed, else the ``ci`` one (a printed notice says
    so, and which command makes the scale's own)."""
    from ..core.scale import get_scale

    name = get_scale(scale).name
    own = av_dir(name)
    if (own / "manifest.json").is_file():
        return own
    print(f"no committed joint teacher for the {name} scale ({own.name}): the lab loads the ci one; "
          f"`{REBUILD} --scale {name} --teacher --students` makes the scale's own")
    return av_dir("ci")


def av_students_scale(scale=None) -> str:
    """The scale whose committed students a scale loads: its own when its ``students.json`` is committed, else
    ``ci``."""
    from ..core.scale import get_scale

    name = get_scale(scale).name
    return name if (av_dir(name) / "students.json").is_file() else "ci"


def load_av_teacher(folder=None, verify: bool = True) -> dict:
    """The committed joint teacher: ``{"model": DualStreamNet (float32, eval), "manifest"}``; a missing or altered
    folder raises :class:`~distill_lab.video.teacher.VideoTeacherUnavailable` naming the command that rebuilds it."""
    from ..core.checkpoints import check_folder, float32_state
    from .nets import VideoNetConfig
    from .teacher import FILES, VideoTeacherUnavailable

    folder = Path(folder) if folder is not None else av_dir("ci")
    manifest = check_folder(folder, FILES, verify, "joint audio-video teacher", VideoTeacherUnavailable,
                            f"{REBUILD} --teacher", False, required=("net", "layout"))
    state = torch.load(folder / "teacher.pt", map_location="cpu", weights_only=True)
    net = DualStreamNet(VideoTransformer(VideoNetConfig(**manifest["net"]), "full"), AVLayout(**manifest["layout"]))
    net.load_state_dict(float32_state(state))
    for p in net.parameters():
        p.requires_grad_(False)
    return {"model": net.eval(), "manifest": manifest}


@torch.no_grad()
def teacher_measures(net: DualStreamNet, asc: AVScale, world: World, seed: int = 0) -> dict:
    """The joint teacher's ``asc.eval_n`` clips and sounds (``teacher_nfe`` Euler steps) measured by
    :func:`evaluate_av`, beside the shuffled pairing and the data's own."""
    g = torch.Generator().manual_seed(seed + 7)
    R, b = net.config.resolution, asc.layout.block
    zv = torch.randn(asc.eval_n, asc.frames, 1, R, R, generator=g)
    za = torch.randn(asc.eval_n, asc.frames // b, asc.layout.bins, generator=g)
    xv, xa = sample_teacher(net, zv, za, asc.teacher_nfe)
    dv, da = av_clips(world, asc.eval_n, asc.frames, R, b, asc.layout.bins, torch.Generator().manual_seed(seed + 11))
    m = evaluate_av(xv, xa, world, b)
    return {"n": asc.eval_n, "sync": m["sync"], "sync_se": m["sync_se"], "shuffled": shuffled_sync(xv, xa, world, b),
            "sync_data": float(sync_error(dv, da, world, b).mean()), "shuffled_data": shuffled_sync(dv, da, world, b),
            "frame_error": m["frame_error"], "tone_error": m["tone_error"]}


def load_av_student(path, teacher: DualStreamNet) -> AVStudent:
    """A committed student (its record and int8 deltas from the block-causal teacher with its layout)."""
    from .world_students import apply_delta

    blob = torch.load(path, map_location="cpu", weights_only=True)
    r = blob["record"]
    net = with_layout(teacher, AVLayout(**r["layout"])).as_causal()
    net.load_state_dict(apply_delta(net, blob["delta"]))
    for p in net.parameters():
        p.requires_grad_(False)
    return AVStudent(net.eval(), r["times"])


def committed_av_students(teacher: DualStreamNet, teacher_manifest: dict, asc: AVScale, world: World, name: str,
                          seeds=SEEDS, scale: str = "ci", quiet: bool = False) -> list[AVStudent]:
    """The committed ``name`` students (:data:`AV_VARIANTS`) of ``seeds``, each checked against the manifest's
    sha256 and the teacher it was distilled from; one missing or not matching is trained here (a printed line
    says why). Each carries its training record (``record``: the logged gradient norms)."""
    import json

    from ..core.checkpoints import stored_student_problem

    if name not in AV_VARIANTS:
        raise ValueError(f"unknown audio-video student {name!r}; known: {', '.join(AV_VARIANTS)}")
    folder = av_dir(scale)
    mf = folder / "students.json"
    manifest = json.loads(mf.read_text()) if mf.is_file() else None
    want = teacher_manifest["files"]["teacher.pt"]["sha256"]
    out = []
    for seed in seeds:
        f = f"{name}_seed{seed}.pt"
        why = stored_student_problem(folder, manifest, f, want, "students.json")
        if why is None:
            s = load_av_student(folder / f, teacher)
            s.record = manifest["students"][f]
        else:
            if not quiet:
                print(f"committed audio-video student {f} unusable ({why}): training it ({REBUILD} rebuilds them all)")
            s = train_av_student(teacher, asc, world, seed=seed, progress=not quiet, **AV_VARIANTS[name])
            s.record = student_record(s)
        out.append(s)
    return out


def student_record(student: AVStudent) -> dict:
    """What a committed student's entry keeps of its training: steps, seconds, and a step's logged norms."""
    h = student.history
    return {"steps": h["steps"], "train_seconds": round(student.train_seconds, 1),
            **{k: [round(float(v), 5) for v in h[k]] for k in ("grad_audio_params", "grad_norm", "dmd_grad_audio",
                                                              "dmd_grad_video")}}


def main(argv=None) -> dict:
    """Fine-tune the joint teacher from the committed video teacher (``--teacher``) and/or distil the committed
    students (``--students``: :data:`AV_VARIANTS` x :data:`SEEDS`), writing them with their manifests (command,
    machine, seconds, sha256s, measured figures) to ``datasets/teachers/av_<scale>``."""
    import argparse
    import json
    import shlex
    import sys

    from ..core.checkpoints import file_records, machine
    from ..core.scale import get_scale
    from .config import default_teacher_dir, video_scale
    from .teacher import load_teacher, write_teacher
    from .world_students import delta_state

    ap = argparse.ArgumentParser(prog=REBUILD, description=main.__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default=None)
    ap.add_argument("--teacher", action="store_true", help="fine-tune and write the joint teacher")
    ap.add_argument("--students", action="store_true", help="distil and write the students")
    ap.add_argument("--variants", nargs="*", default=list(AV_VARIANTS))
    ap.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not (args.teacher or args.students):
        ap.error("say what to build: --teacher, --students or both")
    torch.set_num_threads(args.threads)
    sc = get_scale(args.scale)
    asc, world = av_scale(sc), video_scale(sc).world
    out = av_dir(sc.name)
    command = f"{REBUILD} " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.teacher:
        video = load_teacher(default_teacher_dir(sc))["model"]
        net, info = train_av_teacher(video, asc, world, progress=False)
        write_teacher(net, out, "the joint audio-video teacher of distill-lab's lab 36 (fine-tuned from the video "
                      "teacher)", {"av_scale": asdict(asc), "layout": asdict(asc.layout)}, info, command, sc)
        from ..core.checkpoints import update_manifest

        m = teacher_measures(load_av_teacher(out)["model"], asc, world)
        update_manifest(out, quality=m)
        print(f"teacher: {info['train_seconds']:.0f} s, loss {info['final_loss']:.4f}, {m}", flush=True)
    result = {}
    if args.students:
        loaded = load_av_teacher(out)
        teacher, tman = loaded["model"], loaded["manifest"]
        mf = out / "students.json"
        manifest = json.loads(mf.read_text()) if mf.is_file() else {"students": {}}
        if manifest.get("teacher_sha256") != tman["files"]["teacher.pt"]["sha256"]:
            manifest = {"students": {}}
        manifest.update({"what": "distill-lab's committed audio-video students (joint Self Forcing from the joint "
                         "teacher)", "scale": sc.name, "teacher_sha256": tman["files"]["teacher.pt"]["sha256"],
                         "command": command, "machine": machine(), "torch": torch.__version__,
                         "variants": AV_VARIANTS})
        for name in args.variants:
            for seed in args.seeds:
                s = train_av_student(teacher, asc, world, seed=seed, steps=args.steps, progress=False,
                                     **AV_VARIANTS[name])
                f = f"{name}_seed{seed}.pt"
                base = with_layout(teacher, s.net.layout).as_causal()
                torch.save({"record": {"times": s.times, "layout": asdict(s.net.layout)},
                            "delta": delta_state(s.net, base)}, out / f)
                if mf.is_file():  # another process may have written students of other variants meanwhile
                    manifest["students"] = {**json.loads(mf.read_text())["students"], **manifest["students"]}
                manifest["students"][f] = {"variant": name, "seed": seed, **student_record(s),
                                           **file_records(out, [f])[f]}
                mf.write_text(json.dumps(manifest, indent=2) + "\n")
                ga = s.history["grad_audio_params"]
                print(f"{f}: {s.train_seconds:.0f} s, audio-parameter gradient max {max(ga):.3g} "
                      f"median {sorted(ga)[len(ga) // 2]:.3g}", flush=True)
        result = manifest
    return result


if __name__ == "__main__":
    main()
