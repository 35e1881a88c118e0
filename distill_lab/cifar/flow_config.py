"""What changes with the scale on the CIFAR-10 image-generation track, and the images at that scale.

:class:`ImageScale` holds every number of the track at one scale (resolution, the teacher's U-Net and
training, the students' batch and budgets, the evaluation's sample size), :data:`IMAGE_SCALES` one a
scale, :func:`image_scale` the one in use (with the ``"attn"`` variant of the architecture-distillation
section). :func:`build_unet` makes the scale's U-Net, :func:`load_flow_data` the images in ``[-1, 1]``
at the scale's resolution, :func:`default_teacher_dir` says which committed teacher a scale loads and
:func:`own_teacher_dir` where the scale's own teacher is written.
Numbers only: the code path is the same at every scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.checkpoints import TEACHERS_DIR, committed_teacher
from ..core.scale import Scale, get_scale
from ..nets.unet import TimeUNet
from .data import load_cifar10


@dataclass(frozen=True)
class ImageScale:
    """Everything that changes with the scale on the image track (numbers only, never the code path).

    ``resolution`` is the image side; ``unet`` the :class:`~distill_lab.nets.unet.TimeUNet` keyword
    arguments of the teacher (students copy it); ``teacher_*`` the flow-matching run of
    :mod:`distill_lab.cifar.flow_teacher`; ``batch`` the recipes' batch (``exp.scale.batch``);
    ``eval_n`` the generated and real images of one Fréchet distance; ``teacher_nfe`` and
    ``teacher_method`` the reference ODE solution behind ``teacher_sample`` and the coupled error.
    ``recipes`` maps a registered recipe's name to the options it defaults to on this track
    (``exp.recipe_defaults``, applied by :func:`distill_lab.core.registry.recipe`; a caller's overrides
    still win): the few recipes whose toy-track batch (hundreds of 2D points, several critic updates)
    would cost a U-Net many times its budget get the image batch instead. Numbers only.
    ``attn_unet`` holds the U-Net options that turn the scale's teacher into the *attention* teacher
    of the architecture-distillation section (variant ``"attn"``: softmax self-attention over every
    pixel of the first level, see :func:`image_scale`); everything else of its training is the same.
    """

    resolution: int
    unet: dict
    teacher_steps: int
    teacher_batch: int
    teacher_lr: float
    teacher_ema: float
    batch: int
    student_steps: int
    eval_n: int
    teacher_nfe: int
    teacher_method: str = "midpoint"
    classes: tuple[int, ...] | None = None  # None: all ten
    notes: str = field(default="", compare=False)
    recipes: dict = field(default_factory=dict, compare=False)
    attn_unet: dict = field(default_factory=dict, compare=False)


def _image_budgets(batch: int, ci: bool = False) -> dict:
    """Per-recipe defaults on the image track (see :attr:`ImageScale.recipes`).

    The toy recipes pick their own batch at ``ci`` (``progressive`` 512, ``dmd``/``dmd2`` 256 with 5
    critic updates a step, ``rcm`` 512): on 16 x 16 images with a U-Net each of these costs 15 to 35
    minutes of one CPU thread. Here they use the image batch; at ``ci`` DMD and DMD2 make 2 critic
    updates a step and rCM 400 steps (measured on one thread at ci: about 0.2 s and 0.45 s a step).
    """
    out = {"progressive": dict(batch=batch), "dmd": dict(batch=batch), "dmd2": dict(batch=batch),
           "rcm": dict(batch=batch)}
    if ci:
        out["dmd"]["critic_updates"] = out["dmd2"]["critic_updates"] = 2
        out["rcm"]["steps"] = 400
    return out


IMAGE_SCALES = {
    # ~10 minutes of one CPU thread for the teacher; a 0.9 MB fp16 checkpoint.
    "ci": ImageScale(resolution=16, unet=dict(base=16, mults=(1, 2, 4), blocks=1), teacher_steps=10000,
                     teacher_batch=64, teacher_lr=2e-3, teacher_ema=0.999, batch=64, student_steps=800,
                     eval_n=1000, teacher_nfe=32, recipes=_image_budgets(64, ci=True),
                     notes="16x16 (2x2 average pooling), all classes, one CPU thread",
                     attn_unet=dict(attn_levels=(0,))),
    # a laptop: the real resolution, a teacher of an hour or so on a few cores.
    "default": ImageScale(resolution=32, unet=dict(base=32, mults=(1, 2, 2), blocks=1), teacher_steps=30000,
                          teacher_batch=64, teacher_lr=1e-3, teacher_ema=0.9995, batch=64, student_steps=4000,
                          eval_n=2000, teacher_nfe=64, recipes=_image_budgets(64),
                          notes="32x32, all classes", attn_unet=dict(attn_levels=(0,), heads=1)),
    # one H100: a wider, deeper U-Net with attention at 8x8.
    "gpu": ImageScale(resolution=32, unet=dict(base=64, mults=(1, 2, 2), blocks=2, attention=True),
                      teacher_steps=60000, teacher_batch=256, teacher_lr=5e-4, teacher_ema=0.9999, batch=256,
                      student_steps=20000, eval_n=10000, teacher_nfe=64, recipes=_image_budgets(256),
                      notes="32x32, all classes, one GPU", attn_unet=dict(attn_levels=(0, 1), heads=2)),
}


TEACHER_VARIANTS = ("", "attn")


def check_variant(variant: str | None) -> str:
    variant = variant or ""
    if variant not in TEACHER_VARIANTS:
        raise ValueError(f"unknown teacher variant {variant!r}; choose '' (the step-distillation teacher) "
                         f"or 'attn' (the softmax-attention teacher of the architecture section)")
    return variant


def image_scale(scale: str | Scale | None = None, variant: str | None = None) -> ImageScale:
    """The :class:`ImageScale` of a scale name (or ``$DISTILL_LAB_SCALE``).

    ``variant="attn"``: the same scale with ``unet`` updated by ``attn_unet`` (the softmax-attention
    teacher of :mod:`distill_lab.methods.arch`); ``None`` or ``""``: the step-distillation teacher.
    """
    return with_variant(IMAGE_SCALES[get_scale(scale).name], variant)


def with_variant(isc: ImageScale, variant: str | None) -> ImageScale:
    if check_variant(variant) == "attn":
        isc = replace(isc, unet={**isc.unet, **isc.attn_unet}, attn_unet={})
    return isc


def image_scale_dict(isc: ImageScale) -> dict:
    """A JSON-able copy of an :class:`ImageScale` (for manifests)."""
    d = asdict(isc)
    d.pop("recipes", None)  # the students' budgets are no part of the teacher's manifest
    d.pop("attn_unet", None)  # the teacher's own U-Net is in "unet"
    d["unet"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["unet"].items()}
    d["classes"] = list(d["classes"]) if d["classes"] is not None else None
    return d


def _folder_name(variant: str | None):
    v = check_variant(variant)
    return lambda scale_name: f"cifar10_flow_{v + '_' if v else ''}{scale_name}"


def own_teacher_dir(scale: str | Scale | None = None, variant: str | None = None) -> Path:
    """``datasets/teachers/cifar10_flow_<scale>`` (or ``cifar10_flow_attn_<scale>`` for the ``"attn"``
    variant): the scale's own teacher folder, where ``python -m distill_lab.cifar.teachers flow`` writes."""
    return TEACHERS_DIR / _folder_name(variant)(get_scale(scale).name)


