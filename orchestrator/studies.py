"""``ftsweep studies`` and ``ftsweep delete``: the studies of a storage, as things to list and remove.

``studies`` reads Optuna's tables with a few SQL queries (as ``status`` does), so a store of many
large studies lists in a moment. ``delete`` removes a study's MLflow runs, its folders (through
:func:`orchestrator.storage.study_folder`) and then the study itself, in that order, so a delete that
stops halfway can be run again.
"""

from __future__ import annotations

import datetime
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import StorageError
from orchestrator.storage import StoreLocation, mask_text, study_folder


@dataclass
class StudyRow:
    """One line of ``ftsweep studies``."""

    name: str
    done: int
    budget: int | None
    metric: str
    best: float | None
    last_activity: datetime.datetime | None


def _when(value: Any) -> datetime.datetime | None:
    if value is None or isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(str(value))


def list_studies(location: StoreLocation) -> list[StudyRow]:
    """Every study in the store: trials done (complete, pruned, failed; an interrupted one is re-run,
    not counted) against its budget, its best value and when a trial last started or ended.

    Raises:
        StudyNotFound: when the store does not exist or holds no Optuna studies.
        StorageError: when it cannot be read.
    """
    import sqlalchemy
    from sqlalchemy import text

    from orchestrator.errors import StudyNotFound
    from orchestrator.study import null_pool_engine

    hint = "pass --storage with the URL the studies were run with (or set FTSWEEP_STORAGE)"
    if location.sqlite_file is not None and not location.sqlite_file.exists():
        raise StudyNotFound(f"no studies: the storage {location.display} does not exist; {hint}")
    engine = null_pool_engine(location)
    try:
        with engine.connect() as connection:
            if not sqlalchemy.inspect(connection).has_table("studies"):
                raise StudyNotFound(f"no studies: {location.display} holds no Optuna studies; {hint}")
            return _read(connection, text)
    except sqlalchemy.exc.SQLAlchemyError as error:
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise StorageError(f"storage {location.display}: cannot read it ({mask_text(detail)})") from error
    finally:
        engine.dispose()


def _read(connection: Any, text: Any) -> list[StudyRow]:
    from orchestrator.study import WARM_START_ATTR, sweep_records

    # Trials study.warm_start copied from an earlier study never ran here: no budget, not the best.
    own = "trial_id NOT IN (SELECT trial_id FROM trial_user_attributes WHERE key = :w)"
    warm = {"w": WARM_START_ATTR}

    names = dict(connection.execute(text("SELECT study_id, study_name FROM studies")).all())
    directions = {
        study_id: str(direction).upper().endswith("MAXIMIZE")
        for study_id, direction in connection.execute(
            text("SELECT study_id, direction FROM study_directions WHERE objective = 0")
        )
    }
    done: dict[int, int] = {}
    for study_id, n in connection.execute(
        text(
            "SELECT study_id, COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED', 'FAIL') "
            f"AND {own} GROUP BY study_id"
        ),
        warm,
    ):
        done[study_id] = n
    for study_id, n in connection.execute(
        text(
            "SELECT t.study_id, COUNT(*) FROM trials t "
            "JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
            "WHERE t.state = 'FAIL' AND a.key = 'interrupted' AND a.value_json = 'true' "
            "GROUP BY t.study_id"
        )
    ):
        done[study_id] = done.get(study_id, 0) - n
    best = {
        study_id: (high, low)
        for study_id, high, low in connection.execute(
            text(
                "SELECT t.study_id, MAX(v.value), MIN(v.value) FROM trial_values v "
                "JOIN trials t ON t.trial_id = v.trial_id "
                f"WHERE t.state = 'COMPLETE' AND v.objective = 0 AND t.{own} GROUP BY t.study_id"
            ),
            warm,
        )
    }
    last: dict[int, datetime.datetime | None] = {}
    for study_id, started, completed in connection.execute(
        text("SELECT study_id, MAX(datetime_start), MAX(datetime_complete) FROM trials GROUP BY study_id")
    ):
        moments = [moment for moment in (_when(started), _when(completed)) if moment is not None]
        last[study_id] = max(moments, default=None)
    sweeps = {study_id: record.get("sweep", {}) for study_id, record in sweep_records(connection).items()}
    rows = []
    for study_id, name in names.items():
        section = sweeps.get(study_id, {}).get("study", {})
        high, low = best.get(study_id, (None, None))
        rows.append(
            StudyRow(
                name=name,
                done=done.get(study_id, 0),
                budget=section.get("n_trials"),
                metric=_first_metric(section.get("metric", "value")),
                best=high if directions.get(study_id, True) else low,
                last_activity=last.get(study_id),
            )
        )
    return sorted(rows, key=lambda row: row.name)


