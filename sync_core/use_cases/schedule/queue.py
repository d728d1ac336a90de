"""Scheduling (spec §5): when mailboxes sync, and the queue messages that make them sync.

    connect / app-mode add ─ schedule_mailbox(at=now) ─┐
                                                        ▼
    timer, every minute ── enqueue_due ──> due index ("due by now": one range query per shard, entries
        │  and versions included); claim them in bulk (compare-and-set: due += poll interval; queued_at
        │  kept only while recent), each conflicting one alone, then enqueue {org_id, mailbox_id, reason};
        │  plus one page of the reconciliation sweep
        ▼
    queue ── process_message ── apply a pending backfill (under the mailbox's sync lease)
                              ── sync_mailbox ── done:    due = now + poll interval, queued_at cleared (no
                                              │           write when the entry already says so in substance)
                                              ── more:    continuation message (delay = Retry-After), queued_at = now
                                              ── busy:    another run holds the lease: drop (coalesced)
                                              ── failed:  status already set by the run (grant: needs_reauth,
                                              │           parked; configuration: error, due in ERROR_RETRY)
                                              ── skipped: not syncable; entry parked (removed when gone/disconnected)
                                              ── raised:  the host retries the message; its last delivery
                                                          gives up (``give_up``), see below
    "Sync now" / backfill ── request_sync / request_backfill ── coalesced when a message is already queued

Invariants:
- Every minute the timer reads only the entries that are due; no per-tick work grows with the number of
  mailboxes, except the sweep's one bounded page.
- Only "sync now", backfill and continuations set ``queued_at``; an enqueue (timer or request) is skipped
  while it is less than ``COALESCE_WINDOW`` old and no run finished since. Timer messages are not marked:
  a duplicate meets the run's lease and is dropped, or costs one idle poll.
- An idle poll through the timer writes the due entry once (the claim): a run ending ``done`` leaves an
  entry with no ``queued_at``, no pending backfill and ``due_at`` within the next poll interval as it is.
- A claim is written at the version the due query read, so of two racing timers only one enqueues a
  mailbox; a bulk claim that met a change is redone entry by entry (re-read, compare-and-set).
- A mailbox without an entry gets one from: ``schedule_mailbox`` (connect, add, re-enable), the end of any
  run of it, or the sweep, which checks ``SWEEP_PAGE`` mailboxes of the catalog per tick and wraps around.
- A mailbox that is not syncable (paused, needs_reauth) stays in the index, rechecked every
  ``PARKED_RECHECK``; a missing or disconnected one leaves it. A mailbox in ``error`` is syncable: the
  timer retries it every ``ERROR_RETRY``, "Sync now" and backfill are accepted at once (never 409), and
  the first run that succeeds sets it ``active`` again. Nothing but a grant failure, a pause or a
  disconnect stops a mailbox from being retried.
- Transient failures never park a mailbox nor change its status: a run ends ``more`` and continues after
  the Retry-After (or a backoff) in a continuation message.
- Backfill moves the watermark back and clears the delta cursors only while holding the mailbox's sync
  lease (renewed before each of the two writes), so no run in flight can write back a cursor read before
  the backfill: a run renews the same lease before each of its writes and stops once it finds it taken.
- A message failing on its last delivery (``dequeue_count`` = maxDequeueCount), with a failure that is
  not transient, sets the mailbox to ``error`` with "sync failed N times: <exception type>" before the
  host moves it to the poison queue, and keeps it due every ``ERROR_RETRY``, so it recovers by itself
  once the cause is gone (each failed run's report already holds its class and reason). A transient one
  (storage unreachable) only makes it due again after ``ERROR_RETRY``. Exception text (which may hold
  data) is never stored or logged.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from sync_core.domain.model import SYNCABLE_STATUSES, Mailbox, MailboxStatus, RequestStatus, RunStatus
from sync_core.errors import (
    ConcurrencyConflict,
    GrantFailure,
    InvalidCommand,
    MailboxNotFound,
    NotSyncable,
    TransientFailure,
    failure_of,
)
from sync_core.ports import (
    Clock,
    CursorStore,
    LeaseStore,
    MailboxRepository,
    SettingsRepository,
    Versioned,
    WorkQueue,
)
from sync_core.scheduling_ports import DueEntry, DueIndex, MailboxCatalog
from sync_core.use_cases.commands import SyncMailbox, SyncReason
from sync_core.use_cases.mailbox_updates import update_mailbox
from sync_core.use_cases.sync_mailbox import SyncOutcome, sync_lease_key

log = logging.getLogger(__name__)

COALESCE_WINDOW = timedelta(seconds=120)
PARKED_RECHECK = timedelta(hours=1)
ERROR_RETRY = timedelta(minutes=15)  # a mailbox in ``error`` is retried this often (Sync now: at once)
TICK_LIMIT = 5000  # due mailboxes one tick enqueues at most; the rest stay due for the next tick
TICK_BUDGET = timedelta(seconds=40)  # stop claiming well before the next minute's tick
TICK_PARALLELISM = 8
TICK_CHUNK = 256  # due entries claimed per bulk claim (a few transactions of up to 33 per shard on Table)
SWEEP_PAGE = 100
UPDATE_ATTEMPTS = 5
BACKFILL_LEASE = timedelta(minutes=1)
MAX_BACKFILL_DAYS = 365
MAX_DELAY_SECONDS = 7 * 24 * 3600 - 1


class Claim(StrEnum):
    """What the timer did with one due entry: ``enqueued`` a message, ``coalesced`` with one queued
    recently, or ``lost`` the entry to a racing writer (moved or removed since the due query read it)."""

    ENQUEUED = "enqueued"
    COALESCED = "coalesced"
    LOST = "lost"


# -- errors the HTTP API maps to statuses -----------------------------------------------------------


# -- deps, messages, reports -------------------------------------------------------------------------


@dataclass
class ScheduleDeps:
    due: DueIndex
    queue: WorkQueue
    mailboxes: MailboxRepository
    settings: SettingsRepository
    cursors: CursorStore
    leases: LeaseStore
    clock: Clock
    sync: Callable[[str, str], SyncOutcome]
    catalog: MailboxCatalog | None = None


@dataclass(frozen=True)
class TickReport:
    due: int = 0
    enqueued: int = 0
    coalesced: int = 0
    lost_races: int = 0
    swept: int = 0
    added: int = 0


@dataclass(frozen=True)
class SyncRequest:
    """What a "sync now" or backfill request did: ``queued`` a message, or ``coalesced`` with one
    already queued. ``since`` is the backfill's new watermark; ``applied`` whether the watermark and
    cursors were already changed (else the next run of the mailbox applies it)."""

    status: RequestStatus
    since: datetime | None = None
    applied: bool = False


# -- scheduling ----------------------------------------------------------------------------------


def schedule_mailbox(deps: ScheduleDeps, org_id: str, mailbox_id: str, at: datetime | None = None) -> DueEntry:
    """Make the mailbox due no later than ``at`` (default now). Call it when a mailbox becomes active:
    after a connect callback, an application-mode add, a re-enable. Idempotent; never delays an entry."""
    moment = at or deps.clock.now()

    def change(current: DueEntry | None) -> DueEntry:
        if current is None:
            return DueEntry(org_id, mailbox_id, moment)
        return replace(current, due_at=min(current.due_at, moment))

    entry = _update(deps.due, org_id, mailbox_id, change)
    assert entry is not None
    return entry


def unschedule_mailbox(deps: ScheduleDeps, org_id: str, mailbox_id: str) -> None:
    """Remove the mailbox from the index (a disconnect); ``schedule_mailbox`` adds it again."""
    _update(deps.due, org_id, mailbox_id, lambda _current: None)


def enqueue_due(deps: ScheduleDeps) -> TickReport:
    """The minute timer: one sweep page, then claim and enqueue every due mailbox (bounded per tick)."""
    now = deps.clock.now()
    swept, added = _sweep(deps, now)
    due = deps.due.due(now, TICK_LIMIT)
    intervals: dict[str, timedelta] = {}
    for org_id in {found.value.org_id for found in due}:
        intervals[org_id] = _poll_interval(deps, org_id)
    outcomes: list[str] = []
    deadline = now + TICK_BUDGET
    with ThreadPoolExecutor(max_workers=TICK_PARALLELISM) as pool:
        for start in range(0, len(due), TICK_CHUNK):
            if start and deps.clock.now() > deadline:
                log.warning("timer: budget spent; %d due mailboxes left for the next tick", len(due) - start)
                break
            outcomes.extend(_claim_chunk(deps, pool, due[start : start + TICK_CHUNK], now, intervals))
    report = TickReport(
        due=len(due),
        enqueued=outcomes.count(Claim.ENQUEUED),
        coalesced=outcomes.count(Claim.COALESCED),
        lost_races=outcomes.count(Claim.LOST),
        swept=swept,
        added=added,
    )
    if report.due or report.added:
        log.info(
            "timer: %d due, %d enqueued, %d coalesced, %d taken by another writer; sweep checked %d, added %d",
            report.due, report.enqueued, report.coalesced, report.lost_races, report.swept, report.added,
        )
    return report


def _claim_chunk(
    deps: ScheduleDeps,
    pool: ThreadPoolExecutor,
    chunk: Sequence[Versioned[DueEntry]],
    now: datetime,
    intervals: dict[str, timedelta],
) -> list[Claim]:
    """Claim the chunk at the versions the due query read (in bulk), then enqueue; an entry whose bulk
    claim was not written is claimed alone (re-read, compare-and-set), so a racing timer never wins it too."""
    claims = [(_claimed(found.value, now, intervals[found.value.org_id]), found) for found in chunk]
    written = deps.due.put_many(claims)

    def finish(found: Versioned[DueEntry], version: Versioned[DueEntry] | None) -> Claim:
        entry = found.value
        if version is None:
            return _claim(deps, entry.org_id, entry.mailbox_id, now, intervals[entry.org_id])
        return _enqueue_claimed(deps, entry, now)

    return list(pool.map(finish, chunk, written))


def _claim(deps: ScheduleDeps, org_id: str, mailbox_id: str, now: datetime, interval: timedelta) -> Claim:
    current = deps.due.get(org_id, mailbox_id)
    if current is None or current.value.due_at > now:
        return Claim.LOST  # moved or removed since the index was read
    if deps.due.put(_claimed(current.value, now, interval), current) is None:
        return Claim.LOST
    return _enqueue_claimed(deps, current.value, now)


def _enqueue_claimed(deps: ScheduleDeps, entry: DueEntry, now: datetime) -> Claim:
    """After a claim of ``entry`` (as read before it): enqueue a timer message, unless one queued
    recently covers this turn."""
    if _recently_queued(entry, now):
        return Claim.COALESCED
    _enqueue(deps, SyncMailbox(entry.org_id, entry.mailbox_id, SyncReason.TIMER))
    return Claim.ENQUEUED


def _claimed(entry: DueEntry, now: datetime, interval: timedelta) -> DueEntry:
    """The entry once the timer claimed it: due one interval on; a recent ``queued_at`` kept (the queued
    message covers this turn), an expired one dropped. A timer message itself is never marked."""
    return replace(entry, due_at=now + interval, queued_at=entry.queued_at if _recently_queued(entry, now) else None)


def _sweep(deps: ScheduleDeps, now: datetime) -> tuple[int, int]:
    """Give an entry to active mailboxes that have none, ``SWEEP_PAGE`` mailboxes per tick."""
    if deps.catalog is None:
        return 0, 0
    position = deps.due.sweep_position()
    try:
        page, following = deps.catalog.page(position, SWEEP_PAGE)
    except ValueError:
        page, following = deps.catalog.page(None, SWEEP_PAGE)
    candidates = [(m.org_id, m.mailbox_id) for m in page if m.status in SYNCABLE_STATUSES and m.enabled]
    missing = deps.due.missing(candidates) if candidates else ()
    for org_id, mailbox_id in missing:
        log.info("sweep: scheduling mailbox %s of org %s, which had no due entry", mailbox_id, org_id)
        schedule_mailbox(deps, org_id, mailbox_id, now)
    if following != position:
        deps.due.set_sweep_position(following)
    return len(page), len(missing)


# -- requests from the API ---------------------------------------------------------------------------


def request_sync(deps: ScheduleDeps, org_id: str, mailbox_id: str) -> SyncRequest:
    """"Sync now": enqueue a run unless one is already queued. ``MailboxNotFound``, ``NotSyncable``."""
    _syncable(deps, org_id, mailbox_id)
    now = deps.clock.now()
    interval = _poll_interval(deps, org_id)
    coalesced = False

    def change(current: DueEntry | None) -> DueEntry:
        nonlocal coalesced
        coalesced = current is not None and _recently_queued(current, now)
        if current is not None and coalesced:
            return current
        return replace(current or DueEntry(org_id, mailbox_id, now + interval), queued_at=now)

    _update(deps.due, org_id, mailbox_id, change)
    if coalesced:
        return SyncRequest(RequestStatus.COALESCED)
    _enqueue_or_unmark(deps, SyncMailbox(org_id, mailbox_id, SyncReason.SYNC_NOW), now)
    return SyncRequest(RequestStatus.QUEUED)


def request_backfill(deps: ScheduleDeps, org_id: str, mailbox_id: str, days: int) -> SyncRequest:
    """Sync the last ``days`` days (1-365): move the watermark back to now - days, clear the delta cursors
    (re-reading is harmless: activities are keyed), enqueue a run. Refused (``NotSyncable``) unless the
    mailbox can sync, so a broken connection never produces a partial history."""
    if not 1 <= days <= MAX_BACKFILL_DAYS:
        raise ValueError(f"days must be 1-{MAX_BACKFILL_DAYS}")
    _syncable(deps, org_id, mailbox_id)
    now = deps.clock.now()
    since = now - timedelta(days=days)
    interval = _poll_interval(deps, org_id)

    def change(current: DueEntry | None) -> DueEntry:
        base = current or DueEntry(org_id, mailbox_id, now + interval)
        pending = min(base.backfill_since, since) if base.backfill_since else since
        return replace(base, backfill_since=pending, queued_at=now)

    _update(deps.due, org_id, mailbox_id, change)
    applied = apply_pending_backfill(deps, org_id, mailbox_id)
    _enqueue_or_unmark(deps, SyncMailbox(org_id, mailbox_id, SyncReason.BACKFILL), now)
    return SyncRequest(RequestStatus.QUEUED, since=since, applied=applied)


def apply_pending_backfill(deps: ScheduleDeps, org_id: str, mailbox_id: str) -> bool:
    """Apply the entry's pending backfill under the sync lease. True when nothing is pending any more;
    False when a run holds the lease (the end of that run enqueues another one, which applies it) or a
    disconnect took it over meanwhile (the backfill stays pending)."""
    current = deps.due.get(org_id, mailbox_id)
    if current is None or current.value.backfill_since is None:
        return True
    since = current.value.backfill_since
    owner = f"backfill-{uuid.uuid4().hex}"
    key = sync_lease_key(org_id, mailbox_id)
    now = deps.clock.now()
    if not deps.leases.acquire(key, owner, now + BACKFILL_LEASE, now):
        return False

    def still_held() -> bool:  # the fence before each write: false once taken over (a disconnect)
        held = deps.leases.renew(key, owner, deps.clock.now() + BACKFILL_LEASE)
        if not held:
            log.warning("backfill of mailbox %s of org %s lost the sync lease; left pending", mailbox_id, org_id)
        return held

    try:
        if not (_move_watermark(deps, org_id, mailbox_id, since, still_held) and still_held()):
            return False
        deps.cursors.clear(org_id, mailbox_id)

        def done(entry: DueEntry | None) -> DueEntry | None:
            # A backfill reaching further back, requested meanwhile, stays pending for the next run.
            return replace(entry, backfill_since=None) if entry and entry.backfill_since == since else entry

        _update(deps.due, org_id, mailbox_id, done)
    finally:
        deps.leases.release(key, owner)
    log.info("backfill applied to mailbox %s of org %s", mailbox_id, org_id)
    return True


def _move_watermark(
    deps: ScheduleDeps, org_id: str, mailbox_id: str, since: datetime, fence: Callable[[], bool]
) -> bool:
    """Move the watermark back to ``since`` (never forward); False when ``fence`` says the lease is lost."""

    def fenced() -> None:
        if not fence():
            raise _FenceLost

    try:
        update_mailbox(deps.mailboxes, org_id, mailbox_id, lambda m: m.backfilled(since), before_write=fenced)
    except _FenceLost:
        return False
    return True


class _FenceLost(Exception):
    """Control flow only: the backfill's lease was taken over before its write."""


