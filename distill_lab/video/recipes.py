"""The streaming-video recipes: a bidirectional many-step teacher into a block-causal few-step student.

Each is ``train(exp, **options) -> StreamingStudent`` on a :class:`~distill_lab.core.experiment.StreamExperiment`
(:class:`~distill_lab.video.experiment.VideoWorld`), registered on the ``video`` track. The losses come
from :mod:`distill_lab.methods.streaming` and, for distribution matching, from
:mod:`distill_lab.methods.step.dmd` (``dmd_loss``, ``fake_score_loss``: the very functions the toy-2D
and CIFAR recipes use); the rollouts with their KV cache from :mod:`distill_lab.video.rollout`.

* ``teacher_forcing``, ``diffusion_forcing``: autoregressive flow-matching students on real clips,
  sampled with ``sample_steps`` Euler steps a block, by default as many as the few-step students
  take, so every row streams at the same cost (the two paradigms Self Forcing compares with).
* ``causvid``: ODE-pair initialisation, then DMD on clips whose blocks the student generated from the
  *real* frames before them (CausVid, Yin et al. 2025: the distribution-matching stage without rollout).
* ``self_forcing``: ODE-pair initialisation, then DMD on clips the student streamed on its *own*
  outputs with its KV cache, the gradient through a random exit step of each block, the critic
  (fake score) updated ``critic_updates`` times a generator step (Huang et al. 2025).
* ``self_forcing_no_init``: the same without the ODE initialisation, and ``self_forcing_ramp``: with
  the rollout's context moving from real to own frames over the first part of training; the two
  ablations LiveTalk reports (Chen et al. 2025: the initialisation and the schedule of on-policy
  distillation; the linear ramp is this lab's reading of an on-policy schedule).
* ``self_forcing_sink``: training rollouts twice the horizon, the cache rolling over a window of one
  horizon with the first block kept as a sink frame, DMD on the last horizon (KV rolling inside the
  training rollouts, as MotionStream does, with a rolling sink frame as in Live Avatar and MotionStream).

Memory, order and loss for long rollouts (the cache: :class:`~distill_lab.video.nets.KVCache`):

* ``ema_sink``: ``self_forcing_sink`` whose sink is Reward Forcing's EMA-Sink, evicted frames folded
  into it by an exponential moving average in training and when streaming (Lu et al. 2025; their
  Re-DMD is not part of this recipe);
* ``reward_forcing``: ``ema_sink`` with Re-DMD, each rollout's DMD term weighted by ``exp(beta r)`` of a
  motion reward read off the world's physics (:func:`~distill_lab.video.metrics.motion_reward`): both
  parts of Reward Forcing (Lu et al. 2025), the reward model replaced by the toy's exact motion;
* ``hiar``: Self Forcing in HiAR's hierarchical order (:func:`~distill_lab.video.rollout.lockstep_rollout`:
  every block takes each denoising step on context at the same noise level), with its forward-KL
  regulariser (flow matching of the student in bidirectional-attention mode on real clips);
* ``salt``: Self Forcing plus Salt's self-consistency term (SC-DMD) and its cache-aware alignment
  (:func:`salt_terms`; Ge et al. 2026);
* ``stream_r1``: Self Forcing with Stream-R1's reward-distilled DMD: each rollout weighted by a
  balanced quality-and-motion reward, each pixel by the saliency of the quality reward;
* ``hybrid_forcing``: Hybrid Forcing's decoupled schedule: Self Forcing with dense
  attention over the training clip first, then a hybrid copy (a short softmax window plus a linear
  state that absorbs every evicted token, read through a zero-initialised projection) distilled on
  rollouts twice the horizon. Its block-sparse attention inside the window is not implemented.

Every distribution-matching recipe takes ``from_student``: a trained
:class:`~distill_lab.video.rollout.StreamingStudent` whose network it starts from (no ODE
initialisation then), to fine-tune a student rather than train one afresh.
"""

from __future__ import annotations

import copy

import torch

from ..core.flows import flow_matching_loss
from ..core.registry import recipe, with_options
from ..methods.step.dmd import dmd_loss, fake_score_loss, frozen
from ..methods.step.fewstep import sc_loss
from ..methods.streaming import (BalancedReward, asd_discriminator_loss, asd_generator_loss, clip_discriminator,
                                 diffusion_forcing_loss, mutual_distillation_loss, ode_regression_loss,
                                 rewarded_dmd_loss, stream_r1_loss, teacher_forcing_loss)
from .metrics import motion_reward, quality_reward
from .rollout import (StreamingStudent, lockstep_rollout, mutual_rollout, self_forcing_rollout, teacher_forced_rollout,
                      uniform_times)

VIDEO = ("video",)
# tuned settings, kept out of the functions (another value is another setting, not a bug): the
# gradient-norm clip of every student update and the Adam betas of distribution matching's two networks
MAX_GRAD_NORM = 1.0
DMD_BETAS = (0.0, 0.99)
SELF_FORCING = "Huang, Li, He, Zhou & Shechtman 2025, Self Forcing: Bridging the Train-Test Gap in Autoregressive Video Diffusion"


