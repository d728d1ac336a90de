"""Graph change-notification subscriptions (spec §1, facts §5): one per synced folder of each active mailbox.

    timer (every 5 min) ── maintain ── scan: every mailbox (catalog) + every stored subscription
        │  for each mailbox that needs something (under its push lease):
        │     syncable, folder not subscribed ───────> create  (clientState = fresh 256-bit secret)
        │     subscribed, expires within RENEW_BEFORE ─> renew   (PATCH; 404 → create again)
        │     not syncable / folder no longer synced ─> delete
    lifecycle: reauthorizationRequired ── reauthorize (renew)
               subscriptionRemoved ────── recreate (then the caller resyncs with delta)
    disconnect ── remove_for_mailbox (before the tokens are deleted)

Folders: Inbox and Sent Items by default; an org that syncs every folder gets one subscription on the
whole mailbox (folder key ``*``), so mail that rules move anywhere is announced too.

Invariants:
- Nothing is subscribed unless ``PUBLIC_BASE_URL`` is https, or http is explicitly allowed
  (``GRAPH_NOTIFICATIONS_ALLOW_HTTP``, for the local emulator demo only: real Graph refuses http).
- Each subscription has its own clientState secret; only its SHA-256 is stored, compared in constant
  time (``client_state_matches``).
- Expiry is asked for ``REQUESTED_MINUTES`` ahead (below Graph's 10,080-minute maximum for Outlook
  messages); when Graph names a smaller maximum the request is repeated within it.
- One change of a mailbox's subscriptions at a time (the ``push|org|mailbox`` lease); every step is
  idempotent, so a crash is repaired by the next tick.
- A subscription Graph no longer knows is created again; one that cannot be deleted because the
  mailbox's grant is gone is forgotten (it expires on its own, and its notifications are then unknown).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TypeVar

from sync_core.domain.folders import DEFAULT_FOLDERS
from sync_core.domain.model import FolderFilter, Mailbox, MailboxStatus, OrgSettings
from sync_core.errors import MailboxAccessDenied, MessageNotFound, ReauthRequired, SubscriptionRefused, SyncError
from sync_core.ports import Clock, LeaseStore, MailboxRepository, SettingsRepository
from sync_core.ports.push import WHOLE_MAILBOX, PushSubscription, SubscriptionApi, SubscriptionStore
from sync_core.ports.scheduling import MailboxCatalog

log = logging.getLogger(__name__)
_T = TypeVar("_T")

NOTIFICATIONS_PATH = "/api/notifications"
LIFECYCLE_PATH = "/api/notifications/lifecycle"
MAX_EXPIRATION_MINUTES = 10_080
REQUESTED_MINUTES = 10_070  # below the maximum, so a few minutes of clock skew never get it refused
RENEW_BEFORE = timedelta(hours=24)  # the timer renews a subscription in its last day
HEALTHY_MARGIN = timedelta(minutes=30)
MAX_CLIENT_STATE = 128  # Graph's limit; what we generate is 43 characters
LEASE = timedelta(minutes=2)
TICK_BUDGET = timedelta(minutes=3)
TICK_LIMIT = 2000  # mailboxes one tick changes at most; the rest wait for the next tick
TICK_PARALLELISM = 8
CATALOG_PAGE = 1000


@dataclass
class SubscriptionDeps:
    store: SubscriptionStore
    api: SubscriptionApi
    mailboxes: MailboxRepository
    settings: SettingsRepository
    leases: LeaseStore
    clock: Clock
    public_base_url: str
    allow_http: bool = False
    catalog: MailboxCatalog | None = None
    new_secret: Callable[[], str] = lambda: secrets.token_urlsafe(32)
    # Whether ``api`` serves the mailbox's provider (Graph subscriptions serve Microsoft mailboxes only;
    # a provider that pushes otherwise, such as Gmail's watch, or not at all, is left to polling here).
    serves: Callable[[Mailbox], bool] = lambda _mailbox: True

    @property
    def enabled(self) -> bool:
        base = self.public_base_url.lower()
        return base.startswith("https://") or (self.allow_http and base.startswith("http://"))

    @property
    def notification_url(self) -> str:
        return self.public_base_url.rstrip("/") + NOTIFICATIONS_PATH

    @property
    def lifecycle_url(self) -> str:
        return self.public_base_url.rstrip("/") + LIFECYCLE_PATH


@dataclass
class Outcome:
    """What a call changed: counts of ``created``, ``renewed``, ``deleted``, ``forgotten``, ``failed``,
    ``busy`` (lease held elsewhere)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, other: Outcome) -> None:
        self.counts.update(other.counts)


