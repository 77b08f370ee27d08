"""Token-level augmentation of the text recipe: special tokens stay, the generator decides."""

from __future__ import annotations

import random

import pytest

from trainers.text_augmentation import augment, token_dropout, word_swap

CLS, SEP, PAD = 2, 3, 0
SPECIAL = frozenset({CLS, SEP, PAD})


@pytest.mark.parametrize("kind", ["token_dropout", "word_swap"])
def test_augmentation_keeps_special_tokens_and_is_seeded(kind: str) -> None:
    sequences = [[CLS, *range(10, 10 + n), SEP] for n in (1, 2, 5, 12)] + [
        [CLS, 11, 12, SEP, 13, 14, SEP, PAD]
    ]
    out = augment(sequences, kind, 0.5, SPECIAL, random.Random(7))
    for original, changed in zip(sequences, out, strict=True):
        specials = [(i, t) for i, t in enumerate(original) if t in SPECIAL]
        kept = [(i, t) for i, t in enumerate(changed) if t in SPECIAL]
        assert [t for _, t in kept] == [t for _, t in specials]
        if kind == "word_swap":
            assert kept == specials  # special tokens never move
            assert sorted(changed) == sorted(original)
        assert changed[0] == CLS
    assert augment(sequences, kind, 0.5, SPECIAL, random.Random(7)) == out
    assert augment(sequences, kind, 0.5, SPECIAL, random.Random(8)) != out
    assert augment(sequences, kind, 0.0, SPECIAL, random.Random(7)) == sequences


def test_token_dropout_drops_about_p_and_never_everything() -> None:
    rng = random.Random(0)
    ids = [CLS, *range(10, 1010), SEP]
    dropped = len(ids) - len(token_dropout(ids, 0.3, SPECIAL, rng))
    assert 250 < dropped < 350
    assert token_dropout([CLS, 10, SEP], 0.99, SPECIAL, random.Random(1)) == [CLS, 10, SEP]


def test_word_swap_swaps_neighbours() -> None:
    assert word_swap([CLS, 10, 11, SEP], 0.999, SPECIAL, random.Random(0)) == [CLS, 11, 10, SEP]
