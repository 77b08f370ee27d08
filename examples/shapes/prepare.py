"""Prepare the shapes example: generate the images and build the tiny model, once.

Writes ``examples/shapes/data/`` (the coloured-shapes image set of ``make_data.py``: train,
validation and test folders, one subfolder per class) and ``examples/shapes/tiny-vit/`` (a
2-layer ViT for 32 x 32 images, built from a config and saved with ``save_pretrained`` next to its
image processor; nothing is downloaded). Either is kept when it already exists. Both are generated,
not committed (``.gitignore``).

Usage: ``python examples/shapes/prepare.py [--model vit|resnet]``; prints the model folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def prepare(model: str = "vit") -> Path:
    """Generate the data and build the model when absent; the model folder."""
    sys.path.insert(0, str(HERE.parent.parent))
    sys.path.insert(0, str(HERE))
    from make_data import CLASSES, make_shapes

    from trainers.tiny_image_model import build_tiny_resnet, build_tiny_vit

    if not (HERE / "data" / "test").is_dir():
        make_shapes(HERE / "data", seed=0, size=32)
    folder = HERE / f"tiny-{model}"
    if not (folder / "config.json").exists():
        build = build_tiny_vit if model == "vit" else build_tiny_resnet
        build(folder, CLASSES)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("vit", "resnet"), default="vit")
    print(prepare(parser.parse_args().model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
