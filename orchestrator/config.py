"""The sweep file: typed models, one loader, ``--set a.b=value`` overrides.

Every problem in a sweep file is collected into one :class:`~orchestrator.errors.ConfigError`
whose lines name the file, the key path, the value received and what is allowed.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ftsweep_common.errors import ConfigError
from ftsweep_common.yaml_io import describe_validation_error, read_yaml_mapping  # also imported from here
from orchestrator.storage import (
    DEFAULT_STORAGE,
    DEFAULT_TRACKING_URI,
    STORAGE_ENV,
    TRACKING_ENV,
    StoreLocation,
    TrackingLocation,
)

DEFAULT_TRAINER = "text-classification"
DIRECTIONS = ("maximize", "minimize")

SamplerName = Literal["tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2"]
PrunerName = Literal["none", "median", "successive_halving", "hyperband", "asha"]
#: The names ``study.sampler.name`` / ``study.pruner.name`` take (one list: the schema's).
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
PRUNERS: tuple[str, ...] = get_args(PrunerName)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SamplerConfig(BaseModel):
    """``study.sampler``: the Optuna sampler by name; other keys go to its constructor."""

    model_config = ConfigDict(extra="allow")
    name: SamplerName = "tpe"
    seed: int | None = Field(None, description="Seed of the sampler; same seed, same proposals.")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PrunerConfig(BaseModel):
    """``study.pruner``: the Optuna pruner by name; other keys go to its constructor."""

    model_config = ConfigDict(extra="allow")
    name: PrunerName = "median"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class WarmStartConfig(_Strict):
    """``study.warm_start``: seed a new study with the finished trials of an earlier one."""

    study: str = Field(min_length=1, description="The earlier study's name.")
    storage: str | None = Field(
        None, description="Its storage URL (${NAME} expanded); default this study's storage."
    )
    top_k: int | None = Field(None, ge=1, description="Only its best top_k complete trials; default all.")


class StudyConfig(_Strict):
    name: str = Field(min_length=1, max_length=200, description="The study's name in the storage.")
    storage: str | None = Field(
        None, description=f"SQLAlchemy URL; default ${STORAGE_ENV} or {DEFAULT_STORAGE}."
    )
    # Neither has a default here: the trainer supplies them (see with_trainer_defaults).
    metric: str = Field(
        description="The metric the study optimizes; any metric the trainer reports (a list: several)."
    )
    direction: Literal["maximize", "minimize"] = Field(description="Which way the metric improves.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    n_trials: int = Field(20, ge=1, description="Finished trials the study runs, across all workers.")
    timeout: float | None = Field(
        None, gt=0, description="Stop starting trials after this long: 90s, 30m, 2h."
    )
    max_failures: int | None = Field(None, ge=1, description="Stop the study after this many failed trials.")
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Configurations (parameter: value) the new study runs first, before any sampling.",
    )
    warm_start: WarmStartConfig | None = Field(
        None, description="An earlier study whose finished trials seed the new study's sampler."
    )

    @field_validator("enqueue", mode="before")
    @classmethod
    def _enqueue_entries(cls, value: Any) -> Any:
        example = "{learning_rate: 2.0e-5, weight_decay: 0.01}"
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError(f"must be a list of mappings of parameter to value, e.g. [{example}]")
        for index, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise ValueError(
                    f"entry [{index}] is {entry!r}, not a mapping of parameter to value such as {example}"
                )
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _parse_timeout(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("name")
    @classmethod
    def _name_is_printable(cls, value: str) -> str:
        if value.strip() != value or any(ch in value for ch in "\n\r\t"):
            raise ValueError("must not start or end with spaces or hold line breaks")
        return value


class TrainerConfig(BaseModel):
    """``trainer``: ``name`` and ``params`` here; every other key belongs to the trainer's own settings."""

    model_config = ConfigDict(extra="allow")
    name: str = DEFAULT_TRAINER
    params: dict[str, Any] = Field(default_factory=dict)


class ExecutionConfig(_Strict):
    backend: Literal["local", "ray"] = "local"
    workers: int | Literal["auto"] = Field(
        "auto", description="Trials at once; auto = one per GPU slot, 1 on CPU."
    )
    gpus_per_trial: float = Field(1.0, ge=0, description="0.5 packs two trials on a GPU; 0 runs on the CPU.")
    cpus_per_trial: float | None = Field(
        None, gt=0, description="CPU threads (local) or CPUs (Ray) per trial."
    )
    checkpoint_dir: str | None = Field(
        None, description="Folder for trial checkpoints; default next to the SQL file."
    )
    keep_best_checkpoint: bool = Field(
        True, description="Keep the best trial's checkpoint and log it to MLflow."
    )
    ray_address: str | None = Field(
        None, description="An existing Ray cluster ('auto'); omitted: a local Ray."
    )
    max_concurrent_trials: int | None = Field(None, ge=1)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be 'auto' or a whole number of at least 1")
        if isinstance(value, str) and value != "auto":
            if value.isdigit():
                return int(value)
            raise ValueError("must be 'auto' or a whole number of at least 1")
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 'auto' or a whole number of at least 1")
        return value


