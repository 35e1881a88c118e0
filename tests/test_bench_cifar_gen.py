"""The cifar-gen bench track: the toy-2D bench on a (tiny, synthetic) CifarFlow, with every issue-4
method; the image discriminator; and the per-experiment recipe defaults."""

import json
from dataclasses import replace

import pytest
import torch
from test_image_flow import TINY, pooled_features, synthetic_data

from distill_lab.__main__ import main
from distill_lab.cifar import bench as cifar_bench
from distill_lab.cifar.flow_config import IMAGE_SCALES, image_scale_dict
from distill_lab.cifar.flow_experiment import CifarFlow
from distill_lab.core import registry
from distill_lab.core.bench import STEP_ROW_KEYS, TRACKS, bench_methods
from distill_lab.methods.step.dmd import ConvDiscriminator, Discriminator, make_discriminator
from distill_lab.nets.unet import TimeUNet

# the step-distillation methods the image track runs (issue 4, item 2), in the toy recipes' order
ISSUE_4_METHODS = ["trajectory", "progressive", "cd", "ct", "scm", "tbcm", "lagrangian", "progressive_flow_map",
                   "dmd", "dmd2", "tdm", "gdd", "rcm"]  # issue 4's rows, and issue 15's TDM and GDD
CIFAR_GEN_METHODS = bench_methods("cifar-gen")
# two Adam steps per method, small batches and pools: the whole track in seconds
FAST = {name: dict(steps=2) for name in CIFAR_GEN_METHODS}
FAST["trajectory"].update(pool=16)
FAST["progressive"].update(start=8)
TINY_BENCH = replace(TINY, recipes=FAST)


@pytest.fixture()
def tiny_cifar_gen(monkeypatch):
    torch.manual_seed(0)
    exp = CifarFlow("ci", teacher=TimeUNet(base=8, mults=(1, 2)), data=synthetic_data(),
                    feature_fn=pooled_features, image_scale=TINY_BENCH, progress=False)
    monkeypatch.setattr(cifar_bench, "CifarFlow", lambda scale, seed=0, progress=True: exp)
    return exp


def test_cifar_gen_bench_has_a_row_for_every_method(tiny_cifar_gen, tmp_path, capsys):
    assert "cifar-gen" in TRACKS and CIFAR_GEN_METHODS == ISSUE_4_METHODS
    assert main(["bench", "cifar-gen", "--scale", "ci", "--quiet", "--json", str(tmp_path / "g.json")]) == 0
    out = capsys.readouterr().out
    assert "fd_classifier" in out and "not FID" in out
    rows = json.loads((tmp_path / "g.json").read_text())
    assert all(set(r) == set(STEP_ROW_KEYS) for r in rows)
    assert {r["method"] for r in rows} == {"teacher (euler)", *CIFAR_GEN_METHODS}
    for r in rows:
        assert r["dataset"] == "cifar10-8px" and r["metric"] == "fd_classifier"
        assert r["value"] is not None and r["value"] >= 0 and r["floor"] == pytest.approx(tiny_cifar_gen.floor)
    for name in CIFAR_GEN_METHODS:  # every NFE the recipe promises
        nfes = {r["nfe"] for r in rows if r["method"] == name}
        assert nfes == set(registry.get_recipe(name).nfes)


def test_cifar_gen_list_and_bad_method(capsys):
    assert main(["bench", "cifar-gen", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in CIFAR_GEN_METHODS)
    assert main(["bench", "cifar-gen", "--scale", "ci", "--methods", "cd,nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_discriminator_is_chosen_by_the_sample_shape():
    img, pts = make_discriminator((3, 8, 8)), make_discriminator((2,))
    assert isinstance(img, ConvDiscriminator) and isinstance(pts, Discriminator) and pts.dim == 2
    assert img(torch.randn(5, 3, 8, 8), torch.rand(5)).shape == (5,)
    assert make_discriminator((4, 3)).dim == 12
    with pytest.raises(ValueError, match="images"):
        img(torch.randn(5, 2), torch.rand(5))


def test_experiment_recipe_defaults_lose_to_explicit_overrides(monkeypatch):
    seen = {}

    def fake(exp, steps=None, **kw):
        seen.update(steps=steps, **kw)
        return "student"

    monkeypatch.delitem(registry.RECIPES, "fake-recipe", raising=False)
    train = registry.recipe("fake-recipe", tracks=("test",), family="test", paper="none")(fake)
    try:
        class Exp:
            recipe_defaults = {"fake-recipe": {"steps": 7, "batch": 3}}

        assert train(Exp(), batch=5) == "student" and seen == {"steps": 7, "batch": 5}
        seen.clear()
        train(Exp(), 11)
        assert seen == {"steps": 11, "batch": 3}
        seen.clear()
        train(object(), steps=2)  # an experiment without defaults (Toy2D) is unaffected
        assert seen == {"steps": 2}
    finally:
        registry.RECIPES.pop("fake-recipe", None)


def test_the_ci_image_budgets_stay_out_of_the_teacher_manifest():
    isc = IMAGE_SCALES["ci"]
    assert isc.recipes["progressive"]["batch"] == isc.batch and "recipes" not in image_scale_dict(isc)
