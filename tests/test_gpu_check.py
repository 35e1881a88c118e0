"""``python -m distill_lab gpu-check``: every part runs at toy size on the CPU, and the real run
refuses a machine without CUDA with a message that says what to do."""

import json
import os
from pathlib import Path

import pytest
import torch

from distill_lab import gpu_check
from distill_lab.__main__ import main
from distill_lab.core.bench import bench_methods


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_real_run_refuses_with_a_clear_message(capsys):
    assert main(["gpu-check"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--device cpu --tiny" in err
    assert main(["gpu-check", "--device", "cpu"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert main(["gpu-check", "--device", "cpu", "--tiny", "--parts", "nope"]) == 2
    assert "unknown part(s) ['nope']" in capsys.readouterr().err


def test_every_part_runs_at_toy_size_on_the_cpu(tmp_path, monkeypatch, capsys):
    src = os.environ.get("DISTILL_LAB_CIFAR")
    if not src or not Path(src).exists():
        pytest.skip("the CIFAR parts need the offline copy ($DISTILL_LAB_CIFAR)")
    monkeypatch.setenv("DISTILL_LAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "gpu_check.json"
    assert main(["gpu-check", "--device", "cpu", "--tiny", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert res["tiny"] and res["environment"]["device"] == "cpu"
    assert {(r["track"], r["part"]) for r in rows} == {
        ("cifar", "kd teacher"), ("toy2d", "teacher"), ("toy2d", "trajectory"), ("toy2d", "dmd"),
        ("cifar-gen", "flow teacher"), ("cifar-gen", "trajectory"), ("cifar-gen", "dmd"),
        ("cifar", "labels"), ("cifar", "hinton_kd"), ("toy2d", "every recipe"), ("cifar-gen", "every recipe"),
        ("video", "teacher"), ("video", "self_forcing"), ("video", "streaming"),
        ("llm", "sft"), ("llm", "word_kd"), ("llm", "gkd_fkl"), ("llm", "hf gkd step")}
    for r in rows:
        assert r["error"] is None, r
        assert r["seconds"] > 0 and r["quality"] is not None, r
        assert r["steps"] or r["part"] in ("every recipe", "streaming"), r  # a training part counts its steps
        assert r["part"] in printed
    gkd = next(r for r in rows if r["part"] == "gkd_fkl")
    assert gkd["steps"] == gkd["steps_planned"] and "distinct sequences" in gkd["reference"]
    every = [len(bench_methods("toy2d")), len(bench_methods("cifar-gen"))]
    assert [r["quality"] for r in rows if r["part"] == "every recipe"] == every
    assert len(rows) == len(gpu_check.PARTS) + 10  # toy2d, video: three rows; llm four; cifar-gen, kd students, recipes: two


def test_a_part_that_no_longer_fits_the_budget_is_skipped_and_says_so(tmp_path):
    res = gpu_check.run(budget_minutes=0.01, device="cpu", tiny=True, parts=("toy2d",))
    assert [r["part"] for r in res["rows"]] == ["skipped"] and "left of the budget" in res["rows"][0]["what"]
