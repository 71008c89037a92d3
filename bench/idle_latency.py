"""Idle vs poll on the native Celery stack: mail-to-row latency, and jira_inbox runs with an empty inbox.

Command: `.venv/bin/python -m bench.idle_latency` (part of `make bench`; about 35 minutes with the
defaults). Both modes run in one session, one after the other, each on a fresh stack
(scripts/distributed/stack.py: PostgreSQL, Redis, api-server, scheduler, dag-processor, triggerer,
one Celery worker) with its own Dovecot account and the Jira stand-in; jira_inbox is only unpaused,
never triggered, so every run is one the mode's schedule (or watcher) made.

1. Latency: `--mails` Jira mails, one ticket each, delivered into the Maildir one at a time with
   gaps drawn uniformly from `--gap-min-s`..`--gap-max-s` (seeded, so both modes get the same
   gaps), so they land at every phase of the poll cron. A mail's latency is the time from its
   delivery to its row appearing in `jira_ticket` (the store is read every 0.25 s).
2. Empty inbox: nothing is delivered for `--empty-minutes`; the runs started in that window are
   counted and scaled to an hour. The window is short of an hour, so the hourly figure is an
   extrapolation, shown next to what the schedule itself allows. The scheduler's CPU time over the
   window (its process and children, from /proc via psutil) is what its idle loop costs.

Variants (`--variants`): `idle` and `poll` run with the compose file's latency settings (the Celery
worker's preload, jira_mail_sync.worker_preload, and a 0.2 s scheduler idle sleep);
`idle-airflow-defaults` runs idle mode without them, so their effect is measured side by side;
`idle-standalone` is idle mode under `airflow standalone` (what `make demo` runs), latency only.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from bench.report import write_section
from devkit.dovecot import start_dovecot
from devkit.jira_standin import JiraStandin
from devkit.mail_factory import jira_notification
from devkit.processes import LOOPBACK
from include.names import IMAP_CONN_ID, JIRA_CONN_ID, TICKET_TABLE
from scripts.distributed.stack import DistributedStack, StackSettings
from scripts.distributed.standalone import StandaloneAirflow

WATCHING = "with IMAP IDLE"
SCHEDULE_RUNS_PER_HOUR = {"idle": "6 (safety cron */10) + 1 per mail event", "poll": "60 (cron * * * * *)"}


@dataclass(frozen=True)
class Variant:
    mode: str
    # The compose file's latency settings (StackSettings.latency_settings), or Airflow's defaults.
    latency_settings: bool = True
    platform: type[DistributedStack] = DistributedStack
    # Whether the empty-inbox phase runs: its run count depends on the mode alone.
    empty_phase: bool = True


VARIANTS = {
    "idle": Variant("idle"),
    "poll": Variant("poll"),
    "idle-airflow-defaults": Variant("idle", latency_settings=False),
    # What `make demo` runs: airflow standalone, LocalExecutor (the README's demo figure).
    "idle-standalone": Variant("idle", platform=StandaloneAirflow, empty_phase=False),
}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its living children."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


@dataclass
class ModeResult:
    variant: str
    mode: str
    latencies_s: list[float] = field(default_factory=list)
    lost: int = 0
    latency_runs: int = 0
    empty_runs: int = 0
    empty_minutes: float = 0.0
    scheduler_cpu_s: float = 0.0
    start_s: float = 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return float("nan")
        if len(ordered) == 1:
            return ordered[0]
        return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def _runs_between(stack: DistributedStack, since: datetime, until: datetime) -> int:
    return stack.metadata_rows(
        "SELECT count(*) FROM dag_run WHERE dag_id = 'jira_inbox' AND start_date >= %s AND start_date < %s",
        (since, until),
    )[0][0]


def measure(variant: str, args: argparse.Namespace, gaps: list[float]) -> ModeResult:
    spec = VARIANTS[variant]
    result = ModeResult(variant, spec.mode)
    server = start_dovecot()
    jira = JiraStandin(LOOPBACK, 0, email="bench@example.com", api_token=secrets.token_hex(12))
    jira.start()
    mailbox = server.create_account()
    root = Path(tempfile.mkdtemp(prefix=f"jms-bench-idle-{variant}-"))
    stack = spec.platform(
        root,
        {IMAP_CONN_ID: mailbox.airflow_conn(), JIRA_CONN_ID: jira.airflow_conn()},
        StackSettings(
            workers=1,
            worker_concurrency=4,
            jira_pool_slots=2,
            inbox_mode=spec.mode,
            latency_settings=spec.latency_settings,
        ),
    )
    try:
        stack.start()
        result.start_s = stack.timings["start_total_s"]
        assert stack.rest is not None
        site = jira.url.split("://", 1)[1].split(":", 1)[0]
        keys = [f"LAT-{n}" for n in range(1, args.mails + 1)]
        old = datetime.now(UTC) - timedelta(days=1)
        for key in keys:
            jira.add_issue(key, summary=f"{key}: latency", status="To Do", updated=old)
        stack.rest.set_paused("jira_inbox", False)
        if spec.mode == "idle":
            deadline = time.monotonic() + 120
            while WATCHING not in stack.component_log("triggerer"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the watcher did not start\n{stack.diagnostics()}")
                time.sleep(0.5)
        # Unpausing makes a first run at once in either mode; let it finish before measuring.
        time.sleep(args.settle_s)

        began = datetime.now(UTC)
        delivered: dict[str, float] = {}
        stored_at: dict[str, float] = {}

        def observe() -> None:
            rows = stack.store_rows(f"SELECT key FROM {TICKET_TABLE}")
            now = time.monotonic()
            for (key,) in rows:
                stored_at.setdefault(key, now)

        for key, gap in zip(keys, gaps, strict=True):
            mailbox.drop(jira_notification(key, site=site, summary=f"{key}: latency"))
            delivered[key] = time.monotonic()
            wait_until = time.monotonic() + gap
            while time.monotonic() < wait_until:
                observe()
                time.sleep(0.25)
        drain_until = time.monotonic() + args.drain_s
        while time.monotonic() < drain_until and len(stored_at) < len(keys):
            observe()
            time.sleep(0.25)
        result.latencies_s = [stored_at[k] - delivered[k] for k in keys if k in stored_at]
        result.lost = len(keys) - len(result.latencies_s)
        ended = datetime.now(UTC)
        result.latency_runs = _runs_between(stack, began, ended)

        if spec.empty_phase:
            # Let the last run finish, then count runs over an empty inbox.
            time.sleep(args.settle_s)
            scheduler = stack.components["scheduler"].process
            assert scheduler is not None
            empty_began = datetime.now(UTC)
            cpu_before = _cpu_seconds(scheduler.pid)
            time.sleep(args.empty_minutes * 60)
            result.scheduler_cpu_s = _cpu_seconds(scheduler.pid) - cpu_before
            empty_ended = datetime.now(UTC)
            result.empty_runs = _runs_between(stack, empty_began, empty_ended)
            result.empty_minutes = (empty_ended - empty_began).total_seconds() / 60
    finally:
        stack.stop()
        jira.stop()
        mailbox.close()
        server.stop()
    return result


def report(results: list[ModeResult], args: argparse.Namespace, command: str) -> str:
    rows = []
    for r in results:
        measured = (
            f"| {r.variant} | {len(r.latencies_s)} (lost {r.lost}) | {r.percentile(50):.1f} s | "
            f"{r.percentile(95):.1f} s | {max(r.latencies_s, default=float('nan')):.1f} s | {r.latency_runs} |"
        )
        schedule = SCHEDULE_RUNS_PER_HOUR[r.mode]
        if not r.empty_minutes:  # a latency-only variant
            rows.append(f"{measured} not measured | | {schedule} | |")
            continue
        per_hour = r.empty_runs * 60 / r.empty_minutes
        cpu_per_min = r.scheduler_cpu_s / r.empty_minutes
        rows.append(
            f"{measured} {r.empty_runs} in {r.empty_minutes:.1f} min | {per_hour:.0f} | {schedule} | "
            f"{cpu_per_min:.1f} s |"
        )
    table = "\n".join(rows)
    return f"""## Idle vs poll: mail-to-row latency and empty-inbox runs (native Celery stack)

