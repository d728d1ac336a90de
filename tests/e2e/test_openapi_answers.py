"""Every documented operation, called through the running function_app, answers what the OpenAPI document
says: one CRM integration from settings to disconnect (the sequence of docs/crm-integration.md), each
success answer validated against the schema the document gives for its status and media type.

The unit test ``tests/unit/test_openapi_examples.py`` checks the document's examples against the same
schemas, so an example that drifts from the real answers fails there, and a real answer that drifts from
the schema fails here.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from emulator.client import EmulatorClient, EmulatorTenant
from emulator.google.server import GoogleEmulatorServer
from sync_core.api.openapi import DOCUMENT_PATH
from tests import connect_flow
from tests.e2e.conftest import AppUnderTest
from tests.e2e.test_google_connect import Google, signed_push
from tests.e2e.test_ingest import MIME, message
from tests.e2e.test_push import SUBSCRIPTION_TIMER, Receiver, receiver, wait_for
from tests.e2e.test_sync_flow import DAN, RETURN_URL, STRANGER, run_scheduler
from tests.openapi_schemas import operations, response_schema_problems, schema_problems

__all__ = ["receiver"]  # the fixture


class Calls:
    """The answers gathered, keyed by operationId, validated together at the end; any 4xx/5xx fails at once."""

    def __init__(self) -> None:
        self.answers: dict[str, list[requests.Response]] = {}

    def record(self, operation: str, response: requests.Response) -> requests.Response:
        assert response.status_code < 400, f"{operation}: {response.status_code} {response.text[:300]}"
        self.answers.setdefault(operation, []).append(response)
        return response


def operation_of(document: dict[str, Any], method: str, url: str) -> str:
    path = "/" + url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
    for template, item in document["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return str(item[method.lower()]["operationId"])
    raise AssertionError(f"no documented operation for {method} {path}")


def test_every_operation_answers_what_the_document_says_through_the_running_app(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    *,
    org: str,
    receiver: Receiver,
    google_emulator: GoogleEmulatorServer,
) -> None:
    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    calls = Calls()

    def call(method: str, path: str, session: Any = api, **kwargs: Any) -> requests.Response:
        url = app_host.url(path)
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("allow_redirects", False)
        return calls.record(operation_of(document, method, url), session.request(method, url, **kwargs))

    emulator_client.configure(allow_http_notification_urls=True)
    adele, sales = tenant.users["adele"], tenant.users["sales"]
    call("GET", "health", requests)
    call("GET", "openapi.json", requests)

    settings = {
        "internal_domains": [tenant.domain],
        "return_url_allow_list": ["https://crm.example/app"],
        "webhook_url": receiver.url,
        "sending_enabled": True,  # connect asks for sending; the admin's consent must grant it too
    }
    emulator_client.set_app_roles(app_host.client_id, ["Mail.Read", "Mail.ReadWrite", "Mail.Send", "User.Read.All"])
    call("PUT", f"orgs/{org}/settings", json=settings)
    call("GET", f"orgs/{org}/settings")
    call("PUT", f"orgs/{org}/records/cand-dan", json={"type": "candidate", "name": "Dan", "emails": [DAN]})
    call("GET", f"orgs/{org}/records/cand-dan")
    batch = {
        "upsert": [{"id": "lead-erin", "type": "lead", "name": "Erin", "emails": ["erin@prospect.example"]}],
        "delete": ["lead-old"],
    }
    call("POST", f"orgs/{org}/records:batch", json=batch)
    call("PUT", f"orgs/{org}/records/lead-old", json={"type": "lead", "name": "Old", "emails": []})
    call("DELETE", f"orgs/{org}/records/lead-old")
    call("POST", f"orgs/{org}/webhooks/secret")

    # Delegated connect: the CRM asks for the URL, the user signs in, the browser comes back, the CRM confirms.
    body = {"user_id": "crm-user-1", "login_hint": adele.upn, "return_url": RETURN_URL}
    started = call("POST", f"orgs/{org}/mailboxes/connect", json=body)
    callback = emulator_client.authorize(started.json()["authorize_url"], adele.upn)
    returned = call("GET", callback.split("/api/", 1)[1], requests)
    code = connect_flow.query_of(returned.headers["Location"])["connect_code"]
    confirmed = call("POST", f"orgs/{org}/mailboxes/connect:confirm", json={"user_id": "crm-user-1", "code": code})
    mailbox_id = confirmed.json()["id"]

    # Admin consent, then a shared mailbox in application mode.
    consent = call("GET", f"orgs/{org}/admin-consent", params={"tenant": tenant.id})
    signed_in = emulator_client.authorize(consent.json()["consent_url"], tenant.users["megan"].upn)
    step = call("GET", signed_in.split("/api/", 1)[1], requests)
    consented = emulator_client.admin_consent(step.headers["Location"], tenant.users["megan"].upn, True)
    call("GET", consented.split("/api/", 1)[1], requests)
    emulator_client.set_app_roles(app_host.client_id, ["Mail.Read", "User.Read.All"])  # the consent keeps its roles
    call("POST", f"orgs/{org}/mailboxes", json={"address": sales.mail})
    # Google Workspace: the org's service account, then a Gmail mailbox added by address through it.
    workspace = Google(google_emulator)
    key = workspace.call("POST", "service-accounts", {"name": f"sync-{uuid.uuid4().hex[:8]}"})
    scopes = {"scopes": [f"https://www.googleapis.com/auth/gmail.{s}" for s in ("readonly", "send")]}  # it sends
    workspace.call("PUT", f"domains/{workspace.domain}/delegations/{key['client_id']}", scopes)
    call("PUT", f"orgs/{org}/google/service-account", json=key)
    call("GET", f"orgs/{org}/google/service-account")
    call("POST", f"orgs/{org}/mailboxes", json={"address": workspace.user("nestor"), "provider": "google"})

    run_scheduler(app_host)
    app_host.host.trigger_timer(SUBSCRIPTION_TIMER)
    mail = emulator_client.deliver(
        adele.upn, from_=f"Dan Candidate <{DAN}>", to=[adele.mail], cc=[STRANGER], subject="Interview on Tuesday",
        body="<p>Hello Adele, does <b>Tuesday</b> work?</p>",
        attachments=[{"name": "cv.pdf", "content_type": "application/pdf", "size": 48213}],
    )  # fmt: skip
    queued = call("POST", f"orgs/{org}/mailboxes/{mailbox_id}/sync")
    app_host.host.drain_queues(timeout=30)
    call("GET", f"orgs/{org}/mailboxes/{mailbox_id}/runs/{queued.json()['run_id']}")
    call("POST", f"orgs/{org}/mailboxes/{mailbox_id}/backfill", json={"days": 7, "dry_run": True})
    call("POST", f"orgs/{org}/mailboxes/{mailbox_id}/backfill", json={"days": 7})
    app_host.host.drain_queues(timeout=30)
    preview = {"settings": {"never_log": [DAN]}, "mailbox_id": mailbox_id, "days": 7}
    call("POST", f"orgs/{org}/settings:preview", json=preview)
    call("GET", f"orgs/{org}/records/cand-dan/backfill")
    wait_for(lambda: receiver.hits, timeout=30)

    call("GET", f"orgs/{org}/mailboxes")
    call("GET", f"orgs/{org}/mailboxes/{mailbox_id}")
    call("PATCH", f"orgs/{org}/mailboxes/{mailbox_id}", json={"directions": "both", "enabled": True})
    call("GET", f"orgs/{org}/mailboxes/{mailbox_id}/runs", params={"limit": 2})
    call("POST", f"orgs/{org}/mailboxes/{mailbox_id}/explain", json={"internet_message_id": mail["internetMessageId"]})
    timeline = call("GET", f"orgs/{org}/records/cand-dan/activities")
    call("GET", f"orgs/{org}/records/cand-dan/activities", params={"view": "threads"})
    activity_id = timeline.json()["activities"][0]["id"]
    call("GET", f"orgs/{org}/activities/{activity_id}")
    # Sending: a message to Dan logged on his record, a send's status and the mailbox's sends, a cancel.
    send = {"to": [DAN], "subject": "Tuesday works", "body": {"content": "See you."}, "record_ids": ["cand-dan"]}
    accepted = call("POST", f"orgs/{org}/mailboxes/{mailbox_id}/messages:send", json=send,
                    headers={"Idempotency-Key": "answers-1"})  # fmt: skip
    app_host.host.drain_queues(timeout=30)
    call("GET", f"orgs/{org}/sends/{accepted.json()['id']}")
    later = {**send, "subject": "Later"}
    scheduled = call("POST", f"orgs/{org}/mailboxes/{mailbox_id}/messages:send",
                     json={**later, "send_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()},
                     headers={"Idempotency-Key": "answers-2"})  # fmt: skip
    call("DELETE", f"orgs/{org}/sends/{scheduled.json()['id']}")
    call("GET", f"orgs/{org}/mailboxes/{mailbox_id}/sends", params={"limit": 5})

    wait_for(lambda: api.get(app_host.url(f"orgs/{org}/webhooks/deliveries")).json()["deliveries"])
    call("GET", f"orgs/{org}/webhooks/deliveries")
    call("GET", f"orgs/{org}/subscriptions")

    # Push: Graph's validation handshake and an (unknown) notification; RFC 822 ingest.
    token = "Validation: Testing client application reachability for subscription Request-Id: " + str(uuid.uuid4())
    for path in ("notifications", "notifications/lifecycle"):
        call("POST", f"{path}?validationToken={requests.utils.quote(token)}", requests)
        note = {"subscriptionId": str(uuid.uuid4()), "clientState": "x", "changeType": "created",
                "resource": "Users/x/Messages/y", "tenantId": tenant.id}  # fmt: skip
        if path.endswith("lifecycle"):
            note = {**note, "lifecycleEvent": "reauthorizationRequired"}
        call("POST", path, requests, json={"value": [note]})
    # A Gmail push, signed as Pub/Sub signs it for this deployment (it names no watched mailbox: 204 all the same).
    authorization, pushed = signed_push(Google(google_emulator), app_host.url("google/push"))
    call("POST", "google/push", requests, data=pushed,
         headers={"Authorization": authorization, "Content-Type": "application/json"})  # fmt: skip
    raw = message(to=f"Sam <sam@{tenant.domain}>", when=None, subject="Uploaded")
    call("POST", f"orgs/{org}/messages:ingest", data=raw, headers=MIME)

    call("DELETE", f"orgs/{org}/activities/{activity_id}")
    call("DELETE", f"orgs/{org}/google/service-account")
    call("POST", f"orgs/{org}/mailboxes:sign-out-all")
    call("DELETE", f"orgs/{org}/mailboxes/{mailbox_id}")
    app_host.host.drain_queues(timeout=30)

    problems = [
        problem
        for operation, answers in calls.answers.items()
        for answer in answers
        for problem in response_schema_problems(document, operation, answer)
    ]
    assert not problems, "\n".join(problems)
    assert set(calls.answers) == {op["operationId"] for op in operations(document)}
    event_schema = {"$ref": "#/components/schemas/WebhookEvent"}
    events = [schema_problems(document, event_schema, json.loads(body)) for _, body in receiver.hits]
    assert events and not any(events), events


def test_a_request_without_the_function_key_gets_the_documented_401(app_host: AppUnderTest, org: str) -> None:
    """The local host's 401 body is the example the document shows (Azure's host sends none)."""
    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    unauthorized = document["components"]["responses"]["Unauthorized"]["content"]["application/json"]

    response = requests.get(app_host.url(f"orgs/{org}/settings"), timeout=10)

    assert response.status_code == 401
    assert response.json() == unauthorized["examples"]["local_host"]["value"]
