"""The text trainer's numbers at a fixed seed, recorded before the epoch engine was split out of it.

``tests/data/engine_golden.json`` holds, for each configuration below, every metric each epoch
reported and the trial's result, as produced by the text trainer before ``trainers/engine.py``
existed. The refactored trainer must reproduce them exactly (same seed, same numbers, bit for
bit on one CPU thread), including after an interruption and a resume from the checkpoint.

To record them again after a deliberate change of the numbers:
``FTSWEEP_WRITE_GOLDEN=1 .venv/bin/pytest tests/test_engine_golden.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_text_classification import Interrupted, Recorder, make_trainer

from trainers.base import TrialContext

GOLDEN = Path(__file__).resolve().parent / "data" / "engine_golden.json"

#: Every knob of the engine at least once: dropout and augmentation (RNG), warmup, weight decay,
#: label smoothing, class weights, gradient accumulation, the linear probe, LP-FT, frozen layers
#: served from the feature cache, L2-SP, layer-wise and head learning rates, L1, clipping,
#: min_steps and early stopping.
CONFIGS: dict[str, dict[str, object]] = {
    "finetune": {
        "epochs": 3,
        "learning_rate": 8e-3,
        "dropout": 0.1,
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "augmentation": "token_dropout",
        "label_smoothing": 0.1,
        "class_weights": "balanced",
        "gradient_accumulation_steps": 2,
    },
    "lp_ft": {"strategy": "lp_ft", "learning_rate": 5e-3},
    "linear_probe": {"strategy": "linear_probe"},
    "frozen_l2sp_layerwise": {
        "learning_rate": 5e-3,
        "freeze_depth": 1,
        "regularizer": "l2sp",
        "reg_strength": 0.01,
        "layerwise_lr_decay": 0.8,
        "head_learning_rate": 1e-2,
    },
    "l1_min_steps_early_stopping": {
        "learning_rate": 5e-3,
        "regularizer": "l1",
        "reg_strength": 1e-4,
        "max_grad_norm": 0.5,
        "min_steps": 32,
        "early_stopping_patience": 2,
    },
}


def _run(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path, params: dict, folder: str, stop=None
) -> dict:
    trainer = make_trainer(tiny_model, toy_data, tmp_path)
    recorder = Recorder(stop)
    ctx = TrialContext(
        trial_number=0,
        params={**trainer.fixed_params(), "seed": 0, **params},
        reporter=recorder,
        checkpoint_dir=tmp_path / folder / "checkpoint",
        cache_dir=tmp_path / "cache",
        metric="val_f1",
        direction="maximize",
    )
    result = trainer.run(ctx)
    return {"reports": [[epoch, metrics] for epoch, metrics in recorder.reports], "result": result}


@pytest.fixture(scope="module")
def golden() -> dict:
    if os.environ.get("FTSWEEP_WRITE_GOLDEN"):
        return {}
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def _record(name: str, observed: dict) -> None:
    recorded = json.loads(GOLDEN.read_text(encoding="utf-8")) if GOLDEN.exists() else {}
    recorded[name] = observed
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n", encoding="utf-8")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_numbers_are_the_recorded_ones(
    name: str, golden: dict, tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    observed = _run(tiny_model, toy_data, tmp_path, CONFIGS[name], name)
    if os.environ.get("FTSWEEP_WRITE_GOLDEN"):
        _record(name, observed)
        return
    assert observed == golden[name]  # exact: one thread, same seed, same operations


def test_a_resumed_trial_gives_the_recorded_numbers(
    golden: dict, tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    params = CONFIGS["finetune"]

    def crash(epoch: int, metrics: dict) -> bool:
        if epoch == 1:
            raise Interrupted
        return False

    with pytest.raises(Interrupted):
        _run(tiny_model, toy_data, tmp_path, params, "resumed", crash)
    observed = _run(tiny_model, toy_data, tmp_path, params, "resumed")
    if os.environ.get("FTSWEEP_WRITE_GOLDEN"):
        return
    expected = golden["finetune"]
    assert observed["result"] == expected["result"]
    # Only the epochs after the checkpoint run again (the context may replay the earlier reports).
    assert observed["reports"] == expected["reports"][-len(observed["reports"]) :]
    assert [epoch for epoch, _ in observed["reports"]] in ([2, 3], [1, 2, 3])
