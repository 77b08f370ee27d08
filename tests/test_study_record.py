"""The sweep record a study keeps (issue 16): out of the way of `optuna studies`, still read from old studies.

ftsweep keeps the sweep file with its study so that `status`, `best`, `resume` and `final` need only the
study's name. It is a study *system* attribute: `optuna studies` prints every study user attribute as
one column, and the whole sweep file there made each line about 900 characters wide. A study made by an
earlier ftsweep (the record as a user attribute) still reads, resumes and reports, and its next
`resume` moves the record.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import POSTGRES_URL, cli_env, fault_sweep, require_postgres, run_cli, write_sweep

from orchestrator import store_adapter
from orchestrator.study import SWEEP_ATTR, VERSION_ATTR, sweep_record

#: Optuna 5's `optuna studies` table: `| name | direction | n_trials | datetime_start |`, where
#: direction is `('MAXIMIZE',)` (13), n_trials is 8 wide and datetime_start 19, plus the borders:
#: 53 columns and the longest study name (at least 4, the header's). A user_attrs column would add more.
FIXED_COLUMNS = 53


def optuna_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real `optuna` command of this environment."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "optuna"), *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def listed_names(table: str) -> list[str]:
    """The study names in `optuna studies`' table (the rows between its last two border lines)."""
    rows = [line for line in table.splitlines() if line.startswith("|")][1:]
    return [row.split("|")[1].strip() for row in rows]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_optuna_studies_is_narrow_and_the_study_names_its_metric(tmp_path: Path, database: str) -> None:
    if database == "postgresql":
        require_postgres()
        storage = POSTGRES_URL
    else:
        storage = f"sqlite:///{tmp_path / 'ftsweep.db'}"
    name = f"narrow-{uuid.uuid4().hex[:6]}"
    sweep = fault_sweep(name, n_trials=2, workers=1)
    sweep["study"]["storage"] = storage
    write_sweep(tmp_path, sweep)
    try:
        result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr

        study = optuna.load_study(study_name=name, storage=storage)
        assert study.user_attrs == {}
        assert study.metric_names == ["score"]  # optuna-dashboard and the optuna CLI name the metric
        assert store_adapter.study_system_attrs(study)[SWEEP_ATTR] == sweep_record(study)
        assert sweep_record(study)["sweep"]["study"]["n_trials"] == 2

        listed = optuna_cli("studies", "--storage", storage, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        names = listed_names(listed.stdout)
        assert name in names
        assert "user_attrs" not in listed.stdout  # no study of the store has one
        bound = FIXED_COLUMNS + max(4, *map(len, names))
        lines = listed.stdout.splitlines()
        assert all(len(line) <= bound for line in lines), listed.stdout
        if database == "sqlite":  # the store holds this study alone: 53 + 13 columns
            assert all(len(line) <= 80 for line in lines), listed.stdout
    finally:
        if database == "postgresql" and name in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=name, storage=storage)


def make_old_style(database: Path, name: str) -> dict:
    """Turn a study into what an earlier ftsweep left: the record and version as study user attributes."""
    storage = f"sqlite:///{database}"
    record = sweep_record(optuna.load_study(study_name=name, storage=storage))
    with sqlite3.connect(database) as connection:
        connection.execute(
            "DELETE FROM study_system_attributes WHERE key IN (?, ?) "
            "AND study_id = (SELECT study_id FROM studies WHERE study_name = ?)",
            (SWEEP_ATTR, VERSION_ATTR, name),
        )
    study = optuna.load_study(study_name=name, storage=storage)
    study.set_user_attr(SWEEP_ATTR, record)  # as the earlier create_study / resume did
    study.set_user_attr(VERSION_ATTR, "0.1.0")
    assert SWEEP_ATTR not in store_adapter.study_system_attrs(study)
    return record


def old_study(folder: Path) -> tuple[Path, dict]:
    """A study of one finished trial as an earlier ftsweep left it; (its SQLite file, its record)."""
    write_sweep(folder, fault_sweep("old", n_trials=1, workers=1))
    result = run_cli(["run", "sweep.yaml"], cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "ftsweep.db", make_old_style(folder / "ftsweep.db", "old")


def test_a_study_an_earlier_ftsweep_made_still_reads_in_every_view(tmp_path: Path) -> None:
    from orchestrator.report import best_as_sweep, best_summary
    from orchestrator.status import read_status
    from orchestrator.storage import StoreLocation
    from orchestrator.studies import list_studies
    from orchestrator.study import stored_sweep

    database, record = old_study(tmp_path)
    study = optuna.load_study(study_name="old", storage=f"sqlite:///{database}")
    assert sweep_record(study) == record  # the one reader finds the old place
    assert stored_sweep(study).trainer.name == "fault_trainer:FaultTrainer"  # resume, best and final
    assert best_summary(study)["metric"] == "score"
    assert best_as_sweep(study)[0]["study"]["name"] == "old-best"
    location = StoreLocation.resolve(f"sqlite:///{database}")
    assert read_status(location, "old").budget == 1
    (row,) = list_studies(location)
    assert (row.name, row.done, row.budget, row.metric) == ("old", 1, 1, "score")

    wide = optuna_cli("studies", "--storage", "sqlite:///ftsweep.db", cwd=tmp_path)
    assert wide.returncode == 0, wide.stderr
    assert max(map(len, wide.stdout.splitlines())) > 300  # what issue 16 saw (about 900 with a real sweep)


@pytest.mark.slow
def test_a_study_an_earlier_ftsweep_made_resumes_and_then_keeps_its_record_out_of_optuna_studies(
    tmp_path: Path,
) -> None:
    database, _ = old_study(tmp_path)
    final = run_cli(["final", "old"], cwd=tmp_path)  # reads the old record: it names the study's trainer
    assert final.returncode == 2 and "fault_trainer:FaultTrainer" in final.stderr, final.stderr

    resumed = run_cli(["resume", "old", "--n-trials", "2"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "2/2 trials finished" in resumed.stderr
    study = optuna.load_study(study_name="old", storage=f"sqlite:///{database}")
    assert study.user_attrs == {}  # moved: the new record, and the version the study was made with
    system = store_adapter.study_system_attrs(study)
    assert system[SWEEP_ATTR]["sweep"]["study"]["n_trials"] == 2 and system[VERSION_ATTR] == "0.1.0"
    assert study.metric_names == ["score"]
    narrow = optuna_cli("studies", "--storage", "sqlite:///ftsweep.db", cwd=tmp_path)
    assert narrow.returncode == 0, narrow.stderr
    assert listed_names(narrow.stdout) == ["old"]
    assert all(len(line) <= FIXED_COLUMNS + 4 for line in narrow.stdout.splitlines()), narrow.stdout
    status = run_cli(["status", "old", "--format", "plain"], cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "budget 2" in status.stdout.replace("\n", " ")
    again = run_cli(["resume", "old"], cwd=tmp_path)  # and it resumes from the new place
    assert again.returncode == 0, again.stderr
    assert "to 2 trials (the budget stored with the study)" in again.stderr


def test_a_study_ftsweep_did_not_make_has_no_record(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="plain", storage=f"sqlite:///{tmp_path / 'plain.db'}")
    assert sweep_record(study) is None
    status = run_cli(["resume", "plain", "--storage", "sqlite:///plain.db"], cwd=tmp_path)
    assert status.returncode == 2 and "not created by ftsweep" in status.stderr, status.stderr
