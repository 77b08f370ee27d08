"""The text recipe's final fit (``ftsweep final``): a trial that may train on train+val, reads the test
split, exports the model and writes every split's predictions (:mod:`trainers.final_fit`).

One fit for both tasks: :class:`_FinalFitSteps` holds what a final fit adds to a trial, and the
task's trial class (classification or ``trainer.task: regression``) supplies the rest. The task
shows in three places only: what a split's predictions are (class probabilities, or numbers in the
label's units), how they are written, and what the exported folder's ``ftsweep_model.json`` holds
(the classes, or ``task: regression`` and the label's scaler as JSON).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trainers.data import LabelledData, load_splits
from trainers.final_fit import MODEL_INFO, PREDICTIONS, write_predictions, write_regression_predictions
from trainers.regression_target import LabelScaler
from trainers.splits import Split
from trainers.text_regression import TextRegressionTrial
from trainers.text_settings import TextClassificationParams
from trainers.text_trial import TextClassificationTrial, TextRecipe

if TYPE_CHECKING:
    import numpy as np

    from trainers.base import FinalFitRequest, TrialContext


def final_fit(trainer: TextRecipe, ctx: TrialContext, request: FinalFitRequest) -> dict[str, float]:
    """Train, export and predict as :meth:`trainers.base.BaseTrainer.final_fit` describes."""
    params = TextClassificationParams(**ctx.params)
    if request.refit == "train+val":
        if request.epochs is None:
            raise ValueError("a train+val fit needs its epoch count")
        # No validation split is left to stop on or to pick an epoch with: exactly `epochs` epochs.
        update: dict[str, Any] = {"epochs": int(request.epochs), "early_stopping_patience": 0}
        if "min_steps" in TextClassificationParams.model_fields:
            update["min_steps"] = 0  # the trial's epoch count already includes what min_steps added
        params = params.model_copy(update=update)
    fit = _RegressionFinalFit if trainer.settings.task == "regression" else _FinalFit
    return fit(trainer, ctx, params, request).run()


class _FinalFitSteps(TextClassificationTrial):
    """A trial that may train on train+val, reads the test split, and exports its model at the end."""

    def __init__(
        self,
        trainer: TextRecipe,
        ctx: TrialContext,
        params: TextClassificationParams,
        request: FinalFitRequest,
    ) -> None:
        super().__init__(trainer, ctx, params)
        self.request = request

    def _load_data(self) -> LabelledData:
        data = load_splits(
            self.settings.data,
            self.trainer.base_dir,
            include_test=self.request.evaluate_test,
            task=self.settings.task,
        )
        self.train_split = data.train
        if self.request.refit == "train+val":
            merged = Split(
                data.train.texts + data.validation.texts,
                data.train.labels + data.validation.labels,
                f"{data.train.source} + {data.validation.source}",
            )
            data = LabelledData(train=merged, validation=data.validation, test=data.test, labels=data.labels)
            self.train_split = merged
        self.data = data
        return data

    def _keep(self) -> Literal["best", "last"]:
        # The validation rows are training rows on train+val: the last epoch is the model, by design.
        return "last" if self.request.refit == "train+val" else "best"

    def run(self) -> dict[str, float]:
        result = super().run()  # trains (or resumes); the feature cache is closed when it returns
        self.features = None
        self.engine.restore_best()
        out = Path(self.request.output_dir)
        splits: dict[str, tuple[list[int], Any]] = {}
        named = [("train", self.train_split)]
        if self.request.refit == "train":
            named.append(("validation", self.data.validation))
        if self.data.test is not None:
            named.append(("test", self.data.test))
        for name, split in named:
            splits[name] = self._split_predictions(split)
        self._export(out / "model")
        self._write_predictions(out / PREDICTIONS, splits)
        self.ctx.log(f"final fit: exported to {out / 'model'}; predictions of {', '.join(splits)} written")
        return result

    def _split_predictions(self, split: Split) -> tuple[list[Any], np.ndarray]:
        """The split's true class ids and the predicted class probabilities."""
        return split.label_ids(self.labels), torch_softmax(self._outputs(split.texts))

    def _write_predictions(self, path: Path, splits: dict[str, tuple[list[Any], Any]]) -> None:
        write_predictions(path, self.labels, splits)

    def _task_info(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def _outputs(self, texts: list[str]) -> np.ndarray:
        """The model's outputs (logits) for ``texts`` under the current weights, with dropout off."""
        import numpy as np
        import torch

        from trainers.batching import sorted_batches
        from trainers.tokenization_cache import tokenize_texts

        ids = tokenize_texts(self.tokenizer, texts, self.settings.max_length)
        out = np.zeros((len(texts), int(self.model.config.num_labels)), dtype=np.float64)
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            for rows in sorted_batches([len(sequence) for sequence in ids], self.eval_size):
                inputs = self._to_device(self.collate([ids[row] for row in rows]))
                out[rows] = self.model(**inputs).logits.float().double().cpu().numpy()
        return out

    def _export(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        info = {
            "trainer": self.trainer.name,
            "input_column": self.settings.data.text_column,
            "label_column": self.settings.data.label_column,
            "max_length": self.settings.max_length,
            **self._task_info(),
            # Mean pooling is not a transformers option: TextPredictor.load puts it back (see the model card).
            "pooling": str(getattr(self, "pooling", "cls")),
        }
        (folder / MODEL_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")


def torch_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float64 logits (as the predictor computes it)."""
    import torch

    return torch.softmax(torch.from_numpy(logits).float(), dim=-1).double().numpy()


class _FinalFit(_FinalFitSteps):
    """The final fit of a classification task."""


class _RegressionFinalFit(_FinalFitSteps, TextRegressionTrial):
    """The final fit of ``trainer.task: regression``: numbers in the label's units, the scaler exported."""

    scaler: LabelScaler

    def _load_data(self) -> LabelledData:
        data = super()._load_data()  # the final fit's splits (train+val merged when asked)
        self.scaler = LabelScaler.fit(data.train.values())  # fitted on what this fit trains on
        self.ctx.log(f"label standardized: mean {self.scaler.mean:.6g}, sd {self.scaler.scale:.6g}")
        return data

    def _split_predictions(self, split: Split) -> tuple[list[Any], np.ndarray]:
        """The split's labels and the predicted numbers, both in the label's units."""
        return split.values(), self.scaler.inverse(self._outputs(split.texts)[:, 0])

    def _write_predictions(self, path: Path, splits: dict[str, tuple[list[Any], Any]]) -> None:
        write_regression_predictions(path, splits)

    def _task_info(self) -> dict[str, Any]:
        return {"task": "regression", "labels": [], "label_scaler": self.scaler.to_dict()}
