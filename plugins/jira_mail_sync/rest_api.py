"""Ticket lookup: POST /ticket answers a Jira issue's assignee and progress, from the store or Jira.

Served by Airflow's api-server under the prefix the plugin gives it (`/jira-mail-sync`):

    curl -H "Authorization: Bearer $TOKEN" localhost:8080/jira-mail-sync/ticket -d '{"key":"ABC-123"}'

    {"key": "ABC-123", "assigned_to": "...", "progress_info": {"progress": 10, "total": 30}, ...}

The token is an Airflow access token from `POST /auth/token`. The ticket comes from the `jira_store`
connection's `jira_ticket` table when the copy there is fresh, and from Jira (`jira_default`) otherwise.

With a sites file (`dags/jira_sites.yaml`), the query parameter `site` names the Jira site to answer
for (`/jira-mail-sync/ticket?site=acme`): its store connection and rows, its Jira connection and its
pool. It may be left out when there is one site (with no sites file, the plain site `default`); with
several, a missing `site` is a 400, and a `site` no entry is called is a 404; both name the sites.

Why this module checks tokens itself: the api-server mounts a plugin's `fastapi_apps` as a plain
sub-application. Airflow's authentication is a dependency of its own routers (/api/v2, /ui), not a
middleware, so nothing in front of a plugin app asks for a token (seen on 3.3.2). Left alone, this
endpoint would hand Jira data, read with the sync account's API token, to anyone who can reach the
api-server. So every route here depends on `site_reader`: `auth.token_user` hands the bearer token to the
configured auth manager's `get_user_from_token`, the same call Airflow's own routes make, and the user
must then be allowed to read the chosen site's DAG (`reader_dag_id`). Signature,
audience, issuer, expiry, leeway, JWKS keys and revoked (logged-out) tokens therefore follow the
`[api_auth]` settings, and this module never decodes a JWT itself.

Settings: `store_max_age_seconds` and the `rest_*` options of `[jira_mail_sync]`, parsed by
jira_mail_sync/settings.py (the README's settings table lists them). The plugin mounts this app only
when they are valid.

Jira calls stay inside the site's pool's budget (`jira_api` for the plain site): a pool is an Airflow
scheduling idea that only task instances can hold, so a cache miss asks Jira only while the pool has
more open slots than this process has Jira lookups of that site in flight, and answers 503 with
`Retry-After` otherwise (no pool: no check).

Answers: 200 with the ticket; 400 when `site` is missing while there are several sites; 404 too when
`site` names no configured site; 401 with `WWW-Authenticate: Bearer` when the token is missing, malformed,
badly signed, for another audience, expired or revoked; 403 for a user who may not read the site's
DAG (`jira_inbox` for the plain site, `jira_sweep__<site>` for a site of the sites file); 404 when Jira
has no such issue (or the sync account may not see it); 413 for a body over 4 KiB; 422 for a body that is not
`{"key": "PROJECT-123"}`; 502 when Jira fails (5xx, unreachable), refuses the sync account or answers
something that is no issue; 503 with `Retry-After` when Jira rate-limits or is busy (429, 503), or
when the channel is busy; 503 when the Jira connection is unusable; 504 when Jira does not answer in
time. 403 also for a key outside `rest_projects`, asked for or answered: a moved issue is judged by
its new key. Errors carry `{"detail": "..."}` and never a token, password or connection URI.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.sdk.exceptions import AirflowNotFoundException
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, field_validator

from include.jira_cloud import JiraError, JiraNotFound, JiraRequestError, JiraUnavailable, ticket_details
from include.jira_rules import ISSUE_KEY_PATTERN, is_issue_key, normalise_key
from include.sites import Site, SitesFileError, default_site
from include.ticket_store import get_ticket
from jira_mail_sync.auth import may_access_dag, require_dag_access, token_user
from jira_mail_sync.hooks.jira_cloud import JiraCloudHook
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.settings import read_settings
from jira_mail_sync.sites_config import read_sites

log = logging.getLogger(__name__)

# A caller is waiting on the answer, so Jira gets far less time than the DAGs give it: one quick retry.
JIRA_TIMEOUT_SECONDS = 10.0
JIRA_MAX_RETRIES = 1
JIRA_MAX_RETRY_WAIT_SECONDS = 2.0
MAX_KEY_CHARS = 300
# Enough for any real run of typos; a flood of made-up keys only pushes out the oldest.
NOT_FOUND_CACHE_ENTRIES = 10_000
BUSY_RETRY_AFTER_SECONDS = 2
# `{"key": "PROJECT-123"}` needs a few dozen bytes; anything near this bound is not a lookup.
MAX_BODY_BYTES = 4096

# The key rule in any case, between spaces: what the body's `key` may be, and its OpenAPI `pattern`.
# Matched with re.search, as JSON Schema validators in Python do, so the schema and the check agree.
REQUEST_KEY_PATTERN = "^ *" + ISSUE_KEY_PATTERN.replace("A-Z", "A-Za-z") + " *$"
_REQUEST_KEY = re.compile(REQUEST_KEY_PATTERN)


class TicketRequest(BaseModel):
    """The request body: one Jira issue key (case-insensitive, surrounding blanks ignored)."""

    key: str = Field(
        max_length=MAX_KEY_CHARS, examples=["ABC-123"], json_schema_extra={"pattern": REQUEST_KEY_PATTERN}
    )

    @field_validator("key")
    @classmethod
    def _issue_key(cls, value: str) -> str:
        key = normalise_key(value)
        # The shared key rule, so that any key the inbox or the sweep can store is one this answers.
        if _REQUEST_KEY.search(value) is None or not is_issue_key(key):
            raise ValueError("not a Jira issue key: expected PROJECT-123")
        return key


class TicketDetails(BaseModel):
    """The issue's assignee (assigned_to) and progress (progress_info), plus what the store knows of it."""

    key: str
    assigned_to: str | None = Field(description="The assignee's e-mail; null if unassigned or hidden")
    progress_info: dict[str, int] | None = Field(
        description="Jira's time tracking progress in seconds: progress, total and, if total > 0, percent"
    )
    summary: str | None
    status: str | None
    updated_at: datetime | None = Field(description="When the issue last changed in Jira")
    fetched_at: datetime = Field(description="When this copy was read from Jira")
    source: Literal["store", "jira"]


