"""The course around the labs: run them and time them, keep the syllabus's run-time table, link each
lab to the one before and after it, and render the executed labs into a static site.

* :func:`check_labs` -- ``python -m distill_lab check-labs``: execute labs (nbclient, one fresh kernel a
  lab, ``$DISTILL_LAB_SCALE`` set, the lab's folder as working directory, widget state kept), time
  each one, print a table and merge the times into ``labs/run_times.json`` (:func:`record_times`).
* :func:`run_times_table`, :func:`update_syllabus` -- the table of measured times that
  ``labs/README.md`` carries between ``<!-- run-times:start -->`` and ``<!-- run-times:end -->``.
* :func:`nav_cell`, :func:`apply_nav` -- ``python -m distill_lab course-pages``: a last markdown cell
  tagged ``nav`` in every lab with links to the previous lab, the syllabus, the notation page and the
  next lab; applying it twice changes nothing.
* :func:`build_site` -- ``python -m distill_lab build-site``: the executed labs as HTML (nbconvert's
  ``lab`` template, which embeds the saved widget state and the widget manager that displays it), an
  ``index.html`` with the run times and the syllabus, and ``notation.html``.

The run-time file maps scale, then lab file name, to one record::

    {"default": {"01_flow_matching_teacher.ipynb": {"seconds": 212.4, "passed": true, "date": "2026-11-30",
                 "machine": "2 x AMD EPYC, OMP_NUM_THREADS=1, torch 2.14.1, cpu",
                 "cpu_seconds": 190.2, "load": 3.1}}}

``seconds`` is wall time, kernel start included. ``cpu_seconds`` is the kernel's CPU time (where
``/proc`` gives it): with one thread it is close to what the wall time would be on an idle machine.
``load`` is the highest one-minute load average of the machine seen at the end of a cell: above the
core count, other jobs competed for the processors and the wall time is an upper bound.

A later run of one lab at one scale replaces that record only.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .core.scale import DEVICE_VAR, ENV_VAR, SCALES

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder that holds distill_lab/
# loaded at the start of every kernel the test suite or check-labs starts: matplotlib refuses torch tensors
GUARD = PACKAGE_ROOT / "tests" / "guards" / "no_tensors_in_matplotlib.py"


def guard_ipython_dir() -> str | None:
    """A new temporary IPython folder whose startup loads :data:`GUARD` (a lab that hands matplotlib a torch
    tensor, which would crash on a GPU, fails on the CPU too), or None where the checkout has no guard (an
    installed package, a mutation run's copy). The caller points ``IPYTHONDIR`` at it and removes it."""
    if not GUARD.exists():
        return None
    folder = tempfile.mkdtemp(prefix="distill_lab_ipython_")
    os.makedirs(os.path.join(folder, "profile_default", "startup"))
    shutil.copy(GUARD, os.path.join(folder, "profile_default", "startup", "00_no_tensors_in_matplotlib.py"))
    return folder
LABS_DIR = PACKAGE_ROOT / "labs"  # the repository's labs (an editable install)
RUN_TIMES = "run_times.json"
SYLLABUS = "README.md"
NOTATION = "NOTATION.md"
TABLE_START, TABLE_END = "<!-- run-times:start -->", "<!-- run-times:end -->"
NAV_TAG = "nav"
NAV_ID = "lab-nav"  # a fixed cell id, so that rewriting the nav cell leaves an unchanged lab byte for byte
LAB_GLOB = "[0-9][0-9]_*.ipynb"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


# ============================================================================ finding labs
def all_labs(labs_dir: Path | str = LABS_DIR) -> list[Path]:
    """The numbered labs of ``labs_dir`` (``00_tour.ipynb``, ...), in course order."""
    return sorted(Path(labs_dir).glob(LAB_GLOB))


def find_labs(names=(), labs_dir: Path | str = LABS_DIR) -> list[Path]:
    """The labs named by ``names``: numbers (``"01"``, ``"20"``), file names or paths; every lab of
    ``labs_dir`` when ``names`` is empty. Raises ``ValueError`` naming what was not found."""
    labs = all_labs(labs_dir)
    if not names:
        if not labs:
            raise ValueError(f"no lab (a file named like 00_name.ipynb) in {labs_dir}")
        return labs
    out = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.exists():
            out.append(path)
            continue
        found = [p for p in labs if p.name == name or p.name.split("_")[0] == name.zfill(2)]
        if not found:
            raise ValueError(f"no lab {name!r}: give a number ({', '.join(p.name[:2] for p in labs)}) "
                             f"or the path of a notebook")
        out.extend(found)
    return out


def lab_title(path: Path | str) -> str:
    """The lab's title from its first ``# `` heading, without the ``Lab NN`` prefix
    (``"A tour of step distillation"``); the file name's words when it has none."""
    nb = json.loads(Path(path).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return re.sub(r"^Lab\s+\d+\s*[·:\-—–]*\s*", "", line[2:].strip())
    return Path(path).stem.split("_", 1)[-1].replace("_", " ")


# ============================================================================ running labs
def machine() -> str:
    """One line about what ran the labs: cores and CPU model, the thread setting, torch, the device."""
    import torch

    from .core.checkpoints import machine as checkpoint_machine

    info = checkpoint_machine()
    device = os.environ.get(DEVICE_VAR) or (f"cuda ({info['cuda']})" if info["cuda"] else "cpu")
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"{info['cpu_count']} x {info['cpu']}, OMP_NUM_THREADS={threads}, torch {torch.__version__}, {device}"


@dataclass
class LabRun:
    """One lab executed at one scale: passed or not, wall seconds (kernel start included), the first
    line of the first error and the index of the cell that raised it, the kernel's CPU seconds (user
    and system, where ``/proc`` tells them; other jobs on the machine inflate the wall time, hardly
    this), the highest one-minute load average of the machine seen at the end of a cell, the executed
    notebook, and the warnings a student cannot act on that its outputs show (:func:`stray_warnings`,
    each as ``"cell N: <the warning's line>"``)."""

    lab: str
    scale: str
    passed: bool
    seconds: float
    error: str = ""
    cell: int | None = None
    cpu_seconds: float | None = None
    load: float | None = None
    notebook: dict | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)


def _first_line(err: BaseException) -> str:
    """``"ValueError: ..."`` for an error raised in a cell, else the first line of the error's text."""
    if getattr(err, "ename", None):
        text = f"{err.ename}: {err.evalue}"
    else:
        text = f"{type(err).__name__}: {err}"
    return (text.strip().splitlines() or [""])[0][:200]


def _cpu_seconds(pid: int | None) -> float | None:
    """User and system CPU seconds of process ``pid`` and its finished children, from Linux's
    ``/proc/<pid>/stat``; None elsewhere."""
    try:
        fields = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    except (OSError, TypeError, ValueError, IndexError):
        return None


def _load() -> float | None:
    """The machine's one-minute load average (None where the system has none)."""
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None


def run_lab(path: Path | str, scale: str, timeout: float | None = None, progress: bool = True) -> LabRun:
    """Execute one lab top to bottom in a fresh kernel and time it.

    The kernel's environment is this process's with ``$DISTILL_LAB_SCALE = scale`` and this package's
    folder first on ``$PYTHONPATH`` (it runs the code that runs the command); its working
    directory is the lab's folder (as when a student opens it); ``timeout`` is the most seconds one
    cell may run (None: no limit). Widget state is stored in the notebook's metadata, so a saved or
    rendered copy shows the widgets. The first failing cell stops the run (a cell tagged
    ``raises-exception`` may fail).
    """
    import nbformat
    from nbclient import NotebookClient

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    n_code = sum(1 for c in nb.cells if c.cell_type == "code" and c.source.strip())
    bar = tqdm(total=n_code, desc=f"{path.stem} @{scale}", unit="cell", disable=not progress)
    where = {"cell": None, "cpu": None, "load": None}

    def started(cell, cell_index, **_):
        where["cell"] = cell_index

    def executed(cell, cell_index, **_):
        where["cpu"] = _cpu_seconds(getattr(getattr(client.km, "provisioner", None), "pid", None))
        load = _load()
        if load is not None:
            where["load"] = max(load, where["load"] or 0.0)
        bar.update(1)

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent.resolve())}},
                            on_cell_start=started, on_cell_executed=executed)
    env = dict(os.environ, **{ENV_VAR: scale})
    # the kernel imports the distill_lab that runs this command, whatever its install says
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    guard = guard_ipython_dir()  # the same matplotlib guard as the test suite's kernels (CI)
    if guard is not None:
        env["IPYTHONDIR"] = guard
    start = time.perf_counter()
    try:
        client.execute(env=env)
        run = LabRun(path.name, scale, True, time.perf_counter() - start)
    except Exception as err:  # a cell's error, a timeout, a dead kernel: the lab failed
        run = LabRun(path.name, scale, False, time.perf_counter() - start, _first_line(err), where["cell"])
    finally:
        bar.close()
        if guard is not None:
            shutil.rmtree(guard, ignore_errors=True)
    run.notebook, run.cpu_seconds, run.load = nb, where["cpu"], where["load"]
    run.warnings = [f"cell {i + 1}: {w}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
                    for w in stray_warnings(c.get("outputs", []))]
    return run


