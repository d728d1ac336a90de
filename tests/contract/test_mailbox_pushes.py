"""The ``MailboxPushes`` port, the same cases on its in-memory double and on Gmail (the Google emulator:
a real ``users.watch``, and pushes its Pub/Sub delivers, signed with its Google key, to a local receiver)."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from queue import Queue
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from emulator.google.server import GoogleEmulatorServer
from sync_core.adapters.google.http import GmailHttp
from sync_core.adapters.google.identity import GoogleIdentity
from sync_core.adapters.google.push import GmailPushes
from sync_core.domain.model import Mailbox
from sync_core.errors import InvalidNotification
from sync_core.ports.push import MailboxPushes
from sync_core.testing.push import FakeMailboxPushes

Push = tuple[str, bytes]  # (Authorization header, body)


@dataclass
class Side:
    pushes: MailboxPushes
    mailbox: Mailbox
    proven_push: Callable[[], Push]  # a push the channel delivers for the mailbox, after a change
    now: datetime
    expecting: Callable[..., MailboxPushes] | None = None  # Gmail: the same pushes expecting another sender


def mailbox(address: str) -> Mailbox:
    return Mailbox("org", "mb-1", address, (address,), datetime(2026, 1, 1, tzinfo=UTC), provider="google")


class Receiver:
    """The push endpoint, on loopback: keeps what it is sent."""

    def __init__(self) -> None:
        received: Queue[Push] = Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.put((self.headers.get("Authorization") or "", body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/google/push"


def _fake() -> Iterator[Side]:
    fake = FakeMailboxPushes()
    box = mailbox("gina@gmail.example")
    yield Side(fake, box, lambda: (f"Bearer {fake.token}", json.dumps({"address": box.address}).encode()), fake.now)


def _gmail(google: GoogleEmulatorServer) -> Iterator[Side]:
    control = requests.Session()
    control.verify, control.trust_env = str(google.ca_bundle_path), False

    def call(method: str, path: str, body: Any = None) -> dict[str, Any]:
        answer = control.request(method, f"{google.url}/_emulator/{path}", json=body, timeout=30)
        assert answer.status_code < 300, answer.text
        result: dict[str, Any] = answer.json()
        return result

    domain = f"c{uuid.uuid4().hex[:10]}.example"
    address = f"gina@{domain}"
    call("POST", "domains", {"domain": domain})
    call("POST", "users", {"email": address})
    client = call("POST", "clients", {"redirect_uris": ["https://sync.example.net/api/auth/callback"]})
    receiver = Receiver()
    topic = f"projects/contract/topics/t{uuid.uuid4().hex[:8]}"
    pusher = "push@contract.iam.gserviceaccount.com"
    defaults = call("GET", "config")
    call("PUT", "config", {"allow_http_push_endpoints": True})
    call("POST", "topics", {"topic": topic, "push_endpoint": receiver.url, "service_account_email": pusher})
    call("PUT", "config", defaults)
    session = requests.Session()
    session.verify, session.trust_env = str(google.ca_bundle_path), False
    identity = GoogleIdentity(session, client["client_id"], client["client_secret"], f"{google.url}/o/oauth2/v2/auth",
                              f"{google.url}/token", lambda _m: lambda _r: "")  # fmt: skip
    flow = identity.initiate_connect("https://sync.example.net/api/auth/callback", address)
    back = call("POST", "authorize", {"auth_uri": flow["auth_uri"], "user": address})["redirect_url"]
    token = identity.redeem_connect(flow, dict(parse_qsl(urlsplit(back).query))).access_token
    def expecting(audience: str = receiver.url, service_account: str = pusher) -> GmailPushes:
        return GmailPushes(session, lambda _m: GmailHttp(session, google.url, lambda _r: token), topic,
                           f"{google.url}/oauth2/v3/certs", audience, service_account)  # fmt: skip

    pushes = expecting()

    def proven_push() -> Push:
        call("POST", f"users/{address}/messages", {"from": "carol@client.example", "to": [address], "subject": "x"})
        return receiver.received.get(timeout=10)

    yield Side(pushes, mailbox(address), proven_push, datetime.now(UTC), expecting)
    receiver.server.shutdown()
    session.close()
    control.close()


@pytest.fixture(params=["memory", "gmail"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    if request.param == "memory":
        yield from _fake()
    else:
        yield from _gmail(request.getfixturevalue("google_emulator"))


def test_a_watch_names_its_subscription_and_lasts_about_a_week(side: Side) -> None:
    first = side.pushes.watch(side.mailbox)
    again = side.pushes.watch(side.mailbox)

    assert side.pushes.enabled
    assert again.subscription_id == first.subscription_id
    assert side.now + timedelta(days=6) < again.expires_at <= side.now + timedelta(days=7, minutes=1)


def test_a_push_the_channel_delivered_names_the_watch_of_its_mailbox(side: Side) -> None:
    created = side.pushes.watch(side.mailbox)

    authorization, body = side.proven_push()

    assert side.pushes.subscription_of(authorization, body) == created.subscription_id


def test_a_push_with_forged_credentials_or_a_body_that_is_no_push_is_refused(side: Side) -> None:
    side.pushes.watch(side.mailbox)
    authorization, body = side.proven_push()
    forged_token = base64.urlsafe_b64encode(b'{"alg":"none"}').decode() + ".e30."

    for presented, sent in [("Bearer forged", body), (f"Bearer {forged_token}", body), ("", body),
                            (authorization, b"{}"), (authorization, b"not json")]:  # fmt: skip
        with pytest.raises(InvalidNotification):
            side.pushes.subscription_of(presented, sent)


@pytest.fixture
def gmail_side(google_emulator: GoogleEmulatorServer) -> Iterator[Side]:
    yield from _gmail(google_emulator)


def test_a_push_google_signed_for_another_audience_or_sender_or_one_signed_by_another_key_is_refused(
    gmail_side: Side,
) -> None:
    assert gmail_side.expecting is not None
    gmail_side.pushes.watch(gmail_side.mailbox)
    authorization, body = gmail_side.proven_push()
    assert gmail_side.pushes.subscription_of(authorization, body)  # the genuine push is accepted

    for other in ({"audience": "https://other.example/api/google/push"},
                  {"service_account": "someone@else.iam.gserviceaccount.com"}):  # fmt: skip
        with pytest.raises(InvalidNotification):
            gmail_side.expecting(**other).subscription_of(authorization, body)
    token = authorization.partition(" ")[2]
    claims = jwt.decode(token, options={"verify_signature": False})
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, impostor, algorithm="RS256", headers={"kid": jwt.get_unverified_header(token)["kid"]})
    with pytest.raises(InvalidNotification):
        gmail_side.pushes.subscription_of(f"Bearer {forged}", body)


def test_a_stopped_watch_can_be_stopped_again(side: Side) -> None:
    side.pushes.watch(side.mailbox)

    side.pushes.stop(side.mailbox)
    side.pushes.stop(side.mailbox)
