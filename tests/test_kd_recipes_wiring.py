"""The CIFAR knowledge-distillation recipes' wiring and the bench rows, against stand-in experiments.

``test_kd_track.py`` runs every recipe on tiny synthetic data; it cannot see a bench row that reports
the wrong teacher, a mixing weight applied the wrong way round, a second view cropped from the wrong
range or a self-distillation generation seeded like the one before. These tests run the pieces on small
stand-ins whose answers are known, in well under a second each.
"""

import statistics

import pytest
import torch
import torch.nn.functional as F

from distill_lab.cifar import kd_recipes as K
from distill_lab.core import registry
from distill_lab.core.bench import bench_methods


# ------------------------------------------------------------------ registration
def test_kd_recipe_registers_on_the_cifar_track_with_its_options(monkeypatch):
    monkeypatch.setattr(registry, "RECIPES", dict(registry.RECIPES))

    def build(exp, **_):
        return None

    K.kd_recipe("probe_recipe", "a family", "a paper", build=build, T=2.0, alpha=0.5)(lambda exp, seed: None)
    K.kd_recipe("probe_base", "baseline", "another paper", metric="probe_acc", baseline=True)(lambda exp, seed: None)
    r, b = registry.RECIPES["probe_recipe"], registry.RECIPES["probe_base"]
    assert r.name == "probe_recipe" and r.tracks == ("cifar",) and r.family == "a family" and r.paper == "a paper"
    assert r.metric == "acc" and r.options == {"T": 2.0, "alpha": 0.5} and r.build is build and not r.baseline
    assert b.metric == "probe_acc" and b.baseline and b.options == {} and b.build is None


# ------------------------------------------------------------------ small pieces
def test_mix_ce_weighs_distillation_by_alpha_and_the_labels_by_one_minus_alpha():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 10, generator=g, dtype=torch.double), torch.randint(0, 10, (6,), generator=g)
    distill = torch.tensor(2.5, dtype=torch.double)
    loss, info = K._mix_ce((distill, {"kd": 1.0}), logits, labels, 0.3)
    ce = F.cross_entropy(logits, labels)
    torch.testing.assert_close(loss, 0.3 * distill + 0.7 * ce)
    assert info["kd"] == 1.0 and torch.equal(info["ce"], ce.detach())


def test_second_view_crops_anywhere_in_the_padded_window_with_zeros_and_flips_half(monkeypatch):
    crops = []
    crop = K.batch_crop

    def spy(x, dy, dx, pad, mode="reflect"):
        crops.append((dy, dx, pad, mode))
        return crop(x, dy, dx, pad, mode)

    monkeypatch.setattr(K, "batch_crop", spy)
    torch.manual_seed(0)
    x = torch.randn(4000, 1, 12, 12)
    y = K._second_view(x)
    dy, dx, pad, mode = crops[0]
    assert pad == 4 and mode == "zeros"  # the default padding, zero-filled (not reflected)
    for d in (dy, dx):
        assert int(d.min()) == 0 and int(d.max()) == 8 and len(d.unique()) == 9
    unflipped = crop(x, dy, dx, 4, "zeros")
    flipped = (y != unflipped).flatten(1).any(1)
    assert 0.45 < float(flipped.double().mean()) < 0.55  # about half mirrored (some mirror to themselves)


class _GenExp:
    """A stand-in for CifarKD with the calls ``_generations`` makes; each model is a seed."""

    def __init__(self):
        self.calls = []

    def baseline(self, seed):
        return {"model": ("base", seed)}

    def new_student(self, seed):
        self.calls.append(("new", seed))
        return ("student", seed)

    def evaluate(self, model):
        return {"model": model}

    def train_logits(self, model):
        g = torch.Generator().manual_seed(hash(model) % 1000)
        return torch.randn(2, 5, 3, generator=g, dtype=torch.double)

    def fit(self, model, seed, desc, loss_fn, teacher_logits):
        self.calls.append(("fit", model, seed, teacher_logits))


def test_generations_seed_each_student_anew_and_teach_it_the_previous_ones_probabilities():
    exp = _GenExp()
    model, gens, probs = K._generations(exp, 7, 2, teacher_of=lambda p: p * 10, loss_fn=None, desc="t")
    assert model == ("student", 2007)
    assert [c[1] for c in exp.calls if c[0] == "new"] == [1007, 2007]
    assert gens == [{"model": ("base", 7)}, {"model": ("student", 1007)}, {"model": ("student", 2007)}]
    for p, m in zip(probs, [("base", 7), ("student", 1007), ("student", 2007)]):
        torch.testing.assert_close(p, exp.train_logits(m).softmax(-1))  # over the classes
    fits = [c for c in exp.calls if c[0] == "fit"]
    assert [f[2] for f in fits] == [7, 7]  # same batches (the run's seed) for every generation
    torch.testing.assert_close(fits[0][3], probs[0] * 10)
    torch.testing.assert_close(fits[1][3], probs[1] * 10)


