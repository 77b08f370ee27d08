"""The text-classification trainer's final fit, export and predictor (``ftsweep final`` / ``predict``).

A final fit is a trial of the chosen parameters with three differences: it may train on the
training and validation splits together for a fixed number of epochs (``refit: train+val``); it
reads the test split, which no trial ever reads; and at the end it exports the model (the best
validation epoch's weights, or the last epoch's for ``train+val``) with ``save_pretrained`` and
writes the class probabilities it predicts for each split. Everything else (device, bfloat16,
feature cache, per-epoch checkpoints and resume) is the trial's own code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftsweep_common.errors import UserError
from trainers.hf_loading import hub_options, quiet_transformers

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

#: What a model folder exported by a final fit holds besides the model and tokenizer files.
MODEL_INFO = "ftsweep_model.json"
PREDICTIONS = "predictions.json"


def write_predictions(path: Path, labels: list[str], splits: dict[str, tuple[list[int], Any]]) -> None:
    """Write a fit's predictions: per split, the true class ids and the predicted class probabilities.

    Args:
        path: the file (``request.output_dir / "predictions.json"``); written atomically.
        labels: the class names; a class id is a position here.
        splits: split name -> (true class ids, probabilities of shape ``(rows, len(labels))``).
    """
    document = {
        "labels": list(labels),
        "splits": {
            name: {"true": [int(value) for value in true], "probabilities": _rows(probabilities)}
            for name, (true, probabilities) in splits.items()
        },
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document), encoding="utf-8")
    os.replace(temporary, path)


def write_regression_predictions(path: Path, splits: dict[str, tuple[list[float], Any]]) -> None:
    """Write a regression fit's predictions: per split, the true labels and the predicted numbers.

    Args:
        path: the file (``request.output_dir / "predictions.json"``); written atomically.
        splits: split name -> (true labels, predictions), both in the label's own units.
    """
    document = {
        "task": "regression",
        "labels": [],
        "splits": {
            name: {
                "true": [float(value) for value in true],
                "predicted": [float(value) for value in predicted],
            }
            for name, (true, predicted) in splits.items()
        },
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document), encoding="utf-8")
    os.replace(temporary, path)


def _rows(probabilities: Any) -> list[list[float]]:
    return [[float(value) for value in row] for row in probabilities]


class TextPredictor:
    """A model folder exported by a final fit, loaded to predict class probabilities (a regression
    model's folder loads as a :class:`TextRegressionPredictor`).

    Args:
        model: the sequence-classification model (on its device, in eval mode).
        tokenizer: its tokenizer.
        info: the folder's ``ftsweep_model.json``.
        device: ``"cuda"`` or ``"cpu"``.
    """

    def __init__(self, model: Any, tokenizer: Any, info: dict[str, Any], device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = int(info.get("max_length", 512))
        self.input_column = str(info["input_column"])
        id2label = getattr(model.config, "id2label", {}) or {}
        self.labels = [str(id2label[index]) for index in sorted(id2label)]

    @classmethod
    def load(cls, folder: Path, device: str) -> TextPredictor:
        """Load ``folder`` (``save_pretrained`` model, tokenizer and ``ftsweep_model.json``).

        Raises:
            UserError: when the folder is not such a model.
        """
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(folder)
        info_file = folder / MODEL_INFO
        if not (folder / "config.json").is_file() or not info_file.is_file():
            raise UserError(
                f"{folder} is not a model exported by `ftsweep final` (it needs config.json and "
                f"{MODEL_INFO}); "
                "give the folder `ftsweep final` printed, or models:/NAME/VERSION"
            )
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
            with quiet_transformers():
                model = AutoModelForSequenceClassification.from_pretrained(folder, **hub_options())
                tokenizer = AutoTokenizer.from_pretrained(folder, **hub_options())
        except (OSError, ValueError, KeyError) as error:
            raise UserError(
                f"{folder}: cannot load the model: {str(error).strip().splitlines()[0]}"
            ) from error
        if info.get("pooling") == "mean":
            from trainers.heads import install_mean_pooling

            install_mean_pooling(model)
        use_cuda = device == "cuda" and torch.cuda.is_available()
        model = model.to("cuda" if use_cuda else "cpu").eval()
        predictor = TextRegressionPredictor if info.get("task") == "regression" else cls
        return predictor(model, tokenizer, info, "cuda" if use_cuda else "cpu")

    def predict_frame(self, texts: list[str]) -> pd.DataFrame:
        """The columns ``ftsweep predict`` adds: ``predicted_label`` and one ``probability_<class>`` each."""
        import pandas as pd

        probabilities = self.predict_proba(texts)
        frame = pd.DataFrame({"predicted_label": [self.labels[i] for i in probabilities.argmax(axis=1)]})
        for index, label in enumerate(self.labels):
            frame[f"probability_{label}"] = probabilities[:, index]
        return frame

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, one row per text, columns in the order of :attr:`labels`."""
        import torch

        return torch.softmax(self._logits(texts), dim=-1).double().cpu().numpy()

    def _logits(self, texts: list[str]) -> torch.Tensor:
        import torch

        encoded = self.tokenizer(
            [str(text) for text in texts],
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        inputs = {key: value.to(self.device) for key, value in encoded.items()}
        with torch.inference_mode(), _autocast(self.device):
            return self.model(**inputs).logits.float()


class TextRegressionPredictor(TextPredictor):
    """A regression model's folder (``trainer.task: regression``): one output, read back in the label's
    units through the :class:`~trainers.regression_target.LabelScaler` stored as JSON in
    ``ftsweep_model.json`` (``label_scaler``)."""

    task = "regression"

    def __init__(self, model: Any, tokenizer: Any, info: dict[str, Any], device: str) -> None:
        from trainers.regression_target import LabelScaler

        super().__init__(model, tokenizer, info, device)
        self.labels = []
        try:
            self.scaler = LabelScaler.from_dict(info.get("label_scaler"))
        except ValueError as error:
            raise UserError(f"{MODEL_INFO}: {error}; export the model again with `ftsweep final`") from error

    def predict(self, texts: list[str]) -> np.ndarray:
        """The predicted label of each text, in the label's own units."""
        standardized = self._logits(texts).squeeze(-1).double().cpu()
        return self.scaler.inverse(standardized).numpy()

    def predict_frame(self, texts: list[str]) -> pd.DataFrame:
        """The column ``ftsweep predict`` adds: ``prediction``."""
        import pandas as pd

        return pd.DataFrame({"prediction": self.predict(texts)})

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        raise TypeError("a regression model predicts numbers, not class probabilities: use predict")


def _autocast(device: str) -> Any:
    import contextlib

    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
