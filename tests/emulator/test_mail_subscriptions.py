"""Change-notification subscriptions of the Graph emulator, against a real local webhook (facts §5).

The webhook is a small HTTPS server run by the test (a throwaway trustme certificate: the emulator does
not verify certificates of loopback endpoints); one test uses plain HTTP behind the emulator setting.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import trustme

from emulator.client import EmulatorClient, EmulatorTenant

# The emulator does not verify loopback webhooks' certificates; urllib3 says so on every call.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


@dataclass
class Hit:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Webhook:
    """A notification endpoint that records every request; behaviour is set per test."""

    base_url: str = ""
    hits: list[Hit] = field(default_factory=list)
    validation: str = "echo"  # echo | wrong-token | status-500
    statuses: list[int] = field(default_factory=list)  # answers to notifications, then 202
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/notifications") -> str:
        return self.base_url + path

    def notifications(self, path: str = "/notifications") -> list[dict[str, Any]]:
        with self.lock:
            return [hit.json() for hit in self.hits if hit.path == path and "validationToken" not in hit.query]

    def validations(self) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.hits if "validationToken" in hit.query]


def _handler(hook: Webhook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hit = Hit(url.path, parse_qs(url.query), dict(self.headers.items()), body)
            with hook.lock:
                hook.hits.append(hit)
            if "validationToken" in hit.query:
                token = hit.query["validationToken"][0]
                if hook.validation == "status-500":
                    self._answer(500, b"")
                else:
                    self._answer(200, (token if hook.validation == "echo" else "not-the-token").encode())
                return
            time.sleep(hook.delay)
            with hook.lock:
                status = hook.statuses.pop(0) if hook.statuses else 202
            self._answer(status, b"")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def certificate() -> trustme.LeafCert:
    return trustme.CA().issue_cert("127.0.0.1", "localhost")


def _serve(hook: Webhook, context: ssl.SSLContext | None) -> Iterator[Webhook]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hook))
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    hook.base_url = f"{'https' if context else 'http'}://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook(certificate: trustme.LeafCert) -> Iterator[Webhook]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certificate.configure_cert(context)
    yield from _serve(Webhook(), context)


@pytest.fixture
def http_webhook() -> Iterator[Webhook]:
    yield from _serve(Webhook(), None)


def in_minutes(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def subscribe(
    tenant: EmulatorTenant, token: str, webhook: Webhook, prefer: str | None = None, **overrides: Any
) -> requests.Response:
    body = {
        "changeType": "created,updated,deleted",
        "notificationUrl": webhook.url(),
        "lifecycleNotificationUrl": webhook.url("/lifecycle"),
        "resource": "me/mailFolders('inbox')/messages",
        "expirationDateTime": in_minutes(60),
        "clientState": "secret-client-state",
        **overrides,
    }
    headers = {"Prefer": prefer} if prefer else {}
    return tenant.graph("POST", "/subscriptions", token, json=body, headers=headers)


def wait_for(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def notifications(webhook: Webhook, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` notifications arrived; their payloads."""
    return list(wait_for(lambda: (found := webhook.notifications()) and len(found) >= count and found))


# -- creation and validation -----------------------------------------------------------------------


def test_creating_a_subscription_validates_both_urls_and_answers_201(
    tenant: EmulatorTenant, webhook: Webhook, token: str, adele: str
) -> None:
    answer = subscribe(tenant, token, webhook)

    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["@odata.context"] == f"{tenant.graph_url}/$metadata#subscriptions/$entity"
    assert created["resource"] == "me/mailFolders('inbox')/messages"
    assert created["changeType"] == "created,updated,deleted"
    assert created["clientState"] == "secret-client-state"
    assert created["notificationUrl"] == webhook.url()
    assert created["lifecycleNotificationUrl"] == webhook.url("/lifecycle")
    assert created["applicationId"] == tenant.app.client_id
    assert created["creatorId"] == adele
    assert created["notificationUrlAppId"] is None
    assert created["latestSupportedTlsVersion"] == "v1_2"
    assert created["expirationDateTime"].endswith("Z")
    validations = webhook.validations()
    assert [hit.path for hit in validations] == ["/notifications", "/lifecycle"]
    assert validations[0].headers["Content-Type"] == "text/plain; charset=utf-8"
    assert validations[0].query["validationToken"][0].startswith("Validation: Testing client application")


@pytest.mark.parametrize("mode", ["wrong-token", "status-500"])
def test_a_failed_handshake_refuses_the_subscription(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, webhook: Webhook, token: str, mode: str
) -> None:
    webhook.validation = mode

    answer = subscribe(tenant, token, webhook)
    adele = tenant.users["adele"].id

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "ValidationError"
    assert error["message"].startswith("Subscription validation request failed.")
    assert not [s for s in emulator_client.list_subscriptions() if s["mailboxId"] == adele]


def test_an_unreachable_endpoint_refuses_the_subscription(tenant: EmulatorTenant, token: str) -> None:
    nowhere = Webhook(base_url="https://127.0.0.1:9")

    answer = subscribe(tenant, token, nowhere)

    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith("Subscription validation request failed.")


