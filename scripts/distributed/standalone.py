"""`airflow standalone` as the second platform of the idle-mode tests: LocalExecutor, one process tree.

It is what `make demo` runs (scripts/demo.py), set up the way the native Celery stack is set up
(scripts/distributed/stack.py): a PostgreSQL cluster with the metadata database and the `jira_store`
database, connections and settings in environment variables. `airflow standalone` itself starts the
scheduler, the dag-processor, the api-server and the triggerer, and writes all of their output to its
own, each line prefixed with the component's name; `component_log("triggerer")` picks those lines.
The latency settings are the stack's, less the Celery worker's preload (no Celery worker here): the
scheduler's 0.2 s idle sleep.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from devkit.processes import free_port
from include.names import JIRA_API_POOL
from scripts.distributed.stack import Component, DistributedStack

STANDALONE = "standalone"
# What `airflow standalone` runs, by the name it prefixes their lines with.
SUBCOMMANDS = ("scheduler", "dag-processor", "api-server", "triggerer")
# Two cores: four LocalExecutor workers, as in the demo.
PARALLELISM = 4


class StandaloneAirflow(DistributedStack):
    """`airflow standalone` on loopback with PostgreSQL: start() and stop(), or a context manager."""

    def _start_redis(self) -> None:
        """LocalExecutor needs no broker."""

    def _airflow_env(self) -> dict[str, str]:
        env = super()._airflow_env()
        for name in [n for n in env if n.startswith("AIRFLOW__CELERY__")]:
            del env[name]
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
                # Its log servers would listen on 8793 and 8794, shared by every test run on the machine.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                # standalone starts its components as plain `airflow`, found on PATH.
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
                # Plain lines, so the component prefixes can be matched.
                "NO_COLOR": "1",
            }
        )
        return env

    def _start_airflow(self, env: dict[str, str]) -> None:
        self.timings["airflow_launch_at"] = time.monotonic()
        pool = ["pools", "set", JIRA_API_POOL, str(self.settings.jira_pool_slots), "Concurrent Jira requests"]
        for name, args in ((STANDALONE, ["standalone"]), ("pools-set", pool)):
            component = Component(name, self._airflow(*args), dict(env), self.root / f"{name}.log")
            self.components[name] = component
            component.start(self.root)

    def _readiness_checks(self) -> dict[str, Callable[[], bool]]:
        checks = super()._readiness_checks()
        del checks["workers"]  # LocalExecutor's workers are the scheduler's own processes
        return checks

    def component_log(self, name: str) -> str:
        """What component `name` logged: for standalone's components, its lines of standalone's output."""
        if name not in SUBCOMMANDS:
            return super().component_log(name)
        prefix = f"{name:10} | "
        return "".join(
            line[len(prefix) :]
            for line in super().component_log(STANDALONE).splitlines(keepends=True)
            if line.startswith(prefix)
        )
