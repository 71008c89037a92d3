"""A real `airflow api-server` with this repository's plugin, for the tests of the plugin's routes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

from devkit.airflow_env import SIMPLE_AUTH_MANAGER
from devkit.processes import LOOPBACK, spawn
from devkit.unavailable import service_unavailable

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 90


def _wait_until_healthy(process: subprocess.Popen[bytes], url: str) -> str | None:
    """None once /api/v2/monitor/health answers 200, else why the server did not come up."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with {process.returncode}"
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                return None
        time.sleep(0.5)
    return f"not healthy after {STARTUP_TIMEOUT_S} s"


def start_api_server(
    *,
    port: int,
    jwt_secret: str,
    passwords_file: Path,
    log_path: Path,
    cwd: Path,
    users: str = "admin:admin",
    settings: Mapping[str, str] | None = None,
    options: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """One api-server worker on loopback with the simple auth manager's `users`; healthy when returned.

    The session's environment (its metadata database, tests/conftest.py) plus `settings` (which may
    name another auth manager), and `options` for the command line (`--proxy-headers`, say).
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": users,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(port),
        **(settings or {}),
    }
    arguments = ["api-server", "--host", LOOPBACK, "--port", str(port), "-w", "1", *options]
    process = spawn(
        [sys.executable, "-m", "airflow", *arguments],
        log_path,
        env=env,
        cwd=cwd,
    )
    problem = _wait_until_healthy(process, f"http://{LOOPBACK}:{port}")
    if problem:
        log = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
        from devkit.processes import stop_process_group

        stop_process_group(process, timeout_s=20)
        service_unavailable(f"`airflow api-server` {problem}:\n{log}")
    return process
