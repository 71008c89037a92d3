"""Run the Jira stand-in as a process: `python -m devkit.jira_standin --email E --api-token T`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime

from .demo import load_demo_site
from .server import JiraStandin

TOKEN_ENV = "JIRA_STANDIN_API_TOKEN"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devkit.jira_standin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port (printed at start)")
    parser.add_argument("--email", required=True, help="the account e-mail clients log in with")
    parser.add_argument(
        "--api-token",
        default=os.environ.get(TOKEN_ENV),
        help=f"the API token clients log in with (default: ${TOKEN_ENV})",
    )
    parser.add_argument("--time-zone", default="UTC", help="the account's profile zone, e.g. Europe/Berlin")
    parser.add_argument("--demo-issues", type=int, default=0, help="generate this many demo issues")
    parser.add_argument("--seed", type=int, default=1, help="seed of the demo issues")
    parser.add_argument(
        "--anchor",
        type=datetime.fromisoformat,
        default=None,
        help="demo issues are updated in the 14 days before this aware ISO time "
        "(default: now, to the minute)",
    )
    args = parser.parse_args(argv)
    if not args.api_token:
        parser.error(f"--api-token or ${TOKEN_ENV} is required")
    if args.anchor is not None and args.anchor.tzinfo is None:
        parser.error("--anchor needs a UTC offset, e.g. 2026-11-27T10:00:00+00:00")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    standin = JiraStandin(
        args.host, args.port, email=args.email, api_token=args.api_token, time_zone=args.time_zone
    ).start()
    try:
        anchor = args.anchor or datetime.now(UTC).replace(second=0, microsecond=0)
        added = load_demo_site(standin, args.demo_issues, seed=args.seed, anchor=anchor)
        print(f"Jira stand-in listening on {standin.url} ({added} demo issues)", flush=True)
        stop.wait()
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
