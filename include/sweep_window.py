"""The jira_sweep window: its data interval, the JQL finding tickets updated in it, and param checks."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from include.jira_rules import is_project_key

logger = logging.getLogger(__name__)

# Jira search is eventually consistent: an issue updated just before a run's window closed may be
# missing from that run's search, so each run also looks back over the end of the previous window.
DEFAULT_LOOKBACK_MINUTES = 5
MAX_LOOKBACK_MINUTES = 24 * 60
# Windows must lie inside these: no Jira issue was updated before 1970, and near year 1 or 9999 the
# lookback and the account-zone JQL bounds would step outside what datetime can hold.
EARLIEST_SWEEP_START = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_SWEEP_END = datetime(9000, 1, 1, tzinfo=UTC)
MAX_PROJECTS = 100
MAX_JQL_FILTER_LENGTH = 1000

_MINUTE = timedelta(minutes=1)
_LOGICAL_BINARY = frozenset({"and", "or", "&", "&&", "|", "||"})
_LOGICAL_ANY = _LOGICAL_BINARY | {"not", "!"}
# JQL's operator characters: they end an unquoted word, so `a=b||` ends with the operator `||`.
_OPERATOR_CHARS = frozenset("=!<>~&|,")
# Bidi overrides/isolates make the text shown in a trigger form differ from what Jira runs.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class SweepWindow:
    """One sweep: tickets updated in [start, end) UTC, searched from ``start - lookback``."""

    start: datetime
    end: datetime
    lookback: timedelta

    def __post_init__(self) -> None:
        for label, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is None or value.utcoffset() != timedelta(0):
                raise ValueError(f"SweepWindow.{label} must be an aware UTC datetime, got {value!r}")
        if self.end <= self.start:
            raise ValueError(
                f"SweepWindow end {self.end.isoformat()} is not after start {self.start.isoformat()}"
            )
        if not timedelta(0) <= self.lookback <= timedelta(minutes=MAX_LOOKBACK_MINUTES):
            raise ValueError(
                f"SweepWindow lookback must be 0..{MAX_LOOKBACK_MINUTES} minutes, got {self.lookback}"
            )

    @property
    def query_start(self) -> datetime:
        return self.start - self.lookback


def _as_plain_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # "0001-01-01T00:00:00+01:00" is before year 1 in UTC
        raise ValueError(f"{name} {value.isoformat()} is outside the dates a sweep can cover") from None
    # Rebuilt so that pendulum.DateTime (Airflow's data interval type) becomes a plain datetime.
    return datetime(
        utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, tzinfo=UTC
    )


def make_window(
    start: datetime, end: datetime, *, lookback_minutes: int = DEFAULT_LOOKBACK_MINUTES
) -> SweepWindow:
    """Build the window for a data interval [start, end); raises ValueError on a bad interval or lookback."""
    start_utc = _as_plain_utc(start, "start")
    end_utc = _as_plain_utc(end, "end")
    if end_utc <= start_utc:
        raise ValueError(f"end {end_utc.isoformat()} must be after start {start_utc.isoformat()}")
    if start_utc < EARLIEST_SWEEP_START or end_utc > LATEST_SWEEP_END:
        raise ValueError(
            f"the window {start_utc.isoformat()} → {end_utc.isoformat()} must lie between "
            f"{EARLIEST_SWEEP_START.isoformat()} and {LATEST_SWEEP_END.isoformat()}"
        )
    if isinstance(lookback_minutes, bool) or not isinstance(lookback_minutes, int):
        raise ValueError(f"lookback_minutes must be an integer, got {lookback_minutes!r}")
    if not 0 <= lookback_minutes <= MAX_LOOKBACK_MINUTES:
        raise ValueError(f"lookback_minutes must be 0..{MAX_LOOKBACK_MINUTES}, got {lookback_minutes}")
    return SweepWindow(start=start_utc, end=end_utc, lookback=timedelta(minutes=lookback_minutes))


def parse_iso_instant(text: str, *, name: str) -> datetime:
    """Parse an ISO 8601 instant that carries an offset or Z into an aware UTC datetime."""
    expected = (
        f"{name} must be an ISO 8601 date-time with an explicit offset or Z (e.g. 2026-11-27T10:00:00Z)"
    )
    if not isinstance(text, str):
        raise ValueError(f"{expected}, got {type(text).__name__}")
    shown = text if len(text) <= 64 else text[:61] + "..."
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{expected}, got {shown!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{expected}, got {shown!r} which has no offset")
    return _as_plain_utc(parsed, name)


def _account_zone(account_tz: str) -> ZoneInfo:
    if not isinstance(account_tz, str) or not account_tz.strip():
        raise ValueError(f"account time zone must be an IANA zone name, got {account_tz!r}")
    try:
        return ZoneInfo(account_tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown account time zone {account_tz!r} (expected an IANA name)") from None


def _jira_reading(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant Jira gives a zone-less local wall time.

    Jira (Java's ZonedDateTime.ofLocal) moves a wall time in a DST gap forward by the gap length and
    gives an ambiguous one the earlier offset; PEP 495's fold=0 resolves both cases the same way.
    """
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _format_jql_datetime(wall: datetime) -> str:
    return f'"{wall.year:04d}-{wall.month:02d}-{wall.day:02d} {wall.hour:02d}:{wall.minute:02d}"'


