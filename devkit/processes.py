"""Process helpers for the dev kit: free ports, spawning into a log file, and stopping what was spawned.

Every service the dev kit starts runs in a session (and process group) of its own, so it can be
stopped as a whole: `terminate` is the one "SIGTERM, wait, then SIGKILL" loop that every stopper here
is built on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 5.0
_POLL_S = 0.05


# ---------------------------------------------------------------------------------------------- ports


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether `port` can be bound on loopback and on every address."""
    # Airflow's log servers bind 0.0.0.0, which a loopback-only probe would miss.
    for host in (LOOPBACK, "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


# ------------------------------------------------------------------------------------------ /proc


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat the stoppers need."""

    state: str
    ppid: int
    pgid: int
    sid: int
    start_time: int  # clock ticks since boot: with the pid, it names one process even after pid reuse


def proc_stat(pid: int) -> ProcStat | None:
    """The process's /proc/PID/stat fields, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcStat(fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def process_start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None if there is none."""
    stat = proc_stat(pid)
    return None if stat is None else stat.start_time


def _live_processes() -> dict[int, ProcStat]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat.state != "Z":
                found[int(entry.name)] = stat
    return found


def session_members(sid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in session `sid`.

    Sessions, not process groups: Airflow's task supervisors put each task in a process group of its
    own, but they stay in the session of the `airflow standalone` that started them.
    """
    return [pid for pid, stat in _live_processes().items() if stat.sid == sid]


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in process group `pgid`."""
    return [pid for pid, stat in _live_processes().items() if stat.pgid == pgid]


def descendants(root_pid: int) -> list[tuple[int, int]]:
    """Every live descendant of `root_pid` as (pid, start time), so none that left its group is missed."""
    processes = _live_processes()
    children: dict[int, list[int]] = {}
    for pid, stat in processes.items():
        children.setdefault(stat.ppid, []).append(pid)
    found: list[tuple[int, int]] = []
    pending = list(children.get(root_pid, []))
    while pending:
        pid = pending.pop()
        found.append((pid, processes[pid].start_time))
        pending.extend(children.get(pid, []))
    return found


# --------------------------------------------------------------------------------------- spawning


def spawn(
    argv: list[str], log_path: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` as the leader of a new session, its stdout and stderr appended to `log_path`."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def log_tail(path: Path, max_lines: int = 40) -> str:
    """The last lines of a log file, or a note saying it is missing or empty."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-max_lines:]
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(lines) if lines else f"(empty log {path})"


# --------------------------------------------------------------------------------------- stopping


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def terminate(members: Callable[[], list[int]], timeout_s: float) -> list[int]:
    """SIGTERM every process `members()` names, SIGKILL those still there after `timeout_s`.

    `members` is asked again while they shut down, so a process forked meanwhile (a task starting)
    gets its SIGTERM too. Returns the PIDs that needed SIGKILL.
    """
    deadline = time.monotonic() + timeout_s
    signalled: set[int] = set()
    alive = members()
    while alive and time.monotonic() < deadline:
        _signal([pid for pid in alive if pid not in signalled], signal.SIGTERM)
        signalled.update(alive)
        time.sleep(_POLL_S)
        alive = members()
    _signal(alive, signal.SIGKILL)
    return alive


def stop_process_groups(processes: Mapping[str, subprocess.Popen[bytes]], timeout_s: float) -> list[str]:
    """Stop processes started by `spawn`, all at once: each one's process group and its descendants.

    A descendant that started a session of its own has left the group; it is found by ancestry before
    the first signal, and its start time guards against signalling an unrelated process that reused
    its PID. Returns the names whose processes needed SIGKILL.
    """
    running = {name: proc for name, proc in processes.items() if proc.poll() is None}
    strays = {name: descendants(proc.pid) for name, proc in running.items()}

    owner: dict[int, str] = {}

    def members() -> list[int]:
        live = _live_processes()
        found = {
            pid: name for name, proc in running.items() for pid, stat in live.items() if stat.pgid == proc.pid
        }
        for name, known in strays.items():
            found.update(
                (pid, name) for pid, started in known if pid in live and live[pid].start_time == started
            )
        owner.update(found)
        return sorted(found)

    killed_pids = terminate(members, timeout_s)
    killed = sorted({owner[pid] for pid in killed_pids}, key=list(running).index)
    for proc in processes.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
    return killed


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop one process started by `spawn` with its whole group; True if it needed SIGKILL."""
    return bool(stop_process_groups({"process": process}, timeout_s))
