"""Committed checkpoints: small folders of fp16 weights (and whatever else a teacher ships) with a
``manifest.json`` that records the command, the machine, the figures, and each file's sha256.

Every track's teacher uses the same few pieces: :func:`fp16_state` / :func:`float32_state` to store
weights at half size and load them back as float32, :func:`file_records` and :func:`machine` for the
manifest, and :func:`check_folder` to load a folder only when every file is there with the hash the
manifest recorded, or to fail with an error that names the command rebuilding it. The committed
folders live under :data:`TEACHERS_DIR` (``datasets/teachers/`` at the repository's root).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Callable

import torch
from torch import nn

TRAIN_TEACHERS_ENV = "DISTILL_LAB_TRAIN_TEACHERS"  # "1": train a scale's missing teacher instead of using ci's


def teachers_root() -> Path:
    """Where the committed teachers are: the repository's ``datasets/teachers`` when this package runs
    from a clone (editable install, or the source folder on ``sys.path``), else ``distill_lab/_teachers``,
    the copy inside an installed wheel. When neither exists, the repository's path (for the errors)."""
    package = Path(__file__).resolve().parents[1]
    repo = package.parent / "datasets" / "teachers"
    if (package.parent / "pyproject.toml").is_file() and repo.is_dir():
        return repo
    shipped = package / "_teachers"
    return shipped if shipped.is_dir() else repo


TEACHERS_DIR = teachers_root()


def sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_records(folder: Path, files) -> dict:
    """``{name: {"sha256", "bytes"}}`` for each of ``files`` in ``folder``: the manifest's ``files``."""
    return {name: {"sha256": sha256(folder / name), "bytes": (folder / name).stat().st_size} for name in files}


def stored_student_problem(folder: Path, index: dict | None, file: str, teacher_sha256: str,
                           index_name: str = "manifest") -> str | None:
    """Why the committed student ``file`` in ``folder`` cannot be loaded, or ``None`` when it can: ``index`` (the
    folder's record of its students, ``{"teacher_sha256", "students": {file: {"sha256", ...}}}``, or ``None`` when
    there is none) is missing or does not list it, it was distilled from another teacher than ``teacher_sha256``,
    the file is missing, or its sha256 is not the recorded one."""
    rec = None if index is None else index["students"].get(file)
    if index is None:
        return f"no {index_name}"
    if rec is None:
        return f"not listed in the {index_name}"
    if index.get("teacher_sha256") != teacher_sha256:
        return "distilled from another teacher"
    if not (Path(folder) / file).is_file():
        return "missing"
    if sha256(Path(folder) / file) != rec["sha256"]:
        return f"its sha256 differs from the one in the {index_name}"
    return None


def machine() -> dict:
    """What trained a checkpoint: CPU model, torch threads, core count, platform, Python, GPU (or None)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def training_record(info: dict, command: str) -> dict:
    """The manifest fields every trained checkpoint records: the command, the steps, the training
    seconds and final loss (from ``info``), the machine and the torch version."""
    return {"command": command, "steps": info.get("steps"),
            "train_seconds": round(float(info.get("train_seconds", float("nan"))), 1),
            "final_loss": info.get("final_loss"), "machine": machine(), "torch": torch.__version__}


def fp16_state(module: nn.Module) -> dict:
    """The module's ``state_dict`` on the CPU with floating-point tensors in fp16 (half the bytes)."""
    return {k: (v.detach().cpu().contiguous().half() if v.is_floating_point() else v.detach().cpu())
            for k, v in module.state_dict().items()}


