"""The provider's `imap` connection, opened as IMAPClient with a per-socket timeout, as our Inbox."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.providers.imap.hooks.imap import ImapHook

from include.imap_inbox import Inbox
from include.imap_wire import connect
from include.names import IMAP_CONN_ID

DEFAULT_IMAP_TIMEOUT = 30.0


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


class ImapInboxHook(ImapHook):
    """ImapHook whose client cannot hang a task, and which reads mail only through our Inbox.

    The connection fields are the provider's (host, port, login, password; extras `use_ssl`,
    default true, and `ssl_context`, "default" or "none"), but the client is an IMAPClient whose
    own socket has `timeout`: the provider's imaplib clients have none, and nothing here changes
    the process-wide socket default. The provider's retrieve methods are not for this client: they
    fetch RFC822 in a read-write SELECT, which marks every message seen before it is processed.
    """

    hook_name = "IMAP (bounded, peek-only)"

    def __init__(self, imap_conn_id: str = IMAP_CONN_ID, *, timeout: float = DEFAULT_IMAP_TIMEOUT):
        super().__init__(imap_conn_id=imap_conn_id)
        self.timeout = timeout

    def _build_client(self, conn):
        extra = conn.extra_dejson
        return connect(
            conn.host or "",
            conn.port,
            use_ssl=bool(extra.get("use_ssl", True)),
            ssl_context=ssl_context_setting(extra),
            timeout=self.timeout,
        )

    @contextmanager
    def inbox(self, mailbox: str = "INBOX") -> Iterator[Inbox]:
        """Log in, yield an Inbox on `mailbox`, and always close it and log out."""
        with self as hook:
            inbox = Inbox(hook.mail_client, mailbox, timeout=self.timeout)
            try:
                yield inbox
            finally:
                inbox.close()
