"""Committed streaming students: the students labs 32 to 34 load, three seeds of each.

    python -m distill_lab.video.students --scale ci      # writes datasets/teachers/video_ci_students

Training Self Forcing takes about a minute a seed at ``ci`` on one CPU thread, and its variants (the
memory of lab 32; the schedules, rewards and self-correction of lab 33) one to three; three seeds of
each would not fit a two-minute lab. So this script trains them once with the registered recipes,
exactly as a lab would (``seed_everything(seed)``, then ``get_recipe(name).train(exp, **options)``),
and writes each student's fp16 weights and schedule beside a ``manifest.json``: the command, the
machine, the seconds, the teacher it was distilled from (its sha256), each file's sha256, and each
student's measured quality at 4x the horizon.

:func:`committed_students` loads them, checking the hashes and that the experiment's teacher is the
one they were distilled from; when a file is missing or does not match, it trains that student with
the same recipe and says so (``$DISTILL_LAB_TRAIN_TEACHERS=1`` always trains).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from ..core.checkpoints import TEACHERS_DIR, file_records, float32_state, fp16_state, machine, sha256, \
    train_teachers_requested
from ..core.registry import get_recipe
from ..core.scale import get_scale
from ..core.train import seed_everything
from . import recipes  # noqa: F401  (registers the video recipes)
from .nets import VideoNetConfig, VideoTransformer
from .rollout import StreamingStudent

REBUILD = "python -m distill_lab.video.students"
#: name -> (recipe, options, the committed student it starts from or None)
STUDENTS = {
    "self_forcing": ("self_forcing", {}, None),
    "ema_sink": ("ema_sink", {}, None),
    "reward_forcing": ("reward_forcing", {}, None),
    "hiar": ("hiar", {}, None),
    "salt": ("salt", {}, None),
    "stream_r1": ("stream_r1", {}, None),
    "hybrid_forcing": ("hybrid_forcing", {}, "self_forcing"),
    "hybrid_no_linear": ("hybrid_forcing", {"linear": False}, "self_forcing"),
    "asd": ("asd", {}, None),
    "asd_no_gan": ("asd", {"asd_weight": 0.0}, None),
    "diagonal": ("diagonal", {}, None),
    "soulx": ("soulx", {}, None),
    "mutual_forcing": ("mutual_forcing", {}, None),
}
SEEDS = (0, 1, 2)


def students_dir(scale: str) -> Path:
    """``datasets/teachers/video_<scale>_students``."""
    return TEACHERS_DIR / f"video_{scale}_students"


def file_name(name: str, seed: int) -> str:
    return f"{name}_seed{seed}.pt"


def student_record(student: StreamingStudent) -> dict:
    """What rebuilds a :class:`StreamingStudent` besides its weights."""
    net = student.net
    return {"net": net.config.__dict__.copy(), "block": net.block, "net_window": net.window,
            "linear_memory": net.linear_memory, "times": list(student.times), "sampler": student.sampler,
            "window": student.window, "sink": student.sink, "ema": student.ema, "order": student.order,
            "modes": net.modes, "mode": student.mode, "block_steps": student.block_steps,
            "context_time": student.context_time, "retro": student.retro, "retro_time": student.retro_time}


def save_student(student: StreamingStudent, path: Path) -> None:
    torch.save({"state": fp16_state(student.net), "student": student_record(student)}, path)


def load_student(path: Path, device="cpu") -> StreamingStudent:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    r = blob["student"]
    net = VideoTransformer(VideoNetConfig(**r["net"]), "block_causal", r["block"], r["net_window"],
                           linear_memory=r["linear_memory"], modes=r.get("modes", 0))
    net.load_state_dict(float32_state(blob["state"]))
    return StreamingStudent(net.to(device).eval(), times=r["times"], sampler=r["sampler"], window=r["window"],
                            sink=r["sink"], ema=r["ema"], order=r.get("order", "sequential"), mode=r.get("mode", 0),
                            block_steps=r.get("block_steps"), context_time=r.get("context_time"),
                            retro=r.get("retro", 0), retro_time=r.get("retro_time", 0.5))


def teacher_sha(exp) -> str | None:
    m = exp.teacher_manifest
    return None if m is None else m["files"]["teacher.pt"]["sha256"]


def train_student(exp, name: str, seed: int, start: StreamingStudent | None = None) -> StreamingStudent:
    """The student ``name`` of ``seed``, trained as this module's script does (``start``: the student its
    recipe fine-tunes, for the ones that start from Self Forcing)."""
    recipe, options, base = STUDENTS[name]
    if base is not None:
        if start is None:
            raise ValueError(f"{name} starts from the {base} student of the same seed: pass it as start")
        options = {**options, "from_student": start}
    seed_everything(seed)
    return get_recipe(recipe, track="video").train(exp, **options)


def _manifest(folder: Path) -> dict | None:
    mf = folder / "manifest.json"
    return json.loads(mf.read_text()) if mf.is_file() else None


def committed_students(exp, name: str, seeds=SEEDS, quiet: bool = False) -> list[StreamingStudent]:
    """The committed ``name`` students of ``seeds`` for ``exp``'s scale, each checked against the
    manifest's sha256 and teacher; one that is missing or does not match is trained (with a printed
    line saying why), with the Self Forcing student it starts from loaded or trained first."""
    if name not in STUDENTS:
        raise ValueError(f"unknown committed student {name!r}; known: {', '.join(STUDENTS)}")
    folder = students_dir(exp.scale.name)
    manifest = _manifest(folder)
    out = []
    for seed in seeds:
        f = file_name(name, seed)
        why = _unusable(folder, manifest, f, exp)
        if why is None:
            out.append(load_student(folder / f, exp.device))
            continue
        if not quiet:
            print(f"distill-lab: training the {name} student of seed {seed} ({why}; `{REBUILD} --scale "
                  f"{exp.scale.name}` commits them)", flush=True)
        base = STUDENTS[name][2]
        start = committed_students(exp, base, (seed,), quiet=True)[0] if base else None
        out.append(train_student(exp, name, seed, start).eval())
    return out


def _unusable(folder: Path, manifest: dict | None, f: str, exp) -> str | None:
    if train_teachers_requested():
        return "$DISTILL_LAB_TRAIN_TEACHERS is set"
    if manifest is None:
        return f"no manifest in {folder}"
    rec = manifest.get("files", {}).get(f)
    if rec is None or not (folder / f).is_file():
        return f"{f} is not committed"
    if sha256(folder / f) != rec["sha256"]:
        return f"{f} differs from its manifest's sha256"
    if manifest.get("teacher_sha256") != teacher_sha(exp):
        return "they were distilled from another teacher"
    return None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog=REBUILD, description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="ci")
    ap.add_argument("--names", nargs="*", default=list(STUDENTS), help=f"students to train (of {', '.join(STUDENTS)})")
    ap.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    ap.add_argument("--out", default=None, help="folder (default: datasets/teachers/video_<scale>_students)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .experiment import VideoWorld

    exp = VideoWorld(get_scale(args.scale), progress=False)
    out = Path(args.out) if args.out else students_dir(exp.scale.name)
    out.mkdir(parents=True, exist_ok=True)
    command = f"{REBUILD} " + shlex.join(sys.argv[1:] if argv is None else argv)
    manifest = {}
    for seed in args.seeds:
        for name in args.names:
            base = STUDENTS[name][2]
            # the committed (fp16) start, as committed_students would give it
            start = load_student(out / file_name(base, seed)) if base is not None else None
            t0 = time.perf_counter()
            st = train_student(exp, name, seed, start)
            seconds = time.perf_counter() - t0
            save_student(st, out / file_name(name, seed))
            m = exp.evaluate(load_student(out / file_name(name, seed)))
            quality = {k: round(float(m[k]), 5) for k in ("frame_error_1x", "frame_error_4x", "dynamic_degree", "fd")}
            record = {"name": name, "seed": seed, "recipe": STUDENTS[name][0], "options": STUDENTS[name][1],
                      "starts_from": base, "command": command, "train_seconds": round(seconds, 1),
                      "quality": quality}
            manifest = _write_record(out, exp, file_name(name, seed), record)
            print(f"{name} seed {seed}: {seconds:.0f} s, {quality}", flush=True)
    return manifest


def _write_record(out: Path, exp, f: str, record: dict) -> dict:
    """Add one student to the manifest, under a lock (several seeds may train at once)."""
    import fcntl

    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = _manifest(out) or {}
        records = manifest.get("students", {}) if manifest.get("teacher_sha256") == teacher_sha(exp) else {}
        records[f] = record
        files = sorted(r for r in records if (out / r).is_file())
        manifest = {"what": "Streaming students of distill-lab's video track: Self Forcing, the memory variants "
                            "(lab 32), the schedules, rewards and self-correction (lab 33), the drafters (lab 34)",
                    "scale": exp.scale.name, "command": f"{REBUILD} --scale {exp.scale.name}",
                    "machine": machine(), "torch": torch.__version__, "teacher_sha256": teacher_sha(exp),
                    "students": {r: records[r] for r in files}, "files": file_records(out, files)}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest

if __name__ == "__main__":
    main()