def _first_metric(metric: Any) -> str:
    """A study of several objectives (``study.metric`` a list) is listed by its first one."""
    return str(metric[0]) if isinstance(metric, list) and metric else str(metric)


def render_studies(rows: list[StudyRow], where: str) -> str:
    """Aligned plain text: name, trials done / budget, best, last activity (UTC)."""
    if not rows:
        return f"no studies in {where}"
    table = [["study", "trials", "best", "last activity (UTC)"]]
    for row in rows:
        table.append(
            [
                row.name,
                f"{row.done}/{row.budget}" if row.budget else str(row.done),
                "" if row.best is None else f"{row.metric} {row.best:.4f}",
                "" if row.last_activity is None else row.last_activity.strftime("%Y-%m-%d %H:%M"),
            ]
        )
    widths = [max(len(cells[i]) for cells in table) for i in range(len(table[0]) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)), cells[-1]]
        ).rstrip()
        for cells in table
    )


@dataclass
class DeletePlan:
    """What ``ftsweep delete`` removes."""

    study_name: str
    n_trials: int
    folders: list[Path]
    tracking: Any  # TrackingLocation | None
    experiment: str | None


def plan_delete(location: StoreLocation, study_name: str) -> DeletePlan:
    """The study, its folders (the work folder, a configured checkpoint folder) and its MLflow store.

    Raises:
        StudyNotFound: when the study is not in the store.
    """
    from orchestrator.study import load_study, open_existing_storage, stored_sweep

    storage = open_existing_storage(location, study_name)
    study = load_study(study_name, storage)
    folders = [location.study_dir(study_name)]
    tracking = experiment = None
    try:
        sweep = stored_sweep(study, location)
    except Exception:  # noqa: BLE001 - a study ftsweep did not make (or cannot read) still goes, without runs
        sweep = None
    if sweep is not None:
        configured = sweep.execution.checkpoint_dir
        if configured:
            path = Path(configured).expanduser()
            folders.append(study_folder(path if path.is_absolute() else sweep.base_dir / path, study_name))
        if sweep.tracking.enabled:
            tracking, experiment = sweep.tracking_location, sweep.experiment_name
    return DeletePlan(study_name, len(study.trials), [f for f in folders if f.exists()], tracking, experiment)


def delete_study(location: StoreLocation, plan: DeletePlan) -> list[str]:
    """Remove the study's MLflow runs, its folders and then the study; returns what was done, a line each."""
    import optuna

    from orchestrator.driver_lock import driver_lock
    from orchestrator.study import open_storage

    done = []
    if plan.tracking is not None and plan.experiment is not None:
        done.extend(_delete_runs(plan.tracking, plan.experiment, plan.study_name))
    # On a SQLite file a running driver holds the study's lock: a study being run is not deleted under it.
    if not location.shared and plan.folders:
        with driver_lock(location.study_dir(plan.study_name), plan.study_name):
            pass
    for folder in plan.folders:
        shutil.rmtree(folder, ignore_errors=True)
        done.append(f"removed {folder}")
    optuna.delete_study(study_name=plan.study_name, storage=open_storage(location))
    done.append(f"deleted study {plan.study_name!r} ({plan.n_trials} trials) from {location.display}")
    return done


def _delete_runs(tracking: Any, experiment: str, study_name: str) -> list[str]:
    """Delete the study's runs (MLflow keeps deleted runs until `mlflow gc`)."""
    if tracking.sqlite_file is not None and not tracking.sqlite_file.exists():
        return []
    from orchestrator.tracking import STUDY_TAG, mlflow_client

    client = mlflow_client(tracking.uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        return []
    quoted = study_name.replace("'", "\\'")
    runs = []
    page_token = None
    while True:
        page = client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{quoted}'",
            max_results=1000,
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            break
    for run in runs:
        client.delete_run(run.info.run_id)
    # The experiment stays: MLflow's restore_experiment (which a new study of the same name would call
    # on a deleted one) brings every run deleted with it back. `mlflow gc` removes deleted runs for good.
    return [f"deleted {len(runs)} MLflow runs of experiment {experiment!r} in {tracking.display}"]
