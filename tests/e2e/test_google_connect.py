"""A Gmail mailbox through the running function_app: the CRM starts a Google connect, the person signs
in on the Google emulator's consent page, the browser comes back with a connect code, the CRM confirms,
and the minute timer's sync logs a matched message from the Gmail API; with the mailbox watched at
connect, a message's Pub/Sub push (signed by the emulator's Google key) queues the sync on its own."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from queue import Queue
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from emulator.google.server import GoogleEmulatorServer
from sync_core.adapters.google.http import GmailHttp
from sync_core.adapters.google.identity import GoogleIdentity
from tests import connect_flow
from tests.e2e.conftest import GOOGLE_PUSHER, GOOGLE_TOPIC, AppUnderTest
from tests.e2e.test_sync_flow import run_scheduler

RETURN_URL = "https://crm.example/app/mailboxes"
DAN = "dan@talent.example"


class Google:
    """The Google emulator's control API (a fresh Workspace domain per test)."""

    def __init__(self, server: GoogleEmulatorServer) -> None:
        self.url = server.url
        self.http = requests.Session()
        self.http.verify, self.http.trust_env = str(server.ca_bundle_path), False
        self.domain = f"e{uuid.uuid4().hex[:10]}.example"
        self.call("POST", "domains", {"domain": self.domain})

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self.http.request(method, f"{self.url}/_emulator/{path}", json=body, timeout=30)
        assert response.status_code < 300, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def user(self, name: str) -> str:
        email = f"{name}@{self.domain}"
        self.call("POST", "users", {"email": email, "name": name.title()})
        return email


@pytest.fixture
def google(google_emulator: GoogleEmulatorServer) -> Iterator[Google]:
    found = Google(google_emulator)
    yield found
    found.http.close()


def set_up(app_host: AppUnderTest, api: requests.Session, google: Google, org: str) -> None:
    settings = {"internal_domains": [google.domain], "return_url_allow_list": ["https://crm.example/app"]}
    assert api.put(app_host.url(f"orgs/{org}/settings"), json=settings).status_code == 200
    record = {"type": "candidate", "name": "Dan", "emails": [DAN]}
    assert api.put(app_host.url(f"orgs/{org}/records/cand-dan"), json=record).status_code == 200


def connect(app_host: AppUnderTest, api: requests.Session, google: Google, org: str, address: str) -> dict[str, Any]:
    """The CRM's "Connect Gmail": start, the person allows on Google's page, back with a code, confirm."""
    body = {"user_id": "crm-user-1", "login_hint": address, "return_url": RETURN_URL, "provider": "google"}
    started = api.post(app_host.url(f"orgs/{org}/mailboxes/connect"), json=body, timeout=30)
    assert started.status_code == 200, started.text
    authorize_url = started.json()["authorize_url"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(authorize_url).query).items()}
    assert authorize_url.startswith(f"{google.url}/o/oauth2/v2/auth?")
    assert (query["access_type"], query["code_challenge_method"], query["client_id"]) == (
        "offline", "S256", app_host.google_client_id,
    )  # fmt: skip
    callback = google.call("POST", "authorize", {"auth_uri": authorize_url, "user": address})["redirect_url"]
    assert callback.startswith(app_host.url("auth/callback"))
    returned = requests.get(callback, allow_redirects=False, timeout=30)
    assert returned.status_code == 302, returned.text
    back = connect_flow.query_of(returned.headers["Location"])
    assert back["status"] == "signed_in", back
    confirmed = connect_flow.confirm(api, app_host.url, org, back["connect_code"])
    assert confirmed.status_code == 200, confirmed.text
    mailbox: dict[str, Any] = confirmed.json()
    return mailbox


def timeline(app_host: AppUnderTest, api: requests.Session, org: str) -> list[tuple[str, str, list[str]]]:
    found = api.get(app_host.url(f"orgs/{org}/records/cand-dan/activities")).json()
    return [(a["subject"], a["body"], a["mailbox_ids"]) for a in found["activities"]]


def test_a_google_connect_through_the_consent_page_confirmed_by_the_crm_syncs_the_gmail_mailbox(
    app_host: AppUnderTest, api: requests.Session, google: Google, org: str
) -> None:
    set_up(app_host, api, google, org)
    ada = google.user("ada")

    mailbox = connect(app_host, api, google, org, ada)
    assert (mailbox["status"], mailbox["provider"], mailbox["address"]) == ("active", "google", ada)
    now = datetime.now(UTC).isoformat()
    google.call("POST", f"users/{ada}/messages", {"from": DAN, "to": [ada], "subject": "CV attached",
                                                  "body": "Please find my CV.", "received_at": now})
    google.call("POST", f"users/{ada}/messages", {"from": "someone@else.example", "to": [ada],
                                                  "subject": "Not logged", "received_at": now})
    run_scheduler(app_host)

    assert timeline(app_host, api, org) == [("CV attached", "Please find my CV.", [mailbox["id"]])]


