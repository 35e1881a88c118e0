"""Exercises of the diffusion-LM lab (45): TAD's temporal-aware loss, and predictions on the speed knob."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import compare_loss, implement, prediction


# ---------------------------------------------------------------- lab 45: diffusion language models
def _tad_variant(swap=False, strict=False, detach=True, per_kind=False):
    """TAD's loss at one trajectory state (exercise 45.1) and its wrong variants: near and far swapped,
    ``<`` for ``<=`` (a position revealed exactly ``k`` passes on made soft), the teacher trained, each
    kind averaged over its own positions instead of over all the masked ones."""
    def loss(s, t, tokens, to_reveal, k, mask):
        logq = F.log_softmax(s, -1)
        logp = F.log_softmax(t.detach() if detach else t, -1)
        near = mask & ((to_reveal < k) if strict else (to_reveal <= k))
        hard, soft = (mask & ~near, near) if swap else (near, mask & ~near)
        ce = -logq.gather(-1, tokens[..., None]).squeeze(-1)
        kl = (logp.exp() * (logp - logq)).sum(-1)
        if per_kind:
            return (ce * hard).sum() / hard.sum().clamp(min=1) + (kl * soft).sum() / soft.sum().clamp(min=1)
        return ((ce * hard).sum() + (kl * soft).sum()) / mask.sum().clamp(min=1)
    return loss


_tad = _tad_variant()


@implement("45.tad_loss", "TAD's temporal-aware loss: hard targets for the positions revealed soon, soft for the rest",
           solution=_tad,
           wrong={"near and far swapped (soft targets for the next passes, hard ones for the distant)": _tad_variant(swap=True),
                  "k passes ahead counted as far (< instead of <=)": _tad_variant(strict=True),
                  "the teacher not detached": _tad_variant(detach=False),
                  "each kind averaged over its own positions (a lone near position weighs as much as all the far ones)":
                  _tad_variant(per_kind=True)})
def _check_tad_loss(fn) -> str:
    """``fn(student_logits [B, N, V], teacher_logits [B, N, V], teacher_tokens [B, N], steps_to_reveal [B, N],
    k, mask [B, N]) -> loss`` must equal :func:`~distill_lab.llm.diffusion.tad_loss` in value and gradient
    at k = 0, 1, 2 and infinity, and send no gradient to the teacher."""
    from ..llm.diffusion import tad_loss

    g = torch.Generator().manual_seed(45)
    B, N, V = 3, 6, 7
    for k in (0, 1, 2, math.inf):
        s = torch.randn(B, N, V, generator=g, dtype=torch.float64)
        t = 3 * torch.randn(B, N, V, generator=g, dtype=torch.float64)
        tokens = torch.randint(0, V, (B, N), generator=g)
        to_reveal = torch.randint(1, 5, (B, N), generator=g)
        mask = torch.rand(B, N, generator=g) < 0.7
        mask[:, 0] = True
        to_reveal[0, :3] = torch.tensor([1, 2, 3])  # a position exactly k passes ahead, for k = 1, 2
        mine_s, ref_s = s.clone().requires_grad_(), s.clone().requires_grad_()
        t_leaf = t.clone().requires_grad_()
        mine = fn(mine_s, t_leaf, tokens, to_reveal, k, mask)
        ref = tad_loss(ref_s, t, tokens, to_reveal, k, mask)[0]
        compare_loss(mine, ref, mine_s, ref_s, f"at k = {k}", frozen=t_leaf,
                     frozen_message="the loss sends a gradient to the teacher's logits: detach them (the teacher is frozen)")
    return "equals tad_loss in value and gradient at k = 0, 1, 2 and infinity, and leaves the teacher alone"


prediction("45.speed", "the base's student view decodes the whole completion in one forward pass instead of one "
           "token a pass: its exact match",
           ("falls below half", "about the same", "rises"), solution="falls below half")
prediction("45.slow", "at one token a pass, which student view is more accurate after the same steps from the same "
           "base: TAD (trained on the teacher view's trajectory states), or mdlm_sft (the base's own loss on the "
           "references, random masks)?",
           ("TAD", "about the same", "mdlm_sft"), solution="mdlm_sft")
