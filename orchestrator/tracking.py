"""MLflow tracking: one experiment per study, a parent run for the study, a child run per trial.

The set-up (experiment, the study's run) happens in the driver, so that a wrong tracking URI
stops the sweep before any trial. Every per-trial call then goes to a writer process
(:mod:`orchestrator._tracking_writer`) over a pipe: the driver never waits on the tracking store
and MLflow's Python code does not compete with the scheduler for the interpreter lock. The
writer merges each run's logging into one ``log_batch`` call per ``flush_seconds`` (three writes
for a quick trial, whatever it reports). :meth:`StudyTracker.close` waits until everything is
written; a killed driver's writer still writes what it was sent.

Cross references: a trial's run id is a user attribute of the Optuna trial
(``mlflow_run_id``), and each run carries the tags ``ftsweep.study`` and
``ftsweep.trial_number``, so either leads to the other.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from orchestrator._tracking_writer import (
    DEVICE_TAG,
    REASON_TAG,
    ROLE_TAG,
    STATE_TAG,
    STUDY_RUN,
    STUDY_TAG,
    TRIAL_TAG,
    log_batches,
    param_entities,
)
from orchestrator.config import sqlite_path
from orchestrator.errors import StorageError

log = logging.getLogger(__name__)

__all__ = ["DEVICE_TAG", "REASON_TAG", "ROLE_TAG", "STATE_TAG", "STUDY_TAG", "TRIAL_TAG", "StudyTracker"]

#: How long a run's params, tags and metrics may wait to be merged into one write.
FLUSH_SECONDS = 2.0
#: How long ``close`` waits for the writer to finish what it was sent.
CLOSE_TIMEOUT_SECONDS = 600.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite tracking store go next to its file, not into the working directory."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    return (path.resolve().parent / "mlartifacts" / experiment).as_uri()


def mlflow_client(tracking_uri: str) -> Any:
    """An ``MlflowClient``; on a SQLite file, with the same write-ahead logging as the study's."""
    from mlflow.tracking import MlflowClient

    from orchestrator.schema_race import create_safely

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    path = sqlite_path(tracking_uri)
    # The client opens (on first use, creates) the store: another process may be creating it too.
    client = create_safely(path, lambda: MlflowClient(tracking_uri=tracking_uri))
    if path is not None:
        _tune_store(client)
    return client


class RunFuture(Future[str]):
    """A trial's MLflow run id, once the writer has created the run; ``key`` names it until then."""

    def __init__(self, key: int) -> None:
        super().__init__()
        self.key = key


