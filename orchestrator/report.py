"""What ``ftsweep status`` and ``ftsweep best`` show, read from the study's storage."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from orchestrator.errors import StudyNotFound
from orchestrator.study import EPOCHS_ATTR, REASON_ATTR, RUN_ID_ATTR, state_counts, stored_sweep

if TYPE_CHECKING:
    import optuna


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trial_rows(trials: Iterable[optuna.trial.FrozenTrial]) -> list[dict[str, Any]]:
    """One row per trial: number, state, params, value, epochs, duration, reason."""
    rows = []
    for trial in trials:
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        epochs = trial.user_attrs.get(EPOCHS_ATTR)
        if epochs is None and trial.intermediate_values:
            epochs = max(trial.intermediate_values)
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "epochs": epochs,
                "duration_seconds": duration,
                "params": dict(trial.params),
                "reason": trial.user_attrs.get(REASON_ATTR, ""),
            }
        )
    return rows


def render_status(study: optuna.Study, limit: int | None = None) -> Any:
    """A rich table of the study's trials, newest last, with a summary line as its caption."""
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    sweep = stored_sweep(study)
    counts = state_counts(trials)
    shown = trials[-limit:] if limit else trials
    table = Table(title=f"study {study.study_name}", title_justify="left")
    for column in ("trial", "state", sweep.study.metric, "epochs", "duration", "params", "reason"):
        table.add_column(column, overflow="fold")
    for row in trial_rows(shown):
        duration = row["duration_seconds"]
        table.add_row(
            str(row["number"]),
            row["state"].lower(),
            "" if row["value"] is None else f"{row['value']:.4f}",
            "" if row["epochs"] is None else str(row["epochs"]),
            "" if duration is None else f"{duration:.1f}s",
            ", ".join(f"{key}={_format_value(value)}" for key, value in row["params"].items()),
            row["reason"],
        )
    parts = [f"{counts.get(state, 0)} {state.lower()}" for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING") if counts.get(state)]
    caption = f"{len(trials)} trials: {', '.join(parts) or 'none yet'}; budget {sweep.study.n_trials}"
    best = best_summary(study, required=False)
    if best:
        caption += f"; best {sweep.study.metric} {best['value']:.4f} (trial {best['trial']})"
    if limit and len(trials) > limit:
        caption += f"; showing the last {limit}"
    table.caption = caption
    table.caption_justify = "left"
    return table


def best_summary(study: optuna.Study, required: bool = True) -> dict[str, Any] | None:
    """The best complete trial: its number, value, every parameter (fixed and sampled) and MLflow run.

    Raises:
        StudyNotFound: when ``required`` and no trial has completed yet.
    """
    try:
        trial = study.best_trial
    except ValueError:
        if required:
            raise StudyNotFound(f"study {study.study_name!r} has no complete trial yet; see `ftsweep status {study.study_name}`") from None
        return None
    sweep = stored_sweep(study)
    fixed = _fixed_params(study)
    return {
        "study": study.study_name,
        "metric": sweep.study.metric,
        "direction": sweep.study.direction,
        "trial": trial.number,
        "value": trial.value,
        "params": {**fixed, **trial.params},
        "sampled": sorted(trial.params),
        "epochs": trial.user_attrs.get(EPOCHS_ATTR),
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


def format_best(summary: dict[str, Any], fmt: str) -> str:
    """``yaml`` and ``json`` are for files (``> best.yaml``); ``table`` for reading."""
    if fmt == "json":
        return json.dumps(summary, indent=2, default=str)
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(summary, sort_keys=False)
    lines = [
        f"study {summary['study']}: best trial {summary['trial']}, {summary['metric']} = {summary['value']:.6g} ({summary['direction']})",
    ]
    if summary.get("mlflow_run_id"):
        lines.append(f"MLflow run: {summary['mlflow_run_id']}")
    width = max((len(key) for key in summary["params"]), default=0)
    for key, value in summary["params"].items():
        marker = "*" if key in summary["sampled"] else " "
        lines.append(f"  {marker} {key:<{width}}  {value}")
    lines.append("  (* sampled; the others are fixed by the sweep file)")
    return "\n".join(lines)
