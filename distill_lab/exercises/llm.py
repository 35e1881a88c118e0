"""Exercises of the LLM labs (40 to 44, 46).

Each checker runs the student's function against the package's own code (the tasks of
:mod:`distill_lab.llm.tasks`, the token-level losses of :mod:`distill_lab.methods.kd.token`, the
tokenizer check and the memory estimate of :mod:`distill_lab.llm.hf`) on fixed inputs, and on cases
known on paper (a divergence of two equal distributions is 0; GKD's JSD of two distributions with
disjoint supports is the binary entropy of ``beta``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import compare, compare_loss, implement, prediction

# ---------------------------------------------------------------- lab 40: tasks, teachers, the gap


def _rev(n, width=6):
    return str(n).zfill(width)[::-1]


def _chain(a, b):
    parts, total = [], 0
    for j, d in enumerate(str(b)[::-1]):
        p = a * int(d) * 10 ** j
        total += p
        parts.append(_rev(p) if j == 0 else f"+{_rev(p)}" if j == 1 else f":{_rev(total - p)}+{_rev(p)}")
    return "".join(parts) + ">" + _rev(a * b)


def _chain_wrong(rev=_rev, shift=True, sum_before=True):
    def chain(a, b):
        parts, total = [], 0
        for j, d in enumerate(str(b)[::-1]):
            p = a * int(d) * (10 ** j if shift else 1)
            total += p
            s = total - p if sum_before else total
            parts.append(rev(p) if j == 0 else f"+{rev(p)}" if j == 1 else f":{rev(s)}+{rev(p)}")
        return "".join(parts) + ">" + rev(a * b)
    return chain


def _readable(s: str) -> str:
    out, num = [], ""
    for ch in s + " ":
        if ch.isdigit():
            num += ch
        else:
            out.append(num[::-1].lstrip("0") or ("0" if num else ""))
            out.append(ch)
            num = ""
    return "".join(out).strip()


@implement("40.mult_chain", "the chain of thought of a 3-digit multiplication, least significant digit first",
           solution=_chain,
           wrong={"digits most significant first": _chain_wrong(rev=lambda n, w=6: str(n).zfill(w)),
                  "numbers not padded to six digits": _chain_wrong(rev=lambda n, w=6: str(n)[::-1]),
                  "the running sum includes the product that follows it": _chain_wrong(sum_before=False),
                  "partial products without the 10^j shift": _chain_wrong(shift=False)})
def _check_mult_chain(fn) -> str:
    """``fn(a, b)`` for two 3-digit ints must return :class:`~distill_lab.llm.tasks.Multiplication`'s target."""
    from ..llm.tasks import Multiplication

    task = Multiplication(3, 3, "full")
    g = torch.Generator().manual_seed(40)
    pairs = [(100, 100), (999, 999), (123, 456), (305, 207), (500, 110)]
    pairs += [(int(torch.randint(100, 1000, (1,), generator=g)), int(torch.randint(100, 1000, (1,), generator=g)))
              for _ in range(300)]
    for a, b in pairs:
        want = task.write(a, b).target
        got = fn(a, b)
        if not isinstance(got, str):
            raise AssertionError(f"return the target as a string, got {type(got).__name__} for {a} * {b}")
        if got != want:
            at = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
            raise AssertionError(f"for {a} * {b} you wrote {got!r}, the task writes {want!r} (first difference at "
                                 f"character {at}; read in the usual order: yours {_readable(got)!r}, the task's "
                                 f"{_readable(want)!r}). Every number has 6 digits, least significant first, and "
                                 "the running sum before the third product is p0 + p1")
    return f"writes Multiplication.write(a, b).target for {len(pairs)} problems, carries and zero digits included"


def _grade(problem, completion):
    if ">" not in completion:
        return False
    return completion.rsplit(">", 1)[1] == problem.answer


