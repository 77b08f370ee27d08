"""The CLI's promises: exit codes, one-line errors for a user's mistakes, a log file for bugs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import cli_env, fault_sweep, run_cli, write_sweep


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_lists_the_verbs(tmp_path: Path) -> None:
    result = run_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    for verb in ("run", "resume", "status", "best", "ui"):
        assert verb in result.stdout


def test_a_missing_sweep_file(tmp_path: Path) -> None:
    assert_user_error(run_cli(["run", "nope.yaml"], cwd=tmp_path), "no such sweep file", "nope.yaml")


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text("study:\n  name: [unclosed\n")
    assert_user_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path), "sweep.yaml", "line", "invalid YAML")


def test_unknown_keys_and_bad_values_are_listed_together(tmp_path: Path) -> None:
    sweep = fault_sweep("bad")
    sweep["study"]["direction"] = "up"
    sweep["execution"]["wrokers"] = 2
    write_sweep(tmp_path, sweep)
    assert_user_error(
        run_cli(["run", "sweep.yaml"], cwd=tmp_path),
        "sweep.yaml",
        "study.direction",
        "'maximize' or 'minimize'",
        "execution.wrokers: unknown key; allowed keys: backend, workers",
    )


def test_a_search_space_parameter_the_trainer_does_not_take(tmp_path: Path) -> None:
    sweep = fault_sweep("space")
    sweep["search_space"]["momentum"] = {"type": "float", "low": 0.1, "high": 0.9}
    write_sweep(tmp_path, sweep)
    assert_user_error(
        run_cli(["run", "sweep.yaml"], cwd=tmp_path), "search_space.momentum", "allowed: x, epochs"
    )


def test_a_metric_the_trainer_does_not_report(tmp_path: Path) -> None:
    sweep = fault_sweep("metric")
    sweep["study"]["metric"] = "val_f1"
    write_sweep(tmp_path, sweep)
    assert_user_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path), "study.metric", "allowed: score")


def test_an_unknown_trainer(tmp_path: Path) -> None:
    sweep = fault_sweep("trainer")
    sweep["trainer"]["name"] = "object-detection"
    write_sweep(tmp_path, sweep)
    assert_user_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path), "trainer.name", "text-classification")


def test_an_unreachable_storage_is_a_user_error_and_records_nothing(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("down"))
    result = run_cli(
        ["run", "sweep.yaml", "--storage", "postgresql+psycopg://postgres@127.0.0.1:1/test"], cwd=tmp_path
    )
    assert_user_error(result, "storage postgresql+psycopg://postgres@127.0.0.1:1/test", "cannot open it")
    assert not (tmp_path / "mlflow.db").exists()


def test_set_overrides_reach_the_study(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("override", n_trials=5, workers=1))
    result = run_cli(
        ["run", "sweep.yaml", "--set", "study.n_trials=1", "--set", "trainer.epochs=2"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    import optuna

    study = optuna.load_study(study_name="override", storage=f"sqlite:///{tmp_path / 'ftsweep.db'}")
    assert len(study.trials) == 1 and sorted(study.trials[0].intermediate_values) == [1, 2]


def test_an_unknown_study_lists_the_ones_there(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("present", n_trials=1, workers=1))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    assert_user_error(
        run_cli(["status", "absent"], cwd=tmp_path), "no study 'absent'", "studies there: present"
    )


@pytest.mark.parametrize("verb", ["status", "best", "resume", "ui"])
def test_reading_a_study_from_a_storage_file_that_does_not_exist_creates_nothing(
    tmp_path: Path, verb: str
) -> None:
    result = run_cli([verb, "mystudy", "--storage", "sqlite:///typo.db"], cwd=tmp_path)
    assert_user_error(result, "no study 'mystudy'", "typo.db does not exist", "--storage")
    assert list(tmp_path.iterdir()) == []


def test_reading_a_study_from_a_database_that_is_not_a_study_store_leaves_it_as_it_was(
    tmp_path: Path,
) -> None:
    import sqlite3

    other = tmp_path / "mlflow.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE experiments (id INTEGER)")
    for verb in ("status", "best", "resume"):
        result = run_cli([verb, "mystudy", "--storage", "sqlite:///mlflow.db"], cwd=tmp_path)
        assert_user_error(result, "no study 'mystudy'", "holds no Optuna studies")
    with sqlite3.connect(other) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert tables == ["experiments"]


def test_a_bug_exits_1_and_keeps_the_traceback_in_a_log_file(tmp_path: Path) -> None:
    sweep = fault_sweep("bug")
    sweep["trainer"]["name"] = "fault_trainer:BrokenCheckTrainer"
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path, FTSWEEP_LOG_DIR=str(tmp_path / "logs"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    logs = list((tmp_path / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in result.stderr
    assert "ZeroDivisionError: a bug in the trainer's own code" in logs[0].read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_the_studys_tracking_store(tmp_path: Path) -> None:
    write_sweep(tmp_path, fault_sweep("shown", n_trials=1, workers=1))
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "shown", "--port", str(port)],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the UI starts a server process of its own: stop the whole group
    )
    try:
        assert process.stdout is not None
        # ftsweep prints its line once the server answers (after the server's own log lines): the first
        # request to it works, no retry needed.
        first_line = ""
        for line in process.stdout:
            if line.startswith("MLflow UI:"):
                first_line = line
                break
        assert "mlflow.db" in first_line, first_line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:
            assert response.status == 200
        from mlflow.tracking import MlflowClient

        experiment = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("shown")
        # The link opens the study's runs table, not MLflow 3's GenAI landing page.
        assert f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs " in first_line
        body = (
            urllib.request.urlopen(
                f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=shown",
                timeout=60,
            )
            .read()
            .decode()
        )
        assert '"name": "shown"' in body or '"name":"shown"' in body
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
