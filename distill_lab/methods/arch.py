"""Architecture distillation: a student with a cheaper token mixer learns to stand in for its teacher.

Step distillation keeps the network and cuts the number of calls; architecture distillation keeps
the number of calls and makes each call cheaper. The case built here is the one LinFusion made
practical for diffusion models (Liu et al. 2024, "LinFusion: 1 GPU, 1 minute, 16K image",
arXiv:2409.02097): every softmax self-attention layer of a trained velocity network, whose cost grows
with the *square* of the number of pixels it attends over, is replaced by a linear-attention layer
(Katharopoulos et al. 2020, "Transformers are RNNs", sec. 3.2), whose cost grows *linearly*; the rest
of the network is kept.

The recipe, as LinFusion describes it and as :func:`train_linear_attention` does it:

1. **Initialise from the teacher.** The student is a copy of the teacher with each
   :class:`~distill_lab.nets.attention.Attention` switched to ``kind="linear"``. Both kinds have the same
   parameters (query, key, value and output projections), so the teacher's weights load unchanged
   (:func:`linear_attention_student`). Straight after the swap the student is already a working
   network, just a worse one: that swap, untrained, is the baseline a distilled student must beat.
2. **Train only the new token mixers.** Everything but the attention layers stays frozen at the
   teacher's values.
3. **Distil outputs and features.** On the teacher's own training distribution (``x_t`` on the
   straight path between noise and a real image, ``t`` uniform), the loss of :func:`arch_distill_loss`
   adds three squared errors: the flow-matching task loss against ``x1 - x0``; the output
   distillation term against the teacher's velocity; and a feature term, per attention layer,
   against the teacher's layer output. The teacher provides its velocity and its per-layer
   attention outputs at the same ``(x_t, t)``; both are under stop-gradient (computed under
   ``torch.no_grad``).

Where the speed comes from (:func:`attention_cost`): for ``N`` tokens of ``d`` channels a softmax
layer forms the ``N x N`` weight matrix, ``2 N^2 d`` multiply-adds; linear attention forms the
``d x d`` matrix ``phi(K)^T V`` first, ``2 N d^2``. The ratio is ``N / d``: nothing at the 8 x 8 level
of a small U-Net (64 tokens of 64 channels), 16x at 16 x 16 pixels with 16 channels, and growing with
the square of the image side. :func:`forward_seconds` and :func:`mixer_seconds` measure it.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch
from torch import nn

from ..core.flows import interpolate
from ..nets.attention import ATTENTION_KINDS, Attention, mix_tokens

__all__ = ["attention_layers", "use_fused_softmax", "capture_attention", "linear_attention_student", "arch_distill_loss",
           "train_linear_attention", "attention_cost", "forward_seconds", "mixer_seconds"]


def attention_layers(net: nn.Module) -> dict[str, Attention]:
    """Every :class:`~distill_lab.nets.attention.Attention` inside ``net``, by module name."""
    return {name: m for name, m in net.named_modules() if isinstance(m, Attention)}


def use_fused_softmax(net: nn.Module, on: bool = True) -> nn.Module:
    """Switch every softmax attention layer of ``net`` to torch's fused kernel (or back); returns ``net``.

    Same function, faster on most hardware: time a softmax teacher this way before crediting linear
    attention with a speed-up (:class:`~distill_lab.nets.attention.Attention`, ``fused``)."""
    for layer in attention_layers(net).values():
        layer.fused = bool(on)
    return net


@contextmanager
def capture_attention(net: nn.Module):
    """Record what each attention layer adds to its input during forward passes inside the block.

    Yields a dict ``{layer name: out - in}`` filled by forward hooks: the residual branch
    ``proj(mix(q, k, v))`` of each :class:`~distill_lab.nets.attention.Attention`, which is the part the token
    mixer computes (the input itself passes through unchanged). The hooks are removed on exit.
    """
    feats: dict[str, torch.Tensor] = {}
    handles = []
    for name, layer in attention_layers(net).items():
        def hook(module, inputs, output, name=name):
            feats[name] = output - inputs[0]
        handles.append(layer.register_forward_hook(hook))
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


def linear_attention_student(teacher: nn.Module, kind: str = "linear", freeze_rest: bool = True) -> nn.Module:
    """A copy of ``teacher`` whose attention layers use ``kind``; only those layers train.

    LinFusion's initialisation (Liu et al. 2024): the student inherits all of the teacher's weights,
    the attention projections included (the two kinds share their parameters, see
    :class:`~distill_lab.nets.attention.Attention`), and with ``freeze_rest`` every other parameter is frozen,
    so distillation can only change the token mixers. ``teacher`` is not modified.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")
    layers = attention_layers(teacher)
    if not layers:
        raise ValueError("the teacher has no attention layers to replace; build it with attention=True or "
                         "attn_levels=(0,) (e.g. the 'attn' variant of the CIFAR flow teacher: "
                         "CifarFlow(scale, variant='attn'))")
    if hasattr(type(teacher), "from_net"):
        student = type(teacher).from_net(teacher, attn_kind=kind)
    else:
        import copy
        student = copy.deepcopy(teacher)
    for layer in attention_layers(student).values():
        layer.kind = kind
    student.train()
    for name, p in student.named_parameters():
        p.requires_grad_(not freeze_rest or any(name.startswith(a + ".") for a in attention_layers(student)))
    return student


