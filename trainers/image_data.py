"""Labelled images: reading an image folder or a table of paths, splitting, checking, and a lazy Dataset.

Two layouts, for each of ``trainer.data.train`` / ``validation`` / ``test``:

- an **image folder**: one subfolder per class (``train/cat/001.png``), the layout torchvision's
  ``ImageFolder`` and ``datasets``' ``imagefolder`` read; images in nested folders count for their class;
- a **table** (``.csv``, ``.jsonl`` or ``.parquet``) with a path column and a label column, the paths
  relative to the table's folder (or absolute).

Every problem a user can fix raises :class:`~ftsweep_common.errors.DataError` in one line naming the
sweep key and the file: missing images (a count and the first few), images that cannot be read, a
single class, validation / test labels the training data lacks. Splitting and subsampling are
:mod:`trainers.data`'s (the same seeds give the same rows as for text).

Images are decoded with PIL only when a batch needs them (:class:`ImageDataset`, in DataLoader workers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from ftsweep_common.errors import DataError
from trainers.base import StrictModel

if TYPE_CHECKING:
    import torch

#: File name endings read as images (compared in lower case).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
TABLE_EXTENSIONS = (".csv", ".jsonl", ".parquet")
#: How many offending files or rows a message names before it says "and N more".
_SHOWN = 5

#: A transform: ``(image (3, H, W) uint8, generator) -> tensor``.
Transform = Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]


class ImageDataSettings(StrictModel):
    """``trainer.data`` of an image trainer: where the labelled images are."""

    train: str = Field(
        description=(
            "Training images: an image folder (one subfolder per class) or a .csv / .jsonl / .parquet "
            "table of path and label (paths relative to the table); relative to the sweep file."
        )
    )
    validation: str | None = Field(
        None,
        description="Validation images; when absent, validation_fraction of the training images is held out.",
    )
    test: str | None = Field(
        None,
        description="Test images: read only by `ftsweep final`; trials never read them.",
    )
    path_column: str = Field("path", min_length=1, description="The table column that holds the image path.")
    label_column: str = Field("label", min_length=1, description="The table column that holds the label.")
    validation_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Share of the training images split off (stratified) when there is no validation set.",
    )
    max_train_samples: int | None = Field(
        None, ge=2, description="Train on a seeded, stratified subsample of at most this many images."
    )
    split_seed: int = Field(0, description="Seed of the validation split and of the subsample (per study).")

    @model_validator(mode="after")
    def _path_is_not_the_label(self) -> ImageDataSettings:
        if self.path_column == self.label_column:
            raise ValueError(
                f"path_column and label_column are both {self.path_column!r}; set trainer.data.path_column "
                "and trainer.data.label_column to two different columns"
            )
        return self


@dataclass
class ImageSplit:
    """One split of labelled images.

    Attributes:
        paths: the image files, in folder or table order.
        labels: the labels as strings, aligned with ``paths``.
        source: where they came from, for messages.
    """

    paths: list[Path]
    labels: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int], source: str | None = None) -> ImageSplit:
        """The images at ``indices`` (in that order) as a new split."""
        return ImageSplit(
            [self.paths[i] for i in indices], [self.labels[i] for i in indices], source or self.source
        )

    def label_ids(self, labels: Sequence[str]) -> list[int]:
        """The labels as indices into ``labels`` (every label must be in it)."""
        index = {label: position for position, label in enumerate(labels)}
        return [index[label] for label in self.labels]

    def values(self) -> list[float]:
        """The labels as numbers (``trainer.task: regression``; read with their check)."""
        return [float(label) for label in self.labels]


@dataclass
class LabelledImages:
    """The splits of one trial and the classes (the training labels, sorted; a class's id is its position;
    empty for ``trainer.task: regression``, whose labels are numbers)."""

    train: ImageSplit
    validation: ImageSplit
    test: ImageSplit | None
    labels: list[str]


# --------------------------------------------------------------------------------------------
# Reading one split
# --------------------------------------------------------------------------------------------


def read_image_folder(folder: Path, key: str) -> ImageSplit:
    """The images of an image folder: each subfolder is a class (hidden entries are skipped).

    Raises:
        DataError: for a folder with no class subfolders, or class folders without images.
    """
    folder = Path(folder)
    classes = sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(
            f"{key}: {folder} has no class subfolders; an image folder holds one subfolder per class "
            "(train/cat/1.png, train/dog/2.png), or give a .csv / .jsonl / .parquet table of path,label"
        )
    paths: list[Path] = []
    labels: list[str] = []
    empty: list[str] = []
    for class_folder in classes:
        images = sorted(
            path
            for path in class_folder.rglob("*")
            if path.suffix.lower() in IMAGE_EXTENSIONS
            and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(class_folder).parts)
        )
        if not images:
            empty.append(class_folder.name)
        paths.extend(images)
        labels.extend([class_folder.name] * len(images))
    if empty:
        raise DataError(
            f"{key}: the class folder{'s' if len(empty) > 1 else ''} {_names(empty)} of {folder} "
            f"hold{'' if len(empty) > 1 else 's'} no images ({', '.join(IMAGE_EXTENSIONS)}); add images "
            "or remove the folder"
        )
    return ImageSplit(paths, labels, str(folder))


def read_image_table(
    path: Path, path_column: str, label_column: str, key: str, labels_are_numbers: bool = False
) -> ImageSplit:
    """The images listed in a ``.csv`` / ``.jsonl`` / ``.parquet`` table (paths relative to its folder).

    Raises:
        DataError: for an unreadable or empty table, a missing column, empty paths or labels,
            a label that is not a finite number when ``labels_are_numbers`` (naming its row),
            and listed images that do not exist (their count and the first few).
    """
    from trainers.data_files import read_table

    path = Path(path)
    values, labels = read_table(
        path,
        path_column,
        label_column,
        key=key,
        text_setting="trainer.data.path_column",
        text_what="image path",
        labels_are_numbers=labels_are_numbers,
    )
    values = [value.strip() for value in values]
    paths = [_resolve(value, path.parent) for value in values]
    missing = [value for value, image in zip(values, paths, strict=True) if not image.is_file()]
    if missing:
        raise DataError(
            f"{key}: {len(missing)} of the {len(paths)} images listed in {path} do not exist: "
            f"{_names(missing)}; paths are relative to {path.parent}"
        )
    return ImageSplit(paths, labels, str(path))


def read_image_split(
    value: str, key: str, settings: ImageDataSettings, base_dir: Path, labels_are_numbers: bool = False
) -> ImageSplit:
    """Read the split that ``value`` (an image folder or a table, relative to ``base_dir``) names;
    ``labels_are_numbers`` (regression) takes a table only, each label a finite number."""
    from trainers.data import resolve_path

    path = resolve_path(value, base_dir)
    if not path.exists():
        raise DataError(f"{key}: {path} does not exist")
    if path.is_dir() and labels_are_numbers:
        raise DataError(
            f"{key}: {path} is an image folder, whose labels are class names; trainer.task regression needs "
            f"a {', '.join(TABLE_EXTENSIONS)} table of path,label with a number in the label column"
        )
    if path.is_dir():
        return read_image_folder(path, key)
    if path.suffix.lower() not in TABLE_EXTENSIONS:
        raise DataError(
            f"{key}: {path} is neither an image folder nor a table; allowed: a folder with one subfolder "
            f"per class, or a {', '.join(TABLE_EXTENSIONS)} file of path,label"
        )
    return read_image_table(path, settings.path_column, settings.label_column, key, labels_are_numbers)


def check_images_readable(split: ImageSplit, key: str) -> None:
    """Open every image's header with PIL (cheap: pixels are not decoded).

    Raises:
        DataError: naming how many images cannot be read and the first few, with PIL's reason.
    """
    failures = [f"{path.name} ({reason})" for path in split.paths if (reason := _unreadable(path))]
    if failures:
        raise DataError(
            f"{key}: {len(failures)} of the {len(split)} images of {split.source} cannot be read as images: "
            f"{_names(failures)}; replace or remove them"
        )


def load_image_splits(
    settings: ImageDataSettings,
    base_dir: Path,
    seed: int | None = None,
    *,
    include_test: bool = True,
    check_images: bool = True,
    task: Literal["classification", "regression"] = "classification",
) -> LabelledImages:
    """Read the splits ``settings`` names and check that they can train a classifier.

    Args:
        settings: the ``trainer.data`` section.
        base_dir: the folder relative paths resolve against (the sweep file's).
        seed: seed of the validation split and the subsample; None uses ``settings.split_seed``.
        include_test: read the test split too (trials pass False: only ``ftsweep final`` tests).
        check_images: open every image's header (:func:`check_images_readable`).
        task: ``regression`` reads tables whose labels are numbers (:func:`load_image_regression_splits`).

    Raises:
        DataError: for any problem with a split, a single training class, a validation / test
            label the training images lack, or a validation fraction that leaves nothing.
    """
    seed = settings.split_seed if seed is None else seed
    if task == "regression":
        return load_image_regression_splits(
            settings, base_dir, seed, include_test=include_test, check_images=check_images
        )
    train = read_image_split(settings.train, "trainer.data.train", settings, base_dir)
    labels = sorted(set(train.labels))
    if len(labels) < 2:
        raise DataError(
            f"trainer.data.train: {train.source} needs at least two classes; found only {labels[0]!r}"
        )
    splits: dict[str, ImageSplit] = {"trainer.data.train": train}
    if settings.validation is not None:
        validation = read_image_split(settings.validation, "trainer.data.validation", settings, base_dir)
        splits["trainer.data.validation"] = validation
    if settings.test and include_test:
        splits["trainer.data.test"] = read_image_split(settings.test, "trainer.data.test", settings, base_dir)
    for key, split in splits.items():
        if key != "trainer.data.train":
            _require_known_labels(split, labels, key)
        if check_images:
            check_images_readable(split, key)
    if settings.validation is None:
        train, validation = _split_off_validation(train, settings.validation_fraction, seed)
    if settings.max_train_samples is not None and settings.max_train_samples < len(train):
        train = _stratified_sample(train, settings.max_train_samples, seed)
    return LabelledImages(train, validation, splits.get("trainer.data.test"), labels)


def load_image_regression_splits(
    settings: ImageDataSettings,
    base_dir: Path,
    seed: int,
    *,
    include_test: bool = True,
    check_images: bool = True,
) -> LabelledImages:
    """The splits of ``trainer.task: regression``: tables only, every label a finite number, a plain
    seeded random validation split and subsample (no classes to stratify by); ``labels`` is empty.

    Raises:
        DataError: for an image folder, any table problem, a label that is not a finite number
            (naming its row), missing or unreadable images.
    """
    from trainers.splits import random_sample, random_split_off_validation

    def read(value: str, key: str) -> ImageSplit:
        split = read_image_split(value, key, settings, base_dir, labels_are_numbers=True)
        if check_images:
            check_images_readable(split, key)
        return split

    train = read(settings.train, "trainer.data.train")
    validation = read(settings.validation, "trainer.data.validation") if settings.validation else None
    test = read(settings.test, "trainer.data.test") if settings.test and include_test else None
    if validation is None:
        kept, held = random_split_off_validation(_as_rows(train), settings.validation_fraction, seed)
        train, validation = _from_rows(kept), _from_rows(held)
    if settings.max_train_samples is not None and settings.max_train_samples < len(train):
        train = _from_rows(random_sample(_as_rows(train), settings.max_train_samples, seed))
    return LabelledImages(train, validation, test, [])


def _split_off_validation(train: ImageSplit, fraction: float, seed: int) -> tuple[ImageSplit, ImageSplit]:
    from trainers.splits import split_off_validation

    kept, held = split_off_validation(_as_rows(train), fraction, seed)
    return _from_rows(kept), _from_rows(held)


def _stratified_sample(split: ImageSplit, size: int, seed: int) -> ImageSplit:
    from trainers.splits import stratified_sample

    return _from_rows(stratified_sample(_as_rows(split), size, seed))


def _as_rows(split: ImageSplit) -> Any:
    """The split as :class:`trainers.splits.Split` rows (path strings as texts), to reuse its splitting."""
    from trainers.splits import Split

    return Split([str(path) for path in split.paths], list(split.labels), split.source)


def _from_rows(rows: Any) -> ImageSplit:
    return ImageSplit([Path(text) for text in rows.texts], list(rows.labels), rows.source)


def _require_known_labels(split: ImageSplit, labels: list[str], key: str) -> None:
    known = set(labels)
    rows = [number for number, label in enumerate(split.labels, start=1) if label not in known]
    if rows:
        unseen = sorted({split.labels[number - 1] for number in rows})
        raise DataError(
            f"{key}: {split.source} has labels the training images lack: {_names([repr(u) for u in unseen])} "
            f"({len(rows)} image{'s' if len(rows) > 1 else ''}, e.g. {split.paths[rows[0] - 1].name}); "
            f"the training labels are: {', '.join(labels)}"
        )


def _resolve(value: str, folder: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def _unreadable(path: Path) -> str | None:
    """Why PIL cannot open ``path`` as an image, or None when it can."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 (reading the header is the check)
    except UnidentifiedImageError:
        return "not an image PIL can identify"
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return (str(error).strip().splitlines() or [type(error).__name__])[0]
    return None


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(str(item) for item in items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


# --------------------------------------------------------------------------------------------
# Decoding, the Dataset and the sampler
# --------------------------------------------------------------------------------------------


def decode_image(path: Path) -> torch.Tensor:
    """The image at ``path`` as a ``(3, H, W)`` uint8 RGB tensor (grey, palette and alpha images converted).

    Raises:
        DataError: naming the file when PIL cannot decode it.
    """
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(f"{path} cannot be read as an image: {first}") from error
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch of one trial."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63 - 1)


class ImageDataset:
    """A map-style torch Dataset of ``(image tensor, target)``; images are decoded when fetched.

    The key is an index (validation: the transform gets a generator seeded by the index) or an
    ``(index, epoch)`` pair from :class:`EpochSampler` (training: seeded by trial seed, epoch and
    index, so the augmentation does not depend on the DataLoader's workers).

    Args:
        split: the images.
        labels: the classes (the target is a label's id, its position); None for a regression
            split, whose target is its label as a number.
        transform: ``(uint8 image, generator) -> tensor``, e.g.
            :class:`trainers.image_augment.TrainTransform`.
        seed: the trial's seed.
    """

    def __init__(
        self, split: ImageSplit, labels: Sequence[str] | None, transform: Transform, seed: int = 0
    ) -> None:
        self.paths = list(split.paths)
        #: Each image's target: its class id, or its number (regression).
        targets = split.values() if labels is None else split.label_ids(labels)
        self.label_ids: list[int] | list[float] = targets
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int | float]:
        import torch

        index, epoch = (key, -1) if isinstance(key, int) else key
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        return self.transform(decode_image(self.paths[index]), generator), self.label_ids[index]


class EpochSampler:
    """Yields ``(index, epoch)`` keys of :class:`ImageDataset`, shuffled per epoch (in the main process,
    so :meth:`set_epoch` reaches persistent DataLoader workers through the keys).

    Args:
        n_images: the dataset's length.
        seed: the trial's seed.
        shuffle: shuffle the order each epoch (training) or keep it.
    """

    def __init__(self, n_images: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n_images = int(n_images)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_images

    def __iter__(self) -> Iterator[tuple[int, int]]:
        import torch

        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.n_images, generator=generator).tolist()
        else:
            order = list(range(self.n_images))
        return iter([(index, self.epoch) for index in order])
