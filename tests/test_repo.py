"""The repository keeps its promises: CI runs the README's command; every lab is listed and small."""

import json
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
        assert any("assert" in "".join(c["source"]) for c in code), f"{nb_path.name} checks nothing"
