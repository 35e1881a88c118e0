"""The repository keeps its promises: CI runs the README's command; every lab is listed and small."""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb"))


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    cmd = ci[ci.index("# The README's test command:") + 1].strip()
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{cmd}\n```" in readme


def test_every_lab_is_in_the_readme_small_and_installs_itself_on_colab():
    readme = (ROOT / "README.md").read_text()
    assert len(LABS) >= 7
    for nb_path in LABS:
        assert f"(labs/{nb_path.name})" in readme, f"{nb_path.name} is not in the README's lab map"
        assert nb_path.stat().st_size < 1_000_000, f"{nb_path.name} is over 1 MB"
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert "google.colab" in "".join(code[0]["source"]), f"{nb_path.name}: first code cell must install on Colab"
        last = "".join(code[-1]["source"])
        assert "CheckTable(" in last and ".expect(" in last and ".report()" in last, \
            f"{nb_path.name}: the last code cell must state the lab's claims as a CheckTable and report them"
        # the verdicts are the table's rows, each with its numbers; no bare assert elsewhere in a lab
        bare = [line.strip() for c in code for line in "".join(c["source"]).splitlines()
                if re.match(r"\s*assert\b", line)]
        assert not bare, f"{nb_path.name}: claims belong in the closing CheckTable, not in bare asserts: {bare}"


def test_every_link_to_the_repository_derives_from_its_one_declared_home():
    """pyproject's ``[project.urls] Repository`` is the one place the repository's address is written
    down; the README's badges, the Colab install cells and the Binder link must point at it."""
    home = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    owner, repo = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", home).groups()
    texts = {p.relative_to(ROOT): p.read_text() for p in [ROOT / "README.md", *LABS, *(ROOT / "binder").iterdir()]}
    pattern = re.compile(r"(?:github\.com|mybinder\.org/v2/gh|colab\.research\.google\.com/github)/([\w.-]+)/([\w.-]+)")
    found = [(path, m.groups()) for path, text in texts.items() for m in pattern.finditer(text)]
    assert len(found) >= len(LABS) + 2  # every lab's install cell and the two badges
    wrong = [(str(path), "/".join(g)) for path, g in found if g != (owner, repo)]
    assert not wrong, f"links to another repository than {home}: {wrong}"


def test_every_lab_starts_at_the_tested_scale_unless_the_student_chose_one():
    """The first code cell sets ``DISTILL_LAB_SCALE`` to ``ci`` only when it is unset (``setdefault``),
    prints the scale and how to pick another, and says how to install the package when it is missing."""
    for nb_path in LABS:
        code = [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]
        first = "".join(code[0]["source"])
        assert 'os.environ.setdefault("DISTILL_LAB_SCALE", "ci")' in first, nb_path.name
        assert "print(" in first and "%env DISTILL_LAB_SCALE=" in first, nb_path.name
        assert all("DISTILL_LAB_SCALE" not in "".join(c["source"]) for c in code[1:]), nb_path.name
        # without the package installed, the first cell says how to install it (not a bare ImportError)
        assert "except ImportError:" in first and "pip install -e ." in first, nb_path.name


def test_importing_the_package_silences_only_torchs_jit_script_notice():
    """torch.func.jvp (sCM, TBCM, flow maps) makes torch warn about its own use of torch.jit.script; a
    student cannot act on it. After ``import distill_lab`` that warning is gone and others still show."""
    code = ("import warnings, torch, distill_lab\n"
            "torch.func.jvp(lambda x: x * x, (torch.ones(2),), (torch.ones(2),))\n"
            "warnings.warn('another FutureWarning', FutureWarning)\n")
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, check=True)
    assert "another FutureWarning" in out.stderr
    assert "jit.script" not in out.stderr
    bare = subprocess.run([sys.executable, "-W", "default", "-c", code.replace(", distill_lab", "")],
                          capture_output=True, text=True, check=True)
    assert "jit.script" in bare.stderr  # the warning this test is about does exist without the package
