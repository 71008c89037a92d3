"""Fetch then store against the Jira stand-in and a real store: moves, deletions, fetch time, extra fields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from jira_mail_sync.mapping import MAX_MAPPED_FETCHES, batch_keys

from include.jira_cloud import JiraCloudClient, JiraUnavailable
from include.jira_rules import BULK_FETCH_LIMIT_ANY_FIELDS, BULK_FETCH_LIMIT_PLAIN_FIELDS, bulk_fetch_limit
from include.sync_pipeline import change_event, fetch_batch, read_change_events, store_batches
from include.ticket_fields import TICKET_FIELDS, FieldPlan, parse_extra_fields, plan_fields
from include.ticket_store import count_tickets, get_ticket

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture
def client(jira_standin):
    with JiraCloudClient(
        jira_standin.url, jira_standin.email, jira_standin.api_token, max_retries=1, max_retry_wait=1
    ) as jira:
        yield jira


def sync(client, store, keys, *, source="inbox", extra=()):
    conn, dialect = store
    batch = fetch_batch(client, keys, extra)
    return batch, store_batches(conn, dialect, [batch], source=source, fetched_at=datetime.now(UTC))


def test_a_moved_ticket_ends_as_one_row_and_mail_about_the_old_key_settles(jira_standin, client, store):
    conn, dialect = store
    jira_standin.add_issue("ABC-1", summary="Moves", updated=T0)
    sync(client, store, ["ABC-1"])
    jira_standin.move_issue("ABC-1", "XYZ-9")

    # Mail about the old key: the bulk fetch answers with XYZ-9, so ABC-1 is left out; its GET says moved.
    batch, summary = sync(client, store, ["ABC-1"])

    assert [t["key"] for t in batch["tickets"]] == ["XYZ-9"] and batch["not_found"] == []
    assert batch["tickets"][0]["moved_from"] == ["ABC-1"]
    assert set(summary["stored"]) == {"XYZ-9", "ABC-1"}
    assert summary["changed"] == ["XYZ-9"]
    assert count_tickets(conn, dialect) == 1
    row = get_ticket(conn, dialect, "XYZ-9")
    assert row["previous_keys"] == ["ABC-1"] and row["issue_id"] == int(jira_standin.issue("XYZ-9")["id"])


def test_a_deleted_ticket_keeps_its_row_with_deleted_at(jira_standin, client, store):
    conn, dialect = store
    jira_standin.add_issue("ABC-1", summary="Short-lived", updated=T0)
    sync(client, store, ["ABC-1"], source="sweep")
    jira_standin.remove_issue("ABC-1")

    batch, summary = sync(client, store, ["ABC-1"])

    assert batch["tickets"] == [] and batch["not_found"] == ["ABC-1"]
    assert summary["changed"] == ["ABC-1"] and summary["not_found"] == ["ABC-1"]
    row = get_ticket(conn, dialect, "ABC-1")
    assert row["deleted_at"] == datetime.fromisoformat(batch["fetched_at"])
    assert row["summary"] == "Short-lived"
    assert count_tickets(conn, dialect) == 1


def test_a_hidden_ticket_is_marked_gone_and_cleared_when_visible_again(jira_standin, client, store):
    conn, dialect = store
    jira_standin.add_issue("ABC-1", summary="Secret", updated=T0)
    sync(client, store, ["ABC-1"], source="sweep")
    jira_standin.set_hidden("ABC-1")

    sync(client, store, ["ABC-1"])
    assert get_ticket(conn, dialect, "ABC-1")["deleted_at"] is not None

    jira_standin.set_hidden("ABC-1", False)
    _, summary = sync(client, store, ["ABC-1"])
    assert get_ticket(conn, dialect, "ABC-1")["deleted_at"] is None
    assert summary["changed"] == ["ABC-1"]


def test_a_confirming_get_that_keeps_failing_fails_only_its_key_and_marks_nothing_gone(
    jira_standin, client, store
):
    conn, dialect = store
    for key in ("ABC-1", "ABC-2"):
        jira_standin.add_issue(key, summary="s", updated=T0)
    sync(client, store, ["ABC-1"], source="sweep")
    jira_standin.remove_issue("ABC-1")
    jira_standin.inject_fault(503, count=50, path_prefix="/rest/api/3/issue/ABC-1")

    batch = fetch_batch(client, ["ABC-1", "ABC-2"])
    store_batches(conn, dialect, [batch], source="inbox", fetched_at=datetime.now(UTC))

    assert list(batch["failed"]) == ["ABC-1"] and "JiraUnavailable" in batch["failed"]["ABC-1"]
    assert batch["not_found"] == []
    assert get_ticket(conn, dialect, "ABC-1")["deleted_at"] is None
    assert get_ticket(conn, dialect, "ABC-2") is not None


def test_a_confirming_get_fails_the_batch_when_jira_does_not_answer_at_all(jira_standin, client, store):
    conn, dialect = store
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)
    sync(client, store, ["ABC-1"], source="sweep")
    jira_standin.remove_issue("ABC-1")
    jira_standin.inject_fault(503, count=5, path_prefix="/rest/api/3/issue/ABC-1")
    jira_standin.inject_fault(503, count=50, path_prefix="/rest/api/3/myself")

    with pytest.raises(JiraUnavailable):
        sync(client, store, ["ABC-1"])

    assert get_ticket(conn, dialect, "ABC-1")["deleted_at"] is None


def test_fetched_at_is_the_time_of_the_fetch_not_of_the_store(jira_standin, client, store):
    conn, dialect = store
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)
    before = datetime.now(UTC)
    batch = fetch_batch(client, ["ABC-1"])
    after = datetime.now(UTC)

    store_batches(conn, dialect, [batch], source="inbox", fetched_at=after + timedelta(hours=1))

    assert before <= get_ticket(conn, dialect, "ABC-1")["fetched_at"] <= after


def test_an_extra_custom_field_reaches_the_store(jira_standin, client, store):
    conn, dialect = store
    jira_standin.add_custom_field("customfield_10016", "Story Points", "number")
    jira_standin.add_issue("ABC-1", summary="s", updated=T0, custom_fields={"customfield_10016": 8.0})
    extra = parse_extra_fields("customfield_10016, duedate")
    plan = plan_fields(extra, client.fields_catalogue())

    sync(client, store, ["ABC-1"], extra=plan.extra)

    assert plan.bulk_size == BULK_FETCH_LIMIT_PLAIN_FIELDS
    assert get_ticket(conn, dialect, "ABC-1")["fields"] == {"customfield_10016": 8.0, "duedate": None}


def test_the_sweep_of_2500_keys_is_3_batches_of_one_request_each(jira_standin, client, store):
    keys = [f"ABC-{n}" for n in range(1, 2501)]
    for key in keys:
        jira_standin.add_issue(key, summary="s", updated=T0)
    batches = batch_keys(keys, per_request=FieldPlan().bulk_size)

    for batch in batches:
        jira_standin.clear_requests()
        fetch_batch(client, batch)
        assert jira_standin.request_count("/rest/api/3/issue/bulkfetch") == 1

    assert [len(b) for b in batches] == [1000, 1000, 500]


# ------------------------------------------------------------------------------------- pure rules


def test_default_fields_allow_1000_and_a_multi_valued_extra_field_switches_to_100(jira_standin, client):
    jira_standin.add_custom_field("customfield_10020", "Teams", "multi-option")
    catalogue = client.fields_catalogue()

    assert FieldPlan().bulk_size == BULK_FETCH_LIMIT_PLAIN_FIELDS
    multi = plan_fields(("customfield_10020",), catalogue)
    assert (multi.multi_valued, multi.bulk_size) == (("customfield_10020",), BULK_FETCH_LIMIT_ANY_FIELDS)
    assert plan_fields(("labels",), catalogue).bulk_size == BULK_FETCH_LIMIT_ANY_FIELDS
    assert plan_fields(("duedate",), catalogue).bulk_size == BULK_FETCH_LIMIT_PLAIN_FIELDS


def test_an_unknown_extra_field_is_refused_with_a_hint_when_a_name_was_given(jira_standin, client):
    jira_standin.add_custom_field("customfield_10016", "Points", "number")
    with pytest.raises(ValueError, match=r"no field customfield_99999"):
        plan_fields(("customfield_99999",), client.fields_catalogue())
    with pytest.raises(ValueError, match=r"points \(did you mean customfield_10016\?\)"):
        plan_fields(("points",), client.fields_catalogue())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Story Points", "'Story' is not a Jira field id"),
        ("customfield_x", "not a Jira field id"),
        ("summary", "fetched already"),
        (",".join(f"customfield_{10000 + n}" for n in range(96)), "at most 95"),
    ],
)
def test_malformed_extra_fields_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_extra_fields(text)


def test_extra_fields_parse_in_order_without_duplicates():
    assert parse_extra_fields(" customfield_10016,duedate customfield_10016 ") == (
        "customfield_10016",
        "duedate",
    )
    assert parse_extra_fields("") == () and parse_extra_fields(None) == ()


@pytest.mark.parametrize(
    ("fields", "expand", "limit"),
    [
        (TICKET_FIELDS, (), 1000),
        ((), (), 100),
        (("*all",), (), 100),
        ((*TICKET_FIELDS, "worklog"), (), 100),
        (TICKET_FIELDS, ("changelog",), 100),
        (TICKET_FIELDS, ("names",), 1000),
        (tuple(f"customfield_{10000 + n}" for n in range(100)), (), 1000),
        (tuple(f"customfield_{10000 + n}" for n in range(101)), (), 100),
    ],
)
def test_bulk_fetch_limit_follows_jiras_rule(fields, expand, limit):
    assert bulk_fetch_limit(fields, expand=expand) == limit


def test_batches_of_1000_cover_20000_keys_in_20_instances():
    keys = [f"ABC-{n}" for n in range(1, 20_001)]

    batches = batch_keys(keys, per_request=1000)

    assert len(batches) == 20 and all(len(b) == 1000 for b in batches)
    assert [k for b in batches for k in b] == keys
    assert len(batch_keys(keys * 1, per_request=100)) == 200 <= MAX_MAPPED_FETCHES


def test_the_change_event_is_bounded_and_names_source_and_window():
    summary = {"changed_count": 1200, "changed": [f"ABC-{n}" for n in range(1, 501)]}

    event = change_event(
        summary, source="sweep", run_id="r1", window={"start": "2026-11-27T10:00:00+00:00", "end": None}
    )

    assert event["changed_count"] == 1200 and len(event["changed_keys"]) == 500 and event["keys_truncated"]
    assert (event["source"], event["run_id"], event["window_start"]) == (
        "sweep",
        "r1",
        "2026-11-27T10:00:00+00:00",
    )


def test_events_merged_into_one_downstream_run_keep_every_key_once():
    extras = [
        {"source": "inbox", "changed_count": 2, "changed_keys": ["ABC-1", "ABC-2"], "window_end": "t1"},
        None,  # an event from elsewhere without an extra
        {"source": "sweep", "changed_count": 700, "changed_keys": ["ABC-2", "ABC-3"], "keys_truncated": True},
    ]

    feed = read_change_events(extras)

    assert feed.keys == ["ABC-1", "ABC-2", "ABC-3"]
    assert (feed.changed_count, feed.truncated, feed.sources) == (702, True, ["inbox", "sweep"])
    assert feed.windows == [(None, "t1"), (None, None)]
