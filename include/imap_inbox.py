"""IMAP inbox operations for Jira mail: find unseen UIDs, peek without \\Seen, and flag messages by UID."""

from __future__ import annotations

import imaplib
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

REJECTED_KEYWORD = "$JiraRejected"
DEFAULT_TIMEOUT_S = 60.0
# RFC 7162 §4 asks clients to keep a command line under 8192 octets, and servers such as Courier
# and older Exchange reject longer ones; a UID set longer than this is sent as several commands.
MAX_UID_SET_CHARS = 7900
_MAX_UID = 2**32 - 1

# A keyword is an IMAP atom; this conservative subset keeps it from ever needing quoting.
_KEYWORD = re.compile(r"[A-Za-z0-9$_.+\-]{1,100}")
_ATOM_MAILBOX = re.compile(r"[A-Za-z0-9_.\-/]+")
_LITERAL_MARKER = re.compile(rb"\{(\d+)\}\Z")
_SECTION_ORIGIN = re.compile(rb"<\d+>\Z")


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
    """The server answered NO or BAD, or sent something this module cannot make sense of."""


@dataclass(frozen=True)
class PeekedMessage:
    """The start of one message, read without setting \\Seen.

    `raw` is the header (at most max_header_bytes) followed by the start of the body (at most
    max_body_bytes); `size` is the full RFC822.SIZE, so `size > len(raw)` means it was cut.
    """

    uid: int
    raw: bytes
    size: int


def ensure_timeout(client: imaplib.IMAP4, seconds: float) -> None:
    """Give the client's socket a timeout unless it already has one, so no read can hang forever."""
    sock = getattr(client, "sock", None)
    if sock is not None and sock.gettimeout() is None:
        sock.settimeout(seconds)


def _normalize_uids(uids: Iterable[int]) -> list[int]:
    result: set[int] = set()
    for uid in uids:
        if isinstance(uid, bool) or not isinstance(uid, int) or not 1 <= uid <= _MAX_UID:
            raise ValueError(f"a UID must be an integer from 1 to {_MAX_UID}, got {uid!r}")
        result.add(uid)
    return sorted(result)


def _uid_ranges(sorted_uids: list[int]) -> list[str]:
    ranges: list[str] = []
    start = previous = sorted_uids[0]
    for uid in sorted_uids[1:]:
        if uid != previous + 1:
            ranges.append(f"{start}:{previous}" if previous != start else str(start))
            start = uid
        previous = uid
    ranges.append(f"{start}:{previous}" if previous != start else str(start))
    return ranges


def compact_uid_set(uids: Iterable[int]) -> str:
    """The shortest IMAP sequence set for `uids`, e.g. [1, 2, 3, 4, 5, 7, 9, 10] -> "1:5,7,9:10"."""
    normalized = _normalize_uids(uids)
    if not normalized:
        raise ValueError("an IMAP UID set cannot be empty")
    return ",".join(_uid_ranges(normalized))


def _uid_set_chunks(uids: Iterable[int], max_chars: int | None = None) -> list[str]:
    max_chars = MAX_UID_SET_CHARS if max_chars is None else max_chars
    normalized = _normalize_uids(uids)
    if not normalized:
        return []
    chunks: list[str] = []
    current: list[str] = []
    length = 0
    for part in _uid_ranges(normalized):
        added = len(part) + (1 if current else 0)
        if current and length + added > max_chars:
            chunks.append(",".join(current))
            current, length = [], 0
            added = len(part)
        current.append(part)
        length += added
    chunks.append(",".join(current))
    return chunks


def _quote_mailbox(name: str) -> str:
    if not name or not name.isascii() or any(c in name for c in "\r\n\0"):
        # Non-ASCII names need modified UTF-7 (RFC 3501 §5.1.3), which imaplib does not do.
        raise ValueError(f"mailbox name must be non-empty printable ASCII, got {name!r}")
    if _ATOM_MAILBOX.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_keyword(keyword: str) -> str:
    if not isinstance(keyword, str) or not _KEYWORD.fullmatch(keyword):
        raise ValueError(
            "keyword must be 1-100 characters from A-Z a-z 0-9 $ _ . + - (not a \\system flag), "
            f"got {keyword!r}"
        )
    return keyword


