"""Self-distillation recipes with privileged information, on a :class:`~distill_lab.llm.selfdistill.SelfDistillTask`.

Every recipe trains the warm start's student view through the LLM track's one loop
(:func:`distill_lab.llm.recipes.distill`) and is registered on the ``llm_self`` track
(``python -m distill_lab bench llm_self``). The teacher is the network itself reading the reference
(the teacher view); ``teacher`` chooses which weights read it:

* ``"initial"`` -- the warm start's, frozen (the default: the teacher view of a tiny GPT forgets how to
  read the reference once only the student view is trained, see lab 43);
* ``"current"`` -- the student's own current weights (the teacher moves with the student);
* ``"ema"`` -- an exponential moving average of the student's weights (UniSD's EMA teacher).

Recipes:

* ``reference_sft`` -- the baseline without self-distillation: cross-entropy on the references, student view.
* ``opsd`` -- on-policy self-distillation: the clipped forward KL from the teacher view to the student view
  on the student's own rollouts (the target PW-OPSD writes for OPSD); ``rho`` reveals a share of the
  reference (ATESD's fixed-exposure sweep).
* ``pw_opsd`` -- the same with PW-OPSD's increasing position weight.
* ``opsd_rl`` -- OPSD as the pi-Distill paper defines it: the task reward with a reverse-KL penalty to the teacher view.
* ``pi_distill`` -- pi-Distill's joint objective: one model, both views trained together.
* ``atesd`` -- adaptive teacher exposure: a Beta-policy controller picks ``rho`` for each window.
* ``unisd`` -- UniSD's pipeline with switchable parts: multi-view agreement, EMA teacher, token-level
  contrastive term, feature matching, divergence clipping (each can be turned off: the ablations).
* ``avsd`` -- AVSD: several teacher views, their per-token consensus, and each view's residual added only
  where it agrees with the consensus and is no larger than it.
* ``feedback_reward``, ``opsd``, ``feedback_critique`` -- the three contexts of "The Role of Feedback
  Alignment in Self-Distillation": a binary reward (GRPO, no self-teacher), the reference solution
  (``opsd``), and a step-aligned critique (the matching kept on the failing step's tokens).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..core.registry import recipe, with_options
from ..methods.kd.privileged import (ExposureController, avsd_loss, clipped_forward_kl, opsd_rl_loss,
                                     position_weights, sequence_pg_loss, token_contrastive_loss)
from ..methods.kd.token import token_ce_loss, _token_logprobs, masked_mean
from ..methods.step.preference import group_advantages
from .recipes import distill
from .rollout import score
from .selfdistill import critique_focus, with_reference

SELF = ("llm_self",)
OPSD = ("Zhao, Xie, Liu, Huang, Pang, Chen & Grover 2026, Self-Distilled Reasoner: On-Policy Self-Distillation "
        "for Large Language Models (OPSD; the clipped forward-KL target as stated in PW-OPSD)")
PW = "When Are Teacher Tokens Reliable? Position-Weighted On-Policy Self-Distillation for Reasoning (2026)"
PI = "Privileged Information Distillation for Language Models (2026; pi-Distill and OPSD as RL)"
ATESD = "Adaptive Teacher Exposure for Self-Distillation in LLM Reasoning (2026, ATESD)"
FEEDBACK = "The Role of Feedback Alignment in Self-Distillation (2026)"
TEACHERS = ("initial", "current", "ema")
# the policy-gradient recipes' default learning rate, as a share of the experiment's: at the track's
# 2e-3 their sampled-token advantages (log-ratios of up to ~10 nats against a near one-hot teacher view)
# drove their seed-0 students to 0% exact match within 300 steps (ci); at a tenth they do not collapse to 0
PG_LR = 0.1


class SelfTeacher:
    """``teacher(student) -> model`` for :func:`~distill_lab.llm.recipes.distill`: the weights that read
    the teacher view (``initial``, ``current`` or ``ema``, see the module docstring). The EMA is updated
    once a step, when the loop asks for the teacher: ``theta_T <- decay theta_T + (1 - decay) theta``.
    :attr:`model` is the teacher the loop was last given (what a loss that scores more teacher views reads)."""

    def __init__(self, exp, kind: str = "initial", decay: float = 0.99):
        if kind not in TEACHERS:
            raise ValueError(f"unknown self-teacher {kind!r}; choose one of {', '.join(TEACHERS)}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the EMA decay must lie in [0, 1), got {decay}")
        self.kind, self.decay, self.model = kind, decay, None
        self.net = None
        if kind != "current":
            self.net = copy.deepcopy(exp.student()).eval()
            for p in self.net.parameters():
                p.requires_grad_(False)

    def __call__(self, student):
        if self.kind == "current":
            self.model = student
        else:
            if self.kind == "ema":
                with torch.no_grad():
                    for pt, ps in zip(self.net.parameters(), student.parameters()):
                        pt.lerp_(ps, 1.0 - self.decay)
            self.model = self.net
        return self.model


def rewards(exp, c) -> torch.Tensor:
    """1 for each completion of ``c`` whose final answer is right, else 0 (the task's checker)."""
    texts = exp.task.decode_completions(c.tokens.cpu())
    return torch.tensor([float(exp.task.check(p, t)) for p, t in zip(c.problems, texts)], device=c.tokens.device)


def _opsd(exp, name, overrides, alpha_default=0.0):
    o = with_options(overrides, name, steps=None, lr=None, rho=1.0, clip=1.0, alpha=alpha_default,
                     teacher="initial")
    rho, clip, alpha = o.pop("rho"), o.pop("clip"), o.pop("alpha")

    def loss(s, t, c):
        w = position_weights(c.mask, alpha) if alpha else None
        return clipped_forward_kl(s, t, c.mask, clip=clip, weights=w)

    return distill(exp, name, loss, "student", teacher=SelfTeacher(exp, o.pop("teacher")),
                   draw=lambda n: exp.problems(n, rho=rho), **o)


@recipe("reference_sft", tracks=SELF, family="baseline", baseline=True,
        paper="supervised fine-tuning on the reference solutions (no self-teacher)")
def reference_sft(exp, **overrides):
    """The baseline: cross-entropy on the references in the student view, the same steps and batch."""
    o = with_options(overrides, "reference_sft", steps=None, lr=None)
    return distill(exp, "reference_sft", lambda s, t, c: token_ce_loss(s, c.tokens, c.mask), "data",
                   teacher_logits=False, **o)


@recipe("opsd", tracks=SELF, family="self-distillation", paper=OPSD)
def opsd(exp, **overrides):
    """On-policy self-distillation: the student view samples at temperature 1; the teacher view (the
    same network reading ``#`` and a share ``rho`` of the reference) scores the same tokens; the loss is
    :func:`~distill_lab.methods.kd.privileged.clipped_forward_kl` (``clip`` 1 nat). Stop-gradient: the
    teacher view. Options: ``rho`` (1), ``clip``, ``teacher`` (``initial``)."""
    return _opsd(exp, "opsd", overrides)


@recipe("pw_opsd", tracks=SELF, family="self-distillation", paper=PW)
def pw_opsd(exp, **overrides):
    """PW-OPSD: OPSD with :func:`~distill_lab.methods.kd.privileged.position_weights` (``alpha`` 1: the
    last token weighs twice the first, the mean weight 1); the same rollout, teacher pass and clipped
    target as ``opsd``."""
    return _opsd(exp, "pw_opsd", overrides, alpha_default=1.0)


@recipe("opsd_rl", tracks=SELF, family="self-distillation", paper=PI)
def opsd_rl(exp, **overrides):
    """OPSD as reinforcement learning: the student view's samples, the reward 1 for a right answer
    (centred on the batch), and ``beta`` x the sampled-token reverse KL to the teacher view as a
    per-token penalty (:func:`~distill_lab.methods.kd.privileged.opsd_rl_loss`)."""
    o = with_options(overrides, "opsd_rl", steps=None, lr=None, beta=1.0, teacher="initial")
    beta, o["lr"] = o.pop("beta"), o["lr"] or PG_LR * exp.lr
    return distill(exp, "opsd_rl", lambda s, t, c: opsd_rl_loss(s, t, c.tokens, c.mask, rewards(exp, c), beta),
                   "student", teacher=SelfTeacher(exp, o.pop("teacher")), **o)


@recipe("pi_distill", tracks=SELF, family="self-distillation", paper=PI)
def pi_distill(exp, **overrides):
    """pi-Distill's joint objective, one model for both views. The teacher view (current weights)
    samples with the reference in its context; on those samples ::

        L = alpha * ( -mean r(y) log pi(y | x, PI) )  +  (1 - alpha) * KL(sg pi(. | x, PI) || pi(. | x))

    the first term trains the teacher view on its own successful samples (reward-weighted likelihood,
    the reinforcement-learning half, ``r`` 1 for a right answer), the second distils the teacher view
    into the student view on the same samples. The two views share every weight, so the teacher view
    keeps reading the reference while the student view learns (this lab's reading of "trains a
    PI-conditioned teacher and an unconditioned student simultaneously using the same model")."""
    o = with_options(overrides, "pi_distill", steps=None, lr=None, alpha=0.5)
    alpha = o.pop("alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"pi_distill: alpha weighs the teacher view's term, in [0, 1], got {alpha}")

    def loss(s, t, c, model):
        r = rewards(exp, c)
        t_own = score(model, exp.task, c, privileged=True)  # the teacher view, with its gradient
        teacher_term = -masked_mean(r[:, None] * _token_logprobs(t_own, c.tokens), c.mask)
        kd, info = clipped_forward_kl(s, t_own, c.mask)  # (the KD target is detached inside)
        return alpha * teacher_term + (1 - alpha) * kd, {"teacher_reward": r.mean(), **info}

    # the loop does not score the teacher view: the loss scores it once, with its gradient
    return distill(exp, "pi_distill", loss, "teacher", teacher=lambda student: student, pass_model=True,
                   teacher_logits=False, **o)


@recipe("atesd", tracks=SELF, family="self-distillation", paper=ATESD)
def atesd(exp, **overrides):
    """ATESD: the exposure ``rho`` is held for ``window`` steps at a time, chosen by an
    :class:`~distill_lab.methods.kd.privileged.ExposureController` (a Beta policy on the student's
    recent success rate and mean KL); a window's learning progress is the rise of the student's success
    rate on its own rollouts from the window before, and each decision is credited with the discounted
    progress of its own and the next window (``gamma`` 0.5). The loss is ``opsd``'s. The rhos chosen
    are in ``student.train_info["rho"]``."""
    o = with_options(overrides, "atesd", steps=None, lr=None, window=25, gamma=0.5, clip=1.0, teacher="initial")
    window, clip = o.pop("window"), o.pop("clip")
    ctl = ExposureController(state_dim=2, gamma=o.pop("gamma"), horizon=2)
    state = {"rho": None, "step": 0, "success": [], "kl": [], "last": 0.0, "chosen": []}

    def draw(n):
        if state["step"] % window == 0:
            if state["rho"] is not None:  # the window just held: its progress
                now = sum(state["success"]) / len(state["success"])
                ctl.learn(now - state["last"])
                state["last"] = now
            s = torch.tensor([state["last"], sum(state["kl"]) / len(state["kl"]) if state["kl"] else 0.0])
            state["rho"], state["success"], state["kl"] = ctl.decide(s), [], []
            state["chosen"].append(state["rho"])
        state["step"] += 1
        return exp.problems(n, rho=state["rho"])

    def loss(s, t, c):
        out, info = clipped_forward_kl(s, t, c.mask, clip=clip)
        state["success"].append(float(rewards(exp, c).mean()))
        state["kl"].append(float(info["kl"]))
        return out, {**info, "rho": state["rho"]}

    student = distill(exp, "atesd", loss, "student", teacher=SelfTeacher(exp, o.pop("teacher")), draw=draw, **o)
    student.train_info["rho"] = state["chosen"]
    return student


# ---------------------------------------------------------------------------- feedback contexts
@recipe("feedback_reward", tracks=SELF, family="feedback", paper=FEEDBACK + "; GRPO's group advantage")
def feedback_reward(exp, **overrides):
    """A binary reward as the feedback: ``group`` rollouts of each problem, GRPO's group-normalised
    advantage of the right-answer reward on every token of a rollout
    (:func:`~distill_lab.methods.kd.privileged.sequence_pg_loss`). No teacher view is read."""
    o = with_options(overrides, "feedback_reward", steps=None, lr=None, group=4)
    group, o["lr"] = o.pop("group"), o["lr"] or PG_LR * exp.lr
    batch = exp.batch // group

    def draw(n):
        return [p for p in exp.problems(batch) for _ in range(group)]

    def loss(s, t, c):
        r = rewards(exp, c)
        return sequence_pg_loss(s, c.tokens, c.mask, group_advantages(r, group))

    return distill(exp, "feedback_reward", loss, "student", teacher_logits=False, draw=draw, **o)


@recipe("feedback_critique", tracks=SELF, family="feedback", paper=FEEDBACK)
def feedback_critique(exp, **overrides):
    """A step-aligned critique as the self-teacher's context: ``opsd``'s distribution matching kept
    only on the tokens of the step that the checker names as the first to fail
    (:func:`~distill_lab.llm.selfdistill.critique_focus`), nothing on the steps it passed nor on right
    rollouts (the loss is still averaged over every rollout token, so a step passed costs nothing). The
    reference condition of the paper is ``opsd`` itself (the teacher view reads the whole reference and
    every token is matched). The toy's self-teacher does not read the critique as text (a two-layer GPT
    cannot be taught that in seconds): the critique chooses the tokens, the teacher view reading the
    reference supplies the target on them."""
    o = with_options(overrides, "feedback_critique", steps=None, lr=None, clip=1.0, teacher="initial")
    clip = o.pop("clip")

    def loss(s, t, c):
        focus = critique_focus(exp.task, c.problems, c.tokens)
        out, info = clipped_forward_kl(s, t, c.mask, clip=clip, weights=focus)
        return out, {**info, "focused": masked_mean(focus, c.mask)}

    return distill(exp, "feedback_critique", loss, "student", teacher=SelfTeacher(exp, o.pop("teacher")), **o)


# ---------------------------------------------------------------------------- several views: UniSD, AVSD
UNISD = "UniSD: Towards a Unified Self-Distillation Framework for Large Language Models (2026)"
AVSD = "AVSD: Adaptive-View Self-Distillation by Balancing Consensus and Teacher-Specific Privileged Signals (2026)"
VIEWS = (1.0, 0.75, 0.5)  # the teacher views: the whole reference, the chain without the answer, half of it


def view_logits(teacher, exp, c, rhos, loop_view: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The teacher's logits on completions ``c`` under each exposure of ``rhos`` (one teacher view a
    share of the reference), without gradient. ``loop_view``: the logits the loop already scored, those
    of the view at ``exp.rho`` (the exposure ``c``'s problems carry), used instead of scoring it again;
    ``teacher.last_hidden`` is left at the last view scored here."""
    out = []
    with torch.no_grad():
        for rho in rhos:
            if loop_view is not None and rho == exp.rho:
                out.append(loop_view)
                continue
            views = type(c)([with_reference(p, rho, exp.width) for p in c.problems], c.tokens, c.mask, None, c.source)
            out.append(score(teacher, exp.task, views, privileged=True))
    return out


def agreement_target(view_logits_list: list[torch.Tensor]):
    """UniSD's multi-view agreement, as this lab reads it: the target is the mean of the views'
    distributions, and each token weighs the share of views whose most likely token is the target's
    (1 where all agree, ``1 / n`` where each says something else). Returns ``(log target, weights)``,
    both without gradient."""
    with torch.no_grad():
        probs = torch.stack([F.softmax(v.float(), -1) for v in view_logits_list])
        mean = probs.mean(0)
        top = mean.argmax(-1)
        agree = (probs.argmax(-1) == top).float().mean(0)
    return mean.clamp(min=1e-30).log(), agree


@recipe("unisd", tracks=SELF, family="self-distillation", paper=UNISD)
def unisd(exp, **overrides):
    """UniSD's integrated pipeline on the student view's rollouts, each part behind a switch (the ablation
    turns one off):

    * ``agreement`` -- several teacher views (exposures ``views``); the target is their mean
      distribution and each token is weighted by the views' agreement (:func:`agreement_target`); off:
      the whole reference alone, every token weight 1;
    * ``ema`` -- the teacher's weights are an EMA of the student's (``decay``); off (the default here): the
      frozen warm start. On this toy the EMA teacher forgets how to read the reference as the current
      weights do, and the pipeline with it collapses (1.2% against 24.5% without it, three seeds, ci;
      README);
    * ``contrastive`` -- the weight of :func:`~distill_lab.methods.kd.privileged.token_contrastive_loss`
      between the student view's and the teacher view's final hidden states (0: off);
    * ``features`` -- the weight of feature matching, the mean squared distance between the two views'
      final hidden states at the rollout's tokens (0: off);
    * ``clip`` -- divergence clipping of :func:`~distill_lab.methods.kd.privileged.clipped_forward_kl` (None: off).

    Stop-gradient: every teacher-view quantity. The hidden states are the networks' ``last_hidden``."""
    o = with_options(overrides, "unisd", steps=None, lr=None, views=VIEWS, agreement=True, ema=False, decay=0.99,
                     contrastive=0.1, features=0.1, clip=1.0, tau=0.1)
    views, agreement, clip = tuple(o.pop("views")), o.pop("agreement"), o.pop("clip")
    w_con, w_feat, tau = o.pop("contrastive"), o.pop("features"), o.pop("tau")
    teacher = SelfTeacher(exp, "ema" if o.pop("ema") else "initial", o.pop("decay"))

    def loss(s, t, c, model):
        P = exp.task.prompt_len
        # the loop scored the student view, then the teacher view at exp.rho (the whole reference): the
        # hidden states of both passes are the networks' last ones
        s_h = model.last_hidden[:, P - 1:]  # with gradient
        t_h = teacher.model.last_hidden[:, P + exp.width:]
        if agreement:
            target, w = agreement_target(view_logits(teacher.model, exp, c, views, loop_view=t))
        else:
            target, w = t, None
        out, info = clipped_forward_kl(s, target, c.mask, clip=clip, weights=w)
        if w_con:
            con, cinfo = token_contrastive_loss(s_h, t_h, c.mask, tau)
            out = out + w_con * con
            info["contrastive_top1"] = cinfo["top1"]
        if w_feat:
            out = out + w_feat * masked_mean(((s_h - t_h.detach()) ** 2).mean(-1), c.mask)
        if w is not None:
            info["agreement"] = masked_mean(w, c.mask)
        return out, info

    return distill(exp, "unisd", loss, "student", teacher=teacher, pass_model=True, **o)


@recipe("avsd", tracks=SELF, family="self-distillation", paper=AVSD)
def avsd(exp, **overrides):
    """AVSD on the student view's rollouts: the teacher views are the exposures ``views`` (the whole
    reference, the chain without the answer, half of it), and the target of
    :func:`~distill_lab.methods.kd.privileged.avsd_loss` is the student view moved by the views' consensus
    log-ratio plus the residuals aligned with it and no larger than ``ratio`` times it. The teacher is
    the frozen warm start."""
    o = with_options(overrides, "avsd", steps=None, lr=None, views=VIEWS, ratio=1.0, teacher="initial")
    views, ratio = tuple(o.pop("views")), o.pop("ratio")
    teacher = SelfTeacher(exp, o.pop("teacher"))

    def loss(s, t, c):
        return avsd_loss(s, view_logits(teacher.model, exp, c, views, loop_view=t), c.mask, ratio)

    return distill(exp, "avsd", loss, "student", teacher=teacher, **o)