class StudyTracker:
    """MLflow runs for one study.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``).
        experiment: the experiment's name (default the study's name).
        study_name: the study's name, tagged on every run.
        flush_seconds: how long a run's logging may wait to be merged into one write.
    """

    def __init__(self, tracking_uri: str, experiment: str, study_name: str, flush_seconds: float | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.study_name = study_name
        self.flush_seconds = FLUSH_SECONDS if flush_seconds is None else flush_seconds
        self.parent_run_id: str | None = None
        self._client: Any = None
        self._experiment_id: str | None = None
        self._errors: list[str] = []
        self._keys = itertools.count()
        self._runs: dict[int, RunFuture] = {}
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = threading.Event()
        #: The writer process's CPU seconds (start-up, trials, total), once it has closed.
        self.writer_stats: dict[str, float] = {}

    # -- set-up (synchronous: a wrong URI must stop the sweep before any trial) --
    def open(self) -> None:
        """Connect, create the experiment when needed.

        Raises:
            StorageError: when the tracking store cannot be used.
        """
        path = sqlite_path(self.tracking_uri)
        if path is not None and not path.resolve().parent.exists():
            raise StorageError(f"tracking.mlflow_uri {self.tracking_uri}: the folder {path.parent} does not exist")
        self._start_writer()  # it imports MLflow while this process does the same
        try:
            self._client = mlflow_client(self.tracking_uri)
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
            self.close(status=None)
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
            log_batches(client, run_id, metrics=[], params=param_entities(params), tags=[])
            for name, text in artifacts.items():
                client.log_text(run_id, text, name)
        self.parent_run_id = run_id
        self._outbox.put(("setup", {
            "tracking_uri": self.tracking_uri,
            "experiment_id": self._experiment_id,
            "study_name": self.study_name,
            "parent_run_id": self.parent_run_id,
            "flush_seconds": self.flush_seconds,
        }))
        return run_id

    def _start_writer(self) -> None:
        """The writer process (its set-up message follows from ``start_study``); its messages come back on a thread."""
        to_writer_read, to_writer_write = os.pipe()
        from_writer_read, from_writer_write = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator._tracking_writer", str(to_writer_read), str(from_writer_write)],
            pass_fds=(to_writer_read, from_writer_write),
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))},
        )
        os.close(to_writer_read)
        os.close(from_writer_write)
        from multiprocessing.connection import Connection

        outgoing = Connection(to_writer_write, readable=False)
        incoming = Connection(from_writer_read, writable=False)
        threading.Thread(target=self._send_loop, args=(outgoing,), name="ftsweep-mlflow-send", daemon=True).start()
        threading.Thread(target=self._receive_loop, args=(incoming,), name="ftsweep-mlflow-receive", daemon=True).start()

    def _send_loop(self, connection: Any) -> None:
        """Messages go out from this thread, so the driver never blocks on a full pipe."""
        with connection:
            while (message := self._outbox.get()) is not None:
                try:
                    connection.send(message)
                except OSError:
                    return  # the writer died; the receiver reports it

    def _receive_loop(self, connection: Any) -> None:
        """Run ids resolve the trials' futures; errors are kept for ``close``."""
        finished = False
        with connection:
            while not finished:
                try:
                    message = connection.recv()
                except (EOFError, OSError):
                    break
                if message[0] == "run":
                    _, key, run_id = message
                    run = self._runs.pop(key, None)
                    if run is not None and run_id is None:
                        run.set_exception(RuntimeError("the MLflow run could not be created"))
                    elif run is not None:
                        run.set_result(run_id)
                elif message[0] == "error":
                    log.warning(message[1])
                    self._errors.append(message[1])
                if message[0] == "closed":
                    finished = True
                    self.writer_stats = message[1] if len(message) > 1 else {}
        if not finished:
            self._errors.append("MLflow: the tracking writer process ended early; later trials are not tracked")
        for run in list(self._runs.values()):
            run.set_exception(RuntimeError("the MLflow writer process ended"))
        self._closed.set()

    # -- per trial (sent to the writer) --
    def _send(self, *message: Any) -> None:
        if self.parent_run_id is None:
            raise RuntimeError("StudyTracker.start_study must come first")
        self._outbox.put(message)

    def start_trial(self, number: int, params: Mapping[str, Any], device: str, run_id: str | None = None) -> RunFuture:
        """Open the trial's child run (or reopen ``run_id`` for a re-run); the future gives its id."""
        run = RunFuture(next(self._keys))
        self._runs[run.key] = run
        self._send("start", run.key, number, dict(params), device, run_id)
        return run

    def set_device(self, run: RunFuture, device: str) -> None:
        self._send("tags", run.key, {DEVICE_TAG: device})

    def log_epoch(self, run: RunFuture, epoch: int, metrics: Mapping[str, float]) -> None:
        """One epoch's metrics, step = epoch."""
        self._send("metrics", run.key, dict(metrics), epoch, _now_ms())

    def end_trial(
        self,
        run: RunFuture,
        state: str,
        *,
        value: float | None = None,
        reason: str | None = None,
        summary: Mapping[str, float] | None = None,
        traceback_text: str | None = None,
        artifacts: Mapping[str, Path] | None = None,
    ) -> None:
        """Close the child run with the trial's final state (COMPLETE, PRUNED, FAIL, INTERRUPTED)."""
        paths = {name: str(path) for name, path in (artifacts or {}).items()}
        self._send("end", run.key, state, value, reason, dict(summary or {}), traceback_text, paths, _now_ms())

    def set_best(self, number: int, value: float, params: Mapping[str, Any]) -> None:
        """Keep the parent run's best trial, value and parameters up to date."""
        self._send("best", number, value, dict(params), _now_ms())

    def log_study_metrics(self, metrics: Mapping[str, float]) -> None:
        self._send("metrics", STUDY_RUN, dict(metrics), None, _now_ms())

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None:
        self._send("artifacts", run_id, str(folder), artifact_path)

    def close(self, status: str | None = "FINISHED") -> list[str]:
        """Write everything sent, mark the parent run (unless ``status`` is None), return the errors met."""
        if self._process is not None:
            self._outbox.put(("close", status))
            self._outbox.put(None)
            if not self._closed.wait(CLOSE_TIMEOUT_SECONDS):
                self._errors.append(f"MLflow: the tracking writer did not finish in {CLOSE_TIMEOUT_SECONDS:.0f} s; stopped it")
                self._process.kill()
            self._process.wait()
            self._process = None
        return list(self._errors)


def _tune_store(client: Any) -> None:
    """The MLflow SQLite file gets the same write-ahead logging as the study's (see study.open_storage)."""
    from orchestrator.study import tune_sqlite_engine

    engine = getattr(getattr(getattr(client, "_tracking_client", None), "store", None), "engine", None)
    if engine is not None:
        tune_sqlite_engine(engine)


def _package_root() -> str:
    """The folder that holds the ``orchestrator`` package, for the writer's ``python -m``."""
    return str(Path(__file__).resolve().parent.parent)


def _quote(text: str) -> str:
    return text.replace("'", "\\'")
