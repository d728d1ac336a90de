"""Sending through Gmail (the Google emulator) with the real send state machine: ``messages.send`` with
the product's own RFC 822 message and Message-ID, replies threaded, the sent copy found by Message-ID and
logged once, and exactly one delivery across crashes between any provider call and its checkpoint."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from emulator.google.server import GoogleEmulatorServer
from sync_core.adapters.google.http import GmailHttp
from sync_core.adapters.google.identity import GoogleIdentity
from sync_core.adapters.google.mail import GmailMailSource
from sync_core.adapters.google.send import GmailMailSender
from sync_core.domain.model import EmailAddress, Mailbox, OrgSettings, Record, activity_id_for
from sync_core.domain.sending import Send, SendRequest, SendStatus
from sync_core.ports import Versioned
from sync_core.testing.app import InMemoryApp
from sync_core.testing.mail import FixedClock
from sync_core.testing.send import InMemorySendStore
from sync_core.use_cases import commands, send

ORG, MBX = "org-g", "mbx-gmail"
CUSTOMER = "pat@customer.example"
REDIRECT = "https://sync.example.net/api/auth/callback"


class Crash(Exception):
    """The process died: nothing after this point ran."""


class CrashingSendStore(InMemorySendStore):
    """Its ``crash_at``-th replace (from 1) dies before writing: 1 PREPARING, 2 PREPARED (after the
    prepare), 3 SUBMITTING, 4 SUBMITTED (after Gmail's send), 5 the end."""

    def __init__(self) -> None:
        super().__init__()
        self.replaces = 0
        self.crash_at = 0

    def replace(self, send: Send, etag: str) -> Versioned[Send]:
        self.replaces += 1
        if self.replaces == self.crash_at:
            raise Crash(f"killed before checkpoint {send.step.value}")
        return super().replace(send, etag)


class DiesBeforeSubmit:
    """The real sender, but the worker dies when it is about to submit (after SUBMITTING was written)."""

    def __init__(self, inner: GmailMailSender) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def submit(self, mailbox: Mailbox, handle: str) -> None:
        raise Crash("killed before the submit")


class Gmail:
    """A Workspace user connected with gmail.readonly + gmail.send, and the control API."""

    def __init__(self, google: GoogleEmulatorServer) -> None:
        self.url = google.url
        self.session = requests.Session()
        self.session.verify, self.session.trust_env = str(google.ca_bundle_path), False
        domain = f"s{uuid.uuid4().hex[:10]}.example"
        self.address = f"sam@{domain}"
        self.call("POST", "domains", {"domain": domain})
        self.call("POST", "users", {"email": self.address})
        client = self.call("POST", "clients", {"redirect_uris": [REDIRECT]})
        identity = GoogleIdentity(
            self.session, client["client_id"], client["client_secret"], f"{google.url}/o/oauth2/v2/auth",
            f"{google.url}/token", lambda _m: lambda _r: "",
        )  # fmt: skip
        flow = identity.initiate_connect(REDIRECT, self.address, send=True)
        back = self.call("POST", "authorize", {"auth_uri": flow["auth_uri"], "user": self.address})["redirect_url"]
        self.token = identity.redeem_connect(flow, dict(parse_qsl(urlsplit(back).query))).access_token

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        answer = self.session.request(method, f"{self.url}/_emulator/{path}", json=body, timeout=30)
        assert answer.status_code < 300, answer.text
        return dict(answer.json())

    def http(self, _mailbox: Mailbox) -> GmailHttp:
        return GmailHttp(self.session, self.url, lambda _r: self.token)

    def outbox(self) -> list[email.message.EmailMessage]:
        sent = [m for m in self.call("GET", "outbox")["messages"] if m["sender"] == self.address]
        return [email.message_from_bytes(base64.b64decode(m["raw"]), policy=email.policy.default) for m in sent]  # type: ignore[misc]


class World:
    def __init__(self, gmail: Gmail, store: InMemorySendStore | None = None) -> None:
        self.gmail = gmail
        self.clock = FixedClock(datetime.now(UTC))
        self.app = InMemoryApp(
            clock=self.clock, sender=GmailMailSender(gmail.http), mail=GmailMailSource(gmail.http),
            sends=store or InMemorySendStore(),
        )  # fmt: skip
        self.app.stores.settings.put(ORG, OrgSettings(sending_enabled=True))
        since = self.clock.moment - timedelta(hours=1)
        self.app.stores.mailboxes.add(Mailbox(ORG, MBX, gmail.address, (gmail.address,), since, provider="google"))
        self.app.stores.records.upsert(ORG, [Record("c-1", "contact", "Pat", (CUSTOMER,))])

    def request(self, key: str = "k-1", **fields: Any) -> send.SendRequested:
        request = SendRequest(
            to=(EmailAddress(CUSTOMER, "Pat"),), subject=fields.pop("subject", "Proposal"),
            content=fields.pop("content", "Hello Pat"), record_ids=("c-1",), **fields,
        )  # fmt: skip
        return send.request_send(self.app.send_deps(), ORG, MBX, idempotency_key=key, request=request, contents=())

    def run_queue(self) -> None:
        for _ in range(100):
            taken = [m for m in self.app.push_queue.take() if m.body.get("kind") == "send"]  # type: ignore[attr-defined]
            if not taken:
                return
            for message in taken:
                commands.dispatch(self.app, "push", json.dumps(message.body))  # type: ignore[arg-type]

    def tick(self, minutes: float) -> None:
        self.clock.moment += timedelta(minutes=minutes)
        send.release_due(self.app.send_deps())
        self.run_queue()

    def get(self, send_id: str) -> Send:
        stored = self.app.sends.get(ORG, send_id)
        assert stored is not None
        return stored.value


@pytest.fixture
def gmail(google_emulator: GoogleEmulatorServer) -> Iterator[Gmail]:
    found = Gmail(google_emulator)
    yield found
    found.session.close()


def test_a_send_goes_out_through_gmail_with_our_message_id_and_its_sent_copy_is_logged_once(gmail: Gmail) -> None:
    world = World(gmail)
    created = world.request()

    world.run_queue()

    done = world.get(created.send.send_id)
    assert done.status is SendStatus.SENT
    [sent] = gmail.outbox()
    assert sent["Message-ID"] == done.internet_message_id and sent["X-CRM-Send-Id"] == done.send_id
    assert sent["To"] == f"Pat <{CUSTOMER}>" and sent.get_content().strip() == "Hello Pat"
    world.app.sync(ORG, MBX)  # the sync reads the SENT copy: the same Message-ID, the same activity
    activities = world.app.stores.activities.timeline(ORG, "c-1", None, 10).items
    assert [(a.activity_id, a.sent_from_crm, a.send_id) for a in activities] == [
        (activity_id_for(ORG, done.internet_message_id), True, done.send_id)
    ]


def test_a_reply_joins_the_originals_thread_with_its_threading_headers(gmail: Gmail) -> None:
    world = World(gmail)
    original_id = f"<{uuid.uuid4().hex}@customer.example>"
    delivered = gmail.call("POST", f"users/{gmail.address}/messages", {
        "from": CUSTOMER, "to": [gmail.address], "subject": "Question", "body": "Any news?",
        "message_id": original_id, "received_at": datetime.now(UTC).isoformat(),
    })  # fmt: skip
    world.app.sync(ORG, MBX)
    created = world.request(subject="Re: Question", reply_to_activity_id=activity_id_for(ORG, original_id))

    world.run_queue()

    done = world.get(created.send.send_id)
    assert done.status is SendStatus.SENT
    [sent] = gmail.outbox()
    assert sent["In-Reply-To"] == original_id and original_id in sent["References"]
    copy = GmailHttp(gmail.session, gmail.url, lambda _r: gmail.token).get(
        "messages", {"q": f"rfc822msgid:{done.internet_message_id.strip('<>')}"}
    )
    assert copy["messages"][0]["threadId"] == delivered["threadId"]


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4, 5])
def test_a_crash_before_any_checkpoint_resumes_and_gmail_sends_exactly_once(gmail: Gmail, crash_at: int) -> None:
    store = CrashingSendStore()
    world = World(gmail, store)
    created = world.request()
    store.crash_at = crash_at
    with pytest.raises(Crash):
        world.run_queue()

    world.tick(minutes=6)  # the timer releases it again (the queue message died with the process)

    done = world.get(created.send.send_id)
    assert done.status is SendStatus.SENT
    [sent] = gmail.outbox()
    assert sent["Message-ID"] == done.internet_message_id
    assert len(world.app.stores.activities.timeline(ORG, "c-1", None, 10).items) == 1


