"""From a validated sweep file to everything a backend needs to run trials.

:func:`plan_sweep` checks that the backend can run here, builds the trainer, checks its data
and model, loads and resolves the search space, checks that the search space and the fixed
parameters are ones the trainer takes, and that the sampler, the pruner and the checkpoint
folder are usable, all before the store, the study or an MLflow run is created, so a mistake
costs seconds and leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from orchestrator.config import Sweep, describe_validation_error
from orchestrator.errors import ConfigError
from search_spaces import SearchSpace, load_search_space
from trainers.base import BaseTrainer, load_trainer_class

if TYPE_CHECKING:
    from orchestrator.warm_start import WarmStart


@dataclass
class SweepPlan:
    """A sweep ready to run.

    Attributes:
        sweep: the validated sweep file.
        trainer_cls: the trainer class (built-in or the user's).
        trainer: a trainer built in the driver (checked; cheap to keep).
        space: the search space with symbols resolved and fixed parameters removed.
        fixed_params: parameters the sweep file fixes (``trainer.params`` and settings such as ``epochs``).
        warm_start: the earlier study's trials a new study starts from (``study.warm_start``), or None.
    """

    sweep: Sweep
    trainer_cls: type[BaseTrainer]
    trainer: BaseTrainer
    space: SearchSpace
    fixed_params: dict[str, Any]
    warm_start: WarmStart | None = None

    def trial_params(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Every parameter of a trial: the fixed ones, overridden by the sampled ones."""
        return {**self.fixed_params, **sampled}

    @property
    def max_epochs(self) -> int | None:
        """The most epochs any trial reports: a searched ``epochs`` counts at its upper bound."""
        spec = self.space.specs.get("epochs")
        if spec is not None and spec.high is not None:
            return int(float(spec.high))
        return self.trainer.max_epochs(self.fixed_params)


def build_trainer(sweep: Sweep) -> tuple[type[BaseTrainer], BaseTrainer]:
    """The trainer class and a trainer built from the sweep's ``trainer`` settings."""
    trainer_cls = load_trainer_class(sweep.trainer.name)
    try:
        settings = trainer_cls.Settings.model_validate(sweep.trainer_settings())
    except ValidationError as error:
        raise ConfigError(
            describe_validation_error(error, trainer_cls.Settings, prefix="trainer."), source=sweep.source
        ) from None
    return trainer_cls, trainer_cls(settings, sweep.base_dir)


def plan_sweep(sweep: Sweep, check_data: bool = True) -> SweepPlan:
    """Check a sweep end to end and return what a backend needs.

    Args:
        sweep: the validated sweep file.
        check_data: also read the data and the model's config (``trainer.check()``).

    Raises:
        ConfigError, DataError, ModelError: one clear message naming the file and key.
    """
    _check_execution(sweep)
    trainer_cls, trainer = build_trainer(sweep)
    if check_data:
        trainer.check()
    fixed = {**trainer.fixed_params(), **sweep.trainer.params}
    problems = _check_params(trainer_cls, fixed)
    if problems:
        raise ConfigError(problems, source=sweep.source)

    raw_space = sweep.raw.get("search_space", sweep.model.search_space)
    try:
        space = load_search_space(raw_space, sweep.base_dir)
        space = space.resolve(trainer.symbols() if _uses_symbols(space) else {})
    except ConfigError as error:
        if error.source is not None:
            raise
        raise ConfigError(error.problems, source=sweep.source) from None
    space = space.without(set(fixed))
    problems = _check_space(trainer_cls, space, fixed)
    if check_data and not problems:
        problems = _check_against_trainer(sweep, trainer, space, fixed)
    reported = trainer.reported_metrics()
    for metric in sweep.metrics:
        if reported and metric not in reported:
            problems.append(
                f"study.metric: {metric!r} is not a metric the trainer {trainer_cls.name!r} reports; "
                f"allowed: {', '.join(reported)}"
            )
    if problems:
        raise ConfigError(problems, source=sweep.source)
    plan = SweepPlan(sweep, trainer_cls, trainer, space, fixed)
    problems = _check_enqueue(plan, check_data)
    if problems:
        raise ConfigError(problems, source=sweep.source)
    _check_sampler_and_pruner(plan)
    if sweep.study.warm_start is not None:
        from orchestrator.warm_start import read_warm_start

        plan.warm_start = read_warm_start(sweep, space)
    return plan


def _check_execution(sweep: Sweep) -> None:
    """The backend is installed and the checkpoint folder can be a folder (nothing is created)."""
    from orchestrator.backends import check_backend

    try:
        check_backend(sweep.execution.backend)
    except ConfigError as error:
        raise ConfigError(error.problems, source=sweep.source) from None
    configured = sweep.execution.checkpoint_dir
    if configured:
        path = Path(configured).expanduser()
        path = path if path.is_absolute() else sweep.base_dir / path
        # The nearest part of the path that exists must be a folder, or no trial can checkpoint.
        existing = next((part for part in (path, *path.parents) if part.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ConfigError(
                f"execution.checkpoint_dir: {path} is not a folder ({existing} is a file); "
                "give a folder, or leave it out for one next to the study's store",
                source=sweep.source,
            )


def _check_sampler_and_pruner(plan: SweepPlan) -> None:
    """Options of ``study.sampler`` / ``study.pruner`` the constructors refuse (a typo) stop here."""
    from orchestrator.study import make_pruner, make_sampler

    make_sampler(plan.sweep, plan.space, 1)
    make_pruner(plan.sweep, plan.max_epochs)


def _uses_symbols(space: SearchSpace) -> bool:
    return any(
        isinstance(getattr(spec, bound), str) for spec in space.specs.values() for bound in ("low", "high")
    )


def _check_params(trainer_cls: type[BaseTrainer], fixed: dict[str, Any]) -> list[str]:
    try:
        trainer_cls.Params.model_validate(fixed)
    except ValidationError as error:
        return describe_validation_error(error, trainer_cls.Params, prefix="trainer.params.")
    return []


def _check_against_trainer(
    sweep: Sweep, trainer: BaseTrainer, space: SearchSpace, fixed: dict[str, Any]
) -> list[str]:
    """The trainer's own check (``check_params``, e.g. against the model) of the fixed parameters and
    of each searched one at the ends of its range."""
    problems = [
        f"{'trainer.params' if name in sweep.trainer.params else 'trainer'}.{name}: {message}"
        for name, message in trainer.check_params(fixed).items()
    ]
    for name, spec in space.specs.items():
        probes = list(spec.choices or []) if spec.type == "categorical" else [spec.low, spec.high]
        for value in probes:
            probe = int(value) if spec.type == "int" else value  # type: ignore[arg-type]
            found = trainer.check_params({**fixed, name: probe})
            if name in found:
                problems.append(f"search_space.{name}: {found[name]}")
                break
    return problems


def _check_space(trainer_cls: type[BaseTrainer], space: SearchSpace, fixed: dict[str, Any]) -> list[str]:
    """Every parameter the space names must be one the trainer takes, over its whole range."""
    allowed = trainer_cls.Params.model_fields
    problems = []
    for name, spec in space.specs.items():
        if name not in allowed:
            problems.append(
                f"search_space.{name}: the trainer {trainer_cls.name!r} takes no parameter {name!r}; "
                f"allowed: {', '.join(allowed)}"
            )
            continue
        probes = list(spec.choices or []) if spec.type == "categorical" else [spec.low, spec.high]
        for value in probes:
            if spec.type == "int":
                value = int(value)  # type: ignore[arg-type]
            try:
                trainer_cls.Params.model_validate({**fixed, name: value})
            except ValidationError as error:
                reasons = [
                    line.split(": ", 1)[-1]
                    for line in describe_validation_error(error, trainer_cls.Params)
                    if line.startswith(name)
                ]
                if reasons:
                    problems.append(f"search_space.{name}: value {value!r} is not allowed: {reasons[0]}")
                    break
    return problems


def _check_enqueue(plan: SweepPlan, check_data: bool) -> list[str]:
    """Each ``study.enqueue`` entry is a point of the search space the trainer takes, and no two are one."""
    from orchestrator.first_trials import FirstTrial, configuration, value_problem

    problems: list[str] = []
    specs = plan.space.specs
    chosen: list[FirstTrial] = []
    for index, entry in enumerate(plan.sweep.study.enqueue):
        key = f"study.enqueue[{index}]"
        found = []
        for name, value in entry.items():
            spec = specs.get(str(name))
            if spec is not None:
                problem = value_problem(spec, value)
                if problem is not None:
                    found.append(f"{key}.{name}: {problem} (search_space.{name})")
            elif name in plan.fixed_params:
                found.append(
                    f"{key}.{name}: fixed to {plan.fixed_params[name]!r} by the sweep file, not searched; "
                    f"remove it here, or search it; searched: {', '.join(specs)}"
                )
            else:
                found.append(
                    f"{key}.{name}: not a parameter of the search space; searched: {', '.join(specs)}"
                )
        if found:
            problems.extend(found)
            continue
        first = configuration(plan, key, entry)
        for name in entry:
            if name not in first.params and specs[name].when:
                condition = " and ".join(
                    f"{other} is one of {allowed}" for other, allowed in (specs[name].when or {}).items()
                )
                found.append(
                    f"{key}.{name}: not used unless {condition} (search_space.{name}.when); remove it, "
                    "or set that here"
                )
        found.extend(_check_point(plan, key, entry, {**plan.fixed_params, **first.params}, check_data))
        earlier = next((other for other in chosen if other.same_configuration(first)), None)
        if earlier is not None and not found:
            found.append(f"{key}: the same configuration as {earlier.name}; remove one of them")
        problems.extend(found)
        chosen.append(first)
    return problems


def _check_point(
    plan: SweepPlan, key: str, entry: dict[str, Any], params: dict[str, Any], check_data: bool
) -> list[str]:
    """What the trainer refuses in an enqueued configuration (its parameter model, then its own check)."""
    try:
        plan.trainer_cls.Params.model_validate(params)
    except ValidationError as error:
        return [
            f"{key}.{line}" if line.split(":", 1)[0] in entry else f"{key}: {line}"
            for line in describe_validation_error(error, plan.trainer_cls.Params)
        ]
    if not check_data:
        return []
    return [
        f"{key}.{name}: {message}" if name in entry else f"{key}: {name}: {message}"
        for name, message in plan.trainer.check_params(params).items()
    ]
