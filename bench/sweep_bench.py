"""Benchmark: jira_sweep over 20,000 changed issues through dag.test(), bulk fetches of 100 then 1000.

Run it with `.venv/bin/python -m bench.sweep_bench` (or `make bench`). It starts the Jira stand-in
(50 ms added to every request) with 20,000 issues updated inside one window, and runs `jira_sweep`
for that window with dag.test() in this process against a fresh Airflow home and SQLite store: once
with bulk fetches of 100, once with 1000, side by side. It reports the Jira requests, the mapped
fetch instances and the wall time of both, then each task's peak Python heap (tracemalloc, reset at
every task start by an Airflow listener) from a third run, the process's peak RSS, and the largest
XCom value. Results go into docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devkit.airflow_env import REPO, airflow_env
from include.names import JIRA_CONN_ID, STORE_CONN_ID, TICKET_TABLE

ISSUES = 20_000
LATENCY_S = 0.05
WINDOW_START = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
WINDOW_END = WINDOW_START + timedelta(hours=1)


def make_task_memory_listener():
    """An Airflow listener recording the tracemalloc peak of each task (dag.test runs them in-process).

    Built after the environment is set, because importing Airflow reads its configuration.
    """
    from airflow.listeners import hookimpl

    class TaskMemoryListener:
        def __init__(self) -> None:
            self.peaks: dict[str, int] = {}
            self._baseline = 0

        @hookimpl
        def on_task_instance_running(self, previous_state, task_instance):
            # The stand-in's 20,000 issues and Airflow itself live in this process too: measure the
            # growth above what was allocated when the task started.
            tracemalloc.reset_peak()
            self._baseline = tracemalloc.get_traced_memory()[0]

        @hookimpl
        def on_task_instance_success(self, previous_state, task_instance):
            _, peak = tracemalloc.get_traced_memory()
            name = task_instance.task_id
            if getattr(task_instance, "map_index", -1) not in (-1, None):
                name += "[mapped]"
            self.peaks[name] = max(self.peaks.get(name, 0), peak - self._baseline)

    return TaskMemoryListener()


def seed_sweep_issues(jira) -> None:
    """The stand-in's ISSUES issues, updated evenly over the window, then LATENCY_S on every request."""
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


def warmed_up_sweep():
    """A factory of fresh jira_sweep DAG objects and the window's conf, after one warm-up run over an
    empty window (so no timed run pays the first run's start-up)."""
    from airflow.dag_processing.dagbag import DagBag

    def sweep_dag():
        return DagBag(dag_folder=str(REPO / "dags")).dags["jira_sweep"]

    empty = WINDOW_END + timedelta(days=1)
    sweep_dag().test(run_conf={"since": empty.isoformat(), "until": (empty + timedelta(hours=1)).isoformat()})
    return sweep_dag, {
        "since": WINDOW_START.isoformat(),
        "until": WINDOW_END.isoformat(),
        "lookback_minutes": 0,
    }


def _set_up_airflow(tmp: Path, jira, store_path: Path) -> None:
    home = tmp / "airflow-home"
    home.mkdir()
    os.environ.update(
        airflow_env(
            os.environ,
            home=home,
            database_url=f"sqlite:///{home}/airflow.db",
            connections={
                JIRA_CONN_ID: jira.airflow_conn(),
                STORE_CONN_ID: {"conn_type": "sqlite", "host": str(store_path)},
            },
        )
    )
    sys.path[:0] = [str(REPO), str(REPO / "plugins")]
    import subprocess

    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )


def _sweep(dag_factory, jira, conf: dict, store_path: Path) -> dict:
    """One timed jira_sweep run: its state, wall time, Jira requests by kind, mapped fetches, rows."""
    import sqlite3

    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

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
        xcoms = session.query(XComModel).filter_by(dag_id="jira_sweep", run_id=run.run_id).all()
        sizes = {(x.task_id, x.map_index): len(json.dumps(x.value).encode()) for x in xcoms}
    conn = sqlite3.connect(store_path)
    rows = conn.execute(f"SELECT count(*) FROM {TICKET_TABLE} WHERE source = 'sweep'").fetchone()[0]
    conn.close()
    return {
        "state": str(getattr(run.state, "value", run.state)),
        "wall_s": wall,
        "total": jira.request_count("/rest/api/"),
        "searches": jira.request_count("/rest/api/3/search/jql"),
        "bulk": jira.request_count("/rest/api/3/issue/bulkfetch"),
        "fetches": fetches,
        "rows": rows,
        "xcom_sizes": sizes,
    }


