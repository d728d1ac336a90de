"""The activity store over Table storage (table ``<prefix>activities``).

Layout: one partition per org (``<org>``) holds each activity and its index rows, so one entity group
transaction writes an activity together with its index rows:
- ``a|<activity>``: the activity (``table_codec.activity_entity``);
- ``t|<record>|<inverted received>|<activity>``: a record's timeline, newest first;
- ``h|<thread>|<received>|<activity>``: a thread, oldest first;
- ``m|<mailbox>|<activity>``: what a mailbox saw (for purges);
- ``o|<activity>|<event>``: the outbox, an activity's creation not yet announced (``activity_id``,
  ``event_id``, ``occurred_at``), written only by ``save(..., announce_at=...)``.
Index rows hold only ``activity_id``; reads resolve them with a point read of the activity.

Invariants:
- An activity's index rows are written before (or with) its row, and deleted before (or with) it. A row
  is visible through an index only if the activity exists and still lists that record/thread/mailbox,
  so a save or delete interrupted at any point shows nothing half-done, and re-running it converges on
  the state of one clean run.
- An existing activity keeps its content; a save only adds mailbox ids and record links, with an
  ETag-conditional replace (a conflict re-reads and re-plans). A save that adds nothing writes nothing.
- A save first writes every activity as new, without reading: each activity's create (its index rows,
  then its row) whole in one transaction, several activities per transaction (≤100 operations,
  ≤3.5 MB), up to ``PARALLEL_REQUESTS`` transactions at a time (each holds whole creates, so they are
  independent: any of them may land or not, as when one after the other is interrupted). A transaction
  refused because one of its rows exists
  writes nothing; its activities, and any whose create exceeds one transaction (never split unread:
  its index rows would outlive a refused create), then take the read-and-merge path: a point read
  each, then their writes packed the same way.
- An outbox row is written in the same transaction as its activity's create (``Plan.final``: the two
  are never split, not even when a create's index rows span transactions): it exists exactly when
  that create succeeded, so a crash after a save and before its announcement leaves the row behind
  and nobody else's save ever writes or overwrites it. It counts as one more operation of the create
  (six for an activity on two records: sixteen to a transaction instead of twenty).
- Transactions of a save: ten new activities on two records each cost 1; a hundred cost 5. Ten already
  stored cost 1 (refused) + 10 reads (+ 1 if anything changed). A timeline page costs one query and one
  point read per activity shown.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
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
    pack,
    table_name,
)
from sync_core.adapters.table_codec import (
    activity_entity,
    activity_from_entity,
    decode_cursor,
    encode_cursor,
    fit_activity,
    from_stored_datetime,
    group_by_org,
    merge_activity,
    new_events,
    to_utc,
)
from sync_core.domain.model import Activity, RecordRef, activity_id_for
from sync_core.errors import AlreadyExists, ConcurrencyConflict
from sync_core.ports import ActivityEvent, ActivityWrite, Page


@dataclasses.dataclass(frozen=True)
class _Planned:
    plan: Plan | None  # None: nothing to write
    outcome: str  # save: created, merged, unchanged; delete: deleted, missing; purge: deleted, kept


class TableActivityStore:
    def __init__(
        self,
        service: TableServiceClient,
        prefix: str = "",
        metrics: TableMetrics | None = None,
        after_write: Callable[[], None] | None = None,
    ) -> None:
        self._table = Table(service, table_name(prefix, "activities"), metrics or TableMetrics(), after_write)

    def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
        outcomes: dict[str, str] = {}
        events = new_events(activities, announce_at)
        with self._table.metrics.measure() as cost:
            for of_org in group_by_org(activities).values():
                outcomes.update(self._save_org(of_org, events))
        order = list(dict.fromkeys(activity.activity_id for activity in activities))
        created = tuple(key for key in order if outcomes[key] == "created")
        return ActivityWrite(
            created=created,
            merged=tuple(key for key in order if outcomes[key] == "merged"),
            unchanged=tuple(key for key in order if outcomes[key] == "unchanged"),
            transactions=cost.transactions,
            events=tuple(events[key] for key in created if key in events),
        )

    def pending_events(self, org_id: str, written_before: datetime, limit: int) -> tuple[ActivityEvent, ...]:
        low, high = keys.prefix_bounds(keys.OUTBOX_PREFIX)
        rows = self._table.rows(keys.activity_partition(org_id), at_least=low, below=high, page_size=max(limit, 1))
        before = to_utc(written_before)
        found = (_event_from_entity(org_id, row) for row in rows)
        return tuple(itertools.islice((event for event in found if event.occurred_at < before), max(limit, 0)))

    def clear_events(self, org_id: str, events: Sequence[ActivityEvent]) -> None:
        partition = keys.activity_partition(org_id)
        rows = [{"PartitionKey": partition, "RowKey": keys.outbox_row(e.activity_id, e.event_id)} for e in events]
        self._table.submit([Write("delete", row) for row in rows])

    def get(self, org_id: str, activity_id: str) -> Activity | None:
        entity = self._read(org_id, activity_id)
        return activity_from_entity(entity) if entity is not None else None

    def delete(self, org_id: str, activity_id: str) -> bool:
        def plan(key: str) -> _Planned:
            entity = self._read(org_id, key)
            if entity is None:
                return _Planned(None, "missing")
            return _Planned(Plan(key, (*_index_deletes(activity_from_entity(entity)), _main_delete(entity))), "deleted")

        return self._run([activity_id], plan)[activity_id] == "deleted"

    def timeline(self, org_id: str, record_id: str, cursor: str | None, limit: int) -> Page[Activity]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        low, high = keys.prefix_bounds(keys.timeline_prefix(record_id))
        after = low + decode_cursor(cursor) if cursor else None
        rows = self._table.rows(
            keys.activity_partition(org_id),
            at_least=low,
            after=after,
            below=high,
            select=["RowKey", "activity_id"],
            page_size=limit + 1,
        )
        items: list[Activity] = []
        last_row = ""
        fetched: list[Any] = []
        while len(items) < limit:
            fetched = fetched or list(itertools.islice(rows, limit + 1))
            if not fetched:
                return Page(tuple(items), None)
            needed, fetched = fetched[: limit - len(items)], fetched[limit - len(items) :]
            resolved = self._get_many(org_id, [row["activity_id"] for row in needed])
            for row, activity in zip(needed, resolved, strict=True):
                if activity is not None and any(ref.record_id == record_id for ref in activity.records):
                    items.append(activity)
                    last_row = row["RowKey"]
        more = bool(fetched) or next(rows, None) is not None
        return Page(tuple(items), encode_cursor(last_row[len(low) :]) if more else None)

    def thread_ids_for_messages(self, org_id: str, internet_message_ids: Sequence[str]) -> Mapping[str, str]:
        message_ids = list(dict.fromkeys(internet_message_ids))
        partition = keys.activity_partition(org_id)
        rows = [(partition, keys.activity_row(activity_id_for(org_id, message_id))) for message_id in message_ids]
        entities = self._table.get_many(rows, select=["thread_id"])
        return {
            message_id: entity["thread_id"]
            for message_id, entity in zip(message_ids, entities, strict=True)
            if entity is not None
        }

    def thread(self, org_id: str, thread_id: str) -> tuple[Activity, ...]:
        low, high = keys.prefix_bounds(keys.thread_prefix(thread_id))
        rows = self._table.rows(keys.activity_partition(org_id), at_least=low, below=high, select=["activity_id"])
        members = self._get_many(org_id, [row["activity_id"] for row in rows])
        return tuple(activity for activity in members if activity is not None and activity.thread_id == thread_id)

    def delete_for_mailbox(self, org_id: str, mailbox_id: str) -> int:
        """Returns how many activities were deleted. The mailbox's own index rows go last, so an
        interrupted purge is found again and finished by the next one."""
        low, high = keys.prefix_bounds(keys.mailbox_prefix(mailbox_id))
        rows = self._table.rows(
            keys.activity_partition(org_id), at_least=low, below=high, select=["PartitionKey", "RowKey", "activity_id"]
        )
        own_rows = {row["activity_id"]: key_only(row) for row in rows}

        def plan(key: str) -> _Planned:
            entity = self._read(org_id, key)
            stored = activity_from_entity(entity) if entity is not None else None
            if stored is None or mailbox_id not in stored.mailbox_ids:
                return _Planned(None, "kept")
            if stored.mailbox_ids == (mailbox_id,):
                others = [write for write in _index_deletes(stored) if write.entity != own_rows[key]]
                return _Planned(Plan(key, (*others, _main_delete(entity))), "deleted")
            remaining = dataclasses.replace(stored, mailbox_ids=tuple(m for m in stored.mailbox_ids if m != mailbox_id))
            return _Planned(Plan(key, (_main_update(remaining, entity),)), "kept")

        outcomes = self._run(list(own_rows), plan)
        self._table.submit([Write("delete", row) for row in own_rows.values()])
        return sum(1 for outcome in outcomes.values() if outcome == "deleted")

    # --- internals ---

    def _save_org(self, incoming: Mapping[str, Activity], events: Mapping[str, ActivityEvent]) -> dict[str, str]:
        whole: list[Plan] = []
        to_read: list[str] = []
        for plan in (_create_plan(activity, events.get(key)) for key, activity in incoming.items()):
            if len(pack([plan.writes])) == 1:
                whole.append(plan)
            else:
                to_read.append(plan.key)
        refused = self._table.in_parallel([partial(self._create_all, batch) for batch in _packed(whole)])
        to_read += [key for keys in refused for key in keys]
        outcomes = dict.fromkeys((plan.key for plan in whole), "created")
        outcomes.update(self._run(to_read, lambda key: self._plan_save(incoming[key], events.get(key))))
        return outcomes

    def _create_all(self, plans: Sequence[Plan]) -> list[str]:
        """Create the activities of ``plans`` in one transaction; returns their keys if one already exists
        (then nothing was written), else none."""
        try:
            self._table.transact([write for plan in plans for write in plan.writes])
        except AlreadyExists:
            return [plan.key for plan in plans]
        return []

    def _plan_save(self, incoming: Activity, event: ActivityEvent | None) -> _Planned:
        entity = self._read(incoming.org_id, incoming.activity_id)
        if entity is None:
            return _Planned(_create_plan(incoming, event), "created")
        stored = activity_from_entity(entity)
        merged = merge_activity(stored, incoming)
        if merged == stored:
            return _Planned(None, "unchanged")
        added_records = merged.records[len(stored.records) :]
        added_mailboxes = merged.mailbox_ids[len(stored.mailbox_ids) :]
        writes = _index_upserts(stored, added_records, added_mailboxes, with_thread=False)
        return _Planned(Plan(stored.activity_id, (*writes, _main_update(merged, entity))), "merged")

    def _run(self, keys_: list[str], plan: Callable[[str], _Planned]) -> dict[str, str]:
        """Plan and commit each key; re-read and re-plan the ones that met a concurrent change."""
        outcomes: dict[str, str] = {}
        pending = keys_
        for _ in range(CONFLICT_ATTEMPTS):
            planned = dict(zip(pending, self._table.in_parallel([partial(plan, key) for key in pending]), strict=True))
            to_write = [item.plan for item in planned.values() if item.plan is not None]
            committed = self._table.commit(to_write)
            for key, item in planned.items():
                if item.plan is None or key in committed.etags:
                    outcomes[key] = item.outcome
            pending = committed.conflicted
            if not pending:
                return outcomes
        raise ConcurrencyConflict(f"activities {pending} kept changing while being written")

    def _read(self, org_id: str, activity_id: str, select: Sequence[str] | None = None) -> Any:
        return self._table.get(keys.activity_partition(org_id), keys.activity_row(activity_id), select=select)

    def _get_many(self, org_id: str, activity_ids: Sequence[str]) -> list[Activity | None]:
        partition = keys.activity_partition(org_id)
        entities = self._table.get_many([(partition, keys.activity_row(activity_id)) for activity_id in activity_ids])
        return [activity_from_entity(entity) if entity is not None else None for entity in entities]


def _create_plan(incoming: Activity, event: ActivityEvent | None = None) -> Plan:
    """Index rows, then (with ``event``) the outbox row and the activity's create in one final group."""
    activity = fit_activity(incoming)
    writes = _index_upserts(activity, activity.records, activity.mailbox_ids, with_thread=True)
    create = Write("create", activity_entity(activity))
    if event is None:
        return Plan(activity.activity_id, (*writes, create))
    return Plan(activity.activity_id, (*writes, _outbox_upsert(event), create), final=2)


