"""The packed layout of the Table records index (Azurite): an org's buckets are written read-modify-write
at their ETag by concurrent workers without losing entries, read in one query when a lookup needs many,
bounded by what one entity holds, and an org in the layout of hashed rows (2) is read as it is until its
first records write packs it."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters import table_records
from sync_core.adapters.table_client import TableMetrics
from sync_core.adapters.table_codec import ENTITY_MAX_BYTES, entity_size, put_json
from sync_core.adapters.table_records import BUCKET_MAX_BYTES, BUCKETS, WHOLE_READ, TableRecordsIndex, bucket_of
from sync_core.domain.model import Record, RecordRef
from sync_core.errors import StorageUnavailable


def _addresses_in_one_bucket(count: int, bucket: int) -> list[str]:
    found: list[str] = []
    n = 0
    while len(found) < count:
        address = f"p{n}@same.example"
        if bucket_of(("e", address)) == bucket:
            found.append(address)
        n += 1
    return found


def _addresses_in_distinct_buckets(count: int) -> list[str]:
    by_bucket: dict[int, str] = {}
    n = 0
    while len(by_bucket) < count:
        by_bucket.setdefault(bucket_of(("e", f"q{n}@spread.example")), f"q{n}@spread.example")
        n += 1
    return list(by_bucket.values())


def test_two_workers_writing_one_bucket_keep_each_others_entries(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    first, second, third = _addresses_in_one_bucket(3, bucket=7)
    metrics = TableMetrics()
    worker_a = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)
    worker_b = TableRecordsIndex(table_service, table_prefix, metrics, snapshot_records=0)
    worker_b.upsert("org-1", [Record("r1", "contact", emails=(first,))])  # b keeps the bucket and its ETag
    worker_a.upsert("org-1", [Record("r2", "lead", emails=(second,))])  # a changes it behind b's back
    with metrics.measure() as cost:
        worker_b.upsert("org-1", [Record("r3", "lead", emails=(third,))])
    # the record created; b's bucket write refused at its ETag (in its transaction, then alone), the bucket
    # read, written again; the version
    assert cost.transactions == 1 + 2 + 1 + 1 + 1
    found = TableRecordsIndex(table_service, table_prefix, snapshot_records=0).lookup(
        "org-1", [first, second, third], []
    )
    assert found.records_for_address(first) == (RecordRef("r1", "contact"),)
    assert found.records_for_address(second) == (RecordRef("r2", "lead"),)
    assert found.records_for_address(third) == (RecordRef("r3", "lead"),)


def test_a_record_deleted_by_one_worker_leaves_the_entries_another_added_to_its_bucket(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    first, second = _addresses_in_one_bucket(2, bucket=11)
    worker_a = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)
    worker_b = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)
    worker_a.upsert("org-1", [Record("r1", "contact", emails=(first,))])
    worker_b.upsert("org-1", [Record("r2", "contact", emails=(second,))])
    worker_a.delete("org-1", ["r1"])
    found = worker_b.lookup("org-1", [first, second], [])
    assert found.records_for_address(first) == ()
    assert found.records_for_address(second) == (RecordRef("r2", "contact"),)


def test_a_lookup_needing_many_buckets_reads_all_the_orgs_buckets_in_one_query(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    addresses = _addresses_in_distinct_buckets(WHOLE_READ + 8)
    TableRecordsIndex(table_service, table_prefix).upsert("org-1", [Record("r1", "contact", emails=(addresses[0],))])
    metrics = TableMetrics()
    worker = TableRecordsIndex(table_service, table_prefix, metrics, snapshot_records=0)
    worker.get("org-1", "warm-up")  # a new instance's first request also makes sure the table exists
    with metrics.measure() as first:
        found = worker.lookup("org-1", addresses[: WHOLE_READ + 4], [])
    with metrics.measure() as second:
        again = worker.lookup("org-1", addresses[WHOLE_READ + 4 :], ["spread.example"])
    assert first.transactions == 1 + 1  # the version, one query of the org's buckets
    assert second.transactions == 1  # every bucket was kept under the version
    assert found.records_for_address(addresses[0]) == (RecordRef("r1", "contact"),)
    assert found.records_for_address(addresses[1]) == ()
    assert again.records_for_domain("spread.example") == ()


def test_a_lookup_needing_few_buckets_reads_only_those(table_service: TableServiceClient, table_prefix: str) -> None:
    addresses = _addresses_in_distinct_buckets(3)
    metrics = TableMetrics()
    worker = TableRecordsIndex(table_service, table_prefix, metrics, snapshot_records=0)
    worker.upsert("org-1", [Record("r1", "contact", emails=(addresses[0],))])
    with metrics.measure() as cost:
        found = worker.lookup("org-1", addresses, [])
    assert cost.transactions == 1 + 3  # the version, a point read per bucket (its own write is not used)
    assert found.records_for_address(addresses[0]) == (RecordRef("r1", "contact"),)


def test_a_full_bucket_still_fits_one_entity_and_one_more_entry_is_refused() -> None:
    entries: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
    # Random hex compresses to about half: fill a bucket up to just under its bound.
    while True:
        batch = {
            ("e", f"{secrets.token_hex(24)}@x.example"): ((secrets.token_hex(8), "contact"),) for _ in range(2_000)
        }
        try:
            row = table_records._bucket_row("org-1", 5, {**entries, **batch})
        except StorageUnavailable:
            break
        entries.update(batch)
    row = table_records._bucket_row("org-1", 5, entries)
    packed = sum(len(row[f"z_{n}"]) for n in range(row["z_parts"]))
    assert packed > BUCKET_MAX_BYTES - 200_000
    assert entity_size(row) <= ENTITY_MAX_BYTES
    assert table_records._entries_of(row) == entries
    with pytest.raises(StorageUnavailable):
        table_records._bucket_row("org-1", 5, {**entries, **batch})


def test_bucket_rows_round_trip_through_table_storage(table_service: TableServiceClient, table_prefix: str) -> None:
    entries = {("e", f"{secrets.token_hex(24)}@x.example"): ((secrets.token_hex(8), "lead"),) for _ in range(5_000)}
    row = table_records._bucket_row("org-1", BUCKETS - 1, entries)
    assert row["z_parts"] > 1  # spans several binary properties
    table = table_service.create_table_if_not_exists(f"{table_prefix}records")
    table.upsert_entity(row)
    assert table_records._entries_of(table.get_entity(row["PartitionKey"], row["RowKey"])) == entries


def _write_layout_two(service: TableServiceClient, name: str, org_id: str, records: list[Record]) -> None:
    """Rows as the records index wrote them before packing: a row per key and record in one of 64 hashed
    partitions, and a version row with ``layout`` = 2."""
    table = service.create_table_if_not_exists(name)
    for record in records:
        index_keys = [("e", a) for a in record.emails] + [("d", d) for d in record.domains]
        entity: dict[str, Any] = {
            "PartitionKey": f"{org_id}|r",
            "RowKey": record.record_id,
            "record_id": record.record_id,
            "record_type": record.record_type,
            "name": record.name,
            "index_pending": False,
        }
        put_json(entity, "emails", list(record.emails))
        put_json(entity, "domains", list(record.domains))
        put_json(entity, "index_keys", sorted([list(key) for key in index_keys]))
        table.upsert_entity(entity)
        for key in index_keys:
            table.upsert_entity(table_records._index_row(org_id, key, record.record_id, record.record_type))
    table.upsert_entity({"PartitionKey": f"{org_id}|v", "RowKey": "version", "version": "old", "layout": 2})


def test_an_org_in_hashed_rows_is_read_as_it_is_and_packed_by_its_first_records_write(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    old = [
        Record("c1", "contact", emails=("ann@client.example",), domains=("client.example",)),
        Record("c2", "lead", emails=("ann@client.example", "bo@else.example")),
    ]
    _write_layout_two(table_service, f"{table_prefix}records", "org-1", old)
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
    index.delete("org-1", ["c2"])
    later = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)
    gone = later.lookup("org-1", ["bo@else.example", "ann@client.example"], [])
    contents = {
        (e["PartitionKey"], e["RowKey"]): e
        for e in table_service.get_table_client(f"{table_prefix}records").list_entities()
    }

    c1, c2, c3 = RecordRef("c1", "contact"), RecordRef("c2", "lead"), RecordRef("c3", "contact")
    assert before == ((c1, c2), (c2,), (), (c1,))
    assert after == ((c1, c2), (c2,), (c3,), (c1,))
    assert gone.records_for_address("bo@else.example") == ()
    assert gone.records_for_address("ann@client.example") == (c1,)
    assert not [key for key in contents if key[0].startswith("org-1|x|")]  # layout 2 rows gone
    assert contents[("org-1|v", "version")]["layout"] == 3


def test_an_upsert_after_get_many_of_the_same_records_reads_none_of_them_again(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    metrics = TableMetrics()
    worker = TableRecordsIndex(table_service, table_prefix, metrics, snapshot_records=0)
    worker.upsert("org-1", [Record(f"c{n}", "contact", emails=(f"c{n}@old.example",)) for n in range(10)])
    changed = [Record(f"c{n}", "contact", emails=(f"c{n}@new.example",)) for n in range(10)]
    with metrics.measure() as cost:
        before = worker.get_many("org-1", [r.record_id for r in changed])
        worker.upsert("org-1", changed)
    # the 10 reads of get_many; then no create attempt and no read: the records marked (1 transaction),
    # their buckets (1), settled (1), the version
    assert len(before) == 10
    assert cost.transactions == 10 + 1 + 1 + 1 + 1
    found = worker.lookup("org-1", ["c3@old.example", "c3@new.example"], [])
    assert found.records_for_address("c3@old.example") == ()
    assert found.records_for_address("c3@new.example") == (RecordRef("c3", "contact"),)


def test_a_handed_over_row_another_worker_changed_meanwhile_is_read_again(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    worker_a = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)
    worker_b = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)
    worker_a.upsert("org-1", [Record("c1", "contact", emails=("one@x.example",))])
    worker_a.get_many("org-1", ["c1"])
    worker_b.upsert("org-1", [Record("c1", "contact", emails=("two@x.example",))])
    worker_a.upsert("org-1", [Record("c1", "lead", emails=("three@x.example",))])
    found = TableRecordsIndex(table_service, table_prefix, snapshot_records=0).lookup(
        "org-1", ["one@x.example", "two@x.example", "three@x.example"], []
    )
    assert found.records_for_address("one@x.example") == found.records_for_address("two@x.example") == ()
    assert found.records_for_address("three@x.example") == (RecordRef("c1", "lead"),)


def test_a_handed_over_row_that_shows_no_change_is_confirmed_by_a_read_before_the_upsert_returns(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    worker_a = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)
    worker_b = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)
    original = Record("c1", "contact", emails=("one@x.example",))
    worker_a.upsert("org-1", [original])
    worker_a.get_many("org-1", ["c1"])
    worker_b.upsert("org-1", [Record("c1", "contact", emails=("two@x.example",))])
    worker_a.upsert("org-1", [original])  # the same as the handed-over row, no longer as stored
    found = TableRecordsIndex(table_service, table_prefix, snapshot_records=0).lookup(
        "org-1", ["one@x.example", "two@x.example"], []
    )
    assert worker_a.get("org-1", "c1") == original
    assert found.records_for_address("one@x.example") == (RecordRef("c1", "contact"),)
    assert found.records_for_address("two@x.example") == ()


def test_an_entry_another_worker_added_to_a_kept_bucket_is_removed_when_its_record_loses_it(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    first, second = _addresses_in_one_bucket(2, bucket=23)
    worker_a = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)
    worker_b = TableRecordsIndex(table_service, table_prefix, snapshot_records=0)
    worker_a.upsert("org-1", [Record("r1", "contact", emails=(first,))])  # a keeps the bucket without `second`
    worker_b.upsert("org-1", [Record("r1", "contact", emails=(first, second))])
    worker_a.upsert("org-1", [Record("r1", "contact", emails=(first,))])  # a's kept copy: nothing to remove
    found = TableRecordsIndex(table_service, table_prefix, snapshot_records=0).lookup("org-1", [first, second], [])
    assert found.records_for_address(first) == (RecordRef("r1", "contact"),)
    assert found.records_for_address(second) == ()


def test_an_org_larger_than_the_worker_keeps_is_not_read_whole_again(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    addresses = _addresses_in_distinct_buckets(WHOLE_READ + 8)
    records = [Record(f"r{n}", "contact", emails=(address,)) for n, address in enumerate(addresses[:20])]
    writer = TableRecordsIndex(table_service, table_prefix)
    writer.upsert("org-1", records)
    metrics = TableMetrics()
    worker = TableRecordsIndex(table_service, table_prefix, metrics, cache_entries=10, snapshot_records=0)
    worker.get("org-1", "warm-up")
    with metrics.measure() as first:
        worker.lookup("org-1", addresses, [])
    writer.upsert("org-1", [Record("r0", "lead", emails=(addresses[0],))])  # a new records version
    with metrics.measure() as second:
        found = worker.lookup("org-1", addresses, [])
    assert first.transactions == 1 + 1  # the version, the whole read: 20 entries, more than the 10 kept
    assert second.transactions == 1 + len(addresses)  # the version, a point read per bucket needed
    assert found.records_for_address(addresses[0]) == (RecordRef("r0", "lead"),)
    assert found.records_for_address(addresses[19]) == (RecordRef("r19", "contact"),)
    assert found.records_for_address(addresses[20]) == ()
