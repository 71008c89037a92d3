"""The compose file's jira-standin command and healthcheck, run for real on loopback."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.processes import LOOPBACK, free_port, log_tail, spawn, stop_process_group
from devkit.unavailable import service_unavailable
from tests.stack_files import (
    AIRFLOW_DOCKERFILE,
    REPO,
    dockerfile,
    environment_of,
    healthcheck_shell,
    resolved_services,
    volume_targets,
)

START_TIMEOUT_S = 15.0

# The image's PYTHONPATH, where the container's code lives.
IMAGE_PYTHONPATH = dict(
    i.arguments.split("=", 1) for i in dockerfile(AIRFLOW_DOCKERFILE) if i.keyword == "ENV"
)["PYTHONPATH"]

# ------------------------------------------------------------------ the Jira stand-in command, for real


@pytest.fixture(scope="module")
def stack_standin() -> Iterator[tuple[int, dict[str, Any]]]:
    """The jira-standin service's command, run in a copy of its container's /opt/airflow.

    That directory holds only what the service mounts (symlinks to the checkout), and PYTHONPATH is the
    image's, so the stand-in is proven to need nothing from the image's own copy of the code.
    """
    service = resolved_services()["jira-standin"]
    argv = list(service["command"])
    assert argv[:3] == ["python", "-m", "devkit.jira_standin"], argv
    work = Path(tempfile.mkdtemp(prefix="jms-stack-standin-"))
    container_root = work / "opt-airflow"
    container_root.mkdir()
    for target, source in volume_targets(service).items():
        assert target.startswith(f"{IMAGE_PYTHONPATH}/"), f"jira-standin mounts {target} outside /opt/airflow"
        (container_root / target.removeprefix(f"{IMAGE_PYTHONPATH}/")).symlink_to(REPO / source)
    port = free_port()
    argv[0] = sys.executable
    argv[argv.index("--host") + 1] = LOOPBACK
    argv[argv.index("--port") + 1] = str(port)
    env = {**os.environ, **environment_of(service), "PYTHONPATH": str(container_root)}
    log_path = work / "jira-standin.log"
    process = spawn(argv, log_path, env=env, cwd=container_root)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError):
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            break
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            output = log_tail(log_path, 60)
            shutil.rmtree(work, ignore_errors=True)
            service_unavailable(f"the jira-standin service command did not start:\n{output}")
        time.sleep(0.05)
    try:
        yield port, service
    finally:
        stop_process_group(process)
        shutil.rmtree(work, ignore_errors=True)


def _get_myself(port: int, login: str, password: str) -> int:
    auth = base64.b64encode(f"{login}:{password}".encode()).decode()
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        connection.request("GET", "/rest/api/3/myself", headers={"Authorization": f"Basic {auth}"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_jira_default_authenticates_against_the_standin_service(stack_standin):
    port, _ = stack_standin
    conn = json.loads(environment_of(resolved_services()["airflow-worker"])["AIRFLOW_CONN_JIRA_DEFAULT"])
    assert _get_myself(port, conn["login"], conn["password"]) == 200
    assert _get_myself(port, conn["login"], conn["password"] + "-wrong") == 401


def test_jira_standin_healthcheck_passes_against_the_running_standin(stack_standin):
    port, service = stack_standin
    argv = healthcheck_shell(service)
    container_port = service["command"][service["command"].index("--port") + 1]
    assert argv[0] == "python" and container_port in argv[-1], "the healthcheck does not probe the stand-in"
    probe = [sys.executable, *argv[1:-1], argv[-1].replace(container_port, str(port))]
    assert subprocess.run(probe, capture_output=True, timeout=15).returncode == 0
    dead = [sys.executable, *argv[1:-1], argv[-1].replace(container_port, str(free_port()))]
    assert subprocess.run(dead, capture_output=True, timeout=15).returncode != 0
