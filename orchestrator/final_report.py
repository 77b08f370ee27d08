"""What ``ftsweep final`` reports: test metrics with bootstrap intervals, seeds, the baseline, a model card.

Every figure is computed here, in the driver, from the class probabilities each fit wrote
(:func:`trainers.final_fit.write_predictions`), so a user's own trainer gets the same report by
writing the same file. Intervals are percentile bootstrap intervals over the test rows (seeded,
so the report is the same every time it is computed); the baseline difference is a paired
bootstrap: each resample of test rows scores both models.

A regression fit (``trainer.task: regression``) writes its predictions as numbers in the label's
units (:func:`trainers.final_fit.write_regression_predictions`); its headline metrics are rmse,
mae and r2, with the same intervals, seeds and baseline difference. The report names its task
(``task``) and its headline metrics (``headline``); the text below reads both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: Bootstrap resamples of the test rows; seeded, so a report never changes between runs.
N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0
#: The headline metrics, each with an interval.
HEADLINE = ("loss", "accuracy", "macro_f1")
#: The headline metrics of a regression task, in the label's own units (r2 has none).
REGRESSION_HEADLINE = ("rmse", "mae", "r2")


@dataclass
class Predictions:
    """One split's predictions by one fit: true class ids and predicted probabilities."""

    true: np.ndarray
    probabilities: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


@dataclass
class RegressionPredictions:
    """One split's predictions by one regression fit: true and predicted numbers, in the label's units."""

    true: np.ndarray
    predicted: np.ndarray


#: One split's predictions, of either task.
AnyPredictions = Predictions | RegressionPredictions


def read_predictions(path: Path) -> tuple[list[str], dict[str, Any]]:
    """The labels and the per-split predictions a fit wrote (a regression fit's: no labels, and
    :class:`RegressionPredictions`)."""
    import numpy as np

    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if document.get("task") == "regression":
        return [], {
            name: RegressionPredictions(
                np.asarray(split["true"], dtype=np.float64), np.asarray(split["predicted"], dtype=np.float64)
            )
            for name, split in document["splits"].items()
        }
    splits = {
        name: Predictions(
            np.asarray(split["true"], dtype=np.int64),
            np.asarray(split["probabilities"], dtype=np.float64).reshape(len(split["true"]), -1),
        )
        for name, split in document["splits"].items()
    }
    return list(document["labels"]), splits


# -- metrics -----------------------------------------------------------------------------------


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    import numpy as np

    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """Macro F1 over the classes present among the true or the predicted labels (as the trainer's)."""
    true_positive = matrix.diagonal().astype(float)
    denominator = matrix.sum(axis=1) + matrix.sum(axis=0)
    present = denominator > 0
    return float((2 * true_positive[present] / denominator[present]).mean()) if present.any() else 0.0


def task_of(splits: Mapping[str, Any]) -> str:
    """``regression`` or ``classification``: what a fit's predictions are of."""
    regression = any(isinstance(split, RegressionPredictions) for split in splits.values())
    return "regression" if regression else "classification"


def headline_names(task: str) -> tuple[str, ...]:
    """The headline metrics of ``task``."""
    return REGRESSION_HEADLINE if task == "regression" else HEADLINE


def regression_headline(predictions: RegressionPredictions) -> dict[str, float]:
    """Rmse, mae and r2 (``1 - SSE / SST`` around the rows' own mean; 0.0 when every label is the same),
    as the trainer's :func:`trainers.regression_target.error_metrics` computes them."""
    from trainers.regression_target import error_metrics

    true, error = predictions.true, predictions.predicted - predictions.true
    metrics = error_metrics(
        "m",
        float(len(true)),
        0.0,
        float((error * error).sum()),
        float(abs(error).sum()),
        float(true.sum()),
        float((true * true).sum()),
    )
    return {name: metrics[f"m_{name}"] for name in REGRESSION_HEADLINE}


