"""The decision pipeline: whether a message is logged, on which CRM records, and why.

``decide`` is pure: it reads only its arguments (the record lookups are in-memory, fetched beforehand).
Checks run in a fixed order — folder, watermark, direction, participants, bulk, internal, never-log,
blocked domains, matching — and each appends one ``DecisionStep``, so *explain* can show a decision check by
check. The first failing check's ``Reason`` is the decision; a stored message's reason is ``MATCHED``.
Only From/To/Cc are ever participants (a ``MailMessage`` carries no BCC).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sync_core.domain.addresses import is_free_mail, normalize_address, normalize_domain
from sync_core.domain.model import (
    Decision,
    DecisionStep,
    Direction,
    EmailAddress,
    Mailbox,
    MailMessage,
    OrgSettings,
    Reason,
    RecordMatch,
    RecordRef,
)
from sync_core.ports import RecordLookup

DRAFT_FOLDERS = frozenset({"drafts"})
DELETED_FOLDERS = frozenset({"deleteditems", "recoverableitemsdeletions"})
JUNK_FOLDERS = frozenset({"junkemail"})
SYSTEM_FOLDERS = frozenset(
    {"outbox", "conversationhistory", "syncissues", "conflicts", "localfailures", "serverfailures", "scheduled",
     "searchfolders"}
)  # fmt: skip
EXCLUDED_FOLDERS: frozenset[str] = DRAFT_FOLDERS | DELETED_FOLDERS | JUNK_FOLDERS | SYSTEM_FOLDERS
"""Graph well-known folder names never synced. Everything else (inbox, sentitems, archive, clutter, user
folders) is a candidate: mail moved there by rules or by hand is real correspondence."""

_PRECEDENCE_BULK = frozenset({"bulk", "list", "junk"})
# Sender local parts starting (at a ./-/_/+/= boundary) with one of these are automated mail...
_NOREPLY_PREFIXES = (
    "noreply", "donotreply", "donotrespond", "noresponse", "mailerdaemon", "autoreply", "autoresponder",
)  # fmt: skip
# ...and so are local parts containing one of these whole tokens ("bounces+x=y", "calendar-notification").
_AUTOMATED_TOKENS = frozenset(
    {"bounce", "bounces", "postmaster", "daemon", "notification", "notifications", "notify", "newsletter",
     "newsletters", "alerts", "digest", "unsubscribe", "mailer"}
)  # fmt: skip
_LOCAL_SEPARATORS = re.compile(r"[.\-_+=]")
_LISTED = 10  # participants named in a step's detail before "and N more"


def decide(message: MailMessage, mailbox: Mailbox, settings: OrgSettings, records: RecordLookup) -> Decision:
    """Decide whether ``message``, seen in ``mailbox``, is logged under ``settings``; explain each check."""
    trail = _Trail()
    if stop := trail.check("folder", *_folder_check(message)):
        return trail.decision(stop)
    if stop := trail.check("watermark", *_watermark_check(message, mailbox)):
        return trail.decision(stop)

    owners = _owner_addresses(mailbox)
    direction, direction_detail = _direction_of(message, owners)
    allowed = mailbox.directions.allows(direction)
    detail = direction_detail if allowed else f"{direction_detail}; mailbox logs {mailbox.directions.value} only"
    if stop := trail.check("direction", None if allowed else Reason.DIRECTION_EXCLUDED, detail):
        return trail.decision(stop, direction)

    others = tuple(party for party in message.participants if party.address not in owners)
    detail = f"participants besides the mailbox owner: {_listing(others)}" if others else "only the mailbox owner"
    if stop := trail.check("participants", None if others else Reason.NO_PARTICIPANTS, detail):
        return trail.decision(stop, direction)

    if stop := trail.check("bulk", *_bulk_check(message, settings)):
        return trail.decision(stop, direction)

    internal = _internal_domains(mailbox, settings)
    external = tuple(party for party in others if not _in_domains(party.domain, internal))
    detail = f"internal domains: {_listing(sorted(internal))}; external: {_listing(external)}"
    if stop := trail.check("internal", None if external else Reason.INTERNAL, detail):
        return trail.decision(stop, direction)

    loggable, detail = _drop_never_logged(external, mailbox, settings)
    if stop := trail.check("never_log", None if loggable else Reason.NEVER_LOG, detail):
        return trail.decision(stop, direction)

    candidates, detail = _drop_blocked(loggable, settings)
    if stop := trail.check("blocked_domain", None if candidates else Reason.BLOCKED_DOMAIN, detail):
        return trail.decision(stop, direction)

    matches, ambiguous, detail = _match(candidates, settings, records)
    outcome = Reason.AMBIGUOUS if ambiguous else Reason.UNMATCHED
    if stop := trail.check("match", None if matches else outcome, detail):
        return trail.decision(stop, direction)
    return Decision(store=True, reason=Reason.MATCHED, direction=direction, matches=matches, steps=trail.steps())


@dataclass
class _Trail:
    """The steps taken so far."""

    _steps: list[DecisionStep] = field(default_factory=list)

    def check(self, name: str, failure: Reason | None, detail: str) -> Reason | None:
        """Record one check; returns its failure reason (None when it passed)."""
        self._steps.append(DecisionStep(check=name, passed=failure is None, detail=detail))
        return failure

    def steps(self) -> tuple[DecisionStep, ...]:
        return tuple(self._steps)

    def decision(self, reason: Reason, direction: Direction | None = None) -> Decision:
        return Decision(store=False, reason=reason, direction=direction, steps=self.steps())


def _folder_check(message: MailMessage) -> tuple[Reason | None, str]:
    folder = message.folder.strip().lower()
    if message.is_draft or folder in DRAFT_FOLDERS:
        return Reason.DRAFT, f"draft (folder {folder!r})"
    for folders, reason in ((DELETED_FOLDERS, Reason.DELETED), (JUNK_FOLDERS, Reason.JUNK)):
        if folder in folders:
            return reason, f"folder {folder!r}"
    if folder in SYSTEM_FOLDERS:
        return Reason.EXCLUDED_FOLDER, f"excluded system folder {folder!r}"
    return None, f"folder {folder!r}"


def _watermark_check(message: MailMessage, mailbox: Mailbox) -> tuple[Reason | None, str]:
    """Compared in whole seconds: Graph reports receivedDateTime to the second, so mail that arrives in
    the second a mailbox was connected counts as new."""
    received = _as_utc(message.received_at).replace(microsecond=0)
    watermark = _as_utc(mailbox.watermark).replace(microsecond=0)
    detail = f"received {received.isoformat()}, watermark {watermark.isoformat()}"
    return (Reason.BEFORE_WATERMARK if received < watermark else None), detail


def _as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, so naive and aware values compare instead of raising."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _owner_addresses(mailbox: Mailbox) -> frozenset[str]:
    """The mailbox address and aliases, as stored and normalised (``Mailbox.owns`` plus normalisation)."""
    given = (mailbox.address, *mailbox.aliases)
    return frozenset(given) | {normalized for raw in given if (normalized := normalize_address(raw))}


def _direction_of(message: MailMessage, owners: frozenset[str]) -> tuple[Direction, str]:
    """Sent when the sender is one of the owner's addresses (also to themselves), else received."""
    if message.sender is None:
        return Direction.RECEIVED, "received (no sender)"
    if message.sender.address in owners:
        return Direction.SENT, f"sent from owner address {message.sender.address}"
    return Direction.RECEIVED, f"received from {message.sender.address}"


