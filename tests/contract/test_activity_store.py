"""Contract of ActivityStore: dedupe, merging, timelines, threads, deletes and size limits, on both the
in-memory double and Table storage; then what a save costs on Table storage alone."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters.table_activities import TableActivityStore
from sync_core.adapters.table_client import TableMetrics
from sync_core.adapters.table_codec import BODY_MAX_UNITS, PROPERTY_MAX_UNITS, fit_activity, utf16_units
from sync_core.domain.model import Direction, EmailAddress, RecordRef
from tests.contract.conftest import T0, Stores, make_activity


def test_a_saved_activity_reads_back_exactly_as_given(stores: Stores) -> None:
    activity = make_activity("<m1@client.example>")
    written = stores.activities.save([activity])
    assert written.created == (activity.activity_id,)
    assert stores.activities.get("org-1", activity.activity_id) == activity


def test_an_unknown_activity_is_none(stores: Stores) -> None:
    assert stores.activities.get("org-1", "0" * 32) is None


def test_saving_the_same_message_from_a_second_mailbox_adds_the_mailbox_not_a_second_activity(stores: Stores) -> None:
    first = make_activity("<m1@client.example>", mailbox_ids=("mbx-1",))
    second = make_activity("<m1@client.example>", mailbox_ids=("mbx-2",))
    stores.activities.save([first])
    written = stores.activities.save([second])
    assert written.merged == (first.activity_id,)
    assert written.created == ()
    stored = stores.activities.get("org-1", first.activity_id)
    assert stored.mailbox_ids == ("mbx-1", "mbx-2")
    assert [a.activity_id for a in stores.activities.timeline("org-1", "cand-1", None, 10).items] == [first.activity_id]


@pytest.mark.parametrize("sender_mailbox_first", [True, False])
def test_a_message_one_org_mailbox_sent_is_sent_whichever_mailbox_is_saved_first(
    stores: Stores, sender_mailbox_first: bool
) -> None:
    received = make_activity("<m1@client.example>", mailbox_ids=("mbx-recipient",))
    sent = dataclasses.replace(
        make_activity("<m1@client.example>", mailbox_ids=("mbx-sender",)), direction=Direction.SENT
    )
    for activity in (sent, received) if sender_mailbox_first else (received, sent):
        stores.activities.save([activity])

    stored = stores.activities.get("org-1", received.activity_id)
    assert stored is not None
    assert stored.direction is Direction.SENT
    assert set(stored.mailbox_ids) == {"mbx-recipient", "mbx-sender"}


@pytest.mark.parametrize("crm_copy_first", [True, False])
def test_a_message_sent_from_the_crm_stays_marked_so_whichever_copy_is_saved_first(
    stores: Stores, crm_copy_first: bool
) -> None:
    from_crm = dataclasses.replace(
        make_activity("<m2@contoso.example>", mailbox_ids=("mbx-sender",)),
        direction=Direction.SENT,
        sent_from_crm=True,
        send_id="send-1",
    )
    synced = make_activity("<m2@contoso.example>", mailbox_ids=("mbx-recipient",))
    for activity in (from_crm, synced) if crm_copy_first else (synced, from_crm):
        stores.activities.save([activity])

    stored = stores.activities.get("org-1", from_crm.activity_id)
    assert stored is not None
    assert (stored.sent_from_crm, stored.send_id, stored.direction) == (True, "send-1", Direction.SENT)
    assert set(stored.mailbox_ids) == {"mbx-sender", "mbx-recipient"}


def test_saving_an_identical_activity_again_changes_nothing(stores: Stores) -> None:
    activity = make_activity("<m1@client.example>")
    stores.activities.save([activity])
    written = stores.activities.save([activity])
    assert written.unchanged == (activity.activity_id,)
    assert written.created == written.merged == ()
    assert stores.activities.get("org-1", activity.activity_id) == activity


def test_an_existing_activity_keeps_its_content_and_gains_new_record_links(stores: Stores) -> None:
    original = make_activity("<m1@client.example>", records=("cand-1",), subject="Original")
    later = make_activity(
        "<m1@client.example>", records=("contact-9", "cand-1"), subject="Later", received_at=T0 + timedelta(hours=1)
    )
    stores.activities.save([original])
    stores.activities.save([later])
    stored = stores.activities.get("org-1", original.activity_id)
    assert stored.subject == "Original"
    assert stored.received_at == T0
    assert stored.records == (RecordRef("cand-1", "candidate"), RecordRef("contact-9", "candidate"))
    assert stores.activities.timeline("org-1", "contact-9", None, 10).items == (stored,)


def test_a_message_repeated_within_one_batch_becomes_one_activity_with_both_mailboxes(stores: Stores) -> None:
    written = stores.activities.save(
        [make_activity("<m1@x>", mailbox_ids=("mbx-1",)), make_activity("<m1@x>", mailbox_ids=("mbx-2",))]
    )
    assert len(written.created) == 1
    assert stores.activities.get("org-1", written.created[0]).mailbox_ids == ("mbx-1", "mbx-2")


def test_one_batch_reports_created_merged_and_unchanged_in_input_order(stores: Stores) -> None:
    kept, grown = make_activity("<kept@x>"), make_activity("<grown@x>")
    stores.activities.save([kept, grown])
    fresh = make_activity("<fresh@x>")
    written = stores.activities.save([fresh, dataclasses.replace(grown, mailbox_ids=("mbx-7",)), kept])
    assert (written.created, written.merged, written.unchanged) == (
        (fresh.activity_id,),
        (grown.activity_id,),
        (kept.activity_id,),
    )


def test_the_timeline_lists_a_records_activities_newest_first_in_pages(stores: Stores) -> None:
    activities = [make_activity(f"<m{i}@x>", received_at=T0 + timedelta(minutes=i)) for i in range(7)]
    stores.activities.save(activities)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = stores.activities.timeline("org-1", "cand-1", cursor, 3)
        seen += [activity.activity_id for activity in page.items]
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == [activity.activity_id for activity in reversed(activities)]
    assert pages == 3


def test_activities_received_at_the_same_moment_all_appear_once(stores: Stores) -> None:
    activities = [make_activity(f"<same{i}@x>") for i in range(5)]
    stores.activities.save(activities)
    first = stores.activities.timeline("org-1", "cand-1", None, 2)
    rest = stores.activities.timeline("org-1", "cand-1", first.cursor, 10)
    ids = [a.activity_id for a in first.items + rest.items]
    assert sorted(ids) == sorted(a.activity_id for a in activities)
    assert rest.cursor is None


def test_a_timeline_cursor_is_stable_when_newer_activities_arrive(stores: Stores) -> None:
    older = [make_activity(f"<m{i}@x>", received_at=T0 + timedelta(minutes=i)) for i in range(4)]
    stores.activities.save(older)
    first = stores.activities.timeline("org-1", "cand-1", None, 2)
    stores.activities.save([make_activity("<newest@x>", received_at=T0 + timedelta(days=1))])
    second = stores.activities.timeline("org-1", "cand-1", first.cursor, 2)
    assert [a.activity_id for a in second.items] == [older[1].activity_id, older[0].activity_id]
    assert second.cursor is None


def test_a_timeline_holds_only_that_records_activities(stores: Stores) -> None:
    stores.activities.save([make_activity("<a@x>", records=("cand-1",)), make_activity("<b@x>", records=("cand-2",))])
    assert [a.internet_message_id for a in stores.activities.timeline("org-1", "cand-2", None, 10).items] == ["<b@x>"]
    assert stores.activities.timeline("org-1", "nobody", None, 10) == stores.activities.timeline(
        "org-1", "nobody", None, 10
    )
    assert stores.activities.timeline("org-1", "nobody", None, 10).items == ()


def test_a_timeline_refuses_a_garbled_cursor_and_an_empty_page_size(stores: Stores) -> None:
    with pytest.raises(ValueError, match="cursor"):
        stores.activities.timeline("org-1", "cand-1", "%%%not-base64", 10)
    with pytest.raises(ValueError, match="limit"):
        stores.activities.timeline("org-1", "cand-1", None, 0)


def test_a_thread_lists_its_messages_oldest_first(stores: Stores) -> None:
    reply = make_activity("<reply@x>", thread_id="t-9", received_at=T0 + timedelta(hours=2))
    start = make_activity("<start@x>", thread_id="t-9", received_at=T0)
    other = make_activity("<other@x>", thread_id="t-1", received_at=T0 + timedelta(hours=1))
    stores.activities.save([reply, other, start])
    assert [a.internet_message_id for a in stores.activities.thread("org-1", "t-9")] == ["<start@x>", "<reply@x>"]
    assert stores.activities.thread("org-1", "t-unknown") == ()


def test_thread_ids_are_found_for_stored_message_ids_only(stores: Stores) -> None:
    stores.activities.save([make_activity("<known@x>", thread_id="t-5")])
    found = stores.activities.thread_ids_for_messages("org-1", ["<known@x>", "<unknown@x>", "<KNOWN@x> "])
    assert found == {"<known@x>": "t-5", "<KNOWN@x> ": "t-5"}


def test_deleting_an_activity_removes_it_from_every_timeline_and_thread(stores: Stores) -> None:
    doomed = make_activity("<doomed@x>", records=("cand-1", "cand-2"), thread_id="t-1")
    kept = make_activity("<kept@x>", records=("cand-1",), thread_id="t-1", received_at=T0 + timedelta(minutes=1))
    stores.activities.save([doomed, kept])
    assert stores.activities.delete("org-1", doomed.activity_id) is True
    assert stores.activities.delete("org-1", doomed.activity_id) is False
    assert stores.activities.get("org-1", doomed.activity_id) is None
    assert stores.activities.timeline("org-1", "cand-1", None, 10).items == (kept,)
    assert stores.activities.timeline("org-1", "cand-2", None, 10).items == ()
    assert stores.activities.thread("org-1", "t-1") == (kept,)
    assert stores.activities.thread_ids_for_messages("org-1", ["<doomed@x>"]) == {}


def test_purging_a_mailbox_deletes_what_only_it_saw_and_unlinks_the_rest(stores: Stores) -> None:
    only_mine = make_activity("<mine@x>", mailbox_ids=("mbx-1",))
    shared = make_activity("<shared@x>", mailbox_ids=("mbx-1", "mbx-2"), received_at=T0 + timedelta(minutes=1))
    theirs = make_activity("<theirs@x>", mailbox_ids=("mbx-2",), received_at=T0 + timedelta(minutes=2))
    stores.activities.save([only_mine, shared, theirs])
    assert stores.activities.delete_for_mailbox("org-1", "mbx-1") == 1
    assert stores.activities.get("org-1", only_mine.activity_id) is None
    assert stores.activities.get("org-1", shared.activity_id).mailbox_ids == ("mbx-2",)
    assert stores.activities.get("org-1", theirs.activity_id) == theirs
    timeline = stores.activities.timeline("org-1", "cand-1", None, 10).items
    assert [a.internet_message_id for a in timeline] == ["<theirs@x>", "<shared@x>"]
    assert stores.activities.delete_for_mailbox("org-1", "mbx-1") == 0


def test_a_mailbox_seeing_a_purged_message_again_stores_it_anew(stores: Stores) -> None:
    activity = make_activity("<again@x>", mailbox_ids=("mbx-1",))
    stores.activities.save([activity])
    stores.activities.delete_for_mailbox("org-1", "mbx-1")
    assert stores.activities.save([activity]).created == (activity.activity_id,)


def test_nothing_of_one_org_is_visible_through_another_orgs_id(stores: Stores) -> None:
    theirs = make_activity("<secret@x>", org_id="org-a", records=("cand-1",), thread_id="t-1")
    stores.activities.save([theirs])
    assert stores.activities.get("org-b", theirs.activity_id) is None
    assert stores.activities.timeline("org-b", "cand-1", None, 10).items == ()
    assert stores.activities.thread("org-b", "t-1") == ()
    assert stores.activities.thread_ids_for_messages("org-b", ["<secret@x>"]) == {}
    assert stores.activities.delete("org-b", theirs.activity_id) is False
    assert stores.activities.delete_for_mailbox("org-b", "mbx-1") == 0
    assert stores.activities.get("org-a", theirs.activity_id) == theirs


def test_orgs_with_look_alike_ids_stay_apart(stores: Stores) -> None:
    stores.activities.save([make_activity("<m@x>", org_id="org|t", records=("x",))])
    assert stores.activities.timeline("org", "t|x", None, 10).items == ()
    assert stores.activities.timeline("org|t", "x", None, 10).items != ()


def test_ids_with_characters_table_keys_forbid_are_stored_and_found(stores: Stores) -> None:
    org, record, thread = "org/1#?\\", "cand/\t7?", "thr#ead/\n1"
    activity = make_activity("<a/b#c?d@x>", org_id=org, records=(record,), thread_id=thread, mailbox_ids=("m/1",))
    stores.activities.save([activity])
    assert stores.activities.get(org, activity.activity_id) == activity
    assert stores.activities.timeline(org, record, None, 5).items == (activity,)
    assert stores.activities.thread(org, thread) == (activity,)
    assert stores.activities.thread_ids_for_messages(org, ["<a/b#c?d@x>"]) == {"<a/b#c?d@x>": thread}
    assert stores.activities.delete_for_mailbox(org, "m/1") == 1


def test_datetimes_come_back_timezone_aware_utc_to_the_microsecond(stores: Stores) -> None:
    paris = timezone(timedelta(hours=1))
    naive = make_activity("<naive@x>", received_at=datetime(2026, 3, 2, 9, 30, 15, 654321))
    local = make_activity("<local@x>", received_at=datetime(2026, 3, 2, 10, 30, 15, 654321, tzinfo=paris))
    stores.activities.save([naive, local])
    for activity in (naive, local):
        stored = stores.activities.get("org-1", activity.activity_id)
        assert stored.received_at == datetime(2026, 3, 2, 9, 30, 15, 654321, tzinfo=UTC)
        assert stored.received_at.tzinfo == UTC
        assert stored.sent_at == datetime(2026, 3, 2, 9, 30, 12, 654321, tzinfo=UTC)


def test_a_two_megabyte_body_is_stored_truncated_and_flagged(stores: Stores) -> None:
    body = "Lorem ipsum dolor sit amet. " * 75_000  # 2.1 million characters
    activity = make_activity("<big@x>", body=body)
    assert stores.activities.save([activity]).created == (activity.activity_id,)
    stored = stores.activities.get("org-1", activity.activity_id)
    assert stored.body_truncated is True
    assert body.startswith(stored.body_text)
    assert 400_000 < len(stored.body_text) <= BODY_MAX_UNITS


def test_astral_plane_characters_count_double_against_the_body_limit(stores: Stores) -> None:
    body = "a" + "😀" * 600_000  # 1.2 million UTF-16 code units
    activity = make_activity("<emoji@x>", body=body)
    stores.activities.save([activity])
    stored = stores.activities.get("org-1", activity.activity_id)
    assert stored.body_truncated is True
    assert body.startswith(stored.body_text)
    assert utf16_units(stored.body_text) <= BODY_MAX_UNITS
    assert len(stored.body_text) < BODY_MAX_UNITS // 2 + 1


def test_a_body_just_under_the_limit_is_kept_whole_and_not_flagged(stores: Stores) -> None:
    body = "x" * (4 * PROPERTY_MAX_UNITS) + "😀" * 10
    activity = make_activity("<fits@x>", body=body)
    stores.activities.save([activity])
    assert stores.activities.get("org-1", activity.activity_id) == activity


def test_oversized_subject_and_recipient_lists_are_capped_rather_than_failing(stores: Stores) -> None:
    crowd = tuple(EmailAddress(f"person{i:05d}@client.example", f"Person {i}") for i in range(5_000))
    activity = dataclasses.replace(make_activity("<crowd@x>"), subject="S" * 100_000, to=crowd, cc=crowd)
    assert stores.activities.save([activity]).created == (activity.activity_id,)
    stored = stores.activities.get("org-1", activity.activity_id)
    assert stored.subject == "S" * PROPERTY_MAX_UNITS
    assert 0 < len(stored.to) < len(crowd)
    assert stored.to == crowd[: len(stored.to)]
    assert stored.mailbox_ids == activity.mailbox_ids


def test_lone_surrogates_are_replaced_so_the_write_never_fails(stores: Stores) -> None:
    activity = make_activity("<broken@x>", subject="bad \udc80 byte", body="body \ud800 end")
    stores.activities.save([activity])
    stored = stores.activities.get("org-1", activity.activity_id)
    assert (stored.subject, stored.body_text) == ("bad \ufffd byte", "body \ufffd end")


def test_a_batch_holding_one_stored_activity_creates_the_others_and_merges_that_one(stores: Stores) -> None:
    stored = make_activity("<stored@x>", mailbox_ids=("mbx-1",), received_at=T0 + timedelta(minutes=25))
    stores.activities.save([stored])
    fresh = [make_activity(f"<fresh{i}@x>", received_at=T0 + timedelta(minutes=i)) for i in range(30)]
    again = dataclasses.replace(stored, mailbox_ids=("mbx-2",), received_at=T0 + timedelta(days=1))

    written = stores.activities.save([*fresh[:25], again, *fresh[25:]])

    assert written.created == tuple(activity.activity_id for activity in fresh)
    assert (written.merged, written.unchanged) == ((stored.activity_id,), ())
    merged = dataclasses.replace(stored, mailbox_ids=("mbx-1", "mbx-2"))
    assert stores.activities.get("org-1", stored.activity_id) == merged
    assert all(stores.activities.get("org-1", activity.activity_id) == activity for activity in fresh)
    timeline = stores.activities.timeline("org-1", "cand-1", None, 50)
    assert sorted(activity.activity_id for activity in timeline.items) == sorted(
        activity.activity_id for activity in (*fresh, stored)
    )


# --- the outbox: an event per created activity, written with it, until cleared ---


def test_a_save_with_announce_at_writes_an_outbox_event_for_each_created_activity_only(stores: Stores) -> None:
    known = make_activity("<known@x>")
    stores.activities.save([known])  # saved without events (an org without a webhook)
    fresh = [make_activity(f"<fresh{i}@x>") for i in range(3)]

    written = stores.activities.save([fresh[0], known, *fresh[1:]], announce_at=T0)

    assert [e.activity_id for e in written.events] == [a.activity_id for a in fresh]
    assert all(e.org_id == "org-1" and e.occurred_at == T0 for e in written.events)
    assert len({e.event_id for e in written.events}) == 3
    pending = stores.activities.pending_events("org-1", T0 + timedelta(seconds=1), 100)
    assert sorted(pending, key=lambda e: e.activity_id) == sorted(written.events, key=lambda e: e.activity_id)
    assert stores.activities.pending_events("org-1", T0, 100) == ()  # only events written before the bound
    assert stores.activities.pending_events("org-2", T0 + timedelta(days=1), 100) == ()


def test_saving_the_activities_again_writes_no_new_event_and_keeps_the_first_ids(stores: Stores) -> None:
    batch = [make_activity(f"<m{i}@x>") for i in range(4)]
    first = stores.activities.save(batch, announce_at=T0)
    again = stores.activities.save(batch, announce_at=T0 + timedelta(minutes=5))  # a re-run after a crash

    assert again.events == () and len(again.unchanged) == 4
    later = T0 + timedelta(hours=1)
    assert {e.event_id for e in stores.activities.pending_events("org-1", later, 100)} == {
        e.event_id for e in first.events
    }


def test_cleared_events_are_gone_and_clearing_twice_is_harmless(stores: Stores) -> None:
    written = stores.activities.save([make_activity(f"<m{i}@x>") for i in range(5)], announce_at=T0)
    later = T0 + timedelta(hours=1)

    stores.activities.clear_events("org-1", written.events[:2])
    stores.activities.clear_events("org-1", written.events[:3])

    assert {e.event_id for e in stores.activities.pending_events("org-1", later, 100)} == {
        e.event_id for e in written.events[3:]
    }
    assert len(stores.activities.pending_events("org-1", later, 1)) == 1  # at most ``limit``
    stores.activities.clear_events("org-1", written.events)
    assert stores.activities.pending_events("org-1", later, 100) == ()


def test_an_outbox_event_is_invisible_to_timelines_threads_and_purges(stores: Stores) -> None:
    activity = make_activity("<m1@x>", mailbox_ids=("mbx-1",))
    stores.activities.save([activity], announce_at=T0)

    assert stores.activities.timeline("org-1", "cand-1", None, 10).items == (activity,)
    assert stores.activities.thread("org-1", "thread-1") == (activity,)
    assert stores.activities.delete_for_mailbox("org-1", "mbx-1") == 1
    # The announcement of a deleted activity is left to the delivery, which skips it.
    [event] = stores.activities.pending_events("org-1", T0 + timedelta(hours=1), 10)
    assert event.activity_id == activity.activity_id


# --- Table storage only: what a save costs, and what it leaves in the table ---


class _Writes:
    """An ``after_write`` hook counting the write round trips that succeeded (a save's transactions run
    several at a time: called from several threads)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


