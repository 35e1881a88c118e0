"""OmniForcing's asymmetric block-causal mask (issue 14, item 2): no token sees a later block of either
stream, every token sees the prefix and the sink, and one stream alone is the video track's block-causal mask."""

from __future__ import annotations

import pytest
import torch

from distill_lab.video.dual_stream import AUDIO, PREFIX, SINK, VIDEO, dual_stream_layout, dual_stream_mask
from distill_lab.video.nets import frame_mask


@pytest.mark.parametrize("audio", [1, [2, 0, 1, 0]])
def test_no_token_sees_a_later_block_of_either_stream(audio):
    stream, block = dual_stream_layout(4, 3, audio, prefix=2, sink=True)
    m = dual_stream_mask(stream, block)
    T = len(stream)
    for i in range(T):
        for j in range(T):
            timed_i, timed_j = stream[i] in (VIDEO, AUDIO), stream[j] in (VIDEO, AUDIO)
            if timed_i and timed_j:
                assert m[i, j] == (block[j] <= block[i])  # both streams, up to its own block
            elif not timed_j:
                assert m[i, j]  # the prefix and the sink are read by everyone
            else:
                assert not m[i, j]  # the prefix and the sink read no block


def test_the_layout_interleaves_the_streams_block_by_block():
    stream, block = dual_stream_layout(2, 2, [1, 0], prefix=1, sink=True)
    assert stream.tolist() == [PREFIX, SINK, VIDEO, VIDEO, AUDIO, VIDEO, VIDEO]
    assert block.tolist() == [-1, -1, 0, 0, 0, 1, 1]
    s2, _ = dual_stream_layout(2, 2, 1, sink=False)
    assert SINK not in s2.tolist() and PREFIX not in s2.tolist()


def test_the_video_stream_alone_is_the_block_causal_mask_and_an_audio_query_sees_same_time_video():
    stream, block = dual_stream_layout(3, 2, 0, sink=False)
    frames = torch.arange(6)  # one token a frame, blocks of two frames
    assert torch.equal(dual_stream_mask(stream, block), frame_mask(frames, frames, "block_causal", block=2))
    stream, block = dual_stream_layout(3, 2, 1, sink=True)
    m = dual_stream_mask(stream, block)
    a1 = (stream == AUDIO).nonzero()[1, 0]  # the audio token of block 1
    assert m[a1][(stream == VIDEO) & (block == 1)].all() and not m[a1][(stream == VIDEO) & (block == 2)].any()


def test_a_streaming_step_reads_the_cache_with_the_same_rule():
    stream, block = dual_stream_layout(3, 2, 1, prefix=1)
    now = block == 2
    cache = block <= 2  # the cache holds everything up to the current block (prefix and sink included)
    m = dual_stream_mask(stream[now], block[now], stream[cache], block[cache])
    assert torch.equal(m, dual_stream_mask(stream, block)[now][:, cache])


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="one a block"):
        dual_stream_layout(3, 2, [1, 1])
    with pytest.raises(ValueError, match=">= 1"):
        dual_stream_layout(0, 2, 1)
    with pytest.raises(ValueError, match="one stream"):
        dual_stream_mask(torch.zeros(3), torch.zeros(2))
