"""The due index as the scheduler's use cases share it: deps, scheduling a mailbox, rescheduling and parking
it, enqueueing a ``SyncMailbox``, and the one compare-and-set update of a due entry.

Invariants:
- Every write of a due entry is a read, change, compare-and-set (``update_entry``), retried on a
  conflict at most ``UPDATE_ATTEMPTS`` times.
- A mailbox that is not syncable (paused, needs_reauth) stays in the index, rechecked every
  ``PARKED_RECHECK``; a missing or disconnected one leaves it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from sync_core.domain.model import OrgSettings
from sync_core.errors import (
    ConcurrencyConflict,
)
from sync_core.ports import (
    Clock,
    CursorStore,
    LeaseStore,
    MailboxRepository,
    SettingsRepository,
    WorkQueue,
)
from sync_core.ports.scheduling import DueEntry, DueIndex, MailboxCatalog
from sync_core.use_cases.commands import SyncMailbox
from sync_core.use_cases.sync_mailbox import SyncOutcome

COALESCE_WINDOW = timedelta(seconds=120)


PARKED_RECHECK = timedelta(hours=1)


ERROR_RETRY = timedelta(minutes=15)  # a mailbox in ``error`` is retried this often (Sync now: at once)


UPDATE_ATTEMPTS = 5


MAX_DELAY_SECONDS = 7 * 24 * 3600 - 1


class SyncRunner(Protocol):
    """One run of a mailbox (``Services.sync``); ``run_id`` is the id a CRM polls, empty for the timer's."""

    def __call__(self, org_id: str, mailbox_id: str, run_id: str = "") -> SyncOutcome: ...


@dataclass
class ScheduleDeps:
    due: DueIndex
    queue: WorkQueue
    mailboxes: MailboxRepository
    settings: SettingsRepository
    cursors: CursorStore
    leases: LeaseStore
    clock: Clock
    sync: SyncRunner
    catalog: MailboxCatalog | None = None


def schedule_mailbox(deps: ScheduleDeps, org_id: str, mailbox_id: str, at: datetime | None = None) -> DueEntry:
    """Make the mailbox due no later than ``at`` (default now). Call it when a mailbox becomes active:
    after a connect callback, an application-mode add, a re-enable. Idempotent; never delays an entry."""
    moment = at or deps.clock.now()

    def change(current: DueEntry | None) -> DueEntry:
        if current is None:
            return DueEntry(org_id, mailbox_id, moment)
        return replace(current, due_at=min(current.due_at, moment))

    entry = update_entry(deps.due, org_id, mailbox_id, change)
    assert entry is not None
    return entry


def unschedule_mailbox(deps: ScheduleDeps, org_id: str, mailbox_id: str) -> None:
    """Remove the mailbox from the index (a disconnect); ``schedule_mailbox`` adds it again."""
    update_entry(deps.due, org_id, mailbox_id, lambda _current: None)


def poll_interval(deps: ScheduleDeps, org_id: str, settings: OrgSettings | None = None) -> timedelta:
    """The org's poll interval, from ``settings`` when the caller already read them (a run did)."""
    known = settings if settings is not None else deps.settings.get(org_id)
    return timedelta(minutes=max(known.poll_interval_minutes, 1))


def recently_queued(entry: DueEntry, now: datetime) -> bool:
    return entry.queued_at is not None and now - entry.queued_at < COALESCE_WINDOW


def reschedule(
    deps: ScheduleDeps,
    org_id: str,
    mailbox_id: str,
    now: datetime,
    queued: bool | None,
    *,
    settings: OrgSettings | None = None,
) -> DueEntry | None:
    """Next due one poll interval from now. ``queued``: a message is (True) or is not (False) queued
    now; None (a run ended done): one will be exactly when a backfill is pending (the caller enqueues
    it), and an entry already due within the interval with nothing queued or pending is left as it is."""
    due_at = now + poll_interval(deps, org_id, settings)

    def change(current: DueEntry | None) -> DueEntry:
        if current is not None and queued is None and _settled(current, now, due_at):
            return current  # what this write would say, in substance: the timer's claim suffices
        base = current or DueEntry(org_id, mailbox_id, due_at)
        will_queue = base.backfill_since is not None if queued is None else queued
        return replace(base, due_at=due_at, queued_at=now if will_queue else None)

    return update_entry(deps.due, org_id, mailbox_id, change)


def _settled(entry: DueEntry, now: datetime, latest: datetime) -> bool:
    return entry.queued_at is None and entry.backfill_since is None and now < entry.due_at <= latest


def park(
    deps: ScheduleDeps,
    org_id: str,
    mailbox_id: str,
    now: datetime,
    after: timedelta = PARKED_RECHECK,
    *,
    skipped_run: str = "",
) -> None:
    """Due again ``after`` from now, nothing queued. ``skipped_run``: a requested run that ended without
    a report because the mailbox could not sync; recorded as ``skipped`` if it is still the entry's."""

    def change(current: DueEntry | None) -> DueEntry:
        base = current or DueEntry(org_id, mailbox_id, now)
        if skipped_run and base.run_id == skipped_run:
            base = replace(base, run_outcome="skipped")
        return replace(base, due_at=now + after, queued_at=None)

    update_entry(deps.due, org_id, mailbox_id, change)


def enqueue(deps: ScheduleDeps, message: SyncMailbox, delay_seconds: int = 0) -> None:
    try:
        deps.queue.enqueue(message.to_json(), delay_seconds)
    except Exception:
        # Claimed but not enqueued: make it due again at once, so the next tick retries it.
        now = deps.clock.now()
        update_entry(
            deps.due, message.org_id, message.mailbox_id, lambda e: e and replace(e, due_at=now, queued_at=None)
        )
        raise


def enqueue_or_unmark(deps: ScheduleDeps, message: SyncMailbox, queued_at: datetime) -> None:
    try:
        deps.queue.enqueue(message.to_json())
    except Exception:
        def unmark(entry: DueEntry | None) -> DueEntry | None:
            return replace(entry, queued_at=None) if entry and entry.queued_at == queued_at else entry

        update_entry(deps.due, message.org_id, message.mailbox_id, unmark)
        raise


def update_entry(
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
