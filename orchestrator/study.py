"""Create, find and account for studies in the SQL store (Optuna's RDB storage).

The store is Optuna's own schema through SQLAlchemy; ftsweep writes nothing else there but
attributes: the sweep record on the study (the sweep file and its folder, so ``status``, ``best``
and ``resume`` need only the study's name; a system attribute, see :func:`sweep_record`), and on
each trial its MLflow run id, its device and the reason it was pruned or failed (user attributes).
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config import Sweep, validate_sweep
from orchestrator.errors import ConfigError, StorageError, StudyExists, StudyNotFound
from orchestrator.storage import StoreLocation, TrackingLocation, mask_text, mask_url, stored_form

if TYPE_CHECKING:
    import optuna

    from search_spaces import SearchSpace

#: Study system attributes ftsweep writes (an earlier ftsweep wrote user attributes: see sweep_record).
SWEEP_ATTR = "ftsweep:sweep"
VERSION_ATTR = "ftsweep:version"
#: Trial user attributes ftsweep writes.
RUN_ID_ATTR = "mlflow_run_id"
DEVICE_ATTR = "device"
REASON_ATTR = "reason"
PARAMS_ATTR = "all_params"
EPOCHS_ATTR = "epochs"
INTERRUPTED_ATTR = "interrupted"
RERUN_OF_ATTR = "rerun_of"
#: On a complete trial of a study of several objectives: the epoch its values were taken from (the best
#: epoch on the first metric; every objective's value is that epoch's).
BEST_EPOCH_ATTR = "best_epoch"
#: On a trial ``study.warm_start`` copied from an earlier study (never run here): ``{"study", "trial"}``.
WARM_START_ATTR = "warm_start"


def quiet_optuna() -> None:
    """Keep Optuna's per-trial INFO lines off the terminal: ftsweep shows its own progress."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _location(store: StoreLocation | str) -> StoreLocation:
    return store if isinstance(store, StoreLocation) else StoreLocation.resolve(store)


def _first_line(error: BaseException) -> str:
    """A library error's first line, masked: a driver may quote the URL it was given."""
    text = str(getattr(error, "orig", None) or error).strip()
    return mask_text(text.splitlines()[0] if text else type(error).__name__)


