"""Bench tracks of lab 37: ``video_mcm`` (motion from video, looks from stills), ``video_repr`` (video
self-distillation for representations) and ``video_ffp`` (first-frame propagation).

    python -m distill_lab bench video_mcm --scale ci --seeds 0 1 2
    python -m distill_lab bench video_repr --scale ci --seeds 0 1 2
    python -m distill_lab bench video_ffp --scale ci --seeds 0 1 2

Each variant of :mod:`distill_lab.video.mcm` and :mod:`distill_lab.video.represent` is a recipe of its track
(so ``--list`` and ``--methods`` work as on every track); a row is the mean over the seeds, beside its
baseline's, measured as lab 37 measures it:

* ``video_mcm``: ``value`` = the distance of the students' sprite width from the stills' (lower: frames
  nearer the sharp stills), the baseline pixel consistency distillation's; the motion FD beside the
  teacher's and its floor, the dynamic degree beside the teacher's and the data's, the error against a clean
  sharp sprite.
* ``video_repr``: the encoders' linear-probe accuracy of the direction of motion (``value``) and effective
  rank, beside masked latent prediction alone (the baseline) and an untrained encoder (the floor);
* ``video_ffp``: the two first-frame propagators' error past the trained horizon, beside copying the source.
"""

from __future__ import annotations

import time

from ..core.bench import BenchTrack, mean_spread, paired, register_track, text_table
from ..core.registry import recipe
from ..core.scale import get_scale
from . import mcm
from . import represent as rp

MCM_TRACK, REPR_TRACK, FFP_TRACK = ("video_mcm",), ("video_repr",), ("video_ffp",)
MCM_PAPER = "Zhai et al. 2024, Motion Consistency Model: Accelerating Video Diffusion with Disentangled Motion-Appearance Distillation"
UNISURG = "UniSurg: A Video-Native Foundation Model for Universal Understanding of Surgical Videos (2026)"
FFP = "FFP-300K: Scaling First-Frame Propagation for Generalizable Video Editing (2026)"
#: recipe name -> the variant it trains
MCM_RECIPES = {"pixel_cd": "pixel CD", "pixel_cd_disc": "pixel CD + disc", "mcm": "MCM (motion CD + disc)",
               "mcm_mixed": "MCM + mixed trajectories"}
REPR_RECIPES = {"vjepa": "masked latents (V-JEPA)", "vjepa_motion": "+ motion weighting",
                "affinity_sd": "+ affinity SD", "unisurg": "+ affinity SD + diversity (UniSurg)"}
FFP_RECIPES = {"ffp": "edit pairs only", "ffp_identity": "+ identity propagation"}


def _mcm_recipe(name: str, variant: str, baseline: bool = False):
    @recipe(name, tracks=MCM_TRACK, family="video consistency", paper=MCM_PAPER, metric="width_to_stills",
            baseline=baseline)
    def train(exp, seed: int = 0, cfg=None):
        """One student of :data:`distill_lab.video.mcm.VARIANTS` (:func:`~distill_lab.video.mcm.train_mcm`)."""
        return mcm.train_mcm(exp, mcm.VARIANTS[variant], seed, cfg)
    return train


def _repr_recipe(name: str, variant: str, baseline: bool = False):
    @recipe(name, tracks=REPR_TRACK, family="video self-distillation", paper=UNISURG, metric="probe", baseline=baseline)
    def train(settings, seed: int = 0):
        """The EMA teacher encoder of one :data:`distill_lab.video.represent.VARIANTS` entry, pre-trained from
        ``seed`` (:func:`~distill_lab.video.represent.pretrain`); ``settings`` a ``ReprSettings``."""
        return rp.pretrain(rp.VARIANTS[variant], settings, rp.ReprData.make(settings, seed), seed)[1]
    return train


def _ffp_recipe(name: str, identity: bool, baseline: bool = False):
    @recipe(name, tracks=FFP_TRACK, family="first-frame propagation", paper=FFP, metric="late_error_x1000",
            baseline=baseline)
    def train(settings, seed: int = 0):
        """A first-frame propagator trained from ``seed`` on the few edit pairs, with FFP-300K's identity task at
        ``settings.ffp_identity_weight`` or without it (:func:`~distill_lab.video.represent.train_ffp`)."""
        w = settings.ffp_identity_weight if identity else 0.0
        return rp.train_ffp(settings, rp.FFPData.make(settings, seed), seed, w)[0]
    return train


