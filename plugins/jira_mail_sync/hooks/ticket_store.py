"""Opens the ticket store named by the `jira_store` connection (SQLite file or PostgreSQL)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.sdk import BaseHook

from include.names import STORE_CONN_ID

SUPPORTED = {"sqlite": "sqlite", "postgres": "postgres"}


class TicketStoreHook(BaseHook):
    """Gives a DB-API connection and its dialect for include.ticket_store.

    The connection's own type (`sqlite` or `postgres`) picks the provider hook, through
    Connection.get_hook() as Airflow does, so every field and extra those providers document (a
    file path as the SQLite host; sslmode, connect_timeout and friends for Postgres) works as users
    expect. It declares no conn_type of its own: it is not a connection type, it reads one of two.
    """

    conn_name_attr = "store_conn_id"
    default_conn_name = STORE_CONN_ID
    hook_name = "Jira ticket store"

    def __init__(self, store_conn_id: str = default_conn_name, *, connect_timeout: int | None = None):
        """`connect_timeout` (seconds) bounds a PostgreSQL connect whose connection sets none itself."""
        super().__init__()
        self.store_conn_id = store_conn_id
        self.connect_timeout = connect_timeout

    def dialect(self) -> str:
        return self._dialect(self.get_connection(self.store_conn_id))

    def _dialect(self, conn: Any) -> str:
        conn_type = (conn.conn_type or "").lower()
        if conn_type not in SUPPORTED:
            raise ValueError(
                f"Connection {self.store_conn_id!r} has type {conn_type!r}; the ticket store supports "
                f"{sorted(SUPPORTED)}"
            )
        return SUPPORTED[conn_type]

    @contextmanager
    def connect(self) -> Iterator[tuple[Any, str]]:
        """Yield (DB-API connection, dialect); the connection is closed afterwards."""
        airflow_conn = self.get_connection(self.store_conn_id)
        dialect = self._dialect(airflow_conn)
        conn = self._provider_hook(airflow_conn, dialect).get_conn()
        try:
            yield conn, dialect
        finally:
            conn.close()

    def _provider_hook(self, airflow_conn: Any, dialect: str) -> Any:
        extra = airflow_conn.extra_dejson
        if dialect != "postgres" or self.connect_timeout is None or "connect_timeout" in extra:
            return airflow_conn.get_hook()
        # Without connect_timeout libpq waits as long as the kernel does (about 2 minutes for an
        # unreachable host, for ever for one that accepts and stays silent). A copy gets the bound,
        # so the connection as stored is not changed.
        bounded = copy.deepcopy(airflow_conn)
        bounded.extra = json.dumps({**extra, "connect_timeout": int(self.connect_timeout)})
        return airflow_conn.get_hook(hook_params={"connection": bounded})
