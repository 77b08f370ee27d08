"""Where a study writes: beside the store actually opened, never outside its run folder, and fast failures.

Issue 9 item 3 (a moved store resumed with --storage), issue 12 items 3 (study names as paths),
6 (a copied study), 9 (slow failures) and 11 (a deleted mlflow.db). Real CLI processes throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env, run_cli, write_sweep


def noop_sweep(name: str, n_trials: int = 1, **sections: object) -> dict:
    sweep: dict = {
        "study": {
            "name": name,
            "metric": "score",
            "n_trials": n_trials,
            "sampler": {"name": "random", "seed": 0},
            "pruner": {"name": "none"},
        },
        "trainer": {"name": "noop", "epochs": 2},
        "search_space": {"x": {"type": "float", "low": -2.0, "high": 3.0}},
        "execution": {"workers": 1},
    }
    sweep.update(sections)
    return sweep


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``: (size, mtime in ns); any write changes it."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size if path.is_file() else 0, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
    }


def stored_sweep(database: Path, study: str) -> dict:
    with sqlite3.connect(database) as connection:
        (value,) = connection.execute(
            "SELECT a.value_json FROM study_system_attributes a JOIN studies s USING (study_id) "
            "WHERE s.study_name = ? AND a.key = 'ftsweep:sweep'",
            (study,),
        ).fetchone()
    return json.loads(value)


def n_mlflow_runs(database: Path, experiment: str) -> int:
    with sqlite3.connect(database) as connection:
        return connection.execute(
            "SELECT COUNT(*) FROM runs r JOIN experiments e USING (experiment_id) WHERE e.name = ?",
            (experiment,),
        ).fetchone()[0]


def test_resume_of_a_moved_store_with_storage_writes_beside_the_file_opened(tmp_path: Path) -> None:
    """Issue 9: the work folder, checkpoints and hints came from the URL stored at creation."""
    orig = tmp_path / "orig"
    write_sweep(orig, noop_sweep("moved"))
    assert run_cli(["run", "sweep.yaml"], cwd=orig).returncode == 0
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(orig, moved)

    result = run_cli(
        ["resume", "moved", "--storage", "sqlite:///elsewhere/moved/ftsweep.db", "--n-trials", "2"],
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert not orig.exists(), "resume recreated the old folder"
    work = moved / "ftsweep-runs" / "moved"
    assert (work / "logs" / "trial-1.log").is_file()
    assert (work / "checkpoints").is_dir()
    assert f"storage sqlite:///{moved / 'ftsweep.db'}" in result.stderr  # the start-up line
    assert f"--storage sqlite:///{moved / 'ftsweep.db'}" in result.stderr  # the "see it with" hint
    # The URL actually opened is recorded, and the MLflow file that sat beside the store followed it.
    stored = stored_sweep(moved / "ftsweep.db", "moved")
    assert stored["sweep"]["study"]["storage"] == f"sqlite:///{moved / 'ftsweep.db'}"
    assert stored["sweep"]["tracking"]["mlflow_uri"] == f"sqlite:///{moved / 'mlflow.db'}"
    assert n_mlflow_runs(moved / "mlflow.db", "moved") == 3  # the parent and both trials


def test_resuming_a_copied_study_writes_into_the_copy_only(tmp_path: Path) -> None:
    """Issue 12 item 6: `cp -a orig copy; cd copy; ftsweep resume` wrote its run, log, checkpoint in orig/."""
    orig, copy = tmp_path / "orig", tmp_path / "copy"
    write_sweep(orig, noop_sweep("copied", n_trials=2))
    assert run_cli(["run", "sweep.yaml"], cwd=orig).returncode == 0
    shutil.copytree(orig, copy, symlinks=True)
    before = tree(orig)

    result = run_cli(["resume", "copied", "--n-trials", "4"], cwd=copy)

    assert result.returncode == 0, result.stderr
    assert tree(orig) == before, "resuming the copy changed the original"
    assert (copy / "ftsweep-runs" / "copied" / "logs" / "trial-3.log").is_file()
    assert n_mlflow_runs(copy / "mlflow.db", "copied") == 5
    with sqlite3.connect(copy / "mlflow.db") as connection:
        locations = [row[0] for row in connection.execute("SELECT artifact_uri FROM runs")]
        locations += [row[0] for row in connection.execute("SELECT artifact_location FROM experiments")]
    assert all(not location.startswith(orig.as_uri()) for location in locations), locations


@pytest.mark.parametrize("name", ["../../escape", "ABSOLUTE"])
def test_a_study_name_never_becomes_a_path_outside_the_run_folder(tmp_path: Path, name: str) -> None:
    """Issue 12 item 3: names are percent-encoded into one folder name (documented in the README)."""
    work = tmp_path / "deep" / "work"
    if name == "ABSOLUTE":
        name = str(tmp_path / "abs-escape")
    write_sweep(work, noop_sweep(name, execution={"workers": 1, "checkpoint_dir": "ckpt"}))
    outside_before = {path for path in tmp_path.rglob("*") if work not in path.parents and path != work}

    result = run_cli(["run", "sweep.yaml"], cwd=work)

    assert result.returncode == 0, result.stderr
    outside_after = {path for path in tmp_path.rglob("*") if work not in path.parents and path != work}
    assert outside_after == outside_before, f"written outside {work}: {outside_after - outside_before}"
    runs = list((work / "ftsweep-runs").iterdir())
    assert len(runs) == 1 and "/" not in runs[0].name and not runs[0].name.startswith(".")
    assert (runs[0] / "logs" / "trial-0.log").is_file()
    assert [path.name for path in (work / "ckpt").iterdir()] == [runs[0].name]
    assert [path.name for path in (work / "mlartifacts").iterdir()] == [runs[0].name]


def test_an_unreachable_mlflow_server_fails_at_once_with_one_line_and_creates_nothing(tmp_path: Path) -> None:
    """Issue 12 item 9: 268 s of MLflow's retries before the error."""
    write_sweep(tmp_path, noop_sweep("unreachable", tracking={"mlflow_uri": "http://127.0.0.1:9"}))

    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path, timeout=120)

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert "tracking.mlflow_uri http://127.0.0.1:9: cannot reach 127.0.0.1:9" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sweep.yaml"]


