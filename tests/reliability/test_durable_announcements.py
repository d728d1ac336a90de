"""A worker dying between saving activities and announcing them (CRM webhooks), on the real engine:
Graph is the HTTPS emulator, the activities and their outbox live in Azurite's tables.

The crash is placed with a thin wrapper around our own ``ActivityStore`` (the save is written, then the
worker dies before ``_apply`` gets its result, so nothing is announced); the CRM's endpoint is a
recording double of our ``WebhookSender`` port, the push queue the in-memory double of ``WorkQueue``.
The later drain is the product's maintenance tick (``maintenance.maintain``, the ``maintain_storage``
timer's use case) on the product's Table adapters."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from sync_core.adapters.table_due import TableMailboxCatalog
from sync_core.adapters.table_webhook_log import TableWebhookLog, TableWebhookSecretStore
from sync_core.api.activities import activity_to_json
from sync_core.auth.crypto import TokenCipher
from sync_core.auth.token_cache_store import TableOrgTenantStore, TableTokenCacheStore
from sync_core.domain.model import Activity
from sync_core.errors import StorageUnavailable
from sync_core.ports import ActivityStore, ActivityWrite, Clock
from sync_core.testing.scheduling import InMemoryWorkQueue
from sync_core.use_cases import webhooks
from sync_core.use_cases.sync_mailbox import sync_mailbox
from sync_core.use_cases.webhooks import WebhookDeps, WebhookEvents
from tests.integration.sync_env import ADELE, ORG
from tests.reliability.rel_env import Ledger, OffsetClock, RelEnv, assert_converged

HOOK = "https://crm.example/hooks/mail"
AFTER_THE_LEASE = timedelta(minutes=6)  # a dead worker's lease (budget + 1 minute) has expired by then
AFTER_THE_GRACE = timedelta(minutes=3)  # the outbox's grace for the run that wrote an event is 2 minutes


class WorkerDied(RuntimeError):
    pass


class DiesAfterSave:
    """The real activity store; on the n-th save the write completes, then the worker dies before the
    run sees the result (so before it announces anything)."""

    def __init__(self, inner: ActivityStore, on_save: int) -> None:
        self.inner, self.on_save, self.saves = inner, on_save, 0
        self.lost: ActivityWrite | None = None

    def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
        # Passed on only when the run asked for outbox events (so this wrapper also runs on older code).
        written = self.inner.save(activities, announce_at=announce_at) if announce_at else self.inner.save(activities)
        self.saves += 1
        if self.saves == self.on_save:
            self.lost = written
            raise WorkerDied("killed after the save, before the announcement")
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class DiesBeforeClearing:
    """The real activity store, whose ``clear_events`` fails: a drain that dies after queueing the
    deliveries and before clearing the outbox."""

    def __init__(self, inner: ActivityStore) -> None:
        self.inner = inner

    def clear_events(self, org_id: str, events: Sequence[Any]) -> None:
        raise StorageUnavailable("worker died before clearing the outbox")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RecordingCrm:
    """The CRM's webhook endpoint (``WebhookSender`` double): keeps every POST, answers 200."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, Any], dict[str, str]]] = []

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        self.posts.append((json.loads(body), dict(headers)))
        return 200


