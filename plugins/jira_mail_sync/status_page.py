"""The "Jira sync" page of the Airflow UI and its JSON twin: backlog, held-back mail, sweep, store, Jira.

Routes (under the plugin's prefix, `/jira-mail-sync`):

- `GET /status`: the figures as JSON, for monitoring tools (`Authorization: Bearer <token>`);
- `GET /status/page`: the same as an HTML page, shown inside the Airflow UI (the "Jira sync" entry of
  the navigation, an `external_views` item of the plugin);
- `POST /status/release`: hand rejected or quarantined mail back to `jira_inbox` (a form post from the
  page, or JSON `{"mailbox": "INBOX", "uids": [..]}`): it triggers a `jira_inbox` run with the mail
  ledger's release params.

Who may see it: plugin apps sit outside Airflow's authentication (see rest_api), so every route checks
the caller itself, with the same auth manager calls as Airflow's own routes. The credential is a bearer
token or, when the page is opened from the UI, the UI's own session cookie (`_token`, which the
browser sends to the iframe because it is served from the same api-server): no second login. Reading
needs the right to read `jira_inbox` and `jira_sweep`; releasing needs the right to trigger
`jira_inbox` runs. Form posts are also refused when they come from another site (Origin check), on
top of the cookie's SameSite=Lax.

Cost: the store figures are a handful of indexed or single-scan queries (bench/status_page.py); the
mailbox figures need an IMAP login and are cached for `[jira_mail_sync] status_mailbox_cache_seconds`
(default 30) per mailbox, so viewers do not open an IMAP connection each.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from include.imap_wire import check_mailbox
from include.names import IMAP_CONN_ID, INBOX_DAG_ID, SWEEP_DAG_ID
from include.sync_status import (
    as_json,
    held_uids,
    inbox_figures,
    jira_figures,
    ledger_figures,
    sweep_watermark,
    ticket_figures,
)
from include.watch_state import read_refused_logins
from jira_mail_sync.hooks.imap import ImapInboxHook
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.rest_api import CONFIG_SECTION, _bearer, require_dag_access, user_from_token

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

log = logging.getLogger(__name__)

PAGE_NAME = "Jira sync"
CACHE_OPTION = "status_mailbox_cache_seconds"
DEFAULT_CACHE_SECONDS = 30.0
DEFAULT_MAILBOX = "INBOX"
MAX_RELEASE_UIDS = 1000
MAX_CACHED_MAILBOXES = 16
LEDGER_ROWS_SHOWN = 100
PENDING_RUNS_SHOWN = 20
TEMPLATES = Path(__file__).parent / "templates"
READ_DAGS = (INBOX_DAG_ID, SWEEP_DAG_ID)

router = APIRouter()


# ------------------------------------------------------------------------------------------- who asks


def _credential(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    # An explicit bearer token wins over the ambient session cookie, as in Airflow's own routes.
    if credentials is not None:
        return credentials.credentials
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN)


async def status_reader(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> BaseUser:
    """A user who may read both DAGs: 401 without a valid token or session, 403 without the rights."""
    user = await user_from_token(_credential(request, credentials))
    require_dag_access(user, READ_DAGS)
    return user


# Any, not BaseUser: FastAPI resolves these annotations at runtime, and BaseUser is imported for typing only.
Reader = Annotated[Any, Depends(status_reader)]


# ------------------------------------------------------------------------------------- mailbox cache


def cache_seconds() -> float:
    from airflow.configuration import conf

    raw = conf.get(CONFIG_SECTION, CACHE_OPTION, fallback=str(DEFAULT_CACHE_SECONDS))
    try:
        seconds = float(str(raw).strip())
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        log.error(
            "[%s] %s must be a number of seconds >= 0; using %s",
            CONFIG_SECTION,
            CACHE_OPTION,
            DEFAULT_CACHE_SECONDS,
        )
        return DEFAULT_CACHE_SECONDS
    return seconds


class MailboxCache:
    """The mailbox figures per (connection, mailbox), kept `cache_seconds()`; one IMAP login refreshes them.

    A failed look-up is cached too, so an unreachable server is not asked again by every viewer.
    `logins` counts the IMAP sessions opened, for tests and the benchmark.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self.logins = 0

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, conn_id: str, mailbox: str) -> dict[str, Any]:
        key = (conn_id, mailbox)
        # One lock for look-up and refresh: concurrent viewers wait for one login instead of each making one.
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and time.monotonic() - cached[0] < cache_seconds():
                return cached[1]
            figures = self._read(conn_id, mailbox)
            if len(self._entries) >= MAX_CACHED_MAILBOXES:
                # Readers choose the mailbox name: keep the cache bounded, dropping the oldest figures.
                del self._entries[min(self._entries, key=lambda k: self._entries[k][0])]
            self._entries[key] = (time.monotonic(), figures)
            return figures

    def _read(self, conn_id: str, mailbox: str) -> dict[str, Any]:
        now = datetime.now(UTC)
        self.logins += 1
        refused: list[dict[str, Any]] = []
        try:
            with TicketStoreHook().connect() as (conn, dialect):
                # The IDLE watcher's refused logins, without the server's answer (it names host and login).
                refused = [
                    {k: v for k, v in r.items() if k != "detail"} for r in read_refused_logins(conn, dialect)
                ]

                def held(uidvalidity: int, uids: list[int]) -> set[int]:
                    return held_uids(
                        conn, dialect, mailbox=mailbox, uidvalidity=uidvalidity, uids=uids, now=now
                    )

                with ImapInboxHook(conn_id).inbox(mailbox) as inbox:
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


