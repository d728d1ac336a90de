"""Ports of push (issue 6): change-notification subscriptions, CRM webhooks and activity events.

Used by the push use cases (``subscriptions``, ``notifications``, ``webhooks``, ``ingest``). Production
adapters: ``adapters.table_subscriptions``, ``adapters.table_webhook_log``, ``adapters.graph.subscriptions``,
``adapters.http_webhooks``; in-memory
doubles of the stores live in ``sync_core.testing.push`` and tests/contract runs the same cases on both.

Invariants:
- A subscription's ``clientState`` is never stored: only its SHA-256 (``client_state_hash``). The secret
  is 256 random bits, so a plain hash cannot be brute-forced, and a stolen table reveals nothing that
  would let anyone forge a notification.
- A mailbox has at most one subscription per folder key (a folder role, ``inbox``/``sentitems``, or ``*`` for the whole
  mailbox); ``SubscriptionStore.put`` replaces the folder's previous record.
- Webhook secrets are stored encrypted (AES-GCM, ``TOKEN_ENCRYPTION_KEY``), bound to their org, with the
  key id they are encrypted under; the maintenance timer re-wraps them under the current key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sync_core.domain.model import Mailbox
from sync_core.ports.storage import ActivityEvent, Page, Versioned

WHOLE_MAILBOX = "*"


@dataclass(frozen=True)
class PushSubscription:
    """A Graph subscription this service created for one folder of one mailbox, with its counters."""

    org_id: str
    mailbox_id: str
    folder: str
    subscription_id: str
    resource: str
    client_state_hash: str
    expires_at: datetime
    created_at: datetime
    renewed_at: datetime | None = None
    notifications: int = 0
    rejected: int = 0
    last_notification_at: datetime | None = None
    last_lifecycle_event: str = ""


class SubscriptionStore(Protocol):
    def get(self, subscription_id: str) -> PushSubscription | None:
        """The subscription with this Graph id (a notification names only that), or None."""

    def for_mailbox(self, org_id: str, mailbox_id: str) -> tuple[PushSubscription, ...]:
        """The mailbox's subscriptions, by folder key."""

    def for_org(self, org_id: str) -> tuple[PushSubscription, ...]:
        """Every subscription of the org, by mailbox then folder key."""

    def all(self) -> Iterator[PushSubscription]:
        """Every subscription of every org (the maintenance timer's one scan)."""

    def put(self, subscription: PushSubscription) -> None:
        """Insert or replace the record of (org, mailbox, folder) and make it findable by its id."""

    def remove(self, subscription: PushSubscription) -> None:
        """Forget this subscription: its id no longer resolves, and the folder's record goes unless it
        already holds another subscription. Missing is fine."""

    def count(self, subscription_id: str, *, accepted: int, rejected: int, at: datetime, lifecycle: str = "") -> None:
        """Add to the subscription's counters (and note a lifecycle event); a missing one is ignored. A
        count of rejected notifications only never waits on concurrent writers (it may be lost to them)."""

    def count_unknown(self, notifications: int) -> None:
        """Count notifications that named no subscription of ours (not attributable to any org). Anonymous
        traffic calls this: concurrent callers never wait on one another (no single hot entity), and a
        count lost to contention is acceptable (a diagnostic)."""

    def unknown_count(self) -> int: ...


@dataclass(frozen=True)
class CreatedSubscription:
    subscription_id: str
    expires_at: datetime


class MailboxPushes(Protocol):
    """A provider's push of a whole mailbox through a channel of the deployment (Gmail's ``users.watch``
    publishing to a Pub/Sub topic whose push subscription posts to this service). One watch per mailbox;
    a push names only the watched account, so ``subscription_id`` is derived from the account and a push
    proven to come from the configured sender answers it. ``enabled`` is False when the deployment has no
    channel configured (then nothing is watched and pushes are refused)."""

    @property
    def enabled(self) -> bool: ...

    def watch(self, mailbox: Mailbox) -> CreatedSubscription:
        """Start or renew the mailbox's watch (idempotent: a repeat replaces it); its id and expiry.
        Raises ``ReauthRequired``/``MailboxAccessDenied`` for the grant, ``TransientFailure``s when the
        provider stays unavailable, ``SubscriptionRefused`` otherwise."""

    def stop(self, mailbox: Mailbox) -> None:
        """End the mailbox's watch; one already gone is fine."""

    def subscription_of(self, authorization: str, body: bytes) -> str:
        """The subscription id a push is for, once its credentials (the ``Authorization`` header) prove it
        comes from the configured sender for this service. Raises ``InvalidNotification`` otherwise, or
        when the body is not a push."""


