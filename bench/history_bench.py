"""Benchmark: ticket history of 20,000 issues with 10 changes each, bulk changelog fetch beside per-issue GETs.

Run it with `.venv/bin/python -m bench.history_bench` (`--issues N`, `--changes N`, `--latency S` to
vary it). It starts the Jira stand-in, gives it N issues each changed `--changes` times (status and
assignee by turns), stores the tickets in a fresh SQLite store, and then, side by side in one run:

1. **bulk**: the product's code (include.history_sync) plans the issues and reads their changelogs with
   `POST /rest/api/3/changelog/bulkfetch`, 1000 issues a request, into `jira_ticket_change`;
2. **rerun**: the same again, nothing having changed (it must make no request and add no row);
3. **naive**: `GET /rest/api/3/issue/{id}/changelog` for every issue (paging by startAt), stored the
   same way into a second fresh store.

It reports requests (as the stand-in logged them), rows and wall time of each, and writes them into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import secrets
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from devkit.jira_standin import JiraStandin
from include.history_sync import fetch_and_store_history, plan_history_chunks
from include.jira_cloud import JiraCloudClient, ticket_details
from include.jira_rules import CHANGELOG_BULK_MAX_ISSUES, ISSUE_CHANGELOG_PAGE_DEFAULT
from include.ticket_history import changes_of, count_changes, ensure_history_tables, store_history
from include.ticket_store import ensure_table, upsert_tickets

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
FIELDS = ("status", "assignee")
STATUSES = ("In Progress", "In Review", "Done", "To Do")
BULK = "/rest/api/3/changelog/bulkfetch"


def populate(jira: JiraStandin, issues: int, changes: int) -> list[dict]:
    tickets = []
    for n in range(1, issues + 1):
        key = f"HIS-{n}"
        jira.add_issue(key, summary=f"issue {n}", updated=T0)
        for c in range(changes):
            at = T0 + timedelta(minutes=c + 1, seconds=n % 60)
            if c % 2 == 0:
                jira.update_issue(key, status=STATUSES[(c // 2) % 4], updated=at)
            else:
                jira.update_issue(key, assignee_email=f"user{c}@example.com", updated=at)
        tickets.append(ticket_details(jira.issue(key)))
    return tickets


def fresh_store(directory: Path, name: str, tickets: list[dict]) -> sqlite3.Connection:
    conn = sqlite3.connect(directory / name)
    ensure_table(conn, "sqlite")
    upsert_tickets(conn, "sqlite", tickets, source="sweep", fetched_at=datetime.now(UTC))
    ensure_history_tables(conn, "sqlite")
    return conn


def run_bulk(jira: JiraStandin, client: JiraCloudClient, conn: sqlite3.Connection) -> dict:
    jira.clear_requests()
    started = time.perf_counter()
    chunks = plan_history_chunks(conn, "sqlite", None, FIELDS)
    field_ids = list(FIELDS)
    if chunks:
        client.fields_catalogue()  # what plan_ticket_history asks once per run, when there is work
    inserted = pages = 0
    for chunk in chunks:
        result = fetch_and_store_history(client, conn, "sqlite", chunk, fields=FIELDS, field_ids=field_ids)
        inserted += result["inserted"]
        pages += result["pages"]
    return {
        "seconds": time.perf_counter() - started,
        "requests": len(jira.requests),
        "changelog_requests": jira.request_count(BULK),
        "chunks": len(chunks),
        "pages": pages,
        "inserted": inserted,
    }


def run_naive(jira: JiraStandin, conn: sqlite3.Connection, issue_ids: list[int]) -> dict:
    jira.clear_requests()
    session = requests.Session()
    session.auth = (jira.email, jira.api_token)
    started = time.perf_counter()
    inserted = 0
    for issue_id in issue_ids:
        histories: list[dict] = []
        start = 0
        while True:
            response = session.get(
                f"{jira.url}/rest/api/3/issue/{issue_id}/changelog",
                params={"startAt": start, "maxResults": ISSUE_CHANGELOG_PAGE_DEFAULT},
                timeout=30,
            )
            response.raise_for_status()
            page = response.json()
            histories.extend(page["values"])
            if page.get("isLast", True):
                break
            start += len(page["values"])
        # The per-issue endpoint has no field filter: keep the same fields as the bulk run.
        rows = [c for c in changes_of(issue_id, histories) if c.field_id in FIELDS]
        inserted += store_history(conn, "sqlite", rows, synced={}, fields=FIELDS).inserted
    return {"seconds": time.perf_counter() - started, "requests": len(jira.requests), "inserted": inserted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issues", type=int, default=20_000)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the stand-in adds per request")
    parser.add_argument("--no-write", action="store_true", help="print, do not update docs/benchmarks.md")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="history-bench-") as tmp,
        JiraStandin(email="bench@example.com", api_token=secrets.token_hex(16)) as jira,
    ):
        started = time.perf_counter()
        tickets = populate(jira, args.issues, args.changes)
        setup = time.perf_counter() - started
        jira.latency = args.latency
        issue_ids = [int(t["issue_id"]) for t in tickets]
        bulk_conn = fresh_store(Path(tmp), "bulk.db", tickets)
        naive_conn = fresh_store(Path(tmp), "naive.db", tickets)
        with JiraCloudClient(jira.url, jira.email, jira.api_token) as client:
            bulk = run_bulk(jira, client, bulk_conn)
            rerun = run_bulk(jira, client, bulk_conn)
        naive = run_naive(jira, naive_conn, issue_ids)
        rows_bulk = count_changes(bulk_conn, "sqlite")
        rows_naive = count_changes(naive_conn, "sqlite")

    target = math.ceil(args.issues / CHANGELOG_BULK_MAX_ISSUES)
    per_chunk_pages = bulk["pages"] / max(bulk["chunks"], 1)
    from bench.report import write_section

    markdown = f"""## Ticket history: {args.issues:,} issues × {args.changes} changes, bulk changelog vs per-issue GET

