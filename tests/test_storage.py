"""Opening the SQL store: several processes may create the same new store at one moment."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from pathlib import Path

import pytest
from conftest import POSTGRES_URL, require_postgres

from orchestrator.study import open_storage

PROCESSES = 6


def _open_at(url: str, start: float) -> str:
    while time.time() < start:
        pass
    try:
        open_storage(url)
    except Exception as error:  # noqa: BLE001 - reported to the test
        return f"{type(error).__name__}: {error}"
    return "ok"


def open_all_at_once(url: str) -> list[str]:
    """What each of PROCESSES processes got from opening ``url`` at the same instant."""
    start = time.time() + 1.0
    with multiprocessing.get_context("fork").Pool(PROCESSES) as pool:
        return pool.starmap(_open_at, [(url, start)] * PROCESSES)


def test_processes_creating_one_new_sqlite_store_at_once_all_open_it(tmp_path: Path) -> None:
    for round_number in range(3):
        url = f"sqlite:///{tmp_path / f'new-{round_number}.db'}"
        assert open_all_at_once(url) == ["ok"] * PROCESSES
        assert open_storage(url).get_all_studies() == []


@pytest.mark.postgres
def test_processes_creating_one_new_postgresql_store_at_once_all_open_it() -> None:
    require_postgres()
    import sqlalchemy

    database = f"ftsweep_new_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{database}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
    try:
        assert open_all_at_once(url) == ["ok"] * PROCESSES
        assert open_storage(url).get_all_studies() == []
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{database}" WITH (FORCE)'))
        admin.dispose()
