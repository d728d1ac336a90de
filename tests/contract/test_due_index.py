"""Contract of the scheduler's due index and mailbox catalog, on the in-memory doubles and on Table
storage (Azurite); plus what only the Table adapter has (cost of a due query, healing)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters.memory import InMemoryMailboxRepository
from sync_core.adapters.memory_due import InMemoryDueIndex, InMemoryMailboxCatalog
from sync_core.adapters.table_client import TableMetrics
from sync_core.adapters.table_due import SHARDS, TableDueIndex, TableMailboxCatalog, entry_row, index_row, shard
from sync_core.adapters.table_state import TableMailboxRepository
from sync_core.domain.model import Mailbox, MailboxStatus
from sync_core.scheduling_ports import DueEntry
from tests.contract.conftest import T0


@dataclass
class Due:
    kind: str
    index: Any
    mailboxes: Any
    catalog: Any


@pytest.fixture(params=["memory", "azurite"])
def due(request: pytest.FixtureRequest) -> Iterator[Due]:
    if request.param == "memory":
        mailboxes = InMemoryMailboxRepository()
        yield Due("memory", InMemoryDueIndex(), mailboxes, InMemoryMailboxCatalog(mailboxes))
        return
    service: TableServiceClient = request.getfixturevalue("table_service")
    prefix: str = request.getfixturevalue("table_prefix")
    yield Due(
        "azurite",
        TableDueIndex(service, prefix),
        TableMailboxRepository(service, prefix),
        TableMailboxCatalog(service, prefix),
    )


def entry(mailbox_id: str = "mbx-1", org_id: str = "org-1", **changes: Any) -> DueEntry:
    return dataclasses.replace(DueEntry(org_id, mailbox_id, T0), **changes)


def create(index: Any, *entries: DueEntry) -> None:
    for item in entries:
        assert index.put(item, None) is not None


# --- entries ---


def test_an_entry_reads_back_with_every_field_and_an_unknown_one_is_none(due: Due) -> None:
    full = entry(queued_at=T0 - timedelta(seconds=7), backfill_since=T0 - timedelta(days=30, microseconds=5))

    created = due.index.put(full, None)

    assert created is not None and created.value == full
    found = due.index.get("org-1", "mbx-1")
    assert found is not None and found.value == full and found.etag == created.etag
    assert due.index.get("org-1", "mbx-2") is None
    assert due.index.get("org-2", "mbx-1") is None


def test_put_is_compare_and_set_on_the_version_read(due: Due) -> None:
    first = due.index.put(entry(), None)
    assert first is not None

    assert due.index.put(entry(due_at=T0 + timedelta(minutes=1)), None) is None  # exists already
    second = due.index.put(entry(due_at=T0 + timedelta(minutes=5)), first)
    assert second is not None and second.etag != first.etag
    assert due.index.put(entry(due_at=T0 + timedelta(minutes=9)), first) is None  # stale version

    current = due.index.get("org-1", "mbx-1")
    assert current is not None and current.value.due_at == T0 + timedelta(minutes=5)


def test_of_two_concurrent_writers_of_one_version_exactly_one_wins(due: Due) -> None:
    created = due.index.put(entry(), None)
    results: list[object] = []
    barrier = threading.Barrier(2)

    def claim(minutes: int) -> None:
        barrier.wait()
        results.append(due.index.put(entry(due_at=T0 + timedelta(minutes=minutes)), created))

    threads = [threading.Thread(target=claim, args=(n,)) for n in (5, 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(result is None for result in results) == [False, True]
    assert due.index.due(T0 + timedelta(hours=1), 10) == (("org-1", "mbx-1"),)


def test_remove_is_compare_and_set_too(due: Due) -> None:
    first = due.index.put(entry(), None)
    second = due.index.put(entry(queued_at=T0), first)

    assert due.index.remove(first) is False
    assert due.index.remove(second) is True
    assert due.index.get("org-1", "mbx-1") is None
    assert due.index.due(T0, 10) == ()
    assert due.index.put(entry(), None) is not None  # can be scheduled again


# --- finding what is due ---


def test_due_lists_entries_due_by_now_earliest_first_across_orgs_and_shards(due: Due) -> None:
    entries = [entry(f"mbx-{n}", f"org-{n % 3}", due_at=T0 + timedelta(seconds=n - 20)) for n in range(40)]
    assert len({shard(e.org_id, e.mailbox_id) for e in entries}) == SHARDS
    create(due.index, *reversed(entries))

    found = due.index.due(T0, 100)

    assert found == tuple((e.org_id, e.mailbox_id) for e in entries[:21])  # due_at <= T0, in due order
    assert due.index.due(T0, 5) == found[:5]
    assert due.index.due(T0 - timedelta(minutes=1), 100) == ()


def test_entries_due_at_the_same_moment_come_in_a_stable_order(due: Due) -> None:
    create(due.index, entry("mbx-b"), entry("mbx-a"), entry("mbx-c", "org-0"))

    assert due.index.due(T0, 10) == (("org-0", "mbx-c"), ("org-1", "mbx-a"), ("org-1", "mbx-b"))


def test_moving_an_entry_moves_it_in_the_index(due: Due) -> None:
    created = due.index.put(entry(), None)

    moved = due.index.put(entry(due_at=T0 + timedelta(minutes=5)), created)
    assert due.index.due(T0, 10) == ()
    assert due.index.due(T0 + timedelta(minutes=5), 10) == (("org-1", "mbx-1"),)

    due.index.put(entry(due_at=T0 - timedelta(minutes=5), queued_at=T0), moved)
    assert due.index.due(T0, 10) == (("org-1", "mbx-1"),)


def test_ids_with_key_characters_are_kept_apart(due: Due) -> None:
    create(due.index, entry("a|b", "org/1"), entry("b", "org/1|a"), entry("mbx#?\\", "org%1"))

    assert set(due.index.due(T0, 10)) == {("org/1", "a|b"), ("org/1|a", "b"), ("org%1", "mbx#?\\")}
    assert due.index.missing([("org/1", "a|b"), ("org/1", "a"), ("org%1", "mbx#?\\")]) == (("org/1", "a"),)


def test_missing_names_the_mailboxes_without_an_entry_in_order(due: Due) -> None:
    create(due.index, entry("mbx-2"))

    assert due.index.missing([("org-1", "mbx-3"), ("org-1", "mbx-2"), ("org-1", "mbx-1")]) == (
        ("org-1", "mbx-3"),
        ("org-1", "mbx-1"),
    )
    assert due.index.missing([]) == ()


def test_the_sweep_position_is_kept(due: Due) -> None:
    assert due.index.sweep_position() is None

    due.index.set_sweep_position("somewhere")
    assert due.index.sweep_position() == "somewhere"
    due.index.set_sweep_position(None)
    assert due.index.sweep_position() is None


# --- the mailbox catalog ---


def mailbox(mailbox_id: str, org_id: str, **changes: Any) -> Mailbox:
    base = Mailbox(org_id, mailbox_id, "bob@agency.example", ("bob@agency.example",), watermark=T0)
    return dataclasses.replace(base, **changes)


def test_the_catalog_lists_every_mailbox_of_every_org_once_page_by_page(due: Due) -> None:
    assert due.catalog.page(None, 10) == ((), None)
    wanted = {(f"org-{n % 4}", f"mbx-{n:02d}") for n in range(23)}
    for org_id, mailbox_id in wanted:
        due.mailboxes.add(mailbox(mailbox_id, org_id))
    due.mailboxes.add(mailbox("mbx-off", "org-x", enabled=False, status=MailboxStatus.NEEDS_REAUTH))

    seen: list[tuple[str, str]] = []
    position, pages = None, 0
    while True:
        page, position = due.catalog.page(position, 5)
        assert len(page) <= 5
        seen.extend((m.org_id, m.mailbox_id) for m in page)
        pages += 1
        if position is None:
            break
        assert pages < 20

    assert sorted(seen) == sorted([*wanted, ("org-x", "mbx-off")])
    [off] = [m for m in due.catalog.page(None, 100)[0] if m.mailbox_id == "mbx-off"]
    assert (off.status, off.enabled) == (MailboxStatus.NEEDS_REAUTH, False)


def test_the_catalog_refuses_a_position_it_did_not_produce(due: Due) -> None:
    due.mailboxes.add(mailbox("mbx-1", "org-1"))

    with pytest.raises(ValueError):
        due.catalog.page("not a position", 5)


# --- Table storage only ---


@pytest.fixture
def table_due(table_service: TableServiceClient, table_prefix: str) -> tuple[TableDueIndex, TableMetrics]:
    metrics = TableMetrics()
    return TableDueIndex(table_service, table_prefix, metrics), metrics


def test_finding_due_mailboxes_costs_one_query_per_shard_however_many_are_not_due(
    table_due: tuple[TableDueIndex, TableMetrics],
) -> None:
    index, metrics = table_due
    create(index, *(entry(f"mbx-{n}", due_at=T0 + timedelta(minutes=5 + n)) for n in range(60)))
    create(index, entry("mbx-due"))

    with metrics.measure() as cost:
        found = index.due(T0, 1000)

    assert found == (("org-1", "mbx-due"),)
    assert cost.transactions == SHARDS


def test_moving_an_entry_is_one_transaction(table_due: tuple[TableDueIndex, TableMetrics]) -> None:
    index, metrics = table_due
    created = index.put(entry(), None)

    with metrics.measure() as cost:
        index.put(entry(due_at=T0 + timedelta(minutes=5), queued_at=T0), created)

    assert cost.transactions == 1


def test_an_entry_whose_index_row_went_missing_is_healed_by_its_next_write(
    table_due: tuple[TableDueIndex, TableMetrics], table_service: TableServiceClient, table_prefix: str
) -> None:
    index, _ = table_due
    created = index.put(entry(), None)
    partition = shard("org-1", "mbx-1")
    table_service.get_table_client(f"{table_prefix}due").delete_entity(partition, index_row("org-1", "mbx-1", T0))

    moved = index.put(entry(due_at=T0 + timedelta(minutes=5)), created)

    assert moved is not None
    assert index.due(T0 + timedelta(minutes=5), 10) == (("org-1", "mbx-1"),)
    assert table_service.get_table_client(f"{table_prefix}due").get_entity(partition, entry_row("org-1", "mbx-1"))
