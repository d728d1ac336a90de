"""CRM webhooks (use case ``webhooks``) on in-memory doubles and a fake ``WebhookSender``; and the sender
adapter's URL guard with a fake resolver."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync_core.adapters.http_webhooks import check_url
from sync_core.api.activities import activity_to_json
from sync_core.auth.crypto import TokenCipher
from sync_core.domain.model import (
    Activity,
    Direction,
    EmailAddress,
    Mailbox,
    MailMessage,
    OrgSettings,
    Record,
    RecordRef,
    activity_id_for,
)
from sync_core.errors import SecretAlreadyRevealed, WebhookSecretUnreadable, WebhookSendFailed, WebhookUrlRefused
from sync_core.ports import ActivityEvent
from sync_core.testing.app import InMemoryApp
from sync_core.testing.mail import FakeMailSource, FixedClock
from sync_core.testing.push import FakeWebhookSender, InMemoryWebhookLog, InMemoryWebhookSecretStore
from sync_core.testing.scheduling import InMemoryWorkQueue
from sync_core.testing.stores import InMemoryStores
from sync_core.use_cases import webhooks
from sync_core.use_cases.ingest import ingest
from sync_core.use_cases.sync_mailbox import sync_mailbox
from sync_core.use_cases.webhooks import MAX_ATTEMPTS, RETRY_DELAYS, WebhookEvents

ORG = "acme"
HOOK = "https://crm.example/hooks/mail"
NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def activity(activity_id: str = "act-1", subject: str = "Interview") -> Activity:
    return Activity(
        org_id=ORG,
        activity_id=activity_id,
        internet_message_id=f"<{activity_id}@mail.example>",
        thread_id="t1",
        subject=subject,
        body_text="Hello",
        body_preview="Hello",
        body_truncated=False,
        sender=EmailAddress("dan@talent.example", "Dan"),
        to=(EmailAddress("adele@acme.example"),),
        cc=(),
        sent_at=NOW,
        received_at=NOW,
        direction=Direction.RECEIVED,
        mailbox_ids=("mb-adele",),
        records=(RecordRef("cand-dan", "candidate"),),
    )


class World:
    def __init__(self, webhook_url: str | None = HOOK) -> None:
        self.stores = InMemoryStores()
        self.stores.settings.put(ORG, OrgSettings(webhook_url=webhook_url))
        self.queue = InMemoryWorkQueue()
        self.sender = FakeWebhookSender()
        self.clock = FixedClock(NOW)
        self.log = InMemoryWebhookLog()
        self.secrets = InMemoryWebhookSecretStore()
        self.ids = iter(f"d{n}" for n in range(1000))
        self.app = InMemoryApp(
            stores=self.stores,
            clock=self.clock,
            push_queue=self.queue,
            webhook_log=self.log,
            webhook_secrets=self.secrets,
            webhook_sender=self.sender,
        )
        self.deps = self.app.webhook_deps(new_id=lambda: next(self.ids))

    def created(self, *items: Activity) -> tuple[ActivityEvent, ...]:
        """Save as a sync run does (each new activity with its outbox event), then announce the events."""
        written = self.stores.activities.save(items, announce_at=self.clock.now())
        WebhookEvents(self.deps).created(ORG, written.events)
        return written.events

    def run_queue(self) -> list[webhooks.WebhookDelivery]:
        """Deliver what is queued (each message once, ignoring its delay); returns the attempts' results."""
        return [webhooks.deliver(self.deps, message.body) for message in self.queue.take()]

    def logged(self) -> list[webhooks.WebhookDelivery]:
        return list(self.log.recent(ORG, None, 100).items)


