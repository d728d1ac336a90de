"""The per-mailbox sync run, on in-memory doubles of the project's own ports."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from sync_core.domain.model import (
    Activity,
    AttachmentSummary,
    Direction,
    EmailAddress,
    FolderFilter,
    Mailbox,
    MailboxStatus,
    MailMessage,
    OrgSettings,
    Record,
    RecordRef,
    activity_id_for,
)
from sync_core.errors import IdentityError, ReauthRequired, StorageUnavailable
from sync_core.ports import ActivityWrite, DeltaPage, RunReport
from sync_core.testing.app import InMemoryApp
from sync_core.testing.mail import FakeMailSource, FixedClock, throttled
from sync_core.testing.stores import InMemoryActivityStore, InMemoryStores
from sync_core.use_cases.pipeline import thread_id_for, thread_ids
from sync_core.use_cases.sync_mailbox import IDLE_REFRESH, Cursor, SyncDeps, sync_mailbox
from tests.checkpoint_hooks import AtCheckpoint, StateCommitHook
from tests.lease_hooks import BeforeFirstAcquire, Once, StateBeforeFirstAcquire

ORG = "acme"
CONNECTED = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
_ids = itertools.count(1)


def mailbox(mailbox_id: str = "mb-adele", address: str = "adele@acme.example") -> Mailbox:
    return Mailbox(ORG, mailbox_id, address, (address,), watermark=CONNECTED)


def message(
    sender: str,
    to: Sequence[str],
    *,
    folder: str = "inbox",
    received: datetime = CONNECTED + timedelta(minutes=5),
    mid: str | None = None,
    references: tuple[str, ...] = (),
    has_attachments: bool = False,
) -> MailMessage:
    n = next(_ids)
    return MailMessage(
        source_id=f"src-{n}",
        internet_message_id=mid or f"<m{n}@mail.example>",
        subject=f"subject {n}",
        sender=EmailAddress(sender),
        to=tuple(EmailAddress(a) for a in to),
        cc=(),
        received_at=received,
        body_text=f"body {n}",
        folder=folder,
        references=references,
        in_reply_to=references[-1] if references else None,
        has_attachments=has_attachments,
    )


class World:
    """Stores, a scripted mailbox and a clock, wired the way bootstrap wires the real adapters."""

    def __init__(self, page_size: int = 3) -> None:
        self.stores = InMemoryStores()
        self.mail = FakeMailSource(page_size=page_size)
        self.clock = FixedClock()
        self.app = InMemoryApp(self.stores, self.mail, self.clock)
        self.stores.records.upsert(
            ORG,
            [
                Record("c-1", "contact", "Carol", emails=("carol@client.example",)),
                Record("c-2", "candidate", "Dan", emails=("dan@talent.example",)),
            ],
        )
        self.stores.settings.put(ORG, OrgSettings(internal_domains=("acme.example",)))
        for box in (mailbox(), mailbox("mb-megan", "megan@acme.example")):
            self.stores.mailboxes.add(box)

    def deps(self, activities: object | None = None, *, classic: bool = False) -> SyncDeps:
        """``classic``: without the ``SyncStateStore`` (each write fenced by its own renewal)."""
        # Tests swap ``world.mail`` after building the world: pass the current one.
        deps = self.app.sync_deps(mail=self.mail, activities=activities or self.stores.activities)
        return dataclasses.replace(deps, state=None) if classic else deps

    def before_first_acquire(self, action: Callable[[], None], *, classic: bool) -> SyncDeps:
        """Deps whose lease taking (either way) runs ``action`` first, once."""
        once = Once(action)
        deps = dataclasses.replace(self.deps(classic=classic), leases=BeforeFirstAcquire(self.stores.leases, once))
        if deps.state is not None:
            deps = dataclasses.replace(deps, state=StateBeforeFirstAcquire(deps.state, once))
        return deps

    def sync(self, mailbox_id: str = "mb-adele", **kw: object) -> str:
        return sync_mailbox(self.deps(**kw), ORG, mailbox_id).status  # type: ignore[arg-type]

    def timeline(self, record_id: str) -> tuple[Activity, ...]:
        return self.stores.activities.timeline(ORG, record_id, None, 1000).items


def test_a_matched_message_becomes_one_activity_and_an_unmatched_one_leaves_only_a_count() -> None:
    world = World()
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    world.mail.deliver(message("stranger@else.example", ["adele@acme.example"]))

    assert world.sync() == "done"

    [stored] = world.timeline("c-1")
    assert stored.sender == EmailAddress("carol@client.example")
    assert stored.direction.value == "received"
    report = world.stores.runs.recent(ORG, "mb-adele", 1)[0]
    assert report.reasons["matched"] == 1
    assert report.reasons["unmatched"] == 1
    assert report.activities_created == 1


def test_a_second_run_with_no_new_mail_adds_nothing_and_polls_both_folders_in_one_request() -> None:
    world = World()
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    world.sync()
    requests_before = world.mail.requests

    assert world.sync() == "done"

    assert world.mail.requests - requests_before == 1
    assert len(world.timeline("c-1")) == 1


def test_sent_mail_is_stored_with_direction_sent() -> None:
    world = World()
    world.mail.deliver(message("adele@acme.example", ["dan@talent.example"], folder="sentitems"))

    world.sync()

    [stored] = world.timeline("c-2")
    assert stored.direction.value == "sent"


class CrashingActivityStore:
    """Fails the n-th save, like a worker killed after fetching a page but before writing it."""

    def __init__(self, inner: InMemoryActivityStore, fail_on_call: int) -> None:
        self.inner = inner
        self.calls = 0
        self.fail_on_call = fail_on_call

    def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("worker died")
        return self.inner.save(activities, announce_at)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("crash_on_save", [1, 2, 3])
def test_a_run_interrupted_on_any_page_and_rerun_stores_every_matched_message_exactly_once(crash_on_save: int) -> None:
    world = World(page_size=2)
    for _ in range(7):
        world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))

    with pytest.raises(RuntimeError):
        world.sync(activities=CrashingActivityStore(world.stores.activities, crash_on_save))
    world.clock.moment += timedelta(minutes=10)  # a killed worker's lease would have expired by now
    assert world.sync() == "done"

    assert len(world.timeline("c-1")) == 7


def test_an_expired_delta_token_resyncs_from_the_watermark_without_duplicates_or_older_mail() -> None:
    world = World()
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"], received=CONNECTED - timedelta(days=3)))
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    world.sync()
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    world.mail.expire_links()

    assert world.sync() == "done"

    stored = world.timeline("c-1")
    assert len(stored) == 2
    assert all(a.received_at >= CONNECTED for a in stored)


def test_a_run_that_spends_its_budget_stops_cleanly_and_the_continuation_finishes() -> None:
    world = World(page_size=1)
    for _ in range(5):
        world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    world.clock.step = timedelta(minutes=1)  # every page costs a minute of a four-minute budget

    assert world.sync() == "more"
    assert 0 < len(world.timeline("c-1")) < 5
    world.clock.step = timedelta(0)
    assert world.sync() == "done"
    assert len(world.timeline("c-1")) == 5


def test_a_second_trigger_while_a_run_holds_the_lease_is_coalesced() -> None:
    world = World()
    now = world.clock.now()
    world.stores.leases.acquire(f"sync|{ORG}|mb-adele", "other-run", now + timedelta(minutes=5), now)

    assert world.sync() == "busy"
    assert world.mail.requests == 0


def test_a_revoked_grant_puts_the_mailbox_in_needs_reauth_with_the_reason() -> None:
    world = World()
    world.mail.fail_next.append(ReauthRequired("AADSTS50173: the grant was revoked", code=50173))

    assert world.sync() == "failed"

    stored = world.stores.mailboxes.get(ORG, "mb-adele")
    assert stored is not None
    assert stored.value.status is MailboxStatus.NEEDS_REAUTH
    assert "50173" in stored.value.status_reason
    assert world.sync() == "skipped"  # syncing pauses until the user reconnects


def test_throttling_past_the_wait_budget_reports_more_work_and_keeps_the_mailbox_active() -> None:
    world = World()
    world.mail.fail_next.append(throttled())

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert outcome.status == "more"
    assert outcome.retry_after == 30
    stored = world.stores.mailboxes.get(ORG, "mb-adele")
    assert stored is not None and stored.value.status is MailboxStatus.ACTIVE


def test_the_same_message_seen_by_two_mailboxes_is_one_activity_with_both_mailboxes() -> None:
    world = World()
    shared = "<shared@client.example>"
    world.mail.deliver(message("carol@client.example", ["adele@acme.example", "megan@acme.example"], mid=shared))

    world.sync("mb-adele")
    world.sync("mb-megan")

    [stored] = world.timeline("c-1")
    assert stored.activity_id == activity_id_for(ORG, shared)
    assert set(stored.mailbox_ids) == {"mb-adele", "mb-megan"}


def test_a_reply_joins_the_thread_of_the_message_it_references() -> None:
    world = World()
    first = message("carol@client.example", ["adele@acme.example"], mid="<root@client.example>")
    reply = message(
        "adele@acme.example",
        ["carol@client.example"],
        folder="sentitems",
        references=("<root@client.example>",),
        received=CONNECTED + timedelta(hours=1),
    )
    world.mail.deliver(first)
    world.mail.deliver(reply)

    world.sync()

    threads = {a.thread_id for a in world.timeline("c-1")}
    assert len(threads) == 1
    assert [a.internet_message_id for a in world.stores.activities.thread(ORG, threads.pop())] == [
        "<root@client.example>",
        reply.internet_message_id,
    ]


def test_attachment_names_are_fetched_only_for_matched_messages_that_have_attachments() -> None:
    world = World()
    matched = message("carol@client.example", ["adele@acme.example"], has_attachments=True)
    unmatched = message("stranger@else.example", ["adele@acme.example"], has_attachments=True)
    world.mail.deliver(matched, files=[AttachmentSummary("cv.pdf", 1234, "application/pdf")])
    world.mail.deliver(unmatched, files=[AttachmentSummary("secret.pdf", 99, "application/pdf")])
    asked: list[str] = []
    original = world.mail.attachments

    def recording(box: Mailbox, ids: Sequence[str]) -> object:
        asked.extend(ids)
        return original(box, ids)

    world.mail.attachments = recording  # type: ignore[method-assign]

    world.sync()

    assert asked == [matched.source_id]
    [stored] = world.timeline("c-1")
    assert stored.attachments == (AttachmentSummary("cv.pdf", 1234, "application/pdf"),)


def test_with_a_headers_only_source_bodies_are_read_for_matched_messages_only_and_stored() -> None:
    world = World()
    world.mail = FakeMailSource(headers_only=True)
    matched = message("carol@client.example", ["adele@acme.example"])
    unmatched = message("stranger@else.example", ["adele@acme.example"])
    world.mail.deliver(matched)
    world.mail.deliver(unmatched)

    assert world.sync() == "done"

    assert world.mail.completed == [matched.source_id]
    [stored] = world.timeline("c-1")
    assert stored.body_text == matched.body_text


def test_an_item_graph_replays_within_a_run_is_decided_and_counted_once() -> None:
    world = World(page_size=2)
    replayed = message("carol@client.example", ["adele@acme.example"])
    world.mail.deliver(replayed)
    world.mail.deliver(message("stranger@else.example", ["adele@acme.example"]))
    world.mail.deliver(replayed)  # the same item again, on the next page

    world.sync()

    report = world.stores.runs.recent(ORG, "mb-adele", 1)[0]
    assert (report.reasons["matched"], report.reasons["unmatched"], report.reasons["replayed_items"]) == (1, 1, 1)
    assert report.activities_created == 1
    assert report.activities_merged == 0


# -- idle polls: no lease, no writes ------------------------------------------------------------------


def lease_key(mailbox_id: str = "mb-adele") -> str:
    return f"sync|{ORG}|{mailbox_id}"


def test_an_idle_poll_makes_one_request_and_stores_no_cursor_and_no_report() -> None:
    world = World()
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    world.sync()
    cursors = world.stores.cursors.get_all(ORG, "mb-adele")
    reports = world.stores.runs.recent(ORG, "mb-adele", 50)
    requests_before = world.mail.requests

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert outcome.status == "done" and outcome.report is not None
    assert outcome.report.graph_requests == world.mail.requests - requests_before == 1
    assert world.stores.cursors.get_all(ORG, "mb-adele") == cursors
    assert world.stores.runs.recent(ORG, "mb-adele", 50) == reports


def test_an_idle_poll_neither_waits_for_nor_takes_the_lease() -> None:
    world = World()
    world.sync()
    now = world.clock.now()
    world.stores.leases.acquire(lease_key(), "other-run", now + timedelta(minutes=5), now)

    assert world.sync() == "done"

    assert not world.stores.leases.acquire(lease_key(), "third-run", now + timedelta(minutes=5), now)


def test_an_idle_poll_an_hour_after_the_cursors_were_written_stores_new_delta_links_and_its_report() -> None:
    world = World()
    world.sync()
    written = world.stores.cursors.get_all(ORG, "mb-adele")
    world.clock.moment += IDLE_REFRESH - timedelta(minutes=1)
    assert world.sync() == "done"
    assert world.stores.cursors.get_all(ORG, "mb-adele") == written  # still young: kept
    reports = len(world.stores.runs.recent(ORG, "mb-adele", 50))
    world.clock.moment += timedelta(minutes=1)

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert outcome.status == "done" and outcome.report is not None
    refreshed = {folder: Cursor.parse(value) for folder, value in world.stores.cursors.get_all(ORG, "mb-adele").items()}
    assert set(refreshed) == {"inbox", "sentitems"}
    for folder, cursor in refreshed.items():
        assert cursor.caught_up and cursor.written_at == world.clock.moment
        assert cursor.link != Cursor.parse(written[folder]).link
    stored = world.stores.runs.recent(ORG, "mb-adele", 50)
    assert len(stored) == reports + 1 and stored[0].run_id == outcome.report.run_id


def test_a_poll_that_finds_a_new_message_stores_it_once_and_releases_the_lease() -> None:
    world = World()
    world.clock.step = timedelta(seconds=1)  # reports are listed by start time
    world.sync()
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")
    again = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert outcome.report is not None and outcome.report.activities_created == 1
    assert world.stores.runs.recent(ORG, "mb-adele", 1)[0].run_id == outcome.report.run_id
    assert again.report is not None and again.report.activities_created == 0
    assert len(world.timeline("c-1")) == 1
    now = world.clock.now()
    assert world.stores.leases.acquire(lease_key(), "next-run", now + timedelta(minutes=5), now)


class RacedMailSource(FakeMailSource):
    """Runs ``race`` (once) while a ``$batch`` poll is in flight, before its pages are computed."""

    race: Callable[[], None] | None = None

    def delta_many(self, mailbox: Mailbox, links: Mapping[str, str]) -> Mapping[str, DeltaPage]:
        race, self.race = self.race, None
        if race is not None:
            race()
        return super().delta_many(mailbox, links)


def test_pages_polled_before_another_run_advanced_the_cursors_are_dropped_and_nothing_is_lost_or_doubled() -> None:
    world = World()
    world.mail = RacedMailSource()
    earlier = message("carol@client.example", ["adele@acme.example"])
    world.mail.deliver(earlier)
    world.sync()
    second, third = (message("carol@client.example", ["adele@acme.example"]) for _ in range(2))
    world.mail.deliver(second)

    def other_run() -> None:  # gets there first: stores `second`, then more mail arrives
        assert world.sync() == "done"
        world.mail.deliver(third)

    world.mail.race = other_run

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert outcome.status == "done" and outcome.report is not None
    # This run's own poll (since before `second`) was dropped: it decided only what came after.
    assert outcome.report.reasons["matched"] == 1 and outcome.report.activities_created == 1
    stored = [a.internet_message_id for a in world.timeline("c-1")]
    assert sorted(stored) == sorted(m.internet_message_id for m in (earlier, second, third))


def test_a_cursor_round_trips_with_the_time_it_was_written_and_the_old_format_reads_as_long_ago() -> None:
    link = "https://graph.microsoft.com/v1.0/users/u/mailFolders('inbox')/messages/delta?$deltatoken=a b"
    cursor = Cursor(caught_up=True, link=link, written_at=CONNECTED)

    assert Cursor.parse(cursor.serialize()) == cursor
    old = Cursor.parse(f"delta {link}")
    assert (old.caught_up, old.link) == (True, link)
    assert old.written_at < CONNECTED - IDLE_REFRESH
    assert Cursor.parse("next https://graph/next?$skiptoken=1") == Cursor(False, "https://graph/next?$skiptoken=1")
    assert Cursor.parse("") == Cursor(False, "")


def test_a_cursor_stored_in_the_old_format_is_refreshed_by_the_next_idle_poll() -> None:
    world = World()
    world.sync()
    for folder, value in world.stores.cursors.get_all(ORG, "mb-adele").items():
        world.stores.cursors.put(ORG, "mb-adele", folder, f"delta {Cursor.parse(value).link}")
    reports = len(world.stores.runs.recent(ORG, "mb-adele", 50))

    assert world.sync() == "done"

    refreshed = [Cursor.parse(v) for v in world.stores.cursors.get_all(ORG, "mb-adele").values()]
    assert len(refreshed) == 2 and all(c.caught_up and c.written_at == world.clock.moment for c in refreshed)
    assert len(world.stores.runs.recent(ORG, "mb-adele", 50)) == reports + 1


def test_after_a_failed_poll_the_next_idle_poll_stores_its_report_so_the_last_success_follows_recovery() -> None:
    world = World()
    world.clock.step = timedelta(seconds=1)  # reports are listed by start time
    world.sync()
    world.mail.fail_next.append(throttled())
    assert world.sync() == "more"
    assert world.stores.runs.recent(ORG, "mb-adele", 1)[0].error_class == "transient"

    recovered = sync_mailbox(world.deps(), ORG, "mb-adele")
    idle = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert recovered.status == idle.status == "done" and recovered.report is not None
    latest = world.stores.runs.recent(ORG, "mb-adele", 1)[0]
    assert latest.run_id == recovered.report.run_id and latest.error == ""


class CountingThreadLookups(InMemoryActivityStore):
    """The in-memory activity store, counting the Message-IDs its thread lookups are asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def thread_ids_for_messages(self, org_id: str, internet_message_ids: Sequence[str]) -> Mapping[str, str]:
        self.asked.extend(internet_message_ids)
        return super().thread_ids_for_messages(org_id, internet_message_ids)


