"""The text recipe's final fit (``ftsweep final``): a trial that may train on train+val, reads the test
split, exports the model and writes every split's predictions (:mod:`trainers.final_fit`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trainers.data import LabelledData, load_splits
from trainers.final_fit import MODEL_INFO, PREDICTIONS, write_predictions
from trainers.splits import Split
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
    return _FinalFit(trainer, ctx, params, request).run()


class _FinalFit(TextClassificationTrial):
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
        data = load_splits(self.settings.data, self.trainer.base_dir, include_test=self.request.evaluate_test)
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
            true = split.label_ids(self.labels)
            splits[name] = (true, self._probabilities(split.texts))
        self._export(out / "model")
        write_predictions(out / PREDICTIONS, self.labels, splits)
        self.ctx.log(f"final fit: exported to {out / 'model'}; predictions of {', '.join(splits)} written")
        return result

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        """Class probabilities of ``texts`` under the current weights, with dropout off."""
        import numpy as np
        import torch

        from trainers.batching import sorted_batches
        from trainers.tokenization_cache import tokenize_texts

        ids = tokenize_texts(self.tokenizer, texts, self.settings.max_length)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            for rows in sorted_batches([len(sequence) for sequence in ids], self.eval_size):
                inputs = self._to_device(self.collate([ids[row] for row in rows]))
                logits = self.model(**inputs).logits.float()
                out[rows] = torch.softmax(logits, dim=-1).double().cpu().numpy()
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
            "labels": self.labels,
            # Mean pooling is not a transformers option: TextPredictor.load puts it back (see the model card).
            "pooling": str(getattr(self, "pooling", "cls")),
        }
        (folder / MODEL_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
