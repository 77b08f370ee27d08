"""What a study shows while it runs: a live view on a terminal, plain lines elsewhere.

The live view has one row per running trial (its number, device, epoch k/n, its latest metric),
the totals (done / running / pruned / failed of the budget, the best so far, elapsed) and an
estimate of the time left from the first finished epoch; every line fits the terminal's width.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator import progress as progress_module
from orchestrator.progress import LiveView, Progress

NOW = 1000.0


class _Clock:
    """The ``time`` module with ``monotonic()`` under the test's control: nothing depends on its speed."""

    def __init__(self) -> None:
        self.now = NOW

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    stopped = _Clock()
    monkeypatch.setattr(progress_module, "time", stopped)
    return stopped


def progress_after(finished: int, elapsed: float, **options) -> Progress:
    progress = Progress(study_name="s", metric="val_f1", live=False, **options)
    progress.started = NOW - elapsed
    for number in range(finished):
        progress.trial_finished(number, "COMPLETE", 0.5)
    progress.set_best(1, 0.75)
    return progress


def rendered(progress: Progress, width: int = 80) -> list[str]:
    """The live view as an ``width``-column terminal shows it (no colours)."""
    from rich.console import Console

    with open(os.devnull, "w", encoding="utf-8") as sink:
        console = Console(width=width, record=True, file=sink, color_system=None)
        console.print(LiveView(progress))
        return console.export_text().splitlines()


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


def two_running(clock: _Clock, budget: int = 10) -> Progress:
    """Trials 3 and 4 running on two workers, 3 epochs each; trial 3 finished its first epoch in 20 s."""
    progress = Progress(study_name="campaign", metric="val_f1", budget=budget, live=False)
    progress.trial_started(3, "cpu (1 thread)", n_epochs=3)
    progress.trial_started(4, "gpu 1", n_epochs=3)
    progress.running = 2
    clock.now += 20
    progress.epoch_reported(3, 1, {"val_f1": 0.5123, "loss": 0.7})
    return progress


def test_one_row_per_running_trial_with_its_device_epoch_and_latest_metric(clock: _Clock):
    lines = rendered(two_running(clock))
    assert lines[0] == "campaign: 0/10 trials done, 2 running, 0 pruned, 0 failed"
    header = lines[2].split()
    assert header == ["trial", "device", "epoch", "val_f1", "time"]
    assert lines[3].split() == ["3", "cpu", "(1", "thread)", "1/3", "0.5123", "0:20"]
    assert lines[4].split() == ["4", "gpu", "1", "0/3", "-", "0:20"]
    assert len(lines) == 5


def test_the_estimate_appears_with_the_first_finished_epoch_not_the_first_finished_trial(clock: _Clock):
    progress = Progress(study_name="campaign", metric="val_f1", budget=10, live=False)
    progress.trial_started(0, "cpu (1 thread)", n_epochs=3)
    progress.trial_started(1, "cpu (1 thread)", n_epochs=3)
    progress.running = 2
    clock.now += 5
    assert progress.seconds_left() is None
    assert rendered(progress)[1] == "no best yet, 0:05 elapsed, time left: after the first epoch"
    clock.now += 15
    progress.epoch_reported(0, 1, {"val_f1": 0.4})
    # 20 s an epoch: 2 + 3 epochs left in flight and 8 trials of 3 epochs, on 2 workers at once.
    assert progress.seconds_left() == pytest.approx(20 * (2 + 3 + 8 * 3) / 2)
    assert rendered(progress)[1] == "no best yet, 0:20 elapsed, ~4:50 left"


def test_after_a_finished_trial_the_estimate_uses_whole_trials(clock: _Clock):
    progress = two_running(clock)  # 20 s an epoch
    clock.now += 10
    progress.running = 1
    progress.trial_finished(4, "PRUNED", 0.3)  # pruned after 30 s: a trial takes 30 s, not 60 s
    # Trial 3's 2 epochs left at 20 s, and 8 trials not started at 30 s each, on 2 workers at once.
    assert progress.seconds_left() == pytest.approx((20 * 2 + 8 * 30) / 2)