def test_a_new_activity_is_posted_once_signed_with_the_orgs_secret() -> None:
    world = World()
    [created] = world.created(activity())

    [result] = world.run_queue()

    assert result.status == "delivered" and result.response_status == 200 and result.attempts == 1
    [(url, body, headers)] = world.sender.posts
    secret = world.deps.secrets.get(ORG)
    assert url == HOOK and secret is not None
    expected = "sha256=" + hmac.new(secret.value.value.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Signature"] == expected
    # The delivery id is the outbox event's id, fixed when the activity was saved.
    assert headers["X-Delivery-Id"] == created.event_id and headers["X-Event-Type"] == "activity.created"
    assert headers["X-Timestamp"] == str(int(NOW.timestamp()))
    event = json.loads(body)
    assert (event["id"], event["type"], event["org_id"], event["attempt"]) == (
        created.event_id, "activity.created", ORG, 1
    )
    assert event["sent_at"] == "2026-11-01T09:00:00Z"  # the timestamp is inside the signed body too
    assert event["data"] == activity_to_json(activity())


def test_a_deleted_activity_is_posted_with_its_id() -> None:
    world = World()
    WebhookEvents(world.deps).deleted(ORG, ["act-9"])

    [result] = world.run_queue()

    assert result.status == "delivered"
    assert json.loads(world.sender.posts[0][1])["data"] == {"id": "act-9"}


def test_without_a_webhook_url_nothing_is_queued() -> None:
    world = World(webhook_url=None)
    world.created(activity())

    assert world.queue.messages == [] and world.logged() == []


def test_a_failed_attempt_is_queued_again_with_growing_delays_until_it_gives_up() -> None:
    world = World()
    world.sender.answers = [500] * MAX_ATTEMPTS
    world.created(activity())
    delays = []

    for attempt in range(1, MAX_ATTEMPTS + 1):
        [message] = world.queue.take()
        assert message.body["attempt"] == attempt
        delays.append(message.delay_seconds)
        result = webhooks.deliver(world.deps, message.body)

    assert delays == [0, *RETRY_DELAYS]
    assert result.status == "failed" and result.attempts == MAX_ATTEMPTS and world.queue.messages == []
    assert len({json.loads(body)["id"] for _, body, _ in world.sender.posts}) == 1  # one delivery id throughout
    [logged] = world.logged()
    assert logged.status == "failed" and logged.error == "HTTP 500"


def test_a_retrying_delivery_says_when_it_is_tried_next_and_then_succeeds() -> None:
    world = World()
    world.sender.answers = [WebhookSendFailed("ConnectTimeout")]
    world.created(activity())

    [first] = world.run_queue()
    [second] = world.run_queue()

    assert first.status == "retrying" and first.error == "no answer: ConnectTimeout"
    assert first.next_attempt_at == NOW + timedelta(seconds=RETRY_DELAYS[0])
    assert second.status == "delivered" and second.attempts == 2
    [logged] = world.logged()
    assert logged.status == "delivered"


def test_a_refused_url_fails_at_once_without_retries() -> None:
    world = World()
    world.sender.answers = [WebhookUrlRefused("the host resolves to a private address")]
    world.created(activity())

    [result] = world.run_queue()

    assert result.status == "failed" and "private" in result.error and world.queue.messages == []


def test_a_delivery_whose_webhook_was_removed_or_activity_deleted_is_skipped() -> None:
    world = World()
    world.created(activity("a1"), activity("a2"))
    world.stores.activities.delete(ORG, "a1")

    results = world.run_queue()

    assert [r.status for r in results] == ["skipped", "delivered"]
    world.created(activity("a3"))
    world.stores.settings.put(ORG, OrgSettings())
    assert [r.status for r in world.run_queue()] == ["skipped"]


def test_the_delivery_log_lists_deliveries_newest_first_in_pages() -> None:
    world = World()
    for n in range(5):
        world.clock.moment = NOW + timedelta(seconds=n)
        world.created(activity(f"a{n}"))

    first = world.log.recent(ORG, None, 3)
    second = world.log.recent(ORG, first.cursor, 3)

    assert [d.activity_id for d in first.items] == ["a4", "a3", "a2"]
    assert [d.activity_id for d in second.items] == ["a1", "a0"] and second.cursor is None


def test_an_announcement_that_cannot_be_queued_never_fails_the_caller() -> None:
    world = World()

    class BrokenQueue:
        def enqueue(self, message: Mapping[str, Any], delay_seconds: int = 0) -> None:
            raise RuntimeError("queue down")

    world.deps.queue = BrokenQueue()

    [event] = world.created(activity())  # logged, not raised

    # The event stays in the outbox for the maintenance drain.
    assert world.stores.activities.pending_events(ORG, NOW + timedelta(hours=1), 10) == (event,)


class WorkerDied(RuntimeError):
    pass


class DiesBeforeAnnouncing:
    """The ActivityEvents port of a worker that dies before it announces anything."""

    def created(self, org_id: str, events: Sequence[Any]) -> None:
        raise WorkerDied("killed after the save, before the announcement")

    def deleted(self, org_id: str, activity_ids: Sequence[str]) -> None:
        raise AssertionError("no deletion expected")


def test_an_ingested_message_whose_worker_died_before_announcing_is_announced_by_the_drain_once_with_its_event_id() -> (
    None
):
    world = World()
    s = world.stores
    s.records.upsert(ORG, [Record("cand-dan", "candidate", "Dan", emails=("dan@talent.example",))])
    s.mailboxes.add(Mailbox(ORG, "mb-adele", "adele@acme.example", ("adele@acme.example",), NOW))
    raw = (
        b"From: dan@talent.example\r\nTo: adele@acme.example\r\nSubject: Hello\r\n"
        b"Date: Sun, 01 Nov 2026 08:00:00 +0000\r\nMessage-ID: <up1@talent.example>\r\n\r\nHi.\r\n"
    )
    deps = world.app.ingest_deps(events=DiesBeforeAnnouncing())

    with pytest.raises(WorkerDied):
        ingest(deps, ORG, raw)
    activity_id = activity_id_for(ORG, "<up1@talent.example>")
    assert s.activities.get(ORG, activity_id) is not None and world.queue.messages == []
    [left] = s.activities.pending_events(ORG, NOW + timedelta(days=1), 10)

    assert webhooks.drain_outbox(world.deps, ORG) == 0  # young: left to the request that wrote it
    world.clock.moment = NOW + webhooks.OUTBOX_GRACE + timedelta(seconds=1)
    assert webhooks.drain_outbox(world.deps, ORG) == 1
    assert webhooks.drain_outbox(world.deps, ORG) == 0  # announced once, then cleared
    [result] = world.run_queue()

    [(_, body, headers)] = world.sender.posts
    assert result.status == "delivered" and json.loads(body)["data"]["id"] == activity_id
    assert headers["X-Delivery-Id"] == json.loads(body)["id"] == left.event_id


def test_a_secret_no_configured_key_opens_gets_a_clear_error_rotation_replaces_it_and_deliveries_wait() -> None:
    world = World()
    webhooks.reveal_secret(world.deps, ORG)
    world.deps.secrets = world.secrets.with_cipher(TokenCipher.from_setting("k1:" + "Q" * 43 + "="))  # key changed
    world.created(activity())

    [waiting] = world.run_queue()
    with pytest.raises(WebhookSecretUnreadable) as raised:
        webhooks.reveal_secret(world.deps, ORG)
    rotated = webhooks.reveal_secret(world.deps, ORG, rotate=True)
    [message] = world.queue.take()
    delivered = webhooks.deliver(world.deps, message.body)

    assert raised.value.code == "webhook_secret_unreadable"
    assert (waiting.status, waiting.error) == ("retrying", webhooks.UNREADABLE_NOTE)  # never sent unsigned
    assert delivered.status == "delivered" and delivered.attempts == 2
    [(_, body, headers)] = world.sender.posts
    assert headers["X-Signature"] == webhooks.signature(rotated.value, body)


# -- the secret ---------------------------------------------------------------------------------------


def test_the_secret_is_generated_on_first_use_and_shown_exactly_once() -> None:
    world = World()
    world.created(activity())
    world.run_queue()  # first use: the delivery was signed with a fresh secret

    shown = webhooks.reveal_secret(world.deps, ORG)

    assert shown.value.startswith("whsec_") and len(shown.value) > 40
    _, body, headers = world.sender.posts[0]
    assert headers["X-Signature"] == webhooks.signature(shown.value, body)
    with pytest.raises(SecretAlreadyRevealed):
        webhooks.reveal_secret(world.deps, ORG)


def test_rotating_gives_a_new_secret_that_signs_from_then_on() -> None:
    world = World()
    old = webhooks.reveal_secret(world.deps, ORG)

    new = webhooks.reveal_secret(world.deps, ORG, rotate=True)
    world.created(activity())
    world.run_queue()

    assert new.value != old.value
    _, body, headers = world.sender.posts[0]
    assert headers["X-Signature"] == webhooks.signature(new.value, body)


# -- the URL guard -------------------------------------------------------------------------------------


def resolver(*addresses: str) -> Any:
    return lambda _host, _port: list(addresses)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.1.2.3", "172.16.0.5", "192.168.1.1", "169.254.169.254", "::1", "fd00::1", "0.0.0.0"]
)
def test_webhook_urls_resolving_to_private_loopback_or_link_local_addresses_are_refused(address: str) -> None:
    with pytest.raises(WebhookUrlRefused):
        check_url("https://crm.example/hook", allow_private=False, resolver=resolver("93.184.216.34", address))


