"""The mailbox's sync lease as a fence: a run that lost it writes nothing more, a run decides on the mailbox
read under it, and a disconnect takes it over so nothing of the mailbox is written after it returns.

Runs are held at a chosen point by thin wrappers around the product's ports (a hold right after a page's
checkpoint on the ``CursorStore``, a hold inside ``ActivityStore.save``, an action before
``LeaseStore.acquire``); the backfill and the disconnect are the product's own use cases, on Azurite and
the HTTPS emulator. A run is held "between pages" right after page 1's checkpoint wrote (page 1 durable,
nothing of page 2 written: a page's writes start only after the previous page's ended), not after a page
fetch, which the run's writer thread may still be writing the previous page behind."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from sync_core.adapters.storage_queue import StorageWorkQueue
from sync_core.adapters.table_due import TableDueIndex
from sync_core.domain.model import Activity, MailboxStatus
from sync_core.ports import ActivityStore, ActivityWrite, CursorStore
from sync_core.use_cases.commands import SyncMailbox as SyncMessage
from sync_core.use_cases.connect import disconnect
from sync_core.use_cases.schedule import ScheduleDeps, process_message, request_backfill
from sync_core.use_cases.sync_mailbox import WRITE_GRACE, SyncOutcome
from tests.checkpoint_hooks import HoldAtCheckpoint
from tests.integration.sync_env import ADELE, CAROL, ORG
from tests.lease_hooks import BeforeFirstAcquire, Once, StateBeforeFirstAcquire
from tests.reliability.rel_env import Delivered, Ledger, OffsetClock, RelEnv, assert_converged, iso, now

BACKFILL_DAYS = 1


# -- wrappers and helpers -----------------------------------------------------------------------------


class WatchedActivities:
    """The real ``ActivityStore``; records every ``save`` once ``watching`` is set."""

    def __init__(self, inner: ActivityStore) -> None:
        self.inner = inner
        self.watching = False
        self.saves_seen: list[int] = []

    def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
        if self.watching:
            self.saves_seen.append(len(activities))
        return self.inner.save(activities, announce_at=announce_at)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class WatchedCursors:
    """The real ``CursorStore``; records every ``put`` and ``clear`` once ``watching`` is set."""

    def __init__(self, inner: CursorStore) -> None:
        self.inner = inner
        self.watching = False
        self.writes_seen: list[str] = []

    def get_all(self, org_id: str, mailbox_id: str) -> Mapping[str, str]:
        return self.inner.get_all(org_id, mailbox_id)

    def put(self, org_id: str, mailbox_id: str, folder: str, link: str) -> None:
        if self.watching:
            self.writes_seen.append(folder)
        self.inner.put(org_id, mailbox_id, folder, link)

    def put_many(self, org_id: str, mailbox_id: str, links: Mapping[str, str]) -> None:
        if self.watching:
            self.writes_seen.extend(links)
        self.inner.put_many(org_id, mailbox_id, links)

    def clear(self, org_id: str, mailbox_id: str) -> None:
        if self.watching:
            self.writes_seen.append("*")
        self.inner.clear(org_id, mailbox_id)


class HeldSave:
    """The real ``ActivityStore``; the ``hold_on``-th ``save`` waits for ``resume`` before it writes, and
    sets ``saved`` once it wrote."""

    def __init__(self, inner: ActivityStore, hold_on: int) -> None:
        self.inner = inner
        self.hold_on = hold_on
        self.calls = 0
        self.holding, self.resume, self.saved = threading.Event(), threading.Event(), threading.Event()

    def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
        self.calls += 1
        if self.calls != self.hold_on:
            return self.inner.save(activities, announce_at=announce_at)
        self.holding.set()
        assert self.resume.wait(60)
        try:
            return self.inner.save(activities, announce_at=announce_at)
        finally:
            self.saved.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run_in_thread(run: Callable[[], SyncOutcome]) -> tuple[threading.Thread, dict[str, SyncOutcome]]:
    result: dict[str, SyncOutcome] = {}
    thread = threading.Thread(target=lambda: result.setdefault("outcome", run()))
    thread.start()
    return thread, result


def snapshot(env: RelEnv) -> dict[tuple[str, str, str], str]:
    """Every entity of every table of the test, by key, with its ETag: equal snapshots mean no write."""
    return {
        (name, entity["PartitionKey"], entity["RowKey"]): entity.metadata["etag"]
        for name in env.table_names()
        for entity in env.service.get_table_client(name).list_entities()
    }


def matched_at(ledger: Ledger, received: datetime) -> Delivered:
    """A message from Carol to Adele received at ``received`` (e.g. between two watermarks)."""
    env = ledger.env
    subject = f"Matched {ledger.token} {len(ledger.items)}"
    ids = env.deliver("adele", subject=subject, received=iso(received), from_=CAROL, to=[env.address("adele")],
                      body=f"Body of {subject}")  # fmt: skip
    return ledger.add("adele", subject, ids["internetMessageId"], received, "matched", "c-carol")


def backfill_mail(ledger: Ledger) -> None:
    """Mail a backfill of ``BACKFILL_DAYS`` must bring in (between the new and the old watermark), and
    mail older than the new watermark, which it must not."""
    new_watermark = now() - timedelta(days=BACKFILL_DAYS)
    for hours in (10, 12, 14):
        matched_at(ledger, ledger.env.watermark - timedelta(hours=hours))
    ledger.old(watermark=new_watermark)


@pytest.fixture
def schedule(rel: RelEnv, storage_connection_string: str) -> Iterator[ScheduleDeps]:
    """The product's scheduling use cases on Azurite (due index, sync queue); its runs are ``rel.run``."""
    client = QueueClient.from_connection_string(storage_connection_string, "lease-" + rel.prefix.lower())
    yield ScheduleDeps(
        due=TableDueIndex(rel.service, rel.prefix, rel.stores.metrics),
        queue=StorageWorkQueue(client),
        mailboxes=rel.stores.mailboxes,
        settings=rel.stores.settings,
        cursors=rel.stores.cursors,
        leases=rel.stores.leases,
        clock=rel.clock,
        sync=lambda _org, mailbox_id, run_id="": rel.run(mailbox_id),
    )
    with contextlib.suppress(ResourceNotFoundError):
        client.delete_queue()
    client.close()


