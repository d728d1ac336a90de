"""Scheduling on in-memory doubles: the due index and the timer, coalescing, continuations, backfill,
the reconciliation sweep, and poison messages."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync_core.adapters.table_due import shard
from sync_core.domain.model import EmailAddress, Mailbox, MailboxStatus, MailMessage, OrgSettings, Record, RunStatus
from sync_core.errors import IdentityError, ReauthRequired, StorageUnavailable
from sync_core.ports import Versioned
from sync_core.ports.scheduling import DueEntry
from sync_core.testing.app import InMemoryApp
from sync_core.testing.mail import FakeMailSource, throttled
from sync_core.testing.scheduling import InMemoryDueIndex, InMemoryWorkQueue
from sync_core.testing.stores import InMemoryStores
from sync_core.use_cases import schedule
from sync_core.use_cases.commands import SyncMailbox as SyncMessage
from sync_core.use_cases.run_status import run_state
from sync_core.use_cases.schedule import ScheduleDeps
from sync_core.use_cases.sync_mailbox import SyncOutcome

ORG = "acme"
T0 = datetime(2026, 11, 2, 9, 0, 30, tzinfo=UTC)
CONNECTED = T0 - timedelta(hours=1)
MAX_DEQUEUE = 5


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def now(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)


class DueIndex(InMemoryDueIndex):
    """The in-memory due index, counting the writes it made; ``before_claims`` runs (once) what another
    writer does between the timer's due query and its bulk claim."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.reads = 0
        self.before_claims: list[Callable[[], object]] = []

    def get(self, org_id: str, mailbox_id: str) -> Versioned[DueEntry] | None:
        self.reads += 1
        return super().get(org_id, mailbox_id)

    def put(self, entry: DueEntry, expected: Versioned[DueEntry] | None) -> Versioned[DueEntry] | None:
        stored = super().put(entry, expected)
        self.writes += stored is not None
        return stored

    def put_many(
        self, changes: Sequence[tuple[DueEntry, Versioned[DueEntry]]]
    ) -> tuple[Versioned[DueEntry] | None, ...]:
        while self.before_claims:
            self.before_claims.pop(0)()
        stored = super().put_many(changes)
        self.writes += sum(version is not None for version in stored)
        return stored

    def remove(self, expected: Versioned[DueEntry]) -> bool:
        removed = super().remove(expected)
        self.writes += removed
        return removed


class World:
    """Stores, due index, queue and a scripted mailbox, wired the way bootstrap wires the real adapters.
    ``sync`` runs the real sync_mailbox unless ``script`` holds outcomes (or exceptions) to return."""

    def __init__(self, mailboxes: tuple[str, ...] = ("mb-adele",)) -> None:
        self.stores = InMemoryStores()
        self.due = DueIndex()
        self.queue = InMemoryWorkQueue()
        self.clock = Clock(T0)
        self.mail = FakeMailSource(page_size=10)
        self.app = InMemoryApp(stores=self.stores, mail=self.mail, clock=self.clock, due=self.due, queue=self.queue)
        self.script: list[SyncOutcome | Exception | Callable[[], SyncOutcome]] = []
        self.runs: list[str] = []
        self.run_ids: list[str] = []
        self.stores.records.upsert(ORG, [Record("c-1", "contact", "Carol", emails=("carol@client.example",))])
        self.stores.settings.put(ORG, OrgSettings(internal_domains=("acme.example",)))
        for mailbox_id in mailboxes:
            self.add_mailbox(mailbox_id)

    def add_mailbox(self, mailbox_id: str, org: str = ORG, **changes: Any) -> None:
        address = f"{mailbox_id.removeprefix('mb-')}@acme.example"
        box = Mailbox(org, mailbox_id, address, (address,), watermark=CONNECTED)
        self.stores.mailboxes.add(dataclasses.replace(box, **changes))

    def deps(self, queue: Any = None) -> ScheduleDeps:
        return self.app.schedule_deps(queue=queue or self.queue, sync=self.sync)

    def sync(self, org_id: str, mailbox_id: str, run_id: str = "") -> SyncOutcome:
        self.runs.append(mailbox_id)
        self.run_ids.append(run_id)
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step() if callable(step) else step
        return self.app.sync(org_id, mailbox_id, run_id)

    # -- driving ------------------------------------------------------------------------------------

    def tick(self) -> schedule.TickReport:
        return schedule.enqueue_due(self.deps())

    def deliver_queue(self, rounds: int = 10) -> list[str]:
        """Process queued messages (and the continuations they enqueue) like the queue trigger."""
        outcomes: list[str] = []
        for _ in range(rounds):
            batch = self.queue.take()
            if not batch:
                return outcomes
            for item in batch:
                outcomes.append(self.process(item.body))
        raise AssertionError("the queue did not drain")

    def process(self, body: Mapping[str, Any], dequeue_count: int = 1) -> str:
        return schedule.process_message(self.deps(), json.dumps(body).encode(), dequeue_count, MAX_DEQUEUE)

    def entry(self, mailbox_id: str = "mb-adele") -> DueEntry:
        found = self.due.get(ORG, mailbox_id)
        assert found is not None
        return found.value

    def mailbox(self, mailbox_id: str = "mb-adele") -> Mailbox:
        found = self.stores.mailboxes.get(ORG, mailbox_id)
        assert found is not None
        return found.value

    def set_mailbox(self, mailbox_id: str = "mb-adele", **changes: Any) -> None:
        found = self.stores.mailboxes.get(ORG, mailbox_id)
        assert found is not None
        self.stores.mailboxes.replace(dataclasses.replace(found.value, **changes), found.etag)

    def mail_from_carol(self, received: datetime, mid: str = "<m1@client.example>") -> None:
        self.mail.deliver(
            MailMessage(
                source_id=mid,
                internet_message_id=mid,
                subject="hello",
                sender=EmailAddress("carol@client.example"),
                to=(EmailAddress("adele@acme.example"),),
                cc=(),
                received_at=received,
            )
        )

    def timeline(self) -> list[str]:
        return [a.internet_message_id for a in self.stores.activities.timeline(ORG, "c-1", None, 100).items]


