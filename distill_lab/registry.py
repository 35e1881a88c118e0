"""The registry of step-distillation recipes that the bench, the tour and the labs run.

A *recipe* is a function ``train(exp, **overrides) -> student`` that distils ``exp``'s teacher into a
student with a ``sample(z, nfe)`` method. It is written against the experiment interface that
:class:`distill_lab.experiment.Toy2D` provides (``exp.velocity``, ``exp.teacher``,
``exp.student_net``, ``exp.new_net``, ``exp.data_batch``, ``exp.noise_batch``, ``exp.scale``,
``exp.device``, ``exp.fit``), so the same recipe can run on any experiment that offers it.

Register one with the decorator::

    @recipe("dmd", family="distribution matching", nfes=(1,), paper="Yin et al. 2024, DMD")
    def train_dmd(exp, steps=None): ...

**Per-experiment budgets.** A recipe's defaults (steps, batch...) are written for the toy track,
through ``exp.scale.pick(...)``. An experiment whose samples cost far more (an image U-Net instead
of an MLP on 2D points) may carry ``exp.recipe_defaults = {name: {option: value}}``: the decorated
recipe then runs as ``train(exp, **{**exp.recipe_defaults[name], **overrides})``, so the experiment
supplies defaults and anything the caller passes still wins. Only the numbers change, never the
code path; an experiment without the attribute (:class:`~distill_lab.experiment.Toy2D`) is
unaffected. :class:`~distill_lab.image_flow.CifarFlow` takes them from its ``ImageScale.recipes``.
"""

from __future__ import annotations

import functools
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
    """Register ``train(exp, **overrides) -> student`` under ``name`` (wrapped to apply the
    experiment's ``recipe_defaults``, see the module docstring)."""

    def deco(fn):
        if name in RECIPES:
            raise ValueError(f"recipe {name!r} is registered twice")

        @functools.wraps(fn)
        def train(exp, *args, **overrides):
            defaults = dict((getattr(exp, "recipe_defaults", None) or {}).get(name, {}))
            if args:  # ``steps`` given positionally wins over the experiment's default
                defaults.pop("steps", None)
            return fn(exp, *args, **{**defaults, **overrides})

        RECIPES[name] = Recipe(name, family, train, tuple(nfes), paper)
        return train

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
