"""Progress on the terminal while a study runs.

On a terminal: a live view (rich) with one row per running trial (its number, device, epoch
k/n and the latest value of the study's metric) under two lines of totals: trials done / running
/ pruned / failed of the budget, the best value so far, elapsed time and an estimate of the time
left, which appears once the first epoch of any trial has finished. Every line fits the terminal's
width: narrow terminals lose the time and device columns before anything else is cut.

Elsewhere (a pipe, a log file, CI): plain text, one line per finished trial, no escape codes.

The session (:class:`orchestrator.session.StudySession`) is the only writer of the study; this
display only listens to it: :meth:`Progress.trial_started`, :meth:`Progress.trial_device`,
:meth:`Progress.epoch_reported`, :meth:`Progress.trial_finished` and :meth:`Progress.trial_left`.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: The narrowest device column shown: below it, first the time column and then the device column go.
DEVICE_MIN_WIDTH = 8


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _fill(phrases: list[str], width: int) -> list[str]:
    """Phrases joined by ", " into as few lines of at most ``width`` as they fit (a longer phrase is cut
    by the caller)."""
    lines: list[str] = []
    for phrase in phrases:
        if lines and len(lines[-1]) + 2 + len(phrase) + 1 <= width:
            lines[-1] += ", " + phrase
        else:
            if lines:
                lines[-1] += ","
            lines.append(phrase)
    return lines


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@dataclass
class RunningTrial:
    """What the live view knows of one trial in flight.

    Attributes:
        n_epochs: the epochs it is to run (from its parameters), or None when the trainer does not say.
        epoch: the last epoch it reported (0 before its first).
        value: the study's metric at that epoch, or None.
    """

    number: int
    device: str
    n_epochs: int | None = None
    epoch: int = 0
    value: float | None = None
    started: float = 0.0
    last_report: float = 0.0

    @property
    def epochs_left(self) -> int | None:
        return None if self.n_epochs is None else max(0, self.n_epochs - self.epoch)


@dataclass
class Progress:
    """Counts of one session of a study and how they are shown.

    Attributes:
        budget: finished trials the study is to have in all.
        already: finished trials it had when this session began.
        live: a live view (True), plain lines (False), or None: live when stderr is a terminal.
        timeout_seconds: the session's time limit, if any: the time left never shows beyond it.
    """

    study_name: str
    metric: str
    budget: int
    already: int = 0
    live: bool | None = None
    timeout_seconds: float | None = None
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    started: float = field(default_factory=lambda: time.monotonic())
    _live: Any = None
    _console: Any = None

    def __post_init__(self) -> None:
        from rich.console import Console

        self._console = Console(stderr=True, highlight=False)
        if self.live is None:
            self.live = self._console.is_terminal
        self._rows: dict[int, RunningTrial] = {}
        self._lock = threading.Lock()  # rich's refresh thread renders while the driver's thread updates
        self._epoch_seconds = 0.0  # time spent in the epochs timed so far, and how many there were
        self._n_epochs_timed = 0
        self._trial_seconds = 0.0  # time spent in the trials this view saw from start to end
        self._n_trials_timed = 0
        self._peak_running = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    # -- the display's life --
    def start(self) -> None:
        if self.live:
            from rich.live import Live

            self._live = Live(
                LiveView(self),
                console=self._console,
                refresh_per_second=4,
                transient=False,
                redirect_stdout=False,
            )
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def say(self, message: str) -> None:
        """A line above the live view (or a plain line)."""
        if self.live:
            from rich.markup import escape

            self._console.print(escape(message))
        else:
            print(message, file=sys.stderr, flush=True)

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    # -- what the session tells it --
    def trial_started(self, number: int, device: str, n_epochs: int | None = None, epoch: int = 0) -> None:
        """A trial is in flight on ``device``; ``epoch``: epochs it already has (a re-run's checkpoint)."""
        now = time.monotonic()
        with self._lock:
            self._rows[number] = RunningTrial(number, device, n_epochs, epoch, None, now, now)
            self._peak_running = max(self._peak_running, len(self._rows))

    def trial_device(self, number: int, device: str) -> None:
        """Where the trial really runs, once the backend knows."""
        with self._lock:
            if number in self._rows:
                self._rows[number].device = device

    def epoch_reported(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        """The trial finished ``epoch``; an epoch a re-run replays updates nothing but the value."""
        now = time.monotonic()
        with self._lock:
            row = self._rows.get(number)
            if row is None:
                return
            value = metrics.get(self.metric)
            if value is not None:
                row.value = float(value)
            if epoch > row.epoch:
                self._epoch_seconds += now - row.last_report
                self._n_epochs_timed += epoch - row.epoch
                row.epoch, row.last_report = epoch, now

    def trial_left(self, number: int) -> None:
        """The trial stopped without finishing (interrupted, or finished by another process)."""
        with self._lock:
            self._rows.pop(number, None)

    def trial_finished(self, number: int, state: str, value: float | None, detail: str = "") -> None:
        if state == "COMPLETE":
            self.complete += 1
        elif state == "PRUNED":
            self.pruned += 1
        elif state == "FAIL":
            self.failed += 1
        with self._lock:
            row = self._rows.pop(number, None)
            if row is not None:
                self._trial_seconds += time.monotonic() - row.started
                self._n_trials_timed += 1
        shown = f"{self.metric}={value:.4f}" if value is not None else ""
        line = f"trial {number} {state.lower()} {shown} {detail}".rstrip()
        if self._live is not None:
            from rich.markup import escape

            self._console.print(escape(line))
            self.refresh()
        else:
            print(f"[{self.study_name}] {line}  ({self.summary()})", file=sys.stderr, flush=True)

    def set_best(self, number: int, value: float) -> None:
        self.best_trial, self.best_value = number, value

    # -- what it shows --
    def running_trials(self) -> list[RunningTrial]:
        """The trials in flight, by number (copies: safe to read while trials report)."""
        with self._lock:
            return [RunningTrial(**vars(row)) for _, row in sorted(self._rows.items())]

    def seconds_left(self) -> float | None:
        """An estimate of the time until the budget is done, or None before there is anything to go on.

        Per epoch once one has finished: the epochs left (of the running trials, and of the trials
        not started yet at the mean epochs per trial) at the mean time per epoch, spread over the
        trials running at once. A trial that finished measures a whole trial instead, pruning and
        model loading included. With neither (a trainer that reports no epoch count), the pace of
        the finished trials so far.
        """
        elapsed = time.monotonic() - self.started
        done = self.already + self.finished
        with self._lock:
            rows = list(self._rows.values())
            n_epochs_timed, epoch_seconds = self._n_epochs_timed, self._epoch_seconds
            n_trials_timed, trial_seconds = self._n_trials_timed, self._trial_seconds
            parallel = max(1, self._peak_running, len(rows))
        not_started = max(0, self.budget - done - max(self.running, len(rows)))
        per_epoch = epoch_seconds / n_epochs_timed if n_epochs_timed else None
        known = [row.n_epochs for row in rows if row.n_epochs is not None]
        per_trial: float | None = None
        if n_trials_timed:
            per_trial = trial_seconds / n_trials_timed
        elif per_epoch is not None and known:
            per_trial = per_epoch * sum(known) / len(known)
        if per_trial is not None:
            work = not_started * per_trial
            for row in rows:
                if per_epoch is not None and row.epochs_left is not None:
                    work += per_epoch * row.epochs_left
                else:
                    work += max(0.0, per_trial - (time.monotonic() - row.started))
            return work / parallel
        if self.finished and done < self.budget:
            return elapsed / self.finished * (self.budget - done)
        return None

    def time_left(self) -> str:
        """``~12:40 left``, ``4:20 left (timeout)``, or "" when there is no estimate yet."""
        left = self.seconds_left()
        done = self.already + self.finished
        if left is None or done >= self.budget:
            return ""
        elapsed = time.monotonic() - self.started
        if self.timeout_seconds is not None and left > self.timeout_seconds - elapsed:
            return f"{_clock(max(0.0, self.timeout_seconds - elapsed))} left (timeout)"
        return f"~{_clock(left)} left"

    def best(self) -> str:
        if self.best_value is None:
            return "no best yet"
        return f"best {self.metric} {self.best_value:.4f} (trial {self.best_trial})"

    def summary(self) -> str:
        """The totals as one line (the plain output's, after each finished trial)."""
        done = self.already + self.finished
        elapsed = time.monotonic() - self.started
        left = self.time_left()
        return (
            f"{done}/{self.budget} done, {self.running} running, {self.pruned} pruned, {self.failed} failed; "
            f"{self.best()}; {_clock(elapsed)} elapsed" + (f", {left}" if left else "")
        )

    def counts_line(self) -> str:
        """``study: 3/20 trials done, 2 running, 1 pruned, 0 failed`` (the live view's first line)."""
        done = self.already + self.finished
        trials = "trial" if self.budget == 1 else "trials"
        return (
            f"{self.study_name}: {done}/{self.budget} {trials} done, {self.running} running, "
            f"{self.pruned} pruned, {self.failed} failed"
        )

    def times_line(self) -> str:
        """``best val_f1 0.5641 (trial 2), 1:23 elapsed, ~12:40 left`` (the live view's second line)."""
        elapsed = time.monotonic() - self.started
        left = self.time_left() or (
            "time left: after the first epoch" if self.already + self.finished < self.budget else ""
        )
        return f"{self.best()}, {_clock(elapsed)} elapsed" + (f", {left}" if left else "")


class LiveView:
    """The live view of a :class:`Progress` as a rich renderable, laid out for the width it is given."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.text import Text

        for line in (self.progress.counts_line(), self.progress.times_line()):
            for part in _fill(line.split(", "), options.max_width):
                yield Text(part, no_wrap=True, overflow="ellipsis")
        rows = self.progress.running_trials()
        if rows:
            yield self.table(rows, options.max_width)

    def table(self, rows: list[RunningTrial], width: int) -> Any:
        """One row per running trial, within ``width``: the time column goes first, then the device
        column (cut short with an ellipsis before it goes)."""
        from rich.table import Table

        now = time.monotonic()
        metric = self.progress.metric
        columns: dict[str, list[str]] = {"trial": [], "device": [], "epoch": [], metric: [], "time": []}
        for row in rows:
            columns["trial"].append(str(row.number))
            columns["device"].append(row.device)
            columns["epoch"].append(
                f"{row.epoch}/{row.n_epochs}" if row.n_epochs is not None else str(row.epoch)
            )
            columns[metric].append(_value(row.value))
            columns["time"].append(_clock(now - row.started))
        widths = {name: max(len(name), *(len(cell) for cell in cells)) for name, cells in columns.items()}
        widths[metric] = min(widths[metric], max(6, width // 3))
        shown = ["trial", "device", "epoch", metric, "time"]
        for optional in ("time", "device"):
            others = sum(widths[name] for name in shown if name != "device") + 2 * (len(shown) - 1)
            if width - others >= DEVICE_MIN_WIDTH:
                break
            shown.remove(optional)
        device_width = width - sum(widths[n] for n in shown if n != "device") - 2 * (len(shown) - 1)
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1))
        for name in shown:
            if name == "device":
                table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=device_width)
            else:
                table.add_column(name, justify="right", no_wrap=True, overflow="ellipsis", width=widths[name])
        for index in range(len(rows)):
            table.add_row(*(columns[name][index] for name in shown))
        return table
