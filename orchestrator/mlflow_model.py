"""An MLflow ``pyfunc`` model around a folder ``ftsweep final`` exported, for models that plain
``transformers`` cannot reproduce (mean pooling, which is no option of its classification heads; a
regression model, whose one output is read back in the label's units by its stored scaler).

Imported only when such a model is logged or loaded: it imports MLflow at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.types.type_hints import TypeFromExample

#: The artifact that holds the exported folder.
ARTIFACT = "model_dir"


class ExportedTextClassifier(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """Predicts ``label``, ``score`` and one ``probability_<class>`` column per class for a list of texts;
    a regression model predicts one ``prediction`` column (the predictor's ``predict_frame``)."""

    def load_context(self, context: Any) -> None:
        import json

        import torch

        from trainers.base import load_trainer_class

        folder = Path(context.artifacts[ARTIFACT])
        info = json.loads((folder / "ftsweep_model.json").read_text(encoding="utf-8"))
        trainer_cls = load_trainer_class(str(info["trainer"]))
        self.predictor = trainer_cls.load_predictor(folder, "cuda" if torch.cuda.is_available() else "cpu")

    # MLflow reads the input's hint as the model's input schema: ``TypeFromExample`` takes it from the
    # logged input example (a list of texts), so a one-column table arrives here as that list.
    def predict(
        self, context: Any, model_input: TypeFromExample, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        column = self.predictor.input_column
        data: Any = model_input
        if isinstance(data, pd.DataFrame):
            texts = data[column if column in data else data.columns[0]].tolist()
        elif isinstance(data, str):
            texts = [data]
        else:  # texts, or rows as mappings (a table of several columns)
            texts = [
                row.get(column, next(iter(row.values()))) if isinstance(row, dict) else row for row in data
            ]
        predict_frame = getattr(self.predictor, "predict_frame", None)
        if getattr(self.predictor, "task", None) == "regression" and predict_frame is not None:
            return predict_frame([str(text) for text in texts])
        probabilities = self.predictor.predict_proba([str(text) for text in texts])
        labels = list(self.predictor.labels)
        frame = pd.DataFrame(
            {"label": [labels[i] for i in probabilities.argmax(axis=1)], "score": probabilities.max(axis=1)}
        )
        for index, label in enumerate(labels):
            frame[f"probability_{label}"] = probabilities[:, index]
        return frame
