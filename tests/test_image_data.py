"""Image data, augmentations and tiny image models: the building blocks of the image-classification trainer.

Real files throughout: the coloured-shapes images that examples/shapes/make_data.py draws, tiny ViT and
ResNet classifiers built from their configs and saved with save_pretrained. No training loop.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch

from ftsweep_common.errors import ConfigError, DataError
from trainers.image_augment import (
    BatchMixer,
    EvalTransform,
    ImageAugmentationParams,
    TrainTransform,
    build_transforms,
    validate_augmentation,
)
from trainers.image_data import (
    EpochSampler,
    ImageDataset,
    ImageDataSettings,
    decode_image,
    load_image_splits,
    read_image_folder,
)
from trainers.image_geometry import ImageGeometry, load_image_geometry
from trainers.tiny_image_model import build_tiny_resnet, build_tiny_vit

SHAPES = Path(__file__).resolve().parents[1] / "examples" / "shapes" / "make_data.py"
CLASSES = ["circle", "square", "triangle"]
COUNTS = {"train": 6, "validation": 3, "test": 3}
GEOMETRY = ImageGeometry(32, 32, 36, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _shapes_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shapes_make_data", SHAPES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both layouts of a small shapes set: folder/{train,validation,test}/<class>/ and table/*.csv."""
    root = tmp_path_factory.mktemp("shapes")
    make = _shapes_module().make_shapes
    make(root / "folder", seed=0, counts=COUNTS, layout="folder")
    make(root / "table", seed=0, counts=COUNTS, layout="table")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-models")
    return {
        "vit": build_tiny_vit(root / "vit", CLASSES),
        "resnet": build_tiny_resnet(root / "resnet", CLASSES),
    }


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# --------------------------------------------------------------------------------------------
# The generated images
# --------------------------------------------------------------------------------------------


def test_the_shapes_generator_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    make = _shapes_module().make_shapes
    counts = {"train": 2, "validation": 1, "test": 1}
    first = make(tmp_path / "a", seed=3, counts=counts)
    second = make(tmp_path / "b", seed=3, counts=counts)
    other = make(tmp_path / "c", seed=4, counts=counts)
    image = Path("circle") / "0000.png"
    assert (first["train"] / image).read_bytes() == (second["train"] / image).read_bytes()
    assert (first["train"] / image).read_bytes() != (other["train"] / image).read_bytes()
    assert decode_image(first["train"] / image).shape == (3, 32, 32)


# --------------------------------------------------------------------------------------------
# Reading: an image folder, a table of path,label
# --------------------------------------------------------------------------------------------


def test_an_image_folder_gives_one_class_per_subfolder(shapes: Path) -> None:
    split = read_image_folder(shapes / "folder" / "train", "trainer.data.train")
    assert len(split) == 18
    assert sorted(set(split.labels)) == CLASSES
    assert all(path.parent.name == label for path, label in zip(split.paths, split.labels, strict=True))


def test_train_validation_and_test_from_folders_and_tables(shapes: Path) -> None:
    settings = ImageDataSettings(
        train="folder/train", validation="table/validation.csv", test="table/test.csv"
    )
    data = load_image_splits(settings, shapes)
    assert (len(data.train), len(data.validation), len(data.test or [])) == (18, 9, 9)
    assert data.labels == CLASSES
    # Paths in a table are relative to the table's folder.
    assert all(path.is_file() and path.parent.name == "images" for path in data.validation.paths)


def test_trials_do_not_read_the_test_split(shapes: Path) -> None:
    settings = ImageDataSettings(train="folder/train", validation="folder/validation", test="missing.csv")
    assert load_image_splits(settings, shapes, include_test=False).test is None


@pytest.mark.parametrize("extension", [".jsonl", ".parquet"])
def test_jsonl_and_parquet_tables_read_like_csv(shapes: Path, tmp_path: Path, extension: str) -> None:
    import pandas as pd

    table = _copy(shapes / "table", tmp_path / "table")
    frame = pd.read_csv(table / "train.csv", dtype=str)
    if extension == ".jsonl":
        (table / "train.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in frame.to_dict("records")), encoding="utf-8"
        )
    else:
        frame.to_parquet(table / "train.parquet")
    settings = ImageDataSettings(train=f"table/train{extension}", validation="table/validation.csv")
    data = load_image_splits(settings, tmp_path)
    reference = load_image_splits(
        ImageDataSettings(train="table/train.csv", validation="table/validation.csv"), tmp_path
    )
    assert data.train.paths == reference.train.paths and data.train.labels == reference.train.labels


