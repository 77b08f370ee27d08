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

import contextlib
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
    STUDY_TAG,
    TRIAL_TAG,
    log_batches,
    mlflow_client,
    param_entities,
)
from orchestrator.errors import StorageError
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
from orchestrator.storage import TrackingLocation, mask_text, study_folder

log = logging.getLogger(__name__)

__all__ = [
    "DEVICE_TAG",
    "REASON_TAG",
    "ROLE_TAG",
    "STATE_TAG",
    "STUDY_TAG",
    "TRIAL_TAG",
    "StudyTracker",
    "mlflow_client",
]

#: How long a run's params, tags and metrics may wait to be merged into one write.
FLUSH_SECONDS = 2.0
#: How long ``close`` waits for the writer to finish what it was sent.
CLOSE_TIMEOUT_SECONDS = 600.0
#: How long the check that a tracking server (or database) answers may take.
REACH_TIMEOUT_SECONDS = 5.0
#: How often, at most, the driver looks whether the MLflow SQLite file is still there.
STORE_CHECK_SECONDS = 1.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _location(tracking: TrackingLocation | str) -> TrackingLocation:
    return tracking if isinstance(tracking, TrackingLocation) else TrackingLocation.resolve(tracking)


def default_artifact_location(tracking: TrackingLocation | str, experiment: str) -> str | None:
    """Artifacts of a SQLite tracking store go next to its file, not into the working directory.

    The experiment's name becomes a folder only through :func:`~orchestrator.storage.study_folder`.
    """
    path = _location(tracking).sqlite_file
    if path is None:
        return None
    return study_folder(path.parent / "mlartifacts", experiment).as_uri()


def check_reachable(tracking: TrackingLocation | str) -> None:
    """Fail within seconds, before anything is created, when the tracking store cannot be used.

    MLflow itself retries an unreachable server for minutes, and a SQLite file in a read-only
    folder fails only after its lock timeouts. A SQLite store's folder must exist and be
    writable (the file and its write-ahead log go there); a server (``http(s)://``, a
    database) must accept a connection within :data:`REACH_TIMEOUT_SECONDS`.

    Raises:
        StorageError: one line naming the store (masked) and what to do.
    """
    import socket

    location = _location(tracking)
    what = f"tracking.mlflow_uri {location.display}"
    off = "or set tracking.enabled: false"
    path = location.sqlite_file
    if path is not None:
        if not path.parent.is_dir():
            raise StorageError(
                f"{what}: the folder {path.parent} does not exist; create it, choose another URI {off}"
            )
        if not _writable(path):
            raise StorageError(
                f"{what}: {path if path.exists() else path.parent} is not writable (MLflow writes the file "
                f"and its journal in that folder); choose another URI {off}"
            )
        return
    address = _server_address(location.uri)
    if address is None or _behind_proxy(location.uri, address[0]):
        return
    try:
        socket.create_connection(address, timeout=REACH_TIMEOUT_SECONDS).close()
    except OSError as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise StorageError(
            f"{what}: cannot reach {address[0]}:{address[1]} ({reason}); start the server, fix the URI {off}"
        ) from None


def _writable(path: Path) -> bool:
    """Whether a file can be created in ``path``'s folder and ``path`` opened for writing (tried, not guessed:
    ``os.access`` says yes to root on a read-only mount)."""
    import tempfile

    try:
        descriptor, probe = tempfile.mkstemp(dir=path.parent, prefix=".ftsweep-probe-")
        os.close(descriptor)
        os.unlink(probe)
        if path.exists():
            with open(path, "r+b"):
                pass
    except OSError:
        return False
    return True


def _server_address(uri: str) -> tuple[str, int] | None:
    """(host, port) of a tracking server or a database URI, or None when there is nothing to connect to."""
    from urllib.parse import urlsplit

    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    ports = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
    base = scheme.split("+", 1)[0]
    if base not in ports:
        return None  # a file store, databricks, a plugin: MLflow's own error will do
    try:
        if base in ("http", "https"):
            parts = urlsplit(uri)
            host, port = parts.hostname, parts.port
        else:
            from sqlalchemy.engine import make_url

            parsed = make_url(uri)
            host, port = parsed.host, parsed.port
    except ValueError:
        return None
    if not host:
        return None  # a Unix socket
    return host, port or ports[base]


def _behind_proxy(uri: str, host: str) -> bool:
    """An HTTP proxy is set for this URI's scheme: a direct connection proves nothing."""
    import urllib.request

    scheme = uri.split("://", 1)[0].lower()
    return scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)


class RunFuture(Future[str]):
    """A trial's MLflow run id, once the writer has created the run; ``key`` names it until then."""

    def __init__(self, key: int) -> None:
        super().__init__()
        self.key = key