def test_a_message_id_referenced_on_several_pages_is_looked_up_once_per_run() -> None:
    world = World(page_size=1)
    store = CountingThreadLookups()
    root = "<root@client.example>"
    for _ in range(3):  # three replies to a message this mailbox never saw, one per page
        world.mail.deliver(message("carol@client.example", ["adele@acme.example"], references=(root,)))

    world.sync(activities=store)

    assert store.asked.count(root) == 1
    assert len({a.thread_id for a in store.timeline(ORG, "c-1", None, 10).items}) == 1


def test_a_reply_to_a_message_created_earlier_in_the_run_joins_its_thread_without_a_lookup() -> None:
    world = World(page_size=1)
    store = CountingThreadLookups()
    first = message("carol@client.example", ["adele@acme.example"], mid="<first@client.example>")
    reply = message("adele@acme.example", ["carol@client.example"], references=(first.internet_message_id,))
    world.mail.deliver(first)
    world.mail.deliver(reply)

    world.sync(activities=store)

    assert first.internet_message_id not in store.asked
    stored = store.timeline(ORG, "c-1", None, 10).items
    assert len(stored) == 2 and len({a.thread_id for a in stored}) == 1


def test_a_message_another_mailbox_stored_during_the_run_is_read_again_once_this_run_meets_it() -> None:
    world = World(page_size=1)
    other_thread = "t-stored-by-megan"
    known = message("carol@client.example", ["adele@acme.example", "megan@acme.example"], mid="<known@client.example>")

    class MeganSavesMeanwhile(CountingThreadLookups):
        def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
            if self.get(ORG, activity_id_for(ORG, known.internet_message_id)) is None:
                super().save([_activity(known, "mb-megan", other_thread)])  # Megan's run, in between
            return super().save(activities, announce_at)

    store = MeganSavesMeanwhile()
    first_reply = message("adele@acme.example", ["carol@client.example"], references=(known.internet_message_id,))
    later_reply = message("adele@acme.example", ["carol@client.example"], references=(known.internet_message_id,))
    # Page 1: a reply looks the message up before anyone stored it; Megan stores it meanwhile; page 2: this
    # run meets the message (merged, not created); page 3: another reply must take Megan's thread.
    for source in (first_reply, known, later_reply):
        world.mail.deliver(source)

    world.sync(activities=store)

    stored = {a.internet_message_id: a for a in store.timeline(ORG, "c-1", None, 10).items}
    assert stored[known.internet_message_id].mailbox_ids == ("mb-megan", "mb-adele")
    assert stored[later_reply.internet_message_id].thread_id == other_thread