def arch_distill_loss(student: nn.Module, teacher: nn.Module, x1: torch.Tensor, x0: torch.Tensor | None = None,
                      t: torch.Tensor | None = None, w_task: float = 1.0, w_out: float = 1.0,
                      w_feat: float = 1.0):
    """LinFusion-style distillation loss of a cheaper-attention student (Liu et al. 2024, sec. 3).

    With ``x_t = (1 - t) x0 + t x1`` (noise ``x0``, data ``x1``, ``t ~ U(0, 1)``)::

        L = w_task * || v_S(x_t, t) - (x1 - x0) ||^2                       (flow-matching task loss)
          + w_out  * || v_S(x_t, t) - sg[v_T(x_t, t)] ||^2                  (output distillation)
          + w_feat * mean_l || A_S^l(x_t, t) - sg[A_T^l(x_t, t)] ||^2       (feature matching)

    each a mean over entries, where ``A^l`` is what attention layer ``l`` adds to its input
    (:func:`capture_attention`), each network in its own forward pass. LinFusion's objective has the
    same three parts (noise-prediction loss, output knowledge distillation, per-layer feature
    matching of the self-attention outputs); here the noise prediction is the velocity of the flow.

    What the teacher provides: its velocity ``v_T`` and its attention layers' outputs at the same
    ``(x_t, t)``. Stop-gradient: all of it (the teacher runs under ``torch.no_grad``).

    Shapes: ``x1: [B, ...]``; ``x0`` (default fresh Gaussian noise) like ``x1``; ``t: [B]`` (default
    uniform). Returns ``(loss, info)`` with the three detached terms in ``info``.
    """
    t_layers, s_layers = attention_layers(teacher), attention_layers(student)
    if w_feat and sorted(t_layers) != sorted(s_layers):
        raise ValueError(f"feature matching needs the same attention layers in student and teacher; got "
                         f"{sorted(s_layers)} and {sorted(t_layers)}. Build the student with "
                         "linear_attention_student(teacher), or pass w_feat=0")
    if x0 is None:
        x0 = torch.randn_like(x1)
    if t is None:
        t = torch.rand(x1.shape[0], device=x1.device)
    xt = interpolate(x0, x1, t)
    with torch.no_grad(), capture_attention(teacher) as f_t:
        v_t = teacher(xt, t)                      # stop-gradient: teacher velocity and features
    with capture_attention(student) as f_s:
        v_s = student(xt, t)
    task = (v_s - (x1 - x0)).pow(2).mean()
    out = (v_s - v_t).pow(2).mean()
    if w_feat and f_t:
        feat = torch.stack([(f_s[k] - f_t[k]).pow(2).mean() for k in f_t]).mean()
    else:
        feat = v_s.new_zeros(())
    loss = w_task * task + w_out * out + w_feat * feat
    return loss, {"loss": loss.detach(), "task": task.detach(), "out": out.detach(), "feat": feat.detach()}


