"""Run the local stack: Azurite, the Graph/identity emulator and the local Functions host.

    python -m tools.stack run            # make run: Azurite + emulator (demo tenant) + local host (demo org seeded)
    python -m tools.stack services       # make services: Azurite + emulator only, for `func start`
    python -m tools.stack test [ARGS]    # make test: Azurite for the tests, pytest ARGS, then stop

Every process it starts records a pid file under ``.local/run`` and is stopped on exit, SIGINT or
SIGTERM (handlers installed explicitly, so it stops however it was started), so nothing is left
running. Azurite (``.local/azurite``) and the emulator (``.local/emulator/state.pickle``) both keep
their state across restarts, so the app's stored tokens and delta links stay valid; ``make clean``
deletes both for a fresh demo. ``GRAPH_BASE_URL`` set in the environment means "use that Graph" and
no emulator is started. The emulator process also runs the Google emulator (``emulator.google``: OAuth,
Gmail API, Pub/Sub push) on its own port, 8444 beside the default 8443 (a free port otherwise), and the
app's Google settings point at it unless ``GMAIL_BASE_URL`` is set in the environment.
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
from dataclasses import dataclass
from pathlib import Path

import requests

from emulator.client import EmulatorClient
from emulator.google.server import google_settings
from emulator.google.state import DEMO_CLIENT_ID as GOOGLE_DEMO_CLIENT_ID
from emulator.google.state import DEMO_CLIENT_SECRET as GOOGLE_DEMO_CLIENT_SECRET
from emulator.persistence import STATE_FILE
from tools import demo, mailserver
from tools.azurite import free_port, start_azurite

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
RUN_DIR = LOCAL / "run"
EMULATOR_PORT = 8443
GOOGLE_EMULATOR_PORT = 8444
HOST_PORT = 7071


class _Stop(Exception):
    """Raised in the main thread by SIGINT or SIGTERM, so the ExitStack unwinds wherever it was."""


_starting: list[str] = []  # non-empty while a process is started and not yet owned by a cleanup
_pending: list[str] = []  # the signal that asked to stop while one was


@contextmanager
def _starting_process() -> Iterator[None]:
    """A stop signal arriving in here only asks to stop (``_stop_if_asked``), so that no process is
    started without the pid file and the cleanup that stop it."""
    _starting.append("starting")
    try:
        yield
    finally:
        _starting.pop()


def _stop_if_asked() -> None:
    """Honour a stop signal that came while a process was being started (call inside its cleanup)."""
    if _pending:
        raise _Stop(_pending[0])


def _write_pid(name: str, pid: int, run_dir: Path = RUN_DIR) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"{name}.pid"
    path.write_text(str(pid))
    return path


def _stop_stale(name: str, run_dir: Path = RUN_DIR) -> None:
    """Stop a process a previous, killed run left behind (its pid file is still there)."""
    path = run_dir / f"{name}.pid"
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
def azurite(
    persistent: bool, ports: tuple[int, int, int] | None = None, local: Path = LOCAL
) -> Iterator[str]:
    """``persistent``: the ``run`` stack's Azurite (one per ``local`` folder, a stale one is stopped
    first, data under ``local/azurite``); otherwise an in-memory one for a test run, alongside any other
    test run's."""
    name = "azurite" if persistent else f"azurite-test-{os.getpid()}"
    run_dir = local / "run"
    if persistent:
        _stop_stale(name, run_dir)
    else:
        _stop_orphaned_test_azurites()
    with _starting_process():
        instance = start_azurite(local / "azurite", ports=ports, in_memory=not persistent)
        pid_file = _write_pid(name, instance.process.pid, run_dir)
    try:
        _stop_if_asked()
        yield instance.connection_string
    finally:
        instance.stop()
        pid_file.unlink(missing_ok=True)


@contextmanager
def child(
    name: str, args: list[str], env: dict[str, str], ready: str, *, timeout: float = 60, run_dir: Path = RUN_DIR
) -> Iterator[None]:
    """Start a child process in its own process group, wait for its ``ready`` line, stop it on exit
    (also when it never got ready: the signal handlers of ``run`` can interrupt the wait)."""
    _stop_stale(name, run_dir)
    with _starting_process():
        process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        pid_file = _write_pid(name, process.pid, run_dir)
    try:
        _stop_if_asked()
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
        # Copied whole under a temp name, then renamed: a stack starting alongside never reads half a file.
        temp = settings_file.with_name(f".local.settings.json.{os.getpid()}.tmp")
        shutil.copy(ROOT / "local.settings.json.example", temp)
        os.replace(temp, settings_file)
        print("created local.settings.json from local.settings.json.example")
    values: dict[str, str] = json.loads(settings_file.read_text())["Values"]
    return values


