"""Search spaces: loading, validation, and sampling through an Optuna trial.

A search space is a mapping of parameter name to spec::

    learning_rate: {type: float, low: 1.0e-5, high: 3.0e-4, log: true}
    freeze_depth:  {type: int, low: 0, high: num_layers}
    regularizer:   {type: categorical, choices: [none, l1, l2sp]}
    reg_strength:  {type: float, low: 1.0e-5, high: 1.0, log: true, when: {regularizer: [l1, l2sp]}}

``float`` and ``int`` take ``step`` or ``log``; a bound may name a symbol the trainer
provides (``num_layers``), optionally with an offset (``num_layers - 1``). ``when`` makes a
parameter conditional on the values of parameters declared before it (or fixed in the
sweep). Named spaces are the ``*.yaml`` files in this package's folder.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftsweep_common.errors import ConfigError
from ftsweep_common.yaml_io import describe_validation_error, read_yaml_mapping

SPACES_DIR = Path(__file__).resolve().parent
_SYMBOL = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:([+-])\s*(\d+(?:\.\d+)?))?\s*$")

Bound = float | int | str


class ParamSpec(BaseModel):
    """One parameter of a search space."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: Bound | None = None
    high: Bound | None = None
    step: float | None = Field(None, gt=0)
    log: bool = False
    choices: list[Any] | None = None
    when: dict[str, list[Any]] | None = Field(
        None, description="Sample only when these parameters hold these values."
    )

    @field_validator("low", "high", mode="before")
    @classmethod
    def _numeric_text(cls, value: Any) -> Any:
        # YAML 1.1 reads 1e-5 (no dot) as a string; it is a number to anyone writing it.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list 'choices'")
            extra = [name for name in ("low", "high", "step") if getattr(self, name) is not None]
            if extra or self.log:
                raise ValueError(f"a categorical parameter takes 'choices', not {', '.join(extra) or 'log'}")
            for choice in self.choices:
                if not (choice is None or isinstance(choice, bool | int | float | str)):
                    raise ValueError(f"choices must be numbers, strings, booleans or null, not {choice!r}")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not 'choices' (use type: categorical)")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs both 'low' and 'high'")
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, str) and not _SYMBOL.match(value):
                raise ValueError(f"{name} must be a number or a symbol such as num_layers, not {value!r}")
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log: true' cannot be combined (Optuna does not support it)")
        if self.type == "int" and self.step is not None and self.step != int(self.step):
            raise ValueError(f"an int parameter's step must be a whole number, not {self.step}")
        if not isinstance(self.low, str) and not isinstance(self.high, str):
            _check_bounds(self.type, float(self.low), float(self.high), self.log)
        return self


def _check_bounds(kind: str, low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low:g}) must not exceed high ({high:g})")
    if log and low <= 0:
        raise ValueError(f"log: true needs low > 0 (got low={low:g})")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise ValueError(f"an int parameter needs whole-number bounds (got {low:g}..{high:g})")


