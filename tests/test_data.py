"""Reading labelled data: formats, every DataError, the seeded stratified split, batching."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from orchestrator.errors import DataError
from trainers.batching import PadCollator, bucketed_batches, epoch_seed, sorted_batches
from trainers.data import DataSettings, load_splits
from trainers.data_files import read_table
from trainers.tokenization_cache import tokenize_texts

ROWS = [
    {"text": "great offer today", "label": "yes"},
    {"text": "bad store", "label": "no"},
    {"text": "NA", "label": "yes"},  # a text that pandas would take for a missing value
    {"text": "late, broken; sad", "label": "no"},
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` in the format ``path``'s extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


def balanced_rows(n: int) -> list[dict]:
    return [{"text": f"text number {i}", "label": "yes" if i % 2 else "no"} for i in range(n)]


@pytest.mark.parametrize("extension", [".csv", ".jsonl", ".parquet"])
def test_round_trip(tmp_path: Path, extension: str) -> None:
    path = write_rows(tmp_path / f"train{extension}", ROWS)
    texts, labels = read_table(path, "text", "label")
    assert texts == [row["text"] for row in ROWS]
    assert labels == [row["label"] for row in ROWS]


@pytest.mark.parametrize("extension", [".jsonl", ".parquet"])
def test_numeric_labels_read_as_strings(tmp_path: Path, extension: str) -> None:
    path = write_rows(tmp_path / f"train{extension}", [{"text": "a", "label": 1}, {"text": "b", "label": 0}])
    assert read_table(path, "text", "label")[1] == ["1", "0"]


def test_missing_file_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=r"^trainer\.data\.train: .*nope\.csv does not exist$"):
        read_table(path, "text", "label", key="trainer.data.train")


def test_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "train.csv", ROWS)
    with pytest.raises(DataError) as caught:
        read_table(path, "txt", "label", key="trainer.data.train")
    message = str(caught.value)
    assert message == (
        f"trainer.data.train: {path} has no column 'txt'; its columns are: text, label; "
        "set trainer.data.text_column to the column that holds the text"
    )
    with pytest.raises(DataError, match="; set trainer.data.label_column to the column that holds the label"):
        read_table(path, "text", "labels", key="trainer.data.train")


@pytest.mark.parametrize("extension", [".csv", ".jsonl", ".parquet"])
@pytest.mark.parametrize("marker", ["NaN", "nan", "<NA>", "#N/A", "null"])
def test_a_missing_label_written_as_text_is_not_a_class(tmp_path: Path, extension: str, marker: str) -> None:
    rows = [*ROWS, {"text": "no label here", "label": marker}, {"text": "nor here", "label": marker}]
    path = write_rows(tmp_path / f"train{extension}", rows)
    with pytest.raises(DataError) as caught:
        read_table(path, "text", "label", key="trainer.data.train")
    assert str(caught.value) == (
        f"trainer.data.train: {path} has a missing label written as {marker!r} in column 'label' "
        "(data rows 5, 6 (counting from 1)); it would train as a class of its own: "
        "fill in those labels or remove the rows"
    )


def test_none_and_na_stay_class_names(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "train.csv", [{"text": "a", "label": "None"}, {"text": "b", "label": "NA"}])
    assert read_table(path, "text", "label")[1] == ["None", "NA"]


def test_the_text_column_cannot_be_the_label_column() -> None:
    with pytest.raises(ValueError, match="text_column and label_column are both 'label'"):
        DataSettings(train="t.csv", text_column="label")


@pytest.mark.parametrize("content", ["", "text,label\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "train.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=r"train\.csv (is empty|has no rows)"):
        read_table(path, "text", "label", key="trainer.data.train")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\n")
    with pytest.raises(DataError, match=r"train\.tsv .*allowed: \.csv, \.jsonl, \.parquet"):
        read_table(path, "text", "label")


def test_empty_texts_name_the_rows(tmp_path: Path) -> None:
    rows = [{"text": "ok", "label": "yes"}, {"text": "", "label": "no"}, {"text": "  ", "label": "no"}]
    path = write_rows(tmp_path / "train.csv", rows)
    with pytest.raises(DataError, match=r"empty text in column 'text' in data rows 2, 3"):
        read_table(path, "text", "label")


def test_missing_labels_in_jsonl(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "train.jsonl", [{"text": "a", "label": "yes"}, {"text": "b", "label": None}])
    with pytest.raises(DataError, match=r"empty label in column 'label' in data row 2"):
        read_table(path, "text", "label")


def test_unparseable_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": "yes"}\n{not json\n')
    with pytest.raises(DataError, match=r"train\.jsonl line 2 is not valid JSON"):
        read_table(path, "text", "label")


def test_unparseable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    path.write_text("this is not parquet")
    with pytest.raises(DataError, match=r"train\.parquet cannot be read as Parquet"):
        read_table(path, "text", "label")


def test_single_class(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.csv", [{"text": "a", "label": "yes"}, {"text": "b", "label": "yes"}])
    with pytest.raises(
        DataError, match=r"^trainer\.data\.train: .* needs at least two classes; found only 'yes'$"
    ):
        load_splits(DataSettings(train="train.csv"), tmp_path)


def test_unseen_validation_label(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.csv", balanced_rows(6))
    write_rows(tmp_path / "val.csv", [{"text": "a", "label": "yes"}, {"text": "b", "label": "maybe"}])
    with pytest.raises(DataError) as caught:
        load_splits(DataSettings(train="train.csv", validation="val.csv"), tmp_path)
    message = str(caught.value)
    assert message.startswith("trainer.data.validation: ")
    assert "val.csv" in message and "'maybe'" in message and "data row 2" in message
    assert message.endswith("the training labels are: no, yes")


def test_loads_files_relative_to_base_dir(tmp_path: Path, toy_data: dict[str, Path]) -> None:
    settings = DataSettings(train="data/train.csv", validation="data/val.csv", test="data/test.csv")
    data = load_splits(settings, tmp_path)
    assert (len(data.train), len(data.validation), len(data.test)) == (64, 32, 32)
    assert data.labels == ["no", "yes"]
    assert data.train.label_ids(data.labels)[:2] == [0, 1]


def test_validation_split_is_seeded_and_stratified(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.csv", balanced_rows(50))
    settings = DataSettings(train="train.csv", validation_fraction=0.2)
    first, again, other = (load_splits(settings, tmp_path, seed) for seed in (0, 0, 1))
    assert first.validation.texts == again.validation.texts
    assert first.validation.texts != other.validation.texts
    assert len(first.validation) == 10 and len(first.train) == 40
    assert Counter(first.validation.labels) == {"yes": 5, "no": 5}
    assert not set(first.validation.texts) & set(first.train.texts)


def test_validation_split_that_leaves_nothing(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.csv", balanced_rows(2))
    with pytest.raises(DataError, match=r"trainer\.data\.validation_fraction: .*no validation rows"):
        load_splits(DataSettings(train="train.csv"), tmp_path)


def test_max_train_samples(tmp_path: Path) -> None:
    rows = balanced_rows(40) + [{"text": f"extra {i}", "label": "no"} for i in range(20)]  # 40 no, 20 yes
    write_rows(tmp_path / "train.csv", rows)
    settings = DataSettings(train="train.csv", validation_fraction=0.25, max_train_samples=9)
    data = load_splits(settings, tmp_path, seed=3)
    assert len(data.train) == 9
    assert Counter(data.train.labels) == {"no": 6, "yes": 3}
    assert load_splits(settings, tmp_path, seed=3).train.texts == data.train.texts
    assert len(data.validation) == 15  # the validation split comes from the full training file


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError):
        DataSettings(train="t.csv", validation_fraction=1.0)
    with pytest.raises(ValueError):
        DataSettings(train="t.csv", max_train_samples=1)
    with pytest.raises(ValueError):
        DataSettings(train="t.csv", unknown=1)


def test_tokenize_and_pad(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenize_texts(tokenizer, ["great offer", "the new store today for you a week offer"], max_length=6)
    assert len(ids[1]) == 6 and ids[1][0] == tokenizer.cls_token_id and ids[1][-1] == tokenizer.sep_token_id
    batch = PadCollator.for_tokenizer(tokenizer)(ids)
    assert batch["input_ids"].shape == (2, 6)
    assert batch["attention_mask"].tolist()[0] == [1, 1, 1, 1, 0, 0]
    assert batch["input_ids"][0, 4:].tolist() == [tokenizer.pad_token_id] * 2
    assert batch["token_type_ids"].sum() == 0


def test_bucketed_batches_cover_every_row_once_and_replay() -> None:
    lengths = [(index * 7) % 23 + 2 for index in range(203)]
    batches = bucketed_batches(lengths, 8, torch.Generator().manual_seed(epoch_seed(0, 1)), chunk_batches=5)
    assert sorted(row for batch in batches for row in batch) == list(range(203))
    again = bucketed_batches(lengths, 8, torch.Generator().manual_seed(epoch_seed(0, 1)), chunk_batches=5)
    other = bucketed_batches(lengths, 8, torch.Generator().manual_seed(epoch_seed(0, 2)), chunk_batches=5)
    assert batches == again and batches != other
    # Sorting within chunks keeps padding far below that of random batches.
    padding = sum(max(lengths[r] for r in b) * len(b) - sum(lengths[r] for r in b) for b in batches)
    assert padding < 0.25 * sum(lengths)


def test_sorted_batches() -> None:
    assert sorted_batches([5, 1, 3], 2) == [[1, 2], [0]]