def test_a_replayed_epoch_of_a_rerun_is_not_timed(clock: _Clock):
    progress = Progress(study_name="s", metric="val_f1", budget=2, live=False)
    progress.trial_started(0, "cpu (1 thread)", n_epochs=3, epoch=2)  # its checkpoint holds 2 epochs
    progress.epoch_reported(0, 1, {"val_f1": 0.4})
    progress.epoch_reported(0, 2, {"val_f1": 0.5})
    assert progress.seconds_left() is None
    clock.now += 30
    progress.epoch_reported(0, 3, {"val_f1": 0.6})
    assert progress.running_trials()[0].epoch == 3
    assert progress.seconds_left() == pytest.approx(30 * 3)  # one trial of 3 epochs still to start


def test_a_trainer_without_an_epoch_count_shows_the_epoch_alone(clock: _Clock):
    progress = Progress(study_name="s", metric="val_f1", budget=2, live=False)
    progress.trial_started(0, "ray", n_epochs=None)
    progress.trial_device(0, "node 10.0.0.2, gpu 0")
    progress.running = 1
    clock.now += 3
    progress.epoch_reported(0, 2, {"val_f1": 0.5})
    assert rendered(progress)[3].split() == ["0", "node", "10.0.0.2,", "gpu", "0", "2", "0.5000", "0:03"]


def test_interrupted_and_finished_trials_leave_the_table(clock: _Clock):
    progress = two_running(clock)
    progress.trial_left(3)
    progress.trial_finished(4, "FAIL", None, "it broke")
    progress.running = 0
    assert [row.number for row in progress.running_trials()] == []
    assert len(rendered(progress)) == 2  # the totals, no empty table


def test_the_wording_is_singular_for_one():
    from orchestrator.devices import Slot

    assert Slot(0, (), 1).label == "cpu (1 thread)" and Slot(0, (), 4).label == "cpu (4 threads)"
    one = Progress(study_name="one", metric="score", budget=1, live=False)
    assert one.counts_line() == "one: 0/1 trial done, 0 running, 0 pruned, 0 failed"
    two = Progress(study_name="two", metric="score", budget=2, live=False)
    assert two.counts_line() == "two: 0/2 trials done, 0 running, 0 pruned, 0 failed"


@pytest.mark.parametrize("width", [80, 60, 40, 30])
def test_every_line_fits_the_width_and_the_time_then_the_device_columns_go_first(clock: _Clock, width: int):
    progress = Progress(study_name="a-rather-long-study-name-for-a-sweep", metric="val_accuracy", budget=120)
    progress.live = False
    for number in range(100, 104):
        progress.trial_started(number, "gpu 0,1,2,3, shared by 2 (a long device label)", n_epochs=10)
    progress.running = 4
    clock.now += 3725
    progress.epoch_reported(101, 7, {"val_accuracy": 0.91234})
    progress.set_best(42, 0.93)
    lines = rendered(progress, width)
    assert all(len(line) <= width for line in lines), lines
    header = next(line for line in lines if line.lstrip().startswith("trial")).split()
    if width >= 60:
        assert header == ["trial", "device", "epoch", "val_accuracy", "time"]
    elif width >= 40:
        assert header == ["trial", "device", "epoch", "val_accuracy"]
    else:
        assert header[:2] == ["trial", "epoch"] and header[2].startswith("val_acc")  # a long name is cut
    assert any("101" in line and "7/10" in line and "0.9123" in line for line in lines)


def test_plain_output_is_one_line_per_finished_trial_and_no_escape_codes(
    clock: _Clock, capsys: pytest.CaptureFixture[str]
):
    progress = Progress(study_name="s", metric="score", budget=2)  # stderr is captured: not a terminal
    assert progress.live is False
    progress.start()
    progress.say("study 's': 2 trials (0 already finished) on 1 worker [cpu (1 thread)]")
    progress.trial_started(0, "cpu (1 thread)", n_epochs=3)
    progress.running = 1
    for epoch in (1, 2, 3):
        clock.now += 10
        progress.epoch_reported(0, epoch, {"score": 0.1 * epoch})
    progress.running = 0
    progress.trial_finished(0, "COMPLETE", 0.3)
    progress.stop()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "study 's': 2 trials (0 already finished) on 1 worker [cpu (1 thread)]",
        "[s] trial 0 complete score=0.3000  (1/2 done, 0 running, 0 pruned, 0 failed; no best yet; "
        "0:30 elapsed, ~0:30 left)",
    ]


