"""``--persist``: a restarted emulator answers what it issued before (delta links, refresh and access
tokens, subscriptions) exactly as before, the demo seed is never added twice, and an unreadable
snapshot means a fresh start, never a failed one."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from emulator.client import EmulatorClient, EmulatorTenant
from emulator.persistence import STATE_FILE
from emulator.server import EmulatorServer
from emulator.state import DEMO_CLIENT_ID
from tools.azurite import free_port


class _ValidationReceiver(BaseHTTPRequestHandler):
    """A notification endpoint that passes Graph's validation handshake and accepts notifications."""

    def do_POST(self) -> None:
        token = parse_qs(urlsplit(self.path).query).get("validationToken", [""])[0]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = token.encode()
        self.send_response(200 if token else 202)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ValidationReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/notify"
    server.shutdown()
    server.server_close()


def _delta_link(tenant: EmulatorTenant, token: str, url: str) -> tuple[list[str], str]:
    """Follow ``url``'s pages; the subjects seen and the deltaLink at the end."""
    subjects: list[str] = []
    while True:
        page = tenant.session.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert page.status_code == 200, page.text
        body = page.json()
        subjects += [item["subject"] for item in body["value"] if "subject" in item]
        if "@odata.deltaLink" in body:
            return subjects, str(body["@odata.deltaLink"])
        url = body["@odata.nextLink"]


def _client(server: EmulatorServer) -> EmulatorClient:
    return EmulatorClient(server.url, server.ca_bundle_path)


def test_a_restarted_persistent_emulator_answers_its_delta_links_tokens_and_subscriptions_as_before(
    tmp_path: Path, receiver: str
) -> None:
    port = free_port()
    with EmulatorServer(port=port, state_dir=tmp_path, persist=True) as first:
        assert first.restored is False
        client = _client(first)
        client.configure(allow_http_notification_urls=True)
        tenant = client.provision_tenant("persist")
        adele = tenant.users["adele"]
        _, signed_in = tenant.sign_in("adele")
        access_token, refresh_token = signed_in["access_token"], signed_in["refresh_token"]
        client.deliver(adele.upn, from_="dan@talent.example", to=[adele.mail], subject="before the restart")
        seen, delta_link = _delta_link(
            tenant, access_token, f"{tenant.graph_url}/me/mailFolders/inbox/messages/delta?$select=subject"
        )
        assert seen == ["before the restart"]
        in_a_day = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        created = tenant.graph(
            "POST", "/subscriptions", access_token,
            json={
                "changeType": "created", "notificationUrl": receiver, "resource": "me/mailFolders('inbox')/messages",
                "expirationDateTime": in_a_day, "clientState": "state-1",
            },
        )
        assert created.status_code == 201, created.text
        subscription = tenant.graph("GET", f"/subscriptions/{created.json()['id']}", access_token).json()

    with EmulatorServer(port=port, state_dir=tmp_path, persist=True) as second:
        assert second.restored is True
        client = _client(second)
        assert client.config()["allow_http_notification_urls"] is True
        client.deliver(adele.upn, from_="dan@talent.example", to=[adele.mail], subject="after the restart")

        # The stored delta link resumes where it was: only the mail that came since.
        assert _delta_link(tenant, access_token, delta_link)[0] == ["after the restart"]
        assert tenant.graph("GET", f"/subscriptions/{subscription['id']}", access_token).json() == subscription
        refreshed = tenant.token_request(
            grant_type="refresh_token", refresh_token=refresh_token, client_id=tenant.app.client_id,
            client_secret=tenant.app.client_secret, scope="https://graph.microsoft.com/Mail.Read offline_access",
        )
        assert refreshed.status_code == 200, refreshed.text
        assert tenant.graph("GET", "/me", refreshed.json()["access_token"]).status_code == 200


def test_the_demo_seed_is_added_once_and_what_was_added_to_it_survives_restarts(tmp_path: Path) -> None:
    port = free_port()
    with EmulatorServer(port=port, state_dir=tmp_path, seed="demo", persist=True) as first:
        _client(first).create_user(
            first.state.directory.find_tenant("contoso.example").id,  # type: ignore[union-attr]
            "lynne@contoso.example",
        )
    for _ in range(2):
        with EmulatorServer(port=port, state_dir=tmp_path, seed="demo", persist=True) as again:
            directory = again.state.directory
            assert again.restored is True
            assert [t.domain_names()[0] for t in directory.tenants.values()] == ["contoso.example"]
            assert sorted(u.user_principal_name for u in directory.users.values()) == [
                "adele@contoso.example", "lynne@contoso.example", "megan@contoso.example", "sales@contoso.example",
            ]
            assert list(directory.apps) == [DEMO_CLIENT_ID]


def test_a_change_is_saved_while_the_emulator_runs_so_a_killed_one_loses_at_most_the_last_moment(
    tmp_path: Path,
) -> None:
    with EmulatorServer(state_dir=tmp_path, persist=True) as running:
        _client(running).create_tenant("Fabrikam", ["fabrikam.example"])
        snapshot = tmp_path / STATE_FILE
        deadline = time.monotonic() + 30
        while not snapshot.exists() or b"fabrikam.example" not in snapshot.read_bytes():
            assert time.monotonic() < deadline, "the change was never saved"
            time.sleep(0.05)
        # What a killed process leaves: the saved file, read by a new emulator while this one still runs.
        restarted = EmulatorServer(state_dir=tmp_path, persist=True)
        try:
            assert restarted.restored is True
            assert restarted.state.directory.find_tenant("fabrikam.example") is not None
        finally:
            restarted.stop()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(STATE_FILE)] == [STATE_FILE]  # no temp files


@pytest.mark.parametrize(
    "content",
    [b"not a pickle", pickle.dumps({"schema": (("Old", ("shape",)),), "parts": {}})],
    ids=["garbage", "other-schema"],
)
def test_an_unreadable_snapshot_is_set_aside_and_the_emulator_starts_fresh_with_its_seed(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)

    server = EmulatorServer(state_dir=tmp_path, seed="demo", persist=True)
    try:
        assert server.restored is False
        assert server.state.directory.find_tenant("contoso.example") is not None
        assert (tmp_path / f"{STATE_FILE}.unreadable").read_bytes() == content
    finally:
        server.stop()


def test_without_persist_nothing_is_written_and_nothing_is_restored(tmp_path: Path) -> None:
    with EmulatorServer(state_dir=tmp_path, seed="demo", persist=True):
        pass
    with EmulatorServer(state_dir=tmp_path) as plain:
        assert plain.restored is False
        _client(plain).create_tenant("Fabrikam", ["fabrikam.example"])
    again = EmulatorServer(state_dir=tmp_path, persist=True)
    try:
        assert again.state.directory.find_tenant("fabrikam.example") is None
    finally:
        again.stop()
