"""ftsweep's own per-trial scheduling overhead, quickly: no-op trials, 2 workers, SQLite.

    .venv/bin/python bench/quick_overhead.py [--n-trials 200]

Prints one table row per setting (MLflow tracking on / off): milliseconds per trial between the
first trial's start and the last trial's end. `bench/scheduling_overhead.py` compares against
Optuna's optimize() and Ray Tune in one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from orchestrator.config import load_sweep
from orchestrator.runner import run_sweep


def measure(folder: Path, n_trials: int, tracking: bool, backend: str = "local") -> tuple[float, float]:
    name = f"overhead-{backend}-{'on' if tracking else 'off'}"
    sweep = {
        "study": {
            "name": name,
            "metric": "score",
            "n_trials": n_trials,
            "storage": f"sqlite:///{folder / 'ftsweep.db'}",
            "pruner": {"name": "median"},
        },
        "trainer": {"name": "noop", "epochs": 3},
        "search_space": {"x": {"type": "float", "low": -2, "high": 3}},
        "execution": {"workers": 2, "checkpoint_dir": str(folder / "checkpoints")}
        if backend == "local"
        else {"backend": "ray", "max_concurrent_trials": 2, "checkpoint_dir": str(folder / "checkpoints")},
        "tracking": {"enabled": tracking, "mlflow_uri": f"sqlite:///{folder / 'mlflow.db'}"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    started = time.perf_counter()
    run_sweep(load_sweep(path), live=False)
    total = time.perf_counter() - started
    trials = optuna.load_study(study_name=name, storage=sweep["study"]["storage"]).trials
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return span / n_trials * 1000, total


def measure_optuna(folder: Path, n_trials: int) -> float:
    """Optuna's own optimize() on a SQLite file: 3 reports and a should_prune per trial, 2 threads."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="optuna",
        storage=f"sqlite:///{folder / 'optuna.db'}",
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(),
    )

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -2, 3)
        for epoch in range(1, 4):
            trial.report(-((x - 1) ** 2) + 0.01 * epoch, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return -((x - 1) ** 2)

    study.optimize(objective, n_trials=n_trials, n_jobs=2)
    trials = study.trials
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return span / n_trials * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=200)
    parser.add_argument("--ray-trials", type=int, default=40, help="trials for the ray backend (0: skip it)")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, optuna {optuna.__version__}, load average {os.getloadavg()[0]:.2f}")
    print(
        "| ftsweep local, noop trials, 2 workers, SQLite | trials | ms per trial | total s (with start-up) |"
    )
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for tracking in (True, False):
            per_trial, total = measure(Path(folder), args.n_trials, tracking)
            print(
                f"| MLflow tracking {'on' if tracking else 'off'} | {args.n_trials} | {per_trial:.1f} | "
                f"{total:.1f} |"
            )
        if args.ray_trials:
            per_trial, total = measure(Path(folder), args.ray_trials, False, backend="ray")
            print(
                f"| ftsweep ray backend (local Ray, 2 at once), MLflow off | {args.ray_trials} | "
                f"{per_trial:.1f} | {total:.1f} |"
            )
        optuna_ms = measure_optuna(Path(folder), args.n_trials)
        print(
            f"| Optuna optimize(), n_jobs=2, same kind of file (no MLflow) | {args.n_trials} | "
            f"{optuna_ms:.1f} | |"
        )


if __name__ == "__main__":
    main()
