"""PostgreSQL launcher: a throw-away cluster on a free loopback port (fsync off), and fresh databases."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from devkit.processes import LOOPBACK, free_port, log_tail

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
        return log_tail(self.log_path, max_lines)

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
