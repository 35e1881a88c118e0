"""The LLM track's procedures: where the training sequences come from (data, the teacher's samples, the
student's own, a teacher-student mixture) crossed with a token-level loss of
:mod:`distill_lab.methods.kd.token`. Each is ``train(exp, **options) -> GPT`` on a
:class:`~distill_lab.core.experiment.TokenExperiment` (:class:`~distill_lab.llm.experiment.LLMTask`),
registered on the ``llm`` track; every one runs through :func:`distill`, one loop, and every
completion through :mod:`distill_lab.llm.rollout`.

Off-policy (the student never sees its own samples):

* ``sft`` -- cross-entropy on the data: the data-only baseline (no teacher).
* ``seq_kd`` -- cross-entropy on the teacher's greedy outputs (sequence-level KD, Kim & Rush 2016).
* ``word_kd`` -- forward KL to the teacher on the data's sequences (word-level KD, Kim & Rush 2016).
* ``reverse_kl_data`` -- reverse KL on the data's sequences (the mode-seeking loss, off-policy).
* ``taid_tokens`` -- TAID's interpolated target on the data's sequences (Shing et al. 2025).
* ``paced_pass_rate`` -- forward KL on the data's sequences, each problem weighted by PACED's Beta kernel of the
  student's pass rate from ``rollouts`` samples (Xu et al. 2026; the samples only weigh, they are
  not trained on).

On-policy (the student learns on its own samples):

* ``gkd_fkl``, ``gkd_jsd``, ``gkd_rkl`` -- GKD with the on-policy fraction lambda = 1 and the
  generalised JSD at beta = 0, 0.5, 1 (Agarwal et al. 2024); ``gkd_mixed`` -- lambda = 0.5: half the
  steps on the student's samples, half on the data.
* ``on_policy_pg`` -- sampled-token on-policy distillation: the per-token advantage
  ``-(log q - log p)`` and a policy-gradient step (the teacher scores only the sampled tokens).
* ``minillm`` -- teacher-mixed sampling (alpha 0.2) and MiniLLM's policy gradient (Gu et al. 2024).
* ``distillm`` -- the skew KL (alpha 0.1) on student samples half of the steps and the data the
  other half (Ko et al. 2024; a fixed share, not the paper's adaptive off-policy schedule and replay buffer).

Every student starts from the experiment's warm start (:meth:`LLMTask.student`) and trains ``exp.steps``
steps of ``exp.batch`` problems. Student samples are drawn at temperature 1 (the student's own
distribution).
"""

from __future__ import annotations

import weakref

import torch

from ..core.registry import recipe, with_options
from ..methods.kd.adaptive import TAIDSchedule, beta_kernel
from ..methods.kd.token import (forward_kl_loss, gjsd_loss, minillm_loss, on_policy_pg_loss, reverse_kl_loss,
                                skew_kl_loss, taid_token_loss, token_ce_loss)
from .rollout import Completions, from_data, from_model, from_texts, score
from .sft import update

LLM = ("llm",)
GKD = "Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist & Bachem 2024, On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes"
KIM_RUSH = "Kim & Rush 2016, Sequence-Level Knowledge Distillation"
SOURCES = ("data", "teacher", "teacher_greedy", "student", "mixed")
SEQUENCE_LEVEL = ("sft", "seq_kd")  # the recipes that need no teacher logits (all that run on mult_short)


def completions(exp, student, problems, source: str, mix_alpha: float = 0.2, teacher=None) -> Completions:
    """A batch of completions from ``source``: ``data``, ``teacher`` (its samples at temperature 1),
    ``teacher_greedy`` (its greedy outputs), ``student`` (the student's samples at temperature 1) or
    ``mixed`` (MiniLLM's ``mix_alpha`` teacher + ``1 - mix_alpha`` student). ``teacher``: the model
    that plays the teacher (default ``exp.teacher``; the student itself in self-distillation)."""
    task, dev = exp.task, exp.device
    teacher = exp.teacher if teacher is None else teacher
    if source == "data":
        return from_data(task, problems, dev)
    if source in ("teacher", "teacher_greedy"):
        c = from_model(teacher, task, problems, "teacher", temperature=1.0 if source == "teacher" else 0.0,
                       privileged=exp.privileged, device=dev)
        if task.other_format:  # the teacher's chains, rewritten in the student's (shorter) format
            texts = [task.student_text(t) for t in task.decode_completions(c.tokens.cpu())]
            return from_texts(task, problems, texts, "teacher", dev)
        return c
    if source == "student":
        return from_model(student, task, problems, "student", device=dev)
    if source == "mixed":
        return from_model(student, task, problems, "mixed", mix_with=teacher, mix_alpha=mix_alpha,
                          mix_privileged=exp.privileged, device=dev)
    raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")


