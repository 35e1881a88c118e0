"""Exercises with checkers: what a student writes in a lab, and how it is judged.

Two kinds, both registered here by the track modules (:mod:`.step`, :mod:`.step_advanced`, :mod:`.kd`,
:mod:`.images`, :mod:`.video`, :mod:`.llm`) and named ``"<lab>.<short name>"``:

* **implement**: a 5-to-10-line function, the lab's central one (the interpolant's velocity, the
  progressive target, the T^2 factor, ...). :func:`check` hands it to the exercise's checker, which runs
  it on the same closed-form cases the package's unit tests use and compares with the answer known on
  paper. Each exercise also carries its solution and a few plausible wrong answers (a flipped sign, a
  missing stop-gradient, a wrong reduction); ``tests/test_exercises.py`` proves the checker passes the
  first and fails every one of the others.
* **predict**: a question asked *before* the lab runs the experiment that answers it. The student
  writes an answer from a fixed list of choices; :func:`predict` compares it with what the run measured
  and prints why.

In a lab, the solution sits between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` (or on a line that ends
in ``# SOLUTION``); ``python -m distill_lab.exercises.student`` writes the student versions in
``labs/student/`` with those parts blanked (:mod:`.student`).

What happens on each outcome:

=====================  =======================================  ==================================
outcome                 for a student                            under ``DISTILL_LAB_STRICT=1`` (CI)
=====================  =======================================  ==================================
right                   prints a ✓ line, returns True            the same
not attempted yet       prints what to do, returns False;        raises :class:`ExerciseFailed`
                        the lab goes on with the package's code
wrong implementation    raises :class:`ExerciseFailed` saying    raises
                        what differs and by how much
wrong prediction        prints ✗ with the measured answer        raises
=====================  =======================================  ==================================
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

STRICT_ENV = "DISTILL_LAB_STRICT"
# the modules whose import registers exercises (a new track adds its module here): step (labs 00-03),
# step_advanced (04-06), kd (10-13), images (20-23), video (30-34), llm (40-44, 46), dlm (45), world (35),
# av (36), mcm and video_ssl (37)
TRACK_MODULES = ("step", "step_advanced", "kd", "images", "video", "llm", "dlm", "mcm", "video_ssl", "av", "world")


class ExerciseFailed(AssertionError):
    """An answer that the checker rejected (or, in strict mode, an unanswered exercise)."""


@dataclass
class Exercise:
    """One exercise of one lab.

    ``checker(answer)`` raises :class:`AssertionError` with a message a student can act on when the
    answer is wrong, and returns a one-line summary of what it verified when it is right (implement
    exercises). For predict exercises, ``choices`` lists the allowed answers and there is no checker.
    ``solution`` and ``wrong`` (name -> answer) exist for the tests.
    """

    name: str
    title: str
    kind: str  # "implement" or "predict"
    checker: Callable[[Any], str] | None = None
    choices: tuple = ()
    solution: Any = None
    wrong: dict = field(default_factory=dict)

    @property
    def lab(self) -> str:
        return self.name.split(".", 1)[0]


EXERCISES: dict[str, Exercise] = {}


def _register(ex: Exercise) -> Exercise:
    if ex.name in EXERCISES:
        raise ValueError(f"exercise {ex.name!r} is registered twice")
    lab, _, short = ex.name.partition(".")
    if not (lab.isdigit() and len(lab) == 2 and short):
        raise ValueError(f"exercise names are '<two-digit lab>.<name>', e.g. '01.velocity'; got {ex.name!r}")
    EXERCISES[ex.name] = ex
    return ex


def implement(name: str, title: str, *, solution: Callable, wrong: dict[str, Callable]):
    """Decorator: register ``checker`` as the checker of implement exercise ``name``.

    ``solution`` is a right answer and ``wrong`` maps a description of a mistake to an answer that makes
    it; the checker must accept the first and reject each of the others (``tests/test_exercises.py``).
    """

    def deco(checker: Callable[[Callable], str]) -> Callable[[Callable], str]:
        _register(Exercise(name, title, "implement", checker=checker, solution=solution, wrong=dict(wrong)))
        return checker

    return deco


def prediction(name: str, title: str, choices: tuple, *, solution: Any) -> Exercise:
    """Register predict exercise ``name``: a question with a fixed list of ``choices``.

    ``solution`` is the answer the lab's argument gives (the run may still disagree, which then fails
    the lab in CI: a claim that did not hold)."""
    if solution not in choices:
        raise ValueError(f"{name}: the solution {solution!r} is not one of the choices {choices}")
    return _register(Exercise(name, title, "predict", choices=tuple(choices), solution=solution))


def compare(got, want, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise :class:`AssertionError` saying how ``got`` differs from ``want`` (tensors or numbers).

    The message names ``what`` was compared, the shapes when they differ, and the largest difference
    with where it occurs, so a student can tell a sign error from a missing factor."""
    import torch

    if not isinstance(got, torch.Tensor):
        if isinstance(want, torch.Tensor) and not isinstance(got, (int, float)):
            raise AssertionError(f"{what}: expected a tensor of shape {tuple(want.shape)}, got {type(got).__name__}")
        got = torch.as_tensor(got, dtype=torch.float64)
    want = torch.as_tensor(want)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}")
    got, want = got.detach().double(), want.detach().double()
    if not torch.isfinite(got).all():
        raise AssertionError(f"{what}: your result has NaN or inf values")
    diff = (got - want).abs()
    bad = diff > atol + rtol * want.abs()
    if bad.any():
        i = int(diff.flatten().argmax())
        ratio = (got.flatten()[i] / want.flatten()[i]).item() if want.flatten()[i] != 0 else float("nan")
        raise AssertionError(f"{what}: {int(bad.sum())} of {want.numel()} values differ; the largest gap is "
                             f"{diff.flatten()[i]:.4g} (yours {got.flatten()[i]:.4g}, expected "
                             f"{want.flatten()[i]:.4g}, ratio {ratio:.3g})")


