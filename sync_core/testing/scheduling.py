"""In-memory doubles of the scheduler's ports (due index, mailbox catalog) and of the work queue.

They behave like ``table_due`` and ``storage_queue`` (tests/contract runs the same cases on the due index
and the catalog): the same orders (due entries by ``table_due.index_row``), the same stored forms (aware
UTC datetimes) and the same compare-and-set results. ``put_many`` is all or nothing per shard
(``table_due.shard``), at least as strict as the Table adapter's transactions of up to
``CLAIMS_PER_TRANSACTION`` entries of one shard. Each is thread-safe and never fails on its own.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_codec import to_utc
from sync_core.adapters.table_due import index_row, shard
from sync_core.ports import Versioned
from sync_core.ports.scheduling import DueEntry, MailboxSummary
from sync_core.testing.stores import InMemoryMailboxRepository


def _stored(entry: DueEntry) -> DueEntry:
    def utc(moment: datetime | None) -> datetime | None:
        return to_utc(moment) if moment is not None else None

    return DueEntry(
        entry.org_id,
        entry.mailbox_id,
        to_utc(entry.due_at),
        utc(entry.queued_at),
        utc(entry.backfill_since),
        entry.run_id,
        entry.run_outcome,
    )


class InMemoryDueIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], Versioned[DueEntry]] = {}
        self._versions = itertools.count(1)
        self._position: str | None = None

    def get(self, org_id: str, mailbox_id: str) -> Versioned[DueEntry] | None:
        with self._lock:
            return self._entries.get((org_id, mailbox_id))

    def put(self, entry: DueEntry, expected: Versioned[DueEntry] | None) -> Versioned[DueEntry] | None:
        key = (entry.org_id, entry.mailbox_id)
        with self._lock:
            current = self._entries.get(key)
            if (current.etag if current else None) != (expected.etag if expected else None):
                return None
            stored = Versioned(_stored(entry), f"v{next(self._versions)}")
            self._entries[key] = stored
            return stored

    def put_many(
        self, changes: Sequence[tuple[DueEntry, Versioned[DueEntry]]]
    ) -> tuple[Versioned[DueEntry] | None, ...]:
        keys_ = [(entry.org_id, entry.mailbox_id) for entry, _ in changes]
        if len(set(keys_)) != len(keys_):
            raise ValueError("put_many takes each mailbox at most once")
        results: list[Versioned[DueEntry] | None] = [None] * len(changes)
        with self._lock:
            stale = {
                shard(*key) for key, (_, expected) in zip(keys_, changes, strict=True) if self._stale(key, expected)
            }
            for position, (key, (entry, _)) in enumerate(zip(keys_, changes, strict=True)):
                if shard(*key) not in stale:
                    results[position] = self._entries[key] = Versioned(_stored(entry), f"v{next(self._versions)}")
        return tuple(results)

    def _stale(self, key: tuple[str, str], expected: Versioned[DueEntry]) -> bool:
        current = self._entries.get(key)
        return current is None or current.etag != expected.etag

    def remove(self, expected: Versioned[DueEntry]) -> bool:
        key = (expected.value.org_id, expected.value.mailbox_id)
        with self._lock:
            current = self._entries.get(key)
            if current is None or current.etag != expected.etag:
                return False
            del self._entries[key]
            return True

    def due(self, now: datetime, limit: int) -> tuple[Versioned[DueEntry], ...]:
        with self._lock:
            entries = [v for v in self._entries.values() if v.value.due_at <= to_utc(now)]
        entries.sort(key=lambda v: index_row(v.value.org_id, v.value.mailbox_id, v.value.due_at))
        return tuple(entries[: max(limit, 0)])

    def missing(self, keys_: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        with self._lock:
            return tuple(key for key in keys_ if key not in self._entries)

    def sweep_position(self) -> str | None:
        return self._position

    def set_sweep_position(self, position: str | None) -> None:
        self._position = position or None


class InMemoryMailboxCatalog:
    """Every mailbox of an ``InMemoryMailboxRepository``, in the Table catalog's order (org, mailbox keys)."""

    def __init__(self, mailboxes: InMemoryMailboxRepository) -> None:
        self._mailboxes = mailboxes

    def page(self, position: str | None, limit: int) -> tuple[tuple[MailboxSummary, ...], str | None]:
        after: tuple[str, str] | None = None
        if position:
            try:
                org, mailbox = json.loads(position)
                after = (str(org), str(mailbox))
            except (ValueError, TypeError) as exc:
                raise ValueError("not a mailbox catalog position") from exc
        stored = self._mailboxes._mailboxes  # the double's own state: the catalog is part of the double
        ordered = sorted(
            ((keys.key_part(org), keys.key_part(mbx)), versioned.value)
            for (org, mbx), versioned in list(stored.items())
        )
        remaining = [(key, mailbox) for key, mailbox in ordered if after is None or key > after]
        page = remaining[: max(limit, 0)]
        summaries = tuple(MailboxSummary(m.org_id, m.mailbox_id, m.status, m.enabled) for _, m in page)
        more = len(remaining) > len(page)
        return summaries, json.dumps(list(page[-1][0])) if more and page else None


@dataclass(frozen=True)
class QueuedMessage:
    body: Mapping[str, Any]
    delay_seconds: int


class InMemoryWorkQueue:
    """Records what was enqueued; ``take()`` empties it (tests deliver the messages themselves)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[QueuedMessage] = []

    def enqueue(self, message: Mapping[str, Any], delay_seconds: int = 0) -> None:
        with self._lock:
            self.messages.append(QueuedMessage(json.loads(json.dumps(message)), int(delay_seconds)))

    def take(self) -> list[QueuedMessage]:
        with self._lock:
            taken, self.messages = self.messages, []
            return taken
