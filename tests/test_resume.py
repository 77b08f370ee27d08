"""Interruptions cost at most the epoch in flight: real processes, real signals, then `ftsweep resume`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import POSTGRES_URL, cli_env, fault_sweep, mlflow_runs, require_postgres, run_cli, write_sweep

from orchestrator.study import open_storage

pytestmark = pytest.mark.slow


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_epoch(storage: str, name: str, trial_number: int, epoch: int, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until trial `trial_number` of the study has reported `epoch` (it is then in epoch + 1)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            trials = optuna.load_study(study_name=name, storage=open_storage(storage)).trials
        except KeyError:
            trials = []
        if len(trials) > trial_number and epoch in trials[trial_number].intermediate_values:
            return
        time.sleep(0.1)
    raise AssertionError(f"trial {trial_number} never reported epoch {epoch}")


def slow_sweep(name: str, storage: str | None = None, n_trials: int = 3, workers: int = 1) -> dict:
    sweep = fault_sweep(name, n_trials=n_trials, workers=workers, sleep_seconds=1.5)
    if storage:
        sweep["study"]["storage"] = storage
    return sweep


def assert_resumed_exactly(tmp_path: Path, storage: str, name: str, interrupted: int, n_trials: int = 3) -> None:
    study = optuna.load_study(study_name=name, storage=storage)
    counted = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED") or (t.state.name == "FAIL" and not t.user_attrs.get("interrupted"))]
    assert len(counted) == n_trials
    assert all(t.state.name == "COMPLETE" for t in counted)
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    broken = study.trials[interrupted]
    assert broken.state.name == "FAIL" and broken.user_attrs["interrupted"]
    rerun = next(t for t in study.trials if t.user_attrs.get("rerun_of") == interrupted)
    assert rerun.params == broken.params
    assert sorted(rerun.intermediate_values) == [1, 2, 3]
    assert rerun.user_attrs["mlflow_run_id"] == broken.user_attrs["mlflow_run_id"]

    log = (tmp_path / "ftsweep-runs" / name / "logs" / f"trial-{rerun.number}.log").read_text()
    assert "resuming after epoch 1" in log
    assert "epoch 1 starts" not in log  # the re-run did not train epoch 1 again

    # No finished trial ran twice: every trial's own log shows one start of epoch 1 at most.
    for trial in study.trials:
        path = tmp_path / "ftsweep-runs" / name / "logs" / f"trial-{trial.number}.log"
        assert path.read_text().count("epoch 1 starts") <= 1

    _, children, client = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", name)
    assert len(children) == n_trials  # the re-run continued its run: no duplicate
    run_id = rerun.user_attrs["mlflow_run_id"]
    steps = sorted(metric.step for metric in client.get_metric_history(run_id, "score"))
    assert steps == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"


def kill_driver_and_resume(tmp_path: Path, storage: str, name: str) -> None:
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    wait_for_epoch(storage, name, trial_number=1, epoch=1, process=driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    time.sleep(0.5)  # the trial process dies with the fork server, which dies with the driver

    result = run_cli(["resume", name, "--storage", storage], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "re-running interrupted trial(s) [1]" in result.stderr
    assert_resumed_exactly(tmp_path, storage, name, interrupted=1)


def test_sigkill_the_driver_mid_epoch_then_resume(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    write_sweep(tmp_path, slow_sweep("killed"))
    kill_driver_and_resume(tmp_path, storage, "killed")


@pytest.mark.postgres
def test_sigkill_the_driver_mid_epoch_then_resume_on_postgresql(tmp_path: Path) -> None:
    require_postgres()
    name = f"killed-{uuid.uuid4().hex[:8]}"
    write_sweep(tmp_path, slow_sweep(name, storage=POSTGRES_URL))
    try:
        kill_driver_and_resume(tmp_path, POSTGRES_URL, name)
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)


def test_sigkill_a_trial_process_reruns_it_from_its_checkpoint(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    write_sweep(tmp_path, slow_sweep("worker-killed"))
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    wait_for_epoch(storage, "worker-killed", trial_number=1, epoch=1, process=driver)
    pid_file = tmp_path / "ftsweep-runs" / "worker-killed" / "logs" / "trial-1.pid"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 0, stderr
    assert "trial 1 interrupted" in stderr
    assert_resumed_exactly(tmp_path, storage, "worker-killed", interrupted=1)


def test_ctrl_c_once_lets_the_epoch_finish_then_resume_completes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    write_sweep(tmp_path, slow_sweep("ctrl-c"))
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    wait_for_epoch(storage, "ctrl-c", trial_number=1, epoch=1, process=driver)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 130, stderr
    assert "starting no new trials" in stderr
    study = optuna.load_study(study_name="ctrl-c", storage=storage)
    # The running trial finished its second epoch, checkpointed, and stopped; nothing else started.
    assert len(study.trials) == 3  # 0 complete, 1 interrupted, and its queued re-run
    assert sorted(study.trials[1].intermediate_values) == [1, 2]
    assert (tmp_path / "ftsweep-runs" / "ctrl-c" / "checkpoints" / "trial-1").exists()

    result = run_cli(["resume", "ctrl-c"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="ctrl-c", storage=storage)
    rerun = next(t for t in study.trials if t.user_attrs.get("rerun_of") == 1)
    log = (tmp_path / "ftsweep-runs" / "ctrl-c" / "logs" / f"trial-{rerun.number}.log").read_text()
    assert "resuming after epoch 2" in log
    assert sorted(rerun.intermediate_values) == [1, 2, 3]
    assert sum(1 for t in study.trials if t.state.name == "COMPLETE") == 3


def test_resume_refuses_a_changed_search_space_unless_forced(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("changed", n_trials=2, workers=1))
    assert run_cli(["run", "sweep.yaml", "--n-trials", "1"], cwd=tmp_path).returncode == 0
    changed = fault_sweep("changed", n_trials=2, workers=1)
    changed["search_space"]["x"]["high"] = 10.0
    write_sweep(tmp_path, changed, name="changed.yaml")

    refused = run_cli(["resume", "changed", "--sweep", "changed.yaml"], cwd=tmp_path)
    assert refused.returncode == 2
    assert "search_space.x.high: 3.0 -> 10.0" in refused.stderr and "--force" in refused.stderr
    assert len(optuna.load_study(study_name="changed", storage="sqlite:///" + str(tmp_path / "ftsweep.db")).trials) == 1

    forced = run_cli(["resume", "changed", "--sweep", "changed.yaml", "--force"], cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    study = optuna.load_study(study_name="changed", storage="sqlite:///" + str(tmp_path / "ftsweep.db"))
    assert len(study.trials) == 2


def test_resume_extends_the_budget(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("extended", n_trials=2, workers=1))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    assert run_cli(["resume", "extended", "--n-trials", "4"], cwd=tmp_path).returncode == 0
    again = run_cli(["resume", "extended"], cwd=tmp_path)  # the new budget is kept with the study
    assert again.returncode == 0
    study = optuna.load_study(study_name="extended", storage="sqlite:///" + str(tmp_path / "ftsweep.db"))
    assert len(study.trials) == 4


def test_out_of_memory_retries_once_with_half_the_per_step_batch(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("oom", n_trials=1, workers=1, oom_trials=[0]))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    study = optuna.load_study(study_name="oom", storage="sqlite:///" + str(tmp_path / "ftsweep.db"))
    assert study.trials[0].state.name == "COMPLETE"
    log = (tmp_path / "ftsweep-runs" / "oom" / "logs" / "trial-0.log").read_text()
    assert "retrying with gradient_accumulation_steps=2" in log


def test_worker_refuses_a_sqlite_file(tmp_path: Path) -> None:
    result = run_cli(["worker", "any", "--storage", "sqlite:///ftsweep.db"], cwd=tmp_path)
    assert result.returncode == 2
    assert "SQLite file is one machine, one writer" in result.stderr


@pytest.mark.postgres
def test_workers_on_several_processes_share_one_budget_on_postgresql(tmp_path: Path) -> None:
    require_postgres()
    name = f"shared-{uuid.uuid4().hex[:8]}"
    sweep = fault_sweep(name, n_trials=16, workers=2, sleep_seconds=1.0)
    sweep["study"]["storage"] = POSTGRES_URL
    write_sweep(tmp_path, sweep)
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    try:
        wait_for_epoch(POSTGRES_URL, name, trial_number=0, epoch=1, process=driver)
        workers = [start_cli(["worker", name, "--storage", POSTGRES_URL, "--workers", "2"], cwd=tmp_path) for _ in range(3)]
        for process in [driver, *workers]:
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr
            assert "database is locked" not in stderr and "Traceback" not in stderr
        study = optuna.load_study(study_name=name, storage=POSTGRES_URL)
        assert len(study.trials) == 16
        assert all(t.state.name == "COMPLETE" for t in study.trials)
        owners = {t.user_attrs["owner"] for t in study.trials}
        assert len(owners) >= 2  # the workers really took part
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)


def test_four_workers_on_one_sqlite_file(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("four-sqlite", n_trials=12, workers=4))
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr
    study = optuna.load_study(study_name="four-sqlite", storage="sqlite:///" + str(tmp_path / "ftsweep.db"))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 12
