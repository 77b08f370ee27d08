"""An MLflow ``pyfunc`` model around a folder ``ftsweep final`` exported, for models that plain
``transformers`` cannot reproduce (mean pooling, which is no option of its classification heads).

Imported only when such a model is logged or loaded: it imports MLflow at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

#: The artifact that holds the exported folder.
ARTIFACT = "model_dir"


class ExportedTextClassifier(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """Predicts ``label``, ``score`` and one ``probability_<class>`` column per class for a list of texts."""

    def load_context(self, context: Any) -> None:
        import json

        import torch

        from trainers.base import load_trainer_class

        folder = Path(context.artifacts[ARTIFACT])
        info = json.loads((folder / "ftsweep_model.json").read_text(encoding="utf-8"))
        trainer_cls = load_trainer_class(str(info["trainer"]))
        self.predictor = trainer_cls.load_predictor(folder, "cuda" if torch.cuda.is_available() else "cpu")

    # No type hints here: MLflow reads them as the model's input schema and warns about Any.
    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            column = self.predictor.input_column
            texts = model_input[column if column in model_input else model_input.columns[0]].tolist()
        elif isinstance(model_input, str):
            texts = [model_input]
        else:
            texts = list(model_input)
        probabilities = self.predictor.predict_proba([str(text) for text in texts])
        labels = list(self.predictor.labels)
        frame = pd.DataFrame(
            {"label": [labels[i] for i in probabilities.argmax(axis=1)], "score": probabilities.max(axis=1)}
        )
        for index, label in enumerate(labels):
            frame[f"probability_{label}"] = probabilities[:, index]
        return frame
