"""The webhook sender adapter (``RequestsWebhookSender``) against real local HTTPS servers.

Name resolution goes through the adapter's own seam (``resolver``), so a test decides what a host name
resolves to, answer by answer, as a hostile DNS server would. The servers are throwaway HTTPS servers on
loopback with a trustme CA the sender's session trusts (``trust_env`` off, so ``REQUESTS_CA_BUNDLE`` of
the test run does not replace it). Each records the requests it got, their ``Host`` header and the SNI
name of each TLS handshake.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from sync_core.adapters.http_webhooks import RequestsWebhookSender
from sync_core.errors import WebhookSendFailed, WebhookUrlRefused

PUBLIC = "93.184.216.34"  # a global address: passes the guard; nothing of the test listens there


@dataclass
class Server:
    port: int
    hits: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    sni: list[str | None] = field(default_factory=list)
    status: int = 200
    location: str = ""


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def serve(ca: trustme.CA) -> Iterator[Callable[..., Server]]:
    """``serve(*names)``: an HTTPS server on 127.0.0.1 whose certificate names exactly ``names``."""
    running: list[ThreadingHTTPServer] = []

    def start(*names: str) -> Server:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(context)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler())
        state = Server(server.server_address[1])
        server.state = state  # type: ignore[attr-defined]
        context.sni_callback = lambda _sock, name, _ctx: state.sni.append(name)  # type: ignore[func-returns-value]
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        running.append(server)
        return state

    yield start
    for server in running:
        server.shutdown()
        server.server_close()


def _handler() -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state: Server = self.server.state  # type: ignore[attr-defined]
            state.hits.append((self.path, self.headers.get("Host", "")))
            self.send_response(state.status)
            if state.location:
                self.send_header("Location", state.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class ScriptedResolver:
    """The sender's resolver seam: answers in turn (the last one repeats), and counts the questions."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def sender(ca_file: str, resolver: ScriptedResolver, *, allow_private: bool) -> RequestsWebhookSender:
    session = requests.Session()
    session.trust_env = False
    session.verify = ca_file
    return RequestsWebhookSender(session, allow_private=allow_private, timeout=(0.5, 5.0), resolver=resolver)


def test_a_host_name_rebound_to_loopback_after_the_check_never_reaches_the_loopback_server(
    serve: Callable[..., Server], ca_file: str
) -> None:
    internal = serve("localhost")
    rebinding = ScriptedResolver([PUBLIC], ["127.0.0.1"])  # the check sees a public address, then loopback
    url = f"https://localhost:{internal.port}/admin/reset"

    with pytest.raises(WebhookSendFailed):
        sender(ca_file, rebinding, allow_private=False).post(url, b"{}", {"Content-Type": "application/json"})

    assert internal.hits == [] and internal.sni == []
    assert rebinding.asked == ["localhost"]  # one answer, checked and then used


def test_the_connection_goes_to_the_checked_address_with_sni_host_and_certificate_for_the_host_name(
    serve: Callable[..., Server], ca_file: str
) -> None:
    crm = serve("crm.test")
    resolver = ScriptedResolver(["127.0.0.1"])

    status = sender(ca_file, resolver, allow_private=True).post(f"https://crm.test:{crm.port}/hooks", b"{}", {})

    assert status == 200
    assert crm.hits == [("/hooks", f"crm.test:{crm.port}")] and crm.sni == ["crm.test"]


def test_a_certificate_for_another_name_at_the_checked_address_fails_tls_verification(
    serve: Callable[..., Server], ca_file: str
) -> None:
    other = serve("crm.test")

    with pytest.raises(WebhookSendFailed, match="SSLError"):
        sender(ca_file, ScriptedResolver(["127.0.0.1"]), allow_private=True).post(
            f"https://evil.test:{other.port}/hooks", b"{}", {}
        )

    assert other.hits == []


def test_a_redirect_is_answered_as_its_status_and_never_followed(serve: Callable[..., Server], ca_file: str) -> None:
    target = serve("localhost")
    redirecting = serve("localhost")
    redirecting.status, redirecting.location = 307, f"https://localhost:{target.port}/elsewhere"

    status = sender(ca_file, ScriptedResolver(["127.0.0.1"]), allow_private=True).post(
        f"https://localhost:{redirecting.port}/hooks", b"{}", {}
    )

    assert status == 307 and len(redirecting.hits) == 1 and target.hits == []


def test_the_next_checked_address_is_tried_only_when_the_previous_one_refused_the_connection(
    serve: Callable[..., Server], ca_file: str
) -> None:
    crm = serve("crm.test")
    resolver = ScriptedResolver(["127.0.0.2", "127.0.0.1"])  # nothing listens on 127.0.0.2 at that port

    status = sender(ca_file, resolver, allow_private=True).post(f"https://crm.test:{crm.port}/hooks", b"{}", {})

    assert status == 200 and len(crm.hits) == 1 and resolver.asked == ["crm.test"]


def test_a_private_answer_is_still_refused_and_a_name_that_does_not_resolve_is_a_failed_attempt(
    ca_file: str,
) -> None:
    def no_answer(_host: str, _port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(WebhookUrlRefused):
        sender(ca_file, ScriptedResolver([PUBLIC, "10.0.0.1"]), allow_private=False).post(
            "https://crm.example/hooks", b"{}", {}
        )
    guarded = RequestsWebhookSender(requests.Session(), resolver=no_answer)
    with pytest.raises(WebhookSendFailed, match="does not resolve"):
        guarded.post("https://crm.example/hooks", b"{}", {})
