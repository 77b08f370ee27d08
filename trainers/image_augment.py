"""Image augmentations built from plain, searchable parameters: the training and evaluation transforms.

The training transform is ``geometry (a random resized crop, or the validation resize) -> horizontal
flip -> rotation -> RandAugment or TrivialAugment -> colour jitter -> normalize -> random erasing``;
the validation / test transform is only the model's resize, centre crop and normalize. With every
augmentation at its default (off) the two are the same function, so features of layers that a
trial freezes may be cached for training as well as for validation.

Mixup and CutMix act on a whole batch (:class:`BatchMixer`) and turn the labels into soft labels.

Each transform takes the image and a :class:`torch.Generator`, its only source of randomness:
:class:`~trainers.image_data.ImageDataset` seeds one per (trial seed, epoch, image), so an epoch's
augmented images are the same whatever the number of DataLoader workers, and a resumed trial
replays them exactly.

The operations follow ``torchvision.transforms.v2`` (``RandomResizedCrop``, ``RandomHorizontalFlip``,
``RandomRotation``, ``ColorJitter``, ``RandAugment``, ``TrivialAugmentWide``, ``RandomErasing``,
``MixUp``, ``CutMix``: the same parameters and magnitude tables) and are written with torch alone:
PyPI's torchvision wheels are built against the CUDA build of torch and do not import beside the
CPU build this project installs (``operator torchvision::nms does not exist``). The operations
themselves are :mod:`trainers.image_ops`; the model's size, resize and normalize are
:mod:`trainers.image_geometry`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, model_validator

from ftsweep_common.errors import ConfigError
from trainers.base import StrictModel
from trainers.image_geometry import ImageGeometry, normalize, resize_for_model, to_float
from trainers.image_ops import (
    MAX_MAGNITUDE,
    affine,
    color_jitter,
    draw_beta,
    draw_box,
    draw_uniform,
    rand_augment,
    random_erase,
    random_resized_crop,
    trivial_augment,
)

if TYPE_CHECKING:
    import torch


class ImageAugmentationParams(StrictModel):
    """The searchable augmentations; every default is off."""

    random_resized_crop_scale: float = Field(
        1.0,
        gt=0,
        le=1,
        description=(
            "Smallest share of the image area a random crop keeps (aspect 3/4 to 4/3) before resizing "
            "to the model's size; 1 turns the crop off (the validation resize and centre crop)."
        ),
    )
    hflip: float = Field(0.0, ge=0, le=1, description="Probability of a horizontal flip.")
    rotation_degrees: float = Field(
        0.0, ge=0, le=180, description="Rotate by an angle drawn from -rotation_degrees to +rotation_degrees."
    )
    color_jitter: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "Strength s: brightness, contrast and saturation scaled by factors from 1-s to 1+s and the hue "
            "turned by up to s/10 of the colour wheel, in a random order."
        ),
    )
    randaugment_magnitude: int = Field(
        0,
        ge=0,
        le=MAX_MAGNITUDE,
        description=f"RandAugment (2 operations per image) at this magnitude, 1 to {MAX_MAGNITUDE}; 0: off.",
    )
    trivial_augment: bool = Field(
        False, description="TrivialAugment: one operation per image at a random magnitude (wide ranges)."
    )
    random_erasing: float = Field(
        0.0, ge=0, le=1, description="Probability of erasing a random rectangle (after normalizing)."
    )
    mixup_alpha: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Mixup of pairs in a batch, mixing weight ~ Beta(alpha, alpha); 0 is off.",
    )
    cutmix_alpha: float = Field(
        0.0,
        ge=0,
        le=10,
        description="CutMix of pairs in a batch, pasted area ~ Beta(alpha, alpha); 0 is off. With "
        "mixup_alpha too, each batch gets one of the two, at random.",
    )

    @model_validator(mode="after")
    def _one_automatic_policy(self) -> ImageAugmentationParams:
        if self.randaugment_magnitude > 0 and self.trivial_augment:
            raise ValueError(
                f"randaugment_magnitude is {self.randaugment_magnitude} and trivial_augment is true: "
                "choose one (set randaugment_magnitude to 0 or trivial_augment to false)"
            )
        return self

    @property
    def per_image(self) -> bool:
        """True when any augmentation changes single training images (everything but mixup / cutmix)."""
        return (
            self.random_resized_crop_scale < 1
            or self.hflip > 0
            or self.rotation_degrees > 0
            or self.color_jitter > 0
            or self.randaugment_magnitude > 0
            or self.trivial_augment
            or self.random_erasing > 0
        )

    @property
    def per_batch(self) -> bool:
        """True when mixup or cutmix mixes the training batches."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def validate_augmentation(
    params: Mapping[str, Any], prefix: str = "trainer.params."
) -> ImageAugmentationParams:
    """The augmentation parameters among ``params`` (other keys are ignored), checked.

    Raises:
        ConfigError: one problem per bad key, e.g. ``trainer.params.hflip: Input should be less than
            or equal to 1 (got 1.5)``.
    """
    from ftsweep_common.yaml_io import describe_validation_error

    fields = ImageAugmentationParams.model_fields
    try:
        return ImageAugmentationParams(**{key: value for key, value in params.items() if key in fields})
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, ImageAugmentationParams, prefix)) from None


