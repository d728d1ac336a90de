"""Sync one mailbox: delta pages → decisions → activities → checkpoint, under a lease and a time budget.

    read cursors ─ every folder caught up? ─ yes: poll them all in one $batch, without the lease
        │                                         │ every page empty, cursors younger than IDLE_REFRESH
        │                                         └──> done: nothing written (no lease, cursor or report)
        ▼ no / something changed
    take the lease, re-read the cursors (moved since the poll: drop its pages, poll again from them)
      ──> for each folder: page = the polled page, then delta(link or watermark filter)
                        │   decide every message (one records lookup per page)
                        │   fetch attachment names of matched messages (4 at a time)
                        │   save activities (idempotent, keyed by internet message id)
                        │   checkpoint the folder's next/delta link      <- only after the save
                        └─ until every folder reached its deltaLink, or the budget is spent
      ──> release lease; store the report

Invariants:
- A run writes (activities, cursors, mailbox status, its report) only once it took the mailbox's lease;
  one run holds it at a time, a second trigger that needs it is coalesced ("busy"). An idle poll may
  overlap a run holding it: it writes nothing.
- Pages polled without the lease are applied only if the stored cursors are unchanged once the lease is
  held; otherwise another run got there first, and they are dropped unread.
- A delta link is stored only after the activities of its page are durably written; a crash at any
  point re-reads at most that page, and the keyed, idempotent save makes the re-read harmless.
- An idle poll writes nothing: replaying a stored delta link is valid. But Graph evicts Outlook delta
  tokens from a cache of undefined size, so a stored token must not grow arbitrarily old: an idle poll
  whose cursors are older than ``IDLE_REFRESH`` stores the new delta links, and its report (so a
  mailbox's ``last_sync_at`` advances at least that often). A run that ends with an error dates its
  cursors ``LONG_AGO``, so the next poll stores its report too.
- A lost delta token (410 / SyncStateNotFound) restarts that folder filtered from the mailbox
  watermark, so a resync never imports mail older than the watermark.
- Unmatched and filtered messages leave nothing but a count in the run report.
- Messages become activities through ``pipeline.build_activities`` (shared with RFC 822 ingest); new
  activities are announced to ``events`` (CRM webhooks) after they are durably written.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

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
from sync_core.use_cases.pipeline import RunThreadCache, build_activities

log = logging.getLogger(__name__)

DEFAULT_FOLDERS = ("inbox", "sentitems")
REPORTS_KEPT = 50
IDLE_REFRESH = timedelta(hours=1)  # an idle poll rewrites cursors (and stores its report) older than this
LEASE_MARGIN = timedelta(minutes=1)


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
    holds the lease), ``skipped`` (mailbox not syncable now) or ``failed`` (see ``report.error``).
    An idle poll is ``done`` with a report that was not stored."""

    status: str
    report: RunReport | None = None
    retry_after: float | None = None


class _Busy(Exception):
    """Another run holds the mailbox's lease."""