class Webhooks:
    def __init__(self, rel: RelEnv) -> None:
        self.rel = rel
        self.queue = InMemoryWorkQueue()
        self.crm = RecordingCrm()
        self.cipher = TokenCipher.from_setting(rel.key_setting)

    def deps(self, activities: ActivityStore | None = None, clock: Clock | None = None) -> WebhookDeps:
        rel = self.rel
        return WebhookDeps(
            settings=rel.stores.settings,
            activities=activities or rel.stores.activities,
            deliveries=TableWebhookLog(rel.service, rel.prefix),
            secrets=TableWebhookSecretStore(rel.service, self.cipher, rel.prefix),
            queue=self.queue,
            clock=clock or rel.clock,
            sender=self.crm,
            render=activity_to_json,
        )

    def sync(self, activities: ActivityStore | None = None, clock: Clock | None = None) -> str:
        deps = self.rel.deps(page_size=4, activities=activities)
        deps.events = WebhookEvents(self.deps())
        deps.clock = clock or deps.clock
        return sync_mailbox(deps, ORG, ADELE).status

    def maintenance_tick(self, clock: Clock, activities: ActivityStore | None = None) -> dict[str, int]:
        """One tick of the ``maintain_storage`` timer's use case on the product's Table adapters."""
        from sync_core.use_cases import maintenance  # noqa: PLC0415 - absent before the outbox existed

        rel = self.rel
        deps = maintenance.MaintenanceDeps(
            catalog=TableMailboxCatalog(rel.service, rel.prefix),
            settings=rel.stores.settings,
            tokens=TableTokenCacheStore(rel.service, self.cipher, rel.prefix),
            tenants=TableOrgTenantStore(rel.service, rel.prefix),
            secrets=TableWebhookSecretStore(rel.service, self.cipher, rel.prefix),
            webhooks=self.deps(activities, clock),
            clock=clock,
            rotating=False,
        )
        return dict(maintenance.maintain(deps))

    def queued_activities(self) -> list[str]:
        return [message.body["activity_id"] for message in self.queue.messages]

    def deliver_queued(self) -> None:
        for message in self.queue.take():
            assert webhooks.deliver(self.deps(), message.body).status == "delivered"


def test_a_worker_dying_after_the_save_and_before_the_announcement_still_gets_every_new_activity_to_the_crm_once_per_event_id(  # noqa: E501
    rel: RelEnv,
) -> None:
    rel.stores.settings.put(ORG, replace(rel.stores.settings.get(ORG), webhook_url=HOOK))
    ledger = Ledger(rel).standard()
    hooks = Webhooks(rel)
    dying = DiesAfterSave(rel.stores.activities, on_save=2)

    with pytest.raises(WorkerDied):
        hooks.sync(activities=dying)
    assert hooks.sync(clock=OffsetClock(AFTER_THE_LEASE)) == "done"  # re-reads the lost page: unchanged

    stored = {activity.activity_id for activity in assert_converged(rel, ledger).values()}
    assert dying.lost is not None and dying.lost.created
    lost = set(dying.lost.created)
    # The runs announced everything but the page whose worker died: the re-run found it unchanged.
    assert sorted(hooks.queued_activities()) == sorted(set(stored) - lost)
    hooks.deliver_queued()

    # A tick right away leaves young events to the run that wrote them: nothing is announced twice.
    assert hooks.maintenance_tick(rel.clock).get("announced", 0) == 0
    assert hooks.queue.messages == []
    # The next ticks: one dies after queueing and before clearing the outbox, the following one repeats.
    later = OffsetClock(AFTER_THE_GRACE)
    dies = hooks.maintenance_tick(later, DiesBeforeClearing(rel.stores.activities))
    assert dies.get("failed") == 1 and sorted(hooks.queued_activities()) == sorted(lost)
    assert hooks.maintenance_tick(later) == {"announced": len(lost)}
    assert sorted(hooks.queued_activities()) == sorted([*lost, *lost])
    hooks.deliver_queued()
    assert hooks.maintenance_tick(later) == {}  # the outbox is empty
    assert rel.stores.activities.pending_events(ORG, later.now() + timedelta(days=1), 100) == ()

    # Every stored activity reached the CRM as activity.created; each under one event id, repeated
    # deliveries (at least once) under the same id, the body's id equal to X-Delivery-Id.
    ids_of: dict[str, set[str]] = defaultdict(set)
    for body, headers in hooks.crm.posts:
        assert body["type"] == headers["X-Event-Type"] == "activity.created"
        assert body["id"] == headers["X-Delivery-Id"]
        ids_of[body["data"]["id"]].add(body["id"])
    assert set(ids_of) == set(stored)
    assert all(len(ids) == 1 for ids in ids_of.values())
    assert len(hooks.crm.posts) == len(stored) + len(lost)  # the lost page's twice: the dead tick's and the next
