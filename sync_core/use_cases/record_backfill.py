"""Record-driven backfill: a record's recent correspondence arrives by itself when the record is created or
gains an address or a domain (org setting ``record_backfill_days``, 0 = off).

    records API (PUT, records:batch) ── records_before ── request_for_records(before, after) ── upsert
        │  new terms = addresses (and, when the org matches by domain, domains) the record did not have
        │  nothing new, or the setting is 0: nothing at all (no read of mailboxes, no job, no search)
        ▼
    per syncable mailbox of the org: merge the terms into its open job (one per mailbox, compare-and-set),
        or open one and queue ``BackfillRecords(org, mailbox, job)`` on the sync queue (once per job)
        ▼  queue trigger → commands.dispatch → run_job
    take the mailbox's sync lease (busy: retried after ``BUSY_RETRY``) ─ the terms in the index yet?
    (else again after ``SETTLE_RETRY``, for up to ``SETTLE_WAIT``) ─ claim the job (queued → running,
    window fixed) ─ for each chunk of ``MAX_SEARCH_TERMS`` terms, each folder the org syncs:
        MailSource.search pages ─ pipeline.build_activities (filters, never-log, ambiguity, BCC, threads)
        ─ renew the lease; ActivityStore.save (keyed: dedupe) ─ renew; checkpoint the job's progress
    ─ done: counts by reason on the job and in a run report under the job's id (``GET …/runs/{job}``)

Invariants:
- Coalesced: terms wait in the mailbox's one open job until it starts, as a set, so a 1,000-record
  ``records:batch`` is one job (one search per ``MAX_SEARCH_TERMS`` terms and folder) per mailbox, and a
  record changed again before its job ran is searched once. Terms arriving once it has started open the
  next job, which waits for the lease. A job holds at most ``MAX_JOB_TERMS`` terms (bounded rows and
  runs); a bigger change is split over several jobs.
- Never older than the window, never before the watermark: a job searches from ``since`` =
  max(start - ``record_backfill_days``, the mailbox watermark), fixed when it starts. The watermark is
  what the org chose to import for this mailbox (its connect time, or an explicit backfill); a record
  backfill fills in mail the sync already saw while nobody matched it, it never widens the history.
  An older history is the mailbox backfill's job (``POST …/mailboxes/{id}/backfill``).
- Same pipeline as the sync: ``pipeline.build_activities`` decides every message found with the
  settings read under the lease; only ``matched`` messages are stored, with the keyed, idempotent save,
  so a message already logged is linked (merged), never duplicated. Unmatched and filtered messages a
  search found leave nothing but a count.
- Writes only under the mailbox's sync lease (``sync_lease_key``), renewed compare-and-set before each
  write, like the sync run: a backfill and a sync run never write a mailbox at once, and a lost lease
  stops the job with nothing more written (its continuation resumes from the last checkpoint).
- Provider limits: a ``TransientFailure`` (throttling, outage) checkpoints and ends the invocation
  ``more``: the job is queued again after the Retry-After (else ``TRANSIENT_RETRY``). A search the
  provider capped is counted (``search_capped``), never repeated in a loop. Each invocation has a time
  budget and resumes from its checkpoint.
- Bounded attempts: an invocation that begins work counts an attempt on the job (written before any
  search, so one that dies counts too); a checkpoint (progress) resets it. A step that raises (anything
  but the classified failures above) is retried ``FAILURE_RETRY`` times its attempt number later, and a
  job with ``MAX_ATTEMPTS`` attempts in a row ends ``failed`` with ``error_code`` ``attempts_exhausted``
  and a fixed sentence (never the exception's text), instead of staying ``running`` once the queue gave
  up its message. A provider failing ``GIVE_UP_AFTER`` after the job was opened ends it ``failed``
  ``provider_unavailable``.
- One ``record_backfill`` event per step (``telemetry.RecordBackfillEvent``): ids, states and counts,
  never an address or an exception's text.
- Counts: ``reasons`` counts each message once per invocation (a continuation may count again a
  message two term chunks both found; its activity is still stored once).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sync_core.domain.folders import DEFAULT_FOLDERS
from sync_core.domain.model import Activity, FolderFilter, Mailbox, MailMessage, OrgSettings, Record, RunStatus
from sync_core.errors import (
    ConcurrencyConflict,
    ConfigurationFailure,
    GrantFailure,
    MessageNotFound,
    SyncFailure,
    TransientFailure,
    failure_of,
)
from sync_core.ports import (
    MAX_SEARCH_TERMS,
    ActivityStore,
    BackfillJob,
    BackfillJobStore,
    BackfillState,
    Clock,
    LeaseStore,
    MailboxRepository,
    MailSource,
    RecordsIndex,
    RunReport,
    RunReportStore,
    SearchQuery,
    SettingsRepository,
    Versioned,
    WorkQueue,
)
from sync_core.ports.push import ActivityEvents
from sync_core.use_cases import telemetry
from sync_core.use_cases.commands import BackfillRecords, new_run_id
from sync_core.use_cases.pipeline import RunThreadCache, build_activities
from sync_core.use_cases.sync_mailbox import LEASE_MARGIN, REPORTS_KEPT, TRANSIENT_RETRY, sync_lease_key

log = logging.getLogger(__name__)

MAX_JOB_TERMS = 2000
MERGE_ATTEMPTS = 8
BUSY_RETRY = timedelta(seconds=30)
SETTLE_RETRY = timedelta(seconds=5)  # a job whose records are not written yet looks again this much later
SETTLE_WAIT = timedelta(minutes=2)  # ... for at most this long after it was opened
BUDGET = timedelta(minutes=4)
MAX_ATTEMPTS = 3  # failed invocations in a row (below the queue's maxDequeueCount: a dying worker is caught too)
FAILURE_RETRY = timedelta(minutes=1)  # times the attempt number: the delay after a step that raised
GIVE_UP_AFTER = timedelta(hours=24)  # a provider still failing this long after the job was opened
ATTEMPTS_EXHAUSTED = "attempts_exhausted"
PROVIDER_UNAVAILABLE = "provider_unavailable"
FAILED_MESSAGES = {
    ATTEMPTS_EXHAUSTED: (
        f"the search failed {MAX_ATTEMPTS} times in a row and was stopped; the mailbox keeps syncing new mail. "
        "To import the window's mail of these records, run a backfill of the mailbox"
    ),
    PROVIDER_UNAVAILABLE: (
        "the mail provider kept refusing or throttling the search for a day and it was stopped; the mailbox "
        "keeps syncing new mail. To import the window's mail of these records, run a backfill of the mailbox"
    ),
}


@dataclass
class RecordBackfillDeps:
    mailboxes: MailboxRepository
    settings: SettingsRepository
    records: RecordsIndex
    activities: ActivityStore
    leases: LeaseStore
    reports: RunReportStore
    jobs: BackfillJobStore
    queue: WorkQueue
    mail: MailSource
    clock: Clock
    events: ActivityEvents | None = None


@dataclass
class BackfillRequestDeps:
    """What queueing a backfill from the records API needs (no mail source: a records call loads no
    provider SDK; ``enqueue`` builds the queue client on first use)."""

    mailboxes: MailboxRepository
    settings: SettingsRepository
    records: RecordsIndex
    jobs: BackfillJobStore
    clock: Clock
    enqueue: Callable[[Mapping[str, str]], None]


@dataclass(frozen=True)
class NewTerms:
    """What a change of records adds: the new addresses and domains, and the records that added them."""

    addresses: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    record_ids: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.addresses or self.domains)


def new_terms(before: Mapping[str, Record], after: Sequence[Record], settings: OrgSettings) -> NewTerms:
    """Addresses (and domains, when the org matches by domain: otherwise a domain never matches anything)
    the records in ``after`` have that their stored version in ``before`` did not."""
    addresses: dict[str, None] = {}
    domains: dict[str, None] = {}
    records: dict[str, None] = {}
    for record in after:
        old = before.get(record.record_id)
        added = [a for a in record.emails if old is None or a not in old.emails]
        added_domains = [d for d in record.domains if old is None or d not in old.domains]
        if not settings.match_by_domain:
            added_domains = []
        if added or added_domains:
            records[record.record_id] = None
            addresses.update(dict.fromkeys(added))
            domains.update(dict.fromkeys(added_domains))
    return NewTerms(tuple(addresses), tuple(domains), tuple(records))


def records_before(deps: BackfillRequestDeps, org_id: str, records: Sequence[Record]) -> Mapping[str, Record] | None:
    """What the index holds for these records before they are written, or None when the org's record
    backfill is off (nothing is read then)."""
    if deps.settings.get(org_id).record_backfill_days <= 0:
        return None
    return deps.records.get_many(org_id, [r.record_id for r in records])


def request_for_records(
    deps: BackfillRequestDeps, org_id: str, before: Mapping[str, Record] | None, after: Sequence[Record]
) -> tuple[str, ...]:
    """Queue the search of what ``after`` adds to ``before`` in every syncable mailbox of the org, before
    the records are written: if the write then fails, the CRM's retry compares against the same stored
    records and merges the same terms into the same open job (a set: no second search), and a job never
    runs on terms the index does not hold yet (``_JobRun._records_written``). Returns the ids of the
    jobs the terms went to; none when the setting is off or nothing was added."""
    settings = deps.settings.get(org_id)
    if before is None or settings.record_backfill_days <= 0:
        return ()
    terms = new_terms(before, after, settings)
    if not terms:
        return ()
    jobs: list[str] = []
    for mailbox in deps.mailboxes.list(org_id):
        if not mailbox.can_sync(settings.automation_enabled):
            continue
        for part in _parts(terms):
            jobs.append(_merge_into_open_job(deps, mailbox, part))
    return tuple(jobs)


def _parts(terms: NewTerms) -> Iterator[NewTerms]:
    """At most ``MAX_JOB_TERMS`` terms each (every record of the change named in each part)."""
    values = [("a", a) for a in terms.addresses] + [("d", d) for d in terms.domains]
    for start in range(0, len(values), MAX_JOB_TERMS):
        chunk = values[start : start + MAX_JOB_TERMS]
        yield NewTerms(
            tuple(v for kind, v in chunk if kind == "a"), tuple(v for kind, v in chunk if kind == "d"), terms.record_ids
        )


def _merge_into_open_job(deps: BackfillRequestDeps, mailbox: Mailbox, terms: NewTerms) -> str:
    """Merge into the mailbox's open job while it is queued and has room, else open a new one and queue
    it. Compare-and-set all the way: a job that started meanwhile takes no more terms."""
    org_id, mailbox_id = mailbox.org_id, mailbox.mailbox_id
    for _ in range(MERGE_ATTEMPTS):
        pointer = deps.jobs.open_job(org_id, mailbox_id)
        current = deps.jobs.get(org_id, mailbox_id, pointer.value) if pointer is not None else None
        if current is not None and current.value.state is BackfillState.QUEUED:
            job = current.value
            merged = replace(
                job,
                addresses=tuple(dict.fromkeys((*job.addresses, *terms.addresses))),
                domains=tuple(dict.fromkeys((*job.domains, *terms.domains))),
                record_ids=tuple(dict.fromkeys((*job.record_ids, *terms.record_ids))),
            )
            if len(merged.addresses) + len(merged.domains) <= MAX_JOB_TERMS:
                if merged == job or deps.jobs.put(merged, current) is not None:
                    deps.jobs.link_records(org_id, mailbox_id, job.job_id, terms.record_ids)
                    return job.job_id
                continue  # it changed (merged into, or started): read again
        fresh = BackfillJob(
            org_id, mailbox_id, new_run_id(), deps.clock.now(),
            addresses=terms.addresses, domains=terms.domains, record_ids=terms.record_ids,
        )  # fmt: skip
        if deps.jobs.put(fresh, None) is None:
            continue
        deps.jobs.set_open_job(org_id, mailbox_id, fresh.job_id, pointer)  # lost: another job is open, fine
        deps.jobs.link_records(org_id, mailbox_id, fresh.job_id, terms.record_ids)
        deps.enqueue(BackfillRecords(org_id, mailbox_id, fresh.job_id).to_json())
        return fresh.job_id
    raise ConcurrencyConflict("the mailbox's backfill job kept changing")


# -- running a job ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobOutcome:
    """How a step ended; ``failure``: the class code of what made it end so (empty: nothing failed),
    ``retrying``: the step raised and the job is tried again after ``retry_after``."""

    status: RunStatus
    retry_after: float | None = None
    failure: str = ""
    retrying: bool = False


def process(deps: RecordBackfillDeps, command: BackfillRecords, budget: timedelta = BUDGET) -> RunStatus:
    """Run one ``BackfillRecords`` message and queue what follows: a continuation (``more``, after the
    Retry-After) or a retry once the lease is free (``busy``)."""
    outcome = run_job(deps, command.org_id, command.mailbox_id, command.job_id, budget)
    if outcome.status is RunStatus.MORE:
        delay = max(math.ceil(outcome.retry_after or 0), 0)
        deps.queue.enqueue(command.to_json(), delay)
    elif outcome.status is RunStatus.BUSY:
        deps.queue.enqueue(command.to_json(), int(BUSY_RETRY.total_seconds()))
    return outcome.status


def run_job(
    deps: RecordBackfillDeps, org_id: str, mailbox_id: str, job_id: str, budget: timedelta = BUDGET
) -> JobOutcome:
    """One invocation of a job: see the module docstring."""
    stored = deps.jobs.get(org_id, mailbox_id, job_id)
    if stored is None or stored.value.state in {BackfillState.DONE, BackfillState.SKIPPED, BackfillState.FAILED}:
        return JobOutcome(RunStatus.DONE)  # unknown, or a redelivery of a finished job
    run = _JobRun(deps, stored, budget)
    outcome: JobOutcome | None = None
    try:
        outcome = run.execute()
        return outcome
    finally:
        run.release()
        run.emit(outcome)


class _LeaseLost(Exception):
    """The job's lease was taken over: stop writing (the continuation resumes from the checkpoint)."""


