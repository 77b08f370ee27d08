"""Save and load a trial's state atomically.

A checkpoint is one file in the trial's checkpoint folder: ``state.pt`` (``torch.save``)
when torch is loaded, else ``state.pkl`` (pickle), so a trainer that never imports torch
does not pay for importing it. The file is written to a temporary name in the same
folder, flushed to disk, then renamed over the old one, so a process killed at any moment
leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TORCH_FILE = "state.pt"
PICKLE_FILE = "state.pkl"
REPORTS_FILE = "reports.json"


def save_checkpoint(folder: Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to the folder atomically and return the file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch = sys.modules.get("torch")
    target = folder / (TORCH_FILE if torch is not None else PICKLE_FILE)
    handle, temporary = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            if torch is not None:
                torch.save(dict(state), stream)
            else:
                pickle.dump(dict(state), stream, protocol=pickle.HIGHEST_PROTOCOL)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    stale = folder / (PICKLE_FILE if target.name == TORCH_FILE else TORCH_FILE)
    stale.unlink(missing_ok=True)
    return target


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The state saved in ``folder``, or None when there is none."""
    folder = Path(folder)
    if (folder / TORCH_FILE).exists():
        import torch

        return torch.load(folder / TORCH_FILE, map_location="cpu", weights_only=False)
    if (folder / PICKLE_FILE).exists():
        with open(folder / PICKLE_FILE, "rb") as stream:
            return pickle.load(stream)
    return None


def checkpoint_exists(folder: Path) -> bool:
    return (Path(folder) / TORCH_FILE).exists() or (Path(folder) / PICKLE_FILE).exists()


def save_reports(folder: Path, reports: list[tuple[int, dict[str, float]]]) -> None:
    """The epochs a trial has reported, next to its checkpoint (written atomically)."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{REPORTS_FILE}.tmp"
    temporary.write_text(json.dumps([[epoch, metrics] for epoch, metrics in reports]), encoding="utf-8")
    os.replace(temporary, folder / REPORTS_FILE)


def load_reports(folder: Path) -> list[tuple[int, dict[str, float]]]:
    import json

    path = Path(folder) / REPORTS_FILE
    if not path.exists():
        return []
    return [(int(epoch), dict(metrics)) for epoch, metrics in json.loads(path.read_text(encoding="utf-8"))]
