"""Bounded, never-raising parsing of Jira notification mail into the issue keys a trusted sender names."""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from email.utils import getaddresses
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_KEYS = 20

MAX_SUBJECT_CHARS = 512
MAX_MESSAGE_ID_CHARS = 998
# RFC 5322's line limit; a From longer than that is not a notification sender worth parsing.
MAX_FROM_CHARS = 998
MAX_ADDRESS_CHARS = 254
MAX_MIME_PARTS = 64
MAX_MIME_DEPTH = 8
MAX_PART_HEADER_BYTES = 16 * 1024
# The "X did Y" line Jira writes sits near the top of the body (after a style block in HTML);
# looking further only finds user text.
EVENT_SCAN_CHARS = 32 * 1024
MAX_URL_CHARS = 2048

_PROJECT = r"[A-Z][A-Z0-9_]{1,254}"
_NUMBER = r"[1-9][0-9]{0,9}"
# Not after a word character or dash, and not followed by another "-digits" group, so that
# CVE-2024-3094 or ISO-8859-1 never yield CVE-2024 / ISO-8859.
_KEY_END = r"(?![A-Za-z0-9_]|-[0-9])"

KEY_PATTERN = re.compile(rf"(?<![A-Za-z0-9_-])(?P<project>{_PROJECT})-(?P<number>{_NUMBER}){_KEY_END}")

_JIRA_PREFIX = r"(?i:\[jira\])"
_BRACKETED_SUBJECT = re.compile(
    rf"^{_JIRA_PREFIX}\s*(?:\[(?P<tag>[^\[\]()]{{1,40}})\]\s*)?\((?P<key>{_PROJECT}-{_NUMBER})\)"
)
_MENTION_SUBJECT = re.compile(
    rf"^{_JIRA_PREFIX}\s+.{{0,200}}?(?i:\bmentioned\s+you\s+(?:on|in))\s+"
    rf"(?P<key>{_PROJECT}-{_NUMBER}){_KEY_END}"
)
# Service Management subjects carry no prefix: only the leading token is taken, and only when it
# is followed by whitespace, so "CVE-2024-3094 ..." or "UTF-8: ..." never match.
_BARE_SUBJECT = re.compile(rf"^(?P<project>{_PROJECT})-(?P<number>{_NUMBER})(?=\s|$)")
# Prefixes of well-known identifiers that look like keys when they lead a subject.
NON_KEY_PREFIXES = frozenset(
    {
        "AES", "BIG", "CP", "CVE", "CWE", "ECMA", "EUC", "GB", "GHSA", "HTTP", "IEC", "IEEE", "IPV",
        "ISO", "KOI", "MD", "PEP", "RFC", "RSA", "SHA", "SSL", "TLS", "UCS", "UTF", "WINDOWS",
    }
)  # fmt: skip

_HEADER_END = re.compile(rb"(?:\A|\r?\n)\r?\n")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,256}")
_ENCODED_WORD = re.compile(r"=\?(?P<charset>[^?\s]{1,64})\?(?P<encoding>[bBqQ])\?(?P<text>[^?\s]*)\?=")
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]+")
_WHITESPACE = re.compile(r"\s+")
_ADDRESS = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
# Lower-case scheme only, as Jira writes it: a case-insensitive pattern loses the regex engine's
# literal-prefix search and costs several times more on every body.
_URL = re.compile(rf"https?://[^\s\"'<>()\[\]{{}}\\^`|]{{1,{MAX_URL_CHARS}}}")
_META_PAIR = re.compile(r'(?P<name>[A-Za-z_][A-Za-z0-9_]{0,63})\s*=\s*"(?P<value>[^"]{0,1024})"')
# Jira writes its own "who did what" line in lower case, and in HTML marks it up:
# "<a>Name</a> <strong>created</strong> an issue", so words may be separated by tags or &nbsp;.
_GAP = r"(?:\s|&nbsp;|<[^<>]{0,256}>)+"
_BODY_EVENTS = re.compile(
    rf"\b(?:(?P<created>created{_GAP}an{_GAP}issue)"
    rf"|(?P<updated>updated{_GAP}an{_GAP}issue|made{_GAP}\d{{1,4}}{_GAP}updates?)"
    rf"|(?P<commented>commented(?:{_GAP}on\b|:))"
    rf"|(?P<resolved>resolved{_GAP}this{_GAP}as)"
    rf"|(?P<mentioned>mentioned{_GAP}you))"
)
_CONTENT_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,64}")
_PARAMETER = re.compile(
    r';\s*(?P<name>[A-Za-z0-9_.-]{1,64})\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.){0,1024})"|(?P<token>[^\s;"]{1,1024}))'
)
_QUOTED_PAIR = re.compile(r"\\(.)")
_HEADER_LINE = re.compile(rb"[!-9;-~]{1,256}[ \t]*:")
_NON_BASE64_BYTES = bytes(
    set(range(256)) - set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
)
# Python text codecs that are no mail charset; punycode also decodes in quadratic time, so a
# 256 KiB part labelled with it would take many seconds.
_REFUSED_CODECS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape", "undefined"})
_SUBJECT_MENTION_EVENT = "mentioned"


