"""The one module that reaches into Optuna's and MLflow's private attributes.

ftsweep drives Optuna with ask/tell and keeps its own heartbeats (Optuna's run only inside
``optimize()``, optuna#3293), so it needs a few things Optuna does not export: the study's
storage and id (and through them the study's system attributes, where the sweep record is kept,
and the removal of a user attribute), a trial's id, the RDB storage under Optuna's cache, and the
stale-heartbeat query. It also tunes MLflow's SQLite engine (write-ahead logging), which MLflow keeps on its
tracking store. Nothing else in ftsweep names a private attribute of either library: when an
upgrade moves one, this module (and ``tests/test_store_adapter.py``) is the one place to fix.

Tested against **Optuna 5.1.0** and **MLflow 3.17.2** (SQLAlchemy 2.1.9). On first use each
function checks that the attributes it needs are where these versions keep them, and raises
:class:`StoreAdapterError` naming the attribute and the installed version otherwise: a moved
attribute stops the sweep with that message instead of silently mis-resuming (e.g. never
finding an orphaned trial).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

#: The versions this module was written and tested against.
TESTED_OPTUNA = "5.1.0"
TESTED_MLFLOW = "3.17.2"

__all__ = [
    "TESTED_MLFLOW",
    "TESTED_OPTUNA",
    "StoreAdapterError",
    "check_mlflow",
    "check_optuna",
    "delete_study_user_attr",
    "mlflow_engine",
    "move_artifact_locations",
    "rdb_storage",
    "record_heartbeats",
    "set_study_system_attr",
    "stale_trial_ids",
    "study_id",
    "stored_trial",
    "study_storage",
    "study_system_attrs",
    "trial_by_number",
    "trial_id",
]


class StoreAdapterError(RuntimeError):
    """An Optuna or MLflow private attribute ftsweep relies on is not where the tested version keeps it.

    Not a user's mistake: the message names the attribute, the installed version and the tested one.
    """


def _installed(package: str) -> str:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # noqa: BLE001 - a source tree without metadata
        return "unknown"


def _missing(package: str, tested: str, attribute: str) -> StoreAdapterError:
    return StoreAdapterError(
        f"{package} {_installed(package)} has no {attribute} (ftsweep's store adapter is tested against "
        f"{package} "
        f"{tested}); install {package}=={tested} or update orchestrator/store_adapter.py"
    )


def _require(obj: Any, attribute: str, package: str, tested: str, where: str) -> Any:
    try:
        found = getattr(obj, attribute)
    except AttributeError:
        raise _missing(package, tested, f"{where}.{attribute}") from None
    if getattr(found, "__isabstractmethod__", False):  # only a base class's declaration is left
        raise _missing(package, tested, f"{where}.{attribute} (an implementation)")
    return found


# -- Optuna --
def study_storage(study: optuna.Study) -> Any:
    """The study's storage object (Optuna's cache over the RDB storage): ``study._storage``."""
    return _require(study, "_storage", "optuna", TESTED_OPTUNA, "Study")


def study_id(study: optuna.Study) -> int:
    """The study's id in the storage: ``study._study_id``."""
    return int(_require(study, "_study_id", "optuna", TESTED_OPTUNA, "Study"))


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in the storage (not its number): ``trial._trial_id``."""
    return int(_require(trial, "_trial_id", "optuna", TESTED_OPTUNA, type(trial).__name__))


def trial_by_number(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The stored state of the study's trial ``number``, read without loading every trial."""
    storage = study_storage(study)
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id(study), number))


