"""Sync one mailbox: delta pages → decisions → activities → checkpoint, under a lease and a time budget.

    read cursors ─ every folder caught up? ─ yes: poll them all in one $batch, without the lease
        │                                         │ every page empty, cursors younger than IDLE_REFRESH
        │                                         └──> done: nothing written (no lease, cursor or report)
        ▼ no / something changed
    take the lease; re-read the mailbox, settings and cursors under it (cursors moved since the poll:
    drop its pages, poll again from them; mailbox no longer syncable: skipped, nothing written)
      ──> for each folder: page = the polled page, then delta(link or watermark filter)
                        │   decide every message (one records lookup per page)
                        │   fetch attachment names of matched messages (4 at a time)
                        │   renew the lease; save activities (idempotent, keyed by internet message id)
                        │   renew the lease; checkpoint the folder's next/delta link  <- after the save
                        └─ until every folder reached its deltaLink, or the budget is spent
      ──> renew the lease; store the report; release the lease

Invariants:
- A run writes (activities, cursors, mailbox status, its report) only while it holds the mailbox's lease
  (``sync_lease_key``): it takes it before its first write and renews it, compare-and-set, before every
  later one. A second trigger that needs it is coalesced ("busy"). An idle poll may overlap a run holding
  it: it writes nothing.
- Lost lease, no write: a renewal fails once anyone else took the lease since (another run after it
  expired, a backfill, a disconnect's take-over) or it was released; the run then stops at once, writes
  nothing more, logs it and ends "busy" (no exception, so no retry and no poison message).
- The residual window: a renewal keeps the lease at least ``LEASE_MARGIN`` (1 min) past it, so another
  run or a backfill can take it only that long after the run's last renewal; a write that began under it
  has ended by then if a durable write ends within ``WRITE_GRACE`` (30 s) of the renewal before it.
  Only a write stalled longer (a frozen process, a storage call retried past that) could still land: Table
  storage cannot make one conditional write span the lease and an activity's partitions.
- Decided under the lease: whatever a run writes is decided on the mailbox (watermark, aliases,
  status), settings and cursors read after it took the lease. Pages polled without the lease are applied
  only if the stored cursors are unchanged once the lease is held; otherwise another run or a backfill
  got there first, and they are dropped unread.
- A disconnect takes the lease over (see ``connect.disconnect``) and waits ``WRITE_GRACE`` when a run
  held it; a run taking the lease afterwards reads the mailbox disconnected and ends "skipped".
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
LEASE_MARGIN = timedelta(minutes=1)  # a take or renewal holds the lease at least this long past it
WRITE_GRACE = timedelta(seconds=30)  # a durable write ends within this of the renewal before it (see above)


def sync_lease_key(org_id: str, mailbox_id: str) -> str:
    """The mailbox's sync lease: held by a run while it writes, by a backfill while it moves the
    watermark, taken over by a disconnect."""
    return f"sync|{org_id}|{mailbox_id}"


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
    holds the lease, or took it from this one, which then stopped without writing), ``skipped`` (mailbox
    not syncable now, also when found so under the lease) or ``failed`` (see ``report.error``).
    An idle poll is ``done`` with a report that was not stored."""

    status: str
    report: RunReport | None = None
    retry_after: float | None = None


class _Stop(Exception):
    """Ends a run at once, writing nothing more; ``status`` is its outcome."""

    status = "busy"


class _Busy(_Stop):
    """Another run holds the mailbox's lease."""


class _LeaseLost(_Busy):
    """The run held the lease, and a renewal found it taken over (another run after it expired, a
    backfill, a disconnect) or released: the run stops without writing ("busy": someone else has it)."""


class _NotSyncable(_Stop):
    """Read under the lease, the mailbox is gone or no longer syncable (disconnected, paused, …)."""

    status = "skipped"


def sync_mailbox(deps: SyncDeps, org_id: str, mailbox_id: str, budget: timedelta = timedelta(minutes=4)) -> SyncOutcome:
    versioned = deps.mailboxes.get(org_id, mailbox_id)
    if versioned is None:
        return SyncOutcome("skipped")
    mailbox = versioned.value
    settings = deps.settings.get(org_id)
    if not _syncable(mailbox, settings):
        return SyncOutcome("skipped")
    started = deps.clock.now()
    run = _Run(deps, mailbox, settings, started, budget)
    transactions_before = deps.table_transactions()
    requests_before = deps.mail.requests_made
    try:
        status, error, retry_after = run.execute()
        if status == "failed":
            run.lease()  # the status, cursors and report are written under the lease too
            _set_status(deps, run.mailbox, error)
        if error:
            run.expire_cursors()
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
            run.lease()
            deps.reports.add(report, keep=REPORTS_KEPT)
    except _Stop as stop:
        return SyncOutcome(stop.status)
    finally:
        run.release()
    return SyncOutcome(status, report, retry_after)


