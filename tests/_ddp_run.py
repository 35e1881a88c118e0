"""Run by tests/test_distributed.py, alone (one process) or under ``torchrun --nproc-per-node 2`` (gloo
on the CPU): a few steps of the flow teacher's training loop and of the classifier training loop with
cached teacher logits, on fixed synthetic data and the same global batch. Rank 0 writes every step's
loss and the flow teacher's folder (``save_flow_teacher``) under the folder given as argument."""

import json
import sys
from pathlib import Path

import torch
from torch import nn

from distill_lab.cifar.classify import kd, train_classifier
from distill_lab.cifar.flow_config import ImageScale
from distill_lab.cifar.flow_teacher import save_flow_teacher, train_flow_teacher
from distill_lab.core import distributed

TINY = ImageScale(resolution=8, unet=dict(base=8, mults=(1, 2)), teacher_steps=12, teacher_batch=16,
                  teacher_lr=1e-3, teacher_ema=0.9, batch=16, student_steps=3, eval_n=40, teacher_nfe=4)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    d = distributed.setup("cpu")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 8, 8, generator=g) * 2 - 1
    net, info = train_flow_teacher(images, TINY, steps=TINY.teacher_steps, progress=False, dist=d, log_every=1)
    # a classifier without BatchNorm (which normalises each process's share on CPUs), distilled from
    # cached teacher logits: the sharding of images, labels and teacher logits, and the gradient average
    pixels = (torch.rand(96, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (96,), generator=g)
    teacher_logits = torch.randn(2, 96, 10, generator=g)
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    hist = train_classifier(clf, (pixels, labels), steps=10, batch_size=32, lr=0.05, loss_fn=kd(T=4, alpha=0.9),
                            teacher_logits=teacher_logits, progress=False, dist=d, log_every=1)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        save_flow_teacher(net, out / "flow", TINY, info, command="tests/_ddp_run.py", scale="ci")
        torch.save(clf.state_dict(), out / "classifier.pt")
        (out / "losses.json").write_text(json.dumps({"world": d.world, "flow": info["history"]["loss"],
                                                     "classifier": hist["loss"]}))
    d.barrier()
    distributed.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