def sync_mailbox(deps: SyncDeps, org_id: str, mailbox_id: str, budget: timedelta = timedelta(minutes=4)) -> SyncOutcome:
    versioned = deps.mailboxes.get(org_id, mailbox_id)
    if versioned is None:
        return SyncOutcome("skipped")
    mailbox = versioned.value
    settings = deps.settings.get(org_id)
    if not (mailbox.enabled and settings.automation_enabled and mailbox.status is MailboxStatus.ACTIVE):
        return SyncOutcome("skipped")
    started = deps.clock.now()
    run = _Run(deps, mailbox, settings, started, budget)
    transactions_before = deps.table_transactions()
    requests_before = deps.mail.requests_made
    try:
        status, error, retry_after = run.execute()
        if not run.idle:
            run.lease()  # the report (and a failure's status) are written under the lease too
        if status == "failed":
            _set_status(deps, mailbox, error)
        if error:
            run.expire_cursors()
    except _Busy:
        return SyncOutcome("busy")
    finally:
        run.release()
    report = RunReport(
        org_id=org_id,
        mailbox_id=mailbox_id,
        run_id=run.run_id,
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
    if not run.idle:
        deps.reports.add(report, keep=REPORTS_KEPT)
    return SyncOutcome(status, report, retry_after)


def _set_status(deps: SyncDeps, mailbox: Mailbox, error: str) -> None:
    status = MailboxStatus.NEEDS_REAUTH if error.startswith("reauth:") else MailboxStatus.ERROR
    current = deps.mailboxes.get(mailbox.org_id, mailbox.mailbox_id)
    if current is not None:
        reason = error.partition(": ")[2] or error
        deps.mailboxes.replace(replace(current.value, status=status, status_reason=reason), current.etag)


class _Run:
    def __init__(
        self, deps: SyncDeps, mailbox: Mailbox, settings: OrgSettings, started: datetime, budget: timedelta
    ) -> None:
        self.deps = deps
        self.mailbox = mailbox
        self.settings = settings
        self.started = started
        self.deadline = started + budget
        self.run_id = uuid.uuid4().hex
        self.lease_key = f"sync|{mailbox.org_id}|{mailbox.mailbox_id}"
        self.leased = False
        self.idle = False  # the run polled without the lease, found nothing to write, and wrote nothing
        self.reasons: Counter[str] = Counter()
        self.pages = 0
        self.created = 0
        self.merged = 0
        self.seen: set[str] = set()  # internet message ids decided in this run
        self.threads = RunThreadCache(deps.activities)

    def lease(self) -> None:
        """Take the mailbox's lease, once, before the run's first write; ``_Busy`` if another run holds it."""
        if self.leased:
            return
        until = self.deadline + LEASE_MARGIN
        if not self.deps.leases.acquire(self.lease_key, self.run_id, until, self.deps.clock.now()):
            raise _Busy
        self.leased = True

    def release(self) -> None:
        if self.leased:
            self.deps.leases.release(self.lease_key, self.run_id)
            self.leased = False

    def expire_cursors(self) -> None:
        """After an error: date the stored delta links ``LONG_AGO`` (links kept), so that the next poll,
        idle or not, stores its report and the mailbox's last success follows its recovery."""
        self.lease()
        for folder, value in self._stored_cursors().items():
            cursor = Cursor.parse(value)
            if cursor.caught_up and cursor.written_at != LONG_AGO:
                expired = replace(cursor, written_at=LONG_AGO).serialize()
                self.deps.cursors.put(self.mailbox.org_id, self.mailbox.mailbox_id, folder, expired)

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
        stored = self._stored_cursors()
        while True:
            cursors = {f: Cursor.parse(v) for f, v in stored.items()}
            # Folders already caught up are polled together: one $batch for an idle mailbox.
            caught_up = {f: cursors[f].link for f in folders if f in cursors and cursors[f].caught_up}
            if not self.leased and len(caught_up) < len(folders):
                stored = self._take_lease(stored)  # a folder to start or resume: this run will write
                continue
            pages, expired = self._poll(caught_up)
            if self.leased:
                break
            if not expired and self._unchanged(pages.values(), [cursors[f] for f in caught_up]):
                self.idle = True
                return True
            fresh = self._take_lease(stored)
            if fresh == stored:
                break
            stored = fresh  # another run got there first: its pages are dropped, poll again
        resume: dict[str, str | None] = {f: (cursors[f].link or None) if f in cursors else None for f in folders}
        if expired:
            self._forget(list(caught_up))
            resume.update(dict.fromkeys(caught_up))
        for folder, page in pages.items():
            resume[folder] = self._apply(page).link
            if page.delta_link:
                resume.pop(folder)
        return all(self._drain(folder, link) for folder, link in resume.items())

    def _stored_cursors(self) -> dict[str, str]:
        return dict(self.deps.cursors.get_all(self.mailbox.org_id, self.mailbox.mailbox_id))

    def _take_lease(self, read: Mapping[str, str]) -> dict[str, str]:
        """Take the lease, then re-read the cursors. When they moved since ``read`` (another run, or a
        backfill that also moved the watermark), the mailbox is re-read too; the caller starts over."""
        self.lease()
        fresh = self._stored_cursors()
        if fresh != read:
            log.info("the cursors moved before the lease was taken; continuing from the stored ones")
            current = self.deps.mailboxes.get(self.mailbox.org_id, self.mailbox.mailbox_id)
            if current is not None:
                self.mailbox = current.value
        return fresh

    def _poll(self, links: Mapping[str, str]) -> tuple[Mapping[str, DeltaPage], bool]:
        """One request for every caught-up folder: (pages, False), or ({}, True) when Graph lost the state."""
        if not links:
            return {}, False
        try:
            return self.deps.mail.delta_many(self.mailbox, links), False
        except DeltaTokenExpired:
            return {}, True

    def _unchanged(self, pages: Iterable[DeltaPage], cursors: Iterable[Cursor]) -> bool:
        """Nothing new in any folder, and the stored delta links are recent enough to keep."""
        refresh_before = self.started - IDLE_REFRESH
        empty = all(p.delta_link and not p.messages and not p.skipped for p in pages)
        return empty and all(c.written_at > refresh_before for c in cursors)

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
        self.lease()
        for folder in folders:
            self.deps.cursors.put(self.mailbox.org_id, self.mailbox.mailbox_id, folder, "")

    def _apply(self, page: DeltaPage) -> Cursor:
        """Decide, store, then checkpoint one page; returns the folder's new cursor."""
        self.lease()
        self.pages += 1
        self.reasons["skipped_items"] += page.skipped
        activities = self._activities(self._first_sightings(page.messages))
        if activities:
            # With a webhook, each new activity's outbox event is written with it (announced at least once).
            wanted = self.deps.events is not None and bool(self.settings.webhook_url)
            announce_at = self.deps.clock.now() if wanted else None
            written = self.deps.activities.save(activities, announce_at=announce_at)
            self.threads.saved(activities, written)
            self.created += len(written.created)
            self.merged += len(written.merged)
            if written.events and self.deps.events is not None:
                self.deps.events.created(self.mailbox.org_id, written.events)
        cursor = Cursor(
            caught_up=page.delta_link is not None,
            link=page.delta_link or page.next_link or "",
            written_at=self.started,
        )
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
            activities=self.threads,
            reasons=self.reasons,
            fetch_attachments=lambda source_ids: self.deps.mail.attachments(mailbox, source_ids),
        )


LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Cursor:
    """A folder's checkpoint: the link to follow next, whether it is a delta link (caught up) or a next
    link (mid-round), and when it was written (the start of the run that wrote it). An empty link means
    "start from the watermark".

    Stored as ``"<delta|next> <written_at ISO 8601> <link>"``; a value of the older
    ``"<delta|next> <link>"`` form parses as written ``LONG_AGO``, so the next idle poll refreshes it."""

    caught_up: bool
    link: str
    written_at: datetime = LONG_AGO

    def serialize(self) -> str:
        return f"{'delta' if self.caught_up else 'next'} {self.written_at.isoformat()} {self.link}"

    @classmethod
    def parse(cls, value: str) -> Cursor:
        kind, _, rest = value.partition(" ")
        stamp, separator, link = rest.partition(" ")
        written_at = _aware_time(stamp) if separator else None
        if written_at is None:  # the older form: the rest is the link
            link, written_at = rest, LONG_AGO
        return cls(caught_up=kind == "delta" and bool(link), link=link, written_at=written_at)


def _aware_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