def _adam(params, lr, betas=(0.9, 0.99)):
    return torch.optim.Adam(params, lr=lr, betas=betas)


def _flow_student(exp, name: str, loss_fn, steps, overrides) -> StreamingStudent:
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    o = with_options(overrides, name, batch=exp.scale.batch, lr=3e-4, sample_steps=exp.vscale.student_nfe)
    # pragma: no mutate end
    steps = steps or exp.scale.student_steps
    net = exp.causal_net()
    opt = _adam(net.parameters(), o["lr"])

    def step(i):
        loss, info = loss_fn(net, exp.data_batch(o["batch"]), exp.block)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), MAX_GRAD_NORM)
        opt.step()
        return {"loss": loss.detach()}

    hist = exp.fit(step, steps, desc=name)
    student = StreamingStudent(net.eval(), steps=o["sample_steps"], sampler="euler", window=exp.frames - exp.block)
    student.history, student.options = hist, o
    return student


@recipe("teacher_forcing", tracks=VIDEO, family="streaming",
        paper="teacher forcing of an autoregressive video diffusion model (the baseline of " + SELF_FORCING + ")")
def train_teacher_forcing(exp, steps=None, **overrides) -> StreamingStudent:
    """Flow matching of each block on the clean real frames before it
    (:func:`~distill_lab.methods.streaming.teacher_forcing_loss`), from the teacher's causal copy.
    Options: ``batch``, ``lr``, ``sample_steps`` (Euler steps a block when streaming)."""
    return _flow_student(exp, "teacher forcing", teacher_forcing_loss, steps, overrides)


@recipe("diffusion_forcing", tracks=VIDEO, family="streaming",
        paper="Chen et al. 2024, Diffusion Forcing: Next-token Prediction Meets Full-Sequence Diffusion")
def train_diffusion_forcing(exp, steps=None, **overrides) -> StreamingStudent:
    """Flow matching with an independent noise level a frame
    (:func:`~distill_lab.methods.streaming.diffusion_forcing_loss`), from the teacher's causal copy.
    Options: ``batch``, ``lr``, ``sample_steps``."""
    return _flow_student(exp, "diffusion forcing", diffusion_forcing_loss, steps, overrides)


# ------------------------------------------------------------------ few-step students
def ode_init(exp, student: StreamingStudent, steps: int, batch: int, lr: float, pool: int,
             times: list[float] | None = None) -> dict:
    """CausVid's ODE initialisation: ``pool`` teacher clips from noise (``teacher_nfe`` Euler steps,
    once), then :func:`~distill_lab.methods.streaming.ode_regression_loss` at the student's sampling
    times (or ``times``), a random block a step. Returns the fit history."""
    with torch.no_grad():
        z = exp.noise_batch(pool)
        x1 = torch.cat([exp.teacher_sample(z[i:i + 64]) for i in range(0, pool, 64)])
    opt = _adam(student.net.parameters(), lr)
    times = torch.tensor(student.times if times is None else times, device=exp.device)

    def step(i):
        idx = torch.randint(0, pool, (batch,), device=exp.device)
        t = times[torch.randint(0, len(times), (batch,), device=exp.device)]
        loss, info = ode_regression_loss(student.net, z[idx], x1[idx], exp.block, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.net.parameters(), MAX_GRAD_NORM)
        opt.step()
        return {"loss": loss.detach()}

    return exp.fit(step, steps, desc="ODE-pair initialisation")


def block_jump(student: StreamingStudent, cache):
    """``jump(x, t, s) = x + (s - t) v(x, t | cache)``: the move of one block from time ``t`` to ``s`` along
    the student's velocity given ``cache`` (the form :func:`~distill_lab.methods.step.fewstep.sc_loss` takes)."""
    def jump(x, t, s):
        t, s = float(torch.as_tensor(t).flatten()[0]), float(torch.as_tensor(s).flatten()[0])
        return x + (s - t) * student.net.forward_block(x, t, cache)
    return jump


