"""In-memory doubles of the sending ports: ``InMemorySendStore`` and ``FakeMailSender``.

``FakeMailSender`` behaves like a provider with drafts: ``prepare`` creates a draft (a handle), ``submit``
delivers it once (a draft already submitted is never delivered again, as an item can only leave Drafts
once), and ``inspect`` tells from the draft's state what happened. ``fail`` scripts failures per method
(raised once each, in order), and ``lose_answer`` makes a ``submit`` deliver and then raise, like a
connection dropped after the provider accepted it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sync_core.adapters.table_codec import decode_cursor, encode_cursor, to_utc
from sync_core.domain.model import Mailbox
from sync_core.domain.sending import PacingWindow, Send
from sync_core.errors import ConcurrencyConflict, SyncError
from sync_core.ports import Clock, Page, Versioned
from sync_core.ports.send import DraftState, OutgoingMessage, ProviderView
from sync_core.testing.mail import FixedClock


class InMemorySendStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sends: dict[tuple[str, str], Versioned[Send]] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._content: dict[tuple[str, str], tuple[bytes, ...]] = {}
        self._due: dict[tuple[str, str], datetime] = {}
        self._pacing: dict[tuple[str, str], Versioned[PacingWindow]] = {}
        self._etags = itertools.count(1)

    def _etag(self) -> str:
        return f"e{next(self._etags)}"

    def create(self, send: Send, attachments: Sequence[bytes]) -> tuple[Versioned[Send], bool]:
        with self._lock:
            existing = self._keys.get((send.org_id, send.idempotency_key))
            if existing is not None:
                return self._sends[(send.org_id, existing)], False
            stored = Versioned(send, self._etag())
            self._sends[(send.org_id, send.send_id)] = stored
            self._keys[(send.org_id, send.idempotency_key)] = send.send_id
            self._content[(send.org_id, send.send_id)] = tuple(attachments)
            return stored, True

    def by_key(self, org_id: str, idempotency_key: str) -> Versioned[Send] | None:
        with self._lock:
            send_id = self._keys.get((org_id, idempotency_key))
            return self._sends.get((org_id, send_id)) if send_id is not None else None

    def get(self, org_id: str, send_id: str) -> Versioned[Send] | None:
        return self._sends.get((org_id, send_id))

    def replace(self, send: Send, etag: str) -> Versioned[Send]:
        with self._lock:
            stored = self._sends.get((send.org_id, send.send_id))
            if stored is None or stored.etag != etag:
                raise ConcurrencyConflict(f"send {send.send_id} changed concurrently")
            new = Versioned(send, self._etag())
            self._sends[(send.org_id, send.send_id)] = new
            return new

    def content(self, org_id: str, send_id: str) -> tuple[bytes, ...]:
        return self._content.get((org_id, send_id), ())

    def drop_content(self, org_id: str, send_id: str) -> None:
        with self._lock:
            self._content.pop((org_id, send_id), None)

    def for_mailbox(self, org_id: str, mailbox_id: str, cursor: str | None, limit: int) -> Page[Send]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = decode_cursor(cursor) if cursor else ""
        ordered = sorted(
            (_position(v.value), v.value)
            for (org, _), v in list(self._sends.items())
            if org == org_id and v.value.mailbox_id == mailbox_id
        )
        remaining = [(position, send) for position, send in ordered if position > after]
        page = remaining[:limit]
        more = len(remaining) > limit
        return Page(tuple(send for _, send in page), encode_cursor(page[-1][0]) if more else None)

    def set_due(self, org_id: str, send_id: str, at: datetime | None) -> None:
        with self._lock:
            if at is None:
                self._due.pop((org_id, send_id), None)
            else:
                self._due[(org_id, send_id)] = to_utc(at)

    def due(self, before: datetime, limit: int) -> tuple[tuple[str, str], ...]:
        cutoff = to_utc(before)
        ordered = sorted((at, key) for key, at in list(self._due.items()) if at < cutoff)
        return tuple(key for _, key in ordered[: max(limit, 0)])

    def pacing(self, org_id: str, mailbox_id: str) -> Versioned[PacingWindow] | None:
        return self._pacing.get((org_id, mailbox_id))

    def put_pacing(self, org_id: str, mailbox_id: str, window: PacingWindow, etag: str | None) -> str:
        with self._lock:
            stored = self._pacing.get((org_id, mailbox_id))
            if (stored.etag if stored is not None else None) != etag:
                raise ConcurrencyConflict("the mailbox's pacing changed concurrently")
            new = Versioned(window, self._etag())
            self._pacing[(org_id, mailbox_id)] = new
            return new.etag


def _position(send: Send) -> str:
    """Newest first, then by id: the same order as the Table adapter's index rows."""
    ticks = int(to_utc(send.created_at).timestamp() * 1_000_000)
    return f"{10**19 - ticks:020d}|{send.send_id}"


