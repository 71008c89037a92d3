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
from pathlib import Path

from bench.sweep_bench import ISSUES, LATENCY_S, _set_up_airflow, seed_sweep_issues, warmed_up_sweep
from bench.sweep_bench import _sweep as timed_sweep
from include.names import JIRA_CONN_ID

PAT = "bench-personal-access-token"


def _sweep(dag_factory, jira, conf: dict, store_path: Path) -> dict:
    """bench.sweep_bench's timed run, with the connection following the stand-in's flavour."""
    os.environ[f"AIRFLOW_CONN_{JIRA_CONN_ID.upper()}"] = json.dumps(jira.airflow_conn())
    result = timed_sweep(dag_factory, jira, conf, store_path)
    # Cloud lists by /search/jql; Data Center lists and fetches by /rest/api/2/search.
    return result | {"searches": result["searches"] + jira.request_count("/rest/api/2/search")}


def main() -> None:
    from devkit.jira_standin import JiraStandin

    jira = JiraStandin(email="bench@example.com", api_token="bench-token", time_zone="Europe/Berlin").start()
    results: dict[str, dict] = {}
    try:
        seed_sweep_issues(jira)
        with tempfile.TemporaryDirectory(prefix="jms-dc-sweep-bench-") as tmp_name:
            tmp = Path(tmp_name)
            store_path = tmp / "store.db"
            _set_up_airflow(tmp, jira, store_path)
            sweep_dag, conf = warmed_up_sweep()
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
(the listing task reads the zone again for its moving bound's literals). The machine is shared with other work:
wall times moved by several seconds between reruns, so the request counts are the figure to compare.
"""
    from bench.report import write_section

    print(markdown)
    print(write_section("dc-sweep", markdown))


if __name__ == "__main__":
    main()
