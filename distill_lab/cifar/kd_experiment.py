"""The CIFAR-10 knowledge-distillation experiment: data, teacher, student and budget in one object.

:class:`CifarKD` fixes everything a comparison must hold equal -- the labelled training images (a
class-balanced subset at ``ci``), the test images, the student architecture, the number of epochs,
batch size, learning-rate schedule and augmentation -- and reads the committed teacher's cached logits
(:mod:`distill_lab.cifar.kd_teacher`), so no student ever runs the teacher. It implements
:class:`~distill_lab.core.experiment.KDExperiment`. Each method of :mod:`distill_lab.methods.kd` has a
*recipe* in :mod:`distill_lab.cifar.kd_recipes`; :meth:`CifarKD.run` trains it (or loads the same run
from the cache), evaluates it and returns one result. The bench (``python -m distill_lab bench cifar``)
and labs 10 to 13 call the same recipes.

Budgets per scale (``DISTILL_LAB_SCALE`` or ``scale=``):

* ``ci``: ``tiny_cnn`` (24k parameters) on 2,500 labelled images (250 a class), 20 epochs of batch
  128, tested on 2,000 images (200 a class); about 11 s a run on one CPU thread.
* ``default``: ``tiny_cnn`` on 5,000 labelled images (500 a class), 30 epochs, all 10,000 test images.
* ``gpu``: ``resnet8x4`` on all 50,000 images, 30 epochs.

Results are cached per (method, options, seed, configuration, teacher hash) in
:func:`distill_lab.core.train.cache_dir`: labs that share a baseline train it once.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..core.checkpoints import TEACHERS_DIR
from ..core.experiment import KDExperiment
from ..core.registry import get_recipe
from ..core.scale import Scale, get_scale
from ..core.train import cache_dir, cache_key, seed_everything
from ..metrics.classification import metrics_from_logits
from ..metrics.representation import linear_probe
from .classifiers import get_model
from .classify import IndexedLoader, predict_logits, stratified_indices, train_classifier
from .data import load_cifar10, normalize
from .kd_teacher import DEFAULT_DIR, load_or_train_teacher, load_teacher

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


# ------------------------------------------------------------------ the experiment
class CifarKD(KDExperiment):
    """One CIFAR-10 distillation comparison: fixed data, teacher, student and budget.

    Parameters
    ----------
    scale : ``ci``, ``default`` or ``gpu`` (default: ``$DISTILL_LAB_SCALE``).
    data : a dict from :func:`~distill_lab.cifar.data.load_cifar10` (default: load it).
    teacher_dir : the committed teacher's folder; retrained by
        :func:`~distill_lab.cifar.kd_teacher.load_or_train_teacher` when missing or corrupt.
    cache : reuse trained students from :func:`~distill_lab.core.train.cache_dir` (``False``: always train).
    progress : tqdm bars while training.
    overrides : :class:`KDConfig` fields (``epochs=``, ``seeds=``, ``student=``, ...).

    Attributes
    ----------
    x, y : the labelled training images (uint8 ``[N, 3, 32, 32]``) and labels; ``idx`` their positions
        in the full training set.
    test_x, test_y : the test images every student is judged on.
    teacher_logits : float32 ``[2, N, 10]``, the teacher on ``x`` (plain, mirrored).
    teacher_metrics : the teacher's ``{"acc", "nll", "ece"}`` on ``test_x``.
    deadline : ``None``, or a ``time.perf_counter()`` value at which every student's training stops
        early (time-boxed measurements; such runs are never cached).
    """

    deadline: float | None = None

    def __init__(self, scale=None, data: dict | None = None, teacher_dir=DEFAULT_DIR, cache: bool = True,
                 progress: bool = True, **overrides):
        self.name = "cifar10"
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
        :class:`~distill_lab.cifar.kd_teacher.TeacherUnavailable` with the command that rebuilds it."""
        t = load_teacher(TEACHERS_DIR / name)
        return {"manifest": t["manifest"], "train_logits": t["train_logits"][:, self.idx].float(),
                "test_metrics": metrics_from_logits(t["test_logits"][0][self.test_idx].float(), self.test_y)}

    def new_student(self, seed: int) -> nn.Module:
        """A freshly initialised student; its initialisation depends on ``seed`` only."""
        seed_everything(seed)
        return get_model(self.cfg.student)

    def fit(self, model: nn.Module, seed: int, desc: str = "student", **kwargs) -> dict:
        """:func:`~distill_lab.cifar.classify.train_classifier` on the labelled images with this
        experiment's budget; ``kwargs`` (``loss_fn``, ``teacher_logits``, ``batch_loss``,
        ``after_step``) pick the method."""
        loader = IndexedLoader(self.x, self.y, self.cfg.batch_size, train=True, seed=seed, device=self.device)
        sc = self.scale
        hist = train_classifier(model, loader, epochs=self.cfg.epochs, lr=self.cfg.lr, seed=seed,
                                progress=self.progress, desc=desc, amp=sc.amp, compile=sc.compile,
                                check_every=sc.check_every, deadline=self.deadline, **kwargs)
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
        """Linear-probe accuracy (:func:`~distill_lab.metrics.representation.linear_probe`) of ``model``'s frozen features:
        fit on the labelled images, scored on the test images."""
        return linear_probe(self.features(model, self.x), self.y, self.features(model, self.test_x), self.test_y)

    def pixel_probe(self) -> float:
        """The same linear probe on raw pixels: the floor any learned feature should beat."""
        return linear_probe(self.x.float() / 255, self.y, self.test_x.float() / 255, self.test_y)

    # ---------------------------------------------------------------- running
    def _config(self) -> dict:
        return {**asdict(self.cfg), "teacher": self._teacher_id, "n": len(self.x), "test_n": len(self.test_x)}

    def run(self, method: str, seed: int, **options) -> dict:
        """Train ``method`` (a recipe registered on the ``cifar`` track) with ``seed``, or load that exact run from
        the cache; return ``{"method", "seed", "options", "model", "metrics", "value", "metric",
        "seconds", "extra"}``. ``value`` is the recipe's metric (test accuracy, or linear-probe
        accuracy for representation methods); ``seconds`` the training time when it was trained."""
        rec = get_recipe(method, track="cifar")
        opts = {**rec.options, **options}
        key = cache_key(method=method, seed=seed, options=opts, code=_CODE_VERSION, **self._config())
        path = cache_dir() / f"kd-{method}-{key}.pt"
        model = extra = None
        cache = self.cache and self.deadline is None  # a time-boxed run is not the full run
        if cache and path.exists():
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
            if cache:
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
    """A hash of the sources a trained student depends on (this track's training loop, networks,
    experiment and recipes, the KD losses and the classification metrics), so editing any of them
    invalidates cached runs."""
    root = Path(__file__).resolve().parents[1]
    files = [root / "cifar" / f for f in ("classify.py", "classifiers.py", "kd_experiment.py", "kd_recipes.py")]
    files += sorted((root / "methods" / "kd").glob("*.py")) + [root / "metrics" / "classification.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


_CODE_VERSION = _code_version()


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = [float(v) for v in values]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