class StudyTracker:
    """MLflow runs for one study.

    Args:
        tracking: the MLflow tracking store (a URI: ``sqlite:///mlflow.db``, ``http://host:5000``).
        experiment: the experiment's name (default the study's name).
        study_name: the study's name, tagged on every run.
        flush_seconds: how long a run's logging may wait to be merged into one write.
    """

    def __init__(
        self,
        tracking: TrackingLocation | str,
        experiment: str,
        study_name: str,
        flush_seconds: float | None = None,
        metric: str | None = None,
    ) -> None:
        self.location = _location(tracking)
        #: The study's metric: a complete trial's value is logged as ``best_<metric>`` (:meth:`end_trial`).
        self.metric = metric
        #: May carry a password: never shown (``location.display`` is).
        self.tracking_uri = self.location.uri
        self.experiment = experiment
        self.study_name = study_name
        self.flush_seconds = FLUSH_SECONDS if flush_seconds is None else flush_seconds
        self.parent_run_id: str | None = None
        self._client: Any = None
        self._experiment_id: str | None = None
        self._errors: list[str] = []
        self._keys = itertools.count()
        self._runs: dict[int, RunFuture] = {}
        self._outbox: queue.SimpleQueue[WriterSetup | WriterMessage | None] = queue.SimpleQueue()
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = threading.Event()
        self._store_identity: tuple[int, int] | None = None
        self._store_checked = 0.0
        self._store_lost: str | None = None
        #: The writer process's CPU seconds (start-up, trials, total), once it has closed.
        self.writer_stats: dict[str, float] = {}

    # -- set-up (synchronous: a wrong URI must stop the sweep before any trial) --
    def open(self) -> None:
        """Connect, create the experiment when needed.

        Raises:
            StorageError: when the tracking store cannot be used.
        """
        path = self.location.sqlite_file
        if path is not None and not path.parent.exists():
            raise StorageError(
                f"tracking.mlflow_uri {self.location.display}: the folder {path.parent} does not exist"
            )
        self._start_writer()  # it imports MLflow while this process does the same
        try:
            self._client = mlflow_client(self.tracking_uri)
            experiment = self._client.get_experiment_by_name(self.experiment)
            if experiment is None:
                self._experiment_id = self._client.create_experiment(
                    self.experiment,
                    artifact_location=default_artifact_location(self.location, self.experiment),
                    tags={STUDY_TAG: self.study_name},
                )
            else:
                if experiment.lifecycle_stage == "deleted":
                    self._client.restore_experiment(experiment.experiment_id)
                self._experiment_id = experiment.experiment_id
        except Exception as error:  # noqa: BLE001 - MLflow raises many kinds; translate them once, here
            self.close(status=None)
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise StorageError(
                f"tracking.mlflow_uri {self.location.display}: cannot use it ({mask_text(detail)})"
            ) from error
        if path is not None:
            with contextlib.suppress(OSError):
                stat = path.stat()
                self._store_identity = (stat.st_dev, stat.st_ino)

    def move_artifacts(self, old_root: Path, new_root: Path) -> None:
        """A copied or moved SQLite store: artifacts that went under ``old_root`` go under ``new_root`` from
        now on."""
        from orchestrator.store_adapter import move_artifact_locations

        path = self.location.sqlite_file
        # Only a store that moved with the study's store: never rewrite one that stayed where it was.
        if self._client is not None and path is not None and path.is_relative_to(new_root):
            move_artifact_locations(self._client, old_root, new_root)

    def store_lost(self) -> str | None:
        """Why the MLflow SQLite file can no longer take the study's runs (deleted or replaced), else None.

        The writer's open connection would go on writing into a deleted file, so every run logged
        after the deletion would be lost without a word; the session stops instead, and
        ``ftsweep resume`` continues with a new MLflow file. Checked at most every
        :data:`STORE_CHECK_SECONDS`.
        """
        if self._store_identity is None or self._store_lost is not None:
            return self._store_lost
        now = time.monotonic()
        if now - self._store_checked < STORE_CHECK_SECONDS:
            return None
        self._store_checked = now
        path = self.location.sqlite_file
        assert path is not None
        try:
            stat = path.stat()
        except FileNotFoundError:
            what = "was deleted"
        else:
            if (stat.st_dev, stat.st_ino) == self._store_identity:
                return None
            what = "was replaced by another file"
        self._store_lost = (
            f"the MLflow store {path} {what} while the study ran; the runs of the trials in flight are lost "
            "with it. No new trial starts; `ftsweep resume` continues the study with a new MLflow store"
        )
        self._errors.append(f"MLflow: {self._store_lost}")
        return self._store_lost

    def start_study(
        self, *, params: Mapping[str, Any], artifacts: Mapping[str, str], tags: Mapping[str, str]
    ) -> str:
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
        assert self._experiment_id is not None  # set by open()
        self._outbox.put(
            WriterSetup(self.tracking_uri, self._experiment_id, self.study_name, run_id, self.flush_seconds)
        )
        return run_id

    def _start_writer(self) -> None:
        """The writer process (its set-up message follows from ``start_study``); its messages come back on a
        thread."""
        to_writer_read, to_writer_write = os.pipe()
        from_writer_read, from_writer_write = os.pipe()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator._tracking_writer",
                str(to_writer_read),
                str(from_writer_write),
            ],
            pass_fds=(to_writer_read, from_writer_write),
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")])),
            },
        )
        os.close(to_writer_read)
        os.close(from_writer_write)
        from multiprocessing.connection import Connection

        outgoing = Connection(to_writer_write, readable=False)
        incoming = Connection(from_writer_read, writable=False)
        threading.Thread(
            target=self._send_loop, args=(outgoing,), name="ftsweep-mlflow-send", daemon=True
        ).start()
        threading.Thread(
            target=self._receive_loop, args=(incoming,), name="ftsweep-mlflow-receive", daemon=True
        ).start()

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
                if isinstance(message, RunCreated):
                    run = self._runs.pop(message.key, None)
                    if run is not None and message.run_id is not None:
                        run.set_result(message.run_id)
                    elif run is not None:
                        run.set_exception(RuntimeError("the MLflow run could not be created"))
                elif isinstance(message, WriterError):
                    text = mask_text(message.text)  # the writer's errors may quote the store's URI
                    log.warning(text)
                    self._errors.append(text)
                elif isinstance(message, WriterClosed):
                    finished = True
                    self.writer_stats = dict(message.stats)
        if not finished:
            self._errors.append(
                "MLflow: the tracking writer process ended early; later trials are not tracked"
            )
        for run in list(self._runs.values()):
            run.set_exception(RuntimeError("the MLflow writer process ended"))
        self._closed.set()

    # -- per trial (sent to the writer) --
    def _send(self, message: WriterMessage) -> None:
        if self.parent_run_id is None:
            raise RuntimeError("StudyTracker.start_study must come first")
        self._outbox.put(message)

    def start_trial(
        self,
        number: int,
        params: Mapping[str, Any],
        device: str,
        run_id: str | None = None,
        rerun_of: int | None = None,
    ) -> RunFuture:
        """Open the trial's child run; the future gives its id.

        A re-run reopens the run it continues: ``run_id`` when the interrupted trial holds it, else
        the run tagged with the interrupted trial's number ``rerun_of`` (its driver died before the id
        reached the study), so a trial never has two runs.
        """
        run = RunFuture(next(self._keys))
        self._runs[run.key] = run
        self._send(StartRun(run.key, number, dict(params), device, run_id, rerun_of))
        return run

    def set_device(self, run: RunFuture, device: str) -> None:
        self._send(SetTags(run.key, {DEVICE_TAG: device}))

    def log_epoch(self, run: RunFuture, epoch: int, metrics: Mapping[str, float]) -> None:
        """One epoch's metrics, step = epoch."""
        self._send(LogMetrics(run.key, dict(metrics), epoch, _now_ms()))

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
        """Close the child run with the trial's final state (COMPLETE, PRUNED, FAIL, INTERRUPTED).

        A complete trial's value (the study metric at its best epoch) is logged as ``best_<metric>``
        (e.g. ``best_val_f1``), beside the per-epoch ``<metric>`` curve, whose latest value is the
        last epoch's; ``final_<name>`` are the metrics the trainer returned at the end.
        """
        paths = {name: str(path) for name, path in (artifacts or {}).items()}
        if state == "COMPLETE" and value is not None and self.metric:
            self._send(LogMetrics(run.key, {f"best_{self.metric}": float(value)}, None, _now_ms()))
        self._send(
            EndRun(run.key, state, value, reason, dict(summary or {}), traceback_text, paths, _now_ms())
        )

    def set_best(self, number: int, value: float, params: Mapping[str, Any]) -> None:
        """Keep the parent run's best trial, value and parameters up to date."""
        self._send(SetBest(number, value, dict(params), _now_ms()))

    def log_study_metrics(self, metrics: Mapping[str, float]) -> None:
        self._send(LogMetrics(STUDY_RUN, dict(metrics), None, _now_ms()))

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None:
        self._send(LogArtifacts(run_id, str(folder), artifact_path))

    def close(self, status: str | None = "FINISHED", close_orphans: bool = False) -> list[str]:
        """Write everything sent, mark the parent run (unless ``status`` is None), return the errors met.

        Args:
            status: the parent run's final status, or None to leave it (other workers may be running).
            close_orphans: mark child runs of the study still RUNNING as killed; only the study's one
                driver may (on a SQLite store, :mod:`orchestrator.driver_lock` guarantees it is one).
        """
        if self._process is not None:
            self._outbox.put(CloseWriter(status, close_orphans))
            self._outbox.put(None)
            if not self._closed.wait(CLOSE_TIMEOUT_SECONDS):
                self._errors.append(
                    f"MLflow: the tracking writer did not finish in {CLOSE_TIMEOUT_SECONDS:.0f} s; stopped it"
                )
                self._process.kill()
            self._process.wait()
            self._process = None
        return list(self._errors)


def _package_root() -> str:
    """The folder that holds the ``orchestrator`` package, for the writer's ``python -m``."""
    return str(Path(__file__).resolve().parent.parent)


def _quote(text: str) -> str:
    return text.replace("'", "\\'")
