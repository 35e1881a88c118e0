"""Tests of the CIFAR-10 track's foundation: loading (archive, folder, pickled batches, cache),
clear errors, batch-wise augmentation, the loaders, subsets, and the CIFAR networks."""

import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from distill_lab.cifar import data as cifar
from distill_lab.cifar.classifiers import MODELS, get_model, n_params
from distill_lab.cifar.data import (CLASSES, GpuLoader, batch_crop, batch_flip, cifar_for_scale, load_cifar10,
                                    make_loaders, normalize, subset)

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 3, 2  # synthetic images per class


# ------------------------------------------------------------------ synthetic data
def _pixels(split, c, i):
    """The known pixels of synthetic image ``i`` of class ``c``: [32, 32, 3] uint8."""
    g = np.random.default_rng(1000 * (split == "test") + 10 * c + i)
    return g.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _make_folder(root: Path, classes=CLASSES, splits=("train", "test")) -> Path:
    """An ImageFolder tree ``root/cifar10/<split>/<class>/NNNN.png`` (PNG: lossless, exact pixels)."""
    from PIL import Image

    for split in splits:
        for c, name in enumerate(classes):
            d = root / "cifar10" / split / name
            d.mkdir(parents=True)
            for i in range(N_TRAIN if split == "train" else N_TEST):
                Image.fromarray(_pixels(split, c, i)).save(d / f"{i:04d}.png")
    return root / "cifar10"


