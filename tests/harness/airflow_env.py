"""Real Airflow for the tests: a migrated SQLite metadata database and helpers to run DAGs with dag.test()."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Migrate the isolated metadata database once per session (the env is set in tests/conftest.py)."""
    home = os.environ["AIRFLOW_HOME"]
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"`airflow db migrate` failed in {home}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return home


@dataclass
class DagRunResult:
    """What a finished dag.test() run left behind: states by task (and map index) and pushed XComs."""

    state: str
    states: dict[str, list[str]]
    run_id: str
    dag_id: str

    def xcom(self, task_id: str, *, map_index: int = -1, key: str = "return_value") -> Any:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = (
                session.query(XComModel)
                .filter_by(
                    dag_id=self.dag_id, run_id=self.run_id, task_id=task_id, map_index=map_index, key=key
                )
                .one_or_none()
            )
            return None if row is None else XComModel.deserialize_value(row)

    def xcom_sizes(self) -> dict[tuple[str, int], int]:
        """Serialized size in bytes of every return_value XCom of the run."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.query(XComModel).filter_by(dag_id=self.dag_id, run_id=self.run_id).all()
            return {(r.task_id, r.map_index): len(str(r.value).encode()) for r in rows}


@pytest.fixture
def inbox_env(airflow_db, imap_conn_env, jira_standin, jira_conn_env, store_conn_env):
    """All a jira_inbox run needs: the metadata database, and imap_default, jira_default and jira_store
    pointing at real Dovecot, the Jira stand-in and the store; (IMAP account, stand-in, store backend)."""
    return imap_conn_env, jira_standin, store_conn_env


def airflow_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the `airflow` CLI in a subprocess with this session's environment (home, connections)."""
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, f"DAG import errors: {bag.import_errors}"
    return bag.dags[dag_id]


def run_dag(dag, *, conf: dict | None = None, logical_date=None, run_after=None) -> DagRunResult:
    """Run one whole DAG run in-process with dag.test() and collect its task states."""
    kwargs: dict[str, Any] = {"run_conf": conf or {}}
    if logical_date is not None:
        kwargs["logical_date"] = logical_date
    if run_after is not None:
        kwargs["run_after"] = run_after
    dr = dag.test(**kwargs)
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    states: dict[str, list[str]] = {}
    with create_session() as session:
        tis = (
            session.query(TaskInstance)
            .filter_by(dag_id=dag.dag_id, run_id=dr.run_id)
            .order_by(TaskInstance.task_id, TaskInstance.map_index)
            .all()
        )
        for ti in tis:
            states.setdefault(ti.task_id, []).append(str(getattr(ti.state, "value", ti.state)))
    return DagRunResult(
        state=str(getattr(dr.state, "value", dr.state)), states=states, run_id=dr.run_id, dag_id=dag.dag_id
    )
