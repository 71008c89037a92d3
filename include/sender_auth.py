"""Sender authentication for Jira mail: the receiving server's Authentication-Results, or DKIM itself.

The From header alone can be forged. Two ways to know more, chosen by the `imap_default` extras
(see `SenderAuthPolicy.from_extras`):

- ``authentication_results``: trust the verdicts that the receiving mail system wrote into
  ``Authentication-Results`` (RFC 8601) under its own authserv-id, in the topmost block of such
  headers (the ones above anything the sender wrote). Parsed by the `authres` package.
- ``dkim``: verify the message's DKIM signatures here, with dkimpy and DNS (tests inject the key
  lookup). This needs the whole message: a body hash over a prefix never matches.

Either way a mail passes only when a trusted party vouches for it; everything else is rejected with
the reason ``unauthenticated_sender``. Nothing here raises on the mail's bytes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# authres and dkimpy (which loads dnspython) are imported where each mode needs them, so that the
# parser, its command and every worker pay their memory (about 10 MiB) only when that mode is on.
log = logging.getLogger(__name__)

MODE_NONE = "none"
MODE_AUTHENTICATION_RESULTS = "authentication_results"
MODE_DKIM = "dkim"
MODES = (MODE_NONE, MODE_AUTHENTICATION_RESULTS, MODE_DKIM)

UNAUTHENTICATED_SENDER = "unauthenticated_sender"

# Jira Cloud's notification mail is signed with d=mail-us.atlassian.net (fixture 04, and the
# Authentication-Results of Gmail and Infomaniak in fixtures 04 and 06b).
DEFAULT_TRUSTED_DKIM_DOMAINS = ("mail-us.atlassian.net",)
# The whole message is fetched for DKIM; larger mail is rejected rather than held in memory.
DEFAULT_DKIM_MAX_MESSAGE_BYTES = 5 * 1024 * 1024
# More Authentication-Results than this is no receiving system's doing; the rest are not read.
MAX_AUTH_RESULTS_HEADERS = 32
MAX_DKIM_SIGNATURES = 8
# All DNS lookups for one mail's trusted signatures together: one slow key server must not hold a
# run (dkimpy waits 5 s per lookup on its own, and a mail may carry MAX_DKIM_SIGNATURES signatures).
DEFAULT_DKIM_DNS_SECONDS = 10.0

# Header fields that a receiving hop writes in transit beside its verdicts, so they may sit between
# the Authentication-Results of one receiving system: Infomaniak (fixture 04) writes dmarc, then
# its border's Received, then dkim; Gmail (fixtures 06b, 07) writes ARC-*, Received and
# Received-SPF around its own. Any other header is one the sender could have written: it ends the
# block (see authentication_results_problem).
TRACE_FIELDS = frozenset(
    {
        "received",
        "x-received",
        "received-spf",
        "return-path",
        "delivered-to",
        "x-original-to",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
    }
)
AUTHENTICATION_RESULTS = "authentication-results"
# A signature covers one instance of each of these; a replay can add a second one that the
# signature does not cover and that a reader may take instead (RFC 6376 §8.15).
SINGLE_INSTANCE_FIELDS = ("From", "Subject", "Date", "To", "Message-ID")

_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+")
# The authserv-id is the first token after optional comments (RFC 8601 §2.2): read by hand only to
# tell whether a header that authres cannot parse claims to come from the trusted id.
_LEADING_ID = re.compile(r"\s*(?:\([^()]{0,512}\)\s*)*(?P<id>[^\s;()]{1,255})")

DnsTxt = Callable[..., bytes | None]


@dataclass(frozen=True)
class SenderAuthPolicy:
    """How a mail's sender is authenticated, beyond its From header."""

    mode: str = MODE_NONE
    authserv_id: str | None = None
    # Only the topmost header with the authserv-id is read, for servers that write all their
    # verdicts in one header (Gmail, Microsoft 365, rspamd): then a header a sender writes right
    # below it cannot join the block.
    authserv_one_header: bool = False
    trusted_dkim_domains: tuple[str, ...] = DEFAULT_TRUSTED_DKIM_DOMAINS
    dkim_max_message_bytes: int = DEFAULT_DKIM_MAX_MESSAGE_BYTES
    dkim_dns_seconds: float = DEFAULT_DKIM_DNS_SECONDS
    # dkimpy's dnsfunc(name, timeout=...) -> TXT bytes or None; None means real DNS (dnspython).
    dns_txt: DnsTxt | None = None
    # What the DNS time of one mail is measured with (tests give a simulated one).
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"sender_auth must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == MODE_AUTHENTICATION_RESULTS and not self.authserv_id:
            raise ValueError(
                "sender_auth authentication_results needs the authserv_id of the receiving server"
            )
        if self.mode == MODE_DKIM and not self.trusted_dkim_domains:
            raise ValueError("sender_auth dkim needs at least one trusted_dkim_domains entry")
        if self.dkim_max_message_bytes < 1:
            raise ValueError("dkim_max_message_bytes must be positive")
        if not self.dkim_dns_seconds > 0:
            raise ValueError("dkim_dns_seconds must be a positive number of seconds")

    @property
    def enabled(self) -> bool:
        return self.mode != MODE_NONE

    @property
    def needs_whole_message(self) -> bool:
        return self.mode == MODE_DKIM

    @classmethod
    def from_extras(cls, extra: Mapping[str, Any]) -> SenderAuthPolicy:
        """The policy an IMAP connection's extras describe; ValueError names a wrong extra.

        ``sender_auth``: ``none``, ``authentication_results`` (the default when ``authserv_id`` is
        set) or ``dkim``. ``authserv_id``: the receiving server's id (the first word of its
        Authentication-Results, e.g. ``mx.google.com``). ``trusted_dkim_domains``: a JSON list or a
        comma-separated string (default ``mail-us.atlassian.net``). ``dkim_max_message_bytes``.
        ``authserv_one_header``: true when the server writes all its verdicts in one header.
        ``dkim_dns_seconds``: the most time all DNS lookups for one mail may take together.
        """
        authserv_id = _text(extra.get("authserv_id"), "authserv_id")
        mode = _text(extra.get("sender_auth"), "sender_auth")
        mode = (mode or (MODE_AUTHENTICATION_RESULTS if authserv_id else MODE_NONE)).lower()
        domains = trusted_domains(extra.get("trusted_dkim_domains"))
        max_bytes = extra.get("dkim_max_message_bytes", DEFAULT_DKIM_MAX_MESSAGE_BYTES)
        try:
            max_bytes = int(max_bytes)
        except (TypeError, ValueError):
            raise ValueError(f"dkim_max_message_bytes must be a whole number, got {max_bytes!r}") from None
        dns_seconds = _seconds(extra.get("dkim_dns_seconds", DEFAULT_DKIM_DNS_SECONDS), "dkim_dns_seconds")
        return cls(
            mode=mode,
            authserv_id=authserv_id.lower() if authserv_id else None,
            authserv_one_header=_flag(extra.get("authserv_one_header", False), "authserv_one_header"),
            trusted_dkim_domains=domains,
            dkim_max_message_bytes=max_bytes,
            dkim_dns_seconds=dns_seconds,
        )


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"the IMAP connection's extra {name} must be a string, got {type(value).__name__}")
    return value.strip() or None


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"the IMAP connection's extra {name} must be true or false, got {value!r}")


