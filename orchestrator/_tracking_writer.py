"""The MLflow writer process: it owns every per-trial MLflow call of a study.

:class:`orchestrator.tracking.StudyTracker` starts it with ``python -m
orchestrator._tracking_writer`` and sends it small messages over a pipe; the writer answers with
run ids and errors. MLflow's store code is pure Python, so in the driver's process it would take
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
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
#: The study's own run, as a key of :class:`RunWriter`.
STUDY_RUN = -1

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
        send: where run ids (``("run", key, run_id)``) and errors (``("error", text)``) go.
    """

    def __init__(
        self,
        client: Any,
        experiment_id: str,
        study_name: str,
        parent_run_id: str,
        flush_seconds: float,
        send: Callable[[tuple[Any, ...]], None],
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.study_name = study_name
        self.flush_seconds = flush_seconds
        self.send = send
        self.run_ids: dict[int, str] = {STUDY_RUN: parent_run_id}
        self.batches: dict[int, Batch] = {}
        self.close_cpu_seconds = 0.0

    # -- messages --
    def handle(self, message: tuple[Any, ...]) -> None:
        """Act on one message from the driver; an MLflow error is sent back, never raised."""
        kind, *args = message
        try:
            getattr(self, f"on_{kind}")(*args)
        except Exception as error:  # noqa: BLE001 - tracking must never stop the study
            self.send(("error", f"MLflow: {type(error).__name__}: {error}"))

    def on_start(self, key: int, number: int, params: Mapping[str, Any], device: str, run_id: str | None) -> None:
        """Open a trial's run (or reopen ``run_id`` for a re-run); its params follow in its batch.

        A re-run logs its params again (the same values, which MLflow accepts), in case the first
        attempt ended before its batch was written.
        """
        try:
            run_id = self._reopen(run_id, number, device) if run_id else self._create(number, device)
        except Exception:
            self.send(("run", key, None))
            raise
        self.run_ids[key] = run_id
        self.send(("run", key, run_id))
        self._batch(key).params.update(params)

    def on_tags(self, key: int, tags: Mapping[str, str]) -> None:
        self._batch(key).tags.update(tags)

    def on_metrics(self, key: int, metrics: Mapping[str, float], step: int | None, timestamp: int) -> None:
        self._batch(key).metrics.extend(metric_entities(metrics, step, timestamp))

    def on_best(self, number: int, value: float, params: Mapping[str, Any], timestamp: int) -> None:
        from mlflow.entities import Metric

        batch = self._batch(STUDY_RUN)
        batch.metrics.append(Metric("best_value", float(value), timestamp, number))
        batch.tags.update({"best_trial": str(number), "best_params": json.dumps(dict(params), default=str)[:5000]})

    def on_end(
        self,
        key: int,
        state: str,
        value: float | None,
        reason: str | None,
        summary: Mapping[str, float] | None,
        traceback_text: str | None,
        artifacts: Mapping[str, str] | None,
        timestamp: int,
    ) -> None:
        """Close a trial's run: what it still has pending goes with its final metrics, in one call."""
        run_id = self.run_ids.pop(key, None)
        batch = self.batches.pop(key, None) or Batch(0.0)
        if run_id is None:
            return  # its run could not be created; that error was already sent
        batch.tags[STATE_TAG] = state
        if reason:
            batch.tags[REASON_TAG] = reason[:5000]
        metrics = dict(summary or {})
        if value is not None:
            metrics["objective"] = value
        batch.metrics.extend(metric_entities(metrics, None, timestamp, prefix="final_"))
        self._write(run_id, batch)
        if traceback_text:
            self.client.log_text(run_id, traceback_text, "traceback.txt")
        for name, path in (artifacts or {}).items():
            self.client.log_artifact(run_id, path, name)
        self.client.set_terminated(run_id, status=_MLFLOW_STATUS.get(state, "FINISHED"), end_time=timestamp)

    def on_artifacts(self, run_id: str, folder: str, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, folder, artifact_path)

    def on_close(self, status: str | None) -> None:
        """Write everything pending; mark the study's run with ``status`` unless it is None."""
        self.close_cpu_seconds = time.process_time()
        self.flush(everything=True)
        if status is not None:
            self.client.set_terminated(self.run_ids[STUDY_RUN], status=status)

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
                self.send(("error", f"MLflow: {type(error).__name__}: {error}"))

    def _batch(self, key: int) -> Batch:
        batch = self.batches.get(key)
        if batch is None:
            batch = self.batches[key] = Batch(time.monotonic() + self.flush_seconds)
        return batch

    def _write(self, run_id: str, batch: Batch) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(key, value) for key, value in batch.tags.items()]
        log_batches(self.client, run_id, metrics=batch.metrics, params=param_entities(batch.params), tags=tags)

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

    def _reopen(self, run_id: str, number: int, device: str) -> str:
        from mlflow.entities import RunTag

        previous = self.client.get_run(run_id).data.tags.get(TRIAL_TAG, "")
        self.client.update_run(run_id, status="RUNNING")
        self.client.log_batch(run_id, tags=[
            RunTag(STATE_TAG, "RUNNING"),
            RunTag(TRIAL_TAG, str(number)),
            RunTag("ftsweep.earlier_trial_numbers", previous),
            RunTag(DEVICE_TAG, device),
        ])
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


def metric_entities(metrics: Mapping[str, float], step: int | None, timestamp: int, prefix: str = "") -> list[Any]:
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
            if message[0] == "close":
                return
        writer.flush()


def main(argv: list[str]) -> int:
    """``python -m orchestrator._tracking_writer READ_FD WRITE_FD``; the set-up is the first message."""
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    incoming, outgoing = Connection(int(argv[0]), writable=False), Connection(int(argv[1]), readable=False)
    import mlflow.tracking  # noqa: F401 - imported while the driver sets the study up

    from orchestrator.tracking import mlflow_client

    def send(message: tuple[Any, ...]) -> None:
        try:
            outgoing.send(message)
        except OSError:
            pass  # the driver is gone; nobody is left to tell

    try:
        kind, setup = incoming.recv()
    except EOFError:
        return 0  # the driver is gone
    if kind != "setup":  # closed before any study started
        send(("closed",))
        return 0
    try:
        client = mlflow_client(setup["tracking_uri"])
        client.get_run(setup["parent_run_id"])  # connects, and warms the store's queries up
    except Exception as error:  # noqa: BLE001 - report it; the study goes on untracked
        send(("error", f"MLflow: {type(error).__name__}: {error}"))
        send(("closed",))
        return 1
    writer = RunWriter(client, setup["experiment_id"], setup["study_name"], setup["parent_run_id"], setup["flush_seconds"], send)
    ready_cpu = time.process_time()
    serve(incoming, writer)
    # What the trials cost here, start-up and close apart: `bench/mlflow_share.py` reports it.
    send(("closed", {"startup_cpu_seconds": ready_cpu, "trials_cpu_seconds": writer.close_cpu_seconds - ready_cpu,
                     "cpu_seconds": time.process_time()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