# ------------------------------------------------------------------ the bench rows
class _BenchExp:
    """A stand-in for CifarKD holding fixed runs: the values are known, so the rows are."""

    def __init__(self):
        self.cfg = type("C", (), {"seeds": (0, 1, 2), "student": "tiny_cnn"})()
        self.teacher_metrics = {"acc": 0.9}
        self.asked = []

    def baseline(self, seed):
        return {"value": 0.5 + 0.01 * seed}

    def runs(self, m, seeds):
        self.asked.append((m, tuple(seeds)))
        metric = "probe_acc" if m == "random_teacher" else "acc"
        return [{"value": 0.6 + 0.02 * s, "metric": metric, "seconds": 10.0 + s,
                 "extra": {"pixel_probe_acc": 0.3 + s, "teacher_probe_acc": 0.4 + 0.1 * s}} for s in seeds]

    def other_teacher(self, name):
        assert name == K.SMOOTHED_TEACHER
        return {"test_metrics": {"acc": 0.77}}


def test_bench_rows_hold_the_mean_the_spread_the_baseline_and_the_teacher_each_row_distils():
    exp = _BenchExp()
    rows = {r["method"]: r for r in K.run_cifar(methods=["hinton_kd", "random_teacher", "smoothed_teacher_kd"],
                                                exp=exp)}
    assert all(tuple(r) == K.CIFAR_ROW_KEYS for r in rows.values())
    kd = rows["hinton_kd"]
    assert kd["value"] == pytest.approx(0.62) and kd["spread"] == pytest.approx(0.02)
    assert kd["baseline"] == pytest.approx(0.51) and kd["baseline_spread"] == pytest.approx(0.01)
    assert kd["teacher_value"] == 0.9 and kd["metric"] == "acc" and kd["student"] == "tiny_cnn"
    assert kd["seeds"] == [0, 1, 2] and kd["train_seconds"] == pytest.approx(11.0)
    rt = rows["random_teacher"]  # the probe rows: raw pixels' probe as baseline, the random teacher's probe
    assert rt["metric"] == "probe_acc" and rt["baseline"] == pytest.approx(0.3) and rt["baseline_spread"] == 0.0
    assert rt["teacher_value"] == pytest.approx(statistics.mean([0.4, 0.5, 0.6]))
    assert rows["smoothed_teacher_kd"]["teacher_value"] == 0.77  # the label-smoothed teacher it distils
    assert exp.asked == [(m, (0, 1, 2)) for m in ("hinton_kd", "random_teacher", "smoothed_teacher_kd")]


def test_bench_defaults_run_every_method_of_the_track_and_refuse_unknown_ones():
    exp = _BenchExp()
    rows = K.run_cifar(exp=exp, seeds=(4,))
    assert [r["method"] for r in rows] == bench_methods("cifar")
    assert all(r["seeds"] == [4] for r in rows)
    with pytest.raises(ValueError, match="unknown method 'nope' on track 'cifar'"):
        K.run_cifar(exp=exp, methods=["nope"])
    with pytest.raises(ValueError, match="track"):
        K.run_cifar(exp=exp, methods=["dmd"])  # a recipe of another track


def test_bench_builds_its_experiment_from_the_scale_the_progress_flag_and_the_overrides(monkeypatch):
    made = []

    def fake_kd(scale, progress, **overrides):
        made.append((scale, progress, overrides))
        return _BenchExp()

    monkeypatch.setattr(K, "CifarKD", fake_kd)
    K.run_cifar("ci", methods=["hinton_kd"], epochs=2)
    K.run_cifar("default", methods=["hinton_kd"], progress=False)
    assert made == [("ci", True, {"epochs": 2}), ("default", False, {})]


# ------------------------------------------------------------------ the heads the self-supervised recipes add
class _Backbone(torch.nn.Module):
    feature_dim = 12

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, 10)

    def features(self, x):
        return x

    def forward(self, x):
        return self.fc(x)


def test_projected_puts_a_dino_head_of_the_asked_sizes_on_the_backbones_features():
    torch.manual_seed(0)
    m = K.Projected(_Backbone(), out_dim=7, hidden=9, bottleneck=5)
    x = torch.randn(4, 12)
    assert m.project(x).shape == (4, 7) and torch.equal(m(x), m.backbone.fc(x))  # forward: the classifier
    dims = [(layer.in_features, layer.out_features) for layer in m.head.mlp if isinstance(layer, torch.nn.Linear)]
    assert dims[0] == (12, 9) and dims[-1] == (9, 5)


def test_with_projector_is_linear_silu_linear_on_the_features():
    torch.manual_seed(0)
    m = K.WithProjector(_Backbone(), hidden=6, out=3)
    x = torch.randn(4, 12)
    l1, l2 = m.projector[0], m.projector[2]
    torch.testing.assert_close(m.project(x), l2(F.silu(l1(x))))
    assert (l1.in_features, l1.out_features, l2.out_features) == (12, 6, 3)
    assert m.fc is m.backbone.fc and torch.equal(m(x), m.backbone.fc(x))