def _too_large() -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        detail=f'The body is larger than {MAX_BODY_BYTES} bytes; send only {{"key": "PROJECT-123"}}',
    )


async def bounded_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 past `limit` bytes before more than that is held in memory.

    A declared Content-Length is judged before reading; the stream is counted as well, for chunked
    bodies (no length) and for clients whose length is not the truth.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _invalid_json(why: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "json_invalid", "loc": ("body",), "msg": f"the body is not JSON: {why}"}]
    )


async def ticket_request(request: Request) -> TicketRequest:
    """The JSON body whatever its Content-Type, so a bare `curl -d '{"key": ...}'` (a form type) works too."""
    body = await bounded_body(request)
    try:
        payload: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid_json(str(exc)) from None
    except RecursionError:
        # `[[[[...`: the json module recurses once per level; 4 KiB of brackets exceed Python's limit.
        raise _invalid_json("it is nested too deeply") from None
    try:
        return TicketRequest.model_validate(payload)
    except ValidationError as exc:
        # Not the input: it is the caller's own, may be large, and may not even encode as UTF-8.
        raise RequestValidationError(
            [
                {"type": error["type"], "loc": ("body", *error["loc"]), "msg": error["msg"]}
                for error in exc.errors(include_url=False)
            ]
        ) from None


def store_max_age() -> timedelta:
    """The configured `[jira_mail_sync] store_max_age_seconds` (jira_mail_sync/settings.py)."""
    return timedelta(seconds=read_settings().store_max_age_seconds)


