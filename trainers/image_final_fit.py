"""The image recipe's final fit and predictor (``ftsweep final`` / ``ftsweep predict``).

As the text recipe's (:mod:`trainers.text_final_fit`): a trial of the chosen parameters that may
train on train+val for a fixed number of epochs, reads the test split, and at the end exports the
model (``save_pretrained``, with its image processor) and writes the class probabilities it
predicts for each split (:func:`trainers.final_fit.write_predictions`). The exported folder loads
back as an :class:`ImagePredictor`, whose inputs are image paths (the data's path column).
With ``trainer.task: regression`` the fit writes numbers in the label's units
(:func:`trainers.final_fit.write_regression_predictions`), the folder's ``ftsweep_model.json`` holds
``task: regression`` and the label's scaler as JSON, and it loads back as an
:class:`ImageRegressionPredictor` (one ``prediction`` column).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ftsweep_common.errors import UserError
from trainers.final_fit import MODEL_INFO, PREDICTIONS, write_predictions, write_regression_predictions
from trainers.hf_loading import hub_options, quiet_transformers
from trainers.image_data import ImageDataset, ImageSplit, LabelledImages, load_image_splits
from trainers.image_regression import ImageRegressionTrial
from trainers.image_settings import ImageClassificationParams
from trainers.image_trial import ImageClassificationTrial, ImageRecipe
from trainers.regression_target import LabelScaler

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from trainers.base import FinalFitRequest, TrialContext


def final_fit(trainer: ImageRecipe, ctx: TrialContext, request: FinalFitRequest) -> dict[str, float]:
    """Train, export and predict as :meth:`trainers.base.BaseTrainer.final_fit` describes."""
    params = ImageClassificationParams(**ctx.params)
    if request.refit == "train+val":
        if request.epochs is None:
            raise ValueError("a train+val fit needs its epoch count")
        # No validation split is left to stop on or to pick an epoch with: exactly `epochs` epochs.
        params = params.model_copy(
            update={"epochs": int(request.epochs), "early_stopping_patience": 0, "min_steps": 0}
        )
    fit = _ImageRegressionFinalFit if trainer.settings.task == "regression" else _ImageFinalFit
    return fit(trainer, ctx, params, request).run()


class _ImageFinalFit(ImageClassificationTrial):
    """A trial that may train on train+val, reads the test split, and exports its model at the end."""

    def __init__(
        self,
        trainer: ImageRecipe,
        ctx: TrialContext,
        params: ImageClassificationParams,
        request: FinalFitRequest,
    ) -> None:
        super().__init__(trainer, ctx, params)
        self.request = request

    def _load_data(self) -> LabelledImages:
        data = load_image_splits(
            self.settings.data,
            self.trainer.base_dir,
            include_test=self.request.evaluate_test,
            check_images=False,
            task=self.settings.task,
        )
        self.train_split = data.train
        if self.request.refit == "train+val":
            merged = ImageSplit(
                data.train.paths + data.validation.paths,
                data.train.labels + data.validation.labels,
                f"{data.train.source} + {data.validation.source}",
            )
            data = LabelledImages(merged, data.validation, data.test, data.labels)
            self.train_split = merged
        self.data = data
        return data

    def _keep(self) -> Literal["best", "last"]:
        # The validation images are training images on train+val: the last epoch is the model.
        return "last" if self.request.refit == "train+val" else "best"

    def run(self) -> dict[str, float]:
        result = super().run()  # trains (or resumes); the feature cache and the workers are closed
        self.engine.restore_best()
        out = Path(self.request.output_dir)
        named = [("train", self.train_split)]
        if self.request.refit == "train":
            named.append(("validation", self.data.validation))
        if self.data.test is not None:
            named.append(("test", self.data.test))
        splits = {name: self._split_predictions(split) for name, split in named}
        self._export(out / "model")
        self._write_predictions(out / PREDICTIONS, splits)
        self.ctx.log(f"final fit: exported to {out / 'model'}; predictions of {', '.join(splits)} written")
        return result

    def _split_predictions(self, split: ImageSplit) -> tuple[list[Any], np.ndarray]:
        """The split's class ids and the predicted class probabilities."""
        import torch

        return split.label_ids(self.labels), torch.softmax(self._outputs(split), dim=-1).double().numpy()

    def _write_predictions(self, path: Path, splits: dict[str, tuple[list[Any], Any]]) -> None:
        write_predictions(path, self.labels, splits)

    def _task_info(self) -> dict[str, Any]:
        """What ``ftsweep_model.json`` says of the task: the classes."""
        return {"labels": self.labels}

    def _outputs(self, split: ImageSplit) -> torch.Tensor:
        """The model's outputs (logits) for the split's images (evaluation transform), with dropout off."""
        import torch

        dataset = ImageDataset(split, self._dataset_classes(), self.eval_transform, self.params.seed)
        rows = []
        self.model.eval()
        with torch.inference_mode(), self.runtime.autocast():
            for images, _ in self._batches(self._loader_for(dataset, self.eval_size, shuffle=False)):
                rows.append(self.model(pixel_values=self._to_device(images)).logits.float().cpu())
        width = int(self.model.config.num_labels)
        return torch.cat(rows) if rows else torch.zeros((0, width))

    def _export(self, folder: Path) -> None:
        from transformers import AutoImageProcessor

        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        with quiet_transformers():
            processor = AutoImageProcessor.from_pretrained(self.trainer.model_path, **hub_options())
            processor.save_pretrained(folder)
        info = {
            "trainer": "image-classification",
            "input_column": self.settings.data.path_column,
            "label_column": self.settings.data.label_column,
            **self._task_info(),
        }
        (folder / MODEL_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")


class _ImageRegressionFinalFit(_ImageFinalFit, ImageRegressionTrial):
    """The final fit of ``trainer.task: regression``: numbers in the label's units, the scaler exported."""

    scaler: LabelScaler

    def _load_data(self) -> LabelledImages:
        data = super()._load_data()  # the final fit's splits (train+val merged when asked)
        self.scaler = LabelScaler.fit(data.train.values())  # fitted on what this fit trains on
        self.ctx.log(f"label standardized: mean {self.scaler.mean:.6g}, sd {self.scaler.scale:.6g}")
        return data

    def _split_predictions(self, split: ImageSplit) -> tuple[list[Any], np.ndarray]:
        """The split's labels and the predicted numbers, both in the label's units."""
        return split.values(), self.scaler.inverse(self._outputs(split)[:, 0].double()).numpy()

    def _write_predictions(self, path: Path, splits: dict[str, tuple[list[Any], Any]]) -> None:
        write_regression_predictions(path, splits)

    def _task_info(self) -> dict[str, Any]:
        return {"task": "regression", "labels": [], "label_scaler": self.scaler.to_dict()}


class ImagePredictor:
    """A model folder exported by an image final fit, loaded to predict class probabilities of images.

    Its inputs are image paths (absolute, or relative to the current folder), the data's path column.
    """

    def __init__(self, model: Any, geometry: Any, info: dict[str, Any], device: str) -> None:
        from trainers.image_augment import EvalTransform

        self.model = model
        self.transform = EvalTransform(geometry)
        self.device = device
        self.input_column = str(info["input_column"])
        id2label = getattr(model.config, "id2label", {}) or {}
        self.labels = [str(id2label[index]) for index in sorted(id2label)]

    @classmethod
    def load(cls, folder: Path, device: str) -> ImagePredictor:
        """Load ``folder`` (``save_pretrained`` model, image processor and ``ftsweep_model.json``).

        Raises:
            UserError: when the folder is not such a model.
        """
        import torch
        from transformers import AutoModelForImageClassification

        from trainers.image_geometry import load_image_geometry

        folder = Path(folder)
        info_file = folder / MODEL_INFO
        if not (folder / "config.json").is_file() or not info_file.is_file():
            raise UserError(
                f"{folder} is not a model exported by `ftsweep final` (it needs config.json and "
                f"{MODEL_INFO}); give the folder `ftsweep final` printed, or models:/NAME/VERSION"
            )
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
            with quiet_transformers():
                model = AutoModelForImageClassification.from_pretrained(folder, **hub_options())
            geometry = load_image_geometry(folder)
        except (OSError, ValueError, KeyError) as error:
            raise UserError(
                f"{folder}: cannot load the model: {str(error).strip().splitlines()[0]}"
            ) from error
        use_cuda = device == "cuda" and torch.cuda.is_available()
        model = model.to("cuda" if use_cuda else "cpu").eval()
        predictor = ImageRegressionPredictor if info.get("task") == "regression" else cls
        return predictor(model, geometry, info, "cuda" if use_cuda else "cpu")

    def predict_proba(self, paths: list[str]) -> np.ndarray:
        """Class probabilities, one row per image path, columns in the order of :attr:`labels`.

        Raises:
            DataError: naming an image that cannot be read.
        """
        import torch

        return torch.softmax(self._logits(paths), dim=-1).double().cpu().numpy()

    def _logits(self, paths: list[str]) -> torch.Tensor:
        import torch

        from trainers.image_data import decode_image

        images = torch.stack([self.transform(decode_image(Path(path))) for path in paths])
        with torch.inference_mode():
            return self.model(pixel_values=images.to(self.device)).logits.float()


class ImageRegressionPredictor(ImagePredictor):
    """A regression model's folder (``trainer.task: regression``): one output, read back in the label's
    units through the :class:`~trainers.regression_target.LabelScaler` stored in ``ftsweep_model.json``."""

    task = "regression"

    def __init__(self, model: Any, geometry: Any, info: dict[str, Any], device: str) -> None:
        super().__init__(model, geometry, info, device)
        self.labels = []
        try:
            self.scaler = LabelScaler.from_dict(info.get("label_scaler"))
        except ValueError as error:
            raise UserError(f"{MODEL_INFO}: {error}; export the model again with `ftsweep final`") from error

    def predict(self, paths: list[str]) -> np.ndarray:
        """The predicted label of each image path, in the label's own units."""
        return self.scaler.inverse(self._logits(paths).squeeze(-1).double().cpu()).numpy()

    def predict_frame(self, paths: list[str]) -> pd.DataFrame:
        """The column ``ftsweep predict`` adds: ``prediction``."""
        import pandas as pd

        return pd.DataFrame({"prediction": self.predict(paths)})

    def predict_proba(self, paths: list[str]) -> np.ndarray:
        raise TypeError("a regression model predicts numbers, not class probabilities: use predict")
