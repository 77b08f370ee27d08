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
