"""The IMAP IDLE watcher: its rules (include/imap_idle.py) and its trigger run on an asyncio loop against
real Dovecot (and a real Courier that does not offer IDLE), as the triggerer runs it.

The trigger is driven here by `asyncio.run`, exactly as the triggerer's loop drives `run()`; the
connection comes from AIRFLOW_CONN_IMAP_DEFAULT through Airflow's own `aget_connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from devkit.dovecot import DovecotServer, ImapAccount
from devkit.mail_factory import jira_notification
from devkit.unavailable import service_unavailable
from include.imap_idle import Backoff, ConnectionLost, IdleSession, UnseenWatch
from include.imap_inbox import UnseenSummary
from include.imap_wire import connect
from include.watch_state import REFUSED_LOGIN_RETRY_S, RefusedLogins, read_refused_logins

SITE = "acme.atlassian.net"


def _mail(key: str) -> bytes:
    return jira_notification(key, site=SITE, summary=f"{key}: idle test")


# ------------------------------------------------------------------------------------------ the rules


def _summary(uidvalidity: int, uids) -> UnseenSummary:
    """What ESEARCH answers for these unseen UIDs."""
    uids = sorted(uids)
    return UnseenSummary(
        uidvalidity, len(uids), uids[0] if uids else None, uids[-1] if uids else None, exact=True
    )


def test_unseen_mail_present_at_start_is_announced_once():
    watch = UnseenWatch("INBOX")
    first = watch.update(_summary(7, [3, 1, 2]))
    assert first == {"mailbox": "INBOX", "uidvalidity": 7, "unseen": 3, "new": 3, "highest_uid": 3}
    assert watch.update(_summary(7, [1, 2, 3])) is None
    assert watch.update(_summary(7, [2, 3, 1])) is None


def test_an_empty_inbox_is_never_announced():
    watch = UnseenWatch("INBOX")
    assert watch.update(_summary(7, [])) is None
    assert watch.update(_summary(7, [5])) is not None
    assert watch.update(_summary(7, [])) is None, "all mail settled: nothing to do"


def test_new_mail_and_a_partly_settled_backlog_are_announced_but_an_unchanged_state_never():
    watch = UnseenWatch("INBOX")
    watch.update(_summary(7, range(1, 501)))
    # A run settled the first 200 (max_messages): the rest must get a run of its own.
    after_run = watch.update(_summary(7, range(201, 501)))
    assert after_run is not None and after_run["unseen"] == 300 and after_run["new"] == 0
    assert watch.update(_summary(7, range(201, 501))) is None
    arrived = watch.update(_summary(7, [*range(201, 501), 501]))
    assert arrived is not None and arrived["new"] == 1 and arrived["highest_uid"] == 501


def test_a_recreated_mailbox_counts_every_unseen_uid_as_new():
    watch = UnseenWatch("INBOX")
    watch.update(_summary(7, [1, 2]))
    recreated = watch.update(_summary(8, [1, 2]))
    assert recreated is not None and recreated["uidvalidity"] == 8 and recreated["new"] == 2


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_reset():
    backoff = Backoff(first_s=2.0, max_s=30.0)
    assert [backoff.next_delay() for _ in range(6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    backoff.reset()
    assert backoff.next_delay() == 2.0


# --------------------------------------------------------------------- the blocking session, on Dovecot


@pytest.fixture
def idle_session(imap_account: ImapAccount) -> Iterator[IdleSession]:
    client = connect(imap_account.host, imap_account.port, use_ssl=False, timeout=10)
    client.login(imap_account.user, imap_account.password)
    session = IdleSession(client, "INBOX", timeout=10)
    try:
        yield session
    finally:
        session.close()


def test_dovecot_offers_idle_and_an_append_ends_the_wait(
    idle_session: IdleSession, imap_account: ImapAccount
):
    assert idle_session.open() is True
    assert idle_session.unseen().count == 0
    idle_session.start_idle()
    assert idle_session.wait(0.3) is False, "nothing changed, yet the wait said so"
    imap_account.append(_mail("IDL-1"))
    began = time.monotonic()
    assert idle_session.wait(10) is True
    assert time.monotonic() - began < 5
    idle_session.end_idle()
    assert idle_session.unseen().count == 1


def test_abort_from_another_thread_ends_a_blocked_wait(idle_session: IdleSession):
    idle_session.open()
    idle_session.start_idle()
    timer = threading.Timer(0.3, idle_session.abort)
    timer.start()
    began = time.monotonic()
    with pytest.raises(ConnectionLost):
        idle_session.wait(30)
    assert time.monotonic() - began < 5


# ------------------------------------------------------------------------ the trigger on an event loop


class TriggerRun:
    """A trigger's run() consumed on the running loop; events go to a queue, stamped on arrival."""

    def __init__(self, trigger: Any) -> None:
        self.trigger = trigger
        self.events: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._consume())

    async def _consume(self) -> None:
        async for event in self.trigger.run():
            await self.events.put((time.monotonic(), event.payload))

    async def next_event(self, timeout: float) -> tuple[float, dict[str, Any]]:
        if self.task.done():
            self.task.result()  # re-raise what ended run()
        return await asyncio.wait_for(self.events.get(), timeout)

    async def no_event_for(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            stamp, payload = await asyncio.wait_for(self.events.get(), seconds)
            pytest.fail(f"unexpected event {payload}")

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[TriggerRun]:
    from jira_mail_sync.triggers.imap_idle import ImapIdleTrigger

    run = TriggerRun(ImapIdleTrigger(**kwargs))
    try:
        yield run
    finally:
        await run.stop()


def _use(monkeypatch: pytest.MonkeyPatch, conn: dict[str, object]) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(conn))