def backfill_message() -> str:
    return json.dumps(SyncMessage(ORG, ADELE, "backfill").to_json())


# -- 6: a run that lost its lease writes nothing more -------------------------------------------------


def test_a_run_held_past_its_lease_while_a_run_and_a_backfill_took_it_writes_nothing_more_and_the_backfill_is_kept(
    rel: RelEnv, schedule: ScheduleDeps
) -> None:
    ledger = Ledger(rel).standard(matched=8, unmatched=3, sent=2, old=0)
    backfill_mail(ledger)
    activities, watched = WatchedActivities(rel.stores.activities), WatchedCursors(rel.stores.cursors)
    hold = HoldAtCheckpoint(at=1)  # page 1 durable, nothing of page 2 written
    first, result = run_in_thread(lambda: rel.run(activities=activities, cursors=hold.cursors(watched)))
    assert hold.holding.wait(60)

    # The first run's lease expires (a later clock); a second run takes it and finishes; then a backfill
    # takes it, moves the watermark back and clears the cursors.
    second = rel.run(clock=OffsetClock(timedelta(minutes=10)))
    backfill = request_backfill(schedule, ORG, ADELE, BACKFILL_DAYS)
    activities.watching = watched.watching = True
    hold.resume.set()
    first.join(60)

    assert second.status == "done" and backfill.applied
    assert (activities.saves_seen, watched.writes_seen) == ([], [])
    assert result["outcome"].status == "busy" and result["outcome"].report is None
    assert rel.stores.cursors.get_all(ORG, ADELE) == {}  # as the backfill left them
    assert process_message(schedule, backfill_message(), 1, 5) == "done"
    assert len(rel.stores.runs.recent(ORG, ADELE, 50)) == 2  # the second run's and the backfill run's
    assert_converged(rel, ledger)


def test_fenced_in_the_transaction_a_run_held_past_its_lease_while_a_run_and_a_backfill_took_it_writes_nothing_more(
    rel: RelEnv, schedule: ScheduleDeps
) -> None:
    # The same race with the mailbox's sync state in one partition (``SyncStateStore``, as deployed): the
    # held run's next write is the renewal carrying page 1's checkpoint, which meets the lease row the
    # backfill left and fails as one transaction, so no table changes after it resumes. The run is held
    # right before that commit is sent (on its page writer; page 1's activities durable, nothing of page 2).
    ledger = Ledger(rel).standard(matched=8, unmatched=3, sent=2, old=0)
    backfill_mail(ledger)
    hold = HoldAtCheckpoint(at=1)
    first, result = run_in_thread(lambda: rel.run(state=hold.state(rel.stores.sync_state)))
    assert hold.holding.wait(60)

    second = rel.run(clock=OffsetClock(timedelta(minutes=10)))
    backfill = request_backfill(schedule, ORG, ADELE, BACKFILL_DAYS)
    before = snapshot(rel)
    hold.resume.set()
    first.join(60)

    assert second.status == "done" and backfill.applied
    assert snapshot(rel) == before  # no activity, cursor, report, status or lease written since
    assert result["outcome"].status == "busy" and result["outcome"].report is None
    assert rel.stores.cursors.get_all(ORG, ADELE) == {}  # as the backfill left them
    assert process_message(schedule, backfill_message(), 1, 5) == "done"
    assert len(rel.stores.runs.recent(ORG, ADELE, 50)) == 2  # the second run's and the backfill run's
    assert_converged(rel, ledger)


# -- 7: the mailbox is read under the lease ----------------------------------------------------------


