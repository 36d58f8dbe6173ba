"""How often two graders agree on the same answers: raw agreement, Cohen's kappa and the 2x2 table."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from calibtune.errors import CalibtuneError


@dataclass(frozen=True)
class Agreement:
    """Two graders compared on the answers both decided.

    ``table[(a, b)]`` counts answers that grader A marked ``a`` and grader B marked ``b``
    (all four keys present). ``raw`` is the fraction agreeing and ``kappa`` Cohen's kappa;
    both are NaN when nothing was compared, and kappa is NaN when it is undefined (both
    graders gave one and the same verdict to everything).
    """

    n: int
    n_skipped: int
    raw: float
    kappa: float
    table: dict[tuple[bool, bool], int]


def _verdict(value: Any) -> bool | None:
    """A grader verdict as True/False/None; NaN or pandas NA (missing values in a table) count as None."""
    if value is None:
        return None
    try:
        if value != value:  # NaN
            return None
        return bool(value)
    except TypeError:  # pandas NA refuses to be a truth value
        return None


def grader_agreement(a: Sequence[bool | None], b: Sequence[bool | None]) -> Agreement:
    """Compare two graders' verdicts on the same answers, skipping any answer either left undecided (None)."""
    if len(a) != len(b):
        raise CalibtuneError(f"cannot compare graders: {len(a)} verdicts against {len(b)}")
    pairs = [(x, y) for x, y in ((_verdict(x), _verdict(y)) for x, y in zip(a, b)) if x is not None and y is not None]
    table = {(x, y): 0 for x in (True, False) for y in (True, False)}
    for pair in pairs:
        table[pair] += 1
    n = len(pairs)
    if n == 0:
        return Agreement(n=0, n_skipped=len(a), raw=math.nan, kappa=math.nan, table=table)
    raw = (table[(True, True)] + table[(False, False)]) / n
    return Agreement(n=n, n_skipped=len(a) - n, raw=raw, kappa=_kappa(pairs), table=table)


def _kappa(pairs: list[tuple[bool, bool]]) -> float:
    """Cohen's kappa by scikit-learn; NaN where it is undefined."""
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            kappa = float(cohen_kappa_score([x for x, _ in pairs], [y for _, y in pairs], labels=[False, True]))
        except (ValueError, ZeroDivisionError):
            return math.nan
    return kappa if math.isfinite(kappa) else math.nan


def _number(value: float) -> str:
    """Three decimals, or "n/a" for NaN."""
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def format_agreement(agreement: Agreement, name_a: str, name_b: str, markdown: bool = False) -> str:
    """A summary line and the 2x2 table (rows: grader A, columns: grader B), as plain text or markdown."""
    t = agreement.table
    summary = (f"{name_a} vs {name_b}: {agreement.n} compared, {agreement.n_skipped} skipped, "
               f"agreement {_number(agreement.raw)}, Cohen's kappa {_number(agreement.kappa)}")
    header = ["", f"{name_b} correct", f"{name_b} incorrect"]
    rows = [[f"{name_a} correct", str(t[(True, True)]), str(t[(True, False)])],
            [f"{name_a} incorrect", str(t[(False, True)]), str(t[(False, False)])]]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return summary + "\n\n" + "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
             for row in [header, *rows]]
    return summary + "\n" + "\n".join(line.rstrip() for line in lines)
