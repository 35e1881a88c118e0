"""The table a lab ends with: each claim, what was measured, and whether it held.

A lab's last cell states its claims about what it measured (the student beats the baseline at equal
NFE by more than the seed spread, the teacher is near the noise floor, ...). :class:`CheckTable` shows
them as one table of ✓ and ✗ rows, so a student sees every verdict at once, and then fails (raises
:class:`AssertionError` naming the claims that did not hold) if any did not: CI's nbval run fails too.
"""

from __future__ import annotations

import numbers


class CheckTable:
    """Collect claims with :meth:`expect`, then :meth:`report` them as one table.

    >>> checks = CheckTable()
    >>> checks.expect("the student is below 2x the floor", w2 < 2 * floor, f"{w2:.3f} vs floor {floor:.3f}")
    >>> checks.report()
    """

    def __init__(self, title: str = "Checks on what was measured"):
        self.title = title
        self.rows: list[tuple[str, bool, str]] = []

    def expect(self, claim: str, holds, measured: str = "") -> bool:
        """Record ``claim`` with the verdict ``holds`` (a bool, numpy bool or one-element tensor) and the
        numbers behind it (``measured``, shown beside the verdict)."""
        if hasattr(holds, "item"):  # a 0-d numpy or torch boolean
            holds = holds.item()
        if not isinstance(holds, (bool, numbers.Integral)):
            raise TypeError(f"expect({claim!r}, ...): the verdict must be a bool, got {type(holds).__name__} "
                            f"({holds!r}); compare the measured numbers, e.g. `w2 < 2 * floor`")
        self.rows.append((claim, bool(holds), measured))
        return bool(holds)

    @property
    def failed(self) -> list[str]:
        return [claim for claim, ok, _ in self.rows if not ok]

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| | claim | measured |", "|---|---|---|"]
        lines += [f"| {'✓' if ok else '✗'} | {claim} | {measured} |" for claim, ok, measured in self.rows]
        return "\n".join(lines)

    def report(self) -> None:
        """Show the table (as Markdown in a notebook, as text elsewhere), then raise if a claim failed."""
        if not self.rows:
            raise ValueError("CheckTable.report(): no claims were recorded (call expect(...) first)")
        try:
            from IPython import get_ipython
            from IPython.display import Markdown, display
            shown = get_ipython() is not None
        except ImportError:
            shown = False
        if shown:
            display(Markdown(self.markdown()))
        else:
            print(self.markdown())
        if self.failed:
            raise AssertionError(f"{len(self.failed)} of {len(self.rows)} claims did not hold: "
                                 + "; ".join(self.failed))
