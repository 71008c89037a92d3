"""Benchmark: a burst of 2,000 unseen Jira mails over 500 keys: our inbox pipeline (bulk fetches of 1000
and of 100) against the seed's loop.

Run it with `.venv/bin/python -m bench.inbox_burst` (or `make bench`). It starts a real Dovecot and
the Jira stand-in (50 ms added to every request), runs each pipeline in its own child process (so
peak memory is that pipeline's alone) against a fresh mailbox and a fresh SQLite store, then times
one whole `jira_inbox` run through `airflow dags test`, and writes the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devkit.imap_account import adopt_imaplib

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

from bench.airflow_runs import dags_test, migrated_airflow  # noqa: E402
from include.names import IMAP_CONN_ID, JIRA_CONN_ID, STORE_CONN_ID, TICKET_TABLE  # noqa: E402

SITE = "acme.atlassian.net"
TRUSTED = [f"jira@{SITE}"]
MESSAGES = 2000
KEYS = 500
LATENCY_S = 0.05
MAIL_PADDING = 8 * 1024  # text + HTML copies make a ~20 KB message, like the real fixtures


class CountingIMAP4(imaplib.IMAP4):
    """imaplib client that counts every command it sends, including LOGIN and LOGOUT.

    It counts tags: imaplib's own commands and the ones IMAPClient writes itself (SEARCH, FETCH)
    both take a new tag, and nothing else does.
    """

    commands = 0

    def _new_tag(self):
        CountingIMAP4.commands += 1
        return super()._new_tag()


def _connect(account: dict) -> CountingIMAP4:
    client = CountingIMAP4(account["host"], account["port"], timeout=60)
    client.login(account["user"], account["password"])
    return client


def _store(path: str):
    import sqlite3

    return sqlite3.connect(path)


def run_ours(account: dict, jira: dict, store_path: str, per_request: int | None = None) -> dict:
    """The inbox module's take_mail and settle_mail and the shared fetch and store, as the jira_inbox
    tasks call them, one connection per task as in Airflow.

    `per_request` overrides the bulk fetch size the run plans (by default the automatic one, 1000 for
    the default fields; 100 is the batching before store v2).
    """
    from jira_mail_sync.mapping import batch_keys

    from devkit.counting_db import CountingConnection
    from include.imap_inbox import Inbox
    from include.inbox_run import Ledger, sense_mail, settle_mail, take_mail
    from include.jira_cloud import JiraCloudClient
    from include.sync_pipeline import fetch_batch, store_batches
    from include.ticket_fields import FieldPlan

    client_kwargs = {"site_url": jira["url"], "email": jira["email"], "api_token": jira["api_token"]}
    started = time.perf_counter()
    # wait_for_unseen_mail: the unseen UIDs less what the ledger holds, searched in windows
    imap = _connect(account)
    ledger_conn = CountingConnection(_store(store_path))
    ledger = Ledger(ledger_conn, "sqlite")
    sensed = sense_mail(Inbox(adopt_imaplib(imap)), ledger, limit=MESSAGES)
    uidvalidity, uids = sensed.uidvalidity, sensed.uids
    imap.logout()
    # extract_ticket_keys
    imap = _connect(account)
    inbox = Inbox(adopt_imaplib(imap))
    inbox.open(readonly=True)
    taken = take_mail(
        inbox,
        ledger,
        uids,
        mailbox="INBOX",
        uidvalidity=uidvalidity,
        trusted_senders=TRUSTED,
        jira_url=f"https://{SITE}",
        retrying=sensed.retrying,
    )
    imap.logout()
    size = per_request or FieldPlan().bulk_size
    # As plan_batches does: keys of retried mail get batches of their own.
    batches = [b for keys in (taken.fresh_keys, taken.retry_keys) for b in batch_keys(keys, per_request=size)]
    # fetch_tickets, one mapped instance (and one client) per batch
    jira_requests = 0
    fetched = []
    for keys in batches:
        with JiraCloudClient(**client_kwargs) as jc:
            fetched.append(fetch_batch(jc, keys))
            jira_requests += jc.request_count
    # store_tickets
    conn = _store(store_path)
    stored = store_batches(conn, "sqlite", fetched, source="inbox", fetched_at=datetime.now(UTC))
    conn.close()
    # mark_mail_seen: the marking and the run's ledger writes
    imap = _connect(account)
    settled = settle_mail(Inbox(adopt_imaplib(imap)), ledger, taken, stored)
    imap.logout()
    ledger_statements = ledger_conn.count()
    ledger_conn.close()
    return {
        "wall_s": time.perf_counter() - started,
        "jira_requests": jira_requests,
        "bulk_fetches": len(batches),
        "imap_commands": CountingIMAP4.commands,
        "rows": stored["written"],
        "marked_seen": len(settled.marked_seen),
        "ledger_statements": ledger_statements,
    }


def run_baseline(account: dict, jira: dict, store_path: str) -> dict:
    """What a user would write from the seed: per message, fetch it whole, GET the issue, mark it seen."""
    from include.jira_cloud import JiraCloudClient, JiraNotFound, ticket_details
    from include.jira_mail import parse_message
    from include.ticket_store import ensure_table, upsert_tickets

    started = time.perf_counter()
    imap = _connect(account)
    imap.select("INBOX")
    _, data = imap.uid("SEARCH", "UNSEEN")
    uids = data[0].split()
    conn = _store(store_path)
    ensure_table(conn, "sqlite")
    rows = 0
    with JiraCloudClient(jira["url"], jira["email"], jira["api_token"]) as jc:
        for uid in uids:
            _, msg = imap.uid("FETCH", uid, "(RFC822)")
            parsed = parse_message(msg[0][1], trusted_senders=TRUSTED, jira_url=f"https://{SITE}")
            for key in parsed.keys:
                try:
                    ticket = ticket_details(jc.get_issue(key))
                except JiraNotFound:
                    continue
                rows += upsert_tickets(
                    conn, "sqlite", [ticket], source="inbox", fetched_at=datetime.now(UTC)
                ).written
            imap.uid("STORE", uid, "+FLAGS", "(\\Seen)")
        jira_requests = jc.request_count
    conn.close()
    imap.logout()
    return {
        "wall_s": time.perf_counter() - started,
        "jira_requests": jira_requests,
        "imap_commands": CountingIMAP4.commands,
        "rows": rows,
        "marked_seen": len(uids),
    }


def child_main(pipeline: str, spec: dict) -> None:
    runners = {
        "ours": run_ours,
        "ours-100": lambda *args: run_ours(*args, per_request=100),
        "baseline": run_baseline,
    }
    result = runners[pipeline](spec["account"], spec["jira"], spec["store"])
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _run_child(pipeline: str, spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.inbox_burst", "--child", pipeline, json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{pipeline} pipeline failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _seed(server, jira) -> dict:
    from devkit.mail_factory import jira_notification

    account = server.create_account()
    keys = [f"OPS-{n}" for n in range(1, KEYS + 1)]
    for i in range(MESSAGES):
        account.drop(
            jira_notification(
                keys[i % KEYS], site=SITE, summary=f"Burst ticket {i % KEYS}", body_padding=MAIL_PADDING
            )
        )
    assert account.unseen_count() == MESSAGES
    return account


def _account_spec(account) -> dict:
    return {"host": account.host, "port": account.port, "user": account.user, "password": account.password}


def _dag_test_run(account, jira, tmp: Path) -> dict:
    """One jira_inbox run over the same burst through `airflow dags test`, timed from the outside."""
    env = migrated_airflow(
        tmp / "airflow-home",
        {
            IMAP_CONN_ID: account.airflow_conn(),
            JIRA_CONN_ID: jira.airflow_conn(),
            STORE_CONN_ID: {"conn_type": "sqlite", "host": str(tmp / "dag-store.db")},
        },
    )
    requests_before = jira.request_count()
    started = time.perf_counter()
    proc = dags_test(env, "jira_inbox", {"max_messages": MESSAGES, "trusted_senders": TRUSTED})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"airflow dags test failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    conn = _store(str(tmp / "dag-store.db"))
    rows = conn.execute(f"SELECT count(*) FROM {TICKET_TABLE}").fetchone()[0]
    conn.close()
    return {
        "wall_s": wall,
        "rows": rows,
        "unseen_after": account.unseen_count(),
        "jira_requests": jira.request_count() - requests_before,
    }


def main() -> None:
    from bench.report import write_section
    from devkit.dovecot import start_dovecot
    from devkit.jira_standin import JiraStandin

    # Other work on the machine slows the CPU-bound rows most: the table says how loaded it was.
    load_before = os.getloadavg()[0]
    server = start_dovecot()
    jira = JiraStandin(email="bench@example.com", api_token="bench-token").start()
    try:
        t0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
        for n in range(1, KEYS + 1):
            jira.add_issue(
                f"OPS-{n}",
                summary=f"Burst ticket {n}",
                assignee_email=f"u{n % 7}@example.com",
                progress=(n, 1000),
                updated=t0 + timedelta(seconds=n),
            )
        jira.latency = LATENCY_S
        jira_spec = {"url": jira.url, "email": jira.email, "api_token": jira.api_token}
        results = {}
        with tempfile.TemporaryDirectory(prefix="jms-bench-") as tmp:
            for pipeline in ("ours", "ours-100", "baseline"):
                account = _seed(server, jira)
                spec = {"account": _account_spec(account), "jira": jira_spec, "store": f"{tmp}/{pipeline}.db"}
                results[pipeline] = _run_child(pipeline, spec)
                results[pipeline]["unseen_after"] = account.unseen_count()
                print(pipeline, results[pipeline], flush=True)
            account = _seed(server, jira)
            dag_run = _dag_test_run(account, jira, Path(tmp))
            print("dag test", dag_run, flush=True)
    finally:
        jira.stop()
        server.stop()

    ours, ours_100, base = results["ours"], results["ours-100"], results["baseline"]
    speedup = base["wall_s"] / ours["wall_s"]
    markdown = f"""## Inbox burst: {MESSAGES:,} unseen mails over {KEYS} keys

