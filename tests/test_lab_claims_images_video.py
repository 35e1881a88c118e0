"""Identities the image and video labs (20 to 31) used to assert in their cells, kept here as unit tests.

The labs' closing tables hold only claims about what a run measured. What is true by construction (a
training loop calls the shared loss, a recipe is the very function of :mod:`distill_lab.methods`, the
committed teacher is the network its manifest describes and reproduces the curve recorded in it) is
checked here once. The video labs' identities (the detector inverts the renderer, a real frame scores
0, a frozen clip has dynamic degree 0, the video recipes use the shared DMD loss) are in
``tests/test_video.py``.
"""

import inspect
import json

import pytest
import torch

import distill_lab.methods.step.consistency
import distill_lab.methods.step.dmd
import distill_lab.methods.step.flow_map
import distill_lab.methods.step.trajectory
from distill_lab.cifar import flow_teacher
from distill_lab.cifar.flow_config import build_unet, default_teacher_dir, image_scale
from distill_lab.core import flows
from distill_lab.core.registry import get_recipe
from distill_lab.nets.utils import n_params


def test_lab20_the_image_teacher_trains_with_the_shared_flow_matching_loss():
    src = inspect.getsource(flow_teacher.train_flow_teacher)
    assert "loss = flow_matching_loss(model, x1" in src
    assert flow_teacher.flow_matching_loss is flows.flow_matching_loss


@pytest.mark.parametrize("variant", [None, "attn"])
def test_lab20_22_the_committed_ci_teachers_are_the_networks_their_manifests_describe(variant):
    manifest = json.loads((default_teacher_dir("ci", variant) / "manifest.json").read_text())
    assert n_params(build_unet(image_scale("ci", variant))) == manifest["n_params"]


def test_lab20_the_committed_teacher_reproduces_the_curve_in_its_manifest():
    """Same weights, same evaluation noise, same reference images: the same FD (up to summation order)."""
    from distill_lab.cifar.flow_experiment import CifarFlow

    torch.manual_seed(0)
    exp = CifarFlow("ci")
    saved = json.loads((exp.teacher_dir / "manifest.json").read_text())["quality"]["fd_euler"]
    curve = exp.teacher_curve((1, 2), "euler")
    for n, fd in curve.items():
        assert fd == pytest.approx(saved[str(n)], rel=0.02), (n, fd, saved[str(n)])


@pytest.mark.parametrize("name, fn", [
    ("trajectory", distill_lab.methods.step.trajectory.train_trajectory),
    ("progressive", distill_lab.methods.step.trajectory.train_progressive),
    ("cd", distill_lab.methods.step.consistency.train_cd),
    ("lagrangian", distill_lab.methods.step.flow_map.train_lagrangian),
    ("dmd", distill_lab.methods.step.dmd.train_dmd),
])
def test_lab21_the_image_students_use_the_toy_recipes_themselves(name, fn):
    assert get_recipe(name).train is fn
