"""Trainers: the code that runs one trial. See :mod:`trainers.base` for the interface."""

from __future__ import annotations

from trainers.base import (
    BaseTrainer,
    TrialContext,
    TrialDiverged,
    TrialPruned,
    load_trainer_class,
    registered_trainers,
)

__all__ = [
    "BaseTrainer",
    "TrialContext",
    "TrialDiverged",
    "TrialPruned",
    "load_trainer_class",
    "registered_trainers",
]