def _busy(detail: str, retry_after: float | None = None) -> HTTPException:
    seconds = BUSY_RETRY_AFTER_SECONDS if retry_after is None else max(1, math.ceil(retry_after))
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, detail=detail, headers={"Retry-After": str(seconds)}
    )


class LookupLimits:
    """This process's bounds: lookups at once, Jira lookups against the pool, and remembered 404s.

    Process-wide on purpose: the api-server serves sync routes from a thread pool, and each lookup
    holds one of its threads until the store and Jira have answered. `clock` (seconds, monotonic)
    decides when a remembered 404 expires.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._lookups = 0
        # Per pool: each site's Jira lookups are held against its own pool's open slots.
        self._jira_lookups: dict[str, int] = {}
        # Keyed by (site name, key): ABC-404 missing on one site may exist on another.
        self._not_found: OrderedDict[tuple[str, str], float] = OrderedDict()

    def enter_lookup(self) -> None:
        limit = read_settings().rest_max_concurrent_lookups
        with self._lock:
            if self._lookups >= limit:
                raise _busy(f"The ticket channel is serving {limit} lookup(s) already; try again shortly")
            self._lookups += 1

    def leave_lookup(self) -> None:
        with self._lock:
            self._lookups -= 1

    def enter_jira(self, pool: str | None = None) -> None:
        pool = pool or default_site().pool
        open_slots = _pool_open_slots(pool)
        with self._lock:
            if open_slots is not None and self._jira_lookups.get(pool, 0) >= open_slots:
                raise _busy(
                    f"Jira's request budget (the {pool} pool) is in use by the sync; try again shortly"
                )
            self._jira_lookups[pool] = self._jira_lookups.get(pool, 0) + 1

    def leave_jira(self, pool: str | None = None) -> None:
        pool = pool or default_site().pool
        with self._lock:
            self._jira_lookups[pool] -= 1

    def known_missing(self, key: str, site: str | None = None) -> bool:
        entry = (site or default_site().name, key)
        with self._lock:
            expires = self._not_found.get(entry)
            if expires is None:
                return False
            if expires > self._clock():
                return True
            del self._not_found[entry]
            return False

    def remember_missing(self, key: str, site: str | None = None) -> None:
        seconds = read_settings().rest_not_found_cache_seconds
        if seconds == 0:
            return
        entry = (site or default_site().name, key)
        with self._lock:
            self._not_found[entry] = self._clock() + seconds
            self._not_found.move_to_end(entry)
            while len(self._not_found) > NOT_FOUND_CACHE_ENTRIES:
                self._not_found.popitem(last=False)


limits = LookupLimits()


def _pool_open_slots(name: str) -> float | None:
    """Open slots of the pool `name` in the metadata database; None when there is no such pool."""
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    try:
        with create_session() as session:
            pool = Pool.get_pool(name, session=session)
            return None if pool is None else pool.open_slots(session=session)
    except Exception as exc:  # the metadata database is the api-server's own: rare, and not fatal here
        log.warning("Could not read the %s pool (%s); not checking it", name, type(exc).__name__)
        return None


def reader_dag_id(site: Site) -> str:
    """The DAG a caller must be allowed to read to be answered with `site`'s tickets.

    The plain site's is jira_inbox, as before sites existed. A file site's is its sweep DAG: every site
    has one (mailboxes come and go), and it is the Jira sync page's rule for showing a site too.
    """
    return site.inbox_dag_id(site.mailboxes[0]) if site.plain else site.sweep_dag_id()


def choose_site(
    sites: tuple[Site, ...], requested: str | None, *, shown: tuple[Site, ...] | None = None
) -> Site:
    """The site a lookup is for: the one named, or the only one.

    400 when several sites are configured and none is named; 404 for a name no site has (like an
    unknown issue: the request is well-formed, what it names does not exist). Both name the sites in
    `shown` (all of them by default): a caller learns only the sites it may read.
    """
    names = ", ".join(site.name for site in (sites if shown is None else shown))
    if requested is None or requested == "":
        if len(sites) == 1:
            return sites[0]
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"Several Jira sites are configured: name one with ?site= (one of: {names})",
        )
    for site in sites:
        if site.name == requested:
            return site
    # The name is the caller's own text: echoed only when it is a plausible site name.
    shown_name = repr(requested) if len(requested) <= 64 and requested.isprintable() else "that name"
    raise HTTPException(
        status.HTTP_404_NOT_FOUND, detail=f"No Jira site is called {shown_name}: the sites are {names}"
    )


def configured_sites() -> tuple[Site, ...]:
    """The configured sites (the sites file, read now, or the plain site); 503 for a bad file."""
    try:
        return read_sites()
    except SitesFileError as exc:
        log.error("The sites file cannot be used: %s", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="The server's sites file is not valid; ask an Airflow administrator",
        ) from None


def site_reader(
    user: Annotated[BaseUser, Depends(token_user)],
    site: Annotated[
        str | None,
        Query(
            max_length=200,
            description="The Jira site (a `name` of the sites file); may be left out when there is one",
        ),
    ] = None,
) -> Site:
    """The site a token's user asked for and may read: 401, then 403, 400 or 404 (see choose_site).

    A user who may read no site's DAG is refused before anything names a site. Blocking (the auth
    manager, the sites file): FastAPI runs it in a worker thread.
    """
    sites = configured_sites()
    readable = tuple(s for s in sites if may_access_dag(user, reader_dag_id(s)))
    if len(sites) == 1:
        require_dag_access(user, (reader_dag_id(sites[0]),))
    elif not readable:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="This user may not read any site's jira_sweep__<site> DAG"
        )
    chosen = choose_site(sites, site, shown=readable)
    require_dag_access(user, (reader_dag_id(chosen),))
    return chosen


def _not_found(key: str) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        detail=f"Jira has no issue {key}, or the sync account is not allowed to see it",
    )


def _stored_ticket(key: str, site: Site | None = None) -> dict[str, Any] | None:
    site = site or default_site()
    timeout = read_settings().rest_store_connect_timeout_seconds
    try:
        with TicketStoreHook(site.store_conn_id, connect_timeout=timeout).connect() as (conn, dialect):
            return get_ticket(conn, dialect, key, site=site.name)
    except Exception as exc:
        # Here the store is only a cache in front of Jira: a store that is missing, not migrated yet
        # or down must not take the channel down with it.
        log.warning(
            "The ticket store could not be read for %s (%s: %s); asking Jira", key, type(exc).__name__, exc
        )
        return None


def _answer(ticket: dict[str, Any], *, fetched_at: datetime, source: str) -> TicketDetails:
    """The answer from a ticket record (a store row, or `ticket_details` of Jira's issue: same names)."""
    return TicketDetails(
        key=ticket["key"],
        assigned_to=ticket["assignee_email"],
        progress_info=ticket["progress"],
        summary=ticket["summary"],
        status=ticket["status"],
        updated_at=ticket["updated_at"],
        fetched_at=fetched_at,
        source=source,
    )


def _from_store(ticket: dict[str, Any]) -> TicketDetails:
    return _answer(ticket, fetched_at=ticket["fetched_at"], source="store")


def _unusable_answer(key: str) -> HTTPException:
    return HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"Jira's answer for {key} was unusable")