def _seconds(value: Any, name: str) -> float:
    try:
        seconds = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        seconds = None
    if seconds is None or not 0 < seconds < float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return seconds


def trusted_domains(value: Any) -> tuple[str, ...]:
    """The `trusted_dkim_domains` extra as lower-case domain names (a list or "a.com, b.com")."""
    if value is None or value == "":
        return DEFAULT_TRUSTED_DKIM_DOMAINS
    items = [part for part in value.split(",") if part.strip()] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError("trusted_dkim_domains must be a list of domain names or a comma-separated string")
    domains: list[str] = []
    for item in items:
        domain = item.strip().lower().rstrip(".") if isinstance(item, str) else ""
        if not domain.isascii() or not _DOMAIN.fullmatch(domain):
            raise ValueError(f"trusted_dkim_domains holds something that is no domain name: {item!r}")
        domains.append(domain)
    if not domains:
        raise ValueError("trusted_dkim_domains must name at least one domain")
    return tuple(domains)


def _domain_of(identity: str | None) -> str | None:
    """The domain of a header.d ("example.com") or header.i ("@example.com", "user@example.com")."""
    if not identity:
        return None
    domain = identity.strip().strip('"').rpartition("@")[2].lower().rstrip(".")
    return domain if domain.isascii() and _DOMAIN.fullmatch(domain) else None


# --- Authentication-Results -------------------------------------------------------------------


def _parse_results(value: str) -> tuple[str | None, list[Any] | None]:
    """The authserv-id a header claims (lower-cased) and its results; results None when unreadable."""
    import authres

    text = " ".join(value.split())
    try:
        header = authres.AuthenticationResultsHeader.parse_value(text)
    except Exception:  # authres raises its own SyntaxError and others on odd input
        match = _LEADING_ID.match(text)
        return (match["id"].lower() if match else None), None
    return (header.authserv_id or "").lower() or None, list(header.results)


