"""A sweep end to end on the local backend: real processes, a real SQLite file, a real MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import fault_sweep, mlflow_runs, run_cli, write_sweep

pytestmark = pytest.mark.slow


def load(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'ftsweep.db'}")


def test_four_trials_two_workers_leave_four_trials_and_four_child_runs(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("four", n_trials=4, workers=2))
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    study = load(tmp_path, "four")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in study.trials)
    assert {t.user_attrs["device"] for t in study.trials} == {"cpu (1 thread)"}

    parents, children, client = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "four")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.data.params["metric"] == "score"
    assert parent.data.tags["best_trial"] == str(study.best_trial.number)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        number = int(child.data.tags["ftsweep.trial_number"])
        trial = study.trials[number]
        assert trial.user_attrs["mlflow_run_id"] == child.info.run_id
        assert float(child.data.params["x"]) == pytest.approx(trial.params["x"])
        assert child.data.params["epochs"] == "3"
        history = client.get_metric_history(child.info.run_id, "score")
        assert sorted(m.step for m in history) == [1, 2, 3]
        assert child.info.status == "FINISHED" and child.data.tags["ftsweep.state"] == "COMPLETE"


def test_the_optuna_cli_reads_the_same_study(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("shared", n_trials=2, workers=1))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    optuna_cli = Path(sys.executable).with_name("optuna")
    output = subprocess.run(
        [
            str(optuna_cli),
            "trials",
            "--study-name",
            "shared",
            "--storage",
            "sqlite:///ftsweep.db",
            "-f",
            "json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    trials = json.loads(output)
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]


def test_budget_is_exact_with_more_workers_than_trials_left(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("exact", n_trials=5, workers=2))
    assert run_cli(["run", "sweep.yaml", "--workers", "2"], cwd=tmp_path).returncode == 0
    assert len(load(tmp_path, "exact").trials) == 5


def test_a_raising_trial_fails_alone_with_its_traceback_in_mlflow(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("raises", n_trials=4, workers=2, fail_trials=[1]))
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = load(tmp_path, "raises")
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "COMPLETE"}
    assert "broke on purpose" in study.trials[1].user_attrs["reason"]

    _, children, client = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "raises")
    failed = next(run for run in children if run.data.tags["ftsweep.trial_number"] == "1")
    assert failed.info.status == "FAILED"
    path = client.download_artifacts(failed.info.run_id, "traceback.txt", str(tmp_path))
    assert "RuntimeError: trial 1 broke on purpose" in Path(path).read_text()


def test_a_diverging_trial_is_pruned_as_diverged(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("nan", n_trials=3, workers=1, nan_trials=[0]))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    study = load(tmp_path, "nan")
    assert study.trials[0].state.name == "PRUNED"
    assert study.trials[0].user_attrs["reason"].startswith("diverged")
    assert [t.state.name for t in study.trials[1:]] == ["COMPLETE", "COMPLETE"]


def test_failure_budget_stops_a_study_whose_trials_all_crash(tmp_path: Path) -> None:
    sweep = fault_sweep("crashes", n_trials=10, workers=1, fail_trials=list(range(10)))
    sweep["study"]["max_failures"] = 2
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    # The user's to fix (exit 2, one line naming the first error), not "a bug" (1) without a log.
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ftsweep: error: 2 trials failed") and "broke on purpose" in last
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert len(load(tmp_path, "crashes").trials) == 2


def test_status_and_best_need_only_the_study_name(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("named", n_trials=3, workers=1))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"

    status = run_cli(["status", "named"], cwd=elsewhere, FTSWEEP_STORAGE=storage)
    assert status.returncode == 0, status.stderr
    assert "3 trials: 3 complete" in status.stdout

    best = run_cli(["best", "named", "--format", "json"], cwd=elsewhere, FTSWEEP_STORAGE=storage)
    assert best.returncode == 0, best.stderr
    import json

    summary = json.loads(best.stdout)
    study = load(tmp_path, "named")
    assert summary["trial"] == study.best_trial.number
    assert summary["value"] == pytest.approx(study.best_value)
    assert summary["params"]["x"] == pytest.approx(study.best_params["x"])
    assert summary["params"]["epochs"] == 3  # fixed parameters come along


def test_run_refuses_a_study_that_exists(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("twice", n_trials=1, workers=1))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    again = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert again.returncode == 2
    assert "ftsweep resume twice" in again.stderr and "Traceback" not in again.stderr
    assert len(load(tmp_path, "twice").trials) == 1


def test_same_seed_same_trials_with_one_worker(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        write_sweep(tmp_path / folder, fault_sweep("seeded", n_trials=3, workers=1))
        assert run_cli(["run", "sweep.yaml"], cwd=tmp_path / folder).returncode == 0
    first = optuna.load_study(study_name="seeded", storage=f"sqlite:///{tmp_path / 'a' / 'ftsweep.db'}")
    second = optuna.load_study(study_name="seeded", storage=f"sqlite:///{tmp_path / 'b' / 'ftsweep.db'}")
    assert [t.params for t in first.trials] == [t.params for t in second.trials]


def test_a_trial_that_reaches_its_last_epoch_is_never_pruned(tmp_path: Path) -> None:
    """Pruning after the last epoch would throw away a finished trial's result; the pruner stops earlier
    ones."""
    sweep = fault_sweep("last-epoch", n_trials=16, workers=1, epochs=2)
    sweep["study"]["sampler"] = {"name": "random", "seed": 3}
    sweep["study"]["pruner"] = {"name": "median", "n_startup_trials": 2}
    sweep["search_space"]["slope"] = {
        "type": "float",
        "low": -2.0,
        "high": 2.0,
    }  # some trials get worse at epoch 2
    sweep["tracking"] = {"enabled": False}
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = load(tmp_path, "last-epoch").trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, "the median pruner stopped no trial: the test needs a sweep where it does"
    assert all(sorted(t.intermediate_values) == [1] for t in pruned)
    assert all(t.state.name == "COMPLETE" for t in trials if 2 in t.intermediate_values)


def test_the_pruner_sees_the_running_best_so_an_early_peak_survives(tmp_path: Path) -> None:
    """A trial is worth its best epoch: a trial that peaks at epoch 1 and then falls must not be pruned on
    its later epochs by a pruner its peak beats (the median pruner compares each step with the others')."""
    curves = {0: [0.5, 0.55, 0.6], 1: [0.5, 0.55, 0.6], 2: [0.7, 0.4, 0.3]}
    sweep = fault_sweep("early-peak", n_trials=3, workers=1, epochs=3, curves=curves)
    sweep["study"]["pruner"] = {"name": "median", "n_startup_trials": 2}
    sweep["tracking"] = {"enabled": False}
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = load(tmp_path, "early-peak").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    peaked = trials[2]
    assert peaked.value == pytest.approx(0.7)
    # What the pruner was shown at each epoch: the best so far.
    assert [peaked.intermediate_values[epoch] for epoch in (1, 2, 3)] == pytest.approx([0.7, 0.7, 0.7])


def test_a_trial_without_progress_is_pruned_with_its_reason_in_status(tmp_path: Path) -> None:
    """A first epoch that scores exactly the majority-class score, while an earlier trial did better, is a
    trial that learned nothing (a learning rate too small to move the model): pruned as `no progress`."""
    curves = {0: [0.6, 0.7, 0.8], 1: [0.3, 0.3, 0.3], 2: [0.3, 0.5, 0.6]}
    sweep = fault_sweep("stuck", n_trials=3, workers=1, epochs=3, curves=curves, majority_score=0.3)
    sweep["tracking"] = {"enabled": False}
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = load(tmp_path, "stuck").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    assert all(t.user_attrs["reason"].startswith("no progress") for t in trials[1:])
    assert sorted(trials[1].intermediate_values) == [1]
    status = run_cli(["status", "stuck"], cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "no progress" in status.stdout
