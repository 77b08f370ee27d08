"""Opening a SQL store that another process is creating at the same moment.

Optuna and MLflow both create their tables (and stamp their alembic version) on first use,
without a lock between processes. Two processes opening one new store at once (a driver and
``ftsweep status``, two sweeps sharing one MLflow database, several workers) make one of them
fail with "table ... already exists", a duplicate key or a unique-constraint error on
``alembic_version``. Once the other creator has committed, opening again finds the schema
complete, so the loser only needs to wait and retry.

On SQLite, retrying is not enough: Python's sqlite3 commits DDL as it goes, so MLflow's
migrations (which rebuild tables through ``_alembic_tmp_*`` copies) interrupted by another
process leave a half-migrated file. A SQLite store is one machine, so its creation is
serialized instead, under an exclusive ``flock`` on the file's folder (no lock file is left
behind); the others wait, then find the schema complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: How often to try before the error is the caller's.
ATTEMPTS = 8
_SIGNS = ("already exists", "duplicate key", "unique constraint failed", "database is locked")


def create_safely(sqlite_file: Path | None, create: Callable[[], T]) -> T:
    """``create()``, which opens (on first use, creates) a store, safe against other processes doing the same.

    Args:
        sqlite_file: the store's SQLite file, or None for a server database.
        create: opens the store.
    """
    if sqlite_file is None:
        return retry_schema_race(create)
    with folder_lock(sqlite_file.resolve().parent):
        return retry_schema_race(create)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` (released when the block ends, or when the process dies).

    A folder that cannot be opened is left unlocked: the store's own error then names the problem.
    """
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def retry_schema_race(create: Callable[[], T]) -> T:
    """``create()``, retried with backoff while it fails because another process creates the same schema."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return create()
        except Exception as error:
            if attempt == ATTEMPTS or not is_schema_race(error):
                raise
            time.sleep(min(0.05 * 2**attempt, 1.0) * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


def is_schema_race(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, is a database saying the schema is being created."""
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.IntegrityError):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError):
            message = str(current.orig or current).lower()
            return any(sign in message for sign in _SIGNS)
        current = current.__cause__ or current.__context__
    return False