def message(mailbox_id: str = "mb-adele", reason: str = "timer", run_id: str = "") -> dict[str, str]:
    body = {"org_id": ORG, "mailbox_id": mailbox_id, "reason": reason}
    return {**body, "run_id": run_id} if run_id else body


# --- the due index and the timer ---


def test_a_scheduled_mailbox_is_enqueued_by_the_next_tick_and_moved_forward_by_the_poll_interval() -> None:
    world = World()
    schedule.schedule_mailbox(world.deps(), ORG, "mb-adele")

    report = world.tick()

    assert report.enqueued == 1
    assert [m.body for m in world.queue.messages] == [message()]
    assert world.entry().due_at == T0 + timedelta(minutes=5)
    assert world.entry().queued_at is None  # a timer message is not marked: nothing to coalesce with


def test_the_timer_enqueues_a_mailbox_whose_queued_mark_expired_and_drops_the_mark() -> None:
    world = World()
    world.due.put(DueEntry(ORG, "mb-adele", T0, queued_at=T0 - schedule.COALESCE_WINDOW), None)

    report = world.tick()

    assert (report.enqueued, report.coalesced) == (1, 0)
    assert world.entry() == DueEntry(ORG, "mb-adele", T0 + timedelta(minutes=5))


def test_the_timer_enqueues_only_mailboxes_that_are_due() -> None:
    world = World(("mb-a", "mb-b", "mb-c"))
    deps = world.deps()
    schedule.schedule_mailbox(deps, ORG, "mb-a", T0 - timedelta(seconds=1))
    schedule.schedule_mailbox(deps, ORG, "mb-b", T0)
    schedule.schedule_mailbox(deps, ORG, "mb-c", T0 + timedelta(seconds=1))

    world.tick()

    assert sorted(m.body["mailbox_id"] for m in world.queue.messages) == ["mb-a", "mb-b"]
    assert world.entry("mb-c").due_at == T0 + timedelta(seconds=1)


def test_a_second_tick_enqueues_nothing_until_the_poll_interval_has_passed() -> None:
    world = World()
    world.stores.settings.put(ORG, OrgSettings(poll_interval_minutes=15))
    schedule.schedule_mailbox(world.deps(), ORG, "mb-adele")
    world.tick()
    world.queue.take()

    world.clock.advance(minutes=14)
    assert world.tick().enqueued == 0
    world.clock.advance(minutes=1)
    assert world.tick().enqueued == 1