# -- the queue-triggered run -------------------------------------------------------------------------


def process_message(
    deps: ScheduleDeps, body: bytes | str, dequeue_count: int, max_dequeue_count: int
) -> RunStatus:
    """Run one sync-queue message as it came (``commands.dispatch`` for the sync queue, on this deps):
    returns the outcome, ``invalid`` for a message that is not a ``SyncMailbox``."""
    try:
        message = SyncMailbox.parse(body)
    except InvalidCommand as exc:
        log.warning("dropping a sync message: %s", exc)  # retrying would never make it valid
        return RunStatus.INVALID
    return run_command(deps, message, dequeue_count, max_dequeue_count)


def run_command(deps: ScheduleDeps, message: SyncMailbox, dequeue_count: int, max_dequeue_count: int) -> RunStatus:
    """Run one ``SyncMailbox``; returns the outcome (``done``, ``more``, ``busy``, ``skipped`` or
    ``failed``). Raises when the run raised, so the host retries the message; on its last delivery
    ``give_up`` records the failure first."""
    try:
        return _process(deps, message)
    except Exception as exc:
        log.warning(
            "sync of mailbox %s (org %s) raised %s on delivery %d of %d",
            message.mailbox_id, message.org_id, type(exc).__name__, dequeue_count, max_dequeue_count,
        )
        if dequeue_count >= max_dequeue_count:
            give_up(deps, message.org_id, message.mailbox_id, dequeue_count, exc)
        raise


