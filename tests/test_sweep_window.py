"""Tests for the sweep window and its JQL: checked against an independent model of how Jira reads dates."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pendulum
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.sweep_window import (
    DEFAULT_LOOKBACK_MINUTES,
    SweepWindow,
    WindowTooDense,
    build_sweep_jql,
    furthest_fitting_end,
    jql_datetime_bounds,
    make_window,
    parse_iso_instant,
    validate_jql_filter,
    validate_projects,
)

MINUTE = timedelta(minutes=1)
MICROSECOND = timedelta(microseconds=1)
TEN_AM = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
TEN_FIFTEEN = datetime(2026, 11, 27, 10, 15, tzinfo=UTC)

# The zones the brief names, plus ones with unusual DST: Lord Howe moves 30 minutes, Troll 2 hours, and
# Apia skipped a whole day in December 2011. Kathmandu moved from +05:30 to +05:45 in 1986.
ZONES = [
    "UTC",
    "Australia/Sydney",
    "America/New_York",
    "Asia/Kathmandu",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "Australia/Lord_Howe",
    "Antarctica/Troll",
    "Pacific/Apia",
    "America/St_Johns",
    "Europe/London",
]
# Before 1980 some of these zones still had local mean time offsets that are not whole minutes.
EARLIEST = datetime(1980, 1, 1, tzinfo=UTC)
LATEST = datetime(2037, 12, 31, tzinfo=UTC)

# ---------------------------------------------------------------------------------------------------
# An independent model of Jira: how it reads a zone-less JQL datetime, and what a bounded search matches.
# ---------------------------------------------------------------------------------------------------

JQL_LITERAL = re.compile(r'"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2})"')


def local_wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def offsets_near(wall: datetime, zone: ZoneInfo) -> set[timedelta]:
    """Every UTC offset the zone uses within two days of a wall time (offset periods last months)."""
    around = wall.replace(tzinfo=UTC)
    return {(around + timedelta(hours=3 * step)).astimezone(zone).utcoffset() for step in range(-16, 17)}


def jira_reads(literal: str, zone_name: str) -> datetime:
    """The instant Jira gives a JQL datetime literal, from Jira's documented rules.

    A wall time that exactly one instant has is that instant. One that two instants have (a DST fold)
    gets the earlier offset, i.e. the earlier instant. One that no instant has (a DST gap) is moved
    forward by the gap's length and read with the offset after the gap.
    """
    match = JQL_LITERAL.fullmatch(literal)
    assert match, f"not a 'yyyy-MM-dd HH:mm' JQL literal: {literal}"
    wall = datetime(*(int(part) for part in match.groups()))
    zone = ZoneInfo(zone_name)
    offsets = offsets_near(wall, zone)
    instants = sorted(
        (wall - offset).replace(tzinfo=UTC)
        for offset in offsets
        if local_wall((wall - offset).replace(tzinfo=UTC), zone) == wall
    )
    if instants:
        return instants[0]
    before, after = min(offsets), max(offsets)
    shifted = wall + (after - before)
    instant = (shifted - after).replace(tzinfo=UTC)
    assert local_wall(instant, zone) == shifted, f"{literal} in {zone_name}: gap model does not hold"
    return instant


def jira_matches(bounds: tuple[str, str], zone_name: str, updated: datetime) -> bool:
    """Whether `updated >= LOW AND updated < HIGH` matches an issue updated at this instant."""
    low, high = (jira_reads(literal, zone_name) for literal in bounds)
    exact = low <= updated < high
    # Whether Jira compares the field exactly or cut to the minute must not matter for our bounds.
    truncated = low <= updated.replace(second=0, microsecond=0) < high
    assert exact == truncated, f"bounds {bounds} are not minute-aligned instants"
    return exact


def nameable(instant: datetime, zone_name: str) -> bool:
    """Whether some JQL literal reads as exactly this instant (not so inside a DST fold's second pass)."""
    wall = local_wall(instant, ZoneInfo(zone_name))
    return jira_reads(f'"{wall:%Y-%m-%d %H:%M}"', zone_name) == instant


def floor_minute(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)


def ceil_minute(instant: datetime) -> datetime:
    floored = floor_minute(instant)
    return floored if floored == instant else floored + MINUTE


@functools.cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """The instants (to the minute) at which the zone's UTC offset changes between 1980 and 2037."""
    zone = ZoneInfo(zone_name)
    found = []
    probe = EARLIEST
    while probe < LATEST:
        following = probe + timedelta(days=7)
        if probe.astimezone(zone).utcoffset() != following.astimezone(zone).utcoffset():
            low, high = probe, following
            while high - low > MINUTE:
                middle = floor_minute(low + (high - low) / 2)
                if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high)
        probe = following
    return tuple(found)


