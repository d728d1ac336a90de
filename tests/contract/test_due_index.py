"""Contract of the scheduler's due index and mailbox catalog, on the in-memory doubles and on Table
storage (Azurite), the timer's claims on each; plus what only the Table adapter has (cost of a due query
and of bulk claims, healing, index rows of the earlier layout)."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient, UpdateMode

from sync_core.adapters.table_client import TableMetrics
from sync_core.adapters.table_due import SHARDS, TableDueIndex, TableMailboxCatalog, entry_row, index_row, shard
from sync_core.adapters.table_state import TableMailboxRepository
from sync_core.domain.model import Mailbox, MailboxStatus
from sync_core.ports import Versioned
from sync_core.ports.scheduling import DueEntry
from sync_core.testing.app import InMemoryApp
from sync_core.testing.scheduling import InMemoryDueIndex, InMemoryMailboxCatalog, InMemoryWorkQueue
from sync_core.testing.stores import InMemoryMailboxRepository, InMemoryStores
from sync_core.use_cases import schedule
from sync_core.use_cases.schedule import ScheduleDeps
from sync_core.use_cases.sync_mailbox import SyncOutcome
from tests.contract.conftest import T0
from tools.azurite import connection_string, free_port


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


def due_keys(index: Any, now: datetime, limit: int) -> tuple[tuple[str, str], ...]:
    return tuple((found.value.org_id, found.value.mailbox_id) for found in index.due(now, limit))


# --- entries ---


def test_an_entry_reads_back_with_every_field_and_an_unknown_one_is_none(due: Due) -> None:
    full = entry(
        queued_at=T0 - timedelta(seconds=7),
        backfill_since=T0 - timedelta(days=30, microseconds=5),
        run_id="0123456789abcdef0123456789abcdef",
        run_outcome="skipped",
    )

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
    assert due_keys(due.index, T0 + timedelta(hours=1), 10) == (("org-1", "mbx-1"),)


def test_remove_is_compare_and_set_too(due: Due) -> None:
    first = due.index.put(entry(), None)
    second = due.index.put(entry(queued_at=T0), first)

    assert due.index.remove(first) is False
    assert due.index.remove(second) is True
    assert due.index.get("org-1", "mbx-1") is None
    assert due_keys(due.index, T0, 10) == ()
    assert due.index.put(entry(), None) is not None  # can be scheduled again


# --- finding what is due ---


def test_due_lists_entries_due_by_now_earliest_first_across_orgs_and_shards(due: Due) -> None:
    entries = [entry(f"mbx-{n}", f"org-{n % 3}", due_at=T0 + timedelta(seconds=n - 20)) for n in range(40)]
    assert len({shard(e.org_id, e.mailbox_id) for e in entries}) == SHARDS
    create(due.index, *reversed(entries))

    found = due_keys(due.index, T0, 100)

    assert found == tuple((e.org_id, e.mailbox_id) for e in entries[:21])  # due_at <= T0, in due order
    assert due_keys(due.index, T0, 5) == found[:5]
    assert due_keys(due.index, T0 - timedelta(minutes=1), 100) == ()


def test_entries_due_at_the_same_moment_come_in_a_stable_order(due: Due) -> None:
    create(due.index, entry("mbx-b"), entry("mbx-a"), entry("mbx-c", "org-0"))

    assert due_keys(due.index, T0, 10) == (("org-0", "mbx-c"), ("org-1", "mbx-a"), ("org-1", "mbx-b"))


def test_moving_an_entry_moves_it_in_the_index(due: Due) -> None:
    created = due.index.put(entry(), None)

    moved = due.index.put(entry(due_at=T0 + timedelta(minutes=5)), created)
    assert due_keys(due.index, T0, 10) == ()
    assert due_keys(due.index, T0 + timedelta(minutes=5), 10) == (("org-1", "mbx-1"),)

    due.index.put(entry(due_at=T0 - timedelta(minutes=5), queued_at=T0), moved)
    assert due_keys(due.index, T0, 10) == (("org-1", "mbx-1"),)


def test_ids_with_key_characters_are_kept_apart(due: Due) -> None:
    create(due.index, entry("a|b", "org/1"), entry("b", "org/1|a"), entry("mbx#?\\", "org%1"))

    assert set(due_keys(due.index, T0, 10)) == {("org/1", "a|b"), ("org/1|a", "b"), ("org%1", "mbx#?\\")}
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


# --- versions from the due query, bulk claims ---


def claim(found: Versioned[DueEntry], minutes: int = 5) -> DueEntry:
    """What the timer writes: the entry due ``minutes`` on, its queued mark dropped."""
    return dataclasses.replace(found.value, due_at=T0 + timedelta(minutes=minutes), queued_at=None)


def same_shard(count: int, org_id: str = "org-1") -> list[str]:
    """``count`` mailbox ids of one shard (the Table adapter's transaction unit)."""
    names = (f"mbx-{n}" for n in range(10_000))
    return [name for name in names if shard(org_id, name) == "s0"][:count]


def test_due_returns_each_entry_with_every_field_and_a_version_writes_accept(due: Due) -> None:
    full = entry(
        queued_at=T0 - timedelta(seconds=7),
        backfill_since=T0 - timedelta(days=30, microseconds=5),
        run_id="0123456789abcdef0123456789abcdef",
        run_outcome="skipped",
    )
    create(due.index, full, entry("mbx-2", due_at=T0 - timedelta(seconds=1)))

    first, second = due.index.due(T0, 10)

    assert (first.value, second.value) == (entry("mbx-2", due_at=T0 - timedelta(seconds=1)), full)
    assert due.index.put(dataclasses.replace(full, queued_at=None), second) is not None  # in place
    assert due.index.remove(first) is True
    assert due_keys(due.index, T0 + timedelta(hours=1), 10) == (("org-1", "mbx-1"),)


def test_put_many_claims_every_entry_at_the_version_the_due_query_read(due: Due) -> None:
    entries = [entry(f"mbx-{n}", f"org-{n % 3}", due_at=T0 - timedelta(seconds=n), queued_at=T0) for n in range(40)]
    create(due.index, *entries)
    found = due.index.due(T0, 100)
    claims = [claim(item) for item in found]

    written = due.index.put_many(list(zip(claims, found, strict=True)))

    assert [version.value if version else None for version in written] == claims
    assert [due.index.get(c.org_id, c.mailbox_id).value for c in claims] == claims
    assert due_keys(due.index, T0, 100) == ()
    assert due.index.put_many([(claim(found[0], 9), found[0])]) == (None,)  # stale now
    assert due.index.put(claim(found[1], 9), found[1]) is None
    assert due.index.put(claim(found[0], 9), written[0]) is not None  # the new version is current


def test_a_version_from_the_due_query_goes_stale_when_the_entry_changes_in_place(due: Due) -> None:
    create(due.index, entry())
    [found] = due.index.due(T0, 10)
    current = due.index.get("org-1", "mbx-1")
    assert due.index.put(entry(queued_at=T0, backfill_since=T0 - timedelta(days=7)), current) is not None

    assert due.index.put_many([(claim(found), found)]) == (None,)
    assert due.index.put(claim(found), found) is None
    assert due.index.remove(found) is False
    assert due.index.get("org-1", "mbx-1").value == entry(queued_at=T0, backfill_since=T0 - timedelta(days=7))


def test_put_many_never_writes_an_entry_that_changed_and_says_which_it_wrote(due: Due) -> None:
    names = same_shard(5)
    elsewhere = next(f"mbx-x{n}" for n in range(100) if shard("org-1", f"mbx-x{n}") != "s0")
    create(due.index, *(entry(name) for name in [*names, elsewhere]))
    found = due.index.due(T0, 10)
    changed = next(item for item in found if item.value.mailbox_id == names[2])
    assert due.index.put(entry(names[2], queued_at=T0), due.index.get("org-1", names[2])) is not None

    written = due.index.put_many([(claim(item), item) for item in found])

    for item, version in zip(found, written, strict=True):
        stored = due.index.get("org-1", item.value.mailbox_id).value
        if version is not None:
            assert stored == claim(item)
        elif item is not changed:
            assert stored == item.value  # not written: as it was
    assert written[found.index(changed)] is None
    assert due.index.get("org-1", names[2]).value == entry(names[2], queued_at=T0)
    assert written[[item.value.mailbox_id for item in found].index(elsewhere)] is not None  # other shard: written


def test_of_two_concurrent_bulk_claims_of_the_same_entries_each_entry_goes_to_exactly_one(due: Due) -> None:
    create(due.index, *(entry(f"mbx-{n}", due_at=T0 - timedelta(seconds=n)) for n in range(30)))
    found = due.index.due(T0, 100)
    barrier = threading.Barrier(2)
    results: dict[int, tuple[Any, ...]] = {}

    def bulk_claim(minutes: int) -> None:
        barrier.wait()
        results[minutes] = due.index.put_many([(claim(item, minutes), item) for item in found])

    threads = [threading.Thread(target=bulk_claim, args=(n,)) for n in (5, 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for position, item in enumerate(found):
        [winner] = [minutes for minutes in (5, 6) if results[minutes][position] is not None]
        assert due.index.get("org-1", item.value.mailbox_id).value.due_at == T0 + timedelta(minutes=winner)


def test_put_many_takes_each_mailbox_once(due: Due) -> None:
    create(due.index, entry())
    [found] = due.index.due(T0, 10)

    with pytest.raises(ValueError):
        due.index.put_many([(claim(found), found), (claim(found, 6), found)])
    assert due.index.put_many([]) == ()


# --- the timer on each index ---


class Interleaved:
    """A due index running, once, what another writer does between a due query and the bulk claim."""

    def __init__(self, inner: Any, meanwhile: Callable[[], object]) -> None:
        self._inner, self._meanwhile = inner, [meanwhile]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put_many(self, changes: Any) -> Any:
        while self._meanwhile:
            self._meanwhile.pop()()
        return self._inner.put_many(changes)


def timer_deps(index: Any, stores: InMemoryStores, queue: InMemoryWorkQueue) -> ScheduleDeps:
    app = InMemoryApp(stores=stores, due=index, queue=queue, clock=FixedClock(T0))
    return app.schedule_deps(sync=lambda *_, **__: SyncOutcome("done"), catalog=None)


class FixedClock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def now(self) -> datetime:
        return self.moment


def test_two_timers_at_once_never_enqueue_one_mailbox_twice(due: Due) -> None:
    create(due.index, *(entry(f"mbx-{n}", f"org-{n % 2}", due_at=T0 - timedelta(seconds=n)) for n in range(60)))
    stores, queue = InMemoryStores(), InMemoryWorkQueue()
    barrier = threading.Barrier(2)
    reports: list[schedule.TickReport] = []

    def tick() -> None:
        barrier.wait()
        reports.append(schedule.enqueue_due(timer_deps(due.index, stores, queue)))

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    sent = Counter((m.body["org_id"], m.body["mailbox_id"]) for m in queue.messages)
    assert sent == Counter({(f"org-{n % 2}", f"mbx-{n}"): 1 for n in range(60)})
    assert sum(report.enqueued for report in reports) == 60


def test_a_bulk_claim_with_one_entry_changed_meanwhile_still_claims_the_others_exactly_once(due: Due) -> None:
    names = same_shard(40)
    create(due.index, *(entry(name) for name in names))
    stores, queue = InMemoryStores(), InMemoryWorkQueue()
    stores.mailboxes.add(mailbox(names[7], "org-1"))
    index = Interleaved(
        due.index, lambda: schedule.request_sync(timer_deps(due.index, stores, queue), "org-1", names[7])
    )

    report = schedule.enqueue_due(timer_deps(index, stores, queue))

    sent = Counter((m.body["mailbox_id"], m.body["reason"]) for m in queue.messages)
    assert sent == Counter({(names[7], "sync_now"): 1, **{(name, "timer"): 1 for name in names if name != names[7]}})
    assert (report.enqueued, report.coalesced, report.lost_races) == (39, 1, 0)
    assert due_keys(due.index, T0 + timedelta(minutes=4), 100) == ()


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
        found = due_keys(index, T0, 1000)

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
    assert due_keys(index, T0 + timedelta(minutes=5), 10) == (("org-1", "mbx-1"),)
    assert table_service.get_table_client(f"{table_prefix}due").get_entity(partition, entry_row("org-1", "mbx-1"))


def test_claiming_66_due_entries_of_one_shard_costs_two_transactions(
    table_due: tuple[TableDueIndex, TableMetrics],
) -> None:
    index, metrics = table_due
    create(index, *(entry(name) for name in same_shard(66)))
    found = index.due(T0, 100)

    with metrics.measure() as cost:
        written = index.put_many([(claim(item), item) for item in found])

    assert len(found) == 66 and all(written)
    assert cost.transactions == 2


def test_an_index_row_without_a_copy_of_its_entry_still_lists_and_claims_the_entry(
    table_due: tuple[TableDueIndex, TableMetrics], table_service: TableServiceClient, table_prefix: str
) -> None:
    index, _ = table_due
    pending = entry(queued_at=T0 - timedelta(minutes=9), backfill_since=T0 - timedelta(days=3))
    create(index, pending)
    table = table_service.get_table_client(f"{table_prefix}due")
    partition, row = shard("org-1", "mbx-1"), index_row("org-1", "mbx-1", T0)
    # As index rows were written before they held a copy: keys and ids only.
    table.upsert_entity(
        {"PartitionKey": partition, "RowKey": row, "org_id": "org-1", "mailbox_id": "mbx-1"}, mode=UpdateMode.REPLACE
    )

    [found] = index.due(T0, 10)

    assert found.value == pending
    [written] = index.put_many([(claim(found), found)])
    current = index.get("org-1", "mbx-1")
    assert written is not None and current is not None and current.value == claim(found)
    assert due_keys(index, T0 + timedelta(minutes=5), 10) == (("org-1", "mbx-1"),)


def test_a_bulk_claim_storage_did_not_answer_is_reported_as_not_written_not_raised() -> None:
    port = free_port()  # nothing listens there
    service = TableServiceClient.from_connection_string(connection_string(port, port, port), retry_total=0)
    index = TableDueIndex(service, "unreachable")
    versions = [Versioned(entry(f"mbx-{n}"), "i:W/\"datetime'2026-03-02T09%3A30%3A15Z'\"") for n in range(3)]

    assert index.put_many([(claim(version), version) for version in versions]) == (None, None, None)
