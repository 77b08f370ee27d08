"""Tokenizing a split, once per study: the token ids cached next to the study.

Contract: :func:`tokenize_texts` is the one place a trial tokenizes (special tokens added,
truncated to ``max_length``, not padded: padding happens per batch, :mod:`trainers.batching`).
:func:`tokenize_cached` returns exactly what :func:`tokenize_texts` would, and with a cache folder
it stores the ids once, in an entry keyed by everything that determines them (:func:`tokens_key`:
the tokenizer's full definition, the texts and ``max_length``), written atomically under a lock
(:mod:`trainers.shared_folder`), so that every later trial of any worker sharing the folder reads
them. Each result carries the SHA-256 of the ids, which keys the frozen-layer features computed
from them (:mod:`trainers.feature_keys`). Entries are numpy arrays and JSON, never pickle.

numpy and hashlib are imported inside the functions that use them, so importing this module is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Bump when the layout of a token entry or the meaning of its key changes.
TOKENS_FORMAT = 1


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, with special tokens, truncated to ``max_length``, not padded.

    This is the one place a trial tokenizes; padding happens per batch
    (:class:`trainers.batching.PadCollator`).
    """
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return [list(ids) for ids in encoded["input_ids"]]


@dataclass
class TokenizedSplit:
    """One split's token ids.

    Attributes:
        ids: the token ids of each text (special tokens added, truncated, not padded).
        digest: SHA-256 of the ids themselves (lengths and values): what keys the features of
            frozen layers computed from them.
        cached: True when the ids were read from the study's cache rather than tokenized here.
    """

    ids: list[list[int]]
    digest: str
    cached: bool = False

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.ids]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of what determines a tokenizer's output: its class, its full definition
    (``backend_tokenizer.to_str()`` for a fast tokenizer, the vocabulary and init arguments for a
    slow one), its special tokens and its truncation side."""
    import hashlib

    hasher = hashlib.sha256()
    special = {name: str(value) for name, value in getattr(tokenizer, "special_tokens_map", {}).items()}
    header = {
        "class": type(tokenizer).__name__,
        "special_tokens": special,
        "special_ids": sorted(getattr(tokenizer, "all_special_ids", [])),
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
    }
    hasher.update(json.dumps(header, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        hasher.update(backend.to_str().encode())
    else:
        vocabulary = sorted(tokenizer.get_vocab().items())
        hasher.update(json.dumps(vocabulary).encode())
        hasher.update(json.dumps(getattr(tokenizer, "init_kwargs", {}), sort_keys=True, default=str).encode())
    return hasher.hexdigest()


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 of a list of texts (each length-prefixed, so no two lists share a digest by concatenation)."""
    import hashlib

    hasher = hashlib.sha256()
    hasher.update(len(texts).to_bytes(8, "little"))
    for text in texts:
        data = text.encode("utf-8")
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()


def _flatten(ids: Sequence[Sequence[int]]) -> tuple[Any, Any]:
    """``(flat, lengths)``: the ids of all rows in one int64 array, and each row's length."""
    import itertools

    import numpy as np

    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def _unflatten(flat: Any, lengths: Any) -> list[list[int]]:
    import numpy as np

    values = flat.tolist()
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]]
    return [values[start:end] for start, end in zip(starts, ends, strict=True)]


def ids_digest(flat: Any, lengths: Any) -> str:
    """SHA-256 of token ids given as ``(flat, lengths)`` int arrays (see :func:`_flatten`)."""
    import hashlib

    import numpy as np

    hasher = hashlib.sha256(b"token-ids-v1")
    hasher.update(np.ascontiguousarray(lengths, dtype="<i8").tobytes())
    hasher.update(np.ascontiguousarray(flat, dtype="<i8").tobytes())
    return hasher.hexdigest()


def tokens_key(fingerprint: str, texts: Sequence[str], max_length: int) -> str:
    """The cache key of the token ids of ``texts``: tokenizer, texts and max_length."""
    from trainers.shared_folder import digest

    return digest(
        {
            "kind": "tokens",
            "format": TOKENS_FORMAT,
            "tokenizer": fingerprint,
            "texts": texts_digest(texts),
            "max_length": int(max_length),
        }
    )


def tokenize_cached(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    cache_dir: Path | None,
    *,
    fingerprint: str | None = None,
) -> TokenizedSplit:
    """The token ids of ``texts`` (as :func:`tokenize_texts`), tokenized once per study.

    With ``cache_dir`` (the study's ``cache_dir / "tokens"``) the ids are stored in an entry keyed
    by :func:`tokens_key`, written atomically under a file lock (see
    :func:`trainers.shared_folder.shared_entry`): the first trial tokenizes, every later trial of
    any worker sharing the folder reads. Without it, the texts are tokenized here.

    Args:
        fingerprint: :func:`tokenizer_fingerprint` of ``tokenizer``, when the caller has it already.
    """
    import numpy as np

    if cache_dir is None:
        ids = tokenize_texts(tokenizer, texts, max_length)
        return TokenizedSplit(ids, ids_digest(*_flatten(ids)))

    from trainers.shared_folder import save_array, save_json, shared_entry

    key = tokens_key(fingerprint or tokenizer_fingerprint(tokenizer), texts, max_length)
    made: dict[str, Any] = {}

    def create(folder: Path) -> None:
        ids = tokenize_texts(tokenizer, texts, max_length)
        flat, lengths = _flatten(ids)
        # int32 halves the file; every tokenizer's vocabulary fits.
        narrow = flat.astype(np.int32) if (flat.size == 0 or int(flat.max()) < 2**31) else flat
        save_array(folder / "ids.npy", narrow)
        save_array(folder / "lengths.npy", lengths)
        digest = ids_digest(flat, lengths)
        save_json(folder / "meta.json", {"format": TOKENS_FORMAT, "rows": len(ids), "digest": digest})
        made.update(ids=ids, digest=digest)

    entry, created = shared_entry(Path(cache_dir), key, create)
    if created:
        return TokenizedSplit(made["ids"], made["digest"])
    flat = np.load(entry / "ids.npy")
    lengths = np.load(entry / "lengths.npy")
    if len(lengths) != len(texts):
        raise RuntimeError(
            f"token cache: the entry {entry} has {len(lengths)} rows for {len(texts)} texts; delete it"
        )
    return TokenizedSplit(_unflatten(flat, lengths), ids_digest(flat, lengths), cached=True)