def headline(predictions: AnyPredictions, n_classes: int) -> dict[str, float]:
    """Loss (mean negative log-probability of the true class), accuracy and macro F1; rmse, mae and r2
    for a regression fit."""
    import numpy as np

    if isinstance(predictions, RegressionPredictions):
        return regression_headline(predictions)

    rows = np.arange(len(predictions.true))
    chosen = np.clip(predictions.probabilities[rows, predictions.true], 1e-12, 1.0)
    matrix = confusion_matrix(predictions.true, predictions.predicted, n_classes)
    return {
        "loss": float(-np.log(chosen).mean()) if len(rows) else 0.0,
        "accuracy": float((predictions.predicted == predictions.true).mean()) if len(rows) else 0.0,
        "macro_f1": macro_f1(matrix),
    }


def per_class(matrix: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class."""
    result = {}
    for index, label in enumerate(labels):
        true_positive = float(matrix[index, index])
        predicted = float(matrix[:, index].sum())
        support = float(matrix[index, :].sum())
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        result[str(label)] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support)}
    return result


def _resamples(n_rows: int) -> np.ndarray:
    import numpy as np

    generator = np.random.default_rng(BOOTSTRAP_SEED)
    return generator.integers(0, n_rows, size=(N_BOOTSTRAP, n_rows))


def _subset(predictions: AnyPredictions, rows: np.ndarray) -> AnyPredictions:
    if isinstance(predictions, RegressionPredictions):
        return RegressionPredictions(predictions.true[rows], predictions.predicted[rows])
    return Predictions(predictions.true[rows], predictions.probabilities[rows])


def _names(predictions: AnyPredictions) -> tuple[str, ...]:
    return REGRESSION_HEADLINE if isinstance(predictions, RegressionPredictions) else HEADLINE


def _interval(values: Sequence[float]) -> list[float]:
    import numpy as np

    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def bootstrap_intervals(predictions: AnyPredictions, n_classes: int) -> dict[str, list[float]]:
    """A 95% percentile bootstrap interval of each headline metric."""
    samples: dict[str, list[float]] = {name: [] for name in _names(predictions)}
    for rows in _resamples(len(predictions.true)):
        for name, value in headline(_subset(predictions, rows), n_classes).items():
            samples[name].append(value)
    return {name: _interval(values) for name, values in samples.items()}


def paired_difference(
    tuned: Sequence[AnyPredictions], baseline: Sequence[AnyPredictions], n_classes: int
) -> dict[str, dict[str, Any]]:
    """Tuned minus baseline on the test rows (each side averaged over its seeds), with a paired interval."""
    names = _names(tuned[0])

    def mean_headline(fits: Sequence[AnyPredictions], rows: np.ndarray | None) -> dict[str, float]:
        scores = [headline(fit if rows is None else _subset(fit, rows), n_classes) for fit in fits]
        return {name: sum(score[name] for score in scores) / len(scores) for name in names}

    observed_tuned, observed_base = mean_headline(tuned, None), mean_headline(baseline, None)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rows in _resamples(len(tuned[0].true)):
        one, other = mean_headline(tuned, rows), mean_headline(baseline, rows)
        for name in names:
            samples[name].append(one[name] - other[name])
    return {
        name: {
            "tuned": observed_tuned[name],
            "baseline": observed_base[name],
            "difference": observed_tuned[name] - observed_base[name],
            "interval": _interval(samples[name]),
        }
        for name in names
    }


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": len(values)}


def seed_summary(per_seed: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean ± sd over seeds of every metric the seeds share."""
    names = [name for name in per_seed[0] if all(name in seed for seed in per_seed)]
    return {name: mean_sd([float(seed[name]) for seed in per_seed]) for name in names}


def evaluate_fit(labels: list[str], splits: Mapping[str, AnyPredictions]) -> dict[str, Any]:
    """One fit's test figures (when it has a test split) and its generalization gap."""
    if task_of(splits) == "regression":
        return _evaluate_regression(splits)
    n_classes = len(labels)
    result: dict[str, Any] = {}
    train = headline(splits["train"], n_classes) if "train" in splits else None
    if train is not None:
        result["train"] = train
    if "validation" in splits:
        result["validation"] = headline(splits["validation"], n_classes)
    test = splits.get("test")
    if test is not None:
        matrix = confusion_matrix(test.true, test.predicted, n_classes)
        result["test"] = headline(test, n_classes)
        result["test_per_class"] = per_class(matrix, labels)
        result["test_confusion_matrix"] = matrix.tolist()
        if train is not None:
            result["generalization_gap"] = {
                "accuracy": train["accuracy"] - result["test"]["accuracy"],
                "macro_f1": train["macro_f1"] - result["test"]["macro_f1"],
                "loss": result["test"]["loss"] - train["loss"],
            }
    return result


def _evaluate_regression(splits: Mapping[str, Any]) -> dict[str, Any]:
    """A regression fit's rmse, mae and r2 on each split, and the gap (test worse than train: positive)."""
    result: dict[str, Any] = {
        name: regression_headline(splits[key])
        for name, key in (("train", "train"), ("validation", "validation"), ("test", "test"))
        if key in splits
    }
    if "train" in result and "test" in result:
        train, test = result["train"], result["test"]
        result["generalization_gap"] = {
            "rmse": test["rmse"] - train["rmse"],
            "mae": test["mae"] - train["mae"],
            "r2": train["r2"] - test["r2"],
        }
    return result


# -- text ----------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """What ``ftsweep final`` prints: the test metrics, the seeds, the baseline, where the model is."""
    lines = [
        f"study {report['study']!r}, trial {report['trial']} ({report['metric']} "
        f"{_fmt(report['trial_value'])}); "
        f"refit {report['refit']}"
        + (f" for {report['epochs']} epochs" if report["refit"] == "train+val" else "")
    ]
    exported = report["exported"]
    test = exported.get("test")
    names = _report_headline(report)
    # The metric the baseline line leads with, then the one after it; the gap's two metrics.
    first, second = ("rmse", "r2") if _is_regression(report) else ("macro_f1", "accuracy")
    if test is None:
        lines.append("no test split in the data: nothing was tested (the model is exported untested)")
    else:
        intervals = exported["test_intervals"]
        lines.append(
            f"test ({report['n_test']} rows, once): "
            + ", ".join(
                f"{name} {_fmt(test[name])} [{_fmt(intervals[name][0])}, {_fmt(intervals[name][1])}]"
                for name in names
            )
            + (
                " (95% bootstrap intervals; rmse and mae in the label's units)"
                if _is_regression(report)
                else " (95% bootstrap intervals)"
            )
        )
        gap = exported.get("generalization_gap")
        if gap:
            lines.append(
                f"generalization gap ({'test - train' if _is_regression(report) else 'train - test'}): "
                f"{first} {_fmt(gap[first])}, {second} {_fmt(gap[second])}"
            )
        seeds = report.get("seeds_test")
        if seeds and report["n_seeds"] > 1:
            lines.append(
                f"over {report['n_seeds']} seeds: "
                + ", ".join(
                    f"{name} {_fmt(seeds[name]['mean'])} ± {_fmt(seeds[name]['sd'])}" for name in names
                )
            )
    baseline = report.get("baseline")
    if baseline:
        lead = baseline["difference"][first]
        other = baseline["difference"][second]
        lines.append(
            f"against the default config ({report['n_seeds']} seed(s) each): {first} "
            f"{_fmt(lead['tuned'])} vs "
            f"{_fmt(lead['baseline'])}, difference {lead['difference']:+.4f} [{lead['interval'][0]:+.4f}, "
            f"{lead['interval'][1]:+.4f}]; "
            f"{second} difference {other['difference']:+.4f} [{other['interval'][0]:+.4f}, "
            f"{other['interval'][1]:+.4f}]"
        )
    lines.append(f"model: {report['model_dir']}")
    tracking = report.get("mlflow") or {}
    if tracking.get("run_id"):
        lines.append(
            f"MLflow run: {tracking['run_id']}"
            + (f"; registered {tracking['registered']}" if tracking.get("registered") else "")
        )
    return lines


def _is_regression(report: Mapping[str, Any]) -> bool:
    return report.get("task") == "regression"


def _report_headline(report: Mapping[str, Any]) -> tuple[str, ...]:
    """The headline metrics the report holds (one written before ``headline`` existed: classification's)."""
    return tuple(report.get("headline") or headline_names(str(report.get("task", "classification"))))


def model_card(report: Mapping[str, Any]) -> str:
    """The export folder's README.md, in Hugging Face's model-card form (YAML metadata, then sections)."""
    import yaml

    exported = report["exported"]
    test = exported.get("test")
    names = _report_headline(report)
    regression = _is_regression(report)
    # What the model reads: images for the image trainer, short texts otherwise.
    images = str(report.get("trainer", "")).startswith("image")
    pipeline = "image-classification" if images else "text-classification"
    inputs, modality = ("images", "image") if images else ("short texts", "text")
    metadata: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": pipeline,
        "base_model": report["base_model"],
        "tags": ["ftsweep", pipeline, *(["regression"] if regression else [])],
    }
    if test is not None and regression:
        metadata["model-index"] = [
            {
                "name": report["study"],
                "results": [
                    {
                        "task": {"type": pipeline, "name": "regression"},
                        "dataset": {"name": report["study"], "type": "csv", "split": "test"},
                        "metrics": [
                            {"type": name, "value": round(test[name], 6)} for name in REGRESSION_HEADLINE
                        ],
                    }
                ],
            }
        ]
    elif test is not None:
        metadata["model-index"] = [
            {
                "name": report["study"],
                "results": [
                    {
                        "task": {"type": pipeline},
                        "dataset": {"name": report["study"], "type": "csv", "split": "test"},
                        "metrics": [
                            {"type": "accuracy", "value": round(test["accuracy"], 6)},
                            {"type": "f1", "name": "macro F1", "value": round(test["macro_f1"], 6)},
                        ],
                    }
                ],
            }
        ]
    out = ["---", yaml.safe_dump(metadata, sort_keys=False).rstrip(), "---", ""]
    what = (
        f"A regression model (`trainer.task: regression`): one number per {modality}, "
        "in the label's own units."
        if regression
        else f"Classes: {', '.join(f'`{label}`' for label in report['labels'])}."
    )
    use = (
        f"Predicting the label of {inputs} like those in the training data "
        f"(column `{report['input_column']}`), within the range of the training labels"
        if regression
        else f"Classifying {inputs} like those in the training data (column `{report['input_column']}`) "
        "into the classes above"
    )
    out += [
        f"# {report['study']}: {modality} {'regression model' if regression else 'classifier'}",
        "",
        f"Fine-tuned from `{report['base_model']}` by ftsweep from trial "
        f"{report['trial']} of the "
        f"study `{report['study']}` (the trial with the best `{report['metric']}` on the validation split "
        "unless "
        f"`--trial` chose another). {what}",
        "",
        "## Intended use",
        "",
        f"{use}. It has seen only that data: check it on your own {inputs.split()[-1]} before relying on "
        "it, and do not use "
        "it for "
        "decisions about people without a human review. Score a file with "
        f"`ftsweep predict {report['model_dir']} INPUT.csv --out scored.csv`"
        + (" (it adds a `prediction` column)." if regression else "."),
        "",
        *(
            [
                "This model reads the mean of the last layer's token states (`pooling: mean`), which no "
                "transformers classification head does: loaded with `AutoModelForSequenceClassification` "
                "alone "
                "it reads the first token and predicts something else. Load it with `ftsweep predict`, "
                "`trainers.final_fit.TextPredictor.load(folder, 'cpu')` or the MLflow model.",
                "",
            ]
            if report.get("pooling") == "mean"
            else []
        ),
        "## Training",
        "",
        f"- refit: `{report['refit']}`"
        + (
            f" (trained on train + validation for {report['epochs']} epochs, the trial's best epoch count: "
            "no "
            "validation split was left to choose an epoch with)"
            if report["refit"] == "train+val"
            else " (trained on the training split; the best validation epoch is kept, as in the trial)"
        ),
        f"- seeds: {report['n_seeds']}; the exported model is seed {report['exported_seed']}",
        "",
        "Data (SHA-256 of each file):",
        "",
        "| split | file | rows | sha256 |",
        "|---|---|---|---|",
    ]
    for split, info in report["data"].items():
        out.append(f"| {split} | `{info['file']}` | {info.get('rows', '')} | `{info['sha256']}` |")
    out += ["", "Hyperparameters (every parameter of the fit):", "", "| parameter | value |", "|---|---|"]
    out += [f"| `{key}` | `{value}` |" for key, value in report["params"].items()]
    out += ["", "## Evaluation", ""]
    if test is None:
        out.append("The data has no test split: this model was not tested.")
    else:
        intervals = exported["test_intervals"]
        out += [
            f"On the test split ({report['n_test']} rows), evaluated once, after every choice was made on "
            "the "
            "validation split (95% bootstrap intervals over the test rows"
            + ("; rmse and mae in the label's units" if regression else "")
            + "):",
            "",
            "| metric | value | 95% interval |",
            "|---|---|---|",
        ]
        out += [
            f"| {name} | {_fmt(test[name])} | {_fmt(intervals[name][0])} – {_fmt(intervals[name][1])} |"
            for name in names
        ]
        seeds = report.get("seeds_test")
        if seeds and report["n_seeds"] > 1:
            out += [
                "",
                f"Over {report['n_seeds']} seeds (mean ± sd): "
                + ", ".join(
                    f"{name} {_fmt(seeds[name]['mean'])} ± {_fmt(seeds[name]['sd'])}" for name in names
                ),
            ]
    if test is not None and regression:
        gap = exported.get("generalization_gap")
        if gap:
            out += [
                "",
                f"Generalization gap (test − train): rmse {_fmt(gap['rmse'])}, mae {_fmt(gap['mae'])}; "
                f"r2 (train − test) {_fmt(gap['r2'])}.",
            ]
    elif test is not None:
        out += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for label, values in exported["test_per_class"].items():
            out.append(
                f"| {label} | {_fmt(values['precision'])} | {_fmt(values['recall'])} | {_fmt(values['f1'])} "
                f"| {values['support']} |"
            )
        out += [
            "",
            "Confusion matrix (rows: true class, columns: predicted):",
            "",
            "| | " + " | ".join(report["labels"]) + " |",
            "|---" * (len(report["labels"]) + 1) + "|",
        ]
        for label, row in zip(report["labels"], exported["test_confusion_matrix"], strict=True):
            out.append(f"| **{label}** | " + " | ".join(str(value) for value in row) + " |")
        gap = exported.get("generalization_gap")
        if gap:
            out += [
                "",
                f"Generalization gap (train − test): macro F1 {_fmt(gap['macro_f1'])}, accuracy "
                f"{_fmt(gap['accuracy'])}.",
            ]
    out += ["", "## Baseline comparison", ""]
    baseline = report.get("baseline")
    if baseline:
        out += [
            "The trainer's default configuration (no search), fitted the same way, against this model's "
            "configuration "
            "on the same test rows (each averaged over the seeds; paired 95% bootstrap interval of the "
            "difference):",
            "",
            "| metric | tuned | default | difference | 95% interval |",
            "|---|---|---|---|---|",
        ]
        for name in names:
            values = baseline["difference"][name]
            out.append(
                f"| {name} | {_fmt(values['tuned'])} | {_fmt(values['baseline'])} | "
                f"{values['difference']:+.4f} | "
                f"{values['interval'][0]:+.4f} – {values['interval'][1]:+.4f} |"
            )
    else:
        out.append("Not measured (run `ftsweep final NAME --baseline`).")
    out.append("")
    return "\n".join(out)
