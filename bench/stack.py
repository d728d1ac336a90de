"""The stack every benchmark runs against: an in-memory Azurite and the HTTPS Graph/identity emulator, each
in a process of its own (so their CPU never counts as the engine's), plus helpers to fill them.

Nothing here uses ``.local/run``'s ``azurite``/``emulator`` pid names, so ``make run`` may keep running.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulator.client import EmulatorClient, EmulatorTenant
from tools.azurite import free_port, start_azurite
from tools.stack import child

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".local" / "bench"
# Azurite keeps every entity in memory; the records benchmark needs more than node's default heap.
AZURITE_HEAP_MB = 12_000


@dataclass(frozen=True)
class Stack:
    emulator_url: str
    ca_bundle: Path
    storage: str  # Azurite connection string

    @property
    def graph_url(self) -> str:
        return f"{self.emulator_url}/v1.0"

    def client(self) -> EmulatorClient:
        return EmulatorClient(self.emulator_url, self.ca_bundle)

    def worker_env(self) -> dict[str, str]:
        """What a worker process needs to find the stack (and to trust the emulator like production)."""
        return {
            "BENCH_EMULATOR_URL": self.emulator_url,
            "BENCH_CA_BUNDLE": str(self.ca_bundle),
            "BENCH_STORAGE": self.storage,
            "REQUESTS_CA_BUNDLE": str(self.ca_bundle),
        }

    @classmethod
    def from_env(cls) -> Stack:
        return cls(os.environ["BENCH_EMULATOR_URL"], Path(os.environ["BENCH_CA_BUNDLE"]), os.environ["BENCH_STORAGE"])


@contextmanager
def running_stack() -> Iterator[Stack]:
    """Start Azurite (in memory) and the emulator on free ports; stop both on exit."""
    with ExitStack() as stack:
        heap = f"--max-old-space-size={AZURITE_HEAP_MB}"
        previous = os.environ.get("NODE_OPTIONS")
        os.environ["NODE_OPTIONS"] = f"{previous} {heap}".strip() if previous else heap
        try:
            azurite = start_azurite(WORK / "azurite", in_memory=True)
        finally:
            if previous is None:
                os.environ.pop("NODE_OPTIONS", None)
            else:
                os.environ["NODE_OPTIONS"] = previous
        stack.callback(azurite.stop)
        port = free_port()
        state_dir = WORK / "emulator"
        args = [sys.executable, "-m", "emulator", "--port", str(port), "--state-dir", str(state_dir)]
        stack.enter_context(child("bench-emulator", args, dict(os.environ), ready="emulator ready"))
        yield Stack(f"https://localhost:{port}", state_dir / "ca-bundle.pem", azurite.connection_string)


def deliver_all(stack: Stack, messages: Sequence[tuple[str, dict[str, Any]]], threads: int = 4) -> None:
    """Deliver (user, fields) messages through the control API, ``threads`` at a time (one client each)."""
    clients = [stack.client() for _ in range(threads)]
    chunks = [messages[n::threads] for n in range(threads)]

    def deliver(index: int) -> None:
        for user, message in chunks[index]:
            clients[index].deliver(user, **message)

    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(deliver, range(threads)))
    finally:
        for client in clients:
            client.session.close()


def consented_tenant(client: EmulatorClient, label: str) -> EmulatorTenant:
    tenant = client.provision_tenant(label)
    tenant.consent_as_admin()
    return tenant


def tenant_with_users(client: EmulatorClient, label: str, count: int) -> tuple[EmulatorTenant, list[list[str]]]:
    """A consented tenant with ``count`` more users; returns it and ``[mailbox_id, address, user_id]`` of
    each new user."""
    tenant = consented_tenant(client, label)
    users = []
    for n in range(count):
        address = f"user{n:05d}@{tenant.domain}"
        created = client.create_user(tenant.id, address, mail=address, display_name=f"User {n}")
        users.append([f"mb-{n:05d}", address, str(created["id"])])
    return tenant, users