def details_from_jira(key: str, issue: Any) -> TicketDetails:
    """Jira's issue as the channel's answer; 502 when the answer is not an issue the channel can show.

    Jira's JSON is outside our control: any shape, type or text the answer cannot be built (or sent
    as UTF-8 JSON) from is Jira's failure, not the channel's.
    """
    try:
        answer = _answer(ticket_details(issue), fetched_at=datetime.now(UTC), source="jira")
        answer.model_dump_json()  # a lone surrogate in a text would only fail once the route returns
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
        log.error("Jira's answer for %s is unusable (%s)", key, type(exc).__name__)
        raise _unusable_answer(key) from None
    if not is_issue_key(answer.key):
        log.error("Jira answered %s with no issue key", key)
        raise _unusable_answer(key)
    return answer


def _jira_failure(key: str, exc: Exception) -> HTTPException:
    """The answer for a failed Jira lookup: 504 on a timeout, 503 when Jira asks to wait, 502 otherwise."""
    if isinstance(exc, JiraUnavailable) and exc.timed_out:
        log.warning("Jira timed out for %s: %s", key, exc)
        return HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT,
            detail=f"Jira did not answer in time and the store has no fresh copy of {key}; try again later",
        )
    if isinstance(exc, JiraUnavailable) and exc.status in (429, 503):
        log.warning("Jira is busy for %s: %s", key, exc)
        return _busy(
            f"Jira is busy (HTTP {exc.status}) and the store has no fresh copy of {key}; try again later",
            exc.retry_after,
        )
    if isinstance(exc, JiraUnavailable):
        log.warning("Jira failed for %s: %s", key, exc)
        said = f"answered HTTP {exc.status}" if exc.status else "could not be reached"
        return HTTPException(
            status.HTTP_502_BAD_GATEWAY,
            detail=f"Jira {said} and the store has no fresh copy of {key}; try again later",
        )
    if isinstance(exc, JiraRequestError):
        log.error("Jira refused the lookup of %s: %s", key, exc)
        return HTTPException(
            status.HTTP_502_BAD_GATEWAY,
            detail=f"Jira refused the sync account's request for {key} (HTTP {exc.status})",
        )
    if isinstance(exc, JiraError):
        log.error("Jira lookup of %s failed: %s", key, exc)
        return _unusable_answer(key)
    # Whatever else the HTTP stack raises; its text could name URLs, so only its type is logged.
    log.error("Jira lookup of %s failed unexpectedly: %s", key, type(exc).__name__)
    return HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"Jira could not be asked for {key}")


