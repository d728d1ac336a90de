"""IMAP mailboxes through the real function_app (local host, Azurite) and the real Dovecot: add by logging
in first, precise 400 reasons, passwords encrypted at rest and never answered, Sync now, a password
changed on the server (needs_reauth with the server's reason) and then through PATCH, disconnect; a send through
the send API over SMTP, and 409 for a mailbox without an SMTP login."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import trustme
from azure.data.tables import TableServiceClient
from imapclient import IMAPClient

from sync_core.settings import Settings
from tests.e2e.conftest import AppUnderTest
from tools import mailserver
from tools.mailserver import MailServer

CAROL = "carol@client.example"
UNTRUSTED_HOST = "127.0.0.2"
PASSWORD = "imap-e2e-password"


def login(server: MailServer, user: str, password: str = PASSWORD, *, port: int | None = None) -> dict[str, Any]:
    return {"host": server.host, "port": port or server.ports.imaps, "security": "tls", "username": user,
            "password": password}  # fmt: skip


def smtp_login(server: MailServer, user: str, password: str = PASSWORD) -> dict[str, Any]:
    return {"host": server.host, "port": server.ports.submission, "security": "starttls", "username": user,
            "password": password}  # fmt: skip


@pytest.fixture
def user(mail_server: MailServer) -> str:
    return mail_server.add_user(f"u{uuid.uuid4().hex[:10]}@imap.example", PASSWORD)


def add(app_host: AppUnderTest, api: requests.Session, org: str, body: dict[str, Any]) -> requests.Response:
    return api.post(app_host.url(f"orgs/{org}/mailboxes"), json={"provider": "imap", **body})


def set_up(app_host: AppUnderTest, api: requests.Session, org: str) -> None:
    assert api.put(app_host.url(f"orgs/{org}/settings"), json={"internal_domains": ["imap.example"]}).status_code == 200
    record = {"type": "contact", "name": "Carol", "emails": [CAROL]}
    assert api.put(app_host.url(f"orgs/{org}/records/c-carol"), json=record).status_code == 200


def token_rows(_app_host: AppUnderTest, org: str) -> list[dict[str, Any]]:
    """The org's rows of the app's token-cache table (the running host applied its settings to os.environ)."""
    settings = Settings.from_env()
    service = TableServiceClient.from_connection_string(settings.storage_connection_string)
    table = service.get_table_client(f"{settings.table_prefix}tokencaches")
    return [dict(e) for e in table.query_entities("PartitionKey eq @pk", parameters={"pk": org})]


def test_an_imap_mailbox_is_added_after_a_login_syncs_and_keeps_its_password_only_encrypted(
    app_host: AppUnderTest, api: requests.Session, org: str, mail_server: MailServer, user: str
) -> None:
    set_up(app_host, api, org)
    body = {"user_id": "crm-user-1", "address": user, "imap": login(mail_server, user),
            "smtp": smtp_login(mail_server, user)}  # fmt: skip

    added = add(app_host, api, org, body)
    mail_server.deliver(user, f"From: {CAROL}\r\nTo: {user}\r\nSubject: Hello over IMAP\r\n"
                              f"Message-ID: <{uuid.uuid4().hex}@client.example>\r\n\r\nhi\r\n".encode())  # fmt: skip

    assert added.status_code == 201, added.text
    mailbox = added.json()
    assert (mailbox["provider"], mailbox["status"], mailbox["address"]) == ("imap", "active", user)
    assert PASSWORD not in added.text and "password" not in added.text
    rows = token_rows(app_host, org)
    assert len(rows) == 1 and rows[0]["Kid"]
    assert PASSWORD not in json.dumps(rows, default=str) and user not in json.dumps(rows, default=str)
    sync = api.post(app_host.url(f"orgs/{org}/mailboxes/{mailbox['id']}/sync"))
    assert sync.status_code == 202
    app_host.host.drain_queues(timeout=30)
    run = api.get(app_host.url(sync.json()["run_url"].removeprefix("/api/"))).json()
    assert run["status"] == "done" and run["report"]["activities_created"] == 1, run
    timeline = api.get(app_host.url(f"orgs/{org}/records/c-carol/activities")).json()
    assert [a["subject"] for a in timeline["activities"]] == ["Hello over IMAP"]
    listed = api.get(app_host.url(f"orgs/{org}/mailboxes/{mailbox['id']}"))
    assert PASSWORD not in listed.text

    gone = api.delete(app_host.url(f"orgs/{org}/mailboxes/{mailbox['id']}"))

    assert gone.status_code == 204
    assert token_rows(app_host, org) == []  # disconnect deleted the credentials


def test_a_password_changed_on_the_server_gives_needs_reauth_with_its_reason_until_patched(
    app_host: AppUnderTest, api: requests.Session, org: str, mail_server: MailServer, user: str
) -> None:
    set_up(app_host, api, org)
    mailbox = add(app_host, api, org, {"address": user, "imap": login(mail_server, user)}).json()
    mail_server.add_user(user, "changed-on-the-server")
    url = app_host.url(f"orgs/{org}/mailboxes/{mailbox['id']}")

    sync = api.post(f"{url}/sync")
    app_host.host.drain_queues(timeout=30)
    held = api.get(url).json()
    assert sync.status_code == 202
    wrong = api.patch(url, json={"imap": login(mail_server, user, "still-wrong")})
    fixed = api.patch(url, json={"imap": login(mail_server, user, "changed-on-the-server")})

    assert held["status"] == "needs_reauth" and "AUTHENTICATIONFAILED" in held["status_reason"], held
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "imap_auth_failed", wrong.text
    assert fixed.status_code == 200 and fixed.json()["status"] == "active", fixed.text
    assert "changed-on-the-server" not in fixed.text


@pytest.fixture(scope="module")
def untrusted_tls_port() -> Iterator[int]:
    """A TLS server whose certificate comes from a CA nobody trusts (it never gets to speak IMAP). On
    127.0.0.2, so that it can never answer a connection meant for another test's ``localhost`` server
    whose port it happened to take."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.2").configure_cert(context)
    listener = socket.create_server((UNTRUSTED_HOST, 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"* OK ready\r\n")
            except (OSError, ssl.SSLError):
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield int(listener.getsockname()[1])
    stop.set()
    listener.close()


@pytest.fixture(scope="module")
def server_without_sent(mail_server: MailServer) -> Iterator[MailServer]:
    """A Dovecot without a Sent folder, its certificate from the same local CA as ``mail_server``'s."""
    root = mailserver.ROOT / ".local" / f"mailserver-nosent-{uuid.uuid4().hex[:8]}"
    with mailserver.running(root, sent=False, ca_dir=mail_server.ca_pem.parent) as server:
        yield server
    shutil.rmtree(root, ignore_errors=True)


def test_each_reason_a_login_cannot_be_used_is_a_precise_400_and_nothing_is_stored(
    app_host: AppUnderTest, api: requests.Session, org: str, mail_server: MailServer, user: str,
    *, untrusted_tls_port: int, server_without_sent: MailServer,
) -> None:  # fmt: skip
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = int(closed.getsockname()[1])  # bound, never listening: connections are refused
    bare_user = server_without_sent.add_user(f"b{uuid.uuid4().hex[:8]}@imap.example", PASSWORD)
    cases = {
        "imap_unreachable": {"imap": login(mail_server, user, port=closed_port)},
        "imap_tls_untrusted": {"imap": {**login(mail_server, user, port=untrusted_tls_port), "host": UNTRUSTED_HOST}},
        "imap_auth_failed": {"imap": login(mail_server, user, "wrong-password")},
        "imap_no_sent_folder": {"imap": login(server_without_sent, bare_user)},
        "plaintext_refused": {"imap": {**login(mail_server, user), "security": "none"}},
        "smtp_auth_failed": {"imap": login(mail_server, user), "smtp": smtp_login(mail_server, user, "wrong")},
    }

    answers = {code: add(app_host, api, org, {"address": user, **body}) for code, body in cases.items()}

    closed.close()
    for code, answer in answers.items():
        assert answer.status_code == 400, (code, answer.text)
        assert answer.json()["error"]["code"] == code, answer.text
        assert PASSWORD not in answer.text and "wrong-password" not in answer.text
    assert "AUTHENTICATIONFAILED" in answers["imap_auth_failed"].json()["error"]["message"]
    assert "not trusted" in answers["imap_tls_untrusted"].json()["error"]["message"]
    assert api.get(app_host.url(f"orgs/{org}/mailboxes")).json()["mailboxes"] == []
    assert token_rows(app_host, org) == []


def inbox_copies(server: MailServer, user: str, folder: str, message_id: str) -> int:
    client = IMAPClient(server.host, server.ports.imaps, ssl_context=server.ssl_context())
    try:
        client.login(user, PASSWORD)
        client.select_folder(folder, readonly=True)
        return len(client.search(["HEADER", "Message-ID", message_id.strip("<>")]))
    finally:
        client.logout()


def test_an_imap_mailbox_sends_through_the_send_api_once_and_one_activity_remains_after_its_sync(
    app_host: AppUnderTest, api: requests.Session, org: str, mail_server: MailServer, user: str
) -> None:
    set_up(app_host, api, org)
    settings = {"internal_domains": ["imap.example"], "sending_enabled": True}
    assert api.put(app_host.url(f"orgs/{org}/settings"), json=settings).status_code == 200
    recipient = mail_server.add_user(f"r{uuid.uuid4().hex[:10]}@imap.example", PASSWORD)
    body = {"address": user, "imap": login(mail_server, user), "smtp": smtp_login(mail_server, user)}
    mailbox = add(app_host, api, org, body).json()
    reading_only = add(app_host, api, org, {"address": recipient, "imap": login(mail_server, recipient)}).json()
    message = {"to": [recipient], "cc": [CAROL], "subject": "Over SMTP", "body": {"content": "Hello"}}

    posted = api.post(
        app_host.url(f"orgs/{org}/mailboxes/{mailbox['id']}/messages:send"), json=message,
        headers={"Idempotency-Key": "smtp-1"},
    )  # fmt: skip
    app_host.host.drain_queues(timeout=60)
    refused = api.post(
        app_host.url(f"orgs/{org}/mailboxes/{reading_only['id']}/messages:send"), json=message,
        headers={"Idempotency-Key": "smtp-2"},
    )  # fmt: skip

    assert posted.status_code == 202, posted.text
    sent = api.get(app_host.url(f"orgs/{org}/sends/{posted.json()['id']}")).json()
    assert sent["status"] == "sent", sent
    assert inbox_copies(mail_server, recipient, "INBOX", sent["internet_message_id"]) == 1
    assert inbox_copies(mail_server, user, "Sent", sent["internet_message_id"]) == 1
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "send_permission_missing", refused.text
    assert "smtp" in refused.json()["error"]["message"]
    sync = api.post(app_host.url(f"orgs/{org}/mailboxes/{mailbox['id']}/sync"))
    assert sync.status_code == 202
    app_host.host.drain_queues(timeout=30)
    timeline = api.get(app_host.url(f"orgs/{org}/records/c-carol/activities")).json()["activities"]
    assert [(a["id"], a["sent_from_crm"], a["send_id"]) for a in timeline] == [(sent["activity_id"], True, sent["id"])]
