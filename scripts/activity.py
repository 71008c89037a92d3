"""The demo's activity generator: every minute it edits a few stand-in tickets and mails their notifications.

Run by `scripts/demo.py start` in the background, one per demo site, with the demo's state file:

    .venv/bin/python scripts/activity.py --state .demo/state.json --site acme

Each tick changes two to four tickets on the site's Jira stand-in (status, logged work, assignee, a
comment, or a brand-new ticket) through its admin endpoint `POST /_standin/issues`, then appends one
real-format Jira Cloud notification per change to the site's mailbox over IMAP, from
`jira@<host of the site's Jira connection>`, the sender the site's inbox DAG trusts by default.
About one tick in four also delivers a spoofed or junk message, which the inbox DAG must reject and
label `$JiraRejected`.

The generator keeps its own copy of every ticket, seeded from the same deterministic demo site the
stand-in was started with, because the admin upsert replaces a whole issue and the REST API hides some
fields (an assignee's private e-mail) that must survive an edit.
"""

from __future__ import annotations

import argparse
import base64
import imaplib
import json
import logging
import random
import signal
import sys
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from devkit.jira_standin.demo import DEMO_PEOPLE, DEMO_PROJECTS, DEMO_STATUSES, demo_issues  # noqa: E402
from devkit.mail_factory import jira_notification  # noqa: E402

log = logging.getLogger("demo.activity")

HTTP_TIMEOUT_S = 10.0
IMAP_TIMEOUT_S = 10.0
WORK_STEPS_S = (900, 1800, 3600)
ESTIMATES_S = (3600, 7200, 14400, 28800)
NEW_SUMMARIES = (
    "Customer cannot reset password",
    "Upgrade the TLS library",
    "Flaky nightly export",
    "Add audit entries for logins",
    "Slow search on the status page",
    "Rotate the billing webhook secret",
)
# Relative weights of the kinds of change a tick makes.
CHANGE_WEIGHTS = {"work": 3, "status": 3, "assignee": 2, "comment": 2, "create": 1}
REJECTED_MAIL_CHANCE = 0.25


@dataclass
class Ticket:
    key: str
    summary: str
    status: str
    assignee_email: str | None
    assignee_hidden_email: bool
    spent: int
    total: int

    def upsert_body(self) -> dict[str, Any]:
        """The stand-in's admin upsert body; `updated` is left out so the stand-in stamps it now."""
        return {
            "key": self.key,
            "summary": self.summary,
            "status": self.status,
            "assignee_email": self.assignee_email,
            "assignee_hidden_email": self.assignee_hidden_email,
            "progress": [self.spent, self.total],
        }


@dataclass(frozen=True)
class Change:
    ticket: Ticket
    event: str  # the verb Jira's mail uses: "created", "updated", "commented on"
    actor: str
    description: str


class DemoSite:
    """The generator's copy of the stand-in's tickets, and the random edits it makes to them."""

    def __init__(self, *, count: int, seed: int, anchor: datetime, rng: random.Random) -> None:
        self.rng = rng
        self.tickets: dict[str, Ticket] = {}
        self.next_number = {project: 1 for project, _ in DEMO_PROJECTS}
        for issue in demo_issues(count, seed=seed, anchor=anchor):
            spent, total = issue["progress"]
            ticket = Ticket(
                key=issue["key"],
                summary=issue["summary"],
                status=issue["status"],
                assignee_email=issue["assignee_email"],
                assignee_hidden_email=issue["assignee_hidden_email"],
                spent=spent,
                total=total,
            )
            self.tickets[ticket.key] = ticket
            project, number = ticket.key.rsplit("-", 1)
            self.next_number[project] = max(self.next_number[project], int(number) + 1)

    def _actor(self) -> str:
        person = self.rng.choice(DEMO_PEOPLE).split("@", 1)[0]
        return " ".join(part.capitalize() for part in person.split("."))

    def random_change(self) -> Change:
        kinds = list(CHANGE_WEIGHTS)
        kind = self.rng.choices(kinds, weights=[CHANGE_WEIGHTS[k] for k in kinds])[0]
        if kind == "create" or not self.tickets:
            return self._create()
        ticket = self.tickets[self.rng.choice(sorted(self.tickets))]
        actor = self._actor()
        if kind == "work":
            if ticket.total == 0:
                ticket.total = self.rng.choice(ESTIMATES_S)
                return Change(ticket, "updated", actor, f"estimated at {ticket.total // 3600} h")
            step = self.rng.choice(WORK_STEPS_S)
            ticket.spent = min(ticket.total, ticket.spent + step)
            return Change(ticket, "updated", actor, f"logged work: {ticket.spent}/{ticket.total} s")
        if kind == "status":
            before = ticket.status
            position = DEMO_STATUSES.index(before) if before in DEMO_STATUSES else -1
            # Done tickets get reopened now and then, as in any real project.
            ticket.status = DEMO_STATUSES[(position + 1) % len(DEMO_STATUSES)]
            return Change(ticket, "updated", actor, f"status {before} -> {ticket.status}")
        if kind == "assignee":
            if ticket.assignee_email is not None and self.rng.random() < 0.3:
                ticket.assignee_email, ticket.assignee_hidden_email = None, False
                return Change(ticket, "updated", actor, "unassigned")
            others = [p for p in DEMO_PEOPLE if p != ticket.assignee_email]
            ticket.assignee_email, ticket.assignee_hidden_email = self.rng.choice(others), False
            return Change(ticket, "updated", actor, f"assigned to {ticket.assignee_email}")
        return Change(ticket, "commented on", actor, "new comment")

    def _create(self) -> Change:
        project = self.rng.choice([key for key, _ in DEMO_PROJECTS])
        number = self.next_number[project]
        self.next_number[project] = number + 1
        total = self.rng.choice((0, *ESTIMATES_S))
        ticket = Ticket(
            key=f"{project}-{number}",
            summary=self.rng.choice(NEW_SUMMARIES),
            status="To Do",
            assignee_email=self.rng.choice((None, *DEMO_PEOPLE)),
            assignee_hidden_email=False,
            spent=0,
            total=total,
        )
        self.tickets[ticket.key] = ticket
        return Change(ticket, "created", self._actor(), "created")


