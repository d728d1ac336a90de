"""Storage ports: records, activities, mailboxes, cursors, leases, run reports, settings, the work queue, the clock.

Production adapters (Azure Table Storage, Azure Queue Storage, Microsoft Graph over requests, MSAL)
live in ``sync_core.adapters``; in-memory doubles of the same ports live in ``sync_core.testing.stores``
and are kept honest by contract tests that run the same cases on both.

Conventions:
- Every method is scoped by ``org_id``: nothing of one org is reachable through another org's id.
- Writes are idempotent: repeating a call after a crash or retry leaves the same end state.
- Optimistic concurrency uses opaque ``etag`` strings; a stale etag raises ``ConcurrencyConflict``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from sync_core.domain.lookup import RecordLookup
from sync_core.domain.model import Activity, Mailbox, OrgSettings, Record

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; ``cursor`` is opaque and None on the last page."""

    items: tuple[T, ...]
    cursor: str | None = None


@dataclass(frozen=True)
class Versioned(Generic[T]):
    value: T
    etag: str


class RecordsIndex(Protocol):
    def upsert(self, org_id: str, records: Sequence[Record]) -> None:
        """Insert or replace records; a record's old addresses/domains stop matching it."""

    def delete(self, org_id: str, record_ids: Sequence[str]) -> None:
        """Remove records (missing ids are ignored)."""

    def get(self, org_id: str, record_id: str) -> Record | None: ...

    def get_many(self, org_id: str, record_ids: Sequence[str]) -> Mapping[str, Record]:
        """The indexed ones of these records, by id (missing ids are left out); point reads only."""

    def lookup(self, org_id: str, addresses: Iterable[str], domains: Iterable[str]) -> RecordLookup:
        """Fetch every record of these addresses and domains at once (one page's worth), so the
        pipeline then decides without further I/O."""


@dataclass(frozen=True)
class ActivityEvent:
    """An activity's creation waiting in the activity store's outbox to be announced (CRM webhooks).
    ``event_id`` is fixed when the row is written, so every announcement of it carries the same id."""

    org_id: str
    activity_id: str
    event_id: str
    occurred_at: datetime


@dataclass(frozen=True)
class ActivityWrite:
    """Outcome of storing a batch of activities: which were new and which only gained a mailbox, and
    the outbox events written with the new ones (``save(..., announce_at=...)`` only)."""

    created: tuple[str, ...] = ()
    merged: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    transactions: int = 0
    events: tuple[ActivityEvent, ...] = ()


class ActivityStore(Protocol):
    """Activities, their indexes, and an outbox of creations to announce.

    The outbox: ``save(..., announce_at=t)`` writes, for each activity it creates, an ``ActivityEvent``
    (a fresh event id, ``occurred_at`` = t) atomically with the activity: the event exists exactly when
    the activity was created by that save. Events stay until ``clear_events``; whoever announces them
    clears them afterwards, so a crash in between leaves them for ``pending_events`` (at least once)."""

    def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
        """Store activities keyed by ``activity_id``. An existing activity keeps its content and gains
        any new mailbox ids and record links; storing the same activity twice changes nothing. With
        ``announce_at``, every activity this call creates gets its outbox event (``ActivityWrite.events``)."""

    def pending_events(self, org_id: str, written_before: datetime, limit: int) -> tuple[ActivityEvent, ...]:
        """Up to ``limit`` outbox events of the org that occurred before ``written_before``."""

    def clear_events(self, org_id: str, events: Sequence[ActivityEvent]) -> None:
        """Remove these events from the outbox (announced). Already removed ones are fine."""

    def get(self, org_id: str, activity_id: str) -> Activity | None: ...

    def delete(self, org_id: str, activity_id: str) -> bool:
        """Delete the activity and every index row pointing at it; True if it existed."""

    def timeline(self, org_id: str, record_id: str, cursor: str | None, limit: int) -> Page[Activity]:
        """A record's activities, newest first (by received time)."""

    def thread_ids_for_messages(self, org_id: str, internet_message_ids: Sequence[str]) -> Mapping[str, str]:
        """Thread id of each already-stored message id (for In-Reply-To/References joins)."""

    def thread(self, org_id: str, thread_id: str) -> tuple[Activity, ...]:
        """Messages of one thread, oldest first."""

    def delete_for_mailbox(self, org_id: str, mailbox_id: str) -> int:
        """Purge: remove the mailbox from every activity; delete activities no other mailbox saw."""


class ThreadLookup(Protocol):
    """What the pipeline needs of the activity store: the stored thread of already-stored messages."""

    def thread_ids_for_messages(self, org_id: str, internet_message_ids: Sequence[str]) -> Mapping[str, str]: ...


class MailboxRepository(Protocol):
    def get(self, org_id: str, mailbox_id: str) -> Versioned[Mailbox] | None: ...

    def add(self, mailbox: Mailbox) -> Versioned[Mailbox]:
        """Create; raises ``AlreadyExists`` when the id is taken."""

    def replace(self, mailbox: Mailbox, etag: str) -> Versioned[Mailbox]:
        """Replace if ``etag`` still matches, else ``ConcurrencyConflict``."""

    def list(self, org_id: str) -> tuple[Mailbox, ...]: ...


