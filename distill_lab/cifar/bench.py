"""The CIFAR-10 bench tracks: ``cifar`` (knowledge distillation of a classifier), ``cifar-gen``
(step distillation of the flow teacher, the toy-2D bench on images) and ``cifar-sr`` (one-step
super-resolution students of the conditional teacher, :mod:`.sr`).

    python -m distill_lab bench cifar --scale ci --methods hinton_kd,taid --seeds 0 1 2
    python -m distill_lab bench cifar-gen --scale ci --json out/bench_cifar_gen.json

Importing this module registers both tracks, the KD recipes (:mod:`.kd_recipes`) and the
step-distillation recipes (:mod:`distill_lab.methods.step`); ``cifar-gen`` runs those registered with
``tracks`` containing it. The metric of ``cifar-gen`` is the Fréchet distance in the project's
CIFAR-10 classifier's features, **not FID** (:mod:`.features`).
"""

from __future__ import annotations

from ..core.bench import STEP_ROW_KEYS, BenchTrack, format_step_table, register_track, run_step_bench
from ..methods import step  # noqa: F401  (registers the step-distillation recipes)
from .flow_experiment import CifarFlow
from .kd_experiment import CifarKD
from .kd_recipes import CIFAR_ROW_KEYS, format_cifar_table, run_cifar
from .sr import SR_ROW_KEYS, SRExperiment, format_sr_table, run_sr_bench


def _prepare_kd(args, scale) -> CifarKD:
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    exp = CifarKD(scale, progress=not args.quiet, **overrides)
    print(f"bench cifar: {exp} device={scale.device}")
    return exp


def _prepare_gen(args, scale) -> CifarFlow:
    exp = CifarFlow(scale, seed=args.seed, progress=not args.quiet)
    print(f"bench cifar-gen: {exp} device={scale.device} seed={args.seed} "
          f"(metric: Fréchet distance in the CIFAR-10 classifier's features, not FID)")
    return exp


register_track(BenchTrack(
    name="cifar", summary="knowledge and self-distillation of a CIFAR-10 classifier (test accuracy, mean over seeds)",
    row_keys=CIFAR_ROW_KEYS, prepare=_prepare_kd,
    run=lambda exp, methods, args: run_cifar(methods=methods, seeds=args.seeds, exp=exp),
    table=format_cifar_table))

register_track(BenchTrack(
    name="cifar-gen", summary="step distillation of the CIFAR-10 flow teacher (FD in classifier features, not FID)",
    row_keys=STEP_ROW_KEYS, prepare=_prepare_gen,
    run=lambda exp, methods, args: run_step_bench(exp, methods, seed=args.seed, track="cifar-gen"),
    table=format_step_table))


def _prepare_sr(args, scale) -> SRExperiment:
    exp = SRExperiment(scale, seed=args.seed, progress=not args.quiet)
    print(f"bench cifar-sr: {exp.resolution // 2}x{exp.resolution // 2} -> {exp.resolution}x{exp.resolution}, "
          f"{exp.eval_n} test images, device={exp.device} seed={args.seed}")
    return exp


register_track(BenchTrack(
    name="cifar-sr", summary="one-step super-resolution students of the conditional flow teacher (PSNR, HF "
                             "spectrum error, FD in classifier features)",
    row_keys=SR_ROW_KEYS, prepare=_prepare_sr,
    run=lambda exp, methods, args: run_sr_bench(exp, methods, seed=args.seed),
    table=format_sr_table))
