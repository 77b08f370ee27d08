"""One split's frozen-layer states, in memory or on disk: the layout of a feature-cache entry.

Contract. A :class:`FeatureStore` holds the states of every example of a split after block k as
rows of one flat ``(tokens, hidden)`` array, unpadded, in split order, and serves any batch of
examples zero-padded to the batch's longest (:meth:`FeatureStore.batch`). Frozen blocks see
padding through the attention mask only, so an example's states do not depend on what it is
batched with (up to float rounding), and padded positions never reach a real position in the
blocks above.

An entry on disk is a folder of three files, all data and never code: ``states.npy`` (the flat
array, read memory-mapped), ``lengths.npy`` (each example's token count, int64) and ``meta.json``
(:data:`FORMAT`, the dtype, the depth, how it was made). :func:`load_entry` reads one back and
refuses, naming the folder, an entry whose format, dtype, shape or lengths do not match the split
it is keyed for.

The dtype. ``float32`` reproduces the uncached trial to float rounding; ``float16`` and
``bfloat16`` (stored as ``uint16``: numpy has no bfloat16) halve memory and disk at the cost of
half-precision rounding of the frozen layers' output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Bump when the layout of an entry or the meaning of a key changes: old entries are then ignored.
FORMAT = 1
DTYPES = ("float32", "float16", "bfloat16")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def numpy_dtype(name: str) -> np.dtype:
    import numpy as np

    # numpy has no bfloat16: its bits are stored as uint16.
    return np.dtype({"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[name])


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view("uint16")
    return tensor.numpy()


def from_numpy(array: np.ndarray, dtype: str) -> torch.Tensor:
    import numpy as np
    import torch

    array = np.ascontiguousarray(array)
    if dtype == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def lengths_array(lengths: Sequence[int]) -> np.ndarray:
    """Each example's token count as the int64 array an entry's ``lengths.npy`` holds."""
    import numpy as np

    return np.asarray(list(lengths), dtype=np.int64)


class FeatureStore:
    """The states of one split after block k: rows of a flat ``(tokens, hidden)`` array.

    Args:
        states: a tensor in memory or a read-only numpy memmap (on disk).
        lengths: each example's token count, in split order.
        dtype: the storage dtype's name (``float32``, ``float16``, ``bfloat16``).
        path: the entry's folder when the states come from (or went to) disk.
    """

    def __init__(self, states: Any, lengths: Sequence[int], dtype: str, path: Path | None = None) -> None:
        import torch

        self.states = states
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        self.dtype = dtype
        self.path = path
        self.hidden = int(states.shape[1])

    @property
    def in_memory(self) -> bool:
        import torch

        return isinstance(self.states, torch.Tensor)

    @property
    def nbytes(self) -> int:
        return int(self.states.shape[0]) * self.hidden * numpy_dtype(self.dtype).itemsize

    def positions(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask, index)``: the batch's attention mask (rows x width), the flat rows of its real tokens."""
        import torch

        rows_t = torch.as_tensor(list(rows), dtype=torch.long)
        lengths = self.lengths[rows_t]
        width = int(lengths.max()) if len(rows_t) else 0
        grid = torch.arange(width)
        mask = grid[None, :] < lengths[:, None]
        index = (self.offsets[rows_t][:, None] + grid[None, :])[mask]
        return mask, index

    def batch(self, rows: Sequence[int]) -> torch.Tensor:
        """The states of ``rows``, zero-padded to their longest: ``(len(rows), width, hidden)``, CPU."""
        mask, index = self.positions(rows)
        if self.in_memory:
            values = self.states[index]
        else:
            import numpy as np

            values = from_numpy(np.take(self.states, index.numpy(), axis=0), self.dtype)
        out = values.new_zeros((mask.shape[0], mask.shape[1], self.hidden))
        out[mask] = values
        return out


def load_entry(entry: Path, lengths: Sequence[int], hidden: int, dtype: str, in_memory: bool) -> FeatureStore:
    """An entry's states, checked against the split (its lengths, the hidden size and dtype).

    Args:
        entry: the entry's folder.
        lengths: the token count of each example of the split the entry is keyed for.
        hidden: the model's hidden size.
        dtype: the storage dtype's name, one of :data:`DTYPES`.
        in_memory: read the states into memory; otherwise they stay memory-mapped.

    Raises:
        RuntimeError: naming the entry, when it does not match the split (delete it to recompute).
    """
    import numpy as np

    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    stored_lengths = np.load(entry / "lengths.npy")
    states = np.load(entry / "states.npy", mmap_mode="r")
    expected = (sum(lengths), hidden)
    if (
        meta.get("format") != FORMAT
        or meta.get("dtype") != dtype
        or tuple(states.shape) != expected
        or states.dtype != numpy_dtype(dtype)
        or not np.array_equal(stored_lengths, lengths_array(lengths))
    ):
        raise RuntimeError(
            f"feature cache: the entry {entry} does not match the split it is keyed for "
            f"(states {tuple(states.shape)} {states.dtype}, expected {expected} {dtype}); delete it"
        )
    if in_memory:
        return FeatureStore(from_numpy(np.array(states), dtype), lengths, dtype, entry)
    return FeatureStore(states, lengths, dtype, entry)
