"""DLRMamba on the LLM track's tasks: a dense state-space teacher distilled into a low-rank one.

"Distilling Low-Rank Mamba for Edge Multispectral Fusion Object Detection" (DLRMamba) factorises the
state transition of its student and adds a structure-aware distillation term that aligns the student's
latent state dynamics with a full-rank teacher's. Here, on a checkable task:

* :func:`train_ssm_teacher` -- a dense :class:`~distill_lab.nets.ssm.SSMLM` trained on the data
  (the track's :func:`~distill_lab.llm.sft.train_sft`, unchanged);
* :func:`distill_ssm` -- a low-rank student of the same width and state size (so the two students
  compared have equal parameters), trained on the data's sequences with forward KL to the teacher's
  logits (:func:`~distill_lab.methods.kd.token.forward_kl_loss`) plus ``state_weight`` times the
  hidden-state alignment (:func:`~distill_lab.nets.ssm.state_alignment_loss`); ``state_weight=0`` is
  logit-only distillation, the comparison the paper's term is measured against.

Stop-gradient: the teacher's logits and states.
"""

from __future__ import annotations

import torch

from ..core.train import fit
from ..methods.kd.token import forward_kl_loss
from ..nets.ssm import SSMLM, SSMConfig, state_alignment_loss
from .rollout import from_data, score
from .sft import cosine_lr, train_sft
from .tasks import Task


def ssm_lm(task: Task, n_layer: int = 2, n_embd: int = 64, state: int = 32, rank: int | None = None) -> SSMLM:
    """A fresh state-space LM sized for ``task`` (its vocabulary and longest prompt plus target)."""
    return SSMLM(SSMConfig(task.tokenizer.vocab_size, task.block_size, n_layer, n_embd, state, rank))


def train_ssm_teacher(task: Task, steps: int, batch: int = 32, lr: float = 3e-3, progress: bool = True,
                      device="cpu", **size) -> SSMLM:
    """A dense state-space teacher: :func:`ssm_lm` (``size``: ``n_layer``, ``n_embd``, ``state``) trained
    on ``task``'s data for ``steps`` steps by :func:`~distill_lab.llm.sft.train_sft`."""
    net = ssm_lm(task, **size).to(device)
    train_sft(net, [task], steps, batch, lr, desc="dense SSM teacher", progress=progress, device=device)
    return net.eval()


def distill_ssm(teacher: SSMLM, task: Task, rank: int, steps: int, state_weight: float = 1.0, batch: int = 32,
                lr: float = 3e-3, progress: bool = True, device="cpu") -> SSMLM:
    """A low-rank student (the teacher's width, depth and state size, transition ``diag + U V^T`` of
    ``rank``) trained for ``steps`` steps on ``task``'s data sequences with
    ``KL(p_teacher || q_student)`` at every target position plus ``state_weight`` times the alignment of
    every layer's hidden-state trajectory (module docstring). Returns the student with ``train_info``
    (the history)."""
    if state_weight < 0:
        raise ValueError(f"state_weight weighs the state alignment: >= 0, got {state_weight}")
    cfg = teacher.config
    student = ssm_lm(task, cfg.n_layer, cfg.n_embd, cfg.state, rank).to(device)
    # pragma: no mutate start (the optimiser's settings, the track's SFT ones: another value is another setting)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.1)
    # pragma: no mutate end
    sched = cosine_lr(opt, steps)
    teacher.eval()

    def step(i):
        c = from_data(task, task.problems(batch, "train"), device)
        s_logits = score(student, task, c)
        s_states = student.last_states
        with torch.no_grad():
            t_logits = score(teacher, task, c)
            t_states = teacher.last_states
        kd = forward_kl_loss(s_logits, t_logits, c.mask)
        align = state_alignment_loss(s_states, t_states) if state_weight else torch.zeros(())
        loss = kd + state_weight * align
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)  # pragma: no mutate (the track's clip)
        opt.step()
        sched.step()
        return {"loss": loss, "kd": kd.detach(), "state_alignment": align.detach()}

    student.train()
    student.train_info = fit(step, steps, desc=f"low-rank SSM student (state weight {state_weight:g})",
                             progress=progress)
    return student.eval()
