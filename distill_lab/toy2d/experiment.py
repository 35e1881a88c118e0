"""A toy-2D experiment: data, a flow-matching teacher, and an honest evaluation, in one object.

:class:`Toy2D` is what every toy-2D recipe, lab and the bench share::

    exp = Toy2D("checkerboard", scale="ci")       # trains (or loads) the teacher
    student = some_recipe(exp)                     # any object with .sample(z, nfe)
    exp.evaluate(student.sample, nfe=1)            # {'value': ..., 'floor': ..., 'coupled': ...}

The evaluation always draws the same held-out data and the same noise, reports the metric beside
its noise floor, and the coupled error to the teacher's many-step ODE solution from the same noise.
"""

from __future__ import annotations

import copy
import time
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from ..core.checkpoints import TEACHERS_DIR, check_folder, float32_state
from ..core.experiment import StepExperiment
from ..core.flows import flow_matching_loss, sample_ode, teacher_ode
from ..core.scale import Scale, get_scale
from ..core.train import fit, load_or_train, seed_everything
from ..metrics.frechet import precision_recall
from ..metrics.samples import coupled_error, exact_w2, get_metric, sliced_quantiles, sliced_w2
from ..nets.mlp import TimeMLP
from ..nets.utils import ema_update, n_params
from .data import Sampler, dataset_name, sample_data

TEACHER_NFE = 64  # the teacher's reference ODE solution: 64 evaluations of the midpoint rule
TEACHER_METHOD = "midpoint"
# The toy networks see Fourier features of the point (4 octaves, longest period 3.6: the checkerboard's
# side), and the teacher trains at a higher learning rate with its times drawn towards the data end.
# Measured at ci (4,000 steps, seed 0, 64 midpoint NFE): raw coordinates put 20.5% of the teacher's
# samples off the checkerboard's cells (k-NN precision 0.84 against 0.98 for a second data draw);
# these three changes, at the same cost, 5.2% (precision 0.96). `python -m distill_lab.toy2d.teacher`
# measures each change alone (the README's "The toy teacher" holds its table).
X_FREQ, X_PERIOD = 4, 3.6
TEACHER_LR = 3e-3
TEACHER_TIMES = "late"
TEACHER_FILES = ("teacher.pt",)
COMMIT_COMMAND = "python -m distill_lab.toy2d.teacher --commit --scale {scale} --data {data}"


class ToyTeacherUnavailable(FileNotFoundError):
    """A committed toy-2D teacher folder is incomplete or its files do not match their manifest."""


def committed_teacher_dir(data: str, scale: str, root: Path | None = None) -> Path:
    """The folder a committed toy-2D teacher of ``data`` at ``scale`` lives in:
    ``datasets/teachers/toy2d_<data>_<scale>`` (written by ``python -m distill_lab.toy2d.teacher --commit``)."""
    return Path(root or TEACHERS_DIR) / f"toy2d_{data}_{scale}"


def teacher_times(n: int, how: str = TEACHER_TIMES, device=None, generator=None) -> torch.Tensor:
    """Training times of the flow-matching teacher: ``"uniform"`` on [0, 1], or ``"late"``,
    ``t = 1 - (1 - u)^2`` with ``u`` uniform (density ``1 / (2 sqrt(1 - t))``, rising towards ``t = 1``),
    which puts more of the training where the velocity field has the data's sharp edges (``t = 1`` is
    the data end)."""
    u = torch.rand(n, generator=generator).to(device)
    if how == "uniform":
        return u
    if how == "late":
        return 1 - (1 - u) ** 2
    raise ValueError(f"unknown time sampling {how!r}: use 'uniform' or 'late'")