# --------------------------------------------------------------------------------------------
# The transforms
# --------------------------------------------------------------------------------------------


class EvalTransform:
    """Validation and test: resize (and centre-crop) to the model's size, then normalize.

    Call it with a ``(3, H, W)`` image, uint8 or float in 0..1; the generator is not used.
    """

    def __init__(self, geometry: ImageGeometry) -> None:
        self.geometry = geometry

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return normalize(resize_for_model(to_float(image), self.geometry), self.geometry)


class TrainTransform:
    """Training: the augmentations of ``params`` around the model's resize and normalize.

    Call it with a ``(3, H, W)`` image (uint8, or float in 0..1) and the generator to draw from.
    """

    def __init__(self, params: ImageAugmentationParams, geometry: ImageGeometry) -> None:
        self.params = params
        self.geometry = geometry

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        params, geometry = self.params, self.geometry
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        image = to_float(image)
        if params.random_resized_crop_scale < 1:
            image = random_resized_crop(
                image, generator, params.random_resized_crop_scale, geometry.height, geometry.width
            )
        else:
            image = resize_for_model(image, geometry)
        if params.hflip > 0 and draw_uniform(generator) < params.hflip:
            image = image.flip(-1)
        if params.rotation_degrees > 0:
            angle = draw_uniform(generator, -params.rotation_degrees, params.rotation_degrees)
            image = affine(image, angle_degrees=angle)
        if params.randaugment_magnitude > 0:
            image = rand_augment(image, generator, params.randaugment_magnitude)
        elif params.trivial_augment:
            image = trivial_augment(image, generator)
        if params.color_jitter > 0:
            image = color_jitter(image, generator, params.color_jitter)
        image = normalize(image, geometry)
        if params.random_erasing > 0 and draw_uniform(generator) < params.random_erasing:
            image = random_erase(image, generator)
        return image


def build_transforms(
    params: ImageAugmentationParams | Mapping[str, Any], geometry: ImageGeometry
) -> tuple[TrainTransform, EvalTransform]:
    """``(training transform, validation / test transform)`` for ``params`` (checked when a mapping)."""
    if not isinstance(params, ImageAugmentationParams):
        params = validate_augmentation(params)
    return TrainTransform(params, geometry), EvalTransform(geometry)


class BatchMixer:
    """Mixup and CutMix of a training batch (as ``torchvision.transforms.v2.MixUp`` / ``CutMix``).

    Each image is mixed with the next one in the batch (the batch rolled by one); the labels
    become the same mixture of the two one-hot labels. With both alphas set, each batch gets one
    of the two, at random.

    Args:
        mixup_alpha: Beta(alpha, alpha) draws the mixing weight; 0 is off.
        cutmix_alpha: Beta(alpha, alpha) draws the share of the image kept; 0 is off.
        num_classes: the number of classes (width of the soft labels).
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> None:
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.num_classes = int(num_classes)

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mixed images, soft labels)`` of shape ``(N, 3, H, W)`` and ``(N, num_classes)``."""
        import torch

        targets = torch.nn.functional.one_hot(labels.long(), self.num_classes).to(images.dtype)
        if not self.enabled or images.shape[0] < 2:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or draw_uniform(generator) < 0.5)
        weight = draw_beta(generator, self.cutmix_alpha if use_cutmix else self.mixup_alpha)
        partner_images, partner_targets = images.roll(1, 0), targets.roll(1, 0)
        if use_cutmix:
            height, width = images.shape[-2:]
            top, left, box_height, box_width = draw_box(generator, height, width, math.sqrt(1.0 - weight))
            images = images.clone()
            images[..., top : top + box_height, left : left + box_width] = partner_images[
                ..., top : top + box_height, left : left + box_width
            ]
            weight = 1.0 - box_height * box_width / (height * width)
        else:
            images = images * weight + partner_images * (1.0 - weight)
        return images, targets * weight + partner_targets * (1.0 - weight)