# ---------------------------------------------------------------------------------------------------
# Hypothesis strategies
# ---------------------------------------------------------------------------------------------------

window_lengths = st.one_of(
    st.timedeltas(min_value=MINUTE, max_value=timedelta(hours=3)),
    st.timedeltas(min_value=MINUTE, max_value=timedelta(days=4)),
)


@st.composite
def zone_and_start(draw: st.DrawFn, length: timedelta) -> tuple[str, datetime]:
    """A zone and a window start, often placed so the window straddles one of the zone's DST changes."""
    zone_name = draw(st.sampled_from(ZONES))
    changes = transitions(zone_name)
    if changes and draw(st.booleans()):
        change = draw(st.sampled_from(changes))
        start = change - draw(st.timedeltas(min_value=timedelta(0), max_value=length + timedelta(hours=3)))
    else:
        start = draw(st.datetimes(min_value=datetime(1981, 1, 1), max_value=datetime(2037, 1, 1))).replace(
            tzinfo=UTC
        )
    return zone_name, start


@st.composite
def sweep_cases(draw: st.DrawFn) -> tuple[str, SweepWindow, list[datetime]]:
    length = draw(window_lengths)
    lookback = timedelta(
        minutes=draw(st.one_of(st.sampled_from([0, DEFAULT_LOOKBACK_MINUTES]), st.integers(0, 1440)))
    )
    zone_name, start = draw(zone_and_start(length))
    changes = transitions(zone_name)
    # Put the search's first or last instant right at a DST change, where rounding is hardest.
    edge = draw(st.sampled_from(["any", "query_start", "end"]))
    if changes and edge != "any":
        near_change = draw(st.sampled_from(changes)) + draw(
            st.timedeltas(min_value=-timedelta(hours=2, minutes=30), max_value=timedelta(hours=2, minutes=30))
        )
        start = near_change + lookback if edge == "query_start" else near_change - length
    window = make_window(start, start + length, lookback_minutes=lookback // MINUTE)
    earliest = window.query_start - timedelta(hours=3)
    span = window.end + timedelta(hours=3) - earliest
    offsets = draw(st.lists(st.timedeltas(min_value=timedelta(0), max_value=span), max_size=40))
    return zone_name, window, [earliest + offset for offset in offsets]


def edge_instants(window: SweepWindow) -> list[datetime]:
    return [
        window.start,
        window.start + MICROSECOND,
        window.end - MICROSECOND,
        window.end,
        window.query_start,
        window.query_start - MICROSECOND,
        window.query_start - MINUTE,
        window.end + MINUTE - MICROSECOND,
        window.end + MINUTE,
    ]


# ---------------------------------------------------------------------------------------------------
# The independent Jira model, checked against facts worked out by hand
# ---------------------------------------------------------------------------------------------------


def test_reference_jira_reader_follows_the_documented_gap_and_fold_rules() -> None:
    # New York 2026: EST (-5) until 2026-03-08 07:00Z, EDT (-4) until 2026-11-01 06:00Z.
    assert jira_reads('"2026-03-08 01:59"', "America/New_York") == datetime(2026, 3, 8, 6, 59, tzinfo=UTC)
    # 02:30 does not exist that day: moved forward an hour to 03:30 EDT.
    assert jira_reads('"2026-03-08 02:30"', "America/New_York") == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    assert jira_reads('"2026-03-08 03:30"', "America/New_York") == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    # 01:30 happens twice on 2026-11-01: the earlier offset (EDT) wins.
    assert jira_reads('"2026-11-01 01:30"', "America/New_York") == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert jira_reads('"2026-11-01 02:00"', "America/New_York") == datetime(2026, 11, 1, 7, 0, tzinfo=UTC)
    assert jira_reads('"2026-05-01 16:00"', "Asia/Kathmandu") == datetime(2026, 5, 1, 10, 15, tzinfo=UTC)
    assert not nameable(datetime(2026, 11, 1, 6, 30, tzinfo=UTC), "America/New_York")
    assert nameable(datetime(2026, 11, 1, 5, 30, tzinfo=UTC), "America/New_York")


def test_transition_finder_sees_the_new_york_2026_changes() -> None:
    changes = set(transitions("America/New_York"))
    assert datetime(2026, 3, 8, 7, 0, tzinfo=UTC) in changes
    assert datetime(2026, 11, 1, 6, 0, tzinfo=UTC) in changes
    assert transitions("Asia/Kolkata") == ()


# ---------------------------------------------------------------------------------------------------
# Properties of the JQL bounds
# ---------------------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sweep_cases())
def test_jql_bounds_match_every_update_in_the_window_and_nothing_beyond_the_lookback(
    case: tuple[str, SweepWindow, list[datetime]],
) -> None:
    zone_name, window, random_instants = case
    bounds = jql_datetime_bounds(window, zone_name)
    low, high = (jira_reads(literal, zone_name) for literal in bounds)

    for instant in random_instants + edge_instants(window):
        matched = jira_matches(bounds, zone_name, instant)
        # (a) every update in the run's interval, and in its lookback, is found.
        if window.query_start <= instant < window.end:
            assert matched, f"{instant} in [{window.query_start}, {window.end}) missed by {bounds}"
        # (b) outside a DST fold, nothing a whole minute or more beyond the window is found.
        if nameable(floor_minute(window.query_start), zone_name) and instant <= window.query_start - MINUTE:
            assert not matched, f"{instant} before the lookback matched by {bounds}"
        if nameable(ceil_minute(window.end), zone_name) and instant >= window.end + MINUTE:
            assert not matched, f"{instant} after the window matched by {bounds}"

    # (b) strengthened: no literal could tighten either bound, so a fold widens them only as far as it
    # must (to the fold's edge, at most the DST shift plus a minute).
    assert low <= window.query_start and high >= window.end
    for tighter in range(1, int((window.query_start - low) / MINUTE) + 1):
        assert not nameable(low + tighter * MINUTE, zone_name), f"LOW {bounds[0]} could be later"
    for tighter in range(1, int((high - window.end) / MINUTE) + 1):
        assert not nameable(high - tighter * MINUTE, zone_name), f"HIGH {bounds[1]} could be earlier"
    assert window.query_start - low < timedelta(hours=2, minutes=1)
    assert high - window.end < timedelta(hours=2, minutes=1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first_length=window_lengths,
    second_length=window_lengths,
    start=st.data(),
    fractions=st.lists(st.floats(min_value=0, max_value=1, exclude_max=True), max_size=30),
)
def test_consecutive_scheduled_windows_without_lookback_leave_no_gap(
    first_length: timedelta,
    second_length: timedelta,
    start: st.DataObject,
    fractions: list[float],
) -> None:
    zone_name, first_start = start.draw(zone_and_start(first_length))
    boundary = first_start + first_length
    last_end = boundary + second_length
    first = make_window(first_start, boundary, lookback_minutes=0)
    second = make_window(boundary, last_end, lookback_minutes=0)
    first_bounds = jql_datetime_bounds(first, zone_name)
    second_bounds = jql_datetime_bounds(second, zone_name)

    span = last_end - first_start
    instants = [first_start + span * fraction for fraction in fractions]
    instants += [
        first_start,
        boundary - MICROSECOND,
        boundary,
        boundary + MICROSECOND,
        last_end - MICROSECOND,
    ]
    for instant in instants:
        if not first_start <= instant < last_end:
            continue
        assert jira_matches(first_bounds, zone_name, instant) or jira_matches(
            second_bounds, zone_name, instant
        ), f"{instant} falls between {first_bounds} and {second_bounds} in {zone_name}"
    # The JQL intervals themselves overlap or touch: the first run's HIGH is not before the second's LOW.
    assert jira_reads(first_bounds[1], zone_name) >= jira_reads(second_bounds[0], zone_name)


# ---------------------------------------------------------------------------------------------------
# Hand-checked bounds
# ---------------------------------------------------------------------------------------------------


def test_sydney_november_window_is_read_at_utc_plus_eleven() -> None:
    # Sydney keeps daylight time (AEDT, UTC+11) from October to April.
    assert datetime(2026, 11, 27, 10, 0, tzinfo=UTC).astimezone(ZoneInfo("Australia/Sydney")).utcoffset() == (
        timedelta(hours=11)
    )
    window = make_window(TEN_AM, TEN_FIFTEEN, lookback_minutes=0)
    assert jql_datetime_bounds(window, "Australia/Sydney") == ('"2026-11-27 21:00"', '"2026-11-27 21:15"')


def test_default_lookback_starts_the_search_five_minutes_early() -> None:
    window = make_window(TEN_AM, TEN_FIFTEEN)
    assert window.query_start == datetime(2026, 11, 27, 9, 55, tzinfo=UTC)
    assert jql_datetime_bounds(window, "Australia/Sydney") == ('"2026-11-27 20:55"', '"2026-11-27 21:15"')


def test_new_york_fold_moves_high_past_the_repeated_hour() -> None:
    # 05:30Z is 01:30 EDT; 06:30Z is 01:30 EST, the second 01:30 of the night. Jira reads "01:30" as EDT
    # (05:30Z), which would cut the window short; the first wall time read at or after 06:30Z is 02:00 EST.
    window = make_window(
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 1, 6, 30, tzinfo=UTC), lookback_minutes=0
    )
    low, high = jql_datetime_bounds(window, "America/New_York")
    assert (low, high) == ('"2026-11-01 01:30"', '"2026-11-01 02:00"')
    assert jira_reads(high, "America/New_York") >= window.end


