"""Metrics every recipe can share: accuracy and macro F1 from a confusion matrix, the generalization gap."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def accuracy_and_macro_f1(confusion: torch.Tensor) -> tuple[float, float]:
    """Accuracy and macro F1 from a confusion matrix (rows: true class, columns: predicted).

    Macro F1 averages over the classes that occur among the true labels or the predictions, as
    scikit-learn does by default; a class absent from both says nothing about the model.
    """
    counts = confusion.double()
    total = counts.sum().item()
    true_positive = counts.diagonal()
    per_true = counts.sum(dim=1)
    per_predicted = counts.sum(dim=0)
    denominator = per_true + per_predicted
    present = denominator > 0
    f1 = (2 * true_positive[present] / denominator[present]).mean().item() if bool(present.any()) else 0.0
    return (true_positive.sum().item() / total if total else 0.0), f1


def generalization_gap(metrics: dict[str, float], metric: str | None) -> float:
    """How much better training scores than validation on the study metric's family, so that a larger
    gap is always more overfitting: ``train_x - val_x`` for scores that grow (f1, accuracy, r2),
    ``val_x - train_x`` for errors (rmse, mae); else ``val_loss - train_loss``."""
    family = (metric or "").rpartition("_")[2]
    if family in ("f1", "accuracy", "r2"):
        return metrics[f"train_{family}"] - metrics[f"val_{family}"]
    if family in ("rmse", "mae"):
        return metrics[f"val_{family}"] - metrics[f"train_{family}"]
    return metrics["val_loss"] - metrics["train_loss"]
