"""Rejected mail out of the inbox's way: moved to the rejected mailbox, with the ledger told where it went.

The ledger row is written first (record_rejected) and the move comes after it, so a move that
fails leaves the mail held by the ledger as before, never lost from view: the inbox keeps working,
the mail only stays where it was. After a move the row keeps its key (site, IMAP connection, inbox,
UIDVALIDITY, UID) and gains the new place, which the Jira sync page shows and a human can follow.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from include.imap_inbox import ImapError, Inbox, MovedMail, UidValidityChanged
from include.mail_ledger import record_moved
from include.names import DEFAULT_SITE, IMAP_CONN_ID

log = logging.getLogger(__name__)


def set_rejected_aside(
    inbox: Inbox,
    conn: Any,
    dialect: str,
    *,
    uids: Sequence[int],
    uidvalidity: int,
    destination: str | None,
    site: str = DEFAULT_SITE,
    imap_conn_id: str = IMAP_CONN_ID,
) -> MovedMail | None:
    """Move recorded rejected mail to `destination` (None: leave it in place) and note where it went,
    in the ledger rows of the mailbox `inbox` is on `imap_conn_id` of `site`.

    Servers without MOVE or UIDPLUS get the mail marked seen instead (see Inbox.set_aside). A server
    that refuses is logged and changes nothing else: the ledger already holds the mail back.
    """
    if destination is None or not uids:
        return None
    try:
        moved = inbox.set_aside(uids, destination, expected_uidvalidity=uidvalidity)
    except (ImapError, UidValidityChanged, OSError) as exc:
        log.warning("Could not move %d rejected message(s) to %s: %s", len(uids), destination, exc)
        return None
    if moved.mailbox is not None:
        record_moved(
            conn,
            dialect,
            site=site,
            imap_conn_id=imap_conn_id,
            mailbox=inbox.mailbox,
            uidvalidity=uidvalidity,
            uids=moved.uids,
            moved_to=moved.mailbox,
            moved_uidvalidity=moved.uidvalidity,
            new_uids=moved.new_uids or {},
        )
    return moved
