"""The epoch engine on a task that is not text: a tiny ViT built from its config, frozen stem and block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainers.base import TrialContext
from trainers.engine import Engine
from trainers.regularization import find_blocks, freeze
from trainers.runtime import start_runtime
from trainers.training_params import TrainingParams


class Interrupted(Exception):
    """Stands in for a crash between two epochs."""


class BrightOrDark:
    """16x16 images whose class is whether they are brighter than average; a ViT with a frozen stem."""

    def __init__(self, params: TrainingParams) -> None:
        from transformers import ViTConfig, ViTForImageClassification

        self.params, self.n_train = params, 32
        config = ViTConfig(
            image_size=16,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=2,
            hidden_dropout_prob=0.1,
        )
        self.model = ViTForImageClassification(config)
        self.frozen = freeze(self.model, params.freeze_depth)
        images = torch.rand(self.n_train + 16, 3, 16, 16)
        labels = (images.mean(dim=(1, 2, 3)) > 0.5).long()
        self.x, self.y = images[: self.n_train], labels[: self.n_train]
        self.val_x, self.val_y = images[self.n_train :], labels[self.n_train :]

    def train_steps(self, epoch: int):
        self.loss_sum, self.n_right = 0.0, 0
        for rows in torch.randperm(self.n_train).split(self.params.batch_size):
            yield [part for part in rows.split(self.params.micro_batch_size)]

    def train_loss(self, rows: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values=self.x[rows]).logits
        loss = torch.nn.functional.cross_entropy(logits, self.y[rows], reduction="sum")
        self.loss_sum += loss.item()
        self.n_right += int((logits.argmax(dim=-1) == self.y[rows]).sum())
        return loss / self.params.batch_size

    def train_metrics(self) -> dict[str, float]:
        return {"train_loss": self.loss_sum / self.n_train, "train_accuracy": self.n_right / self.n_train}

    def validation_metrics(self) -> dict[str, float]:
        logits = self.model(pixel_values=self.val_x).logits
        accuracy = (logits.argmax(dim=-1) == self.val_y).float().mean().item()
        return {
            "val_loss": torch.nn.functional.cross_entropy(logits, self.val_y).item(),
            "val_accuracy": accuracy,
        }

    def baseline_metrics(self, metric: str) -> dict[str, float]:
        return {f"majority_{metric}": 0.5} if metric == "val_accuracy" else {}


PARAMS = {
    "learning_rate": 1e-2,
    "epochs": 3,
    "batch_size": 8,
    "gradient_accumulation_steps": 2,
    "freeze_depth": 1,
    "layerwise_lr_decay": 0.5,
    "regularizer": "l2sp",
    "reg_strength": 0.01,
    "warmup_ratio": 0.2,
}


def run(checkpoint_dir: Path, stop_at: int | None = None):
    reports: list[tuple[int, dict[str, float]]] = []

    def reporter(epoch: int, metrics: dict[str, float]) -> bool:
        reports.append((epoch, metrics))
        if epoch == stop_at:
            raise Interrupted
        return False

    params = TrainingParams(**PARAMS)
    ctx = TrialContext(
        trial_number=0,
        params=PARAMS,
        reporter=reporter,
        checkpoint_dir=checkpoint_dir,
        metric="val_accuracy",
        direction="maximize",
    )
    runtime = start_runtime(ctx.device, "fp32", 1, params.seed)
    task = BrightOrDark(params)
    before = {name: p.detach().clone() for name, p in task.model.named_parameters()}
    engine = Engine(ctx, params, runtime, metric="val_accuracy")
    return engine.train(task), reports, task, before, engine


def test_the_engine_trains_an_image_model_with_its_stem_and_first_block_frozen(tmp_path: Path) -> None:
    result, reports, task, before, engine = run(tmp_path / "checkpoint")
    assert [epoch for epoch, _ in reports] == [1, 2, 3]
    for _, metrics in reports:
        assert metrics["generalization_gap"] == metrics["train_accuracy"] - metrics["val_accuracy"]
    assert reports[0][1]["majority_val_accuracy"] == 0.5 and "majority_val_accuracy" not in reports[1][1]
    stem, blocks = find_blocks(task.model)
    frozen = {id(p) for module in (stem, blocks[0]) for p in module.parameters()}
    for name, parameter in task.model.named_parameters():
        moved = not torch.equal(parameter.detach(), before[name])
        assert moved is (id(parameter) not in frozen), name
    assert not task.frozen[0].training  # frozen modules stay in eval mode (no dropout inside)
    rates = {group["name"]: group["initial_lr"] for group in engine.optimization.optimizer.param_groups}
    assert rates["depth1/decay"] == pytest.approx(1e-2 * 0.5)  # the trainable block, one below the head
    assert result["epochs_run"] == 3


def test_a_resumed_image_trial_reports_what_an_uninterrupted_one_does(tmp_path: Path) -> None:
    full, full_reports, *_ = run(tmp_path / "full")
    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", stop_at=2)
    resumed, resumed_reports, *_ = run(tmp_path / "resumed")
    # Only epoch 3 runs again (the context may first replay what was reported before the crash).
    assert [epoch for epoch, _ in resumed_reports] in ([3], [1, 2, 3])
    assert resumed_reports[-1][1] == full_reports[2][1]
    assert resumed == full
