"""One split of labelled rows, and the seeded ways to cut it: stratified (classes) or plain (regression).

Contract: :class:`Split` holds texts and string labels aligned, with a ``source`` for messages.
:func:`split_off_validation` and :func:`stratified_sample` (classification: every class keeps at
least one row) and :func:`random_split_off_validation` and :func:`random_sample` (regression: the
labels are numbers, not classes) are pure functions of the split, the fraction or size, and the
seed: the same arguments give the same rows on every machine and in every trial (the seed is the
study's ``split_seed``, never a trial's), and rows keep their file order within each result.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ftsweep_common.errors import DataError


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

    def values(self) -> list[float]:
        """The labels as numbers (regression; :func:`trainers.label_checks.numeric_labels` checked them)."""
        return [float(label) for label in self.labels]

    def label_ids(self, labels: Sequence[str]) -> list[int]:
        """The labels as indices into ``labels`` (every label must be in it)."""
        index = {label: position for position, label in enumerate(labels)}
        return [index[label] for label in self.labels]


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


def random_split_off_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split a seeded random ``fraction`` of the rows off ``train`` (not stratified: for numeric labels).

    Raises:
        DataError: when either split would be empty.
    """
    order = random.Random(seed).sample(range(len(train)), len(train))
    take = min(round(len(train) * fraction), len(train) - 1)
    if take < 1:
        raise DataError(
            f"trainer.data.validation_fraction: {fraction} of the {len(train)} rows of {train.source} leaves "
            "no validation rows; give a larger fraction, more rows or a trainer.data.validation file"
        )
    return (
        train.subset(sorted(order[take:]), f"{train.source} (less a {fraction:g} validation split)"),
        train.subset(sorted(order[:take]), f"{train.source} (a {fraction:g} validation split)"),
    )


def random_sample(split: Split, size: int, seed: int) -> Split:
    """A seeded random subsample of ``size`` rows (not stratified: for numeric labels), in file order."""
    chosen = sorted(random.Random(seed).sample(range(len(split)), min(size, len(split))))
    return split.subset(chosen, f"{split.source} (a sample of {size})")


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
