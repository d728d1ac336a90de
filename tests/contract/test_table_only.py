"""What only the Table storage adapters have: transaction counts, entity limits, interrupted writes that
converge when re-run, concurrent writers, and storage errors."""

from __future__ import annotations

import dataclasses
import threading
from datetime import timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_activities import TableActivityStore
from sync_core.adapters.table_client import TableMetrics
from sync_core.adapters.table_codec import ENTITY_MAX_BYTES, entity_size, put_json, utf16_units
from sync_core.adapters.table_records import TableRecordsIndex, bucket_of
from sync_core.adapters.tables import TableStores
from sync_core.domain.model import Activity, EmailAddress, Record, RecordRef
from sync_core.errors import StorageUnavailable
from tests.contract.conftest import T0, SimulatedCrash, crash_after, make_activity
from tools import reindex_records
from tools.azurite import DEV_ACCOUNT, DEV_KEY, free_port


class WriteCounter:
    """An ``after_write`` hook that only counts."""

    def __init__(self) -> None:
        self.writes = 0

    def __call__(self) -> None:
        self.writes += 1


def table_contents(service: TableServiceClient, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every entity of a table, without the service's Timestamp/ETag."""
    return {(e["PartitionKey"], e["RowKey"]): dict(e) for e in service.get_table_client(name).list_entities()}


def without_version(contents: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """A records table's entities without the org's records version (a fresh random value per change)."""
    return {key: entity for key, entity in contents.items() if not key[0].endswith("|v")}


def test_saving_ten_new_activities_on_two_records_costs_one_transaction_and_no_read(
    table_stores: TableStores,
) -> None:
    table_stores.activities.get("org-1", "warm-up")  # creates the table, outside the measured saves
    page = [make_activity(f"<m{i}@x>", records=("cand-1", "acct-1"), thread_id=f"t-{i}") for i in range(10)]
    before = table_stores.metrics.transactions

    created = table_stores.activities.save(page)
    repeated = table_stores.activities.save(page)
    merged = table_stores.activities.save([dataclasses.replace(a, mailbox_ids=("mbx-2",)) for a in page])

    assert (len(created.created), created.transactions) == (10, 1)
    assert (len(repeated.unchanged), repeated.transactions) == (10, 1 + 10)  # refused, then the reads
    assert (len(merged.merged), merged.transactions) == (10, 1 + 10 + 1)
    assert table_stores.metrics.transactions - before == 24


def test_a_page_of_timeline_costs_one_query_and_a_read_per_activity(table_stores: TableStores) -> None:
    table_stores.activities.save([make_activity(f"<m{i}@x>") for i in range(8)])
    with table_stores.metrics.measure() as cost:
        page = table_stores.activities.timeline("org-1", "cand-1", None, 5)
    assert len(page.items) == 5
    assert cost.transactions == 1 + 5


def test_orphan_index_rows_never_show_and_never_shorten_a_timeline_page(
    table_stores: TableStores, table_service: TableServiceClient, table_prefix: str
) -> None:
    real = [make_activity(f"<m{i}@x>", received_at=T0 + timedelta(minutes=i)) for i in range(5)]
    elsewhere = make_activity("<elsewhere@x>", records=("cand-2",))
    table_stores.activities.save([*real, elsewhere])
    client = table_service.get_table_client(f"{table_prefix}activities")
    partition = keys.activity_partition("org-1")
    # What an interrupted save can leave: rows of an activity never written, or not (yet) on this record.
    for minute, activity_id in ((1, "f" * 32), (2, elsewhere.activity_id), (3, "e" * 32)):
        row = keys.timeline_row("cand-1", T0 + timedelta(minutes=minute, seconds=30), activity_id)
        client.upsert_entity({"PartitionKey": partition, "RowKey": row, "activity_id": activity_id})

    pages: list[list[str]] = []
    cursor = None
    while True:
        page = table_stores.activities.timeline("org-1", "cand-1", cursor, 2)
        pages.append([activity.internet_message_id for activity in page.items])
        if (cursor := page.cursor) is None:
            break
    assert pages == [["<m4@x>", "<m3@x>"], ["<m2@x>", "<m1@x>"], ["<m0@x>"]]


def test_every_stored_entity_stays_within_table_limits(
    table_stores: TableStores, table_service: TableServiceClient, table_prefix: str
) -> None:
    crowd = tuple(EmailAddress(f"p{i:05d}@client.example", f"Person {i}") for i in range(3_000))
    big = make_activity("<big@x>", body="lorem ipsum " * 200_000)
    emoji = make_activity("<emoji@x>", body="😀" * 700_000)
    crowded = dataclasses.replace(make_activity("<crowd@x>", body="é" * 900_000), to=crowd, cc=crowd)
    table_stores.activities.save([big, emoji, crowded])

    for entity in table_contents(table_service, f"{table_prefix}activities").values():
        assert entity_size(entity) <= ENTITY_MAX_BYTES
        assert len(entity) <= 252
        assert all(utf16_units(value) <= 32_768 for value in entity.values() if isinstance(value, str))
    for activity in (big, emoji, crowded):
        stored = table_stores.activities.get("org-1", activity.activity_id)
        assert stored is not None and stored.body_truncated


def scenario() -> list[list[Activity]]:
    """Two saves: an activity on 110 records with two more (their rows span two transactions), then a
    second mailbox and a new record link for it, and a new message."""
    wide = make_activity("<wide@x>", records=tuple(f"rec-{i:03d}" for i in range(110)))
    first = [wide, make_activity("<b@x>", thread_id="t-b"), make_activity("<c@x>", records=("rec-007",))]
    second = [
        dataclasses.replace(wide, mailbox_ids=("mbx-2",), records=(*wide.records[:1], *make_activity("<n@x>").records)),
        make_activity("<d@x>", records=("rec-001",)),
    ]
    return [first, second]


def run(store: TableActivityStore, saves: list[list[Activity]]) -> None:
    for activities in saves:
        store.save(activities)


def test_a_save_interrupted_after_any_write_converges_when_run_again(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    counter = WriteCounter()
    run(TableActivityStore(table_service, f"{table_prefix}ref", after_write=counter), scenario())
    reference = table_contents(table_service, f"{table_prefix}refactivities")
    total_writes = counter.writes
    assert total_writes == 4  # the wide activity is read first: too big for one transaction

    for stop in range(1, total_writes):
        prefix = f"{table_prefix}k{stop}"
        with pytest.raises(SimulatedCrash):
            run(TableActivityStore(table_service, prefix, after_write=crash_after(stop)), scenario())
        store = TableActivityStore(table_service, prefix)
        for record_id in ("rec-000", "rec-007", "rec-109", "cand-1", "rec-001"):
            for shown in store.timeline("org-1", record_id, None, 50).items:
                assert store.get("org-1", shown.activity_id) == shown  # only whole activities are visible
                assert record_id in {ref.record_id for ref in shown.records}

        run(store, scenario())
        assert table_contents(table_service, f"{prefix}activities") == reference, f"stopped after write {stop}"


def test_a_delete_interrupted_midway_is_finished_by_running_it_again(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    wide = make_activity("<wide@x>", records=tuple(f"rec-{i:03d}" for i in range(110)))
    TableActivityStore(table_service, table_prefix).save([wide, make_activity("<kept@x>")])
    with pytest.raises(SimulatedCrash):
        TableActivityStore(table_service, table_prefix, after_write=crash_after(1)).delete("org-1", wide.activity_id)

    store = TableActivityStore(table_service, table_prefix)
    assert store.delete("org-1", wide.activity_id) is True
    remaining = table_contents(table_service, f"{table_prefix}activities")
    assert all(entity["activity_id"] != wide.activity_id for entity in remaining.values())
    assert len(remaining) == 4  # the kept activity, its timeline, thread and mailbox rows


def test_an_interrupted_purge_is_finished_by_the_next_one(table_service: TableServiceClient, table_prefix: str) -> None:
    mine = [make_activity(f"<m{i}@x>", records=tuple(f"r{i}-{j}" for j in range(30))) for i in range(4)]
    TableActivityStore(table_service, table_prefix).save(mine)
    with pytest.raises(SimulatedCrash):
        TableActivityStore(table_service, table_prefix, after_write=crash_after(1)).delete_for_mailbox("org-1", "mbx-1")

    store = TableActivityStore(table_service, table_prefix)
    assert store.delete_for_mailbox("org-1", "mbx-1") > 0
    assert table_contents(table_service, f"{table_prefix}activities") == {}


def test_concurrent_saves_from_two_mailboxes_keep_both_mailboxes(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    messages = [make_activity(f"<m{i}@x>") for i in range(6)]
    start = threading.Barrier(2)
    costs: list[int] = []
    errors: list[BaseException] = []

    def sync(mailbox_id: str) -> None:
        store = TableActivityStore(table_service, table_prefix)
        start.wait()
        try:
            written = store.save([dataclasses.replace(m, mailbox_ids=(mailbox_id,)) for m in messages])
            costs.append(written.transactions)
        except BaseException as exc:  # surfaced below: a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=sync, args=(mailbox,)) for mailbox in ("mbx-1", "mbx-2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    store = TableActivityStore(table_service, table_prefix)
    for message in messages:
        stored = store.get("org-1", message.activity_id)
        assert stored is not None and sorted(stored.mailbox_ids) == ["mbx-1", "mbx-2"]
    assert len(store.timeline("org-1", "cand-1", None, 50).items) == len(messages)
    first, second = sorted(costs)  # each new store also creates the table: one round trip
    assert first == 1 + 1  # the first to write creates them all in one transaction, reading nothing
    assert second >= 1 + 1 + len(messages) + 1  # the other is refused, reads each, then merges


def test_a_batch_upsert_writes_record_rows_in_group_transactions(table_stores: TableStores) -> None:
    table_stores.records.get("org-1", "warm-up")
    records = [Record(f"c{i}", "contact", f"C {i}", emails=(f"c{i}@client.example",)) for i in range(60)]
    with table_stores.metrics.measure() as cost:
        table_stores.records.upsert("org-1", records)
    buckets = len({bucket_of(("e", f"c{i}@client.example")) for i in range(60)})
    # The org's first write reindexes it (the version read, a scan of its records, a new version); then,
    # reading nothing (a new org has no bucket rows), 1 transaction creating the records, 1 transaction
    # creating the buckets of their addresses (one partition), the version.
    assert buckets > 1
    assert cost.transactions == 3 + 1 + 1 + 1
    with table_stores.metrics.measure() as again:
        table_stores.records.upsert("org-1", records)
    # The creating transaction refused (they exist), 60 reads; their entries are all in the buckets (read
    # once, in one query, to make sure: no write), 1 transaction settling the records the first upsert
    # created (they stay pending until their next upsert), the version.
    assert again.transactions == 1 + 60 + 1 + 1 + 1
    with table_stores.metrics.measure() as third:
        table_stores.records.upsert("org-1", records)
    assert third.transactions == 1 + 60 + 1  # refused, read, nothing changed, the version


def test_record_upserts_interrupted_after_any_write_converge_and_lost_addresses_stop_matching(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    versions = [
        [Record("c1", "lead", emails=("a@x.example", "b@x.example"), domains=("x.example",))],
        [Record("c1", "contact", emails=("b@x.example", "c@x.example"))],
    ]

    def upsert_all(index: TableRecordsIndex) -> None:
        for records in versions:
            index.upsert("org-1", records)

    counter = WriteCounter()
    upsert_all(TableRecordsIndex(table_service, f"{table_prefix}ref", after_write=counter))
    reference = without_version(table_contents(table_service, f"{table_prefix}refrecords"))
    total_writes = counter.writes
    # The org's reindex writes a version; then the first: create the record, its buckets (one transaction),
    # the version; the second: mark the record, its buckets, settle, the version.
    assert total_writes == 1 + 3 + 4

    for stop in range(1, total_writes):
        prefix = f"{table_prefix}k{stop}"
        with pytest.raises(SimulatedCrash):
            upsert_all(TableRecordsIndex(table_service, prefix, after_write=crash_after(stop)))
        index = TableRecordsIndex(table_service, prefix)
        upsert_all(index)
        contents = without_version(table_contents(table_service, f"{prefix}records"))
        assert contents == reference, f"stopped after write {stop}"
        found = index.lookup("org-1", ["a@x.example", "b@x.example", "c@x.example"], ["x.example"])
        assert found.records_for_address("a@x.example") == found.records_for_domain("x.example") == ()
        assert found.records_for_address("c@x.example") == (RecordRef("c1", "contact"),)


def test_a_lookup_key_by_key_costs_one_query_per_bucket_of_its_addresses_and_domains(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    metrics = TableMetrics()
    records = TableRecordsIndex(table_service, table_prefix, metrics, snapshot_records=0)
    records.upsert("org-1", [Record("c1", "contact", emails=("a@x.example",), domains=("x.example",))])
    with metrics.measure() as cost:
        found = records.lookup("org-1", ["a@x.example", "b@x.example", "a@x.example"], ["x.example"])
    buckets = {bucket_of(("e", "a@x.example")), bucket_of(("e", "b@x.example")), bucket_of(("d", "x.example"))}
    assert cost.transactions == 1 + len(buckets)
    assert [ref.record_id for ref in found.records_for_domain("x.example")] == ["c1"]


def test_unreachable_storage_raises_storage_unavailable() -> None:
    closed = free_port()
    service = TableServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"TableEndpoint=http://127.0.0.1:{closed}/{DEV_ACCOUNT};",
        retry_total=0,
    )
    stores = TableStores.create(service, "tunreachable")
    with pytest.raises(StorageUnavailable):
        stores.activities.get("org-1", "a1")
    with pytest.raises(StorageUnavailable):
        stores.mailboxes.list("org-1")


def _write_layout_one(service: TableServiceClient, name: str, org_id: str, records: list[Record]) -> None:
    """Rows as the records index wrote them before buckets: one partition per address or domain, and a
    version row without ``layout``."""
    table = service.create_table_if_not_exists(name)
    for record in records:
        index_keys = [["e", a] for a in record.emails] + [["d", d] for d in record.domains]
        entity: dict[str, Any] = {
            "PartitionKey": keys.record_partition(org_id),
            "RowKey": keys.key_part(record.record_id),
            "record_id": record.record_id,
            "record_type": record.record_type,
            "name": record.name,
            "index_pending": False,
        }
        put_json(entity, "emails", list(record.emails))
        put_json(entity, "domains", list(record.domains))
        put_json(entity, "index_keys", sorted(index_keys))
        table.upsert_entity(entity)
        for kind, value in index_keys:
            partition = (keys.address_partition if kind == "e" else keys.domain_partition)(org_id, value)
            table.upsert_entity(
                {
                    "PartitionKey": partition,
                    "RowKey": keys.key_part(record.record_id),
                    "record_id": record.record_id,
                    "record_type": record.record_type,
                }
            )
    table.upsert_entity({"PartitionKey": f"{org_id}|v", "RowKey": "version", "version": "old"})


def test_an_org_indexed_before_buckets_is_read_as_it_is_and_reindexed_by_its_first_records_write(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    old = [
        Record("c1", "contact", emails=("ann@client.example",), domains=("client.example",)),
        Record("c2", "lead", emails=("ann@client.example", "bo@else.example")),
    ]
    _write_layout_one(table_service, f"{table_prefix}records", "org-1", old)
    index = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)

    def answers() -> tuple[tuple[RecordRef, ...], ...]:
        found = index.lookup("org-1", ["ann@client.example", "bo@else.example", "cy@new.example"], ["client.example"])
        return (
            found.records_for_address("ann@client.example"),
            found.records_for_address("bo@else.example"),
            found.records_for_address("cy@new.example"),
            found.records_for_domain("client.example"),
        )

    before = answers()
    index.upsert("org-1", [Record("c3", "contact", emails=("cy@new.example",))])
    after = answers()
    contents = table_contents(table_service, f"{table_prefix}records")

    c1, c2, c3 = RecordRef("c1", "contact"), RecordRef("c2", "lead"), RecordRef("c3", "contact")
    assert before == ((c1, c2), (c2,), (), (c1,))
    assert after == ((c1, c2), (c2,), (c3,), (c1,))
    assert not [key for key in contents if key[0].startswith(("org-1|e|", "org-1|d|"))]  # layout 1 rows gone
    assert contents[("org-1|v", "version")]["layout"] == 3


def test_a_reindex_run_twice_changes_no_answer(table_service: TableServiceClient, table_prefix: str) -> None:
    _write_layout_one(
        table_service, f"{table_prefix}records", "org-1", [Record("c1", "contact", emails=("a@x.example",))]
    )
    index = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)
    assert (index.reindex("org-1"), index.reindex("org-1")) == (1, 1)
    found = index.lookup("org-1", ["a@x.example"], [])
    assert found.records_for_address("a@x.example") == (RecordRef("c1", "contact"),)


def test_the_reindex_command_moves_an_org_to_the_packed_layout(
    table_service: TableServiceClient, table_prefix: str, storage_connection_string: str
) -> None:
    _write_layout_one(
        table_service, f"{table_prefix}records", "org-1", [Record("c1", "contact", emails=("a@x.example",))]
    )
    code = reindex_records.main(
        ["org-1"], {"AzureWebJobsStorage": storage_connection_string, "TABLE_PREFIX": table_prefix}
    )
    contents = table_contents(table_service, f"{table_prefix}records")
    found = TableRecordsIndex(table_service, table_prefix, snapshot_records=0).lookup("org-1", ["a@x.example"], [])
    assert code == 0
    assert contents[("org-1|v", "version")]["layout"] == 3
    assert not [key for key in contents if key[0].startswith("org-1|e|")]
    assert found.records_for_address("a@x.example") == (RecordRef("c1", "contact"),)
