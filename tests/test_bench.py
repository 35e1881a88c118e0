"""The bench, the registry and the command line, on a tiny experiment."""

import json

import pytest
import torch

from distill_lab.__main__ import main
from distill_lab.core import registry
from distill_lab.core.bench import STEP_ROW_KEYS, format_step_table, write_json
from distill_lab.core.scale import Scale
from distill_lab.methods.step.students import VelocityStudent
from distill_lab.nets.utils import clone_frozen
from distill_lab.toy2d.bench import resolve_data, run_toy2d
from distill_lab.toy2d.experiment import Toy2D

# every method the toy-2D track promises (issue: trajectory, consistency, flow-map, DM, reward families)
EXPECTED = {"trajectory", "arcflow", "progressive", "cd", "ct", "scm", "tbcm", "hypersd", "ctm", "lagrangian",
            "eulerian", "progressive_flow_map", "lsd_self", "esd_self", "anyflow", "dmd", "dmd2", "adm", "cdm", "rcm",
            "rtdmd", "dmd_fewstep", "tdm", "scdmd", "gdd", "flash_dmd", "distillation_dpo", "gndm", "hypersd_full", "rtdmd_full"}

TINY = Scale("ci", teacher_steps=150, width=32, depth=2, batch=256, student_steps=10, eval_n=600, n_proj=64,
             device="cpu")


@pytest.fixture(scope="module")
def tiny_exp():
    return Toy2D("moons", scale=TINY, cache=False, progress=False)


def test_every_method_of_the_track_is_registered():
    names = {r.name for r in registry.recipes("toy2d")}
    assert EXPECTED <= names, f"missing: {sorted(EXPECTED - names)}"
    for r in registry.recipes("toy2d"):
        assert r.paper, f"recipe {r.name} names no paper"
        assert r.nfes and all(n >= 1 for n in r.nfes)


def test_unknown_method_error_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown method 'nope'; known methods: .*dmd"):
        registry.get_recipe("nope")


def test_bench_rows_are_measured_against_the_teacher(tiny_exp, monkeypatch, tmp_path):
    # a "student" that is the teacher itself, sampled with Euler, must reproduce the teacher's row
    def copy_teacher(exp):
        return VelocityStudent(clone_frozen(exp.teacher))

    monkeypatch.setitem(registry.RECIPES, "copy-teacher",
                        registry.Recipe("copy-teacher", ("test",), "test", "none", copy_teacher, (1, 2)))

    def broken(exp):
        raise RuntimeError("boom")

    monkeypatch.setitem(registry.RECIPES, "broken", registry.Recipe("broken", ("test",), "test", "none", broken, (1,)))
    rows = run_toy2d(exp=tiny_exp, methods=["copy-teacher", "broken"], progress=False)
    teacher = {r["nfe"]: r for r in rows if r["method"] == "teacher (euler)"}
    copies = {r["nfe"]: r for r in rows if r["method"] == "copy-teacher"}
    for n in (1, 2):
        assert copies[n]["value"] == pytest.approx(teacher[n]["value"], rel=1e-6)
        assert copies[n]["teacher_same_nfe"] == pytest.approx(teacher[n]["value"], rel=1e-6)
        assert copies[n]["floor"] == tiny_exp.floor
    assert all(r["teacher_best"] <= r["teacher_same_nfe"] + 1e-12 for r in rows)
    failed = [r for r in rows if r["method"] == "broken"]
    assert failed[0]["value"] is None and "boom" in failed[0]["error"]
    table = format_step_table(rows)
    assert "copy-teacher" in table and "boom" in table
    write_json(rows, STEP_ROW_KEYS, tmp_path / "b.json")
    loaded = json.loads((tmp_path / "b.json").read_text())
    assert [set(r) for r in loaded] == [set(STEP_ROW_KEYS)] * len(rows)
    assert all(r["seeds"] == [0] for r in loaded)


def test_the_teacher_depends_on_the_seed_alone():
    """Same seed, same teacher, whatever the process's random state (torch seeds its default generator
    differently in every process, so an unseeded initialisation made every run's rows different)."""
    teachers = []
    for state, seed in ((123, 0), (456, 0), (123, 1)):
        torch.manual_seed(state)
        teachers.append(Toy2D("moons", scale=TINY, seed=seed, cache=False, progress=False).teacher)
    same, other_seed = teachers[1], teachers[2]
    for a, b, c in zip(teachers[0].parameters(), same.parameters(), other_seed.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(teachers[0].parameters(), other_seed.parameters()))


def test_data_can_be_named_by_module_and_function():
    fn = resolve_data("distill_lab.toy2d.data:spirals")
    assert callable(fn) and fn(10).shape == (10, 2)
    with pytest.raises(ValueError, match="could not load the data sampler"):
        resolve_data("distill_lab.toy2d.data:nothing_here")


def test_cli_reports_bad_input_with_exit_code_2(capsys):
    assert main(["bench", "cifar-9", "--scale", "ci"]) == 2
    assert "unknown bench track 'cifar-9'" in capsys.readouterr().err
    assert main(["bench", "toy2d", "--scale", "ci", "--data", "nope"]) == 2
    assert "unknown toy dataset 'nope'" in capsys.readouterr().err
    assert main(["bench", "toy2d", "--scale", "ci", "--methods", "dmd,nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_cli_lists_the_methods(capsys):
    assert main(["bench", "toy2d", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("trajectory", "dmd"))


def test_tour_writes_its_table_and_figures(tmp_path, monkeypatch):
    from distill_lab.tour import run_tour

    monkeypatch.setenv("DISTILL_LAB_CACHE", str(tmp_path / "cache"))
    res = run_tour("moons", scale=TINY, out=tmp_path / "out", methods=("trajectory",), progress=False)
    for name in ("tour.png", "tour_nfe.png", "tour.json"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    rows = json.loads((tmp_path / "out" / "tour.json").read_text())
    assert {r["method"] for r in rows} == {"teacher (euler)", "trajectory"}
    assert res["rows"][-1]["method"] == "trajectory" and res["rows"][-1]["value"] > 0
    # the tour's rows carry the exact W2 and the k-NN precision and recall beside their floors
    assert all(r["w2"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall_floor"] <= 1 for r in rows)


def test_tour_trains_with_its_budget_unless_full(tmp_path, monkeypatch, capsys):
    from distill_lab import tour
    from distill_lab.methods.step import trajectory

    monkeypatch.setenv("DISTILL_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(tour.TOUR_BUDGETS, "ci", {"trajectory": {"steps": 3, "pool": 128}, "dmd": {"steps": 1}})
    seen = []
    real = trajectory.teacher_pairs
    monkeypatch.setattr(trajectory, "teacher_pairs", lambda exp, n, **kw: seen.append(n) or real(exp, n, **kw))
    res = tour.run_tour("moons", scale=TINY, out=tmp_path / "a", methods=("trajectory",), progress=False)
    assert res["budgets"] == {"trajectory": {"steps": 3, "pool": 128}} and seen == [128]
    assert "tour budgets (--full for the bench's): trajectory steps=3, pool=128" in capsys.readouterr().out
    full = tour.run_tour("moons", scale=TINY, out=tmp_path / "b", methods=("trajectory",), progress=False, full=True)
    assert full["budgets"] == {} and seen == [128, 8192]  # the recipe's own ci pool
