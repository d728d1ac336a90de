"""The scheduler's due index and mailbox catalog over Table storage.

Layout of ``<prefix>due`` (PartitionKey / RowKey), sharded over ``SHARDS`` partitions ``s0``..``s7`` by a
hash of (org, mailbox):
- ``s<n>`` / ``m|<org>|<mailbox>``: the mailbox's entry (``DueEntry``: due time, queued time, pending
  backfill).
- ``s<n>`` / ``d|<due time>|<org>|<mailbox>``: the index row that makes the entry findable by time, with a
  copy of the entry's fields. The time part is ``table_keys.sortable_time``, so RowKey order is due order
  and "due by now" is one range query per shard: ``RowKey < d|<now + 1 µs>``. Nothing else is read,
  however many mailboxes exist (an index row written before it held the copy costs one point read).
- ``sweep`` / ``position``: where the reconciliation sweep over the mailboxes table continues.

Invariants:
- An entry and its index row live in the same partition and every write of the entry rewrites (or
  deletes) its index row in the same entity group transaction: the index never points at an entry that
  says otherwise, and the index row's ETag changes whenever the entry does.
- A version is ``e:<the entry's ETag>`` (``get``, writes) or ``i:<the index row's ETag>`` (``due``); a
  write is conditional on the row its version names, so either way a stale writer changes nothing.
- ``put_many`` writes up to ``CLAIMS_PER_TRANSACTION`` entries of one shard per transaction: all of them,
  or (one was stale) none. A transaction that failed otherwise is reported as not written, not raised,
  so the other transactions' results still reach the caller (who re-reads the unreported entries).
- Were an index row ever missing (a broken invariant), the next write of that entry heals it instead of
  failing forever.

``TableMailboxCatalog`` reads the mailboxes table (layout in ``table_state``) page by page with the
service's continuation tokens; it selects only the key and status properties.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableEntity, TableServiceClient

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_client import (
    MAX_BATCH_OPERATIONS,
    Table,
    TableMetrics,
    Write,
    etag_of,
    key_only,
    scan_errors,
    table_name,
)
from sync_core.adapters.table_codec import from_stored_datetime, to_utc
from sync_core.domain.model import MailboxStatus
from sync_core.errors import AlreadyExists, ConcurrencyConflict, StorageUnavailable
from sync_core.ports import Versioned
from sync_core.ports.scheduling import DueEntry, MailboxSummary

log = logging.getLogger(__name__)

SHARDS = 8
_ENTRY = "m"
_INDEX = "d"
_SWEEP_PARTITION, _SWEEP_ROW = "sweep", "position"
_ONE_TICK = timedelta(microseconds=1)
_ENTRY_VERSION, _INDEX_VERSION = "e:", "i:"
_FIELDS = ("org_id", "mailbox_id", "due_at", "queued_at", "backfill_since", "run_id", "run_outcome")
CLAIMS_PER_TRANSACTION = MAX_BATCH_OPERATIONS // 3  # a claim: delete the old index row, write the new, the entry


def shard(org_id: str, mailbox_id: str) -> str:
    digest = hashlib.sha256(f"{org_id}\n{mailbox_id}".encode("utf-8", "surrogatepass")).digest()
    return f"s{int.from_bytes(digest[:4], 'big') % SHARDS}"


def entry_row(org_id: str, mailbox_id: str) -> str:
    return keys.compose(_ENTRY, keys.key_part(org_id), keys.key_part(mailbox_id))


def index_row(org_id: str, mailbox_id: str, due_at: datetime) -> str:
    """The index row's key; also the order ``due`` lists entries in (shared with the in-memory double)."""
    return keys.compose(_INDEX, keys.sortable_time(to_utc(due_at)), keys.key_part(org_id), keys.key_part(mailbox_id))


def due_bound(now: datetime) -> str:
    """Every index row below this key is due at or before ``now``."""
    return keys.compose(_INDEX, keys.sortable_time(to_utc(now) + _ONE_TICK))