def test_a_gmail_mailbox_is_watched_at_connect_and_a_signed_push_queues_its_sync_without_the_timer(
    app_host: AppUnderTest, api: requests.Session, google: Google, org: str
) -> None:
    defaults = google.call("GET", "config")
    google.call("PUT", "config", {"allow_http_push_endpoints": True})  # this host is plain http on loopback
    google.call("POST", "topics", {"topic": GOOGLE_TOPIC, "push_endpoint": app_host.url("google/push"),
                                   "service_account_email": GOOGLE_PUSHER})
    google.call("PUT", "config", defaults)
    set_up(app_host, api, google, org)
    bea = google.user("bea")
    mailbox = connect(app_host, api, google, org, bea)
    assert google.call("GET", f"users/{bea}/watch")["topic"] == GOOGLE_TOPIC
    forged = requests.post(app_host.url("google/push"), json={"message": {"data": "e30="}},
                           headers={"Authorization": "Bearer forged"}, timeout=30)  # fmt: skip
    assert forged.status_code == 400

    google.call("POST", f"users/{bea}/messages", {"from": DAN, "to": [bea], "subject": "Pushed",
                                                  "body": "Fresh news.", "received_at": datetime.now(UTC).isoformat()})
    pushed = wait_for_push(google, bea)
    app_host.host.drain_queues(timeout=30)

    assert (pushed, timeline(app_host, api, org)) == (204, [("Pushed", "Fresh news.", [mailbox["id"]])])


def wait_for_push(google: Google, address: str) -> int | str:
    """The status our endpoint answered the emulator's push for ``address`` (it pushes on its own threads)."""
    for _ in range(200):
        done = [p["status"] for p in google.call("GET", "pushes")["pushes"] if p["email_address"] == address]
        if done:
            return done[-1]
        time.sleep(0.05)
    raise AssertionError("no push was delivered")


def signed_push(google: Google, audience: str) -> tuple[str, bytes]:
    """A Gmail push as Pub/Sub delivers it for this deployment (OIDC token for ``audience`` and the push
    service account, signed by the emulator's Google key), captured by a loopback receiver so a test can
    replay it: (Authorization header, body). Its address is watched by nobody here."""
    received: Queue[tuple[str, bytes]] = Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.put((self.headers.get("Authorization") or "", body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pat = google.user("pat")
    redirect = "https://capture.example/callback"
    client = google.call("POST", "clients", {"redirect_uris": [redirect]})
    session = requests.Session()
    session.verify, session.trust_env = google.http.verify, False
    identity = GoogleIdentity(session, client["client_id"], client["client_secret"], f"{google.url}/o/oauth2/v2/auth",
                              f"{google.url}/token", lambda _m: lambda _r: "")  # fmt: skip
    flow = identity.initiate_connect(redirect, pat)
    back = google.call("POST", "authorize", {"auth_uri": flow["auth_uri"], "user": pat})["redirect_url"]
    token = identity.redeem_connect(flow, connect_flow.query_of(back)).access_token
    topic = f"projects/crm-e2e/topics/capture-{uuid.uuid4().hex[:8]}"
    defaults = google.call("GET", "config")
    google.call("PUT", "config", {"allow_http_push_endpoints": True})
    google.call("POST", "topics", {"topic": topic, "audience": audience, "service_account_email": GOOGLE_PUSHER,
                                   "push_endpoint": f"http://127.0.0.1:{server.server_address[1]}/push"})
    google.call("PUT", "config", defaults)
    GmailHttp(session, google.url, lambda _r: token).post("watch", {"topicName": topic, "labelIds": ["INBOX"]})
    google.call("POST", f"users/{pat}/messages", {"from": DAN, "to": [pat], "subject": "captured"})
    try:
        return received.get(timeout=10)
    finally:
        server.shutdown()
        session.close()


def test_disconnecting_a_gmail_mailbox_revokes_its_grant_at_google(
    app_host: AppUnderTest, api: requests.Session, google: Google, org: str
) -> None:
    set_up(app_host, api, google, org)
    rita = google.user("rita")
    mailbox = connect(app_host, api, google, org, rita)

    gone = api.delete(app_host.url(f"orgs/{org}/mailboxes/{mailbox['id']}"))

    assert gone.status_code == 204
    assert google.call("POST", "grants/revoke", {"user": rita})["revoked"] == 0  # the app already revoked it
    kept = google.user("kim")
    connect(app_host, api, google, org, kept)
    assert google.call("POST", "grants/revoke", {"user": kept})["revoked"] == 1  # (the control is live)
