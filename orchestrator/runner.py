"""Run a sweep file as a study, or continue a study: the verbs behind ``ftsweep run`` and ``resume``."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.config import Sweep, sqlite_path
from orchestrator.devices import Slot, plan_slots, visible_gpu_ids
from orchestrator.errors import ConfigError
from orchestrator.plan import SweepPlan, plan_sweep
from orchestrator.progress import Progress
from orchestrator.session import SessionResult, StudySession
from orchestrator.study import (
    create_study,
    grid_size,
    make_pruner,
    make_sampler,
    open_storage,
    sweep_for_store,
)

if TYPE_CHECKING:
    import optuna

    from orchestrator.tracking import StudyTracker


@dataclass
class RunOutcome:
    """What a session of a study did."""

    study_name: str
    storage_url: str
    result: SessionResult
    n_trials: int
    n_counted: int
    tracking_errors: list[str]
    work_dir: Path


def study_work_dir(sweep: Sweep) -> Path:
    """The study's folder for logs (and, by default, checkpoints): next to the SQL file."""
    path = sqlite_path(sweep.storage_url)
    root = path.resolve().parent if path is not None else Path.cwd()
    return root / "ftsweep-runs" / sweep.study.name


def checkpoint_root(sweep: Sweep) -> Path:
    configured = sweep.execution.checkpoint_dir
    if configured:
        path = Path(configured).expanduser()
        path = path if path.is_absolute() else sweep.base_dir / path
        return path / sweep.study.name
    return study_work_dir(sweep) / "checkpoints"


def worker_slots(sweep: Sweep, workers: int | str | None) -> list[Slot]:
    return plan_slots(visible_gpu_ids(), sweep.execution.gpus_per_trial, workers or sweep.execution.workers)