@dataclass(frozen=True)
class Layout:
    """Where the local stack keeps its state and which ports it serves on (the defaults are the ones
    ``local.settings.json`` names; tests pass a temp folder and free ports)."""

    local: Path = LOCAL
    storage_ports: tuple[int, int, int] = (10000, 10001, 10002)
    emulator_port: int = EMULATOR_PORT
    host_port: int = HOST_PORT
    google_port: int | None = None  # None: 8444 beside the default emulator port, else a free port

    @property
    def run_dir(self) -> Path:
        return self.local / "run"

    def google_emulator_port(self) -> int:
        if self.google_port is not None:
            return self.google_port
        return GOOGLE_EMULATOR_PORT if self.emulator_port == EMULATOR_PORT else free_port()


def _stop_on_signals() -> None:
    """Stop on SIGINT and SIGTERM, installed explicitly: a non-interactive shell starts background jobs
    with SIGINT ignored, and ``KeyboardInterrupt`` never comes then. The first signal starts the
    shutdown (at once, or as soon as a process being started has its pid file); further ones are
    ignored so that it runs to the end (children stopped, pid files removed)."""

    def handle(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _pending.append(signal.Signals(signum).name)
        if not _starting:
            raise _Stop(_pending[0])

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def _start_services(stack: ExitStack, env: dict[str, str], layout: Layout) -> None:
    """Azurite (persistent, under ``local/azurite``) and, unless ``GRAPH_BASE_URL`` is set, the emulator
    (persistent, under ``local/emulator``, demo tenant); points ``env`` at both."""
    azurite_data = layout.local / "azurite"
    had_app_data = azurite_data.is_dir() and any(azurite_data.iterdir())
    env["AzureWebJobsStorage"] = stack.enter_context(
        azurite(persistent=True, ports=layout.storage_ports, local=layout.local)
    )
    _start_mail_server(stack, layout)
    if "GRAPH_BASE_URL" in os.environ:
        return
    state_dir = layout.local / "emulator"
    restoring = (state_dir / STATE_FILE).exists()
    google_port = layout.google_emulator_port()
    stack.enter_context(
        child(
            "emulator",
            [sys.executable, "-m", "emulator", "--port", str(layout.emulator_port), "--state-dir", str(state_dir),
             "--seed", "demo", "--persist", "--google-port", str(google_port)],
            env,
            ready="emulator ready",
            run_dir=layout.run_dir,
        )
    )
    env["GRAPH_AUTHORITY_HOST"] = f"https://localhost:{layout.emulator_port}"
    env["GRAPH_BASE_URL"] = f"https://localhost:{layout.emulator_port}/v1.0"
    env["REQUESTS_CA_BUNDLE"] = str(state_dir / "ca-bundle.pem")
    # The local app is plain http: let the emulator deliver change notifications to it anyway.
    EmulatorClient(env["GRAPH_AUTHORITY_HOST"], env["REQUESTS_CA_BUNDLE"]).configure(
        allow_http_notification_urls=True
    )
    _point_at_google_emulator(env, f"https://localhost:{google_port}")
    if restoring:
        print(f"Emulator state restored from {state_dir / STATE_FILE}: connected mailboxes keep syncing.")
    elif had_app_data:
        print(
            f"Note: {azurite_data} holds the app's data from an earlier run, but the emulator starts fresh: "
            "mailboxes connected before must be connected again. `make clean` starts a fresh demo."
        )


DEMO_IMAP_USER, DEMO_IMAP_PASSWORD = f"demo@{mailserver.DOMAIN}", "demo-imap-password"


def _start_mail_server(stack: ExitStack, layout: Layout) -> None:
    """Dovecot + SMTP (tools/mailserver.py) with a demo IMAP mailbox, its certificate from the emulator's
    CA (so ``.local/emulator/ca-bundle.pem`` trusts both), and how to add that mailbox to the demo org."""
    # `make run`'s own folder gets fixed ports, so a mailbox added once keeps working across restarts (its
    # stored login names the port); a stack in another folder (tests) takes free ones.
    ports = mailserver.Ports(10143, 10993, 10024, 10587, 10465) if layout.local == LOCAL else None
    server = stack.enter_context(
        mailserver.running(layout.local / "mailserver", ca_dir=layout.local / "emulator", ports=ports)
    )
    server.add_user(DEMO_IMAP_USER, DEMO_IMAP_PASSWORD)
    server.deliver(
        DEMO_IMAP_USER,
        f"From: Carol <carol@client.example>\r\nTo: {DEMO_IMAP_USER}\r\nSubject: Welcome to the IMAP demo\r\n"
        f"Message-ID: <imap-demo-welcome@client.example>\r\n\r\nHello from Dovecot.\r\n".encode(),
    )
    imap = {"host": "127.0.0.1", "port": server.ports.imaps, "security": "tls", "username": DEMO_IMAP_USER,
            "password": DEMO_IMAP_PASSWORD}  # fmt: skip
    smtp = {**imap, "port": server.ports.submission, "security": "starttls"}
    body = {"provider": "imap", "user_id": "crm-user-1", "address": DEMO_IMAP_USER, "imap": imap, "smtp": smtp}
    print(
        f"\nDovecot (IMAPS {server.ports.imaps}, IMAP+STARTTLS {server.ports.imap}, LMTP {server.ports.lmtp}) and "
        f"SMTP submission ({server.ports.submission} STARTTLS, {server.ports.submissions} TLS) are running on "
        f"127.0.0.1 with the demo mailbox {DEMO_IMAP_USER}. Add it to the demo org (README.md, "
        f"\"Try it\", step 9):\n"
        f"  curl -sS -X POST \"$BASE/orgs/{demo.DEMO_ORG}/mailboxes\" -H \"Content-Type: application/json\" "
        f"-d '{json.dumps(body)}'\n",
        flush=True,
    )


GOOGLE_SETTING_NAMES = (*google_settings("").keys(), "GOOGLE_CLIENT_ID")


def _point_at_google_emulator(env: dict[str, str], url: str) -> None:
    """The app's Google settings for the Google emulator at ``url`` (its demo OAuth client unless one is
    configured), unless ``GMAIL_BASE_URL`` in the environment names another Gmail; pushes to the local
    plain-http app are allowed."""
    if "GMAIL_BASE_URL" in os.environ:
        return
    env.update(google_settings(url))
    if not env.get("GOOGLE_CLIENT_ID"):
        env["GOOGLE_CLIENT_ID"], env["GOOGLE_CLIENT_SECRET"] = GOOGLE_DEMO_CLIENT_ID, GOOGLE_DEMO_CLIENT_SECRET
    with requests.Session() as session:
        session.trust_env = False
        session.verify = env["REQUESTS_CA_BUNDLE"]
        session.put(f"{url}/_emulator/config", json={"allow_http_push_endpoints": True}, timeout=10).raise_for_status()
    print(f"Google emulator (OAuth, Gmail API, Pub/Sub push) on {url}; demo Workspace domain tailspin.example.")


def run(layout: Layout = Layout(), *, with_host: bool = True) -> int:
    """``run``: Azurite, the emulator and (``with_host``) the local host, until SIGINT or SIGTERM."""
    _stop_on_signals()
    env = {**_local_settings(), **os.environ}
    env.setdefault("SYNC_QUEUE_NAME", "mailbox-sync")  # local.settings.json from before the queue existed
    try:
        with ExitStack() as stack:
            _start_services(stack, env, layout)
            if with_host:
                stack.enter_context(
                    child("devhost", [sys.executable, "-m", "devhost", "--port", str(layout.host_port)], env,
                          ready="devhost ready", run_dir=layout.run_dir)
                )
                _seed_demo(layout, env)
                _print_app_hints(layout)
            else:
                _print_service_settings(env, layout)
            print("stack ready (Ctrl-C or SIGTERM stops everything)", flush=True)
            while True:
                time.sleep(3600)
    except _Stop as stop:
        print(f"stopped on {stop}; nothing left running", flush=True)
    return 0


def _seed_demo(layout: Layout, env: dict[str, str]) -> None:
    """The demo org's settings and records, through the app's API (idempotent). A failure is reported
    and the stack keeps running: the app itself is up."""
    try:
        demo.seed(f"http://127.0.0.1:{layout.host_port}/api", env.get("LOCAL_FUNCTIONS_KEY") or None)
    except requests.RequestException as exc:
        print(f"Note: seeding the demo org failed ({exc}); `python -m tools.demo seed` tries again.", flush=True)


def app_hints(layout: Layout) -> str:
    """What ``run`` prints once the app is up: the first commands of the README's walkthrough ("Try it"),
    on this stack's ports (the README's are the defaults, and then the lines are the README's own)."""
    ca_bundle = layout.local / "emulator" / "ca-bundle.pem"
    shown_ca = ".local/emulator/ca-bundle.pem" if layout.local == LOCAL else str(ca_bundle)
    return (
        f"\nThe app is running on http://127.0.0.1:{layout.host_port}/api (health: /api/health); the demo org "
        f"'{demo.DEMO_ORG}' has its settings and records.\n"
        "Try it (README.md, \"Try it\": connect adele's mailbox, sample mail, Sync now, timeline, explain, send):\n"
        f"  BASE=http://127.0.0.1:{layout.host_port}/api\n"
        f"  EMU=https://localhost:{layout.emulator_port}/_emulator\n"
        f"  CA={shown_ca}\n"
        f"  AUTHORIZE_URL=$(curl -sS -X POST \"$BASE/orgs/{demo.DEMO_ORG}/mailboxes/connect\" "
        f"-H \"Content-Type: application/json\" -d '{{\"user_id\": \"crm-user-1\", "
        f"\"login_hint\": \"{demo.DEMO_MAILBOX}\", \"return_url\": \"{demo.RETURN_URL}\"}}' | jq -r .authorize_url)\n"
        '  echo "$AUTHORIZE_URL"   # open it in a browser and sign in as adele@contoso.example\n'
        "  python -m tools.demo mail\n"
        "The emulator's control API needs its CA (HTTPS), e.g. adele's Graph request counts:\n"
        '  curl -sS --cacert "$CA" "$EMU/stats/mailboxes/adele" | jq .\n'
        f"State is kept under {layout.local} across restarts; `make clean` deletes it for a fresh demo.\n"
    )


def _print_app_hints(layout: Layout) -> None:
    print(app_hints(layout), flush=True)


def _print_service_settings(env: dict[str, str], layout: Layout) -> None:
    """What a Functions host started by hand (``func start``) needs; local.settings.json has the same."""
    names = ("AzureWebJobsStorage", "GRAPH_AUTHORITY_HOST", "GRAPH_BASE_URL", "REQUESTS_CA_BUNDLE",
             *GOOGLE_SETTING_NAMES)
    print("\nAzurite and the emulator are running (no Functions host). Settings for the app:")
    for name in names:
        if name in env:
            print(f"  {name}={env[name]}")
    print(
        "local.settings.json names the same services. In another shell:\n"
        "  . .venv/bin/activate && func start\n",
        flush=True,
    )


def test(pytest_args: list[str]) -> int:
    env = dict(os.environ)
    with ExitStack() as stack:
        ports = (free_port(), free_port(), free_port())
        env["TEST_STORAGE_CONNECTION_STRING"] = stack.enter_context(azurite(persistent=False, ports=ports))
        # One Dovecot + SMTP server for the run (tests/conftest.py attaches to it; each test adds its own
        # users), in a folder named after this process so concurrent test runs leave each other alone.
        server = stack.enter_context(mailserver.running(LOCAL / f"mailserver-test-{os.getpid()}"))
        stack.callback(shutil.rmtree, server.root, True)
        env["TEST_MAILSERVER"] = json.dumps(server.describe())
        return subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT, env=env)


def _ports(text: str) -> tuple[int, int, int]:
    blob, queue, table = (int(part) for part in text.split(","))
    return blob, queue, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stack")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "Azurite + emulator (demo tenant) + the local Functions host"),
        ("services", "Azurite + emulator only, for `func start` (Core Tools)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--local-dir", type=Path, default=LOCAL, help="state and pid files (default .local)")
        command.add_argument("--storage-ports", type=_ports, default=Layout.storage_ports, help="blob,queue,table")
        command.add_argument("--emulator-port", type=int, default=EMULATOR_PORT)
        command.add_argument("--host-port", type=int, default=HOST_PORT)
        command.add_argument("--google-port", type=int, default=None,
                             help="the Google emulator's port (default 8444 beside 8443, else a free one)")
    test_command = commands.add_parser("test", help="Azurite for the tests, then pytest ARGS")
    test_command.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    if options.command == "test":
        return test([arg for arg in options.args if arg != "--"])
    layout = Layout(
        options.local_dir.resolve(), options.storage_ports, options.emulator_port, options.host_port,
        options.google_port,
    )
    return run(layout, with_host=options.command == "run")


if __name__ == "__main__":
    raise SystemExit(main())
