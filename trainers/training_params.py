"""The parameters every recipe on the epoch engine has (:mod:`trainers.engine`), with their defaults.

A recipe's ``Params`` model derives from :class:`TrainingParams` and adds its own (the text recipe:
dropout, label smoothing, class weights, augmentation, strategy, pooling); the engine reads only
the fields below.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from trainers.base import StrictModel

#: A freshly initialised head learns little at an encoder's learning rate within a few hundred steps.
DEFAULT_HEAD_LEARNING_RATE = 1e-3


class TrainingParams(StrictModel):
    """The optimizer, its schedule, the penalties, freezing, early stopping and the seed."""

    learning_rate: float = Field(
        3e-5, gt=0, description="Peak AdamW learning rate (of the head, with layer-wise decay)."
    )
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of the steps the learning rate warms up over."
    )
    batch_size: int = Field(32, ge=1, description="Examples per optimizer step.")
    epochs: int = Field(3, ge=1, description="Passes over the training data.")
    max_grad_norm: float = Field(
        1.0, ge=0, description="Clip the gradient norm to this; 0 turns clipping off."
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description=(
            "Split each batch into this many forward passes; the step still sees batch_size examples."
        ),
    )
    weight_decay: float = Field(
        0.0, ge=0, description="Decoupled weight decay (not on biases and norm weights)."
    )
    regularizer: Literal["none", "l1", "l2sp"] = Field(
        "none", description="Extra penalty: l1 (sum |w|) or l2sp (distance from the pre-trained weights)."
    )
    reg_strength: float = Field(0.0, ge=0, description="Weight of the regularizer's penalty in the loss.")
    freeze_depth: int = Field(
        0,
        ge=0,
        description=(
            "Freeze the embeddings (the stem) and this many lowest blocks (encoder layers, or a vision "
            "model's stages); num_layers trains only the head."
        ),
    )
    layerwise_lr_decay: float = Field(
        1.0, gt=0, le=1, description="Each layer further below the head learns this factor slower."
    )
    early_stopping_patience: int = Field(
        0,
        ge=0,
        description="Stop after this many epochs without improvement of the study metric; 0 never stops.",
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="The least change that counts as improvement."
    )
    seed: int = Field(0, description="Seeds initialization, shuffling, dropout and augmentation.")
    head_learning_rate: float | None = Field(
        None,
        gt=0,
        description=(
            "Peak learning rate of the head (pooler and classifier); unset: "
            f"max({DEFAULT_HEAD_LEARNING_RATE:g}, learning_rate), or learning_rate under lp_ft (the probed "
            "head is already fitted)."
        ),
    )
    min_steps: int = Field(
        0,
        ge=0,
        description=(
            "At least this many optimizer steps: on a small training set the trial runs more epochs than "
            "'epochs' to reach them (0: exactly 'epochs')."
        ),
    )

    @property
    def micro_batch_size(self) -> int:
        """Examples per forward pass: the batch split over ``gradient_accumulation_steps`` passes."""
        return max(1, self.batch_size // self.gradient_accumulation_steps)

    def epochs_for(self, n_train: int) -> int:
        """Epochs a trial on ``n_train`` training examples runs: ``epochs``, or more for ``min_steps``."""
        steps_per_epoch = max(1, math.ceil(n_train / self.batch_size))
        return max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))

    def head_lr(self) -> float:
        """The head's learning rate: ``head_learning_rate``, else ``max(default, learning_rate)``."""
        if self.head_learning_rate is not None:
            return self.head_learning_rate
        return max(DEFAULT_HEAD_LEARNING_RATE, self.learning_rate)


def retry_with_less_memory(params: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters for one retry after running out of memory, for a trainer's ``on_out_of_memory``.

    Twice the ``gradient_accumulation_steps``: half the examples per forward pass, the same batch per
    optimizer step (the task splits each step into ``micro_batch_size`` pieces). None when the
    parameters have no such key (nothing to retry with).
    """
    steps = params.get("gradient_accumulation_steps")
    if steps is None:
        return None
    return {**params, "gradient_accumulation_steps": int(steps) * 2}
