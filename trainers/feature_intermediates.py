"""The entries of intermediate depths a feature-cache fill writes on its way to its own depth.

A fill to depth k (from the embeddings, or extending a shallower entry of depth s) runs blocks
s+1..k anyway, so it also stores the outputs of the blocks it passes through as the entries of
depths s+1..k-1 that the shared folder lacks: a later trial with any of those depths loads its
states instead of computing them (with a grid over freeze_depth in any order, every depth after
the first fill's is then loaded or extended).

Contract. Each such entry has exactly the key a trial frozen to that depth computes
(:mod:`trainers.feature_keys`), the layout of :mod:`trainers.feature_store`, and the write rules of
:mod:`trainers.shared_folder`: its own scratch folder, a rename into place, under its own
``<key>.lock``, which is taken *without waiting* (a depth that another writer is filling is left
to it, and no fill ever waits for a lock while it holds one, so two fills cannot deadlock). The
states go straight to memory-mapped files with their disk space reserved up front. Nothing here
may fail the fill: a depth whose claim or publication meets an :class:`OSError` is dropped.

Bound on the extra disk (:func:`depths_within_bounds`): at most :data:`INTERMEDIATE_BYTES` per fill
of a split (the cache's ``intermediate_bytes``), and only while :data:`DISK_RESERVE_BYTES` stay free
after them and the fill's own entry; when the bound cuts, the depths stored are spread evenly
between s and k. A sweep over every depth writes these entries anyway, later; the extra disk is
what a study that never uses some shallower depths (a fixed deep k, say) pays, up to k - 1 times
its own entry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.feature_store import lengths_array, numpy_dtype, to_numpy
from trainers.shared_folder import (
    exclusive_lock,
    fsync_path,
    move_into_place,
    remove_stale,
    save_array,
    save_json,
    scratch_folder,
)

if TYPE_CHECKING:
    import torch

#: Most bytes of intermediate-depth entries one fill of one split writes besides its own entry;
#: :class:`trainers.feature_cache.FrozenFeatureCache` takes another bound as ``intermediate_bytes``.
INTERMEDIATE_BYTES = 4 * 2**30
#: Intermediate-depth entries are written only while the disk keeps at least this much free space
#: after them and the fill's own entry.
DISK_RESERVE_BYTES = 2**30


def depths_within_bounds(missing: Sequence[int], nbytes: int, bound: int, root: Path) -> list[int]:
    """The depths of ``missing`` (ascending) whose entries, ``nbytes`` each, fit in ``bound`` bytes
    and leave :data:`DISK_RESERVE_BYTES` free on ``root``'s disk after them and the fill's own
    entry; spread evenly over ``missing`` when not all fit."""
    allowed = bound
    with contextlib.suppress(OSError):
        allowed = min(allowed, shutil.disk_usage(root).free - nbytes - DISK_RESERVE_BYTES)
    return _spread(missing, max(0, allowed) // nbytes)


def _spread(depths: Sequence[int], count: int) -> list[int]:
    """``count`` of ``depths`` (ascending), spread evenly over them; all when ``count`` covers them."""
    if count >= len(depths):
        return list(depths)
    if count <= 0:
        return []
    step = (len(depths) + 1) / (count + 1)
    return sorted({depths[int((index + 1) * step + 0.5) - 1] for index in range(count)})


class Intermediates:
    """The shared entries a fill writes for the depths it passes through (the rules: the module docstring).

    :meth:`claim` takes an entry's lock without waiting (a depth whose lock another writer holds
    is left to that writer), and opens its states as a memory-mapped file in a scratch folder next
    to the entry, with the disk space reserved up front. :meth:`write` stores a batch's rows,
    :meth:`publish` renames the complete entries into place, :meth:`discard` drops whatever was
    not published and lets the locks go. Nothing here may fail the fill: a depth whose claim or
    publication meets an :class:`OSError` is dropped.
    """

    def __init__(self, root: Path | None, lengths: Sequence[int], hidden: int, dtype: str) -> None:
        self.root = root
        self.lengths = lengths
        self.hidden = hidden
        self.dtype = dtype
        self.claimed: dict[int, tuple[str, Path, Any, contextlib.ExitStack]] = {}

    @property
    def depths(self) -> list[int]:
        return sorted(self.claimed)

    def claim(self, depth: int, key: str) -> bool:
        import numpy as np

        assert self.root is not None
        if (self.root / key).is_dir():
            return False
        locks = contextlib.ExitStack()
        folder = None
        try:
            locked = locks.enter_context(exclusive_lock(self.root / f"{key}.lock", wait=False))
            if (self.root / key).is_dir():
                locks.close()
                return False
            if locked:
                remove_stale(self.root, key)
            folder = scratch_folder(self.root, key)
            path = folder / "states.npy"
            shape = (sum(self.lengths), self.hidden)
            states = np.lib.format.open_memmap(path, mode="w+", dtype=numpy_dtype(self.dtype), shape=shape)
            if hasattr(os, "posix_fallocate"):
                # Reserve the blocks now: a full disk is an OSError here, not a SIGBUS mid-fill.
                with open(path, "rb+") as stream:
                    os.posix_fallocate(stream.fileno(), 0, os.fstat(stream.fileno()).st_size)
        except OSError:  # BlockingIOError included: another writer is filling this depth
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            locks.close()
            return False
        self.claimed[depth] = (key, folder, states, locks)
        return True

    def write(self, depth: int, index: torch.Tensor, values: torch.Tensor) -> None:
        self.claimed[depth][2][index.numpy()] = to_numpy(values)

    def publish(self, meta: dict[str, Any]) -> tuple[int, ...]:
        """Rename every claimed entry into place; the depths that now have an entry."""
        assert self.root is not None or not self.claimed
        published = []
        for depth in self.depths:
            key, folder, states, locks = self.claimed.pop(depth)
            try:
                states.flush()
                del states
                with open(folder / "states.npy", "rb+") as stream:
                    os.fsync(stream.fileno())
                save_array(folder / "lengths.npy", lengths_array(self.lengths))
                save_json(folder / "meta.json", {**meta, "depth": depth})
                fsync_path(folder)
                assert self.root is not None
                move_into_place(folder, self.root, key)
                published.append(depth)
            except OSError:
                shutil.rmtree(folder, ignore_errors=True)
            finally:
                locks.close()
        return tuple(published)

    def discard(self) -> None:
        claimed, self.claimed = self.claimed, {}
        for _key, folder, _states, locks in claimed.values():
            shutil.rmtree(folder, ignore_errors=True)
            locks.close()
