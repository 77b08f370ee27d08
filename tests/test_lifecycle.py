"""A session's life cycle through the real CLI: what is created, how it ends, what exit code it gives.

Real processes, a real SQLite store, a real MLflow store, real signals; trials are held at a known
point with the fault trainer's release file instead of racing the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import cli_env, fault_sweep, mlflow_runs, run_cli, write_sweep

from orchestrator.storage import StoreLocation

pytestmark = pytest.mark.slow

#: Generous: a loaded 2-core machine takes seconds to start a driver, its MLflow writer and a trial.
BOUND_SECONDS = 240


def start_cli(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        env=cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + BOUND_SECONDS
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"the driver ended (code {process.returncode}) before {what}: {process.communicate()}"
            )
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def study_dir(tmp_path: Path, name: str) -> Path:
    return StoreLocation.resolve(f"sqlite:///{tmp_path / 'ftsweep.db'}").study_dir(name)


def log_says(tmp_path: Path, name: str, trial: int, text: str) -> bool:
    path = study_dir(tmp_path, name) / "logs" / f"trial-{trial}.log"
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def load(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'ftsweep.db'}")


def held_sweep(tmp_path: Path, name: str, n_trials: int = 3, workers: int = 1, **hold: object) -> dict:
    """A quick fault sweep whose trials wait for ``tmp_path/release`` (see FaultSettings)."""
    return fault_sweep(
        name, n_trials=n_trials, workers=workers, release_file=str(tmp_path / "release"), **hold
    )


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


# -- planning: nothing is created for a mistake ---------------------------------------------------


def test_ray_not_installed_is_one_line_exit_2_and_nothing_is_created(tmp_path: Path) -> None:
    shim = tmp_path / "no-ray"
    shim.mkdir()
    # A real `import ray` that fails, as on a machine without the extra.
    (shim / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    work = tmp_path / "work"
    write_sweep(work, fault_sweep("on-ray", n_trials=1, workers=1))

    result = run_cli(
        ["run", "sweep.yaml", "--backend", "ray"],
        cwd=work,
        PYTHONPATH=f"{shim}{os.pathsep}{cli_env()['PYTHONPATH']}",
    )

    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "pip install -e '.[ray]'" in line and "execution.backend" in line
    assert sorted(path.name for path in work.iterdir()) == [
        "sweep.yaml"
    ]  # no store, no MLflow, no run folder
    # The study name is still free: the same sweep runs on the local backend.
    assert run_cli(["run", "sweep.yaml"], cwd=work).returncode == 0


def test_checkpoint_dir_that_is_a_file_is_refused_while_planning(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("x")
    sweep = fault_sweep("ckpt-file", n_trials=2, workers=1)
    sweep["execution"]["checkpoint_dir"] = "not-a-folder"
    write_sweep(tmp_path, sweep)

    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "execution.checkpoint_dir" in line and "not-a-folder" in line and "is a file" in line
    assert not (tmp_path / "ftsweep.db").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("section", ["sampler", "pruner"])
def test_a_sampler_or_pruner_option_typo_leaves_no_store_and_no_experiment(
    tmp_path: Path, section: str
) -> None:
    sweep = fault_sweep(f"typo-{section}", n_trials=2, workers=1)
    sweep["study"][section] = (
        {"name": "tpe", "n_startup_trail": 3}
        if section == "sampler"
        else {"name": "median", "n_warmup_step": 1}
    )
    write_sweep(tmp_path, sweep)

    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"study.{section}" in line
    assert not (tmp_path / "mlflow.db").exists()  # no empty MLflow experiment left behind
    assert not (tmp_path / "ftsweep.db").exists()


def test_timeout_zero_is_refused_on_the_command_line_as_in_the_sweep_file(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("zero", n_trials=1, workers=1))
    flag = run_cli(["run", "sweep.yaml", "--timeout", "0"], cwd=tmp_path)
    assert flag.returncode == 2 and "--timeout" in flag.stderr and "Traceback" not in flag.stderr

    sweep = fault_sweep("zero", n_trials=1, workers=1)
    sweep["study"]["timeout"] = 0
    write_sweep(tmp_path, sweep, name="zero.yaml")
    in_file = run_cli(["run", "zero.yaml"], cwd=tmp_path)
    assert in_file.returncode == 2 and "study.timeout" in in_file.stderr
    assert not (tmp_path / "ftsweep.db").exists()


# -- how a session ends ----------------------------------------------------------------------------


def test_a_run_whose_every_trial_fails_exits_2_with_the_first_error(tmp_path: Path) -> None:
    # max_failures 100
    write_sweep(tmp_path, fault_sweep("all-fail", n_trials=3, workers=1, fail_trials=[0, 1, 2]))

    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    line = last_line(result.stderr)
    assert line.startswith(
        "ftsweep: error: every trial of this run failed; first error: trial 0: RuntimeError"
    )
    assert "broke on purpose" in line
    assert "Traceback" not in result.stderr
    assert [t.state.name for t in load(tmp_path, "all-fail").trials] == ["FAIL"] * 3


def test_resume_refuses_a_budget_below_the_finished_trials_and_keeps_the_stored_one(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("smaller", n_trials=3, workers=1))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0

    result = run_cli(["resume", "smaller", "--n-trials", "2"], cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "--n-trials 2" in line and "3 finished" in line
    from orchestrator.study import sweep_record

    stored = sweep_record(load(tmp_path, "smaller"))["sweep"]["study"]["n_trials"]
    assert stored == 3
    assert run_cli(["resume", "smaller"], cwd=tmp_path).returncode == 0  # nothing left to run: 3/3


def test_tied_best_values_keep_the_checkpoint_of_the_trial_best_names(tmp_path: Path) -> None:
    # Every trial scores the same (x is fixed; the searched parameter does not change the score).
    # Trial 0 is held until trial 1 has completed, so the later-numbered trial finishes first.
    sweep = held_sweep(tmp_path, "tied", n_trials=2, workers=2, pause_trials=[0])
    sweep["trainer"]["params"] = {"x": 0.5}
    sweep["search_space"] = {"gradient_accumulation_steps": {"type": "int", "low": 1, "high": 4}}
    write_sweep(tmp_path, sweep)
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    wait_until(lambda: len(load_trials(tmp_path, "tied", "COMPLETE")) == 1, "trial 1 to complete", driver)
    (tmp_path / "release").touch()
    _, stderr = driver.communicate(timeout=BOUND_SECONDS)
    assert driver.returncode == 0, stderr
    study = load(tmp_path, "tied")
    assert study.trials[0].value == study.trials[1].value

    best = run_cli(["best", "tied", "--format", "json"], cwd=tmp_path)
    import json

    named = json.loads(best.stdout)["trial"]
    assert named == 0  # ties go to the lowest trial number
    kept = sorted(path.name for path in (study_dir(tmp_path, "tied") / "checkpoints").iterdir())
    assert kept == [f"trial-{named}"]


def load_trials(tmp_path: Path, name: str, state: str) -> list:
    try:
        return [t for t in load(tmp_path, name).trials if t.state.name == state]
    except KeyError:
        return []


# -- one driver per study; a killed driver leaves no orphan MLflow run ---------------------------


def test_a_second_driver_is_refused_naming_the_first_and_the_budget_holds(tmp_path: Path) -> None:
    write_sweep(tmp_path, held_sweep(tmp_path, "two-drivers", n_trials=3, workers=1))
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    try:
        wait_until(lambda: log_says(tmp_path, "two-drivers", 0, "waits for"), "trial 0 to start", driver)

        second = run_cli(["resume", "two-drivers"], cwd=tmp_path)

        assert second.returncode == 2, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert f"host {socket.gethostname()}, pid {driver.pid}" in line
        assert "already being run" in line
        (tmp_path / "release").touch()
        _, stderr = driver.communicate(timeout=BOUND_SECONDS)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr
    assert [t.state.name for t in load(tmp_path, "two-drivers").trials] == ["COMPLETE"] * 3  # not 3 + more


def test_a_driver_killed_before_a_trials_first_report_leaves_one_closed_run_per_trial(tmp_path: Path) -> None:
    # Trial 1 is held before its first epoch: its MLflow run exists, it has reported nothing.
    write_sweep(tmp_path, held_sweep(tmp_path, "orphans", n_trials=3, workers=1, pause_trials=[1]))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)

    def trial_1_has_a_run() -> bool:
        if not log_says(tmp_path, "orphans", 1, "waits for"):
            return False
        try:
            _, children, _ = mlflow_runs(tracking, "orphans")
        except Exception:  # noqa: BLE001 - the experiment may not be readable yet
            return False
        return any(run.data.tags.get("ftsweep.trial_number") == "1" for run in children)

    wait_until(trial_1_has_a_run, "trial 1's MLflow run while it waits", driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    (tmp_path / "release").touch()

    # The lock died with the driver: resume is not refused.
    result = run_cli(["resume", "orphans"], cwd=tmp_path, timeout=BOUND_SECONDS * 2)
    assert result.returncode == 0, result.stderr

    study = load(tmp_path, "orphans")
    counted = [t for t in study.trials if not t.user_attrs.get("interrupted")]
    assert [t.state.name for t in counted] == ["COMPLETE"] * 3
    parents, children, _ = mlflow_runs(tracking, "orphans")
    assert len(children) == 3, [(r.data.tags.get("ftsweep.trial_number"), r.info.status) for r in children]
    assert all(run.info.status == "FINISHED" for run in children)
    assert {t.user_attrs["mlflow_run_id"] for t in counted} == {run.info.run_id for run in children}
    (parent,) = parents
    assert parent.info.status == "FINISHED"


# -- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs mounted on the study's folder (needs root; skipped elsewhere, never on CI)."""
    folder = study_dir(tmp_path, "full")
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs for the disk-full test: {mounted.stderr.strip()}")
        pytest.skip(f"mounting a small tmpfs needs root (CI runs this test): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Write until the disk under ``folder`` is full (a real ENOSPC)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_stops_cleanly_with_one_line_and_resume_finishes(
    tmp_path: Path, small_disk: Path
) -> None:
    # Trial 0 reports epoch 1, then waits before epoch 2 while the disk fills up.
    write_sweep(
        tmp_path, held_sweep(tmp_path, "full", n_trials=3, workers=1, pause_trials=[0], pause_before_epoch=2)
    )
    driver = start_cli(["run", "sweep.yaml"], cwd=tmp_path)
    wait_until(lambda: log_says(tmp_path, "full", 0, "waits for"), "trial 0 to wait before epoch 2", driver)
    filler = fill(small_disk)
    (tmp_path / "release").touch()
    _, stderr = driver.communicate(timeout=BOUND_SECONDS)

    assert driver.returncode == 2, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    line = last_line(stderr)
    assert (
        line.startswith("ftsweep: error: ")
        and "no space left on device" in line.lower()
        and "ftsweep resume" in line
    )
    assert not [
        t
        for t in load(tmp_path, "full").trials
        if t.state.name == "FAIL" and not t.user_attrs.get("interrupted")
    ]

    filler.unlink()
    result = run_cli(["resume", "full"], cwd=tmp_path, timeout=BOUND_SECONDS * 2)
    assert result.returncode == 0, result.stderr
    counted = [t for t in load(tmp_path, "full").trials if not t.user_attrs.get("interrupted")]
    assert [t.state.name for t in counted] == ["COMPLETE"] * 3