Command: `.venv/bin/python -m bench.history_bench` (options `--issues`, `--changes`, `--latency`).

The Jira stand-in (loopback, {args.latency * 1000:.0f} ms added per request) holds {args.issues:,} issues,
each changed {args.changes} times (status and assignee by turns; set-up {setup:.0f} s, not counted).
The tickets are stored in two fresh SQLite stores; then, in one run: the product's history code
(`include.history_sync`: plan, then `POST /rest/api/3/changelog/bulkfetch` with 1000 issues and up to
10,000 histories a page), the same again with nothing changed, and the naive way, `GET
/rest/api/3/issue/{{id}}/changelog` per issue (pages of {ISSUE_CHANGELOG_PAGE_DEFAULT}), stored by the same code.

| measure | bulk changelog | rerun, nothing changed | per-issue GET |
|---|---:|---:|---:|
| Jira requests, all | {bulk["requests"]:,} | {rerun["requests"]:,} | {naive["requests"]:,} |
| of which changelog requests | {bulk["changelog_requests"]:,} | {rerun["changelog_requests"]:,} | {naive["requests"]:,} |
| 1000-issue chunks × pages per chunk | {bulk["chunks"]} × {per_chunk_pages:g} | {rerun["chunks"]} | |
| rows inserted into `jira_ticket_change` | {bulk["inserted"]:,} | {rerun["inserted"]:,} | {naive["inserted"]:,} |
| wall time | {bulk["seconds"]:.1f} s | {rerun["seconds"]:.2f} s | {naive["seconds"]:.1f} s |

Goal: ceil({args.issues:,} / 1000) × pages + c = {target} × {per_chunk_pages:g} + 1 (the one
`GET /rest/api/3/field` that checks the fields) = {target * per_chunk_pages + 1:g}. Both stores end
with {rows_bulk:,} and {rows_naive:,} rows. The rerun asks nothing: every ticket's history cursor
holds its stored `updated`. Here a per-issue GET with its store cost
{naive["seconds"] / max(naive["requests"], 1) * 1000:.1f} ms on loopback; against Jira Cloud each request
also costs a network round trip (not measured here; `--latency` adds one), so there the request
counts decide: {bulk["requests"]:,} against {naive["requests"]:,}.
"""
    print(markdown)
    if not args.no_write:
        print(write_section("history", markdown))


if __name__ == "__main__":
    main()
