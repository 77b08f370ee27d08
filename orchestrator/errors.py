"""The errors ftsweep raises (defined in :mod:`ftsweep_common.errors`, the ground module, so that
``trainers`` and ``search_spaces`` can raise them without importing the orchestrator).

Everything a user can fix derives from :class:`UserError`; the CLI prints those as one
line and exits with code 2. Anything else is a bug: the CLI keeps its traceback in a
log file and exits with code 1.
"""

from __future__ import annotations

from ftsweep_common.errors import (
    ConfigError,
    DataError,
    FtsweepError,
    ModelError,
    StorageError,
    StudyExists,
    StudyNotFound,
    UserError,
)

__all__ = [
    "ConfigError",
    "DataError",
    "FtsweepError",
    "ModelError",
    "StorageError",
    "StudyExists",
    "StudyNotFound",
    "UserError",
]