def _captured(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    """The trigger's log lines: Airflow's structlog writes them to stderr, or through logging."""
    out, err = capfd.readouterr()
    return out + err + caplog.text


def test_the_trigger_serializes_to_an_importable_classpath_with_json_kwargs():
    from airflow._shared.module_loading import import_string  # what the triggerer imports a classpath with
    from airflow.triggers.base import BaseEventTrigger
    from jira_mail_sync.triggers.imap_idle import ImapIdleTrigger

    classpath, kwargs = ImapIdleTrigger(imap_conn_id="imap_default", mailbox="Jira").serialize()
    assert classpath == "jira_mail_sync.triggers.imap_idle.ImapIdleTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert isinstance(rebuilt, BaseEventTrigger)
    assert BaseEventTrigger.hash(classpath, kwargs) == BaseEventTrigger.hash(*rebuilt.serialize())


def test_mail_present_at_start_fires_once_and_new_mail_fires_within_seconds(imap_conn_env: ImapAccount):
    account = imap_conn_env
    account.append(_mail("IDL-1"))
    account.append(_mail("IDL-2"), flags="\\Seen")
    account.append(_mail("IDL-3"), flags="$JiraRejected")

    async def scenario() -> float:
        async with running() as run:
            _, first = await run.next_event(15)
            assert (first["unseen"], first["new"], first["mailbox"]) == (1, 1, "INBOX")
            await run.no_event_for(2.5)
            dropped = time.monotonic()
            await asyncio.to_thread(account.drop, _mail("IDL-4"))
            stamp, second = await run.next_event(15)
            assert (second["unseen"], second["new"]) == (2, 1)
            return stamp - dropped

    latency = asyncio.run(scenario())
    # Dovecot notices a Maildir delivery at once (inotify); SETTLE_S more is spent collecting a burst.
    assert latency < 5, f"{latency:.1f} s from delivery to event"


def test_settling_part_of_the_mail_fires_again_and_a_run_that_changes_nothing_does_not(
    imap_conn_env: ImapAccount,
):
    account = imap_conn_env
    uids = [account.append(_mail(f"IDL-{n}")) for n in range(1, 4)]

    def mark_seen(uid: int) -> None:
        session = account.connect()
        session.select("INBOX")
        session.uid("STORE", str(uid), "+FLAGS", "(\\Seen)")
        session.logout()

    async def scenario() -> None:
        async with running() as run:
            _, first = await run.next_event(15)
            assert first["unseen"] == 3
            await asyncio.to_thread(mark_seen, uids[0])
            _, second = await run.next_event(15)
            assert (second["unseen"], second["new"]) == (2, 0)
            # A "run" that reads and changes nothing (EXAMINE + SEARCH): no event.
            await asyncio.to_thread(lambda: account.unseen_count())
            await run.no_event_for(2)
            # The mailbox changes (EXISTS wakes the watcher) but its unseen mail does not: no event.
            await asyncio.to_thread(account.append, _mail("IDL-9"), "\\Seen")
            await run.no_event_for(3)

    asyncio.run(scenario())


def test_the_trigger_never_blocks_the_event_loop(imap_conn_env: ImapAccount):
    account = imap_conn_env

    async def scenario() -> float:
        worst = 0.0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal worst
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.02)
                now = time.monotonic()
                worst = max(worst, now - last)
                last = now

        ticking = asyncio.get_running_loop().create_task(ticker())
        # IDLE renewed every 2 s (DONE, SEARCH, IDLE again): the renewal path runs too, and a
        # blocking call on the loop would stall it for seconds, not a minute.
        async with running(renew_idle_s=2.0) as run:
            await asyncio.sleep(4.5)  # log in, EXAMINE, SEARCH, IDLE, two renewals
            await asyncio.to_thread(account.drop, _mail("IDL-1"))
            await run.next_event(15)
        stop.set()
        await ticking
        return worst

    # On a thread of its own, so that a trigger that never yields the loop fails the test instead
    # of hanging it.
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["worst"] = asyncio.run(scenario())
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    runner = threading.Thread(target=target, daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "the event loop never got control back: the trigger blocks it"
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["worst"] < 0.5, f"the loop stalled for {outcome['worst']:.2f} s"


def test_cancelling_the_trigger_ends_its_thread_and_session_promptly(imap_conn_env: ImapAccount):
    async def scenario() -> None:
        async with running():
            await asyncio.sleep(1.5)  # now in an IDLE wait of up to a minute

    asyncio.run(scenario())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name.startswith("imap-idle-")]:
            break
        time.sleep(0.05)
    left = [t.name for t in threading.enumerate() if t.name.startswith("imap-idle-")]
    assert left == [], f"threads still waiting in IDLE after cancel: {left}"


