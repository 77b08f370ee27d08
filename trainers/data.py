"""Labelled text data: reading files, splitting, tokenizing once per study, and batching with little padding.

Every problem a user can fix raises :class:`~ftsweep_common.errors.DataError` with one line that
names the sweep key (``trainer.data.train``) and the file, so a bad data file costs seconds in
the driver's ``check()`` rather than a failed trial.

Reading needs pandas / pyarrow only for ``.csv`` / ``.parquet``; batching needs torch. Both are
imported inside the functions that use them, so importing this module is cheap.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from ftsweep_common.errors import DataError
from trainers.base import StrictModel

if TYPE_CHECKING:
    import torch

ALLOWED_EXTENSIONS = (".csv", ".jsonl", ".parquet")
#: Labels (compared in lower case) that are a missing value written out as text, never a class.
MISSING_LABEL_MARKERS = frozenset({"nan", "-nan", "<na>", "#n/a", "n/a", "null"})
#: How many offending rows an error message lists before it says "and N more".
_ROWS_SHOWN = 5


class DataSettings(StrictModel):
    """``trainer.data``: where the labelled data is and which columns hold text and label."""

    train: str = Field(description="Training file (.csv, .jsonl or .parquet); relative to the sweep file.")
    validation: str | None = Field(
        None,
        description="Validation file; when absent, validation_fraction of the training rows is split off.",
    )
    test: str | None = Field(
        None,
        description=(
            "Test file: read only by `ftsweep final`, which evaluates the final model on it once. Trials "
            "never read it (planning checks that it is valid), so no choice can be made on it."
        ),
    )
    text_column: str = Field("text", min_length=1, description="The column that holds the text.")
    label_column: str = Field("label", min_length=1, description="The column that holds the label.")
    validation_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Share of the training rows split off (stratified) when there is no validation file.",
    )
    max_train_samples: int | None = Field(
        None, ge=2, description="Train on a seeded, stratified subsample of at most this many rows."
    )
    split_seed: int = Field(
        0,
        description=(
            "Seed of the validation split and of the subsample. Fixed per study, not per trial, so that "
            "every trial is scored on the same validation rows."
        ),
    )

    @model_validator(mode="after")
    def _text_is_not_the_label(self) -> DataSettings:
        if self.text_column == self.label_column:
            raise ValueError(
                f"text_column and label_column are both {self.text_column!r}: the model would read its "
                "own label; set trainer.data.text_column and trainer.data.label_column "
                "to two different columns"
            )
        return self


@dataclass
class Split:
    """One split of labelled data.

    Attributes:
        texts: the texts, in file order.
        labels: the labels as strings, aligned with ``texts``.
        source: where the rows came from, for messages (a path, or a path and what was done to it).
    """

    texts: list[str]
    labels: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int], source: str | None = None) -> Split:
        """The rows at ``indices`` (in that order) as a new split."""
        return Split(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            source if source else self.source,
        )

    def label_ids(self, labels: Sequence[str]) -> list[int]:
        """The labels as indices into ``labels`` (every label must be in it)."""
        index = {label: position for position, label in enumerate(labels)}
        return [index[label] for label in self.labels]


@dataclass
class LabelledData:
    """The splits of one trial and the label set (sorted labels of the training data).

    Attributes:
        train: rows to train on (after any validation split and subsample).
        validation: rows to score each epoch on.
        test: rows to score once at the end, or None.
        labels: the classes, sorted; a class's id is its position here.
    """

    train: Split
    validation: Split
    test: Split | None
    labels: list[str]


# --------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------


def read_table(
    path: Path, text_column: str, label_column: str, *, key: str | None = None
) -> tuple[list[str], list[str]]:
    """Read the texts and labels of a ``.csv``, ``.jsonl`` or ``.parquet`` file.

    Labels are kept as strings (``str(value)``, stripped; a whole float such as ``1.0`` reads as
    ``"1"`` so a parquet file and a csv file agree).

    Args:
        path: the file.
        text_column: the column of the texts.
        label_column: the column of the labels.
        key: the sweep key naming this file (``trainer.data.train``), for messages.

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
        (text_column, "trainer.data.text_column", "text"),
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
    _require_values(texts, f"{prefix}{path}", f"empty text in column {text_column!r}")
    _require_values(labels, f"{prefix}{path}", f"empty label in column {label_column!r}")
    _refuse_missing_markers(labels, f"{prefix}{path}", label_column)
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


