"""In-memory doubles of the storage ports, for unit tests of the use cases.

They behave like the Table adapters, and tests/contract runs the same cases on both: the same stored
forms (``table_codec``: fitted activities, stored records, UTC datetimes), the same orders (timelines
newest first, threads oldest first, both by ``table_keys`` positions; mailboxes by id; run reports newest
first), the same cursors and the same errors (AlreadyExists, ConcurrencyConflict). Each double is
thread-safe; none ever fails on its own, and ``ActivityWrite.transactions`` is always 0.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_codec import (
    dataclass_entity,
    dataclass_from_entity,
    decode_cursor,
    encode_cursor,
    fit_activity,
    group_by_org,
    merge_activity,
    new_events,
    stored_record,
    to_utc,
)
from sync_core.domain.model import Activity, Mailbox, OrgSettings, Record, RecordRef, activity_id_for
from sync_core.errors import AlreadyExists, ConcurrencyConflict
from sync_core.ports import (
    ActivityEvent,
    ActivityWrite,
    MailboxLease,
    Page,
    RecordLookupResult,
    RunReport,
    SyncState,
    Versioned,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

V = TypeVar("V", bound="DataclassInstance")


def _as_stored(value: V) -> V:
    """A dataclass as the Table adapters return it (through the same codec)."""
    return dataclass_from_entity(type(value), dataclass_entity(value, "", ""))


class InMemoryRecordsIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], Record] = {}

    def upsert(self, org_id: str, records: Sequence[Record]) -> None:
        with self._lock:
            for record in records:
                self._records[(org_id, record.record_id)] = stored_record(record)

    def delete(self, org_id: str, record_ids: Sequence[str]) -> None:
        with self._lock:
            for record_id in record_ids:
                self._records.pop((org_id, record_id), None)

    def get(self, org_id: str, record_id: str) -> Record | None:
        return self._records.get((org_id, record_id))

    def get_many(self, org_id: str, record_ids: Sequence[str]) -> Mapping[str, Record]:
        found = {rid: self._records.get((org_id, rid)) for rid in record_ids}
        return {rid: record for rid, record in found.items() if record is not None}

    def lookup(self, org_id: str, addresses: Iterable[str], domains: Iterable[str]) -> RecordLookupResult:
        with self._lock:
            of_org = [record for (org, _), record in self._records.items() if org == org_id]
        return RecordLookupResult(
            by_address={address: _refs(r for r in of_org if address in r.emails) for address in addresses},
            by_domain={domain: _refs(r for r in of_org if domain in r.domains) for domain in domains},
        )


def _refs(records: Iterable[Record]) -> tuple[RecordRef, ...]:
    return tuple(sorted((record.ref for record in records), key=lambda ref: ref.record_id))


class InMemoryActivityStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._activities: dict[tuple[str, str], Activity] = {}
        self._outbox: dict[tuple[str, str, str], ActivityEvent] = {}  # (org, activity, event id)

    def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
        outcomes: dict[str, str] = {}
        events = new_events(activities, announce_at)
        with self._lock:
            for org_id, of_org in group_by_org(activities).items():
                for activity_id, incoming in of_org.items():
                    stored = self._activities.get((org_id, activity_id))
                    if stored is None:
                        self._activities[(org_id, activity_id)] = fit_activity(incoming)
                        outcomes[activity_id] = "created"
                        if (event := events.get(activity_id)) is not None:
                            self._outbox[(org_id, activity_id, event.event_id)] = event
                    elif (merged := merge_activity(stored, incoming)) != stored:
                        self._activities[(org_id, activity_id)] = fit_activity(merged)
                        outcomes[activity_id] = "merged"
                    else:
                        outcomes[activity_id] = "unchanged"
        order = list(dict.fromkeys(activity.activity_id for activity in activities))
        created = tuple(key for key in order if outcomes[key] == "created")
        return ActivityWrite(
            created=created,
            merged=tuple(key for key in order if outcomes[key] == "merged"),
            unchanged=tuple(key for key in order if outcomes[key] == "unchanged"),
            events=tuple(events[key] for key in created if key in events),
        )

    def pending_events(self, org_id: str, written_before: datetime, limit: int) -> tuple[ActivityEvent, ...]:
        with self._lock:
            ordered = sorted(self._outbox.items(), key=lambda item: (item[0][1], item[0][2]))
        before = to_utc(written_before)
        found = (event for (org, _, _), event in ordered if org == org_id and event.occurred_at < before)
        return tuple(itertools.islice(found, max(limit, 0)))

    def clear_events(self, org_id: str, events: Sequence[ActivityEvent]) -> None:
        with self._lock:
            for event in events:
                self._outbox.pop((org_id, event.activity_id, event.event_id), None)

    def get(self, org_id: str, activity_id: str) -> Activity | None:
        return self._activities.get((org_id, activity_id))

    def delete(self, org_id: str, activity_id: str) -> bool:
        with self._lock:
            return self._activities.pop((org_id, activity_id), None) is not None

    def timeline(self, org_id: str, record_id: str, cursor: str | None, limit: int) -> Page[Activity]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = decode_cursor(cursor) if cursor else ""
        positioned = sorted(
            (keys.timeline_position(activity.received_at, activity.activity_id), activity)
            for activity in self._of_org(org_id)
            if any(ref.record_id == record_id for ref in activity.records)
        )
        remaining = [(position, activity) for position, activity in positioned if position > after]
        page = remaining[:limit]
        more = len(remaining) > limit
        return Page(tuple(activity for _, activity in page), encode_cursor(page[-1][0]) if more else None)

    def thread_ids_for_messages(self, org_id: str, internet_message_ids: Sequence[str]) -> Mapping[str, str]:
        found: dict[str, str] = {}
        for message_id in internet_message_ids:
            activity = self._activities.get((org_id, activity_id_for(org_id, message_id)))
            if activity is not None:
                found[message_id] = activity.thread_id
        return found

    def thread(self, org_id: str, thread_id: str) -> tuple[Activity, ...]:
        members = [activity for activity in self._of_org(org_id) if activity.thread_id == thread_id]
        return tuple(sorted(members, key=lambda a: keys.thread_position(a.received_at, a.activity_id)))

    def delete_for_mailbox(self, org_id: str, mailbox_id: str) -> int:
        deleted = 0
        with self._lock:
            for key, activity in list(self._activities.items()):
                if key[0] != org_id or mailbox_id not in activity.mailbox_ids:
                    continue
                if activity.mailbox_ids == (mailbox_id,):
                    del self._activities[key]
                    deleted += 1
                else:
                    remaining = tuple(m for m in activity.mailbox_ids if m != mailbox_id)
                    self._activities[key] = fit_activity(replace(activity, mailbox_ids=remaining))
        return deleted

    def _of_org(self, org_id: str) -> list[Activity]:
        with self._lock:
            return [activity for (org, _), activity in self._activities.items() if org == org_id]


class InMemoryMailboxRepository:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mailboxes: dict[tuple[str, str], Versioned[Mailbox]] = {}
        self._versions = itertools.count(1)

    def get(self, org_id: str, mailbox_id: str) -> Versioned[Mailbox] | None:
        return self._mailboxes.get((org_id, mailbox_id))

    def add(self, mailbox: Mailbox) -> Versioned[Mailbox]:
        with self._lock:
            if (mailbox.org_id, mailbox.mailbox_id) in self._mailboxes:
                raise AlreadyExists(f"mailbox {mailbox.mailbox_id} exists")
            return self._store(mailbox)

    def replace(self, mailbox: Mailbox, etag: str) -> Versioned[Mailbox]:
        with self._lock:
            current = self._mailboxes.get((mailbox.org_id, mailbox.mailbox_id))
            if current is None or current.etag != etag:
                raise ConcurrencyConflict(f"mailbox {mailbox.mailbox_id} changed or vanished")
            return self._store(mailbox)

    def list(self, org_id: str) -> tuple[Mailbox, ...]:
        with self._lock:
            of_org = [versioned.value for (org, _), versioned in self._mailboxes.items() if org == org_id]
        return tuple(sorted(of_org, key=lambda mailbox: mailbox.mailbox_id))

    def _store(self, mailbox: Mailbox) -> Versioned[Mailbox]:
        versioned = Versioned(_as_stored(mailbox), f"v{next(self._versions)}")
        self._mailboxes[(mailbox.org_id, mailbox.mailbox_id)] = versioned
        return versioned


class InMemoryCursorStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._links: dict[tuple[str, str], dict[str, str]] = {}

    def get_all(self, org_id: str, mailbox_id: str) -> Mapping[str, str]:
        with self._lock:
            return dict(self._links.get((org_id, mailbox_id), {}))

    def put(self, org_id: str, mailbox_id: str, folder: str, link: str) -> None:
        with self._lock:
            self._links.setdefault((org_id, mailbox_id), {})[folder] = link

    def put_many(self, org_id: str, mailbox_id: str, links: Mapping[str, str]) -> None:
        with self._lock:
            self._links.setdefault((org_id, mailbox_id), {}).update(links)

    def clear(self, org_id: str, mailbox_id: str) -> None:
        with self._lock:
            self._links.pop((org_id, mailbox_id), None)


class InMemoryLeaseStore:
    """Leases by key; each key's version counts its changes (never reset, also across a release), as the
    Table row's ETag does for ``SyncStateStore.acquire_seen``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._versions: dict[str, int] = {}

    def acquire(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        with self.lock:
            holder = self._leases.get(key)
            if holder is not None and holder[0] != owner and holder[1] > to_utc(now):
                return False
            self._set(key, (owner, to_utc(until)))
            return True

    def renew(self, key: str, owner: str, until: datetime) -> bool:
        with self.lock:
            holder = self._leases.get(key)
            if holder is None or holder[0] != owner:
                return False
            self._set(key, (owner, to_utc(until)))
            return True

    def take_over(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        with self.lock:
            holder = self._leases.get(key)
            self._set(key, (owner, to_utc(until)))
            return holder is not None and holder[0] != owner and holder[1] > to_utc(now)

    def release(self, key: str, owner: str) -> None:
        with self.lock:
            holder = self._leases.get(key)
            if holder is not None and holder[0] == owner:
                self._set(key, None)

    def version(self, key: str) -> int:
        with self.lock:
            return self._versions.get(key, 0)

    def holder(self, key: str) -> tuple[str, datetime] | None:
        with self.lock:
            return self._leases.get(key)

    def _set(self, key: str, holder: tuple[str, datetime] | None) -> None:
        if holder is None:
            self._leases.pop(key, None)
        else:
            self._leases[key] = holder
        self._versions[key] = self._versions.get(key, 0) + 1


class InMemorySyncStateStore:
    """``SyncStateStore`` over the cursor, lease and run report doubles it is given (the same objects the
    other ports see); ``acquire_seen`` and ``commit`` hold the lease double's lock, so each is atomic."""

    def __init__(self, cursors: InMemoryCursorStore, leases: InMemoryLeaseStore, runs: InMemoryRunReportStore) -> None:
        self._cursors = cursors
        self._leases = leases
        self._runs = runs

    def read(self, org_id: str, mailbox_id: str) -> SyncState:
        key = MailboxLease(org_id, mailbox_id)
        with self._leases.lock:
            return SyncState(self._cursors.get_all(org_id, mailbox_id), str(self._leases.version(key)))

    def acquire_seen(
        self, org_id: str, mailbox_id: str, owner: str, *, until: datetime, now: datetime, seen: SyncState
    ) -> bool:
        key = MailboxLease(org_id, mailbox_id)
        with self._leases.lock:
            if str(self._leases.version(key)) != seen.version:
                return False
            return self._leases.acquire(key, owner, until, now)

    def commit(
        self,
        org_id: str,
        mailbox_id: str,
        owner: str,
        *,
        until: datetime | None,
        cursors: Mapping[str, str],
        report: RunReport | None = None,
        keep: int = 50,
    ) -> bool:
        key = MailboxLease(org_id, mailbox_id)
        with self._leases.lock:
            holder = self._leases.holder(key)
            if holder is None or holder[0] != owner:
                return False
            if cursors:
                self._cursors.put_many(org_id, mailbox_id, cursors)
            if report is not None:
                self._runs.add(report, keep)
            if until is None:
                self._leases.release(key, owner)
            else:
                self._leases.renew(key, owner, until)
            return True


class InMemoryRunReportStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: dict[tuple[str, str], dict[str, RunReport]] = {}

    def add(self, report: RunReport, keep: int) -> None:
        with self._lock:
            reports = self._reports.setdefault((report.org_id, report.mailbox_id), {})
            reports[keys.run_row(to_utc(report.started_at), report.run_id)] = _as_stored(report)
            for position in sorted(reports)[max(keep, 0) :]:
                del reports[position]

    def recent(self, org_id: str, mailbox_id: str, limit: int) -> tuple[RunReport, ...]:
        with self._lock:
            reports = self._reports.get((org_id, mailbox_id), {})
            return tuple(reports[position] for position in sorted(reports)[: max(limit, 0)])


class InMemorySettingsRepository:
    def __init__(self) -> None:
        self._settings: dict[str, OrgSettings] = {}

    def get(self, org_id: str) -> OrgSettings:
        return self._settings.get(org_id, OrgSettings())

    def put(self, org_id: str, settings: OrgSettings) -> None:
        self._settings[org_id] = _as_stored(settings)


@dataclass(frozen=True)
class InMemoryStores:
    """Every storage double, fresh: the in-memory counterpart of ``tables.TableStores``."""

    records: InMemoryRecordsIndex = field(default_factory=InMemoryRecordsIndex)
    activities: InMemoryActivityStore = field(default_factory=InMemoryActivityStore)
    mailboxes: InMemoryMailboxRepository = field(default_factory=InMemoryMailboxRepository)
    cursors: InMemoryCursorStore = field(default_factory=InMemoryCursorStore)
    leases: InMemoryLeaseStore = field(default_factory=InMemoryLeaseStore)
    runs: InMemoryRunReportStore = field(default_factory=InMemoryRunReportStore)
    settings: InMemorySettingsRepository = field(default_factory=InMemorySettingsRepository)

    @property
    def sync_state(self) -> InMemorySyncStateStore:
        return InMemorySyncStateStore(self.cursors, self.leases, self.runs)
