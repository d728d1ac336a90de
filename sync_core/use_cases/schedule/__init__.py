"""Scheduling (spec §5): when mailboxes sync, and the queue messages that make them sync.

One module per job: ``tick`` (the minute timer and the reconciliation sweep), ``requests`` ("Sync now"
and backfill from the API), ``queue`` (a queued run and its outcome; its docstring draws the whole
schedule as a state machine) and ``common`` (deps and the due-entry writes they share). This package
exports their public names, so ``sync_core.use_cases.schedule`` is imported as one use case by the API,
bootstrap, the triggers and tests."""

from sync_core.errors import MailboxNotFound, NotSyncable
from sync_core.use_cases.schedule.common import (
    COALESCE_WINDOW,
    ERROR_RETRY,
    PARKED_RECHECK,
    ScheduleDeps,
    schedule_mailbox,
    unschedule_mailbox,
)
from sync_core.use_cases.schedule.queue import give_up, process_message, run_command
from sync_core.use_cases.schedule.requests import (
    MAX_BACKFILL_DAYS,
    SyncRequest,
    apply_pending_backfill,
    request_backfill,
    request_sync,
)
from sync_core.use_cases.schedule.tick import SWEEP_PAGE, Claim, TickReport, enqueue_due
from sync_core.use_cases.sync_mailbox import sync_lease_key

__all__ = [
    "COALESCE_WINDOW",
    "ERROR_RETRY",
    "MAX_BACKFILL_DAYS",
    "PARKED_RECHECK",
    "SWEEP_PAGE",
    "Claim",
    "MailboxNotFound",
    "NotSyncable",
    "ScheduleDeps",
    "SyncRequest",
    "TickReport",
    "apply_pending_backfill",
    "enqueue_due",
    "give_up",
    "process_message",
    "request_backfill",
    "request_sync",
    "run_command",
    "schedule_mailbox",
    "sync_lease_key",
    "unschedule_mailbox",
]
