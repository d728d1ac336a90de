"""The real function_app, run by the local Functions host, against Azurite and the HTTPS emulator.

* ``app_host`` (session): a LocalHost on a free port with the app's settings pointing at the test
  Azurite, the emulator (one app registration whose redirect URIs are this host's callbacks) and a
  per-session table prefix. Function keys are enforced.
* ``api`` (session): a requests Session with the function key, and ``url(path)`` for ``/api/...``.
* ``org`` (function): a fresh org id, so tests never see each other's data in the shared tables.

The host also reaches the Google emulator (``google_emulator``): its Google settings point there, with
an OAuth client whose redirect URI is this host's callback (``google_client_id``), and
``REQUESTS_CA_BUNDLE`` trusts both emulators' CAs.
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
from emulator.google.server import GoogleEmulatorServer
from emulator.server import EmulatorServer
from tests.app_settings import register_app
from tools.azurite import free_port
from tools.mailserver import MailServer

ROOT = Path(__file__).resolve().parents[2]
FUNCTION_KEY = "e2e-function-key"
GOOGLE_TOPIC = "projects/crm-e2e/topics/gmail"  # the Pub/Sub topic Gmail watches publish to
GOOGLE_PUSHER = "gmail-push@crm-e2e.iam.gserviceaccount.com"  # its push subscription's service account


@dataclass(frozen=True)
class AppUnderTest:
    host: LocalHost
    origin: str
    client_id: str
    client_secret: str
    google_client_id: str = ""

    def url(self, path: str) -> str:
        return f"{self.origin}/api/{path.lstrip('/')}"


@pytest.fixture(scope="session")
def app_host(
    storage_connection_string: str,
    emulator: EmulatorServer,
    emulator_client: EmulatorClient,
    google_emulator: GoogleEmulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    mail_server: MailServer,
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
        **register_google_client(google_emulator, origin, tmp_path_factory.mktemp("ca"), app.settings),
        # IMAP/SMTP mailboxes on the test Dovecot: its certificate is from its own local CA.
        "MAIL_SERVER_CA_BUNDLE": str(mail_server.ca_pem),
    }
    with LocalHost(ROOT, port=port, settings=settings, run_timers=False) as host:
        yield AppUnderTest(host, origin, app.client_id, app.client_secret, settings["GOOGLE_CLIENT_ID"])


def register_google_client(
    google: GoogleEmulatorServer, origin: str, directory: Path, settings: dict[str, str]
) -> dict[str, str]:
    """An OAuth client at the Google emulator for this host's callback, and the Google settings."""
    control = requests.Session()
    control.verify, control.trust_env = str(google.ca_bundle_path), False
    answer = control.post(f"{google.url}/_emulator/clients", json={"redirect_uris": [f"{origin}/api/auth/callback"]})
    assert answer.status_code == 201, answer.text
    control.close()
    bundle = directory / "ca-bundle.pem"
    bundle.write_bytes(Path(settings["REQUESTS_CA_BUNDLE"]).read_bytes() + google.tls.ca_pem.read_bytes())
    return {
        **google.settings(),
        "GOOGLE_PUBSUB_TOPIC": GOOGLE_TOPIC,
        "GOOGLE_PUSH_SERVICE_ACCOUNT": GOOGLE_PUSHER,
        "GOOGLE_CLIENT_ID": answer.json()["client_id"],
        "GOOGLE_CLIENT_SECRET": answer.json()["client_secret"],
        "REQUESTS_CA_BUNDLE": str(bundle),
    }


@pytest.fixture(scope="session")
def api(app_host: AppUnderTest) -> Iterator[requests.Session]:
    session = requests.Session()
    session.headers["x-functions-key"] = FUNCTION_KEY
    yield session
    session.close()


@pytest.fixture
def org() -> str:
    return "org-" + uuid.uuid4().hex[:12]