def _existing_wall(wall: datetime, zone: ZoneInfo) -> datetime:
    """A wall time in a DST gap, replaced by the real wall time Jira reads it as."""
    real = _jira_reading(wall, zone).astimezone(zone).replace(tzinfo=None)
    if real != wall and real.second == 0 and real.microsecond == 0:
        return real
    return wall


def _minute_at_or_before(instant: datetime, zone: ZoneInfo) -> datetime:
    """The latest wall minute whose Jira reading is at or before `instant`."""
    low = instant.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
    while _jira_reading(low, zone) > instant:  # only for historic offsets that are not whole minutes
        low -= _MINUTE
    # In a fold's second pass the floor reads a DST shift early; the fold's last first-pass minute is tighter.
    while _jira_reading(low + _MINUTE, zone) <= instant:
        low += _MINUTE
    return low


def jql_lower_bound(instant: datetime, account_tz: str) -> tuple[str, datetime]:
    """The JQL literal L for ``updated >= L`` that loses nothing at or after `instant`, and the instant Jira
    reads L as (at or before `instant`, by less than a minute except in a DST fold)."""
    zone = _account_zone(account_tz)
    low = _existing_wall(_minute_at_or_before(instant, zone), zone)
    return _format_jql_datetime(low), _jira_reading(low, zone)


def jql_datetime_bounds(window: SweepWindow, account_tz: str) -> tuple[str, str]:
    """The JQL literals LOW, HIGH for ``updated >= LOW AND updated < HIGH`` covering [query_start, end).

    Jira reads them in the account's zone to the minute. LOW is the latest minute whose reading is at or
    before query_start and HIGH the earliest whose reading is at or after end, so [LOW, HIGH) is the
    smallest minute interval Jira can express that contains the window. The instants of a DST fold's
    second pass cannot be named by a zone-less literal; a bound there widens to the fold's edge.
    """
    zone = _account_zone(account_tz)
    query_start = window.query_start
    end = window.end

    low = _minute_at_or_before(query_start, zone)

    end_wall = end.astimezone(zone).replace(tzinfo=None)
    high = end_wall.replace(second=0, microsecond=0)
    if high != end_wall:
        high += _MINUTE
    # In a fold's second pass the ceiling reads a DST shift early (before end): move past the fold.
    while _jira_reading(high, zone) < end:
        high += _MINUTE
    low, high = _existing_wall(low, zone), _existing_wall(high, zone)

    low_reading, high_reading = _jira_reading(low, zone), _jira_reading(high, zone)
    if low_reading < query_start - _MINUTE or high_reading > end + _MINUTE:
        logger.info(
            "JQL bounds in %s widened by a DST fold: they read as [%s, %s) for the window [%s, %s)",
            account_tz,
            low_reading.isoformat(),
            high_reading.isoformat(),
            query_start.isoformat(),
            end.isoformat(),
        )
    return _format_jql_datetime(low), _format_jql_datetime(high)


def _jql_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def validate_projects(projects: Iterable[str] | str | None) -> list[str]:
    """Check project keys: upper-case Jira keys of 2..10 characters, de-duplicated in order, at most 100.

    A single string is read as a comma-separated list (as typed into a trigger form). Lower-case keys are
    rejected rather than upper-cased, so that a typo is reported instead of silently searched.
    """
    if projects is None:
        return []
    items = projects.split(",") if isinstance(projects, str) else list(projects)
    keys: list[str] = []
    for position, item in enumerate(items, start=1):
        if not isinstance(item, str):
            raise ValueError(f"projects[{position}] must be a string project key, got {type(item).__name__}")
        key = item.strip()
        if isinstance(projects, str) and not key:
            continue
        if not is_project_key(key):
            hint = f" (project keys are upper case: {key.upper()!r}?)" if key.upper() != key else ""
            raise ValueError(
                f"projects[{position}] {key[:40]!r} is not a Jira project key: expected 2-10 characters of "
                f"A-Z, 0-9 and _, starting with a letter{hint}"
            )
        if key not in keys:
            keys.append(key)
    if len(keys) > MAX_PROJECTS:
        raise ValueError(f"projects: at most {MAX_PROJECTS} project keys, got {len(keys)}")
    return keys


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "string", "op", "(" or ")"
    text: str
    position: int


