"""The package outside a clone, and teachers at every scale.

A wheel (what ``pip install "distill-lab @ git+..."`` builds) carries every module and every committed
teacher, and an install of it finds them from any folder. A manifest needs only what loading uses (the
files' sha256, the network's settings): without its figures it still loads, and without what loading
needs it fails with an error that names the file and the command rebuilding it. A scale with no
committed teacher of its own loads the ``ci`` one with a one-line notice (or trains its own when
``$DISTILL_LAB_TRAIN_TEACHERS=1``), so every lab runs at ``default`` and ``gpu`` without an hour of
training first.
"""

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

from distill_lab.cifar import flow_config, flow_experiment
from distill_lab.cifar.flow_teacher import FlowTeacherUnavailable, load_flow_teacher
from distill_lab.core import checkpoints
from distill_lab.core.checkpoints import TRAIN_TEACHERS_ENV, teachers_root
from distill_lab.llm import config as llm_config
from distill_lab.llm import teacher as llm_teacher
from distill_lab.llm.teacher import LLMTeacherUnavailable, load_teacher
from distill_lab.video import config as video_config
from distill_lab.video.teacher import load_teacher as load_video_teacher

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "datasets" / "teachers"


def committed_files() -> list[str]:
    """The teacher files git tracks (those on disk when this is no git checkout), relative to
    ``datasets/teachers``."""
    try:
        out = subprocess.run(["git", "ls-files", "datasets/teachers"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
    names = [str(Path(p).relative_to("datasets/teachers")) for p in out]
    return sorted(names or (str(p.relative_to(COMMITTED)) for p in COMMITTED.glob("*/*") if p.is_file()))


def package_sources() -> list[str]:
    """The package's Python files, relative to the repository (tracked ones when this is a checkout)."""
    try:
        out = subprocess.run(["git", "ls-files", "distill_lab"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
    out = out or [str(p.relative_to(ROOT)) for p in (ROOT / "distill_lab").rglob("*.py")]
    return sorted(p for p in out if p.endswith(".py"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The package as a wheel installs it: a folder holding ``distill_lab/`` built from a copy of the
    repository's sources (``pip wheel --no-build-isolation``, about 5 s; where this Python's setuptools
    cannot make wheels, setuptools' ``build_py``, the step of the wheel build that lays out the files)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "*.pt.tmp")
    shutil.copytree(ROOT / "distill_lab", src / "distill_lab", ignore=skip)
    shutil.copytree(COMMITTED, src / "datasets" / "teachers", ignore=skip)
    site = tmp / "site"
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp / "whl"), str(src)], capture_output=True, text=True)
    if wheel.returncode == 0:
        with zipfile.ZipFile(next((tmp / "whl").glob("*.whl"))) as z:
            z.extractall(site)
    else:
        subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                        "--build-lib", str(site)], cwd=src, check=True, capture_output=True, text=True)
    return site


def test_the_wheel_ships_every_module_and_every_committed_teacher(built):
    shipped = {str(p.relative_to(built)) for p in built.rglob("*") if p.is_file()}
    teachers = committed_files()
    assert len(teachers) >= 20 and "llm_sort_ci/teacher.pt" in teachers
    lacking = [t for t in teachers if f"distill_lab/_teachers/{t}" not in shipped]
    assert not lacking, f"committed teachers missing from the wheel (pyproject's package-data): {lacking}"
    modules = [p for p in package_sources() if not p.startswith("distill_lab/_teachers/")]
    assert not [m for m in modules if m not in shipped], "modules missing from the wheel"
    # nothing of the repository's layout leaks to the top level of site-packages
    assert {p.split("/")[0] for p in shipped if ".dist-info/" not in p} == {"distill_lab"}


def test_an_installed_wheel_finds_its_teachers_from_any_folder(built, tmp_path):
    """Outside a clone, :func:`teachers_root` is the wheel's copy and a teacher loads with its hashes checked."""
    code = ("import distill_lab\n"
            "from distill_lab.core.checkpoints import teachers_root\n"
            "from distill_lab.llm.teacher import load_teacher\n"
            "t = load_teacher('sort', scale='ci')\n"
            "print(distill_lab.__file__)\n"
            "print(teachers_root())\n"
            "print(t['manifest']['n_params'], sum(p.numel() for p in t['model'].parameters()))\n")
    env = {**os.environ, "PYTHONPATH": str(built)}
    env.pop(TRAIN_TEACHERS_ENV, None)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    module, root, counts = out.stdout.split("\n")[:3]
    assert Path(module).is_relative_to(built), module
    assert Path(root) == built / "distill_lab" / "_teachers"
    declared, counted = counts.split()
    assert declared == counted


def test_in_the_repository_the_teachers_are_read_where_they_are_committed():
    assert teachers_root() == COMMITTED == checkpoints.TEACHERS_DIR


def test_colab_gets_lower_bounds_and_jupyterlab_only_on_request():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    assert all(">=" in d and "<" not in d and "==" not in d for d in deps), deps
    assert not any(d.startswith("jupyterlab") for d in deps)
    assert "ipywidgets>=7.7" in deps  # Colab's ipywidgets is 7.7.x
    extras = project["optional-dependencies"]
    assert any(d.startswith("jupyterlab") for d in extras["lab"])
    assert {"nbval", "ipykernel", "jupyterlab"} <= {d.split(">")[0].split("=")[0] for d in extras["test"]}
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[lab]" && jupyter lab labs/' in readme


def test_binder_pins_a_cpu_torch_and_prebuilds_what_the_labs_need():
    reqs = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in reqs
    pins = dict(line.split("==") for line in reqs if "==" in line)
    assert pins["torch"].endswith("+cpu") and pins["torchvision"].endswith("+cpu"), pins
    assert any(line.startswith("jupyterlab") for line in reqs)
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install --no-deps -e ." in post and "DISTILL_LAB_SCALE=ci" in post
    assert "load_cifar10(" in post and 'Toy2D(name' in post and '"checkerboard"' in post
    for script in ("postBuild", "start"):
        assert os.access(ROOT / "binder" / script, os.X_OK), f"binder/{script} must be executable"
    start = (ROOT / "binder" / "start").read_text()
    assert 'DISTILL_LAB_SCALE="${DISTILL_LAB_SCALE:-ci}"' in start and 'exec "$@"' in start


# ------------------------------------------------------------------ manifests
def _copy(name: str, dest: Path, drop=(), **changes) -> Path:
    folder = dest / name
    shutil.copytree(COMMITTED / name, folder)
    m = json.loads((folder / "manifest.json").read_text())
    for k in drop:
        m.pop(k, None)
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


FIGURES = ("quality", "final_loss", "train_seconds", "machine", "command", "steps", "torch", "n_params", "what")


def test_a_manifest_without_its_figures_still_loads(tmp_path):
    flow = load_flow_teacher(_copy("cifar10_flow_ci", tmp_path, FIGURES))
    assert "quality" not in flow["manifest"] and flow["model"].config["base"] == 16
    video = load_video_teacher(_copy("video_ci", tmp_path, FIGURES))
    assert "final_loss" not in video["manifest"]
    llm = load_teacher("sort", _copy("llm_sort_ci", tmp_path, FIGURES + ("tokenizer",)))
    assert sum(p.numel() for p in llm["model"].parameters()) > 0


def test_a_manifest_lacking_what_loading_needs_fails_naming_the_file_and_the_fix(tmp_path):
    folder = _copy("llm_sort_ci", tmp_path, ("files",))
    with pytest.raises(LLMTeacherUnavailable) as err:
        load_teacher("sort", folder)
    msg = str(err.value)
    assert str(folder / "manifest.json") in msg and "no sha256 for teacher.pt" in msg
    assert f"python -m distill_lab.llm.teacher --task sort --out {folder}" in msg
    assert load_teacher("sort", folder, missing_ok=True) is None
    assert load_teacher("sort", folder, verify=False)["model"] is not None  # no hash asked for, none needed

    folder = _copy("cifar10_flow_ci", tmp_path, ("unet",))
    with pytest.raises(FlowTeacherUnavailable, match=r"lacks the field\(s\) 'unet' that loading needs"):
        load_flow_teacher(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(FlowTeacherUnavailable, match="not valid JSON.*python -m distill_lab.cifar.teachers flow"):
        load_flow_teacher(folder)


# ------------------------------------------------------------------ a scale without its own teacher
@pytest.fixture
def teachers(tmp_path, monkeypatch):
    """A teachers folder holding copies of the ci teachers only, seen by every track; no notice printed yet."""
    root = tmp_path / "teachers"
    for name in ("cifar10_flow_ci", "cifar10_flow_attn_ci", "video_ci", "llm_sort_ci"):
        shutil.copytree(COMMITTED / name, root / name)
    for mod in (flow_config, video_config, llm_config):
        monkeypatch.setattr(mod, "TEACHERS_DIR", root)
    monkeypatch.setattr(checkpoints, "_NOTICES", set())
    monkeypatch.delenv(TRAIN_TEACHERS_ENV, raising=False)
    return root


def test_a_scale_without_its_teacher_loads_cis_with_one_notice(teachers, capsys):
    assert flow_config.teacher_for("default") == ("ci", teachers / "cifar10_flow_ci")
    assert flow_config.default_teacher_dir("default") == teachers / "cifar10_flow_ci"  # noticed once only
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert "cifar10_flow_default" in lines[0] and "cifar10_flow_ci" in lines[0]
    assert "`python -m distill_lab.cifar.teachers flow --scale default`" in lines[0]
    assert TRAIN_TEACHERS_ENV in lines[0]
    assert flow_config.teacher_for("gpu", "attn") == ("ci", teachers / "cifar10_flow_attn_ci")
    assert "--scale gpu --variant attn" in capsys.readouterr().out
    # the teacher script still writes the scale's own folder
    assert flow_config.own_teacher_dir("default").name == "cifar10_flow_default"
    assert flow_config.teacher_for("ci") == ("ci", teachers / "cifar10_flow_ci")
    assert capsys.readouterr().out == ""


def test_the_scales_own_teacher_wins_and_training_is_on_request(teachers, capsys, monkeypatch):
    shutil.copytree(teachers / "video_ci", teachers / "video_default")
    assert video_config.teacher_for("default") == ("default", teachers / "video_default")
    monkeypatch.setenv(TRAIN_TEACHERS_ENV, "1")
    assert video_config.teacher_for("gpu") == ("gpu", teachers / "video_gpu")  # to be trained
    assert llm_config.teacher_for("sort", "gpu") == ("gpu", teachers / "llm_sort_gpu")
    assert capsys.readouterr().out == ""


def test_the_experiments_run_at_default_on_the_ci_teachers(teachers, capsys):
    exp = flow_experiment.CifarFlow("default", progress=False)
    assert exp.teacher_dir == teachers / "cifar10_flow_ci" and exp.scale.name == "ci" and exp.resolution == 16
    assert exp.image_scale == flow_config.IMAGE_SCALES["ci"]
    from distill_lab.llm import LLMTask
    from distill_lab.video import VideoWorld
    from distill_lab.video.config import VIDEO_SCALES

    video = VideoWorld("default", progress=False)
    assert video.vscale == VIDEO_SCALES["ci"] and video.teacher_manifest["scale"] == "ci"
    llm = LLMTask("sort", "default", progress=False)  # the tasks are the same: the students keep default's budget
    assert llm.teacher_manifest["scale"] == "ci" and llm.scale.name == "default"
    assert llm.steps == llm_config.llm_scale("sort", "default").student_steps
    out = capsys.readouterr().out
    assert out.count("distill-lab: no ") == 3, out


def test_on_request_a_missing_llm_teacher_is_trained_into_its_own_folder(teachers, monkeypatch):
    from distill_lab.llm.sft import build_gpt
    from distill_lab.llm.tasks import get_task

    made = []

    def make(task, sc, folder, **_):  # the real one trains for minutes; write a tiny teacher instead
        ts = llm_config.llm_scale(task, sc)
        net = build_gpt(get_task(task), llm_config.NetSize(1, 2, 16))
        llm_teacher.save_teacher(net, folder, task, ts, {"steps": 1, "train_seconds": 0.0, "tokens": 1}, "t", sc)
        made.append((task, sc.name, folder))

    monkeypatch.setattr(llm_teacher, "make_teacher", make)
    monkeypatch.setenv(TRAIN_TEACHERS_ENV, "1")
    t = llm_teacher.load_or_train_teacher("sort", scale="default", progress=False)
    assert made == [("sort", "default", teachers / "llm_sort_default")]
    assert t["manifest"]["scale"] == "default" and "quality" not in t["manifest"]
    llm_teacher.load_or_train_teacher("sort", scale="default", progress=False)
    assert len(made) == 1  # trained once, then loaded
    with pytest.raises(LLMTeacherUnavailable):  # a folder named by the caller is never trained into
        llm_teacher.load_or_train_teacher("sort", teachers / "elsewhere", scale="default")


def test_a_flow_teacher_trained_on_request_gets_its_quality_recorded(teachers, monkeypatch):
    """What lab 20 reads from the manifest (``quality``, ``final_loss``) exists after on-request training."""
    from distill_lab.nets.unet import TimeUNet

    folder = teachers / "cifar10_flow_default"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"final_loss": 0.3}))
    net = TimeUNet(channels=3, base=8, mults=(1,), blocks=1)
    monkeypatch.setattr(flow_experiment, "load_or_train_flow_teacher",
                        lambda *a, **k: {"model": net, "manifest": {"final_loss": 0.3}, "trained": True})
    seen = {}

    def quality(teacher, scale, exp_kwargs=None):
        seen.update(scale=scale.name, kwargs=exp_kwargs)
        return {"fd_euler": {"1": 9.0}}

    monkeypatch.setattr(flow_experiment, "teacher_quality", quality)
    data = {"train": torch.zeros(4, 3, 32, 32), "test": torch.zeros(4, 3, 32, 32)}
    exp = flow_experiment.CifarFlow("default", teacher_dir=folder, data=data, feature_fn=lambda x: x.flatten(1),
                                    progress=False)
    assert exp.scale.name == "default" and seen["scale"] == "default" and seen["kwargs"]["data"] is data
    assert json.loads((folder / "manifest.json").read_text()) == {"final_loss": 0.3,
                                                                   "quality": {"fd_euler": {"1": 9.0}}}