def test_new_york_fold_low_in_the_repeated_hour_uses_the_last_minute_before_it() -> None:
    # 06:30Z is the second 01:30. No literal reads as 06:00Z-06:59Z; the latest one read before 06:30Z
    # is 01:59 EDT (05:59Z).
    window = make_window(
        datetime(2026, 11, 1, 6, 30, tzinfo=UTC), datetime(2026, 11, 1, 6, 45, tzinfo=UTC), lookback_minutes=0
    )
    assert jql_datetime_bounds(window, "America/New_York") == ('"2026-11-01 01:59"', '"2026-11-01 02:00"')


def test_new_york_spring_gap_bounds_name_real_wall_times() -> None:
    # 06:50Z is 01:50 EST, 07:10Z is 03:10 EDT: the hour 02:00-02:59 does not exist on 2026-03-08.
    window = make_window(
        datetime(2026, 3, 8, 6, 50, tzinfo=UTC), datetime(2026, 3, 8, 7, 10, tzinfo=UTC), lookback_minutes=0
    )
    assert jql_datetime_bounds(window, "America/New_York") == ('"2026-03-08 01:50"', '"2026-03-08 03:10"')
    # An end of 01:59:30 EST rounds up to 02:00, which does not exist: the same instant is named as 03:00.
    window = make_window(
        datetime(2026, 3, 8, 6, 45, tzinfo=UTC),
        datetime(2026, 3, 8, 6, 59, 30, tzinfo=UTC),
        lookback_minutes=0,
    )
    low, high = jql_datetime_bounds(window, "America/New_York")
    assert (low, high) == ('"2026-03-08 01:45"', '"2026-03-08 03:00"')
    assert jira_reads(high, "America/New_York") == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def test_kathmandu_quarter_hour_offset_rounds_to_local_minutes() -> None:
    # Nepal is UTC+05:45: 10:07:30Z is 15:52:30 and 10:22:10Z is 16:07:10 local.
    window = make_window(
        datetime(2026, 5, 1, 10, 7, 30, tzinfo=UTC),
        datetime(2026, 5, 1, 10, 22, 10, tzinfo=UTC),
        lookback_minutes=0,
    )
    assert jql_datetime_bounds(window, "Asia/Kathmandu") == ('"2026-05-01 15:52"', '"2026-05-01 16:08"')


