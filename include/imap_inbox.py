"""IMAP inbox operations for Jira mail: find unseen UIDs, peek without \\Seen, flag and move mail by UID."""

from __future__ import annotations

import imaplib
import logging
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from imapclient import IMAPClient

from include.imap_wire import (
    DEFAULT_TIMEOUT_S,
    check_keyword,
    check_mailbox,
    normalize_uids,
    uid_list_chunks,
    uid_set_chunks,
)

# The parser's limits: a peek fetches exactly what the parser would read.
from include.jira_mail.parser import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES

__all__ = [
    "DEFAULT_REJECTED_MAILBOX",
    "DEFAULT_TIMEOUT_S",
    "QUARANTINED_KEYWORD",
    "REJECTED_KEYWORD",
    "ImapError",
    "Inbox",
    "MovedMail",
    "PeekedMessage",
    "UidValidityChanged",
    "UnseenSummary",
    "rejected_mailbox_setting",
]

log = logging.getLogger(__name__)

REJECTED_KEYWORD = "$JiraRejected"
QUARANTINED_KEYWORD = "$JiraQuarantined"
# PERMANENTFLAGS holds this when the server keeps keywords the client makes up ($JiraRejected).
ANY_KEYWORD = "\\*"
# Where rejected mail is moved (the `rejected_mailbox` extra of imap_default), "/" standing for the
# server's hierarchy delimiter; JSON null in the extra leaves rejected mail where it is.
DEFAULT_REJECTED_MAILBOX = "Jira/Rejected"
REJECTED_MAILBOX_EXTRA = "rejected_mailbox"
# A plain `UID SEARCH` answers in one line, and imaplib (so IMAPClient) refuses a line over
# 1,000,000 bytes: about 160,000 unseen UIDs from 1 break it. So the unseen set is searched in
# windows of UIDs: a window names at most SEARCH_WINDOW_UIDS UIDs of at most 11 bytes each
# ("4294967295 "), 550 KB, whatever the inbox holds. The first window is small (a few times the
# limit) and each next one twice as wide, so a dense backlog costs a few KB per run and a sparse
# one few commands.
SEARCH_WINDOW_UIDS = 50_000
FIRST_WINDOW_MIN_UIDS = 1024
# The most windows one search walks: a constant bound on the commands of a sensing run. With
# ESEARCH the walk starts at the lowest unseen UID; without it, at UID 1, so a server without
# ESEARCH whose unseen mail lies beyond this many windows' UIDs is searched only that far (logged).
MAX_SEARCH_WINDOWS = 40
_T = TypeVar("_T")
_COPYUID = re.compile(rb"(\d+) ([\d:,]+) ([\d:,]+)")


def rejected_mailbox_setting(extra: dict[str, Any], inbox: str = "INBOX") -> str | None:
    """The `rejected_mailbox` extra: the folder rejected mail goes to, or None to leave it in place.

    Missing means DEFAULT_REJECTED_MAILBOX; JSON null turns moving off. Anything else must be a
    mailbox name other than the inbox itself, else ValueError naming the extra.
    """
    value = extra.get(REJECTED_MAILBOX_EXTRA, DEFAULT_REJECTED_MAILBOX)
    if value is None:
        return None
    try:
        name = check_mailbox(value)
    except ValueError as exc:
        raise ValueError(
            f"the extra {REJECTED_MAILBOX_EXTRA} must be a mailbox name or null: {exc}"
        ) from None
    if name.strip("/").upper() == inbox.upper():
        raise ValueError(f"the extra {REJECTED_MAILBOX_EXTRA} must name a mailbox other than {inbox!r}")
    return name


def _uid_sequence(text: bytes, most: int) -> list[int] | None:
    """The UIDs of a sequence set such as b"3:5,9", ascending within each range (RFC 4315's order);
    None when it names more than `most` UIDs (a server's "1:4294967295" is never expanded)."""
    uids: list[int] = []
    for part in text.split(b","):
        first, _, last = part.partition(b":")
        if not first.isdigit() or not (last.isdigit() or not last):
            return None
        low, high = sorted((int(first), int(last or first)))
        if len(uids) + high - low + 1 > most:
            return None
        uids.extend(range(low, high + 1))
    return uids


