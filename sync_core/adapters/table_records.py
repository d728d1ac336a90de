"""The CRM records index over Table storage (table ``<prefix>records``).

Layout:
- ``<org>|r`` / ``<record>``: the record (type, name, emails, domains) and ``index_keys``, every
  address/domain row that may exist for it; all records of an org share this partition, so batch upserts
  write them in entity group transactions.
- ``<org>|e|<address>`` / ``<record>`` and ``<org>|d|<domain>`` / ``<record>``: one row per record holding
  that address or domain. A lookup is one partition query per distinct address or domain, never a scan.

Invariants:
- A record's address/domain rows are always within its ``index_keys``. An upsert (1) writes the record
  with ``index_keys`` = old + new and ``index_pending``, (2) puts the new rows and deletes the stale ones,
  (3) writes ``index_keys`` = new. A crash anywhere leaves state the next upsert or delete of that record
  completes, so an address a record lost never keeps matching it.
- The record row is written at the ETag read for the plan: concurrent upserts of one record serialise.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from azure.data.tables import TableServiceClient

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_client import (
    CONFLICT_ATTEMPTS,
    Plan,
    Table,
    TableMetrics,
    Write,
    etag_of,
    key_only,
    table_name,
)
from sync_core.adapters.table_codec import get_json, put_json, stored_record
from sync_core.domain.model import Record, RecordRef
from sync_core.errors import ConcurrencyConflict
from sync_core.ports import RecordLookupResult

IndexKey = tuple[str, str]  # ("e", address) or ("d", domain)


@dataclasses.dataclass(frozen=True)
class _Change:
    record_id: str
    record_write: Write
    index_writes: tuple[Write, ...]
    settled: dict[str, Any] | None  # the record row once its index rows are done, when it differs


class TableRecordsIndex:
    def __init__(
        self,
        service: TableServiceClient,
        prefix: str = "",
        metrics: TableMetrics | None = None,
        after_write: Callable[[], None] | None = None,
    ) -> None:
        self._table = Table(service, table_name(prefix, "records"), metrics or TableMetrics(), after_write)

    def upsert(self, org_id: str, records: Sequence[Record]) -> None:
        wanted = {record.record_id: stored_record(record) for record in records}
        pending = list(wanted)
        for _ in range(CONFLICT_ATTEMPTS):
            if not pending:
                return
            stored = self._read_many(org_id, pending)
            changes = [
                change
                for record_id, entity in zip(pending, stored, strict=True)
                if (change := self._change(org_id, wanted[record_id], entity)) is not None
            ]
            committed = self._table.commit([Plan(change.record_id, (change.record_write,)) for change in changes])
            done = [change for change in changes if change.record_id in committed.etags]
            self._table.submit([write for change in done for write in change.index_writes])
            settle = [
                Plan(change.record_id, (Write("update", change.settled, committed.etags[change.record_id]),))
                for change in done
                if change.settled is not None
            ]
            # A conflict here means a newer upsert took the record over; its index_keys include ours.
            self._table.commit(settle)
            pending = committed.conflicted
        if pending:
            raise ConcurrencyConflict(f"records {pending} kept changing while being upserted")

    def delete(self, org_id: str, record_ids: Sequence[str]) -> None:
        pending = list(dict.fromkeys(record_ids))
        for _ in range(CONFLICT_ATTEMPTS):
            read = zip(pending, self._read_many(org_id, pending), strict=True)
            stored = [(record_id, entity) for record_id, entity in read if entity is not None]
            if not stored:
                return
            self._table.submit(
                [
                    Write("delete", _index_row(org_id, key, record_id))
                    for record_id, entity in stored
                    for key in _keys_of(entity)
                ]
            )
            committed = self._table.commit(
                [
                    Plan(record_id, (Write("delete", key_only(entity), etag_of(entity)),))
                    for record_id, entity in stored
                ]
            )
            pending = committed.conflicted
        if pending:
            raise ConcurrencyConflict(f"records {pending} kept changing while being deleted")

    def get(self, org_id: str, record_id: str) -> Record | None:
        entity = self._read(org_id, record_id)
        return _record_from(entity) if entity is not None else None

    def lookup(self, org_id: str, addresses: Iterable[str], domains: Iterable[str]) -> RecordLookupResult:
        """One partition query per distinct address and domain, run concurrently."""
        wanted_addresses, wanted_domains = list(dict.fromkeys(addresses)), list(dict.fromkeys(domains))
        partitions = [keys.address_partition(org_id, address) for address in wanted_addresses]
        partitions += [keys.domain_partition(org_id, domain) for domain in wanted_domains]
        found = self._table.in_parallel([functools.partial(self._refs, partition) for partition in partitions])
        return RecordLookupResult(
            by_address=dict(zip(wanted_addresses, found[: len(wanted_addresses)], strict=True)),
            by_domain=dict(zip(wanted_domains, found[len(wanted_addresses) :], strict=True)),
        )

    def _refs(self, partition_key: str) -> tuple[RecordRef, ...]:
        rows = self._table.rows(partition_key, select=["record_id", "record_type"])
        return tuple(sorted((RecordRef(row["record_id"], row["record_type"]) for row in rows), key=_by_id))

    def _read(self, org_id: str, record_id: str) -> Any:
        return self._table.get(keys.record_partition(org_id), keys.key_part(record_id))

    def _read_many(self, org_id: str, record_ids: Sequence[str]) -> list[Any]:
        return self._table.get_many([(keys.record_partition(org_id), keys.key_part(r)) for r in record_ids])

    def _change(self, org_id: str, record: Record, entity: Any) -> _Change | None:
        new_keys = _index_keys(record)
        old = _record_from(entity) if entity is not None else None
        old_keys = _keys_of(entity) if entity is not None else set()
        stale = old_keys - new_keys
        rewrite_all = old is None or entity.get("index_pending", False) or old.record_type != record.record_type
        to_put = new_keys if rewrite_all else new_keys - old_keys
        if not to_put and not stale and old == record:
            return None
        index_work = bool(to_put or stale)
        row = _record_entity(org_id, record, old_keys | new_keys, pending=index_work)
        record_write = Write("create", row) if entity is None else Write("update", row, etag_of(entity))
        record_id, record_type = record.record_id, record.record_type
        puts = [Write("upsert", _index_row(org_id, key, record_id, record_type)) for key in sorted(to_put)]
        deletes = [Write("delete", _index_row(org_id, key, record_id)) for key in sorted(stale)]
        return _Change(
            record_id=record.record_id,
            record_write=record_write,
            index_writes=(*puts, *deletes),
            settled=_record_entity(org_id, record, new_keys, pending=False) if index_work else None,
        )


def _index_keys(record: Record) -> set[IndexKey]:
    return {("e", address) for address in record.emails} | {("d", domain) for domain in record.domains}


def _keys_of(entity: Mapping[str, Any]) -> set[IndexKey]:
    return {(kind, value) for kind, value in get_json(entity, "index_keys", [])}


def _index_row(org_id: str, key: IndexKey, record_id: str, record_type: str = "") -> dict[str, Any]:
    kind, value = key
    partition = keys.address_partition(org_id, value) if kind == "e" else keys.domain_partition(org_id, value)
    row: dict[str, Any] = {"PartitionKey": partition, "RowKey": keys.key_part(record_id)}
    if record_type:
        row.update(record_id=record_id, record_type=record_type)
    return row


def _record_entity(org_id: str, record: Record, index_keys: set[IndexKey], pending: bool) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": keys.record_partition(org_id),
        "RowKey": keys.key_part(record.record_id),
        "record_id": record.record_id,
        "record_type": record.record_type,
        "name": record.name,
        "index_pending": pending,
    }
    put_json(entity, "emails", list(record.emails))
    put_json(entity, "domains", list(record.domains))
    put_json(entity, "index_keys", sorted(index_keys))
    return entity


def _record_from(entity: Mapping[str, Any]) -> Record:
    return Record(
        record_id=entity["record_id"],
        record_type=entity["record_type"],
        name=entity.get("name", ""),
        emails=tuple(get_json(entity, "emails", [])),
        domains=tuple(get_json(entity, "domains", [])),
    )


def _by_id(ref: RecordRef) -> str:
    return ref.record_id
