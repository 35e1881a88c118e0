"""One switch for how big every experiment is: ``ci``, ``default`` or ``gpu``.

The scale changes numbers (network widths, step counts, sample sizes) and, at ``gpu``, switches on
fast paths (bf16 autocast, fewer host-device synchronisations, optionally ``torch.compile``); the code
that runs is the same at every scale. It is read, in this order, from an explicit argument, the ``DISTILL_LAB_SCALE`` environment variable
(which is how nbval runs the labs small), and finally ``default``.

    >>> from distill_lab.core.scale import get_scale
    >>> sc = get_scale("ci")
    >>> sc.pick(ci=2000, default=6000, gpu=20000)
    2000
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

SCALES = ("ci", "default", "gpu")
ENV_VAR = "DISTILL_LAB_SCALE"
DEVICE_VAR = "DISTILL_LAB_DEVICE"
COMPILE_ENV = "DISTILL_LAB_COMPILE"  # "1": torch.compile the image networks at the gpu scale


@dataclass(frozen=True)
class Scale:
    """The sizes one scale stands for.

    ``ci``: each lab in about a minute on 2 CPU cores. ``default``: a laptop, minutes, the numbers a
    student should see. ``gpu``: one H100, larger networks and more steps.
    """

    name: str
    teacher_steps: int  # Adam steps of the flow-matching teacher
    width: int  # hidden width of the toy-2D MLPs
    depth: int  # hidden layers of the toy-2D MLPs
    batch: int  # training batch size
    student_steps: int  # base number of distillation steps (methods scale it with `pick`)
    eval_n: int  # held-out points for a metric
    n_proj: int  # projections for the sliced Wasserstein distance
    device: str
    # the gpu scale's fast paths (off at ci and default, so their code path and numbers are unchanged):
    amp: bool = False  # bf16 autocast for the image networks' training and sampling, on CUDA only
    check_every: int = 1  # steps between the training loop's NaN checks (each check waits for the GPU)
    compile: bool = False  # torch.compile the image networks (opt-in: $DISTILL_LAB_COMPILE=1 at gpu)

    def pick(self, ci, default, gpu):
        """Return the value that belongs to this scale; recipes use it for their own knobs."""
        return {"ci": ci, "default": default, "gpu": gpu}[self.name]

    @property
    def on_cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    def autocast(self):
        """``torch.autocast`` to bf16 when this scale asks for it and runs on a GPU with bf16, else a no-op."""
        if self.amp and bf16_ok(self.device):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def bf16_ok(device) -> bool:
    """Whether ``device`` is a CUDA GPU with bf16 arithmetic (Ampere and later; a T4 has none, so
    the gpu scale's autocast stays off there and training runs in float32)."""
    return str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _default_device() -> str:
    """``$DISTILL_LAB_DEVICE`` when set (``cpu``, ``cuda``, ``cuda:1``, ``mps``...), else CUDA when present.

    A device that does not exist here raises ``ValueError`` saying what is available, rather than failing
    later inside a network."""
    name = os.environ.get(DEVICE_VAR, "").strip()
    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"${DEVICE_VAR}={name!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"${DEVICE_VAR}={name!r} but this machine has {torch.cuda.device_count()} usable CUDA "
                         f"device(s); unset {DEVICE_VAR} or set it to cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"${DEVICE_VAR}={name!r} but MPS is not available here; unset {DEVICE_VAR} or set it to cpu")
    return name


def get_scale(name: str | Scale | None = None, device: str | None = None) -> Scale:
    """Resolve a scale from ``name``, else ``$DISTILL_LAB_SCALE``, else ``"default"``.

    Raises ``ValueError`` naming the valid choices when the name is unknown.
    """
    if isinstance(name, Scale):
        return name
    source = "argument"
    if name is None:
        name = os.environ.get(ENV_VAR)
        source = f"${ENV_VAR}"
    if name is None or name == "":
        name, source = "default", "default"
    name = str(name).strip().lower()
    if name not in SCALES:
        raise ValueError(
            f"unknown scale {name!r} (from {source}); choose one of {', '.join(SCALES)}, "
            f"e.g. `export {ENV_VAR}=ci` or `--scale ci`"
        )
    dev = device or _default_device()
    if name == "ci":
        return Scale("ci", teacher_steps=4000, width=256, depth=3, batch=1024, student_steps=2000,
                     eval_n=4000, n_proj=256, device=dev)
    if name == "default":
        return Scale("default", teacher_steps=10000, width=256, depth=3, batch=1024, student_steps=5000,
                     eval_n=10000, n_proj=512, device=dev)
    return Scale("gpu", teacher_steps=20000, width=512, depth=4, batch=4096, student_steps=20000,
                 eval_n=20000, n_proj=1024, device=dev, amp=True, check_every=25,
                 compile=os.environ.get(COMPILE_ENV, "") == "1")
