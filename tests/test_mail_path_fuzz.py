"""The whole mail path under seeded hostile mail: real Dovecot -> take_mail -> ledger -> Airflow's XCom
wire form -> settle_mail, on SQLite and PostgreSQL. No mail's bytes may fail a step, and every sensed
UID must end in exactly one recorded ledger state.

`make fuzz` runs it longer: JMS_FUZZ_CASES (cases per store backend) and JMS_FUZZ_SEED.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from airflow.sdk.bases.xcom import BaseXCom

# The frame and message the task runner sends its XCom in (msgpack to the supervisor).
from airflow.sdk.execution_time.comms import SetXCom, _RequestFrame
from jira_mail_sync.xcom_shapes import TakenMailXcom, settled_mail_xcom

from devkit.imap_account import adopt_imaplib
from devkit.mail_factory import jira_notification
from include.imap_inbox import Inbox
from include.inbox_run import Ledger, MailBudget, settle_mail, take_mail
from include.jira_mail import parse_message
from include.mail_ledger import STATES, TABLE, list_entries
from include.store_db import read

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "jira-emails"
SITE = "acme.atlassian.net"
CASES = int(os.environ.get("JMS_FUZZ_CASES", "5000"))
SEED = int(os.environ.get("JMS_FUZZ_SEED", "20261207"))
ROUND = 1000  # mails dropped, sensed and taken together: one take_mail and one settle_mail per round


def _fixture_mails() -> list[bytes]:
    return [path.read_bytes() for path in sorted(FIXTURES.glob("*.eml"))]


def _fixture_senders(mails: list[bytes]) -> list[str]:
    """The fixtures' own From addresses, trusted so that mutated real mail gets past the sender check."""
    senders = {f"jira@{SITE}"}
    for raw in mails:
        reason = parse_message(raw, trusted_senders=[]).reason or ""
        if reason.startswith("untrusted_sender: "):
            senders.add(reason.removeprefix("untrusted_sender: "))
    return sorted(senders)


def _set_header(raw: bytes, name: bytes, value: bytes) -> bytes:
    pattern = re.compile(rb"(?im)^" + re.escape(name) + rb":[^\n]*\n(?:[ \t][^\n]*\n)*")
    if pattern.search(raw):
        return pattern.sub(lambda _: name + b": " + value + b"\r\n", raw, count=1)
    return name + b": " + value + b"\r\n" + raw


def _deep_nesting(rng: random.Random) -> bytes:
    depth = rng.choice([9, 40, 200])
    head = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (n, n + 1) for n in range(depth)
    )
    return (
        b"From: jira@" + SITE.encode() + b"\r\nSubject: [JIRA] (ABC-1) nested\r\n"
        b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
        + head
        + b"--b%d\r\n\r\nhttps://" % depth
        + SITE.encode()
        + b"/browse/ABC-2\r\n"
    )


_SURROGATE_WORDS = [
    b"=?utf-7?Q?+2D0-?=",
    b"=?UTF-7?B?KzJEMC0=?=",
    b"=?utf7?Q?a+2D3cAA-b?=",
    b"=?unicode-1-1-utf-7?Q?+2D0-?=",
]


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(16)
    if kind == 0:
        return _set_header(raw, b"Subject", rng.choice(_SURROGATE_WORDS) + b" (ABC-3) hostile")
    if kind == 1:
        word = rng.choice(
            [*_SURROGATE_WORDS, b"=?x-unknown?Q?Jira?=", b"=?utf-8?B?!!!?=", b"=?koi8-r?Q?\xff\xfe?="]
        )
        return _set_header(raw, b"From", word + b" <jira@" + SITE.encode() + b">")
    if kind == 2:
        charset = rng.choice([b"utf-7", b"x-no-such", b"punycode", b"utf-16", b"idna", b"utf-32-be"])
        return _set_header(raw, b"Content-Type", b"text/plain; charset=" + charset) + b"+2D0- \x00\xff"
    if kind == 3:
        cut = rng.randrange(len(raw) + 1)
        return raw[:cut] + b"\x00" * rng.randint(1, 5) + raw[cut:]
    if kind == 4:
        return raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    if kind == 5 and rng.random() < 0.1:  # 1 MB lines are costly to drop: a few of them
        return _set_header(raw, b"X-Pad", b"a" * 1_000_000)
    if kind == 6:
        return _deep_nesting(rng)
    if kind == 7:
        return _set_header(raw, b"Content-Transfer-Encoding", b"base64") + b"!!!=\x80not base64==="
    if kind == 8:
        extra = b"".join(
            b"From: jira@%s\r\nSubject: [JIRA] (ABC-%d) dup\r\n" % (SITE.encode(), n)
            for n in range(rng.randint(2, 50))
        )
        return extra + raw
    if kind == 9:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 40)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 10:
        return raw[: rng.randrange(len(raw) + 1)]
    if kind == 11:
        return _set_header(
            raw,
            b"Message-ID",
            rng.choice([b"<\x00\xed\xa0\x80@x>", b"<" + b"m" * 5000 + b">", *_SURROGATE_WORDS]),
        )
    if kind == 12:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))
    if kind == 13:
        return _set_header(
            raw, b"Subject", b"[JIRA] (ABC-4) " + "\ud800x".encode("utf-8", "surrogatepass") + b"\xff"
        )
    if kind == 14:
        return _set_header(raw, b"From", b'"unterminated <jira@' + SITE.encode() + b">")
    return raw


