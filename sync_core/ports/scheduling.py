"""Ports of the scheduler (``use_cases.schedule``): the due-time index and a paged view of every mailbox.

Only the scheduler uses them. Production adapters live in
``adapters.table_due``, in-memory doubles in ``sync_core.testing.scheduling``; tests/contract runs the same cases on
both.

Invariants of a ``DueIndex``:
- At most one entry per (org, mailbox). ``due`` lists the entries whose ``due_at`` is at or before a
  moment, earliest first, with their versions, reading only those entries (never every mailbox).
- ``put``, ``put_many`` and ``remove`` are compare-and-set on the version the caller read (from ``get``,
  ``due`` or a write): a concurrent change makes them return None/False for that entry and change
  nothing of it, so two timers can never both claim one due mailbox.
- Datetimes come back as stored (aware UTC, microseconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sync_core.domain.model import MailboxStatus
from sync_core.ports.storage import Versioned


@dataclass(frozen=True)
class DueEntry:
    """When a mailbox is next due for a sync, and what is pending for it.

    ``queued_at``: when a sync message was last enqueued for it and no run has finished since (enqueues
    within the coalescing window are skipped). ``backfill_since``: a requested backfill not applied yet
    (the watermark to move back to). ``run_id``: the run id the CRM was last given ("Sync now",
    backfill); ``run_outcome``: empty while that run is queued or running, else how it ended when it
    stored no report (``skipped``: the mailbox could not sync)."""

    org_id: str
    mailbox_id: str
    due_at: datetime
    queued_at: datetime | None = None
    backfill_since: datetime | None = None
    run_id: str = ""
    run_outcome: str = ""


class DueIndex(Protocol):
    def get(self, org_id: str, mailbox_id: str) -> Versioned[DueEntry] | None: ...

    def put(self, entry: DueEntry, expected: Versioned[DueEntry] | None) -> Versioned[DueEntry] | None:
        """Store ``entry`` if the stored entry is still ``expected`` (None: there must be none);
        returns the new version, or None when another writer changed it first."""

    def remove(self, expected: Versioned[DueEntry]) -> bool:
        """Delete the entry if it is still ``expected``; False when another writer changed it first."""

    def put_many(
        self, changes: Sequence[tuple[DueEntry, Versioned[DueEntry]]]
    ) -> tuple[Versioned[DueEntry] | None, ...]:
        """``put`` of many (entry, expected) pairs, each of another mailbox, in few round trips. Each
        result is the entry's new version, or None when it is not known to be written: it changed
        meanwhile, it went together with one that did, or storage failed (re-read it and ``put`` it
        alone). Never writes a stale one."""

    def due(self, now: datetime, limit: int) -> tuple[Versioned[DueEntry], ...]:
        """Up to ``limit`` entries due at or before ``now``, earliest first, each with its version."""

    def missing(self, keys: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """The (org, mailbox) keys that have no entry, in the given order."""

    def sweep_position(self) -> str | None:
        """Where the reconciliation sweep of ``MailboxCatalog`` continues (opaque), None at the start."""

    def set_sweep_position(self, position: str | None) -> None: ...


@dataclass(frozen=True)
class MailboxSummary:
    org_id: str
    mailbox_id: str
    status: MailboxStatus
    enabled: bool


class MailboxCatalog(Protocol):
    """Every mailbox of every org, read a page at a time (the scheduler's reconciliation sweep)."""

    def page(self, position: str | None, limit: int) -> tuple[tuple[MailboxSummary, ...], str | None]:
        """Up to ``limit`` mailboxes from ``position`` (None: the start) and the position after them, or
        None when the end was reached. Raises ValueError for a position this catalog did not produce."""