def train_linear_attention(exp, steps: int | None = None, batch: int | None = None, lr: float = 1e-3,
                           kind: str = "linear", w_task: float = 1.0, w_out: float = 1.0, w_feat: float = 1.0,
                           freeze_rest: bool = True, seed: int = 0):
    """Distil ``exp.teacher`` (softmax attention) into a student with ``kind`` attention.

    ``exp`` is an experiment with the Toy2D interface whose teacher has attention layers: on images,
    ``CifarFlow(scale, variant="attn")``. Builds :func:`linear_attention_student` and minimises
    :func:`arch_distill_loss` on ``exp.data_batch(batch)`` with Adam (``lr``, gradients clipped at
    norm 1) for ``steps`` (default ``exp.scale.student_steps``). Returns ``(student, history)``; the
    student is a velocity network called like the teacher, in eval mode.
    """
    torch.manual_seed(seed)
    steps = steps or exp.scale.student_steps
    batch = batch or exp.scale.batch
    student = linear_attention_student(exp.teacher, kind, freeze_rest)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)

    def step(i):
        loss, info = arch_distill_loss(student, exp.teacher, exp.data_batch(batch), w_task=w_task, w_out=w_out,
                                       w_feat=w_feat)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return info

    hist = exp.fit(step, steps, desc=f"{kind}-attention student")
    return student.eval(), hist


# --------------------------------------------------------------------------- what it costs
def attention_cost(tokens: int, dim: int, kind: str) -> int:
    """Multiply-adds of one head's token mixing for ``tokens`` tokens of ``dim`` channels.

    ``"softmax"``: ``q k^T`` and ``w v``, ``2 N^2 d``. ``"linear"``: ``phi(k)^T v`` and ``phi(q) (.)``,
    ``2 N d^2``, plus the normaliser ``2 N d``. (The projections, the same for both, are left out.)
    """
    if kind == "softmax":
        return 2 * tokens * tokens * dim
    if kind == "linear":
        return 2 * tokens * dim * dim + 2 * tokens * dim
    raise ValueError(f"unknown attention kind {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _median_seconds(fn, device, repeats: int, warmup: int) -> float:
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward_seconds(net: nn.Module, x: torch.Tensor, t: torch.Tensor | float = 0.5, repeats: int = 5,
                    warmup: int = 1) -> float:
    """Median wall seconds of one no-grad forward ``net(x, t)`` (CUDA synchronised when on a GPU)."""
    tt = torch.full((x.shape[0],), float(t), device=x.device) if not torch.is_tensor(t) else t
    return _median_seconds(lambda: net(x, tt), x.device, repeats, warmup)


def mixer_seconds(tokens: int, dim: int, heads: int = 1, batch: int = 64, kinds=("softmax", "linear"),
                  repeats: int = 5, warmup: int = 1, device: str | torch.device = "cpu",
                  fused: bool = True) -> dict[str, float]:
    """Median seconds of :func:`~distill_lab.nets.attention.mix_tokens` alone, per kind, on random ``q, k, v``
    of shape ``[batch, heads, tokens, dim]``. With ``fused``, also ``"softmax_fused"``: torch's
    ``scaled_dot_product_attention``, the fastest softmax kernel the build offers, so the comparison
    is not against a slow softmax only."""
    device = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, tokens, dim, generator=g).to(device) for _ in range(3))
    out = {kind: _median_seconds(lambda kind=kind: mix_tokens(q, k, v, kind), device, repeats, warmup)
           for kind in kinds}
    if fused:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        out["softmax_fused"] = _median_seconds(lambda: sdpa(q, k, v), device, repeats, warmup)
    return out
