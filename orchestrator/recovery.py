"""Finding trials a dead process left behind, re-running them, and keeping the budget exact.

Optuna's heartbeat runs only inside ``optimize()`` (optuna#3293); ftsweep drives trials with
ask/tell, so it keeps its own: the process that owns a trial renews the trial's row in
Optuna's ``trial_heartbeats`` table every :data:`HEARTBEAT_SECONDS`, and tags the trial with
its owner (host and pid). A RUNNING trial is an orphan when its owner is a dead process on
this host, or when its heartbeat is older than :data:`GRACE_SECONDS`.

An orphan, or a trial stopped by Ctrl-C / SIGTERM, is failed as *interrupted* (it does not
count toward the budget) and re-queued with the same parameters; the re-run takes over its
checkpoint and its MLflow run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.store_adapter import rdb_storage, study_id, study_storage, trial_id
from orchestrator.study import INTERRUPTED_ATTR, REASON_ATTR, RERUN_OF_ATTR, RUN_ID_ATTR

if TYPE_CHECKING:
    import optuna

HEARTBEAT_SECONDS = 15
GRACE_SECONDS = 90
OWNER_ATTR = "owner"
ATTEMPT_ATTR = "attempt"
#: A trial interrupted this many times (e.g. killed by the OOM killer each time) fails instead.
MAX_ATTEMPTS = 3


def attempt_of(trial: Any) -> int:
    return int(trial.user_attrs.get(ATTEMPT_ATTR, 1))


def owner_id() -> str:
    """This process, as ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_is_dead(owner: str | None) -> bool:
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stale_trial_ids(storage: Any, study_identifier: int, grace_seconds: float = GRACE_SECONDS) -> set[int]:
    """RUNNING trials whose heartbeat is older than ``grace_seconds`` (by the database's clock)."""
    from orchestrator import store_adapter

    return store_adapter.stale_trial_ids(storage, study_identifier, HEARTBEAT_SECONDS, grace_seconds)


def find_orphans(study: optuna.Study, grace_seconds: float = GRACE_SECONDS) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials whose process is gone (dead owner on this host, or a stale heartbeat)."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    stale = stale_trial_ids(study_storage(study), study_id(study), grace_seconds)
    return [
        trial
        for trial in running
        if trial_id(trial) in stale
        or _owner_is_dead(trial.user_attrs.get(OWNER_ATTR))
        or OWNER_ATTR not in trial.user_attrs
    ]


def mark_interrupted(storage: Any, trial: optuna.trial.FrozenTrial, reason: str) -> None:
    from optuna.trial import TrialState

    identifier = trial_id(trial)
    storage.set_trial_user_attr(identifier, INTERRUPTED_ATTR, True)
    storage.set_trial_user_attr(identifier, REASON_ATTR, f"interrupted: {reason}")
    storage.set_trial_state_values(identifier, TrialState.FAIL)


def queue_rerun(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a trial with the same parameters that continues ``trial`` (its checkpoint, its MLflow run)."""
    attrs: dict[str, Any] = {RERUN_OF_ATTR: trial.number, ATTEMPT_ATTR: attempt_of(trial) + 1}
    if trial.user_attrs.get(RUN_ID_ATTR):
        attrs[RUN_ID_ATTR] = trial.user_attrs[RUN_ID_ATTR]
    from orchestrator.first_trials import PRESET_ATTR, PRESET_DEFAULTS_ATTR

    for key in (PRESET_ATTR, PRESET_DEFAULTS_ATTR):  # a preset re-run keeps the defaults it ran with
        if key in trial.user_attrs:
            attrs[key] = trial.user_attrs[key]
    study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)


def recover(study: optuna.Study, grace_seconds: float = GRACE_SECONDS) -> list[int]:
    """Fail the orphans as interrupted and queue one re-run for every interrupted trial without one.

    Returns:
        the numbers of the trials queued for a re-run now.
    """
    from optuna.trial import TrialState

    for orphan in find_orphans(study, grace_seconds):
        mark_interrupted(study_storage(study), orphan, "its process died while it ran")
    trials = study.get_trials(deepcopy=False)
    already = {t.user_attrs.get(RERUN_OF_ATTR) for t in trials}
    queued = []
    for trial in trials:
        if (
            trial.state == TrialState.FAIL
            and trial.user_attrs.get(INTERRUPTED_ATTR)
            and trial.number not in already
        ):
            queue_rerun(study, trial)
            queued.append(trial.number)
    return queued


@contextlib.contextmanager
def budget_lock(storage: Any, study_name: str) -> Iterator[None]:
    """Serialise "count the trials, then ask for one" across processes sharing a server database.

    PostgreSQL: a session advisory lock; MySQL: GET_LOCK. SQLite has one writer (the driver),
    so nothing to do.
    """
    engine = rdb_storage(storage).engine
    dialect = engine.dialect.name
    if dialect not in ("postgresql", "mysql"):
        yield
        return
    import sqlalchemy

    key = zlib.crc32(f"ftsweep:{study_name}".encode())
    with engine.connect() as connection:
        if dialect == "postgresql":
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        else:
            connection.execute(sqlalchemy.text("SELECT GET_LOCK(:key, 600)"), {"key": str(key)})
        try:
            yield
        finally:
            if dialect == "postgresql":
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            else:
                connection.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:key)"), {"key": str(key)})
            connection.commit()