def _store(service: TableServiceClient, prefix: str, writes: _Writes) -> TableActivityStore:
    store = TableActivityStore(service, prefix, TableMetrics(), after_write=writes)
    store.get("org-1", "warm-up")  # creates the table, outside the measured saves
    return store


def _entities(service: TableServiceClient, prefix: str) -> dict[tuple[str, str], tuple[Any, dict[str, Any]]]:
    """Every entity of the activity table with its ETag (which changes on any write to it)."""
    return {
        (entity["PartitionKey"], entity["RowKey"]): (entity.metadata["etag"], dict(entity))
        for entity in service.get_table_client(f"{prefix}activities").list_entities()
    }


def test_new_activities_are_saved_without_reads_several_to_a_transaction(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    writes = _Writes()
    store = _store(table_service, table_prefix, writes)

    ten = store.save([make_activity(f"<t{i}@x>", records=("cand-1", "acct-1"), thread_id=f"t-{i}") for i in range(10)])
    assert (len(ten.created), ten.transactions, writes.count) == (10, 1, 1)

    hundred = store.save([make_activity(f"<h{i}@x>", records=("cand-1", "acct-1")) for i in range(100)])
    # Five operations each (row, two timeline rows, thread and mailbox rows): twenty to a transaction.
    assert (len(hundred.created), hundred.transactions, writes.count) == (100, 5, 1 + 5)


def test_a_transaction_refused_for_one_stored_activity_costs_a_read_of_each_of_its_activities_only(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    writes = _Writes()
    store = _store(table_service, table_prefix, writes)
    stored = make_activity("<stored@x>")
    store.save([stored])
    page = [make_activity(f"<m{i}@x>") for i in range(30)]  # four operations each: 25 to a transaction
    page[27] = dataclasses.replace(stored, mailbox_ids=("mbx-2",))
    before = writes.count

    written = store.save(page)

    assert (len(written.created), written.merged) == (29, (stored.activity_id,))
    # 25 created in one transaction; the other five refused, read, then written in one transaction.
    assert written.transactions == 1 + 1 + 5 + 1
    assert writes.count - before == 2


def test_saving_the_same_batch_twice_writes_nothing_the_second_time(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    writes = _Writes()
    store = _store(table_service, table_prefix, writes)
    batch = [make_activity(f"<m{i}@x>", records=("cand-1", f"acct-{i % 3}"), thread_id=f"t-{i % 4}") for i in range(45)]
    first = store.save(batch)
    after_first = _entities(table_service, table_prefix)
    before = writes.count

    second = store.save(batch)

    assert (len(first.created), first.transactions, before) == (len(batch), 3, 3)  # five operations each
    assert len(second.unchanged) == len(batch)
    assert second.created == second.merged == ()
    assert writes.count == before
    assert _entities(table_service, table_prefix) == after_first


def test_large_bodies_saved_together_are_spread_over_transactions_within_the_request_limit(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    writes = _Writes()
    store = _store(table_service, table_prefix, writes)
    small = [make_activity(f"<small{i}@x>") for i in range(5)]
    # About 480,000 "é" each once fitted: nearly 3 MB of request each, where the service takes 4 MiB.
    large = [make_activity(f"<large{i}@x>", body="é" * 900_000) for i in range(3)]

    written = store.save([*small, *large])

    assert written.created == tuple(activity.activity_id for activity in (*small, *large))
    assert written.transactions == writes.count == 3  # the small ones ride with the first large one
    for activity in large:
        stored = store.get("org-1", activity.activity_id)
        assert stored == fit_activity(activity)
        assert stored is not None and stored.body_truncated


def test_an_outbox_row_rides_in_its_activitys_transaction_and_costs_one_operation(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    writes = _Writes()
    store = _store(table_service, table_prefix, writes)

    ten = store.save([make_activity(f"<t{i}@x>", records=("cand-1", "acct-1")) for i in range(10)], announce_at=T0)
    assert (len(ten.events), ten.transactions, writes.count) == (10, 1, 1)

    hundred = store.save([make_activity(f"<h{i}@x>", records=("cand-1", "acct-1")) for i in range(100)], announce_at=T0)
    # Six operations each (five as without events, and the outbox row): sixteen to a transaction.
    assert (len(hundred.events), hundred.transactions, writes.count) == (100, 7, 1 + 7)


class _StopAfter:
    """An ``after_write`` hook that kills the save after ``n`` write round trips (a worker dying there)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self) -> None:
        self.n -= 1
        if self.n == 0:
            raise RuntimeError("worker died")


def test_a_create_spread_over_transactions_has_its_outbox_row_only_in_its_last_one(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    # 120 record links: the create (index rows, outbox row, activity) needs two transactions, so it is
    # never sent unread; on the read path its index rows go first, and the outbox row with the activity.
    big = make_activity("<big@x>", records=tuple(f"rec-{i}" for i in range(120)))
    TableActivityStore(table_service, table_prefix).get("org-1", "warm-up")
    dying = TableActivityStore(table_service, table_prefix, TableMetrics(), after_write=_StopAfter(1))
    later = T0 + timedelta(hours=1)

    with pytest.raises(RuntimeError):
        dying.save([big], announce_at=T0)  # killed after its first transaction (index rows only)

    store = TableActivityStore(table_service, table_prefix)
    assert store.get("org-1", big.activity_id) is None
    assert store.pending_events("org-1", later, 10) == ()  # no event without its activity
    written = store.save([big], announce_at=T0)
    assert written.created == (big.activity_id,)
    assert store.pending_events("org-1", later, 10) == written.events and len(written.events) == 1
