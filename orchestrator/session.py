"""One session of a study: the bookkeeping every backend shares.

The session is the only code that writes to the study's storage while trials run. A
backend asks it for a trial (:meth:`StudySession.ask`), passes each epoch's report through
it (:meth:`StudySession.report`, which answers whether to prune) and hands it the outcome
(:meth:`end` with a message of :mod:`orchestrator.messages`, or :meth:`complete`, :meth:`prune`,
:meth:`fail`, :meth:`interrupt`). The session keeps the budget exact: it never starts a trial that
could take the study past ``n_trials``. It owns the session's counts and its :class:`StopReason`;
the terminal display only listens.
"""

from __future__ import annotations

import contextlib
import enum
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftsweep_common.trial_metrics import MAJORITY_PREFIX
from orchestrator.first_trials import PRESET_DEFAULTS_ATTR
from orchestrator.recovery import (
    HEARTBEAT_SECONDS,
    MAX_ATTEMPTS,
    OWNER_ATTR,
    attempt_of,
    budget_lock,
    owner_id,
    queue_rerun,
)
from orchestrator.store_adapter import (
    record_heartbeats,
    stored_trial,
    study_storage,
    trial_by_number,
    trial_id,
)
from orchestrator.study import (
    BEST_EPOCH_ATTR,
    DEVICE_ATTR,
    EPOCHS_ATTR,
    INTERRUPTED_ATTR,
    MULTI_OBJECTIVE_NOTE,
    REASON_ATTR,
    RERUN_OF_ATTR,
    RUN_ID_ATTR,
    counts_toward_budget,
    is_warm_started,
)

if TYPE_CHECKING:
    import optuna

    from orchestrator.messages import TrialOutcome
    from orchestrator.plan import SweepPlan
    from orchestrator.progress import Progress
    from orchestrator.tracking import RunFuture, StudyTracker


@dataclass
class TrialHandle:
    """A trial in flight."""

    trial: optuna.Trial
    params: dict[str, Any]
    device: str
    run: RunFuture | None
    checkpoint_dir: Path | None
    started: float = field(default_factory=time.monotonic)
    epochs: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    rerun_of: int | None = None
    known_epochs: set[int] = field(default_factory=set)
    run_attached: bool = False
    #: The best value of the study's metric over the epochs reported so far: what the pruner sees.
    running_best: float | None = None
    #: Why the session asked to prune the trial, when it was not the pruner (e.g. ``no progress``).
    prune_reason: str | None = None
    #: Every metric of each epoch reported (a study of several objectives takes its values from one epoch).
    epoch_metrics: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.trial.number


class StopReason(enum.Enum):
    """Why a session stopped before its budget (the CLI maps each to an exit code)."""

    #: ``study.timeout`` (or ``--timeout``) ran out: no new trial started.
    TIMEOUT = "timeout"
    #: Ctrl-C or SIGTERM.
    SIGNAL = "signal"
    #: ``study.max_failures`` trials failed.
    MAX_FAILURES = "max_failures"
    #: The disk under the study's folders is full.
    DISK_FULL = "disk_full"
    #: The MLflow SQLite file was deleted or replaced while the study ran.
    TRACKING_LOST = "tracking_lost"


@dataclass
class SessionResult:
    """What one session did: its own counts (not the study's), the best trial so far and why it stopped.

    Attributes:
        stop_reason: why it stopped before the budget, or None.
        stopped_by: the stop in words, for the terminal.
        first_error: the first failed trial of this session, as one line, or None.
        front: a study of several objectives: the trial numbers of its Pareto front (else None).
    """

    complete: int
    pruned: int
    failed: int
    interrupted: int
    best_value: float | None
    best_trial: int | None
    stopped_by: str | None
    stop_reason: StopReason | None = None
    first_error: str | None = None
    front: list[int] | None = None

    @property
    def finished(self) -> int:
        """Trials this session finished (complete, pruned or failed)."""
        return self.complete + self.pruned + self.failed


