"""Fixtures shared by every test folder: a real Azurite, the HTTPS Graph/identity emulator, and
per-test table-name prefixes and emulator tenants.

``make test`` starts Azurite once and passes ``TEST_STORAGE_CONNECTION_STRING``; run directly, pytest
starts its own Azurite on free ports for the session. Each pytest worker runs one emulator on a thread:

* ``emulator`` (session): an :class:`EmulatorServer` on a free port.
* ``emulator_client`` (session): an :class:`EmulatorClient` for the control API.
* ``google_emulator`` (session): the Google emulator (:class:`GoogleEmulatorServer`) on a free port;
  its control API is ``{url}/_emulator`` (tests/emulator/google/conftest.py shows a per-test setup).
* ``mail_server`` (session): the real Dovecot (IMAP, IMAPS, LMTP) + SMTP submission server of
  ``tools/mailserver.py``: ``make test`` starts one and passes ``TEST_MAILSERVER``; run directly, pytest
  starts its own. Host, ports and CA in ``describe()``; ``add_user``, ``deliver`` (LMTP) and ``rawlog``
  (the IMAP command trace). Tests never share a user: each adds its own with a unique address.
* ``tenant`` (function): a fresh tenant with a unique domain, users ``adele`` (alias ``adele.vance@...``),
  ``megan`` and the shared mailbox ``sales``, its own app registration, and MSAL helpers. Tests never
  reset the shared emulator: each works in its own tenant, and ``tenant`` restores the emulator settings
  and clears injected faults afterwards.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.client import EmulatorClient, EmulatorTenant
from emulator.google.server import GoogleEmulatorServer
from emulator.server import EmulatorServer
from tools import mailserver
from tools.azurite import start_azurite


@pytest.fixture(scope="session")
def storage_connection_string(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("TEST_STORAGE_CONNECTION_STRING")
    if given:
        yield given
        return
    azurite = start_azurite(Path(tmp_path_factory.mktemp("azurite")), in_memory=True)
    try:
        yield azurite.connection_string
    finally:
        azurite.stop()


@pytest.fixture(scope="session")
def mail_server() -> Iterator[mailserver.MailServer]:
    given = os.environ.get("TEST_MAILSERVER")
    if given:
        yield mailserver.MailServer.attach(given)
        return
    # Under .local (not pytest's private temp folder): Dovecot may run as another user that must read it.
    root = mailserver.ROOT / ".local" / f"mailserver-pytest-{os.getpid()}"
    with mailserver.running(root) as server:
        yield server
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def table_prefix() -> str:
    """A unique, valid table-name prefix, so tests never see each other's tables."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    with EmulatorServer(port=0, state_dir=Path(tmp_path_factory.mktemp("emulator"))) as server:
        yield server


@pytest.fixture(scope="session")
def google_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoogleEmulatorServer]:
    with GoogleEmulatorServer(port=0, state_dir=Path(tmp_path_factory.mktemp("google-emulator"))) as server:
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