@dataclass
class FakeDraft:
    mailbox_id: str
    message: OutgoingMessage
    submitted: bool = False
    delivered: bool = False
    internet_message_id: str = ""
    sent_at: datetime | None = None
    deleted: bool = False


@dataclass
class FakeMailSender:
    """A provider with drafts, in memory. ``delivered`` lists (mailbox id, message) once per delivery;
    ``visible_after_submit``: whether the sent copy is readable at once (else ``IN_FLIGHT`` until
    ``settle()``). ``memory_only``: a provider like Gmail, where ``prepare`` creates nothing and the
    prepared message lives in the worker's memory under a handle derived from the send id; ``forget()``
    is that worker dying (unsubmitted prepared messages are lost, ``inspect`` answers ``NOT_PREPARED``)."""

    clock: Clock = field(default_factory=FixedClock)
    drafts: dict[str, FakeDraft] = field(default_factory=dict)
    delivered: list[tuple[str, OutgoingMessage]] = field(default_factory=list)
    failures: dict[str, list[Exception]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    lose_answer: bool = False
    visible_after_submit: bool = True
    inspect_unknown: bool = False
    missing_permission: str | None = None
    memory_only: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def fail(self, method: str, *errors: Exception) -> None:
        self.failures.setdefault(method, []).extend(errors)

    def _maybe_fail(self, method: str) -> None:
        self.calls.append(method)
        pending = self.failures.get(method)
        if pending:
            raise pending.pop(0)

    def permission_problem(self, mailbox: Mailbox) -> str | None:
        return self.missing_permission

    def prepare(self, mailbox: Mailbox, message: OutgoingMessage) -> str:
        self._maybe_fail("prepare")
        if self.memory_only:
            handle = f"kept-{message.send_id}"
            kept = self.drafts.get(handle)
            if kept is None or not kept.submitted:
                self.drafts[handle] = FakeDraft(mailbox.mailbox_id, message)
            return handle
        handle = f"draft-{next(self._ids)}"
        self.drafts[handle] = FakeDraft(mailbox.mailbox_id, message)
        return handle

    def forget(self) -> None:
        """The worker dies: in ``memory_only`` mode its prepared, unsubmitted messages are gone."""
        for handle, draft in list(self.drafts.items()):
            if self.memory_only and not draft.submitted:
                del self.drafts[handle]

    def locate(self, mailbox: Mailbox, send_id: str) -> tuple[str, ...]:
        self._maybe_fail("locate")
        if self.memory_only:
            return ()  # nothing is created at the provider before the submit
        return tuple(
            handle
            for handle, d in self.drafts.items()
            if d.mailbox_id == mailbox.mailbox_id and d.message.send_id == send_id and not d.submitted and not d.deleted
        )

    def discard(self, mailbox: Mailbox, handle: str) -> None:
        self._maybe_fail("discard")
        draft = self.drafts.get(handle)
        if draft is not None and not draft.submitted and self.memory_only:
            del self.drafts[handle]
        elif draft is not None and not draft.submitted:
            draft.deleted = True

    def submit(self, mailbox: Mailbox, handle: str) -> None:
        self._maybe_fail("submit")
        draft = self.drafts.get(handle)
        if draft is None or draft.deleted:
            raise SyncError("no such draft")
        if not draft.submitted:  # an item leaves Drafts once: a second submit delivers nothing
            draft.submitted = True
            draft.delivered = self.visible_after_submit
            draft.internet_message_id = f"<{handle}.{draft.message.send_id}@fake.example>"
            draft.sent_at = self.clock.now()
            self.delivered.append((mailbox.mailbox_id, draft.message))
        if self.lose_answer:
            self.lose_answer = False
            raise ConnectionError("the answer was lost")

    def settle(self) -> None:
        for draft in self.drafts.values():
            if draft.submitted:
                draft.delivered = True

    def inspect(self, mailbox: Mailbox, handle: str) -> ProviderView:
        self._maybe_fail("inspect")
        if self.inspect_unknown:
            return ProviderView(DraftState.UNKNOWN)
        draft = self.drafts.get(handle)
        if draft is None and self.memory_only:
            return ProviderView(DraftState.NOT_PREPARED)
        if draft is None or draft.deleted:
            return ProviderView(DraftState.GONE)
        if not draft.submitted:
            return ProviderView(DraftState.NOT_SENT)
        if not draft.delivered:
            return ProviderView(DraftState.IN_FLIGHT)
        return ProviderView(DraftState.SENT, draft.internet_message_id, draft.sent_at)

    def messages_to(self, address: str) -> list[OutgoingMessage]:
        return [m for _, m in self.delivered if any(p.address == address for p in m.to + m.cc + m.bcc)]
