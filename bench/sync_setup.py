"""The sync run wired as in production (``bootstrap.Services.sync_deps``), for benchmark workers: every
store on Azurite under a fresh table prefix, the records index under a shared one (loaded once), Graph over
HTTPS through whatever ``MailSource`` the worker measures.

``BenchMailbox`` travels from the orchestrator to workers as JSON.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from azure.data.tables import TableServiceClient

from sync_core.adapters.clock import SystemClock
from sync_core.adapters.tables import TableRecordsIndex, TableStores
from sync_core.domain.model import ConnectionMode, Mailbox, OrgSettings, Record, RecordRef
from sync_core.ports import MailSource, RecordLookupResult
from sync_core.testing.app import InMemoryApp
from sync_core.use_cases.sync_mailbox import SyncDeps

ORG = "bench-org"


@dataclass(frozen=True)
class BenchMailbox:
    mailbox_id: str
    address: str
    aliases: tuple[str, ...]
    graph_user_id: str
    tenant_id: str
    domain: str  # the tenant's (internal) domain
    watermark: str  # ISO 8601
    records_prefix: str
    never_log: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchMailbox:
        return cls(**{**data, "aliases": tuple(data["aliases"]), "never_log": tuple(data["never_log"])})

    def mailbox(self) -> Mailbox:
        return Mailbox(
            ORG,
            self.mailbox_id,
            self.address,
            self.aliases,
            watermark=datetime.fromisoformat(self.watermark),
            mode=ConnectionMode.APPLICATION,
            tenant_id=self.tenant_id,
            graph_user_id=self.graph_user_id,
        )

    def settings(self) -> OrgSettings:
        return OrgSettings(internal_domains=(self.domain,), never_log=self.never_log)


@dataclass(frozen=True)
class BenchTables:
    """The product's tables under a fresh prefix, and the shared records index; one ``TableMetrics``."""

    stores: TableStores
    records: TableRecordsIndex

    @classmethod
    def fresh(cls, service: TableServiceClient, prefix: str, box: BenchMailbox) -> BenchTables:
        """With the org settings and the mailbox stored, and every table touched once (so creating
        tables is not part of what is measured)."""
        stores = TableStores.create(service, prefix)
        tables = cls(stores, TableRecordsIndex(service, box.records_prefix, stores.metrics))
        stores.settings.put(ORG, box.settings())
        stores.mailboxes.add(box.mailbox())
        stores.cursors.get_all(ORG, box.mailbox_id)
        stores.leases.release("bench|warm-up", "nobody")
        stores.runs.recent(ORG, box.mailbox_id, 1)
        stores.activities.get(ORG, "warm-up")
        tables.records.lookup(ORG, ["warm-up@example.com"], [])
        return tables

    @property
    def transactions(self) -> int:
        return self.stores.metrics.transactions

    def sync_deps(self, mail: MailSource) -> SyncDeps:
        """Like ``bootstrap.Services.sync_deps``."""
        s = self.stores
        return SyncDeps(
            mailboxes=s.mailboxes,
            settings=s.settings,
            records=self.records,
            activities=s.activities,
            cursors=s.cursors,
            leases=s.leases,
            reports=s.runs,
            mail=mail,
            clock=SystemClock(),
            table_transactions=lambda: s.metrics.transactions,
            state=s.sync_state,
        )


class DictRecordsIndex:
    """``RecordsIndex.lookup`` over two dicts (address -> refs, domain -> refs) of one org: the structure a
    records cache would hold (bench only; the product's in-memory double scans every record per address).
    Counts its lookups: ``calls`` (one per page) and ``keys`` (addresses and domains asked for)."""

    def __init__(self) -> None:
        self._addresses: defaultdict[str, list[RecordRef]] = defaultdict(list)
        self._domains: defaultdict[str, list[RecordRef]] = defaultdict(list)
        self.calls = 0
        self.keys = 0

    def upsert(self, org_id: str, records: Sequence[Record]) -> None:
        for record in records:
            for address in record.emails:
                self._addresses[address].append(record.ref)
            for domain in record.domains:
                self._domains[domain].append(record.ref)

    def lookup(self, org_id: str, addresses: Iterable[str], domains: Iterable[str]) -> RecordLookupResult:
        wanted_addresses, wanted_domains = set(addresses), set(domains)
        self.calls += 1
        self.keys += len(wanted_addresses) + len(wanted_domains)
        return RecordLookupResult(
            by_address={a: tuple(self._addresses[a]) for a in wanted_addresses if a in self._addresses},
            by_domain={d: tuple(self._domains[d]) for d in wanted_domains if d in self._domains},
        )


def records_from_json(rows: Sequence[Sequence[Any]]) -> list[Record]:
    return [Record(str(i), str(kind), str(name), emails=tuple(emails)) for i, kind, name, emails in rows]


def records_to_json(records: Sequence[Record]) -> list[list[Any]]:
    return [[r.record_id, r.record_type, r.name, list(r.emails)] for r in records]


def memory_deps(box: BenchMailbox, records: DictRecordsIndex, mail: MailSource) -> SyncDeps:
    """The sync run on the product's in-memory store doubles and a ``DictRecordsIndex``: no storage cost,
    so what remains is Graph and the engine."""
    app = InMemoryApp(mail=mail, clock=SystemClock())
    app.stores.settings.put(ORG, box.settings())
    app.stores.mailboxes.add(box.mailbox())
    return app.sync_deps(records=records)  # lookup is all the run uses
