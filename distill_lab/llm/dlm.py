"""Distilling masked-diffusion language models: the experiment and its recipes (track ``llm_dlm``).

A masked-diffusion LM (:mod:`distill_lab.llm.diffusion`) writes a completion by unmasking it, some
positions a forward pass: the **tokens per forward** (TPF) are its speed knob. Here one bidirectional
tiny GPT, the **base**, reads a problem in two views, as the self-distillation track's GPT does
(:mod:`distill_lab.llm.selfdistill`):

* the **student view**: the prompt, then the masked completion;
* the **teacher view**: the prompt, ``#``, the whole reference solution, then the masked completion.

It is trained on both views with MDLM's loss (:meth:`DiffusionLMTask.train_base`), once, by the
project's script (``python -m distill_lab.llm.dlm_base``, committed in ``datasets/teachers``), and
every student of a seed starts from it. The recipes train the student view:

* ``mdlm_sft`` -- the baseline: MDLM's loss on the references, random masks (more of the base's training);
* ``tad`` -- TAD: the base's teacher view decodes each problem one token a forward with the reference in
  its context, and the states of that **trajectory** are the student's inputs; a masked position the
  teacher reveals within ``k`` passes is a hard target (its token), a later one a soft target (the
  teacher view's distribution at that state). ``k=0`` is KL only, ``k=inf`` cross-entropy only;
* ``gdsd`` -- GDSD: RL on the student view's own samples as self-distillation from the advantage-guided
  self-teacher, normalisation-free logit matching;
* ``elbo_pg`` -- the ELBO-surrogate policy gradient GDSD replaces, on the same samples and rewards.

Each student is measured by its exact match at several TPFs (:meth:`DiffusionLMTask.curve`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

from ..core.checkpoints import TEACHERS_DIR, check_folder, float32_state
from ..core.registry import recipe, with_options
from ..core.scale import Scale, get_scale
from ..core.train import fit
from ..methods.step.preference import group_advantages
from .config import NetSize
from .diffusion import T_MIN, Trajectory, denoiser_logits, elbo_pg_loss, gdsd_loss, mdlm_loss, tad_loss, unmask_sample
from .gpt import GPT, GPTConfig
from .selfdistill import MARK, SELF_TASKS, with_reference
from .sft import cosine_lr, heldout_problems, update
from .tasks import Problem, get_task

DLM = ("llm_dlm",)
TAD = "Temporal-Aware Trajectory Self-Distillation for Fast and Accurate Diffusion LLM (2026, TAD)"
GDSD = "Reinforcement Learning as Guided Denoiser Self-Distillation for Diffusion Language Models (2026, GDSD)"
MDLM = "Sahoo et al. 2024, Simple and Effective Masked Diffusion Language Models (MDLM)"
# the RL recipes' default learning rate, as a share of the experiment's: at 1e-4 (40 steps, seed 0, ci) the ELBO
# policy gradient cost the base 7.4 points of greedy exact match at one token a pass and GDSD 1.6, and both 2 to
# 4 points at five tokens a pass; at 2e-5 neither moves it by more than about a point
RL_LR = 0.2
FILES = ("base.pt",)
REBUILD = "python -m distill_lab.llm.dlm_base"


@dataclass(frozen=True)
class DLMScale:
    """What the scale sizes on the ``llm_dlm`` track. ``base``: the bidirectional GPT; ``base_steps`` x
    ``base_batch`` its MDLM training on both views (``view_share`` of each batch in the teacher view);
    ``steps`` x ``batch`` every student's budget at ``lr`` (``rl_steps`` for the RL recipes, whose every
    step also samples ``batch`` completions, one token a forward); ``pool`` the problems whose teacher
    trajectories TAD trains on; ``group`` the samples a prompt for the RL recipes; ``eval_n`` held-out
    problems; ``tpfs`` the tokens per forward every student is measured at."""

    base: NetSize
    base_steps: int
    base_batch: int
    base_lr: float
    steps: int
    batch: int
    lr: float
    pool: int
    group: int
    eval_n: int
    tpfs: tuple[int, ...]
    rl_steps: int
    view_share: float = 0.5


DLM_SCALES = {
    # students: a fresh AdamW at 1e-3 (no schedule) cost the base 19 points at one token a pass in 300 steps
    # (mdlm_sft, seed 0), at 1e-4 with warm-up and cosine decay none
    "ci": DLMScale(NetSize(4, 4, 128), 4000, 32, 2e-3, 100, 32, 1e-4, 512, 8, 256, (1, 5, 15), 20),
    "default": DLMScale(NetSize(4, 4, 128), 4000, 32, 2e-3, 200, 32, 1e-4, 1024, 8, 512, (1, 3, 5, 15), 100),
    "gpu": DLMScale(NetSize(4, 4, 128), 4000, 32, 2e-3, 2000, 64, 1e-4, 8192, 8, 4096, (1, 2, 3, 5, 8, 15), 1000),
}


def dlm_scale(scale: str | Scale | None = None) -> DLMScale:
    return DLM_SCALES[get_scale(scale).name]


def base_dir() -> Path:
    """The committed base (every scale reads it: the scales' students differ, not the base)."""
    return TEACHERS_DIR / "llm_dlm_mult_ci"


class DiffusionLMTask:
    """The task (two-digit products with the chain), the base masked-diffusion GPT read in two views, the
    fixed evaluation, and TAD's trajectory pool.

    ``base``: ``"committed"`` (default: the project's checkpoint, see the module docstring), ``"train"``
    (trained here for ``base_steps``, once a seed: minutes at ci), or a GPT. ``evaluate(model, tpf)`` is
    the student view's exact match at ``tpf`` tokens per forward (confidence-ordered unmasking, greedy);
    ``privileged=True`` the teacher view's."""

    def __init__(self, scale: str | Scale | None = None, dscale: DLMScale | None = None, seed: int = 0,
                 progress: bool = True, base="committed", steps: int | None = None, eval_n: int | None = None):
        self.scale = get_scale(scale)
        self.ds = dscale or dlm_scale(self.scale)
        self.task = get_task("mult", **SELF_TASKS["mult"])
        self.tok = self.task.tokenizer
        self.mask_id = self.tok.pad_id  # never inside a completion (see diffusion.py)
        self.n = self.task.max_new_tokens  # completion positions, the end token included
        self.width = self.n - 1  # the reference in the teacher view, without its end token
        self.block = self.task.prompt_len + len(MARK) + self.width + self.n
        self.steps, self.batch, self.lr = steps or self.ds.steps, self.ds.batch, self.ds.lr
        self.eval_n = eval_n or self.ds.eval_n
        self.seed, self.progress, self.device = seed, progress, self.scale.device
        self._base_arg, self._bases, self._pools, self._soft = base, {}, {}, {}
        self.name = "dlm:mult"

    # ---------------------------------------------------------------- the network and the base
    def new_model(self) -> GPT:
        s = self.ds.base
        return GPT(GPTConfig(self.tok.vocab_size, self.block, s.n_layer, s.n_head, s.n_embd, causal=False))

    def train_base(self, net: GPT, steps: int | None = None, progress: bool | None = None) -> dict:
        """MDLM's loss (:func:`~distill_lab.llm.diffusion.mdlm_loss`) on both views: each batch
        ``1 - view_share`` student prompts and ``view_share`` teacher prompts reading a share of the reference
        drawn uniformly (so that the teacher view reads whatever share it is given), fresh training problems
        every step, AdamW with warm-up and cosine decay."""
        steps = steps or self.ds.base_steps
        opt = torch.optim.AdamW(net.parameters(), lr=self.ds.base_lr, betas=(0.9, 0.98), weight_decay=0.1)
        sched = cosine_lr(opt, steps)
        n_priv = max(1, round(self.ds.view_share * self.ds.base_batch))

        def step(i):
            plain = self.task.problems(self.ds.base_batch - n_priv, "train")
            # the teacher view reads a share of the reference drawn uniformly in [0, 1]: a base whose teacher
            # view always read the whole of it learned to copy, and its student view reached 1.2% exact match at
            # one token a pass; the committed one, trained so, 58.6% (one base each, 4,000 steps)
            priv = [with_reference(p, r, self.width) for p, r in
                    zip(self.task.problems(n_priv, "train"), torch.rand(n_priv).tolist())]
            loss = 0.0
            for probs, view, share in ((plain, False, 1 - self.ds.view_share), (priv, True, self.ds.view_share)):
                out, _ = mdlm_loss(net, self.prompts(probs, view), self.targets(probs), self.mask_id)
                loss = loss + share * out
            update(net, opt, loss, sched)
            return loss

        net.train()
        return fit(step, steps, desc="masked-diffusion base (both views)",
                   progress=self.progress if progress is None else progress)

    def base(self) -> GPT:
        """A fresh copy of the base, in eval mode (which base: see the class docstring; one trained here is
        trained once a seed)."""
        key = self._base_key()
        if key not in self._bases:
            if isinstance(self._base_arg, GPT):
                net = self._base_arg
            elif self._base_arg == "committed":
                net, _ = load_base()
                if net.config.block_size != self.block or net.config.vocab_size != self.tok.vocab_size:
                    raise ValueError("the committed base does not fit this task's block or vocabulary: rebuild it "
                                     f"with `{REBUILD} --scale ci`")
            elif self._base_arg == "train":
                with torch.random.fork_rng():
                    torch.manual_seed(torch.initial_seed())
                    net = self.new_model().to(self.device)
                    self.train_base(net)
            else:
                raise ValueError(f"base is 'committed', 'train' or a GPT, got {self._base_arg!r}")
            self._bases[key] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        with torch.random.fork_rng():  # a copy draws no random numbers: a student's run does not depend on
            net = self.new_model().to(self.device)  # how many copies were made before it
        net.load_state_dict(self._bases[key])
        return net.eval()

    def _base_key(self):
        """Which base :meth:`base` copies: the given GPT, the committed one, or the one trained for this seed."""
        return "given" if isinstance(self._base_arg, GPT) else \
            "committed" if self._base_arg == "committed" else torch.initial_seed()

    def student(self) -> GPT:
        """A fresh copy of the base, in training mode (every recipe starts here)."""
        return self.base().train()

    def teacher(self) -> GPT:
        """The frozen base (its teacher view is TAD's teacher)."""
        net = self.base()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    # ---------------------------------------------------------------- problems and views
    def with_reference(self, problems: list[Problem]) -> list[Problem]:
        return [with_reference(p, 1.0, self.width) for p in problems]

    def problems(self, n: int) -> list[Problem]:
        """``n`` fresh training problems, their teacher view reading the whole reference."""
        return self.with_reference(self.task.problems(n, "train"))

    def prompts(self, problems: list[Problem], privileged: bool = False) -> torch.Tensor:
        return self.task.encode_prompts(problems, privileged=privileged).to(self.device)

    def targets(self, problems: list[Problem]) -> torch.Tensor:
        t = self.task.encode_targets(problems).to(self.device)
        if t.shape[1] != self.n:
            raise ValueError(f"a completion of {self.n} positions was expected, got {t.shape[1]}")
        return t

    @cached_property
    def eval_problems(self) -> list[Problem]:
        return self.with_reference(heldout_problems(self.task, self.eval_n, self.seed))

    # ---------------------------------------------------------------- measuring
    @torch.no_grad()
    def generate(self, model, problems: list[Problem], tpf: int, privileged: bool = False, batch: int = 256,
                 temperature: float = 0.0, generator: torch.Generator | None = None,
                 first: list[torch.Tensor] | None = None, keep_logits: bool = False) -> Trajectory:
        """Unmask the completions of ``problems`` (:func:`~distill_lab.llm.diffusion.unmask_sample`,
        confidence order), ``batch`` problems at a time; one :class:`Trajectory` for all. ``first``: the
        logits of the first pass of each batch (:meth:`first_pass`), used instead of running that pass;
        ``keep_logits``: the trajectory keeps every pass's logits."""
        was = model.training
        model.eval()
        extra = {"keep_logits": True} if keep_logits else {}
        parts = [unmask_sample(model, self.prompts(problems[i:i + batch], privileged), self.n, self.mask_id, tpf,
                               temperature, generator=generator,
                               **({} if first is None else {"first_logits": first[i // batch]}), **extra)
                 for i in range(0, len(problems), batch)]
        model.train(was)
        return Trajectory(torch.cat([p.tokens for p in parts]), torch.cat([p.reveal_step for p in parts]),
                          parts[0].forwards, torch.cat([p.logits for p in parts]) if keep_logits else None)

    @torch.no_grad()
    def first_pass(self, model, problems: list[Problem], privileged: bool = False, batch: int = 256) -> list[torch.Tensor]:
        """The logits of decoding's first pass, on the all-masked completions of ``problems``, ``batch`` at a
        time: the same at every tokens per forward (one pass is the whole decoding at ``tpf >= n``)."""
        was = model.training
        model.eval()
        out = []
        for i in range(0, len(problems), batch):
            prompts = self.prompts(problems[i:i + batch], privileged)
            x = torch.full((prompts.shape[0], self.n), self.mask_id, dtype=torch.long, device=prompts.device)
            out.append(denoiser_logits(model, prompts, x))
        model.train(was)
        return out

    def rewards(self, problems: list[Problem], tokens: torch.Tensor) -> torch.Tensor:
        """1 for an exactly right completion, else 0 (the task's checker)."""
        texts = self.task.decode_completions(tokens)
        return torch.tensor([float(self.task.check(p, t)) for p, t in zip(problems, texts)], device=tokens.device)

    def evaluate(self, model, tpf: int = 1, privileged: bool = False, first: list[torch.Tensor] | None = None) -> float:
        """Greedy exact match (percent) on the held-out problems at ``tpf`` tokens per forward (``first``:
        :meth:`first_pass` on them, if already run)."""
        tr = self.generate(model, self.eval_problems, tpf, privileged, first=first)
        return 100.0 * float(self.rewards(self.eval_problems, tr.tokens).mean())

    def curve(self, model, tpfs=None, privileged: bool = False) -> dict[int, float]:
        """Exact match at each of ``tpfs`` (default the scale's) tokens per forward. The first pass, the same
        at every speed, runs once for all of them."""
        tpfs = tpfs or self.ds.tpfs
        first = self.first_pass(model, self.eval_problems, privileged) if len(tpfs) > 1 else None
        return {t: self.evaluate(model, t, privileged, first) for t in tpfs}

    # ---------------------------------------------------------------- TAD's data
    def trajectories(self, rho: float = 1.0) -> tuple[list[Problem], Trajectory]:
        """TAD's data construction: ``pool`` training problems (fixed by the experiment's seed) decoded by
        the frozen base's **teacher view** reading the first ``rho`` of the reference (1: the whole of it),
        one token a forward, most confident first; each position's reveal step is kept. Made once a ``rho``.
        The teacher view's logits at every pass of this decoding are TAD's soft targets at those states: they
        are kept for :meth:`trajectory_teacher_logits`."""
        if rho not in self._pools:
            g = torch.Generator().manual_seed(20_000 + self.seed)
            probs = [with_reference(p, rho, self.width) for p in self.task.problems(self.ds.pool, "train", g)]
            tr = self.generate(self.teacher(), probs, 1, privileged=True, keep_logits=True)
            # pass s read the state before pass s: the teacher view's logits there are the soft target
            self._soft[(rho, self._base_key())] = (torch.ones(tr.logits.shape[:2], dtype=torch.bool,
                                                              device=tr.logits.device), tr.logits)
            self._pools[rho] = (probs, replace(tr, logits=None))
        return self._pools[rho]

    @torch.no_grad()
    def trajectory_teacher_logits(self, teacher, idx: torch.Tensor, s: torch.Tensor, rho: float = 1.0) -> torch.Tensor:
        """TAD's soft targets ``[B, n, V]``: ``teacher``'s view (the frozen base, reading the first ``rho`` of
        the reference) at state ``s [B]`` of the pool's trajectories ``idx [B]`` (:meth:`trajectories`). The
        base and the states are fixed, so each (trajectory, state) is scored once, the first time a batch
        draws it, and kept: a run draws the same states again, and so do the experiment's other runs (seeds,
        ``k``); the teacher view's own decoding of the pool (:meth:`trajectories`) scored every one of them
        already. The same numbers as scoring the batch (a row's logits do not depend on the other rows)."""
        probs, traj = self.trajectories(rho)
        key = (rho, self._base_key())
        if key not in self._soft:
            self._soft[key] = (torch.zeros(len(probs), traj.forwards, dtype=torch.bool, device=traj.tokens.device), None)
        done, table = self._soft[key]
        s = s.to(done.device)
        new = ~done[idx, s]
        if bool(new.any()):
            ni, ns = idx[new], s[new]
            state, _, _ = trajectory_state(traj.tokens[ni], traj.reveal_step[ni], ns, self.mask_id)
            out = denoiser_logits(teacher, self.prompts([probs[j] for j in ni.tolist()], True), state)
            if table is None:
                table = torch.zeros(len(probs), traj.forwards, *out.shape[1:], dtype=out.dtype, device=out.device)
            table[ni, ns] = out
            done[ni, ns] = True
            self._soft[key] = (done, table)
        return table[idx, s]

    def fit(self, step, n_steps: int, desc: str) -> dict:
        return fit(step, n_steps, desc=f"{self.name} {desc}", progress=self.progress)

    def __repr__(self):
        return (f"DiffusionLMTask(mult 2x2, scale={self.scale.name!r}, base {self.ds.base}, {self.steps} steps x "
                f"{self.batch}, lr {self.lr}, TPFs {self.ds.tpfs})")


# ============================================================================ states of a trajectory
def trajectory_state(tokens: torch.Tensor, reveal_step: torch.Tensor, s: torch.Tensor, mask_id: int):
    """The state of decoding trajectories before pass ``s [B]``: positions revealed at an earlier pass
    hold their token, the rest the mask. Returns ``(state, masked, steps_to_reveal)``, the last the
    passes until each masked position is revealed (1: at the next pass)."""
    s = s.to(reveal_step.device)[:, None]
    masked = reveal_step >= s
    state = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
    return state, masked, torch.where(masked, reveal_step - s + 1, torch.ones_like(reveal_step))


def _optimiser(student, lr: float, steps: int):
    """The students' AdamW with the base's warm-up and cosine decay (a fresh Adam at a constant rate moves
    every weight of the converged base by about the rate each step, gradient or not)."""
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.1)
    return opt, cosine_lr(opt, steps)


def _train(exp, name: str, desc: str, steps: int, lr: float, batch_loss):
    """The one loop of the track's recipes: a fresh copy of the base (:meth:`DiffusionLMTask.student`),
    :func:`_optimiser`, and ``steps`` steps of ``batch_loss(student) -> (loss, info)``. Returns the student
    (eval mode) with ``train_info``: steps, seconds, the logged history, the recipe's name."""
    student = exp.student()
    opt, sched = _optimiser(student, lr, steps)

    def step(i):
        loss, info = batch_loss(student)
        update(student, opt, loss, sched)
        return {"loss": loss, **info}

    hist = exp.fit(step, steps, desc)
    student.train_info = {"steps": hist["steps"], "seconds": hist["seconds"], "history": hist, "name": name}
    return student.eval()


# ============================================================================ recipes
@recipe("mdlm_sft", tracks=DLM, family="baseline", paper=MDLM, baseline=True)
def mdlm_sft(exp: DiffusionLMTask, **overrides):
    """The baseline without a teacher: MDLM's loss on the references in the student view (random masking
    rates and positions), the students' budget."""
    o = with_options(overrides, "mdlm_sft", steps=None, lr=None)

    def batch_loss(student):
        probs = exp.problems(exp.batch)
        loss, info = mdlm_loss(student, exp.prompts(probs), exp.targets(probs), exp.mask_id)
        return loss, {"masked_share": info["masked_share"]}

    return _train(exp, "mdlm_sft", "mdlm_sft", o["steps"] or exp.steps, o["lr"] or exp.lr, batch_loss)


@recipe("tad", tracks=DLM, family="diffusion LM", paper=TAD)
def tad(exp: DiffusionLMTask, **overrides):
    """TAD (see :func:`~distill_lab.llm.diffusion.tad_loss`): each step draws ``batch`` trajectories of
    the pool (:meth:`DiffusionLMTask.trajectories`) and one state of each, uniform over its passes;
    the student view reads the state, the frozen base's teacher view the same state (reading the first
    ``rho`` of the reference: 1, the whole of it, is TAD's "ground-truth response"); positions revealed within ``k`` passes are trained on the trajectory's token (cross-entropy),
    later ones on the teacher view's distribution (KL). ``k=0``: KL only; ``k=math.inf``: cross-entropy
    only. Stop-gradient: the teacher view and the trajectories."""
    o = with_options(overrides, "tad", steps=None, lr=None, k=2, rho=1.0)
    k = o["k"]
    if k < 0:
        raise ValueError(f"k counts passes ahead (>= 0; math.inf: cross-entropy only), got {k}")
    probs, traj = exp.trajectories(o["rho"])
    teacher = exp.teacher()

    def batch_loss(student):
        idx = torch.randint(0, len(probs), (exp.batch,))
        batch = [probs[j] for j in idx.tolist()]
        tokens, reveal = traj.tokens[idx], traj.reveal_step[idx]
        s = torch.randint(0, traj.forwards, (exp.batch,))
        state, masked, to_reveal = trajectory_state(tokens, reveal, s, exp.mask_id)
        s_logits = denoiser_logits(student, exp.prompts(batch), state)
        if math.isinf(k):  # cross-entropy only: no soft position, the teacher pass is not needed
            t_logits = s_logits.detach()
        else:  # the teacher view at these states: its own decoding of the pool scored them, kept and looked up
            t_logits = exp.trajectory_teacher_logits(teacher, idx, s, o["rho"])
        return tad_loss(s_logits, t_logits, tokens, to_reveal, k, masked)

    return _train(exp, "tad", f"tad k={k}", o["steps"] or exp.steps, o["lr"] or exp.lr, batch_loss)


def _rl(exp: DiffusionLMTask, name: str, overrides: dict, loss_of, **defaults):
    """The RL loop GDSD and the ELBO policy gradient share: ``batch / group`` prompts, ``group`` samples
    each from the student view (temperature 1, one token a forward), binary rewards, group advantages;
    then one masked state of each sample (masking rate ``t ~ U(T_MIN, 1)``), scored by the student, and
    ``loss_of(logits, tokens, advantage, t, masked, **options)`` (``defaults``: the loss's own options);
    ``rl_steps`` steps at ``RL_LR`` times the experiment's learning rate unless ``steps`` and ``lr`` say
    otherwise. ``train_info["rewards"]``: every step's mean reward (the history logs only some steps)."""
    o = with_options(overrides, name, steps=None, lr=None, **defaults)
    lr, steps = o.pop("lr") or RL_LR * exp.lr, o.pop("steps") or exp.ds.rl_steps
    G = exp.ds.group
    gen = torch.Generator().manual_seed(torch.initial_seed() + 1)
    rewards = []

    def batch_loss(student):
        probs = [p for p in exp.problems(exp.batch // G) for _ in range(G)]
        tr = exp.generate(student, probs, 1, temperature=1.0, generator=gen)
        r = exp.rewards(probs, tr.tokens)
        adv = group_advantages(r, G)
        B = len(probs)
        t = T_MIN + (1 - T_MIN) * torch.rand(B)
        masked = torch.rand(B, exp.n) < t[:, None]
        state = torch.where(masked, torch.full_like(tr.tokens, exp.mask_id), tr.tokens)
        loss, info = loss_of(denoiser_logits(student, exp.prompts(probs), state), tr.tokens, adv, t, masked, **o)
        rewards.append(float(r.mean()))
        return loss, {"reward": rewards[-1], **info}

    student = _train(exp, name, name, steps, lr, batch_loss)
    student.train_info["rewards"] = rewards
    return student


def _gdsd_loss(logits, tokens, adv, t, masked, beta):
    return gdsd_loss(logits, tokens, adv, beta, masked)


def _elbo_loss(logits, tokens, adv, t, masked):
    return elbo_pg_loss(logits, tokens, adv, t, masked)


@recipe("gdsd", tracks=DLM, family="diffusion LM", paper=GDSD)
def gdsd(exp: DiffusionLMTask, **overrides):
    """GDSD (:func:`~distill_lab.llm.diffusion.gdsd_loss`) in the shared RL loop (:func:`_rl`): the
    denoiser's logit of each sampled token is pulled to its own (stop-gradient) value plus the sample's
    advantage over ``beta``. Options ``beta`` (1), ``steps``, ``lr``."""
    return _rl(exp, "gdsd", overrides, _gdsd_loss, beta=1.0)


@recipe("elbo_pg", tracks=DLM, family="diffusion LM", paper=GDSD + "; the ELBO-surrogate policy gradient it replaces")
def elbo_pg(exp: DiffusionLMTask, **overrides):
    """The ELBO-surrogate policy gradient (:func:`~distill_lab.llm.diffusion.elbo_pg_loss`) in the same
    RL loop, samples and rewards as ``gdsd``."""
    return _rl(exp, "elbo_pg", overrides, _elbo_loss)


# ============================================================================ the committed base
class DLMBaseUnavailable(FileNotFoundError):
    """The committed masked-diffusion base is missing or altered."""


def load_base(path: str | Path | None = None, verify: bool = True) -> tuple[GPT, dict]:
    path = Path(path) if path is not None else base_dir()
    manifest = check_folder(path, FILES, verify, "masked-diffusion base of the llm_dlm track", DLMBaseUnavailable,
                            f"{REBUILD} --scale ci", False, required=("net",))
    with torch.random.fork_rng():  # loading draws no random numbers (the initial weights are overwritten)
        net = GPT(GPTConfig(**manifest["net"]))
    net.load_state_dict(float32_state(torch.load(path / "base.pt", map_location="cpu", weights_only=True)))
    return net.eval(), manifest
