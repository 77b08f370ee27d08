"""ftsweep: hyperparameter sweeps for fine-tuning, as Optuna studies in a SQL store.

The public API is small; the CLI (``ftsweep``) is built on it::

    from orchestrator import load_sweep, run_sweep, resume_study
    outcome = run_sweep(load_sweep("sweep.yaml", ["trainer.epochs=2"]), n_trials=4)
"""

from __future__ import annotations

import importlib
from typing import Any

from orchestrator.errors import (
    ConfigError,
    DataError,
    FtsweepError,
    ModelError,
    StorageError,
    StudyExists,
    StudyNotFound,
    UserError,
)

# Imported on first use, so that `ftsweep --help` and `import search_spaces` stay light.
_LAZY = {
    "Sweep": "orchestrator.config",
    "load_sweep": "orchestrator.config",
    "RunOutcome": "orchestrator.runner",
    "resume_study": "orchestrator.runner",
    "run_sweep": "orchestrator.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


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
