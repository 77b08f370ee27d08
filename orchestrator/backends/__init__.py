"""Backends run a study's trials: ``local`` (processes on this machine)."""

from __future__ import annotations

BACKENDS = {"local": "orchestrator.backends.local:LocalBackend"}
