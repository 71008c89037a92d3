"""Benchmark: the census of one 100,000-issue project against the naive bulk fetch of every stored id.

Run it with `.venv/bin/python -m bench.census_bench`. It starts the Jira stand-in in this process (20 ms
added to every request, so requests cost something as they do against Jira Cloud) with 100,000 issues
in project BIG, stores them in a fresh SQLite file, then deletes 50, archives 20 and leaves 30 unstored
(100 changes). Side by side, on the same data:

- the census (include.census.run_census): 20 id-only search pages, one bulk fetch for the 70
  unlisted ids, a GET for each of those the bulk fetch leaves out, one bulk fetch to heal the 30;
- the naive alternative: a bulk fetch of every stored id (1000 a request), then a GET for each id it
  left out. It never finds the 30 unstored tickets: only a listing can.

Then the comparison's peak Python heap (tracemalloc) for 100,000 and 1,000,000 ids, without HTTP
(the listing is a generator, as the streamed pages are), beside one Python set of every listed id.
Results go into docs/benchmarks.md.
"""

from __future__ import annotations

import gc
import secrets
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from array import array
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devkit.jira_standin import JiraStandin
from include.census import compare, run_census
from include.jira_cloud import JiraCloudClient, JiraNotFound, ticket_details
from include.ticket_fields import TICKET_FIELDS
from include.ticket_store import ensure_table, upsert_tickets

ISSUES = 100_000
LATENCY_S = 0.02
DELETED, ARCHIVED, UNSTORED = 50, 20, 30
EMAIL = "bench@example.com"
BEFORE = datetime(2026, 11, 1, tzinfo=UTC)


def build(jira: JiraStandin, conn: sqlite3.Connection) -> None:
    keys = [f"BIG-{n}" for n in range(1, ISSUES + 1)]
    for index, key in enumerate(keys):
        jira.add_issue(key, summary=f"ticket {index}", updated=BEFORE + timedelta(seconds=index))
    unstored = set(keys[7 :: ISSUES // UNSTORED][:UNSTORED])
    ensure_table(conn, "sqlite")
    tickets = [ticket_details(jira.issue(key)) for key in keys if key not in unstored]
    upsert_tickets(conn, "sqlite", tickets, source="sweep", fetched_at=BEFORE + timedelta(days=1))
    for key in keys[11 :: ISSUES // DELETED][:DELETED]:
        jira.remove_issue(key)
    for key in keys[13 :: ISSUES // ARCHIVED][:ARCHIVED]:
        jira.archive_issue(key)


def naive(client: JiraCloudClient, conn: sqlite3.Connection) -> tuple[int, float, int]:
    """Bulk fetch every stored id, then GET each one left out: (requests, seconds, gone found)."""
    ids = [row[0] for row in conn.execute("SELECT issue_id FROM jira_ticket ORDER BY issue_id")]
    keys = dict(conn.execute("SELECT issue_id, key FROM jira_ticket"))
    before, started = client.request_count, time.perf_counter()
    found = {int(issue["id"]) for issue in client.bulk_fetch_ids(ids, TICKET_FIELDS)}
    gone = 0
    for issue_id in ids:
        if issue_id not in found:
            try:
                client.get_issue(keys[issue_id])
            except JiraNotFound:
                gone += 1
    return client.request_count - before, time.perf_counter() - started, gone


def compare_peak(n: int) -> tuple[int, int]:
    """Peak heap of the census's comparison and of one set of the listing, for n ids (bytes)."""
    stored = array("q", range(10_000, 10_000 + n))
    listing = ((i, f"BIG-{i}") for i in range(10_000, 10_000 + n) if i % 1000)  # 0.1% missing
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = compare("BIG", stored, listing)
    census_peak = tracemalloc.get_traced_memory()[1] - base
    assert sum(1 for _ in result.unlisted()) == n // 1000
    del result
    gc.collect()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    listed = {i for i in range(10_000, 10_000 + n) if i % 1000}
    set_peak = tracemalloc.get_traced_memory()[1] - base
    del listed
    tracemalloc.stop()
    # The stored ids themselves (the array, 8 bytes an id) were allocated before the measurement.
    return census_peak + stored.itemsize * len(stored), set_peak


def main() -> int:
    token = secrets.token_hex(12)
    with tempfile.TemporaryDirectory() as tmp, JiraStandin(email=EMAIL, api_token=token) as jira:
        conn = sqlite3.connect(Path(tmp) / "store.db")
        started = time.perf_counter()
        build(jira, conn)
        print(f"setup: {ISSUES} issues, {time.perf_counter() - started:.1f} s", flush=True)
        jira.latency = LATENCY_S
        client = JiraCloudClient(jira.url, EMAIL, token)
        n_requests, n_seconds, n_gone = naive(client, conn)
        client = JiraCloudClient(jira.url, EMAIL, token)
        started = time.perf_counter()
        result = run_census(client, conn, "sqlite", ["BIG"])
        c_seconds = time.perf_counter() - started
        counts = result.counts["BIG"]
        pages = jira.request_count("/rest/api/3/search/jql")
        print()
        print(
            f"| {ISSUES:,} issues, {DELETED + ARCHIVED + UNSTORED} changes | requests | wall time | found |"
        )
        print("|---|---:|---:|---|")
        print(
            f"| census (`run_census`) | {result.requests} ({pages} search pages) | {c_seconds:.1f} s | "
            f"{counts['deleted_or_hidden']} deleted, {counts['archived']} archived, {counts['healed']} healed |"
        )
        print(
            f"| naive bulk fetch of every stored id | {n_requests} | {n_seconds:.1f} s | "
            f"{n_gone} gone (archived not told apart), 0 healed |"
        )
        conn.close()
    print()
    print("| ids | census comparison peak (array + stream) | one Python set of the listing |")
    print("|---:|---:|---:|")
    for n in (100_000, 1_000_000):
        census_peak, set_peak = compare_peak(n)
        print(f"| {n:,} | {census_peak / 2**20:.1f} MiB | {set_peak / 2**20:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