def test_a_reply_and_the_message_it_answers_on_one_page_share_a_thread_without_a_thread_lookup() -> None:
    world = World(page_size=3)
    store = CountingThreadLookups()
    first = message("carol@client.example", ["adele@acme.example"], mid="<first@client.example>")
    reply = message("carol@client.example", ["adele@acme.example"], references=(first.internet_message_id,))
    world.mail.deliver(first)
    world.mail.deliver(reply)

    world.sync(activities=store)

    assert store.asked == []
    stored = store.timeline(ORG, "c-1", None, 10).items
    assert len(stored) == 2 and {a.thread_id for a in stored} == {thread_id_for(ORG, first.internet_message_id)}


def test_a_reply_on_the_same_page_takes_the_stored_thread_its_parent_joins_and_the_store_is_read_once() -> None:
    store = CountingThreadLookups()
    known = message("carol@client.example", ["megan@acme.example"], mid="<known@client.example>")
    store.save([_activity(known, "mb-megan", "t-stored")])
    parent = message("carol@client.example", ["adele@acme.example"], references=(known.internet_message_id,))
    reply = message(
        "carol@client.example", ["adele@acme.example"],
        references=(known.internet_message_id, parent.internet_message_id),
    )  # fmt: skip

    threads = thread_ids(store, ORG, [reply, parent])

    assert threads == {reply.internet_message_id: "t-stored", parent.internet_message_id: "t-stored"}
    assert store.asked == [known.internet_message_id]