@implement("40.grade", "exact-match grading of a chain-of-thought completion",
           solution=_grade,
           wrong={"the whole completion compared with the target (the chain graded too)":
                  lambda p, c: c == p.target,
                  "the answer searched anywhere in the completion": lambda p, c: p.answer in c,
                  "the text after the first '>' instead of the last":
                  lambda p, c: ">" in c and c.split(">")[1] == p.answer,
                  "a completion without '>' graded on its whole text":
                  lambda p, c: c.rsplit(">", 1)[-1] == p.answer})
def _check_grade(fn) -> str:
    """``fn(problem, completion) -> bool`` must agree with :meth:`Task.check` on completions a model may write."""
    from ..llm.tasks import Multiplication

    task = Multiplication(3, 3, "full")
    cases = []
    for p in task.problems(20, "test", torch.Generator().manual_seed(41)):
        body, ans = p.target.split(">")
        other = body[:3] + ("1" if body[3] != "1" else "2") + body[4:]
        cases += [(p, p.target, "the true chain and answer"),
                  (p, other + ">" + ans, "a wrong chain that ends in the right answer"),
                  (p, body + ">" + ans[:-1] + ("1" if ans[-1] != "1" else "2"),
                   "the right chain, a wrong last digit"),
                  (p, body + ">" + ans + "7", "the right answer followed by an extra digit"),
                  (p, ans, "the answer alone with no '>' before it"),
                  (p, body + ">" + ans[::-1] + ">" + ans, "two '>', the right answer after the last"),
                  (p, body + ">" + ans + ">" + ans[::-1], "two '>', a wrong answer after the last"),
                  (p, "", "an empty completion")]
    for p, c, what in cases:
        got, want = fn(p, c), task.check(p, c)
        if bool(got) != want:
            raise AssertionError(f"{what}: for the problem {p.prompt!r} (answer {p.answer!r}) you graded {c!r} as "
                                 f"{bool(got)}, the task's check says {want}. Only the text after the last '>' "
                                 "counts, compared whole with the answer; no '>' means no answer")
    return f"agrees with Task.check on {len(cases)} completions (wrong chains, extra digits, no '>' or two)"


prediction("40.student_gap", "trained on the true chains alone, where does the student-size GPT land against the "
           "teacher's exact match?",
           ("within 10 points of the teacher", "more than 10 points below", "more than 10 points above"),
           solution="more than 10 points below")


# ---------------------------------------------------------------- lab 41: divergences, on- and off-policy


def _masked(values, mask):
    return values[mask].mean()


def _gjsd(student_logits, teacher_logits, mask, beta):
    log_q = F.log_softmax(student_logits, -1)
    log_p = F.log_softmax(teacher_logits.detach(), -1)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return (beta * kl_pm + (1 - beta) * kl_qm)[mask].mean()


def _gjsd_wrong(reduce=_masked, flip_beta=False, swap_kl=False, fixed_mix=False):
    def gjsd(student_logits, teacher_logits, mask, beta):
        b = 1 - beta if flip_beta else beta
        log_q = F.log_softmax(student_logits, -1)
        log_p = F.log_softmax(teacher_logits.detach(), -1)
        w = 0.5 if fixed_mix else b
        log_m = torch.logaddexp(log_p + math.log(w), log_q + math.log(1 - w))
        if swap_kl:
            kl_pm = (log_m.exp() * (log_m - log_p)).sum(-1)
            kl_qm = (log_m.exp() * (log_m - log_q)).sum(-1)
        else:
            kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
            kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
        return reduce(b * kl_pm + (1 - b) * kl_qm, mask)
    return gjsd


@implement("41.gkd_jsd", "GKD's generalised JSD with beta, mean over the masked positions",
           solution=_gjsd,
           wrong={"mean over every position, padding included": _gjsd_wrong(reduce=lambda v, m: v.mean()),
                  "sum over the masked positions instead of the mean": _gjsd_wrong(reduce=lambda v, m: v[m].sum()),
                  "beta reversed (the package's beta 0 is forward KL)": _gjsd_wrong(flip_beta=True),
                  "KL(m || p) and KL(m || q), the directions swapped": _gjsd_wrong(swap_kl=True),
                  "the mixture m = (p + q) / 2 whatever beta": _gjsd_wrong(fixed_mix=True)})
