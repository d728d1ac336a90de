"""The send state machine on in-memory doubles: every step, every failure, crashes between any two writes."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync_core.domain.model import EmailAddress, Mailbox, MailboxStatus, MailMessage, OrgSettings, Record
from sync_core.domain.sending import AttachmentSpec, PacingWindow, Send, SendRequest, SendStatus, SendStep
from sync_core.errors import (
    GraphError,
    IdempotencyKeyReused,
    MailboxAccessDenied,
    SendingRefused,
    SendNotCancelable,
    TransientGraphError,
)
from sync_core.ports import Versioned
from sync_core.ports.send import DraftState
from sync_core.testing.app import InMemoryApp
from sync_core.testing.mail import FakeMailSource, FixedClock
from sync_core.testing.send import FakeMailSender, InMemorySendStore
from sync_core.use_cases import commands, send
from sync_core.use_cases.send.machine import deliver

ORG, MBX = "org-1", "mbx-1"
OWNER = "adele@contoso.example"
CUSTOMER = "pat@customer.example"
HOOK = "https://crm.example/hooks"


class Crash(Exception):
    """The process died: nothing after this point ran."""


class CrashingSendStore(InMemorySendStore):
    """A sends store whose ``crash_at``-th replace (from 1) dies before writing: a crash right after the
    provider call that the write would have checkpointed."""

    def __init__(self) -> None:
        super().__init__()
        self.replaces = 0
        self.crash_at = 0

    def replace(self, send: Send, etag: str) -> Versioned[Send]:
        self.replaces += 1
        if self.replaces == self.crash_at:
            raise Crash(f"killed before checkpoint {send.step.value}")
        return super().replace(send, etag)


class World:
    def __init__(self, store: InMemorySendStore | None = None, webhook: str | None = None) -> None:
        self.clock = FixedClock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
        self.sender = FakeMailSender(clock=self.clock)
        self.source = FakeMailSource()
        self.app = InMemoryApp(
            clock=self.clock, sender=self.sender, mail=self.source, sends=store or InMemorySendStore()
        )
        self.app.stores.settings.put(ORG, OrgSettings(sending_enabled=True, webhook_url=webhook))
        self.app.stores.mailboxes.add(Mailbox(ORG, MBX, OWNER, (OWNER,), self.clock.moment - timedelta(days=1)))
        self.app.stores.records.upsert(ORG, [Record("c-1", "contact", "Pat", (CUSTOMER,))])
        self.hooks: list[Any] = []

    @property
    def deps(self) -> send.SendDeps:
        return self.app.send_deps()

    def request(self, key: str = "k-1", **fields: Any) -> send.SendRequested:
        request = SendRequest(
            to=fields.pop("to", (EmailAddress(CUSTOMER, "Pat"),)),
            subject=fields.pop("subject", "Proposal"),
            content=fields.pop("content", "Hello Pat"),
            **fields,
        )
        return send.request_send(self.deps, ORG, MBX, idempotency_key=key, request=request, contents=())

    def run_queue(self) -> list[str]:
        """Deliver every queued send command through the one dispatcher, until the queue is empty."""
        outcomes: list[str] = []
        for _ in range(100):
            queued = self.app.push_queue.take()  # type: ignore[attr-defined]
            self.hooks += [m.body for m in queued if m.body.get("kind") == "webhook"]
            taken = [m for m in queued if m.body.get("kind") == "send"]
            if not taken:
                break
            for message in taken:
                outcomes.append(commands.dispatch(self.app, "push", json.dumps(message.body)))  # type: ignore[arg-type]
        return outcomes

    def tick(self, minutes: float = 0) -> None:
        self.clock.moment += timedelta(minutes=minutes)
        send.release_due(self.deps)
        self.run_queue()

    def get(self, send_id: str) -> Send:
        stored = self.app.sends.get(ORG, send_id)
        assert stored is not None
        return stored.value


def test_a_send_goes_through_every_step_and_is_logged_once_as_a_sent_activity_from_the_crm() -> None:
    world = World()
    created = world.request(record_ids=("c-1",))
    assert created.created and created.send.status is SendStatus.QUEUED
    world.run_queue()
    done = world.get(created.send.send_id)
    assert done.status is SendStatus.SENT and done.step is SendStep.CONFIRMED
    assert world.sender.calls == ["locate", "prepare", "inspect", "submit", "inspect"]
    assert len(world.sender.delivered) == 1
    activity = world.app.stores.activities.get(ORG, done.activity_id)
    assert activity is not None
    assert activity.internet_message_id == done.internet_message_id
    assert activity.direction.value == "sent" and activity.sent_from_crm and activity.send_id == done.send_id
    assert [r.record_id for r in activity.records] == ["c-1"]


def test_bcc_is_sent_but_never_stored_on_the_activity() -> None:
    world = World()
    created = world.request(bcc=(EmailAddress("boss@other.example"),))
    world.run_queue()
    done = world.get(created.send.send_id)
    assert world.sender.delivered[0][1].bcc == (EmailAddress("boss@other.example"),)
    assert (done.request.bcc, done.request.content) == ((), "")  # an ended send keeps no body or BCC
    activity = world.app.stores.activities.get(ORG, done.activity_id)
    assert activity is not None
    assert "boss@other.example" not in json.dumps([p.address for p in activity.to + activity.cc])


def test_the_syncs_later_copy_of_the_sent_message_merges_into_the_same_activity() -> None:
    world = World()
    created = world.request()
    world.run_queue()
    done = world.get(created.send.send_id)
    copy = MailMessage(
        "sent-copy",
        done.internet_message_id,
        "Proposal",
        EmailAddress(OWNER),
        (EmailAddress(CUSTOMER),),
        (),
        world.clock.moment,
        folder="sentitems",
    )
    world.source.folders_["sentitems"].append(copy)
    world.app.sync(ORG, MBX)
    activities = world.app.stores.activities.timeline(ORG, "c-1", None, 10).items
    assert len(activities) == 1
    assert activities[0].sent_from_crm and activities[0].send_id == done.send_id


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4, 5, 6])
def test_a_crash_before_any_checkpoint_resumes_and_delivers_exactly_once(crash_at: int) -> None:
    store = CrashingSendStore()
    world = World(store)
    created = world.request()
    store.crash_at = crash_at
    with pytest.raises(Crash):
        world.run_queue()
    world.tick(minutes=6)  # the timer releases it again (the queue message died with the process)
    done = world.get(created.send.send_id)
    assert done.status is SendStatus.SENT
    assert len(world.sender.delivered) == 1
    assert [d for d in world.sender.drafts.values() if not d.deleted and not d.submitted] == []
    assert len(world.app.stores.activities.timeline(ORG, "c-1", None, 10).items) == 1


@pytest.mark.parametrize("crash_at", [2, 3, 4])
def test_a_message_kept_in_a_dead_workers_memory_is_prepared_again_the_same_and_delivered_once(crash_at: int) -> None:
    store = CrashingSendStore()
    world = World(store)
    world.sender.memory_only = True  # Gmail's way: prepare creates nothing at the provider
    created = world.request(record_ids=("c-1",))
    store.crash_at = crash_at  # 2: after prepare; 3: PREPARED written, not SUBMITTING; 4: after the submit
    with pytest.raises(Crash):
        world.run_queue()
    prepared = [d.message for d in world.sender.drafts.values()]
    world.sender.forget()  # the worker's memory dies with it

    world.tick(minutes=6)

    done = world.get(created.send.send_id)
    assert done.status is SendStatus.SENT, done.error
    assert [message for _, message in world.sender.delivered] == prepared  # the same message, once
    assert world.sender.calls.count("submit") == 1
    assert len(world.app.stores.activities.timeline(ORG, "c-1", None, 10).items) == 1


def test_a_lost_prepared_message_that_cannot_be_built_again_the_same_fails_without_sending() -> None:
    store = CrashingSendStore()
    world = World(store)
    world.sender.memory_only = True
    created = world.request()
    store.crash_at = 4  # SUBMITTING written (so 3 writes), then the worker dies before its submit
    world.sender.fail("submit", Crash("killed before the submit"))
    with pytest.raises(Crash):
        world.run_queue()
    world.sender.forget()
    stored = store.get(ORG, created.send.send_id)
    assert stored is not None and stored.value.step is SendStep.SUBMITTING
    store.crash_at = 0
    store.replace(replace(stored.value, handle="kept-written-by-an-older-version"), stored.etag)

    world.tick(minutes=6)

    done = world.get(created.send.send_id)
    assert done.status is SendStatus.FAILED and done.error is not None
    assert done.error.code == "provider_refused" and "nothing was sent" in done.error.message
    assert world.sender.delivered == [] and world.sender.drafts == {}


def test_a_submit_whose_answer_was_lost_is_not_sent_again() -> None:
    world = World()
    world.sender.lose_answer = True
    created = world.request()
    with pytest.raises(ConnectionError):
        world.run_queue()
    world.tick(minutes=6)
    assert world.get(created.send.send_id).status is SendStatus.SENT
    assert world.sender.calls.count("submit") == 1 and len(world.sender.delivered) == 1


def test_a_draft_that_vanished_during_submit_fails_as_outcome_unknown_and_is_never_resent() -> None:
    store = CrashingSendStore()
    world = World(store)
    created = world.request()
    store.crash_at = 4  # killed after submit, before SUBMITTED
    with pytest.raises(Crash):
        world.run_queue()
    for draft in world.sender.drafts.values():
        draft.deleted = True  # the user deleted the sent copy meanwhile
    world.tick(minutes=6)
    done = world.get(created.send.send_id)
    assert done.status is SendStatus.FAILED and done.error is not None and done.error.code == "outcome_unknown"
    assert len(world.sender.delivered) == 1


def test_a_provider_that_cannot_tell_makes_the_send_fail_unknown_not_resend() -> None:
    store = CrashingSendStore()
    world = World(store)
    created = world.request()
    store.crash_at = 4
    with pytest.raises(Crash):
        world.run_queue()
    world.sender.inspect_unknown = True
    world.tick(minutes=6)
    assert world.get(created.send.send_id).error.code == "outcome_unknown"  # type: ignore[union-attr]
    assert world.sender.calls.count("submit") == 1


def test_a_sent_copy_not_yet_readable_is_looked_at_again_later() -> None:
    world = World()
    world.sender.visible_after_submit = False
    created = world.request()
    world.run_queue()
    assert world.get(created.send.send_id).status is SendStatus.SENDING
    world.sender.settle()
    world.tick(minutes=1)
    assert world.get(created.send.send_id).status is SendStatus.SENT
    assert len(world.sender.delivered) == 1


def test_a_throttled_provider_makes_the_send_wait_for_its_retry_after_then_go() -> None:
    world = World()
    world.sender.fail("prepare", TransientGraphError("429", 120))
    created = world.request()
    world.run_queue()
    waiting = world.get(created.send.send_id)
    assert waiting.status is SendStatus.SENDING and world.sender.delivered == []
    world.tick(minutes=1)
    assert world.sender.delivered == []
    world.tick(minutes=2)
    assert world.get(created.send.send_id).status is SendStatus.SENT


@pytest.mark.parametrize(
    ("method", "error", "code"),
    [
        ("prepare", MailboxAccessDenied("ErrorAccessDenied"), "send_permission_missing"),
        ("submit", MailboxAccessDenied("ErrorSendAsDenied"), "send_permission_missing"),
        ("prepare", GraphError(400, "ErrorInvalidRecipients", "bad"), "provider_refused"),
    ],
)
def test_a_refusal_before_or_at_submit_fails_the_send_with_its_reason(method: str, error: Exception, code: str) -> None:
    world = World(webhook=HOOK)
    world.sender.fail(method, error)
    created = world.request()
    world.run_queue()
    done = world.get(created.send.send_id)
    assert done.status is SendStatus.FAILED and done.error is not None and done.error.code == code
    assert world.sender.delivered == [] and done.announced
    assert [e["event"] for e in world.hooks] == ["send.failed"]


PROVIDER_WORDS = ("Mail.", "Microsoft", "Graph", "Exchange", "Outlook", "Sent Items", "Gmail", "Google", "SMTP")


def test_failure_messages_name_no_provider_unless_the_providers_own_sender_says_what_is_missing() -> None:
    world = World()
    world.sender.fail("submit", MailboxAccessDenied("ErrorSendAsDenied"))
    denied = world.request("k-denied")
    world.run_queue()
    store = CrashingSendStore()
    crashed = World(store)
    unknown = crashed.request("k-unknown")
    store.crash_at = 4  # submitted, not checkpointed; then the provider cannot tell
    with pytest.raises(Crash):
        crashed.run_queue()
    crashed.sender.inspect_unknown = True
    crashed.tick(minutes=6)
    hinted = World()
    hinted.sender.fail("prepare", MailboxAccessDenied("403"))
    hint = "the mailbox has no SMTP login: add its smtp settings to send from it"
    hinted_send = hinted.request("k-hinted")
    hinted.sender.missing_permission = hint  # found missing only after the send was accepted
    hinted.run_queue()

    messages = [
        w.get(created.send.send_id).error.message  # type: ignore[union-attr]
        for w, created in ((world, denied), (crashed, unknown))
    ]
    assert "permission to send" in messages[0] and "sent mail" in messages[1]
    assert not [word for word in PROVIDER_WORDS for message in messages if word in message]
    assert hinted.get(hinted_send.send.send_id).error.message.endswith(hint)  # type: ignore[union-attr]


def test_a_sent_send_is_announced_with_a_send_sent_webhook_showing_the_send() -> None:
    world = World(webhook=HOOK)
    created = world.request()
    world.run_queue()
    hooks = world.hooks
    assert [h["event"] for h in hooks] == ["send.sent"]
    delivery = commands.DeliverWebhook.from_json(hooks[0])
    from sync_core.use_cases import webhooks  # noqa: PLC0415

    assert webhooks.deliver(world.app.webhook_deps(), delivery).status == "delivered"
    posted = json.loads(world.app.webhook_sender.posts[0][1])  # type: ignore[attr-defined]
    assert posted["type"] == "send.sent" and posted["data"]["id"] == created.send.send_id
    assert posted["data"]["status"] == "sent"


def test_the_same_key_and_body_give_the_same_send_and_another_body_is_refused() -> None:
    world = World()
    first = world.request("k")
    again = world.request("k")
    assert again.send.send_id == first.send.send_id and not again.created
    with pytest.raises(IdempotencyKeyReused):
        world.request("k", subject="Another")
    world.run_queue()
    assert len(world.sender.delivered) == 1


def test_concurrent_requests_with_one_key_make_one_send() -> None:
    world = World()
    results: list[str] = []
    barrier = threading.Barrier(8)

    def post() -> None:
        barrier.wait()
        results.append(world.request("same").send.send_id)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    world.run_queue()
    assert len(world.sender.delivered) == 1


def test_sending_disabled_or_an_inactive_mailbox_is_refused_with_a_code_saying_which() -> None:
    world = World()
    world.app.stores.settings.put(ORG, OrgSettings())
    with pytest.raises(SendingRefused) as off:
        world.request()
    assert off.value.code == "sending_disabled"
    world.app.stores.settings.put(ORG, OrgSettings(sending_enabled=True))
    stored = world.app.stores.mailboxes.get(ORG, MBX)
    assert stored is not None
    world.app.stores.mailboxes.replace(stored.value.signed_out("token revoked"), stored.etag)
    with pytest.raises(SendingRefused) as inactive:
        world.request()
    assert inactive.value.code == "mailbox_not_active"


def test_thirty_five_sends_in_one_minute_send_thirty_and_keep_five_queued_for_later() -> None:
    world = World()
    ids = [world.request(f"k-{i}", subject=f"n{i}").send.send_id for i in range(35)]
    world.run_queue()
    statuses = [world.get(i).status for i in ids]
    assert statuses.count(SendStatus.SENT) == 30 and statuses.count(SendStatus.QUEUED) == 5
    assert all(world.get(i).not_before is not None for i in ids if world.get(i).status is SendStatus.QUEUED)
    world.tick(minutes=1.1)
    assert all(world.get(i).status is SendStatus.SENT for i in ids)
    assert len(world.sender.delivered) == 35


def test_the_daily_recipient_limit_holds_a_send_until_the_oldest_recipients_age_out() -> None:
    now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    window = PacingWindow(((now - timedelta(hours=23), 9_990), (now - timedelta(hours=1), 5)))
    assert window.next_free(now, 5) is None
    assert window.next_free(now, 6) == now + timedelta(hours=1)


def test_a_scheduled_send_goes_out_when_due_and_can_be_canceled_until_then() -> None:
    world = World()
    at = world.clock.moment + timedelta(days=10)
    later = world.request("a", send_at=at)
    canceled = world.request("b", send_at=at, subject="other")
    assert later.send.status is SendStatus.SCHEDULED
    assert send.cancel(world.deps, ORG, canceled.send.send_id).status is SendStatus.CANCELED
    world.tick(minutes=60)
    assert world.sender.delivered == []
    world.clock.moment = at
    world.tick()
    assert world.get(later.send.send_id).status is SendStatus.SENT
    assert world.get(canceled.send.send_id).status is SendStatus.CANCELED
    assert len(world.sender.delivered) == 1
    with pytest.raises(SendNotCancelable):
        send.cancel(world.deps, ORG, later.send.send_id)


def test_a_reply_goes_through_the_original_in_the_mailbox_or_carries_its_headers_when_it_is_gone() -> None:
    world = World()
    original = MailMessage(
        "orig-src",
        "<orig@customer.example>",
        "Question",
        EmailAddress(CUSTOMER),
        (EmailAddress(OWNER),),
        (),
        world.clock.moment,
        folder="inbox",
        references=("<root@customer.example>",),
    )
    world.source.folders_["inbox"].append(original)
    world.app.sync(ORG, MBX)
    activity = world.app.stores.activities.timeline(ORG, "c-1", None, 10).items[0]
    reply = world.request("r1", reply_to_activity_id=activity.activity_id, subject="Re: Question")
    world.run_queue()
    target = world.sender.delivered[0][1].reply_to
    assert target is not None and target.source_id == "orig-src"
    assert target.references == ("<root@customer.example>", "<orig@customer.example>")
    sent = world.app.stores.activities.get(ORG, world.get(reply.send.send_id).activity_id)
    assert sent is not None and sent.thread_id == activity.thread_id
    world.source.folders_["inbox"].clear()
    world.request("r2", reply_to_activity_id=activity.activity_id, subject="Re: Question again")
    world.run_queue()
    gone = world.sender.delivered[1][1].reply_to
    assert gone is not None and gone.source_id == "" and gone.internet_message_id == "<orig@customer.example>"


def test_attachments_reach_the_provider_with_their_bytes() -> None:
    world = World()
    content = b"%PDF" + b"x" * 1000
    spec = AttachmentSpec("quote.pdf", "application/pdf", len(content), hashlib.sha256(content).hexdigest())
    request = SendRequest(to=(EmailAddress(CUSTOMER),), subject="Quote", attachments=(spec,))
    send.request_send(world.deps, ORG, MBX, idempotency_key="att", request=request, contents=(content,))
    world.run_queue()
    sent = world.sender.delivered[0][1]
    assert [(a.name, a.content) for a in sent.attachments] == [("quote.pdf", content)]
    stored = world.app.sends.by_key(ORG, "att")
    assert stored is not None and world.app.sends.content(ORG, stored.value.send_id) == ()
    activity = world.app.stores.activities.timeline(ORG, "c-1", None, 10).items[0]
    shown = [(a.name, a.size, a.content_type) for a in activity.attachments]
    assert shown == [("quote.pdf", len(content), "application/pdf")]


def test_a_mailbox_signed_out_before_its_queued_send_started_fails_it_without_a_provider_call() -> None:
    world = World()
    created = world.request()
    stored = world.app.stores.mailboxes.get(ORG, MBX)
    assert stored is not None
    world.app.stores.mailboxes.replace(stored.value.with_status(MailboxStatus.NEEDS_REAUTH, "x"), stored.etag)
    world.run_queue()
    done = world.get(created.send.send_id)
    assert done.status is SendStatus.FAILED and done.error is not None and done.error.code == "mailbox_not_active"
    assert world.sender.calls == []


def test_a_redelivered_command_for_a_finished_send_changes_nothing() -> None:
    world = World()
    created = world.request()
    world.run_queue()
    calls = list(world.sender.calls)
    assert deliver(world.deps, ORG, created.send.send_id) == "sent"
    assert world.sender.calls == calls


def test_the_fake_provider_never_delivers_one_draft_twice() -> None:
    sender = FakeMailSender()
    mailbox = Mailbox(ORG, MBX, OWNER, (OWNER,), datetime(2026, 1, 1, tzinfo=UTC))
    created = World().request()
    handle = sender.prepare(mailbox, _outgoing(created.send))
    sender.submit(mailbox, handle)
    sender.submit(mailbox, handle)
    assert len(sender.delivered) == 1 and sender.inspect(mailbox, handle).state is DraftState.SENT


def _outgoing(s: Send) -> Any:
    from sync_core.ports.send import OutgoingMessage  # noqa: PLC0415

    r = s.request
    return OutgoingMessage(s.send_id, EmailAddress(OWNER), r.to, r.cc, r.bcc, r.subject, r.content_type, r.content)


def test_a_second_worker_leaves_a_send_alone_while_the_first_holds_its_lease() -> None:
    world = World()
    created = world.request()
    seen: list[str] = []
    prepare = world.sender.prepare

    def prepare_while_another_worker_comes(mailbox: Mailbox, message: Any) -> str:
        seen.append(deliver(world.deps, ORG, created.send.send_id))  # a redelivered message, meanwhile
        return prepare(mailbox, message)

    world.sender.prepare = prepare_while_another_worker_comes  # type: ignore[method-assign]
    world.run_queue()
    assert seen == ["busy"]
    assert world.get(created.send.send_id).status is SendStatus.SENT
    assert world.sender.calls.count("prepare") == 1 and len(world.sender.delivered) == 1


def test_a_worker_whose_lease_was_taken_over_stops_at_its_next_checkpoint() -> None:
    world = World()
    created = world.request()
    prepare = world.sender.prepare

    def slow_prepare(mailbox: Mailbox, message: Any) -> str:
        handle = prepare(mailbox, message)
        world.clock.moment += timedelta(minutes=10)  # the worker outlived its lease...
        world.sender.prepare = prepare  # type: ignore[method-assign]
        assert deliver(world.deps, ORG, created.send.send_id) == "sent"  # ...and another took over
        return handle

    world.sender.prepare = slow_prepare  # type: ignore[method-assign]
    world.run_queue()
    assert world.get(created.send.send_id).status is SendStatus.SENT
    assert len(world.sender.delivered) == 1


def test_a_worker_that_outlived_its_lease_before_its_submit_never_submits_after_another_took_over() -> None:
    world = World()
    world.sender.memory_only = True  # Gmail's way: a second submit would be a second message
    created = world.request()
    inspect = world.sender.inspect
    others: list[str] = []
    stalled: list[bool] = []

    def slow_inspect(mailbox: Mailbox, handle: str) -> Any:
        view = inspect(mailbox, handle)
        if not stalled:  # the first worker stalls at SUBMITTING past its lease; another takes the send over
            stalled.append(True)
            world.clock.moment += timedelta(minutes=10)
            others.append(deliver(world.deps, ORG, created.send.send_id))
        return view

    world.sender.inspect = slow_inspect  # type: ignore[method-assign]
    world.run_queue()

    assert others == ["sent"] and world.get(created.send.send_id).status is SendStatus.SENT
    assert world.sender.calls.count("submit") == 1 and len(world.sender.delivered) == 1


def test_a_lease_nearly_out_is_renewed_before_the_submit() -> None:
    world = World()
    created = world.request()
    inspect = world.sender.inspect
    leases: list[datetime | None] = []

    def slow_inspect(mailbox: Mailbox, handle: str) -> Any:
        if not leases:
            world.clock.moment += timedelta(minutes=4)  # one minute of the five left
            leases.append(world.get(created.send.send_id).lease_until)
        return inspect(mailbox, handle)

    world.sender.inspect = slow_inspect  # type: ignore[method-assign]
    submit = world.sender.submit

    def submit_and_look(mailbox: Mailbox, handle: str) -> None:
        leases.append(world.get(created.send.send_id).lease_until)
        submit(mailbox, handle)

    world.sender.submit = submit_and_look  # type: ignore[method-assign]
    world.run_queue()

    assert world.get(created.send.send_id).status is SendStatus.SENT
    before, at_submit = leases
    assert before is not None and at_submit == world.clock.moment + timedelta(minutes=5) > before


def test_a_connection_without_the_send_permission_is_refused_before_anything_is_stored() -> None:
    world = World()
    world.sender.missing_permission = "the mailbox's connection lacks Mail.Send: connect it again to grant it"
    with pytest.raises(SendingRefused) as refused:
        world.request()
    assert refused.value.code == "send_permission_missing" and "connect it again" in str(refused.value)
    assert world.app.sends.by_key(ORG, "k-1") is None and world.sender.calls == []
