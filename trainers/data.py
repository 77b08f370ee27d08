"""The ``trainer.data`` section, and the labelled splits of a trial it names.

Contract: :func:`load_splits` reads the files the settings name (:mod:`trainers.data_files`),
splits off validation rows and subsamples (:mod:`trainers.splits`), and checks that the result can
train a classifier (two classes at least, no validation / test label the training data lacks:
:mod:`trainers.label_checks`). Every problem a user can fix raises
:class:`~ftsweep_common.errors.DataError` with one line that names the sweep key
(``trainer.data.train``) and the file. A trial never reads the test file (``include_test=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ftsweep_common.errors import DataError
from trainers.base import StrictModel
from trainers.data_files import read_table
from trainers.label_checks import require_known_labels
from trainers.splits import (
    Split,
    random_sample,
    random_split_off_validation,
    split_off_validation,
    stratified_sample,
)


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


def resolve_path(value: str, base_dir: Path) -> Path:
    """``value`` as a path: ``~`` expanded, relative paths taken from ``base_dir``."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def load_splits(
    settings: DataSettings,
    base_dir: Path,
    seed: int | None = None,
    *,
    include_test: bool = True,
    task: Literal["classification", "regression"] = "classification",
) -> LabelledData:
    """Read the splits named by ``settings`` and check that they can train a classifier.

    Args:
        settings: the ``trainer.data`` section.
        base_dir: the folder relative paths resolve against (the sweep file's).
        seed: seed of the validation split and the subsample; None uses ``settings.split_seed``.
        include_test: read the test file too. Trials pass False: the test split is for the final
            model only (``ftsweep final``), so a trial never opens it and nothing is chosen on it.
        task: ``regression`` reads the labels as numbers (:func:`load_regression_splits`).

    Returns:
        the splits and the sorted label set of the training data.

    Raises:
        DataError: for any file problem, a single-class training set, a validation / test label
            the training data lacks, or a split the validation fraction would leave empty.
    """
    seed = settings.split_seed if seed is None else seed
    if task == "regression":
        return load_regression_splits(settings, base_dir, seed, include_test=include_test)
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
            require_known_labels(split.labels, labels, f"{key}: {split.source}")
    if settings.max_train_samples is not None and settings.max_train_samples < len(train):
        train = stratified_sample(train, settings.max_train_samples, seed)
    return LabelledData(train=train, validation=validation, test=test, labels=labels)


def load_regression_splits(
    settings: DataSettings, base_dir: Path, seed: int, *, include_test: bool = True
) -> LabelledData:
    """The splits of a regression task: every label a finite number, a plain seeded validation split.

    ``labels`` of the result is empty (there are no classes); :meth:`Split.values` reads the numbers.

    Raises:
        DataError: for any file problem or a label that is not a finite number (naming its row).
    """

    def read(value: str, key: str) -> Split:
        return _read_split(value, key, settings, base_dir, labels_are_numbers=True)

    train = read(settings.train, "trainer.data.train")
    validation = read(settings.validation, "trainer.data.validation") if settings.validation else None
    test = read(settings.test, "trainer.data.test") if settings.test and include_test else None
    if validation is None:
        train, validation = random_split_off_validation(train, settings.validation_fraction, seed)
    if settings.max_train_samples is not None and settings.max_train_samples < len(train):
        train = random_sample(train, settings.max_train_samples, seed)
    return LabelledData(train=train, validation=validation, test=test, labels=[])


def _read_split(
    value: str, key: str, settings: DataSettings, base_dir: Path, labels_are_numbers: bool = False
) -> Split:
    path = resolve_path(value, base_dir)
    texts, labels = read_table(
        path, settings.text_column, settings.label_column, key=key, labels_are_numbers=labels_are_numbers
    )
    return Split(texts, labels, str(path))
