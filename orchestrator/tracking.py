"""MLflow tracking: one experiment per study, a parent run for the study, a child run per trial.

Every MLflow call goes through one background thread, in order, so that the driver never
waits on the tracking store while it schedules trials; params, tags and each epoch's
metrics travel in one ``log_batch`` call (13 times cheaper per value than ``log_metric``
on SQLite). :meth:`StudyTracker.close` waits until everything is written.

Cross references: a trial's run id is a user attribute of the Optuna trial
(``mlflow_run_id``), and each run carries the tags ``ftsweep.study`` and
``ftsweep.trial_number``, so either leads to the other.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from orchestrator.config import sqlite_path
from orchestrator.errors import StorageError

log = logging.getLogger(__name__)

STUDY_TAG = "ftsweep.study"
ROLE_TAG = "ftsweep.role"
TRIAL_TAG = "ftsweep.trial_number"
STATE_TAG = "ftsweep.state"
REASON_TAG = "ftsweep.reason"
DEVICE_TAG = "ftsweep.device"
MAX_PARAM_LENGTH = 500

_MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite tracking store go next to its file, not into the working directory."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    return (path.resolve().parent / "mlartifacts" / experiment).as_uri()


class StudyTracker:
    """MLflow runs for one study.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``).
        experiment: the experiment's name (default the study's name).
        study_name: the study's name, tagged on every run.
    """

    def __init__(self, tracking_uri: str, experiment: str, study_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.study_name = study_name
        self.parent_run_id: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftsweep-mlflow")
        self._client: Any = None
        self._experiment_id: str | None = None
        self._errors: list[str] = []

    # -- set-up (synchronous: a wrong URI must stop the sweep before any trial) --
    def open(self) -> None:
        """Connect, create the experiment when needed.

        Raises:
            StorageError: when the tracking store cannot be used.
        """
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        path = sqlite_path(self.tracking_uri)
        if path is not None and not path.resolve().parent.exists():
            raise StorageError(f"tracking.mlflow_uri {self.tracking_uri}: the folder {path.parent} does not exist")
        try:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            if path is not None:
                _tune_store(self._client)
            experiment = self._client.get_experiment_by_name(self.experiment)
            if experiment is None:
                self._experiment_id = self._client.create_experiment(
                    self.experiment,
                    artifact_location=default_artifact_location(self.tracking_uri, self.experiment),
                    tags={STUDY_TAG: self.study_name},
                )
            else:
                if experiment.lifecycle_stage == "deleted":
                    self._client.restore_experiment(experiment.experiment_id)
                self._experiment_id = experiment.experiment_id
        except Exception as error:  # noqa: BLE001 - MLflow raises many kinds; translate them once, here
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise StorageError(f"tracking.mlflow_uri {self.tracking_uri}: cannot use it ({detail})") from error

    def start_study(self, *, params: Mapping[str, Any], artifacts: Mapping[str, str], tags: Mapping[str, str]) -> str:
        """The study's parent run: the existing one when the study is resumed, else a new one."""
        client = self._client
        existing = client.search_runs(
            [self._experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{_quote(self.study_name)}' and tags.`{ROLE_TAG}` = 'study'",
            max_results=1,
        )
        if existing:
            run_id = existing[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(
                self._experiment_id,
                run_name=self.study_name,
                tags={STUDY_TAG: self.study_name, ROLE_TAG: "study", **tags},
            )
            run_id = run.info.run_id
            client.log_batch(run_id, params=_params(params))
            for name, text in artifacts.items():
                client.log_text(run_id, text, name)
        self.parent_run_id = run_id
        return run_id

    # -- per trial (queued) --
    def start_trial(self, number: int, params: Mapping[str, Any], device: str, run_id: str | None = None) -> Future[str]:
        """Open the trial's child run (or reopen ``run_id`` for a re-run); the future gives its id."""

        def work() -> str:
            client = self._client
            if run_id is not None:
                from mlflow.entities import RunTag

                previous = client.get_run(run_id).data.tags.get(TRIAL_TAG, "")
                client.update_run(run_id, status="RUNNING")
                client.log_batch(run_id, tags=[
                    RunTag(STATE_TAG, "RUNNING"),
                    RunTag(TRIAL_TAG, str(number)),
                    RunTag("ftsweep.earlier_trial_numbers", previous),
                    RunTag(DEVICE_TAG, device),
                ])
                return run_id
            run = client.create_run(
                self._experiment_id,
                run_name=f"trial-{number}",
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    STUDY_TAG: self.study_name,
                    ROLE_TAG: "trial",
                    TRIAL_TAG: str(number),
                    DEVICE_TAG: device,
                    STATE_TAG: "RUNNING",
                },
            )
            client.log_batch(run.info.run_id, params=_params(params))
            return run.info.run_id

        return self._executor.submit(work)

    def set_device(self, run: Future[str], device: str) -> None:
        self._submit(lambda: self._client.set_tag(run.result(), DEVICE_TAG, device))

    def log_epoch(self, run: Future[str], epoch: int, metrics: Mapping[str, float]) -> None:
        """One epoch's metrics, step = epoch, in one call."""
        timestamp = _now_ms()
        self._submit(lambda: self._client.log_batch(run.result(), metrics=_metrics(metrics, epoch, timestamp)))

    def end_trial(
        self,
        run: Future[str],
        state: str,
        *,
        value: float | None = None,
        reason: str | None = None,
        summary: Mapping[str, float] | None = None,
        traceback_text: str | None = None,
        artifacts: Mapping[str, Path] | None = None,
    ) -> None:
        """Close the child run with the trial's final state (COMPLETE, PRUNED, FAIL, INTERRUPTED)."""
        timestamp = _now_ms()

        def work() -> None:
            client, run_id = self._client, run.result()
            from mlflow.entities import RunTag

            tags = [RunTag(STATE_TAG, state)]
            if reason:
                tags.append(RunTag(REASON_TAG, reason[:5000]))
            metrics = dict(summary or {})
            if value is not None:
                metrics["objective"] = value
            client.log_batch(run_id, metrics=_metrics(metrics, None, timestamp, prefix="final_"), tags=tags)
            if traceback_text:
                client.log_text(run_id, traceback_text, "traceback.txt")
            for name, path in (artifacts or {}).items():
                client.log_artifact(run_id, str(path), name)
            client.set_terminated(run_id, status=_MLFLOW_STATUS.get(state, "FINISHED"), end_time=timestamp)

        self._submit(work)

    def set_best(self, number: int, value: float, params: Mapping[str, Any]) -> None:
        """Keep the parent run's best trial, value and parameters up to date."""
        timestamp = _now_ms()

        def work() -> None:
            from mlflow.entities import Metric, RunTag

            self._client.log_batch(
                self.parent_run_id,
                metrics=[Metric("best_value", float(value), timestamp, number)],
                tags=[RunTag("best_trial", str(number)), RunTag("best_params", json.dumps(dict(params), default=str)[:5000])],
            )

        self._submit(work)

    def log_study_metrics(self, metrics: Mapping[str, float]) -> None:
        timestamp = _now_ms()
        self._submit(lambda: self._client.log_batch(self.parent_run_id, metrics=_metrics(metrics, None, timestamp)))

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None:
        self._submit(lambda: self._client.log_artifacts(run_id, str(folder), artifact_path))

    def close(self, status: str | None = "FINISHED") -> list[str]:
        """Write everything queued, mark the parent run (unless ``status`` is None), return the errors met."""
        if status is not None and self.parent_run_id is not None and self._client is not None:
            self._submit(lambda: self._client.set_terminated(self.parent_run_id, status=status))
        self._executor.shutdown(wait=True)
        return list(self._errors)

    def _submit(self, work: Any) -> None:
        def guarded() -> None:
            try:
                work()
            except Exception as error:  # noqa: BLE001 - tracking must never stop the study
                message = f"MLflow: {type(error).__name__}: {error}"
                log.warning(message)
                self._errors.append(message)

        self._executor.submit(guarded)


def _tune_store(client: Any) -> None:
    """The MLflow SQLite file gets the same write-ahead logging as the study's (see study.open_storage)."""
    from orchestrator.study import tune_sqlite_engine

    engine = getattr(getattr(getattr(client, "_tracking_client", None), "store", None), "engine", None)
    if engine is not None:
        tune_sqlite_engine(engine)


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


def _params(params: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(str(key), str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]


def _metrics(metrics: Mapping[str, float], step: int | None, timestamp: int, prefix: str = "") -> list[Any]:
    import math

    from mlflow.entities import Metric

    return [
        Metric(prefix + key, float(value), timestamp, step or 0)
        for key, value in metrics.items()
        if isinstance(value, int | float) and math.isfinite(float(value))
    ]