def open_storage(store: StoreLocation | str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``store``, with connections that survive hour-long trials.

    PostgreSQL and MySQL connections are pinged before use (``pool_pre_ping``) and recycled,
    so a connection a firewall or the server dropped during a long trial is replaced instead
    of failing the next write (optuna#5600). SQLite waits for the write lock instead of
    failing at once.

    Raises:
        StorageError: when the store cannot be opened, naming it (masked) and what to check.
    """
    import optuna
    import sqlalchemy.exc

    from orchestrator.schema_race import create_safely

    quiet_optuna()
    location = _location(store)
    path = location.sqlite_file
    if path is not None:
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
        if not path.parent.exists():
            raise StorageError(f"storage {location.display}: the folder {path.parent} does not exist")
    else:
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 1800}
    try:
        storage = create_safely(
            path,
            lambda: optuna.storages.RDBStorage(
                location.url, engine_kwargs=engine_kwargs, skip_compatibility_check=False
            ),
        )
        if path is not None:
            _tune_sqlite(storage)
        return storage
    except ModuleNotFoundError as error:
        raise StorageError(
            f"storage {location.display}: the database driver {error.name!r} is not installed; "
            "for PostgreSQL, in your ftsweep clone: pip install -e '.[postgres]'"
        ) from error
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as error:
        raise StorageError(f"storage {location.display}: cannot open it ({_first_line(error)})") from error


def open_existing_storage(store: StoreLocation | str, study_name: str) -> optuna.storages.RDBStorage:
    """The storage of a study ``ftsweep run`` made (for ``status``, ``best``, ``ui``, ``resume``, ``worker``).

    Unlike :func:`open_storage`, it never creates anything: a mistyped SQLite path or a URL of
    another database (the MLflow store, say) is an error naming it, not a new empty file or
    Optuna's tables added to someone else's database.

    Raises:
        StudyNotFound: when the store does not exist or holds no Optuna studies.
        StorageError: when the URL cannot be opened.
    """
    location = _location(store)
    require_study_store(location, study_name)
    return open_storage(location)


def require_study_store(store: StoreLocation | str, study_name: str) -> None:
    """Raise :class:`StudyNotFound` unless ``store`` is an existing store with Optuna's tables."""
    import sqlalchemy

    location = _location(store)
    require_store_file(location, study_name)
    engine = null_pool_engine(location)
    try:
        with engine.connect() as connection:
            require_study_tables(connection, location, study_name)
    except sqlalchemy.exc.SQLAlchemyError as error:
        raise StorageError(f"storage {location.display}: cannot open it ({_first_line(error)})") from error
    finally:
        engine.dispose()


_STORE_HINT = "pass --storage with the URL the study was run with (or set FTSWEEP_STORAGE)"


def require_store_file(store: StoreLocation | str, study_name: str) -> None:
    """Raise :class:`StudyNotFound` when ``store`` is a missing SQLite file (opening would create it)."""
    location = _location(store)
    path = location.sqlite_file
    if path is not None and not path.exists():
        raise StudyNotFound(
            f"no study {study_name!r}: the storage {location.display} does not exist; {_STORE_HINT}"
        )


def require_study_tables(connection: Any, store: StoreLocation | str, study_name: str) -> None:
    """Raise :class:`StudyNotFound` when the database on ``connection`` holds no Optuna studies."""
    import sqlalchemy

    if not sqlalchemy.inspect(connection).has_table("studies"):
        raise StudyNotFound(
            f"no study {study_name!r}: {_location(store).display} holds no Optuna studies; {_STORE_HINT}"
        )


def null_pool_engine(store: StoreLocation | str) -> Any:
    """A SQLAlchemy engine on ``store`` without a connection pool, for a command's few reads."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    location = _location(store)
    try:
        return sqlalchemy.create_engine(location.url, poolclass=NullPool)
    except (sqlalchemy.exc.ArgumentError, ModuleNotFoundError) as error:
        raise StorageError(f"storage {location.display}: cannot open it ({mask_text(str(error))})") from error


def _tune_sqlite(storage: Any) -> None:
    """Write-ahead logging, and fsync at checkpoints rather than at every commit.

    The driver commits a dozen small transactions per trial; with SQLite's defaults each one
    waits for an fsync, which made the storage most of ftsweep's per-trial overhead. In WAL mode
    a commit survives a crash of any process (the driver, a worker); only an OS crash or a power
    cut can lose the last commits. WAL also lets readers (`ftsweep status`, optuna-dashboard) read
    while the driver writes, without "database is locked". The file must not be on NFS.
    """
    tune_sqlite_engine(storage.engine)


def tune_sqlite_engine(engine: Any) -> None:
    """Apply the WAL settings of :func:`_tune_sqlite` to a SQLAlchemy engine on a SQLite file."""
    import sqlalchemy

    def on_connect(connection: Any, record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections made before the listener reconnect with it


def study_names(storage: optuna.storages.RDBStorage) -> list[str]:
    return [summary.study_name for summary in storage.get_all_studies()]


def create_study(
    sweep: Sweep, storage: optuna.storages.RDBStorage, sampler: Any, pruner: Any
) -> optuna.Study:
    """A new study holding the sweep file.

    Raises:
        StudyExists: when a study of that name is already in the storage.
    """
    import optuna

    name = sweep.study.name
    if name in study_names(storage):
        raise StudyExists(
            f"study {name!r} already exists in {mask_url(storage.url)}; "
            f"continue it with `ftsweep resume {name}` "
            "or choose another study.name"
        )
    if sweep.multi_objective:
        from optuna.study import StudyDirection

        study = optuna.create_study(
            study_name=name,
            storage=storage,
            directions=[StudyDirection[d.upper()] for d in sweep.directions],
            sampler=sampler,
            pruner=pruner,
        )
    else:
        study = optuna.create_study(
            study_name=name, storage=storage, direction=sweep.study.direction, sampler=sampler, pruner=pruner
        )
    # optuna-dashboard and the optuna CLI then say the metric's name, not "Objective 0".
    study.set_metric_names(list(sweep.metrics))
    save_sweep_record(study, sweep_for_store(sweep).to_stored())
    return study


def load_study(
    name: str, storage: optuna.storages.RDBStorage, sampler: Any = None, pruner: Any = None
) -> optuna.Study:
    """The study ``name``.

    Raises:
        StudyNotFound: listing the studies the storage does hold.
    """
    import optuna

    names = study_names(storage)
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise StudyNotFound(f"no study {name!r} in {mask_url(storage.url)}; studies there: {known}")
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def sweep_record(study: optuna.Study) -> dict[str, Any] | None:
    """The sweep record kept with the study: ``{"sweep": the sweep file as a mapping, "base_dir": its
    folder}``, or None for a study ftsweep did not create. Every reader goes through here (or, reading
    the tables with SQL, :func:`sweep_records`).

    It is a study *system* attribute, so ``optuna studies`` (which prints every user attribute) stays
    narrow; a study made by an earlier ftsweep keeps it as a user attribute, read the same way and
    moved by the next ``resume`` (:func:`save_sweep_record`).
    """
    from orchestrator.store_adapter import study_system_attrs

    return _pick_record(study_system_attrs(study), study.user_attrs)


def _pick_record(system_attrs: dict[str, Any], user_attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The one rule: the system attribute, else (a study made by an earlier ftsweep) the user attribute."""
    return system_attrs.get(SWEEP_ATTR) or user_attrs.get(SWEEP_ATTR) or None


def sweep_records(connection: Any, study_id: int | None = None) -> dict[int, dict[str, Any]]:
    """{study id: sweep record} read with SQL from Optuna's tables (every study, or ``study_id``'s),
    by the rule of :func:`sweep_record`; for the views that skip Optuna's API (``status``, ``studies``)."""
    import json

    from sqlalchemy import text

    which = {"k": SWEEP_ATTR} if study_id is None else {"k": SWEEP_ATTR, "s": study_id}
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for table in ("study_system_attributes", "study_user_attributes"):
        query = f"SELECT study_id, value_json FROM {table} WHERE key = :k"
        rows = connection.execute(text(query if study_id is None else query + " AND study_id = :s"), which)
        found[table] = {row_id: {SWEEP_ATTR: json.loads(value)} for row_id, value in rows}
    system, user = found["study_system_attributes"], found["study_user_attributes"]
    records = {
        row_id: _pick_record(system.get(row_id, {}), user.get(row_id, {})) for row_id in {*system, *user}
    }
    return {row_id: record for row_id, record in records.items() if record}


def save_sweep_record(study: optuna.Study, record: dict[str, Any]) -> None:
    """Keep ``record`` (:func:`sweep_record`'s form) with the study, as a system attribute.

    A study made by an earlier ftsweep has its record (and version) moved out of its user attributes,
    which ``optuna studies`` prints as one column about 900 characters wide. The new record is
    written before the old one is removed: a save stopped halfway leaves a study that reads the same.
    """
    from orchestrator.store_adapter import delete_study_user_attr, set_study_system_attr, study_system_attrs

    system, user = study_system_attrs(study), study.user_attrs
    if system.get(SWEEP_ATTR) != record:
        set_study_system_attr(study, SWEEP_ATTR, record)
    if VERSION_ATTR not in system:
        set_study_system_attr(study, VERSION_ATTR, user.get(VERSION_ATTR, _version()))
    for key in (SWEEP_ATTR, VERSION_ATTR):
        if key in user:
            delete_study_user_attr(study, key)


def stored_sweep(study: optuna.Study, opened: StoreLocation | None = None) -> Sweep:
    """The sweep file kept with the study by ``ftsweep run``.

    Args:
        opened: the store the study was opened at, when it may have moved since it was stored
            (:func:`rebase_on_store`).

    Raises:
        StudyNotFound: for a study that ftsweep did not create.
    """
    stored = sweep_record(study)
    if not stored:
        raise StudyNotFound(f"study {study.study_name!r} was not created by ftsweep (it holds no sweep file)")
    raw, base_dir = copy.deepcopy(stored["sweep"]), Path(stored["base_dir"])
    if opened is not None:
        raw, base_dir = rebase_on_store(raw, base_dir, opened)
    return validate_sweep(raw, base_dir=base_dir, source=f"study {study.study_name}")


def rebase_on_store(
    raw: dict[str, Any], base_dir: Path, opened: StoreLocation
) -> tuple[dict[str, Any], Path]:
    """A stored sweep made to follow its SQLite store when the store was moved or copied.

    The rule: what sat in the study store's folder (or below it) when the sweep was stored
    stays beside the store that is opened now. A SQLite MLflow store there is used (or created)
    beside the opened store; an absolute ``execution.checkpoint_dir`` there moves with it; the
    sweep file's folder (data, model, a relative checkpoint folder) moves with it when it
    exists beside the opened store. Anything else keeps its absolute place. The stored
    ``study.storage`` becomes the store actually opened.
    """
    raw = copy.deepcopy(raw)
    move = store_move(raw, opened)
    raw.setdefault("study", {})["storage"] = opened.display
    if move is None:
        return raw, base_dir
    old_root, new_root = move

    def moved(path: Path) -> Path | None:
        return (
            new_root / path.relative_to(old_root)
            if path.is_absolute() and path.is_relative_to(old_root)
            else None
        )

    tracking = raw.get("tracking") or {}
    uri = tracking.get("mlflow_uri")
    try:
        mlflow_file = TrackingLocation.resolve(uri).sqlite_file if isinstance(uri, str) else None
    except ConfigError:
        mlflow_file = None
    if mlflow_file is not None and (target := moved(mlflow_file)) is not None:
        raw["tracking"] = {**tracking, "mlflow_uri": f"sqlite:///{target}"}
    execution = raw.get("execution") or {}
    checkpoints = execution.get("checkpoint_dir")
    if isinstance(checkpoints, str) and (target := moved(Path(checkpoints).expanduser())) is not None:
        raw["execution"] = {**execution, "checkpoint_dir": str(target)}
    if (target := moved(base_dir)) is not None and target.is_dir():
        base_dir = target
    return raw, base_dir


def store_move(raw: dict[str, Any], opened: StoreLocation) -> tuple[Path, Path] | None:
    """(the SQLite store's folder when the sweep was stored, the folder it is opened in), when they differ."""
    before = (raw.get("study") or {}).get("storage")
    try:
        old_file = StoreLocation.resolve(before).sqlite_file if isinstance(before, str) else None
    except ConfigError:
        old_file = None
    if old_file is None or opened.sqlite_file is None or old_file.parent == opened.sqlite_file.parent:
        return None
    return old_file.parent, opened.sqlite_file.parent


def sweep_for_store(sweep: Sweep, opened: StoreLocation | None = None) -> Sweep:
    """The sweep as the study keeps it (and the MLflow parent run shows it): no password, no relative path.

    ``study.storage`` is the store actually opened (``opened``, else the sweep's own), masked;
    ``tracking.mlflow_uri`` and ``study.warm_start.storage`` are kept as written when they refer to
    ``${NAME}``, else made absolute and masked. A masked password is not kept anywhere: ``resume``
    takes it from ``--storage``, ``$FTSWEEP_STORAGE`` / ``$MLFLOW_TRACKING_URI``, ``PGPASSWORD`` /
    ``~/.pgpass``.
    """
    raw = copy.deepcopy(sweep.raw)
    location = opened or sweep.store
    raw["study"] = {**raw.get("study", {}), "storage": location.display}
    tracking = raw.get("tracking", {})
    raw["tracking"] = {**tracking, "mlflow_uri": stored_form(tracking.get("mlflow_uri"), sweep.tracking_uri)}
    warm_start = raw["study"].get("warm_start")
    if isinstance(warm_start, dict) and isinstance(warm_start.get("storage"), str):
        given = warm_start["storage"]
        try:
            resolved = StoreLocation.resolve(given, key="study.warm_start.storage").url
        except ConfigError:
            resolved = given
        raw["study"]["warm_start"] = {**warm_start, "storage": stored_form(given, resolved)}
    return validate_sweep(raw, base_dir=sweep.base_dir, source=sweep.source)


def make_sampler(sweep: Sweep, space: SearchSpace, n_workers: int, seed_offset: int = 0) -> Any:
    """The Optuna sampler ``study.sampler`` names.

    With several workers, TPE uses the constant liar so that trials in flight are not proposed
    twice. ``seed_offset`` (the number of trials already in a resumed study) keeps a resumed
    sampler from replaying the random start-up proposals it made before.
    """
    import optuna

    config = sweep.study.sampler
    seed = None if config.seed is None else config.seed + seed_offset
    options = config.options
    name = config.name
    if sweep.multi_objective and "name" not in ((sweep.raw.get("study") or {}).get("sampler") or {}):
        name = "nsga2"  # several objectives: NSGA-II unless the sweep file names a sampler (tpe on request)
    factories: dict[str, Any] = {
        "nsga2": optuna.samplers.NSGAIISampler,
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
        "qmc": optuna.samplers.QMCSampler,
        "grid": _AskTellGridSampler,
    }
    if name == "tpe" and n_workers > 1:
        options.setdefault("constant_liar", True)
    if name == "grid":
        options = {"search_space": space.grid(), **options}
    try:
        return factories[name](seed=seed, **options)
    except TypeError as error:
        raise ConfigError(
            f"study.sampler: {name} does not accept these options ({error})", source=sweep.source
        ) from None


#: Said once when a study of several objectives starts (the session says it).
MULTI_OBJECTIVE_NOTE = (
    "note: several objectives ({metrics}): Optuna's pruners take one value, so no trial is pruned "
    "(study.pruner is not used)"
)


def make_pruner(sweep: Sweep, max_epochs: int | None) -> Any:
    """The Optuna pruner ``study.pruner`` names; step = epoch.

    ``asha`` on the local backend is Optuna's SuccessiveHalvingPruner, which is ASHA. A study of several
    objectives is not pruned (Optuna's pruners take one value): see :data:`MULTI_OBJECTIVE_NOTE`.
    """
    import optuna

    config = sweep.study.pruner
    if sweep.multi_objective:
        return optuna.pruners.NopPruner()
    options = config.options
    pruners = optuna.pruners
    try:
        if config.name == "none":
            return pruners.NopPruner()
        if config.name == "median":
            return pruners.MedianPruner(**{"n_startup_trials": 4, "n_warmup_steps": 0, **options})
        if config.name in ("successive_halving", "asha"):
            return pruners.SuccessiveHalvingPruner(**options)
        if config.name == "hyperband":
            defaults: dict[str, Any] = {"min_resource": 1}
            if max_epochs:
                defaults["max_resource"] = max_epochs
            return pruners.HyperbandPruner(**{**defaults, **options})
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"study.pruner: {config.name} does not accept these options ({error})", source=sweep.source
        ) from None
    raise ConfigError(f"study.pruner.name: unknown pruner {config.name!r}", source=sweep.source)


def grid_size(space: SearchSpace) -> int:
    size = 1
    for values in space.grid().values():
        size *= len(values)
    return size


def _make_ask_tell_grid() -> type:
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """Optuna's GridSampler, minus its ``study.stop()`` when the grid is done.

        ``study.stop()`` only works inside ``optimize()``; with ask/tell it raises. ftsweep caps
        the budget at the grid's size instead.
        """

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return AskTellGridSampler


def _AskTellGridSampler(**kwargs: Any) -> Any:  # noqa: N802 - a factory standing in for a class
    return _make_ask_tell_grid()(**kwargs)


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """A finished trial that uses up budget: complete, pruned, or failed on its own account.

    A trial failed because its process was interrupted (a killed driver, Ctrl-C) is re-run,
    and only the re-run counts. A trial ``study.warm_start`` copied from an earlier study never ran
    here: the budget counts the trials this study ran.
    """
    from optuna.trial import TrialState

    if is_warm_started(trial):
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED_ATTR)


