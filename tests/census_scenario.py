"""The census scenario of issue #22, shared by the include-level test and the DAG test.

Three projects on the stand-in, all stored, then: 7 deleted, 3 archived, 2 moved out of the synced
projects, 1 hidden from the account (404), 1 moved between two synced projects, and 4 never stored
(as if their mail was lost). `expected` says, row by row, what a census must leave.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from include.jira_cloud import ticket_details
from include.ticket_store import ensure_table, upsert_tickets

PROJECTS = ("ALP", "BET", "GAM")
BEFORE = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@dataclass
class Scenario:
    keys: list[str]  # every key created
    deleted: list[str]
    archived: list[str]
    moved_out: dict[str, str]  # old -> new
    hidden: list[str]
    moved_within: dict[str, str]
    unstored: list[str]

    def expected(self) -> dict[str, tuple[str | None, bool, bool]]:
        """key now in the store -> (gone_reason, deleted_at set, archived_at set)."""
        rows: dict[str, tuple[str | None, bool, bool]] = {}
        for key in self.keys:
            if key in self.moved_out:
                rows[self.moved_out[key]] = ("moved_out", False, False)
            elif key in self.moved_within:
                rows[self.moved_within[key]] = (None, False, False)
            elif key in self.deleted or key in self.hidden:
                rows[key] = ("deleted_or_hidden", True, False)
            elif key in self.archived:
                rows[key] = ("archived", False, True)
            else:
                rows[key] = (None, False, False)
        return rows


def build(jira: Any, conn: Any, dialect: str, total: int, *, changes: bool = True) -> Scenario:
    per_project = total // len(PROJECTS)
    keys = [f"{p}-{n}" for p in PROJECTS for n in range(1, per_project + 1)]
    keys += [f"{PROJECTS[0]}-{per_project + n}" for n in range(1, total - len(keys) + 1)]
    for index, key in enumerate(keys):
        jira.add_issue(
            key,
            summary=f"ticket {key}",
            status="Done" if index % 3 == 0 else "To Do",
            assignee_email=None if index % 2 else f"dev{index % 7}@example.com",
            updated=BEFORE + timedelta(minutes=index),
        )
    unstored = [keys[11], keys[per_project + 12], keys[2 * per_project + 13], keys[-1]] if changes else []
    ensure_table(conn, dialect)
    tickets = [ticket_details(jira.issue(key)) for key in keys if key not in unstored]
    upsert_tickets(conn, dialect, tickets, source="sweep", fetched_at=BEFORE + timedelta(days=1))

    if not changes:
        return Scenario(keys, [], [], {}, [], {}, [])

    def pick(start: int, count: int, step: int) -> list[str]:
        return [keys[(start + i * step) % len(keys)] for i in range(count)]

    deleted = pick(100, 7, 601)
    archived = pick(205, 3, 1301)
    out = pick(333, 2, 1777)
    hidden = pick(450, 1, 1)
    within = pick(77, 1, 1)
    taken = set(deleted) | set(archived) | set(out) | set(hidden) | set(within) | set(unstored)
    assert len(taken) == 18, "the picks overlap"
    for key in deleted:
        jira.remove_issue(key)
    for key in archived:
        jira.archive_issue(key, at=BEFORE + timedelta(days=3))
    moved_out = {key: f"OUT-{n}" for n, key in enumerate(out, 1)}
    for old, new in moved_out.items():
        jira.move_issue(old, new)
    for key in hidden:
        jira.set_hidden(key)
    moved_within = {within[0]: f"{PROJECTS[2]}-{per_project + 500}"}
    jira.move_issue(within[0], moved_within[within[0]])
    return Scenario(keys, deleted, archived, moved_out, hidden, moved_within, unstored)


def store_rows(conn: Any) -> dict[str, tuple[Any, ...]]:
    cursor = conn.cursor()
    cursor.execute(
        "SELECT key, gone_reason, deleted_at, archived_at, census_at, issue_id, summary, status, "
        "previous_keys, updated_at FROM jira_ticket"
    )
    rows = {str(r[0]): tuple(r[1:]) for r in cursor.fetchall()}
    cursor.close()
    conn.commit()
    return rows


def check_rows(scenario: Scenario, rows: dict[str, tuple[Any, ...]]) -> None:
    expected = scenario.expected()
    assert set(rows) == set(expected)
    wrong = {
        key: (rows[key][0], rows[key][1] is not None, rows[key][2] is not None)
        for key in expected
        if (rows[key][0], rows[key][1] is not None, rows[key][2] is not None) != expected[key]
    }
    assert not wrong, f"{len(wrong)} row(s) wrong, e.g. {list(wrong.items())[:5]} vs expected"
    # Every row was confirmed or marked by the census.
    assert all(row[3] is not None for row in rows.values())