def check_labs(paths, scale: str, timeout: float | None = None, out: Path | str | None = None,
               progress: bool = True, record: Path | str | None = None) -> list[LabRun]:
    """:func:`run_lab` on each of ``paths`` in turn; with ``out``, each executed notebook (outputs and
    widget state, as far as it ran) is written there under its own name; with ``record``, each lab's
    time is merged into that file as soon as it finishes (an interrupted run keeps what it measured)."""
    import nbformat

    runs = []
    for path in paths:
        run = run_lab(path, scale, timeout=timeout, progress=progress)
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            nbformat.write(run.notebook, Path(out) / run.lab)
        if record is not None:
            record_times([run], record)
        runs.append(run)
    return runs


def format_seconds(s: float) -> str:
    """``"48 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    s = round(s)
    if s < 100:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_results(runs: list[LabRun]) -> str:
    """The result table: lab, scale, pass or fail, wall and CPU seconds, and the first error line (with
    the number of its cell, counting from 1)."""
    rows = [("lab", "scale", "result", "seconds", "cpu s", "first error")]
    for r in runs:
        err = f"cell {r.cell + 1}: {r.error}" if r.error and r.cell is not None else r.error
        cpu = "-" if r.cpu_seconds is None else f"{r.cpu_seconds:.1f}"
        rows.append((r.lab, r.scale, "pass" if r.passed else "FAIL", f"{r.seconds:.1f}", cpu, err))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row[:5], widths)) + "  " + row[5] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


# ============================================================================ the run-time record
def load_times(path: Path | str) -> dict:
    """The run-time record (``{scale: {lab: {...}}}``), empty when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def merge_times(times: dict, runs: list[LabRun], date: str | None = None, machine_line: str | None = None) -> dict:
    """A copy of ``times`` with each run's record put in (replacing that lab's at that scale only)."""
    date = date or datetime.date.today().isoformat()
    machine_line = machine_line or machine()
    merged = copy.deepcopy(times)
    for r in runs:
        rec = {"seconds": round(r.seconds, 1), "passed": r.passed, "date": date, "machine": machine_line}
        if r.cpu_seconds is not None:
            rec["cpu_seconds"] = round(r.cpu_seconds, 1)
        if r.load is not None:
            rec["load"] = r.load
        merged.setdefault(r.scale, {})[r.lab] = rec
    return {s: dict(sorted(merged[s].items())) for s in sorted(merged, key=_scale_order)}


