"""Sends: a message the CRM asked to send through a mailbox, its status and the mailbox's sending pace.

Pure values, no I/O. ``Send`` is what the sends store keeps; ``SendStep`` is how far the state machine
(``use_cases.send.machine``) got with the provider; ``PacingWindow`` is a mailbox's recent sending,
against Exchange Online's documented limits (30 messages a minute, 10,000 recipients a day, rolling;
500 recipients a message).

Invariants:
- A send's ``status`` only moves forward: ``scheduled``/``queued`` → ``sending`` → ``sent``|``failed``,
  or ``scheduled``/``queued`` → ``canceled``; a terminal send never changes status again.
- A send that ended (``sent``, ``failed``, ``canceled``) keeps no body, BCC or attachment bytes.
- ``canceled`` is possible only before the first provider call (``step`` is ``none``): once a draft may
  exist the send is ``sending`` and can no longer be canceled.
- A ``PacingWindow`` grants a slot only if, with it, the last 60 seconds hold at most
  ``MESSAGES_PER_MINUTE`` sends and the last 24 hours at most ``RECIPIENTS_PER_DAY`` recipients; a slot
  granted is never taken back (a send that then fails still counts: conservative).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from sync_core.domain.model import EmailAddress

MESSAGES_PER_MINUTE = 30
RECIPIENTS_PER_DAY = 10_000
RECIPIENTS_PER_MESSAGE = 500
MAX_ATTACHMENT_BYTES = 150 * 1024 * 1024
MAX_SCHEDULE_AHEAD = timedelta(days=30)
MINUTE = timedelta(seconds=60)
DAY = timedelta(hours=24)


class SendStatus(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({SendStatus.SENT, SendStatus.FAILED, SendStatus.CANCELED})
CANCELABLE = frozenset({SendStatus.SCHEDULED, SendStatus.QUEUED})


class SendStep(StrEnum):
    """The last checkpoint of the state machine (see ``use_cases.send.machine`` for what each promises)."""

    NONE = "none"  # no provider call yet
    PREPARING = "preparing"  # about to create the draft (one may exist without its handle)
    PREPARED = "prepared"  # the draft exists, attachments and all; ``handle`` names it
    SUBMITTING = "submitting"  # about to submit the draft (it may have been submitted)
    SUBMITTED = "submitted"  # the provider accepted the submission
    CONFIRMED = "confirmed"  # the sent copy was read back: ``internet_message_id`` is the one it carries


@dataclass(frozen=True)
class AttachmentSpec:
    """An attachment of a send: name, type and size; the bytes are kept apart (``SendStore.content``).
    ``sha256`` of the bytes is part of the request's fingerprint."""

    name: str
    content_type: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SendRequest:
    """What the CRM asked for, validated and normalised (addresses lower-cased, order kept)."""

    to: tuple[EmailAddress, ...]
    cc: tuple[EmailAddress, ...] = ()
    bcc: tuple[EmailAddress, ...] = ()
    subject: str = ""
    content_type: str = "text"  # "text" or "html"
    content: str = ""
    reply_to_activity_id: str = ""
    record_ids: tuple[str, ...] = ()
    attachments: tuple[AttachmentSpec, ...] = ()
    send_at: datetime | None = None

    @property
    def recipients(self) -> tuple[EmailAddress, ...]:
        return self.to + self.cc + self.bcc

    @property
    def attachment_bytes(self) -> int:
        return sum(item.size for item in self.attachments)


@dataclass(frozen=True)
class SendError:
    code: str
    message: str


@dataclass(frozen=True)
class Send:
    """A send as stored. ``handle`` is the provider's opaque name of the draft (set from ``prepared``);
    ``internet_message_id`` the Message-ID the sent copy carries (set at ``confirmed``); ``announced``
    whether its terminal webhook event was queued."""

    org_id: str
    send_id: str
    mailbox_id: str
    idempotency_key: str
    fingerprint: str
    request: SendRequest
    created_at: datetime
    status: SendStatus = SendStatus.QUEUED
    step: SendStep = SendStep.NONE
    handle: str = ""
    not_before: datetime | None = None
    sent_at: datetime | None = None
    internet_message_id: str = ""
    activity_id: str = ""
    error: SendError | None = None
    attempts: int = 0
    announced: bool = False
    lease_owner: str = ""
    lease_until: datetime | None = None
    """The worker driving the send's provider steps, until when: another worker leaves it alone until
    then (a crashed worker's lease runs out and the next worker resumes)."""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def at(self, step: SendStep, **changes: object) -> Send:
        """This send checkpointed at ``step`` (status ``sending``), with other fields changed."""
        return replace(self, step=step, status=SendStatus.SENDING, not_before=None, **changes)  # type: ignore[arg-type]

    def waiting(self, not_before: datetime, status: SendStatus = SendStatus.QUEUED) -> Send:
        return replace(self, status=status, not_before=not_before)

    def failed(self, code: str, message: str) -> Send:
        return replace(self, status=SendStatus.FAILED, error=SendError(code, message), not_before=None)

    def canceled(self) -> Send:
        return replace(self, status=SendStatus.CANCELED, not_before=None)

    def forgotten(self) -> Send:
        """This send without the message's content: its body and BCC recipients are dropped once it ended
        (its fingerprint still answers a repeated Idempotency-Key; attachments bytes go with
        ``SendStore.drop_content``)."""
        return replace(self, request=replace(self.request, content="", bcc=()))


@dataclass(frozen=True)
class PacingWindow:
    """A mailbox's slots granted in the last day: (time, recipients) pairs, oldest first."""

    slots: tuple[tuple[datetime, int], ...] = field(default_factory=tuple)

    def trimmed(self, now: datetime) -> PacingWindow:
        return PacingWindow(tuple(slot for slot in self.slots if slot[0] > now - DAY))

    def next_free(self, now: datetime, recipients: int) -> datetime | None:
        """None when a send of ``recipients`` may go now; else the earliest time it may."""
        window = self.trimmed(now)
        waits: list[datetime] = []
        last_minute = [at for at, _ in window.slots if at > now - MINUTE]
        if len(last_minute) >= MESSAGES_PER_MINUTE:
            waits.append(last_minute[-MESSAGES_PER_MINUTE] + MINUTE)
        used = sum(count for _, count in window.slots)
        if used + recipients > RECIPIENTS_PER_DAY:
            freed = 0
            for at, count in window.slots:  # the day frees up as the oldest slots age out
                freed += count
                if used - freed + recipients <= RECIPIENTS_PER_DAY:
                    waits.append(at + DAY)
                    break
        return max(waits) if waits else None

    def granted(self, now: datetime, recipients: int) -> PacingWindow:
        return PacingWindow((*self.trimmed(now).slots, (now, recipients)))
