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
- The answer comes after at most a few storage round trips per mailbox (the sync itself runs on the sync
  queue, Graph calls of lifecycle events on the push queue), well within Graph's 3 seconds.
- Items of one request that name the same mailbox enqueue one sync; the scheduler coalesces further.
- Storage failures propagate (the API answers 5xx), so Graph retries the notification.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sync_core.ports import Clock
from sync_core.push_ports import PushSubscription, SubscriptionStore
from sync_core.use_cases import schedule, subscriptions
from sync_core.use_cases.subscriptions import SubscriptionDeps, client_state_matches

log = logging.getLogger(__name__)

MAX_ITEMS = 1000  # Graph batches far fewer; more is not a Graph notification
MAX_ID_CHARS = 128
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
WORK_KIND = "subscription"


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


class InvalidNotification(ValueError):
    """The body is not a Graph notification collection (``{"value": [...]}``)."""


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
            deps.enqueue_work({"kind": WORK_KIND, "action": "reauthorize", "subscription_id": sub.subscription_id})
        elif event == "subscriptionRemoved":
            deps.enqueue_work({"kind": WORK_KIND, "action": "recreate", "subscription_id": sub.subscription_id})
        elif event == "missed":
            resync[(sub.org_id, sub.mailbox_id)] = None
    for org_id, mailbox_id in resync:
        _sync(deps, org_id, mailbox_id, report)
    return report


def process_work(deps: NotificationDeps, sub_deps: SubscriptionDeps, message: Mapping[str, Any]) -> str:
    """The push queue's subscription work: ``reauthorize`` renews; ``recreate`` subscribes again and then
    resyncs the mailbox with delta (what arrived while it had no subscription). Returns the outcome."""
    subscription_id = str(message.get("subscription_id", ""))
    action = message.get("action")
    if action == "reauthorize":
        outcome = subscriptions.reauthorize(sub_deps, subscription_id)
        return _summary(outcome.counts)
    if action == "recreate":
        outcome, removed = subscriptions.recreate(sub_deps, subscription_id)
        if removed is not None:
            _sync(deps, removed.org_id, removed.mailbox_id, NotificationReport())
        return _summary(outcome.counts)
    log.warning("push queue: unknown subscription action %r dropped", action)
    return "invalid"


def _authenticated(
    deps: NotificationDeps, items: list[Any], report: NotificationReport, *, lifecycle: bool
) -> list[tuple[PushSubscription, Mapping[str, Any]]]:
    """The items whose subscription is ours and whose clientState matches; counts the others."""
    found: dict[str, PushSubscription | None] = {}
    accepted: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    events: dict[str, str] = {}
    passed: list[tuple[PushSubscription, Mapping[str, Any]]] = []
    for item in items:
        subscription_id = item.get("subscriptionId") if isinstance(item, dict) else None
        if not isinstance(subscription_id, str) or not 0 < len(subscription_id) <= MAX_ID_CHARS:
            report.malformed += 1
            continue
        if lifecycle and item.get("lifecycleEvent") not in LIFECYCLE_EVENTS:
            report.malformed += 1
            continue
        if subscription_id not in found:
            found[subscription_id] = deps.store.get(subscription_id)
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
    except (schedule.MailboxNotFound, schedule.NotSyncable):
        report.syncs["not_syncable"] += 1


def _summary(counts: Counter[str]) -> str:
    return ",".join(f"{name}={count}" for name, count in sorted(counts.items()) if count) or "nothing"