def _scale_order(scale: str):
    return (SCALES.index(scale) if scale in SCALES else len(SCALES), scale)


def record_times(runs: list[LabRun], path: Path | str, date: str | None = None) -> dict:
    """Merge ``runs`` into the JSON file at ``path`` (created if missing); returns what was written."""
    times = merge_times(load_times(path), runs, date)
    Path(path).write_text(json.dumps(times, indent=1) + "\n")
    return times


def run_times_table(times: dict, labs: list[str]) -> str:
    """A markdown table of the measured times, a row a lab (``labs``: file names, in order) and a column
    for ``ci`` and ``default`` (and ``gpu`` when measured): the wall time, then in brackets the kernel's
    CPU time and the machine's load average where they were recorded (a load above the machine's cores
    means other jobs shared it); then a note on each machine and day the times were measured on."""
    scales = [s for s in SCALES if s in ("ci", "default") or s in times]
    head = "| lab | " + " | ".join(f"`{s}`" for s in scales) + " |"
    lines = [head, "|---|" + "---|" * len(scales)]
    machines = []  # (machine, date), numbered in the order met
    for lab in labs:
        cells = []
        for s in scales:
            rec = times.get(s, {}).get(lab)
            if rec is None:
                cells.append("not measured")
                continue
            key = (rec.get("machine", "?"), rec.get("date", "?"))
            if key not in machines:
                machines.append(key)
            text = format_seconds(rec["seconds"])
            text = text if rec["passed"] else f"failed after {text}"
            extra = ([f"CPU {format_seconds(rec['cpu_seconds'])}"] if rec.get("cpu_seconds") is not None else [])
            extra += [f"load {rec['load']:g}"] if rec.get("load") is not None else []
            text += f" ({', '.join(extra)})" if extra else ""
            cells.append(f"{text}<sup>{machines.index(key) + 1}</sup>")
        name = lab[3:].removesuffix(".ipynb").replace("_", " ")
        lines.append(f"| [{lab[:2]} {name}]({lab}) | " + " | ".join(cells) + " |")
    notes = [f"<sup>{i}</sup> {m}, {d}." for i, (m, d) in enumerate(machines, 1)]
    return "\n".join(lines) + ("\n\n" + "<br>\n".join(notes) if notes else "")


