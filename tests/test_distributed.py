"""Data parallelism through torchrun: two gloo processes on the CPU train what one process trains.

``tests/_ddp_run.py`` runs the flow teacher's and the classifier's training loops on fixed synthetic
data, once alone and once under ``torchrun --nproc-per-node 2``, with the same global batch. Measured
on the 2-core development machine: the two runs' per-step losses differ by at most 2e-7 relative
(float32 sums in another order), so the test holds them to 1e-5; the two-process run's teacher folder
holds tensors of the same names and shapes, loads in one process, and computes the same velocities."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill_lab.cifar.flow_teacher import load_flow_teacher
from distill_lab.core.distributed import Dist

SCRIPT = Path(__file__).resolve().parent / "_ddp_run.py"


def run(out: Path, nproc: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1])}
    cmd = [sys.executable, str(SCRIPT), str(out)] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(SCRIPT),
        str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return json.loads((out / "losses.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    return root, run(root / "one", 1), run(root / "two", 2)


def test_two_processes_follow_the_one_process_loss_curve(runs):
    _, one, two = runs
    assert one["world"] == 1 and two["world"] == 2
    for name in ("flow", "classifier"):
        a, b = torch.tensor(one[name]), torch.tensor(two[name])
        assert len(a) == len(b) >= 10 and bool((a[1:] != a[0]).any()), f"{name}: too few steps to compare"
        rel = ((a - b).abs() / a.abs()).max().item()
        assert rel < 1e-5, f"{name}: the two-process loss curve is {rel:.1e} (relative) from the one-process one"


def test_the_two_process_checkpoint_loads_in_one_process(runs):
    root, _, _ = runs
    a, b = load_flow_teacher(root / "one" / "flow"), load_flow_teacher(root / "two" / "flow")
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
    # the same network: measured 5e-6 apart (relative) on a probe batch; Adam moves a few biases of
    # nearly zero gradient by up to 1.3e-3 with the other summation order, which the outputs do not feel
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(16, 3, 8, 8, generator=g), torch.rand(16, generator=g)
    with torch.no_grad():
        va, vb = a["model"](x, t), b["model"](x, t)
    assert ((va - vb).norm() / va.norm()).item() < 1e-4
    ca = torch.load(root / "one" / "classifier.pt", weights_only=True)
    cb = torch.load(root / "two" / "classifier.pt", weights_only=True)
    assert all(torch.allclose(ca[k], cb[k], atol=1e-5) for k in ca)


def test_shares_of_a_global_batch():
    x = torch.arange(12)
    parts = [Dist(rank=r, world=3).shard(x) for r in range(3)]
    assert torch.equal(torch.cat(parts), x) and all(len(p) == 4 for p in parts)
    assert Dist().shard(x) is x and Dist().mean(torch.tensor(2.0)) == 2.0
    with pytest.raises(ValueError, match="does not split evenly over 5"):
        Dist(rank=0, world=5).shard(x)
