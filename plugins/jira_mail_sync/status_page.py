"""The "Jira sync" page of the Airflow UI and its JSON twin: backlog, held-back mail, sweep, store, Jira.

Routes (under the plugin's prefix, `/jira-mail-sync`):

- `GET /status`: the figures as JSON, for monitoring tools (`Authorization: Bearer <token>`);
- `GET /status/page`: the same as an HTML page, shown inside the Airflow UI (the "Jira sync" entry of
  the navigation, an `external_views` item of the plugin);
- `POST /status/release`: hand rejected or quarantined mail back to `jira_inbox` (a form post from the
  page, or JSON `{"mailbox": "INBOX", "uids": [..]}`): it triggers a `jira_inbox` run with the mail
  ledger's release params.

Who may see what (plugins/jira_mail_sync/auth.py does the checks, with the auth manager's own calls):
the page and the JSON need the right to read `jira_inbox` and `jira_sweep`. That shows the counts.
What a held-back mail said (sender, subject, Message-ID, ticket keys, the reason naming the sender)
also needs `can_read` on jira_inbox's task logs or XCom, where the same text already is; without it
the ledger shows counts only. Each DAG's run figures need read on its DAG runs. Releasing needs the
right to trigger `jira_inbox` runs. Form posts are also refused when they come from another site
(Origin check, `same_origin`), on top of the cookie's SameSite=Lax. The page may be framed only by
its own origin (the Airflow UI): `Content-Security-Policy: frame-ancestors 'self'`.

Which site (a sites file, README "Many sites and mailboxes"): `?site=<name>` chooses the site whose
figures are shown, and `?mailbox=` one of its mailboxes (its folder name or its slug). Every answer
lists the sites the user may read (`sites`: each with its mailboxes and DAG ids, at most
MAX_SITES_SHOWN sites of MAX_MAILBOXES_SHOWN mailboxes each). Without `?site=` the first site the
user may read is shown and `site.selected_by` says "first": a monitoring script that watches every
site asks once per name of the `sites` list, since each site's figures cost an IMAP login and store
reads, and one answer for all sites would grow with the file. An unknown site is 404. The rights
are those of the chosen site's DAGs (its sweep DAG and the mailbox's inbox DAG), and a release
triggers the chosen mailbox's own inbox DAG, checked for the right to trigger that DAG. With no
sites file there is one site, `default`, and the page is as before (no site selector).

Which mailboxes of the plain site: only those the DAGs read (`known_mailboxes`): `INBOX` of
`imap_default`, the one the idle watcher listens to, and the default of jira_inbox's `mailbox` param
as the deployed DAG has it (its serialized copy in the metadata database). Any other `?mailbox=`
answers 404 before an IMAP session is opened, so readers cannot make the sync account log in at will.
A file site's mailboxes are those of its entry, and nothing else.

Cost: the store figures are a handful of indexed or single-scan queries (bench/status_page.py); the
mailbox figures need an IMAP login and are cached for `[jira_mail_sync] status_mailbox_cache_seconds`
(default 30) per mailbox, so viewers do not open an IMAP connection each. One reader at a time
refreshes a mailbox; the others wait at most MAILBOX_WAIT_SECONDS and then get 503 with Retry-After,
so a slow IMAP server never queues api-server threads (which Airflow's own routes share) behind it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from include.census import last_runs
from include.imap_wire import MAX_UID, check_mailbox
from include.names import DEFAULT_SITE, IMAP_CONN_ID, INBOX_DAG_ID, STORE_CONN_ID, SWEEP_DAG_ID
from include.sites import Mailbox, Site, SitesFileError
from include.sweep_progress import get_watermark, site_scope
from include.sync_status import (
    as_json,
    inbox_figures,
    jira_figures,
    ledger_figures,
    ticket_figures,
    uids_held_back,
)
from include.watch_state import read_refused_logins
from jira_mail_sync.auth import (
    Credentials,
    SessionUser,
    may_access_dag,
    may_read_any,
    require_dag_access,
    session_user,
)
from jira_mail_sync.hooks.imap import ImapInboxHook
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.rest_api import ErrorAnswer, Problem, retry_after_header
from jira_mail_sync.settings import SettingError, read_settings

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

log = logging.getLogger(__name__)

PAGE_NAME = "Jira sync"
DEFAULT_MAILBOX = "INBOX"
MAX_RELEASE_UIDS = 1000
LEDGER_ROWS_SHOWN = 100
PENDING_RUNS_SHOWN = 20
TEMPLATES = Path(__file__).parent / "templates"
READ_DAGS = (INBOX_DAG_ID, SWEEP_DAG_ID)
# The site list of the page and the JSON stays bounded however long the sites file is: each shown site
# and mailbox costs a permission check per view. A site past the bound is still chosen by `?site=`.
MAX_SITES_SHOWN = 50
MAX_MAILBOXES_SHOWN = 20
MAX_SITE_NAME = 200
# A viewer waits this long for another viewer's refresh of the same mailbox, then gets 503.
MAILBOX_WAIT_SECONDS = 2.0
MAILBOX_BUSY_RETRY_AFTER_SECONDS = 5
# The page's IMAP session gets less time than a DAG's: a person is waiting, and the page says it failed.
PAGE_IMAP_TIMEOUT_SECONDS = 10.0
# Where a held-back mail's own words are already readable in Airflow: its task logs and its XCom.
MAIL_DETAIL_ENTITIES = ("TASK_LOGS", "XCOM")
# The page's release runs are named so; `released=` is shown only when it has exactly this shape.
RELEASE_RUN_PREFIX = "release__"
RELEASE_RUN_TIME_FORMAT = "%Y%m%dT%H%M%S%f"
RELEASE_RUN_ID = re.compile(re.escape(RELEASE_RUN_PREFIX) + r"\d{8}T\d{12}")
# The page may appear only inside Airflow's own UI (same origin), never framed by another site.
SECURITY_HEADERS = {"Content-Security-Policy": "frame-ancestors 'self'"}

router = APIRouter()


# ------------------------------------------------------------------------------------------- who asks


class Visibility(BaseModel):
    """What of the figures this user may see beyond the counts (of the chosen site's DAGs)."""

    mail_details: bool
    runs: dict[str, bool]

    @classmethod
    def of(cls, user: BaseUser, chosen: Selection | None = None) -> Visibility:
        inbox_dag_id, sweep_dag_id = chosen.read_dags if chosen is not None else READ_DAGS
        return cls(
            mail_details=may_read_any(user, inbox_dag_id, MAIL_DETAIL_ENTITIES),
            runs={
                dag_id: may_access_dag(user, dag_id, entity="RUN") for dag_id in (inbox_dag_id, sweep_dag_id)
            },
        )


# ----------------------------------------------------------------------------------------- the sites

_sites_cache: dict[str, Any] = {"key": None, "sites": None}
_sites_guard = threading.Lock()


def configured_sites() -> tuple[Site, ...]:
    """The sites of the sites file (jira_mail_sync/sites_config.py), or the plain site without one.

    Parsed again only when the file changes (its modification time and size), not on every view.
    A bad file is 503 with the same message as the DAG files' import error, never a 500.
    """
    from jira_mail_sync.sites_config import sites_file_in_use

    try:
        path = sites_file_in_use()
        if path is None:
            from include.sites import default_site

            return (default_site(),)
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with _sites_guard:
            if _sites_cache["key"] == key:
                return _sites_cache["sites"]
        from include.sites import load_sites_file

        sites = load_sites_file(path)
    except (SitesFileError, SettingError, OSError) as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"The sites file cannot be used: {exc}",
            headers=SECURITY_HEADERS,
        ) from None
    with _sites_guard:
        _sites_cache.update(key=key, sites=sites)
    return sites


