"""``python -m distill_lab gpu-check``: every track's ``gpu``-scale figures from one prepared run.

    python -m distill_lab gpu-check --budget-minutes 8 --json out/gpu_check.json
    python -m distill_lab gpu-check --device cpu --tiny       # every part at toy size, on the CPU

GPU time comes in short windows, so one command measures what the ``gpu`` scale does, part by part,
in order of value, within a budget. Each part is time-boxed: its training loops stop at the part's
deadline (:func:`distill_lab.core.train.fit`) and the row says how many steps ran of how many, so a
part that stopped early is a throughput figure, not a converged result. A part whose box no longer fits
in the budget is skipped, and its row says so. The parts:

``cifar / kd teacher``
    The KD teacher's gpu recipe (:func:`distill_lab.cifar.kd_teacher.recipe`: FastVGG 64-256-256,
    50 epochs of batch 512, bf16 autocast, channels-last, data on the GPU) on all 50,000 training
    images; its test accuracy, plain and with flip test-time augmentation, beside airbench94's
    90.7% in 1.93 s on the same JPEG copy of CIFAR-10 (``shared/data/README.md``, one H200).
``toy2d / teacher``, ``toy2d / trajectory``, ``toy2d / dmd``
    :class:`~distill_lab.toy2d.experiment.Toy2D` (checkerboard) at the gpu scale: the flow teacher
    (MLP 4x512, batch 4096) and two one-step students; sliced W2 to held-out data over its floor.
``cifar-gen / flow teacher``
    The gpu U-Net (:data:`~distill_lab.cifar.flow_config.IMAGE_SCALES` ``["gpu"]``) flow-matching on
    CIFAR-10 at 32 x 32, from scratch: steps and images per second, and the loss it reached.
``cifar-gen / trajectory``, ``cifar-gen / dmd``
    The committed ``ci`` flow teacher on the GPU, distilled with the ``ci`` image budgets: the very
    runs ``bench cifar-gen --scale ci`` makes on a CPU, so the seconds compare directly; the Fréchet
    distance in classifier features (not FID) over its floor.
``cifar / labels``, ``cifar / hinton_kd``
    The KD track's students at the gpu scale (resnet8x4 on 50,000 images) for a few epochs.
``video / teacher``, ``video / self_forcing``, ``video / streaming``
    The gpu video teacher (32 x 32 frames, two sprites, clips of 16 frames) flow-matching from scratch:
    steps and clips per second; the committed ``ci`` teacher distilled by Self Forcing with the ``ci``
    budget on this device, evaluated like ``bench video`` (frames per second of streaming, errors at 1x
    and 4x the horizon); and a gpu-size causal student streaming rollouts of 4 horizons (64 frames of
    32 x 32): frames per second.
``toy2d / every recipe``, ``cifar-gen / every recipe``
    Every registered step-distillation recipe for two steps at toy size on this device (a small
    ``Toy2D``; the committed CIFAR teacher on 100 images): does each one run on it at all.

``llm / sft``, ``llm / word_kd``, ``llm / gkd_fkl``
    The committed ``ci`` multiplication teacher and the ``ci`` students on one fixed set of 256
    problems (``mult@256``), seed 0: the run ``bench llm --scale ci --tasks mult@256`` makes on a CPU.
``llm / hf gkd step``
    One on-policy GKD step through :class:`~distill_lab.llm.hf.HFCausalLM` on a pair of the shapes of
    :data:`~distill_lab.llm.hf.GPU_RECIPE` (Qwen2.5 1.5B teacher in bf16, 0.5B student in fp32 with bf16
    autocast and AdamW), random weights (no download): seconds a step and peak memory beside the
    README's estimate.

Each row: track, part, what ran, seconds,
steps run of planned, steps per second, peak GPU memory, the quality figure and its reference. Without
CUDA the command says so and stops, unless ``--device cpu --tiny`` asks for the toy-size run.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from .core.scale import Scale, get_scale

PARTS = ("kd_teacher", "toy2d", "flow_teacher", "flow_distill", "kd_students", "video", "llm", "recipes")
# each part's time box in seconds at the gpu scale (the order is the order of value)
BOXES = {"kd_teacher": 120, "toy2d": 120, "flow_teacher": 25, "flow_distill": 70, "kd_students": 90, "video": 100,
         "llm": 100, "recipes": 60}
AIRBENCH = "airbench94 on this JPEG copy: 90.7% in 1.93 s (H200, flip TTA; shared/data/README.md)"


@dataclass
class Check:
    """What every part needs: the device, the sizes (``tiny``), the budget, the rows so far."""

    device: str
    tiny: bool
    budget_s: float
    t0: float = field(default_factory=time.perf_counter)
    rows: list = field(default_factory=list)
    _cifar: dict | None = None

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def scale(self, name: str) -> Scale:
        """The scale ``name`` on this check's device; in ``tiny`` mode the ci scale, made smaller."""
        if self.tiny:  # the gpu scale's switches on, so a tiny run on CUDA takes the fast paths too
            return Scale("ci", teacher_steps=60, width=32, depth=2, batch=128, student_steps=5, eval_n=400,
                         n_proj=32, device=self.device, amp=True, check_every=5)
        return get_scale(name, device=self.device)

    def cifar(self) -> dict:
        """CIFAR-10 (decoded once); in ``tiny`` mode 40 training and 20 test images a class. A failure
        to load it is remembered, so the parts that need it fail at once with the same message."""
        if isinstance(self._cifar, Exception):
            raise self._cifar
        if self._cifar is None:
            from .cifar.data import load_cifar10, subset

            try:
                data = load_cifar10(verbose=False)
            except Exception as err:
                self._cifar = err
                raise
            self._cifar = subset(data, 40, seed=0, test_per_class=20) if self.tiny else data
        return self._cifar

    def measure(self, track: str, part: str, what: str, fn: Callable[[float], dict]) -> dict:
        """Run ``fn(deadline) -> row fields`` with peak-memory tracking and add the row."""
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            out = fn(deadline=None)
        except Exception as err:  # one failed part must not hide the others
            out = {"error": f"{type(err).__name__}: {err}"}
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        secs = time.perf_counter() - t
        row = {"track": track, "part": part, "what": what, "seconds": round(secs, 2),
               "steps": out.get("steps"), "steps_planned": out.get("steps_planned"),
               "steps_per_s": None, "peak_gpu_gb": None, "quality": out.get("quality"),
               "quality_name": out.get("quality_name", ""), "reference": out.get("reference", ""),
               "error": out.get("error")}
        train_s = out.get("train_seconds")
        if row["steps"] and train_s:
            row["steps_per_s"] = round(row["steps"] / train_s, 1)
        if self.device.startswith("cuda"):
            row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        self.rows.append(row)
        print(format_rows([row], header=False), flush=True)
        return row