def _check_gkd_jsd(fn) -> str:
    """``fn(student_logits [B, T, V], teacher_logits [B, T, V], mask [B, T] bool, beta in (0, 1))`` must equal
    :func:`~distill_lab.methods.kd.token.gjsd_loss`, vanish on equal inputs and give the binary entropy of
    ``beta`` on disjoint supports."""
    from ..methods.kd import token

    g = torch.Generator().manual_seed(41)
    s = torch.randn(3, 6, 11, generator=g, dtype=torch.float64) * 2
    t = torch.randn(3, 6, 11, generator=g, dtype=torch.float64) * 2
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:], mask[1, 2:], mask[2, :1] = False, False, False
    s[~mask] = torch.randn(int((~mask).sum()), 11, generator=g, dtype=torch.float64) * 12  # padding: far off
    for beta in (0.1, 0.5, 0.8):
        same = fn(t.clone(), t.clone(), mask, beta)
        compare(same, torch.tensor(0.0), f"JSD(beta={beta}) of a distribution with itself", atol=1e-7)
    # disjoint supports: p on token 0, q on token 1; m = beta p + (1 - beta) q, so the JSD is H(beta)
    far = torch.full((1, 1, 4), -60.0, dtype=torch.float64)
    p_logits, q_logits = far.clone(), far.clone()
    p_logits[..., 0], q_logits[..., 1] = 0.0, 0.0
    one = torch.ones(1, 1, dtype=torch.bool)
    for beta in (0.2, 0.5):
        h = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)
        compare(fn(q_logits, p_logits, one, beta), torch.tensor(h),
                f"JSD(beta={beta}) of two distributions on disjoint tokens (the binary entropy of beta)",
                atol=1e-6)
    for beta in (0.1, 0.5, 0.8):
        want = token.gjsd_loss(s, t, mask, beta=beta)
        got = fn(s, t, mask, beta)
        try:
            compare(got, want, f"JSD(beta={beta}) on random logits [3, 6, 11] with 7 padded positions", atol=1e-7)
        except AssertionError as err:
            hint = ""
            if abs(float(got) - float(token.gjsd_loss(s, t, torch.ones_like(mask), beta=beta))) < 1e-6:
                hint = " Your value is the mean over every position: average over the mask's positions only."
            elif abs(float(got) - float(token.gjsd_loss(s, t, mask, beta=1 - beta))) < 1e-6:
                hint = (" Your value is JSD(1 - beta): in the package's (and TRL's) convention beta weights the "
                        "teacher, m = beta p + (1 - beta) q, so beta -> 0 is the forward KL(p || q).")
            raise AssertionError(str(err) + hint) from None
    small = float(fn(s, t, mask, 1e-4)) / 1e-4
    fkl = float(token.forward_kl_loss(s, t, mask))
    if abs(small - fkl) > 0.01 * fkl:
        raise AssertionError(f"JSD(beta) / beta at beta = 1e-4 is {small:.4g}, but it should tend to the forward "
                             f"KL(p || q) = {fkl:.4g} as beta -> 0")
    return ("0 for equal inputs, the binary entropy on disjoint supports, token.gjsd_loss at beta 0.1, 0.5, 0.8 "
            "with padding ignored, and JSD / beta -> forward KL as beta -> 0")


prediction("41.mode_valley", "fitting a one-bump student to a two-mode teacher: which divergence puts more mass "
           "between the modes, where the teacher has almost none?",
           ("forward KL", "reverse KL", "about the same"), solution="forward KL")

prediction("41.sort_on_policy", "sorting, one student size, the same forward KL and the same number of tokens: "
           "which student is more accurate on held-out lists?",
           ("on-policy (gkd_fkl)", "off-policy (word_kd)", "within the noise"), solution="on-policy (gkd_fkl)")


# ---------------------------------------------------------------- lab 42: real models