def test_schedule_mailbox_never_delays_an_earlier_due_time() -> None:
    world = World()
    deps = world.deps()
    schedule.schedule_mailbox(deps, ORG, "mb-adele", T0)

    schedule.schedule_mailbox(deps, ORG, "mb-adele", T0 + timedelta(hours=1))

    assert world.entry().due_at == T0


def test_two_timers_claiming_the_same_due_set_never_enqueue_one_mailbox_twice() -> None:
    world = World(tuple(f"mb-{n:02d}" for n in range(40)))
    deps = world.deps()
    for n in range(40):
        schedule.schedule_mailbox(deps, ORG, f"mb-{n:02d}", T0 - timedelta(seconds=n))
    other: list[schedule.TickReport] = []
    # The other timer reads the same due set and claims all of it between this one's read and claim.
    world.due.before_claims.append(lambda: other.append(world.tick()))

    report = world.tick()

    sent = Counter(m.body["mailbox_id"] for m in world.queue.messages)
    assert sent == Counter({f"mb-{n:02d}": 1 for n in range(40)})
    assert (other[0].enqueued, report.enqueued, report.lost_races) == (40, 0, 40)


def test_a_bulk_claim_with_one_entry_changed_concurrently_still_claims_the_others_exactly_once() -> None:
    names = tuple(f"mb-{n:02d}" for n in range(20))
    world = World(names)
    deps = world.deps()
    for name in names:
        schedule.schedule_mailbox(deps, ORG, name)
    assert sum(shard(ORG, name) == shard(ORG, "mb-00") for name in names) > 1  # it fails others' bulk claim
    world.due.before_claims.append(lambda: schedule.request_sync(deps, ORG, "mb-00"))

    report = world.tick()

    sent = Counter((m.body["mailbox_id"], m.body["reason"]) for m in world.queue.messages)
    assert sent == Counter({("mb-00", "sync_now"): 1, **{(name, "timer"): 1 for name in names[1:]}})
    assert (report.enqueued, report.coalesced, report.lost_races) == (19, 1, 0)
    assert {world.entry(name).due_at for name in names} == {T0 + timedelta(minutes=5)}


def test_a_claimed_mailbox_whose_enqueue_fails_is_due_again_at_once() -> None:
    world = World()
    schedule.schedule_mailbox(world.deps(), ORG, "mb-adele")

    class Broken:
        def enqueue(self, message: Any, delay_seconds: int = 0) -> None:
            raise OSError("queue down")

    with pytest.raises(OSError):
        schedule.enqueue_due(world.deps(queue=Broken()))

    assert world.entry().due_at == T0
    assert world.entry().queued_at is None
    assert world.tick().enqueued == 1


# --- the queue-triggered run ---


def test_a_message_runs_the_sync_and_the_mailbox_is_due_again_one_poll_interval_after_the_run() -> None:
    world = World()
    world.mail_from_carol(T0 - timedelta(minutes=1))
    schedule.schedule_mailbox(world.deps(), ORG, "mb-adele")
    schedule.request_sync(world.deps(), ORG, "mb-adele")
    world.clock.advance(seconds=20)

    assert world.deliver_queue() == ["done"]

    assert world.timeline() == ["<m1@client.example>"]
    assert world.entry().due_at == T0 + timedelta(seconds=20, minutes=5)
    assert world.entry().queued_at is None


def test_an_idle_poll_through_the_timer_writes_the_due_entry_once() -> None:
    world = World()
    schedule.schedule_mailbox(world.deps(), ORG, "mb-adele")
    assert world.tick().enqueued == 1 and world.deliver_queue() == ["done"]  # the first sync
    world.clock.advance(minutes=5)
    writes = world.due.writes

    assert world.tick().enqueued == 1
    claimed = world.due.get(ORG, "mb-adele")
    world.clock.advance(seconds=20)
    assert world.deliver_queue() == ["done"]

    assert world.due.writes - writes == 1
    assert world.due.get(ORG, "mb-adele") == claimed  # the run's end left the claimed entry as it was
    assert world.entry() == DueEntry(ORG, "mb-adele", T0 + timedelta(minutes=10))
    assert world.runs == ["mb-adele", "mb-adele"]


def test_a_sync_now_right_after_a_timer_driven_run_is_queued_not_coalesced() -> None:
    world = World()
    schedule.schedule_mailbox(world.deps(), ORG, "mb-adele")
    world.tick()
    assert world.deliver_queue() == ["done"]

    requested = schedule.request_sync(world.deps(), ORG, "mb-adele")
    assert requested.status == "queued"
    assert [m.body for m in world.queue.messages] == [message(reason="sync_now", run_id=requested.run_id)]


