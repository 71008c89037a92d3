"""The Assets the store updates: downstream DAGs scheduled on them run when jira_ticket (or
jira_ticket_change) changed."""

from __future__ import annotations

from airflow.sdk import Asset

from include.names import STORE_CONN_ID, TICKET_ASSET_NAME, TICKET_ASSET_URI

# store_tickets declares it as an outlet; each event's extra says what changed (see change_event).
TICKET_ASSET = Asset(name=TICKET_ASSET_NAME, uri=TICKET_ASSET_URI)


def ticket_asset(store_conn_id: str = STORE_CONN_ID) -> Asset:
    """The asset of the jira_ticket table on `store_conn_id`: TICKET_ASSET for the plain store.

    Sites that share a store share its asset (downstream DAGs read the event's `site`); another store
    is another asset, with its own name (Airflow asset names are unique).
    """
    return asset_on_store(TICKET_ASSET, store_conn_id)


def asset_on_store(plain: Asset, store_conn_id: str) -> Asset:
    """`plain` (an asset of a table on the plain store) for the same table on `store_conn_id`."""
    if store_conn_id == STORE_CONN_ID:
        return plain
    return Asset(
        name=f"{plain.name}__{store_conn_id}",
        uri=plain.uri.replace(f"//{STORE_CONN_ID}/", f"//{store_conn_id}/"),
    )