def train_flow_teacher(net: torch.nn.Module, data: str | Sampler, steps: int, batch: int,
                       lr: float = TEACHER_LR, seed: int = 0, device: str = "cpu",
                       progress: bool = True, check_every: int = 1, deadline: float | None = None,
                       times: str = TEACHER_TIMES, ema: float = 0.0) -> dict:
    """Train ``net`` as a velocity field by flow matching on fresh draws of ``data``.

    Adam with a cosine-decayed learning rate; the times drawn by :func:`teacher_times` (``times``).
    ``ema > 0`` keeps an exponential moving average of the weights with that decay and leaves it in
    ``net`` at the end (the toy teacher does not: ``python -m distill_lab.toy2d.teacher`` measures why).
    Returns :func:`fit`'s history.
    """
    teacher_times(1, times)  # an unknown time sampling fails here, before any training
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema is a decay in [0, 1), got {ema}")
    seed_everything(seed)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    avg = copy.deepcopy(net).requires_grad_(False) if ema else None

    def step(i):
        x1 = sample_data(data, batch, seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)), device=device)
        loss = flow_matching_loss(net, x1, t=teacher_times(batch, times, device=device, generator=g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if avg is not None:
            ema_update(avg, net, ema)
        return loss

    hist = fit(step, steps, desc="flow-matching teacher", progress=progress, check_every=check_every,
               deadline=deadline)
    if avg is not None:
        net.load_state_dict(avg.state_dict())
    return hist


class Toy2D(StepExperiment):
    """Data, teacher and evaluation for one toy-2D distribution at one scale.

    Parameters
    ----------
    data : a built-in name (``"checkerboard"``...) or any callable ``n -> Tensor[n, 2]``.
    scale : ``"ci"``, ``"default"``, ``"gpu"``, a :class:`Scale`, or ``None`` for ``$DISTILL_LAB_SCALE``.
    seed : fixes the teacher's training and every evaluation draw.
    metric : ``"sliced_w2"`` (default) or ``"energy"``.
    cache : use a teacher made before with exactly the same settings (:meth:`teacher_config`): the
        committed one (:func:`committed_teacher_dir`; the checkerboard's at ci and default, seed 0), else
        the one in the cache; train (and cache) it otherwise. :attr:`teacher_source` says which it was.
    deadline : a ``time.perf_counter()`` value at which every training loop of this experiment stops,
        the teacher's included (then it is not cached); for time-boxed measurements.
    sharp_metrics : also report, in :meth:`evaluate`, the exact W2 and the k-NN precision and recall
        (:meth:`sharp`, on :attr:`SHARP_N` points; about 1 s a call), which rank samplers where the sliced
        W2 cannot: mass bled into the checkerboard's empty cells lowers precision, a missed cell recall.
        Off by default (a lab evaluates dozens of samplers); the bench, the tour and lab 00 turn it on.
    """

    SHARP_N = 2000  # points compared by the exact W2 and the k-NN precision and recall
    SHARP_K = 3  # neighbours defining each point's k-NN ball

    shape = (2,)  # one sample: a point in the plane
    # a time.perf_counter() value after which training loops stop early (time-boxed runs of gpu-check)
    deadline: float | None = None

    def __init__(self, data: str | Sampler = "checkerboard", scale: str | Scale | None = None,
                 seed: int = 0, metric: str = "sliced_w2", cache: bool = True, progress: bool = True,
                 deadline: float | None = None, sharp_metrics: bool = False):
        self.data = data
        self.sharp_metrics = sharp_metrics
        self.deadline = deadline
        self.name = dataset_name(data)
        self.scale = get_scale(scale)
        self.seed = seed
        self.metric_name = metric
        self.metric = get_metric(metric)
        self.progress = progress
        self.device = self.scale.device
        sample_data(data, 8, seed=0)  # validate a user's sampler now, with a clear error
        t0 = time.perf_counter()
        self.teacher_history = None  # the teacher's training log, when it was trained (not loaded)
        # a time-boxed teacher may stop short of its steps: never cache it under the full run's key
        self.teacher = self._teacher(cache and not callable(data) and deadline is None)
        self.teacher_seconds = time.perf_counter() - t0
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    # ---------------------------------------------------------------- teacher
    def new_net(self, n_times: int = 1) -> TimeMLP:
        """A fresh MLP of this scale's size taking ``n_times`` times."""
        return TimeMLP(2, self.scale.width, self.scale.depth, n_times, x_freq=X_FREQ, x_period=X_PERIOD).to(self.device)

    def student_net(self, n_times: int = 1) -> TimeMLP:
        """A trainable copy of the teacher taking ``n_times`` times (extra ones start at zero weight)."""
        net = TimeMLP.from_net(self.teacher, n_times).to(self.device)
        for p in net.parameters():
            p.requires_grad_(True)
        return net.train()

    def teacher_config(self) -> dict:
        """Everything the teacher's weights depend on: the key of the cache and of a committed teacher."""
        sc = self.scale
        # version 2: the initialisation is seeded too (version 1 drew it from the process's random state);
        # version 3: Fourier features of x, the learning rate and the late times
        return dict(data=self.name, steps=sc.teacher_steps, width=sc.width, depth=sc.depth,
                    batch=sc.batch, seed=self.seed, x_freq=X_FREQ, x_period=X_PERIOD, lr=TEACHER_LR,
                    times=TEACHER_TIMES, version=3)

    def build_teacher(self) -> TimeMLP:
        """The teacher's network before training, its initial weights fixed by the seed alone."""
        seed_everything(self.seed)
        sc = self.scale
        return TimeMLP(2, sc.width, sc.depth, 1, x_freq=X_FREQ, x_period=X_PERIOD).to(self.device)

    def _committed_teacher(self, cfg: dict) -> TimeMLP | None:
        """The committed teacher (:func:`committed_teacher_dir`) when one was made with exactly ``cfg``;
        ``None`` when there is none or it was made with other settings (then the teacher is trained)."""
        folder = committed_teacher_dir(self.name, self.scale.name)
        if not (folder / "manifest.json").is_file():
            return None
        command = COMMIT_COMMAND.format(scale=self.scale.name, data=self.name)
        manifest = check_folder(folder, TEACHER_FILES, True, "toy-2D teacher", ToyTeacherUnavailable, command)
        if manifest.get("config") != cfg:
            return None
        net = self.build_teacher()
        state = torch.load(folder / "teacher.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(float32_state(state))
        self.teacher_source = f"committed: {folder.name}"
        return net.to(self.device).eval()

    def _teacher(self, use_cache: bool) -> TimeMLP:
        sc = self.scale
        cfg = self.teacher_config()
        build = self.build_teacher

        def train(net):
            self.teacher_history = train_flow_teacher(net, self.data, sc.teacher_steps, sc.batch, seed=self.seed,
                                                      device=self.device, progress=self.progress,
                                                      check_every=sc.check_every, deadline=self.deadline)

        self.teacher_source = "trained"
        if use_cache:
            committed = self._committed_teacher(cfg)
            if committed is not None:
                return committed
            net = load_or_train(f"toy2d-teacher-{self.name}", cfg, build, train, verbose=False)
            self.teacher_source = "trained" if self.teacher_history is not None else "cache"
            return net
        net = build()
        train(net)
        return net.eval()

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The teacher's velocity ``v(x, t)``."""
        return self.teacher(x, t)

    # ---------------------------------------------------------------- draws
    def sample_data(self, n: int, seed: int) -> torch.Tensor:
        return sample_data(self.data, n, seed=seed, device=self.device)

    def noise(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, 2, generator=g).to(self.device)

    def noise_batch(self, n: int | None = None) -> torch.Tensor:
        """Fresh Gaussian noise shaped like a data batch (from the global RNG)."""
        return torch.randn(n or self.scale.batch, 2, device=self.device)

    def data_batch(self, n: int | None = None) -> torch.Tensor:
        """A fresh training batch (from the global RNG, so it follows the recipe's seed)."""
        n = n or self.scale.batch
        return sample_data(self.data, n, seed=int(torch.randint(0, 2**31 - 1, (1,))), device=self.device)

    @torch.no_grad()
    def teacher_sample(self, z: torch.Tensor, nfe: int = TEACHER_NFE, method: str = TEACHER_METHOD) -> torch.Tensor:
        """The teacher's ODE solution from noise ``z`` (the reference for coupled errors)."""
        return teacher_ode(self.velocity, z, nfe, method)

    # ---------------------------------------------------------------- evaluation
    @cached_property
    def eval_noise(self) -> torch.Tensor:
        return self.noise(self.scale.eval_n, self.seed + 7)

    @cached_property
    def eval_data(self) -> torch.Tensor:
        return self.sample_data(self.scale.eval_n, self.seed + 11)

    @cached_property
    def eval_teacher(self) -> torch.Tensor:
        return self.teacher_sample(self.eval_noise)

    @cached_property
    def _eval_quantiles(self) -> torch.Tensor:
        """The held-out data's sorted projections, sorted once for every sliced-W2 evaluation."""
        return sliced_quantiles(self.eval_data, self.scale.n_proj)

    def distance(self, x: torch.Tensor) -> float:
        """The metric from ``x`` to the held-out data :attr:`eval_data`."""
        if self.metric_name == "sliced_w2":
            return sliced_w2(x, self.eval_data, n_proj=self.scale.n_proj, y_sorted=self._eval_quantiles)
        kw = {"n_proj": self.scale.n_proj} if self.metric_name == "sliced_w2" else {}
        return self.metric(x, self.eval_data, **kw)

    @cached_property
    def floor_data(self) -> torch.Tensor:
        """A second held-out draw, independent of :attr:`eval_data`: what every floor is measured on."""
        return self.sample_data(self.scale.eval_n, self.seed + 13)

    @cached_property
    def floor(self) -> float:
        """The metric between two independent held-out draws: the best any sampler can show."""
        return self.distance(self.floor_data)

    @torch.no_grad()
    def sharp(self, x: torch.Tensor) -> dict:
        """``{"w2", "precision", "recall"}`` of the samples ``x`` against the held-out data, on the first
        :attr:`SHARP_N` points of each: the exact W2 (:func:`~distill_lab.metrics.samples.exact_w2`) and
        the k-NN precision and recall of the image track (:func:`~distill_lab.metrics.frechet.precision_recall`,
        Kynkäänniemi et al. 2019, on the points themselves). :attr:`sharp_floor` gives their floors."""
        n = min(self.SHARP_N, x.shape[0], self.eval_data.shape[0])
        p, r = precision_recall(self.eval_data[:n], x[:n], k=self.SHARP_K)
        return {"w2": exact_w2(x[:n], self.eval_data[:n], max_n=n), "precision": p, "recall": r}

    @cached_property
    def sharp_floor(self) -> dict:
        """:meth:`sharp` of a second, independent draw of the data: what a perfect sampler shows (its
        precision and recall sit below 1, its W2 above 0, by sampling noise alone)."""
        return self.sharp(self.floor_data)

    @torch.no_grad()
    def evaluate(self, sample: Callable[..., torch.Tensor], nfe: int | None = None) -> dict:
        """Evaluate ``sample(z)`` (or ``sample(z, nfe)``) on the fixed evaluation noise.

        Returns ``value`` (the metric to held-out data), ``floor``, ``ratio = value / floor`` and
        ``coupled`` (mean distance to the teacher's ODE solution from the same noise); with
        ``sharp_metrics`` also :meth:`sharp`'s ``w2``, ``precision`` and ``recall``.
        """
        x = sample(self.eval_noise) if nfe is None else sample(self.eval_noise, nfe)
        if x.shape != self.eval_noise.shape:
            raise ValueError(f"a sampler must return shape {tuple(self.eval_noise.shape)}, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("the sampler produced NaN or inf; the student has diverged")
        v = self.distance(x)
        out = {"value": v, "floor": self.floor, "ratio": v / self.floor, "coupled": coupled_error(x, self.eval_teacher)}
        if self.sharp_metrics:
            out.update(self.sharp(x))
        return out

    @torch.no_grad()
    def teacher_curve(self, nfes=(1, 2, 4, 8, 16, 32, 64), method: str = "euler") -> dict[int, float]:
        """The teacher's metric at each NFE with one sampler: its quality-versus-cost curve."""
        return {n: self.distance(sample_ode(self.velocity, self.eval_noise, n, method)) for n in nfes}

    def fit(self, step, n_steps: int, desc: str):
        """:func:`~distill_lab.core.train.fit` with this experiment's progress setting, the scale's
        NaN-check interval, and :attr:`deadline`."""
        return fit(step, n_steps, desc=desc, progress=self.progress, check_every=self.scale.check_every,
                   deadline=self.deadline)

    def __repr__(self):
        return (f"Toy2D({self.name!r}, scale={self.scale.name!r}, teacher={n_params(self.teacher):,} params "
                f"({self.teacher_source}), device={self.device!r})")
