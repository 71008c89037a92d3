"""Jira request accounting: the client counts requests and 429s, each task writes a row, the page sums."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from include.api_usage import _DDL, TABLE, Throttle, Usage, record_usage, usage_since
from include.jira_cloud import JiraCloudClient
from include.names import JIRA_CONN_ID
from include.store_db import table_columns, table_exists, timestamp_param

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def test_client_counts_each_request_and_remembers_the_last_429_with_its_retry_after(jira_standin):
    jira_standin.add_issue("ABC-1", summary="s", updated=T0)
    jira_standin.inject_fault(429, count=2, retry_after=0.2, path_prefix="/rest/api/3/issue/bulkfetch")
    before = datetime.now(UTC)
    with JiraCloudClient(
        jira_standin.url, jira_standin.email, jira_standin.api_token, max_retries=3
    ) as client:
        client.bulk_fetch(["ABC-1"])
        client.myself()
        usage = client.usage("jira_inbox.fetch_tickets[0]")

    # Every request the stand-in saw is counted, the retried ones included.
    assert usage.requests == jira_standin.request_count() == 4
    assert usage.throttled == 2
    assert usage.last_throttle is not None
    assert usage.last_throttle.retry_after_seconds == pytest.approx(0.2)
    assert before <= usage.last_throttle.at <= datetime.now(UTC)


def test_a_503_is_not_counted_as_throttling(jira_standin):
    jira_standin.inject_fault(503, count=1, retry_after=0.1)
    with JiraCloudClient(jira_standin.url, jira_standin.email, jira_standin.api_token) as client:
        client.myself()
        usage = client.usage("t")
    assert (usage.requests, usage.throttled, usage.last_throttle) == (2, 0, None)


def test_last_hour_is_summed_and_the_latest_429_is_kept(store_backend):
    conn = store_backend.connect()
    dialect = store_backend.dialect
    now = datetime.now(UTC)
    old_throttle = Throttle(now - timedelta(hours=3), 30.0)
    new_throttle = Throttle(now - timedelta(minutes=20), 7.5)
    record_usage(
        conn, dialect, Usage("jira_sweep.plan_sweep", 5, 1, old_throttle), now=now - timedelta(hours=2)
    )
    record_usage(
        conn,
        dialect,
        Usage("jira_inbox.fetch_tickets[0]", 3, 1, new_throttle),
        now=now - timedelta(minutes=20),
    )
    record_usage(conn, dialect, Usage("jira_inbox.fetch_tickets[1]", 2), now=now - timedelta(minutes=1))

    figures = usage_since(conn, dialect, now - timedelta(hours=1))

    assert figures["requests"] == 5
    assert figures["throttled"] == 1
    assert figures["last_throttle"] == {
        "at": new_throttle.at,
        "retry_after_seconds": 7.5,
        "task": "jira_inbox.fetch_tickets[0]",
    }


def test_a_task_that_sent_nothing_writes_nothing_and_an_empty_store_reads_as_zero(store_backend):
    conn = store_backend.connect()
    record_usage(conn, store_backend.dialect, Usage("jira_sweep.plan_sweep", 0))
    assert not table_exists(conn, store_backend.dialect, TABLE)
    assert usage_since(conn, store_backend.dialect, T0) == {
        "requests": 0,
        "throttled": 0,
        "last_throttle": None,
    }
    # Reading must not have created the table (the page may run with read-only store rights).
    assert not table_exists(conn, store_backend.dialect, TABLE)


def test_impossible_figures_are_refused():
    with pytest.raises(ValueError, match="throttled"):
        record_usage(None, "sqlite", Usage("t", 1, 2))


def test_the_shared_jira_client_writes_one_row_when_it_closes(jira_standin, jira_conn_env, store_conn_env):
    from jira_mail_sync.ticket_tasks import jira_client

    with jira_client() as client:
        client.myself()
        client.myself()
    conn = store_conn_env.connect()
    figures = usage_since(conn, store_conn_env.dialect, datetime.now(UTC) - timedelta(minutes=5))
    assert figures["requests"] == 2
    with contextlib.closing(conn.cursor()) as cursor:
        cursor.execute(f"SELECT task, requests, jira_conn_id FROM {TABLE}")
        assert cursor.fetchall() == [("outside a task", 2, "jira_default")]


# --- #23 many sites: each row names the Jira connection it asked, so sites sharing a store keep apart


def test_each_jira_connections_requests_and_429s_are_read_apart_in_one_store(store_backend):
    conn = store_backend.connect()
    dialect = store_backend.dialect
    now = datetime.now(UTC)
    throttle = Throttle(now - timedelta(minutes=5), 10.0)
    record_usage(conn, dialect, Usage("jira_sweep__acme.list_changed_keys", 7, 3, throttle, "jira_acme"))
    record_usage(conn, dialect, Usage("jira_sweep__globex.list_changed_keys", 2, 0, None, "jira_globex"))
    since = now - timedelta(hours=1)

    acme = usage_since(conn, dialect, since, jira_conn_id="jira_acme")
    globex = usage_since(conn, dialect, since, jira_conn_id="jira_globex")
    every = usage_since(conn, dialect, since)

    assert (acme["requests"], acme["throttled"], acme["last_throttle"]["task"]) == (
        7,
        3,
        "jira_sweep__acme.list_changed_keys",
    )
    # acme's 429s are not globex's: its page shows no throttling.
    assert globex == {"requests": 2, "throttled": 0, "last_throttle": None}
    assert (every["requests"], every["throttled"]) == (9, 3)


def test_an_older_usage_table_gets_the_connection_column_in_place_and_its_rows_are_the_plain_sites(
    store_backend,
):
    conn = store_backend.connect()
    dialect = store_backend.dialect
    now = datetime.now(UTC)
    old = _DDL[dialect][0].replace(f",\n    jira_conn_id TEXT NOT NULL DEFAULT '{JIRA_CONN_ID}'", "")
    assert "jira_conn_id" not in old
    with contextlib.closing(conn.cursor()) as cursor:
        cursor.execute(old)
        mark = "?" if dialect == "sqlite" else "%s"
        cursor.execute(
            f"INSERT INTO {TABLE} (recorded_at, task, requests, throttled) "
            f"VALUES ({mark}, 'jira_sweep.x', 4, 0)",
            (timestamp_param(now - timedelta(minutes=1), dialect),),
        )
    conn.commit()
    since = now - timedelta(hours=1)
    # A reader before the upgrade changes nothing and counts the old rows as the plain site's.
    assert usage_since(conn, dialect, since, jira_conn_id=JIRA_CONN_ID)["requests"] == 4
    assert usage_since(conn, dialect, since, jira_conn_id="jira_acme")["requests"] == 0
    assert "jira_conn_id" not in table_columns(conn, dialect, TABLE)

    record_usage(conn, dialect, Usage("jira_sweep__acme.x", 1, jira_conn_id="jira_acme"))

    assert "jira_conn_id" in table_columns(conn, dialect, TABLE)
    assert usage_since(conn, dialect, since, jira_conn_id=JIRA_CONN_ID)["requests"] == 4
    assert usage_since(conn, dialect, since, jira_conn_id="jira_acme")["requests"] == 1
