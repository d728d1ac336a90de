"""The CRM records index over Table storage (table ``<prefix>records``).

Layout (3, "packed"):
- ``<org>|r`` / ``<record>``: the record (type, name, emails, domains) and ``index_keys``, every
  address/domain the packed index may hold for it; all records of an org share this partition, so batch
  upserts write them in entity group transactions.
- ``<org>|p`` / ``<bucket>``: one row per bucket (``BUCKETS`` per org, chosen by a stable hash of the
  address or domain, ``bucket_of``) holding every address/domain of the bucket with the records that have
  it, as zlib-compressed JSON in binary properties of at most 64 KiB, at most ``BUCKET_MAX_BYTES`` a row
  (an entity holds at most 1 MiB, a transaction at most 100 entities and 4 MiB:
  https://learn.microsoft.com/rest/api/storageservices/understanding-the-table-service-data-model,
  https://learn.microsoft.com/rest/api/storageservices/performing-entity-group-transactions). A records
  write edits the buckets it touches read-modify-write at their ETag (a conflict re-reads that bucket and
  applies the edit again), all in the one ``<org>|p`` partition, so in transactions of up to 100 rows: a
  1,000-record batch writes 10 record transactions and 3 bucket transactions. A lookup reads the
  buckets of its keys by point reads, or every bucket of the org in one partition query when it needs
  ``WHOLE_READ`` or more (never a query per key: the emulator's queries scan the whole table, its point
  reads use an index), and a worker keeps the buckets it read (below), so a bucket answers every address
  of it, matched or not.
- ``<org>|v`` / ``version``: the org's records version and ``layout``.

Cost growth: a bucket holds about keys / ``BUCKETS`` entries (100,000 one-address records: about 390
entries, 4 KB compressed; 1,000,000: about 3,900, 40 KB); a batch touching ``k`` keys rewrites about
min(``k``, ``BUCKETS``) buckets, so its bytes grow with the org (1,000 records into an org of 1,000,000:
about 10 MB written, plus as much read by a worker that has not cached the buckets) while its
transactions do not. A bucket row holds at most ``BUCKET_MAX_BYTES`` compressed (50,000-90,000 entries at
10-20 compressed bytes an entry), so an org holds about 12-20 million addresses and domains; a write that
would exceed it raises ``StorageUnavailable`` and changes nothing.

Earlier layouts and their migration: layout 1 had one partition per address or domain (``<org>|e|<address>``
/ ``<record>``), layout 2 one row per address and record in 64 hashed partitions (``<org>|x|<bucket>`` /
``e|<address>|<record>``). The version row carries ``layout`` = 3 once the org is reindexed. The first
upsert or delete of an org in an older layout reindexes it first (``reindex``: from each record row, the
source of truth, its keys go into the packed buckets; then the marker; then its older rows are deleted),
so lookups read the older layout until the org's first records write and the packed one after; the
snapshot (below) reads the record rows and serves any. ``reindex`` may be run ahead of traffic, org by
org (``tools.reindex_records``); running it again is harmless.

Invariants:
- A record's packed entries are always within its ``index_keys``. An upsert (1) writes the record with
  ``index_keys`` = old + new and ``index_pending``, (2) adds and removes its entries in the buckets, (3)
  writes ``index_keys`` = new (the "settle"; skipped for a new record, whose ``index_keys`` are already its
  own: it stays ``index_pending`` until its next upsert, which re-adds its entries (no bucket write when
  they are there) and settles it). A crash anywhere leaves state the next upsert or delete of that record
  completes, so an address a record lost never keeps matching it. A record already ``index_pending`` with
  these keys and this content is not written again before (2).
- Read handover: the record rows ``get_many`` found (the records API reads them first for the record
  backfill) are offered to this instance's next upsert of those records for ``HANDOVER_SECONDS``, instead
  of reading them again (and of a create transaction doomed to meet them). Such a row is trusted only
  through a write at its ETag: when the upsert would not write the record row first (nothing changed, or
  already marked), it is read again, so a row changed meanwhile costs a refused write and a read, never
  a skipped change or an entry outside ``index_keys``.
- The record row is written at the ETag read for the plan: concurrent upserts of one record serialise;
  a bucket is written at the ETag its edit was applied to: concurrent writers of the org never lose each
  other's entries (one that meets a changed bucket re-reads it and applies its edit again, up to
  ``CONFLICT_ATTEMPTS`` times, then raises ``ConcurrencyConflict``).

Lookup cache (per instance, i.e. per worker process):
- ``<org>|v`` / ``version`` holds the org's records version, a fresh uuid4 written after every upsert and
  delete call of the org has done its writes, however the call ends (returned, raised, gave up); it is
  never deleted and a version is never reused.
- ``lookup`` reads the version first and serves the buckets read under that version; it reads (point
  reads, concurrently, or all of the org's in one query) only when a bucket it needs was not read under
  it yet, keeping each bucket under the version read before it. So an upsert or delete that returned
  before a lookup started is never hidden: its version write came after its bucket writes, and any
  bucket kept under the version the lookup reads (that one or a later one) was read after that version
  was written. A lookup concurrent with a change may see it or not. A
  call killed mid-way (or whose version write failed after an error) may leave its partial entries
  hidden until the next change of the org; its record stays ``index_pending`` until an upsert or delete
  of it completes (and writes a new version). A worker's own bucket writes keep the bucket's content and
  ETag for its next write (read-modify-write without the read; a stale copy only costs a refused write
  and a read), never for its lookups (another change may have been versioned in between).
- Kept buckets are bounded to ``cache_entries`` addresses and domains in all (a bucket counts its
  entries, at least 1), least recently used dropped first; safe across threads. Measured: about 400 bytes
  an entry in memory (100,000 entries: 40 MB; ``bench/records_load.py`` reports the worker's memory). An
  org whose buckets, read whole, hold more than the bound is from then on read only bucket by bucket, as
  its lookups need them (no Bloom filter: a bucket answers every address of it, matched or not).
- An org not yet reindexed (layout 1 or 2) is looked up key by key, each answer cached under the version
  in an LRU of ``cache_entries`` answers, as before the packed layout.

Snapshot of a small org (per instance): while an org has at most ``snapshot_records`` records, a lookup
answers every address and domain from one scan of the org's record rows (``<org>|r``, the records
themselves, so one partition query of ceil(n / 1,000) pages), taken after reading the version and kept under
it, exactly as the buckets above: one point read per lookup once the snapshot is there, however many keys a
page names. A scan that meets more rows than the bound is abandoned and the org is looked up in its
buckets; this instance tries again after ``LARGE_RECHECK`` (an org rarely shrinks). The snapshot reads a
record's own addresses and domains, so a record whose upsert was cut short (``index_pending``) already
matches as upserted; one whose delete was killed between its buckets and its record row matches until the
delete is repeated.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import threading
import time
import uuid
import zlib
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
Pair = tuple[str, str]  # (record id, record type)
Entries = Mapping[IndexKey, tuple[Pair, ...]]  # a bucket's content, records in id order
# Addresses and domains kept per worker process (buckets, or answers of an org in an older layout):
# about 400 bytes each, so about 120 MB when full (a 100,000-record org of one or two addresses a record).
DEFAULT_CACHE_ENTRIES = 300_000
# Orgs up to this many records are answered from one snapshot per records version (about 1 KB a record).
DEFAULT_SNAPSHOT_RECORDS = 20_000
SNAPSHOT_ORGS = 16  # snapshots kept per instance, least recently used dropped first
LARGE_RECHECK = 3600.0  # seconds before an org found too large for a snapshot is scanned again
HANDOVER_ENTRIES = 2_000  # record rows ``get_many`` hands over to the next upsert (two records:batch calls)
HANDOVER_SECONDS = 60.0  # how long a handed-over row is offered
REINDEX_CHUNK = 20_000  # records whose keys go into the buckets at once while reindexing
_VERSION_ROW = "version"
BUCKETS = 256  # packed bucket rows per org
OLD_BUCKETS = 64  # layout 2's index partitions per org
LAYOUT = 3  # the version row's ``layout`` once the org's index is packed
BUCKET_CHUNK_BYTES = 64_000  # an Edm.Binary property holds at most 64 KiB
WHOLE_READ = 32  # buckets to read at once from which one query of all the org's buckets is cheaper
BUCKET_MAX_BYTES = 15 * BUCKET_CHUNK_BYTES  # compressed bytes a bucket row holds (an entity: at most 1 MiB)


@dataclasses.dataclass(frozen=True)
class _Edit:
    """Add ``ref`` to ``key`` (``add``) or remove the record ``ref.record_id`` from it."""

    key: IndexKey
    ref: Pair
    add: bool


@dataclasses.dataclass(frozen=True)
class _Change:
    record_id: str
    record_write: Write | None  # None: the stored row (at ``stored_etag``) already marks this change
    stored_etag: str | None
    edits: tuple[_Edit, ...]
    settled: dict[str, Any] | None  # the record row once its entries are done, when it differs


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
        self._buckets = _BucketCache(cache_entries)
        self._snapshots = _Snapshots(snapshot_records)
        self._handed = _Handed()
        self._packed: set[str] = set()  # orgs seen in the packed layout (it is never undone)

    def upsert(self, org_id: str, records: Sequence[Record]) -> None:
        if records:
            self._ensure_packed(org_id)
            with self._changing(org_id):
                self._upsert(org_id, records)

    def delete(self, org_id: str, record_ids: Sequence[str]) -> None:
        if record_ids:
            self._ensure_packed(org_id)
            with self._changing(org_id):
                self._delete(org_id, record_ids)

    def reindex(self, org_id: str) -> int:
        """Put every record's keys into the org's packed buckets from its record rows, mark the org (a new
        records version with ``layout`` = 3), then delete its rows of the older layout it was in. Returns
        the records reindexed. Idempotent; a record upserted concurrently keeps the entries that upsert
        writes (its older rows are within its ``index_keys``, which the upsert's own deletes use)."""
        return self._reindex(org_id, self._read_version(org_id)[1])

    def _reindex(self, org_id: str, layout: int) -> int:
        count, stale = 0, []
        if layout != LAYOUT:
            # Never packed: no bucket row yet (one another worker creates meanwhile costs a refused create).
            self._buckets.assume_empty(org_id, range(BUCKETS))
        with self._changing(org_id, layout_on_error=layout):
            batch: list[Mapping[str, Any]] = []
            for entity in self._table.rows(keys.record_partition(org_id)):
                batch.append(entity)
                if len(batch) >= REINDEX_CHUNK:
                    stale += self._reindex_rows(org_id, batch, layout)
                    count, batch = count + len(batch), []
            stale += self._reindex_rows(org_id, batch, layout)
            count += len(batch)
        # Once marked, older rows are never read again: a failure here leaves only unread rows.
        self._table.submit(stale)
        return count

    def _reindex_rows(self, org_id: str, entities: Sequence[Mapping[str, Any]], layout: int) -> list[Write]:
        """Add these records' keys to the buckets; return the deletes of their rows in ``layout``."""
        edits: list[_Edit] = []
        stale: list[Write] = []
        for entity in entities:
            record = _record_from(entity)
            edits += [
                _Edit(key, (record.record_id, record.record_type), add=True) for key in sorted(_index_keys(record))
            ]
            if layout == 1:
                stale += [Write("delete", _old_index_row(org_id, key, record.record_id)) for key in _keys_of(entity)]
            elif layout == 2:
                stale += [Write("delete", _index_row(org_id, key, record.record_id)) for key in _keys_of(entity)]
        self._edit_buckets(org_id, edits)
        return stale

    def _ensure_packed(self, org_id: str) -> None:
        """Reindex an org still in an older layout (an org never goes back: ``layout`` is only ever written
        3, or kept as read by a reindex cut short), remembered per instance."""
        if org_id in self._packed:
            return
        layout = self._read_version(org_id)[1]
        if layout != LAYOUT:
            self._reindex(org_id, layout)
        self._packed.add(org_id)

    def _upsert(self, org_id: str, records: Sequence[Record]) -> None:
        wanted = {record.record_id: stored_record(record) for record in records}
        handed = self._handed.take(org_id, list(wanted))
        created = self._create_new(org_id, [record for rid, record in wanted.items() if rid not in handed])
        pending = [*handed, *created]
        for _ in range(CONFLICT_ATTEMPTS):
            if not pending:
                return
            unknown = [record_id for record_id in pending if record_id not in handed]
            read = dict(zip(unknown, self._read_many(org_id, unknown), strict=True))
            changes: list[_Change] = []
            confirm: list[str] = []
            for record_id in pending:
                entity = handed[record_id] if record_id in handed else read[record_id]
                change = self._change(org_id, wanted[record_id], entity)
                if record_id in handed and (change is None or change.record_write is None):
                    confirm.append(record_id)  # a handed-over row counts only through a write at its ETag
                elif change is not None:
                    changes.append(change)
            handed = {}
            committed = self._table.commit(
                [Plan(change.record_id, (change.record_write,)) for change in changes if change.record_write]
            )
            etags = dict(committed.etags)
            etags.update(
                (change.record_id, change.stored_etag)
                for change in changes
                if change.record_write is None and change.stored_etag is not None
            )
            self._finish(org_id, [change for change in changes if change.record_id in etags], etags)
            pending = [*committed.conflicted, *confirm]
        if pending:
            raise ConcurrencyConflict(f"records {pending} kept changing while being upserted")

    def _create_new(self, org_id: str, records: Sequence[Record]) -> list[str]:
        """Create the records as new ones, without reading first: their record rows go up to 100 to an
        entity group transaction, and a transaction that meets an existing record fails as a whole (nothing
        written), its records returned for the read-then-write path. So loading new records reads nothing,
        and re-upserting existing ones costs one refused transaction per 100 records more."""
        changes = {record.record_id: self._change(org_id, record, None) for record in records}
        by_write = {id(change.record_write): change for change in changes.values() if change is not None}
        batches = pack([[change.record_write] for change in by_write.values() if change.record_write is not None])
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
        self._finish(org_id, done, etags)
        return refused

    def _try_transaction(self, batch: Sequence[Write]) -> list[str] | None:
        try:
            return self._table.transact(batch)
        except (AlreadyExists, ConcurrencyConflict):
            return None

    def _finish(self, org_id: str, done: Sequence[_Change], etags: Mapping[str, str]) -> None:
        """Steps 2 and 3 of an upsert, for records whose row is at ``etags``: the bucket edits, then the
        settled record row (a conflict there means a newer upsert took the record over; its
        ``index_keys`` include ours)."""
        self._edit_buckets(org_id, [edit for change in done for edit in change.edits])
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
            self._edit_buckets(
                org_id,
                [
                    _Edit(key, (record_id, ""), add=False)
                    for record_id, entity in stored
                    for key in sorted(_keys_of(entity))
                ],
            )
            committed = self._table.commit(
                [Plan(record_id, (Write("delete", key_only(entity), etag_of(entity)),)) for record_id, entity in stored]
            )
            pending = committed.conflicted
        if pending:
            raise ConcurrencyConflict(f"records {pending} kept changing while being deleted")

    def _edit_buckets(self, org_id: str, edits: Sequence[_Edit]) -> None:
        """Apply the edits to the org's buckets, each bucket read-modify-write at its ETag (from this
        worker's last write of it, else a point read), written in transactions of the one partition; a
        bucket that changed meanwhile is read again and edited again. A bucket the edits leave as it was
        is not written, once read in this call: a kept copy the edits would leave as it was may be stale
        (another worker added or removed those entries since), so it is read first."""
        by_bucket: dict[int, list[_Edit]] = {}
        for edit in edits:
            by_bucket.setdefault(bucket_of(edit.key), []).append(edit)
        pending = sorted(by_bucket)
        fresh: set[int] = set()
        for _ in range(CONFLICT_ATTEMPTS):
            if not pending:
                return
            known = self._buckets.for_write(org_id, pending)
            unknown = [bucket for bucket in pending if bucket not in known]
            unknown += [
                bucket
                for bucket in pending
                if bucket in known
                and bucket not in fresh
                and _edited(known[bucket][1], by_bucket[bucket]) is known[bucket][1]
            ]
            for bucket, (etag, entries) in self._read_buckets(org_id, unknown).items():
                self._buckets.wrote(org_id, bucket, etag, entries)
                known[bucket] = (etag, entries)
                fresh.add(bucket)
            plans: list[Plan] = []
            edited: dict[str, tuple[int, Entries]] = {}
            for bucket in pending:
                etag, entries = known[bucket]
                after = _edited(entries, by_bucket[bucket])
                if after is entries:
                    continue
                row = _bucket_row(org_id, bucket, after)
                if etag is None:
                    write = Write("create", row)
                elif not after:
                    write = Write("delete", key_only(row), etag)
                else:
                    write = Write("update", row, etag)
                plans.append(Plan(row["RowKey"], (write,)))
                edited[row["RowKey"]] = (bucket, after)
            committed = self._table.commit(plans)
            for row_key, etag in committed.etags.items():
                bucket, after = edited[row_key]
                self._buckets.wrote(org_id, bucket, etag or None, after)
            for row_key in committed.conflicted:
                self._buckets.forget(org_id, edited[row_key][0])
            pending = [edited[row_key][0] for row_key in committed.conflicted]
        if pending:
            raise ConcurrencyConflict(f"{len(pending)} records index buckets kept changing while being written")

    def _read_buckets(self, org_id: str, buckets: Sequence[int]) -> dict[int, tuple[str | None, Entries]]:
        """The ETag (None when it has no row) and entries of these buckets, and maybe others: point reads,
        concurrently, or, for ``WHOLE_READ`` buckets or more, every bucket of the org in one partition
        query (one round trip instead of up to ``BUCKETS``), unless the org was found larger than this
        worker keeps (then only the buckets needed are read, each time)."""
        partition = _packed_partition(org_id)
        if len(buckets) >= WHOLE_READ and not self._buckets.too_large(org_id):
            found: dict[int, tuple[str | None, Entries]] = dict.fromkeys(range(BUCKETS), (None, {}))
            for row in self._table.rows(partition):
                found[int(row["RowKey"], 16)] = (etag_of(row), _entries_of(row))
            self._buckets.measured(org_id, sum(len(entries) for _, entries in found.values()))
            return found
        rows = self._table.get_many([(partition, _bucket_key(bucket)) for bucket in buckets])
        return {
            bucket: (etag_of(row), _entries_of(row)) if row is not None else (None, {})
            for bucket, row in zip(buckets, rows, strict=True)
        }

    def get(self, org_id: str, record_id: str) -> Record | None:
        entity = self._read(org_id, record_id)
        return _record_from(entity) if entity is not None else None

    def get_many(self, org_id: str, record_ids: Sequence[str]) -> Mapping[str, Record]:
        """The records found; their rows are also handed over to this instance's next upsert of them (see
        the module's invariants)."""
        wanted = list(dict.fromkeys(record_ids))
        found = self._read_many(org_id, wanted) if wanted else []
        self._handed.put(org_id, [(rid, entity) for rid, entity in zip(wanted, found, strict=True) if entity])
        return {rid: _record_from(entity) for rid, entity in zip(wanted, found, strict=True) if entity is not None}

    def lookup(self, org_id: str, addresses: Iterable[str], domains: Iterable[str]) -> RecordLookupResult:
        """One point read of the org's version; then, for a small org, its snapshot under that version (one
        partition scan when there is none yet); else the buckets of its keys not read under that version
        yet, one point read each, concurrently; an org not yet reindexed is asked key by key as before."""
        wanted = [("e", a) for a in dict.fromkeys(addresses)] + [("d", d) for d in dict.fromkeys(domains)]
        if not wanted:
            return RecordLookupResult()
        version, layout = self._read_version(org_id)
        snapshot = self._snapshot(org_id, version)
        if snapshot is not None:
            answers: Mapping[IndexKey, Refs] = {key: snapshot.get(key, ()) for key in wanted}
        elif layout == LAYOUT:
            answers = self._packed_answers(org_id, version, wanted)
        else:
            answers = self._older_answers(org_id, version, layout, wanted)
        return RecordLookupResult(
            by_address={value: refs for (kind, value), refs in answers.items() if kind == "e"},
            by_domain={value: refs for (kind, value), refs in answers.items() if kind == "d"},
        )

    def _packed_answers(self, org_id: str, version: str, wanted: Sequence[IndexKey]) -> dict[IndexKey, Refs]:
        needed = sorted({bucket_of(key) for key in wanted})
        kept = self._buckets.for_lookup(org_id, version, needed)
        missing = [bucket for bucket in needed if bucket not in kept]
        for bucket, (etag, entries) in self._read_buckets(org_id, missing).items():
            self._buckets.read(org_id, bucket, version, etag, entries)
            kept[bucket] = entries
        return {key: tuple(RecordRef(*pair) for pair in kept[bucket_of(key)].get(key, ())) for key in wanted}

    def _older_answers(
        self, org_id: str, version: str, layout: int, wanted: Sequence[IndexKey]
    ) -> dict[IndexKey, Refs]:
        cached = self._cache.get_many([(org_id, version, kind, value) for kind, value in wanted])
        answers = {key: refs for key, refs in zip(wanted, cached, strict=True) if refs is not None}
        misses = [key for key in wanted if key not in answers]
        found = self._bucketed_refs(org_id, misses) if layout == 2 else self._old_refs(org_id, misses)
        self._cache.put_many([((org_id, version, *key), refs) for key, refs in zip(misses, found, strict=True)])
        answers.update(zip(misses, found, strict=True))
        return answers

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
        pending = entity is not None and bool(entity.get("index_pending", False))
        stale = old_keys - new_keys
        rewrite_all = old is None or pending or old.record_type != record.record_type
        to_put = new_keys if rewrite_all else new_keys - old_keys
        if not to_put and not stale and old == record:
            return None
        index_work = bool(to_put or stale)
        row = _record_entity(org_id, record, old_keys | new_keys, pending=index_work)
        record_write: Write | None
        if entity is None:
            record_write = Write("create", row)
        elif pending and old == record and old_keys >= new_keys:
            record_write = None  # already marked for exactly this change: steps 2 and 3 only
        else:
            record_write = Write("update", row, etag_of(entity))
        ref = (record.record_id, record.record_type)
        edits = [_Edit(key, ref, add=True) for key in sorted(to_put)]
        edits += [_Edit(key, ref, add=False) for key in sorted(stale)]
        # A new record's index_keys are its own already: it stays pending until its next upsert.
        settled = _record_entity(org_id, record, new_keys, pending=False) if index_work and entity else None
        return _Change(
            record_id=record.record_id,
            record_write=record_write,
            stored_etag=etag_of(entity) if entity is not None else None,
            edits=tuple(edits),
            settled=settled,
        )


def _index_keys(record: Record) -> set[IndexKey]:
    return {("e", address) for address in record.emails} | {("d", domain) for domain in record.domains}


def _keys_of(entity: Mapping[str, Any]) -> set[IndexKey]:
    return {(kind, value) for kind, value in get_json(entity, "index_keys", [])}


def bucket_of(key: IndexKey) -> int:
    """The packed bucket of an address (``("e", address)``) or domain (``("d", domain)``): a stable hash,
    the same in every process and version, so a key is always in one known row."""
    kind, value = key
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def _old_bucket_of(key: IndexKey) -> int:
    """Layout 2's partition of a key (the same hash over ``OLD_BUCKETS``)."""
    kind, value = key
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % OLD_BUCKETS


def _bucket_partition(org_id: str, key: IndexKey) -> str:
    return keys.compose(keys.key_part(org_id), "x", f"{_old_bucket_of(key):02x}")


def _packed_partition(org_id: str) -> str:
    return keys.compose(keys.key_part(org_id), "p")


def _bucket_key(bucket: int) -> str:
    return f"{bucket:03x}"


def _edited(entries: Entries, edits: Sequence[_Edit]) -> Entries:
    """The bucket's entries after the edits, in order (``entries`` itself when nothing changes): an add
    puts the record on the key (replacing its type), a removal takes it off; a key left with no record
    is dropped."""
    changed: dict[IndexKey, tuple[Pair, ...]] = {}
    for edit in edits:
        pairs = changed.get(edit.key, entries.get(edit.key, ()))
        kept = tuple(pair for pair in pairs if pair[0] != edit.ref[0])
        changed[edit.key] = tuple(sorted((*kept, edit.ref))) if edit.add else kept
    changed = {key: refs for key, refs in changed.items() if refs != entries.get(key, ())}
    if not changed:
        return entries
    after = {**entries, **changed}
    return {key: refs for key, refs in after.items() if refs}


def _bucket_row(org_id: str, bucket: int, entries: Entries) -> dict[str, Any]:
    """The bucket's row: its entries as compact JSON ``[[kind, value, [[record_id, type], ...]], ...]``
    (sorted), zlib-compressed, in binary properties ``z_0``… of ``BUCKET_CHUNK_BYTES``."""
    listed = [[kind, value, [list(pair) for pair in pairs]] for (kind, value), pairs in entries.items()]
    packed = zlib.compress(json.dumps(sorted(listed), separators=(",", ":")).encode(), 6)
    if len(packed) > BUCKET_MAX_BYTES:
        raise StorageUnavailable(
            f"a records index bucket would hold {len(entries)} addresses and domains ({len(packed)} bytes), "
            f"more than one row holds ({BUCKET_MAX_BYTES} bytes)"
        )
    chunks = [packed[start : start + BUCKET_CHUNK_BYTES] for start in range(0, len(packed), BUCKET_CHUNK_BYTES)]
    row: dict[str, Any] = {
        "PartitionKey": _packed_partition(org_id),
        "RowKey": _bucket_key(bucket),
        "entries": len(entries),
        "z_parts": len(chunks),
    }
    row.update((f"z_{index}", chunk) for index, chunk in enumerate(chunks))
    return row


def _entries_of(row: Mapping[str, Any]) -> Entries:
    packed = b"".join(bytes(row[f"z_{index}"]) for index in range(int(row.get("z_parts", 0))))
    if not packed:
        return {}
    listed = json.loads(zlib.decompress(packed))
    intern = sys.intern  # a few record types, repeated on every entry
    return {(kind, value): tuple((rid, intern(rtype)) for rid, rtype in pairs) for kind, value, pairs in listed}


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


BucketKey = tuple[str, int]  # (org, bucket)


@dataclasses.dataclass(frozen=True)
class _Kept:
    etag: str | None  # None: the bucket had no row
    entries: Entries
    version: str | None  # the records version read before the bucket was; None after this worker wrote it


class _BucketCache:
    """Buckets by (org, bucket) with their ETag and the records version they were read under: at most
    ``max_entries`` addresses and domains in all (a bucket counts at least 1), least recently used dropped
    first; safe across threads."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._kept: OrderedDict[BucketKey, _Kept] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._too_large: set[str] = set()  # orgs whose buckets hold more entries than the bound

    @property
    def entries(self) -> int:
        return self._size

    def for_lookup(self, org_id: str, version: str, buckets: Sequence[int]) -> dict[int, Entries]:
        with self._lock:
            found: dict[int, Entries] = {}
            for bucket in buckets:
                kept = self._kept.get((org_id, bucket))
                if kept is not None and kept.version == version:
                    self._kept.move_to_end((org_id, bucket))
                    found[bucket] = kept.entries
            return found

    def for_write(self, org_id: str, buckets: Sequence[int]) -> dict[int, tuple[str | None, Entries]]:
        with self._lock:
            found: dict[int, tuple[str | None, Entries]] = {}
            for bucket in buckets:
                kept = self._kept.get((org_id, bucket))
                if kept is not None:
                    self._kept.move_to_end((org_id, bucket))
                    found[bucket] = (kept.etag, kept.entries)
            return found

    def read(self, org_id: str, bucket: int, version: str, etag: str | None, entries: Entries) -> None:
        self._put((org_id, bucket), _Kept(etag, entries, version))

    def wrote(self, org_id: str, bucket: int, etag: str | None, entries: Entries) -> None:
        self._put((org_id, bucket), _Kept(etag, entries, None))

    def too_large(self, org_id: str) -> bool:
        return org_id in self._too_large

    def measured(self, org_id: str, entries: int) -> None:
        """Record the size of an org read whole: one larger than the bound is not read whole again."""
        with self._lock:
            if entries > self._max_entries:
                self._too_large.add(org_id)
            else:
                self._too_large.discard(org_id)

    def assume_empty(self, org_id: str, buckets: Iterable[int]) -> None:
        """Keep these buckets, where not kept, as having no row, for writing (a wrong guess costs a refused
        create and a read)."""
        for bucket in buckets:
            with self._lock:
                known = (org_id, bucket) in self._kept
            if not known:
                self._put((org_id, bucket), _Kept(None, {}, None))

    def forget(self, org_id: str, bucket: int) -> None:
        with self._lock:
            kept = self._kept.pop((org_id, bucket), None)
            if kept is not None:
                self._size -= _weight(kept)

    def _put(self, key: BucketKey, kept: _Kept) -> None:
        if self._max_entries <= 0:
            return
        with self._lock:
            old = self._kept.pop(key, None)
            if old is not None:
                self._size -= _weight(old)
            self._kept[key] = kept
            self._size += _weight(kept)
            while self._size > self._max_entries and len(self._kept) > 1:
                _, dropped = self._kept.popitem(last=False)
                self._size -= _weight(dropped)


def _weight(kept: _Kept) -> int:
    return max(1, len(kept.entries))


class _Handed:
    """Record rows by (org, record id) that ``get_many`` read, offered once to the next upsert: at most
    ``HANDOVER_ENTRIES``, oldest dropped first, each for ``HANDOVER_SECONDS``; safe across threads."""

    def __init__(self) -> None:
        self._rows: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, org_id: str, rows: Sequence[tuple[str, Any]]) -> None:
        now = time.monotonic()
        with self._lock:
            for record_id, entity in rows:
                self._rows.pop((org_id, record_id), None)
                self._rows[(org_id, record_id)] = (now, entity)
            while len(self._rows) > HANDOVER_ENTRIES:
                self._rows.popitem(last=False)

    def take(self, org_id: str, record_ids: Sequence[str]) -> dict[str, Any]:
        now = time.monotonic()
        taken: dict[str, Any] = {}
        with self._lock:
            if not self._rows:
                return taken
            for record_id in record_ids:
                kept = self._rows.pop((org_id, record_id), None)
                if kept is not None and now - kept[0] <= HANDOVER_SECONDS:
                    taken[record_id] = kept[1]
        return taken
