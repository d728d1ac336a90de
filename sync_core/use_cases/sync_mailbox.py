"""Sync one mailbox: delta pages → decisions → activities → checkpoint, under a lease and a time budget.

    read cursors (and the lease's version), then the mailbox and the org's settings
      ─ every folder caught up? ─ yes: poll them all in one batched request, without the lease
        │                                         │ every page empty, cursors younger than IDLE_REFRESH
        │                                         └──> done: nothing written (no lease, cursor or report)
        ▼ no / something changed
    take the lease at the version read (then mailbox and cursors are as read: no re-read); else take it
    and re-read the mailbox and cursors under it (cursors moved since the poll: drop its pages, poll
    again from them; mailbox no longer syncable: skipped, nothing written)
      ──> for each folder: page = the polled page, then delta(link or watermark filter)
                        │   decide every message (one records lookup per page)
                        │   fetch attachment names of matched messages (4 at a time)
                        │   renew the lease [+ the previous page's checkpoint, one transaction];
                        │   save activities (idempotent, keyed by internet message id)
                        │   checkpoint the folder's next/delta link  <- after the save: pending until the
                        │   next renewal (classic: renew the lease, write it now)
                        └─ until every folder reached its deltaLink, or the budget is spent
      ──> status follows the outcome (success clears ``error``; configuration → ``error``; grant →
          ``needs_reauth``); after a failure, date the cursors ``LONG_AGO``
      ──> store the pending checkpoints, the report (failed runs too) and the lease's release in one
          transaction (classic: renew; store the report; release); raise an unclassified failure

Fenced in the transaction (``SyncDeps.state``, a ``SyncStateStore``: what the app deploys; without it,
"classic", every port is written on its own and each write fenced by a renewal of its own). A mailbox's
cursors, sync lease and reports live in one partition, so:
- The run reads its cursors and the lease's version in one request, before the mailbox. Taking the lease
  at that version proves that nobody held, took or released it since the read; since every writer of
  the cursors (runs, backfills, disconnects) and every lease-fenced writer of the mailbox (a backfill's
  watermark, a disconnect's status) holds the lease while it writes, the cursors and those fields are
  still as read, and nothing is re-read under the lease. If the version moved, the run takes the lease
  the ordinary way and re-reads both, as classic. What no lease guards (a pause, an alias edit made
  between the read and the lease) is seen by the next run, as a change made just after a classic run's
  re-read is.
- A renewal and the checkpoint it fences are one transaction conditional on the lease row: a lost lease
  writes neither, with no residual window. A page's checkpoint is written by the renewal before the
  run's next write, or with the report: still after the page's activities are durable. A crash re-reads
  at most the page whose checkpoint was pending; a run that loses its lease leaves its last page's
  checkpoint unwritten (the next run re-reads that page: keyed, idempotent).
- The report and the release are one transaction with the last checkpoints (the report in one of
  ``REPORTS_KEPT`` slots, so no trim query).
- The activity save (another partition) is fenced as classic: by the renewal right before it, with the
  residual window below.

Invariants:
- A run writes (activities, cursors, mailbox status, its report) only while it holds the mailbox's lease
  (``sync_lease_key``): it takes it before its first write and renews it, compare-and-set, before every
  later one (fenced in the transaction: the renewal is in the same transaction as the cursors and the
  report it fences). A second trigger that needs it is coalesced ("busy"). An idle poll may overlap a run holding
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
  status) and cursors read after it took the lease, or read before it took it at the version that read
  saw (see above). Pages polled without the lease are applied only if the stored cursors are unchanged
  once the lease is held; otherwise another run or a backfill got there first, and they are dropped
  unread.
- The org's settings are read once per run, at its start, and handed on in the outcome (the scheduler
  takes the poll interval from them): a settings change applies to the runs that start after it.
- A disconnect takes the lease over (see ``connect.disconnect``) and waits ``WRITE_GRACE`` when a run
  held it; a run taking the lease afterwards reads the mailbox disconnected and ends "skipped".
- A delta link is stored only after the activities of its page are durably written; a crash at any
  point re-reads at most that page, and the keyed, idempotent save makes the re-read harmless.
- Storage off the critical path: while a folder is followed page by page, a page's attachment listings,
  thread lookups, save and checkpoint run on other threads while the next page is fetched and decided
  (``_PageWrites``; its reads start as soon as it is decided, while the page before is being saved):
  one page's writes in flight, in page order, its failure raised before the run writes anything else or
  leaves the folder; the previous invariant holds as it is (the next page is written only after). Fenced
  in the transaction, the writer thread also renews the lease: page n's checkpoint, pending once page
  n's save returned, rides with the renewal before page n+1's save on the same thread, and whatever is
  still pending when the folder's writes end rides with the next renewal on the run's thread or with the
  report, which is stored only after every folder's writes ended.
- An idle poll writes nothing: replaying a stored delta link is valid. But Graph evicts Outlook delta
  tokens from a cache of undefined size, so a stored token must not grow arbitrarily old: an idle poll
  whose cursors are older than ``IDLE_REFRESH`` stores the new delta links, and its report (so a
  mailbox's ``last_sync_at`` advances at least that often). A run that ends with an error dates its
  cursors ``LONG_AGO``, so the next poll stores its report too.
- A lost delta token (410 / SyncStateNotFound, or a stored link answering 404 ErrorItemNotFound) restarts
  that folder filtered from the mailbox watermark, so a resync never imports mail older than the
  watermark. A folder that 404s from the watermark too is gone: its cursor is cleared and the report
  counts it (``folders_gone``); a default folder 404ing is a configuration failure of the run.
- Failures are classified by type (``sync_core.errors``), never by their text: transient ones end the run
  ``more`` (pages before kept, status unchanged, retried after the Retry-After, else after
  ``TRANSIENT_RETRY``: an outage is never retried in a tight loop); a message whose
  attachment listing 404s is stored without the summary (``attachments_unavailable``); configuration
  failures set ``error`` and grant failures ``needs_reauth``, with the reason. Anything else is recorded
  the same way (class ``unexpected``, its type only) and raised, so the queue retries it.
- Every run that takes the lease stores a report, failed ones included, with ``error`` (the reason) and
  ``error_class``; the mailbox's status follows the latest outcome: a run that succeeds sets an ``error``
  mailbox ``active`` again (``error`` mailboxes are synced like active ones, and never end as an idle
  poll, so their recovery is always recorded).
- Unmatched and filtered messages leave nothing but a count in the run report.
- Messages become activities through the pipeline's two halves, ``pipeline.matched_messages`` then
  ``pipeline.activities_of`` (together ``pipeline.build_activities``, shared with RFC 822 ingest); new
  activities are announced to ``events`` (CRM webhooks) after they are durably written.
- Every run logs one operational event as it ends, whichever way (``telemetry.SyncRunEvent``: counts,
  outcome, throttling, mail age; no address, subject or body).
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sync_core.domain.folders import DEFAULT_FOLDERS
from sync_core.domain.model import (
    SYNCABLE_STATUSES,
    Activity,
    AttachmentSummary,
    Decision,
    FolderFilter,
    Mailbox,
    MailboxStatus,
    MailMessage,
    OrgSettings,
    RunStatus,
)
from sync_core.errors import (
    ConcurrencyConflict,
    ConfigurationFailure,
    DeltaTokenExpired,
    GrantFailure,
    MessageNotFound,
    StorageUnavailable,
    SyncFailure,
    TransientFailure,
    UnexpectedFailure,
    failure_of,
)
from sync_core.ports import (
    ActivityStore,
    Clock,
    CursorStore,
    DeltaPage,
    LeaseStore,
    MailboxLease,
    MailboxRepository,
    MailSource,
    RecordsIndex,
    RunReport,
    RunReportStore,
    SettingsRepository,
    SyncState,
    SyncStateStore,
)
from sync_core.ports.push import ActivityEvents
from sync_core.use_cases.mailbox_updates import update_mailbox
from sync_core.use_cases.pipeline import (
    RunThreadCache,
    activities_of,
    matched_messages,
    thread_references,
    to_list_attachments,
)
from sync_core.use_cases.telemetry import MailAges, RunProbe

log = logging.getLogger(__name__)

REPORTS_KEPT = 50
IDLE_REFRESH = timedelta(hours=1)  # an idle poll rewrites cursors (and stores its report) older than this
LEASE_MARGIN = timedelta(minutes=1)  # a take or renewal holds the lease at least this long past it
WRITE_GRACE = timedelta(seconds=30)  # a durable write ends within this of the renewal before it (see above)
WRITER_THREAD_NAME = "sync-page-writes"


def sync_lease_key(org_id: str, mailbox_id: str) -> MailboxLease:
    """The mailbox's sync lease: held by a run while it writes, by a backfill while it moves the
    watermark, taken over by a disconnect. Kept with the mailbox's cursors and reports where the store
    co-locates them (``SyncStateStore``)."""
    return MailboxLease(org_id, mailbox_id)


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
    # The cursors, the lease and the reports as one (see "Fenced in the transaction" above); None: each
    # through its own port, every write fenced by a separate renewal.
    state: SyncStateStore | None = None


@dataclass(frozen=True)
class SyncOutcome:
    """``status``: ``done`` (caught up), ``more`` (budget spent or a transient failure: continue soon),
    ``busy`` (another run holds the lease, or took it from this one, which then stopped without writing),
    ``skipped`` (mailbox not syncable now, also when found so under the lease) or ``failed`` (a
    configuration or grant failure: ``failure``, ``report.error``).
    An idle poll is ``done`` with a report that was not stored."""

    status: RunStatus
    report: RunReport | None = None
    retry_after: float | None = None
    failure: type[SyncFailure] | None = None  # the class of the failure the run ended with, if any
    settings: OrgSettings | None = None  # the org's settings the run read (None: it read none)


class _Stop(Exception):
    """Ends a run at once, writing nothing more; ``status`` is its outcome."""

    status = RunStatus.BUSY


class _Busy(_Stop):
    """Another run holds the mailbox's lease."""