@dataclass(frozen=True)
class ParsedMail:
    """What one mail says, once checked: the keys to act on, or why it must be ignored.

    ``keys_truncated`` is true when the mail named more than ``max_keys`` distinct keys; the first
    ``max_keys`` (subject key first) are kept so a legitimate mail that links many issues still
    triggers its own issue, while a flood of links cannot cause unbounded work.
    """

    accepted: bool
    keys: tuple[str, ...]
    event: str | None
    reason: str | None
    sender: str | None
    message_id: str | None
    subject: str | None
    keys_truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["keys"] = list(self.keys)
        return data


def default_trusted_senders(jira_url: str) -> list[str]:
    """The sender Jira Cloud uses for a site's notifications: ``jira@<host of jira_url>``."""
    return [f"jira@{_require_site_host(jira_url)}"]


def is_trusted_sender(address: str, trusted_senders: Sequence[str]) -> bool:
    """Whether ``address`` equals a trusted full address, or its domain equals a trusted bare domain.

    Matching is exact and case-insensitive (ASCII only), never by substring or suffix: the domain
    ``acme.atlassian.net`` trusts neither ``acme.atlassian.net.evil.com`` nor ``sub.acme.atlassian.net``.
    """
    if isinstance(trusted_senders, str):
        raise TypeError("trusted_senders must be a sequence of strings, not a single string")
    normalised = _normalise_address(address)
    if normalised is None:
        return False
    domain = normalised.rpartition("@")[2]
    for entry in trusted_senders:
        wanted = entry.strip() if isinstance(entry, str) else ""
        # A non-ASCII entry could match an ASCII address after case folding (KELVIN SIGN -> k).
        if not wanted or not wanted.isascii():
            continue
        wanted = wanted.lower()
        if "@" in wanted.lstrip("@"):
            if normalised == wanted:
                return True
        elif domain == wanted.lstrip("@"):
            return True
    return False