def test_messages_of_one_page_referencing_each_other_in_a_loop_each_get_a_thread() -> None:
    store = CountingThreadLookups()
    a = message("carol@client.example", ["adele@acme.example"], mid="<a@x>", references=("<b@x>",))
    b = message("carol@client.example", ["adele@acme.example"], mid="<b@x>", references=("<a@x>",))
    itself = message("carol@client.example", ["adele@acme.example"], mid="<c@x>", references=("<c@x>",))

    threads = thread_ids(store, ORG, [a, b, itself])

    assert set(threads) == {"<a@x>", "<b@x>", "<c@x>"}
    assert threads["<a@x>"] == threads["<b@x>"] and threads["<c@x>"] == thread_id_for(ORG, "<c@x>")
    assert store.asked == []


# -- storage off the critical path: a page's writes overlap the next page ---------------------------------


def test_a_pages_writes_run_while_the_next_page_is_fetched() -> None:
    world = World()
    page_two_fetched = threading.Event()
    world.mail = HookedMailSource(page_size=1, after_page={2: page_two_fetched.set})
    for _ in range(3):
        world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    waited: list[bool] = []

    class SaveWaitingForPageTwo(InMemoryActivityStore):
        def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
            if not waited:  # page 1's save: without the overlap page 2 would only be fetched after it
                waited.append(page_two_fetched.wait(30))
            return super().save(activities, announce_at)

    store = SaveWaitingForPageTwo()

    assert world.sync(activities=store) == "done"

    assert waited == [True]
    assert len(store.timeline(ORG, "c-1", None, 10).items) == 3