def test_chatham_daylight_offset_crosses_local_midnight() -> None:
    # The Chatham Islands keep UTC+13:45 in November: 10:15Z is midnight of the next local day.
    window = make_window(TEN_AM, TEN_FIFTEEN, lookback_minutes=0)
    assert jql_datetime_bounds(window, "Pacific/Chatham") == ('"2026-11-27 23:45"', '"2026-11-28 00:00"')


def test_unknown_account_time_zone_is_rejected() -> None:
    window = make_window(TEN_AM, TEN_FIFTEEN)
    for bad_zone in ("Mars/Olympus_Mons", "", "../../etc/passwd", "utc"):
        with pytest.raises(ValueError, match="time zone"):
            jql_datetime_bounds(window, bad_zone)


# ---------------------------------------------------------------------------------------------------
# The whole JQL and its inputs
# ---------------------------------------------------------------------------------------------------


def test_sweep_jql_ands_projects_bounds_and_filter_in_stable_order() -> None:
    window = make_window(TEN_AM, TEN_FIFTEEN, lookback_minutes=0)
    jql = build_sweep_jql(window, "Australia/Sydney", projects=["ABC", "OPS"], jql_filter=' status = "Done" ')
    assert jql == (
        'project in ("ABC", "OPS") AND updated >= "2026-11-27 21:00" AND updated < "2026-11-27 21:15" '
        'AND (status = "Done") ORDER BY updated ASC, key ASC'
    )


