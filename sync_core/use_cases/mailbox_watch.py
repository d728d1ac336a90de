"""Mailbox-level push (a provider's ``MailboxPushes``, Gmail's ``users.watch`` in production): watch at
connect, renew daily, answer pushes by requesting a coalesced sync. Polling stays the safety net.

    connect / re-activation ──> ensure(org, mailbox): watch, record it (``SubscriptionStore``, folder ``*``)
    maintenance timer ─────────> renew: every watch renewed after RENEW_EVERY (Google asks within 7 days),
                                 watches of mailboxes that no longer push stopped and forgotten
    POST push ────────────────> the provider proves the push (its credentials) and names a subscription
                                 id; ours? request a coalesced sync of its mailbox (never sync inline)

Invariants:
- A push changes nothing unless the provider verified its credentials; a verified push naming no watch
  of ours is only counted (``count_unknown``).
- Watches are recorded under the provider's subscription id with the mailbox's folder key ``*``; the
  Graph subscription maintenance leaves records of other providers' mailboxes alone.
- Watching is best effort: a failure is logged (without data) and the next maintenance tick retries;
  a mailbox whose watch lapsed is still polled.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from sync_core.domain.model import Mailbox
from sync_core.errors import InvalidNotification, MailboxNotFound, NotSyncable, SyncError
from sync_core.ports import Clock, MailboxRepository, SettingsRepository
from sync_core.ports.push import WHOLE_MAILBOX, MailboxPushes, PushSubscription, SubscriptionStore

log = logging.getLogger(__name__)

RENEW_EVERY = timedelta(days=1)
WATCH_RESOURCE = "mailbox-watch"


@dataclass
class MailboxWatchDeps:
    pushes: Mapping[str, MailboxPushes]  # by ``Mailbox.provider``
    store: SubscriptionStore
    mailboxes: MailboxRepository
    settings: SettingsRepository
    clock: Clock
    request_sync: Callable[[str, str], object]


def _pushes_for(deps: MailboxWatchDeps, mailbox: Mailbox) -> MailboxPushes | None:
    pushes = deps.pushes.get(mailbox.provider)
    return pushes if pushes is not None and pushes.enabled else None


def ensure(deps: MailboxWatchDeps, org_id: str, mailbox_id: str) -> bool:
    """Watch the mailbox when it syncs and its provider pushes (start or renew), else stop and forget
    its watch. True when a watch is in place afterwards."""
    found = deps.mailboxes.get(org_id, mailbox_id)
    mailbox = found.value if found is not None else None
    pushes = _pushes_for(deps, mailbox) if mailbox is not None else None
    recorded = [s for s in deps.store.for_mailbox(org_id, mailbox_id) if s.resource == WATCH_RESOURCE]
    if mailbox is None or pushes is None or not mailbox.wants_push(deps.settings.get(org_id).automation_enabled):
        for sub in recorded:
            if mailbox is not None and pushes is not None:
                try:
                    pushes.stop(mailbox)
                except SyncError as exc:
                    log.info("could not stop a watch (%s); it lapses on its own", type(exc).__name__)
            deps.store.remove(sub)
        return False
    try:
        created = pushes.watch(mailbox)
    except SyncError as exc:
        log.warning("watching mailbox %s failed (%s); polling goes on", mailbox_id, type(exc).__name__)
        return False
    now = deps.clock.now()
    first = recorded[0].created_at if recorded else now
    deps.store.put(
        PushSubscription(
            org_id, mailbox_id, WHOLE_MAILBOX, created.subscription_id, WATCH_RESOURCE, "",
            created.expires_at, first, renewed_at=now,
        )
    )  # fmt: skip
    return True


def stop(deps: MailboxWatchDeps, org_id: str, mailbox_id: str) -> None:
    """Disconnect: stop the mailbox's watch (while its tokens still exist) and forget it."""
    found = deps.mailboxes.get(org_id, mailbox_id)
    mailbox = found.value if found is not None else None
    pushes = _pushes_for(deps, mailbox) if mailbox is not None else None
    for sub in deps.store.for_mailbox(org_id, mailbox_id):
        if sub.resource != WATCH_RESOURCE:
            continue
        if mailbox is not None and pushes is not None:
            try:
                pushes.stop(mailbox)
            except SyncError as exc:
                log.info("could not stop a watch (%s); it lapses on its own", type(exc).__name__)
        deps.store.remove(sub)


def renew(deps: MailboxWatchDeps) -> Counter[str]:
    """The maintenance tick: renew every recorded watch last renewed ``RENEW_EVERY`` ago (``renewed``),
    stop those of mailboxes that no longer push (``stopped``); failures are counted (``failed``)."""
    counts: Counter[str] = Counter()
    horizon = deps.clock.now() - RENEW_EVERY
    for sub in list(deps.store.all()):
        if sub.resource != WATCH_RESOURCE or (sub.renewed_at or sub.created_at) > horizon:
            continue
        counts["renewed" if ensure(deps, sub.org_id, sub.mailbox_id) else "stopped"] += 1
    return counts


def receive_push(deps: MailboxWatchDeps, provider: str, authorization: str, body: bytes) -> bool:
    """A push from ``provider``'s channel. Raises ``InvalidNotification`` unless the provider proves it;
    True when it named a watch of ours and a sync was requested (or one is already queued)."""
    pushes = deps.pushes.get(provider)
    if pushes is None or not pushes.enabled:
        raise InvalidNotification("no push channel is configured for this provider")
    subscription_id = pushes.subscription_of(authorization, body)
    sub = deps.store.get(subscription_id)
    if sub is None or sub.resource != WATCH_RESOURCE:
        deps.store.count_unknown(1)
        return False
    now = deps.clock.now()
    try:
        deps.request_sync(sub.org_id, sub.mailbox_id)
    except (MailboxNotFound, NotSyncable):
        deps.store.count(subscription_id, accepted=0, rejected=1, at=now)
        return False
    deps.store.count(subscription_id, accepted=1, rejected=0, at=now)
    return True
