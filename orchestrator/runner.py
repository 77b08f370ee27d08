"""Run a sweep file as a study, or continue a study: the verbs behind ``ftsweep run`` and ``resume``."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.config import Sweep
from orchestrator.devices import Slot, plan_slots, visible_gpu_ids
from orchestrator.errors import ConfigError
from orchestrator.first_trials import enqueue_first_trials
from orchestrator.plan import SweepPlan, plan_sweep
from orchestrator.progress import Progress
from orchestrator.session import SessionResult, StudySession
from orchestrator.storage import StoreLocation, study_folder
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

    from orchestrator.backends.base import BaseBackend
    from orchestrator.storage import TrackingLocation
    from orchestrator.tracking import StudyTracker


@dataclass
class RunOutcome:
    """What a session of a study did."""

    study_name: str
    storage: StoreLocation
    result: SessionResult
    n_trials: int
    n_counted: int
    tracking_errors: list[str]
    work_dir: Path

    @property
    def storage_url(self) -> str:
        """The store, masked: for messages and hints."""
        return self.storage.display


def study_work_dir(location: StoreLocation, study_name: str) -> Path:
    """The study's folder for logs (and, by default, checkpoints): next to the SQLite file actually opened."""
    return location.study_dir(study_name)


def checkpoint_root(sweep: Sweep, location: StoreLocation) -> Path:
    """``execution.checkpoint_dir`` / the study's folder, else the study's work folder / ``checkpoints``."""
    configured = sweep.execution.checkpoint_dir
    if configured:
        path = Path(configured).expanduser()
        path = path if path.is_absolute() else sweep.base_dir / path
        return study_folder(path, sweep.study.name)
    return study_work_dir(location, sweep.study.name) / "checkpoints"


