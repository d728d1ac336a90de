"""The record backfill's jobs over Table storage (table ``<prefix>backfills``).

Layout (PartitionKey / RowKey):
- ``<org>|<mailbox>`` / ``j|<job>``: a job, every field (lists and counts as chunked JSON).
- ``<org>|<mailbox>`` / ``open``: ``job_id`` of the job still taking new terms.
- ``<org>|r|<record>`` / ``<mailbox>``: ``job_id``, the record's latest job in that mailbox (one
  partition query answers ``GET …/records/{id}/backfill``).

Invariants: job writes and pointer changes are ETag-conditional (``put``/``set_open_job`` return
None/False on a conflict, ``AlreadyExists`` and ``ConcurrencyConflict`` never escape); record links are
plain upserts, batched per partition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from azure.data.tables import TableServiceClient

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_client import Table, TableMetrics, Write, etag_of, key_only, table_name
from sync_core.adapters.table_codec import dataclass_entity, dataclass_from_entity
from sync_core.errors import AlreadyExists, ConcurrencyConflict
from sync_core.ports import BackfillJob, Versioned

_OPEN_ROW = "open"


class TableBackfillJobStore:
    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        self._table = Table(service, table_name(prefix, "backfills"), metrics or TableMetrics())

    def get(self, org_id: str, mailbox_id: str, job_id: str) -> Versioned[BackfillJob] | None:
        entity = self._table.get(keys.mailbox_partition(org_id, mailbox_id), _job_row(job_id))
        if entity is None:
            return None
        return Versioned(dataclass_from_entity(BackfillJob, entity), etag_of(entity))

    def put(self, job: BackfillJob, expected: Versioned[BackfillJob] | None) -> Versioned[BackfillJob] | None:
        entity = dataclass_entity(job, keys.mailbox_partition(job.org_id, job.mailbox_id), _job_row(job.job_id))
        write = Write("create", entity) if expected is None else Write("update", entity, expected.etag)
        try:
            etag = self._table.write(write)
        except (AlreadyExists, ConcurrencyConflict):
            return None
        return Versioned(dataclass_from_entity(BackfillJob, entity), etag)

    def open_job(self, org_id: str, mailbox_id: str) -> Versioned[str] | None:
        entity = self._table.get(keys.mailbox_partition(org_id, mailbox_id), _OPEN_ROW)
        if entity is None or not entity.get("job_id"):
            return None
        return Versioned(str(entity["job_id"]), etag_of(entity))

    def set_open_job(
        self, org_id: str, mailbox_id: str, job_id: str | None, expected: Versioned[str] | None
    ) -> bool:
        partition = keys.mailbox_partition(org_id, mailbox_id)
        entity: dict[str, Any] = {"PartitionKey": partition, "RowKey": _OPEN_ROW, "job_id": job_id or ""}
        try:
            if expected is None:
                current = self._table.get(partition, _OPEN_ROW)
                if current is None:
                    self._table.write(Write("create", entity))
                elif current.get("job_id"):
                    return False  # someone points at a job: not the "none" the caller expected
                else:
                    self._table.write(Write("update", entity, etag_of(current)))
            elif job_id is None:
                self._table.write(Write("delete", key_only(entity), expected.etag))
            else:
                self._table.write(Write("update", entity, expected.etag))
        except (AlreadyExists, ConcurrencyConflict):
            return False
        return True

    def link_records(self, org_id: str, mailbox_id: str, job_id: str, record_ids: Sequence[str]) -> None:
        self._table.submit([
            Write("upsert", {
                "PartitionKey": _record_partition(org_id, record_id),
                "RowKey": keys.key_part(mailbox_id),
                "mailbox_id": mailbox_id,
                "job_id": job_id,
            })
            for record_id in dict.fromkeys(record_ids)
        ])  # fmt: skip

    def jobs_of_record(self, org_id: str, record_id: str) -> Mapping[str, str]:
        rows = self._table.rows(_record_partition(org_id, record_id))
        return {str(row["mailbox_id"]): str(row["job_id"]) for row in rows}


def _job_row(job_id: str) -> str:
    return keys.compose("j", keys.key_part(job_id))


def _record_partition(org_id: str, record_id: str) -> str:
    return keys.compose(keys.key_part(org_id), "r", keys.key_part(record_id))