def update_syllabus(readme: Path | str, times: dict, labs: list[str]) -> bool:
    """Replace what ``readme`` holds between the run-time markers with :func:`run_times_table`.
    Returns whether the file changed; raises ``ValueError`` when a marker is missing."""
    readme = Path(readme)
    text = readme.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise ValueError(f"{readme} lacks the markers {TABLE_START} and {TABLE_END} around its run-time table")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    new = f"{head}{TABLE_START}\n{run_times_table(times, labs)}\n{TABLE_END}{tail}"
    if new == text:
        return False
    readme.write_text(new)
    return True


# ============================================================================ previous / next links
def nav_cell(lab_path: Path | str, labs: list[Path] | None = None) -> dict:
    """The markdown cell that ends a lab: ``← previous lab · syllabus · notation · next lab →`` as links
    relative to the lab's folder (the first lab has no previous, the last no next), tagged ``nav``.

    ``labs`` is the course in order (default: the numbered labs beside ``lab_path``)."""
    lab_path = Path(lab_path)
    labs = [Path(p) for p in (labs if labs is not None else all_labs(lab_path.parent))]
    names = [p.name for p in labs]
    if lab_path.name not in names:
        raise ValueError(f"{lab_path.name} is not one of the labs {names}")
    i = names.index(lab_path.name)
    parts = []
    if i > 0:
        parts.append(f"[← {names[i - 1][:2]} {lab_title(labs[i - 1])}]({names[i - 1]})")
    parts += [f"[syllabus]({SYLLABUS})", f"[notation]({NOTATION})"]
    if i + 1 < len(labs):
        parts.append(f"[{names[i + 1][:2]} {lab_title(labs[i + 1])} →]({names[i + 1]})")
    return {"cell_type": "markdown", "id": NAV_ID, "metadata": {"tags": [NAV_TAG]},
            "source": "---\n" + " · ".join(parts)}


def is_nav(cell: dict) -> bool:
    return NAV_TAG in cell.get("metadata", {}).get("tags", [])


def apply_nav(labs_dir: Path | str = LABS_DIR) -> list[Path]:
    """Give every lab of ``labs_dir`` its :func:`nav_cell` as the last cell, replacing any nav cell it
    had; a lab whose cells are already right is not rewritten. Returns the labs that changed."""
    import nbformat

    labs = all_labs(labs_dir)
    changed = []
    for path in labs:
        nb = nbformat.read(path, as_version=4)
        cell = nbformat.from_dict(nav_cell(path, labs))
        if nb.nbformat_minor < 5:  # cell ids exist from nbformat 4.5 on
            del cell["id"]
        cells = [c for c in nb.cells if not is_nav(c)] + [cell]
        if cells == nb.cells:
            continue
        nb.cells = cells
        nbformat.write(nb, path)
        changed.append(path)
    return changed


