"""A trainer that trains nothing: a known function of its parameters, for benchmarks and tests.

Its score is ``-(x - 1)^2 - (y + 2)^2 + 0.01 * epoch``, best at ``x = 1, y = -2``, so a sampler's
progress is easy to check; ``sleep_seconds`` per epoch stands in for training time when
measuring scheduling overhead. It imports nothing heavy (no torch at import time).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from trainers.base import BaseTrainer, StrictModel, TrialContext


class NoopSettings(StrictModel):
    """The ``trainer`` section of a noop sweep."""

    epochs: int = Field(3, ge=1, description="Epochs per trial (the parameter 'epochs').")
    sleep_seconds: float = Field(
        0.0, ge=0, description="Seconds each epoch sleeps (the parameter 'sleep_seconds')."
    )


class NoopParams(StrictModel):
    """The parameters of a noop trial."""

    x: float = Field(0.0, description="First coordinate; the best score is at x = 1.")
    y: float = Field(0.0, description="Second coordinate; the best score is at y = -2.")
    epochs: int = Field(3, ge=1, description="Epochs to report.")
    sleep_seconds: float = Field(0.0, ge=0, description="Seconds to sleep per epoch.")


def noop_score(x: float, y: float, epoch: int) -> float:
    """The score a noop trial reports at ``epoch``."""
    return -((x - 1.0) ** 2) - (y + 2.0) ** 2 + 0.01 * epoch


class NoopTrainer(BaseTrainer):
    """Reports :func:`noop_score` (and ``loss = -score``) each epoch; resumes from its checkpoint."""

    name = "noop"
    Settings = NoopSettings
    Params = NoopParams
    metric_names = ("score", "loss")
    settings_as_params = ("epochs", "sleep_seconds")
    default_metric = "score"
    default_direction = "maximize"

    @classmethod
    def direction_of(cls, metric: str) -> Literal["maximize", "minimize"]:
        """``score`` grows toward the optimum; ``loss`` (its negative) shrinks."""
        return "minimize" if metric == "loss" else "maximize"

    def run(self, ctx: TrialContext) -> dict[str, float]:
        """Report each epoch's score; continue after the last checkpointed epoch when there is one."""
        params = NoopParams(**ctx.params)
        state = ctx.load_checkpoint()
        start = int(state["epoch"]) + 1 if state else 1
        for epoch in range(start, params.epochs + 1):
            if params.sleep_seconds:
                time.sleep(params.sleep_seconds)
            ctx.save_checkpoint({"epoch": epoch})
            ctx.report(epoch, _metrics(params, epoch))
        # The score grows with the epoch, so the last epoch is the best one.
        return {**_metrics(params, params.epochs), "best_epoch": float(params.epochs)}


def _metrics(params: NoopParams, epoch: int) -> dict[str, float]:
    score = noop_score(params.x, params.y, epoch)
    return {"score": score, "loss": -score}
