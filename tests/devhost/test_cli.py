"""``python -m devhost``: ready line, pid file, clean shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_the_cli_serves_until_signalled_then_removes_its_pid_file_and_leaves_no_process(
    devhost_app_dir: Path, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    pid_file = tmp_path / "devhost.pid"
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_FUNCTIONS_KEY"}
    process = subprocess.Popen(
        [sys.executable, "-m", "devhost", "--app-dir", str(devhost_app_dir), "--port", "0",
         "--pid-file", str(pid_file)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("devhost ready"):
                break
        ready = re.fullmatch(r"devhost ready (http://127\.0\.0\.1:(\d+)/api)", lines[-1])
        assert ready, lines
        base_url = ready.group(1)
        assert any(line.strip().startswith("hello: [GET]") for line in lines)  # blueprint function listed
        assert any(line.strip().startswith("work: queueTrigger") for line in lines)
        assert pid_file.read_text() == str(process.pid)
        assert requests.get(f"{base_url}/items/9", timeout=5).json()["route"] == {"id": "9"}

        process.send_signal(stop_signal)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not pid_file.exists()
    assert processes_mentioning(str(devhost_app_dir)) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base_url}/items/9", timeout=2)
