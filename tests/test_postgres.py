"""The same sweep on the real PostgreSQL server: the code path is the one SQLite takes."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pytest
from conftest import POSTGRES_URL, fault_sweep, require_postgres, run_cli, write_sweep

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_four_trials_two_workers_on_postgresql(tmp_path: Path) -> None:
    require_postgres()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    sweep = fault_sweep(name, n_trials=4, workers=2)
    sweep["study"]["storage"] = POSTGRES_URL
    write_sweep(tmp_path, sweep)
    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    try:
        study = optuna.load_study(study_name=name, storage=POSTGRES_URL)
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
        status = run_cli(["status", name, "--storage", POSTGRES_URL], cwd=tmp_path)
        assert status.returncode == 0 and "4 trials: 4 complete" in status.stdout
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)