@dataclass(frozen=True)
class Selection:
    """The site and mailbox whose figures are shown, and how the site was chosen."""

    site: Site
    mailbox: Mailbox
    # "site parameter" when asked for by name, "first" when no `site` was given.
    selected_by: str

    @property
    def inbox_dag_id(self) -> str:
        return self.site.inbox_dag_id(self.mailbox)

    @property
    def read_dags(self) -> tuple[str, str]:
        """The DAGs a reader must be allowed to read (the plain site's order: jira_inbox first)."""
        return (self.inbox_dag_id, self.site.sweep_dag_id())

    def query(self, **extra: str) -> str:
        """The page's own query string for this choice; the plain site's is today's (`mailbox=` only)."""
        fields = {} if self.site.plain else {"site": self.site.name}
        return urlencode({**fields, "mailbox": self.mailbox.mailbox, **extra}, quote_via=quote)


def _may_read_site(user: BaseUser, site: Site) -> bool:
    return may_access_dag(user, site.sweep_dag_id())


def _site_mailbox(site: Site, name: str | None) -> Mailbox:
    """The mailbox of a file site named by its folder or slug (the first without a name); 404 else."""
    if name is None:
        return site.mailboxes[0]
    for mailbox in site.mailboxes:
        if name == mailbox.slug:
            return mailbox
    named = [mailbox for mailbox in site.mailboxes if mailbox.mailbox == name]
    if len(named) == 1:
        return named[0]
    known = ", ".join(f"{m.mailbox} ({m.slug})" for m in site.mailboxes[:MAX_MAILBOXES_SHOWN])
    why = "names more than one mailbox: give its slug" if named else "is not one of its mailboxes"
    raise HTTPException(
        status.HTTP_404_NOT_FOUND,
        detail=f"Site {site.name}: {name!r} {why}; it reads {known}",
    )


