"""Where does a distillation gradient point? The gradient-alignment diagnostic of "Unmasking On-Policy
Distillation: Where It Helps, Where It Hurts, and Why", at one node (a prompt and a prefix of a rollout).

At a node the student's next-token distribution is ``q = softmax(z)``. Its probability of finally
succeeding is ``V = sum_y q_y Q_y``, with ``Q_y`` the success probability after writing token ``y``. The
**ideal** per-node gradient is the direction in logit space that raises ``V`` fastest:
``dV / dz_y = q_y (Q_y - V)`` (:func:`ideal_logit_direction`); ``Q`` is estimated by Monte-Carlo
rollouts of the student from the node (:func:`action_values`), which is why the diagnostic needs a task
small enough to roll out many times. A distillation loss's descent direction in the same logits
(:func:`kd_logit_direction`) is scored by its cosine with the ideal one (:func:`alignment`): 1 when it
points exactly where success lies, 0 when it is blind to it, negative when it hurts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..methods.kd.common import _kl_probs
from ..methods.kd.token import _up
from .gpt import generate
from .tasks import Problem, Task


def ideal_logit_direction(logits: torch.Tensor, action_values: torch.Tensor) -> torch.Tensor:
    """``q ⊙ (Q - sum q Q)``: the gradient of the success probability with respect to the logits of the
    node (``[..., V]`` both; ``Q_y`` in [0, 1])."""
    if logits.shape != action_values.shape:
        raise ValueError(f"logits and action values must be aligned [..., V], got {tuple(logits.shape)} and "
                         f"{tuple(action_values.shape)}")
    q = F.softmax(_up(logits), -1)
    return q * (action_values - (q * action_values).sum(-1, keepdim=True))


def kd_logit_direction(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "forward") -> torch.Tensor:
    """The descent direction ``-dL/dz`` of a token-level distillation loss at the node, in the student's
    logits: forward KL ``KL(p || q)`` gives ``p - q``; reverse KL ``KL(q || p)`` gives
    ``q ⊙ (log p - log q + KL(q || p))``."""
    logq = F.log_softmax(_up(student_logits), -1)
    logp = F.log_softmax(teacher_logits.to(logq.dtype), -1)
    q, p = logq.exp(), logp.exp()
    if kind == "forward":
        return p - q
    if kind == "reverse":
        kl = _kl_probs(q, logq, logp)[..., None]
        return q * (logp - logq + kl)
    raise ValueError(f"kind is 'forward' or 'reverse', got {kind!r}")


def alignment(direction: torch.Tensor, ideal: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The gradient-alignment score: the cosine of two directions over the vocabulary, ``[...]``."""
    return (direction * ideal).sum(-1) / (direction.norm(dim=-1) * ideal.norm(dim=-1)).clamp(min=eps)


@torch.no_grad()
def action_values(model, task: Task, problem: Problem, prefix: list[int], candidates: list[int], n: int = 16,
                  temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte-Carlo ``Q_y``: for each candidate next token ``y``, ``n`` continuations of the student
    sampled after the prompt, ``prefix`` and ``y`` (at ``temperature``), and the share that the task's
    checker accepts. ``[len(candidates)]`` in [0, 1]. A candidate that ends the completion is judged
    as it stands."""
    tok = task.tokenizer
    prompt = task.encode_prompts([problem])[0].tolist()
    budget = task.max_new_tokens - len(prefix) - 1
    if budget < 0:
        raise ValueError(f"the prefix ({len(prefix)} tokens) leaves no room in the task's {task.max_new_tokens}")
    was = model.training
    model.eval()
    out = []
    for y in candidates:
        written = prefix + [y]
        if y == tok.eos_id or budget == 0:
            out.append(float(task.check(problem, tok.decode(written))))
            continue
        seq = torch.tensor([prompt + written] * n, dtype=torch.long, device=next(model.parameters()).device)
        r = generate(model, seq, budget, temperature=temperature, eos_id=tok.eos_id, pad_id=tok.pad_id,
                     generator=generator)
        texts = [tok.decode(written + row.tolist()) for row in r.generated.cpu()]
        out.append(sum(task.check(problem, t) for t in texts) / n)
    model.train(was)
    return torch.tensor(out)
