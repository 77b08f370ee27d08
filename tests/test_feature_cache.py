"""The frozen-layer feature cache on real tiny models: same metrics on and off, reuse across
trials and depths, keys, and two processes filling one entry at once."""

from __future__ import annotations

import math
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import make_rows, write_csv

from trainers.base import TrialContext
from trainers.feature_cache import FrozenFeatureCache
from trainers.feature_keys import features_key, frozen_fingerprints
from trainers.shared_folder import exclusive_lock, shared_entry
from trainers.text_classification import TextClassificationTrainer

# Dropout on: the trainable layers draw random numbers, and must draw the same ones with the cache.
PARAMS = {"learning_rate": 5e-3, "seed": 0, "dropout": 0.1, "warmup_ratio": 0.1}


def make_trainer(model: Path, data: dict[str, Path], base_dir: Path, **settings) -> TextClassificationTrainer:
    values = {"max_length": 16, "epochs": 2, "batch_size": 8, **settings}
    return TextClassificationTrainer(
        TextClassificationTrainer.Settings(
            model=str(model), data={split: str(path) for split, path in data.items()}, **values
        ),
        base_dir=base_dir,
    )


def run_trial(
    trainer: TextClassificationTrainer, params: dict, cache_dir: Path | None = None
) -> tuple[dict[str, float], list[dict[str, float]], list[str]]:
    """Run a trial; its result, the metrics of each epoch and its log lines."""
    reports: list[dict[str, float]] = []
    logs: list[str] = []
    ctx = TrialContext(
        trial_number=0,
        params={**trainer.fixed_params(), **PARAMS, **params},
        reporter=lambda epoch, metrics: reports.append(metrics) and False,
        metric="val_f1",
        cache_dir=cache_dir,
        logger=logs.append,
    )
    return trainer.run(ctx), reports, logs


def assert_same_trial(first, second, tolerance: float = 1e-5) -> None:
    (result_a, reports_a, _), (result_b, reports_b, _) = first, second
    assert len(reports_a) == len(reports_b)
    for epoch_a, epoch_b in zip(reports_a, reports_b, strict=True):
        assert epoch_b == pytest.approx(epoch_a, abs=tolerance)
    assert result_b == pytest.approx(result_a, abs=tolerance)


def cache_lines(logs: list[str]) -> dict[str, str]:
    """``{split: how}`` from the trial's feature-cache log lines (computed / loaded / extended)."""
    found = {}
    for line in logs:
        if line.startswith("feature cache: ") and " states after block " in line:
            split = line.split()[2]
            found[split] = line.split(" states after block ")[1].split()[1]
    return found


def entries(cache_dir: Path) -> dict[str, int]:
    """The feature entries on disk and the modification time of their states."""
    root = cache_dir / "features"
    return {path.name: (path / "states.npy").stat().st_mtime_ns for path in root.iterdir() if path.is_dir()}


# --------------------------------------------------------------------------------------------
# Tiny DistilBERT and RoBERTa next to the tiny BERT, sharing its vocabulary
# --------------------------------------------------------------------------------------------


def _save_with_tokenizer(model: torch.nn.Module, tiny_model: Path, folder: Path, token_types: bool) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    if not token_types:  # DistilBERT and RoBERTa take no token_type_ids
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def distilbert_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    vocab = len(AutoTokenizer.from_pretrained(tiny_model))
    torch.manual_seed(0)
    config = DistilBertConfig(n_layers=2, dim=32, n_heads=2, hidden_dim=64, vocab_size=vocab, pad_token_id=0)
    return _save_with_tokenizer(
        DistilBertModel(config), tiny_model, tmp_path_factory.mktemp("distilbert"), False
    )


@pytest.fixture(scope="module")
def roberta_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    vocab = len(AutoTokenizer.from_pretrained(tiny_model))
    torch.manual_seed(0)
    config = RobertaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=vocab,
        pad_token_id=0,
        max_position_embeddings=64,
    )
    return _save_with_tokenizer(RobertaModel(config), tiny_model, tmp_path_factory.mktemp("roberta"), False)


