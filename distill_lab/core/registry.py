"""The one registry of recipes: every method of every track, with its track, family, paper and NFEs.

A *recipe* trains a student with one method on one kind of experiment. Its signature is the one its
track's experiment contract gives (:mod:`distill_lab.core.experiment`):

* step distillation (tracks ``toy2d``, ``cifar-gen``): ``train(exp, **overrides) -> student``, a
  student with ``sample(z, nfe)``, written against :class:`~distill_lab.core.experiment.StepExperiment`;
* knowledge distillation (track ``cifar``): ``train(exp, seed, **options) -> (model, extra)``, written
  against :class:`~distill_lab.core.experiment.KDExperiment`.

Register one with the decorator, beside the code it runs::

    @recipe("dmd", tracks=("toy2d", "cifar-gen"), family="distribution matching", nfes=(1,),
            paper="Yin et al. 2024, DMD")
    def train_dmd(exp, steps=None): ...

**Recipes register when their package is imported**, never because the registry reaches for them:
this module imports no track and no method. Importing a track package (``distill_lab.toy2d``,
``distill_lab.cifar``) imports the methods it runs, which fills the registry; the command line
imports every track.

**Per-experiment budgets.** A recipe's defaults (steps, batch...) are written for the toy track,
through ``exp.scale.pick(...)``. An experiment whose samples cost far more (an image U-Net instead
of an MLP on 2D points) may carry ``exp.recipe_defaults = {name: {option: value}}``: the decorated
recipe then runs as ``train(exp, **{**exp.recipe_defaults[name], **overrides})``, so the experiment
supplies defaults and anything the caller passes still wins. Only the numbers change, never the
code path; an experiment without the attribute is unaffected.
:class:`~distill_lab.cifar.flow_experiment.CifarFlow` takes them from its ``ImageScale.recipes``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Recipe:
    """One registered method.

    ``tracks``: the bench tracks it has a row on. ``nfes``: the sampling steps a step-distillation
    student is evaluated at (empty for classifiers). ``metric``: what the bench reports when it is not
    the track's own metric (``"acc"`` or ``"probe_acc"`` on the KD track). ``options``: the options the
    bench runs it with (part of a cached run's key). ``build(exp, **options)``: the untrained network,
    when it is not the experiment's plain student (to reload a cached run). ``baseline``: the row
    every other row of its track is measured against (it appears in their ``baseline`` column).
    """

    name: str
    tracks: tuple[str, ...]
    family: str
    paper: str
    train: Callable
    nfes: tuple[int, ...] = ()
    metric: str = ""
    options: dict = field(default_factory=dict)
    build: Callable | None = None
    baseline: bool = False


RECIPES: dict[str, Recipe] = {}


def recipe(name: str, *, tracks: tuple[str, ...], family: str, paper: str, nfes: tuple[int, ...] = (),
           metric: str = "", options: dict | None = None, build: Callable | None = None,
           baseline: bool = False):
    """Register the decorated ``train`` function under ``name`` (wrapped to apply the experiment's
    ``recipe_defaults``, see the module docstring) and return the wrapped function."""
    if not tracks or isinstance(tracks, str):
        raise ValueError(f"recipe {name!r}: tracks must be a non-empty tuple of track names, got {tracks!r}")
    if not paper:
        raise ValueError(f"recipe {name!r} names no paper; say where the method comes from")

    def deco(fn):
        if name in RECIPES:
            raise ValueError(f"recipe {name!r} is registered twice")

        @functools.wraps(fn)
        def train(exp, *args, **overrides):
            defaults = dict((getattr(exp, "recipe_defaults", None) or {}).get(name, {}))
            if args:  # ``steps`` given positionally wins over the experiment's default
                defaults.pop("steps", None)
            return fn(exp, *args, **{**defaults, **overrides})

        RECIPES[name] = Recipe(name, tuple(tracks), family, paper, train, tuple(nfes), metric,
                               dict(options or {}), build, baseline)
        return train

    return deco


def with_options(overrides: dict, name: str, **defaults) -> dict:
    """A recipe's options: ``defaults`` updated by ``overrides``; an option the recipe does not know
    raises ``ValueError`` naming the ones it does (a misspelt option never passes silently)."""
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {name}; known: {sorted(defaults)}")
    return {**defaults, **overrides}


def recipes(track: str | None = None) -> list[Recipe]:
    """Every registered recipe (of ``track``, when given), in the order they were registered."""
    return [r for r in RECIPES.values() if track is None or track in r.tracks]


def get_recipe(name: str, track: str | None = None) -> Recipe:
    """The recipe called ``name`` (on ``track``, when given). An unknown name raises ``ValueError``
    listing the known ones, and saying which package to import when none is registered yet."""
    known = [r.name for r in recipes(track)]
    if name not in known:
        where = f" on track {track!r}" if track else ""
        if not known:
            raise ValueError(f"unknown method {name!r}: no recipe is registered{where} yet. Recipes register "
                             "when their track is imported: `import distill_lab.toy2d` (step distillation) "
                             "or `import distill_lab.cifar` (knowledge distillation)")
        raise ValueError(f"unknown method {name!r}{where}; known methods: {', '.join(known)}")
    return RECIPES[name]
