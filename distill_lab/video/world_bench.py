"""The bench track of lab 35, ``video_world``: few-step world students of the interactive world's base model.

    python -m distill_lab bench video_world --scale ci --seeds 0 1 2

Each variant of :data:`~distill_lab.video.world_students.VARIANTS` is a recipe; a row is the mean over the seeds,
measured as lab 35 measures it: ``value`` the revisit error of the fixed loop-closed evaluation streamed from
fixed noise (each frame that shows a place again against the frame that first showed it, over the scene's
pixels; lower is better), beside the student with the most recent frames as its memory (the baseline) and the
true frames' revisit error (the floor, zero); also the loop-closure error, the action-following error and the
push gain, the frame error against the world, frames per second and the bytes of the window each student holds,
and the base model's revisit error (16 Euler steps a block, camera-retrieved memory). The students are the
committed ones where a seed's is committed and matches the base model, trained otherwise (the same call,
:func:`~distill_lab.video.world_students.committed_world_students`).
"""

from __future__ import annotations

from ..core.bench import BenchTrack, register_track
from ..core.registry import recipe
from .interactive import MATRIX_GAME, REALCAM, RELIC
from .ssl_bench import ROW_KEYS, format_table, seed_rows

# world_model and world_students are imported where they are used: importing distill_lab.video must not load the
# modules that `python -m distill_lab.video.world_model` and `... .world_students` run as scripts

WORLD_TRACK = ("video_world",)
#: recipe name -> (paper, baseline?)
WORLD_RECIPES = {"recent": ("Huang et al. 2025, Self Forcing (the most recent frames as the memory)", True),
                 "retrieval": (MATRIX_GAME, False), "compressed": (RELIC, False),
                 "retrieval_loop": (REALCAM, False)}
EXTRA = ("loop_closure", "action_following", "push_gain", "frame_error", "frames_per_second", "memory_bytes")


def _world_recipe(name: str, paper: str, baseline: bool):
    @recipe(name, tracks=WORLD_TRACK, family="interactive world model", paper=paper, metric="revisit",
            baseline=baseline)
    def train(exp, seed: int = 0, steps=None):
        """One world student of :data:`~distill_lab.video.world_students.VARIANTS` from the base model
        (:func:`~distill_lab.video.world_students.train_world_student`); ``exp`` a :class:`WorldBench`."""
        import copy

        from . import world_students as ws

        return ws.train_world_student(copy.deepcopy(exp.teacher), exp.wsc, steps=steps, seed=seed,
                                      progress=exp.progress, **ws.VARIANTS[name])
    return train


for _name, (_paper, _base) in WORLD_RECIPES.items():
    _world_recipe(_name, _paper, _base)


class WorldBench:
    """What the track's recipes read: the base model (``teacher``, ``manifest``) and the scale's
    :class:`~distill_lab.video.world_model.WorldModelScale` (``wsc``)."""

    def __init__(self, scale=None, progress: bool = True):
        from ..core.scale import get_scale
        from .world_model import load_teacher, teacher_for, world_model_scale

        sc = get_scale(scale)
        self.scale_name, folder = teacher_for(sc)
        loaded = load_teacher(folder)
        self.teacher, self.manifest = loaded["model"], loaded["manifest"]
        self.wsc = world_model_scale(self.scale_name)
        self.progress = progress

    def __repr__(self) -> str:
        return (f"WorldBench({self.wsc.eval_n} loop-closed clips of {self.wsc.eval_frames} frames, students of scale "
                f"{self.scale_name})")


def run_world(exp: WorldBench, methods=None, seeds=(0, 1, 2)) -> list[dict]:
    """One row a ``video_world`` recipe (default all), the baseline (recent) first."""
    from . import world_students as ws
    from .world_model import POLICIES, teacher_quality

    names = ["recent"] + [m for m in (methods or WORLD_RECIPES) if m != "recent"]
    base_model = teacher_quality(exp.teacher, exp.wsc)
    res = {}
    for name in names:
        students = ws.committed_world_students(exp.teacher, exp.manifest, exp.wsc, name, seeds, exp.scale_name,
                                               quiet=not exp.progress)
        res[name] = [{**{k: v for k, v in ws.evaluate_world_student(s).items() if k != "stream"},
                      "seconds": s.train_seconds} for s in students]
    return seed_rows(res, "recent", "revisit", res["recent"][0]["revisit_data"], seeds,
                     fixed={f"base_model_{p}": base_model[p]["revisit"] for p in POLICIES}, extra_keys=EXTRA)


def _prepare(args, scale):
    exp = WorldBench(scale, progress=not args.quiet)
    print(f"bench video_world: {exp}")
    return exp


register_track(BenchTrack(
    name="video_world", summary="few-step world students of an action- and camera-conditioned base model: recent, "
                                "camera-retrieved (Matrix-Game 3.0) or compressed (RELIC) memory, loop-closed "
                                "training paths (RealCam); the revisit error on loops out and back",
    row_keys=ROW_KEYS, prepare=_prepare,
    run=lambda exp, methods, args: run_world(exp, methods, tuple(args.seeds or (0, 1, 2))), table=format_table))
