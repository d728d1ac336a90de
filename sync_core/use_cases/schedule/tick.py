"""The timer's tick: enqueue the mailboxes that are due, and one page of the reconciliation sweep.

Invariants:
- Every minute the timer reads only the entries that are due; no per-tick work grows with the number of
  mailboxes, except the sweep's one bounded page.
- A claim is written at the version the due query read, so of two racing timers only one enqueues a
  mailbox; a bulk claim that met a change is redone entry by entry (re-read, compare-and-set).
- Timer messages are not marked (``queued_at``): a duplicate meets the run's lease and is dropped, or
  costs one idle poll. An idle poll through the timer writes the due entry once (the claim).
- An entry claimed with a backfill pending is queued as a backfill message (with the entry's run id), never
  as a timer message: the run of a timer message does not read the entry (see ``queue``).
- A mailbox without an entry gets one from: ``schedule_mailbox`` (connect, add, re-enable), the end of any
  run of it but a timer message's that ended ``done`` (the timer claimed an entry to queue it), or the
  sweep, which checks ``SWEEP_PAGE`` mailboxes of the catalog per tick and wraps around.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from sync_core.domain.model import SYNCABLE_STATUSES
from sync_core.ports import (
    Versioned,
)
from sync_core.ports.scheduling import DueEntry
from sync_core.use_cases.commands import SyncMailbox, SyncReason
from sync_core.use_cases.schedule.common import ScheduleDeps, enqueue, poll_interval, recently_queued, schedule_mailbox

log = logging.getLogger(__name__)

TICK_LIMIT = 5000  # due mailboxes one tick enqueues at most; the rest stay due for the next tick


TICK_BUDGET = timedelta(seconds=40)  # stop claiming well before the next minute's tick


TICK_PARALLELISM = 8


TICK_CHUNK = 256  # due entries claimed per bulk claim (a few transactions of up to 33 per shard on Table)


SWEEP_PAGE = 100


class Claim(StrEnum):
    """What the timer did with one due entry: ``enqueued`` a message, ``coalesced`` with one queued
    recently, or ``lost`` the entry to a racing writer (moved or removed since the due query read it)."""

    ENQUEUED = "enqueued"
    COALESCED = "coalesced"
    LOST = "lost"


@dataclass(frozen=True)
class TickReport:
    due: int = 0
    enqueued: int = 0
    coalesced: int = 0
    lost_races: int = 0
    swept: int = 0
    added: int = 0


def enqueue_due(deps: ScheduleDeps) -> TickReport:
    """The minute timer: one sweep page, then claim and enqueue every due mailbox (bounded per tick)."""
    now = deps.clock.now()
    swept, added = _sweep(deps, now)
    due = deps.due.due(now, TICK_LIMIT)
    intervals: dict[str, timedelta] = {}
    for org_id in {found.value.org_id for found in due}:
        intervals[org_id] = poll_interval(deps, org_id)
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
    recently covers this turn; a backfill message (with its run id) when the entry has one pending, so a
    timer message always means "nothing pending" and its run need not read the entry."""
    if recently_queued(entry, now):
        return Claim.COALESCED
    if entry.backfill_since is not None:
        enqueue(deps, SyncMailbox(entry.org_id, entry.mailbox_id, SyncReason.BACKFILL, entry.run_id))
    else:
        enqueue(deps, SyncMailbox(entry.org_id, entry.mailbox_id, SyncReason.TIMER))
    return Claim.ENQUEUED


def _claimed(entry: DueEntry, now: datetime, interval: timedelta) -> DueEntry:
    """The entry once the timer claimed it: due one interval on; a recent ``queued_at`` kept (the queued
    message covers this turn), an expired one dropped. A timer message itself is never marked."""
    return replace(entry, due_at=now + interval, queued_at=entry.queued_at if recently_queued(entry, now) else None)


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