def authentication_results_problem(
    fields: Sequence[tuple[str, str]], policy: SenderAuthPolicy, from_domain: str
) -> str | None:
    """None when the receiving server vouches for the mail, else what is missing (for the reason).

    ``fields`` are the message's header fields as (lower-case name, value), topmost first. Only
    the topmost *contiguous block* of Authentication-Results with the trusted authserv-id counts
    (RFC 8601 §5: the receiving system's own, which sit above everything the sender wrote):

    - it starts at the first header with that authserv-id (headers above it were written later,
      inside your own mail system, and do not matter);
    - it goes on across trace headers (``TRACE_FIELDS``: Received, ARC-*, ...) that receiving hops
      write between their verdicts;
    - it ends at any other header (a "gap": Subject, DKIM-Signature, X-Anything), at an
      Authentication-Results with another authserv-id, and after a header that says ``none`` (the
      server authenticated nothing, so nothing below is its verdict);
    - with ``policy.authserv_one_header``, it ends after its first header.

    Headers with the trusted id below the block are the sender's to write: they are ignored, and
    logged once per run. Within the block the topmost header that reports a method decides it
    (Infomaniak, fixture 04, splits dmarc and dkim over two headers of one block). Accepted:
    ``dkim=pass`` whose header.d (else header.i's domain) is a trusted signing domain, or
    ``dmarc=pass`` whose header.from is the From domain.
    """
    wanted = policy.authserv_id
    decided: dict[str, list[Any]] = {}
    said_none = False
    inside = ended = False
    ignored = 0
    read = 0
    for name, value in fields:
        if name != AUTHENTICATION_RESULTS:
            ended = ended or (inside and name not in TRACE_FIELDS)
            continue
        read += 1
        if read > MAX_AUTH_RESULTS_HEADERS:
            break
        claimed, results = _parse_results(value)
        if claimed != wanted:
            ended = ended or inside
            continue
        if ended:
            ignored += 1
            continue
        if results is None:
            return f"unreadable Authentication-Results from {wanted}"
        inside = True
        for method in ("dkim", "dmarc"):
            reported = [result for result in results if (result.method or "").lower() == method]
            if reported and method not in decided:
                decided[method] = reported
        if not results:
            said_none = ended = True
        ended = ended or policy.authserv_one_header
    if ignored:
        _report_ignored_once(wanted, ignored)
    if not inside:
        return f"no Authentication-Results from {wanted}"
    seen: list[str] = []
    for result in decided.get("dkim", []):
        verdict = (result.result or "").lower()
        domain = _domain_of(_property(result, "header", "d")) or _domain_of(_property(result, "header", "i"))
        if verdict == "pass" and domain in policy.trusted_dkim_domains:
            return None
        seen.append(f"dkim={verdict}" + (f" header.d={domain}" if domain else ""))
    for result in decided.get("dmarc", []):
        verdict = (result.result or "").lower()
        checked_from = _domain_of(_property(result, "header", "from"))
        # Without header.from the verdict may be about any domain, the sender's own included.
        if verdict == "pass" and checked_from == from_domain:
            return None
        checked = f"header.from={checked_from}" if checked_from else "without header.from"
        seen.append(f"dmarc={verdict} {checked}")
    if seen:
        return f"{wanted} says " + ", ".join(seen[:4])
    return f"{wanted} says " + ("none" if said_none else "neither dkim nor dmarc")


# authserv-ids whose ignored headers this process has logged. Airflow 3 runs each task instance in
# a process of its own, so once per process is once per run (and the CLI is one run).
_REPORTED_IGNORED: set[str] = set()


def _report_ignored_once(authserv_id: str | None, count: int) -> None:
    key = authserv_id or ""
    if key in _REPORTED_IGNORED:
        return
    _REPORTED_IGNORED.add(key)
    log.warning(
        "Ignored %d Authentication-Results claiming %s below the receiving server's own block: a sender "
        "can write those (logged once per run; see README, sender authentication)",
        count,
        authserv_id,
    )


def _property(result: Any, kind: str, name: str) -> str | None:
    for prop in getattr(result, "properties", None) or []:
        if (prop.type or "").lower() == kind and (prop.name or "").lower() == name:
            return prop.value
    return None


# --- DKIM -------------------------------------------------------------------------------------


def dns_txt(name: bytes, timeout: float = 5) -> bytes | None:
    """The TXT record of ``name`` from DNS (dnspython through dkimpy), as dkimpy's dnsfunc wants it."""
    from dkim import dnsplug

    return dnsplug.get_txt(name, timeout=timeout)


def _module_dns_txt(name: bytes, timeout: float = 5) -> bytes | None:
    # Looked up at call time, so that an in-process test can replace dns_txt with its own keys.
    return dns_txt(name, timeout=timeout)