def main() -> None:
    from devkit.jira_standin import JiraStandin

    jira = JiraStandin(email="bench@example.com", api_token="bench-token", time_zone="Europe/Berlin").start()
    try:
        seed_sweep_issues(jira)
        with tempfile.TemporaryDirectory(prefix="jms-sweep-bench-") as tmp_name:
            tmp = Path(tmp_name)
            store_path = tmp / "store.db"
            _set_up_airflow(tmp, jira, store_path)

            from airflow.sdk.listener import get_listener_manager

            import include.jira_rules as jira_rules

            sweep_dag, conf = warmed_up_sweep()

            # Side by side in this one process, on the same 20,000 issues: bulk fetches of 100, as before
            # Jira's 1000-issue rule was used (its limit set back to 100 for this run only: the planner's
            # batches and the client's requests both follow it), then the automatic size (1000 here).
            results = {}
            large = jira_rules.BULK_FETCH_LIMIT_PLAIN_FIELDS
            jira_rules.BULK_FETCH_LIMIT_PLAIN_FIELDS = jira_rules.BULK_FETCH_LIMIT_ANY_FIELDS
            try:
                results[100] = _sweep(sweep_dag, jira, conf, store_path)
            finally:
                jira_rules.BULK_FETCH_LIMIT_PLAIN_FIELDS = large
            store_path.unlink()
            results[1000] = _sweep(sweep_dag, jira, conf, store_path)
            print(results, flush=True)

            # The same 1000-issue sweep again under tracemalloc (which slows Python down) for the memory
            # figures; it rewrites the same rows.
            listener = make_task_memory_listener()
            get_listener_manager().add_listener(listener)
            tracemalloc.start()
            memory_run = sweep_dag().test(run_conf=conf)
            tracemalloc.stop()
            if str(getattr(memory_run.state, "value", memory_run.state)) != "success":
                raise SystemExit("the memory-measuring sweep run failed")
    finally:
        jira.stop()

    for size, result in results.items():
        if result["state"] != "success" or result["rows"] != ISSUES:
            raise SystemExit(f"sweep run ({size}) ended {result['state']} with {result['rows']} rows stored")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (big_task, big_index), biggest = max(results[1000]["xcom_sizes"].items(), key=lambda item: item[1])
    budget = math.ceil(ISSUES / 5000) + math.ceil(ISSUES / 1000)
    old, new = results[100], results[1000]
    task_rows = "\n".join(
        f"| `{name}` | {peak / 1024 / 1024:.1f} MiB |" for name, peak in sorted(listener.peaks.items())
    )
    markdown = f"""## Sweep: {ISSUES:,} changed issues through `dag.test()`, bulk fetches of 100 and of 1000

Command: `.venv/bin/python -m bench.sweep_bench` (part of `make bench`).

The Jira stand-in holds {ISSUES:,} issues updated inside one hour and adds {LATENCY_S * 1000:.0f} ms to
every request; `jira_sweep` runs over that hour (`since`/`until`, lookback 0) with `dag.test()` into a
fresh SQLite store, twice in one process after a warm-up run: first with bulk fetches of 100 issues
(the batching before store v2: Jira's 1000-issue limit set back to 100 for that run), then with the
automatic size, 1000 for the default fields. Both stored **{old["rows"]:,}** and **{new["rows"]:,}** rows.

| measure | 100 per bulk fetch | 1000 per bulk fetch | target (1000) |
|---|---:|---:|---|
| Jira requests, all | {old["total"]} | {new["total"]} | ≤ 4 + 20 + a constant = {budget} + c |
| of which `/search/jql` pages (keys only, 5000 a page) | {old["searches"]} | {new["searches"]} | |
| of which `/issue/bulkfetch` | {old["bulk"]} | {new["bulk"]} | |
| mapped `fetch_tickets` instances | {old["fetches"]} | {new["fetches"]} | 20 |
| wall time of the run through `dag.test()` | {old["wall_s"]:.1f} s | {new["wall_s"]:.1f} s | |

The constant is `GET /myself` (the account's time zone) in `plan_sweep`. Largest XCom value of the
1000 run: {biggest / 1024:.0f} KiB (`{big_task}`{f"[{big_index}]" if big_index >= 0 else ""}; target < 1 MB).
Peak RSS of the whole process (Airflow + stand-in + all runs): {peak_rss:.0f} MiB.

Peak Python heap growth per task, from a third run (1000 per bulk fetch) under tracemalloc (the
growth above what was allocated when the task instance started; for mapped instances, the largest):

| task | peak heap growth |
|---|---:|
{task_rows}

`store_tickets` reads the mapped fetch results one at a time from Airflow's lazy XCom sequence and
upserts each batch before reading the next, so no task holds all {ISSUES:,} tickets' details at once.
"""
    from bench.report import write_section

    print(markdown)
    print(write_section("sweep", markdown))


if __name__ == "__main__":
    main()