def _same_vocab(teacher_tok, student_tok):
    a, b = teacher_tok.get_vocab(), student_tok.get_vocab()
    if a != b:
        raise ValueError(f"the tokenizers differ: {len(a)} and {len(b)} tokens, "
                         f"{sum(b.get(t) != i for t, i in a.items())} pieces with another id or missing")


def _vocab_wrong(same):
    def check(teacher_tok, student_tok):
        if not same(teacher_tok.get_vocab(), student_tok.get_vocab(), teacher_tok, student_tok):
            raise ValueError("the tokenizers differ")
    return check


@implement("42.same_vocab", "refuse two tokenizers that do not share one vocabulary",
           solution=_same_vocab,
           wrong={"only the sizes compared": _vocab_wrong(lambda a, b, ta, tb: len(a) == len(b)),
                  "the sets of pieces compared, not their ids": _vocab_wrong(
                      lambda a, b, ta, tb: set(a) == set(b)),
                  "the sets of ids compared, not the pieces": _vocab_wrong(
                      lambda a, b, ta, tb: set(a.values()) == set(b.values())),
                  "the tokenizer objects compared (is)": _vocab_wrong(lambda a, b, ta, tb: ta is tb)})
def _check_same_vocab(fn) -> str:
    """``fn(teacher_tok, student_tok)`` must return for one vocabulary and raise ValueError otherwise, like
    :func:`~distill_lab.llm.hf.check_tokenizers`."""
    from ..llm import hf

    class Tok:
        def __init__(self, pieces):
            self.pieces = list(pieces)

        def get_vocab(self):
            return {p: i for i, p in enumerate(self.pieces)}

    base = ["<s>", "</s>", "0", "1", "2", "3", "+", "=", "the", " cat"]
    cases = [("a copy of the same vocabulary (another object)", Tok(base)),
             ("two ids swapped ('1' and '2')", Tok(base[:3] + ["2", "1"] + base[5:])),
             ("one more piece at the end", Tok(base + ["3"])),
             ("one piece renamed, the same ids (' cat' -> ' dog')", Tok(base[:-1] + [" dog"])),
             ("one piece fewer", Tok(base[:-1]))]
    teacher = Tok(base)
    for what, student in cases:
        try:
            hf.check_tokenizers(teacher, student)
            want = None
        except ValueError:
            want = ValueError
        try:
            fn(teacher, student)
            got = None
        except ValueError:
            got = ValueError
        if got is not want:
            raise AssertionError(f"{what}: the package {'refuses' if want else 'accepts'} this pair, yours "
                                 f"{'refuses' if got else 'accepts'} it. One vocabulary means the same piece -> "
                                 "id map: every piece with the same id on both sides, and no piece on one side "
                                 "only")
    return (f"accepts an equal vocabulary and refuses each of {len(cases) - 1} different ones, "
            "as hf.check_tokenizers")


def _memory(recipe):
    tokens = recipe["batch"] * (recipe["prompt_tokens"] + recipe["max_new_tokens"])
    return {"teacher_weights": 2 * recipe["teacher_params"] / 1e9,
            "student_train_state": 16 * recipe["student_params"] / 1e9,
            "logits": 4 * 4 * tokens * recipe["vocab_size"] / 1e9}


def _memory_wrong(teacher_bytes=2, student_bytes=16, n_logits=4, prompt=True, gb=1e9):
    def memory(recipe):
        tokens = recipe["batch"] * ((recipe["prompt_tokens"] if prompt else 0) + recipe["max_new_tokens"])
        return {"teacher_weights": teacher_bytes * recipe["teacher_params"] / gb,
                "student_train_state": student_bytes * recipe["student_params"] / gb,
                "logits": n_logits * 4 * tokens * recipe["vocab_size"] / gb}
    return memory


