"""A new user's first hour (issue 16): what the command line asked for is what the study keeps and shows."""

from __future__ import annotations

from pathlib import Path

from conftest import fault_sweep, run_cli, write_sweep


def _stored_sweep(folder: Path, name: str) -> dict:
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'ftsweep.db'}")
    return study.user_attrs["ftsweep:sweep"]["sweep"]


def test_run_n_trials_and_workers_are_the_budget_the_study_remembers(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("asked", n_trials=5, workers=2))
    result = run_cli(["run", "sweep.yaml", "--n-trials", "2", "--workers", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2/2 trials finished" in result.stderr
    stored = _stored_sweep(tmp_path, "asked")
    assert stored["study"]["n_trials"] == 2 and stored["execution"]["workers"] == 1
    status = run_cli(["status", "asked", "--format", "plain"], cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "budget 2" in status.stdout and "budget 5" not in status.stdout
    resumed = run_cli(["resume", "asked"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming study 'asked' to 2 trials (the budget stored with the study)" in resumed.stderr
    assert "2/2 trials finished" in resumed.stderr


def test_the_metric_is_named_in_the_study_and_the_trials_value_in_its_mlflow_run(tmp_path: Path) -> None:
    import optuna
    from conftest import mlflow_runs

    sweep = fault_sweep("named", n_trials=1, workers=1, curves={0: [0.2, 0.9, 0.5]})
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="named", storage=f"sqlite:///{tmp_path / 'ftsweep.db'}")
    assert study.metric_names == ["score"]
    assert study.trials[0].value == 0.9
    _, children, _ = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "named")
    (run,) = children
    # The per-epoch curve ends at the last epoch; the trial's value (its best epoch) has its own name.
    assert run.data.metrics["score"] == 0.5
    assert run.data.metrics["best_score"] == 0.9
