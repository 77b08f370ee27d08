"""One text-regression trial (``trainer.task: regression``): the text trial with a numeric target.

:class:`TextRegressionTrial` is the text trial (:class:`trainers.text_trial.TextClassificationTrial`:
tokenization, the model, freezing, the feature cache, the batches) with the target pieces of
:mod:`trainers.regression_target` in place of the classes: one output, the label standardized by a
:class:`~trainers.regression_target.LabelScaler` fitted on the training split, the loss
``trainer.loss`` (mse, huber, l1), and rmse / mae / r2 in the label's own units. The linear probe
is a ridge regression (:func:`trainers.linear_probe.fit_ridge_regression`). The engine does the
rest, as for classification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainers.regression_target import LabelScaler, RegressionSums, regression_loss
from trainers.text_settings import TEXT_REGRESSION_METRIC_NAMES
from trainers.text_trial import MicroBatch, TextClassificationTrial

if TYPE_CHECKING:
    import torch

    from trainers.data import LabelledData
    from trainers.splits import Split


class TextRegressionTrial(TextClassificationTrial):
    """The state of one text-regression trial; see the module docstring."""

    metric_names = TEXT_REGRESSION_METRIC_NAMES
    default_metric = "val_rmse"
    scaler: LabelScaler

    def _load_data(self) -> LabelledData:
        """The splits, and the label's scaler fitted on the training split (only)."""
        data = super()._load_data()
        self.scaler = LabelScaler.fit(data.train.values())
        self.ctx.log(f"label standardized: mean {self.scaler.mean:.6g}, sd {self.scaler.scale:.6g}")
        return data

    def _label_tensor(self, split: Split) -> torch.Tensor:
        """The split's labels standardized by the training split's scaler."""
        import torch

        return self.scaler.transform(torch.tensor(split.values(), dtype=torch.float64)).float()

    def _head_config(self) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def _new_sums(self) -> RegressionSums:
        return RegressionSums(self.scaler, self.settings.loss, self.device)

    def _probe_fit(
        self, features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """A ridge regression on the standardized label, in closed form, scored in the label's units."""
        from trainers.linear_probe import fit_regression_probe

        return fit_regression_probe(features, labels, self.params.probe_l2, self.scaler, self.settings.loss)

    # ---- the task the engine trains (trainers.engine.TrainingTask) ----------------------------

    def _reset_train_metrics(self) -> None:
        self._train_sums = self._new_sums()

    def train_loss(self, batch: MicroBatch) -> torch.Tensor:
        """``trainer.loss`` of one micro-batch (standardized) over its step's size."""
        import torch

        sequences, labels, rows, normalizer = batch
        inputs = self._to_device(self.collate(sequences))
        labels = self._to_device(labels)
        with self.autocast(), self._serving("train", rows):
            predictions = self.model(**inputs).logits.float().squeeze(-1)
        loss_sum = regression_loss(self.settings.loss, predictions, labels, reduction="sum")
        with torch.no_grad():
            self._train_sums.add(predictions, labels, loss_sum)
        return loss_sum / normalizer

    def train_metrics(self) -> dict[str, float]:
        """The epoch's loss (standardized) and rmse, mae, r2 in the label's units, read back once."""
        return self._train_sums.metrics("train")

    def validation_metrics(self) -> dict[str, float]:
        """Loss, rmse, mae and r2 on the validation split."""
        import torch

        sums = self._new_sums()
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            for inputs, labels, rows in self.validation:
                with self._serving("validation", rows):
                    predictions = self.model(**inputs).logits.float().squeeze(-1)
                sums.add(predictions, labels)
        return sums.metrics("val")

    def baseline_metrics(self, metric: str) -> dict[str, float]:
        """None: predicting the training mean is never scored exactly, so no ``no progress`` rule applies."""
        return {}