def select(user: BaseUser, site_name: str | None, mailbox: str | None) -> Selection:
    """The site and mailbox `user` asked for, checked: 404 for an unknown site or mailbox, 403 without
    the right to read that site's DAGs, 422 for a mailbox name IMAP cannot carry.

    Blocking (the auth manager, the metadata database): called in a worker thread.
    """
    sites = configured_sites()
    if site_name is not None:
        site = next((s for s in sites if s.name == site_name), None)
        if site is None:
            # The names of the other sites are not listed here: `sites` of an answer lists those this
            # user may read, and the rest are not theirs to learn.
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=f"No site is called {site_name[:MAX_SITE_NAME]!r}: the sites you may read are "
                "listed under `sites` of the status JSON",
            )
        selected_by = "site parameter"
    else:
        # The first site this user may read, so a user of one site is not refused for another's.
        site = next((s for s in sites if _may_read_site(user, s)), sites[0])
        selected_by = "first"
    if site.plain:
        # The plain site's DAG ids do not depend on the mailbox: the rights first, then the mailbox
        # (which reads the metadata database), as before sites existed.
        require_dag_access(user, (INBOX_DAG_ID, SWEEP_DAG_ID))
        chosen = Mailbox(imap_conn_id=IMAP_CONN_ID, mailbox=checked_mailbox(mailbox or DEFAULT_MAILBOX))
        return Selection(site, chosen, selected_by)
    require_dag_access(user, (site.sweep_dag_id(),))
    if mailbox is not None:
        try:
            check_mailbox(mailbox)
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=str(exc)) from None
    chosen = _site_mailbox(site, mailbox)
    require_dag_access(user, (site.inbox_dag_id(chosen),))
    return Selection(site, chosen, selected_by)


def site_listing(user: BaseUser, chosen: Selection) -> dict[str, Any]:
    """The sites `user` may read (the chosen one always), each with the mailboxes it may read; bounded."""
    sites = configured_sites()
    listed: list[dict[str, Any]] = []
    for site in sites[:MAX_SITES_SHOWN]:
        if site != chosen.site and not _may_read_site(user, site):
            continue
        listed.append(_site_entry(user, site))
    if chosen.site not in sites[:MAX_SITES_SHOWN]:
        listed.append(_site_entry(user, chosen.site))
    return {
        "sites": listed,
        "sites_configured": len(sites),
        "sites_truncated": len(sites) > MAX_SITES_SHOWN,
        "from_sites_file": not chosen.site.plain,
    }


def _site_entry(user: BaseUser, site: Site) -> dict[str, Any]:
    mailboxes = [
        {
            "imap_conn_id": mailbox.imap_conn_id,
            "mailbox": mailbox.mailbox,
            "slug": mailbox.slug,
            "inbox_dag_id": site.inbox_dag_id(mailbox),
        }
        for mailbox in site.mailboxes[:MAX_MAILBOXES_SHOWN]
        if may_access_dag(user, site.inbox_dag_id(mailbox))
    ]
    return {
        **_site_names(site),
        "mailboxes": mailboxes,
        "mailboxes_truncated": len(site.mailboxes) > MAX_MAILBOXES_SHOWN,
    }


# ------------------------------------------------------------------------------------- the mailboxes


def _inbox_dag_mailbox() -> str | None:
    """The default of jira_inbox's `mailbox` param as deployed; None before the DAG is serialized."""
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session

    try:
        with create_session() as session:
            dag = SerializedDagModel.get_dag(INBOX_DAG_ID, session=session)
        mailbox = dag.params["mailbox"] if dag is not None and "mailbox" in dag.params else None
    except Exception as exc:  # the metadata database is the api-server's own: rare, and INBOX still works
        log.warning("Status page: could not read jira_inbox's mailbox param (%s)", type(exc).__name__)
        return None
    return mailbox if isinstance(mailbox, str) else None


def known_mailboxes() -> tuple[str, ...]:
    """The mailboxes the DAGs read, the only ones the page opens (see the module's docstring)."""
    from jira_mail_sync.inbox_schedule import WATCHED_MAILBOX

    names = [DEFAULT_MAILBOX, WATCHED_MAILBOX, _inbox_dag_mailbox()]
    return tuple(dict.fromkeys(name for name in names if name))


def checked_mailbox(mailbox: str) -> str:
    """`mailbox` if the DAGs read it: 422 for a name IMAP cannot carry, 404 for one no DAG reads."""
    try:
        mailbox = check_mailbox(mailbox)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=str(exc)) from None
    known = known_mailboxes()
    if mailbox not in known:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"The DAGs read no mailbox of that name; this page shows {', '.join(known)}",
        )
    return mailbox


