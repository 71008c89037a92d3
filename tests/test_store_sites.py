"""Two sites in one store, function by function: every read and write of a site touches its rows only.

acme and globex both hold ABC-1 (different issues) and issue id 10002 (acme's ABC-2, globex's XYZ-5).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from include.census import Finding, keys_of, live_ids, mark_findings, stored_projects
from include.sync_status import ticket_figures
from include.ticket_history import issue_keys, issues_needing_history, store_history, ticket_updated
from include.ticket_store import count_tickets, get_ticket, mark_gone, upsert_tickets

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ACME_UPDATED = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
GLOBEX_UPDATED = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _ticket(key: str, issue_id: int, summary: str, updated: datetime) -> dict:
    return {
        "key": key,
        "issue_id": str(issue_id),
        "summary": summary,
        "status": "To Do",
        "assignee_email": None,
        "progress": None,
        "updated_at": updated.isoformat(),
    }


def _two_sites(conn, dialect: str) -> None:
    upsert_tickets(
        conn,
        dialect,
        [_ticket("ABC-1", 10001, "acme 1", ACME_UPDATED), _ticket("ABC-2", 10002, "acme 2", ACME_UPDATED)],
        source="sweep",
        fetched_at=T0,
        site="acme",
    )
    upsert_tickets(
        conn,
        dialect,
        [
            _ticket("ABC-1", 20001, "globex 1", GLOBEX_UPDATED),
            _ticket("XYZ-5", 10002, "globex 5", GLOBEX_UPDATED),
        ],
        source="sweep",
        fetched_at=T0,
        site="globex",
    )


def test_history_plans_join_the_ticket_and_its_cursor_of_the_same_site(store):
    conn, dialect = store
    from include.ticket_history import ensure_history_tables

    ensure_history_tables(conn, dialect)
    _two_sites(conn, dialect)
    # The whole store of acme (a backfill): acme's ids with acme's `updated`, nothing of globex's.
    assert issues_needing_history(conn, dialect, None, ["status"], site="acme") == {
        10001: ACME_UPDATED,
        10002: ACME_UPDATED,
    }
    assert issues_needing_history(conn, dialect, [10002, 20001], ["status"], site="globex") == {
        10002: GLOBEX_UPDATED,
        20001: GLOBEX_UPDATED,
    }
    # globex's cursor for 10002 says nothing about acme's issue 10002.
    store_history(conn, dialect, [], synced={10002: GLOBEX_UPDATED}, fields=["status"], site="globex")
    assert list(issues_needing_history(conn, dialect, None, ["status"], site="globex")) == [20001]
    assert list(issues_needing_history(conn, dialect, None, ["status"], site="acme")) == [10001, 10002]
    assert ticket_updated(conn, dialect, [10002], site="acme") == {10002: ACME_UPDATED}
    assert issue_keys(conn, dialect, [10002], site="globex") == {10002: "XYZ-5"}


def test_census_reads_and_marks_one_sites_rows(store):
    conn, dialect = store
    _two_sites(conn, dialect)
    assert stored_projects(conn, dialect, site="acme") == ["ABC"]
    assert stored_projects(conn, dialect, site="globex") == ["ABC", "XYZ"]
    assert list(live_ids(conn, dialect, "ABC", site="acme")) == [10001, 10002]
    assert list(live_ids(conn, dialect, "ABC", site="globex")) == [20001]
    assert keys_of(conn, dialect, [10002], site="globex") == {10002: "XYZ-5"}
    marked = mark_findings(
        conn, dialect, [Finding(10002, "ABC-2", "deleted_or_hidden")], at=T0 + timedelta(hours=1), site="acme"
    )
    assert marked == ["ABC-2"]
    assert get_ticket(conn, dialect, "ABC-2", site="acme")["gone_reason"] == "deleted_or_hidden"
    assert get_ticket(conn, dialect, "XYZ-5", site="globex")["gone_reason"] is None


def test_gone_counts_and_lookups_are_per_site(store):
    conn, dialect = store
    _two_sites(conn, dialect)
    assert mark_gone(conn, dialect, ["ABC-1"], confirmed_at=T0 + timedelta(hours=1), site="globex") == [
        "ABC-1"
    ]
    assert get_ticket(conn, dialect, "ABC-1", site="acme")["deleted_at"] is None
    assert get_ticket(conn, dialect, "ABC-1", site="globex")["summary"] == "globex 1"
    assert get_ticket(conn, dialect, "ABC-1") is None  # the plain site has no rows here
    assert (count_tickets(conn, dialect, site="acme"), count_tickets(conn, dialect, site="globex")) == (2, 2)
    assert ticket_figures(conn, dialect, now=T0, site="globex") | {"by_source": None} == {
        "total": 2,
        "by_source": None,
        "changed_last_hour": 2,
        "deleted": 1,
    }
    assert ticket_figures(conn, dialect, now=T0, site="acme")["deleted"] == 0
