"""Pytest fixtures: the session's PostgreSQL (devkit.postgres), a database per test, and store backends."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devkit.postgres import PostgresDatabase, PostgresServer, PostgresStartError, start_postgres
from devkit.unavailable import service_unavailable


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the whole session, on 127.0.0.1 with password (SCRAM) authentication."""
    try:
        server = start_postgres()
    except (PostgresStartError, OSError, psycopg.Error) as exc:
        service_unavailable(f"PostgreSQL could not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """A fresh, empty database, dropped after the test."""
    database = postgres_server.create_database()
    try:
        yield database
    finally:
        postgres_server.drop_database(database.dbname)


@dataclass
class StoreBackend:
    """The SQL store the DAGs write to, on one of the supported backends."""

    dialect: str
    _connect: Callable[[], Any] = field(repr=False)
    _airflow_conn: dict[str, object] = field(repr=False)
    _opened: list[Any] = field(default_factory=list, repr=False)

    def connect(self) -> Any:
        """A fresh DB-API connection (closed at teardown if the test leaves it open)."""
        connection = self._connect()
        self._opened.append(connection)
        return connection

    def airflow_conn(self) -> dict[str, object]:
        return dict(self._airflow_conn)

    def close(self) -> None:
        for connection in self._opened:
            with contextlib.suppress(Exception):
                connection.close()
        self._opened.clear()


@pytest.fixture(params=["sqlite", "postgres"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    """The same test against a SQLite file and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        path = (tmp_path / "jira_store.db").resolve()
        backend = StoreBackend(
            "sqlite", lambda: sqlite3.connect(path), {"conn_type": "sqlite", "host": str(path)}
        )
    else:
        database: PostgresDatabase = request.getfixturevalue("postgres_db")
        backend = StoreBackend("postgres", database.connect, database.airflow_conn())
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def store_conn_env(store_backend: StoreBackend, monkeypatch: pytest.MonkeyPatch) -> StoreBackend:
    """`store_backend`, reachable from Airflow as the `jira_store` connection."""
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_STORE", json.dumps(store_backend.airflow_conn()))
    return store_backend


@pytest.fixture
def store(store_backend: StoreBackend) -> tuple[Any, str]:
    """(connection, dialect) of `store_backend` with an empty, current `jira_ticket` table."""
    from include.ticket_store import ensure_table

    conn = store_backend.connect()
    ensure_table(conn, store_backend.dialect)
    return conn, store_backend.dialect
