"""Push through the local Functions host: Graph change notifications from the emulator (subscriptions
created when a mailbox connects and by the app's own timer, the validation handshake, lifecycle events,
forged notifications), and CRM webhooks signed and delivered to a local HTTPS receiver.

The host's PUBLIC_BASE_URL is http, so each test allows http notification URLs on both sides: the emulator
(``allow_http_notification_urls``; the ``tenant`` fixture restores it) and the app
(``GRAPH_NOTIFICATIONS_ALLOW_HTTP``, set here on the running host's settings). No timer or queue is driven
by hand unless a test says so: notifications reach the host over HTTP, and the host's queue listeners run
the syncs they enqueue.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest
import requests
from azure.storage.queue import QueueClient

from emulator.client import EmulatorClient, EmulatorTenant
from emulator.server import EmulatorServer
from sync_core import bootstrap
from tests.e2e.conftest import AppUnderTest
from tests.e2e.test_sync_flow import DAN, ERIN, STRANGER, Connected, connect, run_scheduler, set_up_org, timeline

SUBSCRIPTION_TIMER = "maintain_subscriptions"


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def push_allowed(emulator_client: EmulatorClient, tenant: EmulatorTenant) -> None:
    emulator_client.configure(allow_http_notification_urls=True)


@pytest.fixture
def subscribed(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    *,
    org: str,
    push_allowed: None,
) -> Connected:
    """Adele connected (which queues her subscriptions), synced once, and one tick of the app's subscription
    timer (the safety net: it finds nothing left to do)."""
    set_up_org(app_host, api, org, tenant)
    user = tenant.users["adele"]
    mailbox_id = connect(app_host, api, emulator_client, org, user.upn)
    run_scheduler(app_host)
    app_host.host.trigger_timer(SUBSCRIPTION_TIMER)
    return Connected(org, mailbox_id, user.upn, user.mail)


def our_subscriptions(app_host: AppUnderTest, api: requests.Session, org: str) -> list[dict[str, Any]]:
    response = api.get(app_host.url(f"orgs/{org}/subscriptions"))
    assert response.status_code == 200, response.text
    return list(response.json()["subscriptions"])


def emulator_subscriptions(emulator_client: EmulatorClient, tenant: EmulatorTenant) -> list[dict[str, Any]]:
    return [s for s in emulator_client.list_subscriptions() if s["tenantId"] == tenant.id and not s["expired"]]


def runs(app_host: AppUnderTest, api: requests.Session, box: Connected) -> list[dict[str, Any]]:
    response = api.get(app_host.url(f"orgs/{box.org}/mailboxes/{box.mailbox_id}/runs"))
    assert response.status_code == 200, response.text
    return list(response.json()["runs"])


# -- subscriptions and notifications ---------------------------------------------------------------------


def test_the_timer_subscribes_inbox_and_sent_items_with_a_secret_client_state_per_subscription(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    subscribed: Connected,
) -> None:
    ours = our_subscriptions(app_host, api, subscribed.org)
    theirs = {s["id"]: s for s in emulator_subscriptions(emulator_client, tenant)}

    assert sorted(s["folder"] for s in ours) == ["inbox", "sentitems"]
    assert {s["subscription_id"] for s in ours} == set(theirs)
    states = [theirs[s["subscription_id"]]["clientState"] for s in ours]
    assert len(set(states)) == 2 and all(len(state) >= 40 for state in states)
    for sub in theirs.values():
        assert sub["notificationUrl"] == app_host.url("notifications")
        assert sub["lifecycleNotificationUrl"] == app_host.url("notifications/lifecycle")
        assert sub["changeType"] == "created"
    validations = [e for e in emulator_client.notifications_log() if e["kind"] == "validation"]
    assert validations and all(e["ok"] for e in validations[-4:])


def test_a_message_delivered_to_a_subscribed_mailbox_becomes_an_activity_within_seconds_not_at_the_next_poll(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    subscribed: Connected,
    record_property: Callable[[str, object], None],
) -> None:
    emulator_client.clear_notifications_log()
    delivered_at = time.monotonic()

    emulator_client.deliver(subscribed.upn, from_=f"Dan <{DAN}>", to=[subscribed.mail], subject="Pushed to us")

    wait_for(lambda: timeline(app_host, api, subscribed.org, "cand-dan")["activities"], timeout=30)
    delay = time.monotonic() - delivered_at
    record_property("notification_to_activity_seconds", round(delay, 3))
    print(f"\nnotification -> activity visible through the API: {delay:.2f} s")
    [activity] = timeline(app_host, api, subscribed.org, "cand-dan")["activities"]
    assert activity["subject"] == "Pushed to us"
    assert delay < 15  # the poll interval is 5 minutes: only the notification explains this
    [notified] = [e for e in emulator_client.notifications_log() if e["kind"] == "notification"]
    print(f"notification answered {notified['status']} in {notified['durationMs']} ms")
    assert notified["status"] == 202 and notified["durationMs"] < 3000
    [inbox] = [s for s in our_subscriptions(app_host, api, subscribed.org) if s["folder"] == "inbox"]
    assert inbox["notifications"] == 1 and inbox["last_notification_at"] is not None


def test_a_mailbox_is_subscribed_when_it_connects_and_its_next_mail_is_logged_through_push_alone(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    *,
    org: str,
    push_allowed: None,
) -> None:
    """No Sync now, no minute timer, no maintenance timer: the connect queues the subscriptions, and the
    change notification of the next mail makes the only run."""
    set_up_org(app_host, api, org, tenant)
    user = tenant.users["adele"]
    box = Connected(org, connect(app_host, api, emulator_client, org, user.upn), user.upn, user.mail)

    subscribed = wait_for(lambda: len(our_subscriptions(app_host, api, org)) == 2, timeout=30)
    assert subscribed and sorted(s["folder"] for s in our_subscriptions(app_host, api, org)) == ["inbox", "sentitems"]
    assert runs(app_host, api, box) == []
    emulator_client.deliver(box.upn, from_=f"Dan <{DAN}>", to=[box.mail], subject="Right after connecting")

    wait_for(lambda: timeline(app_host, api, org, "cand-dan")["activities"], timeout=30)
    [activity] = timeline(app_host, api, org, "cand-dan")["activities"]
    assert activity["subject"] == "Right after connecting"
    [inbox] = [s for s in our_subscriptions(app_host, api, org) if s["folder"] == "inbox"]
    assert inbox["notifications"] >= 1


@pytest.mark.parametrize("path", ["notifications", "notifications/lifecycle"])
def test_the_validation_handshake_answers_the_decoded_token_as_plain_text_never_html(
    app_host: AppUnderTest, path: str
) -> None:
    token = "Validation: <script>alert('x')</script> & Request-Id: " + str(uuid.uuid4())

    response = requests.post(
        app_host.url(path) + "?validationToken=" + quote(token, safe=""),
        headers={"Content-Type": "text/plain; charset=utf-8"},
        timeout=10,
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.text == token


def test_forged_notifications_change_nothing_but_are_counted_and_a_missed_event_resyncs(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    *,
    org: str,
) -> None:
    set_up_org(app_host, api, org, tenant)
    user = tenant.users["adele"]
    # Graph refuses the http notification URL for now: subscribing at connect fails (logged, left to the timer).
    mailbox_id = connect(app_host, api, emulator_client, org, user.upn)
    box = Connected(org, mailbox_id, user.upn, user.mail)
    run_scheduler(app_host)
    assert our_subscriptions(app_host, api, org) == []
    # Mail that arrives before the mailbox is subscribed: only a sync will ever find it.
    emulator_client.deliver(user.upn, from_=ERIN, to=[user.mail], subject="Waiting in the inbox")
    emulator_client.configure(allow_http_notification_urls=True)
    app_host.host.trigger_timer(SUBSCRIPTION_TIMER)  # the safety net subscribes it
    [inbox] = [s for s in our_subscriptions(app_host, api, org) if s["folder"] == "inbox"]
    runs_before = len(runs(app_host, api, box))
    forged = [
        {"subscriptionId": inbox["subscription_id"], "clientState": "guessed", "changeType": "created",
         "resource": f"Users/{user.upn}/Messages/x", "tenantId": tenant.id},
        {"subscriptionId": str(uuid.uuid4()), "clientState": "guessed", "changeType": "created",
         "resource": f"Users/{user.upn}/Messages/y", "tenantId": tenant.id},
    ]  # fmt: skip
    unknown_before = bootstrap.services().subscription_store.unknown_count()

    for url in (app_host.url("notifications"), app_host.url("notifications/lifecycle")):
        items = forged if url.endswith("notifications") else [{**forged[0], "lifecycleEvent": "missed"}]
        response = requests.post(url, json={"value": items}, timeout=10)
        assert response.status_code == 202 and response.text == ""
    app_host.host.drain_queues(timeout=30)

    assert timeline(app_host, api, org, "lead-erin")["activities"] == []
    assert len(runs(app_host, api, box)) == runs_before
    [inbox] = [s for s in our_subscriptions(app_host, api, org) if s["folder"] == "inbox"]
    assert inbox["rejected_notifications"] == 2 and inbox["notifications"] == 0
    assert bootstrap.services().subscription_store.unknown_count() == unknown_before + 1

    record = emulator_client.fire_lifecycle(inbox["subscription_id"], "missed")

    assert record["status"] == 202
    wait_for(lambda: timeline(app_host, api, org, "lead-erin")["activities"], timeout=30)
    [inbox] = [s for s in our_subscriptions(app_host, api, org) if s["folder"] == "inbox"]
    assert inbox["last_lifecycle_event"] == "missed"


def test_reauthorization_required_renews_the_subscription(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    subscribed: Connected,
) -> None:
    [inbox] = [s for s in our_subscriptions(app_host, api, subscribed.org) if s["folder"] == "inbox"]
    assert inbox["renewed_at"] is None

    record = emulator_client.fire_lifecycle(inbox["subscription_id"], "reauthorizationRequired")

    assert record["status"] == 202 and record["durationMs"] < 3000
    app_host.host.drain_queues(timeout=30)
    [renewed] = [s for s in our_subscriptions(app_host, api, subscribed.org) if s["folder"] == "inbox"]
    assert renewed["subscription_id"] == inbox["subscription_id"]
    assert renewed["renewed_at"] is not None and renewed["last_lifecycle_event"] == "reauthorizationRequired"
    [theirs] = [s for s in emulator_subscriptions(emulator_client, tenant) if s["id"] == inbox["subscription_id"]]
    assert theirs["expirationDateTime"][:19] == renewed["expires_at"][:19]


def test_subscription_removed_recreates_the_subscription_and_resyncs_the_mailbox(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    subscribed: Connected,
) -> None:
    [inbox] = [s for s in our_subscriptions(app_host, api, subscribed.org) if s["folder"] == "inbox"]
    graph_calls_before = emulator_client.mailbox_stats(subscribed.upn)["requests"]

    record = emulator_client.fire_lifecycle(inbox["subscription_id"], "subscriptionRemoved")

    assert record["status"] == 202
    app_host.host.drain_queues(timeout=30)
    [again] = [s for s in our_subscriptions(app_host, api, subscribed.org) if s["folder"] == "inbox"]
    assert again["subscription_id"] != inbox["subscription_id"]
    theirs = {s["id"] for s in emulator_subscriptions(emulator_client, tenant)}
    assert again["subscription_id"] in theirs and inbox["subscription_id"] not in theirs
    # The delta resync polled the mailbox (an idle poll stores no run report, so count Graph calls).
    assert emulator_client.mailbox_stats(subscribed.upn)["requests"] > graph_calls_before
    emulator_client.deliver(subscribed.upn, from_=DAN, to=[subscribed.mail], subject="After the recreate")
    wait_for(lambda: timeline(app_host, api, subscribed.org, "cand-dan")["activities"], timeout=30)


def test_disconnecting_a_mailbox_deletes_its_subscriptions_at_graph(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    subscribed: Connected,
) -> None:
    assert len(emulator_subscriptions(emulator_client, tenant)) == 2

    response = api.delete(app_host.url(f"orgs/{subscribed.org}/mailboxes/{subscribed.mailbox_id}"))

    assert response.status_code in (200, 204), response.text
    assert our_subscriptions(app_host, api, subscribed.org) == []
    assert emulator_subscriptions(emulator_client, tenant) == []
    app_host.host.trigger_timer(SUBSCRIPTION_TIMER)  # a disconnected mailbox is not subscribed again
    assert our_subscriptions(app_host, api, subscribed.org) == []


# -- CRM webhooks ----------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A CRM webhook endpoint over HTTPS (the emulator's localhost certificate, which the host trusts)."""

    url: str = ""
    hits: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answers, then 200
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def receiver(emulator: EmulatorServer) -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.hits.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(emulator.tls.server_cert, emulator.tls.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"https://localhost:{server.server_address[1]}/crm/hooks"
    yield state
    server.shutdown()
    server.server_close()


def test_new_activities_are_posted_to_the_org_webhook_signed_with_its_secret_and_logged(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    subscribed: Connected,
    *,
    receiver: Receiver,
) -> None:
    settings = api.get(app_host.url(f"orgs/{subscribed.org}/settings")).json()
    settings["webhook_url"] = receiver.url
    assert api.put(app_host.url(f"orgs/{subscribed.org}/settings"), json=settings).status_code == 200
    revealed = api.post(app_host.url(f"orgs/{subscribed.org}/webhooks/secret"))
    assert revealed.status_code == 201
    secret = revealed.json()["secret"]
    assert api.post(app_host.url(f"orgs/{subscribed.org}/webhooks/secret")).status_code == 409  # shown once

    emulator_client.deliver(subscribed.upn, from_=DAN, to=[subscribed.mail], cc=[STRANGER], subject="Hooked")
    wait_for(lambda: receiver.hits, timeout=30)

    [(headers, body)] = receiver.hits
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-signature"], expected)
    event = json.loads(body)
    assert event["type"] == "activity.created" and headers["x-event-type"] == "activity.created"
    assert headers["x-delivery-id"] == event["id"] and headers["x-timestamp"].isdigit()
    assert event["data"]["subject"] == "Hooked"
    assert event["data"]["records"] == [{"id": "cand-dan", "type": "candidate"}]
    log = wait_for(
        lambda: [
            d
            for d in api.get(app_host.url(f"orgs/{subscribed.org}/webhooks/deliveries")).json()["deliveries"]
            if d["status"] == "delivered"
        ]
    )
    assert log[0]["id"] == event["id"] and log[0]["response_status"] == 200 and log[0]["attempts"] == 1


@pytest.fixture
def leaves_a_retry_scheduled() -> Iterator[None]:
    """The test below ends with a webhook retry scheduled on the shared push queue; remove it afterwards,
    or every later ``drain_queues`` in this session would wait for it."""
    yield
    settings = bootstrap.services().settings
    QueueClient.from_connection_string(
        settings.storage_connection_string, settings.sync_queue + "-push"
    ).clear_messages()


@pytest.mark.usefixtures("leaves_a_retry_scheduled")
def test_a_failing_webhook_is_retried_with_backoff_through_the_queue(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    subscribed: Connected,
    *,
    receiver: Receiver,
) -> None:
    settings = api.get(app_host.url(f"orgs/{subscribed.org}/settings")).json()
    settings["webhook_url"] = receiver.url
    assert api.put(app_host.url(f"orgs/{subscribed.org}/settings"), json=settings).status_code == 200
    receiver.statuses.append(500)

    emulator_client.deliver(subscribed.upn, from_=DAN, to=[subscribed.mail], subject="Try again later")
    wait_for(lambda: receiver.hits, timeout=30)

    def retrying() -> list[dict[str, Any]]:
        listed = api.get(app_host.url(f"orgs/{subscribed.org}/webhooks/deliveries")).json()["deliveries"]
        return [d for d in listed if d["status"] == "retrying"]

    [delivery] = wait_for(retrying)
    assert delivery["attempts"] == 1 and delivery["response_status"] == 500 and delivery["error"] == "HTTP 500"
    assert delivery["next_attempt_at"] > delivery["last_attempt_at"]
    assert len(receiver.hits) == 1  # the next attempt waits for its backoff delay
