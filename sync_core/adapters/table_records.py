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

Lookup cache (per instance, i.e. per worker process):
- ``<org>|v`` / ``version`` holds the org's records version, a fresh uuid4 written after every upsert and
  delete call of the org has done its writes, however the call ends (returned, raised, gave up); it is
  never deleted and a version is never reused.
- ``lookup`` reads the version first, serves addresses/domains (matches and no-matches) cached under
  (org, version) and queries only the rest, caching each answer under the version read before its query.
  So an upsert or delete that returned before a lookup started is never hidden by the cache: its version
  write came after its index writes, and any answer cached under the version the lookup reads (that one
  or a later one) was queried after that version was written. A lookup concurrent with a change may see
  it or not, as without the cache. A call killed mid-way (or whose version write failed after an error)
  may leave its partial rows hidden until the next change of the org; its record stays ``index_pending``
  until an upsert or delete of it completes (and writes a new version).
- The cache is an LRU bounded to ``cache_entries`` entries and safe across threads.

Snapshot of a small org (per instance): while an org has at most ``snapshot_records`` records, a lookup
answers every address and domain from one scan of the org's record rows (``<org>|r``, the records
themselves, so one partition query of ceil(n / 1,000) pages), taken after reading the version and kept under
it, exactly as the per-key answers above: one point read per lookup once the snapshot is there, however
many keys a page names, and never a query per address that is on no record. A scan that meets more rows
than the bound is abandoned and the org is looked up key by key; this instance tries again after
``LARGE_RECHECK`` (an org rarely shrinks). The snapshot reads a record's own addresses and domains, so a
record whose upsert was cut short (``index_pending``) already matches as upserted; one whose delete was
killed between its index rows and its record row matches until the delete is repeated.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
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
from sync_core.errors import ConcurrencyConflict, StorageUnavailable
from sync_core.ports import RecordLookupResult

IndexKey = tuple[str, str]  # ("e", address) or ("d", domain)
Refs = tuple[RecordRef, ...]
# Cached lookup answers per worker process: about 400 bytes each, so about 75 MiB when full.
DEFAULT_CACHE_ENTRIES = 200_000
# Orgs up to this many records are answered from one snapshot per records version (about 1 KB a record).
DEFAULT_SNAPSHOT_RECORDS = 20_000
SNAPSHOT_ORGS = 16  # snapshots kept per instance, least recently used dropped first
LARGE_RECHECK = 3600.0  # seconds before an org found too large for a snapshot is scanned again
_VERSION_ROW = "version"


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
        *,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        snapshot_records: int = DEFAULT_SNAPSHOT_RECORDS,
    ) -> None:
        self._table = Table(service, table_name(prefix, "records"), metrics or TableMetrics(), after_write)
        self._cache = _LruCache(cache_entries)
        self._snapshots = _Snapshots(snapshot_records)

    def upsert(self, org_id: str, records: Sequence[Record]) -> None:
        if records:
            with self._changing(org_id):
                self._upsert(org_id, records)

    def delete(self, org_id: str, record_ids: Sequence[str]) -> None:
        if record_ids:
            with self._changing(org_id):
                self._delete(org_id, record_ids)

    def _upsert(self, org_id: str, records: Sequence[Record]) -> None:
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

    def _delete(self, org_id: str, record_ids: Sequence[str]) -> None:
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

    def get_many(self, org_id: str, record_ids: Sequence[str]) -> Mapping[str, Record]:
        wanted = list(dict.fromkeys(record_ids))
        found = self._read_many(org_id, wanted) if wanted else []
        return {rid: _record_from(entity) for rid, entity in zip(wanted, found, strict=True) if entity is not None}

    def lookup(self, org_id: str, addresses: Iterable[str], domains: Iterable[str]) -> RecordLookupResult:
        """One point read of the org's version; then, for a small org, its snapshot under that version (one
        partition scan when there is none yet); else one partition query per distinct address and domain
        not cached under that version, run concurrently."""
        wanted = [("e", a) for a in dict.fromkeys(addresses)] + [("d", d) for d in dict.fromkeys(domains)]
        if not wanted:
            return RecordLookupResult()
        version = self._version(org_id)
        snapshot = self._snapshot(org_id, version)
        if snapshot is not None:
            return RecordLookupResult(
                by_address={value: snapshot.get((kind, value), ()) for kind, value in wanted if kind == "e"},
                by_domain={value: snapshot.get((kind, value), ()) for kind, value in wanted if kind == "d"},
            )
        cached = self._cache.get_many([(org_id, version, kind, value) for kind, value in wanted])
        answers = {key: refs for key, refs in zip(wanted, cached, strict=True) if refs is not None}
        misses = [key for key in wanted if key not in answers]
        found = self._table.in_parallel([functools.partial(self._refs, _partition(org_id, key)) for key in misses])
        self._cache.put_many([((org_id, version, *key), refs) for key, refs in zip(misses, found, strict=True)])
        answers.update(zip(misses, found, strict=True))
        return RecordLookupResult(
            by_address={value: refs for (kind, value), refs in answers.items() if kind == "e"},
            by_domain={value: refs for (kind, value), refs in answers.items() if kind == "d"},
        )

    def _snapshot(self, org_id: str, version: str) -> Mapping[IndexKey, Refs] | None:
        """The org's answers under ``version``: kept, or scanned now; None for an org too large for one."""
        known = self._snapshots.get(org_id, version)
        if known is not None or not self._snapshots.worth_scanning(org_id):
            return known
        by_key: dict[IndexKey, list[RecordRef]] = {}
        for count, entity in enumerate(self._table.rows(keys.record_partition(org_id)), start=1):
            if count > self._snapshots.max_records:
                self._snapshots.too_large(org_id)
                return None
            record = _record_from(entity)
            for key in _index_keys(record):
                by_key.setdefault(key, []).append(record.ref)
        answers = {key: tuple(sorted(refs, key=_by_id)) for key, refs in by_key.items()}
        self._snapshots.put(org_id, version, answers)
        return answers

    def _version(self, org_id: str) -> str:
        entity = self._table.get(_version_partition(org_id), _VERSION_ROW, select=["version"])
        return str(entity["version"]) if entity is not None else ""

    @contextmanager
    def _changing(self, org_id: str) -> Iterator[None]:
        """Write a new version of the org's records once the block ends, however it ends."""
        try:
            yield
        except BaseException:
            with suppress(StorageUnavailable):  # the block's own error is the one to report
                self._bump_version(org_id)
            raise
        self._bump_version(org_id)

    def _bump_version(self, org_id: str) -> None:
        row = {"PartitionKey": _version_partition(org_id), "RowKey": _VERSION_ROW, "version": uuid.uuid4().hex}
        self._table.write(Write("upsert", row))

    def _refs(self, partition_key: str) -> Refs:
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


