"""Benchmark of the Jira mail parser: throughput on real mail, and memory on one 25 MB message.

Run from the repository root: `.venv/bin/python -m bench.parser_bench`. It writes the "parser"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from bench.report import write_section
from include.jira_mail import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES, parse_message
from include.sender_auth import MODE_AUTHENTICATION_RESULTS, MODE_DKIM, SenderAuthPolicy

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "jira-emails"
COMMAND = ".venv/bin/python -m bench.parser_bench"
# Every fixture's own sender, so that each one is parsed all the way through the body.
FIXTURE_SENDERS = [
    "jira@atlassian.com",
    "jira@infomaniak.atlassian.net",
    "jira@apache.org",
    "jira@axioscode.atlassian.net",
    "jira@securitysd.atlassian.net",
    "jira-issues@redhat.com",
]
SITE = "https://acme.atlassian.net"
BIG_MESSAGE_BYTES = 25 * 1024 * 1024


def load_fixtures() -> list[bytes]:
    messages = [path.read_bytes() for path in sorted(FIXTURES.glob("*.eml"))]
    if not messages:
        raise SystemExit(f"no fixtures found in {FIXTURES}")
    return messages


def measure_throughput(messages: list[bytes], seconds: float) -> dict[str, float]:
    """Parse the fixtures round-robin for about ``seconds``; report rate and per-message latency."""
    for raw in messages:  # warm-up: regex compilation, imports
        parse_message(raw, trusted_senders=FIXTURE_SENDERS)
    latencies: list[float] = []
    parsed_bytes = 0
    accepted = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for raw in messages:
            before = time.perf_counter()
            result = parse_message(raw, trusted_senders=FIXTURE_SENDERS)
            latencies.append(time.perf_counter() - before)
            parsed_bytes += len(raw)
            accepted += result.accepted
    elapsed = time.perf_counter() - started
    if accepted != len(latencies):
        raise SystemExit("a fixture was rejected; the benchmark would not measure a full parse")
    latencies.sort()
    return {
        "messages": len(latencies),
        "rate": len(latencies) / elapsed,
        "mib_per_s": parsed_bytes / elapsed / 1024**2,
        "mean_size": statistics.fmean(len(raw) for raw in messages),
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
    }


AUTH_SERVER = "mx.bench.test"
DKIM_SELECTOR = b"bench"
DKIM_SIGNER = "mail-us.atlassian.net"


def authenticated_mail() -> tuple[bytes, Callable[..., bytes | None]]:
    """A Cloud-style notification signed by a fresh key, under an Authentication-Results header.

    Returns the mail and a dkimpy dnsfunc serving that key, so DKIM is measured without DNS.
    """
    from devkit.dkim_signer import DkimSigner
    from devkit.mail_factory import jira_notification

    signer = DkimSigner.generate(DKIM_SIGNER, DKIM_SELECTOR)
    signed = signer.sign(jira_notification("BEN-1", site="acme.atlassian.net"))
    results = f"Authentication-Results: {AUTH_SERVER}; dkim=pass header.d={DKIM_SIGNER}\r\n".encode()
    return results + signed, signer.dns_txt


def measure_sender_auth(seconds: float) -> dict[str, dict[str, float]]:
    """The same signed mail parsed under each sender-authentication mode, one after the other."""
    raw, dns_txt = authenticated_mail()
    policies = {
        "none": SenderAuthPolicy(),
        "authentication_results": SenderAuthPolicy(mode=MODE_AUTHENTICATION_RESULTS, authserv_id=AUTH_SERVER),
        "dkim": SenderAuthPolicy(mode=MODE_DKIM, dns_txt=dns_txt),
    }
    measured: dict[str, dict[str, float]] = {}
    for name, policy in policies.items():
        latencies: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds / len(policies):
            before = time.perf_counter()
            result = parse_message(raw, trusted_senders=["jira@acme.atlassian.net"], sender_auth=policy)
            latencies.append(time.perf_counter() - before)
            if not result.accepted:
                raise SystemExit(f"the signed mail was rejected under {name}: {result.reason}")
        elapsed = time.perf_counter() - started
        latencies.sort()
        measured[name] = {
            "rate": len(latencies) / elapsed,
            "p50_us": latencies[len(latencies) // 2] * 1e6,
            "size": len(raw),
        }
    return measured


def big_message() -> bytes:
    """A ~25 MB HTML notification whose body is a long run of Jira links and filler."""
    head = (
        b'From: "Ann Example (Jira)" <jira@acme.atlassian.net>\r\n'
        b"Subject: [JIRA] (BIG-1) A very large notification\r\n"
        b"Message-ID: <bench.big@acme.atlassian.net>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n"
    )
    line = b'<p><a href="https://acme.atlassian.net/browse/BIG-2">BIG-2</a> filler &amp; more filler</p>\r\n'
    return head + line * ((BIG_MESSAGE_BYTES - len(head)) // len(line) + 1)


def measure_big_in_process(raw: bytes) -> dict[str, float]:
    tracemalloc.start()
    try:
        started = time.perf_counter()
        result = parse_message(raw, trusted_senders=["jira@acme.atlassian.net"], jira_url=SITE)
        elapsed = time.perf_counter() - started
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if result.keys != ("BIG-1", "BIG-2"):
        raise SystemExit(f"unexpected result for the big message: {result}")
    return {"size": len(raw), "seconds": elapsed, "tracemalloc_peak": peak}


# VmHWM is the peak RSS of the current address space and is reset by exec, unlike ru_maxrss,
# which a child inherits from the (large) benchmark process that forked it.
CHILD_SNIPPET = """
import sys
from include.jira_mail.__main__ import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
sys.stderr.write(peak + "\\n")
sys.exit(code)
"""


def command_peak_rss_kib(path: Path) -> int:
    """Peak RSS (KiB) of the command's entry point run on ``path`` in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD_SNIPPET, "--jira-url", SITE, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"the command failed on {path}: {result.stderr}")
    return int(result.stderr.strip().splitlines()[-1])


