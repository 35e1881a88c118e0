"""Does Hinton distillation help a small CIFAR-10 student? Label-only vs KD, same budget, several seeds.

A ``tiny_cnn`` (24k parameters) trains on a class-balanced subset of the training images (2,500 by
default: the low-data regime where a teacher's soft targets matter most), either on the labels alone
or with Hinton KD (``T = 4``, ``alpha = 0.9`` on the distillation term) from the committed teacher's
cached logits (:func:`distill_lab.teacher_cifar.load_teacher`). Same subset, steps, learning rate and
augmentation for both; each seed fixes the student's initialisation and its batches. Accuracy is on
all 10,000 test images.

    python -m distill_lab.kd_cifar --n-per-class 250 --seeds 0 1 2 --json out/kd_cifar.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from .cifar import load_cifar10
from .cifar_models import get_model
from .classify import evaluate_classifier, kd, stratified_indices, train_classifier
from .teacher_cifar import DEFAULT_DIR, load_teacher
from .train import seed_everything


def kd_vs_labels(n_per_class: int = 250, seeds=(0, 1, 2), epochs: float = 40, batch_size: int = 128,
                 lr: float = 0.05, T: float = 4.0, alpha: float = 0.9, subset_seed: int = 0,
                 student: str = "tiny_cnn", teacher_dir=DEFAULT_DIR, data: dict | None = None,
                 progress: bool = True) -> dict:
    """Train the student label-only and with KD for each seed; return ``{"rows", "summary", "config"}``.

    ``rows``: one dict a run (``method``, ``seed``, ``acc``, ``nll``, ``ece``, ``seconds``);
    ``summary``: per method the mean and sample standard deviation of ``acc`` and the mean seconds.
    """
    data = data if data is not None else load_cifar10()
    teacher = load_teacher(teacher_dir)
    idx = stratified_indices(data["train_y"], n_per_class, seed=subset_seed)
    x, y = data["train_x"][idx], data["train_y"][idx]
    teacher_logits = teacher["train_logits"][:, idx]  # [2, n, 10]: plain, mirrored
    methods = {"labels": {}, f"kd_T{T:g}_a{alpha:g}": {"loss_fn": kd(T, alpha), "teacher_logits": teacher_logits}}
    rows = []
    for name, kw in methods.items():
        for seed in seeds:
            seed_everything(seed)
            model = get_model(student)
            t0 = time.perf_counter()
            train_classifier(model, (x, y), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             progress=progress, desc=f"{name} seed {seed}", **kw)
            seconds = time.perf_counter() - t0
            m = evaluate_classifier(model, data["test_x"], data["test_y"])
            rows.append({"method": name, "seed": seed, **m, "seconds": seconds})
            print(f"{name:12s} seed {seed}: acc {m['acc']:.4f}  nll {m['nll']:.3f}  ece {m['ece']:.3f}  "
                  f"{seconds:.0f} s", flush=True)
    summary = {}
    for name in methods:
        accs = [r["acc"] for r in rows if r["method"] == name]
        summary[name] = {"acc_mean": statistics.mean(accs),
                         "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                         "seconds_mean": statistics.mean(r["seconds"] for r in rows if r["method"] == name)}
    config = {"n_per_class": n_per_class, "seeds": list(seeds), "epochs": epochs, "batch_size": batch_size,
              "lr": lr, "T": T, "alpha": alpha, "subset_seed": subset_seed, "student": student,
              "teacher_test_acc": teacher["manifest"]["test"]["acc"], "torch_threads": torch.get_num_threads()}
    return {"rows": rows, "summary": summary, "config": config}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m distill_lab.kd_cifar", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-per-class", type=int, default=250)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the rows and summary here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = kd_vs_labels(args.n_per_class, tuple(args.seeds), args.epochs)
    for name, s in out["summary"].items():
        print(f"{name:12s} acc {100 * s['acc_mean']:.1f} +- {100 * s['acc_std']:.1f}"
              f"  ({s['seconds_mean']:.0f} s a run)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