def compare_loss(mine, ref, mine_leaf, ref_leaf, what: str, frozen=None, frozen_message: str = "") -> None:
    """Compare a student's loss ``mine`` with the package's ``ref`` in value and in the gradient to the student
    logits each was computed from (``mine_leaf``, ``ref_leaf``, both leaves requiring grad), ``what`` naming the
    case; with ``frozen`` (the teacher's logits as a leaf that requires grad), raise ``frozen_message`` when the
    loss sends it any gradient (a missing stop-gradient)."""
    compare(mine, ref, f"the loss {what}")
    mine.backward()
    ref.backward()
    compare(mine_leaf.grad, ref_leaf.grad, f"the gradient to the student's logits {what}")
    if frozen is not None and frozen.grad is not None and float(frozen.grad.abs().max()) > 0:
        raise AssertionError(frozen_message)


def load_all() -> dict[str, Exercise]:
    """Import every track's exercise module, so :data:`EXERCISES` holds them all."""
    for mod in TRACK_MODULES:
        importlib.import_module(f"{__name__}.{mod}")
    return EXERCISES


def get(name: str) -> Exercise:
    if name not in EXERCISES:
        load_all()
    if name not in EXERCISES:
        labs = sorted({e.lab for e in EXERCISES.values()})
        raise KeyError(f"no exercise named {name!r}; exercises exist for labs {', '.join(labs)} "
                       f"(distill_lab.exercises.EXERCISES lists them)")
    return EXERCISES[name]


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def _not_attempted(ex: Exercise, what: str) -> bool:
    msg = (f"·  {ex.name} ({ex.title}): not answered yet. {what} The lab goes on with the package's "
           f"own version.")
    if strict():
        raise ExerciseFailed(msg + f" (${STRICT_ENV} is set, so an unanswered exercise is an error.)")
    print(msg)
    return False


def check(name: str, answer: Callable) -> bool:
    """Check an implement exercise: run the exercise's checker on the student's function.

    Returns True (and prints a ✓ line with what was verified) when the answer is right; raises
    :class:`ExerciseFailed` with what differs when it is wrong; returns False when the function still
    raises ``NotImplementedError`` (the student version's blank), unless strict mode is on.
    """
    ex = get(name)
    if ex.kind != "implement":
        raise ValueError(f"{name} is a predict exercise: use distill_lab.exercises.predict(name, answer, measured)")
    if not callable(answer):
        raise TypeError(f"{name}: pass your function itself (check({name!r}, my_function)), not {type(answer).__name__}")
    try:
        summary = ex.checker(answer)
    except NotImplementedError:
        return _not_attempted(ex, "Replace the `raise NotImplementedError` line with your code and run the cell again.")
    except AssertionError as err:
        raise ExerciseFailed(f"✗  {ex.name} ({ex.title}): {err}") from None
    print(f"✓  {ex.name} ({ex.title}): {summary}")
    return True


def predict(name: str, answer: Any, measured: Any, why: str = "") -> bool:
    """Compare a prediction with what the run measured; print ✓ or ✗ with ``why``.

    ``answer`` is what the student wrote before the experiment ran (``...`` while unanswered);
    ``measured`` is the choice the run's numbers give. A wrong prediction is part of learning: it prints,
    and raises only in strict mode (where it means the lab's own claim failed).
    """
    ex = get(name)
    if ex.kind != "predict":
        raise ValueError(f"{name} is an implement exercise: use distill_lab.exercises.check(name, function)")
    if measured not in ex.choices:
        raise ValueError(f"{name}: the measured outcome {measured!r} is not one of the choices {ex.choices}")
    if answer is ...:
        return _not_attempted(ex, f"Write one of {ex.choices} before running the experiment.")
    if answer not in ex.choices:
        raise ValueError(f"{name}: answer with one of {ex.choices}; got {answer!r}")
    tail = f" {why}" if why else ""
    if answer == measured:
        print(f"✓  {ex.name} ({ex.title}): you predicted {answer!r}, and the run measured it.{tail}")
        return True
    msg = f"✗  {ex.name} ({ex.title}): you predicted {answer!r}; the run measured {measured!r}.{tail}"
    if strict():
        raise ExerciseFailed(msg)
    print(msg)
    return False


__all__ = ["EXERCISES", "Exercise", "ExerciseFailed", "check", "compare", "get", "implement", "load_all", "predict",
           "prediction", "strict"]