@implement("42.memory", "the memory of a teacher/student pair: frozen teacher, student trained with AdamW, logits",
           solution=_memory,
           wrong={"AdamW state without the fp32 master copy (12 bytes a parameter)":
                  _memory_wrong(student_bytes=12),
                  "the frozen teacher in float32": _memory_wrong(teacher_bytes=4),
                  "logits over the generated tokens only, not the prompt": _memory_wrong(prompt=False),
                  "two logit tensors (the teacher's and the student's) instead of four": _memory_wrong(n_logits=2),
                  "GiB (2^30 bytes) instead of GB": _memory_wrong(gb=2 ** 30)})
def _check_memory(fn) -> str:
    """``fn(recipe) -> {"teacher_weights", "student_train_state", "logits"}`` in GB must equal those entries
    of :func:`~distill_lab.llm.hf.estimate`'s ``memory_breakdown_gb``."""
    from ..llm import hf

    base = {k: v for k, v in hf.GPU_RECIPE.items() if k != "estimate"}
    recipes = [base, {**base, "teacher_params": 7.6e9, "student_params": 1.5e9, "batch": 4},
               {**base, "vocab_size": 32000, "prompt_tokens": 512, "max_new_tokens": 64, "student_params": 3e8}]
    for r in recipes:
        want = hf.estimate(r)["memory_breakdown_gb"]
        got = fn(dict(r))
        if not isinstance(got, dict):
            raise AssertionError(f"return a dict with the keys teacher_weights, student_train_state and logits, "
                                 f"got {type(got).__name__}")
        for key in ("teacher_weights", "student_train_state", "logits"):
            if key not in got:
                raise AssertionError(f"your dict has no {key!r} entry")
            compare(got[key], want[key], f"{key} (GB) for a teacher of {r['teacher_params'] / 1e9:g} B and a "
                    f"student of {r['student_params'] / 1e9:g} B parameters, batch {r['batch']}, "
                    f"{r['prompt_tokens']} + {r['max_new_tokens']} tokens, vocabulary {r['vocab_size']}",
                    rtol=1e-6)
    return "equals hf.estimate's teacher weights, student training state and logits (GB) for three recipes"


prediction("42.logits_vs_state", "for the gpu recipe (0.5 B student, 151,936-token vocabulary, batch 16 of 448 "
           "tokens), which takes more memory?",
           ("the logits", "the student's training state", "about the same"), solution="the logits")


# ---------------------------------------------------------------- lab 46: where the gradients point; a state-space student
def _ideal(logits, Q):
    q = logits.softmax(-1)
    return q * (Q - (q * Q).sum(-1, keepdim=True))


@implement("46.ideal_direction", "the ideal per-node direction: the gradient of the success probability in the logits",
           solution=_ideal,
           wrong={"no baseline: q * Q": lambda z, Q: z.softmax(-1) * Q,
                  "without the probabilities: Q - V": lambda z, Q: Q - (z.softmax(-1) * Q).sum(-1, keepdim=True),
                  "the logits in place of the probabilities":
                  lambda z, Q: z * (Q - (z * Q).sum(-1, keepdim=True)),
                  "the sign flipped (the direction that lowers success)": lambda z, Q: -_ideal(z, Q)})
def _check_ideal_direction(fn) -> str:
    """``fn(logits [..., V], Q [..., V])`` must equal :func:`~distill_lab.llm.diagnostics.ideal_logit_direction`,
    itself the autograd gradient of ``sum softmax(z) Q``."""
    from ..llm.diagnostics import ideal_logit_direction

    g = torch.Generator().manual_seed(46)
    cases = [(torch.randn(5, 7, generator=g, dtype=torch.float64), torch.rand(5, 7, generator=g, dtype=torch.float64)),
             (torch.zeros(1, 4, dtype=torch.float64), torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)),
             (3 * torch.randn(2, 3, 6, generator=g, dtype=torch.float64),
              (torch.rand(2, 3, 6, generator=g) > 0.5).double())]
    for z, Q in cases:
        zz = z.clone().requires_grad_()
        (zz.softmax(-1) * Q).sum().backward()
        compare(fn(z, Q), ideal_logit_direction(z, Q), f"the direction for logits of shape {tuple(z.shape)}")
        compare(fn(z, Q), zz.grad, "the gradient of the success probability sum softmax(z) Q")
    return "equals the gradient of the success probability for three cases, a one-winner node included"


