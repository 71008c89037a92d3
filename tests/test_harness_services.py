"""The real-service harness itself: Dovecot (IMAP, IMAPS), per-test accounts, PostgreSQL, store backends."""

from __future__ import annotations

import email
import imaplib
import json
import os
import ssl
import time

import psycopg
import pytest

from devkit.dovecot import write_tls_files

# Dovecot's default auth_failure_delay is 2 s and 2.3.19 still waits for a 500 ms timer tick
# with auth_failure_delay = 0; anything well below both proves the harness turned the delay off.
FAST_FAILURE_S = 0.25


def _message(subject: str) -> bytes:
    return f"From: jira@example.atlassian.net\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n".encode()


def test_dovecot_serves_plain_imap_with_the_extensions_the_inbox_relies_on(imap_account):
    client = imap_account.connect()
    typ, data = client.capability()
    capabilities = set(data[0].decode().upper().split())
    assert typ == "OK"
    assert {"IMAP4REV1", "UIDPLUS", "UNSELECT", "MOVE"} <= capabilities
    assert client.state == "AUTH"


def test_imaps_certificate_verifies_against_the_session_ca(imap_account):
    client = imap_account.connect(ssl=True)
    certificate = client.sock.getpeercert()
    alt_names = {value for kind, value in certificate["subjectAltName"]}
    assert "127.0.0.1" in alt_names
    assert client.sock.version() in {"TLSv1.2", "TLSv1.3"}
    assert client.select("INBOX", readonly=True)[0] == "OK"


def test_imaps_is_refused_by_a_client_that_trusts_another_ca(imap_account, tmp_path):
    other_ca = write_tls_files(tmp_path).ca_cert
    unrelated_trust = ssl.create_default_context(cafile=str(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(imap_account.host, imap_account.ssl_port, ssl_context=unrelated_trust, timeout=5)


def test_wrong_password_fails_fast_and_does_not_slow_the_next_login(imap_account):
    for _ in range(3):
        client = imaplib.IMAP4(imap_account.host, imap_account.port, timeout=5)
        started = time.monotonic()
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login(imap_account.user, imap_account.password + "-wrong")
        assert time.monotonic() - started < FAST_FAILURE_S
        client.shutdown()
    started = time.monotonic()
    imap_account.connect()
    assert time.monotonic() - started < FAST_FAILURE_S


def test_unknown_user_fails_fast(dovecot):
    client = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5)
    started = time.monotonic()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login("nobody-here", "whatever")
    assert time.monotonic() - started < FAST_FAILURE_S
    client.shutdown()


def test_fresh_accounts_are_isolated(dovecot):
    first, second = dovecot.create_account(), dovecot.create_account()
    try:
        first.append(_message("only for the first account"))
        assert first.unseen_count() == 1
        assert second.unseen_count() == 0
        assert first.maildir != second.maildir
        with pytest.raises(imaplib.IMAP4.error):
            imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5).login(second.user, first.password)
    finally:
        first.close()
        second.close()


def test_append_keeps_flags_and_returns_the_new_uid(imap_account):
    plain = imap_account.append(_message("plain"))
    seen = imap_account.append(_message("seen"), flags="\\Seen")
    rejected = imap_account.append(_message("rejected"), flags="$JiraRejected")
    assert plain < seen < rejected
    assert imap_account.flags_by_uid() == {plain: set(), seen: {"\\Seen"}, rejected: {"$JiraRejected"}}
    assert imap_account.unseen_count() == 2


def test_dropped_messages_arrive_unseen_in_drop_order(imap_account):
    subjects = [f"dropped {index}" for index in range(300)]
    for subject in subjects:
        imap_account.drop(_message(subject))
    client = imap_account.connect()
    client.select("INBOX", readonly=True)
    typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    fetched = [email.message_from_bytes(item[1])["Subject"] for item in data if isinstance(item, tuple)]
    assert typ == "OK"
    assert fetched == subjects
    assert imap_account.unseen_count() == len(subjects)


