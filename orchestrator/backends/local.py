"""The local backend: worker processes on this machine, one per slot, one fresh process per trial.

Each trial runs in a fresh process, so GPU memory a trial leaks never reaches the next one
(transformers#13019). The processes fork from a fork server that has already imported
torch, transformers and the trainer, so a trial starts in milliseconds, not seconds. The
driver process alone touches the study's storage: trial processes send their reports over
a pipe and the driver records them (ask / report / should_prune / tell), which makes a
SQLite file safe by construction.

Ctrl-C (or SIGTERM) once: no new trials; running ones finish their epoch, checkpoint and
stop. Twice: running trials are killed at once. Either way ``ftsweep resume`` continues.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from orchestrator.backends._trial_process import TrialJob, make_job, trial_main
from orchestrator.backends.base import BaseBackend
from orchestrator.config import Sweep
from orchestrator.devices import Slot
from orchestrator.messages import CONTINUE, PRUNE, STOP, EpochReport, TrialOutcome
from orchestrator.session import StopReason, StudySession, TrialHandle

_CONTEXT_CACHE: dict[tuple[str, ...], Any] = {}


def process_context(preload: tuple[str, ...]) -> Any:
    """A multiprocessing context whose fork server has imported ``preload``.

    On platforms without a fork server (Windows, macOS defaults aside) this is ``spawn``.
    """
    if preload in _CONTEXT_CACHE:
        return _CONTEXT_CACHE[preload]
    context: Any
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["orchestrator.backends._trial_process", *preload])
    else:
        context = multiprocessing.get_context("spawn")
    _CONTEXT_CACHE[preload] = context
    return context


@dataclass
class _Running:
    handle: TrialHandle
    process: Any
    conn: Connection
    slot: Slot
    lifeline: Connection
    stop_sent: bool = False

    def close(self) -> None:
        self.conn.close()
        self.lifeline.close()


class LocalBackend(BaseBackend):
    """Runs a study's trials in processes on this machine.

    Args:
        slots: where workers run (:func:`orchestrator.devices.plan_slots`).
        log_dir: where each trial's output goes (``trial-N.log``).
    """

    name = "local"

    def __init__(self, slots: list[Slot], log_dir: Path | None = None) -> None:
        self.slots = slots
        self.log_dir = log_dir
        self._interrupts = 0

    @classmethod
    def for_sweep(cls, sweep: Sweep, slots: list[Slot], work_dir: Path) -> LocalBackend:
        return cls(slots, log_dir=work_dir / "logs")

    def run(self, session: StudySession) -> None:
        """Run trials until the budget, the timeout or a stop ends the session."""
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        plan = session.plan
        context = process_context(
            tuple(plan.trainer_cls.preload_modules) + _user_module(plan.sweep.trainer.name)
        )
        free = list(self.slots)
        running: dict[Connection, _Running] = {}
        retry_at = 0.0
        previous = self._install_signal_handlers(session)
        session.progress.start()
        try:
            while True:
                while free and time.monotonic() >= retry_at:
                    handle = session.start_trial(free[0].label)
                    if handle is None:
                        # A shared study asks the database: do not poll it on every loop.
                        retry_at = time.monotonic() + (5.0 if session.shared and running else 0.0)
                        break
                    entry = self._launch(context, session, handle, free.pop(0))
                    running[entry.conn] = entry
                session.heartbeat()
                if not running:
                    break
                if self._interrupts >= 2:
                    self._kill_all(session, running, free)
                    continue
                waitables: list[Any] = list(running)
                waitables += [entry.process.sentinel for entry in running.values()]
                ready = wait(waitables, timeout=0.5)
                for item in ready:
                    found = running.get(item) if isinstance(item, Connection) else None
                    if found is None:
                        found = next((e for e in running.values() if e.process.sentinel == item), None)
                    if found is None or found.conn not in running:
                        continue
                    if self._handle(session, found):
                        retry_at = 0.0
                        del running[found.conn]
                        free.append(found.slot)
                        free.sort(key=lambda s: s.index)
                session.progress.refresh()
        finally:
            session.progress.stop()
            self._restore_signal_handlers(previous)
            # Only after an error: no trial it started may stay in flight (the contract, backends.base).
            for entry in running.values():
                if entry.process.is_alive():
                    entry.process.kill()
                with contextlib.suppress(Exception):  # the error itself may be the store's
                    session.interrupt(entry.handle, "the driver stopped on an error before the trial ended")
                entry.close()

    # -- processes --
    def _launch(self, context: Any, session: StudySession, handle: TrialHandle, slot: Slot) -> _Running:
        job = make_job(
            session,
            handle,
            environment=slot.environment(),
            device=slot.device,
            n_threads=slot.n_threads,
            log_path=str(self.log_dir / f"trial-{handle.number}.log") if self.log_dir else None,
        )
        process, parent_end, lifeline_write = start_trial_process(
            context, job, f"ftsweep-trial-{handle.number}"
        )
        if self.log_dir is not None:
            # So that a person (or a test) can find and signal one trial's process.
            with contextlib.suppress(OSError):  # a full disk: the trial reports it itself
                (self.log_dir / f"trial-{handle.number}.pid").write_text(str(process.pid))
        return _Running(handle, process, parent_end, slot, lifeline_write)

    def _handle(self, session: StudySession, entry: _Running) -> bool:
        """Process what the trial sent; True when the trial is over."""
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            return self._handle_messages(session, entry)
        except UpdateFinishedTrialError:
            # Another process marked it dead and re-queued it (a heartbeat missed under load):
            # its re-run is the one that counts; this copy stops.
            session.forget(entry.handle, "another process has already finished this trial")
            if entry.process.is_alive():
                entry.process.kill()
            entry.process.join(timeout=10)
            entry.close()
            return True

    def _handle_messages(self, session: StudySession, entry: _Running, after_exit: bool = False) -> bool:
        while True:
            try:
                if not entry.conn.poll():
                    break
                message = entry.conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(message, EpochReport):
                prune = session.report(entry.handle, message.epoch, message.metrics)
                answer = PRUNE if prune else (STOP if self._must_stop(session) else CONTINUE)
                entry.stop_sent = entry.stop_sent or answer == STOP
                try:
                    entry.conn.send(answer)
                except (BrokenPipeError, OSError):
                    pass
                continue
            self._finish(session, entry, message)
            return True
        if entry.process.is_alive():
            return False
        # The trial may have sent its result and exited between our poll and is_alive():
        # read what it left in the pipe before calling its death a failure.
        try:
            pending = entry.conn.poll()
        except (EOFError, OSError):
            pending = False
        if pending and not after_exit:
            return self._handle_messages(session, entry, after_exit=True)
        entry.process.join(timeout=5)
        code = entry.process.exitcode
        if self._interrupts:
            session.interrupt(entry.handle, f"the trial process was stopped (exit code {code})")
        elif code is not None and code < 0:
            # Killed from outside (a signal): re-run it from its checkpoint, as after a dead node.
            session.interrupt(entry.handle, _death_reason(code))
        else:
            reason = _death_reason(code)
            session.fail(
                entry.handle,
                reason,
                f"{reason}\nSee the trial's log: {self.log_dir}/trial-{entry.handle.number}.log",
            )
        entry.close()
        return True

    def _must_stop(self, session: StudySession) -> bool:
        """Running trials stop after their epoch on a signal, or on a full disk (no room to checkpoint)."""
        if session.stop_reason is StopReason.DISK_FULL:
            return True
        return session.stop_reason is StopReason.SIGNAL and self._interrupts > 0

    def _finish(self, session: StudySession, entry: _Running, message: TrialOutcome) -> None:
        session.end(entry.handle, message)
        entry.process.join(timeout=30)
        if entry.process.is_alive():
            entry.process.kill()
        entry.close()

    def _kill_all(self, session: StudySession, running: dict[Connection, _Running], free: list[Slot]) -> None:
        for entry in list(running.values()):
            if entry.process.is_alive():
                entry.process.kill()
            entry.process.join(timeout=10)
            session.interrupt(entry.handle, "killed by a second Ctrl-C")
            entry.close()
            free.append(entry.slot)
        running.clear()

    # -- signals --
    def _install_signal_handlers(self, session: StudySession) -> dict[int, Any]:
        def on_signal(signum: int, frame: Any) -> None:
            self._interrupts += 1
            name = signal.Signals(signum).name
            if self._interrupts == 1:
                session.request_stop(StopReason.SIGNAL, f"stopped by {name}")
                session.progress.say(
                    f"{name}: starting no new trials; running trials stop after their current epoch "
                    "and checkpoint. Press Ctrl-C again to stop at once."
                )
            else:
                session.progress.say(f"{name} again: stopping running trials now")

        previous: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, on_signal)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def start_trial_process(context: Any, job: TrialJob, name: str) -> tuple[Any, Connection, Connection]:
    """Start one trial process (:func:`trial_main`) for ``job``: the local backend's and ``ftsweep final``'s.

    Returns:
        the process, the driver's end of its message pipe, and the lifeline: the trial exits when
        the lifeline's other end closes, i.e. when this process dies, however it dies.
    """
    parent_end, child_end = context.Pipe(duplex=True)
    lifeline_read, lifeline_write = context.Pipe(duplex=False)
    process = context.Process(target=trial_main, args=(child_end, job, lifeline_read), name=name)
    with _main_module_hidden():
        process.start()
    child_end.close()
    lifeline_read.close()
    return process, parent_end, lifeline_write


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start a process without making it re-import the driver's ``__main__``.

    multiprocessing re-runs the parent's main module in every child it starts (to find
    functions defined there). A trial needs nothing from it, and re-importing pytest's or a
    user's script for every trial costs time and can run their top-level code.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _death_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"the trial process was killed by {name}{hint}"
    return f"the trial process exited with code {code} without a result"


def _user_module(trainer_name: str) -> tuple[str, ...]:
    """The trainer's own module (built-in or a user's) is preloaded in the fork server too."""
    from trainers.base import BUILTIN_TRAINERS

    path = BUILTIN_TRAINERS.get(trainer_name, trainer_name)
    return (path.partition(":")[0],) if ":" in path else ()