# -- the live view in a real terminal --


def _tmux() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is not installed, and CI needs it (apt-get install tmux)")
        pytest.skip("tmux is not installed (CI runs this test)")
    return tmux


def _wait_for(condition: Any, what: str, show: Any, timeout: float = 240.0) -> Any:
    """What ``condition()`` returns once it is true; after ``timeout`` s, an error with ``show()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s; the terminal shows:\n{show()}")


@pytest.mark.slow
def test_a_sweep_in_an_80_column_terminal_shows_its_running_trials_within_80_columns(
    tmp_path: Path,
) -> None:
    from conftest import cli_env, fault_sweep, write_sweep

    tmux = _tmux()
    release = tmp_path / "release"
    sweep = fault_sweep("live", n_trials=3, workers=2, release_file=str(release), pause_before_epoch=2)
    sweep["tracking"] = {"enabled": False}
    write_sweep(tmp_path, sweep)
    (tmp_path / "run.sh").write_text(
        f'{_quote(sys.executable)} -m orchestrator.cli run sweep.yaml\necho "exit $?" > exit-code\n',
        encoding="utf-8",
    )
    env = {
        key: value for key, value in cli_env(TERM="xterm-256color").items() if key not in ("COLUMNS", "LINES")
    }
    # A server of its own (its own socket and configuration): its sessions get this environment, and
    # the pane stays readable after the sweep ends.
    (tmp_path / "tmux.conf").write_text("set -g remain-on-exit on\n", encoding="utf-8")
    server = ["-L", f"ftsweep-test-{uuid.uuid4().hex[:8]}", "-f", str(tmp_path / "tmux.conf")]
    subprocess.run(
        [
            tmux,
            *server,
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            "-s",
            "live",
            "-c",
            str(tmp_path),
            "sh run.sh",
        ],
        check=True,
        env=env,
    )

    def screen() -> list[str]:
        # -J joins lines the terminal wrapped, so a line wider than the pane shows as one long line.
        captured = subprocess.run(
            [tmux, *server, "capture-pane", "-p", "-J", "-S", "-100", "-t", "live"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [line.rstrip() for line in captured.splitlines()]

    def shown() -> str:
        return "\n".join(screen())

    try:
        # Both trials hold before their second epoch: each row shows epoch 1/3 and its score.
        def two_rows_at_epoch_1() -> list[str] | None:
            lines = screen()
            if (tmp_path / "exit-code").exists():
                raise AssertionError("the sweep ended before its trials were released:\n" + "\n".join(lines))
            return lines if sum(" 1/3 " in line for line in lines) == 2 else None

        lines = _wait_for(two_rows_at_epoch_1, "two running-trial rows at epoch 1/3", shown)
        text = "\n".join(lines)
        assert "live: 0/3 trials done, 2 running, 0 pruned, 0 failed" in text, text
        assert "elapsed, ~" in text and " left" in text, text  # an estimate from the first epochs
        header = next(line for line in lines if line.lstrip().startswith("trial "))
        assert header.split() == ["trial", "device", "epoch", "score", "time"], text
        assert "cpu (1 thread)" in text, text
        assert all(len(line) <= 80 for line in lines), text
        release.touch()
        _wait_for(lambda: (tmp_path / "exit-code").exists(), "the sweep's end", shown)
        assert (tmp_path / "exit-code").read_text().strip() == "exit 0", "\n".join(screen())
        final = screen()
        assert all(len(line) <= 80 for line in final), "\n".join(final)
        assert any(line.startswith("trial 2 complete score=") for line in final), "\n".join(final)
    finally:
        release.touch()
        subprocess.run([tmux, *server, "kill-server"], check=False, capture_output=True)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def test_the_readme_shows_both_screenshots_and_they_fit_80_columns() -> None:
    from conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    folder = REPO_ROOT / "docs" / "screenshots"
    for name in ("live-view", "status-80"):
        assert f"](docs/screenshots/{name}.png)" in readme
        assert (folder / f"{name}.png").stat().st_size > 0
        lines = (folder / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        assert lines and all(len(line) <= 80 for line in lines), name
    assert "python docs/screenshots/make_screenshots.py" in readme
    assert (folder / "make_screenshots.py").exists()
