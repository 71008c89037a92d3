"""jira_inbox end to end: real Dovecot, the Jira stand-in, a real store, and real dag.test() runs."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devkit.mail_factory import jira_notification
from include.mail_ledger import count_by_state, list_entries
from include.ticket_store import count_tickets, ensure_table, get_ticket
from tests.harness.airflow_env import airflow_cli, load_dag, run_dag

REPO = Path(__file__).resolve().parents[1]
SITE = "acme.atlassian.net"
TRUSTED = {"trusted_senders": [f"jira@{SITE}"]}
T0 = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)

pytestmark = pytest.mark.airflow


@pytest.fixture
def inbox_dag():
    # A fresh DAG object per test: dag.test() leaves the run's conf in the DAG's params.
    dag = load_dag("jira_inbox")
    return dag


def without_retries(dag):
    """Failure tests want the first failure to end the run instead of waiting out retry delays."""
    for task in dag.tasks:
        task.retries = 0
    return dag


def stored_row(store_backend, key):
    conn = store_backend.connect()
    try:
        ensure_table(conn, store_backend.dialect)
        return get_ticket(conn, store_backend.dialect, key)
    finally:
        conn.close()


def stored_count(store_backend):
    conn = store_backend.connect()
    try:
        ensure_table(conn, store_backend.dialect)
        return count_tickets(conn, store_backend.dialect)
    finally:
        conn.close()


def test_mail_in_row_out_then_mail_seen_and_a_rerun_changes_nothing(inbox_env, inbox_dag, jira_flavor):
    imap, jira, store = inbox_env
    jira.add_issue(
        "ABC-1",
        summary="Fix the login",
        status="In Progress",
        assignee_email="ann@example.com",
        progress=(10, 30),
        updated=T0,
    )
    imap.append(jira_notification("ABC-1", site=SITE, summary="Fix the login"))

    first = run_dag(inbox_dag, conf=TRUSTED)

    assert first.state == "success", first.states
    row = stored_row(store, "ABC-1")
    assert row["assignee_email"] == "ann@example.com"
    assert row["progress"]["progress"] == 10 and row["progress"]["total"] == 30
    assert row["status"] == "In Progress" and row["source"] == "inbox"
    assert row["updated_at"] == T0
    assert all("\\Seen" in flags for flags in imap.flags_by_uid().values())

    requests_before = jira.request_count()
    second = run_dag(inbox_dag, conf=TRUSTED)
    assert second.states["wait_for_unseen_mail"] == ["skipped"]
    assert stored_count(store) == 1
    assert stored_row(store, "ABC-1") == row
    assert jira.request_count() == requests_before


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_keys_are_deduplicated_batched_and_labelled_in_the_ui(inbox_env, inbox_dag):
    imap, jira, store = inbox_env
    keys = [f"OPS-{n}" for n in range(1, 1131)]
    for key in keys:
        jira.add_issue(key, summary=f"Ticket {key}", updated=T0)
    for key in keys + keys[:20]:  # 20 tickets mailed twice
        imap.drop(jira_notification(key, site=SITE))

    result = run_dag(inbox_dag, conf={**TRUSTED, "max_messages": 2000})

    assert result.state == "success", result.states
    # 1130 keys → 1000 + 130: one bulk request of up to 1000 per mapped instance.
    assert result.states["fetch_tickets"] == ["success", "success"]
    assert jira.request_count("/rest/api/3/issue/bulkfetch") == 2
    assert stored_count(store) == 1130
    assert imap.unseen_count() == 0
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        labels = [
            ti.rendered_map_index
            for ti in session.query(TaskInstance).filter_by(
                dag_id="jira_inbox", run_id=result.run_id, task_id="fetch_tickets"
            )
        ]
    assert sorted(labels) == sorted(["OPS-1 … OPS-1000 (1000 keys)", "OPS-1001 … OPS-1130 (130 keys)"])


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_key_unknown_to_jira_is_recorded_as_not_found_and_its_mail_settled(inbox_env, inbox_dag, jira_flavor):
    imap, jira, store = inbox_env
    jira.add_issue("ABC-2", summary="Exists", updated=T0)
    imap.append(jira_notification("ABC-2", site=SITE))
    imap.append(jira_notification("ABC-404", site=SITE))

    result = run_dag(inbox_dag, conf=TRUSTED)

    assert result.state == "success", result.states
    assert result.xcom("store_tickets")["not_found"] == ["ABC-404"]
    assert stored_count(store) == 1
    assert imap.unseen_count() == 0


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_mail_about_a_moved_ticket_stores_it_under_its_new_key_and_settles(inbox_env, inbox_dag, jira_flavor):
    imap, jira, store = inbox_env
    jira.add_issue("OLD-7", summary="Moving", updated=T0)
    jira.move_issue("OLD-7", "NEW-1")
    imap.append(jira_notification("OLD-7", site=SITE))

    result = run_dag(inbox_dag, conf=TRUSTED)

    assert result.state == "success", result.states
    assert stored_row(store, "NEW-1")["summary"] == "Moving" and stored_count(store) == 1
    assert result.xcom("store_tickets")["not_found"] == []
    assert imap.unseen_count() == 0


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "break_jira",
    ["server_error", "rate_limited_past_retries", "connection_refused"],
)
def test_jira_failure_fails_the_run_keeps_mail_unseen_and_recovery_stores_once(
    inbox_env, inbox_dag, monkeypatch, break_jira
):
    imap, jira, store = inbox_env
    for n in (1, 2, 3):
        jira.add_issue(f"WEB-{n}", summary=f"Page {n}", updated=T0)
        imap.append(jira_notification(f"WEB-{n}", site=SITE))
    good_conn = os.environ["AIRFLOW_CONN_JIRA_DEFAULT"]
    if break_jira == "server_error":
        jira.inject_fault(500, count=1000)
    elif break_jira == "rate_limited_past_retries":
        jira.inject_fault(429, count=1000, retry_after=1)
    else:
        broken = json.loads(good_conn) | {"host": "http://127.0.0.1:9"}  # discard port: refused
        monkeypatch.setenv("AIRFLOW_CONN_JIRA_DEFAULT", json.dumps(broken))

    failed = run_dag(without_retries(inbox_dag), conf=TRUSTED)

    assert failed.state == "failed", failed.states
    assert "failed" in failed.states["fetch_tickets"]
    assert imap.unseen_count() == 3
    assert stored_count(store) == 0

    jira.clear_faults()
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_DEFAULT", good_conn)
    recovered = run_dag(inbox_dag, conf=TRUSTED)

    assert recovered.state == "success", recovered.states
    assert stored_count(store) == 3
    assert imap.unseen_count() == 0


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_unavailable_store_fails_the_run_and_keeps_mail_unseen(inbox_env, inbox_dag, monkeypatch, tmp_path):
    imap, jira, _ = inbox_env
    jira.add_issue("ABC-3", summary="Store me", updated=T0)
    imap.append(jira_notification("ABC-3", site=SITE))
    unreachable = {"conn_type": "sqlite", "host": str(tmp_path / "no-such-dir" / "store.db")}
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_STORE", json.dumps(unreachable))

    result = run_dag(without_retries(inbox_dag), conf=TRUSTED)

    assert result.state == "failed", result.states
    assert result.states["store_tickets"] == ["failed"]
    assert result.states["mark_mail_seen"] == ["upstream_failed"]
    assert imap.unseen_count() == 1


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_crash_between_store_and_mark_leaves_no_duplicates_after_rerun(inbox_env, inbox_dag, monkeypatch):
    imap, jira, store = inbox_env
    for n in (1, 2):
        jira.add_issue(f"ABC-{n}", summary=f"T{n}", updated=T0)
        imap.append(jira_notification(f"ABC-{n}", site=SITE))
    from include.imap_inbox import Inbox

    def crash(*args, **kwargs):
        raise RuntimeError("worker died between store and mark")

    monkeypatch.setattr(Inbox, "mark_seen", crash)
    crashed = run_dag(without_retries(inbox_dag), conf=TRUSTED)
    assert crashed.states["store_tickets"] == ["success"]
    assert crashed.states["mark_mail_seen"] == ["failed"]
    assert imap.unseen_count() == 2
    monkeypatch.undo()
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(imap.airflow_conn()))
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_STORE", json.dumps(store.airflow_conn()))
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_DEFAULT", json.dumps(jira.airflow_conn()))

    rerun = run_dag(inbox_dag, conf=TRUSTED)

    assert rerun.state == "success", rerun.states
    assert stored_count(store) == 2
    assert imap.unseen_count() == 0


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_spoofed_mail_makes_no_jira_request_and_is_labelled_and_moved_to_the_rejected_mailbox(
    inbox_env, inbox_dag
):
    imap, jira, store = inbox_env
    jira.add_issue("ABC-9", summary="Target", updated=T0)
    spoofs = [
        jira_notification("ABC-9", site=SITE, sender="jira@evil.example"),
        jira_notification("ABC-9", site=SITE, sender="attacker@evil.example", display_name=f"jira@{SITE}"),
        jira_notification("ABC-9", site=SITE, sender=f"jira@{SITE}.evil.example"),
        jira_notification("ABC-9", site=SITE, sender=f"jira@evil{SITE}"),
    ]
    for raw in spoofs:
        imap.append(raw)

    result = run_dag(inbox_dag, conf=TRUSTED)

    assert result.state == "success", result.states
    assert jira.request_count("/rest/api/3/issue") == 0
    assert stored_count(store) == 0
    assert imap.flags_by_uid() == {}, "the rejected mail left the inbox"
    flags = imap.flags_by_uid("Jira.Rejected")  # "Jira/Rejected" on Dovecot's Maildir++ layout
    assert len(flags) == 4
    assert all("$JiraRejected" in f and "\\Seen" not in f for f in flags.values())
    # Moved mail is not taken again: the next run finds nothing to do.
    assert run_dag(inbox_dag, conf=TRUSTED).states["wait_for_unseen_mail"] == ["skipped"]


def test_a_utf7_surrogate_mail_ahead_of_good_mail_is_recorded_rejected_and_the_good_mail_stored(
    inbox_env, inbox_dag
):
    imap, jira, store = inbox_env
    keys = [f"OPS-{n}" for n in range(1, 51)]
    for key in keys:
        jira.add_issue(key, summary=f"Ticket {key}", updated=T0)
    # Mail from anyone, whose subject Python decodes to a lone surrogate that no store, XCom or log holds.
    poison = jira_notification("OPS-1", site=SITE, sender="eve@evil.example").replace(
        b"Subject: [JIRA] (OPS-1)", b"Subject: =?utf-7?Q?+2D0-?= (OPS-1)", 1
    )
    assert b"=?utf-7?Q?+2D0-?=" in poison
    imap.drop(poison)
    for key in keys:
        imap.drop(jira_notification(key, site=SITE))

    result = run_dag(inbox_dag, conf={**TRUSTED, "max_messages": 100})

    assert result.state == "success", result.states
    assert stored_count(store) == 50
    conn = store.connect()
    try:
        rejected = list_entries(conn, store.dialect, states=("rejected",))
        assert count_by_state(conn, store.dialect)["settled"] == 50
    finally:
        conn.close()
    assert [(row["uid"], row["reason"]) for row in rejected] == [(1, "untrusted_sender: eve@evil.example")]
    assert rejected[0]["subject"] == "+2D0- (OPS-1) Something needs doing"
    # Recorded, then moved out of the inbox's way: the inbox holds no unseen mail, the folder holds it.
    assert imap.unseen_count() == 0
    moved = imap.flags_by_uid("Jira.Rejected")  # "Jira/Rejected" on Dovecot's Maildir++ layout
    assert len(moved) == 1 and all("$JiraRejected" in f and "\\Seen" not in f for f in moved.values())
    assert rejected[0]["moved_to"] == "Jira.Rejected"


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_broken_oversized_and_key_flood_mail_end_cleanly(inbox_env, inbox_dag):
    imap, jira, store = inbox_env
    jira.add_issue("ABC-5", summary="Big", updated=T0)
    imap.append(
        b"From: jira@acme.atlassian.net\r\nSubject: [JIRA] (ABC-\r\n"
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\x00\xff\xfe garbage"
    )
    imap.drop(jira_notification("ABC-5", site=SITE, body_padding=25 * 1024 * 1024))
    # Links count only on the Jira site's host, which here is the stand-in's.
    flood_links = " ".join(f"{jira.url}/browse/FLOOD-{n}" for n in range(1, 5001))
    imap.append(jira_notification("ABC-5", site=SITE, extra_body=flood_links))

    started = time.monotonic()
    result = run_dag(inbox_dag, conf=TRUSTED)
    elapsed = time.monotonic() - started

    assert result.state == "success", result.states
    extracted = result.xcom("extract_ticket_keys", key="settlement")
    # ABC-5, then the flood's links up to the per-mail cap of 20 keys.
    assert extracted["keys"] == ["ABC-5", *(f"FLOOD-{n}" for n in range(1, 20))]
    assert jira.request_count("/rest/api/3/issue/bulkfetch") == 1
    assert stored_row(store, "ABC-5") is not None
    assert elapsed < 120


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_empty_inbox_skips_fast_without_calling_jira(inbox_env, inbox_dag):
    _, jira, _ = inbox_env
    result = run_dag(inbox_dag, conf=TRUSTED)
    assert result.state == "success"
    assert result.states["wait_for_unseen_mail"] == ["skipped"]
    assert all(
        states == ["skipped"] for task, states in result.states.items() if task != "wait_for_unseen_mail"
    )
    assert jira.request_count() == 0


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_dry_run_reports_keys_and_touches_nothing(inbox_env, inbox_dag):
    imap, jira, store = inbox_env
    jira.add_issue("ABC-7", summary="Dry", updated=T0)
    imap.append(jira_notification("ABC-7", site=SITE))
    imap.append(jira_notification("ABC-7", site=SITE, sender="x@evil.example"))

    result = run_dag(inbox_dag, conf=TRUSTED | {"dry_run": True})

    assert result.state == "success", result.states
    assert result.xcom("extract_ticket_keys", key="settlement")["keys"] == ["ABC-7"]
    assert jira.request_count() == 0
    assert stored_count(store) == 0
    assert all(f == set() for f in imap.flags_by_uid().values())


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_default_trust_is_the_jira_connection_host(inbox_env, inbox_dag):
    imap, jira, store = inbox_env
    jira.add_issue("ABC-8", summary="Default trust", updated=T0)
    imap.append(jira_notification("ABC-8", site="127.0.0.1"))  # the stand-in's host
    imap.append(jira_notification("ABC-8", site=SITE))  # another site: not trusted by default

    result = run_dag(inbox_dag, conf={})

    assert result.state == "success", result.states
    assert stored_count(store) == 1
    (kept,) = imap.flags_by_uid().values()
    (rejected,) = imap.flags_by_uid("Jira.Rejected").values()
    assert "\\Seen" in kept and "$JiraRejected" in rejected


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_airflow_dags_test_cli_runs_with_env_connections(inbox_env):
    imap, jira, store = inbox_env
    jira.add_issue(
        "CLI-1", summary="From the CLI", assignee_email="cli@example.com", progress=(1, 2), updated=T0
    )
    imap.append(jira_notification("CLI-1", site=SITE))

    proc = airflow_cli("dags", "test", "jira_inbox", "-c", json.dumps(TRUSTED))

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert stored_row(store, "CLI-1")["assignee_email"] == "cli@example.com"
    assert imap.unseen_count() == 0
    assert jira.api_token not in proc.stdout + proc.stderr


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_uidvalidity_change_before_marking_marks_nothing_and_the_next_run_starts_over(
    inbox_env, inbox_dag, monkeypatch
):
    imap, jira, store = inbox_env
    jira.add_issue("ABC-11", summary="Renumbered", updated=T0)
    imap.append(jira_notification("ABC-11", site=SITE))
    from include.imap_inbox import Inbox

    real_mark = Inbox.mark_seen

    def mailbox_recreated_first(self, uids, *, expected_uidvalidity):
        imap.recreate_mailbox()  # another client rebuilt INBOX: every UID now means something else
        return real_mark(self, uids, expected_uidvalidity=expected_uidvalidity)

    monkeypatch.setattr(Inbox, "mark_seen", mailbox_recreated_first)
    first = run_dag(inbox_dag, conf=TRUSTED)

    assert first.states["store_tickets"] == ["success"]
    assert first.states["mark_mail_seen"] == ["skipped"]
    assert imap.unseen_count() == 1
    monkeypatch.setattr(Inbox, "mark_seen", real_mark)

    second = run_dag(load_dag("jira_inbox"), conf=TRUSTED)

    assert second.state == "success", second.states
    assert imap.unseen_count() == 0
    assert stored_count(store) == 1


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_sensor_on_another_connection_reads_and_marks_that_mailbox_only(
    inbox_env, inbox_dag, dovecot, monkeypatch
):
    default_box, jira, store = inbox_env
    other_box = dovecot.create_account()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_IMAP_OTHER", json.dumps(other_box.airflow_conn()))
        for box in (other_box, default_box):
            assert box.connect().create("Jira")[0] == "OK"
        jira.add_issue("OTH-1", summary="From the other mailbox", updated=T0)
        jira.add_issue("DEF-1", summary="From the default mailbox", updated=T0)
        other_box.append(jira_notification("OTH-1", site=SITE), mailbox="Jira")
        default_box.append(jira_notification("DEF-1", site=SITE), mailbox="Jira")
        sensor = inbox_dag.get_task("wait_for_unseen_mail")
        sensor.imap_conn_id = "imap_other"

        result = run_dag(inbox_dag, conf=TRUSTED | {"mailbox": "Jira"})

        assert result.state == "success", result.states
        assert stored_row(store, "OTH-1")["summary"] == "From the other mailbox"
        assert stored_row(store, "DEF-1") is None
        assert other_box.unseen_count("Jira") == 0
        assert default_box.unseen_count("Jira") == 1
    finally:
        other_box.close()
