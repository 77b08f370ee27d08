"""Tokenizing once per study: the second trial reads the ids the first one cached; the key follows
the texts, max_length and the tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_rows, write_csv

import trainers.tokenization_cache
from trainers.base import TrialContext
from trainers.text_classification import TextClassificationTrainer
from trainers.tokenization_cache import tokenize_cached, tokenize_texts, tokenizer_fingerprint, tokens_key


class CountingTokenize:
    """The real ``tokenize_texts``, counting the texts it is given."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, tokenizer, texts, max_length):
        self.calls.append(len(texts))
        return tokenize_texts(tokenizer, texts, max_length)


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> CountingTokenize:
    counting = CountingTokenize()
    monkeypatch.setattr(trainers.tokenization_cache, "tokenize_texts", counting)
    return counting


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def run_trial(model: Path, data: dict[str, Path], base_dir: Path, cache_dir: Path | None, **settings):
    values = {"max_length": 16, "epochs": 1, "batch_size": 8, **settings}
    trainer = TextClassificationTrainer(
        TextClassificationTrainer.Settings(
            model=str(model), data={split: str(path) for split, path in data.items()}, **values
        ),
        base_dir=base_dir,
    )
    logs: list[str] = []
    ctx = TrialContext(
        trial_number=0,
        params={**trainer.fixed_params(), "learning_rate": 5e-3},
        metric="val_f1",
        cache_dir=cache_dir,
        logger=logs.append,
    )
    return trainer.run(ctx), logs


def test_a_study_tokenizes_each_split_once(
    counter: CountingTokenize, tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first, logs = run_trial(tiny_model, toy_data, tmp_path, cache)
    assert counter.calls == [64, 32]  # train, validation (a trial never reads the test split)
    assert not any("read from the study's cache" in line for line in logs)
    second, logs = run_trial(tiny_model, toy_data, tmp_path, cache)
    assert counter.calls == [64, 32]  # nothing tokenized again
    assert "token ids of train, validation read from the study's cache" in logs
    assert second == first
    # an entry and its lock per split (train, validation)
    assert len(list((cache / "tokens").iterdir())) == 2 * 2
    # Without a study folder every trial tokenizes.
    run_trial(tiny_model, toy_data, tmp_path, None)
    assert counter.calls == [64, 32] * 2


def test_cached_ids_are_the_tokenizer_ids(
    counter: CountingTokenize, tiny_model: Path, tmp_path: Path
) -> None:
    tokenizer = load_tokenizer(tiny_model)
    texts = [row["text"] for row in make_rows(20)] + ["", "a much longer text " * 10]
    expected = tokenize_texts(tokenizer, texts, 12)
    made = tokenize_cached(tokenizer, texts, 12, tmp_path)
    read = tokenize_cached(tokenizer, texts, 12, tmp_path)
    uncached = tokenize_cached(tokenizer, texts, 12, None)
    assert (made.cached, read.cached, uncached.cached) == (False, True, False)
    assert made.ids == read.ids == uncached.ids == expected
    assert made.digest == read.digest == uncached.digest
    assert max(len(ids) for ids in read.ids) == 12
    assert len(counter.calls) == 2  # the cached call and the uncached one; not the read


def test_the_key_follows_texts_max_length_and_tokenizer(tiny_model: Path, tmp_path: Path) -> None:
    tiny = load_tokenizer(tiny_model)
    fingerprint = tokenizer_fingerprint(tiny)
    assert tokenizer_fingerprint(load_tokenizer(tiny_model)) == fingerprint  # stable across loads
    texts = [row["text"] for row in make_rows(10)]
    key = tokens_key(fingerprint, texts, 16)
    assert tokens_key(fingerprint, list(texts), 16) == key
    assert tokens_key(fingerprint, texts, 8) != key
    assert tokens_key(fingerprint, texts[:-1], 16) != key
    assert tokens_key(fingerprint, [*texts[:-1], texts[-1] + "!"], 16) != key
    assert tokens_key(fingerprint, ["ab", "c"], 16) != tokens_key(fingerprint, ["a", "bc"], 16)
    # Another vocabulary: another tokenizer.
    other = tmp_path / "other"
    from trainers.tiny_model import build_tiny_model

    build_tiny_model(other, ["completely different words here"], num_layers=1, hidden_size=8)
    assert tokenizer_fingerprint(load_tokenizer(other)) != fingerprint
    # The same vocabulary, truncating from the left: other ids.
    left = load_tokenizer(tiny_model)
    left.truncation_side = "left"
    assert tokenizer_fingerprint(left) != fingerprint


def test_trials_with_other_max_length_or_data_tokenize_again(
    counter: CountingTokenize, tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    run_trial(tiny_model, toy_data, tmp_path, cache)
    assert counter.calls == [64, 32]
    run_trial(tiny_model, toy_data, tmp_path, cache, max_length=8)
    assert counter.calls == [64, 32] * 2
    other = {**toy_data, "train": write_csv(tmp_path / "other" / "train.csv", make_rows(40, seed=7))}
    _, logs = run_trial(tiny_model, other, tmp_path, cache)
    assert counter.calls == [64, 32] * 2 + [40]  # only the new training file
    assert "token ids of validation read from the study's cache" in logs