def course_pages(labs_dir: Path | str = LABS_DIR, record: Path | str | None = None) -> list[Path]:
    """``python -m distill_lab course-pages``: the nav cells of every lab and the syllabus's run-time
    table from ``record`` (default ``labs_dir/run_times.json``). Returns the files that changed."""
    labs_dir = Path(labs_dir)
    changed = apply_nav(labs_dir)
    times = load_times(record or labs_dir / RUN_TIMES)
    if update_syllabus(labs_dir / SYLLABUS, times, [p.name for p in all_labs(labs_dir)]):
        changed.append(labs_dir / SYLLABUS)
    return changed


# ============================================================================ the static site
def _site_links(text: str) -> str:
    """Markdown links rewritten for the site: a lab's ``.ipynb`` becomes its ``.html``, the syllabus
    ``index.html`` and the notation page ``notation.html``."""
    text = re.sub(r"\]\((\d\d_[\w.-]+)\.ipynb(#[^)]*)?\)", r"](\1.html\2)", text)
    text = re.sub(rf"\]\({re.escape(SYLLABUS)}(#[^)]*)?\)", r"](index.html\1)", text)
    return re.sub(rf"\]\({re.escape(NOTATION)}(#[^)]*)?\)", r"](notation.html\1)", text)


def render_html(nb, title: str) -> str:
    """A notebook as one HTML page with nbconvert's ``lab`` template: outputs as they were saved, and,
    when its metadata holds widget state, that state and the script that turns it back into widgets."""
    from nbconvert import HTMLExporter

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = _site_links(cell.source)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def _markdown_page(texts: list[str], title: str) -> str:
    """Markdown rendered as a page in the labs' style (a notebook of markdown cells through
    :func:`render_html`)."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(t) for t in texts])
    return render_html(nb, title)


def build_site(paths, out: Path | str = "site", scale: str = "default", executed: Path | str | None = None,
               timeout: float | None = None, labs_dir: Path | str = LABS_DIR, record: Path | str | None = None,
               progress: bool = True) -> tuple[Path, list[LabRun]]:
    """Render the labs ``paths`` with their outputs into a static site in ``out``.

    A lab found in ``executed`` (a folder of notebooks saved by ``check-labs --out``) is rendered as
    saved; every other lab is executed at ``scale`` first (:func:`run_lab`) and its time merged into
    ``record`` when one is given. ``out`` receives ``NN_name.html`` a lab, the executed notebooks under
    ``notebooks/``, ``notation.html``, ``run_times.json``, and ``index.html``: the labs with their
    times at each scale (from ``labs_dir/run_times.json``), then the syllabus. Returns the index's path
    and the runs made.
    """
    import nbformat

    out, labs_dir = Path(out), Path(labs_dir)
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    runs, built = [], []
    for path in paths:
        path = Path(path)
        saved = Path(executed) / path.name if executed else None
        if saved is not None and saved.exists():
            nb = nbformat.read(saved, as_version=4)
        else:
            run = run_lab(path, scale, timeout=timeout, progress=progress)
            if record is not None:
                record_times([run], record)
            runs.append(run)
            nb = run.notebook
        nbformat.write(nb, out / "notebooks" / path.name)
        title = f"{path.name[:2]} · {lab_title(path)}"
        (out / f"{path.stem}.html").write_text(render_html(nb, title))
        built.append((path, title))
    times = load_times(record or labs_dir / RUN_TIMES)
    items = []
    for path, title in built:
        measured = [f"{s} {format_seconds(times[s][path.name]['seconds'])}" for s in SCALES
                    if path.name in times.get(s, {}) and times[s][path.name]["passed"]]
        items.append(f"* [{title}]({path.stem}.html)" + (f" ({', '.join(measured)})" if measured else ""))
    texts = ["# distill-lab: the labs, executed\n\nEach lab as it ran, with its outputs and widgets; "
             "the executed notebooks are under `notebooks/`.\n\n" + "\n".join(items)]
    if (labs_dir / SYLLABUS).exists():
        texts.append(_site_links((labs_dir / SYLLABUS).read_text()))
    (out / "index.html").write_text(_markdown_page(texts, "distill-lab labs"))
    if (labs_dir / NOTATION).exists():
        page = _markdown_page([_site_links((labs_dir / NOTATION).read_text())], "distill-lab notation")
        (out / "notation.html").write_text(page)
    if times:
        (out / RUN_TIMES).write_text(json.dumps(times, indent=1) + "\n")
    return out / "index.html", runs


_WARNING_LINE = re.compile(r"^(?P<where>.*?):\d+: (?P<kind>[A-Za-z_]*Warning): (?P<text>.*)$")


def _in_package(where: str) -> bool:
    """Whether a file path lies in a ``distill_lab/`` folder: a clone's or an installed copy's (the part
    after the last ``site-packages/`` or ``dist-packages/`` is what counts, so a virtual environment made
    inside a clone does not make torch's files the package's)."""
    tail = re.split(r"[/\\](?:site|dist)-packages[/\\]", where)[-1]
    return re.search(r"(?:^|[/\\])distill_lab[/\\]", tail) is not None


def stray_warnings(outputs) -> list[str]:
    """The warnings in a cell's outputs that a student cannot act on: every ``path:line: SomeWarning:
    text`` line of a stream output whose ``path`` lies outside this package.

    The package's own warnings (a rank-deficient covariance in the Fréchet distance, ...) say what to
    change, so they may reach a lab's output; one from torch, matplotlib or tqdm's internals only puzzles
    a student, and the lab must avoid or silence it where it arises. Each returned string is the
    warning's line, as printed."""
    found = []
    for out in outputs:
        if out.get("output_type") != "stream":
            continue
        text = out.get("text", "")
        for line in (text if isinstance(text, str) else "".join(text)).splitlines():
            m = _WARNING_LINE.match(line.strip())
            if m and not _in_package(m["where"]):
                found.append(line.strip())
    return found


