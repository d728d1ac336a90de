"""Graph subscriptions and notifications (use cases ``subscriptions`` and ``notifications``) on in-memory
doubles of our own ports and a fake of the ``SubscriptionApi`` port."""

from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync_core.adapters.graph.subscriptions import resource_for as graph_resource_for
from sync_core.domain.model import FolderFilter, Mailbox, MailboxStatus, OrgSettings
from sync_core.errors import MessageNotFound, ReauthRequired, SubscriptionRefused, TransientGraphError
from sync_core.ports.push import CreatedSubscription, PushSubscription
from sync_core.testing.mail import FixedClock
from sync_core.testing.push import InMemorySubscriptionStore
from sync_core.testing.scheduling import InMemoryMailboxCatalog
from sync_core.testing.stores import InMemoryStores
from sync_core.use_cases import notifications, schedule, subscriptions
from sync_core.use_cases.commands import SubscriptionAction, SubscriptionWork, parse_push
from sync_core.use_cases.notifications import InvalidNotification, NotificationDeps
from sync_core.use_cases.subscriptions import RENEW_BEFORE, REQUESTED_MINUTES, SubscriptionDeps

ORG = "acme"
NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@dataclass
class GraphSub:
    mailbox_id: str
    resource: str
    client_state: str
    expires_at: datetime
    notification_url: str
    lifecycle_url: str


@dataclass
class FakeSubscriptionApi:
    """Graph's /subscriptions for the tests: what exists, what was asked, and scripted failures."""

    subs: dict[str, GraphSub] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    max_minutes: int = 10_080
    clock: FixedClock = field(default_factory=lambda: FixedClock(NOW))
    ids: Any = field(default_factory=lambda: (f"00000000-0000-4000-8000-{n:012d}" for n in itertools.count(1)))

    def _check(self, kind: str, mailbox: Mailbox, expires_at: datetime | None = None) -> None:
        self.calls.append((kind, mailbox.mailbox_id))
        if self.fail_next:
            raise self.fail_next.pop(0)
        if expires_at is not None and expires_at - self.clock.moment > timedelta(minutes=self.max_minutes):
            raise SubscriptionRefused(
                f"Subscription expiration can only be {self.max_minutes} minutes in the future.", self.max_minutes
            )

    def resource_for(self, mailbox: Mailbox, folder: str) -> str:
        return graph_resource_for(mailbox, folder)

    def create(
        self,
        mailbox: Mailbox,
        resource: str,
        *,
        notification_url: str,
        lifecycle_url: str,
        client_state: str,
        expires_at: datetime,
    ) -> CreatedSubscription:
        self._check("create", mailbox, expires_at)
        sub_id = next(self.ids)
        self.subs[sub_id] = GraphSub(
            mailbox.mailbox_id, resource, client_state, expires_at, notification_url, lifecycle_url
        )
        return CreatedSubscription(sub_id, expires_at)

    def renew(self, mailbox: Mailbox, subscription_id: str, expires_at: datetime) -> datetime:
        self._check("renew", mailbox, expires_at)
        if subscription_id not in self.subs:
            raise MessageNotFound("ResourceNotFound")
        self.subs[subscription_id].expires_at = expires_at
        return expires_at

    def delete(self, mailbox: Mailbox, subscription_id: str) -> None:
        self._check("delete", mailbox)
        self.subs.pop(subscription_id, None)


