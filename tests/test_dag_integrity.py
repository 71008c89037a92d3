"""DAG integrity: both DAGs import cleanly, cheaply, and with exactly the graph, tags and retries we ship."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Ticket history (#25): beside the marking and the watermark, never before them.
HISTORY_EDGES = {
    ("fetch_tickets", "plan_ticket_history"),
    ("store_tickets", "plan_ticket_history"),
    ("plan_ticket_history", "fetch_history"),
    ("fetch_history", "announce_history"),
}
EXPECTED_EDGES = {
    "jira_inbox": HISTORY_EDGES
    | {
        ("wait_for_unseen_mail", "extract_ticket_keys"),
        ("extract_ticket_keys", "fetch_tickets"),
        ("extract_ticket_keys", "mark_mail_seen"),
        ("fetch_tickets", "store_tickets"),
        ("store_tickets", "mark_mail_seen"),
        ("mark_mail_seen", "report_unsettled_mail"),
    },
    "jira_sweep": HISTORY_EDGES
    | {
        ("plan_sweep", "list_changed_keys"),
        ("list_changed_keys", "fetch_tickets"),
        ("fetch_tickets", "store_tickets"),
        ("plan_sweep", "store_tickets"),  # the window its asset event names
        ("plan_sweep", "record_sweep_progress"),
        ("list_changed_keys", "record_sweep_progress"),
        ("store_tickets", "record_sweep_progress"),
    },
    "jira_census": {
        ("plan_census", "take_census"),
        ("take_census", "plan_ticket_history"),
        ("plan_ticket_history", "fetch_history"),
        ("fetch_history", "announce_history"),
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
    "jira_sweep": {"since", "until", "projects", "jql_filter", "lookback_minutes", "history_backfill"},
    "jira_census": {"projects", "max_gone_fraction", "confirm_mass_change"},
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"jira_census", "jira_inbox", "jira_sweep", "jira_ticket_changes_example"}


def test_store_tickets_updates_the_ticket_asset_and_the_example_consumer_is_scheduled_on_it(dagbag):
    from jira_mail_sync.assets import TICKET_ASSET
    from jira_mail_sync.history_tasks import TICKET_CHANGE_ASSET

    from include.names import TICKET_ASSET_URI

    assert TICKET_ASSET.uri == TICKET_ASSET_URI == "jira-mail-sync://jira_store/jira_ticket"
    for dag_id in EXPECTED_EDGES:
        outlets = {t.task_id: list(t.outlets) for t in dagbag.dags[dag_id].tasks if t.outlets}
        # The census writes the store itself (heal and marks in one task), so its event is its own.
        writer = "take_census" if dag_id == "jira_census" else "store_tickets"
        assert outlets == {writer: [TICKET_ASSET], "announce_history": [TICKET_CHANGE_ASSET]}
    example = dagbag.dags["jira_ticket_changes_example"]
    assert example.is_paused_upon_creation is True
    assert set(example.tags) == {"jira", "example"}
    assert example.doc_md and example.doc_md.strip().startswith("###")
    assert list(example.timetable.asset_condition.objects) == [TICKET_ASSET, TICKET_CHANGE_ASSET]
    assert sorted((t.task_id, t.retries) for t in example.tasks) == [
        ("median_time_in_status", 2),
        ("read_changed_tickets", 2),
    ]


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


def _inbox_dag_in_mode(monkeypatch, mode: str | None):
    from airflow.dag_processing.dagbag import DagBag

    if mode is None:
        monkeypatch.delenv("AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE", mode)
    bag = DagBag(dag_folder=str(REPO / "dags" / "jira_inbox.py"))
    return bag, bag.dags.get("jira_inbox")


@pytest.mark.parametrize("mode", [None, "idle", " IDLE "])
def test_inbox_is_woken_by_the_idle_watcher_or_a_10_minute_safety_schedule_by_default(monkeypatch, mode):
    from airflow.sdk import AssetOrTimeSchedule

    _, dag = _inbox_dag_in_mode(monkeypatch, mode)
    assert dag.max_active_runs == 1
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "*/10 * * * *"
    asset = dag.timetable.asset_condition
    assert (asset.name, asset.uri) == ("jira_unseen_mail", "imap://imap_default/INBOX")
    [watcher] = asset.watchers
    assert watcher.trigger.serialize() == (
        "jira_mail_sync.triggers.imap_idle.ImapIdleTrigger",
        {
            "imap_conn_id": "imap_default",
            "mailbox": "INBOX",
            "renew_idle_s": 600.0,
            "poll_interval_s": 60.0,
            "max_backoff_s": 300.0,
        },
    )


def test_inbox_in_poll_mode_runs_every_minute_one_run_at_a_time(monkeypatch):
    _, dag = _inbox_dag_in_mode(monkeypatch, "poll")
    assert dag.max_active_runs == 1
    assert dag.timetable.expression == "* * * * *"
    assert not dag.timetable.asset_condition


def test_an_unknown_inbox_mode_is_an_import_error_naming_the_setting(monkeypatch):
    bag, dag = _inbox_dag_in_mode(monkeypatch, "push")
    assert dag is None
    [error] = bag.import_errors.values()
    assert "AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE) must be one of idle, poll, got 'push'" in error


def test_sweep_has_real_data_intervals_every_15_minutes(dagbag):
    from airflow.sdk import CronDataIntervalTimetable

    dag = dagbag.dags["jira_sweep"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.expression == "*/15 * * * *"


def test_fetch_is_mapped_and_labelled_with_its_keys(dagbag):
    # The census fetches its few heals inside take_census (include/census.py), not mapped.
    for dag_id in set(EXPECTED_EDGES) - {"jira_census"}:
        fetch = dagbag.dags[dag_id].get_task("fetch_tickets")
        assert fetch.map_index_template == "{{ batch_label }}"
        from airflow.sdk.definitions.mappedoperator import MappedOperator

        assert isinstance(fetch, MappedOperator)


@pytest.mark.service
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
    assert result == {
        "dags": ["jira_census", "jira_inbox", "jira_sweep", "jira_ticket_changes_example"],
        "errors": [],
        "calls": [],
    }


def test_every_task_that_calls_jira_takes_a_jira_api_pool_slot(dagbag):
    calls_jira = {
        # extract_ticket_keys checks chosen extra fields against /rest/api/3/field.
        "jira_inbox": {"extract_ticket_keys", "fetch_tickets", "plan_ticket_history", "fetch_history"},
        "jira_sweep": {
            "plan_sweep",
            "list_changed_keys",
            "fetch_tickets",
            "plan_ticket_history",
            "fetch_history",
        },
        "jira_census": {"take_census", "plan_ticket_history", "fetch_history"},
    }
    from include.names import JIRA_API_POOL

    assert JIRA_API_POOL == "jira_api"  # the name README, compose and `make demo` create
    for dag_id, task_ids in calls_jira.items():
        pools = {t.task_id: t.pool for t in dagbag.dags[dag_id].tasks}
        assert pools == {t: JIRA_API_POOL if t in task_ids else "default_pool" for t in pools}