def test_a_sync_now_while_a_timer_message_waits_is_queued_and_the_two_runs_store_mail_once() -> None:
    world = World()
    world.mail_from_carol(T0 - timedelta(minutes=1))
    schedule.schedule_mailbox(world.deps(), ORG, "mb-adele")
    world.tick()

    assert schedule.request_sync(world.deps(), ORG, "mb-adele").status == "queued"

    assert world.deliver_queue() == ["done", "done"]
    assert world.timeline() == ["<m1@client.example>"]
    assert world.entry().queued_at is None


@pytest.mark.parametrize("reason", ["sync_now", "continuation", "scheduled"])
def test_a_run_ending_done_brings_a_parked_mailbox_back_to_the_poll_interval(reason: str) -> None:
    world = World()
    world.due.put(DueEntry(ORG, "mb-adele", T0 + schedule.PARKED_RECHECK), None)

    assert world.process(message(reason=reason)) == "done"

    assert world.entry() == DueEntry(ORG, "mb-adele", T0 + timedelta(minutes=5))


def test_the_run_of_a_timer_message_neither_reads_nor_writes_the_due_entry_when_it_ends_done() -> None:
    # The timer's claim made the entry due one interval on, and queues a pending backfill as a backfill
    # message: the run of its timer message leaves the entry alone. An entry parked after the claim (another
    # run's failure) stays so until its recheck claims it.
    world = World()
    world.due.put(DueEntry(ORG, "mb-adele", T0 + schedule.ERROR_RETRY), None)
    reads, writes = world.due.reads, world.due.writes

    assert world.process(message()) == "done"

    assert (world.due.reads - reads, world.due.writes - writes) == (0, 0)
    assert world.entry() == DueEntry(ORG, "mb-adele", T0 + schedule.ERROR_RETRY)


def test_the_timer_queues_an_entry_whose_backfill_is_still_pending_as_a_backfill_message_that_applies_it() -> None:
    world = World()
    key = schedule.sync_lease_key(ORG, "mb-adele")
    assert world.stores.leases.acquire(key, "run", T0 + timedelta(minutes=5), T0)  # a run holds on meanwhile
    request = schedule.request_backfill(world.deps(), ORG, "mb-adele", 7)
    world.queue.take()  # its own message is lost
    world.stores.leases.release(key, "run")
    world.clock.advance(minutes=10)  # past the coalescing window and the due time
    assert request.applied is False and world.mailbox().watermark == CONNECTED

    assert world.tick().enqueued == 1
    [queued] = [m.body for m in world.queue.take()]
    assert (queued["reason"], queued.get("run_id")) == ("backfill", request.run_id)
    assert world.process(queued) == "done"
    assert world.mailbox().watermark == T0 - timedelta(days=7)
    assert world.entry().backfill_since is None


def test_a_backfill_message_meeting_a_runs_lease_is_queued_again_after_the_busy_retry() -> None:
    world = World()
    key = schedule.sync_lease_key(ORG, "mb-adele")
    assert world.stores.leases.acquire(key, "run", T0 + timedelta(minutes=5), T0)
    request = schedule.request_backfill(world.deps(), ORG, "mb-adele", 7)
    [own] = [m.body for m in world.queue.take()]

    assert world.process(own) == "busy"

    [again] = world.queue.take()
    assert again.body == own and again.delay_seconds == 30
    world.stores.leases.release(key, "run")
    assert world.process(again.body) == "done"
    assert world.mailbox().watermark == T0 - timedelta(days=7) and request.applied is False


def test_a_mailbox_added_by_any_path_is_scheduled_by_the_end_of_its_first_run() -> None:
    world = World()
    assert world.due.get(ORG, "mb-adele") is None

    world.process(message(reason="sync_now"))

    assert world.entry().due_at == T0 + timedelta(minutes=5)


