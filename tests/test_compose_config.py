"""The Airflow services' settings, the variables from .env.example, and where the connections lead."""

from __future__ import annotations

import importlib
import importlib.util
import json
import pkgutil
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.stack_files import (
    AIRFLOW_DOCKERFILE,
    AIRFLOW_SERVICES,
    CONNECTION_IDS,
    ENV_EXAMPLE,
    REPO,
    compose,
    compose_variables,
    conn_var,
    container_ports,
    dockerfile,
    dovecot_imaps_port,
    env_example,
    environment_of,
    interpolate,
    marker_env,
    resolved_services,
    services,
    volume_targets,
)

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
    # The project's own section: the options its code reads.
    from jira_mail_sync.settings import OPTIONS

    from include.names import CONFIG_SECTION

    options[CONFIG_SECTION] = {option.name for option in OPTIONS}
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


def _hook_default_conn_names() -> set[str]:
    """`default_conn_name` of every hook class the plugins define."""
    import jira_mail_sync.hooks as hooks_package

    names = set()
    for found in pkgutil.walk_packages(hooks_package.__path__, f"{hooks_package.__name__}."):
        module = importlib.import_module(found.name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__ and hasattr(value, "get_conn"):
                names.add(value.default_conn_name)
    return names


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
    defaults = _hook_default_conn_names()
    assert defaults == set(CONNECTION_IDS)
    missing = {conn_var(name) for name in defaults} - named
    assert not missing, f"hooks default to connections the stack does not define: {sorted(missing)}"