def float32_state(state: dict) -> dict:
    """A saved state with its floating-point tensors back in float32, ready for ``load_state_dict``."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def check_folder(path: Path, files, verify: bool, what: str, error: type[Exception], command: str,
                 missing_ok: bool = False, required=()) -> dict | None:
    """The ``manifest.json`` of a committed folder, after checking that each of ``files`` exists and,
    with ``verify``, that its sha256 is the one the manifest records, and that the manifest has each
    top-level field of ``required`` (what the loader builds the network from). Otherwise raises
    ``error`` (a subclass of ``FileNotFoundError``) saying which file or field is missing or changed and
    that ``<command> --out <path>`` rebuilds it, or returns ``None`` when ``missing_ok``. Any other
    field (``quality``, ``final_loss``, ``machine``...) may be absent. Shared by every committed teacher."""
    try:
        return _read_manifest(Path(path), files, verify, what, error, required)
    except error as err:
        if missing_ok:
            return None
        raise error(f"{err}. Rebuild it with `{command} --out {path}` (see datasets/README.md).") from None


def _read_manifest(path: Path, files, verify: bool, what: str, error: type[Exception], required=()) -> dict:
    mf = path / "manifest.json"
    if not mf.is_file():
        raise error(f"no {what} at {path}: {mf.name} is missing")
    try:
        manifest = json.loads(mf.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise error(f"{what} at {path}: {mf} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise error(f"{what} at {path}: {mf} holds a {type(manifest).__name__}, not a JSON object")
    lacking = [k for k in required if k not in manifest]
    if lacking:
        fields = ", ".join(map(repr, lacking))
        raise error(f"{what} at {path}: {mf} lacks the field(s) {fields} that loading needs")
    records = manifest.get("files")
    for name in files:
        f = path / name
        if not f.is_file():
            raise error(f"{what} at {path}: {name} is missing")
        if verify:
            record = records.get(name) if isinstance(records, dict) else None
            want = record.get("sha256") if isinstance(record, dict) else None
            if not isinstance(want, str):
                raise error(f"{what} at {path}: {mf} records no sha256 for {name} (its \"files\" entry), "
                            f"so the file cannot be checked")
            got = sha256(f)
            if want != got:
                raise error(f"{what} at {path}: {name} has sha256 {got[:12]}..., the manifest says "
                            f"{want[:12]}... (changed or corrupt file)")
    return manifest


def train_teachers_requested() -> bool:
    """Whether ``$DISTILL_LAB_TRAIN_TEACHERS`` asks to train a scale's missing teacher (``1``, ``true``,
    ``yes``, ``on``) rather than load the committed ``ci`` one."""
    return os.environ.get(TRAIN_TEACHERS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


_NOTICES: set[str] = set()  # fallbacks already announced in this process (one line each)


def committed_teacher(root: Path, folder_of: Callable[[str], str], scale: str, what: str, command: str,
                      runs_as: str) -> tuple[str, Path]:
    """Which teacher a scale loads: ``(scale of that teacher, its folder)``.

    ``folder_of(scale)`` names a scale's folder under ``root``. The scale's own folder when it has a
    ``manifest.json``, when the scale is ``ci``, when ``$DISTILL_LAB_TRAIN_TEACHERS`` asks to train
    missing teachers, or when no ``ci`` teacher is committed either (the caller then trains or fails as
    before). Otherwise the committed ``ci`` folder, after printing once a line that says which teacher
    is used, why, what that changes (``runs_as``) and ``command``, which trains the scale's own."""
    own = Path(root) / folder_of(scale)
    ci = Path(root) / folder_of("ci")
    if scale == "ci" or (own / "manifest.json").is_file() or train_teachers_requested() \
            or not (ci / "manifest.json").is_file():
        return scale, own
    if str(own) not in _NOTICES:
        _NOTICES.add(str(own))
        print(f"distill-lab: no {what} is committed for the {scale} scale ({own.name}), so the ci one "
              f"({ci.name}) is used and {runs_as}. To train the {scale} one instead: `{command}` "
              f"(or set {TRAIN_TEACHERS_ENV}=1 before loading it).", flush=True)
    return "ci", ci


def update_manifest(folder: Path, **fields) -> dict:
    """Add or replace top-level ``fields`` of ``folder/manifest.json`` (e.g. a quality figure measured
    after the weights were written); the files' hashes are untouched. Returns the manifest."""
    mf = Path(folder) / "manifest.json"
    manifest = {**json.loads(mf.read_text()), **fields}
    mf.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
