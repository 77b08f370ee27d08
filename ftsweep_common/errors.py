"""The errors ftsweep raises.

Everything a user can fix derives from :class:`UserError`; the CLI prints those as one
line and exits with code 2. Anything else is a bug: the CLI keeps its traceback in a
log file and exits with code 1.
"""

from __future__ import annotations

from collections.abc import Iterable

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


class FtsweepError(Exception):
    """Base of every error ftsweep raises on purpose."""


class UserError(FtsweepError):
    """A mistake the user can fix (a bad sweep file, a missing file, an unknown study)."""


class ConfigError(UserError):
    """One or more problems in a sweep file or a search space.

    Args:
        problems: one line per problem, each naming the key path and what is allowed.
        source: the file the problems are in, when there is one.
    """

    def __init__(self, problems: str | Iterable[str], source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = prefix + self.problems[0]
        else:
            message = prefix + f"{len(self.problems)} problems: " + "; ".join(self.problems)
        super().__init__(message)


class DataError(UserError):
    """A data file that cannot be used (missing, empty, a missing column, a single class)."""


class ModelError(UserError):
    """A model path or id that cannot be loaded."""


class StudyNotFound(UserError):
    """No study of that name in the storage."""


class StudyExists(UserError):
    """`run` was asked to create a study that is already in the storage."""


class StorageError(UserError):
    """The storage URL cannot be reached or used."""
