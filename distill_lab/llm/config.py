"""What changes with the scale on the LLM track (numbers only, never the code path).

:class:`TaskScale` sizes one task: its problems, the teacher's and the student's GPTs, the teacher's
training and the students' budget; :data:`LLM_SCALES` holds them a scale and a task;
:func:`llm_scale` returns the one in use; :func:`default_teacher_dir` says which committed teacher a
scale loads, :func:`own_teacher_dir` where its own is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.checkpoints import TEACHERS_DIR, committed_teacher
from ..core.scale import Scale, get_scale
from .tasks import TASKS


@dataclass(frozen=True)
class NetSize:
    """The shape of a tiny GPT (the vocabulary and context length come from the task)."""

    n_layer: int
    n_head: int
    n_embd: int


@dataclass(frozen=True)
class TaskScale:
    """Everything the LLM track sizes by the scale, for one task.

    ``task_kwargs``: the task's sizes (digits, graph degree and arm length, list length). ``teacher``
    and ``student``: the two GPTs. ``teacher_*``: the supervised run of :mod:`distill_lab.llm.teacher`
    (AdamW, warm-up then cosine). ``student_steps`` x ``batch`` sequences is every student's budget
    (the data-only baseline's too); ``student_lr`` its learning rate; ``eval_n`` held-out problems.
    ``warm_steps``: supervised steps on the data every student starts from (GKD's students start from
    a supervised fine-tuned checkpoint), shared by all methods of a seed and outside the budget.
    """

    task_kwargs: dict
    teacher: NetSize
    student: NetSize
    teacher_steps: int
    teacher_batch: int
    teacher_lr: float
    student_steps: int
    batch: int
    student_lr: float
    eval_n: int
    warm_steps: int = 0
    notes: str = field(default="", compare=False)


T4 = NetSize(n_layer=4, n_head=4, n_embd=128)
_CI = {
    # 3-digit by 3-digit products with the chain: a 4-layer teacher of 0.8 M parameters, a 2-layer
    # student of 0.1 M. (A teacher trained on both chains, half a batch each, 4,000 steps, 1,115 s on one
    # thread, reached 1.2%: it never learned one column's carry; one chain, 64 a batch, learns.)
    # Students start from 900 supervised steps (about 18% exact match): from 300 (0%) the on-policy
    # students sampled chains too broken for the teacher's grades to teach anything (1.2%, seed 0).
    "mult": TaskScale({"digits_a": 3, "digits_b": 3}, T4, NetSize(2, 2, 64), teacher_steps=3000,
                      teacher_batch=64, teacher_lr=2e-3, student_steps=600, batch=32, student_lr=2e-3, eval_n=256,
                      warm_steps=900),
    "star": TaskScale({"degree": 2, "length": 3}, NetSize(3, 4, 96), NetSize(2, 2, 64), teacher_steps=1500,
                      teacher_batch=64, teacher_lr=2e-3, student_steps=600, batch=32, student_lr=2e-3, eval_n=256,
                      warm_steps=300),
    # a one-layer student 16 wide: at 32 wide a data-only student already sorts 98% of the lists
    # (the teacher script's manifest), so the gap would be too small to distil
    "sort": TaskScale({"n": 10}, T4, NetSize(1, 2, 16), teacher_steps=1500, teacher_batch=64, teacher_lr=2e-3,
                      student_steps=600, batch=32, student_lr=2e-3, eval_n=256,
                      warm_steps=300),
}
_CI["mult_short"] = _CI["mult"]

LLM_SCALES = {
    "ci": _CI,
    "default": {k: TaskScale(**{**asdict(v), "teacher": v.teacher, "student": v.student,
                                "student_steps": 2 * v.student_steps, "eval_n": 1024})
                for k, v in _CI.items()},
    "gpu": {k: TaskScale(**{**asdict(v), "teacher": NetSize(6, 8, 256), "student": v.student,
                            "teacher_steps": 4 * v.teacher_steps, "teacher_batch": 256,
                            "student_steps": 4 * v.student_steps, "batch": 128, "eval_n": 2048})
            for k, v in _CI.items()},
}


def llm_scale(task: str, scale: str | Scale | None = None) -> TaskScale:
    """The :class:`TaskScale` of ``task`` at a scale (or ``$DISTILL_LAB_SCALE``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return LLM_SCALES[get_scale(scale).name][task]


def teacher_task(task: str) -> str:
    """The task whose teacher serves ``task`` (``mult_short`` is written by the ``mult`` teacher)."""
    return "mult" if task == "mult_short" else task


def own_teacher_dir(task: str, scale: str | Scale | None = None) -> Path:
    """``datasets/teachers/llm_<task>_<scale>``: the scale's own teacher of a task, where
    ``python -m distill_lab.llm.teacher`` writes."""
    return TEACHERS_DIR / f"llm_{teacher_task(task)}_{get_scale(scale).name}"


def teacher_for(task: str, scale: str | Scale | None = None) -> tuple[str, Path]:
    """``(scale name, folder)`` of the teacher a scale loads for ``task``: its own when committed, else
    the committed ``ci`` one with a printed notice (the tasks are the same at every scale, so the
    students keep the scale's budgets), unless ``$DISTILL_LAB_TRAIN_TEACHERS=1`` asks to train the
    scale's own (:func:`distill_lab.core.checkpoints.committed_teacher`)."""
    name, t = get_scale(scale).name, teacher_task(task)
    return committed_teacher(TEACHERS_DIR, lambda s: f"llm_{t}_{s}", name, f"LLM teacher of {t}",
                             f"python -m distill_lab.llm.teacher --task {t} --scale {name}",
                             f"the students keep the {name} scale's sizes and budgets")


def default_teacher_dir(task: str, scale: str | Scale | None = None) -> Path:
    """The folder of the teacher a scale loads for ``task`` (:func:`teacher_for`):
    ``datasets/teachers/llm_<task>_<scale>`` when committed, else the ``ci`` one."""
    return teacher_for(task, scale)[1]
