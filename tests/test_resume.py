"""Interruptions cost at most the epoch in flight: real processes, real signals, then `ftsweep resume`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import POSTGRES_URL, cli_env, fault_sweep, mlflow_runs, require_postgres, run_cli, write_sweep

from orchestrator.study import open_storage

pytestmark = pytest.mark.slow


def start_cli(args: list[str], cwd: Path, stderr_file: Path | None = None) -> subprocess.Popen:
    """Start ``ftsweep ARGS``; with ``stderr_file`` its stderr goes there, to be read while it runs."""
    stderr = open(stderr_file, "w", encoding="utf-8") if stderr_file else subprocess.PIPE  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", *args],
            cwd=cwd,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    finally:
        if stderr_file:
            stderr.close()  # the child has its own copy


def wait_until(
    condition: Callable[[], object], what: str, processes: list[subprocess.Popen], timeout: float = 300
) -> None:
    """Poll ``condition`` until it holds; fail at once if one of ``processes`` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            assert process.poll() is None, (what, process.args, process.communicate())
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.2)


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody reaps has ended too)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stream:
            return stream.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def waiting_trials(log_dir: Path) -> dict[int, int]:
    """{trial number: pid} of the trials whose log says they wait for the test's release file."""
    found = {}
    pattern = re.compile(r"^trial (\d+) \(pid (\d+)\) waits for ", re.M)
    for log in log_dir.glob("trial-*.log"):
        for match in pattern.finditer(log.read_text(encoding="utf-8")):
            found[int(match[1])] = int(match[2])
    return found


def stop(processes: list[subprocess.Popen]) -> None:
    """Kill what a failed test left running."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


def wait_for_epoch(
    storage: str, name: str, trial_number: int, epoch: int, process: subprocess.Popen, timeout: float = 300
) -> None:
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


def held_sweep(
    folder: Path, name: str, storage: str | None = None, n_trials: int = 3, workers: int = 1
) -> dict:
    """Trial 1 reports epoch 1, then waits before epoch 2 until ``folder / "release"`` exists.

    So a test acts on trial 1 at a known point (after epoch 1, before epoch 2) however slowly
    the machine runs; its re-run has another number and does not wait.
    """
    sweep = fault_sweep(
        name,
        n_trials=n_trials,
        workers=workers,
        release_file=str(folder / "release"),
        pause_trials=[1],
        pause_before_epoch=2,
    )
    if storage:
        sweep["study"]["storage"] = storage
    return sweep


def assert_resumed_exactly(
    tmp_path: Path, storage: str, name: str, interrupted: int, n_trials: int = 3
) -> None:
    study = optuna.load_study(study_name=name, storage=storage)
    counted = [
        t
        for t in study.trials
        if t.state.name in ("COMPLETE", "PRUNED")
        or (t.state.name == "FAIL" and not t.user_attrs.get("interrupted"))
    ]
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
    trial_pid = int((tmp_path / "ftsweep-runs" / name / "logs" / "trial-1.pid").read_text())
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    # The trial process dies with the driver (its lifeline pipe closes): wait until it has.
    wait_until(lambda: process_gone(trial_pid), "the trial process to die with its driver", [], timeout=120)
    (tmp_path / "release").touch()

    result = run_cli(["resume", name, "--storage", storage], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "re-running interrupted trial(s) [1]" in result.stderr
    assert_resumed_exactly(tmp_path, storage, name, interrupted=1)


def test_sigkill_the_driver_mid_epoch_then_resume(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    write_sweep(tmp_path, held_sweep(tmp_path, "killed"))
    kill_driver_and_resume(tmp_path, storage, "killed")


@pytest.mark.postgres
def test_sigkill_the_driver_mid_epoch_then_resume_on_postgresql(tmp_path: Path) -> None:
    require_postgres()
    name = f"killed-{uuid.uuid4().hex[:8]}"
    write_sweep(tmp_path, held_sweep(tmp_path, name, storage=POSTGRES_URL))
    try:
        kill_driver_and_resume(tmp_path, POSTGRES_URL, name)
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)


def test_sigkill_a_trial_process_reruns_it_from_its_checkpoint(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    write_sweep(tmp_path, held_sweep(tmp_path, "worker-killed"))
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    wait_for_epoch(storage, "worker-killed", trial_number=1, epoch=1, process=driver)
    pid_file = tmp_path / "ftsweep-runs" / "worker-killed" / "logs" / "trial-1.pid"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    (tmp_path / "release").touch()
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    assert "trial 1 interrupted" in stderr
    assert_resumed_exactly(tmp_path, storage, "worker-killed", interrupted=1)


def test_ctrl_c_once_lets_the_epoch_finish_then_resume_completes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    write_sweep(tmp_path, held_sweep(tmp_path, "ctrl-c"))
    errors = tmp_path / "driver.err"
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path, stderr_file=errors)
    wait_for_epoch(storage, "ctrl-c", trial_number=1, epoch=1, process=driver)
    driver.send_signal(signal.SIGINT)
    # Trial 1 waits before epoch 2 until the driver has taken the Ctrl-C: then it runs epoch 2 and stops.
    took_it = lambda: "starting no new trials" in errors.read_text(encoding="utf-8")  # noqa: E731
    wait_until(took_it, "the driver to take the Ctrl-C", [driver])
    (tmp_path / "release").touch()
    driver.communicate(timeout=300)
    stderr = errors.read_text(encoding="utf-8")
    assert driver.returncode == 130, stderr
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
    assert (
        len(
            optuna.load_study(
                study_name="changed", storage="sqlite:///" + str(tmp_path / "ftsweep.db")
            ).trials
        )
        == 1
    )

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
@pytest.mark.timeout(900)  # four CLI processes started one after another: 270 s on a loaded 2-core machine
def test_workers_on_several_processes_share_one_budget_on_postgresql(tmp_path: Path) -> None:
    require_postgres()
    name = f"shared-{uuid.uuid4().hex[:8]}"
    release = tmp_path / "release"
    # Every trial waits before its first epoch until the test releases them, so the driver cannot
    # finish the budget before the workers have joined, however slowly they start.
    sweep = fault_sweep(name, n_trials=16, workers=2, release_file=str(release))
    sweep["study"]["storage"] = POSTGRES_URL
    write_sweep(tmp_path, sweep)

    storage = open_storage(POSTGRES_URL)

    def owners() -> set[str]:
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except KeyError:  # the driver has not created the study yet
            return set()
        return {t.user_attrs["owner"] for t in trials if "owner" in t.user_attrs}

    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    processes = [driver]
    try:
        wait_until(lambda: owners(), "the driver to start its first trial", processes)
        processes += [
            start_cli(["worker", name, "--storage", POSTGRES_URL, "--workers", "2"], cwd=tmp_path)
            for _ in range(3)
        ]
        wait_until(lambda: len(owners()) == 4, "the driver and each worker to hold a trial", processes)
        release.touch()
        for process in processes:
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr
            assert "database is locked" not in stderr and "Traceback" not in stderr
        study = optuna.load_study(study_name=name, storage=POSTGRES_URL)
        assert len(study.trials) == 16
        assert all(t.state.name == "COMPLETE" for t in study.trials)
        assert len(owners()) == 4  # the driver and the three workers took part
    finally:
        stop(processes)
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)


def test_four_workers_on_one_sqlite_file(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("four-sqlite", n_trials=12, workers=4))
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr
    study = optuna.load_study(study_name="four-sqlite", storage="sqlite:///" + str(tmp_path / "ftsweep.db"))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 12
