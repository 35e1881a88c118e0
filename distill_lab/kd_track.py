"""The CIFAR-10 knowledge-distillation track as one experiment: data, teacher, student, budget, and
one recipe a method.

:class:`CifarKD` fixes everything a comparison must hold equal -- the labelled training images (a
class-balanced subset at ``ci``), the test images, the student architecture, the number of epochs,
batch size, learning-rate schedule and augmentation -- and reads the committed teacher's cached logits
(:mod:`distill_lab.teacher_cifar`), so no student ever runs the teacher. Each method of
:mod:`distill_lab.kd` gets a *recipe* here, ``recipe(exp, seed, **options) -> model`` registered with
:func:`kd_recipe`; :meth:`CifarKD.run` trains it (or loads the same run from the cache), evaluates it
and returns one result. The bench (``python -m distill_lab bench cifar``) and labs 10 to 13 call the
same recipes.

Budgets per scale (``DISTILL_LAB_SCALE`` or ``scale=``):

* ``ci``: ``tiny_cnn`` (24k parameters) on 2,500 labelled images (250 a class), 20 epochs of batch
  128, tested on 2,000 images (200 a class); about 11 s a run on one CPU thread.
* ``default``: ``tiny_cnn`` on 5,000 labelled images (500 a class), 30 epochs, all 10,000 test images.
* ``gpu``: ``resnet8x4`` on all 50,000 images, 30 epochs.

Results are cached per (method, options, seed, configuration, teacher hash) in
:func:`distill_lab.train.cache_dir`: labs that share a baseline train it once.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cifar import batch_crop, batch_flip, load_cifar10, normalize
from .cifar_models import get_model
from .classify import (IndexedLoader, kd, metrics_from_logits, predict_logits, stratified_indices,
                       train_classifier)
from .kd import (DINOHead, anchored_distill_loss, collapse_metrics, consensus_loss, ema_self_distill_loss, generation_kls,
                 linear_probe, paced_kd_loss, random_teacher_loss, rotate_batch, self_distill_loss,
                 sla_aggregate, sla_sd_loss, taid_loss, TAIDSchedule)
from .models import ema_update
from .scale import Scale, get_scale
from .teacher_cifar import DEFAULT_DIR, load_or_train_teacher, load_teacher
from .train import cache_dir, cache_key, seed_everything

TEACHERS_DIR = DEFAULT_DIR.parent
# the two extra teachers of the consensus method (other seeds, 6 epochs; see their manifests)
CONSENSUS_TEACHERS = ("cifar10_b", "cifar10_c")
# the label-smoothed counter-example of lab 10
SMOOTHED_TEACHER = "cifar10_ls"


# ------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class KDConfig:
    """What every run of one comparison shares."""

    n_per_class: int | None  # labelled training images per class (None: all 5,000)
    test_per_class: int | None  # test images per class (None: all 1,000)
    student: str
    epochs: float
    batch_size: int
    lr: float
    seeds: tuple[int, ...]
    T: float = 4.0  # Hinton temperature, shared by the KD-style methods
    alpha: float = 0.9  # weight of the distillation term; 1 - alpha weighs the label cross-entropy
    subset_seed: int = 0


def kd_config(scale: str | Scale | None = None, **overrides) -> KDConfig:
    """The :class:`KDConfig` of a scale; keyword arguments override single fields."""
    sc = get_scale(scale)
    cfg = KDConfig(
        n_per_class=sc.pick(ci=250, default=500, gpu=None),
        test_per_class=sc.pick(ci=200, default=None, gpu=None),
        student=sc.pick(ci="tiny_cnn", default="tiny_cnn", gpu="resnet8x4"),
        epochs=sc.pick(ci=20, default=30, gpu=30),
        batch_size=sc.pick(ci=128, default=128, gpu=256),
        lr=0.05,
        seeds=(0, 1, 2),
    )
    unknown = set(overrides) - set(asdict(cfg))
    if unknown:
        raise ValueError(f"unknown KDConfig field(s) {sorted(unknown)}; fields: {', '.join(asdict(cfg))}")
    if "seeds" in overrides:
        overrides["seeds"] = tuple(overrides["seeds"])
    return replace(cfg, **overrides)


# ------------------------------------------------------------------ recipes
@dataclass(frozen=True)
class KDRecipe:
    name: str
    family: str
    paper: str
    metric: str  # "acc" (test accuracy) or "probe_acc" (linear probe on frozen features)
    train: Callable
    defaults: dict
    build: Callable | None = None  # build(exp, **options) -> the untrained architecture (cache reloads)


KD_RECIPES: dict[str, KDRecipe] = {}


def kd_recipe(name: str, family: str, paper: str, metric: str = "acc", build: Callable | None = None, **defaults):
    """Register ``train(exp, seed, **options) -> (model, extra)`` under ``name``; ``defaults`` are
    the options the bench uses; ``build(exp, **options)`` makes the untrained architecture when it is
    not the plain student (used to reload a cached run)."""

    def deco(fn):
        if name in KD_RECIPES:
            raise ValueError(f"KD recipe {name!r} is registered twice")
        KD_RECIPES[name] = KDRecipe(name, family, paper, metric, fn, dict(defaults), build)
        return fn

    return deco


def get_kd_recipe(name: str) -> KDRecipe:
    if name not in KD_RECIPES:
        raise ValueError(f"unknown KD method {name!r}; known methods: {', '.join(KD_RECIPES)}")
    return KD_RECIPES[name]


# ------------------------------------------------------------------ the experiment
class CifarKD:
    """One CIFAR-10 distillation comparison: fixed data, teacher, student and budget.

    Parameters
    ----------
    scale : ``ci``, ``default`` or ``gpu`` (default: ``$DISTILL_LAB_SCALE``).
    data : a dict from :func:`~distill_lab.cifar.load_cifar10` (default: load it).
    teacher_dir : the committed teacher's folder; retrained by
        :func:`~distill_lab.teacher_cifar.load_or_train_teacher` when missing or corrupt.
    cache : reuse trained students from :func:`~distill_lab.train.cache_dir` (``False``: always train).
    progress : tqdm bars while training.
    overrides : :class:`KDConfig` fields (``epochs=``, ``seeds=``, ``student=``, ...).

    Attributes
    ----------
    x, y : the labelled training images (uint8 ``[N, 3, 32, 32]``) and labels; ``idx`` their positions
        in the full training set.
    test_x, test_y : the test images every student is judged on.
    teacher_logits : float32 ``[2, N, 10]``, the teacher on ``x`` (plain, mirrored).
    teacher_metrics : the teacher's ``{"acc", "nll", "ece"}`` on ``test_x``.
    """

    def __init__(self, scale=None, data: dict | None = None, teacher_dir=DEFAULT_DIR, cache: bool = True,
                 progress: bool = True, **overrides):
        self.scale = get_scale(scale)
        self.cfg = kd_config(self.scale, **overrides)
        self.device = self.scale.device
        self.cache, self.progress = cache, progress
        self.data = data if data is not None else load_cifar10()
        self.idx = self._indices("train", self.cfg.n_per_class)
        self.test_idx = self._indices("test", self.cfg.test_per_class)
        self.x, self.y = self.data["train_x"][self.idx], self.data["train_y"][self.idx]
        self.test_x, self.test_y = self.data["test_x"][self.test_idx], self.data["test_y"][self.test_idx]
        self.teacher = load_or_train_teacher(teacher_dir, data=self.data, progress=progress)
        self.teacher_logits = self.teacher["train_logits"][:, self.idx].float()
        self.teacher_test_logits = self.teacher["test_logits"][0][self.test_idx].float()
        self.teacher_metrics = metrics_from_logits(self.teacher_test_logits, self.test_y)
        self._teacher_id = self.teacher["manifest"]["files"]["train_logits.pt"]["sha256"][:16]

    def _indices(self, split: str, n_per_class):
        y = self.data[f"{split}_y"]
        if n_per_class is None:
            return torch.arange(len(y))
        return stratified_indices(y, n_per_class, seed=self.cfg.subset_seed)

    def __repr__(self):
        return (f"CifarKD(scale={self.scale.name}, student={self.cfg.student}, {len(self.x)} labelled "
                f"images, {len(self.test_x)} test, {self.cfg.epochs:g} epochs, teacher "
                f"{100 * self.teacher_metrics['acc']:.1f}%)")

    # ---------------------------------------------------------------- building blocks for recipes
    def other_teacher(self, name: str) -> dict:
        """Another committed teacher of ``datasets/teachers/<name>``: ``{"manifest", "train_logits"
        [2, N, 10] on this experiment's images, "test_metrics"}``. Raises
        :class:`~distill_lab.teacher_cifar.TeacherUnavailable` with the command that rebuilds it."""
        t = load_teacher(TEACHERS_DIR / name)
        return {"manifest": t["manifest"], "train_logits": t["train_logits"][:, self.idx].float(),
                "test_metrics": metrics_from_logits(t["test_logits"][0][self.test_idx].float(), self.test_y)}

    def new_student(self, seed: int) -> nn.Module:
        """A freshly initialised student; its initialisation depends on ``seed`` only."""
        seed_everything(seed)
        return get_model(self.cfg.student)

    def fit(self, model: nn.Module, seed: int, desc: str = "student", **kwargs) -> dict:
        """:func:`~distill_lab.classify.train_classifier` on the labelled images with this
        experiment's budget; ``kwargs`` (``loss_fn``, ``teacher_logits``, ``batch_loss``,
        ``after_step``) pick the method."""
        loader = IndexedLoader(self.x, self.y, self.cfg.batch_size, train=True, seed=seed, device=self.device)
        hist = train_classifier(model, loader, epochs=self.cfg.epochs, lr=self.cfg.lr, seed=seed,
                                progress=self.progress, desc=desc, **kwargs)
        self.last_history = hist
        return hist

    @property
    def n_steps(self) -> int:
        return max(1, round(self.cfg.epochs * (len(self.x) // self.cfg.batch_size)))

    def train_logits(self, model: nn.Module) -> torch.Tensor:
        """``[2, N, C]`` logits of ``model`` on the labelled images, plain and mirrored (what a next
        generation distils from)."""
        return torch.stack([predict_logits(model, self.x, flip=f) for f in (False, True)])

    def evaluate(self, model: nn.Module) -> dict:
        """``{"acc", "nll", "ece", "agreement"}`` on the test images (agreement: top-1 matches with
        the teacher)."""
        logits = self.test_logits(model)
        m = metrics_from_logits(logits, self.test_y)
        m["agreement"] = float((logits.argmax(-1) == self.teacher_test_logits.argmax(-1)).double().mean())
        return m

    def test_logits(self, model: nn.Module) -> torch.Tensor:
        """``[N_test, C]`` logits of ``model`` on the test images."""
        return predict_logits(model, self.test_x)

    def features(self, model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """``model.features`` on uint8 images, in eval mode, without gradients: ``[N, D]``."""
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out.append(model.features(normalize(x[i:i + batch_size].to(device))).float().cpu())
        model.train(was)
        return torch.cat(out)

    def probe(self, model: nn.Module) -> float:
        """Linear-probe accuracy (:func:`~distill_lab.kd.linear_probe`) of ``model``'s frozen features:
        fit on the labelled images, scored on the test images."""
        return linear_probe(self.features(model, self.x), self.y, self.features(model, self.test_x), self.test_y)

    def pixel_probe(self) -> float:
        """The same linear probe on raw pixels: the floor any learned feature should beat."""
        return linear_probe(self.x.float() / 255, self.y, self.test_x.float() / 255, self.test_y)

    # ---------------------------------------------------------------- running
    def _config(self) -> dict:
        return {**asdict(self.cfg), "teacher": self._teacher_id, "n": len(self.x), "test_n": len(self.test_x)}

    def run(self, method: str, seed: int, **options) -> dict:
        """Train ``method`` (a name in :data:`KD_RECIPES`) with ``seed``, or load that exact run from
        the cache; return ``{"method", "seed", "options", "model", "metrics", "value", "metric",
        "seconds", "extra"}``. ``value`` is the recipe's metric (test accuracy, or linear-probe
        accuracy for representation methods); ``seconds`` the training time when it was trained."""
        rec = get_kd_recipe(method)
        opts = {**rec.defaults, **options}
        key = cache_key(method=method, seed=seed, options=opts, code=_CODE_VERSION, **self._config())
        path = cache_dir() / f"kd-{method}-{key}.pt"
        model = extra = None
        if self.cache and path.exists():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=False)
                model = rec.build(self, **opts) if rec.build else get_model(self.cfg.student)
                model.load_state_dict(saved["state"])
                seconds, extra = saved["seconds"], saved["extra"]
            except Exception as err:  # a stale or corrupt file: say so and retrain
                print(f"could not load {path.name} ({err}); retraining")
                model = None
        if model is None:
            t0 = time.perf_counter()
            self.last_history = None
            model, extra = rec.train(self, seed, **opts)
            seconds = time.perf_counter() - t0
            # the (last) training run's logged losses, every 50 steps
            extra.setdefault("history", self.last_history)
            if self.cache:
                tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent runs never share a file
                torch.save({"state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                            "seconds": seconds, "extra": extra}, tmp)
                tmp.replace(path)
        model.eval()
        metrics = self.evaluate(model)
        value = extra.get("probe_acc") if rec.metric == "probe_acc" else metrics["acc"]
        return {"method": method, "seed": seed, "options": opts, "model": model, "metrics": metrics,
                "value": value, "metric": rec.metric, "seconds": seconds, "extra": extra}

    def baseline(self, seed: int) -> dict:
        """The label-only student of ``seed`` (:meth:`run` of ``"labels"``)."""
        return self.run("labels", seed)

    def runs(self, method: str, seeds=None, **options) -> list[dict]:
        """:meth:`run` for each seed (default: the configuration's seeds)."""
        return [self.run(method, s, **options) for s in (self.cfg.seeds if seeds is None else seeds)]


def _code_version() -> str:
    """A hash of the sources a trained student depends on, so editing them invalidates cached runs."""
    import hashlib
    from . import classify, kd as kd_mod, cifar_models
    h = hashlib.sha256()
    for mod in (classify, kd_mod, cifar_models):
        h.update(Path(mod.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:12]


_CODE_VERSION = _code_version()


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = [float(v) for v in values]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ------------------------------------------------------------------ the recipes
def _mix_ce(loss_info, logits, labels, alpha):
    """``alpha * distillation + (1 - alpha) * CE(logits, labels)`` for losses without a CE term."""
    loss, info = loss_info
    ce = F.cross_entropy(logits, labels)
    return alpha * loss + (1 - alpha) * ce, {**info, "ce": ce.detach()}


@kd_recipe("labels", "baseline", "cross-entropy on the labels alone (the baseline every row is compared with)")
def train_labels(exp: CifarKD, seed: int):
    model = exp.new_student(seed)
    exp.fit(model, seed, desc=f"labels seed {seed}")
    return model, {}


@kd_recipe("hinton_kd", "knowledge distillation", "Hinton, Vinyals & Dean 2015, eq. for the soft-target loss",
           T=None, alpha=None)
def train_hinton_kd(exp: CifarKD, seed: int, T=None, alpha=None):
    """:func:`distill_lab.kd.kd_loss` from the committed teacher's cached logits:
    ``alpha T^2 KL(teacher_T || student_T) + (1 - alpha) CE``."""
    T, alpha = T or exp.cfg.T, exp.cfg.alpha if alpha is None else alpha
    model = exp.new_student(seed)
    exp.fit(model, seed, desc=f"KD seed {seed}", loss_fn=kd(T, alpha), teacher_logits=exp.teacher_logits)
    return model, {"T": T, "alpha": alpha}


@kd_recipe("smoothed_teacher_kd", "knowledge distillation",
           "Hinton et al. 2015 from a label-smoothed teacher (Mueller, Kornblith & Hinton 2019)", T=None, alpha=None)
def train_smoothed_teacher_kd(exp: CifarKD, seed: int, T=None, alpha=None):
    """Hinton KD, same settings, from the teacher trained with label smoothing 0.2: the trap."""
    T, alpha = T or exp.cfg.T, exp.cfg.alpha if alpha is None else alpha
    logits = exp.other_teacher(SMOOTHED_TEACHER)["train_logits"]
    model = exp.new_student(seed)
    exp.fit(model, seed, desc=f"smoothed-teacher KD seed {seed}", loss_fn=kd(T, alpha), teacher_logits=logits)
    return model, {"T": T, "alpha": alpha}


def _generations(exp: CifarKD, seed: int, generations: int, teacher_of: Callable, loss_fn: Callable, desc: str):
    """Sequential self-distillation. Generation 0 is the label-only student of ``seed``; generation
    k+1, a fresh student (initialisation seed ``seed + 1000 (k+1)``, same batches), trains with
    ``loss_fn`` on ``teacher_of(p_k)``, where ``p_k [2, N, C]`` are generation k's probabilities on the
    labelled images (plain, mirrored). Returns the last model, every generation's test metrics, and
    the ``p_k``."""
    model = exp.baseline(seed)["model"]
    gens, probs = [exp.evaluate(model)], [exp.train_logits(model).softmax(-1)]
    for k in range(1, generations + 1):
        model = exp.new_student(seed + 1000 * k)
        exp.fit(model, seed, desc=f"{desc} gen {k} seed {seed}", loss_fn=loss_fn, teacher_logits=teacher_of(probs[-1]))
        gens.append(exp.evaluate(model))
        probs.append(exp.train_logits(model).softmax(-1))
    return model, gens, probs


@kd_recipe("born_again", "self-distillation",
           "Furlanello et al. 2018 (born-again networks); ground-truth weight of Borup & Andersen 2021",
           generations=1, gt_weight=0.0, T=1.0)
def train_born_again(exp: CifarKD, seed: int, generations=1, gt_weight=0.0, T=1.0):
    """Born-again generations: each generation, same architecture, distils the previous one with
    :func:`distill_lab.kd.self_distill_loss` (target ``w onehot(y) + (1 - w) p_prev``); ``gt_weight``
    ``w = 0`` is pure born-again, ``w > 0`` the ground-truth weighting of "Even your teacher needs
    guidance". Generation 0 is the label-only baseline of the same seed. ``extra["generations"]``:
    each generation's test metrics."""
    model, gens, _ = _generations(
        exp, seed, generations, teacher_of=lambda p: p.log(),
        loss_fn=lambda s, y, t: self_distill_loss(s, t.softmax(-1), y, gt_weight, T), desc="born-again")
    return model, {"generations": gens}


@kd_recipe("anchored", "self-distillation",
           "Flouro & Chadwick 2026, recursive meta-distillation anchored to the base teacher",
           generations=2, lam=0.5, T=1.0)
def train_anchored(exp: CifarKD, seed: int, generations=2, lam=0.5, T=1.0):
    """Recursive distillation anchored to the committed (base) teacher: generation k+1 distils
    :func:`distill_lab.kd.anchored_target` ``(q_k, p_base, lam)``. Generation 0 is the label-only
    baseline. ``extra["kl"]`` is :func:`~distill_lab.kd.generation_kls` of the generations'
    probabilities on the (plain) labelled images against the teacher's."""
    base = exp.teacher_logits.softmax(-1)  # [2, N, C]
    # each batch needs q_k and p_base of the same (flip, image): carry both, stacked on dim 2
    model, gens, probs = _generations(
        exp, seed, generations, teacher_of=lambda p: torch.stack([p.log(), base.log()], dim=2),
        loss_fn=lambda s, y, t: anchored_distill_loss(s, t[:, 0].softmax(-1), t[:, 1].softmax(-1), lam, T),
        desc="anchored")
    return model, {"generations": gens, "kl": generation_kls([p[0] for p in probs], base[0]), "lam": lam}


@kd_recipe("taid", "adaptive distillation", "Shing et al. ICLR 2025 (TAID), adaptive interpolation",
           t_start=0.4, schedule_alpha=1e-2, alpha=None)
def train_taid(exp: CifarKD, seed: int, t_start=0.4, schedule_alpha=1e-2, alpha=None):
    """TAID: the student distils ``softmax((1 - t) stopgrad(s) + t teacher)`` while
    :class:`~distill_lab.kd.TAIDSchedule` moves ``t`` from ``t_start`` to 1; mixed with the label CE
    by ``alpha`` as Hinton KD is. ``schedule_alpha`` is larger than the paper's 5e-4 because a ci run
    has a few hundred steps, not tens of thousands: each step moves ``t`` by about
    ``schedule_alpha / 2 * (1 - t)``, so 1e-2 lets the adaptive part run ahead of the linear floor. ``extra["t"]`` is ``t`` at every step, ``extra["t_linear"]`` the
    linear floor the schedule never falls below."""
    alpha = exp.cfg.alpha if alpha is None else alpha
    sched = TAIDSchedule(exp.n_steps, t_start=t_start, alpha=schedule_alpha)
    ts = []

    def loss_fn(s, y, t):
        ts.append(sched.t)
        out = taid_loss(s, t, sched.t)
        sched.step(float(out[1]["loss"]))  # the schedule follows TAID's own objective
        return _mix_ce(out, s, y, alpha)

    model = exp.new_student(seed)
    exp.fit(model, seed, desc=f"TAID seed {seed}", loss_fn=loss_fn, teacher_logits=exp.teacher_logits)
    return model, {"t": ts, "t_linear": [sched.t_linear(n) for n in range(len(ts))]}


@kd_recipe("paced", "adaptive distillation", "Xu et al. 2026 (PACED), weights p(1-p) of the student's success",
           T=None, alpha=None)
def train_paced(exp: CifarKD, seed: int, T=None, alpha=None):
    """:func:`distill_lab.kd.paced_kd_loss` (KD weighted by ``p (1 - p)`` of the student's probability
    of the true class, under stop-gradient) mixed with the label CE by ``alpha``."""
    T, alpha = T or exp.cfg.T, exp.cfg.alpha if alpha is None else alpha
    model = exp.new_student(seed)
    exp.fit(model, seed, desc=f"PACED seed {seed}", teacher_logits=exp.teacher_logits,
            loss_fn=lambda s, y, t: _mix_ce(paced_kd_loss(s, t, y, T=T), s, y, alpha))
    return model, {"T": T, "alpha": alpha}


@kd_recipe("consensus", "adaptive distillation",
           "multi-teacher consensus weighted by agreement (after AVSD 2026; this lab's rule)", T=None, alpha=None)
def train_consensus(exp: CifarKD, seed: int, T=None, alpha=None):
    """:func:`distill_lab.kd.consensus_loss` over three teachers: the committed one and the two of
    :data:`CONSENSUS_TEACHERS` (other seeds, shorter training)."""
    T, alpha = T or exp.cfg.T, exp.cfg.alpha if alpha is None else alpha
    logits = torch.stack([exp.teacher_logits] + [exp.other_teacher(n)["train_logits"] for n in CONSENSUS_TEACHERS],
                         dim=2)  # [2, N, M, C]
    model = exp.new_student(seed)
    exp.fit(model, seed, desc=f"consensus seed {seed}", teacher_logits=logits,
            loss_fn=lambda s, y, t: consensus_loss(s, t.transpose(0, 1), T=T, alpha=alpha, labels=y))
    return model, {"T": T, "alpha": alpha, "teachers": ["cifar10", *CONSENSUS_TEACHERS]}


# ---- methods with their own forward pass
def _second_view(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Another random crop (zero padding) and flip of an already augmented, normalised batch."""
    b = x.shape[0]
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), device=x.device)
    return batch_flip(batch_crop(x, dy, dx, pad, "zeros"), torch.rand(b, device=x.device) < 0.5)


class Projected(nn.Module):
    """A backbone with a DINO head (:class:`~distill_lab.kd.DINOHead`) on its features; ``forward``
    is the head, ``features`` the backbone's, ``fc`` the backbone's (untrained) classifier."""

    def __init__(self, backbone: nn.Module, out_dim: int = 256, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.backbone = backbone
        self.head = DINOHead(backbone.feature_dim, out_dim, hidden, bottleneck)

    def features(self, x):
        return self.backbone.features(x)

    def project(self, x):
        return self.head(self.backbone.features(x))

    def forward(self, x):  # what evaluate() sees: the backbone's classifier (never trained here)
        return self.backbone(x)


@kd_recipe("random_teacher", "self-supervised distillation",
           "Sarnthein, Bachmann, Anagnostidis & Hofmann, ICML 2023 (random teachers)", metric="probe_acc",
           build=lambda exp, out_dim=256, **_: Projected(get_model(exp.cfg.student), out_dim), out_dim=256, teacher_seed_offset=10_000)
def train_random_teacher(exp: CifarKD, seed: int, out_dim=256, teacher_seed_offset=10_000):
    """Distil a frozen, randomly initialised teacher (backbone + DINO head) into a student of the same
    architecture with :func:`distill_lab.kd.random_teacher_loss`, on two augmented views, no labels.
    Judged by the linear probe of its backbone features (``extra["probe_acc"]``) against the frozen
    teacher's (``extra["teacher_probe_acc"]``) and raw pixels' (``extra["pixel_probe_acc"]``)."""
    seed_everything(seed + teacher_seed_offset)
    teacher = Projected(get_model(exp.cfg.student), out_dim).to(exp.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    seed_everything(seed)
    student = Projected(get_model(exp.cfg.student), out_dim)

    def batch_loss(model, x, y, t):
        with torch.no_grad():
            target = teacher.project(x)
        return random_teacher_loss(model.project(_second_view(x)), target)

    exp.fit(student, seed, desc=f"random teacher seed {seed}", batch_loss=batch_loss)
    return student, {"probe_acc": exp.probe(student), "teacher_probe_acc": exp.probe(teacher),
                     "pixel_probe_acc": exp.pixel_probe()}


class SLANet(nn.Module):
    """A backbone with SLA's joint head (``C * n_rot`` classes: class and rotation) and an ordinary
    ``C``-way head; ``forward`` is the ordinary head (one pass at test time)."""

    def __init__(self, backbone: nn.Module, num_classes: int = 10, n_rot: int = 4):
        super().__init__()
        self.backbone, self.n_rot = backbone, n_rot
        self.joint = nn.Linear(backbone.feature_dim, num_classes * n_rot)
        self.fc = backbone.fc

    def features(self, x):
        return self.backbone.features(x)

    def forward(self, x):
        return self.fc(self.features(x))


@kd_recipe("sla_sd", "self-distillation", "Lee, Hwang & Shin, ICML 2020 (SLA+SD)",
           build=lambda exp, n_rot=4, **_: SLANet(get_model(exp.cfg.student), n_rot=n_rot), n_rot=4)
def train_sla_sd(exp: CifarKD, seed: int, n_rot=4):
    """Self-supervised label augmentation with self-distillation (:func:`distill_lab.kd.sla_sd_loss`):
    each batch is shown in ``n_rot`` rotations, the joint head learns (class, rotation), and its
    aggregated prediction is distilled into the ordinary head, which alone is evaluated.
    ``extra["aggregated_acc"]`` is the test accuracy of the aggregated joint prediction (``n_rot``
    forward passes)."""
    model = SLANet(exp.new_student(seed), n_rot=n_rot)

    def batch_loss(m, x, y, t):
        xr, _ = rotate_batch(x, n_rot)
        f = m.features(xr)
        return sla_sd_loss(m.joint(f), m.fc(f[: x.shape[0]]), y, n_rot)

    exp.fit(model, seed, desc=f"SLA+SD seed {seed}", batch_loss=batch_loss)
    with torch.no_grad():
        model.eval()
        agg = torch.cat([sla_aggregate(model.joint(model.features(rotate_batch(
            normalize(exp.test_x[i:i + 500].to(exp.device)), n_rot)[0])), n_rot).cpu()
            for i in range(0, len(exp.test_x), 500)])
    return model, {"aggregated_acc": float((agg.argmax(-1) == exp.test_y).double().mean())}


class WithProjector(nn.Module):
    """A classifier backbone with a projector MLP (``feature_dim -> 128 -> 64``, SiLU, no BatchNorm)
    on its features, as self-supervised methods put between the backbone and their loss; ``forward``
    is the backbone's classifier, ``project`` the projector's output."""

    def __init__(self, backbone: nn.Module, hidden: int = 128, out: int = 64):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(backbone.feature_dim, hidden), nn.SiLU(), nn.Linear(hidden, out))
        self.fc = backbone.fc

    def features(self, x):
        return self.backbone.features(x)

    def project(self, x):
        return self.projector(self.features(x))

    def forward(self, x):
        return self.fc(self.features(x))


@kd_recipe("ema_sd", "self-distillation",
           "momentum (EMA) self-distillation with a diversity term (Momentum-GS, UniSurg; VICReg's terms)",
           build=lambda exp, **_: WithProjector(get_model(exp.cfg.student)),
           weight=1.0, decay=0.99, diversity_weight=0.1, ce_weight=1.0)
def train_ema_sd(exp: CifarKD, seed: int, weight=1.0, decay=0.99, diversity_weight=0.1, ce_weight=1.0):
    """``ce_weight`` x label CE plus ``weight`` x :func:`distill_lab.kd.ema_self_distill_loss`: the
    projector output of the student on one view regresses onto an EMA copy's on another view
    (stop-gradient), with the feature-diversity term (``diversity_weight``) on the student's projector
    output against collapse. ``ce_weight=0`` is label-free momentum self-distillation, where
    ``diversity_weight=0`` leaves nothing but the target to stop the projector output from shrinking
    to a constant. ``extra``: on the test images, the projector output's ``proj_mean_std`` and
    ``proj_effective_rank``, the backbone features' ``effective_rank``, and the ``probe_acc`` of the
    linear probe on those features. The run's history logs ``mean_std`` (of the projector output,
    per batch) every 50 steps."""
    model = WithProjector(exp.new_student(seed)).to(exp.device)
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)

    def batch_loss(m, x, y, t):
        f = m.features(x)
        z = m.projector(f)
        with torch.no_grad():
            target = ema.project(_second_view(x))
        sd, info = ema_self_distill_loss(z, target, diversity_weight=diversity_weight)
        ce = F.cross_entropy(m.fc(f), y)
        return ce_weight * ce + weight * sd, {**info, "ce": ce.detach()}

    def after_step(i):
        ema_update(ema, model, decay)
        for be, bm in zip(ema.buffers(), model.buffers()):  # BatchNorm statistics follow the student
            be.copy_(bm)

    exp.fit(model, seed, desc=f"EMA-SD seed {seed}", batch_loss=batch_loss, after_step=after_step)
    model.eval()
    with torch.no_grad():
        proj = torch.cat([model.project(normalize(exp.test_x[i:i + 1000].to(exp.device))).cpu()
                          for i in range(0, len(exp.test_x), 1000)])
    p_stats, f_stats = collapse_metrics(proj), collapse_metrics(exp.features(model, exp.test_x))
    return model, {"proj_mean_std": p_stats["mean_std"], "proj_effective_rank": p_stats["effective_rank"],
                   "effective_rank": f_stats["effective_rank"], "mean_std": f_stats["mean_std"],
                   "probe_acc": exp.probe(model)}


KD_BENCH_METHODS = ("hinton_kd", "smoothed_teacher_kd", "born_again", "anchored", "taid", "paced", "consensus",
                    "random_teacher", "sla_sd", "ema_sd")


# ------------------------------------------------------------------ the bench
CIFAR_ROW_KEYS = ("method", "student", "metric", "value", "spread", "baseline", "baseline_spread",
                  "teacher_value", "seeds", "train_seconds")


def run_cifar(scale=None, methods=None, seeds=None, progress: bool = True, exp: CifarKD | None = None,
              **overrides) -> list[dict]:
    """One row a method (default :data:`KD_BENCH_METHODS`), each a mean over ``seeds``.

    For the accuracy rows, ``value`` is the student's test accuracy, ``baseline`` the label-only
    student's (same architecture, images, budget and seeds), ``teacher_value`` the accuracy of the
    teacher that row distils from (for ``consensus`` the committed teacher, the strongest of its three).
    For ``random_teacher`` (``metric = "probe_acc"``) ``value`` is the student's linear-probe accuracy,
    ``teacher_value`` the frozen random teacher's, and ``baseline`` the probe on raw pixels.
    ``spread`` and ``baseline_spread`` are sample standard deviations over the seeds; ``train_seconds``
    the mean training time of one run as measured when it was trained (cached runs keep theirs).
    """
    exp = exp or CifarKD(scale, progress=progress, **overrides)
    seeds = tuple(exp.cfg.seeds if seeds is None else seeds)
    names = list(KD_BENCH_METHODS if methods is None else methods)
    for m in names:
        get_kd_recipe(m)
    base = [exp.baseline(s) for s in seeds]
    base_acc = mean_std(r["value"] for r in base)
    rows = []
    for m in names:
        runs = exp.runs(m, seeds)
        value, spread = mean_std(r["value"] for r in runs)
        row = {"method": m, "student": exp.cfg.student, "metric": runs[0]["metric"], "value": value,
               "spread": spread, "baseline": base_acc[0], "baseline_spread": base_acc[1],
               "teacher_value": exp.teacher_metrics["acc"], "seeds": list(seeds),
               "train_seconds": statistics.mean(r["seconds"] for r in runs)}
        if m == "random_teacher":
            row["baseline"], row["baseline_spread"] = runs[0]["extra"]["pixel_probe_acc"], 0.0
            row["teacher_value"] = mean_std(r["extra"]["teacher_probe_acc"] for r in runs)[0]
        elif m == "smoothed_teacher_kd":
            row["teacher_value"] = exp.other_teacher(SMOOTHED_TEACHER)["test_metrics"]["acc"]
        rows.append(row)
    return rows


def format_cifar_table(rows: list[dict], exp: CifarKD | None = None) -> str:
    """A fixed-width table of :func:`run_cifar` rows, in percent."""
    head = ["method", "student", "metric", "value %", "+-", "baseline %", "+-", "delta", "teacher %", "seeds", "s/run"]
    body = [[r["method"], r["student"], r["metric"], f"{100 * r['value']:.1f}", f"{100 * r['spread']:.1f}",
             f"{100 * r['baseline']:.1f}", f"{100 * r['baseline_spread']:.1f}",
             f"{100 * (r['value'] - r['baseline']):+.1f}", f"{100 * r['teacher_value']:.1f}",
             str(len(r["seeds"])), f"{r['train_seconds']:.0f}"] for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    if any(r["metric"] == "probe_acc" for r in rows):
        lines.append("probe_acc rows: baseline = linear probe on raw pixels; teacher = the frozen random teacher's probe")
    return "\n".join(lines)


def write_cifar_json(rows: list[dict], path) -> None:
    """Write the rows with exactly :data:`CIFAR_ROW_KEYS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{k: r[k] for k in CIFAR_ROW_KEYS} for r in rows], indent=1) + "\n")
