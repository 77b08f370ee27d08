"""Reading YAML files that hold a mapping, and turning pydantic's errors into one line per key.

Both the sweep file (:mod:`orchestrator.config`) and the search spaces (:mod:`search_spaces`) are
read here, so they refuse the same mistakes with the same words: a file that is not a mapping, a
YAML syntax error (with its line and column), and a key given twice in one mapping (YAML itself
would silently keep the last one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ftsweep_common.errors import ConfigError

__all__ = ["allowed_keys", "describe_validation_error", "read_yaml_mapping"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKey(Exception):  # noqa: N818 - carries where, not an error of its own
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(key)
        self.key = key
        self.line = line
        self.first_line = first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (merge keys ``<<`` aside)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _DuplicateKey(key, line, first)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: Path, what: str = "sweep file") -> dict[str, Any]:
    """A YAML file that must hold a mapping.

    Args:
        path: the file.
        what: what the file is, for messages ("sweep file", "search space file").

    Raises:
        ConfigError: naming the file (and the line, for syntax errors and duplicate keys) when
            it is missing, unreadable, not YAML, not a mapping, or gives a key twice.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no such {what}: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {what} {path}: {error}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as duplicate:
        raise ConfigError(
            f"line {duplicate.line}: duplicate key {duplicate.key!r} "
            f"(first given on line {duplicate.first_line}); give each key once",
            source=str(path),
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}invalid YAML: {problem}", source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"must be a YAML mapping of sections, not a {type(data).__name__}", source=str(path)
        )
    return data


def describe_validation_error(error: ValidationError, root: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per key path: what is wrong, what was received.

    A value that fails every member of a union (``int | 'auto'``) gives one line, not one
    per member.

    Args:
        error: what pydantic raised validating a mapping against ``root``.
        root: the model validated against (unknown keys are answered with its allowed keys).
        prefix: put before every key path, e.g. ``"trainer."`` for the trainer's settings.
    """
    by_path: dict[str, list[str]] = {}
    for item in error.errors():
        location = [part for part in item["loc"] if not _is_type_tag(part)]
        path = (
            prefix + ".".join(str(part) for part in location)
            if location
            else prefix.rstrip(".") or "(top level)"
        )
        kind = item["type"]
        if kind == "extra_forbidden":
            allowed = allowed_keys(root, tuple(location[:-1]))
            hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            message = f"unknown key{hint}"
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
            received = item.get("input")
            if not isinstance(received, dict | list):
                message += f" (got {received!r})"
        messages = by_path.setdefault(path, [])
        if message not in messages:
            messages.append(message)
    return [f"{path}: {'; or '.join(messages)}" for path, messages in by_path.items()]


def _is_type_tag(part: Any) -> bool:
    """pydantic names the member of a union in the error location (``int``, ``literal['auto']``)."""
    if not isinstance(part, str):
        return False
    return part.startswith(("function-", "literal[", "dict[", "list[", "tuple[")) or part in (
        "int",
        "float",
        "str",
        "bool",
        "none",
        "dict",
        "list",
        "constrained-float",
        "constrained-int",
    )


def allowed_keys(model: type[BaseModel], location: tuple[Any, ...]) -> list[str]:
    """The field names of the model found by following ``location`` from ``model``."""
    current: Any = model
    for part in location:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_class(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _model_class(argument)
        if found is not None:
            return found
    return None
