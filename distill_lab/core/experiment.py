"""The experiment contract: what a recipe may use of an experiment, written down once.

An *experiment* fixes everything a comparison holds equal (data, teacher, budget, evaluation) and
offers a recipe the pieces it needs. Two contracts exist, one a kind of distillation, both on
:class:`Experiment`'s common ground:

* :class:`StepExperiment` -- step distillation of a flow teacher (tracks ``toy2d`` and ``cifar-gen``;
  the video track's experiment will offer it too). Implemented by
  :class:`distill_lab.toy2d.experiment.Toy2D` and :class:`distill_lab.cifar.flow_experiment.CifarFlow`;
  every recipe of :mod:`distill_lab.methods.step` uses nothing else of ``exp``, so a recipe written on
  2D points runs on images unchanged.
* :class:`ConditionalExperiment` -- step distillation of a *conditional* flow teacher: super-resolution
  (track ``cifar-sr``), where every sample has a condition (the upsampled low-resolution image).
  Implemented by :class:`distill_lab.cifar.sr.SRExperiment`; the recipes of
  :mod:`distill_lab.methods.step.superres` use nothing else of ``exp``.
* :class:`StreamExperiment` -- streaming (autoregressive) video distillation: a bidirectional clip
  teacher and block-causal students (track ``video``). Implemented by
  :class:`distill_lab.video.experiment.VideoWorld`.
* :class:`KDExperiment` -- logit-level knowledge and self-distillation of a classifier (track
  ``cifar``). Implemented by :class:`distill_lab.cifar.kd_experiment.CifarKD`.
* :class:`TokenExperiment` -- token-level distillation of a language model on a checkable task
  (track ``llm``): a frozen teacher GPT, fresh problems, a student of fixed size and budget.
  Implemented by :class:`distill_lab.llm.experiment.LLMTask`; the losses it feeds are the KD
  track's own (:mod:`distill_lab.methods.kd`), on logits ``[B, T, V]``.

They are :class:`typing.Protocol` classes that the experiments name as their base, so a reader sees
the contract in one place and a type checker can hold them to it; the tests check that every member
is implemented and that the recipes use no attribute outside the contract.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from .scale import Scale

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@runtime_checkable
class Experiment(Protocol):
    """What every experiment offers, whatever it distils."""

    name: str  # what the bench prints and records (the dataset, e.g. "checkerboard", "cifar10-16px")
    scale: Scale  # sizes: ``scale.pick(ci=..., default=..., gpu=...)``, ``scale.batch``, ``scale.student_steps``
    device: str  # where the teacher and the data live; recipes build their networks there
    progress: bool  # whether training shows tqdm bars


@runtime_checkable
class StepExperiment(Experiment, Protocol):
    """A flow-matching teacher with its data and a fixed evaluation: what step-distillation recipes use.

    Time runs from noise at ``t = 0`` to data at ``t = 1``; samples are ``[B, *shape]``.
    """

    seed: int  # fixes the teacher's training and every evaluation draw
    shape: tuple[int, ...]  # one sample's shape: ``(2,)`` for toy points, ``(3, R, R)`` for images
    teacher: nn.Module  # the frozen velocity network ``teacher(x, t)``
    teacher_seconds: float  # how long loading or training the teacher took
    metric_name: str  # the metric of :meth:`evaluate` (``"sliced_w2"``, ``"fd_classifier"``, ...)
    eval_noise: torch.Tensor  # the fixed evaluation noise ``[eval_n, *shape]``
    eval_data: torch.Tensor  # held-out data the metric compares with
    eval_teacher: torch.Tensor  # the teacher's reference ODE solution from ``eval_noise``
    floor: float  # the metric between two independent held-out draws: the best any sampler can show
    # whether evaluate() also reports the exact W2 and the k-NN precision and recall on samples (the toy
    # track), and those three between two data draws (read only when it does)
    sharp_metrics: bool
    sharp_floor: dict

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The teacher's velocity ``v(x, t)``."""
        ...

    def teacher_sample(self, z: torch.Tensor, nfe: int = ..., method: str = ...) -> torch.Tensor:
        """The teacher's ODE solution from noise ``z`` (default: the reference solver), without gradient."""
        ...

    def new_net(self, n_times: int = 1) -> nn.Module:
        """A freshly initialised network of the teacher's size taking ``n_times`` times."""
        ...

    def student_net(self, n_times: int = 1) -> nn.Module:
        """A trainable copy of the teacher taking ``n_times`` times (extra time inputs start at zero
        weight, so a two-time copy computes the teacher's Euler step)."""
        ...

    def data_batch(self, n: int | None = None) -> torch.Tensor:
        """A fresh training batch ``[n, *shape]`` (default ``scale.batch``), from the global RNG."""
        ...

    def noise_batch(self, n: int | None = None) -> torch.Tensor:
        """Fresh Gaussian noise shaped like a data batch, from the global RNG."""
        ...

    def sample_data(self, n: int, seed: int) -> torch.Tensor:
        """``n`` held-out samples chosen by ``seed`` (for references beside the evaluation's)."""
        ...

    def metric(self, x: torch.Tensor, y: torch.Tensor, **kw) -> float:
        """The evaluation's distance between two sample sets."""
        ...

    def distance(self, x: torch.Tensor) -> float:
        """The metric of samples ``x`` to the held-out reference :attr:`eval_data`."""
        ...

    def evaluate(self, sample: Callable[..., torch.Tensor], nfe: int | None = None) -> dict:
        """``sample(eval_noise[, nfe])`` measured: ``{"value", "floor", "ratio", "coupled"}`` (``coupled``:
        the distance to the teacher's ODE solution from the same noise)."""
        ...

    def teacher_curve(self, nfes=(1, 2, 4, 8, 16, 32, 64), method: str = "euler") -> dict[int, float]:
        """The teacher's metric at each NFE of one sampler: its quality-versus-cost curve."""
        ...

    def fit(self, step: Callable[[int], Any], n_steps: int, desc: str) -> dict:
        """Run ``step(i)`` ``n_steps`` times with this experiment's progress setting
        (:func:`distill_lab.core.train.fit`); returns the logged history."""
        ...