def test_http_notification_urls_need_the_emulator_setting(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, http_webhook: Webhook, token: str
) -> None:
    refused = subscribe(tenant, token, http_webhook)
    emulator_client.configure(allow_http_notification_urls=True)
    accepted = subscribe(tenant, token, http_webhook)

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "ValidationError"
    assert accepted.status_code == 201


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"clientState": "x" * 129}, "ValidationError"),
        ({"expirationDateTime": -5}, "InvalidRequest"),
        ({"expirationDateTime": 10_081}, "ExtensionError"),
        ({"expirationDateTime": "next tuesday"}, "InvalidRequest"),
        ({"changeType": "created,moved"}, "InvalidRequest"),
        ({"resource": "me/events"}, "InvalidRequest"),
        ({"resource": None}, "InvalidRequest"),
    ],
)
def test_invalid_subscriptions_are_rejected(
    tenant: EmulatorTenant, webhook: Webhook, token: str, override: dict[str, Any], code: str
) -> None:
    # Expiry offsets become timestamps now, not at collection: a run can start minutes after collecting.
    fields = {k: in_minutes(v) if isinstance(v, int) else v for k, v in override.items()}
    answer = subscribe(tenant, token, webhook, **fields)

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == code
    assert webhook.validations() == []


def test_the_expiration_limit_is_10080_minutes(tenant: EmulatorTenant, webhook: Webhook, token: str) -> None:
    answer = subscribe(tenant, token, webhook, expirationDateTime=in_minutes(10_079))
    too_late = subscribe(tenant, token, webhook, expirationDateTime=in_minutes(10_081))

    assert answer.status_code == 201
    assert too_late.json()["error"]["message"] == "Subscription expiration can only be 10080 minutes in the future."


def test_delegated_tokens_subscribe_only_to_their_own_mailbox(
    tenant: EmulatorTenant, webhook: Webhook, token: str
) -> None:
    megan = tenant.users["megan"].upn

    as_adele = subscribe(tenant, token, webhook, resource=f"users/{megan}/mailFolders('inbox')/messages")
    as_app = subscribe(tenant, tenant.app_token(), webhook, resource=f"/Users/{megan}/MailFolders('Inbox')/Messages")
    app_on_me = subscribe(tenant, tenant.app_token(), webhook)

    assert as_adele.status_code == 403
    assert as_app.status_code == 201
    assert app_on_me.status_code == 400


# -- renew, read, delete ---------------------------------------------------------------------------


def test_a_subscription_can_be_renewed_read_listed_reauthorized_and_deleted(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, webhook: Webhook, token: str, adele: str
) -> None:
    sub = subscribe(tenant, token, webhook).json()
    path = f"/subscriptions/{sub['id']}"
    later = in_minutes(3000)

    renewed = tenant.graph("PATCH", path, token, json={"expirationDateTime": later})
    read = tenant.graph("GET", path, token)
    listed = tenant.graph("GET", "/subscriptions", token).json()["value"]
    reauthorized = tenant.graph("POST", path + "/reauthorize", token)
    lifecycle_on_patch = tenant.graph("PATCH", path, token, json={"lifecycleNotificationUrl": webhook.url("/x")})
    deleted = tenant.graph("DELETE", path, token)
    gone = tenant.graph("GET", path, token)
    emulator_client.deliver(adele, subject="after delete")

    assert renewed.status_code == 200
    assert renewed.json()["expirationDateTime"].startswith(later[:19])
    assert read.json()["expirationDateTime"] == renewed.json()["expirationDateTime"]
    assert [s["id"] for s in listed] == [sub["id"]]
    assert reauthorized.status_code == 204
    assert lifecycle_on_patch.status_code == 400
    assert deleted.status_code == 204
    assert gone.status_code == 404
    time.sleep(0.2)
    assert webhook.notifications() == []


# -- notifications ---------------------------------------------------------------------------------


def test_a_new_message_is_notified_with_the_documented_payload(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, webhook: Webhook, token: str, adele: str
) -> None:
    sub = subscribe(tenant, token, webhook, changeType="created").json()

    message = emulator_client.deliver(adele, subject="Ping")
    emulator_client.update(adele, message["id"], is_read=True)

    payload = wait_for(webhook.notifications)[0]
    item = payload["value"][0]
    resource = f"Users/{adele}/Messages/{message['id']}"
    assert item == {
        "subscriptionId": sub["id"],
        "subscriptionExpirationDateTime": sub["expirationDateTime"],
        "changeType": "created",
        "resource": resource,
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": resource,
            "@odata.etag": item["resourceData"]["@odata.etag"],
            "id": message["id"],
        },
        "clientState": "secret-client-state",
        "tenantId": tenant.id,
    }
    assert item["resourceData"]["@odata.etag"].startswith('W/"')
    attempt = wait_for(
        lambda: [
            e
            for e in emulator_client.notifications_log()
            if e["kind"] == "notification" and e["subscriptionId"] == sub["id"]
        ]
    )[0]
    assert (attempt["status"], attempt["ok"], attempt["attempt"]) == (202, True, 1)
    time.sleep(0.2)
    assert len(webhook.notifications()) == 1  # the update is not a subscribed change type


