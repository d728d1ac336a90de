"""The SubscriptionStore port over Table storage.

Layout of ``<prefix>subscriptions`` (PartitionKey / RowKey):
- ``<org>`` / ``m|<mailbox>|<folder>``: the subscription (every ``PushSubscription`` field, ``kind=sub``).
  One partition per org: listing an org or a mailbox is one partition query.
- ``id|<subscription id>`` / ``id``: which (org, mailbox, folder) a Graph subscription id belongs to, so
  a notification (which names only the id) is two point reads.
- ``%counters`` / ``unknown|<shard>``: notifications that named no subscription of ours, spread over
  ``UNKNOWN_SHARDS`` rows (plus ``unknown`` itself, where older versions counted them all). (``key_part``
  escapes ``%`` and ``|``, so no org partition can be ``%counters`` or start with ``id|``.)

Invariants:
- ``put`` writes the id row before the record; ``remove`` deletes the record (only while it still holds
  that subscription id) before the id row. A crash in between leaves at worst an id row whose record is
  missing or newer, which ``get`` treats as unknown.
- Counter updates are ETag-conditional read-modify-writes, retried (with jitter) on a concurrent change,
  up to ``COUNT_ATTEMPTS`` times; a count lost past that is logged (counters are diagnostics). A count of
  rejected notifications only (forgeries, anonymous) gets one attempt: a flood of forgeries naming one
  subscription never makes requests wait on its entity; under contention some of them go uncounted.
- The unknown count is anonymous traffic, so it has no hot entity: each update goes to a random shard
  and, on a concurrent change, to another one, at most ``UNKNOWN_ATTEMPTS`` times, without waiting;
  ``unknown_count`` sums the shards (one partition query).
- ``all`` is a filtered scan of the table (the maintenance timer's one read of every subscription).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_client import (
    CONFLICT_ATTEMPTS,
    Table,
    TableMetrics,
    Write,
    etag_of,
    scan_errors,
    table_name,
)
from sync_core.adapters.table_codec import dataclass_entity, dataclass_from_entity, to_utc
from sync_core.errors import AlreadyExists, ConcurrencyConflict
from sync_core.ports.push import PushSubscription

log = logging.getLogger(__name__)

COUNT_ATTEMPTS = 20  # counter updates are read-modify-writes; concurrent notifications retry this often
UNKNOWN_SHARDS = 32
UNKNOWN_ATTEMPTS = 8  # each on another shard, never waiting: loss needs 8 collisions in a row
_ID_ROW = "id"
_COUNTERS = ("%counters", "unknown")
_KIND = "sub"


def unknown_shard_row(shard: int) -> str:
    return keys.compose(_COUNTERS[1], f"{shard:02d}")


def record_row(mailbox_id: str, folder: str) -> str:
    return keys.compose("m", keys.key_part(mailbox_id), keys.key_part(folder))


def id_partition(subscription_id: str) -> str:
    return keys.compose("id", keys.key_part(subscription_id))


class TableSubscriptionStore:
    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        name = table_name(prefix, "subscriptions")
        self._metrics = metrics or TableMetrics()
        self._table = Table(service, name, self._metrics)
        self._client = service.get_table_client(name)

    def get(self, subscription_id: str) -> PushSubscription | None:
        pointer = self._table.get(id_partition(subscription_id), _ID_ROW)
        if pointer is None:
            return None
        entity = self._table.get(
            keys.org_partition(str(pointer["org_id"])), record_row(str(pointer["mailbox_id"]), str(pointer["folder"]))
        )
        if entity is None:
            return None
        found = _subscription(entity)
        return found if found.subscription_id == subscription_id else None

    def for_mailbox(self, org_id: str, mailbox_id: str) -> tuple[PushSubscription, ...]:
        low, high = keys.prefix_bounds(keys.compose("m", keys.key_part(mailbox_id)))
        rows = self._table.rows(keys.org_partition(org_id), at_least=low, below=high)
        return tuple(_subscription(entity) for entity in rows)

    def for_org(self, org_id: str) -> tuple[PushSubscription, ...]:
        low, high = keys.prefix_bounds("m")
        rows = self._table.rows(keys.org_partition(org_id), at_least=low, below=high)
        return tuple(_subscription(entity) for entity in rows)

    def all(self) -> Iterator[PushSubscription]:
        with scan_errors("scan subscriptions"):
            try:
                entities = iter(
                    self._client.query_entities(
                        "kind eq @kind", parameters={"kind": _KIND}, raw_response_hook=self._metrics.count
                    )
                )
                while True:
                    entity = next(entities, None)
                    if entity is None:
                        return
                    yield _subscription(entity)
            except ResourceNotFoundError:  # no subscription was ever stored
                return

    def put(self, subscription: PushSubscription) -> None:
        pointer = {
            "PartitionKey": id_partition(subscription.subscription_id),
            "RowKey": _ID_ROW,
            "org_id": subscription.org_id,
            "mailbox_id": subscription.mailbox_id,
            "folder": subscription.folder,
        }
        self._table.write(Write("upsert", pointer))
        self._table.write(Write("upsert", _entity(subscription)))

    def remove(self, subscription: PushSubscription) -> None:
        partition = keys.org_partition(subscription.org_id)
        row = record_row(subscription.mailbox_id, subscription.folder)
        for _ in range(CONFLICT_ATTEMPTS):
            entity = self._table.get(partition, row)
            if entity is None or entity.get("subscription_id") != subscription.subscription_id:
                break
            try:
                self._table.write(Write("delete", {"PartitionKey": partition, "RowKey": row}, etag_of(entity)))
                break
            except ConcurrencyConflict:
                continue
        pointer = {"PartitionKey": id_partition(subscription.subscription_id), "RowKey": _ID_ROW}
        self._table.write(Write("delete", pointer))

    def count(self, subscription_id: str, *, accepted: int, rejected: int, at: datetime, lifecycle: str = "") -> None:
        pointer = self._table.get(id_partition(subscription_id), _ID_ROW)
        if pointer is None:
            return
        partition = keys.org_partition(str(pointer["org_id"]))
        row = record_row(str(pointer["mailbox_id"]), str(pointer["folder"]))
        genuine = bool(accepted or lifecycle)
        for _ in range(COUNT_ATTEMPTS if genuine else 1):
            entity = self._table.get(partition, row)
            if entity is None or entity.get("subscription_id") != subscription_id:
                return
            current = _subscription(entity)
            updated = replace(
                current,
                notifications=current.notifications + accepted,
                rejected=current.rejected + rejected,
                last_notification_at=to_utc(at) if accepted else current.last_notification_at,
                last_lifecycle_event=lifecycle or current.last_lifecycle_event,
            )
            try:
                self._table.write(Write("update", _entity(updated), etag_of(entity)))
                return
            except ConcurrencyConflict:
                if genuine:
                    time.sleep(random.uniform(0, 0.02))  # concurrent notifications of one subscription: spread out
        if genuine:
            log.warning("subscriptions: a count of %s was lost to contention", subscription_id)

    def count_unknown(self, notifications: int) -> None:
        partition = _COUNTERS[0]
        for shard in random.sample(range(UNKNOWN_SHARDS), UNKNOWN_ATTEMPTS):
            row = unknown_shard_row(shard)
            entity = self._table.get(partition, row)
            total = int(entity.get("count", 0)) + notifications if entity is not None else notifications
            body: dict[str, Any] = {"PartitionKey": partition, "RowKey": row, "count": total}
            try:
                if entity is None:
                    self._table.write(Write("create", body))
                else:
                    self._table.write(Write("update", body, etag_of(entity)))
                return
            except (AlreadyExists, ConcurrencyConflict):
                continue  # another request holds this shard: take another, never wait
        log.warning("subscriptions: a count of %d unknown notifications was lost to contention", notifications)

    def unknown_count(self) -> int:
        partition, legacy = _COUNTERS
        low, high = keys.prefix_bounds(legacy)
        rows = [self._table.get(partition, legacy), *self._table.rows(partition, at_least=low, below=high)]
        return sum(int(entity.get("count", 0)) for entity in rows if entity is not None)


def _entity(subscription: PushSubscription) -> dict[str, Any]:
    entity = dataclass_entity(
        subscription,
        keys.org_partition(subscription.org_id),
        record_row(subscription.mailbox_id, subscription.folder),
    )
    entity["kind"] = _KIND
    return entity


def _subscription(entity: Any) -> PushSubscription:
    return dataclass_from_entity(PushSubscription, entity)
