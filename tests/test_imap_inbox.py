"""include.imap_inbox on a real Dovecot: peeks never set \\Seen, flags go where asked, UIDVALIDITY holds."""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
import sys
from pathlib import Path

import pytest

from devkit.imap_account import adopt_imaplib
from include import imap_inbox
from include.imap_inbox import (
    DEFAULT_TIMEOUT_S,
    REJECTED_KEYWORD,
    ImapError,
    Inbox,
    PeekedMessage,
    UidValidityChanged,
    UnseenSummary,
)
from include.imap_wire import connect, ssl_context_named, uid_set_chunks

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "jira-emails"
# RFC 7162 §4: clients should keep command lines under 8192 octets.
COMMAND_LINE_LIMIT = 8192
_TAGGED_COMMAND = re.compile(rb"^[A-Z]+\d+ (UID [A-Z]+|[A-Z]+)")


class RecordingIMAP4(imaplib.IMAP4):
    """An imaplib client that remembers every command line it sends (literals excluded)."""

    def __init__(self, *args, **kwargs) -> None:
        self.sent_lines: list[bytes] = []
        super().__init__(*args, **kwargs)

    def send(self, data: bytes) -> None:
        if _TAGGED_COMMAND.match(data):
            self.sent_lines.append(data.rstrip(b"\r\n"))
        super().send(data)

    def commands_since(self, start: int) -> list[str]:
        return [_TAGGED_COMMAND.match(line).group(1).decode() for line in self.sent_lines[start:]]


def _recording_client(account) -> RecordingIMAP4:
    return account.connect(client_class=RecordingIMAP4)


