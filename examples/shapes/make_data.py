"""Generate the synthetic coloured-shapes image set: the class of an image is the shape it shows.

Each image is a small RGB picture (``--size`` pixels square, 32 by default) of one filled shape,
``circle``, ``square`` or ``triangle``, drawn at a random position and size (from a third to two
thirds of the side; triangles at a random rotation) in a random colour on a random background colour
at least a set distance away, plus per-pixel Gaussian noise. Colour, position and size carry no
information about the class, so a model has to learn the shape.

Two layouts (the two an image trainer reads):

* ``--layout folder`` (default): ``OUT/train/<class>/<n>.png``, ``OUT/validation/...``, ``OUT/test/...``;
* ``--layout table``: every image under ``OUT/images/`` and ``OUT/train.csv`` / ``validation.csv`` /
  ``test.csv`` with columns ``path,label`` (paths relative to the CSV).

For regression (``trainer.task: regression``), ``--target size`` labels each image with a number
instead of its shape: the shape's side as a fraction of the image's (0.33 to 0.67); it needs
``--layout table`` (an image folder's labels are class names).

Deterministic for a seed: one ``random.Random(seed)`` draws train, then validation, then test (the
same images for either target).

Usage: ``python examples/shapes/make_data.py [--out DIR] [--seed 0] [--size 32] [--n-train 60]
[--n-validation 20] [--n-test 20] [--layout folder|table] [--target shape|size]`` (counts per class).
Prints one line per split.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

CLASSES = ("circle", "square", "triangle")
SPLITS = ("train", "validation", "test")
NOISE_SD = 12.0  # per-pixel Gaussian noise, in 0..255 units
MIN_COLOUR_DISTANCE = 120.0  # between the shape's and the background's RGB colours


def draw_shape(shape: str, size: int, rng: random.Random) -> Image:
    """One ``size`` x ``size`` RGB image of ``shape`` (one of :data:`CLASSES`)."""
    return draw_shape_and_side(shape, size, rng)[0]


def draw_shape_and_side(shape: str, size: int, rng: random.Random) -> tuple[Image, float]:
    """:func:`draw_shape`'s image and the shape's side in pixels."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    background, colour = _colours(rng)
    image = PILImage.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    side = rng.uniform(size / 3, size * 2 / 3)
    centre_x = rng.uniform(side / 2, size - side / 2)
    centre_y = rng.uniform(side / 2, size - side / 2)
    half = side / 2
    if shape == "circle":
        draw.ellipse([centre_x - half, centre_y - half, centre_x + half, centre_y + half], fill=colour)
    elif shape == "square":
        draw.rectangle([centre_x - half, centre_y - half, centre_x + half, centre_y + half], fill=colour)
    elif shape == "triangle":
        turn = rng.uniform(0, 2 * math.pi)
        corners = [
            (
                centre_x + half * math.cos(turn + k * 2 * math.pi / 3),
                centre_y + half * math.sin(turn + k * 2 * math.pi / 3),
            )
            for k in range(3)
        ]
        draw.polygon(corners, fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(CLASSES)}")
    return _add_noise(image, rng), side


def _colours(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    background = tuple(rng.randrange(256) for _ in range(3))
    while True:
        colour = tuple(rng.randrange(256) for _ in range(3))
        if math.dist(colour, background) >= MIN_COLOUR_DISTANCE:
            return background, colour  # type: ignore[return-value]


def _add_noise(image: Image, rng: random.Random) -> Image:
    import numpy as np
    from PIL import Image as PILImage

    noise = np.random.default_rng(rng.randrange(2**32)).normal(
        0.0, NOISE_SD, size=(image.height, image.width, 3)
    )
    pixels = np.asarray(image, dtype=np.float64) + noise
    return PILImage.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def make_shapes(
    out: Path,
    *,
    seed: int = 0,
    size: int = 32,
    counts: dict[str, int] | None = None,
    layout: str = "folder",
    target: str = "shape",
) -> dict[str, Path]:
    """Write the image set under ``out``; return each split's folder (``folder``) or CSV (``table``).

    Args:
        counts: images per class of each split; default train 60, validation 20, test 20.
        layout: ``folder`` or ``table``.
        target: the label: ``shape`` (a class) or ``size`` (a number, the side over the image's side,
            rounded to 4 decimals; ``table`` layout only).
    """
    if layout not in ("folder", "table"):
        raise ValueError(f"layout is {layout!r}; allowed: folder, table")
    if target not in ("shape", "size"):
        raise ValueError(f"target is {target!r}; allowed: shape, size")
    if target == "size" and layout != "table":
        raise ValueError("target size needs layout table: an image folder's labels are class names")
    counts = {"train": 60, "validation": 20, "test": 20} | dict(counts or {})
    rng = random.Random(seed)
    out = Path(out)
    written: dict[str, Path] = {}
    for split in SPLITS:
        rows: list[tuple[str, str]] = []
        for shape in CLASSES:
            for number in range(counts[split]):
                relative = (
                    Path(split) / shape / f"{number:04d}.png"
                    if layout == "folder"
                    else Path("images") / f"{split}-{shape}-{number:04d}.png"
                )
                (out / relative).parent.mkdir(parents=True, exist_ok=True)
                image, side = draw_shape_and_side(shape, size, rng)
                image.save(out / relative, format="PNG")
                rows.append((relative.as_posix(), shape if target == "shape" else f"{side / size:.4f}"))
        if layout == "folder":
            written[split] = out / split
        else:
            table = out / f"{split}.csv"
            with open(table, "w", newline="", encoding="utf-8") as stream:
                writer = csv.writer(stream, lineterminator="\n")
                writer.writerow(["path", "label"])
                writer.writerows(rows)
            written[split] = table
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--n-train", type=int, default=60, help="training images per class")
    parser.add_argument("--n-validation", type=int, default=20, help="validation images per class")
    parser.add_argument("--n-test", type=int, default=20, help="test images per class")
    parser.add_argument("--layout", choices=("folder", "table"), default="folder")
    parser.add_argument(
        "--target", choices=("shape", "size"), default="shape", help="size: a numeric label (needs table)"
    )
    args = parser.parse_args()
    if args.target == "size" and args.layout != "table":
        parser.error("--target size needs --layout table (an image folder's labels are class names)")
    counts = {"train": args.n_train, "validation": args.n_validation, "test": args.n_test}
    written = make_shapes(
        args.out, seed=args.seed, size=args.size, counts=counts, layout=args.layout, target=args.target
    )
    for split, path in written.items():
        print(f"{split}: {counts[split] * len(CLASSES)} images in {path}")


if __name__ == "__main__":
    main()