# -- secrets -----------------------------------------------------------------------------------------


def hash_client_state(client_state: str) -> str:
    return hashlib.sha256(client_state.encode("utf-8")).hexdigest()


def client_state_matches(subscription: PushSubscription, presented: object) -> bool:
    """Constant-time comparison of the presented clientState with the stored hash."""
    if not isinstance(presented, str) or not presented or len(presented) > MAX_CLIENT_STATE:
        return False
    return hmac.compare_digest(hash_client_state(presented), subscription.client_state_hash)


# -- what is wanted ----------------------------------------------------------------------------------


def wanted_folders(settings: OrgSettings) -> tuple[str, ...]:
    return (WHOLE_MAILBOX,) if settings.folders is FolderFilter.ALL else DEFAULT_FOLDERS


def _syncable(mailbox: Mailbox | None, settings: OrgSettings) -> bool:
    return mailbox is not None and mailbox.wants_push(settings.automation_enabled)


def healthy(deps: SubscriptionDeps, org_id: str, mailbox_id: str) -> bool:
    """True when every folder the mailbox syncs has a subscription that is not about to expire: then
    delta polling is only the safety net and may run at a longer interval."""
    if not deps.enabled:
        return False
    have = {s.folder: s for s in deps.store.for_mailbox(org_id, mailbox_id)}
    horizon = deps.clock.now() + HEALTHY_MARGIN
    folders = wanted_folders(deps.settings.get(org_id))
    return all(folder in have and have[folder].expires_at > horizon for folder in folders)


# -- the timer -----------------------------------------------------------------------------------------


def maintain(deps: SubscriptionDeps) -> Outcome:
    """Create, renew and delete subscriptions so that every syncable mailbox has exactly its wanted
    ones. Reads every mailbox and every subscription once; changes at most ``TICK_LIMIT`` mailboxes."""
    outcome = Outcome()
    if not deps.enabled or deps.catalog is None:
        return outcome
    now = deps.clock.now()
    existing: dict[tuple[str, str], dict[str, PushSubscription]] = {}
    for subscription in deps.store.all():
        existing.setdefault((subscription.org_id, subscription.mailbox_id), {})[subscription.folder] = subscription
    settings: dict[str, OrgSettings] = {}
    todo: list[tuple[str, str]] = []
    position: str | None = None
    while True:
        page, position = deps.catalog.page(position, CATALOG_PAGE)
        for summary in page:
            key = (summary.org_id, summary.mailbox_id)
            have = existing.pop(key, {})
            active = summary.status is MailboxStatus.ACTIVE and summary.enabled
            if active and summary.org_id not in settings:
                settings[summary.org_id] = deps.settings.get(summary.org_id)
            wanted = wanted_folders(settings[summary.org_id]) if active else ()
            if active and not settings[summary.org_id].automation_enabled:
                wanted = ()
            expiring = any(s.expires_at - now < RENEW_BEFORE for s in have.values())
            if set(have) != set(wanted) or expiring:
                todo.append(key)
        if position is None:
            break
    todo.extend(existing)  # subscriptions of mailboxes that no longer exist
    deadline = now + TICK_BUDGET

    def reconcile(key: tuple[str, str]) -> Outcome:
        if deps.clock.now() > deadline:
            return Outcome(Counter(deferred=1))
        return ensure_mailbox(deps, *key)

    with ThreadPoolExecutor(max_workers=TICK_PARALLELISM) as pool:
        for result in pool.map(reconcile, todo[:TICK_LIMIT]):
            outcome.add(result)
    if todo:
        log.info("subscriptions: %d mailboxes needed changes: %s", len(todo), dict(outcome.counts))
    return outcome


