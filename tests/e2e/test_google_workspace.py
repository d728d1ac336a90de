"""Google Workspace org-wide access through the running function_app: the org's admin uploads a service
account key (the Workspace admin delegated the Gmail scopes to its client id on the Google emulator),
mailboxes are added by address, the minute timer syncs them with JWT-bearer tokens for each mailbox,
and removing the key holds them until it is uploaded again."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import requests

from sync_core.adapters.google.identity import READ_SCOPE
from tests.e2e.conftest import AppUnderTest
from tests.e2e.test_google_connect import DAN, Google, set_up, timeline
from tests.e2e.test_google_connect import google as google  # noqa: PLC0414 (the fixture)
from tests.e2e.test_sync_flow import run_scheduler


def service_account(google: Google, scopes: list[str]) -> dict[str, Any]:
    """A service account's key file, and the Workspace admin's delegation of ``scopes`` to it."""
    key = google.call("POST", "service-accounts", {"name": f"crm-{uuid.uuid4().hex[:8]}"})
    if scopes:
        google.call("PUT", f"domains/{google.domain}/delegations/{key['client_id']}", {"scopes": scopes})
    return key


def test_a_workspace_service_account_adds_mailboxes_by_address_and_the_timer_syncs_them(
    app_host: AppUnderTest, api: requests.Session, google: Google, org: str
) -> None:
    set_up(app_host, api, google, org)
    nestor = google.user("nestor")
    key = service_account(google, [READ_SCOPE])
    route = app_host.url(f"orgs/{org}/google/service-account")

    missing = api.post(app_host.url(f"orgs/{org}/mailboxes"), json={"address": nestor, "provider": "google"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (409, "service_account_required")
    uploaded = api.put(route, json=key)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["service_account"]["client_email"] == key["client_email"]
    assert key["private_key"] not in uploaded.text and key["private_key"] not in api.get(route).text
    added = api.post(app_host.url(f"orgs/{org}/mailboxes"), json={"address": nestor, "provider": "google"})
    assert added.status_code == 201, added.text
    mailbox = added.json()
    assert (mailbox["provider"], mailbox["mode"], mailbox["status"]) == ("google", "application", "active")

    now = datetime.now(UTC).isoformat()
    message = {"from": DAN, "to": [nestor], "subject": "Interview", "body": "Tuesday works.", "received_at": now}
    google.call("POST", f"users/{nestor}/messages", message)
    run_scheduler(app_host)

    assert timeline(app_host, api, org) == [("Interview", "Tuesday works.", [mailbox["id"]])]


def test_removing_the_service_account_holds_its_mailboxes_until_it_is_uploaded_again(
    app_host: AppUnderTest, api: requests.Session, google: Google, org: str
) -> None:
    set_up(app_host, api, google, org)
    lidia = google.user("lidia")
    key = service_account(google, [READ_SCOPE])
    route = app_host.url(f"orgs/{org}/google/service-account")
    assert api.put(route, json=key).status_code == 200
    mailbox = api.post(app_host.url(f"orgs/{org}/mailboxes"), json={"address": lidia, "provider": "google"}).json()
    mailbox_url = app_host.url(f"orgs/{org}/mailboxes/{mailbox['id']}")

    removed = api.delete(route)
    assert (removed.status_code, removed.json()) == (200, {"held": 1})
    assert api.get(route).status_code == 404
    held = api.get(mailbox_url).json()
    assert held["status"] == "needs_reauth" and "service account was removed" in held["status_reason"]

    again = api.put(route, json=key)
    assert (again.status_code, again.json()["resumed"]) == (200, [mailbox["id"]])
    assert api.get(mailbox_url).json()["status"] == "active"


def test_an_undelegated_scope_or_a_bad_key_is_refused_with_the_reason(
    app_host: AppUnderTest, api: requests.Session, google: Google, org: str
) -> None:
    set_up(app_host, api, google, org)
    ines = google.user("ines")
    key = service_account(google, [])  # the Workspace admin delegated nothing yet
    route = app_host.url(f"orgs/{org}/google/service-account")

    bad = api.put(route, json={**key, "private_key": "not a key"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_service_account_key")
    assert "not a key" not in bad.text
    assert api.put(route, json=key).status_code == 200
    refused = api.post(app_host.url(f"orgs/{org}/mailboxes"), json={"address": ines, "provider": "google"})

    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "delegation_refused")
    assert "unauthorized_client" in refused.json()["error"]["message"]
    assert key["client_id"] in refused.json()["error"]["message"]
    assert json.loads(api.get(app_host.url(f"orgs/{org}/mailboxes")).text)["mailboxes"] == []


def test_a_delegation_the_workspace_admin_withdrew_holds_the_mailbox_in_error_with_the_reason(
    app_host: AppUnderTest, api: requests.Session, google: Google, org: str
) -> None:
    set_up(app_host, api, google, org)
    omar = google.user("omar")
    key = service_account(google, [READ_SCOPE])
    assert api.put(app_host.url(f"orgs/{org}/google/service-account"), json=key).status_code == 200
    added = api.post(app_host.url(f"orgs/{org}/mailboxes"), json={"address": omar, "provider": "google"}).json()

    google.call("DELETE", f"domains/{google.domain}/delegations/{key['client_id']}")
    google.call("POST", "tokens/expire", {"user": omar})  # the access token in hand runs out
    run_scheduler(app_host)

    mailbox = api.get(app_host.url(f"orgs/{org}/mailboxes/{added['id']}")).json()
    assert mailbox["status"] == "error"
    assert "unauthorized_client" in mailbox["status_reason"] and key["client_id"] in mailbox["status_reason"]
    assert mailbox["last_error"]["class"] == "configuration"
