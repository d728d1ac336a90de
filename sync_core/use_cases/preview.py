"""Dry-run previews: what a backfill of N days would log, and what a settings change would change, computed
through the real pipeline and storing nothing.

    POST …/mailboxes/{id}/backfill {"days", "dry_run": true, "settings"?}   → preview_backfill
    POST …/settings:preview {"settings", "mailbox_id", "days"}               → preview_settings

Both read the window the way the backfill's run would (a fresh delta of each folder the settings sync,
filtered from the watermark the backfill would set, ``Mailbox.backfilled``), follow its pages to the
end, and decide every message with ``pipeline.decide_messages`` (one records lookup per page), as the
run does; duplicates across folders and pages are decided once, as in a run.

Invariants:
- Stores nothing: no cursor (the delta links are dropped), no activity, no report, no attachment read;
  the answer holds counts, record ids and at most ``SAMPLE_SUBJECTS`` subjects of *matched* messages,
  never anything of unmatched mail.
- Inline and bounded: at most ``PREVIEW_BUDGET`` of wall time and ``PREVIEW_MAX_MESSAGES`` messages; a
  window bigger than that answers the counts so far with ``complete: false`` (a preview is advice, so a
  CRM asks for a shorter window rather than waiting on a job). Provider throttling is the
  ``TransientFailure`` it is (503 with Retry-After at the API), never a partial answer passed as whole.
- The counts are the run's: the same reasons a backfill of that window then reports (``skipped_items``
  included), for the same settings, unless mail arrives or records change in between.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sync_core.domain.folders import DEFAULT_FOLDERS
from sync_core.domain.model import FolderFilter, Mailbox, MailMessage, OrgSettings, Reason
from sync_core.errors import MailboxNotFound, MessageNotFound, NotSyncable
from sync_core.ports import Clock, MailboxRepository, MailSource, RecordsIndex, SettingsRepository
from sync_core.use_cases.pipeline import decide_messages

PREVIEW_BUDGET = timedelta(seconds=20)
PREVIEW_MAX_MESSAGES = 5000
SAMPLE_SUBJECTS = 20


@dataclass
class PreviewDeps:
    mailboxes: MailboxRepository
    settings: SettingsRepository
    records: RecordsIndex
    mail: MailSource
    clock: Clock


@dataclass
class Tally:
    """Counts of one set of settings over the window."""

    reasons: Counter[str] = field(default_factory=Counter)
    per_record: Counter[str] = field(default_factory=Counter)
    sample: list[str] = field(default_factory=list)

    @property
    def logged(self) -> int:
        return self.reasons[Reason.MATCHED.value]

    def to_json(self) -> dict[str, object]:
        return {
            "logged": self.logged,
            "reasons": dict(sorted(self.reasons.items())),
            "records": [{"id": rid, "messages": n} for rid, n in sorted(self.per_record.items())],
            "sample_subjects": list(self.sample),
        }


@dataclass(frozen=True)
class Window:
    mailbox: Mailbox
    since: datetime
    messages: int
    complete: bool


def _mailbox(deps: PreviewDeps, org_id: str, mailbox_id: str) -> Mailbox:
    """The mailbox, refused like a backfill (``NotSyncable``) when it cannot sync: a preview of what
    could not run would only show a connection's errors."""
    found = deps.mailboxes.get(org_id, mailbox_id)
    if found is None:
        raise MailboxNotFound(f"no mailbox {mailbox_id}")
    refusal = found.value.sync_refusal(deps.settings.get(org_id).automation_enabled)
    if refusal is not None:
        status, reason = refusal
        raise NotSyncable(status.value, reason)
    return found.value


def _pages(
    deps: PreviewDeps, mailbox: Mailbox, settings: OrgSettings, window: _Scan
) -> Iterator[list[MailMessage]]:
    """The window's messages, page by page, each once; stops at the budget or the message cap."""
    folders: Sequence[str] = (
        DEFAULT_FOLDERS if settings.folders is not FolderFilter.ALL else deps.mail.folders(mailbox)
    )
    seen: set[str] = set()
    for folder in folders:
        link: str | None = None
        while True:
            if deps.clock.now() >= window.deadline or window.messages >= PREVIEW_MAX_MESSAGES:
                window.complete = False
                return
            try:
                page = deps.mail.delta(mailbox, folder, link, mailbox.watermark)
            except MessageNotFound:
                break  # a folder that is gone has nothing to preview
            window.skipped += page.skipped
            fresh = []
            for message in page.messages:
                if message.internet_message_id in seen:
                    window.replayed += 1
                else:
                    seen.add(message.internet_message_id)
                    fresh.append(message)
            window.messages += len(fresh)
            yield fresh
            if page.delta_link is not None or page.next_link is None:
                break
            link = page.next_link


@dataclass
class _Scan:
    deadline: datetime
    messages: int = 0
    skipped: int = 0
    replayed: int = 0
    complete: bool = True


