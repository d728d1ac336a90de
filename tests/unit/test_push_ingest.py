"""RFC 822 ingest (use case ``ingest``) on in-memory doubles: the mailbox a message is seen in, the shared
pipeline with synced mail, and dedupe across both paths."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from sync_core.domain.model import Activity, EmailAddress, Mailbox, MailboxStatus, MailMessage, OrgSettings, Record
from sync_core.domain.text import MAX_HTML_CHARS
from sync_core.errors import InvalidMessage
from sync_core.testing.app import InMemoryApp
from sync_core.testing.mail import FakeMailSource, FixedClock
from sync_core.testing.stores import InMemoryStores
from sync_core.use_cases import ingest
from sync_core.use_cases.sync_mailbox import sync_mailbox

ORG = "acme"
CONNECTED = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
DAN = "dan@talent.example"


class Events:
    """The ActivityEvents port: records the ids it was told about."""

    def __init__(self) -> None:
        self.ids: list[str | None] = []

    def created(self, org_id: str, activities: Sequence[Activity]) -> None:
        self.ids.extend(a.activity_id for a in activities)

    def deleted(self, org_id: str, activity_ids: Sequence[str]) -> None:
        raise AssertionError("no deletion expected")


class World:
    def __init__(self) -> None:
        self.stores = InMemoryStores()
        self.clock = FixedClock(CONNECTED + timedelta(hours=1))
        self.events = Events()
        self.stores.records.upsert(ORG, [Record("cand-dan", "candidate", "Dan", emails=(DAN,))])
        # Creations are announced (through the outbox) to orgs with a webhook URL.
        self.stores.settings.put(ORG, OrgSettings(internal_domains=("acme.example",), webhook_url="https://crm.example/h"))
        for box in ("adele", "megan"):
            address = f"{box}@acme.example"
            self.stores.mailboxes.add(Mailbox(ORG, f"mb-{box}", address, (address,), CONNECTED))
        self.app = InMemoryApp(stores=self.stores, clock=self.clock)
        self.deps = self.app.ingest_deps(events=self.events)

    def ingest(self, raw: bytes, mailbox_id: str | None = None) -> ingest.IngestResult:
        return ingest.ingest(self.deps, ORG, raw, mailbox_id)


def eml(sender: str, to: str, *, subject: str = "Hello", when: datetime | None = None, mid: str = "<m1@x>") -> bytes:
    moment = when or CONNECTED - timedelta(days=30)
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {format_datetime(moment)}\r\n"
        f"Message-ID: {mid}\r\nContent-Type: text/plain\r\n\r\nHi there.\r\n"
    ).encode()


def test_mail_received_by_a_connected_mailbox_is_seen_in_it_even_when_older_than_its_watermark() -> None:
    world = World()

    result = world.ingest(eml(DAN, "Adele <adele@acme.example>"))

    assert (result.outcome, result.mailbox_id, result.direction) == ("created", "mb-adele", "received")
    stored = world.stores.activities.get(ORG, result.activity_id or "")
    assert stored is not None and stored.mailbox_ids == ("mb-adele",)
    assert world.events.ids == [result.activity_id]


def test_mail_sent_by_a_connected_mailbox_is_sent_from_it() -> None:
    result = World().ingest(eml("megan@acme.example", DAN))

    assert (result.mailbox_id, result.direction) == ("mb-megan", "sent")


def test_mail_no_connected_mailbox_took_part_in_is_logged_at_org_level() -> None:
    world = World()

    sent = world.ingest(eml("bob@acme.example", DAN, mid="<a@x>"))
    received = world.ingest(eml(DAN, "bob@acme.example", mid="<b@x>"))

    assert (sent.mailbox_id, sent.direction) == (None, "sent")
    assert (received.mailbox_id, received.direction) == (None, "received")
    stored = world.stores.activities.get(ORG, sent.activity_id or "")
    assert stored is not None and stored.mailbox_ids == ()


def test_every_check_but_the_watermark_applies() -> None:
    world = World()

    internal = world.ingest(eml("bob@acme.example", "adele@acme.example", mid="<i@x>"))
    unmatched = world.ingest(eml("someone@else.example", "adele@acme.example", mid="<u@x>"))
    bulk = world.ingest(eml("noreply@talent.example", "adele@acme.example", mid="<n@x>"))

    assert [r.reason for r in (internal, unmatched, bulk)] == ["internal", "unmatched", "bulk"]
    assert all(r.outcome == "not_logged" and r.activity_id is None for r in (internal, unmatched, bulk))
    assert world.events.ids == []


def test_a_named_mailbox_must_exist_and_be_connected() -> None:
    world = World()
    current = world.stores.mailboxes.get(ORG, "mb-megan")
    assert current is not None
    world.stores.mailboxes.replace(
        Mailbox(ORG, "mb-megan", "megan@acme.example", (), CONNECTED, status=MailboxStatus.DISCONNECTED), current.etag
    )

    with pytest.raises(ingest.MailboxNotFound):
        world.ingest(eml(DAN, "x@acme.example"), "mb-nobody")
    with pytest.raises(ingest.MailboxDisconnected):
        world.ingest(eml(DAN, "x@acme.example"), "mb-megan")


def test_ingesting_again_and_from_another_mailbox_never_creates_a_second_activity() -> None:
    world = World()
    raw = eml(DAN, "adele@acme.example, megan@acme.example")

    first = world.ingest(raw)
    again = world.ingest(raw)
    other = world.ingest(raw, "mb-megan")

    assert [first.outcome, again.outcome, other.outcome] == ["created", "unchanged", "merged"]
    stored = world.stores.activities.get(ORG, first.activity_id or "")
    assert stored is not None and stored.mailbox_ids == ("mb-adele", "mb-megan")
    assert world.events.ids == [first.activity_id]


def test_a_message_synced_from_graph_and_then_ingested_is_one_activity_with_one_thread() -> None:
    world = World()
    when = CONNECTED + timedelta(minutes=5)
    mail = FakeMailSource()
    mail.folders_["inbox"].append(
        MailMessage(
            source_id="graph-1",
            internet_message_id="<same@talent.example>",
            subject="Same message",
            sender=EmailAddress(DAN),
            to=(EmailAddress("adele@acme.example"),),
            cc=(),
            received_at=when,
            body_text="Hi there.",
        )
    )
    s = world.stores
    deps = world.app.sync_deps(mail=mail)
    assert sync_mailbox(deps, ORG, "mb-adele").status == "done"

    result = world.ingest(eml(DAN, "adele@acme.example", when=when, mid="<same@talent.example>"))

    assert result.outcome == "unchanged"
    [activity] = s.activities.timeline(ORG, "cand-dan", None, 10).items
    assert activity.activity_id == result.activity_id and activity.mailbox_ids == ("mb-adele",)


def test_a_refused_message_changes_nothing() -> None:
    world = World()

    with pytest.raises(InvalidMessage):
        world.ingest(b"From: a\r\nX: \rinjected\r\n\r\nbody")

    assert world.stores.activities.timeline(ORG, "cand-dan", None, 10).items == ()


def test_an_html_body_over_the_html_limit_is_stored_as_its_start_and_marked_truncated() -> None:
    world = World()
    html = "<p>Start of the letter.</p>" + "<div>" * (MAX_HTML_CHARS // 5) + "<p>Never read.</p>"
    raw = eml(DAN, "adele@acme.example").replace(b"Content-Type: text/plain", b"Content-Type: text/html")
    raw = raw.replace(b"Hi there.", html.encode())

    result = world.ingest(raw)

    stored = world.stores.activities.get(ORG, result.activity_id or "")
    assert result.outcome == "created" and stored is not None
    assert stored.body_text == "Start of the letter." and stored.body_truncated
