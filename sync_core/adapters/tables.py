"""Every Table storage adapter of the product, built from one TableServiceClient and a table-name prefix.

Tables (``<prefix>`` + records, activities, mailboxes, cursors, leases, runs, settings) are created on
first use; all adapters count their round trips in one shared ``TableMetrics``. The layout of each table
is documented in its module (``table_records``, ``table_activities``, ``table_state``) and its keys in
``table_keys``.
"""

from __future__ import annotations

from dataclasses import dataclass

from azure.data.tables import TableServiceClient

from sync_core.adapters.table_activities import TableActivityStore
from sync_core.adapters.table_client import Measurement, TableMetrics
from sync_core.adapters.table_records import TableRecordsIndex
from sync_core.adapters.table_state import (
    TableCursorStore,
    TableLeaseStore,
    TableMailboxRepository,
    TableRunReportStore,
    TableSettingsRepository,
    TableSyncStateStore,
)

__all__ = [
    "Measurement",
    "TableActivityStore",
    "TableCursorStore",
    "TableLeaseStore",
    "TableMailboxRepository",
    "TableMetrics",
    "TableRecordsIndex",
    "TableRunReportStore",
    "TableSettingsRepository",
    "TableStores",
    "TableSyncStateStore",
]


@dataclass(frozen=True)
class TableStores:
    records: TableRecordsIndex
    activities: TableActivityStore
    mailboxes: TableMailboxRepository
    cursors: TableCursorStore
    leases: TableLeaseStore
    runs: TableRunReportStore
    settings: TableSettingsRepository
    metrics: TableMetrics
    sync_state: TableSyncStateStore

    @classmethod
    def create(cls, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> TableStores:
        shared = metrics or TableMetrics()
        cursors = TableCursorStore(service, prefix, shared)
        leases = TableLeaseStore(service, prefix, shared, state=cursors.table)
        return cls(
            records=TableRecordsIndex(service, prefix, shared),
            activities=TableActivityStore(service, prefix, shared),
            mailboxes=TableMailboxRepository(service, prefix, shared),
            cursors=cursors,
            leases=leases,
            runs=TableRunReportStore(service, prefix, shared, state=cursors.table),
            settings=TableSettingsRepository(service, prefix, shared),
            metrics=shared,
            sync_state=TableSyncStateStore(leases),
        )
