"""Two Jira sites on the native Celery stack (#23): a sites file, two stand-in processes, two stores.

`TwoSiteStack` starts, beside a real Dovecot given by the caller:
- one Jira stand-in *process* per site (`python -m devkit.jira_standin`), so a site that is answering
  429s shares nothing with the other site's Jira but the machine;
- one IMAP account per site (one mailbox each);
- the stack of scripts/distributed/stack.py with a sites file naming both sites, each with its own Jira
  connection, pool (sized in the file, made by `check_connections --sites --create-pools`) and store
  connection (a PostgreSQL database of its own).

`run_sweeps` triggers both sites' sweeps at once over REST and times them from the metadata database;
`throttled` makes one site's stand-in answer every API request 429 with Retry-After until it exits.
tests_distributed/test_sites_stack.py and bench/sites_throughput.py both drive the stack with these.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
import yaml

from devkit.dovecot import DovecotServer, ImapAccount
from devkit.processes import LOOPBACK, free_port, log_tail, spawn, stop_process_group
from include.names import TICKET_TABLE
from include.sites import Site, default_pool, load_sites_file
from scripts.distributed.stack import (
    DistributedStack,
    StackError,
    StackSettings,
    record_process_group,
)

STANDIN_EMAIL = "sites-bot@example.com"
SITE_NAMES = ("alpha", "beta")
# A sweep schedule that never comes due while a test runs (once a year, on 1 January): only the runs
# the caller triggers sweep, so nothing else takes the pools' slots while they are timed.
NEVER_DUE_SCHEDULE = "0 0 1 1 *"
START_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0
RUN_TIMEOUT_S = 420.0


class StandinProcess:
    """A Jira stand-in as a process of its own, seeded and faulted over its `/_standin/` admin API."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.log_path = root / f"jira-standin-{name}.log"
        self.api_token = f"standin-{secrets.token_hex(12)}"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._session = requests.Session()
        self._session.auth = (STANDIN_EMAIL, self.api_token)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def airflow_conn(self) -> dict[str, Any]:
        """The JSON form of the site's Airflow `jira` connection (as JiraStandin.airflow_conn gives it)."""
        return {"conn_type": "jira", "host": self.url, "login": STANDIN_EMAIL, "password": self.api_token}

    def start(self) -> StandinProcess:
        self.port = free_port()
        argv = [sys.executable, "-m", "devkit.jira_standin", "--host", LOOPBACK, "--port", str(self.port)]
        argv += ["--email", STANDIN_EMAIL, "--time-zone", "UTC"]
        env = {**os.environ, "JIRA_STANDIN_API_TOKEN": self.api_token}
        self.process = spawn(argv, self.log_path, env=env, cwd=Path(__file__).resolve().parents[2])
        record_process_group(self.process.pid, f"jira-standin-{self.name}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise StackError(f"the {self.name} Jira stand-in exited\n{log_tail(self.log_path)}")
            with contextlib.suppress(requests.RequestException):
                if self._session.get(f"{self.url}/rest/api/3/myself", timeout=HTTP_TIMEOUT_S).ok:
                    return self
            if time.monotonic() > deadline:
                raise StackError(f"the {self.name} Jira stand-in did not answer\n{log_tail(self.log_path)}")
            time.sleep(0.1)

    def stop(self) -> None:
        self._session.close()
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None

    def admin(self, method: str, route: str, payload: Mapping[str, Any] | None = None) -> Any:
        response = self._session.request(
            method, f"{self.url}/_standin/{route}", json=payload, timeout=HTTP_TIMEOUT_S
        )
        response.raise_for_status()
        return response.json() if response.content else None

    def add_issue(self, key: str, summary: str, updated: datetime, status: str = "To Do") -> None:
        self.admin(
            "POST",
            "issues",
            {"key": key, "summary": summary, "status": status, "updated": updated.isoformat()},
        )

    def requests_log(self) -> list[dict[str, Any]]:
        """Every API request answered so far: method, path, query, status (admin calls are not logged)."""
        return self.admin("GET", "requests")["requests"]

    def clear_requests(self) -> None:
        self.admin("DELETE", "requests")


@contextlib.contextmanager
def throttled(standin: StandinProcess, retry_after_s: float) -> Iterator[None]:
    """Every API request to `standin` answers 429 with `Retry-After: retry_after_s` until this exits.

    The stand-in's faults are counted, not timed: so many are queued that they outlast any run, and
    they are all cleared on exit, which is when the rate limit "resets".
    """
    standin.admin("POST", "faults", {"status": 429, "count": 1_000_000, "retry_after": retry_after_s})
    try:
        yield
    finally:
        standin.admin("DELETE", "faults")


@dataclass
class StackSite:
    """One site of the stack: its names in the sites file, its stand-in and its mailbox."""

    name: str
    pool_slots: int
    jira: StandinProcess
    mailbox: ImapAccount
    site: Site | None = None  # as include.sites parsed it from the written file

    @property
    def jira_conn_id(self) -> str:
        return f"jira_{self.name}"

    @property
    def imap_conn_id(self) -> str:
        return f"imap_{self.name}"

    @property
    def store_conn_id(self) -> str:
        return f"jira_store_{self.name}"

    @property
    def pool(self) -> str:
        return default_pool(self.name)

    @property
    def sweep_dag_id(self) -> str:
        assert self.site is not None
        return self.site.sweep_dag_id()

    @property
    def inbox_dag_id(self) -> str:
        assert self.site is not None
        return self.site.inbox_dag_id(self.site.mailboxes[0])

    def entry(self) -> dict[str, Any]:
        """The site's entry in the sites file."""
        return {
            "name": self.name,
            "jira_conn_id": self.jira_conn_id,
            "store_conn_id": self.store_conn_id,
            "pool_slots": self.pool_slots,
            "schedule": NEVER_DUE_SCHEDULE,
            "mailboxes": [{"imap_conn_id": self.imap_conn_id, "mailbox": "INBOX", "inbox_mode": "idle"}],
        }


@dataclass
class SweepResult:
    """One site's sweep run: its state, wall time (queued → ended, from dag_run) and tickets stored."""

    site: str
    run_id: str
    state: str
    wall_s: float
    tickets: int
    throttled_answers: int = 0

    @property
    def tickets_per_s(self) -> float:
        return self.tickets / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class TwoSiteStack:
    """The stack with two sites; use as a context manager (stops everything it started)."""

    root: Path
    dovecot: DovecotServer
    pool_slots: int = 2
    workers: int = 2
    worker_concurrency: int = 3
    sites: list[StackSite] = field(default_factory=list)
    stack: DistributedStack | None = None
    sites_file: Path | None = None

    def __enter__(self) -> TwoSiteStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in SITE_NAMES:
            jira = StandinProcess(name, self.root)
            # Listed before it starts, so stop() ends it even when starting it fails.
            self.sites.append(StackSite(name, self.pool_slots, jira, self.dovecot.create_account()))
            jira.start()
        self.sites_file = self.root / "jira_sites.yaml"
        self.sites_file.write_text(yaml.safe_dump({"sites": [site.entry() for site in self.sites]}))
        # Parsed with the product's own loader: the file the components read is a valid one.
        for stack_site, parsed in zip(self.sites, load_sites_file(self.sites_file), strict=True):
            stack_site.site = parsed
        connections: dict[str, Mapping[str, Any]] = {}
        for site in self.sites:
            connections[site.jira_conn_id] = site.jira.airflow_conn()
            connections[site.imap_conn_id] = site.mailbox.airflow_conn()
        self.stack = DistributedStack(
            self.root / "stack",
            connections,
            StackSettings(
                workers=self.workers,
                worker_concurrency=self.worker_concurrency,
                inbox_mode="idle",
                sites_file=self.sites_file,
                dag_ids=tuple(d for s in self.sites for d in (s.sweep_dag_id, s.inbox_dag_id)),
                store_conn_ids=tuple(site.store_conn_id for site in self.sites),
            ),
        )
        self.stack.start()
        assert self.stack.rest is not None
        # Sweeps run only when triggered (their schedule never comes due); the inbox DAGs stay paused
        # until unpause_inboxes(), so their watchers start only when a caller wants them.
        for site in self.sites:
            self.stack.rest.set_paused(site.sweep_dag_id, False)

    def unpause_inboxes(self) -> None:
        assert self.stack is not None and self.stack.rest is not None
        for site in self.sites:
            self.stack.rest.set_paused(site.inbox_dag_id, False)

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        for site in self.sites:
            site.jira.stop()
            site.mailbox.close()

    def site(self, name: str) -> StackSite:
        return next(site for site in self.sites if site.name == name)

    # ----------------------------------------------------------------------------------------- sweeps

    def seed(self, prefix: str, count: int, window: tuple[datetime, datetime]) -> dict[str, list[str]]:
        """`count` issues per site (keys <PREFIX><site letter>-n), updated evenly inside `window`."""
        start, end = window
        step = (end - start) / count
        keys: dict[str, list[str]] = {}
        for site in self.sites:
            project = f"{prefix}{site.name[0].upper()}"
            keys[site.name] = [f"{project}-{n}" for n in range(1, count + 1)]
            for n, key in enumerate(keys[site.name]):
                site.jira.add_issue(key, f"{key}: {site.name} sweep", start + step * n)
        return keys

    def stored_keys(self, site: StackSite) -> set[str]:
        assert self.stack is not None
        return {
            row[0]
            for row in self.stack.store_rows(f"SELECT key FROM {TICKET_TABLE}", conn_id=site.store_conn_id)
        }

    def trigger_sweeps(self, window: tuple[datetime, datetime]) -> dict[str, str]:
        """Trigger every site's sweep of `window`, one right after the other; run ids by site name."""
        assert self.stack is not None and self.stack.rest is not None
        conf = {"since": window[0].isoformat(), "until": window[1].isoformat()}
        return {site.name: self.stack.rest.trigger(site.sweep_dag_id, conf) for site in self.sites}

    def wait_for_run(self, site: StackSite, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
        """The run's final state (or its last one after `timeout_s`); StackError if a component dies."""
        assert self.stack is not None and self.stack.rest is not None
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.stack.rest.run_state(site.sweep_dag_id, run_id)
            if state in ("success", "failed") or time.monotonic() > deadline:
                return state
            for component in self.stack.components.values():
                if component.name != "pools-set" and component.exit_status is not None:
                    raise StackError(f"{component.name} exited during the sweeps\n{component.log_tail()}")
            time.sleep(1.0)

    def result(self, site: StackSite, run_id: str, state: str, keys: Sequence[str]) -> SweepResult:
        assert self.stack is not None
        queued, ended = self.stack.metadata_rows(
            "SELECT queued_at, end_date FROM dag_run WHERE dag_id = %s AND run_id = %s",
            (site.sweep_dag_id, run_id),
        )[0]
        wall = (ended - queued).total_seconds() if ended is not None else float("nan")
        stored = len(set(keys) & self.stored_keys(site))
        throttled_answers = sum(1 for entry in site.jira.requests_log() if entry["status"] == 429)
        return SweepResult(site.name, run_id, state, wall, stored, throttled_answers)

    def run_sweeps(
        self,
        window: tuple[datetime, datetime],
        keys: Mapping[str, Sequence[str]],
        *,
        throttle: str | None = None,
        retry_after_s: float = 10.0,
        min_throttle_s: float = 0.0,
        meanwhile: Callable[[], None] | None = None,
    ) -> dict[str, SweepResult]:
        """Both sites sweep `window` at once; with `throttle`, that site answers 429 while the other runs.

        The 429s last from before the trigger until every other site's sweep has ended (and at least
        `min_throttle_s`), so they cover the whole of the runs being compared; then they stop,
        `meanwhile` runs (if given), and the throttled site's run is waited for.
        """
        for site in self.sites:
            site.jira.clear_requests()
        throttling = (
            throttled(self.site(throttle).jira, retry_after_s) if throttle else contextlib.nullcontext()
        )
        states: dict[str, str] = {}
        with throttling:
            triggered = time.monotonic()
            run_ids = self.trigger_sweeps(window)
            for site in self.sites:
                if site.name != throttle:
                    states[site.name] = self.wait_for_run(site, run_ids[site.name])
            if throttle:
                time.sleep(max(0.0, triggered + min_throttle_s - time.monotonic()))
        if meanwhile is not None:
            meanwhile()
        for site in self.sites:
            if site.name not in states:
                states[site.name] = self.wait_for_run(site, run_ids[site.name])
        return {
            site.name: self.result(site, run_ids[site.name], states[site.name], keys[site.name])
            for site in self.sites
        }

    def warm_up(self) -> None:
        """Both sites sweep an empty hour, unmeasured: the first task runs of a fresh stack (the
        workers' first task processes, the first parse of the DAG file) are slower than any later one."""
        window = past_hour(48)
        self.run_sweeps(window, {site.name: [] for site in self.sites})


def past_hour(hours_ago: int) -> tuple[datetime, datetime]:
    """A closed hour `hours_ago` hours before this one (UTC), far from anything a schedule sweeps."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours_ago)
    return start, start + timedelta(hours=1)
