"""Every shipped sweep file validates and plans: its data, its model and its search space."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, cli_env

from orchestrator.config import load_sweep
from orchestrator.plan import plan_sweep

SWEEP_FILES = sorted((REPO_ROOT / "examples").glob("*/*.yaml"))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_a_shipped_sweep_file_plans(path: Path) -> None:
    prepare = path.parent / "prepare.py"  # an example that generates its data and model (shapes)
    if prepare.exists():
        subprocess.run([sys.executable, str(prepare)], check=True, capture_output=True, env=cli_env())
    plan = plan_sweep(load_sweep(path))
    assert plan.space.names
    assert plan.sweep.study.metric in plan.trainer_cls.metric_names


def test_there_are_shipped_sweep_files() -> None:
    assert {p.name for p in SWEEP_FILES} >= {"sweep.yaml", "demo.yaml"}
