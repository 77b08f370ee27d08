"""The messages a trial sends to the driver, shared by every backend.

A trial process (local backend) or a Ray actor (ray backend) reports each epoch with an
:class:`EpochReport` and ends with exactly one :class:`TrialOutcome`: :class:`Completed`,
:class:`Pruned`, :class:`Failed` or :class:`Interrupted`. The driver answers an epoch report with
one of :data:`CONTINUE`, :data:`PRUNE` or :data:`STOP` (local backend; on Ray the scheduler stops
the actor instead). Each type is a small frozen dataclass: a field is read by name, never decoded
by position.

On Ray the same messages travel inside Tune's result dictionary: :func:`to_ray_result` puts the
message under one key (:data:`RAY_KEY`, as JSON), so nothing Tune adds to a result is mistaken for a
metric, and :func:`from_ray_result` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

CONTINUE, PRUNE, STOP = "continue", "prune", "stop"


@dataclass(frozen=True)
class EpochReport:
    """One finished epoch of a trial and its metrics."""

    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Completed:
    """The trial finished: the metrics of its best epoch (the study's metric among them)."""

    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Pruned:
    """The trial stopped early on purpose (pruned, or diverged)."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """The trial raised: the first line of the error, and the full traceback for its run and log."""

    reason: str
    traceback: str | None = None


@dataclass(frozen=True)
class Interrupted:
    """The trial was stopped from outside after its checkpoint; it is re-run with the same parameters.

    ``disk_full``: it stopped because the disk under its checkpoint or log is full; the session stops too.
    """

    reason: str
    disk_full: bool = False


TrialOutcome = Completed | Pruned | Failed | Interrupted
TrialMessage = EpochReport | TrialOutcome

#: The one key of a Tune result that holds an ftsweep message.
RAY_KEY = "ftsweep"
_BY_NAME: dict[str, type] = {
    cls.__name__: cls for cls in (EpochReport, Completed, Pruned, Failed, Interrupted)
}


def to_ray_result(message: TrialMessage, device: str) -> dict[str, Any]:
    """A Tune result with ``message`` under :data:`RAY_KEY` (``epoch`` and metrics also top level, for ASHA).

    The message is one JSON string: Tune flattens nested dictionaries of a result into ``a/b`` keys,
    which would make a metric named ``val/f1`` ambiguous; a string it leaves alone.
    """
    payload = {"type": type(message).__name__, "device": device, **asdict(message)}
    result: dict[str, Any] = {RAY_KEY: json.dumps(payload)}
    if isinstance(message, EpochReport):
        # ASHA reads its time attribute and the metric from the top level of the result.
        result.update({"epoch": message.epoch, **message.metrics})
    return result


def from_ray_result(result: dict[str, Any]) -> tuple[TrialMessage | None, str | None]:
    """The message and the device a Tune result carries, or (None, None) for one ftsweep did not send."""
    text = result.get(RAY_KEY)
    if not isinstance(text, str):
        return None, None
    try:
        payload = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(payload, dict) or payload.get("type") not in _BY_NAME:
        return None, None
    fields = {key: value for key, value in payload.items() if key not in ("type", "device")}
    return _BY_NAME[payload["type"]](**fields), payload.get("device")


# -- driver -> MLflow writer (orchestrator._tracking_writer), and its answers --------------------------
# A run is named by a key the driver chooses (one per trial attempt), so that messages about it can
# follow its creation without waiting for MLflow's run id. STUDY_RUN is the study's parent run.

#: The study's own run, as a run key.
STUDY_RUN = -1


@dataclass(frozen=True)
class WriterSetup:
    """The first message: where to write, and the study's parent run."""

    tracking_uri: str
    experiment_id: str
    study_name: str
    parent_run_id: str
    flush_seconds: float


@dataclass(frozen=True)
class StartRun:
    """Open a trial's child run, or reopen ``run_id`` (or the run of trial ``rerun_of``) for a re-run."""

    key: int
    number: int
    params: dict[str, Any]
    device: str
    run_id: str | None = None
    rerun_of: int | None = None


@dataclass(frozen=True)
class SetTags:
    key: int
    tags: dict[str, str]


@dataclass(frozen=True)
class LogMetrics:
    """Metrics of a run (``step`` None: the study's run, step 0)."""

    key: int
    metrics: dict[str, float]
    step: int | None
    timestamp: int


@dataclass(frozen=True)
class SetBest:
    """The study's best trial so far, for the parent run."""

    number: int
    value: float
    params: dict[str, Any]
    timestamp: int


@dataclass(frozen=True)
class EndRun:
    """Close a trial's run with its final state (COMPLETE, PRUNED, FAIL, INTERRUPTED)."""

    key: int
    state: str
    value: float | None
    reason: str | None
    summary: dict[str, float]
    traceback_text: str | None
    artifacts: dict[str, str]
    timestamp: int


@dataclass(frozen=True)
class LogArtifacts:
    run_id: str
    folder: str
    artifact_path: str


@dataclass(frozen=True)
class CloseWriter:
    """Write everything pending, mark the parent run with ``status`` (None: leave it), and with
    ``close_orphans`` mark child runs of the study still RUNNING as killed (a single driver's close)."""

    status: str | None
    close_orphans: bool = False


WriterMessage = StartRun | SetTags | LogMetrics | SetBest | EndRun | LogArtifacts | CloseWriter


@dataclass(frozen=True)
class RunCreated:
    """The writer's answer to :class:`StartRun`: the MLflow run id, or None when it could not be created."""

    key: int
    run_id: str | None


@dataclass(frozen=True)
class WriterError:
    text: str


@dataclass(frozen=True)
class WriterClosed:
    """The writer is done; its CPU seconds (start-up, trials, total)."""

    stats: dict[str, float] = field(default_factory=dict)