Files = tuple[AttachmentSummary, ...]


def test_a_pages_attachment_listings_run_while_the_page_before_is_being_saved() -> None:
    world = World()
    second_listed = threading.Event()
    first = message("carol@client.example", ["adele@acme.example"], has_attachments=True)
    second = message("carol@client.example", ["adele@acme.example"], has_attachments=True)

    class ListingMail(FakeMailSource):
        def attachments(self, mailbox: Mailbox, source_ids: Sequence[str]) -> Mapping[str, Files]:
            found = super().attachments(mailbox, source_ids)
            if second.source_id in source_ids:
                second_listed.set()
            return found

    world.mail = ListingMail(page_size=1)
    for source, name in ((first, "a.pdf"), (second, "b.pdf")):
        world.mail.deliver(source, files=[AttachmentSummary(name, 10, "application/pdf")])
    waited: list[bool] = []

    class SaveWaitingForTheNextListing(InMemoryActivityStore):
        def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
            if not waited:  # page 1's save: page 2's listing must not wait for it
                waited.append(second_listed.wait(30))
            return super().save(activities, announce_at)

    store = SaveWaitingForTheNextListing()

    assert world.sync(activities=store) == "done"

    assert waited == [True]
    names = {a.internet_message_id: [f.name for f in a.attachments] for a in store.timeline(ORG, "c-1", None, 10).items}
    assert names == {first.internet_message_id: ["a.pdf"], second.internet_message_id: ["b.pdf"]}


def test_a_pages_thread_lookups_run_while_the_page_before_is_being_saved() -> None:
    world = World(page_size=1)
    outside = "<never-seen@client.example>"
    looked_up = threading.Event()
    waited: list[bool] = []

    class SaveWaitingForTheNextLookup(CountingThreadLookups):
        def thread_ids_for_messages(self, org_id: str, internet_message_ids: Sequence[str]) -> Mapping[str, str]:
            if outside in internet_message_ids:
                looked_up.set()
            return super().thread_ids_for_messages(org_id, internet_message_ids)

        def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
            if not waited:  # page 1's save: page 2's lookup must not wait for it
                waited.append(looked_up.wait(30))
            return super().save(activities, announce_at)

    store = SaveWaitingForTheNextLookup()
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"], references=(outside,)))

    assert world.sync(activities=store) == "done"

    assert waited == [True] and store.asked == [outside]
    assert len(store.timeline(ORG, "c-1", None, 10).items) == 2


class LoggedCommits(StateCommitHook):
    """The in-memory sync state store, logging each commit (renewal or report) with the links it carries."""

    def __init__(self, world: World, log: list[tuple[str, object]]) -> None:
        super().__init__(world.stores.sync_state)
        self.log = log

    def before_commit(self, cursors: Mapping[str, str], report: RunReport | None) -> None:
        links = {folder: Cursor.parse(link).link for folder, link in cursors.items()}
        self.log.append(("report" if report is not None else "renewal", links))


