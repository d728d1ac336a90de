"""Fixtures of the Google emulator's tests: the session's ``google_emulator`` (tests/conftest.py) and,
per test, a fresh Workspace domain with users ada and bob, a consumer user and an OAuth client
(``World``) — so tests never see each other's state. Everything goes through HTTPS with plain
``requests``; faults and settings are restored after each test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests

from emulator.google.server import GoogleEmulatorServer
from tests.emulator.google.world import REDIRECT_URI, World


@pytest.fixture
def world(google_emulator: GoogleEmulatorServer) -> Iterator[World]:
    google = google_emulator
    http = requests.Session()
    http.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override ``verify``
    http.verify = str(google.ca_bundle_path)
    domain = f"w{uuid.uuid4().hex[:10]}.example"
    world = World(google.url, http, domain, "", "", f"c{uuid.uuid4().hex[:8]}@gmail.example")
    world.defaults = world.control("GET", "config").json()
    assert world.control("POST", "domains", {"domain": domain}).status_code == 201
    for email in (world.ada, world.bob, world.consumer):
        assert world.control("POST", "users", {"email": email}).status_code == 201
    client = world.control("POST", "clients", {"redirect_uris": [REDIRECT_URI]}).json()
    world.client_id, world.client_secret = client["client_id"], client["client_secret"]
    yield world
    world.control("DELETE", "faults")
    world.control("PUT", "config", world.defaults)
    http.close()
