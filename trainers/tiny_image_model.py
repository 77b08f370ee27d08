"""Build a tiny ViT or ResNet image classifier from a config, for tests, the image example and benchmarks.

Each is saved with ``save_pretrained`` next to its image processor, so it loads back through exactly
the path a user's model takes (``AutoModelForImageClassification`` / ``AutoImageProcessor``
``.from_pretrained`` on the folder). Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Mean and std of the tiny models' processors (pixels in 0..1 become -1..1).
_HALF = [0.5, 0.5, 0.5]


def build_tiny_vit(
    folder: Path,
    labels: Sequence[str],
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised ViT classifier over ``labels`` and its processor; return ``folder``.

    The processor resizes every image to ``image_size`` x ``image_size``.
    """
    from transformers import ViTConfig

    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 2,
        **_label_maps(labels),
    )
    processor = _processor(
        "ViTImageProcessor",
        size={"height": image_size, "width": image_size},
        image_mean=_HALF,
        image_std=_HALF,
    )
    return _save(folder, config, processor, seed)


def build_tiny_resnet(
    folder: Path,
    labels: Sequence[str],
    *,
    image_size: int = 32,
    hidden_sizes: Sequence[int] = (16, 32),
    depths: Sequence[int] = (1, 1),
    seed: int = 0,
) -> Path:
    """Save a randomly initialised ResNet classifier (basic blocks, one stage per entry of ``depths``)
    over ``labels`` and its processor; return ``folder``.

    The processor is a ConvNeXt-style one, as Microsoft's ResNet checkpoints have: the shortest edge
    resized to ``image_size / 0.875``, then a centre crop of ``image_size``.
    """
    from transformers import ResNetConfig

    config = ResNetConfig(
        embedding_size=hidden_sizes[0],
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        layer_type="basic",
        **_label_maps(labels),
    )
    processor = _processor(
        "ConvNextImageProcessor",
        size={"shortest_edge": image_size},
        crop_pct=0.875,
        image_mean=_HALF,
        image_std=_HALF,
    )
    return _save(folder, config, processor, seed)


def _label_maps(labels: Sequence[str]) -> dict[str, Any]:
    names = list(labels)
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {name: index for index, name in enumerate(names)},
    }


def _processor(class_name: str, **options: Any) -> Any:
    import transformers

    from trainers.hf_loading import quiet_transformers

    with quiet_transformers():  # without torchvision, transformers notes that it uses the PIL variant
        return getattr(transformers, class_name)(**options)


def _save(folder: Path, config: Any, processor: Any, seed: int) -> Path:
    import torch
    from transformers import AutoModelForImageClassification

    from trainers.hf_loading import quiet_transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with quiet_transformers():
        AutoModelForImageClassification.from_config(config).save_pretrained(folder)
        processor.save_pretrained(folder)
    return folder