class SubscriptionApi(Protocol):
    """The provider's change-notification subscriptions (Graph's ``/subscriptions``) for one mailbox's
    credentials. Raises ``MessageNotFound`` when the subscription is gone, ``ReauthRequired``/
    ``MailboxAccessDenied`` for the mailbox's grant, ``TransientGraphError`` when the provider stays
    unavailable, ``SubscriptionRefused`` otherwise."""

    def resource_for(self, mailbox: Mailbox, folder: str) -> str:
        """The provider's name of what a subscription to ``folder`` (a role, a folder id or
        ``WHOLE_MAILBOX``) watches; stored with the subscription and shown by the API."""

    def create(
        self,
        mailbox: Mailbox,
        resource: str,
        *,
        notification_url: str,
        lifecycle_url: str,
        client_state: str,
        expires_at: datetime,
    ) -> CreatedSubscription: ...

    def renew(self, mailbox: Mailbox, subscription_id: str, expires_at: datetime) -> datetime:
        """Extend (which also reauthorizes) the subscription; returns the new expiry."""

    def delete(self, mailbox: Mailbox, subscription_id: str) -> None:
        """Delete the subscription; one that is already gone is fine."""


class ActivityEvents(Protocol):
    """Told about activities after they are durably written or deleted (CRM webhooks listen).

    Creations come through the activity store's outbox: the use cases save with ``announce_at`` when
    the org has a webhook URL, which writes an ``ActivityEvent`` per created activity in the same
    transaction as the activity, then hand those events (``ActivityWrite.events``) to ``created``, which
    announces them and only then clears them from the outbox. Events a crash left in the outbox are
    announced later by ``webhooks.drain_outbox`` (the maintenance timer), with the same event ids."""

    def created(self, org_id: str, events: Sequence[ActivityEvent]) -> None: ...

    def deleted(self, org_id: str, activity_ids: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class WebhookDelivery:
    """One event for the org's webhook and what became of it. ``status``: ``pending`` (queued),
    ``retrying`` (an attempt failed, another is queued for ``next_attempt_at``), ``delivered``,
    ``failed`` (attempts exhausted or the URL is not allowed) or ``skipped`` (the webhook URL was removed
    or the activity deleted before the attempt)."""

    org_id: str
    delivery_id: str
    event: str
    activity_id: str
    created_at: datetime
    status: str = "pending"
    attempts: int = 0
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    response_status: int | None = None
    error: str = ""
    url: str = ""


class WebhookLog(Protocol):
    def record(self, delivery: WebhookDelivery) -> None:
        """Insert or replace the delivery (keyed by org, ``created_at`` and ``delivery_id``)."""

    def recent(self, org_id: str, cursor: str | None, limit: int) -> Page[WebhookDelivery]:
        """The org's deliveries, newest first. Raises ValueError for a cursor this log did not produce."""

    def trim(self, org_id: str, keep: int) -> int:
        """Delete all but the newest ``keep`` deliveries of the org; returns how many were deleted."""


@dataclass(frozen=True)
class WebhookSecret:
    value: str
    created_at: datetime
    revealed: bool = False


class WebhookSecretStore(Protocol):
    """The org's webhook secret, encrypted under ``TOKEN_ENCRYPTION_KEY``'s current key (its key id
    stored with it) and bound to the org; re-wrapped under the current key like token caches."""

    def get(self, org_id: str) -> Versioned[WebhookSecret] | None:
        """The secret, or None. Raises ``WebhookSecretUnreadable`` when no configured key opens it."""

    def put(self, org_id: str, secret: WebhookSecret, etag: str | None) -> str:
        """Store (encrypted); returns the new etag. ``etag`` None: create, ``AlreadyExists`` when the org
        has one; else replace only at that etag (``ConcurrencyConflict``)."""

    def version(self, org_id: str) -> str | None:
        """The stored secret's etag, without decrypting it (to replace one that cannot be read)."""

    def rewrap_if_needed(self, org_id: str) -> bool:
        """Re-encrypt under the current key a secret stored under an older one; True when rewritten.
        Raises ``WebhookSecretUnreadable`` when no configured key opens it."""

    def stored_key_id(self, org_id: str) -> str | None:
        """The key id the stored secret is encrypted under (rotation checks); None when absent."""


class WebhookSender(Protocol):
    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST once, no redirects followed; returns the HTTP status. Raises ``WebhookUrlRefused`` for a
        URL that may not be called and ``WebhookSendFailed`` when no answer came."""