class World:
    def __init__(self, public_base_url: str = "https://sync.example.com", allow_http: bool = False) -> None:
        self.stores = InMemoryStores()
        self.store = InMemorySubscriptionStore()
        self.clock = FixedClock(NOW)
        self.api = FakeSubscriptionApi(clock=self.clock)
        self.synced: list[tuple[str, str]] = []
        self.work: list[Mapping[str, Any]] = []
        self.not_syncable: set[str] = set()
        self.stores.settings.put(ORG, OrgSettings())
        self.secrets = (f"secret-{n:040d}" for n in itertools.count(1))
        self.deps = SubscriptionDeps(
            store=self.store,
            api=self.api,
            mailboxes=self.stores.mailboxes,
            settings=self.stores.settings,
            leases=self.stores.leases,
            clock=self.clock,
            public_base_url=public_base_url,
            allow_http=allow_http,
            catalog=InMemoryMailboxCatalog(self.stores.mailboxes),
            new_secret=lambda: next(self.secrets),
        )
        self.notify = NotificationDeps(
            store=self.store, clock=self.clock, request_sync=self._request_sync, enqueue_work=self.work.append
        )

    def _request_sync(self, org_id: str, mailbox_id: str) -> str:
        if mailbox_id in self.not_syncable:
            raise schedule.NotSyncable("paused", "")
        self.synced.append((org_id, mailbox_id))
        return "queued"

    def add_mailbox(self, mailbox_id: str = "mb-adele", **changes: Any) -> Mailbox:
        mailbox = Mailbox(ORG, mailbox_id, f"{mailbox_id}@acme.example", (), NOW, graph_user_id=f"u-{mailbox_id}")
        mailbox = replace(mailbox, **changes)
        self.stores.mailboxes.add(mailbox)
        return mailbox

    def change_mailbox(self, mailbox_id: str, **changes: Any) -> None:
        current = self.stores.mailboxes.get(ORG, mailbox_id)
        assert current is not None
        self.stores.mailboxes.replace(replace(current.value, **changes), current.etag)

    def folders(self, mailbox_id: str = "mb-adele") -> dict[str, PushSubscription]:
        return {s.folder: s for s in self.store.for_mailbox(ORG, mailbox_id)}

    def secret_of(self, sub: PushSubscription) -> str:
        return self.api.subs[sub.subscription_id].client_state

    def notification(self, sub: PushSubscription, client_state: str | None = None, **extra: Any) -> dict[str, Any]:
        state = self.secret_of(sub) if client_state is None else client_state
        return {"subscriptionId": sub.subscription_id, "clientState": state, "changeType": "created", **extra}


# -- maintain ----------------------------------------------------------------------------------------


def test_an_active_mailbox_gets_one_subscription_for_inbox_and_one_for_sent_items() -> None:
    world = World()
    world.add_mailbox()

    outcome = subscriptions.maintain(world.deps)

    assert outcome.counts["created"] == 2
    subs = world.folders()
    assert sorted(subs) == ["inbox", "sentitems"]
    graph = [world.api.subs[s.subscription_id] for s in subs.values()]
    assert sorted(g.resource for g in graph) == [
        "users/u-mb-adele/mailFolders('inbox')/messages",
        "users/u-mb-adele/mailFolders('sentitems')/messages",
    ]
    assert {g.notification_url for g in graph} == {"https://sync.example.com/api/notifications"}
    assert {g.lifecycle_url for g in graph} == {"https://sync.example.com/api/notifications/lifecycle"}
    assert all(g.expires_at == NOW + timedelta(minutes=REQUESTED_MINUTES) for g in graph)
    assert REQUESTED_MINUTES <= 10_080


def test_each_subscription_has_its_own_client_state_and_only_its_hash_is_stored() -> None:
    world = World()
    world.add_mailbox()

    subscriptions.maintain(world.deps)

    subs = list(world.folders().values())
    states = [world.secret_of(s) for s in subs]
    assert len(set(states)) == 2
    for sub, state in zip(subs, states, strict=True):
        assert state not in repr(sub)
        assert subscriptions.client_state_matches(sub, state)
        assert not subscriptions.client_state_matches(sub, state + "x")
        assert not subscriptions.client_state_matches(sub, None)


def test_an_org_that_syncs_every_folder_gets_one_subscription_on_the_whole_mailbox() -> None:
    world = World()
    world.stores.settings.put(ORG, OrgSettings(folders=FolderFilter.ALL))
    world.add_mailbox()

    subscriptions.maintain(world.deps)

    [sub] = world.folders().values()
    assert sub.folder == "*" and sub.resource == "users/u-mb-adele/messages"


@pytest.mark.parametrize(
    ("base_url", "allow_http", "subscribed"),
    [
        ("https://sync.example.com", False, True),
        ("http://127.0.0.1:7071", False, False),
        ("http://127.0.0.1:7071", True, True),
        ("", True, False),
    ],
)
def test_nothing_is_subscribed_unless_the_public_url_is_https_or_http_is_allowed(
    base_url: str, allow_http: bool, subscribed: bool
) -> None:
    world = World(base_url, allow_http)
    world.add_mailbox()

    subscriptions.maintain(world.deps)

    assert bool(world.folders()) is subscribed


def test_a_second_tick_changes_nothing_while_subscriptions_are_fresh() -> None:
    world = World()
    world.add_mailbox()
    subscriptions.maintain(world.deps)
    calls = len(world.api.calls)

    outcome = subscriptions.maintain(world.deps)

    assert len(world.api.calls) == calls and not +outcome.counts


