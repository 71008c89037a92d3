"""The inbox steps (settling mail, chunked peeks on real Dovecot) and the batching of mapped fetches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jira_mail_sync.mapping import MAX_MAP_LENGTH, MAX_MAPPED_FETCHES, batch_keys, describe_batch

from devkit.imap_account import adopt_imaplib
from devkit.mail_factory import jira_notification
from include.imap_inbox import Inbox
from include.inbox_run import PEEK_CHUNK, TakenMessage, settle, take_mail
from include.jira_rules import BULK_FETCH_LIMIT_ANY_FIELDS


# No deadline: building 120,000 keys takes 0.1-0.4 s depending on the machine's load.
@settings(deadline=None, derandomize=True)
@given(st.integers(min_value=0, max_value=120_000))
def test_batches_cover_every_key_once_and_stay_far_below_max_map_length(count):
    keys = [f"K-{n + 1}" for n in range(count)]
    batches = batch_keys(keys)
    assert [k for batch in batches for k in batch] == keys
    assert len(batches) <= MAX_MAPPED_FETCHES < MAX_MAP_LENGTH
    if not count:
        assert batches == []
        return
    if len(batches) == 1:
        assert count <= BULK_FETCH_LIMIT_ANY_FIELDS
        return
    size = len(batches[0])
    # Every batch but the last is full, the size is a multiple of the bulk limit, and it is the
    # smallest such size that fits in MAX_MAPPED_FETCHES instances.
    assert size % BULK_FETCH_LIMIT_ANY_FIELDS == 0
    assert all(len(batch) == size for batch in batches[:-1]) and 1 <= len(batches[-1]) <= size
    assert len(batches) == -(-count // size)
    assert (
        size == BULK_FETCH_LIMIT_ANY_FIELDS
        or -(-count // (size - BULK_FETCH_LIMIT_ANY_FIELDS)) > MAX_MAPPED_FETCHES
    )


def test_duplicate_keys_are_fetched_once():
    assert batch_keys(["A-1", "B-2", "A-1"]) == [["A-1", "B-2"]]


def test_batch_label_names_the_keys():
    assert describe_batch([]) == "no keys"
    assert describe_batch(["A-1", "A-2"]) == "A-1, A-2"
    assert describe_batch([f"A-{n}" for n in range(1, 101)]) == "A-1 … A-100 (100 keys)"


def test_only_messages_whose_keys_were_all_handled_are_settled():
    messages = [TakenMessage(1, ("A-1",)), TakenMessage(2, ("A-1", "A-2")), TakenMessage(3, ("A-3",))]
    plan = settle(messages, {"stored": ["A-1"], "not_found": ["A-3"]})
    assert [m.uid for m in plan.settled] == [1, 3]
    assert [m.uid for m in plan.unfinished] == [2]
    assert settle(messages, {}).settled == []


def test_settlement_sorts_messages_by_what_happened_to_their_keys():
    messages = [
        TakenMessage(1, ("A-1",)),
        TakenMessage(2, ("A-1", "BAD-1")),  # one failed key holds back only its own messages
        TakenMessage(3, ("A-404",)),
        TakenMessage(4, ("A-9",)),  # in no fetch result: its fetch task failed
        TakenMessage(5, ("BAD-1", "BAD-2", "A-9")),
        TakenMessage(6, ("A-1", "A-7")),  # the split of a failing batch did not reach A-7
    ]
    stored = {
        "stored": ["A-1"],
        "not_found": ["A-404"],
        "failed": {"BAD-1": "HTTP 500", "BAD-2": "no updated"},
        "unresolved": ["A-7"],
    }

    plan = settle(messages, stored)

    assert [m.uid for m in plan.settled] == [1, 3]
    assert [(m.uid, reason) for m, reason in plan.failed] == [
        (2, "BAD-1: HTTP 500"),
        (5, "BAD-1: HTTP 500; BAD-2: no updated"),
    ]
    assert [m.uid for m in plan.unfinished] == [4]
    assert [(m.uid, reason.split(":")[0]) for m, reason in plan.deferred] == [(6, "A-7")]


@pytest.mark.timeout(120)
def test_a_burst_larger_than_one_peek_chunk_is_read_whole_and_left_unseen(imap_account):
    site = "acme.atlassian.net"
    total = PEEK_CHUNK + 37
    for n in range(total):
        imap_account.drop(jira_notification(f"OPS-{n % 50 + 1}", site=site))
    client = imap_account.connect()
    try:
        inbox = Inbox(adopt_imaplib(client))
        uidvalidity = inbox.open()
        uids = inbox.unseen_uids(limit=total)
        extraction = take_mail(
            inbox,
            None,
            uids,
            mailbox="INBOX",
            uidvalidity=uidvalidity,
            trusted_senders=[f"jira@{site}"],
            jira_url=f"https://{site}",
        )
    finally:
        client.logout()
    assert len(extraction.messages) == total
    assert extraction.keys == [f"OPS-{n}" for n in range(1, 51)]
    assert imap_account.unseen_count() == total


def test_a_mapped_result_that_cannot_be_read_fails_the_store_instead_of_ending_it_early():
    from jira_mail_sync.ticket_tasks import every_batch

    class FlakyLazySequence:
        """Like Airflow's LazyXComSequence: IndexError when the API server does not return an item."""

        def __len__(self):
            return 3

        def __getitem__(self, index):
            if index == 1:
                raise IndexError(index)
            return {"tickets": [], "not_found": []}

        def __iter__(self):  # what a plain `for` loop would use: it stops quietly at the failure
            yield self[0]

    batches = every_batch(FlakyLazySequence())
    assert next(batches) == {"tickets": [], "not_found": []}
    with pytest.raises(RuntimeError, match="batch 1 of 3"):
        next(batches)