prediction("46.where_aligned", "distillation towards a weak teacher (the student's own warm start, forward KL): is "
           "it better aligned with the ideal direction on the student's incorrect rollouts, its correct ones, or "
           "about the same?",
           ("incorrect", "about the same", "correct"), solution="incorrect")
prediction("46.state_vs_logits", "two low-rank state-space students of equal size, one distilled from the dense "
           "teacher's logits alone, one with its hidden states aligned too: which is more accurate?",
           ("state alignment", "about the same", "logits alone"), solution="state alignment")


# ---------------------------------------------------------------- lab 43: self-distillation with privileged information
def _clipped_kl_variant(reverse=False, detach=True, clip_value=False):
    """The clipped forward KL of exercise 43.1 and its wrong variants (reversed, the teacher trained, the value
    clipped instead of the gradient)."""
    def loss(s, t, clip):
        logq, logp = F.log_softmax(s, -1), F.log_softmax(t.detach() if detach else t, -1)
        kl = (logq.exp() * (logq - logp)).sum(-1) if reverse else (logp.exp() * (logp - logq)).sum(-1)
        if clip_value:
            return kl.clamp(max=clip).mean()
        return ((clip / kl.detach().clamp(min=1e-12)).clamp(max=1.0) * kl).mean()
    return loss


_clipped_kl = _clipped_kl_variant()


@implement("43.clipped_kl", "OPSD's clipped forward KL from the teacher view to the student view",
           solution=_clipped_kl,
           wrong={"no clipping": lambda s, t, clip: _clipped_kl(s, t, float("inf")),
                  "the value clipped, min(KL, clip): a clipped token teaches nothing": _clipped_kl_variant(clip_value=True),
                  "the reverse KL": _clipped_kl_variant(reverse=True),
                  "the teacher view not detached (it would learn to agree with the student)":
                  _clipped_kl_variant(detach=False)})
def _check_clipped_kl(fn) -> str:
    """``fn(student_logits [B, T, V], teacher_logits [B, T, V], clip) -> loss`` must equal
    :func:`~distill_lab.methods.kd.privileged.clipped_forward_kl` (no mask) in value and in its gradient to
    the student, and send no gradient to the teacher view."""
    from ..methods.kd.privileged import clipped_forward_kl

    g = torch.Generator().manual_seed(43)
    for clip in (0.2, 1.0):
        s = torch.randn(3, 5, 9, generator=g, dtype=torch.float64)
        t = 3 * torch.randn(3, 5, 9, generator=g, dtype=torch.float64)
        mine_s, ref_s = s.clone().requires_grad_(), s.clone().requires_grad_()
        t_leaf = t.clone().requires_grad_()
        mine = fn(mine_s, t_leaf, clip)
        ref = clipped_forward_kl(ref_s, t, clip=clip)[0]
        compare_loss(mine, ref, mine_s, ref_s, f"at clip {clip}", frozen=t_leaf,
                     frozen_message="the loss sends a gradient to the teacher view's logits: detach them (the teacher "
                                    "view is the same network; trained here it would move towards the student)")
    return "equals clipped_forward_kl in value and gradient at two clips, and leaves the teacher view alone"


prediction("43.opsd_vs_sft", "the same warm start, the same references and budget: which student view ends more "
           "accurate, the one distilled on its own rollouts from its teacher view (OPSD), or the one trained by "
           "cross-entropy on the references?",
           ("OPSD", "about the same", "reference SFT"), solution="reference SFT")
prediction("43.current_teacher", "OPSD with the teacher view read by the student's current weights instead of "
           "the frozen warm start: what happens to the student view?",
           ("it collapses", "about the same", "it improves"), solution="it collapses")
prediction("43.mismatch", "the mean KL from the teacher view to the student view on the warm start's own "
           "rollouts, at exposures 0, 0.25, 0.5, 0.75 and 1 of the reference: as the teacher view reads more, does it "
           "grow at every step, shrink at every step, or neither?",
           ("grow", "neither", "shrink"), solution="grow")


