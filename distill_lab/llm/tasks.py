"""Checkable tasks for the LLM track: fresh problems, a split that never overlaps, exact-match checking.

Each :class:`Task` draws problems from a generator (never a fixed file), sends each to the train or
the test split by a hash of its prompt (so the splits never share a problem, however many are
drawn), writes the teacher's target text (the chain of thought, then the answer), and checks a
completion by exact match of the final answer. Text becomes tokens with one character-level
:class:`Tokenizer` shared by every task (the models must agree on it: :func:`check_same_tokenizer`).

* :class:`Multiplication` -- ``a * b`` with the digits written least significant first (the order in
  which a person carries), the chain being the partial products ``a * b_j * 10^j`` and their running
  sums. ``chain="short"`` (operator ``x``) asks for the partial products and the answer without the
  running sums: the variant where the student answers with a shorter chain than the teacher writes.
  There the teacher reads the full-chain prompt and its chains, shortened, are the student's targets
  (sequence-level distillation; token-level losses need the teacher to score the student's own format).
* :class:`StarGraph` -- path-finding on a star graph (Bachmann & Nagarajan 2024, "The pitfalls of
  next-token prediction"): the edges of ``degree`` arms of ``length`` nodes from a centre, shuffled;
  the path from the centre to a goal leaf. Once the first node of the right arm is written, each next
  node is the only child of the last one (the "Clever Hans" shortcut that teacher forcing rewards);
  the first node needs planning back from the goal. The teacher is *privileged*: its prompt also
  holds the path (the setting of on-policy self-distillation with privileged information, OPSD).
* :class:`Sorting` -- sort a list of digits: no chain of thought, every output token a count over the
  whole input. The gap here is capacity alone: at ci a one-layer student 16 wide (5 k parameters)
  trails the 0.8 M-parameter teacher, while one 32 wide nearly matches it (measured in the README).

:func:`get_task` builds one by name (``mult``, ``mult_short``, ``star``, ``sort``).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import cached_property

import torch

PAD, BOS, EOS = "_", "^", "$"
CHARS = PAD + BOS + EOS + "0123456789" + "*+:>=|,/#" + "abcdefghijklmnopqrstuvwxyz"


class Tokenizer:
    """Characters to ids and back. ``pad_id`` 0; ``bos_id`` starts every prompt, ``eos_id`` ends every
    target. ``decode`` stops at the end token and drops padding."""

    def __init__(self, chars: str = CHARS):
        if len(set(chars)) != len(chars):
            raise ValueError("a tokenizer's characters must be distinct")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        self.pad_id, self.bos_id, self.eos_id = self.index[PAD], self.index[BOS], self.index[EOS]

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        bad = sorted(set(text) - set(self.index))
        if bad:
            raise ValueError(f"characters {bad} are not in the tokenizer's vocabulary {self.chars!r}")
        return [self.index[c] for c in text]

    def decode(self, ids) -> str:
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            c = self.chars[int(i)]
            if c == EOS:
                break
            if c != PAD:
                out.append(c)
        return "".join(out)

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and other.chars == self.chars

    def __hash__(self):
        return hash(self.chars)


def check_same_tokenizer(a: Tokenizer, b: Tokenizer, names=("teacher", "student")) -> None:
    """Token-level distillation compares distributions over the same ids: refuse two vocabularies."""
    if a != b:
        raise ValueError(f"the {names[0]}'s and the {names[1]}'s tokenizers differ ({a.vocab_size} and "
                         f"{b.vocab_size} tokens); token-level losses need one vocabulary: train both on the "
                         "same task's tokenizer, or distil at the sequence level (seq_kd) on decoded text")


@dataclass(frozen=True)
class Problem:
    """One problem: the student's ``prompt`` text, the teacher's (privileged) prompt, the teacher's
    ``target`` (chain then answer, without the end token) and the final ``answer``."""

    prompt: str
    target: str
    answer: str
    teacher_prompt: str | None = None

    @property
    def privileged_prompt(self) -> str:
        return self.teacher_prompt if self.teacher_prompt is not None else self.prompt


def split_of(prompt: str, test_share: int = 10) -> str:
    """``"test"`` for one prompt in ``test_share`` (by crc32 of the text), else ``"train"``: stable
    across processes and runs, so the splits never overlap."""
    return "test" if zlib.crc32(prompt.encode()) % test_share == 0 else "train"


class Task:
    """A task: ``draw(generator)`` makes one random problem (either split); the rest is shared."""

    name = "task"
    privileged = False  # True when the teacher reads its own prompt (information or a format the student's lacks)
    other_format = False  # True when the teacher writes another format than the student's (see student_text)

    def __init__(self, tokenizer: Tokenizer | None = None):
        self.tokenizer = tokenizer or Tokenizer()

    # -- what each task defines
    def draw(self, g: torch.Generator) -> Problem:
        raise NotImplementedError

    def student_text(self, teacher_completion: str) -> str:
        """A teacher's completion rewritten in the student's format (the identity unless the teacher
        writes another format)."""
        return teacher_completion

    def forced_prefix(self, problem: Problem) -> str:
        """The part of the target given to the model when measuring exposure bias: the chain of thought
        up to and including ``>`` (the model then writes the answer after a chain it did not write)."""
        return problem.target[:problem.target.index(">") + 1]

    def answer_of(self, completion: str) -> str | None:
        """The final answer written in a completion (the text after the prompt), or None."""
        return completion.rsplit(">", 1)[1] if ">" in completion else None

    # -- shared
    def problems(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> list[Problem]:
        """``n`` fresh problems of ``split`` (``"train"`` or ``"test"``), drawn by rejection."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        g = generator or torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
        out = []
        while len(out) < n:
            p = self.draw(g)
            if split_of(p.prompt) == split:
                out.append(p)
        return out

    def check(self, problem: Problem, completion: str) -> bool:
        """Exact match of the final answer."""
        return self.answer_of(completion) == problem.answer

    @cached_property
    def prompt_len(self) -> int:
        """Tokens of every student prompt (fixed within a task), the start token included."""
        return 1 + len(self.draw(torch.Generator().manual_seed(0)).prompt)

    @cached_property
    def teacher_prompt_len(self) -> int:
        return 1 + len(self.draw(torch.Generator().manual_seed(0)).privileged_prompt)

    @cached_property
    def max_new_tokens(self) -> int:
        """The longest target, end token included (every target of a task has one length here)."""
        return 1 + len(self.draw(torch.Generator().manual_seed(0)).target)

    @cached_property
    def teacher_max_new_tokens(self) -> int:
        """The teacher's longest completion (longer than the student's when it writes another format)."""
        return self.max_new_tokens

    @cached_property
    def block_size(self) -> int:
        return max(self.prompt_len, self.teacher_prompt_len) + max(self.max_new_tokens, self.teacher_max_new_tokens)

    def encode_prompts(self, problems: list[Problem], privileged: bool = False) -> torch.Tensor:
        """``[B, P]`` ids: the start token, then the (student's or teacher's) prompt."""
        texts = [p.privileged_prompt if privileged else p.prompt for p in problems]
        if len({len(t) for t in texts}) > 1:
            raise ValueError(f"{self.name}: prompts of one batch must have one length")
        tok = self.tokenizer
        return torch.tensor([[tok.bos_id] + tok.encode(t) for t in texts], dtype=torch.long)

    def encode_targets(self, problems: list[Problem]) -> torch.Tensor:
        """``[B, N]`` ids of the targets and the end token, padded with ``pad_id``."""
        tok = self.tokenizer
        rows = [tok.encode(p.target) + [tok.eos_id] for p in problems]
        n = max(len(r) for r in rows)
        return torch.tensor([r + [tok.pad_id] * (n - len(r)) for r in rows], dtype=torch.long)

    def decode_completions(self, generated: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row) for row in generated]

    def accuracy(self, problems: list[Problem], generated: torch.Tensor) -> float:
        """Exact-match accuracy in percent of ``generated [B, N]`` (the tokens after the prompts)."""
        comps = self.decode_completions(generated)
        return 100.0 * sum(self.check(p, c) for p, c in zip(problems, comps)) / max(1, len(problems))

    def __repr__(self):
        return f"{type(self).__name__}({self.name})"