def _require_values(values: list[str], where: str, what: str) -> None:
    """Raise a DataError naming the first few rows (1-based, header not counted) whose value is blank."""
    bad = [number for number, value in enumerate(values, start=1) if not value.strip()]
    if bad:
        raise DataError(f"{where} has {what} in {_describe_rows(bad)}")


def _refuse_missing_markers(labels: list[str], where: str, column: str) -> None:
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
            f"({_describe_rows(bad)}); it would train as a class of its own: "
            "fill in those labels or remove the rows"
        )


def _describe_rows(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:_ROWS_SHOWN]))
    more = f" and {len(rows) - _ROWS_SHOWN} more" if len(rows) > _ROWS_SHOWN else ""
    return f"data row{'s' if len(rows) > 1 else ''} {shown}{more} (counting from 1)"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def resolve_path(value: str, base_dir: Path) -> Path:
    """``value`` as a path: ``~`` expanded, relative paths taken from ``base_dir``."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def load_splits(
    settings: DataSettings, base_dir: Path, seed: int | None = None, *, include_test: bool = True
) -> LabelledData:
    """Read the splits named by ``settings`` and check that they can train a classifier.

    Args:
        settings: the ``trainer.data`` section.
        base_dir: the folder relative paths resolve against (the sweep file's).
        seed: seed of the validation split and the subsample; None uses ``settings.split_seed``.
        include_test: read the test file too. Trials pass False: the test split is for the final
            model only (``ftsweep final``), so a trial never opens it and nothing is chosen on it.

    Returns:
        the splits and the sorted label set of the training data.

    Raises:
        DataError: for any file problem, a single-class training set, a validation / test label
            the training data lacks, or a split the validation fraction would leave empty.
    """
    seed = settings.split_seed if seed is None else seed
    train = _read_split(settings.train, "trainer.data.train", settings, base_dir)
    labels = sorted(set(train.labels))
    if len(labels) < 2:
        raise DataError(
            f"trainer.data.train: {train.source} needs at least two classes; found only {labels[0]!r}"
        )
    if settings.validation is not None:
        validation = _read_split(settings.validation, "trainer.data.validation", settings, base_dir)
    else:
        train, validation = split_off_validation(train, settings.validation_fraction, seed)
    test = (
        _read_split(settings.test, "trainer.data.test", settings, base_dir)
        if settings.test and include_test
        else None
    )
    for key, split in (("trainer.data.validation", validation), ("trainer.data.test", test)):
        if split is not None:
            _require_known_labels(split, labels, key)
    if settings.max_train_samples is not None and settings.max_train_samples < len(train):
        train = stratified_sample(train, settings.max_train_samples, seed)
    return LabelledData(train=train, validation=validation, test=test, labels=labels)


def _read_split(value: str, key: str, settings: DataSettings, base_dir: Path) -> Split:
    path = resolve_path(value, base_dir)
    texts, labels = read_table(path, settings.text_column, settings.label_column, key=key)
    return Split(texts, labels, str(path))


def _require_known_labels(split: Split, labels: list[str], key: str) -> None:
    known = set(labels)
    unknown_rows = [number for number, label in enumerate(split.labels, start=1) if label not in known]
    if unknown_rows:
        unseen = sorted({split.labels[number - 1] for number in unknown_rows})
        raise DataError(
            f"{key}: {split.source} has labels the training data lacks: "
            f"{', '.join(map(repr, unseen[:_ROWS_SHOWN]))} "
            f"({_describe_rows(unknown_rows)}); the training labels are: {', '.join(labels)}"
        )


def _indices_by_label(split: Split, seed: int) -> dict[str, list[int]]:
    """Row indices per label, each list shuffled by a generator seeded with ``seed``."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(split.labels):
        groups[label].append(index)
    rng = random.Random(seed)
    # Sorted labels: the shuffles do not depend on the order labels first appear in.
    return {label: rng.sample(groups[label], len(groups[label])) for label in sorted(groups)}


def split_off_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split ``fraction`` of each class off ``train`` (seeded); each class keeps a training row.

    Raises:
        DataError: when either split would be empty.
    """
    kept: list[int] = []
    held: list[int] = []
    for indices in _indices_by_label(train, seed).values():
        # Never take a class's last row: the training data must keep every class.
        take = min(round(len(indices) * fraction), len(indices) - 1)
        held.extend(indices[:take])
        kept.extend(indices[take:])
    if not held:
        raise DataError(
            f"trainer.data.validation_fraction: {fraction} of the {len(train)} rows of {train.source} leaves "
            "no validation rows; give a larger fraction, more rows or a trainer.data.validation file"
        )
    # File order within each split: the result does not depend on the shuffle beyond membership.
    return (
        train.subset(sorted(kept), f"{train.source} (less a {fraction:g} validation split)"),
        train.subset(sorted(held), f"{train.source} (a {fraction:g} validation split)"),
    )


def stratified_sample(split: Split, size: int, seed: int) -> Split:
    """A seeded subsample of ``size`` rows with the class proportions of ``split`` (each class kept)."""
    groups = _indices_by_label(split, seed)
    counts = {label: len(indices) for label, indices in groups.items()}
    quota = _allocate(counts, size)
    chosen = sorted(index for label, indices in groups.items() for index in indices[: quota[label]])
    return split.subset(chosen, f"{split.source} (a sample of {size})")


def _allocate(counts: dict[str, int], size: int) -> dict[str, int]:
    """Share ``size`` among classes in proportion to ``counts`` (largest remainder), at least 1 each."""
    total = sum(counts.values())
    exact = {label: size * count / total for label, count in counts.items()}
    quota = {label: min(counts[label], max(1, math.floor(value))) for label, value in exact.items()}
    by_remainder = sorted(counts, key=lambda label: (-(exact[label] - math.floor(exact[label])), label))
    while sum(quota.values()) < size:
        grown = False
        for label in by_remainder:
            if sum(quota.values()) >= size:
                break
            if quota[label] < counts[label]:
                quota[label] += 1
                grown = True
        if not grown:
            break
    while sum(quota.values()) > size:  # only when the "at least 1" floor overshot
        label = max(quota, key=lambda name: (quota[name], name))
        quota[label] -= 1
    return quota


# --------------------------------------------------------------------------------------------
# Tokenizing and batching
# --------------------------------------------------------------------------------------------


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, with special tokens, truncated to ``max_length``, not padded.

    This is the one place a trial tokenizes; padding happens per batch (:class:`PadCollator`).
    """
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return [list(ids) for ids in encoded["input_ids"]]


# --------------------------------------------------------------------------------------------
# Tokenizing once per study: the token ids cached next to the study
# --------------------------------------------------------------------------------------------

#: Bump when the layout of a token entry or the meaning of its key changes.
TOKENS_FORMAT = 1


@dataclass
class TokenizedSplit:
    """One split's token ids.

    Attributes:
        ids: the token ids of each text (special tokens added, truncated, not padded).
        digest: SHA-256 of the ids themselves (lengths and values): what keys the features of
            frozen layers computed from them.
        cached: True when the ids were read from the study's cache rather than tokenized here.
    """

    ids: list[list[int]]
    digest: str
    cached: bool = False

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.ids]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of what determines a tokenizer's output: its class, its full definition
    (``backend_tokenizer.to_str()`` for a fast tokenizer, the vocabulary and init arguments for a
    slow one), its special tokens and its truncation side."""
    import hashlib

    hasher = hashlib.sha256()
    special = {name: str(value) for name, value in getattr(tokenizer, "special_tokens_map", {}).items()}
    header = {
        "class": type(tokenizer).__name__,
        "special_tokens": special,
        "special_ids": sorted(getattr(tokenizer, "all_special_ids", [])),
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
    }
    hasher.update(json.dumps(header, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        hasher.update(backend.to_str().encode())
    else:
        vocabulary = sorted(tokenizer.get_vocab().items())
        hasher.update(json.dumps(vocabulary).encode())
        hasher.update(json.dumps(getattr(tokenizer, "init_kwargs", {}), sort_keys=True, default=str).encode())
    return hasher.hexdigest()


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 of a list of texts (each length-prefixed, so no two lists share a digest by concatenation)."""
    import hashlib

    hasher = hashlib.sha256()
    hasher.update(len(texts).to_bytes(8, "little"))
    for text in texts:
        data = text.encode("utf-8")
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()


