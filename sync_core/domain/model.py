"""The product's nouns: mailboxes, messages, CRM records, decisions and activities.

Everything here is a plain, immutable value (frozen dataclasses and string enums) with no I/O, so the
decision pipeline and the sync use case can be tested without any storage or network.

Invariants:
- Email addresses inside these values are already normalised (see ``addresses.normalize_address``).
- An activity's id is derived from (org, internet message id) only, so every mailbox, folder, retry
  and ingestion path that sees one message computes the same id: dedupe is a keyed write, not a search.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Direction(StrEnum):
    RECEIVED = "received"
    SENT = "sent"


class DirectionSetting(StrEnum):
    """Which directions a mailbox logs: both (default), only sent ("1-way") or only received."""

    BOTH = "both"
    SENT = "sent"
    RECEIVED = "received"

    def allows(self, direction: Direction) -> bool:
        return self is DirectionSetting.BOTH or self.value == direction.value


class MailboxStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    NEEDS_REAUTH = "needs_reauth"
    ERROR = "error"
    DISCONNECTED = "disconnected"


class ConnectionMode(StrEnum):
    DELEGATED = "delegated"
    APPLICATION = "application"


class Reason(StrEnum):
    """Why a message was stored or not. Counted per run; returned by *explain*."""

    MATCHED = "matched"
    DRAFT = "draft"
    DELETED = "deleted"
    JUNK = "junk"
    EXCLUDED_FOLDER = "excluded_folder"
    BEFORE_WATERMARK = "before_watermark"
    DIRECTION_EXCLUDED = "direction_excluded"
    NO_PARTICIPANTS = "no_participants"
    INTERNAL = "internal"
    NEVER_LOG = "never_log"
    BLOCKED_DOMAIN = "blocked_domain"
    BULK = "bulk"
    AMBIGUOUS = "ambiguous"
    UNMATCHED = "unmatched"


class FolderFilter(StrEnum):
    """Which folders a mailbox syncs: Inbox + Sent Items (default) or every non-system folder."""

    DEFAULT = "default"
    ALL = "all"


@dataclass(frozen=True)
class EmailAddress:
    address: str
    name: str = ""

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True)
class AttachmentSummary:
    name: str
    size: int
    content_type: str


@dataclass(frozen=True)
class MailMessage:
    """A message as the pipeline sees it, whatever its source (Graph delta or RFC 822 upload).

    ``folder`` is a well-known folder name (``inbox``, ``sentitems``, ``drafts``, ``deleteditems``,
    ``junkemail``…) when the folder has one, else the provider's folder id. ``headers`` holds
    (lower-cased name, value) pairs; BCC recipients are never carried.
    """

    source_id: str
    internet_message_id: str
    subject: str
    sender: EmailAddress | None
    to: tuple[EmailAddress, ...]
    cc: tuple[EmailAddress, ...]
    received_at: datetime
    sent_at: datetime | None = None
    body_text: str = ""
    body_preview: str = ""
    body_truncated: bool = False  # body_text is only the start of the body (e.g. an HTML body over its limit)
    conversation_id: str | None = None
    folder: str = "inbox"
    is_draft: bool = False
    has_attachments: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    attachments: tuple[AttachmentSummary, ...] = ()

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    @property
    def participants(self) -> tuple[EmailAddress, ...]:
        """From, To and Cc, de-duplicated by address, in that order. BCC is never a participant."""
        seen: dict[str, EmailAddress] = {}
        for party in ((self.sender,) if self.sender else ()) + self.to + self.cc:
            seen.setdefault(party.address, party)
        return tuple(seen.values())


@dataclass(frozen=True)
class RecordRef:
    record_id: str
    record_type: str


@dataclass(frozen=True)
class Record:
    """A CRM record as pushed into the index: emails and account domains are normalised."""

    record_id: str
    record_type: str
    name: str = ""
    emails: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()

    @property
    def ref(self) -> RecordRef:
        return RecordRef(self.record_id, self.record_type)


@dataclass(frozen=True)
class RecordMatch:
    record_id: str
    record_type: str
    address: str
    by: str = "address"  # "address" or "domain"


@dataclass(frozen=True)
class BulkFilters:
    """Each transactional/marketing filter can be switched off per org."""

    list_headers: bool = True
    precedence: bool = True
    auto_submitted: bool = True
    noreply_senders: bool = True


@dataclass(frozen=True)
class OrgSettings:
    """An organisation's logging policy. ``ambiguity`` is ``skip``, ``all`` or ``prefer``;
    with ``prefer``, ``type_order`` ranks record types (first wins).

    Connecting: ``allowed_tenants`` (tenant ids or verified domains, empty = any tenant) restricts whose
    accounts may be connected by delegated sign-in; ``connect_confirmation`` (default on) makes a
    delegated sign-in activate nothing until the CRM confirms it for the CRM user who started it."""

    internal_domains: tuple[str, ...] = ()
    never_log: tuple[str, ...] = ()
    blocked_domains: tuple[str, ...] = ()
    bulk_filters: BulkFilters = field(default_factory=BulkFilters)
    match_by_domain: bool = False
    ambiguity: str = "skip"
    type_order: tuple[str, ...] = ()
    folders: FolderFilter = FolderFilter.DEFAULT
    poll_interval_minutes: int = 5
    return_url_allow_list: tuple[str, ...] = ()
    webhook_url: str | None = None
    automation_enabled: bool = True
    allowed_tenants: tuple[str, ...] = ()
    connect_confirmation: bool = True


@dataclass(frozen=True)
class Mailbox:
    """A connected mailbox. ``watermark`` is the connect time: nothing received before it is synced
    unless a backfill moved it back explicitly. ``aliases`` include the primary address."""

    org_id: str
    mailbox_id: str
    address: str
    aliases: tuple[str, ...]
    watermark: datetime
    mode: ConnectionMode = ConnectionMode.DELEGATED
    tenant_id: str = ""
    graph_user_id: str = ""
    user_id: str = ""
    status: MailboxStatus = MailboxStatus.ACTIVE
    status_reason: str = ""
    enabled: bool = True
    directions: DirectionSetting = DirectionSetting.BOTH
    never_log: tuple[str, ...] = ()

    def owns(self, address: str) -> bool:
        return address in self.aliases or address == self.address


@dataclass(frozen=True)
class DecisionStep:
    """One check of the pipeline as *explain* shows it: which check, passed or not, and why."""

    check: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Decision:
    store: bool
    reason: Reason
    direction: Direction | None = None
    matches: tuple[RecordMatch, ...] = ()
    steps: tuple[DecisionStep, ...] = ()

    @property
    def records(self) -> tuple[RecordRef, ...]:
        seen: dict[str, RecordRef] = {}
        for match in self.matches:
            seen.setdefault(match.record_id, RecordRef(match.record_id, match.record_type))
        return tuple(seen.values())


def activity_id_for(org_id: str, internet_message_id: str) -> str:
    """Deterministic activity id: the same message in the same org always maps to the same id."""
    digest = hashlib.sha256(f"{org_id}\n{internet_message_id.strip().lower()}".encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class Activity:
    """A matched message stored on CRM records. Plain text only; no BCC; attachment names and sizes
    only. ``mailbox_ids`` grows when another mailbox of the org sees the same message."""

    org_id: str
    activity_id: str
    internet_message_id: str
    thread_id: str
    subject: str
    body_text: str
    body_preview: str
    body_truncated: bool
    sender: EmailAddress | None
    to: tuple[EmailAddress, ...]
    cc: tuple[EmailAddress, ...]
    sent_at: datetime | None
    received_at: datetime
    direction: Direction
    mailbox_ids: tuple[str, ...]
    records: tuple[RecordRef, ...]
    attachments: tuple[AttachmentSummary, ...] = ()
    conversation_id: str | None = None
