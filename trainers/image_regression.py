"""One image-regression trial (``trainer.task: regression``): the image trial with a numeric target.

:class:`ImageRegressionTrial` is the image trial (:class:`trainers.image_trial.ImageClassificationTrial`:
the images, the augmentations, the model, freezing, the feature cache, the batches) with the target
pieces of :mod:`trainers.regression_target` in place of the classes, as the text recipe's
:class:`trainers.text_regression.TextRegressionTrial`: one output, the label standardized by a
:class:`~trainers.regression_target.LabelScaler` fitted on the training split, the loss
``trainer.loss`` (mse, huber, l1), and rmse / mae / r2 in the label's own units. The datasets yield
the labels as numbers; they are standardized on the device. Mixup / cutmix, label smoothing and class
weights are refused while planning (the trainer's ``check_params``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainers.image_settings import IMAGE_REGRESSION_METRIC_NAMES
from trainers.image_trial import ImageClassificationTrial, MicroBatch
from trainers.regression_target import LabelScaler, RegressionSums, regression_loss

if TYPE_CHECKING:
    import torch

    from trainers.image_data import LabelledImages


class ImageRegressionTrial(ImageClassificationTrial):
    """The state of one image-regression trial; see the module docstring."""

    metric_names = IMAGE_REGRESSION_METRIC_NAMES
    default_metric = "val_rmse"
    scaler: LabelScaler

    def _load_data(self) -> LabelledImages:
        """The splits, and the label's scaler fitted on the training split (only)."""
        data = super()._load_data()
        self.scaler = LabelScaler.fit(data.train.values())
        self.ctx.log(f"label standardized: mean {self.scaler.mean:.6g}, sd {self.scaler.scale:.6g}")
        return data

    def _dataset_classes(self) -> list[str] | None:
        return None  # the datasets yield each image's number

    def _head_config(self) -> dict[str, Any]:
        # One output, named, replacing the saved model's classes (without them transformers warns).
        return {
            "num_labels": 1,
            "problem_type": "regression",
            "id2label": {0: "prediction"},
            "label2id": {"prediction": 0},
        }

    def _new_sums(self) -> RegressionSums:
        return RegressionSums(self.scaler, self.settings.loss, self.device)

    def _standardized(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels in the label's units (from a dataset) on the device, on the scale the model learns."""
        return self.scaler.transform(self.runtime.to_device(labels).double()).float()

    def _predict(self, images: torch.Tensor, served: bool) -> torch.Tensor:
        """The model's standardized predictions, one per image (or per served state)."""
        with self._model_inputs(images, served) as inputs, self.runtime.autocast():
            return self.model(pixel_values=self._to_device(inputs)).logits.float().squeeze(-1)

    # ---- the task the engine trains (trainers.engine.TrainingTask) ----------------------------

    def _reset_train_metrics(self) -> None:
        self._train_sums = self._new_sums()

    def train_loss(self, batch: MicroBatch) -> torch.Tensor:
        """``trainer.loss`` of one micro-batch (standardized) over its step's size."""
        import torch

        images, labels, _, normalizer = batch
        targets = self._standardized(labels)
        predictions = self._predict(images, self.train_states is not None)
        loss_sum = regression_loss(self.settings.loss, predictions, targets, reduction="sum")
        with torch.no_grad():
            self._train_sums.add(predictions, targets, loss_sum)
        return loss_sum / normalizer

    def train_metrics(self) -> dict[str, float]:
        """The epoch's loss (standardized) and rmse, mae, r2 in the label's units, read back once."""
        return self._train_sums.metrics("train")

    def validation_metrics(self) -> dict[str, float]:
        """Loss, rmse, mae and r2 on the validation split (evaluation transform only)."""
        import torch

        batches: Any = self.validation
        if batches is None:
            batches = self._batches(self._loader_for(self.validation_set, self.eval_size, shuffle=False))
        served = self.features is not None  # the kept validation batches hold states then
        sums = self._new_sums()
        self.model.eval()
        with torch.inference_mode():
            for images, labels in batches:
                sums.add(self._predict(images, served), self._standardized(labels))
        return sums.metrics("val")

    def baseline_metrics(self, metric: str) -> dict[str, float]:
        """None: predicting the training mean is never scored exactly, so no ``no progress`` rule applies."""
        return {}
