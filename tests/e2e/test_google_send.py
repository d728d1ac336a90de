"""Sending from the CRM through Gmail mailboxes in the local Functions host: a Workspace mailbox read
and sent through the org's service account (JWT-bearer with gmail.send), the sent copy logged once and
merged with the sync's SENT copy; a delegated Gmail mailbox whose grant lacks gmail.send is refused
with what to do."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import requests

from sync_core.adapters.google.identity import READ_SCOPE, SEND_SCOPE
from tests.e2e.conftest import AppUnderTest
from tests.e2e.test_google_connect import DAN, Google, connect, set_up, timeline
from tests.e2e.test_google_connect import google as google  # noqa: PLC0414 (the fixture)
from tests.e2e.test_sync_flow import run_scheduler


def sending_on(app_host: AppUnderTest, api: requests.Session, google: Google, org: str) -> None:
    settings = {"internal_domains": [google.domain], "return_url_allow_list": ["https://crm.example/app"],
                "sending_enabled": True}  # fmt: skip
    assert api.put(app_host.url(f"orgs/{org}/settings"), json=settings).status_code == 200


def send_body(subject: str) -> dict[str, Any]:
    return {"to": [{"address": DAN, "name": "Dan"}], "subject": subject,
            "body": {"content_type": "text", "content": f"{subject}: see you Tuesday."}}  # fmt: skip


def test_a_workspace_mailbox_sends_through_the_service_account_once_and_the_sync_merges_its_sent_copy(
    app_host: AppUnderTest, api: requests.Session, google: Google, org: str
) -> None:
    set_up(app_host, api, google, org)
    sending_on(app_host, api, google, org)
    nestor = google.user("nestor")
    key = google.call("POST", "service-accounts", {"name": f"crm-{uuid.uuid4().hex[:8]}"})
    google.call("PUT", f"domains/{google.domain}/delegations/{key['client_id']}", {"scopes": [READ_SCOPE, SEND_SCOPE]})
    assert api.put(app_host.url(f"orgs/{org}/google/service-account"), json=key).status_code == 200
    mailbox = api.post(app_host.url(f"orgs/{org}/mailboxes"), json={"address": nestor, "provider": "google"}).json()

    accepted = api.post(
        app_host.url(f"orgs/{org}/mailboxes/{mailbox['id']}/messages:send"), json=send_body("Interview"),
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )  # fmt: skip
    assert accepted.status_code == 202, accepted.text
    app_host.host.drain_queues(timeout=60)

    sent = api.get(app_host.url(f"orgs/{org}/sends/{accepted.json()['id']}")).json()
    assert sent["status"] == "sent", sent
    outbox = [m for m in google.call("GET", "outbox")["messages"] if m["sender"] == nestor]
    assert [m["message_id"] for m in outbox] == [sent["internet_message_id"]]
    assert b"Interview: see you Tuesday." in base64.b64decode(outbox[0]["raw"])
    run_scheduler(app_host)  # the sync reads the SENT copy: same Message-ID, same activity
    assert timeline(app_host, api, org) == [("Interview", "Interview: see you Tuesday.", [mailbox["id"]])]


def test_a_gmail_mailbox_connected_without_the_send_permission_is_refused_with_what_to_do(
    app_host: AppUnderTest, api: requests.Session, google: Google, org: str
) -> None:
    set_up(app_host, api, google, org)
    ada = google.user("ada")
    mailbox = connect(app_host, api, google, org, ada)  # sending was off: the grant has no gmail.send
    sending_on(app_host, api, google, org)

    refused = api.post(
        app_host.url(f"orgs/{org}/mailboxes/{mailbox['id']}/messages:send"), json=send_body("Hello"),
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )  # fmt: skip

    assert refused.status_code == 409, refused.text
    assert "gmail.send" in refused.json()["error"]["message"]
    assert [m for m in google.call("GET", "outbox")["messages"] if m["sender"] == ada] == []
    assert timeline(app_host, api, org) == []
