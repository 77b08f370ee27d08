"""The image recipe's settings (the sweep's ``trainer`` section) and parameters (what a search tunes).

The parameters the epoch engine reads come from :class:`trainers.training_params.TrainingParams`,
the augmentations from :class:`trainers.image_augment.ImageAugmentationParams`;
:class:`ImageClassificationParams` is both, plus the image recipe's own regularizers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainers.base import StrictModel
from trainers.image_augment import ImageAugmentationParams
from trainers.image_data import ImageDataSettings
from trainers.regression_target import regression_metric_names
from trainers.training_params import TrainingParams

#: What an image-classification trial reports after each epoch, in this order (as the text recipe).
IMAGE_METRIC_NAMES = (
    "train_loss",
    "train_accuracy",
    "train_f1",
    "val_loss",
    "val_accuracy",
    "val_f1",
    "generalization_gap",
)

#: What an image-regression trial (``task: regression``) reports after each epoch, in this order.
IMAGE_REGRESSION_METRIC_NAMES = regression_metric_names()


class ImageClassificationSettings(StrictModel):
    """The ``trainer`` section of an image-classification sweep."""

    model: str = Field(
        min_length=1,
        description=(
            "An image classifier saved with save_pretrained next to its image processor (relative to the "
            "sweep file), 'package:<python_package>/<folder>', or a Hugging Face id already in the local "
            "cache."
        ),
    )
    data: ImageDataSettings = Field(description="The labelled images: folders or tables of path,label.")
    task: Literal["classification", "regression"] = Field(
        "classification",
        description=(
            "classification: the label is a class; regression: a table's label column holds a number, the "
            "model has one output trained on the standardized label, and each epoch reports rmse, mae and r2 "
            "in the label's own units (the study metric defaults to val_rmse, minimized)."
        ),
    )
    loss: Literal["mse", "huber", "l1"] = Field(
        "mse",
        description=(
            "The training loss of task regression, on the standardized label (huber: delta 1 standard "
            "deviation); classification always trains cross-entropy."
        ),
    )
    epochs: int = Field(3, ge=1, description="Epochs per trial (the parameter 'epochs').")
    batch_size: int = Field(32, ge=1, description="Training batch size (the parameter 'batch_size').")
    eval_batch_size: int | None = Field(
        None, ge=1, description="Evaluation batch size; default twice batch_size."
    )
    num_workers: int = Field(
        0,
        ge=0,
        description=(
            "DataLoader worker processes that decode and augment training images (0: in the trial's own "
            "process). Workers persist across epochs; on a GPU batches come from pinned memory."
        ),
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description=(
            "auto: bfloat16 autocast on a GPU that supports it, float32 on CPU; bf16: autocast on CPU too; "
            "fp32: never."
        ),
    )
    channels_last: bool = Field(
        True, description="On a GPU, keep the model and the images in channels-last memory format."
    )
    feature_cache: bool = Field(
        True,
        description=(
            "With freeze_depth k > 0, compute the output of the frozen stem and stages once per image and "
            "serve it in every epoch: for validation always, for training when no augmentation acts "
            "(every per-image augmentation off, no mixup / cutmix). In this trial's memory only."
        ),
    )
    feature_cache_mb: int = Field(
        1024,
        ge=0,
        description="Megabytes of frozen-stage states a trial keeps; a split beyond it runs uncached.",
    )
    eval_cache_mb: int = Field(
        256,
        ge=0,
        description=(
            "Validation images are decoded and resized once per trial and kept in memory when they fit in "
            "this many megabytes; beyond it they are decoded every epoch."
        ),
    )

    @model_validator(mode="after")
    def _loss_is_for_regression(self) -> ImageClassificationSettings:
        if "loss" in self.model_fields_set and self.task != "regression":
            raise ValueError(
                f"loss {self.loss!r} applies to task regression; classification always trains cross-entropy: "
                "remove trainer.loss or set trainer.task: regression"
            )
        return self


class ImageClassificationParams(TrainingParams, ImageAugmentationParams):
    """Everything a search space may tune or a sweep may fix, with its default."""

    learning_rate: float = Field(
        1e-4, gt=0, description="Peak AdamW learning rate (of the head, with layer-wise decay)."
    )
    dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Hidden, attention and classifier dropout where the model has them; unset keeps its own.",
    )
    drop_path: float | None = Field(
        None,
        ge=0,
        lt=1,
        description=(
            "Stochastic depth (the config's drop_path_rate: Swin, ConvNeXt, BEiT ...); unset keeps the "
            "model's own. Refused while planning for a model without it."
        ),
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the training loss.")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced weighs each class's loss by n / (classes * count)."
    )
