"""An IMAP mailbox's stored login is a token cache in all but name: encrypted under the current key id,
re-wrapped by the maintenance timer when the key rotates, read by the sync under the new key, and a
login no configured key opens puts the mailbox in needs_reauth. Wired through ``bootstrap.Services``
(the composition root) on Azurite and the real Dovecot."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

from azure.data.tables import TableServiceClient

from sync_core.bootstrap import Services
from sync_core.domain.model import MailboxStatus, OrgSettings, Record
from sync_core.ports.identity import mailbox_owner
from sync_core.ports.servers import Security, ServerAccount, ServerLogin
from sync_core.settings import Settings
from sync_core.use_cases import maintenance
from sync_core.use_cases.connect import add_server_mailbox
from tools.mailserver import MailServer

ORG = "org-imap-keys"
PASSWORD = "rotating-password"
KEY_A = "a:" + base64.b64encode(b"A" * 32).decode()
KEY_B = "b:" + base64.b64encode(b"B" * 32).decode()
KEY_C = "c:" + base64.b64encode(b"C" * 32).decode()


def services(connection_string: str, prefix: str, key: str, server: MailServer) -> Services:
    return Services(Settings(
        storage_connection_string=connection_string, table_prefix=prefix, token_encryption_key=key,
        mail_server_ca_bundle=str(server.ca_pem), graph_client_id="unused", graph_client_secret="unused",
        authority_host="https://login.invalid",
        graph_base_url="https://graph.invalid/v1.0",
    ))  # fmt: skip


def test_a_stored_imap_login_rotates_with_the_token_caches_and_an_unreadable_one_needs_reauth(
    storage_connection_string: str, table_prefix: str, mail_server: MailServer
) -> None:
    user = mail_server.add_user(f"k{uuid.uuid4().hex[:10]}@imap.example", PASSWORD)
    login = ServerLogin(mail_server.host, mail_server.ports.imaps, Security.TLS, user, PASSWORD)
    first = services(storage_connection_string, table_prefix, KEY_A, mail_server)
    first.stores.settings.put(ORG, OrgSettings(internal_domains=("imap.example",)))
    first.stores.records.upsert(ORG, [Record("c-carol", "contact", "Carol", emails=("carol@client.example",))])
    mailbox = add_server_mailbox(first.connect_deps(), ORG, address=user, account=ServerAccount(login))
    owner = mailbox_owner(mailbox.mailbox_id)
    mail_server.deliver(user, f"From: carol@client.example\r\nTo: {user}\r\nSubject: After rotation\r\n"
                              f"Date: {datetime.now(UTC):%a, %d %b %Y %H:%M:%S +0000}\r\n"
                              f"Message-ID: <{uuid.uuid4().hex}@client.example>\r\n\r\nhi\r\n".encode())  # fmt: skip

    rotating = services(storage_connection_string, table_prefix, f"{KEY_B},{KEY_A}", mail_server)
    stored_before = rotating.token_caches.stored_key_id(ORG, owner)
    counts = maintenance.maintain(rotating.maintenance_deps())
    new_key_only = services(storage_connection_string, table_prefix, KEY_B, mail_server)
    synced = new_key_only.sync(ORG, mailbox.mailbox_id)
    lost_key = services(storage_connection_string, table_prefix, KEY_C, mail_server)
    unreadable = lost_key.sync(ORG, mailbox.mailbox_id)

    assert (stored_before, counts["rewrapped"]) == ("a", 1)
    assert new_key_only.token_caches.stored_key_id(ORG, owner) == "b"
    assert synced.status == "done" and synced.report is not None and synced.report.activities_created == 1
    assert unreadable.status == "failed"
    found = lost_key.stores.mailboxes.get(ORG, mailbox.mailbox_id)
    assert found is not None and found.value.status is MailboxStatus.NEEDS_REAUTH
    service = TableServiceClient.from_connection_string(storage_connection_string)
    for table in service.list_tables():
        if table.name.startswith(table_prefix):
            for entity in service.get_table_client(table.name).list_entities():
                assert PASSWORD not in str(dict(entity))
            service.delete_table(table.name)