class StudySession:
    """Budget, pruning answers and records for one run of a study.

    Args:
        plan: the checked sweep.
        study: the Optuna study (its sampler and pruner already set).
        tracker: MLflow runs, or None when tracking is off.
        progress: the terminal display.
        n_trials: the study's total budget of finished trials.
        timeout: seconds after which no trial starts, or None.
        checkpoint_root: the study's checkpoint folder, or None for no checkpoints.
        max_failures: failed trials after which the study stops, or None.
        keep_best_checkpoint: keep the best trial's checkpoint (the others are removed).
        shared: other processes (``ftsweep worker`` on other machines) run trials of this study
            at the same time: the budget is counted in the database, under a lock.
        cache_dir: the study's cache folder, shared by its trials (tokenized data, frozen features).
    """

    def __init__(
        self,
        plan: SweepPlan,
        study: optuna.Study,
        tracker: StudyTracker | None,
        progress: Progress,
        n_trials: int,
        timeout: float | None,
        checkpoint_root: Path | None,
        max_failures: int | None = None,
        keep_best_checkpoint: bool = True,
        shared: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        self.plan = plan
        self.study = study
        self.tracker = tracker
        self.progress = progress
        self.n_trials = n_trials
        self.deadline = time.monotonic() + timeout if timeout else None
        self.checkpoint_root = checkpoint_root
        self.cache_dir = cache_dir
        self.max_failures = max_failures
        self.keep_best_checkpoint = keep_best_checkpoint
        self.shared = shared
        self.owner = owner_id()
        self._last_heartbeat = 0.0
        self.metric = plan.sweep.study.metric
        self.maximize = plan.sweep.study.direction == "maximize"
        #: Several objectives: no pruning (Optuna's pruners take one value), values from one epoch each.
        self.metrics = plan.sweep.metrics
        self.multi_objective = plan.sweep.multi_objective
        self.in_flight: dict[int, TrialHandle] = {}
        self.stop_reason: StopReason | None = None
        self.stop_detail: str | None = None
        self.first_error: str | None = None
        self.n_complete = 0
        self.n_pruned = 0
        self.n_failed = 0
        self.n_interrupted = 0
        self.best_value: float | None = None
        self.best_trial: int | None = None
        self._counted = 0
        self._failed = 0
        self._load_history()
        if self.multi_objective:
            progress.say(MULTI_OBJECTIVE_NOTE.format(metrics=", ".join(self.metrics)))

    # -- state --
    def _load_history(self) -> None:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        self._counted = sum(1 for trial in trials if counts_toward_budget(trial))
        self._failed = sum(
            1 for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED_ATTR)
        )
        for trial in trials:
            if (
                trial.state == TrialState.COMPLETE
                and trial.values
                and not is_warm_started(trial)  # the best (and its checkpoint) is one this study ran
                and self._better(trial.values[0], trial.number)
            ):
                self.best_value, self.best_trial = trial.values[0], trial.number
        self.progress.already = self._counted
        self.progress.budget = self.n_trials
        if self.best_value is not None and self.best_trial is not None:
            self.progress.set_best(self.best_trial, self.best_value)

    @property
    def n_counted(self) -> int:
        """Finished trials that count toward the budget, this session's and earlier ones."""
        return self._counted

    @property
    def remaining(self) -> int:
        return self.n_trials - self._counted - len(self.in_flight)

    def can_start(self) -> bool:
        """True when one more trial may start without passing the budget, the timeout or a stop."""
        if self.stop_reason is not None:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.request_stop(StopReason.TIMEOUT, "timeout")
            return False
        if self.tracker is not None and (lost := self.tracker.store_lost()):
            self.request_stop(StopReason.TRACKING_LOST, lost)
            return False
        if self.shared:
            return self._shared_room() > 0
        return self.remaining > 0

    def _shared_room(self) -> int:
        """Trials this process may start, counted in the database across every worker."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        self._counted = sum(1 for trial in trials if counts_toward_budget(trial))
        self.progress.already = self._counted - (self.n_complete + self.n_pruned + self.n_failed)
        if any(trial.state == TrialState.WAITING for trial in trials):
            return 1
        running = sum(1 for trial in trials if trial.state == TrialState.RUNNING)
        return self.n_trials - self._counted - running

    def start_trial(self, device: str) -> TrialHandle | None:
        """A new trial, or None when the budget, the timeout or a stop forbids one.

        Counting and asking happen under one lock when the study is shared, so that workers on
        several machines never start more than the budget between them.
        """
        with budget_lock(self.study, self.study.study_name) if self.shared else contextlib.nullcontext():
            if not self.can_start():
                return None
            return self.ask(device)

    def heartbeat(self, force: bool = False) -> None:
        """Renew the heartbeat of every trial in flight (at most every HEARTBEAT_SECONDS)."""
        now = time.monotonic()
        if not force and now - self._last_heartbeat < HEARTBEAT_SECONDS:
            return
        self._last_heartbeat = now
        if self.shared:
            record_heartbeats(self.study, [trial_id(handle.trial) for handle in self.in_flight.values()])
        for handle in self.in_flight.values():
            self._attach_run_id(handle)

    def _attach_run_id(self, handle: TrialHandle, wait: bool = False) -> None:
        """The MLflow run id goes on the trial as soon as the run exists: a re-run after a crash finds it."""
        if handle.run is None or handle.run_attached or not (wait or handle.run.done()):
            return
        try:
            handle.trial.set_user_attr(RUN_ID_ATTR, handle.run.result(timeout=120))
        except Exception:  # noqa: BLE001 - a tracking failure is reported by the tracker, not here
            return
        handle.run_attached = True

    def request_stop(self, reason: StopReason, detail: str | None = None) -> None:
        """Start no new trial; the first reason given is the one kept."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_detail = detail or reason.value

    def _better(self, value: float, number: int) -> bool:
        """Better than the best so far; on a tie, the lower trial number wins, as in ``ftsweep best``
        (:func:`orchestrator.report.best_trial`), so the kept checkpoint is the trial it names."""
        if self.best_value is None or self.best_trial is None:
            return True
        if value == self.best_value:
            return number < self.best_trial
        return value > self.best_value if self.maximize else value < self.best_value

    # -- trial life cycle --
    def ask(self, device: str) -> TrialHandle:
        """Start a trial: sample its parameters, record its device, open its MLflow run."""
        trial = self.study.ask()
        # A preset first trial (orchestrator.first_trials) keeps the trainer's default where it has no point.
        keep = trial.user_attrs.get(PRESET_DEFAULTS_ATTR) or ()
        sampled = self.plan.space.suggest(trial, self.plan.fixed_params, keep_default=keep)
        params = self.plan.trial_params(sampled)
        rerun_of = trial.user_attrs.get(RERUN_OF_ATTR)
        previous_run_id = trial.user_attrs.get(RUN_ID_ATTR)
        trial.set_user_attr(DEVICE_ATTR, device)
        trial.set_user_attr(OWNER_ATTR, self.owner)
        if self.shared:
            # Workers on other hosts are watched by heartbeat; on one host the owner's pid says it all.
            record_heartbeats(self.study, [trial_id(trial)])
        run = (
            self.tracker.start_trial(trial.number, params, device, run_id=previous_run_id, rerun_of=rerun_of)
            if self.tracker
            else None
        )
        checkpoint_dir = self.checkpoint_root / f"trial-{trial.number}" if self.checkpoint_root else None
        handle = TrialHandle(trial, params, device, run, checkpoint_dir, rerun_of=rerun_of)
        handle.run_attached = previous_run_id is not None
        if rerun_of is not None:
            self._continue_from(handle, rerun_of)
        self.in_flight[trial.number] = handle
        self.progress.running = len(self.in_flight)
        self.progress.trial_started(
            handle.number, device, self.plan.trainer.max_epochs(params), epoch=handle.epochs
        )
        return handle

    def set_device(self, handle: TrialHandle, device: str) -> None:
        """Where the trial really runs, once the backend knows (Ray places trials after they start)."""
        handle.device = device
        handle.trial.set_user_attr(DEVICE_ATTR, device)
        self.progress.trial_device(handle.number, device)
        if self.tracker and handle.run is not None:
            self.tracker.set_device(handle.run, device)

    def forget(self, handle: TrialHandle, why: str) -> None:
        """Drop a trial another process has already finished (it declared this one's owner dead)."""
        self.in_flight.pop(handle.number, None)
        self.progress.running = len(self.in_flight)
        self.progress.trial_left(handle.number)
        self.progress.say(f"trial {handle.number}: {why}; stopping it here")

    def _continue_from(self, handle: TrialHandle, number: int) -> None:
        """A re-run takes over the interrupted trial's checkpoint and its reported epochs."""
        previous = trial_by_number(self.study, number)
        if self.checkpoint_root is not None and handle.checkpoint_dir is not None:
            old = self.checkpoint_root / f"trial-{number}"
            if old.exists() and not handle.checkpoint_dir.exists():
                old.rename(handle.checkpoint_dir)
        for step, value in sorted(previous.intermediate_values.items()):
            handle.running_best = self._running_best(handle.running_best, value)
            self._record_running_best(handle, step)
            handle.known_epochs.add(step)
        handle.epochs = max(handle.known_epochs, default=0)

    def report(self, handle: TrialHandle, epoch: int, metrics: dict[str, float]) -> bool:
        """Record one epoch; True when the pruner says the trial should stop.

        An epoch the trial already reported before an interruption (a re-run replays the
        epochs its checkpoint holds) is not recorded twice.
        """
        handle.epochs = max(handle.epochs, epoch)
        handle.last_metrics = metrics
        handle.epoch_metrics[epoch] = dict(metrics)
        self.progress.epoch_reported(handle.number, epoch, metrics)
        self._attach_run_id(handle)
        if epoch in handle.known_epochs:
            return False if self.multi_objective else handle.trial.should_prune()
        handle.known_epochs.add(epoch)
        if self.tracker and handle.run is not None:
            self.tracker.log_epoch(handle.run, epoch, metrics)
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        # The trial's value is its best epoch's, so the pruner is shown the same thing: the best so
        # far. Shown each epoch's own value, it prunes a trial that peaked early (the over-fitting case
        # this product exists for) on a later, worse epoch, and throws the study's best model away.
        handle.running_best = self._running_best(handle.running_best, value)
        self._record_running_best(handle, epoch)
        if self.multi_objective:
            return False  # no pruner takes several objectives, nor does the no-progress rule
        if self.is_last_epoch(handle, epoch):
            return False  # its training is done: pruning it now would only throw its result away
        reason = self._no_progress(handle, epoch, value, metrics)
        if reason is not None:
            handle.prune_reason = reason
            return True
        return handle.trial.should_prune()

    def _record_running_best(self, handle: TrialHandle, epoch: int) -> None:
        """The first metric's best so far as the trial's intermediate value of ``epoch`` (learning curves,
        status's epochs, a re-run's replay). Optuna's ``Trial.report`` refuses a study of several objectives
        (it feeds the pruner), so there it is written to the storage directly."""
        assert handle.running_best is not None
        if self.multi_objective:
            study_storage(self.study).set_trial_intermediate_value(
                trial_id(handle.trial), epoch, handle.running_best
            )
        else:
            handle.trial.report(handle.running_best, epoch)

    def pruning_value(self, handle: TrialHandle) -> float | None:
        """What a pruner of another library (Ray's ASHA) must be shown for the trial: its running best."""
        return handle.running_best

    def _running_best(self, best: float | None, value: float) -> float:
        if best is None:
            return value
        return max(best, value) if self.maximize else min(best, value)

    def _no_progress(
        self, handle: TrialHandle, epoch: int, value: float, metrics: dict[str, float]
    ) -> str | None:
        """``no progress ...`` when the trial's first epoch scores exactly what always predicting the
        majority class scores (the trainer reports that as ``majority_<metric>``) while a finished trial
        of the study did better: a learning rate too small to move the model within its steps, say."""
        majority = metrics.get(MAJORITY_PREFIX + self.metric)
        if epoch != min(handle.known_epochs) or majority is None or not math.isfinite(majority):
            return None
        if abs(value - majority) > 1e-9 or self.best_value is None:
            return None
        if not (self.best_value > value if self.maximize else self.best_value < value):
            return None
        return (
            f"no progress: {self.metric} {value:.4g} after epoch {epoch} is the majority-class score "
            f"(trial {self.best_trial} reached {self.best_value:.4g})"
        )

    def is_last_epoch(self, handle: TrialHandle, epoch: int) -> bool:
        """True when ``epoch`` is the trial's last (pruning it then throws a finished result away)."""
        last = self.plan.trainer.max_epochs(handle.params)
        return last is not None and epoch >= last

    def end(self, handle: TrialHandle, outcome: TrialOutcome) -> None:
        """End a trial with the outcome its process (or actor) sent."""
        from orchestrator.messages import Completed, Failed, Interrupted, Pruned

        if isinstance(outcome, Completed):
            self.complete(handle, outcome.metrics)
        elif isinstance(outcome, Pruned):
            self.prune(handle, outcome.reason)
        elif isinstance(outcome, Interrupted):
            if outcome.disk_full:
                where = handle.checkpoint_dir or self.checkpoint_root or "the study's folder"
                self.request_stop(
                    StopReason.DISK_FULL,
                    f"trial {handle.number}: {outcome.reason} (checkpoints and logs under {where}); "
                    "free some space, then continue with `ftsweep resume`",
                )
            self.interrupt(handle, outcome.reason)
        elif isinstance(outcome, Failed):
            self.fail(handle, outcome.reason, outcome.traceback)
        else:
            raise TypeError(f"not a trial outcome: {outcome!r}")

    def complete(self, handle: TrialHandle, result: dict[str, float]) -> None:
        value = result.get(self.metric, handle.last_metrics.get(self.metric))
        if value is None:
            self.fail(
                handle,
                f"the trainer reported no {self.metric!r}; it reported: {', '.join(result) or 'nothing'}",
            )
            return
        if not math.isfinite(value):
            self.prune(handle, f"diverged: {self.metric} is {value}")
            return
        self._attach(handle, epochs=int(result.get("epochs_run", handle.epochs)))
        if self.multi_objective:
            values = self._objective_values(handle, result)
            missing = [metric for metric, found in zip(self.metrics, values, strict=True) if found is None]
            if missing:
                self.fail(handle, f"the trainer reported no {', '.join(map(repr, missing))}")
                return
            self.study.tell(handle.trial, [float(found) for found in values if found is not None])
        else:
            self.study.tell(handle.trial, value)
        if self._better(value, handle.number):
            previous = self.best_trial
            self.best_value, self.best_trial = value, handle.number
            self.progress.set_best(handle.number, value)
            if self.tracker:
                self.tracker.set_best(handle.number, value, handle.params)
            self._drop_checkpoint(previous)
            if not self.keep_best_checkpoint:
                self._drop_checkpoint(handle.number)
        else:
            self._drop_checkpoint(handle.number)
        self._finished(handle, "COMPLETE", value=value, summary=result)

    def _objective_values(self, handle: TrialHandle, result: dict[str, float]) -> list[float | None]:
        """Each objective's value at the trial's chosen epoch: the epoch best on the FIRST metric (the
        trainer's ``best_epoch`` when it says, else the first epoch reaching the best reported value),
        every metric read at that epoch (then the trainer's result, then its last epoch)."""
        epochs = {
            e: m for e, m in handle.epoch_metrics.items() if math.isfinite(m.get(self.metric, math.nan))
        }
        chosen: int | None = None
        said = result.get("best_epoch")
        if said is not None and int(said) in epochs:
            chosen = int(said)
        elif epochs:
            sign = -1.0 if self.maximize else 1.0
            chosen = min(epochs, key=lambda e: (sign * epochs[e][self.metric], e))
        at_epoch = epochs.get(chosen, {}) if chosen is not None else {}
        if chosen is not None:
            handle.trial.set_user_attr(BEST_EPOCH_ATTR, chosen)
        values: list[float | None] = []
        for index, metric in enumerate(self.metrics):
            found = at_epoch.get(metric)
            if found is None:
                found = result.get(metric, handle.last_metrics.get(metric))
            if index == 0 and chosen is None:
                found = result.get(metric, found)
            values.append(None if found is None else float(found))
        return values

    def prune(self, handle: TrialHandle, reason: str) -> None:
        from optuna.trial import TrialState

        reason = handle.prune_reason or reason
        self._attach(handle, reason=reason)
        self.study.tell(handle.trial, state=TrialState.PRUNED)
        value = handle.last_metrics.get(self.metric)
        self._finished(handle, "PRUNED", value=value, reason=reason, summary=handle.last_metrics)
        self._drop_checkpoint(handle.number)

    def fail(self, handle: TrialHandle, reason: str, traceback_text: str | None = None) -> None:
        from optuna.trial import TrialState

        self._attach(handle, reason=reason)
        self.study.tell(handle.trial, state=TrialState.FAIL)
        self._failed += 1
        self.first_error = self.first_error or f"trial {handle.number}: {reason}"
        self._finished(
            handle, "FAIL", reason=reason, summary=handle.last_metrics, traceback_text=traceback_text
        )
        self._drop_checkpoint(handle.number)
        if self.max_failures is not None and self._failed >= self.max_failures:
            self.request_stop(
                StopReason.MAX_FAILURES,
                f"{self._failed} trial{'' if self._failed == 1 else 's'} failed "
                f"(study.max_failures is {self.max_failures}); "
                f"first error: {self.first_error}",
            )

    def interrupt(self, handle: TrialHandle, reason: str) -> None:
        """The trial was stopped from outside; it is failed as interrupted and re-queued with its parameters.

        A trial interrupted MAX_ATTEMPTS times fails for good (a process the OOM killer keeps killing).
        """
        from optuna.trial import TrialState

        if attempt_of(handle.trial) >= MAX_ATTEMPTS:
            self.fail(handle, f"interrupted {MAX_ATTEMPTS} times; last: {reason}")
            return
        self._attach(handle, reason=f"interrupted: {reason}", interrupted=True)
        self.study.tell(handle.trial, state=TrialState.FAIL)
        # Queued at once, so that another worker (or `resume`) picks it up: never left RUNNING.
        queue_rerun(self.study, stored_trial(self.study, handle.trial))
        self.n_interrupted += 1
        self.in_flight.pop(handle.number, None)
        self.progress.running = len(self.in_flight)
        self.progress.trial_left(handle.number)
        if self.tracker and handle.run is not None:
            self.tracker.end_trial(handle.run, "INTERRUPTED", reason=reason)
        self.progress.say(
            f"trial {handle.number} interrupted after epoch {handle.epochs}; `ftsweep resume` continues it"
        )

    def _attach(
        self,
        handle: TrialHandle,
        *,
        reason: str | None = None,
        epochs: int | None = None,
        interrupted: bool = False,
    ) -> None:
        """User attributes written before ``tell`` (a finished trial's attributes cannot change)."""
        trial = handle.trial
        self._attach_run_id(handle, wait=True)
        epochs = epochs if epochs is not None else handle.epochs
        if epochs != max(handle.known_epochs, default=0):  # else the reported epochs already say it
            trial.set_user_attr(EPOCHS_ATTR, epochs)
        if reason:
            trial.set_user_attr(REASON_ATTR, reason)
        if interrupted:
            trial.set_user_attr(INTERRUPTED_ATTR, True)

    def _finished(self, handle: TrialHandle, state: str, **details: Any) -> None:
        self._counted += 1
        if state == "COMPLETE":
            self.n_complete += 1
        elif state == "PRUNED":
            self.n_pruned += 1
        else:
            self.n_failed += 1
        self.in_flight.pop(handle.number, None)
        self.progress.running = len(self.in_flight)
        if self.tracker and handle.run is not None:
            self.tracker.end_trial(handle.run, state, **details)
        reason = details.get("reason") or ""
        self.progress.trial_finished(handle.number, state, details.get("value"), reason)

    def _drop_checkpoint(self, number: int | None) -> None:
        if number is None or self.checkpoint_root is None:
            return
        shutil.rmtree(self.checkpoint_root / f"trial-{number}", ignore_errors=True)

    def result(self) -> SessionResult:
        """This session's counts, the study's best trial and why the session stopped."""
        return SessionResult(
            complete=self.n_complete,
            pruned=self.n_pruned,
            failed=self.n_failed,
            interrupted=self.n_interrupted,
            best_value=self.best_value,
            best_trial=self.best_trial,
            stopped_by=self.stop_detail,
            stop_reason=self.stop_reason,
            first_error=self.first_error,
            front=self._front() if self.multi_objective else None,
        )

    def _front(self) -> list[int]:
        from orchestrator.study import pareto_front

        return [trial.number for trial in pareto_front(self.study)]