def stored_trial(
    study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial
) -> optuna.trial.FrozenTrial:
    """``trial`` as the storage holds it now (its state and attributes after ``tell``)."""
    return study_storage(study).get_trial(trial_id(trial))


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attributes, read through its storage (Optuna 5 has no ``Study.system_attrs``)."""
    return dict(study_storage(study).get_study_system_attrs(study_id(study)))


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    """Set one system attribute of the study (a JSON value), through its storage."""
    study_storage(study).set_study_system_attr(study_id(study), key, value)


def delete_study_user_attr(study: optuna.Study, key: str) -> None:
    """Remove one user attribute of the study.

    Optuna has no call for it, so this is one ``DELETE`` on the tested version's
    ``study_user_attributes`` table (Optuna keeps no copy of a study's user attributes in its cache).
    """
    import sqlalchemy

    engine = _require(rdb_storage(study), "engine", "optuna", TESTED_OPTUNA, "RDBStorage")
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text("DELETE FROM study_user_attributes WHERE study_id = :s AND key = :k"),
            {"s": study_id(study), "k": key},
        )


def rdb_storage(storage_or_study: Any) -> Any:
    """The ``RDBStorage`` under Optuna's cache (``storage._backend``): heartbeats and locks need it.

    Accepts a study, the study's storage, or an ``RDBStorage`` itself.
    """
    import optuna

    storage = storage_or_study
    if isinstance(storage, optuna.Study):
        storage = study_storage(storage)
    if isinstance(storage, optuna.storages.RDBStorage):
        return storage
    backend = _require(storage, "_backend", "optuna", TESTED_OPTUNA, type(storage).__name__)
    if not isinstance(backend, optuna.storages.RDBStorage):
        raise StoreAdapterError(
            f"optuna {_installed('optuna')}: {type(storage).__name__}._backend is a "
            f"{type(backend).__name__}, "
            "not an "
            f"RDBStorage (ftsweep's store adapter is tested against optuna {TESTED_OPTUNA})"
        )
    return backend


def record_heartbeats(storage_or_study: Any, trial_ids: list[int]) -> None:
    """Renew the heartbeat row of each trial (Optuna's ``trial_heartbeats`` table)."""
    storage = rdb_storage(storage_or_study)
    for identifier in trial_ids:
        storage.record_heartbeat(identifier)


def stale_trial_ids(
    storage_or_study: Any, study_identifier: int, heartbeat_seconds: int, grace_seconds: float
) -> set[int]:
    """RUNNING trials whose heartbeat is older than ``grace_seconds``, by the database's clock.

    Optuna's query (``RDBStorage._get_stale_trial_ids``) reads the storage's
    ``heartbeat_interval`` and ``grace_period``, which ftsweep's storages leave unset (ftsweep
    keeps its own heartbeat); they are set for the query and restored after.
    """
    storage = rdb_storage(storage_or_study)
    query = _require(storage, "_get_stale_trial_ids", "optuna", TESTED_OPTUNA, "RDBStorage")
    for attribute in ("heartbeat_interval", "grace_period"):
        _require(storage, attribute, "optuna", TESTED_OPTUNA, "RDBStorage")
    saved = storage.heartbeat_interval, storage.grace_period
    storage.heartbeat_interval, storage.grace_period = int(heartbeat_seconds), int(grace_seconds)
    try:
        return set(query(study_identifier))
    finally:
        storage.heartbeat_interval, storage.grace_period = saved


def check_optuna() -> None:
    """Raise :class:`StoreAdapterError` unless every Optuna attribute this module uses is where it was tested.

    Checks the classes, so it needs no store; the instance attributes (``Study._storage``,
    ``_study_id``, ``Trial._trial_id``) are checked by each function as it reads them.
    """
    import optuna

    _require(optuna.storages.RDBStorage, "_get_stale_trial_ids", "optuna", TESTED_OPTUNA, "RDBStorage")
    _require(optuna.storages.RDBStorage, "record_heartbeat", "optuna", TESTED_OPTUNA, "RDBStorage")


# -- MLflow --
def mlflow_engine(client: Any) -> Any:
    """The SQLAlchemy engine of an ``MlflowClient`` on a database (``client._tracking_client.store.engine``).

    Returns None for a store without one (an HTTP tracking server, a file store).
    """
    tracking = _require(client, "_tracking_client", "mlflow", TESTED_MLFLOW, "MlflowClient")
    store = _require(tracking, "store", "mlflow", TESTED_MLFLOW, "TrackingServiceClient")
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if isinstance(store, SqlAlchemyStore):
        return _require(store, "engine", "mlflow", TESTED_MLFLOW, "SqlAlchemyStore")
    return None


def move_artifact_locations(client: Any, old_root: Path, new_root: Path) -> int:
    """Point the artifact locations under ``old_root`` of a SQLite MLflow store at ``new_root`` instead.

    MLflow keeps each experiment's ``artifact_location`` and each run's ``artifact_uri`` as
    absolute ``file://`` URIs in its tables, with no API to change them; a store that was copied
    or moved with its ``mlartifacts`` folder would go on writing artifacts into the old folder.

    Returns:
        how many rows were changed.
    """
    import sqlalchemy

    engine = mlflow_engine(client)
    if engine is None or engine.dialect.name != "sqlite":
        return 0
    old, new = old_root.as_uri().rstrip("/") + "/", new_root.as_uri().rstrip("/") + "/"
    changed = 0
    with engine.begin() as connection:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            result = connection.execute(
                sqlalchemy.text(
                    f"UPDATE {table} SET {column} = :new || substr({column}, :start) "  # noqa: S608 - fixed names
                    f"WHERE substr({column}, 1, :length) = :old"
                ),
                {"new": new, "old": old, "start": len(old) + 1, "length": len(old)},
            )
            changed += result.rowcount or 0
    return changed


def check_mlflow(client: Any) -> None:
    """Raise :class:`StoreAdapterError` unless the MLflow attributes used here are where they were tested."""
    mlflow_engine(client)