class TrackingConfig(_Strict):
    mlflow_uri: str | None = Field(None, description=f"Default ${TRACKING_ENV} or {DEFAULT_TRACKING_URI}.")
    experiment: str | None = Field(None, description="MLflow experiment; default the study name.")
    enabled: bool = True


class SweepModel(_Strict):
    study: StudyConfig
    trainer: TrainerConfig
    search_space: str | dict[str, Any] = Field(
        description="A shipped space's name, a YAML file or a mapping."
    )
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


@dataclass
class Sweep:
    """A validated sweep file.

    Attributes:
        model: the validated sections.
        raw: the mapping as read (after overrides); stored with the study.
        base_dir: the sweep file's folder: data, model and search-space paths resolve against it.
        source: the file name used in messages.
    """

    model: SweepModel
    raw: dict[str, Any]
    base_dir: Path
    source: str

    #: Every objective's metric and direction: ``study.metric`` as a list makes a multi-objective study
    #: (``model.study.metric`` / ``direction`` are then the first objective's, what a trial ranks epochs by).
    metrics: tuple[str, ...] = ()
    directions: tuple[str, ...] = ()

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def study(self) -> StudyConfig:
        return self.model.study

    @property
    def trainer(self) -> TrainerConfig:
        return self.model.trainer

    @property
    def execution(self) -> ExecutionConfig:
        return self.model.execution

    @property
    def tracking(self) -> TrackingConfig:
        return self.model.tracking

    @property
    def store(self) -> StoreLocation:
        """The storage this sweep names (``study.storage``, else ``$FTSWEEP_STORAGE``, else the default),
        resolved.

        A resumed study is opened at ``--storage`` instead: the runner passes that location on.
        """
        return StoreLocation.resolve(self.study.storage)

    @property
    def storage_url(self) -> str:
        """``store.url``: may carry a password; display ``store.display``."""
        return self.store.url

    @property
    def tracking_location(self) -> TrackingLocation:
        """The MLflow tracking store (``tracking.mlflow_uri``, else ``$MLFLOW_TRACKING_URI``, else the
        default)."""
        return TrackingLocation.resolve(self.tracking.mlflow_uri)

    @property
    def tracking_uri(self) -> str:
        """``tracking_location.uri``: may carry a password; display ``tracking_location.display``."""
        return self.tracking_location.uri

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.study.name

    def trainer_settings(self) -> dict[str, Any]:
        """The ``trainer`` section less ``name`` and ``params``: the trainer's own settings."""
        return {k: v for k, v in self.raw.get("trainer", {}).items() if k not in ("name", "params")}

    def to_stored(self) -> dict[str, Any]:
        """What the study keeps of this sweep so that resume needs only the study's name."""
        return {"sweep": self.raw, "base_dir": str(self.base_dir), "source": self.source}


def literal_override(key: str, value: str) -> str:
    """An ``a.b=value`` override that sets ``value`` as the string it is.

    A command-line flag's value (``--storage``, ``--ray-address``) is a string: read as YAML, a
    password holding `` #`` would be cut at the comment, and ``yes`` or ``123`` would change type.
    A JSON string is a YAML double-quoted scalar, so the override parser reads it back unchanged.
    """
    return f"{key}={json.dumps(value)}"


_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$"
)


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"`` or ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 90s, 30m, 2h or a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        match = _DURATION.match(value)
        if match and any(match.groups()):
            days, hours, minutes, seconds = (float(group or 0) for group in match.groups())
            return days * 86400 + hours * 3600 + minutes * 60 + seconds
    raise ValueError("must be a duration such as 90s, 30m, 2h or a number of seconds")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values read as YAML) to a copy of ``raw``."""
    result = copy.deepcopy(raw)
    problems = []
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip() or any(not part.strip() for part in key.split(".")):
            problems.append(f"--set {override!r}: expected key.path=value, e.g. trainer.epochs=2")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = result
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(
                    f"--set {key}: {'.'.join(parts[: depth + 1])} is {child!r}, not a mapping, so it has no "
                    f"key {parts[depth + 1]!r}"
                )
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return result


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read, override and validate a sweep file.

    Raises:
        ConfigError: with every problem found, each naming its key path.
    """
    path = Path(path)
    raw = apply_overrides(read_yaml_mapping(path), overrides or [])
    return validate_sweep(raw, base_dir=path.resolve().parent, source=str(path))


