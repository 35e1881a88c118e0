"""Exercises of the video labs (30, 31 and 32).

The checkers compare the student's function with the package's own on cases where the answer is
exact: the world's deterministic motion (:meth:`distill_lab.video.world.World.move`, and clips the
world simulates without kicks, where each frame *is* the motion of the one before), and the attention
mask of the video transformer (:func:`distill_lab.video.nets.frame_mask`) on token frame indices, and
the weights an EMA-sink gives to the frames it has absorbed, read off one-hot keys folded through the
package's own :class:`~distill_lab.video.nets.KVCache`.
"""

from __future__ import annotations

import torch

from ..video.nets import KVCache, frame_mask
from ..video.world import World
from . import compare, implement, prediction
from .images import _call

# ---------------------------------------------------------------- lab 30: the world's physics


def _move(state, margin):
    p, v = state[..., :2] + state[..., 2:], state[..., 2:]
    lo, hi = margin, 1 - margin
    hit = (p < lo) | (p > hi)
    p = torch.where(p < lo, 2 * lo - p, torch.where(p > hi, 2 * hi - p, p))
    return torch.cat([p, torch.where(hit, -v, v)], -1)


def _move_no_flip(state, margin):
    p = state[..., :2] + state[..., 2:]
    lo, hi = margin, 1 - margin
    p = torch.where(p < lo, 2 * lo - p, torch.where(p > hi, 2 * hi - p, p))
    return torch.cat([p, state[..., 2:]], -1)


def _move_clamp(state, margin):
    p, v = state[..., :2] + state[..., 2:], state[..., 2:]
    hit = (p < margin) | (p > 1 - margin)
    return torch.cat([p.clamp(margin, 1 - margin), torch.where(hit, -v, v)], -1)


def _move_walls_at_edges(state, margin):
    return _move(state, 0.0)


def _move_flip_both(state, margin):
    p, v = state[..., :2] + state[..., 2:], state[..., 2:]
    lo, hi = margin, 1 - margin
    hit = ((p < lo) | (p > hi)).any(-1, keepdim=True)
    p = torch.where(p < lo, 2 * lo - p, torch.where(p > hi, 2 * hi - p, p))
    return torch.cat([p, torch.where(hit, -v, v)], -1)


@implement("30.elastic_move", "one frame of the world's motion: constant velocity, elastic walls",
           solution=_move,
           wrong={"velocity not reversed at a wall": _move_no_flip,
                  "position clamped to the wall instead of reflected": _move_clamp,
                  "walls at 0 and 1 instead of margin and 1 - margin": _move_walls_at_edges,
                  "both velocity components reversed when one wall is hit": _move_flip_both})
def _check_move(fn) -> str:
    """``fn(state [..., 4] = (x, y, vx, vy), margin) -> [..., 4]``, float64."""
    g = torch.Generator().manual_seed(0)
    world = World()
    # states between the walls, moving in every direction at up to the top speed: some cross a wall
    pos = world.margin + (1 - 2 * world.margin) * torch.rand(512, 2, generator=g, dtype=torch.float64)
    vel = (2 * torch.rand(512, 2, generator=g, dtype=torch.float64) - 1) * world.speed_max
    state = torch.cat([pos, vel], -1)
    got = _call(fn, state, world.margin, what="512 states")
    compare(got, world.move(state), "the next state (x, y, vx, vy) against World.move on 512 random states",
            atol=1e-9)
    n_hit = int(((state[:, :2] + state[:, 2:] < world.margin) | (state[:, :2] + state[:, 2:] > 1 - world.margin))
                .any(-1).sum())
    still = World(kick_prob=0.0, margin=0.2)
    states = still.simulate(16, 40, seed=1)[:, :, 0]                      # [16, 40, 4]: no kicks
    got = _call(fn, states[:, :-1], still.margin, what="simulated clips")
    compare(got, states[:, 1:], "frame f + 1 of clips simulated without kicks (margin 0.2), from frame f",
            atol=1e-9)
    return (f"matches World.move on 512 states ({n_hit} of them crossing a wall) and reproduces 16 simulated "
            "clips of 40 frames without kicks, with another margin")


prediction("30.error_past_horizon", "streamed on its own frames to 4x the 8-frame horizon, does the "
           "teacher-forcing student's frame error over the last 8 frames grow, compared with the first 8?",
           ("grows", "stays about the same", "shrinks"), solution="grows")


# ---------------------------------------------------------------- lab 31: the causal student's mask


