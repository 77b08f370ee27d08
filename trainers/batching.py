"""Batches of token ids: padding per batch, and the order rows are batched in.

Contract: :class:`PadCollator` pads a list of id lists to the batch's longest (never to
``max_length``) and builds the attention mask; :func:`bucketed_batches` (training) groups rows of
similar length and shuffles with only the generator it is given, so a trial seeded per epoch
(:func:`epoch_seed`) replays an epoch exactly on resume; :func:`sorted_batches` (evaluation) sorts
by length, as order does not matter there. torch is imported inside the functions that use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class PadCollator:
    """Turns a list of id lists into padded tensors, padding to the batch's longest sequence.

    Args:
        pad_id: the tokenizer's padding id.
        token_type_ids: also produce all-zero ``token_type_ids`` (for models that take them).
    """

    def __init__(self, pad_id: int, token_type_ids: bool = False) -> None:
        self.pad_id = pad_id
        self.token_type_ids = token_type_ids

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> PadCollator:
        """A collator with the tokenizer's pad id that adds token_type_ids when the model takes them."""
        pad_id = tokenizer.pad_token_id
        if pad_id is None:  # e.g. GPT-style tokenizers: any id works, the attention mask hides it
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        return cls(pad_id, "token_type_ids" in getattr(tokenizer, "model_input_names", ()))

    def __call__(self, sequences: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_type_ids:
            batch["token_type_ids"] = torch.zeros_like(input_ids)
        return batch


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (trial seed, epoch): a resumed trial replays epoch ``epoch`` exactly."""
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, chunk_batches: int = 50
) -> list[list[int]]:
    """Shuffled batches of row indices whose rows have similar lengths, so padding is small.

    The rows are shuffled, cut into chunks of ``chunk_batches`` batches, sorted by length within a
    chunk and cut into batches; the batch order is shuffled again so that long and short batches mix.

    Args:
        lengths: the token count of each row.
        batch_size: rows per batch (the last batch of a chunk may be smaller).
        generator: the only source of randomness (seed it per epoch with :func:`epoch_seed`).
        chunk_batches: batches per sorting chunk; larger means less padding but less randomness.
    """
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        # Python's sort is stable: equal lengths keep the shuffled order.
        part = sorted(order[start : start + chunk], key=lambda index: lengths[index])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of row indices sorted by length (for evaluation, where order does not matter)."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
