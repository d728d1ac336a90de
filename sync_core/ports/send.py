"""The sending ports: ``MailSender`` (a provider sends a message from a mailbox) and ``SendStore`` (the
sends the CRM asked for, their idempotency keys, attachment bytes, due times and per-mailbox pacing).

``MailSender`` is shaped so that three providers fit it with the same state machine
(``use_cases.send.machine``):

- Microsoft Graph: ``prepare`` creates a draft (immutable id: the ``handle``) with its attachments,
  ``submit`` sends that draft, ``inspect`` reads the same id (in Drafts: not sent; elsewhere: sent).
- Gmail: ``prepare`` builds raw MIME carrying our Message-ID (derived from the send id) and keeps it in
  the worker's memory (nothing is created at Google), ``submit`` is ``messages.send``, ``inspect`` finds
  the sent copy by that Message-ID; a worker that died with the MIME makes ``inspect`` answer
  ``NOT_PREPARED`` and the machine prepares the same message again (``prepare`` is deterministic).
- SMTP: ``prepare`` builds the MIME (our Message-ID) and keeps it, ``submit`` hands it to the server and
  APPENDs it to Sent; ``inspect`` looks for the Message-ID in Sent. A lost answer from the server proves
  nothing, so ``inspect`` says ``UNKNOWN`` and the send fails as ``outcome_unknown``, never resent.

No provider's wire shape appears here: handles are opaque strings the store keeps and hands back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from sync_core.domain.model import EmailAddress, Mailbox
from sync_core.domain.sending import PacingWindow, Send
from sync_core.ports.storage import Page, Versioned


@dataclass(frozen=True)
class OutgoingAttachment:
    name: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class ReplyTarget:
    """The message a send replies to. ``source_id``: the provider's id of the original in this mailbox,
    or empty when the mailbox no longer has it (the reply then carries ``In-Reply-To``/``References``
    itself, through the provider's MIME path)."""

    internet_message_id: str
    references: tuple[str, ...] = ()
    source_id: str = ""


@dataclass(frozen=True)
class OutgoingMessage:
    """What a sender sends. ``send_id`` correlates the provider's draft with the send (a custom header
    or property on the draft), so a draft whose handle was never checkpointed can be found again."""

    send_id: str
    sender: EmailAddress
    to: tuple[EmailAddress, ...]
    cc: tuple[EmailAddress, ...]
    bcc: tuple[EmailAddress, ...]
    subject: str
    content_type: str  # "text" or "html"
    content: str
    attachments: tuple[OutgoingAttachment, ...] = ()
    reply_to: ReplyTarget | None = None
    date: datetime | None = None
    """The message's ``Date``: fixed by the send (when the CRM asked for it), so a sender that builds
    the MIME itself builds the same bytes every time; None: the sender's clock."""


class DraftState(StrEnum):
    """What the provider's own state proves about a handle.

    - ``NOT_SENT``: the draft exists and was provably never submitted; submitting it (again) is safe.
    - ``SENT``: the provider has the sent copy; ``ProviderView.internet_message_id`` is the Message-ID it
      carries (the one the sync will see).
    - ``IN_FLIGHT``: submitted, the sent copy not readable yet (look again later).
    - ``GONE``: the provider has no item under the handle (deleted, or never created).
    - ``UNKNOWN``: the provider cannot tell (SMTP after a lost answer): never resend.
    - ``NOT_PREPARED``: provably not sent, and the prepared message exists nowhere any more (a sender
      that creates nothing at the provider before the submit lost it with the worker that prepared it):
      ``prepare`` the same ``OutgoingMessage`` again, which such a sender does deterministically (the
      same handle, the same bytes), then submit."""

    NOT_SENT = "not_sent"
    SENT = "sent"
    IN_FLIGHT = "in_flight"
    GONE = "gone"
    UNKNOWN = "unknown"
    NOT_PREPARED = "not_prepared"


@dataclass(frozen=True)
class ProviderView:
    state: DraftState
    internet_message_id: str = ""
    sent_at: datetime | None = None
    conversation_id: str = ""


class MailSender(Protocol):
    """Sends from one mailbox through its provider. Every method may raise ``TransientFailure`` (429,
    quota, outage: try later), ``GrantFailure``/``ConfigurationFailure`` (the connection or a permission
    is missing) or ``ProviderRefused`` (the provider refuses this message)."""

    def permission_problem(self, mailbox: Mailbox) -> str | None:
        """Why the mailbox's connection may not send, in words that say what to do (a missing permission
        or consent), or None when it may or the provider cannot tell beforehand."""

    def prepare(self, mailbox: Mailbox, message: OutgoingMessage) -> str:
        """Create the message, attachments included, in the mailbox without sending it; return its
        handle. A reply goes through the provider's reply mechanism (threading headers right). A sender
        whose ``inspect`` may answer ``NOT_PREPARED`` returns the same handle for the same message and
        builds the same bytes, however often it is called."""

    def locate(self, mailbox: Mailbox, send_id: str) -> tuple[str, ...]:
        """Handles of unsent drafts this sender prepared for ``send_id`` (a crash between ``prepare`` and
        its checkpoint leaves one behind)."""

    def discard(self, mailbox: Mailbox, handle: str) -> None:
        """Delete an unsent draft (gone already is fine). Never called on a submitted one."""

    def submit(self, mailbox: Mailbox, handle: str) -> None:
        """Send the prepared draft. Called only when nothing was submitted for this handle yet, or when
        ``inspect`` said ``NOT_SENT`` after an interrupted submit."""

    def inspect(self, mailbox: Mailbox, handle: str) -> ProviderView:
        """What the provider's state proves about the handle (see ``DraftState``)."""


class SendStore(Protocol):
    """The sends of every org. Every change of a send is compare-and-set on its etag."""

    def create(self, send: Send, attachments: Sequence[bytes]) -> tuple[Versioned[Send], bool]:
        """Store a new send with its attachment bytes, unless the org already has a send under its
        ``idempotency_key``: then that send is returned. True when this call created it. Concurrent
        creates with one key leave exactly one send."""

    def by_key(self, org_id: str, idempotency_key: str) -> Versioned[Send] | None: ...

    def get(self, org_id: str, send_id: str) -> Versioned[Send] | None: ...

    def replace(self, send: Send, etag: str) -> Versioned[Send]:
        """Replace if ``etag`` still matches, else ``ConcurrencyConflict``."""

    def content(self, org_id: str, send_id: str) -> tuple[bytes, ...]:
        """The attachment bytes of the send, in request order."""

    def drop_content(self, org_id: str, send_id: str) -> None:
        """Delete the send's attachment bytes (and a request kept apart for its size): a send that ended
        keeps no message content. Dropped already is fine."""

    def for_mailbox(self, org_id: str, mailbox_id: str, cursor: str | None, limit: int) -> Page[Send]:
        """The mailbox's sends, newest first. ValueError for a cursor this store did not produce."""

    def set_due(self, org_id: str, send_id: str, at: datetime | None) -> None:
        """Make the send due at ``at`` (None: not due any more). One due time per send."""

    def due(self, before: datetime, limit: int) -> tuple[tuple[str, str], ...]:
        """(org, send id) of sends due before ``before``, earliest first, of every org."""

    def pacing(self, org_id: str, mailbox_id: str) -> Versioned[PacingWindow] | None: ...

    def put_pacing(self, org_id: str, mailbox_id: str, window: PacingWindow, etag: str | None) -> str:
        """Write the window if ``etag`` still matches (None: only if there is none yet), else
        ``ConcurrencyConflict``; returns the new etag."""
