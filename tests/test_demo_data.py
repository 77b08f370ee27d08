"""The campaign demo data: the committed CSVs are what make_data.py writes with its defaults."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

CAMPAIGN = Path(__file__).resolve().parents[1] / "examples" / "campaign"
FILES = ["train.csv", "val.csv", "test.csv"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("campaign")
    result = subprocess.run(
        [sys.executable, str(CAMPAIGN / "make_data.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 3, result.stdout
    return out


@pytest.mark.parametrize("name", FILES)
def test_committed_files_are_reproduced(generated: Path, name: str) -> None:
    assert (generated / name).read_bytes() == (CAMPAIGN / name).read_bytes()


@pytest.mark.parametrize("name", FILES)
def test_rows_are_well_formed_and_imbalanced(name: str) -> None:
    with open(CAMPAIGN / name, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["text", "label"]
    body = rows[1:]
    assert body
    assert all(len(row) == 2 for row in body)
    assert ["text", "label"] not in body
    assert all(row[0].strip() for row in body)
    assert all(8 <= len(row[0].split()) <= 25 for row in body)
    assert {row[1] for row in body} == {"responded", "ignored"}
    share = sum(row[1] == "responded" for row in body) / len(body)
    assert 0.2 <= share <= 0.35


def test_no_text_is_shared_between_splits() -> None:
    texts = []
    for name in FILES:
        with open(CAMPAIGN / name, newline="", encoding="utf-8") as stream:
            texts.extend(row["text"] for row in csv.DictReader(stream))
    assert len(texts) == len(set(texts))
