"""A cache of what the frozen layers compute, shared by the epochs and the trials of a study.

With ``freeze_depth`` k > 0 the embeddings and the lowest k encoder blocks are frozen and run in
eval mode (:func:`trainers.regularization.train_mode`): dropout does not act inside them, so
their output is a pure function of the input. :class:`FrozenFeatureCache` computes the hidden
states after block k once per example and serves them back in every later epoch and every later
trial with the same k; a trial with a deeper k starts from the deepest shallower cache and runs
only the extra frozen blocks once. A self-check on a few validation examples compares the last
block's output with and without the cache once per trial; a model for which they differ runs
uncached, with a log line.

The building blocks, each with its own contract: the keys (:mod:`trainers.feature_keys`), one
split's states and the layout of an entry (:mod:`trainers.feature_store`), serving states through
the model's own forward (:mod:`trainers.frozen_prefix`), the shallower depths a fill stores on its
way (:mod:`trainers.feature_intermediates`) and the shared folder itself
(:mod:`trainers.shared_folder`).

Where the states live. A trial keeps the states of each split in memory while they fit in
``memory_bytes`` (all splits together), else memory-maps them from disk. With a shared folder (the
study's ``cache_dir / "features"``) every entry is also written there, once, for other trials
and workers: one folder per entry, named by a SHA-256 key of everything that determines it,
written into a temporary folder and renamed into place (atomic) under an exclusive
``fcntl.flock`` on ``<key>.lock``: two workers that need the same entry compute it once, and
readers never see a partial entry. A trial that needs an entry another fill is writing waits for
it. Without a shared folder, states that do not fit in memory go to a temporary folder removed
when the trial ends, and no intermediate depths are stored; neither are they for a split the
trial does not cache (an augmented training split).

The dtype. The trainer's ``auto`` picks float32 for float32 trials (metrics identical to an
uncached trial, to float rounding) and bfloat16 for trials under bfloat16 autocast (their matrix
products round to bfloat16 anyway).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.feature_intermediates import (
    DISK_RESERVE_BYTES,
    INTERMEDIATE_BYTES,
    Intermediates,
    depths_within_bounds,
)
from trainers.feature_keys import features_key, frozen_fingerprints
from trainers.feature_store import (
    DTYPES,
    FORMAT,
    FeatureStore,
    lengths_array,
    load_entry,
    numpy_dtype,
    to_numpy,
    torch_dtype,
)
from trainers.frozen_prefix import ModelPatch, capture, eval_mode, hidden_of
from trainers.shared_folder import save_array, save_json, shared_entry

if TYPE_CHECKING:
    import torch
    from torch import nn

#: How many validation examples the self-check runs through the model twice.
CHECK_EXAMPLES = 8
#: Largest relative difference (Frobenius norm) the self-check accepts, by storage/compute precision.
CHECK_TOLERANCE = {"exact": 1e-3, "half": 5e-2}


@dataclass
class SplitSource:
    """How a split's states were obtained: ``computed``, ``loaded`` or ``extended`` (from ``from_depth``).

    ``also_stored``: the shallower depths whose entries the fill wrote on its way (intermediate depths).
    """

    how: str
    seconds: float
    from_depth: int | None = None
    in_memory: bool = True
    also_stored: tuple[int, ...] = ()


class FrozenFeatureCache:
    """The frozen-layer states of one trial's splits, and the hooks that serve them to its model.

    Use: :meth:`attach` (None when the model is not supported), :meth:`probe` on a few
    examples, :meth:`prepare` each split, :meth:`verify`, then wrap each forward in
    :meth:`serving`; :meth:`close` at the end of the trial.

    Args:
        model: the classifier; its embeddings and blocks below ``depth`` must be frozen.
        depth: how many encoder blocks are frozen (> 0).
        forward: runs the model on a collated CPU batch (moving it to the device, under the
            trial's autocast); its result is ignored.
        collate: turns a list of token-id lists into a padded CPU batch (the trial's collator).
        to_device: moves a CPU tensor to the trial's device (pinned, non-blocking on a GPU).
        root: the shared folder of entries, or None for a private cache (this trial only).
        memory_bytes: how many bytes of states this trial keeps in memory; the rest is memory-mapped.
        dtype: the storage dtype, one of :data:`DTYPES`.
        compute: the precision the model computes in (``fp32`` or ``bf16``), part of the key.
        max_length: the trial's truncation length, part of the key.
        log: where progress lines go.
        intermediate_bytes: the most bytes of intermediate-depth entries one fill of one split
            writes into the shared folder (default :data:`INTERMEDIATE_BYTES`; 0: none).
    """

    def __init__(
        self,
        model: nn.Module,
        depth: int,
        *,
        embeddings: nn.Module,
        blocks: Sequence[nn.Module],
        forward: Callable[[dict[str, torch.Tensor]], Any],
        collate: Callable[[Sequence[Sequence[int]]], dict[str, torch.Tensor]],
        to_device: Callable[[torch.Tensor], torch.Tensor],
        root: Path | None,
        memory_bytes: int,
        dtype: str,
        compute: str,
        max_length: int,
        log: Callable[[str], None],
        intermediate_bytes: int | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"feature cache dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
        self.model = model
        self.depth = depth
        self.blocks = list(blocks)
        self.forward = forward
        self.collate = collate
        self.to_device = to_device
        self.root = root
        self.memory_left = max(0, int(memory_bytes))
        self.dtype = dtype
        self.compute = compute
        self.max_length = max_length
        self.log = log
        self.intermediate_bytes = max(
            0, int(INTERMEDIATE_BYTES if intermediate_bytes is None else intermediate_bytes)
        )
        self.fingerprints = frozen_fingerprints(model, depth)
        self.patch = ModelPatch(embeddings, blocks, depth)
        self.stores: dict[str, FeatureStore] = {}
        self.sources: dict[str, SplitSource] = {}
        self.served_dtype: torch.dtype | None = None
        self._reference: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None
        self._private: Path | None = None

    @classmethod
    def attach(cls, model: nn.Module, depth: int, **options: Any) -> FrozenFeatureCache | None:
        """A cache for ``model`` frozen to ``depth``, or None (with a log line) when it cannot have one."""
        from torch import nn

        from trainers.regularization import find_blocks

        log = options["log"]
        if depth <= 0:
            return None
        try:
            embeddings, blocks = find_blocks(model)
        except ValueError as error:
            log(f"feature cache off: {error}")
            return None
        if isinstance(embeddings, nn.ModuleList) or depth > len(blocks):
            log(f"feature cache off: {type(model).__name__} has no single embeddings module to stand in for")
            return None
        return cls(model, depth, embeddings=embeddings, blocks=blocks, **options)

    # ---- running the model ---------------------------------------------------------------

    def _capture(self, inputs: dict[str, torch.Tensor], block: nn.Module) -> torch.Tensor:
        """Run the model on ``inputs`` until ``block`` has run; its output hidden states."""
        return capture(self.forward, inputs, block)

    def probe(self, inputs: dict[str, torch.Tensor]) -> None:
        """Run a few examples without the cache: learn the frozen blocks' output format and keep
        the last block's output for :meth:`verify`."""
        import torch

        formats: list[int | None] = [None] * self.depth
        outputs: dict[int, torch.Tensor] = {}

        def recorder(index: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                formats[index] = len(output) if isinstance(output, tuple | list) else None
                outputs[index] = hidden_of(output)

            return hook

        handles = [
            block.register_forward_hook(recorder(i)) for i, block in enumerate(self.blocks[: self.depth])
        ]
        try:
            with torch.no_grad(), eval_mode(self.model):
                last = self._capture(inputs, self.blocks[-1])
        finally:
            for handle in handles:
                handle.remove()
        self.patch.formats = formats
        self.served_dtype = outputs[self.depth - 1].dtype
        self._reference = (inputs, last.detach().float().cpu())

    def verify(self, name: str, rows: Sequence[int]) -> bool:
        """Run the probe's examples (``rows`` of split ``name``) with the cache: True when the last
        block's output matches the probe's, within float (or half-precision) rounding."""
        import torch

        if self._reference is None:
            raise RuntimeError("feature cache: verify needs a probe first")
        if name not in self.stores:
            return True
        inputs, reference = self._reference
        with torch.no_grad(), eval_mode(self.model), self.serving(name, rows):
            last = self._capture(inputs, self.blocks[-1]).detach().float().cpu()
        mask = inputs["attention_mask"].bool()
        expected, got = reference[mask], last[mask]
        error = float((got - expected).norm() / expected.norm().clamp_min(1e-12))
        exact = self.dtype == "float32" and self.compute == "fp32"
        tolerance = CHECK_TOLERANCE["exact" if exact else "half"]
        if not error <= tolerance:
            self.log(
                f"feature cache off: with the cache, the last layer's output differs by {error:.2e} "
                "(relative) "
                f"from the model's own on {len(rows)} {name} examples; {type(self.model).__name__} runs "
                "uncached"
            )
            return False
        return True

    # ---- filling and loading -------------------------------------------------------------

    def prepare(
        self, name: str, sequences: Sequence[Sequence[int]], ids_digest: str, batch_size: int
    ) -> FeatureStore:
        """The states of split ``name`` (its token ids ``sequences``): loaded, extended from a
        shallower cache, or computed; kept in memory if they fit what is left of the budget."""
        started = time.perf_counter()
        lengths = [len(ids) for ids in sequences]
        hidden = int(self._reference[1].shape[-1]) if self._reference is not None else None
        if hidden is None:
            raise RuntimeError("feature cache: prepare needs a probe first")
        nbytes = sum(lengths) * hidden * numpy_dtype(self.dtype).itemsize
        in_memory = nbytes <= self.memory_left
        if in_memory:
            self.memory_left -= nbytes
        key = self._key(self.depth, ids_digest)
        computed: dict[str, Any] = {}

        def create(folder: Path) -> None:
            source = self._shallower(ids_digest, lengths, hidden) if self.root is not None else None
            start_depth = source[1] if source else 0
            meta = {
                "format": FORMAT,
                "dtype": self.dtype,
                "compute": self.compute,
                "max_length": self.max_length,
                "examples": len(lengths),
                "tokens": sum(lengths),
                "hidden": hidden,
                "from_depth": start_depth,
            }
            also = self._intermediates(ids_digest, lengths, hidden, start_depth, nbytes)
            try:
                states = self._compute(
                    sequences, lengths, hidden, batch_size, folder, in_memory, source, also
                )
                save_array(folder / "lengths.npy", lengths_array(lengths))
                seconds = round(time.perf_counter() - started, 3)
                save_json(folder / "meta.json", {**meta, "depth": self.depth, "seconds": seconds})
                stored = also.publish({**meta, "seconds": seconds, "filled_for_depth": self.depth})
            finally:
                also.discard()
            computed.update(states=states, from_depth=source[1] if source else None, also=stored)

        if self.root is None and in_memory:
            states = self._compute(sequences, lengths, hidden, batch_size, None, True, None)
            store = FeatureStore(states, lengths, self.dtype)
            self._record(name, store, "computed", started, None)
            return store
        root = self.root if self.root is not None else self._private_root()
        entry, created = shared_entry(root, key, create)
        if created and in_memory:
            store = FeatureStore(computed["states"], lengths, self.dtype, entry)
        else:
            store = self._load(entry, lengths, hidden, in_memory)
        how = ("extended" if computed.get("from_depth") else "computed") if created else "loaded"
        self._record(name, store, how, started, computed.get("from_depth"), computed.get("also", ()))
        return store

    def _record(
        self,
        name: str,
        store: FeatureStore,
        how: str,
        started: float,
        from_depth: int | None,
        also_stored: Sequence[int] = (),
    ) -> None:
        seconds = time.perf_counter() - started
        self.stores[name] = store
        self.sources[name] = SplitSource(how, seconds, from_depth, store.in_memory, tuple(also_stored))
        origin = f" from the depth-{from_depth} cache" if from_depth else ""
        where = "in memory" if store.in_memory else f"memory-mapped from {store.path}"
        also = (
            f"; the states after block{'s' if len(also_stored) > 1 else ''} "
            f"{', '.join(map(str, also_stored))} stored too, for shallower trials"
            if also_stored
            else ""
        )
        self.log(
            f"feature cache: {name} states after block {self.depth} {how}{origin} in {seconds:.2f} s "
            f"({len(store.lengths)} examples, {store.nbytes / 2**20:.1f} MiB {self.dtype}, {where}){also}"
        )

    def _key(self, depth: int, ids_digest: str) -> str:
        """The key of a split's states after block ``depth`` (<= this cache's depth): exactly the key
        a trial frozen to ``depth`` computes, as the fingerprints of shallower depths are a prefix
        of this trial's chain (:func:`frozen_fingerprints`)."""
        return features_key(
            self.fingerprints[depth - 1], ids_digest, self.max_length, depth, self.dtype, self.compute
        )

    def _intermediates(
        self, ids_digest: str, lengths: Sequence[int], hidden: int, start_depth: int, nbytes: int
    ) -> Intermediates:
        """Claim the shared entries of the depths between ``start_depth`` and this one that a fill
        passes through and the shared folder lacks, within the disk bounds (none without a shared folder)."""
        intermediates = Intermediates(self.root, lengths, hidden, self.dtype)
        if self.root is None or nbytes <= 0 or self.depth - start_depth < 2:
            return intermediates
        missing = [
            depth
            for depth in range(start_depth + 1, self.depth)
            if not (self.root / self._key(depth, ids_digest)).is_dir()
        ]
        if not missing:
            return intermediates
        # This fill's own entry goes to disk too: the reserve is kept free after both.
        chosen = depths_within_bounds(missing, nbytes, self.intermediate_bytes, self.root)
        if len(chosen) < len(missing):
            self.log(
                f"feature cache: {len(missing) - len(chosen)} of {len(missing)} intermediate depths not "
                "stored "
                f"({nbytes / 2**20:.1f} MiB each; bound {self.intermediate_bytes / 2**20:.0f} MiB per fill "
                f"and {DISK_RESERVE_BYTES / 2**20:.0f} MiB of free disk kept)"
            )
        for depth in chosen:
            intermediates.claim(depth, self._key(depth, ids_digest))
        return intermediates

    def _private_root(self) -> Path:
        if self._private is None:
            self._private = Path(tempfile.mkdtemp(prefix="ftsweep-features-"))
        return self._private

    def _shallower(
        self, ids_digest: str, lengths: Sequence[int], hidden: int
    ) -> tuple[FeatureStore, int] | None:
        """The deepest existing shared entry of the same split at a depth below this one."""
        assert self.root is not None
        for depth in range(self.depth - 1, 0, -1):
            entry = self.root / self._key(depth, ids_digest)
            if entry.is_dir():
                store = self._load(entry, lengths, hidden, in_memory=False)
                if store is not None:
                    return store, depth
        return None

    def _load(self, entry: Path, lengths: Sequence[int], hidden: int, in_memory: bool) -> FeatureStore:
        """An entry's states, checked against the split (its lengths, the hidden size and dtype)."""
        return load_entry(entry, lengths, hidden, self.dtype, in_memory)

    def _compute(
        self,
        sequences: Sequence[Sequence[int]],
        lengths: Sequence[int],
        hidden: int,
        batch_size: int,
        folder: Path | None,
        in_memory: bool,
        source: tuple[FeatureStore, int] | None,
        also: Intermediates | None = None,
    ) -> Any:
        """Run the frozen part over the split, in length-sorted batches; the states in storage dtype.

        With ``source`` (a shallower store and its depth), only the blocks between that depth and
        this one run. The states go to a tensor (``in_memory``) or straight into a memory-mapped
        ``folder / "states.npy"``, so a split larger than memory is never held whole. The outputs
        of the blocks ``also`` claimed go into its memory-mapped files on the way.
        """
        import numpy as np
        import torch

        from trainers.batching import sorted_batches

        total = sum(lengths)
        storage = torch_dtype(self.dtype)
        if in_memory:
            states: Any = torch.empty((total, hidden), dtype=storage)
        else:
            assert folder is not None, "states not held in memory go to a folder"
            states = np.lib.format.open_memmap(
                folder / "states.npy", mode="w+", dtype=numpy_dtype(self.dtype), shape=(total, hidden)
            )
        layout = FeatureStore(torch.empty((0, hidden)), lengths, self.dtype)
        collate = self.collate
        block = self.blocks[self.depth - 1]
        passing: dict[int, torch.Tensor] = {}

        def keeper(depth: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                passing[depth] = hidden_of(output)

            return hook

        depths = also.depths if also is not None else []
        handles = [self.blocks[depth - 1].register_forward_hook(keeper(depth)) for depth in depths]
        try:
            with torch.no_grad(), eval_mode(self.model):
                for rows in sorted_batches(lengths, batch_size):
                    inputs = collate([sequences[row] for row in rows])
                    passing.clear()
                    if source is not None:
                        start, start_depth = source
                        with self.patch.serving(self._served(start.batch(rows)), start_depth):
                            output = self._capture(inputs, block)
                    else:
                        output = self._capture(inputs, block)
                    mask, index = layout.positions(rows)
                    on_device = mask.to(output.device)
                    values = output[on_device].to("cpu", storage)
                    if in_memory:
                        states[index] = values
                    else:
                        states[index.numpy()] = to_numpy(values)
                    if also is not None:
                        for depth in depths:
                            also.write(depth, index, passing[depth][on_device].to("cpu", storage))
        finally:
            for handle in handles:
                handle.remove()
        if in_memory:
            if folder is not None:
                save_array(folder / "states.npy", to_numpy(states))
            return states
        states.flush()
        assert folder is not None
        with open(folder / "states.npy", "rb+") as stream:
            os.fsync(stream.fileno())
        del states
        return None

    # ---- serving -------------------------------------------------------------------------

    def _served(self, states: torch.Tensor) -> torch.Tensor:
        """A CPU batch of stored states on the device, in the dtype the frozen blocks produce."""
        return self.to_device(states).to(self.served_dtype)

    @contextlib.contextmanager
    def serving(self, name: str, rows: Sequence[int]) -> Iterator[None]:
        """Within the block, a forward of the batch ``rows`` of split ``name`` starts after the
        frozen blocks (a no-op for a split without states)."""
        store = self.stores.get(name)
        if store is None:
            yield
            return
        with self.patch.serving(self._served(store.batch(rows)), self.depth):
            yield

    def close(self) -> None:
        """Give the model its own forwards back and drop the states (and a private folder)."""
        self.patch.remove()
        self.stores = {}
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None
