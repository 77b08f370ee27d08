"""The classification head: what it reads (pooling) and which parameters are the head.

Pooling. A sequence-classification model of ``transformers`` feeds its head the first token
(``[CLS]``), usually through a pooler (BERT's dense + tanh, trained on next-sentence prediction).
Sentence-embedding models (all-MiniLM, all-mpnet, E5, GTE, ...) are trained for the *mean* of their
token states instead, and their pooler is untrained or absent; reading ``[CLS]`` from them throws
most of what they learned away. ``pooling: mean`` makes the head read the masked mean of the last
layer's token states; ``cls`` keeps the architecture's own head; ``auto`` (the default) picks
``mean`` for a model folder packaged for sentence-transformers whose pooling is the mean
(``modules.json`` with a ``1_Pooling/config.json``, or ``config_sentence_transformers.json``), else
``cls``.

How mean pooling is installed, without changing the model's class (so the feature cache, the
freezing and the layer-wise learning rates see the same modules): a model whose base has a pooler
(BERT, MiniLM, ELECTRA-style) gets a :class:`MeanPooler` in its place, which reads the attention
mask its base model was called with; any other (RoBERTa, DistilBERT: heads that read position 0)
gets the masked mean written into position 0 of the last layer's output. The pooling chosen is
recorded in the model's config as ``ftsweep_pooling``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

Pooling = Literal["cls", "mean"]


def sentence_embedding_pooling(model_path: str) -> Pooling | None:
    """The pooling a sentence-transformers packaging of ``model_path`` declares, or None when it has none.

    Reads ``modules.json`` (the Pooling module's folder and its ``config.json``); a folder with only
    ``config_sentence_transformers.json`` is taken to pool by the mean, sentence-transformers' default.
    """
    folder = Path(model_path)
    if not folder.is_dir():
        return None
    pooling_config: Path | None = None
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            entries = []
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and str(entry.get("type", "")).endswith("Pooling"):
                pooling_config = folder / str(entry.get("path", "")) / "config.json"
                break
    if pooling_config is None and (folder / "1_Pooling" / "config.json").is_file():
        pooling_config = folder / "1_Pooling" / "config.json"
    if pooling_config is not None and pooling_config.is_file():
        try:
            modes = json.loads(pooling_config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            modes = {}
        if (
            isinstance(modes, dict)
            and modes.get("pooling_mode_cls_token")
            and not modes.get("pooling_mode_mean_tokens")
        ):
            return "cls"
        return "mean"
    if (folder / "config_sentence_transformers.json").is_file() or modules.is_file():
        return "mean"
    return None


def resolve_pooling(pooling: str, model_path: str) -> Pooling:
    """``cls`` or ``mean`` for the ``pooling`` parameter (``auto`` looks at the model's packaging)."""
    if pooling == "auto":
        return sentence_embedding_pooling(model_path) or "cls"
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling {pooling!r}; allowed: auto, cls, mean")
    return pooling  # type: ignore[return-value]


def masked_mean(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``states`` (batch x tokens x hidden) over the positions ``mask`` keeps."""
    if mask is None:
        return states.mean(dim=1)
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _mean_pooler_class() -> type[nn.Module]:
    from torch import nn

    class MeanPooler(nn.Module):
        """Stands in for a pooler: the masked mean of the token states (no parameters).

        Args:
            masks: a one-item list holding the attention mask of the current forward (set by a hook on
                the base model, which is called with it).
        """

        def __init__(self, masks: list[torch.Tensor | None]) -> None:
            super().__init__()
            self.masks = masks

        def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            mask = self.masks[0]
            if mask is not None and mask.shape[:2] != hidden_states.shape[:2]:
                mask = None
            return masked_mean(hidden_states, mask)

    return MeanPooler


def _attention_mask(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]  # base models take (input_ids, attention_mask, ...)
    return mask


def install_mean_pooling(model: nn.Module) -> None:
    """Make the head of ``model`` (a ``*ForSequenceClassification``) read the masked mean of the last
    layer's token states instead of the first token; see the module docstring."""
    base = getattr(model, "base_model", model)
    masks: list[torch.Tensor | None] = [None]

    def keep_mask(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        masks[0] = _attention_mask(args, kwargs)

    base.register_forward_pre_hook(keep_mask, with_kwargs=True)
    if getattr(base, "pooler", None) is not None:
        base.pooler = _mean_pooler_class()(masks)
    else:

        def mean_into_first(module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
            import torch

            states = output[0]
            mean = masked_mean(states, masks[0]).unsqueeze(1)
            replaced = torch.cat([mean, states[:, 1:]], dim=1)
            if hasattr(output, "last_hidden_state"):
                output.last_hidden_state = replaced
                return output
            return (replaced, *output[1:])

        base.register_forward_hook(mean_into_first, with_kwargs=True)
    config = getattr(model, "config", None)
    if config is not None:
        config.ftsweep_pooling = "mean"


def classifier_layer(model: nn.Module, n_labels: int) -> nn.Linear:
    """The head's last linear layer: the one that outputs the ``n_labels`` logits.

    Raises:
        ValueError: when the model has no such layer.
    """
    from torch import nn

    found = [
        module
        for module in model.modules()
        if isinstance(module, nn.Linear) and module.out_features == n_labels
    ]
    if not found:
        raise ValueError(f"{type(model).__name__} has no linear layer with {n_labels} outputs")
    return found[-1]


def head_parameter_names(model: nn.Module) -> set[str]:
    """The parameters above the encoder (pooler and classifier): the ones the head learning rate moves."""
    from trainers.regularization import layer_depths

    return {name for name, depth in layer_depths(model).items() if depth == 0}
