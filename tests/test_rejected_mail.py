"""Rejected mail moved out of the inbox on real servers: Dovecot (MOVE), Courier (UIDPLUS), else \\Seen."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.imap_account import adopt_imaplib
from include.imap_inbox import (
    DEFAULT_REJECTED_MAILBOX,
    ImapError,
    Inbox,
    UidValidityChanged,
    copyuid_mapping,
    esearch_counts,
    rejected_mailbox_setting,
)
from include.mail_ledger import list_entries, moved_away, record_rejected
from include.rejected_mail import set_rejected_aside

BOX = {"mailbox": "INBOX"}
NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def _mail(subject: str) -> bytes:
    return f"From: spam@example.org\r\nSubject: {subject}\r\n\r\nBody.\r\n".encode()


def _uids_in(account, mailbox: str) -> set[int]:
    return set(account.flags_by_uid(mailbox))


@pytest.fixture
def ledger():
    conn = sqlite3.connect(":memory:")
    yield conn, "sqlite"
    conn.close()


def test_dovecot_moves_rejected_mail_with_uid_move_and_says_where_it_went(imap_account):
    keep = imap_account.append(_mail("keep"))
    bad = [imap_account.append(_mail(f"spam {n}")) for n in range(3)]
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    uidvalidity = inbox.open()
    before = inbox.command_count

    moved = inbox.set_aside(bad, DEFAULT_REJECTED_MAILBOX, expected_uidvalidity=uidvalidity)

    assert (moved.how, moved.uids, moved.mailbox) == ("moved", bad, "Jira.Rejected")
    assert set(imap_account.flags_by_uid()) == {keep}
    assert set(moved.new_uids) == set(bad)
    assert set(imap_account.flags_by_uid("Jira.Rejected")) == set(moved.new_uids.values())
    assert moved.uidvalidity == imap_account.uidvalidity("Jira.Rejected")
    # The moved mail stays unseen there, for a human to read.
    assert all("\\Seen" not in flags for flags in imap_account.flags_by_uid("Jira.Rejected").values())
    assert inbox.command_count - before == 5, "SELECT, NAMESPACE, LIST, CREATE, UID MOVE"
    again = inbox.set_aside([keep], DEFAULT_REJECTED_MAILBOX, expected_uidvalidity=uidvalidity)
    assert again.how == "moved" and imap_account.flags_by_uid() == {}, "an existing folder is reused"


def test_mail_other_clients_marked_deleted_survives_the_move_without_move(imap_account):
    theirs = imap_account.append(_mail("someone else's, to be expunged later"), flags="\\Deleted")
    bad = imap_account.append(_mail("spam"))
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    uidvalidity = inbox.open()
    inbox.capabilities = inbox.capabilities - {"MOVE"}

    moved = inbox.set_aside([bad], "Jira/Rejected", expected_uidvalidity=uidvalidity)

    assert moved.how == "copied" and moved.new_uids is not None and bad in moved.new_uids
    assert imap_account.flags_by_uid() == {theirs: {"\\Deleted"}}, "UID EXPUNGE of our UID only"
    assert len(imap_account.flags_by_uid("Jira.Rejected")) == 1


def test_a_server_without_move_or_uidplus_gets_rejected_mail_marked_seen_in_place(imap_account):
    bad = imap_account.append(_mail("spam"))
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    uidvalidity = inbox.open()
    inbox.capabilities = inbox.capabilities - {"MOVE", "UIDPLUS"}

    moved = inbox.set_aside([bad], "Jira/Rejected", expected_uidvalidity=uidvalidity)

    assert (moved.how, moved.mailbox) == ("marked_seen", None)
    assert imap_account.flags_by_uid() == {bad: {"\\Seen"}}


def test_a_recreated_inbox_moves_nothing(imap_account):
    bad = imap_account.append(_mail("spam"))
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    uidvalidity = inbox.open()
    with pytest.raises(UidValidityChanged):
        inbox.set_aside([bad], "Jira/Rejected", expected_uidvalidity=uidvalidity + 1)
    assert set(imap_account.flags_by_uid()) == {bad}


def test_courier_without_move_copies_with_uidplus_under_its_inbox_namespace(courier_account):
    keep = courier_account.append(_mail("keep"))
    bad = [courier_account.append(_mail(f"spam {n}")) for n in range(2)]
    inbox = Inbox(adopt_imaplib(courier_account.connect()))
    uidvalidity = inbox.open()
    assert "MOVE" not in inbox.capabilities and "UIDPLUS" in inbox.capabilities

    moved = inbox.set_aside(bad, "Jira/Rejected", expected_uidvalidity=uidvalidity)

    assert (moved.how, moved.mailbox) == ("copied", "INBOX.Jira.Rejected")
    assert set(courier_account.flags_by_uid()) == {keep}
    assert set(courier_account.flags_by_uid("INBOX.Jira.Rejected")) == set(moved.new_uids.values())
    assert set(moved.new_uids) == set(bad)


def test_the_ledger_keeps_the_rejected_row_with_its_new_place(imap_account, ledger):
    bad = imap_account.append(_mail("spam"))
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    uidvalidity = inbox.open()
    record_rejected(*ledger, **BOX, uidvalidity=uidvalidity, entries=[{"uid": bad, "reason": "r"}], now=NOW)

    moved = set_rejected_aside(
        inbox, *ledger, uids=[bad], uidvalidity=uidvalidity, destination="Jira/Rejected"
    )

    (entry,) = list_entries(*ledger, states=["rejected"])
    assert (entry["uid"], entry["moved_to"], entry["moved_uid"]) == (
        bad,
        "Jira.Rejected",
        moved.new_uids[bad],
    )
    assert entry["moved_uidvalidity"] == imap_account.uidvalidity("Jira.Rejected")
    assert (
        moved_away(*ledger, **BOX, uidvalidity=uidvalidity, uids=[bad])[0]["moved_uid"] == moved.new_uids[bad]
    )


def test_moving_turned_off_or_refused_leaves_the_mail_and_its_row_as_they_were(imap_account, ledger):
    bad = imap_account.append(_mail("spam"))
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    uidvalidity = inbox.open()
    record_rejected(*ledger, **BOX, uidvalidity=uidvalidity, entries=[{"uid": bad, "reason": "r"}], now=NOW)

    assert set_rejected_aside(inbox, *ledger, uids=[bad], uidvalidity=uidvalidity, destination=None) is None
    # Dovecot refuses a name with an empty hierarchy level ("Jira..Rejected" on Maildir++).
    refused = set_rejected_aside(
        inbox, *ledger, uids=[bad], uidvalidity=uidvalidity, destination="Jira//Rejected"
    )

    assert refused is None
    assert imap_account.flags_by_uid() == {bad: set()}
    (entry,) = list_entries(*ledger, states=["rejected"])
    assert entry["moved_to"] is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, "Jira/Rejected"),
        ({"rejected_mailbox": None}, None),
        ({"rejected_mailbox": "Spam/Jira"}, "Spam/Jira"),
    ],
)
def test_the_rejected_mailbox_extra_names_the_folder_or_turns_moving_off(extra, expected):
    assert rejected_mailbox_setting(extra) == expected


@pytest.mark.parametrize("value", ["", "INBOX", "inbox", 7, ["Jira"], "a\r\nb"])
def test_a_bad_rejected_mailbox_extra_is_refused_naming_it(value):
    with pytest.raises(ValueError, match="rejected_mailbox must"):
        rejected_mailbox_setting({"rejected_mailbox": value})


def test_an_imap_refusal_is_an_imap_error(imap_account):
    inbox = Inbox(adopt_imaplib(imap_account.connect()))
    uidvalidity = inbox.open()
    bad = imap_account.append(_mail("spam"))
    with pytest.raises(ImapError):
        inbox.set_aside([bad], "Jira//Rejected", expected_uidvalidity=uidvalidity)


# Server answers are input a stranger may control (a hostile or broken server): fuzzed, seeded.
_SERVER_TEXT = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda v, a, b: b"%d %s %s" % (v, a, b),
        st.integers(0, 2**40),
        st.from_regex(rb"\A[0-9:,]{1,40}\Z"),
        st.from_regex(rb"\A[0-9:,]{1,40}\Z"),
    ),
)


@settings(max_examples=2000, derandomize=True, deadline=None)
@given(texts=st.lists(_SERVER_TEXT, max_size=4), moved=st.integers(1, 50))
def test_any_copyuid_answer_maps_at_most_the_moved_messages(texts, moved):
    uidvalidity, mapping = copyuid_mapping(texts, moved)
    assert len(mapping) <= moved * len(texts)
    assert all(isinstance(k, int) and isinstance(v, int) for k, v in mapping.items())
    assert (uidvalidity is None) <= (not mapping), "a mapping always comes with its UIDVALIDITY"


def test_a_huge_copyuid_range_is_ignored_not_expanded():
    assert copyuid_mapping([b"9 1:4294967295 1:4294967295"], 3) == (None, {})
    assert copyuid_mapping([b"9 5:7 12,10:11"], 3) == (9, {5: 12, 6: 10, 7: 11})


@settings(max_examples=2000, derandomize=True, deadline=None)
@given(
    line=st.one_of(
        st.binary(max_size=300),
        st.from_regex(rb"\A\(TAG \"A\d\"\) UID( (MIN|MAX|COUNT|ALL) \w{1,12}){0,5}\Z"),
    )
)
def test_any_esearch_answer_reads_as_whole_numbers_or_nothing(line):
    found = esearch_counts(line)
    assert set(found) <= {b"MIN", b"MAX", b"COUNT"}
    assert all(isinstance(v, int) and v >= 0 for v in found.values())


def test_an_esearch_answer_gives_its_min_max_and_count():
    assert esearch_counts(b'(TAG "A5") UID MIN 3 MAX 90 COUNT 7') == {b"MIN": 3, b"MAX": 90, b"COUNT": 7}
    assert esearch_counts(b'(TAG "A5") UID') == {}


@settings(max_examples=1000, derandomize=True, deadline=None)
@given(
    value=st.one_of(st.text(max_size=40), st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2))
)
def test_any_rejected_mailbox_extra_is_a_name_none_or_a_clear_error(value):
    try:
        name = rejected_mailbox_setting({"rejected_mailbox": value})
    except ValueError as exc:
        assert "rejected_mailbox must" in str(exc)
    else:
        assert name is None if value is None else name == value
