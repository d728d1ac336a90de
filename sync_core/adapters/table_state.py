"""Mailboxes, delta cursors, leases, run reports and org settings over Table storage.

Layout (PartitionKey / RowKey):
- ``<prefix>mailboxes``: ``<org>`` / ``<mailbox>``: every field of the mailbox.
- ``<prefix>cursors``: a mailbox's sync state, one partition ``<org>|<mailbox>`` per mailbox:
  ``<folder>``: the folder's delta link, stored as a (chunked) property because links outgrow key limits;
  ``|lease``: the mailbox's sync lease (``MailboxLease``): owner, expiry, the count of reports written
  and who wrote the row last; ``|run|<slot>``: the sync runs' reports, in ``keep`` slots used in turn.
  No folder's key starts with ``|`` (``key_part`` escapes it), so ranges tell the three apart.
- ``<prefix>leases``: ``<key>`` / ``lease``: owner and expiry, for every other lease.
- ``<prefix>runs``: ``<org>|<mailbox>`` / ``<inverted start>|<run>``: run reports written one by one
  (``RunReportStore.add``: record backfills, and every report stored before sync runs' reports moved to
  the cursors table), newest first. ``recent`` merges both places.
- ``<prefix>settings``: ``<org>`` / ``settings``: the org's settings.

Invariants:
- Mailbox replaces and every lease change are ETag-conditional: a stale mailbox ETag raises
  ConcurrencyConflict; of concurrent acquirers of a lease exactly one wins; an expired lease can be taken
  over; a renewal succeeds only if the row is still the one its owner wrote last; ``take_over`` replaces
  whatever holder it read; only its owner releases it.
- A mailbox's sync lease row is never deleted: a release writes it free (no owner), so every change of
  the lease changes its ETag and a lease taken at the ETag a read saw proves nobody held, took or released
  it since (``TableSyncStateStore.acquire_seen``). Its ``reports`` count is carried by every write of it.
- Values come back as ``table_codec`` stores them (datetimes aware UTC); missing fields take defaults.

Upgrading from the layout with sync leases in the leases table: nothing to move (cursors stay where they
were; reports already in ``runs`` are still listed), but the sync lease changes place, so a run of the
previous version and one of this version do not see each other's lease. Deploy the new version with the
previous one's sync queue workers stopped (a slot swap does), or accept that for at most one lease
duration (5 minutes) a mailbox may be synced twice at once: activities are keyed and idempotent, and a
cursor written back by the older run only makes the next run re-read pages.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from azure.data.tables import TableServiceClient

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_client import CONFLICT_ATTEMPTS, Table, TableMetrics, Write, etag_of, key_only, table_name
from sync_core.adapters.table_codec import (
    dataclass_entity,
    dataclass_from_entity,
    from_stored_datetime,
    get_text,
    put_text,
    to_utc,
)
from sync_core.domain.model import Mailbox, OrgSettings
from sync_core.errors import AlreadyExists, ConcurrencyConflict
from sync_core.ports import MailboxLease, RunReport, SyncState, Versioned

_LEASE_ROW = "lease"
_SETTINGS_ROW = "settings"
_SYNC_LEASE_ROW = "|lease"
_REPORT_PREFIX = "|run|"
_TOP = "\uffff\uffff"
_REPORT_RANGE = (_REPORT_PREFIX, "|run}")
_CURSOR_RANGES = (("", "|"), ("}", _TOP))  # every folder's key: none starts with "|"
_STATE_RANGES = (*_CURSOR_RANGES, (_SYNC_LEASE_ROW, _SYNC_LEASE_ROW + "\x00"))  # the cursors and the lease
_FREE = datetime(1970, 1, 1, tzinfo=UTC)  # the expiry a released sync lease row is written with


class TableMailboxRepository:
    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        self._table = Table(service, table_name(prefix, "mailboxes"), metrics or TableMetrics())

    def get(self, org_id: str, mailbox_id: str) -> Versioned[Mailbox] | None:
        entity = self._table.get(keys.org_partition(org_id), keys.key_part(mailbox_id))
        if entity is None:
            return None
        return Versioned(dataclass_from_entity(Mailbox, entity), etag_of(entity))

    def add(self, mailbox: Mailbox) -> Versioned[Mailbox]:
        entity = _mailbox_entity(mailbox)
        etag = self._table.write(Write("create", entity))
        return Versioned(dataclass_from_entity(Mailbox, entity), etag)

    def replace(self, mailbox: Mailbox, etag: str) -> Versioned[Mailbox]:
        entity = _mailbox_entity(mailbox)
        new_etag = self._table.write(Write("update", entity, etag))
        return Versioned(dataclass_from_entity(Mailbox, entity), new_etag)

    def list(self, org_id: str) -> tuple[Mailbox, ...]:
        mailboxes = (dataclass_from_entity(Mailbox, entity) for entity in self._table.rows(keys.org_partition(org_id)))
        return tuple(sorted(mailboxes, key=lambda mailbox: mailbox.mailbox_id))


def _mailbox_entity(mailbox: Mailbox) -> dict[str, Any]:
    return dataclass_entity(mailbox, keys.org_partition(mailbox.org_id), keys.key_part(mailbox.mailbox_id))


class TableCursorStore:
    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        self.table = self._table = Table(service, table_name(prefix, "cursors"), metrics or TableMetrics())

    def get_all(self, org_id: str, mailbox_id: str) -> Mapping[str, str]:
        rows = self._table.rows_in_ranges(keys.mailbox_partition(org_id, mailbox_id), _CURSOR_RANGES)
        return {row["folder"]: get_text(row, "link") for row in rows}

    def put(self, org_id: str, mailbox_id: str, folder: str, link: str) -> None:
        self._table.write(Write("upsert", _cursor_row(org_id, mailbox_id, folder, link)))

    def put_many(self, org_id: str, mailbox_id: str, links: Mapping[str, str]) -> None:
        """One entity group transaction (a mailbox's cursors share a partition; a mailbox has far fewer
        than 100 folders)."""
        rows = [Write("upsert", _cursor_row(org_id, mailbox_id, folder, link)) for folder, link in links.items()]
        if len(rows) == 1:
            self._table.write(rows[0])
        elif rows:
            self._table.transact(rows)

    def clear(self, org_id: str, mailbox_id: str) -> None:
        """The cursors only: the partition's lease and reports stay."""
        partition = keys.mailbox_partition(org_id, mailbox_id)
        rows = self._table.rows_in_ranges(partition, _CURSOR_RANGES, select=["PartitionKey", "RowKey"])
        self._table.submit([Write("delete", key_only(row)) for row in rows])


