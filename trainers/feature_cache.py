"""A cache of what the frozen layers compute, shared by the epochs and the trials of a study.

With ``freeze_depth`` k > 0 the embeddings and the lowest k encoder blocks are frozen and run in
eval mode (:func:`trainers.regularization.train_mode`): dropout does not act inside them, so
their output is a pure function of the input. This module computes the hidden states after
block k once per example and serves them back in every later epoch and every later trial with
the same k; a trial with a deeper k starts from the deepest shallower cache and runs only the
extra frozen blocks once.

How the model skips its frozen part. The model's own forward runs unchanged: while a batch is
being served, the embeddings module returns the cached states of the batch's examples, padded to
the batch's width, and the frozen blocks pass their input through in the block's own output
format. The model's attention-mask code, the trainable blocks, the pooler and the head run as
they always do, so this works for any encoder :func:`trainers.regularization.find_encoder_blocks`
understands (BERT, RoBERTa, MiniLM, ELECTRA, DistilBERT, ...). A self-check on a few validation
examples compares the last block's output with and without the cache once per trial; a model for
which they differ runs uncached, with a log line.

Padding. States are stored per example, unpadded (``tokens x hidden`` rows of one flat array), and
padded per batch with zeros. Frozen blocks see padding through the attention mask only, so an
example's states do not depend on what it is batched with (up to float rounding), and padded
positions never reach a real position in the blocks above.

Where the states live. A trial keeps the states of each split in memory while they fit in
``memory_bytes`` (all splits together), else memory-maps them from disk. With a shared folder (the
study's ``cache_dir / "features"``) every entry is also written there, once, for other trials
and workers: one folder per entry, named by a SHA-256 key of everything that determines it (the
frozen parameters themselves, the model's config, the token ids, max_length, k, the precision
the states were computed in and the storage dtype). An entry is written into a temporary folder
and renamed into place (atomic), under an exclusive ``fcntl.flock`` on ``<key>.lock``: two workers
that need the same entry compute it once, and readers never see a partial entry. Without a
shared folder, states that do not fit in memory go to a temporary folder removed when the trial
ends.

Intermediate depths. A fill to depth k (from the embeddings, or extending a shallower entry of
depth s) runs blocks s+1..k anyway, so it also stores the outputs of the blocks it passes through
as the entries of depths s+1..k-1 that the shared folder lacks: a later trial with any of those
depths loads its states instead of computing them (with a grid over freeze_depth in any order,
every depth after the first fill's is then loaded or extended). Each such entry has exactly the
key a trial frozen to that depth computes (the fingerprints chain, so the shallower ones are a
prefix of this trial's), the same layout, and the same write rules: its own scratch folder, a
rename into place, under its own ``<key>.lock``, which is taken *without waiting* (a depth that
another writer is filling is left to it, and no fill ever waits for a lock while it holds one, so
two fills cannot deadlock). A trial that needs such a depth while the fill runs waits for it, as
for any entry being written. The states go straight to memory-mapped files (the trial's memory
budget is for the states it serves, and these it does not serve), with their disk space reserved
up front. Depth 0 (the embeddings' output) is never stored: it is not an entry kind. Only with a
shared folder (a private folder is removed when the trial ends) and only for the splits the trial
caches (not an augmented training split). Bound on the extra disk: at most
:data:`INTERMEDIATE_BYTES` per fill of a split (the ``intermediate_bytes`` argument), and only
while :data:`DISK_RESERVE_BYTES` stay free after them and the fill's own entry; when the bound
cuts, the depths stored are spread evenly between s and k. A sweep over every depth writes these
entries anyway, later; the extra disk is what a study that never uses some shallower depths (a
fixed deep k, say) pays, up to k - 1 times its own entry.

The dtype. ``float32`` reproduces the uncached trial to float rounding; ``float16`` and
``bfloat16`` (stored as ``uint16``) halve memory and disk at the cost of half-precision rounding of
the frozen layers' output. The trainer's ``auto`` picks float32 for float32 trials and bfloat16
for trials under bfloat16 autocast (their matrix products round to bfloat16 anyway).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.shared_folder import (
    digest,
    exclusive_lock,
    fsync_path,
    move_into_place,
    remove_stale,
    save_array,
    save_json,
    scratch_folder,
    shared_entry,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

#: Bump when the layout of an entry or the meaning of a key changes: old entries are then ignored.
FORMAT = 1
DTYPES = ("float32", "float16", "bfloat16")
#: How many validation examples the self-check runs through the model twice.
CHECK_EXAMPLES = 8
#: Largest relative difference (Frobenius norm) the self-check accepts, by storage/compute precision.
CHECK_TOLERANCE = {"exact": 1e-3, "half": 5e-2}
#: Most bytes of intermediate-depth entries one fill of one split writes besides its own entry
#: (see "Intermediate depths" above); :class:`FrozenFeatureCache` takes another bound as
#: ``intermediate_bytes``.
INTERMEDIATE_BYTES = 4 * 2**30
#: Intermediate-depth entries are written only while the disk keeps at least this much free space
#: after them and the fill's own entry.
DISK_RESERVE_BYTES = 2**30
#: Config fields that do not change what the frozen layers compute in eval mode.
_CONFIG_IGNORED = frozenset(
    {
        "id2label",
        "label2id",
        "num_labels",
        "problem_type",
        "architectures",
        "finetuning_task",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "return_dict",
        "output_attentions",
        "output_hidden_states",
        "use_cache",
        "classifier_dropout",
        "seq_classif_dropout",
        "hidden_dropout_prob",
        "hidden_dropout",
        "attention_probs_dropout_prob",
        "attention_dropout",
        "dropout",
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
    }
)


# --------------------------------------------------------------------------------------------
# Keys: what determines the states after block k
# --------------------------------------------------------------------------------------------


def frozen_fingerprints(model: nn.Module, depth: int) -> list[str]:
    """Fingerprints of the model's frozen part at depths ``1..depth`` (index ``j - 1`` for depth j).

    Depth j covers the model class, its config (less labels and dropout, which do not change
    what frozen layers compute in eval mode), the transformers version, and the exact values
    of every parameter and buffer of the embeddings and blocks ``0..j-1``. The digests chain, so
    the fingerprint of every shallower depth comes for free (used to find a shallower cache).
    Hashing runs at memory speed (about 50 ms for MiniLM's 90 MB).
    """
    import transformers

    from trainers.regularization import find_encoder_blocks

    embeddings, blocks = find_encoder_blocks(model)
    config = getattr(model, "config", None)
    settings = config.to_dict() if config is not None else {}
    settings = {
        key: value
        for key, value in settings.items()
        if key not in _CONFIG_IGNORED and not key.startswith("_")
    }
    base = getattr(model, "base_model", model)
    hasher = hashlib.sha256()
    hasher.update(
        digest(
            {"class": type(base).__name__, "config": settings, "transformers": transformers.__version__}
        ).encode()
    )
    _hash_module(hasher, embeddings)
    fingerprints = []
    for block in blocks[:depth]:
        _hash_module(hasher, block)
        fingerprints.append(hasher.copy().hexdigest())
    return fingerprints


def _hash_module(hasher: Any, module: nn.Module) -> None:
    import torch

    named = sorted([*module.named_parameters(), *module.named_buffers()], key=lambda item: item[0])
    for name, tensor in named:
        value = tensor.detach().to("cpu").contiguous()
        hasher.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        if value.numel():
            hasher.update(value.reshape(-1).view(torch.uint8).numpy())


def features_key(
    fingerprint: str, ids_digest: str, max_length: int, depth: int, dtype: str, compute: str
) -> str:
    """The cache key of one split's states after block ``depth``."""
    return digest(
        {
            "kind": "frozen-features",
            "format": FORMAT,
            "model": fingerprint,
            "tokens": ids_digest,
            "max_length": int(max_length),
            "depth": int(depth),
            "dtype": dtype,
            "compute": compute,
        }
    )


# --------------------------------------------------------------------------------------------
# One split's states: a flat (tokens x hidden) array and the examples' lengths
# --------------------------------------------------------------------------------------------


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _numpy_dtype(name: str) -> np.dtype:
    import numpy as np

    # numpy has no bfloat16: its bits are stored as uint16.
    return np.dtype({"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[name])


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view("uint16")
    return tensor.numpy()


def _from_numpy(array: np.ndarray, dtype: str) -> torch.Tensor:
    import numpy as np
    import torch

    array = np.ascontiguousarray(array)
    if dtype == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


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
        return int(self.states.shape[0]) * self.hidden * _numpy_dtype(self.dtype).itemsize

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

            values = _from_numpy(np.take(self.states, index.numpy(), axis=0), self.dtype)
        out = values.new_zeros((mask.shape[0], mask.shape[1], self.hidden))
        out[mask] = values
        return out


# --------------------------------------------------------------------------------------------
# Serving states through the model's own forward
# --------------------------------------------------------------------------------------------


class _Captured(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a hook to stop a forward once the wanted block's output is in hand."""

    def __init__(self, states: torch.Tensor) -> None:
        super().__init__("captured")
        self.states = states


def _hidden_of(output: Any) -> torch.Tensor:
    """The hidden states in a block's output (a tensor, or a tuple whose first item they are)."""
    return output[0] if isinstance(output, tuple | list) else output


class _ModelPatch:
    """Overrides ``forward`` of the embeddings and the blocks below ``depth`` while states are served.

    Outside :meth:`serving` every overridden module runs its own forward.
    """

    def __init__(self, embeddings: nn.Module, blocks: Sequence[nn.Module], depth: int) -> None:
        self.embeddings = embeddings
        self.blocks = list(blocks)
        self.depth = depth
        self.served: torch.Tensor | None = None
        self.served_depth = 0
        #: Each frozen block's output format, learnt from a real forward: None (a tensor) or a tuple's length.
        self.formats: list[int | None] | None = None
        self._originals: list[tuple[nn.Module, Any]] = []
        self._install()

    def _install(self) -> None:
        original = self.embeddings.forward

        def embeddings_forward(*args: Any, **kwargs: Any) -> Any:
            if self.served is None:
                return original(*args, **kwargs)
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            if input_ids is not None and tuple(input_ids.shape) != tuple(self.served.shape[:2]):
                raise RuntimeError(
                    f"feature cache: served states of shape {tuple(self.served.shape)} for input ids of "
                    "shape "
                    f"{tuple(input_ids.shape)}"
                )
            return self.served

        self._originals.append((self.embeddings, original))
        self.embeddings.forward = embeddings_forward
        for index, block in enumerate(self.blocks[: self.depth]):
            self._originals.append((block, block.forward))
            block.forward = self._block_forward(index, block.forward)

    def _block_forward(self, index: int, original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.served is None or index >= self.served_depth:
                return original(*args, **kwargs)
            hidden = (
                args[0]
                if args
                else next(kwargs[name] for name in ("hidden_states", "hidden_state", "x") if name in kwargs)
            )
            size = self.formats[index] if self.formats is not None else None
            return hidden if size is None else (hidden, *([None] * (size - 1)))

        return forward

    @contextlib.contextmanager
    def serving(self, states: torch.Tensor, depth: int) -> Iterator[None]:
        """Within the block, the model starts from ``states`` as the output of block ``depth``."""
        if self.formats is None:
            raise RuntimeError(
                "feature cache: serve states only after a probe has learnt the blocks' output format"
            )
        previous = self.served, self.served_depth
        self.served, self.served_depth = states, depth
        try:
            yield
        finally:
            self.served, self.served_depth = previous

    def remove(self) -> None:
        for module, _ in self._originals:
            module.__dict__.pop("forward", None)
        self._originals = []


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The whole model in eval mode, each module's previous mode restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# --------------------------------------------------------------------------------------------
# The cache of one trial
# --------------------------------------------------------------------------------------------


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
        self.patch = _ModelPatch(embeddings, blocks, depth)
        self.stores: dict[str, FeatureStore] = {}
        self.sources: dict[str, SplitSource] = {}
        self.served_dtype: torch.dtype | None = None
        self._reference: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None
        self._private: Path | None = None

    @classmethod
    def attach(cls, model: nn.Module, depth: int, **options: Any) -> FrozenFeatureCache | None:
        """A cache for ``model`` frozen to ``depth``, or None (with a log line) when it cannot have one."""
        from torch import nn

        from trainers.regularization import find_encoder_blocks

        log = options["log"]
        if depth <= 0:
            return None
        try:
            embeddings, blocks = find_encoder_blocks(model)
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

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            raise _Captured(_hidden_of(output))

        handle = block.register_forward_hook(hook)
        try:
            self.forward(inputs)
        except _Captured as captured:
            return captured.states
        finally:
            handle.remove()
        raise RuntimeError(f"feature cache: the model's forward never ran {type(block).__name__}")

    def probe(self, inputs: dict[str, torch.Tensor]) -> None:
        """Run a few examples without the cache: learn the frozen blocks' output format and keep
        the last block's output for :meth:`verify`."""
        import torch

        formats: list[int | None] = [None] * self.depth
        outputs: dict[int, torch.Tensor] = {}

        def recorder(index: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                formats[index] = len(output) if isinstance(output, tuple | list) else None
                outputs[index] = _hidden_of(output)

            return hook

        handles = [
            block.register_forward_hook(recorder(i)) for i, block in enumerate(self.blocks[: self.depth])
        ]
        try:
            with torch.no_grad(), _eval_mode(self.model):
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
        with torch.no_grad(), _eval_mode(self.model), self.serving(name, rows):
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
        nbytes = sum(lengths) * hidden * _numpy_dtype(self.dtype).itemsize
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
                save_array(folder / "lengths.npy", _lengths_array(lengths))
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
    ) -> _Intermediates:
        """Claim the shared entries of the depths between ``start_depth`` and this one that a fill
        passes through and the shared folder lacks, within the disk bounds (none without a shared folder)."""
        intermediates = _Intermediates(self.root, lengths, hidden, self.dtype)
        if self.root is None or nbytes <= 0 or self.depth - start_depth < 2:
            return intermediates
        missing = [
            depth
            for depth in range(start_depth + 1, self.depth)
            if not (self.root / self._key(depth, ids_digest)).is_dir()
        ]
        if not missing:
            return intermediates
        allowed = self.intermediate_bytes
        with contextlib.suppress(OSError):
            # This fill's own entry goes to disk too: keep the reserve free after both.
            allowed = min(allowed, shutil.disk_usage(self.root).free - nbytes - DISK_RESERVE_BYTES)
        chosen = _spread(missing, max(0, allowed) // nbytes)
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
        import numpy as np

        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        stored_lengths = np.load(entry / "lengths.npy")
        states = np.load(entry / "states.npy", mmap_mode="r")
        expected = (sum(lengths), hidden)
        if (
            meta.get("format") != FORMAT
            or meta.get("dtype") != self.dtype
            or tuple(states.shape) != expected
            or states.dtype != _numpy_dtype(self.dtype)
            or not np.array_equal(stored_lengths, _lengths_array(lengths))
        ):
            raise RuntimeError(
                f"feature cache: the entry {entry} does not match the split it is keyed for "
                f"(states {tuple(states.shape)} {states.dtype}, expected {expected} {self.dtype}); delete it"
            )
        if in_memory:
            return FeatureStore(_from_numpy(np.array(states), self.dtype), lengths, self.dtype, entry)
        return FeatureStore(states, lengths, self.dtype, entry)

    def _compute(
        self,
        sequences: Sequence[Sequence[int]],
        lengths: Sequence[int],
        hidden: int,
        batch_size: int,
        folder: Path | None,
        in_memory: bool,
        source: tuple[FeatureStore, int] | None,
        also: _Intermediates | None = None,
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
        storage = _torch_dtype(self.dtype)
        if in_memory:
            states: Any = torch.empty((total, hidden), dtype=storage)
        else:
            assert folder is not None, "states not held in memory go to a folder"
            states = np.lib.format.open_memmap(
                folder / "states.npy", mode="w+", dtype=_numpy_dtype(self.dtype), shape=(total, hidden)
            )
        layout = FeatureStore(torch.empty((0, hidden)), lengths, self.dtype)
        collate = self.collate
        block = self.blocks[self.depth - 1]
        passing: dict[int, torch.Tensor] = {}

        def keeper(depth: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                passing[depth] = _hidden_of(output)

            return hook

        depths = also.depths if also is not None else []
        handles = [self.blocks[depth - 1].register_forward_hook(keeper(depth)) for depth in depths]
        try:
            with torch.no_grad(), _eval_mode(self.model):
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
                        states[index.numpy()] = _to_numpy(values)
                    if also is not None:
                        for depth in depths:
                            also.write(depth, index, passing[depth][on_device].to("cpu", storage))
        finally:
            for handle in handles:
                handle.remove()
        if in_memory:
            if folder is not None:
                save_array(folder / "states.npy", _to_numpy(states))
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


def _lengths_array(lengths: Sequence[int]) -> np.ndarray:
    import numpy as np

    return np.asarray(list(lengths), dtype=np.int64)


def _spread(depths: Sequence[int], count: int) -> list[int]:
    """``count`` of ``depths`` (ascending), spread evenly over them; all when ``count`` covers them."""
    if count >= len(depths):
        return list(depths)
    if count <= 0:
        return []
    step = (len(depths) + 1) / (count + 1)
    return sorted({depths[int((index + 1) * step + 0.5) - 1] for index in range(count)})


class _Intermediates:
    """The shared entries a fill writes for the depths it passes through (see the module docstring).

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
            states = np.lib.format.open_memmap(path, mode="w+", dtype=_numpy_dtype(self.dtype), shape=shape)
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
        self.claimed[depth][2][index.numpy()] = _to_numpy(values)

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
                save_array(folder / "lengths.npy", _lengths_array(self.lengths))
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
