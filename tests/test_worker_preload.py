"""The Celery worker's preload (jira_mail_sync.worker_preload) covers what a task process would import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from devkit.airflow_env import CELERY_WORKER_PRELOAD, SCHEDULER_IDLE_SLEEP_S
from tests.stack_files import REPO, environment_of, services

PRELOAD_MODULE = "jira_mail_sync.worker_preload"
PRODUCT_PACKAGES = ("jira_mail_sync", "include")


def _modules_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter (with the DAG processor's sys.path) after `code`."""
    probe = textwrap.dedent(
        f"""
        import json, sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "plugins")!r}]
        {code}
        print(json.dumps(sorted(sys.modules)))
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _product(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".", 1)[0] in PRODUCT_PACKAGES}


@pytest.mark.service
def test_the_preload_imports_every_product_module_a_dag_file_imports():
    parsed = _modules_after(
        f"""
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(REPO / "dags")!r})
        assert not bag.import_errors, bag.import_errors
        """
    )
    preloaded = _modules_after(f"import {PRELOAD_MODULE}")
    missing = _product(parsed) - preloaded
    assert not missing, f"{PRELOAD_MODULE} leaves these for every task process to import: {sorted(missing)}"
    # And what the task runner imports to parse a DAG file, the larger part of a task's start-up.
    assert "airflow.dag_processing.dagbag" in preloaded


@pytest.mark.service
def test_the_preload_opens_no_connection():
    # Imported in the Celery worker before any task: it must not need a connection or a database.
    modules = _modules_after(
        f"""
        import socket
        def refuse(*a, **k):
            raise AssertionError("the preload opened a connection")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        import {PRELOAD_MODULE}
        """
    )
    assert PRELOAD_MODULE in modules


def test_the_compose_file_and_the_native_stack_share_the_latency_settings():
    assert json.loads(CELERY_WORKER_PRELOAD) == {"imports": [PRELOAD_MODULE]}
    worker = environment_of(services()["airflow-worker"])
    assert json.loads(worker["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"]) == json.loads(CELERY_WORKER_PRELOAD)
    scheduler = environment_of(services()["airflow-scheduler"])
    assert scheduler["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] == SCHEDULER_IDLE_SLEEP_S
