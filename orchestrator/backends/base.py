"""The contract every backend keeps.

A backend runs the trials of one session of a study (:class:`~orchestrator.session.StudySession`):
it decides *where* and *when* a trial runs; the session decides *which* trial, *whether* it may
start and *what* is recorded. Concretely:

Single writer.
    Only the driver's :class:`StudySession` writes to the study's store (and sends to MLflow). A
    backend never opens the store, never calls ``study.ask`` / ``tell`` / ``trial.report``, and
    never sets a trial's attributes: it calls the session (:meth:`StudySession.start_trial`,
    :meth:`StudySession.report`, :meth:`StudySession.end`) from the driver's process, and the
    trial side (a process, a Ray actor) talks to the driver only through the messages of
    :mod:`orchestrator.messages`. That is what makes a SQLite file safe by construction.

Every started trial ends exactly once.
    A trial the session handed out (``start_trial`` returned a handle) ends in exactly one of
    complete, pruned, failed or interrupted, reported through :meth:`StudySession.end` (or its
    four methods), never twice and never not at all: a trial process that dies without an outcome
    is ``interrupted`` when killed from outside (a signal, a lost node) and ``failed`` otherwise.

The budget is exact.
    A backend starts a trial only when :meth:`StudySession.start_trial` gives it one; the session
    never hands out a trial that could take the study past its budget (``n_trials`` counted across
    every worker), its timeout or a stop. A backend neither retries a finished trial nor starts
    trials of its own.

In-flight trials are interrupted on exit.
    When :meth:`BaseBackend.run` returns or raises (the budget is reached, a stop, Ctrl-C, an
    error), no trial it started is left in flight: each one has ended, or is ended as interrupted
    so that ``ftsweep resume`` re-runs it from its checkpoint with the same parameters.

What a backend may touch.
    Its own processes or cluster, the study's work folder it is given (logs, Ray's experiment
    folder), the trials' environment (devices, threads) and the terminal display through
    ``session.progress`` (start / stop / refresh / say). It may ask the session to stop
    (:meth:`StudySession.request_stop`) on a signal. It must not touch the store, the MLflow
    runs, the checkpoints (the trainer and the session own those) or the study's counts.

A backend is chosen by name from :data:`orchestrator.backends.BACKENDS`; :meth:`BaseBackend.check_available`
runs while the sweep is planned, before any store, study or MLflow run exists, so a backend whose
packages are missing costs one line and nothing created.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.config import Sweep
    from orchestrator.devices import Slot
    from orchestrator.session import StudySession


class BaseBackend(ABC):
    """Runs the trials of one session of a study; see the module's docstring for the contract."""

    #: The backend's name in ``execution.backend``.
    name: str = ""

    @classmethod
    def check_available(cls) -> None:
        """Check that this backend can run here (its packages are installed), without side effects.

        Called while planning, before anything is created.

        Raises:
            UserError: naming what is missing and how to install it.
        """
        return None  # a backend with nothing beyond ftsweep's own requirements

    @classmethod
    @abstractmethod
    def for_sweep(cls, sweep: Sweep, slots: list[Slot], work_dir: Path) -> BaseBackend:
        """The backend for a sweep.

        Args:
            sweep: the validated sweep file (``execution`` holds the backend's settings).
            slots: this machine's worker slots (:func:`orchestrator.runner.worker_slots`); empty
                where the backend places trials itself.
            work_dir: the study's folder, for logs and the backend's own files.
        """

    @abstractmethod
    def run(self, session: StudySession) -> None:
        """Run trials until the session's budget, its timeout or a stop ends it.

        Args:
            session: the session that hands out trials and records their reports and outcomes.

        Raises:
            UserError: when the backend cannot run the trials (e.g. a cluster it cannot join); any
                trial already started has been ended as interrupted.
        """
