"""Several processes, one training run: ``torch.distributed`` launched by ``torchrun``, or one process.

    torchrun --nproc-per-node 4 -m distill_lab.cifar.teachers flow --scale gpu
    python -m distill_lab.cifar.teachers flow --scale gpu          # the same run, one process

:func:`setup` reads the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and
starts the process group: NCCL with each process on ``cuda:LOCAL_RANK`` when the run is on GPUs, gloo
on the CPU. Without ``torchrun`` it starts nothing and returns a one-process :class:`Dist`, so every
helper below is a no-op and the code path is the single-process one.

How a run stays the run it would be on one process (data parallelism, PyTorch's
``DistributedDataParallel``): every process draws the same *global* batch from the same seeded random
stream (data indices, augmentations, noise, times), keeps its own equal share of it (:meth:`Dist.shard`),
and DDP averages the gradients over the processes. The mean of the shares' mean losses is the global
batch's mean loss, so the update is the one-process update up to the order of floating-point sums.
BatchNorm is the exception: it normalises with the statistics of its own share, unless the model is
converted to ``SyncBatchNorm`` (:meth:`Dist.wrap` does so on CUDA; PyTorch has no CPU version), so on
CPUs a classifier's distributed run is close to, not equal to, the one-process run. Only rank 0 logs,
shows progress and writes checkpoints (:attr:`Dist.main`); :meth:`Dist.barrier` lets the others wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run: ``rank`` of ``world`` processes, on ``device``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """The process that logs, shows progress bars and writes files (rank 0)."""
        return self.rank == 0

    def shard(self, *tensors: torch.Tensor):
        """This process's equal, contiguous share of each global batch (the first dimension). The
        batch must divide evenly, or the shares' mean losses would not average to the global mean."""
        out = []
        for x in tensors:
            if not self.active:
                out.append(x)
                continue
            if x.shape[0] % self.world:
                raise ValueError(f"a global batch of {x.shape[0]} does not split evenly over {self.world} "
                                 "processes; choose a batch divisible by --nproc-per-node")
            n = x.shape[0] // self.world
            out.append(x[self.rank * n:(self.rank + 1) * n])
        return out[0] if len(out) == 1 else tuple(out)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` when several processes run (BatchNorm synchronised on
        CUDA), else ``model`` itself. Optimise ``model``'s parameters; call the returned module."""
        if not self.active:
            return model
        if self.device.startswith("cuda"):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return nn.parallel.DistributedDataParallel(model, device_ids=[self.local_rank])
        return nn.parallel.DistributedDataParallel(model)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of a (detached) tensor over the processes: the global batch's mean loss for logs."""
        if not self.active:
            return x.detach()
        y = x.detach().clone()
        torch_dist.all_reduce(y)
        return y / self.world

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()


def setup(device: str | None = None) -> Dist:
    """Join the ``torchrun`` process group when there is one (``WORLD_SIZE > 1``), else return the
    one-process :class:`Dist`. ``device``: ``"cuda"`` or ``"cpu"`` (default: CUDA when available); under
    ``torchrun`` on GPUs each process takes ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if world <= 1:
        return Dist(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if torch.cuda.device_count() <= local:
            raise RuntimeError(f"process {rank} wants cuda:{local}, but this machine has "
                               f"{torch.cuda.device_count()} GPU(s); lower --nproc-per-node")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank=rank, world=world, local_rank=local, device=device)


def cleanup() -> None:
    """Leave the process group (at the end of a ``torchrun`` script)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
