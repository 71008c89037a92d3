"""Benchmark: sensing an inbox of 200,000 unseen messages, the sensor's search against the single
`UID SEARCH UNSEEN` that main sent before (which fails past imaplib's 1,000,000-byte line limit).

Run it with `.venv/bin/python -m bench.big_inbox` (`--messages N` for another size). It starts a real
Dovecot, puts N unseen messages straight into the account's Maildir (hard links, not APPEND), holds
1,000 of the oldest in a SQLite mail ledger, and times RUNS sensing runs of each kind on a fresh
login: EXAMINE, the search, and the ledger reads, as the sensor does them (inbox_run.sense_mail:
Inbox.unseen_uids with mail_ledger.held_uids per window). It counts the IMAP commands and the bytes
the server sent, and writes the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import imaplib
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

from bench.report import write_section  # noqa: E402
from devkit.dovecot import start_dovecot  # noqa: E402
from devkit.imap_account import adopt_imaplib  # noqa: E402
from include.imap_inbox import Inbox  # noqa: E402
from include.inbox_run import Ledger, sense_mail  # noqa: E402
from include.mail_ledger import held_uids, record_rejected  # noqa: E402

MESSAGES = 200_000
HELD = 1_000
LIMIT = 200  # the sensor's default max_messages
RUNS = 5
MAIL = b'From: "Ann (Jira)" <jira@acme.atlassian.net>\r\nSubject: [JIRA] (BIG-1) backlog\r\n\r\nBody.\r\n'


class CountingIMAP4(imaplib.IMAP4):
    """imaplib client counting the commands it sends (tags) and the bytes it reads."""

    def __init__(self, *args, **kwargs) -> None:
        self.commands = 0
        self.bytes_read = 0
        super().__init__(*args, **kwargs)

    def _new_tag(self):
        self.commands += 1
        return super()._new_tag()

    def readline(self):
        line = super().readline()
        self.bytes_read += len(line)
        return line

    def read(self, size):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def _session(account) -> CountingIMAP4:
    client = CountingIMAP4(account.host, account.port, timeout=120)
    client.login(account.user, account.password)
    client.commands = client.bytes_read = 0
    return client


def sense_windowed(client: CountingIMAP4, ledger: sqlite3.Connection) -> int:
    """What UnseenJiraMailSensor.poke does after login: include.inbox_run.sense_mail (EXAMINE, the
    windowed search, the ledger per window)."""
    return len(sense_mail(Inbox(adopt_imaplib(client)), Ledger(ledger, "sqlite"), limit=LIMIT).uids)


def sense_single_search(client: CountingIMAP4, ledger: sqlite3.Connection) -> int:
    """What the sensor sent before (commit d967094): EXAMINE, every held row, one `UID SEARCH UNSEEN` answered in one line."""
    inbox = Inbox(adopt_imaplib(client))
    uidvalidity = inbox.open(readonly=True)
    held = held_uids(ledger, "sqlite", mailbox="INBOX", uidvalidity=uidvalidity, now=datetime.now(UTC))
    found = inbox.client.search(["UNSEEN"])
    return len(sorted(set(found) - held["excluded"])[:LIMIT])


def measure(kind, account, ledger) -> dict:
    times, outcome = [], ""
    for _ in range(RUNS):
        client = _session(account)
        started = time.perf_counter()
        try:
            outcome = f"{kind(client, ledger)} UIDs"
        except imaplib.IMAP4.error as exc:
            times.append(time.perf_counter() - started)
            outcome = f"fails: {exc}"
            break
        times.append(time.perf_counter() - started)
        client.logout()
    times.sort()
    return {
        "median_s": times[len(times) // 2],
        "commands": client.commands,
        "bytes": client.bytes_read,
        "outcome": outcome,
    }


def main() -> None:
    global RUNS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=MESSAGES)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    RUNS = args.runs
    server = start_dovecot()
    try:
        account = server.create_account()
        started = time.perf_counter()
        account.link_many(MAIL, args.messages)
        seeded_s = time.perf_counter() - started
        warm = _session(account)
        started = time.perf_counter()
        uidvalidity = Inbox(adopt_imaplib(warm)).open(readonly=True)
        indexed_s = time.perf_counter() - started
        warm.logout()
        ledger = sqlite3.connect(":memory:")
        record_rejected(
            ledger,
            "sqlite",
            mailbox="INBOX",
            uidvalidity=uidvalidity,
            entries=[{"uid": uid, "reason": "no ticket key"} for uid in range(1, HELD + 1)],
            now=datetime.now(UTC),
        )
        rows = [
            (
                "windowed: ESEARCH + `UID SEARCH UNSEEN UID a:b` (the sensor, inbox_run.sense_mail)",
                measure(sense_windowed, account, ledger),
            ),
            (
                "one `UID SEARCH UNSEEN` (the sensor up to d967094)",
                measure(sense_single_search, account, ledger),
            ),
        ]
    finally:
        server.stop()
    table = [
        "| sensing run | median time | IMAP commands | bytes from the server | result |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {r['median_s']:.3f} s | {r['commands']} | {r['bytes']:,} | {r['outcome']} |"
            for name, r in rows
        ),
    ]
    markdown = "\n".join(
        [
            f"## Big inbox: sensing {args.messages:,} unseen messages, {HELD:,} of them held by the ledger",
            "",
            "Command: `.venv/bin/python -m bench.big_inbox`"
            + (f" --messages {args.messages}" if args.messages != MESSAGES else ""),
            "",
            f"Real Dovecot 2.3.19; the messages are hard links dropped into Maildir/cur ({seeded_s:.1f} s), "
            f"and Dovecot's first EXAMINE indexes them ({indexed_s:.1f} s, not counted below). Each run is a "
            f"fresh login (not counted), then EXAMINE and the search for the oldest {LIMIT} "
            f"(`max_messages`) messages the ledger does not hold; median of {RUNS} runs. Commands and bytes "
            "count from EXAMINE on (the bytes include the EXAMINE answer); a failed run stops the series, and the line imaplib refused is not in its byte count.",
            "",
            *table,
            "",
            "The windowed search sends a bounded number of commands whatever the inbox holds: CAPABILITY "
            "(once per session), EXAMINE, one ESEARCH, then window searches (two here: the first window, "
            "1,024 UIDs, is mostly held mail; at most `MAX_SEARCH_WINDOWS` = 40), and reads the ledger "
            "for each window only. The single search must fit every unseen UID in one line, which imaplib "
            "refuses past 1,000,000 bytes (about 160,000 UIDs counted from 1).",
        ]
    )
    print(markdown)
    if not args.no_write:
        name = "big_inbox" if args.messages == MESSAGES else f"big_inbox_{args.messages}"
        print(f"written to {write_section(name, markdown)}")


if __name__ == "__main__":
    main()
