"""Idle mode on two platforms: the triggerer's IMAP IDLE watcher wakes jira_inbox within seconds.

The platforms: the native Celery stack (scripts/distributed/stack.py, one Celery worker) and
`airflow standalone` (scripts/distributed/standalone.py, LocalExecutor, what `make demo` runs), each
in inbox_mode idle with a real Dovecot and the Jira stand-in. jira_inbox is only unpaused, never
triggered: every run here is made by the asset the watcher updates (or by the 10-minute safety
cron). The module fixture runs the whole story once per platform, in order, and each test checks
one outcome of it:

1. a mail arrives and its row is stored (timed);
2. Dovecot restarts while the watcher is in IDLE, and the next mail is still stored;
3. a 500-mail burst is stored by a few runs;
4. wrong credentials give one clear line in the triggerer log, the watcher tries again only once
   an hour (no account lockout from retries), and the refusal is recorded for the Jira sync page.
   Mail keeps flowing meanwhile through the 10-minute safety cron, whose runs log in afresh (not
   waited for here: it would take up to 10 minutes per platform).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devkit.dovecot import DovecotServer, ImapAccount
from devkit.jira_standin import JiraStandin
from devkit.mail_factory import jira_notification
from devkit.processes import LOOPBACK
from devkit.unavailable import service_unavailable
from include.names import IMAP_CONN_ID, JIRA_CONN_ID, TICKET_TABLE, WATCH_STATE_TABLE
from scripts.distributed.stack import (
    DistributedStack,
    StackError,
    StackSettings,
    record_process_group,
)
from scripts.distributed.standalone import StandaloneAirflow

pytestmark = pytest.mark.timeout(600)

WATCHING = "Watching INBOX on IMAP connection 'imap_default' with IMAP IDLE"
BURST = 500
BURST_KEYS = [f"BUR-{n}" for n in range(1, 101)]  # 5 mails per key
SINGLE_KEYS = ["IDL-1", "IDL-2", "IDL-3"]
STORE_TIMEOUT_S = 120.0
PLATFORMS = {"celery": DistributedStack, "standalone": StandaloneAirflow}


@dataclass
class IdleStory:
    platform: str
    stack: DistributedStack
    mailbox: ImapAccount
    latencies_s: dict[str, float] = field(default_factory=dict)
    burst_runs: int = 0
    burst_unseen_left: int = -1
    refusal_lines: list[str] = field(default_factory=list)
    refused_logins: list[tuple] = field(default_factory=list)
    runs_by_type: dict[str, int] = field(default_factory=dict)


def _stored_keys(stack: DistributedStack) -> set[str]:
    return {row[0] for row in stack.store_rows(f"SELECT key FROM {TICKET_TABLE}")}


def _wait(what: str, ready: Callable[[], bool], stack: DistributedStack, timeout_s: float) -> float:
    """Seconds until `ready()`; fails with every component's log tail after `timeout_s`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if ready():
            return time.monotonic() - began
        for component in stack.components.values():
            if component.name != "pools-set" and component.exit_status is not None:
                pytest.fail(f"{component.name} exited while waiting for {what}\n{component.log_tail()}")
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{stack.diagnostics()}", pytrace=False)


def _triggerer_log(stack: DistributedStack) -> str:
    return stack.component_log("triggerer")


def _runs_started_since(stack: DistributedStack, since: datetime) -> int:
    # By start_date: an asset-triggered run's run_after is when its queue entry was made, which can
    # be before `since` when events arrived while the previous run was still running.
    return stack.metadata_rows(
        "SELECT count(*) FROM dag_run WHERE dag_id = 'jira_inbox' AND start_date >= %s", (since,)
    )[0][0]


@pytest.fixture(scope="module", params=list(PLATFORMS))
def idle_story(
    request: pytest.FixtureRequest,
    dovecot_server: DovecotServer,
    tmp_path_factory: pytest.TempPathFactory,
    measurements: dict[str, float | int],
) -> Iterator[IdleStory]:
    platform = request.param
    jira = JiraStandin(LOOPBACK, 0, email="idle-bot@example.com", api_token=secrets.token_hex(12))
    jira.start()
    mailbox = dovecot_server.create_account()
    root_env = os.environ.get("JMS_DISTRIBUTED_ROOT")
    name = f"idle-{platform}"
    root = (Path(root_env) / name) if root_env else tmp_path_factory.mktemp(name)
    root.mkdir(parents=True, exist_ok=True)
    stack = PLATFORMS[platform](
        root,
        {IMAP_CONN_ID: mailbox.airflow_conn(), JIRA_CONN_ID: jira.airflow_conn()},
        StackSettings(workers=1, worker_concurrency=4, jira_pool_slots=2, inbox_mode="idle"),
    )
    try:
        try:
            stack.start()
        except StackError as exc:
            service_unavailable(f"The {platform} platform did not come up (logs in {root}):\n{exc}")
        measurements[f"idle mode, {platform}: start"] = stack.timings["start_total_s"]
        yield _tell(platform, stack, jira, dovecot_server, mailbox, measurements)
    finally:
        stack.stop()
        jira.stop()
        mailbox.close()