class TableDueIndex:
    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        self._table = Table(service, table_name(prefix, "due"), metrics or TableMetrics())

    def get(self, org_id: str, mailbox_id: str) -> Versioned[DueEntry] | None:
        entity = self._table.get(shard(org_id, mailbox_id), entry_row(org_id, mailbox_id))
        return _versioned(entity, _ENTRY_VERSION) if entity is not None else None

    def put(self, entry: DueEntry, expected: Versioned[DueEntry] | None) -> Versioned[DueEntry] | None:
        etag = self._transact(_plan(entry, expected), expected)
        return Versioned(_stored(entry), _ENTRY_VERSION + etag) if etag is not None else None

    def put_many(
        self, changes: Sequence[tuple[DueEntry, Versioned[DueEntry]]]
    ) -> tuple[Versioned[DueEntry] | None, ...]:
        if len({(entry.org_id, entry.mailbox_id) for entry, _ in changes}) != len(changes):
            raise ValueError("put_many takes each mailbox at most once")
        by_shard: dict[str, list[int]] = {}
        for position, (entry, _) in enumerate(changes):
            by_shard.setdefault(shard(entry.org_id, entry.mailbox_id), []).append(position)
        batches = [
            positions[start : start + CLAIMS_PER_TRANSACTION]
            for positions in by_shard.values()
            for start in range(0, len(positions), CLAIMS_PER_TRANSACTION)
        ]
        results: list[Versioned[DueEntry] | None] = [None] * len(changes)

        def write(batch: list[int]) -> None:
            plans = [_plan(*changes[position]) for position in batch]
            try:
                etags = self._table.transact([operation for plan in plans for operation in plan])
            except (ConcurrencyConflict, AlreadyExists):
                return  # one of them changed meanwhile: none was written
            except StorageUnavailable:
                log.warning("due index: a bulk write of %d entries failed; they are left to be re-read", len(batch))
                return  # perhaps written, perhaps not: the caller re-reads them
            end = 0
            for position, plan in zip(batch, plans, strict=True):
                end += len(plan)
                results[position] = Versioned(_stored(changes[position][0]), _ENTRY_VERSION + etags[end - 1])

        self._table.in_parallel([functools.partial(write, batch) for batch in batches])
        return tuple(results)

    def remove(self, expected: Versioned[DueEntry]) -> bool:
        entry = expected.value
        partition = shard(entry.org_id, entry.mailbox_id)
        kind, etag = _parse_version(expected.etag)
        on_index = etag if kind == _INDEX_VERSION else None
        on_entry = etag if kind == _ENTRY_VERSION else None
        operations = [
            Write("delete", key_only(_index_entity(partition, entry)), on_index),
            Write("delete", key_only(_entry_entity(partition, entry)), on_entry),
        ]
        return self._transact(operations, expected) is not None

    def due(self, now: datetime, limit: int) -> tuple[Versioned[DueEntry], ...]:
        if limit < 1:
            return ()
        low, high = keys.compose(_INDEX, ""), due_bound(now)

        def shard_rows(partition: str) -> list[TableEntity]:
            rows = self._table.rows(partition, at_least=low, below=high, select=["RowKey", *_FIELDS], page_size=limit)
            found = []
            for row in rows:
                found.append(row)
                if len(found) >= limit:
                    break
            return found

        calls = [functools.partial(shard_rows, f"s{n}") for n in range(SHARDS)]
        merged = sorted((row for rows in self._table.in_parallel(calls) for row in rows), key=lambda r: r["RowKey"])
        rows = merged[:limit]
        # Index rows written before they held a copy of the entry: read those entries themselves.
        bare = [row for row in rows if row.get("due_at") is None]
        stored = dict(zip(map(id, bare), self._table.get_many([_entry_key(row) for row in bare]), strict=True))
        found: list[Versioned[DueEntry]] = []
        for row in rows:
            if id(row) not in stored:
                found.append(_versioned(row, _INDEX_VERSION))
                continue
            entity = stored[id(row)]
            entry = _versioned(entity, _ENTRY_VERSION) if entity is not None else None
            if entry is not None and entry.value.due_at <= to_utc(now):  # else it moved meanwhile
                found.append(entry)
        return tuple(found)

    def missing(self, keys_: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        found = self._table.get_many(
            [(shard(org, mailbox), entry_row(org, mailbox)) for org, mailbox in keys_], select=["RowKey"]
        )
        return tuple(key for key, entity in zip(keys_, found, strict=True) if entity is None)

    def sweep_position(self) -> str | None:
        entity = self._table.get(_SWEEP_PARTITION, _SWEEP_ROW)
        return str(entity["position"]) if entity is not None and entity.get("position") else None

    def set_sweep_position(self, position: str | None) -> None:
        entity = {"PartitionKey": _SWEEP_PARTITION, "RowKey": _SWEEP_ROW, "position": position or ""}
        self._table.write(Write("upsert", entity))

    def _transact(self, operations: list[Write], expected: Versioned[DueEntry] | None) -> str | None:
        """Returns the entry's new ETag ("" after a delete), or None when the entry changed meanwhile."""
        for attempt in range(2):
            try:
                return self._table.transact(operations)[-1]
            except (ConcurrencyConflict, AlreadyExists):
                if expected is None or attempt or _parse_version(expected.etag)[0] != _ENTRY_VERSION:
                    return None  # a version of the index row: that row was there, so the entry changed
                current = self.get(expected.value.org_id, expected.value.mailbox_id)
                if current is None or current.etag != expected.etag:
                    return None
                # The entry is as expected, so the old index row was what failed: it is missing. Heal.
                operations = [op for op in operations if not (op.action == "delete" and op.etag is None)]
        return None


def _plan(entry: DueEntry, expected: Versioned[DueEntry] | None) -> list[Write]:
    """The writes taking the entry from ``expected`` to ``entry`` in one transaction, conditional on the
    row the version names; the entry's own write comes last."""
    partition = shard(entry.org_id, entry.mailbox_id)
    new_index, new_entry = _index_entity(partition, entry), _entry_entity(partition, entry)
    if expected is None:
        return [Write("upsert", new_index), Write("create", new_entry)]
    kind, etag = _parse_version(expected.etag)
    old_index = key_only(_index_entity(partition, expected.value))
    moved = old_index["RowKey"] != new_index["RowKey"]
    if kind == _ENTRY_VERSION:
        unlink = [Write("delete", old_index)] if moved else []
        return [*unlink, Write("upsert", new_index), Write("update", new_entry, etag)]
    if moved:
        return [Write("delete", old_index, etag), Write("upsert", new_index), Write("update", new_entry)]
    return [Write("update", new_index, etag), Write("update", new_entry)]


def _parse_version(version: str) -> tuple[str, str]:
    kind, etag = version[:2], version[2:]
    if kind not in (_ENTRY_VERSION, _INDEX_VERSION):
        raise ValueError("not a version of this due index")
    return kind, etag


def _entry_key(row: TableEntity) -> tuple[str, str]:
    org_id, mailbox_id = str(row["org_id"]), str(row["mailbox_id"])
    return shard(org_id, mailbox_id), entry_row(org_id, mailbox_id)


def _entry_entity(partition: str, entry: DueEntry) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": partition,
        "RowKey": entry_row(entry.org_id, entry.mailbox_id),
        "org_id": entry.org_id,
        "mailbox_id": entry.mailbox_id,
        "due_at": to_utc(entry.due_at),
    }
    if entry.queued_at is not None:
        entity["queued_at"] = to_utc(entry.queued_at)
    if entry.backfill_since is not None:
        entity["backfill_since"] = to_utc(entry.backfill_since)
    if entry.run_id:
        entity["run_id"] = entry.run_id
    if entry.run_outcome:
        entity["run_outcome"] = entry.run_outcome
    return entity


