"""Contract of RecordsIndex: upsert replaces, delete, get and lookups by address and domain, on both the
in-memory double and Table storage."""

from __future__ import annotations

from sync_core.domain.model import Record, RecordRef
from tests.contract.conftest import Stores

ANN = Record("cand-1", "candidate", "Ann Client", emails=("ann@client.example", "ann@home.example"))
ACME = Record("acct-1", "account", "Acme", domains=("client.example",))


def test_an_upserted_record_reads_back(stores: Stores) -> None:
    stores.records.upsert("org-1", [ANN, ACME])
    assert stores.records.get("org-1", "cand-1") == ANN
    assert stores.records.get("org-1", "acct-1") == ACME
    assert stores.records.get("org-1", "nobody") is None


def test_a_lookup_finds_records_by_each_address_and_domain(stores: Stores) -> None:
    stores.records.upsert("org-1", [ANN, ACME])
    found = stores.records.lookup("org-1", ["ann@home.example", "stranger@else.example"], ["client.example"])
    assert found.records_for_address("ann@home.example") == (RecordRef("cand-1", "candidate"),)
    assert found.records_for_address("stranger@else.example") == ()
    assert found.records_for_domain("client.example") == (RecordRef("acct-1", "account"),)
    assert found.records_for_address("not-asked@client.example") == ()


def test_an_address_on_several_records_finds_them_all_in_id_order(stores: Stores) -> None:
    stores.records.upsert(
        "org-1",
        [
            Record("lead-2", "lead", emails=("shared@client.example",)),
            Record("cand-1", "candidate", emails=("shared@client.example",)),
        ],
    )
    found = stores.records.lookup("org-1", ["shared@client.example"], [])
    assert found.records_for_address("shared@client.example") == (
        RecordRef("cand-1", "candidate"),
        RecordRef("lead-2", "lead"),
    )


def test_upsert_replaces_a_record_so_its_old_addresses_and_domains_stop_matching(stores: Stores) -> None:
    stores.records.upsert("org-1", [Record("c1", "contact", emails=("old@a.example",), domains=("a.example",))])
    stores.records.upsert("org-1", [Record("c1", "lead", emails=("new@b.example",), domains=("b.example",))])
    found = stores.records.lookup("org-1", ["old@a.example", "new@b.example"], ["a.example", "b.example"])
    assert found.records_for_address("old@a.example") == ()
    assert found.records_for_domain("a.example") == ()
    assert found.records_for_address("new@b.example") == (RecordRef("c1", "lead"),)
    assert found.records_for_domain("b.example") == (RecordRef("c1", "lead"),)


def test_a_type_change_alone_shows_in_lookups(stores: Stores) -> None:
    stores.records.upsert("org-1", [Record("c1", "lead", emails=("x@a.example",))])
    stores.records.upsert("org-1", [Record("c1", "contact", emails=("x@a.example",))])
    assert stores.records.lookup("org-1", ["x@a.example"], []).records_for_address("x@a.example") == (
        RecordRef("c1", "contact"),
    )


def test_the_last_version_of_a_record_repeated_in_one_batch_wins(stores: Stores) -> None:
    stores.records.upsert(
        "org-1", [Record("c1", "lead", emails=("first@a.example",)), Record("c1", "lead", emails=("last@a.example",))]
    )
    found = stores.records.lookup("org-1", ["first@a.example", "last@a.example"], [])
    assert found.records_for_address("first@a.example") == ()
    assert found.records_for_address("last@a.example") == (RecordRef("c1", "lead"),)


def test_deleted_records_stop_matching_and_missing_ids_are_ignored(stores: Stores) -> None:
    stores.records.upsert("org-1", [ANN, ACME])
    stores.records.delete("org-1", ["cand-1", "never-existed"])
    assert stores.records.get("org-1", "cand-1") is None
    found = stores.records.lookup("org-1", ["ann@client.example"], ["client.example"])
    assert found.records_for_address("ann@client.example") == ()
    assert found.records_for_domain("client.example") == (RecordRef("acct-1", "account"),)


def test_nothing_of_one_org_is_visible_through_another_orgs_id(stores: Stores) -> None:
    stores.records.upsert("org-a", [ANN, ACME])
    assert stores.records.get("org-b", "cand-1") is None
    found = stores.records.lookup("org-b", ["ann@client.example"], ["client.example"])
    assert found.records_for_address("ann@client.example") == ()
    assert found.records_for_domain("client.example") == ()
    stores.records.delete("org-b", ["cand-1"])
    assert stores.records.get("org-a", "cand-1") == ANN


def test_ids_and_addresses_with_forbidden_key_characters_work(stores: Stores) -> None:
    record = Record("id/with#odd?chars\\\n", "contact", emails=("o'neil/x#y@client.example",))
    stores.records.upsert("org/1?", [record])
    assert stores.records.get("org/1?", record.record_id) == record
    found = stores.records.lookup("org/1?", ["o'neil/x#y@client.example"], [])
    assert found.records_for_address("o'neil/x#y@client.example") == (record.ref,)


def test_a_very_long_address_still_matches(stores: Stores) -> None:
    address = "a" * 300 + "@client.example"
    stores.records.upsert("org-1", [Record("c1", "contact", emails=(address,))])
    assert stores.records.lookup("org-1", [address], []).records_for_address(address) == (RecordRef("c1", "contact"),)


def test_a_record_with_more_addresses_than_one_property_holds_round_trips(stores: Stores) -> None:
    record = Record("big", "account", "Big", emails=tuple(f"{i:03d}{'u' * 250}@big.example" for i in range(150)))
    stores.records.upsert("org-1", [record])
    assert stores.records.get("org-1", "big") == record


def test_upserting_the_same_record_twice_leaves_it_as_it_was(stores: Stores) -> None:
    stores.records.upsert("org-1", [ANN])
    stores.records.upsert("org-1", [ANN])
    assert stores.records.get("org-1", "cand-1") == ANN
    assert stores.records.lookup("org-1", ["ann@client.example"], []).records_for_address("ann@client.example") == (
        ANN.ref,
    )


def test_a_lookup_repeated_after_each_change_shows_that_change(stores: Stores) -> None:
    def ann_matches() -> tuple[RecordRef, ...]:
        found = stores.records.lookup("org-1", ["ann@client.example"], ["client.example"])
        return (*found.records_for_address("ann@client.example"), *found.records_for_domain("client.example"))

    assert ann_matches() == ()
    stores.records.upsert("org-1", [ANN])
    assert ann_matches() == (ANN.ref,)
    stores.records.upsert("org-1", [ACME])
    assert ann_matches() == (ANN.ref, ACME.ref)
    stores.records.delete("org-1", ["cand-1"])
    assert ann_matches() == (ACME.ref,)
    stores.records.upsert("org-1", [Record("acct-1", "account", "Acme", domains=("acme.example",))])
    assert ann_matches() == ()


def test_get_many_answers_the_indexed_ones_by_id(stores: Stores) -> None:
    dan = Record("c-dan", "candidate", "Dan", emails=("dan@talent.example",))
    erin = Record("c-erin", "lead", "Erin", domains=("prospect.example",))
    stores.records.upsert("org-1", [dan, erin])
    assert stores.records.get_many("org-1", ["c-erin", "c-nobody", "c-dan", "c-dan"]) == {"c-dan": dan, "c-erin": erin}
    assert stores.records.get_many("org-2", ["c-dan"]) == {}
    assert stores.records.get_many("org-1", []) == {}