def _tally(
    tally: Tally, messages: Sequence[MailMessage], mailbox: Mailbox, settings: OrgSettings, records: RecordsIndex
) -> list[str]:
    """Decide and count; returns each message's reason."""
    if not messages:
        return []
    reasons = []
    for message, decision in zip(messages, decide_messages(messages, mailbox, settings, records), strict=True):
        tally.reasons[decision.reason.value] += 1
        reasons.append(decision.reason.value)
        if decision.reason is Reason.MATCHED:
            for ref in decision.records:
                tally.per_record[ref.record_id] += 1
            if len(tally.sample) < SAMPLE_SUBJECTS:
                tally.sample.append(message.subject)
    return reasons


@dataclass(frozen=True)
class BackfillPreview:
    window: Window
    tally: Tally

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": True,
            "since": self.window.since.isoformat(),
            "complete": self.window.complete,
            "messages": self.window.messages,
            **self.tally.to_json(),
        }


def preview_backfill(
    deps: PreviewDeps, org_id: str, mailbox_id: str, days: int, settings: OrgSettings | None = None
) -> BackfillPreview:
    """What ``request_backfill(days)`` would log now, under ``settings`` (default: the stored ones)."""
    mailbox = _mailbox(deps, org_id, mailbox_id)
    chosen = settings or deps.settings.get(org_id)
    start = deps.clock.now()
    moved = mailbox.backfilled(start - timedelta(days=days))
    scan = _Scan(start + PREVIEW_BUDGET)
    tally = Tally()
    for messages in _pages(deps, moved, chosen, scan):
        _tally(tally, messages, moved, chosen, deps.records)
    tally.reasons["skipped_items"] += scan.skipped  # counted like the run's report counts them
    if scan.replayed:
        tally.reasons["replayed_items"] += scan.replayed
    return BackfillPreview(Window(moved, moved.watermark, scan.messages, scan.complete), tally)


@dataclass(frozen=True)
class SettingsPreview:
    window: Window
    current: Tally
    proposed: Tally
    changes: Counter[str]

    def to_json(self) -> dict[str, object]:
        reasons = sorted(set(self.current.reasons) | set(self.proposed.reasons))
        return {
            "since": self.window.since.isoformat(),
            "complete": self.window.complete,
            "messages": self.window.messages,
            "current": self.current.to_json(),
            "proposed": self.proposed.to_json(),
            "delta": {
                "logged": self.proposed.logged - self.current.logged,
                "reasons": {
                    r: d for r in reasons if (d := self.proposed.reasons[r] - self.current.reasons[r])
                },
            },
            "changes": [
                {"from": before, "to": after, "messages": n}
                for (before, after), n in sorted((tuple(k.split("->", 1)), v) for k, v in self.changes.items())
            ],
        }


def preview_settings(
    deps: PreviewDeps, org_id: str, mailbox_id: str, days: int, proposed: OrgSettings
) -> SettingsPreview:
    """The window of a ``days`` backfill decided under the stored and under the proposed settings: how many
    more or fewer messages would be logged, and which reasons moved (``changes``: from → to, counts).
    The window is read once (with the folders of both settings when they differ)."""
    mailbox = _mailbox(deps, org_id, mailbox_id)
    stored = deps.settings.get(org_id)
    start = deps.clock.now()
    moved = mailbox.backfilled(start - timedelta(days=days))
    widest = proposed if proposed.folders is FolderFilter.ALL else stored
    scan = _Scan(start + PREVIEW_BUDGET)
    current, future, changes = Tally(), Tally(), Counter[str]()
    for messages in _pages(deps, moved, widest, scan):
        before = _tally(current, _in_folders(messages, stored), moved, stored, deps.records)
        after = _tally(future, _in_folders(messages, proposed), moved, proposed, deps.records)
        _changes(changes, messages, stored=stored, proposed=proposed, before=before, after=after)
    return SettingsPreview(Window(moved, moved.watermark, scan.messages, scan.complete), current, future, changes)


def _in_folders(messages: Sequence[MailMessage], settings: OrgSettings) -> list[MailMessage]:
    if settings.folders is FolderFilter.ALL:
        return list(messages)
    return [m for m in messages if m.folder in DEFAULT_FOLDERS]


def _changes(
    changes: Counter[str],
    messages: Sequence[MailMessage],
    *,
    stored: OrgSettings,
    proposed: OrgSettings,
    before: Sequence[str],
    after: Sequence[str],
) -> None:
    """Count each message whose reason differs (``not_synced``: outside the folders those settings sync)."""
    old = dict(zip([m.internet_message_id for m in _in_folders(messages, stored)], before, strict=True))
    new = dict(zip([m.internet_message_id for m in _in_folders(messages, proposed)], after, strict=True))
    for message in messages:
        key = message.internet_message_id
        was, becomes = old.get(key, "not_synced"), new.get(key, "not_synced")
        if was != becomes:
            changes[f"{was}->{becomes}"] += 1