def hostile_mails(rng: random.Random, count: int, bases: list[bytes]) -> list[bytes]:
    mails = []
    for _ in range(count):
        raw = rng.choice(bases)
        for _ in range(rng.randint(1, 3)):
            raw = _mutate(raw, rng)
        mails.append(raw or b"\r\n")  # Maildir cannot hold an empty file as a message
    return mails


def through_airflow_xcom(value: Any) -> Any:
    """`value` as the task runner carries an XCom: Airflow's serde, the SetXCom message, msgpack, back."""
    serialized = BaseXCom.serialize_value(value)
    message = SetXCom(key="settlement", value=serialized, dag_id="jira_inbox", run_id="fuzz", task_id="t")
    wire = _RequestFrame(id=1, body=message.model_dump()).as_bytes()
    frame = msgspec.msgpack.Decoder(_RequestFrame).decode(bytes(wire[4:]))
    return BaseXCom.deserialize_value(SimpleNamespace(value=frame.body["value"]))


def ledger_states(conn: Any, dialect: str) -> dict[int, list[str]]:
    states: dict[int, list[str]] = {}
    for uid, state in read(conn, dialect, f"SELECT uid, state FROM {TABLE}", ()):
        states.setdefault(int(uid), []).append(state)
    return states


# A case costs a few milliseconds; the bound leaves room for a loaded machine and for `make fuzz`.
@pytest.mark.timeout(max(1800, CASES // 5))
def test_every_sensed_hostile_mail_ends_in_exactly_one_recorded_state(imap_account, store):
    conn, dialect = store
    ledger = Ledger(conn, dialect)
    rng = random.Random(SEED)
    fixtures = _fixture_mails()
    bases = [*fixtures, *(jira_notification(f"ABC-{n}", site=SITE) for n in range(1, 6))]
    trusted = _fixture_senders(fixtures)
    sensed: set[int] = set()
    counts = {"rejected": 0, "accepted": 0}
    client = imap_account.connect()
    try:
        inbox = Inbox(adopt_imaplib(client))
        for start in range(0, CASES, ROUND):
            for raw in hostile_mails(rng, min(ROUND, CASES - start), bases):
                imap_account.drop(raw)
            uidvalidity = inbox.open(readonly=True)
            uids = [
                uid for uid in inbox.unseen_uids(limit=10 * CASES, exclude_keyword=None) if uid not in sensed
            ]
            sensed.update(uids)
            taken = take_mail(
                inbox,
                ledger,
                uids,
                mailbox="INBOX",
                uidvalidity=uidvalidity,
                trusted_senders=trusted,
                jira_url=None,
                budget=MailBudget(run=3600),
                rejected_mailbox="Jira/Rejected",
            )
            assert taken.left_for_next_run == []
            carried = TakenMailXcom.from_xcom(
                through_airflow_xcom(TakenMailXcom(imap_conn_id="imap_default", taken=taken).to_xcom())
            ).taken
            # A tenth of the keys fail at Jira, so failed mail is recorded too.
            failing = {key for key in carried.keys if rng.random() < 0.1}
            stored = {
                "stored": [key for key in carried.keys if key not in failing],
                "not_found": [],
                "failed": dict.fromkeys(failing, "HTTP 500"),
            }
            settled = settle_mail(inbox, ledger, carried, stored)
            through_airflow_xcom(settled_mail_xcom(settled))
            assert settled.unfinished == []
            counts["rejected"] += len(taken.rejected)
            counts["accepted"] += len(taken.messages)
    finally:
        client.logout()

    states = ledger_states(conn, dialect)
    assert len(sensed) == CASES
    assert set(states) == sensed
    assert all(len(found) == 1 and found[0] in STATES for found in states.values())
    # Held mail does not pile up in the inbox: every rejected message was moved out of its way.
    rejected = list_entries(conn, dialect, states=("rejected",), limit=10_000)
    assert len(rejected) == counts["rejected"]
    assert all(entry["moved_to"] == "Jira.Rejected" for entry in rejected)
    # The mix exercised both outcomes, not only rejections.
    assert counts["rejected"] > CASES // 10 and counts["accepted"] > CASES // 10, counts
    print(f"fuzz seed {SEED}: {CASES} cases on {dialect}: {counts}")
