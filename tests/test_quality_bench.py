"""Benchmark smoke tests: bench/quality.py (--quick: a tiny random BERT, a tiny shifted task, one seed) and
its data; bench/image_throughput.py --quick."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, cli_env

pytestmark = pytest.mark.slow


def test_the_quality_benchmark_runs_every_method_and_prints_its_tables(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "quality.py"),
            "--quick",
            "--json",
            str(tmp_path / "runs.json"),
        ],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for method in (
        "| shifted | default |",
        "| shifted | linear probe |",
        "| shifted | LP-FT |",
        "| shifted | sweep |",
    ):
        assert method in result.stdout
    assert "| shifted | sweep − default |" in result.stdout
    assert "best trial" in result.stdout
    assert (tmp_path / "runs.json").exists()


def test_the_shifted_task_is_regenerated_from_its_seed(tmp_path: Path) -> None:
    """The committed files are what the generator writes for seed 0; the stated shift holds in them."""
    import csv

    subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "shifted" / "make_data.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("train", "val", "test"):
        committed = (REPO_ROOT / "examples" / "shifted" / f"{name}.csv").read_bytes()
        assert (tmp_path / f"{name}.csv").read_bytes() == committed, name

    def rows(name: str) -> list[dict[str, str]]:
        with open(tmp_path / f"{name}.csv", newline="", encoding="utf-8") as stream:
            return list(csv.DictReader(stream))

    channel_of = {"interested": "sms", "not_interested": "email", "question": "app"}

    def agreement(name: str) -> float:
        data = rows(name)
        return sum(row["text"].startswith(f"via {channel_of[row['label']]}:") for row in data) / len(data)

    assert (
        agreement("train") > 0.7 and agreement("test") < 0.5
    )  # the channel predicts the label in training only
    train_texts = " ".join(row["text"] for row in rows("train"))
    assert "put me down for one" not in train_texts and "count me in" in train_texts


def test_the_image_throughput_benchmark_runs_both_trainers_and_prints_its_table(tmp_path: Path) -> None:
    """bench/image_throughput.py --quick: one image trial and one transformers.Trainer run, one table."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "image_throughput.py"), "--quick"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| ftsweep |" in result.stdout
    assert "| transformers.Trainer |" in result.stdout
    assert "Training throughput ratio (ftsweep / Trainer)" in result.stdout
