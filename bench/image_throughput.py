"""Training throughput of ftsweep's image-classification trainer against Hugging Face ``Trainer``.

Both fine-tune the same image classifier on the same images with the same per-image augmentations:

- **Model:** a ViT built from a config (``trainers.tiny_image_model.build_tiny_vit``: hidden 192,
  6 layers, 3 heads, MLP 384, patch 8, 64 x 64 images: 65 tokens, about 1.8 M parameters) and saved
  once with ``save_pretrained``; both sides load that folder, so both start from the same weights.
  Nothing is downloaded.
- **Data:** the coloured-shapes set of ``examples/shapes/make_data.py`` at 64 x 64 pixels (PNG
  files in class folders), generated once in a temporary folder: 300 training, 102 validation
  images by default.
- **Augmentations:** ``trainers.image_augment.build_transforms`` on both sides, with random resized
  crop (scale 0.6), horizontal flip 0.5, rotation 15 degrees, colour jitter 0.2 and RandAugment
  magnitude 5 (``--no-augment`` for none). ftsweep's trial applies them in its own
  ``ImageDataset``; for the ``Trainer`` a ``torch.utils.data.Dataset`` wraps the same
  ``ImageDataset`` (PNG decode + the same transform per image, keyed by epoch so each epoch draws
  new augmentations), so the per-image work is the same. Validation images get the evaluation
  transform (resize, normalize) on both sides. Mixup / CutMix are off: they change the loss to soft
  labels, which the ``Trainer`` needs a custom ``compute_loss`` for.
- **Hyperparameters:** AdamW at the same learning rate (the head too: ``head_learning_rate`` is set
  to the learning rate on the ftsweep side), linear decay without warmup, the same weight decay,
  gradient clipping at 1.0, the same batch size and epochs, float32, seed 0, evaluation after every
  epoch, ``dataloader_num_workers=0`` / ``num_workers: 0``, 2 threads each
  (``torch.set_num_threads`` and ``OMP_NUM_THREADS``).

ftsweep runs one trial of its trainer exactly as a sweep's worker does (``TrialContext`` and
``ImageClassificationTrainer.run``); Hugging Face runs ``transformers.Trainer`` on
``AutoModelForImageClassification``. Each runs in a fresh Python process.

Reported per epoch: training seconds (the epoch's optimizer steps, with decoding and augmenting),
validation seconds, validation accuracy and macro F1 (computed the same way on both sides);
overall: training images per second (training images x epochs / training seconds).

Needs ``accelerate`` (Hugging Face ``Trainer`` requires it). Run:
``.venv/bin/python bench/image_throughput.py`` (``--quick`` for a short check, ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common
from _common import OtherLoad, machine_header, markdown_table, package_version, temp_dir

SYSTEMS = {"ftsweep": "ftsweep image-classification trainer", "hf": "transformers.Trainer"}

#: The per-image augmentations both sides apply (``trainers.image_augment.ImageAugmentationParams``).
AUGMENTATIONS = {
    "random_resized_crop_scale": 0.6,
    "hflip": 0.5,
    "rotation_degrees": 15.0,
    "color_jitter": 0.2,
    "randaugment_magnitude": 5,
}


# --------------------------------------------------------------------------------------------
# The data and the model, made once in the parent
# --------------------------------------------------------------------------------------------


def prepare(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The shapes image set and the ViT folder under ``folder``; their paths and sizes."""
    sys.path.insert(0, str(_common.REPO_ROOT / "examples" / "shapes"))
    from make_data import CLASSES, make_shapes

    from trainers.tiny_image_model import build_tiny_vit

    per_class = {"train": args.train_per_class, "validation": args.val_per_class, "test": 0}
    written = make_shapes(folder / "data", seed=0, size=args.image_size, counts=per_class)
    model = build_tiny_vit(
        folder / "vit",
        CLASSES,
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=args.heads,
        seed=0,
    )
    return {
        "train": str(written["train"]),
        "validation": str(written["validation"]),
        "model": str(model),
        "n_train": args.train_per_class * len(CLASSES),
        "n_validation": args.val_per_class * len(CLASSES),
    }


def augmentations(args: argparse.Namespace) -> dict[str, Any]:
    return {} if args.no_augment else dict(AUGMENTATIONS)


# --------------------------------------------------------------------------------------------
# The two systems, each in its own process
# --------------------------------------------------------------------------------------------


