"""Jira's policy over a bounded mail: whom to trust, which tenant, and which issue keys the mail names.

The bytes themselves are read by include.jira_mail.mime; this module decides what they mean.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from email import _header_value_parser as _address_parser
from email.errors import ObsoleteHeaderDefect
from typing import Any
from urllib.parse import urlsplit

from include.jira_mail.mime import (
    clean_text,
    first_text,
    header_fields,
    parse_headers,
    split_header_block,
    text_parts,
)
from include.jira_rules import ISSUE_NUMBER_PATTERN, PROJECT_KEY_PATTERN
from include.sender_auth import (
    UNAUTHENTICATED_SENDER,
    SenderAuthPolicy,
    authentication_results_problem,
    dkim_problem,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_KEYS = 20

MAX_SUBJECT_CHARS = 512
# RFC 5322's line limit bounds a Message-ID; the ledger keeps it to the same bound.
MAX_MESSAGE_ID_CHARS = 998
# RFC 5322's line limit; a From longer than that is not a notification sender worth parsing.
MAX_FROM_CHARS = 998
MAX_ADDRESS_CHARS = 254
# The "X did Y" line Jira writes sits near the top of the body (after a style block in HTML);
# looking further only finds user text.
EVENT_SCAN_CHARS = 32 * 1024
MAX_URL_CHARS = 2048

_PROJECT = PROJECT_KEY_PATTERN
_NUMBER = ISSUE_NUMBER_PATTERN
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
_SUBJECT_MENTION_EVENT = "mentioned"
# Text a reader does not see as this mail's own: HTML comments (an unterminated one runs to the
# end), quoted replies in HTML (<blockquote>) and in plain text (lines starting with ">").
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_BLOCKQUOTE_TAG = re.compile(r"<(?P<close>/?)blockquote\b[^<>]{0,1024}>", re.IGNORECASE)
_QUOTED_LINE = re.compile(r"^[ \t]*>[^\n]*$", re.MULTILINE)

HEADERS_TOO_LARGE = "headers_too_large"


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
    sender_auth: SenderAuthPolicy | None = None,
) -> ParsedMail:
    """Parse a whole message, or its headers followed by a body prefix, without ever raising on its bytes.

    At most ``max_header_bytes`` of header and ``max_body_bytes`` of body are looked at, however long
    ``raw`` is. Keys come only from structured places: the subject patterns Jira uses, and
    ``/browse/KEY`` or Service Management portal links on the ``jira_url`` host (any host when
    ``jira_url`` is None). Mail from an untrusted sender, for another tenant, or naming no key is
    rejected with a reason and no keys. Invalid arguments (not input bytes) raise TypeError/ValueError.
    Quoted replies (``>`` lines, ``<blockquote>``) and HTML comments are not read for keys.

    A From is accepted only when it parses strictly (RFC 5322) to exactly one mailbox. With an
    enabled ``sender_auth`` policy the sender must also be vouched for (include.sender_auth):
    by the receiving server's Authentication-Results, or by a DKIM signature verified here, in which
    case ``raw`` must be the whole message (a body prefix never verifies).

    Reasons: ``empty_message``, ``no_headers``, ``headers_too_large``, ``no_from``, ``multiple_from``,
    ``invalid_from``, ``untrusted_sender: <address>``, ``unauthenticated_sender: <what is missing>``,
    ``foreign_tenant: <host>``, ``no_key``, and ``parse_error`` (an internal failure, logged). More
    than ``max_keys`` keys is not a rejection: the first ``max_keys`` are kept and ``keys_truncated``
    is set.
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
        return _parse(
            view, tuple(trusted_senders), site_host, max_body_bytes, max_keys, max_header_bytes, sender_auth
        )
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
    sender_auth: SenderAuthPolicy | None,
) -> ParsedMail:
    if len(view) == 0:
        return _rejected("empty_message")
    split = split_header_block(view, max_header_bytes)
    if split is None:
        return _rejected(HEADERS_TOO_LARGE)
    header_block, body_start = split

    headers = parse_headers(header_block)
    if not headers:
        return _rejected("no_headers")
    subject = first_text(headers, "subject", MAX_SUBJECT_CHARS, decode_words=True)
    message_id = first_text(headers, "message-id", MAX_MESSAGE_ID_CHARS, decode_words=False)
    context = {"subject": subject, "message_id": message_id}

    sender, from_problem = _sender(headers.get("from", []))
    if sender is None:
        return _rejected(from_problem, **context)
    context["sender"] = sender
    if not is_trusted_sender(sender, trusted_senders):
        return _rejected(f"untrusted_sender: {sender}", **context)
    if sender_auth is not None and sender_auth.enabled:
        problem = _authentication_problem(view, header_block, sender, sender_auth)
        if problem is not None:
            return _rejected(f"{UNAUTHENTICATED_SENDER}: {problem}", **context)

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


# --- trust and tenant ---------------------------------------------------------------------------