def test_duplicate_messages_coalesce_on_the_sync_lease_and_store_nothing_twice() -> None:
    world = World()
    world.mail_from_carol(T0 - timedelta(minutes=1))
    holder = world.stores.leases
    # A run of the mailbox is in flight (it holds the very lease sync_mailbox takes).
    assert holder.acquire(schedule.sync_lease_key(ORG, "mb-adele"), "other-run", T0 + timedelta(minutes=5), T0)

    assert world.process(message()) == "busy"
    assert world.stores.runs.recent(ORG, "mb-adele", 10) == ()

    holder.release(schedule.sync_lease_key(ORG, "mb-adele"), "other-run")
    assert [world.process(message()), world.process(message())] == ["done", "done"]
    assert world.timeline() == ["<m1@client.example>"]


def test_a_run_that_stops_early_enqueues_its_continuation_delayed_by_retry_after() -> None:
    world = World()
    world.mail.fail_next = [throttled()]

    assert world.process(message()) == "more"

    [continuation] = world.queue.take()
    assert continuation.body == message(reason="continuation")
    assert continuation.delay_seconds == 30
    assert world.entry().queued_at == T0

    world.script = [SyncOutcome("more", None, None)]
    world.process(continuation.body)
    assert [m.delay_seconds for m in world.queue.take()] == [0]


def test_a_failed_run_leaves_the_status_the_run_set_and_parks_the_mailbox() -> None:
    world = World()
    world.mail.fail_next = [ReauthRequired("AADSTS70008: the grant expired", 70008)]

    assert world.process(message()) == "failed"

    assert world.mailbox().status is MailboxStatus.NEEDS_REAUTH
    assert world.entry().due_at == T0 + schedule.PARKED_RECHECK


def test_a_paused_mailbox_is_parked_and_a_disconnected_one_leaves_the_index() -> None:
    world = World(("mb-paused", "mb-gone"))
    world.set_mailbox("mb-paused", enabled=False)
    world.set_mailbox("mb-gone", status=MailboxStatus.DISCONNECTED)

    assert world.process(message("mb-paused")) == "skipped"
    assert world.process(message("mb-gone")) == "skipped"
    assert world.process(message("mb-never-existed")) == "skipped"

    assert world.entry("mb-paused").due_at == T0 + schedule.PARKED_RECHECK
    assert world.due.get(ORG, "mb-gone") is None
    assert world.due.get(ORG, "mb-never-existed") is None


def test_a_message_failing_on_every_delivery_sets_error_with_the_count_and_type_on_the_last_one_and_stays_scheduled(
) -> None:
    world = World()
    secret = RuntimeError("could not parse mail from carol@client.example")

    for attempt in range(1, MAX_DEQUEUE):
        world.script = [secret]
        with pytest.raises(RuntimeError):
            world.process(message(), dequeue_count=attempt)
        assert world.mailbox().status is MailboxStatus.ACTIVE

    world.script = [secret]
    with pytest.raises(RuntimeError):
        world.process(message(), dequeue_count=MAX_DEQUEUE)

    assert world.mailbox().status is MailboxStatus.ERROR
    assert world.mailbox().status_reason == "sync failed 5 times: RuntimeError"
    assert world.entry().due_at == T0 + schedule.ERROR_RETRY  # retried, not parked for good

    world.clock.advance(seconds=schedule.ERROR_RETRY.total_seconds())
    assert world.tick().enqueued == 1
    assert world.deliver_queue() == ["done"]  # the cause is gone: the next run recovers the mailbox
    assert (world.mailbox().status, world.mailbox().status_reason) == (MailboxStatus.ACTIVE, "")


def test_a_message_that_is_not_a_sync_request_is_dropped() -> None:
    world = World()

    for body in (b"not json", b"[]", b'{"org_id": "acme"}', b'{"org_id": "", "mailbox_id": "x"}'):
        assert schedule.process_message(world.deps(), body, 1, MAX_DEQUEUE) == "invalid"
    assert world.runs == []


# --- "Sync now" ---


def test_sync_now_enqueues_once_and_coalesces_until_a_run_finished() -> None:
    world = World()
    deps = world.deps()

    first = schedule.request_sync(deps, ORG, "mb-adele")
    second = schedule.request_sync(deps, ORG, "mb-adele")
    assert (first.status, second.status) == ("queued", "coalesced")
    assert second.run_id == first.run_id  # the coalesced request polls the run already queued
    assert [m.body for m in world.queue.messages] == [message(reason="sync_now", run_id=first.run_id)]

    world.deliver_queue()
    assert schedule.request_sync(deps, ORG, "mb-adele").status == "queued"