# --------------------------------------------------------------------------------------------
# The cache changes nothing but the time
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
def test_metrics_are_the_same_with_the_cache_on_and_off(
    family: str, request: pytest.FixtureRequest, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    model = request.getfixturevalue({"bert": "tiny_model"}.get(family, f"{family}_model"))
    off = run_trial(make_trainer(model, toy_data, tmp_path, feature_cache=False), {"freeze_depth": 1})
    on = run_trial(make_trainer(model, toy_data, tmp_path), {"freeze_depth": 1}, tmp_path / "cache")
    assert cache_lines(on[2]) == {"train": "computed", "validation": "computed"}
    assert cache_lines(off[2]) == {}
    assert len(on[1]) == 2 and all(math.isfinite(value) for value in on[1][-1].values())
    assert_same_trial(off, on)
    # The trial learnt something: equal metrics are not two constant models agreeing.
    assert off[1][0]["train_loss"] != off[1][1]["train_loss"]


def test_every_depth_matches_the_uncached_trial(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    for depth in (1, 2):  # 2 = every block frozen: only the pooler and the head train
        # Micro-batches too: each pass is served its own rows.
        params = {"freeze_depth": depth, "gradient_accumulation_steps": 2}
        off = run_trial(make_trainer(tiny_model, toy_data, tmp_path, feature_cache=False), params)
        on = run_trial(make_trainer(tiny_model, toy_data, tmp_path), params, tmp_path / "cache")
        assert_same_trial(off, on)


class Interrupted(Exception):
    """Stands in for a crash between two epochs."""


def test_a_resumed_trial_with_the_cache_replays_the_uncached_one(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=3)
    full = run_trial(
        make_trainer(tiny_model, toy_data, tmp_path, epochs=3, feature_cache=False), {"freeze_depth": 1}
    )

    def crash(epoch: int, metrics: dict[str, float]) -> bool:
        if epoch == 2:
            raise Interrupted
        return False

    ctx = TrialContext(
        trial_number=0,
        params={**trainer.fixed_params(), **PARAMS, "freeze_depth": 1},
        reporter=crash,
        checkpoint_dir=tmp_path / "ckpt",
        metric="val_f1",
        cache_dir=tmp_path / "cache",
    )
    with pytest.raises(Interrupted):
        trainer.run(ctx)
    reports: list[tuple[int, dict[str, float]]] = []
    logs: list[str] = []
    ctx = TrialContext(
        trial_number=0,
        params={**trainer.fixed_params(), **PARAMS, "freeze_depth": 1},
        reporter=lambda epoch, metrics: reports.append((epoch, metrics)) and False,
        checkpoint_dir=tmp_path / "ckpt",
        metric="val_f1",
        cache_dir=tmp_path / "cache",
        logger=logs.append,
    )
    result = trainer.run(ctx)
    assert cache_lines(logs) == {"train": "loaded", "validation": "loaded"}
    for epoch, metrics in reports:
        assert metrics == pytest.approx(full[1][epoch - 1], abs=1e-5)
    assert result == pytest.approx(full[0], abs=1e-5)


def test_a_cache_folder_that_cannot_be_written_costs_the_cache_not_the_trial(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "features").write_text("not a folder")  # as a full or read-only disk would: OSError
    (cache / "tokens").write_text("not a folder")
    off = run_trial(make_trainer(tiny_model, toy_data, tmp_path, feature_cache=False), {"freeze_depth": 1})
    on = run_trial(make_trainer(tiny_model, toy_data, tmp_path), {"freeze_depth": 1}, cache)
    assert any(line.startswith("feature cache off: ") for line in on[2])
    assert any(line.startswith("token cache off for train: ") for line in on[2])
    assert_same_trial(off, on)


def test_depth_zero_and_the_switch_cache_nothing(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    _, _, logs = run_trial(make_trainer(tiny_model, toy_data, tmp_path), {"freeze_depth": 0}, tmp_path / "a")
    assert cache_lines(logs) == {} and not (tmp_path / "a" / "features").exists()
    trainer = make_trainer(tiny_model, toy_data, tmp_path, feature_cache=False)
    _, _, logs = run_trial(trainer, {"freeze_depth": 1}, tmp_path / "b")
    assert cache_lines(logs) == {} and not (tmp_path / "b" / "features").exists()


def test_augmentation_caches_validation_not_train(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    params = {"freeze_depth": 1, "augmentation": "token_dropout", "augmentation_prob": 0.2}
    off = run_trial(make_trainer(tiny_model, toy_data, tmp_path, feature_cache=False), params)
    on = run_trial(make_trainer(tiny_model, toy_data, tmp_path), params, tmp_path / "cache")
    assert cache_lines(on[2]) == {"validation": "computed"}
    assert any("train not cached (token_dropout augmentation" in line for line in on[2])
    assert len(entries(tmp_path / "cache")) == 1
    assert_same_trial(off, on)


# --------------------------------------------------------------------------------------------
# Reuse across trials and depths
# --------------------------------------------------------------------------------------------


def test_a_second_trial_with_the_same_depth_reuses_the_cache(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path)
    cache = tmp_path / "cache"
    first = run_trial(trainer, {"freeze_depth": 1}, cache)
    written = entries(cache)
    assert len(written) == 2
    # Other hyperparameters, same frozen part: the states are read, not computed again.
    second = run_trial(trainer, {"freeze_depth": 1, "learning_rate": 1e-3, "dropout": 0.3}, cache)
    assert cache_lines(second[2]) == {"train": "loaded", "validation": "loaded"}
    assert entries(cache) == written  # no new entry, none rewritten
    again = run_trial(trainer, {"freeze_depth": 1}, cache)
    assert_same_trial(first, again, tolerance=0.0)  # read back exactly as written


def test_a_deeper_depth_starts_from_the_shallower_cache(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path)
    run_trial(trainer, {"freeze_depth": 1}, tmp_path / "cache")
    deeper = run_trial(trainer, {"freeze_depth": 2}, tmp_path / "cache")
    assert cache_lines(deeper[2]) == {"train": "extended", "validation": "extended"}
    assert any("from the depth-1 cache" in line for line in deeper[2])
    assert len(entries(tmp_path / "cache")) == 4
    # Extending block by block gives the states computing from scratch gives.
    fresh = run_trial(trainer, {"freeze_depth": 2}, tmp_path / "fresh")
    assert cache_lines(fresh[2]) == {"train": "computed", "validation": "computed"}
    assert_same_trial(fresh, deeper)
    import numpy as np

    extended = {
        name: np.load(tmp_path / "cache" / "features" / name / "states.npy")
        for name in entries(tmp_path / "fresh")
    }
    for name in entries(tmp_path / "fresh"):
        scratch = np.load(tmp_path / "fresh" / "features" / name / "states.npy")
        np.testing.assert_allclose(extended[name], scratch, atol=1e-5)


def test_the_key_follows_max_length_data_and_depth(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    run_trial(make_trainer(tiny_model, toy_data, tmp_path), {"freeze_depth": 1}, cache)
    assert len(entries(cache)) == 2
    # Shorter truncation: other token ids, other states for every split.
    _, _, logs = run_trial(
        make_trainer(tiny_model, toy_data, tmp_path, max_length=8), {"freeze_depth": 1}, cache
    )
    assert cache_lines(logs) == {"train": "computed", "validation": "computed"}
    assert len(entries(cache)) == 4
    # Other training rows: a new training entry; validation is the same texts, read back.
    other = {**toy_data, "train": write_csv(tmp_path / "other" / "train.csv", make_rows(48, seed=9))}
    _, _, logs = run_trial(make_trainer(tiny_model, other, tmp_path), {"freeze_depth": 1}, cache)
    assert cache_lines(logs) == {"train": "computed", "validation": "loaded"}
    assert len(entries(cache)) == 5
    # The key itself: each ingredient changes it.
    base = features_key("model", "ids", 16, 1, "float32", "fp32")
    variants = [
        features_key("other-model", "ids", 16, 1, "float32", "fp32"),
        features_key("model", "other-ids", 16, 1, "float32", "fp32"),
        features_key("model", "ids", 8, 1, "float32", "fp32"),
        features_key("model", "ids", 16, 2, "float32", "fp32"),
        features_key("model", "ids", 16, 1, "float16", "fp32"),
        features_key("model", "ids", 16, 1, "float32", "bf16"),
    ]
    assert len({base, *variants}) == 7


def test_fingerprints_cover_the_frozen_weights_only(tiny_model: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from trainers.regularization import find_blocks, set_dropout

    def load():
        return AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)

    model = load()
    reference = frozen_fingerprints(model, 2)
    assert len(reference) == 2 and len(set(reference)) == 2
    assert frozen_fingerprints(load(), 2) == reference  # reloading: same weights, same key
    set_dropout(model, hidden=0.3, attention=0.2, classifier=0.4)  # eval mode: dropout changes nothing
    assert frozen_fingerprints(model, 2) == reference
    _, blocks = find_blocks(model)
    with torch.no_grad():
        blocks[1].output.dense.weight.add_(1e-3)  # block 2 changes: depth 1 does not see it
    assert frozen_fingerprints(model, 2)[0] == reference[0]
    assert frozen_fingerprints(model, 2)[1] != reference[1]


# --------------------------------------------------------------------------------------------
# Intermediate depths: a fill stores the depths it passes through
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with 4 blocks: room for depths between a fill's start and its end."""
    from trainers.tiny_model import build_tiny_model

    texts = [row["text"] for row in make_rows(64)]
    return build_tiny_model(tmp_path_factory.mktemp("deep-bert"), texts, num_layers=4, hidden_size=32)


def stored_too(logs: list[str]) -> dict[str, list[int]]:
    """``{split: depths}`` the fill of each split stored on its way, from its log line."""
    found = {}
    for line in logs:
        if line.startswith("feature cache: ") and " stored too, for shallower trials" in line:
            depths = line.split("; the states after block")[1].split(" stored too")[0].lstrip("s ")
            found[line.split()[2]] = [int(depth) for depth in depths.split(", ")]
    return found


def entry_meta(cache_dir: Path) -> dict[str, dict]:
    import json

    root = cache_dir / "features"
    return {
        path.name: json.loads((path / "meta.json").read_text(encoding="utf-8"))
        for path in root.iterdir()
        if path.is_dir()
    }


def test_a_fill_stores_the_depths_it_passes_through_for_shallower_trials(
    deep_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    import numpy as np

    trainer = make_trainer(deep_model, toy_data, tmp_path)
    cache = tmp_path / "cache"
    deep = run_trial(trainer, {"freeze_depth": 3}, cache)
    assert cache_lines(deep[2]) == {"train": "computed", "validation": "computed"}
    assert stored_too(deep[2]) == {"train": [1, 2], "validation": [1, 2]}
    written = entries(cache)
    assert len(written) == 6  # 2 splits (trials never read test) x depths 1, 2, 3
    assert sorted(meta["depth"] for meta in entry_meta(cache).values()) == [1, 1, 2, 2, 3, 3]
    assert not [path for path in (cache / "features").iterdir() if path.name.endswith(".tmp")]
    # The shallower trials find their entries: read, nothing computed, nothing rewritten.
    for depth in (2, 1):
        shallower = run_trial(trainer, {"freeze_depth": depth}, cache)
        assert cache_lines(shallower[2]) == {"train": "loaded", "validation": "loaded"}
        assert stored_too(shallower[2]) == {}
        assert entries(cache) == written
        # ... and their metrics are the uncached trial's.
        off = run_trial(
            make_trainer(deep_model, toy_data, tmp_path, feature_cache=False), {"freeze_depth": depth}
        )
        assert_same_trial(off, shallower)
    # An intermediate entry holds what a fill to that depth itself computes, under the same key.
    fresh = tmp_path / "fresh"
    computed = run_trial(trainer, {"freeze_depth": 2}, fresh)
    assert cache_lines(computed[2]) == {"train": "computed", "validation": "computed"}
    assert stored_too(computed[2]) == {"train": [1], "validation": [1]}
    assert set(entries(fresh)) < set(written)
    for name in entries(fresh):
        np.testing.assert_allclose(
            np.load(cache / "features" / name / "states.npy"),
            np.load(fresh / "features" / name / "states.npy"),
            rtol=0,
            atol=1e-6,
        )


def test_an_extending_fill_stores_the_depths_between_its_start_and_its_end(
    deep_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    trainer = make_trainer(deep_model, toy_data, tmp_path)
    cache = tmp_path / "cache"
    run_trial(trainer, {"freeze_depth": 1}, cache)
    deeper = run_trial(trainer, {"freeze_depth": 4}, cache)
    assert cache_lines(deeper[2]) == {"train": "extended", "validation": "extended"}
    assert all("from the depth-1 cache" in line for line in deeper[2] if "stored too" in line)
    assert stored_too(deeper[2]) == {"train": [2, 3], "validation": [2, 3]}
    metas = entry_meta(cache)
    assert sorted(meta["depth"] for meta in metas.values()) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert {meta["from_depth"] for meta in metas.values() if meta["depth"] > 1} == {1}
    middle = run_trial(trainer, {"freeze_depth": 3}, cache)
    assert cache_lines(middle[2]) == {"train": "loaded", "validation": "loaded"}
    off = run_trial(make_trainer(deep_model, toy_data, tmp_path, feature_cache=False), {"freeze_depth": 3})
    assert_same_trial(off, middle)


def attach_cache(
    model_path: Path, depth: int, root: Path | None, **options
) -> tuple[FrozenFeatureCache, list]:
    """A feature cache on the deep model, probed; and the token ids of 12 short texts."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainers.batching import PadCollator
    from trainers.regularization import freeze
    from trainers.tokenization_cache import tokenize_texts

    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    freeze(model, depth)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    collate = PadCollator.for_tokenizer(tokenizer)
    ids = tokenize_texts(tokenizer, [row["text"] for row in make_rows(12, seed=4)], 16)
    cache = FrozenFeatureCache.attach(
        model,
        depth,
        forward=lambda inputs: model(**inputs),
        collate=collate,
        to_device=lambda tensor: tensor,
        root=root,
        dtype="float32",
        compute="fp32",
        max_length=16,
        log=lambda line: None,
        **{"memory_bytes": 2**20, **options},
    )
    cache.probe(collate(ids[:4]))
    return cache, ids


def test_an_intermediate_depth_another_writer_holds_is_left_to_it(deep_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "features"
    root.mkdir()
    cache, ids = attach_cache(deep_model, 3, root)
    keys = {
        depth: features_key(cache.fingerprints[depth - 1], "digest", 16, depth, "float32", "fp32")
        for depth in (1, 2, 3)
    }
    # The keys of shallower depths are the ones a trial frozen to that depth computes.
    assert frozen_fingerprints(cache.model, 2) == cache.fingerprints[:2]
    with exclusive_lock(root / f"{keys[2]}.lock"):  # another worker is filling depth 2
        cache.prepare("validation", ids, "digest", batch_size=4)
    assert cache.sources["validation"].also_stored == (1,)
    assert sorted(path.name for path in root.iterdir() if path.is_dir()) == sorted([keys[1], keys[3]])
    assert not [path for path in root.iterdir() if path.name.endswith(".tmp")]
    cache.close()
    # A fill at depth 2 now: it starts from the stored depth 1.
    shallower, _ = attach_cache(deep_model, 2, root)
    shallower.prepare("validation", ids, "digest", batch_size=4)
    assert (shallower.sources["validation"].how, shallower.sources["validation"].from_depth) == (
        "extended",
        1,
    )
    assert (root / keys[2]).is_dir()
    shallower.close()


def test_the_extra_disk_is_bounded(deep_model: Path, tmp_path: Path) -> None:
    # No bound left: nothing but the fill's own entry.
    cache, ids = attach_cache(deep_model, 4, tmp_path / "none", intermediate_bytes=0)
    cache.prepare("validation", ids, "digest", batch_size=4)
    assert cache.sources["validation"].also_stored == ()
    assert len([path for path in (tmp_path / "none").iterdir() if path.is_dir()]) == 1
    nbytes = cache.stores["validation"].nbytes
    cache.close()
    # Room for one of depths 1..3: the middle one.
    cache, ids = attach_cache(deep_model, 4, tmp_path / "one", intermediate_bytes=nbytes)
    cache.prepare("validation", ids, "digest", batch_size=4)
    assert cache.sources["validation"].also_stored == (2,)
    cache.close()
    # No shared folder: the private one is the trial's alone, so nothing more goes there.
    cache, ids = attach_cache(deep_model, 4, None, memory_bytes=0)
    store = cache.prepare("validation", ids, "digest", batch_size=4)
    assert not store.in_memory and cache.sources["validation"].also_stored == ()
    assert len([path for path in store.path.parent.iterdir() if path.is_dir()]) == 1
    cache.close()


def test_the_sweep_file_bounds_the_extra_disk(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    default = run_trial(
        make_trainer(tiny_model, toy_data, tmp_path), {"freeze_depth": 2}, tmp_path / "default"
    )
    assert sum("stored too" in line for line in default[2]) == 2
    assert len(entries(tmp_path / "default")) == 4  # depths 1 and 2 of train and validation
    bounded = make_trainer(tiny_model, toy_data, tmp_path, feature_cache_intermediate_mb=0)
    own_only = run_trial(bounded, {"freeze_depth": 2}, tmp_path / "bounded")
    assert not [line for line in own_only[2] if "stored too" in line]
    assert len(entries(tmp_path / "bounded")) == 2
    assert_same_trial(default, own_only)


def test_spread_picks_evenly_spaced_depths() -> None:
    from trainers.feature_intermediates import _spread

    assert _spread([1, 2, 3, 4, 5], 2) == [2, 4]
    assert _spread([1, 2, 3], 1) == [2]
    assert _spread([2, 3, 4, 5], 3) == [2, 4, 5]
    assert _spread([1, 2], 0) == [] and _spread([1, 2], 5) == [1, 2]


# --------------------------------------------------------------------------------------------
# Memory, disk and precision
# --------------------------------------------------------------------------------------------


def test_beyond_the_memory_budget_states_are_memory_mapped(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    off = run_trial(make_trainer(tiny_model, toy_data, tmp_path, feature_cache=False), {"freeze_depth": 1})
    trainer = make_trainer(tiny_model, toy_data, tmp_path, feature_cache_memory_mb=0)
    shared = run_trial(trainer, {"freeze_depth": 1}, tmp_path / "cache")
    # train and validation
    assert sum("memory-mapped from " + str(tmp_path / "cache") in line for line in shared[2]) == 2
    assert_same_trial(off, shared)
    # No study folder: a temporary one, removed when the trial ends.
    private = run_trial(trainer, {"freeze_depth": 1})
    mapped = [line for line in private[2] if "memory-mapped from " in line]
    assert len(mapped) == 2
    folder = Path(mapped[0].split("memory-mapped from ")[1].rstrip(")"))
    assert not folder.exists() and not folder.parent.exists()
    assert_same_trial(off, private)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(
    dtype: str, tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    import numpy as np

    off = run_trial(make_trainer(tiny_model, toy_data, tmp_path, feature_cache=False), {"freeze_depth": 1})
    on = run_trial(
        make_trainer(tiny_model, toy_data, tmp_path, feature_cache_dtype=dtype),
        {"freeze_depth": 1},
        tmp_path / "c",
    )
    assert cache_lines(on[2]) == {"train": "computed", "validation": "computed"}
    stored = np.load(next(iter((tmp_path / "c" / "features").glob("*/states.npy"))))
    assert stored.dtype == (np.float16 if dtype == "float16" else np.uint16)
    # Half-precision rounding of the frozen output: close to the float32 trial, not equal.
    assert on[0]["val_loss"] == pytest.approx(off[0]["val_loss"], abs=0.02)


def test_padded_batches_get_what_the_model_computes(tiny_model: Path) -> None:
    """Per-example states padded per batch equal the frozen blocks' output on that padded batch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainers.batching import PadCollator
    from trainers.regularization import find_blocks, freeze
    from trainers.tokenization_cache import tokenize_texts

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    freeze(model, 1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    collate = PadCollator.for_tokenizer(tokenizer)
    texts = [row["text"] for row in make_rows(12, seed=4)]
    texts = [" ".join(text.split()[: 1 + index % 6]) for index, text in enumerate(texts)]  # lengths 3..8
    ids = tokenize_texts(tokenizer, texts, 16)
    assert len({len(sequence) for sequence in ids}) > 3
    cache = FrozenFeatureCache.attach(
        model,
        1,
        forward=lambda inputs: model(**inputs),
        collate=collate,
        to_device=lambda tensor: tensor,
        root=None,
        memory_bytes=2**20,
        dtype="float32",
        compute="fp32",
        max_length=16,
        log=lambda line: None,
    )
    cache.probe(collate(ids[:4]))
    # Batches of 2 when filling; read back in a batch that mixes every length.
    store = cache.prepare("validation", ids, "digest", batch_size=2)
    rows = [11, 0, 5, 3, 8]
    inputs = collate([ids[row] for row in rows])
    _, blocks = find_blocks(model)
    captured = {}
    handle = blocks[0].register_forward_hook(lambda module, args, output: captured.update(out=output))
    with torch.no_grad():
        model.eval()
        model(**inputs)
    handle.remove()
    expected = captured["out"][0] if isinstance(captured["out"], tuple) else captured["out"]
    served = store.batch(rows)
    mask = inputs["attention_mask"].bool()
    assert served.shape == expected.shape
    torch.testing.assert_close(served[mask], expected[mask], atol=1e-5, rtol=1e-5)
    assert bool((served[~mask] == 0).all())
    assert cache.verify("validation", [0, 1, 2, 3])
    cache.close()


# --------------------------------------------------------------------------------------------
# Two processes at once
# --------------------------------------------------------------------------------------------


def _lock_has_a_waiter(lock: Path) -> bool:
    """Whether a process is blocked on the ``flock`` of ``lock`` (Linux lists waiters with "->")."""
    inode = str(lock.stat().st_ino)
    with open("/proc/locks", encoding="utf-8") as stream:
        for line in stream:  # "1: -> FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF"
            fields = line.split()
            if "->" in fields and any(f.count(":") == 2 and f.rsplit(":", 1)[1] == inode for f in fields):
                return True
    return False


def _fill_once_the_other_waits(root: str, key: str, barrier, results) -> None:
    """One process's attempt at an entry; its creator finishes only once the other waits on the lock."""

    def create(folder: Path) -> None:
        # Not a sleep: however slowly the other process comes, it must find the lock held, wait, then read.
        deadline = time.monotonic() + 120
        while not _lock_has_a_waiter(Path(root) / f"{key}.lock"):
            if time.monotonic() > deadline:
                raise AssertionError("the other process never waited on the entry's lock")
            time.sleep(0.02)
        (folder / "payload.txt").write_text("complete", encoding="utf-8")

    barrier.wait()
    entry, created = shared_entry(Path(root), key, create)
    results.put((created, (entry / "payload.txt").read_text(encoding="utf-8")))


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks to see a waiter")
def test_two_processes_creating_one_entry_create_it_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_fill_once_the_other_waits, args=(str(tmp_path), "k" * 64, barrier, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    # Exactly one created it; the other waited on the lock (the creator saw it wait), then read the
    # finished entry.
    assert outcomes == [(False, "complete"), (True, "complete")]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "k" * 64,
        "k" * 64 + ".lock",
    ]  # no partial leftovers


def _trial_in_process(
    model: str, data: dict[str, str], base_dir: str, cache_dir: str, barrier, results
) -> None:
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    trainer = make_trainer(Path(model), {key: Path(value) for key, value in data.items()}, Path(base_dir))
    barrier.wait()
    result, reports, logs = run_trial(trainer, {"freeze_depth": 1}, Path(cache_dir))
    read = [line for line in logs if line.endswith(" read from the study's cache")]
    splits = (
        read[0].removeprefix("token ids of ").removesuffix(" read from the study's cache") if read else ""
    )
    results.put((result, cache_lines(logs), splits.split(", ") if splits else []))


def test_two_trials_filling_one_cache_at_once(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    data = {key: str(value) for key, value in toy_data.items()}
    args = (str(tiny_model), data, str(tmp_path), str(tmp_path / "cache"), barrier, results)
    processes = [context.Process(target=_trial_in_process, args=args) for _ in range(2)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    # Every split computed by exactly one of the two, read by the other.
    for split in ("train", "validation"):
        assert sorted(lines[split] for _, lines, _ in outcomes) == ["computed", "loaded"]
    # The token ids too: each split tokenized by one process, read by the other.
    assert sorted(outcomes[0][2] + outcomes[1][2]) == ["train", "validation"]
    assert outcomes[0][0] == pytest.approx(outcomes[1][0], abs=1e-6)
    root = tmp_path / "cache" / "features"
    assert len(entries(tmp_path / "cache")) == 2
    assert not [path for path in root.iterdir() if path.name.endswith(".tmp")]
    shutil.rmtree(tmp_path / "cache")
