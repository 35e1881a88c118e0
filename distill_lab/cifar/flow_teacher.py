"""The CIFAR-10 flow-matching teacher of the step-distillation track: train it once, commit it small.

    python -m distill_lab.cifar.teachers flow --scale ci --out datasets/teachers/cifar10_flow_ci
    python -m distill_lab.cifar.teachers flow --scale ci --variant attn   # lab 22's softmax-attention teacher

A :class:`~distill_lab.nets.unet.TimeUNet` velocity field ``v(x, t)`` is trained by conditional flow
matching with the linear path (Lipman et al. 2023, "Flow matching for generative modeling", eq. 23;
Liu et al. 2023, rectified flow): :func:`distill_lab.core.flows.flow_matching_loss` on CIFAR-10 images
in ``[-1, 1]`` at the scale's resolution (:mod:`distill_lab.cifar.flow_config`), randomly mirrored. Adam with a
short linear warm-up and cosine decay, gradient clipping at norm 1, and an exponential moving average
of the weights (the EMA copy is the teacher: averaged weights give visibly better samples, as in
Ho et al. 2020 and Karras et al. 2022).

The folder holds

* ``teacher.pt`` -- the EMA weights, an fp16 ``state_dict`` of ``TimeUNet(**manifest["unet"])``;
* ``manifest.json`` -- the file's sha256 and size, the command, machine, torch version, training
  seconds, the U-Net configuration, the scale's settings, and the teacher's quality: the Fréchet
  distance in classifier features (not FID, see :mod:`distill_lab.cifar.features`) of its Euler samples
  at NFE 1, 2, 4, 8, 16, 32 and of its reference solver, beside the floor (two disjoint real halves).

Every number in the manifest is measured on the fp16 weights reloaded as float32, which is what
:func:`load_flow_teacher` returns.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from pathlib import Path

import torch

from ..core.checkpoints import check_folder, file_records, float32_state, fp16_state, training_record
from ..core.distributed import Dist
from ..core.flows import flow_matching_loss
from ..core.scale import bf16_ok, get_scale
from ..core.train import fit, seed_everything
from ..nets.attention import Attention
from ..nets.unet import TimeUNet
from ..nets.utils import clone_frozen, ema_update, n_params
from .flow_config import (ImageScale, build_unet, default_teacher_dir, image_scale, image_scale_dict,
                          load_flow_data, teacher_for)

FILES = ("teacher.pt",)
REBUILD = "python -m distill_lab.cifar.teachers flow"  # the command that writes a teacher folder


class FlowTeacherUnavailable(FileNotFoundError):
    """The flow-teacher folder lacks a file, or a file's sha256 differs from the manifest's."""


def train_flow_teacher(train_x: torch.Tensor, isc: ImageScale, seed: int = 0, steps: int | None = None,
                       device: str = "cpu", progress: bool = True, amp: bool = False, check_every: int = 1,
                       compile: bool = False, dist: Dist | None = None, deadline: float | None = None,
                       log_every: int = 100) -> tuple[TimeUNet, dict]:
    """Flow-match a :class:`TimeUNet` on images ``train_x: [N, 3, R, R]`` in ``[-1, 1]``.

    Each step: a batch of ``isc.teacher_batch`` random images, each mirrored with probability 1/2,
    :func:`~distill_lab.core.flows.flow_matching_loss` (uniform ``t``), Adam (``isc.teacher_lr``, warm-up
    over the first 2% of steps, then cosine to zero), gradients clipped at norm 1, and the EMA update
    ``ema <- d ema + (1 - d) theta`` with ``d = min(isc.teacher_ema, (1 + i) / (10 + i))`` (a short
    average early on, so the EMA is not stuck near the random initialisation).

    ``amp``, ``check_every``, ``compile``: the gpu scale's fast paths (bf16 autocast with the U-Net in
    channels-last layout and its softmax attention fused, on CUDA; the NaN check every ``check_every``
    steps; ``torch.compile``). ``dist`` (:func:`distill_lab.core.distributed.setup`): under ``torchrun``
    every process draws the same global batch, noise and times and trains on its share, DDP averaging
    the gradients, so the run is the one-process run (:mod:`distill_lab.core.distributed`).
    ``deadline``: stop early at that ``time.perf_counter()`` value.

    Returns ``(ema_net, info)`` with ``info = {"steps", "train_seconds", "final_loss", "history"}``
    (``steps``: the steps that ran; ``final_loss``: the mean of the last 10 logged losses).
    """
    steps = steps or isc.teacher_steps
    d = dist or Dist(device=str(device))
    fast = amp and bf16_ok(device)
    seed_everything(seed)
    net = build_unet(isc).to(device).train()
    ema = clone_frozen(net)
    if fast:
        net = net.to(memory_format=torch.channels_last)
        for m in net.modules():
            if isinstance(m, Attention):
                m.fused = True  # the same function by the fastest kernel; the teacher (ema) stays written out
    model = d.wrap(net)
    model = torch.compile(model) if compile else model
    opt = torch.optim.Adam(net.parameters(), lr=isc.teacher_lr)
    warm = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    train_x = train_x.to(device)
    fmt = torch.channels_last if fast else torch.contiguous_format

    def step(i):
        # the global batch, identical on every process (same seed, same draws), then this process's share
        idx = torch.randint(0, train_x.shape[0], (isc.teacher_batch,), device=device)
        x1 = train_x[idx]
        flip = torch.rand(x1.shape[0], device=device) < 0.5
        x1 = torch.where(flip.view(-1, 1, 1, 1), x1.flip(-1), x1)
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=device)
        x1, x0, t = d.shard(x1, x0, t)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fast):
            loss = flow_matching_loss(model, x1.contiguous(memory_format=fmt), x0.contiguous(memory_format=fmt), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, net, min(isc.teacher_ema, (1 + i) / (10 + i)))
        return {"loss": d.mean(loss), "grad_norm": gn}

    hist = fit(step, steps, desc="flow teacher (CIFAR-10)", log_every=log_every, progress=progress and d.main,
               check_every=check_every, deadline=deadline)
    for b_ema, b in zip(ema.buffers(), net.buffers()):  # TimeUNet has no running statistics; copy anyway
        b_ema.copy_(b)
    losses = hist.get("loss", [])[-10:]
    final = float(sum(losses) / len(losses)) if losses else None
    return ema.eval(), {"steps": hist["steps"], "train_seconds": hist["seconds"], "final_loss": final,
                        "history": hist}


def _net_from_state(unet_cfg: dict, state: dict) -> TimeUNet:
    net = TimeUNet(**unet_cfg)
    net.load_state_dict(float32_state(state))
    return net.eval()


def save_flow_teacher(net: TimeUNet, out: str | os.PathLike, isc: ImageScale, info: dict,
                      command: str | None = None, scale=None, data_source: str = "unknown") -> dict:
    """Write the fp16 weights and ``manifest.json`` to ``out``; return the manifest. The teacher's
    quality (:func:`distill_lab.cifar.flow_experiment.teacher_quality`, measured on the weights as
    saved) is added by ``python -m distill_lab.cifar.teachers flow`` once it is measured."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = fp16_state(net)
    torch.save(state, out / "teacher.pt")
    net32 = _net_from_state(net.config, state)
    manifest = {
        "what": "CIFAR-10 flow-matching teacher (velocity U-Net) of distill-lab's step-distillation track",
        "data_source": data_source,
        "scale": get_scale(scale).name,
        "image_scale": image_scale_dict(isc),
        "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in net.config.items()},
        "n_params": n_params(net32),
        **training_record(info, command or shlex.join(["python"] + sys.argv)),
        "files": file_records(out, FILES),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_flow_teacher(path: str | os.PathLike | None = None, verify: bool = True,
                      missing_ok: bool = False) -> dict | None:
    """The committed flow teacher: ``{"model": TimeUNet (float32, eval), "manifest": dict}``.

    With ``verify`` each file's sha256 is checked against ``manifest.json``. A missing folder or
    file, a mismatch, or a manifest without the ``files`` hashes or the ``unet`` settings raises
    :class:`FlowTeacherUnavailable` saying how to rebuild it, or returns ``None`` when ``missing_ok``;
    the manifest's figures (``quality``, ``final_loss``...) may be absent.
    """
    path = Path(path) if path is not None else default_teacher_dir("ci")
    manifest = check_folder(path, FILES, verify, "flow teacher", FlowTeacherUnavailable, REBUILD, missing_ok,
                            required=("unet",))
    if manifest is None:
        return None
    state = torch.load(path / "teacher.pt", map_location="cpu", weights_only=True)
    return {"model": _net_from_state(manifest["unet"], state), "manifest": manifest}


def load_or_train_flow_teacher(path: str | os.PathLike | None = None, scale=None, progress: bool = True,
                               data: dict | None = None, variant: str | None = None) -> dict:
    """:func:`load_flow_teacher` when the folder is complete and its hashes match; otherwise train the
    scale's teacher (:func:`train_flow_teacher`; ``variant="attn"``: the softmax-attention teacher),
    write the folder, and load it (then with ``"trained": True``). Without ``path``, a scale with no
    committed teacher of its own loads the ``ci`` one (:func:`~distill_lab.cifar.flow_config.teacher_for`:
    a printed notice; ``$DISTILL_LAB_TRAIN_TEACHERS=1`` trains the scale's own instead)."""
    sc = get_scale(scale)
    if path is None:
        used, path = teacher_for(sc, variant)
        sc = sc if used == sc.name else get_scale(used, device=sc.device)
    path = Path(path)
    teacher = load_flow_teacher(path, missing_ok=True)
    if teacher is not None:
        return teacher
    print(f"no valid flow teacher at {path}; training one (scale {sc.name}{', variant ' + variant if variant else ''})")
    isc = image_scale(sc, variant)
    flow_data = load_flow_data(isc, data)
    net, info = train_flow_teacher(flow_data["train"], isc, device=sc.device, progress=progress, amp=sc.amp,
                                   check_every=sc.check_every, compile=sc.compile)
    save_flow_teacher(net, path, isc, info, scale=sc)
    return {**load_flow_teacher(path), "trained": True}
