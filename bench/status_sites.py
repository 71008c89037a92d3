"""Benchmark: what choosing a site and listing the sites costs the Jira sync page, for 1, 10 and 50 sites.

Run it with `PYTHONPATH=plugins:. .venv/bin/python -m bench.status_sites`. In process, no services:
for a sites file of 1, 10 and 50 entries (two mailboxes each) it measures, side by side in one run,

1. reading and checking the sites file (the first view after the file changed);
2. `select()` plus `site_listing()` with the file already parsed (every other view);
3. how many permission checks one view asks the auth manager (counted, with a stand-in that grants
   all: a real auth manager's cost per check depends on it, FAB or Keycloak, and is not measured here).

Median of 20 runs each. The store and mailbox figures are bench/status_page.py's (one site's cost).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.report import write_section

SIZES = (1, 10, 50)
RUNS = 20


def _sites(count: int) -> list[dict]:
    return [
        {
            "name": f"site{n}",
            "jira_conn_id": f"jira_{n}",
            "store_conn_id": f"store_{n}",
            "mailboxes": [{"imap_conn_id": f"imap_{n}"}, {"imap_conn_id": f"imap_{n}", "mailbox": "Desk"}],
        }
        for n in range(count)
    ]


class _User:
    def get_name(self) -> str:
        return "bench"


def main() -> int:
    from jira_mail_sync import auth, status_page

    checks = [0]

    def grant(*_args, **_kwargs) -> bool:
        checks[0] += 1
        return True

    auth.may_access_dag = grant
    status_page.may_access_dag = grant
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for size in SIZES:
            path = Path(work) / f"sites_{size}.yaml"
            path.write_text(yaml.safe_dump({"sites": _sites(size)}))
            os.environ["AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE"] = str(path)
            parse, view = [], []
            for _ in range(RUNS):
                status_page._sites_cache.update(key=None, sites=None)
                started = time.perf_counter()
                status_page.configured_sites()
                parse.append(time.perf_counter() - started)
            for _ in range(RUNS):
                checks[0] = 0
                started = time.perf_counter()
                chosen = status_page.select(_User(), f"site{size - 1}", "desk")
                listing = status_page.site_listing(_User(), chosen)
                view.append(time.perf_counter() - started)
            assert (
                len(listing["sites"]) == size and chosen.inbox_dag_id == f"jira_inbox__site{size - 1}__desk"
            )
            rows.append((size, statistics.median(parse) * 1000, statistics.median(view) * 1000, checks[0]))
    lines = [
        "## The Jira sync page with many sites: choosing a site and listing them",
        "",
        "Command: `PYTHONPATH=plugins:. .venv/bin/python -m bench.status_sites`. In process; sites files of "
        f"1, 10 and 50 entries with two mailboxes each; median of {RUNS}. Permission checks are counted "
        "with a stand-in auth manager that grants all (a real one's cost per check is its own).",
        "",
        "| sites | read and check the file (after it changed) | choose + list (file cached) | permission checks per view |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {size} | {parse:.1f} ms | {view:.2f} ms | {count} |" for size, parse, view, count in rows]
    path = write_section("status_sites", "\n".join(lines))
    print("\n".join(lines))
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
