"""Few-step streaming world models distilled from the memory-augmented base model (issue 14, item 2).

The base model (:mod:`distill_lab.video.world_model`) makes each block of a stream with ``teacher_nfe`` Euler
steps over a window ``[memory | context | block]``. A :class:`WorldStudent` is a block-causal copy of it that
makes each block in a few steps (the renoise sampler: predict the clean block, noise it afresh to the next
time) over the same window, with a memory policy of its own: ``"recent"`` (the frames just before the
context: a longer window) or ``"retrieval"`` (the frames seen from nearest the block's camera poses:
Matrix-Game 3.0's camera-aware retrieval) or ``"compressed"`` (RELIC's compressed historical tokens: ``memory x
tokens_per_frame`` frames spread over the whole history, each attended as one token, the mean of its tokens'
keys and values, with its absolute camera pose in its condition). All three hold the keys and values of
``memory`` frames: the same memory.

:func:`train_world_student` distils it with Self Forcing (Huang et al. 2025): the student streams training
trajectories on its own outputs (a random exit step a block carries the gradient, the context is detached),
and each block is scored by DMD (Yin et al. 2024, eqs. 7-8; :func:`~distill_lab.methods.step.dmd.dmd_loss`)
in its own window: the base model as the real score, a fake score trained on the student's blocks. Options:

* ``segments="all"``: **Matrix-Game 3.0's multi-segment DMD**, every block (segment) of the rollout scored in
  its own window, its memory and context the student's own earlier output; ``"last"``: only the last block,
  as a single-segment Self Forcing run;
* ``teacher_memory``: the memory the real score sees (default camera-aware retrieval: the base model judges
  each block against the frames seen from where the block is; the student keeps its own policy);
* ``loop_share``: **RealCam's loop-closed augmentation**, the share of training trajectories that go out and
  come back the same way (:func:`~distill_lab.video.world_model.trajectories`), so that returning to a place
  is in the training data.
"""

from __future__ import annotations

import copy
from pathlib import Path
import time

import torch
from torch import nn

from ..core.registry import with_options
from ..core.train import fit, seed_everything
from ..methods.step.dmd import dmd_loss, fake_score_loss
from .nets import VideoTransformer
from .interactive import MATRIX_GAME, REALCAM, RELIC  # noqa: F401  (the papers, named once)
from .rollout import uniform_times
from .world_model import (POLICIES, WorldModelScale, choose_memory, eval_trajectories, gather_frames, memory_cond,
                          stream_measures, trajectories)

DMD_BETAS = (0.0, 0.99)
STUDENT_POLICIES = POLICIES + ("compressed",)


