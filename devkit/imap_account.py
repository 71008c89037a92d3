"""What the Dovecot and Courier test accounts share: a helper IMAP session to seed and inspect mail."""

from __future__ import annotations

import contextlib
import imaplib
import re

from imapclient import IMAPClient

from include.imap_wire import DEFAULT_TIMEOUT_S

_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")


class _AdoptedSession(IMAPClient):
    """An IMAPClient over an imaplib session someone else opened (and usually logged in)."""

    def __init__(self, imap: imaplib.IMAP4, timeout: float) -> None:
        self._adopted = imap
        super().__init__(imap.host, port=imap.port, ssl=isinstance(imap, imaplib.IMAP4_SSL), timeout=timeout)

    def _create_IMAP4(self) -> imaplib.IMAP4:  # noqa: N802 (IMAPClient's name)
        return self._adopted


def adopt_imaplib(imap: imaplib.IMAP4, *, timeout: float = DEFAULT_TIMEOUT_S) -> IMAPClient:
    """Drive an already open imaplib session (a test account's, a recording client) through IMAPClient.

    A socket that already has a timeout keeps it; one without gets `timeout`.
    """
    sock = getattr(imap, "sock", None)
    current = sock.gettimeout() if sock is not None else None
    return _AdoptedSession(imap, current if current is not None else timeout)


def ok(response: tuple[str, list], what: str) -> list:
    """The data of an imaplib answer; AssertionError naming the command when it is not OK."""
    typ, data = response
    if typ != "OK":
        raise AssertionError(f"{what} answered {typ}: {data!r}")
    return data


class HelperSessionAccount:
    """Seeding and inspecting through one lazily opened helper session; subclasses provide `connect()`.

    A mixin rather than a dataclass base: each account is a dataclass whose own fields come first.
    """

    user: str
    _sessions: list[imaplib.IMAP4]
    _helper: imaplib.IMAP4 | None

    def connect(self) -> imaplib.IMAP4:
        raise NotImplementedError

    def _helper_session(self) -> imaplib.IMAP4:
        if self._helper is None:
            self._helper = self.connect()
        return self._helper

    def append(self, raw: bytes, flags: str = "", mailbox: str = "INBOX") -> int:
        """IMAP APPEND one message (flags like "\\Seen $JiraRejected"); returns its UID (APPENDUID)."""
        data = ok(self._helper_session().append(mailbox, flags or None, None, raw), f"APPEND {mailbox}")
        match = _APPENDUID.search(data[-1] or b"")
        if match is None:
            raise AssertionError(f"APPEND answered without APPENDUID: {data!r}")
        return int(match.group(2))

    def _examine(self, mailbox: str) -> tuple[imaplib.IMAP4, int]:
        session = self._helper_session()
        return session, int(ok(session.select(mailbox, readonly=True), f"EXAMINE {mailbox}")[0] or 0)

    def flags_by_uid(self, mailbox: str = "INBOX") -> dict[int, set[str]]:
        """Every message's flags and keywords by UID, read with EXAMINE so nothing changes.

        \\Recent is left out: it belongs to whichever session saw the message first, not to the message.
        """
        session, exists = self._examine(mailbox)
        try:
            if exists == 0:
                return {}
            result: dict[int, set[str]] = {}
            for item in ok(session.uid("FETCH", "1:*", "(FLAGS)"), "UID FETCH FLAGS"):
                line = item[0] if isinstance(item, tuple) else item
                if not line:
                    continue
                uid_match, flags_match = _FETCH_UID.search(line), _FETCH_FLAGS.search(line)
                if uid_match and flags_match:
                    flags = set(flags_match.group(1).decode().split()) - {"\\Recent"}
                    result[int(uid_match.group(1))] = flags
            return result
        finally:
            session.unselect()

    def _log_out_sessions(self) -> None:
        """Log out every session this object opened."""
        for session in self._sessions:
            with contextlib.suppress(Exception):
                session.logout()
        self._sessions.clear()
        self._helper = None
