"""Starts PostgreSQL, Redis and every Airflow component of docker-compose.yaml as local processes on loopback.

The topology is the compose file's CeleryExecutor stack: one PostgreSQL cluster (the metadata database
and, as a second database, the `jira_store` ticket store), Redis as the Celery broker, and
`airflow api-server`, `scheduler`, `dag-processor`, `triggerer` and N `celery worker` processes that
share their configuration (environment variables, no airflow.cfg), the database and the broker, and,
being on one machine, the task log folder. Every process gets its own process group, is recorded in
the ledger named by $JMS_PROCESS_LEDGER (so a shell trap can clean up after a killed test run), and
is stopped with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import requests

from scripts.distributed.hostname import HOSTNAME_ENV
from tests.harness.dovecot import LOOPBACK, free_port
from tests.harness.postgres import PostgresDatabase, PostgresServer, PostgresStartError, start_postgres

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
LEDGER_ENV = "JMS_PROCESS_LEDGER"
HOSTNAME_CALLABLE = "scripts.distributed.hostname.component_hostname"
JIRA_POOL = "jira_api"
ADMIN_USER = "admin"
REDIS_BINARY = "redis-server"
DAG_IDS = ("jira_inbox", "jira_sweep")


class StackError(RuntimeError):
    """A component did not come up or died; the message names it and carries the tail of its log."""


@dataclass(frozen=True)
class StackSettings:
    workers: int = 2
    worker_concurrency: int = 2
    jira_pool_slots: int = 2
    # The compose stack's defaults would start 32 task slots and 4 API workers: far too many for 2 cores.
    parallelism: int = 8
    start_timeout_s: float = 240.0
    migrate_timeout_s: float = 300.0
    stop_timeout_s: float = 20.0


def _ledger_append(line: str) -> None:
    ledger = os.environ.get(LEDGER_ENV)
    if ledger:
        with open(ledger, "a", encoding="utf-8") as out:
            out.write(line + "\n")


def record_process_group(pgid: int, name: str) -> None:
    """Note a process group in the ledger, so `scripts/test_distributed.sh` can end it if pytest cannot."""
    _ledger_append(f"group\t{pgid}\t{name}")


def record_scratch_dir(path: Path) -> None:
    """Note a temporary directory in the ledger, removed by `scripts/test_distributed.sh` if pytest cannot."""
    _ledger_append(f"dir\t{path}")


def _process_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (start time) counted after the parenthesised command name, which may contain spaces.
    return stat.rpartition(")")[2].split()[19]


def _descendants(root_pid: int) -> list[tuple[int, str]]:
    """Every live descendant of `root_pid` as (pid, start time), so none that left the group is missed."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: list[tuple[int, str]] = []
    pending = list(children.get(root_pid, []))
    while pending:
        pid = pending.pop()
        started = _process_start_time(pid)
        if started is not None:
            found.append((pid, started))
        pending.extend(children.get(pid, []))
    return found


def stop_processes(processes: Mapping[str, subprocess.Popen[bytes]], timeout_s: float) -> list[str]:
    """SIGTERM every process group (and stray descendants), SIGKILL what is left after `timeout_s`.

    Returns the names of the components that had to be killed.
    """
    strays = {name: _descendants(proc.pid) for name, proc in processes.items() if proc.poll() is None}
    for proc in processes.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    killed: list[str] = []
    for name, proc in processes.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed.append(name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        # A child that started its own session escaped the group signal; the start time guards
        # against killing an unrelated process that reused its pid.
        for pid, started in strays.get(name, []):
            if _process_start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
    return killed


@dataclass
class Component:
    """One long-running process of the stack, with its own log file and process group."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> None:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        record_process_group(self.process.pid, self.name)

    @property
    def exit_status(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, max_lines: int = 40) -> str:
        return tail(self.log_path, max_lines)


def tail(path: Path, max_lines: int = 40) -> str:
    if not path.exists():
        return f"(no log at {path})"
    lines = path.read_text(errors="replace").splitlines()[-max_lines:]
    return "\n".join(lines) if lines else f"(empty log {path})"


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class AirflowRest:
    """A client of the api-server's public REST API (/api/v2) with the simple auth manager's token."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._username = username
        self._password = password
        self._token: str | None = None
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"AirflowRest({self.base_url!r}, user={self._username!r})"

    def _fetch_token(self) -> str:
        response = self._session.post(
            f"{self.base_url}/auth/token",
            json={"username": self._username, "password": self._password},
            timeout=30,
        )
        if response.status_code not in (200, 201):
            raise StackError(f"POST /auth/token answered {response.status_code}: {response.text[:500]}")
        return response.json()["access_token"]

    def request(self, method: str, path: str, *, expected: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        """Call `path` (under the base URL) and return the decoded JSON; other statuses raise StackError."""
        for attempt in (1, 2):
            if self._token is None:
                self._token = self._fetch_token()
            response = self._session.request(
                method,
                f"{self.base_url}{path}",
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=30,
                **kwargs,
            )
            if response.status_code == 401 and attempt == 1:
                self._token = None
                continue
            break
        if response.status_code not in expected:
            raise StackError(f"{method} {path} answered {response.status_code}: {response.text[:1000]}")
        return response.json() if response.content else None

    def close(self) -> None:
        self._session.close()

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": paused})

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        """Create a manual run (no logical date, like the UI's trigger form) and return its run_id."""
        run = self.request(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf)}
        )
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, list[str | None]]:
        """States of the run's task instances by task id (one entry per map index)."""
        found = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
        )
        states: dict[str, list[str | None]] = {}
        for ti in sorted(found["task_instances"], key=lambda t: (t["task_id"], t["map_index"])):
            states.setdefault(ti["task_id"], []).append(ti["state"])
        return states

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float) -> str:
        """Poll until the run is success or failed; a timeout returns its last state."""
        deadline = time.monotonic() + timeout_s
        state = self.run_state(dag_id, run_id)
        while state not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(1.0)
            state = self.run_state(dag_id, run_id)
        return state