def ensure_mailbox(deps: SubscriptionDeps, org_id: str, mailbox_id: str) -> Outcome:
    """Bring one mailbox's subscriptions to what it needs now (none when it cannot sync). Call it after
    a mailbox became active (connect, add, re-enable) to subscribe at once instead of at the next tick."""
    if not deps.enabled:
        return Outcome()
    return _with_lease(deps, org_id, mailbox_id, lambda: _reconcile(deps, org_id, mailbox_id, unwanted=False))


def remove_for_mailbox(deps: SubscriptionDeps, org_id: str, mailbox_id: str) -> Outcome:
    """Delete every subscription of the mailbox (disconnect: call it while its tokens still exist)."""
    return _with_lease(deps, org_id, mailbox_id, lambda: _reconcile(deps, org_id, mailbox_id, unwanted=True))


# -- lifecycle events ------------------------------------------------------------------------------------


def reauthorize(deps: SubscriptionDeps, subscription_id: str) -> Outcome:
    """``reauthorizationRequired``: renew the subscription now (a PATCH reauthorizes it)."""
    found = deps.store.get(subscription_id)
    if found is None:
        return Outcome(Counter(unknown=1))
    sub = found

    def work() -> Outcome:
        mailbox = _mailbox(deps, sub.org_id, sub.mailbox_id)
        if mailbox is None:
            return _forget(deps, sub)
        return _renew(deps, mailbox, sub)

    return _with_lease(deps, sub.org_id, sub.mailbox_id, work)


def recreate(deps: SubscriptionDeps, subscription_id: str) -> tuple[Outcome, PushSubscription | None]:
    """``subscriptionRemoved``: forget the removed subscription and subscribe the folder again (when the
    mailbox still syncs it). Returns the outcome and the removed subscription (None when unknown), so
    the caller can resync the mailbox with delta."""
    found = deps.store.get(subscription_id)
    if found is None:
        return Outcome(Counter(unknown=1)), None
    sub = found

    def work() -> Outcome:
        outcome = Outcome()
        try:
            mailbox = _mailbox(deps, sub.org_id, sub.mailbox_id)
            if mailbox is not None:
                deps.api.delete(mailbox, sub.subscription_id)  # usually gone already; 404 is fine
        except SyncError as exc:
            log.info("subscriptions: deleting a removed subscription failed (%s); forgetting it", type(exc).__name__)
        deps.store.remove(sub)
        outcome.counts["forgotten"] += 1
        outcome.add(_reconcile(deps, sub.org_id, sub.mailbox_id, unwanted=False))
        return outcome

    return _with_lease(deps, sub.org_id, sub.mailbox_id, work), sub


# -- steps -------------------------------------------------------------------------------------------


def _with_lease(deps: SubscriptionDeps, org_id: str, mailbox_id: str, work: Callable[[], Outcome]) -> Outcome:
    owner = uuid.uuid4().hex
    key = f"push|{org_id}|{mailbox_id}"
    now = deps.clock.now()
    if not deps.leases.acquire(key, owner, now + LEASE, now):
        return Outcome(Counter(busy=1))
    try:
        return work()
    finally:
        deps.leases.release(key, owner)


def _mailbox(deps: SubscriptionDeps, org_id: str, mailbox_id: str) -> Mailbox | None:
    found = deps.mailboxes.get(org_id, mailbox_id)
    return found.value if found is not None else None


