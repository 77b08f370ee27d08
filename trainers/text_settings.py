"""The text recipe's settings (the sweep's ``trainer`` section) and parameters (what a search tunes).

The parameters the epoch engine reads come from :class:`trainers.training_params.TrainingParams`;
:class:`TextClassificationParams` adds the text recipe's own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainers.base import StrictModel
from trainers.data import DataSettings
from trainers.regression_target import regression_metric_names
from trainers.training_params import TrainingParams

#: What a text-classification trial reports after each epoch, in this order.
TEXT_METRIC_NAMES = (
    "train_loss",
    "train_accuracy",
    "train_f1",
    "val_loss",
    "val_accuracy",
    "val_f1",
    "generalization_gap",
)

#: What a text-regression trial (``task: regression``) reports after each epoch, in this order.
TEXT_REGRESSION_METRIC_NAMES = regression_metric_names()


class TextClassificationSettings(StrictModel):
    """The ``trainer`` section of a text-classification sweep."""

    model: str = Field(
        min_length=1,
        description=(
            "A folder saved with save_pretrained (relative to the sweep file), "
            "'package:<python_package>/<folder>' for a model shipped inside an installed package, "
            "or a Hugging Face id already in the local cache."
        ),
    )
    data: DataSettings = Field(description="The labelled data: files and columns.")
    task: Literal["classification", "regression"] = Field(
        "classification",
        description=(
            "classification: the label column holds classes; regression: it holds a number, the model has "
            "one output trained on the standardized label, and each epoch reports rmse, mae and r2 in the "
            "label's own units (the study metric defaults to val_rmse, minimized)."
        ),
    )
    loss: Literal["mse", "huber", "l1"] = Field(
        "mse",
        description=(
            "The training loss of task regression, on the standardized label (huber: delta 1 standard "
            "deviation); classification always trains cross-entropy."
        ),
    )
    max_length: int = Field(128, ge=2, description="Texts are truncated to this many tokens.")
    epochs: int = Field(3, ge=1, description="Epochs per trial (the parameter 'epochs').")
    batch_size: int = Field(32, ge=1, description="Training batch size (the parameter 'batch_size').")
    eval_batch_size: int | None = Field(
        None, ge=1, description="Evaluation batch size; default twice batch_size."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description=(
            "auto: bfloat16 autocast on a GPU that supports it, float32 on CPU; bf16: autocast on CPU too "
            "(about twice as fast on CPUs with AVX512-BF16 or AMX, slower elsewhere); fp32: never."
        ),
    )
    feature_cache: bool = Field(
        True,
        description=(
            "With freeze_depth k > 0, compute the output of the frozen layers (embeddings and the lowest k "
            "blocks) once per example and reuse it in every epoch and every later trial with the same k; a "
            "deeper k starts from a shallower cache. Frozen layers run in eval mode (dropout does not act "
            "inside them), so the metrics are the same with the cache on and off. The training split is "
            "cached only when augmentation is none; validation and test always."
        ),
    )
    feature_cache_memory_mb: int = Field(
        1024,
        ge=0,
        description=(
            "Megabytes of cached features a trial keeps in memory; beyond it they are memory-mapped from the "
            "study's cache folder on disk (or a temporary folder when the trial has none)."
        ),
    )
    feature_cache_intermediate_mb: int = Field(
        4096,
        ge=0,
        description=(
            "Megabytes of extra disk one fill of one split may use to also store the shallower depths it "
            "passes through (so later trials with a smaller freeze_depth load them); 0 stores only the "
            "trial's own depth. Nothing is stored while it would leave less than 1 GiB free."
        ),
    )
    feature_cache_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description=(
            "How cached features are stored. auto: float32 for float32 trials (metrics equal the uncached "
            "trial's to float rounding), bfloat16 under bfloat16 autocast; float16 / bfloat16 halve memory "
            "and disk at the cost of half-precision rounding of the frozen layers' output."
        ),
    )

    @model_validator(mode="after")
    def _loss_is_for_regression(self) -> TextClassificationSettings:
        if "loss" in self.model_fields_set and self.task != "regression":
            raise ValueError(
                f"loss {self.loss!r} applies to task regression; classification always trains cross-entropy: "
                "remove trainer.loss or set trainer.task: regression"
            )
        return self


class TextClassificationParams(TrainingParams):
    """Everything a search space may tune or a sweep may fix, with its default."""

    dropout: float | None = Field(
        None, ge=0, lt=1, description="Hidden and classifier dropout; unset keeps the model's own."
    )
    attention_dropout: float | None = Field(
        None, ge=0, lt=1, description="Dropout on attention probabilities; unset follows dropout."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the training loss.")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced weighs each class's loss by n / (classes * count)."
    )
    augmentation: Literal["none", "token_dropout", "word_swap"] = Field(
        "none", description="Token-level augmentation of the training batches."
    )
    augmentation_prob: float = Field(
        0.1, ge=0, lt=1, description="Per-token probability of the augmentation."
    )
    strategy: Literal["finetune", "linear_probe", "lp_ft"] = Field(
        "finetune",
        description=(
            "finetune: train the model (less its frozen layers); linear_probe: fit only the head, a logistic "
            "regression on the frozen model's features (one epoch); lp_ft: fit that probe first, then "
            "fine-tune from it (Kumar et al., ICLR 2022)."
        ),
    )
    pooling: Literal["auto", "cls", "mean"] = Field(
        "auto",
        description=(
            "What the head reads: cls (the architecture's own head, the first token), mean (the masked mean "
            "of the last layer's tokens), auto (mean for sentence-embedding models, else cls)."
        ),
    )
    probe_l2: float = Field(
        1e-3, ge=0, description="L2 strength of the linear probe's logistic regression (linear_probe, lp_ft)."
    )

    def head_lr(self) -> float:
        """The head's learning rate: as :class:`TrainingParams`, but ``learning_rate`` under lp_ft
        (the probed head is already fitted)."""
        if self.head_learning_rate is None and self.strategy == "lp_ft":
            return self.learning_rate
        return super().head_lr()
