"""The lookup cache of the Table records index (Azurite): repeated lookups cost one point read, a small
org's lookups are answered from one scan of its records per records version, and no change made before a
lookup started, through this or another instance (another worker), is hidden, either way."""

from __future__ import annotations

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters.table_client import TableMetrics
from sync_core.adapters.table_records import DEFAULT_SNAPSHOT_RECORDS, TableRecordsIndex
from sync_core.domain.model import Record, RecordRef
from tests.contract.conftest import SimulatedCrash, crash_after

ANN = Record("cand-1", "candidate", "Ann Client", emails=("ann@client.example",))
ACME = Record("acct-1", "account", "Acme", domains=("client.example",))


@pytest.fixture
def metrics() -> TableMetrics:
    return TableMetrics()


@pytest.fixture(params=[0, DEFAULT_SNAPSHOT_RECORDS], ids=["key-by-key", "snapshot"])
def snapshot_records(request: pytest.FixtureRequest) -> int:
    """Every behaviour holds both ways: key by key (a large org) and from the org's snapshot (a small one)."""
    return int(request.param)


@pytest.fixture
def worker(
    table_service: TableServiceClient, table_prefix: str, metrics: TableMetrics, snapshot_records: int
) -> TableRecordsIndex:
    return TableRecordsIndex(table_service, table_prefix, metrics, snapshot_records=snapshot_records)


@pytest.fixture
def key_by_key(table_service: TableServiceClient, table_prefix: str, metrics: TableMetrics) -> TableRecordsIndex:
    return TableRecordsIndex(table_service, table_prefix, metrics, snapshot_records=0)


@pytest.fixture
def other_worker(table_service: TableServiceClient, table_prefix: str, snapshot_records: int) -> TableRecordsIndex:
    return TableRecordsIndex(table_service, table_prefix, snapshot_records=snapshot_records)


def test_a_repeated_lookup_of_the_same_addresses_and_domains_costs_one_read(
    key_by_key: TableRecordsIndex, metrics: TableMetrics
) -> None:
    worker = key_by_key
    worker.upsert("org-1", [ANN, ACME])
    addresses, domains = ["ann@client.example", "stranger@else.example"], ["client.example", "else.example"]
    with metrics.measure() as first:
        worker.lookup("org-1", addresses, domains)
    with metrics.measure() as second:
        found = worker.lookup("org-1", addresses, domains)
    assert first.transactions == 1 + 4
    assert second.transactions == 1
    assert found.records_for_address("ann@client.example") == (ANN.ref,)
    assert found.records_for_address("stranger@else.example") == ()
    assert found.records_for_domain("client.example") == (ACME.ref,)
    assert found.records_for_domain("else.example") == ()


def test_only_the_addresses_not_cached_yet_are_queried(key_by_key: TableRecordsIndex, metrics: TableMetrics) -> None:
    worker = key_by_key
    worker.upsert("org-1", [ANN])
    worker.lookup("org-1", ["ann@client.example"], [])
    with metrics.measure() as cost:
        found = worker.lookup("org-1", ["ann@client.example", "new@client.example"], [])
    assert cost.transactions == 1 + 1
    assert found.records_for_address("ann@client.example") == (ANN.ref,)


def test_a_record_upserted_by_another_worker_between_two_lookups_is_found_by_the_second(
    worker: TableRecordsIndex, other_worker: TableRecordsIndex
) -> None:
    worker.upsert("org-1", [ACME])
    assert worker.lookup("org-1", ["ann@client.example"], []).records_for_address("ann@client.example") == ()
    other_worker.upsert("org-1", [ANN])
    found = worker.lookup("org-1", ["ann@client.example"], [])
    assert found.records_for_address("ann@client.example") == (ANN.ref,)


def test_a_record_deleted_by_another_worker_between_two_lookups_stops_matching(
    worker: TableRecordsIndex, other_worker: TableRecordsIndex
) -> None:
    worker.upsert("org-1", [ANN, ACME])
    assert worker.lookup("org-1", ["ann@client.example"], []).records_for_address("ann@client.example") == (ANN.ref,)
    other_worker.delete("org-1", ["cand-1"])
    assert worker.lookup("org-1", ["ann@client.example"], []).records_for_address("ann@client.example") == ()


def test_an_address_another_worker_moved_to_another_record_matches_the_new_one(
    worker: TableRecordsIndex, other_worker: TableRecordsIndex
) -> None:
    worker.upsert("org-1", [ANN])
    worker.lookup("org-1", ["ann@client.example"], [])
    other_worker.upsert("org-1", [Record("cand-1", "candidate", emails=("ann@new.example",))])
    other_worker.upsert("org-1", [Record("lead-9", "lead", emails=("ann@client.example",))])
    found = worker.lookup("org-1", ["ann@client.example"], [])
    assert found.records_for_address("ann@client.example") == (RecordRef("lead-9", "lead"),)


def test_a_domain_added_and_removed_by_another_worker_shows_in_the_next_lookup(
    worker: TableRecordsIndex, other_worker: TableRecordsIndex
) -> None:
    worker.upsert("org-1", [ANN])
    assert worker.lookup("org-1", [], ["client.example"]).records_for_domain("client.example") == ()
    other_worker.upsert("org-1", [ACME])
    assert worker.lookup("org-1", [], ["client.example"]).records_for_domain("client.example") == (ACME.ref,)
    other_worker.upsert("org-1", [Record("acct-1", "account", "Acme", domains=("acme.example",))])
    assert worker.lookup("org-1", [], ["client.example"]).records_for_domain("client.example") == ()


