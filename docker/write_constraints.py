r"""Writes docker/constraints.txt: the exact version of every package the images install, read from
an environment in which the test suite passed.

It follows ftsweep's run-time dependencies with the extras the images install (postgres, ray,
demo, and ray's own default extra, which ``ray start`` needs for its dashboard and node agents)
through every dependency's requirements, and pins each to the version installed in the running
Python. torch is pinned without its build label (``torch==2.13.0`` matches 2.13.0+cpu and
2.13.0+cu130): the Dockerfiles take the build from the PyTorch index, and the CUDA libraries
(nvidia-*, triton) from that build's own exact requirements, so they are left out here. The test
environment (.venv) lacks ray's default extra, so make a copy of it that has it, then write::

    python3 -m venv /tmp/lock
    .venv/bin/pip freeze --exclude-editable > /tmp/lock/freeze.txt
    /tmp/lock/bin/pip install -c /tmp/lock/freeze.txt --extra-index-url https://download.pytorch.org/whl/cpu \
        ".[postgres,ray,demo]" "ray[default,tune]"
    /tmp/lock/bin/python docker/write_constraints.py > docker/constraints.txt

tests/test_docker_files.py checks the result against pyproject.toml, the Makefile's torch and the
Dockerfiles' versions; ``render`` is the file's format, and only this script writes it.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
IMAGE_EXTRAS = ("postgres", "ray", "demo")
# What the Dockerfiles install beside ".[extras]".
IMAGE_REQUIREMENTS = ("ray[default,tune]",)
# Pinned by the torch build the Dockerfile installs (a CUDA build requires exact versions of them).
BUILD_SPECIFIC = re.compile(r"nvidia-|triton$|cuda-")

HEADER = """\
# The exact versions the ftsweep images install (pip install --constraint, in docker/Dockerfile and
# docker/Dockerfile.cpu): ftsweep's run-time dependencies with the postgres, ray and demo extras,
# and ray's default extra, each at the version of the environment the test suite passed in.
# torch's build (CPU or CUDA) comes from the PyTorch index the Dockerfile names; torch==X matches
# every build of X. The CUDA libraries are pinned by the CUDA build of torch itself.
# Written by docker/write_constraints.py (its docstring says how); do not edit by hand.
"""


def image_requirements() -> list[Requirement]:
    """The requirements the images start from: pyproject's, with the images' extras."""
    import tomllib  # Python 3.11+: the script runs in the project's environment

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in [*lines, *IMAGE_REQUIREMENTS]]


def installed_closure(roots: list[Requirement]) -> tuple[dict[str, str], set[str]]:
    """Every package the roots need in this Python (markers evaluated here, extras followed), with
    its installed public version; and the names that are needed but not installed."""
    pins: dict[str, str] = {}
    missing: set[str] = set()
    extras_done: dict[str, set[str]] = {}
    pending = list(roots)
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        wanted = {"", *requirement.extras}
        if wanted <= extras_done.get(name, set()):
            continue
        extras_done.setdefault(name, set()).update(wanted)
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        if not BUILD_SPECIFIC.match(name):
            pins[name] = Version(distribution.version).public
        for line in distribution.requires or []:
            needed = Requirement(line)
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in wanted):
                pending.append(needed)
    return pins, missing


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def main() -> int:
    pins, missing = installed_closure(image_requirements())
    if missing:
        print(
            f"write_constraints: not installed here, so no version to pin: {', '.join(sorted(missing))}; "
            "install them in this environment first (this script's docstring shows how)",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(render(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
