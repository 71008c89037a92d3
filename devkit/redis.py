"""Redis launcher: a throw-away, non-persistent Redis on a free loopback port (the stack's Celery broker)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from devkit.processes import LOOPBACK, free_port, log_tail, spawn, stop_process_group

REDIS_BINARY = "redis-server"
START_TIMEOUT_S = 10.0


class RedisStartError(RuntimeError):
    """Redis did not come up; the message carries the tail of its log."""


@dataclass
class RedisServer:
    """A running Redis; `stop()` ends its process group."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def stop(self) -> None:
        stop_process_group(self.process)


def ping(port: int) -> bool:
    """Whether a Redis on loopback `port` answers PING."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(
    directory: Path, log_path: Path, *, env: dict[str, str] | None = None, timeout_s: float = START_TIMEOUT_S
) -> RedisServer:
    """Start Redis (no snapshots, no append-only file, working files in `directory`) and wait for PONG."""
    binary = shutil.which(REDIS_BINARY)
    if binary is None:
        raise RedisStartError(f"{REDIS_BINARY} is not installed: run scripts/install_distributed_deps.sh")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(directory), "--daemonize", "no", "--protected-mode", "yes"]
    server = RedisServer(port, spawn(argv, log_path, env=env, cwd=directory), log_path)
    deadline = time.monotonic() + timeout_s
    while not ping(port):
        if server.process.poll() is not None:
            raise RedisStartError(
                f"redis exited with status {server.process.returncode}\n{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            server.stop()
            raise RedisStartError(f"redis did not answer PING within {timeout_s:.0f} s\n{log_tail(log_path)}")
        time.sleep(0.05)
    return server
