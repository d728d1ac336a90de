"""Scheduling (spec §5): when mailboxes sync, and the queue messages that make them sync.

This package exports the public names of its modules, so ``sync_core.use_cases.schedule`` is imported
as one use case by the API, bootstrap, the triggers and tests."""

from sync_core.errors import MailboxNotFound, NotSyncable
from sync_core.use_cases.schedule.queue import (
    COALESCE_WINDOW,
    ERROR_RETRY,
    MAX_BACKFILL_DAYS,
    PARKED_RECHECK,
    SWEEP_PAGE,
    Claim,
    ScheduleDeps,
    SyncRequest,
    TickReport,
    apply_pending_backfill,
    enqueue_due,
    give_up,
    process_message,
    request_backfill,
    request_sync,
    run_command,
    schedule_mailbox,
    unschedule_mailbox,
)
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
