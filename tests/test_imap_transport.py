"""The IMAP hook sends a password or OAuth token only over verified TLS, unless the connection allows it."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
from jira_mail_sync.hooks.imap import ImapInboxHook, ImapLoginError

from devkit.processes import LOOPBACK
from include.imap_oauth import ImapAuthError, insecure_transport_allowed

SECRET = "s3cret-do-not-send-9f2c"


class RecordingImapListener:
    """A loopback TCP listener that greets like an IMAP server and keeps every byte it is sent."""

    def __init__(self) -> None:
        self._socket = socket.create_server((LOOPBACK, 0))
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self.connections = 0
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                peer, _ = self._socket.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with peer:
                peer.settimeout(2)
                peer.sendall(b"* OK ready\r\n")
                try:
                    while chunk := peer.recv(4096):
                        self.received += chunk
                        for line in chunk.splitlines():
                            tag, _, command = line.partition(b" ")
                            if command.upper().startswith(b"CAPABILITY"):
                                peer.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
                            elif tag:
                                peer.sendall(tag + b" NO [AUTHENTICATIONFAILED] no\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


@pytest.fixture
def listener() -> Iterator[RecordingImapListener]:
    server = RecordingImapListener()
    try:
        yield server
    finally:
        server.close()


def _use(monkeypatch: pytest.MonkeyPatch, conn: dict[str, object]) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(conn))


def _listener_conn(listener: RecordingImapListener, **extra: object) -> dict[str, object]:
    return {
        "conn_type": "imap",
        "host": LOOPBACK,
        "port": listener.port,
        "login": "jira@example.com",
        "password": SECRET,
        "extra": extra,
    }


@pytest.mark.parametrize(
    ("extra", "names_the_fix"),
    [
        pytest.param({"use_ssl": False}, "set the extra use_ssl to true", id="plain"),
        pytest.param(
            {"use_ssl": True, "ssl_context": "none"}, 'set ssl_context to "default"', id="unverified"
        ),
        pytest.param(
            {"use_ssl": False, "allow_insecure_transport": False},
            "use_ssl",
            id="plain-explicitly-not-allowed",
        ),
    ],
)
def test_a_password_is_not_sent_without_verified_tls(
    listener: RecordingImapListener, monkeypatch: pytest.MonkeyPatch, extra: dict, names_the_fix: str
) -> None:
    _use(monkeypatch, _listener_conn(listener, **extra))

    with pytest.raises(ImapLoginError) as raised:
        ImapInboxHook().get_conn()

    message = str(raised.value)
    assert names_the_fix in message
    assert "allow_insecure_transport: true" in message
    assert SECRET not in message
    # Refused before connecting at all: not a byte, let alone the password, reached the listener.
    assert (listener.connections, bytes(listener.received)) == (0, b"")


def test_an_oauth_token_is_neither_fetched_nor_sent_without_verified_tls(
    listener: RecordingImapListener, oauth_standin, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {
        "use_ssl": False,
        "auth_type": "xoauth2",
        "token_url": oauth_standin.token_url,
        "client_id": "app-1",
    }
    _use(monkeypatch, _listener_conn(listener, **extra))

    with pytest.raises(ImapLoginError, match="allow_insecure_transport: true") as raised:
        ImapInboxHook().get_conn()

    assert SECRET not in str(raised.value)
    assert oauth_standin.requests == []  # no token was even asked for
    assert listener.connections == 0


def test_the_listener_would_have_seen_the_password_had_the_extra_allowed_plain_imap(
    listener: RecordingImapListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control for the tests above: the same listener does catch a password sent in the clear.
    _use(monkeypatch, _listener_conn(listener, use_ssl=False, allow_insecure_transport=True))

    with pytest.raises(ImapLoginError, match="refused the password login") as raised:
        ImapInboxHook().get_conn()

    assert SECRET not in str(raised.value)
    assert listener.connections == 1
    assert SECRET.encode() in bytes(listener.received)


def test_plain_imap_to_dovecot_works_with_allow_insecure_transport(imap_account, monkeypatch) -> None:
    conn = imap_account.airflow_conn()
    assert conn["extra"] == {"use_ssl": False, "allow_insecure_transport": True}
    _use(monkeypatch, conn)

    with ImapInboxHook() as hook:
        assert hook.get_conn().mail_client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0

    _use(monkeypatch, {**conn, "extra": {"use_ssl": False}})
    with pytest.raises(ImapLoginError, match="plain IMAP"):
        ImapInboxHook().get_conn()


def test_verified_tls_to_dovecot_needs_no_extra(imap_account, monkeypatch) -> None:
    conn = imap_account.airflow_conn(ssl=True)
    assert "allow_insecure_transport" not in conn["extra"]
    _use(monkeypatch, conn)
    for name, value in imap_account.ssl_trust_env().items():
        monkeypatch.setenv(name, value)

    with ImapInboxHook() as hook:
        assert hook.get_conn().mail_client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0

    # The same server without verification is refused, even though TLS would work.
    _use(monkeypatch, {**conn, "extra": {"use_ssl": True, "ssl_context": "none"}})
    with pytest.raises(ImapLoginError, match="not verified"):
        ImapInboxHook().get_conn()


@pytest.mark.parametrize(
    ("use_ssl", "ssl_context", "allowed", "expected"),
    [
        pytest.param(True, "default", False, False, id="verified-tls"),
        pytest.param(True, "default", True, False, id="verified-tls-extra-moot"),
        pytest.param(True, "none", True, True, id="unverified-allowed"),
        pytest.param(False, "default", True, True, id="plain-allowed"),
        pytest.param(True, "none", False, None, id="unverified-refused"),
        pytest.param(False, "default", False, None, id="plain-refused"),
        pytest.param(False, "none", False, None, id="plain-and-unverified-refused"),
    ],
)
def test_which_transports_may_carry_a_login(use_ssl, ssl_context, allowed, expected) -> None:
    extra = {"allow_insecure_transport": allowed}
    if expected is None:
        with pytest.raises(ImapAuthError, match="refusing to send the login's password or token"):
            insecure_transport_allowed(extra, use_ssl=use_ssl, ssl_context=ssl_context)
    else:
        assert insecure_transport_allowed(extra, use_ssl=use_ssl, ssl_context=ssl_context) is expected


@pytest.mark.parametrize("value", ["true", "yes", 1, None])
def test_allow_insecure_transport_must_be_a_json_boolean(value) -> None:
    with pytest.raises(ImapAuthError, match="allow_insecure_transport` must be true or false"):
        insecure_transport_allowed({"allow_insecure_transport": value}, use_ssl=True, ssl_context="default")
