"""A delegated Google connect runs the Microsoft connect's flow (state, confirmation, return URL) with
Google's identity: the provider is chosen per connect and carried by the stored flow to the callback."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sync_core.adapters.google.identity import READ_SCOPE, SEND_SCOPE, GoogleIdentity, id_token_claims
from sync_core.errors import InvalidRequest
from sync_core.ports.identity import DelegatedGrant, mailbox_owner
from sync_core.use_cases.connect import (
    ConnectDeps,
    ConnectProvider,
    complete_connect,
    confirm_connect,
    mailbox_id_for,
    start_connect,
)
from tests.unit.test_connect_rules import FakeIdentity, deps  # noqa: F401 (fixture)

SUB = "109876543210987654321"
PROFILE = {"id": SUB, "mail": "adele@gmail.example", "userPrincipalName": "adele@gmail.example", "proxyAddresses": []}


class FakeGoogleDirectory:
    def me(self) -> Mapping[str, Any]:
        return PROFILE

    def user(self, address: str) -> Mapping[str, Any]:
        raise AssertionError("not used by a delegated connect")

    def check_mail_access(self, user_id: str) -> None:
        return None


@pytest.fixture
def google(deps: ConnectDeps) -> ConnectDeps:  # noqa: F811
    grant = DelegatedGrant("ya29.at", "", SUB, "adele@gmail.example", '{"provider": "google", "refresh_token": "1//r"}')
    identity = FakeIdentity(grant=grant)
    return replace(
        deps, providers={"google": ConnectProvider(identity, lambda _t: FakeGoogleDirectory(), "Google", "Google")}
    )


def test_a_google_connect_confirmed_by_the_crm_creates_a_google_mailbox_with_its_grant_stored(
    google: ConnectDeps,
) -> None:
    url = start_connect(google, "org", "crm-user", None, "https://crm.example.com/app/done", "google")
    state = url.rpartition("=")[2]

    result = complete_connect(google, {"state": state, "code": "4/code"})
    assert result.ok and result.connect_code and not result.activated
    mailbox = confirm_connect(google, "org", "crm-user", result.connect_code)

    assert mailbox.provider == "google"
    assert mailbox.address == "adele@gmail.example"
    assert mailbox.mailbox_id == mailbox_id_for("org", SUB, "google") != mailbox_id_for("org", SUB)
    stored = google.tokens.get("org", mailbox_owner(mailbox.mailbox_id))
    assert stored is not None and "1//r" in stored.value


def test_a_google_connect_needs_the_same_return_url_as_a_microsoft_one(google: ConnectDeps) -> None:
    with pytest.raises(InvalidRequest) as refused:
        start_connect(google, "org", "crm-user", None, None, "google")
    assert refused.value.code == "return_url_required"


def test_an_unknown_provider_is_refused_before_any_flow_is_stored(google: ConnectDeps) -> None:
    with pytest.raises(InvalidRequest) as refused:
        start_connect(google, "org", "crm-user", None, "https://crm.example.com/app/done", "yahoo")
    assert refused.value.code == "invalid_provider"


def identity() -> GoogleIdentity:
    return GoogleIdentity(
        requests.Session(), "client-1.apps.googleusercontent.com", "secret",
        "https://accounts.google.example/o/oauth2/v2/auth", "https://oauth2.google.example/token",
        lambda _m: lambda _r: "at",
    )  # fmt: skip


def test_the_google_authorize_url_asks_offline_access_with_consent_and_pkce_s256() -> None:
    flow = identity().initiate_connect("https://sync.example.net/api/auth/callback", "adele@gmail.example")
    query = {k: v[0] for k, v in parse_qs(urlsplit(flow["auth_uri"]).query).items()}

    assert query["access_type"] == "offline"
    assert "consent" in query["prompt"].split()
    assert query["include_granted_scopes"] == "true"
    assert query["code_challenge_method"] == "S256"
    digest = hashlib.sha256(flow["code_verifier"].encode()).digest()
    assert query["code_challenge"] == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert query["state"] == flow["state"]
    assert query["login_hint"] == "adele@gmail.example"
    assert set(query["scope"].split()) == {"openid", "email", READ_SCOPE}
    assert flow["code_verifier"] not in flow["auth_uri"]


def test_the_send_scope_is_asked_for_only_when_the_org_enables_sending() -> None:
    flow = identity().initiate_connect("https://sync.example.net/api/auth/callback", None, send=True)
    scopes = parse_qs(urlsplit(flow["auth_uri"]).query)["scope"][0].split()
    assert SEND_SCOPE in scopes and READ_SCOPE in scopes


def test_an_id_token_payload_is_read_and_anything_else_is_empty() -> None:
    payload = base64.urlsafe_b64encode(b'{"sub": "1", "email": "a@b.example"}').decode().rstrip("=")
    assert id_token_claims(f"h.{payload}.s") == {"sub": "1", "email": "a@b.example"}
    assert id_token_claims("not-a-jwt") == {}