def _sender(from_values: list[str]) -> tuple[str | None, str]:
    """The single From address, lower-cased, or None and why not.

    Parsed with the email package's strict RFC 5322 parser. The address is judged, never the
    display name: any defect but an obsolete form (a source route) outside the display name refuses
    the From (a bare quoted string, an unclosed comment, "x@y <z@w>" is not one mailbox, however a
    lenient reader would guess), while a display name in an unknown charset, with undecodable bytes
    or a broken encoded word leaves the address as good as it was.
    """
    if not from_values:
        return None, "no_from"
    if len(from_values) > 1:
        return None, "multiple_from"
    value = from_values[0]
    if len(value) > MAX_FROM_CHARS:
        return None, "invalid_from"
    # The display name is never looked at: '"jira@acme.atlassian.net" <evil@x.com>' is evil@x.com.
    # The parse tree comes from the parser behind email.headerregistry, which has no public form of
    # it: the registry's header object merges the display name's defects with the address's, and
    # raises on the lone surrogate a UTF-7 display name decodes to.
    try:
        address_list, rest = _address_parser.get_address_list(value)
        defects = _defects_outside_display_name(address_list)
        addresses = list(address_list.addresses)
        mailboxes = list(address_list.all_mailboxes)
    except Exception:  # RecursionError on "((((((...", and whatever else odd bytes provoke
        return None, "invalid_from"
    if rest or any(not isinstance(defect, ObsoleteHeaderDefect) for defect in defects):
        return None, "invalid_from"
    if len(mailboxes) > 1:
        return None, "multiple_from"
    # A group ("Team: a@b;") is not one mailbox, even with one member.
    if len(addresses) != 1 or len(mailboxes) != 1 or addresses[0][0].token_type != "mailbox":
        return None, "invalid_from"
    normalised = _normalise_address(mailboxes[0].addr_spec)
    if normalised is None:
        return None, "invalid_from"
    return normalised, ""


def _defects_outside_display_name(token: Any) -> list[Any]:
    """The defects of a parse tree, leaving out those inside display names (never trusted anyway)."""
    defects: list[Any] = []
    pending = [token]
    while pending:  # by hand, not recursively: a deeply nested comment must not exhaust the stack
        current = pending.pop()
        if getattr(current, "token_type", None) == "display-name":
            continue
        defects.extend(getattr(current, "defects", ()))
        if isinstance(current, list):
            pending.extend(current)
    return defects


def _authentication_problem(
    view: memoryview, header_block: bytes, sender: str, policy: SenderAuthPolicy
) -> str | None:
    # In order, across names: which Authentication-Results count depends on what sits between them.
    fields = header_fields(header_block)
    if policy.needs_whole_message:
        return dkim_problem(bytes(view[: policy.dkim_max_message_bytes + 1]), fields, policy)
    from_domain = sender.rpartition("@")[2]
    return authentication_results_problem(fields, policy, from_domain)


def _normalise_address(address: str) -> str | None:
    candidate = address.strip() if isinstance(address, str) else ""
    if not candidate.isascii() or len(candidate) > MAX_ADDRESS_CHARS:
        return None
    candidate = candidate.lower()
    return candidate if _ADDRESS.fullmatch(candidate) else None


def _read_meta(values: list[str], site_host: str | None) -> tuple[str | None, str | None]:
    """The event_type of X-Atl-Mail-Meta, and the tenant host when it is not the configured site."""
    event: str | None = None
    foreign: str | None = None
    for value in values:
        # Every pair is read, not a dict of them: with two tenant entries, any one naming another
        # site rejects the mail (a dict would keep only the last).
        for match in _META_PAIR.finditer(value):
            name, pair_value = match["name"].lower(), match["value"]
            if name == "event_type" and event is None and pair_value:
                event = clean_text(pair_value)[:64] or None
            elif name == "tenant" and site_host is not None and foreign is None:
                tenant_host = _url_host(pair_value)
                if tenant_host != site_host:
                    foreign = tenant_host or "invalid"
    return event, foreign


# --- keys and events -----------------------------------------------------------------------------


def _subject_key(subject: str) -> tuple[str | None, str | None]:
    """The key a Jira subject names, and the event its "[Commented]"-style tag or wording tells."""
    match = _BRACKETED_SUBJECT.match(subject)
    if match is not None:
        tag = match["tag"]
        return match["key"], (clean_text(tag) or None) if tag else None
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
    for is_html, text in text_parts(headers, body, budget):
        text = _own_text(text, is_html)
        if event is None:
            event = _body_event(text)
        for key in _link_keys(text, site_host, is_html):
            keys.add(key)
            if keys.truncated:
                return event
    return event


def _own_text(text: str, is_html: bool) -> str:
    """The text without what the mail quotes or hides: HTML comments and blockquotes, "> " lines."""
    if not is_html:
        return _QUOTED_LINE.sub("", text) if ">" in text else text
    if "<!--" in text:
        text = _HTML_COMMENT.sub(" ", text)
    if _BLOCKQUOTE_TAG.search(text) is None:
        return text
    pieces: list[str] = []
    depth = 0
    position = 0
    for match in _BLOCKQUOTE_TAG.finditer(text):
        if depth == 0:
            pieces.append(text[position : match.start()])
        depth = max(depth - 1, 0) if match["close"] else depth + 1
        position = match.end()
    if depth == 0:  # an unclosed blockquote hides the rest
        pieces.append(text[position:])
    return " ".join(pieces)


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
        # The value is not shown: a credential typed into the host field must not reach a log.
        raise ValueError(
            "jira_url has no usable host name (the value is not shown, in case it holds a secret)"
        )
    return host
