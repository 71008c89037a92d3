"""The inbox's steps over an IMAP inbox and the mail ledger: sense unseen mail, take it, settle it.

`sense_mail` finds the unseen messages the ledger does not hold (after a manual run's release);
`take_mail` peeks at the sensed messages (never setting \\Seen), parses them, and records each
rejected one in the ledger as it goes; `settle_mail` marks the messages whose keys were all stored,
and records the rest in the ledger. The jira_inbox tasks, the benchmark and the tests call exactly
these three functions; the fetch and the store between them are include.sync_pipeline's, which the
sweep shares.

From the moment a UID is sensed, every message that still exists ends in one recorded state:
settled, rejected, failed and waiting, or quarantined. A message reached by no run step (the run's
time budget ran out, or its fetch task failed) is left unseen and unrecorded, for the next run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from include.imap_inbox import QUARANTINED_KEYWORD, REJECTED_KEYWORD, ImapError, Inbox, PeekedMessage
from include.jira_mail import HEADERS_TOO_LARGE, ParsedMail, parse_message
from include.jira_mail.parser import MAX_MESSAGE_ID_CHARS
from include.mail_ledger import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETENTION,
    DEFAULT_RETRY_DELAY,
    SENDER_MAX,
    SUBJECT_MAX,
    bounded_text,
    held_uids,
    moved_away,
    record_failures,
    record_rejected,
    record_settled,
    release,
)
from include.names import DEFAULT_SITE, IMAP_CONN_ID
from include.rejected_mail import set_rejected_aside
from include.sender_auth import UNAUTHENTICATED_SENDER, SenderAuthPolicy

log = logging.getLogger(__name__)

# imaplib buffers a whole FETCH response, and each message costs up to 64 KiB of header plus 256 KiB of
# body prefix, so one FETCH covers at most this many messages: at most ~160 MiB however hostile the
# mail, ~10 MiB for typical Jira mail. A run of up to 500 messages costs one FETCH.
PEEK_CHUNK = 500
# Rejections are written as they are found, one ledger statement per this many (or per
# RECORD_INTERVAL_S of parsing), so a run that dies later keeps what it learned.
RECORD_EVERY = 100
RECORD_INTERVAL_S = 5.0
# The fixed reason of a mail whose rejection could not be stored even with its metadata cut down.
UNSTORABLE_METADATA = "unstorable_metadata"
# The reasons named in the log line; the ledger holds them all.
LOGGED_REJECTIONS = 20


@dataclass(frozen=True)
class MailBudget:
    """Time limits, in seconds, inside the task's 10-minute execution_timeout.

    `run` is when take_mail stops starting new mail: what it did not reach is left unseen and
    unrecorded for the next run. One mail's time is bounded where it could grow: its DKIM DNS
    lookups share the sender-auth policy's `dkim_dns_seconds`, and everything else is bounded in
    size (the peek, the whole-message limit).
    """

    run: float = 420.0

    def __post_init__(self) -> None:
        if not self.run > 0:
            raise ValueError(f"the run's time budget must be positive, got run={self.run}")


@dataclass(frozen=True)
class Ledger:
    """The mail ledger rows of one mailbox: a DB-API connection and its dialect, and whose mailbox.

    A mailbox is its site and IMAP connection as well as its folder: two accounts' INBOX are two
    mailboxes, even in one store and under one UIDVALIDITY. The defaults are the plain site's.
    """

    conn: Any
    dialect: str
    site: str = DEFAULT_SITE
    imap_conn_id: str = IMAP_CONN_ID

    def where(self, mailbox: str, uidvalidity: int) -> dict[str, Any]:
        """The keyword arguments naming one generation of one mailbox to every mail_ledger function."""
        return {
            "site": self.site,
            "imap_conn_id": self.imap_conn_id,
            "mailbox": mailbox,
            "uidvalidity": uidvalidity,
        }


@dataclass
class SensedUnseen:
    """What sense_mail found: the unseen UIDs to take (oldest first) and what the ledger did."""

    uidvalidity: int
    uids: list[int] = field(default_factory=list)
    # Of `uids`, the ones that failed in an earlier run and are due again.
    retrying: list[int] = field(default_factory=list)
    # How many unseen messages the ledger held back (rejected, quarantined, waiting for a retry).
    held_back: int = 0
    # What a manual run released, and the moved-away rejected mail it could not release
    # ({"uid", "moved_to", "moved_uid"}: no longer in this mailbox, to be moved back by hand).
    released: list[int] = field(default_factory=list)
    not_releasable: list[dict[str, Any]] = field(default_factory=list)


def sense_mail(
    inbox: Inbox,
    ledger: Ledger,
    *,
    limit: int,
    release_uids: Sequence[int] = (),
    release_all: bool = False,
    dry_run: bool = False,
    now: datetime | None = None,
) -> SensedUnseen:
    """Find the oldest `limit` unseen messages the mail ledger does not hold, after a manual
    run's release.

    The unseen mail is searched in windows of UIDs (Inbox.unseen_uids: ESEARCH, then
    `UID SEARCH UNSEEN UID a:b`, so any number of unseen messages costs a bounded number of
    commands), and the ledger is read for each window only. Nothing depends on IMAP keywords.
    A dry run releases nothing.
    """
    now = now or datetime.now(UTC)
    mailbox = inbox.mailbox
    uidvalidity = inbox.open(readonly=True)
    sensed = SensedUnseen(uidvalidity=uidvalidity)
    conn, dialect = ledger.conn, ledger.dialect
    if (release_uids or release_all) and not dry_run:
        where = ledger.where(mailbox, uidvalidity) | {"uids": release_uids, "release_all": release_all}
        sensed.released = release(conn, dialect, now=now, **where)
        sensed.not_releasable = moved_away(conn, dialect, **where)
    excluded: set[int] = set()
    retrying: set[int] = set()

    def held_in(low: int, high: int) -> set[int]:
        held = held_uids(conn, dialect, **ledger.where(mailbox, uidvalidity), now=now, uid_range=(low, high))
        excluded.update(held["excluded"])
        retrying.update(held["retrying"])
        return held["excluded"]

    sensed.uids = inbox.unseen_uids(limit=limit, exclude_keyword=None, held=held_in)
    sensed.retrying = sorted(retrying.intersection(sensed.uids))
    sensed.held_back = len(excluded)
    return sensed


@dataclass(frozen=True)
class TakenMessage:
    """An accepted message: its UID, the keys it names and what the ledger keeps about it."""

    uid: int
    keys: tuple[str, ...]
    message_id: str | None = None
    sender: str | None = None
    subject: str | None = None

    def ledger_entry(self) -> dict[str, Any]:
        return asdict(self) | {"keys": list(self.keys)}


@dataclass(frozen=True)
class RejectedMessage:
    """A refused message and why (a parser reason, or UNSTORABLE_METADATA)."""

    uid: int
    reason: str
    message_id: str | None = None
    sender: str | None = None
    subject: str | None = None

    def ledger_entry(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TakenMail:
    """What take_mail learned from a set of unseen messages of one mailbox generation."""

    mailbox: str
    uidvalidity: int
    messages: list[TakenMessage] = field(default_factory=list)
    rejected: list[RejectedMessage] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # de-duplicated across the run, in arrival order
    # Keys named only by messages that failed before and are due again; fetched in batches of their
    # own, so a key that failed before never shares a bulk request with fresh mail's keys.
    retry_keys: list[str] = field(default_factory=list)
    # Sensed UIDs the run's budget did not reach: unseen and unrecorded, taken by the next run.
    left_for_next_run: list[int] = field(default_factory=list)

    @property
    def fresh_keys(self) -> list[str]:
        retry = set(self.retry_keys)
        return [key for key in self.keys if key not in retry]


def take_mail(
    inbox: Inbox,
    ledger: Ledger | None,
    uids: Sequence[int],
    *,
    mailbox: str,
    uidvalidity: int,
    trusted_senders: Sequence[str],
    jira_url: str | None,
    sender_auth: SenderAuthPolicy | None = None,
    retrying: Iterable[int] = (),
    budget: MailBudget | None = None,
    rejected_mailbox: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> TakenMail:
    """Peek, parse and record rejections as it goes; return the accepted messages and their keys.

    A header that did not fit the peek is rejected as headers_too_large without being parsed: a
    prefix of it can say another sender than the whole. With DKIM sender authentication the whole
    message is fetched (one at a time, at most the policy's size) for the messages that need it.
    No new mail is started after `budget.run`.

    With `ledger` None (a dry run) nothing is recorded, labelled or moved. Recorded rejected mail
    is moved to `rejected_mailbox` (None: left in place), see put_away_rejected.
    `retrying` are UIDs that failed in an earlier run; their keys go to `retry_keys` unless fresh
    mail names them too.
    """
    budget = budget or MailBudget()
    taken = TakenMail(mailbox=mailbox, uidvalidity=uidvalidity)
    retry_uids = set(retrying)
    fresh: dict[str, None] = {}
    again: dict[str, None] = {}
    run_deadline = clock() + budget.run
    recorder = _RejectionRecorder(inbox, ledger, taken, clock, now, rejected_mailbox)
    ordered = list(uids)
    for start in range(0, len(ordered), PEEK_CHUNK):
        if clock() >= run_deadline:
            taken.left_for_next_run.extend(ordered[start:])
            break
        for peeked in inbox.peek(ordered[start : start + PEEK_CHUNK]):
            if clock() >= run_deadline:
                taken.left_for_next_run.append(peeked.uid)
                continue
            parsed = _judge(inbox, peeked, trusted_senders, jira_url, sender_auth)
            if parsed is None:
                recorder.add(RejectedMessage(uid=peeked.uid, reason=HEADERS_TOO_LARGE))
            elif not parsed.accepted:
                recorder.add(RejectedMessage(uid=peeked.uid, reason=str(parsed.reason), **_about(parsed)))
            else:
                taken.messages.append(TakenMessage(uid=peeked.uid, keys=tuple(parsed.keys), **_about(parsed)))
                (again if peeked.uid in retry_uids else fresh).update(dict.fromkeys(parsed.keys))
        recorder.flush()
    taken.keys = [*fresh, *(key for key in again if key not in fresh)]
    taken.retry_keys = [key for key in again if key not in fresh]
    if taken.rejected:
        log.warning(
            "Rejected %d message(s): %s",
            len(taken.rejected),
            ", ".join(f"uid {r.uid} ({r.reason})" for r in taken.rejected[:LOGGED_REJECTIONS]),
        )
    if taken.left_for_next_run:
        log.warning(
            "The run's time budget (%.0f s) ran out: %d message(s) left for the next run",
            budget.run,
            len(taken.left_for_next_run),
        )
    return taken


def _about(parsed: ParsedMail) -> dict[str, str | None]:
    # Bounded and storable here already: these travel in an XCom and reach logs and the UI.
    return {
        "message_id": bounded_text(parsed.message_id, MAX_MESSAGE_ID_CHARS),
        "sender": bounded_text(parsed.sender, SENDER_MAX),
        "subject": bounded_text(parsed.subject, SUBJECT_MAX),
    }


class _RejectionRecorder:
    """Writes rejections to the ledger in small chunks, and labels them for humans once written."""

    def __init__(
        self,
        inbox: Inbox,
        ledger: Ledger | None,
        taken: TakenMail,
        clock: Callable[[], float],
        now: Callable[[], datetime],
        rejected_mailbox: str | None,
    ) -> None:
        self.inbox, self.ledger, self.taken, self.clock, self.now = inbox, ledger, taken, clock, now
        self.rejected_mailbox = rejected_mailbox
        self.pending: list[RejectedMessage] = []
        self.last_flush = clock()

    def add(self, rejected: RejectedMessage) -> None:
        self.pending.append(rejected)
        if len(self.pending) >= RECORD_EVERY or self.clock() - self.last_flush >= RECORD_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        self.last_flush = self.clock()
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        if self.ledger is not None:
            where = (self.taken.mailbox, self.taken.uidvalidity)
            pending = _record_rejections(self.ledger, *where, pending, self.now())
        self.taken.rejected.extend(pending)
        if self.ledger is not None:
            put_away_rejected(
                self.inbox,
                self.ledger,
                [r.uid for r in pending],
                uidvalidity=self.taken.uidvalidity,
                rejected_mailbox=self.rejected_mailbox,
            )


def _record_rejections(
    ledger: Ledger, mailbox: str, uidvalidity: int, rejected: list[RejectedMessage], now: datetime
) -> list[RejectedMessage]:
    """Record a chunk in one statement; should the store refuse it, each mail on its own, and a mail
    whose row is refused still gets one with the fixed reason UNSTORABLE_METADATA and nothing else.

    Returns the rejections as recorded. A store that refuses even that minimal row raises: that is
    the store's failure, not the mail's.
    """
    where = ledger.where(mailbox, uidvalidity) | {"now": now}
    try:
        record_rejected(ledger.conn, ledger.dialect, entries=[r.ledger_entry() for r in rejected], **where)
        return rejected
    # DB-API drivers raise their own classes for a refused value (sqlite3.Error, psycopg.DataError,
    # UnicodeEncodeError, ...), and the transaction is rolled back: each row is then tried alone.
    except Exception as exc:
        log.warning(
            "The ledger refused %d rejection(s) together (%s); recording one by one",
            len(rejected),
            type(exc).__name__,
        )
    recorded: list[RejectedMessage] = []
    for entry in rejected:
        try:
            record_rejected(ledger.conn, ledger.dialect, entries=[entry.ledger_entry()], **where)
            recorded.append(entry)
            continue
        except Exception as exc:
            log.warning("The ledger refused the rejection of uid %s (%s)", entry.uid, type(exc).__name__)
        minimal = RejectedMessage(uid=entry.uid, reason=UNSTORABLE_METADATA)
        record_rejected(ledger.conn, ledger.dialect, entries=[minimal.ledger_entry()], **where)
        recorded.append(minimal)
    return recorded


def put_away_rejected(
    inbox: Inbox, ledger: Ledger, uids: Sequence[int], *, uidvalidity: int, rejected_mailbox: str | None
) -> None:
    """Where rejected mail, once recorded, is put away for a human: labelled $JiraRejected, then moved
    to `rejected_mailbox` (None: left in place), its new place noted in the ledger (include.rejected_mail).
    """
    label(inbox, uids, REJECTED_KEYWORD, uidvalidity=uidvalidity)
    set_rejected_aside(
        inbox,
        ledger.conn,
        ledger.dialect,
        uids=uids,
        uidvalidity=uidvalidity,
        destination=rejected_mailbox,
        site=ledger.site,
        imap_conn_id=ledger.imap_conn_id,
    )


def _judge(
    inbox: Inbox,
    peeked: PeekedMessage,
    trusted_senders: Sequence[str],
    jira_url: str | None,
    sender_auth: SenderAuthPolicy | None,
) -> ParsedMail | None:
    """The parse of one peek (None: its header did not fit); for DKIM, again over the whole message.

    The whole message is fetched only for mail that passed every other check, so spam and
    foreign mail never cost more than the peek.
    """
    if not peeked.header_complete:
        return None
    whole_needed = sender_auth is not None and sender_auth.needs_whole_message
    parsed = parse_message(
        peeked.raw,
        trusted_senders=trusted_senders,
        jira_url=jira_url,
        sender_auth=None if whole_needed else sender_auth,
    )
    if not parsed.accepted or not whole_needed:
        return parsed
    raw = peeked.raw
    if peeked.size > len(raw):
        if peeked.size > sender_auth.dkim_max_message_bytes:
            return _unauthenticated(
                parsed,
                f"message too large to verify its DKIM signature ({peeked.size} bytes, "
                f"more than {sender_auth.dkim_max_message_bytes})",
            )
        whole = inbox.fetch_whole(peeked.uid)
        if whole is None:
            return _unauthenticated(parsed, "the message vanished before its DKIM signature was checked")
        raw = whole
    return parse_message(raw, trusted_senders=trusted_senders, jira_url=jira_url, sender_auth=sender_auth)


def _unauthenticated(parsed: ParsedMail, why: str) -> ParsedMail:
    return replace(
        parsed, accepted=False, keys=(), keys_truncated=False, reason=f"{UNAUTHENTICATED_SENDER}: {why}"
    )


def label(inbox: Inbox, uids: Sequence[int], keyword: str, *, uidvalidity: int) -> list[int]:
    """Set a keyword for humans (never together with \\Seen) where the server keeps keywords.

    The ledger, not the label, is what the sensor goes by, so a server without keywords (Exchange
    Online, Courier with IMAP_KEYWORDS=0) or one that refuses the STORE loses only the label.
    """
    if not uids:
        return []
    try:
        if inbox.keywords_allowed is None:
            inbox.open(readonly=False)  # only a read-write SELECT tells whether keywords are kept
        if not inbox.keywords_allowed:
            log.info(
                "%s keeps no custom keywords (PERMANENTFLAGS %s): %d message(s) not labelled %s",
                inbox.mailbox,
                " ".join(inbox.permanent_flags) or "()",
                len(uids),
                keyword,
            )
            return []
        return inbox.add_keyword(uids, keyword, expected_uidvalidity=uidvalidity)
    except ImapError as exc:
        log.warning("Could not label %d message(s) %s: %s", len(uids), keyword, exc)
        return []


# --- settling ----------------------------------------------------------------------------------


@dataclass
class Settlement:
    """What becomes of each accepted message once the run's fetches and the store are done."""

    settled: list[TakenMessage] = field(default_factory=list)  # every key stored or not found
    failed: list[tuple[TakenMessage, str]] = field(default_factory=list)  # a key failed for good, and why
    # a key the split of a failing batch did not reach (its budget ran out): nothing is known against it
    deferred: list[tuple[TakenMessage, str]] = field(default_factory=list)
    # a key whose fetch never finished (the fetch task failed: Jira did not answer): tried next run
    unfinished: list[TakenMessage] = field(default_factory=list)


def settle(messages: Iterable[TakenMessage], stored: Mapping[str, Any]) -> Settlement:
    """Sort the run's messages by what happened to their keys (store_batches' summary)."""
    handled = {*stored.get("stored", []), *stored.get("not_found", [])}
    failed: Mapping[str, str] = stored.get("failed") or {}
    unresolved = set(stored.get("unresolved") or [])
    settlement = Settlement()
    for message in messages:
        keys = list(message.keys)
        bad = [key for key in keys if key in failed]
        if bad:
            settlement.failed.append((message, "; ".join(f"{key}: {failed[key]}" for key in bad[:3])))
        elif set(keys) <= handled:
            settlement.settled.append(message)
        elif unresolved.intersection(keys):
            waiting = ", ".join(key for key in keys if key in unresolved)
            reason = f"{waiting}: not reached by the split of a failing batch (its request budget ran out)"
            settlement.deferred.append((message, reason))
        else:
            settlement.unfinished.append(message)
    return settlement


@dataclass
class SettledMail:
    """What settle_mail did: UIDs marked seen, and the ledger's outcome for the rest.

    `failed` and `quarantined` are the ledger's outcomes ({"uid", "state", "attempts", "next_try_at",
    "keys", "reason"}, see mail_ledger.record_failures); `unfinished` messages are left unrecorded.
    """

    marked_seen: list[int] = field(default_factory=list)
    left_unseen: list[int] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    unfinished: list[TakenMessage] = field(default_factory=list)


def settle_mail(
    inbox: Inbox,
    ledger: Ledger,
    taken: TakenMail,
    stored: Mapping[str, Any],
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    first_delay: timedelta = DEFAULT_RETRY_DELAY,
    retention: timedelta = DEFAULT_RETENTION,
    now: datetime | None = None,
) -> SettledMail:
    """Set \\Seen, in one UID STORE, on the messages whose keys were all stored or confirmed not found.

    Then it writes the run to the mail ledger: settled messages, and messages whose keys failed for
    good (one more attempt; quarantined, and labelled for humans where keywords are kept, at
    max_attempts). Messages with a key that a failing batch's split did not reach wait as failed mail
    does, with no attempt counted. Messages with a key whose fetch task failed (Jira did not answer)
    are left unseen and unrecorded, and taken again by the next run. Raises UidValidityChanged (and
    marks nothing) when the mailbox was recreated since sensing.
    """
    plan = settle(taken.messages, stored)
    uids = sorted(m.uid for m in plan.settled)
    left_unseen = sorted(
        [m.uid for m, _ in plan.failed] + [m.uid for m, _ in plan.deferred] + [m.uid for m in plan.unfinished]
    )
    if left_unseen:
        log.warning("Leaving %d message(s) UNSEEN: uids %s", len(left_unseen), left_unseen)
    marked = inbox.mark_seen(uids, expected_uidvalidity=taken.uidvalidity)
    log.info("Marked %d message(s) seen", len(marked))
    where = ledger.where(taken.mailbox, taken.uidvalidity) | {"now": now or datetime.now(UTC)}
    conn, dialect = ledger.conn, ledger.dialect
    record_settled(
        conn, dialect, entries=[m.ledger_entry() for m in plan.settled], retention=retention, **where
    )
    outcome = record_failures(
        conn,
        dialect,
        entries=[m.ledger_entry() | {"reason": why} for m, why in plan.failed],
        max_attempts=max_attempts,
        first_delay=first_delay,
        **where,
    )
    # Not reached this run: they wait like failed mail, so they leave the window to the mail behind
    # them, but no attempt is counted against them.
    deferred = record_failures(
        conn,
        dialect,
        entries=[m.ledger_entry() | {"reason": why} for m, why in plan.deferred],
        first_delay=first_delay,
        count_attempt=False,
        **where,
    )
    quarantined = [o for o in outcome if o["state"] == "quarantined"]
    label(inbox, [o["uid"] for o in quarantined], QUARANTINED_KEYWORD, uidvalidity=taken.uidvalidity)
    for entry in quarantined:
        log.error(
            "Quarantined uid %s after %s attempt(s): keys %s; last error: %s. It stays unseen and is not "
            "retried until a run releases it (release_uids).",
            entry["uid"],
            entry["attempts"],
            ", ".join(entry["keys"]),
            entry["reason"],
        )
    return SettledMail(
        marked_seen=marked,
        left_unseen=left_unseen,
        failed=[o for o in [*outcome, *deferred] if o["state"] == "failed"],
        quarantined=quarantined,
        unfinished=plan.unfinished,
    )
