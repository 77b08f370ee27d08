"""The ``final`` MLflow run: under the study's run, with params, test metrics, a confusion-matrix
figure and the model in MLflow's ``transformers`` flavor (a ``text-classification`` pipeline with
an input example and a signature), so ``mlflow.pyfunc.load_model`` and ``mlflow models serve``
work; ``--register NAME`` adds a Model Registry version tagged with the study and the trial.

One final run per final: its id is written to ``final/mlflow.json`` as soon as it exists, and each
step (params and metrics, the model, the registration) is recorded there when done, so a
``final`` killed in the middle continues the same run instead of opening a second one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import StorageError

if TYPE_CHECKING:
    from orchestrator.config import Sweep

STATE_FILE = "mlflow.json"
ROLE = "final"
#: What the logged pipeline is shown as an example input (and infers its signature from).
INPUT_EXAMPLE = ["An example text to classify.", "Another one."]


def track_final(
    sweep: Sweep,
    work: Path,
    report: dict[str, Any],
    export: Path,
    register: str | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Create (or continue) the final run, log everything, register when asked; the run's facts."""
    from orchestrator.tracking import ROLE_TAG, STUDY_TAG, TRIAL_TAG, check_reachable, mlflow_client

    tracking = sweep.tracking_location
    check_reachable(tracking)
    state = _read_state(work)
    client = mlflow_client(tracking.uri)
    try:
        experiment = client.get_experiment_by_name(sweep.experiment_name)
        if experiment is None:
            raise StorageError(
                f"tracking.mlflow_uri {tracking.display}: the study's experiment {sweep.experiment_name!r} "
                "is gone"
            )
        run_id = state.get("run_id")
        if run_id is None or not _run_exists(client, run_id):
            tags = {STUDY_TAG: sweep.study.name, ROLE_TAG: ROLE, TRIAL_TAG: str(report["trial"])}
            parent = _parent_run(client, experiment.experiment_id, sweep.study.name)
            if parent is not None:
                tags["mlflow.parentRunId"] = parent
            run = client.create_run(experiment.experiment_id, run_name=f"{sweep.study.name}-final", tags=tags)
            state = {"run_id": run.info.run_id}
            _write_state(work, state)
        run_id = state["run_id"]
        if not state.get("logged"):
            _log_facts(client, run_id, report, export)
            state["logged"] = True
            _write_state(work, state)
        if not state.get("model_uri"):
            say("MLflow: logging the model")
            state["model_uri"] = _log_model(tracking.uri, run_id, export, report)
            _write_state(work, state)
        if register and not state.get("registered"):
            state["registered"] = _register(tracking.uri, state["model_uri"], register, report)
            _write_state(work, state)
        client.set_terminated(run_id, "FINISHED")
    except StorageError:
        raise
    except Exception as error:  # noqa: BLE001 - MLflow raises many kinds; translate them once, here
        from orchestrator.storage import mask_text

        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StorageError(
            f"tracking.mlflow_uri {tracking.display}: the final run could not be written "
            f"({mask_text(detail)}); "
            "the model is exported; run the same command again to finish the MLflow part"
        ) from error
    return {key: state.get(key) for key in ("run_id", "model_uri", "registered")}


def register_existing(sweep: Sweep, work: Path, report: dict[str, Any], name: str) -> dict[str, Any]:
    """Register the model of a final that is already complete (``final NAME --register M`` run afterwards)."""
    state = _read_state(work)
    if not state.get("model_uri"):
        raise StorageError(
            f"the final of study {sweep.study.name!r} logged no model to MLflow; run it with --force"
        )
    if not state.get("registered"):
        state["registered"] = _register(sweep.tracking_location.uri, state["model_uri"], name, report)
        _write_state(work, state)
    return {key: state.get(key) for key in ("run_id", "model_uri", "registered")}


