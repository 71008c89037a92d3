"""The keyword-less Courier IMAP (devkit/courier.py) behaves the way ../shared/FACTS.md says.

These run against the real Courier 5.0.13 from Debian 12, unpacked by scripts/install_courier.sh.
If it cannot be unpacked or started, the tests fail, unless JMS_ALLOW_SKIP=1 is set.
"""

from __future__ import annotations

import imaplib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.courier import CourierAccount, CourierServer, CourierStartError, NoDelayIMAP4, start_courier

ALLOW_SKIP_ENV = "JMS_ALLOW_SKIP"
KEYWORD = "$JiraRejected"
# What Courier answers with IMAP_KEYWORDS=0 (and what Exchange Online answers, less $MDNSent).
SYSTEM_FLAGS = "(\\Draft \\Answered \\Flagged \\Deleted \\Seen)"


def _unavailable(message: str) -> None:
    if os.environ.get(ALLOW_SKIP_ENV) == "1":
        pytest.skip(f"{message} ({ALLOW_SKIP_ENV}=1)")
    pytest.fail(f"{message}\n(set {ALLOW_SKIP_ENV}=1 to skip these tests instead of failing)", pytrace=False)


def _start(**kwargs: object) -> CourierServer:
    try:
        return start_courier(**kwargs)  # type: ignore[arg-type]
    except (CourierStartError, OSError) as exc:
        _unavailable(f"Courier IMAP could not start: {exc}")
        raise  # not reached: _unavailable fails or skips


@pytest.fixture(scope="module")
def courier() -> Iterator[CourierServer]:
    """One keyword-less Courier (IMAP_KEYWORDS=0) for this module."""
    server = _start()
    try:
        yield server
    finally:
        server.stop()


def _message(n: int) -> bytes:
    return (
        f"From: jira@example.com\r\nTo: bot@example.com\r\nSubject: [JIRA] (ABC-{n}) test {n}\r\n"
        f"Message-ID: <courier-{n}@example.com>\r\n\r\nbody {n}\r\n"
    ).encode()


@pytest.fixture
def account(courier: CourierServer) -> Iterator[CourierAccount]:
    """A fresh account holding two unseen messages, UIDs 1 and 2."""
    account = courier.create_account()
    assert [account.append(_message(1)), account.append(_message(2))] == [1, 2]
    try:
        yield account
    finally:
        account.close()


@pytest.fixture
def session(account: CourierAccount) -> imaplib.IMAP4:
    client = account.connect()
    typ, data = client.select("INBOX")
    assert (typ, data) == ("OK", [b"2"])
    return client


def _courier_overlays(mountinfo: str) -> dict[str, str]:
    """Mount point -> source of each of devkit.courier's overlay mounts listed in `mountinfo`."""
    overlays = {}
    for line in Path(mountinfo).read_text().splitlines():
        fields, _, after = line.partition(" - ")
        fstype, source = after.split()[:2]
        if fstype == "overlay" and source.startswith("jms-courier-"):
            overlays[fields.split()[4]] = source
    return overlays


def test_the_server_greets_on_loopback_and_keeps_its_mounts_to_itself(courier: CourierServer) -> None:
    assert courier.host == "127.0.0.1"
    client = NoDelayIMAP4(courier.host, courier.port, timeout=10)
    try:
        assert client.welcome.startswith(b"* OK")
        assert b"Courier-IMAP" in client.welcome
    finally:
        client.shutdown()
    # The overlays that give Courier its compiled-in paths live in the server's own mount namespace
    # only; whatever the host has under /etc or /run (a Courier of its own, say) is none of our business.
    assert courier.mount_ns and courier.mount_ns != os.readlink("/proc/self/ns/mnt")
    server = courier.process.pid
    assert _courier_overlays(f"/proc/{server}/mountinfo") == {
        "/etc": "jms-courier-etc",
        "/run": "jms-courier-run",
        "/usr/lib": "jms-courier-lib",
    }
    assert _courier_overlays("/proc/self/mountinfo") == {}
    # /proc/PID/root resolves paths through the server's namespace: there its config directory exists.
    assert Path(f"/proc/{server}/root/etc/courier").is_dir()