def test_without_a_validation_set_a_stratified_fraction_is_held_out(shapes: Path) -> None:
    settings = ImageDataSettings(train="folder/train", validation_fraction=1 / 3, split_seed=5)
    data = load_image_splits(settings, shapes)
    assert (len(data.train), len(data.validation)) == (12, 6)
    assert sorted(data.validation.labels) == sorted(CLASSES * 2)
    assert not set(data.train.paths) & set(data.validation.paths)
    again = load_image_splits(settings, shapes)
    assert again.validation.paths == data.validation.paths


def test_max_train_samples_keeps_every_class(shapes: Path) -> None:
    settings = ImageDataSettings(train="folder/train", validation="folder/validation", max_train_samples=6)
    data = load_image_splits(settings, shapes)
    assert sorted(data.train.labels) == sorted(CLASSES * 2)


# --------------------------------------------------------------------------------------------
# Each problem is one line naming the key and the file
# --------------------------------------------------------------------------------------------


def _write_table(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def _rows(table: Path) -> list[tuple[str, str]]:
    with open(table, newline="", encoding="utf-8") as stream:
        return [(row["path"], row["label"]) for row in csv.DictReader(stream)]


def _error(settings: ImageDataSettings, base: Path) -> str:
    with pytest.raises(DataError) as caught:
        load_image_splits(settings, base)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_images_are_counted_and_the_first_few_named(shapes: Path, tmp_path: Path) -> None:
    table = _copy(shapes / "table", tmp_path / "table")
    rows = _rows(table / "train.csv")
    missing = [(f"images/gone-{number}.png", "circle") for number in range(7)]
    _write_table(table / "train.csv", rows + missing)
    message = _error(ImageDataSettings(train="table/train.csv", validation="table/validation.csv"), tmp_path)
    assert message.startswith("trainer.data.train: 7 of the 25 images listed in ")
    assert "images/gone-0.png, images/gone-1.png" in message and "and 2 more" in message


def test_an_unreadable_image_is_named(shapes: Path, tmp_path: Path) -> None:
    folder = _copy(shapes / "folder", tmp_path / "folder")
    (folder / "validation" / "square" / "broken.png").write_text("not a picture", encoding="utf-8")
    message = _error(ImageDataSettings(train="folder/train", validation="folder/validation"), tmp_path)
    assert message.startswith("trainer.data.validation: 1 of the 10 images of ")
    assert "cannot be read as images: broken.png" in message


def test_decoding_a_broken_image_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError, match="broken.png cannot be read as an image"):
        decode_image(broken)


def test_a_single_class_is_refused(shapes: Path, tmp_path: Path) -> None:
    table = _copy(shapes / "table", tmp_path / "table")
    _write_table(table / "train.csv", [row for row in _rows(table / "train.csv") if row[1] == "circle"])
    message = _error(ImageDataSettings(train="table/train.csv"), tmp_path)
    assert "needs at least two classes; found only 'circle'" in message


def test_a_validation_label_unseen_in_training_is_refused(shapes: Path, tmp_path: Path) -> None:
    folder = _copy(shapes / "folder", tmp_path / "folder")
    shutil.rmtree(folder / "train" / "triangle")
    message = _error(ImageDataSettings(train="folder/train", validation="folder/validation"), tmp_path)
    assert message.startswith("trainer.data.validation: ")
    assert "labels the training images lack: 'triangle' (3 images" in message
    assert "the training labels are: circle, square" in message


def test_a_test_label_unseen_in_training_is_refused(shapes: Path, tmp_path: Path) -> None:
    table = _copy(shapes / "table", tmp_path / "table")
    _write_table(
        table / "test.csv", [*_rows(table / "test.csv")[:2], ("images/train-circle-0000.png", "hexagon")]
    )
    settings = ImageDataSettings(
        train="table/train.csv", validation="table/validation.csv", test="table/test.csv"
    )
    message = _error(settings, tmp_path)
    assert message.startswith("trainer.data.test: ") and "'hexagon'" in message


def test_an_empty_class_folder_and_a_folder_without_classes_are_refused(shapes: Path, tmp_path: Path) -> None:
    folder = _copy(shapes / "folder", tmp_path / "folder")
    (folder / "train" / "hexagon").mkdir()
    (folder / "train" / "hexagon" / "notes.txt").write_text("no images here", encoding="utf-8")
    message = _error(ImageDataSettings(train="folder/train"), tmp_path)
    assert "the class folder hexagon of " in message and "holds no images" in message
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(folder / "train" / "circle" / "0000.png", flat / "0000.png")
    assert "has no class subfolders" in _error(ImageDataSettings(train="flat"), tmp_path)


