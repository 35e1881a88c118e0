"""The package's layout keeps its promises: the README's map is the tree, dependencies run one way
(harness <- building blocks <- methods <- tracks <- command line) without cycles, every registered
recipe has a row on the bench of each of its tracks, and the experiments implement the contracts
that the recipes are written against, which name everything the recipes use."""

import ast
import json
import re
from pathlib import Path

import pytest

import distill_lab.cifar  # noqa: F401  (registers the cifar tracks and their recipes)
import distill_lab.llm  # noqa: F401  (registers the llm track and its recipes)
import distill_lab.toy2d  # noqa: F401  (registers the toy2d track and the step recipes)
import distill_lab.video  # noqa: F401  (registers the video track and its recipes)
from distill_lab.__main__ import TRACK_PACKAGES, main
from distill_lab.core import bench, registry
from distill_lab.core.experiment import (ConditionalExperiment, Experiment, KDExperiment, StepExperiment,
                                        StreamExperiment, TokenExperiment)

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "distill_lab"

# who may import whom: a module imports its own subpackage and lower layers only
LAYER = {"core": 0, "nets": 1, "metrics": 1, "methods": 2, "toy2d": 3, "cifar": 3, "video": 3, "llm": 3,
         "exercises": 4, "course": 4}  # the labs' exercises check against any track; course runs the labs
TOP = {"__main__", "tour", "gpu_check", "__init__"}  # the command line, the tour and gpu-check use every track


def modules() -> dict[str, Path]:
    """``{"core.bench": path, "methods.kd": path-of-__init__, ...}`` for every module of the package."""
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts) or "__init__"] = p
    return out


def imports_of(name: str, source: str, known: set[str], is_package: bool = False) -> set[str]:
    """Every package module ``name`` (whose code is ``source``) imports, at the top or inside a
    function, resolved to the module (``from .x import y`` names module ``x``, or ``x.y`` when that
    is a module)."""
    pkg = [] if name == "__init__" else (name.split(".") if is_package else name.split(".")[:-1])
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("distill_lab."):
                    found.add(a.name[len("distill_lab."):])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1] if node.level > 1 else pkg
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("distill_lab"):
                mod = node.module[len("distill_lab."):] if node.module != "distill_lab" else ""
            else:
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}" if mod else a.name
                found.add(sub if sub in known else mod)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path.read_text(), set(mods), path.name == "__init__.py")
            for name, path in mods.items()}


def layering_violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in g.items():
        top = mod.split(".")[0]
        if top in TOP:
            continue
        if top not in LAYER:
            bad.append(f"{mod}: a package the layout test does not know; give it a layer in LAYER")
            continue
        for dep in deps:
            dtop = dep.split(".")[0]
            if dtop != top and (dtop in TOP or LAYER.get(dtop, 99) >= LAYER[top]):
                bad.append(f"{mod} imports {dep}")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_dependencies_run_one_way():
    bad = layering_violations(graph())
    assert not bad, "imports against the layering (core <- nets, metrics <- methods <- tracks):\n" + "\n".join(bad)


def test_no_two_modules_import_each_other():
    assert not cycles(graph()), f"modules that import each other (directly or around a loop): {cycles(graph())}"


def test_the_import_checks_can_fail():
    g = graph()
    known = set(g) | {"core.probe"}
    g["core.probe"] = imports_of("core.probe", "def f():\n    from ..toy2d.experiment import Toy2D\n", known)
    assert layering_violations(g) == ["core.probe imports toy2d.experiment"]
    g["core.probe"] = imports_of("core.probe", "from . import bench\n", known)
    g["core.bench"] = g["core.bench"] | {"core.probe"}
    assert ["core.bench", "core.probe"] in cycles(g)


