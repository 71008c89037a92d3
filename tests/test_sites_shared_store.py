"""Two Jira sites sharing ONE store, end to end in dag.test(): two stand-ins, the generated DAGs, the REST
lookup, a move and a census, on PostgreSQL and on SQLite.

Both sites have an issue ABC-1 (different ids, different summaries), and acme's ABC-3 has the same
issue id as globex's ABC-1 (two Jira sites number their issues independently). Each site's rows stay
its own: a run of one site sends no request to the other's Jira and changes none of its rows, a move
in one site is settled in that site only, and the census of one site marks nothing of the other's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from fastapi import HTTPException

from include.census import last_runs
from include.names import API_USAGE_TABLE, HISTORY_CURSOR_TABLE, TICKET_CHANGE_TABLE
from include.sites import Site
from include.ticket_store import TABLE
from tests.harness.airflow_env import load_dag, run_dag

pytestmark = pytest.mark.airflow
START = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
SITES = ("acme", "globex")


@pytest.fixture
def shared_store_sites(airflow_db, jira_standin, second_jira_standin, store_backend, tmp_path, monkeypatch):
    """Sites acme and globex, each its own Jira stand-in and pool, both on the one store `jira_store`."""
    jira = {"acme": jira_standin, "globex": second_jira_standin}
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_STORE", json.dumps(store_backend.airflow_conn()))
    for name, standin in jira.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_JIRA_{name.upper()}", json.dumps(standin.airflow_conn()))
    sites = [
        {
            "name": name,
            "jira_conn_id": f"jira_{name}",
            "store_conn_id": "jira_store",
            "mailboxes": [{"imap_conn_id": f"imap_{name}"}],
        }
        for name in SITES
    ]
    path = tmp_path / "jira_sites.yaml"
    path.write_text(yaml.safe_dump({"sites": sites}))
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE", str(path))
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE", "poll")
    # Ticket history on (conftest empties it): its plan joins jira_ticket and the cursor on site.
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__HISTORY_FIELDS", "status")
    return jira, store_backend


def _rows(backend, site: str) -> dict[str, tuple]:
    """One site's rows: key -> (issue_id, summary, previous_keys, fetched_at, deleted_at, gone_reason)."""
    conn = backend.connect()
    mark = "?" if backend.dialect == "sqlite" else "%s"
    cursor = conn.cursor()
    cursor.execute(
        f"SELECT key, issue_id, summary, previous_keys, fetched_at, deleted_at, gone_reason FROM {TABLE} "
        f"WHERE site = {mark}",
        (site,),
    )
    rows = {row[0]: tuple(row[1:]) for row in cursor.fetchall()}
    conn.commit()
    conn.close()
    return rows


def _summaries(backend, site: str) -> dict[str, str]:
    return {key: row[1] for key, row in _rows(backend, site).items()}


def _pairs(backend, query: str) -> set[tuple]:
    conn = backend.connect()
    cursor = conn.cursor()
    cursor.execute(query)
    found = {tuple(row) for row in cursor.fetchall()}
    conn.commit()
    conn.close()
    return found


def _sweep(site: str, until: datetime) -> None:
    run = run_dag(
        load_dag(f"jira_sweep__{site}"), conf={"since": START.isoformat(), "until": until.isoformat()}
    )
    assert run.state == "success", run.states