# one scoring of each experiment's pool by its teacher, dropped with the experiment (pool_teacher_logits)
_POOL_TEACHER: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def pool_teacher_logits(exp, c: Completions) -> torch.Tensor | None:
    """The frozen teacher's logits ``[B, N, V]`` on the data's completions ``c`` of problems drawn from
    ``exp``'s fixed pool, looked up from one scoring of the whole pool (made at the first call, again if
    ``exp.teacher`` is replaced): the same numbers :func:`score` gives, up to float rounding (the teacher is
    causal, so the padding after a shorter target changes nothing before it). None when a problem of ``c``
    is not in the pool or the pool's prompts differ in length (then the caller scores ``c`` itself)."""
    cached = _POOL_TEACHER.get(exp)
    if cached is None or cached[0] is not exp.teacher:
        probs = exp.pool_problems
        try:
            pool = from_data(exp.task, probs, exp.device)
            with torch.no_grad():
                logits = score(exp.teacher, exp.task, pool, privileged=exp.privileged)
        except ValueError:  # prompts of more than one length: no single batch to score
            logits = None
        cached = (exp.teacher, {id(p): i for i, p in enumerate(probs)}, logits)
        _POOL_TEACHER[exp] = cached
    index, logits = cached[1], cached[2]
    rows = [index.get(id(p)) for p in c.problems]
    if logits is None or any(r is None for r in rows):
        return None
    return logits[torch.tensor(rows, device=logits.device), :c.tokens.shape[1]]


def distill(exp, name: str, loss_fn, source: str = "data", lam: float = 0.0,
            steps: int | None = None, lr: float | None = None, batch: int | None = None, mix_alpha: float = 0.2,
            weigh=None, after_step=None, teacher_logits: bool = True, teacher=None, draw=None,
            pass_model: bool = False):
    """The one training loop of the LLM track. Each step draws ``batch`` training problems, takes their
    completions from the student's own samples with probability ``lam`` and from ``source``
    otherwise (GKD's lambda), scores them with the student (gradient) and the teacher (no gradient, its
    own prompt), and minimises ``loss_fn(student_logits, teacher_logits, completions) -> loss or
    (loss, info)``. ``weigh(student, problems) -> [B]`` optionally weights each sequence (PACED);
    ``after_step(loss)`` runs after each update (TAID's schedule). ``teacher_logits=False``: the loss
    reads only the tokens (SFT, sequence-level KD), so the teacher does not score them. Returns the
    student with ``student.train_info``: steps, tokens trained on, student tokens generated, distinct
    (prompt, completion) sequences trained on, whether any step was on-policy.

    Self-distillation (:mod:`distill_lab.llm.selfdistill`) uses three more hooks: ``teacher(student) ->
    model`` chooses the model that plays the teacher (default ``exp.teacher``; ``lambda s: s``: the
    student itself, reading the privileged prompt, always scored under ``torch.no_grad()``);
    ``draw(n) -> problems`` replaces ``exp.problems`` (e.g. problems whose privileged prompt reveals a
    share of the reference); ``pass_model``: the loss is called with ``model=student`` as well (a loss
    that scores another view of the same network with its gradient)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"{name}: the on-policy fraction lambda must lie in [0, 1], got {lam}")
    if (teacher_logits or source == "mixed") and exp.task.other_format:
        raise ValueError(f"{name} compares the teacher's and the student's next-token distributions, but on "
                         f"{exp.task.name} the teacher writes another format (the full chain) than the student: "
                         "use a sequence-level recipe (seq_kd, or sft for the data alone), or the task 'mult'")
    steps, lr, batch = steps or exp.steps, lr or exp.lr, batch or exp.batch
    # a fixed pool, its draw and the frozen teacher: the teacher's logits on the data's sequences are the
    # same every time a problem comes round, so they are scored once (pool_teacher_logits)
    pooled = teacher_logits and teacher is None and draw is None and bool(getattr(exp, "pool", None))
    student = exp.student()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.1)
    count = {"train_tokens": 0, "student_tokens": 0, "on_policy_steps": 0}
    seen = set()  # the distinct (prompt, completion) pairs trained on
    draw = draw or exp.problems

    def step(i):
        problems = draw(batch)
        tmodel = exp.teacher if teacher is None else teacher(student)
        src = "student" if (lam > 0 and float(torch.rand(())) < lam) else source
        c = completions(exp, student, problems, src, mix_alpha, teacher=tmodel)
        count["train_tokens"] += c.n_tokens
        seen.update((p.prompt, tuple(row[m].tolist())) for p, row, m in zip(problems, c.tokens.cpu(), c.mask.cpu()))
        if c.on_policy:
            count["student_tokens"] += c.n_tokens
            count["on_policy_steps"] += 1
        s_logits = score(student, exp.task, c)
        t_logits = None
        if teacher_logits and pooled and src == "data":
            t_logits = pool_teacher_logits(exp, c)
        if teacher_logits and t_logits is None:
            with torch.no_grad():
                t_logits = score(tmodel, exp.task, c, privileged=exp.privileged)
        extra = {"model": student} if pass_model else {}
        if weigh is None:
            out = loss_fn(s_logits, t_logits, c, **extra)
        else:  # one weight a sequence, passed to the loss
            out = loss_fn(s_logits, t_logits, c, weigh(student, problems).to(s_logits.device), **extra)
        loss, info = out if isinstance(out, tuple) else (out, {})
        update(student, opt, loss)
        if after_step is not None:
            after_step(float(loss.detach()))
        return {"loss": loss, **{k: v for k, v in info.items() if k != "loss"}}

    hist = exp.fit(step, steps, desc=name)
    student.train_info = {**count, "distinct_sequences": len(seen), "steps": hist["steps"], "seconds": hist["seconds"],
                          "history": hist, "on_policy": count["on_policy_steps"] > 0}
    return student.eval()


# ============================================================================ off-policy
@recipe("sft", tracks=LLM, family="baseline", paper="supervised fine-tuning on the data (no teacher)", baseline=True)
def sft(exp, **overrides):
    """The data-only baseline: cross-entropy on the task's targets, the teacher unused."""
    o = with_options(overrides, "sft", steps=None, lr=None)
    return distill(exp, "sft", lambda s, t, c: token_ce_loss(s, c.tokens, c.mask), "data", teacher_logits=False, **o)