def test_sync_now_enqueues_again_once_the_coalescing_window_passed() -> None:
    world = World()
    deps = world.deps()
    schedule.request_sync(deps, ORG, "mb-adele")

    world.clock.advance(seconds=schedule.COALESCE_WINDOW.total_seconds())

    assert schedule.request_sync(deps, ORG, "mb-adele").status == "queued"


def test_the_timer_does_not_enqueue_a_mailbox_whose_sync_is_already_queued_but_still_moves_it_on() -> None:
    world = World()
    deps = world.deps()
    schedule.schedule_mailbox(deps, ORG, "mb-adele")
    schedule.request_sync(deps, ORG, "mb-adele")
    world.queue.take()

    report = world.tick()

    assert (report.enqueued, report.coalesced) == (0, 1)
    assert world.queue.messages == []
    assert world.entry().due_at == T0 + timedelta(minutes=5)


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"status": MailboxStatus.NEEDS_REAUTH, "status_reason": "grant revoked"}, "needs_reauth"),
        ({"status": MailboxStatus.DISCONNECTED}, "disconnected"),
        ({"status": MailboxStatus.PAUSED}, "paused"),
        ({"enabled": False}, "paused"),
    ],
)
def test_sync_now_and_backfill_refuse_a_mailbox_that_cannot_sync(changes: dict[str, Any], status: str) -> None:
    world = World()
    world.set_mailbox(**changes)

    with pytest.raises(schedule.NotSyncable) as refused:
        schedule.request_sync(world.deps(), ORG, "mb-adele")
    assert refused.value.status == status
    with pytest.raises(schedule.NotSyncable):
        schedule.request_backfill(world.deps(), ORG, "mb-adele", 7)
    assert world.queue.messages == []
    assert world.mailbox().watermark == CONNECTED


def test_sync_now_on_a_mailbox_in_error_is_accepted_and_its_successful_run_sets_it_active() -> None:
    world = World()
    world.set_mailbox(status=MailboxStatus.ERROR, status_reason="sync failed 5 times: GraphError")

    assert schedule.request_sync(world.deps(), ORG, "mb-adele").status == "queued"
    assert world.deliver_queue() == ["done"]

    assert (world.mailbox().status, world.mailbox().status_reason) == (MailboxStatus.ACTIVE, "")
    [report] = world.stores.runs.recent(ORG, "mb-adele", 5)
    assert (report.error, report.error_class) == ("", "")
    assert schedule.request_backfill(world.deps(), ORG, "mb-adele", 7).status == "queued"


def test_a_configuration_failure_sets_error_and_is_retried_with_a_back_off_until_a_run_succeeds() -> None:
    world = World()
    world.mail.fail_next = [IdentityError("the app's client secret has expired (AADSTS7000222)", "invalid_client")]

    assert world.process(message()) == "failed"

    assert world.mailbox().status is MailboxStatus.ERROR
    assert world.mailbox().status_reason == "the app's client secret has expired (AADSTS7000222)"
    assert world.entry().due_at == T0 + schedule.ERROR_RETRY
    world.clock.advance(seconds=schedule.ERROR_RETRY.total_seconds())
    assert world.tick().enqueued == 1
    assert world.deliver_queue() == ["done"]
    assert (world.mailbox().status, world.mailbox().status_reason) == (MailboxStatus.ACTIVE, "")


def test_a_transient_failure_on_the_last_delivery_neither_sets_error_nor_parks_the_mailbox() -> None:
    world = World()
    world.script = [StorageUnavailable("table storage unreachable")]

    with pytest.raises(StorageUnavailable):
        world.process(message(), dequeue_count=MAX_DEQUEUE)

    assert (world.mailbox().status, world.mailbox().status_reason) == (MailboxStatus.ACTIVE, "")
    assert world.entry().due_at == T0 + schedule.ERROR_RETRY


def test_sync_now_refuses_while_the_org_switched_automation_off_and_for_an_unknown_mailbox() -> None:
    world = World()
    world.stores.settings.put(ORG, OrgSettings(automation_enabled=False))

    with pytest.raises(schedule.NotSyncable):
        schedule.request_sync(world.deps(), ORG, "mb-adele")
    with pytest.raises(schedule.MailboxNotFound):
        schedule.request_sync(world.deps(), ORG, "mb-nobody")
    with pytest.raises(schedule.MailboxNotFound):
        schedule.request_sync(world.deps(), "other-org", "mb-adele")


