"""Student versions of the labs: the instructor's notebook with its solutions blanked.

``python -m distill_lab.exercises.student`` writes ``labs/student/NN_name.ipynb`` for every lab that has
exercises; ``--check`` only verifies that the committed ones are up to date. Nobody edits a student
version by hand: it is made from the lab in ``labs/``, which CI executes with its solutions in place.

Markers in a lab's code cells:

* a block between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` becomes ``raise NotImplementedError(...)``
  at the block's indentation;
* a line ``name = value  # SOLUTION`` becomes ``name = ...  # your answer``.

In ``labs/`` the cells with solutions are collapsed (``source_hidden``), so a student who opens the full
lab sees the question, not the answer, until they expand it. :func:`fill` puts the solutions back into a
student version; the tests check that doing so gives back the lab exactly, so what CI executes is the
student version with its solutions filled in.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

BEGIN, END, LINE = "# BEGIN SOLUTION", "# END SOLUTION", "# SOLUTION"
STUB = 'raise NotImplementedError("your code here: replace this line, then run the cell")'
ANSWER = "...  # your answer"
_LINE_RE = re.compile(r"^(?P<head>\s*[\w\[\]\"'.]+\s*=\s*)(?P<value>.+?)\s*# SOLUTION\s*$")
ROOT = Path(__file__).resolve().parents[2]


def _source(cell) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def has_solution(cell) -> bool:
    return cell["cell_type"] == "code" and (BEGIN in _source(cell) or LINE in _source(cell))


def split(code: str, where: str = "cell") -> tuple[str, list[str]]:
    """Blank the solutions of one code cell: (student code, the solutions in order)."""
    out, solutions, block, indent = [], [], None, ""
    for line in _lines(code):
        stripped = line.strip()
        if block is not None:
            if stripped == END:
                solutions.append("".join(block))
                out.append(indent + STUB + "\n")
                out.append(line)
                block = None
            elif stripped == BEGIN:
                raise ValueError(f"{where}: '{BEGIN}' inside another solution block")
            else:
                block.append(line)
        elif stripped == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            out.append(line)
            block = []
        elif stripped == END:
            raise ValueError(f"{where}: '{END}' without its '{BEGIN}'")
        elif line.rstrip().endswith(LINE):
            m = _LINE_RE.match(line.rstrip("\n"))
            if not m:
                raise ValueError(f"{where}: a '{LINE}' line must read `name = value  {LINE}`; got {line.strip()!r}")
            solutions.append(m["value"])
            out.append(m["head"] + ANSWER + ("\n" if line.endswith("\n") else ""))
        else:
            out.append(line)
    if block is not None:
        raise ValueError(f"{where}: '{BEGIN}' without its '{END}'")
    return "".join(out), solutions


def join(student_code: str, solutions: list[str], where: str = "cell") -> str:
    """The inverse of :func:`split`: put ``solutions`` back into a student cell's code."""
    out, rest, lines = [], list(solutions), _lines(student_code)
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        if line.strip() == BEGIN:
            if i + 1 >= len(lines) or lines[i + 1].strip() != STUB or not rest:
                raise ValueError(f"{where}: a solution block was edited or has no solution to fill in")
            out.append(rest.pop(0))
            i += 1  # skip the stub
        elif line.rstrip().endswith("# your answer") and "= ..." in line:
            if not rest:
                raise ValueError(f"{where}: more answers to fill than solutions")
            out[-1] = line.replace(ANSWER, rest.pop(0) + f"  {LINE}")
        i += 1
    if rest:
        raise ValueError(f"{where}: {len(rest)} solutions left over")
    return "".join(out)


def make_student(nb: dict, name: str = "lab") -> dict:
    """The student version of a lab notebook: solutions blanked, outputs cleared, cells expanded."""
    nb = copy.deepcopy(nb)
    for k, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            if "nav" in cell["metadata"].get("tags", []):  # the course pages sit one folder up
                text = _source(cell)
                for page in ("README.md", "NOTATION.md"):
                    text = text.replace(f"]({page})", f"](../{page})")
                cell["source"] = text
            continue
        code, _ = split(_source(cell), f"{name}, cell {k}")
        cell["source"] = code
        cell["outputs"], cell["execution_count"] = [], None
        cell["metadata"].pop("jupyter", None)  # nothing to hide in a student version
        cell["metadata"].pop("collapsed", None)
    nb["cells"].insert(0, {"cell_type": "markdown", "metadata": {"tags": ["student-version"]}, "source": (
        f"*Student version of `labs/{name}`, made by `python -m distill_lab.exercises.student`: the exercises' "
        "answers are blank (`raise NotImplementedError`, `= ...`). Fill them in and run each check; "
        f"the full lab, with the answers in collapsed cells, is [labs/{name}](../{name}).*")})
    return nb


def solutions_of(nb: dict, name: str = "lab") -> list[list[str]]:
    """Every code cell's solutions, in order (empty lists for cells without)."""
    return [split(_source(c), f"{name}, cell {k}")[1]
            for k, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def fill(student: dict, solutions: list[list[str]], name: str = "lab") -> dict:
    """Put ``solutions`` (from :func:`solutions_of` on the lab) back into a student version."""
    nb = copy.deepcopy(student)
    if nb["cells"] and "student-version" in nb["cells"][0]["metadata"].get("tags", []):
        nb["cells"].pop(0)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if len(code) != len(solutions):
        raise ValueError(f"{name}: {len(code)} code cells, but solutions for {len(solutions)}")
    for k, (cell, sols) in enumerate(zip(code, solutions)):
        cell["source"] = join(_source(cell), sols, f"{name}, code cell {k}")
    return nb


def hide_solutions(nb: dict) -> bool:
    """Collapse the input of every cell that holds a solution (in place); True if anything changed."""
    changed = False
    for cell in nb["cells"]:
        if has_solution(cell) and not cell["metadata"].get("jupyter", {}).get("source_hidden"):
            cell["metadata"].setdefault("jupyter", {})["source_hidden"] = True
            changed = True
    return changed


def _dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def lab_paths(labs: Path) -> list[Path]:
    return sorted(p for p in labs.glob("[0-9][0-9]_*.ipynb")
                  if any(has_solution(c) for c in json.loads(p.read_text())["cells"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distill_lab.exercises.student", description=__doc__.split("\n\n")[0])
    ap.add_argument("--labs", type=Path, default=ROOT / "labs", help="the labs' folder (default: the repository's)")
    ap.add_argument("--check", action="store_true", help="only verify the student versions are up to date")
    args = ap.parse_args(argv)
    out_dir, stale = args.labs / "student", []
    for path in lab_paths(args.labs):
        nb = json.loads(path.read_text())
        if hide_solutions(nb):
            if args.check:
                stale.append(f"{path.name} (solutions not collapsed)")
            else:
                path.write_text(_dump(nb))
        text = _dump(make_student(nb, path.name))
        target = out_dir / path.name
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(str(target.relative_to(args.labs.parent)))
        else:
            out_dir.mkdir(exist_ok=True)
            if not target.exists() or target.read_text() != text:
                target.write_text(text)
                print(f"wrote {target}")
    if stale:
        print("out of date: " + ", ".join(stale) + "\nrun: python -m distill_lab.exercises.student", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
