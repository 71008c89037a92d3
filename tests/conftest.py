"""Test session set-up: an isolated Airflow home, and the real services the tests run against.

Airflow reads its configuration when it is first imported, so the environment is set here, at
conftest import time, before any test module imports Airflow.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Airflow puts plugins/ on sys.path for DAGs; the tests do the same.
for path in (str(REPO), str(REPO / "plugins")):
    if path not in sys.path:
        sys.path.insert(0, path)

_AIRFLOW_HOME = tempfile.mkdtemp(prefix="jms-airflow-home-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
os.environ.update(
    {
        "AIRFLOW_HOME": _AIRFLOW_HOME,
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": f"{_AIRFLOW_HOME}/logs",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "True",
        # Ticket history is on by default; the DAG tests that count Jira requests exactly were written
        # before it, so it is off here and the history tests (tests/test_ticket_history_*.py) turn it on.
        "AIRFLOW__JIRA_MAIL_SYNC__HISTORY_FIELDS": "",
    }
)

# Each harness module owns one real service and its fixtures.
pytest_plugins = [
    "tests.harness.dovecot",
    "tests.harness.postgres",
    "tests.harness.jira_standin",
    "tests.harness.airflow_env",
    "tests.harness.oauth",
    "tests.harness.courier",
]

# The fixtures that start or need a real service (a server process, a loopback stand-in, a migrated
# Airflow metadata database). A test that uses none of them, directly or through other fixtures,
# runs no DAG (the `airflow` marker) and starts nothing itself (the `service` marker) is a `unit`
# test: `make test-fast` runs only those.
SERVICE_FIXTURES = frozenset(
    {
        "airflow_db",
        "airflow_cli",
        "inbox_env",
        "load_dag",
        "run_dag",
        "start_api_server",
        "courier",
        "courier_account",
        "keywordless_courier",
        "dovecot",
        "private_dovecot",
        "imap_account",
        "imap_conn_env",
        "jira_standin_server",
        "second_jira_standin",  # tests/harness/jira_standin.py: a second Jira site (#23)
        "jira_standin",
        "jira_conn_env",
        "jira_dc_standin",
        "jira_flavor",
        "oauth_standin_server",
        "oauth_standin",
        "oauth_dovecot",
        "oauth_imap_account",
        "postgres_server",
        "postgres_db",
        "store_backend",
        "store_conn_env",
        "store",
        "stored_ticket",
        "stack_dovecot",
    }
)


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        needs_service = SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if not needs_service and not any(
            item.get_closest_marker(name) for name in ("airflow", "service", "ui")
        ):
            item.add_marker(pytest.mark.unit)
