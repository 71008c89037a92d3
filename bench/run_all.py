"""Runs every benchmark in turn; each writes its own section of docs/benchmarks.md."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    "bench.parser_bench",
    "bench.inbox_burst",
    "bench.poison_bench",
    "bench.sweep_bench",
    "bench.status_page",
    "bench.idle_latency",
    "bench.history_bench",
]

if __name__ == "__main__":
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        subprocess.run([sys.executable, "-m", module], check=True)