def _describe(data: Any) -> str:
    parts = []
    for item in data or ():
        if isinstance(item, tuple):
            item = item[0]
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if item is not None:
            parts.append(str(item))
    text = " ".join(parts)
    return text[:300] or "(no text)"


# --- FETCH response parsing -------------------------------------------------------------------
# imaplib hands back one FETCH response as a flat list: a (line-up-to-literal, literal-bytes) tuple
# per literal, then a bytes element for the text after the last literal. Several responses follow
# each other in the same list. The text is tokenized, literals are kept as opaque bytes, and the
# parenthesised lists are rebuilt, so neither the item order nor literal-vs-quoted matters.

_LPAREN, _RPAREN = object(), object()


class _Atom(bytes):
    """An unquoted token, told apart from string and literal values (plain bytes)."""


def _tokenize_text(text: bytes, tokens: list[object]) -> None:
    pos, end = 0, len(text)
    while pos < end:
        char = text[pos : pos + 1]
        if char in b" \t\r\n":
            pos += 1
        elif char == b"(":
            tokens.append(_LPAREN)
            pos += 1
        elif char == b")":
            tokens.append(_RPAREN)
            pos += 1
        elif char == b'"':
            value = bytearray()
            pos += 1
            while pos < end and text[pos : pos + 1] != b'"':
                if text[pos : pos + 1] == b"\\" and pos + 1 < end:
                    pos += 1
                value += text[pos : pos + 1]
                pos += 1
            if pos >= end:
                raise ImapError("unterminated quoted string in FETCH response")
            tokens.append(bytes(value))
            pos += 1
        else:
            start, depth = pos, 0
            # A section spec such as BODY[HEADER.FIELDS (FROM)]<0> is one token despite its spaces.
            while pos < end:
                char = text[pos : pos + 1]
                if char == b"[":
                    depth += 1
                elif char == b"]":
                    depth -= 1
                elif depth == 0 and char in b" ()":
                    break
                pos += 1
            atom = _Atom(text[start:pos])
            tokens.append(None if atom.upper() == b"NIL" else atom)


def _tokenize_fetch(data: Sequence[Any]) -> list[object]:
    tokens: list[object] = []
    for element in data:
        if element is None:
            continue
        if isinstance(element, tuple):
            head, literal = element[0], element[1]
            marker = _LITERAL_MARKER.search(head)
            if marker is None:
                raise ImapError(f"FETCH literal without a {{n}} marker after {head[-60:]!r}")
            _tokenize_text(head[: marker.start()], tokens)
            tokens.append(bytes(literal))
        elif isinstance(element, bytes):
            _tokenize_text(element, tokens)
        else:
            raise ImapError(f"unexpected element {type(element).__name__} in FETCH response")
    return tokens


def _parse_list(tokens: list[object], pos: int) -> tuple[list[object], int]:
    items: list[object] = []
    while pos < len(tokens):
        token = tokens[pos]
        if token is _RPAREN:
            return items, pos + 1
        if token is _LPAREN:
            nested, pos = _parse_list(tokens, pos + 1)
            items.append(nested)
        else:
            items.append(token)
            pos += 1
    raise ImapError("unbalanced parentheses in FETCH response")


