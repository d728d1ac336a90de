"""Soak: many rounds of mail and faults against one mailbox, then the same end-state check the reliability
tests make (``tests.reliability.rel_env.assert_converged``). Not run by ``make test``.

    python -m bench.soak_sync_faults [--rounds 60] [--minutes 10] [--seed 7]

Each round delivers a random mix (matched, unmatched, sent, older than the watermark), injects a random
set of faults (429 with and without Retry-After, 503/504, slow answers past the read timeout, dropped
connections, lost delta state after a random page, a crash before or after a page's write) and runs one
to three workers at once. Every run must end ``done``, ``more``, ``busy`` or with the injected crash;
at the end the faults are cleared, one run catches up, and every matched message must be stored exactly
once. Bounded in rounds and in time; it starts its own Azurite (in memory) and emulator, on loopback only.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.data.tables import TableServiceClient

from emulator.client import EmulatorClient
from emulator.server import EmulatorServer
from sync_core.domain.model import Activity
from sync_core.ports import ActivityStore, ActivityWrite, DeltaPage
from tests.reliability.rel_env import GraphOptions, Ledger, RelEnv, Waits, assert_converged
from tools.azurite import start_azurite

FAULTS = (
    {"status": 429, "retry_after": 1},
    {"status": 429},
    {"status": 503},
    {"status": 504, "retry_after": 1},
    {"drop_connection": True},
    {"delay_ms": 700},
)


class Crash(RuntimeError):
    pass


class CrashingActivities:
    """The real activity store, raising before or after its n-th save (a worker dying there)."""

    def __init__(self, inner: ActivityStore, on_save: int, after_write: bool) -> None:
        self.inner, self.on_save, self.after_write, self.saves = inner, on_save, after_write, 0

    def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
        self.saves += 1
        if self.saves == self.on_save and not self.after_write:
            raise Crash("before the write")
        written = self.inner.save(activities, announce_at)
        if self.saves == self.on_save:
            raise Crash("after the write, before the checkpoint")
        return written

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def one_round(env: RelEnv, ledger: Ledger, chooser: random.Random, outcomes: Counter[str]) -> None:
    for _ in range(chooser.randint(3, 15)):
        kind = chooser.choice(("matched", "matched", "matched", "unmatched", "sent", "old"))
        getattr(ledger, kind)()
    user = env.user_id("adele")
    for _ in range(chooser.randint(0, 4)):
        env.client.add_fault(count=1, mailbox=user, **chooser.choice(FAULTS))
    lose_at = chooser.choice((0, 0, 0, 1, 2, 3))

    def after_page(page: int, _delta: DeltaPage) -> None:
        if page == lose_at:
            env.client.expire_delta_tokens(user)

    crash = chooser.random() < 0.2
    activities = CrashingActivities(env.stores.activities, chooser.randint(1, 3), chooser.random() < 0.5)
    workers = chooser.choice((1, 1, 2, 3))
    lock = threading.Lock()

    def work(first: bool) -> None:
        try:
            outcome = env.run(
                page_size=chooser.choice((3, 5, 10)),
                graph=GraphOptions(timeout=(3.0, 0.4), waits=Waits()),
                after_page=after_page,
                activities=activities if crash and first else None,  # type: ignore[arg-type]
                budget=timedelta(seconds=20),
            )
            status = outcome.status
        except Crash:
            status = "crashed"
        with lock:
            outcomes[status] += 1

    threads = [threading.Thread(target=work, args=(n == 0,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_sync_faults")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    chooser, outcomes = random.Random(args.seed), Counter[str]()
    deadline = time.monotonic() + args.minutes * 60
    with tempfile.TemporaryDirectory() as work:
        azurite = start_azurite(Path(work) / "azurite", in_memory=True)
        emulator = EmulatorServer(port=0, state_dir=Path(work) / "emulator").start()
        os.environ["REQUESTS_CA_BUNDLE"] = str(emulator.ca_bundle_path)  # how production trusts a private CA
        try:
            client = EmulatorClient(emulator.url, emulator.ca_bundle_path)
            tenant = client.provision_tenant("soak")
            service = TableServiceClient.from_connection_string(azurite.connection_string)
            env = RelEnv(
                tenant=tenant, client=client, service=service, prefix="soak" + str(args.seed),
                ca_bundle=str(emulator.ca_bundle_path),
                watermark=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6),
            )  # fmt: skip
            ledger = Ledger(env)
            rounds = 0
            while rounds < args.rounds and time.monotonic() < deadline:
                one_round(env, ledger, chooser, outcomes)
                rounds += 1
            client.clear_faults()
            # Caught up: a run that reaches its delta links, then one more poll for mail that arrived
            # while the last round's runs were paging.
            final = [env.run(page_size=10) for _ in range(3)]
            assert all(run.status == "done" for run in final), final
            stored = assert_converged(env, ledger)
            summary = f"{rounds} rounds, {len(ledger.items)} messages, {len(stored)} activities, runs {dict(outcomes)}"
            print("soak:", summary)
            env.close()
        finally:
            emulator.stop()
            azurite.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
