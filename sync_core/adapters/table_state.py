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
  over; only its owner releases it.
- Values come back as ``table_codec`` stores them (datetimes aware UTC); missing fields take defaults.
"""

from __future__ import annotations

import itertools
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
        entity: dict[str, Any] = {
            "PartitionKey": keys.mailbox_partition(org_id, mailbox_id),
            "RowKey": keys.key_part(folder),
            "folder": folder,
        }
        put_text(entity, "link", link)
        self._table.write(Write("upsert", entity))

    def clear(self, org_id: str, mailbox_id: str) -> None:
        rows = self._table.rows(keys.mailbox_partition(org_id, mailbox_id), select=["PartitionKey", "RowKey"])
        self._table.submit([Write("delete", key_only(row)) for row in rows])


class TableLeaseStore:
    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        self._table = Table(service, table_name(prefix, "leases"), metrics or TableMetrics())

    def acquire(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        partition = keys.key_part(key)
        row = {"PartitionKey": partition, "RowKey": _LEASE_ROW, "owner": owner, "until": to_utc(until)}
        for _ in range(CONFLICT_ATTEMPTS):
            entity = self._table.get(partition, _LEASE_ROW)
            if entity is None:
                claim = Write("create", row)
            elif entity["owner"] == owner or from_stored_datetime(entity["until"]) <= to_utc(now):
                claim = Write("update", row, etag_of(entity))
            else:
                return False
            try:
                self._table.write(claim)
                return True
            except (AlreadyExists, ConcurrencyConflict):
                continue  # someone else moved first: look again
        return False

    def release(self, key: str, owner: str) -> None:
        entity = self._table.get(keys.key_part(key), _LEASE_ROW)
        if entity is None or entity["owner"] != owner:
            return
        with suppress(ConcurrencyConflict):  # taken over meanwhile: no longer ours to release
            self._table.write(Write("delete", key_only(entity), etag_of(entity)))


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
