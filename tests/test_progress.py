"""The progress line: counts, best, and the time left, which a timeout caps."""

from __future__ import annotations

import time
from typing import Any

import pytest

from orchestrator import progress as progress_module
from orchestrator.progress import Progress

NOW = 1000.0


class _StoppedClock:
    """The ``time`` module with ``monotonic()`` stopped: the line does not depend on the test's speed."""

    def monotonic(self) -> float:
        return NOW

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture(autouse=True)
def _stopped_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "time", _StoppedClock())


def progress_after(finished: int, elapsed: float, **options) -> Progress:
    progress = Progress(study_name="s", metric="val_f1", live=False, **options)
    progress.started = NOW - elapsed
    for number in range(finished):
        progress.trial_finished(number, "COMPLETE", 0.5)
    progress.set_best(1, 0.75)
    return progress


def test_the_time_left_comes_from_the_pace_so_far():
    summary = progress_after(4, 40.0, budget=10).summary()
    assert summary.startswith(
        "4/10 done, 0 running, 0 pruned, 0 failed; best val_f1 0.7500 (trial 1); 0:40 elapsed"
    )
    assert summary.endswith(", ~1:00 left")


def test_a_timeout_caps_the_time_left():
    summary = progress_after(4, 40.0, budget=100_000, timeout_seconds=300.0).summary()
    assert summary.endswith(", 4:20 left (timeout)")  # 300 - 40 s
    assert progress_after(4, 40.0, budget=10, timeout_seconds=300.0).summary().endswith(", ~1:00 left")
