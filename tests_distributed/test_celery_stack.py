"""The compose topology on loopback: the scheduler runs jira_inbox and jira_sweep on two Celery workers.

One PostgreSQL (metadata database + `jira_store`), Redis, api-server, scheduler, dag-processor,
triggerer and two Celery workers (scripts/distributed/stack.py), a real Dovecot inbox and the Jira
stand-in in this process. The DAGs are triggered over the REST API and unpaused; nothing runs them but
the scheduler and the workers. The module fixture runs the scenario once; each test checks one outcome.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devkit import redis as redis_module
from devkit.airflow_env import DAG_IDS
from devkit.dovecot import DovecotServer, ImapAccount
from devkit.jira_standin import JiraStandin
from devkit.mail_factory import jira_notification
from devkit.postgres import PostgresServer
from devkit.processes import LOOPBACK, log_tail
from devkit.unavailable import service_unavailable
from include.jira_rules import BULK_FETCH_LIMIT_ANY_FIELDS
from include.names import (
    CONFIG_SECTION,
    EXTRA_FIELDS_OPTION,
    IMAP_CONN_ID,
    JIRA_API_POOL,
    JIRA_CONN_ID,
    TICKET_TABLE,
)
from scripts.distributed import stack as stack_module
from scripts.distributed.stack import (
    DistributedStack,
    StackError,
    StackSettings,
)

# The whole module (stack start, both DAG runs, teardown) stays far below 15 minutes on 2 cores.
pytestmark = pytest.mark.timeout(840)

STANDIN_EMAIL = "sync-bot@example.com"
INBOX_KEYS = [f"INB-{n}" for n in range(1, 151)]
MAILS_PER_KEY = 2  # 300 mails over 150 keys: every ticket is mailed twice
SWEEP_KEYS = [f"SWP-{n}" for n in range(1, 601)]
# Updated outside the swept window (and outside its lookback): the sweep must leave them alone.
OUTSIDE_WINDOW_KEYS = [f"OUT-{n}" for n in range(1, 21)]
STATUSES = ("To Do", "In Progress", "In Review", "Done")
# Long enough that two pooled fetches' bulk requests overlap, so the cap is really exercised.
JIRA_LATENCY_S = 2.0
RUN_TIMEOUT_S = 480.0
BULKFETCH_PATH = "/rest/api/3/issue/bulkfetch"
# A multi-valued custom field (a multi-select "Teams") is stored in jira_ticket.fields, and keeps bulk
# fetches at 100 issues (Jira's rule), so that the pool below has several fetches to hold back.
TEAMS_FIELD = "customfield_10020"
EXTRA_FIELDS_SETTING = f"AIRFLOW__{CONFIG_SECTION.upper()}__{EXTRA_FIELDS_OPTION.upper()}"
CONSUMER_DAG_ID = "jira_ticket_changes_example"


def _peak_overlap(spans: list[tuple[Any, Any]]) -> int:
    """The most (start, end) spans that cover one instant; at equal times an end comes before a start."""
    events = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
    current = peak = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak


class TimedJiraStandin(JiraStandin):
    """The stand-in, recording when each API request starts and ends (its latency included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spans_lock = threading.Lock()
        self.spans: list[tuple[str, float, float]] = []

    def _answer(self, method: str, path: str, query: str, body: bytes, headers: Mapping[str, str]) -> Any:
        began = time.monotonic()
        try:
            return super()._answer(method, path, query, body, headers)
        finally:
            if not path.startswith("/_standin/"):
                with self._spans_lock:
                    self.spans.append((path, began, time.monotonic()))

    def max_in_flight(self, path_prefix: str = "/") -> int:
        """The most requests under `path_prefix` that were being answered at the same instant."""
        with self._spans_lock:
            spans = [(start, end) for path, start, end in self.spans if path.startswith(path_prefix)]
        return _peak_overlap(spans)


@dataclass(frozen=True)
class SeededIssue:
    summary: str
    status: str
    assignee_email: str | None
    teams: tuple[str, ...] = ()


@dataclass
class Scenario:
    stack: DistributedStack
    jira: TimedJiraStandin
    mailbox: ImapAccount
    issues: dict[str, SeededIssue]
    run_ids: dict[str, str]
    run_states: dict[str, str]
    measurements: dict[str, float | int]


def _seed_issue(jira: JiraStandin, key: str, number: int, updated: datetime) -> SeededIssue:
    issue = SeededIssue(
        summary=f"{key}: check the nightly export",
        status=STATUSES[number % len(STATUSES)],
        assignee_email=None if number % 3 == 0 else f"dev{number % 7}@example.com",
        teams=("Red", "Blue")[: number % 3],
    )
    jira.add_issue(
        key,
        summary=issue.summary,
        status=issue.status,
        assignee_email=issue.assignee_email,
        progress=(number % 5 * 600, 3000),
        updated=updated,
        custom_fields={TEAMS_FIELD: [{"value": team} for team in issue.teams] or None},
    )
    return issue


def _sweep_window() -> tuple[datetime, datetime]:
    """A closed hour well before now, so no scheduled sweep run (the last 15 minutes) reaches it."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    return start, start + timedelta(hours=1)


def _task_log_tails(stack: DistributedStack, dag_id: str, run_id: str) -> str:
    """The end of every task log of a run whose state is not success, for a failure message."""
    assert stack.rest is not None
    parts = []
    for task_id, states in stack.rest.task_states(dag_id, run_id).items():
        if all(state == "success" for state in states):
            continue
        folder = stack.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        for log_file in sorted(folder.rglob("attempt=*.log")):
            parts.append(f"--- {log_file.relative_to(stack.home)} ({states}) ---\n{log_tail(log_file, 30)}")
    return "\n".join(parts)


def _wait_for_runs(stack: DistributedStack, run_ids: dict[str, str]) -> dict[str, str]:
    assert stack.rest is not None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    states = {dag_id: "queued" for dag_id in run_ids}
    while time.monotonic() < deadline:
        for dag_id, run_id in run_ids.items():
            if states[dag_id] not in ("success", "failed"):
                states[dag_id] = stack.rest.run_state(dag_id, run_id)
        if all(state in ("success", "failed") for state in states.values()):
            break
        # A component dying mid-run would otherwise only show up as a timeout.
        for component in stack.components.values():
            if component.name != "pools-set" and component.exit_status is not None:
                pytest.fail(
                    f"{component.name} exited with {component.exit_status} during the runs\n"
                    f"{component.log_tail()}",
                    pytrace=False,
                )
        time.sleep(2.0)
    return states


@pytest.fixture(scope="module")
def jira() -> Iterator[TimedJiraStandin]:
    standin = TimedJiraStandin(
        LOOPBACK, 0, email=STANDIN_EMAIL, api_token=f"standin-{secrets.token_hex(12)}", time_zone="UTC"
    )
    standin.add_custom_field(TEAMS_FIELD, "Teams", "multi-option")
    try:
        standin.start()
    except OSError as exc:
        pytest.fail(f"the Jira stand-in could not listen on {LOOPBACK}: {exc}")
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture(scope="module")
def stack(
    dovecot_server: DovecotServer,
    jira: TimedJiraStandin,
    tmp_path_factory: pytest.TempPathFactory,
    measurements: dict[str, float | int],
) -> Iterator[tuple[DistributedStack, ImapAccount]]:
    mailbox = dovecot_server.create_account()
    root_env = os.environ.get("JMS_DISTRIBUTED_ROOT")
    root = Path(root_env) if root_env else tmp_path_factory.mktemp("distributed")
    connections = {IMAP_CONN_ID: mailbox.airflow_conn(), JIRA_CONN_ID: jira.airflow_conn()}
    distributed = DistributedStack(
        root,
        connections,
        # Poll mode here (the every-minute cron of before); tests_distributed/test_inbox_idle.py runs idle.
        StackSettings(
            workers=2,
            worker_concurrency=2,
            jira_pool_slots=2,
            inbox_mode="poll",
            airflow_settings={EXTRA_FIELDS_SETTING: TEAMS_FIELD},
        ),
    )
    try:
        distributed.start()
    except StackError as exc:
        service_unavailable(f"The distributed stack did not come up (logs in {root}):\n{exc}")
    measurements["stack start (postgres → all healthy)"] = distributed.timings["start_total_s"]
    measurements["  airflow db migrate"] = distributed.timings["db_migrate_s"]
    measurements["  components launched → api-server healthy"] = distributed.timings["ready_api-server_s"]
    measurements["  components launched → both workers answer"] = distributed.timings["ready_workers_s"]
    try:
        yield distributed, mailbox
    finally:
        distributed.stop()
        measurements["stack stop (SIGTERM → all gone)"] = distributed.timings["stop_s"]
        for label, seconds in distributed.timings.items():
            if label.startswith("stop_") and label != "stop_s":
                measurements[f"  {label.removeprefix('stop_').removesuffix('_s')}"] = seconds
        mailbox.close()


@pytest.fixture(scope="module")
def scenario(
    stack: tuple[DistributedStack, ImapAccount], jira: TimedJiraStandin, measurements: dict[str, float | int]
) -> Scenario:
    """Seed Jira and the inbox, trigger both DAGs over REST, unpause them, and wait for the runs."""
    distributed, mailbox = stack
    assert distributed.rest is not None
    issues: dict[str, SeededIssue] = {}
    old = datetime.now(UTC) - timedelta(days=2)
    for number, key in enumerate(INBOX_KEYS, start=1):
        issues[key] = _seed_issue(jira, key, number, old)
    window_start, window_end = _sweep_window()
    step = (window_end - window_start) / len(SWEEP_KEYS)
    for number, key in enumerate(SWEEP_KEYS, start=1):
        issues[key] = _seed_issue(jira, key, number, window_start + step * (number - 1))
    for number, key in enumerate(OUTSIDE_WINDOW_KEYS, start=1):
        before = window_start - timedelta(minutes=30)
        after = window_end + timedelta(minutes=30)
        issues[key] = _seed_issue(jira, key, number, before if number % 2 else after)
    # Mail is from jira@<host of jira_default> with links to that host: trusted by the DAG's defaults,
    # so scheduled runs (default params) would settle it the same way as the triggered one.
    site_host = jira.url.split("://", 1)[1].split(":", 1)[0]
    for _ in range(MAILS_PER_KEY):
        for key in INBOX_KEYS:
            mailbox.drop(jira_notification(key, site=site_host, summary=issues[key].summary))
    jira.latency = JIRA_LATENCY_S
    jira.clear_requests()

    began = time.monotonic()
    # Triggered while paused. On unpausing, the schedule may put a jira_inbox run of its own (default
    # params: 200 mails) ahead of this one; the checks are on the end state, whichever run took which mail.
    run_ids = {
        "jira_inbox": distributed.rest.trigger("jira_inbox", {"max_messages": 1000}),
        "jira_sweep": distributed.rest.trigger(
            "jira_sweep", {"since": window_start.isoformat(), "until": window_end.isoformat()}
        ),
    }
    # The example consumer (paused when it appears) is unpaused too: the stores' asset events trigger it.
    deadline = time.monotonic() + 60
    while not distributed.rest.has_dag(CONSUMER_DAG_ID) and time.monotonic() < deadline:
        time.sleep(1.0)
    for dag_id in (*DAG_IDS, CONSUMER_DAG_ID):
        distributed.rest.set_paused(dag_id, False)
    run_states = _wait_for_runs(distributed, run_ids)
    measurements["both DAG runs (trigger → finished)"] = time.monotonic() - began
    return Scenario(distributed, jira, mailbox, issues, run_ids, run_states, measurements)


def test_a_component_that_dies_fails_the_start_with_its_log_and_the_rest_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken_redis = tmp_path / "redis-server"
    broken_redis.write_text("#!/bin/sh\necho 'Could not create server TCP listening socket' >&2\nexit 1\n")
    broken_redis.chmod(0o755)
    monkeypatch.setattr(redis_module, "REDIS_BINARY", str(broken_redis))
    started: list[PostgresServer] = []
    real_start_postgres = stack_module.start_postgres

    def start_postgres() -> PostgresServer:
        started.append(real_start_postgres())
        return started[-1]

    monkeypatch.setattr(stack_module, "start_postgres", start_postgres)
    distributed = DistributedStack(tmp_path / "stack", {})

    with pytest.raises(StackError) as failure:
        distributed.start()

    assert "redis exited with status 1" in str(failure.value)
    assert "Could not create server TCP listening socket" in str(failure.value)
    assert len(started) == 1 and not started[0].data_dir.exists(), "PostgreSQL was left running"


def _assert_run_succeeded(scenario: Scenario, dag_id: str) -> None:
    stack, run_id = scenario.stack, scenario.run_ids[dag_id]
    state = scenario.run_states[dag_id]
    if state != "success":
        assert stack.rest is not None
        pytest.fail(
            f"{dag_id} run {run_id} ended {state!r}: {stack.rest.task_states(dag_id, run_id)}\n"
            f"{_task_log_tails(stack, dag_id, run_id)}\n{stack.diagnostics()}",
            pytrace=False,
        )


def _consumer_results(
    stack: DistributedStack, sources: set[str], timeout_s: float = 180.0
) -> list[dict[str, Any]]:
    """The return values of the consumer's runs, once they are all done and have seen every source.

    Each store's asset event queues a consumer run of its own (or joins one still queued), and the
    sweep's store may end well after the inbox's consumer run has finished, so "all consumer runs
    done" alone can come too early: wait until the runs' results name every expected source.
    """
    assert stack.rest is not None
    deadline = time.monotonic() + timeout_s
    while True:
        runs = stack.rest.request("GET", f"/api/v2/dags/{CONSUMER_DAG_ID}/dagRuns", params={"limit": 100})
        states = [run["state"] for run in runs["dag_runs"]]
        if states and all(state in ("success", "failed") for state in states):
            results = [_consumer_result(stack, run) for run in runs["dag_runs"]]
            if sources <= {source for result in results for source in result["sources"]}:
                return results
        if time.monotonic() > deadline:
            return [_consumer_result(stack, run) for run in runs["dag_runs"] if run["state"] == "success"]
        time.sleep(2.0)


def _consumer_result(stack: DistributedStack, run: dict[str, Any]) -> dict[str, Any]:
    assert stack.rest is not None
    assert run["state"] == "success", f"{CONSUMER_DAG_ID} run {run['dag_run_id']} ended {run['state']}"
    assert run["run_type"] == "asset_triggered", run
    entry = stack.rest.request(
        "GET",
        f"/api/v2/dags/{CONSUMER_DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/read_changed_tickets"
        "/xcomEntries/return_value",
        params={"deserialize": "true"},
    )
    value = entry["value"]
    # Depending on the serializer the API hands back the dict, its JSON, or its Python repr.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = ast.literal_eval(value)
    return value


def test_the_stores_asset_events_trigger_the_example_consumer_which_sees_the_changed_keys(
    scenario: Scenario,
) -> None:
    _assert_run_succeeded(scenario, "jira_inbox")
    _assert_run_succeeded(scenario, "jira_sweep")

    results = _consumer_results(scenario.stack, {"inbox", "sweep"})

    assert results, f"{CONSUMER_DAG_ID} never ran"
    seen = {key: status for result in results for key, status in result["statuses"].items()}
    sources = {source for result in results for source in result["sources"]}
    assert sources == {"inbox", "sweep"}
    # Every inbox ticket is named (150 per store, below the 500-key bound) with its stored status.
    assert {key: seen.get(key) for key in INBOX_KEYS} == {
        key: scenario.issues[key].status for key in INBOX_KEYS
    }
    # The sweep changed 600: its event names 500 and says the list is truncated.
    assert any(result["keys_truncated"] for result in results)
    assert len(set(SWEEP_KEYS) & set(seen)) == 500
    scenario.measurements[f"{CONSUMER_DAG_ID} runs (asset-triggered)"] = len(results)


def test_the_multi_valued_extra_field_is_stored_as_json(scenario: Scenario) -> None:
    _assert_run_succeeded(scenario, "jira_sweep")
    assert scenario.stack.store is not None
    with scenario.stack.store.connect() as conn:
        stored = dict(conn.execute(f"SELECT key, fields FROM {TICKET_TABLE}").fetchall())
    expected = {
        key: {TEAMS_FIELD: [{"value": team} for team in issue.teams] or None}
        for key, issue in scenario.issues.items()
        if key in stored
    }
    assert stored == expected


def _stored_rows(stack: DistributedStack) -> dict[str, tuple[Any, ...]]:
    assert stack.store is not None
    with stack.store.connect() as conn:
        rows = conn.execute(
            f"SELECT key, summary, status, assignee_email, source FROM {TICKET_TABLE}"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def _expected_row(issue: SeededIssue, source: str) -> tuple[Any, ...]:
    return (issue.summary, issue.status, issue.assignee_email, source)


def test_inbox_burst_is_stored_and_every_mail_is_marked_seen(scenario: Scenario) -> None:
    _assert_run_succeeded(scenario, "jira_inbox")
    rows = _stored_rows(scenario.stack)
    inbox_rows = {key: row for key, row in rows.items() if row[3] == "inbox"}
    assert inbox_rows == {key: _expected_row(scenario.issues[key], "inbox") for key in INBOX_KEYS}

    flags = scenario.mailbox.flags_by_uid()
    assert len(flags) == len(INBOX_KEYS) * MAILS_PER_KEY, "mail was lost or duplicated"
    assert [uid for uid, seen in flags.items() if "\\Seen" not in seen] == []
    assert [uid for uid, seen in flags.items() if "$JiraRejected" in seen] == []
    settling_runs = scenario.stack.metadata_rows(
        "SELECT count(*) FROM task_instance WHERE dag_id = 'jira_inbox' AND task_id = 'mark_mail_seen' "
        "AND state = 'success'"
    )[0][0]
    scenario.measurements["jira_inbox runs that settled mail"] = settling_runs


def test_sweep_stores_exactly_the_window_with_source_sweep(scenario: Scenario) -> None:
    _assert_run_succeeded(scenario, "jira_sweep")
    rows = _stored_rows(scenario.stack)
    sweep_rows = {key: row for key, row in rows.items() if row[3] == "sweep"}
    assert sweep_rows == {key: _expected_row(scenario.issues[key], "sweep") for key in SWEEP_KEYS}
    assert not set(OUTSIDE_WINDOW_KEYS) & set(rows)
    assert len(rows) == len(INBOX_KEYS) + len(SWEEP_KEYS)

    fetches = scenario.stack.metadata_rows(
        "SELECT count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = 'fetch_tickets'",
        ("jira_sweep", scenario.run_ids["jira_sweep"]),
    )[0][0]
    assert fetches == -(-len(SWEEP_KEYS) // BULK_FETCH_LIMIT_ANY_FIELDS)


def test_task_instances_ran_on_both_celery_workers(scenario: Scenario) -> None:
    # Every run counts: the schedule may have started a jira_inbox run before the triggered one.
    rows = scenario.stack.metadata_rows(
        "SELECT dag_id, run_id, task_id, map_index, hostname FROM task_instance WHERE state = 'success'"
    )
    by_host: dict[str, list[str]] = {}
    for dag_id, run_id, task_id, map_index, hostname in rows:
        by_host.setdefault(hostname, []).append(f"{dag_id}/{run_id}/{task_id}[{map_index}]")
    for hostname, tasks in sorted(by_host.items()):
        scenario.measurements[f"task instances run on {hostname}"] = len(tasks)
    assert set(by_host) == set(scenario.stack.worker_hostnames), json.dumps(by_host, indent=1)


def test_jira_pool_caps_concurrent_jira_requests_across_workers(scenario: Scenario) -> None:
    _assert_run_succeeded(scenario, "jira_inbox")
    _assert_run_succeeded(scenario, "jira_sweep")
    settings = scenario.stack.settings
    assert scenario.stack.rest is not None
    pool = scenario.stack.rest.request("GET", f"/api/v2/pools/{JIRA_API_POOL}")
    assert pool["slots"] == settings.jira_pool_slots
    # Without the pool, the workers could run this many fetches at once.
    assert settings.workers * settings.worker_concurrency > settings.jira_pool_slots

    pools = scenario.stack.metadata_rows(
        "SELECT DISTINCT pool FROM task_instance WHERE task_id = 'fetch_tickets' AND run_id IN (%s, %s)",
        tuple(scenario.run_ids.values()),
    )
    assert pools == [(JIRA_API_POOL,)]
    # The scheduler's side of the cap: pooled task instances (every run, both workers) never overlapped more.
    pooled_runs = scenario.stack.metadata_rows(
        "SELECT start_date, end_date FROM task_instance WHERE pool = %s AND start_date IS NOT NULL",
        (JIRA_API_POOL,),
    )
    peak_tasks = _peak_overlap([(start, end) for start, end in pooled_runs if end is not None])
    scenario.measurements["peak pooled task instances running"] = peak_tasks
    assert peak_tasks <= settings.jira_pool_slots
    bulk_fetches = scenario.jira.request_count(BULKFETCH_PATH, method="POST")
    expected_fetches = sum(-(-n // BULK_FETCH_LIMIT_ANY_FIELDS) for n in (len(INBOX_KEYS), len(SWEEP_KEYS)))
    # Not exact: a scheduled jira_inbox run may have taken part of the mail, with fetches of its own.
    assert bulk_fetches >= expected_fetches
    peak_bulk = scenario.jira.max_in_flight(BULKFETCH_PATH)
    peak_any = scenario.jira.max_in_flight("/rest/")
    measured = scenario.measurements
    measured["Jira bulk fetches"] = bulk_fetches
    measured["peak bulk fetches in flight"] = peak_bulk
    measured["peak Jira requests in flight"] = peak_any
    assert peak_any <= settings.jira_pool_slots, f"{peak_any} Jira requests in flight at once"
    # Equal, not just below: the fetches did overlap, so the cap was what held them back.
    assert peak_bulk == settings.jira_pool_slots, (
        f"at most {peak_bulk} of {bulk_fetches} bulk fetches were in flight at once"
    )


def test_in_poll_mode_the_every_minute_schedule_stores_new_mail(scenario: Scenario) -> None:
    stack, mailbox = scenario.stack, scenario.mailbox
    assert stack.rest is not None
    assert stack.rest.request("GET", "/api/v2/dags/jira_inbox")["timetable_summary"] == "* * * * *"
    key = "INB-1"
    scenario.jira.update_issue(key, summary="INB-1: polled in again")
    site_host = scenario.jira.url.split("://", 1)[1].split(":", 1)[0]
    dropped = time.monotonic()
    mailbox.drop(jira_notification(key, site=site_host, summary="INB-1: polled in again"))
    deadline = dropped + 150  # the next minute, plus the run
    while time.monotonic() < deadline:
        if _stored_rows(stack)[key][0] == "INB-1: polled in again":
            break
        time.sleep(1.0)
    else:
        pytest.fail(f"the polled mail was not stored within 150 s\n{stack.diagnostics()}", pytrace=False)
    scenario.measurements["poll mode: mail → row"] = time.monotonic() - dropped
    scheduled = stack.metadata_rows(
        "SELECT count(*) FROM dag_run WHERE dag_id = 'jira_inbox' AND run_type = 'scheduled' "
        "AND state = 'success'"
    )[0][0]
    assert scheduled >= 1


def test_stop_ends_every_process_the_stack_started(stack: tuple[DistributedStack, ImapAccount]) -> None:
    distributed, _ = stack
    groups = {name: c.process.pid for name, c in distributed.components.items() if c.process is not None}
    assert {"redis", "api-server", "scheduler", "dag-processor", "triggerer", "worker-1", "worker-2"} <= set(
        groups
    )
    distributed.stop()
    survivors = []
    for name, pgid in groups.items():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            continue
        survivors.append(name)
    assert survivors == [], f"process groups still alive after stop(): {survivors}"