# ------------------------------------------------------------------------------------- mailbox cache


def cache_seconds() -> float:
    """`[jira_mail_sync] status_mailbox_cache_seconds` (jira_mail_sync/settings.py)."""
    return read_settings().status_mailbox_cache_seconds


def _store_connect_timeout() -> int:
    """`[jira_mail_sync] rest_store_connect_timeout_seconds`: the page opens the same store as the lookup."""
    return read_settings().rest_store_connect_timeout_seconds


def _refused_logins(store_conn_id: str = STORE_CONN_ID) -> list[dict[str, Any]]:
    """The IDLE watchers' refused logins in a store, read whether or not IMAP answers this page;
    without the server's answer text, which names host and login."""
    try:
        with TicketStoreHook(store_conn_id, connect_timeout=_store_connect_timeout()).connect() as (
            conn,
            dialect,
        ):
            rows = read_refused_logins(conn, dialect)
    except Exception as exc:
        log.warning("Status page: reading the IDLE watcher's state failed: %s", type(exc).__name__)
        return []
    return [{k: v for k, v in row.items() if k != "detail"} for row in rows]


class MailboxBusy(Exception):
    """Another reader is refreshing this mailbox and did not finish within MAILBOX_WAIT_SECONDS."""


class MailboxCache:
    """The mailbox figures per (connection, mailbox), kept `cache_seconds()`; one IMAP login refreshes them.

    One lock per mailbox, taken with a bounded wait: concurrent viewers share one login instead of
    each making one, and none waits longer than `wait_seconds` behind a slow server (MailboxBusy).
    A failed look-up is cached too, so an unreachable server is not asked again by every viewer.
    `clock` gives monotonic seconds (tests pass their own); `logins` counts the IMAP sessions opened.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wait_seconds: float = MAILBOX_WAIT_SECONDS,
        imap_timeout: float = PAGE_IMAP_TIMEOUT_SECONDS,
    ) -> None:
        self._clock = clock
        self._wait_seconds = wait_seconds
        self._imap_timeout = imap_timeout
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str, str, str], threading.Lock] = {}
        self._entries: dict[tuple[str, str, str, str], tuple[float, dict[str, Any]]] = {}
        self.logins = 0

    def clear(self) -> None:
        with self._guard:
            self._entries.clear()

    def _fresh(self, key: tuple[str, str, str, str]) -> dict[str, Any] | None:
        with self._guard:
            cached = self._entries.get(key)
        if cached is not None and self._clock() - cached[0] < cache_seconds():
            return cached[1]
        return None

    def get(
        self, conn_id: str, mailbox: str, *, store_conn_id: str = STORE_CONN_ID, site: str = DEFAULT_SITE
    ) -> dict[str, Any]:
        """The figures of `mailbox` (one the DAGs read: the callers check), fresh or from the cache.

        `store_conn_id` is the store of the mailbox's `site` (its held mail and watcher state).
        """
        key = (store_conn_id, site, conn_id, mailbox)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        figures = self._fresh(key)
        if figures is not None:
            return figures
        if not lock.acquire(timeout=self._wait_seconds):
            raise MailboxBusy(mailbox)
        try:
            # Whoever held the lock may have just refreshed the figures.
            figures = self._fresh(key)
            if figures is None:
                figures = self._read(conn_id, mailbox, store_conn_id, site)
                with self._guard:
                    self._entries[key] = (self._clock(), figures)
            return figures
        finally:
            lock.release()

    def _read(self, conn_id: str, mailbox: str, store_conn_id: str, site: str) -> dict[str, Any]:
        now = datetime.now(UTC)
        with self._guard:
            self.logins += 1
        refused = _refused_logins(store_conn_id)

        def held(uidvalidity: int, uids: list[int]) -> set[int]:
            # The store is opened only once the mailbox has answered, and with a connect timeout.
            with TicketStoreHook(store_conn_id, connect_timeout=_store_connect_timeout()).connect() as (
                conn,
                dialect,
            ):
                return uids_held_back(
                    conn,
                    dialect,
                    site=site,
                    imap_conn_id=conn_id,
                    mailbox=mailbox,
                    uidvalidity=uidvalidity,
                    uids=uids,
                    now=now,
                )

        try:
            with ImapInboxHook(conn_id, timeout=self._imap_timeout).inbox(mailbox) as inbox:
                figures = inbox_figures(inbox, now=now, held=held)
        except Exception as exc:
            # The reason goes to the server log; the page says only what failed (no host, login or secret).
            log.warning(
                "Status page: reading mailbox %s of %s failed: %s: %s",
                mailbox,
                conn_id,
                type(exc).__name__,
                exc,
            )
            figures = {
                "mailbox": mailbox,
                "unseen": None,
                "oldest_unseen_age_seconds": None,
                "error": f"The mailbox could not be read ({type(exc).__name__}); see the api-server log",
            }
        return {**figures, "refused_logins": refused, "checked_at": now}


mailbox_cache = MailboxCache()


def _mailbox_figures(chosen: Selection) -> dict[str, Any]:
    mailbox = chosen.mailbox.mailbox
    try:
        return mailbox_cache.get(
            chosen.mailbox.imap_conn_id,
            mailbox,
            store_conn_id=chosen.site.store_conn_id,
            site=chosen.site.name,
        )
    except MailboxBusy:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"The mailbox {mailbox} is being read for another viewer; try again shortly",
            headers={"Retry-After": str(MAILBOX_BUSY_RETRY_AFTER_SECONDS), **SECURITY_HEADERS},
        ) from None


# ------------------------------------------------------------------------------------ Airflow's side


def inbox_mode(mailbox: Mailbox | None = None) -> str:
    """`idle` or `poll`, as the mailbox's inbox DAG is scheduled; a bad setting is shown, not raised."""
    if mailbox is not None and mailbox.inbox_mode:
        return mailbox.inbox_mode
    try:
        return read_settings().inbox_mode
    except SettingError:
        return "unknown (the setting is invalid: see the DAG's import error)"


