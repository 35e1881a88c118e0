"""The bench track of lab 36, ``video_av``: joint Self Forcing students of the audio-video teacher.

    python -m distill_lab bench video_av --scale ci --seeds 0 1 2

Each variant of :data:`~distill_lab.video.audio_visual.AV_VARIANTS` is a recipe; a row is the mean over the seeds,
measured as lab 36 measures it: ``value`` the sync error of one training horizon streamed from fixed noise (the
audio's pitch against the frames' sprite height, lower is better), beside the student without the sink (the
baseline) and the data's sync error (the floor, zero up to rounding); also the joint teacher's sync error, the
shuffled pairing's, the sync error over the last of four horizons streamed with a three-block cache a stream,
the largest gradient norm of the audio parameters in training, the frame and tone errors and frames per second.
The students are the committed ones where a seed's is committed and matches the teacher, trained otherwise (the
same call, :func:`~distill_lab.video.audio_visual.committed_av_students`).
"""

from __future__ import annotations

from ..core.bench import BenchTrack, register_track
from ..core.registry import recipe
from . import audio_visual as av
from .ssl_bench import ROW_KEYS, format_table, seed_rows

AV_TRACK = ("video_av",)
#: recipe name -> the variant it trains
AV_RECIPES = {"no_sink": "no_sink", "omniforcing": "omniforcing", "no_global": "no_global"}


def _av_recipe(name: str, baseline: bool = False):
    @recipe(name, tracks=AV_TRACK, family="streaming audio-video", paper=av.OMNIFORCING, metric="sync",
            baseline=baseline)
    def train(exp, seed: int = 0, steps=None):
        """One joint Self Forcing student of :data:`~distill_lab.video.audio_visual.AV_VARIANTS` from the joint
        teacher (:func:`~distill_lab.video.audio_visual.train_av_student`); ``exp`` an :class:`AVBench`."""
        return av.train_av_student(exp.teacher, exp.asc, exp.world, seed=seed, steps=steps, progress=exp.progress,
                                   **av.AV_VARIANTS[AV_RECIPES[name]])
    return train


for _name in AV_RECIPES:
    _av_recipe(_name, baseline=_name == "no_sink")


class AVBench:
    """What the track's recipes read: the joint teacher (``teacher``, ``manifest``), the scale's
    :class:`~distill_lab.video.audio_visual.AVScale` and the world."""

    def __init__(self, scale=None, progress: bool = True):
        from ..core.scale import get_scale
        from .config import video_scale

        sc = get_scale(scale)
        loaded = av.load_av_teacher(av.av_teacher_dir(sc))
        self.teacher, self.manifest = loaded["model"], loaded["manifest"]
        self.asc, self.world = av.av_scale(sc), video_scale(sc).world
        self.students_scale = av.av_students_scale(sc)
        self.progress = progress

    def __repr__(self) -> str:
        return f"AVBench({self.asc.frames} frames, {self.asc.eval_n} clips, students of scale {self.students_scale})"


def run_av(exp: AVBench, methods=None, seeds=(0, 1, 2)) -> list[dict]:
    """One row a ``video_av`` recipe (default all), the baseline (no sink) first."""
    names = ["no_sink"] + [m for m in (methods or AV_RECIPES) if m != "no_sink"]
    tq = av.teacher_measures(exp.teacher, exp.asc, exp.world)
    res = {}
    for name in names:
        students = av.committed_av_students(exp.teacher, exp.manifest, exp.asc, exp.world, AV_RECIPES[name], seeds,
                                            exp.students_scale, quiet=not exp.progress)
        res[name] = []
        for s in students:
            one = av.evaluate_student(s, exp.asc, exp.world)
            long = av.evaluate_student(s, exp.asc, exp.world, factor=exp.asc.eval_factor,
                                       video_window=exp.asc.video_window, audio_window=exp.asc.audio_window)
            res[name].append({"sync": one["sync"], "shuffled": one["shuffled"], "frame_error": one["frame_error"],
                              "tone_error": one["tone_error"], "fps": long["fps"],
                              "long_last": long["sync_per_horizon"][-1],
                              "grad_audio_max": max(s.record["grad_audio_params"]),
                              "seconds": s.record["train_seconds"]})
    return seed_rows(res, "no_sink", "sync", tq["sync_data"], seeds, fixed={"teacher": tq["sync"]},
                     extra_keys=("shuffled", "long_last", "grad_audio_max", "frame_error", "tone_error", "fps"))


def _prepare(args, scale):
    exp = AVBench(scale, progress=not args.quiet)
    print(f"bench video_av: {exp}")
    return exp


register_track(BenchTrack(
    name="video_av", summary="joint Self Forcing of a video-and-audio teacher into a streaming student, with and "
                             "without OmniForcing's audio sink (the sync error of the two streams)",
    row_keys=ROW_KEYS, prepare=_prepare, run=lambda exp, methods, args: run_av(exp, methods, tuple(args.seeds or (0, 1, 2))),
    table=format_table))