def rejected_mail(rng: random.Random, site_host: str, known_key: str) -> tuple[str, bytes]:
    """A message the inbox DAG must refuse: a look-alike sender, a display-name spoof, or plain junk."""
    kind = rng.choice(("lookalike", "display_name", "junk"))
    if kind == "lookalike":
        return kind, jira_notification(
            known_key,
            site=site_host,
            summary="Urgent: verify your account",
            sender=f"jira@{site_host}.evil.example",
        )
    if kind == "display_name":
        return kind, jira_notification(
            known_key,
            site=site_host,
            summary="Please review the attached invoice",
            sender="billing@evil.example",
            display_name=f"jira@{site_host}",
        )
    junk = EmailMessage()
    junk["From"] = "Weekly Digest <newsletter@example.net>"
    junk["To"] = "jira-sync@example.com"
    junk["Subject"] = "Your weekly productivity digest"
    junk["Date"] = format_datetime(datetime.now(UTC))
    junk["Message-ID"] = f"<{uuid.uuid4()}@example.net>"
    junk.set_content("Ten tips to get more done this week. No ticket keys here.\n")
    return kind, junk.as_bytes()


class Generator:
    """Drives one site's stand-in and mailbox from its entry in the demo's state file."""

    def __init__(self, site: dict[str, Any], rng: random.Random) -> None:
        jira, imap = site["jira"], site["imap"]
        self.jira_url = jira["url"].rstrip("/")
        self.site_host = urlsplit(self.jira_url).hostname or "127.0.0.1"
        self._auth = "Basic " + base64.b64encode(f"{jira['email']}:{jira['api_token']}".encode()).decode()
        self.imap = imap
        self.rng = rng
        self.site = DemoSite(
            count=int(jira["demo_issues"]),
            seed=int(jira["seed"]),
            anchor=datetime.fromisoformat(jira["anchor"]),
            rng=rng,
        )

    def _upsert(self, ticket: Ticket) -> None:
        request = urllib.request.Request(
            f"{self.jira_url}/_standin/issues",
            data=json.dumps(ticket.upsert_body()).encode(),
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            response.read()

    def _deliver(self, messages: list[bytes]) -> None:
        client = imaplib.IMAP4(self.imap["host"], int(self.imap["port"]), timeout=IMAP_TIMEOUT_S)
        try:
            client.login(self.imap["login"], self.imap["password"])
            for raw in messages:
                typ, data = client.append(self.imap.get("mailbox", "INBOX"), None, None, raw)
                if typ != "OK":
                    raise imaplib.IMAP4.error(f"APPEND refused: {data!r}")
        finally:
            try:
                client.logout()
            except (OSError, imaplib.IMAP4.error):
                pass

    def tick(self) -> None:
        """One minute's activity; a failure is logged and the next tick tries again."""
        mails: list[bytes] = []
        for _ in range(self.rng.randint(2, 4)):
            change = self.site.random_change()
            try:
                self._upsert(change.ticket)
            except (OSError, urllib.error.URLError) as exc:
                log.warning("The stand-in refused %s (%s); no mail for it", change.ticket.key, exc)
                continue
            mails.append(
                jira_notification(
                    change.ticket.key,
                    site=self.site_host,
                    summary=change.ticket.summary,
                    actor=change.actor,
                    event=change.event,
                )
            )
            log.info("%s: %s by %s", change.ticket.key, change.description, change.actor)
        if self.rng.random() < REJECTED_MAIL_CHANCE:
            kind, raw = rejected_mail(self.rng, self.site_host, self.rng.choice(sorted(self.site.tickets)))
            mails.append(raw)
            log.info("Also mailing a message the inbox DAG must reject (%s)", kind)
        if not mails:
            return
        try:
            self._deliver(mails)
        except (OSError, imaplib.IMAP4.error) as exc:
            log.warning("Could not deliver %d message(s) to the mailbox: %s", len(mails), exc)
            return
        log.info("Delivered %d message(s) to %s", len(mails), self.imap["login"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True, help="the demo's state file (.demo/state.json)")
    parser.add_argument("--site", required=True, help="the demo site whose tickets and mailbox to drive")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between ticks (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random edits (default: random)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    state = json.loads(args.state.read_text())
    if args.site not in state["sites"]:
        parser.error(f"--site {args.site!r} is not a demo site ({', '.join(state['sites'])})")
    generator = Generator(state["sites"][args.site], random.Random(args.seed))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("Editing tickets of site %s on %s every %.0f s", args.site, generator.jira_url, args.interval)
    while not stop.is_set():
        generator.tick()
        stop.wait(args.interval)
    log.info("Stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