def child_ftsweep(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    import re

    from trainers.base import TrialContext
    from trainers.image_classification import ImageClassificationTrainer

    started = time.perf_counter()
    settings = ImageClassificationTrainer.Settings(
        model=data["model"],
        data={"train": data["train"], "validation": data["validation"]},
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_batch_size=2 * args.batch_size,
        num_workers=0,
        precision="fp32",
    )
    trainer = ImageClassificationTrainer(settings, base_dir=_common.REPO_ROOT)
    lines: list[str] = []
    reports: list[dict[str, float]] = []
    ctx = TrialContext(
        trial_number=0,
        params={
            "learning_rate": args.learning_rate,
            "head_learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "warmup_ratio": 0.0,
            "max_grad_norm": 1.0,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": args.seed,
            **augmentations(args),
        },
        n_threads=args.threads,
        metric="val_f1",
        reporter=lambda epoch, metrics: reports.append(metrics) and False,
        logger=lines.append,
    )
    trainer.run(ctx)
    wall = time.perf_counter() - started
    pattern = re.compile(r"\(training ([\d.]+) s, validation ([\d.]+) s\)")
    epochs = []
    for line, metrics in zip([line for line in lines if line.startswith("epoch ")], reports, strict=True):
        found = pattern.search(line)
        if found is None:
            raise RuntimeError(f"no timing in the trial's epoch line: {line!r}")
        epochs.append(
            {
                "train_s": float(found.group(1)),
                "eval_s": float(found.group(2)),
                "val_accuracy": metrics["val_accuracy"],
                "val_f1": metrics["val_f1"],
            }
        )
    return {"epochs": epochs, "wall": wall, "train_rows": data["n_train"], "log": lines}


def child_hf(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    import torch
    from _hf import macro_f1_metrics, training_arguments
    from transformers import AutoModelForImageClassification, Trainer, TrainerCallback

    from trainers.hf_loading import quiet_transformers
    from trainers.image_augment import build_transforms
    from trainers.image_data import ImageDataset, ImageDataSettings, load_image_splits
    from trainers.image_geometry import load_image_geometry

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    splits = load_image_splits(
        ImageDataSettings(train=data["train"], validation=data["validation"]),
        _common.REPO_ROOT,
        include_test=False,
        check_images=False,
    )
    geometry = load_image_geometry(data["model"])
    train_transform, eval_transform = build_transforms(augmentations(args), geometry)

    class Images(torch.utils.data.Dataset):  # type: ignore[type-arg]
        """ftsweep's ``ImageDataset`` as the ``Trainer`` wants it: dicts, keyed by the current epoch."""

        def __init__(self, images: ImageDataset, keyed_by_epoch: bool) -> None:
            self.images = images
            self.keyed_by_epoch = keyed_by_epoch
            self.epoch = 1

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, index: int) -> dict[str, Any]:
            key = (index, self.epoch) if self.keyed_by_epoch else index
            pixels, label = self.images[key]
            return {"pixel_values": pixels, "labels": label}

    train = Images(ImageDataset(splits.train, splits.labels, train_transform, args.seed), True)
    validation = Images(ImageDataset(splits.validation, splits.labels, eval_transform, args.seed), False)
    with quiet_transformers():
        model = AutoModelForImageClassification.from_pretrained(data["model"], dtype=torch.float32)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.epochs: list[dict[str, float]] = []
            self.mark = 0.0

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            train.epoch = len(self.epochs) + 1  # new augmentations each epoch, as ftsweep's sampler
            self.mark = time.perf_counter()

        def on_epoch_end(self, *unused: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            self.epochs.append({"train_s": now - self.mark})
            self.mark = now

        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: dict[str, float], **kwargs: Any
        ) -> None:
            self.epochs[-1].update(
                eval_s=time.perf_counter() - self.mark,
                val_accuracy=metrics["eval_accuracy"],
                val_f1=metrics["eval_f1"],
            )

    timer = Timer()
    training = training_arguments(
        Path(data["train"]).parent.parent / "hf-output",
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=0,
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=train,
        eval_dataset=validation,
        compute_metrics=macro_f1_metrics(len(splits.labels)),
        callbacks=[timer],
    )
    trainer.train()
    wall = time.perf_counter() - started
    return {"epochs": timer.epochs, "wall": wall, "train_rows": len(train), "optim": str(training.optim)}


def run_child(
    system: str, args: argparse.Namespace, folder: Path, data: dict[str, Any], load: OtherLoad
) -> dict[str, Any]:
    out = folder / f"{system}.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        system,
        "--data",
        json.dumps(data),
        "--out",
        str(out),
        *args.forward,
    ]
    print(f"running {SYSTEMS[system]} ...", file=sys.stderr, flush=True)
    mark = load.mark()
    subprocess.run(command, env=_common.child_environment(args.threads), check=True, stdout=sys.stderr)
    result = json.loads(out.read_text(encoding="utf-8"))
    result["other_load"] = load.since(mark)
    print(f"  done in {result['wall']:.1f} s", file=sys.stderr, flush=True)
    return result


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------


