"""Two sites sharing one PostgreSQL store, each with its own Jira stand-in and its own mailbox, both
`INBOX` with the same UIDVALIDITY: the generated inbox DAGs in dag.test() keep their mail ledgers and
their tickets apart (#23: "Ledger and watermark rows are keyed by site and mailbox"; "mail to each
mailbox lands under the right site"; "the same key on two sites gives two rows").

Two real Dovecot accounts are made until both INBOXes have the same UIDVALIDITY (Dovecot takes it
from the second the mailbox index is created, so two accounts opened in the same second share it; the
test asserts it got one). The first mailbox's UID 1 is rejected mail; the second's UID 1 is good Jira
mail. With a ledger keyed by folder, UIDVALIDITY and UID, the rejection would hold the second
mailbox's UID 1 back for ever. Both sites have an ABC-1, each with its own summary.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import yaml

from devkit.mail_factory import jira_notification
from tests.harness.airflow_env import load_dag, run_dag

pytestmark = pytest.mark.airflow
START = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
MAIL_SITE = {"acme": "acme.atlassian.net", "globex": "globex.atlassian.net"}
ATTEMPTS = 8


def _same_uidvalidity_pair(dovecot):
    """Two fresh accounts whose INBOX has one UIDVALIDITY (closing the pairs that did not match)."""
    for _ in range(ATTEMPTS):
        first, second = dovecot.create_account(), dovecot.create_account()
        if first.uidvalidity() == second.uidvalidity():
            return first, second
        first.close()
        second.close()
    pytest.fail(f"no two accounts with one UIDVALIDITY in {ATTEMPTS} tries")


@pytest.fixture
def shared_store(airflow_db, dovecot, jira_standin, second_jira_standin, postgres_db, tmp_path, monkeypatch):
    first, second = _same_uidvalidity_pair(dovecot)
    jira = {"acme": jira_standin, "globex": second_jira_standin}
    imap = {"acme": first, "globex": second}
    monkeypatch.setenv("AIRFLOW_CONN_STORE_SHARED", json.dumps(postgres_db.airflow_conn()))
    sites = []
    for name in ("acme", "globex"):
        monkeypatch.setenv(f"AIRFLOW_CONN_IMAP_{name.upper()}", json.dumps(imap[name].airflow_conn()))
        monkeypatch.setenv(f"AIRFLOW_CONN_JIRA_{name.upper()}", json.dumps(jira[name].airflow_conn()))
        sites.append(
            {
                "name": name,
                "jira_conn_id": f"jira_{name}",
                "store_conn_id": "store_shared",
                "mailboxes": [
                    {"imap_conn_id": f"imap_{name}", "trusted_senders": [f"jira@{MAIL_SITE[name]}"]}
                ],
            }
        )
    path = tmp_path / "jira_sites.yaml"
    path.write_text(yaml.safe_dump({"sites": sites}))
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE", str(path))
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE", "poll")  # no watcher needed for dag.test()
    try:
        yield jira, postgres_db, imap
    finally:
        first.close()
        second.close()


def _ledger(database) -> list[tuple]:
    conn = database.connect()
    try:
        rows = conn.execute(
            "SELECT site, imap_conn_id, mailbox, uidvalidity, uid, state FROM jira_mail_ledger "
            "ORDER BY imap_conn_id, uid"
        ).fetchall()
        return [tuple(row) for row in rows]
    finally:
        conn.close()


def _tickets(database) -> list[tuple]:
    conn = database.connect()
    try:
        rows = conn.execute("SELECT site, key, summary FROM jira_ticket ORDER BY site, key")
        return [tuple(row) for row in rows]
    finally:
        conn.close()


def test_mail_to_each_sites_mailbox_lands_under_that_site_and_a_rejection_never_holds_the_others_uid(
    shared_store,
):
    jira, database, imap = shared_store
    uidvalidity = imap["acme"].uidvalidity()
    assert imap["globex"].uidvalidity() == uidvalidity
    jira["acme"].add_issue("ABC-1", summary="acme's ABC-1", updated=START)
    jira["globex"].add_issue("ABC-1", summary="globex's ABC-1", updated=START)
    jira["globex"].add_issue("ABC-2", summary="globex's ABC-2", updated=START)
    # acme's inbox: UID 1 from a sender nobody trusts, UID 2 good mail.
    imap["acme"].append(jira_notification("ABC-1", site="evil.example"))
    imap["acme"].append(jira_notification("ABC-1", site=MAIL_SITE["acme"]))
    # globex's inbox: UIDs 1 and 2 good mail, the same UIDs (and UIDVALIDITY) as acme's.
    imap["globex"].append(jira_notification("ABC-2", site=MAIL_SITE["globex"]))
    imap["globex"].append(jira_notification("ABC-1", site=MAIL_SITE["globex"]))

    first = run_dag(load_dag("jira_inbox__acme__inbox"))
    assert first.state == "success", first.states
    assert _ledger(database) == [
        ("acme", "imap_acme", "INBOX", uidvalidity, 1, "rejected"),
        ("acme", "imap_acme", "INBOX", uidvalidity, 2, "settled"),
    ]
    assert _tickets(database) == [("acme", "ABC-1", "acme's ABC-1")]
    assert jira["globex"].requests == [], "acme's inbox asked globex's Jira"
    assert not any("\\Seen" in flags for flags in imap["globex"].flags_by_uid().values())

    second = run_dag(load_dag("jira_inbox__globex__inbox"))
    assert second.state == "success", second.states
    # globex's UID 1 was taken, not held back by acme's rejected UID 1.
    assert second.xcom("wait_for_unseen_mail")["uids"] == [1, 2]
    assert all("\\Seen" in flags for flags in imap["globex"].flags_by_uid().values())
    # Each site settled its own ledger rows and stored its own ABC-1: two rows for one key.
    assert _ledger(database) == [
        ("acme", "imap_acme", "INBOX", uidvalidity, 1, "rejected"),
        ("acme", "imap_acme", "INBOX", uidvalidity, 2, "settled"),
        ("globex", "imap_globex", "INBOX", uidvalidity, 1, "settled"),
        ("globex", "imap_globex", "INBOX", uidvalidity, 2, "settled"),
    ]
    assert _tickets(database) == [
        ("acme", "ABC-1", "acme's ABC-1"),
        ("globex", "ABC-1", "globex's ABC-1"),
        ("globex", "ABC-2", "globex's ABC-2"),
    ]
    # A release of everything held in globex's inbox finds nothing of acme's to release.
    again = run_dag(load_dag("jira_inbox__globex__inbox"), conf={"release_all": True})
    assert again.state in ("skipped", "success"), again.states
    assert _ledger(database)[0] == ("acme", "imap_acme", "INBOX", uidvalidity, 1, "rejected")
