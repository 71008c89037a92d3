"""The inbox's mail path one hazard at a time: storable text, From judged by its address, the store
refusing a row, the run's time budget, and DKIM lookups that never answer."""

from __future__ import annotations

import socket
import time

import dns.exception
import dns.resolver
import pytest

from devkit.dkim_signer import DkimSigner
from devkit.imap_account import adopt_imaplib
from devkit.mail_factory import jira_notification
from include.imap_inbox import REJECTED_KEYWORD, Inbox
from include.inbox_run import UNSTORABLE_METADATA, Ledger, MailBudget, take_mail
from include.jira_mail import parse_message
from include.mail_ledger import TABLE, ensure_table, list_entries, storable_text
from include.sender_auth import UNAUTHENTICATED_SENDER, SenderAuthPolicy

SITE = "acme.atlassian.net"
TRUSTED = [f"jira@{SITE}"]
UTF7_SURROGATE = "=?utf-7?Q?+2D0-?="


def _with_header(raw: bytes, name: str, value: str) -> bytes:
    head, _, body = raw.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.lower().startswith(name.lower().encode() + b":")]
    return b"\n".join([f"{name}: {value}".encode(), *lines]) + b"\n\n" + body


def test_text_headed_for_a_store_loses_lone_surrogates_and_nul_only():
    assert storable_text("a\ud83d\x00b\udfffc — ok") == "a\ufffd\ufffdb\ufffdc — ok"


def test_a_utf7_subject_decodes_to_text_every_store_can_hold():
    raw = _with_header(jira_notification("ABC-1", site=SITE), "Subject", f"{UTF7_SURROGATE} (ABC-1)")
    parsed = parse_message(raw, trusted_senders=TRUSTED)
    assert parsed.subject is not None
    parsed.subject.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate
    assert parsed.accepted and parsed.keys == ("ABC-1",)


@pytest.mark.parametrize(
    "display_name",
    ["=?x-unknown?Q?Jira?=", "=?utf-8?B?!!!?=", UTF7_SURROGATE, "=?koi8-r?Q?=FF=FE?=", "=?utf-8?Q?bad=ZZ?="],
    ids=["unknown-charset", "broken-base64", "utf7-surrogate", "undecodable", "bad-quoted-printable"],
)
def test_a_defect_confined_to_the_display_name_does_not_reject_the_mail(display_name):
    raw = _with_header(jira_notification("ABC-1", site=SITE), "From", f"{display_name} <jira@{SITE}>")
    parsed = parse_message(raw, trusted_senders=TRUSTED)
    assert (parsed.accepted, parsed.sender, parsed.reason) == (True, f"jira@{SITE}", None)


@pytest.mark.parametrize(
    "from_value, reason",
    [
        (f"Jira <jira@@{SITE}>", "invalid_from"),
        (f'"unterminated <jira@{SITE}>', "invalid_from"),
        (f"Jira (comment <jira@{SITE}>", "invalid_from"),
        (f"jira@{SITE} <evil@x.example>", "invalid_from"),
        (f"=?x-bad?Q?a?= <=?utf-8?Q?jira?=@{SITE}>", "invalid_from"),
        (f"Team: jira@{SITE};", "invalid_from"),
        (f"jira@{SITE}, evil@x.example", "multiple_from"),
    ],
)
def test_a_defect_in_the_address_still_rejects_the_mail(from_value, reason):
    raw = _with_header(jira_notification("ABC-1", site=SITE), "From", from_value)
    assert parse_message(raw, trusted_senders=TRUSTED).reason == reason


def _take(imap_account, ledger, **options):
    client = imap_account.connect()
    try:
        inbox = Inbox(adopt_imaplib(client))
        uidvalidity = inbox.open(readonly=True)
        uids = inbox.unseen_uids(limit=1000, exclude_keyword=None)
        return take_mail(
            inbox,
            ledger,
            options.pop("uids", uids),
            mailbox="INBOX",
            uidvalidity=uidvalidity,
            trusted_senders=TRUSTED,
            jira_url=f"https://{SITE}",
            **options,
        )
    finally:
        client.logout()