def _expected(split):
    n = N_TRAIN if split == "train" else N_TEST
    x = np.stack([_pixels(split, c, i) for c in range(10) for i in range(n)])
    return torch.from_numpy(x).permute(0, 3, 1, 2), torch.arange(10).repeat_interleave(n)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache dir, no $DISTILL_LAB_CIFAR, and a download that fails at once (offline)."""
    monkeypatch.setenv("DISTILL_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DISTILL_LAB_CIFAR", raising=False)

    def offline(root):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(cifar, "_download_canonical", offline)
    return tmp_path / "cache"


def _no_decoding(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(cifar, "_decode", fail)


# ------------------------------------------------------------------ loading
def test_folder_and_archive_load_exactly_and_the_second_load_is_cached(tmp_path, cache, monkeypatch):
    folder = _make_folder(tmp_path / "data")
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar10")

    data = load_cifar10(folder.parent, verbose=False)  # the folder that holds cifar10/
    assert data["classes"] == list(CLASSES)
    for split in ("train", "test"):
        x, y = _expected(split)
        assert data[f"{split}_x"].dtype == torch.uint8 and data[f"{split}_y"].dtype == torch.int64
        assert torch.equal(data[f"{split}_x"], x) and torch.equal(data[f"{split}_y"], y)

    monkeypatch.setenv("DISTILL_LAB_CIFAR", str(archive))  # the archive, through the environment
    from_tar = load_cifar10(verbose=False)
    assert "archive" in from_tar["source"] and "$DISTILL_LAB_CIFAR" in from_tar["source"]
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(from_tar[k], data[k])
    assert len(list(cache.glob("cifar10-*.pt"))) == 2  # one file per source
    assert not list(tmp_path.glob("**/*.tmp"))

    _no_decoding(monkeypatch)
    for src in (archive, folder, tmp_path):  # tmp_path holds the archive: found too
        again = load_cifar10(src)
        assert torch.equal(again["train_x"], data["train_x"])


def test_a_changed_folder_is_decoded_again(tmp_path, cache):
    folder = _make_folder(tmp_path / "data")
    first = load_cifar10(folder, verbose=False)
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "train" / "cat" / "0099.png")
    second = load_cifar10(folder, verbose=False)
    assert len(second["train_x"]) == len(first["train_x"]) + 1
    assert int(second["train_y"].bincount()[CLASSES.index("cat")]) == N_TRAIN + 1


def test_torchvision_pickled_batches(tmp_path, cache):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    rng = np.random.default_rng(0)
    want = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, 4))}
        want[name] = d
        with open(batches / name, "wb") as f:
            pickle.dump(d, f)
    data = load_cifar10(tmp_path, verbose=False)
    assert data["train_x"].shape == (20, 3, 32, 32) and data["test_x"].shape == (4, 3, 32, 32)
    assert torch.equal(data["test_x"].flatten(1), torch.from_numpy(want["test_batch"]["data"]))
    assert data["train_y"].tolist() == [int(v) for i in range(1, 6) for v in want[f"data_batch_{i}"]["labels"]]


def test_malformed_folders_say_what_is_wrong(tmp_path, cache):
    classes = [c for c in CLASSES if c not in ("cat", "dog")] + ["kitten"]
    bad = _make_folder(tmp_path / "bad", classes=classes)
    with pytest.raises(ValueError, match=r"train/ lacks the class folders cat, dog.*not CIFAR-10 classes: kitten"):
        load_cifar10(bad)
    no_test = _make_folder(tmp_path / "no_test", splits=("train",))
    with pytest.raises(ValueError, match=r"no test/<class>/ images"):
        load_cifar10(no_test)
    empty = _make_folder(tmp_path / "empty")
    for f in (empty / "test" / "frog").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"frog holds no images"):
        load_cifar10(empty)
    with pytest.raises(FileNotFoundError, match=r"holds none of train/ and test/"):
        load_cifar10(tmp_path / "bad" / "cifar10" / "train" / "bird")


def test_missing_data_says_how_to_get_it(tmp_path, cache, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"download through torchvision failed \(OSError.*DISTILL_LAB_CIFAR"):
        load_cifar10()  # offline: the (patched) download fails at once
    # what to download and where to point: no path of the maintainers' machines
    how = r"download=False.*cifar-10-python\.tar\.gz.*export DISTILL_LAB_CIFAR=\$PWD/cifar-10-batches-py"
    with pytest.raises(FileNotFoundError, match=how):
        load_cifar10(download=False)
    monkeypatch.setenv("DISTILL_LAB_CIFAR", str(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(FileNotFoundError, match=r"\$DISTILL_LAB_CIFAR points at .*nowhere.tar.gz, which does not exist"):
        load_cifar10()


# ------------------------------------------------------------------ augmentation and loaders
def test_flip_is_torch_flip_and_crop_matches_padding():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    assert torch.equal(batch_flip(x, torch.ones(6, dtype=torch.bool)), torch.flip(x, [-1]))
    mask = torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool)
    out = batch_flip(x, mask)
    assert torch.equal(out[mask], x[mask].flip(-1)) and torch.equal(out[~mask], x[~mask])

    dy, dx = torch.randint(0, 9, (2, 6), generator=g)
    dy[0] = dx[0] = 4  # the centre crop is the image itself
    for mode, pad_mode in (("reflect", "reflect"), ("zeros", "constant")):
        out = batch_crop(x, dy, dx, 4, mode)
        assert out.shape == x.shape and out.dtype == torch.uint8
        assert torch.equal(out[0], x[0])
        padded = F.pad(x.float(), (4, 4, 4, 4), mode=pad_mode).to(torch.uint8)
        for b in range(6):
            want = padded[b, :, dy[b]:dy[b] + 32, dx[b]:dx[b] + 32]
            assert torch.equal(out[b], want), (mode, b)


def _tensors(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def test_loader_is_deterministic_and_augments_by_batch():
    x, y = _tensors()
    a = [b for b in GpuLoader(x, y, batch_size=16, seed=3, device="cpu")]
    b = [b for b in GpuLoader(x, y, batch_size=16, seed=3, device="cpu")]
    c = [b for b in GpuLoader(x, y, batch_size=16, seed=4, device="cpu")]
    assert len(a) == 2 and a[0][0].shape == (16, 3, 32, 32) and a[0][0].dtype == torch.float32  # drop_last
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])

    loader = GpuLoader(x, y, batch_size=16, seed=3, device="cpu", drop_last=False)
    assert len(loader) == 3
    e0, e1 = list(loader), list(loader)
    assert not torch.equal(e0[0][1], e1[0][1])  # a new permutation each epoch
    loader.epoch = 1
    assert torch.equal(list(loader)[0][0], e1[0][0])  # epoch 1 replayed

    # flip only: every image is its original or its mirror image, and both happen
    flips = GpuLoader(x, y, batch_size=40, seed=0, device="cpu", crop_pad=0, normalized=False)
    xb, yb = next(iter(flips))
    same = (xb[:, None] == x[None]).flatten(2).all(2).any(1)  # [40]: equals some original image
    mirrored = (xb[:, None] == x[None].flip(-1)).flatten(2).all(2).any(1)
    assert bool((same | mirrored).all()) and same.any() and mirrored.any()


def test_eval_loader_and_normalize():
    x, y = _tensors(25)
    train, test = make_loaders({"train_x": x, "train_y": y, "test_x": x, "test_y": y}, batch_size=8,
                               eval_batch_size=10, device="cpu")
    batches = list(test)
    assert [len(b[1]) for b in batches] == [10, 10, 5] and len(train) == 3
    xs = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    want = (x.float() / 255 - torch.tensor(cifar.MEAN).view(3, 1, 1)) / torch.tensor(cifar.STD).view(3, 1, 1)
    assert torch.allclose(xs, want, atol=1e-5) and torch.allclose(normalize(x), want, atol=1e-5)
    assert torch.allclose(cifar.denormalize(normalize(x)), x.float() / 255, atol=1e-5)


def test_subset_is_stratified_and_seeded(monkeypatch):
    x, y = _tensors(300)
    data = {"train_x": x, "train_y": y, "test_x": x[:100], "test_y": y[:100], "classes": list(CLASSES)}
    s = subset(data, 7, seed=1, test_per_class=3)
    assert s["train_y"].bincount().tolist() == [7] * 10 and s["test_y"].bincount().tolist() == [3] * 10
    assert torch.equal(subset(data, 7, seed=1)["train_x"], s["train_x"])
    assert not torch.equal(subset(data, 7, seed=2)["train_x"], s["train_x"])
    with pytest.raises(ValueError, match="fewer than the 31"):
        subset(data, 31)

    big = {"train_x": x.repeat(9, 1, 1, 1), "train_y": y.repeat(9),
           "test_x": x.repeat(7, 1, 1, 1), "test_y": y.repeat(7), "classes": list(CLASSES)}
    monkeypatch.setattr(cifar, "load_cifar10", lambda **kw: big)
    ci = cifar_for_scale("ci")
    assert len(ci["train_y"]) == 2500 and len(ci["test_y"]) == 2000
    assert ci["train_y"].bincount().tolist() == [250] * 10
    assert len(cifar_for_scale("default")["train_y"]) == len(big["train_y"])


def test_the_real_archive_if_present():
    src = os.environ.get("DISTILL_LAB_CIFAR") or ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    if not Path(src).exists():
        pytest.skip(f"no CIFAR-10 copy at {src}")
    t0 = time.perf_counter()
    data = load_cifar10(src)  # the first time on a machine decodes (about 15 s), then cached
    t1 = time.perf_counter()
    data = load_cifar10(src)
    t2 = time.perf_counter()
    print(f"first load {t1 - t0:.2f} s, cached load {t2 - t1:.2f} s")
    assert t2 - t1 < 2.0
    assert data["train_x"].shape == (50000, 3, 32, 32) and data["test_x"].shape == (10000, 3, 32, 32)
    assert data["train_y"].bincount().tolist() == [5000] * 10
    assert data["test_y"].bincount().tolist() == [1000] * 10
    mean = data["test_x"].float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(cifar.MEAN), atol=0.01)


# ------------------------------------------------------------------ models
PARAMS = {"tiny_cnn": 24_346, "resnet20": 272_474, "resnet56": 855_770, "wrn_16_2": 691_674,
          "resnet8x4": 1_210_410, "fast_vgg": 1_978_016, "wrn_40_2": 2_243_546, "resnet32x4": 7_410_730}


@pytest.mark.parametrize("name", list(MODELS))
def test_models_give_logits_and_features(name):
    torch.manual_seed(0)
    m = get_model(name).eval()
    assert n_params(m) == PARAMS[name]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = m(x), m.features(x)
    assert logits.shape == (2, 10) and feats.shape == (2, m.feature_dim)
    assert torch.allclose(m.fc(feats), logits, atol=1e-5)


def test_model_registry():
    assert get_model("resnet8x4", num_classes=100)(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    assert n_params(get_model("resnet8x4", num_classes=100)) == 1_233_540  # CRD's table: 1.23M
    with pytest.raises(ValueError, match="unknown CIFAR model 'resnet9'.*resnet8x4.*wrn_40_2"):
        get_model("resnet9")