def _bulk_check(message: MailMessage, settings: OrgSettings) -> tuple[Reason | None, str]:
    """Judges only the sender and the headers, never the recipients; each filter can be switched off."""
    filters = settings.bulk_filters
    findings: list[str] = []
    if filters.list_headers:
        findings += [f"{name} header" for name in ("List-Unsubscribe", "List-Id") if _has_header(message, name)]
    precedence = (message.header("precedence") or "").strip().lower()
    if filters.precedence and precedence in _PRECEDENCE_BULK:
        findings.append(f"Precedence: {precedence}")
    auto_submitted = (message.header("auto-submitted") or "").partition(";")[0].strip().lower()
    if filters.auto_submitted and auto_submitted not in ("", "no"):
        findings.append(f"Auto-Submitted: {auto_submitted}")
    if filters.noreply_senders and message.sender is not None and is_automated_sender(message.sender.address):
        findings.append(f"automated sender {message.sender.address}")
    if findings:
        return Reason.BULK, "; ".join(findings)
    return None, "no bulk markers"


def _has_header(message: MailMessage, name: str) -> bool:
    return bool((message.header(name) or "").strip())


def is_automated_sender(address: str) -> bool:
    """True for no-reply style senders (noreply@, do-not-reply@, mailer-daemon@, bounces+x@, notifications@).

    Role addresses people answer (info@, support@, sales@, hello@) are not automated by themselves.
    """
    local = address.rpartition("@")[0].strip('"').lower()
    tokens = [token for token in _LOCAL_SEPARATORS.split(local) if token]
    if any(token in _AUTOMATED_TOKENS for token in tokens):
        return True
    return any("".join(tokens[start:]).startswith(_NOREPLY_PREFIXES) for start in range(len(tokens)))


def _internal_domains(mailbox: Mailbox, settings: OrgSettings) -> frozenset[str]:
    """The org's configured domains plus the domains of the mailbox's own (non free-mail) addresses."""
    configured = _domains(settings.internal_domains)
    owned = {address.rpartition("@")[2] for address in _owner_addresses(mailbox) if "@" in address}
    return configured | {domain for domain in _domains(owned) if not is_free_mail(domain)}


