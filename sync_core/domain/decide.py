"""The decision pipeline: whether a message is logged, on which CRM records, and why.

``decide`` is pure: it reads only its arguments (the record lookups are in-memory, fetched beforehand).
Checks run in a fixed order — folder, watermark, direction, participants, bulk, internal, never-log,
blocked domains, matching — and each appends one ``DecisionStep``, so *explain* can show a decision check by
check. The first failing check's ``Reason`` is the decision; a stored message's reason is ``MATCHED``.
Only From/To/Cc are ever participants (a ``MailMessage`` carries no BCC).

``DecisionContext`` holds what depends only on the mailbox and settings (normalised once per page);
``decide`` is ``DecisionContext.screen`` (every check before matching) then ``Screening.finish`` (matching).
A screening names the only record lookups matching can make, so a caller fetches just those.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sync_core.domain.addresses import is_free_mail, normalize_address, normalize_domain
from sync_core.domain.lookup import RecordLookup
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
_BULK_HEADERS = frozenset({"list-unsubscribe", "list-id", "precedence", "auto-submitted"})
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
    """Decide whether ``message``, seen in ``mailbox``, is logged under ``settings``; explain each check.

    For many messages of one mailbox, build one ``DecisionContext`` and use it instead: same decisions."""
    return DecisionContext.of(mailbox, settings).decide(message, records)


@dataclass(frozen=True)
class DecisionContext:
    """Everything ``decide`` derives from the mailbox and the settings alone, normalised once (per page)."""

    mailbox: Mailbox
    settings: OrgSettings
    owners: frozenset[str]
    internal: frozenset[str]
    never_log_addresses: frozenset[str]
    never_log_domains: frozenset[str]
    blocked: frozenset[str]
    internal_listing: str
    watermark: datetime
    watermark_text: str

    @classmethod
    def of(cls, mailbox: Mailbox, settings: OrgSettings) -> DecisionContext:
        owners = _owner_addresses(mailbox)
        internal = _internal_domains(owners, settings)
        # Never-log entries are addresses or domains (a domain covers its subdomains), org-wide or per mailbox.
        entries = (*settings.never_log, *mailbox.never_log)
        watermark = _to_the_second(mailbox.watermark)
        return cls(
            mailbox=mailbox,
            settings=settings,
            owners=owners,
            internal=internal,
            never_log_addresses=frozenset(a for entry in entries if (a := _address_entry(entry))),
            never_log_domains=_domains(entry for entry in entries if _address_entry(entry) is None),
            blocked=_domains(settings.blocked_domains),
            internal_listing=_listing(sorted(internal)),
            watermark=watermark,
            watermark_text=f"watermark {watermark.isoformat()}",
        )

    def decide(self, message: MailMessage, records: RecordLookup) -> Decision:
        return self.screen(message).finish(records)

    def screen(self, message: MailMessage) -> Screening:
        """Every check before matching; the screening says which records lookups matching may make."""
        mailbox, settings = self.mailbox, self.settings
        trail = _Trail()
        if stop := trail.check("folder", *_folder_check(message)):
            return trail.refused(stop, settings)
        if stop := trail.check("watermark", *_watermark_check(message, self.watermark, self.watermark_text)):
            return trail.refused(stop, settings)

        owners = self.owners
        direction, direction_detail = _direction_of(message, owners)
        allowed = mailbox.directions.allows(direction)
        detail = direction_detail if allowed else f"{direction_detail}; mailbox logs {mailbox.directions.value} only"
        if stop := trail.check("direction", None if allowed else Reason.DIRECTION_EXCLUDED, detail):
            return trail.refused(stop, settings, direction)

        others = tuple(party for party in message.participants if party.address not in owners)
        detail = f"participants besides the mailbox owner: {_listing(others)}" if others else "only the mailbox owner"
        if stop := trail.check("participants", None if others else Reason.NO_PARTICIPANTS, detail):
            return trail.refused(stop, settings, direction)

        if stop := trail.check("bulk", *_bulk_check(message, settings)):
            return trail.refused(stop, settings, direction)

        external = tuple(party for party in others if not _in_domains(party.domain, self.internal))
        detail = f"internal domains: {self.internal_listing}; external: {_listing(external)}"
        if stop := trail.check("internal", None if external else Reason.INTERNAL, detail):
            return trail.refused(stop, settings, direction)

        loggable, detail = _drop(
            external,
            lambda p: p.address in self.never_log_addresses or _in_domains(p.domain, self.never_log_domains),
            "no participant is on a never-log list",
            "never logged",
        )
        if stop := trail.check("never_log", None if loggable else Reason.NEVER_LOG, detail):
            return trail.refused(stop, settings, direction)

        candidates, detail = _drop(
            loggable,
            lambda p: _in_domains(p.domain, self.blocked),
            "no participant is on a blocked domain",
            "blocked domains",
        )
        if stop := trail.check("blocked_domain", None if candidates else Reason.BLOCKED_DOMAIN, detail):
            return trail.refused(stop, settings, direction)
        return Screening(settings, direction, trail.steps(), None, candidates)


@dataclass(frozen=True)
class Screening:
    """A message after every check before matching: refused (``refusal``) or left with ``candidates``.

    ``addresses`` and ``domains`` are every key ``finish`` may ask its ``RecordLookup`` for; a lookup
    that answers those (and no others) gives the same decision as one that answers everything."""

    settings: OrgSettings
    direction: Direction | None
    steps: tuple[DecisionStep, ...]
    refusal: Decision | None
    candidates: tuple[EmailAddress, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(party.address for party in self.candidates)

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(party.domain for party in self.candidates if _may_match_by_domain(party, self.settings))

    def finish(self, records: RecordLookup) -> Decision:
        """The decision: the refusal, else the outcome of matching the candidates against ``records``."""
        if self.refusal is not None:
            return self.refusal
        matches, ambiguous, detail = _match(self.candidates, self.settings, records)
        outcome = None if matches else (Reason.AMBIGUOUS if ambiguous else Reason.UNMATCHED)
        steps = (*self.steps, DecisionStep(check="match", passed=outcome is None, detail=detail))
        if outcome is not None:
            return Decision(store=False, reason=outcome, direction=self.direction, steps=steps)
        return Decision(store=True, reason=Reason.MATCHED, direction=self.direction, matches=matches, steps=steps)


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

    def refused(self, reason: Reason, settings: OrgSettings, direction: Direction | None = None) -> Screening:
        steps = self.steps()
        refusal = Decision(store=False, reason=reason, direction=direction, steps=steps)
        return Screening(settings, direction, steps, refusal)


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


def _watermark_check(message: MailMessage, watermark: datetime, watermark_text: str) -> tuple[Reason | None, str]:
    """Compared in whole seconds: Graph reports receivedDateTime to the second, so mail that arrives in
    the second a mailbox was connected counts as new. ``watermark`` is ``_to_the_second`` already."""
    received = _to_the_second(message.received_at)
    detail = f"received {received.isoformat()}, {watermark_text}"
    return (Reason.BEFORE_WATERMARK if received < watermark else None), detail


def _to_the_second(moment: datetime) -> datetime:
    return _as_utc(moment).replace(microsecond=0)


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
    headers: dict[str, str] = {}
    for name, value in message.headers:  # the first of each, as ``MailMessage.header``
        if name in _BULK_HEADERS:
            headers.setdefault(name, value)
    findings: list[str] = []
    if filters.list_headers:
        listed = (name for name in ("List-Unsubscribe", "List-Id") if headers.get(name.lower(), "").strip())
        findings += [f"{name} header" for name in listed]
    precedence = headers.get("precedence", "").strip().lower()
    if filters.precedence and precedence in _PRECEDENCE_BULK:
        findings.append(f"Precedence: {precedence}")
    auto_submitted = headers.get("auto-submitted", "").partition(";")[0].strip().lower()
    if filters.auto_submitted and auto_submitted not in ("", "no"):
        findings.append(f"Auto-Submitted: {auto_submitted}")
    if filters.noreply_senders and message.sender is not None and is_automated_sender(message.sender.address):
        findings.append(f"automated sender {message.sender.address}")
    if findings:
        return Reason.BULK, "; ".join(findings)
    return None, "no bulk markers"


@functools.lru_cache(maxsize=4_096)
def is_automated_sender(address: str) -> bool:
    """True for no-reply style senders (noreply@, do-not-reply@, mailer-daemon@, bounces+x@, notifications@).

    Role addresses people answer (info@, support@, sales@, hello@) are not automated by themselves.
    """
    local = address.rpartition("@")[0].strip('"').lower()
    tokens = [token for token in _LOCAL_SEPARATORS.split(local) if token]
    if any(token in _AUTOMATED_TOKENS for token in tokens):
        return True
    return any("".join(tokens[start:]).startswith(_NOREPLY_PREFIXES) for start in range(len(tokens)))


def _internal_domains(owners: frozenset[str], settings: OrgSettings) -> frozenset[str]:
    """The org's configured domains plus the domains of the mailbox's own (non free-mail) addresses."""
    configured = _domains(settings.internal_domains)
    owned = {address.rpartition("@")[2] for address in owners if "@" in address}
    return configured | {domain for domain in _domains(owned) if not is_free_mail(domain)}


def _drop(
    parties: Sequence[EmailAddress], dropped_if: Callable[[EmailAddress], bool], none_dropped: str, label: str
) -> tuple[tuple[EmailAddress, ...], str]:
    """Splits off the participants ``dropped_if`` picks: returns the others and the step's detail."""
    dropped = tuple(p for p in parties if dropped_if(p))
    if not dropped:
        return tuple(parties), none_dropped
    kept = tuple(p for p in parties if p not in dropped)
    return kept, f"{label}: {_listing(dropped)}; remaining: {_listing(kept) if kept else 'none'}"


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
    if found or not _may_match_by_domain(party, settings):
        return found, "address"
    return tuple(dict.fromkeys(records.records_for_domain(party.domain))), "domain"


def _may_match_by_domain(party: EmailAddress, settings: OrgSettings) -> bool:
    """Whether a participant with no record of its address is looked up by its domain."""
    return settings.match_by_domain and not is_free_mail(party.domain)


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
    if not domains:
        return False
    while domain not in domains:
        dot = domain.find(".")
        if dot < 0:
            return False
        domain = domain[dot + 1 :]
    return True


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