class _LeaseLost(_Busy):
    """The run held the lease, and a renewal found it taken over (another run after it expired, a
    backfill, a disconnect) or released: the run stops without writing ("busy": someone else has it)."""


class _NotSyncable(_Stop):
    """Read under the lease, the mailbox is gone or no longer syncable (disconnected, paused, …)."""

    status = RunStatus.SKIPPED


STATUS_ATTEMPTS = 5
TRANSIENT_RETRY = timedelta(minutes=1)  # the continuation's delay after a transient failure without Retry-After


def sync_mailbox(
    deps: SyncDeps, org_id: str, mailbox_id: str, budget: timedelta = timedelta(minutes=4), run_id: str = ""
) -> SyncOutcome:
    """One run. Raises only what no class handles (``UnexpectedFailure``s, storage down), after storing
    the run's report with its class and reason, so the queue retries the message.

    ``run_id``: the id a CRM was given for this run ("Sync now", backfill), which its report carries; such
    a run is never an idle poll that stores nothing: with nothing new it takes the lease and stores its
    report (and refreshed cursors), so the id the CRM polls always gets an answer. Without one the run
    makes its own id.

    Every run, however it ends, logs one ``telemetry.SyncRunEvent``."""
    probe = RunProbe(requested=bool(run_id))
    outcome: SyncOutcome | None = None
    try:
        outcome = _sync_mailbox(deps, org_id, mailbox_id, budget, run_id=run_id, probe=probe)
        return outcome
    finally:
        probe.emit(org_id, mailbox_id, outcome)


