"""What the benchmarks that run the Hugging Face ``Trainer`` share: the data and the metric.

Both sides of a comparison read the same CSV files and score with ftsweep's own macro F1
(``trainers.text_classification.accuracy_and_macro_f1``), so only the training loop differs.
Imported inside the benchmarks' child processes (it imports torch and transformers' tokenizers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class Rows(torch.utils.data.Dataset):
    """Tokenized rows with their label ids, as the ``Trainer`` and ``DataCollatorWithPadding`` want them."""

    def __init__(
        self, tokenizer: Any, texts: list[str], names: list[str], index: dict[str, int], max_length: int
    ) -> None:
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        self.items = [
            {**{key: values[row] for key, values in encoded.items()}, "labels": index[names[row]]}
            for row in range(len(texts))
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.items[row]


@dataclass
class TrainerData:
    """The training and validation rows of a CSV pair, labelled as ftsweep labels them (sorted names)."""

    labels: list[str]
    index: dict[str, int]
    train_labels: list[str]
    train: Rows
    validation: Rows


def read_trainer_data(tokenizer: Any, train: Path, validation: Path, max_length: int) -> TrainerData:
    from trainers.data_files import read_table

    train_texts, train_labels = read_table(train, "text", "label")
    val_texts, val_labels = read_table(validation, "text", "label")
    labels = sorted(set(train_labels))
    index = {label: position for position, label in enumerate(labels)}
    return TrainerData(
        labels,
        index,
        train_labels,
        Rows(tokenizer, train_texts, train_labels, index, max_length),
        Rows(tokenizer, val_texts, val_labels, index, max_length),
    )


def macro_f1_metrics(n_labels: int) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for the ``Trainer``: accuracy and macro F1 (``eval_f1``) as ftsweep
    computes them."""
    import numpy as np

    from trainers.text_classification import accuracy_and_macro_f1

    def compute_metrics(prediction: Any) -> dict[str, float]:
        predicted = np.argmax(prediction.predictions, axis=-1)
        confusion = np.zeros((n_labels, n_labels), dtype=np.int64)
        np.add.at(confusion, (prediction.label_ids, predicted), 1)
        accuracy, f1 = accuracy_and_macro_f1(torch.from_numpy(confusion))
        return {"accuracy": accuracy, "f1": f1}

    return compute_metrics


def training_arguments(output_dir: Path, *, epochs: int, batch_size: int, seed: int, **settings: Any) -> Any:
    """The ``TrainingArguments`` both benchmarks share (CPU, linear schedule, clipping at 1, evaluation
    each epoch, nothing saved, logged or reported); ``settings`` add each one's own."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=2 * batch_size,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=seed,
        use_cpu=True,
        disable_tqdm=True,
        **settings,
    )
