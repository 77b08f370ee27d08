"""Image augmentations built from plain, searchable parameters, and the model's resize / normalize.

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
CPU build this project installs (``operator torchvision::nms does not exist``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, model_validator

from ftsweep_common.errors import ConfigError, ModelError
from trainers.base import StrictModel

if TYPE_CHECKING:
    import torch

#: RandAugment's and TrivialAugment's magnitudes are bins 0..MAX_MAGNITUDE (torchvision's 31 bins).
MAX_MAGNITUDE = 30


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
# The model's input: size, crop, mean and std, read from its image processor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageGeometry:
    """What the model expects, from its image processor.

    Attributes:
        height: height of the model's input.
        width: width of the model's input.
        resize_shortest_edge: for validation, resize the shortest edge to this, then centre-crop
            ``height`` x ``width``; None resizes straight to ``height`` x ``width``.
        mean: per-channel mean subtracted after scaling pixels to 0..1.
        std: per-channel standard deviation divided by.
    """

    height: int
    width: int
    resize_shortest_edge: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def geometry_from_processor(processor: Any) -> ImageGeometry:
    """Read size, crop, mean and std from a Hugging Face image processor.

    Understands ``size`` as height / width (ViT, DeiT, Swin), as ``shortest_edge`` with a
    ``crop_size`` (ResNet-style processors with ``do_center_crop``) and as ``shortest_edge`` with
    ``crop_pct`` (ConvNeXt: below 384 pixels, resize to ``shortest_edge / crop_pct`` and crop).

    Raises:
        ModelError: for a size the function cannot read, naming the processor class.
    """
    size = getattr(processor, "size", None)
    height, width, shortest = (_size_entry(size, key) for key in ("height", "width", "shortest_edge"))
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    crop_height, crop_width = _size_entry(crop, "height"), _size_entry(crop, "width")
    crop_pct = getattr(processor, "crop_pct", None)
    if crop_height and crop_width:
        out_height, out_width = crop_height, crop_width
        resize = shortest if shortest else min(height or crop_height, width or crop_width)
    elif height and width:
        out_height, out_width, resize = height, width, None
    elif shortest:
        out_height = out_width = shortest
        resize = int(shortest / crop_pct) if crop_pct and shortest < 384 else shortest
    else:
        raise ModelError(
            f"{type(processor).__name__}: cannot read the input size from its size {size!r}; an image "
            "processor with size height / width or shortest_edge is needed"
        )
    mean = _three(getattr(processor, "image_mean", None), 0.5) if _normalizes(processor) else (0.0,) * 3
    std = _three(getattr(processor, "image_std", None), 0.5) if _normalizes(processor) else (1.0,) * 3
    return ImageGeometry(int(out_height), int(out_width), resize, mean, std)


def load_image_geometry(model_path: str | Path) -> ImageGeometry:
    """:func:`geometry_from_processor` of the image processor saved with the model (no hub access
    when ``HF_HUB_OFFLINE`` is set).

    Raises:
        ModelError: when no image processor can be loaded from ``model_path``.
    """
    from trainers.hf_loading import hub_options, quiet_transformers

    with quiet_transformers():
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(str(model_path), **hub_options())
        except (OSError, ValueError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ModelError(
                f"trainer.model: no image processor can be loaded from {model_path}: {first}; the folder "
                "needs a preprocessor_config.json (save the processor with save_pretrained)"
            ) from error
    return geometry_from_processor(processor)


def _size_entry(size: Any, key: str) -> int | None:
    if size is None:
        return None
    value = size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)
    if value is None and isinstance(size, int | float) and key in ("height", "width"):
        return int(size)
    return int(value) if value else None


def _normalizes(processor: Any) -> bool:
    return bool(getattr(processor, "do_normalize", True))


def _three(value: Any, default: float) -> tuple[float, float, float]:
    if value is None:
        return (default,) * 3
    if isinstance(value, int | float):
        return (float(value),) * 3
    values = [float(item) for item in value]
    return (values[0],) * 3 if len(values) == 1 else (values[0], values[1], values[2])


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
        if params.hflip > 0 and _uniform(generator) < params.hflip:
            image = image.flip(-1)
        if params.rotation_degrees > 0:
            angle = _uniform(generator, -params.rotation_degrees, params.rotation_degrees)
            image = affine(image, angle_degrees=angle)
        if params.randaugment_magnitude > 0:
            image = rand_augment(image, generator, params.randaugment_magnitude)
        elif params.trivial_augment:
            image = trivial_augment(image, generator)
        if params.color_jitter > 0:
            image = color_jitter(image, generator, params.color_jitter)
        image = normalize(image, geometry)
        if params.random_erasing > 0 and _uniform(generator) < params.random_erasing:
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
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or _uniform(generator) < 0.5)
        weight = _beta(generator, self.cutmix_alpha if use_cutmix else self.mixup_alpha)
        partner_images, partner_targets = images.roll(1, 0), targets.roll(1, 0)
        if use_cutmix:
            height, width = images.shape[-2:]
            top, left, box_height, box_width = _box(generator, height, width, math.sqrt(1.0 - weight))
            images = images.clone()
            images[..., top : top + box_height, left : left + box_width] = partner_images[
                ..., top : top + box_height, left : left + box_width
            ]
            weight = 1.0 - box_height * box_width / (height * width)
        else:
            images = images * weight + partner_images * (1.0 - weight)
        return images, targets * weight + partner_targets * (1.0 - weight)


# --------------------------------------------------------------------------------------------
# Operations on one image: (3, H, W) floats in 0..1
# --------------------------------------------------------------------------------------------


def to_float(image: torch.Tensor) -> torch.Tensor:
    """A uint8 image as floats in 0..1; a float image unchanged."""
    import torch

    return image.to(torch.float32) / 255.0 if image.dtype == torch.uint8 else image


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize with antialiasing (as PIL and torchvision v2 resize)."""
    import torch

    if tuple(image.shape[-2:]) == (height, width):
        return image
    resized = torch.nn.functional.interpolate(
        image[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )[0]
    return resized.clamp_(0.0, 1.0)


def center_crop(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centre ``height`` x ``width`` (the image is resized up first when it is smaller)."""
    image_height, image_width = image.shape[-2:]
    if image_height < height or image_width < width:
        scale = max(height / image_height, width / image_width)
        image = resize(image, math.ceil(image_height * scale), math.ceil(image_width * scale))
        image_height, image_width = image.shape[-2:]
    top, left = (image_height - height) // 2, (image_width - width) // 2
    return image[..., top : top + height, left : left + width]


def resize_for_model(image: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
    """The validation geometry: the shortest edge resized and a centre crop, or a plain resize."""
    if geometry.resize_shortest_edge is None:
        return resize(image, geometry.height, geometry.width)
    height, width = image.shape[-2:]
    scale = geometry.resize_shortest_edge / min(height, width)
    image = resize(image, max(1, round(height * scale)), max(1, round(width * scale)))
    return center_crop(image, geometry.height, geometry.width)


def normalize(image: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
    import torch

    mean = torch.tensor(geometry.mean, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(geometry.std, dtype=image.dtype).view(3, 1, 1)
    return (image - mean) / std


def random_resized_crop(
    image: torch.Tensor,
    generator: torch.Generator,
    min_scale: float,
    height: int,
    width: int,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """A crop of ``min_scale`` to all of the area and aspect ``ratio``, resized to ``height`` x ``width``.

    Ten tries at a crop that fits, then the largest centred crop within ``ratio``
    (torchvision's ``RandomResizedCrop``).
    """
    image_height, image_width = image.shape[-2:]
    area = image_height * image_width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(generator, min_scale, 1.0)
        aspect = math.exp(_uniform(generator, log_low, log_high))
        crop_width = round(math.sqrt(target * aspect))
        crop_height = round(math.sqrt(target / aspect))
        if 0 < crop_width <= image_width and 0 < crop_height <= image_height:
            top = _randint(generator, image_height - crop_height + 1)
            left = _randint(generator, image_width - crop_width + 1)
            crop = image[..., top : top + crop_height, left : left + crop_width]
            return resize(crop, height, width)
    aspect = image_width / image_height
    if aspect < ratio[0]:
        crop_width, crop_height = image_width, round(image_width / ratio[0])
    elif aspect > ratio[1]:
        crop_height, crop_width = image_height, round(image_height * ratio[1])
    else:
        crop_height, crop_width = image_height, image_width
    return resize(center_crop(image, crop_height, crop_width), height, width)


def affine(
    image: torch.Tensor,
    *,
    angle_degrees: float = 0.0,
    translate: tuple[float, float] = (0.0, 0.0),
    shear_degrees: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Rotate, shear (x, y) and translate (pixels) about the centre; uncovered pixels are black."""
    import torch

    height, width = image.shape[-2:]
    angle = math.radians(angle_degrees)
    shear_x, shear_y = (math.tan(math.radians(value)) for value in shear_degrees)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shear = torch.tensor([[1.0, shear_x], [shear_y, 1.0]])
    inverse = torch.linalg.inv(rotation @ shear)
    ys = torch.arange(height, dtype=torch.float32) + 0.5 - height / 2 - translate[1]
    xs = torch.arange(width, dtype=torch.float32) + 0.5 - width / 2 - translate[0]
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    source = torch.stack([grid_x, grid_y], dim=-1) @ inverse.T  # where each output pixel comes from
    source = source / torch.tensor([width / 2, height / 2])  # to grid_sample's -1..1
    out = torch.nn.functional.grid_sample(
        image[None], source[None], mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out[0]


def _grey(image: torch.Tensor) -> torch.Tensor:
    return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)


def _blend(image: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    return (factor * image + (1.0 - factor) * other).clamp(0.0, 1.0)


def adjust_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    return (image * factor).clamp(0.0, 1.0)


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(image, _grey(image).mean(), factor)


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(image, _grey(image), factor)


def adjust_hue(image: torch.Tensor, turn: float) -> torch.Tensor:
    """Turn the hue by ``turn`` of the colour wheel (a rotation of the chroma plane in YIQ space)."""
    import torch

    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    angle = 2 * math.pi * turn
    rotation = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, math.cos(angle), -math.sin(angle)], [0.0, math.sin(angle), math.cos(angle)]]
    )
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
    return torch.einsum("ij,jhw->ihw", matrix, image).clamp(0.0, 1.0)


def adjust_sharpness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with a smoothed copy (PIL's SMOOTH kernel; the border keeps its pixels)."""
    import torch

    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    smooth = torch.nn.functional.conv2d(image[:, None], kernel[None, None], padding=1)[:, 0]
    smooth[..., 0, :], smooth[..., -1, :] = image[..., 0, :], image[..., -1, :]
    smooth[..., :, 0], smooth[..., :, -1] = image[..., :, 0], image[..., :, -1]
    return _blend(image, smooth, factor)


def posterize(image: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the ``bits`` highest bits of each 8-bit channel value."""
    import torch

    levels = (image * 255).round().to(torch.uint8)
    mask = (0xFF << (8 - bits)) & 0xFF
    return (levels & mask).to(image.dtype) / 255.0


def solarize(image: torch.Tensor, threshold: float) -> torch.Tensor:
    import torch

    return torch.where(image >= threshold, 1.0 - image, image)


def autocontrast(image: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to the full range 0..1."""
    low = image.amin(dim=(-2, -1), keepdim=True)
    high = image.amax(dim=(-2, -1), keepdim=True)
    span = high - low
    stretched = (image - low) / span.clamp(min=1e-6)
    return stretched.where(span > 0, image).clamp(0.0, 1.0)


def equalize(image: torch.Tensor) -> torch.Tensor:
    """Histogram equalization of each 8-bit channel (PIL's ``ImageOps.equalize``)."""
    import torch

    levels = (image * 255).round().long().clamp(0, 255)
    channels = []
    for channel in levels:
        histogram = torch.bincount(channel.flatten(), minlength=256)
        last = int(histogram[histogram.nonzero().max()])
        step = (int(histogram.sum()) - last) // 255
        if step == 0:
            channels.append(channel)
            continue
        before = torch.cumsum(histogram, 0) - histogram
        table = ((before + step // 2) // step).clamp(max=255)
        channels.append(table[channel])
    return torch.stack(channels).to(image.dtype) / 255.0


def color_jitter(image: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Brightness, contrast, saturation (factors 1-s .. 1+s) and hue (up to s/10 turn), in random order."""
    import torch

    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    steps: list[tuple[Callable[[torch.Tensor, float], torch.Tensor], float]] = [
        (adjust, _uniform(generator, low, high))
        for adjust in (adjust_brightness, adjust_contrast, adjust_saturation)
    ]
    steps.append((adjust_hue, _uniform(generator, -strength / 10, strength / 10)))
    for index in torch.randperm(len(steps), generator=generator).tolist():
        adjust, value = steps[index]
        image = adjust(image, value)
    return image


# name -> (largest value at magnitude MAX_MAGNITUDE for RandAugment, for TrivialAugment; signed).
# Shear in degrees (atan of torchvision's 0.3 and 0.99), translation in a share of the image side.
_OPERATIONS: dict[str, tuple[float, float, bool]] = {
    "identity": (0.0, 0.0, False),
    "shear_x": (16.7, 44.7, True),
    "shear_y": (16.7, 44.7, True),
    "translate_x": (150 / 331, 32 / 224, True),
    "translate_y": (150 / 331, 32 / 224, True),
    "rotate": (30.0, 135.0, True),
    "brightness": (0.9, 0.99, True),
    "color": (0.9, 0.99, True),
    "contrast": (0.9, 0.99, True),
    "sharpness": (0.9, 0.99, True),
    "posterize": (4.0, 6.0, False),
    "solarize": (1.0, 1.0, False),
    "autocontrast": (0.0, 0.0, False),
    "equalize": (0.0, 0.0, False),
}


def apply_operation(image: torch.Tensor, name: str, value: float) -> torch.Tensor:
    """One RandAugment / TrivialAugment operation at ``value`` (degrees, share of the side, factor - 1,
    bits removed, or solarize's share of the range)."""
    height, width = image.shape[-2:]
    if name == "shear_x":
        return affine(image, shear_degrees=(value, 0.0))
    if name == "shear_y":
        return affine(image, shear_degrees=(0.0, value))
    if name == "translate_x":
        return affine(image, translate=(value * width, 0.0))
    if name == "translate_y":
        return affine(image, translate=(0.0, value * height))
    if name == "rotate":
        return affine(image, angle_degrees=value)
    if name == "brightness":
        return adjust_brightness(image, 1.0 + value)
    if name == "color":
        return adjust_saturation(image, 1.0 + value)
    if name == "contrast":
        return adjust_contrast(image, 1.0 + value)
    if name == "sharpness":
        return adjust_sharpness(image, 1.0 + value)
    if name == "posterize":
        return posterize(image, 8 - int(round(value)))
    if name == "solarize":
        return solarize(image, 1.0 - value)
    if name == "autocontrast":
        return autocontrast(image)
    if name == "equalize":
        return equalize(image)
    if name == "identity":
        return image
    raise ValueError(f"unknown augmentation operation {name!r}; known: {', '.join(_OPERATIONS)}")


def _operation_value(generator: torch.Generator, name: str, magnitude: int, wide: bool) -> float:
    largest, largest_wide, signed = _OPERATIONS[name]
    value = (largest_wide if wide else largest) * magnitude / MAX_MAGNITUDE
    if signed and _uniform(generator) < 0.5:
        value = -value
    return value


def rand_augment(
    image: torch.Tensor, generator: torch.Generator, magnitude: int, n_operations: int = 2
) -> torch.Tensor:
    """RandAugment: ``n_operations`` operations drawn uniformly, each at ``magnitude`` (0..30)."""
    import torch

    names = list(_OPERATIONS)
    for _ in range(n_operations):
        name = names[int(torch.randint(len(names), (1,), generator=generator))]
        image = apply_operation(image, name, _operation_value(generator, name, magnitude, wide=False))
    return image


def trivial_augment(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """TrivialAugment (wide ranges): one operation drawn uniformly at a magnitude drawn uniformly."""
    import torch

    names = list(_OPERATIONS)
    name = names[int(torch.randint(len(names), (1,), generator=generator))]
    magnitude = int(torch.randint(MAX_MAGNITUDE + 1, (1,), generator=generator))
    return apply_operation(image, name, _operation_value(generator, name, magnitude, wide=True))


def random_erase(
    image: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """Zero a rectangle of ``scale`` of the area and aspect ``ratio`` (torchvision's ``RandomErasing``;
    after normalizing, zero is the mean colour). Unchanged when ten tries find no rectangle that fits."""
    height, width = image.shape[-2:]
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = height * width * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, log_low, log_high))
        box_height, box_width = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < box_height < height and 0 < box_width < width:
            top = _randint(generator, height - box_height + 1)
            left = _randint(generator, width - box_width + 1)
            image = image.clone()
            image[..., top : top + box_height, left : left + box_width] = 0.0
            return image
    return image


# --------------------------------------------------------------------------------------------
# Drawing from a generator
# --------------------------------------------------------------------------------------------


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    import torch

    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, high: int) -> int:
    import torch

    return int(torch.randint(high, (1,), generator=generator))


def _beta(generator: torch.Generator, alpha: float) -> float:
    """A draw from Beta(alpha, alpha), taken from ``generator`` (torch's Beta sampler takes none)."""
    import numpy as np
    import torch

    seed = int(torch.randint(2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _box(generator: torch.Generator, height: int, width: int, side_share: float) -> tuple[int, int, int, int]:
    """``(top, left, box_height, box_width)``: a box of ``side_share`` of each side, centred at a random
    point and clipped to the image (CutMix's box)."""
    centre_y, centre_x = _randint(generator, height), _randint(generator, width)
    half_height, half_width = round(height * side_share / 2), round(width * side_share / 2)
    top, bottom = max(0, centre_y - half_height), min(height, centre_y + half_height)
    left, right = max(0, centre_x - half_width), min(width, centre_x + half_width)
    return top, left, bottom - top, right - left
