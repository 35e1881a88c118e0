"""The course around the labs (distill_lab.course): check-labs times labs and records pass or fail, the
record merges, the nav cells link each lab to its neighbours and stay put when applied again, the
syllabus's table follows the record, build-site keeps widgets as widgets; and the syllabus and the
README's lab table keep their promises. No lab is executed here: the notebooks are tiny stand-ins."""

import json
import re
from pathlib import Path

import nbformat
import pytest

from distill_lab import course
from distill_lab.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
LABS = ROOT / "labs"
v4 = nbformat.v4


def write_lab(folder: Path, name: str, *sources: str, title: str | None = None) -> Path:
    """A notebook ``folder/name`` with a ``# Lab NN · title`` heading and one code cell a source."""
    cells = [v4.new_markdown_cell(f"# Lab {name[:2]} · {title or name[3:-6]}")]
    cells += [v4.new_code_cell(s) for s in sources]
    path = folder / name
    nbformat.write(v4.new_notebook(cells=cells), path)
    return path


def outputs_text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_check_labs_records_times_and_failures_and_exits_nonzero(tmp_path, capsys):
    write_lab(tmp_path, "00_good.ipynb", "import os\nprint(os.environ['DISTILL_LAB_SCALE'], os.getcwd())")
    write_lab(tmp_path, "01_bad.ipynb", "x = 1", "raise ValueError('boom\\nsecond line')", "print('never')")
    out = tmp_path / "executed"
    rc = main(["check-labs", "--scale", "ci", "--labs-dir", str(tmp_path), "--out", str(out), "--quiet"])
    assert rc == 1
    table = capsys.readouterr().out
    assert re.search(r"00_good\.ipynb\s+ci\s+pass", table)
    assert re.search(r"01_bad\.ipynb\s+ci\s+FAIL\s+[\d.]+\s+[\d.-]+\s+cell 3: ValueError: boom$", table, re.M)
    times = json.loads((tmp_path / course.RUN_TIMES).read_text())
    good, bad = times["ci"]["00_good.ipynb"], times["ci"]["01_bad.ipynb"]
    assert good["passed"] is True and bad["passed"] is False
    assert good["seconds"] > 0 and bad["seconds"] > 0
    assert good["date"] and "torch" in good["machine"] and "OMP_NUM_THREADS" in good["machine"]
    assert 0 < good["cpu_seconds"] and good["load"] >= 0
    # the kernel ran at the scale asked for, in the lab's folder; the failing lab stopped at its error
    assert outputs_text(nbformat.read(out / "00_good.ipynb", 4)).split() == ["ci", str(tmp_path.resolve())]
    assert "never" not in outputs_text(nbformat.read(out / "01_bad.ipynb", 4))
    # one passing lab: exit 0, and only that lab's record changes
    assert main(["check-labs", "00", "--scale", "default", "--labs-dir", str(tmp_path), "--quiet"]) == 0
    times2 = json.loads((tmp_path / course.RUN_TIMES).read_text())
    assert times2["ci"] == times["ci"] and set(times2["default"]) == {"00_good.ipynb"}


