"""trainer.task: regression: a numeric label, one output, the label standardized, rmse / mae / r2 in units.

The building blocks (trainers/regression_target.py: the scaler, the losses, the metrics; the ridge
probe; the label checks and the plain split) and, through the CLI, a sweep of a tiny BERT on texts
whose label counts a kind of word, with the study metric defaulting to val_rmse, minimized; then
``ftsweep final`` of a regression study: tested once in the label's units against the default
config, exported, and scored by ``ftsweep predict`` and by the MLflow model as the fit scored it.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import optuna
import pytest
import torch
from conftest import FILLER, NEGATIVE, POSITIVE, mlflow_runs, run_cli, write_csv, write_sweep

from ftsweep_common.errors import ConfigError, DataError
from orchestrator.config import with_trainer_defaults
from trainers.label_checks import numeric_labels
from trainers.linear_probe import fit_ridge_regression
from trainers.metrics import generalization_gap
from trainers.regression_target import LabelScaler, RegressionSums, regression_loss, regression_metric_names
from trainers.splits import Split, random_split_off_validation

# ---- the building blocks --------------------------------------------------------------------


def test_the_scaler_standardizes_with_the_training_labels_and_round_trips_through_json() -> None:
    scaler = LabelScaler.fit([1.0, 3.0, 5.0, 7.0])

    assert scaler.mean == 4.0 and scaler.scale == pytest.approx(math.sqrt(5.0))
    values = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    assert torch.allclose(scaler.inverse(scaler.transform(values)), values)
    assert LabelScaler.from_dict(json.loads(json.dumps(scaler.to_dict()))) == scaler


def test_a_constant_label_scales_by_one_and_a_bad_scaler_is_refused() -> None:
    assert LabelScaler.fit([2.5, 2.5]).scale == 1.0
    for bad in ({"mean": 0.0}, {"mean": 0.0, "scale": 0.0}, {"mean": "x", "scale": 1.0}, None):
        with pytest.raises(ValueError, match="not a label scaler"):
            LabelScaler.from_dict(bad)
    with pytest.raises(ValueError, match="not finite"):
        LabelScaler.fit([1.0, math.nan])


def test_the_losses_are_mse_huber_and_l1_on_the_standardized_scale() -> None:
    predictions, targets = torch.tensor([0.0, 0.5, 3.0]), torch.tensor([0.0, 0.0, 0.0])

    assert regression_loss("mse", predictions, targets).item() == pytest.approx((0.25 + 9.0) / 3)
    assert regression_loss("l1", predictions, targets).item() == pytest.approx(3.5 / 3)
    # Huber with delta 1: quadratic within one standard deviation, linear beyond.
    assert regression_loss("huber", predictions, targets).item() == pytest.approx((0.125 + 2.5) / 3)
    with pytest.raises(ValueError, match="allowed: mse, huber, l1"):
        regression_loss("hinge", predictions, targets)


def test_the_metrics_are_in_the_label_units_whatever_the_batches() -> None:
    labels = [10.0, 20.0, 30.0, 40.0, 50.0]
    predicted = [12.0, 18.0, 33.0, 40.0, 45.0]
    scaler = LabelScaler.fit([0.0, 100.0])  # any scaler: the metrics undo it
    sums = RegressionSums(scaler, "mse")
    for rows in ([0, 1], [2, 3, 4]):  # batch by batch
        sums.add(
            scaler.transform(torch.tensor([predicted[r] for r in rows])),
            scaler.transform(torch.tensor([labels[r] for r in rows])),
        )

    metrics = sums.metrics("val")

    errors = [p - y for p, y in zip(predicted, labels, strict=True)]
    mean = sum(labels) / 5
    assert list(metrics) == ["val_loss", "val_rmse", "val_mae", "val_r2"]
    assert metrics["val_rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 5))
    assert metrics["val_mae"] == pytest.approx(sum(abs(e) for e in errors) / 5)
    assert metrics["val_r2"] == pytest.approx(
        1 - sum(e * e for e in errors) / sum((y - mean) ** 2 for y in labels)
    )
    assert metrics["val_loss"] == pytest.approx(sum((e / scaler.scale) ** 2 for e in errors) / 5)


def test_the_generalization_gap_grows_with_overfitting_for_errors_and_for_r2() -> None:
    metrics = {
        "train_rmse": 1.0,
        "val_rmse": 3.0,
        "train_r2": 0.9,
        "val_r2": 0.5,
        "train_loss": 0,
        "val_loss": 0,
    }

    assert generalization_gap(metrics, "val_rmse") == 2.0
    assert generalization_gap(metrics, "val_r2") == pytest.approx(0.4)


def test_the_ridge_probe_recovers_a_linear_label_in_closed_form() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 5, generator=generator)
    targets = features @ torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0]) + 7.0

    weight, bias = fit_ridge_regression(features, targets, l2=0.0)
    shrunk, _ = fit_ridge_regression(features, targets, l2=10.0)

    assert weight.shape == (1, 5) and bias.shape == (1,)
    assert torch.allclose(weight[0], torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0]), atol=1e-4)
    assert bias.item() == pytest.approx(7.0, abs=1e-4)
    assert shrunk.norm() < weight.norm()


def test_a_label_that_is_not_a_finite_number_is_one_line_naming_its_row() -> None:
    assert numeric_labels(["1", " 2.5", "-3e2"], "trainer.data.train: t.csv", "label") == [1.0, 2.5, -300.0]
    with pytest.raises(DataError) as raised:
        numeric_labels(["1", "many", "2", "inf", "NaN"], "trainer.data.train: t.csv", "label")

    assert str(raised.value) == (
        "trainer.data.train: t.csv has labels that are not finite numbers in column 'label': 'many', 'inf', "
        "'NaN' (data rows 2, 4, 5 (counting from 1)); trainer.task regression needs a number in every row: "
        "fix those labels or remove the rows"
    )


def test_the_validation_split_of_numbers_is_seeded_and_plain() -> None:
    split = Split([f"t{i}" for i in range(10)], ["1.0"] * 9 + ["2.0"], "data.csv")

    train, validation = random_split_off_validation(split, 0.2, seed=3)

    assert (train.texts, validation.texts) == (
        random_split_off_validation(split, 0.2, seed=3)[0].texts,
        random_split_off_validation(split, 0.2, seed=3)[1].texts,
    )
    assert len(validation) == 2 and sorted(train.texts + validation.texts) == sorted(split.texts)
    # Not stratified: a label seen once is a number like any other, not a class to keep in training.
    seeds_holding_it_out = [
        seed for seed in range(30) if "t9" in random_split_off_validation(split, 0.2, seed)[1].texts
    ]
    assert seeds_holding_it_out


def test_load_splits_for_regression_holds_out_a_plain_split_and_keeps_no_classes(tmp_path: Path) -> None:
    from trainers.data import DataSettings, load_splits

    write_csv(tmp_path / "train.csv", make_numeric_rows(30, seed=1))
    settings = DataSettings(train="train.csv", validation_fraction=0.2, max_train_samples=12)

    data = load_splits(settings, tmp_path, task="regression")

    assert (len(data.train), len(data.validation), data.labels, data.test) == (12, 6, [], None)
    assert all(value in {3.0, 13.0, 23.0, 33.0, 43.0} for value in data.train.values())
    again = load_splits(settings, tmp_path, task="regression")
    assert (again.train.texts, again.validation.texts) == (data.train.texts, data.validation.texts)


def test_task_regression_defaults_to_val_rmse_minimized_and_the_regression_space() -> None:
    raw = {"study": {"name": "r"}, "trainer": {"name": "text-classification", "task": "regression"}}

    filled = with_trainer_defaults(raw)

    assert filled["study"] == {"name": "r", "metric": "val_rmse", "direction": "minimize"}
    assert filled["search_space"] == "regression"
    classification = with_trainer_defaults(
        {"study": {"name": "c"}, "trainer": {"name": "text-classification"}}
    )
    assert (
        classification["study"]["metric"] == "val_f1" and classification["search_space"] == "regularization"
    )
    r2 = with_trainer_defaults({"study": {"name": "r", "metric": "val_r2"}, "trainer": raw["trainer"]})
    assert r2["study"]["direction"] == "maximize"


def test_planning_a_regression_sweep_takes_the_regression_space_and_refuses_class_keys(
    tmp_path: Path, tiny_model: Path
) -> None:
    from orchestrator.config import validate_sweep
    from orchestrator.plan import plan_sweep

    write_csv(tmp_path / "data" / "train.csv", make_numeric_rows(20, seed=1))
    write_csv(tmp_path / "data" / "val.csv", make_numeric_rows(10, seed=2))
    raw = regression_sweep(tiny_model)
    del raw["search_space"]

    plan = plan_sweep(validate_sweep(raw, base_dir=tmp_path, source="sweep.yaml"))

    assert (plan.sweep.study.metric, plan.sweep.study.direction) == ("val_rmse", "minimize")
    assert "label_smoothing" not in plan.space.names and "strategy" in plan.space.names
    with pytest.raises(ConfigError) as raised:
        plan_sweep(
            validate_sweep({**raw, "search_space": "robustness"}, base_dir=tmp_path, source="sweep.yaml")
        )
    assert "class_weights: 'balanced' has no meaning for trainer.task regression" in str(raised.value)
    assert "label_smoothing: 0.2 has no meaning for trainer.task regression" in str(raised.value)
    with pytest.raises(ConfigError, match="study.metric: 'val_f1' is not a metric"):
        plan_sweep(
            validate_sweep({**raw, "study": {**raw["study"], "metric": "val_f1"}}, tmp_path, "sweep.yaml")
        )


def test_a_loss_is_refused_for_classification(tmp_path: Path, tiny_model: Path) -> None:
    from orchestrator.config import validate_sweep
    from orchestrator.plan import build_trainer

    raw = regression_sweep(tiny_model)
    raw["trainer"] = {key: value for key, value in raw["trainer"].items() if key != "task"}

    with pytest.raises(ConfigError) as raised:
        build_trainer(validate_sweep(raw, base_dir=tmp_path, source="sweep.yaml"))
    assert "loss 'huber' applies to task regression" in str(raised.value)


def test_the_final_report_scores_numbers_with_intervals_and_a_paired_baseline_difference(
    tmp_path: Path,
) -> None:
    import numpy as np

    from orchestrator.final_report import (
        bootstrap_intervals,
        evaluate_fit,
        paired_difference,
        read_predictions,
        task_of,
    )
    from trainers.final_fit import write_regression_predictions

    true = [3.0, 13.0, 23.0, 33.0, 43.0] * 4
    good = [value + (1.0 if index % 2 else -1.0) for index, value in enumerate(true)]
    flat = [23.0] * len(true)  # the mean: r2 0
    write_regression_predictions(tmp_path / "good.json", {"train": (true, true), "test": (true, good)})
    write_regression_predictions(tmp_path / "flat.json", {"test": (true, flat)})

    labels, tuned = read_predictions(tmp_path / "good.json")
    _, baseline = read_predictions(tmp_path / "flat.json")
    figures = evaluate_fit(labels, tuned)

    assert labels == [] and task_of(tuned) == "regression"
    assert figures["test"] == pytest.approx({"rmse": 1.0, "mae": 1.0, "r2": 1 - 1 / np.var(true)})
    assert figures["generalization_gap"] == pytest.approx({"rmse": 1.0, "mae": 1.0, "r2": 1 / np.var(true)})
    intervals = bootstrap_intervals(tuned["test"], 0)
    assert set(intervals) == {"rmse", "mae", "r2"} and intervals["rmse"] == pytest.approx([1.0, 1.0])
    difference = paired_difference([tuned["test"]], [baseline["test"]], 0)
    assert difference["r2"]["baseline"] == pytest.approx(0.0)
    assert difference["rmse"]["difference"] == pytest.approx(1.0 - float(np.std(true)))
    low, high = difference["rmse"]["interval"]
    assert low <= difference["rmse"]["difference"] <= high < 0


# ---- through the CLI, with a tiny BERT ------------------------------------------------------


def make_numeric_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Texts of 4 filler and 4 polar words; the label is 10 per positive word plus 3 (3 to 43)."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        k = index % 5
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE, k) + rng.sample(NEGATIVE, 4 - k)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": str(10 * k + 3)})
    return rows


def regression_sweep(tiny_model: Path, **trainer: object) -> dict:
    return {
        "study": {"name": "numbers", "sampler": {"name": "tpe", "seed": 0}, "n_trials": 3},
        "trainer": {
            "name": "text-classification",
            "task": "regression",
            "loss": "huber",
            "model": str(tiny_model),
            "data": {"train": "data/train.csv", "validation": "data/val.csv"},
            "max_length": 16,
            "epochs": 2,
            "batch_size": 8,
            **trainer,
        },
        "search_space": "quick",
        "execution": {"workers": 1},
    }


def one_line_error(result) -> str:  # noqa: ANN001 - a CompletedProcess
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.slow
def test_a_regression_sweep_minimizes_val_rmse(tmp_path: Path, tiny_model: Path) -> None:
    write_csv(tmp_path / "data" / "train.csv", make_numeric_rows(40, seed=1))
    write_csv(tmp_path / "data" / "val.csv", make_numeric_rows(20, seed=2))
    write_sweep(tmp_path, regression_sweep(tiny_model))

    result = run_cli(["run", "sweep.yaml"], cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="numbers", storage=f"sqlite:///{tmp_path / 'ftsweep.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.metric_names == ["val_rmse"]
    complete = [trial for trial in study.trials if trial.state.name == "COMPLETE"]
    assert complete and all(math.isfinite(trial.value) and trial.value > 0 for trial in complete)
    # The first trials include the linear probe: a ridge fit, reported once, in the label's units.
    probe = [trial for trial in complete if trial.params.get("strategy") == "linear_probe"]
    assert probe and list(probe[0].intermediate_values) == [1]
    _, children, _ = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "numbers")
    assert children and all(set(regression_metric_names()) <= set(run.data.metrics) for run in children)
    best = run_cli(["best", "numbers", "--format", "json"], cwd=tmp_path)
    assert best.returncode == 0 and '"metric": "val_rmse"' in best.stdout


@pytest.mark.slow
def test_final_tests_a_regression_model_in_the_label_units_and_predict_scores_as_the_fit_did(
    tmp_path: Path, tiny_model: Path
) -> None:
    import mlflow
    import numpy as np
    import pandas as pd

    from orchestrator.report_figures import final_bars

    write_csv(tmp_path / "data" / "train.csv", make_numeric_rows(40, seed=1))
    write_csv(tmp_path / "data" / "val.csv", make_numeric_rows(20, seed=2))
    write_csv(tmp_path / "data" / "test.csv", make_numeric_rows(20, seed=3))
    sweep = regression_sweep(tiny_model)
    sweep["study"]["n_trials"] = 2
    sweep["trainer"]["data"]["test"] = "data/test.csv"
    write_sweep(tmp_path, sweep)
    assert run_cli(["run", "sweep.yaml"], cwd=tmp_path).returncode == 0

    result = run_cli(["final", "numbers", "--baseline", "--register", "numbers-model"], cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    work = tmp_path / "ftsweep-runs" / "numbers" / "final"
    report = json.loads((work / "model" / "final.json").read_text())
    assert report["task"] == "regression" and report["headline"] == ["rmse", "mae", "r2"]
    test = report["exported"]["test"]
    assert set(test) == {"rmse", "mae", "r2"} and report["n_test"] == 20
    # In the label's units: the labels run from 3 to 43 (sd about 14), an error is not standardized.
    fitted = json.loads((work / "fits" / "tuned-seed0" / "predictions.json").read_text())
    true = np.asarray(fitted["splits"]["test"]["true"])
    predicted = np.asarray(fitted["splits"]["test"]["predicted"])
    assert sorted(set(true)) == [3.0, 13.0, 23.0, 33.0, 43.0]
    assert test["rmse"] == pytest.approx(float(np.sqrt(np.mean((predicted - true) ** 2))))
    assert test["mae"] == pytest.approx(float(np.mean(np.abs(predicted - true))))
    r2 = 1 - np.sum((predicted - true) ** 2) / np.sum((true - true.mean()) ** 2)
    assert test["r2"] == pytest.approx(r2)
    for name in ("rmse", "mae", "r2"):
        low, high = report["exported"]["test_intervals"][name]
        assert low <= test[name] <= high
        difference = report["baseline"]["difference"][name]
        assert difference["difference"] == pytest.approx(difference["tuned"] - difference["baseline"])
    assert "rmse" in result.stdout and "against the default config" in result.stdout
    assert final_bars(report)[0] == ["rmse", "mae"]  # the sweep report's figure of the final
    card = (work / "model" / "README.md").read_text()
    assert "text regression model" in card and "| rmse |" in card and "confusion" not in card.lower()
    # The scaler is JSON beside the weights: no pickle in the exported folder.
    info = json.loads((work / "model" / "ftsweep_model.json").read_text())
    assert info["task"] == "regression" and set(info["label_scaler"]) == {"mean", "scale"}
    assert not [path for path in (work / "model").iterdir() if path.suffix in (".pkl", ".pickle")]

    scored = run_cli(
        ["predict", str(work / "model"), "data/test.csv", "--out", "scored.csv", "--batch-size", "7"],
        cwd=tmp_path,
    )

    assert scored.returncode == 0, scored.stderr
    table = pd.read_csv(tmp_path / "scored.csv")
    assert list(table.columns) == ["text", "label", "prediction"]
    np.testing.assert_allclose(table["prediction"].to_numpy(), predicted, rtol=0, atol=1e-5)
    tracking = json.loads((work / "mlflow.json").read_text())
    assert tracking["registered"] == "models:/numbers-model/1"
    _, _, client = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "numbers")
    logged = client.get_run(tracking["run_id"]).data.metrics
    assert logged["test_rmse"] == pytest.approx(test["rmse"]) and "baseline_difference_rmse" in logged
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        pyfunc = mlflow.pyfunc.load_model(tracking["registered"])
    finally:
        os.chdir(cwd)
    texts = pd.read_csv(tmp_path / "data" / "test.csv")["text"].tolist()
    served = pyfunc.predict(texts)["prediction"].to_numpy()
    np.testing.assert_allclose(served, predicted, rtol=0, atol=1e-5)


def test_a_bad_label_row_stops_the_sweep_with_one_line(tmp_path: Path, tiny_model: Path) -> None:
    rows = make_numeric_rows(20, seed=1)
    rows[6]["label"] = "seven"
    rows[9]["label"] = "nan"  # a number's missing value: named as such, never "a class of its own"
    write_csv(tmp_path / "data" / "train.csv", rows)
    write_csv(tmp_path / "data" / "val.csv", make_numeric_rows(10, seed=2))
    write_sweep(tmp_path, regression_sweep(tiny_model))

    line = one_line_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path))

    assert "trainer.data.train: " in line and "train.csv has labels that are not finite numbers" in line
    assert "'seven', 'nan' (data rows 7, 10 (counting from 1))" in line
    assert not (tmp_path / "ftsweep.db").exists() or "numbers" not in optuna.get_all_study_names(
        f"sqlite:///{tmp_path / 'ftsweep.db'}"
    )


def test_class_weights_are_refused_for_regression(tmp_path: Path, tiny_model: Path) -> None:
    write_csv(tmp_path / "data" / "train.csv", make_numeric_rows(20, seed=1))
    write_csv(tmp_path / "data" / "val.csv", make_numeric_rows(10, seed=2))
    write_sweep(tmp_path, regression_sweep(tiny_model, params={"class_weights": "balanced"}))

    line = one_line_error(run_cli(["run", "sweep.yaml"], cwd=tmp_path))

    assert "class_weights" in line and "has no meaning for trainer.task regression" in line
    assert "allowed: none" in line
