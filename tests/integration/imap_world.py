"""The IMAP side of the sync engine's integration tests: mailboxes on the real Dovecot of
``tools/mailserver.py``, filled the way mail really arrives there.

``ImapWorld`` offers the emulator's mail controls the tests use (``deliver``, ``deliver_many``, ``send``,
a listing oracle, request counts, lost delta state) with the same fields, so one test body runs against
either provider:

- mail for an Inbox without an explicit ``received`` time arrives through LMTP (as from an MTA); mail with
  one, and every Sent copy, is APPENDed with that INTERNALDATE (LMTP cannot backdate);
- ``send`` files the sender's copy in Sent and delivers to the recipients of this world through LMTP;
- the listing oracle reads the folders with IMAPClient directly (never through the adapter);
- ``requests`` counts the IMAP commands Dovecot's trace saw; ``expire_delta_state`` gives Inbox and Sent
  a new UIDVALIDITY.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from imapclient import IMAPClient

from sync_core.adapters.imap.account import ImapAccount, ImapLimits, Security
from sync_core.domain.model import Mailbox
from tools.mailserver import MailServer

PASSWORD = "imap-test-password"
FOLDERS = {"inbox": "INBOX", "sentitems": "Sent"}
_APPENDUID = re.compile(rb"APPENDUID (\d+) (\d+)")


def _parse_time(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


class ImapWorld:
    """Users ``adele`` and ``megan`` (and any other name) of a fresh domain on the shared Dovecot."""

    def __init__(self, server: MailServer) -> None:
        self.server = server
        self.domain = f"t{uuid.uuid4().hex[:10]}.imap.example"
        self._clients: dict[str, IMAPClient] = {}
        for user in ("adele", "megan"):
            server.add_user(self.address(user), PASSWORD)

    # -- people -------------------------------------------------------------------------------------

    def address(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def account_for(self, mailbox: Mailbox) -> ImapAccount:
        return ImapAccount(self.server.host, self.server.ports.imaps, Security.TLS, mailbox.address, PASSWORD)

    def limits(self) -> ImapLimits:
        return ImapLimits(ca_file=str(self.server.ca_pem))

    def _client(self, user: str) -> IMAPClient:
        client = self._clients.get(user)
        if client is None:
            client = IMAPClient(self.server.host, self.server.ports.imaps, ssl_context=self.server.ssl_context())
            client.login(self.address(user), PASSWORD)
            self._clients[user] = client
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.logout()
        self._clients.clear()

    # -- mail ---------------------------------------------------------------------------------------

    def deliver(self, user: str, **fields: Any) -> dict[str, Any]:
        """One message into the user's folder (``folder`` default inbox); its ids (``id`` and
        ``immutableId`` are the adapter's source id: uidvalidity/uid/folder)."""
        folder = FOLDERS[fields.pop("folder", "inbox")]
        received = _parse_time(fields.pop("received", None))
        raw, message_id = self.build(user, **fields)
        if folder == "INBOX" and received is None:
            self.server.deliver(self.address(user), raw)
            client = self._client(user)
            client.select_folder(folder, readonly=True)
            uid = client.search(["HEADER", "Message-ID", message_id.strip("<>")])[-1]
            uidvalidity = client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"]
        else:
            answer = self._client(user).append(folder, raw, msg_time=received or datetime.now(UTC))
            found = _APPENDUID.search(answer)
            assert found is not None, answer
            uidvalidity, uid = int(found.group(1)), int(found.group(2))
        source_id = f"{uidvalidity}/{uid}/{folder}"
        return {"id": source_id, "immutableId": source_id, "internetMessageId": message_id}

    def deliver_many(
        self, user: str, count: int, *, start: datetime, interval_seconds: float = 1, **fields: Any
    ) -> None:
        """``count`` messages from one template (subjects get `` #n``), received going back from ``start``."""
        subject = fields.pop("subject", "Message")
        for n in range(1, count + 1):
            when = start - timedelta(seconds=interval_seconds * (n - 1))
            self.deliver(user, subject=f"{subject} #{n}", received=when, **fields)

    def send(self, user: str, **fields: Any) -> dict[str, Any]:
        """Sent by ``user``: a copy in their Sent folder, and through LMTP in the Inbox of each recipient
        of this world."""
        raw, message_id = self.build(user, **{**fields, "from_": self.address(user)})
        self._client(user).append("Sent", raw, msg_time=datetime.now(UTC))
        local = {self.address(u) for u in ("adele", "megan")}
        recipients = [a.lower() for a in [*fields.get("to", []), *fields.get("cc", [])] if a.lower() in local]
        if recipients:
            self.server.deliver(recipients, raw, self.address(user))
        return {"sent": {"internetMessageId": message_id}}

    def build(self, user: str, **fields: Any) -> tuple[bytes, str]:
        """An RFC 822 message from the emulator's fields; (bytes, Message-ID)."""
        message = EmailMessage()
        message["From"] = fields.get("from_") or fields.get("from") or "someone@elsewhere.example"
        if fields.get("to"):
            message["To"] = ", ".join(fields["to"])
        if fields.get("cc"):
            message["Cc"] = ", ".join(fields["cc"])
        message["Subject"] = fields.get("subject", "")
        sent = _parse_time(fields.get("sent") or fields.get("received")) or datetime.now(UTC)
        message["Date"] = format_datetime(sent)
        message_id = fields.get("internet_message_id") or make_msgid(domain=self.domain)
        message["Message-ID"] = message_id
        if fields.get("in_reply_to"):
            message["In-Reply-To"] = fields["in_reply_to"]
        if fields.get("references"):
            message["References"] = " ".join(fields["references"])
        for header in fields.get("headers", []):
            message[header["name"]] = header["value"]
        body = fields.get("body", "Hello")
        message.set_content(body, subtype="html" if fields.get("body_type") == "html" else "plain")
        for attachment in fields.get("attachments", []):
            maintype, _, subtype = attachment.get("content_type", "application/octet-stream").partition("/")
            data = (b"%PDF-1.4 test " * (attachment.get("size", 100) // 14 + 1))[: attachment.get("size", 100)]
            message.add_attachment(data, maintype=maintype, subtype=subtype, filename=attachment["name"])
        return message.as_bytes(), message_id

    # -- oracles and faults ---------------------------------------------------------------------------

    def listing(self, user: str, folder: str) -> list[dict[str, Any]]:
        """What the folder holds (subject, Message-ID), read with IMAPClient directly, not the adapter."""
        client = self._client(user)
        client.select_folder(FOLDERS[folder], readonly=True)
        uids = client.search(["ALL"])
        found = []
        for chunk in _chunks(uids, 500):
            for item in client.fetch(chunk, ["ENVELOPE"]).values():
                envelope = item[b"ENVELOPE"]
                found.append({
                    "subject": (envelope.subject or b"").decode(),
                    "internetMessageId": (envelope.message_id or b"").decode(),
                })  # fmt: skip
        return found

    def requests(self, user: str) -> dict[str, Any]:
        return {"requests": self.server.imap_commands(self.address(user))}

    def expire_delta_state(self, user: str) -> None:
        for folder in FOLDERS.values():
            self.server.change_uidvalidity(self.address(user), folder, uuid.uuid4().int % 2_000_000_000 + 1)


def _chunks(values: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])