def salt_terms(student: StreamingStudent, z: torch.Tensor, align_steps: int) -> tuple[dict, dict]:
    """Salt's two terms on the last block of ``z`` (Ge et al. 2026, SC-DMD and cache-distribution-aware
    training). The history (every block but the last) is streamed from ``z`` without gradient with
    ``align_steps`` steps a block (the good cache), and each of its blocks is also degraded, re-noised
    half-way and restored by one step of the student given the degraded blocks before it (the poor
    cache: the same content at the quality of a few-step stream; this lab's reading of a cache of lower
    quality). At a time ``t`` drawn from the student's grid (one with a grid time after it), with ``x``
    the last block's noise moved to ``t`` along the prediction on the good cache:

    * ``"sc"``: :func:`~distill_lab.methods.step.fewstep.sc_loss` (the toy track's, unchanged) of the
      block's jump given the poor cache: one jump to ``t = 1`` against two through the next grid time
      (consecutive updates must compose to the same endpoint), unweighted (the signal-level weight
      would silence the first step, ``t = 0``, the only one of a two-step student);
    * ``"align"``: the clean prediction given the poor cache pulled towards the one given the good
      cache, ``mean((x1(x | cache_poor) - sg(x1(x | cache_good)))^2)``: the cache-conditioned alignment,
      steering outputs on a degraded history towards those on a better one.

    Stop-gradient: both histories, the target of each term. The teacher is not read. Returns the two
    losses (with gradient) and their values (floats). (Two histories streamed separately from the same
    noise would differ in content, not only in quality, and aligning across them teaches the student to
    ignore its cache: a first version did, and its sprites jittered.)"""
    b = student.block
    if z.shape[1] < 2 * b:
        raise ValueError(f"Salt's terms need a history before the last block: at least {2 * b} frames, got {z.shape[1]}")
    hi = StreamingStudent(student.net, steps=align_steps, sampler=student.sampler, window=student.window,
                          sink=student.sink, ema=student.ema)
    with torch.no_grad():
        hi_cache, lo_cache = hi.new_cache(), student.new_cache()
        for i in range(0, z.shape[1] - b, b):
            good = hi.denoise_block(z[:, i:i + b], hi_cache)
            hi.commit(good, hi_cache)
            # the same block degraded: half re-noised, then one step of the student on the poor cache
            noisy = 0.5 * torch.randn_like(good) + 0.5 * good
            student.commit(noisy + 0.5 * student.net.forward_block(noisy, 0.5, lo_cache), lo_cache)
    times = student.times
    k = int(torch.randint(0, max(1, len(times) - 1), ()).item())  # a step with a grid time after it
    t = times[k]
    t_mid = times[k + 1] if len(times) > 1 else (t + 1) / 2  # one-step students: half-way
    z_last = z[:, -b:]
    with torch.no_grad():
        x1_hi0 = z_last + student.net.forward_block(z_last, 0.0, hi_cache)  # the clean guess from noise
        x = (1 - t) * z_last + t * x1_hi0
        target = x + (1 - t) * student.net.forward_block(x, t, hi_cache)
    tt = torch.full((z.shape[0],), t, dtype=z.dtype, device=z.device)
    sc, _ = sc_loss(block_jump(student, lo_cache), x, tt, torch.full_like(tt, t_mid), 1.0, weighted=False)
    pred = x + (1 - t) * student.net.forward_block(x, t, lo_cache)
    align = (pred - target).pow(2).mean()
    return {"sc": sc, "align": align}, {"sc": float(sc.detach()), "align": float(align.detach())}