def test_fenced_in_the_transaction_a_pages_checkpoint_rides_with_the_renewal_before_the_next_pages_save() -> None:
    world = World()
    world.mail = FakeMailSource(page_size=1)
    sent = [message("carol@client.example", ["adele@acme.example"]) for _ in range(3)]
    for source in sent:
        world.mail.deliver(source)
    log: list[tuple[str, object]] = []  # the run's writes in the order they reached storage

    class LoggedSaves(InMemoryActivityStore):
        def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
            log.append(("save", [a.internet_message_id for a in activities]))
            return super().save(activities, announce_at)

    deps = world.app.sync_deps(mail=world.mail, activities=LoggedSaves(), state=LoggedCommits(world, log))

    assert sync_mailbox(deps, ORG, "mb-adele").status == "done"

    # Each page's checkpoint is written after its save, by the renewal before the next page's save (one
    # transaction); the last page's, and the empty folder's, ride with the report.
    ids = [m.internet_message_id for m in sent]
    assert log == [
        ("renewal", {}),
        ("save", ids[:1]),
        ("renewal", {"inbox": "link-1"}),
        ("save", ids[1:2]),
        ("renewal", {"inbox": "link-2"}),
        ("save", ids[2:]),
        ("report", {"inbox": "link-3", "sentitems": "link-4"}),
    ]


@pytest.mark.parametrize("classic", [False, True], ids=["fenced_in_the_transaction", "classic"])
def test_a_save_failing_on_page_two_ends_the_run_before_any_later_write_with_page_one_checkpointed(
    classic: bool,
) -> None:
    world = World()
    world.mail = FakeMailSource(page_size=1)
    for _ in range(4):
        world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    saves: list[int] = []

    class FailingSecondSave(InMemoryActivityStore):
        def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
            saves.append(len(activities))
            if len(saves) == 2:
                raise StorageUnavailable("storage went away")
            return super().save(activities, announce_at)

    store, checkpoints = FailingSecondSave(), AtCheckpoint(0, lambda: None)  # counts checkpoints only
    hook = checkpoints.wrap(not classic, world.stores.cursors, world.stores.sync_state)

    with pytest.raises(StorageUnavailable):
        sync_mailbox(world.app.sync_deps(mail=world.mail, activities=store, **hook), ORG, "mb-adele")

    # Fenced: page 1's checkpoint rode with the renewal before page 2's save; the failed run's report
    # commit carried none. Either way page 3, fetched meanwhile, wrote nothing.
    assert saves == [1, 1] and checkpoints.checkpoints == 1
    assert len(store.timeline(ORG, "c-1", None, 10).items) == 1
    assert Cursor.parse(world.stores.cursors.get_all(ORG, "mb-adele")["inbox"]).link == "link-1"


def _activity(source: MailMessage, mailbox_id: str, thread_id: str) -> Activity:
    return Activity(
        org_id=ORG,
        activity_id=activity_id_for(ORG, source.internet_message_id),
        internet_message_id=source.internet_message_id,
        thread_id=thread_id,
        subject=source.subject,
        body_text=source.body_text,
        body_preview=source.body_preview,
        body_truncated=False,
        sender=source.sender,
        to=source.to,
        cc=source.cc,
        sent_at=source.sent_at,
        received_at=source.received_at,
        direction=Direction.RECEIVED,
        mailbox_ids=(mailbox_id,),
        records=(RecordRef("c-1", "contact"),),
        attachments=(),
        conversation_id=None,
    )


# -- the lease as a fence, and the mailbox read under it ----------------------------------------------


class HookedMailSource(FakeMailSource):
    """Runs ``after_page[n]`` once the n-th delta page (1-based) was computed, before the run stores it."""

    def __init__(self, page_size: int, after_page: Mapping[int, Callable[[], None]]) -> None:
        super().__init__(page_size=page_size)
        self.after_page = after_page
        self.pages = 0

    def delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> DeltaPage:
        page = super().delta(mailbox, folder, link, since)
        self.pages += 1
        if self.pages in self.after_page:
            self.after_page[self.pages]()
        return page


@pytest.mark.parametrize("classic", [False, True], ids=["fenced_in_the_transaction", "classic"])
def test_a_run_whose_expired_lease_another_run_took_stops_busy_without_writing_its_page_or_report(
    classic: bool,
) -> None:
    world = World()
    later = world.clock.now() + timedelta(minutes=10)  # past the run's lease (budget + LEASE_MARGIN)

    def taken() -> None:
        assert world.stores.leases.acquire(lease_key(), "other-run", later + timedelta(minutes=5), later)

    world.mail = FakeMailSource(page_size=1)
    for _ in range(3):
        world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    # Taken at page 1's checkpoint: page 1's activities durable, nothing of page 2 written yet (classic:
    # right after its cursor wrote; fenced: right before the renewal carrying it, page 2's save's, is sent).
    hook = AtCheckpoint(1, taken).wrap(not classic, world.stores.cursors, world.stores.sync_state)

    outcome = sync_mailbox(world.app.sync_deps(mail=world.mail, **hook), ORG, "mb-adele")

    assert outcome.status == "busy" and outcome.report is None
    assert len(world.timeline("c-1")) == 1  # page 1 only
    stored = world.stores.cursors.get_all(ORG, "mb-adele")
    if classic:
        assert Cursor.parse(stored["inbox"]).link == "link-1"
    else:  # page 1's checkpoint rides with the renewal before page 2's save, which found the lease lost
        assert "inbox" not in stored  # the next run re-reads page 1 (keyed, idempotent)
    assert world.stores.runs.recent(ORG, "mb-adele", 10) == ()
    assert not world.stores.leases.acquire(lease_key(), "third-run", later, later)  # still the other run's


