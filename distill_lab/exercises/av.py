"""Exercises of lab 36 (two streams in sync): the pitch a tone encodes, OmniForcing's asymmetric block-causal mask,
and predictions on the audio sink token (:mod:`distill_lab.video.audio_visual`, :mod:`distill_lab.video.dual_stream`)."""

from __future__ import annotations

import torch

from ..video.dual_stream import AUDIO, PREFIX, SINK, VIDEO
from . import compare, implement, prediction


# ---------------------------------------------------------------- lab 36: the pitch of a tone
def _pitch_variant(neighbour="louder", centroid=False, argmax_only=False):
    """The height a tone encodes (exercise 36.pitch) and its wrong variants: the loudest bin's centre alone (a
    staircase), the intensity-weighted centroid of the bins (pulled towards the middle near a wall), the softer
    neighbour in place of the louder one (exact on a clean tone, not on a noisy one)."""
    def pitch(audio, centres, width):
        inten = ((audio.double() + 1) / 2).clamp(min=1e-4)
        c = centres.double()
        if centroid:
            return (inten * c).sum(-1) / inten.sum(-1)
        k = inten.argmax(-1, keepdim=True)
        if argmax_only:
            return c[k].squeeze(-1)
        n = len(c)
        left, right = (k - 1).clamp(min=0), (k + 1).clamp(max=n - 1)
        il, ir = inten.gather(-1, left), inten.gather(-1, right)
        louder = torch.where(((ir >= il) & (k < n - 1)) | (k == 0), right, left)
        softer = torch.where(((ir >= il) & (k > 0)) | (k == n - 1), left, right)
        kk = louder if neighbour == "louder" else softer
        ck, ckk = c[k], c[kk]
        d = inten.gather(-1, k).log() - inten.gather(-1, kk).log()
        return (((ckk ** 2 - ck ** 2) - 2 * width ** 2 * d) / (2 * (ckk - ck))).squeeze(-1)
    return pitch


@implement("36.pitch", "the height a tone encodes, from its two loudest neighbouring bins",
           solution=_pitch_variant(),
           wrong={"the loudest bin's centre alone": _pitch_variant(argmax_only=True),
                  "the intensity-weighted centroid of all bins": _pitch_variant(centroid=True),
                  "the softer neighbour of the loudest bin": _pitch_variant(neighbour="softer")})
def _check_pitch(fn) -> str:
    """``fn(audio [..., bins], centres [bins], width) -> heights [...]`` must read back the height of clean tones at
    heights across the walls (against :func:`~distill_lab.video.audio_visual.pitch`), and of tones with a little
    noise added (where only the louder neighbour keeps the error small)."""
    from ..video.audio_visual import bin_centres, pitch, tone, tone_width
    from ..video.world import World

    world = World()
    g = torch.Generator().manual_seed(36)
    h = world.margin + (1 - 2 * world.margin) * torch.rand(400, generator=g, dtype=torch.float64)
    c, w = bin_centres(world, 8), tone_width(world, 8)
    clean = tone(h, world, 8)
    compare(fn(clean, c, w), h, "the heights read off clean tones", atol=1e-4, rtol=0)
    noisy = clean + 0.02 * torch.randn(clean.shape, generator=g)
    compare(fn(noisy, c, w), pitch(noisy, world), "the heights read off tones with noise of 0.02 added", atol=1e-6,
            rtol=0)
    return "reads back 400 heights off clean tones (to 1e-4) and off noisy ones as the package's decoder does"


# ---------------------------------------------------------------- lab 36: the asymmetric block-causal mask

def _mask_variant(same_stream=False, peek=0, global_reads_all=False, no_sink=False):
    """OmniForcing's asymmetric block-causal mask (exercise 36.mask) and its wrong variants: each stream causal on
    its own (no cross-stream reading), a token reading the next block too, the global tokens reading the timed
    ones, the sink not readable."""
    def mask(stream, block):
        glob = (stream == PREFIX) | (stream == SINK)
        readable = (stream == PREFIX) if no_sink else glob
        timed = ~glob
        causal = timed[:, None] & timed[None, :] & (block[None, :] <= block[:, None] + peek)
        if same_stream:
            causal &= stream[:, None] == stream[None, :]
        out = readable[None, :].expand(len(stream), -1) | causal
        if global_reads_all:
            out = out | glob[:, None]
        return out
    return mask


@implement("36.mask", "OmniForcing's asymmetric block-causal mask over [prefix][sink][video][audio] tokens",
           solution=_mask_variant(),
           wrong={"each stream causal on its own (audio never reads video)": _mask_variant(same_stream=True),
                  "a token also reads the next block": _mask_variant(peek=1),
                  "the prefix and the sink read every token": _mask_variant(global_reads_all=True),
                  "the sink is not readable": _mask_variant(no_sink=True)})
def _check_mask(fn) -> str:
    """``fn(stream [T], block [T]) -> [T, T]`` booleans must equal
    :func:`~distill_lab.video.dual_stream.dual_stream_mask` on layouts with and without prefix and sink, and with
    blocks that hold no audio token."""
    from ..video.dual_stream import dual_stream_layout, dual_stream_mask

    layouts = [dict(n_blocks=3, video_per_block=4, audio_per_block=1, prefix=2, sink=True),
               dict(n_blocks=4, video_per_block=2, audio_per_block=[1, 0, 2, 0], prefix=1, sink=True),
               dict(n_blocks=2, video_per_block=3, audio_per_block=1, prefix=0, sink=False)]
    for lay in layouts:
        stream, block = dual_stream_layout(**lay)
        got = torch.as_tensor(fn(stream.clone(), block.clone()))
        want = dual_stream_mask(stream, block)
        if got.shape != want.shape:
            raise AssertionError(f"the mask of {len(stream)} tokens must be [{len(stream)}, {len(stream)}], got "
                                 f"{tuple(got.shape)}")
        bad = (got.bool() != want).nonzero()
        if len(bad):
            i, j = bad[0].tolist()
            names = {PREFIX: "prefix", SINK: "sink", VIDEO: "video", AUDIO: "audio"}
            raise AssertionError(f"layout {lay}: query {i} ({names[int(stream[i])]}, block {int(block[i])}) and key {j} "
                                 f"({names[int(stream[j])]}, block {int(block[j])}): expected "
                                 f"{'may attend' if bool(want[i, j]) else 'may not attend'}, got the opposite "
                                 f"({len(bad)} entries differ)")
    return "equals the asymmetric block-causal mask on three layouts (with and without prefix, sink and audio tokens)"


prediction("36.sink_gradient", "joint Self Forcing without the audio sink token (prefix kept), same seeds: the largest "
           "gradient norm of the audio parameters over training, against the run with the sink",
           ("lower", "about the same", "higher"), solution="higher")
prediction("36.long_sync", "the student with the sink streamed four training horizons with a 3-block window per "
           "stream: its sync error over the last horizon against its first",
           ("lower", "about the same", "higher"), solution="about the same")