def test_sweep_jql_without_projects_or_filter_is_still_bounded() -> None:
    window = make_window(TEN_AM, TEN_FIFTEEN)
    assert build_sweep_jql(window, "UTC", jql_filter="   ") == (
        'updated >= "2026-11-27 09:55" AND updated < "2026-11-27 10:15" ORDER BY updated ASC, key ASC'
    )


@pytest.mark.parametrize(
    ("jql_filter", "complaint"),
    [
        ("status = Done) OR (project = SECRET", "never opened"),
        ('x = "a" ORDER BY key', "ORDER BY"),
        ("x = a order   by key DESC", "ORDER BY"),
        ('a = "unterminated', "unterminated"),
        ("a = 'unterminated", "unterminated"),
        ('a = "escaped quote does not close\\"', "unterminated"),
        ("a = b; DROP", "';'"),
        ("project = X\nOR 1=1", "control character U\\+000A"),
        ("project = X\tOR 1=1", "control character"),
        ("status = Done OR", "no condition after"),
        ("status = Done ||", "no condition after"),
        ("status = Done AND NOT", "no condition after"),
        ("OR status = Done", "no condition before"),
        ("(AND status = Done)", "no condition before"),
        ("(status = Done OR) AND x = y", "no condition after"),
        ("((status = Done)", "never closed"),
        ("status = Done\\", "dangling backslash"),
        ("x" * 1001, "limit is 1000"),
        ("summary ~ \u202eenoD", "control character"),
    ],
)
def test_jql_filter_that_could_escape_the_and_is_rejected(jql_filter: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        validate_jql_filter(jql_filter)
    window = make_window(TEN_AM, TEN_FIFTEEN)
    with pytest.raises(ValueError, match="jql_filter"):
        build_sweep_jql(window, "UTC", jql_filter=jql_filter)


@pytest.mark.parametrize(
    "jql_filter",
    [
        'summary ~ "a (b) \\"c\\""',
        "summary ~ 'it\\'s (odd'",
        'summary ~ "ORDER BY; drop"',
        'status = Done OR status = "In Progress"',
        "NOT status = Done",
        "labels in (a, b) AND priority != High",
        "assignee = currentUser() AND updated >= -1d",
        'summary ~ \\"quoted\\"',
    ],
)
def test_jql_filter_with_quotes_and_parentheses_inside_strings_is_accepted(jql_filter: str) -> None:
    assert validate_jql_filter(f"  {jql_filter} ") == jql_filter
    window = make_window(TEN_AM, TEN_FIFTEEN)
    assert build_sweep_jql(window, "UTC", jql_filter=jql_filter).endswith(
        f" AND ({jql_filter}) ORDER BY updated ASC, key ASC"
    )


def test_empty_jql_filter_means_no_filter() -> None:
    assert validate_jql_filter(None) is None
    assert validate_jql_filter("  ") is None


def outside_quotes_profile(text: str) -> tuple[bool, int, int, str]:
    """A character-level scan: (ended inside a quote, lowest paren depth, final depth, unquoted text).

    In the unquoted text a quoted string becomes NUL characters: they separate words but are no space.
    """
    quote = None
    depth = lowest = 0
    unquoted = []
    index = 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = None
            unquoted.append("\0")
        elif char == "\\":
            index += 1
            unquoted.append("x")
        elif char in "\"'":
            quote = char
            unquoted.append("\0")
        else:
            depth += {"(": 1, ")": -1}.get(char, 0)
            lowest = min(lowest, depth)
            unquoted.append(char)
        index += 1
    return quote is not None or index > len(text), lowest, depth, "".join(unquoted)


JQL_PIECES = [
    "a", "b", "=", "~", " ", " ", "(", ")", '"', "'", "\\", ";", "ORDER", "order", "BY", "by",
    "OR", "AND", "NOT", "||", "!", '"x y"', "'(z)'", ",",
]  # fmt: skip
STOP = r"""[\s()"'=!<>~&|,\0]"""


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(JQL_PIECES), max_size=14).map("".join))
def test_any_accepted_jql_filter_stays_inside_its_parentheses(jql_filter: str) -> None:
    try:
        accepted = validate_jql_filter(jql_filter)
    except ValueError:
        return
    if accepted is None:
        assert not jql_filter.strip()
        return
    open_quote, lowest, final, unquoted = outside_quotes_profile(accepted)
    assert not open_quote and lowest >= 0 and final == 0, accepted
    assert ";" not in unquoted, accepted
    assert not re.search(rf"(?:^|{STOP})order\s+by(?:$|{STOP})", unquoted, re.IGNORECASE), accepted