def _cursor_row(org_id: str, mailbox_id: str, folder: str, link: str) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": keys.mailbox_partition(org_id, mailbox_id),
        "RowKey": keys.key_part(folder),
        "folder": folder,
    }
    put_text(entity, "link", link)
    return entity


class TableLeaseStore:
    """One row per lease. Every change is conditional on the ETag read or written last, and the ETag of
    each lease this process holds is kept, so a renewal is one conditional update (it fails when the row
    changed in any way since: taken over, released, expired and taken) and a release one conditional
    write. Other leases: a released one has no row, so taking a free one is one create. A mailbox's sync
    lease (``MailboxLease``) lives in its sync state partition of the cursors table and is written free
    instead of deleted (see the module invariants), so taking it reads the row first, unless the caller
    read it already (``TableSyncStateStore.acquire_seen``)."""

    def __init__(
        self,
        service: TableServiceClient,
        prefix: str = "",
        metrics: TableMetrics | None = None,
        state: Table | None = None,
    ) -> None:
        shared = metrics or TableMetrics()
        self._table = Table(service, table_name(prefix, "leases"), shared)
        self.state = state or Table(service, table_name(prefix, "cursors"), shared)
        self._lock = threading.Lock()
        # (key, owner) -> (ETag of the row this owner wrote last, the row's report count)
        self._held: dict[tuple[str, str], tuple[str, int]] = {}

    def acquire(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        """A free lease without a row is taken with one create, without a read (a sync lease's row is read
        first: it is never deleted); else the row is read, and taken over at its ETag if free, expired or
        already ours."""
        table, partition, row_key = self._site(key)
        if not isinstance(key, MailboxLease):
            with suppress(AlreadyExists):
                self.hold(key, owner, self._table.write(Write("create", _lease_row(partition, row_key, owner, until))))
                return True
        for _ in range(CONFLICT_ATTEMPTS):
            entity = table.get(partition, row_key)
            if entity is None:
                claim = Write("create", _lease_row(partition, row_key, owner, until))
            elif _free_for(entity, owner, now):
                row = _lease_row(partition, row_key, owner, until, reports=_reports(entity))
                claim = Write("update", row, etag_of(entity))
            else:
                return False
            try:
                self.hold(key, owner, table.write(claim), _reports(entity))
                return True
            except (AlreadyExists, ConcurrencyConflict):
                continue  # someone else moved first: look again
        return False

    def renew(self, key: str, owner: str, until: datetime) -> bool:
        table, partition, row_key = self._site(key)
        held = self.held(key, owner)
        if held is None:  # not taken through this instance: the stored owner decides (owners are unique)
            entity = table.get(partition, row_key)
            if entity is None or entity["owner"] != owner:
                return False
            held = etag_of(entity), _reports(entity)
        etag, reports = held
        try:
            row = _lease_row(partition, row_key, owner, until, reports=reports)
            self.hold(key, owner, table.write(Write("update", row, etag)), reports)
            return True
        except ConcurrencyConflict:
            # Lost, unless the conflict is our own update sent twice (a dropped connection is resent).
            entity = table.get(partition, row_key)
            ours = entity is not None and entity["owner"] == owner
            if ours and entity is not None and from_stored_datetime(entity["until"]) == to_utc(until):
                self.hold(key, owner, etag_of(entity), _reports(entity))
                return True
            self.drop(key, owner)
            return False

    def take_over(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        table, partition, row_key = self._site(key)
        for _ in range(CONFLICT_ATTEMPTS):
            entity = table.get(partition, row_key)
            row = _lease_row(partition, row_key, owner, until, reports=_reports(entity))
            claim = Write("create", row) if entity is None else Write("update", row, etag_of(entity))
            try:
                self.hold(key, owner, table.write(claim), _reports(entity))
            except (AlreadyExists, ConcurrencyConflict):
                continue  # someone moved first: take it from them instead
            return (
                entity is not None
                and entity["owner"] not in ("", owner)
                and from_stored_datetime(entity["until"]) > to_utc(now)
            )
        raise ConcurrencyConflict(f"the lease {key} kept changing")

    def release(self, key: str, owner: str) -> None:
        """Delete the row (write a sync lease's free) at the ETag this owner wrote last, without a read;
        unknown here, read it first."""
        table, partition, row_key = self._site(key)
        with self._lock:
            held = self._held.pop((key, owner), None)
        if held is None:
            entity = table.get(partition, row_key)
            if entity is None or entity["owner"] != owner:
                return
            held = etag_of(entity), _reports(entity)
        etag, reports = held
        if isinstance(key, MailboxLease):
            release = Write("update", _lease_row(partition, row_key, "", _FREE, reports=reports, by=owner), etag)
        else:
            release = Write("delete", {"PartitionKey": partition, "RowKey": row_key}, etag)
        with suppress(ConcurrencyConflict):  # taken over (or already gone) meanwhile: not ours to release
            table.write(release)

    def held(self, key: str, owner: str) -> tuple[str, int] | None:
        """(ETag, report count) of the row ``owner`` wrote last through this instance, if any."""
        with self._lock:
            return self._held.get((key, owner))

    def _site(self, key: str) -> tuple[Table, str, str]:
        if isinstance(key, MailboxLease):
            return self.state, keys.mailbox_partition(key.org_id, key.mailbox_id), _SYNC_LEASE_ROW
        return self._table, keys.key_part(key), _LEASE_ROW

    def hold(self, key: str, owner: str, etag: str, reports: int = 0) -> None:
        with self._lock:
            self._held[(key, owner)] = (etag, reports)

    def drop(self, key: str, owner: str) -> None:
        with self._lock:
            self._held.pop((key, owner), None)


def _lease_row(
    partition: str, row_key: str, owner: str, until: datetime, *, reports: int = 0, by: str = ""
) -> dict[str, Any]:
    return {
        "PartitionKey": partition,
        "RowKey": row_key,
        "owner": owner,
        "until": to_utc(until),
        "reports": reports,
        "by": by or owner,
    }


def _reports(entity: Mapping[str, Any] | None) -> int:
    return int(entity.get("reports", 0) or 0) if entity is not None else 0


def _written(entity: Mapping[str, Any]) -> tuple[Any, ...]:
    return entity.get("by"), entity["owner"], _reports(entity), from_stored_datetime(entity["until"])


def _free_for(entity: Mapping[str, Any], owner: str, now: datetime) -> bool:
    holder = entity["owner"]
    return holder in ("", owner) or from_stored_datetime(entity["until"]) <= to_utc(now)


class TableSyncStateStore:
    """``SyncStateStore`` on the cursors table's mailbox partitions (module docstring), sharing the held
    ETags of the ``TableLeaseStore`` it is given, so a lease taken here is renewed or released there and
    the other way round."""

    def __init__(self, leases: TableLeaseStore) -> None:
        self._leases = leases
        self._table = leases.state

    def read(self, org_id: str, mailbox_id: str) -> SyncState:
        rows = self._table.rows_in_ranges(keys.mailbox_partition(org_id, mailbox_id), _STATE_RANGES)
        cursors: dict[str, str] = {}
        version = ""
        for row in rows:
            if row["RowKey"] == _SYNC_LEASE_ROW:
                until = to_utc(from_stored_datetime(row["until"])).isoformat()
                version = json.dumps([etag_of(row), row["owner"], until, _reports(row)])
            else:
                cursors[row["folder"]] = get_text(row, "link")
        return SyncState(cursors, version)

    def acquire_seen(
        self, org_id: str, mailbox_id: str, owner: str, *, until: datetime, now: datetime, seen: SyncState
    ) -> bool:
        key = MailboxLease(org_id, mailbox_id)
        partition = keys.mailbox_partition(org_id, mailbox_id)
        reports = 0
        try:
            if not seen.version:
                etag = self._table.write(Write("create", _lease_row(partition, _SYNC_LEASE_ROW, owner, until)))
            else:
                seen_etag, holder, held_until, reports = json.loads(seen.version)
                if holder not in ("", owner) and datetime.fromisoformat(held_until) > to_utc(now):
                    return False
                row = _lease_row(partition, _SYNC_LEASE_ROW, owner, until, reports=reports)
                etag = self._table.write(Write("update", row, seen_etag))
        except (AlreadyExists, ConcurrencyConflict):
            return False  # changed since the read: the caller takes it the ordinary way
        self._leases.hold(key, owner, etag, reports)
        return True

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
        """One entity group transaction: the lease row at the ETag this owner wrote last (the fence),
        the cursors, and the report in slot ``reports % keep`` (the oldest of the ``keep`` slots); the
        lease row alone when there is nothing else."""
        key = MailboxLease(org_id, mailbox_id)
        partition = keys.mailbox_partition(org_id, mailbox_id)
        held = self._leases.held(key, owner)
        if held is None:
            entity = self._table.get(partition, _SYNC_LEASE_ROW)
            if entity is None or entity["owner"] != owner:
                return False
            held = etag_of(entity), _reports(entity)
        etag, reports = held
        written = reports + (1 if report is not None else 0)
        holder, expiry = (owner, until) if until is not None else ("", _FREE)
        lease = _lease_row(partition, _SYNC_LEASE_ROW, holder, expiry, reports=written, by=owner)
        operations = [Write("update", lease, etag)]
        operations += [Write("upsert", _cursor_row(org_id, mailbox_id, f, link)) for f, link in cursors.items()]
        if report is not None:
            slot = f"{_REPORT_PREFIX}{reports % max(keep, 1):04d}"
            operations.append(Write("upsert", dataclass_entity(report, partition, slot)))
        try:
            # A renewal with nothing else to write is a plain conditional update (the same one round trip).
            new_etag = self._table.write(operations[0]) if len(operations) == 1 else self._table.transact(operations)[0]
        except ConcurrencyConflict:
            # Lost, unless it is our own transaction sent twice (a dropped connection is resent).
            entity = self._table.get(partition, _SYNC_LEASE_ROW)
            mine = (owner, holder, written, to_utc(expiry))
            if entity is None or _written(entity) != mine:
                self._leases.drop(key, owner)
                return False
            new_etag = etag_of(entity)
        if until is None:
            self._leases.drop(key, owner)
        else:
            self._leases.hold(key, owner, new_etag, written)
        return True


class TableRunReportStore:
    def __init__(
        self,
        service: TableServiceClient,
        prefix: str = "",
        metrics: TableMetrics | None = None,
        state: Table | None = None,
    ) -> None:
        shared = metrics or TableMetrics()
        self._table = Table(service, table_name(prefix, "runs"), shared)
        self._state = state or Table(service, table_name(prefix, "cursors"), shared)

    def add(self, report: RunReport, keep: int) -> None:
        partition = keys.mailbox_partition(report.org_id, report.mailbox_id)
        row = keys.run_row(to_utc(report.started_at), report.run_id)
        self._table.write(Write("upsert", dataclass_entity(report, partition, row)))
        rows = self._table.rows(partition, select=["PartitionKey", "RowKey"])
        self._table.submit([Write("delete", key_only(old)) for old in itertools.islice(rows, max(keep, 0), None)])

    def recent(self, org_id: str, mailbox_id: str, limit: int) -> tuple[RunReport, ...]:
        """Newest first, from both places reports are kept (module docstring)."""
        if limit < 1:
            return ()
        partition = keys.mailbox_partition(org_id, mailbox_id)
        added = itertools.islice(self._table.rows(partition, page_size=limit), limit)
        synced = self._state.rows_in_ranges(partition, [_REPORT_RANGE])
        reports = [dataclass_from_entity(RunReport, entity) for entity in itertools.chain(added, synced)]
        reports.sort(key=lambda report: keys.run_row(to_utc(report.started_at), report.run_id))
        return tuple(reports[:limit])


class TableSettingsRepository:
    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        self._table = Table(service, table_name(prefix, "settings"), metrics or TableMetrics())

    def get(self, org_id: str) -> OrgSettings:
        entity = self._table.get(keys.org_partition(org_id), _SETTINGS_ROW)
        return dataclass_from_entity(OrgSettings, entity) if entity is not None else OrgSettings()

    def put(self, org_id: str, settings: OrgSettings) -> None:
        self._table.write(Write("upsert", dataclass_entity(settings, keys.org_partition(org_id), _SETTINGS_ROW)))
