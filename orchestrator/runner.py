"""Run a sweep file as a study, or continue a study: the verbs behind ``ftsweep run`` and ``resume``."""

from __future__ import annotations

import contextlib
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
    """This machine's worker slots; none on the ray backend, where Ray places the trials."""
    if sweep.execution.backend == "ray":
        return []
    execution = sweep.execution
    return plan_slots(
        visible_gpu_ids(), execution.gpus_per_trial, workers or execution.workers, threads_per_trial=execution.cpus_per_trial
    )


def concurrency(sweep: Sweep, slots: list[Slot]) -> int:
    """How many trials may be in flight at once (the TPE sampler's constant liar needs to know)."""
    if sweep.execution.backend == "ray":
        return sweep.execution.max_concurrent_trials or 2
    return len(slots)


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
    plan = plan_sweep(sweep)
    slots = worker_slots(sweep, workers)
    budget = effective_budget(plan, n_trials or sweep.study.n_trials)
    storage = open_storage(sweep.storage_url)
    tracker = _open_tracker(sweep)
    sampler = make_sampler(sweep, plan.space, concurrency(sweep, slots))
    pruner = make_pruner(sweep, plan.max_epochs)
    study = create_study(sweep, storage, sampler, pruner)
    return _run_session(
        plan, study, tracker, slots, budget, timeout or sweep.study.timeout, live, shared=is_shared_storage(sweep.storage_url)
    )


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
    shared: bool = False,
) -> RunOutcome:
    sweep = plan.sweep
    work_dir = study_work_dir(sweep)
    if tracker is not None:
        tracker.start_study(params=_study_params(plan, budget, slots), artifacts=_study_artifacts(plan), tags={})
    progress = Progress(study_name=sweep.study.name, metric=sweep.study.metric, budget=budget, live=live, timeout_seconds=timeout)
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
        shared=shared,
        cache_dir=work_dir / "cache",
    )
    if slots:
        where = f"{len(slots)} worker{'s' if len(slots) != 1 else ''} [{'; '.join(s.label for s in slots)}]"
    else:
        where = f"Ray ({sweep.execution.ray_address or 'a local Ray'})"
    progress.say(
        f"study {sweep.study.name!r}: {budget} trials ({session.n_counted} already finished) on {where}; "
        f"storage {sweep.storage_url}" + (f"; MLflow {sweep.tracking_uri}" if tracker else "")
    )
    backend = make_backend(sweep, slots, work_dir)
    status: str | None = "FAILED"
    try:
        backend.run(session)
        done = session.n_counted >= budget
        if tracker is not None and done:
            _log_best_checkpoint(session, tracker)
        # A worker leaves the parent run open while other workers may still be running trials.
        status = "FINISHED" if done else (None if shared else "KILLED")
    finally:
        errors = tracker.close(status) if tracker is not None else []
    return RunOutcome(sweep.study.name, sweep.storage_url, session.result(), budget, session.n_counted, errors, work_dir)


def make_backend(sweep: Sweep, slots: list[Slot], work_dir: Path) -> Any:
    """The backend ``execution.backend`` names."""
    if sweep.execution.backend == "ray":
        try:
            from orchestrator.backends.ray import RayBackend
        except ImportError as error:
            raise ConfigError("execution.backend: ray needs Ray Tune: pip install 'ftsweep[ray]'") from error
        return RayBackend(sweep.execution.ray_address, work_dir)
    from orchestrator.backends.local import LocalBackend

    return LocalBackend(slots, log_dir=work_dir / "logs")


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



def is_shared_storage(url: str) -> bool:
    """A server database (PostgreSQL, MySQL) may have workers on other machines; a SQLite file may not."""
    return sqlite_path(url) is None and not url.startswith("sqlite")


def sweep_differences(stored: Sweep, given: Sweep) -> list[str]:
    """What differs between two sweeps in the parts that define a trial: the search space and the trainer."""
    differences: list[str] = []
    for section in ("search_space", "trainer"):
        _diff(stored.raw.get(section), given.raw.get(section), section, differences)
    return differences