def _distribution_matching(exp, name: str, steps, overrides, own_context: bool) -> StreamingStudent:
    """The few-step recipes' shared schedule: (optionally) the ODE initialisation, then ``steps``
    generator steps of DMD on generated clips, ``critic_updates`` fake-score steps before each."""
    vsc = exp.vscale
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    o = with_options(overrides, name, batch=exp.scale.batch, gen_lr=5e-5, fake_lr=2e-4, critic_updates=2,
                     sample_steps=vsc.student_nfe, init_steps=exp.scale.student_steps // 2, init_lr=3e-4,
                     pool=256, ramp=0.0, rollout_factor=1, window=None, sink=0, ema=None, from_student=None,
                     linear_memory=False, reward_beta=0.0, lockstep=False, fkl_weight=0.0, sc_weight=0.0,
                     align_weight=0.0, align_steps=4, r1_beta=0.0, asd_weight=0.0, asd_steps=None,
                     block_steps=None, context_time=None, retro=0, retro_time=0.5)
    # pragma: no mutate end
    steps = steps or exp.scale.student_steps
    # the cache keeps the frames a block saw in training: one horizon minus the block itself
    window = o["window"] if o["window"] is not None else exp.frames - exp.block
    if o["from_student"] is not None:
        net = copy.deepcopy(o["from_student"].net).train()
        o["init_steps"] = 0  # it starts from a trained student, not from ODE pairs
    else:
        net = exp.causal_net()
    if o["linear_memory"] and not net.linear_memory:
        net = net.with_linear_memory(window)
    memory = dict(window=window, sink=o["sink"], ema=o["ema"], context_time=o["context_time"], retro=o["retro"],
                  retro_time=o["retro_time"])
    student = StreamingStudent(net, times=uniform_times(o["sample_steps"]), sampler="renoise",
                               order="lockstep" if o["lockstep"] else "sequential", block_steps=o["block_steps"], **memory)
    # ASD: views of the same network at each trained step count n and at n + 1 (its "real" clips)
    asd_steps = list(o["asd_steps"] or [])
    views = {n: StreamingStudent(net, times=uniform_times(n), sampler="renoise", **memory)
             for n in sorted(set(asd_steps) | {n + 1 for n in asd_steps})}
    init_times = sorted({t for v in views.values() for t in v.times} | set(student.times)
                        | {t for n in range(len(o["block_steps"] or [])) for t in student.times_for(n)})
    init_hist = (ode_init(exp, student, o["init_steps"], o["batch"], o["init_lr"], o["pool"], times=init_times)
                 if o["init_steps"] else None)
    fake = exp.score_net()
    g_opt, f_opt = _adam(student.net.parameters(), o["gen_lr"], DMD_BETAS), _adam(fake.parameters(), o["fake_lr"], DMD_BETAS)
    if o["asd_weight"]:
        if not asd_steps:
            raise ValueError("ASD's adversarial term compares n-step with (n+1)-step clips: give asd_steps, e.g. (1, 2)")
        disc = clip_discriminator(exp.frames, exp.shape[1]).to(exp.device)
        d_opt = _adam(disc.parameters(), o["fake_lr"], DMD_BETAS)
    B, L = o["batch"], o["rollout_factor"] * exp.frames
    reward = motion_reward(exp.world, exp.reference["dynamic_degree"]) if o["reward_beta"] else None
    if o["r1_beta"]:  # Stream-R1: a balanced quality-and-motion reward a rollout, quality saliency a pixel
        balanced = BalancedReward({"quality": quality_reward(exp.world),
                                   "motion": motion_reward(exp.world, exp.reference["dynamic_degree"])})

    def generate(i, grad: bool, s: StreamingStudent = student):
        z = exp.noise_batch(B, L)
        own = own_context and (o["ramp"] <= 0 or torch.rand(()) < min(1.0, i / (o["ramp"] * steps)))
        if own and o["lockstep"]:
            clip = lockstep_rollout(s, z, grad=grad)
        elif own:
            clip = self_forcing_rollout(s, z, grad=grad)
        else:
            clip = teacher_forced_rollout(s, z, exp.data_batch(B, L), grad=grad)
        return clip[:, -exp.frames:], bool(own)

    def step(i):
        logs, s = {}, student
        if asd_steps:  # ASD: this step trains the student at n steps, a step count drawn from asd_steps
            n = asd_steps[int(torch.randint(0, len(asd_steps), ()).item())]
            s = views[n]
        if o["asd_weight"]:  # its discriminator: the student's own (n+1)-step clips against n-step ones
            with torch.no_grad():
                z = exp.noise_batch(B, L)
                fewer, more = s.sample(z)[:, -exp.frames:], views[n + 1].sample(z)[:, -exp.frames:]
            ld, dinfo = asd_discriminator_loss(disc, fewer, more)
            d_opt.zero_grad(set_to_none=True)
            ld.backward()
            d_opt.step()
            logs.update(dinfo)
        for _ in range(o["critic_updates"]):
            clip, _ = generate(i, grad=False, s=s)
            lf, info = fake_score_loss(fake, clip)
            f_opt.zero_grad(set_to_none=True)
            lf.backward()
            f_opt.step()
            logs.update(info)
        clip, own = generate(i, grad=True, s=s)
        with frozen(fake):
            if o["r1_beta"]:
                loss, info = stream_r1_loss(clip, exp.velocity, fake, balanced, o["r1_beta"],
                                            saliency_reward=quality_reward(exp.world))
            elif o["reward_beta"]:
                loss, info = rewarded_dmd_loss(clip, exp.velocity, fake, reward, o["reward_beta"])
            else:
                loss, info = dmd_loss(clip, exp.velocity, fake)
        if o["sc_weight"] or o["align_weight"]:  # Salt: self-consistency and cache-aware alignment
            terms, salt_info = salt_terms(student, exp.noise_batch(B), o["align_steps"])
            loss = loss + o["sc_weight"] * terms["sc"] + o["align_weight"] * terms["align"]
            info = {**info, **salt_info}
        if o["asd_weight"]:
            with frozen(disc):
                lg, ginfo = asd_generator_loss(disc, clip)
            loss = loss + o["asd_weight"] * lg
            info = {**info, "asd_g": ginfo["gan_g"]}
        if o["fkl_weight"]:  # HiAR's forward-KL regulariser: flow matching on real clips, bidirectional mode
            with student.net.bidirectional():
                fkl = flow_matching_loss(student.net, exp.data_batch(B))
            loss = loss + o["fkl_weight"] * fkl
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.net.parameters(), MAX_GRAD_NORM)
        g_opt.step()
        extra = {k: info[k] for k in ("sc", "align", "asd_g") if k in info}
        return {**logs, "loss": loss.detach(), "grad_norm": info["grad_norm"], "own_context": float(own), **extra}

    hist = exp.fit(step, steps, desc=name)
    student.net.eval()
    student.history, student.init_history, student.options, student.fake = hist, init_hist, o, fake
    if o["asd_weight"]:
        student.discriminator = disc
    return student


@recipe("causvid", tracks=VIDEO, family="streaming",
        paper="Yin et al. 2025, From Slow Bidirectional to Fast Autoregressive Video Diffusion Models (CausVid)")
def train_causvid(exp, steps=None, **overrides) -> StreamingStudent:
    """ODE-pair initialisation, then DMD with the bidirectional teacher as the real score and a fake
    score trained on the student's clips, each block generated from the real frames before it.
    Options: ``batch``, ``gen_lr``, ``fake_lr``, ``critic_updates``, ``sample_steps``, ``init_steps``,
    ``init_lr``, ``pool``."""
    return _distribution_matching(exp, "CausVid", steps, overrides, own_context=False)


