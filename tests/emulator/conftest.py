"""Fixtures shared by the emulator's Graph mail tests: a delegated token of the tenant's user adele, and
her user id."""

from __future__ import annotations

import pytest

from emulator.client import EmulatorTenant


@pytest.fixture
def token(tenant: EmulatorTenant) -> str:
    return tenant.delegated_token("adele")


@pytest.fixture
def adele(tenant: EmulatorTenant) -> str:
    return tenant.users["adele"].id
