"""jira_inbox with the mail ledger, end to end: a keyword-less real Courier, poison keys ahead of good mail on
real Dovecot, and a failing message's whole life (retry, quarantine, release, UIDVALIDITY change)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from devkit.mail_factory import jira_notification
from include.isolating_fetch import SINGLE_KEY_RETRIES, split_budget
from include.mail_ledger import TABLE as LEDGER_TABLE
from include.mail_ledger import list_entries
from include.ticket_store import count_tickets, ensure_table, get_ticket
from tests.harness.airflow_env import load_dag, run_dag

SITE = "acme.atlassian.net"
TRUSTED = {"trusted_senders": [f"jira@{SITE}"]}
T0 = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)

pytestmark = [pytest.mark.airflow, pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)]


def fresh_dag(*, fetch_retries: int = 0):
    """jira_inbox without task retries (a failure ends the run at once), or with quick fetch retries."""
    dag = load_dag("jira_inbox")
    for task in dag.tasks:
        task.retries = 0
    fetch = dag.get_task("fetch_tickets")
    fetch.retries = fetch_retries
    fetch.retry_delay = timedelta(seconds=1)
    fetch.retry_exponential_backoff = 0
    return dag


def store_conn(store_backend):
    conn = store_backend.connect()
    ensure_table(conn, store_backend.dialect)
    return conn, store_backend.dialect


def ledger(store_backend) -> dict[int, dict]:
    conn, dialect = store_conn(store_backend)
    try:
        entries = list_entries(
            conn, dialect, states=["rejected", "failed", "quarantined", "settled"], limit=10_000
        )
    finally:
        conn.close()
    return {e["uid"]: e for e in entries}


def ledger_row_count(store_backend) -> int:
    conn, _ = store_conn(store_backend)
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT count(*) FROM {LEDGER_TABLE}")
        return cursor.fetchone()[0]
    finally:
        conn.close()


def stored_keys(store_backend, keys) -> set[str]:
    conn, dialect = store_conn(store_backend)
    try:
        return {key for key in keys if get_ticket(conn, dialect, key) is not None}
    finally:
        conn.close()


def unseen(flags_by_uid: dict[int, set[str]]) -> set[int]:
    return {uid for uid, flags in flags_by_uid.items() if "\\Seen" not in flags}


@pytest.fixture
def jira_env(airflow_db, jira_standin, jira_conn_env, store_backend, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_STORE", json.dumps(store_backend.airflow_conn()))
    return jira_standin, store_backend


def test_junk_ahead_of_good_mail_on_a_keywordless_server_never_blocks_it(
    jira_env, courier_account, monkeypatch
):
    jira, store = jira_env
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(courier_account.airflow_conn()))
    junk = [
        courier_account.append(jira_notification("ABC-1", site=SITE, sender=f"jira@evil{n}.example"))
        for n in range(4)
    ]
    junk.append(
        courier_account.append(b"From: jira@acme.atlassian.net\r\nSubject: hello\r\n\r\nno key here\r\n")
    )
    good_keys = ["ABC-1", "ABC-2", "ABC-3"]
    for key in good_keys:
        jira.add_issue(key, summary=f"Ticket {key}", updated=T0)
    good = [courier_account.append(jira_notification(key, site=SITE)) for key in good_keys]
    conf = TRUSTED | {"max_messages": 5}  # exactly the junk fits in the first window

    runs = [run_dag(fresh_dag(), conf=conf) for _ in range(3)]

    assert [r.state for r in runs] == ["success"] * 3, [r.states for r in runs]
    # Run 1 takes only the junk (nothing to fetch); run 2 the good mail behind it; run 3 finds nothing.
    assert runs[0].states["fetch_tickets"] == ["skipped"]
    assert runs[1].xcom("wait_for_unseen_mail")["uids"] == good
    assert runs[2].states["wait_for_unseen_mail"] == ["skipped"]
    assert stored_keys(store, good_keys) == set(good_keys)
    # Courier has no MOVE but UIDPLUS: the junk was copied out and expunged by UID.
    assert unseen(courier_account.flags_by_uid()) == set()
    moved = courier_account.flags_by_uid("INBOX.Jira.Rejected")
    assert len(moved) == len(junk) and all(f == set() for f in moved.values())  # no label: no keywords
    entries = ledger(store)
    assert {uid: entries[uid]["state"] for uid in junk} == dict.fromkeys(junk, "rejected")
    assert {entries[uid]["moved_uid"] for uid in junk} == set(moved)
    assert {uid: entries[uid]["state"] for uid in good} == dict.fromkeys(good, "settled")
    assert "untrusted" in entries[junk[0]]["reason"] or "sender" in entries[junk[0]]["reason"]


BAD_KEYS = {
    "BAD-1": "server_error",
    "BAD-2": "issue_error",
    "BAD-3": "no_updated",
    "BAD-4": "server_error",
    "BAD-5": "issue_error",
    "BAD-6": "no_updated",
}


def fetch_try_numbers(result) -> list[int]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(
            dag_id=result.dag_id, run_id=result.run_id, task_id="fetch_tickets"
        )
        return [ti.try_number for ti in tis]


def bad_requests(jira) -> int:
    return sum(1 for keys, _ in jira.bulk_fetch_requests() if set(keys) & set(BAD_KEYS))


def test_poison_keys_ahead_of_good_mail_cost_bounded_requests_and_good_mail_settles_within_two_runs(
    jira_env, imap_account, monkeypatch
):
    jira, store = jira_env
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(imap_account.airflow_conn()))
    bad = list(BAD_KEYS)
    for key, kind in BAD_KEYS.items():
        jira.add_issue(key, summary=f"Poison {key}", updated=T0)
        jira.inject_key_fault(key, kind)
    good_keys = [f"OPS-{n}" for n in range(1, 151)]
    for key in good_keys:
        jira.add_issue(key, summary=f"Ticket {key}", updated=T0)
    for n in range(150):
        imap_account.drop(jira_notification(bad[n % len(bad)], site=SITE))
    for key in good_keys:
        imap_account.drop(jira_notification(key, site=SITE))
    flags = imap_account.flags_by_uid()
    failing_uids, good_uids = sorted(flags)[:150], sorted(flags)[150:]
    conf = TRUSTED | {"max_messages": 200}

    # With an Airflow retry allowed, to show that none is used: Jira answers, so the batch is split at once.
    first = run_dag(fresh_dag(fetch_retries=1), conf=conf)
    bad_in_first = bad_requests(jira)
    jira.clear_requests()
    second = run_dag(fresh_dag(fetch_retries=1), conf=conf)

    # Run 1: 150 failing + 50 good mails, 56 keys in one batch. It fails visibly, having settled the 50.
    assert first.states["fetch_tickets"] == ["success"] and first.states["mark_mail_seen"] == ["success"]
    assert fetch_try_numbers(first) == [1]  # split on the first try: no Airflow retry delay for the good keys
    assert first.state == "failed" and first.states["report_unsettled_mail"] == ["failed"]
    assert first.xcom("mark_mail_seen")["marked_seen"] == good_uids[:50]
    # Run 2: the 150 failing mails wait for their next try and take no place: the other 100 good ones.
    assert second.state == "success", second.states
    assert second.xcom("wait_for_unseen_mail")["uids"] == good_uids[50:]
    assert stored_keys(store, good_keys) == set(good_keys)
    assert stored_keys(store, bad) == set()
    assert unseen(imap_account.flags_by_uid()) == set(failing_uids)
    entries = ledger(store)
    assert {uid: (entries[uid]["state"], entries[uid]["attempts"]) for uid in failing_uids} == dict.fromkeys(
        failing_uids, ("failed", 1)
    )
    assert "HTTP 500" in entries[failing_uids[0]]["reason"]  # BAD-1's
    assert "failed validation" in entries[failing_uids[2]]["reason"]  # BAD-3's
    # The bad keys' requests in run 1: the whole batch with the client's 3 retries, then at most the
    # split budget of requests (a single key's with one retry); none in run 2.
    assert bad_in_first <= (1 + 3) + (1 + SINGLE_KEY_RETRIES) * split_budget(56), bad_in_first
    assert bad_requests(jira) == 0


def test_a_failing_message_is_retried_quarantined_released_and_a_new_uidvalidity_starts_it_over(
    jira_env, imap_account, monkeypatch
):
    jira, store = jira_env
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(imap_account.airflow_conn()))
    jira.add_issue("BAD-1", summary="Poison", updated=T0)
    jira.add_issue("ABC-1", summary="Fine", updated=T0)
    jira.inject_key_fault("BAD-1", "server_error")
    poison = imap_account.append(jira_notification("BAD-1", site=SITE))
    good = imap_account.append(jira_notification("ABC-1", site=SITE))
    conf = TRUSTED | {"max_attempts": 2, "retry_delay_minutes": 0}

    tried = run_dag(fresh_dag(), conf=conf)  # attempt 1; due again at once (no delay)
    assert tried.state == "failed" and tried.xcom("mark_mail_seen")["marked_seen"] == [good]
    assert ledger(store)[poison]["state"] == "failed"
    quarantined = run_dag(fresh_dag(), conf=conf)  # attempt 2 = max_attempts

    assert quarantined.state == "failed"
    assert quarantined.xcom("wait_for_unseen_mail")["retrying"] == [poison]
    assert [e["uid"] for e in quarantined.xcom("mark_mail_seen")["quarantined"]] == [poison]
    entry = ledger(store)[poison]
    assert (entry["state"], entry["attempts"], entry["ticket_keys"]) == ("quarantined", 2, ["BAD-1"])
    assert imap_account.flags_by_uid()[poison] == {"$JiraQuarantined"}  # a label for humans, still unseen
    # Quarantined: never retried on its own.
    assert run_dag(fresh_dag(), conf=conf).states["wait_for_unseen_mail"] == ["skipped"]

    # Jira is fixed; a manual run releases the message and settles it.
    jira.clear_faults()
    released = run_dag(fresh_dag(), conf=conf | {"release_uids": [poison]})
    assert released.state == "success", released.states
    assert released.xcom("mark_mail_seen")["marked_seen"] == [poison]
    assert ledger(store)[poison]["state"] == "settled"
    assert "\\Seen" in imap_account.flags_by_uid()[poison]
    # A rerun adds no row anywhere.
    assert run_dag(fresh_dag(), conf=conf).states["wait_for_unseen_mail"] == ["skipped"]
    assert ledger_row_count(store) == 2
    conn, dialect = store_conn(store)
    assert count_tickets(conn, dialect) == 2
    conn.close()

    # A new failing mail, then the mailbox is rebuilt (new UIDVALIDITY, same UIDs): the rows of the
    # old UIDVALIDITY stay for audit and apply to nothing, so the mail starts over at attempt 1.
    jira.inject_key_fault("BAD-1", "server_error")
    late = imap_account.append(jira_notification("BAD-1", site=SITE))
    before = imap_account.uidvalidity()
    assert run_dag(fresh_dag(), conf=conf).xcom("mark_mail_seen")["failed"][0]["attempts"] == 1
    renewed = imap_account.recreate_mailbox()

    after = run_dag(fresh_dag(), conf=conf)

    sensed = after.xcom("wait_for_unseen_mail")
    assert (sensed["uidvalidity"], sensed["uids"], sensed["retrying"]) == (renewed, [late], [])
    assert after.xcom("mark_mail_seen")["failed"][0]["attempts"] == 1
    conn, dialect = store_conn(store)
    rows = list_entries(conn, dialect, states=["failed", "settled"], limit=100)
    conn.close()
    assert sorted((e["uidvalidity"], e["uid"], e["state"], e["attempts"]) for e in rows) == sorted(
        [
            (before, poison, "settled", 0),
            (before, good, "settled", 0),
            (before, late, "failed", 1),
            (renewed, late, "failed", 1),
        ]
    )


def test_moved_rejected_mail_is_not_released_but_read_again_once_moved_back_by_hand(
    jira_env, imap_account, monkeypatch, capfd
):
    jira, store = jira_env
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(imap_account.airflow_conn()))
    jira.add_issue("ABC-1", summary="Fine", updated=T0)
    spam = imap_account.append(jira_notification("ABC-1", site=SITE, sender="jira@evil.example"))

    rejected = run_dag(fresh_dag(), conf=TRUSTED)
    assert rejected.state == "success", rejected.states
    entry = ledger(store)[spam]
    assert (entry["state"], entry["moved_to"]) == ("rejected", "Jira.Rejected")
    (moved_uid,) = imap_account.flags_by_uid("Jira.Rejected")
    assert entry["moved_uid"] == moved_uid and imap_account.flags_by_uid() == {}

    asked = run_dag(fresh_dag(), conf=TRUSTED | {"release_uids": [spam]})
    assert asked.states["wait_for_unseen_mail"] == ["skipped"], "nothing to take: the mail is elsewhere"
    assert ledger(store)[spam]["state"] == "rejected"
    logged = "".join(capfd.readouterr())  # the task log goes to stdout through structlog
    assert f"uid {spam} was rejected and moved to Jira.Rejected (uid {moved_uid} there)" in logged

    # A human moves it back: it is new mail with a new UID, read (and here rejected) again.
    helper = imap_account.connect()
    helper.select("Jira.Rejected")
    assert helper.uid("MOVE", str(moved_uid), "INBOX")[0] == "OK"
    (back,) = imap_account.flags_by_uid()
    again = run_dag(fresh_dag(), conf=TRUSTED)
    assert again.xcom("wait_for_unseen_mail")["uids"] == [back]
    assert ledger(store)[back]["state"] == "rejected" and ledger(store)[back]["moved_to"] == "Jira.Rejected"
