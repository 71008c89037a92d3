"""The provider's `imap` connection as IMAPClient: a per-socket timeout, a password or OAuth 2.0 login."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.providers.imap.hooks.imap import ImapHook
from airflow.sdk.exceptions import AirflowFailException
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from include.imap_inbox import Inbox, rejected_mailbox_setting
from include.imap_oauth import (
    ImapAuth,
    ImapAuthError,
    ImapAuthUnavailable,
    imap_auth_from_connection,
    insecure_transport_allowed,
)
from include.imap_wire import connect
from include.names import IMAP_CONN_ID
from include.sender_auth import SenderAuthPolicy

DEFAULT_IMAP_TIMEOUT = 30.0
# RFC 5530 §3: UNAVAILABLE is the one login answer that means "try again later" rather than "fix it".
_TEMPORARY_LOGIN_FAILURE = re.compile(r"\[UNAVAILABLE\]", re.IGNORECASE)


class ImapLoginError(AirflowFailException):
    """The mailbox refused the login, or the connection's login settings are wrong.

    A configuration problem, so it fails the task at once instead of letting Airflow's retries ask
    again (and, for a wrong password, count towards the server's lock-out). The message names the
    fix and never carries a password, a client secret or a token.
    """


class ImapLoginUnavailable(Exception):
    """The mailbox or the token endpoint could not be used right now; Airflow's retries may succeed."""


class _TokenRefused(Exception):
    """One AUTHENTICATE answered NO; ImapAuth.authenticate decides whether to refresh and retry."""


def ssl_context_setting(extra: dict[str, Any]) -> str:
    """The `ssl_context` the IMAP provider would use: the extra, else [imap] or [email] ssl_context."""
    configured = extra.get("ssl_context")
    if configured:
        return str(configured)
    from airflow.providers.common.compat.sdk import conf

    for section in ("imap", "email"):
        value = conf.get(section, "SSL_CONTEXT", fallback=None)
        if value is not None:
            return value
    return "default"


def _server_answer(exc: LoginError, *secrets: str | None) -> str:
    """The server's words from a LoginError, with any secret blanked (servers do not echo them; be sure)."""
    text = str(exc)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _use_ssl(extra: dict[str, Any]) -> bool:
    """The extra `use_ssl` as the provider reads it: on unless set to something false."""
    return bool(extra.get("use_ssl", True))


def _close(client: IMAPClient) -> None:
    with contextlib.suppress(Exception):
        client.shutdown()


def _mask(token: str) -> None:
    """Have Airflow's log masker blank this token wherever it could still appear in a task log."""
    from airflow.sdk.log import mask_secret

    mask_secret(token)


class ImapInboxHook(ImapHook):
    """ImapHook whose client cannot hang a task, logs in per `auth_type`, and reads mail only via Inbox.

    The connection fields are the provider's (host, port, login, password; extras `use_ssl`,
    default true, and `ssl_context`, "default" or "none"), plus the extra `allow_insecure_transport`
    (default false: a password or token goes out only over TLS with a verified certificate) and the
    extra `auth_type`:

    - `password` (default): IMAP LOGIN with the login and password;
    - `xoauth2` / `oauthbearer`: SASL with an OAuth 2.0 access token from the token source the
      other extras describe (`include/imap_oauth.py`; generic client credentials, Microsoft Entra
      ID or Google). The login is the mailbox, the password the client secret. The token is shared
      by every session of this process until shortly before it expires; when the server refuses
      it, one fresh token is tried on a new connection, and a second refusal fails with the fix.

    A refused login or a wrong setting raises ImapLoginError (fails the task without retries);
    an unreachable token endpoint or an `[UNAVAILABLE]` answer raises ImapLoginUnavailable (retried).

    The client is an IMAPClient whose own socket has `timeout`: the provider's imaplib clients have
    none, and nothing here changes the process-wide socket default. The provider's retrieve methods
    are not for this client: they fetch RFC822 in a read-write SELECT, which marks every message
    seen before it is processed.
    """

    hook_name = "IMAP (bounded, peek-only)"

    def __init__(self, imap_conn_id: str = IMAP_CONN_ID, *, timeout: float = DEFAULT_IMAP_TIMEOUT):
        super().__init__(imap_conn_id=imap_conn_id)
        self.timeout = timeout
        self.auth_type: str | None = None  # set at login: password, xoauth2 or oauthbearer

    def _build_client(self, conn):
        extra = conn.extra_dejson
        return connect(
            conn.host or "",
            conn.port,
            use_ssl=_use_ssl(extra),
            ssl_context=ssl_context_setting(extra),
            timeout=self.timeout,
        )

    def login_settings(self, conn) -> ImapAuth:
        """How this connection logs in (validated; no network). ImapLoginError names a wrong extra.

        Also refuses, before any connection or token request, a transport that would expose the
        password or token (include/imap_oauth.py, `insecure_transport_allowed`).
        """
        extra = conn.extra_dejson
        try:
            auth = imap_auth_from_connection(conn.login, conn.password, extra, timeout=self.timeout)
            insecure = insecure_transport_allowed(
                extra, use_ssl=_use_ssl(extra), ssl_context=ssl_context_setting(extra)
            )
        except ImapAuthError as exc:
            raise ImapLoginError(f"IMAP connection {self.imap_conn_id!r}: {exc}") from None
        if insecure:
            self.log.warning(
                "IMAP connection %r sends its login to %s without verified TLS, as its extra "
                "allow_insecure_transport says; use that only for test servers",
                self.imap_conn_id,
                conn.host,
            )
        return auth

    def sender_auth(self) -> SenderAuthPolicy:
        """How mail from this mailbox is authenticated beyond its From (extras `sender_auth`,
        `authserv_id`, `trusted_dkim_domains`, `dkim_max_message_bytes`; include/sender_auth.py).

        A wrong extra fails the task at once (ImapLoginError), as retrying cannot fix it.
        """
        conn = self.get_connection(self.imap_conn_id)
        try:
            return SenderAuthPolicy.from_extras(conn.extra_dejson)
        except ValueError as exc:
            raise ImapLoginError(f"IMAP connection {self.imap_conn_id!r}: {exc}") from None

    def rejected_mailbox(self, inbox: str = "INBOX") -> str | None:
        """Where rejected mail of `inbox` is moved: the extra `rejected_mailbox` (default
        "Jira/Rejected"; null leaves it in place). A wrong extra fails the task (ImapLoginError)."""
        conn = self.get_connection(self.imap_conn_id)
        try:
            return rejected_mailbox_setting(conn.extra_dejson, inbox)
        except ValueError as exc:
            raise ImapLoginError(f"IMAP connection {self.imap_conn_id!r}: {exc}") from None

    def get_conn(self) -> ImapInboxHook:
        """Connect and log in (once per hook); `mail_client` is then an authenticated IMAPClient."""
        if not self.mail_client:
            self.mail_client = self.log_in(self.get_connection(self.imap_conn_id))
        return self

    def log_in(self, conn) -> IMAPClient:
        """A new session on `conn`, logged in per its `auth_type` (blocking: token calls, TCP, TLS).

        For callers that fetched the connection themselves, such as the IDLE trigger, which must
        get it with `await aget_connection()` on the triggerer's event loop and log in on a thread.
        """
        auth = self.login_settings(conn)
        client = self._password_login(conn, auth) if auth.mechanism is None else self._token_login(conn, auth)
        self.auth_type = auth.auth_type
        return client

    def _refusal(self, conn, what: str, answer: str, fix: str) -> Exception:
        where = f"IMAP connection {self.imap_conn_id!r}: the IMAP server {conn.host}"
        if _TEMPORARY_LOGIN_FAILURE.search(answer):
            return ImapLoginUnavailable(f"{where} cannot log {conn.login} in right now ({answer})")
        return ImapLoginError(f"{where} refused {what} for {conn.login} ({answer}): {fix}")

    def _password_login(self, conn, auth: ImapAuth) -> IMAPClient:
        if not conn.password:
            raise ImapLoginError(
                f"IMAP connection {self.imap_conn_id!r} has no password; set it, or set the extra "
                "auth_type to xoauth2 or oauthbearer for an OAuth 2.0 login"
            )
        client = self._build_client(conn)
        try:
            client.login(auth.user, conn.password)
        except LoginError as exc:
            _close(client)
            raise self._refusal(
                conn,
                "the password login",
                _server_answer(exc, conn.password),
                "check the connection's login and password (servers that retired password logins, "
                "such as Exchange Online, need auth_type xoauth2)",
            ) from None
        except BaseException:
            _close(client)
            raise
        self.log.info("Logged in to %s as %s with a password", conn.host, auth.user)
        return client

    def _token_login(self, conn, auth: ImapAuth) -> IMAPClient:
        mechanism = auth.mechanism or ""
        answers: list[str] = []  # the server's words for each refusal, already without secrets

        def attempt(user: str, token: str) -> IMAPClient:
            _mask(token)
            # A new connection per attempt: some servers close the session after a refused AUTHENTICATE.
            client = self._build_client(conn)
            try:
                if not client.has_capability(f"AUTH={mechanism}"):
                    offered = sorted(c.decode() for c in client.capabilities() if c.startswith(b"AUTH="))
                    raise ImapLoginError(
                        f"IMAP connection {self.imap_conn_id!r}: the IMAP server {conn.host} does not offer "
                        f"AUTH={mechanism} (it offers {', '.join(offered) or 'no SASL mechanism'}): set "
                        "the extra auth_type to one it offers"
                    )
                if mechanism == "XOAUTH2":
                    client.oauth2_login(user, token)
                else:
                    client.oauthbearer_login(user, token)
            except LoginError as exc:
                _close(client)
                answer = _server_answer(exc, token, conn.password)
                if _TEMPORARY_LOGIN_FAILURE.search(answer):
                    raise self._refusal(conn, "the token", answer, "") from None
                answers.append(answer)
                raise _TokenRefused(answer) from None
            except BaseException:
                _close(client)
                raise
            return client

        try:
            client = auth.authenticate(attempt, (_TokenRefused,))
        except ImapAuthUnavailable as exc:
            raise ImapLoginUnavailable(f"IMAP connection {self.imap_conn_id!r}: {exc}") from None
        except ImapAuthError as exc:
            said = f"; the server answered: {answers[-1]}" if answers else ""
            raise ImapLoginError(f"IMAP connection {self.imap_conn_id!r}: {exc}{said}") from None
        self.log.info("Logged in to %s as %s with %s", conn.host, auth.user, mechanism)
        return client

    @contextmanager
    def inbox(self, mailbox: str = "INBOX") -> Iterator[Inbox]:
        """Log in, yield an Inbox on `mailbox`, and always close it and log out."""
        with self as hook:
            inbox = Inbox(hook.mail_client, mailbox)
            try:
                yield inbox
            finally:
                inbox.close()