class _JobRun:
    def __init__(self, deps: RecordBackfillDeps, stored: Versioned[BackfillJob], budget: timedelta) -> None:
        self.deps = deps
        self.stored = stored
        self.started = deps.clock.now()
        self.deadline = self.started + budget
        self.owner = uuid.uuid4().hex
        self.key = sync_lease_key(stored.value.org_id, stored.value.mailbox_id)
        self.leased = False
        self.reasons: Counter[str] = Counter(stored.value.reasons)
        self.per_record: Counter[str] = Counter(stored.value.per_record)
        self.created = stored.value.activities_created
        self.merged = stored.value.activities_merged
        self.searches = stored.value.searches
        self.seen: set[str] = set()
        self.threads = RunThreadCache(deps.activities)
        self.requests_before = 0
        self.mailbox: Mailbox | None = None
        self.clock_started = time.perf_counter()
        self.at_start = (self.searches, self.created, self.merged)

    @property
    def job(self) -> BackfillJob:
        return self.stored.value

    def lease(self) -> None:
        now = self.deps.clock.now()
        until = max(self.deadline, now) + LEASE_MARGIN
        if self.leased:
            if not self.deps.leases.renew(self.key, self.owner, until):
                self.leased = False
                raise _LeaseLost
            return
        if not self.deps.leases.acquire(self.key, self.owner, until, now):
            raise _LeaseLost
        self.leased = True

    def release(self) -> None:
        if self.leased:
            self.deps.leases.release(self.key, self.owner)
            self.leased = False

    def execute(self) -> JobOutcome:
        try:
            self.lease()
        except _LeaseLost:
            return JobOutcome(RunStatus.BUSY)
        found = self.deps.mailboxes.get(self.job.org_id, self.job.mailbox_id)
        settings = self.deps.settings.get(self.job.org_id)
        if found is None or not found.value.can_sync(settings.automation_enabled):
            self._finish(BackfillState.SKIPPED, "the mailbox cannot sync now", code="mailbox_not_syncable")
            return JobOutcome(RunStatus.SKIPPED)
        if settings.record_backfill_days <= 0:
            self._finish(BackfillState.SKIPPED, "record backfill is switched off for the organisation",
                         code="record_backfill_off")  # fmt: skip
            return JobOutcome(RunStatus.SKIPPED)
        mailbox = self.mailbox = found.value
        if self.job.state is BackfillState.QUEUED and not self._records_written():
            return JobOutcome(RunStatus.MORE, SETTLE_RETRY.total_seconds())
        if self.job.attempts >= MAX_ATTEMPTS:  # the last attempts died without a word
            return self._give_up(mailbox, ATTEMPTS_EXHAUSTED, SyncFailure.code)
        self.requests_before = self.deps.mail.requests_for(mailbox)
        try:
            if self.job.state is BackfillState.QUEUED:
                self._claim(mailbox, settings)
            else:
                self._write(replace(self.job, attempts=self.job.attempts + 1))
            complete = self._search_all(mailbox, settings)
        except _LeaseLost:
            log.warning("record backfill %s lost the lease of mailbox %s; its continuation resumes", self.job.job_id,
                        self.job.mailbox_id)  # fmt: skip
            return JobOutcome(RunStatus.BUSY)
        except TransientFailure as exc:
            if self.started - self.job.created_at >= GIVE_UP_AFTER:
                return self._give_up(mailbox, PROVIDER_UNAVAILABLE, TransientFailure.code)
            self._checkpoint(self.job.progress)  # the provider's pause is no failed attempt of the job
            told = exc.retry_after
            wait = told if told is not None else TRANSIENT_RETRY.total_seconds()
            return JobOutcome(RunStatus.MORE, wait, failure=TransientFailure.code)
        except (ConfigurationFailure, GrantFailure) as exc:
            self._finish(BackfillState.FAILED, str(exc) or type(exc).__name__, mailbox, code=exc.code,
                         failure=failure_of(exc).code)  # fmt: skip
            return JobOutcome(RunStatus.FAILED, failure=failure_of(exc).code)
        except Exception as exc:  # the step raised: counted, retried later, bounded by MAX_ATTEMPTS
            attempts = self.job.attempts
            log.error("record backfill %s of mailbox %s raised %s (attempt %d of %d)", self.job.job_id,
                      self.job.mailbox_id, type(exc).__name__, attempts, MAX_ATTEMPTS)  # fmt: skip
            if attempts >= MAX_ATTEMPTS:
                return self._give_up(mailbox, ATTEMPTS_EXHAUSTED, failure_of(exc).code)
            delay = FAILURE_RETRY.total_seconds() * max(attempts, 1)
            return JobOutcome(RunStatus.MORE, delay, failure=failure_of(exc).code, retrying=True)
        if not complete:
            return JobOutcome(RunStatus.MORE, 0)
        self._finish(BackfillState.DONE, "", mailbox)
        return JobOutcome(RunStatus.DONE)

    def _records_written(self) -> bool:
        """Are the job's terms in the index yet? The API queues the job before it writes the records (so a
        failed write retried by the CRM still finds its terms queued); a job that meets the index without
        them waits ``SETTLE_RETRY`` at a time, up to ``SETTLE_WAIT`` after it was opened, then runs
        anyway (a write that never happened, or a later change that removed the term, matches nothing)."""
        if self.started - self.job.created_at >= SETTLE_WAIT:
            return True
        records = self.deps.records.get_many(self.job.org_id, self.job.record_ids).values()
        emails = {address for record in records for address in record.emails}
        domains = {domain for record in records for domain in record.domains}
        return set(self.job.addresses) <= emails and set(self.job.domains) <= domains

    def _claim(self, mailbox: Mailbox, settings: OrgSettings) -> None:
        """queued → running, with the window fixed; then close the open pointer if it names this job."""
        window = timedelta(days=settings.record_backfill_days)
        since = max(self.started - window, mailbox.watermark)
        self._write(replace(self.job, state=BackfillState.RUNNING, since=since, progress="0 0 ", attempts=1))
        pointer = self.deps.jobs.open_job(self.job.org_id, self.job.mailbox_id)
        if pointer is not None and pointer.value == self.job.job_id:
            self.deps.jobs.set_open_job(self.job.org_id, self.job.mailbox_id, None, pointer)

    def _search_all(self, mailbox: Mailbox, settings: OrgSettings) -> bool:
        """Every chunk, every folder, page by page from the checkpoint; False when the budget ran out."""
        terms = [("a", a) for a in self.job.addresses] + [("d", d) for d in self.job.domains]
        chunks = [terms[i : i + MAX_SEARCH_TERMS] for i in range(0, len(terms), MAX_SEARCH_TERMS)]
        folders = DEFAULT_FOLDERS if settings.folders is not FolderFilter.ALL else self.deps.mail.folders(mailbox)
        chunk_index, folder_index, cursor = _progress(self.job.progress)
        assert self.job.since is not None
        while chunk_index < len(chunks):
            chunk = chunks[chunk_index]
            query_folder = folders[folder_index] if folder_index < len(folders) else None
            if query_folder is None:
                chunk_index, folder_index, cursor = chunk_index + 1, 0, None
                continue
            if self.deps.clock.now() >= self.deadline:
                return False
            query = SearchQuery(
                query_folder,
                tuple(v for kind, v in chunk if kind == "a"),
                tuple(v for kind, v in chunk if kind == "d"),
                self.job.since,
            )
            try:
                page = self.deps.mail.search(mailbox, query, cursor)
            except MessageNotFound:
                self.reasons["folders_gone"] += 1
                folder_index, cursor = folder_index + 1, None
                self._checkpoint(_progress_text(chunk_index, folder_index, cursor))
                continue
            self.searches += 1
            if page.capped:
                self.reasons["search_capped"] += 1
            self._apply(mailbox, settings, page.messages)
            if page.cursor is None:
                folder_index, cursor = folder_index + 1, None
            else:
                cursor = page.cursor
            self._checkpoint(_progress_text(chunk_index, folder_index, cursor))
        return True

    def _apply(self, mailbox: Mailbox, settings: OrgSettings, messages: Sequence[MailMessage]) -> None:
        fresh = []
        for message in messages:
            mid = message.internet_message_id
            if mid not in self.seen:
                self.seen.add(mid)
                fresh.append(message)
        activities = build_activities(
            fresh,
            mailbox,
            settings,
            records=self.deps.records,
            activities=self.threads,
            reasons=self.reasons,
            fetch_attachments=lambda ids: self.deps.mail.attachments(mailbox, ids),
        )
        if not activities:
            return
        self.lease()
        wanted = self.deps.events is not None and bool(settings.webhook_url)
        written = self.deps.activities.save(activities, announce_at=self.deps.clock.now() if wanted else None)
        self.threads.saved(activities, written)
        self.created += len(written.created)
        self.merged += len(written.merged)
        if written.events and self.deps.events is not None:
            self.deps.events.created(mailbox.org_id, written.events)
        self._count_records(activities)

    def _count_records(self, activities: Sequence[Activity]) -> None:
        of_job = set(self.job.record_ids)
        for activity in activities:
            for ref in activity.records:
                if ref.record_id in of_job:
                    self.per_record[ref.record_id] += 1

    def _checkpoint(self, progress: str) -> None:
        """Record progress; the job moved forward, so no failed attempt is pending."""
        self._write(replace(self._counted(), progress=progress, attempts=0))

    def _counted(self) -> BackfillJob:
        return replace(
            self.job,
            reasons=dict(self.reasons),
            per_record=dict(self.per_record),
            activities_created=self.created,
            activities_merged=self.merged,
            searches=self.searches,
        )

    def _write(self, job: BackfillJob) -> None:
        self.lease()
        written = self.deps.jobs.put(job, self.stored)
        if written is None:
            raise _LeaseLost  # only a lease holder writes a started job: someone else has it
        self.stored = written

    def _give_up(self, mailbox: Mailbox, code: str, failure: str) -> JobOutcome:
        """End the job ``failed`` with ``code`` and its fixed sentence (no exception's text)."""
        self._finish(BackfillState.FAILED, FAILED_MESSAGES[code], mailbox, code=code, failure=failure)
        return JobOutcome(RunStatus.FAILED, failure=failure)

    def emit(self, outcome: JobOutcome | None) -> None:
        """The step's ``record_backfill`` event (``outcome`` None: the step raised). Never raises."""
        job, mailbox = self.job, self.mailbox
        try:
            label = "raised" if outcome is None else "retrying" if outcome.retrying else outcome.status.value
            searches, created, merged = self.at_start
            telemetry.emit(
                telemetry.RecordBackfillEvent(
                    org_id=job.org_id,
                    mailbox_id=job.mailbox_id,
                    job_id=job.job_id,
                    outcome=label,
                    state=job.state.value,
                    attempt=job.attempts,
                    failure_class=outcome.failure if outcome is not None else "unexpected",
                    error_code=job.error_code,
                    duration_ms=int((time.perf_counter() - self.clock_started) * 1000),
                    terms=len(job.addresses) + len(job.domains),
                    records=len(job.record_ids),
                    searches=self.searches - searches,
                    activities_created=self.created - created,
                    activities_merged=self.merged - merged,
                    requests=self.deps.mail.requests_for(mailbox) - self.requests_before if mailbox else 0,
                    retry_after_s=outcome.retry_after if outcome is not None else None,
                )
            )
        except Exception as exc:  # the event never fails the job it describes
            log.warning("could not log a record_backfill event: %s", type(exc).__name__)

    def _finish(
        self, state: BackfillState, error: str, mailbox: Mailbox | None = None, code: str = "", failure: str = ""
    ) -> None:
        """End the job in ``state`` (its run report too, when the mailbox was read); ``failure`` the class
        code of a failed one (default ``configuration``)."""
        now = self.deps.clock.now()
        self._write(replace(self._counted(), state=state, error=error, error_code=code, finished_at=now))
        if mailbox is None:
            return
        report = RunReport(
            org_id=self.job.org_id,
            mailbox_id=self.job.mailbox_id,
            run_id=self.job.job_id,
            started_at=self.started,
            finished_at=now,
            reasons=dict(self.reasons),
            pages=self.searches,
            graph_requests=self.deps.mail.requests_for(mailbox) - self.requests_before,
            activities_created=self.created,
            activities_merged=self.merged,
            error=error,
            error_class=(failure or ConfigurationFailure.code) if state is BackfillState.FAILED else "",
        )
        self.lease()
        self.deps.reports.add(report, keep=REPORTS_KEPT)


def _progress(text: str) -> tuple[int, int, str | None]:
    chunk, _, rest = (text or "0 0 ").partition(" ")
    folder, _, cursor = rest.partition(" ")
    return int(chunk or 0), int(folder or 0), cursor or None


def _progress_text(chunk: int, folder: int, cursor: str | None) -> str:
    return f"{chunk} {folder} {cursor or ''}"


def job_to_json(job: BackfillJob) -> dict[str, object]:
    """What ``GET …/records/{id}/backfill`` shows of a job (ids and counts only: no addresses)."""
    return {
        "job_id": job.job_id,
        "mailbox_id": job.mailbox_id,
        "state": job.state.value,
        "created_at": _iso(job.created_at),
        "since": _iso(job.since),
        "finished_at": _iso(job.finished_at),
        "searches": job.searches,
        "reasons": dict(job.reasons),
        "activities_created": job.activities_created,
        "activities_merged": job.activities_merged,
        "records": len(job.record_ids),
        "error": job.error,
        "error_code": job.error_code,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
