"""Hostile mail through the whole inbox DAG: real Dovecot, the Jira stand-in, a real store, dag.test().

Each test APPENDs crafted mail to a real mailbox and checks that jira_inbox asks Jira nothing for
the keys it names, labels it rejected with the right reason, and never marks it seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import dkim
import pytest

from devkit.dkim_signer import DkimSigner
from devkit.mail_factory import jira_notification
from include.ticket_store import ensure_table, get_ticket
from tests.harness.airflow_env import load_dag, run_dag

SITE = "acme.atlassian.net"
TRUSTED = {"trusted_senders": [f"jira@{SITE}"]}
HEADER_LIMIT = 64 * 1024
SERVER = "mx.acme.test"
SIGNER = "mail-us.atlassian.net"
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "jira-emails"
DATE = "Tue, 12 Sep 2023 16:43:08 +0200"

pytestmark = [pytest.mark.airflow, pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)]


def inbox_env(imap_account, store_backend, monkeypatch, **extra):
    conn = imap_account.airflow_conn()
    conn["extra"] = {**conn["extra"], **extra}
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_STORE", json.dumps(store_backend.airflow_conn()))


def stored_keys(store_backend, keys):
    conn = store_backend.connect()
    try:
        ensure_table(conn, store_backend.dialect)
        return sorted(key for key in keys if get_ticket(conn, store_backend.dialect, key) is not None)
    finally:
        conn.close()


def filler_lines(total: int) -> bytes:
    """Folded continuation lines (each starts with a space) adding up to at least `total` bytes."""
    line = b" " + b"x" * 76 + b"\r\n"
    return line * (total // len(line) + 1)


def rejections(result) -> dict[int, str]:
    return {r["uid"]: r["reason"] for r in result.xcom("extract_ticket_keys", key="settlement")["rejected"]}


def assert_set_aside(imap_account, uids):
    """Rejected mail left the inbox for the rejected folder, labelled and still unseen there."""
    assert not set(uids) & set(imap_account.flags_by_uid())
    moved = imap_account.flags_by_uid("Jira.Rejected")  # "Jira/Rejected" on Dovecot's Maildir++ layout
    assert len(moved) == len(uids)
    assert all("$JiraRejected" in flags and "\\Seen" not in flags for flags in moved.values())


def test_a_header_too_large_to_peek_is_rejected_and_no_jira_request_is_made_for_its_key(
    airflow_db, imap_account, jira_standin, jira_conn_env, store_backend, monkeypatch
):
    inbox_env(imap_account, store_backend, monkeypatch)
    jira_standin.add_issue("ABC-9", summary="Target")
    jira_standin.add_issue("ABC-8", summary="Target too")
    # 1. A From folded across the 64 KiB peek: a prefix reads jira@acme, every RFC reader evil@x.com.
    folded_from = (
        b"Subject: [JIRA] (ABC-9) Summary\r\nMessage-ID: <f1@x.com>\r\n"
        b'From: "jira@acme.atlassian.net" (\r\n' + filler_lines(HEADER_LIMIT) + b" ) <evil@x.com>\r\n"
        b"Content-Type: text/plain\r\n\r\nhttps://acme.atlassian.net/browse/ABC-9\r\n"
    )
    # 2. A trusted From, then a second From after 64 KiB that the peek never sees.
    second_from = (
        b"From: jira@acme.atlassian.net\r\nSubject: [JIRA] (ABC-8) Summary\r\n"
        b"X-Filler: f\r\n" + filler_lines(HEADER_LIMIT) + b"From: evil@x.com\r\n"
        b"Content-Type: text/plain\r\n\r\nhttps://acme.atlassian.net/browse/ABC-8\r\n"
    )
    uids = [imap_account.append(folded_from), imap_account.append(second_from)]

    result = run_dag(load_dag("jira_inbox"), conf=TRUSTED)

    assert result.state == "success", result.states
    assert rejections(result) == dict.fromkeys(uids, "headers_too_large")
    assert jira_standin.request_count("/rest/api/3/issue") == 0
    assert stored_keys(store_backend, ["ABC-8", "ABC-9"]) == []
    assert_set_aside(imap_account, uids)


def test_authentication_results_of_the_receiving_server_decide_and_forged_ones_below_do_not(
    airflow_db, imap_account, jira_standin, jira_conn_env, store_backend, monkeypatch
):
    inbox_env(imap_account, store_backend, monkeypatch, authserv_id=SERVER)
    keys = [f"ABC-{n}" for n in range(1, 10)]
    for key in keys:
        jira_standin.add_issue(key, summary=key)
    dmarc_pass = f"{SERVER}; dmarc=pass header.from={SITE}"

    def mail(key: str, *auth_results: str, **options) -> bytes:
        headers = "".join(f"Authentication-Results: {value}\r\n" for value in auth_results)
        return headers.encode() + jira_notification(key, site=SITE, **options)

    uids = {
        "dkim pass": imap_account.append(mail("ABC-1", f"{SERVER}; dkim=pass header.d={SIGNER}")),
        "dmarc pass": imap_account.append(mail("ABC-2", dmarc_pass)),
        # Finding 5: a link in a quoted reply names no key of this mail; two tenants, one foreign.
        "quoted link": imap_account.append(
            mail("ABC-7", dmarc_pass, extra_body=f"On Monday Ann wrote:\n> {jira_standin.url}/browse/ABC-8\n")
        ),
        "two tenants": imap_account.append(
            mail(
                "ABC-9",
                dmarc_pass,
                extra_headers={
                    "X-Atl-Mail-Meta": f'tenant="https://evil.atlassian.net", tenant="{jira_standin.url}"'
                },
            )
        ),
        "forged below": imap_account.append(
            mail("ABC-3", f"{SERVER}; dkim=fail header.d={SIGNER}", f"{SERVER}; dkim=pass header.d={SIGNER}")
        ),
        "none": imap_account.append(mail("ABC-4")),
        "other signer": imap_account.append(mail("ABC-5", f"{SERVER}; dkim=pass header.d=evil.example")),
        # Finding 2: a From that is only a quoted string names no mailbox at all.
        "quoted from": imap_account.append(
            b'From: "jira@acme.atlassian.net"\r\nSubject: [JIRA] (ABC-6) S\r\n'
            b"Authentication-Results: " + f"{SERVER}; dmarc=pass".encode() + b"\r\n\r\nbody\r\n"
        ),
    }

    result = run_dag(load_dag("jira_inbox"), conf=TRUSTED)

    assert result.state == "success", result.states
    assert stored_keys(store_backend, keys) == ["ABC-1", "ABC-2", "ABC-7"]
    assert result.xcom("extract_ticket_keys", key="settlement")["keys"] == ["ABC-1", "ABC-2", "ABC-7"]
    reasons = rejections(result)
    assert reasons == {
        uids["forged below"]: f"unauthenticated_sender: {SERVER} says dkim=fail header.d={SIGNER}",
        uids["none"]: f"unauthenticated_sender: no Authentication-Results from {SERVER}",
        uids["other signer"]: f"unauthenticated_sender: {SERVER} says dkim=pass header.d=evil.example",
        uids["quoted from"]: "invalid_from",
        uids["two tenants"]: "foreign_tenant: evil.atlassian.net",
    }
    flags = imap_account.flags_by_uid()
    assert all("\\Seen" in flags[uids[name]] for name in ("dkim pass", "dmarc pass", "quoted link"))
    assert_set_aside(imap_account, reasons)


def test_dkim_mode_verifies_the_whole_message_fetched_from_the_mailbox(
    airflow_db, imap_account, jira_standin, jira_conn_env, store_backend, monkeypatch
):
    inbox_env(imap_account, store_backend, monkeypatch, sender_auth="dkim", dkim_max_message_bytes=2_000_000)
    signer = DkimSigner.generate(SIGNER)
    monkeypatch.setattr("include.sender_auth.dns_txt", signer.dns_txt)  # the test key, instead of DNS
    for key in ("ABC-1", "ABC-2", "ABC-3", "ABC-4"):
        jira_standin.add_issue(key, summary=key)
    # Larger than the 256 KiB body peek, so only the whole message can verify.
    big = signer.sign(jira_notification("ABC-1", site=SITE, body_padding=400 * 1024))
    tampered = signer.sign(jira_notification("ABC-2", site=SITE)).replace(
        b"View issue:", f"See https://{SITE}/browse/ABC-3 View issue:".encode()
    )
    too_large = signer.sign(jira_notification("ABC-4", site=SITE, body_padding=2_100_000))
    uids = [imap_account.append(raw) for raw in (big, tampered, too_large)]

    result = run_dag(load_dag("jira_inbox"), conf=TRUSTED)

    assert result.state == "success", result.states
    assert stored_keys(store_backend, ["ABC-1", "ABC-2", "ABC-3", "ABC-4"]) == ["ABC-1"]
    reasons = rejections(result)
    assert (
        reasons[uids[1]] == f"unauthenticated_sender: DKIM signature of {SIGNER} invalid (body hash mismatch)"
    )
    assert reasons[uids[2]].startswith(
        "unauthenticated_sender: message too large to verify its DKIM signature"
    )
    assert sorted(reasons) == uids[1:]


def test_only_the_receiving_servers_own_block_of_authentication_results_lets_mail_through(
    airflow_db, imap_account, jira_standin, jira_conn_env, store_backend, monkeypatch
):
    # The real Infomaniak mail (fixture 04) and forged stacks under Infomaniak's authserv-id.
    server = "mx.infomaniak.com"
    inbox_env(imap_account, store_backend, monkeypatch, authserv_id=server)
    real = (FIXTURES / "04_jira_cloud_fr_updated_status_multipart.eml").read_bytes()
    border = f"Received: from mta.sparkpostmail.com by smtp-2-9000.mail.infomaniak.ch (Postfix); {DATE}"
    forged_dkim = f"Authentication-Results: {server}; dkim=pass header.d={SIGNER}"
    keys = ["FQA-123", "ABC-1", "ABC-2", "ABC-3", "ABC-4", "ABC-5"]
    for key in keys:
        jira_standin.add_issue(key, summary=key)

    def mail(key: str, *headers: str) -> bytes:
        return "".join(f"{header}\r\n" for header in headers).encode() + jira_notification(key, site=SITE)

    uids = {
        "real": imap_account.append(real),
        # The border said it authenticated nothing; the pass right below is the sender's.
        "dkim below none": imap_account.append(
            mail("ABC-1", border, f"Authentication-Results: {server}; none", forged_dkim)
        ),
        # The sender's own headers (here X-Mailer) stand between the border's verdict and the forgery.
        "dmarc below spf": imap_account.append(
            mail(
                "ABC-2",
                border,
                f"Authentication-Results: {server}; spf=pass smtp.mailfrom={SIGNER}",
                "X-Mailer: Evil 1.0",
                f"Authentication-Results: {server}; dmarc=pass header.from={SITE}",
            )
        ),
        "gap header": imap_account.append(
            mail("ABC-3", border, f"Authentication-Results: {server}; spf=pass", "X-Gap: 1", forged_dkim)
        ),
        "dmarc without header.from": imap_account.append(
            mail("ABC-4", border, f"Authentication-Results: {server}; dmarc=pass")
        ),
        # The mirror image: the border's own pass on top, a sender's "none" and fail below the gap.
        "pass above forged fail": imap_account.append(
            mail(
                "ABC-5",
                border,
                f"Authentication-Results: {server}; dkim=pass header.d={SIGNER}",
                "X-Gap: 1",
                f"Authentication-Results: {server}; none",
                f"Authentication-Results: {server}; dkim=fail header.d={SIGNER}",
            )
        ),
    }

    conf = {"trusted_senders": [f"jira@{SITE}", "jira@infomaniak.atlassian.net"]}
    result = run_dag(load_dag("jira_inbox"), conf=conf)

    assert result.state == "success", result.states
    assert stored_keys(store_backend, keys) == ["ABC-5", "FQA-123"]
    named = {key for keys, _ in jira_standin.bulk_fetch_requests() for key in keys}
    named |= {key for key in keys for r in jira_standin.requests if key in r.path or key in r.query}
    assert "FQA-123" in named
    assert named & {"ABC-1", "ABC-2", "ABC-3", "ABC-4"} == set()
    assert rejections(result) == {
        uids["dkim below none"]: f"unauthenticated_sender: {server} says none",
        uids["dmarc below spf"]: f"unauthenticated_sender: {server} says neither dkim nor dmarc",
        uids["gap header"]: f"unauthenticated_sender: {server} says neither dkim nor dmarc",
        uids[
            "dmarc without header.from"
        ]: f"unauthenticated_sender: {server} says dmarc=pass without header.from",
    }


def test_mail_with_only_untrusted_dkim_signatures_is_recorded_without_any_dns_lookup(
    airflow_db, imap_account, jira_standin, jira_conn_env, store_backend, monkeypatch
):
    # Issue 19's starvation case: 20 mails with 8 signatures each of d=slowN.attacker.example.
    inbox_env(imap_account, store_backend, monkeypatch, sender_auth="dkim")
    lookups: list[bytes] = []

    def resolver_that_never_answers(name: bytes, timeout: float = 5) -> bytes | None:
        lookups.append(name)
        raise dkim.DnsTimeoutError(f"no answer within {timeout} s")

    monkeypatch.setattr("include.sender_auth.dns_txt", resolver_that_never_answers)
    signer = DkimSigner.generate(SIGNER, key_size=1024)
    keys = [f"ABC-{n}" for n in range(1, 21)]
    for key in keys:
        jira_standin.add_issue(key, summary=key)
    uids = []
    for key in keys:
        raw = jira_notification(key, site=SITE)
        for n in range(8):
            raw = signer.sign(raw, domain=f"slow{n}.attacker.example")
        uids.append(imap_account.append(raw))

    result = run_dag(load_dag("jira_inbox"), conf=TRUSTED)

    assert result.state == "success", result.states
    assert lookups == []
    reasons = rejections(result)
    assert sorted(reasons) == sorted(uids)
    assert set(reasons.values()) == {
        "unauthenticated_sender: no DKIM signature of a trusted domain (signed by "
        "slow0.attacker.example, slow1.attacker.example, slow2.attacker.example)"
    }
    assert stored_keys(store_backend, keys) == []
