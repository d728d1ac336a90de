"""The queue-triggered run of one mailbox and what its outcome does to the schedule (spec §5).

The whole schedule, from connect to the outcome of a run (``tick``, ``requests`` and this module):

    connect / app-mode add ─ schedule_mailbox(at=now) ─┐
                                                        ▼
    timer, every minute ── enqueue_due ──> due index ("due by now": one range query per shard, entries
        │  and versions included); claim them in bulk (compare-and-set: due += poll interval; queued_at
        │  kept only while recent), each conflicting one alone, then enqueue {org_id, mailbox_id, reason};
        │  plus one page of the reconciliation sweep
        ▼
    queue ── process_message ── apply a pending backfill (under the mailbox's sync lease; not for a timer
                              │   message: the timer queues a pending backfill as a backfill message; a
                              │   backfill meeting a run's lease is queued again after BUSY_RETRY)
                              ── sync_mailbox ── done:    due = now + poll interval, queued_at cleared (no
                                              │           write when the entry already says so in substance;
                                              │           a timer message's run: nothing, the claim did it)
                                              ── more:    continuation message (delay = Retry-After), queued_at = now
                                              ── busy:    another run holds the lease: drop (coalesced)
                                              ── failed:  status already set by the run (grant: needs_reauth,
                                              │           parked; configuration: error, due in ERROR_RETRY)
                                              ── skipped: not syncable; entry parked (removed when gone/disconnected)
                                              ── raised:  the host retries the message; its last delivery
                                                          gives up (``give_up``), see below
    "Sync now" / backfill ── request_sync / request_backfill ── coalesced when a message is already queued
        with a run id (the CRM polls GET …/runs/{run_id}); the message carries it, the run reports under it,
        and so does its continuation. A requested run never ends unanswered: an idle one stores its
        report, a busy one runs again after ``BUSY_RETRY``, a skipped one is recorded on the due entry
        (``run_outcome``) when the mailbox stays scheduled.

Invariants:
- An idle poll through the timer writes the due entry once (the claim) and reads it only in the timer's due
  query: the run of a timer message (the timer's claim found no backfill pending and cleared ``queued_at``)
  neither applies a pending backfill nor rewrites the entry when it ends ``done``; another run ending
  ``done`` leaves an entry with no ``queued_at``, no pending backfill and ``due_at`` within the next poll
  interval as it is.
- A pending backfill is applied by its own message (``request_backfill`` queues one, the timer queues one
  for an entry whose backfill is still pending after ``COALESCE_WINDOW``); one that meets a run's lease is
  queued again after ``BUSY_RETRY``, and the end of a requested run that finds one pending queues it too.
- A mailbox that is not syncable (paused, needs_reauth) stays in the index, rechecked every
  ``PARKED_RECHECK``; a missing or disconnected one leaves it. A mailbox in ``error`` is syncable: the
  timer retries it every ``ERROR_RETRY``, "Sync now" and backfill are accepted at once (never 409), and
  the first run that succeeds sets it ``active`` again. Nothing but a grant failure, a pause or a
  disconnect stops a mailbox from being retried.
- Transient failures never park a mailbox nor change its status: a run ends ``more`` and continues after
  the Retry-After (or a backoff) in a continuation message.
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
from datetime import timedelta

from sync_core.domain.model import Mailbox, MailboxStatus, RunStatus
from sync_core.errors import (
    ConcurrencyConflict,
    GrantFailure,
    InvalidCommand,
    TransientFailure,
    failure_of,
)
from sync_core.use_cases.commands import SyncMailbox, SyncReason
from sync_core.use_cases.mailbox_updates import update_mailbox
from sync_core.use_cases.schedule.common import (
    ERROR_RETRY,
    MAX_DELAY_SECONDS,
    ScheduleDeps,
    park,
    reschedule,
    unschedule_mailbox,
)
from sync_core.use_cases.schedule.requests import apply_pending_backfill
from sync_core.use_cases.telemetry import sync_trigger

log = logging.getLogger(__name__)

BUSY_RETRY = timedelta(seconds=30)  # a requested run that met another run's lease runs again this much later


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
    org_id, mailbox_id, run_id = message.org_id, message.mailbox_id, message.run_id
    # The timer's own message: the timer claimed the entry with no backfill pending (it queues a pending one
    # as a backfill message), so its run neither reads the entry first nor rewrites it after a "done".
    timer = message.reason == SyncReason.TIMER and not run_id
    if not timer and not apply_pending_backfill(deps, org_id, mailbox_id):
        if run_id:  # a run holds the lease: the backfill (its own message) is applied after it
            deps.queue.enqueue(message.to_json(), int(BUSY_RETRY.total_seconds()))
        return RunStatus.BUSY
    with sync_trigger(message.reason):  # the run's event says what queued it
        outcome = deps.sync(org_id, mailbox_id, run_id)
    now = deps.clock.now()
    if outcome.status == RunStatus.BUSY:
        if run_id:  # a CRM polls this run: it runs after the one holding the lease instead of vanishing
            deps.queue.enqueue(message.to_json(), int(BUSY_RETRY.total_seconds()))
        return RunStatus.BUSY
    if outcome.status == RunStatus.MORE:
        reschedule(deps, org_id, mailbox_id, now, queued=True, settings=outcome.settings)
        delay = min(max(math.ceil(outcome.retry_after or 0), 0), MAX_DELAY_SECONDS)
        # The continuation reports under the same run id, so the CRM polls one id until the run is done.
        deps.queue.enqueue(SyncMailbox(org_id, mailbox_id, SyncReason.CONTINUATION, run_id).to_json(), delay)
    elif outcome.status == RunStatus.DONE and timer:
        pass  # the claim made it due one interval on; anything requested since queued its own message
    elif outcome.status == RunStatus.DONE:
        entry = reschedule(deps, org_id, mailbox_id, now, queued=None, settings=outcome.settings)
        if entry is not None and entry.backfill_since is not None:  # requested while this run held the lease
            deps.queue.enqueue(SyncMailbox(org_id, mailbox_id, SyncReason.BACKFILL, entry.run_id).to_json())
    elif outcome.status == RunStatus.SKIPPED:
        found = deps.mailboxes.get(org_id, mailbox_id)
        if found is None or found.value.status is MailboxStatus.DISCONNECTED:
            unschedule_mailbox(deps, org_id, mailbox_id)
        else:
            park(deps, org_id, mailbox_id, now, skipped_run=run_id)
    elif outcome.failure is GrantFailure:  # the run set needs_reauth: nothing to retry until reconnected
        park(deps, org_id, mailbox_id, now)
    else:  # a configuration failure: the run set error with the reason; retried until a run succeeds
        park(deps, org_id, mailbox_id, now, ERROR_RETRY)
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
        park(deps, org_id, mailbox_id, deps.clock.now(), ERROR_RETRY)
    except Exception as failure:  # the poison move must happen regardless
        log.error("could not record the failure of mailbox %s: %s", mailbox_id, type(failure).__name__)
    else:
        if transient:
            log.warning("mailbox %s of org %s: %s (transient); retried later", mailbox_id, org_id, reason)
        else:
            log.error("mailbox %s of org %s set to error: %s", mailbox_id, org_id, reason)