def _run(dag_run: Any) -> dict[str, Any]:
    started, ended = dag_run.start_date, dag_run.end_date
    return {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        "run_type": str(dag_run.run_type),
        "state": str(dag_run.state),
        "started_at": started,
        "ended_at": ended,
        "duration_seconds": (ended - started).total_seconds() if started and ended else None,
        "from": dag_run.data_interval_start,
        "to": dag_run.data_interval_end,
    }


def run_figures(visible: dict[str, bool], read_dags: tuple[str, str] = READ_DAGS) -> dict[str, Any]:
    """The latest run of each DAG of `read_dags` (inbox, sweep), and the sweep runs still queued or
    running (backfills included).

    Only for the DAGs in `visible` that map to True (the user may read their runs); None for the others.
    """
    sweep_dag_id = read_dags[1]
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import func, select

    pending_states = (DagRunState.QUEUED, DagRunState.RUNNING)
    latest: dict[str, Any] = dict.fromkeys(read_dags)
    pending: list[dict[str, Any]] | None = None
    pending_count: int | None = None
    if not any(visible.values()):
        return {"latest": latest, "pending": pending, "pending_count": pending_count}
    with create_session() as session:
        for dag_id in read_dags:
            if not visible.get(dag_id):
                continue
            dag_run = session.scalars(
                select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.run_after.desc()).limit(1)
            ).first()
            latest[dag_id] = _run(dag_run) if dag_run is not None else None
        if visible.get(sweep_dag_id):
            where = (DagRun.dag_id == sweep_dag_id, DagRun.state.in_(pending_states))
            pending = [
                _run(dag_run)
                for dag_run in session.scalars(
                    select(DagRun)
                    .where(*where)
                    .order_by(DagRun.data_interval_start.asc().nulls_last())
                    .limit(PENDING_RUNS_SHOWN)
                )
            ]
            pending_count = int(session.scalar(select(func.count()).select_from(DagRun).where(*where)) or 0)
    return {"latest": latest, "pending": pending, "pending_count": pending_count}


# ---------------------------------------------------------------------------------------- the figures


def _store_figures(now: datetime, site: Site) -> dict[str, Any]:
    """The figures of `site` in its store. Sites may share a store: every reader takes the site (the
    watermark has its own scope per site)."""
    try:
        with TicketStoreHook(site.store_conn_id, connect_timeout=_store_connect_timeout()).connect() as (
            conn,
            dialect,
        ):
            return {
                "tickets": ticket_figures(conn, dialect, now=now, site=site.name),
                "watermark": get_watermark(conn, dialect, site_scope(site.name)),
                "ledger": ledger_figures(conn, dialect, limit=LEDGER_ROWS_SHOWN, site=site.name),
                "jira": jira_figures(conn, dialect, now=now, jira_conn_id=site.jira_conn_id),
                # Each project's last census (the site's census DAG).
                "census": last_runs(conn, dialect, site=site.name),
                "error": None,
            }
    except Exception as exc:
        log.warning("Status page: reading the store failed: %s: %s", type(exc).__name__, exc)
        return {"error": f"The store could not be read ({type(exc).__name__}); see the api-server log"}


