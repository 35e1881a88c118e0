"""Write `tests/mutation_survivors.md` from the last `mutmut run` and the reasons in
`tests/mutation_reasons.toml`.

Run from the repository root after `mutmut run`:

    python tests/mutation_report.py            # writes the survivors file, prints the counts
    python tests/mutation_report.py --check    # also exits 1 if a survivor has no reason

Five kinds of survivor are sorted without a listed reason, by what the mutation changed: only the text
of an error message (or the case of a NaN literal), only a progress bar's label, only a device
(`device=`, `.to(device)`), only a dtype (`dtype=`, `.to(dtype)`), or only `zero_grad`'s `set_to_none`. Every other
survivor needs an entry in `mutation_reasons.toml` naming its function and the mutant's changed line
(as the survivors file shows it); one without is listed under "Unexplained", and that list must be
empty: kill the mutant with a test, or say why it is equivalent or not worth a test.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tokenize
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REASONS = ROOT / "tests" / "mutation_reasons.toml"
OUT = ROOT / "tests" / "mutation_survivors.md"
SURVIVED, NO_TESTS = 0, (5, 33)
TIMEOUT = (36, -24, 24, 152, 255)
KILLED = (1, 3)


def load_results(root: Path = ROOT) -> dict[str, int | None]:
    """Every mutant's exit code from mutmut's `.meta` files under `mutants/`."""
    metas = sorted((root / "mutants").rglob("*.py.meta"))
    if not metas:
        sys.exit("no mutmut results under mutants/: run `mutmut run --max-children 2` first")
    codes: dict[str, int | None] = {}
    for p in metas:
        codes.update(json.loads(p.read_text())["exit_code_by_key"])
    return codes


def split_name(name: str) -> tuple[str, str, int]:
    """`distill_lab.methods.kd.common.x_kd_loss__mutmut_7` -> (`methods.kd.common`, `kd_loss`, 7)."""
    head, num = name.rsplit("__mutmut_", 1)
    module, func = head.rsplit(".", 1)
    module = module.removeprefix("distill_lab.")
    if func.startswith("xǁ"):
        cls, meth = func[2:].split("ǁ", 1)
        func = f"{cls}.{meth}"
    else:
        func = func[2:]
    return module, func, int(num)


def changed_lines(diff: str) -> tuple[str, str]:
    old = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    new = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return " ".join(old), " ".join(new)


def _tokens(line: str) -> list[tuple[int, str]]:
    """The line's tokens; a statement cut off by the diff (an open bracket) keeps those read so far."""
    out = []
    try:
        for t in tokenize.generate_tokens(io.StringIO(line).readline):
            if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT):
                out.append((t.type, t.string))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    return out


def _is_message(old: str, new: str) -> bool:
    a, b = _tokens(old), _tokens(new)
    if not a or len(a) != len(b):
        return False
    diff = [(x, y) for x, y in zip(a, b) if x != y]
    if not diff or any(x[0] != tokenize.STRING or y[0] != tokenize.STRING for x, y in diff):
        return False
    if old.startswith("raise ") or re.search(r"\b_?check_\w*\(|\b_times\(|Error\(|warn\(", old):
        return True
    # float("nan") and float("NAN") are the same float
    return all(x[1].lower() == y[1].lower() for x, y in diff) and "float(" in old


def _norm(line: str) -> str:
    """A mutant's line as reasons name it: whitespace collapsed (the diff's and the file's may differ)."""
    return re.sub(r"\s+", " ", line).strip()


def _strip(line: str, pattern: str) -> str:
    return re.sub(r"\s+", "", re.sub(pattern, "", line)).replace(",)", ")")


