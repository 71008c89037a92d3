"""Benchmark: jira_sweep over 20,000 changed issues on Jira Data Center beside Jira Cloud, in one run.

Run it with `.venv/bin/python -m bench.dc_sweep_bench`. It starts the Jira stand-in (50 ms added to
every request) with 20,000 issues updated inside one hour, and runs `jira_sweep` for that hour with
dag.test() in this process against a fresh Airflow home and SQLite store: once with the stand-in and
the connection in Cloud mode (/search/jql keys-only pages of 5000, bulk fetches of 1000), once in Data
Center mode (a personal access token; /rest/api/2/search pages of 1000 by a moving lower bound on
`updated`, fetches as `key in (...)` searches of 1000). It reports the Jira requests and the wall time
of both side by side, and writes them into docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench.sweep_bench import ISSUES, LATENCY_S, WINDOW_END, WINDOW_START, _set_up_airflow
from devkit.airflow_env import REPO
from include.names import JIRA_CONN_ID, TICKET_TABLE

PAT = "bench-personal-access-token"


def _sweep(dag_factory, jira, conf: dict, store_path: Path) -> dict:
    import sqlite3

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    os.environ[f"AIRFLOW_CONN_{JIRA_CONN_ID.upper()}"] = json.dumps(jira.airflow_conn())
    jira.clear_requests()
    started = time.perf_counter()
    run = dag_factory().test(run_conf=conf)
    wall = time.perf_counter() - started
    with create_session() as session:
        fetches = (
            session.query(TaskInstance)
            .filter_by(dag_id="jira_sweep", run_id=run.run_id, task_id="fetch_tickets")
            .count()
        )
    conn = sqlite3.connect(store_path)
    rows = conn.execute(f"SELECT count(*) FROM {TICKET_TABLE} WHERE source = 'sweep'").fetchone()[0]
    conn.close()
    searches = [r for r in jira.requests if r.path in ("/rest/api/3/search/jql", "/rest/api/2/search")]
    return {
        "state": str(getattr(run.state, "value", run.state)),
        "wall_s": wall,
        "total": jira.request_count("/rest/api/"),
        "searches": len(searches),
        "bulk": jira.request_count("/rest/api/3/issue/bulkfetch"),
        "fetches": fetches,
        "rows": rows,
    }


def main() -> None:
    from devkit.jira_standin import JiraStandin

    jira = JiraStandin(email="bench@example.com", api_token="bench-token", time_zone="Europe/Berlin").start()
    results: dict[str, dict] = {}
    try:
        step = (WINDOW_END - WINDOW_START) / ISSUES
        for n in range(ISSUES):
            jira.add_issue(
                f"SWP-{n + 1}",
                summary=f"Swept ticket {n + 1}",
                assignee_email=None if n % 5 == 0 else f"user{n % 40}@example.com",
                progress=(n % 100, 100),
                updated=WINDOW_START + step * n,
            )
        jira.latency = LATENCY_S
        with tempfile.TemporaryDirectory(prefix="jms-dc-sweep-bench-") as tmp_name:
            tmp = Path(tmp_name)
            store_path = tmp / "store.db"
            _set_up_airflow(tmp, jira, store_path)
            from airflow.dag_processing.dagbag import DagBag

            def sweep_dag():
                return DagBag(dag_folder=str(REPO / "dags")).dags["jira_sweep"]

            conf = {"since": WINDOW_START.isoformat(), "until": WINDOW_END.isoformat(), "lookback_minutes": 0}
            empty = WINDOW_END + timedelta(days=1)
            # A warm-up over an empty window first, so neither timed run pays the first run's start-up.
            sweep_dag().test(
                run_conf={"since": empty.isoformat(), "until": (empty + timedelta(hours=1)).isoformat()}
            )
            results["cloud"] = _sweep(sweep_dag, jira, conf, store_path)
            store_path.unlink()
            jira.use_flavor("datacenter", personal_access_token=PAT)
            results["datacenter"] = _sweep(sweep_dag, jira, conf, store_path)
            print(results, flush=True)
    finally:
        jira.stop()
    for flavor, result in results.items():
        if result["state"] != "success" or result["rows"] != ISSUES:
            raise SystemExit(
                f"sweep run ({flavor}) ended {result['state']} with {result['rows']} rows stored"
            )
    cloud, dc = results["cloud"], results["datacenter"]
    markdown = f"""## Sweep on Jira Data Center beside Jira Cloud: {ISSUES:,} changed issues through `dag.test()`

Command: `.venv/bin/python -m bench.dc_sweep_bench`.

The Jira stand-in holds {ISSUES:,} issues updated inside one hour and adds {LATENCY_S * 1000:.0f} ms to
every request; `jira_sweep` runs over that hour (`since`/`until`, lookback 0) with `dag.test()` into a
fresh SQLite store, twice in one process after a warm-up run: the stand-in and `jira_default` in Cloud
mode, then in Data Center mode (personal access token, extra `flavor: datacenter`). Both stored
**{cloud["rows"]:,}** and **{dc["rows"]:,}** rows.

| measure | Cloud | Data Center |
|---|---:|---:|
| Jira requests, all | {cloud["total"]} | {dc["total"]} |
| search requests (Cloud: `/search/jql` pages of 5000 keys; DC: `/rest/api/2/search`, listing pages of 1000 and `key in` fetches of 1000) | {cloud["searches"]} | {dc["searches"]} |
| `/issue/bulkfetch` requests | {cloud["bulk"]} | {dc["bulk"]} |
| mapped `fetch_tickets` instances | {cloud["fetches"]} | {dc["fetches"]} |
| wall time of the run through `dag.test()` | {cloud["wall_s"]:.1f} s | {dc["wall_s"]:.1f} s |

Data Center lists keys 1000 a page (its `jira.search.views.default.max`) where Cloud gives 5000, so
its listing takes about 20 pages against 4; each page carries `updated` beside the key, and from the
second page on a `key not in (...)` of the keys already seen in the bound's minute. Beside the
searches, Cloud makes one `GET /myself` (the account's zone, in `plan_sweep`) and Data Center two
(the listing task reads the zone again for its moving bound's literals).
"""
    from bench.report import write_section

    print(markdown)
    print(write_section("dc-sweep", markdown))


if __name__ == "__main__":
    main()
