"""CIFAR-10 as a step-distillation experiment: the :class:`~distill_lab.toy2d.experiment.Toy2D` interface on images.

:class:`CifarFlow` offers exactly what the registered recipes use on the toy track (``velocity``,
``teacher``, ``student_net``, ``new_net``, ``data_batch``, ``noise_batch``, ``teacher_sample``,
``scale``, ``device``, ``fit``, ``evaluate``, ``teacher_curve``, ``floor``, ``eval_noise``...), so a
recipe written for 2D points runs on images unchanged::

    exp = CifarFlow(scale="ci")                          # loads the committed flow teacher
    student = get_recipe("trajectory").train(exp)       # the toy-2D recipe, imported, not copied
    exp.evaluate(student.sample, nfe=1)                 # {'value': FD, 'floor': ..., 'ratio': ..., 'coupled': ...}

**Data.** Images are floats in ``[-1, 1]`` (``x = pixel / 127.5 - 1``), ``[B, 3, R, R]``. At ``ci``
CIFAR-10 is averaged over 2 x 2 blocks to ``R = 16`` (all ten classes, all 50,000 training images;
the resolution, not the number of images, is what makes a CPU teacher affordable). At ``default``
and ``gpu`` it is the full 32 x 32 set, with a wider U-Net at ``gpu``. Training batches are drawn
with a random horizontal flip.

**Evaluation.** The Fréchet distance (Heusel et al. 2017) between ``n = scale.eval_n`` generated
images and ``n`` random held-out *test* images, in the penultimate features of the project's own
CIFAR-10 classifier (:func:`distill_lab.cifar.kd_teacher.load_teacher`; 16 x 16 images are upsampled
to 32 by :class:`~distill_lab.cifar.features.ClassifierFeatures`, real and generated alike). **This is
not FID**: see :mod:`distill_lab.metrics.frechet`. Beside it, the floor: the same distance between two
disjoint random halves of the test set (:func:`~distill_lab.metrics.frechet.fd_noise_floor`, the
reference half shared with the generated samples), and the coupled error: the mean squared distance
per image between a sample and the teacher's many-step ODE solution from the same noise. The test
set is stored class by class, so every reference is a random subset, never ``test_x[:n]``.

Per-scale settings live in :data:`IMAGE_SCALES`; the teacher is trained by
:mod:`distill_lab.cifar.flow_teacher` and committed under ``datasets/teachers/cifar10_flow_<scale>``.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from ..core.checkpoints import update_manifest
from ..core.experiment import StepExperiment
from ..core.flows import sample_ode, teacher_ode
from ..core.scale import Scale, get_scale
from ..core.train import fit
from ..metrics.frechet import disjoint_halves, frechet_distance
from ..nets.unet import TimeUNet
from ..nets.utils import n_params
from .features import ClassifierFeatures
from .flow_config import (IMAGE_SCALES, ImageScale, check_variant, load_flow_data, own_teacher_dir, teacher_for,
                          with_variant)
from .flow_teacher import load_or_train_flow_teacher


class CifarFlow(StepExperiment):
    """Data, flow teacher and evaluation for CIFAR-10 at one scale, with :class:`Toy2D`'s interface.

    Parameters
    ----------
    scale : ``"ci"``, ``"default"``, ``"gpu"``, a :class:`~distill_lab.core.scale.Scale`, or ``None`` for
        ``$DISTILL_LAB_SCALE``. ``exp.scale`` is a :class:`Scale` whose ``batch``, ``eval_n`` and
        ``student_steps`` are the image track's (``width``/``depth`` record the U-Net's ``base`` and
        number of resolutions), so a recipe's ``exp.scale.pick(...)`` and ``exp.scale.batch`` work.
    teacher : a trained one-time :class:`TimeUNet`; default: the committed teacher of the scale,
        loaded (sha256 checked) or trained by :func:`distill_lab.cifar.flow_teacher.load_or_train_flow_teacher`.
        A scale with no committed teacher (``default`` and ``gpu`` today) loads the ``ci`` one and the
        experiment runs at ``ci``'s image settings (resolution, U-Net, budgets, ``exp.scale.name ==
        "ci"``; the device stays the scale's), after a printed notice; ``$DISTILL_LAB_TRAIN_TEACHERS=1``
        trains the scale's own instead (an hour or more on a CPU) and records its quality curve in its
        manifest, as the teacher script does.
    teacher_dir : where that teacher lives (default ``datasets/teachers/cifar10_flow_<scale>``).
    data : ``{"train": [N, 3, R, R], "test": [M, 3, R, R]}`` float images in ``[-1, 1]`` (tests pass
        synthetic ones); default: CIFAR-10 at the scale's resolution.
    feature_fn : images -> features ``[N, D]`` for the Fréchet distance; default: the committed KD
        classifier's :class:`~distill_lab.cifar.features.ClassifierFeatures`.
    eval_n : override the scale's number of evaluation images.
    image_scale : override the scale's :class:`ImageScale` (tests use a tiny one).
    variant : ``"attn"`` for the softmax-attention teacher of the architecture-distillation section
        (:func:`image_scale`; committed under ``cifar10_flow_attn_<scale>``); default the plain one.
    eval_batch : how many images a sampler is given at a time in :meth:`evaluate`, :meth:`teacher_curve`
        and the reference :attr:`eval_teacher` (default 500). With a deterministic sampler only the speed
        depends on it (each image is computed on its own; a sampler that draws fresh noise, like CD's
        multistep one, draws it chunk by chunk). Smaller chunks pay on a CPU when the network attends
        over every pixel: softmax attention forms a ``chunk x N x N`` weight tensor (131 MB for 500
        images of 256 tokens, far beyond the cache).

    ``exp.recipe_defaults`` (from ``ImageScale.recipes``) holds the options a registered recipe
    defaults to on images; see :mod:`distill_lab.core.registry`.
    """

    metric_name = "fd_classifier"
    # the image track's evaluate() reports its own precision and recall on classifier features (not the toy
    # track's exact W2 on points), so the step bench adds no sharp-metric columns here
    sharp_metrics = False
    sharp_floor: dict = {}
    # a time.perf_counter() value after which training loops stop early (time-boxed runs of gpu-check)
    deadline: float | None = None

    def __init__(self, scale: str | Scale | None = None, teacher: TimeUNet | None = None,
                 teacher_dir: str | Path | None = None, data: dict | None = None,
                 feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, seed: int = 0,
                 eval_n: int | None = None, image_scale: ImageScale | None = None, progress: bool = True,
                 variant: str | None = None, eval_batch: int = 500):
        base = get_scale(scale)
        self.variant = check_variant(variant)
        if teacher is None and teacher_dir is None:
            used, teacher_dir = teacher_for(base, self.variant)
            if used != base.name:  # no committed teacher at this scale: the track runs as at ci (see the notice)
                base = get_scale(used, device=base.device)
        self.image_scale = image_scale or with_variant(IMAGE_SCALES[base.name], self.variant)
        isc = self.image_scale
        self.device = base.device
        self.scale = Scale(base.name, teacher_steps=isc.teacher_steps, width=isc.unet.get("base", 32),
                           depth=len(isc.unet.get("mults", (1, 2))), batch=isc.batch,
                           student_steps=isc.student_steps, eval_n=eval_n or isc.eval_n, n_proj=0,
                           device=base.device)
        self.seed, self.progress = seed, progress
        if eval_batch < 1:
            raise ValueError(f"eval_batch must be a positive number of images, got {eval_batch}")
        self.eval_batch = int(eval_batch)
        self.recipe_defaults = {k: dict(v) for k, v in isc.recipes.items()}
        self.resolution = isc.resolution
        self.name = f"cifar10-{isc.resolution}px"
        self.teacher_dir = Path(teacher_dir) if teacher_dir is not None else own_teacher_dir(base, self.variant)
        self._data = data
        self._feature_fn = feature_fn
        t0 = time.perf_counter()
        if teacher is None:
            loaded = load_or_train_flow_teacher(self.teacher_dir, scale=base, progress=progress,
                                                variant=self.variant)
            teacher = loaded["model"]
            if loaded.get("trained") and "quality" not in loaded["manifest"]:
                # what the teacher script records and lab 20 reads: the teacher's curve, measured as saved
                update_manifest(self.teacher_dir, quality=teacher_quality(teacher, base, exp_kwargs=dict(
                    data=data, feature_fn=feature_fn, image_scale=self.image_scale, seed=seed)))
        self.teacher = teacher.to(self.device).eval()
        self.teacher_seconds = time.perf_counter() - t0
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    # ---------------------------------------------------------------- data
    @cached_property
    def data(self) -> dict:
        d = self._data if self._data is not None else load_flow_data(self.image_scale)
        for split in ("train", "test"):
            x = d[split]
            if x.dim() != 4 or tuple(x.shape[1:]) != (3, self.resolution, self.resolution):
                raise ValueError(f"{split} images must be [N, 3, {self.resolution}, {self.resolution}], "
                                 f"got {tuple(x.shape)}")
        return {"train": d["train"].to(self.device), "test": d["test"].to(self.device)}

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)

    # ---------------------------------------------------------------- networks
    def new_net(self, n_times: int = 1) -> TimeUNet:
        """A fresh U-Net of the teacher's size taking ``n_times`` times."""
        return TimeUNet(**dict(self.teacher.config, n_times=n_times)).to(self.device)

    def student_net(self, n_times: int = 1) -> TimeUNet:
        """A trainable copy of the teacher taking ``n_times`` times (:meth:`TimeUNet.from_net`)."""
        net = TimeUNet.from_net(self.teacher, n_times).to(self.device)
        for p in net.parameters():
            p.requires_grad_(True)
        return net.train()

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The teacher's velocity ``v(x, t)``, ``x: [B, 3, R, R]``, ``t: [B]``."""
        return self.teacher(x, t)

    # ---------------------------------------------------------------- draws
    def noise(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, *self.shape, generator=g).to(self.device)

    def noise_batch(self, n: int | None = None) -> torch.Tensor:
        """Fresh Gaussian noise shaped like a data batch (global RNG)."""
        return torch.randn(n or self.scale.batch, *self.shape, device=self.device)

    def data_batch(self, n: int | None = None) -> torch.Tensor:
        """``n`` random training images (global RNG), each mirrored left-right with probability 1/2."""
        n = n or self.scale.batch
        train = self.data["train"]
        idx = torch.randint(0, train.shape[0], (n,), device=self.device)
        x = train[idx]
        flip = torch.rand(n, device=self.device) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)

    def sample_data(self, n: int, seed: int) -> torch.Tensor:
        """``n`` random *test* images chosen by ``seed`` (without replacement)."""
        test = self.data["test"]
        if n > test.shape[0]:
            raise ValueError(f"asked for {n} held-out images, the test set has {test.shape[0]}")
        perm = torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        return test[perm.to(test.device)]

    @torch.no_grad()
    def teacher_sample(self, z: torch.Tensor, nfe: int | None = None, method: str | None = None,
                       batch_size: int = 500) -> torch.Tensor:
        """The teacher's ODE solution from noise ``z`` (default: the scale's reference solver)."""
        return teacher_ode(self.velocity, z, nfe or self.image_scale.teacher_nfe,
                           method or self.image_scale.teacher_method, batch_size=batch_size)

    # ---------------------------------------------------------------- evaluation
    @cached_property
    def feature_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self._feature_fn is not None:
            return self._feature_fn
        return ClassifierFeatures.from_teacher(size=32)

    @cached_property
    def eval_noise(self) -> torch.Tensor:
        return self.noise(self.scale.eval_n, self.seed + 7)

    @cached_property
    def _real_halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of two disjoint random halves of the test set, ``eval_n`` each: the reference and
        the floor's second draw."""
        n, test = self.scale.eval_n, self.data["test"]
        a, b = disjoint_halves(test.shape[0], n, self.seed + 11)
        return self.feature_fn(test[a.to(test.device)]), self.feature_fn(test[b.to(test.device)])

    @cached_property
    def eval_data(self) -> torch.Tensor:
        """The held-out reference images (the first half of :attr:`_real_halves`)."""
        a, _ = disjoint_halves(self.data["test"].shape[0], self.scale.eval_n, self.seed + 11)
        return self.data["test"][a.to(self.device)]

    @cached_property
    def eval_teacher(self) -> torch.Tensor:
        return self.teacher_sample(self.eval_noise, batch_size=self.eval_batch)

    def distance(self, x: torch.Tensor) -> float:
        """Fréchet distance (classifier features) of images ``x`` to the held-out reference half."""
        return frechet_distance(self.feature_fn(x), self._real_halves[0])

    def metric(self, x: torch.Tensor, y: torch.Tensor, **_) -> float:
        """Fréchet distance (classifier features) between two image sets."""
        return frechet_distance(self.feature_fn(x), self.feature_fn(y))

    @cached_property
    def floor(self) -> float:
        """FD between the two disjoint real halves: what a perfect sampler would show at this ``n``."""
        ref, other = self._real_halves
        return frechet_distance(other, ref)

    @torch.no_grad()
    def evaluate(self, sample: Callable[..., torch.Tensor], nfe: int | None = None) -> dict:
        """Evaluate ``sample(z)`` (or ``sample(z, nfe)``) on the fixed evaluation noise.

        Returns ``value`` (FD in classifier features to held-out test images, not FID), ``floor``,
        ``ratio = value / floor``, ``coupled`` (mean over images of the mean squared pixel difference
        to the teacher's reference ODE solution from the same noise) and ``seconds``.
        """
        t0 = time.perf_counter()
        z = self.eval_noise
        b = self.eval_batch
        xs = [sample(z[i:i + b]) if nfe is None else sample(z[i:i + b], nfe) for i in range(0, len(z), b)]
        return self.evaluate_images(torch.cat(xs), t0)

    @torch.no_grad()
    def evaluate_images(self, x: torch.Tensor, t0: float | None = None) -> dict:
        """:meth:`evaluate` of images ``x`` already sampled from :attr:`eval_noise`, row ``i`` from noise
        ``i`` (e.g. :attr:`eval_teacher` itself, so that the reference solution is not solved twice).
        ``seconds`` counts from ``t0`` when given, else only this evaluation."""
        t0 = time.perf_counter() if t0 is None else t0
        z = self.eval_noise
        if x.shape != z.shape:
            raise ValueError(f"a sampler must return shape {tuple(z.shape)}, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("the sampler produced NaN or inf; the student has diverged")
        v = self.distance(x)
        coupled = float((x - self.eval_teacher).pow(2).mean())
        return {"value": v, "floor": self.floor, "ratio": v / self.floor, "coupled": coupled,
                "seconds": time.perf_counter() - t0}

    @torch.no_grad()
    def teacher_curve(self, nfes=(1, 2, 4, 8, 16, 32), method: str = "euler") -> dict[int, float]:
        """The teacher's FD at each NFE with one sampler: its quality-versus-cost curve."""
        out = {}
        for n in nfes:
            z = self.eval_noise
            b = self.eval_batch
            x = torch.cat([sample_ode(self.velocity, z[i:i + b], n, method) for i in range(0, len(z), b)])
            out[n] = self.distance(x)
        return out

    def fit(self, step, n_steps: int, desc: str):
        """:func:`~distill_lab.core.train.fit` with this experiment's progress setting, the scale's
        NaN-check interval, and :attr:`deadline`."""
        return fit(step, n_steps, desc=desc, progress=self.progress, check_every=self.scale.check_every,
                   deadline=self.deadline)

    def __repr__(self):
        return (f"CifarFlow({self.name!r}, scale={self.scale.name!r}, teacher={n_params(self.teacher):,} params, "
                f"device={self.device!r})")


CURVE_NFES = (1, 2, 4, 8, 16, 32)  # the Euler NFEs of a teacher's quality curve


def teacher_quality(net: TimeUNet, scale=None, exp_kwargs: dict | None = None) -> dict:
    """The teacher's FD (classifier features) at each Euler NFE of :data:`CURVE_NFES` and with its
    reference solver, the floor, and the seconds the evaluation took."""
    t0 = time.perf_counter()
    exp = CifarFlow(scale, teacher=net, progress=False, **(exp_kwargs or {}))
    curve = exp.teacher_curve(CURVE_NFES, "euler")
    ref = exp.evaluate(lambda z: exp.teacher_sample(z))["value"]
    isc = exp.image_scale
    return {"metric": "Frechet distance in the KD classifier's features (not FID)",
            "n": exp.scale.eval_n, "floor": exp.floor,
            "fd_euler": {str(k): v for k, v in curve.items()},
            "ratio_euler": {str(k): v / exp.floor for k, v in curve.items()},
            f"fd_reference_{isc.teacher_method}{isc.teacher_nfe}": ref,
            "eval_seconds": round(time.perf_counter() - t0, 1)}
