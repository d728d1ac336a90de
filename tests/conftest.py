"""Fixtures shared by every test folder: a real Azurite, and per-test table/queue name prefixes.

``make test`` starts Azurite once and passes ``TEST_STORAGE_CONNECTION_STRING``; run directly, pytest
starts its own Azurite on free ports for the session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def table_prefix() -> str:
    """A unique, valid table-name prefix, so tests never see each other's tables."""
    return "t" + uuid.uuid4().hex[:12]
