"""Train and evaluate a CIFAR classifier: the loop every knowledge-distillation method of the image
track shares.

* :class:`IndexedLoader` -- a :class:`~distill_lab.cifar.data.GpuLoader` that also yields, for each
  batch, the images' indices into its ``x`` and their flip mask, so cached teacher logits can be
  looked up per batch. Same random draws as ``GpuLoader``: with the same arguments it yields the same
  ``(x, y)`` batches.
* :func:`train_classifier` -- SGD with Nesterov momentum and a one-cycle learning rate (linear warm-up,
  then linear decay to zero), run by :func:`distill_lab.core.train.fit` (progress bar, NaN guard). The loss
  is cross-entropy by default, or any ``loss_fn(logits, labels, teacher) -> loss | (loss, info)``;
  with ``teacher_logits [2, N, C]`` (the teacher's logits on each of the ``N`` training images, plain
  at ``[0]`` and mirrored at ``[1]``) the student needs no live teacher.
* :func:`kd` -- the Hinton loss of :func:`distill_lab.methods.kd.kd_loss` as such a ``loss_fn``.
* :func:`predict_logits`, :func:`evaluate_classifier` -- batch-wise, without gradients:
  ``{"acc", "nll", "ece"}`` (ECE with 15 bins, :func:`distill_lab.metrics.classification.expected_calibration_error`).
* :func:`stratified_indices` -- the indices :func:`distill_lab.cifar.data.subset` picks, so a subset's
  teacher logits are ``teacher_logits[:, idx]``.

Cached logits are of uncropped images; the student sees randomly cropped ones. The teacher's
prediction on the uncropped image is the target, as in ``MEASURED.md``'s CPU runs.

    >>> idx = stratified_indices(data["train_y"], 250, seed=0)          # doctest: +SKIP
    >>> loader = IndexedLoader(data["train_x"][idx], data["train_y"][idx], batch_size=128)  # doctest: +SKIP
    >>> hist = train_classifier(student, loader, epochs=30, lr=0.05,     # doctest: +SKIP
    ...                         teacher_logits=logits[:, idx], loss_fn=kd(T=4, alpha=0.9))
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.distributed import Dist
from ..core.scale import bf16_ok
from ..core.train import fit, seed_everything
from ..methods.kd.hinton import kd_loss
from ..metrics.classification import metrics_from_logits
from .data import GpuLoader, normalize

__all__ = ["IndexedLoader", "stratified_indices", "train_classifier", "kd", "predict_logits",
           "evaluate_classifier", "one_cycle"]


# ------------------------------------------------------------------ data
class IndexedLoader(GpuLoader):
    """A :class:`~distill_lab.cifar.data.GpuLoader` that yields ``(x, y, idx, flipped)``.

    ``idx`` int64 ``[B]``: each image's position in ``self.x``; ``flipped`` bool ``[B]``: whether it
    was mirrored. The random draws are ``GpuLoader``'s, in the same order (permutation, then per batch
    the crop offsets, then the flips), so both loaders give the same images for the same seed and
    epoch: both iterate :meth:`~distill_lab.cifar.data.GpuLoader.batches_with_index`, and ``GpuLoader``
    drops the last two entries.
    """

    def __iter__(self):
        return self.batches_with_index()


def stratified_indices(y: torch.Tensor, n_per_class: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``n_per_class`` random images of each class: exactly the training images
    :func:`distill_lab.cifar.data.subset` ``(data, n_per_class, seed)`` keeps (same generator, same order
    of draws)."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(int(y.max()) + 1):
        idx = (y == c).nonzero().flatten()
        if len(idx) < n_per_class:
            raise ValueError(f"stratified_indices: class {c} has {len(idx)} images, fewer than {n_per_class}")
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n_per_class]])
    return torch.cat(keep).sort().values


def _as_loader(data, batch_size: int, seed: int, device=None) -> IndexedLoader:
    """An :class:`IndexedLoader` from a loader, a ``(x, y)`` pair or a dict with ``train_x/train_y``."""
    if isinstance(data, IndexedLoader):
        return data
    if isinstance(data, GpuLoader):  # same settings, indices added
        return IndexedLoader(data.x, data.y, data.batch_size, train=data.train, seed=data.seed,
                             device=data.device, crop_pad=data.crop_pad, pad_mode=data.pad_mode,
                             flip=data.flip, drop_last=data.drop_last, normalized=data.normalized,
                             dtype=data.dtype)
    if isinstance(data, dict):
        data = (data["train_x"], data["train_y"])
    x, y = data
    return IndexedLoader(x, y, batch_size, train=True, seed=seed, device=device or "cpu")


# ------------------------------------------------------------------ losses
def kd(T: float = 4.0, alpha: float = 0.9) -> Callable:
    """Hinton KD (:func:`distill_lab.methods.kd.kd_loss`) as a ``loss_fn(logits, labels, teacher)``:
    ``alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, y)``."""
    def loss_fn(logits, labels, teacher):
        if teacher is None:
            raise ValueError("kd(): pass teacher_logits to train_classifier")
        return kd_loss(logits, teacher, T=T, alpha=alpha, labels=labels)
    return loss_fn


# ------------------------------------------------------------------ training
def one_cycle(step: int, total: int, warmup: float = 0.15) -> float:
    """Learning-rate factor: linear from 0.1 to 1 over the first ``warmup`` of the steps, then linear
    to 0 at the end."""
    w = max(1, int(warmup * total))
    if step < w:
        return 0.1 + 0.9 * step / w
    return max(0.0, (total - step) / max(1, total - w))


def train_classifier(model: nn.Module, data, steps: int | None = None, epochs: float | None = None,
                     lr: float = 0.05, batch_size: int = 256, momentum: float = 0.9,
                     weight_decay: float = 5e-4, warmup: float = 0.15,
                     loss_fn: Callable | None = None, teacher_logits: torch.Tensor | None = None,
                     label_smoothing: float = 0.0, seed: int = 0, progress: bool = True,
                     channels_last: bool = True, desc: str = "classifier",
                     batch_loss: Callable | None = None, after_step: Callable | None = None,
                     device: str | torch.device | None = None, amp: bool = False, compile: bool = False,
                     check_every: int = 1, deadline: float | None = None, dist: Dist | None = None,
                     log_every: int = 50) -> dict:
    """Train ``model`` in place; return :func:`~distill_lab.core.train.fit`'s history (``"seconds"`` included).

    Parameters
    ----------
    model : maps normalised images ``[B, 3, 32, 32]`` to logits ``[B, C]``.
    data : an :class:`IndexedLoader` or ``GpuLoader`` (its settings are kept), a pair ``(x uint8
        [N, 3, 32, 32], y [N])`` or a dict with ``train_x``, ``train_y`` (then ``batch_size`` and
        ``seed`` make the loader: crop with reflect padding 4, flip).
    steps, epochs : the budget; give exactly one (``epochs`` may be fractional).
    lr, momentum, weight_decay, warmup : SGD with Nesterov momentum; peak learning rate ``lr`` on the
        one-cycle schedule of :func:`one_cycle`.
    loss_fn : ``loss_fn(logits [B, C], labels [B], teacher [B, C] or None) -> loss`` or
        ``(loss, info)``. Default: cross-entropy with ``label_smoothing``.
    teacher_logits : ``[2, N, ...]``, the teacher's logits on the loader's ``N`` images, unaugmented
        (``[0]``) and mirrored (``[1]``), usually ``[2, N, C]`` (several teachers: ``[2, N, M, C]``);
        each batch gets ``teacher_logits[flipped, idx]`` as float32. Requires a ``loss_fn`` (or
        ``batch_loss``) that uses it (e.g. :func:`kd`).
    batch_loss : for methods that need more than the logits of one view (rotated copies, a second
        view, a projection head): ``batch_loss(model, x, labels, teacher) -> loss | (loss, info)``
        replaces ``loss_fn(model(x), labels, teacher)``.
    after_step : called as ``after_step(i)`` after each optimiser step (e.g. an EMA teacher update).
    seed : seeds torch, NumPy and Python (:func:`~distill_lab.core.train.seed_everything`) and, for data
        given as tensors, the loader's shuffling and augmentation. Seed before building the model to
        fix its initialisation too.
    channels_last : run convolutions in NHWC memory layout (about 1.5 to 2x faster on a CPU).
    device : where data given as tensors is put (default the CPU; a loader keeps its own device).
    amp, compile, check_every : the gpu scale's fast paths (:class:`~distill_lab.core.scale.Scale`):
        bf16 autocast of the forward pass and loss on CUDA, ``torch.compile`` of the model, and the
        NaN check every ``check_every`` steps (:func:`~distill_lab.core.train.fit`).
    deadline : a ``time.perf_counter()`` value at which training stops early (time-boxed runs).
    dist : :func:`distill_lab.core.distributed.setup`'s handle under ``torchrun``: every process draws
        the same global batch and trains on its share, DDP averaging the gradients (BatchNorm is
        synchronised on CUDA; on CPUs each process normalises its own share). ``batch_size`` is the
        global batch.
    """
    if (steps is None) == (epochs is None):
        raise ValueError("train_classifier: give exactly one of steps= and epochs=")
    if teacher_logits is not None and loss_fn is None and batch_loss is None:
        raise ValueError("train_classifier: teacher_logits given but no loss_fn to use them; "
                         "pass e.g. loss_fn=kd(T=4, alpha=0.9)")
    seed_everything(seed)
    loader = _as_loader(data, batch_size, seed, device)
    if len(loader) == 0:
        raise ValueError(f"train_classifier: {len(loader.x)} images make no full batch of "
                         f"{loader.batch_size}; lower batch_size")
    if teacher_logits is not None:
        if teacher_logits.ndim < 3 or teacher_logits.shape[:2] != (2, len(loader.x)):
            raise ValueError(f"teacher_logits must be [2, {len(loader.x)}, ..., C] (plain, flipped) for the "
                             f"loader's {len(loader.x)} images, got {tuple(teacher_logits.shape)}")
        teacher_logits = teacher_logits.to(loader.device)
    n_steps = steps if steps is not None else max(1, round(epochs * len(loader)))
    if loss_fn is None:
        def loss_fn(logits, labels, teacher):
            return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=loader.device, memory_format=fmt).train()
    d = dist or Dist(device=str(loader.device))
    if d.active and batch_loss is not None:
        raise ValueError("train_classifier: methods with their own forward pass (batch_loss) run on one "
                         "process; launch them without torchrun")
    net = d.wrap(model)  # BatchNorm made synchronous (CUDA) in place, so the optimiser sees the same parameters
    net = torch.compile(net) if compile else net
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True,
                          weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: one_cycle(i, n_steps, warmup))
    batches = itertools.chain.from_iterable(iter(loader) for _ in itertools.count())
    use_amp = amp and bf16_ok(loader.device)

    def step(i):
        x, y, idx, flipped = next(batches)  # the global batch: the same on every process
        teacher = None if teacher_logits is None else teacher_logits[flipped.long(), idx].float()
        if d.active:
            x, y = d.shard(x, y)
            teacher = None if teacher is None else d.shard(teacher)
        x = x.contiguous(memory_format=fmt)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = batch_loss(net, x, y, teacher) if batch_loss is not None else loss_fn(net(x), y, teacher)
        loss, info = out if isinstance(out, tuple) else (out, {})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            after_step(i)
        return {**info, "loss": d.mean(loss)}

    hist = fit(step, n_steps, desc=desc, progress=progress and d.main, check_every=check_every, deadline=deadline,
               log_every=log_every)
    model.eval()
    return hist


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, flip: bool = False, batch_size: int = 1000,
                   channels_last: bool = True) -> torch.Tensor:
    """Logits ``[N, C]`` (float32, CPU) of ``model`` in eval mode on images ``x [N, 3, 32, 32]``
    (uint8 pixels, normalised here, or already normalised floats); ``flip`` mirrors them first."""
    was_training = model.training
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        xb = normalize(xb) if xb.dtype == torch.uint8 else xb.float()
        if flip:
            xb = xb.flip(-1)
        out.append(model(xb.contiguous(memory_format=fmt)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tta_flip: bool = False,
                        batch_size: int = 1000) -> dict:
    """``{"acc", "nll", "ece"}`` of ``model`` on ``(x, y)``; with ``tta_flip`` the logits are the mean
    of the plain and mirrored images' logits (test-time augmentation)."""
    logits = predict_logits(model, x, batch_size=batch_size)
    if tta_flip:
        logits = 0.5 * (logits + predict_logits(model, x, flip=True, batch_size=batch_size))
    return metrics_from_logits(logits, y)
