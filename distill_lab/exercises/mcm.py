"""Exercises of lab 37's Motion Consistency Model section: the motion-only consistency loss, and a
prediction on where the frames go."""

from __future__ import annotations

import torch

from . import compare, compare_loss, implement, prediction


# ---------------------------------------------------------------- lab 37: MCM's disentangled motion distillation
def _motion_cd_variant(pixels=False, detach=True, first_frame=False, backwards=False, at_t=False, total=False):
    """MCM's motion-only consistency loss with one Euler teacher step (exercise 37.motion_cd), and its wrong
    variants: the distance on pixels, the target not detached, differences against the first frame
    instead of the frame before, the teacher stepping towards noise, the target read at the start time,
    squared differences summed instead of averaged."""
    def represent(x):
        if pixels:
            return x
        return x[:, 1:] - x[:, :1] if first_frame else x[:, 1:] - x[:, :-1]

    def loss(f, f_target, velocity, x_t, t, t_next):
        h = (t_next - t).view(-1, *[1] * (x_t.dim() - 1))
        with torch.no_grad():
            x_hat = x_t - h * velocity(x_t, t) if backwards else x_t + h * velocity(x_t, t)
        target = represent(f_target(x_hat, t if at_t else t_next))
        if detach:
            target = target.detach()
        diff = (represent(f(x_t, t)) - target).pow(2)
        return diff.sum() if total else diff.flatten(1).mean(1).mean()
    return loss


_motion_cd = _motion_cd_variant()


class _Linear(torch.nn.Module):
    """``F(x, t) = w x + b (1 + t) (frame index + 1)``: a velocity-shaped net whose parameters take gradients."""

    def __init__(self, w: float, b: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, x, t):
        ramp = (1 + torch.arange(x.shape[1], dtype=x.dtype)).view(1, -1, 1, 1, 1)
        return self.w * x + self.b * (1 + t.view(-1, 1, 1, 1, 1)) * ramp


def _consistency(net):
    return lambda x, t: x + (1 - t.view(-1, 1, 1, 1, 1)) * net(x, t)


@implement("37.motion_cd", "MCM's disentangled motion distillation: the consistency loss on frame differences",
           solution=_motion_cd,
           wrong={"the distance on pixels (plain consistency distillation)": _motion_cd_variant(pixels=True),
                  "the EMA target not detached": _motion_cd_variant(detach=False),
                  "each frame minus the first frame, not minus the frame before": _motion_cd_variant(first_frame=True),
                  "the teacher's step taken towards noise (t decreasing)": _motion_cd_variant(backwards=True),
                  "the target evaluated at t instead of t_next": _motion_cd_variant(at_t=True),
                  "squared differences summed, not averaged": _motion_cd_variant(total=True)})
def _check_motion_cd(fn) -> str:
    """``fn(f, f_target, velocity, x_t [B, F, C, H, W], t [B], t_next [B]) -> loss`` must equal
    :func:`~distill_lab.video.mcm.motion_cd_loss` (one Euler teacher step, frame differences) in value and
    in the gradient to the student's parameters, and send none to the EMA target's."""
    from ..video.mcm import motion_cd_loss

    g = torch.Generator().manual_seed(37)
    teacher = _Linear(-0.6, 0.3)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for case in range(3):
        x_t = torch.randn(3, 4, 1, 5, 5, generator=g, dtype=torch.float64)
        t = torch.rand(3, generator=g, dtype=torch.float64) * 0.8
        t_next = t + 0.05 + 0.1 * torch.rand(3, generator=g, dtype=torch.float64)
        w, b = (float(v) for v in torch.randn(2, generator=g))
        mine_net, ref_net, target_net = _Linear(w, b), _Linear(w, b), _Linear(0.5 * w, -b)
        mine = fn(_consistency(mine_net), _consistency(target_net), teacher, x_t, t, t_next)
        ref = motion_cd_loss(_consistency(ref_net), _consistency(target_net), teacher, x_t, t, t_next)[0]
        # the parameters as the leaves compare_loss reads (w and b stacked through a view would not be leaves)
        compare_loss(mine, ref, mine_net.w, ref_net.w, f"in case {case + 1}", frozen=target_net.w,
                     frozen_message="the loss sends a gradient to the EMA target's parameters: detach the "
                                    "target (it is under stop-gradient; only the student learns)")
        compare(mine_net.b.grad, ref_net.b.grad, f"the gradient to the student's second parameter in case {case + 1}")
    return "equals motion_cd_loss in value and gradient on three random cases, and leaves the EMA target alone"


prediction("37.mcm_width", "with the same frame discriminator and budget, is the sprite width of MCM's frames "
           "(motion-only distillation) closer to the stills' than that of pixel consistency distillation's, about "
           "the same, or further from them?",
           ("closer to the stills", "about the same", "further from the stills"), solution="closer to the stills")