def _rint(lo: int, hi: int, g: torch.Generator) -> int:
    return int(torch.randint(lo, hi, (1,), generator=g))


def _rev(n: int, width: int) -> str:
    """``n`` with ``width`` digits, least significant first (zero-padded)."""
    return str(n).zfill(width)[::-1]


class Multiplication(Task):
    """``a * b`` with ``a`` of ``digits_a`` and ``b`` of ``digits_b`` digits, least significant digit first.

    Full chain (prompt operator ``*``), e.g. 123 * 45 written ``321*54=``:
    ``51600+02940>53550``: the partial products ``a b_0`` and ``a b_1 10`` (each ``digits_a + digits_b``
    digits), then ``>`` and the product. With three or more digits in ``b`` each partial product after
    the second is preceded by the running sum, ``p0+p1:s1+p2>answer``. ``chain="short"`` (operator
    ``x``) writes ``p0+p1+p2>answer``: the same products, no running sums (for two-digit ``b`` the two
    chains coincide).
    """

    def __init__(self, digits_a: int = 3, digits_b: int = 3, chain: str = "full", tokenizer=None):
        super().__init__(tokenizer)
        if chain not in ("full", "short"):
            raise ValueError(f"chain must be 'full' or 'short', got {chain!r}")
        if digits_a < 1 or digits_b < 1:
            raise ValueError("digits_a and digits_b must be >= 1")
        self.digits_a, self.digits_b, self.chain = digits_a, digits_b, chain
        self.name = "mult" if chain == "full" else "mult_short"
        # the short variant: the teacher reads the full-chain prompt and writes the full chain
        self.privileged = self.other_format = chain == "short"

    def write(self, a: int, b: int, chain: str | None = None) -> Problem:
        chain = chain or self.chain
        w = self.digits_a + self.digits_b
        op = "*" if chain == "full" else "x"
        prompt = f"{_rev(a, self.digits_a)}{op}{_rev(b, self.digits_b)}="
        parts, total = [], 0
        for j, d in enumerate(str(b).zfill(self.digits_b)[::-1]):
            p = a * int(d) * 10 ** j
            total += p
            if j == 0:
                parts.append(_rev(p, w))
            elif chain == "full" and j >= 2:
                parts.append(f":{_rev(total - p, w)}+{_rev(p, w)}")
            else:
                parts.append(f"+{_rev(p, w)}")
        answer = _rev(a * b, w)
        teacher_prompt = self.write(a, b, "full").prompt if chain == "short" else None
        return Problem(prompt, "".join(parts) + ">" + answer, answer, teacher_prompt)

    @cached_property
    def teacher_max_new_tokens(self) -> int:
        return 1 + len(self.write(10 ** (self.digits_a - 1), 10 ** (self.digits_b - 1), "full").target)

    def student_text(self, teacher_completion: str) -> str:
        """The full chain ``p0+p1:s1+p2>answer`` without its running sums, ``p0+p1+p2>answer`` (short
        variant); unchanged for the full chain."""
        if self.chain == "full":
            return teacher_completion
        return re.sub(r":[0-9]*", "", teacher_completion)

    def draw(self, g):
        a = _rint(10 ** (self.digits_a - 1), 10 ** self.digits_a, g)
        b = _rint(10 ** (self.digits_b - 1), 10 ** self.digits_b, g)
        return self.write(a, b)

    @staticmethod
    def steps(text: str) -> list[str]:
        """The steps of a chain, each with the separator before it: ``p0``, ``+p1``, ``:s1``, ``+p2``,
        ``>answer`` (what a step-aligned critique points at)."""
        return re.findall(r"[+:>]?[^+:>]*", text)[:-1] if text else []

    def critique(self, problem: Problem, completion: str) -> int | None:
        """A step-aligned checker (the feedback of "The Role of Feedback Alignment in Self-Distillation"):
        the index of the first step of ``completion`` that differs from the reference chain's (a missing
        step counts as wrong), or ``None`` when every step and the answer are right. It names the failing
        step, not its fix."""
        mine, ref = self.steps(completion), self.steps(problem.target)
        for k, want in enumerate(ref):
            if k >= len(mine) or mine[k] != want:
                return k
        return None if len(mine) == len(ref) else len(ref)