def _sync_mailbox(
    deps: SyncDeps, org_id: str, mailbox_id: str, budget: timedelta, *, run_id: str, probe: RunProbe
) -> SyncOutcome:
    # The sync state is read before the mailbox: a lease taken at the version read here then proves that
    # no backfill or disconnect wrote the mailbox after the read below (they write it under the lease).
    seen = deps.state.read(org_id, mailbox_id) if deps.state is not None else None
    versioned = deps.mailboxes.get(org_id, mailbox_id)
    if versioned is None:
        return SyncOutcome(RunStatus.SKIPPED)
    mailbox = versioned.value
    settings = deps.settings.get(org_id)
    probe.begin(deps.mail, mailbox, settings)
    if not mailbox.can_sync(settings.automation_enabled):
        return SyncOutcome(RunStatus.SKIPPED, settings=settings)
    started = deps.clock.now()
    run = probe.run = _Run(deps, mailbox, settings, started, budget, run_id=run_id, seen=seen)
    transactions_before = deps.table_transactions()
    requests_before = deps.mail.requests_for(mailbox)
    escaped: Exception | None = None
    failure: BaseException | None
    try:
        try:
            status, failure, retry_after = run.execute()
        except _Stop:
            raise
        except Exception as exc:  # unclassified: recorded below, then raised for the queue to retry
            status, failure, retry_after, escaped = RunStatus.FAILED, exc, None, exc
        if not run.idle:  # the status, the cursors' dates and the report are written under the lease too
            _set_status(deps, run.mailbox, failure, before_write=run.lease)
            if failure is not None:
                run.expire_cursors()
        report = RunReport(
            org_id=org_id,
            mailbox_id=mailbox_id,
            run_id=run.run_id,
            started_at=started,
            finished_at=deps.clock.now(),
            reasons=dict(run.reasons),
            pages=run.pages,
            graph_requests=deps.mail.requests_for(mailbox) - requests_before,
            table_transactions=deps.table_transactions() - transactions_before,
            activities_created=run.created,
            activities_merged=run.merged,
            more=status == RunStatus.MORE,
            error=failure_reason(failure) if failure is not None else "",
            error_class=failure_of(failure).code if failure is not None else "",
        )
        probe.report = report
        if not run.idle:
            run.store(report)
    except _Stop as stop:
        return SyncOutcome(stop.status, settings=settings)  # the lease is someone else's now: so is the state
    except Exception as record_failure:
        if escaped is None:
            raise
        log.warning("could not record the failure of a run: %s", type(record_failure).__name__)
        raise escaped from None
    finally:
        run.release()
    if escaped is not None:
        raise escaped
    return SyncOutcome(
        status, report, retry_after, failure_of(failure) if failure is not None else None, settings=settings
    )


