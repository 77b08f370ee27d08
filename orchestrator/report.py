"""What ``ftsweep best`` shows, read from the study's storage (``status`` is in
:mod:`orchestrator.status`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from orchestrator.errors import StudyNotFound
from orchestrator.study import EPOCHS_ATTR, RUN_ID_ATTR, pareto_front, stored_sweep, sweep_record

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial this study ran; among trials tied on the best value, the lowest-numbered one.

    Optuna's own ``study.best_trial`` leaves the order of ties to the database, and counts the trials
    ``study.warm_start`` copied from an earlier study (known to the sampler, never run here: no
    checkpoint, nothing ``final`` could refit). The study session keeps the checkpoint of the trial
    this names.
    """
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from orchestrator.study import is_warm_started

    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and t.values[0] is not None and not is_warm_started(t)
    ]
    if not complete:
        return None
    # A study of several objectives: the best on its first objective (``pareto_front`` is its answer).
    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    return min(complete, key=lambda t: (sign * float(t.values[0]), t.number))


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def front_summary(study: optuna.Study) -> dict[str, Any]:
    """``ftsweep best`` of a study of several objectives: its Pareto front, each trial with its values
    (every metric at the epoch best on the first one), its parameters and MLflow run.

    Raises:
        StudyNotFound: when no trial has completed yet.
    """
    front = pareto_front(study)
    if not front:
        raise StudyNotFound(
            f"study {study.study_name!r} has no complete trial yet; see `ftsweep status {study.study_name}`"
        )
    sweep = stored_sweep(study)
    fixed = _fixed_params(study)
    return {
        "study": study.study_name,
        "metrics": list(sweep.metrics),
        "directions": list(sweep.directions),
        "front": [
            {
                "trial": trial.number,
                "values": dict(zip(sweep.metrics, trial.values, strict=True)),
                "params": {**fixed, **trial.params},
                "sampled": sorted(trial.params),
                "epochs": trial.user_attrs.get(EPOCHS_ATTR, max(trial.intermediate_values, default=None)),
                "mlflow_run_id": trial.user_attrs.get(RUN_ID_ATTR),
            }
            for trial in front
        ],
    }