def _from_jira(key: str, site: Site | None = None) -> TicketDetails:
    site = site or default_site()
    hook = JiraCloudHook(
        site.jira_conn_id,
        timeout=JIRA_TIMEOUT_SECONDS,
        max_retries=JIRA_MAX_RETRIES,
        max_retry_wait=JIRA_MAX_RETRY_WAIT_SECONDS,
    )
    limits.enter_jira(site.pool)
    try:
        with hook:
            try:
                client = hook.get_conn()
            except (AirflowNotFoundException, ValueError) as exc:
                # A missing or incomplete Jira connection: the message names it, no secret.
                log.error("Cannot ask Jira for %s: %s: %s", key, type(exc).__name__, exc)
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    detail="The server's Jira connection is not usable; ask an Airflow administrator",
                ) from None
            issue = client.get_issue(key)
    except HTTPException:
        raise
    except JiraNotFound:
        limits.remember_missing(key, site.name)
        raise _not_found(key) from None
    except Exception as exc:
        raise _jira_failure(key, exc) from None
    finally:
        limits.leave_jira(site.pool)
    return details_from_jira(key, issue)


def _not_synced(projects: frozenset[str]) -> HTTPException:
    return HTTPException(
        status.HTTP_403_FORBIDDEN,
        detail=f"This channel answers only for the synced projects ({', '.join(sorted(projects))})",
    )


def lookup_ticket(key: str, site: Site | None = None) -> TicketDetails:
    """`site`'s stored copy of `key` if it is fresh enough, else its Jira's current state (never written
    back). `site` None is the plain site.

    Jira's answer is not stored: the store's `source` allows only the DAGs ('inbox', 'sweep'), and a
    read-only channel cannot race their writes.
    """
    projects = read_settings().rest_projects
    if projects is not None and key.partition("-")[0] not in projects:
        raise _not_synced(projects)
    answer = _lookup(key, site or default_site())
    # Checked again on the key that came back: Jira answers an old key with the issue under its new
    # one, so PUB-1 moved to SECRET-9 would otherwise show SECRET-9 through a PUB-only channel.
    if projects is not None and answer.key.partition("-")[0] not in projects:
        log.info("%s is now %s, outside the synced projects; answering 403", key, answer.key)
        raise _not_synced(projects)
    return answer