class DistributedStack:
    """The compose topology as local processes: use as a context manager, or start() and stop().

    `connections` maps connection ids to their JSON form (as in AIRFLOW_CONN_*); `jira_store` is
    added, pointing at a second database on the stack's PostgreSQL.
    """

    def __init__(
        self,
        root: Path,
        connections: Mapping[str, Mapping[str, Any]],
        settings: StackSettings = StackSettings(),
    ) -> None:
        self.root = root
        self.settings = settings
        self._connections = {conn_id: dict(conn) for conn_id, conn in connections.items()}
        self._admin_password = secrets.token_urlsafe(18)
        self.postgres: PostgresServer | None = None
        self.metadata: PostgresDatabase | None = None
        self.store: PostgresDatabase | None = None
        self.components: dict[str, Component] = {}
        self.api_port = 0
        self.redis_port = 0
        self.timings: dict[str, float] = {}
        self.rest: AirflowRest | None = None
        self._health: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------- naming

    @property
    def home(self) -> Path:
        return self.root / "airflow-home"

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    def worker_hostname(self, number: int) -> str:
        return f"jms-worker-{number}"

    @property
    def worker_hostnames(self) -> list[str]:
        return [self.worker_hostname(n) for n in range(1, self.settings.workers + 1)]

    # --------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> DistributedStack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> DistributedStack:
        """Bring every component up and wait until each is healthy; on any failure stop what started."""
        started = time.monotonic()
        try:
            self._start_postgres()
            self._start_redis()
            env = self._airflow_env()
            self._migrate(env)
            self._start_airflow(env)
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        self.timings["start_total_s"] = time.monotonic() - started
        log.info("Distributed stack ready in %.1f s: %s", self.timings["start_total_s"], self.api_url)
        return self

    def stop(self) -> list[str]:
        """Stop every process this stack started; returns the components that needed SIGKILL."""
        if not self.components and self.postgres is None:
            return []
        started = time.monotonic()
        if self.rest is not None:
            # An open keep-alive connection would hold up the api-server's graceful shutdown.
            self.rest.close()
        killed: list[str] = []
        for phase in self._stop_phases():
            phase_began = time.monotonic()
            started_here = {name: self.components[name].process for name in phase}
            running = {name: proc for name, proc in started_here.items() if proc is not None}
            killed += stop_processes(running, self.settings.stop_timeout_s)
            self.timings[f"stop_{'+'.join(phase)}_s"] = time.monotonic() - phase_began
        self.components.clear()
        if self.postgres is not None:
            phase_began = time.monotonic()
            self.postgres.stop()
            self.postgres = None
            self.timings["stop_postgres_s"] = time.monotonic() - phase_began
        self.timings["stop_s"] = time.monotonic() - started
        if killed:
            log.warning("Needed SIGKILL after %.0f s: %s", self.settings.stop_timeout_s, ", ".join(killed))
        return killed

    def _stop_phases(self) -> list[list[str]]:
        """Components in stopping order: first nothing new is scheduled, then workers finish what they
        run (a task still reports to the api-server, and Celery acks over Redis), then the rest."""
        order = (
            ("scheduler", "dag-processor", "pools-set"),
            # The triggerer takes ~10 s to wind down its trigger runner: it overlaps the workers' wait.
            ("triggerer", *(name for name in self.components if name.startswith("worker-"))),
            ("api-server",),
            ("redis",),
        )
        phases = [[name for name in phase if name in self.components] for phase in order]
        placed = {name for phase in phases for name in phase}
        phases.append([name for name in self.components if name not in placed])
        return [phase for phase in phases if phase]

    # ------------------------------------------------------------------------------------ start steps

    def _timed(self, label: str) -> Callable[[], None]:
        began = time.monotonic()

        def done() -> None:
            self.timings[label] = time.monotonic() - began

        return done

    def _start_postgres(self) -> None:
        done = self._timed("postgres_s")
        try:
            self.postgres = start_postgres()
        except (PostgresStartError, OSError, psycopg.Error) as exc:
            raise StackError(f"PostgreSQL could not start: {exc}") from exc
        record_scratch_dir(self.postgres.root)
        pid_file = self.postgres.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pg_ctl starts the postmaster in its own session, so its pid is its process group.
            record_process_group(int(pid_file.read_text().splitlines()[0]), "postgres")
        self.metadata = self.postgres.create_database()
        self.store = self.postgres.create_database()
        self._connections["jira_store"] = self.store.airflow_conn()
        done()

    def _start_redis(self) -> None:
        done = self._timed("redis_s")
        binary = shutil.which(REDIS_BINARY)
        if binary is None:
            raise StackError(f"{REDIS_BINARY} is not installed: run scripts/install_distributed_deps.sh")
        redis_dir = self.root / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        self.redis_port = free_port()
        redis = Component(
            "redis",
            [
                binary,
                "--port",
                str(self.redis_port),
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(redis_dir),
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ],
            dict(os.environ),
            self.root / "redis.log",
        )
        self.components[redis.name] = redis
        redis.start(self.root)
        deadline = time.monotonic() + 10
        while not _redis_ping(self.redis_port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise StackError(f"redis did not answer PING within 10 s\n{redis.log_tail()}")
            time.sleep(0.05)
        done()

    def _airflow_env(self) -> dict[str, str]:
        assert self.metadata is not None
        self.home.mkdir(parents=True, exist_ok=True)
        passwords_file = self.home / "simple_auth_manager_passwords.json"
        passwords_file.touch(mode=0o600)
        passwords_file.write_text(json.dumps({ADMIN_USER: self._admin_password}))
        db = self.metadata
        credentials = f"{quote(db.user, safe='')}:{quote(db.password, safe='')}"
        database_url = f"postgresql+psycopg://{credentials}@{db.host}:{db.port}/{db.dbname}"
        self.api_port = free_port()
        # Nothing of the caller's Airflow configuration may leak in: the stack is configured here only.
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
                # Celery's database result backend is SQLAlchemy too: the same psycopg 3 driver.
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{database_url}",
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{LOOPBACK}:{self.redis_port}/0",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.settings.worker_concurrency),
                "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__PARALLELISM": str(self.settings.parallelism),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__API__HOST": LOOPBACK,
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            }
        )
        for conn_id, conn in self._connections.items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        return env

    def _airflow(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def _migrate(self, env: dict[str, str]) -> None:
        done = self._timed("db_migrate_s")
        log_path = self.root / "airflow-db-migrate.log"
        with open(log_path, "wb") as log_file:
            try:
                result = subprocess.run(
                    self._airflow("db", "migrate"),
                    cwd=self.root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    timeout=self.settings.migrate_timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise StackError(f"`airflow db migrate` timed out\n{tail(log_path)}") from exc
        if result.returncode != 0:
            raise StackError(f"`airflow db migrate` exited with {result.returncode}\n{tail(log_path)}")
        done()

    def _start_airflow(self, env: dict[str, str]) -> None:
        def add(name: str, args: list[str], hostname: str | None = None) -> None:
            component_env = dict(env)
            component_env[HOSTNAME_ENV] = hostname or f"jms-{name}"
            component = Component(name, self._airflow(*args), component_env, self.root / f"{name}.log")
            self.components[name] = component
            component.start(self.root)

        self.timings["airflow_launch_at"] = time.monotonic()
        # Log servers would listen on 0.0.0.0 and collide between workers; every component shares one
        # log folder on this machine, so the api-server reads task logs from disk instead.
        add("api-server", ["api-server", "--host", LOOPBACK, "--port", str(self.api_port)])
        add("scheduler", ["scheduler", "--skip-serve-logs"])
        add("dag-processor", ["dag-processor"])
        add("triggerer", ["triggerer", "--skip-serve-logs"])
        for number, hostname in enumerate(self.worker_hostnames, start=1):
            add(
                f"worker-{number}",
                [
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"{hostname}@%h",
                    "--concurrency",
                    str(self.settings.worker_concurrency),
                    "--skip-serve-logs",
                ],
                hostname,
            )
        add(
            "pools-set",
            ["pools", "set", JIRA_POOL, str(self.settings.jira_pool_slots), "Concurrent Jira requests"],
        )

    # ------------------------------------------------------------------------------------- readiness

    def _check_alive(self, allow_exit: tuple[str, ...] = ()) -> None:
        for component in self.components.values():
            status = component.exit_status
            if status is None or (component.name in allow_exit and status == 0):
                continue
            raise StackError(
                f"{component.name} exited with status {status}\n"
                f"--- last lines of {component.log_path} ---\n{component.log_tail()}"
            )

    def _wait_until_ready(self) -> None:
        assert self.rest is None
        self.rest = AirflowRest(self.api_url, ADMIN_USER, self._admin_password)
        launched = self.timings["airflow_launch_at"]
        deadline = launched + self.settings.start_timeout_s
        pending: dict[str, Callable[[], bool]] = {
            "pools-set": lambda: self.components["pools-set"].exit_status == 0,
            "api-server": self._api_healthy,
            "scheduler": lambda: self._health_of("scheduler"),
            "triggerer": lambda: self._health_of("triggerer"),
            "dag-processor": lambda: self._health_of("dag_processor"),
            "workers": self._workers_answer,
            "dags": self._dags_serialized,
        }
        while pending:
            self._check_alive(allow_exit=("pools-set",))
            for name, ready in list(pending.items()):
                if ready():
                    self.timings[f"ready_{name}_s"] = time.monotonic() - launched
                    del pending[name]
            if pending and time.monotonic() > deadline:
                raise StackError(self._not_ready_message(sorted(pending)))
            time.sleep(0.5)
        self._check_import_errors()

    def _not_ready_message(self, waiting: list[str]) -> str:
        logs = {
            "api-server": ["api-server"],
            "scheduler": ["scheduler"],
            "triggerer": ["triggerer"],
            "dag-processor": ["dag-processor"],
            "workers": [name for name in self.components if name.startswith("worker-")],
            "dags": ["dag-processor"],
            "pools-set": ["pools-set"],
        }
        parts = [f"not ready after {self.settings.start_timeout_s:.0f} s: {', '.join(waiting)}"]
        if self._health:
            parts.append(f"last /api/v2/monitor/health: {json.dumps(self._health)}")
        for name in waiting:
            for component_name in logs[name]:
                component = self.components[component_name]
                parts.append(f"--- last lines of {component.log_path} ---\n{component.log_tail()}")
        return "\n".join(parts)

    def _api_healthy(self) -> bool:
        try:
            response = requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
        except requests.RequestException:
            return False
        if response.status_code != 200:
            return False
        self._health = response.json()
        return self._health.get("metadatabase", {}).get("status") == "healthy"

    def _health_of(self, part: str) -> bool:
        return (self._health.get(part) or {}).get("status") == "healthy"

    def _workers_answer(self) -> bool:
        """Each worker answers a Celery control ping over the broker (what compose's healthcheck runs)."""
        from celery import Celery

        app = Celery(broker=f"redis://{LOOPBACK}:{self.redis_port}/0")
        try:
            replies = app.control.ping(timeout=1.0)
        except Exception:  # the broker connection itself failing is just "not yet"
            return False
        finally:
            app.close()
        # Node names are "<celery hostname>@<machine>", as given by --celery-hostname NAME@%h.
        answered = {node.partition("@")[0] for reply in replies for node in reply}
        return set(self.worker_hostnames) <= answered

    def _dags_serialized(self) -> bool:
        if not self._api_healthy():
            return False
        assert self.rest is not None
        try:
            for dag_id in DAG_IDS:
                self.rest.request("GET", f"/api/v2/dags/{dag_id}")
        except (StackError, requests.RequestException):
            return False
        return True

    def _check_import_errors(self) -> None:
        assert self.rest is not None
        errors = self.rest.request("GET", "/api/v2/importErrors")
        if errors["total_entries"]:
            raise StackError(f"DAG import errors: {json.dumps(errors['import_errors'], indent=2)}")

    # --------------------------------------------------------------------------------------- queries

    def metadata_rows(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the Airflow metadata database."""
        assert self.metadata is not None
        with self.metadata.connect() as conn:
            return conn.execute(query, params).fetchall()

    def diagnostics(self, max_lines: int = 25) -> str:
        """Every component's state and log tail, for a failure message."""
        parts = []
        for component in self.components.values():
            status = component.exit_status
            state = "running" if status is None else f"exited {status}"
            parts.append(
                f"--- {component.name} ({state}), {component.log_path} ---\n{component.log_tail(max_lines)}"
            )
        return "\n".join(parts)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
