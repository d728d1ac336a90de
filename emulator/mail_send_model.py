"""What the mail emulator remembers about sending: mailbox rights, limits' windows, the outbox of mail to
recipients outside the emulator, and attachment upload sessions. Facts and sources: docs/graph-send-facts.md.

Invariants:

* Everything here is guarded by :attr:`emulator.mail.MailStore.lock` and persisted with the mail store
  (``--persist``); nothing here locks or does I/O.
* Sending-limit windows hold wall-clock times (``time.time()``), so a restored emulator still counts the
  sends of the last minute and day, as Exchange Online's rolling windows do.
* An upload session's ``token`` is 256 random bits; the upload URL carries it and is the only credential
  its ``PUT``s need (the real uploadUrl "is pre-authenticated and contains the appropriate authorization
  token", learn.microsoft.com/graph/outlook-large-attachments).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .mail_model import Message

MIB = 1024 * 1024
# learn.microsoft.com/graph/outlook-large-attachments: "under 3 MB" in one POST, "between 3 MB and 150 MB"
# through an upload session; learn.microsoft.com/graph/api/attachment-createuploadsession: byte ranges
# "up to 4 MB each time"; "By default, this message size limit is 35 MB".
INLINE_ATTACHMENT_LIMIT = 3 * MIB
UPLOAD_SESSION_MINIMUM = 3 * MIB
UPLOAD_SESSION_MAXIMUM = 150 * MIB
UPLOAD_CHUNK_LIMIT = 4 * MIB
GRAPH_REQUEST_LIMIT = 4 * MIB  # microsoft-graph-docs #85: "a 4MB limit on the size of a request"
UPLOAD_SESSION_LIFETIME_S = 2 * 3600
RIGHTS = ("FullAccess", "SendAs", "SendOnBehalf")


@dataclass
class SendLimits:
    """Exchange Online's sending limits (learn.microsoft.com/office365/servicedescriptions/
    exchange-online-service-description/exchange-online-limits#sending-limits): 30 messages a minute,
    10,000 recipients a day (rolling 24 h), 500 recipients a message; 35 MB message size by default."""

    messages_per_minute: int = 30
    recipients_per_day: int = 10_000
    recipients_per_message: int = 500
    max_message_size: int = 35 * MIB


@dataclass
class OutboxEntry:
    """One message that left the emulator for recipients outside its directory (an SMTP hand-off)."""

    id: str
    sender_id: str
    from_address: str
    internet_message_id: str
    subject: str
    to: list[str]
    cc: list[str]
    envelope: list[str]  # every external address it went to (Bcc included; never in a header)
    sent: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sender": self.sender_id,
            "from": self.from_address,
            "internetMessageId": self.internet_message_id,
            "subject": self.subject,
            "to": list(self.to),
            "cc": list(self.cc),
            "envelope": list(self.envelope),
            "sent": self.sent.isoformat(),
        }


@dataclass
class UploadSession:
    """A large-attachment upload in progress: bytes arrive in order, then become an attachment."""

    id: str
    token: str
    user_id: str
    tenant_id: str
    message_id: str  # immutable id of the message the attachment goes to
    name: str
    content_type: str
    size: int
    is_inline: bool
    content_id: str | None
    expires: datetime
    received: bytearray = field(default_factory=bytearray)


@dataclass
class HeldSubmission:
    """A submitted message waiting in its mailbox's Outbox (the mailbox's submissions are held)."""

    owner_id: str
    message: Message  # the Outbox copy when ``saved``, else the only copy (in no folder)
    saved: bool
    recipients: list[str]
    fields: dict[str, Any]  # what each recipient's copy is made of
    raw_mime: bytes | None = None


@dataclass
class SendingState:
    """Rights, limits' windows, the outbox and upload sessions of every mailbox."""

    # (owner mailbox id, user id) -> rights the user holds on the owner's mailbox (FullAccess, SendAs,
    # SendOnBehalf: Exchange Online mailbox permissions).
    rights: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # sender mailbox id -> submission times (last minute) / (time, recipient count) of the last day
    messages: dict[str, deque[float]] = field(default_factory=dict)
    recipients: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)
    outbox: list[OutboxEntry] = field(default_factory=list)
    uploads: dict[str, UploadSession] = field(default_factory=dict)
    # mailboxes whose submissions wait in the Outbox until released (control API), and what waits
    holding: set[str] = field(default_factory=set)
    held: list[HeldSubmission] = field(default_factory=list)

    def has_right(self, owner_id: str, user_id: str | None, *names: str) -> bool:
        granted = self.rights.get((owner_id, user_id or ""), set())
        return any(name in granted for name in names)

    def quota_wait(self, sender_id: str, recipient_count: int, limits: SendLimits, now: float) -> int | None:
        """Seconds until ``sender_id`` may submit a message to ``recipient_count`` recipients, or None."""
        minute = self.messages.setdefault(sender_id, deque())
        while minute and minute[0] <= now - 60:
            minute.popleft()
        day = self.recipients.setdefault(sender_id, deque())
        while day and day[0][0] <= now - 86_400:
            day.popleft()
        waits = []
        if len(minute) >= limits.messages_per_minute:
            waits.append(minute[0] + 60 - now)
        if sum(n for _, n in day) + recipient_count > limits.recipients_per_day:
            # the oldest submissions must age out until the new one fits
            total, needed = sum(n for _, n in day), recipient_count
            for moment, count in day:
                total -= count
                if total + needed <= limits.recipients_per_day:
                    waits.append(moment + 86_400 - now)
                    break
            else:
                waits.append(86_400.0)
        return max(1, int(max(waits)) + 1) if waits else None

    def count_submission(self, sender_id: str, recipient_count: int, now: float | None = None) -> None:
        moment = time.time() if now is None else now
        self.messages.setdefault(sender_id, deque()).append(moment)
        self.recipients.setdefault(sender_id, deque()).append((moment, recipient_count))
