"""jira_inbox end to end on an OAuth 2.0 mailbox: real Dovecot (oauth2 passdb), token stand-in, dag.test()."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from devkit.mail_factory import jira_notification
from devkit.oauth_standin import GENERIC_TOKEN, INTROSPECT
from include.ticket_store import ensure_table, get_ticket
from tests.harness.airflow_env import load_dag, run_dag

SITE = "acme.atlassian.net"
TRUSTED = {"trusted_senders": [f"jira@{SITE}"]}
T0 = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
SECRET = "inbox-client-secret-" + uuid.uuid4().hex

pytestmark = pytest.mark.airflow


@pytest.fixture
def oauth_inbox(airflow_db, oauth_imap_account, oauth_standin, jira_standin, jira_conn_env, store_conn_env):
    return oauth_imap_account, oauth_standin, jira_standin, store_conn_env


def stored_summary(store, key: str) -> str | None:
    conn = store.connect()
    try:
        ensure_table(conn, store.dialect)
        row = get_ticket(conn, store.dialect, key)
        return None if row is None else row["summary"]
    finally:
        conn.close()


def use_mailbox(monkeypatch, account, standin, auth_type: str, client_id: str) -> None:
    extra = {"auth_type": auth_type, "token_url": standin.token_url, "client_id": client_id}
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(account.airflow_oauth_conn(extra, SECRET)))


def task_logs(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    """What the run's tasks logged: dag.test() runs them in this process and logs to its stdout/stderr,
    or, once an earlier test has reconfigured Airflow's logging, through the logging module."""
    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    # The run's last line: the "[DAG TEST] start task" lines can be silenced by an earlier test's runs.
    assert "DagRun Finished" in logs, "the run's task logs were not captured"
    return logs


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("auth_type", "mechanism"), [("xoauth2", "XOAUTH2"), ("oauthbearer", "OAUTHBEARER")])
def test_inbox_runs_end_to_end_with_short_lived_tokens_renewed_mid_run(
    oauth_inbox, monkeypatch, capfd, caplog, auth_type, mechanism
):
    account, standin, jira, store = oauth_inbox
    client_id = f"app-{account.user}"
    # 2 s tokens, and a Jira that takes 2.5 s to answer: mark_mail_seen logs in after the token the
    # sensor and extract_ticket_keys used is past 90% of its life, so the run has to renew it.
    standin.register_client(client_id, SECRET, account.user, lifetime_s=2)
    jira.latency = 2.5
    use_mailbox(monkeypatch, account, standin, auth_type, client_id)
    jira.add_issue("ABC-1", summary="Token login", assignee_email="ann@example.com", updated=T0)
    account.append(jira_notification("ABC-1", site=SITE, summary="Token login"))

    result = run_dag(load_dag("jira_inbox"), conf=TRUSTED)

    assert result.state == "success", result.states
    assert stored_summary(store, "ABC-1") == "Token login"
    assert account.unseen_count() == 0
    # Three IMAP logins (sensor, extract, mark), all with the token mechanism and an active token.
    assert [m for m in account.login_methods() if m != "PLAIN"] == [mechanism] * 3
    assert [r.error for r in standin.requests if r.endpoint == INTROSPECT] == [None] * 3
    assert standin.count(GENERIC_TOKEN, status=200) >= 2
    logs = task_logs(capfd, caplog)
    assert f"as {account.user} with {mechanism}" in logs
    for secret in [SECRET, *standin.issued_tokens()]:
        assert secret not in logs
    for task_id in ("wait_for_unseen_mail", "extract_ticket_keys"):
        assert SECRET not in json.dumps(result.xcom(task_id), default=str)


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("wrong secret", "refused the client credentials (invalid_client): check client_id and the secret"),
        (
            "mailbox not granted",
            "the IMAP server refused the token for {user}: check that the token endpoint's",
        ),
    ],
)
def test_a_login_problem_fails_the_run_once_without_retries_and_leaves_the_mail_unseen(
    oauth_inbox, monkeypatch, capfd, caplog, problem, message
):
    account, standin, jira, store = oauth_inbox
    client_id = f"app-{account.user}"
    if problem == "wrong secret":
        standin.register_client(client_id, "the-right-secret", account.user)
    else:
        standin.register_client(client_id, SECRET, account.user)
        standin.refuse_user(account.user)
    use_mailbox(monkeypatch, account, standin, "xoauth2", client_id)
    account.append(jira_notification("ABC-2", site=SITE))
    dag = load_dag("jira_inbox")
    assert dag.get_task("wait_for_unseen_mail").retries == 2  # the DAG's own retries stay on

    result = run_dag(dag, conf=TRUSTED)

    assert result.state == "failed"
    assert result.states["wait_for_unseen_mail"] == ["failed"]  # not up_for_retry: no retry storm
    expected_tokens = 1 if problem == "wrong secret" else 2  # a refused token is renewed once
    assert standin.count(GENERIC_TOKEN) == expected_tokens
    # No token was issued for a wrong secret, so Dovecot was never asked; a refused one was asked twice.
    assert standin.count(INTROSPECT) == (0 if problem == "wrong secret" else 2)
    assert account.unseen_count() == 1 and account.flags_by_uid() == {1: set()}
    assert jira.request_count() == 0
    logs = task_logs(capfd, caplog)
    assert message.format(user=account.user) in logs
    for secret in [SECRET, *standin.issued_tokens()]:
        assert secret not in logs
