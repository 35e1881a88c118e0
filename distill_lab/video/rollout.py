"""Rollouts: how a causal student streams a clip block by block with its KV cache, and how the
bidirectional teacher extends a clip. The losses (:mod:`distill_lab.methods.step.dmd`,
:func:`distill_lab.core.flows.flow_matching_loss`) know nothing of caches; everything about them is here.

A :class:`StreamingStudent` is a block-causal :class:`~distill_lab.video.nets.VideoTransformer` and a
few-step schedule. It generates a clip block by block (:meth:`StreamingStudent.stream`): the block
starts as Gaussian noise at ``t = 0`` and is denoised in ``len(times)`` network evaluations while
attending to the cached frames before it; the finished block is run once more at ``t = 1`` (clean)
and its keys and values join the cache (a rolling window with optional sink frames,
:class:`~distill_lab.video.nets.KVCache`). Two update rules between the steps of a block:

* ``"euler"``: ``x <- x + (t' - t) v``, the ODE a flow-matching student (teacher forcing, diffusion
  forcing) was trained for;
* ``"renoise"``: predict the clean block ``x1 = x + (1 - t) v`` and noise it afresh to the next time,
  ``x <- (1 - t') eps + t' x1`` (the few-step sampler of consistency models and of Self Forcing's
  generator, Huang et al. 2025, whose output is the last prediction ``x1``).

Self Forcing's training rollout is the same loop (:func:`self_forcing_rollout`): the student runs on
its own outputs, the steps before a randomly chosen exit step run without gradient, the exit step's
prediction is the block's output and keeps its gradient, and the cache is filled from detached
outputs, as in the authors' code, so the loss reaches each block's exit step only.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .nets import KVCache, VideoTransformer

SAMPLERS = ("euler", "renoise")
ORDERS = ("sequential", "lockstep")  # finish each block in turn, or every block a step at a time (HiAR)


def uniform_times(steps: int) -> list[float]:
    """``[0, 1/steps, ..., (steps - 1)/steps]``: where each of ``steps`` evaluations starts."""
    if steps < 1:
        raise ValueError(f"a block needs at least one denoising step, got {steps}")
    return [k / steps for k in range(steps)]


class StreamingStudent(nn.Module):
    """A block-causal network with its sampling schedule; ``sample(z)`` streams a clip from noise
    ``z [B, F, C, H, W]`` (``F`` a multiple of the block), the interface the bench evaluates.

    ``times``: the time each denoising step starts from (default ``steps`` uniform steps);
    ``sampler``: ``"euler"`` or ``"renoise"`` (module docstring); ``window``, ``sink``: the cache's
    rolling window and sink frames at generation (the network's own window, if it has one, by default);
    ``ema``: fold evicted frames into the sink frames with this decay (Reward Forcing's EMA-Sink,
    :class:`~distill_lab.video.nets.KVCache`). A network built with ``linear_memory`` gets a cache that
    absorbs evicted frames into its linear state (Hybrid Forcing).

    ``block_steps``: the steps of blocks 0, 1, ... (:meth:`times_for`); ``order``: ``"sequential"`` or
    ``"lockstep"`` (HiAR, :func:`lockstep_sample`); ``context_time``: the noise level finished blocks
    enter the cache at (Diagonal Distillation's partially denoised context, :meth:`commit`); ``retro``,
    ``retro_time``: how many of the last blocks are re-denoised after each block, from which level
    (SoulX-FlashTalk's retrospective self-correction, :meth:`stream`); ``mode``: the network's sampling
    mode (Mutual Forcing, :meth:`~distill_lab.video.nets.VideoTransformer.mode`). Every one of them acts
    the same in the training rollouts (:func:`self_forcing_rollout`) as in :meth:`sample`.
    """

    def __init__(self, net: VideoTransformer, steps: int = 4, sampler: str = "euler",
                 times: list[float] | None = None, window: int | None = None, sink: int = 0,
                 ema: float | None = None, block_steps: list[int] | None = None, order: str = "sequential",
                 context_time: float | None = None, retro: int = 0, retro_time: float = 0.5, mode: int = 0):
        super().__init__()
        if net.mask != "block_causal":
            raise ValueError("a streaming student needs a block-causal network (VideoTransformer.as_causal)")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        self.net, self.sampler = net, sampler
        self.times = list(times) if times is not None else uniform_times(steps)
        if not self.times or not all(0 <= a < b <= 1 for a, b in zip(self.times, self.times[1:] + [1.0])):
            raise ValueError(f"times must increase within [0, 1), got {self.times}")
        if block_steps is not None and (not block_steps or any(int(n) < 1 for n in block_steps)):
            raise ValueError(f"block_steps must list at least one step for each block it names, got {block_steps}")
        self.block_steps = None if block_steps is None else [int(n) for n in block_steps]
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
        if order == "lockstep" and block_steps is not None:
            raise ValueError("a lockstep student takes every step with every block: block_steps do not apply")
        self.order = order
        if context_time is not None and not 0 < context_time <= 1:
            raise ValueError(f"context_time is the noise level blocks enter the cache at, in (0, 1] (1: clean), "
                             f"got {context_time}")
        if retro < 0 or not 0 <= retro_time < 1:
            raise ValueError(f"retro counts the blocks re-denoised after each block (>= 0) and retro_time is the "
                             f"level they are re-noised to, in [0, 1); got retro={retro}, retro_time={retro_time}")
        if (retro or context_time is not None) and order == "lockstep":
            raise ValueError("context_time and retro act on blocks as they enter the cache one by one: "
                             "a lockstep student does not have that moment")
        self.context_time, self.retro, self.retro_time = context_time, int(retro), float(retro_time)
        if not 0 <= mode < max(1, net.modes):
            raise ValueError(f"the network has {max(1, net.modes)} mode(s); mode {mode} does not exist")
        self.mode = mode
        self.window = window if window is not None else net.window
        self.sink, self.ema = sink, ema
        self.new_cache()  # a bad window, sink or decay fails here, not in the middle of a stream

    @property
    def block(self) -> int:
        return self.net.block

    def times_for(self, n: int) -> list[float]:
        """The denoising times of block ``n``: the student's ``times``, or with ``block_steps`` (the steps
        of blocks 0, 1, ...; the last entry holds for every later block) that many uniform steps:
        more steps for the first blocks and fewer later (ASD's first-frame enhancement, Diagonal
        Distillation's step allocation)."""
        if self.block_steps is None:
            return self.times
        return uniform_times(self.block_steps[min(n, len(self.block_steps) - 1)])

    @property
    def nfe_per_frame(self) -> int:
        """Denoising evaluations each frame goes through (the cache pass of a finished block aside); with
        ``block_steps``, those of the blocks after the scheduled ones (see :meth:`mean_nfe_per_frame`)."""
        return len(self.times) if self.block_steps is None else self.block_steps[-1]

    def mean_nfe_per_frame(self, frames: int) -> float:
        """Denoising evaluations a frame averaged over a stream of ``frames`` frames (with ``retro``, the
        re-denoising evaluations counted too)."""
        n = frames // self.block
        extra = sum(min(i + 1, self.retro) for i in range(n)) * len(self.retro_times)
        return (sum(len(self.times_for(i)) for i in range(n)) + extra) / n

    @property
    def retro_times(self) -> list[float]:
        """The times a re-noised block is denoised through again: ``retro_time``, then the student's later
        grid times."""
        return [self.retro_time] + [t for t in self.times if t > self.retro_time]

    def new_cache(self) -> KVCache:
        return KVCache(self.net.config.depth, window=self.window, sink=self.sink, ema=self.ema,
                       linear=self.net.linear_memory)

    def _check(self, z: torch.Tensor) -> None:
        if z.dim() != 5 or z.shape[1] % self.block:
            raise ValueError(f"a streamed clip is [B, F, C, H, W] with F a multiple of the block "
                             f"({self.block} frames); got {tuple(z.shape)}")

    def denoise_block(self, z: torch.Tensor, cache: KVCache, exit_step: int | None = None,
                      grad: bool = False, times: list[float] | None = None) -> torch.Tensor:
        """One block from noise ``z [B, b, ...]`` given ``cache``; stops after step ``exit_step``
        (default: the last) and returns that step's clean prediction (``"renoise"``) or the ODE's end
        (``"euler"``). With ``grad`` only the exit step's evaluation keeps its gradient. ``times``: this
        block's schedule (default the student's)."""
        times = self.times if times is None else times
        last = len(times) - 1 if exit_step is None else exit_step
        with self.net.mode(self.mode):
            return self._denoise(z, cache, last, grad, times)

    def _denoise(self, z, cache, last, grad, times):
        x = z
        for k in range(last + 1):
            t = times[k]
            t_next = times[k + 1] if k + 1 < len(times) else 1.0
            with torch.set_grad_enabled(grad and k == last):
                v = self.net.forward_block(x, t, cache)
                if self.sampler == "euler":
                    x = x + (t_next - t) * v
                    if k == last and t_next < 1.0:  # an early exit: its clean prediction
                        x = x + (1 - t_next) * self.net.forward_block(x, t_next, cache)
                else:
                    x1 = x + (1 - t) * v
                    x = x1 if k == last else (1 - t_next) * torch.randn_like(x1) + t_next * x1
        return x

    def commit(self, block: torch.Tensor, cache: KVCache) -> None:
        """Run the finished ``block`` at ``t = 1`` (no gradient) and add its keys and values to ``cache``.
        With ``context_time`` ``c < 1`` the block enters the cache partially denoised instead: noised
        afresh to ``(1 - c) eps + c x`` and run at ``t = c`` (Diagonal Distillation's partially denoised
        context; the same in training rollouts and when streaming)."""
        with torch.no_grad(), self.net.mode(self.mode):
            x, t = block.detach(), 1.0
            if self.context_time is not None and self.context_time < 1:
                t = self.context_time
                x = (1 - t) * torch.randn_like(x) + t * x
            _, kv = self.net.forward_block(x, t, cache, return_kv=True)
        cache.append(kv, block.shape[1])

    @torch.no_grad()
    def redenoise(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """A finished block re-noised to ``retro_time`` (fresh noise) and denoised again through
        :attr:`retro_times` given ``cache``: one retrospective correction of it."""
        tr = self.retro_time
        return self.denoise_block((1 - tr) * torch.randn_like(x) + tr * x, cache, times=self.retro_times)

    def _retrospect(self, recent: list) -> tuple[KVCache, list]:
        """SoulX-FlashTalk's retrospective self-correction, as this lab reads it: go back to the cache as
        it was before the oldest of the ``recent`` blocks and re-denoise each of them (:meth:`redenoise`)
        given the corrected ones before it, committing the corrections. Returns the new cache and the
        corrected ``(cache before, block)`` pairs."""
        cache, out = recent[0][0].snapshot(), []
        for _, x in recent:
            before = cache.snapshot()
            xr = self.redenoise(x, cache)
            self.commit(xr, cache)
            out.append((before, xr))
        return cache, out

    def stream(self, z: torch.Tensor, make_block, context: torch.Tensor | None = None, on_commit=None) -> torch.Tensor:
        """The streaming loop every sequential rollout shares: for block ``n`` of ``z``,
        ``make_block(n, z_block, cache)`` denoises it, the result joins the cache (or, with ``context``, the
        real block does), ``on_commit(n, cache)`` is told. With ``retro = k`` the last ``k`` blocks are then
        re-denoised from ``retro_time`` and the cache rebuilt from the corrected ones (:meth:`_retrospect`):
        what the stream remembers is corrected, the frames already output stay as they were."""
        self._check(z)
        cache, out, recent = self.new_cache(), [], []
        for n, i in enumerate(range(0, z.shape[1], self.block)):
            x = make_block(n, z[:, i:i + self.block], cache)
            out.append(x)
            if context is not None:
                self.commit(context[:, i:i + self.block], cache)
            else:
                before = cache.snapshot() if self.retro else None
                self.commit(x, cache)
                if self.retro:
                    recent = (recent + [(before, x.detach())])[-self.retro:]
                    with torch.no_grad():
                        cache, recent = self._retrospect(recent)
            if on_commit is not None:
                on_commit(n, cache)
        return torch.cat(out, 1)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, nfe: int | None = None) -> torch.Tensor:
        """Stream a clip from noise ``z``, block by block, on the student's own outputs (in lockstep,
        :func:`lockstep_sample`, for a student whose ``order`` is ``"lockstep"``)."""
        if self.order == "lockstep":
            return lockstep_sample(self, z)
        return self.stream(z, lambda n, zb, cache: self.denoise_block(zb, cache, times=self.times_for(n)))

    @torch.no_grad()
    def sample_with_context(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Each block from its noise given the *ground-truth* frames before it (``context``, a real clip
        as long as ``z``): the teacher-forced generation, against which :meth:`sample`'s free run
        measures exposure bias."""
        self._check(z)
        if context.shape != z.shape:
            raise ValueError(f"the context clip must have the noise's shape {tuple(z.shape)}, got {tuple(context.shape)}")
        if self.order == "lockstep":
            return lockstep_sample(self, z, context=context)
        return self.stream(z, lambda n, zb, cache: self.denoise_block(zb, cache, times=self.times_for(n)), context=context)

    @torch.no_grad()
    def cache_bytes(self, z: torch.Tensor, every: int = 1) -> list[int]:
        """Stream ``z`` and return the cache's :attr:`~distill_lab.video.nets.KVCache.nbytes` after each
        ``every``-th committed block: how the memory grows (or not) with the rollout."""
        sizes = []
        self.stream(z, lambda n, zb, cache: self.denoise_block(zb, cache, times=self.times_for(n)),
                    on_commit=lambda n, cache: sizes.append(cache.nbytes) if (n + 1) % every == 0 else None)
        return sizes

    @torch.no_grad()
    def frames_per_second(self, z: torch.Tensor) -> float:
        """Frames generated per second when streaming ``z`` (wall clock, this device)."""
        t0 = time.perf_counter()
        self.sample(z)
        if z.is_cuda:
            torch.cuda.synchronize()
        return z.shape[0] * z.shape[1] / (time.perf_counter() - t0)


def lockstep_rollout(student: StreamingStudent, z: torch.Tensor, grad: bool = True,
                     exit_step: int | None = None, context: torch.Tensor | None = None) -> torch.Tensor:
    """HiAR's training rollout: :func:`lockstep_sample`'s order, stopped at a random exit step (one for
    all blocks, since they move together; ``exit_step`` to fix it), the steps before it without
    gradient; at the exit step every block's clean prediction ``x + (1 - t) v`` keeps its gradient and
    is the clip. Context keys and values are detached, as in :func:`self_forcing_rollout`. With
    ``context`` (real clips shaped like ``z``), each block attends instead to the real blocks before it
    noised to the same level, fresh noise a step (the teacher-forced counterpart)."""
    student._check(z)
    blocks = list(z.split(student.block, dim=1))
    real = None if context is None else list(context.split(student.block, dim=1))
    times = student.times
    last = int(torch.randint(0, len(times), ()).item()) if exit_step is None else exit_step
    for k in range(last + 1):
        t = times[k]
        t_next = times[k + 1] if k + 1 < len(times) else 1.0
        cache = student.new_cache()
        for j, x in enumerate(blocks):
            with torch.set_grad_enabled(grad and k == last), student.net.mode(student.mode):
                v, kv = student.net.forward_block(x, t, cache, return_kv=True)
                if real is not None:
                    noised = (1 - t) * torch.randn_like(real[j]) + t * real[j]
                    _, kv = student.net.forward_block(noised, t, cache, return_kv=True)
                cache.append([(a.detach(), b.detach()) for a, b in kv], x.shape[1])
                x1 = x + (1 - t) * v
            if k == last:  # the euler step to t_next = 1 lands on x1 too
                blocks[j] = x1
            elif student.sampler == "euler":
                blocks[j] = (x + (t_next - t) * v).detach()
            else:
                blocks[j] = ((1 - t_next) * torch.randn_like(x1) + t_next * x1).detach()
    return torch.cat(blocks, 1)


@torch.no_grad()
def lockstep_sample(student: StreamingStudent, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """HiAR's hierarchical denoising order (HiAR, 2026): the loops swapped. For each denoising step,
    every block in turn takes that step while attending to the blocks before it *at the same noise
    level* (their keys and values from the same pass, cached with their time), rather than each block
    finishing all its steps on a clean context. The student's update rule and times are used as they
    are; with one block it is :meth:`StreamingStudent.sample` exactly (tested). It is
    :func:`lockstep_rollout` run to its last step without gradient; a student trained in this order:
    the ``hiar`` recipe. ``context``: as :func:`lockstep_rollout`'s, for the exposure-bias gap."""
    return lockstep_rollout(student, z, grad=False, exit_step=len(student.times) - 1, context=context)


def exit_steps(student: StreamingStudent, n_blocks: int, same_exit: bool = False) -> list[int]:
    """A random exit step for each of ``n_blocks`` blocks (one drawn for all with ``same_exit``), each
    within its block's schedule (:meth:`StreamingStudent.times_for`; capped there with ``same_exit``)."""
    if student.block_steps is None:
        exits = torch.randint(0, len(student.times), (1 if same_exit else n_blocks,)).tolist()
        return exits * n_blocks if same_exit else exits
    draws = [int(torch.randint(0, len(student.times_for(j)), ()).item()) for j in range(1 if same_exit else n_blocks)]
    return [min(draws[0 if same_exit else j], len(student.times_for(j)) - 1) for j in range(n_blocks)]


def self_forcing_rollout(student: StreamingStudent, z: torch.Tensor, same_exit: bool = False,
                         grad: bool = True, context: torch.Tensor | None = None, on_block=None) -> torch.Tensor:
    """Self Forcing's training rollout (Huang et al. 2025, Algorithm 1): stream the clip on the
    student's own outputs with the KV cache; for each block a random exit step is drawn
    (:func:`exit_steps`), the steps before it run without gradient and the exit step's clean
    prediction, with its gradient, is the block. The cache is filled from detached blocks, as
    :meth:`StreamingStudent.stream` does when sampling (partially denoised with ``context_time``,
    corrected with ``retro``). Returns the clip ``[B, F, ...]``, differentiable with respect to the
    student's parameters (``grad=False``: the same rollout without any gradient, for the critic's
    samples). ``context``: commit these real frames instead of the student's (:func:`teacher_forced_rollout`);
    ``on_block(n, z_block, cache)``: called for each block with the cache it was denoised on."""
    student._check(z)
    exits = exit_steps(student, z.shape[1] // student.block, same_exit)

    def make_block(n, zb, cache):
        x = student.denoise_block(zb, cache, exit_step=exits[n], grad=grad, times=student.times_for(n))
        if on_block is not None:
            on_block(n, zb, cache)
        return x

    return student.stream(z, make_block, context=context)


def teacher_forced_rollout(student: StreamingStudent, z: torch.Tensor, context: torch.Tensor,
                           grad: bool = True) -> torch.Tensor:
    """Each block from its noise given the *real* frames before it (``context``, a clip shaped like
    ``z``), with a random exit step and its gradient, as :func:`self_forcing_rollout` does on the
    student's own frames: the generation CausVid's distribution matching trains on."""
    return self_forcing_rollout(student, z, grad=grad, context=context)


def mutual_rollout(few: StreamingStudent, multi: StreamingStudent, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual Forcing's training rollout: the few-step mode streams ``z`` on its own outputs
    (:func:`self_forcing_rollout`); for each block the multi-step mode of the same network denoises the
    same noise given the same cache, without gradient. Returns ``(few-step clip, multi-step targets)``."""
    if few.net is not multi.net:
        raise ValueError("Mutual Forcing's two modes share one network: build both students on the same net")
    targets = []

    def target(n, zb, cache):
        with torch.no_grad():
            targets.append(multi.denoise_block(zb, cache))

    clip = self_forcing_rollout(few, z, on_block=target)
    return clip, torch.cat(targets, 1)


@torch.no_grad()
def teacher_rollout(net: VideoTransformer, z: torch.Tensor, frames: int, nfe: int, context: int) -> torch.Tensor:
    """The bidirectional teacher past its training horizon: the first ``frames`` frames jointly with
    ``nfe`` Euler steps; then, window after window of ``frames`` frames, the last ``context`` generated
    frames held clean (their time fixed at 1) while the next ``frames - context`` are generated from
    ``z``. ``z`` is ``[B, L, ...]`` with ``L - frames`` a multiple of ``frames - context``."""
    if net.mask != "full":
        raise ValueError("teacher_rollout extends clips with a bidirectional (full-attention) network")
    new = frames - context
    if not 0 <= context < frames or (z.shape[1] - frames) % new or z.shape[1] < frames:
        raise ValueError(f"cannot tile {z.shape[1]} frames with windows of {frames} and {context} context frames")
    out = list(_euler_window(net, z[:, :frames], None, nfe).unbind(1))
    for s in range(frames, z.shape[1], new):
        ctx = torch.stack(out[-context:], 1) if context else None
        window = _euler_window(net, z[:, s:s + new], ctx, nfe)
        out += list(window[:, context:].unbind(1))
    return torch.stack(out, 1)


def _euler_window(net: VideoTransformer, z: torch.Tensor, ctx: torch.Tensor | None, nfe: int) -> torch.Tensor:
    x = z if ctx is None else torch.cat([ctx, z], 1)
    c = 0 if ctx is None else ctx.shape[1]
    B, Fr = x.shape[:2]
    for k in range(nfe):
        t = k / nfe
        tf = torch.full((B, Fr), t, dtype=x.dtype, device=x.device)
        tf[:, :c] = 1.0
        v = net(x, tf)
        x = torch.cat([x[:, :c], x[:, c:] + v[:, c:] / nfe], 1)
    return x
