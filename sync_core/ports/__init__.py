"""Every port of sync_core, in one place: the provider-neutral interfaces the use cases depend on.

- ``storage``: records, activities, mailboxes, cursors, leases, run reports, settings, work queue, clock.
- ``mail``: ``MailSource`` (a mailbox's mail through opaque per-folder cursors) and ``DeltaPage``.
- ``identity``: the identity platform, the directory, token sources, and the stores of connections.
- ``scheduling``: the scheduler's due-time index and mailbox catalog.
- ``push``: change-notification subscriptions, CRM webhooks and activity events.

Production adapters live in ``sync_core.adapters`` (one package per provider, e.g. ``adapters.graph``);
``bootstrap`` wires them. No port is declared anywhere else. There is no ``MailSender`` port yet: the
send issue adds it together with its first adapter (docs/architecture.md).

Conventions:
- Every method is scoped by ``org_id``: nothing of one org is reachable through another org's id.
- Writes are idempotent: repeating a call after a crash or retry leaves the same end state.
- Optimistic concurrency uses opaque ``etag`` strings; a stale etag raises ``ConcurrencyConflict``.
"""

from sync_core.domain.lookup import RecordLookup, RecordLookupResult
from sync_core.ports.identity import (
    AdminSignIn,
    AppGrant,
    AuthFlowStore,
    DelegatedGrant,
    Directory,
    IdentityProvider,
    OrgTenant,
    OrgTenantStore,
    PendingAuthFlow,
    TokenCacheStore,
    TokenSource,
)
from sync_core.ports.mail import DeltaPage, MailSource, ReportsUsage, RequestUsage
from sync_core.ports.push import (
    ActivityEvents,
    CreatedSubscription,
    MailboxPushes,
    PushSubscription,
    SubscriptionApi,
    SubscriptionStore,
    WebhookDelivery,
    WebhookLog,
    WebhookSecret,
    WebhookSecretStore,
    WebhookSender,
)
from sync_core.ports.scheduling import DueEntry, DueIndex, MailboxCatalog, MailboxSummary
from sync_core.ports.storage import (
    ActivityEvent,
    ActivityStore,
    ActivityWrite,
    Clock,
    CursorStore,
    LeaseStore,
    MailboxRepository,
    Page,
    RecordsIndex,
    RunReport,
    RunReportStore,
    SettingsRepository,
    ThreadLookup,
    Versioned,
    WorkQueue,
)

__all__ = [
    "ActivityEvent",
    "ActivityEvents",
    "ActivityStore",
    "ActivityWrite",
    "AdminSignIn",
    "AppGrant",
    "AuthFlowStore",
    "Clock",
    "CreatedSubscription",
    "CursorStore",
    "DelegatedGrant",
    "DeltaPage",
    "Directory",
    "DueEntry",
    "DueIndex",
    "IdentityProvider",
    "LeaseStore",
    "MailSource",
    "MailboxCatalog",
    "MailboxPushes",
    "MailboxRepository",
    "MailboxSummary",
    "OrgTenant",
    "OrgTenantStore",
    "Page",
    "PendingAuthFlow",
    "PushSubscription",
    "RecordLookup",
    "RecordLookupResult",
    "RecordsIndex",
    "ReportsUsage",
    "RequestUsage",
    "RunReport",
    "RunReportStore",
    "SettingsRepository",
    "SubscriptionApi",
    "SubscriptionStore",
    "ThreadLookup",
    "TokenCacheStore",
    "TokenSource",
    "Versioned",
    "WebhookDelivery",
    "WebhookLog",
    "WebhookSecret",
    "WebhookSecretStore",
    "WebhookSender",
    "WorkQueue",
]
