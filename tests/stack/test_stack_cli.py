"""``python -m tools.stack run|services`` started the way a non-interactive shell starts a background job
(SIGINT ignored, inherited): it stops on SIGINT and on SIGTERM, leaves no process and no pid file;
``services`` runs Azurite and the emulator only, printing the settings a ``func start`` needs; and
``run`` restarted twice keeps a connected mailbox syncing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from emulator.client import EmulatorClient
from tests import connect_flow
from tests.reliability.hosted_app import APP_SETTING_PREFIXES
from tools.azurite import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    output: Path
    local: Path
    emulator_port: int
    host_port: int

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def pids(self) -> dict[str, int]:
        return {path.stem: int(path.read_text()) for path in (self.local / "run").glob("*.pid")}


@dataclass(frozen=True)
class Ports:
    storage: str
    emulator: int
    host: int

    @classmethod
    def free(cls) -> Ports:
        return cls(",".join(str(free_port()) for _ in range(3)), free_port(), free_port())


def start(
    command: str, local: Path, output: Path, ports: Ports | None = None, env_extra: dict[str, str] | None = None
) -> Started:
    """Start the stack with SIGINT ignored, as ``cmd &`` in a script does; wait for its ready line."""
    ports = ports or Ports.free()
    emulator_port, host_port = ports.emulator, ports.host
    # App settings from local.settings.json and ``env_extra`` only: not from an in-process host of
    # tests/e2e, whose settings sit in os.environ while it runs, nor from the developer's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith(APP_SETTING_PREFIXES)} | (env_extra or {})
    with output.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.stack", command, "--local-dir", str(local), "--storage-ports", ports.storage,
             "--emulator-port", str(emulator_port), "--host-port", str(host_port)],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509 (single-threaded here)
        )
    started = Started(process, output, local, emulator_port, host_port)
    deadline = time.monotonic() + 120
    while "stack ready" not in started.text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the stack did not start:\n{started.text()}")
        time.sleep(0.1)
    return started


def stop_and_check_nothing_is_left(started: Started, stop_signal: signal.Signals) -> None:
    pids = started.pids()
    started.process.send_signal(stop_signal)
    try:
        assert started.process.wait(timeout=60) == 0, started.text()
    finally:
        if started.process.poll() is None:
            started.process.kill()
    assert f"stopped on {stop_signal.name}" in started.text()
    assert list((started.local / "run").glob("*.pid")) == []
    for pid in pids.values():  # every process it started is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_started_with_sigint_ignored_stops_on_the_signal_and_leaves_nothing_running(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    started = start("run", tmp_path / "local", tmp_path / "out.txt")
    assert set(started.pids()) == {"azurite", "emulator", "devhost"}
    health = requests.get(f"http://127.0.0.1:{started.host_port}/api/health", timeout=10)
    assert health.status_code == 200

    stop_and_check_nothing_is_left(started, stop_signal)


def test_services_start_azurite_and_the_emulator_only_print_the_settings_and_keep_the_state_across_restarts(
    tmp_path: Path,
) -> None:
    local = tmp_path / "local"
    started = start("services", local, tmp_path / "first.txt")
    assert set(started.pids()) == {"azurite", "emulator"}
    bundle = local / "emulator" / "ca-bundle.pem"
    text = started.text()
    assert f"GRAPH_BASE_URL=https://localhost:{started.emulator_port}/v1.0" in text
    assert f"REQUESTS_CA_BUNDLE={bundle}" in text
    assert ". .venv/bin/activate && func start" in text
    discovery = f"https://localhost:{started.emulator_port}/contoso.example/v2.0/.well-known/openid-configuration"
    assert requests.get(discovery, verify=str(bundle), timeout=10).status_code == 200
    gmail = re.search(r"GMAIL_BASE_URL=(https://localhost:\d+)", text)
    assert gmail is not None, text  # the Google emulator runs beside it, and the app's settings name it
    google = requests.get(f"{gmail[1]}/.well-known/openid-configuration", verify=str(bundle), timeout=10)
    assert google.json()["token_endpoint"] == f"{gmail[1]}/token"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{started.host_port}/api/health", timeout=5)
    stop_and_check_nothing_is_left(started, signal.SIGINT)
    assert "state restored" not in text

    again = start("services", local, tmp_path / "second.txt")
    assert f"Emulator state restored from {local / 'emulator' / 'state.pickle'}" in again.text()
    stop_and_check_nothing_is_left(again, signal.SIGTERM)


def test_run_restarted_twice_keeps_a_connected_mailbox_syncing_without_a_reconnect(tmp_path: Path) -> None:
    """``make run``'s own path (persistent Azurite and emulator under one folder), stopped and started again
    twice: mail delivered after each restart is stored after Sync now, and the mailbox stays active."""
    local, ports = tmp_path / "local", Ports.free()
    origin = f"http://127.0.0.1:{ports.host}"
    url = lambda path: f"{origin}/api/{path.lstrip('/')}"  # noqa: E731
    # An app registration whose redirect URIs are on this host's free port (the demo one names 7071).
    client_id, secret = str(uuid.uuid4()), f"secret-{uuid.uuid4().hex}"
    app_env = {"GRAPH_CLIENT_ID": client_id, "GRAPH_CLIENT_SECRET": secret, "PUBLIC_BASE_URL": origin}
    org, upn, dan = "org-" + uuid.uuid4().hex[:12], "adele@contoso.example", "dan@talent.example"
    api = requests.Session()

    def emulator() -> EmulatorClient:
        return EmulatorClient(f"https://localhost:{ports.emulator}", local / "emulator" / "ca-bundle.pem")

    def deliver_sync_and_see(mailbox_id: str, subject: str) -> None:
        emulator().deliver(upn, from_=f"Dan <{dan}>", to=[upn], subject=subject)
        assert api.post(url(f"orgs/{org}/mailboxes/{mailbox_id}/sync"), timeout=30).status_code == 202
        deadline = time.monotonic() + 60
        while True:
            listed = api.get(url(f"orgs/{org}/records/cand-dan/activities"), timeout=30).json()["activities"]
            if subject in [a["subject"] for a in listed]:
                return
            assert time.monotonic() < deadline, f"{subject!r} was never stored: {listed}"
            time.sleep(0.2)

    started = start("run", local, tmp_path / "run-0.txt", ports, app_env)
    try:
        redirect_uris = [url("auth/callback"), url("auth/admin-consent/callback")]
        emulator().create_app(client_id, secret, redirect_uris, ["Mail.Read", "User.Read.All"])
        settings = {"internal_domains": ["contoso.example"], "return_url_allow_list": ["https://crm.example/app"]}
        assert api.put(url(f"orgs/{org}/settings"), json=settings, timeout=30).status_code == 200
        record = {"type": "candidate", "name": "Dan", "emails": [dan]}
        assert api.put(url(f"orgs/{org}/records/cand-dan"), json=record, timeout=30).status_code == 200
        mailbox_id = connect_flow.connect(api, url, emulator(), org, upn, return_url="https://crm.example/app/x")
        deliver_sync_and_see(mailbox_id, "before any restart")
    finally:
        stop_and_check_nothing_is_left(started, signal.SIGTERM)

    for restart in (1, 2):
        started = start("run", local, tmp_path / f"run-{restart}.txt", ports, app_env)
        try:
            assert "Emulator state restored" in started.text()
            deliver_sync_and_see(mailbox_id, f"after restart {restart}")
            mailbox = api.get(url(f"orgs/{org}/mailboxes/{mailbox_id}"), timeout=30).json()
            assert mailbox["status"] == "active", mailbox
        finally:
            stop_and_check_nothing_is_left(started, signal.SIGINT)
    api.close()