@recipe("self_forcing", tracks=VIDEO, family="streaming", paper=SELF_FORCING)
def train_self_forcing(exp, steps=None, **overrides) -> StreamingStudent:
    """Self Forcing: the student streams training clips on its own outputs with its KV cache (random
    exit step a block, gradient through it only, cache from detached blocks), and DMD on the whole
    clip against the bidirectional teacher; the fake score takes ``critic_updates`` steps a generator
    step; initialised by ODE pairs. Options as ``causvid``, plus ``ramp``, ``rollout_factor``,
    ``window``, ``sink`` (see the registered variants)."""
    return _distribution_matching(exp, "Self Forcing", steps, overrides, own_context=True)


@recipe("self_forcing_no_init", tracks=VIDEO, family="streaming",
        paper=SELF_FORCING + "; without the ODE initialisation (the ablation of LiveTalk, Chen et al. 2025)")
def train_self_forcing_no_init(exp, steps=None, **overrides) -> StreamingStudent:
    """Self Forcing from the teacher's causal copy directly, no ODE-pair initialisation."""
    return _distribution_matching(exp, "Self Forcing, no init", steps, {"init_steps": 0, **overrides}, own_context=True)


@recipe("self_forcing_ramp", tracks=VIDEO, family="streaming",
        paper=SELF_FORCING + "; on-policy schedule: real-frame context ramped to own rollouts (after LiveTalk, "
              "Chen et al. 2025; the linear ramp is this lab's)")
def train_self_forcing_ramp(exp, steps=None, **overrides) -> StreamingStudent:
    """Self Forcing whose training clips use real-frame context (CausVid's) with a probability that
    falls linearly to 0 over the first half of the steps, then the student's own rollouts only."""
    return _distribution_matching(exp, "Self Forcing, ramp", steps, {"ramp": 0.5, **overrides}, own_context=True)


@recipe("self_forcing_sink", tracks=VIDEO, family="streaming",
        paper=SELF_FORCING + "; with KV rolling in training rollouts and a sink frame (MotionStream, "
              "Shin et al. 2025; Live Avatar's rolling sink frame)")
def train_self_forcing_sink(exp, steps=None, **overrides) -> StreamingStudent:
    """Self Forcing on training rollouts twice the horizon whose cache rolls over a window of one
    horizon with the first block kept as a sink; DMD scores the last horizon of each rollout, so the
    student trains in the state it streams in past the horizon."""
    return _distribution_matching(exp, "Self Forcing, sink", steps,
                                  {"rollout_factor": 2, "sink": exp.block, **overrides}, own_context=True)


REWARD_FORCING = ("Lu et al. 2025, Reward Forcing: Efficient Streaming Video Generation with Rewarded Distribution "
                  "Matching Distillation")
HYBRID_FORCING = "Hybrid Forcing: Long-Horizon Streaming Video Generation via Hybrid Attention with Decoupled Distillation"
EMA_DECAY = 0.9  # pragma: no mutate (this lab's decay a folded frame; the paper's 0.999 is per much longer streams)


@recipe("ema_sink", tracks=VIDEO, family="streaming",
        paper=REWARD_FORCING + "; its EMA-Sink only (Re-DMD is not part of this recipe)")
def train_ema_sink(exp, steps=None, **overrides) -> StreamingStudent:
    """``self_forcing_sink`` with Reward Forcing's EMA-Sink (sec. 3.2): the sink block starts as the
    first block and each evicted frame is folded into it, ``s <- ema s + (1 - ema) e`` on keys and values
    (:class:`~distill_lab.video.nets.KVCache`), in the training rollouts (twice the horizon, so frames
    are evicted) and when the student streams. ``ema`` (default 0.9) is the decay; ``ema=1`` is the
    static sink of ``self_forcing_sink``. Options as ``self_forcing``."""
    return _distribution_matching(exp, "EMA-Sink", steps,
                                  {"rollout_factor": 2, "sink": exp.block, "ema": EMA_DECAY, **overrides},
                                  own_context=True)


@recipe("hybrid_forcing", tracks=VIDEO, family="streaming",
        paper=HYBRID_FORCING + ": linear temporal attention over evicted tokens beside a sliding window, "
              "decoupled distillation (block-sparse window attention not implemented)")