def _ledger(ledger: dict[str, Any] | None, *, mail_details: bool) -> dict[str, Any]:
    # Without the right to read jira_inbox's logs or XCom, what a mail said stays hidden: the senders,
    # subjects and reasons are often not Jira mail at all, and only the counts are the sync's state.
    return {
        "available": ledger is not None,
        "details_shown": mail_details,
        "rejected": ledger["rejected"] if ledger else None,
        "quarantined": ledger["quarantined"] if ledger else None,
        "failed": ledger["failed"] if ledger else None,
        "settled": ledger["settled"] if ledger else None,
        "entries": ledger["entries"] if ledger and mail_details else [],
    }


def _site_watchers(inbox: dict[str, Any], site: Site) -> dict[str, Any]:
    """`inbox` with only the refused logins of `site`'s own mailboxes (another site may share the store)."""
    if site.plain or "refused_logins" not in inbox:
        return inbox
    own = {(m.imap_conn_id, m.mailbox) for m in site.mailboxes}
    refused = [r for r in inbox["refused_logins"] if (r["imap_conn_id"], r["mailbox"]) in own]
    return {**inbox, "refused_logins": refused}


def collect_status(
    mailbox: str | Selection,
    visibility: Visibility,
    listing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every figure of the page the user may see, as plain data (datetimes included).

    `mailbox`: the chosen site and mailbox (a folder name alone means the plain site's).
    """
    from include.sites import default_site

    if isinstance(mailbox, str):
        mailbox = Selection(default_site(), Mailbox(imap_conn_id=IMAP_CONN_ID, mailbox=mailbox), "first")
    chosen = mailbox
    site = chosen.site
    inbox_dag_id, sweep_dag_id = chosen.read_dags
    now = datetime.now(UTC)
    inbox = _site_watchers(_mailbox_figures(chosen), site)
    store = _store_figures(now, site)
    runs = run_figures(visibility.runs, chosen.read_dags)
    watermark = store.get("watermark")
    tickets = store.get("tickets") or {}
    jira = store.get("jira") or {}
    listing = listing or {"sites": [], "sites_configured": 1, "sites_truncated": False}
    return {
        "generated_at": now,
        "site": {
            **_site_names(site),
            "selected_by": chosen.selected_by,
        },
        **listing,
        "store_error": store["error"],
        "runs_shown": visibility.runs,
        "inbox": {
            **inbox,
            "imap_conn_id": chosen.mailbox.imap_conn_id,
            "slug": chosen.mailbox.slug,
            "dag_id": inbox_dag_id,
            "mode": inbox_mode(chosen.mailbox),
            "last_run": runs["latest"][inbox_dag_id],
        },
        "ledger": _ledger(store.get("ledger"), mail_details=visibility.mail_details),
        "sweep": {
            "dag_id": sweep_dag_id,
            "watermark": watermark,
            "behind_seconds": (now - watermark).total_seconds() if watermark else None,
            "last_run": runs["latest"][sweep_dag_id],
            "pending": runs["pending"],
            "pending_count": runs["pending_count"],
        },
        "tickets": {
            "total": tickets.get("total"),
            "by_source": tickets.get("by_source", {}),
            "changed_last_hour": tickets.get("changed_last_hour"),
            "deleted": tickets.get("deleted"),
        },
        "census": store.get("census") or [],
        "jira": {
            "requests_last_hour": jira.get("requests_last_hour"),
            "throttled_last_hour": jira.get("throttled_last_hour"),
            "last_429": jira.get("last_429"),
        },
    }


def _site_names(site: Site) -> dict[str, Any]:
    from jira_mail_sync.census_dag import CENSUS_DAG_PREFIX

    return {
        "name": site.name,
        "jira_conn_id": site.jira_conn_id,
        "store_conn_id": site.store_conn_id,
        "pool": site.pool,
        "sweep_dag_id": site.sweep_dag_id(),
        "census_dag_id": site.dag_id(CENSUS_DAG_PREFIX),
    }


def _figures_for(user: BaseUser, site: str | None, mailbox: str | None) -> tuple[Selection, dict[str, Any]]:
    """The chosen site and the figures `user` may see of it, in a worker thread: the auth manager,
    IMAP, the store and the metadata DB block."""
    chosen = select(user, site, mailbox)
    return chosen, collect_status(chosen, Visibility.of(user, chosen), site_listing(user, chosen))


@router.get(
    "/status",
    responses={
        401: {"model": Problem, "description": "No valid token"},
        403: {"model": Problem, "description": "No rights"},
        404: {"model": Problem, "description": "No such site, or the DAGs read no such mailbox"},
        422: {"model": ErrorAnswer, "description": "The mailbox is not a valid name"},
        503: {
            "model": Problem,
            "description": "The mailbox is being read for another viewer, or the sites file is bad",
            "headers": retry_after_header("Seconds to wait before asking again"),
        },
    },
)
async def get_status(
    user: SessionUser,
    site: Annotated[str | None, Query(max_length=MAX_SITE_NAME)] = None,
    mailbox: str | None = None,
) -> JSONResponse:
    """The sync's state as JSON: inbox backlog, held-back mail, sweep progress, store, Jira usage.

    `site` chooses the site (default: the first the user may read, `site.selected_by` "first"),
    `mailbox` one of its mailboxes (folder or slug; default: its first, INBOX for the plain site).
    """
    _, figures = await run_in_threadpool(_figures_for, user, site, mailbox)
    return JSONResponse(as_json(figures), headers=SECURITY_HEADERS)


# ------------------------------------------------------------------------------------------ the page


def base_path() -> str:
    """The path of Airflow's `[api] base_url` without a trailing slash: "" or, say, "/airflow"."""
    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


def _templates() -> Any:
    import jinja2

    # Autoescape: sender and subject come from mail anyone can send.
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    environment.filters["when"] = _when
    environment.filters["age"] = _age
    return environment


def _when(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def _login_url(request: Request) -> str:
    return f"{base_path()}/auth/login?next={quote(str(request.url), safe='')}"


def _refused(request: Request, exc: HTTPException) -> HTMLResponse:
    page = (
        _templates()
        .get_template("refused.html")
        .render(status_code=exc.status_code, detail=exc.detail, login_url=_login_url(request))
    )
    headers = {**(exc.headers or {}), **SECURITY_HEADERS}
    return HTMLResponse(page, status_code=exc.status_code, headers=headers)


def shown_release(released: str | None) -> str | None:
    """`released` if it is a run id the page's own release redirect gives, else None (never reflected)."""
    return released if released is not None and RELEASE_RUN_ID.fullmatch(released) else None


@router.get("/status/page", response_class=HTMLResponse, include_in_schema=False)
async def get_status_page(
    request: Request,
    credentials: Credentials,
    site: Annotated[str | None, Query(max_length=MAX_SITE_NAME)] = None,
    mailbox: str | None = None,
    released: str | None = None,
) -> HTMLResponse:
    """The page itself; without a session it says so (and links to the login) instead of showing anything."""
    try:
        user = await session_user(request, credentials)
        # Blocking I/O (IMAP, the store, the metadata database) stays off the api-server's event loop.
        chosen, figures = await run_in_threadpool(_figures_for, user, site, mailbox)
    except HTTPException as exc:
        return _refused(request, exc)
    # The right to release is the right to trigger the chosen mailbox's own inbox DAG.
    may_release = may_access_dag(user, chosen.inbox_dag_id, entity="RUN", method="POST")
    page = (
        _templates()
        .get_template("status_page.html")
        .render(
            title=PAGE_NAME,
            s=figures,
            may_release=may_release,
            released=shown_release(released),
            mailbox=chosen.mailbox.mailbox,
            query=chosen.query(),
            plain=chosen.site.plain,
            base=base_path(),
        )
    )
    # The page shows live figures: never from a cache.
    return HTMLResponse(page, headers={"Cache-Control": "no-store", **SECURITY_HEADERS})


# ------------------------------------------------------------------------------------------- release


class ReleaseRequest(BaseModel):
    """Which held-back mail to hand back to jira_inbox: UIDs of one mailbox (its current UIDVALIDITY)."""

    # The site whose mailbox it is (default: the first the user may read; the plain site without a file).
    site: str | None = Field(default=None, max_length=MAX_SITE_NAME)
    # None: the site's first mailbox (INBOX for the plain site); else its folder or slug.
    mailbox: str | None = Field(default=None, max_length=200)
    uids: list[Annotated[int, Field(ge=1, le=MAX_UID)]] = Field(min_length=1, max_length=MAX_RELEASE_UIDS)


def _first(value: str | None) -> str | None:
    """The first of a proxy header's comma-separated values (the proxy nearest the browser), or None."""
    if not value:
        return None
    return value.split(",")[0].strip() or None


def _this_sites_origins(request: Request) -> set[str]:
    """The origins a browser shows for this Airflow: where a form post of its own page comes from.

    - the request's own, as the api-server sees it: with `airflow api-server --proxy-headers` (uvicorn's
      `proxy_headers`, trusting the proxies in FORWARDED_ALLOW_IPS) its scheme is X-Forwarded-Proto's;
    - when the api-server did apply X-Forwarded-Proto (its scheme is that header's value), the proxy is
      trusted, and its X-Forwarded-Host names the host the browser used (uvicorn does not read that one);
    - `[api] base_url`'s, the public address Airflow is configured with (a proxy without headers).
    A cross-site form cannot set X-Forwarded-* itself, so these never admit another site's post.
    """
    from airflow.configuration import conf

    scheme = request.url.scheme
    origins = {f"{scheme}://{request.url.netloc}"}
    forwarded_host = _first(request.headers.get("x-forwarded-host"))
    if forwarded_host and _first(request.headers.get("x-forwarded-proto")) == scheme:
        origins.add(f"{scheme}://{forwarded_host}")
    base = urlsplit(conf.get("api", "base_url", fallback="") or "")
    if base.scheme and base.netloc:
        origins.add(f"{base.scheme}://{base.netloc}")
    return origins


def same_origin(request: Request) -> bool:
    """Whether a release comes from this Airflow's own page; a client that sends neither header passes.

    A browser sends Origin (or at least Referer) with every form post, so an empty, opaque ("null")
    or foreign one is refused; API clients with a bearer token send neither.
    """
    origin = request.headers.get("origin")
    if origin is None:
        origin = request.headers.get("referer")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" in _this_sites_origins(request)


def release_run_id(now: datetime) -> str:
    return f"{RELEASE_RUN_PREFIX}{now.strftime(RELEASE_RUN_TIME_FORMAT)}"


def trigger_release(release: ReleaseRequest, user: BaseUser, chosen: Selection | None = None) -> str:
    """Trigger a run of the chosen mailbox's inbox DAG releasing `release.uids` (the mail ledger's
    params); returns its run id. Without `chosen`: jira_inbox and `release.mailbox` (the plain site)."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.utils.types import DagRunTriggeredByType

    dag_id = chosen.inbox_dag_id if chosen is not None else INBOX_DAG_ID
    folder = chosen.mailbox.mailbox if chosen is not None else release.mailbox or DEFAULT_MAILBOX
    uids = sorted(set(release.uids))
    dag_run = trigger_dag(
        dag_id,
        triggered_by=DagRunTriggeredByType.UI,
        triggering_user_name=user.get_name(),
        run_id=release_run_id(datetime.now(UTC)),
        conf={"mailbox": folder, "release_uids": uids, "release_all": False},
        note=f"Released {len(uids)} held-back mail(s) from the {PAGE_NAME} page",
    )
    if dag_run is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="Airflow did not create the run")
    log.info("%s released UIDs %s of %s (%s): run %s", user.get_name(), uids, folder, dag_id, dag_run.run_id)
    # Cached mailbox figures would hide the released mail's progress.
    mailbox_cache.clear()
    return dag_run.run_id


async def _release_request(request: Request) -> tuple[ReleaseRequest, bool]:
    """The request from a JSON body or the page's form; whether it came from the form."""
    body = await request.body()
    from_form = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
    try:
        if from_form:
            fields = parse_qs(body.decode("utf-8", errors="strict"), strict_parsing=False)
            payload: Any = {
                "site": (fields.get("site") or [None])[0],
                "mailbox": (fields.get("mailbox") or [None])[0],
                "uids": fields.get("uid", []),
            }
            return ReleaseRequest.model_validate(payload), True
        return ReleaseRequest.model_validate_json(body), False
    except (ValidationError, UnicodeDecodeError) as exc:
        detail = (
            exc.errors(include_url=False) if isinstance(exc, ValidationError) else "the body is not UTF-8"
        )
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=detail) from None


@router.post(
    "/status/release",
    responses={
        401: {"description": "No valid token or session"},
        403: {
            "description": "The user may not trigger the mailbox's inbox DAG, "
            "or the form came from another site"
        },
        404: {"description": "No such site, or the DAGs read no such mailbox"},
        422: {"description": "No or malformed UIDs"},
    },
)
async def release_mail(request: Request, user: SessionUser) -> Any:
    """Hand rejected or quarantined mail back to its inbox DAG: triggers a run with `release_uids`.

    `site` and `mailbox` choose the mailbox as on the page; the run is of that mailbox's own inbox DAG,
    and the user needs the right to trigger that DAG (not jira_inbox's).
    """
    if not same_origin(request):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="A release must come from this Airflow's own page"
        )
    release, from_form = await _release_request(request)
    chosen = await run_in_threadpool(select, user, release.site, release.mailbox)
    require_dag_access(user, (chosen.inbox_dag_id,), method="POST", run=True)
    run_id = await run_in_threadpool(trigger_release, release, user, chosen)
    if from_form:
        return RedirectResponse(
            f"page?{chosen.query(released=run_id)}", status_code=status.HTTP_303_SEE_OTHER
        )
    return {
        "site": chosen.site.name,
        "dag_id": chosen.inbox_dag_id,
        "dag_run_id": run_id,
        "release_uids": sorted(set(release.uids)),
    }