Command: `{command}` (part of `make bench`). All variants in one session, one after the other, each on a
fresh native stack (PostgreSQL, Redis, api-server, scheduler, dag-processor, triggerer, one Celery
worker with 4 slots) with a real Dovecot and the Jira stand-in. `jira_inbox` is only unpaused: every
run is one the mode's schedule or the IDLE watcher started. `idle` and `poll` run with the compose
file's latency settings (the Celery worker imports `jira_mail_sync.worker_preload` once, so the task
processes it forks start sooner; the scheduler's idle sleep is 0.2 s instead of 1 s);
`idle-airflow-defaults` is idle mode without them. `idle-standalone` is what `make demo` runs:
`airflow standalone` (LocalExecutor, scheduler idle sleep 0.2 s, no Celery worker to preload), on
the same PostgreSQL set-up; its empty-inbox phase is skipped (the schedule is idle mode's).

Latency: {args.mails} mails, one ticket each, delivered one at a time with gaps of
{args.gap_min_s:.0f}–{args.gap_max_s:.0f} s (the same seeded gaps in every variant), from delivery
into the Maildir to the row in `jira_ticket` (read every 0.25 s). Empty inbox: runs started in a
window of {args.empty_minutes:.0f} minutes with nothing delivered, scaled to an hour (an
extrapolation: the window is shorter than an hour; the schedule column says what the schedule
allows). Scheduler CPU: its process and children over that window, per minute.

| variant | mails stored | p50 | p95 | max | runs during the latency phase | runs, empty inbox | → per hour | schedule allows per hour | scheduler CPU per minute, empty inbox |
|---|---:|---:|---:|---:|---:|---:|---:|---|---:|
{table}

Goals (issue #13): idle p50 ≤ 10 s; at most 6 empty-inbox runs an hour in idle mode, where poll makes 60.
Stack start-up: {", ".join(f"{r.variant} {r.start_s:.0f} s" for r in results)}.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--mails", type=int, default=20)
    parser.add_argument("--gap-min-s", type=float, default=5.0)
    parser.add_argument("--gap-max-s", type=float, default=15.0)
    parser.add_argument("--empty-minutes", type=float, default=10.0)
    parser.add_argument("--settle-s", type=float, default=45.0)
    parser.add_argument("--drain-s", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    gaps = [rng.uniform(args.gap_min_s, args.gap_max_s) for _ in range(args.mails)]
    results = []
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    for variant in variants:
        print(f"== {variant}", flush=True)
        results.append(measure(variant, args, gaps))
        r = results[-1]
        print(
            f"{variant}: p50 {r.percentile(50):.1f} s, p95 {r.percentile(95):.1f} s, lost {r.lost}, "
            f"{r.latency_runs} runs for the mails, {r.empty_runs} runs in {r.empty_minutes:.1f} empty minutes, "
            f"scheduler CPU {r.scheduler_cpu_s:.1f} s",
            flush=True,
        )
    command = ".venv/bin/python -m bench.idle_latency"
    defaults = parser.parse_args([])
    changed = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v != getattr(defaults, k)]
    if changed:
        command += " " + " ".join(changed)
    section = report(results, args, command)
    if args.no_write:
        print(section)
    else:
        print(f"wrote {write_section('idle', section)}")


if __name__ == "__main__":
    main()
