"""The environment an Airflow of this repository runs with, for the demo, the stack and benchmarks.

Airflow is configured by environment variables only (no airflow.cfg): every variable of the caller
whose name starts with AIRFLOW is dropped first, so a stray AIRFLOW_HOME or connection (a test
session's, say) cannot leak in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from devkit.processes import LOOPBACK

REPO = Path(__file__).resolve().parents[1]
DAG_IDS = ("jira_inbox", "jira_sweep")
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
# docker-compose.yaml's settings for the latency of a run (it says why; tests/test_worker_preload.py
# keeps them equal): the Celery worker imports the product once, so the task processes it forks
# start sooner,
CELERY_WORKER_PRELOAD = '{"imports": ["jira_mail_sync.worker_preload"]}'
# and an idle scheduler looks for work five times a second instead of once.
SCHEDULER_IDLE_SLEEP_S = "0.2"


def conn_env_name(conn_id: str) -> str:
    """The variable Airflow reads a connection from: AIRFLOW_CONN_<ID>."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def airflow_env(
    base: Mapping[str, str],
    *,
    home: Path,
    database_url: str,
    connections: Mapping[str, Mapping[str, object]],
    api_port: int | None = None,
    admin_user: str = "admin",
    jwt_secret: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`base` without its AIRFLOW* variables, plus this repository's DAGs, plugins and connections.

    With `api_port`, the api-server listens on loopback there, with the simple auth manager's
    `admin_user`, and task workers call its execution API (else they call port 8080). `settings` adds
    or overrides variables (executor, parallelism, ...).
    """
    env = {name: value for name, value in base.items() if not name.startswith("AIRFLOW")}
    env.update(
        {
            # Helpers import as `include.<module>`, and the plugins' package as `jira_mail_sync`.
            "PYTHONPATH": os.pathsep.join((str(REPO), str(REPO / "plugins"))),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Paused until the jira_api pool exists, so no task queues for a pool that is not there yet.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
        }
    )
    if api_port is not None:
        api_url = f"http://{LOOPBACK}:{api_port}"
        env.update(
            {
                "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{admin_user}:admin",
                "AIRFLOW__API__HOST": LOOPBACK,
                "AIRFLOW__API__PORT": str(api_port),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
            }
        )
        if jwt_secret is not None:
            # Every component must sign and check task and user tokens with the same secret.
            env["AIRFLOW__API_AUTH__JWT_SECRET"] = jwt_secret
    for conn_id, conn in connections.items():
        env[conn_env_name(conn_id)] = json.dumps(conn)
    env.update(settings or {})
    return env