def _drop_never_logged(
    parties: Sequence[EmailAddress], mailbox: Mailbox, settings: OrgSettings
) -> tuple[tuple[EmailAddress, ...], str]:
    """Never-log entries are addresses or domains (a domain covers its subdomains), org-wide or per mailbox."""
    entries = (*settings.never_log, *mailbox.never_log)
    addresses = {normalized for entry in entries if (normalized := _address_entry(entry))}
    domains = _domains(entry for entry in entries if _address_entry(entry) is None)
    dropped = tuple(p for p in parties if p.address in addresses or _in_domains(p.domain, domains))
    kept = tuple(p for p in parties if p not in dropped)
    if not dropped:
        return kept, "no participant is on a never-log list"
    return kept, f"never logged: {_listing(dropped)}; remaining: {_listing(kept) if kept else 'none'}"


def _drop_blocked(parties: Sequence[EmailAddress], settings: OrgSettings) -> tuple[tuple[EmailAddress, ...], str]:
    """Participants on a blocked domain (or a subdomain of one) are ignored for matching."""
    blocked = _domains(settings.blocked_domains)
    dropped = tuple(p for p in parties if _in_domains(p.domain, blocked))
    kept = tuple(p for p in parties if p not in dropped)
    if not dropped:
        return kept, "no participant is on a blocked domain"
    return kept, f"blocked domains: {_listing(dropped)}; remaining: {_listing(kept) if kept else 'none'}"


def _match(
    parties: Sequence[EmailAddress], settings: OrgSettings, records: RecordLookup
) -> tuple[tuple[RecordMatch, ...], bool, str]:
    """Records of each participant (by address, else by non-free-mail domain when enabled), after the
    ambiguity policy. Returns the matches, whether any participant was ambiguous, and the explanation."""
    matches: list[RecordMatch] = []
    ambiguous = False
    notes: list[str] = []
    for party in parties:
        found, by = _candidates(party, settings, records)
        chosen, note = _resolve(found, settings)
        ambiguous = ambiguous or (len(found) > 1 and not chosen)
        matches += [RecordMatch(ref.record_id, ref.record_type, party.address, by) for ref in chosen]
        notes.append(f"{party.address}: {note}" + (f" (by {by})" if found else ""))
    return tuple(matches), ambiguous, _listing(notes, separator="; ")


def _candidates(party: EmailAddress, settings: OrgSettings, records: RecordLookup) -> tuple[tuple[RecordRef, ...], str]:
    found = tuple(dict.fromkeys(records.records_for_address(party.address)))
    if found or not settings.match_by_domain or is_free_mail(party.domain):
        return found, "address"
    return tuple(dict.fromkeys(records.records_for_domain(party.domain))), "domain"


def _resolve(found: tuple[RecordRef, ...], settings: OrgSettings) -> tuple[tuple[RecordRef, ...], str]:
    """Apply the ambiguity policy to one address's records; returns the kept records and a note."""
    if not found:
        return (), "no record"
    if len(found) == 1:
        return found, f"{_ref(found[0])}"
    listed = _listing(_ref(ref) for ref in found)
    policy = settings.ambiguity.strip().lower()  # "skip" and any unknown value: match nothing
    if policy == "all":
        return found, f"{len(found)} records, all logged: {listed}"
    if policy == "prefer":
        for record_type in (kind.strip().lower() for kind in settings.type_order):
            preferred = tuple(ref for ref in found if ref.record_type.lower() == record_type)
            if len(preferred) == 1:
                return preferred, f"{len(found)} records ({listed}), preferred {_ref(preferred[0])}"
            if preferred:
                return (), f"ambiguous: {len(preferred)} records of preferred type {record_type} ({listed})"
    return (), f"ambiguous: {len(found)} records ({listed})"


def _ref(ref: RecordRef) -> str:
    return f"{ref.record_type} {ref.record_id}"


def _address_entry(entry: str) -> str | None:
    """A never-log entry that names an address (``a@b.com``), normalised; None for domain entries."""
    return normalize_address(entry) if "@" in entry.strip().lstrip("@") else None


def _domains(entries: Iterable[str]) -> frozenset[str]:
    return frozenset(domain for entry in entries if (domain := normalize_domain(entry)))


def _in_domains(domain: str, domains: frozenset[str]) -> bool:
    """True when ``domain`` is one of ``domains`` or a subdomain of one."""
    labels = domain.split(".")
    return any(".".join(labels[start:]) in domains for start in range(len(labels)))


def _listing(items: Iterable[object], separator: str = ", ") -> str:
    shown: list[str] = []
    hidden = 0
    for item in items:
        if len(shown) < _LISTED:
            shown.append(item.address if isinstance(item, EmailAddress) else str(item))
        else:
            hidden += 1
    text = separator.join(shown) or "none"
    return f"{text} and {hidden} more" if hidden else text