@pytest.mark.parametrize("key", ["abc", "A", "ABC-1", 'ABC"', "ABC) OR (x", "1AB", "ABCDEFGHIJK", "", "ÄBC"])
def test_malformed_project_key_is_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="not a Jira project key"):
        validate_projects([key])


def test_lower_case_project_key_error_suggests_the_upper_case_key() -> None:
    with pytest.raises(ValueError, match="'ABC'"):
        validate_projects(["abc"])


def test_project_keys_are_deduplicated_in_order_and_a_comma_list_is_accepted() -> None:
    assert validate_projects(["OPS", "ABC", "OPS"]) == ["OPS", "ABC"]
    assert validate_projects(" ABC, OPS,,ABC ") == ["ABC", "OPS"]
    assert validate_projects(None) == []
    assert validate_projects(["AB_2", "Z9"]) == ["AB_2", "Z9"]


def test_more_than_one_hundred_projects_are_rejected() -> None:
    keys = [f"P{number:03d}" for number in range(101)]
    assert len(validate_projects(keys[:100])) == 100
    with pytest.raises(ValueError, match="at most 100"):
        validate_projects(keys)


def test_non_string_project_is_rejected() -> None:
    with pytest.raises(ValueError, match="projects\\[2\\]"):
        validate_projects(["ABC", 7])


# ---------------------------------------------------------------------------------------------------
# Window construction and manual-trigger params
# ---------------------------------------------------------------------------------------------------


def test_naive_iso_instant_is_rejected_naming_the_param() -> None:
    with pytest.raises(ValueError, match="^since must be .*explicit offset or Z.*no offset"):
        parse_iso_instant("2026-11-27T10:00:00", name="since")
    for garbage in ("", "yesterday", "2026-13-01T00:00Z"):
        with pytest.raises(ValueError, match="^until must be"):
            parse_iso_instant(garbage, name="until")
    with pytest.raises(ValueError, match="^until must be"):
        parse_iso_instant(None, name="until")  # type: ignore[arg-type]


def test_iso_instant_with_offset_or_z_becomes_utc() -> None:
    expected = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert parse_iso_instant("2026-11-27T10:00:00Z", name="since") == expected
    assert parse_iso_instant("2026-11-27T21:00:00+11:00", name="since") == expected
    assert parse_iso_instant("2026-11-27T15:45:00.000+05:45", name="since") == expected
    assert parse_iso_instant("2026-11-27T21:00+11:00", name="since").tzinfo == UTC