def test_a_missing_column_names_the_setting_to_change(shapes: Path, tmp_path: Path) -> None:
    message = _error(ImageDataSettings(train="table/train.csv", path_column="file"), shapes)
    assert "has no column 'file'; its columns are: path, label; set trainer.data.path_column" in message


def test_a_file_that_is_neither_a_folder_nor_a_table_is_refused(tmp_path: Path) -> None:
    (tmp_path / "images.zip").write_bytes(b"PK")
    message = _error(ImageDataSettings(train="images.zip"), tmp_path)
    assert "is neither an image folder nor a table; allowed:" in message
    assert "does not exist" in _error(ImageDataSettings(train="nowhere"), tmp_path)


# --------------------------------------------------------------------------------------------
# Augmentations: each changes training images, none touches validation images
# --------------------------------------------------------------------------------------------

AUGMENTATIONS = {
    "random_resized_crop_scale": 0.3,
    "hflip": 1.0,
    "rotation_degrees": 30.0,
    "color_jitter": 0.5,
    "randaugment_magnitude": 15,
    "trivial_augment": True,
    "random_erasing": 1.0,
}


def _image(shapes: Path) -> torch.Tensor:
    return decode_image(shapes / "folder" / "train" / "triangle" / "0001.png")


def test_with_every_augmentation_off_training_images_are_validation_images(shapes: Path) -> None:
    train, evaluate = build_transforms({}, GEOMETRY)
    image = _image(shapes)
    assert not ImageAugmentationParams().per_image
    assert torch.equal(train(image, torch.Generator().manual_seed(1)), evaluate(image))


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_each_augmentation_changes_training_images_and_not_validation_ones(shapes: Path, name: str) -> None:
    params = validate_augmentation({name: AUGMENTATIONS[name]})
    assert params.per_image
    train, evaluate = build_transforms(params, GEOMETRY)
    plain = EvalTransform(GEOMETRY)(_image(shapes))
    # Over a few seeds the augmentation changes the image (one draw may be the identity, e.g.
    # RandAugment drawing "identity" twice); the same seed gives the same image.
    seeds = range(4)
    augmented = [train(_image(shapes), torch.Generator().manual_seed(seed)) for seed in seeds]
    assert any(not torch.allclose(image, plain) for image in augmented)
    assert torch.equal(augmented[0], train(_image(shapes), torch.Generator().manual_seed(0)))
    assert all(image.shape == plain.shape for image in augmented)
    assert torch.equal(evaluate(_image(shapes), torch.Generator().manual_seed(9)), plain)


def test_the_dataset_replays_an_epoch_and_varies_across_epochs(shapes: Path) -> None:
    data = load_image_splits(ImageDataSettings(train="folder/train", validation="folder/validation"), shapes)
    train = TrainTransform(validate_augmentation({"hflip": 0.5, "color_jitter": 0.4}), GEOMETRY)
    dataset = ImageDataset(data.train, data.labels, train, seed=7)
    first, again, later = dataset[(0, 0)][0], dataset[(0, 0)][0], dataset[(0, 1)][0]
    assert torch.equal(first, again) and not torch.equal(first, later)
    validation = ImageDataset(data.validation, data.labels, EvalTransform(GEOMETRY), seed=7)
    image, label = validation[2]
    assert torch.equal(image, EvalTransform(GEOMETRY)(decode_image(data.validation.paths[2])))
    assert data.labels[label] == data.validation.labels[2]


