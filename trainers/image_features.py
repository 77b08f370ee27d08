"""The frozen stages' output of an image trial, computed once per image and served back (in memory).

With ``freeze_depth`` k > 0 the stem and the lowest k stages are frozen and run in eval mode
(:func:`trainers.regularization.train_mode`), so their output is a pure function of the image as
the evaluation transform leaves it. :class:`FrozenImageFeatures` computes that output once per
image of a split and serves it back through the model's own forward
(:class:`trainers.frozen_prefix.ModelPatch`: the stem returns the stored states, the frozen stages
pass them through), so every epoch runs only the trainable stages and the head.

What may be cached: validation always (it sees only the evaluation transform); training only when
no augmentation acts before the frozen part, i.e. every per-image augmentation off and no mixup /
cutmix (they mix pixels). Unlike the text recipe's :mod:`trainers.feature_cache`, the states live in
this trial's memory only (bounded by ``trainer.feature_cache_mb``), not in the study's cache folder:
a later trial computes them again.

A self-check on the first batch compares the model's output with and without the served states;
a model for which they differ runs uncached, with a log line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from trainers.frozen_prefix import ModelPatch, capture, eval_mode, hidden_of

if TYPE_CHECKING:
    import torch
    from torch import nn

#: The largest difference of logits with and without served states that passes the self-check.
TOLERANCE = 1e-4


class FrozenImageFeatures:
    """Serve the output of the stem and the lowest ``depth`` stages of ``model`` from memory.

    Args:
        model: the image classifier (called as ``model(pixel_values=...)``).
        depth: how many stages are frozen (> 0).
        autocast: the trial's autocast factory.
        to_device: moves a CPU batch to the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        depth: int,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
        to_device: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        from trainers.regularization import find_blocks

        stem, blocks = find_blocks(model)
        self.model = model
        self.depth = depth
        self.blocks = blocks
        self.autocast = autocast
        self.to_device = to_device
        self.patch = ModelPatch(stem, blocks, depth)

    def _forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        with self.autocast():
            return self.model(pixel_values=self.to_device(inputs["pixel_values"]))

    def states(self, images: torch.Tensor) -> torch.Tensor:
        """The output of the last frozen stage for a CPU batch of images, on the CPU."""
        import torch

        with torch.no_grad(), eval_mode(self.model):
            return capture(self._forward, {"pixel_values": images}, self.blocks[self.depth - 1]).cpu()

    def probe(self, images: torch.Tensor) -> bool:
        """Learn the frozen stages' output format and check that serving gives the model's own logits."""
        import torch

        formats: list[int | None] = [None] * self.depth

        def recorder(index: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                formats[index] = len(output) if isinstance(output, tuple | list) else None
                hidden_of(output)

            return hook

        handles = [
            block.register_forward_hook(recorder(i)) for i, block in enumerate(self.blocks[: self.depth])
        ]
        try:
            with torch.no_grad(), eval_mode(self.model):
                reference = self._forward({"pixel_values": images}).logits.float().cpu()
        finally:
            for handle in handles:
                handle.remove()
        self.patch.formats = formats
        with torch.no_grad(), eval_mode(self.model), self.serving(self.states(images)) as placeholder:
            served = self._forward({"pixel_values": placeholder}).logits.float().cpu()
        return bool((served - reference).abs().max() <= TOLERANCE * max(1.0, float(reference.abs().max())))

    @contextlib.contextmanager
    def serving(self, states: torch.Tensor) -> Iterator[torch.Tensor]:
        """Within the block the model starts after the frozen stages from ``states``; yields the
        placeholder images to call it with (one pixel each: the stem never reads them)."""
        import torch

        placeholder = torch.zeros((states.shape[0], 3, 1, 1))
        with self.patch.serving(self.to_device(states), self.depth):
            yield placeholder

    def close(self) -> None:
        """Give every patched module its own forward back."""
        self.patch.remove()


def batched_states(
    features: FrozenImageFeatures, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(states, labels)`` for each ``(images, labels)`` batch."""
    return [(features.states(images), labels) for images, labels in batches]
