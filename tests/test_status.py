"""`ftsweep status` reads Optuna's tables directly; it must agree with Optuna's own API."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import run_cli
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from orchestrator.errors import StudyNotFound
from orchestrator.status import RICH_ROWS, read_status, render_plain, render_status


def build_study(url: str, n: int) -> optuna.Study:
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.set_user_attr(
        "ftsweep:sweep", {"sweep": {"study": {"metric": "val_f1", "n_trials": n + 5}}, "base_dir": "/"}
    )
    distributions = {
        "lr": FloatDistribution(1e-5, 1.0, log=True),
        "depth": IntDistribution(0, 6),
        "reg": CategoricalDistribution(["none", "l1", "l2sp"]),
    }
    for number in range(n):
        state = [
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL,
        ][number % 3]
        study.add_trial(
            optuna.trial.create_trial(
                params={
                    "lr": 1e-4 * (1 + number % 50),
                    "depth": number % 7,
                    "reg": ["none", "l1", "l2sp"][number % 3],
                },
                distributions=distributions,
                value=number / 100 if state != optuna.trial.TrialState.FAIL else None,
                state=state,
                intermediate_values={1: 0.1, 2: 0.2},
                user_attrs={"reason": "diverged"}
                if state == optuna.trial.TrialState.PRUNED
                else {"epochs": 2},
            )
        )
    return study


def test_the_table_agrees_with_optunas_api(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = build_study(url, 30)
    data = read_status(url, "s")
    assert data.total == 30 and data.budget == 35 and data.metric == "val_f1"
    assert data.counts == {"COMPLETE": 10, "PRUNED": 10, "FAIL": 10}
    assert (data.best_trial, data.best_value) == (study.best_trial.number, study.best_value)
    for row, trial in zip(data.rows, study.trials, strict=True):
        assert row["number"] == trial.number and row["state"] == trial.state.name
        assert row["params"] == trial.params  # categorical choices and ints decoded
        assert row["value"] == trial.value
        assert row["epochs"] == 2
        assert row["reason"] == trial.user_attrs.get("reason", "")
    assert "30 trials: 10 complete, 10 pruned, 10 fail; budget 35; best val_f1" in str(
        render_status(data).caption
    )


def test_last_and_the_default_window(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    build_study(url, 250)
    assert [row["number"] for row in read_status(url, "s", last=5).rows] == [245, 246, 247, 248, 249]
    default = read_status(url, "s")
    assert len(default.rows) == 200 and default.rows[0]["number"] == 50
    assert "showing the last 200" in str(render_status(default).caption)
    assert len(read_status(url, "s", show_all=True).rows) == 250


def test_an_unknown_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    build_study(url, 1)
    with pytest.raises(StudyNotFound, match="studies there: s"):
        read_status(url, "t")


def test_plain_text_has_every_row_aligned(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    build_study(url, 12)
    data = read_status(url, "s")
    lines = render_plain(data).splitlines()
    assert lines[0] == "study s"
    assert lines[1].split() == ["trial", "state", "val_f1", "epochs", "duration", "params", "reason"]
    assert lines[-1] == str(render_status(data).caption)
    rows = lines[2:-1]
    assert [line.split()[0] for line in rows] == [str(number) for number in range(12)]
    assert rows[1].split()[:4] == ["1", "pruned", "0.0100", "2"] and rows[1].endswith("reg=l1    diverged")
    assert len({line.index("lr=") for line in rows}) == 1  # the params column starts at one place


def test_a_large_table_prints_as_plain_text(tmp_path: Path) -> None:
    build_study(f"sqlite:///{tmp_path / 's.db'}", RICH_ROWS + 5)
    # A wide terminal: at 80 columns the table is the compact form (tests/test_first_hour.py).
    result = run_cli(["status", "s", "--storage", "sqlite:///s.db", "--all"], cwd=tmp_path, COLUMNS="200")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == RICH_ROWS + 5 + 3 and "│" not in result.stdout
    assert lines[-1].startswith(f"{RICH_ROWS + 5} trials: ")
    small = run_cli(
        ["status", "s", "--storage", "sqlite:///s.db", "--last", "3"], cwd=tmp_path, COLUMNS="200"
    )
    assert "│" in small.stdout and "showing the last 3" in small.stdout
