"""Disconnecting one mailbox, and signing out every mailbox of an org.

Invariants:
- A disconnect is fenced against a sync run in flight (see ``disconnect``): nothing of the mailbox is
  written after it returns, provided a write ends within ``WRITE_GRACE`` of the renewal before it.
- Status changes are compare-and-set transitions of the stored mailbox (``update_mailbox``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta

from sync_core.domain.model import Mailbox, MailboxStatus
from sync_core.errors import (
    MailboxNotFound,
)
from sync_core.ports.identity import (
    mailbox_owner,
)
from sync_core.use_cases.connect.common import ConnectDeps, DisconnectResult
from sync_core.use_cases.mailbox_updates import update_mailbox
from sync_core.use_cases.sync_mailbox import WRITE_GRACE, sync_lease_key

log = logging.getLogger(__name__)

SIGNED_OUT_REASON = "signed out by admin"


DISCONNECT_LEASE = timedelta(minutes=10)  # how long a disconnect holds a mailbox's sync lease at most


def disconnect(deps: ConnectDeps, org_id: str, mailbox_id: str, purge: bool = False) -> DisconnectResult:
    """Delete the mailbox's Graph subscriptions (``before_disconnect``, best effort), tokens and delta state
    and mark it ``disconnected``; with ``purge`` also remove it from its activities (activities no other
    mailbox saw are deleted). Idempotent.

    Fenced against a sync run in flight: the mailbox's sync lease is taken over first (the run's next
    renewal fails and it stops without writing) and, if a run held it, nothing is deleted before
    ``WRITE_GRACE`` has passed, so a write the run began under its last renewal has landed. Nothing of
    the mailbox (activity, cursor, report, status) is written after this returns, provided a write ends
    within ``WRITE_GRACE`` of the renewal before it (see ``sync_mailbox``)."""
    current = deps.mailboxes.get(org_id, mailbox_id)
    if current is None:
        raise MailboxNotFound(f"no mailbox {mailbox_id}")
    try:
        deps.before_disconnect(org_id, mailbox_id)
    except Exception as exc:  # best effort: the subscriptions expire on their own, and their notifications are
        log.warning("disconnect: removing the subscriptions failed: %s", type(exc).__name__)  # then unknown
    fence, key, now = f"disconnect-{uuid.uuid4().hex}", sync_lease_key(org_id, mailbox_id), deps.clock.now()
    if deps.leases.take_over(key, fence, now + DISCONNECT_LEASE, now):
        # A run (or backfill) held the lease: its next renewal fails, so it writes nothing more; a write
        # it began under its last renewal lands within WRITE_GRACE, before anything is deleted below.
        log.info("disconnect: a sync of mailbox %s was running; waiting for its last write", mailbox_id)
        deps.sleep(WRITE_GRACE.total_seconds())
    try:
        deps.tokens.delete(org_id, mailbox_owner(mailbox_id))
        deps.cursors.clear(org_id, mailbox_id)
        mailbox = _update(deps, org_id, mailbox_id, Mailbox.disconnected)
        purged = deps.activities.delete_for_mailbox(org_id, mailbox_id) if purge else 0
    finally:
        deps.leases.release(key, fence)  # a run taking it from now on reads the mailbox disconnected
    return DisconnectResult(mailbox, purged)


def sign_out_all(deps: ConnectDeps, org_id: str) -> int:
    """Delete every stored token of the org (delegated and application) and put every mailbox that is
    not disconnected in ``needs_reauth`` ("signed out by admin"). Users reconnect; application-mode
    mailboxes resume when added again. Returns how many mailboxes were signed out."""
    deps.tokens.delete_org(org_id)
    changed = 0
    for mailbox in deps.mailboxes.list(org_id):
        if mailbox.status is MailboxStatus.DISCONNECTED:
            continue
        if deps.mailboxes.get(org_id, mailbox.mailbox_id) is not None:
            _update(deps, org_id, mailbox.mailbox_id, lambda m: m.signed_out(SIGNED_OUT_REASON))
            changed += 1
    return changed


def _update(deps: ConnectDeps, org_id: str, mailbox_id: str, change: Callable[[Mailbox], Mailbox]) -> Mailbox:
    """Compare-and-set a status transition; ``MailboxNotFound`` when the mailbox went meanwhile."""
    updated = update_mailbox(deps.mailboxes, org_id, mailbox_id, change)
    if updated is None:
        raise MailboxNotFound(f"no mailbox {mailbox_id}")
    return updated.value