def teacher_for(scale: str | Scale | None = None, variant: str | None = None) -> tuple[str, Path]:
    """``(scale name, folder)`` of the flow teacher a scale loads: its own folder when committed, else
    the committed ``ci`` teacher with a printed notice (the image track then runs at ``ci``'s settings,
    which that teacher fixes: 16 x 16 images, its U-Net, the budgets measured with it), unless
    ``$DISTILL_LAB_TRAIN_TEACHERS=1`` asks to train the scale's own
    (:func:`distill_lab.core.checkpoints.committed_teacher`)."""
    v = check_variant(variant)
    name = get_scale(scale).name
    command = f"python -m distill_lab.cifar.teachers flow --scale {name}" + (f" --variant {v}" if v else "")
    what = "CIFAR-10 flow teacher" + (f" ({v})" if v else "")
    return committed_teacher(TEACHERS_DIR, _folder_name(v), name, what, command,
                             "the image track runs at its ci settings (16 x 16 images)")


def default_teacher_dir(scale: str | Scale | None = None, variant: str | None = None) -> Path:
    """The folder of the flow teacher a scale loads (:func:`teacher_for`): ``cifar10_flow_<scale>``
    (``cifar10_flow_attn_<scale>`` for the ``"attn"`` variant) under ``datasets/teachers`` when that
    scale's teacher is committed, else the ``ci`` one."""
    return teacher_for(scale, variant)[1]


def build_unet(isc: ImageScale, n_times: int = 1) -> TimeUNet:
    """The scale's U-Net, three channels, ``n_times`` time inputs."""
    return TimeUNet(channels=3, n_times=n_times, **isc.unet)


def to_flow_images(x_uint8: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 ``[N, 3, 32, 32]`` -> float ``[N, 3, R, R]`` in ``[-1, 1]``: ``pixel / 127.5 - 1``, then
    average pooling over ``(32 / R) x (32 / R)`` blocks when ``R < 32`` (area downsampling)."""
    x = x_uint8.float() / 127.5 - 1
    side = x.shape[-1]
    if resolution != side:
        if side % resolution:
            raise ValueError(f"cannot area-downsample {side}x{side} images to {resolution}x{resolution}")
        x = F.avg_pool2d(x, side // resolution)
    return x.contiguous()


def load_flow_data(isc: ImageScale, data: dict | None = None) -> dict:
    """``{"train": [N, 3, R, R], "test": [M, 3, R, R]}`` float images of the scale (class subset applied)."""
    if data is None:
        data = load_cifar10(verbose=False)
    out = {}
    for split in ("train", "test"):
        x, y = data[f"{split}_x"], data[f"{split}_y"]
        if isc.classes is not None:
            keep = torch.isin(y, torch.tensor(isc.classes))
            x = x[keep]
        out[split] = to_flow_images(x, isc.resolution)
    return out