def readme_tree() -> set[str]:
    """The paths of the README's package map (folders end in ``/``)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```\ndistill_lab/\n(.*?)```", text, re.S)
    assert block, "the README has no package map (a code block starting with 'distill_lab/')"
    paths, stack = set(), []
    for line in block.group(1).splitlines():
        m = re.match(r"( *)(\S+)", line)
        if not m or not (m.group(2).endswith(".py") or m.group(2).endswith("/")):
            continue  # a wrapped description
        depth = len(m.group(1)) // 2 - 1
        stack = stack[:depth] + [m.group(2).rstrip("/")]
        paths.add("/".join(stack) + ("/" if m.group(2).endswith("/") else ""))
    return paths


def test_readme_package_map_is_the_tree():
    listed = readme_tree()
    real = {str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if p.name != "__init__.py"}
    real |= {str(p.relative_to(PKG)) + "/" for p in PKG.rglob("*") if p.is_dir() and (p / "__init__.py").exists()}
    assert not real - listed, f"modules missing from the README's package map: {sorted(real - listed)}"
    assert not listed - real, f"the README's package map lists what does not exist: {sorted(listed - real)}"


def test_every_track_package_registers_its_bench():
    assert set(bench.TRACKS) >= {"toy2d", "cifar", "cifar-gen", "video", "llm"}
    assert TRACK_PACKAGES == ("distill_lab.toy2d", "distill_lab.cifar", "distill_lab.video", "distill_lab.llm")
    for name, track in bench.TRACKS.items():
        assert set(bench.ROW_CORE) <= set(track.row_keys), name
        assert {"floor", "baseline"} & set(track.row_keys), name
    with pytest.raises(ValueError, match="registered twice"):
        bench.register_track(bench.TRACKS["toy2d"])


def test_every_recipe_names_its_track_family_and_paper():
    rs = registry.recipes()
    assert len(rs) >= 30
    for r in rs:
        assert r.tracks and all(t in bench.TRACKS for t in r.tracks), f"{r.name}: unknown track in {r.tracks}"
        assert r.family and r.paper, r.name
        step = any(t in ("toy2d", "cifar-gen") for t in r.tracks)
        assert bool(r.nfes) == step, f"{r.name}: step recipes list their NFEs, classifiers none"
    for track in bench.TRACKS:
        assert len([r for r in registry.recipes(track) if r.baseline]) <= 1, track
    with pytest.raises(ValueError, match="registered twice"):
        registry.recipe("dmd", tracks=("toy2d",), family="x", paper="y")(lambda exp: None)
    with pytest.raises(ValueError, match="names no paper"):
        registry.recipe("no-paper", tracks=("toy2d",), family="x", paper="")


# ------------------------------------------------------------------ every recipe has a bench row
def _tiny_toy2d():
    from test_bench import TINY

    from distill_lab.toy2d import Toy2D

    exp = Toy2D("moons", scale=TINY, cache=False, progress=False)
    exp.recipe_defaults = {r.name: {"steps": 2} for r in registry.recipes("toy2d")}
    exp.recipe_defaults["trajectory"].update(pool=64)
    exp.recipe_defaults["progressive"].update(start=8)
    for name in ("rtdmd", "flash_dmd", "distillation_dpo", "gndm", "rtdmd_full"):  # their stage I (plain DMD) for 2 steps too
        exp.recipe_defaults[name].update(stage1_steps=2)
    exp.recipe_defaults["hypersd_full"].update(unified_steps=2, dmd_steps=2)
    return exp


def _tiny_cifar_gen():
    import torch
    from test_bench_cifar_gen import TINY_BENCH
    from test_image_flow import pooled_features, synthetic_data

    from distill_lab.cifar import CifarFlow
    from distill_lab.nets.unet import TimeUNet

    torch.manual_seed(0)
    return CifarFlow("ci", teacher=TimeUNet(base=8, mults=(1, 2)), data=synthetic_data(),
                     feature_fn=pooled_features, image_scale=TINY_BENCH, progress=False)


def _tiny_sr():
    from test_superres import _images, _tiny_velocity

    from distill_lab.cifar import sr

    data = {"train": _images(64, 16, 10), "test": _images(64, 16, 11)}
    exp = sr.SRExperiment("ci", teacher=_tiny_velocity(3), data=data, feature_fn=lambda x: x.mean(dim=(2, 3)),
                          eval_n=16, progress=False)
    exp.batch = 8
    exp.recipe_defaults = {r.name: {"steps": 2} for r in registry.recipes("cifar-sr")}
    return exp


def _tiny_video():
    from test_video import SMALL, TINY
    from distill_lab.video import VideoWorld
    from distill_lab.video.nets import VideoTransformer
    import torch

    torch.manual_seed(0)
    exp = VideoWorld("ci", teacher=VideoTransformer(SMALL, "full"), video_scale=TINY, progress=False)
    exp.recipe_defaults = {r.name: {"pool": 8, "init_steps": 1} for r in registry.recipes("video")
                           if r.name.startswith(("self_forcing", "causvid"))}
    exp.recipe_defaults["self_forcing_no_init"].pop("init_steps")
    return exp


def _tiny_llm():
    from test_llm import _tiny_scale

    from distill_lab.llm import LLMTask
    from distill_lab.llm.tasks import get_task
    from distill_lab.llm.sft import build_gpt

    ts = _tiny_scale("star")
    return LLMTask("star", "ci", teacher=build_gpt(get_task("star"), ts.teacher).eval(), task_scale=ts, progress=False)


def _tiny_cifar(tmp_path, monkeypatch):
    from test_kd_track import make_teachers

    from distill_lab.cifar import kd_experiment

    root, data = make_teachers(tmp_path / "teachers")
    monkeypatch.setattr(kd_experiment, "TEACHERS_DIR", root)
    return kd_experiment.CifarKD("ci", data=data, teacher_dir=root / "cifar10", progress=False, n_per_class=4,
                                 test_per_class=2, epochs=1, batch_size=8, seeds=(0,))


@pytest.mark.parametrize("track", ["toy2d", "cifar-gen", "cifar-sr", "cifar", "video", "llm"])
def test_every_registered_recipe_has_a_row_on_its_tracks_bench(track, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_LAB_CACHE", str(tmp_path / "cache"))
    exp = {"toy2d": _tiny_toy2d, "cifar-gen": _tiny_cifar_gen, "video": _tiny_video, "llm": lambda: [_tiny_llm()],
           "cifar": lambda: _tiny_cifar(tmp_path, monkeypatch), "cifar-sr": _tiny_sr}[track]()
    t = bench.TRACKS[track]
    monkeypatch.setitem(bench.TRACKS, track, bench.BenchTrack(t.name, t.summary, t.row_keys,
                                                              lambda args, scale: exp, t.run, t.table))
    out = tmp_path / "rows.json"
    seeds = ["--seeds", "0"] if track in ("video", "llm") else []
    assert main(["bench", track, "--scale", "ci", "--quiet", "--json", str(out), *seeds]) == 0
    capsys.readouterr()
    rows = json.loads(out.read_text())
    assert all(set(r) == set(t.row_keys) for r in rows)
    assert all(r["value"] is not None for r in rows)
    for r in registry.recipes(track):
        got = [row for row in rows if row["method"] == r.name]
        if r.baseline:
            assert not got and all(row["baseline"] is not None for row in rows), r.name
        else:
            assert got, f"{r.name} is registered on {track} but has no bench row"
            if r.nfes:
                assert {row["nfe"] for row in got} == set(r.nfes), r.name


# ------------------------------------------------------------------ the experiment contracts
def members(proto) -> set[str]:
    """The attributes and methods a protocol (and its protocol bases) declares."""
    out = set()
    for cls in proto.__mro__:
        if cls in (object,) or not getattr(cls, "_is_protocol", False) or cls.__name__ == "Protocol":
            continue
        out |= set(getattr(cls, "__annotations__", {}))
        out |= {k for k, v in vars(cls).items() if callable(v) and not k.startswith("_")}
    return out


def implemented_by(obj, name: str, proto) -> bool:
    """``obj`` offers ``name`` itself: on the instance, or from a class that is not a protocol."""
    if name in vars(obj):
        return True
    for cls in type(obj).__mro__:
        if name in vars(cls):
            return not getattr(cls, "_is_protocol", False)
    return False


def experiment_uses(path: Path) -> set[str]:
    """Every ``exp.<attr>`` a module's code reads."""
    return {n.attr for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "exp"}


