"""Save and load a trial's state atomically.

A checkpoint is one file, ``state.pt``, in the trial's checkpoint folder. It is written to a
temporary file in the same folder, flushed to disk, then renamed over the old one, so a
process killed at any moment leaves either the previous checkpoint or the new one, never a
torn file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "state.pt"


def save_checkpoint(folder: Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``folder/state.pt`` atomically and return the file's path."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CHECKPOINT_FILE
    handle, temporary = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(dict(state), stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The state saved in ``folder``, or None when there is none."""
    import torch

    target = Path(folder) / CHECKPOINT_FILE
    if not target.exists():
        return None
    return torch.load(target, map_location="cpu", weights_only=False)