def failure_reason(exc: BaseException) -> str:
    """The words a report and the mailbox show for a failure. A classified failure's message is written
    for the CRM (no tokens, no mail data); an unclassified one shows its type only, since its text may
    carry data."""
    if isinstance(exc, SyncFailure) and not isinstance(exc, UnexpectedFailure):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__} (unexpected; the run is retried)"


def _set_status(
    deps: SyncDeps, mailbox: Mailbox, failure: BaseException | None, before_write: Callable[[], None]
) -> None:
    """Make the stored status say what this run's outcome means for the mailbox: a grant failure
    ``needs_reauth``, a configuration failure ``error`` (both with the reason); a success clears an
    ``error``. Transient and unexpected failures leave the status as it is (retrying is under way: the
    report and ``last_error`` say why). Compare-and-set through ``update_mailbox``, re-read on a
    conflict; ``before_write`` (the run's lease renewal) runs before each write. A mailbox that kept
    changing keeps its status (logged): the run's report still says what happened."""
    kind = failure_of(failure) if failure is not None else None
    if kind is GrantFailure:
        held = MailboxStatus.NEEDS_REAUTH
    elif kind is ConfigurationFailure:
        held = MailboxStatus.ERROR
    elif kind is None and mailbox.status is MailboxStatus.ERROR:
        held = MailboxStatus.ACTIVE
    else:
        return  # nothing to say: no read, no write

    def change(current: Mailbox) -> Mailbox | None:
        if current.status not in SYNCABLE_STATUSES:
            return None  # disconnected, paused or signed out meanwhile: that decision stands
        if held is MailboxStatus.ACTIVE:
            return current.recovered()  # an active mailbox's reason is not this run's to clear
        return current.failed(held, str(failure))

    try:
        update_mailbox(
            deps.mailboxes, mailbox.org_id, mailbox.mailbox_id, change,
            before_write=before_write, attempts=STATUS_ATTEMPTS,
        )  # fmt: skip
    except ConcurrencyConflict:
        log.warning("mailbox %s kept changing; its status was not updated", mailbox.mailbox_id)


