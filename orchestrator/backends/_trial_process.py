"""The worker side of one trial: runs in a fresh process, talks to the driver over a pipe.

Messages to the driver (:mod:`orchestrator.messages`): an :class:`EpochReport` per epoch (answered
with ``CONTINUE``, ``PRUNE`` or ``STOP``), then exactly one outcome: :class:`Completed`,
:class:`Pruned`, :class:`Interrupted` or :class:`Failed`. The process never touches the study's
storage: the driver owns it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.messages import (
    CONTINUE,
    PRUNE,
    STOP,
    Completed,
    EpochReport,
    Failed,
    Interrupted,
    Pruned,
    TrialOutcome,
)

# Imported here, not in run_job, so that the fork server has it loaded before trials fork.
from trainers.base import FinalFitRequest, TrialContext, TrialDiverged, TrialPruned, load_trainer_class

if TYPE_CHECKING:
    from orchestrator.session import StudySession, TrialHandle

__all__ = [
    "CONTINUE",
    "PRUNE",
    "STOP",
    "DriverGone",
    "TrialInterrupted",
    "TrialJob",
    "make_job",
    "run_job",
    "trial_main",
]


class TrialInterrupted(Exception):  # noqa: N818
    """The driver asked the trial to stop after its checkpoint (Ctrl-C, SIGTERM); it will be re-run."""


class DriverGone(Exception):  # noqa: N818
    """The driver's end of the pipe closed: the driver died. The checkpoint is on disk; exit."""


@dataclass
class TrialJob:
    """Everything a trial process needs, picklable."""

    trial_number: int
    trainer_name: str
    settings: dict[str, Any]
    base_dir: str
    params: dict[str, Any]
    environment: dict[str, str]
    device: str
    n_threads: int
    metric: str
    direction: str
    checkpoint_dir: str | None
    log_path: str | None
    cache_dir: str | None = None
    #: Set for a fit of ``ftsweep final``: the trainer's ``final_fit`` runs instead of ``run``.
    final: FinalFitRequest | None = None


def make_job(
    session: StudySession,
    handle: TrialHandle,
    *,
    environment: dict[str, str],
    device: str,
    n_threads: int,
    log_path: str | None,
) -> TrialJob:
    """The job for a trial the session has just started."""
    sweep = session.plan.sweep
    return TrialJob(
        trial_number=handle.number,
        trainer_name=sweep.trainer.name,
        settings=sweep.trainer_settings(),
        base_dir=str(sweep.base_dir),
        params=handle.params,
        environment=environment,
        device=device,
        n_threads=n_threads,
        metric=sweep.study.metric,
        direction=sweep.study.direction,
        checkpoint_dir=str(handle.checkpoint_dir) if handle.checkpoint_dir else None,
        log_path=log_path,
        cache_dir=str(session.cache_dir) if session.cache_dir else None,
    )


def trial_main(conn: Connection, job: TrialJob, lifeline: Connection | None = None) -> None:
    """Entry point of a trial process.

    Args:
        conn: the pipe to the driver.
        job: what to run.
        lifeline: the read end of a pipe whose write end only the driver holds: when the driver
            dies, it reads end-of-file and the trial exits at once, losing only its epoch in flight.
    """
    # Ctrl-C reaches every process of the terminal's group; the driver alone decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_requested = False

    def on_sigterm(signum: int, frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_sigterm)
    if lifeline is not None:
        _watch_lifeline(lifeline)
    os.environ.update(job.environment)
    try:
        _redirect_output(job.log_path)
    except OSError as error:
        if not is_disk_full(error):
            raise
        _send_or_exit(
            conn, Interrupted(f"no space left on device for the trial's log {job.log_path}", disk_full=True)
        )
        return

    def reporter(epoch: int, metrics: dict[str, float]) -> bool:
        try:
            conn.send(EpochReport(epoch, dict(metrics)))
            answer = conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError) as error:
            raise DriverGone("the driver is gone") from error
        if answer == STOP or stop_requested:
            raise TrialInterrupted(f"stopped after epoch {epoch}; checkpoint saved")
        return answer == PRUNE

    try:
        message = run_job(job, reporter)
    except DriverGone:
        os._exit(3)
    _send_or_exit(conn, message)


