"""Requests from the API: "Sync now" and backfill.

Invariants:
- Only "sync now", backfill and continuations set ``queued_at``; an enqueue is skipped while it is less
  than ``COALESCE_WINDOW`` old and no run finished since (``coalesced``).
- A mailbox in ``error`` is syncable: "Sync now" and backfill are accepted at once (never 409); a paused,
  signed-out or disconnected one is refused (``NotSyncable``, the mailbox's own ``sync_refusal``).
- Backfill moves the watermark back and clears the delta cursors only while holding the mailbox's sync
  lease (renewed before each of the two writes), so no run in flight can write back a cursor read before
  the backfill: a run renews the same lease before each of its writes and stops once it finds it taken.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sync_core.domain.model import Mailbox, RequestStatus
from sync_core.errors import (
    MailboxNotFound,
    NotSyncable,
)
from sync_core.ports.scheduling import DueEntry
from sync_core.use_cases.commands import SyncMailbox, SyncReason, new_run_id
from sync_core.use_cases.mailbox_updates import update_mailbox
from sync_core.use_cases.schedule.common import (
    ScheduleDeps,
    enqueue_or_unmark,
    poll_interval,
    recently_queued,
    update_entry,
)
from sync_core.use_cases.sync_mailbox import sync_lease_key

log = logging.getLogger(__name__)

BACKFILL_LEASE = timedelta(minutes=1)


MAX_BACKFILL_DAYS = 365


@dataclass(frozen=True)
class SyncRequest:
    """What a "sync now" or backfill request did: ``queued`` a message, or ``coalesced`` with one
    already queued. ``run_id``: the run to poll (``GET …/runs/{run_id}``), the queued one's when
    coalesced. ``since`` is the backfill's new watermark; ``applied`` whether the watermark and cursors
    were already changed (else the next run of the mailbox applies it)."""

    status: RequestStatus
    run_id: str = ""
    since: datetime | None = None
    applied: bool = False


def request_sync(deps: ScheduleDeps, org_id: str, mailbox_id: str) -> SyncRequest:
    """"Sync now": enqueue a run unless one is already queued; either way the answer names the run to
    poll. A message queued without a run id (a continuation of the timer's run, an older deploy's) is
    not coalesced with: nothing could be polled for it. ``MailboxNotFound``, ``NotSyncable``."""
    _syncable(deps, org_id, mailbox_id)
    now = deps.clock.now()
    interval = poll_interval(deps, org_id)
    fresh = new_run_id()
    answer = fresh

    def change(current: DueEntry | None) -> DueEntry:
        nonlocal answer
        if current is not None and recently_queued(current, now) and current.run_id and not current.run_outcome:
            answer = current.run_id
            return current
        answer = fresh
        base = current or DueEntry(org_id, mailbox_id, now + interval)
        return replace(base, queued_at=now, run_id=fresh, run_outcome="")

    update_entry(deps.due, org_id, mailbox_id, change)
    if answer != fresh:
        return SyncRequest(RequestStatus.COALESCED, run_id=answer)
    enqueue_or_unmark(deps, SyncMailbox(org_id, mailbox_id, SyncReason.SYNC_NOW, fresh), now)
    return SyncRequest(RequestStatus.QUEUED, run_id=fresh)


def request_backfill(deps: ScheduleDeps, org_id: str, mailbox_id: str, days: int) -> SyncRequest:
    """Sync the last ``days`` days (1-365): move the watermark back to now - days, clear the delta cursors
    (re-reading is harmless: activities are keyed), enqueue a run. Refused (``NotSyncable``) unless the
    mailbox can sync, so a broken connection never produces a partial history."""
    if not 1 <= days <= MAX_BACKFILL_DAYS:
        raise ValueError(f"days must be 1-{MAX_BACKFILL_DAYS}")
    _syncable(deps, org_id, mailbox_id)
    now = deps.clock.now()
    since = now - timedelta(days=days)
    interval = poll_interval(deps, org_id)

    run_id = new_run_id()

    def change(current: DueEntry | None) -> DueEntry:
        base = current or DueEntry(org_id, mailbox_id, now + interval)
        pending = min(base.backfill_since, since) if base.backfill_since else since
        return replace(base, backfill_since=pending, queued_at=now, run_id=run_id, run_outcome="")

    update_entry(deps.due, org_id, mailbox_id, change)
    applied = apply_pending_backfill(deps, org_id, mailbox_id)
    enqueue_or_unmark(deps, SyncMailbox(org_id, mailbox_id, SyncReason.BACKFILL, run_id), now)
    return SyncRequest(RequestStatus.QUEUED, run_id=run_id, since=since, applied=applied)


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

        update_entry(deps.due, org_id, mailbox_id, done)
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