def test_step_recipes_use_nothing_outside_the_contract():
    step = members(StepExperiment)
    for path in sorted((PKG / "methods" / "step").glob("*.py")) + [PKG / "methods" / "arch.py", PKG / "core" / "bench.py"]:
        if path.name == "superres.py":
            continue
        extra = experiment_uses(path) - step - {"recipe_defaults"}
        assert not extra, f"{path.name} uses exp.{sorted(extra)}, which StepExperiment does not declare"
    extra = experiment_uses(PKG / "methods" / "step" / "superres.py") - members(ConditionalExperiment)
    assert not extra, f"superres.py uses exp.{sorted(extra)}, which ConditionalExperiment does not declare"
    extra = experiment_uses(PKG / "cifar" / "kd_recipes.py") - members(KDExperiment) - {"runs"}
    assert not extra, f"kd_recipes.py uses exp.{sorted(extra)}, which KDExperiment does not declare"
    extra = experiment_uses(PKG / "video" / "recipes.py") - members(StreamExperiment) - {"recipe_defaults"}
    assert not extra, f"video/recipes.py uses exp.{sorted(extra)}, which StreamExperiment does not declare"
    extra = experiment_uses(PKG / "llm" / "recipes.py") - members(TokenExperiment) - {"recipe_defaults"}
    assert not extra, f"llm/recipes.py uses exp.{sorted(extra)}, which TokenExperiment does not declare"


def test_contract_check_catches_an_undeclared_attribute(tmp_path):
    p = tmp_path / "recipe.py"
    p.write_text("def train(exp):\n    return exp.secret_teacher_weights\n")
    assert experiment_uses(p) - members(StepExperiment) == {"secret_teacher_weights"}


@pytest.mark.parametrize("kind", ["toy2d", "cifar-gen", "cifar-sr", "cifar", "video", "llm"])
def test_experiments_implement_every_member_of_their_contract(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_CACHE", str(tmp_path / "cache"))
    exp = {"toy2d": _tiny_toy2d, "cifar-gen": _tiny_cifar_gen, "video": _tiny_video, "llm": _tiny_llm,
           "cifar": lambda: _tiny_cifar(tmp_path, monkeypatch), "cifar-sr": _tiny_sr}[kind]()
    proto = {"cifar": KDExperiment, "video": StreamExperiment, "llm": TokenExperiment,
             "cifar-sr": ConditionalExperiment}.get(kind, StepExperiment)
    assert isinstance(type(exp), type) and proto in type(exp).__mro__, f"{type(exp).__name__} must name {proto.__name__}"
    assert isinstance(exp, Experiment) and isinstance(exp, proto)
    missing = [m for m in sorted(members(proto)) if not implemented_by(exp, m, proto)]
    assert not missing, f"{type(exp).__name__} leaves {missing} of {proto.__name__} unimplemented"
