"""Each regularization knob, on a real tiny model: it reaches the model and has its effect."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from trainers.regularization import (
    L2SP,
    add_l1_gradient,
    class_weights,
    find_blocks,
    freeze,
    l1_penalty,
    parameter_groups,
    pretrained_parameters,
    set_config_dropout,
    set_dropout,
    train_mode,
)

LAYERS = 2
SIZES = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 60}
CLS, SEP, PAD = 2, 3, 0
SPECIAL = frozenset({CLS, SEP, PAD})


def bert(seed: int = 0, **config: float) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(
        BertConfig(num_hidden_layers=LAYERS, num_labels=2, **SIZES, **config)
    )


def distilbert() -> DistilBertForSequenceClassification:
    torch.manual_seed(0)
    config = DistilBertConfig(n_layers=3, dim=32, n_heads=2, hidden_dim=64, vocab_size=60, num_labels=2)
    return DistilBertForSequenceClassification(config)


def roberta() -> RobertaForSequenceClassification:
    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(num_hidden_layers=LAYERS, num_labels=2, **SIZES))


def batch(seed: int = 0, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, SIZES["vocab_size"], (size, 10), generator=generator)
    ids[:, 0], ids[:, -1] = CLS, SEP
    return ids, torch.arange(size) % 2


def train_steps(model: nn.Module, steps: int = 4, lr: float = 1e-2, penalty=None, frozen=()) -> None:
    """A few real AdamW steps on random batches (penalty adds its gradient before each step)."""
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.0, lr), lr=lr)
    for step in range(steps):
        train_mode(model, frozen)
        ids, labels = batch(step)
        model(input_ids=ids, labels=labels).loss.backward()
        if penalty is not None:
            penalty()
        optimizer.step()
        optimizer.zero_grad()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


# ---- finding the blocks of any model -----------------------------------------------------


@pytest.mark.parametrize(
    ("build", "embeddings", "blocks"),
    [
        (bert, "bert.embeddings", "bert.encoder.layer"),
        (roberta, "roberta.embeddings", "roberta.encoder.layer"),
        (distilbert, "distilbert.embeddings", "distilbert.transformer.layer"),
    ],
)
def test_find_blocks_of_encoders(build, embeddings: str, blocks: str) -> None:
    model = build()
    found_embeddings, found_blocks = find_blocks(model)
    assert found_embeddings is model.get_submodule(embeddings)
    assert found_blocks == list(model.get_submodule(blocks))
    assert len(found_blocks) == model.config.num_hidden_layers


def vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    return ViTForImageClassification(config)


def resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1], layer_type="basic", num_labels=2
    )
    return ResNetForImageClassification(config)


def swin() -> nn.Module:
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(
        image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2, num_labels=2
    )
    return SwinForImageClassification(config)


def convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2)
    return ConvNextForImageClassification(config)


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(n_embd=16, n_layer=LAYERS, n_head=2, vocab_size=60, n_positions=16, num_labels=2)
    return GPT2ForSequenceClassification(config)


@pytest.mark.parametrize(
    ("build", "stem", "blocks", "n_blocks"),
    [
        # transformers 5 keeps ViT's layers on the model itself, 4.x under encoder.layer
        (vit, "vit.embeddings", "vit.layers|vit.encoder.layer", LAYERS),
        (resnet, "resnet.embedder", "resnet.encoder.stages", 3),
        (swin, "swin.embeddings", "swin.encoder.layers", 2),
        (convnext, "convnext.embeddings", "convnext.encoder.stages", 2),
    ],
)
def test_find_blocks_of_vision_models(build, stem: str, blocks: str, n_blocks: int) -> None:
    model = build()
    found_stem, found_blocks = find_blocks(model)
    assert found_stem is model.get_submodule(stem)
    names = dict(model.named_modules())
    blocks = next(path for path in blocks.split("|") if path in names)
    assert found_blocks == list(model.get_submodule(blocks))
    assert len(found_blocks) == n_blocks


def test_find_blocks_of_a_decoder() -> None:
    model = gpt2()
    stem, blocks = find_blocks(model)
    assert blocks == list(model.transformer.h)
    assert list(stem) == [model.transformer.wte, model.transformer.wpe]


@pytest.mark.parametrize("build", [vit, resnet])
def test_freezing_and_layerwise_rates_work_on_image_models(build) -> None:
    model = build()
    stem, blocks = find_blocks(model)
    frozen = freeze(model, 1)
    assert frozen == [stem, blocks[0]]
    assert not any(p.requires_grad for module in frozen for p in module.parameters())
    assert all(p.requires_grad for p in blocks[1].parameters())
    groups = parameter_groups(model, 0.01, 1e-3, layerwise_lr_decay=0.5, head_learning_rate=1e-2)
    rates = {group["name"].split("/")[0]: group["lr"] for group in groups}
    assert rates["head"] == 1e-2
    # The lowest trainable block sits len(blocks) - 1 below the head.
    assert rates[f"depth{len(blocks) - 1}"] == pytest.approx(1e-3 * 0.5 ** (len(blocks) - 1))


def test_find_blocks_fallback_and_error() -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.Embedding(10, 4)
            self.stack = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
            self.config = type("Config", (), {"num_hidden_layers": 3})()

    model = Encoder()
    assert find_blocks(model) == (model.embeddings, list(model.stack))
    with pytest.raises(
        ValueError, match=r"cannot find the blocks \(layers or stages\) of Linear: looked for"
    ):
        find_blocks(nn.Linear(2, 2))


# ---- freezing -----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, LAYERS])
def test_freeze_keeps_frozen_weights_and_trains_the_rest(depth: int) -> None:
    model = bert()
    frozen = freeze(model, depth)
    before = snapshot(model)
    train_steps(model, frozen=frozen)
    frozen_prefixes = (
        ["bert.embeddings.", *(f"bert.encoder.layer.{i}." for i in range(depth))] if depth else []
    )
    for name, parameter in model.named_parameters():
        is_frozen = any(name.startswith(prefix) for prefix in frozen_prefixes)
        assert parameter.requires_grad is not is_frozen, name
        assert torch.equal(parameter, before[name]) is is_frozen, name


def test_frozen_modules_stay_in_eval_mode() -> None:
    model = bert()
    frozen = freeze(model, 1)
    train_mode(model, frozen)
    assert not model.bert.embeddings.training and not model.bert.encoder.layer[0].training
    assert model.bert.encoder.layer[1].training and model.classifier.training


def test_freeze_depth_out_of_range() -> None:
    with pytest.raises(
        ValueError,
        match=r"freeze_depth 3 is out of range for a BertForSequenceClassification with 2 blocks; "
        r"allowed: 0 to 2",
    ):
        freeze(bert(), LAYERS + 1)


# ---- optimizer groups ---------------------------------------------------------------------


def group_of(groups: list[dict], parameter: nn.Parameter) -> dict:
    return next(group for group in groups if any(p is parameter for p in group["params"]))


def test_weight_decay_skips_biases_and_layer_norms() -> None:
    model = bert()
    groups = parameter_groups(model, weight_decay=0.1, learning_rate=1e-3)
    layer = model.bert.encoder.layer[0]
    assert group_of(groups, layer.attention.self.query.weight)["weight_decay"] == 0.1
    assert group_of(groups, model.classifier.weight)["weight_decay"] == 0.1
    assert group_of(groups, layer.attention.self.query.bias)["weight_decay"] == 0.0
    assert group_of(groups, layer.output.LayerNorm.weight)["weight_decay"] == 0.0
    assert group_of(groups, model.bert.embeddings.LayerNorm.bias)["weight_decay"] == 0.0
    total = sum(len(group["params"]) for group in groups)
    assert total == len(list(model.parameters()))


def test_parameter_groups_leave_out_frozen_parameters() -> None:
    model = bert()
    freeze(model, LAYERS)
    grouped = [p for group in parameter_groups(model, 0.0, 1e-3) for p in group["params"]]
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(p is model.bert.encoder.layer[1].output.dense.weight for p in grouped)


def test_layerwise_learning_rate_decay() -> None:
    model = bert()
    groups = parameter_groups(model, 0.0, learning_rate=1.0, layerwise_lr_decay=0.5)
    lr = {name: group_of(groups, parameter)["lr"] for name, parameter in model.named_parameters()}
    assert lr["classifier.weight"] == 1.0
    assert lr["bert.pooler.dense.weight"] == 1.0
    assert lr["bert.encoder.layer.1.output.dense.weight"] == 0.5  # top block: decay ** (L - 1)
    assert lr["bert.encoder.layer.0.attention.self.query.bias"] == 0.25  # bottom block: decay ** L
    assert lr["bert.embeddings.word_embeddings.weight"] == 0.125  # embeddings: decay ** (L + 1)


def test_layerwise_decay_for_distilbert() -> None:
    model = distilbert()
    groups = parameter_groups(model, 0.0, learning_rate=1.0, layerwise_lr_decay=0.5)
    assert group_of(groups, model.pre_classifier.weight)["lr"] == 1.0
    assert group_of(groups, model.distilbert.transformer.layer[2].ffn.lin1.weight)["lr"] == 0.5
    assert group_of(groups, model.distilbert.embeddings.word_embeddings.weight)["lr"] == 0.5**4


# ---- dropout ------------------------------------------------------------------------------


def test_set_dropout_reaches_each_kind_of_module() -> None:
    model = bert()
    set_dropout(model, hidden=0.31, attention=0.22, classifier=0.43)
    layer = model.bert.encoder.layer[1]
    assert model.bert.embeddings.dropout.p == 0.31
    assert layer.attention.output.dropout.p == 0.31
    assert layer.output.dropout.p == 0.31
    assert layer.attention.self.dropout.p == 0.22
    assert model.dropout.p == 0.43
    assert model.config.attention_probs_dropout_prob == 0.22


def test_set_dropout_none_leaves_the_model_value() -> None:
    model = bert(hidden_dropout_prob=0.05, attention_probs_dropout_prob=0.07)
    set_dropout(model, hidden=None, attention=0.2, classifier=None)
    assert model.bert.encoder.layer[0].output.dropout.p == 0.05
    assert model.bert.encoder.layer[0].attention.self.dropout.p == 0.2
    assert model.dropout.p == 0.05  # BERT's classifier dropout follows hidden dropout by default


def test_set_dropout_distilbert() -> None:
    model = distilbert()
    set_dropout(model, hidden=0.3, attention=0.2, classifier=0.4)
    block = model.distilbert.transformer.layer[0]
    assert (block.attention.dropout.p, block.ffn.dropout.p, model.dropout.p) == (0.2, 0.3, 0.4)


def test_config_dropout_builds_the_modules() -> None:
    config = BertConfig(num_hidden_layers=LAYERS, **SIZES)
    set_config_dropout(config, hidden=0.3, attention=0.2, classifier=0.4)
    model = BertForSequenceClassification(config)
    assert model.bert.encoder.layer[0].attention.self.dropout.p == 0.2
    assert model.bert.encoder.layer[0].output.dropout.p == 0.3
    assert model.dropout.p == 0.4


def test_dropout_changes_training_outputs() -> None:
    ids, _ = batch()
    quiet, noisy = bert(), bert()
    set_dropout(quiet, 0.0, 0.0, 0.0)
    set_dropout(noisy, 0.5, 0.5, 0.5)
    quiet.train()
    noisy.train()
    assert torch.equal(quiet(input_ids=ids).logits, quiet(input_ids=ids).logits)
    assert not torch.equal(noisy(input_ids=ids).logits, noisy(input_ids=ids).logits)


# ---- penalties ----------------------------------------------------------------------------


def test_l1_penalty_is_the_sum_of_absolute_values() -> None:
    params = [torch.tensor([1.0, -2.0]), torch.tensor([[-0.5, 0.25]])]
    assert l1_penalty(params).item() == pytest.approx(3.75)


def test_l1_gradient_matches_autograd() -> None:
    weights = [nn.Parameter(torch.tensor([1.0, -2.0, 0.5])), nn.Parameter(torch.tensor([[-0.5, 3.0]]))]
    (0.3 * l1_penalty(weights)).backward()
    expected = [w.grad.clone() for w in weights]
    for w in weights:
        w.grad = None
    add_l1_gradient(weights, 0.3)
    assert all(torch.allclose(w.grad, e) for w, e in zip(weights, expected, strict=True))


def test_l2sp_holds_pretrained_weights_not_the_head() -> None:
    model = bert()
    penalty = L2SP(pretrained_parameters(model, new_parameters=["classifier.weight", "classifier.bias"]))
    assert not any(p is model.classifier.weight for p in penalty.params)
    assert any(p is model.bert.pooler.dense.weight for p in penalty.params)
    assert penalty().item() == 0.0
    with torch.no_grad():
        model.bert.pooler.dense.bias.add_(2.0)
    assert penalty().item() == pytest.approx(4.0 * 32)


def test_l2sp_gradient_matches_autograd() -> None:
    model = bert()
    penalty = L2SP(pretrained_parameters(model))
    with torch.no_grad():
        for parameter in penalty.params:
            parameter.add_(torch.randn_like(parameter) * 0.01)
    (0.7 * penalty()).backward()
    expected = [p.grad.clone() for p in penalty.params]
    model.zero_grad(set_to_none=True)
    penalty.add_gradient(0.7)
    assert all(torch.allclose(p.grad, e, atol=1e-7) for p, e in zip(penalty.params, expected, strict=True))


def test_l2sp_keeps_weights_closer_to_the_start() -> None:
    def distance_after(strength: float) -> float:
        model = bert()
        penalty = L2SP(pretrained_parameters(model))
        train_steps(model, steps=5, lr=1e-2, penalty=lambda: penalty.add_gradient(strength))
        return penalty().item()

    assert distance_after(100.0) < 0.5 * distance_after(0.0)


# ---- class weights and the loss -----------------------------------------------------------


def test_balanced_class_weights() -> None:
    assert class_weights([0, 0, 1], 2, "none") is None
    weights = class_weights([0, 0, 0, 1], 2, "balanced")
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])
    with pytest.raises(ValueError, match="unknown mode"):
        class_weights([0, 1], 2, "inverse")


def test_class_weights_change_the_loss_on_an_imbalanced_batch() -> None:
    logits = torch.tensor([[2.0, 0.0], [1.5, 0.2], [0.3, 0.1], [2.0, 0.5]])
    labels = torch.tensor([0, 0, 0, 1])
    plain = nn.functional.cross_entropy(logits, labels)
    weighted = nn.functional.cross_entropy(
        logits, labels, weight=class_weights(labels.tolist(), 2, "balanced")
    )
    # The misclassified minority example weighs more, so the loss rises.
    assert weighted.item() > plain.item() + 0.1
