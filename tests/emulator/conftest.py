"""Fixtures for tests of the Graph/identity emulator, all over real HTTPS with unchanged MSAL.

* ``emulator`` (session): an :class:`EmulatorServer` on a free port, serving on a thread.
* ``emulator_client`` (session): an :class:`EmulatorClient` for the control API.
* ``tenant`` (function): an :class:`emulator.client.EmulatorTenant`: a fresh tenant with a unique domain,
  users ``adele`` (alias ``adele.vance@...``), ``megan`` and the shared mailbox ``sales``, its own app
  registration, and MSAL helpers (``sign_in``, ``delegated_token``, ``app_token``, ``graph``).

Tests share one emulator, so they never reset it: each works in its own tenant, and ``tenant`` restores
the emulator settings and clears injected faults afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.client import EmulatorClient, EmulatorTenant
from emulator.server import EmulatorServer


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    with EmulatorServer(port=0, state_dir=Path(tmp_path_factory.mktemp("emulator"))) as server:
        yield server


@pytest.fixture(scope="session")
def emulator_client(emulator: EmulatorServer) -> Iterator[EmulatorClient]:
    client = EmulatorClient(emulator.url, emulator.ca_bundle_path)
    yield client
    client.session.close()


@pytest.fixture
def tenant(emulator_client: EmulatorClient, request: pytest.FixtureRequest) -> Iterator[EmulatorTenant]:
    settings = emulator_client.config()
    provisioned = emulator_client.provision_tenant(request.node.name)
    yield provisioned
    provisioned.session.close()
    emulator_client.clear_faults()
    emulator_client.configure(**settings)