class CursorStore(Protocol):
    """Per-folder delta links of a mailbox. Written only after that page's activities are durable."""

    def get_all(self, org_id: str, mailbox_id: str) -> Mapping[str, str]: ...

    def put(self, org_id: str, mailbox_id: str, folder: str, link: str) -> None: ...

    def put_many(self, org_id: str, mailbox_id: str, links: Mapping[str, str]) -> None:
        """Store several folders' links at once: all of them or none (one transaction)."""

    def clear(self, org_id: str, mailbox_id: str) -> None: ...


class LeaseStore(Protocol):
    """Named leases: one holder at a time until its ``until``; every change is compare-and-set, so a
    holder's ``renew`` is a fence: it succeeds only if nobody took the lease over since."""

    def acquire(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        """Take the lease if free or expired (at ``now``); True when ``owner`` holds it afterwards."""

    def renew(self, key: str, owner: str, until: datetime) -> bool:
        """Extend ``owner``'s lease to ``until`` if ``owner`` still holds it: nobody acquired, took over
        or released it since (a lease past its ``until`` that nobody took is still ``owner``'s). False
        when it is lost: the caller must not write what the lease guards."""

    def take_over(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        """Take the lease whoever holds it (the holder's next ``renew`` fails). True when another owner
        held it unexpired at ``now``: a write that owner began under its last renewal may be in flight."""

    def release(self, key: str, owner: str) -> None:
        """Release only if ``owner`` still holds it."""


@dataclass(frozen=True)
class RunReport:
    org_id: str
    mailbox_id: str
    run_id: str
    started_at: datetime
    finished_at: datetime
    reasons: Mapping[str, int] = field(default_factory=dict)
    pages: int = 0
    graph_requests: int = 0
    table_transactions: int = 0
    activities_created: int = 0
    activities_merged: int = 0
    more: bool = False
    error: str = ""
    error_class: str = ""
    """``error``: why the run failed, in words (empty when it succeeded); ``error_class``: the failure's
    class, ``SyncFailure.code`` (``transient``, ``configuration``, ``grant``, ``unexpected``).
    ``pages``: delta pages received (one per folder per round trip, batched or not); ``graph_requests``:
    HTTP requests the run sent for its mailbox (a batch of several folders' pages counts once)."""


class RunReportStore(Protocol):
    def add(self, report: RunReport, keep: int) -> None:
        """Store a report and keep only the newest ``keep`` per mailbox."""

    def recent(self, org_id: str, mailbox_id: str, limit: int) -> tuple[RunReport, ...]:
        """Newest first."""


class MailboxLease(str):
    """The key of a mailbox's sync lease (``sync|<org>|<mailbox>``), which also says whose it is: a store
    that keeps a mailbox's sync state together (its cursors and run reports, ``SyncStateStore``) keeps this
    lease with them, so a renewal and the write it fences can be one transaction. Compares and hashes as
    its text, so stores that do not co-locate treat it as any other key."""

    org_id: str
    mailbox_id: str

    def __new__(cls, org_id: str, mailbox_id: str) -> MailboxLease:
        key = super().__new__(cls, f"sync|{org_id}|{mailbox_id}")
        key.org_id = org_id
        key.mailbox_id = mailbox_id
        return key


@dataclass(frozen=True)
class SyncState:
    """A mailbox's cursors and its sync lease, read together (``SyncStateStore.read``). ``version`` is
    opaque: the lease as read, for ``SyncStateStore.acquire_seen``."""

    cursors: Mapping[str, str]
    version: str


class SyncStateStore(Protocol):
    """A mailbox's sync state kept in one place: its cursors (the ``CursorStore``'s), its sync lease (the
    ``LeaseStore``'s ``MailboxLease``) and its run reports (among the ``RunReportStore``'s ``recent``), so
    that a sync run reads them in one request and writes them in one transaction, the lease fencing the
    rest.

    Invariants:
    - Every write of cursors happens under the mailbox's sync lease (a run, a backfill, a disconnect's
      take-over), and every change of the lease (take, renewal, take-over, release) gives it a new version.
      So a lease taken at the version ``read`` saw proves the cursors are still what that read returned.
    - ``commit`` writes nothing unless ``owner`` still holds the lease, and then writes all of it."""

    def read(self, org_id: str, mailbox_id: str) -> SyncState:
        """The mailbox's cursors (as ``CursorStore.get_all``) and its lease's version, in one read."""

    def acquire_seen(
        self, org_id: str, mailbox_id: str, owner: str, *, until: datetime, now: datetime, seen: SyncState
    ) -> bool:
        """Take the sync lease for ``owner`` until ``until`` only if it is still as ``seen`` read it and
        free, expired at ``now`` or already ``owner``'s. False when it is held, or changed since (the caller
        takes it the ordinary way, ``LeaseStore.acquire``, and reads again)."""

    def commit(
        self,
        org_id: str,
        mailbox_id: str,
        owner: str,
        *,
        until: datetime | None,
        cursors: Mapping[str, str],
        report: RunReport | None = None,
        keep: int = 50,
    ) -> bool:
        """If ``owner`` still holds the lease, in one transaction: renew it to ``until`` (release it when
        None), store ``cursors`` (folder -> link, as ``CursorStore.put_many``) and ``report`` (the mailbox
        keeps its newest ``keep``). False when the lease was lost: nothing is written."""


class SettingsRepository(Protocol):
    def get(self, org_id: str) -> OrgSettings:
        """The org's settings, or defaults when none were saved."""

    def put(self, org_id: str, settings: OrgSettings) -> None: ...


class WorkQueue(Protocol):
    def enqueue(self, message: Mapping[str, Any], delay_seconds: int = 0) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime: ...
