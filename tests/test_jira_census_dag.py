"""jira_census end to end: the Jira stand-in with 5,000 issues in 3 projects, a real store, dag.test()."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests import census_scenario
from tests.harness.airflow_env import load_dag, run_dag

pytestmark = pytest.mark.airflow


@pytest.fixture
def census_env(airflow_db, jira_standin, jira_conn_env, store_backend, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_STORE", json.dumps(store_backend.airflow_conn()))
    return jira_standin, store_backend


@pytest.fixture
def census_dag():
    # A fresh DAG object per test: dag.test() leaves the run's conf in the DAG's params.
    return load_dag("jira_census")


def _event_extra(result) -> dict | None:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .filter(AssetEvent.source_dag_id == result.dag_id, AssetEvent.source_run_id == result.run_id)
            .all()
        )
        return events[-1].extra if events else None


def test_one_census_of_5000_issues_gets_every_row_right_and_a_second_changes_nothing(census_env, census_dag):
    jira, store = census_env
    conn = store.connect()
    scenario = census_scenario.build(jira, conn, store.dialect, 5000)
    jira.clear_requests()

    first = run_dag(census_dag)

    assert first.state == "success", first.states
    census_scenario.check_rows(scenario, census_scenario.store_rows(conn))
    summary = first.xcom("take_census")
    totals = {name: sum(c[name] for c in summary["counts"].values()) for name in ("healed", "listed")}
    assert totals == {"healed": 5, "listed": 5000 - 7 - 3 - 2 - 1}
    extra = _event_extra(first)
    assert extra["source"] == "census" and extra["changed_count"] == summary["changed_count"] > 0
    # 1 + 1 + 1 search pages, one bulk fetch for the 15 unlisted ids, 11 GETs for the ones it left
    # out (deleted, archived, hidden), and the heal's one bulk fetch of 5 keys; nothing per ticket.
    assert jira.request_count("/rest/api/3/search/jql") == 3
    assert jira.request_count("/rest/api/3/issue/bulkfetch") == 2
    assert jira.request_count("/rest/api/3/issue/", method="GET") == 11

    rows = census_scenario.store_rows(conn)
    second = run_dag(load_dag("jira_census"))
    assert second.state == "success", second.states
    assert _event_extra(second)["changed_count"] == 0
    again = census_scenario.store_rows(conn)
    assert {k: v[:3] + v[4:] for k, v in again.items()} == {k: v[:3] + v[4:] for k, v in rows.items()}
    conn.close()


def test_losing_a_whole_project_fails_the_run_until_a_human_confirms(census_env, census_dag):
    jira, store = census_env
    conn = store.connect()
    census_scenario.build(jira, conn, store.dialect, 300, changes=False)
    jira.deny_project("GAM")
    before = census_scenario.store_rows(conn)

    refused = run_dag(census_dag)

    assert refused.state == "failed"
    assert refused.states["take_census"] == ["failed"]  # no retries: it is a decision, not a fault
    assert census_scenario.store_rows(conn) == before
    assert _event_extra(refused) is None

    confirmed = run_dag(load_dag("jira_census"), conf={"confirm_mass_change": True})
    assert confirmed.state == "success", confirmed.states
    gam = {k: v for k, v in census_scenario.store_rows(conn).items() if k.startswith("GAM-")}
    assert len(gam) == 100 and {v[0] for v in gam.values()} == {"not_visible"}
    conn.close()


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_against_jira_data_center_the_census_fails_at_once_and_sends_nothing(
    census_env, census_dag, monkeypatch
):
    # Data Center has neither the id-only /search/jql nor bulk fetch by id: a clear failure, no marks.
    from include.ticket_store import ensure_table, upsert_tickets
    from tests.harness.jira_standin import DC_PERSONAL_ACCESS_TOKEN

    jira, store = census_env
    issue = jira.add_issue("ABC-1", summary="alive")
    conn = store.connect()
    ensure_table(conn, store.dialect)
    ticket = {"key": "ABC-1", "issue_id": issue["id"], "summary": "alive", "status": "To Do"}
    at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    upsert_tickets(
        conn, store.dialect, [{**ticket, "updated_at": at.isoformat()}], source="sweep", fetched_at=at
    )
    jira.remove_issue("ABC-1")
    jira.use_flavor("datacenter", personal_access_token=DC_PERSONAL_ACCESS_TOKEN)
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_DEFAULT", json.dumps(jira.airflow_conn()))
    jira.clear_requests()

    result = run_dag(census_dag)

    assert result.state == "failed" and result.states["take_census"] == ["failed"], result.states
    assert jira.request_count("/rest/api/2/search") == jira.request_count("/rest/api/3/") == 0
    row = conn.execute("SELECT deleted_at, gone_reason FROM jira_ticket").fetchone()
    assert tuple(row) == (None, None)