def _syncable(mailbox: Mailbox, settings: OrgSettings) -> bool:
    return mailbox.enabled and settings.automation_enabled and mailbox.status is MailboxStatus.ACTIVE


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
        self.lease_key = sync_lease_key(mailbox.org_id, mailbox.mailbox_id)
        self.leased = False
        self.idle = False  # the run polled without the lease, found nothing to write, and wrote nothing
        self.reasons: Counter[str] = Counter()
        self.pages = 0
        self.created = 0
        self.merged = 0
        self.seen: set[str] = set()  # internet message ids decided in this run
        self.threads = RunThreadCache(deps.activities)
        self._all_folders: tuple[str, ...] | None = None

    def lease(self) -> None:
        """Call before every durable write. The first call takes the lease (``_Busy`` when another run
        holds it) and re-reads the mailbox and the org's settings under it (``_NotSyncable`` when the
        mailbox can no longer sync); every later call renews it, compare-and-set (``_LeaseLost`` when
        it was taken over or released since). Either way the lease then lasts ``LEASE_MARGIN`` past
        now, or past the deadline if later."""
        now = self.deps.clock.now()
        until = max(self.deadline, now) + LEASE_MARGIN
        if self.leased:
            if self.deps.leases.renew(self.lease_key, self.run_id, until):
                return
            self.leased = False  # not ours any more: nothing to release
            log.warning(
                "sync run %s of mailbox %s (org %s) lost its lease; stopping without writing",
                self.run_id, self.mailbox.mailbox_id, self.mailbox.org_id,
            )  # fmt: skip
            raise _LeaseLost
        if not self.deps.leases.acquire(self.lease_key, self.run_id, until, now):
            raise _Busy
        self.leased = True
        current = self.deps.mailboxes.get(self.mailbox.org_id, self.mailbox.mailbox_id)
        self.settings = self.deps.settings.get(self.mailbox.org_id)
        if current is None or not _syncable(current.value, self.settings):
            log.info("mailbox %s of org %s stopped being syncable before this run held its lease",
                     self.mailbox.mailbox_id, self.mailbox.org_id)  # fmt: skip
            raise _NotSyncable
        self.mailbox = current.value

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
                self.lease()
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
        stored = self._stored_cursors()
        while True:
            folders = self._folders()
            cursors = {f: Cursor.parse(v) for f, v in stored.items()}
            # Folders already caught up are polled together: one $batch for an idle mailbox.
            caught_up = {f: cursors[f].link for f in folders if f in cursors and cursors[f].caught_up}
            if not self.leased and len(caught_up) < len(folders):
                stored = self._take_lease()  # a folder to start or resume: this run will write
                continue
            pages, expired = self._poll(caught_up)
            if self.leased:
                break
            if not expired and self._unchanged(pages.values(), [cursors[f] for f in caught_up]):
                self.idle = True
                return True
            fresh = self._take_lease()
            if fresh == stored and self._folders() == folders:
                break  # the polled pages are applied, decided on the mailbox read under the lease
            log.info("the cursors moved before the lease was taken; continuing from the stored ones")
            stored = fresh  # another run or a backfill got there first: the pages are dropped, poll again
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

    def _take_lease(self) -> dict[str, str]:
        """Take the lease (which re-reads the mailbox and settings), then re-read the cursors: whatever
        the run writes from here on is decided on state read under the lease."""
        self.lease()
        return self._stored_cursors()

    def _folders(self) -> tuple[str, ...]:
        """The folders to sync under the current settings (all folders: listed once per run)."""
        if self.settings.folders is not FolderFilter.ALL:
            return DEFAULT_FOLDERS
        if self._all_folders is None:
            self._all_folders = self.deps.mail.folders(self.mailbox)
        return self._all_folders

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
        for folder in folders:
            self.lease()
            self.deps.cursors.put(self.mailbox.org_id, self.mailbox.mailbox_id, folder, "")

    def _apply(self, page: DeltaPage) -> Cursor:
        """Decide, store, then checkpoint one page; returns the folder's new cursor."""
        self.pages += 1
        self.reasons["skipped_items"] += page.skipped
        activities = self._activities(self._first_sightings(page.messages))
        if activities:
            self.lease()
            written = self.deps.activities.save(activities)
            self.threads.saved(activities, written)
            self.created += len(written.created)
            self.merged += len(written.merged)
            if written.created and self.deps.events is not None:
                created = set(written.created)
                self.deps.events.created(self.mailbox.org_id, [a for a in activities if a.activity_id in created])
        cursor = Cursor(
            caught_up=page.delta_link is not None,
            link=page.delta_link or page.next_link or "",
            written_at=self.started,
        )
        self.lease()
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