def _process(deps: ScheduleDeps, message: SyncMailbox) -> RunStatus:
    org_id, mailbox_id = message.org_id, message.mailbox_id
    if not apply_pending_backfill(deps, org_id, mailbox_id):
        return RunStatus.BUSY  # a run holds the lease; its end sees the pending backfill
    outcome = deps.sync(org_id, mailbox_id)
    now = deps.clock.now()
    if outcome.status == RunStatus.BUSY:
        return RunStatus.BUSY
    if outcome.status == RunStatus.MORE:
        _reschedule(deps, org_id, mailbox_id, now, queued=True)
        delay = min(max(math.ceil(outcome.retry_after or 0), 0), MAX_DELAY_SECONDS)
        deps.queue.enqueue(SyncMailbox(org_id, mailbox_id, SyncReason.CONTINUATION).to_json(), delay)
    elif outcome.status == RunStatus.DONE:
        entry = _reschedule(deps, org_id, mailbox_id, now, queued=None)
        if entry is not None and entry.backfill_since is not None:  # requested while this run held the lease
            deps.queue.enqueue(SyncMailbox(org_id, mailbox_id, SyncReason.BACKFILL).to_json())
    elif outcome.status == RunStatus.SKIPPED:
        found = deps.mailboxes.get(org_id, mailbox_id)
        if found is None or found.value.status is MailboxStatus.DISCONNECTED:
            unschedule_mailbox(deps, org_id, mailbox_id)
        else:
            _park(deps, org_id, mailbox_id, now)
    elif outcome.failure is GrantFailure:  # the run set needs_reauth: nothing to retry until reconnected
        _park(deps, org_id, mailbox_id, now)
    else:  # a configuration failure: the run set error with the reason; retried until a run succeeds
        _park(deps, org_id, mailbox_id, now, ERROR_RETRY)
    return outcome.status


