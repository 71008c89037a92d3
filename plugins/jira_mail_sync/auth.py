"""Who is asking, and what they may see: the one authentication and permission check of the plugin's routes.

The api-server mounts a plugin's `fastapi_apps` as plain sub-applications. Airflow's authentication is
a dependency of its own routers (/api/v2, /ui), not a middleware, so nothing in front of a plugin app
asks for a token (seen on 3.3.2). Every route of the REST channel and of the "Jira sync" page therefore
checks the caller here, with the calls Airflow's own routes make: the configured auth manager's
`get_user_from_token` (so signature, audience, issuer, expiry, JWKS keys and revoked tokens follow the
`[api_auth]` settings, and this module never decodes a JWT itself) and its `is_authorized_dag` with the
access entity that guards the data (DagAccessEntity.RUN for runs, TASK_LOGS or XCOM for what a mail
said, none for the DAG itself).

The credential is a bearer token (`Authorization: Bearer`, from `POST /auth/token`) or, for the page
opened inside the Airflow UI, the UI's own session cookie, which the browser sends to the page's iframe
because it is served by the same api-server.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

TOKEN_HINT = "send an Airflow access token from POST /auth/token as 'Authorization: Bearer <token>'"

bearer = HTTPBearer(auto_error=False, description="An Airflow access token from POST /auth/token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _unauthorized(detail: str, *, invalid_token: bool) -> HTTPException:
    # RFC 6750: a request without credentials gets a bare challenge, a rejected token an error code.
    challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": challenge})


def credential(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The bearer token, else the UI's session cookie; None without either."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    # An explicit bearer token wins over the ambient session cookie, as in Airflow's own routes.
    if credentials is not None:
        return credentials.credentials
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN)


async def user_from_token(token: str | None) -> BaseUser:
    """The Airflow user a valid access token stands for; 401 for a missing, bad, expired or revoked one."""
    from airflow.api_fastapi.app import get_auth_manager
    from jwt import ExpiredSignatureError, InvalidTokenError

    if not token:
        raise _unauthorized(f"Not authenticated: {TOKEN_HINT}", invalid_token=False)
    try:
        return await get_auth_manager().get_user_from_token(token)
    except ExpiredSignatureError:
        raise _unauthorized(f"The access token has expired: {TOKEN_HINT}", invalid_token=True) from None
    except InvalidTokenError:
        raise _unauthorized(f"The access token is not valid: {TOKEN_HINT}", invalid_token=True) from None


def may_access_dag(user: BaseUser, dag_id: str, *, entity: str | None = None, method: str = "GET") -> bool:
    """Whether the auth manager lets `user` do `method` on `dag_id` or on one of its entities.

    `entity` names a DagAccessEntity member ("RUN", "TASK_LOGS", "XCOM", ...); None: the DAG itself.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    access_entity = DagAccessEntity[entity] if entity is not None else None
    return get_auth_manager().is_authorized_dag(
        method=method, access_entity=access_entity, details=DagDetails(id=dag_id), user=user
    )


def may_read_any(user: BaseUser, dag_id: str, entities: Iterable[str]) -> bool:
    """Whether `user` may read at least one of `entities` of `dag_id`."""
    return any(may_access_dag(user, dag_id, entity=entity) for entity in entities)


def require_dag_access(
    user: BaseUser, dag_ids: Iterable[str], *, method: str = "GET", run: bool = False
) -> None:
    """403 unless the auth manager lets `user` do `method` on each DAG (on its runs, with `run`)."""
    for dag_id in dag_ids:
        if not may_access_dag(user, dag_id, entity="RUN" if run else None, method=method):
            action = "trigger" if run and method == "POST" else "read"
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"This user may not {action} the {dag_id} DAG"
            )


async def token_user(credentials: Credentials) -> BaseUser:
    """A bearer token's user; 401 without a valid one. What the user may read is the route's to check."""
    return await user_from_token(credentials.credentials if credentials else None)


async def session_user(request: Request, credentials: Credentials) -> BaseUser:
    """The user of a bearer token or of the UI's session cookie; 401 without a valid one."""
    return await user_from_token(credential(request, credentials))


# Any, not BaseUser: FastAPI resolves these annotations at runtime, and BaseUser is imported for typing only.
SessionUser = Annotated[Any, Depends(session_user)]
