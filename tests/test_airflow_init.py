"""airflow-init: it creates every pool the DAGs use, and its database step works against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from devkit.postgres import PostgresServer
from include.names import JIRA_API_POOL
from tests.stack_files import (
    REPO,
    environment_of,
    resolved_services,
    services,
)

_POOLS_SET = re.compile(r"airflow pools set (\S+) (\d+)")


@pytest.mark.service
def test_airflow_init_creates_every_pool_the_dags_use():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    used = {task.pool for dag in bag.dags.values() for task in dag.tasks} - {"default_pool"}
    command = "\n".join(services()["airflow-init"]["command"])
    created = dict(_POOLS_SET.findall(command))
    assert used == {JIRA_API_POOL}
    assert used <= set(created), f"pools used but never created: {sorted(used - set(created))}"
    assert all(int(slots) >= 1 for slots in created.values()), created
    assert created == {JIRA_API_POOL: "4"}


_SITES_STEP = re.compile(r"PYTHONPATH=(\S+) \\\n\s*/entrypoint python -m (\S+) ([^\n]+)")
# The image's layout (Dockerfile: the repo's folders under /opt/airflow), mapped onto this checkout.
_IMAGE_ROOT = "/opt/airflow"


@pytest.mark.airflow
def test_airflow_init_checks_the_sites_file_and_creates_its_pools_as_written(airflow_db, tmp_path):
    """The step of the compose file itself, run here: its PYTHONPATH finds the module and the file's
    pools are created; no file means the plain jira_api pool is kept; a bad file fails the init."""
    import yaml
    from airflow.models.pool import Pool

    command = "\n".join(services()["airflow-init"]["command"])
    step = _SITES_STEP.search(command)
    assert step, "airflow-init no longer runs check_connections --sites with its own PYTHONPATH"
    path, module, args = step.groups()
    assert module == "jira_mail_sync.check_connections" and args.split() == ["--sites", "--create-pools"]
    python_path = os.pathsep.join(part.replace(_IMAGE_ROOT, str(REPO)) for part in path.split(":"))

    def init_step(dags: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": python_path, "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
        env.pop("AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE", None)
        return subprocess.run(
            [sys.executable, "-m", module, *args.split()],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    plain = init_step(tmp_path / "no-sites")
    assert plain.returncode == 0, plain.stdout + plain.stderr[-2000:]
    assert "no sites file" in plain.stdout and "pool jira_api" in plain.stdout

    dags = tmp_path / "dags"
    dags.mkdir()
    entry = {"jira_conn_id": "jira_a", "store_conn_id": "jira_store", "pool_slots": 3}
    sites = [
        {**entry, "name": "compose_a", "mailboxes": [{"imap_conn_id": "imap_a"}]},
        {**entry, "name": "compose_b", "mailboxes": [{"imap_conn_id": "imap_b"}]},
    ]
    (dags / "jira_sites.yaml").write_text(yaml.safe_dump({"sites": sites}))
    created = init_step(dags)
    assert created.returncode == 0, created.stdout + created.stderr[-2000:]
    assert {name: Pool.get_pool(name).slots for name in ("jira_api_compose_a", "jira_api_compose_b")} == {
        "jira_api_compose_a": 3,
        "jira_api_compose_b": 3,
    }

    (dags / "jira_sites.yaml").write_text(yaml.safe_dump({"sites": [{**sites[0], "pool_slots": 0}]}))
    refused = init_step(dags)
    assert refused.returncode == 1 and "sites[0] (compose_a), field pool_slots" in refused.stdout, (
        refused.stdout
    )


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