for _name, _variant in MCM_RECIPES.items():
    _mcm_recipe(_name, _variant, baseline=_name == "pixel_cd")
for _name, _variant in REPR_RECIPES.items():
    _repr_recipe(_name, _variant, baseline=_name == "vjepa")
_ffp_recipe("ffp", identity=False, baseline=True)
_ffp_recipe("ffp_identity", identity=True)

ROW_KEYS = ("method", "metric", "value", "spread", "baseline", "paired", "floor", "extra", "seeds", "train_seconds")


def run_mcm(exp, methods=None, seeds=(0, 1, 2), cfg=None) -> list[dict]:
    """One row a ``video_mcm`` recipe (default all), the baseline's first; each seed trains a fresh student."""
    cfg = cfg or mcm.mcm_scale()
    names = ["pixel_cd"] + [m for m in (methods or MCM_RECIPES) if m != "pixel_cd"]
    ref = mcm.references(exp, cfg)
    res, secs = {}, {}
    for name in names:
        res[name], secs[name] = [], []
        for s in seeds:
            t0 = time.perf_counter()
            res[name].append(mcm.evaluate_mcm(mcm.train_mcm(exp, mcm.VARIANTS[MCM_RECIPES[name]], s, cfg), exp, ref, cfg))
            secs[name].append(time.perf_counter() - t0)
    stills = ref["stills_width"]
    dist = {n: [abs(r["width"] - stills) for r in rs] for n, rs in res.items()}
    rows = []
    for name in names:
        m, s = mean_spread(dist[name])
        rows.append({"method": name, "metric": "width_to_stills", "value": m, "spread": s,
                     "baseline": mean_spread(dist["pixel_cd"])[0], "paired": paired(dist[name], dist["pixel_cd"]),
                     "floor": 0.0, "seeds": list(seeds), "train_seconds": sum(secs[name]) / len(seeds),
                     "extra": {k: mean_spread(r[k] for r in res[name])[0]
                               for k in ("width", "fd", "dynamic_degree", "still_error", "sharpness")}})
    for who in ("teacher", "data"):
        r = ref[who]
        rows.append({"method": who, "metric": "width_to_stills", "value": abs(r["width"] - stills), "spread": 0.0,
                     "baseline": None, "paired": None, "floor": 0.0, "seeds": [], "train_seconds": 0.0,
                     "extra": {"width": r["width"], "fd": r["fd"], "dynamic_degree": r["dynamic_degree"],
                               "still_error": r["still_error"], "fd_floor": ref["fd_floor"]}})
    return rows


def run_repr(settings, methods=None, seeds=(0, 1, 2)) -> list[dict]:
    """One row a ``video_repr`` recipe (default all): the encoders' probe and effective rank beside masked latent
    prediction alone (the baseline) and an untrained encoder (the floor); every seed pre-trains the chosen
    encoders on the same clips."""
    enc = ["vjepa"] + [m for m in (methods or REPR_RECIPES) if m != "vjepa"]
    t0 = time.perf_counter()
    per = [rp.run_seed(settings, s, {REPR_RECIPES[m]: rp.VARIANTS[REPR_RECIPES[m]] for m in enc}) for s in seeds]
    enc_secs = (time.perf_counter() - t0) / len(enc) / len(seeds)
    probe = {m: [100 * p[REPR_RECIPES[m]]["probe"] for p in per] for m in enc}
    floor = mean_spread(100 * p["random init (floor)"]["probe"] for p in per)[0]
    return [{"method": m, "metric": "probe", "value": mean_spread(probe[m])[0], "spread": mean_spread(probe[m])[1],
             "baseline": mean_spread(probe["vjepa"])[0], "paired": paired(probe[m], probe["vjepa"]), "floor": floor,
             "seeds": list(seeds), "train_seconds": enc_secs,
             "extra": {"effective_rank": mean_spread(p[REPR_RECIPES[m]]["erank"] for p in per)[0],
                       "pixel_probe": mean_spread(100 * p["raw pixels"]["probe"] for p in per)[0]}} for m in enc]