def default_max_failures(n_trials: int) -> int:
    """10% of the budget, at least one: a study whose trials all crash stops early."""
    return max(1, -(-n_trials // 10))


def effective_budget(plan: SweepPlan, requested: int) -> int:
    """The grid sampler cannot run more distinct trials than its grid holds."""
    if plan.sweep.study.sampler.name == "grid":
        return min(requested, grid_size(plan.space))
    return requested


def run_sweep(
    sweep: Sweep,
    *,
    n_trials: int | None = None,
    workers: int | str | None = None,
    timeout: float | None = None,
    live: bool | None = None,
) -> RunOutcome:
    """Create the study of a sweep file and run it to its budget.

    Raises:
        UserError: for any mistake in the sweep, the data, the model or the storage, before any trial runs.
    """
    if sweep.execution.backend != "local":
        raise ConfigError(
            f"execution.backend: {sweep.execution.backend!r} is not available in this version; use 'local'",
            source=sweep.source,
        )
    plan = plan_sweep(sweep)
    slots = worker_slots(sweep, workers)
    budget = effective_budget(plan, n_trials or sweep.study.n_trials)
    storage = open_storage(sweep.storage_url)
    tracker = _open_tracker(sweep)
    sampler = make_sampler(sweep, plan.space, len(slots))
    pruner = make_pruner(sweep, plan.max_epochs)
    study = create_study(sweep, storage, sampler, pruner)
    return _run_session(plan, study, tracker, slots, budget, timeout or sweep.study.timeout, live)


def _open_tracker(sweep: Sweep) -> StudyTracker | None:
    if not sweep.tracking.enabled:
        return None
    from orchestrator.tracking import StudyTracker

    tracker = StudyTracker(sweep.tracking_uri, sweep.experiment_name, sweep.study.name)
    tracker.open()
    return tracker


def _run_session(
    plan: SweepPlan,
    study: optuna.Study,
    tracker: StudyTracker | None,
    slots: list[Slot],
    budget: int,
    timeout: float | None,
    live: bool | None,
) -> RunOutcome:
    from orchestrator.backends.local import LocalBackend

    sweep = plan.sweep
    work_dir = study_work_dir(sweep)
    if tracker is not None:
        tracker.start_study(params=_study_params(plan, budget, slots), artifacts=_study_artifacts(plan), tags={})
    progress = Progress(study_name=sweep.study.name, metric=sweep.study.metric, budget=budget, live=live)
    max_failures = sweep.study.max_failures
    session = StudySession(
        plan,
        study,
        tracker,
        progress,
        n_trials=budget,
        timeout=timeout,
        checkpoint_root=checkpoint_root(sweep),
        max_failures=max_failures if max_failures is not None else default_max_failures(budget),
        keep_best_checkpoint=sweep.execution.keep_best_checkpoint,
    )
    progress.say(
        f"study {sweep.study.name!r}: {budget} trials ({session.n_counted} already finished) on "
        f"{len(slots)} worker{'s' if len(slots) != 1 else ''} [{'; '.join(s.label for s in slots)}]; "
        f"storage {sweep.storage_url}" + (f"; MLflow {sweep.tracking_uri}" if tracker else "")
    )
    backend = LocalBackend(slots, log_dir=work_dir / "logs")
    status = "FAILED"
    try:
        backend.run(session)
        status = "FINISHED" if session.n_counted >= budget else "KILLED"
    finally:
        errors = tracker.close(status) if tracker is not None else []
    return RunOutcome(sweep.study.name, sweep.storage_url, session.result(), budget, session.n_counted, errors, work_dir)


def _study_params(plan: SweepPlan, budget: int, slots: list[Slot]) -> dict[str, Any]:
    sweep = plan.sweep
    params: dict[str, Any] = {
        "metric": sweep.study.metric,
        "direction": sweep.study.direction,
        "sampler": sweep.study.sampler.name,
        "sampler_seed": sweep.study.sampler.seed,
        "pruner": sweep.study.pruner.name,
        "n_trials": budget,
        "trainer": sweep.trainer.name,
        "backend": sweep.execution.backend,
        "workers": len(slots),
        "search_space": ", ".join(plan.space.names),
    }
    settings = sweep.trainer_settings()
    if "model" in settings:
        params["model"] = settings["model"]
    params.update({f"fixed.{key}": value for key, value in plan.fixed_params.items()})
    return params


def _study_artifacts(plan: SweepPlan) -> dict[str, str]:
    stored = sweep_for_store(plan.sweep)
    return {
        "sweep.yaml": yaml.safe_dump(stored.raw, sort_keys=False),
        "search_space.yaml": yaml.safe_dump(plan.space.to_dict(), sort_keys=False),
        "fixed_params.json": json.dumps(plan.fixed_params, indent=2, default=str),
    }


def resume_study(
    study_name: str,
    storage_url: str | None,
    *,
    n_trials: int | None = None,
    workers: int | str | None = None,
    timeout: float | None = None,
    live: bool | None = None,
) -> RunOutcome:
    """Continue a study from its storage: the sweep file comes from the store.

    Trials left RUNNING by a dead process and trials interrupted by a stop are re-run with
    the same parameters (each counted once); finished trials are never re-run.
    """
    from orchestrator.config import resolve_storage_url
    from orchestrator.study import SWEEP_ATTR, load_study, recover_interrupted, stored_sweep

    storage = open_storage(resolve_storage_url(storage_url))
    study = load_study(study_name, storage)
    sweep = stored_sweep(study)
    plan = plan_sweep(sweep)
    slots = worker_slots(sweep, workers)
    budget = effective_budget(plan, n_trials or sweep.study.n_trials)
    if n_trials and n_trials != sweep.study.n_trials:
        stored = study.user_attrs[SWEEP_ATTR]
        stored["sweep"].setdefault("study", {})["n_trials"] = n_trials
        study.set_user_attr(SWEEP_ATTR, stored)
    tracker = _open_tracker(sweep)
    recovered = recover_interrupted(study)
    sampler = make_sampler(sweep, plan.space, len(slots), seed_offset=len(study.trials))
    study = load_study(study_name, storage, sampler=sampler, pruner=make_pruner(sweep, plan.max_epochs))
    if recovered:
        print(f"re-running {len(recovered)} interrupted trial(s) with the same parameters: {recovered}", file=sys.stderr)
    return _run_session(plan, study, tracker, slots, budget, timeout or sweep.study.timeout, live)
