"""Row checks of labelled data, each failing with one line that names the rows to fix.

Contract: every function here takes plain lists (the values of one column, in file order) and a
``where`` prefix for messages (the sweep key and the file, e.g. ``trainer.data.train: data.csv``);
it returns nothing and raises :class:`~ftsweep_common.errors.DataError` naming the first few
offending rows (counting data rows from 1, the header not counted) and what to do. Nothing here
reads files or knows about splits, so the same checks serve every task's data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ftsweep_common.errors import DataError

#: Labels (compared in lower case) that are a missing value written out as text, never a class.
MISSING_LABEL_MARKERS = frozenset({"nan", "-nan", "<na>", "#n/a", "n/a", "null"})
#: How many offending rows an error message lists before it says "and N more".
ROWS_SHOWN = 5


def require_values(values: list[str], where: str, what: str) -> None:
    """Raise a DataError naming the first few rows (1-based, header not counted) whose value is blank."""
    bad = [number for number, value in enumerate(values, start=1) if not value.strip()]
    if bad:
        raise DataError(f"{where} has {what} in {describe_rows(bad)}")


def refuse_missing_markers(labels: list[str], where: str, column: str) -> None:
    """Raise a DataError naming the rows whose label is a written-out missing value.

    ``str(float("nan"))``, pandas' ``<NA>``, a spreadsheet's ``#N/A``: a missing label written as
    text would otherwise train as one more class. Refused rather than dropped, so that no row of
    the user's data disappears without them deciding it. ``None`` and ``NA`` are left alone: they
    are plausible class names ("no intent", "North America").
    """
    bad = [number for number, label in enumerate(labels, start=1) if label.lower() in MISSING_LABEL_MARKERS]
    if bad:
        found = sorted({labels[number - 1] for number in bad})
        raise DataError(
            f"{where} has a missing label written as {' / '.join(map(repr, found))} in column {column!r} "
            f"({describe_rows(bad)}); it would train as a class of its own: "
            "fill in those labels or remove the rows"
        )


def require_known_labels(labels: Sequence[str], known: Sequence[str], where: str) -> None:
    """Raise a DataError naming the rows whose label is not in ``known`` (the training labels, sorted)."""
    known_set = set(known)
    unknown_rows = [number for number, label in enumerate(labels, start=1) if label not in known_set]
    if unknown_rows:
        unseen = sorted({labels[number - 1] for number in unknown_rows})
        raise DataError(
            f"{where} has labels the training data lacks: "
            f"{', '.join(map(repr, unseen[:ROWS_SHOWN]))} "
            f"({describe_rows(unknown_rows)}); the training labels are: {', '.join(known)}"
        )


def describe_rows(rows: list[int]) -> str:
    """E.g. ``data rows 1, 4, 5, 8, 9 and 2 more (counting from 1)``: at most :data:`ROWS_SHOWN` numbers."""
    shown = ", ".join(map(str, rows[:ROWS_SHOWN]))
    more = f" and {len(rows) - ROWS_SHOWN} more" if len(rows) > ROWS_SHOWN else ""
    return f"data row{'s' if len(rows) > 1 else ''} {shown}{more} (counting from 1)"


def numeric_labels(labels: Sequence[str], where: str, column: str) -> list[float]:
    """The labels as floats, for a regression task; a DataError naming the rows that are not finite numbers.

    ``nan``, ``inf`` and text are refused, never dropped: a row of the user's data does not
    disappear without them deciding it.
    """
    values: list[float] = []
    bad: list[int] = []
    for number, label in enumerate(labels, start=1):
        try:
            value = float(label)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            bad.append(number)
        values.append(value)
    if bad:
        found = ", ".join(repr(labels[number - 1]) for number in bad[:ROWS_SHOWN])
        raise DataError(
            f"{where} has labels that are not finite numbers in column {column!r}: {found} "
            f"({describe_rows(bad)}); trainer.task regression needs a number in every row: "
            "fix those labels or remove the rows"
        )
    return values
