"""RFC 822 ingest (spec §4): a raw message uploaded by the CRM (historic upload, legacy BCC/forward
address) goes through the same decision, dedupe and threading path as synced mail (``pipeline``).

Which mailbox a message is seen in:
- ``mailbox_id`` given: that mailbox of the org (its aliases decide the direction, its direction setting
  and never-log list apply, and it is added to the activity's ``mailboxes``). Unknown → ``MailboxNotFound``;
  disconnected → ``MailboxDisconnected``.
- no ``mailbox_id``: the org's own mailbox among the participants: the one that sent it (direction
  ``sent``), else the first To/Cc recipient that is one of the org's connected mailboxes (``received``).
  A message none of the org's mailboxes took part in (a legacy BCC from a user who never connected) is
  logged at org level: the participants on the org's internal domains stand for the owner (sent when one
  of them sent it), and the activity has no mailbox ids.

Invariants:
- An upload is an explicit request, so the mailbox watermark does not apply (historic mail is the point);
  every other check does (drafts, bulk, internal-only, never-log, blocked domains, ambiguity, unmatched).
- The same message arrives at the same activity as when it is synced (keyed by internet message id):
  ingesting it again, or syncing it later, never creates a second one.
- A message that cannot be accepted raises ``InvalidMessage`` before anything is read or written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sync_core.domain.addresses import normalize_domain
from sync_core.domain.mime import MAX_MESSAGE_BYTES, parse_rfc822
from sync_core.domain.model import Mailbox, MailboxStatus, MailMessage, OrgSettings, activity_id_for
from sync_core.errors import MailboxDisconnected, MailboxNotFound
from sync_core.ports import ActivityStore, Clock, MailboxRepository, RecordsIndex, SettingsRepository
from sync_core.ports.push import ActivityEvents
from sync_core.use_cases.pipeline import build_activities

NO_WATERMARK = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class IngestDeps:
    mailboxes: MailboxRepository
    settings: SettingsRepository
    records: RecordsIndex
    activities: ActivityStore
    clock: Clock
    events: ActivityEvents | None = None


@dataclass(frozen=True)
class IngestResult:
    """``outcome``: ``created`` (a new activity), ``merged`` (an existing activity gained this mailbox or
    records), ``unchanged`` (already logged exactly so) or ``not_logged`` (``reason`` says why)."""

    outcome: str
    reason: str
    internet_message_id: str
    activity_id: str | None
    mailbox_id: str | None
    direction: str | None


def ingest(
    deps: IngestDeps,
    org_id: str,
    raw: bytes,
    mailbox_id: str | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> IngestResult:
    message = parse_rfc822(raw, max_bytes=max_bytes, received_fallback=deps.clock.now())
    settings = deps.settings.get(org_id)
    owner = _named_mailbox(deps, org_id, mailbox_id) if mailbox_id else _owner(deps, org_id, message, settings)
    seen_in = replace(owner, watermark=NO_WATERMARK)
    reasons: Counter[str] = Counter()
    activities = build_activities(
        [message], seen_in, settings, records=deps.records, activities=deps.activities, reasons=reasons
    )
    reason = next(iter(reasons))
    if not activities:
        return IngestResult("not_logged", reason, message.internet_message_id, None, owner.mailbox_id or None, None)
    [activity] = activities
    announce_at = deps.clock.now() if deps.events is not None and settings.webhook_url else None
    written = deps.activities.save(activities, announce_at=announce_at)  # with its outbox event (webhooks)
    if written.created:
        outcome = "created"
        if deps.events is not None and written.events:
            deps.events.created(org_id, written.events)
    else:
        outcome = "merged" if written.merged else "unchanged"
    return IngestResult(
        outcome,
        reason,
        message.internet_message_id,
        activity_id_for(org_id, message.internet_message_id),
        owner.mailbox_id or None,
        activity.direction.value,
    )


def _named_mailbox(deps: IngestDeps, org_id: str, mailbox_id: str) -> Mailbox:
    found = deps.mailboxes.get(org_id, mailbox_id)
    if found is None:
        raise MailboxNotFound(f"no mailbox {mailbox_id}")
    if found.value.status is MailboxStatus.DISCONNECTED:
        raise MailboxDisconnected(f"mailbox {mailbox_id} is disconnected")
    return found.value


def _owner(deps: IngestDeps, org_id: str, message: MailMessage, settings: OrgSettings) -> Mailbox:
    mailboxes = [m for m in deps.mailboxes.list(org_id) if m.status is not MailboxStatus.DISCONNECTED]
    if message.sender is not None:
        sender = next((m for m in mailboxes if m.owns(message.sender.address)), None)
        if sender is not None:
            return sender
    for party in (*message.to, *message.cc):
        recipient = next((m for m in mailboxes if m.owns(party.address)), None)
        if recipient is not None:
            return recipient
    internal = {d for raw in settings.internal_domains if (d := normalize_domain(raw))}
    insiders = tuple(p.address for p in message.participants if _within(p.domain, internal))
    return Mailbox(
        org_id=org_id,
        mailbox_id="",
        address=insiders[0] if insiders else "",
        aliases=insiders,
        watermark=NO_WATERMARK,
    )


def _within(domain: str, domains: set[str]) -> bool:
    labels = domain.split(".")
    return any(".".join(labels[start:]) in domains for start in range(len(labels)))
