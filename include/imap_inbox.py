"""IMAP inbox operations for Jira mail: find unseen UIDs, peek without \\Seen, and flag messages by UID."""

from __future__ import annotations

import imaplib
import logging
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
    "DEFAULT_TIMEOUT_S",
    "QUARANTINED_KEYWORD",
    "REJECTED_KEYWORD",
    "ImapError",
    "Inbox",
    "PeekedMessage",
    "UidValidityChanged",
]

log = logging.getLogger(__name__)

REJECTED_KEYWORD = "$JiraRejected"
QUARANTINED_KEYWORD = "$JiraQuarantined"
# PERMANENTFLAGS holds this when the server keeps keywords the client makes up ($JiraRejected).
ANY_KEYWORD = "\\*"
_T = TypeVar("_T")


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

    def unseen_uids(
        self,
        *,
        limit: int,
        exclude_keyword: str | None = REJECTED_KEYWORD,
        exclude_uids: Collection[int] = (),
    ) -> list[int]:
        """The oldest `limit` UIDs without \\Seen and without `exclude_keyword`, in one UID SEARCH.

        `exclude_uids` are left out before the limit applies, so UIDs held elsewhere (the mail ledger)
        never take a place in the window; the SEARCH answers every match, so it stays one command.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        criteria = ["UNSEEN"]
        if exclude_keyword:
            criteria += ["UNKEYWORD", check_keyword(exclude_keyword)]
        self._ensure_open()
        found = self._run("UID SEARCH", self.client.search, criteria)
        excluded = set(exclude_uids)
        return sorted(uid for uid in set(found) if uid not in excluded)[:limit]

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
