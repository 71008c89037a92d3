"""DAG integrity: both DAGs import cleanly, cheaply, and with exactly the graph, tags and retries we ship."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

EXPECTED_EDGES = {
    "jira_inbox": {
        ("wait_for_unseen_mail", "extract_ticket_keys"),
        ("extract_ticket_keys", "fetch_tickets"),
        ("extract_ticket_keys", "mark_mail_seen"),
        ("fetch_tickets", "store_tickets"),
        ("store_tickets", "mark_mail_seen"),
        ("mark_mail_seen", "report_unsettled_mail"),
    },
    "jira_sweep": {
        ("plan_sweep", "list_changed_keys"),
        ("list_changed_keys", "fetch_tickets"),
        ("fetch_tickets", "store_tickets"),
        ("plan_sweep", "record_sweep_progress"),
        ("list_changed_keys", "record_sweep_progress"),
        ("store_tickets", "record_sweep_progress"),
    },
}
EXPECTED_PARAMS = {
    "jira_inbox": {
        "mailbox",
        "max_messages",
        "trusted_senders",
        "dry_run",
        "max_attempts",
        "retry_delay_minutes",
        "release_uids",
        "release_all",
    },
    "jira_sweep": {"since", "until", "projects", "jql_filter", "lookback_minutes"},
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"jira_inbox", "jira_sweep"}


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_EDGES))
def test_dag_has_exactly_the_expected_task_graph(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    edges = {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}
    assert edges == EXPECTED_EDGES[dag_id]


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_EDGES))
def test_dag_has_tags_docs_params_and_retries(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.tags and "jira" in dag.tags
    assert dag.doc_md and dag.doc_md.strip().startswith("###")
    assert set(dag.params.keys()) == EXPECTED_PARAMS[dag_id]
    for name in dag.params.keys():
        param = dag.params.get_param(name)
        assert param.schema.get("title") and param.description, (
            f"{dag_id}.{name} needs a title and a description"
        )
    for task in dag.tasks:
        assert task.retries >= 2, f"{dag_id}.{task.task_id} has retries={task.retries}"
    assert dag.catchup is False


def test_a_failed_fetch_batch_does_not_stop_the_inbox_store_but_does_stop_the_sweeps(dagbag):
    # The inbox settles mail message by message; the sweep's watermark must not pass a failed batch.
    assert dagbag.dags["jira_inbox"].get_task("store_tickets").trigger_rule == "none_skipped"
    assert dagbag.dags["jira_sweep"].get_task("store_tickets").trigger_rule == "all_success"
    assert dagbag.dags["jira_inbox"].get_task("mark_mail_seen").trigger_rule == "all_success"


def test_inbox_runs_every_minute_one_run_at_a_time(dagbag):
    dag = dagbag.dags["jira_inbox"]
    assert dag.max_active_runs == 1
    assert dag.timetable.expression == "* * * * *"


def test_sweep_has_real_data_intervals_every_15_minutes(dagbag):
    from airflow.sdk import CronDataIntervalTimetable

    dag = dagbag.dags["jira_sweep"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.expression == "*/15 * * * *"


def test_fetch_is_mapped_and_labelled_with_its_keys(dagbag):
    for dag_id in EXPECTED_EDGES:
        fetch = dagbag.dags[dag_id].get_task("fetch_tickets")
        assert fetch.map_index_template == "{{ batch_label }}"
        from airflow.sdk.definitions.mappedoperator import MappedOperator

        assert isinstance(fetch, MappedOperator)


def test_parsing_the_dags_opens_no_socket_and_no_database():
    """Import both DAG files in a fresh interpreter where any socket connect or DB connect raises."""
    probe = textwrap.dedent(
        f"""
        import socket, sqlite3, sys, json
        calls = []
        def refuse(kind):
            def _refuse(*a, **k):
                calls.append(kind)
                raise RuntimeError("parse-time " + kind)
            return _refuse
        socket.socket.connect = refuse("socket.connect")
        socket.create_connection = refuse("socket.create_connection")
        sqlite3.connect = refuse("sqlite3.connect")
        import psycopg
        psycopg.connect = refuse("psycopg.connect")
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "plugins")!r}]
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(REPO / "dags")!r})
        print(json.dumps({{"dags": sorted(bag.dags), "errors": list(bag.import_errors), "calls": calls}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"dags": ["jira_inbox", "jira_sweep"], "errors": [], "calls": []}


def test_every_task_that_calls_jira_takes_a_jira_api_pool_slot(dagbag):
    calls_jira = {
        "jira_inbox": {"fetch_tickets"},
        "jira_sweep": {"plan_sweep", "list_changed_keys", "fetch_tickets"},
    }
    from include.names import JIRA_API_POOL

    assert JIRA_API_POOL == "jira_api"  # the name README, compose and `make demo` create
    for dag_id, task_ids in calls_jira.items():
        pools = {t.task_id: t.pool for t in dagbag.dags[dag_id].tasks}
        assert pools == {t: JIRA_API_POOL if t in task_ids else "default_pool" for t in pools}