def copyuid_mapping(texts: Sequence[bytes], moved: int) -> tuple[int | None, dict[int, int]]:
    """The destination UIDVALIDITY and old-to-new UIDs of COPYUID answers (RFC 4315) for `moved`
    messages. Server text: anything that does not parse, or names more UIDs than were moved, is
    left out, so the worst a server can send costs at most `moved` entries."""
    uidvalidity, mapping = None, {}
    for text in texts:
        match = _COPYUID.search(text)
        if match is None:
            continue
        source, target = _uid_sequence(match.group(2), moved), _uid_sequence(match.group(3), moved)
        if source is not None and target is not None and len(source) == len(target):
            uidvalidity = int(match.group(1))
            mapping.update(zip(source, target, strict=True))
    return uidvalidity, mapping


def esearch_counts(line: bytes) -> dict[bytes, int]:
    """MIN, MAX and COUNT of an untagged ESEARCH answer: `(TAG "x") UID MIN a MAX b COUNT n`."""
    tokens = line.split(b")", 1)[-1].split()
    found: dict[bytes, int] = {}
    for name, value in zip(tokens, tokens[1:], strict=False):
        if name.upper() in (b"MIN", b"MAX", b"COUNT") and value.isdigit():
            found[name.upper()] = int(value)
    return found


class UidValidityChanged(Exception):
    """The mailbox was recreated since its UIDs were read: they now name other messages (or none)."""

    def __init__(self, mailbox: str, expected: int, actual: int) -> None:
        super().__init__(
            f"UIDVALIDITY of {mailbox!r} changed from {expected} to {actual}; "
            "UIDs read earlier no longer identify the same messages"
        )
        self.mailbox = mailbox
        self.expected = expected
        self.actual = actual


class ImapError(Exception):
    """The server answered NO or BAD, or sent something that cannot be made sense of."""


@dataclass(frozen=True)
class UnseenSummary:
    """How much unseen mail a mailbox holds, in one command whatever its size.

    With ESEARCH (RFC 4731) `lowest` and `highest` are the lowest and highest unseen UIDs. Without
    it they are bounds (1 and UIDNEXT - 1, from STATUS) and `count` includes mail carrying the
    excluded keyword, which STATUS cannot leave out. Both are None when nothing is unseen.
    """

    uidvalidity: int
    count: int
    lowest: int | None
    highest: int | None
    exact: bool


@dataclass(frozen=True)
class MovedMail:
    """What `Inbox.set_aside` did: `how` is "moved" (UID MOVE), "copied" (UID COPY, then \\Deleted and
    UID EXPUNGE of exactly those UIDs) or "marked_seen" (the server has neither MOVE nor UIDPLUS).

    `new_uids` maps a moved UID to its UID in `mailbox` (under `uidvalidity`) where the server said
    (COPYUID); moved UIDs it did not name are missing from it.
    """

    how: str
    uids: list[int]
    mailbox: str | None = None
    uidvalidity: int | None = None
    new_uids: dict[int, int] | None = None


@dataclass(frozen=True)
class PeekedMessage:
    """The start of one message, read without setting \\Seen.

    `raw` is the header (at most max_header_bytes) followed by the start of the body (at most
    max_body_bytes); `size` is the full RFC822.SIZE, so `size > len(raw)` means something was cut.
    `header_complete` is False when the header itself did not fit in max_header_bytes: `raw` then
    holds only its whole lines up to the limit and no body, and must never be parsed as a message
    (a From folded across the limit, or a second From after it, would read differently from what
    every RFC reader sees); such mail is rejected as `headers_too_large`.
    """

    uid: int
    raw: bytes
    size: int
    header_complete: bool


def _joined_message(header: bytes, text: bytes, max_header_bytes: int) -> tuple[bytes, bool]:
    """The header and body start as one message, and whether the header arrived whole."""
    # BODY[HEADER] ends with the blank line that ends the header, and the first blank line always
    # ends it, so a partial answer of the full length without one is a header that was cut.
    if len(header) >= max_header_bytes and not header.endswith((b"\r\n\r\n", b"\n\n")):
        last_newline = header.rfind(b"\n")
        return (header[: last_newline + 1] if last_newline >= 0 else b""), False
    return header + text, True


