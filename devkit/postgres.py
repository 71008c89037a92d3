"""Pytest plugin: a real PostgreSQL on loopback per session, a fresh database per test, and store backends."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.harness.dovecot import LOOPBACK, free_port, service_unavailable

POSTGRES_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
# As root, PostgreSQL refuses to run; it runs as this OS user instead.
SERVICE_OS_USER = "postgres"
COMMAND_TIMEOUT_S = 60
START_ATTEMPTS = 3


class PostgresStartError(RuntimeError):
    """PostgreSQL could not be initialised or started; the message carries the tool output and log."""


def newest_bin_dir() -> Path:
    """The bin/ directory of the newest PostgreSQL installed under /usr/lib/postgresql."""
    candidates = [path for path in POSTGRES_ROOT.glob("*/bin") if (path / "initdb").exists()]
    if not candidates:
        raise PostgresStartError(f"no PostgreSQL server found under {POSTGRES_ROOT} (package postgresql)")
    return max(candidates, key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.name)])


@dataclass
class PostgresDatabase:
    """One database on the session's server."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    dbname: str

    @property
    def dsn(self) -> str:
        return make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.dbname
        )

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, **kwargs)

    def airflow_conn(self) -> dict[str, object]:
        """The JSON form of an Airflow `postgres` connection to this database."""
        return {
            "conn_type": "postgres",
            "host": self.host,
            "port": self.port,
            "login": self.user,
            "password": self.password,
            "schema": self.dbname,
        }


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster in a temporary directory."""

    root: Path
    bin_dir: Path
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    run_as: str | None
    _database_numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname
        )

    def log_tail(self, max_lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no server log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-max_lines:])

    def create_database(self) -> PostgresDatabase:
        name = f"jms_{next(self._database_numbers):04d}_{secrets.token_hex(3)}"
        with psycopg.connect(self.admin_dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return PostgresDatabase(self.host, self.port, self.user, self.password, name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _run_tool(self, "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _command(run_as: str | None, executable: Path, *args: str) -> list[str]:
    prefix = ["runuser", "-u", run_as, "--"] if run_as else []
    return [*prefix, str(executable), *args]


def _run_tool(server: PostgresServer, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(server.run_as, server.bin_dir / tool, *args),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=True,
        cwd=server.root,
    )


def _failure(step: str, exc: subprocess.CalledProcessError | subprocess.TimeoutExpired) -> PostgresStartError:
    output = "\n".join(part for part in (exc.stdout, exc.stderr) if isinstance(part, str) and part)
    return PostgresStartError(f"{step} failed: {exc}\n{output[-3000:]}")


def start_postgres() -> PostgresServer:
    """initdb a cluster in a temporary directory and start it on a free loopback port with fsync=off."""
    bin_dir = newest_bin_dir()
    run_as: str | None = None
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SERVICE_OS_USER)
        except KeyError as exc:
            raise PostgresStartError(f"running as root needs the `{SERVICE_OS_USER}` OS user") from exc
        run_as = SERVICE_OS_USER
    root = Path(tempfile.mkdtemp(prefix="jms-postgres-"))
    server = PostgresServer(root, bin_dir, LOOPBACK, 0, SUPERUSER, secrets.token_urlsafe(18), run_as)
    try:
        (root / "socket").mkdir(mode=0o700)
        password_file = root / "superuser.pw"
        password_file.write_text(server.password + "\n")
        os.chmod(password_file, 0o600)
        if owner is not None:
            for path in (root, root / "socket", password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            _run_tool(
                server,
                "initdb",
                "-D",
                str(server.data_dir),
                "-U",
                SUPERUSER,
                f"--pwfile={password_file}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise _failure("initdb", exc) from exc
        finally:
            password_file.unlink()

        last_error: PostgresStartError | None = None
        for _ in range(START_ATTEMPTS):
            # The port is free when picked but could be taken before the server binds it: retry.
            server.port = free_port()
            options = (
                f"-p {server.port} -k {root / 'socket'} -c listen_addresses={LOOPBACK} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                _run_tool(
                    server,
                    "pg_ctl",
                    "-D",
                    str(server.data_dir),
                    "-l",
                    str(server.log_path),
                    "-w",
                    "-t",
                    "30",
                    "-o",
                    options,
                    "start",
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                last_error = _failure("pg_ctl start", exc)
                continue
            with psycopg.connect(server.admin_dsn(), connect_timeout=10) as probe:
                probe.execute("SELECT 1")
            return server
        assert last_error is not None
        raise PostgresStartError(f"{last_error}\n--- server log ---\n{server.log_tail()}")
    except BaseException:
        server.stop()
        raise


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
