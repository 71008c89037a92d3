"""Ticket history under real dag.test() runs of jira_sweep and jira_inbox, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from devkit.mail_factory import jira_notification
from include.names import TICKET_CHANGE_ASSET_URI
from include.ticket_history import count_changes, ensure_history_tables, status_intervals
from tests.harness.airflow_env import load_dag, run_dag

HOUR = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
BULK = "/rest/api/3/changelog/bulkfetch"
SITE = "acme.atlassian.net"
TRUSTED = {"trusted_senders": [f"jira@{SITE}"]}

pytestmark = pytest.mark.airflow


@pytest.fixture
def history_on(monkeypatch):
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__HISTORY_FIELDS", "status,assignee,sprint")


@pytest.fixture
def sweep_env(airflow_db, jira_standin, jira_conn_env, store_backend, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_STORE", json.dumps(store_backend.airflow_conn()))
    return jira_standin, store_backend


def window(**extra) -> dict:
    return {
        "since": HOUR.isoformat(),
        "until": (HOUR + timedelta(minutes=15)).isoformat(),
        "lookback_minutes": 0,
        **extra,
    }


def history_events(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .filter(AssetModel.uri == TICKET_CHANGE_ASSET_URI, AssetEvent.source_run_id == run_id)
            .all()
        )
        return [dict(event.extra) for event in events]


def stored(store_backend, issue_id=None):
    conn = store_backend.connect()
    try:
        ensure_history_tables(conn, store_backend.dialect)
        return count_changes(conn, store_backend.dialect, issue_id), status_intervals(
            conn, store_backend.dialect
        )
    finally:
        conn.close()


def test_the_sweep_stores_history_once_and_a_rerun_asks_jira_nothing(sweep_env, history_on):
    jira, store = sweep_env
    jira.set_time_zone("Australia/Sydney")
    issue = jira.add_issue("ABC-1", summary="flows", updated=HOUR - timedelta(days=1))
    for n, status in enumerate(["In Progress", "In Review", "Done"]):
        jira.update_issue("ABC-1", status=status, updated=HOUR + timedelta(minutes=n + 1))
    jira.update_issue("ABC-1", assignee_email="ann@example.com", updated=HOUR + timedelta(minutes=5))
    jira.add_issue("ABC-2", summary="never changed", updated=HOUR + timedelta(minutes=6))

    first = run_dag(load_dag("jira_sweep"), conf=window())

    assert first.state == "success", first.states
    assert first.states["fetch_history"] == ["success"]
    rows, stays = stored(store, int(issue["id"]))
    assert rows == 4  # three status changes and one assignee change
    assert [(s["status"], s["duration_seconds"]) for s in stays] == [
        ("To Do", None),
        ("In Progress", 60.0),
        ("In Review", 60.0),
        ("Done", None),
    ]
    (event,) = history_events(first.run_id)
    assert event["issue_keys"] == ["ABC-1"] and event["rows_inserted"] == 4
    assert jira.request_count(BULK, "POST") == 1

    jira.clear_requests()
    second = run_dag(load_dag("jira_sweep"), conf=window())

    assert second.state == "success", second.states
    assert jira.request_count(BULK) == 0 and jira.request_count("/rest/api/3/field") == 0
    assert second.states["fetch_history"] == ["skipped"]  # mapped over nothing
    assert second.states["announce_history"] == ["skipped"]
    assert history_events(second.run_id) == []
    assert stored(store, int(issue["id"]))[0] == 4


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_history_is_skipped_visibly_when_the_setting_is_empty(sweep_env, monkeypatch):
    jira, store = sweep_env
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__HISTORY_FIELDS", "")
    jira.add_issue("ABC-1", summary="s", updated=HOUR + timedelta(minutes=1))

    result = run_dag(load_dag("jira_sweep"), conf=window())

    assert result.state == "success", result.states
    assert result.states["plan_ticket_history"] == ["skipped"]
    assert result.states["store_tickets"] == ["success"]
    assert jira.request_count(BULK) == 0


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_backfill_run_reads_the_history_of_every_stored_ticket(sweep_env, monkeypatch):
    jira, store = sweep_env
    for n in range(1, 4):
        jira.add_issue(f"OPS-{n}", summary="old", updated=HOUR - timedelta(days=3))
        jira.update_issue(f"OPS-{n}", status="Done", updated=HOUR - timedelta(days=2, minutes=n))
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__HISTORY_FIELDS", "")
    week = {"since": (HOUR - timedelta(days=7)).isoformat(), "until": HOUR.isoformat(), "lookback_minutes": 0}
    assert run_dag(load_dag("jira_sweep"), conf=week).state == "success"
    assert stored(store)[0] == 0

    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__HISTORY_FIELDS", "status")
    plain = run_dag(load_dag("jira_sweep"), conf=window())  # an empty window: nothing of its own
    backfill = run_dag(load_dag("jira_sweep"), conf=window(history_backfill=True))

    assert plain.state == backfill.state == "success", backfill.states
    assert plain.states["fetch_history"] == ["skipped"]
    assert backfill.states["fetch_history"] == ["success"]
    assert stored(store)[0] == 3
    assert jira.request_count(BULK, "POST") == 1  # three issues, one request


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_the_inbox_settles_its_mail_and_stores_the_history_beside_it(inbox_env, history_on):
    imap, jira, store = inbox_env
    jira.add_issue("ABC-1", summary="mailed", updated=HOUR)
    jira.update_issue("ABC-1", status="In Progress", updated=HOUR + timedelta(minutes=3))
    imap.append(jira_notification("ABC-1", site=SITE))

    result = run_dag(load_dag("jira_inbox"), conf=TRUSTED)

    assert result.state == "success", result.states
    assert result.states["mark_mail_seen"] == ["success"]
    assert result.states["fetch_history"] == ["success"]
    assert all("\\Seen" in flags for flags in imap.flags_by_uid().values())
    assert stored(store)[0] == 1


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_on_jira_data_center_history_is_skipped_and_the_sweep_still_stores(
    sweep_env, history_on, monkeypatch
):
    # Data Center has no changelog bulk fetch: the history branch says so and skips; nothing fails.
    from tests.harness.jira_standin import DC_PERSONAL_ACCESS_TOKEN

    jira, store = sweep_env
    jira.use_flavor("datacenter", personal_access_token=DC_PERSONAL_ACCESS_TOKEN)
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_DEFAULT", json.dumps(jira.airflow_conn()))
    jira.add_issue("ABC-1", summary="s", updated=HOUR + timedelta(minutes=1))
    jira.update_issue("ABC-1", status="Done", updated=HOUR + timedelta(minutes=2))

    result = run_dag(load_dag("jira_sweep"), conf=window())

    assert result.state == "success", result.states
    assert result.states["store_tickets"] == ["success"]
    assert result.states["plan_ticket_history"] == ["skipped"]
    assert jira.request_count(BULK) == 0 and jira.request_count("/rest/api/3/") == 0
    assert stored(store)[0] == 0