def _flags(values: Any) -> tuple[str, ...]:
    return tuple(v.decode("ascii", "replace") if isinstance(v, bytes) else str(v) for v in values or ())


class Inbox:
    """One mailbox on a logged-in IMAP session. Reads never set \\Seen; writes re-check UIDVALIDITY first.

    `client` is a logged-in IMAPClient (see include.imap_wire.connect). `command_count` counts the
    IMAP commands this Inbox sent, including the one CAPABILITY query per session that IMAPClient
    needs (for LITERAL+, UNSELECT, IDLE, ...) when the server did not volunteer its capabilities.
    """

    def __init__(
        self,
        client: IMAPClient,
        mailbox: str = "INBOX",
    ) -> None:
        self.client: IMAPClient = client
        self.mailbox = check_mailbox(mailbox)
        self.command_count = 0
        self.uidvalidity: int | None = None
        # The PERMANENTFLAGS of the last SELECT/EXAMINE (EXAMINE usually answers an empty list).
        self.permanent_flags: tuple[str, ...] = ()
        self._keywords_allowed: bool | None = None
        self._selected_readonly: bool | None = None
        self.capabilities: frozenset[str] | None = None

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, what: str, command: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        self.command_count += 1
        try:
            return command(*args, **kwargs)
        except imaplib.IMAP4.error as exc:  # IMAPClient's errors (NO, BAD, aborts) included
            raise ImapError(f"{what} in {self.mailbox!r} failed: {exc}") from exc

    @property
    def keywords_allowed(self) -> bool | None:
        """Whether the server keeps custom keywords (PERMANENTFLAGS has \\*), as the last read-write
        SELECT told; None before any read-write SELECT (a read-only EXAMINE does not tell)."""
        return self._keywords_allowed

    def open(self, *, readonly: bool = True) -> int:
        """EXAMINE (readonly) or SELECT the mailbox; returns its UIDVALIDITY."""
        self._selected_readonly = None
        if self.capabilities is None:
            # Asked once, up front, so that no later command is preceded by a hidden one.
            answer = self._run("CAPABILITY", self.client.capabilities)
            self.capabilities = frozenset(_flags(answer))
        answer = self._run(
            "EXAMINE" if readonly else "SELECT", self.client.select_folder, self.mailbox, readonly=readonly
        )
        self._selected_readonly = readonly
        uidvalidity = answer.get(b"UIDVALIDITY")
        if not isinstance(uidvalidity, int):
            raise ImapError(f"the server sent no UIDVALIDITY when opening {self.mailbox!r}")
        self.uidvalidity = uidvalidity
        self.permanent_flags = _flags(answer.get(b"PERMANENTFLAGS"))
        if not readonly:
            self._keywords_allowed = ANY_KEYWORD in self.permanent_flags
        log.debug(
            "Opened %s (%s), UIDVALIDITY %s, PERMANENTFLAGS %s",
            self.mailbox,
            "read-only" if readonly else "read-write",
            self.uidvalidity,
            " ".join(self.permanent_flags),
        )
        return self.uidvalidity

    def _ensure_open(self) -> None:
        if self._selected_readonly is None:
            self.open(readonly=True)

    def _esearch(self, criteria: list[str]) -> dict[bytes, int]:
        """`UID SEARCH RETURN (MIN MAX COUNT) criteria` (RFC 4731): a one-line answer of any size.

        IMAPClient has no ESEARCH, so the command goes through its raw sender and the untagged
        `* ESEARCH (TAG "x") UID MIN a MAX b COUNT n` is read here.
        """
        imap = self.client._imap
        imap.untagged_responses.pop("ESEARCH", None)
        args = [b"RETURN", b"(MIN", b"MAX", b"COUNT)", *(c.encode("ascii") for c in criteria)]
        typ, data = self._run("UID SEARCH RETURN", self.client._raw_command, b"SEARCH", args)
        if typ != "OK":
            raise ImapError(f"UID SEARCH RETURN in {self.mailbox!r} failed: {data!r}")
        lines = imap.untagged_responses.pop("ESEARCH", None) or [b""]
        return esearch_counts(lines[-1])

    def unseen_summary(self, *, exclude_keyword: str | None = None) -> UnseenSummary:
        """How many messages are unseen (less those with `exclude_keyword`), and where their UIDs lie.

        One command: ESEARCH where the server has it, else STATUS (UNSEEN UIDNEXT).
        """
        criteria = ["UNSEEN"]
        if exclude_keyword:
            criteria += ["UNKEYWORD", check_keyword(exclude_keyword)]
        self._ensure_open()
        assert self.uidvalidity is not None
        if "ESEARCH" in (self.capabilities or ()):
            found = self._esearch(criteria)
            count = found.get(b"COUNT", 0)
            return UnseenSummary(self.uidvalidity, count, found.get(b"MIN"), found.get(b"MAX"), exact=True)
        status = self._run("STATUS", self.client.folder_status, self.mailbox, ["UNSEEN", "UIDNEXT"])
        count, uidnext = int(status.get(b"UNSEEN", 0)), int(status.get(b"UIDNEXT", 0))
        if not count:
            return UnseenSummary(self.uidvalidity, 0, None, None, exact=False)
        return UnseenSummary(self.uidvalidity, count, 1, max(uidnext - 1, 1), exact=False)

    def unseen_uids(
        self,
        *,
        limit: int,
        exclude_keyword: str | None = REJECTED_KEYWORD,
        exclude_uids: Collection[int] = (),
        held: Callable[[int, int], Collection[int]] | None = None,
    ) -> list[int]:
        """The oldest `limit` UIDs without \\Seen and without `exclude_keyword`, however many are unseen.

        One unseen_summary, then `UID SEARCH UNSEEN UID a:b` over windows of UIDs from the lowest
        unseen one, until `limit` are found or the unseen range ends (at most MAX_SEARCH_WINDOWS).
        `exclude_uids`, and `held(a, b)` (the UIDs within a:b that the mail ledger holds, asked once
        per window), are left out before the limit applies, so held mail never takes a place.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        if limit == 0:
            return []
        summary = self.unseen_summary(exclude_keyword=exclude_keyword)
        if not summary.count or summary.lowest is None or summary.highest is None:
            return []
        criteria = ["UNSEEN"]
        if exclude_keyword:
            criteria += ["UNKEYWORD", check_keyword(exclude_keyword)]
        excluded = set(exclude_uids)
        found: list[int] = []
        low, span = summary.lowest, min(SEARCH_WINDOW_UIDS, max(FIRST_WINDOW_MIN_UIDS, 4 * limit))
        for _ in range(MAX_SEARCH_WINDOWS):
            high = min(low + span - 1, summary.highest)
            answer = self._run("UID SEARCH", self.client.search, [*criteria, "UID", f"{low}:{high}"])
            held_here = set(held(low, high)) if held is not None else set()
            found += sorted(uid for uid in set(answer) if uid not in excluded and uid not in held_here)
            if len(found) >= limit or high >= summary.highest:
                return found[:limit]
            low, span = high + 1, min(SEARCH_WINDOW_UIDS, span * 2)
        log.warning(
            "Searched %s windows of UIDs in %s up to UID %s and stopped there; unseen mail above it "
            "waits until the mail below is settled or moved",
            MAX_SEARCH_WINDOWS,
            self.mailbox,
            low - 1,
        )
        return found[:limit]

    def arrival_times(self, uids: Sequence[int]) -> dict[int, datetime]:
        """When each UID arrived (INTERNALDATE, aware UTC), without setting \\Seen; gone UIDs are left out."""
        found: dict[int, datetime] = {}
        chunks = uid_list_chunks(uids)
        if chunks:
            self._ensure_open()
        for chunk in chunks:
            answer = self._run("UID FETCH", self.client.fetch, chunk, ["INTERNALDATE"])
            for uid, attributes in answer.items():
                arrived = attributes.get(b"INTERNALDATE")
                if isinstance(arrived, datetime):
                    # IMAPClient hands back naive local times unless told otherwise: make them aware.
                    found[uid] = arrived.astimezone(UTC)
        return found

    def peek(
        self,
        uids: Sequence[int],
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> list[PeekedMessage]:
        """The header and body start of each UID (ascending), without setting \\Seen.

        One `UID FETCH` per ~8 KB of UIDs. UIDs that no longer exist are left out of the result.
        Memory is bounded by len(uids) * (both limits).
        """
        if max_header_bytes < 1 or max_body_bytes < 0:
            raise ValueError("max_header_bytes must be positive and max_body_bytes not negative")
        chunks = uid_list_chunks(uids)
        if not chunks:
            return []
        self._ensure_open()
        items = [
            "RFC822.SIZE",
            f"BODY.PEEK[HEADER]<0.{max_header_bytes}>",
            f"BODY.PEEK[TEXT]<0.{max_body_bytes}>",
        ]
        messages: list[PeekedMessage] = []
        for chunk in chunks:
            answer = self._run("UID FETCH", self.client.fetch, chunk, items)
            for uid, attributes in answer.items():
                header = attributes.get(b"BODY[HEADER]<0>", attributes.get(b"BODY[HEADER]"))
                if header is None:
                    continue  # an unsolicited update (flags) for a message that was expunged meanwhile
                text = attributes.get(b"BODY[TEXT]<0>", attributes.get(b"BODY[TEXT]")) or b""
                size = attributes.get(b"RFC822.SIZE")
                if not isinstance(size, int):
                    raise ImapError(f"UID FETCH gave no RFC822.SIZE for UID {uid}")
                raw, header_complete = _joined_message(header, text[:max_body_bytes], max_header_bytes)
                messages.append(PeekedMessage(uid=uid, raw=raw, size=size, header_complete=header_complete))
        messages.sort(key=lambda message: message.uid)
        wanted = sum(len(chunk) for chunk in chunks)
        if len(messages) < wanted:
            log.info(
                "%s of %s requested UIDs no longer exist in %s", wanted - len(messages), wanted, self.mailbox
            )
        return messages

    def fetch_whole(self, uid: int) -> bytes | None:
        """The whole message of one UID (BODY.PEEK[], so \\Seen stays unset); None when it is gone.

        For DKIM, whose body hash covers every byte: the caller bounds the size by RFC822.SIZE first.
        """
        self._ensure_open()
        answer = self._run("UID FETCH", self.client.fetch, [uid], ["BODY.PEEK[]"])
        attributes = answer.get(uid) or {}
        whole = attributes.get(b"BODY[]")
        return whole if isinstance(whole, bytes) else None

    def _store(self, uids: Sequence[int], flag: str, expected_uidvalidity: int) -> list[int]:
        normalized = normalize_uids(uids)
        if not normalized:
            return []
        actual = self.open(readonly=False)
        if actual != expected_uidvalidity:
            raise UidValidityChanged(self.mailbox, expected_uidvalidity, actual)
        for uid_set in uid_set_chunks(normalized):
            # IMAPClient raises on a NO (imaplib would return it): a refused STORE is never success.
            self._run("UID STORE", self.client.add_flags, uid_set, [flag], silent=True)
        log.info("Set %s on %s message(s) in %s", flag, len(normalized), self.mailbox)
        return normalized

    def mark_seen(self, uids: Sequence[int], *, expected_uidvalidity: int) -> list[int]:
        """Set \\Seen on `uids` after a read-write re-SELECT; UidValidityChanged (none set) if recreated."""
        return self._store(uids, "\\Seen", expected_uidvalidity)

    def add_keyword(self, uids: Sequence[int], keyword: str, *, expected_uidvalidity: int) -> list[int]:
        """Add `keyword` (e.g. $JiraRejected) to `uids`, with the same UIDVALIDITY check as mark_seen."""
        return self._store(uids, check_keyword(keyword), expected_uidvalidity)

    def server_mailbox_name(self, name: str) -> str:
        """`name` with "/" as the server's hierarchy delimiter and under its personal namespace
        (e.g. "Jira/Rejected" is "INBOX.Jira.Rejected" on Courier, "Jira.Rejected" on Dovecot's
        Maildir++). One NAMESPACE command where the server has it."""
        if "NAMESPACE" not in (self.capabilities or ()):
            return name
        personal = self._run("NAMESPACE", self.client.namespace).personal or ()
        if not personal:
            return name
        prefix, delimiter = personal[0]
        prefix = prefix.decode() if isinstance(prefix, bytes) else str(prefix or "")
        delimiter = delimiter.decode() if isinstance(delimiter, bytes) else str(delimiter or "/")
        translated = name.replace("/", delimiter)
        if prefix and not translated.upper().startswith(prefix.upper()):
            translated = prefix + translated
        return translated

    def _copyuid(self, answer: Any, moved: int) -> tuple[int | None, dict[int, int]]:
        """The COPYUID the server sent for the last COPY or MOVE: untagged (MOVE) or in the tagged OK."""
        texts = [*(self.client._imap.untagged_responses.pop("COPYUID", None) or [])]
        texts += [
            a for a in (answer if isinstance(answer, list | tuple) else [answer]) if isinstance(a, bytes)
        ]
        return copyuid_mapping(texts, moved)

    def set_aside(self, uids: Sequence[int], destination: str, *, expected_uidvalidity: int) -> MovedMail:
        """Take `uids` out of the inbox's way: into `destination` (created if missing) by UID MOVE,
        else UID COPY + \\Deleted + UID EXPUNGE of just those UIDs (UIDPLUS), else by \\Seen.

        Never a plain EXPUNGE, which would also remove other clients' \\Deleted mail. Re-SELECTs
        read-write first (UidValidityChanged if the mailbox was recreated: nothing is touched).
        """
        normalized = normalize_uids(uids)
        if not normalized:
            return MovedMail("moved", [])
        actual = self.open(readonly=False)
        if actual != expected_uidvalidity:
            raise UidValidityChanged(self.mailbox, expected_uidvalidity, actual)
        capabilities = self.capabilities or frozenset()
        if "MOVE" not in capabilities and "UIDPLUS" not in capabilities:
            self._store(normalized, "\\Seen", expected_uidvalidity)
            log.info(
                "%s has neither MOVE nor UIDPLUS: %d rejected message(s) marked seen in place",
                self.mailbox,
                len(normalized),
            )
            return MovedMail("marked_seen", normalized)
        target = check_mailbox(self.server_mailbox_name(destination))
        if not self._run("LIST", self.client.folder_exists, target):
            self._run("CREATE", self.client.create_folder, target)
            log.info("Created mailbox %s for rejected mail", target)
        self.client._imap.untagged_responses.pop("COPYUID", None)
        new_uids: dict[int, int] = {}
        target_uidvalidity = None
        for uid_set in uid_set_chunks(normalized):
            if "MOVE" in capabilities:
                answer = self._run("UID MOVE", self.client.move, uid_set, target)
            else:
                answer = self._run("UID COPY", self.client.copy, uid_set, target)
                self._run("UID STORE", self.client.add_flags, uid_set, ["\\Deleted"], silent=True)
                self._run("UID EXPUNGE", self.client.uid_expunge, uid_set)
            uidvalidity, mapping = self._copyuid(answer, len(normalized))
            target_uidvalidity = uidvalidity or target_uidvalidity
            new_uids.update(mapping)
        how = "moved" if "MOVE" in capabilities else "copied"
        log.info(
            "Moved %d rejected message(s) from %s to %s (%s)", len(normalized), self.mailbox, target, how
        )
        return MovedMail(how, normalized, target, target_uidvalidity, new_uids)

    def close(self) -> None:
        """Leave the mailbox without expunging anything; errors are logged, not raised."""
        if self._selected_readonly is None:
            return
        readonly, self._selected_readonly = self._selected_readonly, None
        try:
            if readonly:
                # CLOSE after EXAMINE never expunges (RFC 3501 §6.4.2).
                self._run("CLOSE", self.client.close_folder)
                return
            try:
                self._run("UNSELECT", self.client.unselect_folder)
            except ImapError:
                # No UNSELECT (RFC 3691) here: switch to read-only first so CLOSE cannot expunge.
                self._run("EXAMINE", self.client.select_folder, self.mailbox, readonly=True)
                self._run("CLOSE", self.client.close_folder)
        except (ImapError, OSError) as exc:
            log.warning("Could not leave %s cleanly: %s", self.mailbox, exc)
