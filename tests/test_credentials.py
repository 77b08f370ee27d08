"""Issue 12 item 2: a password in a storage or tracking URL is never printed, logged or stored.

A real sweep runs on the real PostgreSQL (trust authentication accepts any password, so the URL can
carry a distinctive one) with its MLflow runs in a PostgreSQL database reached with a password too;
then every output, log file, crash log, MLflow param / tag / artifact and stored attribute is
searched for the password.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import POSTGRES_URL, cli_env, fault_sweep, require_postgres, run_cli, write_sweep

HOST = POSTGRES_URL.split("@", 1)[1].split("/", 1)[0]  # 127.0.0.1:5432
MLFLOW_DATABASE = "ftsweep_credentials_mlflow"


def _secret() -> str:
    # Distinctive (found nowhere by chance), with the " #" that YAML would cut.
    return f"Pw{uuid.uuid4().hex[:12]} #x9"


def _mlflow_database() -> str:
    """A database of its own for MLflow (its alembic_version table would clash with Optuna's)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": MLFLOW_DATABASE}
            ).scalar()
            if not exists:
                connection.execute(sqlalchemy.text(f'CREATE DATABASE "{MLFLOW_DATABASE}"'))
    finally:
        engine.dispose()
    return MLFLOW_DATABASE


def _all_text(tables_of: str) -> str:
    """Every row of every table of a database (on the trusted connection), as text."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(tables_of)
    chunks = []
    try:
        with engine.connect() as connection:
            for table in sqlalchemy.inspect(connection).get_table_names():
                for row in connection.execute(sqlalchemy.text(f'SELECT * FROM "{table}"')):
                    chunks.append(repr(tuple(row)))
    finally:
        engine.dispose()
    return "\n".join(chunks)


def _files_text(folder: Path) -> dict[str, str]:
    files = [path for path in folder.rglob("*") if path.is_file()]
    return {str(path): path.read_bytes().decode("utf-8", "replace") for path in files}


def _assert_nowhere(secret: str, texts: dict[str, str]) -> None:
    leaks = [where for where, text in texts.items() if secret in text]
    assert not leaks, f"the password appears in: {leaks}"


@pytest.mark.slow
def test_a_sweep_on_postgresql_with_passwords_leaks_them_nowhere(tmp_path: Path) -> None:
    require_postgres()
    from mlflow.tracking import MlflowClient

    secret, tracking_secret = _secret(), _secret()
    storage = f"postgresql+psycopg://postgres:{secret}@{HOST}/test"
    tracking = f"postgresql+psycopg://postgres:{tracking_secret}@{HOST}/{_mlflow_database()}"
    name = f"credentials-{uuid.uuid4().hex[:8]}"
    sweep = fault_sweep(name, n_trials=2, workers=1)
    # The tracking password stays out of the file: a ${NAME} reference, expanded from the environment.
    sweep["tracking"] = {
        "mlflow_uri": "postgresql+psycopg://postgres:${FTSWEEP_TEST_MLFLOW_PASSWORD}@"
        f"{HOST}/{MLFLOW_DATABASE}"
    }
    write_sweep(tmp_path, sweep)
    env = {"FTSWEEP_LOG_DIR": str(tmp_path / "crash-logs"), "FTSWEEP_TEST_MLFLOW_PASSWORD": tracking_secret}
    outputs: dict[str, str] = {}

    def cli(label: str, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        result = run_cli(list(args), cwd=tmp_path, **env)
        outputs[f"{label} stdout"], outputs[f"{label} stderr"] = result.stdout, result.stderr
        if expect is not None:
            assert result.returncode == expect, result.stderr
        return result

    run = cli("run", "run", "sweep.yaml", "--storage", storage)
    assert "postgresql+psycopg://postgres:***@" in run.stderr  # the start-up line and the hint show it masked
    cli("status", "status", name, "--storage", storage)
    cli("best", "best", name, "--storage", storage)
    resumed = cli("resume", "resume", name, "--storage", storage, "--n-trials", "3")
    assert "3/3 trials finished" in resumed.stderr
    # Errors: an unreachable store, an unreachable tracking server, a bug (the crash log's command line).
    refused = cli(
        "bad storage",
        "run",
        "sweep.yaml",
        "--storage",
        f"postgresql+psycopg://postgres:{secret}@127.0.0.1:1/test",
        "--set",
        f"study.name={name}-2",
        expect=2,
    )
    assert "cannot open it" in refused.stderr
    # --set reads YAML: quoted, the " #" is kept.
    quoted = json.dumps(f"http://user:{tracking_secret}@127.0.0.1:9")
    cli(
        "bad tracking",
        "run",
        "sweep.yaml",
        "--storage",
        storage,
        "--set",
        f"study.name={name}-3",
        "--set",
        f"tracking.mlflow_uri={quoted}",
        expect=2,
    )
    broken = fault_sweep(f"{name}-bug", n_trials=1, workers=1)
    broken["trainer"]["name"] = "fault_trainer:BrokenCheckTrainer"
    write_sweep(tmp_path, broken, name="broken.yaml")
    cli("bug", "run", "broken.yaml", "--storage", storage, expect=1)
    assert list((tmp_path / "crash-logs").glob("crash-*.log")), "the bug left no crash log"
    crash_log = next((tmp_path / "crash-logs").glob("crash-*.log")).read_text()
    assert "--storage postgresql+psycopg://postgres:***@" in crash_log

    # MLflow: every param, tag and artifact of every run of the study's experiment.
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name(name)
    mlflow_texts: dict[str, str] = {}
    for found in client.search_runs([experiment.experiment_id], max_results=1000):
        run_id = found.info.run_id
        mlflow_texts[f"run {run_id} params/tags"] = repr(found.data.params) + repr(found.data.tags)
        folder = Path(client.download_artifacts(run_id, "", str(tmp_path / "downloaded" / run_id)))
        mlflow_texts.update(_files_text(folder))
    assert any("sweep.yaml" in where for where in mlflow_texts), "the parent run's sweep.yaml was not found"
    sweep_yaml = next(text for where, text in mlflow_texts.items() if where.endswith("sweep.yaml"))
    assert "postgresql+psycopg://postgres:***@" in sweep_yaml
    assert "${FTSWEEP_TEST_MLFLOW_PASSWORD}" in sweep_yaml

    texts = {
        **outputs,
        **_files_text(tmp_path),  # the run folder's logs, checkpoints, caches, crash logs, artifacts
        **mlflow_texts,
        "the study store (every table)": _all_text(POSTGRES_URL),
        "the MLflow store (every table)": _all_text(POSTGRES_URL.rsplit("/", 1)[0] + f"/{MLFLOW_DATABASE}"),
    }
    _assert_nowhere(secret, texts)
    _assert_nowhere(tracking_secret, texts)


def test_a_url_without_password_leaves_pgpassword_to_the_driver(tmp_path: Path) -> None:
    """PGPASSWORD / ~/.pgpass: psycopg reads them when the URL has no password; ftsweep leaves it alone."""
    require_postgres()
    from orchestrator.study import open_storage

    storage = open_storage(POSTGRES_URL)
    try:
        assert storage.engine.url.password is None
    finally:
        storage.engine.dispose()
    result = run_cli(
        ["status", "no-such-study", "--storage", POSTGRES_URL], cwd=tmp_path, PGPASSWORD="from-pgpass"
    )
    assert result.returncode == 2 and "no study 'no-such-study'" in result.stderr
    assert "from-pgpass" not in result.stderr + result.stdout


def _session_command_lines(session: int) -> dict[int, str]:
    lines = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) == session:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
                lines[int(entry.name)] = command.replace("\0", " ")
        except (OSError, ValueError, IndexError):
            continue
    return lines


def _answers(port: int) -> bool:
    """Whether an HTTP server on 127.0.0.1:``port`` answers ``/health``."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ui_prints_and_passes_the_tracking_uri_without_its_password(tmp_path: Path) -> None:
    """``ftsweep ui``: the printed line is masked; MLflow's command lines (``ps``) hold no URI at all."""
    require_postgres()
    import signal
    import time

    secret = _secret()
    tracking = f"postgresql+psycopg://postgres:{secret}@{HOST}/{_mlflow_database()}"
    # From the environment, so that ftsweep's own command line holds no password either.
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port)],
        cwd=tmp_path,
        env=cli_env(MLFLOW_TRACKING_URI=tracking),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        # ftsweep's line comes once the server answers, after the server's own log lines.
        first_line = ""
        for line in process.stdout:
            if line.startswith("MLflow UI:"):
                first_line = line
                break
        assert "postgresql+psycopg://postgres:***@" in first_line and secret not in first_line
        # ftsweep starts the MLflow UI (its child), which starts its server processes: every command line
        # of the session, as any user of the machine sees them with `ps`, until the server answers
        # (all of its processes are up then), however long a loaded machine takes to get there.
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 240
        while process.poll() is None:
            seen.update(_session_command_lines(process.pid))
            if _answers(port):
                seen.update(_session_command_lines(process.pid))
                break
            assert time.monotonic() < deadline, f"the MLflow UI did not answer within 240 s; seen: {seen}"
            time.sleep(0.2)
        assert any("bin/mlflow ui" in line for line in seen.values()), seen
        assert not [line for line in seen.values() if secret in line or "postgresql" in line], seen
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
