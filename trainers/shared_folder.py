"""Shared on-disk entries: one folder per key, written once, atomically, under a lock.

The building block of the study's caches (token ids in :mod:`trainers.tokenization_cache`, frozen-layer
features in :mod:`trainers.feature_cache`): a folder named by a key is created by whoever asks
first, in a scratch folder renamed into place, while concurrent askers (threads, processes,
workers on a shared file system) wait on ``<key>.lock`` and then read the same entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "digest",
    "exclusive_lock",
    "fsync_path",
    "move_into_place",
    "remove_stale",
    "save_array",
    "save_json",
    "scratch_folder",
    "shared_entry",
]


def digest(value: Any) -> str:
    """SHA-256 (hex) of ``value`` written as canonical JSON."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed); yields whether it is held.

    Where the file system refuses locks the block still runs (yielding False): entries are
    renamed into place atomically, so the worst case is the same entry computed twice.
    With ``wait=False`` a lock held by someone else raises :class:`BlockingIOError` at once
    instead of waiting for it.
    """
    fcntl: Any
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    with open(path, "a+b") as handle:
        locked = False
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                locked = True
            except BlockingIOError:
                if not wait:
                    raise
                locked = False
            except OSError:
                locked = False
        try:
            yield locked
        finally:
            if locked:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def shared_entry(root: Path, key: str, create: Callable[[Path], None]) -> tuple[Path, bool]:
    """The folder ``root / key``, created by ``create(folder)`` unless it already exists.

    ``create`` fills a fresh temporary folder next to the entry; it is renamed into place only
    when ``create`` returns. Concurrent callers (threads, processes, workers on a shared file
    system) serialize on ``root / (key + ".lock")``: one creates, the others wait and get its
    entry. An entry that exists is complete.

    Returns:
        the entry's folder and whether this call created it.
    """
    entry = root / key
    if entry.is_dir():
        return entry, False
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / f"{key}.lock") as locked:
        if entry.is_dir():
            return entry, False
        if locked:
            remove_stale(root, key)
        scratch = scratch_folder(root, key)
        try:
            create(scratch)
            fsync_path(scratch)
            placed = move_into_place(scratch, root, key)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return entry, placed


def move_into_place(scratch: Path, root: Path, key: str) -> bool:
    """Rename a complete ``scratch`` folder to ``root / key``; False when another writer's got there first."""
    try:
        os.rename(scratch, root / key)
    except OSError:
        if not (root / key).is_dir():
            raise
        shutil.rmtree(scratch, ignore_errors=True)  # another writer won (no lock here)
        return False
    fsync_path(root)
    return True


def remove_stale(root: Path, key: str) -> None:
    """Remove what writers of ``key`` that died while writing left; call with the key's lock held
    (nobody else can be writing this key then)."""
    for stale in root.glob(f".{key}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def scratch_folder(root: Path, key: str) -> Path:
    """A fresh temporary folder next to the entry ``root / key``, to be renamed into its place."""
    return Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``path`` and flush it to disk."""
    import numpy as np

    with open(path, "wb") as stream:
        np.save(stream, array, allow_pickle=False)
        stream.flush()
        os.fsync(stream.fileno())


def save_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` and flush it to disk."""
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(value, stream, sort_keys=True, indent=1, default=str)
        stream.flush()
        os.fsync(stream.fileno())


def fsync_path(path: Path) -> None:
    """Flush a folder's (or file's) metadata, so a rename survives a crash; best effort."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
