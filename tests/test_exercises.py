"""The exercises: every checker passes its solution and fails every listed mistake; every lab has its
exercises; the student versions are generated, up to date, and give back the lab when filled in."""

import json
from pathlib import Path

import pytest

from distill_lab import exercises as ex
from distill_lab.exercises import student

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb"))
ALL = ex.load_all()
IMPLEMENT = sorted(n for n, e in ALL.items() if e.kind == "implement")
PREDICT = sorted(n for n, e in ALL.items() if e.kind == "predict")


def _code(path):
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("name", IMPLEMENT)
def test_checker_accepts_the_solution_and_rejects_each_mistake(name, capsys):
    e = ALL[name]
    assert ex.check(name, e.solution) is True
    assert f"✓  {name}" in capsys.readouterr().out
    assert len(e.wrong) >= 2, f"{name}: list at least two plausible mistakes its checker must reject"
    for mistake, answer in e.wrong.items():
        with pytest.raises(ex.ExerciseFailed, match=name):
            ex.check(name, answer)
            pytest.fail(f"{name}: the checker accepted a wrong answer ({mistake})")


@pytest.mark.parametrize("name", PREDICT)
def test_prediction_is_judged_against_the_measured_outcome(name, capsys, monkeypatch):
    e = ALL[name]
    monkeypatch.delenv(ex.STRICT_ENV, raising=False)
    for measured in e.choices:
        for answer in e.choices:
            assert ex.predict(name, answer, measured) is (answer == measured)
    monkeypatch.setenv(ex.STRICT_ENV, "1")
    other = next(c for c in e.choices if c != e.solution)
    with pytest.raises(ex.ExerciseFailed):
        ex.predict(name, e.solution, other)
    with pytest.raises(ValueError, match="one of"):
        ex.predict(name, "an answer not on the list", e.solution)


def test_an_unanswered_exercise_lets_the_lab_go_on_except_in_strict_mode(monkeypatch, capsys):
    name = IMPLEMENT[0]

    def blank(*args, **kwargs):
        raise NotImplementedError("your code here")

    monkeypatch.delenv(ex.STRICT_ENV, raising=False)
    assert ex.check(name, blank) is False
    assert "not answered yet" in capsys.readouterr().out
    assert ex.predict(PREDICT[0], ..., ALL[PREDICT[0]].solution) is False
    monkeypatch.setenv(ex.STRICT_ENV, "1")
    with pytest.raises(ex.ExerciseFailed, match="not answered"):
        ex.check(name, blank)
    with pytest.raises(ex.ExerciseFailed, match="not answered"):
        ex.predict(PREDICT[0], ..., ALL[PREDICT[0]].solution)


def test_clear_errors_for_a_wrong_call():
    with pytest.raises(KeyError, match="no exercise named"):
        ex.check("99.nothing", lambda: 0)
    with pytest.raises(TypeError, match="pass your function itself"):
        ex.check(IMPLEMENT[0], 3.0)
    with pytest.raises(ValueError, match="predict exercise"):
        ex.check(PREDICT[0], lambda: 0)
    with pytest.raises(ValueError, match="not one of the choices"):
        ex.predict(PREDICT[0], ALL[PREDICT[0]].solution, "no such outcome")


def test_every_lab_has_exercises_and_uses_each_of_its_own():
    used = {p.name[:2]: _code(p) for p in LABS}
    for name, e in ALL.items():
        assert e.lab in used, f"{name}: there is no lab {e.lab}"
        call = "ex.check(" if e.kind == "implement" else "ex.predict("
        assert f'{call}"{name}"' in used[e.lab], f"{name} is registered but lab {e.lab} never calls {call}\"{name}\""
    missing = {lab: sum(e.lab == lab for e in ALL.values()) for lab in used}
    missing = {lab: n for lab, n in missing.items() if n < 2}
    assert not missing, f"labs with fewer than two exercises: {missing}"


def test_a_lab_checks_every_exercise_it_calls_and_has_its_solutions_collapsed():
    for path in LABS:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if student.has_solution(cell):
                assert cell["metadata"].get("jupyter", {}).get("source_hidden"), \
                    f"{path.name}: a cell with a solution is not collapsed (run python -m distill_lab.exercises.student)"


@pytest.mark.parametrize("path", student.lab_paths(ROOT / "labs"), ids=lambda p: p.name[:2])
def test_student_version_is_up_to_date_blank_and_fills_back_into_the_lab(path):
    nb = json.loads(path.read_text())
    committed = ROOT / "labs" / "student" / path.name
    assert committed.exists(), f"no student version of {path.name}: run python -m distill_lab.exercises.student"
    made = student.make_student(nb, path.name)
    assert committed.read_text() == student._dump(made), f"{committed.name} is stale: regenerate it"
    text = "\n".join("".join(c["source"]) for c in made["cells"])
    assert student.BEGIN in text or "# your answer" in text
    for block in (s for sols in student.solutions_of(nb) for s in sols if "\n" in s):  # (one-line answers are blanked by split)
        assert block.strip() not in text, f"{path.name}: a solution is still visible in the student version"
    filled = student.fill(made, student.solutions_of(nb, path.name), path.name)
    assert [c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in filled["cells"]
            if c["cell_type"] == "code"] == ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_split_and_join_invert_each_other_and_refuse_broken_markers():
    code = ("def f(x):\n    '''doc'''\n    # BEGIN SOLUTION\n    y = x + 1\n    return y\n    # END SOLUTION\n"
            "answer = 'midpoint'  # SOLUTION\n")
    blank, sols = student.split(code)
    assert sols == ["    y = x + 1\n    return y\n", "'midpoint'"]
    assert "x + 1" not in blank and "midpoint" not in blank and "raise NotImplementedError" in blank
    assert "answer = ...  # your answer" in blank
    assert student.join(blank, sols) == code
    ns = {}
    exec(blank, ns)
    with pytest.raises(NotImplementedError):
        ns["f"](1)
    assert ns["answer"] is ...
    for broken in ("# BEGIN SOLUTION\nx = 1\n", "x = 1\n# END SOLUTION\n", "f(x)  # SOLUTION\n"):
        with pytest.raises(ValueError):
            student.split(broken)
