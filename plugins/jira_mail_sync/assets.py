"""The Asset the store updates: downstream DAGs scheduled on it run when jira_ticket changed."""

from __future__ import annotations

from airflow.sdk import Asset

from include.names import TICKET_ASSET_NAME, TICKET_ASSET_URI

# store_tickets declares it as an outlet; each event's extra says what changed (see change_event).
TICKET_ASSET = Asset(name=TICKET_ASSET_NAME, uri=TICKET_ASSET_URI)