def test_the_timer_renews_a_subscription_in_its_last_day_and_keeps_its_counters() -> None:
    world = World()
    world.add_mailbox()
    subscriptions.maintain(world.deps)
    inbox = world.folders()["inbox"]
    world.store.count(inbox.subscription_id, accepted=3, rejected=1, at=NOW)
    world.clock.moment = inbox.expires_at - RENEW_BEFORE + timedelta(minutes=1)

    outcome = subscriptions.maintain(world.deps)

    assert outcome.counts["renewed"] == 2
    renewed = world.folders()["inbox"]
    assert renewed.subscription_id == inbox.subscription_id
    assert renewed.expires_at == world.clock.moment + timedelta(minutes=REQUESTED_MINUTES)
    assert renewed.renewed_at == world.clock.moment
    assert (renewed.notifications, renewed.rejected) == (3, 1)


def test_renewing_a_subscription_graph_lost_subscribes_the_folder_again() -> None:
    world = World()
    world.add_mailbox()
    subscriptions.maintain(world.deps)
    inbox = world.folders()["inbox"]
    del world.api.subs[inbox.subscription_id]
    world.clock.moment = inbox.expires_at - timedelta(hours=1)

    outcome = subscriptions.maintain(world.deps)

    assert outcome.counts["recreated"] == 1
    again = world.folders()["inbox"]
    assert again.subscription_id != inbox.subscription_id and again.subscription_id in world.api.subs
    assert world.store.get(inbox.subscription_id) is None


def test_when_graph_names_a_shorter_maximum_expiry_the_request_is_repeated_within_it() -> None:
    world = World()
    world.api.max_minutes = 4230
    world.add_mailbox()

    subscriptions.maintain(world.deps)

    assert {s.expires_at for s in world.folders().values()} == {NOW + timedelta(minutes=4225)}


@pytest.mark.parametrize(
    "change",
    [
        {"status": MailboxStatus.DISCONNECTED},
        {"status": MailboxStatus.PAUSED},
        {"status": MailboxStatus.NEEDS_REAUTH},
        {"enabled": False},
    ],
)
def test_a_mailbox_that_cannot_sync_loses_its_subscriptions(change: dict[str, Any]) -> None:
    world = World()
    world.add_mailbox()
    subscriptions.maintain(world.deps)
    world.change_mailbox("mb-adele", **change)

    outcome = subscriptions.maintain(world.deps)

    assert outcome.counts["deleted"] == 2
    assert world.folders() == {} and world.api.subs == {}


def test_switching_the_org_to_every_folder_replaces_the_folder_subscriptions_with_one_for_the_mailbox() -> None:
    world = World()
    world.add_mailbox()
    subscriptions.maintain(world.deps)
    world.stores.settings.put(ORG, OrgSettings(folders=FolderFilter.ALL))

    subscriptions.maintain(world.deps)

    assert list(world.folders()) == ["*"] and len(world.api.subs) == 1


def test_automation_switched_off_deletes_the_orgs_subscriptions() -> None:
    world = World()
    world.add_mailbox()
    subscriptions.maintain(world.deps)
    world.stores.settings.put(ORG, OrgSettings(automation_enabled=False))

    subscriptions.maintain(world.deps)

    assert world.folders() == {}


def test_a_subscription_whose_grant_is_gone_is_forgotten_rather_than_kept_forever() -> None:
    world = World()
    world.add_mailbox()
    subscriptions.maintain(world.deps)
    world.change_mailbox("mb-adele", status=MailboxStatus.NEEDS_REAUTH)
    world.api.fail_next = [ReauthRequired("AADSTS50173"), ReauthRequired("AADSTS50173")]

    outcome = subscriptions.maintain(world.deps)

    assert outcome.counts["forgotten"] == 2 and world.folders() == {}


def test_a_transient_graph_failure_keeps_the_record_for_the_next_tick() -> None:
    world = World()
    world.add_mailbox()
    subscriptions.maintain(world.deps)
    world.change_mailbox("mb-adele", enabled=False)
    world.api.fail_next = [TransientGraphError("503"), TransientGraphError("503")]

    outcome = subscriptions.maintain(world.deps)

    assert outcome.counts["failed"] == 2 and len(world.folders()) == 2
    subscriptions.maintain(world.deps)
    assert world.folders() == {}


def test_a_failed_create_is_retried_by_the_next_tick() -> None:
    world = World()
    world.add_mailbox()
    world.api.fail_next = [SubscriptionRefused("Subscription validation request failed.")]

    first = subscriptions.maintain(world.deps)
    subscriptions.maintain(world.deps)

    assert first.counts == {"failed": 1, "created": 1}
    assert sorted(world.folders()) == ["inbox", "sentitems"]


