"""rCM: score-regularised continuous-time consistency (sCM + lambda * DMD).

Zheng, Wang, Ma, Chen, Zhang, Balaji, Chen, Liu, Zhu & Zhang (2025), "Large Scale Diffusion
Distillation via Score-Regularized Continuous-Time Consistency" (arXiv 2510.08431, ICLR 2026).

sCM (:func:`distill_lab.methods.step.consistency.scm_loss`) is a *forward*-divergence, mode-covering
objective: it follows the teacher's ODE locally and accumulates error over the long jump to data.
rCM adds DMD (:func:`distill_lab.methods.step.dmd.dmd_loss`), a *reverse*-divergence, mode-seeking
"long-skip" regulariser applied to the consistency model's own few-step output, with a fake
velocity trained alongside on those outputs::

    L_rCM(theta) = L_sCM(theta) + lambda * L_DMD(f_theta(z))

A method is its loss terms and its update schedule: :func:`rcm_losses` composes the two terms; the
recipe ``rcm`` runs sCM alone during the tangent warm-up, then alternates ``critic_updates``
fake-velocity updates with one student update on the sum, as the paper's reference code does.
"""

from __future__ import annotations

import torch

from ...core.flows import Velocity, batch_t, interpolate
from ...core.registry import recipe
from .consistency import scm_loss
from .dmd import dmd_loss, fake_score_loss, frozen
from .students import ConsistencyFunction