def give_up(deps: ScheduleDeps, org_id: str, mailbox_id: str, attempts: int, exc: BaseException) -> None:
    """The last delivery of a message failed. A transient failure (storage unreachable) changes nothing
    but the due time: the mailbox is retried after ``ERROR_RETRY``, never parked. Anything else sets the
    mailbox to ``error`` ("sync failed N times: <type>", visible to the CRM) and keeps it scheduled every
    ``ERROR_RETRY``: the next run that succeeds clears the error. Best effort: the message goes to the
    poison queue whatever happens here."""
    transient = issubclass(failure_of(exc), TransientFailure)
    reason = f"sync failed {attempts} times: {type(exc).__name__}"
    def errored(mailbox: Mailbox) -> Mailbox | None:
        return mailbox.failed(MailboxStatus.ERROR, reason) if mailbox.can_sync_status() else None

    try:
        if not transient:
            try:
                update_mailbox(deps.mailboxes, org_id, mailbox_id, errored)
            except ConcurrencyConflict:  # kept changing: the mailbox is still parked below
                log.warning("mailbox %s kept changing; its status was not updated", mailbox_id)
        _park(deps, org_id, mailbox_id, deps.clock.now(), ERROR_RETRY)
    except Exception as failure:  # the poison move must happen regardless
        log.error("could not record the failure of mailbox %s: %s", mailbox_id, type(failure).__name__)
    else:
        if transient:
            log.warning("mailbox %s of org %s: %s (transient); retried later", mailbox_id, org_id, reason)
        else:
            log.error("mailbox %s of org %s set to error: %s", mailbox_id, org_id, reason)