def parse_fetch_response(data: Sequence[Any]) -> dict[int, dict[bytes, Any]]:
    """Map each UID to its FETCH items ({b"RFC822.SIZE": b"123", b"BODY[HEADER]": b"...", ...}).

    Item names are upper-cased and lose their `<origin>` suffix; responses for the same UID are
    merged; responses without a UID (unsolicited flag updates) are ignored.
    """
    tokens = _tokenize_fetch(data)
    merged: dict[int, dict[bytes, Any]] = {}
    pos = 0
    while pos < len(tokens):
        sequence_number = tokens[pos]
        if not isinstance(sequence_number, _Atom) or not sequence_number.isdigit():
            raise ImapError(f"FETCH response does not start with a message number: {sequence_number!r:.60}")
        if pos + 1 >= len(tokens) or tokens[pos + 1] is not _LPAREN:
            raise ImapError(f"FETCH response for message {int(sequence_number)} has no item list")
        items, pos = _parse_list(tokens, pos + 2)
        if len(items) % 2:
            raise ImapError(f"FETCH response for message {int(sequence_number)} has an odd item list")
        attributes: dict[bytes, Any] = {}
        for name, value in zip(items[::2], items[1::2], strict=True):
            if not isinstance(name, _Atom):
                raise ImapError(f"FETCH item name expected, got {name!r:.60}")
            attributes[_SECTION_ORIGIN.sub(b"", name.upper())] = value
        uid = attributes.get(b"UID")
        if isinstance(uid, _Atom) and uid.isdigit():
            merged.setdefault(int(uid), {}).update(attributes)
    return merged


def _joined_message(header: bytes, text: bytes, max_header_bytes: int) -> bytes:
    if len(header) >= max_header_bytes and not header.endswith((b"\r\n\r\n", b"\n\n")):
        # The header was cut mid-way: end it at its last whole line and add the blank line, so a
        # parser never reads the body as more header fields.
        last_newline = header.rfind(b"\n")
        header = (header[: last_newline + 1] if last_newline >= 0 else b"") + b"\r\n"
    return header + text


