"""Backends run a study's trials: ``local`` (processes on this machine) and ``ray`` (a Ray cluster).

Every backend keeps the contract of :class:`~orchestrator.backends.base.BaseBackend`. They are chosen
by name from :data:`BACKENDS`, an explicit table of lazy loaders, so that ``ftsweep --help`` does not
import Ray, and a backend whose packages are missing is reported while planning (:func:`check_backend`).
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.backends.base import BaseBackend
from orchestrator.errors import ConfigError


def _local() -> type[BaseBackend]:
    from orchestrator.backends.local import LocalBackend

    return LocalBackend


def _ray() -> type[BaseBackend]:
    from orchestrator.backends.ray import RayBackend  # imports Ray itself only when it runs

    return RayBackend


#: ``execution.backend`` name -> a loader of its class (imports happen only when the backend is used).
BACKENDS: dict[str, Callable[[], type[BaseBackend]]] = {"local": _local, "ray": _ray}


def backend_class(name: str) -> type[BaseBackend]:
    """The backend class ``name`` names, its packages checked.

    Raises:
        ConfigError: for an unknown name, or a backend whose packages are not installed.
    """
    loader = BACKENDS.get(name)
    if loader is None:
        raise ConfigError(f"execution.backend: unknown backend {name!r}; allowed: {', '.join(BACKENDS)}")
    cls = loader()
    cls.check_available()
    return cls


def check_backend(name: str) -> None:
    """Raise a one-line :class:`ConfigError` unless the backend ``name`` can run here."""
    backend_class(name)


__all__ = ["BACKENDS", "BaseBackend", "backend_class", "check_backend"]
