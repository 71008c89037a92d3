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

Settings (Airflow configuration, so airflow.cfg or the environment):

- `[jira_mail_sync] store_max_age_seconds` (`AIRFLOW__JIRA_MAIL_SYNC__STORE_MAX_AGE_SECONDS`), default
  300: how old a stored copy (its `fetched_at`) may be and still be served without asking Jira.

Answers: 200 with the ticket; 401 with `WWW-Authenticate: Bearer` when the token is missing, malformed,
badly signed, for another audience, expired or revoked; 403 for a user who may not read the
`jira_inbox` DAG; 404 when Jira has no such issue (or the sync
account may not see it); 422 for a body that is not `{"key": "PROJECT-123"}`; 502 when Jira refuses the
sync account; 503 when Jira cannot be reached or its connection is unusable. Errors carry
`{"detail": "..."}` and never a token, password or connection URI.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from airflow.sdk.exceptions import AirflowNotFoundException
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError, field_validator

from include.jira_cloud import JiraError, JiraNotFound, JiraRequestError, JiraUnavailable, ticket_details
from include.jira_rules import is_issue_key
from include.names import CONFIG_SECTION
from include.ticket_store import get_ticket
from jira_mail_sync.hooks.jira_cloud import JiraCloudHook
from jira_mail_sync.hooks.ticket_store import TicketStoreHook

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

log = logging.getLogger(__name__)

STORE_MAX_AGE_OPTION = "store_max_age_seconds"
DEFAULT_STORE_MAX_AGE_SECONDS = 300
# A caller is waiting on the answer, so Jira gets far less time than the DAGs give it: one quick retry.
JIRA_TIMEOUT_SECONDS = 10.0
JIRA_MAX_RETRIES = 1
JIRA_MAX_RETRY_WAIT_SECONDS = 2.0
MAX_KEY_CHARS = 300

_TOKEN_HINT = "send an Airflow access token from POST /auth/token as 'Authorization: Bearer <token>'"


class TicketRequest(BaseModel):
    """The request body: one Jira issue key (case-insensitive, surrounding blanks ignored)."""

    key: str = Field(max_length=MAX_KEY_CHARS, examples=["ABC-123"])

    @field_validator("key")
    @classmethod
    def _issue_key(cls, value: str) -> str:
        key = value.strip().upper()
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


async def require_airflow_user(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> BaseUser:
    """The Airflow user a valid bearer token stands for; 401 for anything else."""
    from airflow.api_fastapi.app import get_auth_manager
    from jwt import ExpiredSignatureError, InvalidTokenError

    if credentials is None:
        raise _unauthorized(f"Not authenticated: {_TOKEN_HINT}", invalid_token=False)
    auth_manager = get_auth_manager()
    try:
        user = await auth_manager.get_user_from_token(credentials.credentials)
    except ExpiredSignatureError:
        raise _unauthorized(f"The access token has expired: {_TOKEN_HINT}", invalid_token=True) from None
    except InvalidTokenError:
        raise _unauthorized(f"The access token is not valid: {_TOKEN_HINT}", invalid_token=True) from None
    # Being logged in is not enough: the answer is what jira_inbox stores, so the user must be allowed
    # to read that DAG, as Airflow's own routes would require.
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    if not auth_manager.is_authorized_dag(method="GET", details=DagDetails(id="jira_inbox"), user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="This user may not read the jira_inbox DAG")
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
    """The configured `[jira_mail_sync] store_max_age_seconds`, read on every request."""
    from airflow.configuration import conf

    raw = conf.get(CONFIG_SECTION, STORE_MAX_AGE_OPTION, fallback=str(DEFAULT_STORE_MAX_AGE_SECONDS))
    try:
        seconds = int(str(raw).strip())
    except ValueError:
        seconds = -1
    if seconds < 0:
        log.error("[%s] %s must be a whole number of seconds >= 0", CONFIG_SECTION, STORE_MAX_AGE_OPTION)
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            detail=f"The server setting [{CONFIG_SECTION}] {STORE_MAX_AGE_OPTION} is not a number of seconds",
        )
    return timedelta(seconds=seconds)


def _stored_ticket(key: str) -> dict[str, Any] | None:
    try:
        with TicketStoreHook().connect() as (conn, dialect):
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
    try:
        with hook:
            issue = hook.get_conn().get_issue(key)
    except JiraNotFound:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"Jira has no issue {key}, or the sync account is not allowed to see it",
        ) from None
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
    max_age = store_max_age()
    stored = _stored_ticket(key)
    if stored is not None and datetime.now(UTC) - stored["fetched_at"] <= max_age:
        return _from_store(stored)
    return _from_jira(key)


_ERROR = {"content": {"application/json": {"example": {"detail": "..."}}}}

app = FastAPI(
    title="jira-mail-sync",
    summary="Ticket lookup: a Jira issue's assignee and progress",
    description=__doc__,
    dependencies=[Depends(require_airflow_user)],
    # App-level dependencies do not cover the docs routes, so they would be open without a token.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


@app.post(
    "/ticket",
    response_model=TicketDetails,
    responses={
        401: {"description": "No valid Airflow access token", **_ERROR},
        403: {"description": "The user may not read the jira_inbox DAG", **_ERROR},
        404: {"description": "Jira has no such issue", **_ERROR},
        502: {"description": "Jira refused the sync account", **_ERROR},
        503: {"description": "Jira cannot be reached and the store has no fresh copy", **_ERROR},
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