@pytest.mark.parametrize("classic", [False, True], ids=["fenced_in_the_transaction", "classic"])
def test_a_watermark_moved_back_before_the_run_took_its_lease_is_used_by_the_run(classic: bool) -> None:
    world = World()
    older = message("carol@client.example", ["adele@acme.example"], received=CONNECTED - timedelta(days=2))
    world.mail.deliver(older)
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))

    def backfill() -> None:  # as schedule.apply_pending_backfill does it, under the same lease
        now = world.clock.now()
        assert world.stores.leases.acquire(lease_key(), "backfill", now + timedelta(minutes=1), now)
        current = world.stores.mailboxes.get(ORG, "mb-adele")
        assert current is not None
        moved = dataclasses.replace(current.value, watermark=CONNECTED - timedelta(days=3))
        world.stores.mailboxes.replace(moved, current.etag)
        world.stores.cursors.clear(ORG, "mb-adele")
        world.stores.leases.release(lease_key(), "backfill")

    deps = world.before_first_acquire(backfill, classic=classic)

    assert sync_mailbox(deps, ORG, "mb-adele").status == "done"

    assert older.internet_message_id in {a.internet_message_id for a in world.timeline("c-1")}
    assert len(world.timeline("c-1")) == 2


@pytest.mark.parametrize("classic", [False, True], ids=["fenced_in_the_transaction", "classic"])
def test_a_run_that_takes_the_lease_after_its_mailbox_was_disconnected_writes_nothing_and_is_skipped(
    classic: bool,
) -> None:
    world = World()
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))

    def disconnected() -> None:
        # Classic: a run re-reads the mailbox under the lease, so even a write without the lease shows. Fenced
        # in the transaction, the mailbox is not re-read when the lease was taken at the version read before
        # it: a disconnect is seen because it takes the lease over (as ``connect.disconnect`` does).
        now = world.clock.now()
        if not classic:
            world.stores.leases.take_over(lease_key(), "disconnect", now + timedelta(minutes=10), now)
        current = world.stores.mailboxes.get(ORG, "mb-adele")
        assert current is not None
        gone = dataclasses.replace(current.value, status=MailboxStatus.DISCONNECTED, status_reason="disconnected")
        world.stores.mailboxes.replace(gone, current.etag)
        if not classic:
            world.stores.leases.release(lease_key(), "disconnect")

    deps = world.before_first_acquire(disconnected, classic=classic)

    assert sync_mailbox(deps, ORG, "mb-adele").status == "skipped"

    assert world.timeline("c-1") == ()
    assert world.stores.cursors.get_all(ORG, "mb-adele") == {}
    assert world.stores.runs.recent(ORG, "mb-adele", 10) == ()
    now = world.clock.now()
    assert world.stores.leases.acquire(lease_key(), "next-run", now + timedelta(minutes=5), now)  # released


# -- failures: classified, reported, recovered ---------------------------------------------------------


def status_of(world: World, mailbox_id: str = "mb-adele") -> tuple[MailboxStatus, str]:
    stored = world.stores.mailboxes.get(ORG, mailbox_id)
    assert stored is not None
    return stored.value.status, stored.value.status_reason


def test_a_run_that_raises_an_unclassified_error_stores_its_report_with_class_and_reason_then_raises() -> None:
    world = World()
    world.clock.step = timedelta(seconds=1)  # reports are listed by start time
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    world.mail.fail_next.append(RuntimeError("parser choked on carol@client.example"))

    with pytest.raises(RuntimeError):
        world.sync()

    [failed] = world.stores.runs.recent(ORG, "mb-adele", 5)
    assert failed.error_class == "unexpected"
    assert failed.error.startswith("RuntimeError") and "carol" not in failed.error  # its type, never its text
    assert status_of(world) == (MailboxStatus.ACTIVE, "")  # the queue retries it; give_up decides later
    assert world.sync() == "done"
    latest = world.stores.runs.recent(ORG, "mb-adele", 1)[0]
    assert (latest.error, latest.error_class, latest.activities_created) == ("", "", 1)


def test_a_configuration_failure_sets_error_with_the_reason_and_the_next_successful_run_clears_it() -> None:
    world = World()
    world.clock.step = timedelta(seconds=1)
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    expired = "the app's client secret has expired; add a new secret (AADSTS7000222)"
    world.mail.fail_next.append(IdentityError(expired, "invalid_client", [7000222]))

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert outcome.status == "failed" and outcome.report is not None
    assert (outcome.report.error_class, outcome.report.error) == ("configuration", expired)
    assert status_of(world) == (MailboxStatus.ERROR, expired)
    assert world.sync() == "done"  # a mailbox in error is synced: the secret was renewed meanwhile
    assert status_of(world) == (MailboxStatus.ACTIVE, "")
    assert len(world.timeline("c-1")) == 1


def test_a_transient_failure_leaves_an_error_mailbox_in_error_until_a_run_succeeds() -> None:
    world = World()
    world.clock.step = timedelta(seconds=1)
    world.mail.fail_next.append(IdentityError("the app's client secret is invalid (AADSTS7000215)"))
    world.sync()
    world.mail.fail_next.append(throttled())

    assert world.sync() == "more"

    assert status_of(world)[0] is MailboxStatus.ERROR
    assert world.stores.runs.recent(ORG, "mb-adele", 1)[0].error_class == "transient"
    assert world.sync() == "done" and status_of(world) == (MailboxStatus.ACTIVE, "")


