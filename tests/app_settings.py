"""The app registration and settings a test runs the real function_app with, against the emulator and
Azurite (tests/e2e's in-process host and tests/reliability's host in a subprocess)."""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass

from emulator.client import EmulatorClient
from emulator.server import EmulatorServer


@dataclass(frozen=True)
class AppSettings:
    client_id: str
    client_secret: str
    settings: dict[str, str]


def register_app(
    label: str,
    origin: str,
    *,
    function_key: str,
    storage_connection_string: str,
    emulator: EmulatorServer,
    emulator_client: EmulatorClient,
) -> AppSettings:
    """Register a fresh app (its redirect URIs on ``origin``) with the emulator, and the app settings
    that run function_app against it: tables and sync queue of its own (named after ``label``), a new
    token encryption key, and ``function_key`` for function-level routes."""
    client_id, secret = str(uuid.uuid4()), f"secret-{uuid.uuid4().hex}"
    emulator_client.create_app(
        client_id,
        secret,
        [f"{origin}/api/auth/callback", f"{origin}/api/auth/admin-consent/callback"],
        ["Mail.Read", "User.Read.All"],
    )
    settings = {
        "AzureWebJobsStorage": storage_connection_string,
        "TABLE_PREFIX": label + uuid.uuid4().hex[:8],
        "SYNC_QUEUE_NAME": f"{label}-sync-" + uuid.uuid4().hex[:8],
        "GRAPH_CLIENT_ID": client_id,
        "GRAPH_CLIENT_SECRET": secret,
        "GRAPH_AUTHORITY_HOST": emulator.url,
        "GRAPH_BASE_URL": emulator.graph_url,
        "REQUESTS_CA_BUNDLE": str(emulator.ca_bundle_path),
        "PUBLIC_BASE_URL": origin,
        "TOKEN_ENCRYPTION_KEY": f"{label}:" + base64.b64encode(os.urandom(32)).decode(),
        "LOCAL_FUNCTIONS_KEY": function_key,
    }
    return AppSettings(client_id, secret, settings)