def measure_big_command(raw: bytes) -> dict[str, int]:
    """Peak RSS of the command on the 25 MB file, against the same command on a 1 KB one."""
    with tempfile.TemporaryDirectory(prefix="jms-parser-bench-") as directory:
        small = Path(directory) / "small.eml"
        big = Path(directory) / "big.eml"
        small.write_bytes(raw[:1024])
        big.write_bytes(raw)
        small_kib = command_peak_rss_kib(small)
        big_kib = command_peak_rss_kib(big)
    return {"small_kib": small_kib, "big_kib": big_kib}


def render(
    throughput: dict[str, float],
    big: dict[str, float],
    command: dict[str, int],
    fixtures: int,
    load: float,
    auth: dict[str, dict[str, float]],
) -> str:
    mib = 1024**2
    auth_rows = "\n".join(
        f"| `{name}` | {row['rate']:,.0f} | {row['p50_us']:.0f} µs |" for name, row in auth.items()
    )
    size_kib = next(iter(auth.values()))["size"] / 1024
    return f"""## Jira mail parser (`include/jira_mail`)

Command: `{COMMAND}` (from the repository root). One-minute load average when it started:
{load:.2f} (the figures are wall-clock, so other work on the machine lowers them).

Throughput: the {fixtures} real Jira mails in `shared/fixtures/jira-emails/` (mean size
{throughput["mean_size"] / 1024:.1f} KiB), parsed round-robin in one process, every one accepted
with its sender trusted, so each parse runs through headers, MIME walk and link scan.

| measure | value |
|---|---|
| messages parsed | {throughput["messages"]:,} |
| messages / second | {throughput["rate"]:,.0f} |
| MiB / second | {throughput["mib_per_s"]:.1f} |
| latency p50 / p99 | {throughput["p50_us"]:.0f} µs / {throughput["p99_us"]:.0f} µs |

Memory: one generated HTML message of {big["size"] / mib:.1f} MiB (headers, then a 25 MiB run of
`/browse/` links). The parser slices at most {DEFAULT_MAX_HEADER_BYTES // 1024} KiB of headers and
{DEFAULT_MAX_BODY_BYTES // 1024} KiB of body before parsing, so its memory does not grow with the message.
The command rows run the `python -m include.jira_mail` entry point (`main()`) in a fresh
interpreter and read its peak RSS from `/proc/self/status` (VmHWM); `ru_maxrss` is not used because
a child inherits the benchmark process's own high-water mark across fork and exec.

| measure | value |
|---|---|
| parse time, in process | {big["seconds"] * 1000:.1f} ms |
| tracemalloc peak during the parse (message already in memory) | {big["tracemalloc_peak"] / mib:.2f} MiB |
| peak RSS (VmHWM) of the command on the 25 MiB file | {command["big_kib"] / 1024:.1f} MiB |
| the same on a 1 KiB file | {command["small_kib"] / 1024:.1f} MiB |
| difference | {(command["big_kib"] - command["small_kib"]) / 1024:.1f} MiB |

Sender authentication (`include/sender_auth.py`), side by side in this run: one generated Cloud
notification ({size_kib:.1f} KiB) signed with a fresh 2048-bit RSA key (`d={DKIM_SIGNER}`, dkimpy)
under an `Authentication-Results` header, parsed under each `sender_auth` mode in turn. DKIM gets
its key from an in-process lookup, so DNS time is not in these figures (in production each DKIM
check adds one TXT lookup).

| `sender_auth` | messages / second | latency p50 |
|---|---|---|
{auth_rows}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to run the throughput loop")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write docs")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    messages = load_fixtures()
    throughput = measure_throughput(messages, args.seconds)
    raw = big_message()
    big = measure_big_in_process(raw)
    command = measure_big_command(raw)
    auth = measure_sender_auth(args.seconds)
    markdown = render(throughput, big, command, len(messages), load, auth)
    print(markdown)
    if not args.no_write:
        print(f"written to {write_section('parser', markdown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