def test_a_message_deleted_before_its_attachments_are_listed_is_stored_without_them_with_a_note() -> None:
    world = World()
    gone = message("carol@client.example", ["adele@acme.example"], has_attachments=True)
    kept = message("carol@client.example", ["adele@acme.example"], has_attachments=True)
    world.mail.deliver(gone, [AttachmentSummary("a.pdf", 10, "application/pdf")])
    world.mail.deliver(kept, [AttachmentSummary("b.pdf", 20, "application/pdf")])
    world.mail.delete_message(gone.source_id)

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    stored = {a.internet_message_id: a.attachments for a in world.timeline("c-1")}
    pdf = AttachmentSummary("b.pdf", 20, "application/pdf")
    assert stored == {gone.internet_message_id: (), kept.internet_message_id: (pdf,)}
    assert outcome.report.reasons["attachments_unavailable"] == 1


def test_a_stored_delta_link_answering_404_resyncs_the_folder_from_the_watermark_without_duplicates() -> None:
    world = World()
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    world.sync()
    world.mail.forget_links()  # the provider lost the state (restart, recreated folder): 404 on the links
    world.mail.deliver(message("dan@talent.example", ["adele@acme.example"]))

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    assert outcome.report.reasons["folders_resynced"] == 2
    assert (outcome.report.activities_created, len(world.timeline("c-1")), len(world.timeline("c-2"))) == (1, 1, 1)
    assert status_of(world) == (MailboxStatus.ACTIVE, "")
    assert world.sync() == "done"  # the new links work: no loop


def test_a_folder_gone_in_all_folders_mode_is_dropped_with_a_note_and_the_others_sync() -> None:
    world = World()
    world.stores.settings.put(ORG, OrgSettings(internal_domains=("acme.example",), folders=FolderFilter.ALL))
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"], folder="projects"))
    world.sync()
    world.mail.remove_folder("projects")  # deleted after this run listed the folders
    world.mail.deliver(message("dan@talent.example", ["adele@acme.example"]))

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    assert outcome.report.reasons["folders_gone"] == 1
    assert Cursor.parse(world.stores.cursors.get_all(ORG, "mb-adele")["projects"]).link == ""
    assert len(world.timeline("c-2")) == 1 and status_of(world) == (MailboxStatus.ACTIVE, "")


def test_a_default_folder_answering_404_fails_the_run_as_configuration_after_the_other_folder_synced() -> None:
    world = World()
    world.mail.remove_folder("inbox")
    world.mail.deliver(message("adele@acme.example", ["dan@talent.example"], folder="sentitems"))

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert outcome.status == "failed" and outcome.report is not None
    assert outcome.report.error_class == "configuration" and "inbox" in outcome.report.error
    assert status_of(world)[0] is MailboxStatus.ERROR and "inbox" in status_of(world)[1]
    assert len(world.timeline("c-2")) == 1


# -- the report's counts ------------------------------------------------------------------------------


def test_a_runs_graph_requests_count_only_its_own_mailboxs_requests_not_a_concurrent_runs() -> None:
    world = World(page_size=1)
    for _ in range(2):
        world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))
    megan = mailbox("mb-megan", "megan@acme.example")
    # Another mailbox's run, sharing the mail source in the same process, reads mail during this run.
    world.mail = HookedMailSource(page_size=1, after_page={1: lambda: world.mail.find_message(megan, "<x@y>")})
    for _ in range(2):
        world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")

    assert outcome.report is not None
    assert world.mail.requests == outcome.report.graph_requests + 1
    assert outcome.report.pages == 3  # inbox: 2 pages of one message; sent items: 1 (delta pages received)


def test_an_idle_poll_that_refreshes_its_cursors_reports_two_pages_received_in_one_request() -> None:
    world = World()
    world.sync()
    world.clock.moment += IDLE_REFRESH + timedelta(minutes=1)

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele")

    [report] = world.stores.runs.recent(ORG, "mb-adele", 1)
    assert outcome.report == report
    assert (report.pages, report.graph_requests) == (2, 1)  # both folders' pages came in one batched request


# -- runs a CRM polls ------------------------------------------------------------------------------------


def test_a_requested_run_with_nothing_new_stores_its_report_under_the_given_id() -> None:
    world = World()
    world.sync()
    run_id = "0123456789abcdef0123456789abcdef"

    outcome = sync_mailbox(world.deps(), ORG, "mb-adele", run_id=run_id)

    assert outcome.status == "done"
    [newest, *_] = world.stores.runs.recent(ORG, "mb-adele", 50)
    assert newest.run_id == run_id and outcome.report == newest


def test_two_deliveries_of_one_requested_run_never_share_the_lease() -> None:
    world = World()
    run_id = "0123456789abcdef0123456789abcdef"
    seen: list[str] = []

    def duplicate() -> None:
        seen.append(sync_mailbox(world.deps(), ORG, "mb-adele", run_id=run_id).status)

    world.mail = HookedMailSource(page_size=3, after_page={1: duplicate})
    world.mail.deliver(message("carol@client.example", ["adele@acme.example"]))

    assert sync_mailbox(world.deps(), ORG, "mb-adele", run_id=run_id).status == "done"
    assert seen == ["busy"]  # the duplicate met the first delivery's lease
