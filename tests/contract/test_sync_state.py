"""Contract of a mailbox's sync state kept in one place (``SyncStateStore``: its cursors, its sync lease, its
sync runs' reports) on both the in-memory double and Table storage, and of the lease cases for a
mailbox's sync lease (``MailboxLease``), which the Table adapter keeps in that partition."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters.table_state import TableLeaseStore, TableSyncStateStore
from sync_core.adapters.tables import TableStores
from sync_core.ports import MailboxLease, SyncStateStore
from sync_core.testing.stores import InMemorySyncStateStore
from tests.contract import test_state_stores as lease_cases
from tests.contract.conftest import T0, Stores
from tests.contract.test_state_stores import UNTIL, report

ORG, BOX = "org-1", "mbx-1"
KEY = MailboxLease(ORG, BOX)


def state_of(stores: Stores) -> SyncStateStore:
    if stores.kind == "memory":
        return InMemorySyncStateStore(stores.cursors, stores.leases, stores.runs)
    return TableSyncStateStore(stores.leases)


class MailboxLeases:
    """The stores' ``LeaseStore`` with every key made a mailbox's sync lease."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def acquire(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        return bool(self.inner.acquire(MailboxLease(ORG, key), owner, until, now))

    def renew(self, key: str, owner: str, until: datetime) -> bool:
        return bool(self.inner.renew(MailboxLease(ORG, key), owner, until))

    def take_over(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        return bool(self.inner.take_over(MailboxLease(ORG, key), owner, until, now))

    def release(self, key: str, owner: str) -> None:
        self.inner.release(MailboxLease(ORG, key), owner)


LEASE_CASES = [
    name
    for name in dir(lease_cases)
    if name.startswith("test_") and ("lease" in name or "acquirers" in name) and "adapter" not in name
]


@pytest.mark.parametrize("case", LEASE_CASES)
def test_every_lease_case_holds_for_a_mailboxs_sync_lease(stores: Stores, case: str) -> None:
    getattr(lease_cases, case)(dataclasses.replace(stores, leases=MailboxLeases(stores.leases)))


def test_a_read_gives_the_cursors_alone_and_the_lease_version(stores: Stores) -> None:
    state = state_of(stores)
    stores.cursors.put_many(ORG, BOX, {"inbox": "delta a", "sentitems": "next b"})
    stores.runs.add(report(1), keep=10)
    assert stores.leases.acquire(KEY, "run-a", UNTIL, T0)
    assert state.commit(ORG, BOX, "run-a", until=UNTIL, cursors={}, report=report(2))

    read = state.read(ORG, BOX)

    assert dict(read.cursors) == {"inbox": "delta a", "sentitems": "next b"}
    assert dict(stores.cursors.get_all(ORG, BOX)) == dict(read.cursors)  # no lease or report among them
    assert read.version != state.read(ORG, "mbx-2").version


def test_a_lease_taken_at_the_version_read_proves_nobody_touched_it_since(stores: Stores) -> None:
    state = state_of(stores)
    fresh = state.read(ORG, BOX)
    assert state.acquire_seen(ORG, BOX, "run-a", until=UNTIL, now=T0, seen=fresh) is True
    assert stores.leases.renew(KEY, "run-a", UNTIL + timedelta(minutes=1)) is True  # the same lease
    stores.leases.release(KEY, "run-a")

    before = state.read(ORG, BOX)
    assert stores.leases.acquire(KEY, "backfill", UNTIL, T0)  # taken and released in between
    stores.leases.release(KEY, "backfill")
    assert state.acquire_seen(ORG, BOX, "run-b", until=UNTIL, now=T0, seen=before) is False
    assert state.acquire_seen(ORG, BOX, "run-b", until=UNTIL, now=T0, seen=state.read(ORG, BOX)) is True


def test_a_lease_held_by_another_is_not_taken_at_the_version_read_until_it_expired(stores: Stores) -> None:
    state = state_of(stores)
    assert stores.leases.acquire(KEY, "run-a", UNTIL, T0)
    held = state.read(ORG, BOX)
    assert state.acquire_seen(ORG, BOX, "run-b", until=UNTIL, now=T0, seen=held) is False
    later = UNTIL + timedelta(minutes=10)
    assert state.acquire_seen(ORG, BOX, "run-b", until=later, now=UNTIL, seen=held) is True
    assert stores.leases.renew(KEY, "run-a", later) is False  # fenced out


def test_of_concurrent_runs_taking_the_lease_at_the_same_read_exactly_one_wins(stores: Stores) -> None:
    state = state_of(stores)
    stores.leases.acquire(KEY, "old", UNTIL, T0)
    stores.leases.release(KEY, "old")  # a row (Table) that was held before
    seen = state.read(ORG, BOX)
    contenders = 5
    start = threading.Barrier(contenders)
    results: list[bool] = []

    def contend(owner: str) -> None:
        start.wait()
        results.append(state.acquire_seen(ORG, BOX, owner, until=UNTIL, now=T0, seen=seen))

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * (contenders - 1) + [True]


def test_a_commit_renews_and_writes_the_cursors_and_the_report_and_a_final_one_releases(stores: Stores) -> None:
    state = state_of(stores)
    assert state.acquire_seen(ORG, BOX, "run-a", until=UNTIL, now=T0, seen=state.read(ORG, BOX))
    later = UNTIL + timedelta(minutes=10)

    assert state.commit(ORG, BOX, "run-a", until=later, cursors={"inbox": "next 1"}) is True
    assert dict(stores.cursors.get_all(ORG, BOX)) == {"inbox": "next 1"}
    assert stores.leases.acquire(KEY, "run-b", UNTIL, UNTIL + timedelta(minutes=5)) is False  # renewed

    done = state.commit(ORG, BOX, "run-a", until=None, cursors={"inbox": "delta 2", "sentitems": "delta 3"},
                        report=report(1))  # fmt: skip
    assert done is True
    assert dict(stores.cursors.get_all(ORG, BOX)) == {"inbox": "delta 2", "sentitems": "delta 3"}
    assert stores.runs.recent(ORG, BOX, 10) == (report(1),)
    assert stores.leases.acquire(KEY, "run-b", UNTIL, T0) is True  # released
    assert state.commit(ORG, BOX, "run-a", until=later, cursors={"inbox": "late"}) is False


def test_a_commit_of_a_lost_lease_writes_nothing(stores: Stores) -> None:
    state = state_of(stores)
    stores.cursors.put(ORG, BOX, "inbox", "delta kept")
    assert state.acquire_seen(ORG, BOX, "run-a", until=UNTIL, now=T0, seen=state.read(ORG, BOX))
    assert stores.leases.take_over(KEY, "disconnect", UNTIL, T0) is True

    assert state.commit(ORG, BOX, "run-a", until=None, cursors={"inbox": "next lost"}, report=report(1)) is False

    assert dict(stores.cursors.get_all(ORG, BOX)) == {"inbox": "delta kept"}
    assert stores.runs.recent(ORG, BOX, 10) == ()
    assert stores.leases.renew(KEY, "disconnect", UNTIL) is True  # still the disconnect's


def test_a_mailbox_keeps_its_newest_committed_reports_listed_with_added_ones_newest_first(stores: Stores) -> None:
    state = state_of(stores)
    stores.runs.add(report(0), keep=3)
    for run in range(1, 6):
        assert stores.leases.acquire(KEY, f"run-{run}", UNTIL, T0)
        assert state.commit(ORG, BOX, f"run-{run}", until=None, cursors={}, report=report(run), keep=3)

    # The newest ``keep`` committed ones, newest first; older ones are gone or (Table: added to the runs table
    # before sync reports moved next to the lease) listed after them.
    assert [r.run_id for r in stores.runs.recent(ORG, BOX, 10)][:3] == ["run-5", "run-4", "run-3"]
    assert "run-1" not in [r.run_id for r in stores.runs.recent(ORG, BOX, 10)]
    assert [r.run_id for r in stores.runs.recent(ORG, BOX, 2)] == ["run-5", "run-4"]
    assert stores.runs.recent(ORG, "mbx-2", 10) == ()


def test_clearing_the_cursors_leaves_the_lease_and_the_reports(stores: Stores) -> None:
    state = state_of(stores)
    assert stores.leases.acquire(KEY, "run-a", UNTIL, T0)
    assert state.commit(ORG, BOX, "run-a", until=UNTIL, cursors={"inbox": "delta a"}, report=report(1))

    stores.cursors.clear(ORG, BOX)

    assert stores.cursors.get_all(ORG, BOX) == {}
    assert stores.runs.recent(ORG, BOX, 10) == (report(1),)
    assert stores.leases.renew(KEY, "run-a", UNTIL) is True


def test_a_released_sync_lease_row_stays_so_a_lease_taken_and_released_since_a_read_is_seen(
    table_service: TableServiceClient, table_prefix: str, table_stores: TableStores
) -> None:
    # The Table layout: the lease row is written free, never deleted (a create at an empty read would
    # otherwise succeed after someone took and released it in between).
    state = table_stores.sync_state
    empty = state.read(ORG, BOX)
    other = TableLeaseStore(table_service, table_prefix)
    assert other.acquire(KEY, "backfill", UNTIL, T0)
    other.release(KEY, "backfill")
    rows = list(table_service.get_table_client(f"{table_prefix}cursors").list_entities())
    assert [(row["RowKey"], row["owner"]) for row in rows] == [("|lease", "")]

    assert state.acquire_seen(ORG, BOX, "run-a", until=UNTIL, now=T0, seen=empty) is False
    assert TableSyncStateStore(other).acquire_seen(ORG, BOX, "run-a", until=UNTIL, now=T0, seen=state.read(ORG, BOX))