def _flatten(ids: Sequence[Sequence[int]]) -> tuple[Any, Any]:
    """``(flat, lengths)``: the ids of all rows in one int64 array, and each row's length."""
    import itertools

    import numpy as np

    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def _unflatten(flat: Any, lengths: Any) -> list[list[int]]:
    import numpy as np

    values = flat.tolist()
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]]
    return [values[start:end] for start, end in zip(starts, ends, strict=True)]


def ids_digest(flat: Any, lengths: Any) -> str:
    """SHA-256 of token ids given as ``(flat, lengths)`` int arrays (see :func:`_flatten`)."""
    import hashlib

    import numpy as np

    hasher = hashlib.sha256(b"token-ids-v1")
    hasher.update(np.ascontiguousarray(lengths, dtype="<i8").tobytes())
    hasher.update(np.ascontiguousarray(flat, dtype="<i8").tobytes())
    return hasher.hexdigest()


def tokens_key(fingerprint: str, texts: Sequence[str], max_length: int) -> str:
    """The cache key of the token ids of ``texts``: tokenizer, texts and max_length."""
    from trainers.shared_folder import digest

    return digest(
        {
            "kind": "tokens",
            "format": TOKENS_FORMAT,
            "tokenizer": fingerprint,
            "texts": texts_digest(texts),
            "max_length": int(max_length),
        }
    )


