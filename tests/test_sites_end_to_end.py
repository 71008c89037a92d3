"""Two sites end to end: two Jira stand-ins, two mailboxes, two stores, the generated DAGs in dag.test().

Each site has its own mailbox (a Dovecot account) and here its own store (tests/test_sites_shared_store.py
has two sites in one store). The same key ABC-1 on both sites lands once in each
site's store; a run of one site sends no request to the other's Jira, reads none of its mail and writes
nothing to its store.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from devkit.mail_factory import jira_notification
from include.store_db import table_exists as store_table_exists
from include.ticket_store import table_exists
from tests.harness.airflow_env import load_dag, run_dag

pytestmark = pytest.mark.airflow
START = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
MAIL_SITE = {"acme": "acme.atlassian.net", "globex": "globex.atlassian.net"}


@pytest.fixture
def two_sites(airflow_db, dovecot, jira_standin, second_jira_standin, tmp_path, monkeypatch):
    """Sites acme and globex: each its Jira stand-in, its SQLite store and its own Dovecot account."""
    stores = {name: (tmp_path / f"store_{name}.db").resolve() for name in ("acme", "globex")}
    accounts = {name: dovecot.create_account() for name in ("acme", "globex")}
    for name, standin in (("acme", jira_standin), ("globex", second_jira_standin)):
        monkeypatch.setenv(f"AIRFLOW_CONN_IMAP_{name.upper()}", json.dumps(accounts[name].airflow_conn()))
        monkeypatch.setenv(f"AIRFLOW_CONN_JIRA_{name.upper()}", json.dumps(standin.airflow_conn()))
        monkeypatch.setenv(
            f"AIRFLOW_CONN_STORE_{name.upper()}",
            json.dumps({"conn_type": "sqlite", "host": str(stores[name])}),
        )
    sites = [
        {
            "name": name,
            "jira_conn_id": f"jira_{name}",
            "store_conn_id": f"store_{name}",
            "mailboxes": [{"imap_conn_id": f"imap_{name}", "trusted_senders": [f"jira@{MAIL_SITE[name]}"]}],
        }
        for name in ("acme", "globex")
    ]
    path = tmp_path / "jira_sites.yaml"
    path.write_text(yaml.safe_dump({"sites": sites}))
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE", str(path))
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE", "poll")  # no watcher needed for dag.test()
    try:
        yield {"acme": jira_standin, "globex": second_jira_standin}, stores, accounts
    finally:
        for account in accounts.values():
            account.close()


def _tickets(path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        if not table_exists(conn, "sqlite"):
            return {}
        return dict(conn.execute("SELECT key, summary FROM jira_ticket").fetchall())
    finally:
        conn.close()


def _usage_tasks(path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        if not store_table_exists(conn, "sqlite", "jira_api_usage"):
            return set()
        return {row[0] for row in conn.execute("SELECT task FROM jira_api_usage")}
    finally:
        conn.close()


def test_a_sweep_of_one_site_never_touches_the_other_and_the_same_key_gives_a_row_in_each(two_sites):
    jira, stores, _ = two_sites
    jira["acme"].add_issue("ABC-1", summary="acme's ABC-1", updated=START + timedelta(minutes=3))
    jira["globex"].add_issue("ABC-1", summary="globex's ABC-1", updated=START + timedelta(minutes=4))
    jira["globex"].add_issue("ABC-2", summary="globex only", updated=START + timedelta(minutes=5))
    window = {"since": START.isoformat(), "until": (START + timedelta(minutes=15)).isoformat()}

    jira["globex"].clear_requests()
    acme = run_dag(load_dag("jira_sweep__acme"), conf=window)
    assert acme.state == "success", acme.states
    assert _tickets(stores["acme"]) == {"ABC-1": "acme's ABC-1"}
    assert _tickets(stores["globex"]) == {}
    assert jira["globex"].requests == []  # not one request to the other site's Jira
    # What the sweep asked of Jira is counted in its own site's store, task by task.
    assert _usage_tasks(stores["acme"]) == {
        "jira_sweep__acme.plan_sweep",
        "jira_sweep__acme.list_changed_keys",
        "jira_sweep__acme.fetch_tickets[0]",
    }
    assert _usage_tasks(stores["globex"]) == set()

    jira["acme"].clear_requests()
    globex = run_dag(load_dag("jira_sweep__globex"), conf=window)
    assert globex.state == "success", globex.states
    assert _tickets(stores["globex"]) == {"ABC-1": "globex's ABC-1", "ABC-2": "globex only"}
    assert _tickets(stores["acme"]) == {"ABC-1": "acme's ABC-1"}
    assert jira["acme"].requests == []
    assert globex.xcom("store_tickets")["written"] == 2


def test_mail_to_each_mailbox_lands_in_its_own_sites_store(two_sites):
    jira, stores, imap = two_sites
    jira["acme"].add_issue("ABC-1", summary="acme's ABC-1", updated=START)
    jira["globex"].add_issue("ABC-1", summary="globex's ABC-1", updated=START)
    jira["globex"].add_issue("ABC-2", summary="globex only", updated=START)
    imap["acme"].append(jira_notification("ABC-1", site=MAIL_SITE["acme"]))
    for key in ("ABC-1", "ABC-2"):
        imap["globex"].append(jira_notification(key, site=MAIL_SITE["globex"]))

    jira["globex"].clear_requests()
    acme = run_dag(load_dag("jira_inbox__acme__inbox"))
    assert acme.state == "success", acme.states
    assert _tickets(stores["acme"]) == {"ABC-1": "acme's ABC-1"}
    assert _tickets(stores["globex"]) == {}
    assert jira["globex"].requests == []
    assert all("\\Seen" in flags for flags in imap["acme"].flags_by_uid().values())
    assert not any("\\Seen" in flags for flags in imap["globex"].flags_by_uid().values())

    globex = run_dag(load_dag("jira_inbox__globex__inbox"))
    assert globex.state == "success", globex.states
    assert _tickets(stores["globex"]) == {"ABC-1": "globex's ABC-1", "ABC-2": "globex only"}
    assert _tickets(stores["acme"]) == {"ABC-1": "acme's ABC-1"}
    assert all("\\Seen" in flags for flags in imap["globex"].flags_by_uid().values())
