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
from .rollout import Completions, score
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


# ----------------------------------------------------------------------------- PW-OPSD's branch viability
@torch.no_grad()
def branch_viability(student, teacher, task: Task, problems: list[Problem], tokens: torch.Tensor,
                     mask: torch.Tensor) -> dict:
    """PW-OPSD's branch-viability diagnostic ("When Are Teacher Tokens Reliable?"): at every position
    ``t`` of the student's rollouts ``tokens [B, T]`` (``mask`` the trained positions), take the teacher
    view's most likely next token after the same prefix (``teacher`` reads the privileged prompt), force
    it after the **student** prompt and the rollout's first ``t`` tokens, let the student decode greedily
    from there, and record whether that continuation reaches the right answer: the teacher token is
    *viable* there. Returns flat ``[N]`` tensors over the masked positions: ``viable`` (bool),
    ``position`` (the position's rank in its rollout, 0 to 1), ``entropy`` (the teacher view's entropy
    there, nats) and ``agrees`` (the teacher token equals the one the student sampled). Score a
    predictor of reliability with :func:`auroc`."""
    c = Completions(problems, tokens, mask, None, "student")
    t_logits = score(teacher, task, c, privileged=True).float()
    choice = t_logits.argmax(-1)
    logp = F.log_softmax(t_logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    B, T = tokens.shape
    prompts = task.encode_prompts(problems).to(tokens.device)
    rows, where = [], []
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                rows.append(torch.cat([prompts[b], tokens[b, :t], choice[b, t:t + 1]]))
                where.append((b, t))
    viable = torch.zeros(len(rows), dtype=torch.bool)
    was = student.training
    student.eval()
    for t in range(T):  # one batch a prefix length (the prompts share one length)
        idx = [i for i, (_, tt) in enumerate(where) if tt == t]
        if not idx:
            continue
        seq = torch.stack([rows[i] for i in idx])
        r = generate(student, seq, task.max_new_tokens - t - 1, temperature=0.0, eos_id=task.tokenizer.eos_id,
                     pad_id=task.tokenizer.pad_id) if task.max_new_tokens - t - 1 > 0 else None
        for j, i in enumerate(idx):
            b = where[i][0]
            ids = seq[j, prompts.shape[1]:].tolist() + (r.generated[j].tolist() if r is not None else [])
            viable[i] = task.check(problems[b], task.tokenizer.decode(ids))
    student.train(was)
    length = mask.sum(1).float()
    pos = torch.tensor([t / max(1.0, float(length[b]) - 1) for b, t in where])
    return {"viable": viable, "position": pos, "entropy": torch.stack([entropy[b, t] for b, t in where]).cpu(),
            "agrees": torch.stack([choice[b, t] == tokens[b, t] for b, t in where]).cpu()}


def auroc(score: torch.Tensor, label: torch.Tensor) -> float:
    """The area under the ROC curve of ``score`` as a predictor of ``label`` (bool): the probability that
    a random positive scores above a random negative, ties counting half (the Mann-Whitney statistic).
    0.5 is chance, 1 a perfect predictor, below 0.5 a predictor of the other sign."""
    score, label = torch.as_tensor(score, dtype=torch.float64).flatten(), torch.as_tensor(label).flatten().bool()
    if score.shape != label.shape:
        raise ValueError(f"one score a label: got {tuple(score.shape)} and {tuple(label.shape)}")
    pos, neg = score[label], score[~label]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs positives and negatives both; every label is the same")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
