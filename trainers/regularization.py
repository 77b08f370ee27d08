"""Regularization knobs for fine-tuning any ``nn.Module``, each a small function.

Weight decay groups, layer-wise learning-rate decay, freezing the lower blocks, dropout, L1
and L2-SP penalties and class weights. Recipes and the epoch engine compose them; each is
tested on its own in ``tests/test_regularization.py``. (Token-level augmentation is the text
recipe's: :mod:`trainers.text_augmentation`.)

A model's blocks are found by one function, :func:`find_blocks`: encoder layers of BERT-like
models, stages of ViT / Swin / ConvNeXt / ResNet, decoder layers; no per-model table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

#: Substrings of a parameter or module name that mark a normalization layer.
_NORM_NAMES = ("layernorm", "layer_norm", "norm")
#: Names of a projection that marks its parent as the module computing attention probabilities.
_ATTENTION_PROJECTIONS = frozenset({"query", "q", "q_lin", "q_proj", "query_proj", "in_proj", "qkv", "Wqkv"})


# --------------------------------------------------------------------------------------------
# Finding the blocks
# --------------------------------------------------------------------------------------------

#: Where models keep their stack of blocks, below ``model.base_model``: (parent, child) attribute
#: names, the first that is an ``nn.ModuleList`` wins. ``""`` as parent means the base model itself.
_BLOCK_LISTS = (
    ("encoder", "layer"),  # BERT, RoBERTa, MiniLM, ELECTRA, DeBERTa, ViT, DeiT
    ("transformer", "layer"),  # DistilBERT
    ("encoder", "layers"),  # Swin (its stages), BART-like encoders
    ("encoder", "stages"),  # ConvNeXt, ResNet, RegNet
    ("", "layers"),  # Llama, Mistral, Qwen (decoder layers)
    ("", "h"),  # GPT-2, GPT-Neo, Falcon (decoder layers)
    ("decoder", "layers"),  # OPT
)


def find_blocks(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The stem (embeddings) and the stack of blocks of any model, bottom first.

    The one function freezing (:func:`freeze`), layer-wise learning rates (:func:`layer_depths`) and
    the feature cache find a model's depth with. Blocks are the encoder layers of BERT-like models,
    the stages of ViT / Swin / ConvNeXt / ResNet, or the decoder layers of GPT-like models; the stem
    is what comes before them (``embeddings``, ResNet's ``embedder``, token and position embeddings).
    Looks in ``model.base_model`` for the attribute paths of :data:`_BLOCK_LISTS`, then for the
    first ``nn.ModuleList`` whose length is ``config.num_hidden_layers``.

    Raises:
        ValueError: naming the model class, when it has no such blocks or no stem before them.
    """
    base = getattr(model, "base_model", model)
    blocks = _named_block_list(base)
    if blocks is None:
        expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        blocks = next(
            (
                module
                for module in base.modules()
                if isinstance(module, nn.ModuleList) and len(module) == expected
            ),
            None,
        )
    if blocks is None:
        places = ", ".join(".".join(filter(None, pair)) for pair in _BLOCK_LISTS)
        raise ValueError(
            f"cannot find the blocks (layers or stages) of {type(model).__name__}: looked for {places} "
            "and a list of config.num_hidden_layers modules; freeze_depth and layerwise_lr_decay need them "
            "(leave both at their defaults for this model)"
        )
    return _stem_of(base, model), list(blocks)


def _named_block_list(base: nn.Module) -> nn.ModuleList | None:
    for parent, child in _BLOCK_LISTS:
        owner = getattr(base, parent, None) if parent else base
        candidate = getattr(owner, child, None)
        if isinstance(candidate, nn.ModuleList):
            return candidate
    return None


def _stem_of(base: nn.Module, model: nn.Module) -> nn.Module:
    embeddings = getattr(base, "embeddings", None)
    if isinstance(embeddings, nn.Module):
        return embeddings
    # E.g. GPT-2 keeps token and position embeddings as separate children: group them; ResNet's
    # stem is its "embedder".
    found = [
        module for name, module in base.named_children() if "embed" in name.lower() or name in ("wte", "wpe")
    ]
    if not found:
        raise ValueError(
            f"cannot find the embeddings (the stem before the first block) of {type(model).__name__}"
        )
    return found[0] if len(found) == 1 else nn.ModuleList(found)


# --------------------------------------------------------------------------------------------
# Optimizer parameter groups: weight decay and layer-wise learning rates
# --------------------------------------------------------------------------------------------


def is_no_decay(name: str, parameter: nn.Parameter, module: nn.Module | None) -> bool:
    """True for parameters weight decay should skip: biases, normalization weights, 1-D tensors."""
    if name.endswith("bias") or parameter.ndim < 2:
        return True
    if module is not None and (isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()):
        return True
    return any(marker in name.lower() for marker in _NORM_NAMES)