def train_hybrid_forcing(exp, steps=None, **overrides) -> StreamingStudent:
    """Hybrid Forcing's decoupled distillation. Stage 1: few-step distillation with dense attention,
    the ``self_forcing`` recipe, whose window covers the whole training clip (skipped when
    ``from_student`` gives that student). Stage 2: its hybrid copy
    (:meth:`~distill_lab.video.nets.VideoTransformer.with_linear_memory`): softmax attention over the
    last ``hybrid_window`` frames (default one block) and a linear-attention state absorbing every token
    evicted from it, read through a zero-initialised projection a layer, so stage 2 starts where
    stage 1 ended; then Self Forcing on rollouts twice the horizon, so the state fills in training,
    for ``hybrid_steps`` generator steps (default half of ``steps``). The teacher provides the real
    score of DMD in both stages; the critic and the cache are detached as in ``self_forcing``.
    ``linear=False`` is the ablation: the same second stage with the short window alone, evicted
    tokens dropped. Options: ``hybrid_window``, ``hybrid_steps``, ``from_student``, ``linear``, and
    ``self_forcing``'s (both stages)."""
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    own = {"hybrid_window": exp.block, "hybrid_steps": None, "from_student": None, "linear": True}
    # pragma: no mutate end
    o = {k: overrides.pop(k, v) for k, v in own.items()}
    steps = steps or exp.scale.student_steps
    first = o["from_student"]
    if first is None:
        first = _distribution_matching(exp, "Hybrid Forcing, stage 1 (dense)", steps, dict(overrides), own_context=True)
    if first.window is not None and first.window < exp.frames - exp.block:
        raise ValueError(f"Hybrid Forcing's first stage attends densely over the training clip; this student's "
                         f"cache keeps {first.window} frames, fewer than {exp.frames - exp.block}")
    second = _distribution_matching(
        exp, "Hybrid Forcing, stage 2 (hybrid)", o["hybrid_steps"] or max(1, steps // 2),
        {"rollout_factor": 2, **overrides, "from_student": first, "window": o["hybrid_window"],
         "linear_memory": o["linear"]}, own_context=True)
    second.first_stage = first
    return second


REDMD_BETA = 2.0  # pragma: no mutate (this lab's setting: a clip moving half the data's speed weighs e^-1)


@recipe("reward_forcing", tracks=VIDEO, family="streaming",
        paper=REWARD_FORCING + ": EMA-Sink and Re-DMD, the reward model replaced by the world's motion")
def train_reward_forcing(exp, steps=None, **overrides) -> StreamingStudent:
    """Reward Forcing: the ``ema_sink`` recipe whose DMD loss is Re-DMD
    (:func:`~distill_lab.methods.streaming.rewarded_dmd_loss`): each training rollout's term weighted by
    ``exp(reward_beta r)``, ``r`` its dynamic degree over the data's minus 1
    (:func:`~distill_lab.video.metrics.motion_reward`, under stop-gradient), so rollouts that move
    like the data or more pull the student harder than frozen ones. ``reward_beta`` (default 2); the
    critic is trained as in ``self_forcing``, unweighted. Options as ``ema_sink``."""
    return _distribution_matching(exp, "Reward Forcing", steps,
                                  {"rollout_factor": 2, "sink": exp.block, "ema": EMA_DECAY, "reward_beta": REDMD_BETA,
                                   **overrides}, own_context=True)


HIAR = "HiAR 2026, Efficient Autoregressive Long Video Generation via Hierarchical Denoising"
FKL_WEIGHT = 0.25  # pragma: no mutate (this lab's weight of HiAR's forward-KL term)
HIAR_STEPS = 4  # pragma: no mutate (HiAR's 4-step setting: with 2, the last step's context is half noise)


@recipe("hiar", tracks=VIDEO, family="streaming",
        paper=HIAR + ": self-rollout DMD in the hierarchical order, forward-KL regulariser in bidirectional mode")
def train_hiar(exp, steps=None, **overrides) -> StreamingStudent:
    """HiAR: the ``self_forcing`` schedule whose training rollouts denoise all blocks in lockstep, each
    step on context at the same noise level (:func:`~distill_lab.video.rollout.lockstep_rollout`; sample
    it with :func:`~distill_lab.video.rollout.lockstep_sample`), plus ``fkl_weight`` (default 0.25) times
    a forward-KL regulariser: flow matching (maximum likelihood, mode covering) of the student on real
    clips with its attention switched to bidirectional, which the paper adds against the low-motion
    shortcut of DMD's reverse KL. Four steps a block by default, the paper's setting (``sample_steps``):
    in this order the last step's context is at the noise level of the step before it, half noise with
    two steps. The teacher provides DMD's real score; the regulariser needs none (real clips stand in
    for the teacher's samples). Options as ``self_forcing``, plus ``fkl_weight``."""
    return _distribution_matching(exp, "HiAR", steps, {"lockstep": True, "fkl_weight": FKL_WEIGHT,
                                                       "sample_steps": HIAR_STEPS, **overrides}, own_context=True)


SALT = "Ge et al. 2026, Salt: Self-Consistent Distribution Matching with Cache-Aware Training for Fast Video Generation"


@recipe("salt", tracks=VIDEO, family="streaming",
        paper=SALT + ": SC-DMD's composition term and cache-conditioned feature alignment on Self Forcing")
def train_salt(exp, steps=None, **overrides) -> StreamingStudent:
    """Salt on Self Forcing: DMD on the student's own rollouts plus ``sc_weight`` times SC-DMD's
    self-consistency term and ``align_weight`` times the cache-conditioned alignment, both on the last
    block of a fresh horizon whose history the student streamed itself (:func:`salt_terms`): the low-
    quality cache of its own steps against a cache streamed with ``align_steps`` steps from the same
    noise. Defaults: both weights 1, four steps for the better cache (this lab's settings). The
    alignment reads the student's features at its output (the clean prediction); Salt's code aligns
    hidden features. Options as ``self_forcing``, plus ``sc_weight``, ``align_weight``, ``align_steps``."""
    return _distribution_matching(exp, "Salt", steps, {"sc_weight": 1.0, "align_weight": 1.0, **overrides},
                                  own_context=True)


STREAM_R1 = "Stream-R1 2026, Reliability-Perplexity Aware Reward Distillation for Streaming Video Generation"
R1_BETA = 1.0  # pragma: no mutate (this lab's setting, on rewards balanced to unit spread)


@recipe("stream_r1", tracks=VIDEO, family="streaming",
        paper=STREAM_R1 + ": rollout weights exp(beta r), saliency weights a pixel and a frame, balanced axes")
def train_stream_r1(exp, steps=None, **overrides) -> StreamingStudent:
    """Stream-R1 on Self Forcing (:func:`~distill_lab.methods.streaming.stream_r1_loss`): each training
    rollout's DMD term weighted by ``exp(r1_beta r)``, ``r`` the balanced
    (:class:`~distill_lab.methods.streaming.BalancedReward`) sum of two axes read off the world, visual
    quality (:func:`~distill_lab.video.metrics.quality_reward`) and motion
    (:func:`~distill_lab.video.metrics.motion_reward`); each element weighted by the spatial and temporal
    saliency of the quality reward's gradient. The reward models of the paper are replaced by the toy's
    exact measurements. Options as ``self_forcing``, plus ``r1_beta`` (default 1)."""
    return _distribution_matching(exp, "Stream-R1", steps, {"r1_beta": R1_BETA, **overrides}, own_context=True)


ASD_PAPER = "Towards One-step Causal Video Generation via Adversarial Self-Distillation (ASD)"
ASD_WEIGHT = 0.1  # pragma: no mutate (this lab's weight of the adversarial term beside DMD)
ASD_STEPS = (1, 2)  # pragma: no mutate (the step counts one ASD student is trained to serve)


@recipe("asd", tracks=VIDEO, family="streaming",
        paper=ASD_PAPER + ": DMD plus adversarial self-distillation, one model for 1 and 2 steps (first-frame "
              "enhancement is a sampling schedule: StreamingStudent(block_steps=...))")
def train_asd(exp, steps=None, **overrides) -> StreamingStudent:
    """ASD on Self Forcing. Each generator step draws a step count ``n`` from ``asd_steps`` (default 1 and
    2) and trains the student's ``n``-step rollouts with DMD (the teacher's real score, the critic's fake
    one, as ``self_forcing``) plus ``asd_weight`` (default 0.1) times the adversarial self-distillation
    term (:func:`~distill_lab.methods.streaming.asd_generator_loss`): a discriminator, updated once a step
    (:func:`~distill_lab.methods.streaming.asd_discriminator_loss`), tells the student's own (n+1)-step
    clips from its n-step clips of the same noise, so the n-step student is pulled towards its slightly
    better self. The same weights then stream at 1 or 2 steps (``StreamingStudent(student.net, steps=n,
    ...)``); the returned student streams at ``sample_steps`` (default 2). ``asd_weight=0`` is the ablation:
    the same multi-step-count DMD without the adversarial term. The ODE initialisation covers every
    step count's grid. Stop-gradient: the (n+1)-step clips, the critic's and discriminator's inputs;
    the discriminator is frozen in the generator's update. The GAN term is applied to the same rollout
    as DMD, each block at its random exit step (so an n = 2 step trains 1-step predictions too).
    Options as ``self_forcing``, plus ``asd_weight``, ``asd_steps``."""
    return _distribution_matching(exp, "ASD", steps, {"asd_weight": ASD_WEIGHT, "asd_steps": ASD_STEPS, **overrides},
                                  own_context=True)


DIAGONAL = "Streaming Autoregressive Video Generation via Diagonal Distillation"
DIAGONAL_STEPS = (4, 3, 2, 1)  # pragma: no mutate (more steps for the first blocks, one for the rest)
CONTEXT_TIME = 0.75  # pragma: no mutate (where a 4-step block starts its last step: the next can begin there)


@recipe("diagonal", tracks=VIDEO, family="streaming",
        paper=DIAGONAL + ": more steps early and fewer later, trained so; blocks enter the cache partially "
              "denoised (the implicit optical-flow term is not implemented)")
def train_diagonal(exp, steps=None, **overrides) -> StreamingStudent:
    """Diagonal Distillation on Self Forcing: the training rollouts use the schedule the student streams
    with, ``block_steps`` (default 4, 3, 2 then 1 step a block: the first blocks thoroughly denoised, the
    later ones inheriting their appearance), each block's exit step drawn within its own schedule; and
    each block enters the cache partially denoised, re-noised to ``context_time`` (default 0.75) and
    encoded at that time, in training and when streaming alike
    (:class:`~distill_lab.video.rollout.StreamingStudent` ``context_time``), so the noise level the next
    block is conditioned on in training is the one it meets at inference (the paper's exposure-bias
    argument; 0.75 is where a 4-step block starts its last step, so a pipelined stream could start the
    next block there). This lab's reading: the cache gets the final block re-noised rather than the
    block's own intermediate state. The paper's implicit optical-flow term is not implemented. The
    teacher provides DMD's real score; the cache is detached as in ``self_forcing``. Options as
    ``self_forcing``, plus ``block_steps``, ``context_time``."""
    return _distribution_matching(exp, "Diagonal", steps, {"block_steps": list(DIAGONAL_STEPS),
                                                           "context_time": CONTEXT_TIME, **overrides},
                                  own_context=True)


SOULX = ("SoulX-FlashTalk: Real-Time Infinite Streaming of Audio-Driven Avatars via Self-Correcting "
         "Bidirectional Distillation")


@recipe("soulx", tracks=VIDEO, family="streaming",
        paper=SOULX + ": bidirectional inside a block, causal across blocks, retrospective self-correction of "
              "the last blocks in training rollouts and when streaming (this lab's reading of the mechanism)")
def train_soulx(exp, steps=None, **overrides) -> StreamingStudent:
    """SoulX-FlashTalk's self-correcting distillation on Self Forcing. The student attends bidirectionally
    inside a block and causally across blocks (every student of this track does). After each block, the
    last ``retro`` blocks (default 1) are re-noised to ``retro_time`` (default 0.5) and denoised again
    given the corrected history before them, and the cache is rebuilt from the corrections
    (:meth:`~distill_lab.video.rollout.StreamingStudent.stream`): what the stream remembers is corrected,
    the frames already shown are not. Training rollouts do the same (no gradient through the
    correction), so the student trains on the corrected context it streams on. This is this lab's
    reading of a mechanism the abstract names without detail. The teacher provides DMD's real score.
    Options as ``self_forcing``, plus ``retro``, ``retro_time``."""
    return _distribution_matching(exp, "SoulX", steps, {"retro": 1, "retro_time": 0.5, **overrides}, own_context=True)


MUTUAL = "Mutual Forcing: Dual-Mode Self-Evolution for Fast Autoregressive Audio-Video Character Generation"
MULTI_STEPS = 8  # pragma: no mutate (the multi-step mode's Euler steps)


@recipe("mutual_forcing", tracks=VIDEO, family="streaming",
        paper=MUTUAL + ": one causal network, a multi-step and a few-step mode, no bidirectional teacher")
def train_mutual_forcing(exp, steps=None, **overrides) -> StreamingStudent:
    """Mutual Forcing without a teacher: one block-causal network with two modes sharing every weight
    but a mode vector on the time embedding of noisy frames
    (:meth:`~distill_lab.video.nets.VideoTransformer.with_modes`). Each step: the multi-step mode
    (mode 0, ``multi_steps`` Euler steps, default 8) learns from real clips by teacher forcing
    (:func:`~distill_lab.methods.streaming.teacher_forcing_loss`); the few-step mode (mode 1,
    ``sample_steps`` Euler steps, deterministic given the noise) streams a clip on its own history (:func:`~distill_lab.video.rollout.mutual_rollout`) and
    each block is regressed onto the multi-step mode's block from the same noise and history
    (:func:`~distill_lab.methods.streaming.mutual_distillation_loss`, weight ``sd_weight``, default 1). The
    few-step mode makes the history, the multi-step mode the targets; one optimiser moves both. No
    teacher is read in training: no real score, no ODE pairs (the network starts from the same causal
    copy of the teacher's weights every student of the track starts from). Stop-gradient: the
    multi-step targets, the cache. Returns the few-step student; ``student.multi`` streams in the
    multi-step mode. Options: ``batch``, ``lr``, ``sample_steps``, ``multi_steps``, ``sd_weight``."""
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    o = with_options(overrides, "Mutual Forcing", batch=exp.scale.batch, lr=3e-4, sample_steps=exp.vscale.student_nfe,
                     multi_steps=MULTI_STEPS, sd_weight=1.0)
    # pragma: no mutate end
    steps = steps or exp.scale.student_steps
    window = exp.frames - exp.block
    net = exp.causal_net().with_modes(2)
    # the few-step mode samples with Euler steps: deterministic, so each block is a function of its noise and
    # the regression onto the multi-step block from that noise has one answer (fresh noise between the steps,
    # the re-noising sampler's, would leave only the mean to regress onto: a blur)
    few = StreamingStudent(net, times=uniform_times(o["sample_steps"]), sampler="euler", window=window, mode=1)
    multi = StreamingStudent(net, steps=o["multi_steps"], sampler="euler", window=window, mode=0)
    opt = _adam(net.parameters(), o["lr"])

    def step(i):
        with net.mode(0):
            fm, _ = teacher_forcing_loss(net, exp.data_batch(o["batch"]), exp.block)
        clip, target = mutual_rollout(few, multi, exp.noise_batch(o["batch"]))
        sd, info = mutual_distillation_loss(clip, target)
        loss = fm + o["sd_weight"] * sd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), MAX_GRAD_NORM)
        opt.step()
        return {"loss": loss.detach(), "flow": fm.detach(), "self_distill": info["self_distill"]}

    hist = exp.fit(step, steps, desc="Mutual Forcing")
    net.eval()
    few.history, few.options, few.multi = hist, o, multi
    return few
