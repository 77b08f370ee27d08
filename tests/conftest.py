"""Shared fixtures: a tiny BERT saved with save_pretrained, small labelled data files, storages."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

POSITIVE = ["great", "love", "excellent", "happy", "win", "free", "bonus"]
NEGATIVE = ["bad", "hate", "awful", "sad", "lose", "late", "broken"]
FILLER = ["the", "offer", "today", "our", "store", "new", "you", "a", "for", "this", "week"]


def make_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Short texts whose label follows the majority of polar words: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        label = index % 2
        polar = POSITIVE if label else NEGATIVE
        words = rng.sample(FILLER, 4) + rng.sample(polar, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "yes" if label else "no"})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT built from a config and saved with save_pretrained."""
    from trainers.tiny_model import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny-bert")
    texts = [row["text"] for row in make_rows(64)]
    return build_tiny_model(folder, texts, num_layers=2, hidden_size=32)


@pytest.fixture
def toy_data(tmp_path: Path) -> dict[str, Path]:
    """train.csv (64 rows), val.csv (32 rows) and test.csv (32 rows) in tmp_path/data."""
    folder = tmp_path / "data"
    return {
        "train": write_csv(folder / "train.csv", make_rows(64, seed=1)),
        "validation": write_csv(folder / "val.csv", make_rows(32, seed=2)),
        "test": write_csv(folder / "test.csv", make_rows(32, seed=3)),
    }


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may reach a hub: the machine has no internet, and tests must not depend on one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


POSTGRES_URL = os.environ.get("FTSWEEP_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


def write_sweep(folder: Path, sweep: dict, name: str = "sweep.yaml") -> Path:
    """Write a sweep file (a mapping) as YAML into ``folder``."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    """The environment the ftsweep CLI runs with in tests: offline, the tests' own trainers importable."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FTSWEEP_STORAGE", "MLFLOW_TRACKING_URI")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    # No sweep report drawn in the background after each test's sweep (seconds of CPU each on CI's
    # 2 cores, and a child outliving its test's folder); tests/test_sweep_report.py turns it on.
    env["FTSWEEP_REPORT"] = "off"
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300, **env: str):
    """Run ``ftsweep ARGS`` as a real process; returns the CompletedProcess (text)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fault_sweep(name: str = "faults", n_trials: int = 4, workers: int = 2, **trainer: object) -> dict:
    """A sweep of the tests' FaultTrainer (a user trainer given by import path)."""
    return {
        "study": {
            "name": name,
            "metric": "score",
            "n_trials": n_trials,
            "sampler": {"name": "tpe", "seed": 0},
            "pruner": {"name": "none"},
            "max_failures": 100,
        },
        "trainer": {"name": "fault_trainer:FaultTrainer", "epochs": 3, **trainer},
        "search_space": {"x": {"type": "float", "low": -2.0, "high": 3.0}},
        "execution": {"workers": workers},
    }


def postgres_available() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    """PostgreSQL tests run wherever the server is; they skip only off CI with no server."""
    if postgres_available():
        return
    if os.environ.get("CI"):
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432, and CI needs it")
    pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (CI runs this test)")


def mlflow_runs(tracking_uri: str, experiment: str):
    """(parent run, child runs) of a study's experiment in a real MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [run for run in runs if run.data.tags.get("ftsweep.role") == "study"]
    children = [run for run in runs if run.data.tags.get("ftsweep.role") == "trial"]
    return parents, children, client