def dkim_problem(message: bytes, fields: Sequence[tuple[str, str]], policy: SenderAuthPolicy) -> str | None:
    """None when a DKIM signature of a trusted domain verifies over the whole message, else why not.

    ``fields`` are the header fields as the mail parser read them (lower-case name, value).
    A mail with more than one From, Subject, Date, To or Message-ID is refused first, by the parser's
    reading and by dkimpy's: a signature covers one of each, and a replayed copy with one more on top
    would still verify while a reader takes the added one.

    Only signatures whose ``d=`` is a trusted domain are verified, so an untrusted one never costs a
    DNS lookup; the lookups of one mail share ``policy.dkim_dns_seconds`` between them. A signature
    counts only if it signs the From header and has no ``l=`` body length (with ``l=``, text appended
    after the signed length, such as more issue links, would go unverified).
    """
    import dkim

    if len(message) > policy.dkim_max_message_bytes:
        return f"message too large to verify its DKIM signature ({len(message)} bytes)"
    try:
        verifier = dkim.DKIM(message, logger=log)
        names = [name.decode("ascii", "replace").strip().lower() for name, _ in verifier.headers]
        signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    except Exception as exc:
        return f"unreadable message for DKIM ({type(exc).__name__})"
    parsed_names = [name for name, _ in fields]
    for field in SINGLE_INSTANCE_FIELDS:
        count = max(names.count(field.lower()), parsed_names.count(field.lower()))
        if count > 1:
            return f"{count} {field} headers, where a signed mail has one (a copy with one added)"
    if not signatures:
        return "no DKIM signature"
    domains = [_signing_domain(value) for value in signatures]
    trusted = [index for index, domain in enumerate(domains) if domain in policy.trusted_dkim_domains]
    if not trusted:
        others = sorted({domain or "?" for domain in domains})
        return "no DKIM signature of a trusted domain (signed by " + ", ".join(others[:3]) + ")"
    lookups = _DnsBudget(policy.dns_txt or _module_dns_txt, policy.dkim_dns_seconds, policy.clock)
    problems: list[str] = []
    for index in trusted[:MAX_DKIM_SIGNATURES]:
        if lookups.used_up:
            problems.append(_dns_time_used_up(policy))
            break
        problem = _one_signature_problem(message, index, policy, lookups)
        if problem is None:
            return None
        problems.append(problem)
    return "; ".join(problems[:3])


def _signing_domain(signature: bytes) -> str | None:
    """The d= of a DKIM-Signature value, read without any lookup; None when it has none readable."""
    from dkim.util import parse_tag_value

    try:
        tags = parse_tag_value(signature)
    except Exception:  # dkimpy's InvalidTagValueList, and whatever odd bytes provoke
        return None
    return _domain_of(_decoded(tags.get(b"d")))


class _DnsBudget:
    """dkimpy's dnsfunc over ``lookup``, giving each call only what is left of one mail's DNS time."""

    def __init__(self, lookup: DnsTxt, seconds: float, clock: Callable[[], float]) -> None:
        self._lookup = lookup
        self._clock = clock
        self._deadline = clock() + seconds

    @property
    def used_up(self) -> bool:
        return self._clock() >= self._deadline

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        left = self._deadline - self._clock()
        if left <= 0:
            # Not a DnsTimeoutError, which dkimpy would swallow into "does not verify".
            raise _DnsTimeUsedUp()
        return self._lookup(name, timeout=min(timeout, left))


class _DnsTimeUsedUp(Exception):
    """Raised in place of a lookup once a mail's DNS time is spent."""


def _dns_time_used_up(policy: SenderAuthPolicy) -> str:
    return f"DNS lookups took the whole {policy.dkim_dns_seconds:g} s allowed for one mail"


def _one_signature_problem(
    message: bytes, index: int, policy: SenderAuthPolicy, lookups: _DnsBudget
) -> str | None:
    import dkim

    # A fresh DKIM object per signature: verify() leaves state (include_headers, domain) behind.
    verifier = dkim.DKIM(message, logger=log)
    try:
        valid = verifier.verify(idx=index, dnsfunc=lookups)
    except _DnsTimeUsedUp:
        return _dns_time_used_up(policy)
    except dkim.DKIMException as exc:
        domain = _decoded(verifier.domain)
        return f"DKIM signature{f' of {domain}' if domain else ''} invalid ({_short(exc)})"
    except Exception as exc:  # DNS errors and the like: not verified
        return f"DKIM check failed ({type(exc).__name__})"
    domain = _decoded(verifier.domain).lower()
    if not valid:
        return f"DKIM signature of {domain} does not verify"
    if domain not in policy.trusted_dkim_domains:
        return f"DKIM signature of {domain}, not a trusted signing domain"
    if b"from" not in verifier.include_headers:
        return f"DKIM signature of {domain} does not sign From"
    if b"l" in verifier.signature_fields:
        return f"DKIM signature of {domain} covers only part of the body (l=)"
    return None


def _decoded(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value or ""


def _short(exc: Exception) -> str:
    # dkimpy's messages carry hashes and key bytes in parentheses: the first clause says enough.
    return " ".join(str(exc).partition("(")[0].split())[:120] or type(exc).__name__
