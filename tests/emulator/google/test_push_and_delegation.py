"""users.watch with Pub/Sub push deliveries signed by the emulator's Google key, and service accounts
with domain-wide delegation (the JWT-bearer grant)."""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest

from tests.emulator.google.world import READONLY, World


class PushSink:
    """A local push endpoint recording each request's Authorization header and JSON body."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.status = 204
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                sink.received.put((self.headers.get("Authorization", ""), body))
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/google/push"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self) -> tuple[str, dict[str, Any]]:
        return self.received.get(timeout=10)


@pytest.fixture
def sink() -> Iterator[PushSink]:
    sink = PushSink()
    yield sink
    sink.server.shutdown()
    sink.server.server_close()


def watched(world: World, sink: PushSink, **watch: Any) -> str:
    """Register a topic pushing to ``sink`` and watch ada's mailbox; returns ada's token."""
    world.control("PUT", "config", {"allow_http_push_endpoints": True})
    topic = f"projects/crm-sync/topics/{world.domain.split('.')[0]}"
    created = world.control("POST", "topics", {
        "topic": topic, "push_endpoint": sink.url, "audience": "https://crm.example/push",
        "service_account_email": "push@crm-sync.iam.gserviceaccount.com"})
    assert created.status_code == 201, created.text
    token = world.token_for(world.ada)
    answer = world.gmail("POST", token, "me/watch", json={"topicName": topic, **watch})
    assert answer.status_code == 200, answer.text
    return token


def test_watch_answers_the_current_history_id_and_an_expiration_seven_days_ahead(world: World, sink: PushSink) -> None:
    world.control("PUT", "config", {"allow_http_push_endpoints": True})
    topic = f"projects/crm-sync/topics/t-{world.domain.split('.')[0]}"
    world.control("POST", "topics", {"topic": topic, "push_endpoint": sink.url,
                                     "service_account_email": "push@crm-sync.iam.gserviceaccount.com"})
    token = world.token_for(world.ada)
    answer = world.gmail("POST", token, "me/watch", json={"topicName": topic, "labelIds": ["INBOX"]}).json()
    assert answer["historyId"] == world.gmail("GET", token, "me/profile").json()["historyId"]
    seven_days_ms = 7 * 24 * 3600 * 1000
    assert abs(int(answer["expiration"]) - (time.time() * 1000 + seven_days_ms)) < 60_000


def test_watch_refuses_a_malformed_or_unknown_topic_and_one_gmail_may_not_publish_to(
    world: World, sink: PushSink
) -> None:
    token = world.token_for(world.ada)
    malformed = world.gmail("POST", token, "me/watch", json={"topicName": "my-topic"})
    assert malformed.status_code == 400
    unknown = world.gmail("POST", token, "me/watch", json={"topicName": "projects/p/topics/none"})
    assert unknown.status_code == 404
    world.control("PUT", "config", {"allow_http_push_endpoints": True})
    world.control("POST", "topics", {"topic": "projects/p/topics/closed", "push_endpoint": sink.url,
                                     "service_account_email": "push@p.iam.gserviceaccount.com",
                                     "publisher_granted": False})
    closed = world.gmail("POST", token, "me/watch", json={"topicName": "projects/p/topics/closed"})
    assert closed.status_code == 403


def test_a_plain_http_push_endpoint_needs_the_local_switch(world: World, sink: PushSink) -> None:
    answer = world.control("POST", "topics", {"topic": "projects/p/topics/http", "push_endpoint": sink.url,
                                              "service_account_email": "push@p.iam.gserviceaccount.com"})
    assert answer.status_code == 400


def test_new_mail_in_a_watched_mailbox_is_pushed_with_an_oidc_token_and_the_history_id(
    world: World, sink: PushSink
) -> None:
    watched(world, sink, labelIds=["INBOX"])
    delivered = world.deliver(world.ada, subject="Pushed")
    authorization, body = sink.next()
    data = json.loads(base64.b64decode(body["message"]["data"]))
    assert data == {"emailAddress": world.ada, "historyId": delivered["historyId"]}  # a string, as Gmail's guide
    assert body["subscription"].startswith("projects/crm-sync/subscriptions/")
    assert body["message"]["messageId"] == body["message"]["message_id"]
    assert body["message"]["publishTime"].endswith("Z")
    scheme, _, token = authorization.partition(" ")
    assert scheme == "Bearer"
    keys = world.http.get(f"{world.url}/oauth2/v3/certs").json()["keys"]
    key = jwt.PyJWK(next(k for k in keys if k["kid"] == jwt.get_unverified_header(token)["kid"])).key
    claims = jwt.decode(token, key, algorithms=["RS256"], audience="https://crm.example/push",
                        issuer="https://accounts.google.com")
    assert claims["email"] == "push@crm-sync.iam.gserviceaccount.com" and claims["email_verified"] is True
    deadline = time.monotonic() + 10  # the emulator records the attempt once the endpoint's answer is in
    while not any(p["email_address"] == world.ada and p["status"] == 204
                  for p in world.control("GET", "pushes").json()["pushes"]):
        assert time.monotonic() < deadline, "the delivered push was never recorded"
        time.sleep(0.05)


def test_mail_outside_the_watched_labels_is_not_pushed_and_stop_ends_pushes(world: World, sink: PushSink) -> None:
    token = watched(world, sink, labelIds=["INBOX"])
    world.deliver(world.ada, subject="Only sent", labels=["SENT"])
    world.deliver(world.ada, subject="Inbox")
    _, body = sink.next()
    data = json.loads(base64.b64decode(body["message"]["data"]))
    profile = world.gmail("GET", token, "me/profile").json()
    assert data["historyId"] == profile["historyId"]  # the INBOX one, the later change
    assert world.control("GET", f"users/{world.ada}/stats").json()["notifications_published"] == 1
    assert world.gmail("POST", token, "me/stop").status_code == 204
    world.deliver(world.ada, subject="After stop")
    world.deliver(world.bob, subject="Unwatched mailbox")
    assert world.control("GET", f"users/{world.ada}/stats").json()["notifications_published"] == 1
    assert world.control("GET", f"users/{world.bob}/stats").json()["notifications_published"] == 0
    assert sink.received.empty()


def test_a_failing_push_endpoint_is_retried(world: World, sink: PushSink) -> None:
    sink.status = 503
    watched(world, sink)
    world.control("PUT", "config", {"push_retries": 2})
    world.deliver(world.ada, subject="Retried")
    first, second, third = sink.next(), sink.next(), sink.next()
    assert first[1]["message"]["data"] == second[1]["message"]["data"] == third[1]["message"]["data"]


# -- service accounts --------------------------------------------------------------------------------


def assertion(key: dict[str, Any], scope: str, sub: str | None, *, lifetime: int = 3600) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": key["client_email"], "scope": scope, "aud": key["token_uri"],
                              "iat": now, "exp": now + lifetime}
    if sub:
        claims["sub"] = sub
    return jwt.encode(claims, key["private_key"], algorithm="RS256", headers={"kid": key["private_key_id"]})


def jwt_bearer(world: World, token_assertion: str) -> tuple[int, dict[str, Any]]:
    answer = world.http.post(f"{world.url}/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": token_assertion})
    return answer.status_code, answer.json()


def test_the_service_account_key_is_googles_key_file_with_the_emulators_token_uri(world: World) -> None:
    key = world.control("POST", "service-accounts", {"project_id": "crm-sync"}).json()
    assert key["type"] == "service_account"
    assert key["token_uri"] == f"{world.url}/token"
    assert key["client_email"].endswith("@crm-sync.iam.gserviceaccount.com")
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert key["client_id"].isdigit()


def test_a_delegated_service_account_impersonates_a_workspace_user(world: World) -> None:
    key = world.control("POST", "service-accounts", {}).json()
    world.control("PUT", f"domains/{world.domain}/delegations/{key['client_id']}", {"scopes": [READONLY]})
    status, body = jwt_bearer(world, assertion(key, READONLY, world.ada))
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599 and "refresh_token" not in body
    profile = world.gmail("GET", body["access_token"], f"{world.ada}/profile")
    assert profile.status_code == 200 and profile.json()["emailAddress"] == world.ada


def test_scopes_the_admin_did_not_delegate_are_unauthorized_client(world: World) -> None:
    key = world.control("POST", "service-accounts", {}).json()
    status, body = jwt_bearer(world, assertion(key, READONLY, world.ada))
    assert (status, body["error"]) == (401, "unauthorized_client")
    world.control("PUT", f"domains/{world.domain}/delegations/{key['client_id']}", {"scopes": [READONLY]})
    send = "https://www.googleapis.com/auth/gmail.send"
    status, body = jwt_bearer(world, assertion(key, f"{READONLY} {send}", world.ada))
    assert body["error"] == "unauthorized_client"
    world.control("DELETE", f"domains/{world.domain}/delegations/{key['client_id']}")
    assert jwt_bearer(world, assertion(key, READONLY, world.ada))[1]["error"] == "unauthorized_client"


def test_an_unknown_subject_is_invalid_grant(world: World) -> None:
    key = world.control("POST", "service-accounts", {}).json()
    status, body = jwt_bearer(world, assertion(key, READONLY, f"nobody@{world.domain}"))
    assert (status, body) == (400, {"error": "invalid_grant", "error_description": "Invalid email or User ID"})


def test_an_assertion_signed_by_another_key_or_living_too_long_is_invalid_grant(world: World) -> None:
    key = world.control("POST", "service-accounts", {}).json()
    other = world.control("POST", "service-accounts", {}).json()
    forged = assertion({**other, "client_email": key["client_email"], "private_key_id": key["private_key_id"]},
                       READONLY, world.ada)
    assert jwt_bearer(world, forged)[1] == {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    assert jwt_bearer(world, assertion(key, READONLY, world.ada, lifetime=7200))[1]["error"] == "invalid_grant"


def test_the_service_accounts_own_token_cannot_read_gmail(world: World) -> None:
    key = world.control("POST", "service-accounts", {}).json()
    status, body = jwt_bearer(world, assertion(key, READONLY, None))
    assert status == 200
    answer = world.gmail("GET", body["access_token"], "me/profile")
    assert answer.status_code == 400 and answer.json()["error"]["status"] == "FAILED_PRECONDITION"
