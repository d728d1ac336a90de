"""A delegated Gmail mailbox's grant is revoked at Google's revocation endpoint (the Google emulator) on
disconnect: best effort, never raising, never needing more than the stored grant."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from emulator.google.server import GoogleEmulatorServer
from sync_core.adapters.google.identity import GoogleIdentity
from sync_core.adapters.google.tokens import GoogleTokenSource, revoke_grant
from sync_core.auth.crypto import TokenCipher
from sync_core.domain.model import Mailbox
from sync_core.errors import ReauthRequired
from sync_core.ports.identity import mailbox_owner
from sync_core.testing.auth import MemoryTokenCacheStore

REDIRECT = "https://sync.example.net/api/auth/callback"


class Connected:
    def __init__(self, google: GoogleEmulatorServer) -> None:
        self.url = google.url
        self.session = requests.Session()
        self.session.verify, self.session.trust_env = str(google.ca_bundle_path), False
        domain = f"r{uuid.uuid4().hex[:10]}.example"
        self.address = f"rita@{domain}"
        self.call("POST", "domains", {"domain": domain})
        self.call("POST", "users", {"email": self.address})
        client = self.call("POST", "clients", {"redirect_uris": [REDIRECT]})
        self.client = client
        identity = GoogleIdentity(
            self.session, client["client_id"], client["client_secret"], f"{google.url}/o/oauth2/v2/auth",
            f"{google.url}/token", lambda _m: lambda _r: "",
        )  # fmt: skip
        flow = identity.initiate_connect(REDIRECT, self.address)
        back = self.call("POST", "authorize", {"auth_uri": flow["auth_uri"], "user": self.address})["redirect_url"]
        grant = identity.redeem_connect(flow, dict(parse_qsl(urlsplit(back).query)))
        self.store = MemoryTokenCacheStore(TokenCipher.from_setting(TokenCipher.generate_setting()))
        self.mailbox = Mailbox("org", "mbx_rita", self.address, (self.address,), datetime.now(UTC), provider="google")
        self.store.put("org", mailbox_owner(self.mailbox.mailbox_id), grant.serialized_cache, None)

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        answer = self.session.request(method, f"{self.url}/_emulator/{path}", json=body, timeout=30)
        assert answer.status_code < 300, answer.text
        return dict(answer.json())

    def refresh(self) -> str:
        source = GoogleTokenSource(self.session, f"{self.url}/token", self.client["client_id"],
                                   self.client["client_secret"], self.store, self.mailbox)  # fmt: skip
        return source(True)


@pytest.fixture
def connected(google_emulator: GoogleEmulatorServer) -> Iterator[Connected]:
    found = Connected(google_emulator)
    yield found
    found.session.close()


def test_revoking_kills_the_refresh_token_at_google(connected: Connected) -> None:
    assert connected.refresh()

    assert revoke_grant(connected.session, f"{connected.url}/revoke", connected.store, connected.mailbox)

    with pytest.raises(ReauthRequired, match="invalid_grant"):
        connected.refresh()
    assert connected.call("POST", "grants/revoke", {"user": connected.address})["revoked"] == 0  # gone already


def test_a_revocation_google_refuses_or_cannot_take_is_reported_false_never_raised(connected: Connected) -> None:
    revoke_url = f"{connected.url}/revoke"
    assert revoke_grant(connected.session, revoke_url, connected.store, connected.mailbox)

    assert not revoke_grant(connected.session, revoke_url, connected.store, connected.mailbox)  # 400 invalid_token
    assert not revoke_grant(connected.session, "https://127.0.0.1:9/revoke", connected.store, connected.mailbox)
    connected.store.delete("org", mailbox_owner(connected.mailbox.mailbox_id))
    assert not revoke_grant(connected.session, revoke_url, connected.store, connected.mailbox)  # nothing stored
