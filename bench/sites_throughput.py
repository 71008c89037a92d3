"""Two sites on the native Celery stack: each site's sweep throughput, without and with 429s on one.

Command: `.venv/bin/python -m bench.sites_throughput` (about 6 minutes with the defaults). One stack
for the whole run, started by the same helpers as tests_distributed/test_sites_stack.py
(scripts/distributed/sites.py: PostgreSQL with one store database per site, Redis, api-server,
scheduler, dag-processor, triggerer, two Celery workers, a real Dovecot, and one Jira stand-in
process per site), with a sites file of two sites, `alpha` and `beta`, each with its own Jira
connection, pool and store.

Each round seeds `--tickets` fresh issues per site in a closed past hour and triggers both sites'
sweeps of that hour at once over REST; the scheduler runs them on the workers (after one unmeasured
warm-up sweep of an empty hour). Rounds alternate:
(a) no 429s; (b) alpha's stand-in answers every API request 429 with `Retry-After: --retry-after-s`
from before the trigger for at least `--throttle-s` and until beta's sweep has ended, then its 429s
stop. Wall time is the run's
`queued_at` → `end_date` in the metadata database; tickets are those of the round found in the
site's store afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.report import write_section
from devkit.dovecot import start_dovecot
from scripts.distributed.sites import SweepResult, TwoSiteStack, past_hour

THROTTLED, STEADY = "alpha", "beta"
PHASES = {"a": "(a) no 429s", "b": f"(b) {THROTTLED} under 429s"}


def measure(args: argparse.Namespace) -> tuple[list[tuple[str, dict[str, SweepResult]]], float]:
    dovecot = start_dovecot()
    try:
        with tempfile.TemporaryDirectory(prefix="jms-sites-bench-") as scratch:
            with TwoSiteStack(
                Path(scratch),
                dovecot,
                pool_slots=args.pool_slots,
                workers=2,
                worker_concurrency=args.worker_concurrency,
            ) as sites:
                assert sites.stack is not None
                start_s = sites.stack.timings["start_total_s"]
                # Unmeasured: a fresh stack's first task runs are slower than any later one.
                sites.warm_up()
                rounds: list[tuple[str, dict[str, SweepResult]]] = []
                for number in range(args.rounds):
                    for phase in PHASES:
                        # A fresh hour (and fresh keys) per round: every sweep stores new rows.
                        hours_ago = 3 + len(rounds)
                        window = past_hour(hours_ago)
                        keys = sites.seed(f"R{len(rounds)}", args.tickets, window)
                        throttle = THROTTLED if phase == "b" else None
                        results = sites.run_sweeps(
                            window,
                            keys,
                            throttle=throttle,
                            retry_after_s=args.retry_after_s,
                            min_throttle_s=args.throttle_s,
                        )
                        rounds.append((phase, results))
                        for name, result in results.items():
                            print(
                                f"round {number + 1} {PHASES[phase]}: {name} {result.state} "
                                f"{result.tickets} tickets in {result.wall_s:.1f} s "
                                f"({result.throttled_answers} 429s)",
                                flush=True,
                            )
                return rounds, start_s
    finally:
        dovecot.stop()


def report(rounds: list[tuple[str, dict[str, SweepResult]]], start_s: float, args: argparse.Namespace) -> str:
    lines = [
        "## Many sites: two sites' sweeps side by side on the Celery stack, without and with 429s on one",
        "",
        f"Command: `.venv/bin/python -m bench.sites_throughput --rounds {args.rounds} --tickets {args.tickets} "
        f"--retry-after-s {args.retry_after_s:g} --throttle-s {args.throttle_s:g}`. One native stack for the whole run "
        "(scripts/distributed/sites.py, the helpers tests_distributed/test_sites_stack.py uses): PostgreSQL "
        "with a store database per site, Redis, api-server, scheduler, dag-processor, triggerer, "
        f"two Celery workers × {args.worker_concurrency} slots, and one Jira stand-in process per site; the "
        f"sites file gives `alpha` and `beta` their own Jira connection, store and pool "
        f"({args.pool_slots} slots each, created by `check_connections --sites --create-pools`).",
        "",
        f"Each round seeds {args.tickets} fresh issues per site in a closed past hour and triggers both "
        "sweeps of that hour at once; the scheduler runs them (after one unmeasured warm-up sweep of an empty "
        "hour). In (b) alpha's stand-in answers every API "
        f"request 429 with `Retry-After: {args.retry_after_s:g}` from before the trigger for at least "
        f"{args.throttle_s:g} s and until beta's sweep has ended, then stops. Wall time: the run's `queued_at` → `end_date`; tickets: the round's "
        "issues found in the site's store afterwards.",
        "",
        "| round | phase | site | state | tickets stored | wall time | tickets/s | 429 answers |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for index, (phase, results) in enumerate(rounds):
        for name, result in results.items():
            lines.append(
                f"| {index // len(PHASES) + 1} | {PHASES[phase]} | {name} | {result.state} | {result.tickets} | "
                f"{result.wall_s:.1f} s | {result.tickets_per_s:.1f} | {result.throttled_answers} |"
            )

    def median_wall(phase: str, site: str) -> float:
        return statistics.median(results[site].wall_s for p, results in rounds if p == phase)

    steady_a, steady_b = median_wall("a", STEADY), median_wall("b", STEADY)
    throttled_a, throttled_b = median_wall("a", THROTTLED), median_wall("b", THROTTLED)
    lines += [
        "",
        f"Median wall time of {STEADY}: {steady_a:.1f} s without 429s, {steady_b:.1f} s while {THROTTLED} "
        f"answered 429s ({steady_b / steady_a:.2f}×). Of {THROTTLED}: {throttled_a:.1f} s without, "
        f"{throttled_b:.1f} s with. Stack start-up: {start_s:.0f} s.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (a) then (b)")
    parser.add_argument("--tickets", type=int, default=500, help="issues per site and round")
    parser.add_argument("--retry-after-s", type=float, default=10.0)
    parser.add_argument(
        "--throttle-s", type=float, default=30.0, help="in (b), alpha answers 429s at least this long"
    )
    parser.add_argument("--pool-slots", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave docs/benchmarks.md")
    args = parser.parse_args()
    rounds, start_s = measure(args)
    section = report(rounds, start_s, args)
    print(section)
    if not args.no_write:
        print(f"wrote {write_section('sites_throughput', section)}")
    failed = [r for _, results in rounds for r in results.values() if r.state != "success"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
