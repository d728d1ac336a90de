"""Storage maintenance (the ``maintain_storage`` timer, every 5 minutes): what a crash or a key rotation
would otherwise leave behind.

- The webhook outbox: ``activity.created`` events a worker saved with their activities but died before
  announcing are announced (``webhooks.drain_outbox``, same event ids), for every org with a webhook URL.
- Key rotation: while ``TOKEN_ENCRYPTION_KEY`` lists older keys after the current one, every stored
  secret still under an older key is re-encrypted under the current one: each mailbox's token cache,
  whatever the mailbox's status (disabled, ``needs_reauth`` and ``error`` ones too: nothing else would
  rewrite theirs), each org's application (tenant) token cache and each org's webhook secret. Pending
  sign-in flows are not re-wrapped: they expire 10 minutes after they start, far within the documented
  wait before an old key is dropped.

Orgs are those of the mailbox catalog (every mailbox row, any status). An org that never had a mailbox
has no token cache; its webhook secret (if any) and outbox are not visited, and a secret of such an org
left under a dropped key is replaced with ``POST …/webhooks/secret?rotate=true``.

Invariants:
- One mailbox's or org's failure (storage trouble, a value no configured key opens) is counted and
  logged without its value, and never stops the others.
- Re-wrapping never changes a plaintext, and loses no concurrent write: it replaces a value only at the
  etag it read (a value rewritten meanwhile is already under the current key).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from sync_core.errors import SyncError, TokenDecryptionError
from sync_core.ports import Clock, SettingsRepository
from sync_core.ports.identity import OrgTenantStore, TokenCacheStore, mailbox_owner, org_access_owner, tenant_owner
from sync_core.ports.push import WebhookSecretStore
from sync_core.ports.scheduling import MailboxCatalog
from sync_core.use_cases import webhooks

log = logging.getLogger(__name__)

CATALOG_PAGE = 500
PARALLELISM = 8
TICK_BUDGET = timedelta(minutes=4)  # the rest waits for the next tick


@dataclass
class MaintenanceDeps:
    catalog: MailboxCatalog
    settings: SettingsRepository
    tokens: TokenCacheStore
    tenants: OrgTenantStore
    secrets: WebhookSecretStore
    webhooks: webhooks.WebhookDeps
    clock: Clock
    rotating: bool  # the key setting lists older keys: re-wrap what is still under them
    # Providers whose org-wide credential (``org_access_owner``) an org may have stored: re-wrapped too.
    org_access_providers: tuple[str, ...] = ()


def maintain(deps: MaintenanceDeps) -> Counter[str]:
    """One tick: re-wrap (while rotating), then drain the webhook outboxes. Returns what it did, by kind:
    ``rewrapped``, ``unreadable`` (no configured key opens it: the mailbox goes ``needs_reauth`` on its
    next run, a webhook secret answers 409 until rotated), ``announced``, ``failed``, ``deferred``."""
    deadline = deps.clock.now() + TICK_BUDGET
    orgs: dict[str, None] = {}
    mailboxes: list[tuple[str, str]] = []
    position: str | None = None
    while True:
        page, position = deps.catalog.page(position, CATALOG_PAGE)
        for summary in page:
            orgs.setdefault(summary.org_id)
            mailboxes.append((summary.org_id, summary.mailbox_id))
        if position is None:
            break
    tasks: list[Callable[[], Counter[str]]] = []
    if deps.rotating:
        tasks += [_task(partial(deps.tokens.rewrap_if_needed, org, mailbox_owner(box))) for org, box in mailboxes]
        tasks += [_task(partial(_rewrap_tenant_cache, deps, org)) for org in orgs]
        tasks += [_task(partial(deps.secrets.rewrap_if_needed, org)) for org in orgs]
        tasks += [
            _task(partial(deps.tokens.rewrap_if_needed, org, org_access_owner(provider)))
            for org in orgs
            for provider in deps.org_access_providers
        ]
    tasks += [partial(_drain, deps, org) for org in orgs]

    def run(task: Callable[[], Counter[str]]) -> Counter[str]:
        return Counter(deferred=1) if deps.clock.now() > deadline else task()

    counts: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=PARALLELISM) as pool:
        for result in pool.map(run, tasks):
            counts.update(result)
    if counts:
        log.info("maintenance: %s", dict(sorted(counts.items())))
    return counts


def _task(rewrap: Callable[[], bool]) -> Callable[[], Counter[str]]:
    def run() -> Counter[str]:
        try:
            return Counter(rewrapped=1) if rewrap() else Counter()
        except TokenDecryptionError:
            log.warning("maintenance: a stored secret cannot be decrypted with the configured keys")
            return Counter(unreadable=1)
        except SyncError as exc:
            log.warning("maintenance: re-wrapping failed: %s", type(exc).__name__)
            return Counter(failed=1)

    return run


def _rewrap_tenant_cache(deps: MaintenanceDeps, org_id: str) -> bool:
    consent = deps.tenants.get(org_id)
    return consent is not None and deps.tokens.rewrap_if_needed(org_id, tenant_owner(consent.tenant_id))


def _drain(deps: MaintenanceDeps, org_id: str) -> Counter[str]:
    try:
        if not deps.settings.get(org_id).webhook_url:
            return Counter()
        announced = webhooks.drain_outbox(deps.webhooks, org_id)
    except SyncError as exc:
        log.warning("maintenance: the webhook outbox of an org could not be drained: %s", type(exc).__name__)
        return Counter(failed=1)
    return Counter(announced=announced) if announced else Counter()