def _reconcile(deps: SubscriptionDeps, org_id: str, mailbox_id: str, *, unwanted: bool) -> Outcome:
    outcome = Outcome()
    mailbox = _mailbox(deps, org_id, mailbox_id)
    if mailbox is not None and not deps.serves(mailbox):
        return outcome  # another provider's mailbox: its watch records are that provider's (mailbox_watch)
    settings = deps.settings.get(org_id)
    pushed = mailbox is not None and deps.serves(mailbox) and _syncable(mailbox, settings)
    wanted = () if unwanted or not deps.enabled or not pushed else wanted_folders(settings)
    have = {s.folder: s for s in deps.store.for_mailbox(org_id, mailbox_id)}
    now = deps.clock.now()
    for folder, sub in have.items():
        if folder not in wanted:
            outcome.add(_delete(deps, mailbox, sub))
    if mailbox is None:
        return outcome
    for folder in wanted:
        current = have.get(folder)
        if current is None:
            outcome.add(_create(deps, mailbox, folder))
        elif current.expires_at - now < RENEW_BEFORE:
            outcome.add(_renew(deps, mailbox, current))
    return outcome


def _create(deps: SubscriptionDeps, mailbox: Mailbox, folder: str) -> Outcome:
    secret = deps.new_secret()
    resource = deps.api.resource_for(mailbox, folder)
    now = deps.clock.now()
    try:
        created = _retrying_shorter(
            lambda minutes: deps.api.create(
                mailbox,
                resource,
                notification_url=deps.notification_url,
                lifecycle_url=deps.lifecycle_url,
                client_state=secret,
                expires_at=now + timedelta(minutes=minutes),
            )
        )
    except SyncError as exc:
        log.warning(
            "subscriptions: creating one for %s of mailbox %s failed: %s", folder, mailbox.mailbox_id, _why(exc)
        )
        return Outcome(Counter(failed=1))
    deps.store.put(
        PushSubscription(
            org_id=mailbox.org_id,
            mailbox_id=mailbox.mailbox_id,
            folder=folder,
            subscription_id=created.subscription_id,
            resource=resource,
            client_state_hash=hash_client_state(secret),
            expires_at=created.expires_at,
            created_at=now,
        )
    )
    return Outcome(Counter(created=1))


def _renew(deps: SubscriptionDeps, mailbox: Mailbox, sub: PushSubscription) -> Outcome:
    now = deps.clock.now()
    try:
        expires_at = _retrying_shorter(
            lambda minutes: deps.api.renew(mailbox, sub.subscription_id, now + timedelta(minutes=minutes))
        )
    except MessageNotFound:
        log.info("subscriptions: %s is gone at Graph; subscribing again", sub.subscription_id)
        deps.store.remove(sub)
        outcome = _create(deps, mailbox, sub.folder)
        outcome.counts["recreated"] += 1
        return outcome
    except SyncError as exc:
        log.warning("subscriptions: renewing %s failed: %s", sub.subscription_id, _why(exc))
        return Outcome(Counter(failed=1))
    latest = deps.store.get(sub.subscription_id) or sub  # keep counters written meanwhile
    deps.store.put(replace(latest, expires_at=expires_at, renewed_at=now))
    return Outcome(Counter(renewed=1))


def _delete(deps: SubscriptionDeps, mailbox: Mailbox | None, sub: PushSubscription) -> Outcome:
    if mailbox is not None:
        try:
            deps.api.delete(mailbox, sub.subscription_id)
        except (ReauthRequired, MailboxAccessDenied):
            return _forget(deps, sub)  # no credentials for it any more: it expires on its own
        except SyncError as exc:
            log.warning("subscriptions: deleting %s failed: %s", sub.subscription_id, _why(exc))
            return Outcome(Counter(failed=1))
    deps.store.remove(sub)
    return Outcome(Counter(deleted=1))


def _forget(deps: SubscriptionDeps, sub: PushSubscription) -> Outcome:
    deps.store.remove(sub)
    return Outcome(Counter(forgotten=1))


def _retrying_shorter(call: Callable[[int], _T]) -> _T:
    """Ask for ``REQUESTED_MINUTES``; when Graph answers with a smaller maximum, ask once more within it."""
    try:
        return call(REQUESTED_MINUTES)
    except SubscriptionRefused as exc:
        if exc.max_minutes is None or not 10 < exc.max_minutes < REQUESTED_MINUTES:
            raise
        return call(exc.max_minutes - 5)


def _why(exc: BaseException) -> str:
    """A log-safe reason: the error type, plus Graph's message for refusals (it never holds tokens)."""
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, SubscriptionRefused) else type(exc).__name__
