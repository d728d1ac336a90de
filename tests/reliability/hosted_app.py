"""The real function_app in the local Functions host, as its own process (``logged_host``), against the
test Azurite and the worker's emulator: one app registration whose redirect URIs are this host's callbacks,
a per-session table prefix and queue, enforced function keys, and every log record of the process written
to a JSON-lines file (:meth:`HostedApp.log_records`).

A separate process, not tests/e2e's in-process ``LocalHost``: there can be one LocalHost per process, and
the log scan must see the app's records only (the emulator logs on threads of the pytest process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueClient

from emulator.client import EmulatorClient
from emulator.server import EmulatorServer
from tests import connect_flow
from tests.app_settings import register_app
from tools.azurite import free_port

ROOT = Path(__file__).resolve().parents[2]
FUNCTION_KEY = "reliability-function-key-" + uuid.uuid4().hex[:8]
START_TIMEOUT = 60.0
APP_SETTING_PREFIXES = (
    "AzureWebJobs", "FUNCTIONS_", "GRAPH_", "TABLE_", "SYNC_", "TOKEN_", "PUBLIC_", "LOCAL_FUNCTIONS", "WEBHOOK",
    "PUSH", "INGEST_", "TEST_STORAGE", "REQUESTS_CA_BUNDLE", "GOOGLE_", "GMAIL_", "MAIL_SERVER",
)


@dataclass
class HostedApp:
    process: subprocess.Popen[str]
    origin: str
    settings: dict[str, str]
    log_file: Path
    stderr_file: Path
    api: requests.Session = field(default_factory=requests.Session)

    @property
    def client_id(self) -> str:
        return self.settings["GRAPH_CLIENT_ID"]

    @property
    def client_secret(self) -> str:
        return self.settings["GRAPH_CLIENT_SECRET"]

    @property
    def prefix(self) -> str:
        return self.settings["TABLE_PREFIX"]

    def url(self, path: str) -> str:
        return f"{self.origin}/api/{path.lstrip('/')}"

    def log_records(self) -> list[dict[str, Any]]:
        lines = self.log_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def tables(self) -> TableServiceClient:
        return TableServiceClient.from_connection_string(self.settings["AzureWebJobsStorage"])

    def queue_empty(self) -> bool:
        settings = self.settings
        queue = QueueClient.from_connection_string(settings["AzureWebJobsStorage"], settings["SYNC_QUEUE_NAME"])
        try:
            return int(queue.get_queue_properties().approximate_message_count or 0) == 0
        except Exception:  # the queue does not exist yet: nothing was ever enqueued
            return True
        finally:
            queue.close()

    def wait_for(self, check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"hosted app: no {what} within {timeout} s")
            time.sleep(0.2)

    def connect(self, emulator_client: EmulatorClient, org: str, upn: str, return_url: str) -> str:
        """The CRM's "Connect mailbox": POST connect, sign in on the emulator's page, come back with a
        connect code and confirm it; returns the new mailbox's id."""
        return connect_flow.connect(self.api, self.url, emulator_client, org, upn, return_url=return_url)

    def stop(self) -> None:
        self.api.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_hosted_app(
    storage_connection_string: str, emulator: EmulatorServer, emulator_client: EmulatorClient, workdir: Path
) -> HostedApp:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    settings = register_app(
        "rel", origin, function_key=FUNCTION_KEY, storage_connection_string=storage_connection_string,
        emulator=emulator, emulator_client=emulator_client,
    ).settings
    log_file, stderr_file = workdir / "app-log.jsonl", workdir / "app-stderr.txt"
    # App settings only from here: not from an in-process host of tests/e2e, whose settings sit in
    # os.environ while it runs, nor from the developer's shell.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(APP_SETTING_PREFIXES)}
    env = {**inherited, **settings, "PYTHONPATH": str(ROOT)}
    with stderr_file.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.logged_host", "--log-file", str(log_file), "--port", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    app = HostedApp(process, origin, settings, log_file, stderr_file)
    app.api.headers["x-functions-key"] = FUNCTION_KEY
    ready = threading.Event()

    def read_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:  # keep draining, so the pipe never fills
            if line.startswith("devhost ready"):
                ready.set()

    threading.Thread(target=read_stdout, name="hosted-app-stdout", daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            app.stop()
            raise RuntimeError(f"the hosted app did not start: {stderr_file.read_text()[-2000:]}")
    return app