def decay_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters weight decay applies to (not biases or normalization weights)."""
    modules = dict(model.named_modules())
    return [
        parameter
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and not is_no_decay(name, parameter, modules.get(name.rpartition(".")[0]))
    ]


def layer_depths(model: nn.Module) -> dict[str, int]:
    """How many layers below the head each parameter sits, by name.

    The head (and anything above the encoder, such as a pooler) is 0, encoder block ``i`` of
    ``L`` (counting from 0 at the bottom) is ``L - i``, the embeddings ``L + 1``.
    """
    embeddings, blocks = find_blocks(model)
    count = len(blocks)
    owners = {id(embeddings): count + 1, **{id(block): count - index for index, block in enumerate(blocks)}}
    prefixes: list[tuple[str, int]] = []
    for name, module in model.named_modules():
        if id(module) in owners:
            prefixes.append((name + ".", owners[id(module)]))
    if isinstance(embeddings, nn.ModuleList):  # grouped embeddings: their members carry the depth
        members = {id(member) for member in embeddings}
        prefixes += [
            (name + ".", count + 1) for name, module in model.named_modules() if id(module) in members
        ]
    depths = {}
    for name, _ in model.named_parameters():
        depths[name] = next((depth for prefix, depth in prefixes if name.startswith(prefix)), 0)
    return depths


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    learning_rate: float,
    layerwise_lr_decay: float = 1.0,
    head_learning_rate: float | None = None,
) -> list[dict[str, Any]]:
    """AdamW parameter groups with decoupled weight decay and layer-wise learning-rate decay.

    Biases and normalization weights get no weight decay. A parameter ``d`` layers below the
    head (see :func:`layer_depths`) learns at ``learning_rate * layerwise_lr_decay ** d``; the head
    (``d = 0``: everything above the encoder, pooler and classifier) at ``head_learning_rate`` when
    given. Parameters that do not require grad (frozen) are left out.

    Returns:
        groups with ``params``, ``lr``, ``weight_decay`` and a descriptive ``name``
        (``"depth2/decay"``, ``"head/decay"`` for the head with its own learning rate), in the order
        the model's parameters first appear.
    """
    modules = dict(model.named_modules())
    own_head = head_learning_rate is not None
    depths = layer_depths(model) if layerwise_lr_decay != 1.0 or own_head else {}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        owner = modules.get(name.rpartition(".")[0])
        decay = not is_no_decay(name, parameter, owner)
        depth = depths.get(name, 0)
        key = (depth, decay)
        if key not in groups:
            head = own_head and depth == 0
            groups[key] = {
                "params": [],
                "lr": head_learning_rate if head else learning_rate * layerwise_lr_decay**depth,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{'head' if head else f'depth{depth}'}/{'decay' if decay else 'no_decay'}",
            }
        groups[key]["params"].append(parameter)
    return list(groups.values())


# --------------------------------------------------------------------------------------------
# Freezing
# --------------------------------------------------------------------------------------------


def freeze(model: nn.Module, depth: int) -> list[nn.Module]:
    """Freeze the embeddings and the lowest ``depth`` encoder blocks.

    ``0`` trains everything; the number of blocks trains only what sits above the encoder
    (pooler and classification head).

    Returns:
        the frozen modules (pass them to :func:`train_mode`).

    Raises:
        ValueError: when ``depth`` is negative or more than the model's number of blocks.
    """
    embeddings, blocks = find_blocks(model)
    if not 0 <= depth <= len(blocks):
        raise ValueError(
            f"freeze_depth {depth} is out of range for a {type(model).__name__} with {len(blocks)} blocks; "
            f"allowed: 0 to {len(blocks)}"
        )
    if depth == 0:
        return []
    frozen = [embeddings, *blocks[:depth]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def train_mode(model: nn.Module, frozen: Sequence[nn.Module]) -> None:
    """``model.train()``, but the frozen modules stay in eval mode.

    Frozen layers then run without dropout, so their output is a pure function of the input
    (what a cache of frozen features relies on) and they add no noise they cannot adapt to.
    """
    model.train()
    for module in frozen:
        module.eval()


# --------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------

_CONFIG_DROPOUT_KEYS = {
    "hidden": ("hidden_dropout_prob", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop"),
    "attention": ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop"),
    "classifier": ("classifier_dropout", "seq_classif_dropout"),
}


def set_config_dropout(
    config: Any, hidden: float | None = None, attention: float | None = None, classifier: float | None = None
) -> dict[str, float]:
    """Set the dropout fields a model config has, before the model is built from it.

    Models read these when they build their dropout modules (and a few read them in
    ``forward``), so this is the most reliable way; :func:`set_dropout` covers a built model.

    Returns:
        the fields set and their values.
    """
    changed = {}
    for kind, value in (("hidden", hidden), ("attention", attention), ("classifier", classifier)):
        if value is None:
            continue
        for key in _CONFIG_DROPOUT_KEYS[kind]:
            if hasattr(config, key):
                setattr(config, key, float(value))
                changed[key] = float(value)
    return changed


def dropout_kind(model: nn.Module, name: str) -> str:
    """``"classifier"``, ``"attention"`` or ``"hidden"`` for the dropout module called ``name``."""
    prefix = getattr(model, "base_model_prefix", "")
    in_base = getattr(model, "base_model", model) is model or (bool(prefix) and name.startswith(prefix + "."))
    if not in_base:
        return "classifier"
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    children = {child for child, _ in parent.named_children()}
    # The dropout applied to attention probabilities lives next to the query projection.
    if children & _ATTENTION_PROJECTIONS or "selfattention" in type(parent).__name__.lower():
        return "attention"
    return "hidden"


def set_dropout(
    model: nn.Module,
    hidden: float | None = None,
    attention: float | None = None,
    classifier: float | None = None,
) -> dict[str, float]:
    """Set ``p`` on the model's ``nn.Dropout`` modules and the matching config fields.

    Args:
        model: a Hugging Face model (a base model or one with a head).
        hidden: dropout after embeddings, attention outputs and feed-forward layers.
        attention: dropout on the attention probabilities.
        classifier: dropout in the classification head.
        (``None`` leaves that kind as the model has it.)

    Returns:
        the new ``p`` of each changed module, by module name.
    """
    values = {"hidden": hidden, "attention": attention, "classifier": classifier}
    if getattr(model, "config", None) is not None:
        set_config_dropout(model.config, hidden, attention, classifier)
    changed = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout):
            value = values[dropout_kind(model, name)]
            if value is not None:
                module.p = float(value)
                changed[name] = float(value)
    return changed


# --------------------------------------------------------------------------------------------
# Penalties
# --------------------------------------------------------------------------------------------


def l1_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of the absolute values of ``params`` (differentiable)."""
    return torch.stack([parameter.abs().sum() for parameter in params]).sum()


