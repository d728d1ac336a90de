"""Sync one mailbox: delta pages → decisions → activities → checkpoint, under a lease and a time budget.

    acquire lease ──> for each folder: page = delta(link or watermark filter)
                        │   decide every message (one records lookup per page)
                        │   fetch attachment names of matched messages ($batch)
                        │   save activities (idempotent, keyed by internet message id)
                        │   checkpoint the folder's next/delta link      <- only after the save
                        └─ until every folder reached its deltaLink, or the budget is spent
                  ──> report; release lease

Invariants:
- A delta link is stored only after the activities of its page are durably written; a crash at any
  point re-reads at most that page, and the keyed, idempotent save makes the re-read harmless.
- A lost delta token (410 / SyncStateNotFound) restarts that folder filtered from the mailbox
  watermark, so a resync never imports mail older than the watermark.
- Unmatched and filtered messages leave nothing but a count in the run report.
- Messages become activities through ``pipeline.build_activities`` (shared with RFC 822 ingest); new
  activities are announced to ``events`` (CRM webhooks) after they are durably written.
- One run per mailbox at a time (lease); a second trigger while one runs is coalesced ("busy").
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sync_core.domain.model import (
    Activity,
    FolderFilter,
    Mailbox,
    MailboxStatus,
    MailMessage,
    OrgSettings,
)
from sync_core.errors import DeltaTokenExpired, MailboxAccessDenied, ReauthRequired, TransientGraphError
from sync_core.ports import (
    ActivityStore,
    Clock,
    CursorStore,
    DeltaPage,
    LeaseStore,
    MailboxRepository,
    MailSource,
    RecordsIndex,
    RunReport,
    RunReportStore,
    SettingsRepository,
)
from sync_core.push_ports import ActivityEvents
from sync_core.use_cases.pipeline import build_activities

log = logging.getLogger(__name__)

DEFAULT_FOLDERS = ("inbox", "sentitems")
REPORTS_KEPT = 50


@dataclass
class SyncDeps:
    mailboxes: MailboxRepository
    settings: SettingsRepository
    records: RecordsIndex
    activities: ActivityStore
    cursors: CursorStore
    leases: LeaseStore
    reports: RunReportStore
    mail: MailSource
    clock: Clock
    table_transactions: Callable[[], int] = lambda: 0
    events: ActivityEvents | None = None


@dataclass(frozen=True)
class SyncOutcome:
    """``status``: ``done`` (caught up), ``more`` (budget spent, continue soon), ``busy`` (another run
    holds the lease), ``skipped`` (mailbox not syncable now) or ``failed`` (see ``report.error``)."""

    status: str
    report: RunReport | None = None
    retry_after: float | None = None


def sync_mailbox(deps: SyncDeps, org_id: str, mailbox_id: str, budget: timedelta = timedelta(minutes=4)) -> SyncOutcome:
    versioned = deps.mailboxes.get(org_id, mailbox_id)
    if versioned is None:
        return SyncOutcome("skipped")
    mailbox = versioned.value
    settings = deps.settings.get(org_id)
    if not (mailbox.enabled and settings.automation_enabled and mailbox.status is MailboxStatus.ACTIVE):
        return SyncOutcome("skipped")
    run_id = uuid.uuid4().hex
    started = deps.clock.now()
    lease_key = f"sync|{org_id}|{mailbox_id}"
    if not deps.leases.acquire(lease_key, run_id, started + budget + timedelta(minutes=1), started):
        return SyncOutcome("busy")
    run = _Run(deps, mailbox, settings, started + budget)
    transactions_before = deps.table_transactions()
    requests_before = deps.mail.requests_made
    try:
        status, error, retry_after = run.execute()
        if status == "failed":
            _set_status(deps, mailbox, error)
    finally:
        deps.leases.release(lease_key, run_id)
    report = RunReport(
        org_id=org_id,
        mailbox_id=mailbox_id,
        run_id=run_id,
        started_at=started,
        finished_at=deps.clock.now(),
        reasons=dict(run.reasons),
        pages=run.pages,
        graph_requests=deps.mail.requests_made - requests_before,
        table_transactions=deps.table_transactions() - transactions_before,
        activities_created=run.created,
        activities_merged=run.merged,
        more=status == "more",
        error=error,
    )
    deps.reports.add(report, keep=REPORTS_KEPT)
    return SyncOutcome(status, report, retry_after)


def _set_status(deps: SyncDeps, mailbox: Mailbox, error: str) -> None:
    status = MailboxStatus.NEEDS_REAUTH if error.startswith("reauth:") else MailboxStatus.ERROR
    current = deps.mailboxes.get(mailbox.org_id, mailbox.mailbox_id)
    if current is not None:
        reason = error.partition(": ")[2] or error
        deps.mailboxes.replace(replace(current.value, status=status, status_reason=reason), current.etag)


class _Run:
    def __init__(self, deps: SyncDeps, mailbox: Mailbox, settings: OrgSettings, deadline: datetime) -> None:
        self.deps = deps
        self.mailbox = mailbox
        self.settings = settings
        self.deadline = deadline
        self.reasons: Counter[str] = Counter()
        self.pages = 0
        self.created = 0
        self.merged = 0
        self.seen: set[str] = set()  # internet message ids decided in this run

    def execute(self) -> tuple[str, str, float | None]:
        """Returns (status, error, retry_after)."""
        try:
            return ("done" if self._sync_folders() else "more"), "", None
        except ReauthRequired as exc:
            return "failed", f"reauth: {exc}", None
        except MailboxAccessDenied as exc:
            return "failed", f"access_denied: {exc}", None
        except TransientGraphError as exc:
            return "more", f"transient: {exc}", exc.retry_after

    def _sync_folders(self) -> bool:
        """Returns True when every folder reached its delta link within the budget."""
        deps, mailbox = self.deps, self.mailbox
        folders = deps.mail.folders(mailbox) if self.settings.folders is FolderFilter.ALL else DEFAULT_FOLDERS
        cursors = {f: Cursor.parse(v) for f, v in deps.cursors.get_all(mailbox.org_id, mailbox.mailbox_id).items()}
        # Folders already caught up are polled together: one $batch for an idle mailbox.
        caught_up = {f: cursors[f].link for f in folders if f in cursors and cursors[f].caught_up}
        resume: dict[str, str | None] = {f: (cursors[f].link or None) if f in cursors else None for f in folders}
        if caught_up:
            try:
                for folder, page in deps.mail.delta_many(mailbox, caught_up).items():
                    resume[folder] = self._apply(page).link
                    if page.delta_link:
                        resume.pop(folder)
            except DeltaTokenExpired:
                self._forget(list(caught_up))
                resume.update(dict.fromkeys(caught_up))
        return all(self._drain(folder, link) for folder, link in resume.items())

    def _drain(self, folder: str, link: str | None) -> bool:
        """Follow one folder's pages until its delta link; False when the budget ran out first."""
        while self.deps.clock.now() < self.deadline:
            try:
                page = self.deps.mail.delta(self.mailbox, folder, link, self.mailbox.watermark)
            except DeltaTokenExpired:
                if link is None:
                    raise
                log.info("delta state lost; resyncing the folder from the watermark")
                self._forget([folder])
                link = None
                continue
            cursor = self._apply(page)
            if cursor.caught_up:
                return True
            link = cursor.link
        return False

    def _forget(self, folders: Sequence[str]) -> None:
        for folder in folders:
            self.deps.cursors.put(self.mailbox.org_id, self.mailbox.mailbox_id, folder, "")

    def _apply(self, page: DeltaPage) -> Cursor:
        """Decide, store, then checkpoint one page; returns the folder's new cursor."""
        self.pages += 1
        self.reasons["skipped_items"] += page.skipped
        activities = self._activities(self._first_sightings(page.messages))
        if activities:
            written = self.deps.activities.save(activities)
            self.created += len(written.created)
            self.merged += len(written.merged)
            if written.created and self.deps.events is not None:
                created = set(written.created)
                self.deps.events.created(self.mailbox.org_id, [a for a in activities if a.activity_id in created])
        cursor = Cursor(caught_up=page.delta_link is not None, link=page.delta_link or page.next_link or "")
        self.deps.cursors.put(self.mailbox.org_id, self.mailbox.mailbox_id, page.folder, cursor.serialize())
        return cursor

    def _first_sightings(self, messages: Sequence[MailMessage]) -> list[MailMessage]:
        """Graph may replay an item within a round; a run decides and counts each message once."""
        fresh = []
        for message in messages:
            if message.internet_message_id in self.seen:
                self.reasons["replayed_items"] += 1
            else:
                self.seen.add(message.internet_message_id)
                fresh.append(message)
        return fresh

    def _activities(self, messages: Sequence[MailMessage]) -> list[Activity]:
        mailbox = self.mailbox
        return build_activities(
            messages,
            mailbox,
            self.settings,
            records=self.deps.records,
            activities=self.deps.activities,
            reasons=self.reasons,
            fetch_attachments=lambda source_ids: self.deps.mail.attachments(mailbox, source_ids),
        )


@dataclass(frozen=True)
class Cursor:
    """A folder's checkpoint: the link to follow next, and whether it is a delta link (caught up)
    or a next link (mid-round). An empty link means "start from the watermark"."""

    caught_up: bool
    link: str

    def serialize(self) -> str:
        return ("delta " if self.caught_up else "next ") + self.link

    @classmethod
    def parse(cls, value: str) -> Cursor:
        kind, _, link = value.partition(" ")
        return cls(caught_up=kind == "delta" and bool(link), link=link)
