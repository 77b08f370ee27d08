"""``study.warm_start``: a new study starts from the finished trials of an earlier one.

While planning (:func:`read_warm_start`), before anything is created, the earlier study is opened
(never created: a mistyped name or URL is one line naming ``study.warm_start``), checked to
optimize the same metric in the same direction, and its best ``top_k`` complete trials are read
and fitted to this study's search space: a parameter this space does not search, or a value
outside it, is left out of the trial and named in a warning; a trial left with no parameter is not
added. Nothing is read for a study that already exists: a warm start happens once, when
``ftsweep run`` creates the study, and ``resume`` never adds the trials again.

When the study is created (:meth:`WarmStart.add_to`, called by
:func:`orchestrator.first_trials.enqueue_first_trials`), the trials are added as complete trials
(Optuna's ``add_trials``) with their values, their parameters (with this space's distributions)
and their intermediate values, so the sampler, and the pruner, start informed. Each is marked
with :data:`orchestrator.study.WARM_START_ATTR`: they are not this study's trials, so they do not
count toward its budget (:func:`orchestrator.study.counts_toward_budget`) and ``ftsweep final``
refuses them (they never ran here).

The earlier study's storage URL is resolved like ``study.storage`` (``${NAME}`` expanded) and
only ever shown masked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError, StorageError, StudyNotFound
from orchestrator.first_trials import as_space_value, value_problem
from orchestrator.storage import StoreLocation
from orchestrator.study import REASON_ATTR, WARM_START_ATTR, is_warm_started

if TYPE_CHECKING:
    import optuna

    from orchestrator.config import Sweep
    from search_spaces import ParamSpec, SearchSpace


@dataclass
class WarmStart:
    """The earlier study's trials, read and fitted to the new study's space while planning.

    Attributes:
        study_name: the earlier study.
        storage: its storage, masked (for messages).
        trials: the trials to add, ready for ``study.add_trials``.
        warnings: one line per parameter left out (naming the trials) and per trial not added.
    """

    study_name: str
    storage: str
    trials: list[optuna.trial.FrozenTrial] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add_to(self, study: optuna.Study, say: Callable[[str], None]) -> int:
        """Add the trials to a new study, once: a study that holds warm-started trials gets none again.

        Returns:
            how many were added.
        """
        if any(is_warm_started(trial) for trial in study.get_trials(deepcopy=False)):
            return 0
        for line in self.warnings:
            say(line)
        study.add_trials(self.trials)
        n = len(self.trials)
        say(
            f"warm start: {n} finished trial{'' if n == 1 else 's'} of study {self.study_name!r} "
            f"({self.storage}) added; the sampler starts from them, the budget counts this study's own trials"
        )
        return n


def read_warm_start(sweep: Sweep, space: SearchSpace) -> WarmStart | None:
    """The trials ``study.warm_start`` names, fitted to ``space``; None without one, or when the sweep's
    own study already exists (a resume: the warm start was applied when it was created).

    Raises:
        ConfigError: naming ``study.warm_start.storage`` / ``.study`` when the earlier study cannot be
            opened, or optimizes another metric or direction.
    """
    config = sweep.study.warm_start
    if config is None or _own_study_exists(sweep):
        return None
    key = "study.warm_start.storage" if config.storage is not None else "study.storage"
    location = StoreLocation.resolve(config.storage, key=key) if config.storage is not None else sweep.store
    source = _open_source(sweep, location, config.study)
    _check_objectives(sweep, source)
    return fit_trials(source, space, config.top_k, location.display)


def _own_study_exists(sweep: Sweep) -> bool:
    """Whether the sweep's study is already in its store (resume). A store that cannot be read here
    counts as holding it: then the store is not the one a new study is about to be created in (a
    resumed study's stored URL, its password masked), or creating it fails anyway."""
    import sqlalchemy

    from orchestrator.study import null_pool_engine

    try:
        location = sweep.store
    except ConfigError:
        return True
    if location.sqlite_file is not None and not location.sqlite_file.exists():
        return False
    try:
        engine = null_pool_engine(location)
    except StorageError:
        return True
    try:
        with engine.connect() as connection:
            if not sqlalchemy.inspect(connection).has_table("studies"):
                return False
            found = connection.execute(
                sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :n"), {"n": sweep.study.name}
            ).first()
            return found is not None
    except sqlalchemy.exc.SQLAlchemyError:
        return True
    finally:
        engine.dispose()


def _open_source(sweep: Sweep, location: StoreLocation, name: str) -> optuna.Study:
    """The earlier study, opened without creating anything."""
    import optuna

    from orchestrator.study import open_existing_storage, study_names

    def refuse(problem: str) -> ConfigError:
        return ConfigError(problem, source=sweep.source)

    where = location.display
    if location.sqlite_file is not None and not location.sqlite_file.exists():
        raise refuse(
            f"study.warm_start.storage: {where} does not exist; give the storage URL of study {name!r} "
            "(left out, it is this study's own storage)"
        )
    try:
        storage = open_existing_storage(location, name)
    except StudyNotFound:
        raise refuse(
            f"study.warm_start.storage: {where} holds no Optuna studies, so no study {name!r}"
        ) from None
    except StorageError as error:
        raise refuse(f"study.warm_start.storage: {error}") from None
    names = study_names(storage)
    if name not in names:
        raise refuse(
            f"study.warm_start.study: no study {name!r} in {where}; studies there: "
            f"{', '.join(sorted(names)) or 'none'}"
        )
    return optuna.load_study(study_name=name, storage=storage)


def _objectives(sweep: Sweep) -> tuple[list[str], list[str]]:
    """(metrics, directions) of the sweep, one or several."""
    return list(sweep.metrics), list(sweep.directions)


def _check_objectives(sweep: Sweep, source: optuna.Study) -> None:
    """The earlier study's values mean the same as this study's: same metrics, same directions."""
    metrics, directions = _objectives(sweep)
    theirs = [direction.name.lower() for direction in source.directions]
    name = source.study_name
    problem = None
    if theirs != directions:
        problem = (
            f"study {name!r} was to {' / '.join(theirs)} its values, this study is to "
            f"{' / '.join(directions)} {', '.join(metrics)}"
        )
    elif source.metric_names is not None and list(source.metric_names) != metrics:
        problem = (
            f"study {name!r} optimized {', '.join(source.metric_names)}, this study {', '.join(metrics)}"
        )
    if problem:
        raise ConfigError(
            f"study.warm_start.study: {problem}; its values would mislead the sampler: warm-start from a "
            "study of the same metric",
            source=sweep.source,
        )


def fit_trials(source: optuna.Study, space: SearchSpace, top_k: int | None, where: str) -> WarmStart:
    """The best ``top_k`` complete trials of ``source`` that it ran itself, as trials of ``space``.

    Best by the first objective; the trials keep their order (by number).
    """
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    name = source.study_name
    complete = [
        trial
        for trial in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if trial.values and not is_warm_started(trial)
    ]
    sign = -1.0 if source.directions[0] == StudyDirection.MAXIMIZE else 1.0
    best = sorted(complete, key=lambda trial: (sign * trial.values[0], trial.number))[:top_k]
    warm = WarmStart(name, where)
    not_searched: dict[str, list[int]] = {}
    for trial in sorted(best, key=lambda trial: trial.number):
        params: dict[str, Any] = {}
        distributions: dict[str, Any] = {}
        for param, value in trial.params.items():
            spec = space.specs.get(param)
            if spec is None:
                not_searched.setdefault(param, []).append(trial.number)
                continue
            problem = value_problem(spec, value)
            if problem is not None:
                warm.warnings.append(
                    f"warm start: trial {trial.number} of study {name!r}: {param}: {problem} in this search "
                    "space; left out of the trial"
                )
                continue
            params[param] = as_space_value(spec, value)
            distributions[param] = distribution(spec)
        if not params:
            warm.warnings.append(
                f"warm start: trial {trial.number} of study {name!r} has no parameter this search space "
                "takes; not added"
            )
            continue
        warm.trials.append(_as_new_trial(trial, name, params, distributions))
    for param, numbers in not_searched.items():
        which = f"trial{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"
        warm.warnings.insert(
            0, f"warm start: {param} is not searched in this study; left out of {which} of study {name!r}"
        )
    return warm


def _as_new_trial(
    trial: optuna.trial.FrozenTrial, source: str, params: dict[str, Any], distributions: dict[str, Any]
) -> optuna.trial.FrozenTrial:
    from optuna.trial import TrialState, create_trial

    return create_trial(
        state=TrialState.COMPLETE,
        values=list(trial.values),
        params=params,
        distributions=distributions,
        intermediate_values=dict(trial.intermediate_values),
        user_attrs={
            WARM_START_ATTR: {"study": source, "trial": trial.number},
            REASON_ATTR: f"warm start: trial {trial.number} of study {source!r}",
        },
    )


def distribution(spec: ParamSpec) -> Any:
    """The Optuna distribution :meth:`SearchSpace.suggest` samples ``spec`` from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if spec.type == "categorical":
        return CategoricalDistribution(list(spec.choices or []))
    if spec.type == "int":
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))  # type: ignore[arg-type]
    return FloatDistribution(float(spec.low), float(spec.high), log=spec.log, step=spec.step)  # type: ignore[arg-type]
