"""Event trigger that wakes `jira_inbox` within seconds of Jira mail arriving, by IMAP IDLE (RFC 2177).

It drives an `AssetWatcher` (see jira_mail_sync.inbox_schedule): each event it yields becomes an
asset event, and the asset schedules the DAG. The rules (what to announce, when to renew IDLE, how
to back off) are include/imap_idle.py's; this module runs them in the triggerer.

The triggerer runs every trigger on one asyncio loop, and IMAPClient (like imaplib) blocks. So the
connection is read with `await aget_connection()` on the loop, and everything that touches the
network (OAuth token requests included, which msal and google-auth make synchronously) runs on this
trigger's own single worker thread. A dedicated thread rather than the loop's default executor: an
IDLE wait holds its thread for minutes, and the default pool (a handful of threads on a small
machine) is shared by every trigger on the triggerer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from airflow.sdk import BaseHook
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from include.imap_idle import (
    BACKOFF_MAX_S,
    HEALTHY_SESSION_S,
    POLL_WITHOUT_IDLE_S,
    RENEW_IDLE_S,
    Backoff,
    IdleSession,
    UnseenWatch,
)
from include.names import DEFAULT_SITE, IMAP_CONN_ID, STORE_CONN_ID
from include.watch_state import RefusedLogins, save_refused_login
from jira_mail_sync.hooks.imap import DEFAULT_IMAP_TIMEOUT, ImapInboxHook, ImapLoginError
from jira_mail_sync.hooks.ticket_store import TicketStoreHook

_T = TypeVar("_T")
# The clock and the wait between attempts, module-level so tests can drive time without sleeping.
_clock = time.time
_sleep = asyncio.sleep


class ImapIdleTrigger(BaseEventTrigger):
    """Fires when the unseen, not-rejected mail of `mailbox` on `imap_conn_id` changes and is not empty.

    The payload is `{"mailbox", "uidvalidity", "unseen", "new", "highest_uid"}` (counts, not UIDs:
    the run's sensor searches again; `new` is the growth of `unseen` since the last event). It
    never ends on its own: errors and server restarts are logged in one line each and followed by a
    reconnection after a capped backoff; a refused login is tried again once an hour (logged once
    an hour, and shown on the Jira sync page through include/watch_state.py). A server that
    does not offer IDLE is searched every `poll_interval_s` instead, which is said once in the log.
    """

    def __init__(
        self,
        *,
        imap_conn_id: str = IMAP_CONN_ID,
        mailbox: str = "INBOX",
        renew_idle_s: float = RENEW_IDLE_S,
        poll_interval_s: float = POLL_WITHOUT_IDLE_S,
        max_backoff_s: float = BACKOFF_MAX_S,
        store_conn_id: str = STORE_CONN_ID,
        site: str = DEFAULT_SITE,
    ) -> None:
        super().__init__()
        # The site this mailbox feeds, written with the watch state so the sync page can name it.
        self.site = site
        self.imap_conn_id = imap_conn_id
        # Where the watch state goes: the store of the site this mailbox feeds.
        self.store_conn_id = store_conn_id
        self.mailbox = mailbox
        self.renew_idle_s = float(renew_idle_s)
        self.poll_interval_s = float(poll_interval_s)
        self.max_backoff_s = float(max_backoff_s)
        self._said_no_idle = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "imap_conn_id": self.imap_conn_id,
            "mailbox": self.mailbox,
            "renew_idle_s": self.renew_idle_s,
            "poll_interval_s": self.poll_interval_s,
            "max_backoff_s": self.max_backoff_s,
        }
        # Only a site's own store and name are written out: the plain site's watcher serializes as it
        # always did, so its trigger rows keep matching.
        if self.store_conn_id != STORE_CONN_ID:
            kwargs["store_conn_id"] = self.store_conn_id
        if self.site != DEFAULT_SITE:
            kwargs["site"] = self.site
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    @property
    def _where(self) -> str:
        return f"{self.mailbox} on IMAP connection {self.imap_conn_id!r}"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watch = UnseenWatch(self.mailbox)
        backoff = Backoff(max_s=self.max_backoff_s)
        refusals = RefusedLogins(clock=_clock)
        loop = asyncio.get_running_loop()
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"imap-idle-{self.imap_conn_id}")

        def blocking(call: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
            return loop.run_in_executor(thread, call, *args)

        session: IdleSession | None = None
        try:
            while True:
                try:
                    conn = await BaseHook.aget_connection(self.imap_conn_id)
                    hook = ImapInboxHook(self.imap_conn_id, timeout=DEFAULT_IMAP_TIMEOUT)
                    client = await blocking(hook.log_in, conn)
                    if refusals.accepted():
                        self.log.info("The IMAP server accepts the login for %s again", self._where)
                        await blocking(self._save_refusals, refusals)
                    session = IdleSession(client, self.mailbox, timeout=DEFAULT_IMAP_TIMEOUT)
                    has_idle = await blocking(session.open)
                    watching = self._idle(session, watch, blocking) if has_idle else None
                    if watching is None:
                        self._say_no_idle(conn.host)
                        watching = self._poll(session, watch, blocking)
                    else:
                        self.log.info("Watching %s with IMAP IDLE", self._where)
                    async for payload in watching:
                        if time.monotonic() - session.opened_at >= HEALTHY_SESSION_S:
                            backoff.reset()
                        if payload is not None:
                            self.log.info(
                                "New mail state in %s: %s unseen (%s new)",
                                self._where,
                                payload["unseen"],
                                payload["new"],
                            )
                            yield TriggerEvent(payload)
                except ImapLoginError as exc:
                    # Refused (wrong password, revoked grant): retrying soon cannot help and risks a
                    # lockout, so one try and at most one log line an hour, and the sync page is told.
                    if refusals.refused(_describe(exc)):
                        self.log.error(
                            "Watching %s stopped: %s; trying again once an hour (next in %.0f s)",
                            self._where,
                            _describe(exc),
                            refusals.retry_s,
                        )
                    await blocking(self._save_refusals, refusals)
                    await _sleep(refusals.retry_s)
                except Exception as exc:  # noqa: BLE001 (any failure: report in one line, back off, reconnect)
                    if session is not None and time.monotonic() - session.opened_at >= HEALTHY_SESSION_S:
                        backoff.reset()
                    delay = backoff.next_delay()
                    self.log.warning(
                        "Watching %s stopped: %s; reconnecting in %.0f s", self._where, _describe(exc), delay
                    )
                    if session is not None:
                        session.abort()
                        await blocking(session.close)
                        session = None
                    await _sleep(delay)
        finally:
            # Cancelled (the watcher was removed, or the triggerer stops): wake the thread out of its
            # IDLE wait at once by shutting the socket, and let it finish on its own.
            if session is not None:
                session.abort()
                with contextlib.suppress(RuntimeError):
                    thread.submit(session.close)
            thread.shutdown(wait=False, cancel_futures=False)

    def _save_refusals(self, refusals: RefusedLogins) -> None:
        """Tell the Jira sync page (through the store database); a store that cannot be reached only
        costs the page this line, never the watch."""
        try:
            with TicketStoreHook(self.store_conn_id).connect() as (conn, dialect):
                save_refused_login(
                    conn,
                    dialect,
                    imap_conn_id=self.imap_conn_id,
                    mailbox=self.mailbox,
                    refusals=refusals,
                    site=self.site,
                )
        except Exception as exc:  # noqa: BLE001 (the page's view is secondary to the watch)
            self.log.warning("Could not record the login state of %s for the sync page: %s", self._where, exc)

    async def _idle(
        self, session: IdleSession, watch: UnseenWatch, blocking: Callable[..., asyncio.Future[Any]]
    ) -> AsyncIterator[dict[str, object] | None]:
        """Search, IDLE until a change or the renewal time, DONE, search again: for ever."""
        while True:
            yield watch.update(await blocking(session.unseen))
            await blocking(session.start_idle)
            renew_at = time.monotonic() + self.renew_idle_s
            while True:
                remaining = renew_at - time.monotonic()
                if remaining <= 0:
                    break
                # Bounded waits, so a session that has been up a while resets the backoff promptly.
                if await blocking(session.wait, min(remaining, HEALTHY_SESSION_S)):
                    break
                yield None
            await blocking(session.end_idle)

    async def _poll(
        self, session: IdleSession, watch: UnseenWatch, blocking: Callable[..., asyncio.Future[Any]]
    ) -> AsyncIterator[dict[str, object] | None]:
        """For servers without IDLE: the same search every poll_interval_s (the wait is on the loop)."""
        while True:
            yield watch.update(await blocking(session.unseen))
            await _sleep(self.poll_interval_s)
            await blocking(session.noop)

    def _say_no_idle(self, host: str | None) -> None:
        if not self._said_no_idle:
            self._said_no_idle = True
            self.log.warning(
                "The IMAP server %s does not offer IDLE (RFC 2177): checking %s every %.0f s instead",
                host,
                self._where,
                self.poll_interval_s,
            )


def _describe(exc: BaseException) -> str:
    """One line for the log. Our errors (login, settings) are worded to be shown and carry no secret;
    anything else is named by its type and message (IMAP and socket errors carry none either)."""
    text = " ".join(str(exc).split()) or "no detail"
    if type(exc).__module__.startswith(("jira_mail_sync", "include")):
        return text
    return f"{type(exc).__name__}: {text}"