def _read_state(work: Path) -> dict[str, Any]:
    try:
        value = json.loads((work / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_state(work: Path, state: dict[str, Any]) -> None:
    temporary = work / (STATE_FILE + ".tmp")
    temporary.write_text(json.dumps(state, indent=2), encoding="utf-8")
    os.replace(temporary, work / STATE_FILE)


def _run_exists(client: Any, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 - MLflow's "not found" is a generic MlflowException
        return False


def _parent_run(client: Any, experiment_id: str, study_name: str) -> str | None:
    from orchestrator.tracking import ROLE_TAG, STUDY_TAG

    quoted = study_name.replace("\\", "\\\\").replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{STUDY_TAG}` = '{quoted}' and tags.`{ROLE_TAG}` = 'study'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _metric_name(text: str) -> str:
    """A class name as part of a metric key (MLflow allows letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)[:200] or "_"


def final_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The final run's metrics: the exported model's test figures (and intervals), the seeds, the baseline."""
    exported = report["exported"]
    metrics: dict[str, float] = {}
    test = exported.get("test")
    if test is not None:
        for name, value in test.items():
            metrics[f"test_{name}"] = value
            low, high = exported["test_intervals"][name]
            metrics[f"test_{name}_ci_low"], metrics[f"test_{name}_ci_high"] = low, high
        for label, values in (exported.get("test_per_class") or {}).items():
            for key in ("precision", "recall", "f1"):
                metrics[f"test_{key}_{_metric_name(label)}"] = values[key]
        for name, value in (exported.get("generalization_gap") or {}).items():
            metrics[f"generalization_gap_{name}"] = value
        for name, summary in (report.get("seeds_test") or {}).items():
            metrics[f"test_{name}_seed_mean"], metrics[f"test_{name}_seed_sd"] = (
                summary["mean"],
                summary["sd"],
            )
    for name, value in (exported.get("train") or {}).items():
        metrics[f"train_{name}"] = value
    for name, value in (exported.get("validation") or {}).items():
        metrics[f"val_{name}"] = value
    baseline = report.get("baseline")
    if baseline:
        for name, values in baseline["difference"].items():
            metrics[f"baseline_test_{name}"] = values["baseline"]
            metrics[f"baseline_difference_{name}"] = values["difference"]
            metrics[f"baseline_difference_{name}_ci_low"], metrics[f"baseline_difference_{name}_ci_high"] = (
                values["interval"]
            )
    return metrics


def _log_facts(client: Any, run_id: str, report: dict[str, Any], export: Path) -> None:
    from orchestrator._tracking_writer import log_batches, metric_entities, param_entities

    params = {
        **report["params"],
        "refit": report["refit"],
        "refit_epochs": report["epochs"],
        "seeds": report["n_seeds"],
        "exported_seed": report["exported_seed"],
        "trial": report["trial"],
        "base_model": report["base_model"],
        "baseline": bool(report.get("baseline")),
    }
    metrics = metric_entities(final_metrics(report), None, int(time.time() * 1000))
    log_batches(client, run_id, metrics=metrics, params=param_entities(params), tags=[])
    if report["exported"].get("test_confusion_matrix") is not None:
        client.log_figure(run_id, confusion_figure(report), "confusion_matrix.png")
    for name in ("README.md", "final.json"):
        if (export / name).exists():
            client.log_artifact(run_id, str(export / name))


def confusion_figure(report: dict[str, Any]) -> Any:
    """The test confusion matrix as a matplotlib figure (counts in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    labels = report["labels"]
    matrix = report["exported"]["test_confusion_matrix"]
    size = max(3.0, 0.6 * len(labels) + 2)
    figure = Figure(figsize=(size, size))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels=labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels=labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{report['study']}: test confusion matrix")
    peak = max((max(row) for row in matrix), default=0)
    for row, values in enumerate(matrix):
        for column, value in enumerate(values):
            colour = "white" if peak and value > peak / 2 else "black"
            axes.text(column, row, str(value), ha="center", va="center", color=colour)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    return figure


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's notices about model cards and licences from the hub, and transformers' progress bars."""
    import warnings

    from transformers.utils import logging as hf_logging

    mlflow_logger = logging.getLogger("mlflow")
    level, hf_level = mlflow_logger.level, hf_logging.get_verbosity()
    mlflow_logger.setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with warnings.catch_warnings():
            # The pyfunc model's predict has no type hints on purpose (orchestrator.mlflow_model).
            warnings.filterwarnings("ignore", message=".*type hints.*", category=UserWarning)
            yield
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar
        mlflow_logger.setLevel(level)
        hf_logging.set_verbosity(hf_level)
        hf_logging.enable_progress_bar()


def _log_model(tracking_uri: str, run_id: str, export: Path, report: dict[str, Any]) -> str:
    """The exported folder as a ``transformers``-flavor model of the run; its model URI."""
    import mlflow

    info_file = export / "ftsweep_model.json"
    trainer = json.loads(info_file.read_text(encoding="utf-8")).get("trainer") if info_file.exists() else None
    if not (export / "config.json").exists() or trainer == "image-classification":
        # Not a text-classification pipeline (an image classifier, a user's trainer): kept as plain
        # artifacts of the run; `ftsweep predict` loads them through the trainer's own predictor.
        mlflow.MlflowClient(tracking_uri).log_artifacts(run_id, str(export), "model")
        return f"runs:/{run_id}/model"
    import torch
    import transformers
    from transformers import pipeline

    # What `ftsweep predict models:/NAME/VERSION` needs besides the model: the trainer, the text column.
    metadata = {
        "ftsweep_study": report["study"],
        "ftsweep_trial": report["trial"],
        "ftsweep_model": json.loads(info_file.read_text(encoding="utf-8")) if info_file.exists() else {},
    }
    mlflow.set_tracking_uri(tracking_uri)
    requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    # A regression model (one number in the label's units) and a mean-pooling model predict through the
    # trainer's own predictor: no transformers pipeline gives what they were tested with.
    model_info = metadata["ftsweep_model"]
    if model_info.get("pooling") == "mean" or model_info.get("task") == "regression":
        return _log_pyfunc(run_id, export, metadata, requirements)
    with _quiet():
        classifier = pipeline("text-classification", model=str(export), tokenizer=str(export), device="cpu")
        with mlflow.start_run(run_id=run_id):
            info = mlflow.transformers.log_model(
                classifier,
                name="model",
                task="text-classification",
                input_example=INPUT_EXAMPLE,
                pip_requirements=requirements,
                metadata=metadata,
            )
    return str(info.model_uri)


def _log_pyfunc(run_id: str, export: Path, metadata: dict[str, Any], requirements: list[str]) -> str:
    """A mean-pooling or a regression model as a ``pyfunc`` model around the exported folder (a regression
    model's predicts a ``prediction`` column, in the label's units).

    transformers' classification heads read the first token; the mean pooling the model was trained
    with exists only in ftsweep's loader, so a ``transformers``-flavor pipeline would predict
    something else. The pyfunc model loads the folder through the trainer's own predictor.
    """
    import mlflow

    from orchestrator.mlflow_model import ARTIFACT, ExportedTextClassifier

    with _quiet(), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ExportedTextClassifier(),
            artifacts={ARTIFACT: str(export)},
            input_example=INPUT_EXAMPLE,
            pip_requirements=requirements,
            metadata=metadata,
        )
    return str(info.model_uri)


def _register(tracking_uri: str, model_uri: str, name: str, report: dict[str, Any]) -> str:
    """A new Model Registry version of ``model_uri`` under ``name``, tagged with the study and trial."""
    import mlflow

    from orchestrator.tracking import STUDY_TAG, TRIAL_TAG

    mlflow.set_tracking_uri(tracking_uri)
    with _quiet():
        version = mlflow.register_model(
            model_uri, name, tags={STUDY_TAG: report["study"], TRIAL_TAG: str(report["trial"])}
        )
    return f"models:/{name}/{version.version}"
