"""tools.stack's bookkeeping of the Azurite processes its test runs start."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tools import stack


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def stand_in() -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own group, standing in for a test run's Azurite."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_the_azurite_of_a_test_run_whose_process_died_is_stopped(stand_in: subprocess.Popen[bytes]) -> None:
    stack.RUN_DIR.mkdir(parents=True, exist_ok=True)
    pid_file = stack.RUN_DIR / f"azurite-test-{_dead_pid()}.pid"
    pid_file.write_text(str(stand_in.pid))

    stack._stop_orphaned_test_azurites()

    assert stand_in.wait(timeout=10) is not None
    assert not pid_file.exists()


def test_the_azurite_of_a_test_run_still_running_is_left_alone(stand_in: subprocess.Popen[bytes]) -> None:
    stack.RUN_DIR.mkdir(parents=True, exist_ok=True)
    pid_file = stack.RUN_DIR / f"azurite-test-{os.getpid()}.pid"  # this very process: alive
    pid_file.write_text(str(stand_in.pid))
    try:
        stack._stop_orphaned_test_azurites()

        assert stand_in.poll() is None
        assert pid_file.exists()
    finally:
        pid_file.unlink(missing_ok=True)