class _Run:
    def __init__(
        self,
        deps: SyncDeps,
        mailbox: Mailbox,
        settings: OrgSettings,
        started: datetime,
        budget: timedelta,
        *,
        run_id: str = "",
        seen: SyncState | None = None,
    ) -> None:
        self.deps = deps
        self.mailbox = mailbox
        self.settings = settings
        self.started = started
        self.deadline = started + budget
        self.requested = bool(run_id)  # a CRM polls this id: the run stores its report even when idle
        self.run_id = run_id or uuid.uuid4().hex
        # The lease's owner is this attempt, never the run id: two deliveries of one message share it.
        self.owner = uuid.uuid4().hex
        self.lease_key = sync_lease_key(mailbox.org_id, mailbox.mailbox_id)
        self.leased = False
        self.idle = False  # the run polled without the lease, found nothing to write, and wrote nothing
        self.reasons: Counter[str] = Counter()
        self.pages = 0
        self.created = 0
        self.merged = 0
        self.seen: set[str] = set()  # internet message ids decided in this run
        self.ages = MailAges()  # received times of the messages decided in this run (its event)
        self.missing_defaults: list[str] = []  # default folders Graph answered 404 for, from the watermark
        self.threads = RunThreadCache(deps.activities)
        self._all_folders: tuple[str, ...] | None = None
        self.state_read = seen  # the sync state read before the mailbox (``deps.state``), if any
        self.as_seen = False  # the lease was taken at ``state_read``'s version: mailbox and cursors are as read
        # Checkpoints written with the next renewal (``deps.state``); one owner at a time (see ``_PageWrites``).
        self.pending: dict[str, str] = {}

    def lease(self) -> None:
        """Call before every durable write. The first call takes the lease (``_Busy`` when another run
        holds it): at the version the sync state was read at (``deps.state``), which needs no re-read,
        else the ordinary way and re-reads the mailbox under it (``_NotSyncable`` when the mailbox can no
        longer sync; the settings are the run's, read at its start); every later call renews it,
        compare-and-set (``_LeaseLost`` when it was taken over or released since), with ``deps.state`` in
        one transaction with the pending checkpoints. Either way the lease then lasts ``LEASE_MARGIN``
        past now, or past the deadline if later."""
        now = self.deps.clock.now()
        until = max(self.deadline, now) + LEASE_MARGIN
        if self.leased:
            if self._renew(until):
                return
            self.leased = False  # not ours any more: nothing to release
            log.warning(
                "sync run %s of mailbox %s (org %s) lost its lease; stopping without writing",
                self.run_id, self.mailbox.mailbox_id, self.mailbox.org_id,
            )  # fmt: skip
            raise _LeaseLost
        org_id, mailbox_id = self.mailbox.org_id, self.mailbox.mailbox_id
        state, seen = self.deps.state, self.state_read
        if state is not None and seen is not None:
            self.state_read = None  # one attempt: a lease that moved since is taken the ordinary way
            if state.acquire_seen(org_id, mailbox_id, self.owner, until=until, now=now, seen=seen):
                self.leased = self.as_seen = True
                self.state_read = seen
                return  # nobody held, took or released it since the read before the mailbox's: no re-read
        if not self.deps.leases.acquire(self.lease_key, self.owner, until, now):
            raise _Busy
        self.leased = True
        current = self.deps.mailboxes.get(self.mailbox.org_id, self.mailbox.mailbox_id)
        if current is None or not current.value.can_sync(self.settings.automation_enabled):
            log.info("mailbox %s of org %s stopped being syncable before this run held its lease",
                     self.mailbox.mailbox_id, self.mailbox.org_id)  # fmt: skip
            raise _NotSyncable
        self.mailbox = current.value

    def _renew(self, until: datetime) -> bool:
        """Renew the held lease; with ``deps.state`` in one transaction with the pending checkpoints."""
        if self.deps.state is None:
            return self.deps.leases.renew(self.lease_key, self.owner, until)
        org_id, mailbox_id = self.mailbox.org_id, self.mailbox.mailbox_id
        if not self.deps.state.commit(org_id, mailbox_id, self.owner, until=until, cursors=self.pending):
            return False
        self.pending = {}
        return True

    def store(self, report: RunReport) -> None:
        """Store the run's report under the lease. With ``deps.state``: one transaction with the pending
        checkpoints and the lease's release (``_LeaseLost`` when it was lost: nothing written)."""
        state = self.deps.state
        if state is None:
            self.lease()
            self.deps.reports.add(report, keep=REPORTS_KEPT)
            return
        if not self.leased:
            self.lease()  # a run that failed before it needed the lease (its report dates the failure)
        org_id, mailbox_id = self.mailbox.org_id, self.mailbox.mailbox_id
        stored = state.commit(
            org_id, mailbox_id, self.owner, until=None, cursors=self.pending, report=report, keep=REPORTS_KEPT
        )
        self.leased, self.pending = False, {}
        if not stored:
            log.warning(
                "sync run %s of mailbox %s (org %s) lost its lease; stopping without writing",
                self.run_id, mailbox_id, org_id,
            )  # fmt: skip
            raise _LeaseLost

    def release(self) -> None:
        if self.leased:
            self.deps.leases.release(self.lease_key, self.owner)
            self.leased = False

    def expire_cursors(self) -> None:
        """After an error: date the stored delta links ``LONG_AGO`` (links kept), so that the next poll,
        idle or not, stores its report and the mailbox's last success follows its recovery."""
        self.lease()
        for folder, value in {**self._stored_cursors(), **self.pending}.items():
            cursor = Cursor.parse(value)
            if cursor.caught_up and cursor.written_at != LONG_AGO:
                expired = replace(cursor, written_at=LONG_AGO).serialize()
                if self.deps.state is not None:
                    self.pending[folder] = expired  # written with the report
                    continue
                self.lease()
                self.deps.cursors.put(self.mailbox.org_id, self.mailbox.mailbox_id, folder, expired)

    def execute(self) -> tuple[RunStatus, SyncFailure | None, float | None]:
        """Returns (status, failure, retry_after); raises what no failure class handles. Transient
        failures end the run ``more`` (retried later; the pages before are kept), configuration and grant
        failures ``failed``."""
        try:
            return (RunStatus.DONE if self._sync_folders() else RunStatus.MORE), None, None
        except StorageUnavailable:
            raise  # nothing can be recorded now: the queue retries the message
        except (TransientFailure, ConfigurationFailure, GrantFailure) as exc:
            if isinstance(exc, TransientFailure):
                told = exc.retry_after
                return RunStatus.MORE, exc, told if told is not None else TRANSIENT_RETRY.total_seconds()
            return RunStatus.FAILED, exc, None

    def _sync_folders(self) -> bool:
        """Returns True when every folder reached its delta link within the budget."""
        stored = self._stored_cursors()
        while True:
            folders = self._folders()
            cursors = {f: Cursor.parse(v) for f, v in stored.items()}
            # Folders already caught up are polled together: one batched request for an idle mailbox.
            caught_up = {f: cursors[f].link for f in folders if f in cursors and cursors[f].caught_up}
            if not self.leased and len(caught_up) < len(folders):
                stored = self._take_lease()  # a folder to start or resume: this run will write
                continue
            pages, expired = self._poll(caught_up)
            if self.leased:
                break
            recovering = self.mailbox.status is not MailboxStatus.ACTIVE  # its report clears the error
            unchanged = self._unchanged(pages.values(), [cursors[f] for f in caught_up])
            if not expired and not recovering and not self.requested and unchanged:
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
        for folder, cursor in self._apply_polled(list(pages.values())).items():
            resume[folder] = cursor.link
            if cursor.caught_up:
                resume.pop(folder)
        caught_up_all = all([self._drain(folder, link) for folder, link in resume.items()])
        if self.missing_defaults:
            names = ", ".join(self.missing_defaults)
            raise ConfigurationFailure(
                f"Graph does not find the mailbox's {names} folder (404); the other folders were synced. "
                "Check that the mailbox still exists and has a licence"
            )
        return caught_up_all

    def _stored_cursors(self) -> dict[str, str]:
        if self.state_read is not None and not self.leased:
            return dict(self.state_read.cursors)  # read with the lease, before the mailbox
        return dict(self.deps.cursors.get_all(self.mailbox.org_id, self.mailbox.mailbox_id))

    def _take_lease(self) -> dict[str, str]:
        """Take the lease, then the cursors as they are under it: whatever the run writes from here on is
        decided on state read under the lease, or read before it was taken at the version that read saw
        (nobody changed them since)."""
        self.lease()
        if self.as_seen and self.state_read is not None:
            return dict(self.state_read.cursors)
        return self._stored_cursors()

    def _folders(self) -> tuple[str, ...]:
        """The folders to sync under the current settings (all folders: listed once per run)."""
        if self.settings.folders is not FolderFilter.ALL:
            return DEFAULT_FOLDERS
        if self._all_folders is None:
            self._all_folders = self.deps.mail.folders(self.mailbox)
        return self._all_folders

    def _poll(self, links: Mapping[str, str]) -> tuple[Mapping[str, DeltaPage], bool]:
        """One request for every caught-up folder: (pages, False), or ({}, True) when Graph lost the state.
        A 404 for one of the links (its folder or its state is gone) polls nothing: the run takes the lease
        and follows each folder's link on its own, where ``_drain`` handles the lost one."""
        if not links:
            return {}, False
        try:
            return self.deps.mail.delta_many(self.mailbox, links), False
        except DeltaTokenExpired:
            return {}, True
        except MessageNotFound:
            self.lease()
            return {}, False

    def _unchanged(self, pages: Iterable[DeltaPage], cursors: Iterable[Cursor]) -> bool:
        """Nothing new in any folder, and the stored delta links are recent enough to keep."""
        refresh_before = self.started - IDLE_REFRESH
        empty = all(p.delta_link and not p.messages and not p.skipped for p in pages)
        return empty and all(c.written_at > refresh_before for c in cursors)

    def _drain(self, folder: str, link: str | None) -> bool:
        """Follow one folder's pages until its delta link; False when the budget ran out first.

        A stored link Graph no longer knows (410, or 404 ErrorItemNotFound: the provider forgot the state,
        or the folder was recreated) restarts the folder from the watermark. A folder that 404s from the
        watermark too is gone: its cursor is cleared and the report notes it (``folders_gone``); a default
        folder cannot vanish, so it is noted as missing and fails the run with a configuration failure
        once the other folders are synced.

        Each page is decided here, then written behind (``_PageWrites``) while the next page is fetched
        and decided; the folder's last page's writes have ended, their failure raised, before it returns
        or raises (an earlier page's failure outranks a later one's)."""
        writes = _PageWrites(self)
        try:
            done = self._follow(folder, link, writes)
        except BaseException:
            writes.close()
            raise
        writes.close()
        return done

    def _follow(self, folder: str, link: str | None, writes: _PageWrites) -> bool:
        while self.deps.clock.now() < self.deadline:
            try:
                page = self.deps.mail.delta(self.mailbox, folder, link, self.mailbox.watermark)
            except (DeltaTokenExpired, MessageNotFound) as exc:
                writes.settle()  # before any other write
                if link is not None:
                    log.info("delta state lost (%s); resyncing the folder from the watermark", type(exc).__name__)
                    self.reasons["folders_resynced"] += 1
                    self._forget([folder])
                    link = None
                    continue
                if isinstance(exc, DeltaTokenExpired):
                    raise
                self._forget([folder])
                if self.settings.folders is FolderFilter.ALL and folder not in DEFAULT_FOLDERS:
                    log.info("a folder of the mailbox is gone; dropped from its folders")
                    self.reasons["folders_gone"] += 1
                else:
                    self.missing_defaults.append(folder)
                return True
            self.pages += 1
            self.reasons["skipped_items"] += page.skipped
            matched = self._matched(self._first_sightings(page.messages))
            writes.submit(matched, page)
            cursor = self._cursor_of(page)
            if cursor.caught_up:
                return True
            link = cursor.link
        return False

    def _forget(self, folders: Sequence[str]) -> None:
        for folder in folders:
            if self.deps.state is not None:
                self.pending[folder] = ""  # with the next renewal, or the report
                continue
            self.lease()
            self.deps.cursors.put(self.mailbox.org_id, self.mailbox.mailbox_id, folder, "")

    def _apply_polled(self, pages: Sequence[DeltaPage]) -> dict[str, Cursor]:
        """Decide, store, then checkpoint pages of different folders (one poll's) as one: one records
        lookup and one save for all their messages, then each folder's cursor; returns the new cursors.
        No pages: nothing to write, no renewal."""
        if not pages:
            return {}
        messages: list[MailMessage] = []
        for page in pages:
            self.pages += 1
            self.reasons["skipped_items"] += page.skipped
            messages += self._first_sightings(page.messages)
        self._save(self._activities(messages))
        return self._checkpoint(pages)

    def _save(self, activities: Sequence[Activity]) -> None:
        if activities:
            self.lease()
            # With a webhook, each new activity's outbox event is written with it (announced at least once).
            wanted = self.deps.events is not None and bool(self.settings.webhook_url)
            announce_at = self.deps.clock.now() if wanted else None
            written = self.deps.activities.save(activities, announce_at=announce_at)
            self.threads.saved(activities, written)
            self.created += len(written.created)
            self.merged += len(written.merged)
            if written.events and self.deps.events is not None:
                self.deps.events.created(self.mailbox.org_id, written.events)

    def _checkpoint(self, pages: Sequence[DeltaPage]) -> dict[str, Cursor]:
        """Store each page's folder's next or delta link, all in one write (only once the pages'
        activities are durable)."""
        cursors = {page.folder: self._cursor_of(page) for page in pages}
        links = {folder: cursor.serialize() for folder, cursor in cursors.items()}
        if self.deps.state is not None:
            self.pending.update(links)  # written with the next renewal (before the next write), or the report
            return cursors
        self.lease()
        self.deps.cursors.put_many(self.mailbox.org_id, self.mailbox.mailbox_id, links)
        return cursors

    def _cursor_of(self, page: DeltaPage) -> Cursor:
        return Cursor(
            caught_up=page.delta_link is not None,
            link=page.delta_link or page.next_link or "",
            written_at=self.started,
        )

    def _first_sightings(self, messages: Sequence[MailMessage]) -> list[MailMessage]:
        """Graph may replay an item within a round; a run decides and counts each message once."""
        fresh = []
        for message in messages:
            if message.internet_message_id in self.seen:
                self.reasons["replayed_items"] += 1
            else:
                self.seen.add(message.internet_message_id)
                self.ages.add(message.received_at)
                fresh.append(message)
        return fresh

    def _activities(self, messages: Sequence[MailMessage]) -> list[Activity]:
        return activities_of(
            self._matched(messages), self.mailbox, activities=self.threads, fetch_attachments=self._attachments
        )

    def _matched(self, messages: Sequence[MailMessage]) -> list[tuple[MailMessage, Decision]]:
        """Decide the messages (one records lookup), counting each; the matched ones with their bodies."""
        mailbox = self.mailbox
        return matched_messages(
            messages,
            mailbox,
            self.settings,
            records=self.deps.records,
            reasons=self.reasons,
            complete=lambda matched: self.deps.mail.complete(mailbox, matched),
        )

    def _attachments(
        self, source_ids: Sequence[str], reasons: Counter[str] | None = None
    ) -> Mapping[str, tuple[AttachmentSummary, ...]]:
        """Attachment summaries; a message Graph no longer has (deleted since its page) is stored without
        one, counted in the report as ``attachments_unavailable`` (a per-message failure, not the run's;
        counted in ``reasons`` when given, else in the run's)."""
        found = self.deps.mail.attachments(self.mailbox, source_ids)
        missing = len(set(source_ids) - set(found))
        if missing:
            (self.reasons if reasons is None else reasons)["attachments_unavailable"] += missing
        return found