# ------------------------------------------------------------------------------------ Airflow's side


def inbox_mode() -> str:
    """`poll` or `idle` where the idle schedule is installed; this page never fails over the setting."""
    try:
        from jira_mail_sync.inbox_schedule import inbox_mode as configured_mode
    except ImportError:
        return "poll"  # this version of jira_inbox only polls
    try:
        return configured_mode()
    except ValueError:
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


def run_figures() -> dict[str, Any]:
    """The latest run of each DAG, and the sweep runs still queued or running (backfills included)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import func, select

    pending_states = (DagRunState.QUEUED, DagRunState.RUNNING)
    with create_session() as session:
        latest = {}
        for dag_id in READ_DAGS:
            dag_run = session.scalars(
                select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.run_after.desc()).limit(1)
            ).first()
            latest[dag_id] = _run(dag_run) if dag_run is not None else None
        pending_query = select(DagRun).where(DagRun.dag_id == SWEEP_DAG_ID, DagRun.state.in_(pending_states))
        pending = [
            _run(dag_run)
            for dag_run in session.scalars(
                pending_query.order_by(DagRun.data_interval_start.asc().nulls_last()).limit(
                    PENDING_RUNS_SHOWN
                )
            )
        ]
        pending_count = session.scalar(
            select(func.count())
            .select_from(DagRun)
            .where(DagRun.dag_id == SWEEP_DAG_ID, DagRun.state.in_(pending_states))
        )
    return {"latest": latest, "pending": pending, "pending_count": int(pending_count or 0)}


# ---------------------------------------------------------------------------------------- the figures


def _store_figures(now: datetime) -> dict[str, Any]:
    try:
        with TicketStoreHook().connect() as (conn, dialect):
            return {
                "tickets": ticket_figures(conn, dialect, now=now),
                "watermark": sweep_watermark(conn, dialect),
                "ledger": ledger_figures(conn, dialect, limit=LEDGER_ROWS_SHOWN),
                "jira": jira_figures(conn, dialect, now=now),
                "error": None,
            }
    except Exception as exc:
        log.warning("Status page: reading the store failed: %s: %s", type(exc).__name__, exc)
        return {"error": f"The store could not be read ({type(exc).__name__}); see the api-server log"}


def collect_status(mailbox: str = DEFAULT_MAILBOX) -> dict[str, Any]:
    """Every figure of the page, as plain data (datetimes included)."""
    now = datetime.now(UTC)
    store = _store_figures(now)
    runs = run_figures()
    store_error = store["error"]
    ledger = store.get("ledger")
    watermark = store.get("watermark")
    tickets = store.get("tickets") or {}
    jira = store.get("jira") or {}
    return {
        "generated_at": now,
        "store_error": store_error,
        "inbox": {
            **mailbox_cache.get(IMAP_CONN_ID, mailbox),
            "mode": inbox_mode(),
            "last_run": runs["latest"][INBOX_DAG_ID],
        },
        "ledger": {
            "available": ledger is not None,
            "rejected": ledger["rejected"] if ledger else None,
            "quarantined": ledger["quarantined"] if ledger else None,
            "failed": ledger["failed"] if ledger else None,
            "settled": ledger["settled"] if ledger else None,
            "entries": ledger["entries"] if ledger else [],
        },
        "sweep": {
            "watermark": watermark,
            "behind_seconds": (now - watermark).total_seconds() if watermark else None,
            "last_run": runs["latest"][SWEEP_DAG_ID],
            "pending": runs["pending"],
            "pending_count": runs["pending_count"],
        },
        "tickets": {
            "total": tickets.get("total"),
            "by_source": tickets.get("by_source", {}),
            "changed_last_hour": tickets.get("changed_last_hour"),
            "deleted": tickets.get("deleted"),
        },
        "jira": {
            "requests_last_hour": jira.get("requests_last_hour"),
            "throttled_last_hour": jira.get("throttled_last_hour"),
            "last_429": jira.get("last_429"),
        },
    }


def _mailbox_param(mailbox: str) -> str:
    try:
        return check_mailbox(mailbox)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=str(exc)) from None


@router.get("/status", responses={401: {"description": "No valid token"}, 403: {"description": "No rights"}})
def get_status(_user: Reader, mailbox: str = DEFAULT_MAILBOX) -> JSONResponse:
    """The sync's state as JSON: inbox backlog, held-back mail, sweep progress, store, Jira usage."""
    return JSONResponse(as_json(collect_status(_mailbox_param(mailbox))))


