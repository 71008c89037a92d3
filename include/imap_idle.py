"""Watching one IMAP mailbox with IDLE (RFC 2177): when to announce unseen mail, renew IDLE, back off.

No Airflow import. `UnseenWatch` and `Backoff` are pure decisions; `IdleSession` is the blocking
IMAP side (an IMAPClient session that `Inbox` opened), meant to run on a worker thread: the
Airflow trigger (plugins/jira_mail_sync/triggers/imap_idle.py) drives it from the triggerer's
event loop and never calls it on that loop.

The watch is state-based rather than event-based: every wake-up (an untagged EXISTS, EXPUNGE or
FETCH during IDLE, or a renewal) ends IDLE and asks the inbox for its unseen summary (not
`$JiraRejected`): one `UID SEARCH RETURN (MIN MAX COUNT)` (ESEARCH) or STATUS, whose answer stays
a few bytes however much mail is unseen (Inbox.unseen_summary, the function the sensor and the
status page use too). An announcement is made only when that summary (count, lowest and highest
UID) changed and is not empty, so

- mail that is unseen when the watch starts is announced once;
- new mail is announced (the highest UID and the count change);
- a run that settles part of a large backlog (max_messages) changes the set, so the rest is
  announced again and the next run takes it, instead of waiting for the safety schedule;
- mail nobody can settle (rejected, failing) is never announced twice for the same state, so a
  watcher cannot re-fire without end: a run that changes nothing causes no announcement.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from dataclasses import dataclass

from imapclient import IMAPClient

from include.imap_inbox import REJECTED_KEYWORD, Inbox, UnseenSummary

log = logging.getLogger(__name__)

# RFC 2177 §3: servers may drop an IDLE after 30 minutes, so clients re-issue it before 29. Ten
# minutes also proves the connection alive (the DONE must be answered) as often as the DAG's safety
# schedule runs, so a silently dead connection costs no more than the schedule catches anyway.
RENEW_IDLE_S = 10 * 60.0
# A server without IDLE is asked this often (a cheap UID SEARCH on the open session).
POLL_WITHOUT_IDLE_S = 60.0
# After a first change notice, more are collected for this long before searching: a burst of
# deliveries then costs one search and one announcement, not one per message.
SETTLE_S = 0.2
SETTLE_MAX_S = 3.0
# Reconnect delays: 2, 4, 8, ... s, capped, and reset once a session has been up this long.
BACKOFF_FIRST_S = 2.0
BACKOFF_MAX_S = 300.0
HEALTHY_SESSION_S = 60.0
# Untagged responses that mean the mailbox changed. Others ("* OK Still here", the keep-alive that
# Dovecot sends every 2 minutes) do not call for a search.
CHANGE_RESPONSES = frozenset({b"EXISTS", b"EXPUNGE", b"FETCH", b"RECENT", b"VANISHED"})
# An idle_check that returns nothing this long before its timeout did not time out (see _check).
EARLY_S = 0.05


class ConnectionLost(Exception):
    """The server said BYE, or closed the connection, while the session was idling."""


@dataclass
class UnseenWatch:
    """The unseen summary last announced for one mailbox, and the decision to announce again."""

    mailbox: str
    uidvalidity: int | None = None
    announced: tuple[int, int | None, int | None] = (0, None, None)

    def update(self, summary: UnseenSummary) -> dict[str, object] | None:
        """The announcement (a JSON-able payload) if the summary changed and mail is unseen, else None.

        `new` is how many more messages are unseen than at the last announcement (never negative).
        """
        current = (summary.count, summary.lowest, summary.highest)
        if summary.uidvalidity != self.uidvalidity:
            # A recreated mailbox: its UIDs name other messages, so nothing counts as announced.
            self.uidvalidity, self.announced = summary.uidvalidity, (0, None, None)
        if current == self.announced:
            return None
        previous = self.announced[0]
        self.announced = current
        if not summary.count:
            return None
        return {
            "mailbox": self.mailbox,
            "uidvalidity": summary.uidvalidity,
            "unseen": summary.count,
            "new": max(summary.count - previous, 0),
            "highest_uid": summary.highest,
        }


@dataclass
class Backoff:
    """Capped exponential delays between reconnection attempts."""

    first_s: float = BACKOFF_FIRST_S
    max_s: float = BACKOFF_MAX_S
    failures: int = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.first_s * 2 ** min(self.failures, 30))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


def _kind(response: object) -> bytes | None:
    """The response name of one parsed IDLE response: (3, b'EXISTS') -> b'EXISTS', (b'BYE', ...) -> b'BYE'."""
    if not isinstance(response, tuple) or not response:
        return None
    for part in response[:2]:
        if isinstance(part, bytes):
            return part.upper()
    return None


class IdleSession:
    """One logged-in IMAPClient session watching `mailbox` read-only. Every method blocks: use a thread.

    `abort()` is the exception: it may be called from any thread, and makes a blocked `wait()`
    return at once (with ConnectionLost) by shutting the socket down.
    """

    def __init__(self, client: IMAPClient, mailbox: str, *, timeout: float) -> None:
        self.client = client
        self.inbox = Inbox(client, mailbox)
        self.idling = False
        self.opened_at = time.monotonic()

    @property
    def mailbox(self) -> str:
        return self.inbox.mailbox

    def open(self) -> bool:
        """EXAMINE the mailbox (nothing can be changed by the watch); True if the server offers IDLE."""
        self.inbox.open(readonly=True)
        return "IDLE" in (self.inbox.capabilities or frozenset())

    def unseen(self) -> UnseenSummary:
        """The unseen, not-labelled-rejected mail in one short answer, however much there is."""
        assert self.inbox.uidvalidity is not None, "open() first"
        return self.inbox.unseen_summary(exclude_keyword=REJECTED_KEYWORD)

    def start_idle(self) -> None:
        self.client.idle()
        self.idling = True

    def wait(self, timeout: float) -> bool:
        """Wait in IDLE up to `timeout` s; True when the mailbox changed (more notices are then
        collected for SETTLE_S, at most SETTLE_MAX_S). ConnectionLost on BYE or a closed socket."""
        if not self._changes(self._check(timeout)):
            return False
        settle_until = time.monotonic() + SETTLE_MAX_S
        while time.monotonic() < settle_until:
            if not self._changes(self._check(min(SETTLE_S, settle_until - time.monotonic()))):
                break
        return True

    def _check(self, timeout: float) -> list[object]:
        """IMAPClient's idle_check, telling a closed connection from a quiet one.

        idle_check returns [] both when the timeout passes and when the server closed the socket
        (it swallows the EOF). A closed socket is readable at once, every time: so an empty answer
        well before the timeout, three times running, means the connection is gone.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        early_empty = 0
        while True:
            remaining = max(deadline - time.monotonic(), 0.0)
            responses = self.client.idle_check(timeout=remaining)
            if responses or time.monotonic() >= deadline - EARLY_S:
                return responses
            early_empty += 1
            if early_empty >= 3:
                raise ConnectionLost("the server closed the connection")
            time.sleep(EARLY_S)  # a line that arrived in pieces is whole by then

    @staticmethod
    def _changes(responses: list[object]) -> bool:
        kinds = {_kind(response) for response in responses}
        if b"BYE" in kinds:
            raise ConnectionLost("the server ended the session (BYE)")
        return bool(kinds & CHANGE_RESPONSES)

    def end_idle(self) -> None:
        """DONE, and wait for the server's OK (this round trip also proves the connection alive)."""
        if self.idling:
            self.idling = False
            self.client.idle_done()

    def noop(self) -> None:
        self.client.noop()

    def abort(self) -> None:
        """Shut the socket down (any thread): a blocked read returns, the session is finished."""
        with contextlib.suppress(OSError, AttributeError):
            self.client.socket().shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Leave IDLE and log out if the server still answers; close the socket in any case."""
        try:
            if self.idling:
                self.end_idle()
            self.inbox.close()
            self.client.logout()
        except Exception as exc:  # the session is being thrown away: how it ended no longer matters
            log.debug("IMAP session on %s ended uncleanly: %s", self.mailbox, exc)
            with contextlib.suppress(Exception):
                self.client.shutdown()