def category(old: str, new: str) -> str | None:
    """The shared reason a mutation falls under by what it changed, or None."""
    if not old or not new:
        return None
    if _is_message(old, new):
        return "Message"
    dev = r"device\s*=\s*[^,()]+(\([^()]*\))?[^,()]*,?"
    if old != new and _strip(old, dev) == _strip(new, dev):
        return "Device"
    if "zero_grad(" in old and _strip(old, r"set_to_none\s*=\s*\w+,?") == _strip(new, r"set_to_none\s*=\s*\w+,?"):
        return "Zero grad"
    if _strip(old, r"desc\s*=\s*[^,()]+,?") == _strip(new, r"desc\s*=\s*[^,()]+,?") and "desc" in old:
        return "Progress bar"
    to = r"(?<=\.to\()[^()]*(?=\))"  # the argument of .to(...): a device or a dtype
    if old != new and _strip(old, to) == _strip(new, to):
        return "Device" if any("device" in a for a in re.findall(to, old)) else "Promotion"
    dt = r"dtype\s*=\s*[^,()]+,?"
    if old != new and _strip(old, dt) == _strip(new, dt):
        return "Promotion"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a survivor has no reason")
    args = ap.parse_args(argv)

    import mutmut.__main__ as mm  # mutmut's own diff, as `mutmut show` prints it

    with open(REASONS, "rb") as f:
        reasons = tomllib.load(f)
    categories = reasons["category"]
    by_mutant: dict[tuple[str, str], int] = {}
    for i, r in enumerate(reasons.get("reason", [])):
        for line in r["mutants"]:
            by_mutant[(r["function"], _norm(line))] = i

    codes = load_results()
    total = len(codes)
    killed = sum(c in KILLED for c in codes.values())
    timeouts = sum(c in TIMEOUT for c in codes.values())
    untested = sorted(k for k, c in codes.items() if c in NO_TESTS)
    survivors = sorted(k for k, c in codes.items() if c == SURVIVED)
    other = total - killed - timeouts - len(untested) - len(survivors)

    shared: dict[str, list] = defaultdict(list)
    own: dict[int, list] = defaultdict(list)
    unexplained: list = []
    used = set()
    for name in survivors:
        module, func, num = split_name(name)
        old, new = changed_lines(mm.get_diff_for_mutant(name))
        row = (name.removeprefix("distill_lab."), old, new)
        key = (f"{module}.{func}", _norm(new))
        if key in by_mutant:
            own[by_mutant[key]].append(row)
            used.add(key)
        elif (c := category(old, new)) is not None:
            shared[c].append(row)
        else:
            unexplained.append(row)
    stale = sorted(set(by_mutant) - used)

    own_equiv = sum(len(v) for i, v in own.items() if reasons["reason"][i]["text"].strip().startswith("Equivalent"))
    own_left = sum(len(v) for v in own.values()) - own_equiv
    n_equiv = own_equiv + len(shared["Promotion"]) + len(shared["Zero grad"])
    n_detected = killed + timeouts
    cosmetic = len(shared["Message"]) + len(shared["Progress bar"])
    non_equiv = total - n_equiv - other
    pct = 100.0 * n_detected / max(non_equiv, 1)
    pct_subst = 100.0 * n_detected / max(non_equiv - cosmetic, 1)
    lines = [
        "# Surviving mutants, and why each is left",
        "",
        "Written by `python tests/mutation_report.py` after `mutmut run` (README, \"For contributors\"), from "
        "mutmut's results and the reasons in `tests/mutation_reasons.toml`. Mutant names are mutmut's with "
        "the `distill_lab.` prefix dropped (`mutmut show distill_lab.NAME` prints the diff); their numbers "
        "change with the code and with the lines the tests cover, so the reasons name each mutant by its "
        "function and its changed line, and a reason whose mutant no longer survives is reported. "
        "A survivor that fits none of these reasons gets a test instead.",
        "",
        f"**Counts.** {total} mutants: {killed} killed by a failing test, {timeouts} by a timeout, "
        f"{len(survivors)} survived, {len(untested)} reached by no selected test, {other} other. "
        f"The survivors: {n_equiv} equivalent to the original (Promotion, Zero grad, and the reasons that "
        f"begin \"Equivalent\"); {cosmetic} that change only an error message or a progress bar's label; "
        f"{len(shared['Device'])} that change only a device (equivalent on the CPU the tests run on, a bug on "
        f"a GPU); {own_left} not worth a test, each with its reason; {len(unexplained)} unexplained. "
        f"Killed among the {non_equiv} mutants that are not equivalent: {n_detected} ({pct:.1f}%); "
        f"among the {non_equiv - cosmetic} that change more than a message or a label: {pct_subst:.1f}%.",
        "",
    ]

    def table(rows):
        out = ["| mutant | original | mutant's line |", "|---|---|---|"]
        for name, old, new in rows:
            out.append(f"| `{name}` | `{old.replace('|', '¦')}` | `{new.replace('|', '¦')}` |")
        return out + [""]

    if unexplained:
        lines += [f"## Unexplained ({len(unexplained)})", "",
                  "No reason yet: each needs a test or an entry in `tests/mutation_reasons.toml`.", ""]
        lines += table(unexplained)
    for c in ("Message", "Progress bar", "Promotion", "Zero grad", "Device"):
        if shared[c]:
            lines += [f"## {c} ({len(shared[c])})", "", categories[c]["text"].strip(), ""] + table(shared[c])
    if own:
        lines += [f"## One reason each ({sum(len(v) for v in own.values())})", ""]
        for i in sorted(own, key=lambda i: reasons["reason"][i]["function"]):
            r = reasons["reason"][i]
            lines += [f"**`{r['function']}`**: {r['text'].strip()}", ""] + table(own[i])
    if untested:
        lines += [f"## Reached by no selected test ({len(untested)})", "",
                  "mutmut found no test of the selection that calls these functions.", ""]
        lines += [f"- `{n.removeprefix('distill_lab.')}`" for n in untested] + [""]
    OUT.write_text("\n".join(lines))
    print(lines[4])
    if stale:
        print(f"{len(stale)} mutants named in the reasons no longer survive (or exist):")
        for f, line in stale:
            print(f"  {f}: {line}")
    if unexplained:
        print(f"{len(unexplained)} survivors have no reason: see the top of {OUT.relative_to(ROOT)}")
    return 1 if args.check and (unexplained or stale) else 0


if __name__ == "__main__":
    sys.exit(main())