class StarGraph(Task):
    """Path-finding on a star graph (Bachmann & Nagarajan 2024): ``degree`` arms of ``length`` nodes
    from a centre; nodes are distinct random letters.

    Prompt ``ab,cd,...|s/g=``: the edges (parent child) in random order, the start (the centre) and
    the goal (a leaf). Target ``>`` then the path from the centre to the goal. The teacher's prompt
    adds ``#`` and the path itself: privileged information, the reference solution that an on-policy
    self-distillation teacher reads (OPSD); the teacher only has to copy it."""

    privileged = True

    def __init__(self, degree: int = 2, length: int = 3, tokenizer=None):
        super().__init__(tokenizer)
        if degree < 2 or length < 2 or degree * length + 1 > 26:
            raise ValueError(f"need degree >= 2, length >= 2 and degree*length+1 <= 26 nodes, got {degree}, {length}")
        self.degree, self.length = degree, length
        self.name = "star"

    def draw(self, g):
        letters = "abcdefghijklmnopqrstuvwxyz"
        perm = torch.randperm(26, generator=g)[: self.degree * self.length + 1].tolist()
        nodes = [letters[i] for i in perm]
        centre, arms = nodes[0], [nodes[1 + k * self.length: 1 + (k + 1) * self.length] for k in range(self.degree)]
        edges = []
        for arm in arms:
            chain = [centre] + arm
            edges += [chain[i] + chain[i + 1] for i in range(self.length)]
        order = torch.randperm(len(edges), generator=g).tolist()
        goal_arm = arms[_rint(0, self.degree, g)]
        prompt = ",".join(edges[i] for i in order) + f"|{centre}/{goal_arm[-1]}="
        path = centre + "".join(goal_arm)
        return Problem(prompt, ">" + path, path, teacher_prompt=prompt + "#" + path)

    def forced_prefix(self, problem: Problem) -> str:
        """``>``, the centre and the goal arm's first node: the planning token given, the rest is the
        "Clever Hans" continuation (each next node the only child of the last)."""
        return problem.target[:3]

    def first_node_accuracy(self, problems: list[Problem], generated: torch.Tensor) -> float:
        """Percent of completions whose first arm node is right (the token that needs planning)."""
        comps = self.decode_completions(generated)
        return 100.0 * sum(len(c) > 2 and c[2] == p.answer[1] for p, c in zip(problems, comps)) / max(1, len(problems))