def test_removing_a_mailboxs_subscriptions_deletes_them_at_graph() -> None:
    world = World()
    world.add_mailbox()
    world.add_mailbox("mb-megan")
    subscriptions.maintain(world.deps)

    subscriptions.remove_for_mailbox(world.deps, ORG, "mb-adele")

    assert world.folders("mb-adele") == {} and len(world.folders("mb-megan")) == 2
    assert {g.mailbox_id for g in world.api.subs.values()} == {"mb-megan"}


def test_a_mailbox_whose_push_lease_is_held_is_left_for_the_next_tick() -> None:
    world = World()
    world.add_mailbox()
    world.stores.leases.acquire(f"push|{ORG}|mb-adele", "someone", NOW + timedelta(minutes=1), NOW)

    outcome = subscriptions.maintain(world.deps)

    assert outcome.counts == {"busy": 1} and world.folders() == {}


def test_push_is_healthy_only_while_every_synced_folder_has_a_subscription_that_is_not_expiring() -> None:
    world = World()
    world.add_mailbox()
    assert not subscriptions.healthy(world.deps, ORG, "mb-adele")
    subscriptions.maintain(world.deps)
    assert subscriptions.healthy(world.deps, ORG, "mb-adele")
    world.clock.moment = world.folders()["inbox"].expires_at - timedelta(minutes=5)
    assert not subscriptions.healthy(world.deps, ORG, "mb-adele")


# -- change notifications --------------------------------------------------------------------------------


@pytest.fixture
def subscribed() -> World:
    world = World()
    world.add_mailbox()
    world.add_mailbox("mb-megan")
    subscriptions.maintain(world.deps)
    return world


def test_a_genuine_notification_enqueues_one_sync_of_its_mailbox_and_is_counted(subscribed: World) -> None:
    inbox, sent = subscribed.folders()["inbox"], subscribed.folders()["sentitems"]
    items = [subscribed.notification(inbox), subscribed.notification(inbox), subscribed.notification(sent)]

    report = notifications.handle_changes(subscribed.notify, {"value": items})

    assert subscribed.synced == [(ORG, "mb-adele")]
    assert report.accepted == 3 and report.syncs == {"queued": 1}
    assert subscribed.folders()["inbox"].notifications == 2
    assert subscribed.folders()["inbox"].last_notification_at == NOW


def test_a_wrong_client_state_changes_nothing_but_the_subscriptions_rejected_count(subscribed: World) -> None:
    inbox = subscribed.folders()["inbox"]
    megan = subscribed.folders("mb-megan")["inbox"]
    forged = [
        subscribed.notification(inbox, client_state="guess"),
        subscribed.notification(inbox, client_state=subscribed.secret_of(megan)),  # another subscription's secret
        {"subscriptionId": inbox.subscription_id, "changeType": "created"},  # none at all: malformed, not read
    ]

    report = notifications.handle_changes(subscribed.notify, {"value": forged})

    assert subscribed.synced == [] and (report.rejected, report.malformed) == (2, 1)
    assert subscribed.folders()["inbox"].rejected == 2 and subscribed.folders()["inbox"].notifications == 0


def test_a_notification_for_an_unknown_subscription_changes_nothing_but_the_unknown_count(subscribed: World) -> None:
    items = [{"subscriptionId": str(uuid.uuid4()), "clientState": "x"}, {"subscriptionId": 7}, "junk"]

    report = notifications.handle_changes(subscribed.notify, {"value": items})

    assert subscribed.synced == [] and (report.unknown, report.malformed) == (1, 2)
    assert subscribed.store.unknown_count() == 1


def test_a_notification_for_a_mailbox_that_cannot_sync_is_accepted_without_a_sync(subscribed: World) -> None:
    subscribed.not_syncable.add("mb-adele")

    report = notifications.handle_changes(
        subscribed.notify, {"value": [subscribed.notification(subscribed.folders()["inbox"])]}
    )

    assert report.syncs == {"not_syncable": 1} and subscribed.synced == []


@pytest.mark.parametrize("payload", [None, [], {"value": "x"}, {"valu": []}, {"value": [{}] * 1001}])
def test_a_body_that_is_not_a_notification_collection_is_refused(subscribed: World, payload: Any) -> None:
    with pytest.raises(InvalidNotification):
        notifications.handle_changes(subscribed.notify, payload)


