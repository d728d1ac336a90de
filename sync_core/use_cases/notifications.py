"""Graph change and lifecycle notifications (facts §5): authenticate, then hand the work on; never sync here.

    POST /api/notifications?validationToken=…  ──> 200 text/plain, the decoded token (the handshake)
    POST /api/notifications {"value": [...]}   ──> each item: subscription known? clientState matches?
                                                    yes: enqueue a coalesced sync of its mailbox
                                                    no:  ignored and counted
                                               ──> 202
    POST /api/notifications/lifecycle          ──> reauthorizationRequired: queue "reauthorize" (renew)
                                                   subscriptionRemoved:     queue "recreate" (+ delta resync)
                                                   missed:                  enqueue a coalesced sync
                                               ──> 202

Invariants:
- A notification is acted on only when its subscription id is ours and its clientState matches that
  subscription's secret (constant-time); anything else changes nothing but a counter: the subscription's
  ``rejected`` count (clientState mismatch) or the global unknown count (an id that is not ours).
- The route is anonymous, so storage work per request is bounded before any is done: a request of more
  than ``MAX_ITEMS`` items is refused whole (``InvalidNotification``, 400); an item that cannot be Graph's
  (subscription id not a GUID, clientState missing or over Graph's 128 characters, an unknown
  ``changeType`` / ``lifecycleEvent``) is counted as malformed without a read; each distinct id is read
  once; and after ``MAX_UNKNOWN_IDS`` ids that are not ours, the request's remaining unread ids are
  taken as forged and not read either. Graph documents no maximum batch size, so a genuine batch over
  the limit would be lost: delta polling (the safety net) still syncs the mailbox at the next poll.
- Counting never makes requests wait on each other: the unknown count is spread over shards
  (``SubscriptionStore.count_unknown``), and only subscriptions that exist are counted on.
- The answer comes after at most a few storage round trips per mailbox (the sync itself runs on the sync
  queue, Graph calls of lifecycle events on the push queue), well within Graph's 3 seconds.
- Items of one request that name the same mailbox enqueue one sync; the scheduler coalesces further.
- Storage failures propagate (the API answers 5xx), so Graph retries the notification.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sync_core.errors import InvalidNotification, MailboxNotFound, NotSyncable
from sync_core.ports import Clock
from sync_core.ports.push import PushSubscription, SubscriptionStore
from sync_core.use_cases import subscriptions
from sync_core.use_cases.commands import SubscriptionAction, SubscriptionWork
from sync_core.use_cases.subscriptions import SubscriptionDeps, client_state_matches

log = logging.getLogger(__name__)

MAX_ITEMS = 100
"""Items one request may carry. Graph batches several notifications (of any of the URL's subscriptions)
per POST but documents no maximum (change-notifications-delivery-webhooks: "may send multiple
notifications ... in the same POST request"); 100 is far above a burst of one tenant's new mail and keeps
an anonymous request's worst case to 100 cheap checks."""
MAX_UNKNOWN_IDS = 3
"""Subscription ids that are not ours one request may make us read; Graph only names subscriptions it
holds for this URL, so past a few unknown ones the rest of the request is forged."""
MAX_CLIENT_STATE_CHARS = 128  # Graph's limit on a subscription's clientState (facts §5)
SUBSCRIPTION_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
"""Graph subscription ids are GUIDs (subscription resource: ``id``)."""
CHANGE_TYPES = ("created", "updated", "deleted")
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")


@dataclass
class NotificationDeps:
    store: SubscriptionStore
    clock: Clock
    request_sync: Callable[[str, str], str]
    """Enqueue a coalesced sync of (org, mailbox); returns ``queued``/``coalesced``. Raises
    ``schedule.MailboxNotFound`` / ``schedule.NotSyncable`` when the mailbox cannot sync."""
    enqueue_work: Callable[[Mapping[str, Any]], None]
    """Put a message on the push queue (lifecycle follow-ups that call Graph)."""


@dataclass
class NotificationReport:
    accepted: int = 0
    rejected: int = 0
    unknown: int = 0
    malformed: int = 0
    syncs: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)


def items_of(payload: Any) -> list[Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("value"), list):
        raise InvalidNotification('expected {"value": [...]}')
    items: list[Any] = payload["value"]
    if len(items) > MAX_ITEMS:
        raise InvalidNotification(f"more than {MAX_ITEMS} notifications in one request")
    return items


def handle_changes(deps: NotificationDeps, payload: Any) -> NotificationReport:
    """Change notifications: enqueue one coalesced sync per authenticated mailbox."""
    report = NotificationReport()
    mailboxes: dict[tuple[str, str], None] = {}
    for sub, _item in _authenticated(deps, items_of(payload), report, lifecycle=False):
        mailboxes[(sub.org_id, sub.mailbox_id)] = None
    for org_id, mailbox_id in mailboxes:
        _sync(deps, org_id, mailbox_id, report)
    return report


def handle_lifecycle(deps: NotificationDeps, payload: Any) -> NotificationReport:
    """Lifecycle notifications: Graph work goes to the push queue; ``missed`` enqueues a sync."""
    report = NotificationReport()
    resync: dict[tuple[str, str], None] = {}
    for sub, item in _authenticated(deps, items_of(payload), report, lifecycle=True):
        event = item.get("lifecycleEvent")
        report.events[str(event)] += 1
        if event == "reauthorizationRequired":
            deps.enqueue_work(SubscriptionWork(SubscriptionAction.REAUTHORIZE, sub.subscription_id).to_json())
        elif event == "subscriptionRemoved":
            deps.enqueue_work(SubscriptionWork(SubscriptionAction.RECREATE, sub.subscription_id).to_json())
        elif event == "missed":
            resync[(sub.org_id, sub.mailbox_id)] = None
    for org_id, mailbox_id in resync:
        _sync(deps, org_id, mailbox_id, report)
    return report


def process_work(
    deps: NotificationDeps, sub_deps: SubscriptionDeps, message: SubscriptionWork | Mapping[str, Any]
) -> str:
    """The push queue's subscription work (the command, or its JSON): ``reauthorize`` renews; ``recreate``
    subscribes again and then resyncs the mailbox with delta (what arrived while it had no
    subscription); ``ensure`` gives a mailbox that just became active its subscriptions (a failure is
    logged and left to the maintenance timer, never retried by the queue). Returns the outcome."""
    work = message if isinstance(message, SubscriptionWork) else SubscriptionWork.from_json(message)
    subscription_id, action = work.subscription_id, work.action
    if action == SubscriptionAction.REAUTHORIZE:
        outcome = subscriptions.reauthorize(sub_deps, subscription_id)
        return _summary(outcome.counts)
    if action == SubscriptionAction.ENSURE and work.org_id and work.mailbox_id:
        return _summary(subscriptions.ensure_mailbox(sub_deps, work.org_id, work.mailbox_id).counts)
    if action == SubscriptionAction.RECREATE:
        outcome, removed = subscriptions.recreate(sub_deps, subscription_id)
        if removed is not None:
            _sync(deps, removed.org_id, removed.mailbox_id, NotificationReport())
        return _summary(outcome.counts)
    log.warning("push queue: unknown subscription action %r dropped", action)
    return "invalid"


def well_formed(item: Any, *, lifecycle: bool) -> bool:
    """Could this item be Graph's? Decided without storage: GUID subscription id, a clientState of at
    most Graph's 128 characters, a known ``lifecycleEvent`` or ``changeType``."""
    if not isinstance(item, dict):
        return False
    subscription_id, client_state = item.get("subscriptionId"), item.get("clientState")
    if not isinstance(subscription_id, str) or not SUBSCRIPTION_ID.match(subscription_id):
        return False
    if not isinstance(client_state, str) or not 0 < len(client_state) <= MAX_CLIENT_STATE_CHARS:
        return False
    if lifecycle:
        return item.get("lifecycleEvent") in LIFECYCLE_EVENTS
    return item.get("changeType", "created") in CHANGE_TYPES


def _authenticated(
    deps: NotificationDeps, items: list[Any], report: NotificationReport, *, lifecycle: bool
) -> list[tuple[PushSubscription, Mapping[str, Any]]]:
    """The items whose subscription is ours and whose clientState matches; counts the others. Reads
    each distinct well-formed id once, and no more ids once ``MAX_UNKNOWN_IDS`` were not ours."""
    candidates = [item for item in items if well_formed(item, lifecycle=lifecycle)]
    report.malformed += len(items) - len(candidates)
    found: dict[str, PushSubscription | None] = {}
    unknown_ids = 0
    accepted: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    events: dict[str, str] = {}
    passed: list[tuple[PushSubscription, Mapping[str, Any]]] = []
    for item in candidates:
        subscription_id = str(item["subscriptionId"])
        if subscription_id not in found:
            if unknown_ids >= MAX_UNKNOWN_IDS:
                report.unknown += 1  # not read: the request already named too many ids that are not ours
                continue
            found[subscription_id] = deps.store.get(subscription_id)
            unknown_ids += found[subscription_id] is None
        sub = found[subscription_id]
        if sub is None:
            report.unknown += 1
        elif not client_state_matches(sub, item.get("clientState")):
            report.rejected += 1
            rejected[subscription_id] += 1
        else:
            report.accepted += 1
            accepted[subscription_id] += 1
            if lifecycle:
                events[subscription_id] = str(item.get("lifecycleEvent"))
            passed.append((sub, item))
    now = deps.clock.now()
    for subscription_id in accepted.keys() | rejected.keys():
        deps.store.count(
            subscription_id,
            accepted=0 if lifecycle else accepted[subscription_id],
            rejected=rejected[subscription_id],
            at=now,
            lifecycle=events.get(subscription_id, ""),
        )
    if report.unknown:
        deps.store.count_unknown(report.unknown)
    if report.rejected or report.unknown or report.malformed:
        log.warning(
            "notifications ignored: %d with a wrong clientState, %d for unknown subscriptions, %d malformed",
            report.rejected, report.unknown, report.malformed,
        )  # fmt: skip
    return passed


def _sync(deps: NotificationDeps, org_id: str, mailbox_id: str, report: NotificationReport) -> None:
    try:
        report.syncs[deps.request_sync(org_id, mailbox_id)] += 1
    except (MailboxNotFound, NotSyncable):
        report.syncs["not_syncable"] += 1


def _summary(counts: Counter[str]) -> str:
    return ",".join(f"{name}={count}" for name, count in sorted(counts.items()) if count) or "nothing"