# -- helpers -------------------------------------------------------------------------------------


def _syncable(deps: ScheduleDeps, org_id: str, mailbox_id: str) -> Mailbox:
    found = deps.mailboxes.get(org_id, mailbox_id)
    if found is None:
        raise MailboxNotFound(f"no mailbox {mailbox_id}")
    mailbox = found.value
    refusal = mailbox.sync_refusal(deps.settings.get(org_id).automation_enabled)
    if refusal is not None:  # an ``error`` is always worth another try
        status, reason = refusal
        raise NotSyncable(status.value, reason)
    return mailbox


def _poll_interval(deps: ScheduleDeps, org_id: str) -> timedelta:
    return timedelta(minutes=max(deps.settings.get(org_id).poll_interval_minutes, 1))


def _recently_queued(entry: DueEntry, now: datetime) -> bool:
    return entry.queued_at is not None and now - entry.queued_at < COALESCE_WINDOW


def _reschedule(
    deps: ScheduleDeps, org_id: str, mailbox_id: str, now: datetime, queued: bool | None
) -> DueEntry | None:
    """Next due one poll interval from now. ``queued``: a message is (True) or is not (False) queued
    now; None (a run ended done): one will be exactly when a backfill is pending (the caller enqueues
    it), and an entry already due within the interval with nothing queued or pending is left as it is."""
    due_at = now + _poll_interval(deps, org_id)

    def change(current: DueEntry | None) -> DueEntry:
        if current is not None and queued is None and _settled(current, now, due_at):
            return current  # what this write would say, in substance: the timer's claim suffices
        base = current or DueEntry(org_id, mailbox_id, due_at)
        will_queue = base.backfill_since is not None if queued is None else queued
        return replace(base, due_at=due_at, queued_at=now if will_queue else None)

    return _update(deps.due, org_id, mailbox_id, change)