def test_check_labs_kernels_refuse_a_tensor_handed_to_matplotlib_as_the_suites_do(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IPYTHONDIR", raising=False)  # not the suite's own guarded folder: check-labs sets its own
    write_lab(tmp_path, "00_tensor.ipynb", "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
              "import torch\nplt.plot(torch.arange(3))")
    write_lab(tmp_path, "01_list.ipynb", "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
              "plt.plot([0, 1, 2])")
    assert main(["check-labs", "--scale", "ci", "--labs-dir", str(tmp_path), "--quiet"]) == 1
    table = capsys.readouterr().out
    assert re.search(r"00_tensor\.ipynb\s+ci\s+FAIL.*a torch tensor reached matplotlib", table)
    assert re.search(r"01_list\.ipynb\s+ci\s+pass", table)


def test_check_labs_refuses_an_unknown_lab(tmp_path, capsys):
    write_lab(tmp_path, "00_good.ipynb", "pass")
    assert main(["check-labs", "07", "--labs-dir", str(tmp_path), "--quiet"]) == 2
    assert "no lab '07'" in capsys.readouterr().err
    assert [p.name for p in course.find_labs(["0"], tmp_path)] == ["00_good.ipynb"]
    assert course.find_labs([str(tmp_path / "00_good.ipynb")], tmp_path) == [tmp_path / "00_good.ipynb"]


def run(lab, scale, seconds, passed=True):
    return course.LabRun(lab, scale, passed, seconds)


def test_merge_replaces_only_the_labs_that_ran():
    old = {"default": {"01_a.ipynb": {"seconds": 200.0, "passed": True, "date": "2026-01-01", "machine": "m"},
                       "02_b.ipynb": {"seconds": 300.0, "passed": True, "date": "2026-01-01", "machine": "m"}},
           "ci": {"01_a.ipynb": {"seconds": 50.0, "passed": True, "date": "2026-01-01", "machine": "m"}}}
    runs = [run("02_b.ipynb", "default", 310.04, passed=False), run("03_c.ipynb", "gpu", 9)]
    runs[1].load = 2.5
    new = course.merge_times(old, runs, date="2026-02-02", machine_line="n")
    assert new["ci"] == old["ci"] and new["default"]["01_a.ipynb"] == old["default"]["01_a.ipynb"]
    assert new["default"]["02_b.ipynb"] == dict(seconds=310.0, passed=False, date="2026-02-02", machine="n")
    assert new["gpu"]["03_c.ipynb"] == dict(seconds=9, passed=True, date="2026-02-02", machine="n", load=2.5)
    assert list(new) == ["ci", "default", "gpu"]
    assert old["default"]["02_b.ipynb"]["seconds"] == 300.0  # the input is left as it was


def test_record_times_creates_then_merges(tmp_path):
    path = tmp_path / "times.json"
    course.record_times([run("00_a.ipynb", "ci", 12.3)], path, date="2026-01-01")
    course.record_times([run("01_b.ipynb", "ci", 45.6)], path, date="2026-01-02")
    times = json.loads(path.read_text())
    assert sorted(times["ci"]) == ["00_a.ipynb", "01_b.ipynb"] and times["ci"]["00_a.ipynb"]["seconds"] == 12.3


def test_format_seconds():
    assert [course.format_seconds(s) for s in (4.4, 99, 185, 3725)] == ["4 s", "99 s", "3 min 05 s", "1 h 02 min"]


@pytest.fixture
def three_labs(tmp_path):
    labs = [write_lab(tmp_path, n, "pass") for n in ("00_first.ipynb", "01_second.ipynb", "10_third.ipynb")]
    (tmp_path / "README.md").write_text("# Syllabus\n")
    (tmp_path / "NOTATION.md").write_text("# Notation\n")
    return labs


def nav_links(path: Path) -> list[str]:
    cells = nbformat.read(path, 4).cells
    assert course.is_nav(cells[-1]) and sum(course.is_nav(c) for c in cells) == 1
    return re.findall(r"\]\(([^)]+)\)", cells[-1].source)


def test_nav_cells_link_neighbours_and_are_idempotent(three_labs, tmp_path):
    first, second, third = three_labs
    assert course.apply_nav(tmp_path) == three_labs
    assert nav_links(first) == ["README.md", "NOTATION.md", "01_second.ipynb"]  # no previous lab
    assert nav_links(second) == ["00_first.ipynb", "README.md", "NOTATION.md", "10_third.ipynb"]
    assert nav_links(third) == ["01_second.ipynb", "README.md", "NOTATION.md"]  # no next lab
    text = nbformat.read(second, 4).cells[-1].source
    assert text.index("←") < text.index("00 first") < text.index("syllabus") < text.index("10 third →")
    for lab in three_labs:
        assert all((tmp_path / link).exists() for link in nav_links(lab))
    before = {p: p.read_bytes() for p in three_labs}
    assert course.apply_nav(tmp_path) == []
    assert {p: p.read_bytes() for p in three_labs} == before
    # a new lab in the middle: its neighbours' nav cells are replaced, not added to
    write_lab(tmp_path, "05_middle.ipynb", "pass")
    changed = course.apply_nav(tmp_path)
    assert [p.name for p in changed] == ["01_second.ipynb", "05_middle.ipynb", "10_third.ipynb"]
    assert nav_links(second)[-1] == "05_middle.ipynb" and nav_links(third)[0] == "05_middle.ipynb"


def test_nav_cell_goes_last_even_when_an_old_one_sits_elsewhere(three_labs, tmp_path):
    nb = nbformat.read(three_labs[1], 4)
    nb.cells.insert(0, nbformat.from_dict(course.nav_cell(three_labs[1])))
    nb.cells.append(v4.new_code_cell("print(1)"))
    nbformat.write(nb, three_labs[1])
    course.apply_nav(tmp_path)
    cells = nbformat.read(three_labs[1], 4).cells
    assert [c.cell_type for c in cells] == ["markdown", "code", "code", "markdown"] and course.is_nav(cells[-1])


def test_syllabus_table_regenerates_from_the_record(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Syllabus\n\nbefore\n\n{course.TABLE_START}\nold table\n{course.TABLE_END}\n\nafter\n")
    times = {"ci": {"00_a.ipynb": {"seconds": 61.0, "passed": True, "date": "2026-01-01", "machine": "box"}},
             "default": {"00_a.ipynb": {"seconds": 250.0, "passed": False, "date": "2026-01-02", "machine": "box",
                                        "load": 1.5},
                         "01_b_c.ipynb": {"seconds": 20.0, "passed": True, "date": "2026-01-02", "machine": "box",
                                          "cpu_seconds": 12.4, "load": 3.25}}}
    assert course.update_syllabus(readme, times, ["00_a.ipynb", "01_b_c.ipynb", "02_d.ipynb"])
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Syllabus\n\nbefore\n") and text.endswith("\nafter\n")
    table = text.split(course.TABLE_START)[1].split(course.TABLE_END)[0]
    assert "| [00 a](00_a.ipynb) | 61 s<sup>1</sup> | failed after 4 min 10 s (load 1.5)<sup>2</sup> |" in table
    assert "| [01 b c](01_b_c.ipynb) | not measured | 20 s (CPU 12 s, load 3.25)<sup>2</sup> |" in table
    assert "| [02 d](02_d.ipynb) | not measured | not measured |" in table
    assert "<sup>1</sup> box, 2026-01-01." in table
    assert "<sup>2</sup> box, 2026-01-02." in table
    assert not course.update_syllabus(readme, times, ["00_a.ipynb", "01_b_c.ipynb", "02_d.ipynb"])  # nothing new
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="run-times:start"):
        course.update_syllabus(readme, times, ["00_a.ipynb"])


def test_course_pages_writes_nav_and_table(three_labs, tmp_path, capsys):
    (tmp_path / "README.md").write_text(f"# Syllabus\n{course.TABLE_START}\n{course.TABLE_END}\n")
    course.record_times([run("01_second.ipynb", "ci", 30)], tmp_path / course.RUN_TIMES)
    assert main(["course-pages", "--labs-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("updated") == 4
    table = (tmp_path / "README.md").read_text()
    assert "| [01 second](01_second.ipynb) | 30 s<sup>1</sup> | not measured |" in table
    assert all(course.is_nav(nbformat.read(p, 4).cells[-1]) for p in three_labs)


SLIDER = "import ipywidgets as w\nw.IntSlider(value=7, min=0, max=9, description='knob')"


def test_build_site_keeps_the_widget_state(tmp_path):
    labs = tmp_path / "labs"
    labs.mkdir()
    lab = write_lab(labs, "00_widget.ipynb", SLIDER, title="A slider")
    write_lab(labs, "01_next.ipynb", "pass")
    course.apply_nav(labs)
    (labs / "README.md").write_text(f"# The syllabus\n\n[lab 00](00_widget.ipynb), [notation](NOTATION.md)\n"
                                    f"{course.TABLE_START}\n{course.TABLE_END}\n")
    (labs / "NOTATION.md").write_text("# Notation\n\ntime runs from noise to data\n")
    site = tmp_path / "site"
    index, runs = course.build_site([lab], site, "ci", labs_dir=labs, record=labs / course.RUN_TIMES,
                                    progress=False)
    assert [r.passed for r in runs] == [True]
    page = (site / "00_widget.html").read_text()
    assert course.has_widget_state(page)
    state = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', page, re.S)
    models = json.loads(state.group(1))["state"].values()
    assert any(m["model_name"] == "IntSliderModel" and m["state"]["value"] == 7 for m in models)
    assert 'type="application/vnd.jupyter.widget-view+json"' in page
    assert 'href="01_next.html"' in page and 'href="index.html"' in page  # the nav links, as site links
    front = index.read_text()
    assert 'href="00_widget.html"' in front and "A slider" in front and "The syllabus" in front
    assert 'href="notation.html"' in front and (site / "notation.html").exists()
    assert "widgets" in nbformat.read(site / "notebooks" / "00_widget.ipynb", 4).metadata
    # rendered again from the saved notebook: the same widget state, nothing executed
    _, again = course.build_site([lab], tmp_path / "site2", "ci", executed=site / "notebooks", labs_dir=labs)
    assert again == [] and course.has_widget_state((tmp_path / "site2" / "00_widget.html").read_text())


# ---------------------------------------------------------------- the repository's own pages
def markdown_links(text: str) -> list[str]:
    return [m for m in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", m)]


def test_syllabus_names_every_lab_and_its_links_resolve():
    labs = [p.name for p in course.all_labs(LABS)]
    for page in ("README.md", "NOTATION.md"):
        text = (LABS / page).read_text()
        for link in markdown_links(text):
            target = (LABS / link.split("#")[0]).resolve()
            assert target.exists(), f"labs/{page} links to {link}, which does not exist"
    syllabus = (LABS / "README.md").read_text()
    missing = [name for name in labs if f"({name})" not in syllabus.split(course.TABLE_START)[0]]
    assert not missing, f"labs/README.md does not describe {missing}"
    assert "(NOTATION.md)" in syllabus


def test_syllabus_run_time_table_is_the_record():
    labs = [p.name for p in course.all_labs(LABS)]
    times = course.load_times(LABS / course.RUN_TIMES)
    assert set().union(*(set(v) for v in times.values())) <= set(labs), "run_times.json names a lab that is gone"
    table = (LABS / "README.md").read_text().split(course.TABLE_START)[1].split(course.TABLE_END)[0]
    assert table.strip() == course.run_times_table(times, labs).strip(), \
        "labs/README.md's run-time table is stale: run `python -m distill_lab course-pages`"


def test_readme_lab_table_has_no_blank_line():
    lines = (ROOT / "README.md").read_text().splitlines()
    rows = [i for i, line in enumerate(lines) if re.match(r"\| \[\d\d ", line)]
    assert rows, "the README has no lab table"
    gaps = [lines[i] for i in range(rows[0], rows[-1] + 1) if not lines[i].startswith("|")]
    assert not gaps, f"the README's lab table is broken by {gaps!r}: a blank line ends a markdown table"


def test_stray_warnings_keeps_the_packages_own_and_flags_the_rest():
    torch_line = "/venv/lib/python3.11/site-packages/torch/_jit_internal.py:12: FutureWarning: jit is deprecated"
    own_line = "/home/me/distill-lab/distill_lab/metrics/frechet.py:79: UserWarning: rank-deficient"
    outputs = [
        {"output_type": "stream", "name": "stderr", "text": f"{torch_line}\n  x = jit(f)\n{own_line}\n"},
        {"output_type": "stream", "name": "stdout", "text": ["/tmp/ipykernel_7/1.py:3: ", "DeprecationWarning: old\n"]},
        {"output_type": "display_data", "data": {"text/plain": "/x/y.py:1: UserWarning: not a stream"}},
        {"output_type": "stream", "name": "stderr", "text": "step 3: UserWarning-free line, loss 0.2\n"},
    ]
    assert course.stray_warnings(outputs) == [torch_line, "/tmp/ipykernel_7/1.py:3: DeprecationWarning: old"]
    # an installed copy of the package counts as the package; a virtual environment inside a clone does not
    # make torch's files the package's
    assert course.stray_warnings([{"output_type": "stream", "text":
                                   "/usr/lib/python3/dist-packages/distill_lab/a.py:1: UserWarning: w\n"}]) == []
    inside = "/src/distill_lab/.venv/lib/python3.11/site-packages/torch/a.py:1: UserWarning: w"
    assert course.stray_warnings([{"output_type": "stream", "text": inside + "\n"}]) == [inside]


def test_check_labs_reports_a_stray_warning(tmp_path, capsys):
    write_lab(tmp_path, "00_warns.ipynb", "import warnings\nwarnings.warn('from a library', FutureWarning)",
              "print('still runs')")
    run = course.run_lab(tmp_path / "00_warns.ipynb", "ci", progress=False)
    assert run.passed and len(run.warnings) == 1
    # cells count from 1 as in format_results, the heading included: the warning is in the notebook's 2nd cell
    assert run.warnings[0].startswith("cell 2: ") and "FutureWarning: from a library" in run.warnings[0]
    assert main(["check-labs", "--scale", "ci", "--labs-dir", str(tmp_path), "--quiet", "--no-record"]) == 0
    assert "00_warns.ipynb: a warning a student cannot act on, cell 2:" in capsys.readouterr().err


def test_nbval_fails_a_cell_that_shows_a_stray_warning(tmp_path):
    """The root conftest's hook, run by pytest on a copy of it: a cell whose output shows a library's
    warning fails even though nbval compared nothing; a warning silenced by a filter passes."""
    import subprocess
    import sys

    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    write_lab(tmp_path, "00_warns.ipynb", "import warnings\nwarnings.warn('from a library', FutureWarning)")
    write_lab(tmp_path, "01_quiet.ipynb", "import warnings\nwarnings.filterwarnings('ignore', 'from a library')\n"
              "warnings.warn('from a library', FutureWarning)\nprint('fine')")
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", "--nbval-lax",
                          "-o", "addopts=", "00_warns.ipynb", "01_quiet.ipynb"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert re.search(r"\b1 failed, 1 passed\b", res.stdout), res.stdout[-3000:]
    assert "a warning a student cannot act on" in res.stdout and "FutureWarning: from a library" in res.stdout
    assert "FAILED 00_warns.ipynb" in res.stdout


def test_check_labs_bounds_each_cell_by_a_timeout(tmp_path, capsys):
    """A cell past --timeout fails the lab (a hung kernel becomes a reported failure, not a run that never
    ends); --timeout 0 means no limit."""
    write_lab(tmp_path, "00_slow.ipynb", "import time\ntime.sleep(4)\nprint('woke')")
    assert main(["check-labs", "--scale", "ci", "--labs-dir", str(tmp_path), "--quiet", "--no-record",
                 "--timeout", "1"]) == 1
    assert re.search(r"00_slow\.ipynb\s+ci\s+FAIL.*cell 2: .*(?i:timeout|timed out)", capsys.readouterr().out)
    assert main(["check-labs", "--scale", "ci", "--labs-dir", str(tmp_path), "--quiet", "--no-record",
                 "--timeout", "0"]) == 0
