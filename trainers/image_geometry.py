"""The model's input: its size, crop, mean and std read from its image processor, and the
resize / centre crop / normalize every image gets (the whole validation and test transform).

Images are ``(3, H, W)`` tensors: uint8, or floats in 0..1 after :func:`to_float`. Plain torch
(see :mod:`trainers.image_augment` for why not torchvision).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftsweep_common.errors import ModelError

if TYPE_CHECKING:
    import torch


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
