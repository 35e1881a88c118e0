"""The registry of step-distillation recipes that the bench, the tour and the labs run.

A *recipe* is a function ``train(exp, **overrides) -> student`` that distils ``exp``'s teacher into a
student with a ``sample(z, nfe)`` method. It is written against the experiment interface that
:class:`distill_lab.experiment.Toy2D` provides (``exp.velocity``, ``exp.teacher``,
``exp.student_net``, ``exp.new_net``, ``exp.data_batch``, ``exp.noise_batch``, ``exp.scale``,
``exp.device``, ``exp.fit``), so the same recipe can run on any experiment that offers it.

Register one with the decorator::

    @recipe("dmd", family="distribution matching", nfes=(1,), paper="Yin et al. 2024, DMD")
    def train_dmd(exp, steps=None): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str
    train: Callable
    nfes: tuple[int, ...]
    paper: str


RECIPES: dict[str, Recipe] = {}


def recipe(name: str, family: str, nfes: tuple[int, ...] = (1,), paper: str = ""):
    """Register ``train(exp, **overrides) -> student`` under ``name``."""

    def deco(fn):
        if name in RECIPES:
            raise ValueError(f"recipe {name!r} is registered twice")
        RECIPES[name] = Recipe(name, family, fn, tuple(nfes), paper)
        return fn

    return deco


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    from . import methods  # noqa: F401  (importing registers every recipe)

    if name not in RECIPES:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(RECIPES)}")
    return RECIPES[name]


def all_recipes() -> list[Recipe]:
    from . import methods  # noqa: F401

    return list(RECIPES.values())
