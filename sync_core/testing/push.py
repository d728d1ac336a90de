"""In-memory doubles of the push ports' stores (subscriptions, webhook log, webhook secret), a
scripted ``WebhookSender`` and a ``MailboxPushes`` double (``FakeMailboxPushes``).

They behave like ``table_subscriptions`` and ``table_webhook_log`` (tests/contract runs the same cases
on both): the same stored forms (``table_codec``: aware UTC datetimes), the same orders (an org's
subscriptions by mailbox and folder key, deliveries newest first by ``delivery_position``) and the same
errors. Each is thread-safe and never fails on its own.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_codec import decode_cursor, encode_cursor, to_utc
from sync_core.adapters.table_subscriptions import record_row
from sync_core.adapters.table_webhook_log import (
    delivery_position,
    needs_rewrap,
    open_secret,
    secret_aad,
    stored_key_id,
)
from sync_core.auth.crypto import TokenCipher
from sync_core.domain.model import Mailbox
from sync_core.errors import AlreadyExists, ConcurrencyConflict, InvalidNotification
from sync_core.ports import Page, Versioned
from sync_core.ports.push import CreatedSubscription, PushSubscription, WebhookDelivery, WebhookSecret
from sync_core.testing.stores import _as_stored


class InMemorySubscriptionStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str, str], PushSubscription] = {}
        self._ids: dict[str, tuple[str, str, str]] = {}
        self._unknown = 0

    def get(self, subscription_id: str) -> PushSubscription | None:
        with self._lock:
            key = self._ids.get(subscription_id)
            found = self._records.get(key) if key else None
            return found if found is not None and found.subscription_id == subscription_id else None

    def for_mailbox(self, org_id: str, mailbox_id: str) -> tuple[PushSubscription, ...]:
        return tuple(s for s in self.for_org(org_id) if s.mailbox_id == mailbox_id)

    def for_org(self, org_id: str) -> tuple[PushSubscription, ...]:
        with self._lock:
            found = [s for (org, _, _), s in self._records.items() if org == org_id]
        return tuple(sorted(found, key=lambda s: record_row(s.mailbox_id, s.folder)))

    def all(self) -> Iterator[PushSubscription]:
        with self._lock:
            listed = list(self._records.values())
        yield from listed

    def put(self, subscription: PushSubscription) -> None:
        key = (subscription.org_id, subscription.mailbox_id, subscription.folder)
        with self._lock:
            self._ids[subscription.subscription_id] = key
            self._records[key] = _as_stored(subscription)

    def remove(self, subscription: PushSubscription) -> None:
        key = (subscription.org_id, subscription.mailbox_id, subscription.folder)
        with self._lock:
            current = self._records.get(key)
            if current is not None and current.subscription_id == subscription.subscription_id:
                del self._records[key]
            self._ids.pop(subscription.subscription_id, None)

    def count(self, subscription_id: str, *, accepted: int, rejected: int, at: datetime, lifecycle: str = "") -> None:
        with self._lock:
            key = self._ids.get(subscription_id)
            current = self._records.get(key) if key else None
            if key is None or current is None or current.subscription_id != subscription_id:
                return
            self._records[key] = replace(
                current,
                notifications=current.notifications + accepted,
                rejected=current.rejected + rejected,
                last_notification_at=to_utc(at) if accepted else current.last_notification_at,
                last_lifecycle_event=lifecycle or current.last_lifecycle_event,
            )

    def count_unknown(self, notifications: int) -> None:
        with self._lock:
            self._unknown += notifications

    def unknown_count(self) -> int:
        return self._unknown


class InMemoryWebhookLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliveries: dict[str, dict[str, WebhookDelivery]] = {}

    def record(self, delivery: WebhookDelivery) -> None:
        position = delivery_position(delivery.created_at, delivery.delivery_id)
        with self._lock:
            self._deliveries.setdefault(delivery.org_id, {})[position] = _as_stored(delivery)

    def recent(self, org_id: str, cursor: str | None, limit: int) -> Page[WebhookDelivery]:
        after = decode_cursor(cursor) if cursor else None
        if after is not None and keys.SEPARATOR not in after:
            raise ValueError("invalid cursor")
        with self._lock:
            ordered = sorted(self._deliveries.get(org_id, {}).items())
        remaining = [(position, d) for position, d in ordered if after is None or position > after]
        size = max(limit, 1)
        page = remaining[:size]
        more = len(remaining) > size
        return Page(tuple(d for _, d in page), encode_cursor(page[-1][0]) if more else None)

    def trim(self, org_id: str, keep: int) -> int:
        with self._lock:
            deliveries = self._deliveries.get(org_id, {})
            stale = sorted(deliveries)[max(keep, 0) :]
            for position in stale:
                del deliveries[position]
            return len(stale)


class InMemoryWebhookSecretStore:
    """Stores the ciphertext the Table adapter stores (same cipher use, same associated data), so key
    rotation and unreadable secrets behave the same; ``with_cipher`` is a worker with another key
    setting on the same rows."""

    def __init__(self, cipher: TokenCipher | None = None) -> None:
        self._cipher = cipher or TokenCipher.from_setting(TokenCipher.generate_setting())
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[str, datetime, bool, str]] = {}  # org -> ciphertext, created, revealed, etag
        self._versions = itertools.count(1)

    def with_cipher(self, cipher: TokenCipher) -> InMemoryWebhookSecretStore:
        other = InMemoryWebhookSecretStore(cipher)
        other._lock, other._rows, other._versions = self._lock, self._rows, self._versions
        return other

    def get(self, org_id: str) -> Versioned[WebhookSecret] | None:
        with self._lock:
            row = self._rows.get(org_id)
        if row is None:
            return None
        ciphertext, created_at, revealed, etag = row
        return Versioned(WebhookSecret(open_secret(self._cipher, org_id, ciphertext), created_at, revealed), etag)

    def put(self, org_id: str, secret: WebhookSecret, etag: str | None) -> str:
        stored = _as_stored(secret)
        ciphertext = self._cipher.encrypt(stored.value.encode("utf-8"), secret_aad(org_id))
        with self._lock:
            current = self._rows.get(org_id)
            if etag is None and current is not None:
                raise AlreadyExists("the org has a webhook secret")
            if etag is not None and (current is None or current[3] != etag):
                raise ConcurrencyConflict("the webhook secret changed")
            new_etag = f"v{next(self._versions)}"
            self._rows[org_id] = (ciphertext, stored.created_at, stored.revealed, new_etag)
            return new_etag

    def version(self, org_id: str) -> str | None:
        with self._lock:
            row = self._rows.get(org_id)
        return None if row is None else row[3]

    def rewrap_if_needed(self, org_id: str) -> bool:
        with self._lock:
            row = self._rows.get(org_id)
        if row is None or not needs_rewrap(self._cipher, row[0]):
            return False
        found = self.get(org_id)
        if found is None:
            return False
        try:
            self.put(org_id, found.value, found.etag)
        except ConcurrencyConflict:
            return False
        return True

    def stored_key_id(self, org_id: str) -> str | None:
        with self._lock:
            row = self._rows.get(org_id)
        return None if row is None else stored_key_id(row[0])


@dataclass
class FakeWebhookSender:
    """Answers each post with the next of ``answers`` (a status, or an exception it raises), then 200;
    records every post in ``posts``."""

    answers: list[int | Exception] = field(default_factory=list)
    posts: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        self.posts.append((url, body, dict(headers)))
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class FakeMailboxPushes:
    """A ``MailboxPushes`` double: watches by address, pushes "signed" by a shared secret token.

    ``subscription_of`` accepts ``Authorization: Bearer <token>`` for the configured token only, and a
    body ``{"address": ...}`` (the double's own wire shape: the use case never reads it)."""

    token: str = "good-token"  # noqa: S105 (a test double's)
    lifetime_days: int = 7
    enabled_: bool = True
    watching: dict[str, datetime] = field(default_factory=dict)  # address -> expiry
    stopped: list[str] = field(default_factory=list)
    fail_watch: Exception | None = None
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 1, 9, 0, tzinfo=UTC))

    @property
    def enabled(self) -> bool:
        return self.enabled_

    def watch(self, mailbox: Mailbox) -> CreatedSubscription:
        if self.fail_watch is not None:
            raise self.fail_watch
        expires = self.now + timedelta(days=self.lifetime_days)
        self.watching[mailbox.address] = expires
        return CreatedSubscription(f"watch:{mailbox.address}", expires)

    def stop(self, mailbox: Mailbox) -> None:
        self.watching.pop(mailbox.address, None)
        self.stopped.append(mailbox.address)

    def subscription_of(self, authorization: str, body: bytes) -> str:
        if authorization != f"Bearer {self.token}":
            raise InvalidNotification("the push is not proven to come from the configured sender")
        try:
            address = str(json.loads(body)["address"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidNotification("the body is not a push") from exc
        return f"watch:{address}"