def test_drop_seeds_thousands_of_messages_within_seconds(imap_account):
    started = time.monotonic()
    imap_account.drop(_message("dropped"), n=2000)
    elapsed = time.monotonic() - started
    assert imap_account.unseen_count() == 2000
    # ~0.4 s on an idle 2-core machine; the bound leaves room for a busy CI runner.
    assert elapsed < 8.0, f"2000 drops took {elapsed:.2f} s"


@pytest.mark.parametrize("mailbox", ["INBOX", "Jira"])
def test_recreate_mailbox_changes_uidvalidity_and_keeps_messages_and_flags(imap_account, mailbox):
    if mailbox != "INBOX":
        assert imap_account.connect().create(mailbox)[0] == "OK"
    imap_account.append(_message("first"), mailbox=mailbox)
    imap_account.append(_message("second"), flags="\\Seen", mailbox=mailbox)
    before = imap_account.uidvalidity(mailbox)

    after = imap_account.recreate_mailbox(mailbox)

    assert after != before
    assert imap_account.uidvalidity(mailbox) == after
    assert sorted(map(sorted, imap_account.flags_by_uid(mailbox).values())) == [[], ["\\Seen"]]


def test_imap_conn_env_is_accepted_by_the_airflow_imap_provider(imap_conn_env, monkeypatch):
    from airflow.providers.imap.hooks.imap import ImapHook

    imap_conn_env.append(_message("visible through Airflow"))
    with ImapHook() as hook:
        assert isinstance(hook.mail_client, imaplib.IMAP4)
        assert not isinstance(hook.mail_client, imaplib.IMAP4_SSL)
        assert hook.mail_client.select("INBOX", readonly=True) == ("OK", [b"1"])

    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(imap_conn_env.airflow_conn(ssl=True)))
    for name, value in imap_conn_env.ssl_trust_env().items():
        monkeypatch.setenv(name, value)
    with ImapHook() as hook:
        assert isinstance(hook.mail_client, imaplib.IMAP4_SSL)
        assert hook.mail_client.select("INBOX", readonly=True)[0] == "OK"


def test_postgres_accepts_password_connections_over_tcp(postgres_server):
    with psycopg.connect(postgres_server.admin_dsn()) as conn:
        address, version = conn.execute(
            "SELECT host(inet_server_addr()), current_setting('server_version_num')"
        ).fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()[0]
    assert address == postgres_server.host
    assert int(version) >= 150000
    assert fsync == "off"


def test_postgres_rejects_a_wrong_password(postgres_server):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=postgres_server.host,
            port=postgres_server.port,
            user=postgres_server.user,
            password=postgres_server.password + "-wrong",
            dbname="postgres",
        )


def test_each_test_gets_a_fresh_empty_database(postgres_server, postgres_db):
    with postgres_db.connect() as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        conn.execute("CREATE TABLE scratch (id int)")
    other = postgres_server.create_database()
    try:
        assert other.dbname != name
        with other.connect() as conn:
            assert conn.execute("SELECT to_regclass('scratch')").fetchone()[0] is None
    finally:
        postgres_server.drop_database(other.dbname)
    assert name == postgres_db.dbname
    assert tables == 0
    assert postgres_db.airflow_conn()["schema"] == name


def test_store_conn_env_describes_a_reachable_database(store_conn_env):
    conn_json = json.loads(os.environ["AIRFLOW_CONN_JIRA_STORE"])
    assert conn_json == store_conn_env.airflow_conn()
    assert conn_json["conn_type"] == store_conn_env.dialect
    conn = store_conn_env.connect()
    cursor = conn.cursor()
    cursor.execute("SELECT 1")
    assert cursor.fetchone()[0] == 1
    if store_conn_env.dialect == "sqlite":
        assert os.path.isabs(conn_json["host"])
    else:
        with psycopg.connect(
            host=conn_json["host"],
            port=conn_json["port"],
            user=conn_json["login"],
            password=conn_json["password"],
            dbname=conn_json["schema"],
        ) as direct:
            assert direct.execute("SELECT current_database()").fetchone()[0] == conn_json["schema"]