def _check(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a batch shaped [B, ...] (e.g. [B, 2]), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def rcm_losses(f, velocity: Velocity, fake_velocity: Velocity, x_t: torch.Tensor, t: torch.Tensor,
               gen_x: torch.Tensor, gen_t: torch.Tensor | float = 0.0, lam: float = 1.0, *,
               tangent_warmup: float = 1.0, norm_const: float = 0.1, dmd_t: torch.Tensor | None = None,
               dmd_noise: torch.Tensor | None = None, normalize: bool = True):
    r"""The rCM student loss: sCM on ``(x_t, t)`` plus ``lam`` times DMD on the student's jump to data.

    Zheng et al. (2025), "Large Scale Diffusion Distillation via Score-Regularized Continuous-Time
    Consistency", Sec. 4 (the rCM objective, :math:`\mathcal L_\text{sCM} + \lambda\, \mathcal L_\text{DMD}`).
    The sCM term is Lu & Song (2024), eq. 8 with tangent normalisation
    (:func:`~distill_lab.methods.step.consistency.scm_loss`); the DMD term is Yin et al. (2024), eqs. 7-8
    (:func:`~distill_lab.methods.step.dmd.dmd_loss`) applied to ``x_gen = f(gen_x, gen_t)``: the one-step
    output from noise (``gen_t = 0``) or, for a few-step rollout, from a re-noised intermediate point.

    Weighting: both terms are means over all entries, and both have per-entry gradients of order one
    (sCM's tangent is normalised by its rms, DMD's gradient by ``mean |x - x_real|``), so ``lam`` is
    the ratio of the two pushes. The paper's code scales sCM by 100 and DMD by 1 (``lambda = 0.01``),
    but its tangent is normalised by the *L2 norm* over a whole video and its DMD term is summed, so
    that number does not carry over; the recipe's default ``lam = 3`` was measured on the toy data
    (at ci, 600 steps: 1-step ratio 5.97 / 4.44 / 3.44 / 3.73 for ``lam`` = 0.3 / 1 / 3 / 10).

    What the teacher provides: ``velocity(x, t)`` -- the ODE direction in sCM's tangent and the real
    score in DMD. ``fake_velocity`` is the velocity of the student's samples, trained separately with
    :func:`~distill_lab.methods.step.dmd.fake_score_loss`.
    Stop-gradient: sCM's target ``f^- + g`` (the jvp of the detached network along the teacher's
    velocity) is detached; DMD's teacher and fake predictions are under ``no_grad`` and its target is
    detached; ``gen_x`` is detached (a rollout carries no gradient). Gradient reaches the student's
    parameters through ``f(x_t, t)`` and ``f(gen_x, gen_t)`` only -- never the teacher or the fake net.

    Shapes: ``x_t, gen_x: [B, ...]``; ``t: [B]`` in ``[0, 1]``; ``gen_t`` scalar or ``[B]`` in ``[0, 1)``;
    ``dmd_t: [B]`` in ``[0, 1)`` (default U[0.02, 0.98]). Returns ``(loss, info)`` with ``info``: ``scm``,
    ``dmd`` (unweighted), ``grad_norm`` (DMD), ``dfdt_rms`` and ``x_gen`` (detached, for the fake update).
    """
    _check(x_t, "x_t")
    _check(gen_x, "gen_x")
    lam = float(lam)
    if not lam >= 0:
        raise ValueError(f"lam (the weight of the DMD regulariser) must be >= 0, got {lam}")
    gen_t = batch_t(gen_t, gen_x)
    if gen_t.shape != (gen_x.shape[0],) or (gen_t < 0).any() or (gen_t >= 1).any():
        raise ValueError(f"gen_t must be a scalar or shape [B]=[{gen_x.shape[0]}] with values in [0, 1) "
                         "(the time the student jumps to data from)")
    l_scm, i_scm = scm_loss(f, velocity, x_t, t, tangent_warmup=tangent_warmup, norm_const=norm_const)
    x_gen = f(gen_x.detach(), gen_t)
    l_dmd, i_dmd = dmd_loss(x_gen, velocity, fake_velocity, t=dmd_t, noise=dmd_noise, normalize=normalize)
    loss = l_scm + lam * l_dmd
    info = {"scm": float(l_scm.detach()), "dmd": float(l_dmd.detach()), "grad_norm": i_dmd["grad_norm"],
            "dfdt_rms": float(i_scm["dfdt_rms"]), "x_gen": x_gen.detach()}
    return loss, info


@torch.no_grad()
def rollout_input(f, z: torch.Tensor, k: int, nfe_grid: int = 2):
    """The point the student jumps from after ``k`` no-grad jumps of its ``nfe_grid``-step sampler.

    ``k = 0`` is ``(z, 0)``; ``k >= 1`` re-noises the previous jump's output to ``t_k = k / nfe_grid``
    with fresh noise (:meth:`ConsistencyFunction.sample`'s grid). Returns ``(x [B, ...], t [B])``.
    """
    if not 0 <= k < nfe_grid:
        raise ValueError(f"k must be in [0, {nfe_grid}), got {k}")
    x, t = z, torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
    for j in range(1, k + 1):
        tj = torch.full_like(t, j / nfe_grid)
        x = interpolate(torch.randn_like(z), f(x, t), tj)
        t = tj
    return x, t


@recipe("rcm", tracks=("toy2d", "cifar-gen"), family="consistency", nfes=(1, 2),
        paper="Zheng et al. 2025, Large Scale Diffusion Distillation via Score-Regularized Continuous-Time Consistency")
def train_rcm(exp, steps=None, **overrides):
    """rCM distillation: the sCM recipe's training points and tangent warm-up, plus DMD on the student's output.

    Student: :class:`ConsistencyFunction` warm-started from the teacher (like ``scm``); fake velocity
    warm-started from the teacher. Schedule (after the paper's code): the first ``warmup`` fraction of
    steps is plain sCM with the tangent warm-up ``r: 0 -> 1``; then each step runs ``critic_updates``
    fake-velocity updates (flow matching on the student's outputs, Adam betas (0, 0.99)) and one
    student update on :func:`rcm_losses`. The DMD input alternates between the 1-step output and the
    second jump of the 2-step sampler (``rollout=True``), so both NFEs are regularised.
    ``lam = 0`` is plain sCM on this schedule (no fake velocity is trained): the ablation.
    Defaults: ``lam = 3``, student lr 2e-4 (Adam betas (0.9, 0.99), as ``scm``), fake lr 4e-4 (betas
    (0, 0.99)), ``critic_updates = 2``, batch 512 at ci, warm-up 20% of the steps.
    Overrides: ``lam``, ``lr``, ``fake_lr``, ``batch``, ``warmup``, ``norm_const``, ``critic_updates``,
    ``rollout``.
    """
    sc = exp.scale
    o = dict(lam=3.0, lr=sc.pick(ci=2e-4, default=1e-4, gpu=1e-4), fake_lr=4e-4,
             batch=sc.pick(ci=512, default=1024, gpu=4096), warmup=0.2, norm_const=0.1, critic_updates=2,
             rollout=True)
    unknown = set(overrides) - set(o)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for rcm; known: {sorted(o)}")
    o.update(overrides)
    if int(o["critic_updates"]) < 1:
        raise ValueError(f"critic_updates must be at least 1 (the fake velocity must track the student), "
                         f"got {o['critic_updates']}")
    steps = steps or sc.pick(ci=600, default=3000, gpu=20000)
    f = ConsistencyFunction(exp.student_net(1))
    fake = exp.student_net(1)
    opt = torch.optim.Adam(f.parameters(), lr=o["lr"], betas=(0.9, 0.99))
    f_opt = torch.optim.Adam(fake.parameters(), lr=o["fake_lr"], betas=(0.0, 0.99))
    n_warm = max(1, int(o["warmup"] * steps))
    B = o["batch"]

    def step(i):
        x1, x0 = exp.data_batch(B), exp.noise_batch(B)
        t = torch.rand(B, device=x1.device) * 0.999
        x_t = interpolate(x0, x1, t)
        r = min(1.0, (i + 1) / n_warm)
        logs = {}
        if i < n_warm or o["lam"] == 0:  # tangent warm-up (or lam = 0): sCM alone, no fake velocity
            loss, info = scm_loss(f, exp.velocity, x_t, t, tangent_warmup=r, norm_const=o["norm_const"])
            logs.update(scm=float(loss.detach()), dfdt_rms=float(info["dfdt_rms"]))
        else:
            k = (i % 2) if o["rollout"] else 0
            for _ in range(o["critic_updates"]):
                gx, gt = rollout_input(f, exp.noise_batch(B), k)
                with torch.no_grad():
                    xg = f(gx, gt)
                lf, _ = fake_score_loss(fake, xg)
                f_opt.zero_grad(set_to_none=True)
                lf.backward()
                f_opt.step()
            gx, gt = rollout_input(f, exp.noise_batch(B), k)
            with frozen(fake):
                loss, info = rcm_losses(f, exp.velocity, fake, x_t, t, gx, gt, o["lam"], tangent_warmup=r,
                                        norm_const=o["norm_const"])
            logs.update(scm=info["scm"], dfdt_rms=info["dfdt_rms"], dmd=info["dmd"], fake_fm=float(lf.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        logs["loss"] = float(loss.detach())
        return logs

    f.history = exp.fit(step, steps, desc="rcm")
    f.fake, f.config = fake, dict(o, steps=steps)
    return f.eval()