def test_notifications_cover_updates_and_moves_with_immutable_ids_when_asked_at_creation(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, webhook: Webhook, token: str, adele: str
) -> None:
    subscribe(tenant, token, webhook, prefer='IdType="ImmutableId"', changeType="updated,deleted")
    message = emulator_client.deliver(adele, subject="Track me")

    emulator_client.update(adele, message["id"], is_read=True)
    emulator_client.move(adele, message["id"], "archive")

    items = [p["value"][0] for p in notifications(webhook, 2)]
    assert sorted(i["changeType"] for i in items) == ["deleted", "updated"]
    assert {i["resourceData"]["id"] for i in items} == {message["immutableId"]}


def test_a_mailbox_wide_subscription_sees_every_folder(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, webhook: Webhook, adele: str
) -> None:
    subscribe(tenant, tenant.app_token(), webhook, resource=f"/users/{adele}/messages", changeType="created")

    emulator_client.deliver(adele, subject="in sent items", folder="sentitems")
    emulator_client.deliver(adele, subject="in junk", folder="junkemail")

    subjects = [p["value"][0]["changeType"] for p in notifications(webhook, 2)]
    assert subjects == ["created", "created"]


def test_failed_deliveries_are_retried_and_every_attempt_is_logged(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, webhook: Webhook, token: str, adele: str
) -> None:
    sub = subscribe(tenant, token, webhook, changeType="created").json()
    webhook.statuses = [503]

    emulator_client.deliver(adele, subject="Retry me")

    def attempts() -> list[dict[str, Any]]:
        found = [
            e
            for e in emulator_client.notifications_log()
            if e.get("subscriptionId") == sub["id"] and e["kind"] == "notification"
        ]
        return found if len(found) == 2 else []

    first, second = wait_for(attempts)
    assert (first["attempt"], first["status"], first["ok"], first["error"]) == (1, 503, False, "HTTP 503")
    assert (second["attempt"], second["status"], second["ok"]) == (2, 202, True)
    assert all(isinstance(e["durationMs"], float) for e in (first, second))
    assert len(webhook.notifications()) == 2


def test_a_slow_endpoint_never_blocks_the_change_that_triggered_it(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, webhook: Webhook, token: str, adele: str
) -> None:
    subscribe(tenant, token, webhook, changeType="created")
    webhook.delay = 1.0

    started = time.monotonic()
    emulator_client.deliver(adele, subject="Quick")
    elapsed = time.monotonic() - started

    assert elapsed < 0.5
    wait_for(webhook.notifications)


def test_an_expired_subscription_stops_delivering(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, webhook: Webhook, token: str, adele: str
) -> None:
    sub = subscribe(tenant, token, webhook, expirationDateTime=in_minutes(1.0 / 60)).json()

    time.sleep(1.1)
    emulator_client.deliver(adele, subject="Too late")
    time.sleep(0.2)

    assert webhook.notifications() == []
    assert tenant.graph("GET", f"/subscriptions/{sub['id']}", token).status_code == 404
    stored = [s for s in emulator_client.list_subscriptions() if s["id"] == sub["id"]]
    assert stored[0]["expired"] is True


# -- lifecycle events ------------------------------------------------------------------------------


def test_lifecycle_events_reach_the_lifecycle_url_and_subscription_removed_deletes_it(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, webhook: Webhook, token: str
) -> None:
    sub = subscribe(tenant, token, webhook).json()

    records = [
        emulator_client.fire_lifecycle(sub["id"], event)
        for event in ("reauthorizationRequired", "missed", "subscriptionRemoved")
    ]

    received = [p["value"][0] for p in webhook.notifications("/lifecycle")]
    assert [r["lifecycleEvent"] for r in received] == ["reauthorizationRequired", "missed", "subscriptionRemoved"]
    assert received[0] == {
        "subscriptionId": sub["id"],
        "subscriptionExpirationDateTime": sub["expirationDateTime"],
        "tenantId": tenant.id,
        "clientState": "secret-client-state",
        "lifecycleEvent": "reauthorizationRequired",
    }
    assert all(r["status"] == 202 and r["kind"] == "lifecycle" for r in records)
    assert tenant.graph("GET", f"/subscriptions/{sub['id']}", token).status_code == 404
    assert sub["id"] not in {s["id"] for s in emulator_client.list_subscriptions()}


def test_mail_sent_by_a_colleague_through_graph_fires_the_recipients_created_notification(
    tenant: EmulatorTenant, webhook: Webhook, token: str, adele: str
) -> None:
    assert subscribe(tenant, token, webhook, changeType="created").status_code == 201
    megan = tenant.delegated_token("megan", scopes=["Mail.Send"])
    message = {"subject": "From Megan", "toRecipients": [{"emailAddress": {"address": tenant.users["adele"].mail}}]}

    assert tenant.graph("POST", "/me/sendMail", megan, json={"message": message}).status_code == 202

    [notification] = notifications(webhook, 1)[0]["value"]
    assert notification["changeType"] == "created"
    assert notification["resource"].startswith(f"Users/{adele}/Messages/")