def _lookup(key: str, site: Site) -> TicketDetails:
    max_age = store_max_age()
    limits.enter_lookup()
    try:
        stored = _stored_ticket(key, site)
        # A row Jira confirmed gone is not served: Jira answers for it (404, or the ticket if it is back).
        if (
            stored is not None
            and stored.get("deleted_at") is None
            and datetime.now(UTC) - stored["fetched_at"] <= max_age
        ):
            return _from_store(stored)
        if limits.known_missing(key, site.name):
            raise _not_found(key)
        return _from_jira(key, site)
    finally:
        limits.leave_lookup()


class Problem(BaseModel):
    """Every error answer but 422: what went wrong, in words for the caller."""

    detail: str


class BodyProblem(BaseModel):
    """One thing wrong with the request body."""

    type: str
    loc: list[str | int]
    msg: str


class InvalidRequest(BaseModel):
    """422: what is wrong with the body, one entry per problem."""

    detail: list[BodyProblem]


class ErrorAnswer(BaseModel):
    """An error answer of a route whose 422 may be a sentence or a list of problems."""

    detail: str | list[BodyProblem]


def retry_after_header(description: str) -> dict[str, Any]:
    return {"Retry-After": {"description": description, "schema": {"type": "integer"}}}


# The error answers the route can give, declared so that its OpenAPI document is the whole truth
# (tests/test_openapi_fuzz.py holds the running server to it).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "`site` is missing while several Jira sites are configured"},
    401: {
        "model": Problem,
        "description": "No valid Airflow access token",
        "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    },
    403: {
        "model": Problem,
        "description": "The user may not read the site's DAG (jira_inbox, or jira_sweep__<site> from a "
        "sites file), or the issue's project is not synced "
        "(checked on the key asked for and on the key the issue has now)",
    },
    404: {
        "model": Problem,
        "description": "Jira has no such issue, or the sync account may not see it; or `site` names no "
        "configured Jira site",
    },
    413: {"model": Problem, "description": f"The body is larger than {MAX_BODY_BYTES} bytes"},
    422: {"model": InvalidRequest, "description": 'The body is not JSON of the form {"key": "PROJECT-123"}'},
    502: {"model": Problem, "description": "Jira failed, refused the sync account, or answered nonsense"},
    503: {
        "model": Problem,
        "description": "Jira is rate-limiting or busy (429/503) and the store has no fresh copy, the "
        "channel is busy, or the server's Jira connection is not usable",
        "headers": retry_after_header(
            "Seconds to wait before asking again (absent for an unusable connection)"
        ),
    },
    504: {"model": Problem, "description": "Jira did not answer in time and the store has no fresh copy"},
}

app = FastAPI(
    title="jira-mail-sync",
    summary="Ticket lookup: a Jira issue's assignee and progress",
    description=__doc__,
    # Each route names its own authentication (the status page also takes the UI's session cookie).
    # The docs routes are switched off: they would be open without a token.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


@app.post(
    "/ticket",
    response_model=TicketDetails,
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": TicketRequest.model_json_schema()}},
        }
    },
)
def get_ticket_details(
    # The site (and the caller's right to it) first: 401/403 come before the body is read (413/422).
    site: Annotated[Site, Depends(site_reader)],
    request: Annotated[TicketRequest, Depends(ticket_request)],
) -> TicketDetails:
    """A Jira issue's assignee and progress: the site's stored copy when fresh, its Jira's otherwise."""
    return lookup_ticket(request.key, site)