def _boxed(fn: Callable, box: float) -> Callable:
    """``fn(deadline)`` with the deadline ``box`` seconds from the call."""
    return lambda deadline=None: fn(time.perf_counter() + box)


# ------------------------------------------------------------------ the parts
def _train(exp, name: str):
    """Train the registered recipe ``name`` on ``exp`` from seed 0: ``(student, its fit history, seconds)``."""
    from .core.registry import get_recipe
    from .core.train import seed_everything

    seed_everything(0)
    t = time.perf_counter()
    st = get_recipe(name).train(exp)
    return st, getattr(st, "history", None) or {}, time.perf_counter() - t


def part_kd_teacher(c: Check, box: float) -> None:
    from .cifar.classify import predict_logits
    from .cifar.kd_teacher import recipe, train_teacher

    sc = c.scale("gpu")
    rc = {**recipe("ci"), "epochs": 1} if c.tiny else recipe(sc)

    def run(deadline):
        data = c.cifar()
        model, info = train_teacher(data, sc, progress=False, epochs=1 if c.tiny else None, deadline=deadline)
        test = data["test_x"]
        logits = predict_logits(model, test)
        tta = 0.5 * (logits + predict_logits(model, test, flip=True))
        acc = float((logits.argmax(-1) == data["test_y"]).double().mean())
        acc_tta = float((tta.argmax(-1) == data["test_y"]).double().mean())
        planned = round(info["recipe"]["epochs"] * (len(data["train_x"]) // info["recipe"]["batch_size"]))
        return {"steps": info["steps"], "steps_planned": planned, "train_seconds": info["train_seconds"],
                "quality": round(100 * acc_tta, 2), "quality_name": f"test acc % with flip TTA ({100 * acc:.2f} plain)",
                "reference": AIRBENCH + f"; this run trained {info['train_seconds']:.1f} s"}

    c.measure("cifar", "kd teacher", f"FastVGG {rc['model']['widths']}, {rc['epochs']} epoch(s) of batch "
              f"{rc['batch_size']} on {'a subset' if c.tiny else 'all 50,000 images'}", _boxed(run, box))


def part_toy2d(c: Check, box: float) -> None:
    from .toy2d import Toy2D

    sc = c.scale("gpu")
    holder = {}

    def teacher(deadline):
        exp = Toy2D("checkerboard", scale=sc, cache=False, progress=False, deadline=deadline)
        holder["exp"] = exp
        r = exp.evaluate(lambda z: exp.teacher_sample(z))
        hist = exp.teacher_history
        return {"steps": hist["steps"], "steps_planned": sc.teacher_steps, "train_seconds": hist["seconds"],
                "quality": round(r["ratio"], 2),
                "quality_name": "sliced W2 / floor, 64-NFE midpoint",
                "reference": f"floor {exp.floor:.4f}; 1.0 is as good as the data allows"}

    c.measure("toy2d", "teacher", f"flow-matching MLP {sc.depth}x{sc.width}, batch {sc.batch}",
              _boxed(teacher, box / 2))
    for name in ("trajectory", "dmd"):
        def student(deadline, name=name):
            exp = holder["exp"]
            exp.deadline = deadline
            if c.tiny:
                exp.recipe_defaults = {name: {"steps": 3}}
            st, hist, secs = _train(exp, name)
            r = exp.evaluate(st.sample, 1)
            return {"steps": hist.get("steps"), "train_seconds": hist.get("seconds", secs),
                    "quality": round(r["ratio"], 2), "quality_name": "sliced W2 / floor, 1 step",
                    "reference": f"the teacher's 1-step Euler: {exp.teacher_curve((1,))[1] / exp.floor:.1f}x floor"}

        if "exp" in holder:
            c.measure("toy2d", name, f"one-step student at the {sc.name} scale", _boxed(student, box / 4))


def part_flow_teacher(c: Check, box: float) -> None:
    from .cifar.flow_config import IMAGE_SCALES, load_flow_data
    from .cifar.flow_teacher import train_flow_teacher

    sc = c.scale("gpu")
    isc = IMAGE_SCALES["gpu"]
    if c.tiny:
        isc = replace(isc, unet=dict(base=8, mults=(1, 2), blocks=1, attention=True), teacher_batch=8)

    def run(deadline):
        x = load_flow_data(isc, c.cifar())["train"]
        steps = 5 if c.tiny else isc.teacher_steps
        _, info = train_flow_teacher(x, isc, steps=steps, device=c.device, progress=False, amp=sc.amp,
                                     check_every=sc.check_every, compile=sc.compile, deadline=deadline, log_every=10)
        ips = info["steps"] * isc.teacher_batch / info["train_seconds"]
        return {"steps": info["steps"], "steps_planned": steps, "train_seconds": info["train_seconds"],
                "quality": round(info["history"]["loss"][-1], 4), "quality_name": "flow-matching loss (last logged)",
                "reference": f"{ips:.0f} images/s; a full teacher is {isc.teacher_steps} steps"}

    c.measure("cifar-gen", "flow teacher", f"TimeUNet {isc.unet} at {isc.resolution}x{isc.resolution}, batch "
              f"{isc.teacher_batch}, from scratch", _boxed(run, box))


def part_flow_distill(c: Check, box: float) -> None:
    from .cifar.flow_config import IMAGE_SCALES
    from .cifar.flow_experiment import CifarFlow

    ci = get_scale("ci", device=c.device)
    isc = IMAGE_SCALES["ci"]
    kw = {}
    if c.tiny:
        isc = replace(isc, teacher_nfe=4, recipes={"trajectory": {"steps": 3, "pool": 16, "batch": 16},
                                                   "dmd": {**isc.recipes["dmd"], "steps": 3, "batch": 16}})
        kw = dict(eval_n=100, image_scale=isc)
    holder = {}
    for name in ("trajectory", "dmd"):
        def run(deadline, name=name):
            if "exp" not in holder:
                holder["exp"] = CifarFlow(ci, progress=False, **kw)
            exp = holder["exp"]
            exp.deadline = deadline
            st, hist, secs = _train(exp, name)
            r = exp.evaluate(st.sample, 1)
            return {"steps": hist.get("steps"), "steps_planned": exp.recipe_defaults.get(name, {}).get("steps"),
                    "train_seconds": hist.get("seconds", secs), "quality": round(r["ratio"], 2),
                    "quality_name": "FD (classifier features, not FID) / floor, 1 step",
                    "reference": "the same run as `bench cifar-gen --scale ci` on a CPU"}

        c.measure("cifar-gen", name, "the committed ci teacher (16x16), ci image budget, fp32", _boxed(run, box / 2))


def part_kd_students(c: Check, box: float) -> None:
    from .cifar.kd_experiment import CifarKD

    sc = c.scale("gpu")
    over = dict(n_per_class=20, test_per_class=10, epochs=1) if c.tiny else dict(epochs=10)
    holder = {}
    for name in ("labels", "hinton_kd"):
        def run(deadline, name=name):
            if "exp" not in holder:
                holder["exp"] = CifarKD("ci" if c.tiny else sc, data=c.cifar() if not c.tiny else None,
                                        cache=False, progress=False, **over)
            exp = holder["exp"]
            exp.deadline = deadline
            res = exp.run(name, 0)
            hist = res["extra"].get("history") or {}
            return {"steps": hist.get("steps"), "steps_planned": exp.n_steps, "train_seconds": res["seconds"],
                    "quality": round(100 * res["value"], 2), "quality_name": "test acc %",
                    "reference": f"teacher {100 * exp.teacher_metrics['acc']:.1f}%"}

        c.measure("cifar", name, f"{'tiny_cnn' if c.tiny else 'resnet8x4'} student, "
                  f"{over['epochs']} epoch(s), seed 0", _boxed(run, box / 2))


def part_video(c: Check, box: float) -> None:
    from .core.registry import get_recipe
    from .core.train import seed_everything
    from .video import VideoWorld
    from .video.config import VIDEO_SCALES
    from .video.nets import VideoNetConfig
    from .video.rollout import StreamingStudent
    from .video.teacher import train_teacher

    vsc = VIDEO_SCALES["gpu"]
    if c.tiny:
        vsc = replace(vsc, net=VideoNetConfig(resolution=16, patch=8, dim=32, depth=2, heads=2), frames=4, block=2,
                      teacher_batch=4)

    def teacher(deadline):
        steps = 3 if c.tiny else vsc.teacher_steps
        net, info = train_teacher(vsc, steps=steps, device=c.device, progress=False, deadline=deadline)
        cps = info["steps"] * vsc.teacher_batch / info["train_seconds"]
        return {"steps": info["steps"], "steps_planned": steps, "train_seconds": info["train_seconds"],
                "quality": round(info["history"]["loss"][-1], 4), "quality_name": "flow-matching loss (last logged)",
                "reference": f"{cps:.0f} clips of {vsc.frames} frames a second"}

    c.measure("video", "teacher", f"VideoTransformer {vsc.net.dim}x{vsc.net.depth}, {vsc.resolution}x{vsc.resolution}, "
              f"{vsc.world.n_sprites} sprites, clips of {vsc.frames}, batch {vsc.teacher_batch}, from scratch",
              _boxed(teacher, box / 4))

    def self_forcing(deadline):
        kw = {}
        if c.tiny:
            kw = dict(video_scale=replace(VIDEO_SCALES["ci"], net=vsc.net, frames=4, block=2, student_steps=2,
                                          teacher_nfe=2, eval_n=4), eval_n=4)
            torch.manual_seed(0)
            from .video.nets import VideoTransformer
            kw["teacher"] = VideoTransformer(vsc.net, "full")
        exp = VideoWorld(get_scale("ci", device=c.device), progress=False, **kw)
        exp.deadline = deadline
        seed_everything(0)
        st = get_recipe("self_forcing").train(exp, **({"init_steps": 1, "pool": 4} if c.tiny else {}))
        r, tr = exp.evaluate(st), exp.evaluate_teacher()
        return {"steps": st.history["steps"], "steps_planned": exp.scale.student_steps,
                "train_seconds": st.history["seconds"], "quality": round(r["frame_error_4x"], 4),
                "quality_name": f"frame error at 4x ({r['frame_error_1x']:.4f} at 1x), {r['frames_per_second']:.0f} frames/s",
                "reference": f"the teacher's sliding window: {tr['frame_error_4x']:.4f} at 4x, "
                             f"{tr['frames_per_second']:.0f} frames/s; the same run as `bench video --scale ci`"}

    c.measure("video", "self_forcing", ("a random tiny teacher" if c.tiny else "the committed ci teacher")
              + ", Self Forcing with the ci budget", _boxed(self_forcing, box / 2))

    def streaming(deadline):
        torch.manual_seed(0)
        from .video.nets import VideoTransformer
        net = VideoTransformer(vsc.net, "block_causal", vsc.block).to(c.device).eval()
        st = StreamingStudent(net, steps=vsc.student_nfe, sampler="renoise", window=vsc.frames - vsc.block)
        z = torch.randn(4 if c.tiny else 64, vsc.eval_frames, 1, vsc.resolution, vsc.resolution, device=c.device)
        st.frames_per_second(z[:2])  # warm-up
        fps = st.frames_per_second(z)
        return {"quality": round(fps), "quality_name": f"frames/s streaming {z.shape[0]} rollouts of {z.shape[1]} frames",
                "reference": f"{vsc.student_nfe} steps a block of {vsc.block} frames, cache of {vsc.frames - vsc.block} frames"}

    c.measure("video", "streaming", f"a gpu-size causal student ({vsc.resolution}x{vsc.resolution}, untrained weights)",
              _boxed(streaming, box / 4))


def part_llm(c: Check, box: float) -> None:
    from .llm import hf
    from .llm.config import NetSize, llm_scale
    from .llm.experiment import LLMTask
    from .llm.gpt import generate
    from .llm.sft import build_gpt
    from .llm.tasks import get_task
    from .methods.kd.token import gjsd_loss

    holder = {}

    def experiment():
        if "exp" not in holder:
            if c.tiny:  # a random tiny teacher and student: the same code in seconds on a CPU
                ts = replace(llm_scale("mult", "ci"), teacher=NetSize(1, 2, 16), student=NetSize(1, 2, 16),
                             student_steps=3, warm_steps=2, eval_n=8)
                torch.manual_seed(0)
                holder["exp"] = LLMTask("mult", get_scale("ci", device=c.device), task_scale=ts, pool=16,
                                        teacher=build_gpt(get_task("mult"), ts.teacher), progress=False)
            else:
                holder["exp"] = LLMTask("mult", get_scale("ci", device=c.device), pool=256, progress=False)
        return holder["exp"]

    for name in ("sft", "word_kd", "gkd_fkl"):
        def run(deadline, name=name):
            exp = experiment()
            exp.deadline = deadline
            st, _, _ = _train(exp, name)
            r, info = exp.evaluate(st), st.train_info
            return {"steps": info["steps"], "steps_planned": exp.steps, "train_seconds": info["seconds"],
                    "quality": round(r["accuracy"], 1), "quality_name": f"exact match % on {exp.name}, seed 0",
                    "reference": f"teacher {exp.teacher_eval['accuracy']:.1f}%; {info['distinct_sequences']} distinct "
                                 f"sequences; the run of `bench llm --scale ci --tasks mult@256 --seeds 0`"}

        c.measure("llm", name, ("a random tiny teacher" if c.tiny else "the committed ci teacher")
                  + ", a fixed set of problems, the ci budget (warm start included in the first)", _boxed(run, box / 5))

    R = hf.GPU_RECIPE
    shapes = {  # the recipe's pair (Qwen2.5 1.5B and 0.5B) by their published shapes, random weights
        "teacher": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12),
        "student": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14)}

    def hf_step(deadline):
        transformers = hf._transformers()
        batch, prompt, new = (2, 8, 8) if c.tiny else (R["batch"], R["prompt_tokens"], R["max_new_tokens"])
        vocab = 64 if c.tiny else R["vocab_size"]
        models = {}
        for role, shape in shapes.items():
            if c.tiny:
                shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2 if role == "teacher" else 1,
                             num_attention_heads=2)
            cfg = transformers.Qwen2Config(vocab_size=vocab, num_key_value_heads=2, max_position_embeddings=4096,
                                           tie_word_embeddings=True, **shape)
            torch.manual_seed(0)
            with torch.device(c.device):
                m = transformers.AutoModelForCausalLM.from_config(cfg)
            models[role] = hf.HFCausalLM(m.to(torch.bfloat16 if role == "teacher" else torch.float32))
        teacher, student = models["teacher"].eval(), models["student"]
        n_s = sum(p.numel() for p in student.parameters())
        opt = torch.optim.AdamW(student.parameters(), lr=R["lr"])
        amp = torch.autocast("cuda", torch.bfloat16) if c.device.startswith("cuda") else torch.autocast("cpu", enabled=False)
        times = []
        for _ in range(2):  # the first step warms up; the second is timed
            if c.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            x = torch.randint(0, vocab, (batch, prompt), device=c.device)
            with amp:
                roll = generate(student.eval(), x, new, temperature=1.0)
                seq = roll.tokens
                s_logits = student.train()(seq[:, :-1])[:, prompt - 1:]
                with torch.no_grad():
                    t_logits = teacher(seq[:, :-1])[:, prompt - 1:]
            loss = gjsd_loss(s_logits, t_logits, roll.mask[:, prompt:], beta=R["beta"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if c.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        est = R["estimate"]
        return {"steps": 2, "steps_planned": 2, "train_seconds": sum(times), "quality": round(times[-1], 2),
                "quality_name": f"s a GKD step ({batch} prompts of {prompt} tokens, {new} sampled, student "
                                f"{n_s / 1e9:.2f} B params)",
                "reference": f"README estimate: {est['step_s_eager']:.1f} s a step with an eager decoding loop "
                             f"({est['step_s']:.2f} s compute-bound), {est['memory_gb']:.0f} GB"}

    c.measure("llm", "hf gkd step", ("a tiny random Qwen2-shaped pair" if c.tiny else
                                     f"{R['teacher']} -> {R['student']} shapes, random weights")
              + ", one on-policy GKD step through the adapter", _boxed(hf_step, box / 5))


def part_recipes(c: Check, box: float) -> None:
    from .cifar.flow_config import IMAGE_SCALES, build_unet
    from .cifar.flow_experiment import CifarFlow
    from .core.bench import bench_methods, run_step_bench
    from .toy2d import Toy2D

    small = Scale("ci", teacher_steps=50, width=32, depth=2, batch=64, student_steps=2, eval_n=200, n_proj=16,
                  device=c.device)

    def fast(names):
        out = {n: {"steps": 2} for n in names}
        out["trajectory"].update(pool=64)
        out["progressive"].update(start=8)
        if "arcflow" in out:  # toy2d only
            out["arcflow"].update(pool=64)
        return out

    def run(exp, track, deadline):
        names = bench_methods(track)
        exp.recipe_defaults = {**getattr(exp, "recipe_defaults", {}),
                               **{n: {**getattr(exp, "recipe_defaults", {}).get(n, {}), **v} for n, v in fast(names).items()}}
        exp.deadline = deadline
        rows = run_step_bench(exp, names, seed=0, track=track)
        failed = sorted({f"{r['method']} ({r['error'][:80]})" for r in rows if r.get("error")})
        ok = len({r["method"] for r in rows if not r.get("error")} & set(names))
        return {"quality": ok, "quality_name": f"of {len(names)} recipes ran", "error": "; ".join(failed) or None}

    c.measure("toy2d", "every recipe", "each step recipe for 2 steps on a small Toy2D on this device",
              _boxed(lambda deadline: run(Toy2D("moons", scale=small, cache=False, progress=False), "toy2d",
                                          deadline), box / 2))
    isc = replace(IMAGE_SCALES["ci"], teacher_nfe=4, batch=16,
                  recipes={k: {**v, "batch": 16} for k, v in IMAGE_SCALES["ci"].recipes.items()})
    teacher = None
    if c.tiny:  # a random 8 x 8 U-Net in place of the committed teacher: the same code, a CPU's minute
        isc = replace(isc, resolution=8, unet=dict(base=8, mults=(1, 2)))
        torch.manual_seed(0)
        teacher = build_unet(isc)
    what = ("each image recipe for 2 steps on 100 images, " +
            ("a random 8x8 U-Net teacher" if c.tiny else "the committed ci teacher"))
    c.measure("cifar-gen", "every recipe", what, _boxed(lambda deadline: run(
        CifarFlow(get_scale("ci", device=c.device), teacher=teacher, progress=False, eval_n=100, image_scale=isc),
        "cifar-gen", deadline), box / 2))


RUNNERS = {"kd_teacher": part_kd_teacher, "toy2d": part_toy2d, "flow_teacher": part_flow_teacher,
           "flow_distill": part_flow_distill, "kd_students": part_kd_students, "video": part_video,
           "llm": part_llm, "recipes": part_recipes}


# ------------------------------------------------------------------ the command
def environment(device: str) -> dict:
    """The machine: GPU name, torch and CUDA versions, and a bf16 matrix-product rate (TFLOP/s)."""
    env = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
           "gpu": None, "cuda": torch.version.cuda, "bf16_matmul_tflops": None}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        env["bf16_matmul_tflops"] = round(10 * 2 * n ** 3 / (time.perf_counter() - t) / 1e12)
    return env


def run(budget_minutes: float = 10.0, device: str | None = None, tiny: bool = False,
        parts=PARTS, json_path: str | None = None) -> dict:
    """Run the parts in order within the budget; return ``{"environment", "rows"}`` (and write it)."""
    device = device or ("cuda" if torch.cuda.is_available() or not tiny else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("gpu-check: no CUDA device is visible to torch. Run it on a machine with a GPU, "
                           "or use `--device cpu --tiny` to run every part at toy size on the CPU.")
    if not device.startswith("cuda") and not tiny:
        raise RuntimeError("gpu-check: the gpu scale needs a CUDA device (this run would take hours on "
                           f"{device}); `--device cpu --tiny` runs every part at toy size instead.")
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"gpu-check: unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    c = Check(device=device, tiny=tiny, budget_s=60 * budget_minutes)
    env = environment(device)
    print(f"gpu-check on {env['gpu'] or device} (torch {env['torch']}, CUDA {env['cuda']}; bf16 matmul "
          f"{env['bf16_matmul_tflops']} TFLOP/s); budget {budget_minutes:g} min" + (" (tiny)" if tiny else ""))
    print(format_rows([], header=True), flush=True)
    for part in [p for p in PARTS if p in parts]:
        box = BOXES[part] if not tiny else 60
        if c.left() < box:
            c.rows.append({"track": part, "part": "skipped", "what": f"{c.left():.0f} s left of the budget, the "
                           f"part's box is {box} s", "seconds": 0, "steps": None, "steps_planned": None,
                           "steps_per_s": None, "peak_gpu_gb": None, "quality": None, "quality_name": "",
                           "reference": "", "error": None})
            print(format_rows(c.rows[-1:], header=False), flush=True)
            continue
        RUNNERS[part](c, box)
    out = {"environment": env, "budget_minutes": budget_minutes, "tiny": tiny,
           "total_seconds": round(time.perf_counter() - c.t0, 1), "rows": c.rows}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {json_path}")
    return out


COLUMNS = ("track", "part", "seconds", "steps", "steps/s", "peak GB", "quality", "what it is")


def format_rows(rows: list[dict], header: bool = True) -> str:
    def cells(r):
        steps = "-" if r["steps"] is None else f"{r['steps']}" + (f"/{r['steps_planned']}" if r["steps_planned"] else "")
        q = "-" if r["quality"] is None else f"{r['quality']} {r['quality_name']}"
        return [r["track"], r["part"], f"{r['seconds']:.1f}", steps, f"{r['steps_per_s'] or '-'}",
                f"{r['peak_gpu_gb'] if r['peak_gpu_gb'] is not None else '-'}", q,
                r["what"] + (f" | {r['reference']}" if r["reference"] else "")
                + (f" | ERROR {r['error'][:300]}" if r.get("error") else "")]
    widths = (10, 13, 8, 12, 8, 8, 60)
    lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths)) + "  " + COLUMNS[-1]] if header else []
    for r in rows:
        cs = cells(r)
        lines.append("  ".join(x.ljust(w) for x, w in zip(cs, widths)) + "  " + cs[-1])
    return "\n".join(lines)