def _outbox_upsert(event: ActivityEvent) -> Write:
    entity = {
        "PartitionKey": keys.activity_partition(event.org_id),
        "RowKey": keys.outbox_row(event.activity_id, event.event_id),
        "activity_id": event.activity_id,
        "event_id": event.event_id,
        "occurred_at": to_utc(event.occurred_at),
    }
    return Write("upsert", entity)


def _event_from_entity(org_id: str, entity: Any) -> ActivityEvent:
    return ActivityEvent(
        org_id, str(entity["activity_id"]), str(entity["event_id"]), from_stored_datetime(entity["occurred_at"])
    )


def _packed(plans: Sequence[Plan]) -> list[list[Plan]]:
    """Whole plans (each fitting one transaction) grouped, in order, into transaction-sized batches."""
    by_final_write = {id(plan.writes[-1]): plan for plan in plans}
    return [
        [by_final_write[id(write)] for write in batch if id(write) in by_final_write]
        for batch in pack([plan.writes for plan in plans])
    ]


def _index_upserts(
    activity: Activity, records: Sequence[RecordRef], mailbox_ids: Sequence[str], with_thread: bool
) -> list[Write]:
    org_id, activity_id, received_at = activity.org_id, activity.activity_id, activity.received_at
    rows = [keys.timeline_row(ref.record_id, received_at, activity_id) for ref in records]
    if with_thread:
        rows.append(keys.thread_row(activity.thread_id, received_at, activity_id))
    rows += [keys.mailbox_row(mailbox_id, activity_id) for mailbox_id in mailbox_ids]
    partition = keys.activity_partition(org_id)
    return [Write("upsert", {"PartitionKey": partition, "RowKey": row, "activity_id": activity_id}) for row in rows]


def _index_deletes(activity: Activity) -> list[Write]:
    upserts = _index_upserts(activity, activity.records, activity.mailbox_ids, with_thread=True)
    return [Write("delete", key_only(write.entity)) for write in upserts]


def _main_update(activity: Activity, entity: Any) -> Write:
    return Write("update", activity_entity(fit_activity(activity)), etag_of(entity))


def _main_delete(entity: Any) -> Write:
    return Write("delete", key_only(entity), etag_of(entity))