@runtime_checkable
class KDExperiment(Experiment, Protocol):
    """A labelled training set, a teacher's cached logits on it, a student architecture and a budget:
    what knowledge-distillation recipes use. Students never run the teacher."""

    cfg: Any  # the comparison's settings: ``cfg.T``, ``cfg.alpha``, ``cfg.student``, ``cfg.epochs``, ``cfg.seeds``
    x: torch.Tensor  # the labelled training inputs
    y: torch.Tensor  # their labels
    test_x: torch.Tensor  # the inputs every student is judged on
    test_y: torch.Tensor
    teacher_logits: torch.Tensor  # ``[V, N, C]``: the teacher on each training input, in ``V`` views
    teacher_metrics: dict  # the teacher's ``{"acc", "nll", "ece"}`` on the test inputs
    n_steps: int  # optimiser steps of one student run

    def new_student(self, seed: int) -> nn.Module:
        """A freshly initialised student; its initialisation depends on ``seed`` only."""
        ...

    def fit(self, model: nn.Module, seed: int, desc: str = "student", **kwargs) -> dict:
        """Train ``model`` on the labelled inputs with this experiment's budget; ``kwargs``
        (``loss_fn``, ``teacher_logits``, ``batch_loss``, ``after_step``) choose the method."""
        ...

    def evaluate(self, model: nn.Module) -> dict:
        """``{"acc", "nll", "ece", "agreement"}`` of ``model`` on the test inputs."""
        ...

    def train_logits(self, model: nn.Module) -> torch.Tensor:
        """``[V, N, C]`` logits of ``model`` on the labelled inputs (what a next generation distils from)."""
        ...

    def features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``model.features`` on inputs ``x``, in eval mode, without gradients: ``[N, D]``."""
        ...

    def probe(self, model: nn.Module) -> float:
        """Linear-probe accuracy of ``model``'s frozen features."""
        ...

    def pixel_probe(self) -> float:
        """The same probe on the raw inputs: the floor any learned feature should beat."""
        ...

    def other_teacher(self, name: str) -> dict:
        """Another committed teacher: ``{"manifest", "train_logits", "test_metrics"}``."""
        ...

    def baseline(self, seed: int) -> dict:
        """The label-only student of ``seed`` (the track's baseline recipe), trained or cached."""
        ...

    def run(self, method: str, seed: int, **options) -> dict:
        """Train (or load from the cache) one registered recipe with ``seed`` and evaluate it."""
        ...