def tokenize_cached(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    cache_dir: Path | None,
    *,
    fingerprint: str | None = None,
) -> TokenizedSplit:
    """The token ids of ``texts`` (as :func:`tokenize_texts`), tokenized once per study.

    With ``cache_dir`` (the study's ``cache_dir / "tokens"``) the ids are stored in an entry keyed
    by :func:`tokens_key`, written atomically under a file lock (see
    :func:`trainers.shared_folder.shared_entry`): the first trial tokenizes, every later trial of
    any worker sharing the folder reads. Without it, the texts are tokenized here.

    Args:
        fingerprint: :func:`tokenizer_fingerprint` of ``tokenizer``, when the caller has it already.
    """
    import numpy as np

    if cache_dir is None:
        ids = tokenize_texts(tokenizer, texts, max_length)
        return TokenizedSplit(ids, ids_digest(*_flatten(ids)))

    from trainers.shared_folder import save_array, save_json, shared_entry

    key = tokens_key(fingerprint or tokenizer_fingerprint(tokenizer), texts, max_length)
    made: dict[str, Any] = {}

    def create(folder: Path) -> None:
        ids = tokenize_texts(tokenizer, texts, max_length)
        flat, lengths = _flatten(ids)
        # int32 halves the file; every tokenizer's vocabulary fits.
        narrow = flat.astype(np.int32) if (flat.size == 0 or int(flat.max()) < 2**31) else flat
        save_array(folder / "ids.npy", narrow)
        save_array(folder / "lengths.npy", lengths)
        digest = ids_digest(flat, lengths)
        save_json(folder / "meta.json", {"format": TOKENS_FORMAT, "rows": len(ids), "digest": digest})
        made.update(ids=ids, digest=digest)

    entry, created = shared_entry(Path(cache_dir), key, create)
    if created:
        return TokenizedSplit(made["ids"], made["digest"])
    flat = np.load(entry / "ids.npy")
    lengths = np.load(entry / "lengths.npy")
    if len(lengths) != len(texts):
        raise RuntimeError(
            f"token cache: the entry {entry} has {len(lengths)} rows for {len(texts)} texts; delete it"
        )
    return TokenizedSplit(_unflatten(flat, lengths), ids_digest(flat, lengths), cached=True)


class PadCollator:
    """Turns a list of id lists into padded tensors, padding to the batch's longest sequence.

    Args:
        pad_id: the tokenizer's padding id.
        token_type_ids: also produce all-zero ``token_type_ids`` (for models that take them).
    """

    def __init__(self, pad_id: int, token_type_ids: bool = False) -> None:
        self.pad_id = pad_id
        self.token_type_ids = token_type_ids

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> PadCollator:
        """A collator with the tokenizer's pad id that adds token_type_ids when the model takes them."""
        pad_id = tokenizer.pad_token_id
        if pad_id is None:  # e.g. GPT-style tokenizers: any id works, the attention mask hides it
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        return cls(pad_id, "token_type_ids" in getattr(tokenizer, "model_input_names", ()))

    def __call__(self, sequences: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_type_ids:
            batch["token_type_ids"] = torch.zeros_like(input_ids)
        return batch


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (trial seed, epoch): a resumed trial replays epoch ``epoch`` exactly."""
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, chunk_batches: int = 50
) -> list[list[int]]:
    """Shuffled batches of row indices whose rows have similar lengths, so padding is small.

    The rows are shuffled, cut into chunks of ``chunk_batches`` batches, sorted by length within a
    chunk and cut into batches; the batch order is shuffled again so that long and short batches mix.

    Args:
        lengths: the token count of each row.
        batch_size: rows per batch (the last batch of a chunk may be smaller).
        generator: the only source of randomness (seed it per epoch with :func:`epoch_seed`).
        chunk_batches: batches per sorting chunk; larger means less padding but less randomness.
    """
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        # Python's sort is stable: equal lengths keep the shuffled order.
        part = sorted(order[start : start + chunk], key=lambda index: lengths[index])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of row indices sorted by length (for evaluation, where order does not matter)."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
