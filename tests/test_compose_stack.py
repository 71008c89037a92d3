"""Proves the shipped Docker stack (compose file, Dockerfiles, .env.example) is valid and self-consistent.

Docker cannot run on these machines, so the compose file is checked against the Compose
Specification's JSON schema and against its sibling files. The pieces that carry logic of their own
(the Dovecot image's config and entrypoint, the Jira stand-in command, the healthchecks) are run
for real on loopback, with only paths and ports swapped for the container's.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import http.client
import imaplib
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import psycopg
import pytest
import yaml
from psycopg import sql

from tests.harness.dovecot import free_port, service_unavailable
from tests.harness.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
AIRFLOW_DOCKERFILE = REPO / "Dockerfile"
DOVECOT_DIR = REPO / "docker" / "dovecot"
COMPOSE_SCHEMA = SHARED / "reference" / "compose-spec" / "compose-spec.json"

# The connection ids the README documents and the DAGs use by default.
CONNECTION_IDS = ("imap_default", "jira_default", "jira_store")
# The components of Airflow's official CeleryExecutor docker-compose.yaml.
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
)
JIRA_POOL = "jira_api"
START_TIMEOUT_S = 15.0
LOOPBACK = "127.0.0.1"

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)
_POOLS_SET = re.compile(r"airflow pools set (\S+) (\d+)")
_POOL_ARGUMENT = re.compile(r"""\bpool\s*=\s*["']([^"']+)["']""")
_DEFAULT_CONN_NAME = re.compile(r"""\bdefault_conn_name\s*=\s*["']([^"']+)["']""")


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


def test_compose_file_is_valid_against_the_compose_specification():
    errors = schema_errors(compose())
    assert not errors, "docker-compose.yaml breaks the Compose Specification:\n" + "\n".join(errors)


def _unknown_service_key(document: dict[str, Any]) -> str:
    document["services"]["redis"]["restart_policy"] = "always"
    return "redis"


def _unknown_dependency_condition(document: dict[str, Any]) -> str:
    document["services"]["airflow-scheduler"]["depends_on"]["airflow-init"]["condition"] = "service_succeeded"
    return "airflow-scheduler"


def _healthcheck_without_test_list(document: dict[str, Any]) -> str:
    document["services"]["dovecot"]["healthcheck"]["test"] = {"CMD": "true"}
    return "dovecot"


@pytest.mark.parametrize(
    "breakage", [_unknown_service_key, _unknown_dependency_condition, _healthcheck_without_test_list]
)
def test_schema_rejects_a_deliberately_broken_copy(breakage):
    broken = copy.deepcopy(compose())
    service = breakage(broken)
    errors = schema_errors(broken)
    assert errors, f"the schema accepted a broken copy ({breakage.__name__}): the validator is not live"
    assert any(error.startswith(f"services/{service}") for error in errors), errors


# ------------------------------------------------------------------------------- service wiring


def test_every_depends_on_target_is_a_defined_service():
    missing = {
        f"{name} -> {target}"
        for name, service in services().items()
        for target in depends_on(service)
        if target not in services()
    }
    assert not missing, f"depends_on names services that do not exist: {sorted(missing)}"


def test_dependency_conditions_are_ones_the_target_can_reach():
    for name, service in services().items():
        for target, condition in depends_on(service).items():
            target_service = services()[target]
            if condition == "service_healthy":
                check = target_service.get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert target_service.get("restart", "no") in ("no", "on-failure"), (
                    f"{name} waits for {target} to complete, but {target} restarts forever"
                )


def test_dependency_graph_has_no_cycle():
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in visiting, f"depends_on cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        visiting.add(name)
        for target in depends_on(services()[name]):
            visit(target, (*path, name))
        visiting.discard(name)
        done.add(name)

    for name in services():
        visit(name, ())


def test_every_long_running_service_has_a_healthcheck_and_restarts():
    one_shots = one_shot_services()
    assert one_shots == {"airflow-init"}, f"unexpected one-shot services: {one_shots}"
    for name, service in services().items():
        if name in one_shots:
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        assert service.get("restart") == "always", f"{name} does not restart after a crash"


def test_stack_has_the_official_airflow_components_and_ours():
    expected = {"postgres", "redis", *AIRFLOW_SERVICES, "dovecot", "jira-standin"}
    assert expected <= set(services()), f"missing services: {sorted(expected - set(services()))}"


# ------------------------------------------------------------------------------------ image pins


def test_every_image_tag_is_pinned_to_an_exact_version():
    for name, service in services().items():
        assert "image" in service, f"{name} has no image name (a build-only service gets a random one)"
        assert_pinned(service["image"], f"service {name}")


def test_every_dockerfile_base_image_is_pinned():
    for path in (AIRFLOW_DOCKERFILE, DOVECOT_DIR / "Dockerfile"):
        bases = [i.arguments.split()[0] for i in dockerfile(path) if i.keyword == "FROM"]
        assert bases, f"{path} has no FROM"
        for base in bases:
            assert_pinned(base, str(path.relative_to(REPO)))


def test_airflow_base_image_matches_the_locked_airflow_and_python():
    (base,) = [i.arguments.split()[0] for i in dockerfile(AIRFLOW_DOCKERFILE) if i.keyword == "FROM"]
    python = re.search(r">=\s*(\d+\.\d+)", project()["requires-python"]).group(1)
    expected = f"apache/airflow:{locked_version('apache-airflow')}-python{python}"
    assert base == expected, f"Dockerfile builds FROM {base}, but the lock and pyproject say {expected}"


def test_built_images_are_named_after_the_project_version():
    version = project()["version"]
    built = {name: service for name, service in services().items() if "build" in service}
    assert set(AIRFLOW_SERVICES) | {"jira-standin", "dovecot"} <= set(built)
    for name, service in built.items():
        image_name, tag = image_reference(service["image"])
        assert tag == version, f"{name} builds {service['image']}, but the project is at {version}"
        assert image_name.startswith(project()["name"]), f"{name} builds an image not named after the project"
        context = REPO / (
            service["build"] if isinstance(service["build"], str) else service["build"]["context"]
        )
        assert (context / "Dockerfile").is_file(), f"{name} builds from {context}, which has no Dockerfile"


def test_airflow_image_installs_the_hash_pinned_lock_and_ships_the_code():
    instructions = dockerfile(AIRFLOW_DOCKERFILE)
    copies = {}
    for instruction in instructions:
        if instruction.keyword == "COPY":
            *sources, destination = [
                word for word in instruction.arguments.split() if not word.startswith("--")
            ]
            for source in sources:
                copies[source.rstrip("/")] = destination.rstrip("/")
    assert "requirements.txt" in copies, "the Dockerfile does not copy the lock"
    installs = [i.arguments for i in instructions if i.keyword == "RUN" and "pip install" in i.arguments]
    assert installs, "the Dockerfile installs nothing"
    for command in installs:
        words = command.split()
        assert "--require-hashes" in words, f"pip install without --require-hashes: {command}"
        assert words[words.index("-r") + 1] == copies["requirements.txt"], (
            f"pip installs {words[words.index('-r') + 1]}, not the copied lock {copies['requirements.txt']}"
        )
    for package in ("dags", "plugins", "include"):
        assert copies.get(package) == f"/opt/airflow/{package}", f"{package}/ is not copied to /opt/airflow"
    env = dict(i.arguments.split("=", 1) for i in instructions if i.keyword == "ENV")
    assert env.get("PYTHONPATH") == "/opt/airflow", "include/ is not importable as a top-level package"


# -------------------------------------------------------------------------------- Airflow services


def test_airflow_services_share_the_common_block():
    common = compose()["x-airflow-common"]
    common_env = environment_of(common)
    for name in AIRFLOW_SERVICES:
        service = services()[name]
        assert service["image"] == common["image"] and service["build"] == common["build"], name
        env = environment_of(service)
        drifted = {key for key, value in common_env.items() if env.get(key) != value}
        assert not drifted, f"{name} overrides or drops common settings: {sorted(drifted)}"
        assert set(volume_targets(common).items()) <= set(volume_targets(service).items()), (
            f"{name} lacks some of the common mounts"
        )


@pytest.mark.parametrize("service_name", AIRFLOW_SERVICES)
def test_each_airflow_service_carries_the_three_connections(service_name):
    env = environment_of(services()[service_name])
    missing = [conn_var(conn_id) for conn_id in CONNECTION_IDS if conn_var(conn_id) not in env]
    assert not missing, f"{service_name} lacks {missing}"


def test_airflow_runs_the_celery_stack_without_examples():
    env = environment_of(resolved_services()["airflow-scheduler"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    for key, service in (
        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgres"),
        ("AIRFLOW__CELERY__RESULT_BACKEND", "postgres"),
        ("AIRFLOW__CELERY__BROKER_URL", "redis"),
    ):
        host = urlsplit(env[key]).hostname
        assert host == service and host in services(), f"{key} points at {host!r}, not the {service} service"


# Sections whose options no installed package declares (none today: the Celery provider is locked).
PROVIDER_SECTIONS_NOT_IN_LOCK: set[str] = set()


def test_every_airflow_setting_names_a_real_option_of_the_locked_airflow():
    spec = importlib.util.find_spec("airflow.config_templates")
    assert spec and spec.submodule_search_locations, "Airflow is not installed"
    template = Path(next(iter(spec.submodule_search_locations))) / "config.yml"
    options = {
        section: set(body["options"]) for section, body in yaml.safe_load(template.read_text()).items()
    }
    from airflow.providers.celery.get_provider_info import get_provider_info

    for section, body in get_provider_info()["config"].items():
        options.setdefault(section, set()).update(body["options"])
    checked = 0
    for name in AIRFLOW_SERVICES:
        for key in environment_of(services()[name]):
            match = re.fullmatch(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", key)
            if not match or match.group(1).lower() in PROVIDER_SECTIONS_NOT_IN_LOCK:
                continue
            section, option = match.group(1).lower(), match.group(2).lower()
            assert option in options.get(section, set()), f"{name}: {key} is not an Airflow option"
            checked += 1
    assert checked, "no Airflow option was checked"
    manager_module, _, manager_class = environment_of(compose()["x-airflow-common"])[
        "AIRFLOW__CORE__AUTH_MANAGER"
    ].rpartition(".")
    manager_spec = importlib.util.find_spec(manager_module)
    assert manager_spec and manager_spec.origin, f"auth manager module {manager_module} does not exist"
    assert f"class {manager_class}(" in Path(manager_spec.origin).read_text()


def test_task_workers_reach_the_execution_api_on_the_api_server():
    url = urlsplit(environment_of(services()["airflow-worker"])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    apiserver = services()["airflow-apiserver"]
    assert url.hostname == "airflow-apiserver"
    assert url.port in container_ports(apiserver), f"the api-server does not listen on {url.port}"
    assert url.path == "/execution/"


def test_secrets_come_from_env_variables_not_literals():
    env = environment_of(compose()["x-airflow-common"])
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
        value = env.get(key, "")
        assert value.startswith("${") and value.endswith("}"), f"{key} is not taken from .env: {value!r}"
    for conn_id in CONNECTION_IDS:
        conn = json.loads(interpolate(env[conn_var(conn_id)], marker_env()))
        assert conn.get("password", "").startswith("<"), f"{conn_id}'s password is not taken from .env"


def test_include_is_importable_in_every_airflow_container():
    pythonpath = dict(
        i.arguments.split("=", 1) for i in dockerfile(AIRFLOW_DOCKERFILE) if i.keyword == "ENV"
    )["PYTHONPATH"]
    for name in (*AIRFLOW_SERVICES, "jira-standin"):
        mounts = volume_targets(services()[name])
        assert mounts.get(f"{pythonpath}/include") == "./include", f"{name} does not mount ./include"
    for name in AIRFLOW_SERVICES:
        mounts = volume_targets(services()[name])
        for folder in ("dags", "plugins", "logs", "config"):
            assert mounts.get(f"/opt/airflow/{folder}") == f"./{folder}", f"{name} does not mount ./{folder}"


def test_airflow_init_creates_every_pool_the_code_uses():
    command = "\n".join(services()["airflow-init"]["command"])
    created = dict(_POOLS_SET.findall(command))
    used = {JIRA_POOL}
    for folder in ("dags", "plugins", "include"):
        for path in (REPO / folder).rglob("*.py"):
            used |= set(_POOL_ARGUMENT.findall(path.read_text()))
    assert used <= set(created), f"pools used but never created: {sorted(used - set(created))}"
    assert all(int(slots) >= 1 for slots in created.values()), created


# ------------------------------------------------------------------------- variables and .env.example


def test_every_compose_variable_is_defined_in_env_example():
    used, defined = compose_variables(compose()), set(env_example())
    assert not used - defined, (
        f"used in docker-compose.yaml but missing from .env.example: {sorted(used - defined)}"
    )
    assert not defined - used, f"defined in .env.example but never used: {sorted(defined - used)}"


def test_env_example_explains_every_variable():
    previous = ""
    for line in ENV_EXAMPLE.read_text().splitlines():
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", line):
            assert previous.startswith("#") or re.match(r"^[A-Za-z_]\w*=", previous), (
                f"{line.split('=')[0]} in .env.example has no comment above it"
            )
        previous = line


def test_env_example_holds_no_real_looking_secret():
    # Placeholders say so; a real API token or Fernet key pasted here would be committed to git.
    for name, value in env_example().items():
        if any(word in name for word in ("PASSWORD", "TOKEN", "SECRET")):
            assert re.search(r"change-me|replace|local", value), (
                f"{name} in .env.example is not a placeholder"
            )
    assert env_example()["AIRFLOW_FERNET_KEY"] == "", "a Fernet key committed to git protects nothing"


def test_connections_resolve_to_the_local_trial_services():
    resolved = resolved_services()
    env = environment_of(resolved["airflow-worker"])
    conns = {conn_id: json.loads(env[conn_var(conn_id)]) for conn_id in CONNECTION_IDS}

    jira = conns["jira_default"]
    standin = resolved["jira-standin"]
    argv = standin["command"]
    site = urlsplit(jira["host"])
    assert jira["conn_type"] == "jira"
    assert site.hostname == "jira-standin" and site.port == int(argv[argv.index("--port") + 1])
    assert jira["login"] == argv[argv.index("--email") + 1]
    assert jira["password"] == environment_of(standin)["JIRA_STANDIN_API_TOKEN"]

    imap = conns["imap_default"]
    mailbox = environment_of(resolved["dovecot"])
    assert imap["conn_type"] == "imap" and imap["host"] == "dovecot"
    assert imap["port"] in container_ports(resolved["dovecot"]) and imap["port"] == dovecot_imaps_port()
    assert (imap["login"], imap["password"]) == (mailbox["DOVECOT_USER"], mailbox["DOVECOT_PASSWORD"])
    # The provider accepts only these two; the trial verifies the dovecot certificate like a real one.
    assert imap["extra"] == {"use_ssl": True, "ssl_context": "default"}

    store = conns["jira_store"]
    init_env = environment_of(resolved["airflow-init"])
    assert store["conn_type"] == "postgres" and store["host"] == "postgres" and store["port"] == 5432
    assert store["schema"] == "jira_store"
    assert (store["login"], store["password"]) == (
        init_env["JIRA_STORE_USER"],
        init_env["JIRA_STORE_PASSWORD"],
    )


def test_connection_ids_match_the_readme_and_the_hooks():
    env = environment_of(services()["airflow-worker"])
    named = {name for name in env if name.startswith("AIRFLOW_CONN_")}
    assert named == {conn_var(conn_id) for conn_id in CONNECTION_IDS}
    readme = REPO / "README.md"
    if readme.exists() and "AIRFLOW_CONN_" in readme.read_text():
        mentioned = set(re.findall(r"AIRFLOW_CONN_[A-Z0-9_]+", readme.read_text()))
        assert mentioned <= named, (
            f"the README names connections the stack lacks: {sorted(mentioned - named)}"
        )
    defaults = set()
    for path in (REPO / "plugins").rglob("*.py"):
        defaults |= set(_DEFAULT_CONN_NAME.findall(path.read_text()))
    missing = {conn_var(name) for name in defaults} - named
    assert not missing, f"hooks default to connections the stack does not define: {sorted(missing)}"


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


def test_dovecot_image_files_agree_with_each_other_and_the_stack():
    config = dovecot_config()
    instructions = dockerfile(DOVECOT_DIR / "Dockerfile")
    vmail_uid = re.search(r"useradd --uid (\d+)", " ".join(i.arguments for i in instructions)).group(1)
    assert re.search(rf"^first_valid_uid = {vmail_uid}$", config, re.MULTILINE), "vmail is not allowed mail"
    copies = {
        words[-2]: words[-1] for words in (i.arguments.split() for i in instructions if i.keyword == "COPY")
    }
    assert copies["dovecot.conf"] == entrypoint_default("DOVECOT_CONF")
    assert (
        copies["entrypoint.sh"]
        == json.loads(next(i.arguments for i in instructions if i.keyword == "ENTRYPOINT"))[0]
    )

    cert_dir = entrypoint_default("DOVECOT_CERT_DIR")
    assert f"ssl_cert = <{cert_dir}/cert.pem" in config
    assert f"ssl_key = <{entrypoint_default('DOVECOT_KEY_DIR')}/key.pem" in config
    assert f"{entrypoint_default('DOVECOT_USERS_FILE')}\n" in config
    mail_home = re.search(r"home=(\S+)/%n", config).group(1)
    mounts = volume_targets(services()["dovecot"])
    assert mounts.get(mail_home) in compose()["volumes"], "mail does not survive a recreated container"

    # The certificate volume is what the Airflow containers trust for imap_default.
    tls_volume = mounts.get(cert_dir)
    assert tls_volume in compose()["volumes"], "the dovecot certificate is not on a shared volume"
    for name in AIRFLOW_SERVICES:
        service = services()[name]
        trusted = [
            entry.split(":")[1]
            for entry in service["volumes"]
            if entry.startswith(f"{tls_volume}:") and entry.endswith(":ro")
        ]
        assert trusted, f"{name} does not mount the dovecot certificate read-only"
        assert trusted[0] in environment_of(service)["SSL_CERT_DIR"].split(":"), name
        assert "/etc/ssl/certs" in environment_of(service)["SSL_CERT_DIR"].split(":"), "system CAs dropped"
    assert entrypoint_default("DOVECOT_TLS_NAME") == env_example()["IMAP_HOST"], (
        "the certificate is not issued for the host imap_default connects to"
    )


@dataclass
class StackDovecot:
    root: Path
    port: int
    cert_dir: Path
    login: str
    password: str
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return (self.root / "dovecot.out").read_text(errors="replace")[-4000:]


def _localized_dovecot_config(root: Path, port: int, uid: int, gid: int) -> str:
    """The image's dovecot.conf with the container's paths, uid and port swapped for this machine's."""
    swaps = {
        "listen = *": f"listen = {LOOPBACK}",
        "base_dir = /run/dovecot": f"base_dir = {root}/run\nstate_dir = {root}/state",
        "</etc/dovecot/tls/": f"<{root}/tls/",
        "</etc/dovecot/private/": f"<{root}/private/",
        "/etc/dovecot/users": f"{root}/users",
        "first_valid_uid = 5000": f"first_valid_uid = {uid}",
        "last_valid_uid = 5000": f"last_valid_uid = {uid}",
        "uid=vmail gid=vmail home=/srv/mail/%n": f"uid={uid} gid={gid} home={root}/mail/%n",
        f"port = {dovecot_imaps_port()}": f"port = {port}",
    }
    config = dovecot_config()
    for old, new in swaps.items():
        assert config.count(old) == 1, (
            f"dovecot.conf changed: {old!r} no longer occurs once; update this test"
        )
        config = config.replace(old, new)
    return config


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def _imaps_greeting(port: int) -> bytes:
    with (
        socket.create_connection((LOOPBACK, port), timeout=2) as raw,
        _unverified_context().wrap_socket(raw) as tls,
    ):
        return tls.makefile("rb").readline()


