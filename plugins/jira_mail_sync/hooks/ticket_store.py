"""Opens the ticket store named by the `jira_store` connection (SQLite file or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.sdk import BaseHook

SUPPORTED = {"sqlite": "sqlite", "postgres": "postgres", "postgresql": "postgres"}


class TicketStoreHook(BaseHook):
    """Gives a DB-API connection and its dialect for include.ticket_store.

    The connection itself comes from the SQLite or Postgres provider's hook, so every field and
    extra those providers document (a file path as the SQLite host; sslmode and friends for
    Postgres) works as users expect.
    """

    conn_name_attr = "store_conn_id"
    default_conn_name = "jira_store"
    conn_type = "generic"
    hook_name = "Jira ticket store"

    def __init__(self, store_conn_id: str = default_conn_name):
        super().__init__()
        self.store_conn_id = store_conn_id

    def dialect(self) -> str:
        conn_type = (self.get_connection(self.store_conn_id).conn_type or "").lower()
        if conn_type not in SUPPORTED:
            raise ValueError(
                f"Connection {self.store_conn_id!r} has type {conn_type!r}; the ticket store supports "
                f"{sorted(SUPPORTED)}"
            )
        return SUPPORTED[conn_type]

    @contextmanager
    def connect(self) -> Iterator[tuple[Any, str]]:
        """Yield (DB-API connection, dialect); the connection is closed afterwards."""
        dialect = self.dialect()
        if dialect == "sqlite":
            from airflow.providers.sqlite.hooks.sqlite import SqliteHook

            db_hook: Any = SqliteHook(sqlite_conn_id=self.store_conn_id)
        else:
            from airflow.providers.postgres.hooks.postgres import PostgresHook

            db_hook = PostgresHook(postgres_conn_id=self.store_conn_id)
        conn = db_hook.get_conn()
        try:
            yield conn, dialect
        finally:
            conn.close()
