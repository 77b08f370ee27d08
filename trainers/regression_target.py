"""Regression targets for any recipe: the label's scaling, the losses, and the metrics in the label's units.

Contract. A recipe with ``trainer.task: regression`` trains its one-output model on the
*standardized* label: :class:`LabelScaler` is fitted on the training split only (its mean and
standard deviation), ``transform`` maps labels to the scale the model learns, ``inverse`` maps the
model's outputs back. The scaler is two floats and writes itself as JSON (``to_dict`` /
``from_dict``) for checkpoints and exported models: never pickle. :func:`regression_loss` is the
training loss on the standardized scale (``mse``, ``huber`` with delta 1 standard deviation, ``l1``).
:class:`RegressionSums` accumulates one split's errors on the device (no host synchronisation per
batch) and reads back ``<prefix>_loss`` (the loss as trained, standardized) and ``<prefix>_rmse``,
``<prefix>_mae``, ``<prefix>_r2`` in the label's own units. Nothing here knows about text or images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

RegressionLoss = Literal["mse", "huber", "l1"]
#: The losses ``trainer.loss`` may name for a regression task.
REGRESSION_LOSSES: tuple[str, ...] = ("mse", "huber", "l1")
#: The error metrics of a regression task, reported as ``train_<name>`` and ``val_<name>``.
REGRESSION_ERRORS = ("rmse", "mae", "r2")


def regression_metric_names() -> tuple[str, ...]:
    """What a regression trial reports after each epoch, in this order."""
    train = ("train_loss", *(f"train_{name}" for name in REGRESSION_ERRORS))
    val = ("val_loss", *(f"val_{name}" for name in REGRESSION_ERRORS))
    return (*train, *val, "generalization_gap")


@dataclass(frozen=True)
class LabelScaler:
    """Standardizes a numeric label: ``(y - mean) / scale``; fitted on the training split only.

    Attributes:
        mean: the training labels' mean.
        scale: their standard deviation (population), or 1.0 when they are all equal.
    """

    mean: float
    scale: float

    @classmethod
    def fit(cls, values: Sequence[float]) -> LabelScaler:
        """The scaler of ``values`` (the training labels).

        Raises:
            ValueError: for no values or a value that is not finite.
        """
        if not values:
            raise ValueError("cannot fit a label scaler on no values")
        if not all(math.isfinite(value) for value in values):
            raise ValueError("cannot fit a label scaler on values that are not finite")
        mean = math.fsum(values) / len(values)
        variance = math.fsum((value - mean) ** 2 for value in values) / len(values)
        scale = math.sqrt(variance)
        return cls(mean=mean, scale=scale if scale > 0 and math.isfinite(scale) else 1.0)

    def transform(self, values: Any) -> Any:
        """Labels (floats or a tensor) on the scale the model learns."""
        return (values - self.mean) / self.scale

    def inverse(self, values: Any) -> Any:
        """Model outputs (floats or a tensor) in the label's own units."""
        return values * self.scale + self.mean

    def to_dict(self) -> dict[str, float]:
        """A JSON-ready mapping (for checkpoints and exported models)."""
        return {"mean": self.mean, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: Any) -> LabelScaler:
        """The scaler :meth:`to_dict` wrote.

        Raises:
            ValueError: when ``data`` is not such a mapping of two finite numbers (scale above 0).
        """
        try:
            mean, scale = float(data["mean"]), float(data["scale"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a label scaler: {data!r}") from error
        if not (math.isfinite(mean) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"not a label scaler: {data!r} (mean and scale must be finite, scale above 0)")
        return cls(mean=mean, scale=scale)


def regression_loss(
    name: str, predictions: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """The loss ``name`` (mse, huber, l1) of standardized ``predictions`` against standardized ``targets``.

    Huber's delta is 1.0: one standard deviation of the training labels, quadratic within it.

    Raises:
        ValueError: for an unknown loss.
    """
    import torch.nn.functional as F  # noqa: N812 - the usual name

    if name == "mse":
        return F.mse_loss(predictions, targets, reduction=reduction)
    if name == "huber":
        return F.huber_loss(predictions, targets, reduction=reduction, delta=1.0)
    if name == "l1":
        return F.l1_loss(predictions, targets, reduction=reduction)
    raise ValueError(f"loss {name!r}; allowed: {', '.join(REGRESSION_LOSSES)}")


class RegressionSums:
    """One split's running sums on the device: count, loss, squared and absolute errors, label moments.

    Args:
        scaler: the training split's scaler (errors are summed in the label's own units).
        loss: the training loss's name (``<prefix>_loss`` is its mean, on the standardized scale).
        device: where the sums live (the model's device).
    """

    def __init__(self, scaler: LabelScaler, loss: str, device: Any = "cpu") -> None:
        import torch

        self.scaler = scaler
        self.loss = loss
        # n, loss, squared error, absolute error, sum of y, sum of y^2 (float64 against cancellation).
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)

    def add(
        self, predictions: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor | None = None
    ) -> None:
        """Add a batch: standardized ``predictions`` and ``targets`` (1-D), and its summed loss if known."""
        import torch

        predictions, targets = predictions.detach().double(), targets.detach().double()
        if loss_sum is None:
            loss_sum = regression_loss(self.loss, predictions, targets, reduction="sum")
        error = (predictions - targets) * self.scaler.scale
        labels = self.scaler.inverse(targets)
        n = torch.full((), len(targets), dtype=torch.float64, device=self.sums.device)
        self.sums += torch.stack(
            [
                n,
                loss_sum.detach().double(),
                (error * error).sum(),
                error.abs().sum(),
                labels.sum(),
                (labels * labels).sum(),
            ]
        )

    def metrics(self, prefix: str) -> dict[str, float]:
        """``<prefix>_loss``, ``_rmse``, ``_mae``, ``_r2``, read back from the device once.

        R^2 is ``1 - SSE / SST`` around the split's own mean (scikit-learn's ``r2_score``); 0.0 when
        every label of the split is the same.
        """
        n, loss, squared, absolute, total, total_squared = self.sums.tolist()
        return error_metrics(prefix, n, loss, squared, absolute, total, total_squared)


def error_metrics(
    prefix: str, n: float, loss: float, squared: float, absolute: float, total: float, total_squared: float
) -> dict[str, float]:
    """The metrics of :class:`RegressionSums` from its sums (see there)."""
    count = max(n, 1.0)
    spread = total_squared - total * total / count
    r2 = 1.0 - squared / spread if spread > 1e-12 * max(total_squared, 1.0) else 0.0
    return {
        f"{prefix}_loss": loss / count,
        f"{prefix}_rmse": math.sqrt(squared / count),
        f"{prefix}_mae": absolute / count,
        f"{prefix}_r2": r2,
    }