def _tokenize_jql(text: str) -> list[_Token]:
    """Split JQL into words, quoted strings, operators and parentheses, honouring quotes and escapes."""
    tokens: list[_Token] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char.isspace():
            index += 1
        elif char in "\"'":
            end = index + 1
            while end < len(text) and text[end] != char:
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                raise ValueError(f"jql_filter: unterminated {char} quote opened at position {index + 1}")
            tokens.append(_Token("string", text[index : end + 1], index))
            index = end + 1
        elif char in "()":
            tokens.append(_Token(char, char, index))
            index += 1
        elif char == ";":
            raise ValueError(f"jql_filter: ';' at position {index + 1} is not allowed outside quotes")
        elif char in _OPERATOR_CHARS:
            end = index
            while end < len(text) and text[end] in _OPERATOR_CHARS:
                end += 1
            tokens.append(_Token("op", text[index:end], index))
            index = end
        else:
            end = index
            while end < len(text) and not (
                text[end].isspace() or text[end] in "\"'();" or text[end] in _OPERATOR_CHARS
            ):
                if text[end] == "\\":
                    if end + 1 >= len(text):
                        raise ValueError(f"jql_filter: dangling backslash at position {end + 1}")
                    end += 1
                end += 1
            tokens.append(_Token("word", text[index:end], index))
            index = end
    return tokens


def validate_jql_filter(text: str | None) -> str | None:
    """Check an extra JQL condition so that, wrapped in parentheses, it cannot escape the sweep's AND.

    Returns the stripped filter, or None when there is none. Raises ValueError saying what is wrong and
    where (1-based character position).
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"jql_filter must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        return None
    if len(stripped) > MAX_JQL_FILTER_LENGTH:
        raise ValueError(
            f"jql_filter is {len(stripped)} characters long; the limit is {MAX_JQL_FILTER_LENGTH}"
        )
    for position, char in enumerate(stripped, start=1):
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS:
            raise ValueError(
                f"jql_filter: control character U+{ord(char):04X} at position {position} (use one line)"
            )

    tokens = _tokenize_jql(stripped)
    depth = 0
    for index, token in enumerate(tokens):
        previous = tokens[index - 1] if index else None
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        lowered = token.text.lower() if token.kind in ("word", "op") else ""
        where = f"at position {token.position + 1}"
        if token.kind == "(":
            depth += 1
        elif token.kind == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"jql_filter: ')' {where} closes a parenthesis that was never opened")
        if lowered == "order" and following is not None and following.text.lower() == "by":
            raise ValueError(f"jql_filter: ORDER BY {where} is not allowed; the sweep sets the order")
        if lowered in _LOGICAL_BINARY and (previous is None or previous.kind == "("):
            raise ValueError(f"jql_filter: {token.text!r} {where} has no condition before it")
        if lowered in _LOGICAL_ANY and (following is None or following.kind == ")"):
            raise ValueError(f"jql_filter: {token.text!r} {where} has no condition after it")
    if depth > 0:
        raise ValueError(f"jql_filter: {depth} parenthesis(es) opened but never closed")
    return stripped


def build_sweep_jql(
    window: SweepWindow,
    account_tz: str,
    *,
    projects: Iterable[str] | str | None = (),
    jql_filter: str | None = None,
) -> str:
    """The bounded JQL for one sweep, ordered so that paging is stable."""
    low, high = jql_datetime_bounds(window, account_tz)
    clauses: list[str] = []
    keys = validate_projects(projects)
    if keys:
        clauses.append(f"project in ({', '.join(_jql_quote(key) for key in keys)})")
    clauses.append(f"updated >= {low} AND updated < {high}")
    extra = validate_jql_filter(jql_filter)
    if extra is not None:
        clauses.append(f"({extra})")
    return " AND ".join(clauses) + " ORDER BY updated ASC, key ASC"


class WindowTooDense(ValueError):
    """Even the first minute of a window holds more changed tickets than one run may take."""


def _minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def furthest_fitting_end(
    start: datetime, end: datetime, list_keys: Callable[[datetime], list[str] | None]
) -> tuple[datetime, list[str]]:
    """The latest end E <= `end` whose window [start, E) fits in one run, with that window's keys.

    `list_keys(E)` lists the changed keys of [start, E), or gives None when there are more than a run
    may take. E is `end` when the whole window fits; otherwise it is found by bisection on whole
    minutes (JQL's precision), oldest first, so a large gap is swept as consecutive sub-windows over
    several runs. Costs one listing of `end`, plus about log2(minutes in the window) more when it
    does not fit. Raises WindowTooDense when even the first minute does not fit.
    """
    keys = list_keys(end)
    if keys is not None:
        return end, keys
    fitting, fitting_keys = start, []
    too_large = end
    while True:
        middle = _minute_floor(fitting + (too_large - fitting) / 2)
        if middle <= fitting:
            middle = _minute_floor(fitting) + _MINUTE
        if middle >= too_large:
            break
        keys = list_keys(middle)
        if keys is None:
            too_large = middle
        else:
            fitting, fitting_keys = middle, keys
    if fitting == start:
        raise WindowTooDense(
            f"more tickets changed between {start.isoformat()} and {too_large.isoformat()} than one run "
            "may take, and JQL cannot split a minute"
        )
    return fitting, fitting_keys