@dataclass
class SearchSpace:
    """A validated search space, in declaration order.

    Attributes:
        specs: parameter name to spec, in the order they are sampled.
        source: where it came from (a file, a name, or "inline"), for messages.
    """

    specs: dict[str, ParamSpec]
    source: str = "inline"
    symbols: dict[str, float] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def resolve(self, symbols: Mapping[str, float]) -> SearchSpace:
        """A copy whose symbolic bounds (``num_layers``) are numbers.

        Raises:
            ConfigError: for an unknown symbol or bounds that end up inverted.
        """
        problems = []
        resolved: dict[str, ParamSpec] = {}
        for name, spec in self.specs.items():
            updates: dict[str, Any] = {}
            for bound in ("low", "high"):
                value = getattr(spec, bound)
                if isinstance(value, str):
                    try:
                        updates[bound] = _evaluate_symbol(value, symbols)
                    except KeyError as error:
                        known = ", ".join(sorted(symbols)) or "none"
                        problems.append(
                            f"{name}.{bound}: unknown symbol {error.args[0]!r}; "
                            f"this trainer provides: {known}"
                        )
            new = spec.model_copy(update=updates)
            if spec.type != "categorical" and not any(
                isinstance(getattr(new, b), str) for b in ("low", "high")
            ):
                try:
                    _check_bounds(new.type, float(new.low), float(new.high), new.log)  # type: ignore[arg-type]
                except ValueError as error:
                    problems.append(f"{name}: {error}")
            resolved[name] = new
        if problems:
            raise ConfigError(problems, source=f"search space {self.source}")
        return SearchSpace(resolved, self.source, dict(symbols))

    def without(self, names: set[str]) -> SearchSpace:
        """A copy without the named parameters (those the sweep file fixes)."""
        return SearchSpace({k: v for k, v in self.specs.items() if k not in names}, self.source, self.symbols)

    def suggest(
        self, trial: Any, fixed: Mapping[str, Any] | None = None, keep_default: Collection[str] = ()
    ) -> dict[str, Any]:
        """Sample every active parameter through an Optuna trial (``trial.suggest_*``).

        A parameter whose ``when`` is not met by the values sampled so far (or fixed) is skipped, and so
        is one named in ``keep_default`` (the trainer's default applies: a preset first trial whose
        default, such as "the model's own dropout", is not a point of the space).
        """
        context = dict(fixed or {})
        sampled: dict[str, Any] = {}
        for name, spec in self.specs.items():
            if name in keep_default or not is_active(spec, context):
                continue
            if spec.type == "categorical":
                value = trial.suggest_categorical(name, spec.choices)
            elif spec.type == "int":
                value = trial.suggest_int(
                    name,
                    int(spec.low),  # type: ignore[arg-type]
                    int(spec.high),  # type: ignore[arg-type]
                    step=int(spec.step or 1),
                    log=spec.log,
                )
            else:
                value = trial.suggest_float(
                    name,
                    float(spec.low),  # type: ignore[arg-type]
                    float(spec.high),  # type: ignore[arg-type]
                    step=spec.step,
                    log=spec.log,
                )
            sampled[name] = value
            context[name] = value
        return sampled

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter's values for Optuna's GridSampler.

        Raises:
            ConfigError: for a float parameter without ``step``.
        """
        grid: dict[str, list[Any]] = {}
        problems = []
        for name, spec in self.specs.items():
            if spec.type == "categorical":
                grid[name] = list(spec.choices or [])
            elif spec.type == "int" and not spec.log:
                grid[name] = list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))  # type: ignore[arg-type]
            elif spec.step is not None:
                low, high, step = float(spec.low), float(spec.high), float(spec.step)  # type: ignore[arg-type]
                count = int(round((high - low) / step)) + 1
                grid[name] = [
                    round(low + i * step, 12) for i in range(count) if low + i * step <= high + 1e-12
                ]
            else:
                problems.append(
                    f"{name}: the grid sampler needs a 'step' for {spec.type} parameters "
                    "(or make it categorical with explicit 'choices')"
                )
        if problems:
            raise ConfigError(problems, source=f"search space {self.source}")
        return grid

    def to_dict(self) -> dict[str, Any]:
        return {
            name: spec.model_dump(exclude_none=True, exclude_defaults=True) | {"type": spec.type}
            for name, spec in self.specs.items()
        }


def contains(spec: ParamSpec, value: Any) -> bool:
    """True when ``value`` is a point of the (resolved) parameter ``spec``."""
    if spec.type == "categorical":
        return value in (spec.choices or [])
    if isinstance(value, bool) or not isinstance(value, int | float) or value is None:
        return False
    if spec.type == "int" and int(value) != value:
        return False
    return float(spec.low) <= float(value) <= float(spec.high)  # type: ignore[arg-type]


def is_active(spec: ParamSpec, context: Mapping[str, Any]) -> bool:
    """True when every ``when`` condition of ``spec`` holds in ``context``."""
    if not spec.when:
        return True
    return all(name in context and context[name] in allowed for name, allowed in spec.when.items())


def _evaluate_symbol(text: str, symbols: Mapping[str, float]) -> float:
    match = _SYMBOL.match(text)
    assert match is not None  # validated when the spec was built
    name, sign, offset = match.groups()
    if name not in symbols:
        raise KeyError(name)
    value = float(symbols[name])
    if sign:
        value = value + float(offset) if sign == "+" else value - float(offset)
    return value


def available_spaces() -> list[str]:
    """Names of the search spaces shipped in ``search_spaces/``."""
    return sorted(path.stem for path in SPACES_DIR.glob("*.yaml"))


def load_search_space(
    reference: str | Mapping[str, Any], base_dir: Path, key: str = "search_space"
) -> SearchSpace:
    """A search space from a shipped name, a file path (relative to ``base_dir``), or a mapping.

    Raises:
        ConfigError: naming the file and the parameter at fault.
    """
    if isinstance(reference, Mapping):
        return parse_search_space(dict(reference), source=f"{key} (inline)")
    looks_like_path = "/" in reference or reference.endswith((".yaml", ".yml"))
    if looks_like_path:
        path = Path(reference).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        if not path.exists():
            raise ConfigError(f"{key}: no such search space file {path}")
    else:
        path = SPACES_DIR / f"{reference}.yaml"
        if not path.exists():
            raise ConfigError(
                f"{key}: unknown search space {reference!r}; shipped spaces: "
                f"{', '.join(available_spaces())}, "
                "or give a path to a YAML file, or an inline mapping"
            )
    return parse_search_space(read_yaml_mapping(path, "search space file"), source=str(path))


def parse_search_space(data: dict[str, Any], source: str) -> SearchSpace:
    """Validate a search-space mapping; every problem is collected into one ConfigError."""
    problems: list[str] = []
    specs: dict[str, ParamSpec] = {}
    seen: set[str] = set()
    if not data:
        raise ConfigError("the search space is empty; give at least one parameter", source=source)
    for name, body in data.items():
        seen.add(str(name))
        if not isinstance(body, Mapping):
            problems.append(
                f"{name}: expected a mapping such as {{type: float, low: 0.0, high: 0.5}}, got {body!r}"
            )
            continue
        try:
            spec = ParamSpec.model_validate(dict(body))
        except ValidationError as error:
            problems.extend(describe_validation_error(error, ParamSpec, prefix=f"{name}."))
            continue
        for condition, allowed in (spec.when or {}).items():
            if condition == name:
                problems.append(f"{name}.when: a parameter cannot depend on itself")
            elif condition in data and condition not in seen:
                problems.append(f"{name}.when: {condition!r} must be declared before {name!r}")
            elif condition in specs and specs[condition].type == "categorical":
                unknown = [value for value in allowed if value not in (specs[condition].choices or [])]
                if unknown:
                    problems.append(
                        f"{name}.when.{condition}: {unknown} not among {condition}'s choices "
                        f"{specs[condition].choices}"
                    )
        specs[str(name)] = spec
    if problems:
        raise ConfigError(problems, source=source)
    return SearchSpace(specs, source=source)


__all__ = ["ParamSpec", "SearchSpace", "available_spaces", "load_search_space", "parse_search_space"]