@runtime_checkable
class ConditionalExperiment(Experiment, Protocol):
    """A conditional flow teacher ``v(x, t, cond)``, paired training data and a fixed evaluation: what the
    super-resolution recipes use. Images are ``[B, *shape]``; the condition has the same shape."""

    seed: int
    shape: tuple[int, ...]  # one image's shape ``(C, H, W)``
    batch: int  # the recipes' batch
    teacher: nn.Module  # the frozen conditional velocity ``teacher(x, t, cond=c)``

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The teacher's velocity at ``x`` for condition ``cond``, ``t: [B]``."""
        ...

    def hr_batch(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target, cond)``: ``n`` fresh training targets and their conditions (global RNG)."""
        ...

    def student_net(self, n_times: int = 1) -> nn.Module:
        """A trainable copy of the teacher taking ``n_times`` times."""
        ...

    def new_net(self, n_times: int = 1) -> nn.Module:
        """A freshly initialised network of the teacher's size (for methods that use no teacher)."""
        ...

    def fit(self, step: Callable[[int], Any], n_steps: int, desc: str) -> dict:
        """:func:`distill_lab.core.train.fit` with this experiment's settings."""
        ...

    def evaluate(self, sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict:
        """``sample(cond, noise)`` on the fixed evaluation set, measured beside the floors."""
        ...


@runtime_checkable
class StreamExperiment(Experiment, Protocol):
    """A bidirectional clip teacher, its world's clips and a fixed evaluation: what the streaming-video
    recipes use. Clips are ``[B, F, C, H, W]``; a student streams them in blocks of ``block`` frames."""

    seed: int
    vscale: Any  # the track's sizes: ``teacher_nfe``, ``student_nfe``, ``frames``, ``block``, ...
    frames: int  # the training horizon: frames of a training clip
    block: int  # frames a student generates at once
    shape: tuple[int, ...]  # one clip's shape ``(frames, C, H, W)``
    teacher: nn.Module  # the frozen bidirectional network ``teacher(x, t)``
    world: Any  # the world whose physics the metrics and rewards read (``detect``, ``render``)
    reference: dict  # real clips' metrics, e.g. ``"dynamic_degree"`` (what a motion reward is relative to)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The teacher's velocity on clips, ``t: [B]`` (a time a clip) or ``[B, F]`` (a time a frame)."""
        ...

    def causal_net(self, window: int | None = None) -> nn.Module:
        """A trainable block-causal copy of the teacher: a student's starting point."""
        ...

    def score_net(self) -> nn.Module:
        """A trainable bidirectional copy of the teacher: the fake score of distribution matching."""
        ...

    def data_batch(self, n: int | None = None, frames: int | None = None) -> torch.Tensor:
        """``n`` fresh real clips of ``frames`` frames (default the horizon), from the global RNG."""
        ...

    def noise_batch(self, n: int | None = None, frames: int | None = None) -> torch.Tensor:
        """Gaussian noise shaped like ``n`` clips of ``frames`` frames, from the global RNG."""
        ...

    def teacher_sample(self, z: torch.Tensor, nfe: int | None = None) -> torch.Tensor:
        """The teacher's clips from noise ``z`` (its Euler sampler), without gradient."""
        ...

    def fit(self, step: Callable[[int], Any], n_steps: int, desc: str) -> dict:
        """:func:`distill_lab.core.train.fit` with this experiment's settings."""
        ...

    def evaluate(self, student) -> dict:
        """The student's rollouts past the horizon, measured with the world's physics."""
        ...



@runtime_checkable
class TokenExperiment(Experiment, Protocol):
    """A frozen teacher language model, a task with fresh problems and exact-match checking, and a fixed
    evaluation: what the LLM recipes use. Completions and scoring go through
    :mod:`distill_lab.llm.rollout`; ``exp.budget`` sequences of ``exp.batch`` is every student's budget."""

    seed: int
    task: Any  # the :class:`~distill_lab.llm.tasks.Task`: tokenizer, problems, ``check``
    teacher: nn.Module  # the frozen teacher GPT, ``teacher(tokens) -> logits [B, T, V]``
    privileged: bool  # the teacher reads the task's teacher prompt (privileged information)
    steps: int  # the students' optimiser steps
    batch: int  # sequences a step
    lr: float  # the students' learning rate
    pool: int  # the size of the fixed training pool the problems are drawn from (0: fresh problems every draw)
    pool_problems: list  # that pool's problems (empty without a pool): the same list, in the same order, on every read

    def student(self) -> nn.Module:
        """A fresh student GPT on ``device`` (the size is the experiment's), in training mode."""
        ...

    def problems(self, n: int | None = None) -> list:
        """``n`` (default ``batch``) fresh training-split problems, from the global RNG."""
        ...

    def fit(self, step: Callable[[int], Any], n_steps: int, desc: str) -> dict:
        """:func:`distill_lab.core.train.fit` with this experiment's settings."""
        ...

    def evaluate(self, student: nn.Module) -> dict:
        """Greedy exact-match accuracy (percent) on the fixed held-out problems, and its details."""
        ...
