"""A whole app on the in-memory doubles: the test counterpart of ``bootstrap.Services``
(cosmicpython's ``bootstrap_test_app``).

``InMemoryApp`` holds one double per port and hands out each use case's dependencies wired the way
``Services`` wires the real adapters: the scheduler syncs through ``sync_mailbox`` on the same stores, the
mailbox catalog reads the same mailbox repository, notifications request syncs through the scheduler.
Every part is a field, so a test swaps one (a counting due index, a scripted mail source, a clock it moves,
even a Table adapter) and keeps the rest; every ``*_deps`` method takes keyword changes to the deps it
returns (``dataclasses.replace``), for what one call needs differently.

Unlike production, activity events are off unless ``events`` is set (e.g. ``WebhookEvents(app.webhook_deps())``,
what ``Services.activity_events`` builds), so a test of the sync run sees no webhook traffic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sync_core.domain.representation import activity_to_json, send_to_json
from sync_core.ports import Clock, MailSource, WorkQueue
from sync_core.ports.backfill import BackfillJobStore
from sync_core.ports.push import ActivityEvents, SubscriptionStore, WebhookLog, WebhookSecretStore, WebhookSender
from sync_core.ports.scheduling import DueIndex
from sync_core.ports.send import MailSender, SendStore
from sync_core.testing.backfill import InMemoryBackfillJobStore
from sync_core.testing.mail import FakeMailSource, FixedClock
from sync_core.testing.push import (
    FakeWebhookSender,
    InMemorySubscriptionStore,
    InMemoryWebhookLog,
    InMemoryWebhookSecretStore,
)
from sync_core.testing.scheduling import InMemoryDueIndex, InMemoryMailboxCatalog, InMemoryWorkQueue
from sync_core.testing.send import FakeMailSender, InMemorySendStore
from sync_core.testing.stores import InMemoryStores
from sync_core.use_cases.ingest import IngestDeps
from sync_core.use_cases.notifications import NotificationDeps
from sync_core.use_cases.preview import PreviewDeps
from sync_core.use_cases.record_backfill import BackfillRequestDeps, RecordBackfillDeps
from sync_core.use_cases.schedule import ScheduleDeps, request_sync
from sync_core.use_cases.send import SendDeps
from sync_core.use_cases.sync_mailbox import SyncDeps, SyncOutcome, sync_mailbox
from sync_core.use_cases.webhooks import WebhookDeps, announcer


@dataclass
class InMemoryApp:
    """Every port on a fresh double; ``*_deps`` build the use cases' dependencies from them."""

    stores: InMemoryStores = field(default_factory=InMemoryStores)
    mail: MailSource = field(default_factory=FakeMailSource)
    clock: Clock = field(default_factory=FixedClock)
    due: DueIndex = field(default_factory=InMemoryDueIndex)
    queue: WorkQueue = field(default_factory=InMemoryWorkQueue)
    """The sync queue (``SYNC_QUEUE_NAME``)."""
    push_queue: WorkQueue = field(default_factory=InMemoryWorkQueue)
    """The push queue: webhook deliveries and subscription lifecycle follow-ups."""
    subscriptions: SubscriptionStore = field(default_factory=InMemorySubscriptionStore)
    webhook_log: WebhookLog = field(default_factory=InMemoryWebhookLog)
    webhook_secrets: WebhookSecretStore = field(default_factory=InMemoryWebhookSecretStore)
    webhook_sender: WebhookSender = field(default_factory=FakeWebhookSender)
    events: ActivityEvents | None = None
    backfill_jobs: BackfillJobStore = field(default_factory=InMemoryBackfillJobStore)
    sends: SendStore = field(default_factory=InMemorySendStore)
    sender: MailSender = field(default_factory=FakeMailSender)

    def sync_deps(self, **changes: Any) -> SyncDeps:
        """Like ``Services.sync_deps``. A test that hands in its own cursors, leases or reports (a wrapper
        watching them) gets no ``state`` unless it hands one in too: every write then goes through them."""
        s = self.stores
        own = {"cursors", "leases", "reports"} & changes.keys()
        deps = SyncDeps(
            mailboxes=s.mailboxes,
            settings=s.settings,
            records=s.records,
            activities=s.activities,
            cursors=s.cursors,
            leases=s.leases,
            reports=s.runs,
            mail=self.mail,
            clock=self.clock,
            events=self.events,
            state=None if own else s.sync_state,
        )
        return dataclasses.replace(deps, **changes)

    def sync(self, org_id: str, mailbox_id: str, run_id: str = "") -> SyncOutcome:
        """One sync run of the mailbox (what the scheduler calls, like ``Services.sync``)."""
        return sync_mailbox(self.sync_deps(), org_id, mailbox_id, run_id=run_id)

    def schedule_deps(self, **changes: Any) -> ScheduleDeps:
        """Like ``Services.schedule_deps``."""
        s = self.stores
        deps = ScheduleDeps(
            due=self.due,
            queue=self.queue,
            mailboxes=s.mailboxes,
            settings=s.settings,
            cursors=s.cursors,
            leases=s.leases,
            clock=self.clock,
            sync=self.sync,
            catalog=InMemoryMailboxCatalog(s.mailboxes),
        )
        return dataclasses.replace(deps, **changes)

    def record_backfill_deps(self, **changes: Any) -> RecordBackfillDeps:
        """Like ``Services.record_backfill_deps``."""
        s = self.stores
        deps = RecordBackfillDeps(
            mailboxes=s.mailboxes,
            settings=s.settings,
            records=s.records,
            activities=s.activities,
            leases=s.leases,
            reports=s.runs,
            jobs=self.backfill_jobs,
            queue=self.queue,
            mail=self.mail,
            clock=self.clock,
            events=self.events,
        )
        return dataclasses.replace(deps, **changes)

    def backfill_request_deps(self, **changes: Any) -> BackfillRequestDeps:
        """Like ``Services.backfill_request_deps``."""
        s = self.stores
        deps = BackfillRequestDeps(
            s.mailboxes, s.settings, s.records, self.backfill_jobs, self.clock, self.queue.enqueue
        )
        return dataclasses.replace(deps, **changes)

    def preview_deps(self, **changes: Any) -> PreviewDeps:
        """Like ``Services.preview_deps``."""
        s = self.stores
        deps = PreviewDeps(s.mailboxes, s.settings, s.records, self.mail, self.clock)
        return dataclasses.replace(deps, **changes)

    def ingest_deps(self, **changes: Any) -> IngestDeps:
        """Like ``Services.ingest_deps``."""
        s = self.stores
        deps = IngestDeps(s.mailboxes, s.settings, s.records, s.activities, self.clock, self.events)
        return dataclasses.replace(deps, **changes)

    def webhook_deps(self, **changes: Any) -> WebhookDeps:
        """Like ``Services.webhook_deps``."""
        deps = WebhookDeps(
            settings=self.stores.settings,
            activities=self.stores.activities,
            deliveries=self.webhook_log,
            secrets=self.webhook_secrets,
            queue=self.push_queue,
            clock=self.clock,
            sender=self.webhook_sender,
            render=activity_to_json,
            render_send=self._render_send,
        )
        return dataclasses.replace(deps, **changes)

    def _render_send(self, org_id: str, send_id: str) -> dict[str, Any] | None:
        stored = self.sends.get(org_id, send_id)
        return send_to_json(stored.value) if stored is not None else None

    def send_deps(self, **changes: Any) -> SendDeps:
        """Like ``Services.send_deps``: webhooks of a send's end go through ``webhook_deps``."""
        s = self.stores
        deps = SendDeps(
            sends=self.sends,
            mailboxes=s.mailboxes,
            settings=s.settings,
            records=s.records,
            activities=s.activities,
            mail=self.mail,
            sender=self.sender,
            queue=self.push_queue,
            clock=self.clock,
            announce=announcer(self.webhook_deps()),
            events=self.events,
        )
        return dataclasses.replace(deps, **changes)

    def notification_deps(self, **changes: Any) -> NotificationDeps:
        """Like ``Services.notification_deps``."""
        deps = NotificationDeps(
            store=self.subscriptions,
            clock=self.clock,
            request_sync=lambda org, mailbox: request_sync(self.schedule_deps(), org, mailbox).status,
            enqueue_work=self.push_queue.enqueue,
        )
        return dataclasses.replace(deps, **changes)
