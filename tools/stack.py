"""Run the local stack: Azurite, the Graph/identity emulator and the local Functions host.

    python -m tools.stack run            # make run: Azurite + emulator (demo tenant) + local host
    python -m tools.stack test [ARGS]    # make test: Azurite for the tests, pytest ARGS, then stop

Every process it starts records a pid file under ``.local/run`` and is stopped on exit, Ctrl-C or
SIGTERM, so nothing is left running. ``GRAPH_BASE_URL`` set in the environment means "use that Graph"
and no emulator is started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from emulator.client import EmulatorClient
from tools.azurite import free_port, start_azurite

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
RUN_DIR = LOCAL / "run"
EMULATOR_PORT = 8443
HOST_PORT = 7071


def _write_pid(name: str, pid: int) -> Path:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = RUN_DIR / f"{name}.pid"
    path.write_text(str(pid))
    return path


def _stop_stale(name: str) -> None:
    """Stop a process a previous, killed run left behind (its pid file is still there)."""
    path = RUN_DIR / f"{name}.pid"
    if not path.exists():
        return
    with suppress(ValueError, ProcessLookupError, PermissionError):
        os.killpg(int(path.read_text()), signal.SIGTERM)
    path.unlink(missing_ok=True)


def _stop_orphaned_test_azurites() -> None:
    """Stop the Azurites of ``test`` runs whose own process is gone (killed before its cleanup ran).
    Test runs name their pid file after their own pid, so concurrent test runs leave each other alone."""
    for path in RUN_DIR.glob("azurite-test-*.pid"):
        owner = int(path.stem.rpartition("-")[2])
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            _stop_stale(path.stem)
        except PermissionError:
            pass


@contextmanager
def azurite(persistent: bool, ports: tuple[int, int, int] | None = None) -> Iterator[str]:
    """``persistent``: the ``run`` stack's Azurite (one per checkout, a stale one is stopped first);
    otherwise an in-memory one for a test run, alongside any other test run's."""
    name = "azurite" if persistent else f"azurite-test-{os.getpid()}"
    if persistent:
        _stop_stale(name)
    else:
        _stop_orphaned_test_azurites()
    instance = start_azurite(LOCAL / "azurite", ports=ports, in_memory=not persistent)
    pid_file = _write_pid(name, instance.process.pid)
    try:
        yield instance.connection_string
    finally:
        instance.stop()
        pid_file.unlink(missing_ok=True)


@contextmanager
def child(name: str, args: list[str], env: dict[str, str], ready: str, timeout: float = 60) -> Iterator[None]:
    """Start a child process in its own process group, wait for its ``ready`` line, stop it on exit."""
    _stop_stale(name)
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    pid_file = _write_pid(name, process.pid)
    try:
        _wait_for_line(process, ready, timeout, name)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        pid_file.unlink(missing_ok=True)


def _wait_for_line(process: subprocess.Popen[str], ready: str, timeout: float, name: str) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        print(f"[{name}] {line}", end="")
        if ready in line:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not become ready in {timeout:.0f} s")
    else:
        raise RuntimeError(f"{name} exited before it was ready (exit code {process.wait()})")
    # Keep echoing the child's output so its log stays visible.
    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            print(f"[{name}] {line}", end="")

    threading.Thread(target=pump, daemon=True).start()


def _local_settings() -> dict[str, str]:
    """local.settings.json values (created from the example on first run)."""
    settings_file = ROOT / "local.settings.json"
    if not settings_file.exists():
        shutil.copy(ROOT / "local.settings.json.example", settings_file)
        print("created local.settings.json from local.settings.json.example")
    values: dict[str, str] = json.loads(settings_file.read_text())["Values"]
    return values


def run() -> int:
    env = {**_local_settings(), **os.environ}
    env.setdefault("SYNC_QUEUE_NAME", "mailbox-sync")  # local.settings.json from before the queue existed
    python = sys.executable
    with ExitStack() as stack:
        env["AzureWebJobsStorage"] = stack.enter_context(azurite(persistent=True, ports=(10000, 10001, 10002)))
        if "GRAPH_BASE_URL" not in os.environ:
            state_dir = LOCAL / "emulator"
            stack.enter_context(
                child(
                    "emulator",
                    [python, "-m", "emulator", "--port", str(EMULATOR_PORT), "--state-dir", str(state_dir),
                     "--seed", "demo"],
                    env,
                    ready="emulator ready",
                )
            )
            env["GRAPH_AUTHORITY_HOST"] = f"https://localhost:{EMULATOR_PORT}"
            env["GRAPH_BASE_URL"] = f"https://localhost:{EMULATOR_PORT}/v1.0"
            env["REQUESTS_CA_BUNDLE"] = str(state_dir / "ca-bundle.pem")
            # The local app is plain http: let the emulator deliver change notifications to it anyway.
            EmulatorClient(env["GRAPH_AUTHORITY_HOST"], env["REQUESTS_CA_BUNDLE"]).configure(
                allow_http_notification_urls=True
            )
        stack.enter_context(
            child("devhost", [python, "-m", "devhost", "--port", str(HOST_PORT)], env, ready="devhost ready")
        )
        print(
            f"\nThe app is running on http://127.0.0.1:{HOST_PORT}/api (health: /api/health).\n"
            "Connect the demo mailbox: POST /api/orgs/demo/mailboxes/connect with {\"user_id\": \"adele\"}\n"
            "and open the authorize_url it returns; sign in as adele@contoso.example.\n"
            f"Emulator control API: https://localhost:{EMULATOR_PORT}/_emulator/  (Ctrl-C stops everything)\n"
        )
        _wait_for_signal()
    return 0


def _wait_for_signal() -> None:
    stop = False

    def handle(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handle)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


def test(pytest_args: list[str]) -> int:
    env = dict(os.environ)
    with azurite(persistent=False, ports=(free_port(), free_port(), free_port())) as connection_string:
        env["TEST_STORAGE_CONNECTION_STRING"] = connection_string
        return subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stack")
    parser.add_argument("command", choices=["run", "test"])
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    if options.command == "run":
        return run()
    return test([arg for arg in options.args if arg != "--"])


if __name__ == "__main__":
    raise SystemExit(main())
