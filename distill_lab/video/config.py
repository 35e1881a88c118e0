"""What changes with the scale on the streaming-video track (numbers only, never the code path).

:class:`VideoScale` holds the world, the frames, the training horizon and the block size, the
network, the teacher's training, the students' budgets and the evaluation; :data:`VIDEO_SCALES` one
a scale; :func:`video_scale` the one in use; :func:`default_teacher_dir` which committed
teacher a scale loads, :func:`own_teacher_dir` where its own is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.checkpoints import TEACHERS_DIR, committed_teacher
from ..core.scale import Scale, get_scale
from .nets import VideoNetConfig
from .world import World


@dataclass(frozen=True)
class VideoScale:
    """Everything the video track sizes by the scale.

    ``frames``: the training horizon (frames of a training clip); ``block``: frames a streaming
    student generates at once; evaluation rollouts run ``horizon_factor * frames`` frames.
    ``teacher_*``: the flow-matching run of :mod:`distill_lab.video.teacher` (Adam, cosine schedule,
    EMA of the weights); ``teacher_nfe``: Euler steps of the teacher's sampler over a whole clip.
    ``batch``, ``student_steps``: the students' defaults; ``student_nfe``: denoising steps per block of
    the few-step students. ``eval_n``: clips of one evaluation.
    """

    world: World
    net: VideoNetConfig
    frames: int
    block: int
    horizon_factor: int
    teacher_steps: int
    teacher_batch: int
    teacher_lr: float
    teacher_ema: float
    teacher_nfe: int
    batch: int
    student_steps: int
    student_nfe: int
    eval_n: int
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        if self.frames % self.block:
            raise ValueError(f"the block ({self.block} frames) must divide the training clip ({self.frames} frames)")

    @property
    def resolution(self) -> int:
        return self.net.resolution

    @property
    def eval_frames(self) -> int:
        return self.horizon_factor * self.frames


VIDEO_SCALES = {
    # one sprite on 16 x 16 grey frames, clips of 8 frames in blocks of 2; a teacher of about a
    # quarter of an hour on one CPU thread. 8 x 8 patches: in pilots of 7 minutes (one thread, the
    # machine shared) they reached a motion FD of 0.034 against 0.144 for 4 x 4 patches (64 wide, 3 deep)
    "ci": VideoScale(world=World(n_sprites=1), net=VideoNetConfig(resolution=16, patch=8, dim=96, depth=4, heads=4),
                     frames=8, block=2, horizon_factor=4, teacher_steps=8000, teacher_batch=32, teacher_lr=1e-3,
                     teacher_ema=0.999, teacher_nfe=16, batch=16, student_steps=200, student_nfe=2, eval_n=64,
                     notes="16x16, one sprite, one CPU thread"),
    "default": VideoScale(world=World(n_sprites=1), net=VideoNetConfig(resolution=16, patch=8, dim=128, depth=6, heads=4),
                          frames=8, block=2, horizon_factor=4, teacher_steps=12000, teacher_batch=32,
                          teacher_lr=1e-3, teacher_ema=0.999, teacher_nfe=32, batch=32, student_steps=1500,
                          student_nfe=4, eval_n=256, notes="16x16, one sprite, a laptop"),
    "gpu": VideoScale(world=World(n_sprites=2), net=VideoNetConfig(resolution=32, patch=4, dim=192, depth=6, heads=6),
                      frames=16, block=4, horizon_factor=4, teacher_steps=30000, teacher_batch=64, teacher_lr=5e-4,
                      teacher_ema=0.9995, teacher_nfe=32, batch=64, student_steps=5000, student_nfe=4, eval_n=512,
                      notes="32x32, two sprites, one GPU"),
}


def video_scale(scale: str | Scale | None = None) -> VideoScale:
    """The :class:`VideoScale` of a scale name (or ``$DISTILL_LAB_SCALE``)."""
    return VIDEO_SCALES[get_scale(scale).name]


def video_scale_dict(vsc: VideoScale) -> dict:
    """A JSON-able copy of a :class:`VideoScale` (for manifests)."""
    return asdict(vsc)


def _folder_name(scale_name: str) -> str:
    return f"video_{scale_name}"


def own_teacher_dir(scale: str | Scale | None = None) -> Path:
    """``datasets/teachers/video_<scale>``: the scale's own teacher folder, where
    ``python -m distill_lab.video.teacher`` writes."""
    return TEACHERS_DIR / _folder_name(get_scale(scale).name)


def teacher_for(scale: str | Scale | None = None) -> tuple[str, Path]:
    """``(scale name, folder)`` of the video teacher a scale loads: its own when committed, else the
    committed ``ci`` one with a printed notice (the track then runs at ``ci``'s settings, which that
    teacher was trained and measured at), unless ``$DISTILL_LAB_TRAIN_TEACHERS=1`` asks to train the
    scale's own (:func:`distill_lab.core.checkpoints.committed_teacher`)."""
    name = get_scale(scale).name
    return committed_teacher(TEACHERS_DIR, _folder_name, name, "video teacher",
                             f"python -m distill_lab.video.teacher --scale {name}",
                             "the video track runs at its ci settings")


def default_teacher_dir(scale: str | Scale | None = None) -> Path:
    """The folder of the video teacher a scale loads (:func:`teacher_for`): ``datasets/teachers/video_<scale>``
    when that scale's teacher is committed, else the ``ci`` one."""
    return teacher_for(scale)[1]