class _PageWrites:
    """A folder's page writes, behind the run. Once page n is decided, its reads start on a reader thread
    (its attachment listings, and its thread lookups but for messages of page n-1, still being saved),
    then its thread ids are resolved, its activities saved and its folder checkpointed on a writer thread,
    while the run fetches and decides page n+1: storage and the listings off the critical path.

    Invariants: at most one page's writes in flight (``submit`` first waits for the page before: bounded
    memory; one more page's reads may run meanwhile, read-only); pages in order, each page's save before
    its checkpoint, so a cursor is written only once its page's activities are durable, as without the
    overlap; a page's failure (its reads', a lost lease included) is raised by the next ``submit``,
    ``settle`` or ``close``, on the run's thread, before the run makes any later write, and before that
    page writes anything. Thread lookups read ahead never name a message whose save is in flight, so a
    page's threads are what they would be one page after the other (``RunThreadCache``). The threads'
    counts reach the run's report on the run's thread.

    The run's lease state (``leased``, and with ``deps.state`` the ``pending`` checkpoints that ride with
    the next renewal) has one owner at a time, never a lock: while a page's writes are in flight only the
    writer thread touches it (``_save`` renews, ``_checkpoint`` adds to ``pending``); the run's thread
    does not renew or checkpoint while it fetches and decides (no write), and touches that state again
    only after ``settle`` or ``close`` returned (``_forget``, the polled pages, ``expire_cursors``,
    ``store``), the future's result ordering the writer's changes before it. The reader thread never
    touches it."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._reader: ThreadPoolExecutor | None = None  # one page's reads at a time, in page order
        self._writer: ThreadPoolExecutor | None = None
        self._in_flight: Future[Counter[str]] | None = None
        self._saving: set[str] = set()  # Message-IDs of the page whose writes were submitted last

    def submit(self, matched: Sequence[tuple[MailMessage, Decision]], page: DeltaPage) -> None:
        messages = [m for m, _ in matched]
        ahead = [ref for ref in thread_references(messages) if ref not in self._saving]
        reads = self._read_ahead(to_list_attachments(matched), ahead)
        self.settle()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix=WRITER_THREAD_NAME)
        context = contextvars.copy_context()  # the run's Table measurements count the writer's round trips
        self._in_flight = self._writer.submit(context.run, self._write, matched, reads, page)
        self._saving = {m.internet_message_id for m in messages}

    def _read_ahead(self, source_ids: Sequence[str], references: Sequence[str]) -> Future[_Listed] | None:
        if not source_ids and not references:
            return None
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix=WRITER_THREAD_NAME + "-reads")
        run = self._run

        def read() -> _Listed:
            counts = Counter[str]()
            if references:  # answers land in the run's thread cache, for ``_write``
                run.threads.thread_ids_for_messages(run.mailbox.org_id, references)
            return (run._attachments(source_ids, counts) if source_ids else {}), counts

        return self._reader.submit(contextvars.copy_context().run, read)

    def _write(
        self, matched: Sequence[tuple[MailMessage, Decision]], reads: Future[_Listed] | None, page: DeltaPage
    ) -> Counter[str]:
        run = self._run
        files, counts = reads.result() if reads is not None else ({}, Counter[str]())
        run._save(activities_of(matched, run.mailbox, activities=run.threads, fetch_attachments=lambda _ids: files))
        run._checkpoint([page])
        return counts

    def settle(self) -> None:
        """Wait for the page in flight, if any; raise its failure."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            self._run.reasons.update(in_flight.result())

    def close(self) -> None:
        """``settle``, then end the threads (reads left behind by a failure end first)."""
        try:
            self.settle()
        finally:
            for pool in (self._writer, self._reader):
                if pool is not None:
                    pool.shutdown(wait=True)
            self._writer = self._reader = None


_Listed = tuple[Mapping[str, tuple[AttachmentSummary, ...]], Counter[str]]


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
