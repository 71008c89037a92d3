"""The change feed under real dag.test() runs: the asset event, its extra, and extra fields end to end.

Whether a downstream DAG is then triggered by the scheduler is checked on the real scheduler of
`make test-distributed` (tests_distributed/test_celery_stack.py), since dag.test() has none.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devkit.mail_factory import jira_notification
from include.names import TICKET_ASSET_URI
from include.ticket_store import ensure_table, get_ticket
from tests.harness.airflow_env import load_dag, run_dag

SITE = "acme.atlassian.net"
TRUSTED = {"trusted_senders": [f"jira@{SITE}"]}
T0 = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)

pytestmark = pytest.mark.airflow


def asset_events(dag_id: str, run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .filter(AssetModel.uri == TICKET_ASSET_URI, AssetEvent.source_dag_id == dag_id)
            .filter(AssetEvent.source_run_id == run_id)
            .all()
        )
        return [{"task": event.source_task_id, "extra": dict(event.extra)} for event in events]


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_the_inbox_store_emits_one_asset_event_naming_the_changed_keys(inbox_env):
    imap, jira, store = inbox_env
    for key in ("ABC-1", "ABC-2", "ABC-3"):
        jira.add_issue(key, summary=key, updated=T0)
        imap.append(jira_notification(key, site=SITE))
    imap.append(jira_notification("ABC-404", site=SITE))  # unknown to Jira and never stored: no change

    result = run_dag(load_dag("jira_inbox"), conf=TRUSTED)

    assert result.state == "success", result.states
    [event] = asset_events("jira_inbox", result.run_id)
    assert event["task"] == "store_tickets"
    extra = event["extra"]
    assert (extra["source"], extra["run_id"]) == ("inbox", result.run_id)
    assert (extra["changed_count"], extra["changed_keys"], extra["keys_truncated"]) == (
        3,
        ["ABC-1", "ABC-2", "ABC-3"],
        False,
    )
    assert extra["window_end"] is not None


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_the_sweep_event_names_its_window_and_bounds_the_keys(inbox_env):
    _, jira, _ = inbox_env
    start = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    for n in range(1, 601):
        jira.add_issue(f"SWP-{n}", summary="s", updated=start + timedelta(seconds=n))
    conf = {"since": start.isoformat(), "until": (start + timedelta(hours=1)).isoformat()}

    result = run_dag(load_dag("jira_sweep"), conf=conf)

    assert result.state == "success", result.states
    [event] = asset_events("jira_sweep", result.run_id)
    extra = event["extra"]
    assert extra["source"] == "sweep"
    assert (extra["window_start"], extra["window_end"]) == (conf["since"], conf["until"])
    assert extra["changed_count"] == 600 and extra["keys_truncated"] is True
    assert extra["changed_keys"] == sorted(f"SWP-{n}" for n in range(1, 601))[:500]


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_configured_custom_field_reaches_the_store_through_the_inbox_dag(inbox_env, monkeypatch):
    imap, jira, store = inbox_env
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__EXTRA_FIELDS", "customfield_10016")
    jira.add_custom_field("customfield_10016", "Story Points", "number")
    jira.add_issue("ABC-1", summary="Pointed", updated=T0, custom_fields={"customfield_10016": 13.0})
    imap.append(jira_notification("ABC-1", site=SITE))

    result = run_dag(load_dag("jira_inbox"), conf=TRUSTED)

    assert result.state == "success", result.states
    conn = store.connect()
    ensure_table(conn, store.dialect)
    assert get_ticket(conn, store.dialect, "ABC-1")["fields"] == {"customfield_10016": 13.0}
    assert jira.request_count("/rest/api/3/field") == 1  # validated once, when the run planned


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_an_unknown_configured_field_fails_the_run_before_any_fetch(inbox_env, monkeypatch):
    imap, jira, _ = inbox_env
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__EXTRA_FIELDS", "customfield_99999")
    jira.add_issue("ABC-1", summary="s", updated=T0)
    imap.append(jira_notification("ABC-1", site=SITE))

    result = run_dag(load_dag("jira_inbox"), conf=TRUSTED)

    assert result.states["extract_ticket_keys"] == ["failed"]
    assert jira.request_count("/rest/api/3/issue/bulkfetch") == 0
    assert all("\\Seen" not in flags for flags in imap.flags_by_uid().values())