# ------------------------------------------------------------------------------------------ the page


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
    return f"/auth/login?next={quote(str(request.url), safe='')}"


@router.get("/status/page", response_class=HTMLResponse, include_in_schema=False)
async def get_status_page(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    mailbox: str = DEFAULT_MAILBOX,
    released: str | None = None,
) -> HTMLResponse:
    """The page itself; without a session it says so (and links to the login) instead of showing anything."""
    template = _templates()
    try:
        user = await status_reader(request, credentials)
    except HTTPException as exc:
        page = template.get_template("refused.html").render(
            status_code=exc.status_code, detail=exc.detail, login_url=_login_url(request)
        )
        return HTMLResponse(page, status_code=exc.status_code, headers=exc.headers)
    # Blocking I/O (IMAP, the store, the metadata database) stays off the api-server's event loop.
    figures = await run_in_threadpool(collect_status, _mailbox_param(mailbox))
    try:
        require_dag_access(user, (INBOX_DAG_ID,), method="POST", run=True)
        may_release = True
    except HTTPException:
        may_release = False
    page = template.get_template("status_page.html").render(
        title=PAGE_NAME, s=figures, may_release=may_release, released=released, mailbox=mailbox
    )
    # The page shows live figures: never from a cache.
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


# ------------------------------------------------------------------------------------------- release


class ReleaseRequest(BaseModel):
    """Which held-back mail to hand back to jira_inbox: UIDs of one mailbox (its current UIDVALIDITY)."""

    mailbox: str = Field(default=DEFAULT_MAILBOX, max_length=200)
    uids: list[Annotated[int, Field(gt=0, lt=2**32)]] = Field(min_length=1, max_length=MAX_RELEASE_UIDS)


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" == f"{request.url.scheme}://{request.url.netloc}"


def trigger_release(release: ReleaseRequest, user: BaseUser) -> str:
    """Trigger a jira_inbox run releasing `release.uids` (the mail ledger's params); returns its run id."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.utils.types import DagRunTriggeredByType

    now = datetime.now(UTC)
    uids = sorted(set(release.uids))
    dag_run = trigger_dag(
        INBOX_DAG_ID,
        triggered_by=DagRunTriggeredByType.UI,
        triggering_user_name=user.get_name(),
        run_id=f"release__{now:%Y%m%dT%H%M%S%f}",
        conf={"mailbox": release.mailbox, "release_uids": uids, "release_all": False},
        note=f"Released {len(uids)} held-back mail(s) from the {PAGE_NAME} page",
    )
    if dag_run is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="Airflow did not create the run")
    log.info("%s released UIDs %s of %s: run %s", user.get_name(), uids, release.mailbox, dag_run.run_id)
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
                "mailbox": (fields.get("mailbox") or [DEFAULT_MAILBOX])[0],
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
        403: {"description": "The user may not trigger jira_inbox, or the form came from another site"},
        422: {"description": "No or malformed UIDs"},
    },
)
async def release_mail(request: Request, user: Reader) -> Any:
    """Hand rejected or quarantined mail back to jira_inbox: triggers a run with `release_uids`."""
    require_dag_access(user, (INBOX_DAG_ID,), method="POST", run=True)
    if not _same_origin(request):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="A release must come from this Airflow's own page"
        )
    release, from_form = await _release_request(request)
    _mailbox_param(release.mailbox)
    run_id = await run_in_threadpool(trigger_release, release, user)
    if from_form:
        return RedirectResponse(
            f"page?mailbox={quote(release.mailbox)}&released={quote(run_id)}",
            status_code=status.HTTP_303_SEE_OTHER,
        )
    return {"dag_id": INBOX_DAG_ID, "dag_run_id": run_id, "release_uids": sorted(set(release.uids))}
