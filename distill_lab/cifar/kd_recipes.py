"""One recipe a method of the CIFAR-10 knowledge-distillation track, and the ``cifar`` bench rows.

Each recipe is ``train(exp, seed, **options) -> (model, extra)`` on a
:class:`~distill_lab.core.experiment.KDExperiment` (here :class:`~distill_lab.cifar.kd_experiment.CifarKD`),
registered in :mod:`distill_lab.core.registry` on the ``cifar`` track with its family, paper and the
options the bench runs it with. The losses are :mod:`distill_lab.methods.kd`'s; a recipe only wires
them to the experiment (which logits, which views, which networks train). ``labels`` is the baseline
every row is compared with.

:func:`run_cifar` makes the bench's rows (mean and spread over seeds, beside the label-only student of
the same seeds and the teacher's accuracy); labs 10 to 13 call the same recipes through
:meth:`CifarKD.run`, so the labs and the bench share cached runs.
"""

from __future__ import annotations

import copy
import math
import statistics
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.bench import bench_methods, text_table
from ..core.registry import get_recipe, recipe
from ..core.train import seed_everything
from ..methods.kd import (DINOHead, TAIDSchedule, anchored_distill_loss, consensus_loss, ema_self_distill_loss,
                          generation_kls, output_information, paced_kd_loss, random_teacher_loss, rotate_batch,
                          self_distill_loss, sla_aggregate, sla_sd_loss, taid_loss)
from ..metrics.representation import collapse_metrics
from ..nets.utils import ema_update
from .classifiers import get_model
from .classify import kd
from .data import batch_crop, batch_flip, normalize
from .kd_experiment import CONSENSUS_TEACHERS, SMOOTHED_TEACHER, CifarKD, mean_std


def kd_recipe(name: str, family: str, paper: str, metric: str = "acc", build: Callable | None = None,
              baseline: bool = False, **options):
    """:func:`distill_lab.core.registry.recipe` on the ``cifar`` track: ``options`` are the ones the
    bench runs the recipe with; ``build(exp, **options)`` makes its untrained network when it is not
    the plain student (to reload a cached run)."""
    return recipe(name, tracks=("cifar",), family=family, paper=paper, metric=metric, options=options,
                  build=build, baseline=baseline)


def _mix_ce(loss_info, logits, labels, alpha):
    """``alpha * distillation + (1 - alpha) * CE(logits, labels)`` for losses without a CE term."""
    loss, info = loss_info
    ce = F.cross_entropy(logits, labels)
    return alpha * loss + (1 - alpha) * ce, {**info, "ce": ce.detach()}


@kd_recipe("labels", "baseline", "cross-entropy on the labels alone (the baseline every row is compared with)",
           baseline=True)
def train_labels(exp: CifarKD, seed: int):
    model = exp.new_student(seed)
    exp.fit(model, seed, desc=f"labels seed {seed}")
    return model, {}


@kd_recipe("hinton_kd", "knowledge distillation", "Hinton, Vinyals & Dean 2015, eq. for the soft-target loss",
           T=None, alpha=None)