Command: `.venv/bin/python -m bench.inbox_burst` (part of `make bench`).

Real Dovecot on loopback holding {MESSAGES:,} unseen Jira Cloud notification mails (~20 KB each) for
{KEYS} distinct tickets; the Jira stand-in adds {LATENCY_S * 1000:.0f} ms to every request; SQLite store.
Each pipeline runs in its own process against a fresh copy of the burst. The machine's 1-minute load
average was {load_before:.1f} when the run started (on 2 cores: the CPU-bound "ours" rows slow most
when it is high).

| pipeline | wall time | Jira requests | IMAP commands | peak RSS | row writes | marked seen | mail-ledger statements |
|---|---:|---:|---:|---:|---:|---:|---:|
| ours (`include.inbox_run`'s take_mail and settle_mail, as the `jira_inbox` tasks call them), 1000 per bulk fetch | {ours["wall_s"]:.2f} s | {ours["jira_requests"]} | {ours["imap_commands"]} | {ours["peak_rss_mib"]:.0f} MiB | {ours["rows"]} | {ours["marked_seen"]} | {ours["ledger_statements"]} |
| ours with bulk fetches of 100 (the batching before store v2) | {ours_100["wall_s"]:.2f} s | {ours_100["jira_requests"]} | {ours_100["imap_commands"]} | {ours_100["peak_rss_mib"]:.0f} MiB | {ours_100["rows"]} | {ours_100["marked_seen"]} | {ours_100["ledger_statements"]} |
| seed-style loop (fetch RFC822, GET issue, mark seen, per message) | {base["wall_s"]:.2f} s | {base["jira_requests"]} | {base["imap_commands"]} | {base["peak_rss_mib"]:.0f} MiB | {base["rows"]} | {base["marked_seen"]} | none (no ledger) |

- Ours is **{speedup:.1f}× faster** in the same run, with {ours["jira_requests"]} Jira request(s)
  ({ours["bulk_fetches"]} bulk fetch of up to 1000 for the {KEYS} keys: one mapped fetch instance;
  with 100 per bulk fetch the same burst takes {ours_100["bulk_fetches"]} instances and
  {ours_100["jira_requests"]} requests) and {ours["imap_commands"]} IMAP
  commands: a fixed handful per task connection (LOGIN, SELECT/EXAMINE, LOGOUT), one SEARCH, one STORE,
  and one FETCH per 500 messages (`PEEK_CHUNK`, which bounds the buffered FETCH response to ~160 MiB
  even for hostile mail), so {MESSAGES:,} messages cost {-(-MESSAGES // 500)} FETCHes. The baseline's
  {base["imap_commands"]} commands grow by two per message.
- The two "ours" rows differ only in how the keys are batched. Run in one process, they pay no
  per-instance cost, so their wall times stay within noise of each other (a request of 500 issues
  against five of 100 at 50 ms each, and one burst's IMAP and store work); the gain of the 1000-issue
  batching is in the requests, and in the mapped instances a real run pays about 0.2 s each for
  (see the sweep above: 200 instances against 20).
- Mail-ledger statements (include/mail_ledger.py, counted by devkit.counting_db around the store
  connection): {ours["ledger_statements"]} for the whole run of {MESSAGES:,} messages. Each ledger
  call is a fixed number of statements (a table check, one SELECT or one `executemany` UPSERT, the
  settled-row pruning DELETE), whatever the number of messages; `tests/test_mail_ledger.py` checks the
  same counts at 10 and 2,000 messages.
- Row writes: ours upserts each of the 500 tickets once; the baseline upserts once per message
  (the store keeps 500 rows either way).
- Mail left unseen afterwards: ours {ours["unseen_after"]}, baseline {base["unseen_after"]}.
- One whole `jira_inbox` run over the same burst through `airflow dags test jira_inbox -c
  '{{"max_messages": {MESSAGES}, ...}}'`: **{dag_run["wall_s"]:.1f} s** end to end (Airflow start-up
  included), {dag_run["jira_requests"]} Jira requests, {dag_run["rows"]} rows stored,
  {dag_run["unseen_after"]} mails left unseen.
"""
    print(write_section("inbox-burst", markdown))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["ours", "ours-100", "baseline"])
    parser.add_argument("spec", nargs="?")
    args = parser.parse_args()
    if args.child:
        child_main(args.child, json.loads(args.spec))
    else:
        main()