def test_window_needs_aware_ordered_instants_and_a_bounded_lookback() -> None:
    start = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="start must be timezone-aware"):
        make_window(start.replace(tzinfo=None), start + MINUTE)
    with pytest.raises(ValueError, match="end must be timezone-aware"):
        make_window(start, (start + MINUTE).replace(tzinfo=None))
    for end in (start, start - MINUTE):
        with pytest.raises(ValueError, match="must be after start"):
            make_window(start, end)
    for lookback in (-1, 1441, 2.5, True):
        with pytest.raises(ValueError, match="lookback_minutes"):
            make_window(start, start + MINUTE, lookback_minutes=lookback)  # type: ignore[arg-type]
    assert make_window(start, start + MINUTE, lookback_minutes=1440).query_start == start - timedelta(days=1)
    with pytest.raises(ValueError, match="aware UTC"):
        SweepWindow(start=start.replace(tzinfo=None), end=start + MINUTE, lookback=timedelta(0))


def test_window_from_airflow_pendulum_interval_is_plain_utc() -> None:
    window = make_window(
        pendulum.datetime(2026, 11, 27, 21, 0, tz="Australia/Sydney"),
        pendulum.datetime(2026, 11, 27, 10, 15, tz="UTC"),
    )
    assert type(window.start) is datetime and type(window.end) is datetime
    assert window.start == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert window.start.tzinfo is UTC
    assert window.lookback == timedelta(minutes=DEFAULT_LOOKBACK_MINUTES)


def _lister(updates: list[datetime], limit: int, calls: list[datetime]):
    def list_keys(end: datetime) -> list[str] | None:
        calls.append(end)
        keys = [f"K-{n}" for n, at in enumerate(updates, start=1) if at < end]
        return None if len(keys) > limit else keys

    return list_keys


def test_a_window_that_fits_is_listed_once():
    start = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    calls: list[datetime] = []
    end, keys = furthest_fitting_end(
        start, start + timedelta(hours=1), _lister([start + timedelta(minutes=5)], 3, calls)
    )
    assert (end, keys, calls) == (start + timedelta(hours=1), ["K-1"], [start + timedelta(hours=1)])


def test_the_furthest_fitting_end_is_the_minute_of_the_first_ticket_that_does_not_fit():
    start = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    end = start + timedelta(days=30)
    updates = [start + timedelta(hours=h, seconds=30) for h in (1, 2, 3, 50, 51)]
    calls: list[datetime] = []
    reached, keys = furthest_fitting_end(start, end, _lister(updates, 3, calls))
    # The fourth ticket changed at 50:00:30 after the start: its minute starts the next run.
    assert reached == start + timedelta(hours=50)
    assert keys == ["K-1", "K-2", "K-3"]
    assert len(calls) == 16  # the whole window, then a bisection over 43,200 minutes: log2 ≈ 15.4


def test_a_single_minute_with_too_many_changes_cannot_be_split():
    start = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    updates = [start + timedelta(seconds=s) for s in (1, 2, 3, 4)]
    with pytest.raises(WindowTooDense, match="cannot split a minute"):
        furthest_fitting_end(start, start + timedelta(hours=1), _lister(updates, 3, []))


@pytest.mark.parametrize(
    ("since", "until"),
    [
        ("0001-01-01T00:00:00+01:00", "2026-11-27T10:00:00Z"),  # before year 1 once in UTC
        ("0001-01-01T00:00:00Z", "2026-11-27T10:00:00Z"),  # the lookback would step before year 1
        ("1969-12-31T23:59:00Z", "2026-11-27T10:00:00Z"),
        ("2026-11-27T10:00:00Z", "9999-12-31T23:59:59-01:00"),  # after year 9999 in UTC
        ("2026-11-27T10:00:00Z", "9999-12-31T00:00:00Z"),  # the account-zone JQL bound would overflow
    ],
)
def test_out_of_range_since_or_until_is_a_value_error_not_an_overflow(since, until):
    with pytest.raises(ValueError, match="outside the dates a sweep can cover|must lie between"):
        start = parse_iso_instant(since, name="since")
        end = parse_iso_instant(until, name="until")
        make_window(start, end, lookback_minutes=5)