class CountingSubscriptionStore:
    """The in-memory ``SubscriptionStore`` with a tally of its calls (storage round trips in production)."""

    def __init__(self, inner: InMemorySubscriptionStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


def unknown_item(**changes: Any) -> dict[str, Any]:
    return {"subscriptionId": str(uuid.uuid4()), "clientState": "x" * 43, "changeType": "created", **changes}


@pytest.fixture
def counting(subscribed: World) -> CountingSubscriptionStore:
    store = CountingSubscriptionStore(subscribed.store)
    subscribed.notify = replace(subscribed.notify, store=store)
    return store


def test_a_request_of_more_items_than_graph_sends_is_refused_before_any_storage_read(
    subscribed: World, counting: CountingSubscriptionStore
) -> None:
    genuine = subscribed.notification(subscribed.folders()["inbox"])
    items = [genuine] + [unknown_item() for _ in range(100)]  # 101: over the documented cap of 100

    with pytest.raises(InvalidNotification, match="more than 100 notifications"):
        notifications.handle_changes(subscribed.notify, {"value": items})
    with pytest.raises(InvalidNotification):
        notifications.handle_lifecycle(subscribed.notify, {"value": [{**i, "lifecycleEvent": "missed"} for i in items]})

    assert counting.calls == Counter() and subscribed.synced == []


@pytest.mark.parametrize(
    "item",
    [
        {"subscriptionId": "not-a-guid", "clientState": "x" * 43},
        {"subscriptionId": "0" * 128, "clientState": "x" * 43},
        {"subscriptionId": str(uuid.uuid4()) + "x", "clientState": "x" * 43},
        unknown_item(clientState="x" * 129),
        unknown_item(clientState=""),
        unknown_item(clientState=None),
        unknown_item(clientState=12345),
        unknown_item(changeType="exploded"),
        "junk",
        [unknown_item()],
    ],
    ids=[
        "id-not-guid", "id-128-zeros", "id-guid-plus", "state-129", "state-empty", "state-none", "state-number",
        "change-type", "string", "list",
    ],
)
def test_an_item_that_cannot_be_graphs_is_counted_malformed_without_any_storage_call(
    subscribed: World, counting: CountingSubscriptionStore, item: Any
) -> None:
    report = notifications.handle_changes(subscribed.notify, {"value": [item] * 50})

    assert (report.malformed, report.unknown, report.rejected) == (50, 0, 0)
    assert counting.calls == Counter() and subscribed.synced == []


def test_a_lifecycle_item_with_an_unknown_event_is_malformed_without_any_storage_call(
    subscribed: World, counting: CountingSubscriptionStore
) -> None:
    report = notifications.handle_lifecycle(subscribed.notify, {"value": [unknown_item(lifecycleEvent="boom")] * 9})

    assert report.malformed == 9 and counting.calls == Counter()


def test_a_request_naming_many_unknown_subscriptions_reads_only_a_few_and_counts_them_in_one_write(
    subscribed: World, counting: CountingSubscriptionStore
) -> None:
    genuine = subscribed.notification(subscribed.folders()["inbox"])
    items = [genuine] + [unknown_item() for _ in range(99)]

    report = notifications.handle_changes(subscribed.notify, {"value": items})

    assert (report.accepted, report.unknown) == (1, 99)
    assert counting.calls["get"] == 1 + 3  # the genuine one, then 3 unknown ids; the other 96 are not read
    assert counting.calls["count_unknown"] == 1 and subscribed.store.unknown_count() == 99
    assert subscribed.synced == [(ORG, "mb-adele")]


def test_repeated_items_of_one_subscription_are_read_once(
    subscribed: World, counting: CountingSubscriptionStore
) -> None:
    inbox = subscribed.folders()["inbox"]
    items = [subscribed.notification(inbox)] * 40 + [subscribed.notification(inbox, client_state="guess")] * 40

    report = notifications.handle_changes(subscribed.notify, {"value": items})

    assert (report.accepted, report.rejected) == (40, 40)
    assert counting.calls["get"] == 1 and counting.calls["count"] == 1


# -- lifecycle notifications -----------------------------------------------------------------------------


def test_missed_enqueues_a_sync_and_graph_work_goes_to_the_push_queue(subscribed: World) -> None:
    inbox, sent = subscribed.folders()["inbox"], subscribed.folders()["sentitems"]
    items = [
        subscribed.notification(inbox, lifecycleEvent="missed"),
        subscribed.notification(inbox, lifecycleEvent="reauthorizationRequired"),
        subscribed.notification(sent, lifecycleEvent="subscriptionRemoved"),
        subscribed.notification(sent, lifecycleEvent="somethingElse"),
        subscribed.notification(sent, client_state="guess", lifecycleEvent="subscriptionRemoved"),
    ]

    report = notifications.handle_lifecycle(subscribed.notify, {"value": items})

    assert subscribed.synced == [(ORG, "mb-adele")]
    assert [(w["action"], w["subscription_id"]) for w in subscribed.work] == [
        ("reauthorize", inbox.subscription_id),
        ("recreate", sent.subscription_id),
    ]
    assert (report.accepted, report.rejected, report.malformed) == (3, 1, 1)
    assert subscribed.folders()["inbox"].last_lifecycle_event == "reauthorizationRequired"


def test_reauthorization_work_renews_the_subscription(subscribed: World) -> None:
    inbox = subscribed.folders()["inbox"]
    subscribed.clock.moment = NOW + timedelta(days=2)

    result = notifications.process_work(
        subscribed.notify, subscribed.deps, {"action": "reauthorize", "subscription_id": inbox.subscription_id}
    )

    assert result == "renewed=1"
    assert subscribed.folders()["inbox"].expires_at == subscribed.clock.moment + timedelta(minutes=REQUESTED_MINUTES)


def test_recreate_work_subscribes_the_folder_again_and_resyncs_the_mailbox(subscribed: World) -> None:
    inbox = subscribed.folders()["inbox"]
    del subscribed.api.subs[inbox.subscription_id]  # subscriptionRemoved: Graph deleted it

    result = notifications.process_work(
        subscribed.notify, subscribed.deps, {"action": "recreate", "subscription_id": inbox.subscription_id}
    )

    assert result == "created=1,forgotten=1"
    again = subscribed.folders()["inbox"]
    assert again.subscription_id != inbox.subscription_id and again.subscription_id in subscribed.api.subs
    assert subscribed.synced == [(ORG, "mb-adele")]


def test_work_for_an_unknown_subscription_does_nothing(subscribed: World) -> None:
    for action in ("reauthorize", "recreate"):
        result = notifications.process_work(
            subscribed.notify, subscribed.deps, {"action": action, "subscription_id": "gone"}
        )
        assert result == "unknown=1"
    assert subscribed.synced == []


# -- a mailbox that just became active ---------------------------------------------------------------


def test_ensure_work_subscribes_a_mailbox_that_just_became_active_without_the_timer() -> None:
    world = World()
    world.add_mailbox()
    message = SubscriptionWork(SubscriptionAction.ENSURE, org_id=ORG, mailbox_id="mb-adele").to_json()

    result = notifications.process_work(world.notify, world.deps, parse_push(json.dumps(message)))

    assert result == "created=2"
    assert sorted(world.folders()) == ["inbox", "sentitems"]
    assert world.synced == []  # the connect already made it due: subscribing adds no sync


def test_ensure_work_for_a_mailbox_already_subscribed_changes_nothing(subscribed: World) -> None:
    before = subscribed.folders()

    result = notifications.process_work(
        subscribed.notify, subscribed.deps, {"action": "ensure", "org_id": ORG, "mailbox_id": "mb-adele"}
    )

    assert result == "nothing"
    assert subscribed.folders() == before


def test_a_failed_subscribe_on_activation_is_logged_and_left_to_the_timer() -> None:
    world = World()
    world.add_mailbox()
    world.api.fail_next = [TransientGraphError("Graph answered 503")]

    result = notifications.process_work(
        world.notify, world.deps, {"action": "ensure", "org_id": ORG, "mailbox_id": "mb-adele"}
    )

    assert result == "created=1,failed=1"  # no exception: the queue does not retry it, the maintenance timer does
    assert subscriptions.maintain(world.deps).counts["created"] == 1
    assert sorted(world.folders()) == ["inbox", "sentitems"]


def test_subscription_work_keeps_the_older_wire_format_and_reads_the_mailbox_of_ensure() -> None:
    older = SubscriptionWork(SubscriptionAction.RECREATE, "sub-1").to_json()
    ensure = SubscriptionWork(SubscriptionAction.ENSURE, org_id=ORG, mailbox_id="mb-adele").to_json()

    assert older == {"kind": "subscription", "action": "recreate", "subscription_id": "sub-1"}
    assert parse_push(json.dumps(ensure)) == SubscriptionWork("ensure", "", ORG, "mb-adele")
