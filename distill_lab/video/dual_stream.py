"""Two streams in one sequence: OmniForcing's asymmetric block-causal attention (issue 14, item 2).

OmniForcing ("OmniForcing: Unleashing Real-time Joint Audio-Visual Generation", 2026) distils a
bidirectional video-and-audio teacher into a streaming student. The streams run at different rates: a
block of video frames holds many tokens, the same span of audio few (some spans none). The student's
sequence is laid out as

    [global prefix] [sink] [video block 0][audio block 0] [video block 1][audio block 1] ...

and :func:`dual_stream_mask` says which key each query may read:

* a token of block ``b`` (either stream) reads every token of blocks ``<= b`` of **both** streams (the
  streams are aligned by time, not by token count: the asymmetric block-causal alignment), never a later
  block of either;
* every token reads the **global prefix** (kept whole in the rolling cache: "zero truncation") and the
  **sink**, a token that is always there to attend to, so that an audio query with few keys in its block
  still spreads its attention over something (OmniForcing's audio sink token; its identity RoPE means the
  sink carries no position);
* the prefix and the sink read only the prefix and the sink.

:func:`dual_stream_layout` writes each token's stream and block; :func:`dual_stream_mask` turns them into
the ``[T, T]`` boolean mask ``scaled_dot_product_attention`` takes (True: may attend).
"""

from __future__ import annotations

import torch

PREFIX, SINK, VIDEO, AUDIO = 0, 1, 2, 3
STREAMS = {"prefix": PREFIX, "sink": SINK, "video": VIDEO, "audio": AUDIO}


def dual_stream_layout(n_blocks: int, video_per_block: int, audio_per_block, prefix: int = 0,
                       sink: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The stream (:data:`STREAMS`) and block (-1 for the prefix and the sink) of every token, ``[T]`` each.
    ``audio_per_block``: audio tokens of each block, one number for all or a list (the sparse stream may
    have none in some blocks)."""
    if n_blocks < 1 or video_per_block < 1 or prefix < 0:
        raise ValueError(f"n_blocks and video_per_block must be >= 1 and prefix >= 0, got {n_blocks}, "
                         f"{video_per_block}, {prefix}")
    audio = [audio_per_block] * n_blocks if isinstance(audio_per_block, int) else list(audio_per_block)
    if len(audio) != n_blocks or any(a < 0 for a in audio):
        raise ValueError(f"audio_per_block must be one count >= 0 or one a block ({n_blocks}), got {audio_per_block}")
    stream = [PREFIX] * prefix + [SINK] * int(sink)
    block = [-1] * len(stream)
    for b, a in enumerate(audio):
        stream += [VIDEO] * video_per_block + [AUDIO] * a
        block += [b] * (video_per_block + a)
    return torch.tensor(stream), torch.tensor(block)


def dual_stream_mask(stream: torch.Tensor, block: torch.Tensor, stream_k: torch.Tensor | None = None,
                     block_k: torch.Tensor | None = None) -> torch.Tensor:
    """``[Tq, Tk]`` booleans: may query ``i`` attend to key ``j`` (see the module docstring). Keys default to
    the queries (one sequence); a streaming step passes the cache's keys as ``stream_k``, ``block_k``."""
    stream_k = stream if stream_k is None else stream_k
    block_k = block if block_k is None else block_k
    if stream.shape != block.shape or stream_k.shape != block_k.shape:
        raise ValueError("each token needs one stream and one block")
    global_k = (stream_k == PREFIX) | (stream_k == SINK)
    timed_q = (stream == VIDEO) | (stream == AUDIO)
    timed_k = ~global_k
    causal = timed_q[:, None] & timed_k[None, :] & (block_k[None, :] <= block[:, None])
    return global_k[None, :].expand(len(stream), -1) | causal
