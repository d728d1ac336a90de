"""The real function_app, run by the local Functions host, against Azurite and the HTTPS emulator.

* ``app_host`` (session): a LocalHost on a free port with the app's settings pointing at the test
  Azurite, the emulator (one app registration whose redirect URIs are this host's callbacks) and a
  per-session table prefix. Function keys are enforced.
* ``api`` (session): a requests Session with the function key, and ``url(path)`` for ``/api/...``.
* ``org`` (function): a fresh org id, so tests never see each other's data in the shared tables.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from devhost import LocalHost
from emulator.client import EmulatorClient
from emulator.server import EmulatorServer
from tests.app_settings import register_app
from tools.azurite import free_port
from tools.mailserver import MailServer

ROOT = Path(__file__).resolve().parents[2]
FUNCTION_KEY = "e2e-function-key"


@dataclass(frozen=True)
class AppUnderTest:
    host: LocalHost
    origin: str
    client_id: str
    client_secret: str

    def url(self, path: str) -> str:
        return f"{self.origin}/api/{path.lstrip('/')}"


@pytest.fixture(scope="session")
def app_host(
    storage_connection_string: str, emulator: EmulatorServer, emulator_client: EmulatorClient, mail_server: MailServer
) -> Iterator[AppUnderTest]:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    app = register_app(
        "e2e", origin, function_key=FUNCTION_KEY, storage_connection_string=storage_connection_string,
        emulator=emulator, emulator_client=emulator_client,
    )
    settings = {
        **app.settings,
        # This host is plain http on loopback: allow Graph subscriptions to it and CRM webhooks to local
        # test receivers, exactly the documented local-demo settings.
        "GRAPH_NOTIFICATIONS_ALLOW_HTTP": "true",
        "WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
        # IMAP/SMTP mailboxes on the test Dovecot: its certificate is from its own local CA.
        "MAIL_SERVER_CA_BUNDLE": str(mail_server.ca_pem),
    }
    with LocalHost(ROOT, port=port, settings=settings, run_timers=False) as host:
        yield AppUnderTest(host, origin, app.client_id, app.client_secret)


@pytest.fixture(scope="session")
def api(app_host: AppUnderTest) -> Iterator[requests.Session]:
    session = requests.Session()
    session.headers["x-functions-key"] = FUNCTION_KEY
    yield session
    session.close()


@pytest.fixture
def org() -> str:
    return "org-" + uuid.uuid4().hex[:12]
