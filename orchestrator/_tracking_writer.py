"""The MLflow writer process: it owns every per-trial MLflow call of a study.

:class:`orchestrator.tracking.StudyTracker` starts it with ``python -m
orchestrator._tracking_writer`` and sends it the frozen dataclasses of :mod:`orchestrator.messages`
over a pipe (:class:`~orchestrator.messages.StartRun`, :class:`~orchestrator.messages.EndRun`, ...);
:meth:`RunWriter.handle` dispatches them through an explicit table. The writer answers with
:class:`~orchestrator.messages.RunCreated`, :class:`~orchestrator.messages.WriterError` and
:class:`~orchestrator.messages.WriterClosed`. This module imports nothing from
:mod:`orchestrator.tracking` (which builds on it).
MLflow's store code is pure Python, so in the driver's process it would take
the interpreter lock from the scheduler for about 20 ms per trial; here it runs on its own core.

Batching. A run's params, tags and metrics are gathered for up to ``flush_seconds`` and written
in one ``log_batch`` call (13 times cheaper per value than ``log_metric`` on SQLite); the batch
still pending when the trial ends travels with its final metrics. A quick trial costs three
writes (create the run, one batch, close it) however many epochs it reports, and a long trial's
metrics reach the MLflow UI within ``flush_seconds`` of each epoch.

Life cycle. The writer ignores SIGINT and SIGTERM: Ctrl-C and a scheduler's TERM are the
driver's to handle, and the driver closes the writer once the trials have ended. When the pipe
closes without a ``close`` message (the driver was killed), the writer still writes what it
holds, then exits.

Orphans. A child run is reopened, never duplicated, when its trial is re-run: by the run id the
trial holds, or, when the driver died before the id reached the study, by the interrupted trial's
number (``rerun_of``). A single driver's close marks any child run of the study still RUNNING as
killed: with one driver per study nothing else can be running it.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.messages import (
    STUDY_RUN,
    CloseWriter,
    EndRun,
    LogArtifacts,
    LogMetrics,
    RunCreated,
    SetBest,
    SetTags,
    StartRun,
    WriterClosed,
    WriterError,
    WriterMessage,
    WriterSetup,
)

STUDY_TAG = "ftsweep.study"
ROLE_TAG = "ftsweep.role"
TRIAL_TAG = "ftsweep.trial_number"
STATE_TAG = "ftsweep.state"
REASON_TAG = "ftsweep.reason"
DEVICE_TAG = "ftsweep.device"
MAX_PARAM_LENGTH = 500
#: MLflow's limits on one log_batch call (mlflow.utils.validation).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
_MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}


@dataclass
class Batch:
    """What one run has waiting to be written, merged into one log_batch call."""

    due: float
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[Any] = field(default_factory=list)


class RunWriter:
    """MLflow runs of one study's trials, written in batches.

    Runs are named by keys the driver chooses (one per trial attempt), so that messages about a
    run can follow its creation without waiting for MLflow's run id.

    Args:
        client: an ``MlflowClient``.
        experiment_id: the study's experiment.
        study_name: tagged on every run.
        parent_run_id: the study's run.
        flush_seconds: how long a run's logging may wait to be merged into one write.
        send: where run ids (:class:`RunCreated`) and errors (:class:`WriterError`) go.
    """

    def __init__(
        self,
        client: Any,
        experiment_id: str,
        study_name: str,
        parent_run_id: str,
        flush_seconds: float,
        send: Callable[[Any], None],
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.study_name = study_name
        self.flush_seconds = flush_seconds
        self.send = send
        self.run_ids: dict[int, str] = {STUDY_RUN: parent_run_id}
        self.batches: dict[int, Batch] = {}
        self.close_cpu_seconds = 0.0
        self.closed = False
        self._handlers: dict[type, Callable[[Any], None]] = {
            StartRun: self.on_start,
            SetTags: self.on_tags,
            LogMetrics: self.on_metrics,
            SetBest: self.on_best,
            EndRun: self.on_end,
            LogArtifacts: self.on_artifacts,
            CloseWriter: self.on_close,
        }

    # -- messages --
    def handle(self, message: WriterMessage) -> None:
        """Act on one message from the driver; an MLflow error is sent back, never raised."""
        handler = self._handlers.get(type(message))
        if handler is None:
            self.send(WriterError(f"MLflow writer: unknown message {type(message).__name__}"))
            return
        try:
            handler(message)
        except Exception as error:  # noqa: BLE001 - tracking must never stop the study
            self.send(WriterError(f"MLflow: {type(error).__name__}: {error}"))

    def on_start(self, message: StartRun) -> None:
        """Open a trial's run (or reopen the run of the trial it re-runs); its params follow in its batch.

        A re-run logs its params again (the same values, which MLflow accepts), in case the first
        attempt ended before its batch was written.
        """
        try:
            run_id = message.run_id
            if run_id is None and message.rerun_of is not None:
                run_id = self._run_of_trial(message.rerun_of)
            run_id = (
                self._reopen(run_id, message.number, message.device)
                if run_id
                else self._create(message.number, message.device)
            )
        except Exception:
            self.send(RunCreated(message.key, None))
            raise
        self.run_ids[message.key] = run_id
        self.send(RunCreated(message.key, run_id))
        self._batch(message.key).params.update(message.params)

    def on_tags(self, message: SetTags) -> None:
        self._batch(message.key).tags.update(message.tags)

    def on_metrics(self, message: LogMetrics) -> None:
        self._batch(message.key).metrics.extend(
            metric_entities(message.metrics, message.step, message.timestamp)
        )

    def on_best(self, message: SetBest) -> None:
        from mlflow.entities import Metric

        batch = self._batch(STUDY_RUN)
        batch.metrics.append(Metric("best_value", float(message.value), message.timestamp, message.number))
        batch.tags.update(
            {
                "best_trial": str(message.number),
                "best_params": json.dumps(dict(message.params), default=str)[:5000],
            }
        )

    def on_end(self, message: EndRun) -> None:
        """Close a trial's run: what it still has pending goes with its final metrics, in one call."""
        run_id = self.run_ids.pop(message.key, None)
        batch = self.batches.pop(message.key, None) or Batch(0.0)
        if run_id is None:
            return  # its run could not be created; that error was already sent
        batch.tags[STATE_TAG] = message.state
        if message.reason:
            batch.tags[REASON_TAG] = message.reason[:5000]
        metrics = dict(message.summary or {})
        if message.value is not None:
            metrics["objective"] = message.value
        batch.metrics.extend(metric_entities(metrics, None, message.timestamp, prefix="final_"))
        self._write(run_id, batch)
        if message.traceback_text:
            self.client.log_text(run_id, message.traceback_text, "traceback.txt")
        for name, path in (message.artifacts or {}).items():
            self.client.log_artifact(run_id, path, name)
        self.client.set_terminated(
            run_id, status=_MLFLOW_STATUS.get(message.state, "FINISHED"), end_time=message.timestamp
        )

    def on_artifacts(self, message: LogArtifacts) -> None:
        self.client.log_artifacts(message.run_id, message.folder, message.artifact_path)

    def on_close(self, message: CloseWriter) -> None:
        """Write everything pending; mark the study's run with ``status`` unless it is None."""
        self.closed = True
        self.close_cpu_seconds = time.process_time()
        self.flush(everything=True)
        if message.close_orphans:
            self._close_orphans()
        if message.status is not None:
            self.client.set_terminated(self.run_ids[STUDY_RUN], status=message.status)

    # -- batches --
    def next_due(self) -> float | None:
        return min((batch.due for batch in self.batches.values()), default=None)

    def flush(self, everything: bool = False) -> None:
        """Write the batches whose time has come (all of them with ``everything``)."""
        now = time.monotonic()
        for key in [key for key, batch in self.batches.items() if everything or batch.due <= now]:
            batch = self.batches.pop(key)
            run_id = self.run_ids.get(key)
            if run_id is None:
                continue
            try:
                self._write(run_id, batch)
            except Exception as error:  # noqa: BLE001 - tracking must never stop the study
                self.send(WriterError(f"MLflow: {type(error).__name__}: {error}"))

    def _batch(self, key: int) -> Batch:
        batch = self.batches.get(key)
        if batch is None:
            batch = self.batches[key] = Batch(time.monotonic() + self.flush_seconds)
        return batch

    def _write(self, run_id: str, batch: Batch) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(key, value) for key, value in batch.tags.items()]
        log_batches(
            self.client, run_id, metrics=batch.metrics, params=param_entities(batch.params), tags=tags
        )

    # -- runs --
    def _create(self, number: int, device: str) -> str:
        created = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number}",
            tags={
                "mlflow.parentRunId": self.run_ids[STUDY_RUN],
                STUDY_TAG: self.study_name,
                ROLE_TAG: "trial",
                TRIAL_TAG: str(number),
                DEVICE_TAG: device,
                STATE_TAG: "RUNNING",
            },
        )
        return str(created.info.run_id)

    def _child_runs(self, extra_filter: str = "") -> list[Any]:
        study = self.study_name.replace("'", "\\'")
        return list(
            self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{STUDY_TAG}` = '{study}' and tags.`{ROLE_TAG}` = 'trial'{extra_filter}",
                max_results=1000,
            )
        )

    def _run_of_trial(self, number: int) -> str | None:
        """The child run of trial ``number`` (its id had not reached the study when its driver died)."""
        runs = self._child_runs(f" and tags.`{TRIAL_TAG}` = '{number}'")
        return str(runs[0].info.run_id) if runs else None

    def _close_orphans(self) -> None:
        """Child runs of the study still RUNNING when its only driver closes belong to no live trial."""
        from mlflow.entities import RunTag

        for run in self._child_runs(" and attributes.status = 'RUNNING'"):
            self.client.log_batch(
                run.info.run_id,
                tags=[
                    RunTag(STATE_TAG, "INTERRUPTED"),
                    RunTag(
                        REASON_TAG, "its driver stopped before the trial ended; `ftsweep resume` re-runs it"
                    ),
                ],
            )
            self.client.set_terminated(run.info.run_id, status="KILLED")

    def _reopen(self, run_id: str, number: int, device: str) -> str:
        from mlflow.entities import RunTag

        previous = self.client.get_run(run_id).data.tags.get(TRIAL_TAG, "")
        self.client.update_run(run_id, status="RUNNING")
        self.client.log_batch(
            run_id,
            tags=[
                RunTag(STATE_TAG, "RUNNING"),
                RunTag(TRIAL_TAG, str(number)),
                RunTag("ftsweep.earlier_trial_numbers", previous),
                RunTag(DEVICE_TAG, device),
            ],
        )
        return run_id


def log_batches(client: Any, run_id: str, *, metrics: list[Any], params: list[Any], tags: list[Any]) -> None:
    """``log_batch`` in as many calls as MLflow's per-call limits need (one, nearly always)."""
    while metrics or params or tags:
        client.log_batch(
            run_id,
            metrics=metrics[:MAX_METRICS_PER_BATCH],
            params=params[:MAX_PARAMS_TAGS_PER_BATCH],
            tags=tags[:MAX_PARAMS_TAGS_PER_BATCH],
        )
        metrics = metrics[MAX_METRICS_PER_BATCH:]
        params = params[MAX_PARAMS_TAGS_PER_BATCH:]
        tags = tags[MAX_PARAMS_TAGS_PER_BATCH:]


def param_entities(params: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(str(key), str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]


def metric_entities(
    metrics: Mapping[str, float], step: int | None, timestamp: int, prefix: str = ""
) -> list[Any]:
    """MLflow metrics from the finite numbers of ``metrics`` (NaN and infinities are left out)."""
    from mlflow.entities import Metric

    return [
        Metric(prefix + key, float(value), timestamp, step or 0)
        for key, value in metrics.items()
        if isinstance(value, int | float) and math.isfinite(float(value))
    ]


def serve(connection: Any, writer: RunWriter) -> None:
    """Handle messages until ``close`` or the end of the pipe, writing batches as they fall due."""
    while True:
        due = writer.next_due()
        timeout = None if due is None else max(due - time.monotonic(), 0.0)
        try:
            ready = connection.poll(timeout)
            message = connection.recv() if ready else None
        except (EOFError, OSError):
            writer.flush(everything=True)  # the driver is gone: keep what it reported
            return
        if message is not None:
            writer.handle(message)
            if writer.closed:
                return
        writer.flush()


def main(argv: list[str]) -> int:
    """``python -m orchestrator._tracking_writer READ_FD WRITE_FD``; the set-up is the first message."""
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    incoming, outgoing = Connection(int(argv[0]), writable=False), Connection(int(argv[1]), readable=False)
    import mlflow.tracking  # noqa: F401 - imported while the driver sets the study up

    def send(message: RunCreated | WriterError | WriterClosed) -> None:
        try:
            outgoing.send(message)
        except OSError:
            pass  # the driver is gone; nobody is left to tell

    try:
        setup = incoming.recv()
    except EOFError:
        return 0  # the driver is gone
    if not isinstance(setup, WriterSetup):  # closed before any study started
        send(WriterClosed())
        return 0
    try:
        client = mlflow_client(setup.tracking_uri)
        client.get_run(setup.parent_run_id)  # connects, and warms the store's queries up
    except Exception as error:  # noqa: BLE001 - report it; the study goes on untracked
        send(WriterError(f"MLflow: {type(error).__name__}: {error}"))
        send(WriterClosed())
        return 1
    writer = RunWriter(
        client, setup.experiment_id, setup.study_name, setup.parent_run_id, setup.flush_seconds, send
    )
    ready_cpu = time.process_time()
    serve(incoming, writer)
    # What the trials cost here, start-up and close apart: `bench/mlflow_share.py` reports it.
    send(
        WriterClosed(
            {
                "startup_cpu_seconds": ready_cpu,
                "trials_cpu_seconds": writer.close_cpu_seconds - ready_cpu,
                "cpu_seconds": time.process_time(),
            }
        )
    )
    return 0


def mlflow_client(tracking_uri: str) -> Any:
    """An ``MlflowClient``; on a SQLite file, with the same write-ahead logging as the study's."""
    from mlflow.tracking import MlflowClient

    from orchestrator.schema_race import create_safely
    from orchestrator.storage import TrackingLocation

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    path = TrackingLocation.resolve(tracking_uri).sqlite_file
    # The client opens (on first use, creates) the store: another process may be creating it too.
    client = create_safely(path, lambda: MlflowClient(tracking_uri=tracking_uri))
    if path is not None:
        _tune_store(client)
    return client


def _tune_store(client: Any) -> None:
    """The MLflow SQLite file gets the same write-ahead logging as the study's (see study.open_storage)."""
    from orchestrator.store_adapter import mlflow_engine
    from orchestrator.study import tune_sqlite_engine

    engine = mlflow_engine(client)
    if engine is not None:
        tune_sqlite_engine(engine)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