# --- backfill ---


def test_backfill_moves_the_watermark_back_clears_the_cursors_and_older_mail_arrives() -> None:
    world = World()
    world.mail_from_carol(CONNECTED - timedelta(days=3), "<old@client.example>")
    world.mail_from_carol(CONNECTED - timedelta(days=30), "<too-old@client.example>")
    world.mail_from_carol(CONNECTED + timedelta(minutes=1), "<new@client.example>")
    world.process(message())
    assert world.timeline() == ["<new@client.example>"]

    result = schedule.request_backfill(world.deps(), ORG, "mb-adele", 7)

    assert (result.status, result.applied, result.since) == ("queued", True, T0 - timedelta(days=7))
    assert world.mailbox().watermark == T0 - timedelta(days=7)
    assert world.stores.cursors.get_all(ORG, "mb-adele") == {}
    assert world.entry().backfill_since is None
    assert world.deliver_queue() == ["done"]
    assert world.timeline() == ["<new@client.example>", "<old@client.example>"]
    assert len(world.stores.activities.timeline(ORG, "c-1", None, 100).items) == 2


def test_a_backfill_never_moves_the_watermark_forward() -> None:
    world = World()
    schedule.request_backfill(world.deps(), ORG, "mb-adele", 30)

    schedule.request_backfill(world.deps(), ORG, "mb-adele", 1)

    assert world.mailbox().watermark == T0 - timedelta(days=30)


def test_a_backfill_requested_during_a_run_waits_for_the_lease_and_the_run_end_enqueues_it() -> None:
    world = World()
    deps = world.deps()
    key = schedule.sync_lease_key(ORG, "mb-adele")
    requested: list[schedule.SyncRequest] = []

    def run_during_which_a_backfill_is_requested() -> SyncOutcome:
        assert world.stores.leases.acquire(key, "run", T0 + timedelta(minutes=5), T0)
        requested.append(schedule.request_backfill(deps, ORG, "mb-adele", 7))
        assert world.process(message(reason="backfill")) == "busy"  # its own message, while the run holds on
        world.stores.leases.release(key, "run")
        return SyncOutcome("done")

    world.queue.take()
    world.script = [run_during_which_a_backfill_is_requested]
    world.process(message())

    assert requested[0].applied is False
    assert world.mailbox().watermark == CONNECTED  # not touched while the run held the lease
    [follow_up] = [m.body for m in world.queue.take() if m.body["reason"] == "backfill"][-1:]
    assert world.process(follow_up) == "done"
    assert world.mailbox().watermark == T0 - timedelta(days=7)
    assert world.entry().backfill_since is None