def throughput(result: dict[str, Any]) -> float:
    """Training images per second over the whole run (every epoch's steps, no evaluation)."""
    seconds = sum(epoch["train_s"] for epoch in result["epochs"])
    return result["train_rows"] * len(result["epochs"]) / seconds


def best_epoch_throughput(result: dict[str, Any]) -> float:
    """Training images per second of the fastest epoch: what a run does when nothing else wants the CPU."""
    return result["train_rows"] / min(epoch["train_s"] for epoch in result["epochs"])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-per-class", type=int, default=100, help="training images per class (100)")
    parser.add_argument("--val-per-class", type=int, default=34, help="validation images per class (34)")
    parser.add_argument("--image-size", type=int, default=64, help="image side and the ViT's size (64)")
    parser.add_argument("--patch-size", type=int, default=8, help="ViT patch (8)")
    parser.add_argument("--hidden-size", type=int, default=192, help="ViT hidden size (192)")
    parser.add_argument("--layers", type=int, default=6, help="ViT layers (6)")
    parser.add_argument("--heads", type=int, default=3, help="ViT attention heads (3)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (32)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (3)")
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="learning rate, head too (5e-4)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="weight decay (0.01)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each system (2)")
    parser.add_argument("--no-augment", action="store_true", help="no augmentation on either side")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each system, alternating (1)")
    parser.add_argument("--order", choices=("ftsweep-first", "hf-first"), default="ftsweep-first")
    parser.add_argument("--seed", type=int, default=0, help="training seed of both systems (0)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: 30 training and 10 validation images, a 2-layer hidden-64 ViT at 32 px, 1 epoch",
    )
    parser.add_argument("--child", choices=tuple(SYSTEMS), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.train_per_class, args.val_per_class, args.image_size = 10, 4, 32
        args.hidden_size, args.layers, args.heads, args.epochs, args.batch_size = 64, 2, 2, 1, 16
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        data = json.loads(args.data)
        result = (child_ftsweep if args.child == "ftsweep" else child_hf)(args, data)
        Path(args.out).write_text(json.dumps(result), encoding="utf-8")
        return
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        sys.exit("transformers.Trainer needs accelerate: pip install 'accelerate>=1.1'")
    args.forward = [
        f"--batch-size={args.batch_size}",
        f"--epochs={args.epochs}",
        f"--learning-rate={args.learning_rate}",
        f"--weight-decay={args.weight_decay}",
        f"--threads={args.threads}",
        f"--seed={args.seed}",
        *(["--no-augment"] if args.no_augment else []),
    ]
    runs: dict[str, list[dict[str, Any]]] = {"ftsweep": [], "hf": []}
    load_before = os.getloadavg()
    load = OtherLoad().start()
    with temp_dir("ftsweep-bench-image-") as folder:
        data = prepare(folder, args)
        order = ["ftsweep", "hf"] if args.order == "ftsweep-first" else ["hf", "ftsweep"]
        for _ in range(args.repeat):
            for system in order:
                runs[system].append(run_child(system, args, folder, data, load))
    load.stop()
    load_after = os.getloadavg()
    report(args, data, runs, load, load_before, load_after)


def report(
    args: argparse.Namespace,
    data: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
    load: OtherLoad,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    def median_run(system: str) -> dict[str, Any]:
        ranked = sorted(runs[system], key=throughput)
        return ranked[len(ranked) // 2]  # the middle run; of two, the faster (load only slows a run)

    ours, theirs = median_run("ftsweep"), median_run("hf")
    speedup = throughput(ours) / throughput(theirs)
    best_speedup = statistics.median(best_epoch_throughput(r) for r in runs["ftsweep"]) / statistics.median(
        best_epoch_throughput(r) for r in runs["hf"]
    )
    augmented = ", ".join(f"{key} {value}" for key, value in augmentations(args).items()) or "none"
    print("## Image training throughput: ftsweep's image trainer vs transformers.Trainer\n")
    print(
        machine_header(
            [
                f"transformers {package_version('transformers')}; accelerate {package_version('accelerate')}",
                f"ViT from a config: hidden {args.hidden_size}, {args.layers} layers, {args.heads} heads, "
                f"patch {args.patch_size}, {args.image_size} x {args.image_size} images; shapes set: "
                f"{data['n_train']} training, {data['n_validation']} validation images (PNG, 3 classes)",
                f"batch {args.batch_size}, {args.epochs} epochs, lr {args.learning_rate:g} (head too), "
                f"weight decay {args.weight_decay:g}, {args.threads} threads each, fp32, seed {args.seed}, 0 "
                f"DataLoader workers; Trainer optimizer: {theirs.get('optim')}; augmentations on both "
                f"sides: {augmented}; {args.repeat} run(s) of each, alternating, median run shown",
                f"load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; after: "
                f"{', '.join(f'{v:.2f}' for v in load_after)}",
                load.summary()
                + "; during ftsweep's run(s): "
                + ", ".join(f"{r['other_load']:.2f}" for r in runs["ftsweep"])
                + "; during the Trainer's: "
                + ", ".join(f"{r['other_load']:.2f}" for r in runs["hf"]),
            ]
        )
    )
    print()
    rows = []
    for name, system, result in (("ftsweep", "ftsweep", ours), ("transformers.Trainer", "hf", theirs)):
        epochs = result["epochs"]
        rows.append(
            [
                name,
                f"{throughput(result):.1f}",
                f"{statistics.median(best_epoch_throughput(r) for r in runs[system]):.1f}",
                f"{sum(e['train_s'] for e in epochs) / len(epochs):.2f}",
                f"{sum(e['eval_s'] for e in epochs) / len(epochs):.2f}",
                f"{epochs[-1]['val_accuracy']:.4f}",
                f"{epochs[-1]['val_f1']:.4f}",
                f"{result['wall']:.1f}",
            ]
        )
    print(
        markdown_table(
            [
                "system",
                "training images/s",
                "fastest epoch images/s",
                "training s per epoch",
                "validation s per epoch",
                "final val_accuracy",
                "final val_f1",
                "process wall s",
            ],
            rows,
        )
    )
    print()
    epoch_rows = []
    for number, (a, b) in enumerate(zip(ours["epochs"], theirs["epochs"], strict=True), start=1):
        epoch_rows.append(
            [
                number,
                f"{a['train_s']:.2f}",
                f"{a['eval_s']:.2f}",
                f"{a['val_accuracy']:.4f}",
                f"{b['train_s']:.2f}",
                f"{b['eval_s']:.2f}",
                f"{b['val_accuracy']:.4f}",
            ]
        )
    print(
        markdown_table(
            [
                "epoch",
                "ftsweep train s",
                "ftsweep val s",
                "ftsweep val_accuracy",
                "Trainer train s",
                "Trainer val s",
                "Trainer val_accuracy",
            ],
            epoch_rows,
        )
    )
    print()
    print(
        "Every run, in order (training images/s over the run / of its fastest epoch / cores other processes "
        "used meanwhile): "
        + "; ".join(
            f"{system}: "
            + ", ".join(
                f"{throughput(r):.1f} / {best_epoch_throughput(r):.1f} / {r['other_load']:.2f}"
                for r in runs[system]
            )
            for system in runs
        )
    )
    fastest = {system: max(best_epoch_throughput(r) for r in runs[system]) for system in runs}
    print(
        f"Fastest epoch of all runs (the least disturbed by other load): ftsweep {fastest['ftsweep']:.1f}, "
        f"Trainer {fastest['hf']:.1f} images/s, ratio {fastest['ftsweep'] / fastest['hf']:.2f}x"
    )
    print()
    delta = ours["epochs"][-1]["val_accuracy"] - theirs["epochs"][-1]["val_accuracy"]
    print(
        f"Training throughput ratio (ftsweep / Trainer) {speedup:.2f}x over whole runs, {best_speedup:.2f}x "
        f"on the fastest epochs; final val_accuracy differs by {delta:+.4f} (same initial weights; different "
        "shuffling order and dropout draws). Process wall includes imports and loading."
    )


if __name__ == "__main__":
    main()