def test_an_mlflow_file_in_a_read_only_folder_fails_at_once_with_one_line(tmp_path: Path) -> None:
    """Issue 12 item 9: 126 s of lock timeouts before the error."""
    if os.geteuid() == 0:
        folder = Path("/sys")  # root writes anywhere but on a read-only file system; sysfs takes no new files
    else:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
    write_sweep(tmp_path, noop_sweep("read-only", tracking={"mlflow_uri": f"sqlite:///{folder}/mlflow.db"}))

    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path, timeout=120)

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "is not writable" in result.stderr
    assert not (tmp_path / "ftsweep.db").exists() and not (tmp_path / "ftsweep-runs").exists()


def _complete_trials(database: Path) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as connection:
            return connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_deleting_mlflow_db_mid_run_stops_the_study_and_resume_continues(tmp_path: Path) -> None:
    """Issue 12 item 11: the runs logged after the deletion went into the deleted file, without a word."""
    sweep = noop_sweep("deleted", n_trials=40)
    sweep["trainer"] = {"name": "noop", "epochs": 2, "sleep_seconds": 0.5}
    write_sweep(tmp_path, sweep)
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", "sweep.yaml"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while _complete_trials(tmp_path / "ftsweep.db") < 1:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "no trial finished within 300 s"
            time.sleep(0.2)
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"mlflow.db{suffix}").unlink(missing_ok=True)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 2, stderr
    assert "mlflow.db was deleted while the study ran" in stderr
    assert "continue with: ftsweep resume deleted" in stderr
    finished = _complete_trials(tmp_path / "ftsweep.db")
    assert finished < 40

    resumed = run_cli(["resume", "deleted"], cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "40/40 trials finished" in resumed.stderr
    # A new MLflow store holds the parent run and every trial the resume ran.
    assert n_mlflow_runs(tmp_path / "mlflow.db", "deleted") >= 1 + 40 - finished