class WorldStudent(nn.Module):
    """A few-step streaming world model (module docstring): ``net`` block-causal, ``times`` the denoising
    steps' start times, ``policy`` and ``memory``: which and how many earlier frames it recalls."""

    def __init__(self, net: VideoTransformer, wsc: WorldModelScale, times: list[float] | None = None,
                 policy: str = "recent", memory: int | None = None):
        super().__init__()
        if net.mask != "block_causal" or net.block != wsc.block:
            raise ValueError(f"a world student needs a block-causal network with blocks of {wsc.block} frames "
                             "(base_model.as_causal(wsc.block))")
        if policy not in STUDENT_POLICIES:
            raise ValueError(f"the memory policy is one of {', '.join(STUDENT_POLICIES)}, got {policy!r}")
        self.net, self.wsc, self.policy = net, wsc, policy
        self.times = list(times) if times is not None else uniform_times(wsc.student_nfe)
        self.memory = wsc.memory if memory is None else memory

    @property
    def given(self) -> int:
        """Frames a stream starts from (real): the memory and the context of the first block."""
        return self.memory + self.wsc.frames - self.wsc.block

    def recall(self, data: dict, upto: int, start: int) -> tuple[torch.Tensor, int]:
        """Which earlier frames (of ``0 .. upto - 1``) the block at ``start`` recalls, and how many of them are
        compressed: ``memory`` whole frames (recent or retrieved), or with ``"compressed"`` (RELIC's compressed
        historical tokens) ``memory x tokens_per_frame`` frames spread evenly over the whole history, each
        attended as one token (the same number of keys and values)."""
        b = self.wsc.block
        if self.policy != "compressed":
            return choose_memory(data, upto, data["camera"][:, start:start + b], self.memory, self.policy), 0
        P = min(self.memory * self.net.config.tokens_per_frame, upto)
        idx = torch.linspace(0, upto - 1, P).round().long()
        return idx.expand(data["camera"].shape[0], P), P

    def make_block(self, window: torch.Tensor, cond: torch.Tensor, z: torch.Tensor, exit_step: int | None = None,
                   generator: torch.Generator | None = None, compressed: int = 0) -> torch.Tensor:
        """One block from noise ``z [B, b, ...]`` after the clean frames ``window [B, W, ...]`` (memory and
        context; the first ``compressed`` of them attended as one token each), every frame under ``cond [B, W
        + b, 7]``: the renoise sampler over :attr:`times`, stopped after ``exit_step`` (default the last),
        returning that step's clean prediction; only that step is computed with gradient (when gradients are on)."""
        exit_step = len(self.times) - 1 if exit_step is None else exit_step
        B, W, b = z.shape[0], window.shape[1], z.shape[1]
        x = z
        with self.net.conditioned(cond), self.net.compressed(compressed):
            for k, tk in enumerate(self.times[:exit_step + 1]):
                t = torch.ones(B, W + b, device=z.device)
                t[:, W:] = tk
                with torch.set_grad_enabled(torch.is_grad_enabled() and k == exit_step):
                    v = self.net(torch.cat([window, x], 1), t)[:, W:]
                    x1 = x + (1 - tk) * v
                if k < exit_step:
                    t_next = self.times[k + 1]
                    noise = torch.randn(x.shape, generator=generator).to(x.device)
                    x = (1 - t_next) * noise + t_next * x1.detach()
        return x1

    def stream(self, data: dict, exit_steps: list[int] | None = None, generator: torch.Generator | None = None,
               progress: bool = False):
        """Stream over ``data`` (:func:`~distill_lab.video.world_model.trajectories`) from its first :attr:`given`
        frames. Returns ``(stream [B, L, ...] detached, blocks)``, ``blocks`` one ``(start, output, memory_index)``
        a made block, ``output`` with gradient when gradients are on (the Self Forcing rollout: ``exit_steps``
        one a block; the context is always the detached stream)."""
        wsc, b = self.wsc, self.wsc.block
        frames = data["frames"]
        B, L = frames.shape[:2]
        ctx, first = wsc.frames - b, self.given
        if L <= first or (L - first) % b:
            raise ValueError(f"a stream of {L} frames cannot continue {first} given frames in blocks of {b}")
        device = next(self.net.parameters()).device
        g = generator  # None: the global generator (training rollouts draw fresh noise each step)
        out = frames.clone().to(device)
        cond = data["cond"].to(device)
        starts = list(range(first, L, b))
        if exit_steps is not None and len(exit_steps) != len(starts):
            raise ValueError(f"one exit step a block: {len(starts)} blocks, got {len(exit_steps)}")
        blocks = []
        it = starts
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(starts, desc=f"stream ({self.policy})", leave=False)
        for j, s in enumerate(it):
            old = s - ctx
            idx, P = self.recall(data, old, s)
            window = torch.cat([gather_frames(out, idx.to(device)), out[:, old:s]], 1).detach()
            c = torch.cat([memory_cond(wsc.world, data, idx).to(device), cond[:, old:s + b]], 1)
            z = torch.randn(B, b, *frames.shape[2:], generator=g).to(device)
            x = self.make_block(window, c, z, None if exit_steps is None else exit_steps[j], g, compressed=P)
            out[:, s:s + b] = x.detach()
            blocks.append((s, x, idx))
        return out.detach().cpu(), blocks

    @torch.no_grad()
    def sample(self, data: dict, generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        """The stream of :meth:`stream` without gradients, from fixed noise (``generator``, default seeded 0)."""
        self.net.eval()
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        return self.stream(data, generator=g, progress=progress)[0]


def window_velocity(net: VideoTransformer, window: torch.Tensor, cond: torch.Tensor):
    """``v(x_t, t) -> [B, b, ...]``: a network's velocity on a block ``x_t`` at time ``t [B]`` after the clean
    frames ``window`` (memory and context), under ``cond``: what DMD's scores read, block by block."""
    W = window.shape[1]

    def v(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = torch.ones(xt.shape[0], W + xt.shape[1], device=xt.device, dtype=xt.dtype)
        tt[:, W:] = t.reshape(-1, 1).to(xt.dtype)
        with net.conditioned(cond):
            return net(torch.cat([window, xt], 1), tt)[:, W:]
    return v


def segment_windows(wsc: WorldModelScale, data: dict, stream: torch.Tensor, blocks, teacher_memory: str,
                    memory: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each made block, the window the scores read it in: ``teacher_memory`` frames of the stream before its
    context (``"retrieval"`` or ``"recent"``), its context, and the conditions, all detached."""
    out, ctx, b = [], wsc.frames - wsc.block, wsc.block
    device = stream.device
    for s, _, _ in blocks:
        old = s - ctx
        idx = choose_memory(data, old, data["camera"][:, s:s + b], memory, teacher_memory)
        window = torch.cat([gather_frames(stream, idx.to(device)), stream[:, old:s]], 1)
        cond = torch.cat([memory_cond(wsc.world, data, idx), data["cond"][:, old:s + b]], 1).to(device)
        out.append((window, cond))
    return out


def train_world_student(teacher: VideoTransformer, wsc: WorldModelScale, steps: int | None = None, seed: int = 0,
                        progress: bool = True, deadline: float | None = None, **overrides) -> WorldStudent:
    """Self Forcing with DMD for a :class:`WorldStudent` (module docstring). Options: ``policy`` (the student's
    memory), ``segments`` (``"all"``: Matrix-Game 3.0's multi-segment DMD; ``"last"``), ``teacher_memory``,
    ``loop_share`` (RealCam's loop-closed share), ``blocks`` (blocks a training rollout makes), ``batch``,
    ``gen_lr``, ``fake_lr``, ``critic_updates``. Stop-gradient: the base model and the fake score in the DMD
    term (:func:`dmd_loss`), the student's blocks in the fake score's loss, the rollout's context."""
    # pragma: no mutate start (tuned defaults: another value is another setting, not a bug)
    o = with_options(overrides, "world student", policy="recent", segments="all", teacher_memory="retrieval",
                     loop_share=0.0, blocks=4, batch=wsc.batch, gen_lr=5e-5, fake_lr=2e-4, critic_updates=1)
    # pragma: no mutate end
    if o["segments"] not in ("all", "last"):
        raise ValueError(f"segments is 'all' (multi-segment DMD) or 'last', got {o['segments']!r}")
    steps = steps or wsc.student_steps
    seed_everything(seed)
    device = next(teacher.parameters()).device
    net = teacher.as_causal(wsc.block).train()
    for p in net.parameters():
        p.requires_grad_(True)
    student = WorldStudent(net, wsc, policy=o["policy"])
    fake = copy.deepcopy(teacher).train()
    for p in fake.parameters():
        p.requires_grad_(True)
    for p in teacher.parameters():
        p.requires_grad_(False)
    g_opt = torch.optim.Adam(net.parameters(), lr=o["gen_lr"], betas=DMD_BETAS)
    f_opt = torch.optim.Adam(fake.parameters(), lr=o["fake_lr"], betas=DMD_BETAS)
    L = student.given + o["blocks"] * wsc.block
    if L % 2:
        L += wsc.block
    n_steps = len(student.times)

    def step(i):
        data = trajectories(wsc, o["batch"], L, loop_share=o["loop_share"])
        exits = torch.randint(0, n_steps, (o["blocks"],)).tolist()
        stream, blocks = student.stream(data, exits)
        stream = stream.to(device)
        windows = segment_windows(wsc, data, stream, blocks, o["teacher_memory"], student.memory)
        chosen = range(len(blocks)) if o["segments"] == "all" else [len(blocks) - 1]
        logs = {}
        for _ in range(o["critic_updates"]):
            lf = 0.0
            for j in chosen:
                window, cond = windows[j]
                lf = lf + fake_score_loss(window_velocity(fake, window, cond), blocks[j][1].detach())[0]
            lf = lf / len(chosen)
            f_opt.zero_grad(set_to_none=True)
            lf.backward()
            f_opt.step()
            logs["fake_fm"] = float(lf.detach())
        loss, gn = 0.0, 0.0
        for p in fake.parameters():
            p.requires_grad_(False)
        for j in chosen:
            window, cond = windows[j]
            lj, info = dmd_loss(blocks[j][1], window_velocity(teacher, window, cond), window_velocity(fake, window, cond))
            loss, gn = loss + lj, gn + info["grad_norm"]
        for p in fake.parameters():
            p.requires_grad_(True)
        loss = loss / len(chosen)
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        g_opt.step()
        return {**logs, "loss": loss.detach(), "grad_norm": gn / len(chosen)}

    t0 = time.perf_counter()
    hist = fit(step, steps, desc=f"world student ({o['policy']}, {o['segments']})", progress=progress,
               deadline=deadline)
    net.eval()
    student.history, student.options, student.train_seconds = hist, o, time.perf_counter() - t0
    return student


@torch.no_grad()
def evaluate_world_student(student: WorldStudent, n: int | None = None, seed: int = 0) -> dict:
    """The student streamed over the fixed loop-closed evaluation (:func:`eval_trajectories`), measured by
    :func:`stream_measures`, with frames per second and the memory it holds (bytes of the frames in its
    window: memory and context; a compressed frame holds one token of a frame's ``tokens_per_frame``)."""
    wsc = student.wsc
    data = eval_trajectories(wsc, n, seed)
    t0 = time.perf_counter()
    stream = student.sample(data)
    secs = time.perf_counter() - t0
    made = stream.shape[0] * (stream.shape[1] - student.given)
    frame_bytes = stream[0, 0].numel() * 4  # a frame's tokens hold its pixels
    return {**stream_measures(wsc, data, stream, student.given), "frames_per_second": made / secs,
            "memory_bytes": (student.memory + wsc.frames - wsc.block) * frame_bytes, "stream": stream}


# ---------------------------------------------------------------- committed students
#: name -> options of train_world_student (each paper's variant and its baselines, one budget)
VARIANTS = {
    "recent": dict(policy="recent"),                       # a longer window: the baseline memory
    "retrieval": dict(policy="retrieval"),                 # Matrix-Game 3.0: camera-aware retrieval
    "compressed": dict(policy="compressed"),               # RELIC: compressed historical tokens
    "retrieval_loop": dict(policy="retrieval", loop_share=0.5),  # RealCam's loop-closed augmentation
}
SEEDS = (0, 1, 2)
STUDENTS_REBUILD = "python -m distill_lab.video.world_students"


def students_dir(scale: str):
    from ..core.checkpoints import TEACHERS_DIR

    return TEACHERS_DIR / f"worldmodel_{scale}_students"


def delta_state(student: nn.Module, base: nn.Module) -> dict:
    """A student's weights as int8 differences from the base model's, one scale a tensor (``q = round((s - b) /
    scale)``, ``scale = max |s - b| / 127``): a quarter of the bytes of float32, and a fine-tuned student
    differs from its base by little, so the rounding (at most ``scale / 2`` a weight) is small beside it."""
    out, ref = {}, base.state_dict()
    for k, v in student.state_dict().items():
        d = (v.detach().float() - ref[k].detach().float()).cpu()
        scale = float(d.abs().max()) / 127 if d.numel() else 0.0
        q = torch.zeros_like(d, dtype=torch.int8) if scale == 0 else (d / scale).round().to(torch.int8)
        out[k] = {"q": q, "scale": torch.tensor(scale)}
    return out


def apply_delta(base: nn.Module, delta: dict) -> dict:
    """The state dict ``base + q * scale`` (:func:`delta_state`'s inverse, up to its rounding)."""
    ref = base.state_dict()
    if set(ref) != set(delta):
        raise ValueError("the stored student's tensors do not match the base model's: it was made from another one")
    return {k: ref[k].float() + delta[k]["q"].float() * float(delta[k]["scale"]) for k in ref}


def load_world_student(path, teacher: VideoTransformer, wsc: WorldModelScale) -> WorldStudent:
    """A committed student (its record and int8 deltas from ``teacher``), ready to stream."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    r = blob["record"]
    net = teacher.as_causal(wsc.block)
    net.load_state_dict(apply_delta(net, blob["delta"]))
    for p in net.parameters():
        p.requires_grad_(False)
    student = WorldStudent(net.eval(), wsc, times=r["times"], policy=r["policy"], memory=r["memory"])
    student.train_seconds = r.get("train_seconds", float("nan"))
    return student


def committed_world_students(teacher: VideoTransformer, teacher_manifest: dict, wsc: WorldModelScale, name: str,
                             seeds=SEEDS, scale: str = "ci", quiet: bool = False) -> list[WorldStudent]:
    """The committed ``name`` students of ``seeds`` (:data:`VARIANTS`), each checked against the manifest's sha256
    and against the base model it was distilled from; one that is missing or does not match is trained here
    with the same call as the script (a printed line says why: minutes at ``ci``)."""
    import json

    from ..core.checkpoints import stored_student_problem

    if name not in VARIANTS:
        raise ValueError(f"unknown committed world student {name!r}; known: {', '.join(VARIANTS)}")
    folder = students_dir(scale)
    mf = folder / "manifest.json"
    manifest = json.loads(mf.read_text()) if mf.is_file() else None
    want = teacher_manifest["files"]["teacher.pt"]["sha256"]
    out = []
    for seed in seeds:
        f = f"{name}_seed{seed}.pt"
        why = stored_student_problem(folder, manifest, f, want)
        if why is None:
            out.append(load_world_student(folder / f, teacher, wsc))
            continue
        if not quiet:
            print(f"committed world student {f} unusable ({why}): training it ({STUDENTS_REBUILD} rebuilds them all)")
        out.append(train_world_student(copy.deepcopy(teacher), wsc, seed=seed, progress=not quiet, **VARIANTS[name]))
    return out


def main(argv=None) -> dict:
    """Train the committed world students (:data:`VARIANTS` x :data:`SEEDS`) from the committed base model and
    write them with a manifest (command, machine, seconds, the base model's sha256, each file's sha256 and
    each student's measured stream)."""
    import argparse
    import json
    import shlex
    import sys

    from ..core.checkpoints import file_records, machine
    from ..core.scale import get_scale
    from .world_model import load_teacher, teacher_for, world_model_scale

    ap = argparse.ArgumentParser(prog=STUDENTS_REBUILD, description=main.__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default=None)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sc = get_scale(args.scale)
    wsc = world_model_scale(sc)
    loaded = load_teacher(teacher_for(sc)[1])
    teacher, tman = loaded["model"], loaded["manifest"]
    out = Path(args.out) if args.out else students_dir(sc.name)
    out.mkdir(parents=True, exist_ok=True)
    mf = out / "manifest.json"
    manifest = json.loads(mf.read_text()) if mf.is_file() else {"students": {}}
    manifest.update({"what": "distill-lab's committed world students (Self Forcing from the world-model base model)",
                     "scale": sc.name, "teacher_sha256": tman["files"]["teacher.pt"]["sha256"],
                     "command": f"{STUDENTS_REBUILD} " + shlex.join(sys.argv[1:] if argv is None else argv),
                     "machine": machine(), "torch": torch.__version__, "variants": VARIANTS})
    for name in args.variants:
        for seed in args.seeds:
            student = train_world_student(copy.deepcopy(teacher), wsc, steps=args.steps, seed=seed, progress=False,
                                          **VARIANTS[name])
            f = f"{name}_seed{seed}.pt"
            base = teacher.as_causal(wsc.block)
            record = {"times": student.times, "policy": student.policy, "memory": student.memory,
                      "train_seconds": round(student.train_seconds, 1)}
            torch.save({"record": record, "delta": delta_state(student.net, base)}, out / f)
            reloaded = load_world_student(out / f, teacher, wsc)
            m = {k: v for k, v in evaluate_world_student(reloaded).items() if k != "stream"}
            manifest["students"][f] = {"variant": name, "seed": seed, "steps": student.history["steps"],
                                       "train_seconds": round(student.train_seconds, 1), "measured": m,
                                       **file_records(out, [f])[f]}
            mf.write_text(json.dumps(manifest, indent=2) + "\n")
            print(f"{f}: {student.train_seconds:.0f} s, revisit {m['revisit']:.4f}, loop {m['loop_closure']:.4f}, "
                  f"action {m['action_following']:.4f}", flush=True)
    return manifest


if __name__ == "__main__":
    main()