def test_two_sites_sharing_one_store_keep_their_own_abc_1_through_sweep_lookup_move_and_census(
    shared_store_sites,
):
    jira, backend = shared_store_sites
    acme, globex = jira["acme"], jira["globex"]
    # acme: ABC-1, its status edited once (a changelog entry), and ABC-3.
    acme.add_issue("ABC-1", summary="acme's ABC-1", updated=START + timedelta(minutes=1))
    acme.add_issue(
        "ABC-1", summary="acme's ABC-1", status="In Progress", updated=START + timedelta(minutes=2)
    )
    acme.add_issue("ABC-3", summary="acme's ABC-3", updated=START + timedelta(minutes=3))
    # globex numbers its own issues: after a removed first issue, its ABC-1 gets another id than acme's
    # ABC-1, namely the id of acme's ABC-3.
    globex.add_issue("TMP-1", summary="removed", updated=START)
    globex.remove_issue("TMP-1")
    globex.add_issue("ABC-1", summary="globex's ABC-1", updated=START + timedelta(minutes=4))
    globex.add_issue("ABC-2", summary="globex's ABC-2", updated=START + timedelta(minutes=5))
    until = START + timedelta(minutes=15)

    globex.clear_requests()
    _sweep("acme", until)
    assert _summaries(backend, "acme") == {"ABC-1": "acme's ABC-1", "ABC-3": "acme's ABC-3"}
    assert _rows(backend, "globex") == {}
    assert globex.requests == []
    acme_ids = {key: row[0] for key, row in _rows(backend, "acme").items()}

    acme.clear_requests()
    acme_before = _rows(backend, "acme")
    _sweep("globex", until)
    assert _summaries(backend, "globex") == {"ABC-1": "globex's ABC-1", "ABC-2": "globex's ABC-2"}
    globex_ids = {key: row[0] for key, row in _rows(backend, "globex").items()}
    assert globex_ids["ABC-1"] != acme_ids["ABC-1"]  # the same key, two issues, two rows
    assert globex_ids["ABC-1"] == acme_ids["ABC-3"]  # the same id, two issues, two rows
    assert _rows(backend, "acme") == acme_before  # not a column of acme's rows changed
    assert acme.requests == []

    # The Jira usage rows (the status page's requests and 429s) name the connection each site asked.
    assert _pairs(backend, f"SELECT DISTINCT jira_conn_id FROM {API_USAGE_TABLE}") == {
        ("jira_acme",),
        ("jira_globex",),
    }

    # Ticket history: each site's cursor and change rows carry that site's name and its own ids.
    cursors = _pairs(backend, f"SELECT site, issue_id FROM {HISTORY_CURSOR_TABLE}")
    assert cursors == {("acme", i) for i in acme_ids.values()} | {("globex", i) for i in globex_ids.values()}
    changes = _pairs(backend, f"SELECT site, issue_id, to_string FROM {TICKET_CHANGE_TABLE}")
    assert changes == {("acme", acme_ids["ABC-1"], "In Progress")}

    # The REST lookup: the site decides the rows (and, for a miss, the Jira asked).
    from jira_mail_sync.rest_api import choose_site, configured_sites, lookup_ticket

    def requested_site(name: str | None) -> Site:
        return choose_site(configured_sites(), name)

    for site, summary in (("acme", "acme's ABC-1"), ("globex", "globex's ABC-1")):
        answer = lookup_ticket("ABC-1", requested_site(site))
        assert (answer.summary, answer.source) == (summary, "store")
    globex.add_issue("ABC-7", summary="globex's unstored ABC-7")
    acme.clear_requests()
    answer = lookup_ticket("ABC-7", requested_site("globex"))
    assert (answer.summary, answer.source) == ("globex's unstored ABC-7", "jira")
    assert acme.requests == []
    with pytest.raises(HTTPException) as missing:
        requested_site(None)
    assert missing.value.status_code == 400 and "acme, globex" in missing.value.detail
    with pytest.raises(HTTPException) as unknown:
        requested_site("initech")
    assert unknown.value.status_code == 404 and "'initech'" in unknown.value.detail
    globex.remove_issue("ABC-7")

    # A move in globex (ABC-1 becomes XYZ-9, same id) renames globex's row only: not acme's ABC-1
    # (same key) nor acme's ABC-3 (same id).
    globex.move_issue("ABC-1", "XYZ-9")
    acme.clear_requests()
    acme_before = _rows(backend, "acme")
    _sweep("globex", datetime.now(UTC) + timedelta(minutes=10))
    moved = _rows(backend, "globex")
    assert sorted(moved) == ["ABC-2", "XYZ-9"]
    assert (moved["XYZ-9"][0], moved["XYZ-9"][2]) == (
        globex_ids["ABC-1"],
        ["ABC-1"] if backend.dialect == "postgres" else '["ABC-1"]',
    )
    assert _rows(backend, "acme") == acme_before
    assert lookup_ticket("ABC-1", requested_site("acme")).summary == "acme's ABC-1"
    assert acme.requests == []

    # The census of acme (its stored projects: ABC) marks nothing of globex's, nor asks globex's Jira.
    globex.clear_requests()
    globex_before = _rows(backend, "globex")
    census = run_dag(load_dag("jira_census__acme"))
    assert census.state == "success", census.states
    assert census.xcom("take_census")["counts"]["ABC"]["listed"] == 2
    assert _rows(backend, "globex") == globex_before
    assert all(row[4] is None and row[5] is None for row in _rows(backend, "acme").values())
    assert globex.requests == []
    conn = backend.connect()
    assert [run["project"] for run in last_runs(conn, backend.dialect, site="acme")] == ["ABC"]
    assert last_runs(conn, backend.dialect, site="globex") == []
    conn.close()