def _mail(subject: str, body: str = "Body.") -> bytes:
    return (
        f'From: "Ann (Jira)" <jira@example.atlassian.net>\r\nSubject: {subject}\r\n'
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


def _as_imap_bytes(raw: bytes) -> bytes:
    """IMAP sends every line ending as CRLF (RFC 3501 §2.2), whatever the stored file uses."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.parametrize("readonly", [True, False], ids=["examined", "selected-read-write"])
def test_peek_returns_the_messages_and_leaves_them_unseen(imap_account, readonly):
    raws = [_mail(f"[JIRA] (ABC-{n}) ticket {n}") for n in range(1, 4)]
    uids = [imap_account.append(raw) for raw in raws]
    inbox = Inbox(adopt_imaplib(imap_account.connect()))

    # Only a read-write SELECT lets a plain BODY[] fetch set \Seen; both must leave it alone.
    inbox.open(readonly=readonly)
    peeked = inbox.peek(inbox.unseen_uids(limit=10))

    assert [message.uid for message in peeked] == uids
    assert [message.raw for message in peeked] == raws
    assert [message.size for message in peeked] == [len(raw) for raw in raws]
    assert [message.header_complete for message in peeked] == [True, True, True]
    assert imap_account.unseen_count() == 3
    assert imap_account.flags_by_uid() == {uid: set() for uid in uids}


def test_unseen_uids_excludes_seen_and_rejected_messages(imap_account):
    plain = imap_account.append(_mail("plain"))
    imap_account.append(_mail("seen"), flags="\\Seen")
    imap_account.append(_mail("rejected"), flags=REJECTED_KEYWORD)
    imap_account.append(_mail("seen and rejected"), flags=f"\\Seen {REJECTED_KEYWORD}")
    later = imap_account.append(_mail("later plain"))
    inbox = Inbox(adopt_imaplib(imap_account.connect()))

    assert inbox.unseen_uids(limit=100) == [plain, later]
    assert inbox.unseen_uids(limit=100, exclude_keyword=None) == [plain, plain + 2, later]


def test_unseen_uids_is_one_esearch_and_one_windowed_search(imap_account):
    imap_account.drop(_mail("bulk"), n=200)
    client = _recording_client(imap_account)
    inbox = Inbox(adopt_imaplib(client))
    inbox.open()
    start = len(client.sent_lines)

    uids = inbox.unseen_uids(limit=150)

    assert len(uids) == 150
    assert client.commands_since(start) == ["UID SEARCH", "UID SEARCH"]
    first, second = client.sent_lines[start:]
    assert first.endswith(f"UID SEARCH RETURN (MIN MAX COUNT) UNSEEN UNKEYWORD {REJECTED_KEYWORD}".encode())
    low, high = uids[0], uids[-1] + 50
    assert second.endswith(f"UID SEARCH UNSEEN UNKEYWORD {REJECTED_KEYWORD} UID {low}:{high}".encode())


def test_the_summary_counts_unseen_mail_and_names_its_lowest_and_highest_uid(imap_account):
    imap_account.append(_mail("seen"), flags="\\Seen")
    low = imap_account.append(_mail("a"))
    imap_account.append(_mail("rejected"), flags=REJECTED_KEYWORD)
    high = imap_account.append(_mail("b"))
    imap_account.append(_mail("seen again"), flags="\\Seen")
    inbox = Inbox(adopt_imaplib(imap_account.connect()))

    summary = inbox.unseen_summary()
    assert (summary.count, summary.lowest, summary.highest, summary.exact) == (3, low, high, True)
    assert inbox.unseen_summary(exclude_keyword=REJECTED_KEYWORD).count == 2
    assert summary.uidvalidity == imap_account.uidvalidity()


def test_an_empty_inbox_is_summarised_as_nothing_unseen_in_one_command(imap_account):
    imap_account.append(_mail("seen"), flags="\\Seen")
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    inbox.open()
    before = inbox.command_count
    assert inbox.unseen_summary() == UnseenSummary(imap_account.uidvalidity(), 0, None, None, exact=True)
    assert inbox.command_count - before == 1
    assert inbox.unseen_uids(limit=10) == []


@pytest.mark.parametrize("esearch", [True, False], ids=["esearch", "status-and-windows-from-uid-1"])
def test_windows_walk_past_held_and_seen_mail_to_the_oldest_free_unseen_mail(
    imap_account, monkeypatch, esearch
):
    monkeypatch.setattr(imap_inbox, "FIRST_WINDOW_MIN_UIDS", 4)
    monkeypatch.setattr(imap_inbox, "SEARCH_WINDOW_UIDS", 8)
    uids = [imap_account.append(_mail(f"m{n}"), flags="\\Seen" if n < 10 else "") for n in range(40)]
    unseen = uids[10:]
    held = set(unseen[:12])
    asked: list[tuple[int, int]] = []

    def held_in(low: int, high: int) -> set[int]:
        asked.append((low, high))
        return {uid for uid in held if low <= uid <= high}

    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    inbox.open()
    if not esearch:
        inbox.capabilities = inbox.capabilities - {"ESEARCH"}

    found = inbox.unseen_uids(limit=3, exclude_keyword=None, held=held_in)

    assert found == unseen[12:15]
    # Each window is asked of the ledger once, and the windows follow each other without a gap.
    assert all(a[1] + 1 == b[0] for a, b in zip(asked, asked[1:], strict=False))
    assert asked[0][0] == (unseen[0] if esearch else 1)
    assert all(high - low + 1 <= 8 for low, high in asked), "no window is wider than SEARCH_WINDOW_UIDS"


def test_the_search_stops_after_its_window_budget_and_says_so(imap_account, monkeypatch, caplog):
    monkeypatch.setattr(imap_inbox, "FIRST_WINDOW_MIN_UIDS", 2)
    monkeypatch.setattr(imap_inbox, "SEARCH_WINDOW_UIDS", 2)
    monkeypatch.setattr(imap_inbox, "MAX_SEARCH_WINDOWS", 3)
    uids = [imap_account.append(_mail(f"m{n}")) for n in range(10)]
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    inbox.open()
    before = inbox.command_count

    found = inbox.unseen_uids(limit=1, exclude_keyword=None, held=lambda low, high: set(range(low, high + 1)))

    assert found == []
    assert inbox.command_count - before == 1 + 3, "one ESEARCH, then at most MAX_SEARCH_WINDOWS searches"
    assert f"up to UID {uids[5]}" in caplog.text


def test_more_unseen_mail_than_one_search_line_can_carry_is_still_sensed(imap_account):
    # 160,000 unseen UIDs from 1 make a 1,008,895-byte `* SEARCH` line: imaplib refuses it.
    total = 160_000
    imap_account.link_many(_mail("[JIRA] (BIG-1) backlog"), total)
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    inbox.open()
    with pytest.raises(imaplib.IMAP4.error, match="got more than 1000000 bytes"):
        inbox.client.search(["UNSEEN"])
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    inbox.open()
    before = inbox.command_count

    found = inbox.unseen_uids(limit=200, exclude_keyword=None, held=lambda low, high: {1, 2})

    assert found == list(range(3, 203))
    assert inbox.command_count - before == 2
    assert inbox.unseen_summary().count == total


def test_limit_takes_the_oldest_unseen_messages(imap_account):
    appended = [
        (imap_account.append(_mail(f"m{n}"), flags="\\Seen" if n in (1, 3) else ""), n) for n in range(8)
    ]
    unseen_in_order = [uid for uid, n in appended if n not in (1, 3)]
    inbox = Inbox(adopt_imaplib(imap_account.connect()))

    assert inbox.unseen_uids(limit=3) == unseen_in_order[:3]
    assert inbox.unseen_uids(limit=0) == []


def test_mark_seen_sets_seen_only_on_the_given_uids_in_one_store(imap_account):
    imap_account.drop(_mail("bulk"), n=60)
    client = _recording_client(imap_account)
    inbox = Inbox(adopt_imaplib(client))
    uidvalidity = inbox.open()
    unseen = inbox.unseen_uids(limit=60)
    chosen = unseen[::3]
    count_before, lines_before = inbox.command_count, len(client.sent_lines)

    stored = inbox.mark_seen(chosen, expected_uidvalidity=uidvalidity)

    assert stored == chosen
    assert client.commands_since(lines_before) == ["SELECT", "UID STORE"]
    assert inbox.command_count - count_before == 2
    flags = imap_account.flags_by_uid()
    assert {uid for uid, value in flags.items() if "\\Seen" in value} == set(chosen)
    assert imap_account.unseen_count() == 60 - len(chosen)


def test_add_keyword_hides_messages_from_unseen_uids_without_marking_them_seen(imap_account):
    uids = [imap_account.append(_mail(f"m{n}")) for n in range(3)]
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    uidvalidity = inbox.open()

    inbox.add_keyword([uids[1]], REJECTED_KEYWORD, expected_uidvalidity=uidvalidity)

    assert imap_account.flags_by_uid() == {uids[0]: set(), uids[1]: {REJECTED_KEYWORD}, uids[2]: set()}
    assert inbox.unseen_uids(limit=10) == [uids[0], uids[2]]


def test_marking_an_empty_uid_list_sends_nothing(imap_account):
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    assert inbox.mark_seen([], expected_uidvalidity=1) == []
    assert inbox.command_count == 0


def test_bad_keyword_is_refused_before_any_command(imap_account):
    uid = imap_account.append(_mail("m"))
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    uidvalidity = inbox.open()
    opened = inbox.command_count
    with pytest.raises(ValueError, match="keyword"):
        inbox.add_keyword([uid], "two words", expected_uidvalidity=uidvalidity)
    with pytest.raises(ValueError, match="keyword"):
        inbox.add_keyword([uid], "\\Deleted", expected_uidvalidity=uidvalidity)
    assert inbox.command_count == opened
    assert imap_account.flags_by_uid() == {uid: set()}


def test_recreated_inbox_raises_uidvalidity_changed_and_marks_nothing(imap_account):
    uids = [imap_account.append(_mail(f"m{n}")) for n in range(3)]
    reader = Inbox(adopt_imaplib(imap_account.connect()))
    old_uidvalidity = reader.open()
    peeked_uids = reader.unseen_uids(limit=10)
    reader.close()

    new_uidvalidity = imap_account.recreate_mailbox("INBOX")
    marker = Inbox(adopt_imaplib(imap_account.connect()))
    with pytest.raises(UidValidityChanged) as raised:
        marker.mark_seen(peeked_uids, expected_uidvalidity=old_uidvalidity)

    assert (raised.value.expected, raised.value.actual) == (old_uidvalidity, new_uidvalidity)
    assert peeked_uids == uids
    assert imap_account.unseen_count() == 3
    assert all(flags == set() for flags in imap_account.flags_by_uid().values())


def test_mailbox_recreated_under_an_open_session_raises_for_both_flag_operations(imap_account):
    assert imap_account.connect().create("Jira")[0] == "OK"
    for n in range(2):
        imap_account.append(_mail(f"m{n}"), mailbox="Jira")
    inbox = Inbox(adopt_imaplib(imap_account.connect()), "Jira")
    old_uidvalidity = inbox.open()
    uids = inbox.unseen_uids(limit=10)

    imap_account.recreate_mailbox("Jira")

    with pytest.raises(UidValidityChanged):
        inbox.mark_seen(uids, expected_uidvalidity=old_uidvalidity)
    with pytest.raises(UidValidityChanged):
        inbox.add_keyword(uids, REJECTED_KEYWORD, expected_uidvalidity=old_uidvalidity)
    assert all(flags == set() for flags in imap_account.flags_by_uid("Jira").values())


def test_peek_bounds_the_body_of_a_25_mb_message(imap_account):
    header = b"From: jira@example.atlassian.net\r\nSubject: [JIRA] (BIG-1) attachment\r\n\r\n"
    line = b"A" * 1022 + b"\r\n"
    raw = header + line * (25 * 1024)
    imap_account.drop(raw)
    inbox = Inbox(adopt_imaplib(imap_account.connect()))

    (message,) = inbox.peek(inbox.unseen_uids(limit=1), max_body_bytes=256 * 1024)
    (small,) = inbox.peek([message.uid], max_header_bytes=64 * 1024, max_body_bytes=1000)

    assert message.size == len(raw)
    assert message.raw == raw[: len(header) + 256 * 1024]
    assert small.raw == raw[: len(header) + 1000]
    assert imap_account.unseen_count() == 1


def test_an_oversized_header_is_cut_at_a_line_and_never_joined_to_the_body(imap_account):
    fields = b"".join(b"X-Filler-%05d: %s\r\n" % (n, b"f" * 60) for n in range(2000))
    raw = b"Subject: [JIRA] (HDR-1) long header\r\n" + fields + b"\r\nthe body\r\n"
    imap_account.drop(raw)
    inbox = Inbox(adopt_imaplib(imap_account.connect()))

    (message,) = inbox.peek(inbox.unseen_uids(limit=1), max_header_bytes=4096)

    whole_lines = raw[: raw.rfind(b"\n", 0, 4096) + 1]
    # No blank line and no body: a cut header must not look like a whole message to anyone.
    assert message.raw == whole_lines
    assert len(whole_lines) > 4096 - 80  # the cut loses less than one filler line
    assert message.header_complete is False


@pytest.mark.parametrize(("extra", "complete"), [(-1, True), (0, True), (1, False), (2, False), (300, False)])
def test_header_complete_says_exactly_whether_the_header_fit(imap_account, extra, complete):
    limit = 4096
    head = b"Subject: [JIRA] (HDR-2) edge\r\nX-Filler: "
    # The header section, blank line included, is limit + extra bytes long.
    raw = head + b"f" * (limit + extra - len(head) - 4) + b"\r\n\r\nthe body\r\n"
    assert raw.index(b"\r\n\r\n") + 4 == limit + extra
    imap_account.append(raw)
    inbox = Inbox(adopt_imaplib(imap_account.connect()))

    (message,) = inbox.peek(inbox.unseen_uids(limit=1), max_header_bytes=limit)

    assert message.header_complete is complete
    assert message.raw == (raw if complete else raw[: raw.rfind(b"\n", 0, limit) + 1])


def test_8bit_and_broken_messages_come_back_as_the_exact_bytes(imap_account):
    samples = [
        b"Subject: caf\xe9 \xff\xfe latin-1\r\nFrom: x@example.com\r\n\r\n\xe9t\xe9 \x80\x81 not utf-8\r\n",
        b"Subject: [JIRA] (ABC-\r\nContent-Type: multipart/mixed; boundary=\r\n\r\n--\xff\xfe garbage\r\n",
        b"no header separator and no colon\r\n",
        "Subject: =?UTF-8?B?w6nDqQ==?= utf-8 body\r\n\r\nZ\u00fcrich \u2713\r\n".encode(),
    ]
    uids = [imap_account.append(raw) for raw in samples]
    lf_only = b"Subject: bare LF line endings\n\nline one\nline two\n"
    imap_account.drop(lf_only)
    inbox = Inbox(adopt_imaplib(imap_account.connect()))

    peeked = inbox.peek(inbox.unseen_uids(limit=10))

    assert all(isinstance(message.raw, bytes) for message in peeked)
    assert [message.raw for message in peeked] == [*samples, _as_imap_bytes(lf_only)]
    assert [message.uid for message in peeked][: len(uids)] == uids


def test_real_jira_mails_are_peeked_byte_for_byte(imap_account):
    raws = [path.read_bytes() for path in sorted(FIXTURES.glob("*.eml"))]
    assert raws, f"no .eml fixtures in {FIXTURES}"
    for raw in raws:
        imap_account.drop(raw)
    inbox = Inbox(adopt_imaplib(imap_account.connect()))

    peeked = inbox.peek(inbox.unseen_uids(limit=len(raws)))

    assert [message.raw for message in peeked] == [_as_imap_bytes(raw) for raw in raws]
    assert [message.size for message in peeked] == [len(_as_imap_bytes(raw)) for raw in raws]


def test_peek_works_over_imaps_with_certificate_verification(imap_account):
    uid = imap_account.append(_mail("[JIRA] (TLS-1) over TLS"))
    client = imap_account.connect(ssl=True)
    assert isinstance(client, imaplib.IMAP4_SSL)
    inbox = Inbox(adopt_imaplib(client))

    assert inbox.peek(inbox.unseen_uids(limit=5)) == [
        PeekedMessage(
            uid=uid,
            raw=_mail("[JIRA] (TLS-1) over TLS"),
            size=len(_mail("[JIRA] (TLS-1) over TLS")),
            header_complete=True,
        )
    ]
    uidvalidity = inbox.uidvalidity
    assert inbox.mark_seen([uid], expected_uidvalidity=uidvalidity) == [uid]
    assert imap_account.flags_by_uid() == {uid: {"\\Seen"}}


def test_huge_sparse_uid_sets_are_split_into_commands_under_8_kb(imap_account):
    existing = [imap_account.append(_mail(f"m{n}")) for n in range(5)]
    # Thousands of UIDs that no longer exist (expunged long ago) make the set long and sparse.
    gone = list(range(1_000_001, 1_000_001 + 2 * 3000, 2))
    client = _recording_client(imap_account)
    inbox = Inbox(adopt_imaplib(client))
    uidvalidity = inbox.open()
    start = len(client.sent_lines)

    peeked = inbox.peek(existing + gone)
    stored = inbox.mark_seen(existing + gone, expected_uidvalidity=uidvalidity)

    commands = client.commands_since(start)
    # Splitting may not degrade into many small commands: at most one per 4 KB of UID set.
    (whole_set,) = uid_set_chunks(existing + gone, max_chars=sys.maxsize)
    most_commands = -(-len(whole_set) // 4096)
    assert [message.uid for message in peeked] == existing
    assert len(stored) == len(existing) + len(gone)
    assert all(len(line) + 2 < COMMAND_LINE_LIMIT for line in client.sent_lines[start:])
    assert 2 <= commands.count("UID FETCH") <= most_commands
    assert 2 <= commands.count("UID STORE") <= most_commands
    assert all("\\Seen" in flags for flags in imap_account.flags_by_uid().values())


def test_peek_leaves_out_uids_that_no_longer_exist(imap_account):
    uids = [imap_account.append(_mail(f"m{n}")) for n in range(2)]
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    assert [message.uid for message in inbox.peek([uids[1], 999, uids[0]])] == uids
    assert inbox.peek([]) == []


def test_close_never_expunges_deleted_messages(imap_account):
    keep, deleted = imap_account.append(_mail("keep")), imap_account.append(_mail("deleted elsewhere"))
    other = imap_account.connect()
    other.select("INBOX")
    other.uid("STORE", str(deleted), "+FLAGS.SILENT", "(\\Deleted)")
    other.unselect()
    client = _recording_client(imap_account)
    inbox = Inbox(adopt_imaplib(client))
    inbox.mark_seen([keep], expected_uidvalidity=inbox.open())
    start = len(client.sent_lines)

    inbox.close()

    assert client.commands_since(start) == ["UNSELECT"]
    assert client.state == "AUTH"
    assert set(imap_account.flags_by_uid()) == {keep, deleted}


def test_an_adopted_client_without_timeout_gets_a_socket_timeout(imap_account):
    client = imap_account.connect(timeout=None)
    assert client.sock.gettimeout() is None

    adopt_imaplib(client)

    assert client.sock.gettimeout() == DEFAULT_TIMEOUT_S


def test_opening_a_missing_mailbox_raises_imap_error_naming_it(imap_account):
    inbox = Inbox(adopt_imaplib(imap_account.connect()), "Does Not Exist")
    with pytest.raises(ImapError, match="Does Not Exist"):
        inbox.open()


@pytest.mark.parametrize(
    ("uids", "expected"),
    [
        ([1, 2, 3, 4, 5, 7, 9, 10, 11, 12], "1:5,7,9:12"),
        ([12, 9, 7, 5, 4, 3, 2, 1, 10, 11, 7], "1:5,7,9:12"),
        ([42], "42"),
        ([4294967295], "4294967295"),
    ],
)
def test_uid_sets_use_ranges(uids, expected):
    assert uid_set_chunks(uids, max_chars=sys.maxsize) == [expected]


@pytest.mark.parametrize("uids", [[0], [-3], [2**32], [True], ["5"], [1.0]])
def test_uid_sets_refuse_what_is_not_a_uid(uids):
    with pytest.raises(ValueError):
        uid_set_chunks(uids)


def test_no_uids_make_no_uid_set():
    assert uid_set_chunks([]) == []


def test_select_tells_whether_the_server_keeps_custom_keywords(imap_account):
    inbox = Inbox(adopt_imaplib(imap_account.connect()))

    inbox.open(readonly=True)
    assert inbox.keywords_allowed is None  # EXAMINE answers PERMANENTFLAGS () on Dovecot
    inbox.open(readonly=False)

    assert inbox.keywords_allowed is True
    assert inbox.permanent_flags == ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\*")


def test_a_store_the_server_answers_no_raises_and_sets_nothing(imap_account):
    uid = imap_account.append(_mail("m"))
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    uidvalidity = inbox.open()

    # Dovecot refuses keywords longer than mail_max_keyword_length (50) with NO [CANNOT].
    with pytest.raises(ImapError, match="UID STORE in 'INBOX' failed: .*CANNOT"):
        inbox.add_keyword([uid], "K" * 60, expected_uidvalidity=uidvalidity)

    assert imap_account.flags_by_uid() == {uid: set()}


def test_connect_bounds_its_own_socket_and_leaves_the_process_default_alone(imap_account):
    assert socket.getdefaulttimeout() is None
    client = connect(imap_account.host, imap_account.port, use_ssl=False, timeout=7.5)
    try:
        client.login(imap_account.user, imap_account.password)
        assert client.socket().gettimeout() == 7.5
        assert socket.getdefaulttimeout() is None
        assert Inbox(client).open() > 0
    finally:
        client.logout()


def test_connect_verifies_the_certificate_unless_told_none(imap_account, monkeypatch):
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(imap_account.host, imap_account.ssl_port, ssl_context="default", timeout=5)
    unverified = connect(imap_account.host, imap_account.ssl_port, ssl_context="none", timeout=5)
    unverified.login(imap_account.user, imap_account.password)
    unverified.logout()
    monkeypatch.setenv("SSL_CERT_FILE", imap_account.ca_cert)
    verified = connect(imap_account.host, imap_account.ssl_port, ssl_context="default", timeout=5)
    verified.login(imap_account.user, imap_account.password)
    verified.logout()
    with pytest.raises(ValueError, match="ssl_context"):
        ssl_context_named("strict")


def test_courier_without_esearch_is_summarised_by_status_and_searched_in_windows(
    courier_account, monkeypatch
):
    monkeypatch.setattr(imap_inbox, "FIRST_WINDOW_MIN_UIDS", 2)
    monkeypatch.setattr(imap_inbox, "SEARCH_WINDOW_UIDS", 2)
    uids = [courier_account.append(_mail(f"m{n}")) for n in range(7)]
    inbox = Inbox(adopt_imaplib(courier_account.connect()))
    inbox.open()
    assert "ESEARCH" not in inbox.capabilities

    summary = inbox.unseen_summary()
    found = inbox.unseen_uids(limit=4, exclude_keyword=None, held=lambda low, high: {uids[0]} & {low, high})

    assert (summary.count, summary.lowest, summary.exact) == (7, 1, False)
    assert summary.highest is not None and summary.highest >= uids[-1]
    assert found == uids[1:5]
