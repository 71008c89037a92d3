"""Two mailboxes, both `INBOX` with the same UIDVALIDITY, on one PostgreSQL store: the generated inbox
DAGs in dag.test() keep their mail ledgers apart (#23: "Ledger and watermark rows are keyed by site
and mailbox").

Two real Dovecot accounts are made until both INBOXes have the same UIDVALIDITY (Dovecot takes it
from the second the mailbox index is created, so two accounts opened in the same second share it; the
test asserts it got one). They feed one site (the sites file refuses two sites in one store until
jira_ticket is keyed by site; the ledger key holds the site as well, see test_mail_ledger_by_mailbox).
The first mailbox's UID 1 is rejected mail; the second's UID 1 is good Jira mail. With a ledger keyed
by folder, UIDVALIDITY and UID, the rejection would hold the second mailbox's UID 1 back for ever.
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
MAIL_SITE = "acme.atlassian.net"
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
def shared_store(airflow_db, dovecot, jira_standin, postgres_db, tmp_path, monkeypatch):
    first, second = _same_uidvalidity_pair(dovecot)
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_FIRST", json.dumps(first.airflow_conn()))
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_SECOND", json.dumps(second.airflow_conn()))
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_ACME", json.dumps(jira_standin.airflow_conn()))
    monkeypatch.setenv("AIRFLOW_CONN_STORE_SHARED", json.dumps(postgres_db.airflow_conn()))
    trusted = [f"jira@{MAIL_SITE}"]
    site = {
        "name": "acme",
        "jira_conn_id": "jira_acme",
        "store_conn_id": "store_shared",
        "mailboxes": [
            {"imap_conn_id": "imap_first", "slug": "first", "trusted_senders": trusted},
            {"imap_conn_id": "imap_second", "slug": "second", "trusted_senders": trusted},
        ],
    }
    path = tmp_path / "jira_sites.yaml"
    path.write_text(yaml.safe_dump({"sites": [site]}))
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE", str(path))
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE", "poll")  # no watcher needed for dag.test()
    try:
        yield jira_standin, postgres_db, {"imap_first": first, "imap_second": second}
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


def test_a_rejection_in_one_inbox_never_holds_the_same_uid_of_the_other_and_each_settles_its_own(
    shared_store,
):
    jira, database, imap = shared_store
    uidvalidity = imap["imap_first"].uidvalidity()
    assert imap["imap_second"].uidvalidity() == uidvalidity
    jira.add_issue("ABC-1", summary="first", updated=START)
    jira.add_issue("ABC-2", summary="second", updated=START)
    # The first inbox: UID 1 from a sender nobody trusts, UID 2 good mail.
    imap["imap_first"].append(jira_notification("ABC-1", site="evil.example"))
    imap["imap_first"].append(jira_notification("ABC-1", site=MAIL_SITE))
    # The second inbox: UIDs 1 and 2 good mail, the same UIDs as the first's.
    imap["imap_second"].append(jira_notification("ABC-2", site=MAIL_SITE))
    imap["imap_second"].append(jira_notification("ABC-1", site=MAIL_SITE))

    first = run_dag(load_dag("jira_inbox__acme__first"))
    assert first.state == "success", first.states
    assert _ledger(database) == [
        ("acme", "imap_first", "INBOX", uidvalidity, 1, "rejected"),
        ("acme", "imap_first", "INBOX", uidvalidity, 2, "settled"),
    ]
    assert not any("\\Seen" in flags for flags in imap["imap_second"].flags_by_uid().values())

    second = run_dag(load_dag("jira_inbox__acme__second"))
    assert second.state == "success", second.states
    # The second inbox's UID 1 was taken, not held back by the first's rejected UID 1.
    assert second.xcom("wait_for_unseen_mail")["uids"] == [1, 2]
    assert all("\\Seen" in flags for flags in imap["imap_second"].flags_by_uid().values())
    # Each settled its own rows; the first's rejection is as it was.
    assert _ledger(database) == [
        ("acme", "imap_first", "INBOX", uidvalidity, 1, "rejected"),
        ("acme", "imap_first", "INBOX", uidvalidity, 2, "settled"),
        ("acme", "imap_second", "INBOX", uidvalidity, 1, "settled"),
        ("acme", "imap_second", "INBOX", uidvalidity, 2, "settled"),
    ]
    # A release of everything held in the second inbox finds nothing of the first's to release.
    again = run_dag(load_dag("jira_inbox__acme__second"), conf={"release_all": True})
    assert again.state == "skipped" or again.state == "success", again.states
    assert _ledger(database)[0] == ("acme", "imap_first", "INBOX", uidvalidity, 1, "rejected")