def _tell(
    platform: str,
    stack: DistributedStack,
    jira: JiraStandin,
    server: DovecotServer,
    mailbox: ImapAccount,
    measurements: dict[str, float | int],
) -> IdleStory:
    assert stack.rest is not None
    story = IdleStory(platform, stack, mailbox)
    site = jira.url.split("://", 1)[1].split(":", 1)[0]
    old = datetime.now(UTC) - timedelta(days=1)
    for key in SINGLE_KEYS + BURST_KEYS:
        jira.add_issue(key, summary=f"{key}: idle", status="To Do", updated=old)

    stack.rest.set_paused("jira_inbox", False)
    _wait("the watcher in IDLE", lambda: WATCHING in _triggerer_log(stack), stack, 90)

    def deliver_and_time(key: str) -> float:
        mailbox.drop(jira_notification(key, site=site, summary=f"{key}: idle"))
        return _wait(f"{key} stored", lambda: key in _stored_keys(stack), stack, STORE_TIMEOUT_S)

    # 1. One mail, one row.
    story.latencies_s["first mail"] = deliver_and_time("IDL-1")

    # 2. Dovecot restarts under the idling watcher.
    server.restart()
    record_process_group(server.process.pid, "dovecot")
    mailbox.reconnect()
    story.latencies_s["after a Dovecot restart"] = deliver_and_time("IDL-2")

    # 3. A burst: 500 mails at once (Maildir delivery, as a local delivery agent does it).
    burst_began = datetime.now(UTC)
    for key in BURST_KEYS:
        mailbox.drop(jira_notification(key, site=site, summary=f"{key}: idle"), n=BURST // len(BURST_KEYS))
    story.latencies_s["500-mail burst, all stored and seen"] = _wait(
        "the burst stored and seen",
        lambda: mailbox.unseen_count() == 0 and set(BURST_KEYS) <= _stored_keys(stack),
        stack,
        300,
    )
    story.burst_runs = _runs_started_since(stack, burst_began)
    story.burst_unseen_left = mailbox.unseen_count()

    # 4. Wrong credentials: the password changes on the server, which restarts (so the watcher logs
    # in again and is refused); 15 s later the refusal's log lines and recorded state are read.
    log_before = len(_triggerer_log(stack))
    server.set_password(mailbox.user, "changed-" + secrets.token_hex(8))
    server.restart()
    record_process_group(server.process.pid, "dovecot")
    time.sleep(15)
    story.refusal_lines = [
        line
        for line in _triggerer_log(stack)[log_before:].splitlines()
        if "refused the password login" in line
    ]
    story.refused_logins = stack.store_rows(f"SELECT imap_conn_id, mailbox FROM {WATCH_STATE_TABLE}")
    server.set_password(mailbox.user, mailbox.password)
    mailbox.reconnect()

    for run_type, count in stack.metadata_rows(
        "SELECT run_type, count(*) FROM dag_run WHERE dag_id = 'jira_inbox' GROUP BY run_type"
    ):
        story.runs_by_type[run_type] = count
    for label, seconds in story.latencies_s.items():
        measurements[f"idle mode, {platform}: {label}"] = seconds
    measurements[f"idle mode, {platform}: runs for the 500-mail burst"] = story.burst_runs
    return story


def test_a_mail_is_stored_within_seconds_by_a_run_the_watcher_started(idle_story: IdleStory) -> None:
    assert idle_story.latencies_s["first mail"] < 60
    assert idle_story.runs_by_type.get("asset_triggered", 0) >= 1
    # Nothing but the watcher and the safety cron started runs (the DAG was never triggered).
    assert set(idle_story.runs_by_type) <= {"asset_triggered", "scheduled"}


def test_the_next_mail_after_a_dovecot_restart_is_still_stored(idle_story: IdleStory) -> None:
    assert idle_story.latencies_s["after a Dovecot restart"] < 60
    log = _triggerer_log(idle_story.stack)
    assert "Watching INBOX on IMAP connection 'imap_default' stopped:" in log
    assert log.count(WATCHING) >= 2, "the watcher did not log in again after the restart"


def test_a_500_mail_burst_is_stored_by_a_few_runs(idle_story: IdleStory) -> None:
    assert idle_story.burst_unseen_left == 0
    # max_messages is 200 a run: 3 runs take 500; one more may start while the burst is landing.
    assert 3 <= idle_story.burst_runs <= 5, f"{idle_story.burst_runs} runs for {BURST} mails"


def test_a_refused_login_is_logged_once_and_tried_again_only_an_hour_later(idle_story: IdleStory) -> None:
    lines = idle_story.refusal_lines
    # One attempt in 15 s, where the reconnect backoff (2, 4, 8 s) would have made three or four.
    assert len(lines) == 1, "\n".join(lines)
    assert "check the connection's login and password" in lines[0]
    assert "trying again once an hour (next in 3600 s)" in lines[0]
    assert idle_story.mailbox.password not in _triggerer_log(idle_story.stack)


def test_a_refused_login_is_recorded_for_the_jira_sync_page(idle_story: IdleStory) -> None:
    assert [tuple(row) for row in idle_story.refused_logins] == [("imap_default", "INBOX")]
