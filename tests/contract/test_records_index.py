"""Contract of RecordsIndex: upsert replaces, delete, get and lookups by address and domain, on both the
in-memory double and Table storage."""

from __future__ import annotations

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters.table_records import TableRecordsIndex, bucket_of
from sync_core.domain.model import Record, RecordRef
from sync_core.ports import RecordsIndex
from sync_core.testing.stores import InMemoryRecordsIndex


@pytest.fixture(params=["memory", "azurite", "azurite-key-by-key"])
def records(request: pytest.FixtureRequest) -> RecordsIndex:
    """The in-memory double, the Table adapter as a small org (answered from its snapshot) and as a large
    one (answered from the bucketed index rows, one query per bucket)."""
    if request.param == "memory":
        return InMemoryRecordsIndex()
    service: TableServiceClient = request.getfixturevalue("table_service")
    prefix: str = request.getfixturevalue("table_prefix")
    snapshot_records = 0 if request.param == "azurite-key-by-key" else 20_000
    return TableRecordsIndex(service, prefix, snapshot_records=snapshot_records)


ANN = Record("cand-1", "candidate", "Ann Client", emails=("ann@client.example", "ann@home.example"))
ACME = Record("acct-1", "account", "Acme", domains=("client.example",))


def test_an_upserted_record_reads_back(records: RecordsIndex) -> None:
    records.upsert("org-1", [ANN, ACME])
    assert records.get("org-1", "cand-1") == ANN
    assert records.get("org-1", "acct-1") == ACME
    assert records.get("org-1", "nobody") is None


def test_a_lookup_finds_records_by_each_address_and_domain(records: RecordsIndex) -> None:
    records.upsert("org-1", [ANN, ACME])
    found = records.lookup("org-1", ["ann@home.example", "stranger@else.example"], ["client.example"])
    assert found.records_for_address("ann@home.example") == (RecordRef("cand-1", "candidate"),)
    assert found.records_for_address("stranger@else.example") == ()
    assert found.records_for_domain("client.example") == (RecordRef("acct-1", "account"),)
    assert found.records_for_address("not-asked@client.example") == ()


def test_an_address_on_several_records_finds_them_all_in_id_order(records: RecordsIndex) -> None:
    records.upsert(
        "org-1",
        [
            Record("lead-2", "lead", emails=("shared@client.example",)),
            Record("cand-1", "candidate", emails=("shared@client.example",)),
        ],
    )
    found = records.lookup("org-1", ["shared@client.example"], [])
    assert found.records_for_address("shared@client.example") == (
        RecordRef("cand-1", "candidate"),
        RecordRef("lead-2", "lead"),
    )


def test_upsert_replaces_a_record_so_its_old_addresses_and_domains_stop_matching(records: RecordsIndex) -> None:
    records.upsert("org-1", [Record("c1", "contact", emails=("old@a.example",), domains=("a.example",))])
    records.upsert("org-1", [Record("c1", "lead", emails=("new@b.example",), domains=("b.example",))])
    found = records.lookup("org-1", ["old@a.example", "new@b.example"], ["a.example", "b.example"])
    assert found.records_for_address("old@a.example") == ()
    assert found.records_for_domain("a.example") == ()
    assert found.records_for_address("new@b.example") == (RecordRef("c1", "lead"),)
    assert found.records_for_domain("b.example") == (RecordRef("c1", "lead"),)


def test_a_type_change_alone_shows_in_lookups(records: RecordsIndex) -> None:
    records.upsert("org-1", [Record("c1", "lead", emails=("x@a.example",))])
    records.upsert("org-1", [Record("c1", "contact", emails=("x@a.example",))])
    assert records.lookup("org-1", ["x@a.example"], []).records_for_address("x@a.example") == (
        RecordRef("c1", "contact"),
    )


def test_the_last_version_of_a_record_repeated_in_one_batch_wins(records: RecordsIndex) -> None:
    records.upsert(
        "org-1", [Record("c1", "lead", emails=("first@a.example",)), Record("c1", "lead", emails=("last@a.example",))]
    )
    found = records.lookup("org-1", ["first@a.example", "last@a.example"], [])
    assert found.records_for_address("first@a.example") == ()
    assert found.records_for_address("last@a.example") == (RecordRef("c1", "lead"),)


def test_deleted_records_stop_matching_and_missing_ids_are_ignored(records: RecordsIndex) -> None:
    records.upsert("org-1", [ANN, ACME])
    records.delete("org-1", ["cand-1", "never-existed"])
    assert records.get("org-1", "cand-1") is None
    found = records.lookup("org-1", ["ann@client.example"], ["client.example"])
    assert found.records_for_address("ann@client.example") == ()
    assert found.records_for_domain("client.example") == (RecordRef("acct-1", "account"),)


def test_nothing_of_one_org_is_visible_through_another_orgs_id(records: RecordsIndex) -> None:
    records.upsert("org-a", [ANN, ACME])
    assert records.get("org-b", "cand-1") is None
    found = records.lookup("org-b", ["ann@client.example"], ["client.example"])
    assert found.records_for_address("ann@client.example") == ()
    assert found.records_for_domain("client.example") == ()
    records.delete("org-b", ["cand-1"])
    assert records.get("org-a", "cand-1") == ANN


def test_ids_and_addresses_with_forbidden_key_characters_work(records: RecordsIndex) -> None:
    record = Record("id/with#odd?chars\\\n", "contact", emails=("o'neil/x#y@client.example",))
    records.upsert("org/1?", [record])
    assert records.get("org/1?", record.record_id) == record
    found = records.lookup("org/1?", ["o'neil/x#y@client.example"], [])
    assert found.records_for_address("o'neil/x#y@client.example") == (record.ref,)


