"""Reading one labelled file: the texts and labels of a ``.csv``, ``.jsonl`` or ``.parquet`` file.

Contract: :func:`read_table` returns two aligned lists of strings in file order, or raises
:class:`~ftsweep_common.errors.DataError` with one line that names the sweep key
(``trainer.data.train``), the file and what to change: a missing, empty or unparseable file, an
unknown extension, a missing column, a blank text or label, a missing label written as text
(:mod:`trainers.label_checks`). A bad data file so costs seconds in the driver's ``check()``
rather than a failed trial.

pandas / pyarrow are imported only by the reader of ``.csv`` / ``.parquet``, so importing this
module is cheap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ftsweep_common.errors import DataError
from trainers.label_checks import numeric_labels, refuse_missing_markers, require_values

ALLOWED_EXTENSIONS = (".csv", ".jsonl", ".parquet")


def read_table(
    path: Path,
    text_column: str,
    label_column: str,
    *,
    key: str | None = None,
    text_setting: str = "trainer.data.text_column",
    text_what: str = "text",
    labels_are_numbers: bool = False,
) -> tuple[list[str], list[str]]:
    """Read the texts and labels of a ``.csv``, ``.jsonl`` or ``.parquet`` file.

    Labels are kept as strings (``str(value)``, stripped; a whole float such as ``1.0`` reads as
    ``"1"`` so a parquet file and a csv file agree).

    Args:
        path: the file.
        text_column: the column of the texts.
        label_column: the column of the labels.
        key: the sweep key naming this file (``trainer.data.train``), for messages.
        text_setting: the setting that names ``text_column``, for messages (an image table's
            ``trainer.data.path_column``).
        text_what: what ``text_column`` holds, for messages (``image path``).
        labels_are_numbers: a regression task's labels: each must be a finite number
            (:func:`trainers.label_checks.numeric_labels`); they are still returned as strings.

    Returns:
        ``(texts, labels)``, aligned, in file order.

    Raises:
        DataError: for a missing, empty or unparseable file, an unknown extension, a missing column
            or empty texts / labels; one line naming ``key`` and the file.
    """
    path = Path(path)
    prefix = f"{key}: " if key else ""
    suffix = path.suffix.lower()
    if suffix not in ALLOWED_EXTENSIONS:
        raise DataError(
            f"{prefix}{path} has the extension {path.suffix or '(none)'!r}; allowed: "
            f"{', '.join(ALLOWED_EXTENSIONS)}"
        )
    if not path.exists():
        raise DataError(f"{prefix}{path} does not exist")
    if not path.is_file():
        raise DataError(f"{prefix}{path} is not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{prefix}{path} is empty")
    reader = {".csv": _read_csv, ".jsonl": _read_jsonl, ".parquet": _read_parquet}[suffix]
    columns, rows = reader(path, [text_column, label_column], prefix)
    for column, setting, what in (
        (text_column, text_setting, text_what),
        (label_column, "trainer.data.label_column", "label"),
    ):
        if column not in columns:
            raise DataError(
                f"{prefix}{path} has no column {column!r}; its columns are: "
                f"{', '.join(map(str, columns)) or '(none)'}; "
                f"set {setting} to the column that holds the {what}"
            )
    texts, labels = rows[text_column], rows[label_column]
    if not texts:
        raise DataError(f"{prefix}{path} has no rows")
    texts = [_text_value(value) for value in texts]
    labels = [_label_value(value) for value in labels]
    require_values(texts, f"{prefix}{path}", f"empty {text_what} in column {text_column!r}")
    require_values(labels, f"{prefix}{path}", f"empty label in column {label_column!r}")
    if labels_are_numbers:
        numeric_labels(labels, f"{prefix}{path}", label_column)
    else:
        refuse_missing_markers(labels, f"{prefix}{path}", label_column)
    return texts, labels


def _read_csv(path: Path, wanted: list[str], prefix: str) -> tuple[list[str], dict[str, list[Any]]]:
    import pandas as pd

    try:
        # Every cell as a string and no NA guessing: the text "NA" is a text, "" is caught below.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{prefix}{path} is empty") from error
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{prefix}{path} cannot be read as CSV: {_one_line(error)}") from error
    columns = [str(column) for column in frame.columns]
    return columns, {column: frame[column].tolist() for column in wanted if column in frame.columns}


def _read_jsonl(path: Path, wanted: list[str], prefix: str) -> tuple[list[str], dict[str, list[Any]]]:
    rows: dict[str, list[Any]] = {column: [] for column in wanted}
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8") as stream:
        try:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{prefix}{path} line {number} is not valid JSON: {error.msg}") from error
                if not isinstance(record, dict):
                    raise DataError(f"{prefix}{path} line {number} is not a JSON object")
                seen.update(dict.fromkeys(record))
                for column in wanted:
                    rows[column].append(record.get(column))
        except UnicodeDecodeError as error:
            raise DataError(f"{prefix}{path} is not UTF-8 text: {_one_line(error)}") from error
    if not seen and not rows[wanted[0]]:
        raise DataError(f"{prefix}{path} has no rows")
    # A column missing from every line is a missing column; missing from some lines is an empty value.
    return list(seen), {column: values for column, values in rows.items() if column in seen}


def _read_parquet(path: Path, wanted: list[str], prefix: str) -> tuple[list[str], dict[str, list[Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        columns = list(parquet.schema_arrow.names)
        present = [column for column in wanted if column in columns]
        table = parquet.read(columns=present)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{prefix}{path} cannot be read as Parquet: {_one_line(error)}") from error
    # to_pylist keeps the exact Python values (an int label stays 1, not 1.0).
    return columns, {column: table.column(column).to_pylist() for column in present}


def _text_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _label_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