@pytest.mark.parametrize(
    "url", ["http://crm.example/hook", "ftp://crm.example/hook", "https://user:pw@crm.example/hook", "/hook"]
)
def test_webhook_urls_must_be_https_without_credentials(url: str) -> None:
    with pytest.raises(WebhookUrlRefused):
        check_url(url, allow_private=False, resolver=resolver("93.184.216.34"))


def test_a_public_https_url_is_allowed_and_private_targets_only_with_the_setting() -> None:
    check_url("https://crm.example/hook", allow_private=False, resolver=resolver("93.184.216.34"))
    check_url("https://localhost:8443/hook", allow_private=True, resolver=resolver("127.0.0.1"))


# -- the sync run announces what it created ------------------------------------------------------------


def test_a_sync_run_announces_only_the_activities_it_created() -> None:
    world = World()
    s = world.stores
    s.settings.put(ORG, OrgSettings(internal_domains=("acme.example",), webhook_url=HOOK))
    s.records.upsert(ORG, [Record("cand-dan", "candidate", "Dan", emails=("dan@talent.example",))])
    for box in ("adele", "megan"):
        s.mailboxes.add(Mailbox(ORG, f"mb-{box}", f"{box}@acme.example", (f"{box}@acme.example",), NOW))
    mail = FakeMailSource()
    shared = MailMessage(
        source_id="m1",
        internet_message_id="<m1@talent.example>",
        subject="To both of you",
        sender=EmailAddress("dan@talent.example"),
        to=(EmailAddress("adele@acme.example"), EmailAddress("megan@acme.example")),
        cc=(),
        received_at=NOW + timedelta(minutes=1),
    )
    mail.deliver(shared)
    events = WebhookEvents(world.deps)
    deps = world.app.sync_deps(mail=mail, events=events)

    assert sync_mailbox(deps, ORG, "mb-adele").status == "done"
    assert sync_mailbox(deps, ORG, "mb-megan").status == "done"  # same message: merged, not new

    [message] = world.queue.take()
    assert message.body["event"] == "activity.created"
    assert message.body["activity_id"] == activity_id_for(ORG, "<m1@talent.example>")
