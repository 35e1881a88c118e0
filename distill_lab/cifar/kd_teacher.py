"""The CIFAR-10 teacher of the knowledge-distillation track: train it once, commit its logits.

Students never run the teacher: they read its logits on every training image, plain and mirrored,
from a small committed folder. This module trains the teacher, writes that folder, and loads it back
with its sha256 checked.

    python -m distill_lab.cifar.teachers kd --scale default --out datasets/teachers/cifar10

The folder holds

* ``teacher.pt`` -- the weights, an fp16 ``state_dict`` of the model named in the manifest;
* ``train_logits.pt`` -- fp16 ``[2, 50000, 10]``: logits on every training image, plain (``[0]``)
  and mirrored (``[1]``), in :func:`~distill_lab.cifar.data.load_cifar10`'s order;
* ``test_logits.pt`` -- fp16 ``[2, 10000, 10]``, the same on the test set;
* ``manifest.json`` -- each file's sha256 and size, the command, machine, torch version, training
  seconds, test accuracy (with and without flip test-time augmentation) and the teacher's mean
  softmax entropy at T=1 and T=4.

The teacher is trained **without label smoothing**: a smoothed teacher's soft targets are nearly
uniform at T=4 and distilling from it hurts the student (``MEASURED.md``; Müller et al. 2019).
All logits are computed from the fp16 weights reloaded as float32, so what :func:`load_teacher`
returns reproduces the recorded accuracy.

Recipe per scale (SGD-Nesterov, one-cycle, batch 256, crop + flip, no label smoothing):

* ``ci``: a small :class:`~distill_lab.cifar.classifiers.FastVGG` (stem 16, widths 32-64-128, 293k
  parameters), 2 epochs -- a smoke test.
* ``default``: the same network, more epochs -- about 10 to 15 minutes on one CPU thread.
* ``gpu``: the full ``fast_vgg`` (1.98M parameters), 50 epochs of batch 512, bf16 autocast on CUDA.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.checkpoints import TEACHERS_DIR, check_folder, file_records, float32_state, fp16_state, machine
from ..core.distributed import Dist
from ..core.scale import get_scale
from ..core.train import seed_everything
from ..metrics.classification import metrics_from_logits
from ..nets.utils import n_params
from .classifiers import FastVGG
from .classify import predict_logits, train_classifier
from .data import load_cifar10

DEFAULT_DIR = TEACHERS_DIR / "cifar10"
FILES = ("teacher.pt", "train_logits.pt", "test_logits.pt")
REBUILD = "python -m distill_lab.cifar.teachers kd"  # the command that writes a teacher folder


class TeacherUnavailable(FileNotFoundError):
    """The teacher folder is missing a file, or a file's sha256 differs from the manifest's."""


def recipe(scale=None) -> dict:
    """The teacher's model and training settings at a scale (a plain dict, recorded in the manifest)."""
    sc = get_scale(scale)
    small = {"class": "FastVGG", "widths": [32, 64, 128], "stem": 16}
    return {
        "model": sc.pick(ci=small, default=small,
                         gpu={"class": "FastVGG", "widths": [64, 256, 256], "stem": 32}),
        # gpu: 50 epochs reached 90.97% with flip TTA in 23.6 s on one H200 (30: 90.48%, 40: 90.66%; seed 0)
        "epochs": sc.pick(ci=2, default=12, gpu=50),
        # on a GPU a batch of 512 (the learning rate scaled with it) halves the steps
        "batch_size": sc.pick(ci=256, default=256, gpu=512), "lr": sc.pick(ci=0.1, default=0.1, gpu=0.2),
        "momentum": 0.9, "weight_decay": 5e-4, "warmup": 0.15,
        "label_smoothing": 0.0, "seed": 0,
    }


def build_model(spec: dict) -> torch.nn.Module:
    if spec["class"] != "FastVGG":
        raise ValueError(f"unknown teacher model class {spec['class']!r}")
    return FastVGG(widths=tuple(spec["widths"]), stem=spec["stem"])