def train_hinton_kd(exp: CifarKD, seed: int, T=None, alpha=None):
    """:func:`distill_lab.methods.kd.kd_loss` from the committed teacher's cached logits:
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
    :func:`distill_lab.methods.kd.self_distill_loss` (target ``w onehot(y) + (1 - w) p_prev``); ``gt_weight``
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
    :func:`distill_lab.methods.kd.anchored_target` ``(q_k, p_base, lam)``. Generation 0 is the label-only
    baseline. ``extra["kl"]`` is :func:`~distill_lab.methods.kd.generation_kls` of the generations'
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
    :class:`~distill_lab.methods.kd.TAIDSchedule` moves ``t`` from ``t_start`` to 1; mixed with the label CE
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
    """:func:`distill_lab.methods.kd.paced_kd_loss` (KD weighted by ``p (1 - p)`` of the student's probability
    of the true class, under stop-gradient) mixed with the label CE by ``alpha``."""
    T, alpha = T or exp.cfg.T, exp.cfg.alpha if alpha is None else alpha
    model = exp.new_student(seed)
    exp.fit(model, seed, desc=f"PACED seed {seed}", teacher_logits=exp.teacher_logits,
            loss_fn=lambda s, y, t: _mix_ce(paced_kd_loss(s, t, y, T=T), s, y, alpha))
    return model, {"T": T, "alpha": alpha}


@kd_recipe("consensus", "adaptive distillation",
           "agreement-weighted consensus of several teachers (this lab's own rule, no paper's method)", T=None, alpha=None)
def train_consensus(exp: CifarKD, seed: int, T=None, alpha=None):
    """:func:`distill_lab.methods.kd.consensus_loss` over three teachers: the committed one and the two of
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
    """A backbone with a DINO head (:class:`~distill_lab.methods.kd.DINOHead`) on its features; ``forward``
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
           build=lambda exp, out_dim=256, **_: Projected(get_model(exp.cfg.student), out_dim), out_dim=256,
           teacher_seed_offset=10_000, teacher_temp=0.04)
def train_random_teacher(exp: CifarKD, seed: int, out_dim=256, teacher_seed_offset=10_000, teacher_temp=0.04):
    """Distil a frozen, randomly initialised teacher (backbone + DINO head) into a student of the same
    architecture with :func:`distill_lab.methods.kd.random_teacher_loss` (student temperature 0.1, teacher
    ``teacher_temp``), on two augmented views, no labels.
    Judged by the linear probe of its backbone features (``extra["probe_acc"]``) against the frozen
    teacher's (``extra["teacher_probe_acc"]``) and raw pixels' (``extra["pixel_probe_acc"]``).
    ``extra["teacher_information"]`` is :func:`~distill_lab.methods.kd.output_information` of the teacher's
    sharpened outputs on the labelled images: how much its target depends on the image, in nats."""
    seed_everything(seed + teacher_seed_offset)
    teacher = Projected(get_model(exp.cfg.student), out_dim).to(exp.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    seed_everything(seed)
    student = Projected(get_model(exp.cfg.student), out_dim)

    def batch_loss(model, x, y, t):
        with torch.no_grad():
            target = teacher.project(x)
        return random_teacher_loss(model.project(_second_view(x)), target, teacher_temp=teacher_temp)

    exp.fit(student, seed, desc=f"random teacher seed {seed}", batch_loss=batch_loss)
    with torch.no_grad():
        t_out = torch.cat([teacher.project(normalize(exp.x[i:i + 1000].to(exp.device))).float().cpu()
                           for i in range(0, len(exp.x), 1000)])
    info = output_information(t_out, teacher_temp)
    return student, {"probe_acc": exp.probe(student), "teacher_probe_acc": exp.probe(teacher),
                     "pixel_probe_acc": exp.pixel_probe(), "teacher_information": info["mutual_information"],
                     "teacher_entropy": info["entropy"], "max_information": math.log(len(exp.x))}


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
    """Self-supervised label augmentation with self-distillation (:func:`distill_lab.methods.kd.sla_sd_loss`):
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
           "momentum (EMA) self-distillation (an EMA teacher as in mean teacher and BYOL) with VICReg's variance and "
           "covariance terms against collapse",
           build=lambda exp, **_: WithProjector(get_model(exp.cfg.student)),
           weight=1.0, decay=0.99, diversity_weight=0.1, ce_weight=1.0)
def train_ema_sd(exp: CifarKD, seed: int, weight=1.0, decay=0.99, diversity_weight=0.1, ce_weight=1.0):
    """``ce_weight`` x label CE plus ``weight`` x :func:`distill_lab.methods.kd.ema_self_distill_loss`: the
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


# ------------------------------------------------------------------ the bench
CIFAR_ROW_KEYS = ("method", "student", "metric", "value", "spread", "baseline", "baseline_spread",
                  "teacher_value", "seeds", "train_seconds")


def run_cifar(scale=None, methods=None, seeds=None, progress: bool = True, exp: CifarKD | None = None,
              **overrides) -> list[dict]:
    """One row a method (default: every recipe of the ``cifar`` track but the baseline), each a mean
    over ``seeds``.

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
    names = list(bench_methods("cifar") if methods is None else methods)
    for m in names:
        get_recipe(m, track="cifar")
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


def format_cifar_table(rows: list[dict]) -> str:
    """A fixed-width table of :func:`run_cifar` rows, in percent."""
    head = ["method", "student", "metric", "value %", "+-", "baseline %", "+-", "delta", "teacher %", "seeds", "s/run"]
    body = [[r["method"], r["student"], r["metric"], f"{100 * r['value']:.1f}", f"{100 * r['spread']:.1f}",
             f"{100 * r['baseline']:.1f}", f"{100 * r['baseline_spread']:.1f}",
             f"{100 * (r['value'] - r['baseline']):+.1f}", f"{100 * r['teacher_value']:.1f}",
             str(len(r["seeds"])), f"{r['train_seconds']:.0f}"] for r in rows]
    notes = (["probe_acc rows: baseline = linear probe on raw pixels; teacher = the frozen random teacher's probe"]
             if any(r["metric"] == "probe_acc" for r in rows) else [])
    return text_table(head, body, notes)