@pytest.fixture(scope="module")
def stack_dovecot() -> Iterator[StackDovecot]:
    """Dovecot started by the image's entrypoint.sh from the image's dovecot.conf, with the account the
    dovecot service gets from .env.example."""
    if not shutil.which("dovecot") or not shutil.which("openssl"):
        service_unavailable("dovecot and openssl must be installed (make system-deps)")
    if os.geteuid() != 0:
        service_unavailable("the Dovecot image's config runs Dovecot as root, as in the container")
    mail_user = pwd.getpwnam("dovecot")  # stands in for the image's vmail user
    mailbox_env = environment_of(resolved_services()["dovecot"])
    root = Path(tempfile.mkdtemp(prefix="jms-stack-dovecot-"))
    os.chmod(root, 0o711)  # Dovecot's unprivileged processes must reach the users file and the mail
    for name, mode in (("tls", 0o755), ("private", 0o700), ("mail", 0o700)):
        (root / name).mkdir(mode=mode)
    os.chown(root / "mail", mail_user.pw_uid, mail_user.pw_gid)
    port = free_port()
    (root / "dovecot.conf").write_text(
        _localized_dovecot_config(root, port, mail_user.pw_uid, mail_user.pw_gid)
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") + ":/usr/sbin:/sbin",
        "DOVECOT_USER": mailbox_env["DOVECOT_USER"],
        "DOVECOT_PASSWORD": mailbox_env["DOVECOT_PASSWORD"],
        "DOVECOT_CONF": str(root / "dovecot.conf"),
        "DOVECOT_USERS_FILE": str(root / "users"),
        "DOVECOT_CERT_DIR": str(root / "tls"),
        "DOVECOT_KEY_DIR": str(root / "private"),
    }
    with open(root / "dovecot.out", "wb") as out:
        process = subprocess.Popen(
            ["/bin/sh", str(DOVECOT_DIR / "entrypoint.sh")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = StackDovecot(
        root, port, root / "tls", mailbox_env["DOVECOT_USER"], mailbox_env["DOVECOT_PASSWORD"], process
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if _imaps_greeting(port).startswith(b"* OK"):
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_group(process)
            log = server.log()
            shutil.rmtree(root, ignore_errors=True)
            service_unavailable(f"the Dovecot image's entrypoint did not bring up IMAPS:\n{log}")
        time.sleep(0.05)
    try:
        yield server
    finally:
        _stop_group(process)
        shutil.rmtree(root, ignore_errors=True)


def test_dovecot_users_file_holds_a_hash_not_the_password(stack_dovecot):
    users = (stack_dovecot.root / "users").read_text()
    assert users.startswith(f"{stack_dovecot.login}:{{SHA512-CRYPT}}$6$")
    assert stack_dovecot.password not in users
    assert (stack_dovecot.root / "users").stat().st_mode & 0o007 == 0, "the users file is world-readable"


def test_dovecot_certificate_verifies_for_the_host_the_connection_uses(stack_dovecot):
    # OpenSSL finds the certificate through its hashed name, as SSL_CERT_DIR makes it in the workers.
    context = ssl.create_default_context(capath=str(stack_dovecot.cert_dir))
    with (
        socket.create_connection((LOOPBACK, stack_dovecot.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=env_example()["IMAP_HOST"]) as tls,
    ):
        assert tls.makefile("rb").readline().startswith(b"* OK")
    with (
        socket.create_connection((LOOPBACK, stack_dovecot.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="imap.example.com")


def test_imap_default_logs_in_to_the_dovecot_image_with_a_verified_certificate(stack_dovecot, monkeypatch):
    from airflow.providers.imap.hooks.imap import ImapHook

    conn = json.loads(environment_of(resolved_services()["airflow-worker"])["AIRFLOW_CONN_IMAP_DEFAULT"])
    # "localhost" is the certificate's other name and resolves here; the extra stays as shipped.
    conn.update(host="localhost", port=stack_dovecot.port)
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("SSL_CERT_DIR", f"/etc/ssl/certs:{stack_dovecot.cert_dir}")
    with ImapHook(imap_conn_id="imap_default") as hook:
        client = hook.mail_client
        typ, _ = client.select("INBOX")
        assert typ == "OK"
        message = b"From: jira@jira-standin\r\nSubject: [JIRA] (DEMO-1) stack check\r\n\r\nbody\r\n"
        assert client.append("INBOX", None, None, message)[0] == "OK"
        typ, data = client.uid("SEARCH", "UNSEEN")
        assert typ == "OK" and len(data[0].split()) >= 1, "appended mail is not stored as unseen"


def test_dovecot_healthcheck_passes_only_while_imaps_answers(stack_dovecot):
    argv = healthcheck_shell(services()["dovecot"])
    container_port = f"127.0.0.1:{dovecot_imaps_port()}"
    assert container_port in argv[-1], "the healthcheck does not probe the imaps listener"
    live = subprocess.run(
        [*argv[:-1], argv[-1].replace(container_port, f"127.0.0.1:{stack_dovecot.port}")],
        capture_output=True,
        timeout=15,
    )
    assert live.returncode == 0, live.stderr
    dead = subprocess.run(
        [*argv[:-1], argv[-1].replace(container_port, f"127.0.0.1:{free_port()}")],
        capture_output=True,
        timeout=15,
    )
    assert dead.returncode != 0, "the healthcheck passes with nothing listening"


def test_dovecot_entrypoint_refuses_a_login_that_would_corrupt_the_users_file(tmp_path):
    users_file = tmp_path / "users"
    result = subprocess.run(
        ["/bin/sh", str(DOVECOT_DIR / "entrypoint.sh")],
        env={
            "PATH": os.environ["PATH"],
            "DOVECOT_USER": "jira:admin",
            "DOVECOT_PASSWORD": "x",
            "DOVECOT_USERS_FILE": str(users_file),
            "DOVECOT_CERT_DIR": str(tmp_path),
            "DOVECOT_KEY_DIR": str(tmp_path),
            "DOVECOT_CONF": str(tmp_path / "none.conf"),
        },
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert result.returncode != 0 and "must not contain ':'" in result.stderr
    assert not users_file.exists()


def test_dovecot_rejects_a_wrong_password(stack_dovecot):
    # Last of the Dovecot tests: a failed login earns this address an auth penalty.
    client = imaplib.IMAP4_SSL(LOOPBACK, stack_dovecot.port, ssl_context=_unverified_context())
    try:
        with pytest.raises(imaplib.IMAP4.error):
            client.login(stack_dovecot.login, stack_dovecot.password + "-wrong")
    finally:
        with contextlib.suppress(Exception):
            client.shutdown()


# ------------------------------------------------------------------ the Jira stand-in command, for real


@pytest.fixture(scope="module")
def stack_standin() -> Iterator[tuple[int, dict[str, Any]]]:
    """The jira-standin service's command, run from the repo root as the image runs it from /opt/airflow."""
    service = resolved_services()["jira-standin"]
    argv = list(service["command"])
    assert argv[:3] == ["python", "-m", "devkit.jira_standin"], argv
    port = free_port()
    argv[0] = sys.executable
    argv[argv.index("--host") + 1] = LOOPBACK
    argv[argv.index("--port") + 1] = str(port)
    env = {**os.environ, **environment_of(service), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError):
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            break
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_group(process)
            output = process.stdout.read().decode(errors="replace")[-4000:] if process.stdout else ""
            service_unavailable(f"the jira-standin service command did not start:\n{output}")
        time.sleep(0.05)
    try:
        yield port, service
    finally:
        _stop_group(process)
        if process.stdout:
            process.stdout.close()


def _get_myself(port: int, login: str, password: str) -> int:
    auth = base64.b64encode(f"{login}:{password}".encode()).decode()
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        connection.request("GET", "/rest/api/3/myself", headers={"Authorization": f"Basic {auth}"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_jira_default_authenticates_against_the_standin_service(stack_standin):
    port, _ = stack_standin
    conn = json.loads(environment_of(resolved_services()["airflow-worker"])["AIRFLOW_CONN_JIRA_DEFAULT"])
    assert _get_myself(port, conn["login"], conn["password"]) == 200
    assert _get_myself(port, conn["login"], conn["password"] + "-wrong") == 401


def test_jira_standin_healthcheck_passes_against_the_running_standin(stack_standin):
    port, service = stack_standin
    argv = healthcheck_shell(service)
    container_port = service["command"][service["command"].index("--port") + 1]
    assert argv[0] == "python" and container_port in argv[-1], "the healthcheck does not probe the stand-in"
    probe = [sys.executable, *argv[1:-1], argv[-1].replace(container_port, str(port))]
    assert subprocess.run(probe, capture_output=True, timeout=15).returncode == 0
    dead = [sys.executable, *argv[1:-1], argv[-1].replace(container_port, str(free_port()))]
    assert subprocess.run(dead, capture_output=True, timeout=15).returncode != 0


# ------------------------------------------------------------- airflow-init's database step, for real


def airflow_init_python() -> str:
    """The Python program airflow-init feeds to the image's interpreter through a heredoc."""
    command = services()["airflow-init"]["command"][-1]
    match = re.search(r"python - <<'PY'\n(.*?)\nPY\n", command, re.DOTALL)
    assert match, "airflow-init no longer runs its Python step as a quoted heredoc"
    return match.group(1)


def _run_airflow_init_python(server: PostgresServer, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    libpq = {
        "PGHOST": server.host,
        "PGPORT": str(server.port),
        "PGUSER": server.user,
        "PGPASSWORD": server.password,
        "PGDATABASE": "postgres",
    }
    return subprocess.run(
        [sys.executable, "-"],
        input=airflow_init_python(),
        env={"PATH": os.environ["PATH"], **env, **libpq},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _store_connection(conn: dict[str, Any], server: PostgresServer) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=server.host,
        port=server.port,
        user=conn["login"],
        password=conn["password"],
        dbname=conn["schema"],
        connect_timeout=10,
    )


def test_airflow_init_creates_the_jira_store_the_connection_opens(postgres_server, tmp_path):
    resolved = resolved_services()
    init_env = environment_of(resolved["airflow-init"])
    store = json.loads(init_env["AIRFLOW_CONN_JIRA_STORE"])
    with psycopg.connect(postgres_server.admin_dsn(), autocommit=True) as admin:
        taken = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (store["schema"],)).fetchone()
    assert not taken, f"a database {store['schema']} already exists on the session server"
    passwords_file = tmp_path / "simple_auth_manager_passwords.json"
    env = {
        key: init_env[key]
        for key in (
            "AIRFLOW_ADMIN_USERNAME",
            "AIRFLOW_ADMIN_PASSWORD",
            "JIRA_STORE_USER",
            "JIRA_STORE_PASSWORD",
        )
    }
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords_file)
    try:
        first = _run_airflow_init_python(postgres_server, env)
        assert first.returncode == 0, first.stderr

        assert json.loads(passwords_file.read_text()) == {
            env["AIRFLOW_ADMIN_USERNAME"]: env["AIRFLOW_ADMIN_PASSWORD"]
        }
        assert passwords_file.stat().st_mode & 0o077 == 0, "the admin password file is readable by others"

        # The DAGs create their table on first use, so the connection's login must own the schema.
        with _store_connection(store, postgres_server) as conn:
            conn.execute("CREATE TABLE stack_probe (key text PRIMARY KEY)")
            assert conn.execute("SELECT current_database(), current_user").fetchone() == (
                store["schema"],
                store["login"],
            )

        # Every `docker compose up` reruns it; a changed password in .env takes effect.
        rotated = {**env, "JIRA_STORE_PASSWORD": env["JIRA_STORE_PASSWORD"] + "-rotated"}
        second = _run_airflow_init_python(postgres_server, rotated)
        assert second.returncode == 0, second.stderr
        with _store_connection(
            {**store, "password": rotated["JIRA_STORE_PASSWORD"]}, postgres_server
        ) as conn:
            assert conn.execute("SELECT count(*) FROM stack_probe").fetchone() == (0,)
        with pytest.raises(psycopg.OperationalError):
            _store_connection(store, postgres_server).close()
    finally:
        with psycopg.connect(postgres_server.admin_dsn(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(store["schema"]))
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(store["login"])))
