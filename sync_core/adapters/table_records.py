"""The CRM records index over Table storage (table ``<prefix>records``).

Layout:
- ``<org>|r`` / ``<record>``: the record (type, name, emails, domains) and ``index_keys``, every
  address/domain row that may exist for it; all records of an org share this partition, so batch upserts
  write them in entity group transactions.
- ``<org>|x|<bucket>`` / ``e|<address>|<record>`` and ``d|<domain>|<record>``: one row per record holding
  that address or domain, in one of ``BUCKETS`` partitions per org chosen by a stable hash of the address or
  domain (``bucket_of``). A records write puts and deletes its index rows in entity group transactions of
  up to 100 rows per bucket (a 1,000-record batch: a few dozen transactions); a lookup of a page's keys is
  one query per bucket touched (up to ``RANGES_PER_QUERY`` key ranges OR-ed in one filter), never a scan.

Layout 1 (before) and its migration: index rows were one partition per address or domain
(``<org>|e|<address>`` / ``<record>``, ``<org>|d|<domain>`` / ``<record>``). The org's version row carries
``layout`` = 2 once the org is reindexed. The first upsert or delete of an org without it reindexes the
org first (``reindex``: from each record row, the source of truth, its rows in the bucketed layout are put
and its layout-1 rows deleted; then the marker), so lookups read layout 1 until the org's first records
write and the bucketed layout after; the snapshot (below) reads the record rows and serves either.
``reindex`` may also be run ahead of traffic, org by org; running it again is harmless.

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
import hashlib
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
    RANGES_PER_QUERY,
    Plan,
    Table,
    TableMetrics,
    Write,
    etag_of,
    key_only,
    pack,
    table_name,
)
from sync_core.adapters.table_codec import get_json, put_json, stored_record
from sync_core.domain.model import Record, RecordRef
from sync_core.errors import AlreadyExists, ConcurrencyConflict, StorageUnavailable
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
BUCKETS = 64  # index partitions per org: 100,000 records of 1-2 addresses are ~2,300 rows a bucket
LAYOUT = 2  # the version row's ``layout`` once the org's index rows are bucketed


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
        self._bucketed: set[str] = set()  # orgs seen in the bucketed layout (it is never undone)

    def upsert(self, org_id: str, records: Sequence[Record]) -> None:
        if records:
            self._ensure_bucketed(org_id)
            with self._changing(org_id):
                self._upsert(org_id, records)

    def delete(self, org_id: str, record_ids: Sequence[str]) -> None:
        if record_ids:
            self._ensure_bucketed(org_id)
            with self._changing(org_id):
                self._delete(org_id, record_ids)

    def reindex(self, org_id: str) -> int:
        """Rewrite the org's index rows in the bucketed layout from its record rows, delete their layout-1
        rows, then mark the org (a new records version with ``layout`` = 2). Returns the records reindexed.
        Idempotent; a record upserted concurrently is left as that upsert writes it (its rows are within
        its ``index_keys``, which the upsert's own deletes use)."""
        return self._reindex(org_id, self._read_version(org_id)[1])

    def _reindex(self, org_id: str, layout: int) -> int:
        count, stale = 0, []
        with self._changing(org_id, layout_on_error=layout):
            batch: list[Mapping[str, Any]] = []
            for entity in self._table.rows(keys.record_partition(org_id)):
                batch.append(entity)
                if len(batch) >= 1_000:
                    stale += self._reindex_rows(org_id, batch)
                    count, batch = count + len(batch), []
            stale += self._reindex_rows(org_id, batch)
            count += len(batch)
        # Once marked, layout-1 rows are never read again: a failure here leaves only unread rows.
        self._table.submit(stale)
        return count

    def _reindex_rows(self, org_id: str, entities: Sequence[Mapping[str, Any]]) -> list[Write]:
        """Put the bucketed rows of these records; return the deletes of their layout-1 rows."""
        puts: list[Write] = []
        stale: list[Write] = []
        for entity in entities:
            record = _record_from(entity)
            puts += [
                Write("upsert", _index_row(org_id, key, record.record_id, record.record_type))
                for key in sorted(_index_keys(record))
            ]
            stale += [Write("delete", _old_index_row(org_id, key, record.record_id)) for key in _keys_of(entity)]
        self._table.submit(puts)
        return stale

    def _ensure_bucketed(self, org_id: str) -> None:
        """Reindex an org still in layout 1 (an org never goes back: ``layout`` is only ever written 2, or
        kept as read by a reindex cut short), remembered per instance."""
        if org_id in self._bucketed:
            return
        layout = self._read_version(org_id)[1]
        if layout != LAYOUT:
            self._reindex(org_id, layout)
        self._bucketed.add(org_id)

    def _upsert(self, org_id: str, records: Sequence[Record]) -> None:
        wanted = {record.record_id: stored_record(record) for record in records}
        pending = self._create_new(org_id, list(wanted.values()))
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
            self._finish([change for change in changes if change.record_id in committed.etags], committed.etags)
            pending = committed.conflicted
        if pending:
            raise ConcurrencyConflict(f"records {pending} kept changing while being upserted")

    def _create_new(self, org_id: str, records: Sequence[Record]) -> list[str]:
        """Create the records as new ones, without reading first: their record rows go up to 100 to an
        entity group transaction, and a transaction that meets an existing record fails as a whole (nothing
        written), its records returned for the read-then-write path. So loading new records reads nothing,
        and re-upserting existing ones costs one refused transaction per 100 records more."""
        changes = {record.record_id: self._change(org_id, record, None) for record in records}
        by_write = {id(change.record_write): change for change in changes.values() if change is not None}
        batches = pack([[change.record_write] for change in by_write.values()])
        outcomes = self._table.in_parallel([functools.partial(self._try_transaction, batch) for batch in batches])
        done: list[_Change] = []
        etags: dict[str, str] = {}
        refused: list[str] = []
        for batch, outcome in zip(batches, outcomes, strict=True):
            batch_changes = [by_write[id(write)] for write in batch]
            if outcome is None:
                refused += [change.record_id for change in batch_changes]
                continue
            done += batch_changes
            etags.update((change.record_id, etag) for change, etag in zip(batch_changes, outcome, strict=True))
        self._finish(done, etags)
        return refused

    def _try_transaction(self, batch: Sequence[Write]) -> list[str] | None:
        try:
            return self._table.transact(batch)
        except (AlreadyExists, ConcurrencyConflict):
            return None

    def _finish(self, done: Sequence[_Change], etags: Mapping[str, str]) -> None:
        """Steps 2 and 3 of an upsert, for records whose row was written at ``etags``: the index rows, then
        the settled record row (a conflict there means a newer upsert took the record over; its
        ``index_keys`` include ours)."""
        self._table.submit([write for change in done for write in change.index_writes])
        settle = [
            Plan(change.record_id, (Write("update", change.settled, etags[change.record_id]),))
            for change in done
            if change.settled is not None
        ]
        self._table.commit(settle)

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
                [Plan(record_id, (Write("delete", key_only(entity), etag_of(entity)),)) for record_id, entity in stored]
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
        partition scan when there is none yet); else, for the addresses and domains not cached under that
        version, one query per bucket touched (per 7 keys of a bucket), run concurrently; an org not yet
        reindexed (layout 1) is asked one partition query per key."""
        wanted = [("e", a) for a in dict.fromkeys(addresses)] + [("d", d) for d in dict.fromkeys(domains)]
        if not wanted:
            return RecordLookupResult()
        version, layout = self._read_version(org_id)
        snapshot = self._snapshot(org_id, version)
        if snapshot is not None:
            return RecordLookupResult(
                by_address={value: snapshot.get((kind, value), ()) for kind, value in wanted if kind == "e"},
                by_domain={value: snapshot.get((kind, value), ()) for kind, value in wanted if kind == "d"},
            )
        cached = self._cache.get_many([(org_id, version, kind, value) for kind, value in wanted])
        answers = {key: refs for key, refs in zip(wanted, cached, strict=True) if refs is not None}
        misses = [key for key in wanted if key not in answers]
        found = self._bucketed_refs(org_id, misses) if layout == LAYOUT else self._old_refs(org_id, misses)
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

    def _read_version(self, org_id: str) -> tuple[str, int]:
        """The org's records version and index layout (1 for an org never reindexed)."""
        entity = self._table.get(_version_partition(org_id), _VERSION_ROW, select=["version", "layout"])
        if entity is None:
            return "", 1
        return str(entity["version"]), int(entity.get("layout") or 1)

    @contextmanager
    def _changing(self, org_id: str, layout_on_error: int = LAYOUT) -> Iterator[None]:
        """Write a new version of the org's records once the block ends, however it ends. It marks the
        org bucketed when the block returned; when it raised, with ``layout_on_error`` (a reindex cut short
        keeps the layout it started from)."""
        try:
            yield
        except BaseException:
            with suppress(StorageUnavailable):  # the block's own error is the one to report
                self._bump_version(org_id, layout_on_error)
            raise
        self._bump_version(org_id, LAYOUT)

    def _bump_version(self, org_id: str, layout: int) -> None:
        row = {
            "PartitionKey": _version_partition(org_id),
            "RowKey": _VERSION_ROW,
            "version": uuid.uuid4().hex,
            "layout": layout,
        }
        self._table.write(Write("upsert", row))

    def _bucketed_refs(self, org_id: str, wanted: Sequence[IndexKey]) -> list[Refs]:
        """Records of each key: one query per bucket touched (more for many keys in one bucket), buckets
        queried concurrently."""
        by_bucket: dict[str, list[IndexKey]] = {}
        for key in wanted:
            by_bucket.setdefault(_bucket_partition(org_id, key), []).append(key)
        select = ["RowKey", "record_id", "record_type"]
        calls = [
            functools.partial(self._table.rows_in_ranges, partition, [_key_range(key) for key in chunk], select)
            for partition, bucket in by_bucket.items()
            for chunk in _chunks(bucket, RANGES_PER_QUERY)
        ]
        found: dict[str, list[RecordRef]] = {}
        for rows in self._table.in_parallel(calls):
            for row in rows:
                prefix = row["RowKey"].rsplit(keys.SEPARATOR, 1)[0]
                found.setdefault(prefix, []).append(RecordRef(row["record_id"], row["record_type"]))
        return [tuple(sorted(found.get(_key_prefix(key), ()), key=_by_id)) for key in wanted]

    def _old_refs(self, org_id: str, wanted: Sequence[IndexKey]) -> list[Refs]:
        """Layout 1: one partition query per key."""
        return self._table.in_parallel([functools.partial(self._refs, _old_partition(org_id, key)) for key in wanted])

    def _refs(self, partition_key: str) -> Refs:
        rows = self._table.rows(partition_key, select=["record_id", "record_type"])
        return tuple(sorted((RecordRef(row["record_id"], row["record_type"]) for row in rows), key=_by_id))

    def _read(self, org_id: str, record_id: str) -> Any:
        return self._table.get(keys.record_partition(org_id), keys.key_part(record_id))

    def _read_many(self, org_id: str, record_ids: Sequence[str]) -> list[Any]:
        """Point reads (an ``or`` of RowKey equalities would be a scan of the org's record partition on
        Table storage)."""
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