def _diff(old: Any, new: Any, path: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            _diff(old.get(key), new.get(key), f"{path}.{key}", out)
    elif old != new:
        out.append(f"{path}: {old!r} -> {new!r}")


def resume_study(
    study_name: str,
    storage_url: str | None,
    *,
    n_trials: int | None = None,
    workers: int | str | None = None,
    timeout: float | None = None,
    sweep_file: str | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    live: bool | None = None,
    as_worker: bool = False,
) -> RunOutcome:
    """Continue a study from its storage: the sweep file comes from the store.

    Trials left RUNNING by a dead process and trials interrupted by a stop are re-run with
    the same parameters (each counted once); finished trials are never re-run.

    Args:
        sweep_file: a sweep file to continue with instead of the stored one; refused when its
            search space or trainer differ from the stored ones, unless ``force``.
        as_worker: join a study that other processes may be running (``ftsweep worker``).
    """
    from orchestrator.config import load_sweep, resolve_storage_url
    from orchestrator.errors import UserError
    from orchestrator.recovery import budget_lock, recover
    from orchestrator.study import SWEEP_ATTR, load_study, open_existing_storage, stored_sweep

    url = resolve_storage_url(storage_url)
    if as_worker and not is_shared_storage(url):
        raise UserError(
            f"ftsweep worker needs a server database (postgresql+psycopg://...), not {url}: a SQLite file is one "
            f"machine, one writer. On this machine run more trials at once with `ftsweep resume {study_name} --workers N`"
        )
    storage = open_existing_storage(url, study_name)
    study = load_study(study_name, storage)
    sweep = stored_sweep(study)
    if sweep_file or overrides:
        given = load_sweep(sweep_file, overrides) if sweep_file else None
        if given is None:
            from orchestrator.config import apply_overrides, validate_sweep

            given = validate_sweep(apply_overrides(sweep.raw, overrides or []), sweep.base_dir, sweep.source)
        if given.study.name != study_name:
            raise ConfigError(f"study.name: the sweep file names {given.study.name!r}, not {study_name!r}", source=given.source)
        differences = sweep_differences(sweep, given)
        if differences and not force:
            raise ConfigError(
                f"refusing to resume {study_name!r} with a different search space or trainer ({'; '.join(differences)}); "
                "trials already run would not be comparable. Use --force to continue anyway",
                source=given.source,
            )
        sweep = given
        study.set_user_attr(SWEEP_ATTR, sweep_for_store(sweep).to_stored())
    plan = plan_sweep(sweep)
    slots = worker_slots(sweep, workers)
    budget = effective_budget(plan, n_trials or sweep.study.n_trials)
    if n_trials and n_trials != sweep.study.n_trials:
        stored = study.user_attrs[SWEEP_ATTR]
        stored["sweep"].setdefault("study", {})["n_trials"] = n_trials
        study.set_user_attr(SWEEP_ATTR, stored)
    tracker = _open_tracker(sweep)
    # Under the budget lock: a trial another worker is starting is complete (owner set) or not there yet.
    with budget_lock(storage, study_name) if is_shared_storage(url) else contextlib.nullcontext():
        recovered = recover(study)
    if recovered:
        print(f"re-running interrupted trial(s) {recovered} with the same parameters", file=sys.stderr)
    sampler = make_sampler(sweep, plan.space, concurrency(sweep, slots), seed_offset=len(study.trials))
    study = load_study(study_name, storage, sampler=sampler, pruner=make_pruner(sweep, plan.max_epochs))
    return _run_session(
        plan, study, tracker, slots, budget, timeout or sweep.study.timeout, live, shared=is_shared_storage(url)
    )


def _log_best_checkpoint(session: StudySession, tracker: StudyTracker) -> None:
    """The best trial's checkpoint, kept on disk, is logged to its MLflow run as an artifact."""
    from optuna.trial import TrialState

    from orchestrator.study import RUN_ID_ATTR

    if not session.keep_best_checkpoint or session.checkpoint_root is None:
        return
    try:
        best = session.study.best_trial
    except ValueError:
        return
    folder = session.checkpoint_root / f"trial-{best.number}"
    run_id = best.user_attrs.get(RUN_ID_ATTR)
    if best.state == TrialState.COMPLETE and run_id and folder.is_dir() and any(folder.iterdir()):
        tracker.log_artifacts(run_id, folder, "checkpoint")