def _send_or_exit(conn: Connection, message: TrialOutcome) -> None:
    try:
        conn.send(message)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        os._exit(3)
    finally:
        with contextlib.suppress(OSError):  # a full disk under the log must not turn the outcome into a crash
            sys.stdout.flush()
            sys.stderr.flush()


def run_job(job: TrialJob, reporter: Any) -> TrialOutcome:
    """Run the trial and return its outcome for the driver."""

    try:
        _limit_threads(job.n_threads)
        trainer_cls = load_trainer_class(job.trainer_name)
        settings = trainer_cls.Settings.model_validate(job.settings)
        trainer = trainer_cls(settings, Path(job.base_dir))
        params = trainer_cls.Params.model_validate(job.params).model_dump()
        context = TrialContext(
            trial_number=job.trial_number,
            params=params,
            device=job.device,
            reporter=reporter,
            checkpoint_dir=Path(job.checkpoint_dir) if job.checkpoint_dir else None,
            cache_dir=Path(job.cache_dir) if job.cache_dir else None,
            n_threads=job.n_threads,
            metric=job.metric,
            direction=job.direction,
            logger=lambda line: print(line, flush=True),
        )
        print(f"trial {job.trial_number} on {job.device}: {params}", flush=True)

        def fit() -> dict[str, float]:
            return trainer.final_fit(context, job.final) if job.final is not None else trainer.run(context)

        try:
            result = fit()
        except Exception as error:
            retry = trainer.on_out_of_memory(dict(params)) if _is_out_of_memory(error) else None
            if retry is None:
                raise
            # Once, with what the trainer says needs less memory (the text trainer: half the per-step batch).
            before, params = params, trainer_cls.Params.model_validate(retry).model_dump()
            context.params = params
            changed = ", ".join(f"{key}={value}" for key, value in retry.items() if before.get(key) != value)
            print(
                f"out of memory ({error}); retrying with {changed or 'the parameters the trainer gave'}",
                flush=True,
            )
            _free_accelerator_memory()
            try:
                result = fit()
            except Exception as again:
                if _is_out_of_memory(again):
                    raise RuntimeError(f"out of memory even when retried with {changed}: {again}") from again
                raise
        return Completed({key: float(value) for key, value in (result or {}).items()})
    except TrialPruned as error:
        return Pruned(str(error) or "pruned")
    except TrialDiverged as error:
        reason = str(error) or "loss is not finite"
        return Pruned(reason if reason.startswith("diverged") else f"diverged: {reason}")
    except TrialInterrupted as error:
        return Interrupted(str(error))
    except DriverGone:
        raise
    except BaseException as error:  # noqa: BLE001 - one trial's failure must never reach the study
        text = traceback.format_exc()
        reason = f"{type(error).__name__}: {error}".strip().splitlines()[0][:500]
        with contextlib.suppress(OSError):  # the log may be on the disk that is full
            print(text, file=sys.stderr, flush=True)
        if is_disk_full(error):
            # Not the trial's fault: it is re-run from its checkpoint once there is room (`ftsweep resume`).
            return Interrupted(f"no space left on device: {reason}", disk_full=True)
        return Failed(reason, text)


def is_disk_full(error: BaseException) -> bool:
    """True when ``error`` (or what caused it) is a full disk: ENOSPC, or a library's text for it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current)
        if "No space left on device" in text or "os error 28" in text or "database or disk is full" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(error)


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _watch_lifeline(lifeline: Connection) -> None:
    import threading

    def watch() -> None:
        try:
            lifeline.poll(None)  # returns at end-of-file: the driver is gone
        finally:
            os._exit(3)

    threading.Thread(target=watch, name="ftsweep-lifeline", daemon=True).start()


def _limit_threads(n_threads: int) -> None:
    """Torch imported before the fork (by the fork server) ignores OMP_NUM_THREADS: set it here.

    A trainer that does not use torch does not pay for importing it.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, n_threads))


def _redirect_output(log_path: str | None) -> None:
    """Trial output goes to its own log file, so the driver's progress display stays readable."""
    if not log_path:
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    sys.stdout = stream
    sys.stderr = stream
