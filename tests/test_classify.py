"""The classifier trainer of the KD track (distill_lab.cifar.classify) and the committed CIFAR-10 teacher
(distill_lab.cifar.kd_teacher). Synthetic tiny data, except the last test, which loads the teacher."""

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from distill_lab.cifar.classifiers import TinyCNN
from distill_lab.cifar.classify import (IndexedLoader, evaluate_classifier, kd, one_cycle, predict_logits,
                                        stratified_indices, train_classifier)
from distill_lab.cifar.data import GpuLoader, batch_flip, normalize, subset
from distill_lab.cifar.kd_teacher import (DEFAULT_DIR, TeacherUnavailable, load_or_train_teacher, load_teacher,
                                          recipe, save_teacher)
from distill_lab.metrics import classification as clsm
from distill_lab.metrics.classification import metrics_from_logits

ROOT = Path(__file__).resolve().parents[1]


def colour_data(n_per_class=40, classes=3, seed=0):
    """Images whose class is their dominant colour channel, plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randint(0, 120, (len(y), 3, 32, 32), generator=g)
    x[torch.arange(len(y)), y % 3] += 120
    return x.to(torch.uint8), y


# ------------------------------------------------------------------ loader with indices
def test_indexed_loader_matches_gpuloader_and_reports_idx_and_flip():
    x, y = colour_data(20)
    a = GpuLoader(x, y, batch_size=16, seed=3, device="cpu")
    b = IndexedLoader(x, y, batch_size=16, seed=3, device="cpu")
    for (xa, ya), (xb, yb, idx, flipped) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(y[idx], yb)
    # without crops the batch is exactly the indexed images, mirrored where `flipped`
    c = IndexedLoader(x, y, batch_size=16, seed=1, device="cpu", crop_pad=0)
    seen = []
    for xb, yb, idx, flipped in c:
        assert torch.equal(xb, normalize(batch_flip(x[idx], flipped)))
        seen.append(idx)
    assert 0 < torch.cat([f for *_, f in c]).float().mean() < 1
    assert sorted(torch.cat(seen).tolist()) == sorted(set(torch.cat(seen).tolist()))  # no repeats
    ev = IndexedLoader(x, y, batch_size=16, train=False, device="cpu")
    assert torch.equal(torch.cat([i for _, _, i, _ in ev]), torch.arange(len(x)))


def test_stratified_indices_are_the_subset_of_cifar_subset():
    x, y = colour_data(30, classes=10)
    data = {"train_x": x, "train_y": y, "test_x": x, "test_y": y, "classes": [str(i) for i in range(10)]}
    idx = stratified_indices(y, 7, seed=5)
    sub = subset(data, 7, seed=5)
    assert torch.equal(x[idx], sub["train_x"]) and torch.equal(y[idx], sub["train_y"])
    with pytest.raises(ValueError, match="fewer than"):
        stratified_indices(y, 31)


# ------------------------------------------------------------------ training
def test_one_cycle_schedule():
    f = [one_cycle(i, 100, 0.2) for i in range(101)]
    assert f[0] == pytest.approx(0.1) and max(f) == pytest.approx(1.0) and f[20] == pytest.approx(1.0)
    assert f[100] == 0.0 and all(a >= b for a, b in zip(f[20:], f[21:]))


def test_train_classifier_learns_colours():
    x, y = colour_data(40)
    torch.manual_seed(0)
    model = TinyCNN(widths=(8, 16, 16), num_classes=3)
    hist = train_classifier(model, (x, y), steps=40, lr=0.05, batch_size=32, seed=0, progress=False)
    assert hist["seconds"] > 0 and not model.training
    xt, yt = colour_data(20, seed=1)
    m = evaluate_classifier(model, xt, yt)
    assert m["acc"] > 0.9, m
    assert set(m) == {"acc", "nll", "ece"}


class FlipProbe(nn.Module):
    """Logit 0 says whether the image's bright half is on the left (it was mirrored); the rest is a
    trainable bias, so there is something to optimise."""

    def __init__(self, c=3):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        mirrored = (x[..., :16].mean((1, 2, 3)) > x[..., 16:].mean((1, 2, 3))).float()
        return torch.cat([mirrored[:, None], torch.zeros(len(x), len(self.bias) - 1)], 1) + self.bias


def test_teacher_logits_are_looked_up_by_index_and_flip():
    x, y = colour_data(20)
    x[..., :16] = 0  # every plain image is dark on the left, bright on the right
    x[..., 16:] = 200
    N = len(x)
    teacher = torch.zeros(2, N, 3)
    teacher[:, :, 0] = y.float()      # which image: its label
    teacher[1, :, 1] = 1.0            # which view: mirrored
    checked = []

    def spy(logits, labels, t):
        assert torch.equal(t[:, 0], labels.float())
        assert torch.equal(t[:, 1], (logits[:, 0] - model.bias[0]).detach())  # mirrored <=> [1]
        checked.append(len(labels))
        return (logits ** 2).mean()

    model = FlipProbe()
    loader = IndexedLoader(x, y, batch_size=16, seed=0, device="cpu")
    train_classifier(model, loader, steps=8, teacher_logits=teacher.half(), loss_fn=spy, progress=False)
    assert sum(checked) == 8 * 16
    # a plain GpuLoader is wrapped, its settings kept
    checked.clear()
    model = FlipProbe()
    train_classifier(model, GpuLoader(x, y, batch_size=8, device="cpu"), steps=3, teacher_logits=teacher,
                     loss_fn=spy, progress=False)
    assert checked == [8, 8, 8]


def test_kd_loss_fn_and_errors():
    x, y = colour_data(10)
    teacher = torch.randn(2, len(x), 3)
    model = TinyCNN(widths=(4, 4, 4), num_classes=3)
    hist = train_classifier(model, (x, y), steps=3, batch_size=8, teacher_logits=teacher,
                            loss_fn=kd(T=4, alpha=0.9), progress=False)
    assert {"kd", "ce", "agreement"} <= set(hist)
    with pytest.raises(ValueError, match="exactly one"):
        train_classifier(model, (x, y), steps=3, epochs=1)
    with pytest.raises(ValueError, match="no loss_fn"):
        train_classifier(model, (x, y), steps=3, teacher_logits=teacher)
    with pytest.raises(ValueError, match=r"teacher_logits must be \[2, 30, \.\.\., C\]"):
        train_classifier(model, (x, y), steps=3, batch_size=8, teacher_logits=teacher[0], loss_fn=kd())
    with pytest.raises(ValueError, match="pass teacher_logits"):
        train_classifier(model, (x, y), steps=1, batch_size=8, loss_fn=kd(), progress=False)
    with pytest.raises(ValueError, match="no full batch"):
        train_classifier(model, (x, y), steps=1, batch_size=64, progress=False)


def test_evaluate_classifier_matches_kd_metrics_and_flip_tta():
    x, y = colour_data(10)

    class Fixed(nn.Module):  # logits from the left/right brightness: flip changes them
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, z):
            return self.w * torch.stack([z[:, 0].mean((1, 2)), z[:, 1, :, :16].mean((1, 2)),
                                         z[:, 2, :, 16:].mean((1, 2))], 1)

    m = Fixed()
    logits = m(normalize(x))
    got = evaluate_classifier(m, x, y, batch_size=7)
    assert got["acc"] == pytest.approx(clsm.accuracy(logits, y))
    assert got["nll"] == pytest.approx(clsm.nll(logits, y), rel=1e-5)
    assert got["ece"] == pytest.approx(clsm.expected_calibration_error(logits.softmax(-1), y), abs=1e-6)
    tta = evaluate_classifier(m, x, y, tta_flip=True)
    both = 0.5 * (logits + m(normalize(x).flip(-1)))
    assert tta == pytest.approx(metrics_from_logits(both, y))
    assert torch.allclose(predict_logits(m, x, flip=True), m(normalize(x.flip(-1))), atol=1e-5)


# ------------------------------------------------------------------ teacher files
def tiny_data():
    x, y = colour_data(4, classes=10)
    return {"train_x": x, "train_y": y, "test_x": x[:20], "test_y": y[:20], "source": "synthetic"}


def test_save_and_load_teacher_checks_hashes(tmp_path):
    data = tiny_data()
    rc = recipe("ci")
    from distill_lab.cifar.kd_teacher import build_model
    model = build_model(rc["model"])
    man = save_teacher(model, data, tmp_path / "t", {"recipe": rc, "train_seconds": 0.0}, command="test")
    assert json.loads((tmp_path / "t" / "manifest.json").read_text()) == man
    t = load_teacher(tmp_path / "t")
    assert t["train_logits"].shape == (2, 40, 10) and t["train_logits"].dtype == torch.float16
    assert t["test_logits"].shape == (2, 20, 10)
    # the stored logits are those of the stored (fp16) weights
    assert torch.allclose(predict_logits(t["model"], data["test_x"]), t["test_logits"][0].float(), atol=2e-2)
    assert man["test"]["acc"] == metrics_from_logits(t["test_logits"][0].float(), data["test_y"])["acc"]
    assert 0 < man["mean_entropy"]["T1"] <= man["mean_entropy"]["T4"] <= man["mean_entropy"]["max"]
    # corrupt a file: a clear error, or None when the caller will retrain
    p = tmp_path / "t" / "train_logits.pt"
    blob = bytearray(p.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    p.write_bytes(bytes(blob))
    with pytest.raises(TeacherUnavailable, match="train_logits.pt has sha256 .* the manifest says .*Rebuild"):
        load_teacher(tmp_path / "t")
    assert load_teacher(tmp_path / "t", missing_ok=True) is None
    assert load_teacher(tmp_path / "t", verify=False) is not None
    with pytest.raises(TeacherUnavailable, match="manifest.json is missing"):
        load_teacher(tmp_path / "nothing")


def test_load_or_train_teacher_trains_when_missing(tmp_path, monkeypatch):
    from distill_lab.cifar import kd_teacher as teacher_cifar
    calls = []

    def fake_train(data, scale=None, progress=True, epochs=None):
        calls.append(scale)
        rc = recipe("ci")
        return teacher_cifar.build_model(rc["model"]), {"recipe": rc, "train_seconds": 1.0}

    monkeypatch.setattr(teacher_cifar, "train_teacher", fake_train)
    t = load_or_train_teacher(tmp_path / "t", scale="ci", data=tiny_data(), progress=False)
    assert calls == ["ci"] and t["manifest"]["train_seconds"] == 1.0
    load_or_train_teacher(tmp_path / "t", scale="ci", data=tiny_data())
    assert calls == ["ci"]  # loaded, not retrained


def test_committed_teacher_reproduces_its_accuracy():
    """The committed teacher's hashes match, and a re-evaluation of its weights on 1,000 test images
    agrees with the recorded accuracy (within 2 points) and with the cached logits."""
    src = os.environ.get("DISTILL_LAB_CIFAR") or ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    if not Path(src).exists():
        pytest.skip(f"no CIFAR-10 copy at {src}")
    from distill_lab.cifar.data import load_cifar10
    t = load_teacher(DEFAULT_DIR, verify=True)
    man = t["manifest"]
    assert t["train_logits"].shape == (2, 50000, 10) and t["test_logits"].shape == (2, 10000, 10)
    assert man["recipe"]["label_smoothing"] == 0.0
    assert sum(f["bytes"] for f in man["files"].values()) < 5e6
    data = load_cifar10(src, verbose=False)
    idx = stratified_indices(data["test_y"], 100, seed=0)
    logits = predict_logits(t["model"], data["test_x"][idx])
    acc = metrics_from_logits(logits, data["test_y"][idx])["acc"]
    assert abs(acc - man["test"]["acc"]) < 0.02, (acc, man["test"]["acc"])
    cached = t["test_logits"][0, idx].float()
    assert (logits.argmax(-1) == cached.argmax(-1)).float().mean() > 0.99
    assert torch.allclose(logits, cached, atol=0.05)
