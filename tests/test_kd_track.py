"""The CIFAR KD track experiment (distill_lab.cifar.kd_experiment), its recipes and ``bench cifar``, on synthetic
tiny data with teachers saved to a temporary folder: every recipe runs, runs are cached and reloaded,
and the bench rows mean what their docstring says."""

import dataclasses
import json

import pytest
import torch
from test_classify import colour_data  # images whose class is their dominant colour

from distill_lab.__main__ import main
from distill_lab.cifar import kd_experiment
from distill_lab.cifar.kd_experiment import CifarKD, kd_config
from distill_lab.cifar.kd_recipes import CIFAR_ROW_KEYS, run_cifar
from distill_lab.cifar.kd_teacher import build_model, recipe, save_teacher
from distill_lab.core import registry
from distill_lab.core.bench import bench_methods, write_json
from distill_lab.core.train import seed_everything


def make_teachers(root):
    """Synthetic tiny data and the four teacher folders the track reads, saved under ``root``."""
    x, y = colour_data(6, classes=10)
    data = {"train_x": x, "train_y": y, "test_x": x[::3], "test_y": y[::3], "source": "synthetic"}
    rc = recipe("ci")
    for k, name in enumerate(("cifar10", "cifar10_ls", "cifar10_b", "cifar10_c")):
        seed_everything(k)
        save_teacher(build_model(rc["model"]), data, root / name, {"recipe": rc, "train_seconds": 0.0})
    return root, data


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_teachers(tmp_path_factory.mktemp("kdtrack"))


@pytest.fixture
def exp(setup, tmp_path, monkeypatch):
    root, data = setup
    monkeypatch.setenv("DISTILL_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kd_experiment, "TEACHERS_DIR", root)
    return CifarKD("ci", data=data, teacher_dir=root / "cifar10", progress=False, n_per_class=4,
                   test_per_class=2, epochs=1, batch_size=8, seeds=(0, 1))


def test_config_per_scale_and_bad_fields():
    ci = kd_config("ci")
    assert ci.student == "tiny_cnn" and ci.n_per_class == 250 and len(ci.seeds) >= 3
    assert kd_config("gpu").n_per_class is None
    assert kd_config("ci", epochs=3).epochs == 3
    with pytest.raises(ValueError, match="unknown KDConfig field.*'epoch'"):
        kd_config("ci", epoch=3)
    with pytest.raises(ValueError, match="unknown method 'nope' on track 'cifar'; known methods: .*hinton_kd"):
        registry.get_recipe("nope", track="cifar")


def test_every_method_of_the_track_has_a_recipe_with_a_paper():
    wanted = {"hinton_kd", "born_again", "anchored", "taid", "random_teacher", "sla_sd", "ema_sd", "paced",
              "consensus"}
    assert wanted <= set(bench_methods("cifar"))
    assert [r.name for r in registry.recipes("cifar") if r.baseline] == ["labels"]
    for m in bench_methods("cifar"):
        assert registry.get_recipe(m, track="cifar").paper


def test_subset_is_stratified_and_teacher_logits_follow_it(exp, setup):
    _, data = setup
    assert exp.y.bincount().tolist() == [4] * 10 and exp.test_y.bincount().tolist() == [2] * 10
    full = kd_experiment.load_teacher(setup[0] / "cifar10")["train_logits"].float()
    assert torch.equal(exp.teacher_logits, full[:, exp.idx])
    assert torch.equal(exp.x, data["train_x"][exp.idx])


def test_kd_with_alpha_zero_is_exactly_the_label_only_student(exp):
    """Same seed, same budget and batches: KD with no weight on the distillation term trains the very
    same weights as cross-entropy alone (the comparison holds everything else equal)."""
    a = exp.run("labels", 0)["model"]
    b = exp.run("hinton_kd", 0, alpha=0.0)["model"]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.allclose(va, vb, atol=1e-6), ka
    c = exp.run("hinton_kd", 0)["model"]  # alpha 0.9: it does change something
    assert not torch.allclose(a.fc.weight, c.fc.weight, atol=1e-4)


def test_runs_are_cached_and_reloaded_without_training(exp, monkeypatch):
    first = exp.run("sla_sd", 1)
    rec = registry.get_recipe("sla_sd", track="cifar")

    def fail(*a, **k):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setitem(registry.RECIPES, "sla_sd", dataclasses.replace(rec, train=fail))
    again = exp.run("sla_sd", 1)
    assert again["seconds"] == first["seconds"] and again["metrics"] == first["metrics"]
    assert again["extra"] == first["extra"]
    with pytest.raises(AssertionError, match="trained again"):
        exp.run("sla_sd", 1, n_rot=2)  # other options: another run


def test_every_bench_method_runs_and_rows_have_the_issue_keys(exp, tmp_path):
    rows = run_cifar(exp=exp)
    assert [r["method"] for r in rows] == bench_methods("cifar")
    base = [exp.baseline(s)["value"] for s in (0, 1)]
    for r in rows:
        assert set(CIFAR_ROW_KEYS) <= set(r) and r["seeds"] == [0, 1] and r["student"] == "tiny_cnn"
        assert 0 <= r["value"] <= 1 and r["spread"] >= 0 and r["train_seconds"] >= 0
        if r["metric"] == "acc":
            assert r["baseline"] == pytest.approx(sum(base) / 2)
            if r["method"] != "smoothed_teacher_kd":
                assert r["teacher_value"] == exp.teacher_metrics["acc"]
    rt = next(r for r in rows if r["method"] == "random_teacher")
    assert rt["metric"] == "probe_acc" and rt["baseline"] == pytest.approx(exp.pixel_probe())
    runs = exp.runs("random_teacher")
    assert rt["value"] == pytest.approx(sum(r["extra"]["probe_acc"] for r in runs) / 2)
    anchored = exp.run("anchored", 0)["extra"]
    assert len(anchored["kl"]["to_base"]) == 3 and len(anchored["generations"]) == 3
    path = tmp_path / "rows.json"
    write_json(rows, CIFAR_ROW_KEYS, path)
    saved = json.loads(path.read_text())
    assert [set(r) for r in saved] == [set(CIFAR_ROW_KEYS)] * len(rows)


def test_cli_lists_methods_and_rejects_unknown_ones(capsys):
    assert main(["bench", "cifar", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in bench_methods("cifar"))
    assert main(["bench", "cifar", "--methods", "hinton_kd,nope"]) == 2
    assert "unknown method 'nope' on track 'cifar'" in capsys.readouterr().err
