"""When `jira_inbox` runs: woken by IMAP IDLE (plus a safety schedule), or polling every minute.

One deployment setting chooses, read when the DAG file is parsed (jira_mail_sync/settings.py):
`[jira_mail_sync] inbox_mode = idle | poll` (environment: AIRFLOW__JIRA_MAIL_SYNC__INBOX_MODE).

- `idle` (the default): the DAG is scheduled by an asset whose watcher runs ImapIdleTrigger in the
  triggerer, or by a cron every 10 minutes, whichever comes first. The cron catches whatever a lost
  connection missed, and is all that runs when no triggerer is running.
- `poll`: a cron every minute, and nothing in the triggerer.

Why `idle` is the default although a DAG file cannot know whether a triggerer runs: parsing must
not query the metadata database, and the triggerer's heartbeat says nothing about the next minute
anyway. Every Airflow 3 deployment we ship (docker-compose.yaml, `airflow standalone`, the demo,
the Celery stack) runs one, and without it idle mode still works, only slower (the safety schedule
every 10 minutes, instead of every minute). Deployments without a triggerer set `poll`.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable

from include.names import DEFAULT_SITE, IMAP_CONN_ID, STORE_CONN_ID
from jira_mail_sync.settings import read_settings
from jira_mail_sync.triggers.imap_idle import ImapIdleTrigger

POLL_CRON = "* * * * *"
SAFETY_CRON = "*/10 * * * *"
WATCHED_MAILBOX = "INBOX"
UNSEEN_MAIL_ASSET = "jira_unseen_mail"


def unseen_mail_asset(
    imap_conn_id: str = IMAP_CONN_ID,
    mailbox: str = WATCHED_MAILBOX,
    *,
    suffix: str = "",
    store_conn_id: str = STORE_CONN_ID,
    site: str = DEFAULT_SITE,
) -> Asset:
    """The asset an IMAP IDLE watcher updates whenever the unseen Jira mail in `mailbox` changes.

    One asset and one watcher per watched mailbox: the sites' inbox DAGs pass their own `suffix`
    (`__<site>__<mailbox slug>`), since Airflow asset and watcher names are unique; the plain site
    passes none and keeps today's names.
    """
    return Asset(
        name=f"{UNSEEN_MAIL_ASSET}{suffix}",
        uri=f"imap://{imap_conn_id}/{mailbox}",
        watchers=[
            AssetWatcher(
                name=f"imap_idle_{imap_conn_id}{suffix}",
                trigger=ImapIdleTrigger(
                    imap_conn_id=imap_conn_id, mailbox=mailbox, store_conn_id=store_conn_id, site=site
                ),
            )
        ],
    )


def inbox_schedule(mode: str | None = None, asset: Asset | None = None) -> AssetOrTimeSchedule | str:
    """The `schedule` of an inbox DAG for `mode` (default: the configured one), woken by `asset`'s
    watcher in idle mode (default: the plain site's, imap_default/INBOX)."""
    mode = mode or read_settings().inbox_mode
    if mode == "poll":
        return POLL_CRON
    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(SAFETY_CRON, timezone="UTC"), assets=asset or unseen_mail_asset()
    )
