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
from dataclasses import dataclass, field, replace
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


SYNCABLE_STATUSES = frozenset({MailboxStatus.ACTIVE, MailboxStatus.ERROR})
"""Statuses a run syncs: ``error`` too, so a mailbox whose failure was fixed recovers by itself."""


class Ambiguity(StrEnum):
    """What to do with an address that matches several CRM records: ``skip`` the message, log it on
    ``all`` of them, or ``prefer`` the first record type in ``OrgSettings.type_order``."""

    SKIP = "skip"
    ALL = "all"
    PREFER = "prefer"


class RunStatus(StrEnum):
    """How a sync run, or the queue message that asked for it, ended (run reports, logs, the queue).

    ``done`` caught up; ``more`` budget spent or a transient failure: continue soon; ``busy`` another run
    holds the lease (or took it from this one, which stopped without writing); ``skipped`` the mailbox
    cannot sync now; ``failed`` a configuration or grant failure; ``invalid`` (queue only) the message
    was not a command this version knows, and was dropped."""

    DONE = "done"
    MORE = "more"
    BUSY = "busy"
    SKIPPED = "skipped"
    FAILED = "failed"
    INVALID = "invalid"


class RequestStatus(StrEnum):
    """What a "Sync now" or backfill request did: ``queued`` a message, or ``coalesced`` with one queued."""

    QUEUED = "queued"
    COALESCED = "coalesced"


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
    delegated sign-in activate nothing until the CRM confirms it for the CRM user who started it.

    ``record_backfill_days`` (0-365, 0 = off): when a record is created or gains an address or a domain,
    mail exchanged with the new ones within that many days is imported from every syncable mailbox of the
    org (``use_cases.record_backfill``)."""

    internal_domains: tuple[str, ...] = ()
    never_log: tuple[str, ...] = ()
    blocked_domains: tuple[str, ...] = ()
    bulk_filters: BulkFilters = field(default_factory=BulkFilters)
    match_by_domain: bool = False
    ambiguity: Ambiguity = Ambiguity.SKIP
    type_order: tuple[str, ...] = ()
    folders: FolderFilter = FolderFilter.DEFAULT
    poll_interval_minutes: int = 5
    return_url_allow_list: tuple[str, ...] = ()
    webhook_url: str | None = None
    automation_enabled: bool = True
    allowed_tenants: tuple[str, ...] = ()
    connect_confirmation: bool = True
    record_backfill_days: int = 0
    sending_enabled: bool = False
    """Mail may be sent from the CRM through the org's mailboxes (docs/sending.md); off by default, since
    it needs more permissions (Mail.Send, and Mail.ReadWrite for the draft)."""


POLLED_PROVIDERS = frozenset({"imap"})
"""Providers whose mailboxes are only polled (no change notifications); the others push."""


@dataclass(frozen=True)
class Mailbox:
    """A connected mailbox. ``watermark`` is the connect time: nothing received before it is synced
    unless a backfill moved it back explicitly. ``aliases`` include the primary address.

    ``provider`` names the adapter package that reaches the mailbox (a key of the composition root's
    provider table: ``microsoft``, ``imap``, ``google``); it is fixed at connect and stored with the
    mailbox, and a row written before providers existed reads as ``microsoft``."""

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
    provider: str = "microsoft"

    def owns(self, address: str) -> bool:
        return address in self.aliases or address == self.address

    # -- rules ---------------------------------------------------------------------------------------

    def sync_refusal(self, automation_enabled: bool = True) -> tuple[MailboxStatus, str] | None:
        """Why the mailbox may not sync now: the status it is held in and the reason in words, or None
        when it may. ``error`` may always sync (a run is how it recovers); ``paused`` covers a disabled
        mailbox and an org whose automation is off."""
        if self.status not in SYNCABLE_STATUSES:
            return self.status, self.status_reason
        if not self.enabled:
            return MailboxStatus.PAUSED, "the mailbox is disabled"
        if not automation_enabled:
            return MailboxStatus.PAUSED, "automation is switched off for the organisation"
        return None

    def can_sync_status(self) -> bool:
        """Is the stored status one a run syncs (``active`` or ``error``), whatever the switches say?"""
        return self.status in SYNCABLE_STATUSES

    def can_sync(self, automation_enabled: bool = True) -> bool:
        """May a run (timer, queue, Sync now, backfill) sync this mailbox now?"""
        return self.enabled and automation_enabled and self.status in SYNCABLE_STATUSES

    def wants_push(self, automation_enabled: bool = True) -> bool:
        """Should Graph notify us of its changes? Only while it syncs and is healthy (not ``error``), and
        only for a provider that pushes (an IMAP mailbox is polled: ``POLLED_PROVIDERS``)."""
        pushes = self.provider not in POLLED_PROVIDERS
        return pushes and self.status is MailboxStatus.ACTIVE and self.can_sync(automation_enabled)

    def effective_status(self, automation_enabled: bool = True) -> tuple[MailboxStatus, str]:
        """The status and reason the CRM sees: an ``active`` mailbox that is disabled, or whose org's
        automation is off, shows as ``paused``; every other status shows as stored."""
        if self.status is MailboxStatus.ACTIVE:
            if not self.enabled:
                return MailboxStatus.PAUSED, "disabled by the CRM"
            if not automation_enabled:
                return MailboxStatus.PAUSED, "automation is disabled for the organisation"
        return self.status, self.status_reason

    # -- transitions (each returns a new Mailbox; storing it is the caller's compare-and-set) ------

    def with_status(self, status: MailboxStatus, reason: str = "") -> Mailbox:
        return replace(self, status=status, status_reason=reason)

    def failed(self, status: MailboxStatus, reason: str) -> Mailbox:
        """A run's failure held against the mailbox: ``error`` (configuration) or ``needs_reauth`` (grant)."""
        return self.with_status(status, reason)

    def recovered(self) -> Mailbox:
        """A run succeeded: an ``error`` is cleared; any other status stays as it is."""
        return self.with_status(MailboxStatus.ACTIVE) if self.status is MailboxStatus.ERROR else self

    def signed_out(self, reason: str) -> Mailbox:
        return self.with_status(MailboxStatus.NEEDS_REAUTH, reason)

    def disconnected(self) -> Mailbox:
        return self.with_status(MailboxStatus.DISCONNECTED, "disconnected")

    def backfilled(self, since: datetime) -> Mailbox:
        """The watermark moved back to ``since``, never forward."""
        return replace(self, watermark=since) if since < self.watermark else self


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
    sent_from_crm: bool = False
    send_id: str | None = None
    """``sent_from_crm``: the CRM sent this message (``use_cases.send``), and ``send_id`` names that send;
    both survive every later merge (the sync's Sent Items copy, a recipient's mailbox)."""
