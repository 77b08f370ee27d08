"""The augmentation operations on one image, each drawing only from the generator it is given.

Images are ``(3, H, W)`` floats in 0..1. The operations follow ``torchvision.transforms.v2``
(``RandomResizedCrop``, ``RandomRotation``, ``ColorJitter``, ``RandAugment``, ``TrivialAugmentWide``,
``RandomErasing``: the same parameters and magnitude tables), written with torch alone; the
training transform that composes them is :class:`trainers.image_augment.TrainTransform`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from trainers.image_geometry import center_crop, resize

if TYPE_CHECKING:
    import torch

#: RandAugment's and TrivialAugment's magnitudes are bins 0..MAX_MAGNITUDE (torchvision's 31 bins).
MAX_MAGNITUDE = 30


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
        target = area * draw_uniform(generator, min_scale, 1.0)
        aspect = math.exp(draw_uniform(generator, log_low, log_high))
        crop_width = round(math.sqrt(target * aspect))
        crop_height = round(math.sqrt(target / aspect))
        if 0 < crop_width <= image_width and 0 < crop_height <= image_height:
            top = draw_int(generator, image_height - crop_height + 1)
            left = draw_int(generator, image_width - crop_width + 1)
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
        (adjust, draw_uniform(generator, low, high))
        for adjust in (adjust_brightness, adjust_contrast, adjust_saturation)
    ]
    steps.append((adjust_hue, draw_uniform(generator, -strength / 10, strength / 10)))
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
    if signed and draw_uniform(generator) < 0.5:
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
        target = height * width * draw_uniform(generator, *scale)
        aspect = math.exp(draw_uniform(generator, log_low, log_high))
        box_height, box_width = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < box_height < height and 0 < box_width < width:
            top = draw_int(generator, height - box_height + 1)
            left = draw_int(generator, width - box_width + 1)
            image = image.clone()
            image[..., top : top + box_height, left : left + box_width] = 0.0
            return image
    return image


# --------------------------------------------------------------------------------------------
# Drawing from a generator
# --------------------------------------------------------------------------------------------


def draw_uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    import torch

    return low + (high - low) * float(torch.rand((), generator=generator))


def draw_int(generator: torch.Generator, high: int) -> int:
    import torch

    return int(torch.randint(high, (1,), generator=generator))


def draw_beta(generator: torch.Generator, alpha: float) -> float:
    """A draw from Beta(alpha, alpha), taken from ``generator`` (torch's Beta sampler takes none)."""
    import numpy as np
    import torch

    seed = int(torch.randint(2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def draw_box(
    generator: torch.Generator, height: int, width: int, side_share: float
) -> tuple[int, int, int, int]:
    """``(top, left, box_height, box_width)``: a box of ``side_share`` of each side, centred at a random
    point and clipped to the image (CutMix's box)."""
    centre_y, centre_x = draw_int(generator, height), draw_int(generator, width)
    half_height, half_width = round(height * side_share / 2), round(width * side_share / 2)
    top, bottom = max(0, centre_y - half_height), min(height, centre_y + half_height)
    left, right = max(0, centre_x - half_width), min(width, centre_x + half_width)
    return top, left, bottom - top, right - left
