"""Ticket lookup: POST /ticket answers a Jira issue's assignee and progress, from the store or Jira.

Served by Airflow's api-server under the prefix the plugin gives it (`/jira-mail-sync`):

    curl -H "Authorization: Bearer $TOKEN" localhost:8080/jira-mail-sync/ticket -d '{"key":"ABC-123"}'

    {"key": "ABC-123", "assigned_to": "...", "progress_info": {"progress": 10, "total": 30}, ...}

The token is an Airflow access token from `POST /auth/token`. The ticket comes from the `jira_store`
connection's `jira_ticket` table when the copy there is fresh, and from Jira (`jira_default`) otherwise.

Why this module checks tokens itself: the api-server mounts a plugin's `fastapi_apps` as a plain
sub-application. Airflow's authentication is a dependency of its own routers (/api/v2, /ui), not a
middleware, so nothing in front of a plugin app asks for a token (seen on 3.3.2). Left alone, this
endpoint would hand Jira data, read with the sync account's API token, to anyone who can reach the
api-server. So every route here depends on `require_airflow_user`, which hands the bearer token to the
configured auth manager's `get_user_from_token`, the same call Airflow's own routes make. Signature,
audience, issuer, expiry, leeway, JWKS keys and revoked (logged-out) tokens therefore follow the
`[api_auth]` settings, and this module never decodes a JWT itself.

Settings: `store_max_age_seconds` and the `rest_*` options of `[jira_mail_sync]`, parsed by
jira_mail_sync/settings.py (the README's settings table lists them). The plugin mounts this app only
when they are valid.

Jira calls stay inside the `jira_api` pool's budget: a pool is an Airflow scheduling idea that only
task instances can hold, so a cache miss asks Jira only while the pool has more open slots than this
process has Jira lookups in flight, and answers 503 with `Retry-After` otherwise (no pool: no check).

Answers: 200 with the ticket; 401 with `WWW-Authenticate: Bearer` when the token is missing, malformed,
badly signed, for another audience, expired or revoked; 403 for a user who may not read the
`jira_inbox` DAG; 404 when Jira has no such issue (or the sync
account may not see it); 422 for a body that is not `{"key": "PROJECT-123"}`; 502 when Jira refuses the
sync account; 503 when Jira cannot be reached or its connection is unusable, or when the channel
is busy (with `Retry-After`). 403 also for a key outside `rest_projects`. Errors carry
`{"detail": "..."}` and never a token, password or connection URI.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from airflow.sdk.exceptions import AirflowNotFoundException
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError, field_validator

from include.jira_cloud import JiraError, JiraNotFound, JiraRequestError, JiraUnavailable, ticket_details
from include.jira_rules import is_issue_key, normalise_key
from include.names import INBOX_DAG_ID, JIRA_API_POOL
from include.ticket_store import get_ticket
from jira_mail_sync.hooks.jira_cloud import JiraCloudHook
from jira_mail_sync.hooks.ticket_store import TicketStoreHook
from jira_mail_sync.settings import read_settings

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

log = logging.getLogger(__name__)

# A caller is waiting on the answer, so Jira gets far less time than the DAGs give it: one quick retry.
JIRA_TIMEOUT_SECONDS = 10.0
JIRA_MAX_RETRIES = 1
JIRA_MAX_RETRY_WAIT_SECONDS = 2.0
MAX_KEY_CHARS = 300
# Enough for any real run of typos; a flood of made-up keys only pushes out the oldest.
NOT_FOUND_CACHE_ENTRIES = 10_000
BUSY_RETRY_AFTER_SECONDS = 2

_TOKEN_HINT = "send an Airflow access token from POST /auth/token as 'Authorization: Bearer <token>'"


class TicketRequest(BaseModel):
    """The request body: one Jira issue key (case-insensitive, surrounding blanks ignored)."""

    key: str = Field(max_length=MAX_KEY_CHARS, examples=["ABC-123"])

    @field_validator("key")
    @classmethod
    def _issue_key(cls, value: str) -> str:
        key = normalise_key(value)
        # The shared key rule, so that any key the inbox or the sweep can store is one this answers.
        if not is_issue_key(key):
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


_bearer = HTTPBearer(auto_error=False, description="An Airflow access token from POST /auth/token")


def _unauthorized(detail: str, *, invalid_token: bool) -> HTTPException:
    # RFC 6750: a request without credentials gets a bare challenge, a rejected token an error code.
    challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": challenge})


async def user_from_token(token: str | None) -> BaseUser:
    """The Airflow user a valid access token stands for; 401 for a missing, bad, expired or revoked one."""
    from airflow.api_fastapi.app import get_auth_manager
    from jwt import ExpiredSignatureError, InvalidTokenError

    if not token:
        raise _unauthorized(f"Not authenticated: {_TOKEN_HINT}", invalid_token=False)
    try:
        return await get_auth_manager().get_user_from_token(token)
    except ExpiredSignatureError:
        raise _unauthorized(f"The access token has expired: {_TOKEN_HINT}", invalid_token=True) from None
    except InvalidTokenError:
        raise _unauthorized(f"The access token is not valid: {_TOKEN_HINT}", invalid_token=True) from None


def require_dag_access(
    user: BaseUser, dag_ids: tuple[str, ...], *, method: str = "GET", run: bool = False
) -> None:
    """403 unless the auth manager lets `user` do `method` on each DAG (on its runs, with `run`)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    auth_manager = get_auth_manager()
    entity = DagAccessEntity.RUN if run else None
    for dag_id in dag_ids:
        if not auth_manager.is_authorized_dag(
            method=method, access_entity=entity, details=DagDetails(id=dag_id), user=user
        ):
            action = "trigger" if run and method == "POST" else "read"
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"This user may not {action} the {dag_id} DAG"
            )