def worker_slots(sweep: Sweep, workers: int | str | None) -> list[Slot]:
    """This machine's worker slots; none on the ray backend, where Ray places the trials."""
    if sweep.execution.backend == "ray":
        return []
    execution = sweep.execution
    return plan_slots(
        visible_gpu_ids(),
        execution.gpus_per_trial,
        workers or execution.workers,
        threads_per_trial=execution.cpus_per_trial,
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
    sweep = with_command_line_budget(sweep, n_trials, workers)
    plan = plan_sweep(sweep)
    slots = worker_slots(sweep, workers)
    budget = effective_budget(plan, sweep.study.n_trials)
    sampler = make_sampler(sweep, plan.space, concurrency(sweep, slots))
    pruner = make_pruner(sweep, plan.max_epochs)
    location = sweep.store
    tracking = _check_tracking(sweep)  # an unreachable MLflow fails in seconds, before the study is created
    with _one_driver(sweep, location):
        storage = open_storage(location)
        tracker = _open_tracker(sweep, tracking)
        try:
            study = create_study(sweep, storage, sampler, pruner)
            enqueue_first_trials(study, plan)
        except BaseException:
            if tracker is not None:
                tracker.close(status=None)
            raise
        return _run_session(
            plan, study, tracker, slots, budget, timeout or sweep.study.timeout, live, location=location
        )


def with_command_line_budget(sweep: Sweep, n_trials: int | None, workers: int | str | None) -> Sweep:
    """The sweep with ``run --n-trials`` / ``--workers`` written into it, so the study stores what was asked.

    ``status`` shows that budget and ``resume`` continues to it on that many workers, not the sweep
    file's values the command line replaced.
    """
    overrides = []
    if n_trials is not None:
        overrides.append(f"study.n_trials={int(n_trials)}")
    if workers is not None:
        overrides.append(f"execution.workers={workers}")
    if not overrides:
        return sweep
    from orchestrator.config import apply_overrides, validate_sweep

    return validate_sweep(apply_overrides(sweep.raw, overrides), sweep.base_dir, sweep.source)


def _one_driver(sweep: Sweep, location: StoreLocation) -> contextlib.AbstractContextManager[None]:
    """On a SQLite file, one driver per study (:mod:`orchestrator.driver_lock`); a server database shares
    it."""
    if location.shared:
        return contextlib.nullcontext()
    from orchestrator.driver_lock import driver_lock

    return driver_lock(study_work_dir(location, sweep.study.name), sweep.study.name)


def _check_tracking(sweep: Sweep) -> TrackingLocation | None:
    """The sweep's MLflow store, checked to be reachable and writable (None when tracking is off)."""
    if not sweep.tracking.enabled:
        return None
    from orchestrator.tracking import check_reachable

    tracking = sweep.tracking_location
    check_reachable(tracking)
    return tracking


def _open_tracker(sweep: Sweep, tracking: TrackingLocation | None) -> StudyTracker | None:
    if tracking is None:
        return None
    from orchestrator.tracking import StudyTracker

    tracker = StudyTracker(tracking, sweep.experiment_name, sweep.study.name, metric=sweep.study.metric)
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
    *,
    location: StoreLocation,
    make_report: bool = True,
) -> RunOutcome:
    """Run the study's session to its budget, then start its report (:mod:`orchestrator.report_build`)."""
    sweep = plan.sweep
    shared = location.shared
    work_dir = study_work_dir(location, sweep.study.name)
    if tracker is not None:
        tracker.start_study(
            params=_study_params(plan, budget, slots), artifacts=_study_artifacts(plan, location), tags={}
        )
    progress = Progress(
        study_name=sweep.study.name,
        metric=sweep.study.metric,
        budget=budget,
        live=live,
        timeout_seconds=timeout,
    )
    max_failures = sweep.study.max_failures
    session = StudySession(
        plan,
        study,
        tracker,
        progress,
        n_trials=budget,
        timeout=timeout,
        checkpoint_root=checkpoint_root(sweep, location),
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
        f"study {sweep.study.name!r}: {_trials(budget)} ({session.n_counted} already finished) on {where}; "
        f"storage {location.display}" + (f"; MLflow {tracker.location.display}" if tracker else "")
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
        # The one driver of a SQLite study closes any child run no live trial holds (a killed driver's).
        errors = tracker.close(status, close_orphans=not shared) if tracker is not None else []
    if make_report:
        from orchestrator.report_build import announce, start_in_background

        announce(start_in_background(location, sweep.study.name), progress.say)
    return RunOutcome(
        sweep.study.name, location, session.result(), budget, session.n_counted, errors, work_dir
    )


def _trials(n: int) -> str:
    """``1 trial``, ``4 trials``."""
    return f"{n} trial" if n == 1 else f"{n} trials"


def make_backend(sweep: Sweep, slots: list[Slot], work_dir: Path) -> BaseBackend:
    """The backend ``execution.backend`` names, from the registry :data:`orchestrator.backends.BACKENDS`."""
    from orchestrator.backends import backend_class

    return backend_class(sweep.execution.backend).for_sweep(sweep, slots, work_dir)


def _study_params(plan: SweepPlan, budget: int, slots: list[Slot]) -> dict[str, Any]:
    sweep = plan.sweep
    params: dict[str, Any] = {
        # Every objective, comma-separated, for a study of several ("val_f1, generalization_gap").
        "metric": ", ".join(sweep.metrics) if sweep.multi_objective else sweep.study.metric,
        "direction": ", ".join(sweep.directions) if sweep.multi_objective else sweep.study.direction,
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


def _study_artifacts(plan: SweepPlan, location: StoreLocation) -> dict[str, str]:
    stored = sweep_for_store(plan.sweep, location)
    return {
        "sweep.yaml": yaml.safe_dump(stored.raw, sort_keys=False),
        "search_space.yaml": yaml.safe_dump(plan.space.to_dict(), sort_keys=False),
        "fixed_params.json": json.dumps(plan.fixed_params, indent=2, default=str),
    }


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


def resume_study(study_name: str, storage_url: str | None, **options: Any) -> RunOutcome:
    """Continue a study from its storage: the sweep file comes from the store.

    Trials left RUNNING by a dead process and trials interrupted by a stop are re-run with
    the same parameters (each counted once); finished trials are never re-run. On a SQLite file,
    a study another driver is running is refused (:mod:`orchestrator.driver_lock`).

    Args:
        study_name: the study.
        storage_url: its storage, or None for ``$FTSWEEP_STORAGE`` / the default.
        **options: ``n_trials`` (a new total budget, at least the trials already finished),
            ``workers``, ``timeout``, ``sweep_file`` (a sweep file to continue with instead of the
            stored one; refused when its search space or trainer differ from the stored ones,
            unless ``force``), ``overrides``, ``force``, ``live``, and ``as_worker`` (join a study
            that other processes may be running: ``ftsweep worker``).
    """
    with contextlib.ExitStack() as held:
        return _resume_study(study_name, storage_url, held=held, **options)


def _resume_study(
    study_name: str,
    storage_url: str | None,
    *,
    held: contextlib.ExitStack,
    n_trials: int | None = None,
    workers: int | str | None = None,
    timeout: float | None = None,
    sweep_file: str | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    live: bool | None = None,
    as_worker: bool = False,
) -> RunOutcome:
    from orchestrator.config import load_sweep
    from orchestrator.errors import UserError
    from orchestrator.recovery import budget_lock, recover
    from orchestrator.study import (
        load_study,
        open_existing_storage,
        save_sweep_record,
        store_move,
        stored_sweep,
        sweep_record,
    )

    # The store actually opened decides everything else: the work folder, checkpoints, hints, and
    # (for a moved or copied SQLite store) where its MLflow file is; see study.rebase_on_store.
    location = StoreLocation.resolve(storage_url, key="--storage")
    if as_worker and not location.shared:
        raise UserError(
            f"ftsweep worker needs a server database (postgresql+psycopg://...), not {location.display}: a "
            "SQLite file is one machine, one writer. On this machine run more trials at once with `ftsweep "
            f"resume {study_name} --workers N`"
        )
    storage = open_existing_storage(location, study_name)
    study = load_study(study_name, storage)
    move = store_move((sweep_record(study) or {}).get("sweep", {}), location)
    sweep = stored_sweep(study, location)
    # Before anything is changed or recovered: a running driver's trials are not "interrupted".
    held.enter_context(_one_driver(sweep, location))
    if n_trials:
        _check_new_budget(study, n_trials)
    candidate = sweep
    if sweep_file or overrides:
        given = load_sweep(sweep_file, overrides) if sweep_file else None
        if given is None:
            from orchestrator.config import apply_overrides, validate_sweep

            given = validate_sweep(apply_overrides(sweep.raw, overrides or []), sweep.base_dir, sweep.source)
        if given.study.name != study_name:
            raise ConfigError(
                f"study.name: the sweep file names {given.study.name!r}, not {study_name!r}",
                source=given.source,
            )
        differences = sweep_differences(sweep, given)
        if differences and not force:
            raise ConfigError(
                f"refusing to resume {study_name!r} with a different search space or trainer "
                f"({'; '.join(differences)}); trials already run would not be comparable. Use --force to "
                "continue anyway",
                source=given.source,
            )
        candidate = given
    plan = plan_sweep(candidate)  # checked before anything is stored
    tracking = _check_tracking(candidate)
    sweep = candidate
    # A new sweep file, a store reached at a new URL, a new --n-trials, or a study an earlier ftsweep made.
    record = sweep_for_store(sweep, location).to_stored()
    if n_trials and n_trials != sweep.study.n_trials:
        record["sweep"].setdefault("study", {})["n_trials"] = n_trials
    save_sweep_record(study, record)
    slots = worker_slots(sweep, workers)
    budget = effective_budget(plan, n_trials or sweep.study.n_trials)
    if not as_worker:
        source = "--n-trials" if n_trials else "the budget stored with the study"
        print(f"resuming study {study_name!r} to {_trials(budget)} ({source})", file=sys.stderr)
    tracker = _open_tracker(sweep, tracking)
    if tracker is not None and move is not None:
        tracker.move_artifacts(*move)
    # Under the budget lock: a trial another worker is starting is complete (owner set) or not there yet.
    with budget_lock(storage, study_name) if location.shared else contextlib.nullcontext():
        recovered = recover(study)
    if recovered:
        print(f"re-running interrupted trial(s) {recovered} with the same parameters", file=sys.stderr)
    sampler = make_sampler(sweep, plan.space, concurrency(sweep, slots), seed_offset=len(study.trials))
    study = load_study(study_name, storage, sampler=sampler, pruner=make_pruner(sweep, plan.max_epochs))
    return _run_session(
        plan,
        study,
        tracker,
        slots,
        budget,
        timeout or sweep.study.timeout,
        live,
        location=location,
        make_report=not as_worker,  # one report per study, by its driver, not one per worker machine
    )


def _check_new_budget(study: optuna.Study, n_trials: int) -> None:
    """``--n-trials`` is the study's new total: below the trials already finished it would mean nothing.

    Raises:
        UserError: naming how many trials are finished.
    """
    from orchestrator.errors import UserError
    from orchestrator.study import counts_toward_budget

    finished = sum(1 for trial in study.get_trials(deepcopy=False) if counts_toward_budget(trial))
    if n_trials < finished:
        raise UserError(
            f"--n-trials {n_trials}: study {study.study_name!r} already has {finished} finished trials, and "
            f"--n-trials is its new total budget (not the trials to add); give at least {finished}, e.g. "
            f"--n-trials {finished + n_trials}"
        )


def _log_best_checkpoint(session: StudySession, tracker: StudyTracker) -> None:
    """The best trial's checkpoint, kept on disk, is logged to its MLflow run as an artifact."""
    from optuna.trial import TrialState

    from orchestrator.study import RUN_ID_ATTR

    if not session.keep_best_checkpoint or session.checkpoint_root is None:
        return
    from orchestrator.report import best_trial

    best = best_trial(session.study)
    if best is None:
        return
    folder = session.checkpoint_root / f"trial-{best.number}"
    run_id = best.user_attrs.get(RUN_ID_ATTR)
    if best.state == TrialState.COMPLETE and run_id and folder.is_dir() and any(folder.iterdir()):
        tracker.log_artifacts(run_id, folder, "checkpoint")