def test_the_sampler_shuffles_each_epoch_the_same_way_on_every_run() -> None:
    sampler = EpochSampler(10, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(index for index, _ in first) == list(range(10))
    assert {epoch for _, epoch in second} == {1}
    assert [index for index, _ in first] != [index for index, _ in second]
    assert list(EpochSampler(10, seed=3)) == first
    assert list(EpochSampler(4, shuffle=False)) == [(0, 0), (1, 0), (2, 0), (3, 0)]


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_give_soft_labels(mixup: float, cutmix: float) -> None:
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    mixer = BatchMixer(mixup, cutmix, num_classes=3)
    mixed, targets = mixer(images, labels, torch.Generator().manual_seed(1))
    assert targets.shape == (6, 3)
    assert torch.allclose(targets.sum(dim=1), torch.ones(6))
    assert not torch.equal(mixed, images)
    assert ((targets > 0) & (targets < 1)).any()  # soft: some label is shared between two classes
    again, again_targets = mixer(images, labels, torch.Generator().manual_seed(1))
    assert torch.equal(again, mixed) and torch.equal(again_targets, targets)


def test_without_mixup_or_cutmix_labels_are_one_hot() -> None:
    images = torch.rand(4, 3, 8, 8)
    mixed, targets = BatchMixer(0.0, 0.0, 3)(images, torch.tensor([0, 1, 2, 1]), torch.Generator())
    assert torch.equal(mixed, images)
    assert targets.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0]]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"hflip": 1.5}, "trainer.params.hflip: Input should be less than or equal to 1 (got 1.5)"),
        (
            {"random_resized_crop_scale": 0},
            "trainer.params.random_resized_crop_scale: Input should be greater",
        ),
        (
            {"randaugment_magnitude": 31},
            "trainer.params.randaugment_magnitude: Input should be less than or equal",
        ),
        ({"mixup_alpha": -1}, "trainer.params.mixup_alpha: Input should be greater than or equal to 0"),
        (
            {"randaugment_magnitude": 9, "trivial_augment": True},
            "trainer.params: randaugment_magnitude is 9 and trivial_augment is true: choose one",
        ),
    ],
)
def test_augmentation_params_out_of_range_are_one_clear_line(
    params: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_augmentation({"learning_rate": 1e-3, **params})
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------------------------
# Tiny image models: saved, loaded back, run on a generated batch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_tiny_models_load_back_and_classify_a_batch(shapes: Path, models: dict[str, Path], kind: str) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = models[kind]
    model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    assert model.config.id2label == dict(enumerate(CLASSES))
    assert processor.image_mean == pytest.approx([0.5, 0.5, 0.5])
    geometry = load_image_geometry(folder)
    assert (geometry.height, geometry.width) == (32, 32)
    assert geometry.resize_shortest_edge == (None if kind == "vit" else 36)  # ResNet: 32 / 0.875, then crop

    data = load_image_splits(ImageDataSettings(train="folder/train", validation="folder/validation"), shapes)
    train, _ = build_transforms({"hflip": 0.5, "random_resized_crop_scale": 0.5}, geometry)
    dataset = ImageDataset(data.train, data.labels, train, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, sampler=EpochSampler(len(dataset)))
    images, labels = next(iter(loader))
    assert images.shape == (6, 3, 32, 32) and labels.dtype == torch.long
    with torch.no_grad():
        logits = model(pixel_values=images).logits
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()


def test_a_folder_without_an_image_processor_is_one_clear_line(tmp_path: Path) -> None:
    from ftsweep_common.errors import ModelError

    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelError, match="no image processor can be loaded from"):
        load_image_geometry(tmp_path)


def test_the_geometry_follows_a_processor_with_a_centre_crop() -> None:
    from transformers import DeiTImageProcessor

    from trainers.image_geometry import geometry_from_processor

    processor = DeiTImageProcessor(
        size={"height": 40, "width": 40},
        do_center_crop=True,
        crop_size={"height": 32, "width": 32},
        image_mean=[0.1, 0.2, 0.3],
        image_std=[0.4, 0.5, 0.6],
    )
    geometry = geometry_from_processor(processor)
    assert (geometry.height, geometry.width, geometry.resize_shortest_edge) == (32, 32, 40)
    assert geometry.mean == pytest.approx((0.1, 0.2, 0.3)) and geometry.std == pytest.approx((0.4, 0.5, 0.6))
    wide = torch.zeros(3, 20, 60, dtype=torch.uint8)
    assert EvalTransform(geometry)(wide).shape == (3, 32, 32)


def test_workers_decode_and_augment_the_same_batches_as_the_main_process(shapes: Path) -> None:
    data = load_image_splits(ImageDataSettings(train="folder/train", validation="folder/validation"), shapes)
    train, _ = build_transforms({"random_resized_crop_scale": 0.5, "color_jitter": 0.3}, GEOMETRY)
    dataset = ImageDataset(data.train, data.labels, train, seed=2)

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = EpochSampler(len(dataset), seed=2)
        sampler.set_epoch(3)
        loader = torch.utils.data.DataLoader(dataset, batch_size=5, sampler=sampler, num_workers=workers)
        return [images for images, _ in loader]

    in_workers, here = batches(2), batches(0)
    assert len(in_workers) == len(here) == 4
    assert all(torch.equal(a, b) for a, b in zip(in_workers, here, strict=True))
