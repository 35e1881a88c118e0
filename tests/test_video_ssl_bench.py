"""Lab 37's bench tracks (video_mcm, video_repr): every variant a recipe, rows beside their baseline, each
row's paired difference the seed-by-seed difference."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from distill_lab.core import registry
from distill_lab.core.bench import get_track
from distill_lab.video import mcm
from distill_lab.video import represent as rp
from distill_lab.video import ssl_bench as sb
from distill_lab.video.config import VIDEO_SCALES
from distill_lab.video.experiment import VideoWorld
from distill_lab.video.nets import VideoNetConfig, VideoTransformer

TINY = replace(rp.SETTINGS["ci"], dim=16, heads=2, batch=4, steps=2, n_pretrain=8, n_probe_train=8, n_probe_test=8,
               ffp_steps=2, ffp_batch=2, ffp_n_test=4)


def test_each_variant_is_a_recipe_of_its_track_with_its_paper_and_one_baseline():
    for track, names in (("video_mcm", sb.MCM_RECIPES), ("video_repr", sb.REPR_RECIPES), ("video_ffp", sb.FFP_RECIPES)):
        rs = registry.recipes(track)
        assert [r.name for r in rs] == list(names) and all(r.paper for r in rs)
        assert get_track(track).name == track
    assert {r.name for r in registry.recipes("video_repr") if r.baseline} == {"vjepa"}
    assert {r.name for r in registry.recipes("video_ffp") if r.baseline} == {"ffp"}
    assert {r.name for r in registry.recipes("video_mcm") if r.baseline} == {"pixel_cd"}
    assert set(sb.MCM_RECIPES.values()) == set(mcm.VARIANTS) and set(sb.REPR_RECIPES.values()) == set(rp.VARIANTS)


def test_the_repr_rows_stand_beside_masked_prediction_and_the_recipes_train_what_the_rows_measure():
    rows = sb.run_repr(TINY, ["unisurg"], seeds=(0, 1)) + sb.run_ffp(TINY, ["ffp_identity"], seeds=(0, 1))
    by = {r["method"]: r for r in rows}
    assert list(by) == ["vjepa", "unisurg", "ffp", "ffp_identity"]
    assert by["vjepa"]["paired"] == (0.0, 0.0) and by["ffp"]["paired"] == (0.0, 0.0)
    assert 0 <= by["unisurg"]["value"] <= 100 and by["unisurg"]["baseline"] == by["vjepa"]["value"]
    assert by["ffp_identity"]["metric"] == "late_error_x1000" and by["ffp_identity"]["value"] > 0
    assert by["ffp_identity"]["baseline"] == by["ffp"]["value"]
    enc = registry.get_recipe("unisurg").train(TINY, seed=0)
    assert isinstance(enc, rp.SpaceTimeEncoder) and not any(p.requires_grad for p in enc.parameters())
    prop = registry.get_recipe("ffp_identity").train(TINY, seed=0)
    assert isinstance(prop, rp.Propagator)
    print(sb.format_table(rows))


def test_the_mcm_rows_measure_the_distance_to_the_stills_beside_pixel_cd():
    small = VideoNetConfig(resolution=16, patch=8, dim=32, depth=1, heads=2)
    vs = replace(VIDEO_SCALES["ci"], net=small, frames=4, block=2, teacher_nfe=2, eval_n=6)
    torch.manual_seed(0)
    exp = VideoWorld(teacher=VideoTransformer(small, "full"), video_scale=vs, progress=False)
    cfg = replace(mcm.MCM_SCALES["ci"], steps=2, batch=2, stills_batch=4, eval_n=6, student_nfe=2)
    rows = sb.run_mcm(exp, ["mcm"], seeds=(0, 1), cfg=cfg)
    by = {r["method"]: r for r in rows}
    assert list(by) == ["pixel_cd", "mcm", "teacher", "data"]
    stills = cfg.still_sigma
    assert by["mcm"]["value"] == pytest.approx(abs(by["mcm"]["extra"]["width"] - stills), abs=0.01)
    assert by["data"]["value"] == pytest.approx(abs(exp.world.sigma - stills), abs=1e-4)
    assert by["pixel_cd"]["paired"] == (0.0, 0.0) and by["mcm"]["baseline"] == by["pixel_cd"]["value"]
    with pytest.raises(ValueError, match="unknown method"):
        registry.get_recipe("nope", track="video_mcm")


def test_the_mcm_bench_runs_at_the_scale_asked_for_not_the_environments(monkeypatch):
    import argparse

    monkeypatch.setenv("DISTILL_LAB_SCALE", "default")
    exp = sb._prepare_mcm(argparse.Namespace(quiet=True), "ci")
    assert exp.mcm_cfg == mcm.MCM_SCALES["ci"] != mcm.mcm_scale()
