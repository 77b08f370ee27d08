"""ftsweep: hyperparameter sweeps for fine-tuning, as Optuna studies in a SQL store.

The public API is small; the CLI (``ftsweep``) is built on it::

    from orchestrator import load_sweep, run_sweep, resume_study
    outcome = run_sweep(load_sweep("sweep.yaml", ["trainer.epochs=2"]), n_trials=4)
"""

from __future__ import annotations

from orchestrator.config import Sweep, load_sweep
from orchestrator.errors import ConfigError, DataError, FtsweepError, ModelError, StorageError, StudyExists, StudyNotFound, UserError
from orchestrator.runner import RunOutcome, resume_study, run_sweep

__all__ = [
    "ConfigError",
    "DataError",
    "FtsweepError",
    "ModelError",
    "RunOutcome",
    "StorageError",
    "StudyExists",
    "StudyNotFound",
    "Sweep",
    "UserError",
    "load_sweep",
    "resume_study",
    "run_sweep",
]
