"""The command that makes the CIFAR-10 track's committed teachers: ``kd`` (the classifier every KD
lab distils from, with its logits) and ``flow`` (the flow-matching U-Net of the step-distillation
labs, with its quality curve). Each writes a folder of fp16 weights and a ``manifest.json``
(:mod:`distill_lab.core.checkpoints`) that records this command, the machine and the figures::

    python -m distill_lab.cifar.teachers kd --scale default --out datasets/teachers/cifar10
    python -m distill_lab.cifar.teachers kd --scale default --label-smoothing 0.2 --out datasets/teachers/cifar10_ls
    python -m distill_lab.cifar.teachers flow --scale ci                 # datasets/teachers/cifar10_flow_ci
    python -m distill_lab.cifar.teachers flow --scale ci --variant attn  # lab 22's softmax-attention teacher

The same command runs on several GPUs (or CPU processes) under ``torchrun``, one training run in data
parallel (:mod:`distill_lab.core.distributed`); only rank 0 writes the folder::

    torchrun --nproc-per-node 8 -m distill_lab.cifar.teachers flow --scale gpu

What each trains, and how, is in :mod:`distill_lab.cifar.kd_teacher` and :mod:`distill_lab.cifar.flow_teacher`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from ..core import distributed
from ..core.checkpoints import update_manifest
from ..core.scale import SCALES, get_scale
from .data import load_cifar10
from .flow_config import image_scale, load_flow_data, own_teacher_dir
from .flow_experiment import teacher_quality
from .flow_teacher import load_flow_teacher, save_flow_teacher, train_flow_teacher
from .kd_teacher import DEFAULT_DIR, recipe, save_teacher, train_teacher

PROG = "python -m distill_lab.cifar.teachers"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="teacher", required=True)
    kd = sub.add_parser("kd", help="the classifier teacher of the KD labs (weights and logits)")
    kd.add_argument("--out", default=str(DEFAULT_DIR), help="folder to write (default: %(default)s)")
    kd.add_argument("--epochs", type=float, default=None, help="override the scale's epochs (pilots)")
    kd.add_argument("--label-smoothing", type=float, default=None,
                    help="override the recipe's 0 (only for the label-smoothing counter-example)")
    kd.add_argument("--seed", type=int, default=None, help="override the recipe's seed 0")
    flow = sub.add_parser("flow", help="the flow-matching U-Net of the step-distillation labs")
    flow.add_argument("--out", default=None, help="folder to write (default: datasets/teachers/cifar10_flow_<scale>)")
    flow.add_argument("--steps", type=int, default=None, help="override the scale's Adam steps (pilots)")
    flow.add_argument("--seed", type=int, default=0)
    flow.add_argument("--variant", default="", choices=["", "attn"],
                      help="'attn': the softmax-attention teacher of the architecture-distillation section "
                           "(default out: datasets/teachers/cifar10_flow_attn_<scale>)")
    flow.add_argument("--evaluate-only", action="store_true",
                      help="re-measure the quality of the weights already in --out and rewrite the manifest")
    for p in (kd, flow):
        p.add_argument("--scale", default=None, choices=SCALES,
                       help="ci, default or gpu (default: $DISTILL_LAB_SCALE or default)")
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        p.add_argument("--no-progress", action="store_true")
    return ap


def main(argv=None) -> dict | None:
    """Train and write one teacher; returns its manifest (``None`` on the other ranks of a ``torchrun``)."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    command = f"{PROG} " + shlex.join(sys.argv[1:] if argv is None else argv)
    dist = distributed.setup(get_scale(args.scale).device)
    try:
        return (_kd if args.teacher == "kd" else _flow)(args, command, dist)
    finally:
        distributed.cleanup()


def _kd(args, command: str, dist) -> dict | None:
    data = load_cifar10(verbose=dist.main)
    model_rc = recipe(args.scale)
    if dist.main:
        print(f"teacher {model_rc['model']} on {len(data['train_x'])} images, scale {get_scale(args.scale).name}, "
              f"{torch.get_num_threads()} thread(s), {dist.world} process(es)", flush=True)
    model, info = train_teacher(data, args.scale, progress=not args.no_progress, epochs=args.epochs,
                                label_smoothing=args.label_smoothing, seed=args.seed, dist=dist)
    if not dist.main:
        return None
    print(f"trained in {info['train_seconds']:.0f} s; computing logits", flush=True)
    manifest = save_teacher(model, data, args.out, info, command=command)
    print(json.dumps({k: manifest[k] for k in ("train_seconds", "test", "mean_entropy", "files")}, indent=2))
    return manifest


def _flow(args, command: str, dist) -> dict | None:
    if args.evaluate_only and not dist.main:
        return None
    sc = get_scale(args.scale)
    isc = image_scale(sc, args.variant)
    out = Path(args.out) if args.out else own_teacher_dir(sc, args.variant)
    cifar = load_cifar10(verbose=False)
    if args.evaluate_only:
        old = json.loads((out / "manifest.json").read_text())
        net = load_flow_teacher(out, verify=False)["model"]
        info = {k: old.get(k) for k in ("steps", "train_seconds", "final_loss")}
        command = old.get("command", command)
    else:
        flow_data = load_flow_data(isc, cifar)
        if dist.main:
            print(f"flow teacher TimeUNet({isc.unet}) on {len(flow_data['train'])} images of "
                  f"{isc.resolution}x{isc.resolution}, {args.steps or isc.teacher_steps} steps, scale {sc.name}, "
                  f"{torch.get_num_threads()} thread(s), {dist.world} process(es)", flush=True)
        net, info = train_flow_teacher(flow_data["train"], isc, seed=args.seed, steps=args.steps,
                                       device=dist.device, progress=not args.no_progress, amp=sc.amp,
                                       check_every=sc.check_every, compile=sc.compile, dist=dist)
        if not dist.main:
            return None
        info["final_loss"] = float(sum(info["history"]["loss"][-10:]) / len(info["history"]["loss"][-10:]))
        print(f"trained in {info['train_seconds']:.0f} s; measuring the NFE curve", flush=True)
    save_flow_teacher(net, out, isc, info, command=command, scale=sc, data_source=cifar.get("source", ""))
    # the quality of the weights as saved (fp16 reloaded as float32), which is what users load
    manifest = update_manifest(out, quality=teacher_quality(load_flow_teacher(out)["model"], sc))
    print(json.dumps({k: manifest[k] for k in ("train_seconds", "n_params", "quality", "files")}, indent=2))
    return manifest


if __name__ == "__main__":
    main()
