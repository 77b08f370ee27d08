"""The keys of frozen-layer feature entries: everything that determines the states after block k.

Contract. :func:`frozen_fingerprints` digests the model's frozen part at each depth (the model
class, its config less what does not change an eval-mode forward, the transformers version, and
the exact values of every parameter and buffer of the embeddings and the blocks below that depth);
the digests chain, so a trial frozen to depth k also knows the fingerprint of every shallower
depth, and finds the entries shallower trials wrote. :func:`features_key` adds the token ids, the
truncation length, the depth, the storage dtype and the compute precision. Two trials get the same
key exactly when their entries would hold the same states; a change of entry layout bumps
:data:`trainers.feature_store.FORMAT`, which is part of every key.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from trainers.feature_store import FORMAT
from trainers.shared_folder import digest

if TYPE_CHECKING:
    from torch import nn

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

    from trainers.regularization import find_blocks

    embeddings, blocks = find_blocks(model)
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
