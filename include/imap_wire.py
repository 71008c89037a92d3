"""What goes on the IMAP wire for the inbox: TLS sessions with per-socket timeouts, UID sets, keywords.

The protocol itself (command syntax, FETCH/SELECT response parsing, mailbox-name encoding, SASL)
is IMAPClient's, not a hand-written imaplib FETCH tokenizer, because the inbox needs what IMAPClient
does and imaplib does not: robust FETCH parsing (any item order, literals or
quoted strings), PERMANENTFLAGS from SELECT (servers such as Exchange refuse custom keywords),
STORE answers checked (imaplib returns NO instead of raising), XOAUTH2/OAUTHBEARER login and IDLE.
It also takes a socket timeout per connection, so nothing here touches the process-wide default.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable

from imapclient import IMAPClient

DEFAULT_TIMEOUT_S = 60.0
# RFC 7162 §4 asks clients to keep a command line under 8192 octets, and servers such as Courier
# and older Exchange reject longer ones; a UID set longer than this is sent as several commands.
MAX_UID_SET_CHARS = 7900
MAX_UID = 2**32 - 1
SSL_CONTEXT_NAMES = ("default", "none")

# A keyword is an IMAP atom; this conservative subset keeps it from ever needing quoting.
_KEYWORD = re.compile(r"[A-Za-z0-9$_.+\-]{1,100}")


def ssl_context_named(name: str) -> ssl.SSLContext:
    """The TLS context the IMAP provider's `ssl_context` names: "default" verifies, "none" does not."""
    if name == "default":
        return ssl.create_default_context()
    if name == "none":
        # imaplib's IMAP4_SSL without a context does not verify either; IMAPClient would verify, so
        # "none" has to be spelled out.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    raise ValueError(f"ssl_context must be one of {SSL_CONTEXT_NAMES}, got {name!r}")


def connect(
    host: str,
    port: int | None = None,
    *,
    use_ssl: bool = True,
    ssl_context: str | ssl.SSLContext = "default",
    timeout: float = DEFAULT_TIMEOUT_S,
) -> IMAPClient:
    """An IMAPClient session, not yet logged in, whose socket times out after `timeout` seconds.

    Plain connections do not STARTTLS, like the provider's ImapHook; the port defaults to 993
    with TLS and 143 without.
    """
    context = ssl_context_named(ssl_context) if isinstance(ssl_context, str) else ssl_context
    return IMAPClient(
        host,
        port=port or (993 if use_ssl else 143),
        ssl=use_ssl,
        ssl_context=context if use_ssl else None,
        timeout=timeout,
    )


def normalize_uids(uids: Iterable[int]) -> list[int]:
    """The distinct UIDs, ascending; ValueError for anything that is not an integer 1..2**32-1."""
    result: set[int] = set()
    for uid in uids:
        if isinstance(uid, bool) or not isinstance(uid, int) or not 1 <= uid <= MAX_UID:
            raise ValueError(f"a UID must be an integer from 1 to {MAX_UID}, got {uid!r}")
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


def _chunks(parts: list[str], max_chars: int) -> list[list[str]]:
    chunks: list[list[str]] = []
    current: list[str] = []
    length = 0
    for part in parts:
        added = len(part) + (1 if current else 0)
        if current and length + added > max_chars:
            chunks.append(current)
            current, length = [], 0
            added = len(part)
        current.append(part)
        length += added
    if current:
        chunks.append(current)
    return chunks


def uid_set_chunks(uids: Iterable[int], max_chars: int = MAX_UID_SET_CHARS) -> list[str]:
    """Compact UID sets ("1:500,7") of at most `max_chars` each, for commands that take ranges."""
    normalized = normalize_uids(uids)
    if not normalized:
        return []
    return [",".join(chunk) for chunk in _chunks(_uid_ranges(normalized), max_chars)]


def uid_list_chunks(uids: Iterable[int], max_chars: int = MAX_UID_SET_CHARS) -> list[list[int]]:
    """UIDs in groups whose comma-joined form stays under `max_chars`.

    IMAPClient's fetch() matches the answer to the UIDs it was given, so it needs them one by one
    rather than as ranges.
    """
    normalized = normalize_uids(uids)
    return [[int(uid) for uid in chunk] for chunk in _chunks([str(uid) for uid in normalized], max_chars)]


def check_keyword(keyword: str) -> str:
    """`keyword` if it is a plain IMAP keyword atom (e.g. $JiraRejected), else ValueError."""
    if not isinstance(keyword, str) or not _KEYWORD.fullmatch(keyword):
        raise ValueError(
            "keyword must be 1-100 characters from A-Z a-z 0-9 $ _ . + - (not a \\system flag), "
            f"got {keyword!r}"
        )
    return keyword


def check_mailbox(name: str) -> str:
    """`name` if it can be a mailbox name (IMAPClient quotes and UTF-7-encodes it), else ValueError."""
    if not isinstance(name, str) or not name or any(c in name for c in "\r\n\0"):
        raise ValueError(f"mailbox name must be a non-empty string without CR, LF or NUL, got {name!r}")
    return name