@recipe("seq_kd", tracks=LLM, family="off-policy", paper=KIM_RUSH)
def seq_kd(exp, **overrides):
    """Sequence-level KD: cross-entropy on the teacher's greedy outputs (its approximate mode, the
    beam search of Kim & Rush 2016, eq. 5), its mistakes included; on ``mult_short`` the teacher's full
    chains shortened to the student's format."""
    o = with_options(overrides, "seq_kd", steps=None, lr=None, source="teacher_greedy")
    return distill(exp, "seq_kd", lambda s, t, c: token_ce_loss(s, c.tokens, c.mask), teacher_logits=False, **o)


@recipe("word_kd", tracks=LLM, family="off-policy", paper=KIM_RUSH)
def word_kd(exp, **overrides):
    """Word-level KD: forward KL to the teacher's next-token distributions on the data's sequences."""
    o = with_options(overrides, "word_kd", steps=None, lr=None, source="data")
    return distill(exp, "word_kd", lambda s, t, c: forward_kl_loss(s, t, c.mask), **o)


@recipe("reverse_kl_data", tracks=LLM, family="off-policy",
        paper="Gu, Dong, Wei & Huang 2024, MiniLLM: Knowledge Distillation of Large Language Models (the reverse KL)")
def reverse_kl_data(exp, **overrides):
    """Reverse KL (exact over the vocabulary) on the data's sequences: mode seeking, off-policy."""
    o = with_options(overrides, "reverse_kl_data", steps=None, lr=None)
    return distill(exp, "reverse_kl_data", lambda s, t, c: reverse_kl_loss(s, t, c.mask), "data", **o)


@recipe("taid_tokens", tracks=LLM, family="adaptive",
        paper="Shing, Misaki, Bao, Yokoi & Akiba 2025, TAID: Temporally Adaptive Interpolated Distillation")
def taid_tokens(exp, **overrides):
    """TAID on the data's sequences: the target moves from the student's own distribution towards the
    teacher's with :class:`~distill_lab.methods.kd.adaptive.TAIDSchedule` (the CIFAR track's)."""
    o = with_options(overrides, "taid_tokens", steps=None, lr=None, t_start=0.4, alpha=5e-3)
    sched = TAIDSchedule(o["steps"] or exp.steps, t_start=o["t_start"], alpha=o["alpha"])
    return distill(exp, "taid_tokens", lambda s, t, c: taid_token_loss(s, t, c.mask, sched.t), "data",
                   steps=o["steps"], lr=o["lr"], after_step=sched.step)


@recipe("paced_pass_rate", tracks=LLM, family="adaptive",
        paper="Xu, Sang, Zhou, He & Wang 2026, PACED: Distillation at the Frontier of Student Competence")