def test_permanentflags_lack_the_keyword_wildcard(session: imaplib.IMAP4) -> None:
    permanent = session.untagged_responses["PERMANENTFLAGS"]
    assert permanent == [SYSTEM_FLAGS.encode()]
    assert b"\\*" not in permanent[0]


def test_a_keyword_store_answers_no_and_changes_nothing(
    account: CourierAccount, session: imaplib.IMAP4
) -> None:
    typ, _ = session.uid("STORE", "1", "+FLAGS", f"({KEYWORD})")
    assert typ == "NO"  # imaplib returns it; it does not raise
    assert account.flags_by_uid() == {1: set(), 2: set()}


def test_seen_with_a_keyword_fails_whole_and_leaves_seen_unset(
    account: CourierAccount, session: imaplib.IMAP4
) -> None:
    typ, _ = session.uid("STORE", "1", "+FLAGS", f"(\\Seen {KEYWORD})")
    assert typ == "NO"
    assert account.flags_by_uid() == {1: set(), 2: set()}


def test_a_plain_seen_store_works(account: CourierAccount, session: imaplib.IMAP4) -> None:
    typ, data = session.uid("STORE", "1", "+FLAGS", "(\\Seen)")
    assert typ == "OK", data
    assert account.flags_by_uid() == {1: {"\\Seen"}, 2: set()}


def test_unkeyword_is_accepted_and_filters_nothing(account: CourierAccount, session: imaplib.IMAP4) -> None:
    assert session.uid("STORE", "1", "+FLAGS", f"({KEYWORD})")[0] == "NO"
    typ, data = session.uid("SEARCH", "UNSEEN", "UNKEYWORD", KEYWORD)
    assert (typ, data) == ("OK", [b"1 2"])
    # The same with a \Seen message in the box: UNKEYWORD keeps the UNSEEN result as it is.
    assert session.uid("STORE", "2", "+FLAGS", "(\\Seen)")[0] == "OK"
    assert session.uid("SEARCH", "UNSEEN", "UNKEYWORD", KEYWORD) == ("OK", [b"1"])
    assert session.uid("SEARCH", "UNKEYWORD", KEYWORD) == ("OK", [b"1 2"])


def test_the_airflow_connection_and_a_second_login(courier: CourierServer, account: CourierAccount) -> None:
    assert account.airflow_conn() == {
        "conn_type": "imap",
        "host": "127.0.0.1",
        "port": courier.port,
        "login": account.login,
        "password": account.password,
        "extra": {"use_ssl": False, "allow_insecure_transport": True},
    }
    # An account created after start-up can log in at once (authlib re-reads userdb.dat).
    other = courier.create_account(login="second-user", password="s3cret-pw")
    client = other.connect()
    assert client.select("INBOX") == ("OK", [b"0"])
    other.close()


@pytest.mark.service
def test_with_keywords_enabled_the_same_store_succeeds() -> None:
    """IMAP_KEYWORDS is what makes the difference: with it on, Courier takes `\\*` and keywords."""
    with _start(keywords=True) as server:
        account = server.account
        uid = account.append(_message(1))
        client = account.connect()
        client.select("INBOX")
        assert b"\\*" in client.untagged_responses["PERMANENTFLAGS"][0]
        assert client.uid("STORE", str(uid), "+FLAGS", f"(\\Seen {KEYWORD})")[0] == "OK"
        assert account.flags_by_uid() == {uid: {"\\Seen", KEYWORD}}
        account.close()


def _program(pid: int) -> str:
    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    return re.sub(r".*/", "", argv0)


@pytest.mark.service
def test_stop_ends_every_process_and_removes_the_directory() -> None:
    server = _start()
    account = server.account
    account.append(_message(1))  # a login: an imapd session and gam_server are running now
    account.flags_by_uid()
    processes = server.processes()
    names = {_program(pid) for pid in processes}
    assert {"couriertcpd", "authdaemond", "imapd", "gam_server"} <= names, names
    server.stop()
    assert server.processes() == []
    assert not server.root.exists()