def test_a_backfill_applied_between_a_runs_first_mailbox_read_and_its_taking_the_lease_is_honoured(
    rel: RelEnv, schedule: ScheduleDeps
) -> None:
    ledger = Ledger(rel).standard(matched=4, unmatched=2, sent=2, old=0)
    backfill_mail(ledger)
    applied: list[bool] = []
    leases = BeforeFirstAcquire(
        rel.stores.leases, lambda: applied.append(request_backfill(schedule, ORG, ADELE, BACKFILL_DAYS).applied)
    )

    outcome = rel.run(leases=leases)

    assert applied == [True] and outcome.status == "done"
    assert rel.mailbox().watermark < rel.watermark - timedelta(hours=12)
    assert_converged(rel, ledger)  # the mail between the new and the old watermark included
    assert process_message(schedule, backfill_message(), 1, 5) == "done"  # the backfill's own message
    assert_converged(rel, ledger)


def test_fenced_in_the_transaction_a_backfill_applied_between_a_runs_state_read_and_its_taking_the_lease_is_honoured(
    rel: RelEnv, schedule: ScheduleDeps
) -> None:
    # The run read its cursors and lease, then its mailbox; the backfill takes and releases the lease
    # before the run takes it at the version it read: that fails, and the run takes it the ordinary way
    # and reads the moved watermark and the cleared cursors under it.
    ledger = Ledger(rel).standard(matched=4, unmatched=2, sent=2, old=0)
    backfill_mail(ledger)
    applied: list[bool] = []
    once = Once(lambda: applied.append(request_backfill(schedule, ORG, ADELE, BACKFILL_DAYS).applied))
    leases = BeforeFirstAcquire(rel.stores.leases, once)
    state = StateBeforeFirstAcquire(rel.stores.sync_state, once)

    outcome = rel.run(leases=leases, state=state)

    assert applied == [True] and outcome.status == "done"
    assert rel.mailbox().watermark < rel.watermark - timedelta(hours=12)
    assert_converged(rel, ledger)  # the mail between the new and the old watermark included
    assert process_message(schedule, backfill_message(), 1, 5) == "done"
    assert_converged(rel, ledger)


# -- 8: disconnect fences out a running sync ----------------------------------------------------------


def assert_nothing_of_the_mailbox_left(rel: RelEnv) -> None:
    assert [a.internet_message_id for a in rel.activities().values() if ADELE in a.mailbox_ids] == []
    assert rel.stores.cursors.get_all(ORG, ADELE) == {}
    assert (rel.mailbox().status, rel.mailbox().status_reason) == (MailboxStatus.DISCONNECTED, "disconnected")


@pytest.mark.parametrize("fenced", [True, False], ids=["fenced_in_the_transaction", "classic"])
def test_disconnect_with_purge_while_a_run_is_held_between_pages_leaves_nothing_of_the_mailbox_written_after_it_returns(
    rel: RelEnv, fenced: bool
) -> None:
    Ledger(rel).standard()
    _ = rel.identity  # builds rel.connect_deps
    waits: list[float] = []
    deps = dataclasses.replace(rel.connect_deps, sleep=waits.append)
    hold = HoldAtCheckpoint(at=1)  # page 1's activities durable, nothing of page 2 written
    hooked = hold.wrap(fenced, rel.stores.cursors, rel.stores.sync_state)
    reports_before = rel.stores.runs.recent(ORG, ADELE, 50)
    run, result = run_in_thread(lambda: rel.run(**hooked))
    assert hold.holding.wait(60)

    disconnected = disconnect(deps, ORG, ADELE, purge=True)
    after_disconnect = snapshot(rel)
    hold.resume.set()
    run.join(60)

    assert snapshot(rel) == after_disconnect  # no activity, cursor, report, status or lease written since
    assert result["outcome"].status == "busy" and result["outcome"].report is None
    assert disconnected.activities_purged > 0  # page 1 had been stored
    assert waits == [WRITE_GRACE.total_seconds()]  # a run held the lease
    assert rel.stores.runs.recent(ORG, ADELE, 50) == reports_before
    assert_nothing_of_the_mailbox_left(rel)
    assert rel.run().status == "skipped"


def test_a_write_a_run_began_under_its_lease_lands_before_a_disconnect_purges_and_nothing_lands_after(
    rel: RelEnv,
) -> None:
    Ledger(rel).standard()
    _ = rel.identity
    held = HeldSave(rel.stores.activities, hold_on=2)  # the run renewed its lease, then its write stalls

    def grace(seconds: float) -> None:  # disconnect waits out the write window: the stalled write ends in it
        waits.append(seconds)
        held.resume.set()
        assert held.saved.wait(60)

    waits: list[float] = []
    deps = dataclasses.replace(rel.connect_deps, sleep=grace)
    run, result = run_in_thread(lambda: rel.run(activities=held))
    assert held.holding.wait(60)

    disconnect(deps, ORG, ADELE, purge=True)
    after_disconnect = snapshot(rel)
    held.resume.set()  # in case disconnect did not wait
    run.join(60)

    assert snapshot(rel) == after_disconnect
    assert_nothing_of_the_mailbox_left(rel)
    assert result["outcome"].status == "busy"
    assert waits == [WRITE_GRACE.total_seconds()]
