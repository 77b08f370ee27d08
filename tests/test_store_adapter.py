"""orchestrator/store_adapter.py against a real SQLite study store and a real MLflow store.

Every function of the adapter runs here on the installed Optuna and MLflow; when an upgrade moves
one of the private attributes it reads, these tests fail with the adapter's message (naming the
attribute and the versions), not with a resume that silently finds no orphans.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import optuna
import pytest

from orchestrator import store_adapter
from orchestrator.store_adapter import (
    TESTED_MLFLOW,
    TESTED_OPTUNA,
    StoreAdapterError,
    check_mlflow,
    check_optuna,
    mlflow_engine,
    move_artifact_locations,
    rdb_storage,
    record_heartbeats,
    stale_trial_ids,
    stored_trial,
    study_id,
    study_storage,
    trial_by_number,
    trial_id,
)
from orchestrator.study import open_storage


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    return optuna.create_study(study_name="adapter", storage=storage)


def test_the_versions_named_are_the_versions_installed() -> None:
    """The adapter's docstring names what it was tested against; an upgrade re-runs these and updates it."""
    assert importlib.metadata.version("optuna") == TESTED_OPTUNA, (
        f"optuna {importlib.metadata.version('optuna')} is installed; orchestrator/store_adapter.py is "
        "tested "
        "against "
        f"{TESTED_OPTUNA}: run tests/test_store_adapter.py and update TESTED_OPTUNA and the docstring"
    )
    assert importlib.metadata.version("mlflow") == TESTED_MLFLOW, (
        f"mlflow {importlib.metadata.version('mlflow')} is installed; orchestrator/store_adapter.py is "
        "tested "
        "against "
        f"{TESTED_MLFLOW}: run tests/test_store_adapter.py and update TESTED_MLFLOW and the docstring"
    )
    assert f"Optuna {TESTED_OPTUNA}" in (store_adapter.__doc__ or "")
    assert f"MLflow {TESTED_MLFLOW}" in (store_adapter.__doc__ or "")


def test_study_and_trial_ids_and_storages(study: optuna.Study) -> None:
    check_optuna()
    trial = study.ask()
    frozen = study.trials[0]
    assert study_id(study) == study_storage(study).get_study_id_from_name("adapter")
    assert trial_id(trial) == trial_id(frozen)
    assert isinstance(rdb_storage(study), optuna.storages.RDBStorage)
    assert rdb_storage(study_storage(study)) is rdb_storage(study)
    assert rdb_storage(rdb_storage(study)) is rdb_storage(study)
    assert trial_by_number(study, 0).number == 0
    study.tell(trial, 1.0)
    assert stored_trial(study, trial).state == optuna.trial.TrialState.COMPLETE


def test_heartbeats_and_stale_trials_by_the_database_clock(study: optuna.Study) -> None:
    storage = rdb_storage(study)
    fresh, stale = study.ask(), study.ask()
    record_heartbeats(study, [trial_id(fresh), trial_id(stale)])
    assert stale_trial_ids(study, study_id(study), heartbeat_seconds=15, grace_seconds=90) == set()
    # Age one heartbeat in the database itself: stale is decided by the database's clock.
    import sqlalchemy

    with storage.engine.begin() as connection:
        connection.execute(
            sqlalchemy.text(
                "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour') WHERE trial_id = :id"
            ),
            {"id": trial_id(stale)},
        )
    assert stale_trial_ids(study, study_id(study), heartbeat_seconds=15, grace_seconds=90) == {
        trial_id(stale)
    }
    # The storage's own settings are restored: ftsweep's storages keep Optuna's heartbeat thread off.
    assert storage.heartbeat_interval is None and storage.grace_period is None


def test_the_mlflow_engine_and_moving_artifact_locations(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    old_root, new_root = tmp_path / "orig", tmp_path / "copy"
    old_root.mkdir()
    client = MlflowClient(tracking_uri=f"sqlite:///{old_root / 'mlflow.db'}")
    check_mlflow(client)
    experiment = client.create_experiment("e", artifact_location=(old_root / "mlartifacts" / "e").as_uri())
    run = client.create_run(experiment)
    assert mlflow_engine(client).dialect.name == "sqlite"
    assert move_artifact_locations(client, old_root, new_root) == 2
    assert client.get_experiment(experiment).artifact_location.startswith((new_root / "mlartifacts").as_uri())
    assert client.get_run(run.info.run_id).info.artifact_uri.startswith((new_root / "mlartifacts").as_uri())
    # An HTTP tracking client has no engine: None, not an error.
    assert mlflow_engine(MlflowClient(tracking_uri="http://127.0.0.1:9")) is None


def test_a_moved_optuna_attribute_fails_loudly_naming_it_and_the_versions(
    study: optuna.Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(optuna.storages.RDBStorage, "_get_stale_trial_ids")
    with pytest.raises(StoreAdapterError, match=r"RDBStorage\._get_stale_trial_ids") as raised:
        check_optuna()
    assert f"optuna {TESTED_OPTUNA}" in str(raised.value)
    with pytest.raises(StoreAdapterError, match=r"_get_stale_trial_ids"):
        stale_trial_ids(study, study_id(study), heartbeat_seconds=15, grace_seconds=90)


def test_a_moved_trial_id_fails_loudly(study: optuna.Study) -> None:
    class MovedTrial:
        """A trial of a future Optuna that keeps its id elsewhere."""

    with pytest.raises(StoreAdapterError, match=r"MovedTrial\._trial_id"):
        trial_id(MovedTrial())  # type: ignore[arg-type]


def test_a_moved_mlflow_attribute_fails_loudly(tmp_path: Path) -> None:
    class MovedClient:
        """An MlflowClient of a future MLflow without ``_tracking_client``."""

    with pytest.raises(StoreAdapterError, match=r"MlflowClient\._tracking_client") as raised:
        check_mlflow(MovedClient())
    assert f"mlflow {TESTED_MLFLOW}" in str(raised.value)