def add_l1_gradient(params: Iterable[torch.Tensor], strength: float) -> None:
    """Add the gradient of ``strength * l1_penalty(params)`` to ``.grad`` in place (no autograd graph)."""
    params = [parameter for parameter in params if parameter.requires_grad]
    if not params or strength == 0:
        return
    grads = _grads(params)
    torch._foreach_add_(
        grads, torch._foreach_sign([parameter.detach() for parameter in params]), alpha=strength
    )


class L2SP:
    """The L2-SP penalty: squared distance of fine-tuned weights from their pre-trained values.

    Pulling weights toward the starting point, rather than toward zero as weight decay does,
    keeps what pre-training learned (a remedy for catastrophic forgetting; Li et al., 2018).
    Give it only the *pre-trained* trainable parameters: a new classifier head has no starting
    point worth keeping (see :func:`pretrained_parameters`).

    Args:
        params: the parameters to hold near their current values.
    """

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self.params = [parameter for parameter in params if parameter.requires_grad]
        self.reference = [parameter.detach().clone() for parameter in self.params]

    def __call__(self) -> torch.Tensor:
        """``sum ||w - w0||^2`` over the parameters (differentiable)."""
        if not self.params:
            return torch.zeros(())
        return torch.stack(
            [
                (parameter - start).pow(2).sum()
                for parameter, start in zip(self.params, self.reference, strict=True)
            ]
        ).sum()

    def add_gradient(self, strength: float) -> None:
        """Add the gradient of ``strength * self()``, ``2 * strength * (w - w0)``, to ``.grad`` in place.

        Same result as back-propagating the penalty, at a fraction of the cost: no graph, a few
        fused ``_foreach`` kernels.
        """
        if not self.params or strength == 0:
            return
        difference = torch._foreach_sub([parameter.detach() for parameter in self.params], self.reference)
        torch._foreach_add_(_grads(self.params), difference, alpha=2.0 * strength)


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` of each parameter, created as zeros where a parameter got no gradient."""
    grads = []
    for parameter in params:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        grads.append(parameter.grad)
    return grads


def pretrained_parameters(model: nn.Module, new_parameters: Iterable[str] = ()) -> list[nn.Parameter]:
    """The trainable parameters that came from the checkpoint.

    Args:
        model: a model with a head.
        new_parameters: names of parameters the checkpoint lacked (``missing_keys`` of
            ``from_pretrained(..., output_loading_info=True)``); these are freshly initialized.

    Returns:
        trainable parameters of the base model (not the head) that are not in ``new_parameters``.
    """
    new = set(new_parameters)
    base = getattr(model, "base_model", model)
    base_ids = {id(parameter) for parameter in base.parameters()}
    return [
        parameter
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and id(parameter) in base_ids and name not in new
    ]


# --------------------------------------------------------------------------------------------
# Class weights
# --------------------------------------------------------------------------------------------


def class_weights(label_ids: Sequence[int], n_classes: int, mode: str) -> torch.Tensor | None:
    """Loss weights per class.

    Args:
        label_ids: the training labels as class indices.
        n_classes: how many classes there are.
        mode: ``"none"`` (no weights) or ``"balanced"``: ``n / (n_classes * count_c)``, so each
            class contributes equally to the loss however rare it is.

    Raises:
        ValueError: for an unknown mode.
    """
    if mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"class_weights: unknown mode {mode!r}; allowed: none, balanced")
    counts = torch.bincount(torch.as_tensor(list(label_ids), dtype=torch.long), minlength=n_classes).float()
    return len(label_ids) / (n_classes * counts.clamp(min=1.0))
