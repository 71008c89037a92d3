"""A DB-API connection wrapper that counts the statements sent, for the ledger's O(1)-per-run checks."""

from __future__ import annotations

from typing import Any


class CountingConnection:
    """Wraps a DB-API connection; `statements` lists each execute/executemany call's SQL (not its rows).

    Everything else (commit, rollback, in_transaction, autocommit, info) is the wrapped connection's,
    so include.store_db.transaction and read work on it unchanged. BEGIN, which store_db.transaction
    sends itself outside a transaction, is left out of `count()`.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.statements: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def count(self) -> int:
        return sum(1 for sql in self.statements if sql != "BEGIN")

    def cursor(self) -> Any:
        return _CountingCursor(self._conn.cursor(), self.statements)


class _CountingCursor:
    def __init__(self, cursor: Any, statements: list[str]) -> None:
        self._cursor = cursor
        self._statements = statements

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._statements.append(sql)
        return self._cursor.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        self._statements.append(sql)
        return self._cursor.executemany(sql, rows)
