"""Mailboxes, delta cursors, leases, run reports and org settings over Table storage.

Layout (PartitionKey / RowKey):
- ``<prefix>mailboxes``: ``<org>`` / ``<mailbox>``: every field of the mailbox.
- ``<prefix>cursors``: ``<org>|<mailbox>`` / ``<folder>``: the folder's delta link, stored as a (chunked)
  property because links outgrow key limits.
- ``<prefix>leases``: ``<key>`` / ``lease``: owner and expiry.
- ``<prefix>runs``: ``<org>|<mailbox>`` / ``<inverted start>|<run>``: run reports, newest first.
- ``<prefix>settings``: ``<org>`` / ``settings``: the org's settings.

Invariants:
- Mailbox replaces and every lease change are ETag-conditional: a stale mailbox ETag raises
  ConcurrencyConflict; of concurrent acquirers of a lease exactly one wins; an expired lease can be taken
  over; a renewal succeeds only if the row is still the one its owner wrote last; ``take_over`` replaces
  whatever holder it read; only its owner releases it.
- Values come back as ``table_codec`` stores them (datetimes aware UTC); missing fields take defaults.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from contextlib import suppress
from datetime import datetime
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
from sync_core.ports import RunReport, Versioned

_LEASE_ROW = "lease"
_SETTINGS_ROW = "settings"


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
        self._table = Table(service, table_name(prefix, "cursors"), metrics or TableMetrics())

    def get_all(self, org_id: str, mailbox_id: str) -> Mapping[str, str]:
        rows = self._table.rows(keys.mailbox_partition(org_id, mailbox_id))
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
        rows = self._table.rows(keys.mailbox_partition(org_id, mailbox_id), select=["PartitionKey", "RowKey"])
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
    delete. A released lease has no row, so taking a free lease is one create."""

    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        self._table = Table(service, table_name(prefix, "leases"), metrics or TableMetrics())
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], str] = {}  # (key, owner) -> ETag of the row this owner wrote last

    def acquire(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        """A free lease (no row: released ones are deleted) is taken with one create, without a read;
        only when the row exists is it read, and taken over at its ETag if expired or already ours."""
        partition = keys.key_part(key)
        row = _lease_row(partition, owner, until)
        with suppress(AlreadyExists):
            self._hold(key, owner, self._table.write(Write("create", row)))
            return True
        for _ in range(CONFLICT_ATTEMPTS):
            entity = self._table.get(partition, _LEASE_ROW)
            if entity is None:
                claim = Write("create", row)
            elif entity["owner"] == owner or from_stored_datetime(entity["until"]) <= to_utc(now):
                claim = Write("update", row, etag_of(entity))
            else:
                return False
            try:
                self._hold(key, owner, self._table.write(claim))
                return True
            except (AlreadyExists, ConcurrencyConflict):
                continue  # someone else moved first: look again
        return False

    def renew(self, key: str, owner: str, until: datetime) -> bool:
        partition = keys.key_part(key)
        with self._lock:
            etag = self._held.get((key, owner))
        if etag is None:  # not taken through this instance: the stored owner decides (owners are unique)
            entity = self._table.get(partition, _LEASE_ROW)
            if entity is None or entity["owner"] != owner:
                return False
            etag = etag_of(entity)
        try:
            self._hold(key, owner, self._table.write(Write("update", _lease_row(partition, owner, until), etag)))
            return True
        except ConcurrencyConflict:
            # Lost, unless the conflict is our own update sent twice (a dropped connection is resent).
            entity = self._table.get(partition, _LEASE_ROW)
            ours = entity is not None and entity["owner"] == owner
            if ours and entity is not None and from_stored_datetime(entity["until"]) == to_utc(until):
                self._hold(key, owner, etag_of(entity))
                return True
            self._drop(key, owner)
            return False

    def take_over(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        partition = keys.key_part(key)
        row = _lease_row(partition, owner, until)
        for _ in range(CONFLICT_ATTEMPTS):
            entity = self._table.get(partition, _LEASE_ROW)
            claim = Write("create", row) if entity is None else Write("update", row, etag_of(entity))
            try:
                self._hold(key, owner, self._table.write(claim))
            except (AlreadyExists, ConcurrencyConflict):
                continue  # someone moved first: take it from them instead
            return (
                entity is not None
                and entity["owner"] != owner
                and from_stored_datetime(entity["until"]) > to_utc(now)
            )
        raise ConcurrencyConflict(f"the lease {key} kept changing")

    def release(self, key: str, owner: str) -> None:
        """Delete the row at the ETag this owner wrote last (no read); unknown here, read it first."""
        with self._lock:
            etag = self._held.pop((key, owner), None)
        if etag is not None:
            row = {"PartitionKey": keys.key_part(key), "RowKey": _LEASE_ROW}
            with suppress(ConcurrencyConflict):  # taken over (or already gone) meanwhile: not ours to release
                self._table.write(Write("delete", row, etag))
            return
        entity = self._table.get(keys.key_part(key), _LEASE_ROW)
        if entity is None or entity["owner"] != owner:
            return
        with suppress(ConcurrencyConflict):  # taken over meanwhile: no longer ours to release
            self._table.write(Write("delete", key_only(entity), etag_of(entity)))

    def _hold(self, key: str, owner: str, etag: str) -> None:
        with self._lock:
            self._held[(key, owner)] = etag

    def _drop(self, key: str, owner: str) -> None:
        with self._lock:
            self._held.pop((key, owner), None)


def _lease_row(partition: str, owner: str, until: datetime) -> dict[str, Any]:
    return {"PartitionKey": partition, "RowKey": _LEASE_ROW, "owner": owner, "until": to_utc(until)}


class TableRunReportStore:
    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        self._table = Table(service, table_name(prefix, "runs"), metrics or TableMetrics())

    def add(self, report: RunReport, keep: int) -> None:
        partition = keys.mailbox_partition(report.org_id, report.mailbox_id)
        row = keys.run_row(to_utc(report.started_at), report.run_id)
        self._table.write(Write("upsert", dataclass_entity(report, partition, row)))
        rows = self._table.rows(partition, select=["PartitionKey", "RowKey"])
        self._table.submit([Write("delete", key_only(old)) for old in itertools.islice(rows, max(keep, 0), None)])

    def recent(self, org_id: str, mailbox_id: str, limit: int) -> tuple[RunReport, ...]:
        if limit < 1:
            return ()
        rows = self._table.rows(keys.mailbox_partition(org_id, mailbox_id), page_size=limit)
        return tuple(dataclass_from_entity(RunReport, entity) for entity in itertools.islice(rows, limit))


class TableSettingsRepository:
    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        self._table = Table(service, table_name(prefix, "settings"), metrics or TableMetrics())

    def get(self, org_id: str) -> OrgSettings:
        entity = self._table.get(keys.org_partition(org_id), _SETTINGS_ROW)
        return dataclass_from_entity(OrgSettings, entity) if entity is not None else OrgSettings()

    def put(self, org_id: str, settings: OrgSettings) -> None:
        self._table.write(Write("upsert", dataclass_entity(settings, keys.org_partition(org_id), _SETTINGS_ROW)))
