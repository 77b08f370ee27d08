"""Token-level augmentation of the text recipe's training batches: token dropout and word swap.

Both act on token ids and never touch special tokens; the random generator is the caller's (one
per epoch, seeded from the trial's seed, so a resumed trial draws the same augmentations).
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def token_dropout(
    ids: Sequence[int], p: float, special_ids: set[int] | frozenset[int], rng: random.Random
) -> list[int]:
    """Drop each non-special token with probability ``p``; special tokens always stay.

    A sequence that would lose every ordinary token comes back unchanged: an example with no
    content left would only teach the model its label prior.
    """
    kept = [token for token in ids if token in special_ids or rng.random() >= p]
    if any(token not in special_ids for token in ids) and all(token in special_ids for token in kept):
        return list(ids)
    return kept


def word_swap(
    ids: Sequence[int], p: float, special_ids: set[int] | frozenset[int], rng: random.Random
) -> list[int]:
    """Swap adjacent non-special tokens, each pair with probability ``p``; special tokens never move."""
    out = list(ids)
    index = 0
    while index < len(out) - 1:
        if out[index] not in special_ids and out[index + 1] not in special_ids and rng.random() < p:
            out[index], out[index + 1] = out[index + 1], out[index]
            index += 2  # a token moves at most once
        else:
            index += 1
    return out


AUGMENTATIONS = {"token_dropout": token_dropout, "word_swap": word_swap}


def augment(
    sequences: Sequence[Sequence[int]],
    kind: str,
    p: float,
    special_ids: set[int] | frozenset[int],
    rng: random.Random,
) -> list[list[int]]:
    """Apply augmentation ``kind`` (``none``, ``token_dropout`` or ``word_swap``) to each sequence."""
    if kind == "none" or p <= 0:
        return [list(ids) for ids in sequences]
    function = AUGMENTATIONS[kind]
    return [function(ids, p, special_ids, rng) for ids in sequences]