def _index_entity(partition: str, entry: DueEntry) -> dict[str, Any]:
    return {**_entry_entity(partition, entry), "RowKey": index_row(entry.org_id, entry.mailbox_id, entry.due_at)}


def _versioned(entity: TableEntity, kind: str) -> Versioned[DueEntry]:
    def moment(name: str) -> datetime | None:
        value = entity.get(name)
        return from_stored_datetime(value) if value is not None else None

    due_at = moment("due_at")
    assert due_at is not None
    entry = DueEntry(
        org_id=str(entity["org_id"]),
        mailbox_id=str(entity["mailbox_id"]),
        due_at=due_at,
        queued_at=moment("queued_at"),
        backfill_since=moment("backfill_since"),
        run_id=str(entity.get("run_id") or ""),
        run_outcome=str(entity.get("run_outcome") or ""),
    )
    return Versioned(entry, kind + etag_of(entity))


def _stored(entry: DueEntry) -> DueEntry:
    """The entry as ``get`` will return it (aware UTC datetimes)."""
    return DueEntry(
        org_id=entry.org_id,
        mailbox_id=entry.mailbox_id,
        due_at=to_utc(entry.due_at),
        queued_at=to_utc(entry.queued_at) if entry.queued_at is not None else None,
        backfill_since=to_utc(entry.backfill_since) if entry.backfill_since is not None else None,
        run_id=entry.run_id,
        run_outcome=entry.run_outcome,
    )


class TableMailboxCatalog:
    """Every mailbox of the ``<prefix>mailboxes`` table, a page at a time (cross-partition listing)."""

    _SELECT = ("PartitionKey", "RowKey", "org_id", "mailbox_id", "status", "enabled")

    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        self._client = service.get_table_client(table_name(prefix, "mailboxes"))
        self._metrics = metrics or TableMetrics()

    def page(self, position: str | None, limit: int) -> tuple[tuple[MailboxSummary, ...], str | None]:
        token = _parse_position(position)
        with scan_errors("list mailboxes"):
            try:
                pages = self._client.list_entities(
                    select=list(self._SELECT), results_per_page=limit, raw_response_hook=self._metrics.count
                ).by_page(continuation_token=token)  # type: ignore[arg-type]  # the SDK takes its own dict
                entities = list(next(pages, []))
            except ResourceNotFoundError:  # no mailbox was ever stored
                return (), None
        summaries = tuple(_summary(entity) for entity in entities[:limit])
        next_token = getattr(pages, "continuation_token", None)
        return summaries, json.dumps(next_token, sort_keys=True) if next_token else None


def _parse_position(position: str | None) -> dict[str, str] | None:
    if not position:
        return None
    try:
        token = json.loads(position)
    except ValueError as exc:
        raise ValueError("not a mailbox catalog position") from exc
    if not isinstance(token, dict) or not all(isinstance(v, str | None) for v in token.values()):
        raise ValueError("not a mailbox catalog position")
    return token


def _summary(entity: TableEntity) -> MailboxSummary:
    try:
        status = MailboxStatus(str(entity.get("status", MailboxStatus.ACTIVE.value)))
    except ValueError:
        status = MailboxStatus.ERROR
    return MailboxSummary(
        org_id=str(entity.get("org_id", "")),
        mailbox_id=str(entity.get("mailbox_id", "")),
        status=status,
        enabled=bool(entity.get("enabled", True)),
    )
