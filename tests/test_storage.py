"""Opening the SQL stores: several processes may create the same new store at one moment.

Optuna and MLflow create their schema on first use without a lock between processes; these
tests open one new store from several processes at the same instant, as a driver, ``ftsweep
status`` and a second sweep sharing the MLflow database do.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import POSTGRES_URL, require_postgres

from orchestrator.study import open_storage
from orchestrator.tracking import mlflow_client

PROCESSES = 6
#: How long a process may take to start and import what it needs on a loaded machine.
START_SECONDS = 300

_start_together: Any = None  # this process's share of the pool's barrier (set by _join_barrier)


def _join_barrier(barrier: Any) -> None:
    global _start_together
    _start_together = barrier


def _open_at_once(kind: str, url: str) -> str:
    """Wait until every process of the pool is here (imports done), then open ``url``."""
    try:
        _start_together.wait(timeout=START_SECONDS)
        if kind == "optuna":
            open_storage(url).get_all_studies()
        else:
            mlflow_client(url).search_experiments()
    except Exception as error:  # noqa: BLE001 - reported to the test
        return f"{type(error).__name__}: {error}"
    return "ok"


def open_all_at_once(kind: str, url: str) -> list[str]:
    """What each of PROCESSES processes got from opening ``url`` at the same instant.

    The processes are spawned, not forked: this process has threads (pytest-timeout's, the
    stores' own), and a fork copies their locks in whatever state they are. They meet at a
    barrier once started, so the opens coincide however slowly the machine starts them; each
    holds its task at the barrier, so the pool's six tasks run on six different processes.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    with context.Pool(PROCESSES, initializer=_join_barrier, initargs=(barrier,)) as pool:
        return pool.starmap_async(_open_at_once, [(kind, url)] * PROCESSES).get(timeout=2 * START_SECONDS)


@pytest.fixture
def new_postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    require_postgres()
    import sqlalchemy

    database = f"ftsweep_new_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{database}"
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{database}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.timeout(900)  # three rounds of six fresh interpreters, each importing MLflow
@pytest.mark.parametrize("kind", ["optuna", "mlflow"])
def test_processes_creating_one_new_sqlite_store_at_once_all_open_it(tmp_path: Path, kind: str) -> None:
    for round_number in range(3):
        url = f"sqlite:///{tmp_path / f'new-{round_number}.db'}"
        assert open_all_at_once(kind, url) == ["ok"] * PROCESSES


@pytest.mark.postgres
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["optuna", "mlflow"])
def test_processes_creating_one_new_postgresql_store_at_once_all_open_it(
    new_postgres_database: str, kind: str
) -> None:
    assert open_all_at_once(kind, new_postgres_database) == ["ok"] * PROCESSES


def test_a_folder_that_cannot_be_locked_is_left_to_the_stores_own_error(tmp_path: Path) -> None:
    from orchestrator.schema_race import folder_lock

    entered = []
    with folder_lock(tmp_path / "missing"):
        entered.append(True)
    assert entered == [True]