def format_front(summary: dict[str, Any], fmt: str) -> str:
    """The front as ``table`` (one row a trial), ``yaml`` (a list of ``trainer.params`` mappings under
    their trial numbers) or ``json`` (the whole summary)."""
    if fmt == "json":
        return json.dumps(summary, indent=2, default=str)
    objectives = ", ".join(
        f"{m} ({d})" for m, d in zip(summary["metrics"], summary["directions"], strict=True)
    )
    numbers = ", ".join(str(point["trial"]) for point in summary["front"])
    if fmt == "yaml":
        import yaml

        header = [
            f"# study {summary['study']}: Pareto front of {objectives}: trials {numbers}",
            f"# each a trainer.params mapping; fit one with `ftsweep final {summary['study']} --trial N`",
        ]
        body = {
            f"trial {point['trial']}": {"values": point["values"], "params": point["params"]}
            for point in summary["front"]
        }
        return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False).rstrip("\n")
    lines = [f"study {summary['study']}: Pareto front of {objectives}: {len(summary['front'])} trial(s)"]
    header = ["trial", *summary["metrics"], "params"]
    rows = [
        [
            str(point["trial"]),
            *(f"{point['values'][m]:.6g}" for m in summary["metrics"]),
            ", ".join(f"{key}={point['params'][key]}" for key in point["sampled"]),
        ]
        for point in summary["front"]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        lines.append(
            "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )
    lines.append(f"fit one with: ftsweep final {summary['study']} --trial N")
    return "\n".join(lines)


def best_summary(study: optuna.Study, required: bool = True) -> dict[str, Any] | None:
    """The best complete trial: its number, value, every parameter (fixed and sampled) and MLflow run.

    Raises:
        StudyNotFound: when ``required`` and no trial has completed yet.
    """
    trial = best_trial(study)
    if trial is None:
        if required:
            raise StudyNotFound(
                f"study {study.study_name!r} has no complete trial yet; see `ftsweep status "
                f"{study.study_name}`"
            ) from None
        return None
    sweep = stored_sweep(study)
    fixed = _fixed_params(study)
    return {
        "study": study.study_name,
        "metric": sweep.study.metric,
        "direction": sweep.study.direction,
        "trial": trial.number,
        "value": trial.values[0],
        "params": {**fixed, **trial.params},
        "sampled": sorted(trial.params),
        "epochs": trial.user_attrs.get(EPOCHS_ATTR, max(trial.intermediate_values, default=None)),
        "mlflow_run_id": trial.user_attrs.get(RUN_ID_ATTR),
    }


def _fixed_params(study: optuna.Study) -> dict[str, Any]:
    sweep = stored_sweep(study)
    from orchestrator.plan import build_trainer

    try:
        _, trainer = build_trainer(sweep)
        fixed = trainer.fixed_params()
    except Exception:  # noqa: BLE001 - a user trainer may be absent where `best` runs; show what is stored
        fixed = {}
    return {**fixed, **sweep.trainer.params}


def best_trainer_params(study: optuna.Study) -> dict[str, Any]:
    """The best trial's ``trainer.params``: the sweep file's fixed ``trainer.params`` and the sampled ones.

    Trainer settings (``trainer.epochs``, ``trainer.model``, ...) stay in their own keys and are left out.

    Raises:
        StudyNotFound: when no trial has completed yet.
    """
    summary = best_summary(study)
    assert summary is not None
    stored = (sweep_record(study) or {})["sweep"]
    fixed = dict((stored.get("trainer") or {}).get("params") or {})
    return {**fixed, **{key: summary["params"][key] for key in summary["sampled"]}}


def best_as_sweep(study: optuna.Study, new_name: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """A runnable sweep file of the best trial: its parameters fixed, one trial, a new study name.

    Returns:
        (the sweep mapping, notes for the user: what was changed or left out).

    Raises:
        StudyNotFound: when no trial has completed yet.
    """
    import copy

    params = best_trainer_params(study)
    raw = copy.deepcopy((sweep_record(study) or {})["sweep"])
    summary = best_summary(study)
    assert summary is not None
    name = new_name or f"{study.study_name}-best"
    section = dict(raw.get("study") or {})
    section.update(name=name, n_trials=1)
    section.pop("timeout", None)
    notes = [f"study {name!r}: trial {summary['trial']} of {study.study_name!r} with its parameters fixed"]
    # A masked URL is not a store anyone can open: the default (or $FTSWEEP_STORAGE) is used instead.
    if "***" in str(section.get("storage", "")):
        section.pop("storage")
        notes.append("study.storage left out (its password is not stored); give --storage or FTSWEEP_STORAGE")
    raw["study"] = section
    tracking = dict(raw.get("tracking") or {})
    if "***" in str(tracking.get("mlflow_uri", "")):
        tracking.pop("mlflow_uri")
        notes.append("tracking.mlflow_uri left out (its password is not stored); set MLFLOW_TRACKING_URI")
        raw["tracking"] = tracking
    raw["trainer"] = {**(raw.get("trainer") or {}), "params": params}
    return raw, notes


def format_best(summary: dict[str, Any], fmt: str, trainer_params: dict[str, Any] | None = None) -> str:
    """``yaml`` and ``json`` are for files (``> best.yaml``); ``table`` for reading.

    ``yaml`` is a valid ``trainer.params`` mapping (``trainer_params``, else the summary's parameters),
    with the study, trial and value as comments; ``json`` is the whole summary.
    """
    if fmt == "json":
        return json.dumps(summary, indent=2, default=str)
    if fmt == "yaml":
        import yaml

        header = [
            f"# study {summary['study']}: best trial {summary['trial']}, {summary['metric']} = "
            f"{summary['value']:.6g} ({summary['direction']})",
            "# a trainer.params mapping: paste it under `trainer: params:` of a sweep file",
        ]
        if summary.get("mlflow_run_id"):
            header.insert(1, f"# MLflow run: {summary['mlflow_run_id']}")
        params = trainer_params if trainer_params is not None else summary["params"]
        return "\n".join(header) + "\n" + yaml.safe_dump(params, sort_keys=False).rstrip("\n")
    lines = [
        f"study {summary['study']}: best trial {summary['trial']}, {summary['metric']} = "
        f"{summary['value']:.6g} ({summary['direction']})",
    ]
    if summary.get("mlflow_run_id"):
        lines.append(f"MLflow run: {summary['mlflow_run_id']}")
    width = max((len(key) for key in summary["params"]), default=0)
    for key, value in summary["params"].items():
        marker = "*" if key in summary["sampled"] else " "
        lines.append(f"  {marker} {key:<{width}}  {value}")
    lines.append("  (* sampled; the others are fixed by the sweep file)")
    return "\n".join(lines)
