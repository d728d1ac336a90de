"""Fixtures of the reliability tests (helpers live in ``rel_env``, ``hosted_app``):

* ``rel`` (function): a :class:`RelEnv` on the session's Azurite and the worker's emulator, in a fresh
  tenant and table prefix.
* ``own_azurite`` (function): a dedicated Azurite with a persistent location, which a test may stop and
  start again on the same ports (its data survives the restart); ``rel_on(service)`` builds a RelEnv on it.
* ``hosted`` (session): the real function_app in the local Functions host, run as a separate process (so
  its log records are its own and it never meets the in-process host of tests/e2e), see ``hosted_app``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient

from emulator.client import EmulatorClient, EmulatorTenant
from emulator.server import EmulatorServer
from tests.reliability.hosted_app import HostedApp, start_hosted_app
from tests.reliability.rel_env import RelEnv
from tools.azurite import Azurite, start_azurite


def build_env(tenant: EmulatorTenant, emulator: EmulatorServer, service: TableServiceClient, prefix: str) -> RelEnv:
    return RelEnv(
        tenant=tenant,
        client=tenant.client,
        service=service,
        prefix=prefix,
        ca_bundle=str(emulator.ca_bundle_path),
        watermark=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6),
    )


def drop_tables(service: TableServiceClient, prefix: str) -> None:
    for table in service.list_tables():
        if table.name.startswith(prefix):
            service.delete_table(table.name)


@pytest.fixture
def rel(
    tenant: EmulatorTenant,
    emulator: EmulatorServer,
    storage_connection_string: str,
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[RelEnv]:
    # Production trusts the emulator this way: requests reads REQUESTS_CA_BUNDLE at request time.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.ca_bundle_path))
    service = TableServiceClient.from_connection_string(storage_connection_string)
    env = build_env(tenant, emulator, service, table_prefix)
    try:
        yield env
    finally:
        env.close()
        drop_tables(service, table_prefix)


class AzuriteControl:
    """A dedicated Azurite with a persistent location; ``stop()`` and ``start()`` again on the same ports."""

    def __init__(self, location: Path) -> None:
        self.location = location
        self.current: Azurite | None = start_azurite(location)  # --location: a restart keeps the data
        self.ports = (self.current.blob_port, self.current.queue_port, self.current.table_port)
        self.connection_string = self.current.connection_string

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None

    def start(self) -> None:
        if self.current is None:
            self.current = start_azurite(self.location, ports=self.ports)


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[AzuriteControl]:
    control = AzuriteControl(tmp_path / "azurite")
    try:
        yield control
    finally:
        control.stop()


@pytest.fixture
def rel_on(
    tenant: EmulatorTenant, emulator: EmulatorServer, table_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[TableServiceClient], RelEnv]]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.ca_bundle_path))
    built: list[RelEnv] = []

    def make(service: TableServiceClient) -> RelEnv:
        built.append(build_env(tenant, emulator, service, table_prefix))
        return built[-1]

    yield make
    for env in built:
        env.close()


@pytest.fixture(scope="session")
def hosted(
    storage_connection_string: str,
    emulator: EmulatorServer,
    emulator_client: EmulatorClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HostedApp]:
    app = start_hosted_app(storage_connection_string, emulator, emulator_client, tmp_path_factory.mktemp("hosted"))
    try:
        yield app
    finally:
        app.stop()