def _partition(org_id: str, key: IndexKey) -> str:
    kind, value = key
    return keys.address_partition(org_id, value) if kind == "e" else keys.domain_partition(org_id, value)


def _version_partition(org_id: str) -> str:
    return keys.compose(keys.key_part(org_id), "v")


def _index_row(org_id: str, key: IndexKey, record_id: str, record_type: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {"PartitionKey": _partition(org_id, key), "RowKey": keys.key_part(record_id)}
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


CacheKey = tuple[str, str, str, str]  # (org, version, "e" or "d", address or domain)


class _LruCache:
    """Lookup answers by (org, version, kind, value): at most ``max_entries``, least recently used
    evicted first; safe across threads."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[CacheKey, Refs] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, cache_keys: Sequence[CacheKey]) -> list[Refs | None]:
        with self._lock:
            found = [self._entries.get(key) for key in cache_keys]
            for key, refs in zip(cache_keys, found, strict=True):
                if refs is not None:
                    self._entries.move_to_end(key)
            return found

    def put_many(self, items: Sequence[tuple[CacheKey, Refs]]) -> None:
        if self._max_entries <= 0:
            return
        with self._lock:
            for key, refs in items:
                self._entries[key] = refs
                self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)


class _Snapshots:
    """Per-org answers under one records version (the latest scanned), at most ``SNAPSHOT_ORGS`` orgs, and
    the orgs last found larger than ``max_records``; safe across threads."""

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._lock = threading.Lock()
        self._by_org: OrderedDict[str, tuple[str, Mapping[IndexKey, Refs]]] = OrderedDict()
        self._large_since: dict[str, float] = {}

    def get(self, org_id: str, version: str) -> Mapping[IndexKey, Refs] | None:
        with self._lock:
            kept = self._by_org.get(org_id)
            if kept is None or kept[0] != version:
                return None
            self._by_org.move_to_end(org_id)
            return kept[1]

    def worth_scanning(self, org_id: str) -> bool:
        if self.max_records <= 0:
            return False
        with self._lock:
            since = self._large_since.get(org_id)
            return since is None or time.monotonic() - since > LARGE_RECHECK

    def too_large(self, org_id: str) -> None:
        with self._lock:
            self._large_since[org_id] = time.monotonic()
            self._by_org.pop(org_id, None)

    def put(self, org_id: str, version: str, answers: Mapping[IndexKey, Refs]) -> None:
        with self._lock:
            self._large_since.pop(org_id, None)
            self._by_org[org_id] = (version, answers)
            self._by_org.move_to_end(org_id)
            while len(self._by_org) > SNAPSHOT_ORGS:
                self._by_org.popitem(last=False)
