"""The provider's ImapHook with a bounded socket timeout, opening our peek-only Inbox."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from airflow.providers.imap.hooks.imap import ImapHook

from include.imap_inbox import Inbox

DEFAULT_IMAP_TIMEOUT = 30.0


class BoundedImapHook(ImapHook):
    """ImapHook whose connection cannot hang a task.

    The provider builds imaplib clients without a timeout, so a server that accepts the TCP
    connection and then goes silent would block the worker until the task's own timeout. We keep
    its connection handling (host, port, use_ssl, ssl_context, login) and only bound the socket.
    Its retrieve methods are not used: they fetch RFC822 in a read-write SELECT, which marks every
    message seen before it has been processed.
    """

    hook_name = "IMAP (bounded, peek-only)"

    def __init__(
        self, imap_conn_id: str = ImapHook.default_conn_name, *, timeout: float = DEFAULT_IMAP_TIMEOUT
    ):
        super().__init__(imap_conn_id=imap_conn_id)
        self.timeout = timeout

    def _build_client(self, conn):
        # imaplib only takes a timeout in its constructor, which the provider does not pass; the
        # process-wide default applies to the connect, and the socket is bounded right after.
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.timeout)
        try:
            client = super()._build_client(conn)
        finally:
            socket.setdefaulttimeout(previous)
        client.sock.settimeout(self.timeout)
        return client

    @contextmanager
    def inbox(self, mailbox: str = "INBOX") -> Iterator[Inbox]:
        """Log in, yield an Inbox on `mailbox`, and always close and log out."""
        with self as hook:
            inbox = Inbox(hook.mail_client, mailbox)
            try:
                yield inbox
            finally:
                inbox.close()
