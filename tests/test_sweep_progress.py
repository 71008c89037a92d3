"""The sweep's watermark table on SQLite and PostgreSQL: created on first use, moved forward only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.store_db import table_exists
from include.sweep_progress import TABLE, advance_watermark, get_watermark

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture
def conn(store_backend):
    connection = store_backend.connect()
    yield connection, store_backend.dialect
    connection.close()


def test_reading_before_the_first_recorded_run_finds_none_and_creates_no_table(conn):
    assert get_watermark(*conn) is None
    assert not table_exists(*conn, TABLE)


def test_the_watermark_moves_forward_and_never_back(conn):
    assert advance_watermark(*conn, T0) == T0
    assert advance_watermark(*conn, T0 + timedelta(minutes=15)) == T0 + timedelta(minutes=15)
    assert advance_watermark(*conn, T0 - timedelta(days=3)) == T0 + timedelta(minutes=15)
    assert get_watermark(*conn) == T0 + timedelta(minutes=15)


def test_a_naive_watermark_is_refused(conn):
    with pytest.raises(ValueError, match="timezone-aware"):
        advance_watermark(*conn, datetime(2026, 11, 27, 10, 0))


def test_the_table_holds_one_row_per_scope(conn):
    advance_watermark(*conn, T0)
    advance_watermark(*conn, T0 + timedelta(hours=1))
    advance_watermark(*conn, T0, scope="other")
    connection, _ = conn
    cursor = connection.cursor()
    cursor.execute(f"SELECT scope FROM {TABLE} ORDER BY scope")
    assert [r[0] for r in cursor.fetchall()] == ["other", "scheduled"]
