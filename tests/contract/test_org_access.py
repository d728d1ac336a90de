"""The ``OrgAccess`` port, the same cases on its in-memory double and on Google (the Google emulator: a
real service account key file, JWT-bearer token requests, the Workspace admin's domain-wide delegation
and ``users.getProfile`` with the impersonated token)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulator.google.server import GoogleEmulatorServer
from sync_core.adapters.google.identity import READ_SCOPE, SEND_SCOPE
from sync_core.adapters.google.service_account import GoogleOrgAccess
from sync_core.errors import IdentityError, InvalidRequest, ReauthRequired
from sync_core.ports.identity import OrgAccess
from sync_core.testing.auth import FakeOrgAccess


@dataclass
class Side:
    access: OrgAccess
    key: dict[str, Any]  # a valid credential, as uploaded
    forged: dict[str, Any]  # well-formed, but the provider refuses its signature
    user: str  # an address the delegation covers
    outsider: str  # an address the provider does not know
    undelegate: Callable[[], None]  # the admin removes the delegation


def _fake() -> Iterator[Side]:
    access = FakeOrgAccess(users=("nestor@tailspin.example",))
    key = {"type": "service_account", "client_email": "sync@p.iam.gserviceaccount.com", "secret": "k"}

    def undelegate() -> None:
        access.delegated = False

    yield Side(access, key, {**key, "secret": "revoked"}, "nestor@tailspin.example", "x@nowhere.example", undelegate)


def _google(google: GoogleEmulatorServer) -> Iterator[Side]:
    control = requests.Session()
    control.verify, control.trust_env = str(google.ca_bundle_path), False

    def call(method: str, path: str, body: Any = None) -> dict[str, Any]:
        answer = control.request(method, f"{google.url}/_emulator/{path}", json=body, timeout=30)
        assert answer.status_code < 300, answer.text
        return dict(answer.json()) if answer.content else {}

    domain = f"w{uuid.uuid4().hex[:10]}.example"
    user = f"nestor@{domain}"
    call("POST", "domains", {"domain": domain})
    call("POST", "users", {"email": user})
    key = call("POST", "service-accounts", {"name": f"sync-{uuid.uuid4().hex[:8]}"})
    delegation = f"domains/{domain}/delegations/{key['client_id']}"
    call("PUT", delegation, {"scopes": [READ_SCOPE, SEND_SCOPE]})
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    session = requests.Session()
    session.verify, session.trust_env = str(google.ca_bundle_path), False
    access = GoogleOrgAccess(session, f"{google.url}/token", google.url)
    yield Side(
        access, key, {**key, "private_key": pem}, user, f"ghost@{domain}", lambda: call("DELETE", delegation)
    )  # fmt: skip
    session.close()
    control.close()


@pytest.fixture(params=["memory", "google"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    if request.param == "memory":
        yield from _fake()
    else:
        yield from _google(request.getfixturevalue("google_emulator"))


def test_a_valid_key_is_accepted_and_its_description_never_holds_the_secret(side: Side) -> None:
    stored, description = side.access.validate(side.key)

    assert description == side.access.describe(stored)
    assert description["client_email"] == side.key["client_email"]
    secret = side.key.get("private_key") or side.key["secret"]
    assert secret not in json.dumps(description)


def test_a_credential_that_is_not_a_service_account_key_is_an_invalid_request(side: Side) -> None:
    for wrong in ({}, {"type": "authorized_user", "client_email": "a@b"}, {**side.key, "type": "external_account"}):
        with pytest.raises(InvalidRequest) as refused:
            side.access.validate(wrong)
        assert refused.value.code == "invalid_service_account_key"


def test_a_key_whose_signature_the_provider_refuses_is_a_grant_failure(side: Side) -> None:
    with pytest.raises(ReauthRequired) as refused:
        side.access.validate(side.forged)
    assert "invalid_grant" in str(refused.value)


def test_a_delegated_user_is_read_through_the_key(side: Side) -> None:
    stored, _ = side.access.validate(side.key)

    profile = side.access.mailbox_profile(stored, side.user, True)

    assert profile["mail"] == side.user and profile["id"]


def test_an_unknown_user_is_a_grant_failure(side: Side) -> None:
    stored, _ = side.access.validate(side.key)
    with pytest.raises(ReauthRequired) as refused:
        side.access.mailbox_profile(stored, side.outsider, False)
    assert "invalid_grant" in str(refused.value) and side.outsider not in str(refused.value)


def test_scopes_the_admin_did_not_delegate_are_a_configuration_failure_naming_it(side: Side) -> None:
    stored, _ = side.access.validate(side.key)
    side.undelegate()
    with pytest.raises(IdentityError) as refused:
        side.access.mailbox_profile(stored, side.user, False)
    assert "unauthorized_client" in str(refused.value)