def test_a_very_long_address_still_matches(records: RecordsIndex) -> None:
    address = "a" * 300 + "@client.example"
    records.upsert("org-1", [Record("c1", "contact", emails=(address,))])
    assert records.lookup("org-1", [address], []).records_for_address(address) == (RecordRef("c1", "contact"),)


def test_a_record_with_more_addresses_than_one_property_holds_round_trips(records: RecordsIndex) -> None:
    record = Record("big", "account", "Big", emails=tuple(f"{i:03d}{'u' * 250}@big.example" for i in range(150)))
    records.upsert("org-1", [record])
    assert records.get("org-1", "big") == record


def test_upserting_the_same_record_twice_leaves_it_as_it_was(records: RecordsIndex) -> None:
    records.upsert("org-1", [ANN])
    records.upsert("org-1", [ANN])
    assert records.get("org-1", "cand-1") == ANN
    assert records.lookup("org-1", ["ann@client.example"], []).records_for_address("ann@client.example") == (ANN.ref,)


def test_a_lookup_repeated_after_each_change_shows_that_change(records: RecordsIndex) -> None:
    def ann_matches() -> tuple[RecordRef, ...]:
        found = records.lookup("org-1", ["ann@client.example"], ["client.example"])
        return (*found.records_for_address("ann@client.example"), *found.records_for_domain("client.example"))

    assert ann_matches() == ()
    records.upsert("org-1", [ANN])
    assert ann_matches() == (ANN.ref,)
    records.upsert("org-1", [ACME])
    assert ann_matches() == (ANN.ref, ACME.ref)
    records.delete("org-1", ["cand-1"])
    assert ann_matches() == (ACME.ref,)
    records.upsert("org-1", [Record("acct-1", "account", "Acme", domains=("acme.example",))])
    assert ann_matches() == ()


def test_get_many_answers_the_indexed_ones_by_id(records: RecordsIndex) -> None:
    dan = Record("c-dan", "candidate", "Dan", emails=("dan@talent.example",))
    erin = Record("c-erin", "lead", "Erin", domains=("prospect.example",))
    records.upsert("org-1", [dan, erin])
    assert records.get_many("org-1", ["c-erin", "c-nobody", "c-dan", "c-dan"]) == {"c-dan": dan, "c-erin": erin}
    assert records.get_many("org-2", ["c-dan"]) == {}
    assert records.get_many("org-1", []) == {}


def _addresses_in_one_bucket(count: int) -> list[str]:
    """``count`` addresses the Table adapter puts in one index partition (bucket 0)."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        address = f"p{n}@client.example"
        if bucket_of(("e", address)) == 0:
            found.append(address)
        n += 1
    return found


def test_more_rows_in_one_bucket_than_a_transaction_or_a_query_holds_all_match(records: RecordsIndex) -> None:
    addresses = _addresses_in_one_bucket(130)  # 130 rows: two transactions, 19 queries of 7 key ranges
    records.upsert("org-1", [Record(f"c{n}", "contact", emails=(a,)) for n, a in enumerate(addresses)])
    namesakes = [f"{addresses[0]}.org", addresses[1].replace("@", "x@"), f"z{addresses[2]}"]
    found = records.lookup("org-1", [*addresses, *namesakes], [])
    assert [found.records_for_address(a) for a in addresses] == [
        (RecordRef(f"c{n}", "contact"),) for n in range(len(addresses))
    ]
    assert [found.records_for_address(a) for a in namesakes] == [(), (), ()]


def test_a_key_shared_by_records_upserted_in_separate_batches_finds_both_and_loses_the_deleted_one(
    records: RecordsIndex,
) -> None:
    shared = _addresses_in_one_bucket(1)[0]
    records.upsert("org-1", [Record("c1", "contact", emails=(shared,))])
    records.upsert("org-1", [Record("c2", "lead", emails=(shared,), domains=("client.example",))])
    both = records.lookup("org-1", [shared], ["client.example"])
    records.delete("org-1", ["c1"])
    after = records.lookup("org-1", [shared], ["client.example"])
    assert both.records_for_address(shared) == (RecordRef("c1", "contact"), RecordRef("c2", "lead"))
    assert after.records_for_address(shared) == (RecordRef("c2", "lead"),)
    assert after.records_for_domain("client.example") == (RecordRef("c2", "lead"),)


def test_a_batch_mixing_new_records_and_changed_existing_ones_upserts_them_all(records: RecordsIndex) -> None:
    records.upsert("org-1", [Record("c1", "contact", emails=("old@a.example",))])
    records.upsert(
        "org-1",
        [
            Record("n1", "lead", emails=("n1@b.example",)),
            Record("c1", "contact", emails=("new@a.example",)),
            Record("n2", "lead", domains=("b.example",)),
        ],
    )
    found = records.lookup("org-1", ["old@a.example", "new@a.example", "n1@b.example"], ["b.example"])
    assert found.records_for_address("old@a.example") == ()
    assert found.records_for_address("new@a.example") == (RecordRef("c1", "contact"),)
    assert found.records_for_address("n1@b.example") == (RecordRef("n1", "lead"),)
    assert found.records_for_domain("b.example") == (RecordRef("n2", "lead"),)
    assert set(records.get_many("org-1", ["c1", "n1", "n2", "gone"])) == {"c1", "n1", "n2"}