def parse_message(
    raw: bytes,
    *,
    trusted_senders: Sequence[str],
    jira_url: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_keys: int = DEFAULT_MAX_KEYS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> ParsedMail:
    """Parse a whole message, or its headers followed by a body prefix, without ever raising on its bytes.

    At most ``max_header_bytes`` of header and ``max_body_bytes`` of body are looked at, however long
    ``raw`` is. Keys come only from structured places: the subject patterns Jira uses, and
    ``/browse/KEY`` or Service Management portal links on the ``jira_url`` host (any host when
    ``jira_url`` is None). Mail from an untrusted sender, for another tenant, or naming no key is
    rejected with a reason and no keys. Invalid arguments (not input bytes) raise TypeError/ValueError.

    Reasons: ``empty_message``, ``no_headers``, ``headers_too_large``, ``no_from``, ``multiple_from``,
    ``invalid_from``, ``untrusted_sender: <address>``, ``foreign_tenant: <host>``, ``no_key``, and
    ``parse_error`` (an internal failure, logged). More than ``max_keys`` keys is not a rejection:
    the first ``max_keys`` are kept and ``keys_truncated`` is set.
    """
    if isinstance(trusted_senders, str):
        raise TypeError("trusted_senders must be a sequence of strings, not a single string")
    if max_keys < 1 or max_body_bytes < 0 or max_header_bytes < 1:
        raise ValueError("max_keys and max_header_bytes must be positive, max_body_bytes not negative")
    site_host = _require_site_host(jira_url) if jira_url is not None else None
    try:
        view = memoryview(raw).cast("B")
    except TypeError:
        raise TypeError(f"raw must be bytes-like, not {type(raw).__name__}") from None
    try:
        return _parse(view, tuple(trusted_senders), site_host, max_body_bytes, max_keys, max_header_bytes)
    except Exception as exc:  # the last line of defence: arbitrary bytes must never escape as an error
        log.warning("Jira mail parser failed unexpectedly (%s); mail rejected", type(exc).__name__)
        return _rejected("parse_error")


def _parse(
    view: memoryview,
    trusted_senders: tuple[str, ...],
    site_host: str | None,
    max_body_bytes: int,
    max_keys: int,
    max_header_bytes: int,
) -> ParsedMail:
    if len(view) == 0:
        return _rejected("empty_message")
    # Slice before any parsing so that neither the header scan nor the MIME parser sees more than
    # the bounded prefix; "+ 4" leaves room for the CRLFCRLF that ends a header block at the limit.
    head = bytes(view[: max_header_bytes + 4])
    end = _HEADER_END.search(head)
    if end is not None:
        header_block, body_start = head[: end.start()], end.end()
    elif len(view) <= max_header_bytes:
        header_block, body_start = head, len(view)
    else:
        return _rejected("headers_too_large")
    if len(header_block) > max_header_bytes:
        return _rejected("headers_too_large")

    headers = _parse_headers(header_block)
    if not headers:
        return _rejected("no_headers")
    subject = _first_text(headers, "subject", MAX_SUBJECT_CHARS, decode_words=True)
    message_id = _first_text(headers, "message-id", MAX_MESSAGE_ID_CHARS, decode_words=False)
    context = {"subject": subject, "message_id": message_id}

    sender, from_problem = _sender(headers.get("from", []))
    if sender is None:
        return _rejected(from_problem, **context)
    context["sender"] = sender
    if not is_trusted_sender(sender, trusted_senders):
        return _rejected(f"untrusted_sender: {sender}", **context)

    meta_event, foreign_tenant = _read_meta(headers.get("x-atl-mail-meta", []), site_host)
    if foreign_tenant is not None:
        return _rejected(f"foreign_tenant: {foreign_tenant}", event=meta_event, **context)

    keys = _KeyCollector(max_keys)
    subject_key, subject_event = _subject_key(subject or "")
    if subject_key is not None:
        keys.add(subject_key)

    body_event: str | None = None
    body = bytes(view[body_start : body_start + max_body_bytes])
    if body:
        body_event = _scan_body(headers, body, site_host, keys, max_body_bytes)

    event = meta_event or subject_event or body_event
    if not keys.keys:
        return _rejected("no_key", event=event, **context)
    return ParsedMail(
        accepted=True,
        keys=tuple(keys.keys),
        event=event,
        reason=None,
        sender=sender,
        message_id=message_id,
        subject=subject,
        keys_truncated=keys.truncated,
    )


def _rejected(
    reason: str,
    *,
    event: str | None = None,
    sender: str | None = None,
    message_id: str | None = None,
    subject: str | None = None,
) -> ParsedMail:
    return ParsedMail(
        accepted=False,
        keys=(),
        event=event,
        reason=reason,
        sender=sender,
        message_id=message_id,
        subject=subject,
    )


class _KeyCollector:
    """Distinct keys in first-seen order, stopping (and saying so) at the cap."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.keys: list[str] = []
        self._seen: set[str] = set()
        self.truncated = False

    def add(self, key: str) -> None:
        if key in self._seen:
            return
        if len(self.keys) >= self.max_keys:
            self.truncated = True
            return
        self._seen.add(key)
        self.keys.append(key)


# --- headers -----------------------------------------------------------------------------------


def _parse_headers(block: bytes) -> dict[str, list[str]]:
    """Unfolded header values by lower-cased name; lines that are not headers are dropped.

    Done by hand rather than by the email package so that 8-bit bytes, NULs and malformed lines
    can never raise, and so that From is handed to getaddresses before any RFC 2047 decoding.
    """
    text = block.decode("utf-8", "replace")
    fields: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if line[:1] in (" ", "\t"):
            # A continuation of a dropped line must not be glued onto the header before it.
            if current is not None:
                current.append(line)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _HEADER_NAME.fullmatch(name):
            current = None
            continue
        current = [value.lstrip(" \t")]
        fields.append((name.lower(), current))
    headers: dict[str, list[str]] = {}
    for name, pieces in fields:
        headers.setdefault(name, []).append("".join(pieces))
    return headers


def _first_text(headers: dict[str, list[str]], name: str, limit: int, *, decode_words: bool) -> str | None:
    values = headers.get(name)
    if not values:
        return None
    value = _decode_encoded_words(values[0]) if decode_words else values[0]
    cleaned = _clean_text(value)[:limit].strip()
    return cleaned or None


def _clean_text(value: str) -> str:
    """One line of printable text: control, bidi-override and zero-width characters become spaces."""
    return _WHITESPACE.sub(" ", _UNSAFE_CHARS.sub(" ", value)).strip()


def _decode_encoded_words(value: str) -> str:
    """Decode RFC 2047 encoded words, dropping the whitespace between adjacent ones (RFC 2047 §6.2)."""
    pieces: list[str] = []
    position = 0
    after_word = False
    for match in _ENCODED_WORD.finditer(value):
        gap = value[position : match.start()]
        if not (after_word and not gap.strip()):
            pieces.append(gap)
        pieces.append(_decode_word(match["charset"], match["encoding"], match["text"]))
        position = match.end()
        after_word = True
    pieces.append(value[position:])
    return "".join(pieces)


def _decode_word(charset: str, encoding: str, text: str) -> str:
    data = text.encode("ascii", "replace")
    try:
        if encoding in "bB":
            raw = base64.b64decode(data + b"=" * (-len(data) % 4))
        else:
            raw = binascii.a2b_qp(data, header=True)
    except (binascii.Error, ValueError):
        return "\ufffd"
    # RFC 2231 allows a language suffix: "utf-8*en".
    return _decode_bytes(raw, charset.partition("*")[0])


def _decode_bytes(data: bytes, charset: str | None) -> str:
    if charset:
        try:
            codec = codecs.lookup(charset)
            if codec.name not in _REFUSED_CODECS:
                return data.decode(codec.name, "replace")
        # Unknown or non-text codecs (LookupError), codecs that reject "replace", odd names: the
        # charset is attacker-chosen, so any failure falls back to UTF-8.
        except Exception:
            pass
    return data.decode("utf-8", "replace")


def _sender(from_values: list[str]) -> tuple[str | None, str]:
    """The single From address, lower-cased, or None and why not."""
    if not from_values:
        return None, "no_from"
    if len(from_values) > 1:
        return None, "multiple_from"
    value = from_values[0]
    if len(value) > MAX_FROM_CHARS:
        return None, "invalid_from"
    # The display name is never looked at: '"jira@acme.atlassian.net" <evil@x.com>' is evil@x.com.
    try:
        addresses = [address for _name, address in getaddresses([value])]
    except RecursionError:  # getaddresses recurses once per nested comment: "((((((..."
        return None, "invalid_from"
    normalised = [_normalise_address(address) for address in addresses]
    if len(normalised) == 1 and normalised[0] is not None:
        return normalised[0], ""
    # Python 3.11's getaddresses is lenient and splits some malformed values into several
    # entries; anything but exactly one valid mailbox is refused.
    if len(normalised) > 1 and all(address is not None for address in normalised):
        return None, "multiple_from"
    return None, "invalid_from"


def _normalise_address(address: str) -> str | None:
    candidate = address.strip() if isinstance(address, str) else ""
    if not candidate.isascii() or len(candidate) > MAX_ADDRESS_CHARS:
        return None
    candidate = candidate.lower()
    return candidate if _ADDRESS.fullmatch(candidate) else None


def _read_meta(values: list[str], site_host: str | None) -> tuple[str | None, str | None]:
    """The event_type of X-Atl-Mail-Meta, and the tenant host when it is not the configured site."""
    event: str | None = None
    for value in values:
        fields = {match["name"].lower(): match["value"] for match in _META_PAIR.finditer(value)}
        if event is None and fields.get("event_type"):
            event = _clean_text(fields["event_type"])[:64] or None
        tenant = fields.get("tenant")
        if tenant is not None and site_host is not None:
            tenant_host = _url_host(tenant)
            if tenant_host != site_host:
                return event, tenant_host or "invalid"
    return event, None


# --- keys and events -----------------------------------------------------------------------------


def _subject_key(subject: str) -> tuple[str | None, str | None]:
    """The key a Jira subject names, and the event its "[Commented]"-style tag or wording tells."""
    match = _BRACKETED_SUBJECT.match(subject)
    if match is not None:
        tag = match["tag"]
        return match["key"], (_clean_text(tag) or None) if tag else None
    match = _MENTION_SUBJECT.match(subject)
    if match is not None:
        return match["key"], _SUBJECT_MENTION_EVENT
    match = _BARE_SUBJECT.match(subject)
    if match is not None and match["project"] not in NON_KEY_PREFIXES:
        return match.group(0), None
    return None, None


def _scan_body(
    headers: dict[str, list[str]], body: bytes, site_host: str | None, keys: _KeyCollector, budget: int
) -> str | None:
    """Add the keys of Jira links in the text parts to ``keys``; return the event the body tells."""
    event: str | None = None
    for is_html, text in _text_parts(headers, body, budget):
        if event is None:
            event = _body_event(text)
        for key in _link_keys(text, site_host, is_html):
            keys.add(key)
            if keys.truncated:
                return event
    return event


def _body_event(text: str) -> str | None:
    match = _BODY_EVENTS.search(text, 0, EVENT_SCAN_CHARS)
    return match.lastgroup if match is not None else None


def _link_keys(text: str, site_host: str | None, is_html: bool) -> Iterator[str]:
    for match in _URL.finditer(text):
        url = match.group(0)
        if is_html and "&" in url:
            # Only the URL is unescaped (href="...?a=1&amp;b=2"), not the whole document.
            url = html.unescape(url)
        url = url.rstrip(".,;:!?*")
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            continue
        if host is None or (site_host is not None and host != site_host):
            continue
        key = _path_key(parts.path)
        if key is not None:
            yield key


def _path_key(path: str) -> str | None:
    """The key in ``.../browse/KEY`` or ``.../servicedesk/customer/portal/N/KEY`` (any context path)."""
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if segment == "browse":
            candidate = segments[index + 1] if index + 1 < len(segments) else ""
        elif (
            segment == "portal"
            and segments[max(index - 2, 0) : index] == ["servicedesk", "customer"]
            and index + 2 < len(segments)
            and segments[index + 1].isdigit()
        ):
            candidate = segments[index + 2]
        else:
            continue
        if KEY_PATTERN.fullmatch(candidate):
            return candidate
    return None


# --- MIME --------------------------------------------------------------------------------------
#
# A small MIME walker of our own rather than email.parser: the latter builds a Message object per
# part and per header line, which lets a 256 KiB body of tiny parts or header lines cost 50x its
# size in memory, and it recurses once per nesting level. This one works on byte slices, keeps
# only the few headers it needs, and caps depth, parts and part-header size.


class _MimeBudget:
    """Shared limits for one mail's walk: parts visited and characters of text handed out."""

    def __init__(self, chars: int) -> None:
        self.chars = chars
        self.parts = MAX_MIME_PARTS


def _text_parts(headers: dict[str, list[str]], body: bytes, budget: int) -> Iterator[tuple[bool, str]]:
    """Decoded text/plain and text/html parts, ``(is_html, text)``, at most ``budget`` characters in all.

    Only multipart containers are walked (not attached messages). A multipart whose structure
    cannot be followed (no boundary, no delimiter, nested too deep) is read as plain text, so that
    the links in a truncated or broken mail still count.
    """
    limits = _MimeBudget(budget)
    for is_html, text in _walk(headers, body, 0, limits):
        text = text[: limits.chars]
        limits.chars -= len(text)
        yield is_html, text
        if limits.chars <= 0:
            return


def _walk(
    headers: dict[str, list[str]], body: bytes, depth: int, limits: _MimeBudget
) -> Iterator[tuple[bool, str]]:
    limits.parts -= 1
    if limits.parts < 0 or limits.chars <= 0:
        return
    content_type, params = _content_type(_first(headers, "content-type"))
    if _first(headers, "content-disposition").split(";", 1)[0].strip().lower() == "attachment":
        return
    if content_type.startswith("multipart/"):
        boundary = params.get("boundary", "")
        parts = _split_multipart(body, boundary) if boundary and depth < MAX_MIME_DEPTH else None
        if parts is None:
            yield False, body.decode("utf-8", "replace")
            return
        for part in parts:
            part_headers, part_body = _split_part(part)
            yield from _walk(part_headers, part_body, depth + 1, limits)
            if limits.parts < 0 or limits.chars <= 0:
                return
    elif content_type in ("text/plain", "text/html"):
        data = _decode_transfer_encoding(body, _first(headers, "content-transfer-encoding"))
        yield content_type == "text/html", _decode_bytes(data, params.get("charset"))


def _first(headers: dict[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""


def _content_type(value: str) -> tuple[str, dict[str, str]]:
    """The lower-cased type (``text/plain`` when missing or invalid, as RFC 2045 says) and parameters."""
    main, _, rest = value.partition(";")
    content_type = main.strip().lower()
    if not _CONTENT_TYPE.fullmatch(content_type):
        content_type = "text/plain"
    params: dict[str, str] = {}
    for match in _PARAMETER.finditer(";" + rest):
        name = match["name"].lower()
        if name not in params:
            quoted = match["quoted"]
            params[name] = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else match["token"]
    return content_type, params


def _split_multipart(body: bytes, boundary: str) -> Iterator[bytes] | None:
    """The parts between boundary delimiters, or None when the body holds no delimiter at all.

    A body cut short (no close delimiter) still yields its last, partial part.
    """
    delimiters = _delimiters(body, boundary.encode("utf-8", "replace"))
    first = next(delimiters, None)
    if first is None:
        return None
    return _parts_between(body, first, delimiters)


def _delimiters(body: bytes, boundary: bytes) -> Iterator[tuple[int, int, bool]]:
    """``(start, end, is_close)`` of each delimiter line: "--boundary", at the start of a line.

    The pattern starts with the literal boundary so the regex engine can skip ahead quickly; the
    start-of-line condition is checked afterwards. The line break before a delimiter belongs to
    the delimiter (RFC 2046 §5.1.1), so ``start`` includes it.
    """
    pattern = re.compile(re.escape(b"--" + boundary) + rb"(?P<close>--)?[ \t]*(?:\r?\n|\Z)")
    position = 0
    while (match := pattern.search(body, position)) is not None:
        start = match.start()
        position = start + 1
        if start > 0 and body[start - 1] != 0x0A:
            continue
        if start > 0:
            start -= 2 if start > 1 and body[start - 2] == 0x0D else 1
        yield start, match.end(), match["close"] is not None


def _parts_between(
    body: bytes, first: tuple[int, int, bool], delimiters: Iterator[tuple[int, int, bool]]
) -> Iterator[bytes]:
    _start, part_start, is_close = first
    while not is_close:
        following = next(delimiters, None)
        if following is None:
            yield body[part_start:]
            return
        part_end, next_start, is_close = following
        yield body[part_start:part_end]
        part_start = next_start


def _split_part(part: bytes) -> tuple[dict[str, list[str]], bytes]:
    """A body part's headers (at most MAX_PART_HEADER_BYTES of them) and the bytes after them.

    As in email.feedparser, the header section ends at a blank line or at the first line that is
    neither a header nor a continuation; a part starting with a blank line has no headers.
    """
    position = 0
    header_lines: list[bytes] = []
    limit = min(len(part), MAX_PART_HEADER_BYTES)
    while position < limit:
        end_of_line = part.find(b"\n", position)
        next_position = len(part) if end_of_line < 0 else end_of_line + 1
        line = part[position:next_position].rstrip(b"\r\n")
        if not line:
            position = next_position
            break
        if not (line[:1] in (b" ", b"\t") and header_lines) and not _HEADER_LINE.match(line):
            break
        header_lines.append(line)
        position = next_position
    return _parse_headers(b"\n".join(header_lines)), part[position:]


def _decode_transfer_encoding(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "base64":
        # Drop everything outside the alphabet (line breaks, junk) and a trailing partial quantum, so
        # that a body cut off by the size limit or a corrupted one still decodes.
        alphabet_only = data.translate(None, _NON_BASE64_BYTES)
        try:
            return binascii.a2b_base64(alphabet_only[: len(alphabet_only) - len(alphabet_only) % 4])
        except binascii.Error:
            return b""
    if encoding == "quoted-printable":
        return binascii.a2b_qp(data)
    return data


# --- sites -------------------------------------------------------------------------------------


def _url_host(url: str) -> str | None:
    text = url.strip()
    if "//" not in text:
        text = "//" + text
    try:
        host = urlsplit(text).hostname
    except ValueError:
        return None
    return host if host and _HOSTNAME.fullmatch(host) else None


def _require_site_host(jira_url: str) -> str:
    host = _url_host(jira_url) if isinstance(jira_url, str) else None
    if host is None:
        raise ValueError(f"jira_url has no usable host: {jira_url!r}")
    return host