def test_a_send_whose_answer_was_lost_is_found_in_sent_and_not_sent_again(gmail: Gmail) -> None:
    store = CrashingSendStore()
    world = World(gmail, store)
    created = world.request()
    store.crash_at = 4  # Gmail sent it; the worker died before writing SUBMITTED
    with pytest.raises(Crash):
        world.run_queue()
    world.app.sender = GmailMailSender(gmail.http)  # another worker: nothing of the first one's memory

    world.tick(minutes=6)

    assert world.get(created.send.send_id).status is SendStatus.SENT
    assert len(gmail.outbox()) == 1


@pytest.mark.parametrize("dies", ["after_prepare", "before_send"])
def test_a_worker_that_died_between_prepare_and_send_is_resumed_with_the_same_message_sent_once(
    gmail: Gmail, dies: str
) -> None:
    store = CrashingSendStore()
    world = World(gmail, store)
    created = world.request()
    if dies == "after_prepare":
        store.crash_at = 3  # PREPARED written (the MIME in the worker's memory), SUBMITTING not
    else:
        world.app.sender = DiesBeforeSubmit(GmailMailSender(gmail.http))  # SUBMITTING written, no send
    with pytest.raises(Crash):
        world.run_queue()
    assert gmail.outbox() == []
    world.app.sender = GmailMailSender(gmail.http)  # another worker: nothing of the first one's memory

    world.tick(minutes=6)

    done = world.get(created.send.send_id)
    assert done.status is SendStatus.SENT, done.error
    [sent] = gmail.outbox()
    assert sent["Message-ID"] == done.internet_message_id == f"<crm.{done.send_id}@{gmail.address.split('@')[1]}>"
    assert sent["Date"].datetime == done.created_at.replace(microsecond=0)
    assert len(world.app.stores.activities.timeline(ORG, "c-1", None, 10).items) == 1
