"""A worker killed with SIGKILL between writing a page's activities and checkpointing it; two and more
workers racing on one mailbox; duplicate queue messages through the product's queue handler. Each ends
with ``assert_converged`` (see test_faults_during_sync)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from sync_core.adapters.storage_queue import StorageWorkQueue
from sync_core.adapters.table_due import TableDueIndex
from sync_core.ports import DeltaPage, LeaseStore
from sync_core.use_cases.commands import SyncMailbox as SyncMessage
from sync_core.use_cases.schedule import ScheduleDeps, process_message, schedule_mailbox
from sync_core.use_cases.sync_mailbox import SyncOutcome
from tests.integration.sync_env import ADELE, ORG
from tests.reliability.rel_env import Ledger, OffsetClock, RelEnv, assert_converged

ROOT = Path(__file__).resolve().parents[2]
CHILD_BUDGET = timedelta(seconds=30)


# -- SIGKILL between the write and the checkpoint -----------------------------------------------------


def run_crashing_worker(
    env: RelEnv, connection_string: str, tmp_path: Path, kill_after_saves: int, fenced: bool = False
) -> list[dict[str, Any]]:
    progress = tmp_path / "progress.jsonl"
    config = {
        "connection_string": connection_string,
        "prefix": env.prefix,
        "graph_url": env.tenant.graph_url,
        "token": env.token_source(),
        "ca_bundle": env.ca_bundle,
        "org_id": ORG,
        "mailbox_id": ADELE,
        "page_size": 4,
        "budget_seconds": CHILD_BUDGET.total_seconds(),
        "kill_after_saves": kill_after_saves,
        "progress": str(progress),
        "fenced": fenced,
    }
    config_file = tmp_path / "worker.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "REQUESTS_CA_BUNDLE": env.ca_bundle}
    worker = subprocess.run(
        [sys.executable, "-m", "tests.reliability.crash_worker", str(config_file)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert worker.returncode == -signal.SIGKILL, (worker.returncode, worker.stderr[-3000:])
    return [json.loads(line) for line in progress.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("fenced", [False, True], ids=["classic", "fenced_in_the_transaction"])
@pytest.mark.parametrize("kill_after_saves", [1, 3])
def test_a_worker_killed_after_writing_activities_but_before_the_checkpoint_loses_nothing_and_duplicates_nothing(
    rel: RelEnv, storage_connection_string: str, tmp_path: Path, kill_after_saves: int, fenced: bool
) -> None:
    ledger = Ledger(rel).standard(matched=12, unmatched=4, sent=4, old=2)

    events = run_crashing_worker(rel, storage_connection_string, tmp_path, kill_after_saves, fenced)

    saves = [e for e in events if e["event"] == "saved"]
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    [killed] = [e for e in events if e["event"] == "killed"]
    assert len(saves) == kill_after_saves and events[-1] == killed
    # What the dead worker left: the last page's activities are stored, its checkpoint is not.
    stored = set(rel.activities())
    assert set(saves[-1]["ids"]) <= stored
    durable = rel.stores.cursors.get_all(ORG, ADELE)
    last_for_folder = [c["link"] for c in checkpoints if c["folder"] == killed["folder"]]
    assert durable.get(killed["folder"], None) == (last_for_folder[-1] if last_for_folder else None)
    assert killed["link"] not in durable.values()

    # Its lease outlives it (a worker that is only slow must not get company); the mailbox is healthy.
    assert rel.run().status == "busy"
    assert rel.mailbox().status.value == "active"
    # Once the lease expired, the next run re-reads the unfinished page and merges, never duplicates.
    rerun = rel.run(clock=OffsetClock(CHILD_BUDGET + timedelta(minutes=2)))
    clean = rel.run(stores=rel.other_stores("clean"))

    assert rerun.status == "done" and rerun.report is not None and rerun.report.error == ""
    assert rerun.report.activities_created == len(ledger.expected("matched")) - len(stored)
    assert rerun.report.activities_merged == 0  # the page it re-read was already there, unchanged
    assert clean.status == "done"
    assert rel.activities() == rel.activities("clean")
    assert_converged(rel, ledger)


# -- racing workers -----------------------------------------------------------------------------------


def test_a_second_worker_starting_while_the_first_is_mid_run_is_turned_away_busy_and_nothing_is_stored_twice(
    rel: RelEnv,
) -> None:
    ledger = Ledger(rel).standard()
    holding, release = threading.Event(), threading.Event()
    results: dict[str, SyncOutcome] = {}

    def hold(page: int, _delta: DeltaPage) -> None:
        if page == 2:
            holding.set()
            assert release.wait(60)

    first = threading.Thread(target=lambda: results.setdefault("first", rel.run(after_page=hold)))
    first.start()
    assert holding.wait(60)

    second = rel.run()

    release.set()
    first.join(60)
    assert second.status == "busy" and second.report is None
    assert results["first"].status == "done"
    assert len(rel.stores.runs.recent(ORG, ADELE, 10)) == 1  # a turned-away run leaves no report
    assert_converged(rel, ledger)


class WatchedLeases:
    """The real lease store, recording how many runs hold the mailbox's lease at once."""

    def __init__(self, inner: LeaseStore) -> None:
        self.inner = inner
        self.holding = 0
        self.most = 0
        self._lock = threading.Lock()

    def acquire(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        taken = self.inner.acquire(key, owner, until, now)
        if taken:
            with self._lock:
                self.holding += 1
                self.most = max(self.most, self.holding)
        return taken

    def renew(self, key: str, owner: str, until: datetime) -> bool:
        return self.inner.renew(key, owner, until)

    def take_over(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        return self.inner.take_over(key, owner, until, now)

    def release(self, key: str, owner: str) -> None:
        with self._lock:
            self.holding -= 1
        self.inner.release(key, owner)


def test_four_workers_started_at_the_same_instant_never_run_one_mailbox_twice_at_once(rel: RelEnv) -> None:
    ledger = Ledger(rel)
    leases = WatchedLeases(rel.stores.leases)
    outcomes: Counter[str] = Counter()
    for round_ in range(3):
        ledger.standard(matched=6, unmatched=2, sent=2, old=1 if round_ == 0 else 0)
        start = threading.Barrier(4)
        lock = threading.Lock()

        def worker(start: threading.Barrier = start, lock: threading.Lock = lock) -> None:
            start.wait(30)
            outcome = rel.run(leases=leases)
            with lock:
                outcomes[outcome.status] += 1

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        # Mail delivered while a run is paging may need the next round; one more run catches up.
        assert rel.run(leases=leases).status == "done"

    assert leases.most == 1
    assert outcomes["done"] >= 3 and outcomes["busy"] >= 1 and set(outcomes) <= {"done", "busy"}
    assert_converged(rel, ledger)


# -- duplicate queue messages -------------------------------------------------------------------------


@pytest.fixture
def queue_deps(rel: RelEnv, storage_connection_string: str) -> Any:
    queue_name = "rel-" + rel.prefix.lower()
    client = QueueClient.from_connection_string(storage_connection_string, queue_name)
    holds: list[Any] = []

    def sync(org_id: str, mailbox_id: str, run_id: str = "") -> SyncOutcome:
        hook = holds[0] if holds else None
        return rel.run(mailbox_id, after_page=hook)

    deps = ScheduleDeps(
        due=TableDueIndex(rel.service, rel.prefix, rel.stores.metrics),
        queue=StorageWorkQueue(client),
        mailboxes=rel.stores.mailboxes,
        settings=rel.stores.settings,
        cursors=rel.stores.cursors,
        leases=rel.stores.leases,
        clock=rel.clock,
        sync=sync,
    )
    yield deps, holds
    with contextlib.suppress(ResourceNotFoundError):  # never created: nothing was enqueued
        client.delete_queue()
    client.close()


def test_duplicate_queue_messages_delivered_at_once_run_the_mailbox_once_and_store_every_message_once(
    rel: RelEnv, queue_deps: Any
) -> None:
    deps, holds = queue_deps
    ledger = Ledger(rel).standard()
    schedule_mailbox(deps, ORG, ADELE)  # the entry the timer claimed to queue them (a timer run leaves it)
    body = json.dumps(SyncMessage(ORG, ADELE, "timer").to_json())
    others_done, results = threading.Semaphore(0), Counter[str]()
    lock = threading.Lock()

    def hold(page: int, _delta: DeltaPage) -> None:  # the run that got the lease waits for the others
        if page == 1:
            for _ in range(3):
                assert others_done.acquire(timeout=60)

    holds.append(hold)

    def deliver(dequeue_count: int) -> None:
        outcome = process_message(deps, body, dequeue_count, 5)
        with lock:
            results[outcome] += 1
        if outcome == "busy":
            others_done.release()

    threads = [threading.Thread(target=deliver, args=(n,)) for n in (1, 1, 2, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert results == Counter({"done": 1, "busy": 3})
    holds.clear()
    # The same message delivered again later (at-least-once delivery): a harmless idle run, which
    # stores no report.
    reports_before = rel.stores.runs.recent(ORG, ADELE, 50)
    assert process_message(deps, body, 1, 5) == "done"
    assert rel.stores.runs.recent(ORG, ADELE, 50) == reports_before
    entry = deps.due.get(ORG, ADELE)
    assert entry is not None and entry.value.queued_at is None  # no run is believed to be pending
    assert_converged(rel, ledger)