def _block_causal(frames_q, frames_k, block, window=None):
    bq, bk = frames_q[:, None] // block, frames_k[None, :] // block
    allowed = bk <= bq
    if window is not None:
        allowed = allowed & (frames_k[None, :] >= bq * block - window)
    return allowed


def _block_causal_strict(frames_q, frames_k, block, window=None):
    allowed = frames_k[None, :] // block < frames_q[:, None] // block
    if window is not None:
        allowed = allowed & (frames_k[None, :] >= frames_q[:, None] // block * block - window)
    return allowed


def _frame_causal(frames_q, frames_k, block, window=None):
    allowed = frames_k[None, :] <= frames_q[:, None]
    if window is not None:
        allowed = allowed & (frames_k[None, :] >= frames_q[:, None] // block * block - window)
    return allowed


def _window_from_query_frame(frames_q, frames_k, block, window=None):
    allowed = frames_k[None, :] // block <= frames_q[:, None] // block
    if window is not None:
        allowed = allowed & (frames_k[None, :] >= frames_q[:, None] - window)
    return allowed


def _window_ignored(frames_q, frames_k, block, window=None):
    return frames_k[None, :] // block <= frames_q[:, None] // block


@implement("31.block_causal_mask", "the block-causal attention mask of the streaming student",
           solution=_block_causal,
           wrong={"its own block masked out (< in place of <=)": _block_causal_strict,
                  "causal frame by frame, not block by block": _frame_causal,
                  "the window counted back from the query's frame, not its block's first frame":
                      _window_from_query_frame,
                  "the window ignored": _window_ignored})
def _check_mask(fn) -> str:
    """``fn(frames_q [Nq], frames_k [Nk], block, window=None) -> [Nq, Nk]`` booleans (True: may attend)."""
    cases = []
    tokens = 3
    for n_frames, block, window in ((8, 1, None), (8, 4, None), (12, 2, None), (16, 4, 4), (12, 2, 3)):
        f = torch.arange(n_frames).repeat_interleave(tokens)
        what = f"{n_frames} frames of {tokens} tokens, block {block}, window {window}"
        cases.append((what, f, f, block, window))
    # streaming: the queries of one block (frames 12 to 15) against the keys of frames 4 to 15
    q, k = torch.arange(12, 16).repeat_interleave(tokens), torch.arange(4, 16).repeat_interleave(tokens)
    cases.append(("one streamed block (frames 12-15) against keys of frames 4-15, block 4, window 6", q, k, 4, 6))
    for what, fq, fk, block, window in cases:
        got = _call(fn, fq, fk, block, window, what=what)
        if not torch.is_tensor(got) or got.dtype != torch.bool:
            raise AssertionError(f"{what}: return a boolean tensor (True where a query may attend to a key), got "
                                 f"{got.dtype if torch.is_tensor(got) else type(got).__name__}")
        want = frame_mask(fq, fk, "block_causal", block, window)
        if got.shape != want.shape:
            raise AssertionError(f"{what}: expected shape {tuple(want.shape)} (queries x keys), "
                                 f"got {tuple(got.shape)}")
        bad = (got != want).nonzero()
        if len(bad):
            i, j = bad[0].tolist()
            raise AssertionError(f"{what}: {len(bad)} of {want.numel()} entries differ; e.g. the query of frame "
                                 f"{int(fq[i])} and the key of frame {int(fk[j])}: yours {bool(got[i, j])}, "
                                 f"expected {bool(want[i, j])}")
    lower = _call(fn, torch.arange(6), torch.arange(6), 1, None, what="6 frames, block 1")
    compare(lower.double(), torch.ones(6, 6).tril().double(),
            "block 1 without a window (must be lower triangular, diagonal included)")
    return ("matches frame_mask(..., 'block_causal') for five block and window settings and one streamed block, "
            "and is lower triangular for blocks of one frame")


prediction("31.least_drift", "streamed to 4x the horizon, which student's frames stay cleanest (lowest frame "
           "error over the last horizon)?", ("teacher forcing", "diffusion forcing", "self forcing"),
           solution="self forcing")


# ---------------------------------------------------------------- lab 32: memory past the window


def _sink_weights(n_folded, decay):
    a = torch.as_tensor(decay, dtype=torch.float64)
    k = torch.arange(n_folded, dtype=torch.float64)
    folded = (1 - a) * a ** (n_folded - 1 - k)
    return torch.cat([a.reshape(1) ** n_folded, folded])


def _sink_weights_swapped(n_folded, decay):
    return _sink_weights(n_folded, 1 - decay)


def _sink_weights_no_first(n_folded, decay):
    w = _sink_weights(n_folded, decay)
    w[0] = 0.0
    return w


def _sink_weights_reversed(n_folded, decay):
    w = _sink_weights(n_folded, decay)
    return torch.cat([w[:1], w[1:].flip(0)])


def _folded_weights(n_folded: int, decay: float) -> torch.Tensor:
    """The truth, from the cache itself: frame f's key is the one-hot vector e_f; a sink of one frame and
    a window of one frame, one frame a block, so frames 1 .. n are folded in turn; the sink's key is
    then the weights."""
    d = n_folded + 2
    cache = KVCache(1, window=1, sink=1, ema=decay)
    for f in range(n_folded + 2):
        k = torch.zeros(1, 1, 1, d, dtype=torch.float64)
        k[..., f] = 1.0
        cache.append([(k, k)], 1)
    return cache.k[0][0, 0, 0, :n_folded + 1]


@implement("32.sink_weights", "the weight an EMA-sink gives the first frame and each frame folded into it",
           solution=_sink_weights,
           wrong={"decay and 1 - decay swapped": _sink_weights_swapped,
                  "the first frame's share forgotten (the weights do not sum to one)": _sink_weights_no_first,
                  "the newest frame given the oldest one's weight": _sink_weights_reversed})
def _check_sink_weights(fn) -> str:
    """``fn(n_folded, decay) -> [n_folded + 1]``: the weights of the first frame and of frames 1..n."""
    for n, a in ((0, 0.9), (1, 0.5), (4, 0.9), (6, 0.3), (5, 1.0), (3, 0.0)):
        got = _call(fn, n, a, what=f"n_folded={n}, decay={a}")
        if not torch.is_tensor(got):
            got = torch.as_tensor(got, dtype=torch.float64)
        compare(got.double().reshape(-1), _folded_weights(n, a),
                f"n_folded={n}, decay={a} (against one-hot keys folded through KVCache(ema={a}))")
    return "matches one-hot keys folded through the cache for six settings, decay 0 and 1 included"


prediction("32.worst_memory", "streamed to 8x the horizon, which memory gives the worst frames over the last "
           "horizon?", ("window", "window + sink", "window + EMA-sink", "every frame"), solution="every frame")


prediction("34.cost_at_inf", "with tau = +inf (every draft rejected), does speculative streaming cost less than the "
           "target alone, the same, or more?", ("less", "the same", "more"), solution="more")


# ---------------------------------------------------------------- lab 34: speculative decoding's cost


def _spec_cost(drafter_steps, target_steps, block, accept_rate):
    return (drafter_steps + 2 + (1 - accept_rate) * target_steps) / block


def _spec_cost_no_cache_passes(drafter_steps, target_steps, block, accept_rate):
    return (drafter_steps + (1 - accept_rate) * target_steps) / block


def _spec_cost_drafts_only_when_accepted(drafter_steps, target_steps, block, accept_rate):
    return (accept_rate * drafter_steps + 2 + (1 - accept_rate) * target_steps) / block


def _spec_cost_per_block(drafter_steps, target_steps, block, accept_rate):
    return drafter_steps + 2 + (1 - accept_rate) * target_steps


def _measured_costs():
    """``(drafter steps, target steps, block, accept rate, evaluations a frame)`` of real speculative runs:
    two small random streaming students, every block judged (no forced first block), several thresholds."""
    from ..video.nets import VideoNetConfig, VideoTransformer
    from ..video.rollout import StreamingStudent
    from ..video.speculative import speculative_stream

    cfg = VideoNetConfig(resolution=8, patch=4, dim=16, depth=1, heads=2)
    torch.manual_seed(0)
    nets = [VideoTransformer(cfg, "block_causal", 2).double() for _ in range(2)]
    for net in nets:
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.3)
    z = torch.randn(6, 8, 1, 8, 8, dtype=torch.float64)
    score = lambda b: -b.flatten(1).abs().amax(1)  # noqa: E731  (any score will do for counting)
    out = []
    for d_steps, t_steps in ((1, 4), (2, 8), (3, 5)):
        drafter = StreamingStudent(nets[0], steps=d_steps, window=4)
        target = StreamingStudent(nets[1], steps=t_steps, window=4)
        scores = speculative_stream(drafter, target, z, -float("inf"), score, force_first=False)["scores"]
        for q in (0.0, 0.3, 0.7, 1.0):
            tau = float(scores.flatten().quantile(q)) if q < 1 else float("inf")
            r = speculative_stream(drafter, target, z, tau, score, force_first=False)
            out.append((d_steps, t_steps, 2, r["accept_rate"], r["evals_per_frame"]))
    return out


@implement("34.spec_cost", "network evaluations a frame of speculative streaming, from the acceptance rate",
           solution=_spec_cost,
           wrong={"the two cache passes a block left out": _spec_cost_no_cache_passes,
                  "the drafter counted only for accepted blocks": _spec_cost_drafts_only_when_accepted,
                  "per block, not per frame": _spec_cost_per_block})
def _check_spec_cost(fn) -> str:
    """``fn(drafter_steps, target_steps, block, accept_rate) -> float``."""
    for d, t, b, acc, measured in _measured_costs():
        got = _call(fn, d, t, b, acc, what=f"drafter {d} steps, target {t}, block {b}, accept rate {acc:.2f}")
        compare(float(got), measured, f"drafter {d} steps, target {t} steps, block {b}, accept rate {acc:.2f} "
                                      "(against the count of a real speculative_stream run)")
    return "matches the evaluations counted in twelve real runs (three step settings, four thresholds)"


# ---------------------------------------------------------------- lab 33: HiAR's order


def _lockstep_order(n_blocks, n_steps):
    return [(j, k) for k in range(n_steps) for j in range(n_blocks)]


def _sequential_order(n_blocks, n_steps):
    return [(j, k) for j in range(n_blocks) for k in range(n_steps)]


def _lockstep_reversed_blocks(n_blocks, n_steps):
    return [(j, k) for k in range(n_steps) for j in reversed(range(n_blocks))]


def _recorded_lockstep_order(n_blocks: int, n_steps: int) -> list[tuple[int, int]]:
    """The (block, step) of every denoising evaluation :func:`~distill_lab.video.rollout.lockstep_sample`
    makes, read off a small student whose ``forward_block`` records them."""
    from ..video.nets import VideoNetConfig, VideoTransformer
    from ..video.rollout import StreamingStudent, lockstep_sample, uniform_times

    net = VideoTransformer(VideoNetConfig(resolution=8, patch=4, dim=16, depth=1, heads=2), "block_causal", 2)
    st = StreamingStudent(net, steps=n_steps, sampler="euler", window=4)
    times = uniform_times(n_steps)
    seen, real = [], net.forward_block

    def forward_block(x, t, cache, return_kv=False):
        seen.append((cache.next_frame // 2, times.index(float(t))))
        return real(x, t, cache, return_kv=return_kv)

    net.forward_block = forward_block
    lockstep_sample(st, torch.zeros(1, 2 * n_blocks, 1, 8, 8))
    return seen


@implement("33.lockstep_order", "the order in which HiAR's hierarchical denoising visits (block, step)",
           solution=_lockstep_order,
           wrong={"each block finished before the next (the sequential order)": _sequential_order,
                  "the blocks of a step visited last to first": _lockstep_reversed_blocks})
def _check_lockstep_order(fn) -> str:
    """``fn(n_blocks, n_steps) -> [(block, step), ...]`` in the order they are evaluated."""
    for n_blocks, n_steps in ((1, 3), (3, 1), (3, 2), (4, 3)):
        got = _call(fn, n_blocks, n_steps, what=f"{n_blocks} blocks, {n_steps} steps")
        want = _recorded_lockstep_order(n_blocks, n_steps)
        got = [tuple(int(a) for a in p) for p in got]
        if got != want:
            raise AssertionError(f"{n_blocks} blocks, {n_steps} steps: expected {want} (recorded from "
                                 f"lockstep_sample), got {got}")
    return "matches the evaluations lockstep_sample makes for four settings"


prediction("33.ffe_reach", "four steps on the first block and one on every other (first-frame enhancement): over the "
           "last horizon, is the error lower than with one step everywhere?",
           ("clearly lower", "about the same", "clearly higher"), solution="about the same")
prediction("33.asd_one_step", "streamed at one step a block, is the ASD student's last horizon lower than the Self "
           "Forcing student's (trained for two steps only)?",
           ("clearly lower", "about the same", "clearly higher"), solution="about the same")
prediction("33.redmd_motion", "Re-DMD against the same training without the reward: does the student move more "
           "(dynamic degree)?", ("more", "about the same", "less"), solution="more")
