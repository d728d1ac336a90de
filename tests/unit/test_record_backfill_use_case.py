"""Record-driven backfill and dry-run previews, on in-memory doubles of the project's own ports."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from sync_core.domain.model import EmailAddress, Mailbox, MailMessage, OrgSettings, Record
from sync_core.errors import NotSyncable
from sync_core.ports import BackfillState, SearchQuery
from sync_core.testing.app import InMemoryApp
from sync_core.testing.backfill import InMemoryBackfillJobStore
from sync_core.testing.mail import FakeMailSource, FixedClock, throttled
from sync_core.testing.scheduling import InMemoryWorkQueue
from sync_core.use_cases import commands, preview, record_backfill, telemetry
from sync_core.use_cases.schedule import request_backfill
from sync_core.use_cases.sync_mailbox import sync_mailbox

ORG = "acme"
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
CONNECTED = NOW - timedelta(days=60)
_ids = itertools.count(1)


def message(sender: str, to: Sequence[str], received: datetime, *, folder: str = "inbox", mid: str = "",
            references: tuple[str, ...] = ()) -> MailMessage:  # fmt: skip
    n = next(_ids)
    return MailMessage(
        source_id=f"src-{n}",
        internet_message_id=mid or f"<m{n}@mail.example>",
        subject=f"subject {n}",
        sender=EmailAddress(sender),
        to=tuple(EmailAddress(a) for a in to),
        cc=(),
        received_at=received,
        folder=folder,
        references=references,
        in_reply_to=references[-1] if references else None,
    )


class World:
    def __init__(self, days: int = 30, mailboxes: Sequence[str] = ("mb-adele",)) -> None:
        self.mail = FakeMailSource(page_size=2)
        self.clock = FixedClock(NOW)
        self.queue = InMemoryWorkQueue()
        self.jobs = InMemoryBackfillJobStore()
        self.app = InMemoryApp(mail=self.mail, clock=self.clock, queue=self.queue, backfill_jobs=self.jobs)
        self.stores = self.app.stores
        self.stores.settings.put(ORG, OrgSettings(internal_domains=("acme.example",), record_backfill_days=days))
        for mailbox_id in mailboxes:
            address = f"{mailbox_id.removeprefix('mb-')}@acme.example"
            self.stores.mailboxes.add(Mailbox(ORG, mailbox_id, address, (address,), watermark=CONNECTED))

    def put(self, *records: Record) -> tuple[str, ...]:
        deps = self.app.backfill_request_deps()
        before = record_backfill.records_before(deps, ORG, records)
        jobs = record_backfill.request_for_records(deps, ORG, before, records)
        self.stores.records.upsert(ORG, records)
        return jobs

    def run_queue(self) -> list[str]:
        """Dispatch every queued message (continuations included) the way the queue trigger does."""
        outcomes = []
        while self.queue.messages:
            body = self.queue.messages.pop(0).body
            outcomes.append(commands.dispatch(self.app, "sync", json.dumps(body)))  # type: ignore[arg-type]
        return outcomes

    def run_queue_once(self) -> str:
        body = self.queue.messages.pop(0).body
        return commands.dispatch(self.app, "sync", json.dumps(body))  # type: ignore[arg-type]

    def timeline(self, record_id: str) -> list[str]:
        return [a.subject for a in self.stores.activities.timeline(ORG, record_id, None, 50).items]


def test_a_record_created_after_its_mail_arrived_gets_that_mail_within_the_window_only() -> None:
    world = World(days=30)
    inside = message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=3))
    older = message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=45))
    reply = message("adele@acme.example", ["dan@talent.example"], NOW - timedelta(days=2), folder="sentitems",
                    references=(inside.internet_message_id,))  # fmt: skip
    stranger = message("eve@else.example", ["adele@acme.example"], NOW - timedelta(days=1))
    for m in (inside, older, reply, stranger):
        world.mail.deliver(m)

    jobs = world.put(Record("cand-dan", "candidate", emails=("dan@talent.example",)))
    assert len(jobs) == 1
    assert world.run_queue() == ["done"]

    assert sorted(world.timeline("cand-dan")) == sorted([inside.subject, reply.subject])
    stored = world.stores.activities.timeline(ORG, "cand-dan", None, 10).items
    assert len({a.thread_id for a in stored}) == 1  # the reply joined the thread of the mail it answers
    job = world.jobs.get(ORG, "mb-adele", jobs[0])
    assert job is not None
    assert job.value.state is BackfillState.DONE
    assert job.value.since == NOW - timedelta(days=30)
    assert job.value.per_record == {"cand-dan": 2}
    assert job.value.reasons["matched"] == 2
    report = world.stores.runs.recent(ORG, "mb-adele", 1)[0]
    assert report.run_id == jobs[0] and report.reasons["matched"] == 2 and report.activities_created == 2


def test_the_window_never_reaches_before_the_mailbox_watermark() -> None:
    world = World(days=365)
    before_connect = message("dan@talent.example", ["adele@acme.example"], CONNECTED - timedelta(days=1))
    world.mail.deliver(before_connect)
    world.put(Record("cand-dan", "candidate", emails=("dan@talent.example",)))
    world.run_queue()
    assert world.mail.searches and all(q.since == CONNECTED for q in world.mail.searches)
    assert world.timeline("cand-dan") == []


def test_an_update_that_adds_nothing_queues_nothing_and_searches_nothing() -> None:
    world = World()
    world.put(Record("cand-dan", "candidate", emails=("dan@talent.example",)))
    world.run_queue()
    searches = len(world.mail.searches)
    assert world.put(Record("cand-dan", "candidate", name="Dan", emails=("dan@talent.example",))) == ()
    assert world.queue.messages == []
    assert world.run_queue() == []
    assert len(world.mail.searches) == searches


def test_a_record_backfill_is_off_by_default_and_reads_nothing() -> None:
    world = World(days=0)
    assert world.put(Record("cand-dan", "candidate", emails=("dan@talent.example",))) == ()
    assert world.queue.messages == [] and world.jobs.jobs() == []


def test_a_thousand_record_batch_is_one_job_per_mailbox() -> None:
    world = World(mailboxes=("mb-adele", "mb-megan"))
    records = [Record(f"c-{i}", "contact", emails=(f"person{i}@client.example",)) for i in range(1000)]
    jobs = world.put(*records)
    assert len(jobs) == 2 and len(world.queue.messages) == 2
    world.run_queue()
    # 1,000 addresses in chunks of 20, two folders, one page each (the mailboxes are empty): per mailbox.
    assert len(world.mail.searches) == 2 * 50 * 2


def test_a_record_changed_again_before_its_job_ran_is_searched_once() -> None:
    world = World()
    first = world.put(Record("cand-dan", "candidate", emails=("dan@talent.example",)))
    again = world.put(Record("cand-dan", "candidate", emails=("dan@talent.example", "dan@home.example")))
    assert first == again and len(world.queue.messages) == 1
    world.run_queue()
    searched = [(q.folder, q.addresses) for q in world.mail.searches]
    assert searched == [
        ("inbox", ("dan@talent.example", "dan@home.example")),
        ("sentitems", ("dan@talent.example", "dan@home.example")),
    ]


def test_a_change_after_the_job_started_opens_the_next_job() -> None:
    world = World()
    first = world.put(Record("cand-dan", "candidate", emails=("dan@talent.example",)))
    world.run_queue()
    second = world.put(Record("cand-dan", "candidate", emails=("dan@talent.example", "dan@home.example")))
    assert second != first
    world.run_queue()
    assert world.mail.searches[-1].addresses == ("dan@home.example",)


def test_throttling_checkpoints_and_continues_after_the_retry_after() -> None:
    world = World()
    for day in range(1, 6):
        world.mail.deliver(message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=day)))
    world.put(Record("cand-dan", "candidate", emails=("dan@talent.example",)))
    body = world.queue.messages.pop(0).body
    world.mail.fail_next = [throttled()]
    assert commands.dispatch(world.app, "sync", json.dumps(body)) == "more"  # type: ignore[arg-type]
    assert world.queue.messages[0].delay_seconds == 30  # the Retry-After
    assert world.run_queue() == ["done"]
    assert len(world.timeline("cand-dan")) == 5


def test_a_job_waits_while_a_sync_run_holds_the_mailbox_lease() -> None:
    world = World()
    world.put(Record("cand-dan", "candidate", emails=("dan@talent.example",)))
    world.stores.leases.acquire("sync|acme|mb-adele", "someone", NOW + timedelta(minutes=5), NOW)
    body = world.queue.messages.pop(0).body
    assert commands.dispatch(world.app, "sync", json.dumps(body)) == "busy"  # type: ignore[arg-type]
    assert world.queue.messages[0].delay_seconds == 30 and world.mail.searches == []


def test_unmatched_and_filtered_mail_a_search_found_leaves_only_counts() -> None:
    world = World()
    # Found by the domain's search, but the record only has one address of it: unmatched, not stored.
    world.stores.settings.put(ORG, OrgSettings(internal_domains=("acme.example",), record_backfill_days=30,
                                               match_by_domain=True, never_log=("boss@client.example",)))  # fmt: skip
    world.mail.deliver(message("boss@client.example", ["adele@acme.example"], NOW - timedelta(days=1)))
    world.put(Record("acct-client", "account", domains=("client.example",)))
    world.run_queue()
    assert world.stores.activities.timeline(ORG, "acct-client", None, 10).items == ()
    job = world.jobs.jobs()[0]
    assert job.reasons.get("never_log") == 1 and job.per_record == {}


def test_the_fake_search_pages_and_caps_as_the_port_says() -> None:
    source = FakeMailSource(page_size=2)
    box = Mailbox(ORG, "mb", "adele@acme.example", ("adele@acme.example",), watermark=CONNECTED)
    for day in range(5):
        source.deliver(message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=day)))
    query = SearchQuery("inbox", ("dan@talent.example",), (), NOW - timedelta(days=10))
    pages, cursor = [], None
    while True:
        page = source.search(box, query, cursor)
        pages.append(page)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert [len(p.messages) for p in pages] == [2, 2, 1] and not pages[-1].capped
    source.search_cap = 3
    page = source.search(box, query, "2")
    assert page.cursor is None and page.capped


# -- previews ---------------------------------------------------------------------------------------


def test_a_dry_run_stores_nothing_and_counts_what_the_backfill_then_logs() -> None:
    world = World()
    world.stores.records.upsert(ORG, [Record("cand-dan", "candidate", emails=("dan@talent.example",))])
    mail = [
        message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=70)),
        message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=5)),
        message("eve@else.example", ["adele@acme.example"], NOW - timedelta(days=80)),
        message("adele@acme.example", ["dan@talent.example"], NOW - timedelta(days=75), folder="sentitems"),
    ]
    for m in mail:
        world.mail.deliver(m)
    seen = world.app.preview_deps()
    result = preview.preview_backfill(seen, ORG, "mb-adele", 90)
    assert world.stores.activities.timeline(ORG, "cand-dan", None, 10).items == ()
    assert world.stores.cursors.get_all(ORG, "mb-adele") == {}
    assert result.tally.logged == 3 and result.tally.per_record == {"cand-dan": 3}
    assert result.window.complete and len(result.tally.sample) == 3

    request_backfill(world.app.schedule_deps(), ORG, "mb-adele", 90)
    outcome = sync_mailbox(world.app.sync_deps(), ORG, "mb-adele", run_id="r" * 32)
    assert outcome.report is not None
    assert dict(outcome.report.reasons) == dict(result.tally.reasons)


def test_a_settings_preview_tells_how_many_more_are_logged_and_why() -> None:
    world = World()
    world.stores.records.upsert(ORG, [Record("cand-dan", "candidate", emails=("dan@talent.example",))])
    world.mail.deliver(message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=2)))
    world.mail.deliver(message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=3)))
    proposed = OrgSettings(internal_domains=("acme.example",), never_log=("talent.example",))
    result = preview.preview_settings(world.app.preview_deps(), ORG, "mb-adele", 7, proposed).to_json()
    assert result["delta"] == {"logged": -2, "reasons": {"matched": -2, "never_log": 2}}
    assert result["changes"] == [{"from": "matched", "to": "never_log", "messages": 2}]


def test_a_job_queued_before_its_records_were_written_waits_for_them_then_runs_anyway() -> None:
    world = World()
    world.mail.deliver(message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=1)))
    deps = world.app.backfill_request_deps()
    dan = Record("cand-dan", "candidate", emails=("dan@talent.example",))
    record_backfill.request_for_records(deps, ORG, {}, [dan])  # the records write has not landed (yet)
    body = world.queue.messages.pop(0).body
    assert commands.dispatch(world.app, "sync", json.dumps(body)) == "more"  # type: ignore[arg-type]
    assert world.queue.messages[0].delay_seconds == 5 and world.mail.searches == []

    world.stores.records.upsert(ORG, [dan])  # the CRM's retry wrote it; the same terms were merged again
    assert record_backfill.request_for_records(deps, ORG, {}, [dan]) == (world.jobs.jobs()[0].job_id,)
    assert len(world.queue.messages) == 1
    assert world.run_queue() == ["done"] and len(world.timeline("cand-dan")) == 1


def test_a_job_whose_records_never_arrive_runs_after_the_settle_wait_and_logs_nothing() -> None:
    world = World()
    world.mail.deliver(message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=1)))
    deps = world.app.backfill_request_deps()
    never_written = Record("cand-dan", "candidate", emails=("dan@talent.example",))
    record_backfill.request_for_records(deps, ORG, {}, [never_written])
    world.clock.moment += record_backfill.SETTLE_WAIT
    assert world.run_queue() == ["done"]
    assert world.jobs.jobs()[0].reasons == {"unmatched": 1}
    assert world.timeline("cand-dan") == []


def test_a_preview_of_a_mailbox_that_cannot_sync_is_refused_like_its_backfill() -> None:
    world = World()
    found = world.stores.mailboxes.get(ORG, "mb-adele")
    assert found is not None
    world.stores.mailboxes.replace(dataclasses.replace(found.value, enabled=False), found.etag)
    with pytest.raises(NotSyncable):
        preview.preview_backfill(world.app.preview_deps(), ORG, "mb-adele", 7)
    assert world.mail.requests == 0


# -- bounded attempts and the job's events -------------------------------------------------------------


class Died(BaseException):
    """The worker process died mid-step (nothing the use case catches)."""


def backfill_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    found = [telemetry.parse(r.getMessage()) for r in caplog.records if r.name == telemetry.EVENT_LOGGER]
    return [e for e in found if e is not None and e["event"] == "record_backfill"]


def test_a_job_whose_search_keeps_raising_ends_failed_with_a_reason_and_no_exception_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    world = World()
    world.mail.deliver(message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=1)))
    [job_id] = world.put(Record("cand-dan", "candidate", emails=("dan@talent.example",)))
    world.mail.fail_next = [ValueError("cannot parse dan@talent.example's header")] * 10

    assert world.run_queue() == ["more", "more", "failed"]  # retried, then bounded

    [job] = world.jobs.jobs()
    assert (job.job_id, job.state, job.error_code, job.attempts) == (job_id, BackfillState.FAILED,
                                                                     "attempts_exhausted", 3)  # fmt: skip
    shown = record_backfill.job_to_json(job)
    assert shown["state"] == "failed" and shown["error_code"] == "attempts_exhausted"
    assert "backfill of the mailbox" in str(shown["error"])
    assert "dan@" not in str(shown) and "parse" not in str(shown) and "ValueError" not in str(shown)
    assert world.queue.messages == [] and len(world.mail.searches) == 3
    [report] = [r for r in world.stores.runs.recent(ORG, "mb-adele", 10) if r.run_id == job_id]
    assert report.error == shown["error"]
    events = backfill_events(caplog)
    assert [(e["outcome"], e["state"], e["attempt"]) for e in events] == [
        ("retrying", "running", 1), ("retrying", "running", 2), ("failed", "failed", 3),
    ]
    assert all(set(e) == set(telemetry.event_fields("record_backfill")) for e in events)
    assert events[-1]["error_code"] == "attempts_exhausted" and events[0]["failure_class"] == "unexpected"
    assert "dan@" not in caplog.text and "cannot parse" not in caplog.text


def test_a_job_whose_worker_keeps_dying_is_failed_by_the_next_delivery_without_searching_again() -> None:
    world = World()
    world.put(Record("cand-dan", "candidate", emails=("dan@talent.example",)))
    body = json.dumps(world.queue.messages.pop(0).body)
    world.mail.fail_next = [Died()] * 3
    for _ in range(3):  # the queue redelivers the message of a worker that died
        with pytest.raises(Died):
            commands.dispatch(world.app, "sync", body)

    assert commands.dispatch(world.app, "sync", body) == "failed"

    [job] = world.jobs.jobs()
    assert job.state is BackfillState.FAILED and job.error_code == "attempts_exhausted"
    assert len(world.mail.searches) == 3


def test_throttling_and_progress_never_count_as_failed_attempts_but_a_day_of_throttling_ends_the_job() -> None:
    world = World()
    for day in range(1, 4):
        world.mail.deliver(message("dan@talent.example", ["adele@acme.example"], NOW - timedelta(days=day)))
    world.put(Record("cand-dan", "candidate", emails=("dan@talent.example",)))
    world.mail.fail_next = [throttled()] * 5
    assert world.run_queue() == ["more"] * 5 + ["done"]
    assert world.jobs.jobs()[0].state is BackfillState.DONE and len(world.timeline("cand-dan")) == 3

    world.put(Record("cand-eve", "candidate", emails=("eve@talent.example",)))
    world.mail.fail_next = [throttled()] * 2
    world.run_queue_once()
    world.clock.moment += timedelta(hours=25)
    world.run_queue()
    second = next(j for j in world.jobs.jobs() if j.record_ids == ("cand-eve",))
    assert second.state is BackfillState.FAILED and second.error_code == "provider_unavailable"
    assert "backfill of the mailbox" in second.error
