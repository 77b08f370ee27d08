"""The text trainer's head and probe on a tiny BERT: head learning rate, pooling, linear probe, LP-FT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_text_classification import make_trainer

from trainers.base import TrialContext
from trainers.heads import (
    classifier_layer,
    head_parameter_names,
    install_mean_pooling,
    masked_mean,
    resolve_pooling,
)
from trainers.regularization import parameter_groups
from trainers.text_classification import _Trial


def run(
    trainer, params: dict, cache_dir: Path | None = None
) -> tuple[_Trial, dict, list[tuple[int, dict]], list[str]]:
    """Run one trial; the trial (its model), its result, its reports and its log lines."""
    reports: list[tuple[int, dict]] = []
    lines: list[str] = []
    ctx = TrialContext(
        trial_number=0,
        params={**trainer.fixed_params(), **params},
        reporter=lambda epoch, metrics: reports.append((epoch, metrics)) or False,
        cache_dir=cache_dir,
        metric="val_f1",
        logger=lines.append,
    )
    trial = _Trial(trainer, ctx, trainer.Params(**ctx.params))
    return trial, trial.run(), reports, lines


def pretrained(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    return {name: p.detach().clone() for name, p in AutoModel.from_pretrained(model_dir).named_parameters()}


def encoder_weights(trial: _Trial) -> dict[str, torch.Tensor]:
    base = trial.model.base_model
    return {name: p.detach() for name, p in base.named_parameters() if not name.startswith("pooler.")}


def test_the_head_learning_rate_reaches_the_heads_group_only(
    tiny_model: Path, toy_data, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    groups = parameter_groups(model, 0.01, 1e-5, head_learning_rate=1e-3)
    head = head_parameter_names(model)
    names = {id(p): name for name, p in model.named_parameters()}
    assert head == {
        name for name, _ in model.named_parameters() if name.startswith(("classifier.", "bert.pooler."))
    }
    for group in groups:
        members = {names[id(p)] for p in group["params"]}
        if group["name"].startswith("head/"):
            assert group["lr"] == 1e-3 and members <= head
        else:
            assert group["lr"] == 1e-5 and not members & head
    assert set().union(*({names[id(p)] for p in g["params"]} for g in groups)) == set(names.values())

    # In a trial: an encoder at a learning rate that cannot move it, a head that learns.
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=1)
    trial, _, _, _ = run(trainer, {"learning_rate": 1e-12, "head_learning_rate": 5e-2, "pooling": "cls"})
    before = pretrained(tiny_model)
    assert all(
        torch.allclose(before[name], value, atol=1e-7) for name, value in encoder_weights(trial).items()
    )
    fresh = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=2
    ).bert.pooler.dense.weight
    assert not torch.allclose(trial.model.bert.pooler.dense.weight.cpu(), fresh)
    lrs = {
        group["name"]: group["initial_lr"] for group in trial.optimizer.param_groups
    }  # before the schedule
    assert lrs["head/decay"] == 5e-2 and all(
        lr == 1e-12 for name, lr in lrs.items() if not name.startswith("head/")
    )


def test_the_default_head_learning_rate_lets_a_head_only_trial_learn() -> None:
    from trainers.text_classification import DEFAULT_HEAD_LEARNING_RATE, TextClassificationParams

    assert TextClassificationParams(learning_rate=2e-5).head_lr() == DEFAULT_HEAD_LEARNING_RATE
    assert TextClassificationParams(learning_rate=2e-5, strategy="lp_ft").head_lr() == 2e-5
    assert TextClassificationParams(head_learning_rate=0.3).head_lr() == 0.3


def test_mean_pooling_is_what_the_head_sees(tiny_model: Path) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).eval()
    install_mean_pooling(model)
    seen: list[torch.Tensor] = []
    classifier_layer(model, 3).register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    inputs = tokenizer(["good great fine", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        model(**inputs)
        states = AutoModel.from_pretrained(tiny_model).eval()(**inputs).last_hidden_state
    expected = masked_mean(states, inputs["attention_mask"])
    assert torch.allclose(seen[0], expected, atol=1e-5)
    # The padded positions of the shorter text do not count.
    short = states[1, : int(inputs["attention_mask"][1].sum())].mean(dim=0)
    assert torch.allclose(seen[0][1], short, atol=1e-5)
    assert model.config.ftsweep_pooling == "mean"


def test_auto_pooling_is_mean_for_a_sentence_transformers_folder(tiny_model: Path, tmp_path: Path) -> None:
    assert resolve_pooling("auto", str(tiny_model)) == "cls"
    packaged = shutil.copytree(tiny_model, tmp_path / "st-model")
    (packaged / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (packaged / "1_Pooling").mkdir()
    (packaged / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert resolve_pooling("auto", str(packaged)) == "mean"
    (packaged / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert resolve_pooling("auto", str(packaged)) == "cls"
    assert resolve_pooling("mean", str(tiny_model)) == "mean"


def test_linear_probe_changes_no_encoder_weight_and_fills_the_feature_cache_once(
    tiny_model: Path, toy_data, tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=3)
    cache = tmp_path / "cache"
    trial, result, reports, lines = run(trainer, {"strategy": "linear_probe", "pooling": "mean"}, cache)
    before = pretrained(tiny_model)
    for name, value in encoder_weights(trial).items():
        assert torch.equal(before[name], value.cpu()), name
    assert [epoch for epoch, _ in reports] == [1]  # fitted once, one report
    assert result["epochs_run"] == 1 and result["val_f1"] == reports[0][1]["val_f1"]
    assert trainer.max_epochs({"strategy": "linear_probe", "epochs": 3}) == 1
    filled = [line for line in lines if line.startswith("feature cache:") and "states after block 2" in line]
    assert any("train" in line and "computed" in line for line in filled), lines
    # A second probe (another strength) reads the states the first one stored.
    _, second, _, lines = run(
        trainer, {"strategy": "linear_probe", "pooling": "mean", "probe_l2": 0.1}, cache
    )
    filled = [line for line in lines if line.startswith("feature cache:") and "states after block 2" in line]
    assert filled and all("computed" not in line for line in filled), filled


def test_lp_ft_begins_fine_tuning_at_the_probes_score(tiny_model: Path, toy_data, tmp_path: Path) -> None:
    """With learning rates too small to move anything, LP-FT's first epoch scores exactly the probe; plain
    fine-tuning from the random head scores chance."""
    trainer = make_trainer(tiny_model, toy_data, tmp_path, epochs=1)
    _, probe, _, _ = run(trainer, {"strategy": "linear_probe", "pooling": "mean"})
    assert probe["val_f1"] > 0.7  # the toy task is linearly separable in the tiny model's mean features
    still = {"learning_rate": 1e-12, "head_learning_rate": 1e-12, "pooling": "mean"}
    _, lp_ft, reports, lines = run(trainer, {**still, "strategy": "lp_ft"})
    assert reports[0][1]["val_f1"] == pytest.approx(probe["val_f1"])
    assert any(line.startswith("linear probe") for line in lines)
    _, finetune, _, _ = run(trainer, {**still, "strategy": "finetune"})
    assert finetune["val_f1"] < probe["val_f1"] - 0.1