# ---------------------------------------------------------------- lab 44: the consensus of several privileged views
def _agreement_variant(geometric=False, first_view=False, unanimous=False, counted=False, detach=True):
    """UniSD's agreement target of exercise 44.1 and its wrong variants (the geometric mean, agreement with
    the first view, all-or-nothing weights, a count instead of a share, the target left on the graph)."""
    def target(views):
        logp = torch.stack([F.log_softmax((v.detach() if detach else v).float(), -1) for v in views])
        mean = F.log_softmax(logp.mean(0), -1) if geometric else logp.exp().mean(0).log()
        choice = logp[0].argmax(-1) if first_view else mean.argmax(-1)
        agree = (logp.argmax(-1) == choice).float()
        agree = agree.sum(0) if counted else agree.mean(0)
        if unanimous:
            agree = (agree == 1).float()
        return mean, agree
    return target


_agreement = _agreement_variant()


@implement("44.agreement", "UniSD's multi-view agreement: the views' mean distribution and each token's share of "
           "views that agree with it",
           solution=_agreement,
           wrong={"the normalised geometric mean (the mean of the log-probabilities)": _agreement_variant(geometric=True),
                  "agreement with the first view's choice instead of the target's": _agreement_variant(first_view=True),
                  "weight 1 only where every view agrees, 0 elsewhere": _agreement_variant(unanimous=True),
                  "the number of agreeing views, not their share": _agreement_variant(counted=True),
                  "the target left on the views' graph (it is a teacher quantity)": _agreement_variant(detach=False)})
def _check_agreement(fn) -> str:
    """``fn(list of [..., V] logits) -> (log target, weights)`` must equal
    :func:`~distill_lab.llm.self_recipes.agreement_target` on random views of two shapes, give weight 1 where
    every view picks one token and ``1 / n`` where each picks another, and return nothing with a gradient."""
    from ..llm.self_recipes import agreement_target

    g = torch.Generator().manual_seed(44)
    for shape, n in (((2, 6, 7), 3), ((5, 4), 4)):
        views = [(2 * torch.randn(*shape, generator=g)).requires_grad_() for _ in range(n)]
        got = fn(views)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise AssertionError("return a pair: (the log of the target distribution, the weight of each token)")
        want = agreement_target(views)
        compare(got[0], want[0], f"the log target of {n} views of shape {shape}")
        compare(got[1], want[1], f"the agreement weights of {n} views of shape {shape}")
        if got[0].requires_grad or got[1].requires_grad:
            raise AssertionError("the target carries a gradient to the views: it is a teacher quantity, compute it "
                                 "without gradient (torch.no_grad() or .detach())")
    same = torch.randn(3, 5, generator=g)
    eye = 10 * torch.eye(3)  # three views, each sure of another token
    compare(fn([same, same, same])[1], torch.ones(3), "the weights where every view is the same")
    compare(fn([eye[0], eye[1], eye[2]])[1], torch.tensor(1 / 3), "the weight where each of three views picks another token")
    return "equals agreement_target on two shapes, 1 where all views agree, 1/n where none does, and no gradient"


prediction("44.unisd_gain", "UniSD's pipeline (three views, their agreement, the representation terms, clipping), three "
           "seeds: its student view against its own warm start, paired (about the same: within the seeds' spread)",
           ("higher", "about the same", "lower"), solution="higher")
prediction("44.ema_teacher", "UniSD with an EMA of the student's weights as the teacher instead of the frozen warm "
           "start: what happens to the student view?",
           ("it collapses", "about the same", "it improves"), solution="it collapses")
prediction("44.avsd_vs_opsd", "AVSD (three views, their consensus, the gated residuals) against OPSD's single "
           "whole-reference view, three seeds: which student view ends more accurate on average (a paired gap under a "
           "point: about the same)?",
           ("AVSD", "about the same", "the single view"), solution="AVSD")