def test_a_dovecot_restart_during_idle_is_survived_and_the_next_mail_still_fires(
    private_dovecot: DovecotServer,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
):
    account = private_dovecot.create_account()
    _use(monkeypatch, account.airflow_conn())

    async def scenario() -> float:
        async with running() as run:
            await asyncio.sleep(1.5)  # idling
            await asyncio.to_thread(private_dovecot.restart)
            restarted = time.monotonic()
            await asyncio.to_thread(account.drop, _mail("IDL-9"))
            stamp, payload = await run.next_event(20)
            assert payload["unseen"] == 1
            return stamp - restarted

    after_restart = asyncio.run(scenario())
    logs = _captured(capfd, caplog)
    assert "Watching INBOX on IMAP connection 'imap_default' stopped:" in logs
    assert "reconnecting in 2 s" in logs
    assert after_restart < 10, f"{after_restart:.1f} s from the restart to the event"


class FakeTime:
    """The trigger's clock and wait: a wait returns at once and moves the clock on by its length."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
        await asyncio.sleep(0.05)  # really yield, so the test's loop runs between attempts


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_refused_login_is_tried_once_an_hour_logged_once_an_hour_and_shown_to_the_sync_page(
    imap_account: ImapAccount,
    store_conn_env,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
):
    from jira_mail_sync.triggers import imap_idle as trigger_module

    fake = FakeTime()
    monkeypatch.setattr(trigger_module, "_clock", fake.clock)
    monkeypatch.setattr(trigger_module, "_sleep", fake.sleep)
    wrong = "not-the-password-" + imap_account.user
    _use(monkeypatch, {**imap_account.airflow_conn(), "password": wrong})
    started = fake.now

    async def scenario() -> None:
        async with running() as run:
            await run.no_event_for(1.5)
            shown = read_refused_logins(store_conn_env.connect(), "sqlite")
            assert [(r["site"], r["imap_conn_id"], r["mailbox"]) for r in shown] == [
                ("default", "imap_default", "INBOX")
            ]
            assert shown[0]["refused_since"].timestamp() == started
            assert "refused the password login" in shown[0]["detail"] and wrong not in shown[0]["detail"]
            _use(monkeypatch, imap_account.airflow_conn())  # the password is fixed
            imap_account.append(b"Subject: [JIRA] (ABC-1) x\r\n\r\nbody\r\n")
            await run.next_event(timeout=10.0)
            assert read_refused_logins(store_conn_env.connect(), "sqlite") == []

    asyncio.run(scenario())
    logs = _captured(capfd, caplog)
    refusals = [line for line in logs.splitlines() if "refused the password login" in line]
    tries = len([w for w in fake.waits if w == REFUSED_LOGIN_RETRY_S])
    assert tries >= 3, fake.waits
    assert set(fake.waits) == {REFUSED_LOGIN_RETRY_S}, "no other wait while logins are refused"
    # Every try is an hour after the last, so each is logged once: one line per hour, no more.
    assert len(refusals) == tries, "\n".join(refusals) or logs[-3000:]
    assert all("trying again once an hour" in line for line in refusals)
    assert "accepts the login" in logs
    assert "ImapLoginError" not in logs
    assert wrong not in logs


def test_refused_logins_are_logged_at_most_once_an_hour_whatever_the_tries():
    now = [0.0]
    refusals = RefusedLogins(clock=lambda: now[0])
    logged = []
    for minute in range(0, 181, 10):
        now[0] = minute * 60.0
        logged.append(refusals.refused("refused") and minute)
    assert [m for m in logged if m is not False] == [0, 60, 120, 180]
    assert refusals.since == 0.0 and refusals.is_refused
    assert refusals.next_try_at() == 180 * 60.0 + REFUSED_LOGIN_RETRY_S
    assert refusals.accepted() is True and refusals.accepted() is False
    assert not refusals.is_refused and refusals.refused("again") is True


@pytest.mark.parametrize("auth_type", ["xoauth2", "oauthbearer"])
def test_the_trigger_logs_in_with_oauth_tokens(
    auth_type: str, oauth_imap_account: ImapAccount, oauth_standin: Any, monkeypatch: pytest.MonkeyPatch
):
    secret = "idle-client-secret-" + auth_type
    client_id = f"idle-{auth_type}-{oauth_imap_account.user}"
    oauth_standin.register_client(client_id, secret, oauth_imap_account.user)
    extra = {"auth_type": auth_type, "token_url": oauth_standin.token_url, "client_id": client_id}
    _use(monkeypatch, oauth_imap_account.airflow_oauth_conn(extra, secret))
    oauth_imap_account.append(_mail("IDL-1"))

    async def scenario() -> dict[str, Any]:
        async with running() as run:
            _, payload = await run.next_event(20)
            return payload

    assert asyncio.run(scenario())["unseen"] == 1


def test_a_server_without_idle_is_polled_instead_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
):
    from devkit.courier import IMAPD_ENV, CourierStartError, start_courier

    # Courier offers IDLE by default; this is its real setting with IDLE left out, as some sites run it.
    capability = " ".join(word for word in IMAPD_ENV["IMAP_CAPABILITY"].split() if word != "IDLE")
    try:
        server = start_courier(imapd_env={"IMAP_CAPABILITY": capability})
    except (CourierStartError, OSError) as exc:
        service_unavailable(f"Courier IMAP could not start: {exc}")
    try:
        account = server.account
        _use(monkeypatch, account.airflow_conn())

        async def scenario() -> None:
            async with running(poll_interval_s=1.0) as run:
                await run.no_event_for(1.5)
                await asyncio.to_thread(account.append, _mail("IDL-1"))
                _, payload = await run.next_event(15)
                assert payload["unseen"] == 1
                await asyncio.to_thread(account.append, _mail("IDL-2"))
                _, payload = await run.next_event(15)
                assert payload["unseen"] == 2

        asyncio.run(scenario())
    finally:
        server.stop()
    logs = _captured(capfd, caplog)
    said = [line for line in logs.splitlines() if "does not offer IDLE" in line]
    assert len(said) == 1, logs[-3000:]
    assert "checking INBOX on IMAP connection 'imap_default' every 1 s instead" in said[0]
