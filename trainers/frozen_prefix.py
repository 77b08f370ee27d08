"""Running a model from stored states of its frozen prefix, and stopping a forward at a block.

How the model skips its frozen part. The model's own forward runs unchanged: while a batch is
being served (:meth:`ModelPatch.serving`), the embeddings module returns the given states, and
the blocks below the served depth pass their input through in the block's own output format
(learnt from a real forward, :attr:`ModelPatch.formats`). The model's attention-mask code, the
trainable blocks, the pooler and the head run as they always do, so this works for any encoder
:func:`trainers.regularization.find_blocks` understands (BERT, RoBERTa, MiniLM, ELECTRA,
DistilBERT, ...).

Contract: outside :meth:`ModelPatch.serving` every patched module runs its own forward;
:meth:`ModelPatch.remove` gives every module its own forward back. :func:`capture` runs a forward
only as far as one block and returns that block's hidden states; :func:`eval_mode` puts the whole
model in eval mode and restores each module's mode afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


class _Captured(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a hook to stop a forward once the wanted block's output is in hand."""

    def __init__(self, states: torch.Tensor) -> None:
        super().__init__("captured")
        self.states = states


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden states in a block's output (a tensor, or a tuple whose first item they are)."""
    return output[0] if isinstance(output, tuple | list) else output


class ModelPatch:
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
            # Token ids must match the served states; an image model's placeholder pixels need not.
            if (
                input_ids is not None
                and not input_ids.is_floating_point()
                and tuple(input_ids.shape) != tuple(self.served.shape[:2])
            ):
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
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The whole model in eval mode, each module's previous mode restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def capture(
    forward: Callable[[dict[str, torch.Tensor]], Any], inputs: dict[str, torch.Tensor], block: nn.Module
) -> torch.Tensor:
    """Run ``forward(inputs)`` until ``block`` has run; its output hidden states (the rest never runs)."""

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        raise _Captured(hidden_of(output))

    handle = block.register_forward_hook(hook)
    try:
        forward(inputs)
    except _Captured as captured:
        return captured.states
    finally:
        handle.remove()
    raise RuntimeError(f"feature cache: the model's forward never ran {type(block).__name__}")
