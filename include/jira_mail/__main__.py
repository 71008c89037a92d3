"""Command line: print, one JSON line per mail file, what the safe Jira mail parser makes of it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from include.jira_mail.parser import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_KEYS,
    default_trusted_senders,
    parse_message,
)
from include.sender_auth import DEFAULT_TRUSTED_DKIM_DOMAINS, MODES, SenderAuthPolicy

EXIT_OK = 0
EXIT_UNREADABLE_FILE = 1
EXIT_USAGE = 2


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m include.jira_mail",
        description=(
            "Parse Jira notification mail files and print one JSON object per file. "
            "Exit status: 0 when every file was read (accepted or not), 1 when a file could not "
            "be read, 2 on a usage error."
        ),
    )
    parser.add_argument("--jira-url", help="the Jira site, e.g. https://acme.atlassian.net")
    parser.add_argument(
        "--trusted-sender",
        action="append",
        default=[],
        metavar="ADDRESS_OR_DOMAIN",
        help="a trusted From address or bare domain (repeatable); default: jira@<host of --jira-url>",
    )
    parser.add_argument(
        "--authserv-id",
        help="check sender authentication: the receiving server's Authentication-Results id (mx.google.com)",
    )
    parser.add_argument(
        "--sender-auth",
        choices=MODES,
        help="none, authentication_results (default with --authserv-id) or dkim (verified here, over DNS)",
    )
    parser.add_argument(
        "--authserv-one-header",
        action="store_true",
        help="the server writes all its verdicts in one Authentication-Results header: read only that one",
    )
    parser.add_argument(
        "--trusted-dkim-domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help=f"a trusted DKIM signing domain (repeatable); default {', '.join(DEFAULT_TRUSTED_DKIM_DOMAINS)}",
    )
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max-keys", type=int, default=DEFAULT_MAX_KEYS)
    parser.add_argument("files", nargs="+", metavar="FILE")
    return parser


def read_bounded(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes from the start of ``path``, however large the file is."""
    with open(path, "rb") as handle:
        return handle.read(limit)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    if args.max_body_bytes < 0 or args.max_keys < 1:
        parser.error("--max-body-bytes must be >= 0 and --max-keys >= 1")
    try:
        trusted = args.trusted_sender or (default_trusted_senders(args.jira_url) if args.jira_url else [])
    except ValueError as exc:
        parser.error(str(exc))
    if not trusted:
        parser.error("give --trusted-sender ADDRESS_OR_DOMAIN, or --jira-url URL to trust jira@<its host>")
    try:
        # The same extras an imap_default connection takes, so the command checks what the DAG would.
        sender_auth = SenderAuthPolicy.from_extras(
            {
                "authserv_id": args.authserv_id,
                "sender_auth": args.sender_auth,
                "authserv_one_header": args.authserv_one_header,
                "trusted_dkim_domains": args.trusted_dkim_domain or None,
            }
        )
    except ValueError as exc:
        parser.error(str(exc))

    # Headers plus the body prefix the parser looks at; reading more would only be thrown away. A
    # DKIM body hash needs the whole message (up to the policy's bound, beyond which it fails).
    read_limit = DEFAULT_MAX_HEADER_BYTES + 4 + args.max_body_bytes
    if sender_auth.needs_whole_message:
        read_limit = max(read_limit, sender_auth.dkim_max_message_bytes + 1)
    exit_code = EXIT_OK
    for path in args.files:
        try:
            raw = read_bounded(path, read_limit)
        except OSError as exc:
            exit_code = EXIT_UNREADABLE_FILE
            reason = f"unreadable_file: {exc.strerror or type(exc).__name__}"
            record = {"file": path, "accepted": False, "keys": [], "event": None, "reason": reason}
        else:
            result = parse_message(
                raw,
                trusted_senders=trusted,
                jira_url=args.jira_url,
                max_body_bytes=args.max_body_bytes,
                max_keys=args.max_keys,
                sender_auth=sender_auth,
            )
            record = {"file": path, **result.to_json()}
        sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
