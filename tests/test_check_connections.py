"""python -m jira_mail_sync.check_connections: a line per connection, exit 1 on a failure, no secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jira_mail_sync.check_connections import check_imap, check_jira, check_store, main
from jira_mail_sync.hooks.ticket_store import TicketStoreHook

from include.imap_inbox import REJECTED_KEYWORD
from include.mail_ledger import record_failures, record_rejected, record_settled
from include.names import MAIL_LEDGER_TABLE
from include.store_db import table_exists

REPO = Path(__file__).resolve().parents[1]


def test_jira_check_names_the_account_and_time_zone_or_the_refusal(jira_conn_env, jira_standin, monkeypatch):
    jira_standin.set_time_zone("Asia/Kathmandu")
    ok, message = check_jira()
    monkeypatch.setenv(
        "AIRFLOW_CONN_JIRA_WRONG",
        json.dumps(jira_standin.airflow_conn() | {"password": "wrong-pw-42"}),
    )
    failed, refusal = check_jira("jira_wrong")

    assert ok is True and jira_standin.email in message and "Asia/Kathmandu" in message
    assert failed is False and "401" in refusal and "wrong-pw-42" not in refusal


def test_imap_check_examines_the_mailbox_and_flags_nothing(imap_conn_env, store_conn_env, monkeypatch):
    imap_conn_env.append(b"Subject: one\r\n\r\nx\r\n")
    imap_conn_env.append(b"Subject: two\r\n\r\nx\r\n", flags="\\Seen")
    # A keyword from before the ledger hides nothing: the sensor no longer looks at it either.
    imap_conn_env.append(b"Subject: three\r\n\r\nx\r\n", flags=REJECTED_KEYWORD)

    ok, message = check_imap()
    monkeypatch.setenv(
        "AIRFLOW_CONN_IMAP_WRONG", json.dumps(imap_conn_env.airflow_conn() | {"password": "bad-pw-77"})
    )
    failed, refusal = check_imap("imap_wrong")

    assert (ok, message) == (
        True,
        f"INBOX: logged in (password), UIDVALIDITY {imap_conn_env.uidvalidity()}, 2 unseen message(s); "
        "held back by the mail ledger: 0 rejected, 0 failed, 0 quarantined",
    )
    assert imap_conn_env.flags_by_uid() == {1: set(), 2: {"\\Seen"}, 3: {REJECTED_KEYWORD}}
    # A check reads the ledger; it never creates it.
    assert not table_exists(store_conn_env.connect(), store_conn_env.dialect, MAIL_LEDGER_TABLE)
    assert failed is False and "AUTHENTICATIONFAILED" in refusal and "bad-pw-77" not in refusal


def test_imap_check_counts_what_the_mail_ledger_holds_back_in_this_mailbox_generation(
    imap_conn_env, store_conn_env
):
    for n in range(1, 6):
        imap_conn_env.append(f"Subject: mail {n}\r\n\r\nx\r\n".encode())
    imap_conn_env.append(b"Subject: settled\r\n\r\nx\r\n", flags="\\Seen")
    uidvalidity = imap_conn_env.uidvalidity()
    conn, dialect = store_conn_env.connect(), store_conn_env.dialect
    box = {"mailbox": "INBOX", "uidvalidity": uidvalidity, "now": datetime.now(UTC)}
    record_rejected(conn, dialect, **box, entries=[{"uid": 1, "reason": "untrusted sender"}])
    record_failures(conn, dialect, **box, entries=[{"uid": 2, "keys": ["ABC-2"], "reason": "HTTP 503"}])
    record_failures(
        conn,
        dialect,
        **box,
        entries=[{"uid": uid, "keys": [f"ABC-{uid}"], "reason": "HTTP 400"} for uid in (3, 4)],
        max_attempts=1,
    )
    record_settled(conn, dialect, **box, entries=[{"uid": 6, "keys": ["ABC-6"]}])
    # Neither an earlier generation of INBOX nor another mailbox names a message of this one.
    record_rejected(
        conn, dialect, **box | {"uidvalidity": uidvalidity - 1}, entries=[{"uid": 1, "reason": "old"}]
    )
    record_rejected(conn, dialect, **box | {"mailbox": "Jira"}, entries=[{"uid": 1, "reason": "other"}])
    # Nor does another account's INBOX, or another site's, under this very UIDVALIDITY (#23).
    record_rejected(conn, dialect, **box, imap_conn_id="imap_other", entries=[{"uid": 5, "reason": "x"}])
    record_rejected(conn, dialect, **box, site="acme", entries=[{"uid": 5, "reason": "x"}])

    assert check_imap() == (
        True,
        f"INBOX: logged in (password), UIDVALIDITY {uidvalidity}, 5 unseen message(s); "
        "held back by the mail ledger: 1 rejected, 1 failed, 2 quarantined",
    )


def test_imap_check_passes_without_a_readable_store_and_says_the_ledger_was_not_read(
    imap_conn_env, monkeypatch
):
    monkeypatch.delenv("AIRFLOW_CONN_STORE_NOWHERE", raising=False)
    imap_conn_env.append(b"Subject: one\r\n\r\nx\r\n")

    assert check_imap(store_conn_id="store_nowhere") == (
        True,
        f"INBOX: logged in (password), UIDVALIDITY {imap_conn_env.uidvalidity()}, 1 unseen message(s); "
        "the mail ledger on store_nowhere could not be read (AirflowNotFoundException)",
    )


def test_imap_check_names_the_sender_authentication_and_refuses_a_wrong_extra(imap_conn_env, monkeypatch):
    conn = imap_conn_env.airflow_conn()
    for conn_id, extra in (
        ("imap_authres", {"authserv_id": "MX.Acme.Test"}),
        ("imap_bad", {"sender_auth": "spf"}),
    ):
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn | {"extra": conn["extra"] | extra})
        )

    ok, message = check_imap("imap_authres")
    failed, refusal = check_imap("imap_bad")

    assert ok is True and message.endswith("; senders checked by the Authentication-Results of mx.acme.test")
    assert failed is False
    assert refusal == (
        "IMAP connection 'imap_bad': sender_auth must be one of none, authentication_results, dkim, got 'spf'"
    )


def test_store_check_opens_the_store_through_the_provider_hook(store_conn_env):
    assert check_store() == (
        True,
        f"{store_conn_env.dialect}: reachable; the ticket table is created on the first run",
    )


def test_the_store_hook_declares_no_connection_type_it_would_refuse(monkeypatch):
    assert "conn_type" not in vars(TicketStoreHook)
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_STORE", json.dumps({"conn_type": "generic", "host": "x"}))
    with pytest.raises(ValueError, match="'generic'; the ticket store supports \\['postgres', 'sqlite'\\]"):
        TicketStoreHook().dialect()


def test_main_prints_one_line_per_check_and_fails_when_one_fails(jira_conn_env, monkeypatch, capsys):
    monkeypatch.delenv("AIRFLOW_CONN_IMAP_NOWHERE", raising=False)

    code = main(["--only", "jira", "--only", "imap", "--imap-conn-id", "imap_nowhere"])

    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert [line.split()[:3] for line in lines] == [
        ["ok", "jira", "jira_default:"],
        ["FAIL", "imap", "imap_nowhere:"],
    ]
    assert "imap_nowhere" in lines[1] and "isn't defined" in lines[1]


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_the_module_runs_from_the_command_line(jira_conn_env, imap_conn_env, store_conn_env):
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, "-m", "jira_mail_sync.check_connections"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
        check=False,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert [line.split()[:2] for line in proc.stdout.splitlines()] == [
        ["ok", "jira"],
        ["ok", "imap"],
        ["ok", "store"],
    ]
    assert jira_conn_env["password"] not in proc.stdout + proc.stderr


def test_sites_mailboxes_checks_every_sites_mailbox_and_counts_only_its_own_ledger_rows(
    imap_conn_env, store_conn_env, tmp_path, capsys
):
    import yaml

    uidvalidity = imap_conn_env.uidvalidity()
    imap_conn_env.append(b"Subject: held\r\n\r\nx\r\n")
    conn, dialect = store_conn_env.connect(), store_conn_env.dialect
    box = {"mailbox": "INBOX", "uidvalidity": uidvalidity, "now": datetime.now(UTC)}
    # The same mailbox's rows under the plain site: not acme's, so not counted for it.
    record_rejected(conn, dialect, **box, entries=[{"uid": 1, "reason": "untrusted sender"}])
    record_rejected(
        conn, dialect, **box, site="acme", entries=[{"uid": 1, "reason": "r"}, {"uid": 2, "reason": "r"}]
    )
    sites = tmp_path / "jira_sites.yaml"
    site = {"name": "acme", "jira_conn_id": "jira_acme", "store_conn_id": "jira_store"}
    mailboxes = [{"imap_conn_id": "imap_default"}, {"imap_conn_id": "imap_missing", "slug": "missing"}]
    sites.write_text(yaml.safe_dump({"sites": [site | {"mailboxes": mailboxes}]}))

    assert main(["--sites", "--sites-file", str(sites), "--mailboxes"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert (
        f"ok   imap  site acme imap_default: INBOX: logged in (password), UIDVALIDITY {uidvalidity}, "
        "1 unseen message(s); held back by the mail ledger: 2 rejected, 0 failed, 0 quarantined"
    ) in out
    assert any(line.startswith("FAIL imap  site acme imap_missing: ") for line in out), out


def test_sites_connections_checks_each_sites_jira_store_and_mailboxes_counting_its_own_tickets(
    jira_conn_env, imap_conn_env, store_conn_env, tmp_path, capsys
):
    import yaml

    from include.ticket_store import ensure_table, upsert_tickets
    from tests.harness.tickets import stored_ticket

    conn, dialect = store_conn_env.connect(), store_conn_env.dialect
    ensure_table(conn, dialect)
    now = datetime.now(UTC)
    for site, count in (("default", 1), ("acme", 3)):
        tickets = [stored_ticket(f"ABC-{n}", updated_at=now) for n in range(1, count + 1)]
        upsert_tickets(conn, dialect, tickets, source="sweep", fetched_at=now, site=site)
    sites = tmp_path / "jira_sites.yaml"
    entries = [
        {
            "name": "acme",
            "jira_conn_id": "jira_default",
            "store_conn_id": "jira_store",
            "mailboxes": [{"imap_conn_id": "imap_default"}],
        },
        {
            "name": "globex",
            "jira_conn_id": "jira_missing",
            "store_conn_id": "jira_store",
            "mailboxes": [{"imap_conn_id": "imap_missing"}],
        },
    ]
    sites.write_text(yaml.safe_dump({"sites": entries}))

    assert main(["--sites", "--sites-file", str(sites), "--connections"]) == 1
    out = capsys.readouterr().out.splitlines()
    checks = [line.split(":")[0].split() for line in out if not line.startswith("ok   sites")]
    assert checks == [
        ["ok", "jira", "site", "acme", "jira_default"],
        ["ok", "store", "site", "acme", "jira_store"],
        ["ok", "imap", "site", "acme", "imap_default"],
        ["FAIL", "jira", "site", "globex", "jira_missing"],
        ["ok", "store", "site", "globex", "jira_store"],
        ["FAIL", "imap", "site", "globex", "imap_missing"],
    ], out
    for site, count in (("acme", 3), ("globex", 0)):
        stored = f"{dialect}: reachable, {count} ticket(s) stored for site {site}"
        assert f"ok   store site {site} jira_store: {stored}" in out
    assert jira_conn_env["password"] not in "\n".join(out)