def bucket_of(key: IndexKey) -> int:
    """The bucket of an address (``("e", address)``) or domain (``("d", domain)``): a stable hash, the
    same in every process and version, so a key's rows are always in one known partition."""
    kind, value = key
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def _bucket_partition(org_id: str, key: IndexKey) -> str:
    return keys.compose(keys.key_part(org_id), "x", f"{bucket_of(key):02x}")


def _key_prefix(key: IndexKey) -> str:
    kind, value = key
    return keys.compose(kind, keys.key_part(value))


def _key_range(key: IndexKey) -> tuple[str, str]:
    return keys.prefix_bounds(_key_prefix(key))


def _chunks(items: Sequence[IndexKey], size: int) -> list[Sequence[IndexKey]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _old_partition(org_id: str, key: IndexKey) -> str:
    kind, value = key
    return keys.address_partition(org_id, value) if kind == "e" else keys.domain_partition(org_id, value)


def _old_index_row(org_id: str, key: IndexKey, record_id: str) -> dict[str, Any]:
    return {"PartitionKey": _old_partition(org_id, key), "RowKey": keys.key_part(record_id)}


def _version_partition(org_id: str) -> str:
    return keys.compose(keys.key_part(org_id), "v")


def _index_row(org_id: str, key: IndexKey, record_id: str, record_type: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {
        "PartitionKey": _bucket_partition(org_id, key),
        "RowKey": keys.compose(_key_prefix(key), keys.key_part(record_id)),
    }
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
