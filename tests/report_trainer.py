"""A user trainer (``report_trainer:GapTrainer``) that reports what the text trainer reports, instantly.

Per epoch: ``train_f1`` / ``val_f1``, ``train_loss`` / ``val_loss`` and ``generalization_gap``, as a
known function of two regularization parameters (``weight_decay``, ``dropout``): more
regularization, a smaller gap. The sweep report's tests draw a real study of it without torch.
"""

from __future__ import annotations

import math

from trainers.base import BaseTrainer, StrictModel, TrialContext


class GapSettings(StrictModel):
    epochs: int = 3


class GapParams(StrictModel):
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    dropout: float = 0.0
    epochs: int = 3


def gap_metrics(params: GapParams, epoch: int) -> dict[str, float]:
    """Training fits more each epoch; regularization holds validation closer to it."""
    fit = 1.0 - math.exp(-epoch * params.learning_rate * 1000)
    regularized = min(1.0, params.weight_decay * 5 + params.dropout)
    train_f1 = 0.5 + 0.45 * fit
    val_f1 = train_f1 - 0.3 * fit * (1.0 - regularized)
    metrics = {
        "train_f1": train_f1,
        "val_f1": val_f1,
        "train_loss": 1.0 - train_f1,
        "val_loss": 1.0 - val_f1,
    }
    metrics["generalization_gap"] = train_f1 - val_f1
    return metrics


class GapTrainer(BaseTrainer):
    name = "gap"
    Settings = GapSettings
    Params = GapParams
    metric_names = ("val_f1", "train_f1", "val_loss", "train_loss", "generalization_gap")
    settings_as_params = ("epochs",)
    default_metric = "val_f1"
    default_direction = "maximize"

    def run(self, ctx: TrialContext) -> dict[str, float]:
        params = GapParams(**ctx.params)
        best, best_epoch = -1.0, 1
        for epoch in range(1, params.epochs + 1):
            metrics = gap_metrics(params, epoch)
            ctx.report(epoch, metrics)
            if metrics["val_f1"] > best:
                best, best_epoch = metrics["val_f1"], epoch
        return {"val_f1": best, "best_epoch": float(best_epoch)}
