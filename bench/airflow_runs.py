"""Whole DAG runs for the benchmarks: a private Airflow home with a migrated database, and `airflow dags test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from devkit.airflow_env import airflow_env

REPO = Path(__file__).resolve().parents[1]
AIRFLOW = [sys.executable, "-m", "airflow"]


def migrated_airflow(home: Path, connections: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """The environment of an Airflow in `home` (created, SQLite metadata, migrated) with `connections`."""
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(
        os.environ, home=home, database_url=f"sqlite:///{home}/airflow.db", connections=connections
    )
    subprocess.run([*AIRFLOW, "db", "migrate"], env=env, cwd=REPO, check=True, capture_output=True)
    return env


def dags_test(
    env: Mapping[str, str], dag_id: str, conf: Mapping[str, object]
) -> subprocess.CompletedProcess[str]:
    """One whole run of `dag_id` in-process through `airflow dags test -c CONF`."""
    return subprocess.run(
        [*AIRFLOW, "dags", "test", dag_id, "-c", json.dumps(conf)],
        env=dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