def has_widget_state(page: str) -> bool:
    """Whether an HTML page carries saved widget state and the manager script that renders it."""
    return f'type="{WIDGET_STATE}"' in page and "html-manager" in page



# ============================================================================ the commands
def command(args) -> int:
    """``check-labs``, ``build-site`` and ``course-pages`` from their parsed arguments
    (:func:`distill_lab.__main__.build_parser`): 0 when every lab passed, 1 when one failed, 2 on bad input."""
    import sys

    labs_dir = Path(args.labs_dir) if args.labs_dir else LABS_DIR
    record = None if getattr(args, "no_record", False) else Path(args.record or labs_dir / RUN_TIMES)
    if args.command == "course-pages":
        for path in course_pages(labs_dir, record):
            print(f"updated {path}")
        return 0
    scale = args.scale or os.environ.get(ENV_VAR) or "default"
    timeout = args.timeout if args.timeout and args.timeout > 0 else None  # 0: no limit
    try:
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r} (from ${ENV_VAR}); choose one of {', '.join(SCALES)}")
        paths = find_labs(args.labs, labs_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "build-site":
        index, runs = build_site(paths, args.out, scale, args.executed, timeout, labs_dir, record,
                                 progress=not args.quiet)
        print(f"wrote {index}")
    else:
        runs = check_labs(paths, scale, timeout, args.out, progress=not args.quiet, record=record)
        if record is not None:
            times = load_times(record)
            print(f"recorded in {record}")
            readme = labs_dir / SYLLABUS  # the syllabus shows the labs' own record, not another file's
            if record == labs_dir / RUN_TIMES and readme.exists() and TABLE_START in readme.read_text():
                update_syllabus(readme, times, [p.name for p in all_labs(labs_dir)])
    if runs:
        print(format_results(runs))
    for r in runs:
        for w in r.warnings:
            print(f"{r.lab}: a warning a student cannot act on, {w}", file=sys.stderr)
    failed = [r.lab for r in runs if not r.passed]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
