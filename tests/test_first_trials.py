"""A new study's first trials: the defaults and a linear probe, queued once, in every shipped space."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import fault_sweep, run_cli, write_sweep

from orchestrator.config import load_sweep
from orchestrator.first_trials import PRESET_ATTR, PRESET_DEFAULTS_ATTR, enqueue_first_trials
from orchestrator.plan import plan_sweep
from search_spaces import available_spaces
from trainers.text_classification import TextClassificationParams


def ask(study: optuna.Study, plan) -> tuple[optuna.Trial, dict]:
    """What the session's ask does: the trial and its parameters."""
    trial = study.ask()
    keep = trial.user_attrs.get(PRESET_DEFAULTS_ATTR) or ()
    return trial, plan.trial_params(plan.space.suggest(trial, plan.fixed_params, keep_default=keep))


#: The image trainer's spaces plan with it (tests/test_image_sweep.py); every other one with text.
TEXT_SPACES = [space for space in available_spaces() if not space.startswith("image-")]


@pytest.mark.parametrize("space", TEXT_SPACES)
def test_every_shipped_space_plans_and_starts_with_the_default_and_the_probe(
    space: str, tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    sweep = {
        "study": {"name": f"first-{space}", "sampler": {"name": "tpe", "seed": 0}},
        "trainer": {
            "name": "text-classification",
            "model": str(tiny_model),
            "data": {"train": str(toy_data["train"]), "validation": str(toy_data["validation"])},
            "max_length": 16,
        },
        "search_space": space,
    }
    plan = plan_sweep(load_sweep(write_sweep(tmp_path, sweep)))
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'ftsweep.db'}",
        study_name=sweep["study"]["name"],
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    assert enqueue_first_trials(study, plan) == ["default", "linear probe", "LP-FT"]

    default_trial, default = ask(study, plan)
    assert default_trial.user_attrs[PRESET_ATTR] == "default"
    # Every parameter, searched or not, is what a user gets without a sweep.
    assert TextClassificationParams(**default) == TextClassificationParams(**plan.fixed_params)
    probe_trial, probe = ask(study, plan)
    assert probe_trial.user_attrs[PRESET_ATTR] == "linear probe"
    assert TextClassificationParams(**probe) == TextClassificationParams(
        **plan.fixed_params, strategy="linear_probe"
    )
    lp_ft_trial, lp_ft = ask(study, plan)
    assert lp_ft_trial.user_attrs[PRESET_ATTR] == "LP-FT"
    expected = TextClassificationParams(**plan.fixed_params, strategy="lp_ft")
    assert TextClassificationParams(**lp_ft) == expected
    sampled_trial, _ = ask(study, plan)
    assert PRESET_ATTR not in sampled_trial.user_attrs


def test_a_preset_whose_values_the_space_cannot_take_is_skipped(
    tiny_model: Path, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    sweep = {
        "study": {"name": "fixed-strategy"},
        "trainer": {
            "name": "text-classification",
            "model": str(tiny_model),
            "data": {"train": str(toy_data["train"]), "validation": str(toy_data["validation"])},
            "params": {"strategy": "finetune"},
        },
        "search_space": "quick",
    }
    plan = plan_sweep(load_sweep(write_sweep(tmp_path, sweep)))
    study = optuna.create_study(direction="maximize")
    assert enqueue_first_trials(study, plan) == ["default"]


@pytest.mark.slow
def test_the_first_trials_run_once_across_a_resume(tmp_path: Path) -> None:
    """The presets are queued when the study is created: a resume queues nothing, so none runs twice."""
    sweep = fault_sweep("presets", n_trials=1, workers=1, epochs=1)
    sweep["trainer"]["name"] = "fault_trainer:PresetFaultTrainer"
    sweep["tracking"] = {"enabled": False}
    write_sweep(tmp_path, sweep)
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0
    result = run_cli(["resume", "presets", "--n-trials", "4"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="presets", storage=f"sqlite:///{tmp_path / 'ftsweep.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert [t.user_attrs.get(PRESET_ATTR) for t in trials] == ["default", "far", None, None]
    assert [t.params["x"] for t in trials[:2]] == [0.0, 2.5]
    assert all(t.params["x"] not in (0.0, 2.5) for t in trials[2:])