def paced_pass_rate(exp, **overrides):
    """PACED: forward KL on the data's sequences, each problem weighted by ``w(p) = p^a (1 - p)^b`` of
    the student's pass rate ``p`` over ``rollouts`` samples (temperature 1), normalised over the batch.
    The pass rate is smoothed, ``(passes + 1) / (rollouts + 2)``, so that while the student solves
    nothing every problem keeps a small weight (this lab's choice; the paper's rates come from many
    more rollouts). The weights are under stop-gradient."""
    o = with_options(overrides, "paced_pass_rate", steps=None, lr=None, rollouts=4, a=1.0, b=1.0)

    @torch.no_grad()
    def weigh(student, problems):
        reps = [p for p in problems for _ in range(o["rollouts"])]
        c = from_model(student, exp.task, reps, "student", device=exp.device)
        ok = torch.tensor([exp.task.check(p, s) for p, s in zip(reps, exp.task.decode_completions(c.tokens.cpu()))],
                          dtype=torch.float32).view(len(problems), o["rollouts"])
        w = beta_kernel((ok.sum(1) + 1) / (o["rollouts"] + 2), o["a"], o["b"])
        return w / w.mean()

    def loss_fn(s, t, c, w):
        loss = forward_kl_loss(s, t, c.mask, weights=w[:, None].expand_as(c.mask))
        return loss, {"mean_weight": w.mean()}

    return distill(exp, "paced_pass_rate", loss_fn, "data", steps=o["steps"], lr=o["lr"], weigh=weigh)


# ============================================================================ on-policy
def _gkd(exp, name, beta, lam, overrides):
    o = with_options(overrides, name, steps=None, lr=None, beta=beta, lam=lam, source="data")
    b = o.pop("beta")
    return distill(exp, name, lambda s, t, c: gjsd_loss(s, t, c.mask, beta=b), **o)


@recipe("gkd_fkl", tracks=LLM, family="on-policy", paper=GKD)
def gkd_fkl(exp, **overrides):
    """GKD, lambda = 1, beta = 0: forward KL on the student's own samples."""
    return _gkd(exp, "gkd_fkl", 0.0, 1.0, overrides)


@recipe("gkd_jsd", tracks=LLM, family="on-policy", paper=GKD)
def gkd_jsd(exp, **overrides):
    """GKD, lambda = 1, beta = 0.5: the generalised JSD on the student's own samples."""
    return _gkd(exp, "gkd_jsd", 0.5, 1.0, overrides)


@recipe("gkd_rkl", tracks=LLM, family="on-policy", paper=GKD)
def gkd_rkl(exp, **overrides):
    """GKD, lambda = 1, beta = 1: reverse KL (exact over the vocabulary) on the student's own samples."""
    return _gkd(exp, "gkd_rkl", 1.0, 1.0, overrides)


@recipe("gkd_mixed", tracks=LLM, family="on-policy", paper=GKD)
def gkd_mixed(exp, **overrides):
    """GKD, lambda = 0.5, beta = 0.5: half the steps on the student's samples, half on the data."""
    return _gkd(exp, "gkd_mixed", 0.5, 0.5, overrides)


@recipe("on_policy_pg", tracks=LLM, family="on-policy",
        paper="Agarwal et al. 2024 (GKD) with the sampled-token reverse KL as a per-token reward (Thinking Machines 2025, On-Policy Distillation)")
def on_policy_pg(exp, **overrides):
    """Sampled-token on-policy distillation: the student samples, the teacher scores the sampled tokens,
    and the advantage ``-(log q - log p)`` drives a policy-gradient step
    (:func:`~distill_lab.methods.kd.token.on_policy_pg_loss`)."""
    o = with_options(overrides, "on_policy_pg", steps=None, lr=None)
    return distill(exp, "on_policy_pg", lambda s, t, c: on_policy_pg_loss(s, t, c.tokens, c.mask),
                   "student", **o)


@recipe("minillm", tracks=LLM, family="on-policy",
        paper="Gu, Dong, Wei & Huang 2024, MiniLLM: Knowledge Distillation of Large Language Models")
def minillm(exp, **overrides):
    """MiniLLM: samples from ``mix_alpha`` teacher + ``1 - mix_alpha`` student, the single-step reverse
    KL plus the normalised long-term reward, importance-weighted (:func:`~distill_lab.methods.kd.token.minillm_loss`)."""
    o = with_options(overrides, "minillm", steps=None, lr=None, mix_alpha=0.2)
    return distill(exp, "minillm", lambda s, t, c: minillm_loss(s, t, c.tokens, c.mask, c.sample_logprobs),
                   "mixed", **o)


@recipe("distillm", tracks=LLM, family="on-policy",
        paper="Ko, Kim, Chen & Yun 2024, DistiLLM: Towards Streamlined Distillation for Large Language Models")
def distillm(exp, **overrides):
    """DistiLLM's skew KL ``KL(p || a p + (1 - a) q)``, a = 0.1, on the student's samples half of the
    steps and the data the other half (the paper's loss; a fixed on-policy share instead of its
    adaptive schedule and replay buffer)."""
    o = with_options(overrides, "distillm", steps=None, lr=None, alpha=0.1, lam=0.5)
    a = o.pop("alpha")
    return distill(exp, "distillm", lambda s, t, c: skew_kl_loss(s, t, c.mask, alpha=a), "data", **o)