class Inbox:
    """One mailbox on a logged-in client. Reads never set \\Seen; writes re-check UIDVALIDITY first."""

    def __init__(
        self, client: imaplib.IMAP4, mailbox: str = "INBOX", *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self._client = client
        self.mailbox = mailbox
        self._quoted_mailbox = _quote_mailbox(mailbox)
        self.command_count = 0
        self.uidvalidity: int | None = None
        self._selected_readonly: bool | None = None
        ensure_timeout(client, timeout)

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, what: str, command: Callable[..., tuple[str, list[Any]]], *args: Any) -> list[Any]:
        self.command_count += 1
        try:
            typ, data = command(*args)
        except imaplib.IMAP4.error as exc:
            raise ImapError(f"{what} in {self.mailbox!r} failed: {exc}") from exc
        if typ != "OK":
            raise ImapError(f"{what} in {self.mailbox!r} answered {typ}: {_describe(data)}")
        return data

    def open(self, *, readonly: bool = True) -> int:
        """EXAMINE (readonly) or SELECT the mailbox; returns its UIDVALIDITY."""
        self._selected_readonly = None
        self._run("EXAMINE" if readonly else "SELECT", self._client.select, self._quoted_mailbox, readonly)
        self._selected_readonly = readonly
        _, values = self._client.response("UIDVALIDITY")
        numbers = [value for value in values if value and value.isdigit()]
        if not numbers:
            raise ImapError(f"the server sent no UIDVALIDITY when opening {self.mailbox!r}")
        self.uidvalidity = int(numbers[-1])
        log.debug(
            "Opened %s (%s), UIDVALIDITY %s",
            self.mailbox,
            "read-only" if readonly else "read-write",
            self.uidvalidity,
        )
        return self.uidvalidity

    def _ensure_open(self) -> None:
        if self._selected_readonly is None or self._client.state != "SELECTED":
            self.open(readonly=True)

    def unseen_uids(self, *, limit: int, exclude_keyword: str | None = REJECTED_KEYWORD) -> list[int]:
        """The oldest `limit` UIDs without \\Seen and without `exclude_keyword`, in one UID SEARCH."""
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        criteria = ["UNSEEN"]
        if exclude_keyword:
            criteria += ["UNKEYWORD", _check_keyword(exclude_keyword)]
        self._ensure_open()
        data = self._run("UID SEARCH", self._client.uid, "SEARCH", *criteria)
        uids: set[int] = set()
        for line in data:
            if isinstance(line, bytes):
                for word in line.split():
                    if not word.isdigit():
                        raise ImapError(f"UID SEARCH returned a non-number {word[:40]!r}")
                    uids.add(int(word))
        return sorted(uids)[:limit]

    def peek(
        self,
        uids: Sequence[int],
        *,
        max_header_bytes: int = 64 * 1024,
        max_body_bytes: int = 256 * 1024,
    ) -> list[PeekedMessage]:
        """The header and body start of each UID (ascending), without setting \\Seen.

        One `UID FETCH` per ~8 KB of UID set (one for any contiguous run). UIDs that no longer
        exist are left out of the result. Memory is bounded by len(uids) * (both limits).
        """
        if max_header_bytes < 1 or max_body_bytes < 0:
            raise ValueError("max_header_bytes must be positive and max_body_bytes not negative")
        chunks = _uid_set_chunks(uids)
        if not chunks:
            return []
        self._ensure_open()
        items = (
            f"(UID RFC822.SIZE BODY.PEEK[HEADER]<0.{max_header_bytes}> BODY.PEEK[TEXT]<0.{max_body_bytes}>)"
        )
        wanted = set(_normalize_uids(uids))
        messages: list[PeekedMessage] = []
        for uid_set in chunks:
            data = self._run("UID FETCH", self._client.uid, "FETCH", uid_set, items)
            for uid, attributes in parse_fetch_response(data).items():
                if uid not in wanted or b"BODY[HEADER]" not in attributes:
                    continue  # an unsolicited update for another message
                size, header, text = (
                    attributes.get(b"RFC822.SIZE"),
                    attributes[b"BODY[HEADER]"],
                    attributes.get(b"BODY[TEXT]"),
                )
                if not isinstance(size, _Atom) or not size.isdigit():
                    raise ImapError(f"UID FETCH gave no RFC822.SIZE for UID {uid}")
                messages.append(
                    PeekedMessage(
                        uid=uid,
                        raw=_joined_message(header or b"", (text or b"")[:max_body_bytes], max_header_bytes),
                        size=int(size),
                    )
                )
        messages.sort(key=lambda message: message.uid)
        if len(messages) < len(wanted):
            log.info(
                "%s of %s requested UIDs no longer exist in %s",
                len(wanted) - len(messages),
                len(wanted),
                self.mailbox,
            )
        return messages

    def _store(self, uids: Sequence[int], flag_list: str, expected_uidvalidity: int) -> list[int]:
        normalized = _normalize_uids(uids)
        if not normalized:
            return []
        actual = self.open(readonly=False)
        if actual != expected_uidvalidity:
            raise UidValidityChanged(self.mailbox, expected_uidvalidity, actual)
        for uid_set in _uid_set_chunks(normalized):
            self._run("UID STORE", self._client.uid, "STORE", uid_set, "+FLAGS.SILENT", flag_list)
        log.info("Set %s on %s message(s) in %s", flag_list, len(normalized), self.mailbox)
        return normalized

    def mark_seen(self, uids: Sequence[int], *, expected_uidvalidity: int) -> list[int]:
        """Set \\Seen on `uids` after a read-write re-SELECT; UidValidityChanged (none set) if recreated."""
        return self._store(uids, "(\\Seen)", expected_uidvalidity)

    def add_keyword(self, uids: Sequence[int], keyword: str, *, expected_uidvalidity: int) -> list[int]:
        """Add `keyword` (e.g. $JiraRejected) to `uids`, with the same UIDVALIDITY check as mark_seen."""
        return self._store(uids, f"({_check_keyword(keyword)})", expected_uidvalidity)

    def close(self) -> None:
        """Leave the mailbox without expunging anything; errors are logged, not raised."""
        if self._selected_readonly is None or self._client.state != "SELECTED":
            self._selected_readonly = None
            return
        readonly, self._selected_readonly = self._selected_readonly, None
        try:
            if readonly:
                # CLOSE after EXAMINE never expunges (RFC 3501 §6.4.2).
                self._run("CLOSE", self._client.close)
                return
            try:
                self._run("UNSELECT", self._client.unselect)
            except ImapError:
                # No UNSELECT (RFC 3691) here: switch to read-only first so CLOSE cannot expunge.
                self._run("EXAMINE", self._client.select, self._quoted_mailbox, True)
                self._run("CLOSE", self._client.close)
        except (ImapError, OSError) as exc:
            log.warning("Could not leave %s cleanly: %s", self.mailbox, exc)