def is_warm_started(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``study.warm_start`` copied the trial from an earlier study (it never ran in this one)."""
    return bool(trial.user_attrs.get(WARM_START_ATTR))


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials this study ran that no other such trial dominates (at least as good on every
    objective, better on one), by number. Trials ``study.warm_start`` copied are left out, as in
    :func:`orchestrator.report.best_trial`; of trials with the same values, each is on the front."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    signs = [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and not is_warm_started(t)
    ]
    costs = {t.number: [sign * float(v) for sign, v in zip(signs, t.values, strict=True)] for t in trials}
    on_front = set(front_numbers(costs))
    return [t for t in sorted(trials, key=lambda t: t.number) if t.number in on_front]


def front_numbers(costs: dict[int, list[float]]) -> list[int]:
    """The trial numbers whose costs (every objective to be minimized) no other trial's dominate, sorted.

    Taken in lexicographic order of their costs, a trial can be dominated only by one before it, and
    (dominance being transitive) only by one already on the front: n x (size of the front) comparisons,
    so a study of thousands of trials is read in a blink.
    """
    front: list[tuple[int, list[float]]] = []
    for number, cost in sorted(costs.items(), key=lambda item: (item[1], item[0])):
        if not any(_dominates(other, cost) for _, other in front):
            front.append((number, cost))
    return sorted(number for number, _ in front)


def _dominates(a: list[float], b: list[float]) -> bool:
    """``a`` is no worse than ``b`` on every objective and better on one (both to be minimized)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ftsweep")
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        return "unknown"