def mean_entropy(logits: torch.Tensor, T: float = 1.0) -> float:
    """Mean entropy (nats) of ``softmax(logits / T)`` over the leading dimensions."""
    logp = F.log_softmax(logits.float() / T, dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def train_teacher(data: dict, scale=None, progress: bool = True, epochs: float | None = None,
                  label_smoothing: float | None = None, seed: int | None = None, dist: Dist | None = None,
                  deadline: float | None = None) -> tuple[torch.nn.Module, dict]:
    """Train the teacher of :func:`recipe` on all of ``data``'s training images, on the scale's device
    with its fast paths (bf16 autocast, ...; :class:`~distill_lab.core.scale.Scale`); return
    ``(model, info)`` with ``info = {"recipe", "train_seconds", "steps", "history"}``. ``dist``: one
    process of a ``torchrun`` run (:mod:`distill_lab.core.distributed`); ``deadline``: stop early.

    ``epochs``, ``label_smoothing`` and ``seed`` override the recipe's (recorded in ``info["recipe"]``):
    shorter pilots, the second and third teachers of the consensus lab (other seeds, fewer epochs),
    and the label-smoothed teacher that lab 10 uses to show why the KD teacher is trained without it.
    """
    rc = recipe(scale)
    for key, value in (("epochs", epochs), ("label_smoothing", label_smoothing), ("seed", seed)):
        if value is not None:
            rc[key] = value
    if not 0.0 <= rc["label_smoothing"] < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {rc['label_smoothing']}")
    sc = get_scale(scale)
    seed_everything(rc["seed"])
    model = build_model(rc["model"])
    hist = train_classifier(model, (data["train_x"], data["train_y"]), epochs=rc["epochs"], lr=rc["lr"],
                            batch_size=rc["batch_size"], momentum=rc["momentum"],
                            weight_decay=rc["weight_decay"], warmup=rc["warmup"],
                            label_smoothing=rc["label_smoothing"], seed=rc["seed"], progress=progress,
                            desc="teacher", device=dist.device if dist else sc.device, amp=sc.amp,
                            compile=sc.compile, check_every=sc.check_every, dist=dist, deadline=deadline)
    return model, {"recipe": rc, "train_seconds": hist["seconds"], "steps": hist["steps"], "history": hist}


def save_teacher(model: torch.nn.Module, data: dict, out: str | os.PathLike, info: dict,
                 command: str | None = None) -> dict:
    """Write the fp16 weights, the logits computed from them, and the manifest to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = fp16_state(model)
    # evaluate exactly what a loader gets back: the fp16 weights in a float32 model
    model = build_model(info["recipe"]["model"])
    model.load_state_dict(float32_state(state))
    t0 = time.perf_counter()
    train_logits = torch.stack([predict_logits(model, data["train_x"], flip=f) for f in (False, True)])
    test_logits = torch.stack([predict_logits(model, data["test_x"], flip=f) for f in (False, True)])
    logit_seconds = time.perf_counter() - t0
    plain = metrics_from_logits(test_logits[0], data["test_y"])
    tta = metrics_from_logits(test_logits.mean(0), data["test_y"])
    torch.save(state, out / "teacher.pt")
    torch.save(train_logits.half(), out / "train_logits.pt")
    torch.save(test_logits.half(), out / "test_logits.pt")
    manifest = {
        "what": "CIFAR-10 teacher of distill-lab's KD track, trained "
                + (f"with label smoothing {ls:g} (the lab's counter-example)" if (ls := info["recipe"].get(
                    "label_smoothing", 0.0)) else "without label smoothing"),
        "command": command or shlex.join(["python"] + sys.argv),
        "data_source": data.get("source", "unknown"),
        "recipe": info["recipe"],
        "n_params": n_params(model),
        "train_seconds": round(info["train_seconds"], 1),
        "logit_seconds": round(logit_seconds, 1),
        "machine": machine(),
        "torch": torch.__version__,
        "test": {"acc": plain["acc"], "nll": plain["nll"], "ece": plain["ece"],
                 "acc_flip_tta": tta["acc"], "nll_flip_tta": tta["nll"]},
        "train_acc_plain": float((train_logits[0].argmax(-1) == data["train_y"]).double().mean()),
        "mean_entropy": {"T1": mean_entropy(train_logits[0], 1.0), "T4": mean_entropy(train_logits[0], 4.0),
                         "max": float(torch.log(torch.tensor(float(train_logits.shape[-1]))))},
        "files": file_records(out, FILES),
        "logits_layout": "[2, N, C] float16: [0] plain images, [1] mirrored; images in load_cifar10 order",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_teacher(path: str | os.PathLike = DEFAULT_DIR, verify: bool = True,
                 missing_ok: bool = False) -> dict | None:
    """The committed teacher: ``{"model", "train_logits", "test_logits", "manifest"}``.

    ``model`` is the float32 network in eval mode; the logits are float16 ``[2, N, 10]`` (plain,
    mirrored). With ``verify`` every file's sha256 is checked against ``manifest.json``. A missing
    folder or file, a hash mismatch, or a manifest without the ``files`` hashes or the ``recipe``,
    raises :class:`TeacherUnavailable` saying how to rebuild it, or returns ``None`` when ``missing_ok``
    (so the caller can retrain); the figures (``test``, ``mean_entropy``...) may be absent.
    """
    path = Path(path)
    manifest = check_folder(path, FILES, verify, "teacher", TeacherUnavailable, REBUILD, missing_ok,
                            required=("recipe",))
    if manifest is None:
        return None
    model = build_model(manifest["recipe"]["model"])
    state = torch.load(path / "teacher.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(float32_state(state))
    return {"model": model.eval(), "manifest": manifest,
            "train_logits": torch.load(path / "train_logits.pt", map_location="cpu", weights_only=True),
            "test_logits": torch.load(path / "test_logits.pt", map_location="cpu", weights_only=True)}


def load_or_train_teacher(path: str | os.PathLike = DEFAULT_DIR, scale=None, data: dict | None = None,
                          progress: bool = True) -> dict:
    """:func:`load_teacher` when the folder is complete and its hashes match; otherwise train the
    teacher of :func:`recipe` ``(scale)``, write the folder, and load it."""
    teacher = load_teacher(path, missing_ok=True)
    if teacher is not None:
        return teacher
    print(f"no valid teacher at {path}; training one (scale {get_scale(scale).name})")
    data = data if data is not None else load_cifar10()
    model, info = train_teacher(data, scale, progress)
    save_teacher(model, data, path, info)
    return load_teacher(path)