def test_rows_written_by_an_upsert_that_failed_half_way_are_not_hidden_by_the_cache(
    worker: TableRecordsIndex, table_service: TableServiceClient, table_prefix: str
) -> None:
    worker.upsert("org-1", [ACME])
    assert worker.lookup("org-1", ["ann@client.example"], []).records_for_address("ann@client.example") == ()
    # Write 1 marks the record, write 2 puts its address row; the upsert fails right after that.
    failing = TableRecordsIndex(table_service, table_prefix, after_write=crash_after(2))
    with pytest.raises(SimulatedCrash):
        failing.upsert("org-1", [ANN])
    found = worker.lookup("org-1", ["ann@client.example"], [])
    assert found.records_for_address("ann@client.example") == (ANN.ref,)


def test_a_change_in_one_org_keeps_the_cached_answers_of_another(
    worker: TableRecordsIndex, other_worker: TableRecordsIndex, metrics: TableMetrics
) -> None:
    worker.upsert("org-a", [ANN])
    worker.lookup("org-a", ["ann@client.example"], [])
    other_worker.upsert("org-b", [ANN])
    with metrics.measure() as cost:
        found = worker.lookup("org-a", ["ann@client.example"], [])
    assert cost.transactions == 1
    assert found.records_for_address("ann@client.example") == (ANN.ref,)


def test_the_cache_holds_at_most_its_bound_evicting_the_least_recently_used(
    table_service: TableServiceClient, table_prefix: str, metrics: TableMetrics
) -> None:
    index = TableRecordsIndex(table_service, table_prefix, metrics, cache_entries=2, snapshot_records=0)
    index.upsert("org-1", [ANN])
    index.lookup("org-1", ["a@x.example", "b@x.example"], [])
    index.lookup("org-1", ["a@x.example"], [])  # a is now the most recently used
    index.lookup("org-1", ["c@x.example"], [])  # evicts b
    with metrics.measure() as kept:
        index.lookup("org-1", ["a@x.example", "c@x.example"], [])
    with metrics.measure() as evicted:
        index.lookup("org-1", ["b@x.example"], [])
    assert kept.transactions == 1
    assert evicted.transactions == 1 + 1


def test_lookups_on_a_table_no_change_ever_touched_are_cached_too(
    worker: TableRecordsIndex, metrics: TableMetrics
) -> None:
    worker.lookup("org-1", ["ann@client.example"], [])
    with metrics.measure() as cost:
        found = worker.lookup("org-1", ["ann@client.example"], [])
    assert cost.transactions == 1
    assert found.records_for_address("ann@client.example") == ()


def test_a_small_orgs_lookups_cost_one_read_and_one_scan_per_records_version_however_many_keys(
    table_service: TableServiceClient, table_prefix: str, metrics: TableMetrics
) -> None:
    index = TableRecordsIndex(table_service, table_prefix, metrics)
    index.upsert("org-1", [ANN, ACME])
    strangers = [f"stranger{n}@else.example" for n in range(20)]
    with metrics.measure() as first:
        found = index.lookup("org-1", ["ann@client.example", *strangers], ["client.example", "else.example"])
    with metrics.measure() as second:
        again = index.lookup("org-1", ["new@client.example", "ann@client.example"], ["other.example"])
    assert first.transactions == 1 + 1
    assert second.transactions == 1
    assert found.records_for_address("ann@client.example") == again.records_for_address("ann@client.example")
    assert found.records_for_address("ann@client.example") == (ANN.ref,)
    assert found.records_for_address("stranger3@else.example") == ()
    assert found.records_for_domain("client.example") == (ACME.ref,)
    assert again.records_for_domain("other.example") == ()


def test_an_org_with_more_records_than_the_snapshot_holds_is_looked_up_key_by_key_without_scanning_again(
    table_service: TableServiceClient, table_prefix: str, metrics: TableMetrics
) -> None:
    index = TableRecordsIndex(table_service, table_prefix, metrics, snapshot_records=1)
    index.upsert("org-1", [ANN, ACME])
    with metrics.measure() as first:
        found = index.lookup("org-1", ["ann@client.example"], ["client.example"])
    index.upsert("org-1", [Record("lead-9", "lead", emails=("bo@client.example",))])
    with metrics.measure() as second:
        later = index.lookup("org-1", ["bo@client.example"], [])
    assert first.transactions == 1 + 1 + 2  # the version, the scan it gave up, one query per key
    assert second.transactions == 1 + 1
    assert found.records_for_address("ann@client.example") == (ANN.ref,)
    assert found.records_for_domain("client.example") == (ACME.ref,)
    assert later.records_for_address("bo@client.example") == (RecordRef("lead-9", "lead"),)


def test_several_records_on_one_address_come_from_the_snapshot_in_id_order(worker: TableRecordsIndex) -> None:
    worker.upsert("org-1", [Record("z-1", "lead", emails=("ann@client.example",)), ANN])
    found = worker.lookup("org-1", ["ann@client.example"], [])
    assert found.records_for_address("ann@client.example") == (ANN.ref, RecordRef("z-1", "lead"))
