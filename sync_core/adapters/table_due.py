"""The scheduler's due index and mailbox catalog over Table storage.

Layout of ``<prefix>due`` (PartitionKey / RowKey), sharded over ``SHARDS`` partitions ``s0``..``s7`` by a
hash of (org, mailbox):
- ``s<n>`` / ``m|<org>|<mailbox>``: the mailbox's entry (``DueEntry``: due time, queued time, pending
  backfill). Its ETag is the entry's version.
- ``s<n>`` / ``d|<due time>|<org>|<mailbox>``: the index row that makes the entry findable by time. The
  time part is ``table_keys.sortable_time``, so RowKey order is due order and "due by now" is one range
  query per shard: ``RowKey < d|<now + 1 µs>``. Nothing else is read, however many mailboxes exist.
- ``sweep`` / ``position``: where the reconciliation sweep over the mailboxes table continues.

Invariants:
- An entry and its index row live in the same partition and change together in one entity group
  transaction whose last operation is conditional on the entry's ETag (or its absence): the index never
  points at an entry that says otherwise, and a stale writer changes nothing.
- Were an index row ever missing (a broken invariant), the next write of that entry heals it instead of
  failing forever.

``TableMailboxCatalog`` reads the mailboxes table (layout in ``table_state``) page by page with the
service's continuation tokens; it selects only the key and status properties.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableEntity, TableServiceClient

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_client import Table, TableMetrics, Write, etag_of, key_only, scan_errors, table_name
from sync_core.adapters.table_codec import from_stored_datetime, to_utc
from sync_core.domain.model import MailboxStatus
from sync_core.errors import AlreadyExists, ConcurrencyConflict
from sync_core.ports import Versioned
from sync_core.scheduling_ports import DueEntry, MailboxSummary

SHARDS = 8
_ENTRY = "m"
_INDEX = "d"
_SWEEP_PARTITION, _SWEEP_ROW = "sweep", "position"
_ONE_TICK = timedelta(microseconds=1)


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
        return _versioned(entity) if entity is not None else None

    def put(self, entry: DueEntry, expected: Versioned[DueEntry] | None) -> Versioned[DueEntry] | None:
        partition = shard(entry.org_id, entry.mailbox_id)
        new_index = _index_entity(partition, entry)
        if expected is None:
            operations = [Write("upsert", new_index), Write("create", _entry_entity(partition, entry))]
        else:
            final = Write("update", _entry_entity(partition, entry), expected.etag)
            old = expected.value
            if to_utc(old.due_at) == to_utc(entry.due_at):
                operations = [final]
            else:
                old_index = Write("delete", key_only(_index_entity(partition, old)))
                operations = [old_index, Write("upsert", new_index), final]
        etag = self._transact(operations, expected)
        if etag is None:
            return None
        return Versioned(_stored(entry), etag)

    def remove(self, expected: Versioned[DueEntry]) -> bool:
        entry = expected.value
        partition = shard(entry.org_id, entry.mailbox_id)
        operations = [
            Write("delete", key_only(_index_entity(partition, entry))),
            Write("delete", key_only(_entry_entity(partition, entry)), expected.etag),
        ]
        return self._transact(operations, expected) is not None

    def due(self, now: datetime, limit: int) -> tuple[tuple[str, str], ...]:
        if limit < 1:
            return ()
        low, high = keys.compose(_INDEX, ""), due_bound(now)

        def shard_rows(partition: str) -> list[TableEntity]:
            rows = self._table.rows(
                partition, at_least=low, below=high, select=["RowKey", "org_id", "mailbox_id"], page_size=limit
            )
            found = []
            for row in rows:
                found.append(row)
                if len(found) >= limit:
                    break
            return found

        calls = [functools.partial(shard_rows, f"s{n}") for n in range(SHARDS)]
        merged = sorted((row for rows in self._table.in_parallel(calls) for row in rows), key=lambda r: r["RowKey"])
        return tuple((str(row["org_id"]), str(row["mailbox_id"])) for row in merged[:limit])

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
                return self._table.transact(operations)[-1] if len(operations) > 1 else self._table.write(operations[0])
            except (ConcurrencyConflict, AlreadyExists):
                if expected is None or attempt:
                    return None
                current = self.get(expected.value.org_id, expected.value.mailbox_id)
                if current is None or current.etag != expected.etag:
                    return None
                # The entry is as expected, so the old index row was what failed: it is missing. Heal.
                operations = [op for op in operations if not (op.action == "delete" and op.etag is None)]
        return None


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
    return entity


def _index_entity(partition: str, entry: DueEntry) -> dict[str, Any]:
    return {
        "PartitionKey": partition,
        "RowKey": index_row(entry.org_id, entry.mailbox_id, entry.due_at),
        "org_id": entry.org_id,
        "mailbox_id": entry.mailbox_id,
    }


def _versioned(entity: TableEntity) -> Versioned[DueEntry]:
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
    )
    return Versioned(entry, etag_of(entity))


def _stored(entry: DueEntry) -> DueEntry:
    """The entry as ``get`` will return it (aware UTC datetimes)."""
    return DueEntry(
        org_id=entry.org_id,
        mailbox_id=entry.mailbox_id,
        due_at=to_utc(entry.due_at),
        queued_at=to_utc(entry.queued_at) if entry.queued_at is not None else None,
        backfill_since=to_utc(entry.backfill_since) if entry.backfill_since is not None else None,
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
