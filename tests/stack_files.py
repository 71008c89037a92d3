"""Reads the shipped Docker stack (compose, .env.example, Dockerfiles, the Dovecot image) as Compose would.

Shared by the test_compose_*, test_docker_images, test_dovecot_image, test_jira_standin_service and
test_airflow_init modules; it checks nothing itself.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from include.names import IMAP_CONN_ID, JIRA_CONN_ID, STORE_CONN_ID

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
AIRFLOW_DOCKERFILE = REPO / "Dockerfile"
DOVECOT_DIR = REPO / "docker" / "dovecot"
COMPOSE_SCHEMA = SHARED / "reference" / "compose-spec" / "compose-spec.json"

# The connection ids the README documents and the DAGs use by default.
CONNECTION_IDS = (IMAP_CONN_ID, JIRA_CONN_ID, STORE_CONN_ID)
# The components of Airflow's official CeleryExecutor docker-compose.yaml.
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
)

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


# ------------------------------------------------------------------------------------ file readers


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


@functools.cache
def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example line {number} is neither a comment nor NAME=value: {line!r}"
        assert name not in values, f".env.example defines {name} twice"
        values[name.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def locked_version(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)", (REPO / "requirements.txt").read_text(), re.MULTILINE)
    assert match, f"requirements.txt does not pin {package}"
    return match.group(1)


def project() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


# ----------------------------------------------------------------------------- compose semantics


def compose_variables(value: Any) -> set[str]:
    """Names of the variables Compose would interpolate anywhere in `value`."""
    if isinstance(value, dict):
        return set().union(*(compose_variables(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(compose_variables(item) for item in value))
    if not isinstance(value, str):
        return set()
    names = set()
    for match in _INTERPOLATION.finditer(value):
        if match["invalid"] is not None:
            raise AssertionError(f"invalid interpolation (a lone '$', use '$$') in {value!r}")
        if not match["escaped"]:
            names.add(match["braced"] or match["named"])
    return names


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """`value` as Compose resolves it from `env`; an unset variable is an error here, not a blank."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["invalid"] is not None:
            raise AssertionError(f"invalid interpolation in {value!r}")
        name, op, arg = match["braced"] or match["named"], match["op"] or "", match["arg"] or ""
        current = env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op == ":+":
            return arg if current else ""
        if op == "+":
            return "" if current is None else arg
        if current is None or (op == ":?" and current == ""):
            raise AssertionError(f"${{{name}}} is not set: {arg or 'no message'}")
        return current

    return _INTERPOLATION.sub(resolve, value)


def resolved_services() -> dict[str, dict[str, Any]]:
    """The services as `cp .env.example .env && docker compose config` would show them."""
    return interpolate(services(), env_example())


def marker_env() -> dict[str, str]:
    """Every variable set to a visible marker, to see which fields come from .env."""
    return {name: f"<{name}>" for name in compose_variables(compose())}


def conn_var(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Target service -> condition (the short list form means service_started)."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def one_shot_services() -> set[str]:
    return {
        target
        for service in services().values()
        for target, condition in depends_on(service).items()
        if condition == "service_completed_successfully"
    }


def container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        target = entry["target"] if isinstance(entry, dict) else str(entry).rsplit(":", 1)[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


def volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source for each short-syntax volume."""
    targets = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        targets[target] = source
    return targets


def healthcheck_shell(service: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    """The service's healthcheck as an argv this machine can run, with Compose's `$$` undone."""
    test = interpolate(service["healthcheck"]["test"], env or env_example())
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    assert test[0] == "CMD", f"unexpected healthcheck form {test!r}"
    return list(test[1:])


def image_reference(reference: str) -> tuple[str, str]:
    name, _, tag = reference.rpartition(":")
    if "/" in tag or not name:  # a registry port, not a tag
        return reference, ""
    return name, tag


def assert_pinned(reference: str, where: str) -> None:
    name, tag = image_reference(reference)
    assert "$" not in reference, f"{where}: image {reference!r} depends on a variable"
    assert tag, f"{where}: image {reference!r} has no tag"
    assert tag != "latest", f"{where}: image {reference!r} floats on latest"
    assert re.match(r"^\d+\.\d+(\.\d+)?([-.].+)?$", tag), (
        f"{where}: tag {tag!r} of {name} is not an exact version (at least major.minor)"
    )


# ---------------------------------------------------------------------------------- schema checks


@functools.cache
def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert "draft-07" in schema["$schema"], f"the spec moved off draft-07: {schema['$schema']}"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(document: dict[str, Any]) -> list[str]:
    return sorted(
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in compose_validator().iter_errors(document)
    )


# ------------------------------------------------------------------------ the Dovecot image, for real


def dovecot_config() -> str:
    return (DOVECOT_DIR / "dovecot.conf").read_text()


def dovecot_imaps_port() -> int:
    match = re.search(r"inet_listener imaps \{[^}]*?port = (\d+)", dovecot_config())
    assert match, "dovecot.conf has no imaps listener"
    return int(match.group(1))


def entrypoint_default(variable: str) -> str:
    match = re.search(rf'"\$\{{{variable}:-([^}}]+)\}}"', (DOVECOT_DIR / "entrypoint.sh").read_text())
    assert match, f"entrypoint.sh has no default for {variable}"
    return match.group(1)
