"""``MailSource.complete``: the same cases on the in-memory double and on ``ImapMailSource`` against the
real Dovecot (the Graph source returns its messages as given: its delta pages carry bodies already)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from sync_core.adapters.imap.mail import ImapMailSource
from sync_core.domain.model import EmailAddress, Mailbox, MailMessage
from sync_core.ports import MailSource
from sync_core.testing.mail import FakeMailSource
from tests.integration.imap_world import ImapWorld

SINCE = datetime.now(UTC) - timedelta(hours=1)


@dataclass
class Case:
    source: MailSource
    mailbox: Mailbox
    deliver: Callable[[str, str], None]  # (subject, body)


@pytest.fixture(params=["fake", "imap"])
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    if request.param == "fake":
        fake = FakeMailSource(page_size=50)
        mailbox = Mailbox("org", "mb", "ann@test.example", ("ann@test.example",), watermark=SINCE)

        def deliver_fake(subject: str, body: str) -> None:
            fake.deliver(MailMessage(
                f"id-{uuid.uuid4().hex}", f"<{uuid.uuid4().hex}@test.example>", subject,
                EmailAddress("carol@client.example"), (EmailAddress("ann@test.example"),), (),
                received_at=datetime.now(UTC), body_text=body,
            ))  # fmt: skip

        yield Case(fake, mailbox, deliver_fake)
        return
    world = ImapWorld(request.getfixturevalue("mail_server"))
    address = world.address("adele")
    mailbox = Mailbox("org", "mb", address, (address,), watermark=SINCE, provider="imap")
    source = ImapMailSource(world.account_for, world.limits())

    def deliver_imap(subject: str, body: str) -> None:
        world.deliver("adele", subject=subject, body=body, from_="carol@client.example", to=[address])

    yield Case(source, mailbox, deliver_imap)
    source.close()
    world.close()


def listed(case: Case) -> list[MailMessage]:
    page = case.source.delta(case.mailbox, "inbox", None, SINCE)
    return list(page.messages)


def test_completed_messages_come_back_in_order_with_their_bodies(case: Case) -> None:
    for k in range(3):
        case.deliver(f"Message {k}", f"body number {k}")
    messages = listed(case)

    whole = case.source.complete(case.mailbox, list(reversed(messages)))

    assert [m.internet_message_id for m in whole] == [m.internet_message_id for m in reversed(messages)]
    assert [m.body_text for m in whole] == [f"body number {k}" for k in (2, 1, 0)]
    assert [m.subject for m in whole] == [f"Message {k}" for k in (2, 1, 0)]


def test_a_message_the_source_does_not_know_comes_back_as_given(case: Case) -> None:
    case.deliver("Known", "known body")
    known = listed(case)[0]
    stranger = replace(known, source_id="elsewhere:1", internet_message_id="<stranger@x.example>", body_text="as is")

    whole = case.source.complete(case.mailbox, [stranger])

    assert whole == [stranger]


def test_nothing_to_complete_is_an_empty_answer(case: Case) -> None:
    assert list(case.source.complete(case.mailbox, [])) == []