def _settled(entry: DueEntry, now: datetime, latest: datetime) -> bool:
    return entry.queued_at is None and entry.backfill_since is None and now < entry.due_at <= latest


def _park(
    deps: ScheduleDeps, org_id: str, mailbox_id: str, now: datetime, after: timedelta = PARKED_RECHECK
) -> None:
    """Due again ``after`` from now, nothing queued."""

    def change(current: DueEntry | None) -> DueEntry:
        base = current or DueEntry(org_id, mailbox_id, now)
        return replace(base, due_at=now + after, queued_at=None)

    _update(deps.due, org_id, mailbox_id, change)


def _enqueue(deps: ScheduleDeps, message: SyncMailbox, delay_seconds: int = 0) -> None:
    try:
        deps.queue.enqueue(message.to_json(), delay_seconds)
    except Exception:
        # Claimed but not enqueued: make it due again at once, so the next tick retries it.
        now = deps.clock.now()
        _update(deps.due, message.org_id, message.mailbox_id, lambda e: e and replace(e, due_at=now, queued_at=None))
        raise


def _enqueue_or_unmark(deps: ScheduleDeps, message: SyncMailbox, queued_at: datetime) -> None:
    try:
        deps.queue.enqueue(message.to_json())
    except Exception:
        def unmark(entry: DueEntry | None) -> DueEntry | None:
            return replace(entry, queued_at=None) if entry and entry.queued_at == queued_at else entry

        _update(deps.due, message.org_id, message.mailbox_id, unmark)
        raise


def _update(
    due: DueIndex, org_id: str, mailbox_id: str, change: Callable[[DueEntry | None], DueEntry | None]
) -> DueEntry | None:
    """Read, change, compare-and-set; re-read and retry when another writer came first. ``change``
    returns the wanted entry (None: no entry); an unchanged entry is not written."""
    for _ in range(UPDATE_ATTEMPTS):
        current = due.get(org_id, mailbox_id)
        before = current.value if current is not None else None
        wanted = change(before)
        if wanted == before:
            return wanted
        if wanted is None:
            assert current is not None
            if due.remove(current):
                return None
        elif due.put(wanted, current) is not None:
            return wanted
    raise ConcurrencyConflict(f"the due entry of mailbox {mailbox_id} kept changing")
