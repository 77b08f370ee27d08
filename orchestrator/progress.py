"""Progress on the terminal while a study runs.

On a terminal: a live line (rich) with trials done / running / pruned / failed, the best
value so far, elapsed and estimated time left. Elsewhere (a log file, CI): one plain line
per finished trial.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Progress:
    """Counts of one session of a study and how they are shown.

    Attributes:
        budget: finished trials the study is to have in all.
        already: finished trials it had when this session began.
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
    started: float = field(default_factory=time.monotonic)
    _live: Any = None
    _console: Any = None

    def __post_init__(self) -> None:
        from rich.console import Console

        self._console = Console(stderr=True, highlight=False)
        if self.live is None:
            self.live = self._console.is_terminal

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    def start(self) -> None:
        if self.live:
            from rich.live import Live

            self._live = Live(self._render(), console=self._console, refresh_per_second=4, transient=False)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    def say(self, message: str) -> None:
        """A line above the live display (or a plain line)."""
        from rich.markup import escape

        self._console.print(escape(message))

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def trial_finished(self, number: int, state: str, value: float | None, detail: str = "") -> None:
        if state == "COMPLETE":
            self.complete += 1
        elif state == "PRUNED":
            self.pruned += 1
        elif state == "FAIL":
            self.failed += 1
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

    def summary(self) -> str:
        done = self.already + self.finished
        best = (
            f"best {self.metric} {self.best_value:.4f} (trial {self.best_trial})"
            if self.best_value is not None
            else "no best yet"
        )
        elapsed = time.monotonic() - self.started
        remaining = self.budget - done
        eta = ""
        if self.finished and remaining > 0:
            left = elapsed / self.finished * remaining
            if self.timeout_seconds is not None and left > self.timeout_seconds - elapsed:
                eta = f", {_clock(max(0.0, self.timeout_seconds - elapsed))} left (timeout)"
            else:
                eta = f", ~{_clock(left)} left"
        return (
            f"{done}/{self.budget} done, {self.running} running, {self.pruned} pruned, {self.failed} failed; "
            f"{best}; {_clock(elapsed)} elapsed{eta}"
        )

    def _render(self) -> Any:
        from rich.text import Text

        return Text(f"{self.study_name}: {self.summary()}")