def run_ffp(settings, methods=None, seeds=(0, 1, 2)) -> list[dict]:
    """The ``video_ffp`` rows: the propagators' error past the trained horizon (x 1000), with the identity task
    and without (the baseline), beside copying the source."""
    names = ["ffp"] + [m for m in (methods or FFP_RECIPES) if m != "ffp"]
    t0 = time.perf_counter()
    runs = [rp.run_ffp_seed(settings, s) for s in seeds]
    secs = (time.perf_counter() - t0) / 2 / len(seeds)
    late = {n: [1000 * rp.late_error(r[n], settings.ffp_frames) for r in runs]
            for n in (*FFP_RECIPES.values(), "copy the source (ignores the edit)")}
    return [{"method": m, "metric": "late_error_x1000", "value": mean_spread(late[FFP_RECIPES[m]])[0],
             "spread": mean_spread(late[FFP_RECIPES[m]])[1], "baseline": mean_spread(late["edit pairs only"])[0],
             "paired": paired(late[FFP_RECIPES[m]], late["edit pairs only"]), "floor": None, "seeds": list(seeds),
             "train_seconds": secs, "extra": {"copy_source": mean_spread(late["copy the source (ignores the edit)"])[0]}}
            for m in names]


def _f(v, nd=4):
    return "-" if v is None else f"{v:.{nd}f}"


def seed_rows(res: dict, baseline: str, metric: str, floor: float, seeds, fixed: dict | None = None,
              extra_keys=()) -> list[dict]:
    """One bench row a method of ``res`` (name -> one measurement dict a seed, the same seeds for every name, each
    with ``metric`` and ``"seconds"``): the mean and spread of ``metric`` over the seeds, beside ``baseline``'s mean
    and paired seed by seed against it, ``floor``; ``extra`` holds ``fixed`` (figures that are the same for every
    row) and the mean of each of ``extra_keys`` over the seeds. Rows in the order of ``res``."""
    base = [r[metric] for r in res[baseline]]
    rows = []
    for name, rs in res.items():
        v = [r[metric] for r in rs]
        m, sp = mean_spread(v)
        rows.append({"method": name, "metric": metric, "value": m, "spread": sp, "baseline": mean_spread(base)[0],
                     "paired": paired(v, base), "floor": floor, "seeds": list(seeds),
                     "train_seconds": mean_spread(r["seconds"] for r in rs)[0],
                     "extra": {**(fixed or {}), **{k: mean_spread(r[k] for r in rs)[0] for k in extra_keys}}})
    return rows


def format_table(rows: list[dict]) -> str:
    head = ["method", "metric", "value", "+-", "baseline", "paired", "+-", "floor", "also", "seeds"]
    body = []
    for r in rows:
        pm, ps = r["paired"] if r["paired"] else (None, None)
        also = ", ".join(f"{k} {_f(v)}" for k, v in r["extra"].items())
        body.append([r["method"], r["metric"], _f(r["value"]), _f(r["spread"]), _f(r["baseline"]), _f(pm), _f(ps),
                     _f(r["floor"]), also, str(len(r["seeds"]))])
    return text_table(head, body, ["paired: the row minus the baseline, seed by seed (mean +- spread)"])


def _prepare_mcm(args, scale):
    from .experiment import VideoWorld

    exp = VideoWorld(scale, progress=not args.quiet)
    exp.mcm_cfg = mcm.mcm_scale(scale)  # the scale asked for, not $DISTILL_LAB_SCALE's (mcm's functions default to it)
    print(f"bench video_mcm: {exp}, {exp.mcm_cfg}")
    return exp


def _prepare_repr(args, scale):
    s = rp.SETTINGS[get_scale(scale).name]
    print(f"bench {args.track}: {s}")
    return s


register_track(BenchTrack(
    name="video_mcm", summary="the Motion Consistency Model against pixel consistency distillation (the sprite width's "
                              "distance from the sharp stills', and the motion it keeps)",
    row_keys=ROW_KEYS, prepare=_prepare_mcm,
    run=lambda exp, methods, args: run_mcm(exp, methods, tuple(args.seeds or (0, 1, 2)), exp.mcm_cfg),
    table=format_table))
register_track(BenchTrack(
    name="video_repr", summary="video self-distillation: UniSurg's terms against masked latent prediction (a linear "
                               "probe of the direction of motion)",
    row_keys=ROW_KEYS, prepare=_prepare_repr,
    run=lambda s, methods, args: run_repr(s, methods, tuple(args.seeds or (0, 1, 2))), table=format_table))
register_track(BenchTrack(
    name="video_ffp", summary="first-frame propagation with and without FFP-300K's identity task (error past the "
                              "trained horizon)",
    row_keys=ROW_KEYS, prepare=_prepare_repr,
    run=lambda s, methods, args: run_ffp(s, methods, tuple(args.seeds or (0, 1, 2))), table=format_table))