async def require_airflow_user(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> BaseUser:
    """The Airflow user a valid bearer token stands for; 401 for anything else."""
    user = await user_from_token(credentials.credentials if credentials else None)
    # Being logged in is not enough: the answer is what jira_inbox stores, so the user must be allowed
    # to read that DAG, as Airflow's own routes would require.
    require_dag_access(user, (INBOX_DAG_ID,))
    return user


async def ticket_request(request: Request) -> TicketRequest:
    """The JSON body whatever its Content-Type, so a bare `curl -d '{"key": ...}'` (a form type) works too."""
    body = await request.body()
    try:
        payload: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": f"the body is not JSON: {exc}", "input": None}]
        ) from None
    try:
        return TicketRequest.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def store_max_age() -> timedelta:
    """The configured `[jira_mail_sync] store_max_age_seconds` (jira_mail_sync/settings.py)."""
    return timedelta(seconds=read_settings().store_max_age_seconds)


def _busy(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail=detail,
        headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
    )


class LookupLimits:
    """This process's bounds: lookups at once, Jira lookups against the pool, and remembered 404s.

    Process-wide on purpose: the api-server serves sync routes from a thread pool, and each lookup
    holds one of its threads until the store and Jira have answered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lookups = 0
        self._jira_lookups = 0
        self._not_found: OrderedDict[str, float] = OrderedDict()

    def enter_lookup(self) -> None:
        limit = read_settings().rest_max_concurrent_lookups
        with self._lock:
            if self._lookups >= limit:
                raise _busy(f"The ticket channel is serving {limit} lookup(s) already; try again shortly")
            self._lookups += 1

    def leave_lookup(self) -> None:
        with self._lock:
            self._lookups -= 1

    def enter_jira(self) -> None:
        open_slots = _pool_open_slots()
        with self._lock:
            if open_slots is not None and self._jira_lookups >= open_slots:
                raise _busy(
                    f"Jira's request budget (the {JIRA_API_POOL} pool) is in use by the sync; "
                    "try again shortly"
                )
            self._jira_lookups += 1

    def leave_jira(self) -> None:
        with self._lock:
            self._jira_lookups -= 1

    def known_missing(self, key: str) -> bool:
        with self._lock:
            expires = self._not_found.get(key)
            if expires is None:
                return False
            if expires > time.monotonic():
                return True
            del self._not_found[key]
            return False

    def remember_missing(self, key: str) -> None:
        seconds = read_settings().rest_not_found_cache_seconds
        if seconds == 0:
            return
        with self._lock:
            self._not_found[key] = time.monotonic() + seconds
            self._not_found.move_to_end(key)
            while len(self._not_found) > NOT_FOUND_CACHE_ENTRIES:
                self._not_found.popitem(last=False)


limits = LookupLimits()


def _pool_open_slots() -> float | None:
    """Open slots of the jira_api pool in the metadata database; None when there is no such pool."""
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    try:
        with create_session() as session:
            pool = Pool.get_pool(JIRA_API_POOL, session=session)
            return None if pool is None else pool.open_slots(session=session)
    except Exception as exc:  # the metadata database is the api-server's own: rare, and not fatal here
        log.warning("Could not read the %s pool (%s); not checking it", JIRA_API_POOL, type(exc).__name__)
        return None


def _not_found(key: str) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        detail=f"Jira has no issue {key}, or the sync account is not allowed to see it",
    )


def _stored_ticket(key: str) -> dict[str, Any] | None:
    timeout = read_settings().rest_store_connect_timeout_seconds
    try:
        with TicketStoreHook(connect_timeout=timeout).connect() as (conn, dialect):
            return get_ticket(conn, dialect, key)
    except Exception as exc:
        # Here the store is only a cache in front of Jira: a store that is missing, not migrated yet
        # or down must not take the channel down with it.
        log.warning(
            "The ticket store could not be read for %s (%s: %s); asking Jira", key, type(exc).__name__, exc
        )
        return None


def _from_store(ticket: dict[str, Any]) -> TicketDetails:
    return TicketDetails(
        key=ticket["key"],
        assigned_to=ticket["assignee_email"],
        progress_info=ticket["progress"],
        summary=ticket["summary"],
        status=ticket["status"],
        updated_at=ticket["updated_at"],
        fetched_at=ticket["fetched_at"],
        source="store",
    )


def _from_jira(key: str) -> TicketDetails:
    hook = JiraCloudHook(
        timeout=JIRA_TIMEOUT_SECONDS, max_retries=JIRA_MAX_RETRIES, max_retry_wait=JIRA_MAX_RETRY_WAIT_SECONDS
    )
    limits.enter_jira()
    try:
        with hook:
            issue = hook.get_conn().get_issue(key)
    except JiraNotFound:
        limits.remember_missing(key)
        raise _not_found(key) from None
    except JiraUnavailable as exc:
        log.warning("Jira is unavailable for %s: %s", key, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"Jira cannot be reached and the store has no fresh copy of {key}; try again later",
        ) from None
    except JiraRequestError as exc:
        log.error("Jira refused the lookup of %s: %s", key, exc)
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY,
            detail=f"Jira refused the sync account's request for {key} (HTTP {exc.status})",
        ) from None
    except JiraError as exc:
        log.error("Jira lookup of %s failed: %s", key, exc)
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, detail=f"Jira's answer for {key} was unusable"
        ) from None
    except (AirflowNotFoundException, ValueError) as exc:
        # A missing or incomplete jira_default connection: the message names the connection, no secret.
        log.error("Cannot ask Jira for %s: %s: %s", key, type(exc).__name__, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="The server's Jira connection is not usable; ask an Airflow administrator",
        ) from None
    finally:
        limits.leave_jira()
    details = ticket_details(issue)
    return TicketDetails(
        key=details["key"],
        assigned_to=details["assignee_email"],
        progress_info=details["progress"],
        summary=details["summary"],
        status=details["status"],
        updated_at=details["updated_at"],
        fetched_at=datetime.now(UTC),
        source="jira",
    )


def lookup_ticket(key: str) -> TicketDetails:
    """The stored copy of `key` if it is fresh enough, else Jira's current state (never written back).

    Jira's answer is not stored: the store's `source` allows only the DAGs ('inbox', 'sweep'), and a
    read-only channel cannot race their writes.
    """
    projects = read_settings().rest_projects
    if projects is not None and key.partition("-")[0] not in projects:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"This channel answers only for the synced projects ({', '.join(sorted(projects))})",
        )
    max_age = store_max_age()
    limits.enter_lookup()
    try:
        stored = _stored_ticket(key)
        # A row Jira confirmed gone is not served: Jira answers for it (404, or the ticket if it is back).
        if (
            stored is not None
            and stored.get("deleted_at") is None
            and datetime.now(UTC) - stored["fetched_at"] <= max_age
        ):
            return _from_store(stored)
        if limits.known_missing(key):
            raise _not_found(key)
        return _from_jira(key)
    finally:
        limits.leave_lookup()


_ERROR = {"content": {"application/json": {"example": {"detail": "..."}}}}

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
    dependencies=[Depends(require_airflow_user)],
    response_model=TicketDetails,
    responses={
        401: {"description": "No valid Airflow access token", **_ERROR},
        403: {
            "description": "The user may not read the jira_inbox DAG, or the key's project is not synced",
            **_ERROR,
        },
        404: {"description": "Jira has no such issue", **_ERROR},
        502: {"description": "Jira refused the sync account", **_ERROR},
        503: {
            "description": "Jira cannot be reached and the store has no fresh copy, or the channel is busy",
            **_ERROR,
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": TicketRequest.model_json_schema()}},
        }
    },
)
def get_ticket_details(request: Annotated[TicketRequest, Depends(ticket_request)]) -> TicketDetails:
    """A Jira issue's assignee and progress: the store's copy when fresh, Jira's otherwise."""
    return lookup_ticket(request.key)