class TakenOverAfterAcquire:
    """The in-memory lease store; right after an ``acquire`` a disconnect takes the lease over."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def acquire(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        taken = self.inner.acquire(key, owner, until, now)
        self.inner.take_over(key, "disconnect", until, now)
        return bool(taken)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_backfill_whose_lease_a_disconnect_took_over_writes_nothing_and_stays_pending() -> None:
    world = World()
    world.stores.cursors.put(ORG, "mb-adele", "inbox", "delta 2026-11-01T09:00:00+00:00 link-1")
    deps = dataclasses.replace(world.deps(), leases=TakenOverAfterAcquire(world.stores.leases))

    request = schedule.request_backfill(deps, ORG, "mb-adele", 7)

    assert request.applied is False
    assert world.mailbox().watermark == CONNECTED
    assert world.stores.cursors.get_all(ORG, "mb-adele") != {}
    assert world.entry().backfill_since == T0 - timedelta(days=7)


# --- the reconciliation sweep ---


def test_the_sweep_gives_entries_to_active_mailboxes_without_one_a_bounded_page_per_tick() -> None:
    count = schedule.SWEEP_PAGE * 2 + 50
    world = World(tuple(f"mb-{n:04d}" for n in range(count)))
    world.add_mailbox("mb-paused", enabled=False)
    world.add_mailbox("mb-broken", status=MailboxStatus.ERROR)

    reports = [world.tick() for _ in range(3)]

    assert [r.swept for r in reports] == [schedule.SWEEP_PAGE, schedule.SWEEP_PAGE, 52]
    assert [r.added for r in reports] == [schedule.SWEEP_PAGE, schedule.SWEEP_PAGE, 51]
    assert sum(r.enqueued for r in reports) == count + 1
    assert world.due.get(ORG, "mb-paused") is None
    assert world.due.get(ORG, "mb-broken") is not None  # a mailbox in error is retried, never dropped
    assert world.due.sweep_position() is None  # wrapped around: the next tick starts over

    again = world.tick()
    assert (again.swept, again.added) == (schedule.SWEEP_PAGE, 0)


def test_the_sweep_starts_over_from_a_position_the_catalog_does_not_know() -> None:
    world = World()
    world.due.set_sweep_position("not a position")

    assert world.tick().added == 1


# --- messages ---


def test_messages_carry_org_mailbox_and_reason_only() -> None:
    assert SyncMessage("o", "m", "timer").to_json() == {"org_id": "o", "mailbox_id": "m", "reason": "timer"}
    assert SyncMessage.parse(b'{"org_id": "o", "mailbox_id": "m"}') == SyncMessage("o", "m", "")


# --- runs a CRM polls ---


def state(world: World, run_id: str) -> str | None:
    found = run_state(world.due, world.stores.runs, ORG, "mb-adele", run_id)
    return found.status if found is not None else None


def test_a_sync_now_is_queued_until_its_run_reports_under_the_same_id_even_when_idle() -> None:
    world = World()
    schedule.schedule_mailbox(world.deps(), ORG, "mb-adele")
    world.tick()
    assert world.deliver_queue() == ["done"]  # caught up: the next poll finds nothing new

    requested = schedule.request_sync(world.deps(), ORG, "mb-adele")
    assert state(world, requested.run_id) == "queued"
    assert world.deliver_queue() == ["done"]

    assert world.run_ids[-1] == requested.run_id
    found = run_state(world.due, world.stores.runs, ORG, "mb-adele", requested.run_id)
    assert found is not None and found.status == "done" and found.report is not None
    assert found.report.run_id == requested.run_id


def test_a_requested_run_that_meets_another_run_runs_again_later_under_its_id() -> None:
    world = World()
    requested = schedule.request_sync(world.deps(), ORG, "mb-adele")
    [queued] = world.queue.take()
    world.script = [SyncOutcome(RunStatus.BUSY)]

    assert world.process(queued.body) == "busy"
    [retry] = world.queue.take()
    assert retry.body == message(reason="sync_now", run_id=requested.run_id)
    assert retry.delay_seconds == 30
    assert state(world, requested.run_id) == "queued"


def test_a_requested_run_of_a_mailbox_that_cannot_sync_ends_skipped_not_queued_for_ever() -> None:
    world = World()
    requested = schedule.request_sync(world.deps(), ORG, "mb-adele")
    current = world.stores.mailboxes.get(ORG, "mb-adele")
    assert current is not None
    world.stores.mailboxes.replace(dataclasses.replace(current.value, enabled=False), current.etag)

    assert world.deliver_queue() == ["skipped"]

    assert state(world, requested.run_id) == "skipped"


def test_a_continuation_reports_under_the_run_id_the_crm_polls() -> None:
    world = World()
    requested = schedule.request_sync(world.deps(), ORG, "mb-adele")
    [queued] = world.queue.take()
    world.script = [SyncOutcome(RunStatus.MORE, retry_after=5)]

    assert world.process(queued.body) == "more"

    [continuation] = world.queue.take()
    assert continuation.body == message(reason="continuation", run_id=requested.run_id)


def test_a_backfill_answers_a_run_id_its_message_carries() -> None:
    world = World()

    requested = schedule.request_backfill(world.deps(), ORG, "mb-adele", 30)

    assert requested.run_id and [m.body for m in world.queue.messages] == [
        message(reason="backfill", run_id=requested.run_id)
    ]
    assert state(world, requested.run_id) == "queued"


def test_an_unknown_run_id_has_no_state() -> None:
    world = World()
    schedule.request_sync(world.deps(), ORG, "mb-adele")

    assert state(world, "0" * 32) is None


def test_a_sync_message_keeps_its_older_form_and_a_run_id_that_is_not_a_token_is_dropped() -> None:
    older = SyncMessage.parse(json.dumps(message(reason="sync_now")))
    odd = SyncMessage.parse(json.dumps({**message(reason="sync_now"), "run_id": "../../x"}))

    assert older == SyncMessage(ORG, "mb-adele", "sync_now") and older.to_json() == message(reason="sync_now")
    assert odd.run_id == ""