def _rejected_rows(conn, dialect):
    return {row["uid"]: row for row in list_entries(conn, dialect, states=("rejected",))}


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_rejection_the_store_refuses_is_still_recorded_as_unstorable_metadata(imap_account, store):
    conn, dialect = store
    ensure_table(conn, dialect)
    # A store that refuses one row's metadata (here a trigger; in the wild a constraint or encoding).
    conn.execute(
        f"CREATE TRIGGER refuse_poison BEFORE INSERT ON {TABLE} WHEN NEW.subject LIKE '%poison%' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    conn.commit()
    for subject in ("plain spam", "poison spam", "more spam"):
        imap_account.drop(jira_notification("ABC-1", site=SITE, sender="eve@evil.example", summary=subject))

    taken = _take(imap_account, Ledger(conn, dialect))

    rows = _rejected_rows(conn, dialect)
    assert sorted(rows) == [1, 2, 3]
    assert rows[2]["reason"] == UNSTORABLE_METADATA
    assert (rows[2]["subject"], rows[2]["sender"]) == (None, None)
    assert rows[1]["reason"] == rows[3]["reason"] == "untrusted_sender: eve@evil.example"
    assert [r.reason for r in taken.rejected if r.uid == 2] == [UNSTORABLE_METADATA]
    assert all(REJECTED_KEYWORD in flags for flags in imap_account.flags_by_uid().values())


class SteppingClock:
    """A clock that moves one second each time it is read: the run's budget runs out after a few mails."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_mail_the_run_budget_does_not_reach_is_left_unrecorded_for_the_next_run(imap_account, store):
    conn, dialect = store
    for n in range(10):
        imap_account.drop(jira_notification("ABC-1", site=SITE, sender=f"spam{n}@evil.example"))

    first = _take(imap_account, Ledger(conn, dialect), budget=MailBudget(run=12), clock=SteppingClock())

    reached = [r.uid for r in first.rejected]
    assert reached and first.left_for_next_run
    assert sorted(reached + first.left_for_next_run) == list(range(1, 11))
    assert sorted(_rejected_rows(conn, dialect)) == sorted(reached)

    second = _take(imap_account, Ledger(conn, dialect), uids=first.left_for_next_run)
    assert second.left_for_next_run == []
    assert sorted(_rejected_rows(conn, dialect)) == list(range(1, 11))


@pytest.fixture
def silent_dns_server():
    """A UDP port on loopback that takes DNS queries and never answers them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_dkim_signatures_whose_dns_never_answers_cannot_starve_the_run(
    imap_account, store, silent_dns_server
):
    conn, dialect = store
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], silent_dns_server

    def never_answering_dns(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        except dns.exception.DNSException:
            return None
        return b"".join(b"".join(record.strings) for record in answer)

    signer = DkimSigner.generate("attacker.example", key_size=1024)
    for n in range(20):
        raw = jira_notification(f"ABC-{n + 1}", site=SITE)
        for k in range(8):
            raw = signer.sign(raw, domain=f"slow{k}.attacker.example")
        imap_account.drop(raw)
    # The signing domains are trusted here, so every signature is looked up (untrusted ones never
    # are: test_sender_auth); what bounds a mail is the DNS time its lookups share.
    per_mail = 1.0
    policy = SenderAuthPolicy(
        mode="dkim",
        dns_txt=never_answering_dns,
        trusted_dkim_domains=tuple(f"slow{k}.attacker.example" for k in range(8)),
        dkim_dns_seconds=per_mail,
    )

    started = time.monotonic()
    taken = _take(imap_account, Ledger(conn, dialect), sender_auth=policy)
    elapsed = time.monotonic() - started

    # Unbounded, 8 lookups of dkimpy's 5 s each would cost 20 * 40 s = 800 s, past the 10-minute
    # execution_timeout; with the per-mail DNS budget each mail costs about `per_mail`.
    assert elapsed < 20 * per_mail + 30, elapsed
    assert taken.left_for_next_run == [] and taken.messages == []
    rows = _rejected_rows(conn, dialect)
    assert sorted(rows) == list(range(1, 21))
    assert all(row["reason"].startswith(UNAUTHENTICATED_SENDER) for row in rows.values())