class Sorting(Task):
    """Sort ``n`` digits ascending: prompt ``53140=``, target ``>01345``."""

    def __init__(self, n: int = 10, tokenizer=None):
        super().__init__(tokenizer)
        if n < 2:
            raise ValueError(f"need at least 2 digits to sort, got {n}")
        self.n = n
        self.name = "sort"

    @staticmethod
    def steps(text: str) -> list[str]:
        """The steps of a sorted list: ``>`` and then each digit, one a step."""
        return list(text)

    def critique(self, problem: Problem, completion: str) -> int | None:
        """A step-aligned checker: the index of the first character of ``completion`` that differs from
        the sorted list (a missing one counts as wrong), ``None`` when all are right."""
        ref = problem.target
        for k, want in enumerate(ref):
            if k >= len(completion) or completion[k] != want:
                return k
        return None if len(completion) == len(ref) else len(ref)

    def draw(self, g):
        digits = torch.randint(0, 10, (self.n,), generator=g).tolist()
        answer = "".join(str(d) for d in sorted(digits))
        return Problem("".join(str(d) for d in digits) + "=", ">" + answer, answer)


TASKS = ("mult", "mult_short", "star", "sort")


def get_task(name: str, **kwargs) -> Task:
    """A task by name: ``mult`` (3x3 digits, full chain), ``mult_short`` (the short chain), ``star``,
    ``sort``; ``kwargs`` override its sizes."""
    if name == "mult":
        return Multiplication(chain="full", **kwargs)
    if name == "mult_short":
        return Multiplication(chain="short", **kwargs)
    if name == "star":
        return StarGraph(**kwargs)
    if name == "sort":
        return Sorting(**kwargs)
    raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
