"""Every port of sync_core, in one place: the provider-neutral interfaces the use cases depend on.

- ``storage``: records, activities, mailboxes, cursors, leases, run reports, settings, work queue, clock.
- ``mail``: ``MailSource`` (a mailbox's mail through opaque per-folder cursors) and ``DeltaPage``.
- ``identity``: the identity platform, the directory, token sources, and the stores of connections.
- ``scheduling``: the scheduler's due-time index and mailbox catalog.
- ``push``: change-notification subscriptions, CRM webhooks and activity events.
- ``backfill``: the record backfill's coalesced jobs per mailbox.
- ``send``: ``MailSender`` (a provider sends from a mailbox: prepare, submit, inspect) and ``SendStore``.

Production adapters live in ``sync_core.adapters`` (one package per provider, e.g. ``adapters.graph``);
``bootstrap`` wires them. No port is declared anywhere else.

Conventions:
- Every method is scoped by ``org_id``: nothing of one org is reachable through another org's id.
- Writes are idempotent: repeating a call after a crash or retry leaves the same end state.
- Optimistic concurrency uses opaque ``etag`` strings; a stale etag raises ``ConcurrencyConflict``.
"""

from sync_core.domain.lookup import RecordLookup, RecordLookupResult
from sync_core.ports.backfill import BackfillJob, BackfillJobStore, BackfillState
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
from sync_core.ports.mail import (
    MAX_SEARCH_TERMS,
    DeltaPage,
    MailSource,
    ReportsUsage,
    RequestUsage,
    SearchPage,
    SearchQuery,
)
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
from sync_core.ports.send import (
    DraftState,
    MailSender,
    OutgoingAttachment,
    OutgoingMessage,
    ProviderView,
    ReplyTarget,
    SendStore,
)
from sync_core.ports.storage import (
    ActivityEvent,
    ActivityStore,
    ActivityWrite,
    Clock,
    CursorStore,
    LeaseStore,
    MailboxLease,
    MailboxRepository,
    Page,
    RecordsIndex,
    RunReport,
    RunReportStore,
    SettingsRepository,
    SyncState,
    SyncStateStore,
    ThreadLookup,
    Versioned,
    WorkQueue,
)

__all__ = [
    "MAX_SEARCH_TERMS",
    "ActivityEvent",
    "ActivityEvents",
    "ActivityStore",
    "ActivityWrite",
    "AdminSignIn",
    "AppGrant",
    "AuthFlowStore",
    "BackfillJob",
    "BackfillJobStore",
    "BackfillState",
    "Clock",
    "CreatedSubscription",
    "CursorStore",
    "DelegatedGrant",
    "DeltaPage",
    "Directory",
    "DraftState",
    "DueEntry",
    "DueIndex",
    "IdentityProvider",
    "LeaseStore",
    "MailSender",
    "MailSource",
    "MailboxCatalog",
    "MailboxLease",
    "MailboxPushes",
    "MailboxRepository",
    "MailboxSummary",
    "OrgTenant",
    "OrgTenantStore",
    "OutgoingAttachment",
    "OutgoingMessage",
    "Page",
    "PendingAuthFlow",
    "ProviderView",
    "PushSubscription",
    "RecordLookup",
    "RecordLookupResult",
    "RecordsIndex",
    "ReplyTarget",
    "ReportsUsage",
    "RequestUsage",
    "RunReport",
    "RunReportStore",
    "SearchPage",
    "SearchQuery",
    "SendStore",
    "SettingsRepository",
    "SubscriptionApi",
    "SubscriptionStore",
    "SyncState",
    "SyncStateStore",
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