def validate_sweep(raw: dict[str, Any], base_dir: Path, source: str) -> Sweep:
    """Validate a sweep mapping (from a file or from a study's store).

    The returned sweep's ``raw`` holds the trainer's defaults (:func:`with_trainer_defaults`), so
    a stored study keeps the metric and the space it was created with.
    """
    try:
        raw = with_trainer_defaults(raw)
    except ConfigError as error:
        raise ConfigError(error.problems, source=source) from None
    metrics, directions, problems = _objectives(raw)
    first = _with_first_objective(raw, metrics, directions) if metrics else raw
    try:
        model = SweepModel.model_validate(first)
    except ValidationError as error:
        raise ConfigError(problems + describe_validation_error(error, SweepModel), source=source) from None
    if problems:
        raise ConfigError(problems, source=source)
    if not metrics:
        metrics, directions = (model.study.metric,), (model.study.direction,)
    return Sweep(
        model=model, raw=raw, base_dir=Path(base_dir), source=source, metrics=metrics, directions=directions
    )


def _objectives(raw: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """``study.metric`` / ``study.direction`` given as lists (several objectives): (metrics, directions,
    problems); empty tuples when they are single values (the schema checks those)."""
    study = raw.get("study")
    if not isinstance(study, dict):
        return (), (), []
    metric, direction = study.get("metric"), study.get("direction")
    if not isinstance(metric, list) and not isinstance(direction, list):
        return (), (), []
    metrics = metric if isinstance(metric, list) else [metric]
    directions = direction if isinstance(direction, list) else [direction]
    example = "study.metric: [val_f1, generalization_gap] with study.direction: [maximize, minimize]"
    problems = []
    if not metrics or not all(isinstance(m, str) and m for m in metrics):
        problems.append(f"study.metric: {metric!r} is not a list of metric names; e.g. {example}")
    elif len(set(metrics)) != len(metrics):
        problems.append(f"study.metric: {metric!r} names a metric twice; each objective is one metric")
    if not all(d in DIRECTIONS for d in directions):
        problems.append(
            f"study.direction: {direction!r}: each direction must be one of {', '.join(DIRECTIONS)}"
        )
    if not problems and len(metrics) != len(directions):
        problems.append(
            f"study.direction: {len(directions)} direction(s) for {len(metrics)} metric(s) in study.metric; "
            f"give one per metric, e.g. {example}"
        )
    if problems:
        return (), (), problems
    return tuple(metrics), tuple(directions), []


def _with_first_objective(
    raw: dict[str, Any], metrics: tuple[str, ...], directions: tuple[str, ...]
) -> dict[str, Any]:
    """``raw`` with the first objective as ``study.metric`` / ``study.direction``, for the schema."""
    return {**raw, "study": {**raw["study"], "metric": metrics[0], "direction": directions[0]}}


def with_trainer_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with ``study.metric``, ``study.direction`` and ``search_space`` filled in from the trainer.

    What a trial reports and what it can search belong to the trainer, not to the sweep schema:
    the trainer class supplies them from the ``trainer`` section (``default_metric_for``,
    ``direction_of(metric)``, ``default_search_space_for``: the text recipe's ``task: regression``
    defaults to ``val_rmse``, minimized). The class is imported only when the file leaves one of them out;
    a trainer without a default leaves the key missing, and validation says it is required.

    Raises:
        ConfigError: for ``trainer.name`` when a default is needed and the trainer cannot be loaded.
    """
    study = raw.get("study")
    study_incomplete = isinstance(study, dict) and not {"metric", "direction"} <= set(study)
    if not study_incomplete and "search_space" in raw:
        return raw
    trainer = raw.get("trainer")
    name = trainer.get("name", DEFAULT_TRAINER) if isinstance(trainer, dict) else DEFAULT_TRAINER
    if not isinstance(name, str):
        return raw  # validation names the bad trainer.name
    from trainers.base import load_trainer_class

    trainer_cls = load_trainer_class(name)
    trainer_section = trainer if isinstance(trainer, dict) else {}
    filled = dict(raw)
    if isinstance(study, dict) and study_incomplete:
        study = dict(study)
        default_metric = trainer_cls.default_metric_for(trainer_section)
        if "metric" not in study and default_metric is not None:
            study["metric"] = default_metric
        if "direction" not in study and isinstance(study.get("metric"), str):
            study["direction"] = trainer_cls.direction_of(study["metric"])
        elif "direction" not in study and isinstance(study.get("metric"), list):
            metrics = study["metric"]
            if all(isinstance(metric, str) for metric in metrics):
                study["direction"] = [trainer_cls.direction_of(metric) for metric in metrics]
        filled["study"] = study
    default_space = trainer_cls.default_search_space_for(trainer_section)
    if "search_space" not in raw and default_space is not None:
        filled["search_space"] = default_space
    return filled
