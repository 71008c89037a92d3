"""Session set-up for `make test-distributed`: import paths, and a summary of what the run measured.

Unlike tests/conftest.py this sets no Airflow configuration in the test process: nothing here imports
Airflow. The stack's processes get their whole configuration from scripts/distributed/stack.py.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from devkit.dovecot import DovecotServer

MEASUREMENTS = pytest.StashKey[dict[str, float | int]]()


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (from scripts/test_distributed.sh, or a CI timeout) would end pytest without running
    # fixture teardown, leaving a whole Airflow cluster behind; as KeyboardInterrupt it runs.
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="module")
def dovecot_server() -> Iterator[DovecotServer]:
    """A real Dovecot for one module, recorded so scripts/test_distributed.sh can end it if pytest cannot."""
    from devkit.dovecot import DovecotStartError, start_dovecot
    from devkit.unavailable import service_unavailable
    from scripts.distributed.stack import record_process_group, record_scratch_dir

    try:
        server = start_dovecot()
    except (DovecotStartError, OSError) as exc:
        service_unavailable(f"Dovecot could not start: {exc}")
    record_process_group(server.process.pid, "dovecot")
    record_scratch_dir(server.root)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def measurements(pytestconfig: pytest.Config) -> dict[str, float | int]:
    """Seconds per phase (floats) and counts (ints), printed at the end (docs/distributed.md quotes them)."""
    return pytestconfig.stash.setdefault(MEASUREMENTS, {})


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    measured = config.stash.get(MEASUREMENTS, {})
    if measured:
        terminalreporter.write_sep("-", "distributed stack: measurements")
        for name, value in measured.items():
            shown = f"{value:8.1f} s" if isinstance(value, float) else f"{value:8d}"
            terminalreporter.write_line(f"{name:<48} {shown}")
