"""Fixtures for the local Functions host tests (all prefixed ``devhost_``).

Azurite comes from the suite-wide ``storage_connection_string`` fixture (tests/conftest.py:
a real Azurite on free ports, telemetry off). Each test gets its own copy of the sample app
with its own queue names, so tests never share queues, even under pytest-xdist.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from devhost import LocalHost

SAMPLE_APP = Path(__file__).parent / "sample_app"

#: Small queue settings so retries and poison handling take well under a second.
HOST_JSON: dict[str, Any] = {
    "version": "2.0",
    "extensions": {
        "http": {"routePrefix": "api"},
        "queues": {
            "batchSize": 4,
            "newBatchThreshold": 2,
            "maxPollingInterval": "00:00:01",
            "visibilityTimeout": "00:00:00",
            "maxDequeueCount": 2,
            "messageEncoding": "base64",
        },
    },
}

YEARLY = "0 0 0 1 1 *"


@pytest.fixture(scope="session")
def devhost_azurite(storage_connection_string: str) -> str:
    """Connection string of the session's Azurite."""
    return storage_connection_string


@pytest.fixture
def devhost_app_dir(tmp_path: Path, devhost_azurite: str) -> Path:
    """A fresh copy of the sample app with host.json and local.settings.json."""
    app_dir = tmp_path / "app"
    shutil.copytree(SAMPLE_APP, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    suffix = uuid.uuid4().hex[:10]
    (app_dir / "host.json").write_text(json.dumps(HOST_JSON))
    values = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": devhost_azurite,
        "TICK_SCHEDULE": YEARLY,
        "WORK_QUEUE": f"work-{suffix}",
        "DONE_QUEUE": f"done-{suffix}",
        "GREETING": "from-file",
        "OVERRIDDEN": "from-file",
    }
    (app_dir / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    return app_dir


def devhost_values(app_dir: Path) -> dict[str, str]:
    values: dict[str, str] = json.loads((app_dir / "local.settings.json").read_text())["Values"]
    return values


@pytest.fixture
def devhost_queue_options(devhost_app_dir: Path) -> Callable[..., None]:
    """Change ``extensions.queues`` of the copied app's host.json (before starting a host)."""

    def update(**queues: Any) -> None:
        data = json.loads((devhost_app_dir / "host.json").read_text())
        data["extensions"]["queues"].update(queues)
        (devhost_app_dir / "host.json").write_text(json.dumps(data))

    return update


@pytest.fixture
def devhost_start(devhost_app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., LocalHost]]:
    """Factory: start a LocalHost on the copied sample app; all are stopped after the test."""
    monkeypatch.delenv("LOCAL_FUNCTIONS_KEY", raising=False)
    started: list[LocalHost] = []

    def start(settings: dict[str, str] | None = None, **kwargs: Any) -> LocalHost:
        host = LocalHost(devhost_app_dir, settings=settings, **kwargs)
        started.append(host.start())
        return host

    yield start
    for host in reversed(started):
        host.stop()


@pytest.fixture
def devhost_queue(devhost_app_dir: Path, devhost_azurite: str) -> Callable[[str], QueueClient]:
    """Client for a sample-app queue by setting name (``WORK_QUEUE``/``DONE_QUEUE``) or name."""
    values = devhost_values(devhost_app_dir)

    def client(name: str) -> QueueClient:
        return QueueClient.from_connection_string(devhost_azurite, values.get(name, name))

    return client


@pytest.fixture
def devhost_events() -> Callable[[LocalHost, str], list[dict[str, Any]]]:
    """``events(host, kind)``: what the sample app recorded (in-process hosts only)."""

    def events(host: LocalHost, kind: str) -> list[dict[str, Any]]:
        assert host.module is not None
        return [dict(e) for e in host.module.EVENTS if e["kind"] == kind]

    return events
